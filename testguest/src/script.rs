//! The script: one command a line, from the script sector the boot sector
//! loaded (disk boot), or from LBA 1 of the first virtio-blk disk (ELF
//! boot); `pci` and `irq-timer` when
//! there is none.  Each command releases its DMA memory
//! and resets its device when it ends.
//!
//! The sector starts with `#testguest` and a newline; then, one a line
//! (`#` starts a comment; numbers take 0x and k/M/G):
//!
//! - `pci` — every function on bus 0.
//! - `boot-payload` — FNV-1a of the 64 KiB at LBA 1536 that the boot
//!   sector read through the firmware's int 13h (disk boot only).
//! - `irq-timer` — ten PIT ticks through the PIC (interrupt delivery).
//! - `rng`, `irq-rng` — entropy, polled or completed through INTx.
//! - `blk-info`, `blk-id`, `blk-flush`.
//! - `blk-read-pattern OFF LEN BYTE`, `blk-write-pattern OFF LEN BYTE`,
//!   `blk-read-sum OFF LEN` (FNV-1a of the range).
//! - `blk-write-stream OFF N [flush]` — N 4 KiB writes one by one, block i
//!   filled with (i % 251) + 1, a `wrote i` line after each completion
//!   (with flush: after each write and its flush), for tests that kill the
//!   VMM midway.
//! - `blk-bench read4k|write4k|seqread1m N [DEPTH]`.
//! - `vmmci-ack [reset]`, `vmmci-ignore` — wait for vmmci commands for
//!   ever; acknowledge shutdown and reboot, then halt (or, with `reset`,
//!   reset the machine on reboot as a real guest would), or ignore them.
//! - `scsi-info` (device type, blocks, block size), `scsi-read-sum LBA
//!   COUNT` (READ(10) of 2048-byte blocks, FNV-1a): target 0, LUN 0.
//! - `hostile-chain loop|oob|oversize|wild-idx [blk|rng|scsi]`.
//! - `net-info` — each virtio-net NIC's MAC.
//! - `net-repeat SECONDS` — a two-port repeater between NIC 0 and NIC 1
//!   for SECONDS (0: for ever) or until a byte arrives on COM1;
//!   `net-repeat: ready` once it forwards, counters on `timing:` lines.
//! - `halt` — stop here (no `done`).
//!
//! After the last command the guest prints `done` and halts.
use crate::blk::{self, Bench, Blk};
use crate::hostile::{self, Kind, Target};
use crate::{dma, irq, net, pci, rng, scsi, vmmci};

pub const MAGIC: &[u8] = b"#testguest\n";
const DEFAULT: &[u8] = b"pci\nirq-timer\n";

/// Up to one sector of script.
pub struct Script {
    buf: [u8; 512],
    len: usize,
}

impl Script {
    fn from(sector: &[u8]) -> Option<Script> {
        let body = sector.strip_prefix(MAGIC)?;
        let len = body.iter().position(|&b| b == 0).unwrap_or(body.len());
        let mut buf = [0; 512];
        buf[..len].copy_from_slice(&body[..len]);
        Some(Script { buf, len })
    }

    /// The sector the boot sector loaded at `addr`.
    pub fn at(addr: u64) -> Option<Script> {
        if addr != 0x7e00 {
            return None;
        }
        // SAFETY: the boot sector read the script sector to 0x7e00, below
        // the image, which nothing else uses.
        let s = unsafe { core::slice::from_raw_parts(addr as *const u8, 512) };
        Script::from(s)
    }

    /// LBA 1 of the first virtio-blk disk (vmd passes a kernel no command
    /// line).
    pub fn from_disk() -> Option<Script> {
        let m = dma::mark();
        let s = (|| {
            let mut b = Blk::open().ok()?;
            let buf = dma::alloc(512, 512);
            (b.request(blk::T_IN, 1, buf, 512) == blk::S_OK).then_some(())?;
            Script::from(dma::bytes(buf, 512))
        })();
        dma::release(m);
        s
    }

    pub fn default_script() -> Script {
        let mut buf = [0; 512];
        buf[..DEFAULT.len()].copy_from_slice(DEFAULT);
        Script {
            buf,
            len: DEFAULT.len(),
        }
    }

    pub fn run(&self) {
        let text = core::str::from_utf8(&self.buf[..self.len]).unwrap_or("");
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let m = dma::mark();
            run_line(line);
            dma::release(m);
        }
    }
}

