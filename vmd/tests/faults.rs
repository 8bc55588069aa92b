//! Faults and load (issue 9, §3): vmd killed with SIGKILL while its VMs
//! run, VM and device processes killed, stopped or failing over many
//! cycles, clients that flood, stall or never read, and many VMs at once.
//! Each test counts what the daemon's processes hold (descriptors from
//! /proc/PID/fd, memory from VmRSS) before and after, and checks that no
//! process, pty or memfd is left behind.
//!
//! The figures each test measured are printed on stderr (`faults:`
//! lines).  `make test` runs reduced counts; `VMD_FAULTS_FULL=1` (`make
//! test-faults`) runs the full ones: 100 fault cycles with one
//! SIGSTOP of a minute, 1,000 clients, 50 VMs.
//!
//! Needs root and /dev/kvm (or /dev/vmm); reported as ignored with the
//! reason where either is missing.  The guests are a 64 KiB "BIOS" that
//! halts with interrupts enabled (no CPU time, no SeaBIOS needed), with a
//! disk so that each VM has its vioblk device process.
mod support;
// Its own file, so that the other tests' crates do not compile it.
#[path = "support/testguest.rs"]
mod testguest_support;

use libtest_mimic::{Arguments, Failed, Trial};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::daemon;
use support::vmctl_binary;
use vmd_proto::msg::*;
use vmd_proto::{ImsgChannel, Message};

/// Whether the full figures of the issue are asked for.
fn full() -> bool {
    std::env::var("VMD_FAULTS_FULL").is_ok_and(|v| v == "1")
}

/// A 64 KiB "BIOS" whose reset vector halts with interrupts enabled, for
/// ever (nothing raises one): a VM that runs and costs nothing.
fn idle_image() -> Vec<u8> {
    let mut img = vec![0xf4u8; 64 << 10];
    // sti; hlt; jmp $-1 (back to the hlt)
    let code = [0xfb, 0xf4, 0xeb, 0xfd];
    let at = img.len() - 16;
    img[at..at + code.len()].copy_from_slice(&code);
    img
}

/// vmd -d in a temporary directory, its stderr in `vmd.log` there.
struct Vmd {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Vmd {
    /// A directory for a test, with the idle image and `disks` raw disks
    /// of 1 MiB (`disk<N>.img`) in it.
    fn dir(name: &str, disks: usize) -> Result<PathBuf, Failed> {
        let dir = daemon::temp_dir("vmd-faults", name)?;
        std::fs::write(dir.join("idle.bin"), idle_image())?;
        for i in 0..disks {
            std::fs::write(dir.join(format!("disk{i}.img")), vec![0u8; 1 << 20])?;
        }
        Ok(dir)
    }

    /// Starts vmd on `dir/vm.conf` (`conf`), appending to `dir/vmd.log`.
    fn start(dir: &Path, conf: &str) -> Result<Vmd, Failed> {
        let socket = dir.join("vmd.sock");
        let cfg = dir.join("vm.conf");
        std::fs::write(&cfg, conf)?;
        let log = dir.join("vmd.log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = daemon::command(&cfg, &socket)
            .stderr(Stdio::from(stderr))
            .spawn()?;
        let mut d = Vmd { child, socket, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&d.socket).is_err() {
            if let Some(st) = d.child.try_wait()? {
                return Err(format!("vmd exited with {st}; log:\n{}", d.log_text()).into());
            }
            if Instant::now() > deadline {
                return Err("vmd's control socket did not appear within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(d)
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn connect(&self) -> Result<ImsgChannel, Failed> {
        let s = UnixStream::connect(&self.socket)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(ImsgChannel::new(s))
    }

    fn info(&self) -> Result<Vec<VmopInfoResult>, Failed> {
        let mut c = self.connect()?;
        c.send(&Message::GetInfoVmRequest(None))?;
        let mut v = Vec::new();
        loop {
            match c.recv()?.msg {
                Message::GetInfoVmData(i) => v.push(i),
                Message::GetInfoVmEndData => return Ok(v),
                other => return Err(format!("unexpected {other:?} in GET_INFO answer").into()),
            }
        }
    }

    /// Polls GET_INFO until `f` holds (`secs` at most).
    fn wait_info(
        &self,
        what: &str,
        secs: u64,
        f: impl Fn(&[VmopInfoResult]) -> bool,
    ) -> Result<Vec<VmopInfoResult>, Failed> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let i = self.info()?;
            if f(&i) {
                return Ok(i);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "not {what} within {secs} s: {i:?}\nlog:\n{}",
                    self.log_text()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `vmctl <args>` against this vmd: exit status and stdout.
    fn vmctl(&self, args: &[&str]) -> Result<(Option<i32>, String), Failed> {
        let out = Command::new(vmctl_binary()?)
            .args(args)
            .env("VMD_SOCKET", &self.socket)
            .stdin(Stdio::null())
            .output()?;
        Ok((
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        ))
    }

    /// The privsep children: control, vmm and priv, by title.
    fn children(&self) -> Result<BTreeMap<&'static str, i32>, Failed> {
        let procs = Procs::scan();
        let mut m = BTreeMap::new();
        for title in ["control", "vmm", "priv"] {
            let want = format!("vmd: {title}");
            let pid = procs
                .children(self.pid())
                .into_iter()
                .find(|p| procs.comm(*p) == want)
                .ok_or_else(|| format!("no {want} child of vmd {}", self.pid()))?;
            m.insert(title, pid);
        }
        Ok(m)
    }

    /// SIGTERM and a clean exit.
    fn stop(&mut self) -> Result<(), Failed> {
        daemon::stop(&mut self.child)
    }
}

impl Drop for Vmd {
    fn drop(&mut self) {
        daemon::end(&mut self.child);
    }
}

/// A test's directory, removed when the test ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn running(i: &VmopInfoResult) -> bool {
    i.state & VM_STATE_RUNNING != 0 && i.creator_pid > 0
}

fn find<'a>(infos: &'a [VmopInfoResult], name: &str) -> Option<&'a VmopInfoResult> {
    infos.iter().find(|i| i.name == name)
}

/// One snapshot of /proc: parents, command names and states.
struct Procs {
    ppid: BTreeMap<i32, i32>,
    comm: BTreeMap<i32, String>,
    state: BTreeMap<i32, char>,
}

impl Procs {
    fn scan() -> Procs {
        let mut p = Procs {
            ppid: BTreeMap::new(),
            comm: BTreeMap::new(),
            state: BTreeMap::new(),
        };
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return p;
        };
        for e in dir.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some(close) = stat.rfind(')') else {
                continue;
            };
            let comm = stat[stat.find('(').map_or(0, |i| i + 1)..close].to_string();
            let mut rest = stat[close + 1..].split_whitespace();
            let state = rest.next().and_then(|s| s.chars().next()).unwrap_or('?');
            let ppid = rest.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            p.ppid.insert(pid, ppid);
            p.comm.insert(pid, comm);
            p.state.insert(pid, state);
        }
        p
    }

