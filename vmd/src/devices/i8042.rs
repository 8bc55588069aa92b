//! The i8042 keyboard controller (ports 0x60 and 0x64, IRQ 1 and 12) with
//! a PS/2 keyboard that is plugged in but never typed on, and nothing on
//! the auxiliary (mouse) port.
//!
//! vmd of this era has no keyboard controller: 0x60 and 0x64 read as
//! all-ones, which tells firmware that the output buffer is always full
//! and the input buffer never empties.  A minimal controller lets SeaBIOS
//! and guest kernels probe the keyboard quickly and get answers a real
//! machine would give.
//!
//! Controller (commands written to 0x64, parameters and results through
//! 0x60):
//!
//! - Status (read 0x64): output buffer full, aux data, timeout, system
//!   flag (command byte bit 2), command/data (last write went to 0x64),
//!   keyboard not inhibited.  Commands and data are taken at once, so the
//!   input buffer is never full.
//! - 0x20–0x3F read and 0x60–0x7F write the controller's 32 bytes of RAM;
//!   byte 0 is the command byte (interrupt enables, interface disables,
//!   translation).  0xA7/0xA8 and 0xAD/0xAE set and clear the aux and
//!   keyboard disable bits.  0xAA (self-test) answers 0x55 and sets the
//!   system flag; 0xAB and 0xA9 (interface tests) answer 0x00: both
//!   interfaces are there, whether or not a device is plugged in.
//! - 0xD0/0xD1 read and write the output port.  Clearing bit 0 resets the
//!   machine; bit 1 (A20) is only stored: guest memory never wraps at
//!   1 MiB.  0xDD/0xDF clear and set A20 the same way.  0xF0–0xFF pulse
//!   output port bits 0–3 low where the command's bit is clear, so the
//!   even ones (0xFE in practice) pulse the reset line.
//! - 0xD2 and 0xD3 put their parameter in the output buffer as keyboard or
//!   aux data.  0xD4 sends its parameter to the aux device; with none
//!   there the transmission times out as on real hardware: 0xFE lands in
//!   the output buffer as aux data with the timeout bit set, so drivers see
//!   "no mouse" at once instead of waiting.
//! - A byte written to 0x60 with no parameter outstanding goes to the
//!   keyboard and, as on common controllers, clears the keyboard disable
//!   bit.  Other commands are ignored.
//!
//! Output: controller results go straight into the output buffer; the
//! keyboard's answers wait in the keyboard until the buffer is empty and
//! the keyboard interface is enabled.  With translation on (command byte
//! bit 6) keyboard bytes are translated to scan code set 1 on the way,
//! which for the bytes this keyboard sends changes only the scan code set
//! numbers and the second ID byte (0x83 reads as 0x41).  IRQ 1 is raised
//! while keyboard-side data waits in the output buffer and the command
//! byte enables it, IRQ 12 likewise for aux data; reading the data port
//! lowers it.  Reading an empty buffer returns the last byte again.
//!
//! Keyboard: reset 0xFF → 0xFA 0xAA, get ID 0xF2 → 0xFA 0xAB 0x83, echo
//! 0xEE → 0xEE, resend 0xFE → the last byte again; set LEDs 0xED, set
//! typematic 0xF3 and scan code set 0xF0 take a parameter (0xF0 0x00
//! reports the set, other sets than 1–3 are refused with 0xFE); a byte
//! with bit 7 set where a parameter is due starts a new command instead;
//! 0xF4/0xF5/0xF6 enable scanning, restore defaults and disable scanning,
//! restore defaults; anything else is answered 0xFE.  Every byte but
//! 0xFE first discards answers not yet collected.
use crate::devices::bus::{all_ones, PioDevice};
use crate::devices::irq::IrqLines;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The data port.
pub const KBC_DATA: u16 = 0x60;
/// The status (read) and command (write) port.
pub const KBC_CMD: u16 = 0x64;
/// The keyboard's ISA interrupt line.
pub const KBD_IRQ: u8 = 1;
/// The aux (mouse) port's ISA interrupt line.
pub const AUX_IRQ: u8 = 12;

// Offsets from KBC_DATA, as [`I8042`] sees them.
const DATA: u16 = 0;
const CMD: u16 = KBC_CMD - KBC_DATA;

