//! Interfaces on OpenBSD: the ioctls vmd's priv.c issues, on an AF_INET
//! and an AF_INET6 datagram socket, with the request structures of
//! `<net/if.h>`, `<net/if_bridge.h>` and `<netinet6/in6_var.h>` (amd64
//! layouts; sizes are checked at compile time because each ioctl number
//! encodes its structure's size).
//!
//! The priv process is the only user, and it is root: OpenBSD's pledge
//! has no promise for these write ioctls (priv.c runs unpledged too).
// The interface ioctls need `unsafe` (libc::ioctl on a pointer to a
// request structure); each block says why it is sound.
#![allow(unsafe_code)]

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

use crate::sys::netif::{IfKind, NetifError};

const IFNAMSIZ: usize = 16;
const IFF_UP: i16 = 0x1;
/// `ND6_INFINITE_LIFETIME`.
const ND6_INFINITE_LIFETIME: u32 = 0xffff_ffff;

/// `_IOW('i', num, len)` and `_IOWR('i', num, len)` of `<sys/ioccom.h>`.
const fn ioc(inout: u64, num: u64, len: usize) -> u64 {
    inout | (((len as u64) & 0x1fff) << 16) | ((b'i' as u64) << 8) | num
}
const fn iow(num: u64, len: usize) -> u64 {
    ioc(0x8000_0000, num, len)
}
const fn iowr(num: u64, len: usize) -> u64 {
    ioc(0xc000_0000, num, len)
}

/// `struct ifreq`: the name and a 16-byte union (`ifru_flags`,
/// `ifru_metric` = `ifr_rdomainid`, `ifru_data`), 8-aligned by its
/// pointer member.
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    ifru: [u64; 2],
}

/// `struct ifgroupreq`.
#[repr(C)]
struct IfGroupReq {
    name: [u8; IFNAMSIZ],
    len: u32,
    _pad: u32,
    group: [u8; IFNAMSIZ],
}

/// `struct ifbreq` (if_bridge.h, bridge(4) and veb(4)).
#[repr(C)]
#[derive(Default)]
struct IfBreq {
    name: [u8; IFNAMSIZ],
    ifsname: [u8; IFNAMSIZ],
    ifsflags: u32,
    portno: u32,
    protected: u32,
    state: u8,
    priority: u8,
    path_cost: u32,
    stpflags: u32,
    proto: u8,
    role: u8,
    fwd_trans: u32,
    desg_bridge: u64,
    desg_port: u32,
    root_bridge: u64,
    root_cost: u32,
    root_port: u32,
}

/// `struct sockaddr_in`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct SockaddrIn {
    len: u8,
    family: u8,
    port: u16,
    addr: [u8; 4],
    zero: [u8; 8],
}

/// `struct ifaliasreq`.
#[repr(C)]
#[derive(Default)]
struct IfAliasReq {
    name: [u8; IFNAMSIZ],
    addr: SockaddrIn,
    dstaddr: SockaddrIn,
    mask: SockaddrIn,
}

/// `struct sockaddr_in6`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct SockaddrIn6 {
    len: u8,
    family: u8,
    port: u16,
    flowinfo: u32,
    addr: [u8; 16],
    scope_id: u32,
}

/// `struct in6_addrlifetime`.
#[repr(C)]
#[derive(Default)]
struct In6AddrLifetime {
    expire: i64,
    preferred: i64,
    vltime: u32,
    pltime: u32,
}

/// `struct in6_aliasreq`.
#[repr(C)]
#[derive(Default)]
struct In6AliasReq {
    name: [u8; IFNAMSIZ],
    addr: SockaddrIn6,
    dstaddr: SockaddrIn6,
    prefixmask: SockaddrIn6,
    flags: i32,
    lifetime: In6AddrLifetime,
}

const _: () = assert!(std::mem::size_of::<IfReq>() == 32);
const _: () = assert!(std::mem::size_of::<IfGroupReq>() == 40);
const _: () = assert!(std::mem::size_of::<IfBreq>() == 96);
const _: () = assert!(std::mem::size_of::<IfAliasReq>() == 64);
const _: () = assert!(std::mem::size_of::<In6AliasReq>() == 128);

