//! `vmctl console` and `start -c`: attach the terminal to a VM's tty.
//!
//! On OpenBSD vmctl execs `cu -r -l <tty> -s 115200`.  Elsewhere (Linux
//! has no OpenBSD cu; its uucp cu takes other options) vmctl is its own
//! cu: the tty in raw mode at 115200 baud, the terminal in cu's mode,
//! bytes copied both ways, and cu's escapes at the start of a line: `~.`
//! or `~^D` disconnect (`[EOT]`), `~^Z` suspends, `~#` sends a break,
//! `~~` sends a tilde, `~?` lists them.

use std::io::Write;

use crate::fail::Fail;

/// The line speed cu is asked for.
pub const SPEED: u32 = 115200;

/// Connects the terminal to `tty`; returns the exit status when the
/// session ends.
pub fn open(tty: &str, out: &mut dyn Write, err: &mut dyn Write) -> Result<i32, Fail> {
    let _ = out.flush();
    let _ = err.flush();
    platform::open(tty)
}

#[cfg(target_os = "openbsd")]
mod platform {
    use std::ffi::CString;

    use crate::fail::Fail;

    const VMCTL_CU: &str = "/usr/bin/cu";

    /// Execs cu; vmctl's own descriptors are close-on-exec.
    pub fn open(tty: &str) -> Result<i32, Fail> {
        let speed = super::SPEED.to_string();
        let argv: Vec<CString> = [VMCTL_CU, "-r", "-l", tty, "-s", &speed]
            .iter()
            .map(|s| CString::new(*s).map_err(|_| Fail::errx("failed to open the console")))
            .collect::<Result<_, _>>()?;
        let e = nix::unistd::execv(&argv[0], &argv).unwrap_err();
        Err(Fail::err("failed to open the console", e as i32))
    }
}

#[cfg(not(target_os = "openbsd"))]
mod platform {
    pub use super::client::run as open;
}

/// What a byte typed on the terminal does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Send it to the VM.
    Pass,
    /// Hold it back: a tilde that may start an escape.
    Hold,
    /// The escape `~<byte>`.
    Escape(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    None,
    Newline,
    Tilde,
}

/// cu's escape recognition: a `~` right after a carriage return (or at
/// the start) begins an escape, when the input is a terminal.
#[derive(Debug)]
pub struct Escapes {
    state: State,
    tty: bool,
}

impl Escapes {
    pub fn new(tty: bool) -> Escapes {
        Escapes {
            state: State::Newline,
            tty,
        }
    }

    pub fn step(&mut self, b: u8) -> Step {
        match self.state {
            State::None => {
                if self.tty && b == b'\r' {
                    self.state = State::Newline;
                }
                Step::Pass
            }
            State::Newline => {
                if self.tty && b == b'~' {
                    self.state = State::Tilde;
                    return Step::Hold;
                }
                if b != b'\r' {
                    self.state = State::None;
                }
                Step::Pass
            }
            State::Tilde => {
                self.state = State::Newline;
                Step::Escape(b)
            }
        }
    }
}

/// `~?`'s list.
pub const HELP: &str = "\r\n~.      drop connection\r\n~^Z     suspend cu\r\n~#      send break\r\n~~      send a tilde\r\n~?      get this summary\r\n";

#[cfg(not(target_os = "openbsd"))]
mod client {
    use std::fs::{File, OpenOptions};
    use std::io::{self, Write};
    use std::os::fd::{AsFd, BorrowedFd};
    use std::os::unix::fs::OpenOptionsExt;

    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::signal::{SigSet, SigmaskHow, Signal};
    use nix::sys::termios::{
        self, BaudRate, ControlFlags, InputFlags, LocalFlags, OutputFlags, SetArg,
        SpecialCharacterIndices as Cc, Termios,
    };

    use super::{Escapes, Step, HELP, SPEED};
    use crate::fail::Fail;

    /// `_POSIX_VDISABLE`.
    const VDISABLE: u8 = 0;

    /// The terminal as cu sets it, restored on drop.
    struct Terminal {
        saved: Option<Termios>,
    }

    impl Terminal {
        fn setup(stdin: BorrowedFd<'_>) -> Result<Terminal, Fail> {
            if !nix::unistd::isatty(stdin).unwrap_or(false) {
                return Ok(Terminal { saved: None });
            }
            let saved = termios::tcgetattr(stdin).map_err(|e| Fail::err("tcgetattr", e as i32))?;
            let t = Terminal { saved: Some(saved) };
            t.set(stdin)?;
            Ok(t)
        }