    fn comm(&self, pid: i32) -> &str {
        self.comm.get(&pid).map_or("", |s| s.as_str())
    }

    fn children(&self, pid: i32) -> Vec<i32> {
        self.ppid
            .iter()
            .filter(|(_, pp)| **pp == pid)
            .map(|(p, _)| *p)
            .collect()
    }

    /// `pid` and everything below it.
    fn tree(&self, pid: i32) -> Vec<i32> {
        let mut out = vec![pid];
        let mut k = 0;
        while k < out.len() {
            out.extend(self.children(out[k]));
            k += 1;
        }
        out
    }
}

/// When the node of a pty was made (its ctime), None when there is none.
fn pty_made(tty: &str) -> Option<(i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(tty)
        .ok()
        .map(|m| (m.ctime(), m.ctime_nsec()))
}

/// Whether a process exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rfind(')')
            .is_some_and(|i| stat[i + 1..].trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// What a process holds: descriptors, memfds among them, ptys among them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Held {
    fds: usize,
    memfds: usize,
    ptys: usize,
}

fn held(pid: i32) -> Result<Held, Failed> {
    let mut h = Held::default();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let e = e?;
        h.fds += 1;
        let target = std::fs::read_link(e.path()).unwrap_or_default();
        let t = target.to_string_lossy();
        if t.starts_with("/memfd:") {
            h.memfds += 1;
        }
        if t == "/dev/ptmx" || t.starts_with("/dev/pts/") {
            h.ptys += 1;
        }
    }
    Ok(h)
}

fn rss_kb(pid: i32) -> Result<u64, Failed> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status").into())
}

/// What each daemon process (parent, control, vmm, priv) holds.
fn daemon_usage(d: &Vmd) -> Result<BTreeMap<&'static str, (Held, u64)>, Failed> {
    let mut m = BTreeMap::new();
    m.insert("parent", (held(d.pid())?, rss_kb(d.pid())?));
    for (title, pid) in d.children()? {
        m.insert(title, (held(pid)?, rss_kb(pid)?));
    }
    Ok(m)
}

/// `faults: <what>` on stderr, for the figures in the note.
fn figure(what: impl AsRef<str>) {
    let _ = writeln!(std::io::stderr(), "faults: {}", what.as_ref());
}

/// Compares two [`daemon_usage`] snapshots: descriptors must be the same,
/// memory may grow by `rss_slack_kb` at most.
fn same_usage(
    what: &str,
    before: &BTreeMap<&'static str, (Held, u64)>,
    after: &BTreeMap<&'static str, (Held, u64)>,
    rss_slack_kb: u64,
) -> Result<(), Failed> {
    let mut bad = Vec::new();
    for (title, (h0, r0)) in before {
        let (h1, r1) = after.get(title).ok_or("a daemon process went away")?;
        figure(format!(
            "{what}: {title}: fds {} -> {}, memfds {} -> {}, ptys {} -> {}, rss {r0} -> {r1} kB",
            h0.fds, h1.fds, h0.memfds, h1.memfds, h0.ptys, h1.ptys
        ));
        if h0 != h1 {
            bad.push(format!("{title} held {h0:?}, then {h1:?}"));
        }
        if *r1 > r0 + rss_slack_kb {
            bad.push(format!("{title} grew from {r0} kB to {r1} kB"));
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!("{what}: {}", bad.join("; ")).into())
    }
}

