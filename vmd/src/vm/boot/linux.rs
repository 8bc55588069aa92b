//! Direct boot of a Linux bzImage (OpenBSD's vmd has none; Firecracker and
//! QEMU do): the Linux x86 boot protocol through linux-loader — the
//! protected-mode kernel at 1 MiB, `boot_params` (the zero page) with the
//! e820 map, command line and initrd, and the 64-bit entry point in long
//! mode with an identity map.
use super::{write, LoadError};
use crate::vm::guest_memory::VmMemory;
use crate::vm::memmap::{E820_RAM, E820_RESERVED, MB};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::KernelLoader;
use std::io::Cursor;
use vm_memory::GuestAddress;
use vmm_sys::abi::*;
use vmm_sys::GuestMemory;

pub const ZERO_PAGE: u64 = 0x7000;
pub const BOOT_STACK: u64 = 0x8ff0;
pub const PML4: u64 = 0x9000;
pub const PDPT: u64 = 0xA000;
pub const PD: u64 = 0xB000;
pub const GDT: u64 = 0x500;
pub const CMDLINE: u64 = 0x2_0000;
/// Largest command line we place (the page at CMDLINE up to 0x9F000 is free).
pub const CMDLINE_MAX: usize = 0x1_0000;

/// `boot_params.hdr.type_of_loader`: undefined boot loader.
const LOADER_UNDEFINED: u8 = 0xff;
/// `xloadflags` bit: the kernel has a 64-bit entry point at +0x200.
const XLF_KERNEL_64: u16 = 1;
const KEEP_SEGMENTS: u8 = 0x40;
const CAN_USE_HEAP: u8 = 0x80;

pub struct LinuxBoot<'a> {
    pub kernel: &'a [u8],
    pub initrd: Option<&'a [u8]>,
    pub cmdline: &'a str,
}

pub fn load(
    mem: &GuestMemory,
    ranges: &[vm_mem_range],
    boot: &LinuxBoot,
) -> Result<vcpu_reg_state, LoadError> {
    let vm = VmMemory::new(mem).map_err(|e| LoadError::Memory(e.to_string()))?;
    let loaded = BzImage::load(
        vm.mmap(),
        None,
        &mut Cursor::new(boot.kernel),
        Some(GuestAddress(MB)),
    )
    .map_err(|e| LoadError::Format(format!("not a bzImage: {e}")))?;
    let mut hdr = loaded
        .setup_header
        .ok_or_else(|| LoadError::Format("bzImage without a setup header".into()))?;
    if hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(LoadError::Format(
            "the kernel has no 64-bit entry point (xloadflags)".into(),
        ));
    }
    // Command line.
    let limit = if hdr.cmdline_size != 0 {
        (hdr.cmdline_size as usize).min(CMDLINE_MAX)
    } else {
        255
    };
    if boot.cmdline.len() >= limit {
        return Err(LoadError::Size {
            what: "kernel command line",
            size: boot.cmdline.len(),
            limit,
        });
    }
    let mut cmd = boot.cmdline.as_bytes().to_vec();
    cmd.push(0);
    write(mem, CMDLINE, &cmd)?;
    hdr.cmd_line_ptr = CMDLINE as u32;
    hdr.type_of_loader = LOADER_UNDEFINED;
    hdr.loadflags |= CAN_USE_HEAP | KEEP_SEGMENTS;
    hdr.heap_end_ptr = 0xfe00;
    // Initrd: as high as the kernel allows, in RAM below 4 GiB.
    if let Some(initrd) = boot.initrd {
        let max = if hdr.initrd_addr_max != 0 {
            hdr.initrd_addr_max as u64
        } else {
            0x37ff_ffff
        };
        let ram = ranges
            .iter()
            .find(|r| r.vmr_gpa == MB && r.vmr_type == VM_MEM_RAM as i32)
            .ok_or_else(|| LoadError::Format("no RAM above 1 MiB for the initrd".into()))?;
        let top = (ram.vmr_gpa + ram.vmr_size as u64).min(max + 1);
        let addr = top
            .checked_sub(initrd.len() as u64)
            .map(|a| a & !0xfff)
            .filter(|&a| a >= loaded.kernel_end);
        let addr = addr.ok_or(LoadError::Size {
            what: "initrd",
            size: initrd.len(),
            limit: (top.saturating_sub(loaded.kernel_end)) as usize,
        })?;
        write(mem, addr, initrd)?;
        hdr.ramdisk_image = addr as u32;
        hdr.ramdisk_size = initrd.len() as u32;
    }
    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    for (i, r) in ranges.iter().enumerate().take(params.e820_table.len()) {
        let ty = if r.vmr_type == VM_MEM_RAM as i32 {
            E820_RAM
        } else {
            E820_RESERVED
        };
        params.e820_table[i] = boot_e820_entry {
            addr: r.vmr_gpa,
            size: r.vmr_size as u64,
            r#type: ty,
        };
        params.e820_entries = i as u8 + 1;
    }
    LinuxBootConfigurator::write_bootparams::<vm_memory::GuestMemoryMmap>(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE)),
        vm.mmap(),
    )
    .map_err(|e| LoadError::Memory(format!("boot_params: {e}")))?;
    // GDT: null, null, 0x10 64-bit code, 0x18 data (the boot protocol's
    // __BOOT_CS and __BOOT_DS).
    let gdt: [u64; 4] = [0, 0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
    write(
        mem,
        GDT,
        &gdt.iter()
            .flat_map(|d| d.to_le_bytes())
            .collect::<Vec<u8>>(),
    )?;
    // Identity map of the first 1 GiB with 2 MiB pages.
    write(mem, PML4, &(PDPT | 0x3).to_le_bytes())?;
    write(mem, PDPT, &(PD | 0x3).to_le_bytes())?;
    let pd: Vec<u8> = (0..512u64)
        .flat_map(|i| ((i << 21) | 0x83).to_le_bytes())
        .collect();
    write(mem, PD, &pd)?;
    Ok(long_mode_state(loaded.kernel_load.0 + 0x200))
}

