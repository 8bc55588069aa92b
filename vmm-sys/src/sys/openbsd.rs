//! Backend for OpenBSD: the real ioctls on `/dev/vmm`.
pub mod hostif;

use crate::abi::*;
use crate::{ExitFlavour, GuestMemory, Result, VmmError};
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;

pub(crate) struct Device {
    file: File,
    /// Ranges (with host addresses) of the VMs this handle created, for
    /// `guest_memory`.
    created: Mutex<HashMap<u32, Vec<vm_mem_range>>>,
    flavour: ExitFlavour,
}

/// unveil(2).
pub(crate) fn unveil(path: Option<&std::path::Path>, permissions: Option<&str>) -> Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let einval = |_| VmmError::new("unveil", libc::EINVAL);
    let path = path
        .map(|p| CString::new(p.as_os_str().as_bytes()))
        .transpose()
        .map_err(einval)?;
    let permissions = permissions.map(CString::new).transpose().map_err(einval)?;
    // SAFETY: each argument is NULL or a NUL-terminated string that lives
    // until after the call, as unveil(2) takes them.
    let r = unsafe {
        libc::unveil(
            path.as_ref().map_or(std::ptr::null(), |p| p.as_ptr()),
            permissions
                .as_ref()
                .map_or(std::ptr::null(), |p| p.as_ptr()),
        )
    };
    if r == -1 {
        Err(VmmError::last_os_error("unveil"))
    } else {
        Ok(())
    }
}

/// pledge(2).
pub(crate) fn pledge(promises: Option<&str>, execpromises: Option<&str>) -> Result<()> {
    use std::ffi::CString;
    let einval = |_| VmmError::new("pledge", libc::EINVAL);
    let promises = promises.map(CString::new).transpose().map_err(einval)?;
    let execpromises = execpromises.map(CString::new).transpose().map_err(einval)?;
    // SAFETY: each argument is NULL or a NUL-terminated string that lives
    // until after the call, as pledge(2) takes them.
    let r = unsafe {
        libc::pledge(
            promises.as_ref().map_or(std::ptr::null(), |p| p.as_ptr()),
            execpromises
                .as_ref()
                .map_or(std::ptr::null(), |p| p.as_ptr()),
        )
    };
    if r == -1 {
        Err(VmmError::last_os_error("pledge"))
    } else {
        Ok(())
    }
}

/// The device node.
pub(crate) const DEVICE_PATH: &str = "/dev/vmm";

impl Device {
    pub fn open() -> Result<Device> {
        Self::from_fd(crate::open_device_node(DEVICE_PATH)?)
    }

    /// `/dev/vmm` opened by someone else (vmd's parent, before it dropped
    /// privileges, as `IMSG_VMDOP_RECEIVE_VMM_FD` and `-i fd` pass it).
    /// Only a character device is taken: a wrong descriptor would
    /// otherwise fail at the first ioctl with a less helpful error.
    pub fn from_fd(fd: OwnedFd) -> Result<Device> {
        use std::os::unix::fs::FileTypeExt;
        let file = File::from(fd);
        match file.metadata() {
            Ok(m) if m.file_type().is_char_device() => {}
            Ok(_) => {
                return Err(VmmError::with_detail(
                    "open",
                    libc::ENODEV,
                    "descriptor is not /dev/vmm",
                ))
            }
            Err(e) => {
                return Err(VmmError::with_detail(
                    "open",
                    e.raw_os_error().unwrap_or(libc::EBADF),
                    "descriptor",
                ))
            }
        }
        Ok(Device {
            file,
            created: Mutex::new(HashMap::new()),
            flavour: crate::host_cpu_flavour(),
        })
    }

    fn ioctl<T>(&self, req: u64, arg: *mut T) -> Result<()> {
        // SAFETY: `req` encodes the size of `T` (checked by the abi tests), so
        // the kernel reads and writes exactly one `T` behind `arg`.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), req as libc::c_ulong, arg) };
        if r == -1 {
            Err(VmmError::last_os_error(crate::ioctl_name(req)))
        } else {
            Ok(())
        }
    }

    pub fn host_flavour(&self) -> ExitFlavour {
        self.flavour
    }

    pub fn create(&self, vcp: &mut vm_create_params) -> Result<()> {
        self.ioctl(VMM_IOC_CREATE, vcp)?;
        let n = vcp.vcp_nmemranges.min(vcp.vcp_memranges.len());
        self.created
            .lock()
            .unwrap()
            .insert(vcp.vcp_id, vcp.vcp_memranges[..n].to_vec());
        Ok(())
    }

    pub fn run(&self, vrp: &mut vm_run_params) -> Result<()> {
        self.ioctl(VMM_IOC_RUN, vrp)
    }

