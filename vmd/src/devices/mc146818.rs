//! The mc146818 real-time clock and CMOS NVRAM (reference §4.2; vmd's
//! `mc146818.c`).
//!
//! Index port 0x70, data port 0x71, IRQ 8.  0x60 bytes of registers: the
//! clock in 0x00–0x09, registers A–D in 0x0A–0x0D, NVRAM from 0x0E.  As in
//! vmd, the clock always shows the host's UTC time in BCD, 24-hour format:
//! it is refreshed from the wall clock once a second, guest writes to the
//! clock bytes last until the next refresh, and a jump of more than 5 s
//! between refreshes asks the VM to resynchronise the guest (vmmci
//! `SYNCRTC`) through [`Mc146818::set_sync_rtc_notify`].  The guest may
//! write the clock bytes and the NVRAM up to 0x40 (so also the century and
//! `memlo`, as in vmd); above that (`memhi`, CPU count) the bytes are the
//! VM's.  The periodic interrupt runs at
//! 32768 >> (rate − 1) Hz while register B enables it.
//!
//! Beyond vmd: the periodic rate follows register A writes (vmd's check is
//! dead code), register B's SET bit holds the clock, UIP is set for the
//! 244 µs before each refresh, the update-ended and alarm flags and
//! interrupts work, register C reports IRQF and reading it clears every
//! flag and lowers IRQ 8, and IRQ 8 rises only when IRQF does (a guest
//! that never reads register C gets no further interrupts, as on the chip).
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::i8253::Clock;
use crate::devices::bus::PioDevice;
use crate::devices::irq::{IrqLines, Timer};

/// The index port (`IO_RTC`); the data port follows.
pub const IO_RTC: u16 = 0x70;
/// The RTC's ISA interrupt line.
pub const RTC_IRQ: u8 = 8;
/// Registers and NVRAM bytes the device holds.
pub const NVRAM_SIZE: usize = 0x60;

const MC_SEC: usize = 0x00;
const MC_SECALARM: usize = 0x01;
const MC_MIN: usize = 0x02;
const MC_MINALARM: usize = 0x03;
const MC_HOUR: usize = 0x04;
const MC_HOURALARM: usize = 0x05;
const MC_DOW: usize = 0x06;
const MC_DOM: usize = 0x07;
const MC_MONTH: usize = 0x08;
const MC_YEAR: usize = 0x09;
const MC_REGA: usize = 0x0A;
const MC_REGB: usize = 0x0B;
const MC_REGC: usize = 0x0C;
const MC_REGD: usize = 0x0D;
const MC_NVRAM_START: usize = 0x0E;
/// The last byte the guest may write (`MC_NVRAM_START + MC_NVRAM_SIZE`).
const MC_NVRAM_LAST: usize = MC_NVRAM_START + 50;

const NVRAM_CENTURY: usize = 0x32;
const NVRAM_MEMSIZE_LO: usize = 0x34;
const NVRAM_MEMSIZE_HI: usize = 0x35;
const NVRAM_HIMEMSIZE_LO: usize = 0x5B;
const NVRAM_HIMEMSIZE_MID: usize = 0x5C;
const NVRAM_HIMEMSIZE_HI: usize = 0x5D;
const NVRAM_SMP_COUNT: usize = 0x5F;

const REGA_UIP: u8 = 0x80;
const REGA_RATE: u8 = 0x0F;
const REGB_SET: u8 = 0x80;
const REGB_PIE: u8 = 0x40;
const REGB_24HR: u8 = 0x02;
const REGC_IRQF: u8 = 0x80;
const REGC_PF: u8 = 0x40;
const REGC_AF: u8 = 0x20;
const REGC_UF: u8 = 0x10;
const REGD_VRT: u8 = 0x80;

/// How long before each refresh UIP reads as set.
const UIP_LEAD: Duration = Duration::from_micros(244);
const SECOND: Duration = Duration::from_secs(1);
/// A refresh further than this from the previous one asks for a resync.
const DRIFT_SECS: i64 = 5;