const SIOCAIFADDR: u64 = iow(26, std::mem::size_of::<IfAliasReq>());
const SIOCAIFADDR_IN6: u64 = iow(26, std::mem::size_of::<In6AliasReq>());
const SIOCSIFFLAGS: u64 = iow(16, std::mem::size_of::<IfReq>());
const SIOCGIFFLAGS: u64 = iowr(17, std::mem::size_of::<IfReq>());
const SIOCGIFADDR: u64 = iowr(33, std::mem::size_of::<IfReq>());
const SIOCBRDGADD: u64 = iow(60, std::mem::size_of::<IfBreq>());
const SIOCIFCREATE: u64 = iow(122, std::mem::size_of::<IfReq>());
const SIOCSIFDESCR: u64 = iow(128, std::mem::size_of::<IfReq>());
const SIOCAIFGROUP: u64 = iow(135, std::mem::size_of::<IfGroupReq>());
const SIOCSIFRDOMAIN: u64 = iow(159, std::mem::size_of::<IfReq>());

/// A NUL-terminated copy of `s` in a C name buffer, or an error when it
/// does not fit (strlcpy's truncation is refused rather than applied).
fn cname<const N: usize>(s: &str, what: &str) -> Result<[u8; N], NetifError> {
    let b = s.as_bytes();
    if b.len() >= N || b.contains(&0) {
        return Err(NetifError::WrongKind {
            ifname: s.to_string(),
            why: format!("{what} too long"),
        });
    }
    let mut out = [0u8; N];
    out[..b.len()].copy_from_slice(b);
    Ok(out)
}

