//! The OpenBSD library routines parse.y leans on, with their exact
//! acceptance rules and error strings: strtonum(3), scan_scaled(3),
//! fmt_scaled(3), ether_aton(3), realpath(3) with OpenBSD's PATH_MAX, the
//! `local prefix` parsers of parse.y and strerror(3) texts.
use std::net::{Ipv4Addr, Ipv6Addr};

pub(crate) const EPERM: i32 = 1;
pub(crate) const ENOENT: i32 = 2;
pub(crate) const EIO: i32 = 5;
pub(crate) const EACCES: i32 = 13;
pub(crate) const ENOTDIR: i32 = 20;
pub(crate) const EISDIR: i32 = 21;
pub(crate) const EINVAL: i32 = 22;
pub(crate) const ERANGE: i32 = 34;
pub(crate) const ELOOP: i32 = 62;
pub(crate) const EILSEQ: i32 = 84;
pub(crate) const ENAMETOOLONG: i32 = 63;

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

/// isspace(3) in the C locale (includes \v, unlike `u8::is_ascii_whitespace`).
pub(crate) fn isspace(c: i32) -> bool {
    matches!(c, 0x20 | 0x09 | 0x0a | 0x0b | 0x0c | 0x0d)
}

pub(crate) fn isdigit(c: i32) -> bool {
    (b'0' as i32..=b'9' as i32).contains(&c)
}

pub(crate) fn isalnum(c: i32) -> bool {
    (0..128).contains(&c) && (c as u8).is_ascii_alphanumeric()
}

pub(crate) fn ispunct(c: i32) -> bool {
    (0..128).contains(&c) && (c as u8).is_ascii_punctuation()
}

/// strtoll(3) over a whole string in base 10: `Some((value, overflowed))`
/// when at least one digit was read and nothing follows it.
fn strtoll_whole(s: &[u8]) -> Option<(i64, bool)> {
    let mut i = 0;
    while i < s.len() && isspace(s[i] as i32) {
        i += 1;
    }
    let neg = match s.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let start = i;
    let mut acc: i128 = 0;
    let mut overflow = false;
    while i < s.len() && s[i].is_ascii_digit() {
        acc = acc * 10 + i128::from(s[i] - b'0');
        if acc > i128::from(i64::MAX) + 1 {
            overflow = true;
            acc = i128::from(i64::MAX) + 1;
        }
        i += 1;
    }
    if i == start || i != s.len() {
        return None;
    }
    let v = if neg { -acc } else { acc };
    if v > i128::from(i64::MAX) {
        Some((i64::MAX, true))
    } else if v < i128::from(i64::MIN) {
        Some((i64::MIN, true))
    } else {
        Some((v as i64, overflow))
    }
}

/// strtonum(3): the value, or "invalid", "too small", "too large".
pub fn strtonum(s: &[u8], min: i64, max: i64) -> Result<i64, &'static str> {
    if min > max {
        return Err("invalid");
    }
    match strtoll_whole(s) {
        None => Err("invalid"),
        Some((v, ovf)) => {
            if (v == i64::MIN && ovf) || v < min {
                Err("too small")
            } else if (v == i64::MAX && ovf) || v > max {
                Err("too large")
            } else {
                Ok(v)
            }
        }
    }
}

const SCALE_CHARS: &[u8] = b"BKMGTPE";
const SCALE_FACTORS: [i64; 7] = [1, 1 << 10, 1 << 20, 1 << 30, 1 << 40, 1 << 50, 1 << 60];
const MAX_DIGITS: u32 = 7 * 3;

