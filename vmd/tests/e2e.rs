//! vmd and vmctl together, as an administrator uses them: `vmd -d` with a
//! vm.conf in a temporary directory (its own control socket through
//! VMD_SOCKET, privileges dropped to `_vmd` or `nobody` through
//! VMD_USER), driven by the real vmctl binary, whose output is checked
//! against OpenBSD's texts; the non-root checks run as a user made for the
//! test with useradd (and removed after it).  Needs root, /dev/kvm (or /dev/vmm) and
//! SeaBIOS from scripts/fetch-assets.sh; reported as ignored with the
//! reason where any is missing.
//!
//! vmctl is another package's binary, so there is no CARGO_BIN_EXE for
//! it: it is the one next to vmd (`target/<profile>/vmctl`), which a
//! workspace build makes, or `cargo test -p vmd` has cargo build when it
//! is missing or older than its sources; `VMCTL=<path>` names another.
#[path = "support/eltorito.rs"]
mod eltorito;
mod support;

use libtest_mimic::{Arguments, Failed, Trial};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::daemon::{self, read_tty, vmd_user};
use support::{bios_path, vmctl_binary};

/// vmctl's status header (OpenBSD's vmctl.c `print_vm_info`).
const HEADER: &str = "   ID   PID VCPUS  MAXMEM  CURMEM     TTY        OWNER    STATE NAME";

/// What root-only commands print for anyone else: vmd answers
/// IMSG_CTL_FAIL with EPERM.
const DENIED: &str = "vmctl: command failed: Operation not permitted\n";

