//! vioscsi against drivers nobody here wrote, compared with QEMU's
//! virtio-scsi CD-ROM (`-device virtio-scsi-pci,disable-legacy=on -device
//! scsi-cd`) on the same image:
//!
//! - SeaBIOS boots an El Torito no-emulation ISO made by `xorriso`, with
//!   `boot device cdrom` so that fw_cfg's bootorder names our vioscsi; the
//!   boot program prints a line and sums of the data file's blocks read
//!   through int 13h (SeaBIOS's virtio-scsi driver), and a read past the
//!   end; the transcript must be QEMU's and match the sums of the ISO.
//! - The same ISO through the daemon: a start request with the ISO and
//!   `boot device cdrom`, the ISO opened by the parent and passed down to
//!   the VM process, the boot program's lines read from the VM's tty.
//! - The test guest (testguest/), booted by SeaBIOS from a vioblk disk,
//!   runs its virtio-scsi commands (INQUIRY, READ CAPACITY, READ(10) sums,
//!   a read past the end, hostile chains) on our vioscsi and on QEMU's;
//!   the result lines must be the same and the sums those of the image.
//!
//! Needs /dev/kvm, SeaBIOS (scripts/fetch-assets.sh), qemu-system-x86,
//! xorriso, root for the daemon and, for the test guest, the guest
//! (`make testguest`); each
//! test is reported as ignored with the reason where something is missing.
#[path = "support/eltorito.rs"]
mod eltorito;
mod support;
#[path = "support/testguest.rs"]
mod testguest_support;

use eltorito::*;
use libtest_mimic::{Arguments, Failed, Trial};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{bios_path, Console};
use testguest_support::*;
use vmd::devices::fw_cfg::BootDevice;
use vmd::devices::virtio::blk::{DiskError, DiskImage};
use vmd::vm::machine::{BootImage, Machine, VmConfig};

const MB: u64 = 1 << 20;

fn err(what: &str) -> DiskError {
    DiskError::Io {
        path: "memiso".into(),
        op: "test",
        offset: 0,
        source: std::io::Error::other(what.to_string()),
    }
}

/// An image in memory, read-only.
struct MemImage(Vec<u8>);

impl DiskImage for MemImage {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        let o = offset as usize;
        buf.copy_from_slice(
            self.0
                .get(o..o + buf.len())
                .ok_or_else(|| err("read past the end"))?,
        );
        Ok(())
    }
    fn write_at(&mut self, _buf: &[u8], _offset: u64) -> Result<(), DiskError> {
        Err(err("read-only"))
    }
    fn flush(&mut self) -> Result<(), DiskError> {
        Ok(())
    }
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_only(&self) -> bool {
        true
    }
}

/// Runs a VM until a line equal to `last` (or the deadline); returns the
/// console transcript.
fn run_vmd(cfg: VmConfig, last: &str, timeout: Duration) -> Result<String, Failed> {
    let console = Console::default();
    let cfg = VmConfig {
        console_out: Box::new(console.clone()),
        ..cfg
    };
    let vmm = Arc::new(vmm_sys::Vmm::open()?);
    let machine = Machine::new(vmm, cfg).map_err(|e| format!("Machine::new: {e}"))?;
    let control = machine.control();
    let runner = std::thread::spawn(move || machine.run());
    let deadline = Instant::now() + timeout;
    let done = |t: &str| t.lines().any(|l| l.trim_end_matches('\r') == last) || t.contains("FATAL");
    while Instant::now() < deadline && !done(&console.text()) && !runner.is_finished() {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(50));
    control.stop();
    let outcome = runner.join().map_err(|_| "VM thread panicked")?;
    let text = console.text();
    if let Err(e) = outcome {
        return Err(format!("VM failed: {e}; console:\n{text}").into());
    }
    if !done(&text) {
        return Err(format!("no line {last:?} within {timeout:?}; console:\n{text}").into());
    }
    Ok(text)
}

// ---- El Torito ----