fn long_mode_state(entry: u64) -> vcpu_reg_state {
    let mut r = super::regs::flat16();
    r.vrs_gprs[VCPU_REGS_RIP as usize] = entry;
    r.vrs_gprs[VCPU_REGS_RSI as usize] = ZERO_PAGE;
    r.vrs_gprs[VCPU_REGS_RSP as usize] = BOOT_STACK;
    r.vrs_gprs[VCPU_REGS_RBP as usize] = BOOT_STACK;
    r.vrs_crs[VCPU_REGS_CR0 as usize] = 0x8000_0011; // PG | ET | PE
    r.vrs_crs[VCPU_REGS_CR3 as usize] = PML4;
    r.vrs_crs[VCPU_REGS_CR4 as usize] = 0x20; // PAE
    r.vrs_msrs[VCPU_REGS_EFER as usize] = 0x500; // LME | LMA
    let seg = |sel: u16, ar: u32| vcpu_segment_info {
        vsi_sel: sel,
        vsi_limit: 0xffff_ffff,
        vsi_ar: ar,
        vsi_base: 0,
    };
    let data = seg(0x18, 0xc093);
    for i in [
        VCPU_REGS_ES,
        VCPU_REGS_SS,
        VCPU_REGS_DS,
        VCPU_REGS_FS,
        VCPU_REGS_GS,
    ] {
        r.vrs_sregs[i as usize] = data;
    }
    r.vrs_sregs[VCPU_REGS_CS as usize] = seg(0x10, 0xa09b);
    r.vrs_gdtr = vcpu_segment_info {
        vsi_sel: 0,
        vsi_limit: 31,
        vsi_ar: 0,
        vsi_base: GDT,
    };
    r
}

