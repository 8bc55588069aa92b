//! The device process's half: serves one device core over the sync and
//! async channels until the VM process says SHUTDOWN or goes away.
//! Generic over the device: whatever [`VirtioDevice`] the process built
//! from its setup (vioblk from a disk chain, vioscsi from an ISO).
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::devices::bus::PioDevice;
use crate::devices::irq::IrqLines;
use crate::devices::virtio::transport::{VirtioDevice, VirtioPci};
use crate::vm::guest_memory::VmMemory;
use vmd_proto::{ImsgChannel, ImsgError};

/// How long a device that [polls](crate::devices::virtio::transport::VirtioDevice::polls)
/// keeps looking at a kicked queue after the last chain it found there.
/// 0: as long as it finds chains, and not a moment longer.  While it
/// serves them the driver does not kick, so what the driver makes
/// available meanwhile costs neither a VM exit nor a message; when the
/// queue is empty the device sleeps until the next kick.  Spinning on
/// an empty queue for a while (`VMD_POLL_US`) saves the wake-up when the
/// host has a CPU to spare, and costs the vCPU its CPU when it has not:
/// on the 2-CPU shared hosts here, 50 us cut random 4 KiB reads from
/// 57k to 3k IOPS.
pub const POLL_WINDOW: Duration = Duration::ZERO;

/// The device's interrupt line as seen from the device process: while a
/// register access is being served, the line's new state is kept for the
/// answer; otherwise (after a kick) it goes to the VM on the async
/// channel.  Each change gets the next sequence number (in the message's
/// `vcpu` byte), so that the VM applies the changes in the order the
/// device made them, whichever channel it reads first.
struct Lines {
    async_tx: Mutex<ImsgChannel>,
    state: Mutex<LineState>,
}

#[derive(Default)]
struct LineState {
    /// Some while a sync request is served: the change to answer with.
    capture: Option<Option<(i8, u8)>>,
    seq: u8,
}

impl Lines {
    fn set(&self, irq: u8, state: i8) {
        let mut st = self.state.lock().unwrap();
        st.seq = st.seq.wrapping_add(1);
        let seq = st.seq;
        if let Some(c) = st.capture.as_mut() {
            *c = Some((state, seq));
            return;
        }
        drop(st);
        let m = ViodevMsg {
            type_: VIODEV_MSG_KICK,
            irq,
            state,
            vcpu: seq,
            ..Default::default()
        };
        let mut tx = self.async_tx.lock().unwrap();
        let sent = tx
            .compose(IMSG_DEVOP_MSG, 0, 0, &m.to_bytes(), Vec::new())
            .and_then(|_| tx.flush());
        if let Err(e) = sent {
            log::debug!("device: interrupt not sent: {e}");
        }
    }
}

impl IrqLines for Lines {
    fn assert_irq(&self, irq: u8) {
        self.set(irq, INTR_STATE_ASSERT);
    }
    fn deassert_irq(&self, irq: u8) {
        self.set(irq, INTR_STATE_DEASSERT);
    }
}

/// What connects a device process to its VM process.
pub struct Links {
    /// Register accesses (the process's standard input).
    pub sync: ImsgChannel,
    /// Kicks, pause, shutdown in; interrupts out.
    pub async_sock: UnixStream,
    /// Queue `i`'s doorbell at `i`; may be empty (see
    /// [`super::doorbell`]).
    pub doorbells: Vec<OwnedFd>,
}

