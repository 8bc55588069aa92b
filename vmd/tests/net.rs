//! The test guest as a two-port repeater between two network namespaces
//! (support/netns.rs): `ping` and `iperf3` from namespace A to namespace B
//! reach B only through the VMM's taps, its virtio-net devices and the
//! guest's repeater, whose counters (on COM1 when it stops) show the
//! frames went through it.  Under QEMU (tap netdevs, modern-only
//! virtio-net-pci) and under our VM.
//!
//! Needs root, /dev/kvm, the guest (`make testguest`), iproute2, iperf3,
//! iputils-ping and, for QEMU, qemu-system-x86; each test is reported as
//! ignored with the reason where something is missing.
#[path = "support/netns.rs"]
mod netns;
mod support;
#[path = "support/testguest.rs"]
mod testguest_support;

use libtest_mimic::{Arguments, Failed, Trial};
use netns::{NetPair, MACS};
use std::time::Duration;
use testguest_support::*;

const MB: u64 = 1 << 20;
/// The repeater stops on a byte on COM1; 300 s is the backstop.
const SCRIPT: &str = "net-info\nnet-repeat 300\n";
const PINGS: u32 = 20;

/// What one run through a VMM showed.
struct Traffic {
    rtts_us: Vec<f64>,
    lost: u32,
    gbps: f64,
}

/// The traffic the test sends once the guest forwards: ping (every one
/// must come back) and a short iperf3.
fn traffic(pair: &NetPair) -> Result<Traffic, String> {
    pair.attach(Duration::from_secs(10))?;
    pair.wait_reachable(Duration::from_secs(15))?;
    let (rtts_us, lost) = pair.ping(PINGS, 10)?;
    let gbps = pair.iperf3(2)?;
    Ok(Traffic {
        rtts_us,
        lost,
        gbps,
    })
}

/// (frames, bad) the repeater counted from NIC `from` to the other.
fn counters(text: &str, from: u32) -> Result<(u64, u64), String> {
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

/// What the guest printed, checked against what the test sent.
fn check(text: &str, t: &Traffic) -> Result<(), Failed> {
    let want: Vec<String> = [
        format!("net-info: nic 0 mac {} mac-feature 1", MACS[0]),
        format!("net-info: nic 1 mac {} mac-feature 1", MACS[1]),
        "net-info: nics 2".into(),
        "net-repeat: ready".into(),
        "net-repeat: ok".into(),
        "done".into(),
    ]
    .into();
    let got = results(text);
    if got != want {
        return Err(format!("result lines differ\n got: {got:#?}\nwant: {want:#?}\n{text}").into());
    }
    if t.lost != 0 {
        return Err(format!("{} of {PINGS} pings lost; console:\n{text}", t.lost).into());
    }
    if t.gbps <= 0.0 {
        return Err(format!("iperf3 moved nothing; console:\n{text}").into());
    }
    // Every echo request went 0 -> 1 and every reply 1 -> 0 through the
    // guest, besides ARP and iperf3's TCP.
    for from in 0..2 {
        let (frames, bad) = counters(text, from)?;
        if frames < PINGS as u64 || bad != 0 {
            return Err(format!(
                "nic {from}: {frames} frames forwarded, {bad} bad; console:\n{text}"
            )
            .into());
        }
    }
    eprintln!(
        "net: ping median {:.0} us, iperf3 {:.3} Gbit/s",
        netns::median(t.rtts_us.clone()),
        t.gbps
    );
    Ok(())
}

/// QEMU with the guest's two NICs on taps in namespace V.
fn qemu_repeater() -> Result<(), Failed> {
    let pair = NetPair::new("q")?;
    let disk = TempFile::new("net-qemu");
    write_boot_disk(&disk.0, SCRIPT, 4 * MB)?;
    let mut args = vec![
        "-drive".to_string(),
        format!("file={},if=none,id=d0,format=raw", disk.0.display()),
        "-device".into(),
        "virtio-blk-pci,drive=d0,disable-legacy=on".into(),
    ];
    args.extend(netns::qemu_nics());
    let mut qemu = Qemu::start_with(pair.vm.command("qemu-system-x86_64"), &args)?;
    qemu.wait_for("net-repeat: ready", Duration::from_secs(60))?;
    let t = traffic(&pair);
    qemu.send(b"q")?;
    let stopped = qemu.wait_for("done", Duration::from_secs(10));
    let text = qemu.stop();
    let t = t.map_err(|e| format!("{e}; console:\n{text}"))?;
    stopped?;
    check(&text, &t)
}

/// Why our VM cannot run the test yet.
fn missing_vionet() -> Option<String> {
    Some("no vionet yet".into())
}

fn ours_repeater() -> Result<(), Failed> {
    Err("no vionet yet".into())
}

fn main() {
    let args = Arguments::from_args();
    let base = support::missing_vmm()
        .or_else(missing_guest)
        .or_else(netns::missing_net);
    let tests = vec![
        (
            Trial::test("qemu_repeater_ping_iperf3", qemu_repeater),
            base.clone().or_else(missing_qemu),
        ),
        (
            Trial::test("vmd_repeater_ping_iperf3", ours_repeater),
            base.or_else(missing_vionet),
        ),
    ];
    let tests = tests
        .into_iter()
        .map(|(t, why)| match why {
            Some(why) => t.with_ignored_flag(true).with_kind(why),
            None => t,
        })
        .collect();
    libtest_mimic::run(&args, tests).exit();
}
