//! vmmci: OpenBSD's VMM control interface (PCI 0x0b5d:0x0777, subsystem
//! 0xffff), the last PCI device, with the legacy virtio 0.9 register
//! layout and no virtqueue.  vmd uses it to ask the guest to shut down,
//! reboot or resynchronise its clock (reference §3.4):
//!
//! - [`Vmmci::ctl`] (vmd's `vmmci_ctl`) posts a command with a
//!   configuration-change interrupt; it fails when the guest has no
//!   running driver (DRIVER_OK clear), and vmd then ends the VM at once.
//!   SHUTDOWN and REBOOT arm a 3 s acknowledgement timeout.
//! - The guest acknowledges by writing the command back to the command
//!   register: for the pending SHUTDOWN or REBOOT the timeout becomes
//!   120 s (time to run rc.shutdown); a SHUTDOWN the guest writes on its
//!   own (none pending) arms 3 s; a SYNCRTC ack clears the command.
//! - When the timeout fires the VM ends (vmd's `vm_shutdown`): the
//!   `on_expire` callback is told whether as a reboot or a shutdown.
//!
//! Registers (offsets in the I/O BAR): 0 device features, 4 guest
//! features, 8 queue PFN, 12 queue size, 14 queue select, 16 queue
//! notify, 18 device status, 19 ISR (read clears, lowers the line), then
//! the device configuration: 20 command, 24/28 seconds (low/high, read at
//! 24 samples the host clock), 32/36 microseconds.
use super::{VIRTIO_CONFIG_DEVICE_STATUS_DRIVER_OK, VIRTIO_CONFIG_ISR_CONFIG_CHANGE};
use crate::devices::bus::{all_ones, PioDevice};
use crate::devices::irq::{Clock, IrqLines, Timer};
use crate::devices::pci::{PciBus, PciDeviceConfig, PciError, PCI_VENDOR_OPENBSD};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const VMMCI_F_TIMESYNC: u32 = 1 << 0;
pub const VMMCI_F_ACK: u32 = 1 << 1;
pub const VMMCI_F_SYNCRTC: u32 = 1 << 2;

/// How long the guest has to acknowledge a request (VMMCI_TIMEOUT_SHORT).
pub const VMMCI_TIMEOUT_SHORT: Duration = Duration::from_secs(3);
/// How long an acknowledged shutdown may take (VMMCI_TIMEOUT_LONG).
pub const VMMCI_TIMEOUT_LONG: Duration = Duration::from_secs(120);

// Legacy virtio 0.9 register offsets.
const DEVICE_FEATURES: u16 = 0;
const GUEST_FEATURES: u16 = 4;
const QUEUE_PFN: u16 = 8;
const QUEUE_SIZE: u16 = 12;
const QUEUE_SELECT: u16 = 14;
const QUEUE_NOTIFY: u16 = 16;
const DEVICE_STATUS: u16 = 18;
const ISR_STATUS: u16 = 19;
/// VIRTIO_CONFIG_DEVICE_CONFIG_NOMSI: the device configuration.
const CONFIG: u16 = 20;

/// vmmci commands (`enum vmmci_cmd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmciCmd {
    None = 0,
    Shutdown = 1,
    Reboot = 2,
    SyncRtc = 3,
}