        /// cu's set_termios.
        fn set(&self, stdin: BorrowedFd<'_>) -> Result<(), Fail> {
            let Some(saved) = &self.saved else {
                return Ok(());
            };
            let mut tio = saved.clone();
            tio.local_flags &= !(LocalFlags::ICANON | LocalFlags::IEXTEN | LocalFlags::ECHO);
            tio.input_flags &= !(InputFlags::INPCK | InputFlags::ICRNL);
            tio.output_flags &= !OutputFlags::OPOST;
            tio.control_chars[Cc::VMIN as usize] = 1;
            tio.control_chars[Cc::VTIME as usize] = 0;
            for c in [Cc::VDISCARD, Cc::VINTR, Cc::VLNEXT, Cc::VQUIT, Cc::VSUSP] {
                tio.control_chars[c as usize] = VDISABLE;
            }
            termios::tcsetattr(stdin, SetArg::TCSAFLUSH, &tio)
                .map_err(|e| Fail::err("tcsetattr", e as i32))
        }

        fn restore(&self) {
            if let Some(saved) = &self.saved {
                let _ = termios::tcsetattr(io::stdin().as_fd(), SetArg::TCSAFLUSH, saved);
            }
        }
    }

    impl Drop for Terminal {
        fn drop(&mut self) {
            self.restore();
        }
    }

    /// cu's set_line: raw, 8 bits, no modem control, 115200 baud.
    fn set_line(line: &File) -> nix::Result<()> {
        let mut tio = termios::tcgetattr(line)?;
        termios::cfmakeraw(&mut tio);
        tio.input_flags = InputFlags::empty();
        tio.output_flags = OutputFlags::empty();
        tio.local_flags = LocalFlags::empty();
        tio.control_flags = ControlFlags::CREAD | ControlFlags::CS8 | ControlFlags::CLOCAL;
        tio.control_chars[Cc::VMIN as usize] = 1;
        tio.control_chars[Cc::VTIME as usize] = 0;
        termios::cfsetspeed(&mut tio, BaudRate::B115200)?;
        termios::tcsetattr(line, SetArg::TCSAFLUSH, &tio)
    }

    /// Signals that end the session like cu's handlers, read from a
    /// signalfd where there is one (no handlers, no unsafe); SIGINT and
    /// SIGQUIT are held back, as cu ignores them.
    struct Signals {
        #[cfg(target_os = "linux")]
        fd: Option<nix::sys::signalfd::SignalFd>,
    }

