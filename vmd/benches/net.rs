//! `make bench-net`: the test guest as a two-port repeater between two
//! network namespaces (tests/support/netns.rs), under our VM and, with the
//! same guest, boot disk and namespaces, under QEMU (`-enable-kvm`, tap
//! netdevs without vhost, modern-only virtio-net-pci).  iperf3 TCP from A
//! to B and ping round trips go through the VMM's taps, its virtio-net
//! devices and the guest.  Prints, one `key=value` per line, the median
//! over `BENCH_ROUNDS` rounds (default 5) of each run's iperf3 rate, the
//! median of every ping round trip of every round, and the ratios
//! ours/QEMU.  Each run boots the VM afresh; who goes first rotates.
//!
//! Round trips on a busy shared host are late by whole scheduler slices
//! when the VMM's threads sleep between pings (a few ms instead of a few
//! hundred µs): the pooled median keeps a minority of such rounds out of
//! the figure, where a median of per-round medians would not.
//!
//! Needs root, /dev/kvm, qemu-system-x86, iproute2, iperf3, iputils-ping
//! and the test guest (`make testguest`); it says which is missing and
//! exits 1.  Where our VM cannot run (no SeaBIOS fetched), its figures
//! are printed as `skipped` with the reason.  Ours is vmd's VM process
//! with vioblk and each vionet in its device process, as the daemon runs
//! them.
#[path = "../tests/support/netguest.rs"]
mod netguest;
#[path = "../tests/support/netns.rs"]
mod netns;
#[path = "../tests/support/mod.rs"]
mod support;
#[path = "../tests/support/testguest.rs"]
mod testguest_support;

use netguest::Vmm;
use netns::{median, NetPair};

/// Pings per run, their interval, iperf3's seconds per run.
const PINGS: u32 = 100;
const PING_INTERVAL_MS: u32 = 5;
const IPERF_SECONDS: u32 = 3;

/// One run: (iperf3 Gbit/s, every ping round trip in µs).
fn one_run(vmm: Vmm) -> Result<(f64, Vec<f64>), String> {
    let pair = NetPair::new(&format!("b{}", &vmm.name()[..1]))?;
    let ((gbps, rtts, lost), text) = netguest::run(vmm, netguest::Nic0::Tap, &pair, |p| {
        let (rtts, lost) = p.ping(PINGS, PING_INTERVAL_MS)?;
        let gbps = p.iperf3(IPERF_SECONDS)?;
        Ok((gbps, rtts, lost))
    })?;
    if lost * 10 > PINGS {
        return Err(format!(
            "{}: {lost} of {PINGS} pings lost; console:\n{text}",
            vmm.name()
        ));
    }
    Ok((gbps, rtts))
}

fn bench() -> Result<(), String> {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let ours_missing = netguest::missing_ours();
    let mut vmms = vec![Vmm::Qemu];
    if ours_missing.is_none() {
        vmms.push(Vmm::Ours);
    }
    // [vmm] -> (rates, round trips)
    let mut got: Vec<(Vec<f64>, Vec<f64>)> = vec![Default::default(); vmms.len()];
    for round in 0..rounds {
        // Rotate who goes first so drift on a shared host is split.
        for i in 0..vmms.len() {
            let k = (round + i) % vmms.len();
            let (gbps, rtts) = one_run(vmms[k])?;
            eprintln!(
                "bench-net: round {round} {}: {gbps:.3} Gbit/s, ping median {:.0} us",
                vmms[k].name(),
                median(rtts.clone())
            );
            got[k].0.push(gbps);
            got[k].1.extend(rtts);
        }
    }
    let figures = |vmm: Vmm| {
        vmms.iter()
            .position(|v| *v == vmm)
            .map(|k| (median(got[k].0.clone()), median(got[k].1.clone())))
    };
    let (tcp_qemu, rr_qemu) = figures(Vmm::Qemu).ok_or("no QEMU figures")?;
    println!(
        "# {rounds} rounds; iperf3 TCP {IPERF_SECONDS} s a round, median of rounds; \
         {PINGS} pings a round, median of all"
    );
    match figures(Vmm::Ours) {
        Some((tcp_ours, rr_ours)) => {
            println!("net_tcp_gbps_ours={tcp_ours:.3}");
            println!("net_tcp_gbps_qemu={tcp_qemu:.3}");
            println!("net_tcp_ratio={:.3}", tcp_ours / tcp_qemu);
            println!("net_rr_us_ours={rr_ours:.0}");
            println!("net_rr_us_qemu={rr_qemu:.0}");
            println!("net_rr_ratio={:.3}", rr_ours / rr_qemu);
        }
        None => {
            let why = ours_missing.unwrap_or_default();
            println!("# ours skipped: {why}");
            println!("net_tcp_gbps_ours=skipped");
            println!("net_tcp_gbps_qemu={tcp_qemu:.3}");
            println!("net_tcp_ratio=skipped");
            println!("net_rr_us_ours=skipped");
            println!("net_rr_us_qemu={rr_qemu:.0}");
            println!("net_rr_ratio=skipped");
        }
    }
    Ok(())
}

fn main() {
    let missing = support::missing_vmm()
        .or_else(testguest_support::missing_guest)
        .or_else(testguest_support::missing_qemu)
        .or_else(netns::missing_net);
    if let Some(why) = missing {
        eprintln!("bench-net: cannot run: {why}");
        std::process::exit(1);
    }
    std::env::set_var("VMD_USER", support::daemon::vmd_user());
    if let Err(e) = bench() {
        eprintln!("bench-net: {e}");
        std::process::exit(1);
    }
}
