//! The OpenBSD library routines parse.y leans on beyond those vmctl
//! shares ([`vmd_proto::compat`]), with their exact acceptance rules and
//! error strings: ether_aton(3), realpath(3) with OpenBSD's PATH_MAX, the
//! `local prefix` parsers of parse.y and strerror(3) texts.
use std::net::{Ipv4Addr, Ipv6Addr};

use vmd_proto::compat::{isspace, strtonum};
use vmd_proto::compat::{EACCES, EINVAL, EIO, EISDIR, ELOOP, ENAMETOOLONG, ENOENT, ENOTDIR};
use vmd_proto::compat::{EPERM, ERANGE};
/// OpenBSD's EILSEQ: a byte string that is not the UTF-8 it must be.
pub(crate) const EILSEQ: i32 = 84;

/// OpenBSD's PATH_MAX.
pub(crate) const PATH_MAX: usize = 1024;

/// strerror(3) as OpenBSD's libc words it. Errno values are OpenBSD's; the
/// host's numbers are mapped by [`errno_of`].
pub(crate) fn strerror(errno: i32) -> String {
    match errno {
        EPERM => "Operation not permitted".into(),
        ENOENT => "No such file or directory".into(),
        EIO => "Input/output error".into(),
        EACCES => "Permission denied".into(),
        ENOTDIR => "Not a directory".into(),
        EISDIR => "Is a directory".into(),
        EINVAL => "Invalid argument".into(),
        ERANGE => "Result too large".into(),
        ELOOP => "Too many levels of symbolic links".into(),
        ENAMETOOLONG => "File name too long".into(),
        EILSEQ => "Illegal byte sequence".into(),
        n => format!("Unknown error: {n}"),
    }
}

/// The OpenBSD errno for a host I/O error (the values differ on Linux for
/// ELOOP and ENAMETOOLONG).
pub(crate) fn errno_of(e: &std::io::Error) -> i32 {
    match e.raw_os_error() {
        Some(n) if n == libc::EPERM => EPERM,
        Some(n) if n == libc::ENOENT => ENOENT,
        Some(n) if n == libc::EACCES => EACCES,
        Some(n) if n == libc::ENOTDIR => ENOTDIR,
        Some(n) if n == libc::EISDIR => EISDIR,
        Some(n) if n == libc::EINVAL => EINVAL,
        Some(n) if n == libc::ELOOP => ELOOP,
        Some(n) if n == libc::ENAMETOOLONG => ENAMETOOLONG,
        Some(n) if n == libc::EIO => EIO,
        Some(n) => 1000 + n,
        None => match e.kind() {
            std::io::ErrorKind::NotFound => ENOENT,
            std::io::ErrorKind::PermissionDenied => EACCES,
            std::io::ErrorKind::InvalidInput => EINVAL,
            _ => EIO,
        },
    }
}

/// realpath(3) with OpenBSD's limits: names of PATH_MAX bytes or more, in or
/// out, fail with ENAMETOOLONG.
pub(crate) fn realpath(path: &[u8]) -> Result<String, i32> {
    use std::os::unix::ffi::OsStrExt;
    if path.len() >= PATH_MAX {
        return Err(ENAMETOOLONG);
    }
    if path.is_empty() {
        return Err(ENOENT);
    }
    let p = std::path::Path::new(std::ffi::OsStr::from_bytes(path));
    let r = std::fs::canonicalize(p).map_err(|e| errno_of(&e))?;
    let bytes = r.as_os_str().as_bytes();
    if bytes.len() >= PATH_MAX {
        return Err(ENAMETOOLONG);
    }
    // The path travels to the VM's processes as UTF-8: one that is not
    // would be mangled into another name, so it is refused.
    String::from_utf8(bytes.to_vec()).map_err(|_| EILSEQ)
}

