//! The i8253/8254 programmable interval timer and port 0x61
//! (reference §4.2; vmd's `i8253.c`).
//!
//! Channels 0–2 at 0x40–0x42, the control word at 0x43, clocked at
//! 1.193182 MHz.  Counting is not simulated tick by tick: each channel
//! remembers when its count was loaded and derives its counter and output
//! from the time elapsed since, as vmd does for latches.  Channel 0's
//! output drives IRQ 0: each rising edge is a pulse (assert, then
//! deassert) sent from [`Timer::on_timer`] at the deadline that
//! [`Timer::next_deadline`] announced.  Channel 2's gate and output are
//! reached through port 0x61 ([`I8253Misc`]), which BIOS and kernel
//! calibration loops poll.
//!
//! Beyond vmd, which only emulates LSB-then-MSB access, counter latches,
//! a read-back without the output bit, and periodic or one-shot firing of
//! whichever channel was loaded: all three access modes, live (unlatched)
//! counter reads, the full read-back status byte, modes 0–5 with their
//! output waveforms (mode 4 is one-shot), BCD counting, the channel 2
//! gate (bit 0 of port 0x61: low pauses modes 0 and 4, stops modes 2 and 3,
//! a rising edge triggers modes 1 and 5 and restarts 2 and 3), and the
//! refresh toggle in bit 4 of port 0x61.  Only channel 0 raises IRQ 0
//! (vmd's timer callback raises it for every channel).
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::devices::bus::PioDevice;
use crate::devices::irq::{IrqLines, Timer};

/// Channel 0's counter port; channels 1 and 2 and the control word follow.
pub const TIMER_BASE: u16 = 0x40;
/// The control-word port.
pub const TIMER_CTRL: u16 = 0x43;
/// Port 0x61 (`PCKBC_AUX`): channel 2 gate and output, speaker, refresh.
pub const PCKBC_AUX: u16 = 0x61;
/// The input clock of every channel, in Hz (`TIMER_FREQ`).
pub const TIMER_FREQ: u64 = 1_193_182;

/// The IRQ channel 0 drives.
const TIMER_IRQ: u8 = 0;
/// The DRAM refresh request toggles bit 4 of port 0x61 every 15.085 µs.
const REFRESH_NS: u128 = 15_085;

pub use crate::devices::irq::{host_clock, Clock};

/// Input clock ticks in `elapsed`.
fn ticks_in(elapsed: Duration) -> u64 {
    (elapsed.as_nanos() * TIMER_FREQ as u128 / 1_000_000_000) as u64
}

/// The shortest time in which `ticks` input clock ticks have elapsed.
fn time_of(ticks: u64) -> Duration {
    let ns = (ticks as u128 * 1_000_000_000).div_ceil(TIMER_FREQ as u128);
    Duration::from_nanos(ns as u64)
}

fn from_bcd(raw: u32) -> u32 {
    (0..4)
        .rev()
        .fold(0, |acc, digit| acc * 10 + ((raw >> (digit * 4)) & 0xF))
}

fn to_bcd(value: u32) -> u16 {
    (0..4).fold(0u16, |acc, digit| {
        acc | ((value / 10u32.pow(digit) % 10) as u16) << (digit * 4)
    })
}

#[derive(Debug)]
struct Channel {
    /// The count loaded: 1–0x10000 (binary) or 1–10000 (BCD).
    reload: u64,
    /// The counting mode, 0–5 (6 and 7 act as 2 and 3).
    mode: u8,
    /// M2–M0 as the control word gave them, for the status byte.
    mode_bits: u8,
    bcd: bool,
    /// Access: 1 LSB only, 2 MSB only, 3 LSB then MSB.
    rw: u8,
    read_msb: bool,
    write_msb: bool,
    write_lsb: u8,
    latched: Option<u16>,
    latched_msb: bool,
    status: Option<u8>,
    gate: bool,
    /// A count has been written since the control word.
    loaded: bool,
    /// Modes 1 and 5: a gate rising edge started the count.
    triggered: bool,
    /// Counting since then (None while stopped or waiting).
    since: Option<Instant>,
    /// Ticks counted before `since`.
    base: u64,
}

impl Channel {
    fn new(gate: bool) -> Self {
        Self {
            reload: 0x10000,
            mode: 0,
            mode_bits: 0,
            bcd: false,
            rw: 3,
            read_msb: false,
            write_msb: false,
            write_lsb: 0,
            latched: None,
            latched_msb: false,
            status: None,
            gate,
            loaded: false,
            triggered: false,
            since: None,
            base: 0,
        }
    }

