//! End to end: Debian's SeaBIOS (the firmware OpenBSD ships as vmm-bios)
//! boots in our VM process with no disk, prints its banner on COM1 and
//! reports that there is no bootable device; boots from vioblk, follows
//! the boot device, stops through vmmci; and boots a raw image and a
//! three-deep qcow2 chain whose boot program prints int 13h sums, which
//! must be QEMU's for the same images.  Needs /dev/kvm (or /dev/vmm) and
//! the asset fetched by scripts/fetch-assets.sh (and qemu-system-x86 and
//! qemu-utils for the comparison); reported as ignored with the reason
//! where any is missing.
#[path = "support/eltorito.rs"]
mod eltorito;
mod support;
#[path = "support/testguest.rs"]
mod testguest_support;

use libtest_mimic::{Arguments, Failed, Trial};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{bios_path, Console};
use vmd::devices::fw_cfg::BootDevice;
use vmd::devices::virtio::blk::{DiskError, DiskImage};
use vmd::devices::virtio::vmmci::VmmciCmd;
use vmd::vm::machine::{BootImage, Machine, Outcome, ShutdownRequest, VmConfig};
use vmm_sys::ExitFlavour;

/// Boots SeaBIOS and waits for "No bootable device"; returns the console
/// transcript.
fn boot_seabios(flavour: Option<ExitFlavour>) -> Result<String, Failed> {
    let image =
        std::fs::read(bios_path()).map_err(|e| format!("{}: {e}", bios_path().display()))?;
    let console = Console::default();
    let vmm = Arc::new(vmm_sys::Vmm::open()?);
    let cfg = VmConfig {
        flavour,
        ..VmConfig::new(
            "seabios",
            64 << 20,
            BootImage::Bios(image),
            Box::new(console.clone()),
        )
    };
    let machine = Machine::new(vmm, cfg)?;
    let control = machine.control();
    let runner = std::thread::spawn(move || machine.run());
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline
        && !console.text().contains("No bootable device")
        && !runner.is_finished()
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    control.stop();
    let outcome = runner.join().map_err(|_| "VM thread panicked")?;
    let text = console.text();
    match outcome {
        Ok(Outcome::Halted) => {}
        Ok(other) => return Err(format!("VM ended with {other:?}; console:\n{text}").into()),
        Err(e) => return Err(format!("VM failed: {e}; console:\n{text}").into()),
    }
    if !text.contains("SeaBIOS (version") {
        return Err(format!("no SeaBIOS banner on COM1 within 120 s; console:\n{text}").into());
    }
    if !text.contains("No bootable device") {
        return Err(format!(
            "SeaBIOS did not report 'No bootable device' within 120 s; console:\n{text}"
        )
        .into());
    }
    Ok(text)
}

/// Pauses SeaBIOS as soon as its banner appears: while paused, COM1 stays
/// silent; unpaused, the boot goes on to "No bootable device".
fn pause_unpause_seabios() -> Result<(), Failed> {
    let image =
        std::fs::read(bios_path()).map_err(|e| format!("{}: {e}", bios_path().display()))?;
    let console = Console::default();
    let vmm = Arc::new(vmm_sys::Vmm::open()?);
    let cfg = VmConfig {
        ..VmConfig::new(
            "paused",
            64 << 20,
            BootImage::Bios(image),
            Box::new(console.clone()),
        )
    };
    let machine = Machine::new(vmm, cfg)?;
    let control = machine.control();
    let runner = std::thread::spawn(move || machine.run());
    let wait_for = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline && !console.text().contains(what) {
            std::thread::sleep(Duration::from_millis(10));
        }
        console.text().contains(what)
    };
    let result = (|| -> Result<(), Failed> {
        if !wait_for("SeaBIOS (version") {
            return Err(format!("no banner; console:\n{}", console.text()).into());
        }
        if !control.pause() || !control.is_paused() || control.pause() {
            return Err("pause did not take, or took twice".into());
        }
        let before = console.text();
        std::thread::sleep(Duration::from_millis(1500));
        if console.text() != before {
            return Err(format!(
                "COM1 output while paused:\nbefore:\n{before}\nafter:\n{}",
                console.text()
            )
            .into());
        }
        if !control.unpause() || control.is_paused() || control.unpause() {
            return Err("unpause did not take, or took twice".into());
        }
        if !wait_for("No bootable device") {
            return Err(format!("no progress after unpause; console:\n{}", console.text()).into());
        }
        Ok(())
    })();
    control.stop();
    let outcome = runner.join().map_err(|_| "VM thread panicked")?;
    result?;
    match outcome {
        Ok(Outcome::Halted) => Ok(()),
        other => Err(format!("VM ended with {other:?}").into()),
    }
}

