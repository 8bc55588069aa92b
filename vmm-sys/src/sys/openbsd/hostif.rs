//! Host network-interface ioctls that no crate wraps safely, on OpenBSD:
//! the `SIOC*` requests vmd's priv.c issues, one safe function each, with
//! the request structures of `<net/if.h>`, `<net/if_bridge.h>` and
//! `<netinet6/in6_var.h>` (amd64 layouts; sizes are checked at compile
//! time because each request number encodes its structure's size, and the
//! kernel copies exactly that many bytes in and out).
//!
//! Each function takes the socket to issue the request on (an AF_INET
//! datagram socket, AF_INET6 for [`add_inet6`]); names are refused with
//! EINVAL when they do not fit their buffer (no strlcpy truncation).
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

const IFNAMSIZ: usize = 16;
/// `IFDESCRSIZE`: the kernel reads at most this much of a description.
const IFDESCRSIZE: usize = 64;
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

/// A NUL-terminated copy of `s` in a C buffer of `N` bytes; EINVAL when it
/// does not fit or holds a NUL.
fn cstr<const N: usize>(s: &str) -> io::Result<[u8; N]> {
    let b = s.as_bytes();
    if b.len() >= N || b.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut out = [0u8; N];
    out[..b.len()].copy_from_slice(b);
    Ok(out)
}

