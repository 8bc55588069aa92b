//! What the priv process does to network interfaces, on either OS: the
//! OS module's `NetIf` (ioctls on an AF_INET socket on OpenBSD, rtnetlink
//! on Linux) and the errors both report.
//!
//! Every operation names the interface it touches; the priv process has
//! already checked that the name is one vmd may touch (a tap, or a switch
//! vm.conf configured) before it gets here.
//!
//! `NetIf` offers, on both OSes:
//! `set_description`, `set_rdomain`, `exists`, `create_switch`,
//! `switch_add`, `set_up`, `add_group`, `add_inet`, `add_inet6`,
//! `tap_lladdr`, and `check_kind` (is this interface really a tap, a
//! bridge?).

pub use super::os::netif::NetIf;

/// The kinds of interfaces priv works on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IfKind {
    /// tap(4) (Linux: a tun device in tap mode).
    Tap,
    /// bridge(4) or veb(4) (Linux: a bridge).
    Switch,
}

#[derive(Debug, thiserror::Error)]
pub enum NetifError {
    /// The kernel refused: `SIOCSIFDESCR tap0: Operation not permitted`.
    #[error("{op} {ifname}: {source}")]
    Os {
        op: &'static str,
        ifname: String,
        source: std::io::Error,
    },
    #[error("{0}: no such interface")]
    NoSuchInterface(String),
    /// The interface exists but is not what vmd would touch (e.g. a
    /// `tap0` that is not a tap).
    #[error("{ifname}: {why}")]
    WrongKind { ifname: String, why: String },
    /// What this OS cannot do as OpenBSD does (Linux: a second interface
    /// group, an rdomain on a bridge member, ...).
    #[error("{ifname}: {why}")]
    Unsupported { ifname: String, why: String },
    /// A malformed answer from the kernel.
    #[error("netlink: {0}")]
    Protocol(String),
}

impl NetifError {
    pub(crate) fn os(op: &'static str, ifname: &str, source: std::io::Error) -> Self {
        NetifError::Os {
            op,
            ifname: ifname.to_string(),
            source,
        }
    }
}

#[cfg(target_os = "linux")]
pub use super::os::netif::{parse_group_table, Link, GROUP_TABLES};
