//! virtio-blk (vioblk): read, write, flush, get-id, and a benchmark with a
//! configurable number of requests in flight.
use crate::virtio::{Error, Transport, Virtqueue, DEV_BLOCK, D_NEXT, D_WRITE};
use crate::{arch, dma, timer};

pub const F_SEG_MAX: u64 = 1 << 2;
pub const F_RO: u64 = 1 << 5;
pub const F_BLK_SIZE: u64 = 1 << 6;
pub const F_FLUSH: u64 = 1 << 9;

pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;

pub const S_OK: u8 = 0;
/// No status written: the request did not complete in time.
pub const S_TIMEOUT: u8 = 0xff;

/// Per request slot: a 16-byte header and a status byte, three descriptors
/// (3k, 3k+1, 3k+2).
struct Slot {
    hdr: u64,
    status: u64,
}

pub struct Blk {
    pub t: Transport,
    pub q: Virtqueue,
    pub features: u64,
    pub capacity: u64,
    slots: [Slot; 32],
}

impl Blk {
    pub fn open() -> Result<Blk, Error> {
        let t = Transport::find(DEV_BLOCK, 0)?;
        let features = t.begin(F_SEG_MAX | F_RO | F_BLK_SIZE | F_FLUSH)?;
        let q = t.queue(0, 128)?;
        t.driver_ok();
        let capacity = match t.device {
            Some(d) => loop {
                let g = t.common.r8(0x15);
                let c = d.r32(0) as u64 | (d.r32(4) as u64) << 32;
                if t.common.r8(0x15) == g {
                    break c;
                }
            },
            None => 0,
        };
        let slots = core::array::from_fn(|_| Slot {
            hdr: dma::alloc(16, 16),
            status: dma::alloc(1, 1),
        });
        Ok(Blk {
            t,
            q,
            features,
            capacity,
            slots,
        })
    }

    /// The most requests in flight the queue allows (3 descriptors each).
    pub fn max_depth(&self) -> usize {
        (self.q.size as usize / 3).min(self.slots.len())
    }

    /// Makes request `slot` available: header, optional data, status.
    fn submit(&mut self, slot: usize, ty: u32, sector: u64, buf: u64, len: u32) {
        let s = &self.slots[slot];
        dma::write32(s.hdr, ty);
        dma::write32(s.hdr + 4, 0);
        dma::write64(s.hdr + 8, sector);
        dma::write8(s.status, S_TIMEOUT);
        let d = (3 * slot) as u16;
        if len == 0 {
            self.q.set_desc(d, s.hdr, 16, D_NEXT, d + 2);
        } else {
            self.q.set_desc(d, s.hdr, 16, D_NEXT, d + 1);
            let flags = if ty == T_OUT {
                D_NEXT
            } else {
                D_NEXT | D_WRITE
            };
            self.q.set_desc(d + 1, buf, len, flags, d + 2);
        }
        self.q.set_desc(d + 2, s.status, 1, D_WRITE, 0);
        self.q.push(d);
    }

    /// One request, waited for; its status.
    pub fn request(&mut self, ty: u32, sector: u64, buf: u64, len: u32) -> u8 {
        self.submit(0, ty, sector, buf, len);
        self.q.notify();
        match self.q.wait_used(10_000) {
            Some(_) => dma::read8(self.slots[0].status),
            None => S_TIMEOUT,
        }
    }
}

fn status_text(s: u8) -> &'static str {
    match s {
        0 => "ok",
        1 => "ioerr",
        2 => "unsupp",
        S_TIMEOUT => "timeout",
        _ => "bad status",
    }
}

/// Chunks of at most 64 KiB: within what both vmd (SEG_MAX 126) and QEMU
/// take in one descriptor.
const CHUNK: u64 = 64 << 10;

fn open_or_report(cmd: &str) -> Option<Blk> {
    match Blk::open() {
        Ok(b) => Some(b),
        Err(e) => {
            println!("{cmd}: error: {e}");
            None
        }
    }
}

fn range_ok(cmd: &str, b: &Blk, off: u64, len: u64) -> bool {
    if !off.is_multiple_of(512) || !len.is_multiple_of(512) || len == 0 {
        println!("{cmd}: error: offset and length must be whole sectors");
        return false;
    }
    if (off + len) / 512 > b.capacity {
        println!(
            "{cmd}: error: 0x{:x} bytes past the disk's {} sectors",
            off + len,
            b.capacity
        );
        return false;
    }
    true
}

