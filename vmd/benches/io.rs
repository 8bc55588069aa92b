//! `make bench-io`: the test guest's block benchmark (random 4 KiB reads
//! and writes at queue depth 8, sequential 1 MiB reads at depth 4) under
//! our VM and, with the same boot disk and guest, under QEMU (`-enable-kvm`,
//! modern virtio-blk-pci), on a raw and on a qcow2 image.  Ours is vioblk
//! in its own device process, as the daemon runs it (`_ours`), the same
//! spinning 50 us on an empty queue (`_ours_spin`, `VMD_POLL_US=50`), and inside
//! the VM process (`_ours_inprocess`, `VMD_INPROCESS_DEVICES`).  Prints,
//! for each format, one `key=value` per line: the median over
//! `BENCH_ROUNDS` rounds (default 5) of each figure and the ratio
//! ours/QEMU.  `BENCH_FORMATS` (raw,qcow2) and `BENCH_WHO`
//! (ours,spin,inprocess,qemu) narrow a run down, e.g. to profile one case.
//!
//! Needs /dev/kvm, Debian's seabios, qemu-system-x86 and qemu-utils, and
//! the test guest (`make testguest`); it says which is missing and exits 1.
#[path = "../tests/support/mod.rs"]
mod support;
#[path = "../tests/support/testguest.rs"]
mod testguest_support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::Console;
use testguest_support::{missing_guest, missing_qemu, qemu_devices, write_boot_disk};
use testguest_support::{Qemu, TempFile};
use vmd::vm::devproc::{DeviceProcesses, DiskFiles};
use vmd::vm::machine::{BootImage, Machine, VmConfig};
use vmd_proto::config::DiskFormat;
use vmd_proto::msg::VmDisk;

const MB: u64 = 1 << 20;
const DISK: u64 = 96 * MB;
const SCRIPT: &str =
    "blk-bench read4k 20000 8\nblk-bench write4k 5000 8\nblk-bench seqread1m 256 4\n";
/// (figure, timing line's bench name, unit) in the order printed.
const FIGURES: [(&str, &str, &str); 3] = [
    ("blk_read4k", "read4k", "iops"),
    ("blk_write4k", "write4k", "iops"),
    ("blk_seq_read", "seqread1m", "mbs"),
];

/// The figure `unit` (iops or mbs) of bench `name` in a transcript.
fn figure(text: &str, name: &str, unit: &str) -> Result<f64, String> {
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("timing: blk-bench {name} ")))
        .ok_or_else(|| format!("no timing line for {name}:\n{text}"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| *w == unit)
        .ok_or_else(|| format!("no {unit} in {line:?}"))?;
    words
        .get(at + 1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("bad {unit} in {line:?}"))
}

