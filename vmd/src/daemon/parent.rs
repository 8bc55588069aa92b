//! The parent process (vmd.c): reads vm.conf, keeps the VM registry,
//! opens what VMs need as root (boot images, ptys), starts and stops VMs
//! through the vmm process, answers the clients the control process
//! relays, restarts VMs that reset themselves, and reloads or shuts down
//! on SIGHUP and SIGTERM.
use std::collections::HashSet;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use nix::unistd::User;

use super::args::{child_flags, Args};
use super::events;
use super::registry::{self, FileAccess, RegisterError, Registry, SystemGroups, Tty};
use super::stagger::Stagger;
use super::vmfiles::{self, VmFile};
use super::{logging, privsep, strerror, NO_PEER};
use crate::config::{self, Registration};
use crate::event::EventLoop;
use vmd_proto::config::{BootDevice, GlobalConfig, VMOP_CREATE_CDROM, VMOP_CREATE_CPU};
use vmd_proto::config::{VMOP_CREATE_DISK, VMOP_CREATE_KERNEL};
use vmd_proto::msg::*;
use vmd_proto::{ImsgChannel, Message, Received};

struct Parent {
    args: Args,
    conffile: PathBuf,
    reg: Registry,
    global: GlobalConfig,
    control: ImsgChannel,
    vmm: ImsgChannel,
    privc: ImsgChannel,
    /// vm.conf's switches, and the interfaces of those priv has set up
    /// (`sw_running`).
    switches: Vec<config::Switch>,
    switches_running: HashSet<String>,
    children: Vec<(&'static str, Child)>,
    /// vmm(4), opened as root for the vmm process (`env->vmd_fd`).
    vmm_fd: OwnedFd,
    stagger: Stagger,
    socket: PathBuf,
    /// Locked for as long as this vmd runs (see [`lock_pidfile`]).
    pidfile: (PathBuf, File),
}

/// The parent; the exit status.
pub fn main(args: Args, _user: User) -> i32 {
    if args.noaction {
        // The registry's checks on a registry of its own: vmd -n fails
        // where vmd would fail to start (a VM with nothing to boot).
        let mut reg = Registry::new();
        let mut hook = |vm: &config::Vm| -> Registration {
            match reg.register_config(registry::params_from_config(vm), &SystemGroups) {
                Ok(_) => Registration::Registered,
                Err((RegisterError::Exists(_), _)) => {
                    Registration::AlreadyExists { running: false }
                }
                Err((RegisterError::Failed(e), _)) => Registration::Failed(strerror(e)),
            }
        };
        let (out, code) = config::check_with(
            args.conffile.as_deref(),
            &args.defines,
            args.verbose,
            Some(&mut hook),
        );
        eprint!("{out}");
        return code;
    }
    raise_nofile();
    // Before anything else: a second vmd would remove the first one's
    // socket and start every VM again.
    let socket = vmd_proto::socket_path();
    let pidfile = match lock_pidfile(&socket) {
        Ok(f) => f,
        Err(e) => logging::fatalx(&e),
    };
    let mut args = args;
    // daemon(3) changes to /: a relative -f would name another file after.
    if let Some(f) = args.conffile.take() {
        args.conffile = Some(std::path::absolute(&f).unwrap_or(f));
    }
    // Open vmm(4) before anything else, as vmd opens /dev/vmm: the vmm
    // and VM processes, which run as _vmd, use this descriptor.  A handle
    // on a copy makes vmd fail at once where vmm(4) cannot work.
    let vmm_fd = match vmm_sys::Vmm::open_device() {
        Ok(fd) => fd,
        Err(e) => logging::fatalx(&e.to_string()),
    };
    match vmm_fd.try_clone() {
        Ok(fd) => {
            if let Err(e) = vmm_sys::Vmm::from_fd(fd) {
                logging::fatalx(&e.to_string());
            }
        }
        Err(e) => logging::fatal(vmm_sys::DEVICE_PATH, e),
    }
    if !args.debug {
        if let Err(e) = nix::unistd::daemon(false, false) {
            logging::fatal("failed to daemonize", e);
        }
    }
    privsep::set_title("parent");
    logging::procinit("parent");
    // Our pid as the daemon, for whoever reads the file.
    write_pid(&pidfile);
    // Signals are caught before there are children to look after, so a
    // SIGTERM during startup still ends them.
    let mut ev = match EventLoop::with_signals(&[
        libc::SIGHUP,
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGCHLD,
        libc::SIGUSR1,
    ]) {
        Ok(s) => s,
        Err(e) => logging::fatal("signals", e),
    };
    let mut children = Vec::new();
    let mut chans = Vec::new();
    for title in ["control", "vmm", "priv"] {
        let mut argv = vec!["-P".to_string(), title.to_string()];
        argv.extend(child_flags(&args));
        match privsep::spawn(&argv, false) {
            Ok((child, chan)) => {
                children.push((title, child));
                chans.push(chan);
            }
            Err(e) => logging::fatal(&format!("cannot start {title}"), e),
        }
    }
    let privc = chans.pop().unwrap();
    let vmm = chans.pop().unwrap();
    let control = chans.pop().unwrap();
    log::info!("startup");
    let conffile = args
        .conffile
        .clone()
        .unwrap_or_else(|| PathBuf::from(config::VMD_CONF));
    let mut p = Parent {
        args,
        conffile,
        reg: Registry::new(),
        global: GlobalConfig::default(),
        control,
        vmm,
        privc,
        switches: Vec::new(),
        switches_running: HashSet::new(),
        children,
        vmm_fd,
        stagger: Stagger::new(None, 1),
        socket,
        pidfile,
    };
    if !p.configure() {
        p.kill_children();
        return 1;
    }
    // vmd.c, once its children run: pledge "stdio rpath wpath proc tty
    // recvfd sendfd getpw chown fattr flock".
    crate::sandbox::confine_or_die(crate::sandbox::Kind::Parent, &Default::default());
    crate::sandbox::test_hook(crate::sandbox::Kind::Parent);
    loop {
        let ready = {
            let fds = [
                (p.control.as_fd(), p.control.pending()),
                (p.vmm.as_fd(), p.vmm.pending()),
                (p.privc.as_fd(), p.privc.pending()),
            ];
            ev.wait(&fds, p.stagger.deadline()).0
        };
        for s in ev.take_signals() {
            match s {
                libc::SIGHUP => {
                    log::info!("vmd_sighdlr: reload requested with SIGHUP");
                    let _ = p.reload(0, None);
                }
                libc::SIGTERM | libc::SIGINT => p.shutdown(),
                libc::SIGCHLD => p.check_children(),
                libc::SIGUSR1 => log::info!("vmd_sighdlr: ignoring SIGUSR1"),
                _ => {}
            }
        }
        for (k, name) in [(0, "control"), (1, "vmm"), (2, "priv")] {
            let r = ready[k];
            let chan = match k {
                0 => &mut p.control,
                1 => &mut p.vmm,
                _ => &mut p.privc,
            };
            if r.write {
                let _ = chan.flush();
            }
            if !r.read {
                continue;
            }
            match events::drain(chan) {
                Ok(msgs) => {
                    for m in msgs {
                        match k {
                            0 => p.dispatch_control(m),
                            1 => p.dispatch_vmm(m),
                            _ => p.dispatch_priv(m),
                        }
                    }
                }
                Err(e) => {
                    log::warn!("lost child: {name}: {e}");
                    p.shutdown();
                }
            }
        }
        if p.stagger.fire(Instant::now()) {
            p.start_vm_batch();
        }
        for c in [&mut p.control, &mut p.vmm, &mut p.privc] {
            let _ = c.flush();
        }
    }
}

fn send(chan: &mut ImsgChannel, msg: Message, peerid: u32, fds: Vec<OwnedFd>) {
    if let Err(e) = events::post(chan, &msg, peerid, fds) {
        log::warn!("parent: cannot send {}: {e}", msg.imsg_type().name());
    }
}

fn result(res: i32, id: u32) -> VmopResult {
    VmopResult {
        result: res,
        id,
        pid: 0,
        ttyname: String::new(),
    }
}

/// Resident memory of a process (Linux: /proc/<pid>/statm).
fn used_size(pid: i32) -> u64 {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page)
}