/// scan_scaled(3) (libutil fmt_scaled.c): `Err(errno)` with EINVAL or ERANGE.
pub fn scan_scaled(s: &[u8]) -> Result<i64, i32> {
    let mut p = 0;
    let at = |i: usize| -> u8 { s.get(i).copied().unwrap_or(0) };
    while at(p) != 0 && at(p).is_ascii() && isspace(at(p) as i32) {
        p += 1;
    }
    let mut sign: i64 = 0;
    while at(p) == b'-' || at(p) == b'+' {
        if sign != 0 {
            return Err(EINVAL);
        }
        sign = if at(p) == b'-' { -1 } else { 1 };
        p += 1;
    }
    let (mut ndigits, mut fract_digits) = (0u32, 0u32);
    let (mut whole, mut fpart): (i64, i64) = (0, 0);
    while at(p).is_ascii_digit() || at(p) == b'.' {
        let c = at(p);
        p += 1;
        if c == b'.' {
            if fract_digits > 0 {
                return Err(EINVAL);
            }
            fract_digits = 1;
            continue;
        }
        let i = i64::from(c - b'0');
        if fract_digits > 0 {
            if fract_digits >= MAX_DIGITS - 1 {
                continue;
            }
            fract_digits += 1;
            if fpart > i64::MAX / 10 {
                return Err(ERANGE);
            }
            fpart *= 10;
            if i > i64::MAX - fpart {
                return Err(ERANGE);
            }
            fpart += i;
        } else {
            ndigits += 1;
            if ndigits >= MAX_DIGITS {
                return Err(ERANGE);
            }
            if whole > i64::MAX / 10 {
                return Err(ERANGE);
            }
            whole *= 10;
            if i > i64::MAX - whole {
                return Err(ERANGE);
            }
            whole += i;
        }
    }
    if sign != 0 {
        whole *= sign;
        fpart *= sign;
    }
    if at(p) == 0 {
        return Ok(whole);
    }
    for (k, &sc) in SCALE_CHARS.iter().enumerate() {
        if at(p) == sc || at(p) == sc.to_ascii_lowercase() {
            if isalnum(i32::from(at(p + 1))) {
                return Err(EINVAL);
            }
            let fact = SCALE_FACTORS[k];
            if whole > i64::MAX / fact || whole < i64::MIN / fact {
                return Err(ERANGE);
            }
            whole *= fact;
            while fpart >= i64::MAX / fact {
                fpart /= 10;
                fract_digits = fract_digits.saturating_sub(1);
            }
            fpart *= fact;
            if fract_digits > 0 {
                for _ in 0..fract_digits - 1 {
                    fpart /= 10;
                }
            }
            return Ok(whole + fpart);
        }
    }
    Err(EINVAL)
}

/// fmt_scaled(3): `None` where the C function fails (ERANGE).
pub fn fmt_scaled(number: i64) -> Option<String> {
    if number == i64::MIN {
        return None;
    }
    let abval = number.abs();
    if abval / 1024 >= SCALE_FACTORS[6] {
        return None;
    }
    let mut number = number;
    let mut unit = 0;
    let mut fract = 0;
    for (i, &f) in SCALE_FACTORS.iter().enumerate() {
        if abval / 1024 < f {
            unit = i;
            fract = if i == 0 { 0 } else { abval % f };
            number /= f;
            if i > 0 {
                fract /= SCALE_FACTORS[i - 1];
            }
            break;
        }
    }
    fract = (10 * fract + 512) / 1024;
    if fract >= 10 {
        if number >= 0 {
            number += 1;
        } else {
            number -= 1;
        }
        fract = 0;
    } else if fract < 0 {
        fract = 0;
    }
    let c = SCALE_CHARS[unit] as char;
    Some(if number == 0 {
        "0B".into()
    } else if unit == 0 || number >= 100 || number <= -100 {
        if fract >= 5 {
            if number >= 0 {
                number += 1;
            } else {
                number -= 1;
            }
        }
        format!("{number}{c}")
    } else {
        format!("{number}.{fract}{c}")
    })
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
    fn strtonum_errors() {
        assert_eq!(strtonum(b"42", i64::MIN, i64::MAX), Ok(42));
        assert_eq!(
            strtonum(b"-9223372036854775808", i64::MIN, i64::MAX),
            Ok(i64::MIN)
        );
        assert_eq!(
            strtonum(b"9223372036854775808", i64::MIN, i64::MAX),
            Err("too large")
        );
        assert_eq!(
            strtonum(b"-9223372036854775809", i64::MIN, i64::MAX),
            Err("too small")
        );
        assert_eq!(strtonum(b"24", 1, 16), Err("too large"));
        assert_eq!(strtonum(b"0", 1, 16), Err("too small"));
        assert_eq!(strtonum(b"x", 1, 16), Err("invalid"));
        assert_eq!(strtonum(b"", 1, 16), Err("invalid"));
    }

    #[test]
    fn scan_scaled_units() {
        assert_eq!(scan_scaled(b"1G"), Ok(1 << 30));
        assert_eq!(scan_scaled(b"512m"), Ok(512 << 20));
        assert_eq!(scan_scaled(b"1.5K"), Ok(1536));
        assert_eq!(scan_scaled(b"1048576"), Ok(1 << 20));
        assert_eq!(scan_scaled(b"1X"), Err(EINVAL));
        assert_eq!(scan_scaled(b"1GB"), Err(EINVAL));
        assert_eq!(scan_scaled(b"1.2.3"), Err(EINVAL));
        assert_eq!(scan_scaled(b"9999999E"), Err(ERANGE));
    }

    #[test]
    fn fmt_scaled_values() {
        assert_eq!(fmt_scaled(128 << 30).as_deref(), Some("128G"));
        assert_eq!(fmt_scaled(1023 << 20).as_deref(), Some("1023M"));
        assert_eq!(fmt_scaled(1 << 30).as_deref(), Some("1.0G"));
        assert_eq!(fmt_scaled(1536 << 20).as_deref(), Some("1.5G"));
        assert_eq!(fmt_scaled(0).as_deref(), Some("0B"));
        assert_eq!(fmt_scaled(512).as_deref(), Some("512B"));
    }

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