/// Waits until none of `pids` is alive.
fn wait_gone(pids: &[i32], secs: u64) -> Result<Duration, Vec<i32>> {
    let t = Instant::now();
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() {
            return Ok(t.elapsed());
        }
        if t.elapsed() > Duration::from_secs(secs) {
            return Err(left);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Ends whatever of `pids` is left (after a failed test), so that no
/// test leaves a guest behind.
fn reap_left(pids: &[i32]) {
    for p in pids {
        if alive(*p) {
            let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
        }
    }
}

fn vm_block(name: &str, dir: &Path, disk: Option<usize>, memory: &str) -> String {
    let disk = disk
        .map(|i| {
            format!(
                "\tdisk \"{}\"\n",
                dir.join(format!("disk{i}.img")).display()
            )
        })
        .unwrap_or_default();
    format!(
        "vm \"{name}\" {{\n\tmemory {memory}\n\tboot \"{}\"\n{disk}}}\n",
        dir.join("idle.bin").display()
    )
}

// ---------------------------------------------------------------------
// 1. vmd killed with SIGKILL while VMs run.

/// SIGKILL of the parent while two VMs (each with its vioblk device
/// process) run: every process of the old vmd ends, the VMs' ptys are
/// released, and a new vmd starts on the stale socket and pid file and
/// starts vm.conf's VMs again.  Then the same with the whole process
/// group killed at once (parent, control, vmm and priv together): the VM
/// and device processes, which are in process groups of their own, must
/// notice on their own.
fn vmd_sigkill() -> Result<(), Failed> {
    let dir = Vmd::dir("sigkill", 2)?;
    let _cleanup = TempDir(dir.clone());
    let conf = vm_block("a", &dir, Some(0), "2M") + &vm_block("b", &dir, Some(1), "2M");
    for round in ["parent", "all of vmd's processes"] {
        let mut d = Vmd::start(&dir, &conf)?;
        let infos = d.wait_info("both running", 30, |i| {
            ["a", "b"].iter().all(|n| find(i, n).is_some_and(running))
        })?;
        let procs = Procs::scan();
        let tree = procs.tree(d.pid());
        let vm_pids: Vec<i32> = infos.iter().map(|i| i.creator_pid).collect();
        let dev_pids: Vec<i32> = vm_pids.iter().flat_map(|p| procs.children(*p)).collect();
        // A pty by its name and when its node was made: a test running
        // beside this one may get the same number once it is free.
        let ttys: Vec<(String, Option<(i64, i64)>)> = infos
            .iter()
            .map(|i| (i.ttyname.clone(), pty_made(&i.ttyname)))
            .collect();
        if dev_pids.len() != 2 || tree.len() != 1 + 3 + 2 + 2 {
            return Err(format!(
                "want parent, 3 children, 2 VMs, 2 device processes; tree {tree:?}"
            )
            .into());
        }
        let t = Instant::now();
        if round == "parent" {
            kill(Pid::from_raw(d.pid()), Signal::SIGKILL)?;
        } else {
            for p in &tree[..4] {
                kill(Pid::from_raw(*p), Signal::SIGKILL)?;
            }
        }
        let _ = d.child.wait();
        let gone = wait_gone(&tree, 20);
        if let Err(left) = gone {
            reap_left(&tree);
            return Err(format!(
                "SIGKILL of {round}: still running 20 s later: {left:?} of {tree:?}; log:\n{}",
                d.log_text()
            )
            .into());
        }
        figure(format!(
            "SIGKILL of {round}: all {} processes gone in {:?}",
            tree.len(),
            t.elapsed()
        ));
        // The slave side of a pty disappears once its master is closed
        // (the kernel releases it from a work queue: soon, not at once).
        let still = || {
            ttys.iter()
                .filter(|(t, made)| made.is_none() || pty_made(t) == *made)
                .map(|(t, _)| t.clone())
                .collect::<Vec<_>>()
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        while !still().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !still().is_empty() {
            return Err(format!("ptys {:?} still exist after SIGKILL of {round}", still()).into());
        }
        if !d.socket.exists() {
            return Err("the test wants a stale socket, and there is none".into());
        }
        drop(d);
    }
    // A vmd after the stale socket and pid file: it starts vm.conf's VMs.
    let mut d = Vmd::start(&dir, &conf)?;
    d.wait_info("both running again", 30, |i| {
        ["a", "b"].iter().all(|n| find(i, n).is_some_and(running))
    })?;
    let pidfile = std::fs::read_to_string(dir.join("vmd.pid"))?;
    if pidfile.trim() != d.pid().to_string() {
        return Err(format!("pid file says {pidfile:?}, vmd is {}", d.pid()).into());
    }
    d.stop()
}

/// Links of the calling thread's network namespace whose name starts
/// with `prefix` (`ip -o link`).
fn links(prefix: &str) -> Result<Vec<String>, Failed> {
    let out = Command::new("ip").args(["-o", "link", "show"]).output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with(prefix))
        .collect())
}

/// Why the tap test cannot run here, if it cannot.
fn missing_netns() -> Option<String> {
    if !cfg!(target_os = "linux") {
        return Some("Linux only (a network namespace of its own)".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("needs ip (iproute2)".into());
    }
    std::thread::spawn(unshare_net)
        .join()
        .unwrap_or(Err(nix::errno::Errno::EIO))
        .err()
        .map(|e| format!("needs network namespaces (unshare: {e})"))
}

/// A network namespace of its own for the calling thread.
fn unshare_net() -> nix::Result<()> {
    #[cfg(target_os = "linux")]
    return nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET);
    #[cfg(not(target_os = "linux"))]
    Err(nix::errno::Errno::ENOSYS)
}

/// SIGKILL of vmd while a VM with two interfaces (a local one and one
/// on no switch) runs, in a network namespace of the test's own: the
/// VM's taps go with its processes, and a new vmd makes them again.
fn vmd_sigkill_releases_taps() -> Result<(), Failed> {
    std::thread::spawn(|| -> Result<(), Failed> {
        unshare_net()?;
        let dir = Vmd::dir("sigkill-taps", 1)?;
        let _cleanup = TempDir(dir.clone());
        let conf = vm_block("n", &dir, Some(0), "2M")
            .replace("}\n", "\tlocal interface\n\tinterface\n}\n");
        let wait_taps = |d: &Vmd| -> Result<Vec<String>, Failed> {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let t = links("tap")?;
                if t.len() == 2 {
                    return Ok(t);
                }
                if Instant::now() > deadline {
                    return Err(format!("taps {t:?}; log:\n{}", d.log_text()).into());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        let mut d = Vmd::start(&dir, &conf)?;
        d.wait_info("n running", 30, |i| find(i, "n").is_some_and(running))?;
        let taps = wait_taps(&d)?;
        let tree = Procs::scan().tree(d.pid());
        let t = Instant::now();
        kill(Pid::from_raw(d.pid()), Signal::SIGKILL)?;
        let _ = d.child.wait();
        if let Err(left) = wait_gone(&tree, 20) {
            reap_left(&tree);
            return Err(format!("{left:?} of {tree:?} left after SIGKILL").into());
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !links("tap")?.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let left = links("tap")?;
        if !left.is_empty() {
            return Err(format!("taps {left:?} outlived vmd").into());
        }
        figure(format!(
            "SIGKILL of vmd with a VM on taps {taps:?}: processes and taps gone in {:?}",
            t.elapsed()
        ));
        drop(d);
        let mut d = Vmd::start(&dir, &conf)?;
        d.wait_info("n running again", 30, |i| find(i, "n").is_some_and(running))?;
        wait_taps(&d)?;
        d.stop()
    })
    .join()
    .map_err(|_| Failed::from("test thread panicked"))?
}

/// The vmm process killed with SIGKILL while one of its VM processes is
/// stopped (SIGSTOP): a stopped process reads no end of file, yet it must
/// not stay behind as an orphan holding the guest's memory and pty.  The
/// parent notices it lost vmm and ends; nothing of vmd is left.
fn vmm_killed_while_a_vm_is_stopped() -> Result<(), Failed> {
    let dir = Vmd::dir("vmm-kill", 2)?;
    let _cleanup = TempDir(dir.clone());
    let conf = vm_block("a", &dir, Some(0), "2M") + &vm_block("b", &dir, Some(1), "2M");
    let mut d = Vmd::start(&dir, &conf)?;
    let infos = d.wait_info("both running", 30, |i| {
        ["a", "b"].iter().all(|n| find(i, n).is_some_and(running))
    })?;
    let tree = Procs::scan().tree(d.pid());
    let stopped = find(&infos, "a").unwrap().creator_pid;
    kill(Pid::from_raw(stopped), Signal::SIGSTOP)?;
    let vmm = d.children()?["vmm"];
    let t = Instant::now();
    kill(Pid::from_raw(vmm), Signal::SIGKILL)?;
    let gone = wait_gone(&tree, 20);
    let _ = kill(Pid::from_raw(stopped), Signal::SIGCONT);
    if let Err(left) = gone {
        reap_left(&tree);
        let _ = d.child.wait();
        return Err(format!(
            "SIGKILL of vmm with a stopped VM: {left:?} of {tree:?} left; log:\n{}",
            d.log_text()
        )
        .into());
    }
    figure(format!(
        "SIGKILL of vmm, one VM process stopped: all {} processes gone in {:?}",
        tree.len(),
        t.elapsed()
    ));
    // vmd.c's way: "lost child", vmd_shutdown, exit 0.
    d.child.wait()?;
    if !d.log_text().contains("lost child") {
        return Err(format!("no 'lost child' in the log:\n{}", d.log_text()).into());
    }
    Ok(())
}

// ---------------------------------------------------------------------
// 2. VM and device processes killed, stopped or failing, many times.

/// `vmctl status` rows: name to (pid, state).
fn status_rows(text: &str) -> BTreeMap<String, (String, String)> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // ID PID VCPUS MAXMEM CURMEM TTY OWNER STATE NAME
            (f.len() >= 9).then(|| (f[f.len() - 1].to_string(), (f[1].into(), f[7].into())))
        })
        .collect()
}

/// A VM started by hand (`vmctl start`) through fault after fault: its
/// process killed, its device process killed (the VM process then exits
/// with an error), its process stopped with SIGSTOP and continued, its
/// device process stopped while the VM is stopped, and a graceful stop.  After each, vmd notices, `vmctl status` says so, a
/// steady VM from vm.conf is untouched, and a new start works.  After
/// the cycles, the daemon's processes hold the descriptors and about the
/// memory they held after the first one, and no pty or memfd is left.
fn fault_cycles() -> Result<(), Failed> {
    let (cycles, stop_secs) = if full() { (100, 60) } else { (12, 1) };
    // As a supervisor that reaps orphans (systemd --user, a container's
    // init): processes that lose their parent come here, in this session,
    // so a stopped orphan gets no SIGHUP from the kernel (an orphaned
    // process group's) and only vmd can end it.
    #[cfg(target_os = "linux")]
    nix::sys::prctl::set_child_subreaper(true)?;
    let dir = Vmd::dir("cycles", 2)?;
    let _cleanup = TempDir(dir.clone());
    let conf = vm_block("steady", &dir, Some(1), "2M");
    let mut d = Vmd::start(&dir, &conf)?;
    let steady = d.wait_info("steady running", 30, |i| {
        find(i, "steady").is_some_and(running)
    })?;
    let steady_pid = find(&steady, "steady").unwrap().creator_pid;
    let img = dir.join("idle.bin");
    let disk = dir.join("disk0.img");
    let start = [
        "start",
        "-m",
        "2M",
        "-b",
        img.to_str().unwrap(),
        "-d",
        disk.to_str().unwrap(),
        "cyc",
    ];
    let mut baseline = None;
    let mut stop_lat = Vec::new();
    let t0 = Instant::now();
    for k in 0..cycles {
        let (code, out) = d.vmctl(&start)?;
        if code != Some(0) {
            return Err(format!("cycle {k}: vmctl start: {code:?} {out}").into());
        }
        let infos = d.wait_info("cyc running", 15, |i| find(i, "cyc").is_some_and(running))?;
        let vm = find(&infos, "cyc").unwrap().creator_pid;
        let (_, status) = d.vmctl(&["status"])?;
        let rows = status_rows(&status);
        if rows.get("cyc").map(|r| (r.0.as_str(), r.1.as_str()))
            != Some((vm.to_string().as_str(), "running"))
        {
            return Err(format!("cycle {k}: vmctl status:\n{status}").into());
        }
        let procs = Procs::scan();
        let devs = procs.children(vm);
        if devs.len() != 1 {
            return Err(format!("cycle {k}: vm process {vm} has children {devs:?}").into());
        }
        // Five faults in turn; the stop of a minute (full run) once.
        match k % 5 {
            0 => kill(Pid::from_raw(vm), Signal::SIGKILL)?,
            1 => kill(Pid::from_raw(devs[0]), Signal::SIGKILL)?,
            2 => {
                let secs = if k == 2 { stop_secs } else { 1 };
                kill(Pid::from_raw(vm), Signal::SIGSTOP)?;
                let until = Instant::now() + Duration::from_secs(secs);
                // vmd keeps answering meanwhile, and says the VM runs.
                while Instant::now() < until {
                    let t = Instant::now();
                    let i = d.info()?;
                    stop_lat.push(t.elapsed());
                    if !find(&i, "cyc").is_some_and(running) {
                        return Err(format!("cycle {k}: stopped VM not running: {i:?}").into());
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                kill(Pid::from_raw(vm), Signal::SIGCONT)?;
                if !alive(vm) {
                    return Err(format!("cycle {k}: vm process died of SIGSTOP").into());
                }
                let (code, out) = d.vmctl(&["stop", "-w", "cyc"])?;
                if code != Some(0) {
                    return Err(format!("cycle {k}: vmctl stop after SIGCONT: {out}").into());
                }
            }
            // The device process stopped, and the VM stopped meanwhile:
            // the device process, stopped, reads no end of file, yet must
            // not stay behind.
            3 => {
                kill(Pid::from_raw(devs[0]), Signal::SIGSTOP)?;
                let until = Instant::now() + Duration::from_secs(5);
                while Procs::scan().state.get(&devs[0]) != Some(&'T') && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let (code, out) = d.vmctl(&["stop", "-w", "cyc"])?;
                if code != Some(0) {
                    let _ = kill(Pid::from_raw(devs[0]), Signal::SIGCONT);
                    return Err(format!("cycle {k}: vmctl stop, device stopped: {out}").into());
                }
            }
            _ => {
                let (code, out) = d.vmctl(&["stop", "-w", "cyc"])?;
                if code != Some(0) {
                    return Err(format!("cycle {k}: vmctl stop: {out}").into());
                }
            }
        }
        d.wait_info("cyc gone", 15, |i| find(i, "cyc").is_none())?;
        if let Err(left) = wait_gone(&[vm, devs[0]], 15) {
            reap_left(&left);
            return Err(format!("cycle {k}: processes {left:?} left").into());
        }
        let (_, status) = d.vmctl(&["status"])?;
        let rows = status_rows(&status);
        if rows.contains_key("cyc")
            || rows.get("steady").map(|r| r.0.clone()) != Some(steady_pid.to_string())
        {
            return Err(format!("cycle {k}: vmctl status after the fault:\n{status}").into());
        }
        if k == 0 {
            baseline = Some(daemon_usage(&d)?);
        }
    }
    figure(format!(
        "{cycles} fault cycles in {:?} (SIGSTOP of {stop_secs} s once)",
        t0.elapsed()
    ));
    if let Some(max) = stop_lat.iter().max() {
        figure(format!(
            "GET_INFO while a VM process is stopped: {} answers, max {max:?}",
            stop_lat.len()
        ));
        if *max > Duration::from_secs(1) {
            return Err(format!("an answer took {max:?} while a VM was stopped").into());
        }
    }
    let after = daemon_usage(&d)?;
    same_usage(
        &format!("after {cycles} fault cycles"),
        baseline.as_ref().unwrap(),
        &after,
        1024,
    )?;
    // Only the steady VM and its device process are below vmm.
    let procs = Procs::scan();
    let vmm = d.children()?["vmm"];
    let below = procs.tree(vmm);
    if below.len() != 3 {
        return Err(format!("below vmm: {below:?}, want vmm, steady, its device").into());
    }
    let text = d.log_text();
    for want in [
        "killed by SIGKILL",
        "exited",
        "did not exit within 2 s of shutdown, killing it",
    ] {
        if !text.contains(want) {
            return Err(format!("nothing about {want:?} in the log:\n{text}").into());
        }
    }
    d.stop()
}

// ---------------------------------------------------------------------
// 3. A full disk.

/// A tmpfs of `size` mounted on `dir` (created), unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, Failed> {
        std::fs::create_dir_all(dir)?;
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "vmd-faults"])
            .arg(dir)
            .status()?;
        if !st.success() {
            return Err(format!("mount -t tmpfs on {}: {st}", dir.display()).into());
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The test guest's script for the full-disk test: a stream of flushed
/// 4 KiB writes from 2 MiB on (block i filled with (i % 251) + 1) until
/// one fails, then a read of the first block, a rewrite of it (its
/// space is allocated already: it must still work) and a flush.
const FULL_SCRIPT: &str = "blk-write-stream 2M 3000 flush\nblk-read-pattern 2M 4096 1\n\
                           blk-write-pattern 2M 4096 0x5a\nblk-read-pattern 2M 4096 0x5a\nblk-flush\n";

/// ENOSPC under a running VM, on a raw and on a qcow2 image that live on
/// a tmpfs of 3 MiB while the guest sees a disk of 32 MiB: the guest's
/// write that does not fit completes with VIRTIO_BLK_S_IOERR (the test
/// guest prints `ioerr`), the writes before it read back, the space the
/// image has keeps working, vmd keeps running and answering, and
/// `qemu-img check` finds the qcow2 image consistent.
fn disk_full() -> Result<(), Failed> {
    let dir = Vmd::dir("enospc", 0)?;
    let _cleanup = TempDir(dir.clone());
    let elf = testguest_support::elf_path();
    let script = testguest_support::script_sector(FULL_SCRIPT)?;
    // The ELF boot reads its script from LBA 1 of the first disk.
    let src = dir.join("src.img");
    {
        let f = std::fs::File::create(&src)?;
        std::os::unix::fs::FileExt::write_all_at(&f, &script, 512)?;
        f.set_len(32 << 20)?;
    }
    for format in ["raw", "qcow2"] {
        let fs = Tmpfs::mount(&dir.join(format!("fs-{format}")), "3M")?;
        let img = fs.0.join(format!("disk.{format}"));
        testguest_support::qemu_img(&[
            "convert",
            "-f",
            "raw",
            "-O",
            format,
            src.to_str().unwrap(),
            img.to_str().unwrap(),
        ])?;
        let conf = format!(
            "vm \"full\" {{\n\tmemory 32M\n\tboot \"{}\"\n\tdisk \"{}\" format {format}\n}}\n",
            elf.display(),
            img.display()
        );
        let mut d = Vmd::start(&dir, &conf)?;
        let infos = d.wait_info("full running", 30, |i| find(i, "full").is_some_and(running))?;
        let tty = find(&infos, "full").unwrap().ttyname.clone();
        let text = daemon::read_tty(&tty, "\ndone")?;
        // vmd is still there and answers.
        d.info()?;
        let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
        let wrote = lines
            .iter()
            .filter_map(|l| l.strip_prefix("blk-write-stream: wrote "))
            .filter_map(|n| n.parse::<u64>().ok())
            .max()
            .ok_or_else(|| format!("{format}: no write completed:\n{text}"))?;
        let failed = format!("blk-write-stream: block {}: ioerr", wrote + 1);
        let want = [
            failed.as_str(),
            "blk-read-pattern: off 0x200000 len 0x1000 byte 0x01: ok",
            "blk-write-pattern: off 0x200000 len 0x1000 byte 0x5a: ok",
            "blk-read-pattern: off 0x200000 len 0x1000 byte 0x5a: ok",
            "blk-flush: ok",
        ];
        for w in want {
            if !lines.contains(&w) {
                return Err(format!("{format}: no {w:?} in the transcript:\n{text}").into());
            }
        }
        figure(format!(
            "ENOSPC on {format} (3 MiB tmpfs): {} 4 KiB writes completed, then ioerr",
            wrote + 1
        ));
        // The guest halts with interrupts on (it stays running); vmd
        // stops it and closes the image before it is checked.
        d.stop()?;
        // Every completed write reads back (block 0 was rewritten).
        let copy = dir.join("check.raw");
        testguest_support::qemu_img(&[
            "convert",
            "-f",
            format,
            "-O",
            "raw",
            img.to_str().unwrap(),
            copy.to_str().unwrap(),
        ])?;
        let data = std::fs::read(&copy)?;
        std::fs::remove_file(&copy)?;
        for i in 0..=wrote {
            let byte = if i == 0 { 0x5a } else { (i % 251) as u8 + 1 };
            let at = (2 << 20) + 4096 * i as usize;
            if data[at..at + 4096].iter().any(|b| *b != byte) {
                return Err(format!("{format}: block {i} does not read back").into());
            }
        }
        if format == "qcow2" {
            let out = Command::new("qemu-img")
                .args(["check", img.to_str().unwrap()])
                .output()?;
            // 0: clean; 3: leaked clusters only (as QEMU leaves them).
            if !matches!(out.status.code(), Some(0) | Some(3)) {
                return Err(format!(
                    "qemu-img check after ENOSPC: {:?}\n{}",
                    out.status.code(),
                    String::from_utf8_lossy(&out.stdout)
                )
                .into());
            }
            figure(format!(
                "qemu-img check after ENOSPC: exit {:?}",
                out.status.code()
            ));
        }
        drop(fs);
    }
    Ok(())
}

/// ENOSPC at a qcow2 metadata update: a 4 KiB write at 600 MiB needs a
/// new L2 table and a data cluster; the data cluster fits in what the
/// file system has left, the L2 table (written at the FLUSH) does not.
/// The flush fails with ioerr, the image refuses further requests
/// (poisoned: its tables are ahead of the file) without taking vmd down,
/// and the file stays consistent: `qemu-img check` finds at most leaked
/// clusters and the data written before reads back.
fn disk_full_at_a_metadata_update() -> Result<(), Failed> {
    let dir = Vmd::dir("enospc-meta", 0)?;
    let _cleanup = TempDir(dir.clone());
    let elf = testguest_support::elf_path();
    let script = testguest_support::script_sector(
        "blk-write-pattern 600M 4096 0x77\nblk-flush\nblk-read-pattern 2M 4096 0x33\n",
    )?;
    let src = dir.join("src.img");
    {
        let f = std::fs::File::create(&src)?;
        std::os::unix::fs::FileExt::write_all_at(&f, &script, 512)?;
        std::os::unix::fs::FileExt::write_all_at(&f, &[0x33; 4096], 2 << 20)?;
        f.set_len(1 << 30)?;
    }
    let fs = Tmpfs::mount(&dir.join("fs"), "1M")?;
    let img = fs.0.join("disk.qcow2");
    let p = |p: &Path| p.to_str().unwrap().to_string();
    testguest_support::qemu_img(&["convert", "-f", "raw", "-O", "qcow2", &p(&src), &p(&img)])?;
    // Leave 96 KiB: one 64 KiB data cluster fits, the L2 table after it
    // does not.
    let free = nix::sys::statvfs::statvfs(&fs.0)?;
    let avail = free.blocks_available() * free.fragment_size();
    let filler = avail.checked_sub(96 << 10).ok_or("tmpfs too small")?;
    std::fs::write(fs.0.join("filler"), vec![0xffu8; filler as usize])?;
    let conf = format!(
        "vm \"meta\" {{\n\tmemory 32M\n\tboot \"{}\"\n\tdisk \"{}\" format qcow2\n}}\n",
        elf.display(),
        img.display()
    );
    let mut d = Vmd::start(&dir, &conf)?;
    let infos = d.wait_info("meta running", 30, |i| find(i, "meta").is_some_and(running))?;
    let tty = find(&infos, "meta").unwrap().ttyname.clone();
    let text = daemon::read_tty(&tty, "\ndone")?;
    d.info()?;
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    for w in [
        "blk-write-pattern: off 0x25800000 len 0x1000 byte 0x77: ok",
        "blk-flush: ioerr",
        "blk-read-pattern: off 0x200000 len 0x1000 byte 0x33: ioerr",
    ] {
        if !lines.contains(&w) {
            return Err(format!("no {w:?} in the transcript:\n{text}").into());
        }
    }
    d.stop()?;
    let out = Command::new("qemu-img")
        .args(["check", &p(&img)])
        .output()?;
    figure(format!(
        "ENOSPC at a qcow2 L2 table write-back: flush ioerr, image poisoned; qemu-img check exit {:?}",
        out.status.code()
    ));
    if !matches!(out.status.code(), Some(0) | Some(3)) {
        return Err(format!(
            "qemu-img check: {:?}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout)
        )
        .into());
    }
    let copy = dir.join("check.raw");
    testguest_support::qemu_img(&["convert", "-f", "qcow2", "-O", "raw", &p(&img), &p(&copy)])?;
    let data = std::fs::read(&copy)?;
    if data[2 << 20..(2 << 20) + 4096].iter().any(|b| *b != 0x33) {
        return Err("the data written before does not read back".into());
    }
    drop(fs);
    Ok(())
}

// ---------------------------------------------------------------------
// 4. Control socket load.

/// GET_INFO round trips on fresh connections: their latencies.
fn probe(d: &Vmd, n: usize) -> Result<Vec<Duration>, Failed> {
    let mut v = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        d.info()?;
        v.push(t.elapsed());
    }
    Ok(v)
}

/// Many clients at once: some send half a header and stall, some send
/// requests and never read, the rest connect and stay idle.  Meanwhile
/// other clients are answered within a second; once they all leave, the
/// control process and the parent hold what they held before.
fn control_load() -> Result<(), Failed> {
    let clients = if full() { 1000 } else { 300 };
    let dir = Vmd::dir("load", 0)?;
    let _cleanup = TempDir(dir.clone());
    // Disabled VMs make each GET_INFO answer a list.
    let mut conf = String::new();
    for i in 0..10 {
        conf.push_str(&format!(
            "vm \"load{i}\" {{\n\tdisable\n\tmemory 2M\n\tboot \"{}\"\n}}\n",
            dir.join("idle.bin").display()
        ));
    }
    let mut d = Vmd::start(&dir, &conf)?;
    // Warm up, then the baseline once the probes' connections are gone.
    probe(&d, 20)?;
    std::thread::sleep(Duration::from_millis(300));
    let before = daemon_usage(&d)?;
    let one = {
        use std::io::Read;
        let (mut a, b) = ImsgChannel::pair()?;
        a.send(&Message::GetInfoVmRequest(None))?;
        let mut buf = [0u8; 256];
        let n = b.socket().read(&mut buf)?;
        buf[..n].to_vec()
    };
    let t = Instant::now();
    let mut conns = Vec::new();
    for k in 0..clients {
        let mut s = UnixStream::connect(&d.socket)?;
        match k % 3 {
            // Half a header, then nothing.
            0 => s.write_all(&one[..8])?,
            // Requests, never a read: 64 of them.
            1 => {
                s.set_nonblocking(true)?;
                let many: Vec<u8> = one.iter().copied().cycle().take(one.len() * 64).collect();
                let _ = s.write(&many);
            }
            _ => {}
        }
        conns.push(s);
    }
    let connected = t.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let during = probe(&d, 20)?;
    let max_during = *during.iter().max().unwrap();
    let peak = daemon_usage(&d)?;
    figure(format!(
        "{clients} clients connected in {connected:?}; GET_INFO meanwhile: max {max_during:?}"
    ));
    figure(format!(
        "control with {clients} clients: fds {}, rss {} kB",
        peak["control"].0.fds, peak["control"].1
    ));
    drop(conns);
    // The control process sees each hang-up; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let a = daemon_usage(&d)?;
        if a["control"].0 == before["control"].0 || Instant::now() > deadline {
            break a;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let after_lat = probe(&d, 20)?;
    figure(format!(
        "GET_INFO after: max {:?}",
        after_lat.iter().max().unwrap()
    ));
    if max_during > Duration::from_secs(1) {
        return Err(format!("a client waited {max_during:?} under load").into());
    }
    same_usage(&format!("{clients} clients"), &before, &after, 4096)?;
    d.stop()
}

// ---------------------------------------------------------------------
// 5. Many VMs at once.

/// `n` VMs of 2 MB from vm.conf, all started at once (`staggered start
/// parallel n`), then `vmctl stop -a -w`: all start, all stop, and no
/// process, descriptor, pty or memfd is left.
fn many_vms() -> Result<(), Failed> {
    let n = if full() { 50 } else { 12 };
    let dir = Vmd::dir("many", n)?;
    let _cleanup = TempDir(dir.clone());
    let mut conf = format!("staggered start parallel {n} delay 1\n");
    // Warm-up VM (disabled): started and stopped once for the baseline.
    conf.push_str(&vm_block("warm", &dir, None, "2M").replace("{\n", "{\n\tdisable\n"));
    for i in 0..n {
        conf.push_str(&vm_block(&format!("m{i:02}"), &dir, Some(i), "2M"));
    }
    let t = Instant::now();
    let mut d = Vmd::start(&dir, &conf)?;
    let infos = d.wait_info(&format!("{n} running"), 120, |i| {
        i.iter().filter(|v| running(v)).count() == n
    })?;
    let started = t.elapsed();
    let procs = Procs::scan();
    let vmm = d.children()?["vmm"];
    let tree = procs.tree(vmm);
    if tree.len() != 1 + 2 * n {
        return Err(format!("below vmm: {} processes, want {}", tree.len(), 1 + 2 * n).into());
    }
    let ttys: BTreeSet<String> = infos.iter().map(|i| i.ttyname.clone()).collect();
    let peak = daemon_usage(&d)?;
    let t = Instant::now();
    let (code, out) = d.vmctl(&["stop", "-a", "-w"])?;
    let stopped = t.elapsed();
    figure(format!(
        "{n} VMs: all running {started:?} after vmd's start; vmctl stop -a -w: {stopped:?}"
    ));
    figure(format!(
        "{n} VMs running: parent fds {} (ptys {}), vmm fds {}",
        peak["parent"].0.fds, peak["parent"].0.ptys, peak["vmm"].0.fds
    ));
    if code != Some(0) {
        reap_left(&tree[1..]);
        return Err(format!("vmctl stop -a -w: {code:?}: {out}").into());
    }
    if let Err(left) = wait_gone(&tree[1..], 15) {
        reap_left(&left);
        return Err(format!("{} processes left after stop -a -w", left.len()).into());
    }
    let infos = d.info()?;
    if infos.iter().any(running) {
        return Err(format!("still running after stop -a -w: {infos:?}").into());
    }
    // Each VM held one descriptor in vmm (its channel) and, in the
    // parent, its pty's two ends and its disk: all of them are let go
    // (vmm reaps the last ones a moment after vmctl has its answers).
    let want_vmm = peak["vmm"].0.fds - n;
    let want_parent = peak["parent"].0.fds - peak["parent"].0.ptys - n;
    let deadline = Instant::now() + Duration::from_secs(5);
    let after = loop {
        let a = daemon_usage(&d)?;
        let settled = a["vmm"].0.fds == want_vmm && a["parent"].0.fds == want_parent;
        if settled || Instant::now() > deadline {
            break a;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if after["vmm"].0.memfds + after["parent"].0.memfds + after["control"].0.memfds != 0 {
        return Err(format!("memfds in the daemon: {after:?}").into());
    }
    figure(format!(
        "after stop -a -w: parent fds {} (ptys {}), vmm fds {}; {} ttys used",
        after["parent"].0.fds,
        after["parent"].0.ptys,
        after["vmm"].0.fds,
        ttys.len()
    ));
    if after["vmm"].0.fds != want_vmm
        || after["parent"].0
            != (Held {
                fds: want_parent,
                memfds: 0,
                ptys: 0,
            })
    {
        return Err(format!(
            "after stop -a -w: vmm holds {} descriptors (want {want_vmm}), the parent {:?} (want {want_parent}, no pty)",
            after["vmm"].0.fds, after["parent"].0
        )
        .into());
    }
    d.stop()
}

fn main() {
    let args = Arguments::from_args();
    // Processes, descriptors and memory are counted through /proc.
    let skip = (!cfg!(target_os = "linux"))
        .then(|| "Linux only (counts through /proc)".to_string())
        .or_else(support::missing_root)
        .or_else(support::missing_vmm);
    let tests = vec![
        Trial::test("faults_vmd_sigkill_ends_its_vms_and_restarts", vmd_sigkill),
        Trial::test(
            "faults_vmd_sigkill_releases_taps",
            vmd_sigkill_releases_taps,
        ),
        Trial::test(
            "faults_vmm_killed_while_a_vm_is_stopped",
            vmm_killed_while_a_vm_is_stopped,
        ),
        Trial::test(
            "faults_vm_and_device_process_kill_stop_cycles",
            fault_cycles,
        ),
        Trial::test("faults_disk_full_raw_and_qcow2", disk_full),
        Trial::test(
            "faults_disk_full_at_a_qcow2_metadata_update",
            disk_full_at_a_metadata_update,
        ),
        Trial::test("faults_control_socket_load", control_load),
        Trial::test("faults_many_vms_start_and_stop", many_vms),
    ];
    let tests = tests
        .into_iter()
        .map(|t| {
            let why = if t.name().starts_with("faults_disk_full") {
                skip.clone()
                    .or_else(testguest_support::missing_guest)
                    .or_else(testguest_support::missing_qemu)
            } else if t.name() == "faults_vmd_sigkill_releases_taps" {
                skip.clone().or_else(missing_netns)
            } else {
                skip.clone()
            };
            support::skip_if(t, why)
        })
        .collect();
    libtest_mimic::run(&args, tests).exit();
}