/// `vm_opentty`: a pty pair in raw mode, the slave owned by the VM's
/// owner and group `tty` (0620), or by its owner group (0660).
fn open_tty(owner: &VmopOwner) -> nix::Result<Tty> {
    use nix::sys::stat::{fchmod, Mode};
    use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
    let pty = nix::pty::openpty(None, None)?;
    let mut t = tcgetattr(&pty.slave)?;
    cfmakeraw(&mut t);
    tcsetattr(&pty.slave, SetArg::TCSANOW, &t)?;
    let name = nix::unistd::ttyname(&pty.slave)?
        .to_string_lossy()
        .into_owned();
    let (gid, mode) = match owner.gid {
        Some(g) => (g, 0o660),
        None => match nix::unistd::Group::from_name("tty") {
            Ok(Some(g)) => (g.gid.as_raw(), 0o620),
            _ => (0, 0o600),
        },
    };
    nix::unistd::fchown(
        &pty.slave,
        Some(nix::unistd::Uid::from_raw(owner.uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )?;
    fchmod(&pty.slave, Mode::from_bits_truncate(mode))?;
    Ok(Tty {
        master: pty.master,
        slave: pty.slave,
        name,
    })
}

/// The soft limit of open files up to the hard one, before the children
/// are started (they inherit it): each client of the control process and
/// each VM's files take descriptors, and the soft limit is often 1024 or
/// less where the hard one is far higher.
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => log::debug!("raised the open files limit from {soft} to {hard}"),
            Err(e) => log::debug!("cannot raise the open files limit from {soft} to {hard}: {e}"),
        },
        Ok(_) => {}
        Err(e) => log::debug!("getrlimit: {e}"),
    }
}

