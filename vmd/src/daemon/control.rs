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
use std::time::{Duration, Instant};

use nix::unistd::User;

use super::args::Args;
use super::events;
use super::{logging, privsep, NO_PEER};
use crate::event::EventLoop;
use crate::proc::{peer_credentials, PeerCred};
use vmd_proto::msg::*;
use vmd_proto::{ImsgChannel, ImsgError, ImsgType, Message};

struct Client {
    id: u32,
    chan: ImsgChannel,
    cred: PeerCred,
    /// Asked to wait; the VM id comes with the response.
    wait_requested: bool,
    waiting_for: Option<u32>,
    /// Requests forwarded to the parent and not answered yet.
    inflight: u32,
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

/// Requests of one client the parent has not answered yet, at most: a
/// client that sends faster than it reads is not read from while it has
/// this many, so the answers it has not read cannot pile up in the parent
/// and here.  One, as vmctl sends one request at a time: the parent then
/// has at most one request of each client queued, so a client that
/// pipelines thousands of requests delays another client's answer by one
/// request of its own, not by its whole backlog (measured: 1,000 clients,
/// a third of them pipelining GET_INFO without reading, and a fresh
/// client's GET_INFO answered within milliseconds instead of seconds).
pub const MAX_INFLIGHT: u32 = 1;
/// Bytes queued for a client, at most; a client over it is dropped.
pub const CLIENT_MAX_QUEUED: usize = 1 << 20;

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
    if let Err(e) = privsep::drop_privileges(user, Some(Path::new(super::PRIVSEP_CHROOT))) {
        logging::fatal("control: cannot drop privileges", e);
    }
    // The parent sets the socket's owner (`socket owner`) once it exists.
    if let Err(e) = events::post(&mut parent, &Message::Done, NO_PEER, Vec::new()) {
        logging::fatal("control: parent", e);
    }
    // control.c: pledge "stdio unix recvfd sendfd".
    crate::sandbox::confine_or_die(crate::sandbox::Kind::Control, &Default::default());
    crate::sandbox::test_hook(crate::sandbox::Kind::Control);
    let mut ev = match EventLoop::with_signals(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP]) {
        Ok(s) => s,
        Err(e) => logging::fatal("signals", e),
    };
    let mut clients: Vec<Client> = Vec::new();
    let mut next_id: u32 = 1;
    let mut accept = AcceptPause::default();
    loop {
        let listening = accept.until.is_none();
        let ready = {
            let mut fds = vec![(parent.as_fd(), parent.pending())];
            fds.extend(clients.iter().map(|c| (c.chan.as_fd(), c.chan.pending())));
            if listening {
                fds.push((listener.as_fd(), false));
            }
            ev.wait(&fds, accept.until).0
        };
        // The parent ends us by closing the socket.
        let _ = ev.take_signals();
        // Clients accepted below were not polled.
        let polled = clients.len();
        if listening && ready.last().is_some_and(|r| r.read) {
            loop {
                let sock = match listener.accept() {
                    Ok((sock, _)) => sock,
                    Err(e) => {
                        accept.failed(&e);
                        break;
                    }
                };
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
                let mut chan = ImsgChannel::new(sock);
                chan.set_max_queued(CLIENT_MAX_QUEUED);
                clients.push(Client {
                    id,
                    chan,
                    cred,
                    wait_requested: false,
                    waiting_for: None,
                    inflight: 0,
                });
            }
        }
        accept.expire(Instant::now());
        let mut closed = Vec::new();
        if ready[0].write {
            let _ = parent.flush();
        }
        if ready[0].read {
            match events::drain(&mut parent) {
                Ok(msgs) => {
                    for r in msgs {
                        if let Some(gone) = dispatch_parent(&mut clients, r) {
                            closed.push(gone);
                        }
                    }
                }
                Err(e) => {
                    if !matches!(e, ImsgError::Closed) {
                        log::warn!("control: parent: {e}");
                    }
                    return 0;
                }
            }
        }
        for (k, c) in clients.iter_mut().enumerate() {
            if closed.contains(&c.id) {
                continue;
            }
            let r = if k < polled {
                ready[1 + k]
            } else {
                events::Ready::default()
            };
            if r.write && c.chan.flush().is_err() {
                closed.push(c.id);
                continue;
            }
            if let Err(e) = serve(c, &mut parent, r.read) {
                // A malformed or oversized message, or one too many
                // unread bytes either way, drops this client only; the
                // daemon and the other clients carry on.
                if !matches!(e, ImsgError::Closed) {
                    log::warn!("control: dropping client of uid {}: {e}", c.cred.uid);
                }
                closed.push(c.id);
            }
        }
        if !closed.is_empty() {
            // A descriptor is free again: no need to wait out the pause.
            accept.until = None;
        }
        clients.retain(|c| !closed.contains(&c.id));
        let _ = parent.flush();
    }
}

