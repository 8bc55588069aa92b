//! The guest-memory module: a vm-memory view (`GuestMemoryMmap`) over the
//! mappings vmm-sys made, for the rust-vmm crates that want one
//! (linux-loader, virtio-queue).  This and vmm-sys are the only places with
//! `unsafe` in vmd.
#![allow(unsafe_code)]
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

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

/// Runs `f` on the guest bytes `[gpa, gpa + len)` as a slice when they lie
/// in one region (None otherwise, or if they are not guest memory): disk
/// reads go from the image straight into the guest's buffer, without a
/// bounce buffer and a second copy.
pub fn with_guest_bytes_mut<R>(
    mem: &GuestMemoryMmap,
    gpa: u64,
    len: usize,
    f: impl FnOnce(&mut [u8]) -> R,
) -> Option<R> {
    let s = mem.get_slice(GuestAddress(gpa), len).ok()?;
    if s.len() != len {
        return None;
    }
    let guard = s.ptr_guard_mut();
    // SAFETY: vm-memory checked that the `len` bytes at this pointer lie
    // in one live mapping, which `mem` keeps mapped for this call; the
    // slice does not outlive `f`.  The guest may change these bytes at
    // any time, as it may with any DMA buffer it hands a device: they are
    // plain bytes with no invariant, and what `f` reads from or leaves in
    // them is the guest's business.
    let bytes = unsafe { std::slice::from_raw_parts_mut(guard.as_ptr(), len) };
    Some(f(bytes))
}

/// [`with_guest_bytes_mut`] for reading guest bytes (disk writes).
pub fn with_guest_bytes<R>(
    mem: &GuestMemoryMmap,
    gpa: u64,
    len: usize,
    f: impl FnOnce(&[u8]) -> R,
) -> Option<R> {
    with_guest_bytes_mut(mem, gpa, len, |b| f(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn guest_bytes_in_one_region_only() {
        let raw = vmm_sys::GuestMemory::anonymous(&[(0, 0x2000), (0x2000, 0x1000)]).unwrap();
        let mem = VmMemory::new(&raw).unwrap();
        let m = mem.mmap();
        with_guest_bytes_mut(m, 0x1ff0, 0x10, |b| b.copy_from_slice(&[7u8; 16])).unwrap();
        let mut back = [0u8; 16];
        m.read_slice(&mut back, GuestAddress(0x1ff0)).unwrap();
        assert_eq!(back, [7u8; 16]);
        assert_eq!(
            with_guest_bytes(m, 0x1ff0, 16, |b| b.to_vec()).unwrap(),
            back
        );
        assert!(
            with_guest_bytes(m, 0x1ff0, 0x20, |_| ()).is_none(),
            "spans two regions"
        );
        assert!(
            with_guest_bytes(m, 0x2f00, 0x200, |_| ()).is_none(),
            "past RAM"
        );
        assert!(with_guest_bytes(m, 0x9000, 1, |_| ()).is_none(), "not RAM");
    }
}
