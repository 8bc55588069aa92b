//! The parent's VM registry (vmd.c's `vm_register`, `vm_instance`,
//! `vm_checkperm`, `vm_checkaccess`, `vm_claimid`, `vm_stop`, and the
//! owner checks of `vmd_dispatch_control`): what VMs vmd knows, their
//! ids, owners and states.  No I/O but the group lookups of
//! `vm_checkperm`, so that the rules can be tested without a daemon.
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use crate::config;
use vmd_proto::config::{BootDevice, VMOP_CREATE_CDROM, VMOP_CREATE_CPU, VMOP_CREATE_DISK};
use vmd_proto::config::{VMM_MAX_NAME_LEN, VM_MAX_NICS_PER_VM};
use vmd_proto::config::{VMOP_CREATE_INSTANCE, VMOP_CREATE_KERNEL, VMOP_CREATE_MEMORY};
use vmd_proto::config::{VMOP_CREATE_NETWORK, VM_DEFAULT_MEMORY, VM_MAX_DISKS_PER_VM};
use vmd_proto::msg::*;

/// vmd answers an instance whose name is taken with EPROCLIM; Linux has
/// no such errno, EEXIST says the same.
#[cfg(any(
    target_os = "openbsd",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "macos"
))]
const EPROCLIM: i32 = libc::EPROCLIM;
#[cfg(not(any(
    target_os = "openbsd",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "macos"
)))]
const EPROCLIM: i32 = libc::EEXIST;

/// `VMM_MAX_VCPUS_PER_VM`.
pub const VMM_MAX_VCPUS_PER_VM: u32 = 64;

/// A VM's console: the pty pair, kept across reboots.
#[derive(Debug)]
pub struct Tty {
    pub master: OwnedFd,
    /// Held open so that the console keeps its settings and its input
    /// while no one has it open.
    pub slave: OwnedFd,
    pub name: String,
}

/// `struct vmd_vm`.
#[derive(Debug)]
pub struct Vm {
    /// vmd's id (`vm_vmid`).
    pub id: u32,
    pub params: VmopCreateParams,
    pub ncpus_config: u32,
    /// `VM_STATE_*`.
    pub state: u32,
    /// The VM process, when running.
    pub pid: i32,
    /// The user who started it (`vm_uid`).
    pub uid: u32,
    /// The client waiting for the start response, or [`super::NO_PEER`].
    pub peerid: u32,
    /// The boot image given with the request (a client's fd), kept for
    /// restarts.
    pub kernel: Option<OwnedFd>,
    /// `boot` from vm.conf.
    pub kernel_path: Option<String>,
    pub from_config: bool,
    pub tty: Option<Tty>,
    /// The disk images opened for the running VM, locked when writable.
    pub disk_files: Vec<std::fs::File>,
    /// The taps of the running VM, by NIC (`vif_name`): what the parent
    /// opened, named as the system named them.
    pub ifnames: Vec<String>,
    pub start_tv: Option<Instant>,
    pub start_limit: u32,
}

impl Vm {
    pub fn running(&self) -> bool {
        self.state & VM_STATE_RUNNING != 0
    }
}

/// Why `register` did not add a VM.
#[derive(Debug, PartialEq, Eq)]
pub enum RegisterError {
    /// EALREADY: a VM of that name or id exists (its index).
    Exists(usize),
    /// Any other errno or `VMD_*` code.
    Failed(i32),
}

#[derive(Debug, Default)]
pub struct Registry {
    pub vms: Vec<Vm>,
    /// `vmd_known`: (name, uid) → id, so a VM keeps its id across removal.
    known: Vec<(String, u32, u32)>,
    nvm: u32,
}

/// Group membership for `vm_checkperm` (getpwuid/getgrgid).
pub trait Groups {
    fn primary_gid(&self, uid: u32) -> Option<u32>;
    fn is_member(&self, uid: u32, gid: u32) -> bool;
}

pub struct SystemGroups;

impl Groups for SystemGroups {
    fn primary_gid(&self, uid: u32) -> Option<u32> {
        let u = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok()??;
        Some(u.gid.as_raw())
    }
    fn is_member(&self, uid: u32, gid: u32) -> bool {
        let Ok(Some(u)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) else {
            return false;
        };
        let Ok(Some(g)) = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)) else {
            return false;
        };
        g.mem.contains(&u.name)
    }
}

/// `vm_checkperm`: may `uid` act on `vm` (or, without a VM, on what `vmo`
/// owns)?
pub fn checkperm(vm: Option<&Vm>, vmo: Option<&VmopOwner>, uid: u32, groups: &dyn Groups) -> bool {
    if uid == 0 {
        return true;
    }
    let Some(vmo) = vmo else {
        return false;
    };
    match vm {
        None if vmo.uid == uid => return true,
        Some(vm) if (vm.running() && vm.uid == uid) || (!vm.running() && vmo.uid == uid) => {
            return true
        }
        _ => {}
    }
    if let Some(gid) = vmo.gid {
        match groups.primary_gid(uid) {
            None => return false,
            Some(g) if g == gid => return true,
            _ => {}
        }
        if groups.is_member(uid, gid) {
            return true;
        }
    }
    false
}

/// What `vm_checkaccess` looks at of a file (its `fstat`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileAccess {
    pub regular: bool,
    /// Permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl FileAccess {
    pub fn of(m: &std::fs::Metadata) -> FileAccess {
        use std::os::unix::fs::MetadataExt;
        FileAccess {
            regular: m.is_file(),
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
        }
    }
}

/// Read access for [`checkaccess`] (`R_OK`).
pub const ACCESS_READ: u32 = 4;
/// Write access (`W_OK`).
pub const ACCESS_WRITE: u32 = 2;