fn ifreq(ifname: &str) -> Result<IfReq, NetifError> {
    Ok(IfReq {
        name: cname(ifname, "interface name")?,
        ifru: [0; 2],
    })
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

    /// One ioctl on `fd` with a request structure.
    fn ioctl<T>(
        fd: BorrowedFd,
        req: u64,
        arg: &mut T,
        op: &'static str,
        ifname: &str,
    ) -> Result<(), NetifError> {
        // SAFETY: `arg` is a live, exclusively borrowed #[repr(C)] request
        // structure whose size is the one encoded in `req` (asserted
        // above), so the kernel reads and writes only inside it; `fd` is
        // an open descriptor for the duration of the call.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as libc::c_ulong, arg as *mut T) };
        if r == -1 {
            Err(NetifError::os(op, ifname, std::io::Error::last_os_error()))
        } else {
            Ok(())
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.inet.as_fd()
    }

    /// On OpenBSD the name says the kind (`tapN` is tap(4), `bridgeN`
    /// bridge(4), `vebN` veb(4)): nothing more to check.
    pub fn check_kind(&mut self, _ifname: &str, _kind: IfKind) -> Result<(), NetifError> {
        Ok(())
    }

    pub fn set_description(&mut self, ifname: &str, descr: &str) -> Result<(), NetifError> {
        let mut d: [u8; 64] = cname(descr, "description")?;
        let mut ifr = ifreq(ifname)?;
        ifr.ifru[0] = d.as_mut_ptr() as u64;
        Self::ioctl(self.fd(), SIOCSIFDESCR, &mut ifr, "SIOCSIFDESCR", ifname)
    }

    pub fn set_rdomain(&mut self, ifname: &str, rdomain: u32) -> Result<(), NetifError> {
        let mut ifr = ifreq(ifname)?;
        ifr.ifru[0] = u64::from(rdomain);
        Self::ioctl(
            self.fd(),
            SIOCSIFRDOMAIN,
            &mut ifr,
            "SIOCSIFRDOMAIN",
            ifname,
        )
    }

    fn flags(&self, ifname: &str) -> Result<i16, NetifError> {
        let mut ifr = ifreq(ifname)?;
        Self::ioctl(self.fd(), SIOCGIFFLAGS, &mut ifr, "SIOCGIFFLAGS", ifname)?;
        Ok((ifr.ifru[0] & 0xffff) as u16 as i16)
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
        let mut ifr = ifreq(ifname)?;
        match Self::ioctl(self.fd(), SIOCIFCREATE, &mut ifr, "SIOCIFCREATE", ifname) {
            Ok(()) => Ok(true),
            Err(NetifError::Os { source, .. }) if source.raw_os_error() == Some(libc::EEXIST) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    pub fn switch_add(&mut self, switch: &str, member: &str) -> Result<(), NetifError> {
        let mut b = IfBreq {
            name: cname(switch, "switch name")?,
            ifsname: cname(member, "interface name")?,
            ..IfBreq::default()
        };
        match Self::ioctl(self.fd(), SIOCBRDGADD, &mut b, "SIOCBRDGADD", switch) {
            Err(NetifError::Os { source, .. }) if source.raw_os_error() == Some(libc::EEXIST) => {
                Ok(())
            }
            r => r,
        }
    }

    pub fn set_up(&mut self, ifname: &str, up: bool) -> Result<(), NetifError> {
        let f = self.flags(ifname)?;
        let f = if up { f | IFF_UP } else { f & !IFF_UP };
        let mut ifr = ifreq(ifname)?;
        ifr.ifru[0] = u64::from(f as u16);
        Self::ioctl(self.fd(), SIOCSIFFLAGS, &mut ifr, "SIOCSIFFLAGS", ifname)
    }

    pub fn add_group(&mut self, ifname: &str, group: &str) -> Result<(), NetifError> {
        let mut g = IfGroupReq {
            name: cname(ifname, "interface name")?,
            len: 0,
            _pad: 0,
            group: cname(group, "group name")?,
        };
        match Self::ioctl(self.fd(), SIOCAIFGROUP, &mut g, "SIOCAIFGROUP", ifname) {
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
        let sin = |a: Ipv4Addr| SockaddrIn {
            len: std::mem::size_of::<SockaddrIn>() as u8,
            family: libc::AF_INET as u8,
            addr: a.octets(),
            ..SockaddrIn::default()
        };
        let mut ifra = IfAliasReq {
            name: cname(ifname, "interface name")?,
            addr: sin(addr),
            mask: sin(mask),
            ..IfAliasReq::default()
        };
        Self::ioctl(self.fd(), SIOCAIFADDR, &mut ifra, "SIOCAIFADDR", ifname)
    }

    pub fn add_inet6(
        &mut self,
        ifname: &str,
        addr: Ipv6Addr,
        mask: Ipv6Addr,
    ) -> Result<(), NetifError> {
        use std::os::fd::AsFd;
        let sin6 = |a: Ipv6Addr| SockaddrIn6 {
            len: std::mem::size_of::<SockaddrIn6>() as u8,
            family: libc::AF_INET6 as u8,
            addr: a.octets(),
            ..SockaddrIn6::default()
        };
        let mut ifra = In6AliasReq {
            name: cname(ifname, "interface name")?,
            addr: sin6(addr),
            prefixmask: sin6(mask),
            lifetime: In6AddrLifetime {
                vltime: ND6_INFINITE_LIFETIME,
                pltime: ND6_INFINITE_LIFETIME,
                ..In6AddrLifetime::default()
            },
            ..In6AliasReq::default()
        };
        Self::ioctl(
            self.inet6.as_fd(),
            SIOCAIFADDR_IN6,
            &mut ifra,
            "SIOCAIFADDR_IN6",
            ifname,
        )
    }

    /// tap(4): `SIOCGIFADDR` on the device's descriptor gives the
    /// interface's Ethernet address (into an ifreq-sized buffer: the
    /// kernel copies out as many bytes as the request number says).
    pub fn tap_lladdr(&mut self, tap: BorrowedFd) -> Result<[u8; 6], NetifError> {
        let mut buf = IfReq {
            name: [0; IFNAMSIZ],
            ifru: [0; 2],
        };
        Self::ioctl(tap, SIOCGIFADDR, &mut buf, "SIOCGIFADDR", "tap")?;
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&buf.name[..6]);
        Ok(mac)
    }
}
