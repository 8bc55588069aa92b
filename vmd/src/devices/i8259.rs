//! The i8259A master/slave interrupt controller pair and the ELCR
//! (reference §4.2, §4.4; vmd's `i8259.c`).
//!
//! Ports: master at 0x20–0x21, slave at 0xA0–0xA1 (cascaded on master
//! input 2), edge/level control registers at 0x4D0–0x4D1.  One [`I8259`]
//! holds the state of both chips behind a mutex; devices raise and lower
//! lines through its [`IrqLines`] implementation from any thread, the vCPU
//! loop asks [`I8259::is_pending`] and takes vectors with [`I8259::ack`],
//! and the port adapters [`PicPort`] and [`ElcrPort`] put the guest's
//! accesses on the same state.
//!
//! Behaviour kept from vmd: only the PC wiring is accepted at
//! initialisation (ICW1 must request ICW4 and select cascade mode,
//! edge-triggered, 8086 interval; ICW4 must select 8086 mode, no buffered
//! or master/slave mode) and other sequences are ignored; the IMR does not
//! stop a request from latching (an IRQ raised while masked is delivered
//! once unmasked); lowering an edge-triggered line leaves its request
//! latched, lowering a level-triggered line withdraws it; reads of the
//! command port return the IRR or the ISR as chosen by OCW3; no spurious
//! IRQ 7/15 is generated — [`I8259::ack`] returns `None` instead.
//!
//! Where vmd simplifies, this model follows the 8259A data sheet: the
//! in-service register blocks requests of equal or lower priority (unless
//! special mask mode is on), the slave competes at master priority 2,
//! master IMR bit 2 masks the whole slave, automatic EOI and poll mode
//! work, rotations make the serviced line the lowest priority, and a
//! level-triggered line that is still high is requested again after its
//! EOI.
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::devices::bus::PioDevice;
use crate::devices::irq::IrqLines;

/// First port of the master PIC (`IO_ICU1`).
pub const IO_ICU1: u16 = 0x20;
/// First port of the slave PIC (`IO_ICU2`).
pub const IO_ICU2: u16 = 0xA0;
/// First edge/level control register (`ELCR0`); `ELCR1` follows.
pub const ELCR0: u16 = 0x4D0;

/// The master input the slave is wired to.
const CASCADE_IRQ: u8 = 2;

const ICW1_ICW4: u8 = 0x01;
const ICW1_INIT: u8 = 0x10;
const ICW4_UP: u8 = 0x01;
const ICW4_AEOI: u8 = 0x02;
const ICW4_MS: u8 = 0x04;
const ICW4_BUF: u8 = 0x08;

const OCW_SELECT: u8 = 0x08;
const OCW3_RIS: u8 = 0x01;
const OCW3_RR: u8 = 0x02;
const OCW3_POLL: u8 = 0x04;
const OCW3_SMM: u8 = 0x20;
const OCW3_SMACTION: u8 = 0x40;

/// ELCR bits that are hard-wired to edge: IRQ 0, 1, 2 on ELCR0 and IRQ 8
/// and 13 on ELCR1 (the PIT, keyboard, cascade, RTC and FPU lines).
const ELCR_WRITABLE: [u8; 2] = [0xF8, 0xDE];

/// Which chip of the pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chip {
    Master = 0,
    Slave = 1,
}

/// Called with `true` when a raised line leaves an interrupt pending and
/// with `false` when a lowered line leaves nothing pending (vmd's
/// `vcpu_assert_irq` / `vcpu_deassert_irq`: `VMM_IOC_INTR` 1 or 0 and the
/// wake-up of a halted vCPU).  It runs on the thread that changed the
/// line, after the controller's state lock has been released; it may call
/// [`I8259::is_pending`] but must not raise or lower lines.
pub type Notify = Box<dyn Fn(bool) + Send + Sync>;

#[derive(Debug)]
struct Pic {
    /// Requests: latched edges, or the current level of level lines.
    irr: u8,
    imr: u8,
    isr: u8,
    /// Levels of the input lines as last raised or lowered.
    lines: u8,
    /// Edge (0) or level (1) per line.
    elcr: u8,
    vector_base: u8,
    /// The line with the lowest priority; the next one has the highest.
    lowest_pri: u8,
    /// The ICW expected next on the data port (2–4), or 0 when running.
    next_icw: u8,
    read_isr: bool,
    poll: bool,
    special_mask: bool,
    auto_eoi: bool,
    rotate_on_aeoi: bool,
    icw3: u8,
}

impl Pic {
    fn new() -> Self {
        Self {
            irr: 0,
            imr: 0,
            isr: 0,
            lines: 0,
            elcr: 0,
            vector_base: 0,
            lowest_pri: 7,
            next_icw: 0,
            read_isr: false,
            poll: false,
            special_mask: false,
            auto_eoi: false,
            rotate_on_aeoi: false,
            icw3: 0,
        }
    }

