//! Two VMs on a vm.conf `switch`, through the real daemon: vmd runs in a
//! network namespace V of its own (so its bridge and taps touch nothing of
//! the host), each VM boots the repeater guest with SeaBIOS from a disk
//! and has two NICs, NIC 0 on the switch and NIC 1 on a tap the test moves
//! into namespace A (VM "va") or B (VM "vb"):
//!
//! ```text
//! A: tap11 <-> va repeater <-> tap10 -- bridge0 -- tap20 <-> vb repeater <-> tap21 :B
//! ```
//!
//! A frame from A reaches B only through both guests and the bridge, so
//! `ping` and a second of `iperf3` between A and B show the VMs reach
//! each other on the switch.  va's NIC 1 has `locked lladdr`; B's tap
//! carries that NIC's MAC (the repeaters are transparent, so to A the
//! locked NIC *is* B), and raw frames (AF_PACKET, from python3) with the
//! right and with spoofed MACs check vionet's rule both ways: the guest
//! receives only frames to its MAC, and sends only frames from it.
//! `vmctl status` lists both VMs; priv gave the taps vmd's descriptions,
//! the NIC 0s their `group` (from a group table for V alone, in
//! /etc/netns/<V>/) and the switch its members; `vmctl stop` removes the
//! VMs' taps (the switch loses its members) but leaves the switch.
//!
//! Needs root, /dev/kvm, SeaBIOS, the guest (`make testguest`), iproute2,
//! iputils-ping, iperf3 and python3; reported as ignored with the reason
//! otherwise.
#[path = "support/netns.rs"]
mod netns;
mod support;
#[path = "support/testguest.rs"]
mod testguest_support;

use libtest_mimic::{Arguments, Failed, Trial};
use netns::Netns;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The MACs vm.conf gives the VMs' NICs: (va nic 0, va nic 1, vb nic 0,
/// vb nic 1).  va's NIC 1 is locked.
const VA0: &str = "52:54:00:5e:0a:00";
const VA1: &str = "52:54:00:5e:0a:01";
const VB0: &str = "52:54:00:5e:0b:00";
const VB1: &str = "52:54:00:5e:0b:01";
/// A's tap, and a MAC nobody has (the spoofer's).
const MAC_A: &str = "52:54:00:5e:aa:01";
const SPOOF: &str = "52:54:00:de:ad:01";
const ADDR_A: &str = "10.78.0.1";
const ADDR_B: &str = "10.78.0.2";
/// The guest repeats until a byte on COM1 or for 300 s; vmctl stop -f
/// ends it here.
const SCRIPT: &str = "net-info\nnet-repeat 300\n";

fn in_path(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}

fn missing() -> Option<String> {
    support::missing_vmm()
        .or_else(support::missing_bios)
        .or_else(testguest_support::missing_guest)
        .or_else(netns::missing_net)
        .or_else(|| (!in_path("python3")).then(|| "needs python3 (raw frames)".into()))
}

/// Sends frames with EtherType 0x88b5 (local experimental) on an
/// interface: argv ifname, then dst src tag for each frame, each sent
/// three times in order.
const SEND: &str = r#"
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
mac = lambda m: bytes.fromhex(m.replace(":", ""))
a = sys.argv[2:]
for i in range(0, len(a), 3):
    for _ in range(3):
        s.send(mac(a[i]) + mac(a[i + 1]) + b"\x88\xb5" + a[i + 2].encode().ljust(46, b"\0"))
"#;

/// Prints "ready", then every distinct tag of a 0x88b5 frame seen on an
/// interface (argv[1]) before one tagged "end" (which the caller sends
/// last, on a path that passes, so that frames sent before it have had
/// their chance), or within argv[2] seconds.
const SNIFF: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88b5))
s.bind((sys.argv[1], 0))
s.settimeout(0.1)
print("ready", flush=True)
end = time.time() + float(sys.argv[2])
seen = set()
while time.time() < end:
    try:
        f = s.recv(2048)
    except socket.timeout:
        continue
    tag = f[14:].rstrip(b"\0").decode(errors="replace")
    if tag == "end":
        break
    seen.add(tag)
else:
    print("no end frame")
for t in sorted(seen):
    print(t)
"#;

