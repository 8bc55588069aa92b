//! End to end: the vmd daemon in a temporary root, driven over its
//! control socket with vmd_proto messages, as vmctl drives it.  vmd runs
//! with `-d`, its own socket (VMD_SOCKET), and `nobody` as its
//! unprivileged user when `_vmd` does not exist (VMD_USER); privileges
//! are really dropped.  Needs root, /dev/kvm (or /dev/vmm) and SeaBIOS
//! from scripts/fetch-assets.sh; reported as ignored with the reason
//! where any is missing.
mod support;

use libtest_mimic::{Arguments, Failed, Trial};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::bios_path;
use support::daemon::{self, read_tty, vmd_user};
use vmd_proto::config::{
    VMOP_CREATE_CDROM, VMOP_CREATE_DISK, VMOP_CREATE_INSTANCE, VMOP_CREATE_KERNEL,
    VMOP_CREATE_MEMORY,
};
use vmd_proto::msg::*;
use vmd_proto::{ImsgChannel, Message};

struct Daemon {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Daemon {
    fn start(name: &str, conf: &str) -> Result<Daemon, Failed> {
        Self::spawn(name, conf, Stdio::inherit())
    }

    /// With vmd's stderr in `log`.
    fn start_logged(name: &str, conf: &str, log: &Path) -> Result<Daemon, Failed> {
        Self::spawn(name, conf, Stdio::from(std::fs::File::create(log)?))
    }

    fn spawn(name: &str, conf: &str, stderr: Stdio) -> Result<Daemon, Failed> {
        Self::spawn_with(name, conf, stderr, None)
    }

    /// With vmd's stderr in `log`, under `prlimit --nofile=<soft>:<hard>`.
    fn start_limited(
        name: &str,
        conf: &str,
        log: &Path,
        nofile: (u32, u32),
    ) -> Result<Daemon, Failed> {
        let stderr = Stdio::from(std::fs::File::create(log)?);
        Self::spawn_with(name, conf, stderr, Some(nofile))
    }

