//! Crash consistency: a child process writes a seeded stream of random
//! writes through vmd-disk and is killed with SIGKILL at a random moment,
//! many times over the same image.  After each kill `qemu-img check`
//! finds no corruption (leaked clusters are allowed, as with qemu) and
//! every write the child reported flushed reads back, except where a
//! later write that may or may not have landed covers it.
//!
//! The child is this test binary again, told so by the environment; it
//! announces each write on stdout before doing it (`W off len byte`) and
//! says `F n` once the first n writes are flushed.  A line is one
//! write(2) to a pipe, so a kill never leaves half of one.
//!
//! VMD_DISK_CRASH_KILLS sets the kills per image (default 12),
//! VMD_DISK_CRASH_SEED the seed.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use libtest_mimic::{Failed, Trial};
use support::{qemu_check, qemu_img, qemu_io, Rng, TempDir};

const CHILD_ENV: &str = "VMD_DISK_CRASH_CHILD";
const M: u64 = 1024 * 1024;

/// The child: `image seed`; writes until killed.
fn child(spec: &str) -> ! {
    let mut parts = spec.split(' ');
    let image = parts.next().expect("image");
    let seed: u64 = parts.next().and_then(|s| s.parse().ok()).expect("seed");
    let mut img = vmd_disk::open(image, None, true).unwrap_or_else(|e| {
        eprintln!("crash child: {e}");
        std::process::exit(2)
    });
    let size = img.size();
    let mut rng = Rng::new(seed);
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let len = match rng.below(4) {
            0 => 512 * (1 + rng.below(8)),
            1 => 1 + rng.below(5000),
            _ => 1 + rng.below(buf.len() as u64),
        };
        let off = match rng.below(2) {
            0 => rng.below(size - len) / 512 * 512,
            _ => rng.below(size - len),
        };
        let byte = (1 + rng.below(255)) as u8;
        writeln!(out, "W {off} {len} {byte}").unwrap();
        out.flush().unwrap();
        buf[..len as usize].fill(byte);
        if let Err(e) = img.write_at(&buf[..len as usize], off) {
            eprintln!("crash child: {e}");
            std::process::exit(2);
        }
        n += 1;
        if rng.below(3) == 0 {
            img.flush().unwrap();
            writeln!(out, "F {n}").unwrap();
            out.flush().unwrap();
        }
    }
}

struct Write1 {
    off: u64,
    len: u64,
    byte: u8,
}

