//! How vmctl fails: err(3)/errx(3) lines, usage texts, and strerror(3) in
//! OpenBSD's words.
//!
//! Every failure exits 1.  What is printed before that is one of
//! [`Fail`]'s cases; warnings (warnx(3)) are written as they happen by
//! [`warnx`], so that they come out in OpenBSD's order.

use std::fmt;
use std::io::{self, Write};

use crate::args::Command;

/// `__progname` in every message.
pub const PROGNAME: &str = "vmctl";

/// A failure and what vmctl prints for it on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fail {
    /// The global usage line, after `before` (e.g. `unknown argument: x`).
    Usage { before: Option<String> },
    /// A command's usage, after `before` (getopt's complaint, `could not
    /// create ...: missing size argument`).
    CmdUsage {
        cmd: &'static Command,
        before: Option<String>,
    },
    /// `vmctl: <message>` (errx, or err with the strerror already in).
    Errx(String),
    /// Nothing more to print: the messages are out already.
    Silent,
}

impl Fail {
    /// err(3): the message, then the error's text.
    pub fn err(msg: impl fmt::Display, errno: i32) -> Fail {
        Fail::Errx(format!("{msg}: {}", strerror(errno)))
    }

    /// err(3) for an I/O error.
    pub fn io(msg: impl fmt::Display, e: &io::Error) -> Fail {
        Fail::err(msg, errno_of(e))
    }

    pub fn errx(msg: impl Into<String>) -> Fail {
        Fail::Errx(msg.into())
    }

    pub fn usage(cmd: &'static Command) -> Fail {
        Fail::CmdUsage { cmd, before: None }
    }

    /// Writes what this failure prints.
    pub fn print(&self, err: &mut dyn Write) {
        let text = match self {
            Fail::Usage { before } => {
                format!(
                    "{}usage:\t{PROGNAME} [-v] command [arg ...]\n",
                    line(before)
                )
            }
            Fail::CmdUsage { cmd, before } => format!(
                "{}usage:\t{PROGNAME} [-v] {} {}\n",
                line(before),
                cmd.name,
                cmd.usage
            ),
            Fail::Errx(msg) => format!("{PROGNAME}: {msg}\n"),
            Fail::Silent => String::new(),
        };
        // Nothing sensible is left to do if stderr is gone.
        let _ = err.write_all(text.as_bytes());
    }
}

fn line(before: &Option<String>) -> String {
    before
        .as_ref()
        .map(|b| format!("{b}\n"))
        .unwrap_or_default()
}

/// warnx(3): `vmctl: <message>` on stderr.
pub fn warnx(err: &mut dyn Write, msg: impl fmt::Display) {
    let _ = writeln!(err, "{PROGNAME}: {msg}");
}

/// The errno of an I/O error (EIO when it carries none).
pub fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// strerror(3) with OpenBSD's texts, for the host's errno numbers (what
/// system calls here return and what vmd puts in `vmr_result`).
pub fn strerror(errno: i32) -> String {
    let text = match errno {
        libc::EPERM => "Operation not permitted",
        libc::ENOENT => "No such file or directory",
        libc::ESRCH => "No such process",
        libc::EINTR => "Interrupted system call",
        libc::EIO => "Input/output error",
        libc::ENXIO => "Device not configured",
        libc::E2BIG => "Argument list too long",
        libc::ENOEXEC => "Exec format error",
        libc::EBADF => "Bad file descriptor",
        libc::ECHILD => "No child processes",
        libc::EDEADLK => "Resource deadlock avoided",
        libc::ENOMEM => "Cannot allocate memory",
        libc::EACCES => "Permission denied",
        libc::EFAULT => "Bad address",
        libc::EBUSY => "Device busy",
        libc::EEXIST => "File exists",
        libc::EXDEV => "Cross-device link",
        libc::ENODEV => "Operation not supported by device",
        libc::ENOTDIR => "Not a directory",
        libc::EISDIR => "Is a directory",
        libc::EINVAL => "Invalid argument",
        libc::ENFILE => "Too many open files in system",
        libc::EMFILE => "Too many open files",
        libc::ENOTTY => "Inappropriate ioctl for device",
        libc::ETXTBSY => "Text file busy",
        libc::EFBIG => "File too large",
        libc::ENOSPC => "No space left on device",
        libc::ESPIPE => "Illegal seek",
        libc::EROFS => "Read-only file system",
        libc::EMLINK => "Too many links",
        libc::EPIPE => "Broken pipe",
        libc::EDOM => "Numerical argument out of domain",
        libc::ERANGE => "Result too large",
        libc::EAGAIN => "Resource temporarily unavailable",
        libc::EINPROGRESS => "Operation now in progress",
        libc::EALREADY => "Operation already in progress",
        libc::ENOTSOCK => "Socket operation on non-socket",
        libc::EOPNOTSUPP => "Operation not supported",
        libc::EADDRINUSE => "Address already in use",
        libc::ENOBUFS => "No buffer space available",
        libc::ECONNRESET => "Connection reset by peer",
        libc::ETIMEDOUT => "Operation timed out",
        libc::ECONNREFUSED => "Connection refused",
        libc::ELOOP => "Too many levels of symbolic links",
        libc::ENAMETOOLONG => "File name too long",
        libc::ENOTEMPTY => "Directory not empty",
        libc::ENOSYS => "Function not implemented",
        libc::EOVERFLOW => "Value too large to be stored in data type",
        libc::ECANCELED => "Operation canceled",
        libc::EILSEQ => "Illegal byte sequence",
        n => return format!("Unknown error: {n}"),
    };
    text.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::lookup;

    fn printed(f: Fail) -> String {
        let mut v = Vec::new();
        f.print(&mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn fail_texts() {
        assert_eq!(
            printed(Fail::Usage { before: None }),
            "usage:\tvmctl [-v] command [arg ...]\n"
        );
        assert_eq!(
            printed(Fail::Usage {
                before: Some("unknown argument: x".into())
            }),
            "unknown argument: x\nusage:\tvmctl [-v] command [arg ...]\n"
        );
        assert_eq!(
            printed(Fail::usage(lookup("reload").unwrap())),
            "usage:\tvmctl [-v] reload \n"
        );
        assert_eq!(
            printed(Fail::err("connect: /x", libc::ENOENT)),
            "vmctl: connect: /x: No such file or directory\n"
        );
        assert_eq!(printed(Fail::Silent), "");
    }

    #[test]
    fn strerror_words() {
        assert_eq!(strerror(libc::EBUSY), "Device busy");
        assert_eq!(strerror(libc::EALREADY), "Operation already in progress");
        assert_eq!(strerror(1001), "Unknown error: 1001");
    }
}
