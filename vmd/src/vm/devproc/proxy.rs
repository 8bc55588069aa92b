//! The VM process's half of a device process (vmd's `virtio_dev_launch`
//! and `virtio_pci_io`): starts `vmd -X`, sends it its setup, and serves
//! the device's I/O BAR by forwarding each access over the sync channel.
//! A thread reads the async channel: interrupts the device raises or
//! lowers on its own, and the end of the socket, which means the device
//! process died.
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::devices::bus::{all_ones, PioDevice};
use crate::devices::irq::IrqLines;
use vmd_proto::{ImsgChannel, ImsgError};

/// What the VM process does when a device process dies: end the VM with
/// this message.
pub type OnDeath = Arc<dyn Fn(String) + Send + Sync>;

/// How long a device process may take to map memory and open its files.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a device process may take to go after SHUTDOWN before the
/// VM process kills it: one that is stopped (SIGSTOP) or stuck must not
/// outlive its VM, holding the guest's memory and its disk.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Set by the async channel's thread once it has reaped the device
/// process (until then its pid cannot name another process).
#[derive(Default)]
struct Exited {
    reaped: std::sync::Mutex<bool>,
    cv: std::sync::Condvar,
}

impl Exited {
    fn set(&self) {
        *self.reaped.lock().unwrap() = true;
        self.cv.notify_all();
    }

    /// Whether the process was reaped within `d`.
    fn wait(&self, d: Duration) -> bool {
        let g = self.reaped.lock().unwrap();
        let (g, _) = self.cv.wait_timeout_while(g, d, |r| !*r).unwrap();
        *g
    }
}

/// What [`launch`] needs.
pub struct Launch<'a> {
    /// vmd's binary (the VM process's own).
    pub exe: &'a Path,
    /// `-d`, `-v` as the VM process has them.
    pub flags: &'a [String],
    /// A descriptor of vmm(4) for the device process.
    pub vmm_fd: OwnedFd,
    pub setup: DevSetup,
    /// One per range with `has_fd`, in order.
    pub mem_fds: Vec<OwnedFd>,
    /// The device's files (`setup.files` of them).
    pub files: Vec<OwnedFd>,
    pub lines: Arc<dyn IrqLines>,
    pub on_death: OnDeath,
    /// Notify writes as one-way KICKs (false: round trips, as vmd).
    pub one_way_kicks: bool,
    /// The device's doorbells and the descriptors for the device process
    /// (`setup.doorbells` of them), where the backend has them.
    pub doorbells: Option<(super::doorbell::Doorbells, Vec<OwnedFd>)>,
}

