//! What vmd(8) and vmctl(8) share: how their processes talk and the
//! vocabulary they talk in.  vmctl links this crate and nothing of the VM
//! machine.
//!
//! Messages are imsg-style over Unix stream sockets (reference §3.2-§3.7):
//!
//! - [`imsg`]: framing (a 16-byte header: type, length, flags, peer id,
//!   pid), the size limit, descriptors passed with `SCM_RIGHTS`, and
//!   [`ImsgChannel`], a buffered channel for blocking or non-blocking
//!   sockets.
//! - [`codec`]: payloads to bytes and back (serde + bincode, in that one
//!   module).
//! - [`msg`]: the message catalogue numbered as vmd.h, the payload
//!   structures (`vmop_result`, `vmop_id`, `vmop_info_result`,
//!   `vmop_create_params`, ...), and typed [`ImsgChannel::send`] /
//!   [`ImsgChannel::recv`].
//!
//! Nothing here panics on what a peer sends: a malformed, oversized or
//! undecodable message is an [`ImsgError`] naming the problem, and the
//! caller logs it and drops that peer.
//!
//! The vocabulary:
//!
//! - [`config`]: the configuration types the payloads carry (disk
//!   formats, boot devices, interfaces, owners, the global part of
//!   vm.conf), the `VMOP_CREATE_*` and `VMIFF_*` bits, and vmd.h's limits.
//! - [`compat`]: OpenBSD's strtonum(3), scan_scaled(3) and fmt_scaled(3),
//!   which vm.conf and vmctl's command line both parse with.
//! - [`socket_path`]: where vmd's control socket is.
#![forbid(unsafe_code)]

pub mod codec;
pub mod compat;
pub mod config;
pub mod imsg;
pub mod msg;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use codec::CodecError;
pub use imsg::{Imsg, ImsgChannel, ImsgError, ImsgHdr, ImsgReader, MAX_IMSGSIZE};
pub use msg::{ImsgType, Message, Received};

/// vmd.h's `SOCKET_NAME`: the control socket.
pub const SOCKET_NAME: &str = "/var/run/vmd.sock";
/// Names another control socket, for tests and development trees (vmd
/// binds it, vmctl connects to it).
pub const ENV_SOCKET: &str = "VMD_SOCKET";

/// The control socket's path: `$VMD_SOCKET` when set and not empty, else
/// [`SOCKET_NAME`].
pub fn socket_path() -> PathBuf {
    std::env::var_os(ENV_SOCKET)
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(SOCKET_NAME))
}