/// strtol(3) in base 16 for ether_aton: value and the index after it, or
/// `None` when no digit was converted.
fn strtol16(s: &[u8], start: usize) -> Option<(i64, usize)> {
    let at = |i: usize| -> u8 { s.get(i).copied().unwrap_or(0) };
    let mut i = start;
    while at(i) != 0 && isspace(at(i) as i32) {
        i += 1;
    }
    let mut neg = false;
    if at(i) == b'-' || at(i) == b'+' {
        neg = at(i) == b'-';
        i += 1;
    }
    if at(i) == b'0' && (at(i + 1) | 0x20) == b'x' && at(i + 2).is_ascii_hexdigit() {
        i += 2;
    }
    let digits = i;
    let mut v: i64 = 0;
    while at(i).is_ascii_hexdigit() {
        let d = (at(i) as char).to_digit(16).unwrap_or(0) as i64;
        v = v.saturating_mul(16).saturating_add(d);
        i += 1;
    }
    if i == digits {
        return None;
    }
    Some((if neg { -v } else { v }, i))
}

/// ether_aton(3): six hex octets separated by ':'; the last one may be
/// followed by white space or the end of the string.
pub(crate) fn ether_aton(s: &[u8]) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut p = 0;
    while p < s.len() && isspace(s[p] as i32) {
        p += 1;
    }
    for (i, octet) in mac.iter_mut().enumerate() {
        let (l, pp) = strtol16(s, p)?;
        if !(0..=0xff).contains(&l) {
            return None;
        }
        let next = s.get(pp).copied().unwrap_or(0);
        if !(next == b':' || (i == 5 && (isspace(next as i32) || next == 0))) {
            return None;
        }
        *octet = l as u8;
        p = pp + 1;
    }
    Some(mac)
}

/// inet_net_pton(3) for AF_INET into a 4-byte buffer: the address, or
/// `None` for ENOENT/EMSGSIZE.
fn inet_net_pton4(src: &[u8]) -> Option<[u8; 4]> {
    let at = |i: usize| -> u8 { src.get(i).copied().unwrap_or(0) };
    let mut dst = [0u8; 4];
    let mut n = 0usize;
    let mut i = 0usize;
    let mut ch = at(i);
    i += 1;
    if ch == b'0' && (at(i) == b'x' || at(i) == b'X') && at(i + 1).is_ascii_hexdigit() {
        i += 1;
        let mut tmp = 0u8;
        let mut dirty = 0;
        loop {
            ch = at(i);
            i += 1;
            if ch == 0 || !ch.is_ascii_hexdigit() {
                break;
            }
            let v = (ch as char).to_digit(16).unwrap_or(0) as u8;
            tmp = if dirty == 0 { v } else { (tmp << 4) | v };
            dirty += 1;
            if dirty == 2 {
                *dst.get_mut(n)? = tmp;
                n += 1;
                dirty = 0;
            }
        }
        if dirty != 0 {
            *dst.get_mut(n)? = tmp << 4;
            n += 1;
        }
    } else if ch.is_ascii_digit() {
        loop {
            let mut tmp: u32 = 0;
            loop {
                tmp = tmp * 10 + u32::from(ch - b'0');
                if tmp > 255 {
                    return None;
                }
                ch = at(i);
                i += 1;
                if ch == 0 || !ch.is_ascii_digit() {
                    break;
                }
            }
            *dst.get_mut(n)? = tmp as u8;
            n += 1;
            if ch == 0 || ch == b'/' {
                break;
            }
            if ch != b'.' {
                return None;
            }
            ch = at(i);
            i += 1;
            if !ch.is_ascii_digit() {
                return None;
            }
        }
    } else {
        return None;
    }
    if ch == b'/' && at(i).is_ascii_digit() && n > 0 {
        let mut bits = 0u32;
        ch = at(i);
        i += 1;
        loop {
            bits = bits * 10 + u32::from(ch - b'0');
            if bits > 32 {
                return None;
            }
            ch = at(i);
            i += 1;
            if ch == 0 || !ch.is_ascii_digit() {
                break;
            }
        }
    }
    if ch != 0 || n == 0 {
        return None;
    }
    Some(dst)
}