fn ifreq(ifname: &str) -> io::Result<IfReq> {
    Ok(IfReq {
        name: cstr(ifname)?,
        ifru: [0; 2],
    })
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// SIOCSIFDESCR: sets `ifname`'s description (at most 63 bytes).
pub fn set_description(sock: BorrowedFd, ifname: &str, descr: &str) -> io::Result<()> {
    let mut d: [u8; IFDESCRSIZE] = cstr(descr)?;
    let mut ifr = ifreq(ifname)?;
    ifr.ifru[0] = d.as_mut_ptr() as u64;
    // SAFETY: SIOCSIFDESCR encodes the size of `struct ifreq`, the size of
    // `ifr`, a live local exclusively borrowed for the call; the kernel
    // copies it in, then reads the description through `ifru_data`, which
    // points to `d`, a live local of IFDESCRSIZE bytes holding a
    // NUL-terminated string (the kernel reads at most IFDESCRSIZE bytes).
    check(unsafe { libc::ioctl(sock.as_raw_fd(), SIOCSIFDESCR as _, &mut ifr) })
}

/// SIOCSIFRDOMAIN: moves `ifname` to routing domain `rdomain`.
pub fn set_rdomain(sock: BorrowedFd, ifname: &str, rdomain: u32) -> io::Result<()> {
    let mut ifr = ifreq(ifname)?;
    ifr.ifru[0] = u64::from(rdomain);
    // SAFETY: SIOCSIFRDOMAIN encodes the size of `struct ifreq`, the size
    // of `ifr`, a live local exclusively borrowed for the call, which
    // holds no pointers; the kernel copies exactly that many bytes in.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), SIOCSIFRDOMAIN as _, &mut ifr) })
}

/// SIOCGIFFLAGS: `ifname`'s flags (`IFF_*`); ENXIO when there is no such
/// interface.
pub fn get_flags(sock: BorrowedFd, ifname: &str) -> io::Result<i16> {
    let mut ifr = ifreq(ifname)?;
    // SAFETY: SIOCGIFFLAGS encodes the size of `struct ifreq`, the size of
    // `ifr`, a live local exclusively borrowed for the call, which holds
    // no pointers; the kernel copies exactly that many bytes in and out.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), SIOCGIFFLAGS as _, &mut ifr) })?;
    // `ifru_flags` is the union's first member: the low 16 bits on amd64.
    Ok((ifr.ifru[0] & 0xffff) as u16 as i16)
}

/// SIOCSIFFLAGS: sets `ifname`'s flags (`IFF_*`).
pub fn set_flags(sock: BorrowedFd, ifname: &str, flags: i16) -> io::Result<()> {
    let mut ifr = ifreq(ifname)?;
    ifr.ifru[0] = u64::from(flags as u16);
    // SAFETY: SIOCSIFFLAGS encodes the size of `struct ifreq`, the size of
    // `ifr`, a live local exclusively borrowed for the call, which holds
    // no pointers; the kernel copies exactly that many bytes in.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), SIOCSIFFLAGS as _, &mut ifr) })
}

/// SIOCIFCREATE: creates the cloned interface `ifname` (`bridgeN`,
/// `vebN`, ...); EEXIST when it exists.
pub fn create(sock: BorrowedFd, ifname: &str) -> io::Result<()> {
    let mut ifr = ifreq(ifname)?;
    // SAFETY: SIOCIFCREATE encodes the size of `struct ifreq`, the size of
    // `ifr`, a live local exclusively borrowed for the call, which holds
    // no pointers; the kernel copies exactly that many bytes in.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), SIOCIFCREATE as _, &mut ifr) })
}

/// SIOCBRDGADD: adds `member` to the bridge(4) or veb(4) `switch`; EEXIST
/// when it is a member already.
pub fn bridge_add(sock: BorrowedFd, switch: &str, member: &str) -> io::Result<()> {
    let mut b = IfBreq {
        name: cstr(switch)?,
        ifsname: cstr(member)?,
        ..IfBreq::default()
    };
    // SAFETY: SIOCBRDGADD encodes the size of `struct ifbreq`, the size of
    // `b`, a live local exclusively borrowed for the call, which holds no
    // pointers; the kernel copies exactly that many bytes in.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), SIOCBRDGADD as _, &mut b) })
}

/// SIOCAIFGROUP: puts `ifname` in interface group `group`; EEXIST when it
/// is in it already.
pub fn add_group(sock: BorrowedFd, ifname: &str, group: &str) -> io::Result<()> {
    let mut g = IfGroupReq {
        name: cstr(ifname)?,
        len: 0,
        _pad: 0,
        group: cstr(group)?,
    };
    // SAFETY: SIOCAIFGROUP encodes the size of `struct ifgroupreq`, the
    // size of `g`, a live local exclusively borrowed for the call; its
    // union holds the group name inline (no pointer is used by this
    // request), and the kernel copies exactly that many bytes in.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), SIOCAIFGROUP as _, &mut g) })
}

/// SIOCAIFADDR: adds the IPv4 address `addr` with netmask `mask` to
/// `ifname` (on an AF_INET socket).
pub fn add_inet(sock: BorrowedFd, ifname: &str, addr: Ipv4Addr, mask: Ipv4Addr) -> io::Result<()> {
    let sin = |a: Ipv4Addr| SockaddrIn {
        len: std::mem::size_of::<SockaddrIn>() as u8,
        family: libc::AF_INET as u8,
        addr: a.octets(),
        ..SockaddrIn::default()
    };
    let mut ifra = IfAliasReq {
        name: cstr(ifname)?,
        addr: sin(addr),
        mask: sin(mask),
        ..IfAliasReq::default()
    };
    // SAFETY: SIOCAIFADDR encodes the size of `struct ifaliasreq`, the
    // size of `ifra`, a live local exclusively borrowed for the call,
    // which holds no pointers; the kernel copies exactly that many bytes
    // in.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), SIOCAIFADDR as _, &mut ifra) })
}

/// SIOCAIFADDR_IN6: adds the IPv6 address `addr` with prefix mask `mask`
/// and infinite lifetimes to `ifname` (on an AF_INET6 socket).
pub fn add_inet6(sock: BorrowedFd, ifname: &str, addr: Ipv6Addr, mask: Ipv6Addr) -> io::Result<()> {
    let sin6 = |a: Ipv6Addr| SockaddrIn6 {
        len: std::mem::size_of::<SockaddrIn6>() as u8,
        family: libc::AF_INET6 as u8,
        addr: a.octets(),
        ..SockaddrIn6::default()
    };
    let mut ifra = In6AliasReq {
        name: cstr(ifname)?,
        addr: sin6(addr),
        prefixmask: sin6(mask),
        lifetime: In6AddrLifetime {
            vltime: ND6_INFINITE_LIFETIME,
            pltime: ND6_INFINITE_LIFETIME,
            ..In6AddrLifetime::default()
        },
        ..In6AliasReq::default()
    };
    // SAFETY: SIOCAIFADDR_IN6 encodes the size of `struct in6_aliasreq`,
    // the size of `ifra`, a live local exclusively borrowed for the call,
    // which holds no pointers; the kernel copies exactly that many bytes
    // in.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), SIOCAIFADDR_IN6 as _, &mut ifra) })
}

/// tap(4): SIOCGIFADDR on the device's descriptor `tap` gives the
/// interface's Ethernet address.
pub fn tap_lladdr(tap: BorrowedFd) -> io::Result<[u8; 6]> {
    let mut buf = IfReq {
        name: [0; IFNAMSIZ],
        ifru: [0; 2],
    };
    // SAFETY: SIOCGIFADDR encodes the size of `struct ifreq`, the size of
    // `buf`, a live local exclusively borrowed for the call, which holds
    // no pointers; the kernel copies out exactly that many bytes (tap(4)
    // writes the address at its start), whatever device `tap` is.
    check(unsafe { libc::ioctl(tap.as_raw_fd(), SIOCGIFADDR as _, &mut buf) })?;
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&buf.name[..6]);
    Ok(mac)
}