/// `blk-info`: capacity and the features that matter to the tests.
pub fn cmd_info() {
    let Some(b) = open_or_report("blk-info") else {
        return;
    };
    let bar = if b.t.io { "io" } else { "memory" };
    println!("note: blk-info registers in {bar} space");
    println!(
        "blk-info: sectors {} flush {} ro {}",
        b.capacity,
        (b.features & F_FLUSH != 0) as u8,
        (b.features & F_RO != 0) as u8
    );
}

/// Reads [off, off+len), calling `f` on each chunk; the first bad status.
fn read_range(b: &mut Blk, off: u64, len: u64, mut f: impl FnMut(u64, &[u8])) -> u8 {
    let buf = dma::alloc(CHUNK, 4096);
    let mut at = off;
    while at < off + len {
        let n = CHUNK.min(off + len - at);
        let s = b.request(T_IN, at / 512, buf, n as u32);
        if s != S_OK {
            return s;
        }
        f(at, dma::bytes(buf, n));
        at += n;
    }
    S_OK
}

/// `blk-read-pattern OFF LEN BYTE`: every byte of the range is BYTE.
pub fn cmd_read_pattern(off: u64, len: u64, byte: u8) {
    let cmd = "blk-read-pattern";
    let Some(mut b) = open_or_report(cmd) else {
        return;
    };
    if !range_ok(cmd, &b, off, len) {
        return;
    }
    let mut bad = None;
    let s = read_range(&mut b, off, len, |at, d| {
        if bad.is_none() {
            if let Some(i) = d.iter().position(|&x| x != byte) {
                bad = Some((at + i as u64, d[i]));
            }
        }
    });
    let what = format_args!("off 0x{off:x} len 0x{len:x} byte 0x{byte:02x}");
    match (s, bad) {
        (S_OK, None) => println!("{cmd}: {what}: ok"),
        (S_OK, Some((at, got))) => println!("{cmd}: {what}: mismatch at 0x{at:x}: 0x{got:02x}"),
        (s, _) => println!("{cmd}: {what}: {}", status_text(s)),
    }
}

/// FNV-1a, 64-bit: a checksum both VMMs' transcripts can show.
pub fn fnv(h: &mut u64, d: &[u8]) {
    for &x in d {
        *h ^= x as u64;
        *h = h.wrapping_mul(0x100_0000_01b3);
    }
}

/// `blk-read-sum OFF LEN`: the FNV-1a hash of the range.
pub fn cmd_read_sum(off: u64, len: u64) {
    let cmd = "blk-read-sum";
    let Some(mut b) = open_or_report(cmd) else {
        return;
    };
    if !range_ok(cmd, &b, off, len) {
        return;
    }
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let s = read_range(&mut b, off, len, |_, d| fnv(&mut h, d));
    match s {
        S_OK => println!("{cmd}: off 0x{off:x} len 0x{len:x}: fnv {h:016x}"),
        s => println!("{cmd}: off 0x{off:x} len 0x{len:x}: {}", status_text(s)),
    }
}

/// `blk-write-pattern OFF LEN BYTE`.
pub fn cmd_write_pattern(off: u64, len: u64, byte: u8) {
    let cmd = "blk-write-pattern";
    let Some(mut b) = open_or_report(cmd) else {
        return;
    };
    if !range_ok(cmd, &b, off, len) {
        return;
    }
    let buf = dma::alloc(CHUNK, 4096);
    dma::fill(buf, byte, CHUNK);
    let mut at = off;
    let mut s = S_OK;
    while at < off + len && s == S_OK {
        let n = CHUNK.min(off + len - at);
        s = b.request(T_OUT, at / 512, buf, n as u32);
        at += n;
    }
    println!(
        "{cmd}: off 0x{off:x} len 0x{len:x} byte 0x{byte:02x}: {}",
        status_text(s)
    );
}

/// The byte block `i` of a write stream is filled with (1 to 251).
pub fn stream_byte(i: u64) -> u8 {
    (i % 251) as u8 + 1
}

/// `blk-write-stream OFF N [flush]`: N writes of 4 KiB, one at a time,
/// block i at OFF + 4 KiB * i filled with `stream_byte(i)`; a line for each
/// one the device completed (and, with flush, flushed), so that a test that
/// kills the VMM midway knows which writes must read back.
pub fn cmd_write_stream(off: u64, n: u64, flush: bool) {
    let cmd = "blk-write-stream";
    let Some(mut b) = open_or_report(cmd) else {
        return;
    };
    if !range_ok(cmd, &b, off, n.max(1) * 4096) {
        return;
    }
    let buf = dma::alloc(4096, 4096);
    for i in 0..n {
        dma::fill(buf, stream_byte(i), 4096);
        let mut s = b.request(T_OUT, (off + 4096 * i) / 512, buf, 4096);
        if s == S_OK && flush {
            s = b.request(T_FLUSH, 0, 0, 0);
        }
        if s != S_OK {
            return println!("{cmd}: block {i}: {}", status_text(s));
        }
        println!("{cmd}: wrote {i}");
    }
}