    /// The highest-priority line set in `bits`.
    fn highest(&self, bits: u8) -> Option<u8> {
        (1..=8u8)
            .map(|p| (self.lowest_pri + p) & 7)
            .find(|&irq| bits & (1 << irq) != 0)
    }

    /// 0 for the highest priority, 7 for the lowest.
    fn rank(&self, irq: u8) -> u8 {
        irq.wrapping_sub(self.lowest_pri).wrapping_sub(1) & 7
    }

    /// The line this chip would present on INTA given requests `irr`, or
    /// None if nothing unmasked outranks what is in service.
    fn deliverable(&self, irr: u8) -> Option<u8> {
        let irq = self.highest(irr & !self.imr)?;
        let mut in_service = self.isr;
        if self.special_mask {
            in_service &= !self.imr;
        }
        match self.highest(in_service) {
            Some(busy) if self.rank(busy) <= self.rank(irq) => None,
            _ => Some(irq),
        }
    }

    /// INTA (or a poll read) for `irq`.
    fn intack(&mut self, irq: u8) {
        let bit = 1 << irq;
        if self.elcr & bit == 0 {
            self.irr &= !bit;
        }
        if self.auto_eoi {
            if self.rotate_on_aeoi {
                self.lowest_pri = irq;
            }
        } else {
            self.isr |= bit;
        }
    }

    fn raise(&mut self, line: u8) {
        let bit = 1 << line;
        self.lines |= bit;
        self.irr |= bit;
    }

    fn lower(&mut self, line: u8) {
        let bit = 1 << line;
        self.lines &= !bit;
        if self.elcr & bit != 0 {
            self.irr &= !bit;
        }
    }

    fn set_elcr(&mut self, value: u8) {
        let newly_level = value & !self.elcr;
        self.elcr = value;
        // A line switched to level now requests exactly while it is high.
        self.irr = (self.irr & !newly_level) | (self.lines & newly_level);
    }

    /// A non-specific EOI: ends the highest-priority interrupt in service.
    fn eoi_highest(&mut self) -> Option<u8> {
        let irq = self.highest(self.isr)?;
        self.isr &= !(1 << irq);
        Some(irq)
    }

    fn write_command(&mut self, data: u8) {
        if data & ICW1_INIT != 0 {
            // vmd accepts only ICW1 = 0x11: ICW4 needed, cascade mode,
            // interval 8, edge-triggered, no MCS-80 vector address.
            if data != ICW1_INIT | ICW1_ICW4 {
                return;
            }
            self.next_icw = 2;
            self.imr = 0;
            self.isr = 0;
            self.irr = self.lines & self.elcr;
            self.lowest_pri = 7;
            self.read_isr = false;
            self.poll = false;
            self.special_mask = false;
            self.auto_eoi = false;
            self.rotate_on_aeoi = false;
            return;
        }
        if data & OCW_SELECT != 0 {
            // OCW3.
            if data & OCW3_RR != 0 {
                self.read_isr = data & OCW3_RIS != 0;
            }
            if data & OCW3_SMACTION != 0 {
                self.special_mask = data & OCW3_SMM != 0;
            }
            if data & OCW3_POLL != 0 {
                self.poll = true;
            }
            return;
        }
        // OCW2: R, SL, EOI in bits 7–5, the line in bits 2–0.
        let level = data & 7;
        match data & 0xE0 {
            0x20 => {
                self.eoi_highest();
            }
            0x60 => self.isr &= !(1 << level),
            0xA0 => {
                if let Some(irq) = self.eoi_highest() {
                    self.lowest_pri = irq;
                }
            }
            0xE0 => {
                self.isr &= !(1 << level);
                self.lowest_pri = level;
            }
            0xC0 => self.lowest_pri = level,
            0x80 => self.rotate_on_aeoi = true,
            0x00 => self.rotate_on_aeoi = false,
            _ => {} // 0x40: no operation
        }
    }

    fn write_data(&mut self, chip: Chip, data: u8) {
        match self.next_icw {
            0 => self.imr = data,
            2 => {
                self.vector_base = data & 0xF8;
                self.next_icw = 3;
            }
            3 => {
                // A slave's ICW3 is its identity, 0–7.
                if chip == Chip::Slave && data & 0xF8 != 0 {
                    return;
                }
                self.icw3 = data;
                self.next_icw = 4;
            }
            _ => {
                if data & ICW4_UP == 0 || data & (ICW4_MS | ICW4_BUF) != 0 || data & 0xE0 != 0 {
                    return;
                }
                self.auto_eoi = data & ICW4_AEOI != 0;
                self.next_icw = 0;
            }
        }
    }
}

