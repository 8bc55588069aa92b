//! The x86 side of MMIO emulation (reference §6).
//!
//! When the guest touches a `VM_MEM_MMIO` range, vmm(4) returns an EPT
//! violation (Intel) or nested page fault (AMD) with `vee_fault_type =
//! VEE_FAULT_MMIO_ASSIST` and the full register state.  [`emulate`] does
//! what vmd's `vcpu_exit_eptviolation` → `insn_decode` → `insn_emulate`
//! does: take the instruction bytes (from the exit on AMD, from guest
//! memory at CS:RIP on Intel), decode them with iced-x86, find the guest
//! physical address of the memory operand through a guest page-table walk
//! ([`mmu::translate_gva`]; era B's exit carries no GPA), perform the access
//! on the MMIO bus (or on RAM, for the other side of a MOVS or the stack of
//! a PUSH/POP), merge the result into `vrs` and advance RIP.  The kernel
//! loads every GPR from `vrs` when the vCPU is run again.
//!
//! Guest RAM and MMIO devices are reached through two small traits,
//! [`GuestRam`] and [`MmioAccess`], so that tests drive the emulator with
//! mocks and the VM process with `vmm_sys::GuestMemory` and the device
//! registry (`devices::bus::MmioBus`).
pub mod emulate;
pub mod mmu;
pub mod pio;
mod regs;

#[cfg(test)]
pub(crate) mod property_tests;
#[cfg(test)]
mod tests;

pub use emulate::{emulate, Emulated, MmioError};
pub use mmu::{translate_gva, Access, TranslateError};
pub use pio::{emulate_string_io, PortAccess};

/// Guest-physical RAM as the emulator sees it: page tables, descriptor
/// tables, instruction bytes and the RAM side of string moves and stack
/// operations.
pub trait GuestRam {
    /// Copies `buf.len()` bytes at `gpa` into `buf`; false when the span is
    /// not entirely backed RAM.
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> bool;
    /// Copies `buf` into guest RAM at `gpa`; false when the span is not
    /// entirely backed RAM.
    fn write_phys(&self, gpa: u64, buf: &[u8]) -> bool;
}

impl GuestRam for vmm_sys::GuestMemory {
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> bool {
        self.read(gpa, buf).is_ok()
    }
    fn write_phys(&self, gpa: u64, buf: &[u8]) -> bool {
        self.write(gpa, buf).is_ok()
    }
}

/// The MMIO device registry as the emulator sees it.  `size` is 1, 2, 4 or
/// 8 bytes; values are little-endian, in the low `size` bytes.
pub trait MmioAccess {
    /// A read at `gpa`; `None` when no device claims the address.
    fn mmio_read(&mut self, gpa: u64, size: u8) -> Option<u64>;
    /// A write at `gpa`; false when no device claims the address.
    fn mmio_write(&mut self, gpa: u64, size: u8, value: u64) -> bool;
}

impl MmioAccess for crate::devices::bus::MmioBus {
    fn mmio_read(&mut self, gpa: u64, size: u8) -> Option<u64> {
        self.read(gpa, size)
    }
    fn mmio_write(&mut self, gpa: u64, size: u8, value: u64) -> bool {
        self.write(gpa, size, value)
    }
}
