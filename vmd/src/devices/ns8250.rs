//! The ns8250 UART on COM1 (ports 0x3F8–0x3FF, IRQ 4), as vmd emulates it
//! (ns8250.c 1.44).
//!
//! A FIFO-less 8250: one receive holding register, output written to the
//! console at once, LSR always reporting the transmitter empty.  vmd's
//! own behaviour is kept where a guest could see it:
//!
//! - IIR is recomputed after every change with the usual priorities:
//!   received data (0x04) over transmitter empty (0x02) over "no interrupt
//!   pending" (0x01).  A THR-empty interrupt is owed after each byte
//!   written with IER.ETXRDY set and after IER.ETXRDY is set; reading IIR
//!   while it shows THR empty clears it.
//! - The line is raised and lowered where vmd does it: raised after a
//!   data-port access, an IER write, a received byte or the rate-limit
//!   timer when an interrupt is pending; lowered after a data-port read,
//!   an IER write or an IIR read when none is.
//! - Output rate limiting (vmd's `NS8250_RATELIMIT`): every `pause_ct`-th
//!   byte written with IER.ETXRDY set withholds the THR-empty interrupt
//!   for 10 ms, where `pause_ct` is the bytes the programmed baud rate
//!   moves in 10 ms, `(baud / 8) / 1000 * 10` (140 at 115200; 0, i.e. no
//!   limit, below 800 baud).  The guest sees the real line speed only if
//!   it waits for the interrupt; LSR polling is never slowed.
//! - MSR reads return LSR | DCD | DSR | CTS (vmd reads the wrong register;
//!   only DCTS can leak through, from LSR.RXRDY).  SCR writes store 0xFF
//!   (an 8250 has no scratch register), so scratch probes fail.  MCR is
//!   plain storage: there is no loopback mode.  FCR writes are kept but
//!   ignored.  LSR and MSR writes are dropped.
//!
//! Input: the console glue hands bytes to [`Ns8250::receive`] while
//! [`Ns8250::can_receive`] is true — like vmd, which reads the pty only
//! when RBR is empty, so the rest waits in the pty.  The glue learns that
//! RBR was drained through [`Ns8250::set_rx_notify`].  On OpenBSD the pty
//! is in TIOCUCNTL mode and each read yields a `[command, byte]` packet:
//! [`Ns8250::receive_ucntl`] decodes it (break set/clear).  A read of 0
//! bytes (no slave attached, vmd's zero-read case) is the glue's business:
//! vmd then stops watching the pty for input until it is writable again.
use crate::devices::bus::PioDevice;
use crate::devices::irq::{Clock, IrqLines, Reschedule, Timer};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// COM1's first port (data register).
pub const COM1_BASE: u16 = 0x3F8;
/// Number of ports the UART claims.
pub const NS8250_PORTS: u16 = 8;
/// COM1's ISA interrupt line.
pub const COM1_IRQ: u8 = 4;
/// Baud rate for divisor 1; the reset divisor is 1.
pub const NS8250_BASE_BAUD: u32 = 115_200;
/// How long a rate-limited THR-empty interrupt is withheld.
pub const NS8250_RATELIMIT_DELAY: Duration = Duration::from_millis(10);

// Register offsets from COM1_BASE.
const COM_DATA: u16 = 0;
const COM_IER: u16 = 1;
const COM_IIR: u16 = 2;
const COM_LCR: u16 = 3;
const COM_MCR: u16 = 4;
const COM_LSR: u16 = 5;
const COM_MSR: u16 = 6;
const COM_SCR: u16 = 7;

pub const IER_ERXRDY: u8 = 0x01;
pub const IER_ETXRDY: u8 = 0x02;

pub const IIR_NOPEND: u8 = 0x01;
pub const IIR_TXRDY: u8 = 0x02;
pub const IIR_RXRDY: u8 = 0x04;
pub const IIR_IMASK: u8 = 0x0f;
pub const IIR_FIFO_MASK: u8 = 0xc0;