    fn modulus(&self) -> u64 {
        if self.bcd {
            10_000
        } else {
            0x10000
        }
    }

    fn elapsed(&self, now: Instant) -> u64 {
        self.base
            + self
                .since
                .map_or(0, |s| ticks_in(now.saturating_duration_since(s)))
    }

    /// The counting element as the guest reads it.
    fn count(&self, now: Instant) -> u16 {
        let n = self.reload;
        let m = self.modulus();
        let value = if self.loaded {
            let d = self.elapsed(now);
            match self.mode {
                2 => n - d % n,
                3 => (n - (2 * d) % n) & !1,
                _ => (n + m - d % m) % m,
            }
        } else {
            n
        };
        // The full count (0x10000 or 10000) reads as 0.
        let value = value % m;
        if self.bcd {
            to_bcd(value as u32)
        } else {
            value as u16
        }
    }

    /// The OUT pin.
    fn out(&self, now: Instant) -> bool {
        if !self.loaded {
            return self.mode != 0;
        }
        let n = self.reload;
        let d = self.elapsed(now);
        match self.mode {
            0 => d >= n,
            1 => !self.triggered || d >= n,
            2 => self.since.is_none() || d % n != n - 1,
            3 => self.since.is_none() || d % n < n.div_ceil(2),
            4 => d != n,
            _ => !self.triggered || d != n,
        }
    }

    /// The tick of the first rising edge of OUT after tick `d`, while
    /// counting.
    fn next_rising_edge(&self, d: u64) -> Option<u64> {
        self.since?;
        let n = self.reload;
        match self.mode {
            0 | 1 => (d < n).then_some(n),
            2 | 3 => Some((d / n + 1) * n),
            _ => (d < n + 1).then_some(n + 1),
        }
    }

    /// When tick `tick` (at or after `base`) is reached, while counting.
    fn instant_of(&self, tick: u64) -> Option<Instant> {
        Some(self.since? + time_of(tick.saturating_sub(self.base)))
    }

    fn null_count(&self) -> bool {
        !self.loaded || (matches!(self.mode, 1 | 5) && !self.triggered)
    }

    fn status_byte(&self, now: Instant) -> u8 {
        (self.out(now) as u8) << 7
            | (self.null_count() as u8) << 6
            | self.rw << 4
            | self.mode_bits << 1
            | self.bcd as u8
    }

    fn program(&mut self, control: u8) {
        let mode_bits = (control >> 1) & 7;
        self.mode_bits = mode_bits;
        self.mode = if mode_bits >= 6 {
            mode_bits - 4
        } else {
            mode_bits
        };
        self.bcd = control & 1 != 0;
        self.rw = (control >> 4) & 3;
        self.read_msb = false;
        self.write_msb = false;
        self.latched = None;
        self.status = None;
        self.loaded = false;
        self.triggered = false;
        self.since = None;
        self.base = 0;
    }

    fn latch_count(&mut self, now: Instant) {
        if self.latched.is_none() {
            self.latched = Some(self.count(now));
            self.latched_msb = false;
        }
    }

    fn latch_status(&mut self, now: Instant) {
        if self.status.is_none() {
            self.status = Some(self.status_byte(now));
        }
    }

    fn load(&mut self, raw: u32, now: Instant) {
        let n = if self.bcd { from_bcd(raw) } else { raw };
        self.reload = if n == 0 { self.modulus() } else { n as u64 };
        self.loaded = true;
        self.triggered = false;
        self.base = 0;
        self.since = match self.mode {
            1 | 5 => None,
            _ => self.gate.then_some(now),
        };
    }

    fn write(&mut self, value: u8, now: Instant) {
        match self.rw {
            1 => self.load(value as u32, now),
            2 => self.load((value as u32) << 8, now),
            _ if !self.write_msb => {
                self.write_lsb = value;
                self.write_msb = true;
            }
            _ => {
                self.write_msb = false;
                self.load(self.write_lsb as u32 | (value as u32) << 8, now);
            }
        }
    }

