//! The daemon's processes and how they talk: imsg-style messages over Unix
//! stream sockets (reference §3.2-§3.7).
//!
//! - [`imsg`]: framing (a 16-byte header: type, length, flags, peer id,
//!   pid), the size limit, descriptors passed with `SCM_RIGHTS`, and
//!   [`ImsgChannel`], a buffered channel for blocking or non-blocking
//!   sockets.
//! - [`codec`]: payloads to bytes and back (serde + bincode, in that one
//!   module).
//! - [`msg`]: the message catalogue numbered as vmd.h, the payload
//!   structures (`vmop_result`, `vmop_id`, `vmop_info_result`,
//!   `vmop_create_params`, ...), and typed [`ImsgChannel::send`] /
//!   [`ImsgChannel::recv`].
//!
//! Nothing here panics on what a peer sends: a malformed, oversized or
//! undecodable message is an [`ImsgError`] naming the problem, and the
//! caller logs it and drops that peer.

pub mod codec;
pub mod imsg;
pub mod msg;

#[cfg(test)]
mod tests;

use std::io;
use std::os::fd::AsFd;

pub use codec::CodecError;
pub use imsg::{Imsg, ImsgChannel, ImsgError, ImsgHdr, ImsgReader, MAX_IMSGSIZE};
pub use msg::{ImsgType, Message, Received};

/// Who is on the other end of a Unix socket, for the control process's
/// permission checks (§3.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCred {
    pub uid: u32,
    pub gid: u32,
}

/// The effective uid and gid of a connected Unix socket's peer:
/// `SO_PEERCRED` on Linux, getpeereid(3) on OpenBSD and the other BSDs.
pub fn peer_credentials(sock: &impl AsFd) -> io::Result<PeerCred> {
    #[cfg(target_os = "linux")]
    {
        use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
        let c = getsockopt(sock, PeerCredentials)?;
        Ok(PeerCred {
            uid: c.uid(),
            gid: c.gid(),
        })
    }
    #[cfg(not(target_os = "linux"))]
    {
        let (uid, gid) = nix::unistd::getpeereid(sock.as_fd())?;
        Ok(PeerCred {
            uid: uid.as_raw(),
            gid: gid.as_raw(),
        })
    }
}
