//! Confinement of vmd's processes: one call per process kind, made where
//! OpenBSD's vmd makes its pledge(2) and unveil(2) calls (reference §3.2).
//!
//! | process | OpenBSD | Linux |
//! |---|---|---|
//! | parent | pledge `stdio rpath wpath cpath proc tty recvfd sendfd getpw chown fattr flock` | seccomp [`Kind::Parent`]; no Landlock (it opens the files vm.conf and vmctl name) |
//! | control | pledge `stdio unix recvfd sendfd` (chroot `/var/empty`) | seccomp; Landlock: no file system at all (chroot kept) |
//! | vmm | unveil the vmd binary `x`; pledge `stdio vmm sendfd recvfd proc exec ps` | seccomp; Landlock: execute the vmd binary, read the libraries it maps |
//! | priv | nothing (root, chrooted), as vmd | seccomp; Landlock: no file system |
//! | VM, until its devices run | unveil the vmd binary `x`; pledge `stdio vmm proc exec sendfd` | seccomp with fork/exec; Landlock as vmm; no capabilities |
//! | VM, running | pledge `stdio vmm` | seccomp: vCPU threads, KVM ioctls, no fork or exec; Landlock: no file system |
//! | device (vioblk, vioscsi, vionet) | pledge `stdio vmm proc` once set up (vmd's; its descriptors came as a message before) | once set up: seccomp of a device server (its image or tap descriptors, poll, socket messages; no open, socket, exec or threads); Landlock: no file system; no capabilities |
//!
//! Where OpenBSD's promises differ from vmd's it is for what this vmd
//! does differently: descriptors travel as messages (`sendfd`/`recvfd`:
//! std cannot place them in a child without `unsafe`), and the parent
//! removes the socket and pid file itself (`cpath`).
//!
//! On Linux the seccomp lists live in [`sys`]'s `seccomp.rs`, one table per
//! kind built from groups with a reason per call.  A denied call traps;
//! vmm-sys's SIGSYS reporter logs `forbidden system call <name>` and the
//! process dies of SIGSYS.  Filters stack across exec: a VM process runs
//! under the vmm process's filter and its own, a device process under
//! those and its own, so a parent's list holds what its children need
//! until they confine themselves.
//!
//! `VMD_SANDBOX` (documented in vmd.8): unset or `on` confines as above,
//! `off` not at all (debugging), `log` makes a denied call only logged by
//! the kernel (`SECCOMP_RET_LOG`, for finding what a list lacks), and
//! `strict` refuses to start a process whose Landlock rules the kernel
//! cannot enforce in full.
mod sys;

use thiserror::Error;

/// The environment variable that chooses the [`Mode`].
pub const ENV_SANDBOX: &str = "VMD_SANDBOX";

/// The process kinds, each with its confinement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Parent,
    Control,
    Vmm,
    Priv,
    /// A VM process from its start until its device processes run.
    Vm,
    /// A VM process running its vCPUs.
    VmRunning,
    /// A device process (`vmd -X -t <kind>`) once it is set up.
    Device(char),
}

impl Kind {
    /// The name log lines use.
    pub fn name(&self) -> String {
        match self {
            Kind::Parent => "parent".into(),
            Kind::Control => "control".into(),
            Kind::Vmm => "vmm".into(),
            Kind::Priv => "priv".into(),
            Kind::Vm => "vm".into(),
            Kind::VmRunning => "vm (running)".into(),
            Kind::Device(k) => format!("device {}", crate::vm::devproc::proxy::kind_name(*k)),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Off,
    On,
    /// Linux: denied calls are allowed and logged by the kernel.
    Log,
    /// As On, and a process whose Landlock rules are not fully enforced
    /// does not start.
    Strict,
}

/// The mode `VMD_SANDBOX` asks for; an unknown value is `on`, the safe
/// side, with a warning.
pub fn mode() -> Mode {
    match std::env::var(ENV_SANDBOX).as_deref() {
        Err(_) | Ok("") | Ok("on") | Ok("1") => Mode::On,
        Ok("off") | Ok("0") => Mode::Off,
        Ok("log") => Mode::Log,
        Ok("strict") => Mode::Strict,
        Ok(other) => {
            log::warn!("{ENV_SANDBOX}={other} is not off, on, log or strict: on");
            Mode::On
        }
    }
}

#[derive(Debug, Error)]
pub enum SandboxError {
    #[error("{what}: {source}")]
    Os {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("seccomp filter of {kind}: {msg}")]
    Seccomp { kind: String, msg: String },
    #[error("landlock of {kind}: {msg}")]
    Landlock { kind: String, msg: String },
    #[error("landlock not fully enforced for {kind} ({status}) and {ENV_SANDBOX}=strict")]
    NotEnforced { kind: String, status: String },
    #[error("{what}: {source}")]
    Vmm {
        what: &'static str,
        source: vmm_sys::VmmError,
    },
}

/// What a process needs to know about itself to be confined.
#[derive(Clone, Debug, Default)]
pub struct Context {
    /// vmd's own binary (vmm and VM processes execute it).
    pub exe: Option<std::path::PathBuf>,
}

/// Confines this process as `kind`, logging what was applied; nothing in
/// mode `off`.
pub fn confine(kind: Kind, ctx: &Context) -> Result<(), SandboxError> {
    let mode = mode();
    if mode == Mode::Off {
        log::debug!("{}: not confined ({ENV_SANDBOX}=off)", kind.name());
        return Ok(());
    }
    let applied = sys::confine(kind, ctx, mode)?;
    log::debug!("{}: confined: {applied}", kind.name());
    Ok(())
}

/// Confines as `kind` or ends the process with vmd's fatal message.
pub fn confine_or_die(kind: Kind, ctx: &Context) {
    if let Err(e) = confine(kind, ctx) {
        crate::daemon::logging::fatal("sandbox", e);
    }
}

/// The hidden test hook `VMD_SANDBOX_TEST=<process>:<what>` (`<process>`
/// as [`Kind::name`] says it, e.g. `device vioblk`): once confined, that
/// process makes a call its confinement forbids, so that a test sees the
/// confinement work.  `call` makes a system call the OS's confinement
/// never allows and that is harmless if it were (personality(2) in its
/// query form on Linux, chroot(2) to `/` on OpenBSD); `path` opens
/// `/etc/passwd` for reading, which Landlock refuses to vmm and to the VM
/// process until it runs its guest (the running VM and the device
/// processes may not even call open), and logs the result.  Nothing an
/// administrator could not do anyway: the hook only hurts the process
/// that runs it.
pub fn test_hook(kind: Kind) {
    let Ok(v) = std::env::var("VMD_SANDBOX_TEST") else {
        return;
    };
    let Some((who, what)) = v.rsplit_once(':') else {
        return;
    };
    if who != kind.name() {
        return;
    }
    match what {
        "call" => {
            let name = kind.name();
            let call = sys::FORBIDDEN_CALL;
            log::info!("{name}: sandbox test: calling {call}");
            let r = sys::forbidden_call();
            log::warn!("{name}: sandbox test: {call} allowed: {r}");
        }
        "path" => match std::fs::File::open("/etc/passwd") {
            Ok(_) => log::warn!("{}: sandbox test: /etc/passwd opened", kind.name()),
            Err(e) => log::warn!("{}: sandbox test: /etc/passwd: {e}", kind.name()),
        },
        _ => {}
    }
}
