//! The vmm process (vmm.c): starts one VM process per guest, relays pause,
//! unpause and graceful stops to them, kills them on forced stops, and
//! tells the parent when one exits (SIGCHLD).
//!
//! It runs as `_vmd`: the parent opened vmm(4) (`/dev/vmm`, `/dev/kvm` on
//! Linux) as root and sends the descriptor once, first of all, with
//! `RECEIVE_VMM_FD`; each VM process gets a duplicate of it.  On OpenBSD,
//! as vmm.c, the process also unveils nothing but its own binary (`x`).
//!
//! From the parent: `START_VM_REQUEST`(params, boot image fd), one
//! `START_VM_DISK`(disk index and chain position, fd) per disk file, then
//! `START_VM_END`(pty fd) start a VM process (`vmd -V 0`), which is sent
//! `RECEIVE_VMM_FD`(vmm fd), `START_VM_REQUEST`(params, boot image fd),
//! the `START_VM_DISK`s and `START_VM_END`(pty fd) in that order; its
//! `START_VM_RESPONSE` goes back with the VM process's pid.
//! `TERMINATE_VM_REQUEST`(vmop_id, peer id of the client): with
//! `VMOP_FORCE` SIGTERM, then SIGKILL after [`super::VM_KILL_TIMEOUT_SEC`];
//! without, the VM is marked as shutting down and sent `VM_REBOOT`;
//! answered with `TERMINATE_VM_RESPONSE`.  `PAUSE_VM`/`UNPAUSE_VM` go to
//! the VM process, whose answers come back through here.  When a VM
//! process exits: `TERMINATE_VM_EVENT` with its status (EAGAIN, the
//! reboot request, becomes 0 when a stop was pending).
use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{Pid, User};

use super::args::{child_flags, Args};
use super::events;
use super::{logging, privsep, NO_PEER};
use crate::event::EventLoop;
use vmd_proto::msg::*;
use vmd_proto::{ImsgChannel, Message};

struct VmProc {
    id: u32,
    pid: i32,
    child: Child,
    chan: Option<ImsgChannel>,
    /// The START_VM_RESPONSE has not been sent yet.
    starting: bool,
    shutdown: bool,
    kill_at: Option<Instant>,
}

/// A START_VM_REQUEST with its boot image and the disk descriptors that
/// followed it.
struct PendingVm {
    params: VmopCreateParams,
    kernel: Option<OwnedFd>,
    disks: Vec<(DiskFd, OwnedFd)>,
    /// The ISO (START_VM_CDROM).
    cdrom: Option<OwnedFd>,
    /// The taps (START_VM_IF), by NIC index.
    ifs: Vec<(u32, OwnedFd)>,
}

struct Vmm {
    parent: ImsgChannel,
    /// vmd's binary, exec'd for each VM (`env->argv0`).
    exe: PathBuf,
    /// vmm(4), from the parent (`env->vmd_fd`).
    vmm_fd: Option<OwnedFd>,
    flags: Vec<String>,
    /// START_VM_REQUEST waiting for its START_VM_END.
    pending: BTreeMap<u32, PendingVm>,
    last_request: Option<u32>,
    vms: Vec<VmProc>,
    /// The parent's global configuration: VM processes need the local
    /// prefixes for their local interfaces.
    global: vmd_proto::config::GlobalConfig,
}

