//! vmd's DHCP server (`vmd::net::LocalServer`) against a DHCP client that
//! nobody here wrote: busybox's udhcpc, on a tap in a network namespace
//! this test makes (and removes, also on failure).  The test plays the
//! vionet device: it reads the client's frames from the tap's descriptor,
//! hands each to `respond`, and writes the replies back.  udhcpc must end
//! up with exactly the lease's address, netmask, router, DNS server,
//! lease time and server identifier (and, on a network boot, the boot
//! file and the VM's name as host name; otherwise neither), and its
//! script must have put the address and the default route on the
//! interface.
//!
//! Needs root, `ip` (iproute2), busybox with udhcpc and /dev/net/tun;
//! reported as ignored, with the reason, where one is missing.  No
//! interface outside the namespace is touched.
use libtest_mimic::{Arguments, Failed, Trial};

/// Taps through /dev/net/tun and network namespaces: Linux only.
#[cfg(target_os = "linux")]
mod linux {
    use libtest_mimic::Failed;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::collections::HashMap;
    use std::fs::File;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    use vmd::net::dhcp::LEASE_TIME;
    use vmd::net::{LocalLease, LocalServer};
    use vmd_proto::config::GlobalConfig;

    const TAP: &str = "vmdtap0";
    const GUEST_MAC: [u8; 6] = [0xfe, 0xe1, 0xbb, 0xd1, 0x5a, 0x01];
    /// How long udhcpc may take for the whole exchange.
    const DEADLINE: Duration = Duration::from_secs(20);

    pub fn missing_root() -> Option<String> {
        (!nix::unistd::geteuid().is_root()).then(|| "needs root (network namespaces)".to_string())
    }

