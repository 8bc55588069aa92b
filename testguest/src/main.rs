//! A freestanding test guest for vmd's (and QEMU's) devices.
//!
//! Booted by vmd as its `boot` kernel (ELF64, 32-bit entry as OpenBSD's
//! boot loader ABI has it) or by SeaBIOS from a disk whose boot sector
//! loads it (see boot.rs).  Its CPL0 part only sets up the machine and drops
//! to CPL 3 with IOPL 3, where everything else runs: on hosts whose KVM
//! emulates CPL0 code, the drivers' loops then run natively.  It reports
//! on COM1, one result per line, and is driven by a script (script.rs).
#![no_std]
#![no_main]

mod arch;
mod boot;
mod mem;
#[macro_use]
mod serial;
mod blk;
mod dma;
mod hostile;
mod irq;
mod net;
mod pci;
mod rng;
mod script;
mod scsi;
mod timer;
mod virtio;
mod vmmci;

use core::panic::PanicInfo;

/// How this boot started (boot::BOOT_ELF or boot::BOOT_DISK).
pub static BOOT_KIND: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

#[no_mangle]
extern "C" fn testguest_main(boot_kind: u64, script_addr: u64) {
    BOOT_KIND.store(boot_kind, core::sync::atomic::Ordering::Relaxed);
    serial::Com1::init();
    println!(
        "testguest: boot={} cpl={}",
        if boot_kind == boot::BOOT_DISK {
            "disk"
        } else {
            "elf"
        },
        arch::cpl(),
    );
    if boot_kind == boot::BOOT_ELF {
        dma::limit_from_bootargs();
    }
    println!("note: device memory 0x{:x}-0x{:x}", dma::BASE, dma::end());
    let script = match boot_kind {
        boot::BOOT_DISK => script::Script::at(script_addr),
        boot::BOOT_ELF => script::Script::from_disk(),
        _ => None,
    };
    script.unwrap_or_else(script::Script::default_script).run();
    println!("done");
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    println!("FATAL panic: {info}");
    arch::halt()
}
