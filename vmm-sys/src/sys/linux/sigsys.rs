//! The SIGSYS reporter of vmd's seccomp filters (`SECCOMP_RET_TRAP`).
//!
//! Why a trap and not `SECCOMP_RET_KILL_PROCESS`: a killed process says
//! nothing in vmd's log (the kernel's audit line, when there is one, is in
//! the kernel's log), and the administrator must learn which call a
//! process was denied.  The handler names the call on standard error and
//! in syslog and then dies of SIGSYS all the same: it makes the denied
//! call once more, and as SIGSYS is blocked while its handler runs the
//! kernel delivers this second SIGSYS with the default action (the
//! process ends, as pledge(2) ends a process that breaks its promises).
use crate::{Result, VmmError};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

const TAG_MAX: usize = 48;
/// The process's tag, written once before the handler is installed.
static TAG: [std::sync::atomic::AtomicU8; TAG_MAX] =
    [const { std::sync::atomic::AtomicU8::new(0) }; TAG_MAX];
static TAG_LEN: AtomicUsize = AtomicUsize::new(0);
static SYSLOG_FD: AtomicI32 = AtomicI32::new(-1);
static PID: AtomicI32 = AtomicI32::new(0);

/// `SYS_SECCOMP`, si_code of a SIGSYS from a seccomp filter.
const SYS_SECCOMP: i32 = 1;

pub(crate) fn install_sigsys_reporter(tag: &str, syslog: Option<RawFd>) -> Result<()> {
    let bytes = tag.as_bytes();
    let n = bytes.len().min(TAG_MAX);
    for (slot, b) in TAG.iter().zip(&bytes[..n]) {
        slot.store(*b, Ordering::Relaxed);
    }
    TAG_LEN.store(n, Ordering::Release);
    SYSLOG_FD.store(syslog.unwrap_or(-1), Ordering::Release);
    PID.store(std::process::id() as i32, Ordering::Release);
    // SAFETY: a zeroed sigaction with a valid SA_SIGINFO handler and an
    // empty mask is a valid argument; the old action is not wanted.
    let r = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys
            as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
            as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut())
    };
    if r == -1 {
        return Err(VmmError::last_os_error("sigaction SIGSYS"));
    }
    Ok(())
}

/// A line built in a fixed buffer (no allocation in a signal handler).
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    fn push_num(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler;
    // si_code is in its common head.
    let code = unsafe { (*info).si_code };
    // The seccomp part of siginfo (`_sigsys`): the call's number is the
    // int at byte 24 on 64-bit Linux (after si_signo, si_errno, si_code,
    // padding and the call's address).  libc has no accessor for it.
    // SAFETY: siginfo_t is 128 bytes; byte 24 is inside and aligned for
    // an i32.
    let nr = unsafe { *(info as *const u8).add(24).cast::<i32>() };
    let mut line = Line {
        buf: [0; 256],
        len: 0,
    };
    line.push(b"vmd: ");
    let n = TAG_LEN.load(Ordering::Acquire);
    for slot in &TAG[..n] {
        line.push(&[slot.load(Ordering::Relaxed)]);
    }
    if code == SYS_SECCOMP {
        line.push(b": forbidden system call ");
        match syscalls::Sysno::new(nr as usize) {
            Some(s) => line.push(s.name().as_bytes()),
            None => line.push(b"?"),
        }
        line.push(b" (");
        line.push_num(nr as u64);
        line.push(b"), killed");
    } else {
        line.push(b": SIGSYS, killed");
    }
    let text_len = line.len;
    line.push(b"\n");
    // SAFETY: write(2) of a buffer that lives across the call.
    unsafe {
        libc::write(2, line.bytes().as_ptr().cast(), line.len);
    }
    let fd = SYSLOG_FD.load(Ordering::Acquire);
    if fd >= 0 {
        // RFC 3164 as the syslog crate writes it: <pri>tag[pid]: message;
        // LOG_DAEMON (3 << 3) | LOG_CRIT (2).
        let mut msg = Line {
            buf: [0; 256],
            len: 0,
        };
        msg.push(b"<26>vmd[");
        msg.push_num(PID.load(Ordering::Acquire) as u64);
        msg.push(b"]: ");
        msg.push(&line.bytes()[b"vmd: ".len()..text_len]);
        // SAFETY: send(2) of a buffer that lives across the call, on a
        // descriptor that is the syslog socket or, if it was closed
        // since, fails harmlessly.
        unsafe {
            libc::send(fd, msg.bytes().as_ptr().cast(), msg.len, libc::MSG_DONTWAIT);
        }
    }
    if code == SYS_SECCOMP {
        // Again, with the same arguments: the filter answers the same, and
        // with SIGSYS blocked in this handler the kernel kills the process.
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: for an SA_SIGINFO handler the third argument is the
            // interrupted context, a valid ucontext_t.
            let g = unsafe { &(*(ctx as *const libc::ucontext_t)).uc_mcontext.gregs };
            let arg = |r: libc::c_int| g[r as usize] as libc::c_long;
            // SAFETY: the call was refused by the filter before it ran and
            // will be again; its arguments are the thread's own.
            unsafe {
                libc::syscall(
                    nr as libc::c_long,
                    arg(libc::REG_RDI),
                    arg(libc::REG_RSI),
                    arg(libc::REG_RDX),
                    arg(libc::REG_R10),
                    arg(libc::REG_R8),
                    arg(libc::REG_R9),
                );
            }
        }
    }
    let _ = ctx;
    // Not reached after a seccomp SIGSYS; a SIGSYS sent by someone else
    // ends the process as its default action would have.
    // SAFETY: _exit(2) is async-signal-safe.
    unsafe { libc::_exit(128 + libc::SIGSYS) }
}
