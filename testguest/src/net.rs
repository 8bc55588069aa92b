//! virtio-net (vionet): MAC and VERSION_1 only (no offloads, no
//! mergeable buffers), so every frame is one 12-byte header and the
//! Ethernet frame in one buffer; and a two-port repeater that forwards
//! every frame between the first two NICs.
//!
//! The repeater polls: at CPL 3 it runs natively, where waiting for an
//! interrupt goes through the CPL0 stub that KVM emulates on some hosts.
//! It asks the devices for no interrupts (VIRTQ_AVAIL_F_NO_INTERRUPT) and
//! notifies only when the device has not turned notifications off
//! (VIRTQ_USED_F_NO_NOTIFY), once per batch.
use crate::virtio::{Error, Transport, Virtqueue, D_WRITE};
use crate::{arch, dma, timer};

pub const DEV_NET: u16 = 0x1041;
pub const F_MAC: u64 = 1 << 5;

/// virtio_net_hdr with VERSION_1: flags, gso_type, hdr_len, gso_size,
/// csum_start, csum_offset, num_buffers.
pub const HDR: u32 = 12;
/// One buffer per frame: the header and a 1514-byte frame fit.
const BUF: u64 = 2048;
/// Ring entries per queue at most (vmd's vionet and QEMU have 256).
const QMAX: u16 = 256;

const AVAIL_F_NO_INTERRUPT: u16 = 1;
const USED_F_NO_NOTIFY: u16 = 1;

pub struct Nic {
    pub t: Transport,
    pub rx: Virtqueue,
    pub tx: Virtqueue,
    pub features: u64,
    pub mac: [u8; 6],
}

impl Nic {
    /// The `nth` virtio-net function, reset and running (DRIVER_OK), its
    /// rings empty.
    pub fn open(nth: usize) -> Result<Nic, Error> {
        let t = Transport::find(DEV_NET, nth)?;
        let features = t.begin(F_MAC)?;
        let rx = t.queue(0, QMAX)?;
        let tx = t.queue(1, QMAX)?;
        for q in [&rx, &tx] {
            dma::write16(q.avail, AVAIL_F_NO_INTERRUPT);
        }
        t.driver_ok();
        let mut mac = [0; 6];
        if let (Some(d), true) = (t.device, features & F_MAC != 0) {
            for (i, m) in mac.iter_mut().enumerate() {
                *m = d.r8(i as u32);
            }
        }
        Ok(Nic {
            t,
            rx,
            tx,
            features,
            mac,
        })
    }
}

/// Publishes what `stage` put in the avail ring, and notifies unless the
/// device said it does not need it.
fn publish(q: &mut Virtqueue) {
    arch::fence();
    dma::write16(q.avail + 2, q.avail_idx);
    // The device reads avail.idx before it looks at used.flags again, so
    // the flag is read after the index is visible.
    arch::fence();
    if dma::read16(q.used) & USED_F_NO_NOTIFY == 0 {
        q.notify();
    }
}

/// Puts chain `head` in the avail ring without moving avail.idx.
fn stage(q: &mut Virtqueue, head: u16) {
    dma::write16(q.avail + 4 + 2 * (q.avail_idx % q.size) as u64, head);
    q.avail_idx = q.avail_idx.wrapping_add(1);
}

struct MacText([u8; 6]);

