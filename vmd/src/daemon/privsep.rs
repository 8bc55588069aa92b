//! proc.c's part: re-executing vmd for a child, the child's end of the
//! socket, process titles and the privilege drop.
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use nix::unistd::{Gid, Uid, User};

use vmd_proto::ImsgChannel;

/// Starts `vmd <args>` with one end of a new socket pair as its standard
/// input; returns the child and the (non-blocking) other end.
pub fn spawn(args: &[String], new_session: bool) -> io::Result<(Child, ImsgChannel)> {
    spawn_exe(&std::env::current_exe()?, args, new_session)
}

/// [`spawn`] of the binary `exe`: for a process that found its own binary
/// before it lost the right to look (the vmm process, after unveil).
pub fn spawn_exe(
    exe: &Path,
    args: &[String],
    new_session: bool,
) -> io::Result<(Child, ImsgChannel)> {
    let (ours, theirs) = UnixStream::pair()?;
    let mut cmd = Command::new(exe);
    cmd.args(args).stdin(Stdio::from(OwnedFd::from(theirs)));
    if new_session {
        cmd.process_group(0);
    }
    let child = cmd.spawn()?;
    ours.set_nonblocking(true)?;
    Ok((child, ImsgChannel::new(ours)))
}

/// A child's socket to its parent: its standard input, taken over (a
/// duplicate; fd 0 itself stays open on the socket, nothing reads it).
pub fn parent_channel() -> io::Result<ImsgChannel> {
    let fd = io::stdin().as_fd().try_clone_to_owned()?;
    let sock = UnixStream::from(fd);
    // A socket is what the parent passes; anything else is a user running
    // an internal flag by hand.
    sock.peer_addr()?;
    Ok(ImsgChannel::new(sock))
}

/// A backstop for a process that faces the guest (the VM process): on
/// Linux the kernel kills it with SIGKILL when the process that started
/// it ends (`PR_SET_PDEATHSIG`), even when it cannot act on the end of
/// file of `chan` (stopped, or a thread stuck).  The end of file is what
/// ends it otherwise, on every system.  False when that parent has
/// already gone (before the signal was asked for): the caller ends.
/// Device processes do not use it: their VM process exits without
/// waiting for them, and they finish the request at hand and close their
/// image at the end of file instead of dying in the middle.
pub fn die_with_parent(chan: &ImsgChannel) -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
        if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL) {
            log::warn!("prctl PR_SET_PDEATHSIG: {e}");
            return true;
        }
        // The socket pair's credentials are those of the process that
        // made it, our parent; if we have another parent now, it ended
        // before the prctl and no signal will come.
        match getsockopt(chan.socket(), PeerCredentials) {
            Ok(c) => c.pid() == nix::unistd::getppid().as_raw(),
            Err(_) => true,
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = chan;
        true
    }
}

/// `setproctitle("%s", title)` as far as Linux allows without `unsafe`:
/// the command name becomes `vmd: <title>` (15 bytes at most).
pub fn set_title(title: &str) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let mut name = format!("vmd: {title}");
        name.truncate(15);
        while !name.is_char_boundary(name.len()) {
            name.pop();
        }
        if let Ok(c) = std::ffi::CString::new(name) {
            let _ = nix::sys::prctl::set_name(&c);
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = title;
}

/// proc.c's drop: chroot (when `root` exists), then the groups, gid and
/// uid of `user`.  Skipped in test mode ([`super::no_privdrop`]).
pub fn drop_privileges(user: &User, root: Option<&Path>) -> io::Result<()> {
    if super::no_privdrop() {
        log::debug!("not dropping privileges (test mode)");
        return Ok(());
    }
    if let Some(root) = root {
        if root.is_dir() {
            nix::unistd::chroot(root)?;
            nix::unistd::chdir("/")?;
        } else {
            // vmd.8 says this process is chrooted: say loudly that it is
            // not (install creates /var/empty).
            log::warn!(
                "{} does not exist: not chrooted, running with / as root",
                root.display()
            );
        }
    }
    set_ids(user.uid, user.gid)
}

fn set_ids(uid: Uid, gid: Gid) -> io::Result<()> {
    #[cfg(not(target_os = "macos"))]
    nix::unistd::setgroups(&[gid])?;
    nix::unistd::setresgid(gid, gid, gid)?;
    nix::unistd::setresuid(uid, uid, uid)?;
    Ok(())
}
