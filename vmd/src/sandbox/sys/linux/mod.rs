//! Linux: no_new_privs, a seccomp-bpf allow-list per kind ([`seccomp`]),
//! Landlock rules on the file system, and no capabilities in the
//! processes that face the guest.
mod seccomp;

use super::super::{Context, Kind, Mode, SandboxError};
use landlock::{
    Access, AccessFs, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    Scope, ABI,
};
use seccomp::IoctlRule;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The sandbox test hook's forbidden call: personality(2) in its query
/// form, which no seccomp list allows (harmless if it were allowed).
pub(in crate::sandbox) const FORBIDDEN_CALL: &str = "personality(2)";

pub(in crate::sandbox) fn forbidden_call() -> String {
    format!("{:?}", nix::sys::personality::get())
}

pub(in crate::sandbox) fn confine(
    kind: Kind,
    ctx: &Context,
    mode: Mode,
) -> Result<String, SandboxError> {
    let mut applied = Vec::new();
    nix::sys::prctl::set_no_new_privs().map_err(|e| SandboxError::Os {
        what: "PR_SET_NO_NEW_PRIVS",
        source: e.into(),
    })?;
    applied.push("no_new_privs".to_string());
    if matches!(kind, Kind::Vm | Kind::VmRunning | Kind::Device(_)) {
        drop_capabilities()?;
        applied.push("no capabilities".into());
    }
    applied.push(landlock(kind, ctx, mode)?);
    applied.push(seccomp(kind, mode)?);
    Ok(applied.join(", "))
}

/// Every capability: the bounding set where this process may change it,
/// then the ambient, inheritable, effective and permitted sets.
fn drop_capabilities() -> Result<(), SandboxError> {
    use caps::CapSet;
    let err = |e: caps::errors::CapsError| SandboxError::Os {
        what: "dropping capabilities",
        source: std::io::Error::other(e.to_string()),
    };
    if caps::has_cap(None, CapSet::Effective, caps::Capability::CAP_SETPCAP).unwrap_or(false) {
        caps::clear(None, CapSet::Bounding).map_err(err)?;
    }
    caps::clear(None, CapSet::Ambient).map_err(err)?;
    caps::clear(None, CapSet::Inheritable).map_err(err)?;
    caps::clear(None, CapSet::Effective).map_err(err)?;
    caps::clear(None, CapSet::Permitted).map_err(err)?;
    Ok(())
}

/// What a kind may reach of the file system: `(path, execute)`; read
/// access to each, execute too when said.
fn landlock_paths(kind: Kind, ctx: &Context) -> Option<Vec<(PathBuf, bool)>> {
    match kind {
        // The parent opens whatever vm.conf and vmctl name (as vmd, no
        // unveil).
        Kind::Parent => None,
        // vmd's binary, to execute VM and device processes, and the
        // libraries and loader it maps, which the new image maps again;
        // /proc for std's start-up (the main thread's stack), the
        // loader's cache.
        Kind::Vmm | Kind::Vm => {
            // Execute for all of them: the kernel opens the loader (the
            // ELF interpreter) for execution, as the binary.
            let mut v: Vec<(PathBuf, bool)> =
                mapped_files().into_iter().map(|p| (p, true)).collect();
            if let Some(exe) = &ctx.exe {
                if !v.iter().any(|(p, _)| p == exe) {
                    v.push((exe.clone(), true));
                }
            }
            for p in ["/etc/ld.so.cache", "/proc"] {
                if Path::new(p).exists() {
                    v.push((PathBuf::from(p), false));
                }
            }
            Some(v)
        }
        // Nothing at all.
        Kind::Control | Kind::Priv | Kind::VmRunning | Kind::Device(_) => Some(Vec::new()),
    }
}

/// The regular files mapped into this process (its binary, the loader
/// and libraries), from /proc/self/maps.
fn mapped_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_to_string("/proc/self/maps")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.starts_with('/'))
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v.dedup();
    v
}