/// `vmctl stop` without -f of a guest with no vmmci driver (SeaBIOS):
/// as in vmd, the VM ends at once instead of waiting for an answer.
fn graceful_stop_without_vmmci() -> Result<(), Failed> {
    let image =
        std::fs::read(bios_path()).map_err(|e| format!("{}: {e}", bios_path().display()))?;
    let console = Console::default();
    let vmm = Arc::new(vmm_sys::Vmm::open()?);
    let cfg = VmConfig {
        ..VmConfig::new(
            "stopped",
            64 << 20,
            BootImage::Bios(image),
            Box::new(console.clone()),
        )
    };
    let machine = Machine::new(vmm, cfg)?;
    let control = machine.control();
    let runner = std::thread::spawn(move || machine.run());
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline && !console.text().contains("SeaBIOS (version") {
        std::thread::sleep(Duration::from_millis(10));
    }
    let asked = control.request_shutdown();
    let t0 = Instant::now();
    while !runner.is_finished() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let ended = t0.elapsed();
    control.stop();
    let outcome = runner.join().map_err(|_| "VM thread panicked")?;
    if asked != ShutdownRequest::Stopped {
        return Err(format!("request_shutdown said {asked:?} without a vmmci driver").into());
    }
    if ended >= Duration::from_secs(2) {
        return Err(format!("the VM took {ended:?} to end").into());
    }
    match outcome {
        Ok(Outcome::Halted) => Ok(()),
        other => Err(format!("VM ended with {other:?}").into()),
    }
}

/// What the boot sector prints: the second sector of the disk, read
/// through int 13h, i.e. SeaBIOS's virtio-blk driver and our vioblk.
const SECTOR1: &str = "vioblk: sector 1 read through SeaBIOS\n";

/// A disk in memory.
struct MemImage(Vec<u8>);

