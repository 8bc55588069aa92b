//! Network namespaces and taps for the network tests: everything in fresh
//! namespaces of our own, removed by `Drop` (also when a test fails), no
//! interface that existed before touched, no traffic off this machine.
//!
//! The layout: the VMM runs in namespace V, where its two taps appear
//! (QEMU creates them by name; our VM gets descriptors opened there); once
//! it has them, [`NetPair::attach`] moves tap 0 into namespace A (address
//! [`ADDR_A`]) and tap 1 into namespace B ([`ADDR_B`]), one /24.  A frame
//! from A reaches B only through the guest's repeater, so `ping` and
//! `iperf3` between A and B measure the VMM's network path.
#![allow(dead_code)]
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Namespace A's address on tap 0, and B's on tap 1.
pub const ADDR_A: &str = "10.77.0.1";
pub const ADDR_B: &str = "10.77.0.2";
/// The taps' names inside the namespaces: vmd's `tapN` rule; the
/// namespaces are fresh, so nothing else has these names there.
pub const TAPS: [&str; 2] = ["tap0", "tap1"];
/// The guest's two MACs, the same under every VMM.
pub const MACS: [&str; 2] = ["52:54:00:7e:57:01", "52:54:00:7e:57:02"];

fn in_path(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}

/// Why not, if namespaces cannot be made here or a tool is missing.
pub fn missing_net() -> Option<String> {
    if !cfg!(target_os = "linux") {
        return Some("needs Linux network namespaces".into());
    }
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (network namespaces and taps)".into());
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("needs /dev/net/tun".into());
    }
    [
        ("ip", "iproute2"),
        ("busybox", "busybox"),
        ("ping", "iputils-ping"),
        ("iperf3", "iperf3"),
    ]
    .into_iter()
    .find(|(p, _)| !in_path(p))
    .map(|(p, pkg)| format!("needs {p} (Debian package {pkg})"))
}

fn run(cmd: &mut Command) -> Result<Output, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out)
}