fn landlock(kind: Kind, ctx: &Context, mode: Mode) -> Result<String, SandboxError> {
    let Some(paths) = landlock_paths(kind, ctx) else {
        return Ok("landlock: none for this process".into());
    };
    let ll = |e: &dyn std::fmt::Display| SandboxError::Landlock {
        kind: kind.name(),
        msg: e.to_string(),
    };
    let abi = ABI::V6;
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(|e| ll(&e))?;
    // Signals only to processes of this domain and those nested in it
    // (its children): a VM process cannot signal another VM's processes,
    // which run as the same user.  Not for the running VM: its device
    // processes, which it must be able to end, were started in the
    // domain before.  Abstract sockets likewise.
    let scoped = kind != Kind::VmRunning;
    if scoped {
        ruleset = ruleset
            .scope(Scope::AbstractUnixSocket | Scope::Signal)
            .map_err(|e| ll(&e))?;
    }
    let mut ruleset = ruleset.create().map_err(|e| ll(&e))?;
    let mut allowed = Vec::new();
    for (p, exec) in &paths {
        let fd = match PathFd::new(p) {
            Ok(fd) => fd,
            Err(e) => {
                log::debug!("{}: landlock: {}: {e}", kind.name(), p.display());
                continue;
            }
        };
        let mut access = AccessFs::from_read(abi);
        if !exec {
            access.remove(AccessFs::Execute);
        }
        if p.is_file() {
            access &= AccessFs::from_file(abi);
        }
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, access))
            .map_err(|e| ll(&e))?;
        allowed.push(format!(
            "{}{}",
            p.display(),
            if *exec { " (x)" } else { "" }
        ));
    }
    let status = ruleset.restrict_self().map_err(|e| ll(&e))?;
    let mut what = if allowed.is_empty() {
        "no file system".to_string()
    } else {
        format!("read {}", allowed.join(" "))
    };
    if scoped {
        what.push_str("; signals and abstract sockets within its domain");
    }
    match status.ruleset {
        RulesetStatus::FullyEnforced => Ok(format!("landlock: {what}")),
        s => {
            let s = format!("{s:?}");
            if mode == Mode::Strict {
                return Err(SandboxError::NotEnforced {
                    kind: kind.name(),
                    status: s,
                });
            }
            log::info!(
                "{}: landlock {s} by this kernel (wanted: {what})",
                kind.name()
            );
            Ok(format!("landlock: {s}"))
        }
    }
}

fn cond(arg: u8, len: SeccompCmpArgLen, op: SeccompCmpOp, v: u64) -> SeccompCondition {
    // The arguments are constants of this file: valid by construction.
    SeccompCondition::new(arg, len, op, v).expect("seccomp condition")
}

fn rule(c: Vec<SeccompCondition>) -> SeccompRule {
    SeccompRule::new(c).expect("seccomp rule")
}

/// The kind's filter: its groups' calls, ioctl narrowed, clone narrowed.
fn filter(kind: Kind, mode: Mode) -> Result<Vec<BpfProgram>, SandboxError> {
    let err = |e: &dyn std::fmt::Display| SandboxError::Seccomp {
        kind: kind.name(),
        msg: e.to_string(),
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for g in seccomp::groups(kind) {
        for (call, _why) in g {
            rules.insert(call.id() as i64, Vec::new());
        }
    }
    use SeccompCmpArgLen::Dword;
    use SeccompCmpOp::{Eq, MaskedEq};
    let fd_ioctls = || {
        seccomp::FD_IOCTLS
            .iter()
            .map(|r| rule(vec![cond(1, Dword, Eq, *r)]))
    };
    let ioctl = match seccomp::ioctl_rule(kind) {
        IoctlRule::Any => Vec::new(),
        IoctlRule::KvmAndFd => {
            std::iter::once(rule(vec![cond(1, Dword, MaskedEq(0xff00), 0xae00)]))
                .chain(fd_ioctls())
                .collect()
        }
        IoctlRule::Fd => fd_ioctls().collect(),
        IoctlRule::FdAndTunName => fd_ioctls()
            .chain(std::iter::once(rule(vec![cond(
                1,
                Dword,
                Eq,
                libc::TUNGETIFF,
            )])))
            .collect(),
    };
    rules.insert(syscalls::Sysno::ioctl.id() as i64, ioctl);
    let threads_only = seccomp::threads_only(kind);
    if threads_only {
        rules.insert(
            syscalls::Sysno::clone.id() as i64,
            vec![rule(vec![cond(
                0,
                SeccompCmpArgLen::Qword,
                MaskedEq(libc::CLONE_THREAD as u64),
                libc::CLONE_THREAD as u64,
            )])],
        );
    }
    let deny = match mode {
        Mode::Log => SeccompAction::Log,
        _ => SeccompAction::Trap,
    };
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| err(&e))?;
    let main: BpfProgram = SeccompFilter::new(rules, deny, SeccompAction::Allow, arch)
        .and_then(|f| f.try_into())
        .map_err(|e| err(&e))?;
    let mut progs = vec![main];
    if threads_only {
        // clone3's flags are in memory, out of a filter's reach: refuse it
        // so that glibc makes its threads with clone, whose flags are
        // checked above.
        let mut m = BTreeMap::new();
        m.insert(syscalls::Sysno::clone3.id() as i64, Vec::new());
        let p: BpfProgram = SeccompFilter::new(
            m,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            arch,
        )
        .and_then(|f| f.try_into())
        .map_err(|e| err(&e))?;
        progs.push(p);
    }
    Ok(progs)
}

