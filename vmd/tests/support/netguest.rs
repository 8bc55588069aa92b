//! The test guest as a repeater between the two namespaces of a
//! [`NetPair`], under QEMU or under our VM: boot, wait until it forwards,
//! run the caller's traffic, stop the repeater (a byte on COM1), and hand
//! back the transcript with the repeater's counters.  The test (tests/net.rs)
//! and the benchmark (benches/net.rs) share it; each includes
//! `support/netns.rs` as `netns` and `support/testguest.rs` as
//! `testguest_support`.
#![allow(dead_code)]
use crate::netns::{self, NetPair, MACS};
use crate::support::{self, Console};
use crate::testguest_support::{write_boot_disk, Qemu, TempFile};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmd::vm::devproc::{DeviceProcesses, DiskFiles, NicFiles, NicLocal, NicSetup};
use vmd::vm::machine::{BootImage, Machine, VmConfig};
use vmd_proto::config::DiskFormat;
use vmd_proto::msg::VmDisk;

/// The repeater stops on a byte on COM1; 300 s is the backstop.
pub const SCRIPT: &str = "net-info\nnet-repeat 300\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vmm {
    Qemu,
    Ours,
}

impl Vmm {
    pub fn name(self) -> &'static str {
        match self {
            Vmm::Qemu => "qemu",
            Vmm::Ours => "ours",
        }
    }
}

/// What NIC 0 is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nic0 {
    /// Tap 0, moved to namespace A with an address (tap 1 to B with one).
    Tap,
    /// The VMM's own network with its DHCP server: QEMU's user network,
    /// vmd's `local interface`.  Tap 1 goes to B with no address.
    Local,
}

/// Why our VM cannot run the repeater, if it cannot.
pub fn missing_ours() -> Option<String> {
    support::missing_bios()
}

/// Boots the repeater under `vmm` with its NICs on `pair`'s taps (or
/// NIC 0 on the VMM's own network), runs `traffic` once A reaches B
/// through it (or once tap 1 is in B), stops it; `traffic`'s result and
/// the guest's transcript (an error carries the transcript too).
pub fn run<T>(
    vmm: Vmm,
    nic0: Nic0,
    pair: &NetPair,
    traffic: impl FnOnce(&NetPair) -> Result<T, String>,
) -> Result<(T, String), String> {
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let disk = TempFile::new(&format!("net-{}-{n}", vmm.name()));
    write_boot_disk(&disk.0, SCRIPT, 4 << 20)?;
    let traffic = |p: &NetPair| match nic0 {
        Nic0::Tap => {
            p.attach(Duration::from_secs(10))?;
            p.wait_reachable(Duration::from_secs(15))?;
            traffic(p)
        }
        Nic0::Local => {
            p.attach_b_only(Duration::from_secs(10))?;
            traffic(p)
        }
    };
    match (vmm, nic0) {
        (Vmm::Qemu, _) => run_qemu(&disk, nic0, pair, traffic),
        (Vmm::Ours, _) => run_ours(&disk, nic0, pair, traffic),
    }
}

fn run_qemu<T>(
    disk: &TempFile,
    nic0: Nic0,
    pair: &NetPair,
    traffic: impl FnOnce(&NetPair) -> Result<T, String>,
) -> Result<(T, String), String> {
    let mut args = vec![
        "-drive".to_string(),
        format!("file={},if=none,id=d0,format=raw", disk.0.display()),
        "-device".into(),
        "virtio-blk-pci,drive=d0,disable-legacy=on".into(),
    ];
    args.extend(netns::qemu_nics(nic0 == Nic0::Local));
    let mut qemu = Qemu::start_with(pair.vm.command("qemu-system-x86_64"), &args)?;
    qemu.wait_for("net-repeat: ready", Duration::from_secs(60))?;
    let t = traffic(pair);
    let sent = qemu.send(b"q");
    let stopped = sent.and_then(|()| qemu.wait_for("done", Duration::from_secs(10)));
    let text = qemu.stop();
    let t = t.map_err(|e| format!("{e}; console:\n{text}"))?;
    stopped?;
    Ok((t, text))
}

/// (frames, bad) the repeater counted from NIC `from` to the other.
pub fn counters(text: &str, from: u32) -> Result<(u64, u64), String> {
    let prefix = format!("timing: net-repeat nic {from} to nic {} ", 1 - from);
    let line = text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .ok_or_else(|| format!("no counters for nic {from}; console:\n{text}"))?;
    let w: Vec<&str> = line.split_whitespace().collect();
    let field = |name: &str| -> Result<u64, String> {
        w.iter()
            .position(|x| *x == name)
            .and_then(|i| w.get(i + 1))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no {name} in {line:?}"))
    };
    Ok((field("frames")?, field("bad")?))
}

