//! The control process (control.c): owns the control socket, learns each
//! client's uid from its credentials, lets non-root clients send only
//! what vmd allows, relays requests to the parent (peer id: the client)
//! and answers back to the client the parent names.
//!
//! Waiting (`vmctl stop -w`, `vmctl wait`): a client that sent
//! `WAIT_VM_REQUEST` or `TERMINATE_VM_REQUEST` with `VMOP_WAIT` does not
//! get the parent's successful `TERMINATE_VM_RESPONSE` (only an error);
//! it waits for the VM id that response names and gets the
//! `TERMINATE_VM_EVENT` when that VM exits, as every waiter of it does.
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;

use nix::unistd::User;

use super::args::Args;
use super::events::{self, Signals};
use super::{logging, privsep, NO_PEER};
use crate::proc::{peer_credentials, PeerCred};
use vmd_proto::msg::*;
use vmd_proto::{ImsgChannel, ImsgType, Message};

struct Client {
    id: u32,
    chan: ImsgChannel,
    cred: PeerCred,
    /// Asked to wait; the VM id comes with the response.
    wait_requested: bool,
    waiting_for: Option<u32>,
}

/// What a client other than root may send (§3.5).
pub fn allowed_for_user(t: ImsgType) -> bool {
    matches!(
        t,
        ImsgType::GetInfoVmRequest
            | ImsgType::WaitVmRequest
            | ImsgType::TerminateVmRequest
            | ImsgType::StartVmRequest
            | ImsgType::PauseVm
            | ImsgType::UnpauseVm
    )
}

/// `control_init`: the socket, mode 0660, before the privilege drop.
pub fn control_init(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o117));
    let l = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let l = l?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// The control process; the exit status.
pub fn main(_args: &Args, user: &User) -> i32 {
    privsep::set_title("control");
    logging::procinit("control");
    let mut parent = match privsep::parent_channel() {
        Ok(c) => c,
        Err(e) => logging::fatal("control: parent socket", e),
    };
    let _ = parent.socket().set_nonblocking(true);
    let path = vmd_proto::socket_path();
    let listener = match control_init(&path) {
        Ok(l) => l,
        Err(e) => logging::fatal(&format!("control_init: {}", path.display()), e),
    };
    if let Err(e) = privsep::drop_privileges(user, Some(Path::new("/var/empty"))) {
        logging::fatal("control: cannot drop privileges", e);
    }
    // The parent sets the socket's owner (`socket owner`) once it exists.
    if let Err(e) = events::post(&mut parent, &Message::Done, NO_PEER, Vec::new()) {
        logging::fatal("control: parent", e);
    }
    let signals = match Signals::new(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP]) {
        Ok(s) => s,
        Err(e) => logging::fatal("signals", e),
    };
    let mut clients: Vec<Client> = Vec::new();
    let mut next_id: u32 = 1;
    loop {
        let ready = {
            let mut fds = vec![
                (signals.fd(), false),
                (listener.as_fd(), false),
                (parent.as_fd(), parent.pending()),
            ];
            fds.extend(clients.iter().map(|c| (c.chan.as_fd(), c.chan.pending())));
            events::wait(&fds, None)
        };
        // The parent ends us by closing the socket.
        let _ = signals.take();
        if ready[1].read {
            while let Ok((sock, _)) = listener.accept() {
                let cred = match peer_credentials(&sock) {
                    Ok(c) => c,
                    Err(e) => {
                        log::warn!("control_accept: failed to get peer credentials: {e}");
                        continue;
                    }
                };
                if sock.set_nonblocking(true).is_err() {
                    continue;
                }
                let id = next_id;
                next_id = next_id.wrapping_add(1).max(1);
                if next_id == NO_PEER || next_id == IMSG_AGENTX_PEERID {
                    next_id = 1;
                }
                clients.push(Client {
                    id,
                    chan: ImsgChannel::new(sock),
                    cred,
                    wait_requested: false,
                    waiting_for: None,
                });
            }
        }
        if ready[2].write {
            let _ = parent.flush();
        }
        if ready[2].read {
            match events::drain(&mut parent) {
                Ok(msgs) => {
                    for r in msgs {
                        dispatch_parent(&mut clients, r);
                    }
                }
                Err(e) => {
                    if !matches!(e, vmd_proto::ImsgError::Closed) {
                        log::warn!("control: parent: {e}");
                    }
                    return 0;
                }
            }
        }
        let mut closed = Vec::new();
        for (k, c) in clients.iter_mut().enumerate() {
            let r = ready.get(3 + k).copied().unwrap_or_default();
            if r.write && c.chan.flush().is_err() {
                closed.push(c.id);
                continue;
            }
            if !r.read {
                continue;
            }
            match events::drain(&mut c.chan) {
                Ok(msgs) => {
                    for m in msgs {
                        if !dispatch_client(c, &mut parent, m) {
                            closed.push(c.id);
                            break;
                        }
                    }
                }
                Err(e) => {
                    // A malformed or oversized message drops this client
                    // only; the daemon and the other clients carry on.
                    if !matches!(e, vmd_proto::ImsgError::Closed) {
                        log::warn!("control: dropping client of uid {}: {e}", c.cred.uid);
                    }
                    closed.push(c.id);
                }
            }
        }
        clients.retain(|c| !closed.contains(&c.id));
        let _ = parent.flush();
    }
}