/// Both chips.  Master input 2 is not stored: it is the slave's output.
#[derive(Debug)]
struct PicPair {
    pics: [Pic; 2],
}

impl PicPair {
    fn slave_output(&self) -> bool {
        let slave = &self.pics[Chip::Slave as usize];
        slave.deliverable(slave.irr).is_some()
    }

    fn master_irr(&self) -> u8 {
        let cascade = if self.slave_output() {
            1 << CASCADE_IRQ
        } else {
            0
        };
        (self.pics[Chip::Master as usize].irr & !(1 << CASCADE_IRQ)) | cascade
    }

    fn irr(&self, chip: Chip) -> u8 {
        match chip {
            Chip::Master => self.master_irr(),
            Chip::Slave => self.pics[Chip::Slave as usize].irr,
        }
    }

    fn master_deliverable(&self) -> Option<u8> {
        self.pics[Chip::Master as usize].deliverable(self.master_irr())
    }

    fn is_pending(&self) -> bool {
        self.master_deliverable().is_some()
    }

    fn ack(&mut self) -> Option<u8> {
        let irq = self.master_deliverable()?;
        if irq != CASCADE_IRQ {
            let master = &mut self.pics[Chip::Master as usize];
            master.intack(irq);
            return Some(master.vector_base + irq);
        }
        let slave = &mut self.pics[Chip::Slave as usize];
        let line = slave.deliverable(slave.irr)?;
        slave.intack(line);
        let vector = slave.vector_base + line;
        self.pics[Chip::Master as usize].intack(CASCADE_IRQ);
        Some(vector)
    }

    fn set_line(&mut self, irq: u8, high: bool) {
        if irq > 15 || irq == CASCADE_IRQ {
            return;
        }
        let (pic, line) = if irq < 8 {
            (&mut self.pics[Chip::Master as usize], irq)
        } else {
            (&mut self.pics[Chip::Slave as usize], irq - 8)
        };
        if high {
            pic.raise(line);
        } else {
            pic.lower(line);
        }
    }

    /// A poll-mode read: 0x80 | line for the highest request, acknowledged
    /// as INTA would; 0 when there is none.
    fn poll_read(&mut self, chip: Chip) -> u8 {
        self.pics[chip as usize].poll = false;
        let irr = self.irr(chip);
        let pic = &mut self.pics[chip as usize];
        match pic.deliverable(irr) {
            Some(irq) => {
                pic.intack(irq);
                0x80 | irq
            }
            None => 0,
        }
    }

    fn read(&mut self, chip: Chip, offset: u16) -> u8 {
        if self.pics[chip as usize].poll {
            return self.poll_read(chip);
        }
        let pic = &self.pics[chip as usize];
        match offset {
            0 if pic.read_isr => pic.isr,
            0 => self.irr(chip),
            _ => pic.imr,
        }
    }

    fn write(&mut self, chip: Chip, offset: u16, data: u8) {
        let pic = &mut self.pics[chip as usize];
        if offset == 0 {
            pic.write_command(data);
        } else {
            pic.write_data(chip, data);
        }
    }
}