/// The tags of the frames `tx_ns` sends on `tx_if` (dst, src per tag)
/// that `rx_ns` sees on `rx_if`.
fn frames_through(
    tx_ns: &Netns,
    tx_if: &str,
    rx_ns: &Netns,
    rx_if: &str,
    frames: &[(&str, &str, &str)],
) -> Result<Vec<String>, String> {
    let mut sniff = rx_ns
        .command("python3")
        .args(["-c", SNIFF, rx_if, "15"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("python3: {e}"))?;
    let mut out = BufReader::new(sniff.stdout.take().ok_or("no sniffer stdout")?);
    let mut line = String::new();
    out.read_line(&mut line).map_err(|e| e.to_string())?;
    if line.trim() != "ready" {
        let _ = sniff.kill();
        let _ = sniff.wait();
        return Err(format!("sniffer on {rx_if}: {line:?}"));
    }
    let mut send = tx_ns.command("python3");
    send.args(["-c", SEND, tx_if]);
    for (dst, src, tag) in frames {
        send.args([dst, src, tag]);
    }
    let st = send
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("python3: {e}"))?;
    if !st.success() {
        let _ = sniff.kill();
        let _ = sniff.wait();
        return Err(format!("sending on {tx_if}: {st}"));
    }
    let mut seen = Vec::new();
    for l in out.lines() {
        seen.push(l.map_err(|e| e.to_string())?);
    }
    sniff.wait().map_err(|e| e.to_string())?;
    Ok(seen)
}

/// iperf3 TCP from A to B for a second: the receiver's Mbit/s, which must
/// be more than nothing.
fn iperf3(a: &Netns, b: &Netns) -> Result<f64, String> {
    let mbits = netns::iperf3(a, b, ADDR_B, 5202, 1)? * 1000.0;
    if mbits > 0.0 {
        Ok(mbits)
    } else {
        Err(format!("iperf3 A -> B moved nothing ({mbits} Mbit/s)"))
    }
}

/// The group vm.conf puts the NIC 0s in, and its number in the table
/// [`GroupTable`] gives vmd.
const GROUP: &str = "vmsw";
const GROUP_NUMBER: u32 = 42;

/// `/etc/netns/<V>/iproute2/group`, naming [`GROUP`]: `ip netns exec`
/// mounts it over `/etc/iproute2/group` for vmd in V alone (the host's
/// table is left as it is).  Removed on drop.
struct GroupTable(std::path::PathBuf);

impl GroupTable {
    fn new(ns: &Netns) -> Result<GroupTable, Failed> {
        let dir = Path::new("/etc/netns").join(&ns.name);
        let t = GroupTable(dir.clone());
        std::fs::create_dir_all(dir.join("iproute2"))?;
        std::fs::write(
            dir.join("iproute2/group"),
            format!("0\tdefault\n{GROUP_NUMBER}\t{GROUP}\n"),
        )?;
        Ok(t)
    }
}

impl Drop for GroupTable {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        // /etc/netns itself, if we made it and nothing else is in it.
        let _ = std::fs::remove_dir("/etc/netns");
    }
}

/// `vmctl args...` against the test's vmd: (exit status, stdout+stderr).
fn vmctl(vmctl: &Path, socket: &Path, args: &[&str]) -> Result<(bool, String), Failed> {
    let out = Command::new(vmctl)
        .args(args)
        .env("VMD_SOCKET", socket)
        .stdin(Stdio::null())
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("# vmctl {}\n{text}", args.join(" "));
    Ok((out.status.success(), text))
}

/// `ip -n <ns> -o link show <ifname>`, or None if it is not there.
fn link(ns: &Netns, ifname: &str) -> Option<String> {
    ns.ip(&["-d", "-o", "link", "show", ifname]).ok()
}

