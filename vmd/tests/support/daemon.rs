//! vmd -d run by a test: its command, its temporary directory, its stop,
//! and reading the console tty of one of its VMs.
use libtest_mimic::Failed;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// vmd's unprivileged user: `_vmd`, or `nobody` where there is none.
pub fn vmd_user() -> &'static str {
    match nix::unistd::User::from_name("_vmd") {
        Ok(Some(_)) => "_vmd",
        _ => "nobody",
    }
}

/// `vmd -d -f <cfg>` with its control socket at `socket`, privileges
/// really dropped (to [`vmd_user`]) and nothing on standard input.
pub fn command(cfg: &Path, socket: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmd"));
    cmd.arg("-d")
        .arg("-f")
        .arg(cfg)
        .env("VMD_SOCKET", socket)
        .env("VMD_USER", vmd_user())
        .env_remove("VMD_NO_PRIVDROP")
        .stdin(Stdio::null());
    cmd
}

/// An empty `<prefix>-<pid>-<name>` in the temporary directory (emptied
/// if a test before left it).
pub fn temp_dir(prefix: &str, name: &str) -> Result<PathBuf, Failed> {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// SIGTERM; vmd stops its VMs and exits 0 (within 30 s).
pub fn stop(vmd: &mut Child) -> Result<(), Failed> {
    kill(Pid::from_raw(vmd.id() as i32), Signal::SIGTERM)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = vmd.try_wait()? {
            if !st.success() {
                return Err(format!("vmd exited with {st} after SIGTERM").into());
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("vmd did not exit within 30 s of SIGTERM".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Ends vmd if it still runs, a test having failed: SIGTERM, 20 s for it
/// to stop its VMs, then SIGKILL.
pub fn end(vmd: &mut Child) {
    if let Ok(None) = vmd.try_wait() {
        let _ = kill(Pid::from_raw(vmd.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && matches!(vmd.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = vmd.kill();
        let _ = vmd.wait();
    }
}

/// Reads a VM's console tty until `what` appears (60 s at most).
pub fn read_tty(tty: impl AsRef<Path>, what: &str) -> Result<String, Failed> {
    let tty = tty.as_ref();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(tty)
        .map_err(|e| format!("{}: {e}", tty.display()))?;
    let mut text = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match f.read(&mut buf) {
            Ok(n) if n > 0 => {
                text.extend_from_slice(&buf[..n]);
                let s = String::from_utf8_lossy(&text);
                if s.contains(what) {
                    return Ok(s.into_owned());
                }
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    Err(format!(
        "no {what:?} on {} within 60 s; read:\n{}",
        tty.display(),
        String::from_utf8_lossy(&text)
    )
    .into())
}
