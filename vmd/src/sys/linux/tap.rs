//! Taps on Linux: `/dev/net/tun` with IFF_TAP|IFF_NO_PI, so that one
//! read or write is one Ethernet frame as on OpenBSD's `/dev/tapN`, and
//! the interface named `tapN` after vmd's rule: the name given, else the
//! first of `tap0` … `tap255` that does not exist yet.  An unnamed NIC
//! never takes over an existing interface (IFF_TUN_EXCL); a named one
//! attaches to a persistent tap of that name if an administrator made
//! one, as OpenBSD's opens an existing `tapN`.  The tap lives as long as
//! its descriptor; nothing here configures it (priv's job).
//!
//! TUNSETIFF and TUNGETIFF have no safe wrapper in nix or rustix: they
//! are vmm-sys's (`vmm_sys::hostif`), so that this file needs no `unsafe`.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;

use vmm_sys::hostif;

use super::super::{tap_unit, Tap, TapError, MAX_TAP};

const TUN_PATH: &str = "/dev/net/tun";

fn tunsetiff(f: &File, name: &str, exclusive: bool) -> std::io::Result<String> {
    let mut flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    if exclusive {
        flags |= libc::IFF_TUN_EXCL as libc::c_short;
    }
    hostif::tun_set_iff(f.as_fd(), name, flags)
}

/// TUNGETIFF: the name of the tap a `/dev/net/tun` descriptor is
/// attached to (priv's `PRIV_GET_ADDR`, where OpenBSD asks the tap's
/// descriptor for its address).  An error for any other descriptor.
pub fn tap_name(fd: std::os::fd::BorrowedFd) -> std::io::Result<String> {
    let (name, flags) = hostif::tun_get_iff(fd)?;
    if flags & libc::IFF_TAP as libc::c_short == 0 {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(name)
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