pub const LCR_DLAB: u8 = 0x80;

pub const LSR_RXRDY: u8 = 0x01;
pub const LSR_BI: u8 = 0x10;
pub const LSR_TXRDY: u8 = 0x20;
pub const LSR_TSRE: u8 = 0x40;

pub const MSR_CTS: u8 = 0x10;
pub const MSR_DSR: u8 = 0x20;
pub const MSR_DCD: u8 = 0x80;

/// TIOCUCNTL packet commands (OpenBSD `TIOCSBRK & 0xff`, `TIOCCBRK & 0xff`).
pub const TIOCUCNTL_SBRK: u8 = 0x7b;
pub const TIOCUCNTL_CBRK: u8 = 0x7a;

/// Bytes per 10 ms at `baud`, vmd's `pause_ct`.
fn pause_count(baud: u32) -> u32 {
    (baud / 8) / 1000 * 10
}

/// The UART's registers (vmd's `struct ns8250_regs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ns8250Regs {
    pub lcr: u8,
    pub fcr: u8,
    pub iir: u8,
    pub ier: u8,
    pub divlo: u8,
    pub divhi: u8,
    pub msr: u8,
    pub lsr: u8,
    pub mcr: u8,
    pub scr: u8,
    /// The receive holding register (unread input).
    pub data: u8,
}

/// COM1.  Output goes to `W` (the VM's pty), input comes in through
/// [`receive`](Self::receive).
pub struct Ns8250<W: Write + Send> {
    regs: Ns8250Regs,
    out: W,
    irq_lines: Arc<dyn IrqLines>,
    irq: u8,
    tx_intr_pending: bool,
    byte_out: u64,
    baudrate: u32,
    pause_ct: u32,
    ratelimit_deadline: Option<Instant>,
    rx_notify: Option<Box<dyn FnMut() + Send>>,
    clock: Clock,
    reschedule: Option<Reschedule>,
}

impl<W: Write + Send> Ns8250<W> {
    /// COM1 at its reset state (divisor 1, 115200 baud, IIR "no interrupt
    /// pending"), raising ISA line 4.
    pub fn new(out: W, irq_lines: Arc<dyn IrqLines>, clock: Clock) -> Self {
        Self::with_irq(out, irq_lines, COM1_IRQ, clock)
    }

    /// The same UART on another line.
    pub fn with_irq(out: W, irq_lines: Arc<dyn IrqLines>, irq: u8, clock: Clock) -> Self {
        Ns8250 {
            regs: Ns8250Regs {
                divlo: 1,
                iir: IIR_NOPEND,
                ..Default::default()
            },
            out,
            irq_lines,
            irq,
            tx_intr_pending: false,
            byte_out: 0,
            baudrate: NS8250_BASE_BAUD,
            pause_ct: pause_count(NS8250_BASE_BAUD),
            ratelimit_deadline: None,
            rx_notify: None,
            clock,
            reschedule: None,
        }
    }

    /// The registers, for inspection.
    pub fn regs(&self) -> &Ns8250Regs {
        &self.regs
    }

    /// The baud rate from the last divisor the guest latched.
    pub fn baudrate(&self) -> u32 {
        self.baudrate
    }

    /// Bytes written per rate-limit pause (0: no limit).
    pub fn pause_count(&self) -> u32 {
        self.pause_ct
    }

    pub fn irq(&self) -> u8 {
        self.irq
    }

    pub fn output(&self) -> &W {
        &self.out
    }

    pub fn output_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// Called (with the device locked) each time the guest reads the byte
    /// out of RBR, so that the console glue can offer the next one.
    pub fn set_rx_notify(&mut self, notify: Box<dyn FnMut() + Send>) {
        self.rx_notify = Some(notify);
    }