/// The wall clock: seconds since 1970-01-01 00:00:00 UTC.
pub type WallClock = Box<dyn Fn() -> i64 + Send + Sync>;

/// The host's `time(3)`.
pub fn host_wall_clock() -> WallClock {
    Box::new(|| match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    })
}

fn to_bcd(value: u32) -> u8 {
    (((value / 10 % 10) << 4) | (value % 10)) as u8
}

/// `gmtime`: (year, month 1–12, day 1–31, weekday 0–6 from Sunday,
/// hour, minute, second) of a Unix time.
fn gmtime(t: i64) -> (i64, u32, u32, u32, u32, u32, u32) {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400) as u32;
    // Days to civil date in the proleptic Gregorian calendar, counting
    // eras of 400 years from 0000-03-01.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = (days + 4).rem_euclid(7) as u32;
    (
        year,
        month,
        day,
        weekday,
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
    )
}

/// What vmd's `init_emulated_hw` writes to CMOS, from the VM's memory
/// ranges `(gpa, size)`: `memlo` is the size of the range at 1 MiB less
/// 15 MiB (if larger), `memhi` the size of the range at 4 GiB.
pub fn nvram_memory_sizes(ranges: &[(u64, u64)]) -> (u64, u64) {
    const MB: u64 = 1 << 20;
    const GB: u64 = 1 << 30;
    let (mut memlo, mut memhi) = (0, 0);
    for &(gpa, size) in ranges {
        if gpa == MB && size > 15 * MB {
            memlo = size - 15 * MB;
        } else if gpa == 4 * GB {
            memhi = size;
        }
    }
    (memlo, memhi)
}

/// The RTC, registered at 0x70 with length 2; the VM's timer loop drives
/// its refresh and periodic interrupt through the [`Timer`] implementation.
pub struct Mc146818 {
    regs: [u8; NVRAM_SIZE],
    idx: u8,
    irq: Arc<dyn IrqLines>,
    clock: Clock,
    wall: WallClock,
    /// The wall time of the last refresh.
    last_wall: i64,
    next_update: Instant,
    next_periodic: Option<Instant>,
    sync_rtc: Option<Box<dyn Fn() + Send + Sync>>,
    reschedule: Option<Box<dyn Fn() + Send + Sync>>,
}

impl Mc146818 {
    /// An RTC as vmd's `mc146818_init` leaves it: the clock set from
    /// `wall`, register A 0, register B 24-hour mode, register D valid,
    /// memory sizes and CPU count zero until set; the first refresh due a
    /// second from now.
    pub fn new(irq: Arc<dyn IrqLines>, clock: Clock, wall: WallClock) -> Self {
        let now = clock();
        let mut rtc = Self {
            regs: [0; NVRAM_SIZE],
            idx: 0,
            irq,
            clock,
            wall,
            last_wall: 0,
            next_update: now + SECOND,
            next_periodic: None,
            sync_rtc: None,
            reschedule: None,
        };
        rtc.regs[MC_REGB] = REGB_24HR;
        rtc.last_wall = (rtc.wall)();
        rtc.set_clock(rtc.last_wall);
        rtc
    }

    /// CMOS 0x34/0x35: memory between 16 MiB and the PCI hole, in bytes
    /// (stored in 64 KiB units).
    pub fn set_memlo(&mut self, bytes: u64) {
        let units = bytes / 65536;
        self.regs[NVRAM_MEMSIZE_LO] = units as u8;
        self.regs[NVRAM_MEMSIZE_HI] = (units >> 8) as u8;
    }

    /// CMOS 0x5B–0x5D: memory above 4 GiB, in bytes (stored in 64 KiB
    /// units).
    pub fn set_memhi(&mut self, bytes: u64) {
        let units = bytes / 65536;
        self.regs[NVRAM_HIMEMSIZE_LO] = units as u8;
        self.regs[NVRAM_HIMEMSIZE_MID] = (units >> 8) as u8;
        self.regs[NVRAM_HIMEMSIZE_HI] = (units >> 16) as u8;
    }