// Status register.
pub const STS_OBF: u8 = 0x01;
pub const STS_IBF: u8 = 0x02;
pub const STS_SYS: u8 = 0x04;
pub const STS_CMD: u8 = 0x08;
pub const STS_UNLOCKED: u8 = 0x10;
pub const STS_AUXDATA: u8 = 0x20;
pub const STS_TIMEOUT: u8 = 0x40;

// Command byte (controller RAM byte 0).
pub const CTR_KBDINT: u8 = 0x01;
pub const CTR_AUXINT: u8 = 0x02;
pub const CTR_SYS: u8 = 0x04;
pub const CTR_KBDDIS: u8 = 0x10;
pub const CTR_AUXDIS: u8 = 0x20;
pub const CTR_XLATE: u8 = 0x40;

// Output port.
pub const OUT_RESET: u8 = 0x01;
pub const OUT_A20: u8 = 0x02;
pub const OUT_KBD_OBF: u8 = 0x10;
pub const OUT_AUX_OBF: u8 = 0x20;

// Keyboard replies.
pub const KBD_ACK: u8 = 0xFA;
pub const KBD_RESEND: u8 = 0xFE;
pub const KBD_BAT_OK: u8 = 0xAA;
pub const KBD_ECHO: u8 = 0xEE;
pub const KBD_ID: [u8; 2] = [0xAB, 0x83];

/// The command byte at power-on: keyboard interrupt and translation on,
/// both interfaces enabled, system flag clear.
const CTR_POWER_ON: u8 = CTR_KBDINT | CTR_XLATE;
/// The output port at power-on: not in reset, A20 enabled, the unused
/// bits high.
const OUT_POWER_ON: u8 = 0xCC | OUT_RESET | OUT_A20;
/// Bytes the keyboard holds for the controller (its own buffer is 16).
const KBD_QUEUE_MAX: usize = 16;
/// Typematic rate and delay after reset: 10.9 characters/s after 500 ms.
const TYPEMATIC_DEFAULT: u8 = 0x2B;

/// What the next byte written to the data port is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Param {
    None,
    Ram(u8),
    OutputPort,
    KbdOutput,
    AuxOutput,
    Aux,
}

/// The byte in the output buffer and where it came from.
#[derive(Clone, Copy, Debug)]
struct Output {
    byte: u8,
    aux: bool,
    timeout: bool,
}

/// A PS/2 keyboard that answers commands and never has a key pressed.
struct Keyboard {
    queue: VecDeque<u8>,
    /// The command waiting for its parameter byte.
    expect: Option<u8>,
    scanning: bool,
    scancode_set: u8,
    leds: u8,
    typematic: u8,
    last_sent: Option<u8>,
}

impl Keyboard {
    fn new() -> Self {
        Keyboard {
            queue: VecDeque::new(),
            expect: None,
            scanning: true,
            scancode_set: 2,
            leds: 0,
            typematic: TYPEMATIC_DEFAULT,
            last_sent: None,
        }
    }

    fn send(&mut self, byte: u8) {
        if self.queue.len() < KBD_QUEUE_MAX {
            self.queue.push_back(byte);
        }
        self.last_sent = Some(byte);
    }

    fn defaults(&mut self) {
        self.scancode_set = 2;
        self.typematic = TYPEMATIC_DEFAULT;
    }

    /// A byte from the host.
    fn receive(&mut self, byte: u8) {
        if byte != KBD_RESEND {
            self.queue.clear();
        }
        if let Some(cmd) = self.expect.take() {
            if byte & 0x80 == 0 {
                self.parameter(cmd, byte);
                return;
            }
            // A command where the parameter was due: run it instead.
        }
        match byte {
            0xED | 0xF0 | 0xF3 => {
                self.send(KBD_ACK);
                self.expect = Some(byte);
            }
            0xEE => self.send(KBD_ECHO),
            0xF2 => {
                self.send(KBD_ACK);
                self.send(KBD_ID[0]);
                self.send(KBD_ID[1]);
            }
            0xF4 => {
                self.scanning = true;
                self.send(KBD_ACK);
            }
            0xF5 => {
                self.defaults();
                self.scanning = false;
                self.send(KBD_ACK);
            }
            0xF6 => {
                self.defaults();
                self.scanning = true;
                self.send(KBD_ACK);
            }
            0xFE => {
                if let Some(b) = self.last_sent {
                    self.send(b);
                }
            }
            0xFF => {
                self.defaults();
                self.leds = 0;
                self.scanning = true;
                self.send(KBD_ACK);
                self.send(KBD_BAT_OK);
            }
            _ => self.send(KBD_RESEND),
        }
    }