    fn read(&mut self, now: Instant) -> u8 {
        if let Some(status) = self.status.take() {
            return status;
        }
        let (value, msb) = match self.latched {
            Some(value) => {
                let msb = match self.rw {
                    1 => false,
                    2 => true,
                    _ => std::mem::replace(&mut self.latched_msb, true),
                };
                if self.rw != 3 || msb {
                    self.latched = None;
                }
                (value, msb)
            }
            None => {
                let msb = match self.rw {
                    1 => false,
                    2 => true,
                    _ => {
                        self.read_msb = !self.read_msb;
                        !self.read_msb
                    }
                };
                (self.count(now), msb)
            }
        };
        if msb {
            (value >> 8) as u8
        } else {
            value as u8
        }
    }

    fn set_gate(&mut self, gate: bool, now: Instant) {
        if gate == self.gate {
            return;
        }
        self.gate = gate;
        if !self.loaded {
            return;
        }
        match (self.mode, gate) {
            (0 | 4, true) => self.since = Some(now),
            (1 | 5, true) => {
                self.triggered = true;
                self.base = 0;
                self.since = Some(now);
            }
            (2 | 3, true) => {
                self.base = 0;
                self.since = Some(now);
            }
            (1 | 5, false) => {}
            (_, false) => {
                self.base = self.elapsed(now);
                self.since = None;
            }
            _ => {}
        }
    }
}

/// The PIT: registered at 0x40 with length 4; [`I8253Misc`] puts port
/// 0x61 on the same state, and the VM's timer loop drives IRQ 0 through
/// the [`Timer`] implementation.
pub struct I8253 {
    channels: [Channel; 3],
    /// Port 0x61 bits 0–3 as last written.
    misc: u8,
    irq: Arc<dyn IrqLines>,
    clock: Clock,
    epoch: Instant,
    /// The tick of channel 0's next rising edge.
    irq_edge: Option<u64>,
    reschedule: Option<Box<dyn Fn() + Send + Sync>>,
}

impl I8253 {
    /// A PIT as vmd's `i8253_init` leaves it: no channel counting until
    /// the guest loads a count, channel 2's gate low (port 0x61 reads 0).
    pub fn new(irq: Arc<dyn IrqLines>, clock: Clock) -> Self {
        let epoch = clock();
        Self {
            channels: [Channel::new(true), Channel::new(true), Channel::new(false)],
            misc: 0,
            irq,
            clock,
            epoch,
            irq_edge: None,
            reschedule: None,
        }
    }

    /// Called when a guest write moves channel 0's deadline, so the VM's
    /// timer loop can re-read [`Timer::next_deadline`] (vmd's
    /// `I8253_RESET_CHAN_0` pipe message).  It runs with the PIT locked;
    /// it must only signal.
    pub fn set_reschedule_notify(&mut self, f: impl Fn() + Send + Sync + 'static) {
        self.reschedule = Some(Box::new(f));
    }

    /// A read of port 0x40 + `offset` at `now`.  The control port reads 0,
    /// as in vmd.
    pub fn read_port(&mut self, offset: u16, now: Instant) -> u8 {
        match offset {
            0..=2 => self.channels[offset as usize].read(now),
            _ => 0,
        }
    }

    /// A write of `value` to port 0x40 + `offset` at `now`.
    pub fn write_port(&mut self, offset: u16, value: u8, now: Instant) {
        let before = self.next_deadline();
        match offset {
            0..=2 => self.channels[offset as usize].write(value, now),
            3 => self.write_control(value, now),
            _ => {}
        }
        // Only a count for channel 0 or a new mode for it moves IRQ 0; an
        // edge a late timer has not pulsed yet must survive other writes.
        let reprograms_channel0 = match offset {
            0 => true,
            3 => value >> 6 == 0 && (value >> 4) & 3 != 0,
            _ => false,
        };
        if !reprograms_channel0 {
            return;
        }
        let ch = &self.channels[0];
        self.irq_edge = ch.next_rising_edge(ch.elapsed(now));
        if self.next_deadline() != before {
            if let Some(f) = &self.reschedule {
                f();
            }
        }
    }

    /// A read of port 0x61: bits 0–3 as written (bit 0 is channel 2's
    /// gate), bit 4 the refresh toggle, bit 5 channel 2's output.
    pub fn read_misc(&mut self, now: Instant) -> u8 {
        let refresh = (now.saturating_duration_since(self.epoch).as_nanos() / REFRESH_NS) & 1;
        (self.misc & 0x0F) | (refresh as u8) << 4 | (self.channels[2].out(now) as u8) << 5
    }