    /// CMOS 0x5F: the number of CPUs less one, as SeaBIOS reads it (vmd
    /// writes 0 for its single vCPU).
    pub fn set_cpu_count(&mut self, ncpus: u8) {
        self.regs[NVRAM_SMP_COUNT] = ncpus.saturating_sub(1);
    }

    /// Called when a refresh finds the wall clock more than 5 s past the
    /// previous one; the VM answers with vmmci `SYNCRTC`.
    pub fn set_sync_rtc_notify(&mut self, f: impl Fn() + Send + Sync + 'static) {
        self.sync_rtc = Some(Box::new(f));
    }

    /// Called when a guest write moves the periodic-interrupt deadline, so
    /// the VM's timer loop can re-read [`Timer::next_deadline`] (vmd's
    /// `MC146818_RESCHEDULE_PER`).  It runs with the RTC locked; it must
    /// only signal.
    pub fn set_reschedule_notify(&mut self, f: impl Fn() + Send + Sync + 'static) {
        self.reschedule = Some(Box::new(f));
    }

    /// A read of port 0x70 + `offset` at `now`.  The index port reads back
    /// the index, as in vmd.
    pub fn read_port(&mut self, offset: u16, now: Instant) -> u8 {
        if offset == 0 {
            return self.idx;
        }
        let idx = self.idx as usize;
        match idx {
            MC_REGA => {
                let uip = self.regs[MC_REGB] & REGB_SET == 0
                    && now < self.next_update
                    && self.next_update - now <= UIP_LEAD;
                self.regs[MC_REGA] | if uip { REGA_UIP } else { 0 }
            }
            MC_REGC => {
                let flags = std::mem::take(&mut self.regs[MC_REGC]);
                if flags & REGC_IRQF != 0 {
                    self.irq.deassert_irq(RTC_IRQ);
                }
                flags
            }
            _ => self.regs[idx],
        }
    }

    /// A write of `value` to port 0x70 + `offset` at `now`.  The NMI-mask
    /// bit of the index is dropped; an index past the registers selects
    /// register D, as in vmd.
    pub fn write_port(&mut self, offset: u16, value: u8, now: Instant) {
        if offset == 0 {
            let idx = value & 0x7F;
            self.idx = if (idx as usize) < NVRAM_SIZE {
                idx
            } else {
                MC_REGD as u8
            };
            return;
        }
        let idx = self.idx as usize;
        match idx {
            MC_SEC..=MC_YEAR | MC_NVRAM_START..=MC_NVRAM_LAST => self.regs[idx] = value,
            MC_REGA => {
                let old = self.regs[MC_REGA];
                self.regs[MC_REGA] = value & !REGA_UIP;
                if (old ^ value) & REGA_RATE != 0 {
                    self.reschedule_periodic(now);
                }
            }
            MC_REGB => {
                let old = self.regs[MC_REGB];
                self.regs[MC_REGB] = value;
                if (old ^ value) & REGB_PIE != 0 {
                    self.reschedule_periodic(now);
                }
                self.update_irq();
            }
            _ => {} // C, D and the VM's bytes are read-only
        }
    }

    /// The periodic interrupt's period, when register B enables it and
    /// register A selects a rate.
    fn periodic_period(&self) -> Option<Duration> {
        let rate = u32::from(self.regs[MC_REGA] & REGA_RATE);
        if self.regs[MC_REGB] & REGB_PIE == 0 || rate == 0 {
            return None;
        }
        Some(Duration::from_nanos(
            (1_000_000_000u64 << (rate - 1)) / 32768,
        ))
    }

    fn reschedule_periodic(&mut self, now: Instant) {
        let before = self.next_deadline();
        self.next_periodic = self.periodic_period().map(|p| now + p);
        if self.next_deadline() != before {
            if let Some(f) = &self.reschedule {
                f();
            }
        }
    }