/// The taps [`netns::TAPS`], opened by vmd's own code inside namespace V (on a
/// thread of their own, which alone enters it).
#[cfg(target_os = "linux")]
fn open_taps(pair: &NetPair) -> Result<Vec<vmd::sys::Tap>, String> {
    let path = pair.vm.path();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("setns {}: {e}", path.display()))?;
        netns::TAPS
            .iter()
            .map(|t| vmd::sys::open_tap(t).map_err(|e| e.to_string()))
            .collect()
    })
    .join()
    .map_err(|_| "tap thread panicked".to_string())?
}

#[cfg(not(target_os = "linux"))]
fn open_taps(_pair: &NetPair) -> Result<Vec<vmd::sys::Tap>, String> {
    Err("needs Linux network namespaces".into())
}

/// Our VM's id as the daemon would number it (the local interface's
/// addresses depend on it).
pub const OURS_VM_ID: u32 = 1;
pub const OURS_VM_NAME: &str = "net";

/// NIC 0 as a `local interface` of VM [`OURS_VM_ID`] under the default
/// `local prefix`.
fn local_nic0() -> NicLocal {
    NicLocal {
        vm_id: OURS_VM_ID,
        vm_name: OURS_VM_NAME.into(),
        global: vmd_proto::config::GlobalConfig::default(),
        pxeboot: false,
    }
}

/// What vmd's DHCP server leases to NIC 0 as a local interface.
pub fn ours_local_lease() -> Result<vmd::net::LocalLease, String> {
    local_nic0()
        .lease(0, mac(MACS[0]))
        .map_err(|e| e.to_string())
}

pub fn mac(text: &str) -> [u8; 6] {
    let mut m = [0; 6];
    for (b, x) in m.iter_mut().zip(text.split(':')) {
        *b = u8::from_str_radix(x, 16).unwrap_or(0);
    }
    m
}

/// Our VM as the daemon runs it: SeaBIOS boots the guest from the disk
/// (a vioblk device process), each NIC in a vionet device process on its
/// tap; COM1 input through a pipe.
fn run_ours<T>(
    disk: &TempFile,
    nic0: Nic0,
    pair: &NetPair,
    traffic: impl FnOnce(&NetPair) -> Result<T, String>,
) -> Result<(T, String), String> {
    let taps = open_taps(pair)?;
    let bios = std::fs::read(support::bios_path()).map_err(|e| e.to_string())?;
    let path = disk.0.to_str().ok_or("disk path not UTF-8")?;
    let file = std::fs::File::options()
        .read(true)
        .write(true)
        .open(&disk.0)
        .map_err(|e| format!("{path}: {e}"))?;
    let (com_in, com_send) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    let console = Console::default();
    let vmm = Arc::new(vmm_sys::Vmm::open().map_err(|e| e.to_string())?);
    let cfg = VmConfig {
        console_in: Some(com_in),
        disk_files: vec![DiskFiles {
            disk: VmDisk {
                path: path.into(),
                format: DiskFormat::Raw,
                bases: 0,
            },
            files: vec![file.into()],
        }],
        devices: Some(DeviceProcesses {
            exe: env!("CARGO_BIN_EXE_vmd").into(),
            vmm_fd: vmm_sys::Vmm::open_device().map_err(|e| e.to_string())?,
            flags: Vec::new(),
            one_way_kicks: true,
        }),
        nics: taps
            .into_iter()
            .enumerate()
            .map(|(i, t)| NicFiles {
                nic: NicSetup {
                    index: i as u32,
                    ifname: t.name,
                    mac: mac(MACS[i]),
                    locked: false,
                    local: (i == 0 && nic0 == Nic0::Local).then(local_nic0),
                },
                tap: t.file.into(),
                in_process: false,
            })
            .collect(),
        ..VmConfig::new(
            OURS_VM_NAME,
            128 << 20,
            BootImage::Bios(bios),
            Box::new(console.clone()),
        )
    };
    let machine = Machine::new(vmm, cfg).map_err(|e| format!("Machine::new: {e}"))?;
    let control = machine.control();
    let runner = std::thread::spawn(move || machine.run());
    let wait = |line: &str, timeout: Duration| -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = console.text();
            if text.lines().any(|l| l.trim_end_matches('\r') == line) {
                return Ok(());
            }
            if text.contains("FATAL") || runner.is_finished() || Instant::now() > deadline {
                return Err(format!(
                    "no line {line:?} from the guest within {timeout:?}; console:\n{text}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let t = wait("net-repeat: ready", Duration::from_secs(60)).and_then(|()| traffic(pair));
    let stopped = nix::unistd::write(&com_send, b"q")
        .map_err(|e| format!("writing to COM1: {e}"))
        .and_then(|_| wait("done", Duration::from_secs(10)));
    control.stop();
    let outcome = runner.join().map_err(|_| "VM thread panicked")?;
    let text = console.text();
    let t = t.map_err(|e| format!("{e}; console:\n{text}"))?;
    stopped?;
    outcome.map_err(|e| format!("VM failed: {e}; console:\n{text}"))?;
    Ok((t, text))
}
