//! The project's own test guest (testguest/, built by
//! scripts/build-testguest.sh into target/testguest/testguest): where it
//! is, the disk images SeaBIOS boots it from, and running it under QEMU.
//!
//! A boot disk is laid out as the guest's boot sector expects: LBA 0 the
//! boot sector (the ELF's segment at 0x7c00, with the 0x55aa signature),
//! LBA 1 the script sector, LBA 2 on the image (the ELF's other loadable
//! segments, flattened from their lowest physical address), then free
//! space for the tests' data.
#![allow(dead_code)]
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a script sector starts with (the guest ignores a sector without it).
pub const SCRIPT_MAGIC: &str = "#testguest\n";
/// Where the boot sector is loaded, and where the image starts.
const BOOT_SECTOR_ADDR: u64 = 0x7c00;
const IMAGE_ADDR: u64 = 0x20000;
/// The payload the boot sector reads through the firmware's int 13h (the
/// guest's `boot-payload` prints its FNV-1a): 64 KiB at 768 KiB.
pub const PAYLOAD_OFFSET: u64 = 768 << 10;
pub const PAYLOAD_LEN: u64 = 64 << 10;
/// The first byte a test may use for its own data on a boot disk.
pub const DATA_OFFSET: u64 = 1 << 20;

/// The guest ELF (`$TESTGUEST` if set).
pub fn elf_path() -> PathBuf {
    std::env::var_os("TESTGUEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/testguest/testguest")
        })
}

/// Why not, if the guest has not been built.
pub fn missing_guest() -> Option<String> {
    (!elf_path().exists()).then(|| {
        format!(
            "needs the test guest {} (run make testguest or scripts/build-testguest.sh)",
            elf_path().display()
        )
    })
}

fn in_path(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}

/// Why not, if QEMU or its tools are missing.
pub fn missing_qemu() -> Option<String> {
    ["qemu-system-x86_64", "qemu-io", "qemu-img"]
        .into_iter()
        .find(|p| !in_path(p))
        .map(|p| format!("needs {p} (Debian packages qemu-system-x86, qemu-utils)"))
}

fn rd(b: &[u8], off: usize, n: usize) -> Result<u64, String> {
    let s = b
        .get(off..off + n)
        .ok_or_else(|| format!("guest ELF truncated at offset {off}"))?;
    let mut v = [0u8; 8];
    v[..n].copy_from_slice(s);
    Ok(u64::from_le_bytes(v))
}