    /// Called when output arms the rate-limit timer (vmd's
    /// `NS8250_RATELIMIT` pipe message), so the event loop re-reads
    /// [`Timer::next_deadline`].
    pub fn set_reschedule_notify(&mut self, f: impl Fn() + Send + Sync + 'static) {
        self.reschedule = Some(Box::new(f));
    }

    /// Whether RBR is empty, i.e. [`receive`](Self::receive) would take a
    /// byte.
    pub fn can_receive(&self) -> bool {
        self.regs.lsr & LSR_RXRDY == 0
    }

    /// Offers console input.  Takes at most one byte, only when RBR is
    /// empty, and returns how many it took; the caller keeps the rest.
    pub fn receive(&mut self, data: &[u8]) -> usize {
        match data.first() {
            Some(&b) if self.can_receive() => {
                self.latch(b);
                1
            }
            _ => 0,
        }
    }

    /// Offers one TIOCUCNTL packet read from an OpenBSD pty: command 0
    /// carries `byte`; [`TIOCUCNTL_SBRK`] / [`TIOCUCNTL_CBRK`] set or
    /// clear LSR.BI and, as in vmd, deliver a 0 byte; any other command
    /// also delivers a 0 byte.  Returns false (nothing consumed) while RBR
    /// is full.
    pub fn receive_ucntl(&mut self, command: u8, byte: u8) -> bool {
        if !self.can_receive() {
            return false;
        }
        let byte = match command {
            0 => byte,
            TIOCUCNTL_SBRK => {
                self.regs.lsr |= LSR_BI;
                0
            }
            TIOCUCNTL_CBRK => {
                self.regs.lsr &= !LSR_BI;
                0
            }
            _ => 0,
        };
        self.latch(byte);
        true
    }

    fn latch(&mut self, byte: u8) {
        self.regs.lsr |= LSR_RXRDY;
        self.regs.data = byte;
        self.update_iir();
        if self.pending() {
            self.irq_lines.assert_irq(self.irq);
        }
    }

    fn pending(&self) -> bool {
        self.regs.iir & IIR_NOPEND == 0
    }

    fn dlab(&self) -> bool {
        self.regs.lcr & LCR_DLAB != 0
    }

    /// Recomputes IIR from the interrupt sources, highest priority first.
    fn update_iir(&mut self) {
        let fifo = self.regs.iir & IIR_FIFO_MASK;
        self.regs.iir = if self.regs.ier & IER_ERXRDY != 0 && self.regs.lsr & LSR_RXRDY != 0 {
            fifo | IIR_RXRDY
        } else if self.regs.ier & IER_ETXRDY != 0 && self.tx_intr_pending {
            fifo | IIR_TXRDY
        } else {
            fifo | IIR_NOPEND
        };
    }

    /// Raise the line if an interrupt is pending, else lower it.
    fn sync_line(&self) {
        if self.pending() {
            self.irq_lines.assert_irq(self.irq);
        } else {
            self.irq_lines.deassert_irq(self.irq);
        }
    }

    fn transmit(&mut self, byte: u8, now: Instant) {
        // A full or absent console drops the byte, as vmd's write(2) does.
        let _ = self.out.write_all(&[byte]);
        self.byte_out += 1;
        if self.regs.ier & IER_ETXRDY != 0 {
            // checked_rem: a pause count of 0 means no limit.
            if self.byte_out.checked_rem(u64::from(self.pause_ct)) == Some(0) {
                self.tx_intr_pending = false;
                self.ratelimit_deadline = Some(now + NS8250_RATELIMIT_DELAY);
                if let Some(f) = &self.reschedule {
                    f();
                }
            } else {
                self.tx_intr_pending = true;
            }
        }
        self.update_iir();
        if self.pending() {
            self.irq_lines.assert_irq(self.irq);
        }
    }

