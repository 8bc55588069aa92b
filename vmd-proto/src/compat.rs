//! OpenBSD library routines that vm.conf's parser and vmctl's command line
//! both use, with their exact acceptance rules: strtonum(3),
//! scan_scaled(3), fmt_scaled(3), and the ctype(3) tests of the C locale
//! they rely on.  Errors are OpenBSD's errno values, whatever the host.

/// OpenBSD's errno values (sys/errno.h), which differ from Linux's for
/// ELOOP and ENAMETOOLONG.
pub const EPERM: i32 = 1;
pub const ENOENT: i32 = 2;
pub const EIO: i32 = 5;
pub const EACCES: i32 = 13;
pub const ENOTDIR: i32 = 20;
pub const EISDIR: i32 = 21;
pub const EINVAL: i32 = 22;
pub const ERANGE: i32 = 34;
pub const ELOOP: i32 = 62;
pub const ENAMETOOLONG: i32 = 63;

/// isspace(3) in the C locale (includes \v, unlike `u8::is_ascii_whitespace`).
pub fn isspace(c: i32) -> bool {
    matches!(c, 0x20 | 0x09 | 0x0a | 0x0b | 0x0c | 0x0d)
}

pub fn isdigit(c: i32) -> bool {
    (b'0' as i32..=b'9' as i32).contains(&c)
}

pub fn isalnum(c: i32) -> bool {
    (0..128).contains(&c) && (c as u8).is_ascii_alphanumeric()
}

pub fn ispunct(c: i32) -> bool {
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
}