/// (paddr, file bytes) of each PT_LOAD segment of an ELF64.
fn segments(elf: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, String> {
    if !elf.starts_with(b"\x7fELF") || elf.get(4) != Some(&2) {
        return Err("the test guest is not an ELF64 file".into());
    }
    let phoff = rd(elf, 32, 8)? as usize;
    let phentsize = rd(elf, 54, 2)? as usize;
    let phnum = rd(elf, 56, 2)? as usize;
    let mut out = Vec::new();
    for i in 0..phnum {
        let p = phoff + i * phentsize;
        if rd(elf, p, 4)? != 1 {
            continue;
        }
        let off = rd(elf, p + 8, 8)? as usize;
        let paddr = rd(elf, p + 24, 8)?;
        let filesz = rd(elf, p + 32, 8)? as usize;
        let data = elf
            .get(off..off + filesz)
            .ok_or_else(|| format!("segment at 0x{paddr:x} beyond the end of the ELF"))?;
        out.push((paddr, data.to_vec()));
    }
    Ok(out)
}

/// A script sector: the magic, then one command a line.
pub fn script_sector(script: &str) -> Result<[u8; 512], String> {
    let text = format!("{SCRIPT_MAGIC}{script}");
    if text.len() >= 512 {
        return Err(format!(
            "script of {} bytes does not fit a sector",
            text.len()
        ));
    }
    let mut s = [0u8; 512];
    s[..text.len()].copy_from_slice(text.as_bytes());
    Ok(s)
}

/// A raw boot disk of `size` bytes: boot sector, script, guest image.
pub fn boot_disk(elf: &[u8], script: &str, size: u64) -> Result<Vec<u8>, String> {
    let segs = segments(elf)?;
    let boot = segs
        .iter()
        .find(|(a, _)| *a == BOOT_SECTOR_ADDR)
        .ok_or("the test guest has no boot sector segment at 0x7c00")?;
    if boot.1.len() > 510 {
        return Err(format!("boot sector of {} bytes", boot.1.len()));
    }
    let mut disk = vec![0u8; 1024];
    disk[..boot.1.len()].copy_from_slice(&boot.1);
    disk[510] = 0x55;
    disk[511] = 0xaa;
    disk[512..1024].copy_from_slice(&script_sector(script)?);
    for (addr, data) in segs.iter().filter(|(a, _)| *a >= IMAGE_ADDR) {
        let at = 1024 + (addr - IMAGE_ADDR) as usize;
        if disk.len() < at + data.len() {
            disk.resize(at + data.len(), 0);
        }
        disk[at..at + data.len()].copy_from_slice(data);
    }
    if disk.len() as u64 > PAYLOAD_OFFSET.min(size) {
        return Err(format!(
            "guest image of {} bytes does not fit below {PAYLOAD_OFFSET}",
            disk.len()
        ));
    }
    disk.resize(size as usize, 0);
    Ok(disk)
}

/// Writes a boot disk image to `path`.
pub fn write_boot_disk(path: &Path, script: &str, size: u64) -> Result<(), String> {
    let elf = std::fs::read(elf_path()).map_err(|e| format!("{}: {e}", elf_path().display()))?;
    let disk = boot_disk(&elf, script, size)?;
    std::fs::write(path, disk).map_err(|e| format!("{}: {e}", path.display()))
}

/// A running QEMU whose COM1 is collected.
pub struct Qemu {
    child: Child,
    out: Arc<Mutex<Vec<u8>>>,
}

impl Qemu {
    /// `qemu-system-x86_64 -enable-kvm` with no default devices, COM1 on
    /// stdout, and `args` (the drives and devices).
    pub fn start(args: &[String]) -> Result<Qemu, String> {
        Qemu::start_with(Command::new("qemu-system-x86_64"), args)
    }

    /// As `start`, with `cmd` as the QEMU command (`ip netns exec ...
    /// qemu-system-x86_64`, say).
    pub fn start_with(mut cmd: Command, args: &[String]) -> Result<Qemu, String> {
        let mut child = cmd
            .args([
                "-enable-kvm",
                "-nodefaults",
                "-display",
                "none",
                "-m",
                "128",
                "-serial",
                "stdio",
                "-monitor",
                "none",
                "-no-reboot",
            ])
            .args(args)
            // COM1's input: `send` (nothing is sent unless a test asks).
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("qemu-system-x86_64: {e}"))?;
        let out = Arc::new(Mutex::new(Vec::new()));
        let mut stdout = child.stdout.take().ok_or("qemu: no stdout")?;
        let o = out.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                o.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Ok(Qemu { child, out })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    /// Waits for a line equal to `line` for at most `timeout`, QEMU left
    /// running; the transcript in the error.
    pub fn wait_for(&mut self, line: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.text();
            if text.lines().any(|l| l.trim_end_matches('\r') == line) {
                return Ok(());
            }
            let ended = matches!(self.child.try_wait(), Ok(Some(_)));
            if ended || text.contains("FATAL") || Instant::now() > deadline {
                std::thread::sleep(Duration::from_millis(100));
                let _ = self.child.kill();
                let status = self.child.wait();
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return Err(format!(
                    "no line {line:?} from the guest within {timeout:?} (qemu {status:?}, stderr {err:?}); console:\n{}",
                    self.text()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `bytes` to COM1.
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().ok_or("qemu: no stdin")?;
        stdin
            .write_all(bytes)
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("qemu: writing to COM1: {e}"))
    }

    /// Stops QEMU; the transcript.
    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(50));
        self.text()
    }

    /// Waits for a line equal to `line` (or a FATAL line, or QEMU's end)
    /// for at most `timeout`; then stops QEMU and returns the transcript.
    pub fn wait_line(mut self, line: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let found = loop {
            let text = self.text();
            if text.lines().any(|l| l == line) || text.contains("FATAL") {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                break false;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = self.child.kill();
        let status = self.child.wait();
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let text = self.text();
        if !found || text.contains("FATAL") {
            return Err(format!(
                "no line {line:?} from the guest within {timeout:?} (qemu {status:?}, stderr {err:?}); console:\n{text}"
            ));
        }
        Ok(text)
    }
}

impl Drop for Qemu {
    /// A test that fails midway leaves no QEMU behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The guest's result lines, which must be the same under any VMM:
/// everything but the banner, timings (`timing:`) and notes (`note:`, such
/// as which IRQ line or BAR kind a device has).
pub fn results(transcript: &str) -> Vec<String> {
    transcript
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| {
            !l.starts_with("timing:") && !l.starts_with("testguest:") && !l.starts_with("note:")
        })
        .map(str::to_string)
        .collect()
}

/// Runs `qemu-img` with `args`; its output, or why it failed.
pub fn qemu_img(args: &[&str]) -> Result<String, String> {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .map_err(|e| format!("qemu-img: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(format!("qemu-img {args:?}: {}", text.trim()));
    }
    Ok(text)
}

/// FNV-1a (64-bit), as the guest's `*-read-sum` commands print it.
pub fn fnv(data: &[u8]) -> String {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    format!("{h:016x}")
}

/// A scratch file removed when dropped.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(tag: &str) -> TempFile {
        TempFile(
            std::env::temp_dir().join(format!("vmd-testguest-{}-{tag}.img", std::process::id())),
        )
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `qemu-io -f raw -c <cmd> <image>`; its output, or why it failed
/// (qemu-io reports a pattern mismatch on stdout and still exits 0).
pub fn qemu_io(image: &Path, cmd: &str) -> Result<String, String> {
    qemu_io_fmt(image, "raw", cmd)
}

/// `qemu-io` on an image of the given format.
pub fn qemu_io_fmt(image: &Path, format: &str, cmd: &str) -> Result<String, String> {
    qemu_io_cmds(image, format, &[cmd.to_string()])
}

/// `qemu-io` running several commands in one process.
pub fn qemu_io_cmds(image: &Path, format: &str, cmds: &[String]) -> Result<String, String> {
    let cmd = cmds.join("; ");
    let out = Command::new("qemu-io")
        .args(["-f", format])
        .args(cmds.iter().flat_map(|c| ["-c", c.as_str()]))
        .arg(image)
        .output()
        .map_err(|e| format!("qemu-io: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() || text.contains("failed") || text.contains("error") {
        return Err(format!("qemu-io -c {cmd:?}: {}", text.trim()));
    }
    Ok(text)
}

/// The arguments giving QEMU a modern-only virtio-blk on `disk` (the boot
/// disk, so SeaBIOS boots the guest from it), a modern-only virtio-rng
/// and, with `cdrom`, a modern-only virtio-scsi with a CD-ROM.
pub fn qemu_devices(disk: &Path, format: &str, cdrom: Option<&Path>) -> Vec<String> {
    let mut v = vec![
        "-drive".into(),
        format!("file={},if=none,id=d0,format={format}", disk.display()),
        "-device".into(),
        "virtio-blk-pci,drive=d0,disable-legacy=on,serial=testguest-disk".into(),
        "-device".into(),
        "virtio-rng-pci,disable-legacy=on".into(),
    ];
    if let Some(iso) = cdrom {
        v.extend([
            "-device".into(),
            "virtio-scsi-pci,disable-legacy=on,id=scsi0".into(),
            "-drive".into(),
            format!(
                "file={},if=none,id=cd0,media=cdrom,format=raw,readonly=on",
                iso.display()
            ),
            "-device".into(),
            "scsi-cd,drive=cd0,bus=scsi0.0".into(),
        ]);
    }
    v
}