/// The i8259 pair shared by the vCPU loop, the devices and the port
/// adapters; hold it in an `Arc`.
pub struct I8259 {
    state: Mutex<PicPair>,
    /// Also serialises line changes, so notifications arrive in order.
    notify: Mutex<Option<Notify>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Default for I8259 {
    fn default() -> Self {
        Self::new()
    }
}

impl I8259 {
    /// Both chips as vmd's `i8259_init` leaves them: awaiting ICW1, all
    /// lines edge-triggered, nothing masked.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(PicPair {
                pics: [Pic::new(), Pic::new()],
            }),
            notify: Mutex::new(None),
        }
    }

    /// As [`I8259::new`], reporting pending-state changes to `notify`.
    pub fn with_notify(notify: impl Fn(bool) + Send + Sync + 'static) -> Self {
        let pic = Self::new();
        pic.set_notify(notify);
        pic
    }

    /// Installs or replaces the notification callback.
    pub fn set_notify(&self, notify: impl Fn(bool) + Send + Sync + 'static) {
        *lock(&self.notify) = Some(Box::new(notify));
    }

    /// An unmasked interrupt that outranks everything in service is
    /// waiting for INTA (vmd's `i8259_is_pending`).
    pub fn is_pending(&self) -> bool {
        lock(&self.state).is_pending()
    }

    /// INTA: the vector of the highest-priority pending interrupt, moving
    /// it from IRR to ISR on the chip(s) involved (through the master's
    /// input 2 for a slave line).  None when nothing is pending (vmd's
    /// `i8259_ack` returning 0xFFFF).
    pub fn ack(&self) -> Option<u8> {
        lock(&self.state).ack()
    }

    /// Marks `irq` (0–15) level- (`true`) or edge-triggered (vmd's
    /// `pic_set_elcr`, used when PCI devices get their line).  IRQ 0, 1,
    /// 2, 8 and 13 stay edge-triggered.
    pub fn set_elcr(&self, irq: u8, level: bool) {
        if irq > 15 {
            return;
        }
        let (chip, bit) = if irq < 8 {
            (0, 1 << irq)
        } else {
            (1, 1 << (irq - 8))
        };
        let mut state = lock(&self.state);
        let pic = &mut state.pics[chip];
        let value = if level {
            pic.elcr | bit
        } else {
            pic.elcr & !bit
        };
        pic.set_elcr(value & ELCR_WRITABLE[chip]);
    }

    /// A guest read of `offset` (0 command, 1 data) on `chip`.
    pub fn read_port(&self, chip: Chip, offset: u16) -> u8 {
        lock(&self.state).read(chip, offset)
    }

    /// A guest write of `data` to `offset` (0 command, 1 data) on `chip`.
    pub fn write_port(&self, chip: Chip, offset: u16, data: u8) {
        lock(&self.state).write(chip, offset, data)
    }

    /// ELCR `index` (0 for IRQ 0–7, 1 for IRQ 8–15).
    pub fn read_elcr(&self, index: usize) -> u8 {
        lock(&self.state).pics[index & 1].elcr
    }

    pub fn write_elcr(&self, index: usize, value: u8) {
        let index = index & 1;
        lock(&self.state).pics[index].set_elcr(value & ELCR_WRITABLE[index]);
    }

    fn change_line(&self, irq: u8, high: bool) {
        let notify = lock(&self.notify);
        let pending = {
            let mut state = lock(&self.state);
            state.set_line(irq, high);
            state.is_pending()
        };
        if pending == high {
            if let Some(f) = notify.as_ref() {
                f(pending);
            }
        }
    }
}

impl IrqLines for I8259 {
    fn assert_irq(&self, irq: u8) {
        self.change_line(irq, true);
    }

    fn deassert_irq(&self, irq: u8) {
        self.change_line(irq, false);
    }
}

/// The command and data ports of one chip, registered at 0x20 (master) or
/// 0xA0 (slave) with length 2.  Accesses wider than a byte use the low
/// byte and read it zero-extended, as vmd does.
pub struct PicPort {
    pic: Arc<I8259>,
    chip: Chip,
}

impl PicPort {
    pub fn new(pic: Arc<I8259>, chip: Chip) -> Self {
        Self { pic, chip }
    }
}

impl PioDevice for PicPort {
    fn pio_read(&mut self, offset: u16, _size: u8) -> u32 {
        self.pic.read_port(self.chip, offset & 1) as u32
    }

    fn pio_write(&mut self, offset: u16, _size: u8, value: u32) {
        self.pic.write_port(self.chip, offset & 1, value as u8)
    }
}

/// ELCR0 and ELCR1, registered at 0x4D0 with length 2.
pub struct ElcrPort {
    pic: Arc<I8259>,
}

impl ElcrPort {
    pub fn new(pic: Arc<I8259>) -> Self {
        Self { pic }
    }
}

impl PioDevice for ElcrPort {
    fn pio_read(&mut self, offset: u16, _size: u8) -> u32 {
        self.pic.read_elcr(offset as usize) as u32
    }