/// The device's I/O BAR in the VM process.
pub struct Proxy {
    name: String,
    irq: u8,
    lines: Arc<dyn IrqLines>,
    order: Arc<LineOrder>,
    sync: ImsgChannel,
    async_tx: ImsgChannel,
    on_death: OnDeath,
    /// Set once the device failed (its death reported once) or the VM
    /// shuts it down.
    done: Arc<AtomicBool>,
    pid: u32,
    exited: Arc<Exited>,
    /// Register accesses forwarded as round trips, and notify writes
    /// sent one way.
    rpcs: u64,
    kicks: u64,
    one_way_kicks: bool,
    doorbells: Option<super::doorbell::Doorbells>,
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> DevProcError {
    move |source| DevProcError::Io { what, source }
}

fn send(chan: &mut ImsgChannel, m: &ViodevMsg) -> Result<(), DevProcError> {
    chan.compose(IMSG_DEVOP_MSG, 0, 0, &m.to_bytes(), Vec::new())?;
    chan.flush()?;
    Ok(())
}

/// The next viodev message on a blocking channel.
pub fn recv(chan: &mut ImsgChannel) -> Result<ViodevMsg, DevProcError> {
    recv_with(chan, false)
}

/// [`recv`] for a thread that waits on `chan` with no deadline: it waits
/// in poll(2) for input, not in read(2).  A reader blocked in read on a
/// socket is woken whenever the peer consumes what this socket sent (the
/// kernel announces the freed send space on the same wait queue): the
/// async reader at every kick the device reads (a context switch on the
/// device's CPU just before it serves the queue), a vCPU waiting for a
/// register access's answer when the device reads the request.  poll(2)
/// waits for POLLIN only.
fn recv_waiting(chan: &mut ImsgChannel) -> Result<ViodevMsg, DevProcError> {
    recv_with(chan, true)
}

fn recv_with(chan: &mut ImsgChannel, wait_in_poll: bool) -> Result<ViodevMsg, DevProcError> {
    loop {
        if let Some(m) = chan.get()? {
            if m.type_() != IMSG_DEVOP_MSG {
                return Err(DevProcError::BadType(m.type_()));
            }
            return ViodevMsg::from_bytes(&m.data);
        }
        if wait_in_poll {
            use std::os::fd::AsFd;
            crate::event::poll(&[(chan.socket().as_fd(), false)], None);
        }
        if chan.fill()? == 0 {
            return Err(DevProcError::Imsg(ImsgError::Io(
                std::io::ErrorKind::WouldBlock.into(),
            )));
        }
    }
}

/// Starts a device process and waits until it is ready; the proxy for its
/// BAR and the length of its device configuration.
pub fn launch(l: Launch<'_>) -> Result<(Proxy, u32), DevProcError> {
    let name = kind_name(l.setup.kind).to_string();
    let (ours, theirs) = UnixStream::pair().map_err(io("socketpair"))?;
    let (async_ours, async_theirs) = UnixStream::pair().map_err(io("socketpair"))?;
    let mut cmd = Command::new(l.exe);
    cmd.args(["-X", "0", "-t", &l.setup.kind.to_string(), "-p"])
        .arg(&l.setup.vm_name)
        .args(l.flags)
        .stdin(Stdio::from(OwnedFd::from(theirs)));
    let mut child = cmd.spawn().map_err(io("exec device process"))?;
    // The command holds our copy of the child's end of the sync socket:
    // let go of it, so that a child that dies during its setup closes
    // the socket and is reported at once, not at SETUP_TIMEOUT.
    drop(cmd);
    let pid = child.id();
    let mut sync = ImsgChannel::new(ours);
    let mut fds = vec![l.vmm_fd, OwnedFd::from(async_theirs)];
    fds.extend(l.mem_fds);
    fds.extend(l.files);
    let doorbells = l.doorbells.map(|(bells, theirs)| {
        fds.extend(theirs);
        bells
    });
    let payload = vmd_proto::codec::encode(&l.setup)?;
    let ready = (|| {
        sync.compose(IMSG_DEVOP_SETUP, 0, 0, &payload, fds)?;
        sync.flush()?;
        sync.socket()
            .set_read_timeout(Some(SETUP_TIMEOUT))
            .map_err(io("socket timeout"))?;
        let m = match recv(&mut sync) {
            Err(DevProcError::Imsg(ImsgError::Io(e)))
                if e.kind() == std::io::ErrorKind::WouldBlock =>
            {
                return Err(DevProcError::Setup(format!(
                    "no answer within {} s",
                    SETUP_TIMEOUT.as_secs()
                )))
            }
            r => r?,
        };
        sync.socket()
            .set_read_timeout(None)
            .map_err(io("socket timeout"))?;
        match m.type_ {
            VIODEV_MSG_READY => Ok(m.data),
            t => Err(DevProcError::Setup(format!(
                "{name}: device process answered {t} instead of ready"
            ))),
        }
    })();
    let config_len = match ready {
        Ok(n) => n,
        Err(e) => {
            let _ = child.kill();
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            return Err(DevProcError::Setup(format!(
                "{name}: device process {pid} failed to start ({status}): {e}"
            )));
        }
    };
    let done = Arc::new(AtomicBool::new(false));
    let exited = Arc::new(Exited::default());
    let order = Arc::new(LineOrder::default());
    let async_rx = async_ours.try_clone().map_err(io("socket"))?;
    {
        let (lines, order, irq, on_death, done, name) = (
            l.lines.clone(),
            order.clone(),
            l.setup.irq,
            l.on_death.clone(),
            done.clone(),
            name.clone(),
        );
        let reader = AsyncReader {
            lines,
            order,
            irq,
            on_death,
            done,
            name,
            exited: exited.clone(),
        };
        std::thread::Builder::new()
            .name(format!("{}-async", kind_name(l.setup.kind)))
            .spawn(move || reader.run(async_rx, child))
            .map_err(io("thread"))?;
    }
    Ok((
        Proxy {
            name,
            irq: l.setup.irq,
            lines: l.lines,
            order,
            sync,
            async_tx: ImsgChannel::new(async_ours),
            on_death: l.on_death,
            done,
            pid,
            exited,
            rpcs: 0,
            kicks: 0,
            one_way_kicks: l.one_way_kicks,
            doorbells,
        },
        config_len,
    ))
}

/// The device kind's name in messages.
pub fn kind_name(kind: char) -> &'static str {
    match kind {
        'd' => "vioblk",
        's' => "vioscsi",
        'n' => "vionet",
        _ => "virtio device",
    }
}

