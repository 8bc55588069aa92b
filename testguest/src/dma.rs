//! Memory the devices see: queues and I/O buffers, bump-allocated from a
//! fixed physical window above the image (identity-mapped, so an address
//! is both the pointer and what goes into a descriptor).  Each script
//! command releases what it allocated.
use core::sync::atomic::{AtomicU64, Ordering};

/// The window: 2 MiB up to 48 MiB, or to the end of RAM when that is
/// lower (see `limit`).
pub const BASE: u64 = 0x20_0000;
const MAX_END: u64 = 0x300_0000;

static NEXT: AtomicU64 = AtomicU64::new(BASE);
static END: AtomicU64 = AtomicU64::new(MAX_END);

pub fn end() -> u64 {
    END.load(Ordering::Relaxed)
}

/// Ends the window at `ram_end` (the end of the RAM range above 1 MiB)
/// if that is below 48 MiB.
pub fn limit(ram_end: u64) {
    END.store(ram_end.clamp(BASE, MAX_END), Ordering::Relaxed);
}

/// `len` zeroed bytes aligned to `align` (a power of two).
pub fn alloc(len: u64, align: u64) -> u64 {
    let at = (NEXT.load(Ordering::Relaxed) + align - 1) & !(align - 1);
    let Some(e) = at.checked_add(len).filter(|&e| e <= end()) else {
        panic!("dma: {len} bytes do not fit below 0x{:x}", end());
    };
    NEXT.store(e, Ordering::Relaxed);
    fill(at, 0, len);
    at
}

/// Where the allocator is, to go back to with `release`.
pub fn mark() -> u64 {
    NEXT.load(Ordering::Relaxed)
}

pub fn release(mark: u64) {
    NEXT.store(mark.clamp(BASE, end()), Ordering::Relaxed);
}

fn check(addr: u64, len: u64) {
    assert!(
        addr >= BASE && addr.checked_add(len).is_some_and(|e| e <= end()),
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

/// On an ELF boot, vmd's boot arguments at 0x2000 (OpenBSD's bootarg list)
/// carry the memory map: the RAM range that starts at 1 MiB limits the
/// window.
pub fn limit_from_bootargs() {
    const BOOTARGS: u64 = 0x2000;
    // SAFETY: vmd writes the boot-argument list to the page at 0x2000
    // (below the image, which nothing else here uses) before the kernel
    // starts; the walk stays inside that page.
    let page = unsafe { core::slice::from_raw_parts(BOOTARGS as *const u8, 4096) };
    let u32_at = |o: usize| {
        page.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| Some(u32_at(o)? as u64 | (u32_at(o + 4)? as u64) << 32);
    let mut off = 0usize;
    while let (Some(ty), Some(size)) = (u32_at(off), u32_at(off + 4)) {
        if ty == 0xffff_ffff || size < 12 {
            return;
        }
        if ty == 0 {
            // bios_memmap_t {u64 addr, u64 size, u32 type}, ended by size 0.
            let mut m = off + 12;
            while m + 20 <= (off + size as usize).min(4096) {
                let (Some(addr), Some(len), Some(kind)) =
                    (u64_at(m), u64_at(m + 8), u32_at(m + 16))
                else {
                    return;
                };
                if len == 0 {
                    break;
                }
                if kind == 1 && addr == 0x10_0000 {
                    limit(addr + len);
                }
                m += 20;
            }
        }
        off += size as usize;
    }
}
