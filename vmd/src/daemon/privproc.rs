//! The priv process (priv.c): network configuration for VMs (tap
//! descriptions, bridges, groups, rdomains, addresses) as root.  Not built
//! yet — VMs have no network interfaces until the vionet issue — so this
//! process only takes its place: it runs as root, chrooted to `_vmd`'s
//! home where that exists, answers nothing and logs what it is sent.
use std::os::fd::AsFd;

use nix::unistd::User;

use super::args::Args;
use super::events;
use super::{logging, privsep};
use crate::event::EventLoop;
use vmd_proto::Message;

pub fn main(_args: &Args, user: &User) -> i32 {
    privsep::set_title("priv");
    logging::procinit("priv");
    let mut parent = match privsep::parent_channel() {
        Ok(c) => c,
        Err(e) => logging::fatal("priv: parent socket", e),
    };
    let _ = parent.socket().set_nonblocking(true);
    // "First proc runs as root without pledge but in default chroot."
    if !super::no_privdrop() && user.dir.is_dir() {
        if let Err(e) = nix::unistd::chroot(&user.dir).and_then(|_| nix::unistd::chdir("/")) {
            logging::fatal("priv: chroot", e);
        }
    }
    crate::sandbox::confine_or_die(crate::sandbox::Kind::Priv, &Default::default());
    crate::sandbox::test_hook(crate::sandbox::Kind::Priv);
    let mut ev = match EventLoop::with_signals(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP]) {
        Ok(s) => s,
        Err(e) => logging::fatal("signals", e),
    };
    loop {
        let _ = ev.wait(&[(parent.as_fd(), false)], None);
        let _ = ev.take_signals();
        match events::drain(&mut parent) {
            Ok(msgs) => {
                for r in msgs {
                    match r.msg {
                        Message::CtlVerbose(v) => logging::set_verbose(v),
                        Message::CtlReset(_) | Message::Config(_) => {}
                        other => {
                            log::debug!("priv: {} not implemented yet", other.imsg_type().name())
                        }
                    }
                }
            }
            Err(_) => return 0,
        }
    }
}