/// `vm_checkaccess`: may `uid` use a file vmd opened for it, with
/// `amode` ([`ACCESS_READ`], [`ACCESS_WRITE`])?  Only regular files are
/// used at all; `check` (the request's `checkaccess` bit for that kind of
/// file) false or root: any; otherwise the other, then the user, then the
/// group bits decide, as access(2) would for `uid`.
pub fn checkaccess(f: &FileAccess, check: bool, uid: u32, amode: u32, groups: &dyn Groups) -> bool {
    if !f.regular {
        return false;
    }
    if uid == 0 || !check {
        return true;
    }
    let bits = |w: u32, r: u32| {
        (if amode & ACCESS_WRITE != 0 { w } else { 0 })
            | (if amode & ACCESS_READ != 0 { r } else { 0 })
    };
    let other = bits(0o002, 0o004);
    if f.mode & other == other {
        return true;
    }
    let user = bits(0o200, 0o400);
    if uid == f.uid && f.mode & user == user {
        return true;
    }
    let group = bits(0o020, 0o040);
    if f.mode & group != group {
        return false;
    }
    match groups.primary_gid(uid) {
        None => false,
        Some(g) if g == f.gid => true,
        Some(_) => groups.is_member(uid, f.gid),
    }
}

fn checkinsflag(parent: &VmopCreateParams, flag: u32, uid: u32) -> bool {
    uid == 0 || parent.insflags & flag != 0
}