fn wait_until(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Result<bool, String>,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if f()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{what}: not within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// vmd in namespace V, as `vmd -d -v -f cfg` with its socket override and
/// privileges dropped.
fn start_vmd(v: &Netns, cfg: &Path, socket: &Path, log: &Path) -> Result<Child, Failed> {
    Ok(v.command(env!("CARGO_BIN_EXE_vmd"))
        .args(["-d", "-v", "-f"])
        .arg(cfg)
        .env("VMD_SOCKET", socket)
        .env("VMD_USER", support::daemon::vmd_user())
        .env_remove("VMD_NO_PRIVDROP")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()?)
}

fn two_vms_on_a_switch() -> Result<(), Failed> {
    let vmctl_bin = support::vmctl_binary()?;
    let dir = support::daemon::temp_dir("vmd-switch", "vms")?;
    let (v, a, b) = (Netns::new("swv")?, Netns::new("swa")?, Netns::new("swb")?);
    let _groups = GroupTable::new(&v)?;
    let bios = support::bios_path();
    let mut vms = String::from("switch \"sw\" {\n\tinterface bridge0\n}\n");
    for (name, n, m0, m1, lock) in [("va", 1, VA0, VA1, "locked "), ("vb", 2, VB0, VB1, "")] {
        let disk = dir.join(format!("{name}.img"));
        testguest_support::write_boot_disk(&disk, SCRIPT, 4 << 20)?;
        vms += &format!(
            "vm \"{name}\" {{\n\tmemory 32M\n\tboot \"{}\"\n\tdisk \"{}\"\n\
             \tinterface tap{n}0 {{ switch \"sw\" lladdr {m0} group \"{GROUP}\" }}\n\
             \tinterface tap{n}1 {{ {lock}lladdr {m1} }}\n}}\n",
            bios.display(),
            disk.display()
        );
    }
    let cfg = dir.join("vm.conf");
    std::fs::write(&cfg, &vms)?;
    let socket = dir.join("vmd.sock");
    let log = dir.join("stderr");
    let mut vmd = start_vmd(&v, &cfg, &socket, &log)?;
    let r = scenario(&vmctl_bin, &socket, &log, &v, &a, &b);
    let stopped = support::daemon::stop(&mut vmd);
    support::daemon::end(&mut vmd);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    r.map_err(|e| {
        format!(
            "{}\nvm.conf:\n{vms}\nvmd log:\n{text}",
            e.message().unwrap_or("failed")
        )
    })?;
    stopped?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn scenario(
    vmctl_bin: &Path,
    socket: &Path,
    log: &Path,
    v: &Netns,
    a: &Netns,
    b: &Netns,
) -> Result<(), Failed> {
    // priv has described all four taps, put NIC 0s on the switch and read
    // each tap's MAC (it names the tap in V: only then may we move them).
    let taps = ["tap10", "tap11", "tap20", "tap21"];
    wait_until("taps configured", Duration::from_secs(30), || {
        let all = taps
            .iter()
            .all(|t| link(v, t).is_some_and(|l| l.contains("alias ") && l.contains(",UP")));
        let log = std::fs::read_to_string(log).unwrap_or_default();
        Ok(all && log.matches("priv: IMSG_VMDOP_PRIV_GET_ADDR done").count() >= 4)
    })?;
    for (t, vm, idx) in [
        ("tap10", "va", 0),
        ("tap11", "va", 1),
        ("tap20", "vb", 0),
        ("tap21", "vb", 1),
    ] {
        let l = link(v, t).ok_or(format!("{t} vanished"))?;
        let id = if vm == "va" { 1 } else { 2 };
        let want = format!("alias vm{id}-if{idx}-{vm}");
        if !l.contains(&want) {
            return Err(format!("{t}: no {want:?} in {l}").into());
        }
        // NIC 0s are in group GROUP: vmd took its number from V's table,
        // and `ip -n V` (which mounts that table too) names it back.
        let group = format!(" group {GROUP} ");
        if l.contains(&group) != (idx == 0) {
            return Err(format!(
                "{t}: group wrong (want{} {group:?}): {l}",
                if idx == 0 { "" } else { " no" }
            )
            .into());
        }
        // NIC 0 on bridge0, NIC 1 on nothing.
        if l.contains("master bridge0") != (idx == 0) {
            return Err(format!("{t}: switch membership wrong: {l}").into());
        }
    }
    let br = link(v, "bridge0").ok_or("no bridge0")?;
    if !br.contains("alias switch1-sw") || !br.contains("bridge") {
        return Err(format!("bridge0: {br}").into());
    }
    // vmctl status: both VMs running.
    let (ok, status) = vmctl(vmctl_bin, socket, &["status"])?;
    for vm in ["va", "vb"] {
        if !ok
            || !status
                .lines()
                .any(|l| l.split_whitespace().last() == Some(vm) && l.contains("running"))
        {
            return Err(format!("vmctl status does not show {vm} running:\n{status}").into());
        }
    }
    // NIC 1s to A and B; B's tap takes va's locked NIC 1's MAC.
    for (ns, t, mac, addr) in [(a, "tap11", MAC_A, ADDR_A), (b, "tap21", VA1, ADDR_B)] {
        v.ip(&["link", "set", t, "netns", &ns.name])?;
        ns.ip(&["link", "set", t, "address", mac, "up"])?;
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", t])?;
    }
    // A reaches B: through va, the bridge and vb (the guests repeat once
    // SeaBIOS has booted them).
    wait_until("A reaches B", Duration::from_secs(60), || {
        Ok(a.command("ping")
            .args(["-c", "1", "-W", "1", ADDR_B])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| e.to_string())?
            .success())
    })?;
    let out = a
        .command("ping")
        .args(["-c", "10", "-i", "0.05", "-W", "5", ADDR_B])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // Two polling guests share this host's CPUs with everything else
    // running: one reply in ten may come too late (seen once in a dozen
    // runs on a loaded 2-core host); more is a fault.
    let received = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .and_then(|l| {
            l.split(", ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u32>()
                .ok()
        });
    match received {
        Some(10) => {}
        Some(9) => eprintln!("switch: one ping in ten lost\n{text}"),
        _ => return Err(format!("ping A -> B:\n{text}").into()),
    }
    // A little TCP: iperf3 for a second, A to B.
    let mbits = iperf3(a, b)?;
    eprintln!("switch: iperf3 A -> B through va, bridge0 and vb: {mbits:.1} Mbit/s");
    // locked lladdr, into va: A sends one frame to va's NIC 1 MAC and one
    // to another unicast MAC; only the first passes the lock (and reaches
    // B through the switch).  A broadcast passes too.
    let seen = frames_through(
        a,
        "tap11",
        b,
        "tap21",
        &[
            (VA1, MAC_A, "in-right"),
            (SPOOF, MAC_A, "in-spoof"),
            ("ff:ff:ff:ff:ff:ff", MAC_A, "in-bcast"),
            (VA1, MAC_A, "end"),
        ],
    )?;
    if seen != ["in-bcast", "in-right"] {
        return Err(format!("into the locked NIC, B saw {seen:?}").into());
    }
    // Out of va: B sends from va's NIC 1 MAC and from a spoofed one; vb
    // and the bridge carry both to va, whose locked NIC sends only the
    // first to A.
    let seen = frames_through(
        b,
        "tap21",
        a,
        "tap11",
        &[
            (MAC_A, VA1, "out-right"),
            (MAC_A, SPOOF, "out-spoof"),
            (MAC_A, VA1, "end"),
        ],
    )?;
    if seen != ["out-right"] {
        return Err(format!("out of the locked NIC, A saw {seen:?}").into());
    }
    // vmctl stop: each VM's taps go (wherever they are now), the switch
    // stays.
    for (vm, ns0, t0, ns1, t1) in [
        ("va", v, "tap10", a, "tap11"),
        ("vb", v, "tap20", b, "tap21"),
    ] {
        let (ok, text) = vmctl(vmctl_bin, socket, &["stop", "-f", "-w", vm])?;
        if !ok {
            return Err(format!("vmctl stop -f -w {vm}: {text}").into());
        }
        wait_until(
            &format!("{vm}'s taps removed"),
            Duration::from_secs(10),
            || Ok(link(ns0, t0).is_none() && link(ns1, t1).is_none()),
        )?;
    }
    if link(v, "bridge0").is_none() {
        return Err("bridge0 went with the VMs".into());
    }
    let members = v.ip(&["-o", "link", "show", "master", "bridge0"])?;
    if !members.trim().is_empty() {
        return Err(format!("bridge0 keeps members after the VMs stopped: {members}").into());
    }
    let (_, status) = vmctl(vmctl_bin, socket, &["status"])?;
    if status.lines().any(|l| l.contains("running")) {
        return Err(format!("VMs still running after stop:\n{status}").into());
    }
    Ok(())
}

fn main() {
    let args = Arguments::from_args();
    let t = Trial::test("switch_two_vms_locked_lladdr", two_vms_on_a_switch);
    let t = support::skip_if(t, missing());
    libtest_mimic::run(&args, vec![t]).exit();
}
