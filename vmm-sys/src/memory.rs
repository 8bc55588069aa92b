//! A safe view of a VM's guest memory as mapped into this process, by
//! `VMM_IOC_CREATE` (`vmr_va`) or `VMM_IOC_SHAREMEM` (`vsp_va`).
//!
//! On OpenBSD the kernel makes those mappings immutable for the life of the
//! process, so a view stays valid.  The KVM shim keeps each mapping alive
//! through a reference held by the view.
use crate::abi::{vm_mem_range, VM_MEM_MMIO};
use crate::error::{Result, VmmError};
use std::sync::Arc;

/// Keeps a host mapping alive for as long as a view refers to it.
pub trait HostMapping: Send + Sync {}

#[derive(Clone)]
struct Region {
    gpa: u64,
    len: u64,
    host: *mut u8,
    _keep: Option<Arc<dyn HostMapping>>,
}

// SAFETY: the host pointers refer to shared guest memory that lives as long
// as the region (see the module comment); accesses are plain byte copies,
// and the guest itself writes this memory concurrently by design.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

/// Guest-physical → host mapping of the RAM and RESERVED ranges of one VM.
#[derive(Clone, Default)]
pub struct GuestMemory {
    regions: Vec<Region>,
}

impl GuestMemory {
    /// Builds a view from ranges whose `vmr_va` (or the given `va`) holds
    /// the host address.
    ///
    /// # Safety
    /// Each host address must point to a mapping of at least `vmr_size`
    /// bytes that stays valid while `keep` (or, with `None`, the process)
    /// lives.
    pub unsafe fn from_ranges(
        ranges: &[vm_mem_range],
        va: &[u64],
        keep: &[Option<Arc<dyn HostMapping>>],
    ) -> Self {
        let mut regions = Vec::new();
        for (i, r) in ranges.iter().enumerate() {
            if r.vmr_type == VM_MEM_MMIO as i32 || va[i] == 0 {
                continue;
            }
            regions.push(Region {
                gpa: r.vmr_gpa,
                len: r.vmr_size as u64,
                host: va[i] as *mut u8,
                _keep: keep.get(i).cloned().flatten(),
            });
        }
        GuestMemory { regions }
    }

    fn find(&self, gpa: u64, len: usize) -> Option<(&Region, u64)> {
        self.regions.iter().find_map(|r| {
            let off = gpa.checked_sub(r.gpa)?;
            (off < r.len && (len as u64) <= r.len - off).then_some((r, off))
        })
    }

    /// Whether `len` bytes at `gpa` lie inside one backed range.
    pub fn is_backed(&self, gpa: u64, len: usize) -> bool {
        self.find(gpa, len).is_some()
    }

    /// Copies guest memory at `gpa` into `buf`; the span must lie within one
    /// backed range.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<()> {
        let (r, off) = self
            .find(gpa, buf.len())
            .ok_or_else(|| unbacked(gpa, buf.len()))?;
        // SAFETY: find() checked that [off, off+len) lies inside the mapping,
        // which stays valid while this view holds it.
        unsafe {
            std::ptr::copy_nonoverlapping(r.host.add(off as usize), buf.as_mut_ptr(), buf.len())
        };
        Ok(())
    }

    /// Copies `buf` into guest memory at `gpa`.
    pub fn write(&self, gpa: u64, buf: &[u8]) -> Result<()> {
        let (r, off) = self
            .find(gpa, buf.len())
            .ok_or_else(|| unbacked(gpa, buf.len()))?;
        // SAFETY: as in read(); the mapping is writable shared memory.
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), r.host.add(off as usize), buf.len()) };
        Ok(())
    }

    pub fn read_u64(&self, gpa: u64) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn read_u32(&self, gpa: u64) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read(gpa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    pub fn write_u64(&self, gpa: u64, v: u64) -> Result<()> {
        self.write(gpa, &v.to_le_bytes())
    }

    pub fn write_u32(&self, gpa: u64, v: u32) -> Result<()> {
        self.write(gpa, &v.to_le_bytes())
    }

    /// Host address of `len` bytes at `gpa`, for code that hands guest
    /// memory to other mapping-aware crates.
    pub fn host_address(&self, gpa: u64, len: usize) -> Option<*mut u8> {
        let (r, off) = self.find(gpa, len)?;
        // SAFETY: offset checked by find(); pointer arithmetic stays inside
        // the mapping.
        Some(unsafe { r.host.add(off as usize) })
    }
}

fn unbacked(gpa: u64, len: usize) -> VmmError {
    VmmError::with_detail(
        "guest memory",
        libc::EFAULT,
        format!("{len} bytes at gpa 0x{gpa:x} are not backed guest memory"),
    )
}
