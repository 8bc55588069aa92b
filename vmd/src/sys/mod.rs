//! Per-OS code of vmd outside vmm(4) (crosvm's layout): one module per
//! host, chosen by one `cfg`, each with the same items.
//!
//! - `tap`: opening a VM's tap as the parent does (`/dev/tapN` on
//!   OpenBSD, `/dev/net/tun` with IFF_TAP|IFF_NO_PI on Linux), by name
//!   or the first free one.
//! - [`netif`]: what the priv process does to network interfaces
//!   (descriptions, groups, rdomains, up/down, bridges, addresses, a
//!   tap's MAC): ioctls on OpenBSD, rtnetlink on Linux.
#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "openbsd")]
mod openbsd;
#[cfg(target_os = "linux")]
use linux as os;
#[cfg(target_os = "openbsd")]
use openbsd as os;

pub mod netif;

#[cfg(target_os = "linux")]
pub use linux::tap::open_tap;
#[cfg(target_os = "openbsd")]
pub use openbsd::tap::open_tap;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::devices::virtio::net::NetPort;

/// vmd's MAX_TAP: `tap0` … `tap255` are tried for an unnamed NIC.
pub const MAX_TAP: u32 = 256;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("invalid interface: {0}")]
    Name(String),
    #[error("can't open tap {name}: {source}")]
    Open {
        name: String,
        source: std::io::Error,
    },
    #[error("can't open tap: no free tap among tap0 to tap{}", MAX_TAP - 1)]
    NoneFree,
}

impl TapError {
    pub fn errno(&self) -> i32 {
        match self {
            TapError::Name(_) => libc::EINVAL,
            TapError::Open { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            TapError::NoneFree => libc::EBUSY,
        }
    }
}

/// The unit of a tap name: `tapN` → Some(N), `tap` → None (the next
/// free one); anything else is refused, so that no other path or
/// interface can be named.
pub fn tap_unit(name: &str) -> Result<Option<u32>, TapError> {
    let bad = || TapError::Name(name.to_string());
    let digits = name.strip_prefix("tap").ok_or_else(bad)?;
    if digits.is_empty() {
        return Ok(None);
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) || (digits.len() > 1 && digits.starts_with('0'))
    {
        return Err(bad());
    }
    match digits.parse::<u32>() {
        Ok(n) if n < MAX_TAP => Ok(Some(n)),
        _ => Err(bad()),
    }
}

/// An open tap: its descriptor (non-blocking) and the interface's name.
#[derive(Debug)]
pub struct Tap {
    pub file: File,
    pub name: String,
}

impl Tap {
    /// A tap received as a descriptor (in the VM or device process).
    pub fn from_fd(fd: OwnedFd, name: String) -> std::io::Result<Tap> {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        // The device reads only when it has somewhere to put a frame,
        // and must never block on the tap.
        let fl = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL)?);
        fcntl(&fd, FcntlArg::F_SETFL(fl | OFlag::O_NONBLOCK))?;
        Ok(Tap {
            file: File::from(fd),
            name,
        })
    }
}

impl NetPort for Tap {
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        loop {
            match self.file.read(buf) {
                Ok(n) => return Ok(Some(n).filter(|&n| n > 0)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        // One write is one frame on a tap.
        let n = self.file.write(frame)?;
        if n != frame.len() {
            return Err(std::io::Error::other(format!(
                "short write of {n} of {} bytes",
                frame.len()
            )));
        }
        Ok(())
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.file.as_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_as_vmd_takes_them() {
        assert_eq!(tap_unit("tap").unwrap(), None);
        assert_eq!(tap_unit("tap0").unwrap(), Some(0));
        assert_eq!(tap_unit("tap255").unwrap(), Some(255));
        for bad in [
            "tap256",
            "tap01",
            "tap-1",
            "tap1/../x",
            "vether0",
            "",
            "tapx",
            "tap 1",
        ] {
            assert_eq!(
                tap_unit(bad).unwrap_err().to_string(),
                format!("invalid interface: {bad}")
            );
        }
    }
}