fn prefixlen2mask(len: u32) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len)
    }
}

/// parse.y's `parse_prefix4`: ADDR[/LEN] with LEN 1..16 (default 16) and no
/// host bits; the error text is what `invalid local prefix: %s` prints.
pub(crate) fn parse_prefix4(s: &[u8]) -> Result<(Ipv4Addr, u8), String> {
    let (addr, mask) = match s.iter().rposition(|&c| c == b'/') {
        Some(i) => (
            &s[..i],
            strtonum(&s[i + 1..], 1, 16).map_err(str::to_string)? as u32,
        ),
        None => (s, 16),
    };
    let a = match std::str::from_utf8(addr)
        .ok()
        .and_then(|t| t.parse::<Ipv4Addr>().ok())
    {
        Some(a) => a,
        None => Ipv4Addr::from(inet_net_pton4(addr).ok_or_else(|| "invalid format".to_string())?),
    };
    let v = u32::from(a);
    if v & prefixlen2mask(mask) != v {
        return Err("bad mask".into());
    }
    Ok((a, mask as u8))
}

/// parse.y's `parse_prefix6`: ADDR[/LEN] with LEN 0..64 (default 64) and no
/// host bits; numeric IPv6 only (getaddrinfo with AI_NUMERICHOST).
pub(crate) fn parse_prefix6(s: &[u8]) -> Result<(Ipv6Addr, u8), String> {
    let (addr, mask) = match s.iter().rposition(|&c| c == b'/') {
        Some(i) => (
            &s[..i],
            strtonum(&s[i + 1..], 0, 64).map_err(str::to_string)? as u32,
        ),
        None => (s, 64),
    };
    let a: Ipv6Addr = std::str::from_utf8(addr)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| "name or service is not known".to_string())?;
    let m: u128 = if mask == 0 {
        0
    } else {
        u128::MAX << (128 - mask)
    };
    let v = u128::from(a);
    if v & m != v {
        return Err("bad mask".into());
    }
    Ok((a, mask as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ether_aton_forms() {
        assert_eq!(
            ether_aton(b"00:11:22:33:44:55"),
            Some([0, 0x11, 0x22, 0x33, 0x44, 0x55])
        );
        assert_eq!(
            ether_aton(b"fe:e1:ba:d0:1:2"),
            Some([0xfe, 0xe1, 0xba, 0xd0, 1, 2])
        );
        assert_eq!(ether_aton(b"00:11:22:33:44"), None);
        assert_eq!(ether_aton(b"00:11:22:33:44:5g"), None);
        assert_eq!(ether_aton(b"100:11:22:33:44:55"), None);
    }

    #[test]
    fn prefixes() {
        assert_eq!(
            parse_prefix4(b"100.64.0.0/10"),
            Ok((Ipv4Addr::new(100, 64, 0, 0), 10))
        );
        assert_eq!(
            parse_prefix4(b"10.0.0.0"),
            Ok((Ipv4Addr::new(10, 0, 0, 0), 16))
        );
        assert_eq!(parse_prefix4(b"10/8"), Ok((Ipv4Addr::new(10, 0, 0, 0), 8)));
        assert_eq!(parse_prefix4(b"192.168.1.0/24"), Err("too large".into()));
        assert_eq!(parse_prefix4(b"10.0.1.0/16"), Err("bad mask".into()));
        assert_eq!(parse_prefix4(b"foo"), Err("invalid format".into()));
        assert_eq!(parse_prefix6(b"fd00::/8").map(|p| p.1), Ok(8));
        assert_eq!(parse_prefix6(b"fd00::1/64"), Err("bad mask".into()));
        assert_eq!(parse_prefix6(b"fd00::/65"), Err("too large".into()));
        assert_eq!(
            parse_prefix6(b"10.0.0.0"),
            Err("name or service is not known".into())
        );
    }
}