impl VmmciCmd {
    fn from_u32(v: u32) -> Option<VmmciCmd> {
        Some(match v {
            0 => VmmciCmd::None,
            1 => VmmciCmd::Shutdown,
            2 => VmmciCmd::Reboot,
            3 => VmmciCmd::SyncRtc,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VmmciError {
    /// vmd's `vmmci_ctl` returning -1: nobody in the guest would answer.
    #[error("vmmci: guest driver not running")]
    NoDriver,
}

/// The time of day as a duration since the epoch (gettimeofday).
pub type TimeOfDay = Box<dyn Fn() -> Duration + Send + Sync>;

pub fn host_time_of_day() -> TimeOfDay {
    Box::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    })
}

/// Called when the acknowledgement or shutdown timeout expires, with how
/// the VM should end (REBOOT if a reboot was pending, else SHUTDOWN).
pub type ExpireHook = Box<dyn FnMut(VmmciCmd) + Send>;

pub struct Vmmci {
    lines: Arc<dyn IrqLines>,
    irq: u8,
    clock: Clock,
    tod: TimeOfDay,
    guest_features: u32,
    queue_pfn: u32,
    queue_select: u16,
    queue_notify: u16,
    status: u8,
    isr: u8,
    line_up: bool,
    cmd: VmmciCmd,
    /// The clock sample the guest is reading (sec, usec).
    time: (u64, u32),
    timeout: Option<Instant>,
    acked: Option<VmmciCmd>,
    expired: Option<VmmciCmd>,
    on_expire: Option<ExpireHook>,
    /// Tells the event loop the deadline moved (vmd's pipe messages
    /// VMMCI_SET_TIMEOUT_SHORT/LONG).
    reschedule: Option<Box<dyn Fn() + Send>>,
}

impl Vmmci {
    pub fn new(lines: Arc<dyn IrqLines>, irq: u8, clock: Clock, tod: TimeOfDay) -> Self {
        Vmmci {
            lines,
            irq,
            clock,
            tod,
            guest_features: 0,
            queue_pfn: 0,
            queue_select: 0,
            queue_notify: 0,
            status: 0,
            isr: 0,
            line_up: false,
            cmd: VmmciCmd::None,
            time: (0, 0),
            timeout: None,
            acked: None,
            expired: None,
            on_expire: None,
            reschedule: None,
        }
    }

    /// What the device offers: TIMESYNC, ACK and SYNCRTC.
    pub fn device_features(&self) -> u32 {
        VMMCI_F_TIMESYNC | VMMCI_F_ACK | VMMCI_F_SYNCRTC
    }

    /// Sets what happens when a timeout expires (the VM process ends the
    /// VM there).
    pub fn set_on_expire(&mut self, hook: ExpireHook) {
        self.on_expire = Some(hook);
    }

    /// Sets what to call when the timeout is armed or moved, so that a
    /// sleeping event loop picks up the new deadline.
    pub fn set_reschedule_notify(&mut self, notify: Box<dyn Fn() + Send>) {
        self.reschedule = Some(notify);
    }

    fn arm(&mut self, after: Duration) {
        self.timeout = Some((self.clock)() + after);
        if let Some(n) = &self.reschedule {
            n();
        }
    }

    /// The pending command.
    pub fn command(&self) -> VmmciCmd {
        self.cmd
    }

    /// The last SHUTDOWN or REBOOT the guest acknowledged.
    pub fn acked(&self) -> Option<VmmciCmd> {
        self.acked
    }

    /// How the VM is to end, once a timeout has expired.
    pub fn expired(&self) -> Option<VmmciCmd> {
        self.expired
    }

    /// Whether a guest driver has the device running.
    pub fn driver_ok(&self) -> bool {
        self.status & VIRTIO_CONFIG_DEVICE_STATUS_DRIVER_OK != 0
    }

    pub fn guest_features(&self) -> u32 {
        self.guest_features
    }

    fn raise(&mut self) {
        self.isr = VIRTIO_CONFIG_ISR_CONFIG_CHANGE;
        self.line_up = true;
        self.lines.assert_irq(self.irq);
    }

    fn lower(&mut self) {
        self.isr = 0;
        if self.line_up {
            self.line_up = false;
            self.lines.deassert_irq(self.irq);
        }
    }

    /// Posts `cmd` to the guest (vmd's `vmmci_ctl`).
    pub fn ctl(&mut self, cmd: VmmciCmd) -> Result<(), VmmciError> {
        if !self.driver_ok() {
            return Err(VmmciError::NoDriver);
        }
        if cmd == self.cmd {
            return Ok(());
        }
        match cmd {
            VmmciCmd::None => {}
            VmmciCmd::Shutdown | VmmciCmd::Reboot => {
                self.cmd = cmd;
                self.raise();
                self.arm(VMMCI_TIMEOUT_SHORT);
            }
            VmmciCmd::SyncRtc => {
                if self.guest_features & VMMCI_F_SYNCRTC != 0 {
                    self.cmd = cmd;
                    self.raise();
                } else {
                    log::debug!("vmmci: rtc sync skipped (guest does not support rtc sync)");
                }
            }
        }
        Ok(())
    }

    /// A write to the command register (vmd's `vmmci_ack`).
    fn ack(&mut self, value: u32) {
        let Some(cmd) = VmmciCmd::from_u32(value) else {
            log::warn!("vmmci: illegal request {value}");
            return;
        };
        match cmd {
            VmmciCmd::None => {}
            VmmciCmd::Shutdown if self.cmd == VmmciCmd::None => {
                // The guest is shutting down on its own: give it a short
                // while to reset before the VM ends.
                log::debug!("vmmci: guest requested shutdown");
                self.arm(VMMCI_TIMEOUT_SHORT);
            }
            VmmciCmd::Shutdown | VmmciCmd::Reboot => {
                if cmd == self.cmd {
                    log::debug!("vmmci: guest acknowledged shutdown request");
                    self.acked = Some(cmd);
                    self.arm(VMMCI_TIMEOUT_LONG);
                }
            }
            VmmciCmd::SyncRtc => {
                log::debug!("vmmci: guest acknowledged rtc sync request");
                self.cmd = VmmciCmd::None;
            }
        }
    }

    fn read_reg(&mut self, offset: u16) -> Option<u32> {
        Some(match offset {
            DEVICE_FEATURES => self.device_features(),
            GUEST_FEATURES => self.guest_features,
            QUEUE_PFN => self.queue_pfn,
            QUEUE_SIZE => 0,
            QUEUE_SELECT => u32::from(self.queue_select),
            QUEUE_NOTIFY => u32::from(self.queue_notify),
            DEVICE_STATUS => u32::from(self.status),
            ISR_STATUS => {
                let v = self.isr;
                self.lower();
                u32::from(v)
            }
            CONFIG => self.cmd as u32,
            o if o == CONFIG + 4 => {
                // Sample the clock once, at the first word.
                let t = (self.tod)();
                self.time = (t.as_secs(), t.subsec_micros());
                self.time.0 as u32
            }
            o if o == CONFIG + 8 => (self.time.0 >> 32) as u32,
            o if o == CONFIG + 12 => self.time.1,
            o if o == CONFIG + 16 => 0,
            _ => return None,
        })
    }
}

impl PioDevice for Vmmci {
    fn pio_read(&mut self, offset: u16, size: u8) -> u32 {
        match self.read_reg(offset) {
            Some(v) => v & all_ones(size),
            None => all_ones(size),
        }
    }

    fn pio_write(&mut self, offset: u16, size: u8, value: u32) {
        let value = value & all_ones(size);
        match offset {
            GUEST_FEATURES => self.guest_features = value & self.device_features(),
            QUEUE_PFN => self.queue_pfn = value,
            QUEUE_SELECT => self.queue_select = value as u16,
            QUEUE_NOTIFY => self.queue_notify = value as u16,
            DEVICE_STATUS => {
                self.status = value as u8;
                if self.status == 0 {
                    // Device reset: features and a raised line go; a
                    // pending command stays, as in vmd.
                    self.guest_features = 0;
                    self.lower();
                }
            }
            CONFIG => self.ack(value),
            DEVICE_FEATURES | QUEUE_SIZE | ISR_STATUS => {
                log::debug!("vmmci: illegal write 0x{value:x} at 0x{offset:x}")
            }
            _ => {}
        }
    }
}

impl Timer for Vmmci {
    fn next_deadline(&self) -> Option<Instant> {
        self.timeout
    }

    fn on_timer(&mut self, now: Instant) {
        match self.timeout {
            Some(t) if t <= now => {}
            _ => return,
        }
        self.timeout = None;
        let how = if self.cmd == VmmciCmd::Reboot {
            VmmciCmd::Reboot
        } else {
            VmmciCmd::Shutdown
        };
        log::debug!("vmmci: timeout, vm {how:?}");
        self.expired = Some(how);
        if let Some(hook) = self.on_expire.as_mut() {
            hook(how);
        }
    }
}

/// vmmci on the bus, as `virtio_init` adds it last.
pub struct AttachedVmmci {
    pub slot: u8,
    /// The ISA line, to mark level-triggered in the ELCR.
    pub irq: u8,
    pub dev: Arc<Mutex<Vmmci>>,
}

/// Adds vmmci to the bus: OpenBSD 0x0b5d:0x0777, communications/misc,
/// revision 0, subsystem 0xffff, one I/O BAR, no capabilities.
pub fn attach(
    bus: &mut PciBus,
    lines: Arc<dyn IrqLines>,
    clock: Clock,
    tod: TimeOfDay,
) -> Result<AttachedVmmci, PciError> {
    let info = bus.add_device(&PciDeviceConfig {
        vendor: PCI_VENDOR_OPENBSD,
        device: super::PCI_PRODUCT_OPENBSD_CONTROL,
        class: super::PCI_CLASS_COMMUNICATIONS,
        subclass: super::PCI_SUBCLASS_COMMUNICATIONS_MISC,
        subsys_vendor: PCI_VENDOR_OPENBSD,
        subsys_id: super::PCI_PRODUCT_VIRTIO_VMMCI,
        revision: 0,
        irq_needed: true,
    })?;
    let irq = info.irq.ok_or(PciError::NoIrqLeft)?;
    let dev = Arc::new(Mutex::new(Vmmci::new(lines, irq, clock, tod)));
    bus.add_io_bar(info.slot, dev.clone())?;
    Ok(AttachedVmmci {
        slot: info.slot,
        irq,
        dev,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::testdriver::TestMachine;

    /// A clock the test moves.
    struct Fake {
        now: Arc<Mutex<Instant>>,
    }

    impl Fake {
        fn new() -> Self {
            Fake {
                now: Arc::new(Mutex::new(Instant::now())),
            }
        }
        fn clock(&self) -> Clock {
            let now = self.now.clone();
            Box::new(move || *now.lock().unwrap())
        }
        fn advance(&self, d: Duration) -> Instant {
            let mut n = self.now.lock().unwrap();
            *n += d;
            *n
        }
    }

    struct Rig {
        m: TestMachine,
        a: AttachedVmmci,
        io: u16,
        clock: Fake,
        ended: Arc<Mutex<Vec<VmmciCmd>>>,
        moved: Arc<Mutex<u32>>,
    }

    fn rig() -> Rig {
        let m = TestMachine::new();
        let clock = Fake::new();
        let a = attach(
            &mut m.pci.lock().unwrap(),
            m.lines(),
            clock.clock(),
            Box::new(|| Duration::new(0x1_2345_6789, 654_321_000)),
        )
        .unwrap();
        let ended = Arc::new(Mutex::new(vec![]));
        let e = ended.clone();
        a.dev
            .lock()
            .unwrap()
            .set_on_expire(Box::new(move |how| e.lock().unwrap().push(how)));
        let moved = Arc::new(Mutex::new(0u32));
        let mv = moved.clone();
        a.dev
            .lock()
            .unwrap()
            .set_reschedule_notify(Box::new(move || *mv.lock().unwrap() += 1));
        let io = m.io_bar(a.slot);
        Rig {
            moved,
            m,
            a,
            io,
            clock,
            ended,
        }
    }

    impl Rig {
        fn r(&self, off: u16, size: u8) -> u32 {
            self.m.pio.read(self.io + off, size)
        }
        fn w(&self, off: u16, size: u8, v: u32) {
            self.m.pio.write(self.io + off, size, v)
        }
        /// The OpenBSD driver's attach: reset, ACK|DRIVER, features,
        /// DRIVER_OK.
        fn attach_driver(&self, features: u32) {
            self.w(DEVICE_STATUS, 1, 0);
            self.w(DEVICE_STATUS, 1, 1 | 2);
            assert_eq!(self.r(DEVICE_FEATURES, 4), 7);
            self.w(GUEST_FEATURES, 4, features);
            self.w(DEVICE_STATUS, 1, 1 | 2 | 4);
        }
        fn ctl(&self, cmd: VmmciCmd) -> Result<(), VmmciError> {
            self.a.dev.lock().unwrap().ctl(cmd)
        }
        fn irq_up(&self) -> bool {
            self.m.lines.is_up(self.a.irq)
        }
        fn tick(&self, d: Duration) {
            let now = self.clock.advance(d);
            let mut dev = self.a.dev.lock().unwrap();
            if dev.next_deadline().is_some_and(|t| t <= now) {
                dev.on_timer(now);
            }
        }
        fn deadline_in(&self) -> Option<Duration> {
            let now = *self.clock.now.lock().unwrap();
            self.a.dev.lock().unwrap().next_deadline().map(|t| t - now)
        }
    }

    #[test]
    fn pci_identity_last_slot_legacy_layout() {
        let m = TestMachine::new();
        let rng = crate::devices::virtio::transport::attach(
            &mut m.pci.lock().unwrap(),
            crate::devices::virtio::transport::VirtioPciIds::RNG,
            crate::devices::virtio::rng::Viornd::new(),
            m.vm_memory(),
            m.lines(),
        )
        .unwrap();
        let a = attach(
            &mut m.pci.lock().unwrap(),
            m.lines(),
            Fake::new().clock(),
            host_time_of_day(),
        )
        .unwrap();
        assert_eq!((rng.slot, rng.irq), (1, 3));
        assert_eq!((a.slot, a.irq), (2, 5));
        assert_eq!(m.cfg_read(2, 0x00, 4), 0x0777_0b5d);
        // Communications/misc, revision 0.
        assert_eq!(m.cfg_read(2, 0x08, 4), 0x0780_0000);
        assert_eq!(m.cfg_read(2, 0x2c, 4), 0xffff_0b5d);
        assert_eq!(m.cfg_read(2, 0x3c, 2), 0x0105);
        // No capability list: a legacy device.
        assert_eq!(m.cfg_read(2, 0x06, 2) & 0x10, 0);
        assert_eq!(m.cfg_read(2, 0x10, 4), 0x2001);
        let io = m.io_bar(2);
        assert_eq!(m.pio.read(io + QUEUE_SIZE, 2), 0, "no virtqueue");
        assert_eq!(m.pio.read(io + DEVICE_FEATURES, 4), 7);
    }

    /// vmmci has no virtqueue (queue size reads 0) and no view of guest
    /// memory, so there is no ring for a hostile driver to corrupt: the
    /// hostile-ring tests of the other devices do not apply.  What a
    /// hostile driver can do is write anything to any register: a queue
    /// address pointing nowhere, notifies of queues that do not exist,
    /// unknown commands, odd widths.  None of that panics or makes a
    /// queue appear, and after a reset the device serves the driver as
    /// before.
    #[test]
    fn hostile_register_accesses_are_harmless() {
        let r = rig();
        let mut rng = crate::property::Rng::new(0x7a11_0c1e);
        for _ in 0..20_000 {
            let off = rng.below(48) as u16;
            let size = rng.pick(&[1u8, 2, 4]);
            if rng.one_in(3) {
                let _ = r.r(off, size);
            } else {
                r.w(off, size, rng.edgy_u64() as u32);
            }
            if rng.one_in(500) {
                let _ = r.ctl(rng.pick(&[VmmciCmd::Shutdown, VmmciCmd::Reboot, VmmciCmd::SyncRtc]));
            }
            if rng.one_in(200) {
                r.tick(Duration::from_secs(rng.below(200)));
            }
        }
        assert_eq!(r.r(QUEUE_SIZE, 2), 0, "still no virtqueue");
        r.attach_driver(VMMCI_F_ACK | VMMCI_F_TIMESYNC);
        let _ = r.r(ISR_STATUS, 1);
        r.ended.lock().unwrap().clear();
        r.ctl(VmmciCmd::Reboot).unwrap();
        assert!(r.irq_up());
        assert_eq!(r.r(ISR_STATUS, 1), 2);
        assert_eq!(r.r(CONFIG, 4), VmmciCmd::Reboot as u32);
        r.w(CONFIG, 4, VmmciCmd::Reboot as u32);
        assert_eq!(r.deadline_in(), Some(VMMCI_TIMEOUT_LONG));
    }

    #[test]
    fn requests_need_a_running_driver() {
        let r = rig();
        assert_eq!(r.ctl(VmmciCmd::Reboot), Err(VmmciError::NoDriver));
        r.w(DEVICE_STATUS, 1, 1 | 2);
        assert_eq!(r.ctl(VmmciCmd::Shutdown), Err(VmmciError::NoDriver));
        assert!(!r.irq_up());
        assert_eq!(r.deadline_in(), None);
        r.attach_driver(VMMCI_F_TIMESYNC | VMMCI_F_ACK);
        assert_eq!(r.ctl(VmmciCmd::Reboot), Ok(()));
    }

    #[test]
    fn acknowledged_reboot_gets_the_long_timeout() {
        let r = rig();
        r.attach_driver(VMMCI_F_ACK | VMMCI_F_TIMESYNC);
        r.ctl(VmmciCmd::Reboot).unwrap();
        assert!(r.irq_up());
        assert_eq!(r.deadline_in(), Some(VMMCI_TIMEOUT_SHORT));
        assert_eq!(*r.moved.lock().unwrap(), 1, "event loop told");
        // The guest's interrupt handler: ISR, then the command.
        assert_eq!(r.r(ISR_STATUS, 1), 2);
        assert!(!r.irq_up());
        assert_eq!(r.r(ISR_STATUS, 1), 0);
        assert_eq!(r.r(CONFIG, 4), 2);
        r.tick(Duration::from_secs(1));
        r.w(CONFIG, 4, 2);
        assert_eq!(r.a.dev.lock().unwrap().acked(), Some(VmmciCmd::Reboot));
        assert_eq!(r.deadline_in(), Some(VMMCI_TIMEOUT_LONG));
        assert_eq!(*r.moved.lock().unwrap(), 2);
        // Past the short timeout: nothing ends.
        r.tick(Duration::from_secs(5));
        assert!(r.ended.lock().unwrap().is_empty());
        // The same request again changes nothing.
        r.ctl(VmmciCmd::Reboot).unwrap();
        assert!(!r.irq_up());
        r.tick(VMMCI_TIMEOUT_LONG);
        assert_eq!(*r.ended.lock().unwrap(), vec![VmmciCmd::Reboot]);
        assert_eq!(r.a.dev.lock().unwrap().expired(), Some(VmmciCmd::Reboot));
        assert_eq!(r.deadline_in(), None);
    }

    #[test]
    fn unacknowledged_shutdown_ends_after_the_short_timeout() {
        let r = rig();
        r.attach_driver(VMMCI_F_TIMESYNC);
        r.ctl(VmmciCmd::Shutdown).unwrap();
        assert_eq!(r.r(CONFIG, 4), 1);
        r.tick(VMMCI_TIMEOUT_SHORT - Duration::from_millis(1));
        assert!(r.ended.lock().unwrap().is_empty());
        r.tick(Duration::from_millis(1));
        assert_eq!(*r.ended.lock().unwrap(), vec![VmmciCmd::Shutdown]);
        // An ack for a command that is not pending does not extend it.
        let r = rig();
        r.attach_driver(VMMCI_F_ACK);
        r.ctl(VmmciCmd::Shutdown).unwrap();
        r.w(CONFIG, 4, 2);
        assert_eq!(r.a.dev.lock().unwrap().acked(), None);
        assert_eq!(r.deadline_in(), Some(VMMCI_TIMEOUT_SHORT));
    }

    #[test]
    fn guest_initiated_shutdown_gets_a_short_timeout() {
        let r = rig();
        r.attach_driver(VMMCI_F_ACK);
        r.w(CONFIG, 4, 1);
        assert_eq!(r.deadline_in(), Some(VMMCI_TIMEOUT_SHORT));
        assert!(!r.irq_up());
        r.tick(VMMCI_TIMEOUT_SHORT);
        assert_eq!(*r.ended.lock().unwrap(), vec![VmmciCmd::Shutdown]);
    }

    #[test]
    fn rtc_sync_only_with_the_feature() {
        let r = rig();
        r.attach_driver(VMMCI_F_TIMESYNC | VMMCI_F_ACK);
        r.ctl(VmmciCmd::SyncRtc).unwrap();
        assert!(!r.irq_up());
        assert_eq!(r.r(CONFIG, 4), 0);
        r.attach_driver(VMMCI_F_SYNCRTC | VMMCI_F_ACK);
        assert_eq!(r.r(GUEST_FEATURES, 4), VMMCI_F_SYNCRTC | VMMCI_F_ACK);
        r.ctl(VmmciCmd::SyncRtc).unwrap();
        assert!(r.irq_up());
        assert_eq!(r.r(ISR_STATUS, 1), 2);
        assert_eq!(r.r(CONFIG, 4), 3);
        r.w(CONFIG, 4, 3);
        assert_eq!(r.r(CONFIG, 4), 0);
        assert_eq!(r.deadline_in(), None, "no timeout for rtc sync");
        // Garbage acks are ignored.
        r.w(CONFIG, 4, 77);
        assert_eq!(r.r(CONFIG, 4), 0);
    }

    #[test]
    fn time_registers_sample_once_at_the_first_word() {
        let r = rig();
        assert_eq!(r.r(CONFIG + 4, 4), 0x2345_6789);
        assert_eq!(r.r(CONFIG + 8, 4), 0x1);
        assert_eq!(r.r(CONFIG + 12, 4), 654_321);
        assert_eq!(r.r(CONFIG + 16, 4), 0);
        // Other offsets are not registers.
        assert_eq!(r.r(CONFIG + 2, 2), 0xffff);
        assert_eq!(r.r(0x100, 4), 0xffff_ffff);
    }

    #[test]
    fn reset_lowers_the_line_and_keeps_the_command() {
        let r = rig();
        r.attach_driver(VMMCI_F_ACK);
        r.ctl(VmmciCmd::Reboot).unwrap();
        assert!(r.irq_up());
        r.w(DEVICE_STATUS, 1, 0);
        assert!(!r.irq_up());
        assert_eq!(r.r(GUEST_FEATURES, 4), 0);
        assert_eq!(r.r(CONFIG, 4), 2);
        // Writes to read-only registers are dropped.
        r.w(DEVICE_FEATURES, 4, 0);
        r.w(ISR_STATUS, 1, 3);
        assert_eq!(r.r(DEVICE_FEATURES, 4), 7);
        assert_eq!(r.r(ISR_STATUS, 1), 0);
    }
}