/// Kills `kills` children, each after a random moment, checking the image
/// after each.
fn crash_loop(image: &str, seed: u64, kills: u64) -> Result<(), Failed> {
    let exe = std::env::current_exe()?;
    let mut rng = Rng::new(seed);
    let mut model = read_all(image)?;
    let mut leaks_seen = 0;
    for round in 0..kills {
        let child_seed = rng.next();
        let mut c = Command::new(&exe)
            .env(CHILD_ENV, format!("{image} {child_seed}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        std::thread::sleep(Duration::from_millis(20 + rng.below(200)));
        c.kill()?;
        let status = c.wait()?;
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut c.stderr.take().expect("piped"), &mut stderr)?;
        if status.code().is_some() {
            return Err(
                format!("round {round}: child exited by itself ({status}): {stderr}").into(),
            );
        }
        let mut writes = Vec::new();
        let mut flushed = 0usize;
        for line in BufReader::new(c.stdout.take().expect("piped")).lines() {
            let line = line?;
            let f: Vec<&str> = line.split(' ').collect();
            match f.as_slice() {
                ["W", off, len, byte] => writes.push(Write1 {
                    off: off.parse()?,
                    len: len.parse()?,
                    byte: byte.parse()?,
                }),
                ["F", n] => flushed = n.parse()?,
                _ => return Err(format!("round {round}: child said '{line}'").into()),
            }
        }
        let ctx = format!(
            "seed {seed} round {round} ({} writes, {flushed} flushed)",
            writes.len()
        );
        match qemu_check(image) {
            Ok(support::Checked::Clean) => {}
            Ok(support::Checked::Leaks(_)) => leaks_seen += 1,
            Err(e) => return Err(format!("{ctx}: {e}").into()),
        }
        // The flushed writes, in order, over what the image held before.
        for w in &writes[..flushed] {
            model[w.off as usize..(w.off + w.len) as usize].fill(w.byte);
        }
        let got = read_all(image).map_err(|e| format!("{ctx}: {e}"))?;
        let unsure = &writes[flushed..];
        for (i, (&g, &m)) in got.iter().zip(&model).enumerate() {
            if g == m {
                continue;
            }
            let i = i as u64;
            let maybe = unsure
                .iter()
                .any(|w| w.byte == g && (w.off..w.off + w.len).contains(&i));
            if !maybe {
                return Err(format!(
                    "{ctx}: byte {i:#x} reads {g:#x}, a flushed write left {m:#x}"
                )
                .into());
            }
        }
        // What is there now is the next round's starting point.
        model = got;
    }
    eprintln!("{image}: {kills} kills, leaks after {leaks_seen}");
    Ok(())
}

fn read_all(image: &str) -> Result<Vec<u8>, String> {
    let mut img = vmd_disk::open(image, None, false).map_err(|e| e.to_string())?;
    let mut v = vec![0u8; img.size() as usize];
    img.read_at(&mut v, 0).map_err(|e| e.to_string())?;
    Ok(v)
}

fn kills() -> u64 {
    std::env::var("VMD_DISK_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12)
}

fn seed() -> u64 {
    std::env::var("VMD_DISK_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x0076_6d64)
}

/// vmd's layout (vmctl create -b) over a qemu-made base full of data.
fn vmd_overlay_64k() -> Result<(), Failed> {
    let d = TempDir::new("crash-vmd");
    let base = d.path("base.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &base, "8M"])?;
    qemu_io(&base, "write -P 0x5c 0 6M")?;
    let top = d.path("top.qcow2");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&top)?;
    vmd_disk::qcow2::create(&f, &top, 8 * M, Some("base.qcow2"))?;
    drop(f);
    crash_loop(&top, seed(), kills())
}

/// qemu's v2 image with 4 KiB clusters: many L2 tables and, as the file
/// grows, new refcount blocks.
fn qemu_v2_4k() -> Result<(), Failed> {
    let d = TempDir::new("crash-v2");
    let base = d.path("base.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compat=0.10,cluster_size=4096",
        &base,
        "8M",
    ])?;
    qemu_io(&base, "write -P 0x3a 1M 5M")?;
    let top = d.path("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compat=0.10,cluster_size=4096",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        &top,
        "8M",
    ])?;
    crash_loop(&top, seed() ^ 1, kills())
}

/// 512-byte clusters, no backing: the file soon outgrows the first
/// refcount table, which moves while children are killed.
fn qemu_512() -> Result<(), Failed> {
    let d = TempDir::new("crash-512");
    let img = d.path("small.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=512",
        &img,
        "12M",
    ])?;
    // Near the 8 MiB one table cluster counts.
    qemu_io(&img, "write -P 0x11 0 7M")?;
    let before = std::fs::read(&img)?[48..56].to_vec();
    crash_loop(&img, seed() ^ 3, kills())?;
    if std::fs::read(&img)?[48..56] == before[..] {
        eprintln!("{img}: the refcount table did not move this time");
    }
    Ok(())
}

/// A compressed image (qemu-img convert -c) whose clusters get rewritten.
fn compressed_64k() -> Result<(), Failed> {
    let d = TempDir::new("crash-comp");
    let raw = d.path("src.raw");
    let data: Vec<u8> = (0..8 * M).map(|i| (i / 777 % 253) as u8).collect();
    std::fs::write(&raw, data)?;
    let img = d.path("c.qcow2");
    qemu_img(&[
        "convert", "-q", "-c", "-f", "raw", "-O", "qcow2", &raw, &img,
    ])?;
    crash_loop(&img, seed() ^ 2, kills())
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child(&spec);
    }
    support::run_trials(vec![
        Trial::test("crash_vmd_overlay_64k", vmd_overlay_64k),
        Trial::test("crash_qemu_v2_4k", qemu_v2_4k),
        Trial::test("crash_compressed_64k", compressed_64k),
        Trial::test("crash_qemu_512", qemu_512),
    ])
}