    /// A write of port 0x61: keeps bits 0–3 and sets channel 2's gate.
    pub fn write_misc(&mut self, value: u8, now: Instant) {
        self.misc = value & 0x0F;
        self.channels[2].set_gate(value & 1 != 0, now);
    }

    fn write_control(&mut self, value: u8, now: Instant) {
        let sel = (value >> 6) as usize;
        if sel == 3 {
            // Read-back: bit 5 clear latches counts, bit 4 clear latches
            // status, bits 1–3 select channels 0–2.
            for (i, ch) in self.channels.iter_mut().enumerate() {
                if value & (2 << i) == 0 {
                    continue;
                }
                if value & 0x20 == 0 {
                    ch.latch_count(now);
                }
                if value & 0x10 == 0 {
                    ch.latch_status(now);
                }
            }
            return;
        }
        if (value >> 4) & 3 == 0 {
            self.channels[sel].latch_count(now);
            return;
        }
        self.channels[sel].program(value);
    }
}

impl PioDevice for I8253 {
    fn pio_read(&mut self, offset: u16, _size: u8) -> u32 {
        let now = (self.clock)();
        self.read_port(offset, now) as u32
    }

    fn pio_write(&mut self, offset: u16, _size: u8, value: u32) {
        let now = (self.clock)();
        self.write_port(offset, value as u8, now)
    }
}

impl Timer for I8253 {
    fn next_deadline(&self) -> Option<Instant> {
        self.channels[0].instant_of(self.irq_edge?)
    }

    /// Pulses IRQ 0 once if channel 0's output rose since the last call
    /// (ticks missed by a late call are not replayed), then moves the
    /// deadline to the next rising edge after `now`.
    fn on_timer(&mut self, now: Instant) {
        let Some(edge) = self.irq_edge else { return };
        let ch = &self.channels[0];
        let d = ch.elapsed(now);
        if ch.since.is_none() || d < edge {
            return;
        }
        self.irq_edge = ch.next_rising_edge(d);
        self.irq.assert_irq(TIMER_IRQ);
        self.irq.deassert_irq(TIMER_IRQ);
    }
}

/// Port 0x61 (`PCKBC_AUX`, vmd's `i8253_misc`) on a shared [`I8253`],
/// registered with length 1.
pub struct I8253Misc {
    pit: Arc<Mutex<I8253>>,
}

impl I8253Misc {
    pub fn new(pit: Arc<Mutex<I8253>>) -> Self {
        Self { pit }
    }
}

impl PioDevice for I8253Misc {
    fn pio_read(&mut self, _offset: u16, _size: u8) -> u32 {
        let mut pit = self.pit.lock().unwrap_or_else(PoisonError::into_inner);
        let now = (pit.clock)();
        pit.read_misc(now) as u32
    }

