//! Confinement, seen from outside: vmd (as root, privileges really
//! dropped) runs a VM with a vioblk disk and a vioscsi CD-ROM; each of its
//! processes (parent, control, vmm, priv, the VM, both device processes)
//! must be in seccomp filter mode with no_new_privs, and control, vmm, the
//! VM and the device processes without capabilities.  Then the hidden hook
//! `VMD_SANDBOX_TEST` makes a confined process do what it may not: a
//! forbidden system call must kill it with a log line naming the call,
//! and a path outside its Landlock rules must be refused (where the
//! kernel enforces Landlock; otherwise vmd must have said so).
//!
//! Linux only (it reads /proc); needs root, /dev/kvm and SeaBIOS, and is
//! reported as ignored with the reason where any is missing.
mod support;

use libtest_mimic::{Arguments, Failed, Trial};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};
use support::bios_path;
use support::daemon;

/// A VM whose SeaBIOS finds nothing to boot and keeps trying: it runs
/// until stopped, with both device processes.
fn conf(dir: &Path) -> Result<String, Failed> {
    let disk = dir.join("disk.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20])?;
    let iso = dir.join("cd.iso");
    std::fs::write(&iso, vec![0u8; 2048 * 16])?;
    Ok(format!(
        "vm \"boxed\" {{\n\tmemory 32M\n\tboot \"{}\"\n\tdisk \"{}\"\n\tcdrom \"{}\"\n}}\n",
        bios_path().display(),
        disk.display(),
        iso.display()
    ))
}

struct Vmd {
    child: Child,
    dir: PathBuf,
    log: PathBuf,
}

impl Vmd {
    fn start(name: &str, env: &[(&str, &str)]) -> Result<Vmd, Failed> {
        let dir = daemon::temp_dir("vmd-sandbox", name)?;
        let cfg = dir.join("vm.conf");
        std::fs::write(&cfg, conf(&dir)?)?;
        let log = dir.join("vmd.log");
        let mut cmd = daemon::command(&cfg, &dir.join("vmd.sock"));
        cmd.env_remove("VMD_SANDBOX")
            .env_remove("VMD_SANDBOX_TEST")
            .stderr(std::fs::File::create(&log)?);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Ok(Vmd {
            child: cmd.spawn()?,
            dir,
            log,
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to 20 s for `what` in the log.
    fn wait_log(&self, what: &str) -> Result<String, Failed> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = self.log();
            if text.contains(what) {
                return Ok(text);
            }
            if Instant::now() > deadline {
                return Err(format!("no {what:?} in vmd's log within 20 s:\n{text}").into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Vmd {
    fn drop(&mut self) {
        daemon::end(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A process of the tree: pid, its arguments and /proc status fields.
#[derive(Debug)]
struct Proc {
    pid: i32,
    args: Vec<String>,
    status: String,
}

impl Proc {
    fn field(&self, name: &str) -> Option<&str> {
        self.status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    }

    fn has_args(&self, want: &[&str]) -> bool {
        self.args.windows(want.len()).any(|w| w == want)
    }
}

/// `root` and its descendants.
fn tree(root: i32) -> Vec<Proc> {
    let mut all = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let args = std::fs::read(format!("/proc/{pid}/cmdline"))
            .unwrap_or_default()
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        all.push(Proc { pid, args, status });
    }
    let mut keep = vec![root];
    loop {
        let before = keep.len();
        for p in &all {
            let ppid = p.field("PPid").and_then(|v| v.parse().ok()).unwrap_or(0);
            if keep.contains(&ppid) && !keep.contains(&p.pid) {
                keep.push(p.pid);
            }
        }
        if keep.len() == before {
            break;
        }
    }
    all.into_iter().filter(|p| keep.contains(&p.pid)).collect()
}

fn every_process_confined() -> Result<(), Failed> {
    all_confined("every", &[])
}

/// VMD_SANDBOX=strict: the same, where this kernel enforces Landlock in
/// full (a kernel that does not must make vmd refuse, which is checked
/// instead).
fn strict_confines_the_same() -> Result<(), Failed> {
    let r = all_confined("strict", &[("VMD_SANDBOX", "strict")]);
    if let Err(e) = &r {
        if e.message()
            .is_some_and(|m| m.contains("landlock not fully enforced"))
        {
            eprintln!("this kernel does not enforce Landlock in full: vmd refused, as asked");
            return Ok(());
        }
    }
    r
}

fn all_confined(name: &str, env: &[(&str, &str)]) -> Result<(), Failed> {
    let vmd = Vmd::start(name, env)?;
    // All seven, the device processes last to appear.
    let kinds: [(&str, &[&str], bool); 7] = [
        // Both run as the unprivileged user: no capabilities either.
        ("control", &["-P", "control"], true),
        ("vmm", &["-P", "vmm"], true),
        ("priv", &["-P", "priv"], false),
        ("vm", &["-V", "0"], true),
        ("vioblk", &["-t", "d"], true),
        ("vioscsi", &["-t", "s"], true),
        ("parent", &[], false),
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    let procs = loop {
        let procs = tree(vmd.child.id() as i32);
        let all_there = kinds[..6]
            .iter()
            .all(|(_, a, _)| procs.iter().any(|p| p.has_args(a)));
        // Confinement comes a moment after a process starts.
        let settled = procs.iter().all(|p| p.field("Seccomp") == Some("2"));
        if all_there && settled {
            break procs;
        }
        if Instant::now() > deadline {
            break procs;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut problems = Vec::new();
    for (name, args, no_caps) in kinds {
        let p = if args.is_empty() {
            procs.iter().find(|p| p.pid == vmd.child.id() as i32)
        } else {
            procs.iter().find(|p| p.has_args(args))
        };
        let Some(p) = p else {
            problems.push(format!("no {name} process"));
            continue;
        };
        let mut want = vec![("Seccomp", "2"), ("NoNewPrivs", "1")];
        if no_caps {
            want.push(("CapEff", "0000000000000000"));
            want.push(("CapPrm", "0000000000000000"));
        }
        for (f, v) in want {
            if p.field(f) != Some(v) {
                problems.push(format!(
                    "{name} (pid {}): {f} {:?}, want {v}",
                    p.pid,
                    p.field(f)
                ));
            }
        }
        // The VM runs under vmm's filter and both of its own; a device
        // process under those and its own.
        let filters: u32 = p
            .field("Seccomp_filters")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let least = match name {
            "vm" => 3,
            "vioblk" | "vioscsi" => 3,
            _ => 1,
        };
        if filters < least {
            problems.push(format!("{name}: {filters} seccomp filters, want {least}+"));
        }
    }
    if !problems.is_empty() {
        return Err(format!("{}\nvmd's log:\n{}", problems.join("\n"), vmd.log()).into());
    }
    Ok(())
}

fn forbidden_call_kills_device() -> Result<(), Failed> {
    let vmd = Vmd::start("call", &[("VMD_SANDBOX_TEST", "device vioblk:call")])?;
    let text =
        vmd.wait_log("vmd: device vioblk: forbidden system call personality (135), killed")?;
    if text.contains("personality(2) allowed") {
        return Err(format!("the forbidden call ran:\n{text}").into());
    }
    // And it is gone (the VM process reaps it).
    let deadline = Instant::now() + Duration::from_secs(10);
    while tree(vmd.child.id() as i32)
        .iter()
        .any(|p| p.has_args(&["-t", "d"]))
    {
        if Instant::now() > deadline {
            return Err("the vioblk process outlived its forbidden call".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn forbidden_call_kills_running_vm() -> Result<(), Failed> {
    let vmd = Vmd::start("vmcall", &[("VMD_SANDBOX_TEST", "vm (running):call")])?;
    vmd.wait_log("vmd: vm (running): forbidden system call personality (135), killed")?;
    vmd.wait_log("killed by SIGSYS")?;
    Ok(())
}

fn path_outside_landlock_refused() -> Result<(), Failed> {
    // The vmm process may open files as far as seccomp goes (it starts
    // VM processes), so that what refuses /etc/passwd is Landlock; the
    // processes that face the guest cannot even call open (above).
    let vmd = Vmd::start("path", &[("VMD_SANDBOX_TEST", "vmm:path")])?;
    let text = vmd.wait_log("vmm: sandbox test: /etc/passwd")?;
    if text.contains("vmm: sandbox test: /etc/passwd opened") {
        // Only where the kernel has no Landlock, and vmd said so.
        if !text.contains("vmm: landlock NotEnforced") {
            return Err(format!("/etc/passwd opened under Landlock:\n{text}").into());
        }
        eprintln!("landlock not enforced by this kernel: refusal not checked");
    } else if !text.contains("vmm: sandbox test: /etc/passwd: Permission denied") {
        return Err(format!("/etc/passwd not refused with EACCES:\n{text}").into());
    }
    // The device process cannot make the call at all.
    drop(vmd);
    let vmd = Vmd::start("path-dev", &[("VMD_SANDBOX_TEST", "device vioscsi:path")])?;
    vmd.wait_log("vmd: device vioscsi: forbidden system call openat (257), killed")?;
    Ok(())
}

/// VMD_SANDBOX=log: a forbidden call goes through (the kernel logs it),
/// for finding what a list lacks.
fn log_mode_lets_calls_through() -> Result<(), Failed> {
    let vmd = Vmd::start(
        "log",
        &[
            ("VMD_SANDBOX", "log"),
            ("VMD_SANDBOX_TEST", "device vioblk:call"),
        ],
    )?;
    let text = vmd.wait_log("device vioblk: sandbox test: personality(2) allowed")?;
    if text.contains("forbidden system call") {
        return Err(format!("killed in log mode:\n{text}").into());
    }
    Ok(())
}

/// VMD_SANDBOX=off: nothing confined (the debugging switch works).
fn off_confines_nothing() -> Result<(), Failed> {
    let vmd = Vmd::start("off", &[("VMD_SANDBOX", "off")])?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let procs = tree(vmd.child.id() as i32);
        if let Some(dev) = procs.iter().find(|p| p.has_args(&["-t", "d"])) {
            // Let it reach the point where it would confine itself.
            std::thread::sleep(Duration::from_millis(500));
            for p in tree(vmd.child.id() as i32) {
                if p.field("Seccomp") != Some("0") {
                    return Err(format!("{:?} confined with {}=off", p.args, "VMD_SANDBOX").into());
                }
            }
            let _ = dev;
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("no vioblk process:\n{}", vmd.log()).into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn main() {
    let args = Arguments::from_args();
    let skip = (!cfg!(target_os = "linux"))
        .then(|| "Linux only (reads /proc/PID/status)".to_string())
        .or_else(support::missing_root)
        .or_else(support::missing_vmm)
        .or_else(support::missing_bios);
    let tests = [
        Trial::test("sandbox_every_process_confined", every_process_confined),
        Trial::test(
            "sandbox_forbidden_call_kills_device",
            forbidden_call_kills_device,
        ),
        Trial::test(
            "sandbox_forbidden_call_kills_running_vm",
            forbidden_call_kills_running_vm,
        ),
        Trial::test(
            "sandbox_path_outside_landlock_refused",
            path_outside_landlock_refused,
        ),
        Trial::test("sandbox_off_confines_nothing", off_confines_nothing),
        Trial::test(
            "sandbox_log_mode_lets_calls_through",
            log_mode_lets_calls_through,
        ),
        Trial::test("sandbox_strict_confines_the_same", strict_confines_the_same),
    ]
    .into_iter()
    .map(|t| support::skip_if(t, skip.clone()))
    .collect();
    libtest_mimic::run(&args, tests).exit();
}
