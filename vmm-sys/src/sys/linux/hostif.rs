//! Host network-interface ioctls that no crate wraps safely, on Linux:
//! TUNSETIFF and TUNGETIFF on a `/dev/net/tun` descriptor (nix and rustix
//! have no safe wrapper for either).  vmd's taps are made with these; the
//! rest of its interface work goes through netlink.
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `struct ifreq` as the tun driver reads and fills it: the name, the
/// flags (the union's first member), padding to the union's 24 bytes.
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

const _: () = assert!(std::mem::size_of::<IfReqFlags>() == std::mem::size_of::<libc::ifreq>());

/// The misc device behind `/dev/net/tun` (major 10, `TUN_MINOR` 200).
const TUN_MAJOR: u32 = 10;
const TUN_MINOR: u32 = 200;

/// Refuses (ENOTTY, as the kernel does for a request a device does not
/// know) a descriptor that is not `/dev/net/tun`, so that the tun
/// driver's ioctls below reach nothing but the tun driver.
fn check_tun(fd: BorrowedFd) -> io::Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::File::from(fd.try_clone_to_owned()?).metadata()?;
    let rdev = meta.rdev();
    if meta.file_type().is_char_device()
        && libc::major(rdev) == TUN_MAJOR
        && libc::minor(rdev) == TUN_MINOR
    {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(libc::ENOTTY))
    }
}

/// `name` as an ifreq name: NUL-terminated, EINVAL when it does not fit
/// or holds a NUL.
fn ifname(name: &str) -> io::Result<[u8; libc::IFNAMSIZ]> {
    let b = name.as_bytes();
    if b.len() >= libc::IFNAMSIZ || b.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut out = [0u8; libc::IFNAMSIZ];
    out[..b.len()].copy_from_slice(b);
    Ok(out)
}

fn name_of(req: &IfReqFlags) -> String {
    let end = req
        .name
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(req.name.len());
    String::from_utf8_lossy(&req.name[..end]).into_owned()
}

/// TUNSETIFF: attaches the `/dev/net/tun` descriptor `fd` to the
/// interface `name` (made if it does not exist; an empty name lets the
/// kernel choose) with `flags` (`IFF_TAP`, `IFF_NO_PI`, `IFF_TUN_EXCL`
/// ...), and returns the interface's name.  ENOTTY for a descriptor that
/// is not `/dev/net/tun`, EINVAL for a name longer than `IFNAMSIZ - 1`.
pub fn tun_set_iff(fd: BorrowedFd, name: &str, flags: libc::c_short) -> io::Result<String> {
    check_tun(fd)?;
    let mut req = IfReqFlags {
        name: ifname(name)?,
        flags,
        _pad: [0; 22],
    };
    // SAFETY: `fd` is /dev/net/tun (checked above), whose TUNSETIFF reads
    // and writes one `struct ifreq`; `req` is a live local of exactly that
    // size (asserted against libc::ifreq) and alignment, exclusively
    // borrowed for the whole call, and holds no pointers.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF as _, &mut req) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(name_of(&req))
}

/// TUNGETIFF: the name and flags of the interface a `/dev/net/tun`
/// descriptor is attached to.  ENOTTY for a descriptor that is not
/// `/dev/net/tun`; the kernel's error for one not attached yet.
pub fn tun_get_iff(fd: BorrowedFd) -> io::Result<(String, libc::c_short)> {
    check_tun(fd)?;
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    // SAFETY: `fd` is /dev/net/tun (checked above), whose TUNGETIFF writes
    // one `struct ifreq`; `req` is a live local of exactly that size and
    // alignment, exclusively borrowed for the whole call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETIFF as _, &mut req) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((name_of(&req), req.flags))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn refuses_a_descriptor_that_is_not_tun() {
        let f = std::fs::File::open("/dev/null").unwrap();
        let e = tun_set_iff(f.as_fd(), "tap0", libc::IFF_TAP as _).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTTY));
        let e = tun_get_iff(f.as_fd()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTTY));
    }

    #[test]
    fn refuses_names_that_do_not_fit() {
        assert!(ifname("tap255").is_ok());
        assert_eq!(
            ifname("a-name-of-16-chr").unwrap_err().raw_os_error(),
            Some(libc::EINVAL)
        );
        assert_eq!(
            ifname("ta\0p").unwrap_err().raw_os_error(),
            Some(libc::EINVAL)
        );
    }
}
