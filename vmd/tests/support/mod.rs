//! What vmd's integration tests share: why a test cannot run on this host
//! (reported as the reason it is ignored), SeaBIOS's path, a console that
//! keeps what the guest wrote, and ([`daemon`]) vmd -d as a process.
//!
//! Each test is its own crate and uses only some of this.
#![allow(dead_code)]

pub mod daemon;

use std::io::Write;
use std::path::PathBuf;
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
