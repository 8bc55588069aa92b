//! Descriptor chains a driver must never build, and what the device did
//! with them: a device should set NEEDS_RESET (or fail the request) and
//! work again once reset.
use crate::blk::{Blk, S_OK, T_IN};
use crate::rng::Rng;
use crate::scsi::{Done, Scsi};
use crate::virtio::{Transport, Virtqueue, D_NEXT, D_WRITE, S_NEEDS_RESET};
use crate::{dma, timer};

#[derive(Clone, Copy)]
pub enum Kind {
    /// Two descriptors naming each other.
    Loop,
    /// A buffer far outside guest memory.
    Oob,
    /// A buffer of nearly 4 GiB.
    Oversize,
    /// avail.idx moved far past the queue size.
    WildIdx,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Rng,
    Blk,
    Scsi,
}

/// Request header and status lengths of the request-shaped chains: a
/// virtio-blk header and status byte, or a virtio-scsi command request
/// (LUN 0, TEST UNIT READY) and response.
fn shape(t: Target) -> (u32, u32) {
    match t {
        Target::Scsi => (51, 108),
        _ => (16, 1),
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Loop => "loop",
        Kind::Oob => "oob",
        Kind::Oversize => "oversize",
        Kind::WildIdx => "wild-idx",
    }
}

/// A request-shaped chain at descriptor 0 with `data` where the device
/// writes: virtio-blk has header, data, status; virtio-scsi has request,
/// response, data in; virtio-rng just the buffer.
fn request(q: &Virtqueue, t: Target, hdr: (u64, u32), data: (u64, u32), status: (u64, u32)) {
    match t {
        Target::Rng => q.set_desc(0, data.0, data.1, D_WRITE, 0),
        Target::Blk => {
            q.set_desc(0, hdr.0, hdr.1, D_NEXT, 1);
            q.set_desc(1, data.0, data.1, D_WRITE | D_NEXT, 2);
            q.set_desc(2, status.0, status.1, D_WRITE, 0);
        }
        Target::Scsi => {
            q.set_desc(0, hdr.0, hdr.1, D_NEXT, 1);
            q.set_desc(1, status.0, status.1, D_WRITE | D_NEXT, 2);
            q.set_desc(2, data.0, data.1, D_WRITE, 0);
        }
    }
}

/// Builds the chain in `q` and kicks it.
fn submit(q: &mut Virtqueue, kind: Kind, target: Target) {
    let buf = dma::alloc(4096, 4096);
    let hdr = dma::alloc(64, 64);
    let status = dma::alloc(128, 64);
    let (hl, sl) = shape(target);
    if target == Target::Scsi {
        dma::write8(hdr, 1);
    } else {
        dma::write32(hdr, T_IN);
    }
    let far = 1u64 << 40;
    match (kind, target) {
        (Kind::Loop, Target::Rng) => {
            q.set_desc(0, buf, 16, D_WRITE | D_NEXT, 1);
            q.set_desc(1, buf + 16, 16, D_WRITE | D_NEXT, 0);
        }
        (Kind::Loop, _) => {
            q.set_desc(0, hdr, hl, D_NEXT, 1);
            q.set_desc(1, buf, 512, D_WRITE | D_NEXT, 2);
            q.set_desc(2, buf + 512, 512, D_WRITE | D_NEXT, 1);
        }
        (Kind::Oob | Kind::Oversize, t) => {
            let (addr, len) = match kind {
                Kind::Oob => (far, 4096),
                _ => (buf, 0xffff_f000),
            };
            request(q, t, (hdr, hl), (addr, len), (status, sl));
        }
        (Kind::WildIdx, t) => {
            request(q, t, (hdr, hl), (buf, 512), (status, sl));
        }
    }
    if let Kind::WildIdx = kind {
        q.set_avail_idx(q.size.wrapping_add(1000));
    } else {
        q.push(0);
    }
    q.kick();
}

/// What became of the chain within a second.
fn outcome(t: &Transport, q: &mut Virtqueue) -> &'static str {
    let d = timer::deadline_ms(1000);
    loop {
        if t.status() & S_NEEDS_RESET != 0 {
            return "needs-reset";
        }
        if q.pop_used().is_some() {
            // A device may also fail the request instead.
            return "completed";
        }
        if timer::passed(d) {
            return "no answer";
        }
        core::hint::spin_loop();
    }
}

/// `hostile-chain loop|oob|oversize|wild-idx [rng|blk]`.
pub fn cmd_hostile(kind: Kind, target: Target) {
    let tname = match target {
        Target::Rng => "rng",
        Target::Blk => "blk",
        Target::Scsi => "scsi",
    };
    let name = kind_name(kind);
    let seen = match target {
        Target::Rng => match Rng::open() {
            Ok(mut r) => {
                submit(&mut r.q, kind, target);
                outcome(&r.t, &mut r.q)
            }
            Err(e) => return println!("hostile-chain {name} {tname}: error: {e}"),
        },
        Target::Blk => match Blk::open() {
            Ok(mut b) => {
                submit(&mut b.q, kind, target);
                outcome(&b.t, &mut b.q)
            }
            Err(e) => return println!("hostile-chain {name} {tname}: error: {e}"),
        },
        Target::Scsi => match Scsi::open() {
            Ok(mut d) => {
                submit(&mut d.q, kind, target);
                outcome(&d.t, &mut d.q)
            }
            Err(e) => return println!("hostile-chain {name} {tname}: error: {e}"),
        },
    };
    println!("hostile-chain {name} {tname}: {seen}");
    // The devices above were reset when dropped; open again and use it.
    let works = match target {
        Target::Rng => Rng::open().ok().and_then(|mut r| {
            let b = dma::alloc(32, 32);
            r.read(b, 32).filter(|&n| n > 0)
        }),
        Target::Blk => Blk::open().ok().and_then(|mut b| {
            let buf = dma::alloc(512, 512);
            (b.request(T_IN, 0, buf, 512) == S_OK).then_some(512)
        }),
        Target::Scsi => Scsi::open()
            .ok()
            .and_then(|mut d| matches!(d.ready(), Done::Status { response: 0, .. }).then_some(0)),
    };
    match works {
        Some(_) => println!("hostile-chain {name} {tname}: works after reset"),
        None => println!("hostile-chain {name} {tname}: error: broken after reset"),
    }
}
