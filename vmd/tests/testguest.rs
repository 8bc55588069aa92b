//! The project's own test guest (testguest/): booted as vmd's `boot`
//! kernel in our VM process, and from a disk by SeaBIOS under QEMU with
//! QEMU's virtio devices (modern-only, capabilities in an MMIO BAR), whose
//! transcripts are checked and whose disk writes are verified with
//! `qemu-io`.
//!
//! Needs /dev/kvm, the guest (`make testguest`) and, for the QEMU tests,
//! qemu-system-x86 and qemu-utils; each test is reported as ignored with
//! the reason where something is missing.
mod support;
// Its own file, so that the other tests' crates do not compile it.
#[path = "support/testguest.rs"]
mod testguest_support;

use libtest_mimic::{Arguments, Failed, Trial};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::Console;
use testguest_support::*;
use vmd::vm::machine::{BootImage, Machine, Outcome, VmConfig};

const MB: u64 = 1 << 20;

/// Boots the guest ELF as vmd's `boot` image until it prints `done`.
fn boot_elf_in_vmd() -> Result<String, Failed> {
    let elf = std::fs::read(elf_path()).map_err(|e| format!("{}: {e}", elf_path().display()))?;
    let console = Console::default();
    let vmm = Arc::new(vmm_sys::Vmm::open()?);
    let cfg = VmConfig {
        name: "testguest".into(),
        memory: 64 * MB,
        boot: BootImage::Kernel(elf),
        console_out: Box::new(console.clone()),
        console_in: None,
        flavour: None,
    };
    let machine = Machine::new(vmm, cfg).map_err(|e| format!("Machine::new: {e}"))?;
    let control = machine.control();
    let runner = std::thread::spawn(move || machine.run());
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !runner.is_finished() {
        let t = console.text();
        if t.lines().any(|l| l == "done") || t.contains("FATAL") {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(50));
    control.stop();
    let outcome = runner.join().map_err(|_| "VM thread panicked")?;
    let text = console.text();
    match outcome {
        Ok(Outcome::Halted) => {}
        Ok(o) => return Err(format!("VM ended with {o:?}; console:\n{text}").into()),
        Err(e) => return Err(format!("VM failed: {e}; console:\n{text}").into()),
    }
    Ok(text)
}

/// The ELF path: vmd's loader, the 32-bit entry, our own GDT/IDT/TSS and
/// page tables, CPL 3 with IOPL 3, PCI enumeration (only the host bridge
/// in our VM so far).
fn elf_boots_to_cpl3() -> Result<(), Failed> {
    let text = boot_elf_in_vmd()?;
    let lines: Vec<&str> = text.lines().collect();
    let want_first = "testguest: boot=elf cpl=3";
    if lines.first() != Some(&want_first) {
        return Err(format!("first line is not {want_first:?}; console:\n{text}").into());
    }
    let bridge = "pci 00.0 0b5d:0666 class 060000 ";
    if !lines.iter().any(|l| l.starts_with(bridge)) {
        return Err(format!("no line {bridge:?}; console:\n{text}").into());
    }
    if lines.last() != Some(&"done") {
        return Err(format!("the guest did not finish with done; console:\n{text}").into());
    }
    Ok(())
}

fn main() {
    let args = Arguments::from_args();
    let vmm = support::missing_vmm();
    let guest = missing_guest();
    let need_vmd = vmm.clone().or(guest.clone());
    let tests = vec![(
        Trial::test("elf_boots_to_cpl3_in_vmd", elf_boots_to_cpl3),
        need_vmd,
    )];
    let tests = tests
        .into_iter()
        .map(|(t, why)| match why {
            Some(why) => t.with_ignored_flag(true).with_kind(why),
            None => t,
        })
        .collect();
    libtest_mimic::run(&args, tests).exit();
}