/// The vmm process; the exit status.
pub fn main(args: &Args, user: &User) -> i32 {
    privsep::set_title("vmm");
    logging::procinit("vmm");
    let parent = match privsep::parent_channel() {
        Ok(c) => c,
        Err(e) => logging::fatal("vmm: parent socket", e),
    };
    let _ = parent.socket().set_nonblocking(true);
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => logging::fatal("vmm: own binary", e),
    };
    // proc.c: chroot "/" and _vmd; vmm(4) comes from the parent.
    if let Err(e) = privsep::drop_privileges(user, Some(Path::new("/"))) {
        logging::fatal("vmm: cannot drop privileges", e);
    }
    // vmm_run: "We aren't root, so we can't chroot(2). Use unveil(2)
    // instead.", then pledge "stdio vmm sendfd recvfd proc exec ps".
    let ctx = crate::sandbox::Context {
        exe: Some(exe.clone()),
    };
    crate::sandbox::confine_or_die(crate::sandbox::Kind::Vmm, &ctx);
    crate::sandbox::test_hook(crate::sandbox::Kind::Vmm);
    let mut ev = match EventLoop::with_signals(&[
        libc::SIGCHLD,
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGHUP,
    ]) {
        Ok(s) => s,
        Err(e) => logging::fatal("signals", e),
    };
    let mut vmm = Vmm {
        parent,
        exe,
        vmm_fd: None,
        flags: child_flags(args),
        pending: BTreeMap::new(),
        last_request: None,
        vms: Vec::new(),
        global: Default::default(),
    };
    loop {
        let deadline = events::earliest(vmm.vms.iter().map(|v| v.kill_at));
        let ready = {
            let mut fds = vec![(vmm.parent.as_fd(), vmm.parent.pending())];
            for v in &vmm.vms {
                if let Some(c) = &v.chan {
                    fds.push((c.as_fd(), c.pending()));
                }
            }
            ev.wait(&fds, deadline).0
        };
        // The parent ends us by closing the socket; SIGTERM is ignored.
        if ev.take_signals().contains(&libc::SIGCHLD) {
            vmm.reap();
        }
        if ready[0].write {
            let _ = vmm.parent.flush();
        }
        if ready[0].read {
            match events::drain(&mut vmm.parent) {
                Ok(msgs) => {
                    for r in msgs {
                        vmm.dispatch_parent(r);
                    }
                }
                Err(e) => {
                    if !matches!(e, vmd_proto::ImsgError::Closed) {
                        log::warn!("vmm: parent: {e}");
                    }
                    vmm.shutdown();
                    return 0;
                }
            }
        }
        let mut k = 1;
        let mut from_vms = Vec::new();
        for v in vmm.vms.iter_mut() {
            let Some(c) = v.chan.as_mut() else { continue };
            let r = ready.get(k).copied().unwrap_or_default();
            k += 1;
            if r.write {
                let _ = c.flush();
            }
            if r.read {
                match events::drain(c) {
                    Ok(msgs) => from_vms.extend(msgs.into_iter().map(|m| (v.id, m))),
                    Err(e) => {
                        if !matches!(e, vmd_proto::ImsgError::Closed) {
                            log::warn!("vmm: dropping the channel of vm {}: {e}", v.id);
                        }
                        v.chan = None;
                    }
                }
            }
        }
        for (id, r) in from_vms {
            vmm.dispatch_vm(id, r);
        }
        let now = Instant::now();
        for v in vmm.vms.iter_mut() {
            if v.kill_at.is_some_and(|t| t <= now) {
                log::debug!("vmm: vm {} did not stop, killing pid {}", v.id, v.pid);
                let _ = kill(Pid::from_raw(v.pid), Signal::SIGKILL);
                v.kill_at = None;
            }
        }
        let _ = vmm.parent.flush();
    }
}

impl Vmm {
    fn tell_parent(&mut self, msg: Message, peerid: u32) {
        if let Err(e) = events::post(&mut self.parent, &msg, peerid, Vec::new()) {
            log::warn!("vmm: cannot send {} to parent: {e}", msg.imsg_type().name());
        }
    }

    fn find(&self, id: u32) -> Option<usize> {
        self.vms.iter().position(|v| v.id == id)
    }

