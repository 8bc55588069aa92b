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

    /// Guest memory of its own (zeroed, private to this process) for the
    /// given (gpa, size) ranges: for loaders and devices tested without a
    /// VM.
    pub fn anonymous(ranges: &[(u64, usize)]) -> Result<GuestMemory> {
        let mut regions = Vec::new();
        for &(gpa, len) in ranges {
            let map = Arc::new(Anonymous::new(len)?);
            regions.push(Region {
                gpa,
                len: len as u64,
                host: map.addr,
                _keep: Some(map),
            });
        }
        Ok(GuestMemory { regions })
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

    /// The backed ranges as (guest-physical address, length, host address),
    /// for code that builds views of its own (vm-memory) over them; the
    /// host addresses stay valid while this view (or a clone) lives.
    pub fn regions(&self) -> Vec<(u64, usize, *mut u8)> {
        self.regions
            .iter()
            .map(|r| (r.gpa, r.len as usize, r.host))
            .collect()
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

/// An anonymous private mapping owned by a [`GuestMemory::anonymous`] view.
struct Anonymous {
    addr: *mut u8,
    len: usize,
}

// SAFETY: plain memory with no thread affinity.
unsafe impl Send for Anonymous {}
// SAFETY: as above.
unsafe impl Sync for Anonymous {}

impl HostMapping for Anonymous {}

impl Anonymous {
    fn new(len: usize) -> Result<Anonymous> {
        // SAFETY: a fresh anonymous mapping; the result is checked.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len.max(1),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANON,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(VmmError::last_os_error("guest memory"));
        }
        Ok(Anonymous {
            addr: addr as *mut u8,
            len: len.max(1),
        })
    }
}

impl Drop for Anonymous {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in new(); no view uses it any more.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

fn unbacked(gpa: u64, len: usize) -> VmmError {
    VmmError::with_detail(
        "guest memory",
        libc::EFAULT,
        format!("{len} bytes at gpa 0x{gpa:x} are not backed guest memory"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_memory_reads_back_and_rejects_unbacked_spans() {
        let m = GuestMemory::anonymous(&[(0, 0x1000), (0x10_0000, 0x2000)]).unwrap();
        m.write_u64(0x10_1ff8, 0x1122_3344_5566_7788).unwrap();
        assert_eq!(m.read_u64(0x10_1ff8).unwrap(), 0x1122_3344_5566_7788);
        assert_eq!(m.read_u32(0x10).unwrap(), 0);
        // crossing the end of a range, or between ranges, is not backed
        assert_eq!(m.read_u64(0x10_1ffc).unwrap_err().errno, libc::EFAULT);
        assert!(m.read_u32(0x2000).is_err());
        assert!(m.is_backed(0xff0, 16) && !m.is_backed(0xff0, 17));
    }
}