    fn parameter(&mut self, cmd: u8, byte: u8) {
        match cmd {
            0xED => {
                self.leds = byte & 0x07;
                self.send(KBD_ACK);
            }
            0xF3 => {
                self.typematic = byte;
                self.send(KBD_ACK);
            }
            _ => match byte {
                0 => {
                    self.send(KBD_ACK);
                    self.send(self.scancode_set);
                }
                1..=3 => {
                    self.scancode_set = byte;
                    self.send(KBD_ACK);
                }
                _ => self.send(KBD_RESEND),
            },
        }
    }
}

/// Scan code set 2 → set 1, as the controller translates keyboard bytes,
/// for the bytes [`Keyboard`] sends (everything from 0x80 up stays as it
/// is except 0x83, the F7 key).
fn translate(byte: u8) -> u8 {
    match byte {
        0x01 => 0x43,
        0x02 => 0x41,
        0x03 => 0x3F,
        0x83 => 0x41,
        b => b,
    }
}

/// The controller with its keyboard.  Offsets are from [`KBC_DATA`]: 0 is
/// the data port, 4 the status/command port; [`I8042Port`] puts it on the
/// bus.
pub struct I8042 {
    lines: Arc<dyn IrqLines>,
    reset: Arc<AtomicBool>,
    ram: [u8; 32],
    outport: u8,
    out: Option<Output>,
    /// What the data port reads when the output buffer is empty.
    last_out: u8,
    last_write_cmd: bool,
    param: Param,
    kbd: Keyboard,
    irq_kbd: bool,
    irq_aux: bool,
}

impl I8042 {
    /// `reset` is set when the guest pulses the reset line.
    pub fn new(lines: Arc<dyn IrqLines>, reset: Arc<AtomicBool>) -> Self {
        let mut ram = [0; 32];
        ram[0] = CTR_POWER_ON;
        I8042 {
            lines,
            reset,
            ram,
            outport: OUT_POWER_ON,
            out: None,
            last_out: 0,
            last_write_cmd: false,
            param: Param::None,
            kbd: Keyboard::new(),
            irq_kbd: false,
            irq_aux: false,
        }
    }

    /// The command byte.
    pub fn command_byte(&self) -> u8 {
        self.ram[0]
    }

    /// The output port as stored (A20 in bit 1).
    pub fn output_port(&self) -> u8 {
        self.outport
    }

    fn status(&self) -> u8 {
        let mut s = STS_UNLOCKED;
        if let Some(o) = self.out {
            s |= STS_OBF;
            if o.aux {
                s |= STS_AUXDATA;
            }
            if o.timeout {
                s |= STS_TIMEOUT;
            }
        }
        if self.ram[0] & CTR_SYS != 0 {
            s |= STS_SYS;
        }
        if self.last_write_cmd {
            s |= STS_CMD;
        }
        s
    }

    fn output_port_value(&self) -> u8 {
        let mut v = self.outport & !(OUT_KBD_OBF | OUT_AUX_OBF);
        match self.out {
            Some(o) if o.aux => v |= OUT_AUX_OBF,
            Some(_) => v |= OUT_KBD_OBF,
            None => {}
        }
        v
    }

    fn put(&mut self, byte: u8, aux: bool, timeout: bool) {
        self.out = Some(Output { byte, aux, timeout });
    }

    /// Moves the keyboard's next byte into an empty output buffer.
    fn pump(&mut self) {
        if self.out.is_some() || self.ram[0] & CTR_KBDDIS != 0 {
            return;
        }
        if let Some(b) = self.kbd.queue.pop_front() {
            let b = if self.ram[0] & CTR_XLATE != 0 {
                translate(b)
            } else {
                b
            };
            self.put(b, false, false);
        }
    }