/// A bzImage-shaped image for tests: a setup header announcing protocol
/// 2.12 with a 64-bit entry, and `payload` as the protected-mode kernel
/// (its byte 0x200 is the 64-bit entry point).
pub fn test_bzimage(payload: &[u8]) -> Vec<u8> {
    let setup_sects = 1u8;
    let mut img = vec![0u8; (setup_sects as usize + 1) * 512];
    img[0x1f1] = setup_sects;
    img[0x1fe..0x200].copy_from_slice(&0xAA55u16.to_le_bytes());
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x020cu16.to_le_bytes()); // version
    img[0x211] = 0x01; // loadflags: LOADED_HIGH
    img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    img[0x22c..0x230].copy_from_slice(&0x37ff_ffffu32.to_le_bytes()); // initrd_addr_max
    img[0x236..0x238].copy_from_slice(&XLF_KERNEL_64.to_le_bytes()); // xloadflags
    img[0x238..0x23c].copy_from_slice(&2048u32.to_le_bytes()); // cmdline_size
    img.extend_from_slice(payload);
    img
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::boot::test_guest;

    #[test]
    fn boot_params_e820_cmdline_initrd_and_entry() {
        let (mem, ranges) = test_guest(128 * MB);
        let mut payload = vec![0x90u8; 0x400];
        payload[0x200] = 0xf4;
        let image = test_bzimage(&payload);
        let initrd = vec![0x5au8; 10_000];
        let r = load(
            &mem,
            &ranges,
            &LinuxBoot {
                kernel: &image,
                initrd: Some(&initrd),
                cmdline: "console=ttyS0",
            },
        )
        .unwrap();
        assert_eq!(r.vrs_gprs[VCPU_REGS_RIP as usize], MB + 0x200);
        assert_eq!(r.vrs_gprs[VCPU_REGS_RSI as usize], ZERO_PAGE);
        let mut b = [0u8; 1];
        mem.read(MB + 0x200, &mut b).unwrap();
        assert_eq!(b[0], 0xf4, "protected-mode kernel at 1 MiB");
        // boot_params fields (offsets of the Linux boot protocol)
        let bp = ZERO_PAGE;
        let e820_entries = {
            let mut x = [0u8; 1];
            mem.read(bp + 0x1e8, &mut x).unwrap();
            x[0]
        };
        assert_eq!(e820_entries as usize, ranges.len());
        assert_eq!(
            mem.read_u64(bp + 0x2d0 + 2 * 20).unwrap(),
            MB,
            "third e820 entry at 1 MiB"
        );
        assert_eq!(mem.read_u32(bp + 0x2d0 + 2 * 20 + 16).unwrap(), E820_RAM);
        assert_eq!(
            mem.read_u32(bp + 0x2d0 + 3 * 20 + 16).unwrap(),
            E820_RESERVED
        );
        assert_eq!(
            mem.read_u32(bp + 0x228).unwrap(),
            CMDLINE as u32,
            "cmd_line_ptr"
        );
        let mut cmd = [0u8; 14];
        mem.read(CMDLINE, &mut cmd).unwrap();
        assert_eq!(&cmd, b"console=ttyS0\0");
        let (rd_addr, rd_size) = (
            mem.read_u32(bp + 0x218).unwrap(),
            mem.read_u32(bp + 0x21c).unwrap(),
        );
        assert_eq!(rd_size, 10_000);
        assert_eq!(rd_addr % 4096, 0);
        assert!(rd_addr as u64 + rd_size as u64 <= MB + 127 * MB);
        assert_eq!(mem.read_u32(rd_addr as u64).unwrap(), 0x5a5a_5a5a);
        let mut hdrs = [0u8; 4];
        mem.read(bp + 0x202, &mut hdrs).unwrap();
        assert_eq!(&hdrs, b"HdrS");
        let mut tol = [0u8; 1];
        mem.read(bp + 0x210, &mut tol).unwrap();
        assert_eq!(tol[0], LOADER_UNDEFINED);
        assert_eq!(mem.read_u64(PD + 8).unwrap(), (1 << 21) | 0x83);
    }

    #[test]
    fn refuses_non_bzimages_and_long_command_lines() {
        let (mem, ranges) = test_guest(128 * MB);
        let e = load(
            &mem,
            &ranges,
            &LinuxBoot {
                kernel: &[0u8; 4096],
                initrd: None,
                cmdline: "",
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("not a bzImage"), "{e}");
        let image = test_bzimage(&[0x90; 0x400]);
        let long = "x".repeat(5000);
        let e = load(
            &mem,
            &ranges,
            &LinuxBoot {
                kernel: &image,
                initrd: None,
                cmdline: &long,
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("command line"), "{e}");
    }
}