/// The last line change applied, by the device's sequence number (the
/// `vcpu` byte of its messages): an ISR read's answer (sync channel) and
/// an interrupt raised just before it (async channel) reach the VM on
/// two threads, and the later change must win, or the line could stay up
/// with the ISR read clear.
#[derive(Default)]
pub struct LineOrder(Mutex<u8>);

impl LineOrder {
    fn apply(&self, lines: &dyn IrqLines, irq: u8, m: &ViodevMsg) {
        if m.state == INTR_STATE_NOOP {
            return;
        }
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Newer if ahead by less than half the sequence space: at most
        // two changes are ever in flight.
        if (m.vcpu.wrapping_sub(*last) as i8) <= 0 {
            return;
        }
        *last = m.vcpu;
        match m.state {
            INTR_STATE_ASSERT => lines.assert_irq(irq),
            INTR_STATE_DEASSERT => lines.deassert_irq(irq),
            _ => {}
        }
    }
}

/// The async channel's reader, device → VM: interrupts, then the end.
struct AsyncReader {
    lines: Arc<dyn IrqLines>,
    order: Arc<LineOrder>,
    irq: u8,
    on_death: OnDeath,
    done: Arc<AtomicBool>,
    name: String,
    exited: Arc<Exited>,
}

impl AsyncReader {
    fn run(self, sock: UnixStream, mut child: Child) {
        let AsyncReader {
            lines,
            order,
            irq,
            on_death,
            done,
            name,
            exited,
        } = self;
        let mut chan = ImsgChannel::new(sock);
        let why = loop {
            match recv_waiting(&mut chan) {
                Ok(m) if m.type_ == VIODEV_MSG_KICK || m.type_ == VIODEV_MSG_IO_WRITE => {
                    order.apply(&*lines, irq, &m)
                }
                Ok(m) => log::debug!("{name}: unexpected message {} on async channel", m.type_),
                Err(e) => break e,
            }
        };
        let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
        exited.set();
        if !done.swap(true, Ordering::SeqCst) {
            let msg = match why {
                DevProcError::Imsg(ImsgError::Closed) => {
                    format!("{name}: device process {} died ({status})", child.id())
                }
                e => format!("{name}: device process {}: {e} ({status})", child.id()),
            };
            on_death(msg);
        } else {
            log::debug!("{name}: device process ended ({status})");
        }
    }
}

impl Proxy {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// How many register accesses went over the sync channel.
    pub fn rpcs(&self) -> u64 {
        self.rpcs
    }

    /// How many notify writes went one way as KICKs.
    pub fn kicks(&self) -> u64 {
        self.kicks
    }

    /// vmd's pause/unpause broadcast to the device process (one way).
    pub fn set_paused(&mut self, paused: bool) {
        let t = if paused {
            IMSG_DEVOP_PAUSE
        } else {
            IMSG_DEVOP_UNPAUSE
        };
        self.control(t, &[]);
    }

    /// vionet: the tap's MAC (IMSG_DEVOP_HOSTMAC, one way).
    pub fn set_host_mac(&mut self, mac: [u8; 6]) {
        self.control(IMSG_DEVOP_HOSTMAC, &mac);
    }

    fn control(&mut self, type_: u32, data: &[u8]) {
        if self.done.load(Ordering::SeqCst) {
            return;
        }
        let sent = self
            .async_tx
            .compose(type_, 0, 0, data, Vec::new())
            .and_then(|_| self.async_tx.flush());
        if let Err(e) = sent {
            self.failed(e.into());
        }
    }

    fn failed(&mut self, e: DevProcError) {
        if !self.done.swap(true, Ordering::SeqCst) {
            (self.on_death)(format!("{}: device process {}: {e}", self.name, self.pid));
        }
    }