    fn read_data(&mut self) -> u8 {
        if self.dlab() {
            if !self.pending() {
                self.irq_lines.deassert_irq(self.irq);
            }
            return self.regs.divlo;
        }
        let v = self.regs.data;
        let drained = self.regs.lsr & LSR_RXRDY != 0;
        if drained {
            self.regs.data = 0;
            self.regs.lsr &= !LSR_RXRDY;
        } else {
            log::debug!("ns8250: guest reading com1 when not ready");
        }
        self.update_iir();
        self.sync_line();
        if drained {
            if let Some(notify) = self.rx_notify.as_mut() {
                notify();
            }
        }
        v
    }

    fn write_ier(&mut self, v: u8) {
        if self.dlab() {
            self.regs.divhi = v;
        } else {
            self.regs.ier = v;
            self.tx_intr_pending = v & IER_ETXRDY != 0;
            self.update_iir();
        }
        // vmd re-evaluates the line after any IER-port write, DLAB or not.
        self.sync_line();
    }

    fn read_iir(&mut self) -> u8 {
        let v = self.regs.iir;
        if v & IIR_IMASK == IIR_TXRDY {
            self.tx_intr_pending = false;
        }
        self.update_iir();
        if !self.pending() {
            self.irq_lines.deassert_irq(self.irq);
        }
        v
    }

    fn write_lcr(&mut self, v: u8) {
        // Leaving DLAB latches the divisor (a zero divisor is ignored).
        if self.dlab() && v & LCR_DLAB == 0 {
            let divisor = u32::from(self.regs.divlo) | u32::from(self.regs.divhi) << 8;
            match NS8250_BASE_BAUD.checked_div(divisor) {
                Some(baud) => {
                    self.baudrate = baud;
                    self.pause_ct = pause_count(baud);
                }
                None => log::warn!("ns8250: ignoring invalid baudrate"),
            }
            log::debug!("ns8250: set baudrate = {}", self.baudrate);
        }
        self.regs.lcr = v;
    }

    /// The rate-limit timer firing (vmd's `ratelimit`).
    fn ratelimit(&mut self) {
        if self.regs.ier & IER_ETXRDY != 0 {
            self.tx_intr_pending = true;
        }
        self.update_iir();
        if self.pending() {
            self.irq_lines.assert_irq(self.irq);
        }
    }
}

impl<W: Write + Send> PioDevice for Ns8250<W> {
    fn pio_read(&mut self, offset: u16, size: u8) -> u32 {
        let v = match offset {
            COM_DATA => self.read_data(),
            COM_IER if self.dlab() => self.regs.divhi,
            COM_IER => self.regs.ier,
            COM_IIR => self.read_iir(),
            COM_LCR => self.regs.lcr,
            COM_MCR => self.regs.mcr,
            COM_LSR => self.regs.lsr | LSR_TSRE | LSR_TXRDY,
            COM_MSR => self.regs.lsr | MSR_DCD | MSR_DSR | MSR_CTS,
            COM_SCR => self.regs.scr,
            _ => return crate::devices::bus::all_ones(size),
        };
        u32::from(v)
    }

    fn pio_write(&mut self, offset: u16, _size: u8, value: u32) {
        let v = value as u8;
        match offset {
            COM_DATA if self.dlab() => self.regs.divlo = v,
            COM_DATA => {
                let now = (self.clock)();
                self.transmit(v, now)
            }
            COM_IER => self.write_ier(v),
            COM_IIR => self.regs.fcr = v,
            COM_LCR => self.write_lcr(v),
            COM_MCR => self.regs.mcr = v,
            COM_SCR => self.regs.scr = 0xff,
            COM_LSR => log::warn!("ns8250: LSR UART write 0x{value:x} unsupported"),
            COM_MSR => log::warn!("ns8250: MSR UART write 0x{value:x} unsupported"),
            _ => {}
        }
    }
}

impl<W: Write + Send> Timer for Ns8250<W> {
    fn next_deadline(&self) -> Option<Instant> {
        self.ratelimit_deadline
    }

