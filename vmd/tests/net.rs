//! The test guest as a two-port repeater between two network namespaces
//! (support/netns.rs, support/netguest.rs): `ping` and `iperf3` from
//! namespace A to namespace B reach B only through the VMM's taps, its
//! virtio-net devices and the guest's repeater, whose counters (on COM1
//! when it stops) show the frames went through it.  Under QEMU (tap
//! netdevs, modern-only virtio-net-pci) and under our VM.
//!
//! Needs root, /dev/kvm, the guest (`make testguest`), iproute2, iperf3,
//! iputils-ping and, for QEMU, qemu-system-x86; each test is reported as
//! ignored with the reason where something is missing.
#[path = "support/netguest.rs"]
mod netguest;
#[path = "support/netns.rs"]
mod netns;
mod support;
#[path = "support/testguest.rs"]
mod testguest_support;

use libtest_mimic::{Arguments, Failed, Trial};
use netguest::{Nic0, Vmm};
use netns::{Lease, NetPair, MACS};
use testguest_support::*;

const PINGS: u32 = 20;

/// What the traffic showed.
struct Traffic {
    rtts_us: Vec<f64>,
    lost: u32,
    gbps: f64,
}

/// Once the guest forwards: pings (every one must come back) and a short
/// iperf3.
fn traffic(pair: &NetPair) -> Result<Traffic, String> {
    let (rtts_us, lost) = pair.ping(PINGS, 10)?;
    let gbps = pair.iperf3(2)?;
    Ok(Traffic {
        rtts_us,
        lost,
        gbps,
    })
}

/// The repeater under `vmm`: what the guest printed, checked against what
/// the test sent.
fn repeater(vmm: Vmm) -> Result<(), Failed> {
    let pair = NetPair::new(&vmm.name()[..1])?;
    let (t, text) = netguest::run(vmm, Nic0::Tap, &pair, traffic)?;
    let want: Vec<String> = [
        format!("net-info: nic 0 mac {} mac-feature 1", MACS[0]),
        format!("net-info: nic 1 mac {} mac-feature 1", MACS[1]),
        "net-info: nics 2".into(),
        "net-repeat: ready".into(),
        "net-repeat: ok".into(),
        "done".into(),
    ]
    .into();
    // Our console has SeaBIOS's lines too; QEMU's has none.
    let guest = text
        .find("testguest: boot=")
        .map_or(text.as_str(), |at| &text[at..]);
    let got = results(guest);
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
        let (frames, bad) = netguest::counters(&text, from)?;
        if frames < PINGS as u64 || bad != 0 {
            return Err(format!(
                "nic {from}: {frames} frames forwarded, {bad} bad; console:\n{text}"
            )
            .into());
        }
    }
    eprintln!(
        "net {}: ping median {:.0} us, iperf3 {:.3} Gbit/s",
        vmm.name(),
        netns::median(t.rtts_us.clone()),
        t.gbps
    );
    Ok(())
}

/// busybox's udhcpc in B gets a lease, through the guest, from the DHCP
/// server the VMM runs on NIC 0's network.
fn dhcp(vmm: Vmm) -> Result<(), Failed> {
    let pair = NetPair::new(&format!("d{}", &vmm.name()[..1]))?;
    let (lease, text) = netguest::run(vmm, Nic0::Local, &pair, |p| p.udhcpc(10))?;
    let want = match vmm {
        // QEMU's user network: its documented defaults.
        Vmm::Qemu => Lease {
            ip: "10.0.2.15".into(),
            subnet: "255.255.255.0".into(),
            router: "10.0.2.2".into(),
            dns: "10.0.2.3".into(),
            lease: "86400".into(),
            server: "10.0.2.2".into(),
        },
        // vmd's: the /31 of the local prefix for VM 1's first NIC, the
        // host side as router, DNS server and server id, lease for ever.
        Vmm::Ours => {
            let l = netguest::ours_local_lease()?;
            Lease {
                ip: l.guest_addr.to_string(),
                subnet: l.netmask().to_string(),
                router: l.host_addr.to_string(),
                dns: l.host_addr.to_string(),
                lease: vmd::net::dhcp::LEASE_TIME.to_string(),
                server: l.host_addr.to_string(),
            }
        }
    };
    if lease != want {
        return Err(format!("lease {lease:?}, want {want:?}; console:\n{text}").into());
    }
    // The DHCP exchange went through the repeater both ways.
    for from in 0..2 {
        let (frames, bad) = netguest::counters(&text, from)?;
        if frames < 2 || bad != 0 {
            return Err(format!(
                "nic {from}: {frames} frames forwarded, {bad} bad; console:\n{text}"
            )
            .into());
        }
    }
    Ok(())
}

fn main() {
    let mut args = Arguments::from_args();
    // Each test's guest polls, a host CPU's worth: one at a time unless
    // asked otherwise, so that they do not skew each other's figures.
    args.test_threads.get_or_insert(1);
    // The device processes drop privileges to vmd's user.
    std::env::set_var("VMD_USER", support::daemon::vmd_user());
    let base = support::missing_vmm()
        .or_else(missing_guest)
        .or_else(netns::missing_net);
    let tests = vec![
        (
            Trial::test("qemu_repeater_ping_iperf3", || repeater(Vmm::Qemu)),
            base.clone().or_else(missing_qemu),
        ),
        (
            Trial::test("qemu_repeater_dhcp_lease", || dhcp(Vmm::Qemu)),
            base.clone().or_else(missing_qemu),
        ),
        (
            Trial::test("vmd_repeater_ping_iperf3", || repeater(Vmm::Ours)),
            base.clone().or_else(netguest::missing_ours),
        ),
        (
            Trial::test("vmd_repeater_dhcp_lease", || dhcp(Vmm::Ours)),
            base.or_else(netguest::missing_ours),
        ),
    ];
    let tests = tests
        .into_iter()
        .map(|(t, why)| support::skip_if(t, why))
        .collect();
    libtest_mimic::run(&args, tests).exit();
}
