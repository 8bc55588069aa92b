//! The connection to vmd's control socket (main.c `vmmaction`): connect,
//! send one request, read the answers.  The socket is vmd's
//! ([`vmd_proto::socket_path`]: `/var/run/vmd.sock`, or `$VMD_SOCKET`).

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use vmd_proto::{ImsgChannel, ImsgError, Message};

use crate::fail::Fail;

/// A connection to vmd.
pub struct Control {
    chan: ImsgChannel,
    path: PathBuf,
}

impl Control {
    pub fn connect(path: &Path) -> Result<Control, Fail> {
        let sock = UnixStream::connect(path)
            .map_err(|e| Fail::io(format!("connect: {}", path.display()), &e))?;
        Ok(Control {
            chan: ImsgChannel::new(sock),
            path: path.to_path_buf(),
        })
    }

    /// Another connection to the same vmd (vmd answers each connection's
    /// waits on its own: `stop -a -w` takes one per VM).
    pub fn another(&self) -> Result<Control, Fail> {
        Control::connect(&self.path)
    }

    /// Sends `msg` with `fds` (the boot image of `start`).
    pub fn send(&mut self, msg: &Message, fds: Vec<OwnedFd>) -> Result<(), Fail> {
        self.chan.send_with(msg, 0, 0, fds).map_err(|e| match e {
            ImsgError::Io(e) => Fail::io("write error", &e),
            ImsgError::Closed => Fail::err("write error", libc::EPIPE),
            other => Fail::errx(format!("write error: {other}")),
        })
    }

    /// The next answer.  `IMSG_CTL_FAIL` ends vmctl here, as in main.c:
    /// `command failed`, with the error's text when it carries one.
    pub fn recv(&mut self) -> Result<Message, Fail> {
        match self.chan.recv() {
            Ok(r) => match r.msg {
                Message::CtlFail(Some(errno)) if errno != 0 => {
                    Err(Fail::err("command failed", errno))
                }
                Message::CtlFail(_) => Err(Fail::errx("command failed")),
                msg => Ok(msg),
            },
            Err(ImsgError::Closed | ImsgError::Truncated(_)) => Err(Fail::errx("pipe closed")),
            Err(ImsgError::Io(e)) => Err(Fail::io("read error", &e)),
            Err(_) => Err(Fail::errx("imsg_get error")),
        }
    }
}