    fn pio_write(&mut self, _offset: u16, _size: u8, value: u32) {
        let mut pit = self.pit.lock().unwrap_or_else(PoisonError::into_inner);
        let now = (pit.clock)();
        pit.write_misc(value as u8, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::bus::PioBus;
    use crate::devices::irq::RecordingLines;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A PIT on a port bus with a clock the test moves by hand.
    struct Rig {
        t0: Instant,
        now: Arc<Mutex<Instant>>,
        lines: Arc<RecordingLines>,
        pit: Arc<Mutex<I8253>>,
        bus: PioBus,
    }

    impl Rig {
        fn new() -> Self {
            let t0 = Instant::now();
            let now = Arc::new(Mutex::new(t0));
            let clock_now = now.clone();
            let lines = Arc::new(RecordingLines::default());
            let pit = Arc::new(Mutex::new(I8253::new(
                lines.clone(),
                Box::new(move || *clock_now.lock().unwrap()),
            )));
            let mut bus = PioBus::new();
            bus.register(TIMER_BASE, 4, pit.clone()).unwrap();
            bus.register(
                PCKBC_AUX,
                1,
                Arc::new(Mutex::new(I8253Misc::new(pit.clone()))),
            )
            .unwrap();
            Self {
                t0,
                now,
                lines,
                pit,
                bus,
            }
        }

        fn at(&self, ns: u64) -> Instant {
            self.t0 + Duration::from_nanos(ns)
        }

        /// Moves the clock to `ns` after the start.
        fn set(&self, ns: u64) {
            *self.now.lock().unwrap() = self.at(ns);
        }

        /// Moves the clock to the instant `ticks` input ticks have passed.
        fn set_ticks(&self, ticks: u64) {
            self.set(time_of(ticks).as_nanos() as u64);
        }

        /// Moves the clock on by exactly `ticks` input ticks.
        fn advance(&self, ticks: u64) {
            *self.now.lock().unwrap() += time_of(ticks);
        }

        fn out(&self, port: u16, value: u8) {
            self.bus.write(port, 1, value as u32);
        }

        fn inb(&self, port: u16) -> u8 {
            self.bus.read(port, 1) as u8
        }

        /// Control word then a 16-bit count, LSB first.
        fn program(&self, channel: u16, control: u8, count: u16) {
            self.out(TIMER_CTRL, control);
            self.out(TIMER_BASE + channel, count as u8);
            self.out(TIMER_BASE + channel, (count >> 8) as u8);
        }

        /// Counter latch, then LSB and MSB.
        fn latched(&self, channel: u16) -> u16 {
            self.out(TIMER_CTRL, (channel as u8) << 6);
            let lo = self.inb(TIMER_BASE + channel) as u16;
            lo | (self.inb(TIMER_BASE + channel) as u16) << 8
        }

        fn deadline(&self) -> Option<Instant> {
            self.pit.lock().unwrap().next_deadline()
        }

        fn fire(&self, ns: u64) {
            self.pit.lock().unwrap().on_timer(self.at(ns));
        }

        fn events(&self) -> Vec<(u8, bool)> {
            std::mem::take(&mut *self.lines.events.lock().unwrap())
        }
    }

    #[test]
    fn tick_arithmetic() {
        assert_eq!(ticks_in(Duration::from_secs(1)), TIMER_FREQ);
        assert_eq!(ticks_in(Duration::from_millis(1)), 1193);
        // 11932 ticks (OpenBSD's hz = 100) take 10 000 150.86 ns.
        assert_eq!(time_of(11932), Duration::from_nanos(10_000_151));
        assert_eq!(ticks_in(time_of(11932)), 11932);
        assert_eq!(ticks_in(time_of(11932) - Duration::from_nanos(1)), 11931);
        assert_eq!(from_bcd(0x9999), 9999);
        assert_eq!(to_bcd(1234), 0x1234);
    }

    #[test]
    fn nothing_counts_or_fires_before_a_count_is_loaded() {
        let rig = Rig::new();
        assert_eq!(rig.deadline(), None);
        rig.out(TIMER_CTRL, 0x34);
        rig.set(50_000_000);
        assert_eq!(rig.deadline(), None);
        rig.fire(50_000_000);
        assert!(rig.events().is_empty());
        assert_eq!(rig.inb(PCKBC_AUX) & 0x20, 0);
    }

    #[test]
    fn mode2_counts_down_and_reloads() {
        let rig = Rig::new();
        rig.program(0, 0x34, 11932);
        assert_eq!(rig.latched(0), 11932);
        rig.set(1_000_000);
        assert_eq!(rig.latched(0), 11932 - 1193);
        rig.set_ticks(11931);
        assert_eq!(rig.latched(0), 1);
        rig.set_ticks(11932);
        assert_eq!(rig.latched(0), 11932);
        rig.set_ticks(11932 * 3 + 100);
        assert_eq!(rig.latched(0), 11832);
    }

    #[test]
    fn mode2_raises_irq0_every_period() {
        let rig = Rig::new();
        rig.program(0, 0x34, 11932);
        let first = rig.at(10_000_151);
        assert_eq!(rig.deadline(), Some(first));
        // Early: nothing.
        rig.fire(10_000_150);
        assert!(rig.events().is_empty());
        rig.fire(10_000_151);
        assert_eq!(rig.events(), vec![(0, true), (0, false)]);
        assert_eq!(rig.deadline(), Some(rig.t0 + time_of(2 * 11932)));
        rig.fire(time_of(2 * 11932).as_nanos() as u64);
        assert_eq!(rig.events(), vec![(0, true), (0, false)]);
        assert_eq!(rig.deadline(), Some(rig.t0 + time_of(3 * 11932)));
    }

    #[test]
    fn late_timer_pulses_once_and_skips_missed_periods() {
        let rig = Rig::new();
        rig.program(0, 0x34, 1193);
        rig.fire(5_500_000); // 6562 ticks: periods 1–5 passed
        assert_eq!(rig.events(), vec![(0, true), (0, false)]);
        assert_eq!(rig.deadline(), Some(rig.t0 + time_of(6 * 1193)));
    }

    #[test]
    fn other_channels_do_not_disturb_a_pending_irq0_edge() {
        let rig = Rig::new();
        rig.program(0, 0x34, 1193);
        // The edge at 1193 ticks has passed but the timer loop is late.
        rig.set_ticks(1500);
        rig.program(2, 0xB0, 100);
        rig.out(TIMER_CTRL, 0x00);
        rig.out(TIMER_CTRL, 0xC2);
        assert_eq!(rig.inb(0x40), 0xB4);
        assert_eq!(rig.deadline(), Some(rig.t0 + time_of(1193)));
        rig.fire(time_of(1500).as_nanos() as u64);
        assert_eq!(rig.events(), vec![(0, true), (0, false)]);
    }

    #[test]
    fn mode3_square_wave_counts_by_two_and_fires_each_period() {
        let rig = Rig::new();
        rig.program(0, 0x36, 1000);
        rig.set_ticks(100);
        assert_eq!(rig.latched(0), 800);
        rig.set_ticks(499);
        assert_eq!(rig.latched(0), 2);
        rig.set_ticks(500);
        assert_eq!(rig.latched(0), 1000);
        assert_eq!(rig.deadline(), Some(rig.t0 + time_of(1000)));
        rig.fire(time_of(1000).as_nanos() as u64);
        assert_eq!(rig.events(), vec![(0, true), (0, false)]);
        assert_eq!(rig.deadline(), Some(rig.t0 + time_of(2000)));
    }

    #[test]
    fn mode3_output_is_high_for_the_first_half() {
        let rig = Rig::new();
        rig.out(PCKBC_AUX, 0x01);
        rig.program(2, 0xB6, 1001);
        rig.set_ticks(500);
        assert_eq!(rig.inb(PCKBC_AUX) & 0x20, 0x20);
        rig.set_ticks(501);
        assert_eq!(rig.inb(PCKBC_AUX) & 0x20, 0x00);
        rig.set_ticks(1000);
        assert_eq!(rig.inb(PCKBC_AUX) & 0x20, 0x00);
        rig.set_ticks(1001);
        assert_eq!(rig.inb(PCKBC_AUX) & 0x20, 0x20);
    }

    #[test]
    fn mode0_fires_once_and_keeps_counting_past_zero() {
        let rig = Rig::new();
        rig.program(0, 0x30, 100);
        assert_eq!(rig.deadline(), Some(rig.t0 + time_of(100)));
        rig.fire(time_of(100).as_nanos() as u64);
        assert_eq!(rig.events(), vec![(0, true), (0, false)]);
        assert_eq!(rig.deadline(), None);
        rig.set_ticks(105);
        assert_eq!(rig.latched(0), 0xFFFB);
        rig.fire(1_000_000_000);
        assert!(rig.events().is_empty());
    }

    #[test]
    fn mode4_strobes_one_tick_after_zero() {
        let rig = Rig::new();
        rig.program(0, 0x38, 100);
        assert_eq!(rig.deadline(), Some(rig.t0 + time_of(101)));
        rig.fire(time_of(101).as_nanos() as u64);
        assert_eq!(rig.events(), vec![(0, true), (0, false)]);
        assert_eq!(rig.deadline(), None);
    }

    #[test]
    fn reprogramming_moves_the_deadline_and_notifies() {
        let rig = Rig::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        rig.pit.lock().unwrap().set_reschedule_notify(move || {
            seen.fetch_add(1, Ordering::SeqCst);
        });
        rig.program(0, 0x34, 11932);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        rig.set(3_000_000);
        rig.program(0, 0x34, 1193);
        // The control word stopped the channel, the count restarted it.
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(rig.deadline(), Some(rig.at(3_000_000) + time_of(1193)));
        // Channel 2 does not touch IRQ 0.
        rig.program(2, 0xB4, 100);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn latch_freezes_the_count_until_both_bytes_are_read() {
        let rig = Rig::new();
        rig.program(0, 0x34, 0x3000);
        rig.set_ticks(0x100);
        rig.out(TIMER_CTRL, 0x00);
        rig.set_ticks(0x200);
        // A second latch before the read is ignored.
        rig.out(TIMER_CTRL, 0x00);
        assert_eq!(rig.inb(TIMER_BASE), 0x00);
        rig.set_ticks(0x300);
        assert_eq!(rig.inb(TIMER_BASE), 0x2F);
        // Unlatched reads now follow the counter.
        assert_eq!(rig.inb(TIMER_BASE), 0x00);
        assert_eq!(rig.inb(TIMER_BASE), 0x2D);
    }

    #[test]
    fn unlatched_reads_alternate_lsb_and_msb_of_the_live_count() {
        // Linux's quick_pit_calibrate: mode 0 on channel 2, count 0xFFFF,
        // reads LSB and MSB without latching.
        let rig = Rig::new();
        rig.out(PCKBC_AUX, 0x01);
        rig.program(2, 0xB0, 0xFFFF);
        rig.set_ticks(0x1234);
        assert_eq!(rig.inb(0x42), 0xCB);
        rig.set_ticks(0x1334);
        assert_eq!(rig.inb(0x42), 0xEC);
    }

    #[test]
    fn lsb_only_and_msb_only_access() {
        let rig = Rig::new();
        rig.out(TIMER_CTRL, 0x54); // channel 1, LSB only, mode 2
        rig.out(0x41, 0x80);
        assert_eq!(rig.inb(0x41), 0x80);
        assert_eq!(rig.inb(0x41), 0x80);
        rig.advance(0x10);
        assert_eq!(rig.inb(0x41), 0x70);
        rig.out(TIMER_CTRL, 0x64); // channel 1, MSB only, mode 2
        rig.out(0x41, 0x12);
        assert_eq!(rig.inb(0x41), 0x12);
        rig.advance(0x180);
        assert_eq!(rig.inb(0x41), 0x10);
        // A latch in MSB-only mode is one read.
        rig.out(TIMER_CTRL, 0x40);
        rig.advance(0x800);
        assert_eq!(rig.inb(0x41), 0x10);
        assert_eq!(rig.inb(0x41), 0x08);
    }

    #[test]
    fn read_back_latches_status_then_count() {
        let rig = Rig::new();
        rig.program(0, 0x34, 1000);
        rig.program(1, 0x76, 2000);
        rig.set_ticks(10);
        // Count and status of channels 0 and 1.
        rig.out(TIMER_CTRL, 0xC6);
        rig.set_ticks(20);
        // Status: OUT high, count loaded, LSB/MSB, mode 2, binary.
        assert_eq!(rig.inb(0x40), 0xB4);
        assert_eq!(rig.inb(0x40) as u16 | (rig.inb(0x40) as u16) << 8, 990);
        assert_eq!(rig.inb(0x41), 0xB6);
        assert_eq!(rig.inb(0x41) as u16 | (rig.inb(0x41) as u16) << 8, 1980);
        // Status only, channel 2: never loaded, so null count, mode 0 OUT low.
        rig.out(TIMER_CTRL, 0xE8);
        assert_eq!(rig.inb(0x42), 0x70);
        // Count only.
        rig.out(TIMER_CTRL, 0xD2);
        assert_eq!(rig.inb(0x40) as u16 | (rig.inb(0x40) as u16) << 8, 980);
    }

    #[test]
    fn read_back_status_reports_the_output_pin() {
        let rig = Rig::new();
        rig.program(0, 0x30, 100);
        rig.out(TIMER_CTRL, 0xE2);
        assert_eq!(rig.inb(0x40), 0x30);
        rig.set_ticks(100);
        rig.out(TIMER_CTRL, 0xE2);
        assert_eq!(rig.inb(0x40), 0xB0);
        // Mode 6 reads back as written.
        rig.out(TIMER_CTRL, 0x3C);
        rig.out(TIMER_CTRL, 0xE2);
        assert_eq!(rig.inb(0x40), 0xFC);
    }

    #[test]
    fn port61_out2_rises_when_channel2_mode0_expires() {
        // SeaBIOS's TSC calibration: gate on, mode 0, poll bit 5.
        let rig = Rig::new();
        assert_eq!(rig.inb(PCKBC_AUX), 0x00);
        rig.out(PCKBC_AUX, 0x01);
        rig.program(2, 0xB0, 11932);
        assert_eq!(rig.inb(PCKBC_AUX), 0x01);
        rig.set_ticks(11931);
        assert_eq!(rig.inb(PCKBC_AUX) & 0x20, 0x00);
        rig.set_ticks(11932);
        assert_eq!(rig.inb(PCKBC_AUX) & 0x21, 0x21);
        // No interrupt from channel 2.
        rig.fire(20_000_000);
        assert!(rig.events().is_empty());
    }

    #[test]
    fn port61_gate_low_pauses_mode0() {
        let rig = Rig::new();
        rig.program(2, 0xB0, 1000);
        rig.advance(5000);
        assert_eq!(rig.latched(2), 1000);
        rig.out(PCKBC_AUX, 0x01);
        rig.advance(400);
        assert_eq!(rig.latched(2), 600);
        rig.out(PCKBC_AUX, 0x00);
        rig.advance(3600);
        assert_eq!(rig.latched(2), 600);
        assert_eq!(rig.inb(PCKBC_AUX) & 0x20, 0);
        rig.out(PCKBC_AUX, 0x01);
        rig.advance(599);
        assert_eq!(rig.inb(PCKBC_AUX) & 0x20, 0);
        rig.advance(1);
        assert_eq!(rig.inb(PCKBC_AUX) & 0x20, 0x20);
    }

    #[test]
    fn port61_gate_edge_restarts_mode2_and_triggers_mode1() {
        let rig = Rig::new();
        rig.out(PCKBC_AUX, 0x01);
        rig.program(2, 0xB4, 1000);
        rig.advance(300);
        assert_eq!(rig.latched(2), 700);
        rig.out(PCKBC_AUX, 0x00);
        rig.advance(200);
        assert_eq!(rig.latched(2), 700);
        rig.out(PCKBC_AUX, 0x01);
        rig.advance(100);
        assert_eq!(rig.latched(2), 900);

        // Mode 1: waits for a gate rising edge, OUT low until zero.
        rig.program(2, 0xB2, 100);
        rig.advance(200);
        assert_eq!(rig.latched(2), 100);
        assert_eq!(rig.inb(PCKBC_AUX) & 0x20, 0x20);
        rig.out(PCKBC_AUX, 0x00);
        rig.out(PCKBC_AUX, 0x01);
        assert_eq!(rig.inb(PCKBC_AUX) & 0x20, 0x00);
        rig.advance(50);
        assert_eq!(rig.latched(2), 50);
        rig.advance(50);
        assert_eq!(rig.inb(PCKBC_AUX) & 0x20, 0x20);
    }

    #[test]
    fn port61_keeps_low_bits_and_toggles_refresh() {
        let rig = Rig::new();
        rig.out(PCKBC_AUX, 0xFE);
        assert_eq!(rig.inb(PCKBC_AUX), 0x0E);
        rig.set(15_084);
        assert_eq!(rig.inb(PCKBC_AUX) & 0x10, 0x00);
        rig.set(15_085);
        assert_eq!(rig.inb(PCKBC_AUX) & 0x10, 0x10);
        rig.set(30_170);
        assert_eq!(rig.inb(PCKBC_AUX) & 0x10, 0x00);
    }

    #[test]
    fn bcd_counting() {
        let rig = Rig::new();
        rig.program(1, 0x75, 0x1000); // BCD 1000, mode 2
        rig.set_ticks(1);
        assert_eq!(rig.latched(1), 0x0999);
        rig.program(1, 0x71, 0x0000); // BCD 10000, mode 0
        rig.advance(10_001);
        assert_eq!(rig.latched(1), 0x9999);
    }

    #[test]
    fn zero_count_means_65536() {
        let rig = Rig::new();
        rig.program(0, 0x34, 0);
        assert_eq!(rig.deadline(), Some(rig.t0 + time_of(0x10000)));
        rig.set_ticks(1);
        assert_eq!(rig.latched(0), 0xFFFF);
    }

    #[test]
    fn control_port_reads_zero_and_wide_accesses_use_the_low_byte() {
        let rig = Rig::new();
        assert_eq!(rig.bus.read(TIMER_CTRL, 1), 0);
        rig.bus.write(TIMER_CTRL, 2, 0xFF34);
        rig.bus.write(TIMER_BASE, 2, 0x1110);
        rig.bus.write(TIMER_BASE, 2, 0x2227);
        assert_eq!(rig.latched(0), 10000);
        assert_eq!(rig.bus.read(TIMER_BASE, 4) & !0xFF, 0);
    }
}