/// The pid file of the vmd whose control socket is `socket`: next to it,
/// named as it with `.pid` (`/var/run/vmd.pid`).
pub fn pidfile_path(socket: &Path) -> PathBuf {
    socket.with_extension("pid")
}

/// Refuses to go on when another vmd runs on the same socket: its pid
/// file is locked, or (a vmd that keeps none) its socket answers.  The
/// lock (flock, released when this process ends) is held from here on;
/// the error says what to do.
fn lock_pidfile(socket: &Path) -> Result<(PathBuf, File), String> {
    use std::io::Read;
    let path = pidfile_path(socket);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if let Err(e) = rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        let mut pid = String::new();
        let _ = f.read_to_string(&mut pid);
        return Err(if e == rustix::io::Errno::WOULDBLOCK {
            format!(
                "vmd is already running (pid {}, {} is locked)",
                pid.trim(),
                path.display()
            )
        } else {
            format!("{}: lock: {e}", path.display())
        });
    }
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        return Err(format!(
            "control socket {} is in use: is another vmd running?",
            socket.display()
        ));
    }
    Ok((path, f))
}

fn write_pid((path, f): &(PathBuf, File)) {
    use std::io::Write;
    let mut w: &File = f;
    let written = f
        .set_len(0)
        .and_then(|_| w.write_all(format!("{}\n", std::process::id()).as_bytes()));
    if let Err(e) = written {
        log::warn!("{}: {e}", path.display());
    }
}