    fn update_irq(&mut self) {
        let (kbd, aux) = match self.out {
            Some(o) if o.aux => (false, self.ram[0] & CTR_AUXINT != 0),
            Some(_) => (self.ram[0] & CTR_KBDINT != 0, false),
            None => (false, false),
        };
        if kbd != self.irq_kbd {
            self.irq_kbd = kbd;
            if kbd {
                self.lines.assert_irq(KBD_IRQ);
            } else {
                self.lines.deassert_irq(KBD_IRQ);
            }
        }
        if aux != self.irq_aux {
            self.irq_aux = aux;
            if aux {
                self.lines.assert_irq(AUX_IRQ);
            } else {
                self.lines.deassert_irq(AUX_IRQ);
            }
        }
    }

    fn pulse_reset(&self) {
        self.reset.store(true, Ordering::SeqCst);
    }

    fn read_data(&mut self) -> u8 {
        if let Some(o) = self.out.take() {
            self.last_out = o.byte;
            // Lower the line before the next byte raises it again.
            self.update_irq();
            self.pump();
            self.update_irq();
        }
        self.last_out
    }

    fn command(&mut self, cmd: u8) {
        self.last_write_cmd = true;
        self.param = Param::None;
        match cmd {
            0x20..=0x3F => self.put(self.ram[usize::from(cmd - 0x20)], false, false),
            0x60..=0x7F => self.param = Param::Ram(cmd - 0x60),
            0xA7 => self.ram[0] |= CTR_AUXDIS,
            0xA8 => self.ram[0] &= !CTR_AUXDIS,
            0xA9 | 0xAB => self.put(0x00, false, false),
            0xAA => {
                self.ram[0] |= CTR_SYS;
                self.put(0x55, false, false);
            }
            0xAD => self.ram[0] |= CTR_KBDDIS,
            0xAE => self.ram[0] &= !CTR_KBDDIS,
            0xD0 => self.put(self.output_port_value(), false, false),
            0xD1 => self.param = Param::OutputPort,
            0xD2 => self.param = Param::KbdOutput,
            0xD3 => self.param = Param::AuxOutput,
            0xD4 => self.param = Param::Aux,
            0xDD => self.outport &= !OUT_A20,
            0xDF => self.outport |= OUT_A20,
            // Pulses of output port bits 0-3; bit 0 is the reset line.
            0xF0..=0xFF if cmd & OUT_RESET == 0 => self.pulse_reset(),
            _ => {}
        }
        self.pump();
        self.update_irq();
    }

    fn write_data(&mut self, byte: u8) {
        self.last_write_cmd = false;
        match std::mem::replace(&mut self.param, Param::None) {
            Param::Ram(i) => self.ram[usize::from(i)] = byte,
            Param::OutputPort => {
                self.outport = byte;
                if byte & OUT_RESET == 0 {
                    self.pulse_reset();
                }
            }
            Param::KbdOutput => self.put(byte, false, false),
            Param::AuxOutput => self.put(byte, true, false),
            // Nothing on the aux port: the transmission times out.
            Param::Aux => self.put(KBD_RESEND, true, true),
            Param::None => {
                self.ram[0] &= !CTR_KBDDIS;
                self.kbd.receive(byte);
            }
        }
        self.pump();
        self.update_irq();
    }
}

impl PioDevice for I8042 {
    fn pio_read(&mut self, offset: u16, size: u8) -> u32 {
        let v = match offset {
            DATA => self.read_data(),
            CMD => self.status(),
            _ => return all_ones(size),
        };
        (all_ones(size) & !0xFF) | u32::from(v)
    }

    fn pio_write(&mut self, offset: u16, _size: u8, value: u32) {
        match offset {
            DATA => self.write_data(value as u8),
            CMD => self.command(value as u8),
            _ => {}
        }
    }
}

/// One of the controller's two ports on the bus (they are not adjacent:
/// 0x61 belongs to the i8253).
pub struct I8042Port {
    kbc: Arc<Mutex<I8042>>,
    offset: u16,
}

impl I8042Port {
    /// The data port, for [`KBC_DATA`].
    pub fn data(kbc: Arc<Mutex<I8042>>) -> Self {
        I8042Port { kbc, offset: DATA }
    }

    /// The status/command port, for [`KBC_CMD`].
    pub fn command(kbc: Arc<Mutex<I8042>>) -> Self {
        I8042Port { kbc, offset: CMD }
    }
}