/// vmd's VM name rule.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < VMM_MAX_NAME_LEN
        && !name.starts_with(['-', '.', '_'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    pub fn by_id(&self, id: u32) -> Option<usize> {
        if id == 0 {
            return None;
        }
        self.vms.iter().position(|v| v.id == id)
    }

    pub fn by_name(&self, name: &str) -> Option<usize> {
        self.vms.iter().position(|v| v.params.name == name)
    }

    pub fn by_pid(&self, pid: i32) -> Option<usize> {
        self.vms.iter().position(|v| v.pid == pid && pid > 0)
    }

    /// A VM named by a `vmop_id` (id 0: by name).
    pub fn lookup(&self, vid: &VmopId) -> Option<usize> {
        if vid.id == 0 {
            self.by_name(&vid.name)
        } else {
            self.by_id(vid.id)
        }
    }

    fn claimid(&mut self, name: &str, uid: u32) -> Option<u32> {
        if let Some((_, _, id)) = self.known.iter().find(|(n, u, _)| n == name && *u == uid) {
            return Some(*id);
        }
        self.nvm = self.nvm.checked_add(1)?;
        self.known.push((name.to_string(), uid, self.nvm));
        Some(self.nvm)
    }

    /// `vm_instance`: fills an instance's parameters from its parent.
    /// `kernel_given`: the request came with a boot image descriptor.
    fn instance(
        &self,
        vmc: &mut VmopCreateParams,
        kernel_given: bool,
        uid: u32,
        groups: &dyn Groups,
    ) -> Result<Option<usize>, i32> {
        let Some(parent_name) = vmc
            .instance
            .clone()
            .filter(|_| vmc.flags & VMOP_CREATE_INSTANCE != 0)
        else {
            return Ok(None);
        };
        let pi = self.by_name(&parent_name).ok_or(VMD_PARENT_INVALID)?;
        let parent = &self.vms[pi].params;
        let name = vmc.name.clone();
        if !checkperm(None, Some(&parent.insowner), uid, groups) {
            log::warn!("vm \"{name}\" no permission to create vm instance");
            return Err(libc::ENAMETOOLONG);
        }
        if self.by_name(&name).is_some() || self.by_id(vmc.id).is_some() {
            return Err(EPROCLIM);
        }
        if vmc.ncpus == 0 {
            vmc.ncpus = parent.ncpus;
        }
        if !checkinsflag(parent, VMOP_CREATE_CPU, uid) && vmc.ncpus != parent.ncpus {
            log::warn!("vm \"{name}\" no permission to set cpus");
            return Err(libc::EPERM);
        }
        if vmc.memory == 0 {
            vmc.memory = parent.memory;
        }
        if !checkinsflag(parent, VMOP_CREATE_MEMORY, uid) && vmc.memory != parent.memory {
            log::warn!("vm \"{name}\" no permission to set memory");
            return Err(libc::EPERM);
        }
        if !checkinsflag(parent, VMOP_CREATE_DISK, uid) && !vmc.disks.is_empty() {
            log::warn!("vm \"{name}\" no permission to set disks");
            return Err(libc::EPERM);
        }
        for d in &vmc.disks {
            if parent.disks.iter().any(|p| p.path == d.path) {
                log::warn!("vm \"{name}\" disk {} cannot be reused", d.path);
                return Err(libc::EBUSY);
            }
        }
        if !vmc.disks.is_empty() {
            vmc.checkaccess |= VMOP_CREATE_DISK;
        }
        if !vmc.interfaces.is_empty()
            && !checkinsflag(parent, VMOP_CREATE_NETWORK, uid)
            && vmc.interfaces.len() != parent.interfaces.len()
        {
            log::warn!("vm \"{name}\" no permission to set interfaces");
            return Err(libc::EPERM);
        }
        for (i, pif) in parent.interfaces.iter().enumerate() {
            if i >= vmc.interfaces.len() {
                vmc.interfaces.push(pif.clone());
            }
        }
        // As vmd: a boot image descriptor, or a parent that boots a
        // configured image (which the instance does not inherit: without
        // an image of its own it boots vmm-bios), needs `allow instance
        // boot`, whatever VMOP_CREATE_KERNEL says.
        if kernel_given || self.vms[pi].kernel_path.is_some() {
            if !checkinsflag(parent, VMOP_CREATE_KERNEL, uid) {
                log::warn!("vm \"{name}\" no permission to set boot image");
                return Err(libc::EPERM);
            }
            vmc.checkaccess |= VMOP_CREATE_KERNEL;
        }
        if vmc.cdrom.is_some() {
            if !checkinsflag(parent, VMOP_CREATE_CDROM, uid) {
                log::warn!("vm \"{name}\" no permission to set cdrom");
                return Err(libc::EPERM);
            }
            vmc.checkaccess |= VMOP_CREATE_CDROM;
        } else {
            vmc.cdrom = parent.cdrom.clone();
        }
        if vmc.owner.uid == 0 {
            vmc.owner.uid = parent.owner.uid;
        } else if vmc.owner.uid != uid && vmc.owner.uid != parent.owner.uid {
            log::warn!("vm \"{name}\" user mismatch");
            return Err(libc::EPERM);
        }
        if vmc.owner.gid.is_none() || vmc.owner.gid == Some(0) {
            vmc.owner.gid = parent.owner.gid;
        } else if vmc.owner.gid != parent.owner.gid {
            log::warn!("vm \"{name}\" group mismatch");
            return Err(libc::EPERM);
        }
        if vmc.insflags != 0 {
            log::warn!("vm \"{name}\" cannot change instance permissions");
            return Err(libc::EPERM);
        }
        if parent.insflags & VMOP_CREATE_INSTANCE != 0 {
            vmc.insowner = parent.insowner;
            vmc.insflags = parent.insflags;
        } else {
            vmc.insowner = VmopOwner::default();
            vmc.insflags = 0;
        }
        vmc.flags &= !VMOP_CREATE_INSTANCE;
        Ok(Some(pi))
    }

    /// `vm_register`: adds a VM for `uid`, or says why not.  An existing
    /// VM of that name or id is `Exists` (if `uid` may use it).
    pub fn register(
        &mut self,
        vmc: VmopCreateParams,
        kernel: Option<OwnedFd>,
        uid: u32,
        groups: &dyn Groups,
    ) -> Result<usize, (RegisterError, Option<OwnedFd>)> {
        self.register_as(vmc, kernel, uid, groups, false)
    }

    /// [`Registry::register`] of a vm.conf `vm` block (by root).  A block
    /// needs no boot image, disk or CD-ROM: without `boot` the VM starts
    /// the default BIOS (vm.conf.5), and a template's instances bring
    /// their own disks; `vmd -n` passes such a file, so vmd must start
    /// with it.
    pub fn register_config(
        &mut self,
        vmc: VmopCreateParams,
        groups: &dyn Groups,
    ) -> Result<usize, (RegisterError, Option<OwnedFd>)> {
        self.register_as(vmc, None, 0, groups, true)
    }

    fn register_as(
        &mut self,
        mut vmc: VmopCreateParams,
        kernel: Option<OwnedFd>,
        uid: u32,
        groups: &dyn Groups,
        from_config: bool,
    ) -> Result<usize, (RegisterError, Option<OwnedFd>)> {
        // Ids come from vmd alone (vmd's vm_register(..., 0, ...)): an
        // id in a request names an existing VM, it never picks the id of
        // a new one, which would squat the id vmd gives the next VM.
        if vmc.id != 0 && self.by_id(vmc.id).is_none() {
            log::warn!("vm_register: no vm with id {}", vmc.id);
            return Err((RegisterError::Failed(libc::ENOENT), kernel));
        }
        let parent = match self.instance(&mut vmc, kernel.is_some(), uid, groups) {
            Ok(p) => p,
            Err(e) => return Err((RegisterError::Failed(e), kernel)),
        };
        if let Some(i) = self.by_name(&vmc.name).or_else(|| self.by_id(vmc.id)) {
            let vm = &self.vms[i];
            if !checkperm(Some(vm), Some(&vm.params.owner), uid, groups) {
                return Err((RegisterError::Failed(libc::EPERM), kernel));
            }
            return Err((RegisterError::Exists(i), kernel));
        }
        let vmo = parent.map(|p| self.vms[p].params.insowner);
        let fail = |e: i32, kernel| Err((RegisterError::Failed(e), kernel));
        if !checkperm(None, vmo.as_ref(), uid, groups) {
            log::warn!("permission denied");
            return fail(libc::EPERM, kernel);
        }
        if vmc.flags == 0 && !from_config {
            log::warn!("invalid configuration, no devices");
            return fail(VMD_DISK_MISSING, kernel);
        }
        if vmc.ncpus == 0 {
            vmc.ncpus = 1;
        }
        if vmc.memory == 0 {
            vmc.memory = VM_DEFAULT_MEMORY;
        }
        let msg = if vmc.ncpus > VMM_MAX_VCPUS_PER_VM {
            Some("invalid number of CPUs")
        } else if vmc.disks.len() > VM_MAX_DISKS_PER_VM {
            Some("invalid number of disks")
        } else if vmc.interfaces.len() > VM_MAX_NICS_PER_VM {
            Some("invalid number of interfaces")
        } else if !from_config
            && vmc.flags & VMOP_CREATE_KERNEL == 0
            && vmc.disks.is_empty()
            && vmc.cdrom.is_none()
        {
            Some("no kernel or disk/cdrom specified")
        } else if !valid_name(&vmc.name) {
            Some("invalid VM name")
        } else {
            None
        };
        if let Some(m) = msg {
            log::warn!("{m}");
            return fail(libc::EINVAL, kernel);
        }
        for (i, nic) in vmc.interfaces.iter_mut().enumerate() {
            if nic.lladdr == [0; 6] {
                let r: [u8; 2] = rand_bytes();
                nic.lladdr = [0xfe, 0xe1, 0xbb, 0xd0 | ((i as u8 + 1) & 0xf), r[0], r[1]];
            }
        }
        let id = match self.claimid(&vmc.name, uid) {
            Some(id) => id,
            None => {
                log::warn!("too many vms");
                return fail(libc::EINVAL, kernel);
            }
        };
        log::debug!("vm_register: registering vm {id}");
        vmc.id = id;
        self.vms.push(Vm {
            id,
            ncpus_config: vmc.ncpus,
            params: vmc,
            state: 0,
            pid: -1,
            uid: 0,
            peerid: super::NO_PEER,
            kernel,
            // Only vm.conf's `boot` names a file vmd opens itself (the
            // parent sets it); a path in a request is for messages.
            kernel_path: None,
            from_config: false,
            tty: None,
            disk_files: Vec::new(),
            ifnames: Vec::new(),
            start_tv: None,
            start_limit: 0,
        });
        Ok(self.vms.len() - 1)
    }

    /// The checks of `vmd_dispatch_control` for `TERMINATE_VM_REQUEST` and
    /// `WAIT_VM_REQUEST`: the result to answer (0: go ahead) and the VM id
    /// to answer it with.  Only the VM's owner (the user who started it,
    /// while it runs), a member of its owner group, or root may stop it.
    pub fn check_terminate(&self, vid: &VmopId, groups: &dyn Groups) -> (i32, u32) {
        let Some(i) = self.lookup(vid) else {
            return (libc::ENOENT, vid.id);
        };
        let vm = &self.vms[i];
        let res = if vm.state & VM_STATE_SHUTDOWN != 0 && vid.flags & VMOP_FORCE == 0 {
            libc::EALREADY
        } else if !vm.running() {
            libc::EINVAL
        } else if !checkperm(Some(vm), Some(&vm.params.owner), vid.uid, groups) {
            libc::EPERM
        } else {
            0
        };
        (res, vm.id)
    }

    /// The checks of `vmd_dispatch_control` for `PAUSE_VM` and
    /// `UNPAUSE_VM`: the VM's index, or the errno to answer.  The same
    /// owners as for [`Registry::check_terminate`] may pause a VM.
    pub fn check_pause(&self, vid: &VmopId, groups: &dyn Groups) -> Result<usize, i32> {
        let i = self.lookup(vid).ok_or(libc::ENOENT)?;
        let vm = &self.vms[i];
        if !checkperm(Some(vm), Some(&vm.params.owner), vid.uid, groups) {
            return Err(libc::EPERM);
        }
        if !vm.running() {
            return Err(libc::EINVAL);
        }
        Ok(i)
    }

    /// `vm_stop`: the VM is no longer running; the tty stays when
    /// `keeptty` (a reboot).
    pub fn stop(&mut self, i: usize, keeptty: bool) {
        let vm = &mut self.vms[i];
        log::debug!(
            "vm_stop: parent stopping vm {}{}",
            vm.id,
            if keeptty { ", keeping tty open" } else { "" }
        );
        vm.state &= !(VM_STATE_RUNNING | VM_STATE_SHUTDOWN | VM_STATE_PAUSED);
        vm.params.ncpus = vm.ncpus_config;
        vm.pid = -1;
        // Unlocked now: a restart opens and locks them again.
        vm.disk_files.clear();
        vm.ifnames.clear();
        if !keeptty {
            vm.tty = None;
            vm.uid = 0;
            // A client's boot image serves one life of the VM.
            vm.kernel = None;
        }
    }

    /// `vm_remove`.
    pub fn remove(&mut self, i: usize) -> Vm {
        log::debug!(
            "vm_remove: parent removing vm {} from running config",
            self.vms[i].id
        );
        self.stop(i, false);
        self.vms.remove(i)
    }

    /// `vm_terminate`: configured VMs stay, known but stopped.
    pub fn terminate(&mut self, i: usize) {
        if self.vms[i].from_config {
            self.stop(i, false);
        } else {
            self.remove(i);
        }
    }

    /// The restart rate limit of `config_setvm`: false when the VM
    /// restarted more than [`super::VM_START_RATE_LIMIT`] times within
    /// [`super::VM_START_RATE_SEC`] seconds.
    pub fn rate_ok(&mut self, i: usize, now: Instant) -> bool {
        let vm = &mut self.vms[i];
        if let Some(t) = vm.start_tv {
            if now.duration_since(t) < Duration::from_secs(super::VM_START_RATE_SEC) {
                vm.start_limit += 1;
                if vm.start_limit > super::VM_START_RATE_LIMIT {
                    return false;
                }
            } else {
                vm.start_limit = 0;
            }
        }
        vm.start_tv = Some(now);
        true
    }

    /// One `vmop_info_result` per VM.
    pub fn info(&self, used_size: impl Fn(i32) -> u64) -> Vec<VmopInfoResult> {
        self.vms
            .iter()
            .map(|vm| {
                let running = vm.running() && vm.pid > 0;
                VmopInfoResult {
                    memory_size: vm.params.memory,
                    used_size: if running { used_size(vm.pid) } else { 0 },
                    ncpus: vm.params.ncpus,
                    vcpu_state: Vec::new(),
                    creator_pid: if running { vm.pid } else { 0 },
                    id: vm.id,
                    name: vm.params.name.clone(),
                    ttyname: match (&vm.tty, running) {
                        (Some(t), true) => t.name.clone(),
                        _ => String::new(),
                    },
                    uid: if running { vm.uid } else { vm.params.owner.uid },
                    gid: vm.params.owner.gid,
                    state: vm.state,
                }
            })
            .collect()
    }
}

/// A `vm` block as `vmop_create_params`.
pub fn params_from_config(vm: &config::Vm) -> VmopCreateParams {
    VmopCreateParams {
        id: 0,
        name: vm.name.clone(),
        owner: VmopOwner::from(vm.owner),
        flags: vm.flags,
        checkaccess: 0,
        ncpus: 1,
        memory: vm.memory,
        sev: vm.sev,
        seves: vm.seves,
        kernel: vm.boot.clone(),
        boot_device: vm.boot_device,
        disks: vm
            .disks
            .iter()
            .map(|d| VmDisk {
                path: d.path.clone(),
                format: d.format,
                bases: 0,
            })
            .collect(),
        cdrom: vm.cdrom.clone(),
        interfaces: vm.interfaces.clone(),
        instance: vm.instance_of.clone(),
        insowner: VmopOwner::from(vm.instance_owner),
        insflags: vm.instance_flags,
    }
}

/// Whether a VM that reset itself is started again (not with a one-shot
/// boot device, as vmd).
pub fn restarts_on_reboot(p: &VmopCreateParams) -> bool {
    p.boot_device == BootDevice::Auto
}

fn rand_bytes() -> [u8; 2] {
    let mut b = [0u8; 2];
    use std::io::Read;
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoGroups;
    impl Groups for NoGroups {
        fn primary_gid(&self, uid: u32) -> Option<u32> {
            Some(uid + 1000)
        }
        fn is_member(&self, uid: u32, gid: u32) -> bool {
            uid == 7 && gid == 70
        }
    }

    fn params(name: &str) -> VmopCreateParams {
        VmopCreateParams {
            name: name.into(),
            flags: VMOP_CREATE_KERNEL,
            ..Default::default()
        }
    }

    #[test]
    fn daemon_registry_register_rules() {
        let mut r = Registry::new();
        let i = r.register(params("a"), None, 0, &NoGroups).unwrap();
        let a = &r.vms[i];
        assert_eq!(
            (a.id, a.params.ncpus, a.params.memory),
            (1, 1, VM_DEFAULT_MEMORY)
        );
        assert_eq!(a.kernel_path, None);
        assert!(matches!(
            r.register(params("a"), None, 0, &NoGroups),
            Err((RegisterError::Exists(0), None))
        ));
        // Non-root: not someone else's VM, no new VMs without an instance.
        assert!(matches!(
            r.register(params("a"), None, 5, &NoGroups),
            Err((RegisterError::Failed(libc::EPERM), _))
        ));
        assert!(matches!(
            r.register(params("b"), None, 5, &NoGroups),
            Err((RegisterError::Failed(libc::EPERM), _))
        ));
        let mut bad = |p: VmopCreateParams| match r.register(p, None, 0, &NoGroups) {
            Err((RegisterError::Failed(e), _)) => e,
            other => panic!("{other:?}"),
        };
        let none = VmopCreateParams {
            name: "c".into(),
            ..Default::default()
        };
        assert_eq!(bad(none.clone()), VMD_DISK_MISSING);
        assert_eq!(
            bad(VmopCreateParams {
                flags: VMOP_CREATE_MEMORY,
                ..none
            }),
            libc::EINVAL
        );
        for name in ["", "-x", ".x", "_x", "a b", "ä"] {
            assert_eq!(bad(params(name)), libc::EINVAL, "{name:?}");
        }
        assert!(valid_name("vm-1.test_2"));
        // Ids stay with (name, uid) across removal.
        let b = r.register(params("b"), None, 0, &NoGroups).unwrap();
        assert_eq!(r.vms[b].id, 2);
        r.remove(b);
        let b = r.register(params("b"), None, 0, &NoGroups).unwrap();
        assert_eq!(r.vms[b].id, 2);
        assert_eq!(
            r.lookup(&VmopId {
                id: 2,
                ..Default::default()
            }),
            Some(b)
        );
        assert_eq!(
            r.lookup(&VmopId {
                name: "a".into(),
                ..Default::default()
            }),
            Some(0)
        );
    }

    /// A vm.conf block with nothing to boot starts the default BIOS (a
    /// template's instances bring their own disks); a client's request
    /// with nothing is refused as vmd refuses it.
    #[test]
    fn daemon_registry_config_vm_without_devices() {
        let mut r = Registry::new();
        let bare = VmopCreateParams {
            name: "tmpl".into(),
            flags: VMOP_CREATE_MEMORY,
            memory: 64 << 20,
            ..Default::default()
        };
        let i = r.register_config(bare.clone(), &NoGroups).unwrap();
        assert_eq!(r.vms[i].params.name, "tmpl");
        let empty = VmopCreateParams {
            name: "empty".into(),
            ..Default::default()
        };
        r.register_config(empty.clone(), &NoGroups).unwrap();
        let by_client = VmopCreateParams {
            name: "other".into(),
            ..bare
        };
        assert_eq!(refused(&mut r, by_client, None), libc::EINVAL);
        let empty = VmopCreateParams {
            name: "none".into(),
            ..empty
        };
        assert_eq!(refused(&mut r, empty, None), VMD_DISK_MISSING);
    }

    /// An id in a request names an existing VM; new VMs get theirs from
    /// the registry, so a user's request cannot take the id of the VM
    /// root starts next.
    #[test]
    fn daemon_registry_ids_from_the_daemon_only() {
        let mut r = Registry::new();
        let five = VmopOwner { uid: 5, gid: None };
        let t = template(&mut r, "tmpl", five, VMOP_CREATE_DISK, None);
        assert_eq!(r.vms[t].id, 1);
        // The user asks for id 2, free so far: refused, not squatted.
        let squat = VmopCreateParams {
            id: 2,
            ..instance_of("tmpl", "squat", 5)
        };
        assert_eq!(refused(&mut r, squat, None), libc::ENOENT);
        let plain = VmopCreateParams {
            id: 7,
            ..params("seven")
        };
        assert_eq!(refused(&mut r, plain, None), libc::ENOENT);
        // Root's next VM gets 2, the user's instance 3.
        let i = r.register(params("root"), None, 0, &NoGroups).unwrap();
        assert_eq!(r.vms[i].id, 2);
        let i = r
            .register(instance_of("tmpl", "mine", 5), None, 5, &NoGroups)
            .unwrap();
        assert_eq!(r.vms[i].id, 3);
        // An existing id is that VM (vmctl start 2), whatever the name.
        let again = VmopCreateParams {
            id: 2,
            ..Default::default()
        };
        assert!(matches!(
            r.register(again, None, 0, &NoGroups),
            Err((RegisterError::Exists(1), None))
        ));
        // An instance may not take an existing id either.
        let taken = VmopCreateParams {
            id: 2,
            ..instance_of("tmpl", "other", 5)
        };
        assert_eq!(refused(&mut r, taken, None), EPROCLIM);
        assert_eq!(r.vms.len(), 3);
    }

    #[test]
    fn daemon_registry_checkperm() {
        let mut r = Registry::new();
        let mut p = params("v");
        p.owner = VmopOwner {
            uid: 5,
            gid: Some(70),
        };
        let i = r.register(p, None, 0, &NoGroups).unwrap();
        let vm = &r.vms[i];
        let o = vm.params.owner;
        assert!(checkperm(Some(vm), Some(&o), 0, &NoGroups));
        assert!(checkperm(Some(vm), Some(&o), 5, &NoGroups));
        // Member of the owner group, or with it as primary group.
        assert!(checkperm(Some(vm), Some(&o), 7, &NoGroups));
        assert!(!checkperm(Some(vm), Some(&o), 8, &NoGroups));
        let o2 = VmopOwner {
            uid: 5,
            gid: Some(1008),
        };
        assert!(checkperm(None, Some(&o2), 8, &NoGroups));
        assert!(!checkperm(None, None, 8, &NoGroups));
        // A running VM belongs to whoever started it.
        r.vms[i].state |= VM_STATE_RUNNING;
        r.vms[i].uid = 9;
        let vm = &r.vms[i];
        assert!(checkperm(Some(vm), Some(&o), 9, &NoGroups));
        assert!(!checkperm(
            Some(vm),
            Some(&VmopOwner { uid: 5, gid: None }),
            5,
            &NoGroups
        ));
    }

    #[test]
    fn daemon_registry_rate_limit() {
        let mut r = Registry::new();
        let i = r.register(params("r"), None, 0, &NoGroups).unwrap();
        let t = Instant::now();
        // The first start and three quick restarts, then no more.
        for k in 0..4 {
            assert!(r.rate_ok(i, t + Duration::from_millis(100 * k)));
        }
        assert!(!r.rate_ok(i, t + Duration::from_millis(500)));
        // After a quiet spell the count starts over.
        assert!(r.rate_ok(i, t + Duration::from_secs(20)));
        assert_eq!(r.vms[i].start_limit, 0);
    }

    /// A vm.conf VM to make instances of: 64M, one vCPU, owned by uid 5,
    /// `allow instance { <insflags>, owner <insowner> }`, `boot <boot>`.
    fn template(
        r: &mut Registry,
        name: &str,
        insowner: VmopOwner,
        insflags: u32,
        boot: Option<&str>,
    ) -> usize {
        let p = VmopCreateParams {
            memory: 64 << 20,
            ncpus: 1,
            owner: VmopOwner { uid: 5, gid: None },
            insowner,
            insflags,
            ..params(name)
        };
        let i = r.register(p, None, 0, &NoGroups).unwrap();
        // What parse_config adds.
        r.vms[i].from_config = true;
        r.vms[i].kernel_path = boot.map(String::from);
        i
    }

    fn disk(path: &str) -> VmDisk {
        VmDisk {
            path: path.into(),
            format: vmd_proto::config::DiskFormat::Raw,
            bases: 0,
        }
    }

    /// `vmctl start -t <parent> -d /u/<name>.img <name>` from `uid`, as the
    /// control process forwards it (owner stamped with the peer's uid, no
    /// group).  Disks are not inherited and an instance needs something
    /// to boot from, hence the disk.
    fn instance_of(parent: &str, name: &str, uid: u32) -> VmopCreateParams {
        VmopCreateParams {
            name: name.into(),
            flags: VMOP_CREATE_INSTANCE | VMOP_CREATE_DISK,
            ncpus: 1,
            disks: vec![disk(&format!("/u/{name}.img"))],
            instance: Some(parent.into()),
            owner: VmopOwner { uid, gid: None },
            ..Default::default()
        }
    }

    fn refused(r: &mut Registry, p: VmopCreateParams, kernel: Option<OwnedFd>) -> i32 {
        let uid = p.owner.uid;
        match r.register(p, kernel, uid, &NoGroups) {
            Err((RegisterError::Failed(e), _)) => e,
            other => panic!("not refused: {other:?}"),
        }
    }

    /// uid 5 may instantiate (`allow instance { disk, memory, instance,
    /// owner 5:70 }`), and so may a member of group 70 (uid 7).
    #[test]
    fn daemon_registry_instance_allowed() {
        let mut r = Registry::new();
        let insowner = VmopOwner {
            uid: 5,
            gid: Some(70),
        };
        let allowed = VMOP_CREATE_DISK | VMOP_CREATE_MEMORY | VMOP_CREATE_INSTANCE;
        let t = template(&mut r, "tmpl", insowner, allowed, None);
        let i = r
            .register(instance_of("tmpl", "mine", 5), None, 5, &NoGroups)
            .unwrap();
        let (vm, parent) = (&r.vms[i], &r.vms[t]);
        assert_ne!(vm.id, parent.id);
        // Memory and CPUs from the parent; the owner is the user.
        assert_eq!((vm.params.memory, vm.params.ncpus), (64 << 20, 1));
        assert_eq!(vm.params.owner, VmopOwner { uid: 5, gid: None });
        assert_eq!(vm.params.flags, VMOP_CREATE_DISK);
        // The user's disk is checked against the user's rights.
        assert_eq!(vm.params.checkaccess, VMOP_CREATE_DISK);
        // `allow instance instance`: the permissions pass on.
        assert_eq!(vm.params.insflags, allowed);
        assert_eq!(vm.params.insowner, insowner);
        assert!(!vm.from_config && vm.kernel_path.is_none());
        // A member of the instance owner group, with other memory.
        let mut p = instance_of("tmpl", "grp", 7);
        p.memory = 128 << 20;
        p.flags |= VMOP_CREATE_MEMORY;
        let i = r.register(p, None, 7, &NoGroups).unwrap();
        assert_eq!(r.vms[i].params.memory, 128 << 20);
        assert_eq!(r.vms[i].params.owner.uid, 7);
        // An instance of an instance.
        r.register(instance_of("mine", "mine2", 5), None, 5, &NoGroups)
            .unwrap();
        // Root may change anything.
        let p = VmopCreateParams {
            ncpus: 2,
            cdrom: Some("/x.iso".into()),
            ..instance_of("tmpl", "rooted", 0)
        };
        let i = r.register(p, None, 0, &NoGroups).unwrap();
        assert_eq!(r.vms[i].params.ncpus, 2);
    }

    /// What `allow instance` does not list is refused with vmd's errno.
    #[test]
    fn daemon_registry_instance_refused() {
        let mut r = Registry::new();
        let five = VmopOwner { uid: 5, gid: None };
        let allowed = VMOP_CREATE_DISK | VMOP_CREATE_MEMORY;
        let t = template(&mut r, "tmpl", five, allowed, None);
        r.vms[t].params.disks = vec![disk("/vm/tmpl.img")];
        r.vms[t].params.interfaces = vec![vmd_proto::config::Interface::default()];
        template(&mut r, "booted", five, allowed, Some("/bsd"));
        template(&mut r, "nodisk", five, VMOP_CREATE_MEMORY, None);
        let n = r.vms.len();
        let req = |f: &dyn Fn(&mut VmopCreateParams)| {
            let mut p = instance_of("tmpl", "x", 5);
            f(&mut p);
            p
        };
        // No `cpu`, `disk`, `cdrom`, `interface` permission: EPERM.
        assert_eq!(refused(&mut r, req(&|p| p.ncpus = 2), None), libc::EPERM);
        assert_eq!(
            refused(&mut r, instance_of("nodisk", "x", 5), None),
            libc::EPERM
        );
        assert_eq!(
            refused(&mut r, req(&|p| p.cdrom = Some("/x.iso".into())), None),
            libc::EPERM
        );
        assert_eq!(
            refused(
                &mut r,
                req(&|p| p.interfaces = vec![Default::default(); 2]),
                None
            ),
            libc::EPERM
        );
        // No `boot`: a boot image of one's own is refused, flag or not,
        // and so is any instance of a VM that boots a configured image.
        let image = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        assert_eq!(refused(&mut r, req(&|_| {}), Some(image())), libc::EPERM);
        assert_eq!(
            refused(&mut r, instance_of("booted", "y", 5), None),
            libc::EPERM
        );
        // Instance permissions cannot be set by the instance.
        assert_eq!(
            refused(&mut r, req(&|p| p.insflags = VMOP_CREATE_MEMORY), None),
            libc::EPERM
        );
        // Names are new (EPROCLIM); the parent exists.
        assert_eq!(
            refused(&mut r, req(&|p| p.name = "booted".into()), None),
            EPROCLIM
        );
        assert_eq!(
            refused(&mut r, instance_of("nosuch", "z", 5), None),
            VMD_PARENT_INVALID
        );
        // Nor the parent's disk, even for root: EBUSY.
        let reuse = |uid| VmopCreateParams {
            disks: vec![disk("/vm/tmpl.img")],
            ..instance_of("tmpl", "x", uid)
        };
        assert_eq!(refused(&mut r, reuse(5), None), libc::EBUSY);
        assert_eq!(refused(&mut r, reuse(0), None), libc::EBUSY);
        // An instance needs something to boot: with nothing left once
        // the instance flag is gone, VMD_DISK_MISSING as vmd.
        let bare = VmopCreateParams {
            flags: VMOP_CREATE_INSTANCE,
            disks: Vec::new(),
            ..instance_of("tmpl", "x", 5)
        };
        assert_eq!(refused(&mut r, bare, None), VMD_DISK_MISSING);
        assert_eq!(r.vms.len(), n, "a refused instance was registered");
        // What the permissions allow passes: memory, and with `boot` an
        // image of one's own (the user's descriptor, so one the user can
        // read; vmd checks only what it opens itself).
        r.vms[t].params.insflags |= VMOP_CREATE_KERNEL;
        let p = VmopCreateParams {
            memory: 32 << 20,
            ..req(&|_| {})
        };
        let i = r.register(p, Some(image()), 5, &NoGroups).unwrap();
        assert_eq!(r.vms[i].params.memory, 32 << 20);
        assert_eq!(
            r.vms[i].params.checkaccess,
            VMOP_CREATE_KERNEL | VMOP_CREATE_DISK
        );
        assert!(r.vms[i].kernel.is_some());
    }

    /// Users the instance owner does not name get vmd's ENAMETOOLONG; new
    /// VMs and other users' VMs are EPERM for anyone but root.
    #[test]
    fn daemon_registry_instance_not_allowed() {
        let mut r = Registry::new();
        let five = VmopOwner {
            uid: 5,
            gid: Some(70),
        };
        template(&mut r, "tmpl", five, VMOP_CREATE_DISK, None);
        // No `allow instance`: only root may make instances.
        template(&mut r, "plain", VmopOwner::default(), 0, None);
        r.register(instance_of("tmpl", "fives", 5), None, 5, &NoGroups)
            .unwrap();
        let n = r.vms.len();
        assert_eq!(
            refused(&mut r, instance_of("tmpl", "x", 8), None),
            libc::ENAMETOOLONG
        );
        assert_eq!(
            refused(&mut r, instance_of("plain", "x", 5), None),
            libc::ENAMETOOLONG
        );
        r.register(instance_of("plain", "byroot", 0), None, 0, &NoGroups)
            .unwrap();
        // Not an instance: "permission denied".
        let new = VmopCreateParams {
            owner: VmopOwner { uid: 5, gid: None },
            ..params("new")
        };
        assert_eq!(refused(&mut r, new, None), libc::EPERM);
        // Someone else's VM, configured or an instance.
        for name in ["tmpl", "fives"] {
            let p = VmopCreateParams {
                owner: VmopOwner { uid: 8, gid: None },
                ..params(name)
            };
            assert_eq!(refused(&mut r, p, None), libc::EPERM, "{name}");
        }
        assert_eq!(r.vms.len(), n + 1);
    }

    /// Stop and pause: the owner, a member of the owner group and root.
    #[test]
    fn daemon_registry_owner_stop_pause() {
        let mut r = Registry::new();
        let mut p = params("v");
        p.owner = VmopOwner {
            uid: 5,
            gid: Some(70),
        };
        let i = r.register(p, None, 0, &NoGroups).unwrap();
        let id = r.vms[i].id;
        let by = |uid: u32, flags: u32| VmopId {
            id: 0,
            name: "v".into(),
            uid,
            flags,
        };
        // Stopped: nothing to stop or pause, but strangers learn no more.
        assert_eq!(r.check_terminate(&by(5, 0), &NoGroups), (libc::EINVAL, id));
        assert_eq!(r.check_pause(&by(5, 0), &NoGroups), Err(libc::EINVAL));
        assert_eq!(r.check_pause(&by(8, 0), &NoGroups), Err(libc::EPERM));
        // Started for its owner, as start_vm_batch does.
        r.vms[i].state |= VM_STATE_RUNNING;
        r.vms[i].uid = 5;
        for uid in [0, 5, 7] {
            assert_eq!(r.check_terminate(&by(uid, 0), &NoGroups), (0, id), "{uid}");
            assert_eq!(r.check_pause(&by(uid, 0), &NoGroups), Ok(i), "{uid}");
        }
        assert_eq!(r.check_terminate(&by(8, 0), &NoGroups), (libc::EPERM, id));
        assert_eq!(r.check_pause(&by(8, 0), &NoGroups), Err(libc::EPERM));
        // By id too; unknown VMs are ENOENT with the id asked for.
        let by_id = VmopId {
            id,
            uid: 8,
            ..Default::default()
        };
        assert_eq!(r.check_terminate(&by_id, &NoGroups), (libc::EPERM, id));
        let none = VmopId {
            id: 99,
            uid: 5,
            ..Default::default()
        };
        assert_eq!(r.check_terminate(&none, &NoGroups), (libc::ENOENT, 99));
        assert_eq!(r.check_pause(&none, &NoGroups), Err(libc::ENOENT));
        // Stopping already: EALREADY unless forced.
        r.vms[i].state |= VM_STATE_SHUTDOWN;
        assert_eq!(
            r.check_terminate(&by(5, 0), &NoGroups),
            (libc::EALREADY, id)
        );
        assert_eq!(r.check_terminate(&by(5, VMOP_FORCE), &NoGroups), (0, id));
        // A running VM is its starter's: root started it for uid 9.
        r.vms[i].state = VM_STATE_RUNNING;
        r.vms[i].uid = 9;
        assert_eq!(r.check_terminate(&by(9, 0), &NoGroups), (0, id));
        assert_eq!(r.check_pause(&by(9, 0), &NoGroups), Ok(i));
        // The group still may; the configured owner uid no longer.
        assert_eq!(r.check_terminate(&by(7, 0), &NoGroups), (0, id));
        r.vms[i].params.owner.gid = None;
        assert_eq!(r.check_terminate(&by(5, 0), &NoGroups), (libc::EPERM, id));
    }

    #[test]
    fn daemon_registry_checkaccess() {
        let f = |mode: u32, uid: u32, gid: u32| FileAccess {
            regular: true,
            mode,
            uid,
            gid,
        };
        let (r, rw) = (ACCESS_READ, ACCESS_READ | ACCESS_WRITE);
        // Only regular files, even for root.
        let dev = FileAccess {
            regular: false,
            ..f(0o666, 0, 0)
        };
        assert!(!checkaccess(&dev, false, 0, r, &NoGroups));
        // Root, or nothing asked to check: any mode.
        assert!(checkaccess(&f(0o000, 1, 1), true, 0, rw, &NoGroups));
        assert!(checkaccess(&f(0o000, 1, 1), false, 8, rw, &NoGroups));
        // Other, user, group (primary or member) bits.
        assert!(checkaccess(&f(0o644, 1, 1), true, 8, r, &NoGroups));
        assert!(!checkaccess(&f(0o644, 1, 1), true, 8, rw, &NoGroups));
        assert!(checkaccess(&f(0o600, 8, 1), true, 8, rw, &NoGroups));
        assert!(!checkaccess(&f(0o600, 9, 1), true, 8, r, &NoGroups));
        assert!(checkaccess(&f(0o660, 9, 1008), true, 8, rw, &NoGroups));
        assert!(checkaccess(&f(0o640, 9, 70), true, 7, r, &NoGroups));
        assert!(!checkaccess(&f(0o640, 9, 70), true, 7, rw, &NoGroups));
        assert!(!checkaccess(&f(0o640, 9, 70), true, 8, r, &NoGroups));
        // The user bits are the owner's: 0o060 does not let the owner in
        // unless the group does.
        assert!(!checkaccess(&f(0o060, 8, 1), true, 8, r, &NoGroups));
    }
}