    fn spawn_with(
        name: &str,
        conf: &str,
        stderr: Stdio,
        nofile: Option<(u32, u32)>,
    ) -> Result<Daemon, Failed> {
        let dir = daemon::temp_dir("vmd-test", name)?;
        let socket = dir.join("vmd.sock");
        let cfg = dir.join("vm.conf");
        std::fs::write(&cfg, conf)?;
        let mut cmd = daemon::command(&cfg, &socket);
        if let Some((soft, hard)) = nofile {
            // The same command, run by prlimit(1) with that limit.
            let mut limited = Command::new("prlimit");
            limited
                .arg(format!("--nofile={soft}:{hard}"))
                .arg("--")
                .arg(cmd.get_program())
                .args(cmd.get_args());
            for (k, v) in cmd.get_envs() {
                match v {
                    Some(v) => limited.env(k, v),
                    None => limited.env_remove(k),
                };
            }
            limited.stdin(Stdio::null());
            cmd = limited;
        }
        let child = cmd.stderr(stderr).spawn()?;
        let d = Daemon { child, dir, socket };
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&d.socket).is_err() {
            if Instant::now() > deadline {
                return Err("vmd's control socket did not appear within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(d)
    }

    fn connect(&self) -> Result<ImsgChannel, Failed> {
        let s = UnixStream::connect(&self.socket)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(ImsgChannel::new(s))
    }

    /// SIGTERM; vmd stops its VMs and exits 0.
    fn stop(mut self) -> Result<(), Failed> {
        daemon::stop(&mut self.child)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        daemon::end(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn request(d: &Daemon, msg: &Message, fds: Vec<std::os::fd::OwnedFd>) -> Result<Message, Failed> {
    let mut c = d.connect()?;
    c.send_with(msg, 0, 0, fds)?;
    Ok(c.recv()?.msg)
}

fn info(d: &Daemon) -> Result<Vec<VmopInfoResult>, Failed> {
    let mut c = d.connect()?;
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

fn vm_info(d: &Daemon, name: &str) -> Result<Option<VmopInfoResult>, Failed> {
    Ok(info(d)?.into_iter().find(|i| i.name == name))
}

/// Waits until `f` holds for the VM's info.
fn wait_info(
    d: &Daemon,
    name: &str,
    what: &str,
    f: impl Fn(Option<&VmopInfoResult>) -> bool,
) -> Result<Option<VmopInfoResult>, Failed> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let i = vm_info(d, name)?;
        if f(i.as_ref()) {
            return Ok(i);
        }
        if Instant::now() > deadline {
            return Err(format!("vm {name}: not {what} within 15 s: {i:?}").into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The test binary as an unprivileged client (`VMD_TEST_CLIENT=<socket>`,
/// run as `nobody`): prints what vmd answers to the requests of
/// `VMD_TEST_SCRIPT` ([`instance_client`] for `instances`, else the ones
/// below).
fn client_mode(socket: &str) -> i32 {
    if std::env::var("VMD_TEST_SCRIPT").as_deref() == Ok("instances") {
        return match instance_client(socket) {
            Ok(s) => {
                print!("{s}");
                0
            }
            Err(e) => {
                eprintln!("client: {e:?}");
                1
            }
        };
    }
    let run = || -> Result<String, Failed> {
        let mut out = String::new();
        let connect = || -> Result<ImsgChannel, Failed> {
            let s = UnixStream::connect(socket)?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            Ok(ImsgChannel::new(s))
        };
        let mut c = connect()?;
        c.send(&Message::GetInfoVmRequest(None))?;
        let mut n = 0;
        while let Message::GetInfoVmData(_) = c.recv()?.msg {
            n += 1;
        }
        out.push_str(&format!("info {n}\n"));
        let mut c = connect()?;
        c.send(&Message::TerminateVmRequest(by_name("conf", 0)))?;
        out.push_str(&format!("stop {:?}\n", c.recv()?.msg));
        let mut c = connect()?;
        c.send(&Message::CtlReset(CONFIG_ALL))?;
        out.push_str(&format!("reset {:?}\n", c.recv()?.msg));
        out.push_str(&format!("then {}\n", c.recv().is_err()));
        Ok(out)
    };
    match run() {
        Ok(s) => {
            print!("{s}");
            0
        }
        Err(e) => {
            eprintln!("client: {e:?}");
            1
        }
    }
}

/// The instance requests of a user as vmctl sends them (`vmctl start -t
/// tmpl -b bios.bin inst`, ...), with the boot image that the test passed
/// as standard input; one line per answer.
fn instance_client(socket: &str) -> Result<String, Failed> {
    use std::os::fd::AsFd;
    let bios = || std::io::stdin().as_fd().try_clone_to_owned();
    let ask = |msg: Message, fds: Vec<std::os::fd::OwnedFd>| -> Result<Message, Failed> {
        let s = UnixStream::connect(socket)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut c = ImsgChannel::new(s);
        c.send_with(&msg, 0, 0, fds)?;
        Ok(c.recv()?.msg)
    };
    let start = |name: &str, instance: Option<&str>, flags: u32| VmopCreateParams {
        name: name.into(),
        flags: flags
            | if instance.is_some() {
                VMOP_CREATE_INSTANCE
            } else {
                0
            },
        ncpus: 1,
        kernel: Some("bios.bin".into()),
        instance: instance.map(String::from),
        ..Default::default()
    };
    let result = |m: Message| match m {
        Message::StartVmResponse(r)
        | Message::PauseVmResponse(r)
        | Message::UnpauseVmResponse(r)
        | Message::TerminateVmResponse(r) => r.result.to_string(),
        other => format!("{other:?}"),
    };
    let mut out = String::new();
    // Allowed: an instance of tmpl with the user's own boot image.
    match ask(
        Message::StartVmRequest(start("inst", Some("tmpl"), VMOP_CREATE_KERNEL)),
        vec![bios()?],
    )? {
        Message::StartVmResponse(r) => out.push_str(&format!(
            "start inst {} tty {} pid {}\n",
            r.result,
            !r.ttyname.is_empty(),
            r.pid > 0
        )),
        other => out.push_str(&format!("start inst {other:?}\n")),
    }
    // A disk: tmpl does not allow instances to have one.
    let mut p = start("inst2", Some("tmpl"), VMOP_CREATE_KERNEL | VMOP_CREATE_DISK);
    p.disks = vec![VmDisk {
        path: "/tmp/inst2.img".into(),
        format: vmd_proto::config::DiskFormat::Raw,
        bases: 0,
    }];
    let m = ask(Message::StartVmRequest(p), vec![bios()?])?;
    out.push_str(&format!("start inst2 -d {}\n", result(m)));
    // closed allows no instances; a VM of one's own is not allowed.
    let m = ask(
        Message::StartVmRequest(start("inst3", Some("closed"), VMOP_CREATE_KERNEL)),
        vec![bios()?],
    )?;
    out.push_str(&format!("start -t closed {}\n", result(m)));
    let m = ask(
        Message::StartVmRequest(start("mine", None, VMOP_CREATE_KERNEL)),
        vec![bios()?],
    )?;
    out.push_str(&format!("start mine {}\n", result(m)));
    // The user's instance: pause, unpause; root's VM: neither, nor stop.
    for name in ["inst", "rootvm"] {
        let m = ask(Message::PauseVm(by_name(name, 0)), Vec::new())?;
        out.push_str(&format!("pause {name} {}\n", result(m)));
        if name == "inst" {
            let m = ask(Message::UnpauseVm(by_name(name, 0)), Vec::new())?;
            out.push_str(&format!("unpause {name} {}\n", result(m)));
        }
        let m = ask(
            Message::TerminateVmRequest(by_name(name, VMOP_FORCE)),
            Vec::new(),
        )?;
        out.push_str(&format!("stop -f {name} {}\n", result(m)));
    }
    Ok(out)
}

/// The uid of a process and of its parent (/proc/<pid>/status).
fn proc_uids(pid: i32) -> Result<(u32, u32), Failed> {
    let field = |pid: i32, key: &str| -> Result<u32, Failed> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| format!("no {key} in /proc/{pid}/status").into())
    };
    let ppid = field(pid, "PPid:")? as i32;
    Ok((field(pid, "Uid:")?, field(ppid, "Uid:")?))
}

/// vm.conf's `allow instance` and owners, for a user other than root:
/// an allowed instance starts, one that adds what is not allowed, one of
/// a VM that allows none and a VM of the user's own are refused with
/// vmd's errors; the user may pause and stop the instance, not root's VM.
/// Also: VM processes, and the vmm process that starts them, run as the
/// unprivileged user (the parent passes /dev/kvm down).
fn instances_and_owners() -> Result<(), Failed> {
    let bios = bios_path();
    let conf = format!(
        "socket owner nobody\n\
         vm \"tmpl\" {{\n\tdisable\n\tmemory 32M\n\tboot \"{b}\"\n\towner nobody\n\
         \tallow instance {{ boot, memory, owner nobody }}\n}}\n\
         vm \"closed\" {{\n\tdisable\n\tmemory 32M\n\tboot \"{b}\"\n\towner nobody\n}}\n\
         vm \"rootvm\" {{\n\tmemory 32M\n\tboot \"{b}\"\n}}\n",
        b = bios.display()
    );
    let d = Daemon::start("instances", &conf)?;
    let rootvm = wait_info(&d, "rootvm", "running", running)?.unwrap();
    let user = nix::unistd::User::from_name(vmd_user())?
        .ok_or("no vmd user")?
        .uid
        .as_raw();
    let uids = proc_uids(rootvm.creator_pid)?;
    if uids != (user, user) {
        return Err(format!(
            "VM process and vmm process run as uids {uids:?}, want {user} ({})",
            vmd_user()
        )
        .into());
    }
    let out = Command::new(std::env::current_exe()?)
        .env("VMD_TEST_CLIENT", &d.socket)
        .env("VMD_TEST_SCRIPT", "instances")
        .stdin(std::fs::File::open(&bios)?)
        .uid(65534)
        .gid(65534)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let want = format!(
        "start inst 0 tty true pid true\n\
         start inst2 -d {eperm}\n\
         start -t closed {enametoolong}\n\
         start mine {eperm}\n\
         pause inst 0\nunpause inst 0\nstop -f inst 0\n\
         pause rootvm {eperm}\nstop -f rootvm {eperm}\n",
        eperm = libc::EPERM,
        enametoolong = libc::ENAMETOOLONG
    );
    if text != want {
        return Err(format!(
            "user's requests:\n{text}\nwant:\n{want}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    // The stopped instance is gone; root's VM runs on.
    wait_info(&d, "inst", "removed", |i| i.is_none())?;
    for name in ["inst2", "inst3", "mine"] {
        if vm_info(&d, name)?.is_some() {
            return Err(format!("refused vm {name} is registered").into());
        }
    }
    if !running(vm_info(&d, "rootvm")?.as_ref()) {
        return Err("rootvm stopped".into());
    }
    d.stop()
}

/// A 64 KiB "BIOS" that resets the machine through port 0xCF9 at once.
fn reset_image() -> Vec<u8> {
    let mut img = vec![0xf4u8; 64 << 10];
    let code = [0xb0, 0x06, 0xba, 0xf9, 0x0c, 0xee, 0xf4, 0xeb, 0xfd];
    let at = img.len() - 16;
    img[at..at + code.len()].copy_from_slice(&code);
    img
}

fn running(i: Option<&VmopInfoResult>) -> bool {
    i.is_some_and(|i| i.state & VM_STATE_RUNNING != 0 && i.creator_pid > 0)
}

fn by_name(name: &str, flags: u32) -> VmopId {
    VmopId {
        id: 0,
        name: name.into(),
        uid: 0,
        flags,
    }
}

fn end_to_end() -> Result<(), Failed> {
    let bios = bios_path();
    let conf = format!(
        "socket owner nobody\n\
         vm \"conf\" {{\n\tmemory 64M\n\tboot \"{b}\"\n}}\n\
         vm \"off\" {{\n\tdisable\n\tmemory 32M\n\tboot \"{b}\"\n}}\n",
        b = bios.display()
    );
    let d = Daemon::start("e2e", &conf)?;

    // vm.conf's VMs: one started at startup, one disabled.
    let conf_vm = wait_info(&d, "conf", "running", running)?.unwrap();
    if conf_vm.ttyname.is_empty() || conf_vm.memory_size != 64 << 20 {
        return Err(format!("conf: {conf_vm:?}").into());
    }
    let off = vm_info(&d, "off")?.ok_or("vm off not registered")?;
    if off.state != VM_STATE_DISABLED || off.creator_pid != 0 {
        return Err(format!("off: {off:?}").into());
    }

    // A user other than root may ask for the list and to stop a VM it
    // owns, not to reset vmd: `denied request 3 from uid 65534`, EPERM.
    let out = Command::new(std::env::current_exe()?)
        .env("VMD_TEST_CLIENT", &d.socket)
        .uid(65534)
        .gid(65534)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let want = format!(
        "info 2\nstop TerminateVmResponse(VmopResult {{ result: {}, id: {}, pid: 0, ttyname: \"\" }})\n\
         reset CtlFail(Some({}))\nthen true\n",
        libc::EPERM,
        conf_vm.id,
        libc::EPERM
    );
    if text != want {
        return Err(format!(
            "unprivileged client:\n{text}\nwant:\n{want}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }

    // An unknown VM with nothing to boot is refused as vmd refuses it.
    match request(
        &d,
        &Message::StartVmRequest(VmopCreateParams {
            name: "nothing".into(),
            ..Default::default()
        }),
        Vec::new(),
    )? {
        Message::StartVmResponse(r) if r.result == VMD_DISK_MISSING => {}
        other => return Err(format!("start without devices: {other:?}").into()),
    }

    // vmctl start -b bios.bin -m 64M seabios
    let kernel = std::fs::File::open(&bios)?;
    let params = VmopCreateParams {
        name: "seabios".into(),
        flags: VMOP_CREATE_KERNEL | VMOP_CREATE_MEMORY,
        ncpus: 1,
        memory: 64 << 20,
        kernel: Some(bios.display().to_string()),
        ..Default::default()
    };
    let started = match request(&d, &Message::StartVmRequest(params), vec![kernel.into()])? {
        Message::StartVmResponse(r) if r.result == 0 && !r.ttyname.is_empty() && r.pid > 0 => r,
        other => return Err(format!("start: {other:?}").into()),
    };
    let text = read_tty(Path::new(&started.ttyname), "SeaBIOS (version")?;
    eprintln!("console of vm {}: {:?}", started.id, text.trim());
    let i = wait_info(&d, "seabios", "running", running)?.unwrap();
    if i.id != started.id || i.creator_pid != started.pid || i.ttyname != started.ttyname {
        return Err(format!("info {i:?} does not match start {started:?}").into());
    }
    if i.used_size == 0 || i.memory_size != 64 << 20 || i.ncpus != 1 {
        return Err(format!("info sizes: {i:?}").into());
    }

    // Starting it again: EALREADY.
    match request(
        &d,
        &Message::StartVmRequest(VmopCreateParams {
            name: "seabios".into(),
            ..Default::default()
        }),
        Vec::new(),
    )? {
        Message::StartVmResponse(r) if r.result == libc::EALREADY => {}
        other => return Err(format!("second start: {other:?}").into()),
    }

    // vmctl pause / unpause
    match request(&d, &Message::PauseVm(by_name("seabios", 0)), Vec::new())? {
        Message::PauseVmResponse(r) if r.result == 0 && r.id == started.id => {}
        other => return Err(format!("pause: {other:?}").into()),
    }
    wait_info(&d, "seabios", "paused", |i| {
        i.is_some_and(|i| i.state & VM_STATE_PAUSED != 0)
    })?;
    match request(&d, &Message::UnpauseVm(by_name("seabios", 0)), Vec::new())? {
        Message::UnpauseVmResponse(r) if r.result == 0 => {}
        other => return Err(format!("unpause: {other:?}").into()),
    }
    wait_info(&d, "seabios", "unpaused", |i| {
        i.is_some_and(|i| i.state & VM_STATE_PAUSED == 0 && i.state & VM_STATE_RUNNING != 0)
    })?;

    // vmctl stop -f -w seabios: the answer is the exit event.
    let mut c = d.connect()?;
    c.send(&Message::TerminateVmRequest(by_name(
        "seabios",
        VMOP_FORCE | VMOP_WAIT,
    )))?;
    match c.recv()?.msg {
        Message::TerminateVmEvent(r) if r.id == started.id && r.result == 0 => {}
        other => return Err(format!("stop -f -w: {other:?}").into()),
    }
    let pid = nix::unistd::Pid::from_raw(started.pid);
    if nix::sys::signal::kill(pid, None).is_ok() {
        return Err(format!("VM process {pid} still alive after stop").into());
    }
    // Started by a client, not configured: gone from the list.
    wait_info(&d, "seabios", "removed", |i| i.is_none())?;

    // vmctl stop conf (forced, no wait): a response, then it is stopped
    // but still known.
    match request(
        &d,
        &Message::TerminateVmRequest(by_name("conf", VMOP_FORCE)),
        Vec::new(),
    )? {
        Message::TerminateVmResponse(r) if r.result == 0 => {}
        other => return Err(format!("stop -f conf: {other:?}").into()),
    }
    wait_info(&d, "conf", "stopped", |i| {
        i.is_some_and(|i| i.state & VM_STATE_RUNNING == 0 && i.creator_pid == 0)
    })?;
    // Stopping a stopped VM: EINVAL; an unknown one: ENOENT.
    match request(
        &d,
        &Message::TerminateVmRequest(by_name("conf", 0)),
        Vec::new(),
    )? {
        Message::TerminateVmResponse(r) if r.result == libc::EINVAL => {}
        other => return Err(format!("stop stopped: {other:?}").into()),
    }
    match request(
        &d,
        &Message::TerminateVmRequest(by_name("nosuch", 0)),
        Vec::new(),
    )? {
        Message::TerminateVmResponse(r) if r.result == libc::ENOENT => {}
        other => return Err(format!("stop unknown: {other:?}").into()),
    }
    // vmctl start conf: a configured VM starts again by name.
    match request(
        &d,
        &Message::StartVmRequest(VmopCreateParams {
            name: "conf".into(),
            ..Default::default()
        }),
        Vec::new(),
    )? {
        Message::StartVmResponse(r) if r.result == 0 => {}
        other => return Err(format!("start conf: {other:?}").into()),
    }
    let conf_pid = wait_info(&d, "conf", "running", running)?
        .unwrap()
        .creator_pid;
    // vmctl stop conf (graceful): SeaBIOS has no vmmci driver to ask, so
    // the VM is stopped at once, as vmd does, and is not restarted.
    let asked = Instant::now();
    match request(
        &d,
        &Message::TerminateVmRequest(by_name("conf", 0)),
        Vec::new(),
    )? {
        Message::TerminateVmResponse(r) if r.result == 0 => {}
        other => return Err(format!("graceful stop: {other:?}").into()),
    }
    wait_info(&d, "conf", "stopped", |i| {
        i.is_some_and(|i| i.state & VM_STATE_RUNNING == 0)
    })?;
    if asked.elapsed() > Duration::from_secs(10) {
        return Err(format!("graceful stop took {:?}", asked.elapsed()).into());
    }
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(conf_pid), None).is_ok() {
        return Err("the VM process outlived its graceful stop".into());
    }
    // vmctl log verbose, vmctl reload: root may.
    match request(&d, &Message::CtlVerbose(0), Vec::new())? {
        Message::CtlOk => {}
        other => return Err(format!("log: {other:?}").into()),
    }
    match request(&d, &Message::Reload, Vec::new())? {
        Message::CtlOk => {}
        other => return Err(format!("reload: {other:?}").into()),
    }
    // SIGTERM: vmd exits 0.
    d.stop()?;
    Ok(())
}

/// A guest that resets itself is restarted on the same id and tty, until
/// it has restarted more than 3 times within 6 s; then it stays stopped.
fn reboot_rate_limit() -> Result<(), Failed> {
    let dir = std::env::temp_dir().join(format!("vmd-test-{}-img", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let img = dir.join("reset.bin");
    std::fs::write(&img, reset_image())?;
    let conf = format!(
        "vm \"resetter\" {{\n\tmemory 16M\n\tboot \"{}\"\n}}\n",
        img.display()
    );
    let log = dir.join("vmd.log");
    let d = Daemon::start_logged("reboot", &conf, &log)?;
    let stopped = wait_info(&d, "resetter", "stopped by the rate limit", |i| {
        i.is_some_and(|i| i.state & VM_STATE_RUNNING == 0)
    });
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    stopped?;
    let starts: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("started resetter (vm 1) successfully, tty "))
        .collect();
    let ttys: std::collections::BTreeSet<&str> = starts
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    if starts.len() != 4 || ttys.len() != 1 || !text.contains("restarted too quickly") {
        return Err(format!("want 4 starts on one tty, then the rate limit; log:\n{text}").into());
    }
    d.stop()
}

/// Garbage on the control socket drops that client with a log line; vmd
/// and its other clients carry on.
fn garbage_on_the_socket() -> Result<(), Failed> {
    use std::io::{Read, Write};
    let dir = std::env::temp_dir().join(format!("vmd-test-{}-garbage-log", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let log = dir.join("vmd.log");
    let d = Daemon::start_logged("garbage", "", &log)?;
    // A client that stays connected and well-behaved throughout.
    let mut good = d.connect()?;
    // A header whose length is below the header size, an oversized one,
    // and plain noise, each on its own connection.
    let bad: [&[u8]; 3] = [
        &[4, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        &[4, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        b"\x12\x00\x00\x00\x20\x00\x00\x00garbage garbage garbage!",
    ];
    for bytes in bad {
        let mut s = UnixStream::connect(&d.socket)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(bytes)?;
        let mut buf = [0u8; 64];
        // vmd closes the connection: EOF (or a reset), no answer.
        match s.read(&mut buf) {
            Ok(0) | Err(_) => {}
            Ok(n) => return Err(format!("vmd answered {n} bytes to garbage").into()),
        }
    }
    good.send(&Message::GetInfoVmRequest(None))?;
    let answer = good.recv()?.msg;
    if !matches!(answer, Message::GetInfoVmEndData) {
        return Err(format!("the good client got {answer:?}").into());
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let drops = text.matches("control: dropping client of uid 0").count();
    let stopped = d.stop();
    let _ = std::fs::remove_dir_all(&dir);
    stopped?;
    if drops < 3 {
        return Err(
            format!("want 3 'dropping client' log lines, got {drops}; log:\n{text}").into(),
        );
    }
    Ok(())
}

/// The privsep child of vmd `parent` whose command name is `vmd: <title>`.
fn child_named(parent: i32, title: &str) -> Result<i32, Failed> {
    let want = format!("vmd: {title}");
    for e in std::fs::read_dir("/proc")? {
        let Ok(pid) = e?.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().nth(1)?.parse::<i32>().ok());
        if comm.trim_end() == want && ppid == Some(parent) {
            return Ok(pid);
        }
    }
    Err(format!("no {want} child of {parent}").into())
}

/// A /proc/<pid>/status field in kB.
fn status_kb(pid: i32, key: &str) -> Result<u64, Failed> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no {key} in /proc/{pid}/status").into())
}

/// A client that sends GET_INFO requests without end and never reads the
/// answers: the control process stays small, other clients are answered
/// meanwhile, and the flooding client is dropped with a log line.
fn client_that_never_reads() -> Result<(), Failed> {
    use std::io::Write;
    let dir = daemon::temp_dir("vmd-test", "flood-log")?;
    let log = dir.join("vmd.log");
    // Disabled VMs make each answer a list.
    let mut conf = String::new();
    for i in 0..20 {
        conf.push_str(&format!(
            "vm \"flood{i:02}\" {{\n\tdisable\n\tmemory 32M\n\tboot \"{}\"\n}}\n",
            bios_path().display()
        ));
    }
    let d = Daemon::start_logged("flood", &conf, &log)?;
    let control = child_named(d.child.id() as i32, "control")?;
    let flood = UnixStream::connect(&d.socket)?;
    flood.set_nonblocking(true)?;
    // One GET_INFO request as it goes on the wire.
    let one = {
        use std::io::Read;
        let (mut a, b) = ImsgChannel::pair()?;
        a.send(&Message::GetInfoVmRequest(None))?;
        let mut buf = [0u8; 256];
        let n = b.socket().read(&mut buf)?;
        buf[..n].to_vec()
    };
    let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 256).collect();
    let start = Instant::now();
    let mut dropped = false;
    let mut peak = 0;
    let mut answered = Vec::new();
    while start.elapsed() < Duration::from_secs(6) {
        match (&flood).write(&batch) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(_) => {
                dropped = true;
                break;
            }
        }
        peak = peak.max(status_kb(control, "VmRSS:")?);
        if answered.len() < 3 && start.elapsed() > Duration::from_secs(answered.len() as u64) {
            let t = Instant::now();
            let n = match info(&d) {
                Ok(v) => v.len(),
                Err(e) => {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    return Err(format!("GET_INFO during the flood: {e:?}; log:\n{text}").into());
                }
            };
            answered.push((n, t.elapsed()));
        }
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let after = info(&d).map(|v| v.len());
    let _ = std::fs::remove_dir_all(&dir);
    if peak > 64 << 10 {
        return Err(format!("the control process grew to {peak} kB").into());
    }
    if answered
        .iter()
        .any(|(n, t)| *n != 20 || *t > Duration::from_secs(2))
    {
        return Err(format!("other clients during the flood: {answered:?}").into());
    }
    if after? != 20 {
        return Err("no answer after the flood".into());
    }
    if !dropped || !text.contains("control: dropping client of uid 0") {
        return Err(format!("the flooding client was not dropped; log:\n{text}").into());
    }
    d.stop()
}

/// CPU time of a process so far, in clock ticks (utime + stime).
fn cpu_ticks(pid: i32) -> Result<u64, Failed> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let f: Vec<&str> = stat[stat.rfind(')').ok_or("stat")? + 2..]
        .split_whitespace()
        .collect();
    // Fields 14 and 15 of stat(5), counted after the command name.
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

/// The soft limit of open files of a process (/proc/<pid>/limits).
fn nofile_soft(pid: i32) -> Result<u64, Failed> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| "no Max open files".into())
}

/// More clients than the control process has descriptors: it pauses
/// accepting and says so instead of spinning, and accepts again once
/// clients leave.  At start, vmd raises its soft limit to the hard one.
fn out_of_descriptors() -> Result<(), Failed> {
    let dir = daemon::temp_dir("vmd-test", "emfile-log")?;
    let log = dir.join("vmd.log");
    let d = Daemon::start_limited("emfile", "", &log, (64, 64))?;
    let control = child_named(d.child.id() as i32, "control")?;
    let mut conns = Vec::new();
    for _ in 0..80 {
        conns.push(UnixStream::connect(&d.socket)?);
    }
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_ticks(control)?;
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu_ticks(control)? - before;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    drop(conns);
    let after = info(&d);
    let raised = {
        let e = Daemon::start_limited("emfile-raise", "", &dir.join("raise.log"), (64, 4096))?;
        let control = child_named(e.child.id() as i32, "control")?;
        let soft = nofile_soft(control);
        e.stop()?;
        soft?
    };
    let _ = std::fs::remove_dir_all(&dir);
    // 2 s at 100 ticks a second: a spinning process spends about 200.
    if spent > 40 {
        return Err(
            format!("the control process spent {spent} ticks in 2 s at its fd limit").into(),
        );
    }
    if !text.contains("control_accept: ") || !text.contains("not accepting connections for 1 s") {
        return Err(format!("nothing logged at the fd limit; log:\n{text}").into());
    }
    after.map_err(|e| format!("no answer once the clients left: {e:?}"))?;
    if raised != 4096 {
        return Err(format!("soft limit {raised} with 64:4096, want 4096").into());
    }
    d.stop()
}

/// A second vmd on the same socket is refused with a clear message and
/// leaves the first one and its VMs alone; a disk image another VM has
/// open for writing is refused (locked); a stale socket does not stop vmd.
fn second_vmd_and_shared_disks() -> Result<(), Failed> {
    let dir = daemon::temp_dir("vmd-test", "second-disk")?;
    let disk = dir.join("shared.img");
    std::fs::write(&disk, vec![0u8; 1 << 20])?;
    let vm = |name: &str, extra: &str| {
        format!(
            "vm \"{name}\" {{\n{extra}\tmemory 32M\n\tboot \"{}\"\n\tdisk \"{}\"\n}}\n",
            bios_path().display(),
            disk.display()
        )
    };
    let conf = vm("first", "") + &vm("second", "\tdisable\n");
    let log = dir.join("vmd.log");
    let d = Daemon::start_logged("second", &conf, &log)?;
    let first = wait_info(&d, "first", "running", running)?.unwrap();
    let result = (|| -> Result<(), Failed> {
        match request(
            &d,
            &Message::StartVmRequest(VmopCreateParams {
                name: "second".into(),
                ..Default::default()
            }),
            Vec::new(),
        )? {
            Message::StartVmResponse(r) if r.result == libc::EBUSY => {}
            other => return Err(format!("second vm on a locked disk: {other:?}").into()),
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let want = format!(
            "disk {} is in use by another vm or program (locked)",
            disk.display()
        );
        if !text.contains(&want) {
            return Err(format!("no {want:?} in the log:\n{text}").into());
        }
        // Another vmd -d with the same socket (and so the same pid file).
        let mut cmd = daemon::command(&d.dir.join("vm.conf"), &d.socket);
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut other = cmd.spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(st) = other.try_wait()? {
                break st;
            }
            if Instant::now() > deadline {
                daemon::end(&mut other);
                return Err("a second vmd on the same socket kept running".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut other.stderr.take().unwrap(), &mut err)?;
        let pid = d.child.id();
        if status.code() != Some(1) || !err.contains(&format!("vmd is already running (pid {pid}"))
        {
            return Err(format!("second vmd: {status}, stderr {err:?}").into());
        }
        let now = vm_info(&d, "first")?.ok_or("first is gone")?;
        if now.creator_pid != first.creator_pid || info(&d)?.len() != 2 {
            return Err(format!("the first vmd was disturbed: {now:?}").into());
        }
        Ok(())
    })();
    let stopped = d.stop();
    result?;
    stopped?;
    // A socket left behind by a vmd that is gone: a new one starts.
    let socket = dir.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket)?);
    let cfg = dir.join("again.conf");
    std::fs::write(&cfg, vm("again", ""))?;
    let mut again = daemon::command(&cfg, &socket)
        .stderr(Stdio::from(std::fs::File::create(dir.join("again.log"))?))
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&socket).is_err() {
        if Instant::now() > deadline || again.try_wait()?.is_some() {
            daemon::end(&mut again);
            let text = std::fs::read_to_string(dir.join("again.log")).unwrap_or_default();
            return Err(format!("vmd did not start over a stale socket:\n{text}").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon::stop(&mut again)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A FIFO as a CD-ROM, a disk or a boot image: each start is refused at
/// once with vmd's error for it, and vmd answers everyone meanwhile (open
/// of a FIFO used to block the parent until a writer came).
fn fifo_as_vm_files() -> Result<(), Failed> {
    let dir = daemon::temp_dir("vmd-test", "fifo-files")?;
    let fifo = dir.join("f");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644))?;
    let fifo_s = fifo.display().to_string();
    let conf = format!(
        "vm \"tmpl\" {{\n\tdisable\n\tmemory 32M\n\tboot \"{b}\"\n\
         \tallow instance {{ cdrom, disk }}\n}}\n\
         vm \"fifoboot\" {{\n\tdisable\n\tmemory 32M\n\tboot \"{fifo_s}\"\n}}\n",
        b = bios_path().display()
    );
    let d = Daemon::start("fifo", &conf)?;
    let result = (|| -> Result<(), Failed> {
        let start = |p: VmopCreateParams, fds| -> Result<i32, Failed> {
            let t = Instant::now();
            let m = request(&d, &Message::StartVmRequest(p), fds)?;
            if t.elapsed() > Duration::from_secs(5) {
                return Err(format!("answered after {:?}", t.elapsed()).into());
            }
            match m {
                Message::StartVmResponse(r) => Ok(r.result),
                other => Err(format!("{other:?}").into()),
            }
        };
        // vmctl start -t tmpl -r <fifo> x
        let cdrom = start(
            VmopCreateParams {
                name: "x".into(),
                flags: VMOP_CREATE_INSTANCE | VMOP_CREATE_CDROM,
                cdrom: Some(fifo_s.clone()),
                instance: Some("tmpl".into()),
                ..Default::default()
            },
            Vec::new(),
        )?;
        // vmctl start -t tmpl -d <fifo> y
        let disk = start(
            VmopCreateParams {
                name: "y".into(),
                flags: VMOP_CREATE_INSTANCE | VMOP_CREATE_DISK,
                disks: vec![VmDisk {
                    path: fifo_s.clone(),
                    format: vmd_proto::config::DiskFormat::Raw,
                    bases: 0,
                }],
                instance: Some("tmpl".into()),
                ..Default::default()
            },
            Vec::new(),
        )?;
        // vmctl start fifoboot
        let boot = start(
            VmopCreateParams {
                name: "fifoboot".into(),
                ..Default::default()
            },
            Vec::new(),
        )?;
        let got = (cdrom, disk, boot);
        if got != (VMD_CDROM_INVALID, VMD_DISK_MISSING, libc::EINVAL) {
            return Err(format!("cdrom, disk, boot image: {got:?}").into());
        }
        if info(&d)?.len() != 2 {
            return Err("refused instances stayed registered".into());
        }
        Ok(())
    })();
    // Unblock a parent stuck in open(2), so that it can be stopped.
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo);
    let stopped = d.stop();
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    stopped
}

/// Boot images are looked at before they are read: /dev/zero as the
/// descriptor and a 3 GiB sparse file are refused at once (EINVAL,
/// EFBIG), where the VM process used to read them into memory.
fn boot_image_limits() -> Result<(), Failed> {
    let dir = daemon::temp_dir("vmd-test", "bootimg-files")?;
    let big = dir.join("big.bin");
    std::fs::File::create(&big)?.set_len(3 << 30)?;
    let d = Daemon::start("bootimg", "")?;
    let result = (|| -> Result<(), Failed> {
        let mut got = Vec::new();
        for image in [Path::new("/dev/zero"), &big] {
            let t = Instant::now();
            let params = VmopCreateParams {
                name: "img".into(),
                flags: VMOP_CREATE_KERNEL | VMOP_CREATE_MEMORY,
                memory: 4 << 30,
                kernel: Some(image.display().to_string()),
                ..Default::default()
            };
            let fd = std::fs::File::open(image)?;
            let m = request(&d, &Message::StartVmRequest(params), vec![fd.into()])?;
            match m {
                Message::StartVmResponse(r) if t.elapsed() < Duration::from_secs(5) => {
                    got.push(r.result)
                }
                other => {
                    return Err(
                        format!("{}: {other:?} after {:?}", image.display(), t.elapsed()).into(),
                    )
                }
            }
        }
        if got != [libc::EINVAL, libc::EFBIG] {
            return Err(format!("/dev/zero, 3 GiB: {got:?}").into());
        }
        if !info(&d)?.is_empty() {
            return Err("a refused vm stayed registered".into());
        }
        Ok(())
    })();
    let stopped = d.stop();
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    stopped
}

/// `vmctl load` of a file that includes itself, of /dev/zero or of a
/// FIFO: refused at once, and vmd goes on answering.
fn load_of_endless_files() -> Result<(), Failed> {
    let dir = daemon::temp_dir("vmd-test", "load-files")?;
    let me = dir.join("self.conf");
    std::fs::write(&me, format!("include \"{}\"\n", me.display()))?;
    let fifo = dir.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
    let d = Daemon::start("load", "")?;
    let result = (|| -> Result<(), Failed> {
        for f in [me.as_path(), Path::new("/dev/zero"), &fifo] {
            let t = Instant::now();
            match request(&d, &Message::Load(f.display().to_string()), Vec::new())? {
                Message::CtlFail(_) if t.elapsed() < Duration::from_secs(5) => {}
                other => {
                    return Err(
                        format!("load {}: {other:?} after {:?}", f.display(), t.elapsed()).into(),
                    )
                }
            }
        }
        info(&d)?;
        Ok(())
    })();
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo);
    let stopped = d.stop();
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    stopped
}

/// vmd -n with a macro value and a file name that are not UTF-8: read
/// byte for byte, no panic.
fn non_utf8_arguments() -> Result<(), Failed> {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;
    let dir = daemon::temp_dir("vmd-test", "bytes")?;
    let mut name = dir.clone().into_os_string().into_vec();
    name.extend_from_slice(b"/vm\xff.conf");
    let conf = PathBuf::from(OsString::from_vec(name));
    std::fs::write(
        &conf,
        "vm \"a\" {\n\tmemory 64M\n\tdisable\n\tboot \"/dev/null\"\n}\n",
    )?;
    let out = Command::new(env!("CARGO_BIN_EXE_vmd"))
        .arg("-n")
        .arg(OsString::from_vec(b"-Dm=\xff".to_vec()))
        .arg("-f")
        .arg(&conf)
        .env("VMD_USER", vmd_user())
        .output()?;
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.code() != Some(0) || err != "warning: macro 'm' not used\nconfiguration OK\n" {
        return Err(format!("vmd -n: {:?}, stderr {err:?}", out.status).into());
    }
    Ok(())
}

/// A template with no boot image, disk or CD-ROM: vmd -n passes it, and
/// so vmd starts with it (it used to stop at startup).
fn check_agrees_with_startup() -> Result<(), Failed> {
    let conf = "vm \"tmpl\" {\n\tdisable\n\tmemory 64M\n\tallow instance { disk }\n}\n";
    let dir = daemon::temp_dir("vmd-test", "n-agrees")?;
    let file = dir.join("vm.conf");
    std::fs::write(&file, conf)?;
    let out = Command::new(env!("CARGO_BIN_EXE_vmd"))
        .arg("-n")
        .arg("-f")
        .arg(&file)
        .env("VMD_USER", vmd_user())
        .output()?;
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.code() != Some(0) || err != "configuration OK\n" {
        return Err(format!("vmd -n: {:?}, stderr {err:?}", out.status).into());
    }
    let d = Daemon::start("n-agrees-d", conf)?;
    let tmpl = vm_info(&d, "tmpl")?.ok_or("the template is not registered")?;
    if tmpl.state != VM_STATE_DISABLED {
        return Err(format!("tmpl: {tmpl:?}").into());
    }
    d.stop()
}

/// What vmd used to keep to its debug log, or word wrongly: a VM process
/// killed by someone's signal, a control process left unchrooted, a boot
/// image too small to be one.
fn said_in_the_log() -> Result<(), Failed> {
    let dir = daemon::temp_dir("vmd-test", "said-log")?;
    let log = dir.join("vmd.log");
    let tiny = dir.join("tiny.bin");
    std::fs::write(&tiny, b"012345678")?;
    let conf = format!(
        "vm \"victim\" {{\n\tmemory 32M\n\tboot \"{}\"\n}}\n",
        bios_path().display()
    );
    let d = Daemon::start_logged("said", &conf, &log)?;
    let result = (|| -> Result<(), Failed> {
        let v = wait_info(&d, "victim", "running", running)?.unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(v.creator_pid),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        wait_info(&d, "victim", "stopped", |i| {
            i.is_some_and(|i| i.state & VM_STATE_RUNNING == 0)
        })?;
        let params = VmopCreateParams {
            name: "tiny".into(),
            flags: VMOP_CREATE_KERNEL,
            kernel: Some(tiny.display().to_string()),
            ..Default::default()
        };
        let fd = std::fs::File::open(&tiny)?;
        match request(&d, &Message::StartVmRequest(params), vec![fd.into()])? {
            Message::StartVmResponse(r) if r.result == libc::ENOEXEC => {}
            other => return Err(format!("a 9-byte boot image: {other:?}").into()),
        }
        let text = std::fs::read_to_string(&log)?;
        let mut want = vec![
            format!(
                "vm {}: vm process {} killed by SIGKILL",
                v.id, v.creator_pid
            ),
            "boot image of 9 bytes is not a BIOS or kernel image".to_string(),
        ];
        if !Path::new("/var/empty").is_dir() {
            want.push("/var/empty does not exist: not chrooted".into());
        }
        for w in want {
            if !text.contains(&w) {
                return Err(format!("no {w:?} in the log:\n{text}").into());
            }
        }
        Ok(())
    })();
    let stopped = d.stop();
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    stopped
}

fn check_bad_conf() -> Result<(), Failed> {
    let dir = std::env::temp_dir().join(format!("vmd-test-{}-n", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let bad = dir.join("bad.conf");
    std::fs::write(&bad, "vm \"a\" {\n\tmemory 64M\n\tbogus\n}\n")?;
    let out = Command::new(env!("CARGO_BIN_EXE_vmd"))
        .arg("-n")
        .arg("-f")
        .arg(&bad)
        .env("VMD_USER", vmd_user())
        .output()?;
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!("{}:3: syntax error", bad.display());
    if out.status.code() != Some(1) || !err.contains(&want) {
        return Err(format!("vmd -n: {:?}, stderr {err:?}, want {want:?}", out.status).into());
    }
    Ok(())
}

/// Why not, if prlimit(1) (util-linux) is missing.
fn missing_prlimit() -> Option<String> {
    Command::new("prlimit")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
        .then(|| "needs prlimit(1) from util-linux".to_string())
}

fn main() {
    let args = Arguments::from_args();
    if let Ok(sock) = std::env::var("VMD_TEST_CLIENT") {
        std::process::exit(client_mode(&sock));
    }
    let skip = support::missing_root()
        .or_else(support::missing_vmm)
        .or_else(support::missing_bios);
    let tests = vec![
        Trial::test("daemon_start_info_tty_pause_stop", end_to_end)
            .with_ignored_flag(skip.is_some()),
        Trial::test("daemon_reboot_restart_rate_limit", reboot_rate_limit)
            .with_ignored_flag(skip.is_some()),
        Trial::test("daemon_instances_and_owners", instances_and_owners)
            .with_ignored_flag(skip.is_some()),
        Trial::test(
            "daemon_drops_clients_sending_garbage",
            garbage_on_the_socket,
        )
        .with_ignored_flag(skip.is_some()),
        Trial::test(
            "daemon_bounds_a_client_that_never_reads",
            client_that_never_reads,
        )
        .with_ignored_flag(skip.is_some()),
        Trial::test("daemon_out_of_descriptors", out_of_descriptors)
            .with_ignored_flag(skip.is_some() || missing_prlimit().is_some()),
        Trial::test(
            "daemon_refuses_a_second_vmd_and_shared_disks",
            second_vmd_and_shared_disks,
        )
        .with_ignored_flag(skip.is_some()),
        Trial::test("daemon_fifo_as_cdrom_disk_or_boot_image", fifo_as_vm_files)
            .with_ignored_flag(skip.is_some()),
        Trial::test("daemon_boot_image_type_and_size", boot_image_limits)
            .with_ignored_flag(skip.is_some()),
        Trial::test("daemon_load_of_endless_files", load_of_endless_files)
            .with_ignored_flag(skip.is_some()),
        Trial::test("daemon_says_what_it_used_to_keep_quiet", said_in_the_log)
            .with_ignored_flag(skip.is_some()),
        // vmd -n needs neither root nor vmm(4).
        Trial::test("daemon_check_bad_config", check_bad_conf),
        Trial::test("daemon_non_utf8_arguments", non_utf8_arguments),
        Trial::test(
            "daemon_check_agrees_with_startup",
            check_agrees_with_startup,
        ),
    ];
    let tests = tests
        .into_iter()
        .map(|t| match skip.clone().or_else(missing_prlimit) {
            Some(why) if t.has_ignored_flag() => t.with_kind(why),
            _ => t,
        })
        .collect();
    libtest_mimic::run(&args, tests).exit();
}