/// How long accepting pauses when the process is out of descriptors.
pub const ACCEPT_PAUSE: Duration = Duration::from_secs(1);
/// The shortest time between two "out of descriptors" log lines.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// control.c's answer to EMFILE and ENFILE in accept(2): the connection
/// stays in the listen queue and poll would report the socket readable
/// again at once, so accepting pauses for [`ACCEPT_PAUSE`] (or until a
/// client leaves), and it is logged.
#[derive(Debug, Default)]
struct AcceptPause {
    until: Option<Instant>,
    logged: Option<Instant>,
}

impl AcceptPause {
    fn failed(&mut self, e: &std::io::Error) {
        let now = Instant::now();
        match e.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE) => {
                self.until = Some(now + ACCEPT_PAUSE);
                if !matches!(self.logged, Some(t) if now.duration_since(t) < ACCEPT_LOG_INTERVAL) {
                    self.logged = Some(now);
                    log::warn!(
                        "control_accept: {e}: not accepting connections for {} s",
                        ACCEPT_PAUSE.as_secs()
                    );
                }
            }
            Some(libc::EAGAIN | libc::EINTR | libc::ECONNABORTED) => {}
            _ => log::warn!("control_accept: accept: {e}"),
        }
    }

    fn expire(&mut self, now: Instant) {
        if self.until.is_some_and(|t| t <= now) {
            self.until = None;
        }
    }
}

/// Reads from a client (when poll said so) and handles what it sent, as
/// far as [`MAX_INFLIGHT`] allows; the rest stays buffered in its channel
/// (which bounds it) until the parent answers.  `Err`: drop the client.
fn serve(c: &mut Client, parent: &mut ImsgChannel, readable: bool) -> Result<(), ImsgError> {
    if readable {
        c.chan.fill()?;
    }
    // Nothing more of a client whose answers it has not read yet is
    // forwarded: what it makes vmd produce stays bounded by one answer.
    while c.inflight < MAX_INFLIGHT && !c.chan.pending() {
        let Some(imsg) = c.chan.get()? else {
            break;
        };
        let r = vmd_proto::Received::try_from(imsg)?;
        if !dispatch_client(c, parent, r) {
            return Err(ImsgError::Closed);
        }
    }
    Ok(())
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
    c.inflight += 1;
    true
}

/// An answer from the parent, for the client it names; the id of a
/// client to drop, when it cannot take the answer.
fn dispatch_parent(clients: &mut [Client], r: vmd_proto::Received) -> Option<u32> {
    if let Message::TerminateVmEvent(ref vmr) = r.msg {
        let mut gone = None;
        for c in clients.iter_mut().filter(|c| c.waiting_for == Some(vmr.id)) {
            c.waiting_for = None;
            if let Err(e) = events::post(&mut c.chan, &r.msg, 0, Vec::new()) {
                gone = gone.or(drop_client(c, e));
            }
        }
        return gone;
    }
    let Some(c) = clients.iter_mut().find(|c| c.id == r.peerid) else {
        log::debug!("control: {} for a gone client", r.msg.imsg_type().name());
        return None;
    };
    // Every request gets one answer but GET_INFO, whose list ends with
    // its GET_INFO_VM_END_DATA.
    if !matches!(r.msg, Message::GetInfoVmData(_)) {
        c.inflight = c.inflight.saturating_sub(1);
    }
    if let Message::TerminateVmResponse(ref vmr) = r.msg {
        if c.wait_requested {
            c.wait_requested = false;
            if vmr.result == 0 {
                c.waiting_for = Some(vmr.id);
                return None;
            }
        }
    }
    match events::post(&mut c.chan, &r.msg, 0, r.fds) {
        Ok(()) => None,
        Err(e) => drop_client(c, e),
    }
}

/// A client whose answer could not be sent: its id, to be dropped.
fn drop_client(c: &Client, e: ImsgError) -> Option<u32> {
    if !matches!(e, ImsgError::Closed) {
        log::warn!("control: dropping client of uid {}: {e}", c.cred.uid);
    }
    Some(c.id)
}
