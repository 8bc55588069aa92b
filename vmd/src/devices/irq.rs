//! How devices raise interrupts and how time reaches them.
//!
//! Devices raise and lower ISA lines through [`IrqLines`]; the VM's
//! interrupt controller (the i8259 pair) implements it and tells the vCPU
//! loop to issue `VMM_IOC_INTR` when an interrupt becomes pending.  Timers
//! (i8253, mc146818) take the current time as an argument and report their
//! next deadline, so tests drive them with a fake clock.
use std::time::Instant;

/// The time source a device reads on port accesses.
pub type Clock = Box<dyn Fn() -> Instant + Send + Sync>;

/// The host's monotonic clock.
pub fn host_clock() -> Clock {
    Box::new(Instant::now)
}

/// What a device calls when a guest access moved its next deadline, so
/// the VM's event loop re-reads [`Timer::next_deadline`] (vmd's
/// reschedule pipe messages).  It runs with the device locked: it must
/// only signal.
pub type Reschedule = Box<dyn Fn() + Send + Sync>;

pub trait IrqLines: Send + Sync {
    /// Raises ISA interrupt line `irq` (0–15).
    fn assert_irq(&self, irq: u8);
    /// Lowers line `irq`.
    fn deassert_irq(&self, irq: u8);
}

/// A device with time-driven behaviour.
pub trait Timer: Send {
    /// When the device next needs `on_timer`, if ever.
    fn next_deadline(&self) -> Option<Instant>;
    /// Called at or after the deadline with the current time.
    fn on_timer(&mut self, now: Instant);
}

/// Records lines for device tests.
#[derive(Default)]
pub struct RecordingLines {
    pub events: std::sync::Mutex<Vec<(u8, bool)>>,
}

impl IrqLines for RecordingLines {
    fn assert_irq(&self, irq: u8) {
        self.events.lock().unwrap().push((irq, true));
    }
    fn deassert_irq(&self, irq: u8) {
        self.events.lock().unwrap().push((irq, false));
    }
}
