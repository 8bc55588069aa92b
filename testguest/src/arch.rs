//! Port I/O (the TSS's I/O bitmap allows every port at CPL 3), MMIO, and
//! the two requests to CPL0 (halt, wait for an interrupt).
use core::arch::asm;

pub fn outb(port: u16, v: u8) {
    // SAFETY: the guest runs with IOPL 3 and owns every port it names; a
    // port write has no effect on this program's memory.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
    }
}

pub fn outw(port: u16, v: u16) {
    // SAFETY: as outb.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") v, options(nomem, nostack, preserves_flags))
    }
}

pub fn outl(port: u16, v: u32) {
    // SAFETY: as outb.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack, preserves_flags))
    }
}

pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as outb; a port read only returns a value.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
    }
    v
}

pub fn inw(port: u16) -> u16 {
    let v: u16;
    // SAFETY: as inb.
    unsafe {
        asm!("in ax, dx", in("dx") port, out("ax") v, options(nomem, nostack, preserves_flags))
    }
    v
}

pub fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: as inb.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack, preserves_flags))
    }
    v
}

/// A device register at a physical address (identity-mapped, user pages).
pub fn mmio_read8(addr: u64) -> u8 {
    // SAFETY: addr is a BAR address the PCI code validated to lie in the
    // identity-mapped 4 GiB; volatile because it is a device register.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}
pub fn mmio_read16(addr: u64) -> u16 {
    // SAFETY: as mmio_read8; the capability's offsets are aligned.
    unsafe { core::ptr::read_volatile(addr as *const u16) }
}
pub fn mmio_read32(addr: u64) -> u32 {
    // SAFETY: as mmio_read16.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}
pub fn mmio_write8(addr: u64, v: u8) {
    // SAFETY: as mmio_read8.
    unsafe { core::ptr::write_volatile(addr as *mut u8, v) }
}
pub fn mmio_write16(addr: u64, v: u16) {
    // SAFETY: as mmio_read16.
    unsafe { core::ptr::write_volatile(addr as *mut u16, v) }
}
pub fn mmio_write32(addr: u64, v: u32) {
    // SAFETY: as mmio_read16.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}

pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC only reads the time-stamp counter (CR4.TSD is clear).
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    ((hi as u64) << 32) | lo as u64
}

/// The current privilege level, from CS.
pub fn cpl() -> u16 {
    let cs: u16;
    // SAFETY: reading CS has no side effect.
    unsafe { asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) }
    cs & 3
}

/// Stops the guest for good: CLI at CPL 3 faults, and the #GP handler
/// (boot.rs) takes it as the request to halt with interrupts off.
pub fn halt() -> ! {
    // SAFETY: the #GP handler recognises the CLI and never returns.
    unsafe { asm!("cli", "ud2", options(noreturn, nomem, nostack)) }
}

/// Waits for an interrupt: HLT at CPL 3 faults, and the #GP handler
/// (boot.rs) enables interrupts, halts, disables them and returns after
/// the HLT.
pub fn wait_for_interrupt() {
    // SAFETY: the #GP handler recognises the HLT, returns after it, and
    // preserves every register.
    unsafe { asm!("hlt", options(nomem, nostack)) }
}

/// A full barrier between the ring's memory and the device's view of it.
pub fn fence() {
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
}

extern "C" {
    /// Interrupts counted per PIC line by the CPL0 stub (boot.rs).
    static irq_counts: [u64; 16];
}

pub fn irq_count(line: u8) -> u64 {
    // SAFETY: irq_counts is a 16-entry array in .bss written only by the
    // interrupt stub; a volatile read of one aligned u64 is atomic here.
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!(irq_counts[(line & 15) as usize])) }
}
