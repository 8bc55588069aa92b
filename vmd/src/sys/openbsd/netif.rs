//! Interfaces on OpenBSD: the ioctls vmd's priv.c issues, on an AF_INET
//! and an AF_INET6 datagram socket.  The ioctls themselves, with their
//! request structures, are vmm-sys's (`vmm_sys::hostif`, one safe
//! function per request), so that this file needs no `unsafe`.
//!
//! The priv process is the only user, and it is root: OpenBSD's pledge
//! has no promise for these write ioctls (priv.c runs unpledged too).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use vmm_sys::hostif;

use crate::sys::netif::{IfKind, NetifError};

const IFNAMSIZ: usize = 16;
/// `IFDESCRSIZE`.
const IFDESCRSIZE: usize = 64;
const IFF_UP: i16 = 0x1;

/// Refuses `s` when it does not fit a C buffer of `n` bytes with its NUL
/// (strlcpy's truncation is refused rather than applied), with an error
/// that names it, before hostif would refuse it with a bare EINVAL.
fn fits(s: &str, n: usize, what: &str) -> Result<(), NetifError> {
    if s.len() >= n || s.as_bytes().contains(&0) {
        return Err(NetifError::WrongKind {
            ifname: s.to_string(),
            why: format!("{what} too long"),
        });
    }
    Ok(())
}

fn ifname_fits(ifname: &str) -> Result<(), NetifError> {
    fits(ifname, IFNAMSIZ, "interface name")
}

pub struct NetIf {
    inet: OwnedFd,
    inet6: OwnedFd,
}

impl NetIf {
    /// priv_run: "our own socket for generic interface ioctls", and one
    /// for IPv6.
    pub fn open() -> Result<NetIf, NetifError> {
        let inet = socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| NetifError::os("socket", "inet", e.into()))?;
        let inet6 = socket(
            AddressFamily::Inet6,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| NetifError::os("socket6", "inet6", e.into()))?;
        Ok(NetIf { inet, inet6 })
    }

    /// The outcome of one request, with the request's name and the
    /// interface's in the error.
    fn os(r: std::io::Result<()>, op: &'static str, ifname: &str) -> Result<(), NetifError> {
        r.map_err(|e| NetifError::os(op, ifname, e))
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.inet.as_fd()
    }

    /// On OpenBSD the name says the kind (`tapN` is tap(4), `bridgeN`
    /// bridge(4), `vebN` veb(4)): nothing more to check.
    pub fn check_kind(&mut self, _ifname: &str, _kind: IfKind) -> Result<(), NetifError> {
        Ok(())
    }

    pub fn set_description(&mut self, ifname: &str, descr: &str) -> Result<(), NetifError> {
        fits(descr, IFDESCRSIZE, "description")?;
        ifname_fits(ifname)?;
        Self::os(
            hostif::set_description(self.fd(), ifname, descr),
            "SIOCSIFDESCR",
            ifname,
        )
    }

    pub fn set_rdomain(&mut self, ifname: &str, rdomain: u32) -> Result<(), NetifError> {
        ifname_fits(ifname)?;
        Self::os(
            hostif::set_rdomain(self.fd(), ifname, rdomain),
            "SIOCSIFRDOMAIN",
            ifname,
        )
    }

    fn flags(&self, ifname: &str) -> Result<i16, NetifError> {
        ifname_fits(ifname)?;
        hostif::get_flags(self.fd(), ifname).map_err(|e| NetifError::os("SIOCGIFFLAGS", ifname, e))
    }

    pub fn exists(&mut self, ifname: &str) -> Result<bool, NetifError> {
        match self.flags(ifname) {
            Ok(_) => Ok(true),
            Err(NetifError::Os { source, .. }) if source.raw_os_error() == Some(libc::ENXIO) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// `SIOCIFCREATE` of a bridge(4) or veb(4); whether it was created.
    pub fn create_switch(&mut self, ifname: &str) -> Result<bool, NetifError> {
        ifname_fits(ifname)?;
        match Self::os(hostif::create(self.fd(), ifname), "SIOCIFCREATE", ifname) {
            Ok(()) => Ok(true),
            Err(NetifError::Os { source, .. }) if source.raw_os_error() == Some(libc::EEXIST) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    pub fn switch_add(&mut self, switch: &str, member: &str) -> Result<(), NetifError> {
        fits(switch, IFNAMSIZ, "switch name")?;
        ifname_fits(member)?;
        match Self::os(
            hostif::bridge_add(self.fd(), switch, member),
            "SIOCBRDGADD",
            switch,
        ) {
            Err(NetifError::Os { source, .. }) if source.raw_os_error() == Some(libc::EEXIST) => {
                Ok(())
            }
            r => r,
        }
    }

    pub fn set_up(&mut self, ifname: &str, up: bool) -> Result<(), NetifError> {
        let f = self.flags(ifname)?;
        let f = if up { f | IFF_UP } else { f & !IFF_UP };
        Self::os(
            hostif::set_flags(self.fd(), ifname, f),
            "SIOCSIFFLAGS",
            ifname,
        )
    }

    pub fn add_group(&mut self, ifname: &str, group: &str) -> Result<(), NetifError> {
        ifname_fits(ifname)?;
        fits(group, IFNAMSIZ, "group name")?;
        match Self::os(
            hostif::add_group(self.fd(), ifname, group),
            "SIOCAIFGROUP",
            ifname,
        ) {
            Err(NetifError::Os { source, .. }) if source.raw_os_error() == Some(libc::EEXIST) => {
                Ok(())
            }
            r => r,
        }
    }

    pub fn add_inet(
        &mut self,
        ifname: &str,
        addr: Ipv4Addr,
        mask: Ipv4Addr,
    ) -> Result<(), NetifError> {
        ifname_fits(ifname)?;
        Self::os(
            hostif::add_inet(self.fd(), ifname, addr, mask),
            "SIOCAIFADDR",
            ifname,
        )
    }

    pub fn add_inet6(
        &mut self,
        ifname: &str,
        addr: Ipv6Addr,
        mask: Ipv6Addr,
    ) -> Result<(), NetifError> {
        ifname_fits(ifname)?;
        Self::os(
            hostif::add_inet6(self.inet6.as_fd(), ifname, addr, mask),
            "SIOCAIFADDR_IN6",
            ifname,
        )
    }

    /// tap(4): `SIOCGIFADDR` on the device's descriptor gives the
    /// interface's Ethernet address.
    pub fn tap_lladdr(&mut self, tap: BorrowedFd) -> Result<[u8; 6], NetifError> {
        hostif::tap_lladdr(tap).map_err(|e| NetifError::os("SIOCGIFADDR", "tap", e))
    }
}
