//! The guest-physical memory map of vmd's era-B machine
//! (`create_memory_map`, reference §4.1), its e820 view and the memory
//! sizes vmd writes into CMOS.
use vmm_sys::abi::{vm_mem_range, VMM_MAX_VM_MEM_SIZE, VM_MEM_MMIO, VM_MEM_RAM, VM_MEM_RESERVED};

pub const KB: u64 = 1024;
pub const MB: u64 = 1024 * KB;
pub const GB: u64 = 1024 * MB;
/// DOS low memory (era B: 640 KiB).
pub const LOWMEM: u64 = 640 * KB;
/// The PCI MMIO window (era B).
pub const PCI_MMIO_BAR_BASE: u64 = 0xF000_0000;
pub const PCI_MMIO_BAR_END: u64 = 0xFFDF_FFFF;
/// The BIOS copy that ends at 4 GiB (era B: 2 MiB).
pub const BIOS_AREA: u64 = 2 * MB;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MemMapError {
    /// Zero bytes, more than 128 GiB, or not enough for the low ranges.
    #[error("invalid memory size {0} bytes")]
    BadSize(u64),
}

fn range(gpa: u64, size: u64, ty: u32) -> vm_mem_range {
    vm_mem_range {
        vmr_gpa: gpa,
        vmr_va: 0,
        vmr_size: size as usize,
        vmr_type: ty as i32,
    }
}

/// The ranges for a guest of `mem_bytes` bytes.
///
/// vmd places the BIOS area of a tiny guest at `VMM_PCI_MMIO_BAR_END`
/// (0xFFDFFFFF, not page aligned, so vmm(4) would refuse it); we put it at
/// the intended 0xFFE00000.
pub fn create_memory_map(mem_bytes: u64) -> Result<Vec<vm_mem_range>, MemMapError> {
    if !(MB..=VMM_MAX_VM_MEM_SIZE).contains(&mem_bytes) || !mem_bytes.is_multiple_of(4096) {
        return Err(MemMapError::BadSize(mem_bytes));
    }
    let mut ranges = vec![
        range(0, LOWMEM, VM_MEM_RAM),
        range(LOWMEM, MB - LOWMEM, VM_MEM_RESERVED),
    ];
    let rest = mem_bytes - MB;
    let bios = range(PCI_MMIO_BAR_END + 1, BIOS_AREA, VM_MEM_RESERVED);
    if rest <= 2 * MB {
        ranges.push(bios);
        return Ok(ranges);
    }
    let (above_1m, above_4g) = if rest > PCI_MMIO_BAR_BASE - MB {
        (PCI_MMIO_BAR_BASE - MB, rest - (PCI_MMIO_BAR_BASE - MB))
    } else {
        (rest, 0)
    };
    ranges.push(range(MB, above_1m, VM_MEM_RAM));
    ranges.push(range(
        PCI_MMIO_BAR_BASE,
        PCI_MMIO_BAR_END - PCI_MMIO_BAR_BASE + 1,
        VM_MEM_MMIO,
    ));
    ranges.push(bios);
    if above_4g > 0 {
        ranges.push(range(4 * GB, above_4g, VM_MEM_RAM));
    }
    Ok(ranges)
}

/// e820 types.
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// The guest's e820 view: RAM ranges usable, everything else reserved.
pub fn e820(ranges: &[vm_mem_range]) -> Vec<(u64, u64, u32)> {
    ranges
        .iter()
        .map(|r| {
            let ty = if r.vmr_type == VM_MEM_RAM as i32 {
                E820_RAM
            } else {
                E820_RESERVED
            };
            (r.vmr_gpa, r.vmr_size as u64, ty)
        })
        .collect()
}

/// NVRAM memory sizes (`init_emulated_hw`): memlo is the RAM at 1 MiB
/// above 16 MiB, memhi the RAM above 4 GiB, both in bytes.
pub fn cmos_memory(ranges: &[vm_mem_range]) -> (u64, u64) {
    let (mut lo, mut hi) = (0, 0);
    for r in ranges {
        let size = r.vmr_size as u64;
        if r.vmr_gpa == MB && size > 15 * MB {
            lo = size - 15 * MB;
        } else if r.vmr_gpa == 4 * GB {
            hi = size;
        }
    }
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(r: &[vm_mem_range]) -> Vec<(u64, u64, i32)> {
        r.iter()
            .map(|r| (r.vmr_gpa, r.vmr_size as u64, r.vmr_type))
            .collect()
    }

    #[test]
    fn small_guest() {
        let r = create_memory_map(512 * MB).unwrap();
        assert_eq!(
            spans(&r),
            vec![
                (0, 0xA_0000, 0),
                (0xA_0000, 0x6_0000, 1),
                (MB, 511 * MB, 0),
                (0xF000_0000, 0x0FE0_0000, 2),
                (0xFFE0_0000, 2 * MB, 1)
            ]
        );
        assert_eq!(cmos_memory(&r), (496 * MB, 0));
        assert_eq!(e820(&r)[3], (0xF000_0000, 0x0FE0_0000, E820_RESERVED));
    }

    #[test]
    fn large_guest_splits_around_the_hole() {
        let r = create_memory_map(8 * GB).unwrap();
        assert_eq!(r.len(), 6);
        assert_eq!((r[2].vmr_gpa, r[2].vmr_size as u64), (MB, 0xF000_0000 - MB));
        assert_eq!(
            (r[5].vmr_gpa, r[5].vmr_size as u64),
            (4 * GB, 8 * GB - 0xF000_0000)
        );
        assert_eq!(cmos_memory(&r).1, 8 * GB - 0xF000_0000);
    }

    #[test]
    fn tiny_guest_keeps_a_bios_area() {
        let r = create_memory_map(2 * MB).unwrap();
        assert_eq!(spans(&r)[2], (0xFFE0_0000, 2 * MB, 1));
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn bad_sizes() {
        assert_eq!(create_memory_map(0).unwrap_err(), MemMapError::BadSize(0));
        assert!(create_memory_map(129 * GB).is_err());
        assert!(create_memory_map(MB + 1).is_err());
    }
}
