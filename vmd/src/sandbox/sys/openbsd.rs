//! OpenBSD: pledge(2) and unveil(2) as vmd calls them (reference §3.2).
use super::super::{Context, Kind, Mode, SandboxError};

/// Each kind's promises.  vmd's own where this vmd does the same thing;
/// `sendfd`/`recvfd` where descriptors come as messages (vmd's children
/// inherit theirs across fork and exec), `cpath` for the parent, which
/// removes its socket and pid file.
pub(crate) fn promises(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::Parent => {
            Some("stdio rpath wpath cpath proc tty recvfd sendfd getpw chown fattr flock")
        }
        Kind::Control => Some("stdio unix recvfd sendfd"),
        Kind::Vmm => Some("stdio vmm sendfd recvfd proc exec ps"),
        // "First proc runs as root without pledge but in default chroot."
        Kind::Priv => None,
        Kind::Vm => Some("stdio vmm proc exec sendfd"),
        Kind::VmRunning => Some("stdio vmm"),
        // vioblk.c and vionet.c: "stdio vmm proc" (the set-up message
        // with the descriptors came before).
        Kind::Device(_) => Some("stdio vmm proc"),
    }
}

/// The sandbox test hook's forbidden call: chroot(2) to `/`, which no
/// pledge promise allows (harmless if it were allowed: the root stays
/// where it is).
pub(in crate::sandbox) const FORBIDDEN_CALL: &str = "chroot(2)";

pub(in crate::sandbox) fn forbidden_call() -> String {
    format!("{:?}", nix::unistd::chroot("/"))
}

pub(in crate::sandbox) fn confine(
    kind: Kind,
    ctx: &Context,
    _mode: Mode,
) -> Result<String, SandboxError> {
    let os = |what| move |source| SandboxError::Vmm { what, source };
    let mut applied = Vec::new();
    // "We aren't root, so we can't chroot(2). Use unveil(2) instead."
    if matches!(kind, Kind::Vmm | Kind::Vm) {
        if let Some(exe) = &ctx.exe {
            vmm_sys::unveil(Some(exe), Some("x")).map_err(os("unveil"))?;
            applied.push(format!("unveil {} x", exe.display()));
        }
        vmm_sys::unveil(None, None).map_err(os("unveil lock"))?;
    }
    if let Some(p) = promises(kind) {
        vmm_sys::pledge(Some(p), None).map_err(os("pledge"))?;
        applied.push(format!("pledge \"{p}\""));
    }
    if applied.is_empty() {
        applied.push("nothing (as vmd)".into());
    }
    Ok(applied.join(", "))
}
