//! The boot loaders on a guest-owner-supplied image: the first byte
//! picks the OpenBSD ELF kernel loader (ELF32/ELF64 headers, program and
//! section headers, PT_OPENBSD_RANDOMIZE, symbols, then the boot
//! arguments), the Linux bzImage loader (setup header, initrd, command
//! line) or the BIOS loader.  All load into one guest laid out as vmd
//! lays out 64 MiB, made once: loaders only write it.  gzip'd images
//! (`elf::read_image`) are left out: their inflation limit (512 MiB) is
//! far above what a fuzzing process may allocate.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vmd::vm::boot::bios;
use vmd::vm::boot::elf::{self, BootOptions};
use vmd::vm::boot::linux::{self, LinuxBoot};
use vmm_sys::abi::{vm_mem_range, VM_MEM_MMIO};
use vmm_sys::GuestMemory;

thread_local! {
    static GUEST: (GuestMemory, Vec<vm_mem_range>) = {
        let ranges = vmd::vm::memmap::create_memory_map(64 << 20).expect("memory map");
        let spans: Vec<(u64, usize)> = ranges
            .iter()
            .filter(|r| r.vmr_type != VM_MEM_MMIO as i32)
            .map(|r| (r.vmr_gpa, r.vmr_size))
            .collect();
        (GuestMemory::anonymous(&spans).expect("guest memory"), ranges)
    };
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, image)) = data.split_first() else {
        return;
    };
    GUEST.with(|(mem, ranges)| {
        let r = match which % 4 {
            0 | 1 => {
                let _ = elf::is_elf(image);
                let opts = BootOptions {
                    boot_mac: (which & 4 != 0).then_some([0xfe, 0xe1, 0xba, 0xd0, 0, 1]),
                };
                elf::load(mem, ranges, image, &opts)
            }
            2 => {
                // The last 64 bytes (at most) are the command line, as
                // text; an initrd of 4 KiB when bit 2 is set.
                let split = image.len().saturating_sub(64);
                let (kernel, tail) = image.split_at(split);
                let cmdline = String::from_utf8_lossy(tail);
                let initrd = [0x5a; 4096];
                let boot = LinuxBoot {
                    kernel,
                    initrd: (which & 4 != 0).then_some(&initrd[..]),
                    cmdline: &cmdline,
                };
                linux::load(mem, ranges, &boot)
            }
            _ => bios::load(mem, image),
        };
        if let Err(e) = r {
            let _ = e.to_string();
        }
    });
});