impl PioDevice for I8042Port {
    fn pio_read(&mut self, _offset: u16, size: u8) -> u32 {
        self.kbc.lock().unwrap().pio_read(self.offset, size)
    }

    fn pio_write(&mut self, _offset: u16, size: u8, value: u32) {
        self.kbc.lock().unwrap().pio_write(self.offset, size, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::bus::PioBus;
    use crate::devices::irq::RecordingLines;

    struct Rig {
        kbc: I8042,
        lines: Arc<RecordingLines>,
        reset: Arc<AtomicBool>,
    }

    impl Rig {
        fn new() -> Self {
            let lines = Arc::new(RecordingLines::default());
            let reset = Arc::new(AtomicBool::new(false));
            Rig {
                kbc: I8042::new(lines.clone(), reset.clone()),
                lines,
                reset,
            }
        }
        fn status(&mut self) -> u8 {
            self.kbc.pio_read(CMD, 1) as u8
        }
        fn cmd(&mut self, c: u8) {
            self.kbc.pio_write(CMD, 1, u32::from(c));
        }
        fn data(&mut self, d: u8) {
            self.kbc.pio_write(DATA, 1, u32::from(d));
        }
        fn read(&mut self) -> u8 {
            self.kbc.pio_read(DATA, 1) as u8
        }
        /// Reads the output buffer until empty.
        fn drain(&mut self) -> Vec<u8> {
            let mut v = Vec::new();
            while self.status() & STS_OBF != 0 {
                v.push(self.read());
                assert!(v.len() < 64, "output never empties");
            }
            v
        }
        /// Bytes to the keyboard, collecting the answers to each.
        fn send(&mut self, bytes: &[u8]) -> Vec<u8> {
            let mut got = Vec::new();
            for &b in bytes {
                self.data(b);
                got.extend(self.drain());
            }
            got
        }
        /// A controller command with one parameter.
        fn cmd_param(&mut self, c: u8, p: u8) {
            self.cmd(c);
            self.data(p);
        }
        fn events(&self) -> Vec<(u8, bool)> {
            std::mem::take(&mut *self.lines.events.lock().unwrap())
        }
        /// Translation off, interrupts off, so raw keyboard bytes show.
        fn raw(&mut self) {
            self.cmd_param(0x60, 0x00);
            self.events();
        }
    }

    #[test]
    fn power_on_state() {
        let mut r = Rig::new();
        // Nothing to read, nothing busy, not inhibited, cold boot.
        assert_eq!(r.status(), STS_UNLOCKED);
        assert_eq!(r.kbc.command_byte(), CTR_KBDINT | CTR_XLATE);
        assert!(r.events().is_empty());
        assert!(!r.reset.load(Ordering::SeqCst));
    }

    #[test]
    fn command_byte_read_and_write() {
        let mut r = Rig::new();
        r.cmd(0x20);
        assert_eq!(r.status(), STS_UNLOCKED | STS_CMD | STS_OBF);
        assert_eq!(r.read(), CTR_KBDINT | CTR_XLATE);
        assert_eq!(r.status() & STS_OBF, 0);
        r.cmd_param(0x60, 0x65);
        assert_eq!(r.status() & STS_CMD, 0);
        assert_eq!(r.kbc.command_byte(), 0x65);
        // Bit 2 is the status register's system flag.
        assert_ne!(r.status() & STS_SYS, 0);
        r.cmd(0x20);
        assert_eq!(r.drain(), vec![0x65]);
        // The rest of the RAM is plain storage.
        r.cmd_param(0x65, 0x5A);
        r.cmd(0x25);
        assert_eq!(r.drain(), vec![0x5A]);
    }

    #[test]
    fn self_test_and_interface_tests() {
        let mut r = Rig::new();
        r.cmd(0xAA);
        assert_eq!(r.drain(), vec![0x55]);
        assert_ne!(r.status() & STS_SYS, 0);
        r.cmd(0xAB);
        assert_eq!(r.drain(), vec![0x00]);
        r.cmd(0xA9);
        assert_eq!(r.drain(), vec![0x00]);
        // An empty buffer reads back the last byte.
        assert_eq!(r.read(), 0x00);
    }

    #[test]
    fn interface_enable_bits() {
        let mut r = Rig::new();
        r.cmd(0xAD);
        r.cmd(0xA7);
        assert_eq!(
            r.kbc.command_byte() & (CTR_KBDDIS | CTR_AUXDIS),
            CTR_KBDDIS | CTR_AUXDIS
        );
        r.cmd(0xAE);
        assert_eq!(r.kbc.command_byte() & CTR_KBDDIS, 0);
        r.cmd(0xA8);
        assert_eq!(r.kbc.command_byte() & CTR_AUXDIS, 0);
        assert!(r.drain().is_empty());
    }

    #[test]
    fn output_port_and_a20() {
        let mut r = Rig::new();
        r.cmd(0xD0);
        assert_eq!(r.drain(), vec![0xCF]);
        r.cmd_param(0xD1, 0xDD);
        assert_eq!(r.kbc.output_port() & OUT_A20, 0);
        r.cmd(0xDF);
        assert_eq!(r.kbc.output_port() & OUT_A20, OUT_A20);
        r.cmd(0xDD);
        assert_eq!(r.kbc.output_port() & OUT_A20, 0);
        // Bits 4/5 are not stored: they show whether the output buffer
        // holds keyboard or aux data when the command runs.
        r.cmd_param(0xD1, 0xFF);
        r.cmd(0xD0);
        assert_eq!(r.drain(), vec![0xCF]);
        r.cmd_param(0xD2, 0x11);
        r.cmd(0xD0);
        assert_eq!(r.drain(), vec![0xCF | OUT_KBD_OBF]);
        r.cmd_param(0xD3, 0x11);
        r.cmd(0xD0);
        assert_eq!(r.drain(), vec![0xCF | OUT_AUX_OBF]);
        assert!(!r.reset.load(Ordering::SeqCst));
    }

    #[test]
    fn reset_pulses() {
        let mut r = Rig::new();
        r.cmd(0xFF); // pulses nothing
        r.cmd(0xF1);
        assert!(!r.reset.load(Ordering::SeqCst));
        r.cmd(0xFE);
        assert!(r.reset.swap(false, Ordering::SeqCst));
        r.cmd(0xF0);
        assert!(r.reset.swap(false, Ordering::SeqCst));
        // Clearing output port bit 0 resets too.
        r.cmd_param(0xD1, 0xDE);
        assert!(r.reset.swap(false, Ordering::SeqCst));
        // 0xFE as a parameter or to the keyboard is no reset.
        r.cmd_param(0x60, 0xFE);
        r.data(0xFE);
        assert!(!r.reset.load(Ordering::SeqCst));
    }

    #[test]
    fn write_output_buffer_commands() {
        let mut r = Rig::new();
        r.raw();
        r.cmd_param(0xD2, 0x42);
        assert_eq!(r.status() & (STS_OBF | STS_AUXDATA), STS_OBF);
        assert_eq!(r.read(), 0x42);
        r.cmd_param(0xD3, 0x5A);
        assert_eq!(r.status() & (STS_OBF | STS_AUXDATA), STS_OBF | STS_AUXDATA);
        assert_eq!(r.read(), 0x5A);
        assert_eq!(r.status() & STS_AUXDATA, 0);
    }

    #[test]
    fn aux_device_absent_times_out_with_nak() {
        let mut r = Rig::new();
        r.cmd_param(0x60, CTR_AUXINT);
        r.events();
        r.cmd_param(0xD4, 0xFF);
        assert_eq!(
            r.status() & (STS_OBF | STS_AUXDATA | STS_TIMEOUT),
            STS_OBF | STS_AUXDATA | STS_TIMEOUT
        );
        assert_eq!(r.events(), vec![(AUX_IRQ, true)]);
        assert_eq!(r.read(), 0xFE);
        assert_eq!(r.events(), vec![(AUX_IRQ, false)]);
        assert_eq!(r.status() & (STS_AUXDATA | STS_TIMEOUT), 0);
        // The keyboard did not see the byte.
        assert!(r.drain().is_empty());
    }

    #[test]
    fn keyboard_reset() {
        let mut r = Rig::new();
        r.raw();
        r.data(0xFF);
        assert_eq!(r.status() & STS_CMD, 0);
        assert_eq!(r.drain(), vec![0xFA, 0xAA]);
    }

    #[test]
    fn keyboard_get_id_raw_and_translated() {
        let mut r = Rig::new();
        r.raw();
        r.data(0xF2);
        assert_eq!(r.drain(), vec![0xFA, 0xAB, 0x83]);
        r.cmd_param(0x60, CTR_XLATE);
        r.data(0xF2);
        assert_eq!(r.drain(), vec![0xFA, 0xAB, 0x41]);
    }

    #[test]
    fn keyboard_parameter_commands() {
        let mut r = Rig::new();
        r.raw();
        r.data(0xED);
        assert_eq!(r.drain(), vec![0xFA]);
        r.data(0x07);
        assert_eq!(r.drain(), vec![0xFA]);
        assert_eq!(r.kbc.kbd.leds, 7);
        r.data(0xF3);
        r.data(0x20);
        assert_eq!(r.drain(), vec![0xFA, 0xFA]);
        assert_eq!(r.kbc.kbd.typematic, 0x20);
        // A command where the parameter is due runs as a command.
        r.data(0xED);
        r.data(0xEE);
        assert_eq!(r.drain(), vec![0xFA, 0xEE]);
        assert_eq!(r.kbc.kbd.leds, 7);
    }

    #[test]
    fn keyboard_scancode_set() {
        let mut r = Rig::new();
        r.raw();
        r.data(0xF0);
        r.data(0x00);
        assert_eq!(r.drain(), vec![0xFA, 0xFA, 0x02]);
        r.data(0xF0);
        r.data(0x03);
        assert_eq!(r.drain(), vec![0xFA, 0xFA]);
        r.data(0xF0);
        r.data(0x00);
        assert_eq!(r.drain(), vec![0xFA, 0xFA, 0x03]);
        r.data(0xF0);
        r.data(0x04);
        assert_eq!(r.drain(), vec![0xFA, 0xFE]);
        // Translated, the set number reads in set 1 terms.
        r.cmd_param(0x60, CTR_XLATE);
        assert_eq!(
            r.send(&[0xF0, 0x02, 0xF0, 0x00]),
            [0xFA, 0xFA, 0xFA, 0xFA, 0x41]
        );
        // Defaults bring back set 2.
        r.raw();
        assert_eq!(r.send(&[0xF0, 0x01, 0xF6]), [0xFA, 0xFA, 0xFA]);
        assert_eq!(r.send(&[0xF0, 0x00]), [0xFA, 0xFA, 0x02]);
    }

    #[test]
    fn keyboard_scanning_echo_resend_unknown() {
        let mut r = Rig::new();
        r.raw();
        r.data(0xF5);
        assert_eq!(r.drain(), vec![0xFA]);
        assert!(!r.kbc.kbd.scanning);
        r.data(0xF4);
        assert_eq!(r.drain(), vec![0xFA]);
        assert!(r.kbc.kbd.scanning);
        r.data(0xEE);
        assert_eq!(r.drain(), vec![0xEE]);
        r.data(0xFE);
        assert_eq!(r.drain(), vec![0xEE]);
        r.data(0xE8);
        assert_eq!(r.drain(), vec![0xFE]);
    }

    #[test]
    fn keyboard_waits_while_interface_disabled() {
        let mut r = Rig::new();
        r.raw();
        r.data(0xF2);
        // Disabling after the ACK was delivered holds back the rest.
        r.cmd(0xAD);
        assert_eq!(r.drain(), vec![0xFA]);
        assert!(r.drain().is_empty());
        r.cmd(0xAE);
        assert_eq!(r.drain(), vec![0xAB, 0x83]);
        // Writing to the keyboard enables the interface.
        r.cmd(0xAD);
        r.data(0xF4);
        assert_eq!(r.kbc.command_byte() & CTR_KBDDIS, 0);
        assert_eq!(r.drain(), vec![0xFA]);
    }

    #[test]
    fn keyboard_discards_uncollected_answers() {
        let mut r = Rig::new();
        r.raw();
        r.data(0xF2);
        // 0xFA is in the output buffer; 0xAB 0x83 are dropped by the
        // next command.
        r.data(0xEE);
        assert_eq!(r.drain(), vec![0xFA, 0xEE]);
    }

    #[test]
    fn keyboard_irq_follows_output_and_command_byte() {
        let mut r = Rig::new();
        // Power-on command byte has the keyboard interrupt on; controller
        // results raise it too.
        r.cmd(0xAA);
        assert_eq!(r.events(), vec![(KBD_IRQ, true)]);
        assert_eq!(r.read(), 0x55);
        assert_eq!(r.events(), vec![(KBD_IRQ, false)]);

        // Each queued byte is a fresh edge.
        r.data(0xFF);
        assert_eq!(r.events(), vec![(KBD_IRQ, true)]);
        assert_eq!(r.read(), 0xFA);
        assert_eq!(r.events(), vec![(KBD_IRQ, false), (KBD_IRQ, true)]);
        assert_eq!(r.read(), 0xAA);
        assert_eq!(r.events(), vec![(KBD_IRQ, false)]);

        // Interrupts off: output but no line; turning them on with data
        // waiting raises it.
        r.cmd_param(0x60, CTR_XLATE);
        r.data(0xEE);
        assert!(r.events().is_empty());
        r.cmd_param(0x60, CTR_XLATE | CTR_KBDINT);
        assert_eq!(r.events(), vec![(KBD_IRQ, true)]);
        r.cmd_param(0x60, CTR_XLATE);
        assert_eq!(r.events(), vec![(KBD_IRQ, false)]);
        assert_eq!(r.drain(), vec![0xEE]);
        assert!(r.events().is_empty());
    }

    /// SeaBIOS's POST sequence (ps2port.c) completes without a timeout.
    #[test]
    fn seabios_probe_sequence() {
        let mut r = Rig::new();
        // Flush, controller self-test, keyboard interface test.
        assert!(r.drain().is_empty());
        r.cmd(0xAA);
        assert_eq!(r.drain(), vec![0x55]);
        r.cmd(0xAB);
        assert_eq!(r.drain(), vec![0x00]);
        // Each keyboard command: interrupts and both ports off, keyboard
        // port on, send, collect, restore.
        fn kbd(r: &mut Rig, bytes: &[u8]) -> Vec<u8> {
            let off = CTR_AUXDIS | CTR_KBDDIS;
            r.cmd_param(0x60, off);
            r.cmd_param(0x60, off & !CTR_KBDDIS);
            assert_eq!(r.status() & STS_IBF, 0);
            let got = r.send(bytes);
            r.cmd_param(0x60, CTR_AUXDIS | CTR_XLATE | CTR_KBDINT);
            got
        }
        assert_eq!(kbd(&mut r, &[0xFF]), vec![0xFA, 0xAA]);
        assert_eq!(kbd(&mut r, &[0xF5]), vec![0xFA]);
        assert_eq!(kbd(&mut r, &[0xF0, 0x02]), vec![0xFA, 0xFA]);
        assert_eq!(kbd(&mut r, &[0xF4]), vec![0xFA]);
        // A mouse probe gets a NAK at once.
        r.cmd_param(0xD4, 0xF2);
        assert_eq!(r.status() & STS_AUXDATA, STS_AUXDATA);
        assert_eq!(r.drain(), vec![0xFE]);
    }

    #[test]
    fn ports_on_the_bus() {
        let lines = Arc::new(RecordingLines::default());
        let reset = Arc::new(AtomicBool::new(false));
        let kbc = Arc::new(Mutex::new(I8042::new(lines, reset.clone())));
        let mut bus = PioBus::new();
        bus.register(
            KBC_DATA,
            1,
            Arc::new(Mutex::new(I8042Port::data(kbc.clone()))),
        )
        .unwrap();
        bus.register(KBC_CMD, 1, Arc::new(Mutex::new(I8042Port::command(kbc))))
            .unwrap();
        assert!(!bus.is_claimed(0x61));
        assert_eq!(bus.read(KBC_CMD, 1), u32::from(STS_UNLOCKED));
        bus.write(KBC_CMD, 1, 0xAA);
        assert_eq!(bus.read(KBC_CMD, 1) & u32::from(STS_OBF), 1);
        assert_eq!(bus.read(KBC_DATA, 2), 0xFF55);
        bus.write(KBC_CMD, 1, 0xFE);
        assert!(reset.load(Ordering::SeqCst));
    }
}
