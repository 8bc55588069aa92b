//! The daemon's own process plumbing.  The messages its processes
//! exchange, and their framing, are [`vmd_proto`]'s, shared with vmctl.

use std::io;
use std::os::fd::AsFd;

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

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn proc_peer_credentials() {
        let (a, _b) = UnixStream::pair().unwrap();
        let c = peer_credentials(&a).unwrap();
        assert_eq!(c.uid, nix::unistd::geteuid().as_raw());
        assert_eq!(c.gid, nix::unistd::getegid().as_raw());
    }
}