    fn pio_write(&mut self, offset: u16, _size: u8, value: u32) {
        self.pic.write_elcr(offset as usize, value as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::bus::PioBus;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The pair behind a port bus, as the VM wires it.
    struct Rig {
        pic: Arc<I8259>,
        bus: PioBus,
    }

    impl Rig {
        fn new() -> Self {
            let pic = Arc::new(I8259::new());
            let mut bus = PioBus::new();
            bus.register(
                IO_ICU1,
                2,
                Arc::new(Mutex::new(PicPort::new(pic.clone(), Chip::Master))),
            )
            .unwrap();
            bus.register(
                IO_ICU2,
                2,
                Arc::new(Mutex::new(PicPort::new(pic.clone(), Chip::Slave))),
            )
            .unwrap();
            bus.register(ELCR0, 2, Arc::new(Mutex::new(ElcrPort::new(pic.clone()))))
                .unwrap();
            Self { pic, bus }
        }

        /// The PC BIOS / OS sequence: vectors 0x20 and 0x28, slave on 2.
        fn initialised() -> Self {
            let rig = Self::new();
            rig.init(0x20, &[0x11, 0x20, 0x04, 0x01]);
            rig.init(0xA0, &[0x11, 0x28, 0x02, 0x01]);
            rig
        }

        /// ICW1 to the command port, the rest to the data port.
        fn init(&self, base: u16, icws: &[u8]) {
            self.out(base, icws[0]);
            for &icw in &icws[1..] {
                self.out(base + 1, icw);
            }
        }

        fn out(&self, port: u16, value: u8) {
            self.bus.write(port, 1, value as u32);
        }

        fn inb(&self, port: u16) -> u8 {
            self.bus.read(port, 1) as u8
        }

        fn irr(&self, port: u16) -> u8 {
            self.out(port, 0x0A);
            self.inb(port)
        }

        fn isr(&self, port: u16) -> u8 {
            self.out(port, 0x0B);
            let isr = self.inb(port);
            self.out(port, 0x0A);
            isr
        }
    }

    #[test]
    fn init_sequence_sets_vectors_and_leaves_everything_unmasked() {
        let rig = Rig::initialised();
        assert_eq!(rig.inb(0x21), 0x00);
        assert_eq!(rig.inb(0xA1), 0x00);
        rig.pic.assert_irq(1);
        assert!(rig.pic.is_pending());
        assert_eq!(rig.pic.ack(), Some(0x21));
        rig.out(0x20, 0x20);
        rig.pic.assert_irq(12);
        assert_eq!(rig.pic.ack(), Some(0x2C));
    }

    #[test]
    fn icw2_keeps_only_the_vector_base_bits() {
        let rig = Rig::new();
        rig.init(0x20, &[0x11, 0x77, 0x04, 0x01]);
        rig.pic.assert_irq(3);
        assert_eq!(rig.pic.ack(), Some(0x73));
    }

    #[test]
    fn unsupported_icw1_is_ignored_and_the_data_port_stays_the_imr() {
        let rig = Rig::initialised();
        // Single mode, level-triggered mode, no ICW4: vmd refuses all.
        for icw1 in [0x13, 0x19, 0x10, 0x31] {
            rig.out(0x20, icw1);
            rig.out(0x21, 0xA5);
            assert_eq!(rig.inb(0x21), 0xA5, "icw1 {icw1:#x}");
        }
    }

    #[test]
    fn bad_icw4_leaves_the_chip_waiting_for_a_good_one() {
        let rig = Rig::new();
        rig.init(0x20, &[0x11, 0x08, 0x04]);
        rig.out(0x21, 0x00); // not 8086 mode
        rig.out(0x21, 0x09); // buffered mode
        rig.out(0x21, 0x01);
        rig.out(0x21, 0xFE); // now OCW1
        assert_eq!(rig.inb(0x21), 0xFE);
        rig.pic.assert_irq(0);
        assert_eq!(rig.pic.ack(), Some(0x08));
    }

    #[test]
    fn bad_slave_icw3_is_refused() {
        let rig = Rig::new();
        rig.init(0xA0, &[0x11, 0x70, 0x10, 0x02, 0x01]);
        // 0x10 was refused, 0x02 taken as ICW3, 0x01 as ICW4.
        rig.out(0xA1, 0x3C);
        assert_eq!(rig.inb(0xA1), 0x3C);
    }

    #[test]
    fn icw1_resets_mask_and_service_state() {
        let rig = Rig::initialised();
        rig.out(0x21, 0xFF);
        rig.pic.assert_irq(4);
        rig.out(0x21, 0x00);
        assert_eq!(rig.pic.ack(), Some(0x24));
        assert_eq!(rig.isr(0x20), 0x10);
        rig.out(0x20, 0x11);
        assert_eq!(rig.inb(0x21), 0x00);
        assert_eq!(rig.isr(0x20), 0x00);
        assert_eq!(rig.irr(0x20), 0x00);
    }

    #[test]
    fn masked_irq_latches_and_is_delivered_when_unmasked() {
        let rig = Rig::initialised();
        rig.out(0x21, 0x01);
        rig.pic.assert_irq(0);
        rig.pic.deassert_irq(0);
        assert!(!rig.pic.is_pending());
        assert_eq!(rig.pic.ack(), None);
        assert_eq!(rig.irr(0x20), 0x01);
        rig.out(0x21, 0x00);
        assert!(rig.pic.is_pending());
        assert_eq!(rig.pic.ack(), Some(0x20));
        assert!(!rig.pic.is_pending());
    }

    #[test]
    fn priority_is_by_line_number_and_isr_blocks_lower_lines() {
        let rig = Rig::initialised();
        rig.pic.assert_irq(4);
        rig.pic.assert_irq(3);
        rig.pic.assert_irq(1);
        assert_eq!(rig.irr(0x20), 0x1A);
        assert_eq!(rig.pic.ack(), Some(0x21));
        // IRQ 1 in service: 3 and 4 must wait for its EOI.
        assert!(!rig.pic.is_pending());
        assert_eq!(rig.pic.ack(), None);
        // A higher-priority line still gets through.
        rig.pic.assert_irq(0);
        assert_eq!(rig.pic.ack(), Some(0x20));
        assert_eq!(rig.isr(0x20), 0x03);
        rig.out(0x20, 0x20); // non-specific EOI ends IRQ 0
        assert_eq!(rig.isr(0x20), 0x02);
        assert!(!rig.pic.is_pending());
        rig.out(0x20, 0x20); // ends IRQ 1
        assert_eq!(rig.pic.ack(), Some(0x23));
        rig.out(0x20, 0x63); // specific EOI 3
        assert_eq!(rig.pic.ack(), Some(0x24));
        assert_eq!(rig.isr(0x20), 0x10);
        assert_eq!(rig.irr(0x20), 0x00);
    }

    #[test]
    fn specific_eoi_clears_only_its_line() {
        let rig = Rig::initialised();
        rig.pic.assert_irq(5);
        assert_eq!(rig.pic.ack(), Some(0x25));
        rig.pic.assert_irq(0);
        assert_eq!(rig.pic.ack(), Some(0x20));
        rig.out(0x20, 0x65);
        assert_eq!(rig.isr(0x20), 0x01);
        rig.out(0x20, 0x60);
        assert_eq!(rig.isr(0x20), 0x00);
    }

    #[test]
    fn slave_irq_goes_through_the_cascade_and_needs_two_eois() {
        let rig = Rig::initialised();
        rig.pic.assert_irq(10);
        assert_eq!(rig.irr(0xA0), 0x04);
        assert_eq!(rig.irr(0x20), 0x04);
        assert!(rig.pic.is_pending());
        assert_eq!(rig.pic.ack(), Some(0x2A));
        assert_eq!(rig.isr(0xA0), 0x04);
        assert_eq!(rig.isr(0x20), 0x04);
        assert_eq!(rig.irr(0x20), 0x00);
        // While the cascade is in service, IRQ 3 (lower) waits but IRQ 1
        // (higher) and another slave line do not get through the master.
        rig.pic.assert_irq(3);
        rig.pic.assert_irq(9);
        assert_eq!(rig.pic.ack(), None);
        rig.pic.assert_irq(1);
        assert_eq!(rig.pic.ack(), Some(0x21));
        rig.out(0x20, 0x61);
        rig.out(0xA0, 0x20);
        // Slave free, master still has 2 in service.
        assert_eq!(rig.pic.ack(), None);
        rig.out(0x20, 0x20);
        // Slave lines rank with the cascade input, above IRQ 3.
        assert_eq!(rig.pic.ack(), Some(0x29));
        rig.out(0xA0, 0x20);
        rig.out(0x20, 0x20);
        assert_eq!(rig.pic.ack(), Some(0x23));
    }

    #[test]
    fn masking_the_cascade_masks_the_slave() {
        let rig = Rig::initialised();
        rig.out(0x21, 0x04);
        rig.pic.assert_irq(14);
        assert!(!rig.pic.is_pending());
        rig.out(0xA1, 0x40);
        rig.out(0x21, 0x00);
        assert!(!rig.pic.is_pending());
        assert_eq!(rig.irr(0x20), 0x00);
        rig.out(0xA1, 0x00);
        assert_eq!(rig.pic.ack(), Some(0x2E));
    }

    #[test]
    fn rotation_makes_the_serviced_line_lowest() {
        let rig = Rig::initialised();
        rig.pic.assert_irq(0);
        rig.pic.assert_irq(5);
        assert_eq!(rig.pic.ack(), Some(0x20));
        rig.out(0x20, 0xA0); // rotate on non-specific EOI: 0 becomes lowest
        rig.pic.assert_irq(0);
        assert_eq!(rig.pic.ack(), Some(0x25));
        rig.out(0x20, 0xE5); // rotate on specific EOI 5: 6 is now highest
        rig.pic.assert_irq(7);
        rig.pic.assert_irq(6);
        assert_eq!(rig.pic.ack(), Some(0x26));
        rig.out(0x20, 0x20);
        assert_eq!(rig.pic.ack(), Some(0x27));
        rig.out(0x20, 0x20);
        assert_eq!(rig.pic.ack(), Some(0x20));
        // Set priority: 3 lowest, so 4 first.
        rig.out(0x20, 0x20);
        rig.out(0x20, 0xC3);
        rig.pic.assert_irq(3);
        rig.pic.assert_irq(4);
        assert_eq!(rig.pic.ack(), Some(0x24));
    }

    #[test]
    fn non_specific_eoi_ends_the_highest_priority_in_service() {
        let rig = Rig::initialised();
        rig.out(0x20, 0xC4); // 5 highest, then 6, 7, 0, ...
        rig.pic.assert_irq(1);
        assert_eq!(rig.pic.ack(), Some(0x21));
        rig.pic.assert_irq(6);
        assert_eq!(rig.pic.ack(), Some(0x26));
        rig.out(0x20, 0x20);
        assert_eq!(rig.isr(0x20), 0x02);
    }

    #[test]
    fn auto_eoi_leaves_nothing_in_service() {
        let rig = Rig::new();
        rig.init(0x20, &[0x11, 0x08, 0x04, 0x03]);
        rig.out(0x21, 0x00);
        assert_eq!(rig.inb(0x21), 0x00);
        rig.pic.assert_irq(6);
        assert_eq!(rig.pic.ack(), Some(0x0E));
        assert_eq!(rig.isr(0x20), 0x00);
        rig.pic.assert_irq(7);
        assert_eq!(rig.pic.ack(), Some(0x0F));
        // Rotate in AEOI mode: the serviced line becomes the lowest.
        rig.out(0x20, 0x80);
        rig.pic.assert_irq(1);
        assert_eq!(rig.pic.ack(), Some(0x09));
        rig.pic.assert_irq(0);
        rig.pic.assert_irq(1);
        assert_eq!(rig.pic.ack(), Some(0x08));
    }

    #[test]
    fn special_mask_mode_lets_lower_lines_through() {
        let rig = Rig::initialised();
        rig.pic.assert_irq(1);
        assert_eq!(rig.pic.ack(), Some(0x21));
        rig.pic.assert_irq(5);
        assert_eq!(rig.pic.ack(), None);
        rig.out(0x21, 0x02);
        rig.out(0x20, 0x68); // OCW3: set special mask mode
        assert_eq!(rig.pic.ack(), Some(0x25));
        rig.out(0x20, 0x48); // reset special mask mode
        rig.pic.assert_irq(6);
        assert_eq!(rig.pic.ack(), None);
    }

    #[test]
    fn poll_mode_reads_and_acknowledges_the_highest_request() {
        let rig = Rig::initialised();
        rig.out(0x20, 0x0C);
        assert_eq!(rig.inb(0x20), 0x00);
        rig.pic.assert_irq(6);
        rig.pic.assert_irq(3);
        rig.out(0x20, 0x0C);
        assert_eq!(rig.inb(0x20), 0x83);
        assert_eq!(rig.isr(0x20), 0x08);
        // The poll is one read only.
        assert_eq!(rig.inb(0x20), 0x40);
        rig.out(0x20, 0x20);
        // A slave request polls as the cascade on the master.
        rig.pic.assert_irq(13);
        rig.out(0x20, 0x0C);
        assert_eq!(rig.inb(0x21), 0x82);
        rig.out(0xA0, 0x0C);
        assert_eq!(rig.inb(0xA0), 0x85);
    }

    #[test]
    fn edge_lines_stay_latched_after_deassert_level_lines_do_not() {
        let rig = Rig::initialised();
        rig.out(0x4D1, 0x08); // IRQ 11 level
        assert_eq!(rig.inb(0x4D1), 0x08);
        assert_eq!(rig.inb(0x4D0), 0x00);
        rig.pic.assert_irq(5);
        rig.pic.deassert_irq(5);
        assert_eq!(rig.irr(0x20), 0x20);
        rig.pic.assert_irq(11);
        assert_eq!(rig.irr(0xA0), 0x08);
        rig.pic.deassert_irq(11);
        assert_eq!(rig.irr(0xA0), 0x00);
        assert_eq!(rig.irr(0x20), 0x20);
        assert_eq!(rig.pic.ack(), Some(0x25));
        assert_eq!(rig.pic.ack(), None);
    }

    #[test]
    fn level_line_still_high_after_eoi_interrupts_again() {
        let rig = Rig::initialised();
        rig.pic.set_elcr(5, true);
        assert_eq!(rig.inb(0x4D0), 0x20);
        rig.pic.assert_irq(5);
        assert_eq!(rig.pic.ack(), Some(0x25));
        assert!(!rig.pic.is_pending());
        rig.out(0x20, 0x20);
        assert!(rig.pic.is_pending());
        assert_eq!(rig.pic.ack(), Some(0x25));
        rig.pic.deassert_irq(5);
        rig.out(0x20, 0x20);
        assert!(!rig.pic.is_pending());
        // An edge line is delivered once however long it stays high.
        rig.pic.assert_irq(4);
        assert_eq!(rig.pic.ack(), Some(0x24));
        rig.out(0x20, 0x20);
        assert!(!rig.pic.is_pending());
    }

    #[test]
    fn level_slave_line_keeps_the_cascade_up_until_lowered() {
        let rig = Rig::initialised();
        rig.pic.set_elcr(10, true);
        rig.pic.assert_irq(10);
        assert_eq!(rig.pic.ack(), Some(0x2A));
        rig.out(0xA0, 0x20);
        rig.out(0x20, 0x20);
        assert_eq!(rig.pic.ack(), Some(0x2A));
        rig.pic.deassert_irq(10);
        rig.out(0xA0, 0x20);
        rig.out(0x20, 0x20);
        assert_eq!(rig.irr(0x20), 0x00);
        assert!(!rig.pic.is_pending());
    }

    #[test]
    fn elcr_reserved_bits_stay_edge() {
        let rig = Rig::new();
        rig.out(0x4D0, 0xFF);
        rig.out(0x4D1, 0xFF);
        assert_eq!(rig.inb(0x4D0), 0xF8);
        assert_eq!(rig.inb(0x4D1), 0xDE);
        rig.pic.set_elcr(0, true);
        rig.pic.set_elcr(8, true);
        assert_eq!(rig.pic.read_elcr(0), 0xF8);
        assert_eq!(rig.pic.read_elcr(1), 0xDE);
        rig.pic.set_elcr(9, false);
        assert_eq!(rig.pic.read_elcr(1), 0xDC);
    }

    #[test]
    fn switching_a_high_line_to_level_requests_it() {
        let rig = Rig::initialised();
        rig.pic.assert_irq(9);
        assert_eq!(rig.pic.ack(), Some(0x29));
        rig.out(0xA0, 0x20);
        rig.out(0x20, 0x20);
        assert!(!rig.pic.is_pending());
        rig.out(0x4D1, 0x02);
        assert_eq!(rig.pic.ack(), Some(0x29));
    }

    #[test]
    fn wide_accesses_use_the_low_byte() {
        let rig = Rig::initialised();
        rig.bus.write(0x21, 2, 0x12F0);
        assert_eq!(rig.bus.read(0x21, 2), 0xF0);
        assert_eq!(rig.bus.read(0x21, 4), 0xF0);
    }

    #[test]
    fn lines_out_of_range_and_the_cascade_line_are_ignored() {
        let rig = Rig::initialised();
        rig.pic.assert_irq(2);
        rig.pic.assert_irq(16);
        rig.pic.assert_irq(200);
        assert!(!rig.pic.is_pending());
        assert_eq!(rig.irr(0x20), 0x00);
    }

    #[test]
    fn notify_reports_pending_on_assert_and_idle_on_deassert() {
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = events.clone();
        let pic = Arc::new(I8259::with_notify(move |p| seen.lock().unwrap().push(p)));
        let mut master = PicPort::new(pic.clone(), Chip::Master);
        master.pio_write(0, 1, 0x11);
        for icw in [0x20, 0x04, 0x01] {
            master.pio_write(1, 1, icw);
        }
        master.pio_write(1, 1, 0x02); // mask IRQ 1
        pic.assert_irq(1); // masked: nothing to report
        pic.set_elcr(3, true);
        pic.assert_irq(3); // pending
        pic.deassert_irq(3); // level line withdrawn, nothing left
        pic.assert_irq(4); // pending
        pic.deassert_irq(4); // edge stays latched: still pending, no report
        assert_eq!(*events.lock().unwrap(), vec![true, false, true]);
    }

    #[test]
    fn notify_may_query_the_controller() {
        let pic = Arc::new(I8259::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let (inner, count) = (Arc::downgrade(&pic), calls.clone());
        pic.set_notify(move |pending| {
            let pic = inner.upgrade().unwrap();
            assert_eq!(pic.is_pending(), pending);
            count.fetch_add(1, Ordering::SeqCst);
        });
        pic.write_port(Chip::Master, 0, 0x11);
        for icw in [0x20, 0x04, 0x01] {
            pic.write_port(Chip::Master, 1, icw);
        }
        pic.assert_irq(0);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn lines_raised_from_many_threads_all_arrive() {
        let rig = Rig::initialised();
        let threads: Vec<_> = [3u8, 4, 5, 6, 7, 9, 10, 11]
            .into_iter()
            .map(|irq| {
                let pic = rig.pic.clone();
                std::thread::spawn(move || pic.assert_irq(irq))
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut vectors = Vec::new();
        while let Some(v) = rig.pic.ack() {
            vectors.push(v);
            if v >= 0x28 {
                rig.out(0xA0, 0x20);
            }
            rig.out(0x20, 0x20);
        }
        assert_eq!(
            vectors,
            vec![0x29, 0x2A, 0x2B, 0x23, 0x24, 0x25, 0x26, 0x27]
        );
    }
}
