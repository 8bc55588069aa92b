//! Guest memory for the shim: one memfd per RAM or RESERVED range, mapped
//! shared, so that `VMM_IOC_SHAREMEM` can map the same pages again (in this
//! process, or in a device process that receives the fd).
use crate::memory::HostMapping;
use crate::{Result, VmmError};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

/// The memfd backing one guest range.
pub(crate) struct MemFd {
    pub fd: OwnedFd,
    pub size: usize,
}

impl MemFd {
    pub fn new(name: &str, size: usize) -> Result<Arc<MemFd>> {
        let cname = CString::new(name).unwrap_or_else(|_| CString::new("vmm").unwrap());
        // SAFETY: memfd_create takes a valid NUL-terminated name and flags.
        let raw = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(VmmError::last_os_error("VMM_IOC_CREATE"));
        }
        // SAFETY: raw is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: plain syscall on a descriptor we own.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) } < 0 {
            return Err(VmmError::last_os_error("VMM_IOC_CREATE"));
        }
        Ok(Arc::new(MemFd { fd, size }))
    }
}

impl MemFd {
    /// A descriptor received from another process; it must cover `size`.
    pub fn adopt(fd: OwnedFd, size: usize, op: &'static str) -> Result<Arc<MemFd>> {
        // SAFETY: fstat fills a zeroed stat buffer for a descriptor we own.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
            return Err(VmmError::last_os_error(op));
        }
        if (st.st_size as u64) < size as u64 {
            return Err(VmmError::with_detail(
                op,
                libc::EINVAL,
                format!(
                    "memory descriptor holds {} bytes, range needs {size}",
                    st.st_size
                ),
            ));
        }
        Ok(Arc::new(MemFd { fd, size }))
    }
}

/// One shared mapping of a memfd; unmapped when the last reference goes.
pub(crate) struct Mapping {
    pub addr: *mut u8,
    pub size: usize,
    _mem: Arc<MemFd>,
}

// SAFETY: the mapping is shared memory with no thread affinity; all access
// goes through raw byte copies or the guest.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl HostMapping for Mapping {}

impl Mapping {
    pub fn new(mem: &Arc<MemFd>, op: &'static str) -> Result<Arc<Mapping>> {
        // SAFETY: mapping a whole memfd we own, shared, at an address the
        // kernel chooses; the result is checked.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mem.size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                mem.fd.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(VmmError::last_os_error(op));
        }
        Ok(Arc::new(Mapping {
            addr: addr as *mut u8,
            size: mem.size,
            _mem: mem.clone(),
        }))
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: addr/size are exactly what mmap returned; no view refers to
        // the mapping any more (views hold an Arc).
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.size) };
    }
}
