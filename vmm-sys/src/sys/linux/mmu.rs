//! Guest linear → physical translation, as the CPU would walk the guest's
//! page tables: no paging, 2-level (with 4 MiB pages), PAE and 4-level.
//! The shim uses it to read the instruction at RIP when it builds an exit
//! record; it never changes guest memory (the CPU already set the accessed
//! bits when it fetched the instruction).
use crate::GuestMemory;
use kvm_bindings::kvm_sregs;

const CR0_PE: u64 = 1 << 0;
const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const EFER_LMA: u64 = 1 << 10;
const PTE_P: u64 = 1 << 0;
const PTE_PS: u64 = 1 << 7;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// The guest-physical address of linear address `la`, or None where the
/// guest's page tables do not map it.
pub fn translate(mem: &GuestMemory, sregs: &kvm_sregs, la: u64) -> Option<u64> {
    if sregs.cr0 & CR0_PE == 0 || sregs.cr0 & CR0_PG == 0 {
        // Real mode and unpaged protected mode: linear is physical (32 bits
        // outside long mode).
        return Some(la & 0xffff_ffff);
    }
    if sregs.efer & EFER_LMA != 0 {
        let mut table = sregs.cr3 & ADDR_MASK;
        for (level, shift) in [(4, 39u32), (3, 30), (2, 21), (1, 12)] {
            let idx = (la >> shift) & 0x1ff;
            let e = mem.read_u64(table + idx * 8).ok()?;
            if e & PTE_P == 0 {
                return None;
            }
            if (level == 3 || level == 2) && e & PTE_PS != 0 {
                let size = 1u64 << shift;
                return Some((e & ADDR_MASK & !(size - 1)) | (la & (size - 1)));
            }
            table = e & ADDR_MASK;
        }
        return Some(table | (la & 0xfff));
    }
    let la = la & 0xffff_ffff;
    if sregs.cr4 & CR4_PAE != 0 {
        let pdpte = mem
            .read_u64((sregs.cr3 & 0xffff_ffe0) + ((la >> 30) & 3) * 8)
            .ok()?;
        if pdpte & PTE_P == 0 {
            return None;
        }
        let pde = mem
            .read_u64((pdpte & ADDR_MASK) + ((la >> 21) & 0x1ff) * 8)
            .ok()?;
        if pde & PTE_P == 0 {
            return None;
        }
        if pde & PTE_PS != 0 {
            return Some((pde & ADDR_MASK & !0x1f_ffff) | (la & 0x1f_ffff));
        }
        let pte = mem
            .read_u64((pde & ADDR_MASK) + ((la >> 12) & 0x1ff) * 8)
            .ok()?;
        return (pte & PTE_P != 0).then_some((pte & ADDR_MASK) | (la & 0xfff));
    }
    let pde = mem
        .read_u32((sregs.cr3 & 0xffff_f000) + ((la >> 22) & 0x3ff) * 4)
        .ok()? as u64;
    if pde & PTE_P == 0 {
        return None;
    }
    if pde & PTE_PS != 0 && sregs.cr4 & CR4_PSE != 0 {
        // 4 MiB page; bits 13..20 of the PDE hold physical bits 32..39.
        let high = ((pde >> 13) & 0xff) << 32;
        return Some(high | (pde & 0xffc0_0000) | (la & 0x3f_ffff));
    }
    let pte = mem
        .read_u32((pde & 0xffff_f000) + ((la >> 12) & 0x3ff) * 4)
        .ok()? as u64;
    (pte & PTE_P != 0).then_some((pte & 0xffff_f000) | (la & 0xfff))
}

/// Reads up to `buf.len()` bytes at linear address `la`, page by page;
/// returns how many could be read before an unmapped page.
pub fn read_linear(mem: &GuestMemory, sregs: &kvm_sregs, la: u64, buf: &mut [u8]) -> usize {
    let mut done = 0;
    while done < buf.len() {
        let addr = la.wrapping_add(done as u64);
        let in_page = (0x1000 - (addr & 0xfff)) as usize;
        let n = in_page.min(buf.len() - done);
        let Some(gpa) = translate(mem, sregs, addr) else {
            break;
        };
        if mem.read(gpa, &mut buf[done..done + n]).is_err() {
            break;
        }
        done += n;
    }
    done
}
