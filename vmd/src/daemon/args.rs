//! vmd's command line, parsed as getopt(3) with vmd's option string
//! `D:P:V:X:df:i:j:nt:vp:` (reference §3.1).  The internal flags `-X`,
//! `-t`, `-i`, `-j` and `-p` (device processes, inherited vmm/psp fds) are
//! accepted and checked, for the device processes to come.
//!
//! Arguments are bytes (`OsString`), not UTF-8: a file name or a macro
//! value may be any bytes but NUL, as in C.
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

/// What the command line asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Args {
    /// `-d`: do not daemonize, log to stderr.
    pub debug: bool,
    /// `-f file`.
    pub conffile: Option<PathBuf>,
    /// `-n`: check the configuration only.
    pub noaction: bool,
    /// `-v`, repeatable.
    pub verbose: u32,
    /// `-D macro=value`, split at the last `=`, as bytes.
    pub defines: Vec<(Vec<u8>, Vec<u8>)>,
    /// `-D` arguments without `=` (vmd warns and goes on).
    pub bad_defines: Vec<OsString>,
    /// `-P title`: a privsep child.
    pub title: Option<String>,
    /// `-V fd`: a VM process.
    pub vm_fd: Option<i32>,
    /// `-X fd`: a device process (not built yet).
    pub dev_fd: Option<i32>,
    /// `-t n|d|s`.
    pub dev_type: Option<char>,
    /// `-i fd`, `-j fd`, `-p name`.
    pub vmm_fd: Option<i32>,
    pub psp_fd: Option<i32>,
    pub name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArgsError {
    /// Print the usage line, exit 1.
    Usage,
    /// `fatalx(message)`.
    Fatal(String),
}

/// vmd's usage line.
pub fn usage() -> String {
    "usage: vmd [-dnv] [-D macro=value] [-f file]".to_string()
}

fn fd_arg(v: &OsStr, min: i64, what: &str) -> Result<i32, ArgsError> {
    match v.to_str().map(str::parse::<i64>) {
        Some(Ok(n)) if n >= min && n <= i64::from(i32::MAX) => Ok(n as i32),
        _ => Err(ArgsError::Fatal(format!("invalid {what} fd"))),
    }
}

/// Parses the arguments after the program name.
pub fn parse(argv: &[OsString]) -> Result<Args, ArgsError> {
    const WITH_ARG: &[u8] = b"DPVXftijp";
    const FLAGS: &[u8] = b"dnv";
    let mut a = Args::default();
    let mut i = 0;
    while i < argv.len() {
        let word = argv[i].as_bytes();
        if word == b"--" {
            i += 1;
            break;
        }
        if !word.starts_with(b"-") || word.len() < 2 {
            break;
        }
        for (pos, &c) in word.iter().enumerate().skip(1) {
            if FLAGS.contains(&c) {
                match c {
                    b'd' => a.debug = true,
                    b'n' => a.noaction = true,
                    _ => a.verbose += 1,
                }
                continue;
            }
            if !WITH_ARG.contains(&c) {
                return Err(ArgsError::Usage);
            }
            let rest = &word[pos + 1..];
            let value = if !rest.is_empty() {
                OsString::from_vec(rest.to_vec())
            } else {
                i += 1;
                argv.get(i).cloned().ok_or(ArgsError::Usage)?
            };
            match c {
                b'D' => match crate::config::parse_define(value.as_bytes()) {
                    Some(d) => a.defines.push(d),
                    None => a.bad_defines.push(value),
                },
                b'f' => a.conffile = Some(PathBuf::from(value)),
                b'P' => {
                    let t = value
                        .into_string()
                        .map_err(|_| ArgsError::Fatal("invalid process name".into()))?;
                    a.title = Some(t);
                }
                b'p' => a.name = Some(value.to_string_lossy().into_owned()),
                b'V' => a.vm_fd = Some(fd_arg(&value, 0, "vm")?),
                b'X' => a.dev_fd = Some(fd_arg(&value, 0, "device")?),
                b'i' => a.vmm_fd = Some(fd_arg(&value, 0, "vmm")?),
                b'j' => a.psp_fd = Some(fd_arg(&value, -1, "psp")?),
                b't' => {
                    let t = value.as_bytes().first().copied().unwrap_or(0);
                    if !matches!(t, b'n' | b'd' | b's') {
                        return Err(ArgsError::Fatal("invalid device type".into()));
                    }
                    a.dev_type = Some(char::from(t));
                }
                _ => unreachable!(),
            }
            break;
        }
        i += 1;
    }
    if i < argv.len() {
        return Err(ArgsError::Usage);
    }
    if a.dev_fd.is_some() {
        return Err(ArgsError::Fatal(
            "device processes are not implemented yet".into(),
        ));
    }
    Ok(a)
}

