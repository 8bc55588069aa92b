//! The vmm(4) shim on Linux KVM: plays the kernel's part so that vmd cannot
//! tell it from `/dev/vmm` (see ARCHITECTURE.md, "the shim's contract").
//!
//! VMs live in this process: one KVM VM per `VMM_IOC_CREATE`, with no
//! in-kernel irqchip, PIT or LAPIC (vmd emulates the PIC and timers and
//! injects through `vrp_inject`), guest memory in memfds, and vCPU exits
//! translated into vmm(4) exit records in the host's (or the chosen) flavour.
mod cpuid;
pub mod hostif;
mod insn;
mod kick;
mod memory;
mod mmu;
mod regs;
mod sigsys;
mod vcpu;

use crate::abi::*;
use crate::{ExitFlavour, GuestMemory, HostMapping, Result, VmmError};
use kvm_bindings::{kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VmFd};
use memory::{Mapping, MemFd};
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use vcpu::Vcpu;
use vmm_sys_util::eventfd::EventFd;

const PAGE_MASK: u64 = 0xfff;
/// Four pages for KVM's real-mode TSS and identity-map page.
const TSS_ADDR: u64 = 0xFEFF_C000;

pub(crate) struct Device {
    kvm: Kvm,
    vms: RwLock<BTreeMap<u32, Arc<Vm>>>,
    /// Memory of VMs created by another process, adopted for SHAREMEM.
    adopted: RwLock<BTreeMap<u32, Adopted>>,
    /// `vm_idx`: the last VM id handed out; ids are never reused.
    vm_idx: Mutex<u32>,
    cpuid: CpuId,
    flavour: ExitFlavour,
}

/// The memory of a VM another process created (ranges and their memfds).
struct Adopted {
    ranges: Vec<vm_mem_range>,
    memfds: Vec<Option<Arc<MemFd>>>,
}

pub(crate) struct Vm {
    id: u32,
    name: String,
    creator_pid: i32,
    /// The KVM VM; its memory slots point into `mappings`.
    fd: VmFd,
    ranges: Vec<vm_mem_range>,
    memfds: Vec<Option<Arc<MemFd>>>,
    /// The mappings made by VMM_IOC_CREATE (index = range).
    mappings: Vec<Option<Arc<Mapping>>>,
    memory: GuestMemory,
    memory_size: usize,
    vcpus: Vec<Vcpu>,
    flavour: AtomicU8,
    dying: AtomicBool,
    pvclock: Mutex<(u64, u32)>,
}

impl Vm {
    fn flavour(&self) -> ExitFlavour {
        if self.flavour.load(Ordering::Relaxed) == 1 {
            ExitFlavour::Svm
        } else {
            ExitFlavour::Vmx
        }
    }

    fn vcpu(&self, op: &'static str, id: u32) -> Result<&Vcpu> {
        self.vcpus.get(id as usize).ok_or_else(|| {
            VmmError::with_detail(op, libc::ENOENT, format!("vcpu {id} of vm {}", self.id))
        })
    }
}

/// An I/O error as vmm(4) reports errors: its errno.
fn io_error(op: &'static str, e: &std::io::Error) -> VmmError {
    VmmError::with_detail(op, e.raw_os_error().unwrap_or(libc::EIO), e.to_string())
}

fn flavour_code(f: ExitFlavour) -> u8 {
    match f {
        ExitFlavour::Vmx => 0,
        ExitFlavour::Svm => 1,
    }
}

/// unveil(2) has no Linux counterpart here: nothing to do.
pub(crate) fn unveil(_path: Option<&std::path::Path>, _permissions: Option<&str>) -> Result<()> {
    Ok(())
}

/// pledge(2) has no Linux counterpart here: nothing to do.
pub(crate) fn pledge(_promises: Option<&str>, _execpromises: Option<&str>) -> Result<()> {
    Ok(())
}

pub(crate) use sigsys::install_sigsys_reporter;

/// The device node the shim stands on.
pub(crate) const DEVICE_PATH: &str = "/dev/kvm";

/// `KVM_GET_API_VERSION`, `_IO(KVMIO, 0x00)`.
const KVM_GET_API_VERSION: libc::c_ulong = (kvm_bindings::KVMIO as libc::c_ulong) << 8;