/// `blk-flush`.
pub fn cmd_flush() {
    let Some(mut b) = open_or_report("blk-flush") else {
        return;
    };
    if b.features & F_FLUSH == 0 {
        return println!("blk-flush: not offered");
    }
    let s = b.request(T_FLUSH, 0, 0, 0);
    println!("blk-flush: {}", status_text(s));
}

/// `blk-id`: the device's id string (up to 20 bytes, NUL-padded).
pub fn cmd_id() {
    let Some(mut b) = open_or_report("blk-id") else {
        return;
    };
    let buf = dma::alloc(20, 16);
    let s = b.request(T_GET_ID, 0, buf, 20);
    if s != S_OK {
        return println!("blk-id: {}", status_text(s));
    }
    let d = dma::bytes(buf, 20);
    let n = d.iter().position(|&x| x == 0).unwrap_or(20);
    let id = core::str::from_utf8(&d[..n]).unwrap_or("?");
    println!("blk-id: {id:?}");
}

#[derive(Clone, Copy)]
pub enum Bench {
    Read4k,
    Write4k,
    SeqRead1m,
}

/// `blk-bench read4k|write4k|seqread1m N [DEPTH]`: N requests with DEPTH
/// in flight.  4 KiB requests go to pseudo-random aligned offsets over the
/// first 64 MiB past the boot area (or the disk, if smaller); 1 MiB reads
/// are sequential and wrap.  The result line is deterministic, the
/// figures are on a `timing:` line.
pub fn cmd_bench(kind: Bench, n: u64, depth: usize) {
    let cmd = "blk-bench";
    let name = match kind {
        Bench::Read4k => "read4k",
        Bench::Write4k => "write4k",
        Bench::SeqRead1m => "seqread1m",
    };
    let Some(mut b) = open_or_report(cmd) else {
        return;
    };
    let depth = depth.clamp(1, b.max_depth());
    let (ty, size) = match kind {
        Bench::Read4k => (T_IN, 4096u64),
        Bench::Write4k => (T_OUT, 4096),
        Bench::SeqRead1m => (T_IN, 1 << 20),
    };
    let base = 1u64 << 20; // past the boot disk's guest image
    let span = (b.capacity * 512).saturating_sub(base).min(64 << 20) / size * size;
    if span < size {
        return println!("{cmd} {name}: error: disk too small");
    }
    let bufs: [u64; 32] =
        core::array::from_fn(|i| if i < depth { dma::alloc(size, 4096) } else { 0 });
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut seq = 0u64;
    let mut next_off = || match kind {
        Bench::SeqRead1m => {
            let o = base + seq % span;
            seq += size;
            o
        }
        _ => {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            base + (rng % (span / size)) * size
        }
    };
    let t0 = arch::rdtsc();
    let (mut submitted, mut done, mut errors) = (0u64, 0u64, 0u64);
    for (slot, &buf) in bufs.iter().enumerate().take(depth.min(n as usize)) {
        let off = next_off();
        b.submit(slot, ty, off / 512, buf, size as u32);
        submitted += 1;
    }
    b.q.notify();
    let mut idle = timer::deadline_ms(10_000);
    while done < n {
        let mut kicked = false;
        while let Some((id, _)) = b.q.pop_used() {
            let slot = (id / 3) as usize;
            if slot >= depth {
                errors += 1;
                continue;
            }
            done += 1;
            if dma::read8(b.slots[slot].status) != S_OK {
                errors += 1;
            }
            if submitted < n {
                let off = next_off();
                b.submit(slot, ty, off / 512, bufs[slot], size as u32);
                submitted += 1;
                kicked = true;
            }
        }
        if kicked {
            b.q.notify();
            idle = timer::deadline_ms(10_000);
        } else if timer::passed(idle) {
            break;
        }
    }
    let t1 = arch::rdtsc();
    if done < n {
        return println!("{cmd} {name}: error: {done} of {n} requests completed");
    }
    match errors {
        0 => println!("{cmd} {name} n {n} depth {depth}: ok"),
        e => println!("{cmd} {name} n {n} depth {depth}: {e} errors"),
    }
    let ns = timer::ns(t0, t1).max(1);
    let iops = n as u128 * 1_000_000_000 / ns as u128;
    let mbs = (n * size) as u128 * 1_000_000_000 / ns as u128 / (1 << 20);
    println!("timing: blk-bench {name} n {n} depth {depth} ns {ns} iops {iops} mbs {mbs}");
}