/// The flags a child inherits from the parent's command line (`-d`, `-v`).
pub fn child_flags(a: &Args) -> Vec<String> {
    let mut v = Vec::new();
    if a.debug {
        v.push("-d".to_string());
    }
    for _ in 0..a.verbose {
        v.push("-v".to_string());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &[&str]) -> Result<Args, ArgsError> {
        parse(&s.iter().map(OsString::from).collect::<Vec<_>>())
    }

    fn bytes(b: &[u8]) -> OsString {
        OsString::from_vec(b.to_vec())
    }

    /// Any bytes but NUL, as C has them: no panic, nothing replaced.
    #[test]
    fn daemon_args_are_bytes() {
        let a = parse(&[bytes(b"-nD"), bytes(b"a=\xff"), bytes(b"-f/tmp/\xfe.conf")]).unwrap();
        assert_eq!(a.defines, vec![(b"a".to_vec(), b"\xff".to_vec())]);
        assert_eq!(a.conffile, Some(PathBuf::from(bytes(b"/tmp/\xfe.conf"))));
        let a = parse(&[bytes(b"-D\xff")]).unwrap();
        assert_eq!(a.bad_defines, vec![bytes(b"\xff")]);
        assert_eq!(
            parse(&[bytes(b"-P\xff")]),
            Err(ArgsError::Fatal("invalid process name".into()))
        );
        assert_eq!(
            parse(&[bytes(b"-V\xff")]),
            Err(ArgsError::Fatal("invalid vm fd".into()))
        );
        assert_eq!(parse(&[bytes(b"-\xff")]), Err(ArgsError::Usage));
    }

    #[test]
    fn daemon_args_getopt() {
        let a = p(&["-dvv", "-f", "/x.conf", "-Dfoo=bar=baz", "-D", "nope"]).unwrap();
        assert!(a.debug && !a.noaction);
        assert_eq!(a.verbose, 2);
        assert_eq!(a.conffile, Some(PathBuf::from("/x.conf")));
        assert_eq!(a.defines, vec![(b"foo=bar".to_vec(), b"baz".to_vec())]);
        assert_eq!(a.bad_defines, vec![OsString::from("nope")]);
        let a = p(&["-nf/etc/vm.conf"]).unwrap();
        assert!(a.noaction);
        assert_eq!(a.conffile, Some(PathBuf::from("/etc/vm.conf")));
        assert_eq!(
            p(&["-P", "control", "-d"]).unwrap().title.as_deref(),
            Some("control")
        );
        assert_eq!(p(&["-V0"]).unwrap().vm_fd, Some(0));
        assert_eq!(p(&["-x"]), Err(ArgsError::Usage));
        assert_eq!(p(&["extra"]), Err(ArgsError::Usage));
        assert_eq!(p(&["-f"]), Err(ArgsError::Usage));
        assert_eq!(
            p(&["-V", "x"]),
            Err(ArgsError::Fatal("invalid vm fd".into()))
        );
        assert_eq!(
            p(&["-t", "q"]),
            Err(ArgsError::Fatal("invalid device type".into()))
        );
        assert_eq!(child_flags(&p(&["-dvv"]).unwrap()), vec!["-d", "-v", "-v"]);
    }
}