impl Device {
    pub fn open() -> Result<Device> {
        Self::from_fd(crate::open_device_node(DEVICE_PATH)?)
    }

    /// The shim on a `/dev/kvm` descriptor opened by someone else (vmd's
    /// parent, before it dropped privileges): refused unless the
    /// descriptor answers `KVM_GET_API_VERSION` with the stable API, 12.
    pub fn from_fd(fd: OwnedFd) -> Result<Device> {
        // SAFETY: KVM_GET_API_VERSION writes no memory and wants its
        // argument 0 (EINVAL otherwise); on a descriptor that is not
        // /dev/kvm it fails (ENOTTY).
        let version = unsafe { libc::ioctl(fd.as_raw_fd(), KVM_GET_API_VERSION as _, 0) };
        if version < 0 {
            return Err(VmmError::with_detail(
                "open",
                std::io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::ENOTTY),
                "descriptor is not /dev/kvm (KVM_GET_API_VERSION)",
            ));
        }
        if version != kvm_bindings::KVM_API_VERSION as i32 {
            return Err(VmmError::with_detail(
                "open",
                libc::ENODEV,
                format!(
                    "KVM API version {version}, not {}",
                    kvm_bindings::KVM_API_VERSION
                ),
            ));
        }
        // SAFETY: the descriptor is open, ours (into_raw_fd gives up the
        // OwnedFd's ownership to the Kvm, which closes it) and is KVM's
        // system descriptor: it answered KVM_GET_API_VERSION above.
        let kvm = unsafe { Kvm::from_raw_fd(fd.into_raw_fd()) };
        Self::with_kvm(kvm)
    }

    fn with_kvm(kvm: Kvm) -> Result<Device> {
        for (cap, name) in [
            (Cap::SyncRegs, "KVM_CAP_SYNC_REGS"),
            (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmmError::with_detail(
                    "open",
                    libc::ENODEV,
                    format!("kvm lacks {name}"),
                ));
            }
        }
        let mut cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| VmmError::with_detail("open", e.errno(), "KVM_GET_SUPPORTED_CPUID"))?;
        cpuid::filter(&mut cpuid, cpuid::host_emulates_guest_code());
        kick::install_handler();
        Ok(Device {
            kvm,
            vms: RwLock::new(BTreeMap::new()),
            adopted: RwLock::new(BTreeMap::new()),
            vm_idx: Mutex::new(0),
            cpuid,
            flavour: crate::host_cpu_flavour(),
        })
    }

    pub fn host_flavour(&self) -> ExitFlavour {
        self.flavour
    }

    fn find(&self, op: &'static str, id: u32) -> Result<Arc<Vm>> {
        let vms = self.vms.read().unwrap();
        match vms.get(&id) {
            Some(vm) if !vm.dying.load(Ordering::Acquire) => Ok(vm.clone()),
            _ => Err(VmmError::with_detail(op, libc::ENOENT, format!("vm {id}"))),
        }
    }

    /// vmm(4)'s `vm_create_check_mem_ranges` plus the name and vCPU checks
    /// of the shim's contract; returns the memory size.
    fn check_create(vcp: &vm_create_params) -> Result<usize> {
        const OP: &str = "VMM_IOC_CREATE";
        let einval = |why: String| Err(VmmError::with_detail(OP, libc::EINVAL, why));
        let n = vcp.vcp_nmemranges;
        if n == 0 || n > VMM_MAX_MEM_RANGES as usize {
            return einval(format!("{n} memory ranges"));
        }
        if vcp.vcp_ncpus == 0 || vcp.vcp_ncpus > VMM_MAX_VCPUS_PER_VM as usize {
            return einval(format!("{} vcpus", vcp.vcp_ncpus));
        }
        if !vcp.vcp_name.contains(&0) {
            return einval("name not NUL-terminated within 64 bytes".into());
        }
        if vcp.vcp_sev != 0 || vcp.vcp_seves != 0 {
            return Err(VmmError::with_detail(OP, libc::ENOTSUP, "SEV guests"));
        }
        let max = VMM_MAX_VM_MEM_SIZE;
        let mut memsize = 0usize;
        let mut prev_end = 0u64;
        for (i, r) in vcp.vcp_memranges[..n].iter().enumerate() {
            let size = r.vmr_size as u64;
            if r.vmr_gpa & PAGE_MASK != 0
                || r.vmr_va & PAGE_MASK != 0
                || size & PAGE_MASK != 0
                || size == 0
            {
                return einval(format!("memory range {i} is not page aligned"));
            }
            if r.vmr_gpa >= max || size > max - r.vmr_gpa {
                return einval(format!("memory range {i} exceeds the maximum memory size"));
            }
            if i > 0 && prev_end > r.vmr_gpa {
                return einval(format!("memory range {i} overlaps or is not ascending"));
            }
            if !(0..=2).contains(&r.vmr_type) {
                return einval(format!("memory range {i} has type {}", r.vmr_type));
            }
            if r.vmr_type != VM_MEM_MMIO as i32 {
                memsize += size as usize;
            }
            prev_end = r.vmr_gpa + size;
        }
        if memsize == 0 {
            return einval("no memory".into());
        }
        Ok(memsize)
    }

    pub fn create(&self, vcp: &mut vm_create_params) -> Result<()> {
        const OP: &str = "VMM_IOC_CREATE";
        let memory_size = Self::check_create(vcp)?;
        let n = vcp.vcp_nmemranges;
        let name = c_name(&vcp.vcp_name);
        let fd = self
            .kvm
            .create_vm()
            .map_err(|e| VmmError::with_detail(OP, e.errno(), "KVM_CREATE_VM"))?;
        // Intel CPUs without unrestricted guest need KVM's real-mode TSS and
        // identity map: place them at the top of the PCI MMIO window, where
        // vmd allocates no BARs and no guest RAM or BIOS copy lives.
        fd.set_tss_address(TSS_ADDR as usize)
            .and_then(|_| fd.set_identity_map_address(TSS_ADDR + 0x3000))
            .map_err(|e| VmmError::with_detail(OP, e.errno(), "KVM_SET_TSS_ADDR"))?;
        let mut ranges = vcp.vcp_memranges[..n].to_vec();
        let mut memfds = Vec::with_capacity(n);
        let mut mappings = Vec::with_capacity(n);
        for (slot, r) in ranges.iter_mut().enumerate() {
            if r.vmr_type == VM_MEM_MMIO as i32 {
                // Unbacked: every access exits as MMIO.
                memfds.push(None);
                mappings.push(None);
                continue;
            }
            let mem = MemFd::new(&format!("vmm:{name}:{slot}"), r.vmr_size)?;
            let map = Mapping::new(&mem, OP)?;
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: r.vmr_gpa,
                memory_size: r.vmr_size as u64,
                userspace_addr: map.addr as u64,
            };
            // SAFETY: the mapping is valid for memory_size bytes and lives in
            // the Vm (mappings) at least as long as the KVM VM fd.
            unsafe { fd.set_user_memory_region(region) }
                .map_err(|e| VmmError::with_detail(OP, e.errno(), format!("memory slot {slot}")))?;
            r.vmr_va = map.addr as u64;
            memfds.push(Some(mem));
            mappings.push(Some(map));
        }
        let keep: Vec<Option<Arc<dyn HostMapping>>> = mappings
            .iter()
            .map(|m| m.clone().map(|m| m as Arc<dyn HostMapping>))
            .collect();
        let va: Vec<u64> = ranges.iter().map(|r| r.vmr_va).collect();
        // SAFETY: each va is a live mapping of vmr_size bytes, kept alive by
        // the Arcs handed along.
        let memory = unsafe { GuestMemory::from_ranges(&ranges, &va, &keep) };
        let mut vcpus = Vec::with_capacity(vcp.vcp_ncpus);
        for id in 0..vcp.vcp_ncpus as u32 {
            vcpus.push(Vcpu::new(&fd, id, &self.cpuid)?);
        }
        let id = {
            let mut idx = self.vm_idx.lock().unwrap();
            *idx += 1;
            *idx
        };
        let vm = Arc::new(Vm {
            id,
            name,
            creator_pid: std::process::id() as i32,
            fd,
            ranges: ranges.clone(),
            memfds,
            mappings,
            memory,
            memory_size,
            vcpus,
            flavour: AtomicU8::new(flavour_code(self.flavour)),
            dying: AtomicBool::new(false),
            pvclock: Mutex::new((0, 0)),
        });
        self.vms.write().unwrap().insert(id, vm);
        vcp.vcp_id = id;
        vcp.vcp_memranges[..n].copy_from_slice(&ranges);
        Ok(())
    }

    pub fn run(&self, vrp: &mut vm_run_params) -> Result<()> {
        let vm = self.find("VMM_IOC_RUN", vrp.vrp_vm_id)?;
        let vcpu = vm.vcpu("VMM_IOC_RUN", vrp.vrp_vcpu_id)?;
        if vrp.vrp_exit.is_null() {
            return Err(VmmError::with_detail(
                "VMM_IOC_RUN",
                libc::EFAULT,
                "no exit record",
            ));
        }
        // SAFETY: the safe handle set vrp_exit from a `&mut vm_exit` that it
        // holds for the duration of this call.
        let exit = unsafe { &mut *vrp.vrp_exit };
        vcpu.run(&vm, vrp, exit)
    }

    pub fn info(&self) -> Result<Vec<vm_info_result>> {
        let vms = self.vms.read().unwrap();
        Ok(vms
            .values()
            .filter(|vm| !vm.dying.load(Ordering::Acquire))
            .map(|vm| {
                let mut r = vm_info_result {
                    vir_memory_size: vm.memory_size,
                    vir_used_size: vm.used_size(),
                    vir_ncpus: vm.vcpus.len(),
                    vir_creator_pid: vm.creator_pid,
                    vir_id: vm.id,
                    ..Default::default()
                };
                for (i, v) in vm.vcpus.iter().enumerate() {
                    r.vir_vcpu_state[i] = v.state();
                }
                for (d, s) in r
                    .vir_name
                    .iter_mut()
                    .zip(vm.name.bytes().take(VMM_MAX_NAME_LEN as usize - 1))
                {
                    *d = s as _;
                }
                r
            })
            .collect())
    }

    pub fn terminate(&self, vtp: &vm_terminate_params) -> Result<()> {
        let vm = self.find("VMM_IOC_TERM", vtp.vtp_vm_id)?;
        if vm.dying.swap(true, Ordering::AcqRel) {
            return Err(VmmError::new("VMM_IOC_TERM", libc::EBUSY));
        }
        // A vCPU inside VMM_IOC_RUN leaves with VM_EXIT_TERMINATED.
        for v in &vm.vcpus {
            v.request_terminate();
        }
        self.vms.write().unwrap().remove(&vtp.vtp_vm_id);
        Ok(())
    }

    pub fn resetcpu(&self, vrp: &vm_resetcpu_params) -> Result<()> {
        let vm = self.find("VMM_IOC_RESETCPU", vrp.vrp_vm_id)?;
        vm.vcpu("VMM_IOC_RESETCPU", vrp.vrp_vcpu_id)?
            .reset(&vrp.vrp_init_state)
    }

    pub fn intr(&self, vip: &vm_intr_params) -> Result<()> {
        let vm = self.find("VMM_IOC_INTR", vip.vip_vm_id)?;
        vm.vcpu("VMM_IOC_INTR", vip.vip_vcpu_id)?
            .intr(vip.vip_intr != 0);
        Ok(())
    }

    pub fn readregs(&self, vrwp: &mut vm_rwregs_params) -> Result<()> {
        let vm = self.find("VMM_IOC_READREGS", vrwp.vrwp_vm_id)?;
        let mask = vrwp.vrwp_mask;
        vm.vcpu("VMM_IOC_READREGS", vrwp.vrwp_vcpu_id)?
            .readregs(mask, &mut vrwp.vrwp_regs)
    }

    pub fn writeregs(&self, vrwp: &vm_rwregs_params) -> Result<()> {
        let vm = self.find("VMM_IOC_WRITEREGS", vrwp.vrwp_vm_id)?;
        vm.vcpu("VMM_IOC_WRITEREGS", vrwp.vrwp_vcpu_id)?
            .writeregs(vrwp.vrwp_mask, &vrwp.vrwp_regs)
    }

    pub fn readvmparams(&self, vpp: &mut vm_rwvmparams_params) -> Result<()> {
        let vm = self.find("VMM_IOC_READVMPARAMS", vpp.vpp_vm_id)?;
        vm.vcpu("VMM_IOC_READVMPARAMS", vpp.vpp_vcpu_id)?;
        let (gpa, version) = *vm.pvclock.lock().unwrap();
        if vpp.vpp_mask & VM_RWVMPARAMS_PVCLOCK_SYSTEM_GPA != 0 {
            vpp.vpp_pvclock_system_gpa = gpa;
        }
        if vpp.vpp_mask & VM_RWVMPARAMS_PVCLOCK_VERSION != 0 {
            vpp.vpp_pvclock_version = version;
        }
        Ok(())
    }

    pub fn writevmparams(&self, vpp: &vm_rwvmparams_params) -> Result<()> {
        let vm = self.find("VMM_IOC_WRITEVMPARAMS", vpp.vpp_vm_id)?;
        vm.vcpu("VMM_IOC_WRITEVMPARAMS", vpp.vpp_vcpu_id)?;
        let mut p = vm.pvclock.lock().unwrap();
        if vpp.vpp_mask & VM_RWVMPARAMS_PVCLOCK_SYSTEM_GPA != 0 {
            p.0 = vpp.vpp_pvclock_system_gpa;
        }
        if vpp.vpp_mask & VM_RWVMPARAMS_PVCLOCK_VERSION != 0 {
            p.1 = vpp.vpp_pvclock_version;
        }
        Ok(())
    }

    pub fn sharemem(&self, vsp: &mut vm_sharemem_params) -> Result<GuestMemory> {
        const OP: &str = "VMM_IOC_SHAREMEM";
        let (ranges, memfds) = match self.find(OP, vsp.vsp_vm_id) {
            Ok(vm) => (vm.ranges.clone(), vm.memfds.clone()),
            Err(e) => match self.adopted.read().unwrap().get(&vsp.vsp_vm_id) {
                Some(a) => (a.ranges.clone(), a.memfds.clone()),
                None => return Err(e),
            },
        };
        let n = ranges.len();
        if vsp.vsp_nmemranges != n {
            return Err(VmmError::with_detail(
                OP,
                libc::EINVAL,
                format!("{} ranges, vm has {n}", vsp.vsp_nmemranges),
            ));
        }
        for (i, (want, have)) in vsp.vsp_memranges[..n].iter().zip(&ranges).enumerate() {
            if want.vmr_type != have.vmr_type
                || want.vmr_gpa != have.vmr_gpa
                || want.vmr_size != have.vmr_size
            {
                return Err(VmmError::with_detail(
                    OP,
                    libc::EINVAL,
                    format!("range {i} differs from the vm's"),
                ));
            }
            if vsp.vsp_va[i] != 0 {
                return Err(VmmError::with_detail(
                    OP,
                    libc::EINVAL,
                    format!("vsp_va[{i}] is not 0"),
                ));
            }
        }
        let mut keep: Vec<Option<Arc<dyn HostMapping>>> = Vec::with_capacity(n);
        for (i, mem) in memfds.iter().enumerate() {
            match mem {
                Some(mem) => {
                    let map = Mapping::new(mem, OP)?;
                    vsp.vsp_va[i] = map.addr as u64;
                    keep.push(Some(map as Arc<dyn HostMapping>));
                }
                None => keep.push(None),
            }
        }
        // SAFETY: each vsp_va is a fresh shared mapping of the range's memfd,
        // kept alive by `keep`.
        Ok(unsafe { GuestMemory::from_ranges(&vsp.vsp_memranges[..n], &vsp.vsp_va[..n], &keep) })
    }

    pub fn memory_fds(&self, vm_id: u32) -> Result<Vec<Option<OwnedFd>>> {
        const OP: &str = "memory fds";
        let vm = self.find(OP, vm_id)?;
        vm.memfds
            .iter()
            .map(|m| match m {
                Some(m) => m.fd.try_clone().map(Some).map_err(|e| {
                    VmmError::with_detail(OP, e.raw_os_error().unwrap_or(libc::EIO), "dup")
                }),
                None => Ok(None),
            })
            .collect()
    }

    pub fn adopt_memory(
        &self,
        vm_id: u32,
        ranges: &[vm_mem_range],
        fds: Vec<Option<OwnedFd>>,
    ) -> Result<()> {
        const OP: &str = "adopt memory";
        if ranges.len() != fds.len()
            || ranges.is_empty()
            || ranges.len() > VMM_MAX_MEM_RANGES as usize
        {
            return Err(VmmError::with_detail(
                OP,
                libc::EINVAL,
                format!("{} ranges, {} descriptors", ranges.len(), fds.len()),
            ));
        }
        let mut memfds = Vec::with_capacity(fds.len());
        for (i, (r, fd)) in ranges.iter().zip(fds).enumerate() {
            let mmio = r.vmr_type == VM_MEM_MMIO as i32;
            match (fd, mmio) {
                (Some(fd), false) => memfds.push(Some(MemFd::adopt(fd, r.vmr_size, OP)?)),
                (None, true) => memfds.push(None),
                _ => {
                    return Err(VmmError::with_detail(
                        OP,
                        libc::EINVAL,
                        format!("range {i}: descriptor does not match its type"),
                    ))
                }
            }
        }
        self.adopted.write().unwrap().insert(
            vm_id,
            Adopted {
                ranges: ranges.to_vec(),
                memfds,
            },
        );
        Ok(())
    }

    pub fn guest_memory(&self, vm_id: u32) -> Result<GuestMemory> {
        Ok(self.find("guest memory", vm_id)?.memory.clone())
    }

    /// An eventfd, non-blocking: KVM_IOEVENTFD signals it.
    pub fn queue_notify_fd(&self) -> Result<OwnedFd> {
        let ev = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
            .map_err(|e| io_error("eventfd", &e))?;
        // SAFETY: into_raw_fd gives up the EventFd's descriptor, which
        // nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(ev.into_raw_fd()) })
    }

    /// KVM_IOEVENTFD for a 2-byte PIO write of `queue` to `port`
    /// (`attach`), or its removal.
    pub fn queue_notify(
        &self,
        vm_id: u32,
        port: u16,
        queue: u16,
        fd: std::os::fd::BorrowedFd<'_>,
        attach: bool,
    ) -> Result<()> {
        const OP: &str = "KVM_IOEVENTFD";
        let vm = self.find(OP, vm_id)?;
        // kvm-ioctls takes an EventFd: one over a duplicate, so that the
        // caller's descriptor stays the caller's (KVM holds the eventfd
        // itself, not a descriptor, from the ioctl on).
        let dup = fd.try_clone_to_owned().map_err(|e| io_error(OP, &e))?;
        // SAFETY: `dup` is a descriptor we own; the EventFd takes it over
        // and closes it when dropped.
        let ev = unsafe { EventFd::from_raw_fd(dup.into_raw_fd()) };
        let addr = IoEventAddress::Pio(u64::from(port));
        let r = if attach {
            vm.fd.register_ioevent(&ev, &addr, queue)
        } else {
            vm.fd.unregister_ioevent(&ev, &addr, queue)
        };
        r.map_err(|e| {
            VmmError::with_detail(
                OP,
                e.errno(),
                format!("vm {vm_id} port 0x{port:x} queue {queue}"),
            )
        })
    }

    pub fn set_exit_flavour(&self, vm_id: u32, flavour: ExitFlavour) -> Result<()> {
        let vm = self.find("set exit flavour", vm_id)?;
        vm.flavour.store(flavour_code(flavour), Ordering::Relaxed);
        Ok(())
    }
}

impl Vm {
    /// Resident guest pages, as vmm(4) reports `pmap_resident_count`.
    fn used_size(&self) -> usize {
        let mut used = 0;
        for m in self.mappings.iter().flatten() {
            let pages = m.size.div_ceil(4096);
            let mut vec = vec![0u8; pages];
            // SAFETY: mincore over a live mapping we own, result vector sized
            // one byte per page.
            let r = unsafe { libc::mincore(m.addr as *mut libc::c_void, m.size, vec.as_mut_ptr()) };
            if r == 0 {
                used += vec.iter().filter(|&&b| b & 1 != 0).count() * 4096;
            }
        }
        used
    }
}
