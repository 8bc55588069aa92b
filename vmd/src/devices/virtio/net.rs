//! The OS-free core of vionet, the virtio network device (in vmd it runs
//! in its own process, on a tap descriptor the parent opened).
//!
//! As vmd offers it (reference §4.3): VERSION_1 and MAC, two queues of
//! 256 entries (0 receive, 1 transmit), an 8-byte device configuration
//! (the MAC, then the status word).  Every frame on a queue is preceded
//! by the 12-byte `virtio_net_hdr` of virtio 1.x; vionet offers no
//! offloads, so the device writes a zero header (num_buffers 1) and
//! ignores the driver's.  Frames go to and come from a [`NetPort`] (the
//! tap, or a test's queue).
//!
//! As vionet.c does:
//! - frames shorter than an Ethernet header or longer than 1514 bytes
//!   (MTU 1500) are dropped, both ways;
//! - with `locked lladdr`, a frame from the guest whose source MAC is not
//!   the NIC's is dropped, and the guest receives only frames to its own
//!   MAC or to a multicast/broadcast address;
//! - on a `local interface` every frame from the guest goes to the
//!   [`LocalResponder`] (vmd's DHCP server) first; a frame it answers is
//!   not sent to the tap, and its answer goes to the guest.
//!
//! A frame is read from the port only when the guest has a receive
//! buffer for it, so frames wait in the tap's queue, not here, while the
//! guest has none or the device is paused.  Malformed chains (a receive
//! buffer the device may not write, a transmit buffer it should not) are
//! counted, returned empty and logged once; a chain the queue code finds
//! hostile puts the device in NEEDS_RESET.  Nothing here panics on what a
//! guest or the network sends.
use std::collections::VecDeque;
use std::os::fd::BorrowedFd;

use super::queue::{DescChain, QueueError, VirtQueue};
use super::transport::VirtioDevice;
use super::VIRTIO_F_VERSION_1;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// VIRTIO_NET_F_MAC: the device configuration holds the MAC.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// VIRTIO_NET_S_LINK_UP in the status word.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

pub const VIONET_QUEUE_SIZE: u16 = 256;
pub const RXQ: usize = 0;
pub const TXQ: usize = 1;
/// Queues of a vionet: receive and transmit.
pub const VIONET_QUEUES: usize = 2;
/// `struct virtio_net_hdr` with num_buffers, as virtio 1.x has it.
pub const VIRTIO_NET_HDR_LEN: usize = 12;
pub const ETHER_HDR_LEN: usize = 14;
pub const ETHER_ADDR_LEN: usize = 6;
/// vmd's VIONET_HARD_MTU.
pub const VIONET_HARD_MTU: usize = 1500;
/// VIONET_MIN_TXLEN / VIONET_MAX_TXLEN.
pub const VIONET_MIN_TXLEN: usize = ETHER_HDR_LEN;
pub const VIONET_MAX_TXLEN: usize = VIONET_HARD_MTU + ETHER_HDR_LEN;
/// Device configuration: MAC (6) and status (2).
pub const VIONET_CONFIG_LEN: u32 = 8;
/// The most a transmit or receive chain may span before it counts as
/// hostile (far more than a frame needs; a driver may post big buffers).
pub const VIONET_MAX_CHAIN: u64 = 1 << 20;
/// Answers of the local responder waiting for receive buffers.
const MAX_PENDING_LOCAL: usize = 64;
/// Frames moved per input round, so that a flood cannot starve the
/// device process's sockets.
const RX_BUDGET: usize = 256;
/// Bigger than any frame a tap gives (its MTU may be raised): a larger
/// frame is read whole and dropped as oversized instead of cut.
const PORT_BUF: usize = 65536 + ETHER_HDR_LEN;

/// Where the frames go and come from (vionet's tap).
pub trait NetPort: Send {
    /// The next waiting frame into `buf`: its length, or None when no
    /// frame waits.  A frame larger than `buf` may be cut to it.
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>>;
    /// Sends one frame.
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()>;
    /// The descriptor that is readable when a frame waits, for the
    /// device's event loop (None for ports that are always polled).
    fn fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
}

/// vmd's built-in answers on a `local interface` (its DHCP server): sees
/// every frame the guest sends; an answer goes back to the guest, and
/// the frame it answered does not go to the tap.
pub trait LocalResponder: Send {
    fn respond(&mut self, frame_from_guest: &[u8]) -> Option<Vec<u8>>;
    /// The tap's MAC, once the parent learnt it (IMSG_DEVOP_HOSTMAC).
    fn set_host_mac(&mut self, _mac: [u8; 6]) {}
}

/// vmd's DHCP server is the responder of local interfaces.
impl LocalResponder for crate::net::LocalServer {
    fn respond(&mut self, frame_from_guest: &[u8]) -> Option<Vec<u8>> {
        crate::net::LocalServer::respond(self, frame_from_guest)
    }
    fn set_host_mac(&mut self, mac: [u8; 6]) {
        crate::net::LocalServer::set_host_mac(self, mac)
    }
}

/// Counters, for the log and the tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStats {
    /// Frames the guest sent that went to the port.
    pub tx_frames: u64,
    /// Frames the guest received (from the port or the responder).
    pub rx_frames: u64,
    /// Frames the local responder answered.
    pub local_answers: u64,
    /// Too short or too long, either way.
    pub bad_size: u64,
    /// Dropped by `locked lladdr`, either way.
    pub locked: u64,
    /// Chains that could not carry a frame (wrong direction, no room for
    /// the header or the frame).
    pub malformed: u64,
    /// The port refused a frame, or failed to read.
    pub port_errors: u64,
    /// Responder answers dropped for want of receive buffers.
    pub local_dropped: u64,
}