/// How a command ended.
struct Out {
    status: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to its end, killing it after `secs` seconds.
fn run_bounded(mut cmd: Command, secs: u64) -> Result<Out, Failed> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as _));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{cmd:?} did not end within {secs} s").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Out {
        status: status.code(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// A user other than root.
#[derive(Clone, Copy)]
struct User {
    uid: u32,
    gid: u32,
}

/// vmd -d in a temporary directory; stopped, with every VM process it
/// made, and the directory removed when dropped.
struct Vmd {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
    vmctl: PathBuf,
    /// VM processes seen, killed if they outlive vmd.
    vm_pids: Vec<i32>,
}

impl Vmd {
    fn start(dir: PathBuf, conf: &str, vmctl: &Path) -> Result<Vmd, Failed> {
        let socket = dir.join("vmd.sock");
        let cfg = dir.join("vm.conf");
        std::fs::write(&cfg, conf)?;
        // A copy that an unprivileged user can run wherever the build is.
        let copy = dir.join("vmctl");
        std::fs::copy(vmctl, &copy)?;
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))?;
        let log = std::fs::File::create(dir.join("vmd.log"))?;
        let child = daemon::command(&cfg, &socket)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let mut d = Vmd {
            child,
            dir,
            socket,
            vmctl: copy,
            vm_pids: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&d.socket).is_err() {
            if let Some(st) = d.child.try_wait()? {
                return Err(format!("vmd exited with {st}:\n{}", d.log()).into());
            }
            if Instant::now() > deadline {
                return Err(format!("no control socket within 10 s:\n{}", d.log()).into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(d)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("vmd.log")).unwrap_or_default()
    }

    fn command(&self, user: Option<User>, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.vmctl);
        cmd.args(args)
            .env("VMD_SOCKET", &self.socket)
            .current_dir(&self.dir);
        if let Some(u) = user {
            cmd.uid(u.uid).gid(u.gid);
        }
        cmd
    }

    /// `vmctl args...` as root, or as `user`; echoed to stderr.
    fn vmctl_as(&self, user: Option<User>, args: &[&str]) -> Result<Out, Failed> {
        let out = run_bounded(self.command(user, args), 60)?;
        eprintln!(
            "{} vmctl {}\n{}{}(exit {:?})",
            if user.is_some() { "$" } else { "#" },
            args.join(" "),
            out.stdout,
            out.stderr,
            out.status
        );
        Ok(out)
    }

    fn vmctl(&self, args: &[&str]) -> Result<Out, Failed> {
        self.vmctl_as(None, args)
    }

    /// `vmctl status [args]` that must exit `status`; its rows.
    fn status(&self, args: &[&str], status: i32) -> Result<Vec<Row>, Failed> {
        let mut all = vec!["status"];
        all.extend_from_slice(args);
        let out = self.vmctl(&all)?;
        if out.status != Some(status) || !out.stderr.is_empty() {
            return Err(format!("vmctl {}: want exit {status}, no stderr", all.join(" ")).into());
        }
        parse_status(&out.stdout)
    }

    /// Polls `vmctl status` until `f` holds for the rows.
    fn wait_status(&self, what: &str, f: impl Fn(&[Row]) -> bool) -> Result<Vec<Row>, Failed> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let out = run_bounded(self.command(None, &["status"]), 60)?;
            let rows = parse_status(&out.stdout)?;
            if f(&rows) {
                return Ok(rows);
            }
            if Instant::now() > deadline {
                return Err(format!("not {what} within 15 s:\n{}", out.stdout).into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM: vmd stops its VMs and exits 0.
    fn stop(&mut self) -> Result<(), Failed> {
        daemon::stop(&mut self.child)
    }
}

impl Drop for Vmd {
    fn drop(&mut self) {
        daemon::end(&mut self.child);
        for &pid in &self.vm_pids {
            if alive(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

/// Waits for a process to be gone.
fn wait_gone(pid: i32) -> Result<(), Failed> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        if Instant::now() > deadline {
            return Err(format!("VM process {pid} still alive 10 s after its stop").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The parent of a process (Linux's /proc), if it can be read.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...; comm may hold spaces and parentheses.
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The children of a process (Linux's /proc).
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| parent_of(p) == Some(pid))
        .collect()
}

/// One row of `vmctl status`.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    id: String,
    pid: String,
    vcpus: String,
    maxmem: String,
    curmem: String,
    tty: String,
    owner: String,
    state: String,
    name: String,
}

/// The table: OpenBSD's header, then rows in its column widths (5, 5, 5,
/// 7, 7, 7, 12, 8, right-aligned, then the name).
fn parse_status(out: &str) -> Result<Vec<Row>, Failed> {
    let mut lines = out.lines();
    if lines.next() != Some(HEADER) {
        return Err(format!("status: no header:\n{out}").into());
    }
    let mut rows = Vec::new();
    for line in lines {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 9 {
            return Err(format!("status: not 9 columns: {line:?}").into());
        }
        let again = format!(
            "{:>5} {:>5} {:>5} {:>7} {:>7} {:>7} {:>12} {:>8} {}",
            f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8]
        );
        if again != line {
            return Err(format!("status: columns not aligned:\n{line:?}\n{again:?}").into());
        }
        rows.push(Row {
            id: f[0].into(),
            pid: f[1].into(),
            vcpus: f[2].into(),
            maxmem: f[3].into(),
            curmem: f[4].into(),
            tty: f[5].into(),
            owner: f[6].into(),
            state: f[7].into(),
            name: f[8].into(),
        });
    }
    Ok(rows)
}

fn row<'a>(rows: &'a [Row], name: &str) -> Option<&'a Row> {
    rows.iter().find(|r| r.name == name)
}

/// A running VM's row: its process (a grandchild of vmd, through the vmm
/// process), 1 vCPU, 64M, resident memory, its tty, owned by root.
fn check_running(r: &Row, vmd_pid: i32, tty: Option<&str>, state: &str) -> Result<i32, Failed> {
    let bad = |why: &str| -> Failed { format!("{why}: {r:?}").into() };
    let pid: i32 = r.pid.parse().map_err(|_| bad("PID"))?;
    if !alive(pid) {
        return Err(bad("no such process"));
    }
    if let Some(vmm) = parent_of(pid) {
        if parent_of(vmm) != Some(vmd_pid) {
            return Err(bad(&format!("PID not a VM process of vmd {vmd_pid}")));
        }
    }
    if r.vcpus != "1" || r.maxmem != "64.0M" {
        return Err(bad("VCPUS/MAXMEM"));
    }
    // fmt_scaled of the resident size: digits, maybe one decimal, a unit.
    let unit = r.curmem.chars().last().unwrap_or(' ');
    let number = &r.curmem[..r.curmem.len() - unit.len_utf8()];
    if !"BKMG".contains(unit) || number.parse::<f64>().map_or(true, |n| n <= 0.0) {
        return Err(bad("CURMEM"));
    }
    if tty.is_some_and(|t| t != r.tty) || r.tty == "-" {
        return Err(bad(&format!("TTY (want {tty:?})")));
    }
    if r.owner != "root" || r.state != state {
        return Err(bad(&format!("OWNER/STATE (want root, {state})")));
    }
    Ok(pid)
}

/// vmctl's TTY column: the tty's name after its last `/`.
fn tty_column(tty: &str) -> &str {
    tty.rsplit('/').next().unwrap_or(tty)
}

/// Reads a pty master until `want` appears, the end, or 15 s.
fn read_master(master: &OwnedFd, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains(want) && Instant::now() < deadline {
        let mut fds = [nix::poll::PollFd::new(
            master.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u8)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(_) => break,
        }
        let mut buf = [0u8; 1024];
        match nix::unistd::read(master, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// `vmctl console <name>` on a terminal (a pty): it connects to `tty`,
/// and `~.` at the start of a line disconnects.
fn console(d: &Vmd, name: &str, tty: &str) -> Result<(), Failed> {
    let pty = nix::pty::openpty(None, None)?;
    let slave = std::fs::File::from(pty.slave);
    let mut child = d
        .command(None, &["console", name])
        .stdin(slave.try_clone()?)
        .stdout(slave.try_clone()?)
        .stderr(slave)
        .spawn()?;
    let master = pty.master;
    let hello = format!("Connected to {tty} (speed 115200)\r\n");
    let text = read_master(&master, &hello);
    eprintln!("# vmctl console {name}\n{text:?}");
    if !text.contains(&hello) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("vmctl console: want {hello:?}, got {text:?}").into());
    }
    std::fs::File::from(master.try_clone()?).write_all(b"~.")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("vmctl console did not end within 10 s of ~.".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let tail = read_master(&master, "[EOT]");
    eprintln!("{tail:?}\n(exit {:?})", status.code());
    if status.code() != Some(0) || !tail.contains("[EOT]") {
        return Err(format!("vmctl console after ~.: {status}, {tail:?}").into());
    }
    Ok(())
}

/// Checks a command's exit status and stderr, and that it printed
/// nothing on stdout.
fn expect(out: &Out, status: i32, stderr: &str) -> Result<(), Failed> {
    if out.status != Some(status) || out.stderr != stderr || !out.stdout.is_empty() {
        return Err(format!(
            "want exit {status} and stderr {stderr:?}; got {:?}, {:?}, stdout {:?}",
            out.status, out.stderr, out.stdout
        )
        .into());
    }
    Ok(())
}

/// A user made for the test (and removed after it), so that the
/// non-root checks run as someone who owns nothing on this host; `nobody`
/// where useradd is missing.
struct TestUser {
    name: String,
    made: bool,
}

impl TestUser {
    fn make() -> TestUser {
        let name = format!("vmde2e{}", std::process::id() % 100_000);
        let made = std::process::Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                &name,
            ])
            .status()
            .is_ok_and(|s| s.success());
        if made {
            TestUser { name, made }
        } else {
            eprintln!("useradd failed: running the non-root checks as nobody");
            TestUser {
                name: "nobody".into(),
                made: false,
            }
        }
    }

    fn user(&self) -> Result<User, Failed> {
        let u = nix::unistd::User::from_name(&self.name)?
            .ok_or_else(|| format!("no user {}", self.name))?;
        Ok(User {
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        })
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        if self.made {
            let _ = std::process::Command::new("userdel")
                .arg(&self.name)
                .status();
        }
    }
}

fn temp_dir(what: &str) -> Result<PathBuf, Failed> {
    let dir = daemon::temp_dir("vmd-e2e", what)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

fn vmd_and_vmctl() -> Result<(), Failed> {
    let vmctl = vmctl_binary()?;
    let bios = bios_path();
    let bios_s = bios.display().to_string();
    let test_user = TestUser::make();
    let conf = format!(
        "# vm.conf of the e2e test\n\
         socket owner {}\n\
         vm \"demo\" {{\n\tmemory 64M\n\tboot \"{bios_s}\"\n}}\n",
        test_user.name
    );
    let mut d = Vmd::start(temp_dir("vmd")?, &conf, &vmctl)?;
    let vmd_pid = d.child.id() as i32;
    let user = test_user.user()?;
    let result = scenario(&mut d, vmd_pid, user, &bios_s);
    if result.is_err() {
        eprintln!("vmd's log:\n{}", d.log());
    }
    result
}

fn scenario(d: &mut Vmd, vmd_pid: i32, user: User, bios: &str) -> Result<(), Failed> {
    // vm.conf's VM starts with vmd.
    // Running with its process: vmd marks a VM running when it asks for
    // it, and knows the pid once the VM process answers.
    let rows = d.wait_status("demo running", |rows| {
        row(rows, "demo").is_some_and(|r| r.state == "running" && r.pid != "-")
    })?;
    let demo = row(&rows, "demo").unwrap().clone();
    d.vm_pids
        .push(check_running(&demo, vmd_pid, None, "running")?);

    // vmctl start -b bios.bin -m 64M test1
    let out = d.vmctl(&["start", "-b", bios, "-m", "64M", "test1"])?;
    let started = out
        .stderr
        .strip_prefix("vmctl: started vm ")
        .and_then(|s| s.strip_suffix('\n'))
        .and_then(|s| s.split_once(" successfully, tty "));
    let (Some(0), Some((id, tty)), true) = (out.status, started, out.stdout.is_empty()) else {
        return Err(format!("vmctl start: {:?} {:?}", out.status, out.stderr).into());
    };
    let (id, tty) = (id.to_string(), tty.to_string());
    // SeaBIOS on the VM's console, waiting there since the start.
    let text = read_tty(&tty, "SeaBIOS (version")?;
    eprintln!("console {tty}: {:?}", text.trim());

    // vmctl status: both VMs, in OpenBSD's table.
    let rows = d.status(&[], 0)?;
    let test1 = row(&rows, "test1").ok_or("test1 not in status")?.clone();
    if test1.id != id
        || rows.len() != 2
        || row(&rows, "demo").map(|r| &r.state) != Some(&demo.state)
    {
        return Err(format!("status: {rows:?}").into());
    }
    let pid = check_running(&test1, vmd_pid, Some(tty_column(&tty)), "running")?;
    d.vm_pids.push(pid);
    // By name: that row alone.
    if d.status(&["test1"], 0)?
        .iter()
        .map(|r| r.name.as_str())
        .ne(["test1"])
    {
        return Err("status test1 shows other VMs".into());
    }

    // vmctl console test1, with its own cu.
    console(d, "test1", &tty)?;

    // vmctl pause / unpause
    let out = d.vmctl(&["pause", "test1"])?;
    expect(&out, 0, &format!("vmctl: paused vm {id} successfully\n"))?;
    let rows = d.status(&["test1"], 0)?;
    check_running(&rows[0], vmd_pid, Some(tty_column(&tty)), "paused")?;
    let out = d.vmctl(&["unpause", "test1"])?;
    expect(&out, 0, &format!("vmctl: unpaused vm {id} successfully\n"))?;
    let rows = d.status(&["test1"], 0)?;
    check_running(&rows[0], vmd_pid, Some(tty_column(&tty)), "running")?;

    // Another user, allowed on the socket by `socket owner`: the list,
    // but none of root's commands and not root's VMs.
    let out = d.vmctl_as(Some(user), &["status"])?;
    let theirs = parse_status(&out.stdout)?;
    // The same rows as root's, but for CURMEM, which moves.
    let steady = |r: &Row| Row {
        curmem: String::new(),
        ..r.clone()
    };
    if out.status != Some(0)
        || theirs.len() != 2
        || row(&theirs, "test1").map(steady) != Some(steady(&test1))
    {
        return Err(format!("status as another user: {theirs:?}").into());
    }
    for cmd in [
        &["reload"][..],
        &["log", "verbose"],
        &["reset"],
        &["reset", "vms"],
    ] {
        expect(&d.vmctl_as(Some(user), cmd)?, 1, DENIED)?;
    }
    let out = d.vmctl_as(Some(user), &["stop", "-f", "test1"])?;
    expect(
        &out,
        1,
        "stopping vm test1: failed: Operation not permitted\n",
    )?;
    // Nothing was reset or stopped.
    let rows = d.status(&["-r"], 0)?;
    if rows.len() != 2 || !alive(pid) {
        return Err(format!("after the refused commands: {rows:?}").into());
    }

    // vmctl stop -f -w test1: vmd's answer is the VM's end.
    let out = d.vmctl(&["stop", "-f", "-w", "test1"])?;
    expect(&out, 0, &format!("stopping vm test1: terminated vm {id}\n"))?;
    wait_gone(pid)?;
    // Started by vmctl, not from vm.conf: gone from the list, as vmd
    // removes such VMs when they stop.
    let rows = d.status(&[], 0)?;
    if rows.len() != 1 || row(&rows, "demo").is_none() {
        return Err(format!("status after stopping test1: {rows:?}").into());
    }
    // A name only filters the rows: the header, and exit 0 while vmd
    // knows any VM (vmctl.c print_vm_info).
    if !d.status(&["test1"], 0)?.is_empty() {
        return Err("status test1 after its stop shows a VM".into());
    }
    let out = d.vmctl(&["stop", "test1"])?;
    expect(&out, 1, "stopping vm test1: vm not found\n")?;

    // vm.conf's VM stays known, stopped.
    let out = d.vmctl(&["stop", "-f", "-w", "demo"])?;
    expect(
        &out,
        0,
        &format!("stopping vm demo: terminated vm {}\n", demo.id),
    )?;
    wait_gone(demo.pid.parse()?)?;
    let out = d.vmctl(&["status"])?;
    let want = format!(
        "{HEADER}\n{:>5}     -     1   64.0M       -       -         root  stopped demo\n",
        demo.id
    );
    if out.status != Some(0) || out.stdout != want {
        return Err(format!("status of the stopped VM:\n{}want:\n{want}", out.stdout).into());
    }
    // -r: nothing running, the header and exit 1.
    d.status(&["-r"], 1)?;

    // SIGTERM: vmd exits 0.
    d.stop()?;
    let log = d.log();
    let mut missing = String::new();
    for want in [
        format!("started demo (vm {}) successfully, tty ", demo.id),
        format!("started test1 (vm {id}) successfully, tty {tty}"),
    ] {
        if !log.contains(&want) {
            let _ = writeln!(missing, "{want}");
        }
    }
    // One `denied request <type> from uid <uid>` per root-only command.
    let denied = format!(" from uid {}", user.uid);
    let n = log
        .lines()
        .filter(|l| l.starts_with("denied request ") && l.ends_with(&denied))
        .count();
    if n != 4 {
        let _ = writeln!(missing, "4 lines of denied request ...{denied} (found {n})");
    }
    if !missing.is_empty() {
        return Err(format!("vmd's log lacks:\n{missing}log:\n{log}").into());
    }
    Ok(())
}

/// `vmd -n` names the file as given and the line, and exits 1; a good
/// file is `configuration OK`.  Needs neither root nor vmm(4).
fn check_config() -> Result<(), Failed> {
    let dir = temp_dir("n")?;
    let run = |file: &str| -> Result<Out, Failed> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmd"));
        cmd.args(["-n", "-f", file])
            .current_dir(&dir)
            .env("VMD_USER", vmd_user());
        run_bounded(cmd, 30)
    };
    let check = || -> Result<(), Failed> {
        std::fs::write(
            dir.join("bad.conf"),
            "vm \"a\" {\n\tmemory 64M\n}\n\nvm \"b\" {\n\tmemory 64Q\n}\n",
        )?;
        let out = run("bad.conf")?;
        let want = "bad.conf:6: failed to parse size: 64Q\n";
        if out.status != Some(1) || !out.stderr.contains(want) {
            return Err(format!("vmd -n -f bad.conf: {:?} {:?}", out.status, out.stderr).into());
        }
        std::fs::write(
            dir.join("good.conf"),
            "vm \"a\" {\n\tmemory 64M\n\tdisable\n\tboot \"/dev/null\"\n}\n",
        )?;
        let out = run("good.conf")?;
        if out.status != Some(0) || out.stderr != "configuration OK\n" {
            return Err(format!("vmd -n -f good.conf: {:?} {:?}", out.status, out.stderr).into());
        }
        Ok(())
    };
    let r = check();
    let _ = std::fs::remove_dir_all(&dir);
    r
}

/// What the disk tests' boot sector prints: sector 1, read through int
/// 13h (SeaBIOS's virtio-blk driver and our vioblk).
const DISK_LINE: &str = "vioblk: booted from a backing file two levels down\n";

/// A qcow2 image of 1 MiB over `backing` (a name relative to `path`'s
/// directory, as vmd resolves it).
fn qcow2_over(path: &Path, backing: &str) -> Result<(), Failed> {
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)?;
    vmd_disk::qcow2::create(&f, &path.display().to_string(), 1 << 20, Some(backing))?;
    Ok(())
}

/// A tty path from vmctl's TTY column.
fn tty_path(column: &str) -> String {
    if column.bytes().all(|b| b.is_ascii_digit()) {
        format!("/dev/pts/{column}")
    } else {
        format!("/dev/{column}")
    }
}

/// vm.conf's `disk` and `vmctl start -d`: SeaBIOS boots, through vioblk,
/// a boot sector that lives in a raw base two levels below the qcow2 the
/// VM was given (the parent opened the chain, the VM process got the
/// descriptors); a disk another VM writes is refused.
fn vmd_boots_qcow2_chain() -> Result<(), Failed> {
    let vmctl = vmctl_binary()?;
    let bios = bios_path().display().to_string();
    let dir = temp_dir("disk")?;
    std::fs::write(dir.join("base.raw"), support::int13_boot_disk(DISK_LINE)?)?;
    qcow2_over(&dir.join("mid.qcow2"), "base.raw")?;
    qcow2_over(&dir.join("top.qcow2"), "mid.qcow2")?;
    qcow2_over(&dir.join("other.qcow2"), "mid.qcow2")?;
    let top = dir.join("top.qcow2").display().to_string();
    let conf = format!("vm \"chain\" {{\n\tmemory 64M\n\tboot \"{bios}\"\n\tdisk \"{top}\"\n}}\n");
    let mut d = Vmd::start(dir.clone(), &conf, &vmctl)?;
    let vmd_pid = d.child.id() as i32;
    let r = disk_scenario(&mut d, vmd_pid, &bios);
    if r.is_err() {
        eprintln!("vmd's log:\n{}", d.log());
    }
    r
}

fn disk_scenario(d: &mut Vmd, vmd_pid: i32, bios: &str) -> Result<(), Failed> {
    let rows = d.wait_status("chain running", |rows| {
        row(rows, "chain").is_some_and(|r| r.state == "running" && r.pid != "-")
    })?;
    let chain = row(&rows, "chain").unwrap().clone();
    d.vm_pids
        .push(check_running(&chain, vmd_pid, None, "running")?);
    let text = read_tty(tty_path(&chain.tty), DISK_LINE)?;
    eprintln!("console of chain: {:?}", text.trim());

    // vmctl start -d, relative to vmctl's directory, over the same base.
    let out = d.vmctl(&[
        "start",
        "-b",
        bios,
        "-m",
        "64M",
        "-d",
        "other.qcow2",
        "second",
    ])?;
    let tty = out
        .stderr
        .strip_prefix("vmctl: started vm ")
        .and_then(|s| s.strip_suffix('\n'))
        .and_then(|s| s.split_once(" successfully, tty "))
        .map(|(_, t)| t.to_string())
        .ok_or_else(|| format!("vmctl start -d: {:?} {:?}", out.status, out.stderr))?;
    let text = read_tty(&tty, DISK_LINE)?;
    eprintln!("console of second: {:?}", text.trim());
    let rows = d.status(&[], 0)?;
    let second = row(&rows, "second").ok_or("second not in status")?;
    d.vm_pids.push(check_running(
        second,
        vmd_pid,
        Some(tty_column(&tty)),
        "running",
    )?);

    // chain's top image is locked while chain runs.
    let out = d.vmctl(&["start", "-b", bios, "-m", "64M", "-d", "top.qcow2", "third"])?;
    if out.status == Some(0) {
        return Err("a second vm started on a disk another vm writes".into());
    }

    // Each VM process serves its disk from a device process of its own
    // (vmd -X, era B); on Linux, where /proc shows it, killing that
    // process ends its VM with an error, and only that VM.
    if cfg!(target_os = "linux") {
        let vm_pid: i32 = second.pid.parse()?;
        let kids = children_of(vm_pid);
        let [dev] = kids[..] else {
            return Err(format!("vm process {vm_pid} has children {kids:?}, not one").into());
        };
        let cmdline = std::fs::read(format!("/proc/{dev}/cmdline"))?;
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !args.windows(2).any(|w| w[0] == "-t" && w[1] == "d") {
            return Err(format!("child {dev} of the vm is not vioblk's: {args:?}").into());
        }
        kill(Pid::from_raw(dev), Signal::SIGKILL)?;
        wait_gone(vm_pid)?;
        d.wait_status("second stopped", |rows| {
            row(rows, "second").is_none_or(|r| r.pid == "-")
        })?;
        let log = d.log();
        for l in log
            .lines()
            .filter(|l| l.contains("vioblk") || l.contains("second"))
        {
            eprintln!("vmd: {l}");
        }
        if !log.contains("vioblk: device process") || !log.contains("died") {
            return Err("no word of the dead device process in vmd's log".into());
        }
        let rows = d.status(&[], 0)?;
        let chain = row(&rows, "chain").ok_or("chain gone")?;
        check_running(chain, vmd_pid, None, "running")?;
    }
    d.stop()
}

/// The daemon with both kinds of disk, as an administrator starts it:
/// `vmctl create -i` makes a bootable qcow2, `vmctl start -d disk.qcow2 -r boot.iso
/// -B cdrom` starts a VM with it and an El Torito ISO and boots the ISO
/// (fw_cfg bootorder names vioscsi); the boot transcript on the VM's tty
/// has the ISO's sums read through SeaBIOS's virtio-scsi driver; `vmctl
/// status` shows the VM; its VM process serves the disk and the CD-ROM
/// from two device processes (vioblk and vioscsi).
fn vmctl_start_disk_and_cdrom() -> Result<(), Failed> {
    let vmctl = vmctl_binary()?;
    let bios = bios_path().display().to_string();
    let dir = temp_dir("cdrom")?;
    let (iso, reads) = eltorito::eltorito_iso(&dir)?;
    let want = eltorito::eltorito_lines(&iso, &reads);
    let mut d = Vmd::start(dir.clone(), "", &vmctl)?;
    let vmd_pid = d.child.id() as i32;
    let r = (|| -> Result<(), Failed> {
        // The disk is bootable too (the int 13h boot sector of the
        // chain test, converted by vmctl): -B cdrom must pick the ISO.
        std::fs::write(dir.join("disk.raw"), support::int13_boot_disk(DISK_LINE)?)?;
        let out = d.vmctl(&["create", "-i", "disk.raw", "disk.qcow2"])?;
        if out.status != Some(0) {
            return Err(format!("vmctl create: {:?} {:?}", out.status, out.stderr).into());
        }
        let out = d.vmctl(&[
            "start",
            "-b",
            &bios,
            "-m",
            "64M",
            "-d",
            "disk.qcow2",
            "-r",
            "eltorito.iso",
            "-B",
            "cdrom",
            "cdvm",
        ])?;
        let tty = out
            .stderr
            .strip_prefix("vmctl: started vm ")
            .and_then(|s| s.strip_suffix('\n'))
            .and_then(|s| s.split_once(" successfully, tty "))
            .map(|(_, t)| t.to_string())
            .ok_or_else(|| format!("vmctl start: {:?} {:?}", out.status, out.stderr))?;
        let text = read_tty(&tty, "eltorito: done")?;
        eprintln!("console of cdvm:\n{}", text.trim());
        if !text.contains("Booting from DVD/CD") || text.contains(DISK_LINE.trim_end()) {
            return Err("SeaBIOS did not boot the CD-ROM first".into());
        }
        let got = eltorito::without_error_codes(&eltorito::lines_with(&text, "eltorito:"));
        if got != want {
            return Err(format!("transcript\n got: {got:#?}\nwant: {want:#?}").into());
        }
        let rows = d.status(&["cdvm"], 0)?;
        let vm = row(&rows, "cdvm").ok_or("cdvm not in vmctl status")?;
        let pid = check_running(vm, vmd_pid, Some(tty_column(&tty)), "running")?;
        d.vm_pids.push(pid);
        if cfg!(target_os = "linux") {
            let mut kinds: Vec<String> = children_of(pid)
                .into_iter()
                .filter_map(|c| {
                    let cmd = std::fs::read(format!("/proc/{c}/cmdline")).ok()?;
                    let args: Vec<String> = cmd
                        .split(|&b| b == 0)
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect();
                    let at = args.iter().position(|a| a == "-t")?;
                    args.get(at + 1).cloned()
                })
                .collect();
            kinds.sort();
            if kinds != ["d", "s"] {
                return Err(format!(
                    "vm process {pid}: device processes {kinds:?}, not vioblk and vioscsi"
                )
                .into());
            }
        }
        d.stop()
    })();
    if r.is_err() {
        eprintln!("vmd's log:\n{}", d.log());
    }
    r
}

fn main() {
    let args = Arguments::from_args();
    let skip = support::missing_root()
        .or_else(support::missing_vmm)
        .or_else(support::missing_bios);
    let e2e = support::skip_if(Trial::test("vmctl_drives_vmd", vmd_and_vmctl), skip.clone());
    let disk = support::skip_if(
        Trial::test(
            "vmd_boots_qcow2_chain_through_vioblk",
            vmd_boots_qcow2_chain,
        ),
        skip.clone(),
    );
    let cdrom = support::skip_if(
        Trial::test("vmctl_start_disk_and_cdrom", vmctl_start_disk_and_cdrom),
        skip.clone().or_else(eltorito::missing_xorriso),
    );
    let tests = vec![
        e2e,
        disk,
        cdrom,
        Trial::test("vmd_n_reports_file_and_line", check_config),
    ];
    libtest_mimic::run(&args, tests).exit();
}