/// SeaBIOS boots the El Torito ISO from our vioscsi (bootorder from `boot
/// device cdrom`) and from QEMU's; both print the ISO's sums.
fn seabios_boots_eltorito_iso() -> Result<(), Failed> {
    let dir = std::env::temp_dir().join(format!("vmd-vioscsi-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let result = (|| {
        let (iso, reads) = eltorito_iso(&dir)?;
        let want = eltorito_lines(&iso, &reads);

        let bios =
            std::fs::read(bios_path()).map_err(|e| format!("{}: {e}", bios_path().display()))?;
        let ours = run_vmd(
            VmConfig {
                cdrom: Some(Box::new(MemImage(iso.clone()))),
                boot_device: BootDevice::Cdrom,
                ..VmConfig::new(
                    "eltorito",
                    64 * MB,
                    BootImage::Bios(bios),
                    Box::new(std::io::sink()),
                )
            },
            "eltorito: done",
            Duration::from_secs(120),
        )?;
        let iso_path = dir.join("eltorito.iso");
        let qemu = Qemu::start(&[
            "-device".into(),
            "virtio-scsi-pci,disable-legacy=on,id=scsi0".into(),
            "-drive".into(),
            format!(
                "file={},if=none,id=cd0,media=cdrom,format=raw,readonly=on",
                iso_path.display()
            ),
            "-device".into(),
            "scsi-cd,drive=cd0,bus=scsi0.0,bootindex=0".into(),
        ])?
        .wait_line("eltorito: done", Duration::from_secs(60))?;
        let (ours, qemu) = (
            lines_with(&ours, "eltorito:"),
            lines_with(&qemu, "eltorito:"),
        );
        if ours != qemu {
            return Err(format!("transcripts differ\n ours: {ours:#?}\n qemu: {qemu:#?}").into());
        }
        let got = without_error_codes(&ours);
        if got != want {
            return Err(
                format!("sums differ from the ISO's\n got: {got:#?}\nwant: {want:#?}").into(),
            );
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The daemon's path: `vmctl start -b bios -r iso -B cdrom` as a control
/// request; the parent opens the ISO, passes it (START_VM_CDROM) through
/// the vmm process to the VM process, whose vioscsi SeaBIOS boots from;
/// the boot program's lines come out on the VM's tty.
fn daemon_boots_eltorito_cdrom() -> Result<(), Failed> {
    use std::os::unix::net::UnixStream;
    use support::daemon;
    use vmd_proto::config::{VMOP_CREATE_CDROM, VMOP_CREATE_KERNEL, VMOP_CREATE_MEMORY};
    use vmd_proto::msg::VmopCreateParams;
    use vmd_proto::{ImsgChannel, Message};

    let dir = daemon::temp_dir("vmd-vioscsi", "daemon")?;
    let (iso, reads) = eltorito_iso(&dir)?;
    let iso_path = dir.join("eltorito.iso");
    let socket = dir.join("vmd.sock");
    let cfg = dir.join("vm.conf");
    std::fs::write(&cfg, "")?;
    let mut vmd = daemon::command(&cfg, &socket).spawn()?;
    let result = (|| -> Result<(), Failed> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match UnixStream::connect(&socket) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => return Err(format!("vmd's control socket: {e}").into()),
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut c = ImsgChannel::new(stream);
        let params = VmopCreateParams {
            name: "cd".into(),
            flags: VMOP_CREATE_KERNEL | VMOP_CREATE_MEMORY | VMOP_CREATE_CDROM,
            ncpus: 1,
            memory: 64 * MB,
            kernel: Some(bios_path().display().to_string()),
            cdrom: Some(iso_path.display().to_string()),
            boot_device: BootDevice::Cdrom,
            ..Default::default()
        };
        let bios = std::fs::File::open(bios_path())?;
        c.send_with(&Message::StartVmRequest(params), 0, 0, vec![bios.into()])?;
        let started = match c.recv()?.msg {
            Message::StartVmResponse(r) if r.result == 0 && !r.ttyname.is_empty() => r,
            other => return Err(format!("start: {other:?}").into()),
        };
        let text = daemon::read_tty(&started.ttyname, "eltorito: done")?;
        let got = without_error_codes(&lines_with(&text, "eltorito:"));
        let want = eltorito_lines(&iso, &reads);
        if got != want {
            return Err(format!("console\n got: {got:#?}\nwant: {want:#?}\n{text}").into());
        }
        // Served by a vioscsi device process (`vmd -X ... -t s`), a child
        // of the VM process, where /proc shows it.
        if cfg!(target_os = "linux") {
            let vm = started.pid.to_string();
            let scsi = std::fs::read_dir("/proc")?
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .any(|pid| {
                    let stat =
                        std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                    let ppid = stat
                        .rsplit_once(") ")
                        .and_then(|(_, r)| r.split(' ').nth(1));
                    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
                    ppid == Some(vm.as_str())
                        && args.windows(2).any(|w| w[0] == b"-t" && w[1] == b"s")
                });
            if !scsi {
                return Err(format!("vm process {vm} has no vioscsi device process").into());
            }
        }
        Ok(())
    })();
    let stopped = daemon::stop(&mut vmd);
    daemon::end(&mut vmd);
    let _ = std::fs::remove_dir_all(&dir);
    result.and(stopped)
}

// ---- the test guest ----

/// The test guest's virtio-scsi commands on our vioscsi and on QEMU's,
/// the guest booted by SeaBIOS from a disk in both: the same result
/// lines, the image's sums.
fn testguest_scsi_same_as_qemu() -> Result<(), Failed> {
    let iso = TempFile::new("vioscsi-cdrom");
    let data = xorshift_bytes(2 * MB as usize, 0x2545_f491_4f6c_dd1d);
    std::fs::write(&iso.0, &data).map_err(|e| format!("{}: {e}", iso.0.display()))?;
    let script = "scsi-info\nscsi-read-sum 0 16\nscsi-read-sum 1000 24\nscsi-read-sum 1022 4\n\
                  scsi-read-sum 1023 1\nhostile-chain loop scsi\nhostile-chain wild-idx scsi\n";
    let blocks = |a: usize, n: usize| fnv(&data[a * BLOCK..(a + n) * BLOCK]);
    let want = vec![
        "scsi-info: type 5 removable 1 blocks 1024 block size 2048".to_string(),
        format!("scsi-read-sum: lba 0 count 16: fnv {}", blocks(0, 16)),
        format!("scsi-read-sum: lba 1000 count 24: fnv {}", blocks(1000, 24)),
        "scsi-read-sum: lba 1022 count 4: at 1022: check condition, sense key 0x5 asc 0x21 ascq 0x00"
            .into(),
        format!("scsi-read-sum: lba 1023 count 1: fnv {}", blocks(1023, 1)),
        "hostile-chain loop scsi: needs-reset".into(),
        "hostile-chain loop scsi: works after reset".into(),
        "hostile-chain wild-idx scsi: needs-reset".into(),
        "hostile-chain wild-idx scsi: works after reset".into(),
        "done".into(),
    ];

    // Ours: SeaBIOS boots the guest from a vioblk disk, as QEMU's does.
    let elf = std::fs::read(elf_path()).map_err(|e| format!("{}: {e}", elf_path().display()))?;
    let bios = std::fs::read(bios_path()).map_err(|e| format!("{}: {e}", bios_path().display()))?;
    let ours = run_vmd(
        VmConfig {
            disks: vec![Box::new(MemImage(boot_disk(&elf, script, 32 * MB)?))],
            cdrom: Some(Box::new(MemImage(data.clone()))),
            boot_device: BootDevice::Disk,
            ..VmConfig::new(
                "testguest",
                64 * MB,
                BootImage::Bios(bios),
                Box::new(std::io::sink()),
            )
        },
        "done",
        Duration::from_secs(120),
    )?;

    let boot = TempFile::new("vioscsi-boot");
    write_boot_disk(&boot.0, script, 32 * MB)?;
    let qemu = Qemu::start(&qemu_devices(&boot.0, "raw", Some(&iso.0)))?
        .wait_line("done", Duration::from_secs(60))?;

    // From the guest's banner on: SeaBIOS's "Booting from Hard Disk..."
    // (printed on COM1 in our VM) ends without a newline.
    let from_banner = |t: &str| {
        t.find("testguest: boot=")
            .map_or(String::new(), |i| t[i..].into())
    };
    let (ours_r, qemu_r) = (results(&from_banner(&ours)), results(&from_banner(&qemu)));
    if ours_r != qemu_r {
        return Err(format!(
            "result lines differ\n ours: {ours_r:#?}\n qemu: {qemu_r:#?}\nour transcript:\n{ours}"
        )
        .into());
    }
    if ours_r != want {
        return Err(format!("result lines\n got: {ours_r:#?}\nwant: {want:#?}").into());
    }
    Ok(())
}

fn main() {
    let args = Arguments::from_args();
    let base = support::missing_vmm().or_else(missing_qemu);
    let eltorito = base
        .clone()
        .or_else(support::missing_bios)
        .or_else(missing_xorriso);
    let daemon = support::missing_vmm()
        .or_else(support::missing_root)
        .or_else(support::missing_bios)
        .or_else(missing_xorriso);
    let guest = base.or_else(support::missing_bios).or_else(missing_guest);
    let tests = vec![
        (
            Trial::test(
                "seabios_boots_eltorito_iso_like_qemu",
                seabios_boots_eltorito_iso,
            ),
            eltorito,
        ),
        (
            Trial::test("daemon_boots_eltorito_cdrom", daemon_boots_eltorito_cdrom),
            daemon,
        ),
        (
            Trial::test(
                "testguest_scsi_on_vioscsi_like_qemu",
                testguest_scsi_same_as_qemu,
            ),
            guest,
        ),
    ];
    let tests = tests
        .into_iter()
        .map(|(t, why)| support::skip_if(t, why))
        .collect();
    libtest_mimic::run(&args, tests).exit();
}