    /// Raises IRQ 8 when an enabled flag is set and IRQF is not yet.
    fn update_irq(&mut self) {
        let active = self.regs[MC_REGC] & self.regs[MC_REGB] & (REGC_PF | REGC_AF | REGC_UF);
        if active != 0 && self.regs[MC_REGC] & REGC_IRQF == 0 {
            self.regs[MC_REGC] |= REGC_IRQF;
            self.irq.assert_irq(RTC_IRQ);
        }
    }

    fn set_clock(&mut self, t: i64) {
        let (year, month, day, weekday, hour, min, sec) = gmtime(t);
        self.regs[MC_SEC] = to_bcd(sec);
        self.regs[MC_MIN] = to_bcd(min);
        self.regs[MC_HOUR] = to_bcd(hour);
        self.regs[MC_DOW] = to_bcd(weekday + 1);
        self.regs[MC_DOM] = to_bcd(day);
        self.regs[MC_MONTH] = to_bcd(month);
        self.regs[MC_YEAR] = to_bcd(year.rem_euclid(100) as u32);
        self.regs[NVRAM_CENTURY] = to_bcd(year.div_euclid(100).rem_euclid(100) as u32);
        self.regs[MC_REGD] = REGD_VRT;
    }

    /// An alarm byte matches when equal or "don't care" (0xC0–0xFF).
    fn alarm_matches(&self) -> bool {
        [
            (MC_SECALARM, MC_SEC),
            (MC_MINALARM, MC_MIN),
            (MC_HOURALARM, MC_HOUR),
        ]
        .iter()
        .all(|&(alarm, time)| self.regs[alarm] >= 0xC0 || self.regs[alarm] == self.regs[time])
    }

    /// The once-a-second refresh (vmd's `rtc_fire1`).
    fn update(&mut self, now: Instant) {
        let wall = (self.wall)();
        if wall - self.last_wall > DRIFT_SECS {
            if let Some(f) = &self.sync_rtc {
                f();
            }
        }
        self.last_wall = wall;
        if self.regs[MC_REGB] & REGB_SET == 0 {
            self.set_clock(wall);
            self.regs[MC_REGC] |= REGC_UF;
            if self.alarm_matches() {
                self.regs[MC_REGC] |= REGC_AF;
            }
        }
        self.next_update += SECOND;
        if self.next_update <= now {
            self.next_update = now + SECOND;
        }
        self.update_irq();
    }
}

impl PioDevice for Mc146818 {
    fn pio_read(&mut self, offset: u16, _size: u8) -> u32 {
        let now = (self.clock)();
        self.read_port(offset, now) as u32
    }

    fn pio_write(&mut self, offset: u16, _size: u8, value: u32) {
        let now = (self.clock)();
        self.write_port(offset, value as u8, now)
    }
}

impl Timer for Mc146818 {
    fn next_deadline(&self) -> Option<Instant> {
        Some(match self.next_periodic {
            Some(p) => p.min(self.next_update),
            None => self.next_update,
        })
    }