/// What a NIC is configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VionetConfig {
    pub mac: [u8; 6],
    /// `locked lladdr`.
    pub locked: bool,
}

pub struct Vionet {
    cfg: VionetConfig,
    port: Box<dyn NetPort>,
    local: Option<Box<dyn LocalResponder>>,
    /// Responder answers waiting for receive buffers.
    pending: VecDeque<Vec<u8>>,
    paused: bool,
    /// A transmit kick arrived while paused: served at unpause.
    tx_deferred: bool,
    stats: NetStats,
    buf: Vec<u8>,
    warned: bool,
    /// Called when the guest gives receive buffers or the device is
    /// unpaused (an in-process NIC's input thread waits for this).
    rx_notify: Option<Box<dyn Fn() + Send>>,
}

fn is_multicast(mac: &[u8]) -> bool {
    mac.first().is_some_and(|b| b & 1 != 0)
}

fn mac_str(m: &[u8]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Vionet {
    pub fn new(cfg: VionetConfig, port: Box<dyn NetPort>) -> Self {
        Vionet {
            cfg,
            port,
            local: None,
            pending: VecDeque::new(),
            paused: false,
            tx_deferred: false,
            stats: NetStats::default(),
            buf: vec![0u8; VIRTIO_NET_HDR_LEN + PORT_BUF],
            warned: false,
            rx_notify: None,
        }
    }

    /// Makes this a `local interface`, answered by `r`.
    pub fn with_local(mut self, r: Box<dyn LocalResponder>) -> Self {
        self.local = Some(r);
        self
    }

    pub fn set_rx_notify(&mut self, f: Box<dyn Fn() + Send>) {
        self.rx_notify = Some(f);
    }

    pub fn stats(&self) -> NetStats {
        self.stats
    }

    pub fn mac(&self) -> [u8; 6] {
        self.cfg.mac
    }

    pub fn port(&self) -> &dyn NetPort {
        &*self.port
    }

    fn config(&self) -> [u8; VIONET_CONFIG_LEN as usize] {
        let mut c = [0u8; VIONET_CONFIG_LEN as usize];
        c[..6].copy_from_slice(&self.cfg.mac);
        c[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        c
    }

    fn malformed(&mut self, head: u16, what: &str) {
        self.stats.malformed += 1;
        if !self.warned {
            self.warned = true;
            log::warn!("vionet: chain {head}: {what}, dropped");
        } else {
            log::debug!("vionet: chain {head}: {what}, dropped");
        }
    }

    /// Whether the guest may receive `frame` (locked lladdr: only to its
    /// own MAC or to a group address).
    fn rx_allowed(&self, frame: &[u8]) -> bool {
        !self.cfg.locked
            || frame.len() < ETHER_ADDR_LEN
            || is_multicast(&frame[..ETHER_ADDR_LEN])
            || frame[..ETHER_ADDR_LEN] == self.cfg.mac
    }

    /// One transmit chain: the frame after the header, or None if the
    /// chain cannot carry one (counted).
    fn read_tx(
        &mut self,
        chain: &DescChain,
        mem: &GuestMemoryMmap,
    ) -> Result<Option<Vec<u8>>, QueueError> {
        if chain.descs.iter().any(|d| d.writable) {
            self.malformed(chain.head, "device-writable buffer in a transmit chain");
            return Ok(None);
        }
        let total: u64 = chain.descs.iter().map(|d| u64::from(d.len)).sum();
        let Some(len) = (total as usize).checked_sub(VIRTIO_NET_HDR_LEN) else {
            self.malformed(chain.head, "transmit chain shorter than the header");
            return Ok(None);
        };
        if !(VIONET_MIN_TXLEN..=VIONET_MAX_TXLEN).contains(&len) {
            self.stats.bad_size += 1;
            log::debug!("vionet: invalid packet size {len}");
            return Ok(None);
        }
        // Header and frame may be split anywhere across the buffers: the
        // header's bytes are skipped, wherever they are.
        let mut frame = vec![0u8; len];
        let (mut skip, mut at) = (VIRTIO_NET_HDR_LEN, 0usize);
        for d in &chain.descs {
            let k = skip.min(d.len as usize);
            skip -= k;
            let n = d.len as usize - k;
            if n > 0 {
                mem.read_slice(&mut frame[at..at + n], GuestAddress(d.addr + k as u64))
                    .map_err(|e| QueueError::Memory(e.to_string()))?;
                at += n;
            }
        }
        Ok(Some(frame))
    }

    /// Sends what the guest made available on the transmit queue.
    fn transmit(
        &mut self,
        queue: &mut VirtQueue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        let mut used = false;
        while let Some(chain) = queue.pop(mem, VIONET_MAX_CHAIN)? {
            if let Some(frame) = self.read_tx(&chain, mem)? {
                self.send_frame(frame);
            }
            // Nothing is written to a transmit chain.
            queue.add_used(mem, chain.head, 0)?;
            used = true;
        }
        Ok(used)
    }

    fn send_frame(&mut self, frame: Vec<u8>) {
        if self.cfg.locked && frame[6..12] != self.cfg.mac {
            self.stats.locked += 1;
            log::debug!("vionet: wrong source address {}", mac_str(&frame[6..12]));
            return;
        }
        if let Some(local) = self.local.as_mut() {
            if let Some(answer) = local.respond(&frame) {
                self.stats.local_answers += 1;
                if self.pending.len() < MAX_PENDING_LOCAL {
                    self.pending.push_back(answer);
                } else {
                    self.stats.local_dropped += 1;
                }
                return;
            }
        }
        match self.port.send(&frame) {
            Ok(()) => self.stats.tx_frames += 1,
            Err(e) => {
                self.stats.port_errors += 1;
                log::debug!("vionet: tx failed writing to tap: {e}");
            }
        }
    }

    /// Puts one frame, `bytes` being its virtio-net header and the frame,
    /// in the receive chain (a chain that cannot take it goes back
    /// empty).
    fn put_rx(
        &mut self,
        queue: &mut VirtQueue,
        mem: &GuestMemoryMmap,
        chain: DescChain,
        bytes: &[u8],
    ) -> Result<(), QueueError> {
        if chain.descs.iter().any(|d| !d.writable) {
            self.malformed(chain.head, "device-readable buffer in a receive chain");
            return queue.add_used(mem, chain.head, 0);
        }
        if chain.writable_len() < bytes.len() as u64 {
            self.malformed(chain.head, "receive buffers too small for the frame");
            return queue.add_used(mem, chain.head, 0);
        }
        let mut at = 0usize;
        for d in &chain.descs {
            if at == bytes.len() {
                break;
            }
            let n = (d.len as usize).min(bytes.len() - at);
            mem.write_slice(&bytes[at..at + n], GuestAddress(d.addr))
                .map_err(|e| QueueError::Memory(e.to_string()))?;
            at += n;
        }
        self.stats.rx_frames += 1;
        queue.add_used(mem, chain.head, bytes.len() as u32)
    }

    /// Moves waiting frames (the responder's, then the port's) into
    /// receive buffers while there are buffers; whether any went.
    fn receive(
        &mut self,
        queue: &mut VirtQueue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        if self.paused {
            return Ok(false);
        }
        // The frame is read after room for its header, so that header
        // and frame go to the guest from one buffer.
        let mut buf = std::mem::take(&mut self.buf);
        let r = self.receive_into(&mut buf, queue, mem);
        self.buf = buf;
        r
    }

    fn receive_into(
        &mut self,
        buf: &mut [u8],
        queue: &mut VirtQueue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        let mut used = false;
        let mut budget = RX_BUDGET;
        while budget > 0 && queue.has_available(mem) {
            budget -= 1;
            let room = buf.len() - VIRTIO_NET_HDR_LEN;
            let len = if let Some(f) = self.pending.pop_front() {
                let n = f.len().min(room);
                buf[VIRTIO_NET_HDR_LEN..VIRTIO_NET_HDR_LEN + n].copy_from_slice(&f[..n]);
                n
            } else {
                match self.port.recv(&mut buf[VIRTIO_NET_HDR_LEN..]) {
                    Ok(Some(n)) => n.min(room),
                    Ok(None) => break,
                    Err(e) => {
                        self.stats.port_errors += 1;
                        log::debug!("vionet: read error: {e}");
                        break;
                    }
                }
            };
            let frame = &buf[VIRTIO_NET_HDR_LEN..VIRTIO_NET_HDR_LEN + len];
            if !(VIONET_MIN_TXLEN..=VIONET_MAX_TXLEN).contains(&len) {
                self.stats.bad_size += 1;
                log::debug!("vionet: invalid packet size {len}");
                continue;
            }
            if !self.rx_allowed(frame) {
                self.stats.locked += 1;
                continue;
            }
            let Some(chain) = queue.pop(mem, VIONET_MAX_CHAIN)? else {
                // has_available said otherwise: keep the frame.
                self.pending.push_front(frame.to_vec());
                break;
            };
            // No offloads: all zero but num_buffers, 1 (one chain per
            // frame without MRG_RXBUF).
            buf[..VIRTIO_NET_HDR_LEN].fill(0);
            buf[10..12].copy_from_slice(&1u16.to_le_bytes());
            self.put_rx(queue, mem, chain, &buf[..VIRTIO_NET_HDR_LEN + len])?;
            used = true;
        }
        Ok(used)
    }

    /// Receive kicks only when they mean something: while the receive
    /// ring has buffers the device waits on its port, and a kick for
    /// more buffers would only cost the driver an exit (and a message
    /// to a device process), so the driver is told not to send one
    /// (VIRTQ_USED_F_NO_NOTIFY, as QEMU's virtio-net does).  Once the
    /// ring is empty, kicks are asked for again, and the ring looked at
    /// once more for buffers the driver added before it could see that.
    fn rx_kicks(queue: &mut VirtQueue, mem: &GuestMemoryMmap) {
        if queue.has_available(mem) || queue.resume_notifications(mem) {
            queue.suppress_notifications(mem);
        }
    }

    fn interrupt(queue: &mut VirtQueue, mem: &GuestMemoryMmap, used: bool) -> bool {
        used && queue.needs_notification(mem)
    }
}

impl VirtioDevice for Vionet {
    fn name(&self) -> &'static str {
        "vionet"
    }

    fn device_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![VIONET_QUEUE_SIZE; VIONET_QUEUES]
    }

    fn max_chain_bytes(&self) -> u64 {
        VIONET_MAX_CHAIN
    }

    fn config_len(&self) -> u32 {
        VIONET_CONFIG_LEN
    }

    fn read_config(&self, offset: u32) -> u8 {
        self.config().get(offset as usize).copied().unwrap_or(0xff)
    }

    /// The transmit queue: a driver that sends a burst makes frames
    /// available while the device sends the first ones.
    fn polls(&self, index: usize) -> bool {
        index == TXQ
    }

    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut VirtQueue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        match index {
            // New receive buffers: whatever waits can go now.
            RXQ => {
                if let Some(f) = &self.rx_notify {
                    f();
                }
                let used = self.receive(queue, mem)?;
                Self::rx_kicks(queue, mem);
                Ok(used)
            }
            TXQ if self.paused => {
                self.tx_deferred = true;
                Ok(false)
            }
            TXQ => self.transmit(queue, mem),
            _ => Ok(false),
        }
    }

    fn process_input(
        &mut self,
        queues: &mut [VirtQueue],
        mem: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        if self.paused || queues.len() <= TXQ {
            return Ok(false);
        }
        let mut irq = false;
        if std::mem::take(&mut self.tx_deferred) {
            let used = self.transmit(&mut queues[TXQ], mem)?;
            irq |= Self::interrupt(&mut queues[TXQ], mem, used);
        }
        let used = self.receive(&mut queues[RXQ], mem)?;
        irq |= Self::interrupt(&mut queues[RXQ], mem, used);
        Self::rx_kicks(&mut queues[RXQ], mem);
        Ok(irq)
    }

    fn input_fd(&self, queues: &[VirtQueue], mem: &GuestMemoryMmap) -> Option<BorrowedFd<'_>> {
        if self.paused || !queues.get(RXQ)?.has_available(mem) {
            return None;
        }
        self.port.fd()
    }

    fn set_host_mac(&mut self, mac: [u8; 6]) {
        if let Some(l) = self.local.as_mut() {
            l.set_host_mac(mac);
        }
    }

    fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
        if !paused {
            if let Some(f) = &self.rx_notify {
                f();
            }
        }
    }

    fn reset(&mut self) {
        self.pending.clear();
        self.tx_deferred = false;
        log::debug!("vionet: reset; {:?}", self.stats);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::testdriver::{Ring, TestMachine, Virtio1};
    use crate::devices::virtio::transport::{attach, AttachedVirtio, VirtioPciIds};
    use crate::devices::virtio::{
        VIRTIO_CONFIG_DEVICE_STATUS_DEVICE_NEEDS_RESET, VIRTIO_CONFIG_ISR_QUEUE,
    };
    use std::sync::{Arc, Mutex};

    const MAC: [u8; 6] = [0xfe, 0xe1, 0xbb, 0xd1, 0x12, 0x34];
    const PEER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
    const RX_BUFS: u64 = 0x2_0000;
    const TX_BUFS: u64 = 0x6_0000;

    /// A port over two queues the test holds.
    #[derive(Clone, Default)]
    struct MemPort {
        inbound: Arc<Mutex<VecDeque<Vec<u8>>>>,
        sent: Arc<Mutex<Vec<Vec<u8>>>>,
        fail_send: bool,
    }

    impl NetPort for MemPort {
        fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
            Ok(self.inbound.lock().unwrap().pop_front().map(|f| {
                let n = f.len().min(buf.len());
                buf[..n].copy_from_slice(&f[..n]);
                n
            }))
        }
        fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
            if self.fail_send {
                return Err(std::io::Error::other("tap down"));
            }
            self.sent.lock().unwrap().push(frame.to_vec());
            Ok(())
        }
    }

    /// Answers frames whose ethertype is 0x0800 with their payload
    /// reversed, from PEER; lets the rest through.
    struct Echo;
    impl LocalResponder for Echo {
        fn respond(&mut self, f: &[u8]) -> Option<Vec<u8>> {
            if f.get(12..14) != Some(&[0x08, 0x00]) {
                return None;
            }
            let mut r = f[6..12].to_vec();
            r.extend_from_slice(&PEER);
            r.extend_from_slice(&[0x08, 0x00]);
            r.extend(f[14..].iter().rev());
            Some(r)
        }
    }

    fn frame(dst: [u8; 6], src: [u8; 6], len: usize, seed: u8) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x88, 0xb5]);
        f.extend((0..len - ETHER_HDR_LEN).map(|i| (i as u8).wrapping_mul(7) ^ seed));
        f
    }

    struct Rig {
        m: TestMachine,
        a: AttachedVirtio<Vionet>,
        v: Virtio1,
        rx: Ring,
        tx: Ring,
        port: MemPort,
    }

    fn rig_with(cfg: VionetConfig, port: MemPort, local: Option<Box<dyn LocalResponder>>) -> Rig {
        let m = TestMachine::new();
        let mut dev = Vionet::new(cfg, Box::new(port.clone()));
        if let Some(local) = local {
            dev = dev.with_local(local);
        }
        let a = attach(
            &mut m.pci.lock().unwrap(),
            VirtioPciIds::NET,
            dev,
            m.vm_memory(),
            m.lines(),
        )
        .unwrap();
        let v = Virtio1::probe(&m, a.slot);
        assert_eq!(
            v.negotiate(&m, VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC) & 8,
            8
        );
        let rx = Ring::new(256, 0x1000);
        let tx = Ring::new(256, 0x8000);
        v.setup_queue(&m, 0, &rx);
        v.setup_queue(&m, 1, &tx);
        v.set_status(&m, 1 | 2 | 8 | 4);
        Rig {
            m,
            a,
            v,
            rx,
            tx,
            port,
        }
    }

    fn rig(locked: bool) -> Rig {
        rig_with(VionetConfig { mac: MAC, locked }, MemPort::default(), None)
    }

    impl Rig {
        /// Sends `f` as the guest would: header and frame in `split`
        /// buffers (1: one buffer for both).
        fn send(&mut self, f: &[u8], split: usize) {
            let mut all = vec![0u8; VIRTIO_NET_HDR_LEN];
            all.extend_from_slice(f);
            self.send_raw(&all, split);
        }

        fn send_raw(&mut self, all: &[u8], split: usize) {
            let base = TX_BUFS + 0x1000 * u64::from(self.tx.used_seen % 32);
            self.m.mem.write(base, all).unwrap();
            let bufs: Vec<(u64, u32, bool)> = if split <= 1 {
                vec![(base, all.len() as u32, false)]
            } else {
                let h = VIRTIO_NET_HDR_LEN.min(all.len());
                vec![
                    (base, h as u32, false),
                    (base + h as u64, (all.len() - h) as u32, false),
                ]
            };
            self.tx.add(&self.m, &bufs);
            self.v.kick(&self.m, 1);
        }

        /// Posts `n` receive buffers of `len` bytes each.
        fn post_rx(&mut self, n: usize, len: u32) {
            for _ in 0..n {
                let i = u64::from(self.rx.used_seen) + self.rx_posted();
                let addr = RX_BUFS + 0x800 * (i % 64);
                self.rx.add(&self.m, &[(addr, len, true)]);
            }
            self.v.kick(&self.m, 0);
        }

        fn rx_posted(&self) -> u64 {
            let avail = self.m.read_u16(self.rx.avail + 2);
            u64::from(avail.wrapping_sub(self.rx.used_seen))
        }

        /// Frames the guest received: header checked, frame returned.
        fn received(&mut self) -> Vec<Vec<u8>> {
            let used = self.rx.take_used(&self.m);
            used.into_iter()
                .map(|(head, len)| {
                    let mut d = [0u8; 16];
                    self.m
                        .mem
                        .read(self.rx.desc + 16 * u64::from(head), &mut d)
                        .unwrap();
                    let addr = u64::from_le_bytes(d[0..8].try_into().unwrap());
                    let mut b = vec![0u8; len as usize];
                    self.m.mem.read(addr, &mut b).unwrap();
                    assert_eq!(&b[..10], &[0; 10], "no offloads in the header");
                    assert_eq!(&b[10..12], &[1, 0], "num_buffers 1");
                    b[VIRTIO_NET_HDR_LEN..].to_vec()
                })
                .collect()
        }

        fn input(&self) {
            self.a.dev.lock().unwrap().input();
        }

        fn stats(&self) -> NetStats {
            self.a.dev.lock().unwrap().device().stats()
        }

        fn sent(&self) -> Vec<Vec<u8>> {
            std::mem::take(&mut *self.port.sent.lock().unwrap())
        }

        fn inject(&self, f: Vec<u8>) {
            self.port.inbound.lock().unwrap().push_back(f);
        }

        fn needs_reset(&self) -> bool {
            self.v.status(&self.m) & VIRTIO_CONFIG_DEVICE_STATUS_DEVICE_NEEDS_RESET != 0
        }
    }

    #[test]
    fn pci_identity_features_and_mac() {
        let r = rig(false);
        let m = &r.m;
        assert_eq!(m.cfg_read(r.a.slot, 0x00, 4), 0x1041_1af4);
        assert_eq!(m.cfg_read(r.a.slot, 0x08, 4) >> 8, 0x08_8000, "system/misc");
        assert_eq!(m.cfg_read(r.a.slot, 0x2c, 4), 0x0001_0b5d);
        assert_eq!(
            r.v.device_features(m),
            VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC
        );
        assert_eq!((r.v.queue_max(m, 0), r.v.queue_max(m, 1)), (256, 256));
        assert_eq!(r.v.queue_max(m, 2), 0, "no control queue");
        let (dev, len) = r.v.device.unwrap();
        assert_eq!(len, 8);
        let mac: Vec<u8> = (0..6).map(|i| m.pio.read(dev + i, 1) as u8).collect();
        assert_eq!(mac, MAC);
        assert_eq!(m.pio.read(dev + 6, 2), u32::from(VIRTIO_NET_S_LINK_UP));
        assert_eq!(m.pio.read(dev + 8, 1), 0xff, "past the configuration");
    }

    #[test]
    fn transmit_with_header_anywhere() {
        let mut r = rig(false);
        let a = frame(PEER, MAC, 60, 1);
        let b = frame(PEER, MAC, VIONET_MAX_TXLEN, 2);
        r.send(&a, 2);
        assert_eq!(r.tx.take_used(&r.m), vec![(0, 0)]);
        assert_eq!(r.v.isr(&r.m), VIRTIO_CONFIG_ISR_QUEUE);
        r.send(&b, 1);
        // The header cut in two, the frame in three pieces.
        let c = frame(PEER, MAC, 200, 3);
        let mut all = vec![0u8; VIRTIO_NET_HDR_LEN];
        all.extend_from_slice(&c);
        r.m.mem.write(TX_BUFS + 0x10000, &all).unwrap();
        let at = |o: u64| TX_BUFS + 0x10000 + o;
        r.tx.add(
            &r.m,
            &[
                (at(0), 5, false),
                (at(5), 10, false),
                (at(15), 0, false),
                (at(15), all.len() as u32 - 15, false),
            ],
        );
        r.v.kick(&r.m, 1);
        assert_eq!(r.sent(), vec![a, b, c]);
        assert_eq!(r.stats().tx_frames, 3);
    }

    #[test]
    fn receive_only_into_posted_buffers_and_nothing_is_lost() {
        let mut r = rig(false);
        let f: Vec<_> = (0..5)
            .map(|i| frame(MAC, PEER, 60 + i * 100, i as u8))
            .collect();
        for x in &f {
            r.inject(x.clone());
        }
        // No buffers: nothing is taken from the port.
        r.input();
        assert_eq!(r.port.inbound.lock().unwrap().len(), 5);
        assert!(!r.a.dev.lock().unwrap().wants_input());
        r.post_rx(2, 2048);
        assert_eq!(r.received(), f[..2].to_vec());
        assert_eq!(r.v.isr(&r.m), VIRTIO_CONFIG_ISR_QUEUE);
        r.post_rx(8, 2048);
        assert_eq!(r.received(), f[2..].to_vec());
        assert!(r.port.inbound.lock().unwrap().is_empty());
        // Buffers left: the device now waits for its port (an in-memory
        // port has no descriptor, so it is polled by kicks and input).
        r.inject(f[0].clone());
        r.input();
        assert_eq!(r.received(), vec![f[0].clone()]);
        assert_eq!(r.stats().rx_frames, 6);
    }

    /// The driver is asked not to kick for receive buffers while the ring
    /// has some (VIRTQ_USED_F_NO_NOTIFY in the receive used ring), and to
    /// kick again once the device has used them all; the transmit ring
    /// keeps asking for kicks between them.
    #[test]
    fn receive_kicks_only_when_the_ring_ran_dry() {
        let mut r = rig(false);
        let no_notify = |r: &Rig, ring: &Ring| r.m.read_u16(ring.used) & 1 == 1;
        assert!(!no_notify(&r, &r.rx), "an empty ring asks for a kick");
        r.post_rx(2, 2048);
        assert!(no_notify(&r, &r.rx), "buffers posted: no kicks wanted");
        r.inject(frame(MAC, PEER, 60, 1));
        r.input();
        assert_eq!(r.received().len(), 1);
        assert!(no_notify(&r, &r.rx), "one buffer left");
        r.inject(frame(MAC, PEER, 60, 2));
        r.input();
        assert_eq!(r.received().len(), 1);
        assert!(!no_notify(&r, &r.rx), "ran dry: kicks wanted again");
        // A buffer the driver posts without looking (no kick) is found
        // at the next input all the same.
        let addr = RX_BUFS + 0x800 * 5;
        r.rx.add(&r.m, &[(addr, 2048, true)]);
        r.inject(frame(MAC, PEER, 60, 3));
        r.input();
        assert_eq!(r.received().len(), 1);
        r.send(&frame(PEER, MAC, 60, 4), 1);
        assert!(
            !no_notify(&r, &r.tx),
            "transmit kicks are not suppressed here"
        );
    }

    #[test]
    fn receive_across_several_buffers() {
        let mut r = rig(false);
        let f = frame(MAC, PEER, 1000, 9);
        r.inject(f.clone());
        // Header alone, then the frame in two pieces.
        r.rx.add(
            &r.m,
            &[
                (RX_BUFS, 12, true),
                (RX_BUFS + 0x1000, 500, true),
                (RX_BUFS + 0x2000, 600, true),
            ],
        );
        r.v.kick(&r.m, 0);
        assert_eq!(r.rx.take_used(&r.m), vec![(0, 1012)]);
        let mut got = vec![0u8; 1000];
        r.m.mem.read(RX_BUFS + 0x1000, &mut got[..500]).unwrap();
        r.m.mem.read(RX_BUFS + 0x2000, &mut got[500..]).unwrap();
        assert_eq!(got, f);
    }

    #[test]
    fn locked_lladdr_both_ways() {
        let mut r = rig(true);
        let other = [0x02, 0, 0, 0, 0, 0x42];
        let good = frame(PEER, MAC, 64, 1);
        let spoofed = frame(PEER, other, 64, 2);
        r.send(&spoofed, 2);
        r.send(&good, 2);
        assert_eq!(r.sent(), vec![good]);
        assert_eq!(r.tx.take_used(&r.m).len(), 2, "both chains returned");
        // To the guest: its MAC, broadcast, multicast pass; another
        // unicast does not.
        let to_me = frame(MAC, PEER, 64, 3);
        let bcast = frame([0xff; 6], PEER, 64, 4);
        let mcast = frame([0x01, 0, 0x5e, 0, 0, 1], PEER, 64, 5);
        let to_other = frame(other, PEER, 64, 6);
        for f in [&to_other, &to_me, &bcast, &to_other, &mcast] {
            r.inject(f.clone());
        }
        r.post_rx(8, 2048);
        assert_eq!(r.received(), vec![to_me, bcast, mcast]);
        assert_eq!(r.stats().locked, 3);
        // Unlocked, the same frames all pass.
        let mut r = rig(false);
        r.send(&spoofed, 1);
        assert_eq!(r.sent(), vec![spoofed]);
        r.inject(to_other.clone());
        r.post_rx(1, 2048);
        assert_eq!(r.received(), vec![to_other]);
    }

    #[test]
    fn bad_sizes_and_malformed_chains_are_counted_and_dropped() {
        let mut r = rig(false);
        // Too short, too long, shorter than the header itself.
        r.send(&frame(PEER, MAC, 14, 0)[..13], 2);
        r.send(&frame(PEER, MAC, VIONET_MAX_TXLEN + 1, 0), 2);
        r.send_raw(&[0u8; 5], 1);
        // A writable buffer in a transmit chain.
        r.m.mem.write(TX_BUFS, &[0u8; 80]).unwrap();
        r.tx.add(&r.m, &[(TX_BUFS, 12, false), (TX_BUFS + 12, 64, true)]);
        r.v.kick(&r.m, 1);
        assert!(r.sent().is_empty());
        assert_eq!(r.tx.take_used(&r.m).len(), 4, "every chain returned");
        // From the port: runt and giant dropped; a readable receive
        // buffer and one too small get the frame back unsent.
        r.inject(vec![1, 2, 3]);
        r.inject(frame(MAC, PEER, 9000, 0));
        r.inject(frame(MAC, PEER, 100, 1));
        r.inject(frame(MAC, PEER, 100, 2));
        let ok = frame(MAC, PEER, 100, 3);
        r.inject(ok.clone());
        r.rx.add(&r.m, &[(RX_BUFS, 200, false)]);
        r.rx.add(&r.m, &[(RX_BUFS + 0x800, 50, true)]);
        r.rx.add(&r.m, &[(RX_BUFS + 0x1000, 200, true)]);
        r.v.kick(&r.m, 0);
        assert_eq!(r.rx.take_used(&r.m), vec![(0, 0), (1, 0), (2, 112)]);
        let s = r.stats();
        // Two sizes each way; two chains each way.
        assert_eq!((s.bad_size, s.malformed), (4, 4), "{s:?}");
        assert!(!r.needs_reset(), "a bad frame is not a hostile ring");
        // A failing port loses the frame, not the device.
        let mut r2 = rig_with(
            VionetConfig {
                mac: MAC,
                locked: false,
            },
            MemPort {
                fail_send: true,
                ..Default::default()
            },
            None,
        );
        r2.send(&frame(PEER, MAC, 64, 0), 1);
        assert_eq!(r2.stats().port_errors, 1);
        assert_eq!(r2.tx.take_used(&r2.m).len(), 1);
    }

    #[test]
    fn hostile_rings_need_reset() {
        // A wild avail index on the transmit queue.
        let mut r = rig(false);
        r.tx.set_avail_idx(&r.m, 1000);
        r.v.kick(&r.m, 1);
        assert!(r.needs_reset());
        assert_eq!(r.v.isr(&r.m) & 2, 2, "configuration change");
        // A looping receive chain, found when a frame arrives.
        let mut r = rig(false);
        r.rx.put_desc(&r.m, 0, RX_BUFS, 64, 1 | 2, 1);
        r.rx.put_desc(&r.m, 1, RX_BUFS, 64, 1 | 2, 0);
        r.rx.publish(&r.m, 0);
        r.inject(frame(MAC, PEER, 64, 0));
        r.v.kick(&r.m, 0);
        assert!(r.needs_reset());
        // A transmit buffer outside guest memory.
        let mut r = rig(false);
        r.tx.add(&r.m, &[(0x20_0000, 64, false)]);
        r.v.kick(&r.m, 1);
        assert!(r.needs_reset());
        // Then the device ignores its queues until reset.
        assert!(!r.a.dev.lock().unwrap().wants_input());
        let f = frame(PEER, MAC, 64, 0);
        r.send(&f, 1);
        assert!(r.sent().is_empty());
    }

    #[test]
    fn pause_keeps_frames_both_ways_until_unpause() {
        let mut r = rig(false);
        r.post_rx(4, 2048);
        r.a.dev.lock().unwrap().set_paused(true);
        let inbound = frame(MAC, PEER, 300, 1);
        let outbound = frame(PEER, MAC, 300, 2);
        r.inject(inbound.clone());
        r.input();
        r.send(&outbound, 2);
        assert!(r.received().is_empty());
        assert!(r.sent().is_empty());
        assert_eq!(r.tx.take_used(&r.m), vec![], "transmit chain held");
        assert_eq!(r.port.inbound.lock().unwrap().len(), 1, "still in the port");
        assert!(!r.a.dev.lock().unwrap().wants_input());
        r.a.dev.lock().unwrap().set_paused(false);
        assert_eq!(r.sent(), vec![outbound]);
        assert_eq!(r.tx.take_used(&r.m).len(), 1);
        assert_eq!(r.received(), vec![inbound]);
        assert_eq!(r.v.isr(&r.m), VIRTIO_CONFIG_ISR_QUEUE);
    }

    #[test]
    fn local_interface_answers_go_to_the_guest_not_the_tap() {
        let mut r = rig_with(
            VionetConfig {
                mac: MAC,
                locked: false,
            },
            MemPort::default(),
            Some(Box::new(Echo)),
        );
        let mut ask = frame([0xff; 6], MAC, 64, 1);
        ask[12..14].copy_from_slice(&[0x08, 0x00]);
        let other = frame(PEER, MAC, 64, 2);
        // The answer waits for a receive buffer.
        r.send(&ask, 2);
        r.send(&other, 2);
        assert_eq!(r.sent(), vec![other], "only the unanswered frame");
        assert!(r.received().is_empty());
        r.post_rx(2, 2048);
        let got = r.received();
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0][..6], &MAC);
        assert_eq!(&got[0][6..12], &PEER);
        let payload: Vec<u8> = ask[14..].iter().rev().copied().collect();
        assert_eq!(&got[0][14..], &payload[..]);
        // With buffers posted, the answer arrives with the kick.
        r.send(&ask, 1);
        assert_eq!(r.received().len(), 1);
        assert_eq!(r.stats().local_answers, 2);
    }

    /// A DHCPDISCOVER from the guest as a client sends it.
    fn discover(mac: [u8; 6]) -> Vec<u8> {
        discover_to([0xff; 6], mac)
    }

    fn discover_to(dst: [u8; 6], mac: [u8; 6]) -> Vec<u8> {
        use crate::net::dhcp::*;
        use crate::net::packet;
        let mut b = vec![0u8; OPTIONS_OFFSET];
        b[0] = BOOTREQUEST;
        b[1] = HTYPE_ETHER;
        b[2] = 6;
        b[4..8].copy_from_slice(&[1, 2, 3, 4]);
        b[28..34].copy_from_slice(&mac);
        b.extend_from_slice(&DHCP_OPTIONS_COOKIE);
        b.extend_from_slice(&[DHO_DHCP_MESSAGE_TYPE, 1, DHCPDISCOVER, DHO_END]);
        b.resize(BOOTP_MIN_LEN, 0);
        let mut f = Vec::new();
        packet::assemble_ether(&mut f, dst, mac);
        let any = std::net::Ipv4Addr::UNSPECIFIED;
        packet::assemble_udp_ip(
            &mut f,
            any,
            std::net::Ipv4Addr::BROADCAST,
            CLIENT_PORT,
            SERVER_PORT,
            &b,
        )
        .unwrap();
        f
    }

    /// vmd's own DHCP server on a local interface: the guest's DISCOVER
    /// gets an OFFER of the interface's guest address (the tap's MAC,
    /// once known, reaches the server); nothing reaches the tap but what
    /// it does not answer.
    #[test]
    fn local_interface_with_vmds_dhcp_server() {
        use crate::net::dhcp::*;
        let g = vmd_proto::config::GlobalConfig::default();
        let lease = crate::net::LocalLease::new(&g, 3, 0, MAC, "web").unwrap();
        let mut r = rig_with(
            VionetConfig {
                mac: MAC,
                locked: true,
            },
            MemPort::default(),
            Some(Box::new(crate::net::LocalServer::new(lease))),
        );
        let host_mac = [0xfe, 0xe1, 0xba, 0xd0, 0, 9];
        // Sent to the tap's MAC before the server knows it: not answered.
        let unicast = discover_to(host_mac, MAC);
        r.send(&unicast, 1);
        assert_eq!(r.sent(), vec![unicast.clone()]);
        VirtioDevice::set_host_mac(r.a.dev.lock().unwrap().device_mut(), host_mac);
        r.post_rx(3, 2048);
        r.send(&unicast, 1);
        assert!(r.sent().is_empty());
        assert_eq!(
            r.received().len(),
            1,
            "answered once the tap's MAC is known"
        );
        r.send(&discover(MAC), 2);
        // From a spoofed MAC (locked): dropped before the server sees it.
        r.send(&discover([2, 0, 0, 0, 0, 7]), 2);
        assert!(r.sent().is_empty(), "the request is consumed");
        let got = r.received();
        assert_eq!(got.len(), 1, "one offer");
        let f = &got[0];
        assert_eq!(&f[..6], &MAC);
        assert_ne!(&f[6..12], &MAC, "from the host side");
        let (_, off) = crate::net::packet::decode_ether(f).unwrap();
        let udp = crate::net::packet::decode_udp_ip(f, off).expect("checksums");
        let bootp = &f[udp.data_offset..];
        assert_eq!(bootp[0], BOOTREPLY);
        assert_eq!(
            &bootp[16..20],
            &[100, 64, 3, 3],
            "yiaddr: the guest's /31 half"
        );
        let opts = option_list(&bootp[240..]);
        assert!(opts.contains(&(DHO_DHCP_MESSAGE_TYPE, vec![DHCPOFFER])));
        assert!(opts.contains(&(DHO_ROUTERS, vec![100, 64, 3, 2])));
        let s = r.stats();
        assert_eq!((s.local_answers, s.locked, s.tx_frames), (2, 1, 1));
        // Anything else goes to the tap.
        let other = frame(PEER, MAC, 64, 1);
        r.send(&other, 1);
        assert_eq!(r.sent(), vec![other]);
    }

    /// Random chains, frames, kicks, pauses and resets: vionet never
    /// panics.
    #[test]
    fn property_random_traffic_does_not_panic() {
        use crate::property::{cases, Rng};
        cases(
            "vionet random traffic",
            0x6e65_7421,
            150,
            |r: &mut Rng| {
                (0..r.below(40) + 1)
                    .map(|_| (r.next(), r.next(), r.edgy_u64()))
                    .collect::<Vec<_>>()
            },
            |ops| format!("{ops:x?}"),
            |ops| {
                let mut r = rig(ops.len() % 2 == 0);
                for (a, b, c) in ops {
                    let q = (a >> 8) as usize % 2;
                    let ring = if q == 0 { &mut r.rx } else { &mut r.tx };
                    match a % 7 {
                        0 => {
                            let i = (b % 256) as u16;
                            let addr = [RX_BUFS, TX_BUFS, c % 0x60_0000][(a >> 16) as usize % 3];
                            ring.put_desc(
                                &r.m,
                                i,
                                addr,
                                (c >> 20) as u32 % 0x3000,
                                (b >> 16) as u16 & 3,
                                (b >> 32) as u16 % 260,
                            );
                        }
                        1 => ring.publish(&r.m, (b % 260) as u16),
                        2 => r.v.kick(&r.m, q as u16),
                        3 => r.inject(vec![(b & 0xff) as u8; (c % 2000) as usize]),
                        4 => r.input(),
                        5 => r.a.dev.lock().unwrap().set_paused(b % 2 == 0),
                        _ => {
                            if b % 4 == 0 {
                                r.v.set_status(&r.m, 0);
                            }
                        }
                    }
                }
            },
        );
    }
}
