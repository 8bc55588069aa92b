//! The priv process's Linux operations on real interfaces, each test in a
//! network namespace of its own: a thread that `unshare(CLONE_NEWNET)`s
//! (a namespace belongs to a thread on Linux, and what the thread starts —
//! `ip`, the priv process — is in it too).  The namespace, and every tap
//! and bridge made in it, goes away with the thread; no interface of the
//! host is seen, let alone touched.
//!
//! - taps get vmd's description (the link's alias), group, state, switch
//!   and local address from the requests the parent builds
//!   (`daemon::netcfg`), and the switch is created with its description;
//! - requests for foreign interfaces (`lo`, a bridge named like a tap, an
//!   unconfigured switch) and malformed ones are refused and change
//!   nothing;
//! - the priv process itself (`vmd -P priv`) logs what it refused, and a
//!   garbage payload from its parent ends it cleanly;
//! - rdomains: a VRF per rdomain, or a clear error where the kernel has
//!   no VRFs; what Linux cannot honour is refused.
//!
//! Needs root, `ip` (iproute2) and network namespaces; reported as
//! ignored with the reason otherwise.
mod support;
#[cfg(target_os = "linux")]
#[path = "support/testguest.rs"]
mod testguest_support;

/// Linux's interfaces: OpenBSD's ioctl paths are type-checked by
/// `make check-openbsd` and exercised by vmd on OpenBSD hosts.
#[cfg(target_os = "linux")]
mod on_linux {
    use super::support;
    use super::testguest_support;
    use std::collections::HashMap;
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use libtest_mimic::{Arguments, Failed, Trial};
    use vmd::config::Switch;
    use vmd::daemon::netcfg::{switch_brconfig, vm_ifconfig};
    use vmd::daemon::privproc::{Outcome, Priv};
    use vmd::sys::netif::{Link, NetIf, NetifError};
    use vmd_proto::config::{GlobalConfig, Interface, VMIFF_LOCAL, VMIFF_UP};
    use vmd_proto::msg::{ImsgType, VmopIfreq};
    use vmd_proto::{ImsgChannel, Message};