    impl Signals {
        fn block() -> Signals {
            let mut held = SigSet::empty();
            held.add(Signal::SIGINT);
            held.add(Signal::SIGQUIT);
            let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&held), None);
            Signals {
                #[cfg(target_os = "linux")]
                fd: Self::signalfd(),
            }
        }

        /// SIGTERM and SIGHUP, blocked only once they can be read.
        #[cfg(target_os = "linux")]
        fn signalfd() -> Option<nix::sys::signalfd::SignalFd> {
            use nix::sys::signalfd::{SfdFlags, SignalFd};
            let mut set = SigSet::empty();
            set.add(Signal::SIGTERM);
            set.add(Signal::SIGHUP);
            let fd = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC).ok()?;
            nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None).ok()?;
            Some(fd)
        }

        #[cfg(target_os = "linux")]
        fn fd(&self) -> Option<BorrowedFd<'_>> {
            self.fd.as_ref().map(|f| f.as_fd())
        }

        #[cfg(not(target_os = "linux"))]
        fn fd(&self) -> Option<BorrowedFd<'_>> {
            None
        }

        /// The signal's name as cu prints it (`sys_signame`, lower case).
        #[cfg(target_os = "linux")]
        fn take(&self) -> &'static str {
            match self.fd.as_ref().map(|f| f.read_signal()) {
                Some(Ok(Some(si))) if si.ssi_signo == Signal::SIGHUP as u32 => "hup",
                _ => "term",
            }
        }

        #[cfg(not(target_os = "linux"))]
        fn take(&self) -> &'static str {
            "term"
        }
    }

    fn write_all(fd: BorrowedFd<'_>, mut b: &[u8]) -> nix::Result<()> {
        while !b.is_empty() {
            match nix::unistd::write(fd, b) {
                Ok(n) => b = &b[n..],
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn print(s: &str) {
        let mut o = io::stdout().lock();
        let _ = o.write_all(s.as_bytes());
        let _ = o.flush();
    }

    /// The session; 0 when it ends.
    pub fn run(path: &str) -> Result<i32, Fail> {
        let line = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(path)
            .map_err(|e| Fail::io(format!("open(\"{path}\")"), &e))?;
        set_line(&line).map_err(|e| Fail::err("tcsetattr", e as i32))?;
        let stdin = io::stdin();
        let stdout = io::stdout();
        let is_tty = nix::unistd::isatty(stdin.as_fd()).unwrap_or(false);
        let signals = Signals::block();
        let term = Terminal::setup(stdin.as_fd())?;
        print(&format!("Connected to {path} (speed {SPEED})\r\n"));

        let mut esc = Escapes::new(is_tty);
        let mut buf = [0u8; 4096];
        let mut send = Vec::with_capacity(buf.len());
        let mut signalled = None;
        'session: loop {
            let mut fds = vec![
                PollFd::new(stdin.as_fd(), PollFlags::POLLIN),
                PollFd::new(line.as_fd(), PollFlags::POLLIN),
            ];
            if let Some(fd) = signals.fd() {
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(Fail::err("poll", e as i32)),
            }
            let ready = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
            let (input, output, signal) = (ready(0), ready(1), fds.len() > 2 && ready(2));
            drop(fds);
            if signal {
                signalled = Some(signals.take());
                break;
            }
            if output {
                match nix::unistd::read(line.as_fd(), &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if write_all(stdout.as_fd(), &buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            if input {
                let n = match nix::unistd::read(stdin.as_fd(), &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                send.clear();
                for &b in &buf[..n] {
                    match esc.step(b) {
                        Step::Pass => send.push(b),
                        Step::Hold => {}
                        Step::Escape(b'.' | 0x04) => {
                            let _ = write_all(line.as_fd(), &send);
                            break 'session;
                        }
                        Step::Escape(b'~') => send.push(b'~'),
                        Step::Escape(b'#') => {
                            let _ = termios::tcsendbreak(&line, 0);
                        }
                        Step::Escape(b'?') => print(HELP),
                        Step::Escape(0x1a) => {
                            term.restore();
                            let _ = nix::sys::signal::raise(Signal::SIGTSTP);
                            term.set(stdin.as_fd())?;
                        }
                        Step::Escape(_) => {}
                    }
                }
                if write_all(line.as_fd(), &send).is_err() {
                    break;
                }
            }
        }
        drop(term);
        match signalled {
            Some(name) => print(&format!("\r\n[SIG{name}]\n")),
            None => print("\r\n[EOT]\n"),
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(e: &mut Escapes, input: &[u8]) -> Vec<Step> {
        input.iter().map(|&b| e.step(b)).collect()
    }

    #[test]
    fn console_escape_at_line_start() {
        let mut e = Escapes::new(true);
        // At the start a tilde begins an escape.
        assert_eq!(feed(&mut e, b"~."), vec![Step::Hold, Step::Escape(b'.')]);
        // In the middle of a line it is just a tilde.
        let mut e = Escapes::new(true);
        assert_eq!(
            feed(&mut e, b"a~."),
            vec![Step::Pass, Step::Pass, Step::Pass]
        );
        // After a carriage return it is an escape again.
        assert_eq!(
            feed(&mut e, b"\r~."),
            vec![Step::Pass, Step::Hold, Step::Escape(b'.')]
        );
        // Repeated carriage returns keep the line start.
        assert_eq!(
            feed(&mut e, b"\r\r~~x"),
            vec![
                Step::Pass,
                Step::Pass,
                Step::Hold,
                Step::Escape(b'~'),
                Step::Pass
            ]
        );
        // A newline alone is not a line start (cu looks for \r).
        let mut e = Escapes::new(true);
        assert_eq!(
            feed(&mut e, b"x\n~."),
            vec![Step::Pass, Step::Pass, Step::Pass, Step::Pass]
        );
    }

    #[test]
    fn console_no_escapes_without_a_terminal() {
        let mut e = Escapes::new(false);
        assert_eq!(feed(&mut e, b"~.\r~."), vec![Step::Pass; 5]);
    }
}
