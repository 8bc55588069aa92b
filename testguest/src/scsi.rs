//! virtio-scsi (vioscsi): SCSI commands to target 0, LUN 0 on the first
//! request queue (queue 2) — what a CD-ROM driver sends.
use crate::blk::fnv;
use crate::dma;
use crate::virtio::{Error, Transport, Virtqueue, D_NEXT, D_WRITE};

pub const DEV_SCSI: u16 = 0x1048;
/// virtio_scsi_cmd_req with a 32-byte CDB; virtio_scsi_cmd_resp with
/// 96 bytes of sense (the defaults of the device configuration).
const REQ_LEN: u32 = 51;
const RESP_LEN: u32 = 108;

pub struct Scsi {
    pub t: Transport,
    pub q: Virtqueue,
    req: u64,
    resp: u64,
}

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Done {
    /// The transport's response (0 = OK) and the SCSI status (0 = GOOD,
    /// 2 = CHECK CONDITION) with sense key, ASC and ASCQ.
    Status {
        response: u8,
        status: u8,
        key: u8,
        asc: u8,
        ascq: u8,
    },
    Timeout,
}

impl Scsi {
    pub fn open() -> Result<Scsi, Error> {
        let t = Transport::find(DEV_SCSI, 0)?;
        t.begin(0)?;
        let q = t.queue(2, 128)?;
        t.driver_ok();
        Ok(Scsi {
            t,
            q,
            req: dma::alloc(64, 64),
            resp: dma::alloc(RESP_LEN as u64, 64),
        })
    }

    /// Sends `cdb`, with `len` bytes of data in at `buf` (none if 0).
    pub fn cmd(&mut self, cdb: &[u8], buf: u64, len: u32) -> Done {
        dma::fill(self.req, 0, REQ_LEN as u64);
        // LUN: single-level addressing of target 0, LUN 0.
        dma::write8(self.req, 1);
        for (i, &b) in cdb.iter().take(32).enumerate() {
            dma::write8(self.req + 19 + i as u64, b);
        }
        dma::fill(self.resp, 0, RESP_LEN as u64);
        dma::write8(self.resp + 11, 0xff);
        self.q.set_desc(0, self.req, REQ_LEN, D_NEXT, 1);
        if len == 0 {
            self.q.set_desc(1, self.resp, RESP_LEN, D_WRITE, 0);
        } else {
            self.q.set_desc(1, self.resp, RESP_LEN, D_WRITE | D_NEXT, 2);
            self.q.set_desc(2, buf, len, D_WRITE, 0);
        }
        self.q.push(0);
        self.q.notify();
        if self.q.wait_used(10_000).is_none() {
            return Done::Timeout;
        }
        let sense_len = dma::read32(self.resp);
        let sense = |i: u64| {
            if sense_len > i as u32 {
                dma::read8(self.resp + 12 + i)
            } else {
                0
            }
        };
        Done::Status {
            response: dma::read8(self.resp + 11),
            status: dma::read8(self.resp + 10),
            key: sense(2) & 0xf,
            asc: sense(12),
            ascq: sense(13),
        }
    }

    /// TEST UNIT READY until it passes (a fresh device reports a unit
    /// attention first), at most three times.
    pub fn ready(&mut self) -> Done {
        let mut d = Done::Timeout;
        for _ in 0..3 {
            d = self.cmd(&[0; 6], 0, 0);
            if matches!(
                d,
                Done::Status {
                    response: 0,
                    status: 0,
                    ..
                }
            ) {
                break;
            }
        }
        d
    }
}

pub fn done_text(d: Done) -> DoneText {
    DoneText(d)
}

pub struct DoneText(Done);

impl core::fmt::Display for DoneText {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self.0 {
            Done::Timeout => write!(f, "timeout"),
            Done::Status {
                response: 0,
                status: 0,
                ..
            } => write!(f, "good"),
            Done::Status {
                response: 0,
                status: 2,
                key,
                asc,
                ascq,
            } => write!(
                f,
                "check condition, sense key 0x{key:x} asc 0x{asc:02x} ascq 0x{ascq:02x}"
            ),
            Done::Status {
                response, status, ..
            } => write!(f, "response {response} status 0x{status:02x}"),
        }
    }
}

fn good(d: Done) -> bool {
    matches!(
        d,
        Done::Status {
            response: 0,
            status: 0,
            ..
        }
    )
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// `scsi-info`: the device type (INQUIRY) and READ CAPACITY(10).
pub fn cmd_info() {
    let mut s = match Scsi::open() {
        Ok(s) => s,
        Err(e) => return println!("scsi-info: error: {e}"),
    };
    let r = s.ready();
    if !good(r) {
        return println!("scsi-info: test unit ready: {}", done_text(r));
    }
    let buf = dma::alloc(96, 64);
    let r = s.cmd(&[0x12, 0, 0, 0, 96, 0], buf, 96);
    if !good(r) {
        return println!("scsi-info: inquiry: {}", done_text(r));
    }
    let inq = dma::bytes(buf, 36);
    let (ty, removable) = (inq[0] & 0x1f, inq[1] >> 7);
    fn text(b: &[u8]) -> &str {
        core::str::from_utf8(b).unwrap_or("?").trim_end()
    }
    println!(
        "note: scsi-info inquiry {:?} {:?}",
        text(&inq[8..16]),
        text(&inq[16..32])
    );
    let r = s.cmd(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], buf, 8);
    if !good(r) {
        return println!("scsi-info: read capacity: {}", done_text(r));
    }
    let cap = dma::bytes(buf, 8);
    println!(
        "scsi-info: type {} removable {} blocks {} block size {}",
        ty,
        removable,
        be32(&cap[0..4]) as u64 + 1,
        be32(&cap[4..8])
    );
}

/// `scsi-read-sum LBA COUNT`: READ(10) of COUNT 2048-byte blocks, FNV-1a.
pub fn cmd_read_sum(lba: u64, count: u64) {
    let mut s = match Scsi::open() {
        Ok(s) => s,
        Err(e) => return println!("scsi-read-sum: error: {e}"),
    };
    let what = format_args!("lba {lba} count {count}");
    if lba > u32::MAX as u64 || count == 0 {
        return println!("scsi-read-sum: {what}: error: bad range");
    }
    let r = s.ready();
    if !good(r) {
        return println!("scsi-read-sum: test unit ready: {}", done_text(r));
    }
    let buf = dma::alloc(32 * 2048, 4096);
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut at = lba;
    while at < lba + count {
        let n = (lba + count - at).min(32);
        let l = (at as u32).to_be_bytes();
        let cdb = [0x28, 0, l[0], l[1], l[2], l[3], 0, 0, n as u8, 0];
        let r = s.cmd(&cdb, buf, (n * 2048) as u32);
        if !good(r) {
            return println!("scsi-read-sum: {what}: at {at}: {}", done_text(r));
        }
        fnv(&mut h, dma::bytes(buf, n * 2048));
        at += n;
    }
    println!("scsi-read-sum: {what}: fnv {h:016x}");
}