    /// Refreshes the clock if a second has passed and sets the periodic
    /// flag if its period has (once, however late), raising IRQ 8 for
    /// what register B enables.
    fn on_timer(&mut self, now: Instant) {
        if now >= self.next_update {
            self.update(now);
        }
        if let (Some(due), Some(period)) = (self.next_periodic, self.periodic_period()) {
            if now >= due {
                let next = due + period;
                self.next_periodic = Some(if next <= now { now + period } else { next });
                self.regs[MC_REGC] |= REGC_PF;
                self.update_irq();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::bus::PioBus;
    use crate::devices::irq::RecordingLines;
    use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// 2024-02-29 13:45:07 UTC, a Thursday.
    const LEAP_DAY: i64 = 1_709_214_307;

    struct Rig {
        t0: Instant,
        now: Arc<Mutex<Instant>>,
        wall: Arc<AtomicI64>,
        lines: Arc<RecordingLines>,
        rtc: Arc<Mutex<Mc146818>>,
        bus: PioBus,
    }

    impl Rig {
        fn new(wall_start: i64) -> Self {
            let t0 = Instant::now();
            let now = Arc::new(Mutex::new(t0));
            let wall = Arc::new(AtomicI64::new(wall_start));
            let lines = Arc::new(RecordingLines::default());
            let (clock_now, clock_wall) = (now.clone(), wall.clone());
            let rtc = Arc::new(Mutex::new(Mc146818::new(
                lines.clone(),
                Box::new(move || *clock_now.lock().unwrap()),
                Box::new(move || clock_wall.load(Ordering::SeqCst)),
            )));
            let mut bus = PioBus::new();
            bus.register(IO_RTC, 2, rtc.clone()).unwrap();
            Self {
                t0,
                now,
                wall,
                lines,
                rtc,
                bus,
            }
        }

        fn at(&self, ns: u64) -> Instant {
            self.t0 + Duration::from_nanos(ns)
        }

        fn set(&self, ns: u64) {
            *self.now.lock().unwrap() = self.at(ns);
        }

        fn read(&self, idx: u8) -> u8 {
            self.bus.write(IO_RTC, 1, idx as u32);
            self.bus.read(IO_RTC + 1, 1) as u8
        }

        fn write(&self, idx: u8, value: u8) {
            self.bus.write(IO_RTC, 1, idx as u32);
            self.bus.write(IO_RTC + 1, 1, value as u32);
        }

        fn deadline(&self) -> Option<Instant> {
            self.rtc.lock().unwrap().next_deadline()
        }

        /// Moves both clocks to `ns` after the start and runs the timer.
        fn fire(&self, ns: u64) {
            self.set(ns);
            self.rtc.lock().unwrap().on_timer(self.at(ns));
        }

        fn events(&self) -> Vec<(u8, bool)> {
            std::mem::take(&mut *self.lines.events.lock().unwrap())
        }

        fn clock_bytes(&self) -> [u8; 8] {
            [0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32].map(|i| self.read(i))
        }
    }

    #[test]
    fn gmtime_matches_known_dates() {
        assert_eq!(gmtime(0), (1970, 1, 1, 4, 0, 0, 0));
        assert_eq!(gmtime(LEAP_DAY), (2024, 2, 29, 4, 13, 45, 7));
        assert_eq!(gmtime(946_684_799), (1999, 12, 31, 5, 23, 59, 59));
        assert_eq!(gmtime(4_107_542_400), (2100, 3, 1, 1, 0, 0, 0));
        assert_eq!(gmtime(-1), (1969, 12, 31, 3, 23, 59, 59));
    }

    #[test]
    fn clock_reads_utc_in_bcd() {
        let rig = Rig::new(LEAP_DAY);
        // sec, min, hour, weekday (Thursday = 5), day, month, year, century
        assert_eq!(
            rig.clock_bytes(),
            [0x07, 0x45, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20]
        );
        assert_eq!(rig.read(0x0A), 0x00);
        assert_eq!(rig.read(0x0B), 0x02);
        assert_eq!(rig.read(0x0C), 0x00);
        assert_eq!(rig.read(0x0D), 0x80);
    }

    #[test]
    fn refresh_each_second_follows_the_wall_clock_across_the_century() {
        let rig = Rig::new(946_684_799);
        assert_eq!(
            rig.clock_bytes(),
            [0x59, 0x59, 0x23, 0x06, 0x31, 0x12, 0x99, 0x19]
        );
        assert_eq!(rig.deadline(), Some(rig.at(1_000_000_000)));
        rig.wall.store(946_684_800, Ordering::SeqCst);
        rig.fire(999_999_999);
        assert_eq!(rig.read(0x00), 0x59);
        rig.fire(1_000_000_000);
        assert_eq!(
            rig.clock_bytes(),
            [0x00, 0x00, 0x00, 0x07, 0x01, 0x01, 0x00, 0x20]
        );
        assert_eq!(rig.deadline(), Some(rig.at(2_000_000_000)));
        // The refresh sets UF, and AF too: the zeroed alarm bytes match
        // midnight.  Neither is enabled, so no interrupt.
        assert_eq!(rig.read(0x0C), 0x30);
        assert!(rig.events().is_empty());
    }

    #[test]
    fn guest_clock_writes_last_until_the_next_refresh() {
        let rig = Rig::new(LEAP_DAY);
        rig.write(0x04, 0x08);
        assert_eq!(rig.read(0x04), 0x08);
        rig.wall.store(LEAP_DAY + 1, Ordering::SeqCst);
        rig.fire(1_000_000_000);
        assert_eq!(rig.read(0x04), 0x13);
        assert_eq!(rig.read(0x00), 0x08);
    }

    #[test]
    fn set_bit_holds_the_clock() {
        let rig = Rig::new(LEAP_DAY);
        rig.write(0x0B, 0x82);
        rig.write(0x00, 0x30);
        rig.wall.store(LEAP_DAY + 1, Ordering::SeqCst);
        rig.fire(1_000_000_000);
        assert_eq!(rig.read(0x00), 0x30);
        assert_eq!(rig.read(0x0C), 0x00);
        rig.write(0x0B, 0x02);
        rig.wall.store(LEAP_DAY + 2, Ordering::SeqCst);
        rig.fire(2_000_000_000);
        assert_eq!(rig.read(0x00), 0x09);
    }

    #[test]
    fn uip_is_set_in_the_244_us_before_a_refresh() {
        let rig = Rig::new(LEAP_DAY);
        rig.write(0x0A, 0x26);
        assert_eq!(rig.read(0x0A), 0x26);
        rig.set(1_000_000_000 - 244_001);
        assert_eq!(rig.read(0x0A), 0x26);
        rig.set(1_000_000_000 - 244_000);
        assert_eq!(rig.read(0x0A), 0xA6);
        rig.set(999_999_999);
        assert_eq!(rig.read(0x0A), 0xA6);
        rig.fire(1_000_000_000);
        assert_eq!(rig.read(0x0A), 0x26);
        // UIP is read-only.
        rig.write(0x0A, 0xA6);
        assert_eq!(rig.read(0x0A), 0x26);
    }

    #[test]
    fn periodic_interrupt_at_1024_hz_and_register_c_clears_it() {
        let rig = Rig::new(LEAP_DAY);
        rig.write(0x0A, 0x26); // 32 kHz base, rate 6 = 1024 Hz
        assert_eq!(rig.deadline(), Some(rig.at(1_000_000_000)));
        rig.write(0x0B, 0x42); // PIE, 24-hour
        assert_eq!(rig.deadline(), Some(rig.at(976_562)));
        rig.fire(976_561);
        assert!(rig.events().is_empty());
        rig.fire(976_562);
        assert_eq!(rig.events(), vec![(8, true)]);
        assert_eq!(rig.deadline(), Some(rig.at(2 * 976_562)));
        // Not read yet: IRQF is already up, no second edge.
        rig.fire(2 * 976_562);
        assert!(rig.events().is_empty());
        assert_eq!(rig.read(0x0C), 0xC0);
        assert_eq!(rig.events(), vec![(8, false)]);
        assert_eq!(rig.read(0x0C), 0x00);
        assert!(rig.events().is_empty());
        rig.fire(3 * 976_562);
        assert_eq!(rig.events(), vec![(8, true)]);
    }

    #[test]
    fn periodic_rates_follow_register_a() {
        let rig = Rig::new(LEAP_DAY);
        rig.write(0x0B, 0x42);
        // Rate 0: no periodic interrupt.
        assert_eq!(rig.deadline(), Some(rig.at(1_000_000_000)));
        for (rate, ns) in [
            (1u8, 30_517u64),
            (3, 122_070),
            (6, 976_562),
            (15, 500_000_000),
        ] {
            rig.write(0x0A, 0x20 | rate);
            assert_eq!(rig.deadline(), Some(rig.at(ns)), "rate {rate}");
        }
        rig.write(0x0B, 0x02);
        assert_eq!(rig.deadline(), Some(rig.at(1_000_000_000)));
    }

    #[test]
    fn late_periodic_timer_sets_the_flag_once() {
        let rig = Rig::new(LEAP_DAY);
        rig.write(0x0A, 0x2F); // 2 Hz
        rig.write(0x0B, 0x42);
        rig.fire(1_700_000_000);
        assert_eq!(rig.events(), vec![(8, true)]);
        assert_eq!(rig.read(0x0C), 0xD0);
        assert_eq!(rig.deadline(), Some(rig.at(2_000_000_000)));
    }

    #[test]
    fn enabling_pie_restarts_the_period_and_notifies() {
        let rig = Rig::new(LEAP_DAY);
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        rig.rtc.lock().unwrap().set_reschedule_notify(move || {
            seen.fetch_add(1, Ordering::SeqCst);
        });
        rig.write(0x0A, 0x26);
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        rig.set(100_000);
        rig.write(0x0B, 0x42);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(rig.deadline(), Some(rig.at(100_000 + 976_562)));
        // Rewriting B unchanged keeps the phase.
        rig.set(200_000);
        rig.write(0x0B, 0x42);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(rig.deadline(), Some(rig.at(100_000 + 976_562)));
    }

    #[test]
    fn update_ended_and_alarm_interrupts() {
        let rig = Rig::new(LEAP_DAY);
        rig.write(0x0B, 0x12); // UIE
        rig.wall.store(LEAP_DAY + 1, Ordering::SeqCst);
        rig.fire(1_000_000_000);
        assert_eq!(rig.events(), vec![(8, true)]);
        assert_eq!(rig.read(0x0C), 0x90);
        assert_eq!(rig.events(), vec![(8, false)]);
        // Alarm at hh:46:00, any hour.
        rig.write(0x0B, 0x22);
        rig.write(0x01, 0x00);
        rig.write(0x03, 0x46);
        rig.write(0x05, 0xFF);
        rig.wall.store(LEAP_DAY + 2, Ordering::SeqCst);
        rig.fire(2_000_000_000);
        assert!(rig.events().is_empty());
        assert_eq!(rig.read(0x0C), 0x10);
        rig.wall.store(LEAP_DAY + 53, Ordering::SeqCst);
        rig.fire(3_000_000_000);
        assert_eq!(rig.events(), vec![(8, true)]);
        assert_eq!(rig.read(0x0C), 0xB0);
    }

    #[test]
    fn enabling_an_already_set_flag_raises_the_irq() {
        let rig = Rig::new(LEAP_DAY);
        rig.wall.store(LEAP_DAY + 1, Ordering::SeqCst);
        rig.fire(1_000_000_000);
        assert!(rig.events().is_empty());
        rig.write(0x0B, 0x12);
        assert_eq!(rig.events(), vec![(8, true)]);
    }

    #[test]
    fn a_jump_of_more_than_five_seconds_requests_a_resync() {
        let rig = Rig::new(LEAP_DAY);
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        rig.rtc.lock().unwrap().set_sync_rtc_notify(move || {
            seen.fetch_add(1, Ordering::SeqCst);
        });
        rig.wall.store(LEAP_DAY + 5, Ordering::SeqCst);
        rig.fire(1_000_000_000);
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        rig.wall.store(LEAP_DAY + 11, Ordering::SeqCst);
        rig.fire(2_000_000_000);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(rig.read(0x00), 0x18);
    }

    #[test]
    fn late_refresh_schedules_the_next_a_second_after_now() {
        let rig = Rig::new(LEAP_DAY);
        rig.fire(3_500_000_000);
        assert_eq!(rig.deadline(), Some(rig.at(4_500_000_000)));
    }

    #[test]
    fn memory_sizes_in_64k_units() {
        // A 4 GiB guest in vmd's era B map: 0–640 KiB, 640 KiB–1 MiB,
        // 1 MiB–0xF0000000, then 256 MiB at 4 GiB.
        let ranges = [
            (0, 0xA0000),
            (0xA0000, 0x60000),
            (0x100000, 0xEFF0_0000),
            (0xF000_0000, 0xFE0_0000),
            (0xFFE0_0000, 0x20_0000),
            (0x1_0000_0000, 0x1000_0000),
        ];
        let (memlo, memhi) = nvram_memory_sizes(&ranges);
        assert_eq!((memlo, memhi), (0xEF00_0000, 0x1000_0000));
        let rig = Rig::new(LEAP_DAY);
        {
            let mut rtc = rig.rtc.lock().unwrap();
            rtc.set_memlo(memlo);
            rtc.set_memhi(memhi);
            rtc.set_cpu_count(1);
        }
        assert_eq!(rig.read(0x34), 0x00);
        assert_eq!(rig.read(0x35), 0xEF);
        assert_eq!(rig.read(0x5B), 0x00);
        assert_eq!(rig.read(0x5C), 0x10);
        assert_eq!(rig.read(0x5D), 0x00);
        assert_eq!(rig.read(0x5F), 0x00);
        {
            let mut rtc = rig.rtc.lock().unwrap();
            rtc.set_memhi((100 << 30) + (192 << 20));
            rtc.set_cpu_count(4);
        }
        assert_eq!([0x5B, 0x5C, 0x5D].map(|i| rig.read(i)), [0x00, 0x0C, 0x19]);
        assert_eq!(rig.read(0x5F), 0x03);
    }

    #[test]
    fn small_guests_have_no_memlo() {
        assert_eq!(
            nvram_memory_sizes(&[(0, 0xA0000), (0x100000, 0xF0_0000)]),
            (0, 0)
        );
        assert_eq!(
            nvram_memory_sizes(&[(0x100000, 0x1F0_0000)]),
            (0x100_0000, 0)
        );
    }

    #[test]
    fn guest_writes_reach_nvram_up_to_0x40_only() {
        let rig = Rig::new(LEAP_DAY);
        {
            let mut rtc = rig.rtc.lock().unwrap();
            rtc.set_memlo(0x0100_0000);
            rtc.set_memhi(0x0100_0000);
        }
        for (idx, expect) in [
            (0x0E, 0xAB),
            (0x32, 0xAB),
            (0x40, 0xAB),
            (0x41, 0x00),
            (0x5F, 0x00),
        ] {
            rig.write(idx, 0xAB);
            assert_eq!(rig.read(idx), expect, "index {idx:#x}");
        }
        // memlo is inside the guest's range, memhi is not.
        rig.write(0x35, 0xAB);
        assert_eq!(rig.read(0x35), 0xAB);
        rig.write(0x5C, 0xAB);
        assert_eq!(rig.read(0x5C), 0x01);
        rig.write(0x0C, 0xFF);
        rig.write(0x0D, 0x00);
        assert_eq!(rig.read(0x0C), 0x00);
        assert_eq!(rig.read(0x0D), 0x80);
    }

    #[test]
    fn index_port_drops_nmi_bit_and_maps_out_of_range_to_register_d() {
        let rig = Rig::new(LEAP_DAY);
        rig.bus.write(IO_RTC, 1, 0x80 | 0x09);
        assert_eq!(rig.bus.read(IO_RTC, 1), 0x09);
        assert_eq!(rig.bus.read(IO_RTC + 1, 1), 0x24);
        rig.bus.write(IO_RTC, 1, 0x60);
        assert_eq!(rig.bus.read(IO_RTC, 1), 0x0D);
        assert_eq!(rig.bus.read(IO_RTC + 1, 1), 0x80);
        rig.bus.write(IO_RTC, 1, 0xFF);
        assert_eq!(rig.bus.read(IO_RTC, 1), 0x0D);
    }
}