    pub fn missing_tools() -> Option<String> {
        let ok = |cmd: &mut Command| {
            cmd.stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !ok(Command::new("ip").arg("-V")) {
            return Some("needs ip (Debian's iproute2)".into());
        }
        let listed = Command::new("busybox")
            .arg("--list")
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l == "udhcpc")
            })
            .unwrap_or(false);
        if !listed {
            return Some("needs busybox with udhcpc (Debian's busybox)".into());
        }
        if !Path::new("/dev/net/tun").exists() {
            return Some("needs /dev/net/tun".into());
        }
        None
    }

    /// The variables udhcpc hands its script that the test looks at.
    const LEASE_VARS: &str =
        "interface|ip|subnet|mask|router|dns|serverid|lease|siaddr|hostname|boot_file|domain";

    /// A directory of this test's own, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Result<Self, Failed> {
            let d = std::env::temp_dir().join(format!("vmd-dhcp-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
            Ok(TempDir(d))
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A network namespace of this test's own, deleted when dropped.
    struct Netns(String);

    impl Netns {
        fn new(tag: &str) -> Result<Self, Failed> {
            let name = format!("vmd-dhcp-{tag}-{}", std::process::id());
            run(Command::new("ip").args(["netns", "add", &name]))?;
            Ok(Netns(name))
        }

        /// `ip netns exec <ns> args...`
        fn cmd(&self, args: &[&str]) -> Command {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &self.0]).args(args);
            c
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.0])
                .stderr(Stdio::null())
                .status();
        }
    }

    fn run(cmd: &mut Command) -> Result<String, Failed> {
        let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{cmd:?}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Opens tap `name` inside namespace `ns`: a thread of its own enters the
    /// namespace, so that the tap is created there, and the descriptor it
    /// opens stays usable from any thread.
    fn open_tap(ns: &Netns, name: &str) -> Result<File, Failed> {
        let nspath = PathBuf::from("/run/netns").join(&ns.0);
        let name = name.to_string();
        std::thread::spawn(move || -> Result<File, String> {
            let nsfile = File::open(&nspath).map_err(|e| format!("{}: {e}", nspath.display()))?;
            nix::sched::setns(nsfile.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("setns {}: {e}", nspath.display()))?;
            let tun = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
                .map_err(|e| format!("/dev/net/tun: {e}"))?;
            let flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
            vmm_sys::hostif::tun_set_iff(tun.as_fd(), &name, flags)
                .map_err(|e| format!("TUNSETIFF {name}: {e}"))?;
            Ok(tun)
        })
        .join()
        .map_err(|_| "tap thread panicked")?
        .map_err(Failed::from)
    }

    /// `KEY=value` lines of an environment dump.
    fn read_env(path: &Path) -> Result<HashMap<String, String>, Failed> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    pub fn udhcpc_gets_the_lease() -> Result<(), Failed> {
        // VM 7's second local interface under the default prefix.
        let lease = LocalLease::new(&GlobalConfig::default(), 7, 1, GUEST_MAC, "dhcptest")?;
        lease_through_udhcpc(lease, "plain")
    }

    pub fn udhcpc_gets_a_network_boot_lease() -> Result<(), Failed> {
        // VM 12's first interface booting from the network: the boot file
        // and the VM's name come too.
        let lease = LocalLease::new(&GlobalConfig::default(), 12, 0, GUEST_MAC, "pxe-guest")?
            .with_pxeboot(true);
        lease_through_udhcpc(lease, "pxe")
    }

    /// udhcpc on a tap of namespace `vmd-dhcp-<tag>-<pid>` against a
    /// server of `lease`.
    fn lease_through_udhcpc(lease: LocalLease, tag: &str) -> Result<(), Failed> {
        let mut server = LocalServer::new(lease.clone());

        let ns = Netns::new(tag)?;
        let mut tap = open_tap(&ns, TAP)?;
        let mac = GUEST_MAC.map(|b| format!("{b:02x}")).join(":");
        run(&mut ns.cmd(&["ip", "link", "set", TAP, "address", &mac, "up"]))?;

        let tmp = TempDir::new(tag)?;
        let dir = tmp.0.clone();
        let script = dir.join("script");
        // udhcpc's event script: keep the lease variables of every event, and
        // configure the interface on "bound" as a guest's dhclient would.
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nenv | grep -E '^({LEASE_VARS})=' > {dir}/\"$1\".env\n\
             if [ \"$1\" = bound ]; then\n\
             ip addr add \"$ip/$mask\" dev \"$interface\" || exit 1\n\
             ip route add default via \"$router\" dev \"$interface\" || exit 1\n\
             fi\n",
                dir = dir.display()
            ),
        )?;
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;

        let mut client = ns
            .cmd(&[
                "busybox",
                "udhcpc",
                "-f",
                "-q",
                "-n",
                "-i",
                TAP,
                "-t",
                "5",
                "-T",
                "1",
                "-s",
                script.to_str().unwrap(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;

        // Play vionet: frames from the "guest" to the server, replies back.
        let start = Instant::now();
        let mut frames = 0u32;
        let mut buf = vec![0u8; 65536];
        let status = loop {
            if let Some(st) = client.try_wait()? {
                break st;
            }
            if start.elapsed() > DEADLINE {
                let _ = client.kill();
                let _ = client.wait();
                return Err(format!("udhcpc did not finish in {DEADLINE:?}").into());
            }
            let mut fds = [PollFd::new(tap.as_fd(), PollFlags::POLLIN)];
            if poll(&mut fds, PollTimeout::from(100u16))? == 0 {
                continue;
            }
            let n = tap.read(&mut buf)?;
            frames += 1;
            if let Some(reply) = server.respond(&buf[..n]) {
                tap.write_all(&reply)?;
            }
        };
        let out = client.wait_with_output()?;
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !status.success() {
            return Err(format!("udhcpc failed ({status}) after {frames} frames:\n{log}").into());
        }
        // DISCOVER → OFFER, REQUEST → ACK at least.
        if server.replies() < 2 {
            return Err(format!("{} replies to {frames} frames:\n{log}", server.replies()).into());
        }

        let env = read_env(&dir.join("bound.env"))?;
        let host = lease.host_addr.to_string();
        let want = [
            ("interface", TAP.to_string()),
            ("ip", lease.guest_addr.to_string()),
            ("subnet", lease.netmask().to_string()),
            ("mask", lease.prefix_len.to_string()),
            ("router", host.clone()),
            ("dns", host.clone()),
            ("serverid", host.clone()),
            ("lease", LEASE_TIME.to_string()),
            ("siaddr", host.clone()),
        ];
        for (k, v) in want {
            let got = env.get(k).map(String::as_str);
            if got != Some(v.as_str()) {
                return Err(format!("udhcpc's {k}: {got:?}, expected {v:?}\n{log}").into());
            }
        }
        // Host name and boot file on a network boot only.
        let pxe = [
            ("hostname", lease.vm_name.clone()),
            ("boot_file", vmd::net::dhcp::PXEBOOT_FILE.to_string()),
        ];
        for (k, v) in pxe {
            let want = lease.pxeboot.then_some(v.as_str());
            let got = env.get(k).map(String::as_str);
            if got != want {
                return Err(format!("udhcpc's {k}: {got:?}, expected {want:?}\n{log}").into());
            }
        }

        // The script configured what it was given.
        let addrs = run(&mut ns.cmd(&["ip", "-o", "-4", "addr", "show", "dev", TAP]))?;
        let cidr = format!("{}/{}", lease.guest_addr, lease.prefix_len);
        if !addrs.contains(&cidr) {
            return Err(format!("{TAP} has no {cidr}: {addrs}").into());
        }
        let routes = run(&mut ns.cmd(&["ip", "-4", "route", "show", "default"]))?;
        if !routes.contains(&format!("default via {host} dev {TAP}")) {
            return Err(format!("no default route via {host}: {routes}").into());
        }
        Ok(())
    }
}

/// A trial's body.
type TestFn = fn() -> Result<(), Failed>;

fn main() {
    let args = Arguments::from_args();
    #[cfg(target_os = "linux")]
    let (why, tests): (Option<String>, [(&str, TestFn); 2]) = (
        linux::missing_root().or_else(linux::missing_tools),
        [
            ("udhcpc_gets_the_lease", linux::udhcpc_gets_the_lease),
            (
                "udhcpc_gets_a_network_boot_lease",
                linux::udhcpc_gets_a_network_boot_lease,
            ),
        ],
    );
    #[cfg(not(target_os = "linux"))]
    let (why, tests): (Option<String>, [(&str, TestFn); 2]) = (
        Some("needs Linux (taps through /dev/net/tun in a network namespace)".into()),
        [
            ("udhcpc_gets_the_lease", || Ok(())),
            ("udhcpc_gets_a_network_boot_lease", || Ok(())),
        ],
    );
    let trials = tests
        .into_iter()
        .map(|(name, f)| {
            let t = Trial::test(name, f);
            match &why {
                Some(why) => t.with_ignored_flag(true).with_kind(why.clone()),
                None => t,
            }
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