fn seccomp(kind: Kind, mode: Mode) -> Result<String, SandboxError> {
    let progs = filter(kind, mode)?;
    let syslog = crate::daemon::logging::syslog_fd();
    vmm_sys::install_sigsys_reporter(&kind.name(), syslog).map_err(|e| SandboxError::Vmm {
        what: "SIGSYS handler",
        source: e,
    })?;
    // The main filter last: it does not allow seccomp(2) itself.
    for p in progs.iter().rev() {
        // Every thread: the VM process has its device proxies' threads
        // when it is confined for running.
        seccompiler::apply_filter_all_threads(p).map_err(|e| SandboxError::Seccomp {
            kind: kind.name(),
            msg: e.to_string(),
        })?;
    }
    let n = seccomp::groups(kind)
        .iter()
        .flat_map(|g| g.iter().map(|(c, _)| *c))
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    Ok(format!(
        "seccomp: {n} calls allowed{}",
        if mode == Mode::Log {
            " (others logged)"
        } else {
            ""
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind's filter compiles (conditions, arch, sizes).
    #[test]
    fn every_filter_builds() {
        for k in [
            Kind::Parent,
            Kind::Control,
            Kind::Vmm,
            Kind::Priv,
            Kind::Vm,
            Kind::VmRunning,
            Kind::Device('d'),
            Kind::Device('s'),
        ] {
            let progs = filter(k, Mode::On).unwrap();
            assert!(!progs.is_empty() && progs[0].len() > 10, "{k:?}");
        }
    }

    /// The processes that face the guest allow less than those that
    /// start them, and never fork, exec or open a path.
    #[test]
    fn guest_facing_kinds_are_narrow() {
        let calls = |k| -> Vec<syscalls::Sysno> {
            seccomp::groups(k)
                .iter()
                .flat_map(|g| g.iter().map(|(c, _)| *c))
                .collect()
        };
        for k in [Kind::VmRunning, Kind::Device('d')] {
            let c = calls(k);
            for bad in [
                syscalls::Sysno::execve,
                syscalls::Sysno::openat,
                syscalls::Sysno::open,
                syscalls::Sysno::fork,
                syscalls::Sysno::vfork,
                syscalls::Sysno::ptrace,
                syscalls::Sysno::setresuid,
                syscalls::Sysno::personality,
                syscalls::Sysno::socket,
                syscalls::Sysno::connect,
            ] {
                assert!(!c.contains(&bad), "{k:?} allows {bad}");
            }
        }
        // The test hook's call is in no list.
        for k in [Kind::Parent, Kind::Control, Kind::Vmm, Kind::Priv, Kind::Vm] {
            assert!(!calls(k).contains(&syscalls::Sysno::personality), "{k:?}");
        }
    }
}
