//! The backend, chosen by target OS: the one `cfg` that selects per-OS code.
#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub use linux::hostif;
#[cfg(target_os = "linux")]
pub(crate) use linux::{install_sigsys_reporter, pledge, unveil, Device, DEVICE_PATH};

#[cfg(target_os = "openbsd")]
mod openbsd;
#[cfg(target_os = "openbsd")]
pub use openbsd::hostif;
#[cfg(target_os = "openbsd")]
pub(crate) use openbsd::{pledge, unveil, Device, DEVICE_PATH};