    pub fn info(&self) -> Result<Vec<vm_info_result>> {
        loop {
            let mut vip = vm_info_params::default();
            self.ioctl(VMM_IOC_INFO, &mut vip)?;
            let n = vip.vip_size / std::mem::size_of::<vm_info_result>();
            let mut out = vec![vm_info_result::default(); n];
            vip.vip_info = out.as_mut_ptr();
            self.ioctl(VMM_IOC_INFO, &mut vip)?;
            // A VM created between the two calls leaves vip_info_ct at 0.
            if vip.vip_info_ct != 0 || n == 0 {
                out.truncate(vip.vip_info_ct);
                return Ok(out);
            }
        }
    }

    pub fn terminate(&self, vtp: &vm_terminate_params) -> Result<()> {
        let mut p = *vtp;
        self.ioctl(VMM_IOC_TERM, &mut p)?;
        self.created.lock().unwrap().remove(&vtp.vtp_vm_id);
        Ok(())
    }

    pub fn resetcpu(&self, vrp: &vm_resetcpu_params) -> Result<()> {
        let mut p = *vrp;
        self.ioctl(VMM_IOC_RESETCPU, &mut p)
    }

    pub fn intr(&self, vip: &vm_intr_params) -> Result<()> {
        let mut p = *vip;
        self.ioctl(VMM_IOC_INTR, &mut p)
    }

    pub fn readregs(&self, vrwp: &mut vm_rwregs_params) -> Result<()> {
        self.ioctl(VMM_IOC_READREGS, vrwp)
    }

    pub fn writeregs(&self, vrwp: &vm_rwregs_params) -> Result<()> {
        let mut p = *vrwp;
        self.ioctl(VMM_IOC_WRITEREGS, &mut p)
    }

    pub fn readvmparams(&self, vpp: &mut vm_rwvmparams_params) -> Result<()> {
        self.ioctl(VMM_IOC_READVMPARAMS, vpp)
    }

    pub fn writevmparams(&self, vpp: &vm_rwvmparams_params) -> Result<()> {
        let mut p = *vpp;
        self.ioctl(VMM_IOC_WRITEVMPARAMS, &mut p)
    }

    pub fn sharemem(&self, vsp: &mut vm_sharemem_params) -> Result<GuestMemory> {
        self.ioctl(VMM_IOC_SHAREMEM, vsp)?;
        let n = vsp.vsp_nmemranges.min(vsp.vsp_memranges.len());
        // SAFETY: vmm(4) maps each range immutably into this process for its
        // lifetime at vsp_va[i], vmr_size bytes.
        Ok(unsafe { GuestMemory::from_ranges(&vsp.vsp_memranges[..n], &vsp.vsp_va[..n], &[]) })
    }

    pub fn guest_memory(&self, vm_id: u32) -> Result<GuestMemory> {
        let created = self.created.lock().unwrap();
        let ranges = created
            .get(&vm_id)
            .ok_or(VmmError::new("guest memory", libc::ENOENT))?;
        let va: Vec<u64> = ranges.iter().map(|r| r.vmr_va).collect();
        // SAFETY: VMM_IOC_CREATE mapped each range immutably at vmr_va.
        Ok(unsafe { GuestMemory::from_ranges(ranges, &va, &[]) })
    }

    /// vmm(4) shares memory by VM id: there are no descriptors to pass.
    pub fn memory_fds(&self, _vm_id: u32) -> Result<Vec<Option<std::os::fd::OwnedFd>>> {
        Ok(Vec::new())
    }

    /// Nothing to adopt: VMM_IOC_SHAREMEM finds the VM by id.
    pub fn adopt_memory(
        &self,
        _vm_id: u32,
        _ranges: &[vm_mem_range],
        _fds: Vec<Option<std::os::fd::OwnedFd>>,
    ) -> Result<()> {
        Ok(())
    }

    /// vmm(4) has no doorbells: every notify write exits.
    pub fn queue_notify_fd(&self) -> Result<OwnedFd> {
        Err(VmmError::with_detail(
            "queue notify",
            libc::EOPNOTSUPP,
            "vmm(4) reports every port write as an exit",
        ))
    }

    pub fn queue_notify(
        &self,
        _vm_id: u32,
        _port: u16,
        _queue: u16,
        _fd: std::os::fd::BorrowedFd<'_>,
        _attach: bool,
    ) -> Result<()> {
        self.queue_notify_fd().map(drop)
    }

    pub fn set_exit_flavour(&self, _vm_id: u32, flavour: ExitFlavour) -> Result<()> {
        if flavour == self.flavour {
            Ok(())
        } else {
            Err(VmmError::with_detail(
                "set exit flavour",
                libc::EOPNOTSUPP,
                "/dev/vmm reports the host CPU's exits only",
            ))
        }
    }
}