/// One network namespace, deleted with whatever still runs in it.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// `vmdt-<pid>-<n>-<tag>`: unique on this machine while we run.
    pub fn new(tag: &str) -> Result<Netns, String> {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "vmdt-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n <ns> args...`.
    pub fn ip(&self, args: &[&str]) -> Result<String, String> {
        let out = run(Command::new("ip").args(["-n", &self.name]).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `prog` run inside the namespace (`ip netns exec`, which execs it:
    /// the child's pid is the program's).
    pub fn command(&self, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, prog]);
        c
    }

    /// The namespace's file, for setns(2).
    pub fn path(&self) -> std::path::PathBuf {
        std::path::PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// Processes still in the namespace (ours: nothing else enters it).
    fn pids(&self) -> Vec<i32> {
        Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = self.pids();
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for p in pids {
                let _ = kill(nix::unistd::Pid::from_raw(p), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Taps go with their namespace (the kernel deletes virtual
        // interfaces of a namespace that ends); delete ours first anyway.
        for t in TAPS {
            let _ = Command::new("ip")
                .args(["-n", &self.name, "link", "del", t])
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// What a DHCP server gave udhcpc (as its script saw it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub ip: String,
    pub subnet: String,
    pub router: String,
    pub dns: String,
    pub lease: String,
    pub server: String,
}

/// The three namespaces of one network test.
pub struct NetPair {
    /// A and B are dropped before V (fields drop in order), so the taps
    /// never come back into a namespace that runs the VMM.
    pub a: Netns,
    pub b: Netns,
    pub vm: Netns,
}

impl NetPair {
    pub fn new(tag: &str) -> Result<NetPair, String> {
        Ok(NetPair {
            vm: Netns::new(&format!("{tag}v"))?,
            a: Netns::new(&format!("{tag}a"))?,
            b: Netns::new(&format!("{tag}b"))?,
        })
    }

    /// Waits until the VMM's two taps exist in V, then moves tap 0 to A
    /// and tap 1 to B, with their addresses, up.
    pub fn attach(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while TAPS
            .iter()
            .any(|t| self.vm.ip(&["link", "show", "dev", t]).is_err())
        {
            if Instant::now() > deadline {
                return Err(format!(
                    "the VMM did not create taps {TAPS:?} in {} within {timeout:?}",
                    self.vm.name
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for (tap, (ns, addr)) in TAPS.iter().zip([(&self.a, ADDR_A), (&self.b, ADDR_B)]) {
            self.vm
                .ip(&["link", "set", "dev", tap, "netns", &ns.name])?;
            // No IPv6 chatter (router solicitations, DAD) in the figures.
            let _ = run(ns.command("sysctl").args([
                "-q",
                "-w",
                &format!("net.ipv6.conf.{tap}.disable_ipv6=1"),
            ]));
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", tap])?;
            ns.ip(&["link", "set", "dev", tap, "up"])?;
        }
        Ok(())
    }

    /// Waits until the VMM's tap 1 exists in V, then moves it to B, up,
    /// without an address (a DHCP client configures it); tap 0 stays.
    /// Tap 1 takes the MAC of the guest's NIC 0: through the repeater, a
    /// client in B is the guest as NIC 0's network sees it (vmd's DHCP
    /// server answers only the NIC's own hardware address).
    pub fn attach_b_only(&self, timeout: Duration) -> Result<(), String> {
        let tap = TAPS[1];
        let deadline = Instant::now() + timeout;
        while self.vm.ip(&["link", "show", "dev", tap]).is_err() {
            if Instant::now() > deadline {
                return Err(format!(
                    "the VMM did not create tap {tap} in {} within {timeout:?}",
                    self.vm.name
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.vm
            .ip(&["link", "set", "dev", tap, "netns", &self.b.name])?;
        let _ = run(self.b.command("sysctl").args([
            "-q",
            "-w",
            &format!("net.ipv6.conf.{tap}.disable_ipv6=1"),
        ]));
        self.b
            .ip(&["link", "set", "dev", tap, "address", MACS[0]])?;
        self.b.ip(&["link", "set", "dev", tap, "up"])?;
        Ok(())
    }

    /// busybox's `udhcpc` in B on tap 1, once (DISCOVER, OFFER, REQUEST,
    /// ACK), at most `tries` discovers a second apart: what it was given.
    pub fn udhcpc(&self, tries: u32) -> Result<Lease, String> {
        let script = crate::testguest_support::TempFile::new(&format!("udhcpc-{}", self.b.name));
        // udhcpc runs the script with the lease in its environment;
        // nothing is configured on the interface.
        std::fs::write(
            &script.0,
            "#!/bin/sh\necho \"udhcpc $1 ip=$ip subnet=$subnet router=$router dns=$dns \
             lease=$lease serverid=$serverid\"\n",
        )
        .map_err(|e| format!("{}: {e}", script.0.display()))?;
        std::fs::set_permissions(
            &script.0,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .map_err(|e| format!("{}: {e}", script.0.display()))?;
        let out = self
            .b
            .command("busybox")
            .args(["udhcpc", "-f", "-q", "-n", "-i", TAPS[1], "-T", "1"])
            .args(["-t", &tries.to_string(), "-s"])
            .arg(&script.0)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("busybox udhcpc: {e}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let line = text
            .lines()
            .find(|l| l.starts_with("udhcpc bound "))
            .ok_or_else(|| format!("udhcpc got no lease ({}):\n{text}", out.status))?;
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{k}=")))
                .unwrap_or("")
                .to_string()
        };
        Ok(Lease {
            ip: field("ip"),
            subnet: field("subnet"),
            router: field("router"),
            dns: field("dns"),
            lease: field("lease"),
            server: field("serverid"),
        })
    }

    /// Pings B from A until one answer comes back (ARP through the guest
    /// included), for at most `timeout`.
    pub fn wait_reachable(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let ok = self
                .a
                .command("ping")
                .args(["-c", "1", "-W", "1", ADDR_B])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{ADDR_B} not reachable from {ADDR_A} within {timeout:?}"
                ));
            }
        }
    }

    /// `count` pings from A to B `interval_ms` apart: each round trip in
    /// microseconds, and how many were lost.
    pub fn ping(&self, count: u32, interval_ms: u32) -> Result<(Vec<f64>, u32), String> {
        let out = run(self.a.command("ping").args([
            "-n",
            "-c",
            &count.to_string(),
            "-i",
            &format!("{:.3}", interval_ms as f64 / 1000.0),
            // With -c, -w waits for every answer up to the deadline
            // (alone, ping gives the last ones only about two round trips).
            "-w",
            &(count * interval_ms / 1000 + 5).to_string(),
            ADDR_B,
        ]));
        // ping exits 1 when some were lost: the lines still count.
        let text = match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
            Err(e) if e.contains("exit status: 1") => String::new(),
            Err(e) => return Err(e),
        };
        let rtts: Vec<f64> = text
            .lines()
            .filter_map(|l| l.split("time=").nth(1))
            .filter_map(|t| t.trim_end_matches(" ms").trim().parse::<f64>().ok())
            .map(|ms| ms * 1000.0)
            .collect();
        let lost = count.saturating_sub(rtts.len() as u32);
        if lost > 0 {
            eprintln!("ping: {lost} lost:\n{text}");
        }
        Ok((rtts, lost))
    }

    /// iperf3 TCP from A to B for `seconds`: the receiver's Gbit/s.
    pub fn iperf3(&self, seconds: u32) -> Result<f64, String> {
        iperf3(&self.a, &self.b, ADDR_B, 5201, seconds)
    }
}

/// iperf3 TCP from `a` to `addr_b` in `b` on `port` for `seconds`: the
/// receiver's Gbit/s.
pub fn iperf3(a: &Netns, b: &Netns, addr_b: &str, port: u16, seconds: u32) -> Result<f64, String> {
    let port = port.to_string();
    let mut server = b
        .command("iperf3")
        .args(["-s", "-1", "-B", addr_b, "-p", &port])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("iperf3 -s: {e}"))?;
    // The server listens within a moment; the client retries until then.
    let deadline = Instant::now() + Duration::from_secs(5);
    let result = loop {
        let r = run(a.command("iperf3").args([
            "-c",
            addr_b,
            "-p",
            &port,
            "-t",
            &seconds.to_string(),
            "-f",
            "m",
        ]));
        match r {
            Ok(o) => break Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
            Err(e) if e.contains("Connection refused") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => break Err(e),
        }
    };
    let _ = server.kill();
    let _ = server.wait();
    let text = result?;
    let line = text
        .lines()
        .find(|l| l.trim_end().ends_with("receiver"))
        .ok_or_else(|| format!("no receiver line from iperf3:\n{text}"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| *w == "Mbits/sec")
        .ok_or_else(|| format!("no Mbits/sec in {line:?}"))?;
    let mbits: f64 = words[at - 1]
        .parse()
        .map_err(|_| format!("bad rate in {line:?}"))?;
    Ok(mbits / 1000.0)
}

/// The QEMU arguments for the guest's two NICs: taps [`TAPS`] (created by
/// QEMU in the namespace it runs in), modern-only virtio-net with the
/// MACs [`MACS`], no option ROM (iPXE does not run on hosts whose KVM
/// emulates real mode), no vhost (the device model in QEMU itself, as
/// ours is in vmd).
///
/// With `user0`, NIC 0 is on QEMU's user network instead (its DHCP
/// server, as vmd's on a `local interface`).
pub fn qemu_nics(user0: bool) -> Vec<String> {
    let mut v = Vec::new();
    for (i, (tap, mac)) in TAPS.iter().zip(MACS).enumerate() {
        v.extend([
            "-netdev".into(),
            if user0 && i == 0 {
                format!("user,id=n{i}")
            } else {
                format!("tap,id=n{i},ifname={tap},script=no,downscript=no,vhost=off")
            },
            "-device".into(),
            format!("virtio-net-pci,netdev=n{i},disable-legacy=on,romfile=,mac={mac}"),
        ]);
    }
    v
}

/// The median of `v` (NaN if empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
