//! Local interfaces' networking with no OS code (issue 8 §4): the
//! address rule priv and the DHCP server share ([`local`]), vmd's
//! built-in DHCP/BOOTP server that the vionet device consults for every
//! frame a guest sends on a local interface ([`dhcp`]), and the
//! Ethernet/IPv4/UDP headers it reads and writes ([`packet`]).  Nothing
//! here does I/O, so the same code serves OpenBSD and Linux.
pub mod dhcp;
pub mod local;
pub mod packet;

pub use dhcp::LocalServer;
pub use local::{LocalAddrError, LocalLease};

#[cfg(test)]
mod property_tests;
#[cfg(test)]
mod tests;