    /// Runs `f` on a thread of its own in a new network namespace.
    fn in_netns<F>(f: F) -> Result<(), Failed>
    where
        F: FnOnce() -> Result<(), Failed> + Send + 'static,
    {
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
            f()
        })
        .join()
        .map_err(|_| Failed::from("test thread panicked"))?
    }

    /// `ip ARGS` in the calling thread's namespace.
    fn ip(args: &str) -> Result<(), Failed> {
        let out = Command::new("ip").args(args.split_whitespace()).output()?;
        if !out.status.success() {
            return Err(format!("ip {args}: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        Ok(())
    }

    /// Why these tests cannot run here, if they cannot.
    fn missing() -> Option<String> {
        if let Some(r) = support::missing_root() {
            return Some(r);
        }
        if Command::new("ip").arg("-V").output().is_err() {
            return Some("needs ip (iproute2)".into());
        }
        if Command::new("python3").arg("-V").output().is_err() {
            return Some("needs python3 (opens the taps)".into());
        }
        let r = std::thread::spawn(|| nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET))
            .join()
            .unwrap_or(Err(nix::errno::Errno::EIO));
        r.err()
            .map(|e| format!("needs network namespaces (unshare: {e})"))
    }

    fn groups() -> HashMap<String, u32> {
        [("vms".to_string(), 17), ("swgrp".to_string(), 18)]
            .into_iter()
            .collect()
    }

    fn link(n: &mut NetIf, name: &str) -> Result<Link, Failed> {
        n.link(name)?
            .ok_or_else(|| Failed::from(format!("{name}: missing")))
    }

    fn run(p: &mut Priv, msgs: &[Message]) -> Vec<(Message, Outcome)> {
        msgs.iter()
            .map(|m| (m.clone(), p.handle(m, Vec::new())))
            .collect()
    }

    fn vfr(name: &str, value: &str) -> VmopIfreq {
        VmopIfreq {
            id: 0,
            name: name.into(),
            value: value.into(),
            addr: None,
            mask: None,
        }
    }

    /// vm.conf's switch "uplink" on bridge0 with group swgrp, and VM 3 "web"
    /// with a NIC on it (group vms) and a local NIC that is down: the
    /// parent's requests, applied by priv, leave the interfaces as vmd does.
    fn tap_configuration() -> Result<(), Failed> {
        in_netns(|| {
            ip("tuntap add dev tap0 mode tap")?;
            ip("tuntap add dev tap1 mode tap")?;
            let mut p = Priv::new(NetIf::with_groups(groups())?);
            let sw = Switch {
                id: 1,
                name: "uplink".into(),
                ifname: "bridge0".into(),
                group: Some("swgrp".into()),
                flags: VMIFF_UP,
                ..Switch::default()
            };
            for (m, o) in run(&mut p, &switch_brconfig(&sw)) {
                if !matches!(o, Outcome::Done) {
                    return Err(format!("{m:?}: {o:?}").into());
                }
            }
            let if0 = Interface {
                switch: Some("uplink".into()),
                group: Some("vms".into()),
                ..Interface::default()
            };
            let if1 = Interface {
                flags: VMIFF_LOCAL,
                ..Interface::default()
            };
            let msgs = vm_ifconfig(
                &GlobalConfig::default(),
                std::slice::from_ref(&sw),
                3,
                "web",
                &[if0, if1],
                &["tap0".into(), "tap1".into()],
            )?;
            let mut failed = Vec::new();
            for (m, o) in run(&mut p, &msgs) {
                match o {
                    Outcome::Done => {}
                    other => failed.push((m, other)),
                }
            }
            // One failure only: the switch's group on a tap that has the
            // interface's group already (a Linux link has one group).
            match failed.as_slice() {
                [(Message::PrivIfgroup(v), Outcome::Failed(NetifError::Unsupported { why, .. }))]
                    if v.value == "swgrp" && why.contains("one group") => {}
                other => return Err(format!("unexpected outcomes: {other:?}").into()),
            }
            let n = &mut p.netif;
            let br = link(n, "bridge0")?;
            assert_eq!(br.kind.as_deref(), Some("bridge"));
            assert_eq!(br.alias.as_deref(), Some("switch1-uplink"));
            assert!(br.up, "bridge0 up");
            let t0 = link(n, "tap0")?;
            assert_eq!(t0.alias.as_deref(), Some("vm3-if0-web"));
            assert_eq!(t0.group, 17);
            assert!(t0.up, "tap0 up");
            assert_eq!(t0.master, Some(br.index), "tap0 on bridge0");
            let t1 = link(n, "tap1")?;
            assert_eq!(t1.alias.as_deref(), Some("vm3-if1-web"));
            assert!(!t1.up, "tap1 down");
            assert_eq!(t1.master, None);
            assert_eq!(t1.group, 0);
            let addrs = n.addresses("tap1")?;
            assert!(
                addrs.contains(&("100.64.3.4".parse().unwrap(), 31)),
                "tap1 addresses {addrs:?}"
            );
            assert!(n.addresses("tap0")?.iter().all(|(a, _)| !a.is_ipv4()));
            // The same requests again change nothing and fail nowhere new.
            let again: Vec<_> = run(&mut p, &msgs)
                .into_iter()
                .filter(|(_, o)| !matches!(o, Outcome::Done))
                .collect();
            assert_eq!(again.len(), 1, "{again:?}");
            Ok(())
        })
    }

    /// Foreign interfaces and malformed requests are refused and leave
    /// everything as it was.
    fn foreign_interfaces_refused() -> Result<(), Failed> {
        in_netns(|| {
            ip("tuntap add dev tap0 mode tap")?;
            // Named like a tap, but a bridge, or a tun (layer 3) device; and
            // a bridge vm.conf never named.
            ip("link add tap5 type bridge")?;
            ip("tuntap add dev tap8 mode tun")?;
            ip("link add bridge7 type bridge")?;
            let mut p = Priv::new(NetIf::with_groups(groups())?);
            let before: Vec<Link> = ["lo", "tap0", "tap5", "tap8", "bridge7"]
                .iter()
                .map(|n| link(&mut p.netif, n))
                .collect::<Result<_, _>>()?;
            let mut addr = vfr("tap5", "");
            addr.addr = Some("100.64.9.2".parse().unwrap());
            addr.mask = Some("255.255.255.254".parse().unwrap());
            let mut bad_family = vfr("tap0", "");
            bad_family.addr = Some("fd00::1".parse().unwrap());
            bad_family.mask = Some("255.255.255.254".parse().unwrap());
            let refused = [
                Message::PrivIfup(vfr("lo", "")),
                Message::PrivIfdown(vfr("lo", "")),
                Message::PrivIfdescr(vfr("lo", "pwned")),
                Message::PrivIfgroup(vfr("eth0", "vms")),
                Message::PrivIfexists(vfr("eth0", "")),
                Message::PrivIfexists(vfr("tap0", "")),
                Message::PrivIfdescr(vfr("tap5", "not a tap")),
                Message::PrivIfup(vfr("tap8", "")),
                Message::PrivIfaddr(addr),
                Message::PrivIfaddr6(bad_family),
                Message::PrivIfup(vfr("bridge7", "")),
                Message::PrivIfadd(vfr("bridge7", "tap0")),
                Message::PrivIfdescr(vfr("tap0", "line\nbreak")),
                Message::PrivIfgroup(vfr("tap0", "vms1")),
                Message::StartVmEnd,
            ];
            for (m, o) in run(&mut p, &refused) {
                if !matches!(o, Outcome::Refused(_)) {
                    return Err(format!("{m:?} not refused: {o:?}").into());
                }
            }
            // bridge7 becomes a switch once configured, but lo still cannot be
            // its member.
            let ok = run(&mut p, &[Message::PrivIfexists(vfr("bridge7", ""))]);
            assert!(matches!(ok[0].1, Outcome::Done), "{ok:?}");
            let o = run(&mut p, &[Message::PrivIfadd(vfr("bridge7", "lo"))]);
            assert!(matches!(o[0].1, Outcome::Refused(_)), "{o:?}");
            let o = run(&mut p, &[Message::PrivIfadd(vfr("bridge7", "tap5"))]);
            assert!(matches!(o[0].1, Outcome::Refused(_)), "{o:?}");
            let after: Vec<Link> = ["lo", "tap0", "tap5", "tap8", "bridge7"]
                .iter()
                .map(|n| link(&mut p.netif, n))
                .collect::<Result<_, _>>()?;
            assert_eq!(before, after);
            // A tap's MAC through a descriptor that is not a tap: an error.
            let f = std::fs::File::open("/dev/null")?;
            let o = p.handle(
                &Message::PrivGetAddr(vmd_proto::msg::VmopAddrReq {
                    vmid: 1,
                    nic_idx: 0,
                }),
                vec![f.into()],
            );
            assert!(matches!(o, Outcome::Failed(_)), "{o:?}");
            Ok(())
        })
    }

    /// rdomains: a VRF `rdomainN` with table N where the kernel has VRFs (a
    /// clear error naming it where not); Linux's own tables and a bridge
    /// member outside its bridge's domain are refused.
    fn rdomains() -> Result<(), Failed> {
        in_netns(|| {
            ip("tuntap add dev tap0 mode tap")?;
            ip("tuntap add dev tap1 mode tap")?;
            ip("link add bridge0 type bridge")?;
            ip("link set tap1 master bridge0")?;
            let vrf = ip("link add vrftest type vrf table 77").is_ok();
            let mut n = NetIf::with_groups(groups())?;
            match n.set_rdomain("tap0", 5) {
                Ok(()) => {
                    assert!(vrf, "rdomain set without VRF support?");
                    let v = link(&mut n, "rdomain5")?;
                    assert_eq!(v.kind.as_deref(), Some("vrf"));
                    assert_eq!(v.vrf_table, Some(5));
                    assert_eq!(link(&mut n, "tap0")?.master, Some(v.index));
                    // Back to rdomain 0: out of the VRF.
                    n.set_rdomain("tap0", 0)?;
                    assert_eq!(link(&mut n, "tap0")?.master, None);
                }
                Err(e @ NetifError::Os { .. }) if !vrf => {
                    assert!(e.to_string().contains("rdomain5"), "{e}");
                    eprintln!("no VRFs in this kernel: {e}");
                }
                Err(e) => return Err(e.into()),
            }
            for r in [253, 254, 255] {
                assert!(matches!(
                    n.set_rdomain("tap0", r),
                    Err(NetifError::Unsupported { .. })
                ));
            }
            let e = n.set_rdomain("tap1", 6).unwrap_err();
            assert!(
                matches!(e, NetifError::Unsupported { ref why, .. } if why.contains("bridge0")),
                "{e}"
            );
            // rdomain 0 leaves a bridge port on its bridge.
            n.set_rdomain("tap1", 0)?;
            let br = link(&mut n, "bridge0")?;
            assert_eq!(link(&mut n, "tap1")?.master, Some(br.index));
            Ok(())
        })
    }

    /// `vmd -P priv` as vmd starts it (its parent channel on standard input,
    /// in the test's namespace): it applies the parent's requests, logs the
    /// refused ones, and a garbage payload ends it without a panic.
    fn priv_process() -> Result<(), Failed> {
        in_netns(|| {
            ip("tuntap add dev tap0 mode tap")?;
            let dir = support::daemon::temp_dir("vmd-netpriv", "priv")?;
            let log = dir.join("stderr");
            let (ours, theirs) = UnixStream::pair()?;
            let mut child = Command::new(env!("CARGO_BIN_EXE_vmd"))
                .args(["-P", "priv", "-d", "-vv"])
                .env("VMD_NO_PRIVDROP", "1")
                .env("VMD_USER", support::daemon::vmd_user())
                .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
                .stderr(std::fs::File::create(&log)?)
                .spawn()?;
            let mut chan = ImsgChannel::new(ours);
            for m in [
                Message::PrivIfdescr(vfr("lo", "pwned")),
                Message::PrivIfexists(vfr("bridge0", "")),
                Message::PrivIfadd(vfr("bridge0", "tap0")),
                Message::PrivIfdescr(vfr("tap0", "vm1-if0-test")),
                Message::PrivIfup(vfr("tap0", "")),
                Message::PrivIfadd(vfr("bridge9", "tap0")),
            ] {
                chan.send(&m)?;
            }
            let read_log = || {
                let mut s = String::new();
                let _ = std::fs::File::open(&log).and_then(|mut f| f.read_to_string(&mut s));
                s
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while !read_log().contains("bridge9") {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    return Err(
                        format!("priv did not get through the requests:\n{}", read_log()).into(),
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // A payload that does not decode: priv drops its parent, i.e. ends.
            chan.compose(ImsgType::PrivIfup as u32, 0, 0, &[0xff; 9], Vec::new())?;
            chan.flush()?;
            let deadline = Instant::now() + Duration::from_secs(10);
            let status = loop {
                if let Some(st) = child.try_wait()? {
                    break st;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    return Err("priv did not end after a garbage payload".into());
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let text = read_log();
            assert!(status.success(), "priv exited with {status}:\n{text}");
            assert!(!text.contains("panicked"), "{text}");
            for want in [
                "refused IMSG_VMDOP_PRIV_IFDESCR: rejected priv operation on interface: lo",
                "refused IMSG_VMDOP_PRIV_IFADD: bridge9 is not a configured switch",
                "created switch interface bridge0",
            ] {
                assert!(text.contains(want), "no {want:?} in:\n{text}");
            }
            let mut n = NetIf::with_groups(HashMap::new())?;
            let br = link(&mut n, "bridge0")?;
            let t = link(&mut n, "tap0")?;
            assert_eq!(t.master, Some(br.index));
            assert_eq!(t.alias.as_deref(), Some("vm1-if0-test"));
            assert!(t.up);
            assert_eq!(link(&mut n, "lo")?.alias, None);
            let _ = std::fs::remove_dir_all(&dir);
            Ok(())
        })
    }

    /// The daemon: a vm.conf `switch` makes vmd create its bridge at
    /// startup with the switch's description, down as configured, and a
    /// reload (SIGHUP) leaves a running switch alone.
    fn daemon_switch() -> Result<(), Failed> {
        in_netns(|| {
            let dir = support::daemon::temp_dir("vmd-netpriv", "daemon")?;
            let cfg = dir.join("vm.conf");
            std::fs::write(
                &cfg,
                "switch \"uplink\" {\n\tinterface bridge0\n}\nswitch \"dark\" {\n\tinterface veb3\n\tdown\n}\n",
            )?;
            let mut vmd = support::daemon::command(&cfg, &dir.join("vmd.sock"))
                .stderr(std::fs::File::create(dir.join("stderr"))?)
                .spawn()?;
            let mut n = NetIf::with_groups(HashMap::new())?;
            let deadline = Instant::now() + Duration::from_secs(15);
            let r = loop {
                let a = n.link("bridge0")?;
                let b = n.link("veb3")?;
                if let (Some(a), Some(b)) = (&a, &b) {
                    if a.alias.is_some() && b.alias.is_some() && a.up {
                        break Ok((a.clone(), b.clone()));
                    }
                }
                if Instant::now() > deadline {
                    break Err(format!("switches not set up: {a:?} {b:?}"));
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            // A switch added to the file is set up at the reload (SIGHUP).
            let mut late = None;
            if r.is_ok() {
                std::fs::write(
                    &cfg,
                    "switch \"uplink\" {\n\tinterface bridge0\n}\nswitch \"dark\" {\n\tinterface veb3\n\tdown\n}\nswitch \"late\" {\n\tinterface bridge5\n}\n",
                )?;
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(vmd.id() as i32),
                    nix::sys::signal::Signal::SIGHUP,
                )?;
                let deadline = Instant::now() + Duration::from_secs(15);
                while Instant::now() < deadline {
                    late = n.link("bridge5")?.filter(|l| l.alias.is_some());
                    if late.is_some() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            support::daemon::stop(&mut vmd)?;
            let log = std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
            let (a, b) = r.map_err(|e| format!("{e}\n{log}"))?;
            let late = late.ok_or_else(|| format!("bridge5 not set up at reload\n{log}"))?;
            assert_eq!(late.alias.as_deref(), Some("switch3-late"));
            assert!(late.up);
            assert_eq!(a.alias.as_deref(), Some("switch1-uplink"));
            assert_eq!(a.kind.as_deref(), Some("bridge"));
            assert_eq!(b.alias.as_deref(), Some("switch2-dark"));
            assert!(!b.up, "veb3 down");
            assert!(!log.contains("refused"), "{log}");
            let _ = std::fs::remove_dir_all(&dir);
            Ok(())
        })
    }

    /// vmd with a VM on a switch, a local interface and a tap that is
    /// down: once the VM runs, priv has given each tap vmd's description,
    /// the switch its member, the local tap its /31, each its state; when
    /// vmd ends, the VM's taps go and the switch stays.
    fn daemon_vm_interfaces() -> Result<(), Failed> {
        in_netns(|| {
            let dir = support::daemon::temp_dir("vmd-netpriv", "vm")?;
            let disk = dir.join("script.img");
            testguest_support::write_boot_disk(&disk, "pci\nvmmci-ignore\n", 1 << 20)?;
            let cfg = dir.join("vm.conf");
            std::fs::write(
                &cfg,
                format!(
                    "switch \"uplink\" {{\n interface bridge0\n}}\n\
                     vm \"net\" {{\n memory 32M\n boot \"{}\"\n disk \"{}\"\n local interface\n \
                     interface {{ switch \"uplink\" }}\n interface tap7 {{ down }}\n}}\n",
                    testguest_support::elf_path().display(),
                    disk.display()
                ),
            )?;
            let mut vmd = support::daemon::command(&cfg, &dir.join("vmd.sock"))
                .arg("-v")
                .stderr(std::fs::File::create(dir.join("stderr"))?)
                .spawn()?;
            let mut n = NetIf::with_groups(HashMap::new())?;
            let deadline = Instant::now() + Duration::from_secs(30);
            let done = loop {
                let t = ["tap0", "tap1", "tap7"]
                    .iter()
                    .map(|t| n.link(t))
                    .collect::<Result<Vec<_>, _>>()?;
                if t.iter()
                    .all(|l| l.as_ref().is_some_and(|l| l.alias.is_some()))
                    && !n.addresses("tap0")?.is_empty()
                {
                    break Ok(t.into_iter().flatten().collect::<Vec<Link>>());
                }
                if Instant::now() > deadline {
                    break Err(format!("taps not configured: {t:?}"));
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            let taps = match done {
                Ok(t) => t,
                Err(e) => {
                    let _ = support::daemon::stop(&mut vmd);
                    let log = std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
                    return Err(format!("{e}\n{log}").into());
                }
            };
            let br = link(&mut n, "bridge0")?;
            let addrs = n.addresses("tap0")?;
            support::daemon::stop(&mut vmd)?;
            let log = std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
            let (t0, t1, t7) = (&taps[0], &taps[1], &taps[2]);
            assert_eq!(t0.alias.as_deref(), Some("vm1-if0-net"), "{log}");
            assert_eq!(t1.alias.as_deref(), Some("vm1-if1-net"));
            assert_eq!(t7.alias.as_deref(), Some("vm1-if2-net"));
            assert!(t0.up && t1.up && !t7.up, "states {t0:?} {t1:?} {t7:?}");
            assert_eq!(t1.master, Some(br.index), "tap1 on bridge0");
            assert_eq!(t0.master, None);
            assert!(
                addrs.contains(&("100.64.1.2".parse().unwrap(), 31)),
                "tap0 {addrs:?}"
            );
            assert_eq!(br.alias.as_deref(), Some("switch1-uplink"));
            // Nothing refused, nothing failed (GET_ADDR included), nothing
            // outside the sandbox.
            for bad in ["refused", "forbidden"] {
                assert!(!log.contains(bad), "{bad}: {log}");
            }
            assert!(
                !log.lines()
                    .any(|l| l.contains("priv: IMSG_") && !l.ends_with(" done")),
                "{log}"
            );
            // priv read each tap's MAC for vionet.
            assert_eq!(
                log.matches("priv: IMSG_VMDOP_PRIV_GET_ADDR done").count(),
                3,
                "{log}"
            );
            // vmd stopped the VM: its taps are gone, the switch is not.
            let deadline = Instant::now() + Duration::from_secs(10);
            while ["tap0", "tap1", "tap7"]
                .iter()
                .any(|t| n.link(t).ok().flatten().is_some())
            {
                if Instant::now() > deadline {
                    return Err("the VM's taps outlived it".into());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(n.link("bridge0")?.is_some());
            let _ = std::fs::remove_dir_all(&dir);
            Ok(())
        })
    }

    /// Creates tap `name` (not persistent: it lives as long as its
    /// descriptor) the way vmd opens taps on Linux — `/dev/net/tun`,
    /// `TUNSETIFF` with IFF_TAP|IFF_NO_PI — in a python3 child, which hands the
    /// descriptor over in an imsg (`IMSG_CTL_OK` with one fd; the tests have no
    /// `unsafe` for the ioctl themselves).
    fn open_tap(name: &str) -> Result<std::os::fd::OwnedFd, Failed> {
        const SCRIPT: &str = r#"
import fcntl, os, socket, struct, sys
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH", sys.argv[1].encode(), 0x0002 | 0x1000))
socket.send_fds(socket.socket(fileno=0), [struct.pack("<IHHII", 0, 16, 0x0101, 0, 0)], [fd])
"#;
        let (ours, theirs) = UnixStream::pair()?;
        let st = Command::new("python3")
            .args(["-c", SCRIPT, name])
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .status()?;
        if !st.success() {
            return Err(format!("python3 could not open tap {name}: {st}").into());
        }
        let mut chan = ImsgChannel::new(ours);
        let mut r = chan.recv()?;
        r.fds
            .pop()
            .ok_or_else(|| Failed::from("no descriptor from python3"))
    }

    /// `PRIV_GET_ADDR`: the MAC of the tap behind a descriptor, as the
    /// parent sends it; and a VM's stop (its tap descriptors closed) removes
    /// its taps, from the switch too.
    fn tap_lladdr_and_stop() -> Result<(), Failed> {
        in_netns(|| {
            let tap = open_tap("tap6")?;
            let mut p = Priv::new(NetIf::open()?);
            let out = run(
                &mut p,
                &[
                    Message::PrivIfexists(vfr("bridge2", "")),
                    Message::PrivIfadd(vfr("bridge2", "tap6")),
                    Message::PrivIfup(vfr("tap6", "")),
                ],
            );
            assert!(
                out.iter().all(|(_, o)| matches!(o, Outcome::Done)),
                "{out:?}"
            );
            let mac = link(&mut p.netif, "tap6")?
                .mac
                .ok_or_else(|| Failed::from("tap6 has no MAC"))?;
            let req = Message::PrivGetAddr(vmd_proto::msg::VmopAddrReq {
                vmid: 4,
                nic_idx: 2,
            });
            match p.handle(&req, vec![tap.try_clone()?]) {
                Outcome::Reply(Message::PrivGetAddrResponse(r)) => {
                    assert_eq!((r.vmid, r.nic_idx, r.addr), (4, 2, mac));
                }
                other => return Err(format!("GET_ADDR: {other:?}").into()),
            }
            let br = link(&mut p.netif, "bridge2")?;
            assert_eq!(link(&mut p.netif, "tap6")?.master, Some(br.index));
            // The VM stops: its descriptors close, and its tap is gone.
            drop(tap);
            let deadline = Instant::now() + Duration::from_secs(5);
            while p.netif.link("tap6")?.is_some() {
                if Instant::now() > deadline {
                    return Err("tap6 outlived its descriptor".into());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(p.netif.link("bridge2")?.is_some(), "the switch stays");
            // Requests for the vanished tap fail cleanly.
            let o = p.handle(&Message::PrivIfup(vfr("tap6", "")), Vec::new());
            assert!(
                matches!(o, Outcome::Failed(NetifError::NoSuchInterface(_))),
                "{o:?}"
            );
            Ok(())
        })
    }

    pub fn main() {
        let args = Arguments::from_args();
        let skip = missing();
        let tests: Vec<Trial> = vec![
            Trial::test("netpriv_tap_configuration", tap_configuration),
            Trial::test(
                "netpriv_foreign_interfaces_refused",
                foreign_interfaces_refused,
            ),
            Trial::test("netpriv_rdomains", rdomains),
            Trial::test("netpriv_priv_process_logs_refusals", priv_process),
            Trial::test("netpriv_tap_lladdr_and_stop", tap_lladdr_and_stop),
        ];
        // The daemon's tests need vmm(4) (vmd opens it first), the VM's
        // the test guest too.
        let trial = |name: &'static str, f: fn() -> Result<(), Failed>, why: Option<String>| {
            support::skip_if(Trial::test(name, f), why)
        };
        let no_vmm = skip.clone().or_else(support::missing_vmm);
        let no_guest = no_vmm.clone().or_else(testguest_support::missing_guest);
        let tests: Vec<Trial> = tests
            .into_iter()
            .chain([
                trial("netpriv_daemon_creates_switches", daemon_switch, no_vmm),
                trial(
                    "netpriv_daemon_vm_interfaces",
                    daemon_vm_interfaces,
                    no_guest,
                ),
            ])
            .collect();
        let tests = tests
            .into_iter()
            .map(|t| support::skip_if(t, skip.clone()))
            .collect();
        libtest_mimic::run(&args, tests).exit();
    }
}

#[cfg(target_os = "linux")]
fn main() {
    on_linux::main()
}

#[cfg(not(target_os = "linux"))]
fn main() {
    use libtest_mimic::{Arguments, Trial};
    let t = Trial::test("netpriv", || Ok(()))
        .with_ignored_flag(true)
        .with_kind("linux only (network namespaces, rtnetlink)");
    libtest_mimic::run(&Arguments::from_args(), vec![t]).exit();
}