impl core::fmt::Display for MacText {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

fn open_or_report(cmd: &str, nth: usize) -> Option<Nic> {
    match Nic::open(nth) {
        Ok(n) => Some(n),
        Err(e) => {
            println!("{cmd}: error: nic {nth}: {e}");
            None
        }
    }
}

/// `net-info`: each virtio-net function's MAC and whether it offers MAC.
pub fn cmd_info() {
    let mut n = 0;
    loop {
        let nic = match Nic::open(n) {
            Ok(nic) => nic,
            Err(Error::NoDevice) => break,
            Err(e) => return println!("net-info: error: nic {n}: {e}"),
        };
        let bar = if nic.t.io { "io" } else { "memory" };
        println!("note: net-info nic {n} registers in {bar} space");
        println!(
            "net-info: nic {n} mac {} mac-feature {}",
            MacText(nic.mac),
            (nic.features & F_MAC != 0) as u8
        );
        n += 1;
    }
    println!("net-info: nics {n}");
}

/// Frames and bytes forwarded one way, and frames refused.
#[derive(Default, Clone, Copy)]
struct Counters {
    frames: u64,
    bytes: u64,
    bad: u64,
}

/// `net-repeat SECONDS`: a two-port repeater between NIC 0 and NIC 1 for
/// SECONDS (0: for ever) or until a byte arrives on COM1.  Zero-copy: the buffer a frame arrived in on
/// one NIC goes out on the other under the same descriptor number, and
/// back to the receive ring when the device has sent it; a NIC that sends
/// slowly so holds back the other's receive ring (back-pressure, not
/// drops).  Prints `net-repeat: ready` once both receive rings are full,
/// the counters on a `timing:` line at the end.
pub fn cmd_repeat(seconds: u64) {
    let cmd = "net-repeat";
    let Some(a) = open_or_report(cmd, 0) else {
        return;
    };
    let Some(b) = open_or_report(cmd, 1) else {
        return;
    };
    let mut nics = [a, b];
    let n = nics
        .iter()
        .flat_map(|x| [x.rx.size, x.tx.size])
        .min()
        .unwrap_or(0);
    // One pool of n buffers per NIC's receive ring.
    let pools = [
        dma::alloc(n as u64 * BUF, 4096),
        dma::alloc(n as u64 * BUF, 4096),
    ];
    for (nic, &pool) in nics.iter_mut().zip(&pools) {
        println!("note: {cmd} mac {}", MacText(nic.mac));
        for i in 0..n {
            nic.rx
                .set_desc(i, pool + i as u64 * BUF, BUF as u32, D_WRITE, 0);
            stage(&mut nic.rx, i);
        }
        publish(&mut nic.rx);
    }
    let end = match seconds {
        0 => u64::MAX,
        s => timer::deadline_ms(s * 1000),
    };
    println!("{cmd}: ready");
    let mut count = [Counters::default(); 2];
    let mut spins = 0u32;
    let mut next_look = 0;
    loop {
        for src in 0..2 {
            let dst = 1 - src;
            let [x, y] = &mut nics;
            let (s, d) = if src == 0 { (x, y) } else { (y, x) };
            // Frames in from src go out on dst.
            let mut moved = false;
            while let Some((id, len)) = s.rx.pop_used() {
                let i = id as u16;
                if id >= n as u32 {
                    // Not a buffer of ours: nothing to give back.
                    count[src].bad += 1;
                    continue;
                }
                if len < HDR || len as u64 > BUF {
                    count[src].bad += 1;
                    stage(&mut s.rx, i);
                    moved = true;
                    continue;
                }
                let buf = pools[src] + i as u64 * BUF;
                // A header with no offloads (the device's num_buffers
                // means nothing on transmit).
                dma::write64(buf, 0);
                dma::write32(buf + 8, 0);
                d.tx.set_desc(i, buf, len, 0, 0);
                stage(&mut d.tx, i);
                count[src].frames += 1;
                count[src].bytes += (len - HDR) as u64;
                moved = true;
            }
            if moved {
                // Bad frames went straight back to src's receive ring.
                if s.rx.avail_idx != dma::read16(s.rx.avail + 2) {
                    publish(&mut s.rx);
                }
                if d.tx.avail_idx != dma::read16(d.tx.avail + 2) {
                    publish(&mut d.tx);
                }
            }
            // Buffers dst has sent go back to src's receive ring.
            let mut back = false;
            while let Some((id, _)) = d.tx.pop_used() {
                if id >= n as u32 {
                    count[dst].bad += 1;
                    continue;
                }
                stage(&mut s.rx, id as u16);
                back = true;
            }
            if back {
                publish(&mut s.rx);
            }
        }
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(4096) {
            if timer::passed(end) {
                break;
            }
            // A COM1 read is an exit: look every 10 ms.
            if timer::passed(next_look) {
                if crate::serial::Com1::try_getc().is_some() {
                    break;
                }
                next_look = timer::deadline_ms(10);
            }
        }
        core::hint::spin_loop();
    }
    for (i, c) in count.iter().enumerate() {
        println!(
            "timing: {cmd} nic {i} to nic {} frames {} bytes {} bad {}",
            1 - i,
            c.frames,
            c.bytes,
            c.bad
        );
    }
    println!("{cmd}: ok");
}
