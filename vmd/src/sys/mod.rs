//! Per-OS code of the daemon, chosen by one `cfg` (crosvm's layout, as
//! vmm-sys does): `linux` and `openbsd` offer the same names, used
//! through the OS-independent modules here.
//!
//! - [`netif`]: what the priv process does to network interfaces
//!   (descriptions, groups, rdomains, up/down, bridges, addresses, a
//!   tap's MAC): ioctls on OpenBSD, rtnetlink on Linux.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
use linux as os;

#[cfg(target_os = "openbsd")]
mod openbsd;
#[cfg(target_os = "openbsd")]
use openbsd as os;

pub mod netif;