/// Online CPUs: how many VMs start at once without `staggered start`.
fn ncpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl Parent {
    /// `vmd_configure`.
    fn configure(&mut self) -> bool {
        // "Send VMM device fd to vmm proc."
        match self.vmm_fd.try_clone() {
            Ok(fd) => send(&mut self.vmm, Message::ReceiveVmmFd, NO_PEER, vec![fd]),
            Err(e) => logging::fatal("vmm fd", e),
        }
        let path = self.conffile.clone();
        if !self.parse_config(&path) {
            return false;
        }
        self.stagger.configure(self.global.staggered_start, ncpus());
        if self.global.staggered_start.is_none() {
            log::debug!(
                "vmd_configure: setting staggered start configuration to parallelism: {} and delay: {}",
                self.stagger.parallelism,
                self.stagger.delay.as_secs()
            );
        }
        send(
            &mut self.vmm,
            Message::Config(self.global.clone()),
            NO_PEER,
            Vec::new(),
        );
        send(
            &mut self.privc,
            Message::Config(self.global.clone()),
            NO_PEER,
            Vec::new(),
        );
        self.configure_switches();
        log::debug!("vmd_configure: starting vms in staggered fashion");
        self.start_vm_batch();
        true
    }

    /// `parse_config`: reads `path`, registering its VMs as it goes.
    fn parse_config(&mut self, path: &Path) -> bool {
        let defines = self.args.defines.clone();
        let reg = &mut self.reg;
        let mut hook = |vm: &config::Vm| -> Registration {
            let params = registry::params_from_config(vm);
            match reg.register_config(params, &SystemGroups) {
                Ok(i) => {
                    let v = &mut reg.vms[i];
                    v.state |= if vm.disabled {
                        VM_STATE_DISABLED
                    } else {
                        VM_STATE_WAITING
                    };
                    v.from_config = true;
                    v.kernel_path = vm.boot.clone();
                    Registration::Registered
                }
                Err((RegisterError::Exists(i), _)) => Registration::AlreadyExists {
                    running: reg.vms[i].running(),
                },
                Err((RegisterError::Failed(e), _)) => Registration::Failed(strerror(e)),
            }
        };
        let mut opts = config::ParseOptions::new(&defines);
        opts.default_file = self.args.conffile.is_none() && path == Path::new(config::VMD_CONF);
        opts.register = Some(&mut hook);
        let outcome = config::parse_with(path, opts);
        for m in &outcome.messages {
            match m.level {
                config::Level::Debug => log::debug!("{}", m.error),
                _ => log::warn!("{}", m.error),
            }
        }
        if outcome.ok {
            self.global = outcome.config.global;
            self.switches = outcome.config.switches;
            self.control_reset();
        }
        outcome.ok
    }

    /// `control_reset`: the socket's owner from `socket owner`.
    fn control_reset(&self) {
        if !self.socket.exists() {
            return;
        }
        if let Err(e) = nix::unistd::chown(
            &self.socket,
            Some(nix::unistd::Uid::from_raw(self.global.socket_uid)),
            Some(nix::unistd::Gid::from_raw(self.global.socket_gid)),
        ) {
            log::warn!("control_reset: chown {}: {e}", self.socket.display());
        }
    }

    /// `vmd_reload`.
    fn reload(&mut self, reset: u32, filename: Option<&str>) -> bool {
        let (path, full) = match filename.filter(|f| !f.is_empty()) {
            Some(f) => (PathBuf::from(f), false),
            None => (self.conffile.clone(), true),
        };
        log::debug!("vmd_reload: level {reset} config file {}", path.display());
        if reset != 0 {
            if reset & CONFIG_VMS != 0 {
                while !self.reg.vms.is_empty() {
                    self.reg.remove(0);
                }
            }
            send(&mut self.vmm, Message::CtlReset(reset), NO_PEER, Vec::new());
            send(
                &mut self.privc,
                Message::CtlReset(reset),
                NO_PEER,
                Vec::new(),
            );
            if reset & CONFIG_SWITCHES != 0 {
                self.switches.clear();
                self.switches_running.clear();
            }
            return true;
        }
        if full {
            let mut i = 0;
            while i < self.reg.vms.len() {
                if self.reg.vms[i].running() {
                    i += 1;
                } else {
                    self.reg.remove(i);
                }
            }
        }
        if !self.parse_config(&path) {
            log::debug!("vmd_reload: failed to load config file {}", path.display());
            return false;
        }
        // As parse.y sets them: new `staggered start` settings apply.
        if let Some(cfg) = self.global.staggered_start {
            self.stagger.configure(Some(cfg), ncpus());
        }
        if full {
            send(
                &mut self.vmm,
                Message::Config(self.global.clone()),
                NO_PEER,
                Vec::new(),
            );
        }
        self.configure_switches();
        log::debug!("vmd_reload: starting vms in staggered fashion");
        self.start_vm_batch();
        true
    }

    /// vm_priv_brconfig for each switch not set up yet.
    fn configure_switches(&mut self) {
        if let Err(e) = super::netcfg::configure_switches(
            &mut self.privc,
            &self.switches,
            &mut self.switches_running,
        ) {
            log::warn!("vmd_configure: failed to create switches: {e}");
        }
    }

    /// vm_priv_ifconfig once VM `i` runs: its taps get their description,
    /// switch, rdomain, groups, state and local addresses.
    fn configure_vm_interfaces(&mut self, i: usize) -> Result<(), super::netcfg::NetcfgError> {
        let vm = &self.reg.vms[i];
        super::netcfg::configure_vm_interfaces(
            &mut self.privc,
            &self.global,
            &self.switches,
            vm.id,
            &vm.params.name,
            &vm.params.interfaces,
            &vm.ifnames,
        )
    }

    /// `start_vm_batch`: the next VMs vm.conf enables (see [`Stagger`]).
    fn start_vm_batch(&mut self) {
        for id in self.stagger.batch(&mut self.reg, Instant::now()) {
            if let Some(i) = self.reg.by_id(id) {
                let uid = self.reg.vms[i].params.owner.uid;
                let _ = self.setvm(i, NO_PEER, uid);
            }
        }
        log::debug!("start_vm_batch: done starting vms");
    }

    /// `config_setvm`, with its failure path (the VM is stopped, or
    /// removed when it did not come from vm.conf).
    fn setvm(&mut self, i: usize, peerid: u32, uid: u32) -> Result<(), i32> {
        // A running VM is left alone (a batch may name one started by
        // hand meanwhile): this failure stops nothing.
        if self.reg.vms[i].running() {
            log::warn!("config_setvm: vm is already running");
            return Err(libc::EALREADY);
        }
        let r = self.try_setvm(i, peerid, uid);
        if let Err(e) = r {
            log::warn!(
                "failed to start vm {}: {}",
                self.reg.vms[i].params.name,
                if e > 1000 {
                    format!("error {e}")
                } else {
                    strerror(e)
                }
            );
            self.reg.terminate(i);
        }
        r
    }

    fn try_setvm(&mut self, i: usize, peerid: u32, uid: u32) -> Result<(), i32> {
        if !self.reg.rate_ok(i, Instant::now()) {
            log::warn!(
                "config_setvm: vm {} restarted too quickly",
                self.reg.vms[i].id
            );
            return Err(libc::EPERM);
        }
        let vm = &self.reg.vms[i];
        let name = &vm.params.name;
        // vm_checkaccess on what vmd opens itself, for the VM's user (a
        // disk may be a block device; vmfiles::open checked the types).
        let access = |f: &File, kind: u32, amode: u32| {
            f.metadata().is_ok_and(|m| {
                let mut fa = FileAccess::of(&m);
                fa.regular = vmfiles::type_allowed(&m.file_type(), VmFile::Disk);
                registry::checkaccess(
                    &fa,
                    vm.params.checkaccess & kind != 0,
                    uid,
                    amode,
                    &SystemGroups,
                )
            })
        };
        let limit = vmfiles::max_boot_image(vm.params.memory);
        let kernel: OwnedFd = if let Some(k) = &vm.kernel {
            // The client's own descriptor: it could read the file.  Not
            // read here, only looked at, for a prompt answer.
            let k = File::from(k.try_clone().map_err(|e| errno_of(&e))?);
            if let Err(e) = vmfiles::check_boot_image(&k, limit) {
                log::warn!("vm \"{name}\": {e}");
                return Err(e.errno());
            }
            OwnedFd::from(k)
        } else {
            let (file, path) = if let Some(path) = &vm.kernel_path {
                let f = vmfiles::open(path, VmFile::Boot, false).map_err(|e| {
                    log::warn!("config_setvm: can't open kernel or BIOS {e}");
                    e.errno()
                })?;
                (f, path.as_str())
            } else {
                let bios = [super::VM_DEFAULT_BIOS, super::LINUX_DEFAULT_BIOS]
                    .into_iter()
                    .take(if cfg!(target_os = "linux") { 2 } else { 1 })
                    .find_map(|p| vmfiles::open(p, VmFile::Boot, false).ok().map(|f| (f, p)));
                match bios {
                    Some(b) => b,
                    None => {
                        log::warn!("config_setvm: can't open {}", super::VM_DEFAULT_BIOS);
                        return Err(VMD_BIOS_MISSING);
                    }
                }
            };
            if !access(&file, VMOP_CREATE_KERNEL, registry::ACCESS_READ) {
                log::warn!("vm \"{name}\" no read access to kernel {path}");
                return Err(libc::EPERM);
            }
            if let Err(e) = vmfiles::check_boot_image(&file, limit) {
                log::warn!("vm \"{name}\": {path}: {e}");
                return Err(e.errno());
            }
            OwnedFd::from(file)
        };
        let mut cdrom = None;
        if let Some(c) = &vm.params.cdrom {
            match vmfiles::open(c, VmFile::Cdrom, false) {
                Err(e @ vmfiles::OpenError::Type { .. }) => {
                    log::warn!("config_setvm: {e}");
                    return Err(VMD_CDROM_INVALID);
                }
                Err(e) => {
                    log::warn!("config_setvm: can't open {e}");
                    return Err(VMD_CDROM_MISSING);
                }
                Ok(f) if !access(&f, VMOP_CREATE_CDROM, registry::ACCESS_READ) => {
                    log::warn!("vm \"{name}\" no read access to cdrom {c}");
                    return Err(libc::EPERM);
                }
                // Opened read-only here, as root; the VM process serves it.
                Ok(f) => cdrom = Some(OwnedFd::from(f)),
            }
        }
        // Each disk and its backing chain, opened here and sent on as
        // descriptors (START_VM_DISK): the VM side never opens a path.
        let mut disk_fds: Vec<(DiskFd, OwnedFd)> = Vec::new();
        let mut disk_files = Vec::new();
        let mut bases = Vec::new();
        for (index, d) in vm.params.disks.iter().enumerate() {
            let chain = match super::disks::open(d) {
                Ok(c) => c,
                Err(e) => {
                    log::warn!("config_setvm: can't open {e}");
                    return Err(e.errno());
                }
            };
            let rw = registry::ACCESS_READ | registry::ACCESS_WRITE;
            if !access(&chain[0].file, VMOP_CREATE_DISK, rw) {
                log::warn!("vm \"{name}\" unable to access disk {}", d.path);
                return Err(libc::EPERM);
            }
            // Held, with its lock, while the VM runs.
            disk_files.push(chain[0].file.try_clone().map_err(|e| errno_of(&e))?);
            bases.push(chain.len() as u32 - 1);
            for (base, c) in chain.into_iter().enumerate() {
                let at = DiskFd {
                    index: index as u32,
                    base: base as u32,
                };
                disk_fds.push((at, OwnedFd::from(c.file)));
            }
        }
        // Each NIC's tap, opened here as root (the VM side never opens
        // one) and sent on as a descriptor (START_VM_IF); its name, as
        // the system gave it, goes to the VM in the create parameters.
        let mut taps = Vec::new();
        for (index, nic) in vm.params.interfaces.iter().enumerate() {
            let want = nic.name.as_deref().unwrap_or("tap");
            match crate::sys::open_tap(want) {
                Ok(t) => {
                    log::debug!("vm \"{name}\": interface {index} is {}", t.name);
                    taps.push(t);
                }
                Err(e) => {
                    log::warn!("config_setvm: {e}");
                    return Err(e.errno());
                }
            }
        }
        if vm.tty.is_none() {
            let owner = VmopOwner {
                uid,
                gid: vm.params.owner.gid,
            };
            let tty = open_tty(&owner).map_err(|e| {
                log::warn!("config_setvm: can't open tty: {e}");
                e as i32
            })?;
            self.reg.vms[i].tty = Some(tty);
        }
        let vm = &mut self.reg.vms[i];
        // Held, with their locks, while the VM runs.
        vm.disk_files = disk_files;
        vm.ifnames = taps.iter().map(|t| t.name.clone()).collect();
        let pty = vm
            .tty
            .as_ref()
            .map(|t| t.master.try_clone())
            .transpose()
            .map_err(|e| errno_of(&e))?;
        let mut params = vm.params.clone();
        params.id = vm.id;
        // vm_register: NICs on a switch take its `locked lladdr`.
        super::netcfg::inherit_switch_flags(&mut params.interfaces, &self.switches);
        for (d, n) in params.disks.iter_mut().zip(bases) {
            d.bases = n;
        }
        for (nic, t) in params.interfaces.iter_mut().zip(&taps) {
            nic.name = Some(t.name.clone());
        }
        send(
            &mut self.vmm,
            Message::StartVmRequest(params),
            vm.id,
            vec![kernel],
        );
        if let Some(fd) = cdrom {
            send(&mut self.vmm, Message::StartVmCdrom, vm.id, vec![fd]);
        }
        for (at, fd) in disk_fds {
            send(&mut self.vmm, Message::StartVmDisk(at), vm.id, vec![fd]);
        }
        // The parent keeps no tap open: each lives as long as the VM's
        // processes hold it.
        for (index, t) in taps.into_iter().enumerate() {
            // priv reads the tap's MAC through a duplicate, for vionet's
            // DHCP server (config_setvm's IMSG_VMDOP_PRIV_GET_ADDR).
            match t.file.try_clone() {
                Ok(dup) => {
                    if let Err(e) = super::netcfg::request_tap_lladdr(
                        &mut self.privc,
                        vm.id,
                        index as u32,
                        OwnedFd::from(dup),
                    ) {
                        log::warn!("config_setvm: {e}");
                    }
                }
                Err(e) => log::warn!("config_setvm: tap {}: {e}", t.name),
            }
            send(
                &mut self.vmm,
                Message::StartVmIf(index as u32),
                vm.id,
                vec![OwnedFd::from(t.file)],
            );
        }
        send(
            &mut self.vmm,
            Message::StartVmEnd,
            vm.id,
            pty.into_iter().collect(),
        );
        vm.state |= VM_STATE_RUNNING;
        vm.peerid = peerid;
        vm.uid = uid;
        Ok(())
    }

    fn answer(&mut self, msg: Message, peerid: u32) {
        send(&mut self.control, msg, peerid, Vec::new());
    }

    /// `vmd_dispatch_control`.
    fn dispatch_control(&mut self, mut r: Received) {
        let peer = r.peerid;
        match r.msg {
            Message::StartVmRequest(vmc) => {
                let kernfd = r.fds.pop();
                let uid = vmc.owner.uid;
                let flags = vmc.flags;
                let ncpus = vmc.ncpus;
                let i = match self.reg.register(vmc, kernfd, uid, &SystemGroups) {
                    Ok(i) => i,
                    Err((RegisterError::Failed(e), _)) => {
                        return self.answer(Message::StartVmResponse(result(e, 0)), peer)
                    }
                    Err((RegisterError::Exists(i), kernfd)) => {
                        let vm = &mut self.reg.vms[i];
                        if vm.running() {
                            return self
                                .answer(Message::StartVmResponse(result(libc::EALREADY, 0)), peer);
                        }
                        if flags & !(VMOP_CREATE_KERNEL | VMOP_CREATE_CPU) != 0 {
                            return self
                                .answer(Message::StartVmResponse(result(libc::EALREADY, 0)), peer);
                        }
                        if flags & VMOP_CREATE_CPU != 0 {
                            if ncpus == 0 || ncpus > registry::VMM_MAX_VCPUS_PER_VM {
                                return self.answer(
                                    Message::StartVmResponse(result(libc::EINVAL, 0)),
                                    peer,
                                );
                            }
                            vm.params.ncpus = ncpus;
                        }
                        if kernfd.is_some() {
                            vm.kernel = kernfd;
                        }
                        i
                    }
                };
                let uid = self.reg.vms[i].params.owner.uid;
                if let Err(e) = self.setvm(i, peer, uid) {
                    self.answer(Message::StartVmResponse(result(e, 0)), peer);
                }
            }
            Message::WaitVmRequest(ref vid) | Message::TerminateVmRequest(ref vid) => {
                let terminate = matches!(r.msg, Message::TerminateVmRequest(_));
                let flags = vid.flags;
                let (res, id) = self.reg.check_terminate(vid, &SystemGroups);
                if res == 0 && terminate {
                    let fwd = VmopId {
                        id,
                        name: String::new(),
                        uid: 0,
                        flags,
                    };
                    send(
                        &mut self.vmm,
                        Message::TerminateVmRequest(fwd),
                        peer,
                        Vec::new(),
                    );
                }
                self.answer(Message::TerminateVmResponse(result(res, id)), peer);
            }
            Message::GetInfoVmRequest(filter) => {
                let infos = self.reg.info(used_size);
                for info in infos {
                    if let Some(f) = &filter {
                        let wanted = if f.id != 0 {
                            info.id == f.id
                        } else {
                            f.name.is_empty() || info.name == f.name
                        };
                        if !wanted {
                            continue;
                        }
                    }
                    self.answer(Message::GetInfoVmData(info), peer);
                }
                self.answer(Message::GetInfoVmEndData, peer);
            }
            Message::Load(path) => {
                let ok = !path.is_empty() && self.reload(0, Some(&path));
                self.answer(
                    if ok {
                        Message::CtlOk
                    } else {
                        Message::CtlFail(None)
                    },
                    peer,
                );
            }
            Message::Reload => {
                let ok = self.reload(0, None);
                self.answer(
                    if ok {
                        Message::CtlOk
                    } else {
                        Message::CtlFail(None)
                    },
                    peer,
                );
            }
            Message::CtlReset(v) => {
                let ok = self.reload(v, None);
                self.answer(
                    if ok {
                        Message::CtlOk
                    } else {
                        Message::CtlFail(None)
                    },
                    peer,
                );
            }
            Message::CtlVerbose(v) => {
                logging::set_verbose(v);
                send(&mut self.vmm, Message::CtlVerbose(v), NO_PEER, Vec::new());
                send(&mut self.privc, Message::CtlVerbose(v), NO_PEER, Vec::new());
                self.answer(Message::CtlOk, peer);
            }
            Message::PauseVm(ref vid) | Message::UnpauseVm(ref vid) => {
                let pause = matches!(r.msg, Message::PauseVm(_));
                let answer = |res: i32| {
                    if pause {
                        Message::PauseVmResponse(result(res, 0))
                    } else {
                        Message::UnpauseVmResponse(result(res, 0))
                    }
                };
                let i = match self.reg.check_pause(vid, &SystemGroups) {
                    Ok(i) => i,
                    Err(e) => return self.answer(answer(e), peer),
                };
                let vm = &self.reg.vms[i];
                let fwd = VmopId {
                    id: vm.id,
                    name: vm.params.name.clone(),
                    uid: vid.uid,
                    flags: vid.flags,
                };
                let m = if pause {
                    Message::PauseVm(fwd)
                } else {
                    Message::UnpauseVm(fwd)
                };
                send(&mut self.vmm, m, peer, Vec::new());
            }
            Message::Done => self.control_reset(),
            other => log::debug!(
                "parent: unexpected {} from control",
                other.imsg_type().name()
            ),
        }
    }

    /// `vmd_dispatch_vmm`.
    fn dispatch_vmm(&mut self, r: Received) {
        let peer = r.peerid;
        match r.msg {
            Message::PauseVmResponse(vmr) | Message::UnpauseVmResponse(vmr)
                if self.reg.by_id(vmr.id).is_none() =>
            {
                let _ = vmr;
            }
            Message::PauseVmResponse(vmr) => {
                let i = self.reg.by_id(vmr.id).unwrap();
                if vmr.result == 0 {
                    let vm = &mut self.reg.vms[i];
                    log::info!("{}: paused vm {} successfully", vm.params.name, vm.id);
                    vm.state |= VM_STATE_PAUSED;
                }
                self.answer(Message::PauseVmResponse(vmr), peer);
            }
            Message::UnpauseVmResponse(vmr) => {
                let i = self.reg.by_id(vmr.id).unwrap();
                if vmr.result == 0 {
                    let vm = &mut self.reg.vms[i];
                    log::info!("{}: unpaused vm {} successfully.", vm.params.name, vm.id);
                    vm.state &= !VM_STATE_PAUSED;
                }
                self.answer(Message::UnpauseVmResponse(vmr), peer);
            }
            Message::StartVmResponse(mut vmr) => {
                let Some(i) = self.reg.by_id(vmr.id) else {
                    return;
                };
                let vm = &mut self.reg.vms[i];
                vm.pid = vmr.pid;
                if vm.peerid != NO_PEER {
                    vmr.ttyname = vm.tty.as_ref().map(|t| t.name.clone()).unwrap_or_default();
                    let p = vm.peerid;
                    vm.peerid = NO_PEER;
                    self.answer(Message::StartVmResponse(vmr.clone()), p);
                }
                let vm = &self.reg.vms[i];
                if vmr.result != 0 {
                    log::warn!("{}: failed to start vm", vm.params.name);
                    self.reg.terminate(i);
                    return;
                }
                // "Now configure all the interfaces".
                if let Err(e) = self.configure_vm_interfaces(i) {
                    let vm = &self.reg.vms[i];
                    log::warn!("{}: failed to configure vm: {e}", vm.params.name);
                    self.reg.terminate(i);
                    return;
                }
                let vm = &self.reg.vms[i];
                log::info!(
                    "started {} (vm {}) successfully, tty {}",
                    vm.params.name,
                    vm.id,
                    vm.tty.as_ref().map_or("", |t| t.name.as_str())
                );
            }
            Message::TerminateVmResponse(vmr) => {
                if vmr.result != 0 {
                    self.answer(Message::TerminateVmResponse(vmr), peer);
                } else if let Some(i) = self.reg.by_id(vmr.id) {
                    self.reg.vms[i].state |= VM_STATE_SHUTDOWN;
                }
            }
            Message::TerminateVmEvent(mut vmr) => {
                log::debug!(
                    "vmd_dispatch_vmm: handling TERMINATE_EVENT for vm id {} ret {}",
                    vmr.id,
                    vmr.result
                );
                let Some(i) = self.reg.by_id(vmr.id) else {
                    log::debug!("vmd_dispatch_vmm: vm {} is no longer available", vmr.id);
                    return;
                };
                let vm = &self.reg.vms[i];
                if vmr.result != libc::EAGAIN || vm.params.boot_device != BootDevice::Auto {
                    if vmr.result != 0 && vmr.result != libc::EAGAIN {
                        log::warn!(
                            "{}: vm {} exited: {}",
                            vm.params.name,
                            vm.id,
                            strerror(vmr.result)
                        );
                    }
                    self.reg.terminate(i);
                } else {
                    // Keep the tty: the VM comes back on the same console.
                    let uid = vm.uid;
                    self.reg.stop(i, true);
                    let _ = self.setvm(i, NO_PEER, uid);
                }
                vmr.result = 0;
                self.answer(Message::TerminateVmEvent(vmr), peer);
            }
            other => log::debug!("parent: unexpected {} from vmm", other.imsg_type().name()),
        }
    }

    /// `vmd_dispatch_priv`: a tap's MAC goes on to the vmm process (and
    /// from there to the VM's vionet).
    fn dispatch_priv(&mut self, r: Received) {
        match r.msg {
            m @ Message::PrivGetAddrResponse(_) => send(&mut self.vmm, m, r.peerid, Vec::new()),
            other => log::debug!("parent: unexpected {} from priv", other.imsg_type().name()),
        }
    }

    /// A privsep child died: vmd cannot go on.
    fn check_children(&mut self) {
        let mut lost = false;
        for (title, child) in self.children.iter_mut() {
            if let Ok(Some(st)) = child.try_wait() {
                log::warn!("lost child: {title} {st}");
                lost = true;
            }
        }
        if lost {
            self.shutdown();
        }
    }

    fn kill_children(&mut self) {
        // Closing their sockets ends them (`proc_kill`).
        for c in [&mut self.control, &mut self.vmm, &mut self.privc] {
            let _ = c.socket().shutdown(std::net::Shutdown::Both);
        }
        let deadline = Instant::now() + Duration::from_secs(super::CHILD_KILL_TIMEOUT_SEC);
        for (_, child) in self.children.iter_mut() {
            while Instant::now() < deadline {
                if !matches!(child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// `vmd_shutdown`.
    fn shutdown(&mut self) -> ! {
        log::debug!("vmd_shutdown: performing shutdown");
        while !self.reg.vms.is_empty() {
            self.reg.remove(0);
        }
        self.kill_children();
        let _ = std::fs::remove_file(&self.pidfile.0);
        log::warn!("terminating");
        std::process::exit(0)
    }
}
