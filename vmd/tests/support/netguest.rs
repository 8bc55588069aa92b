//! The test guest as a repeater between the two namespaces of a
//! [`NetPair`], under QEMU or under our VM: boot, wait until it forwards,
//! run the caller's traffic, stop the repeater (a byte on COM1), and hand
//! back the transcript with the repeater's counters.  The test (tests/net.rs)
//! and the benchmark (benches/net.rs) share it; each includes
//! `support/netns.rs` as `netns` and `support/testguest.rs` as
//! `testguest_support`.
#![allow(dead_code)]
use crate::netns::{self, NetPair};
use crate::testguest_support::{write_boot_disk, Qemu, TempFile};
use std::time::Duration;

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
pub fn missing_vionet() -> Option<String> {
    Some("no vionet yet".into())
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
        (Vmm::Ours, Nic0::Local) => Err(missing_local().unwrap_or_default()),
        (Vmm::Ours, Nic0::Tap) => Err(missing_vionet().unwrap_or_default()),
    }
}

/// Why our VM cannot be the DHCP server on NIC 0, if it cannot.
pub fn missing_local() -> Option<String> {
    Some("no local interface DHCP in vionet yet".into())
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
