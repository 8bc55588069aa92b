//! The per-OS part of confinement, chosen by one `cfg`.
#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(super) use linux::confine;

#[cfg(target_os = "openbsd")]
mod openbsd;
#[cfg(target_os = "openbsd")]
pub(super) use openbsd::confine;

/// Elsewhere: nothing to apply.
#[cfg(not(any(target_os = "linux", target_os = "openbsd")))]
pub(super) fn confine(
    _kind: super::Kind,
    _ctx: &super::Context,
    _mode: super::Mode,
) -> Result<String, super::SandboxError> {
    Ok("nothing (no confinement on this system)".into())
}
