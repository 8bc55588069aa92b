//! The pieces of an event loop each process shares: signals as readable
//! events, non-blocking imsg channels, poll with a deadline.
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vmd_proto::{ImsgChannel, ImsgError, Message, Received};

/// Signals turned into a readable descriptor (libevent's signal events).
pub struct Signals {
    pipe: UnixStream,
    flags: Vec<(i32, Arc<AtomicBool>)>,
}

impl Signals {
    pub fn new(sigs: &[i32]) -> io::Result<Signals> {
        let (read, write) = UnixStream::pair()?;
        read.set_nonblocking(true)?;
        write.set_nonblocking(true)?;
        let mut flags = Vec::new();
        for &s in sigs {
            let f = Arc::new(AtomicBool::new(false));
            signal_hook::flag::register(s, f.clone())?;
            signal_hook::low_level::pipe::register(s, write.try_clone()?)?;
            flags.push((s, f));
        }
        Ok(Signals { pipe: read, flags })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.pipe.as_fd()
    }

    /// The signals that arrived since the last call.
    pub fn take(&self) -> Vec<i32> {
        let mut buf = [0u8; 64];
        while matches!((&self.pipe).read(&mut buf), Ok(n) if n > 0) {}
        self.flags
            .iter()
            .filter(|(_, f)| f.swap(false, Ordering::SeqCst))
            .map(|(s, _)| *s)
            .collect()
    }
}

/// Queues and writes a message; a full socket keeps the rest queued for
/// the next [`flush`].
pub fn post(
    chan: &mut ImsgChannel,
    msg: &Message,
    peerid: u32,
    fds: Vec<OwnedFd>,
) -> Result<(), ImsgError> {
    chan.compose_msg(msg, peerid, 0, fds)?;
    chan.flush()
}

/// Everything readable now: `Err` when the peer closed or misbehaved.
pub fn drain(chan: &mut ImsgChannel) -> Result<Vec<Received>, ImsgError> {
    chan.read_ready()?
        .into_iter()
        .map(Received::try_from)
        .collect()
}

pub use crate::event::{earliest, poll as wait, Ready};
