//! Taps on Linux: `/dev/net/tun` with IFF_TAP|IFF_NO_PI, so that one
//! read or write is one Ethernet frame as on OpenBSD's `/dev/tapN`, and
//! the interface named `tapN` after vmd's rule: the name given, else the
//! first of `tap0` … `tap255` that does not exist yet.  An unnamed NIC
//! never takes over an existing interface (IFF_TUN_EXCL); a named one
//! attaches to a persistent tap of that name if an administrator made
//! one, as OpenBSD's opens an existing `tapN`.  The tap lives as long as
//! its descriptor; nothing here configures it (priv's job).
//!
//! The TUNSETIFF ioctl has no safe wrapper in nix or rustix: this is the
//! one file of vmd outside guest memory that needs `unsafe`.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use super::super::{tap_unit, Tap, TapError, MAX_TAP};

const TUN_PATH: &str = "/dev/net/tun";

/// `struct ifreq` as TUNSETIFF reads and fills it: the name, the flags
/// (the union's first member), padding to the union's 24 bytes.
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn tunsetiff(f: &File, name: &str, exclusive: bool) -> std::io::Result<String> {
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    if exclusive {
        req.flags |= libc::IFF_TUN_EXCL as libc::c_short;
    }
    let n = name.len().min(libc::IFNAMSIZ - 1);
    req.name[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `req` is a
    // live, properly sized and aligned ifreq (name, flags, padding to 40
    // bytes) for the whole call, and `f` is an open /dev/net/tun.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF as _, &mut req) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let end = req
        .name
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(req.name.len());
    Ok(String::from_utf8_lossy(&req.name[..end]).into_owned())
}

/// TUNGETIFF: the name of the tap a `/dev/net/tun` descriptor is
/// attached to (priv's `PRIV_GET_ADDR`, where OpenBSD asks the tap's
/// descriptor for its address).  An error for any other descriptor.
pub fn tap_name(fd: std::os::fd::BorrowedFd) -> std::io::Result<String> {
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    // SAFETY: TUNGETIFF writes one `struct ifreq` (name and flags); `req`
    // is a live, properly sized and aligned ifreq for the whole call, and
    // `fd` is open for its duration (a descriptor of another kind makes
    // the ioctl fail without touching `req`).
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETIFF as _, &mut req) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if req.flags & libc::IFF_TAP as libc::c_short == 0 {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    let end = req
        .name
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(req.name.len());
    Ok(String::from_utf8_lossy(&req.name[..end]).into_owned())
}

fn open_tun() -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(TUN_PATH)
}

/// Opens the tap `name` (`tapN`), or the first free one for `tap`.
pub fn open_tap(name: &str) -> Result<Tap, TapError> {
    let err = |name: &str, source| TapError::Open {
        name: name.to_string(),
        source,
    };
    match tap_unit(name)? {
        Some(_) => {
            let f = open_tun().map_err(|e| err(name, e))?;
            let got = tunsetiff(&f, name, false).map_err(|e| err(name, e))?;
            Ok(Tap { file: f, name: got })
        }
        None => {
            for i in 0..MAX_TAP {
                let want = format!("tap{i}");
                let f = open_tun().map_err(|e| err(&want, e))?;
                match tunsetiff(&f, &want, true) {
                    Ok(got) => return Ok(Tap { file: f, name: got }),
                    // Taken (by an interface of that name, ours or not).
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => continue,
                    Err(e) => return Err(err(&want, e)),
                }
            }
            Err(TapError::NoneFree)
        }
    }
}
