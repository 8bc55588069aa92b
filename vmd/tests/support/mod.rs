//! What vmd's integration tests share: why a test cannot run on this host
//! (reported as the reason it is ignored), SeaBIOS's path, a console that
//! keeps what the guest wrote, and ([`daemon`]) vmd -d as a process.
//!
//! Each test is its own crate and uses only some of this.
#![allow(dead_code)]

pub mod daemon;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

/// vmm(4)'s device: KVM's on Linux.
const VMM_DEVICE: &str = if cfg!(target_os = "linux") {
    "/dev/kvm"
} else {
    "/dev/vmm"
};

/// SeaBIOS from scripts/fetch-assets.sh (in `$ASSETS_DIR` if set).
pub fn bios_path() -> PathBuf {
    let dir = std::env::var_os("ASSETS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/assets"));
    dir.join("bios.bin")
}

/// Why not, if this test is not running as root (vmd needs it).
pub fn missing_root() -> Option<String> {
    (!nix::unistd::geteuid().is_root())
        .then(|| "needs root (vmd: need root privileges)".to_string())
}

/// Why not, if vmm(4)'s device does not open for reading and writing.
/// `t`, or `t` reported as ignored with the reason `why` when something
/// it needs is missing.
pub fn skip_if(t: libtest_mimic::Trial, why: Option<String>) -> libtest_mimic::Trial {
    match why {
        Some(why) => t.with_ignored_flag(true).with_kind(why),
        None => t,
    }
}

pub fn missing_vmm() -> Option<String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(VMM_DEVICE)
        .err()
        .map(|e| format!("needs {VMM_DEVICE} ({e})"))
}

/// Why not, if SeaBIOS has not been fetched.
pub fn missing_bios() -> Option<String> {
    (!bios_path().exists()).then(|| {
        format!(
            "needs {} (run scripts/fetch-assets.sh)",
            bios_path().display()
        )
    })
}

/// A VM's console output, kept for the test to read.
#[derive(Clone, Default)]
pub struct Console(Arc<Mutex<Vec<u8>>>);

impl Write for Console {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Console {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A 1 MiB disk whose boot sector reads sector 1 with int 13h (SeaBIOS's
/// virtio-blk driver, our vioblk) and prints it on COM1 (or "E" if the
/// read fails); sector 1 holds `sector1`, NUL-terminated.
pub fn int13_boot_disk(sector1: &str) -> Result<Vec<u8>, libtest_mimic::Failed> {
    use iced_x86::code_asm::*;
    let mut a = CodeAssembler::new(16)?;
    let mut print = a.create_label();
    let mut fail = a.create_label();
    let mut halt = a.create_label();
    a.cli()?;
    a.xor(ax, ax)?;
    a.mov(ds, ax)?;
    a.mov(es, ax)?;
    a.mov(ss, ax)?;
    a.mov(sp, 0x7c00)?;
    // int 13h AH=02: one sector, cylinder 0, head 0, sector 2, to 0:8000;
    // DL still holds the boot drive.
    a.mov(ax, 0x0201)?;
    a.mov(cx, 0x0002)?;
    a.mov(dh, 0)?;
    a.mov(bx, 0x8000)?;
    a.int(0x13)?;
    a.jc(fail)?;
    a.mov(si, 0x8000)?;
    a.set_label(&mut print)?;
    a.lodsb()?;
    a.test(al, al)?;
    a.jz(halt)?;
    a.mov(dx, 0x3f8)?;
    a.out(dx, al)?;
    a.jmp(print)?;
    a.set_label(&mut fail)?;
    a.mov(al, i32::from(b'E'))?;
    a.mov(dx, 0x3f8)?;
    a.out(dx, al)?;
    a.set_label(&mut halt)?;
    a.hlt()?;
    a.jmp(halt)?;
    let code = a.assemble(0x7c00)?;
    let mut disk = vec![0u8; 1 << 20];
    disk[..code.len()].copy_from_slice(&code);
    disk[510] = 0x55;
    disk[511] = 0xaa;
    disk[512..512 + sector1.len()].copy_from_slice(sector1.as_bytes());
    Ok(disk)
}

/// The newest modification time of the files under `path`.
pub fn newest(path: &Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(|e| newest(&e.ok()?.path()))
        .max()
}

/// The vmctl binary: `$VMCTL`, or the one next to vmd.  When that one is
/// older than the sources it is built from (`cargo test -p vmd` builds
/// vmd's targets only) and cargo runs this test, `cargo build -p vmctl`
/// with this test's profile first.  A workspace build leaves it alone:
/// vmctl's own tests may be running it.
pub fn vmctl_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("VMCTL") {
        return Ok(PathBuf::from(p));
    }
    let dir = Path::new(env!("CARGO_BIN_EXE_vmd"))
        .parent()
        .ok_or("CARGO_BIN_EXE_vmd has no directory")?;
    let vmctl = dir.join("vmctl");
    let top = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let sources = [
        "vmctl",
        "vmd/src",
        "vmd/Cargo.toml",
        "vmm-sys",
        "Cargo.lock",
    ]
    .iter()
    .filter_map(|p| newest(&top.join(p)))
    .max();
    let built = std::fs::metadata(&vmctl).and_then(|m| m.modified()).ok();
    let stale = match (built, sources) {
        (Some(b), Some(s)) => b < s,
        (b, _) => b.is_none(),
    };
    // cargo test and nextest set CARGO for the tests they run.
    if let (true, Some(cargo)) = (stale, std::env::var_os("CARGO")) {
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "vmctl", "--bin", "vmctl"])
            .current_dir(&top)
            .stdin(Stdio::null());
        // target/<profile>: the dev and test profiles build into debug.
        match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => {}
            Some("release") => {
                cmd.arg("--release");
            }
            Some(profile) => {
                cmd.args(["--profile", profile]);
            }
        }
        let st = cmd
            .status()
            .map_err(|e| format!("cargo build -p vmctl: {e}"))?;
        if !st.success() {
            return Err(format!("cargo build -p vmctl: {st}"));
        }
    }
    if !vmctl.is_file() {
        return Err(format!(
            "no {} (cargo build -p vmctl, or VMCTL=<path>)",
            vmctl.display()
        ));
    }
    Ok(vmctl)
}