/// 123, 0x7b, 4k, 1M, 1G.
fn num(s: &str) -> Option<u64> {
    let (digits, mult) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 1 << 10),
        b'm' | b'M' => (&s[..s.len() - 1], 1 << 20),
        b'g' | b'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let v = match digits.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok()?,
        None => digits.parse().ok()?,
    };
    v.checked_mul(mult)
}

fn run_line(line: &str) {
    let mut w = line.split_ascii_whitespace();
    let cmd = w.next().unwrap_or("");
    let args: [Option<&str>; 4] = core::array::from_fn(|_| w.next());
    let n = |i: usize| args[i].and_then(num);
    let bad = || println!("error: bad arguments: {line}");
    match cmd {
        "pci" => pci::print_all(),
        "boot-payload" => boot_payload(),
        "rng" => rng::cmd_rng(),
        "irq-rng" => irq::cmd_irq_rng(),
        "irq-timer" => irq::cmd_irq_timer(),
        "blk-info" => blk::cmd_info(),
        "blk-id" => blk::cmd_id(),
        "blk-flush" => blk::cmd_flush(),
        "blk-read-pattern" | "blk-write-pattern" => match (n(0), n(1), n(2)) {
            (Some(off), Some(len), Some(byte)) if byte < 256 => {
                if cmd == "blk-read-pattern" {
                    blk::cmd_read_pattern(off, len, byte as u8)
                } else {
                    blk::cmd_write_pattern(off, len, byte as u8)
                }
            }
            _ => bad(),
        },
        "scsi-info" => scsi::cmd_info(),
        "scsi-read-sum" => match (n(0), n(1)) {
            (Some(lba), Some(count)) => scsi::cmd_read_sum(lba, count),
            _ => bad(),
        },
        "blk-write-stream" => match (n(0), n(1), args[2]) {
            (Some(off), Some(count), None) => blk::cmd_write_stream(off, count, false),
            (Some(off), Some(count), Some("flush")) => blk::cmd_write_stream(off, count, true),
            _ => bad(),
        },
        "blk-read-sum" => match (n(0), n(1)) {
            (Some(off), Some(len)) => blk::cmd_read_sum(off, len),
            _ => bad(),
        },
        "blk-bench" => {
            let kind = match args[0] {
                Some("read4k") => Bench::Read4k,
                Some("write4k") => Bench::Write4k,
                Some("seqread1m") => Bench::SeqRead1m,
                _ => return bad(),
            };
            match (n(1), args[2].map(num)) {
                (Some(count), None) => blk::cmd_bench(kind, count, 1),
                (Some(count), Some(Some(depth))) => blk::cmd_bench(kind, count, depth as usize),
                _ => bad(),
            }
        }
        "vmmci-ack" => match args[0] {
            None => vmmci::cmd_vmmci(true, false),
            Some("reset") => vmmci::cmd_vmmci(true, true),
            _ => bad(),
        },
        "vmmci-ignore" => vmmci::cmd_vmmci(false, false),
        "hostile-chain" => {
            let kind = match args[0] {
                Some("loop") => Kind::Loop,
                Some("oob") => Kind::Oob,
                Some("oversize") => Kind::Oversize,
                Some("wild-idx") => Kind::WildIdx,
                _ => return bad(),
            };
            let target = match args[1] {
                None | Some("blk") => Target::Blk,
                Some("rng") => Target::Rng,
                Some("scsi") => Target::Scsi,
                _ => return bad(),
            };
            hostile::cmd_hostile(kind, target)
        }
        "net-info" => net::cmd_info(),
        "net-repeat" => match (n(0), args[1]) {
            (Some(s), None) => net::cmd_repeat(s),
            _ => bad(),
        },
        "halt" => crate::arch::halt(),
        _ => println!("error: unknown command {cmd:?}"),
    }
}

fn boot_payload() {
    use crate::boot::{BOOT_DISK, PAYLOAD_ADDR, PAYLOAD_LEN};
    if crate::BOOT_KIND.load(core::sync::atomic::Ordering::Relaxed) != BOOT_DISK {
        return println!("boot-payload: error: not booted from a disk");
    }
    // SAFETY: the boot sector read the payload to [PAYLOAD_ADDR,
    // +PAYLOAD_LEN), below the DMA window and above the image (link.ld
    // asserts it), which nothing else uses.
    let p = unsafe { core::slice::from_raw_parts(PAYLOAD_ADDR as *const u8, PAYLOAD_LEN as usize) };
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    crate::blk::fnv(&mut h, p);
    println!("boot-payload: fnv {h:016x}");
}