    fn dispatch_parent(&mut self, mut r: vmd_proto::Received) {
        let peerid = r.peerid;
        match r.msg {
            Message::ReceiveVmmFd => {
                if self.vmm_fd.is_some() {
                    logging::fatalx("already received vmm fd");
                }
                match r.fds.pop() {
                    Some(fd) => self.vmm_fd = Some(fd),
                    None => logging::fatalx("failed to get vmm fd"),
                }
            }
            Message::StartVmRequest(p) => {
                let id = p.id;
                self.pending.insert(
                    id,
                    PendingVm {
                        params: p,
                        kernel: r.fds.pop(),
                        disks: Vec::new(),
                        cdrom: None,
                        ifs: Vec::new(),
                    },
                );
                self.last_request = Some(id);
            }
            Message::StartVmCdrom => {
                let id = self.last_request.unwrap_or(peerid);
                match (self.pending.get_mut(&id), r.fds.pop()) {
                    (Some(p), Some(fd)) => p.cdrom = Some(fd),
                    _ => log::warn!("vmm: START_VM_CDROM without a request or a file"),
                }
            }
            Message::StartVmDisk(d) => {
                let id = self.last_request.unwrap_or(peerid);
                match (self.pending.get_mut(&id), r.fds.pop()) {
                    (Some(p), Some(fd)) => p.disks.push((d, fd)),
                    _ => log::warn!("vmm: START_VM_DISK without a request or a descriptor"),
                }
            }
            Message::StartVmIf(index) => {
                let id = self.last_request.unwrap_or(peerid);
                match (self.pending.get_mut(&id), r.fds.pop()) {
                    (Some(p), Some(fd)) => p.ifs.push((index, fd)),
                    _ => log::warn!("vmm: START_VM_IF without a request or a descriptor"),
                }
            }
            Message::StartVmEnd => {
                let pty = r.fds.pop();
                let id = self.last_request.take().unwrap_or(peerid);
                let Some(p) = self.pending.remove(&id) else {
                    log::warn!("vmm: START_VM_END without a request");
                    return;
                };
                if let Err(errno) = self.start_vm(p, pty) {
                    self.tell_parent(
                        Message::StartVmResponse(VmopResult {
                            result: errno,
                            id,
                            pid: 0,
                            ttyname: String::new(),
                        }),
                        NO_PEER,
                    );
                }
            }
            Message::TerminateVmRequest(vid) => {
                let result = self.terminate(&vid);
                self.tell_parent(
                    Message::TerminateVmResponse(VmopResult {
                        result,
                        id: vid.id,
                        pid: 0,
                        ttyname: String::new(),
                    }),
                    peerid,
                );
            }
            Message::PauseVm(ref vid) | Message::UnpauseVm(ref vid) => {
                let pause = matches!(r.msg, Message::PauseVm(_));
                let id = vid.id;
                let sent = self.find(id).and_then(|i| {
                    let c = self.vms[i].chan.as_mut()?;
                    events::post(c, &r.msg, peerid, Vec::new()).ok()
                });
                if sent.is_none() {
                    let res = VmopResult {
                        result: libc::ENOENT,
                        id,
                        pid: 0,
                        ttyname: String::new(),
                    };
                    let m = if pause {
                        Message::PauseVmResponse(res)
                    } else {
                        Message::UnpauseVmResponse(res)
                    };
                    self.tell_parent(m, peerid);
                }
            }
            Message::CtlVerbose(v) => {
                logging::set_verbose(v);
                for vm in self.vms.iter_mut() {
                    if let Some(c) = vm.chan.as_mut() {
                        let _ = events::post(c, &Message::CtlVerbose(v), NO_PEER, Vec::new());
                    }
                }
            }
            Message::CtlReset(mode) => {
                if mode & CONFIG_VMS != 0 {
                    for vm in self.vms.iter_mut() {
                        vm.shutdown = true;
                        let _ = kill(Pid::from_raw(vm.pid), Signal::SIGTERM);
                        vm.kill_at =
                            Some(Instant::now() + Duration::from_secs(super::VM_KILL_TIMEOUT_SEC));
                    }
                }
            }
            // priv's answer for a VM's tap: to that VM (vmm.c).
            Message::PrivGetAddrResponse(r) => match self.find(r.vmid) {
                Some(i) => {
                    if let Some(c) = self.vms[i].chan.as_mut() {
                        let m = Message::PrivGetAddrResponse(r);
                        let _ = events::post(c, &m, NO_PEER, Vec::new());
                    }
                }
                None => log::debug!("vmm: tap address for vm {}, which is not running", r.vmid),
            },
            // Passed on to each VM started from now on (its local
            // interfaces' addresses).
            Message::Config(g) => self.global = g,
            other => log::debug!("vmm: unexpected {} from parent", other.imsg_type().name()),
        }
    }

    fn start_vm(&mut self, p: PendingVm, pty: Option<OwnedFd>) -> Result<(), i32> {
        let PendingVm {
            params,
            kernel,
            disks,
            cdrom,
            ifs,
        } = p;
        let id = params.id;
        if self.find(id).is_some() {
            return Err(libc::EALREADY);
        }
        let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(libc::EIO);
        let vmm_fd = match &self.vmm_fd {
            Some(fd) => fd.try_clone().map_err(errno)?,
            None => {
                log::warn!("vmm: no vmm fd from the parent");
                return Err(libc::ENODEV);
            }
        };
        let mut argv = vec!["-V".to_string(), "0".to_string()];
        argv.extend(self.flags.iter().cloned());
        let (child, mut chan) = privsep::spawn_exe(&self.exe, &argv, true).map_err(|e| {
            log::warn!("vmm: cannot start vm process: {e}");
            errno(e)
        })?;
        let pid = child.id() as i32;
        let sent = events::post(&mut chan, &Message::ReceiveVmmFd, NO_PEER, vec![vmm_fd])
            .and_then(|_| {
                events::post(
                    &mut chan,
                    &Message::StartVmRequest(params),
                    NO_PEER,
                    kernel.into_iter().collect(),
                )
            })
            .and_then(|_| match cdrom {
                Some(fd) => events::post(&mut chan, &Message::StartVmCdrom, NO_PEER, vec![fd]),
                None => Ok(()),
            })
            .and_then(|_| {
                disks.into_iter().try_for_each(|(d, fd)| {
                    events::post(&mut chan, &Message::StartVmDisk(d), NO_PEER, vec![fd])
                })
            })
            .and_then(|_| {
                events::post(
                    &mut chan,
                    &Message::Config(self.global.clone()),
                    NO_PEER,
                    Vec::new(),
                )
            })
            .and_then(|_| {
                ifs.into_iter().try_for_each(|(i, fd)| {
                    events::post(&mut chan, &Message::StartVmIf(i), NO_PEER, vec![fd])
                })
            })
            .and_then(|_| {
                events::post(
                    &mut chan,
                    &Message::StartVmEnd,
                    NO_PEER,
                    pty.into_iter().collect(),
                )
            });
        if let Err(e) = sent {
            log::warn!("vmm: cannot configure vm process: {e}");
        }
        log::debug!("vmm: started vm {id}, pid {pid}");
        self.vms.push(VmProc {
            id,
            pid,
            child,
            chan: Some(chan),
            starting: true,
            shutdown: false,
            kill_at: None,
        });
        Ok(())
    }

