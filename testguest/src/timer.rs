//! Time: the TSC, calibrated once against PIT channel 2.
use crate::arch::{inb, outb, rdtsc};
use core::sync::atomic::{AtomicU64, Ordering};

static TSC_KHZ: AtomicU64 = AtomicU64::new(0);

/// TSC ticks per millisecond (0 if the PIT did not answer).
pub fn tsc_khz() -> u64 {
    let k = TSC_KHZ.load(Ordering::Relaxed);
    if k != 0 {
        return k;
    }
    // Channel 2, mode 0, 59659 counts (50 ms); its output shows in port
    // 0x61 bit 5 once the count runs out.
    const COUNT: u16 = 59659;
    let p61 = inb(0x61);
    outb(0x61, (p61 & !0x02) | 0x01);
    outb(0x43, 0xb0);
    outb(0x42, COUNT as u8);
    outb(0x42, (COUNT >> 8) as u8);
    let t0 = rdtsc();
    let mut n = 0u32;
    while inb(0x61) & 0x20 == 0 {
        n += 1;
        if n > 5_000_000 {
            return 0;
        }
    }
    let t1 = rdtsc();
    outb(0x61, p61);
    let k = (t1 - t0) / 50;
    TSC_KHZ.store(k, Ordering::Relaxed);
    k
}

/// A deadline `ms` milliseconds away, in TSC ticks (a guess of 1 GHz if the
/// PIT did not answer).
pub fn deadline_ms(ms: u64) -> u64 {
    let k = match tsc_khz() {
        0 => 1_000_000,
        k => k,
    };
    rdtsc() + ms * k
}

pub fn passed(deadline: u64) -> bool {
    rdtsc() >= deadline
}

pub fn delay_ms(ms: u64) {
    let d = deadline_ms(ms);
    while !passed(d) {
        core::hint::spin_loop();
    }
}

/// Nanoseconds between two TSC readings.
pub fn ns(t0: u64, t1: u64) -> u64 {
    match tsc_khz() {
        0 => 0,
        k => ((t1 - t0) as u128 * 1_000_000 / k as u128) as u64,
    }
}