fn run_ours(image: &Path, format: vmd_disk::Format, devproc: bool) -> Result<String, String> {
    let bios = std::fs::read(support::bios_path()).map_err(|e| e.to_string())?;
    let path = image.to_str().ok_or("image path not UTF-8")?;
    let console = Console::default();
    let vmm = Arc::new(vmm_sys::Vmm::open().map_err(|e| e.to_string())?);
    let mut cfg = VmConfig::new(
        "bench-io",
        128 * MB,
        BootImage::Bios(bios),
        Box::new(console.clone()),
    );
    if devproc {
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .open(image)
            .map_err(|e| format!("{path}: {e}"))?;
        cfg.devices = Some(DeviceProcesses {
            exe: env!("CARGO_BIN_EXE_vmd").into(),
            vmm_fd: vmm_sys::Vmm::open_device().map_err(|e| e.to_string())?,
            flags: Vec::new(),
            one_way_kicks: true,
        });
        cfg.disk_files = vec![DiskFiles {
            disk: VmDisk {
                path: path.into(),
                format: match format {
                    vmd_disk::Format::Qcow2 => DiskFormat::Qcow2,
                    _ => DiskFormat::Raw,
                },
                bases: 0,
            },
            files: vec![file.into()],
        }];
    } else {
        cfg.disks = vec![vmd_disk::open(path, Some(format), true).map_err(|e| e.to_string())?];
    }
    let machine = Machine::new(vmm, cfg).map_err(|e| format!("Machine::new: {e}"))?;
    let control = machine.control();
    let runner = std::thread::spawn(move || machine.run());
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline && !runner.is_finished() {
        let t = console.text();
        if t.lines().any(|l| l.trim_end_matches('\r') == "done") || t.contains("FATAL") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    control.stop();
    let outcome = runner.join().map_err(|_| "VM thread panicked")?;
    let text = console.text();
    outcome.map_err(|e| format!("VM failed: {e}; console:\n{text}"))?;
    Ok(text)
}

fn run_qemu(image: &Path, format: &str) -> Result<String, String> {
    Qemu::start(&qemu_devices(image, format, None))?.wait_line("done", Duration::from_secs(300))
}

/// A fresh copy of `src` for one run (the write benchmark changes it).
fn fresh(src: &Path, tag: &str) -> Result<TempFile, String> {
    let t = TempFile::new(tag);
    let ok = Command::new("cp")
        .arg("--sparse=always")
        .arg(src)
        .arg(&t.0)
        .status()
        .map_err(|e| format!("cp: {e}"))?
        .success();
    if !ok {
        return Err(format!("cp {} failed", src.display()));
    }
    Ok(t)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        // Not run (BENCH_WHO).
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn bench() -> Result<(), String> {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let raw = TempFile::new("bench-io-raw");
    write_boot_disk(&raw.0, SCRIPT, DISK)?;
    let qcow2 = TempFile::new("bench-io-qcow2");
    testguest_support::qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.0.to_str().unwrap(),
        qcow2.0.to_str().unwrap(),
    ])?;
    // BENCH_FORMATS (raw,qcow2) and BENCH_WHO (ours,inprocess,qemu)
    // narrow a run down while profiling one case.
    let wanted = |var: &str, what: &str| {
        std::env::var(var)
            .map(|v| v.split(',').any(|w| w == what))
            .unwrap_or(true)
    };
    let who_names = ["ours", "spin", "inprocess", "qemu"];
    for (name, base, format) in [
        ("raw", &raw, vmd_disk::Format::Raw),
        ("qcow2", &qcow2, vmd_disk::Format::Qcow2),
    ] {
        if !wanted("BENCH_FORMATS", name) {
            continue;
        }
        // [device process, the same spinning on an empty queue, in-process, QEMU]
        // × figure.
        let mut got: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); FIGURES.len()]; 4];
        for round in 0..rounds {
            // Rotate who goes first so drift on a shared host is split.
            for i in 0..4 {
                let who = (round + i) % 4;
                if !wanted("BENCH_WHO", who_names[who]) {
                    continue;
                }
                let img = fresh(&base.0, &format!("bench-io-run-{name}"))?;
                // The device process reads VMD_POLL_US.
                match who {
                    1 => std::env::set_var("VMD_POLL_US", "50"),
                    _ => std::env::remove_var("VMD_POLL_US"),
                }
                let text = match who {
                    0 | 1 => run_ours(&img.0, format, true)?,
                    2 => run_ours(&img.0, format, false)?,
                    _ => run_qemu(&img.0, name)?,
                };
                for (k, (_, bench, unit)) in FIGURES.iter().enumerate() {
                    got[who][k].push(figure(&text, bench, unit)?);
                }
            }
        }
        println!("# {name} image, {rounds} rounds, medians");
        for (k, (key, _, unit)) in FIGURES.iter().enumerate() {
            let ours = median(got[0][k].clone());
            let spin = median(got[1][k].clone());
            let inproc = median(got[2][k].clone());
            let qemu = median(got[3][k].clone());
            println!("{key}_{unit}_ours={ours:.0}");
            println!("{key}_{unit}_qemu={qemu:.0}");
            println!("{key}_ratio={:.3}", ours / qemu.max(1.0));
            println!("{key}_{unit}_ours_spin={spin:.0}");
            println!("{key}_ratio_spin={:.3}", spin / qemu.max(1.0));
            println!("{key}_{unit}_ours_inprocess={inproc:.0}");
            println!("{key}_ratio_inprocess={:.3}", inproc / qemu.max(1.0));
        }
    }
    Ok(())
}

fn main() {
    let missing = support::missing_vmm()
        .or_else(support::missing_bios)
        .or_else(missing_guest)
        .or_else(missing_qemu);
    if let Some(why) = missing {
        eprintln!("bench-io: cannot run: {why}");
        std::process::exit(1);
    }
    // The device processes drop to vmd's user; _vmd where it exists, as
    // the tests choose it.
    std::env::set_var("VMD_USER", support::daemon::vmd_user());
    if let Err(e) = bench() {
        eprintln!("bench-io: {e}");
        std::process::exit(1);
    }
}
