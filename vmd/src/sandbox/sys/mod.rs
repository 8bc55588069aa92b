//! The per-OS part of confinement, chosen by one `cfg`.
#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(super) use linux::{confine, forbidden_call, FORBIDDEN_CALL};

#[cfg(target_os = "openbsd")]
mod openbsd;
#[cfg(target_os = "openbsd")]
pub(super) use openbsd::{confine, forbidden_call, FORBIDDEN_CALL};

/// Elsewhere: nothing to apply.
#[cfg(not(any(target_os = "linux", target_os = "openbsd")))]
pub(super) fn confine(
    _kind: super::Kind,
    _ctx: &super::Context,
    _mode: super::Mode,
) -> Result<String, super::SandboxError> {
    Ok("nothing (no confinement on this system)".into())
}

/// Elsewhere: no call is forbidden; the hook calls nothing.
#[cfg(not(any(target_os = "linux", target_os = "openbsd")))]
pub(super) const FORBIDDEN_CALL: &str = "nothing";
#[cfg(not(any(target_os = "linux", target_os = "openbsd")))]
pub(super) fn forbidden_call() -> String {
    "no confinement on this system".into()
}
