//! Loading what the guest starts with (reference §4.5, §4.6): a BIOS image
//! (SeaBIOS, OpenBSD's `vmm-bios`), an OpenBSD ELF kernel with boot
//! arguments, or a Linux bzImage with the Linux boot protocol.
pub mod bios;
pub mod elf;
pub mod linux;
pub mod regs;

#[cfg(test)]
mod property_tests;

use vmm_sys::GuestMemory;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The image does not fit where it must go.
    #[error("{what} of {size} bytes does not fit (limit {limit} bytes)")]
    Size {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    /// Not a format this loader understands.
    #[error("{0}")]
    Format(String),
    /// Writing guest memory failed.
    #[error("guest memory: {0}")]
    Memory(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub(crate) fn write(mem: &GuestMemory, gpa: u64, bytes: &[u8]) -> Result<(), LoadError> {
    mem.write(gpa, bytes)
        .map_err(|e| LoadError::Memory(e.to_string()))
}

/// Anonymous guest memory laid out as vmd lays out `mem_bytes` of it
/// (reference §4.1; the MMIO holes left unbacked), and that layout: what
/// the loaders' tests load into.
#[cfg(test)]
pub(crate) fn test_guest(mem_bytes: u64) -> (GuestMemory, Vec<vmm_sys::abi::vm_mem_range>) {
    let ranges = crate::vm::memmap::create_memory_map(mem_bytes).unwrap();
    let spans: Vec<(u64, usize)> = ranges
        .iter()
        .filter(|r| r.vmr_type != vmm_sys::abi::VM_MEM_MMIO as i32)
        .map(|r| (r.vmr_gpa, r.vmr_size))
        .collect();
    (GuestMemory::anonymous(&spans).unwrap(), ranges)
}