/// Serves `dev` on line `irq` over guest memory `mem`: answers READY
/// (with the device configuration's length), then register accesses on
/// the sync channel, kicks on the async channel and its doorbells.
/// Returns when the VM process shuts the device down or closes a socket.
pub fn serve<D: VirtioDevice>(
    dev: D,
    irq: u8,
    mem: VmMemory,
    links: Links,
) -> Result<(), DevProcError> {
    let Links {
        mut sync,
        async_sock,
        doorbells,
    } = links;
    let mut doorbells: Vec<std::fs::File> = doorbells.into_iter().map(Into::into).collect();
    let async_rx_sock = async_sock.try_clone().map_err(|source| DevProcError::Io {
        what: "socket",
        source,
    })?;
    let lines = Arc::new(Lines {
        async_tx: Mutex::new(ImsgChannel::new(async_sock)),
        state: Mutex::new(LineState::default()),
    });
    let config_len = dev.config_len();
    let mut pci = VirtioPci::new(dev, mem, irq, lines.clone());
    let mut async_rx = ImsgChannel::new(async_rx_sock);
    let reply = |sync: &mut ImsgChannel, m: ViodevMsg| -> Result<(), DevProcError> {
        sync.compose(IMSG_DEVOP_MSG, 0, 0, &m.to_bytes(), Vec::new())?;
        sync.flush()?;
        Ok(())
    };
    reply(
        &mut sync,
        ViodevMsg {
            type_: VIODEV_MSG_READY,
            data: config_len,
            data_valid: true,
            ..Default::default()
        },
    )?;
    let closed = |e: &DevProcError| matches!(e, DevProcError::Imsg(ImsgError::Closed));
    // Some while polling kicked queues: when the last chain was found.
    let mut last_work: Option<Instant> = None;
    // VMD_POLL_US: another window in microseconds (for comparisons; see
    // vmd.8).
    let window = std::env::var("VMD_POLL_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(POLL_WINDOW, Duration::from_micros);
    // A kick: notifications off before serving, so that what the
    // driver makes available while this serves the queue is found here
    // without another kick (each a VM exit, and a message or a doorbell).
    let kick = |pci: &mut VirtioPci<D>, last_work: &mut Option<Instant>, queue: u16| {
        let polled = pci.poll_start(queue);
        pci.notify(queue);
        if polled {
            *last_work = Some(Instant::now());
        }
    };
    loop {
        let (ready, has_input, bells) = {
            let mut fds = vec![
                (sync.socket().as_fd(), false),
                (async_rx.socket().as_fd(), false),
            ];
            // A NIC's tap, while the guest has buffers for what it reads.
            let input = pci.input_fd();
            let has_input = input.is_some();
            fds.extend(input.map(|fd| (fd, false)));
            let bells = fds.len();
            fds.extend(doorbells.iter().map(|f| (f.as_fd(), false)));
            let ready = crate::event::poll(&fds, last_work.map(|_| Instant::now()));
            (ready, has_input, bells)
        };
        if has_input && ready[2].read {
            pci.input();
        }
        // Kicks first: a kick the VM sent before a register access
        // is in its socket by the time the access is (a doorbell is rung
        // before the vCPU goes on), and is served before it, as it would
        // be in one process.
        for (q, bell) in doorbells.iter_mut().enumerate() {
            if ready[bells + q].read {
                // The count is only a wake-up: reset it (non-blocking; a
                // spurious wake-up reads nothing).
                let _ = bell.read(&mut [0u8; 8]);
                kick(&mut pci, &mut last_work, q as u16);
            }
        }
        if ready[1].read {
            match drain(&mut async_rx) {
                Ok(msgs) => {
                    for m in msgs {
                        match m {
                            Incoming::Pause(p) => pci.set_paused(p),
                            Incoming::HostMac(mac) => pci.device_mut().set_host_mac(mac),
                            Incoming::Msg(m) => match m.type_ {
                                VIODEV_MSG_KICK => kick(&mut pci, &mut last_work, m.data as u16),
                                VIODEV_MSG_SHUTDOWN => return Ok(()),
                                t => log::debug!("device: unexpected message {t} on async channel"),
                            },
                        }
                    }
                }
                Err(e) if closed(&e) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        if ready[0].read {
            match drain(&mut sync) {
                Ok(msgs) => {
                    for m in msgs {
                        let Incoming::Msg(m) = m else {
                            log::debug!("device: control message on the sync channel");
                            continue;
                        };
                        let answer = match m.type_ {
                            VIODEV_MSG_IO_READ | VIODEV_MSG_IO_WRITE => {
                                lines.state.lock().unwrap().capture = Some(None);
                                let data = if m.type_ == VIODEV_MSG_IO_READ {
                                    pci.pio_read(m.reg, m.io_sz)
                                } else {
                                    pci.pio_write(m.reg, m.io_sz, m.data);
                                    0
                                };
                                let change = lines.state.lock().unwrap().capture.take().flatten();
                                let (state, seq) = change.unwrap_or((INTR_STATE_NOOP, 0));
                                ViodevMsg {
                                    type_: m.type_,
                                    reg: m.reg,
                                    io_sz: m.io_sz,
                                    irq,
                                    state,
                                    vcpu: seq,
                                    data,
                                    data_valid: m.type_ == VIODEV_MSG_IO_READ,
                                }
                            }
                            t => {
                                log::debug!("device: unexpected message {t} on sync channel");
                                ViodevMsg::of_type(VIODEV_MSG_ERROR)
                            }
                        };
                        reply(&mut sync, answer)?;
                    }
                }
                Err(e) if closed(&e) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        if let Some(since) = last_work {
            let now = Instant::now();
            if pci.poll() {
                last_work = Some(now);
            } else if now.duration_since(since) > window {
                last_work = pci.poll_stop().then_some(now);
            } else {
                // On a busy host the vCPU that makes the next request
                // may be waiting for this CPU.
                std::thread::yield_now();
            }
        }
    }
}

/// What comes in on a device socket.
enum Incoming {
    Msg(ViodevMsg),
    /// IMSG_DEVOP_PAUSE (true) / UNPAUSE (false).
    Pause(bool),
    /// IMSG_DEVOP_HOSTMAC.
    HostMac([u8; 6]),
}

/// One read, then every complete message.
fn drain(chan: &mut ImsgChannel) -> Result<Vec<Incoming>, DevProcError> {
    chan.fill()?;
    let mut out = Vec::new();
    while let Some(m) = chan.get()? {
        out.push(match m.type_() {
            IMSG_DEVOP_MSG => Incoming::Msg(ViodevMsg::from_bytes(&m.data)?),
            IMSG_DEVOP_PAUSE => Incoming::Pause(true),
            IMSG_DEVOP_UNPAUSE => Incoming::Pause(false),
            IMSG_DEVOP_HOSTMAC => match <[u8; 6]>::try_from(&m.data[..]) {
                Ok(mac) => Incoming::HostMac(mac),
                Err(_) => {
                    log::debug!("device: host mac of {} bytes ignored", m.data.len());
                    continue;
                }
            },
            t => return Err(DevProcError::BadType(t)),
        });
    }
    Ok(out)
}