    /// One register access as an RPC; the answer's data.
    fn rpc(&mut self, type_: u8, reg: u16, size: u8, data: u32) -> Option<u32> {
        if self.done.load(Ordering::SeqCst) {
            return None;
        }
        self.rpcs += 1;
        let m = ViodevMsg {
            type_,
            reg,
            io_sz: size,
            irq: self.irq,
            data,
            data_valid: type_ == VIODEV_MSG_IO_WRITE,
            ..Default::default()
        };
        let r = send(&mut self.sync, &m).and_then(|_| recv_waiting(&mut self.sync));
        match r {
            Ok(a) => {
                self.order.apply(&*self.lines, self.irq, &a);
                Some(a.data)
            }
            Err(e) => {
                self.failed(e);
                None
            }
        }
    }
}

impl PioDevice for Proxy {
    fn pio_read(&mut self, offset: u16, size: u8) -> u32 {
        self.rpc(VIODEV_MSG_IO_READ, offset, size, 0)
            .unwrap_or_else(|| all_ones(size))
    }

    fn pio_write(&mut self, offset: u16, size: u8, value: u32) {
        // A notify write needs no answer (virtio: the device may serve
        // the queue whenever it likes): one message on the async channel
        // instead of a round trip; the device raises the line when done.
        if self.one_way_kicks && offset & 0xff00 == crate::devices::virtio::VIO1_NOTIFY_BAR_OFFSET {
            if self.done.load(Ordering::SeqCst) {
                return;
            }
            self.kicks += 1;
            let m = ViodevMsg {
                type_: VIODEV_MSG_KICK,
                irq: self.irq,
                data: value & 0xffff,
                data_valid: true,
                ..Default::default()
            };
            if let Err(e) = send(&mut self.async_tx, &m) {
                self.failed(e);
            }
            return;
        }
        self.rpc(VIODEV_MSG_IO_WRITE, offset, size, value);
    }

    fn io_bar_moved(&mut self, base: Option<u16>) {
        if let Some(d) = self.doorbells.as_mut() {
            d.move_to(base);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        log::debug!(
            "{}: {} register round trips, {} one-way kicks",
            self.name,
            self.rpcs,
            self.kicks
        );
        if !self.done.swap(true, Ordering::SeqCst) {
            let _ = send(&mut self.async_tx, &ViodevMsg::of_type(VIODEV_MSG_SHUTDOWN));
        }
        // Not reaped yet, so the pid is still that device process's.
        if !self.exited.wait(SHUTDOWN_GRACE) {
            log::warn!(
                "{}: device process {} did not exit within {} s of shutdown, killing it",
                self.name,
                self.pid,
                SHUTDOWN_GRACE.as_secs()
            );
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            self.exited.wait(SHUTDOWN_GRACE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::irq::RecordingLines;

    fn change(state: i8, seq: u8) -> ViodevMsg {
        ViodevMsg {
            type_: VIODEV_MSG_KICK,
            state,
            vcpu: seq,
            ..Default::default()
        }
    }

    /// The device raised the line (seq 1) and then lowered it on an ISR
    /// read (seq 2); the VM reads the answer first: the late raise is
    /// stale and must not leave the line up.  Sequence numbers wrap.
    #[test]
    fn a_stale_line_change_is_ignored() {
        let lines = RecordingLines::default();
        let order = LineOrder::default();
        order.apply(&lines, 5, &change(INTR_STATE_DEASSERT, 2));
        order.apply(&lines, 5, &change(INTR_STATE_ASSERT, 1));
        order.apply(&lines, 5, &change(INTR_STATE_NOOP, 3));
        order.apply(&lines, 5, &change(INTR_STATE_ASSERT, 3));
        assert_eq!(*lines.events.lock().unwrap(), vec![(5, false), (5, true)]);
        let order = LineOrder(Mutex::new(255));
        order.apply(&lines, 5, &change(INTR_STATE_DEASSERT, 0));
        order.apply(&lines, 5, &change(INTR_STATE_ASSERT, 254));
        assert_eq!(lines.events.lock().unwrap().len(), 3);
        assert_eq!(lines.events.lock().unwrap()[2], (5, false));
    }
}