impl DiskImage for MemImage {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        let o = offset as usize;
        let size = self.0.len() as u64;
        let src = self.0.get(o..o + buf.len()).ok_or(DiskError::OutOfRange {
            path: "memimage".into(),
            offset,
            len: buf.len() as u64,
            size,
        })?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_at(&mut self, _buf: &[u8], _offset: u64) -> Result<(), DiskError> {
        Err(DiskError::ReadOnly {
            path: "memimage".into(),
        })
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

/// A 1 MiB disk whose boot sector prints sector 1 (SECTOR1) read through
/// int 13h.
fn boot_disk() -> Result<Vec<u8>, Failed> {
    support::int13_boot_disk(SECTOR1)
}

/// A 1 MiB disk with `code` as its boot sector.
fn bootable(code: &[u8]) -> Result<Vec<u8>, Failed> {
    if code.len() > 510 {
        return Err(format!("boot sector code of {} bytes", code.len()).into());
    }
    let mut disk = vec![0u8; 1 << 20];
    disk[..code.len()].copy_from_slice(code);
    disk[510] = 0x55;
    disk[511] = 0xaa;
    Ok(disk)
}

/// A boot sector that is a tiny vmmci driver, as OpenBSD's attaches: it
/// finds vmmci in slot 3 (after viornd and the disk), takes ACK and sets
/// DRIVER_OK, says "vmmci ready", then (if `answer`) polls the ISR, acks
/// the command it reads, prints "ack <n>" and resets the machine through
/// 0xCF9, or (if not) halts with interrupts off and never answers.
fn vmmci_guest(answer: bool) -> Result<Vec<u8>, Failed> {
    use iced_x86::code_asm::*;
    let mut a = CodeAssembler::new(16)?;
    let putc = |a: &mut CodeAssembler, c: u8| -> Result<(), IcedError> {
        a.mov(al, u32::from(c))?;
        a.mov(dx, 0x3f8)?;
        a.out(dx, al)
    };
    // The register at `off` of the BAR whose base is in DI, in DX.
    let reg = |a: &mut CodeAssembler, off: i32| -> Result<(), IcedError> {
        a.mov(dx, di)?;
        a.add(dx, off)
    };
    a.cli()?;
    a.xor(ax, ax)?;
    a.mov(ds, ax)?;
    a.mov(ss, ax)?;
    a.mov(sp, 0x7c00)?;
    // BAR 0 of bus 0, device 3, through configuration mechanism #1.
    a.mov(eax, 0x8000_1810u32)?;
    a.mov(dx, 0xcf8)?;
    a.out(dx, eax)?;
    a.mov(dx, 0xcfc)?;
    a.in_(eax, dx)?;
    a.and(ax, 0xfffc)?;
    a.mov(di, ax)?;
    // Reset, ACK | DRIVER, features: ACK, DRIVER_OK.
    reg(&mut a, 18)?;
    a.mov(al, 0)?;
    a.out(dx, al)?;
    a.mov(al, 3)?;
    a.out(dx, al)?;
    reg(&mut a, 4)?;
    a.mov(eax, 2u32)?;
    a.out(dx, eax)?;
    reg(&mut a, 18)?;
    a.mov(al, 7)?;
    a.out(dx, al)?;
    for c in b"vmmci ready\n" {
        putc(&mut a, *c)?;
    }
    let mut halt = a.create_label();
    if answer {
        let mut poll = a.create_label();
        a.set_label(&mut poll)?;
        reg(&mut a, 19)?;
        a.in_(al, dx)?;
        a.test(al, 2)?;
        a.jz(poll)?;
        // The command, written back as the acknowledgement.
        reg(&mut a, 20)?;
        a.in_(eax, dx)?;
        a.out(dx, eax)?;
        a.mov(bl, al)?;
        for c in b"ack " {
            putc(&mut a, *c)?;
        }
        a.mov(al, bl)?;
        a.add(al, i32::from(b'0'))?;
        a.mov(dx, 0x3f8)?;
        a.out(dx, al)?;
        putc(&mut a, b'\n')?;
        a.mov(dx, 0xcf9)?;
        a.mov(al, 6)?;
        a.out(dx, al)?;
    }
    a.set_label(&mut halt)?;
    a.hlt()?;
    a.jmp(halt)?;
    bootable(&a.assemble(0x7c00)?)
}

/// `vmctl stop` without -f (Control::request_shutdown) of a guest with a
/// vmmci driver: one that answers acknowledges REBOOT and resets, ending
/// the VM at once; one that never answers is ended by vmmci's 3 s timeout.
fn graceful_stop_with_vmmci(answer: bool) -> Result<(), Failed> {
    let image =
        std::fs::read(bios_path()).map_err(|e| format!("{}: {e}", bios_path().display()))?;
    let console = Console::default();
    let vmm = Arc::new(vmm_sys::Vmm::open()?);
    let cfg = VmConfig {
        disks: vec![Box::new(MemImage(vmmci_guest(answer)?))],
        ..VmConfig::new(
            "vmmci",
            64 << 20,
            BootImage::Bios(image),
            Box::new(console.clone()),
        )
    };
    let machine = Machine::new(vmm, cfg)?;
    let control = machine.control();
    let runner = std::thread::spawn(move || machine.run());
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline
        && !console.text().contains("vmmci ready")
        && !runner.is_finished()
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    if !console.text().contains("vmmci ready") {
        control.stop();
        let _ = runner.join();
        return Err(format!(
            "the guest's driver did not start; console:\n{}",
            console.text()
        )
        .into());
    }
    let asked = control.request_shutdown();
    let t0 = Instant::now();
    while !runner.is_finished() && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = t0.elapsed();
    let acked = control.shutdown_acked();
    control.stop();
    let outcome = runner.join().map_err(|_| "VM thread panicked")?;
    let text = console.text();
    if asked != ShutdownRequest::Asked {
        return Err(format!("request_shutdown said {asked:?} with a driver running").into());
    }
    if answer {
        if !text.contains("ack 2\n") || acked != Some(VmmciCmd::Reboot) {
            return Err(format!("no REBOOT ack ({acked:?}); console:\n{text}").into());
        }
        if took >= Duration::from_secs(1) {
            return Err(format!("an acking guest took {took:?} to end").into());
        }
        match outcome {
            Ok(Outcome::Reboot) => Ok(()),
            other => Err(format!("VM ended with {other:?}; console:\n{text}").into()),
        }
    } else {
        if acked.is_some() || text.contains("ack") {
            return Err(format!("a silent guest acked; console:\n{text}").into());
        }
        if took < Duration::from_millis(2900) || took > Duration::from_secs(10) {
            return Err(format!("a silent guest ended after {took:?}, not vmmci's 3 s").into());
        }
        match outcome {
            Ok(Outcome::Halted) => Ok(()),
            other => Err(format!("VM ended with {other:?}; console:\n{text}").into()),
        }
    }
}

/// SeaBIOS finds our vioblk through its virtio 1.x capabilities in the
/// I/O BAR, boots its boot sector and serves its int 13h read.
fn seabios_boots_from_vioblk() -> Result<(), Failed> {
    let text = boot_from_vioblk(BootDevice::Auto)?;
    if !text.contains(SECTOR1) {
        return Err(format!("the boot sector did not print sector 1; console:\n{text}").into());
    }
    Ok(())
}

/// `vmctl start -B` / vm.conf `boot device` reach SeaBIOS through fw_cfg's
/// `bootorder`: `disk` names the vioblk's slot and boots it; `net` with no
/// NIC writes no `bootorder` (vmd looks the device up first), so SeaBIOS
/// falls back to its own order and boots the disk.
fn seabios_follows_the_boot_device() -> Result<(), Failed> {
    let text = boot_from_vioblk(BootDevice::Disk)?;
    if !text.contains(SECTOR1) {
        return Err(format!("-B disk did not boot the disk; console:\n{text}").into());
    }
    let text = boot_from_vioblk(BootDevice::Net)?;
    if !text.contains(SECTOR1) {
        return Err(format!("-B net without a NIC did not fall back; console:\n{text}").into());
    }
    Ok(())
}

fn boot_from_vioblk(boot_device: BootDevice) -> Result<String, Failed> {
    let image =
        std::fs::read(bios_path()).map_err(|e| format!("{}: {e}", bios_path().display()))?;
    let console = Console::default();
    let vmm = Arc::new(vmm_sys::Vmm::open()?);
    let cfg = VmConfig {
        boot_device,
        disks: vec![Box::new(MemImage(boot_disk()?))],
        ..VmConfig::new(
            "vioblk",
            64 << 20,
            BootImage::Bios(image),
            Box::new(console.clone()),
        )
    };
    let machine = Machine::new(vmm, cfg)?;
    let control = machine.control();
    let runner = std::thread::spawn(move || machine.run());
    let deadline = Instant::now() + Duration::from_secs(120);
    let done =
        |t: &str| t.contains(SECTOR1) || t.contains("No bootable device") || t.ends_with('E');
    while Instant::now() < deadline && !done(&console.text()) && !runner.is_finished() {
        std::thread::sleep(Duration::from_millis(20));
    }
    control.stop();
    let outcome = runner.join().map_err(|_| "VM thread panicked")?;
    let text = console.text();
    if let Err(e) = outcome {
        return Err(format!("VM failed: {e}; console:\n{text}").into());
    }
    Ok(text)
}

// ---- int 13h sums through vioblk, against QEMU ----

/// Sectors of the second stage (the sum program) after the boot sector.
const STAGE2_SECTORS: u16 = 6;
const SECTOR: usize = 512;
/// The disk: 1 MiB, so 2048 sectors.
const SUM_DISK: usize = 1 << 20;

/// The reads the sum program makes: the boot sector, base data, ranges
/// that the middle and top images of the chain overwrite in part, the
/// last sector, and a read past the end.
const SUM_READS: [(u32, u16); 6] = [
    (0, 1),
    (16, 64),
    (130, 100),
    (1000, 127),
    (2047, 1),
    (2047, 2),
];

/// A boot sector that loads the sum program from the next sectors with
/// int 13h AH=42 (SeaBIOS's driver, our vioblk) to 0:7E00 and runs it
/// with the boot drive in DL; "E" on COM1 if that read fails.
fn stage1() -> Result<Vec<u8>, Failed> {
    use iced_x86::code_asm::*;
    let mut a = CodeAssembler::new(16)?;
    let mut fail = a.create_label();
    let mut halt = a.create_label();
    a.cli()?;
    a.xor(ax, ax)?;
    a.mov(ds, ax)?;
    a.mov(ss, ax)?;
    a.mov(sp, 0x7c00)?;
    a.sti()?;
    a.mov(word_ptr(0x500), 0x10)?;
    a.mov(word_ptr(0x502), i32::from(STAGE2_SECTORS))?;
    a.mov(word_ptr(0x504), 0x7e00)?;
    a.mov(word_ptr(0x506), 0)?;
    a.mov(dword_ptr(0x508), 1)?;
    a.mov(dword_ptr(0x50c), 0)?;
    a.mov(si, 0x500)?;
    a.push(dx)?;
    a.mov(ah, 0x42)?;
    a.int(0x13)?;
    a.pop(dx)?;
    a.jc(fail)?;
    a.jmp(0x7e00u64)?;
    a.set_label(&mut fail)?;
    a.mov(al, i32::from(b'E'))?;
    a.mov(dx, 0x3f8)?;
    a.out(dx, al)?;
    a.set_label(&mut halt)?;
    a.hlt()?;
    a.jmp(halt)?;
    Ok(a.assemble(0x7c00)?)
}

/// The base image: the two stages, then pseudo-random data.
fn sum_disk() -> Result<Vec<u8>, Failed> {
    let mut disk = eltorito::xorshift_bytes(SUM_DISK, 0x0dd_ba11_5eed_f00d);
    let s1 = stage1()?;
    let s2 = eltorito::sum_program(&SUM_READS, SECTOR, "int13")?;
    let room = usize::from(STAGE2_SECTORS) * SECTOR;
    if s1.len() > 510 || s2.len() > room {
        return Err(format!("stages of {} and {} bytes", s1.len(), s2.len()).into());
    }
    disk[..SECTOR + room].fill(0);
    disk[..s1.len()].copy_from_slice(&s1);
    disk[510] = 0x55;
    disk[511] = 0xaa;
    disk[SECTOR..SECTOR + s2.len()].copy_from_slice(&s2);
    Ok(disk)
}

/// Boots `disk` (a path, opened by vmd-disk with its backing chain) in our
/// VM with vioblk; the transcript up to the sum program's last line.
fn ours_from(disk: &std::path::Path) -> Result<String, Failed> {
    let bios = std::fs::read(bios_path()).map_err(|e| format!("{}: {e}", bios_path().display()))?;
    let image = vmd_disk::open(&disk.display().to_string(), None, false)?;
    let console = Console::default();
    let vmm = Arc::new(vmm_sys::Vmm::open()?);
    let cfg = VmConfig {
        boot_device: BootDevice::Disk,
        disks: vec![image],
        ..VmConfig::new(
            "int13",
            64 << 20,
            BootImage::Bios(bios),
            Box::new(console.clone()),
        )
    };
    let machine = Machine::new(vmm, cfg)?;
    let control = machine.control();
    let runner = std::thread::spawn(move || machine.run());
    let deadline = Instant::now() + Duration::from_secs(120);
    let done = |t: &str| {
        t.lines().any(|l| l.trim_end_matches('\r') == "int13: done")
            || t.contains("No bootable device")
            || t.ends_with('E')
    };
    while Instant::now() < deadline && !done(&console.text()) && !runner.is_finished() {
        std::thread::sleep(Duration::from_millis(20));
    }
    control.stop();
    let outcome = runner.join().map_err(|_| "VM thread panicked")?;
    let text = console.text();
    if let Err(e) = outcome {
        return Err(format!("VM failed: {e}; console:\n{text}").into());
    }
    Ok(text)
}

/// SeaBIOS boots, through our vioblk, a boot sector from a raw image and
/// from a qcow2 whose boot sector lives two levels down (top.qcow2 over
/// mid.qcow2 over base.raw, qemu-io patterns written into the middle and
/// top images inside ranges the program reads); the program reads sectors
/// with int 13h and prints their sums.  QEMU (virtio-blk-pci, SeaBIOS)
/// booting the same images must print the same lines, and those must be
/// the sums of the flattened image.
fn seabios_int13_sums_like_qemu() -> Result<(), Failed> {
    use testguest_support::{qemu_devices, qemu_img, qemu_io_fmt, Qemu};
    let dir = support::daemon::temp_dir("vmd-seabios", "int13")?;
    let result = (|| -> Result<(), Failed> {
        let mut flat = sum_disk()?;
        let base = dir.join("base.raw");
        std::fs::write(&base, &flat)?;
        let (mid, top) = (dir.join("mid.qcow2"), dir.join("top.qcow2"));
        let p = |x: &std::path::Path| x.display().to_string();
        qemu_img(&[
            "create",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            &p(&mid),
        ])?;
        qemu_img(&[
            "create",
            "-f",
            "qcow2",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            &p(&top),
        ])?;
        // Sectors 144..160 in the middle image, 1020..1029 (not cluster
        // aligned) in the top one.
        qemu_io_fmt(&mid, "qcow2", "write -P 0x5a 73728 8192")?;
        qemu_io_fmt(&top, "qcow2", "write -P 0xa5 522240 4608")?;
        let want_raw = eltorito::sum_lines(&flat, &SUM_READS, SECTOR, "int13");
        flat[73728..73728 + 8192].fill(0x5a);
        flat[522240..522240 + 4608].fill(0xa5);
        let want_chain = eltorito::sum_lines(&flat, &SUM_READS, SECTOR, "int13");
        if want_raw == want_chain {
            return Err("the chain's writes change no sum".into());
        }
        for (disk, format, want) in [(&base, "raw", &want_raw), (&top, "qcow2", &want_chain)] {
            let ours = ours_from(disk)?;
            let qemu = Qemu::start(&qemu_devices(disk, format, None))?
                .wait_line("int13: done", Duration::from_secs(60))?;
            let lines = |t: &str| eltorito::lines_with(t, "int13:");
            let (ours, qemu) = (lines(&ours), lines(&qemu));
            eprintln!("{format}: ours {ours:#?}");
            if ours != qemu {
                return Err(format!(
                    "{format}: transcripts differ\n ours: {ours:#?}\n qemu: {qemu:#?}"
                )
                .into());
            }
            if eltorito::without_error_codes(&ours) != *want {
                return Err(format!(
                    "{format}: sums are not the image's\n got: {ours:#?}\nwant: {want:#?}"
                )
                .into());
            }
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn main() {
    let args = Arguments::from_args();
    let skip = support::missing_vmm().or_else(support::missing_bios);
    let tests = vec![
        Trial::test("seabios_no_bootable_device_host_flavour", || {
            boot_seabios(None).map(|_| ())
        }),
        Trial::test("seabios_no_bootable_device_vmx_exits", || {
            boot_seabios(Some(ExitFlavour::Vmx)).map(|_| ())
        }),
        Trial::test("seabios_no_bootable_device_svm_exits", || {
            boot_seabios(Some(ExitFlavour::Svm)).map(|_| ())
        }),
        Trial::test("seabios_pause_unpause", pause_unpause_seabios),
        Trial::test("seabios_boots_from_vioblk", seabios_boots_from_vioblk),
        Trial::test("vmmci_graceful_stop_of_an_acking_guest", || {
            graceful_stop_with_vmmci(true)
        }),
        Trial::test("vmmci_graceful_stop_of_a_silent_guest_times_out", || {
            graceful_stop_with_vmmci(false)
        }),
        Trial::test(
            "seabios_follows_the_boot_device",
            seabios_follows_the_boot_device,
        ),
        Trial::test(
            "seabios_graceful_stop_without_vmmci_ends_at_once",
            graceful_stop_without_vmmci,
        ),
    ];
    let mut tests: Vec<Trial> = tests
        .into_iter()
        .map(|t| support::skip_if(t, skip.clone()))
        .collect();
    tests.push(support::skip_if(
        Trial::test("seabios_int13_sums_like_qemu", seabios_int13_sums_like_qemu),
        skip.clone().or_else(testguest_support::missing_qemu),
    ));
    libtest_mimic::run(&args, tests).exit();
}
