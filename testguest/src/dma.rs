//! Memory the devices see: queues and I/O buffers, bump-allocated from a
//! fixed physical window above the image (identity-mapped, so an address
//! is both the pointer and what goes into a descriptor).  Each script
//! command releases what it allocated.
use core::sync::atomic::{AtomicU64, Ordering};

/// The window: 2 MiB up to 48 MiB, so any VM of 64 MiB or more has it.
pub const BASE: u64 = 0x20_0000;
pub const END: u64 = 0x300_0000;

static NEXT: AtomicU64 = AtomicU64::new(BASE);

/// `len` zeroed bytes aligned to `align` (a power of two).
pub fn alloc(len: u64, align: u64) -> u64 {
    let at = (NEXT.load(Ordering::Relaxed) + align - 1) & !(align - 1);
    let end = at.checked_add(len).filter(|&e| e <= END);
    let Some(end) = end else {
        panic!("dma: {len} bytes do not fit below 0x{END:x}");
    };
    NEXT.store(end, Ordering::Relaxed);
    fill(at, 0, len);
    at
}

/// Where the allocator is, to go back to with `release`.
pub fn mark() -> u64 {
    NEXT.load(Ordering::Relaxed)
}

pub fn release(mark: u64) {
    NEXT.store(mark.clamp(BASE, END), Ordering::Relaxed);
}

fn check(addr: u64, len: u64) {
    assert!(
        addr >= BASE && addr.checked_add(len).is_some_and(|e| e <= END),
        "dma: 0x{addr:x}+{len} outside the window"
    );
}

pub fn fill(addr: u64, byte: u8, len: u64) {
    check(addr, len);
    // SAFETY: [addr, addr+len) lies in the DMA window (checked), which is
    // RAM outside the image that only this module hands out.
    unsafe { core::ptr::write_bytes(addr as *mut u8, byte, len as usize) }
}

/// The window's bytes at `addr` as a slice (for checking and hashing).
pub fn bytes(addr: u64, len: u64) -> &'static [u8] {
    check(addr, len);
    // SAFETY: in the window (checked); the device writes these bytes only
    // while a request is outstanding, and callers read after completion.
    unsafe { core::slice::from_raw_parts(addr as *const u8, len as usize) }
}

macro_rules! volatile_rw {
    ($r:ident, $w:ident, $t:ty) => {
        pub fn $r(addr: u64) -> $t {
            check(addr, core::mem::size_of::<$t>() as u64);
            // SAFETY: in the window (checked) and naturally aligned by the
            // ring layout; volatile because the device writes it.
            unsafe { core::ptr::read_volatile(addr as *const $t) }
        }
        pub fn $w(addr: u64, v: $t) {
            check(addr, core::mem::size_of::<$t>() as u64);
            // SAFETY: as the read.
            unsafe { core::ptr::write_volatile(addr as *mut $t, v) }
        }
    };
}
volatile_rw!(read8, write8, u8);
volatile_rw!(read16, write16, u16);
volatile_rw!(read32, write32, u32);

pub fn write64(addr: u64, v: u64) {
    check(addr, 8);
    // SAFETY: in the window (checked) and 8-byte aligned by the ring
    // layout; volatile because the device reads it.
    unsafe { core::ptr::write_volatile(addr as *mut u64, v) }
}
