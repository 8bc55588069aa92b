//! The imsg side of the daemon processes' event loops
//! ([`crate::event::EventLoop`]): non-blocking sends and reads.
use std::os::fd::OwnedFd;

use vmd_proto::{ImsgChannel, ImsgError, Message, Received};

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

pub use crate::event::{earliest, Ready};