    fn terminate(&mut self, vid: &VmopId) -> i32 {
        let Some(i) = self.find(vid.id) else {
            log::debug!("vmm: cannot stop vm {}: not running", vid.id);
            return VMD_VM_STOP_INVALID;
        };
        let vm = &mut self.vms[i];
        if vid.flags & VMOP_FORCE != 0 {
            vm.shutdown = true;
            let _ = kill(Pid::from_raw(vm.pid), Signal::SIGTERM);
            if vm.kill_at.is_none() {
                vm.kill_at = Some(Instant::now() + Duration::from_secs(super::VM_KILL_TIMEOUT_SEC));
            }
            0
        } else if !vm.shutdown {
            log::debug!("vmm: sending shutdown request to vm {}", vm.id);
            vm.shutdown = true;
            match vm.chan.as_mut() {
                Some(c) => match events::post(c, &Message::VmReboot, NO_PEER, Vec::new()) {
                    Ok(()) => 0,
                    Err(_) => libc::EIO,
                },
                None => libc::EIO,
            }
        } else {
            libc::EALREADY
        }
    }

    fn dispatch_vm(&mut self, id: u32, r: vmd_proto::Received) {
        match r.msg {
            Message::StartVmResponse(mut res) => {
                let Some(i) = self.find(id) else { return };
                self.vms[i].starting = false;
                res.id = id;
                res.pid = self.vms[i].pid;
                self.tell_parent(Message::StartVmResponse(res), NO_PEER);
            }
            m @ (Message::PauseVmResponse(_) | Message::UnpauseVmResponse(_)) => {
                self.tell_parent(m, r.peerid);
            }
            other => log::debug!("vmm: unexpected {} from vm {id}", other.imsg_type().name()),
        }
    }

    /// `vmm_sighdlr`'s SIGCHLD part.
    fn reap(&mut self) {
        loop {
            let status = match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(s) => s,
            };
            let (pid, mut ret, signal) = match status {
                WaitStatus::Exited(p, code) => (p, code, None),
                WaitStatus::Signaled(p, sig, _) => (p, 0, Some(sig)),
                _ => continue,
            };
            let Some(i) = self.vms.iter().position(|v| v.pid == pid.as_raw()) else {
                continue;
            };
            let vm = self.vms.remove(i);
            if let Some(sig) = signal {
                // vmd's own SIGTERM and SIGKILL of a forced stop are no
                // news; anyone else's signal (kill -9, the OOM killer) is.
                if vm.shutdown {
                    log::debug!("vmm: vm {} (pid {pid}) terminated by {sig}", vm.id);
                } else {
                    log::warn!("vm {}: vm process {pid} killed by {sig}", vm.id);
                }
            }
            // The Child is reaped already; dropping it does not wait.
            drop(vm.child);
            if ret == libc::EAGAIN && vm.shutdown {
                ret = 0;
            }
            if vm.starting {
                log::debug!("vmm: vm {} exited before it started: {ret}", vm.id);
                self.tell_parent(
                    Message::StartVmResponse(VmopResult {
                        result: if ret == 0 { libc::EIO } else { ret },
                        id: vm.id,
                        pid: vm.pid,
                        ttyname: String::new(),
                    }),
                    NO_PEER,
                );
                continue;
            }
            self.tell_parent(
                Message::TerminateVmEvent(VmopResult {
                    result: ret,
                    id: vm.id,
                    pid: vm.pid,
                    ttyname: String::new(),
                }),
                NO_PEER,
            );
        }
    }

    /// `vmm_shutdown`: ends every VM, waits a little for them.
    fn shutdown(&mut self) {
        log::debug!("vmm_shutdown: terminating all vms");
        for vm in &self.vms {
            let _ = kill(Pid::from_raw(vm.pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(super::VM_KILL_TIMEOUT_SEC);
        for vm in self.vms.iter_mut() {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = vm.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Ok(None) = vm.child.try_wait() {
                let _ = vm.child.kill();
                let _ = vm.child.wait();
            }
        }
        self.vms.clear();
    }
}
