//! The guest-memory module: a vm-memory view (`GuestMemoryMmap`) over the
//! mappings vmm-sys made, for the rust-vmm crates that want one
//! (linux-loader, virtio-queue).  This and vmm-sys are the only places with
//! `unsafe` in vmd.
#![allow(unsafe_code)]
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

/// Why the view could not be made.
#[derive(Debug, thiserror::Error)]
pub enum VmMemoryError {
    #[error("guest memory at 0x{gpa:x}: {source}")]
    Region {
        gpa: u64,
        source: vm_memory::mmap::MmapRegionError,
    },
    #[error("guest memory at 0x{gpa:x} overflows the address space")]
    Overflow { gpa: u64 },
    #[error("guest memory: {0}")]
    Layout(#[from] vm_memory::GuestRegionCollectionError),
}

/// A vm-memory view that keeps the vmm-sys mappings it refers to alive;
/// clones share the mappings.
#[derive(Clone)]
pub struct VmMemory {
    mmap: GuestMemoryMmap,
    _keep: vmm_sys::GuestMemory,
}

impl VmMemory {
    pub fn new(mem: &vmm_sys::GuestMemory) -> Result<VmMemory, VmMemoryError> {
        let mut regions = Vec::new();
        for (gpa, len, host) in mem.regions() {
            // SAFETY: `host` is the start of a live shared read/write
            // mapping of `len` bytes made by vmm-sys, and `_keep` holds a
            // reference to it for as long as this view exists; vm-memory
            // does not unmap raw regions.
            let region = unsafe {
                MmapRegion::build_raw(
                    host,
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                )
            }
            .map_err(|source| VmMemoryError::Region { gpa, source })?;
            regions.push(
                GuestRegionMmap::new(region, GuestAddress(gpa))
                    .ok_or(VmMemoryError::Overflow { gpa })?,
            );
        }
        let mmap = GuestMemoryMmap::from_regions(regions)?;
        Ok(VmMemory {
            mmap,
            _keep: mem.clone(),
        })
    }

    pub fn mmap(&self) -> &GuestMemoryMmap {
        &self.mmap
    }
}