    fn on_timer(&mut self, now: Instant) {
        match self.ratelimit_deadline {
            Some(deadline) if now >= deadline => {
                self.ratelimit_deadline = None;
                self.ratelimit();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::irq::RecordingLines;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    fn com() -> (Ns8250<Vec<u8>>, Arc<RecordingLines>) {
        let lines = Arc::new(RecordingLines::default());
        (
            Ns8250::new(Vec::new(), lines.clone(), crate::devices::irq::host_clock()),
            lines,
        )
    }

    fn events(lines: &RecordingLines) -> Vec<(u8, bool)> {
        std::mem::take(&mut *lines.events.lock().unwrap())
    }

    #[test]
    fn reset_state() {
        let (mut c, _) = com();
        assert_eq!(c.pio_read(COM_IIR, 1), u32::from(IIR_NOPEND));
        assert_eq!(c.pio_read(COM_LSR, 1), u32::from(LSR_TSRE | LSR_TXRDY));
        assert_eq!(
            c.pio_read(COM_MSR, 1),
            u32::from(MSR_DCD | MSR_DSR | MSR_CTS)
        );
        assert_eq!(c.baudrate(), 115_200);
        assert_eq!(c.pause_count(), 140);
        assert!(c.can_receive());
    }

    #[test]
    fn written_bytes_reach_the_sink() {
        let (mut c, lines) = com();
        for &b in b"hello\r\n" {
            c.pio_write(COM_DATA, 1, u32::from(b));
        }
        assert_eq!(c.output().as_slice(), b"hello\r\n");
        // Polled output (IER 0) raises nothing.
        assert!(events(&lines).is_empty());
    }

    #[test]
    fn received_byte_sets_dr_raises_irq_and_read_clears() {
        let (mut c, lines) = com();
        c.pio_write(COM_IER, 1, u32::from(IER_ERXRDY));
        assert_eq!(events(&lines), vec![(4, false)]);

        assert_eq!(c.receive(b"ab"), 1);
        assert!(!c.can_receive());
        assert_eq!(c.receive(b"b"), 0);
        assert_eq!(events(&lines), vec![(4, true)]);
        assert_eq!(c.pio_read(COM_LSR, 1) & u32::from(LSR_RXRDY), 1);
        assert_eq!(c.pio_read(COM_IIR, 1), u32::from(IIR_RXRDY));

        assert_eq!(c.pio_read(COM_DATA, 1), u32::from(b'a'));
        assert_eq!(events(&lines), vec![(4, false)]);
        assert_eq!(c.pio_read(COM_LSR, 1) & u32::from(LSR_RXRDY), 0);
        assert_eq!(c.pio_read(COM_IIR, 1), u32::from(IIR_NOPEND));
        assert!(c.can_receive());
        // Reading an empty RBR returns the cleared holding register.
        assert_eq!(c.pio_read(COM_DATA, 1), 0);
    }

    #[test]
    fn receive_without_erxrdy_sets_dr_only() {
        let (mut c, lines) = com();
        assert_eq!(c.receive(b"x"), 1);
        assert!(events(&lines).is_empty());
        assert_eq!(c.pio_read(COM_IIR, 1), u32::from(IIR_NOPEND));
        assert_eq!(c.pio_read(COM_LSR, 1) & u32::from(LSR_RXRDY), 1);
    }

    #[test]
    fn rx_notify_fires_when_rbr_drained() {
        let (mut c, _) = com();
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        c.set_rx_notify(Box::new(move || {
            n2.fetch_add(1, Ordering::SeqCst);
        }));
        c.pio_read(COM_DATA, 1);
        assert_eq!(n.load(Ordering::SeqCst), 0);
        c.receive(b"z");
        c.pio_read(COM_DATA, 1);
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn iir_priorities_and_thr_empty_clear_on_read() {
        let (mut c, lines) = com();
        // Enabling THR-empty interrupts makes one pending at once.
        c.pio_write(COM_IER, 1, u32::from(IER_ERXRDY | IER_ETXRDY));
        assert_eq!(events(&lines), vec![(4, true)]);
        // Received data outranks THR empty.
        c.receive(b"q");
        assert_eq!(c.pio_read(COM_IIR, 1), u32::from(IIR_RXRDY));
        assert_eq!(c.pio_read(COM_DATA, 1), u32::from(b'q'));
        // THR empty is still owed; the data read keeps the line up.
        assert_eq!(events(&lines), vec![(4, true), (4, true)]);
        assert_eq!(c.pio_read(COM_IIR, 1), u32::from(IIR_TXRDY));
        // Reading IIR as THR empty acknowledges it and lowers the line.
        assert_eq!(events(&lines), vec![(4, false)]);
        assert_eq!(c.pio_read(COM_IIR, 1), u32::from(IIR_NOPEND));
        events(&lines);
        // A written byte owes another one.
        c.pio_write(COM_DATA, 1, u32::from(b'!'));
        assert_eq!(events(&lines), vec![(4, true)]);
        assert_eq!(c.pio_read(COM_IIR, 1), u32::from(IIR_TXRDY));
        // Disabling interrupts lowers the line.
        c.pio_write(COM_DATA, 1, u32::from(b'!'));
        events(&lines);
        c.pio_write(COM_IER, 1, 0);
        assert_eq!(events(&lines), vec![(4, false)]);
        assert_eq!(c.pio_read(COM_IIR, 1), u32::from(IIR_NOPEND));
    }

    #[test]
    fn divisor_latch_round_trip_sets_baud() {
        let (mut c, _) = com();
        c.pio_write(COM_LCR, 1, u32::from(LCR_DLAB | 0x03));
        assert_eq!(c.pio_read(COM_DATA, 1), 1);
        assert_eq!(c.pio_read(COM_IER, 1), 0);
        c.pio_write(COM_DATA, 1, 0x0c);
        c.pio_write(COM_IER, 1, 0x00);
        assert_eq!(c.pio_read(COM_DATA, 1), 0x0c);
        assert_eq!(c.pio_read(COM_IER, 1), 0x00);
        assert_eq!(c.pio_read(COM_LCR, 1), u32::from(LCR_DLAB | 0x03));
        // Nothing went to the console or into IER.
        assert!(c.output().is_empty());
        assert_eq!(c.regs().ier, 0);
        c.pio_write(COM_LCR, 1, 0x03);
        assert_eq!(c.baudrate(), 9600);
        assert_eq!(c.pause_count(), 10);
        assert_eq!(c.pio_read(COM_LCR, 1), 0x03);

        // A zero divisor is ignored.
        c.pio_write(COM_LCR, 1, u32::from(LCR_DLAB));
        c.pio_write(COM_DATA, 1, 0);
        c.pio_write(COM_LCR, 1, 0);
        assert_eq!(c.baudrate(), 9600);
    }

    #[test]
    fn scratch_register_is_absent_and_mcr_is_storage() {
        let (mut c, _) = com();
        assert_eq!(c.pio_read(COM_SCR, 1), 0);
        c.pio_write(COM_SCR, 1, 0x5a);
        assert_eq!(c.pio_read(COM_SCR, 1), 0xff);
        c.pio_write(COM_MCR, 1, 0x1b);
        assert_eq!(c.pio_read(COM_MCR, 1), 0x1b);
        // No loopback: output still goes to the console.
        c.pio_write(COM_DATA, 1, u32::from(b'L'));
        assert_eq!(c.output().as_slice(), b"L");
        assert!(c.can_receive());
        // LSR/MSR writes are dropped; FCR writes don't show in IIR.
        c.pio_write(COM_LSR, 1, 0xff);
        c.pio_write(COM_MSR, 1, 0xff);
        c.pio_write(COM_IIR, 1, 0xc7);
        assert_eq!(c.pio_read(COM_IIR, 1), u32::from(IIR_NOPEND));
        assert_eq!(c.pio_read(COM_LSR, 1), u32::from(LSR_TSRE | LSR_TXRDY));
    }

    #[test]
    fn rate_limit_withholds_thr_empty_for_10ms() {
        let lines = Arc::new(RecordingLines::default());
        let t0 = Instant::now();
        let now = Arc::new(Mutex::new(t0));
        let clock = {
            let now = now.clone();
            Box::new(move || *now.lock().unwrap())
        };
        let mut c = Ns8250::new(Vec::new(), lines.clone(), clock);
        let rescheduled = Arc::new(AtomicUsize::new(0));
        {
            let r = rescheduled.clone();
            c.set_reschedule_notify(move || {
                r.fetch_add(1, Ordering::SeqCst);
            });
        }
        c.pio_write(COM_IER, 1, u32::from(IER_ETXRDY));
        c.pio_read(COM_IIR, 1);
        events(&lines);
        for _ in 0..139 {
            c.pio_write(COM_DATA, 1, u32::from(b'.'));
            assert_eq!(c.pio_read(COM_IIR, 1), u32::from(IIR_TXRDY));
        }
        events(&lines);
        assert_eq!(c.next_deadline(), None);

        assert_eq!(rescheduled.load(Ordering::SeqCst), 0);
        *now.lock().unwrap() = t0 + Duration::from_millis(3);
        c.pio_write(COM_DATA, 1, u32::from(b'.'));
        // The 140th byte owes no interrupt until the deadline, which the
        // event loop is told about.
        assert_eq!(c.pio_read(COM_IIR, 1), u32::from(IIR_NOPEND));
        assert!(events(&lines).iter().all(|&(_, up)| !up));
        let deadline = c.next_deadline().expect("rate limit armed");
        assert_eq!(
            deadline,
            t0 + Duration::from_millis(3) + NS8250_RATELIMIT_DELAY
        );
        assert_eq!(rescheduled.load(Ordering::SeqCst), 1);

        // Early calls do nothing.
        c.on_timer(deadline - Duration::from_millis(1));
        assert!(events(&lines).is_empty());
        assert_eq!(c.next_deadline(), Some(deadline));

        c.on_timer(deadline);
        assert_eq!(events(&lines), vec![(4, true)]);
        assert_eq!(c.next_deadline(), None);
        assert_eq!(c.pio_read(COM_IIR, 1), u32::from(IIR_TXRDY));
        assert_eq!(c.output().len(), 140);
    }

    #[test]
    fn slow_baud_rates_are_not_limited() {
        let (mut c, _) = com();
        c.pio_write(COM_LCR, 1, u32::from(LCR_DLAB));
        c.pio_write(COM_DATA, 1, 0x30); // 2400 baud
        c.pio_write(COM_LCR, 1, 0x03);
        assert_eq!(c.pause_count(), 0);
        c.pio_write(COM_IER, 1, u32::from(IER_ETXRDY));
        for _ in 0..1000 {
            c.pio_write(COM_DATA, 1, u32::from(b'.'));
        }
        assert_eq!(c.next_deadline(), None);
    }

    #[test]
    fn ucntl_packets_handle_break() {
        let (mut c, _) = com();
        assert!(c.receive_ucntl(0, b'k'));
        assert!(!c.receive_ucntl(0, b'l'));
        assert_eq!(c.pio_read(COM_DATA, 1), u32::from(b'k'));
        assert!(c.receive_ucntl(TIOCUCNTL_SBRK, 0xee));
        assert_ne!(c.pio_read(COM_LSR, 1) & u32::from(LSR_BI), 0);
        assert_eq!(c.pio_read(COM_DATA, 1), 0);
        assert!(c.receive_ucntl(TIOCUCNTL_CBRK, 0xee));
        assert_eq!(c.pio_read(COM_LSR, 1) & u32::from(LSR_BI), 0);
    }
}