/// One request from a client; false closes the connection.
fn dispatch_client(c: &mut Client, parent: &mut ImsgChannel, r: vmd_proto::Received) -> bool {
    let t = r.msg.imsg_type();
    if c.cred.uid != 0 && !allowed_for_user(t) {
        log::warn!("denied request {} from uid {}", t as u32, c.cred.uid);
        let _ = events::post(
            &mut c.chan,
            &Message::CtlFail(Some(libc::EPERM)),
            0,
            Vec::new(),
        );
        return false;
    }
    let fds = r.fds;
    let msg = match r.msg {
        Message::StartVmRequest(mut p) => {
            p.owner.uid = c.cred.uid;
            p.owner.gid = None;
            Message::StartVmRequest(p)
        }
        Message::TerminateVmRequest(mut vid) => {
            vid.uid = c.cred.uid;
            c.wait_requested = vid.flags & VMOP_WAIT != 0;
            Message::TerminateVmRequest(vid)
        }
        Message::WaitVmRequest(mut vid) => {
            vid.uid = c.cred.uid;
            c.wait_requested = true;
            Message::WaitVmRequest(vid)
        }
        Message::PauseVm(mut vid) => {
            vid.uid = c.cred.uid;
            Message::PauseVm(vid)
        }
        Message::UnpauseVm(mut vid) => {
            vid.uid = c.cred.uid;
            Message::UnpauseVm(vid)
        }
        Message::CtlVerbose(v) => {
            logging::set_verbose(v);
            Message::CtlVerbose(v)
        }
        m @ (Message::GetInfoVmRequest(_)
        | Message::Load(_)
        | Message::Reload
        | Message::CtlReset(_)) => m,
        other => {
            log::debug!(
                "control_dispatch_imsg: error handling imsg {}",
                other.imsg_type() as u32
            );
            return false;
        }
    };
    if let Err(e) = events::post(parent, &msg, c.id, fds) {
        log::warn!("control: cannot forward to parent: {e}");
        return false;
    }
    true
}

/// An answer from the parent, for the client it names.
fn dispatch_parent(clients: &mut [Client], r: vmd_proto::Received) {
    if let Message::TerminateVmEvent(ref vmr) = r.msg {
        for c in clients.iter_mut().filter(|c| c.waiting_for == Some(vmr.id)) {
            c.waiting_for = None;
            let _ = events::post(&mut c.chan, &r.msg, 0, Vec::new());
        }
        return;
    }
    let Some(c) = clients.iter_mut().find(|c| c.id == r.peerid) else {
        log::debug!("control: {} for a gone client", r.msg.imsg_type().name());
        return;
    };
    if let Message::TerminateVmResponse(ref vmr) = r.msg {
        if c.wait_requested {
            c.wait_requested = false;
            if vmr.result == 0 {
                c.waiting_for = Some(vmr.id);
                return;
            }
        }
    }
    let _ = events::post(&mut c.chan, &r.msg, 0, r.fds);
}
