//! Guest linear → guest physical translation by walking the guest's page
//! tables (vmd's `translate_gva` in x86_mmu.c).
//!
//! Covered: paging off (GVA = GPA, truncated to 32 bits), 2-level 32-bit
//! paging (4 KiB pages, and 4 MiB pages when CR4.PSE is set, with the
//! PSE-36 high address bits), PAE 3-level paging (CR3 & ~0x1F; PDPTEs are
//! only checked for presence, as the CPU does), 4-level paging (EFER.LMA)
//! with 2 MiB and 1 GiB pages, and 5-level paging (CR4.LA57).
//!
//! Permissions as the CPU checks them for a data or fetch access: a write
//! needs R/W at every level when CPL is 3 or CR0.WP is set; a CPL 3 access
//! needs U/S at every level; a fetch from a page with XD set at any level
//! faults when EFER.NXE is set.  Not modelled: SMEP, SMAP, protection keys,
//! reserved-bit checks and the PDPTE registers the CPU caches at CR3 load
//! (the PDPTEs are read from memory, as vmd does).
//!
//! After a successful walk the Accessed bit is set in every entry walked
//! (except PAE PDPTEs, where bits 5 and 6 are reserved) and the Dirty bit
//! in the leaf for a write.  Only the entry's low byte is written back, and
//! only when it changes, so that a concurrent update of the rest of the
//! entry by another vCPU is not overwritten.
use super::GuestRam;
use vmm_sys::abi::{vcpu_reg_state, VCPU_REGS_CR0, VCPU_REGS_CR3, VCPU_REGS_CR4, VCPU_REGS_EFER};

pub(crate) const CR0_PE: u64 = 1 << 0;
pub(crate) const CR0_WP: u64 = 1 << 16;
pub(crate) const CR0_PG: u64 = 1 << 31;
pub(crate) const CR4_PSE: u64 = 1 << 4;
pub(crate) const CR4_PAE: u64 = 1 << 5;
pub(crate) const CR4_LA57: u64 = 1 << 12;
pub(crate) const EFER_LME: u64 = 1 << 8;
pub(crate) const EFER_LMA: u64 = 1 << 10;
pub(crate) const EFER_NXE: u64 = 1 << 11;

pub(crate) const PG_P: u64 = 1 << 0;
pub(crate) const PG_RW: u64 = 1 << 1;
pub(crate) const PG_US: u64 = 1 << 2;
pub(crate) const PG_A: u64 = 1 << 5;
pub(crate) const PG_D: u64 = 1 << 6;
pub(crate) const PG_PS: u64 = 1 << 7;
pub(crate) const PG_XD: u64 = 1 << 63;

/// Physical-address bits of a 64-bit (PAE / long mode) entry: 12..51.
const ADDR_MASK_64: u64 = 0x000f_ffff_ffff_f000;
/// Physical-address bits of a 32-bit entry.
const ADDR_MASK_32: u64 = 0xffff_f000;

/// The kind of access being translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    /// An instruction fetch.
    Exec,
}

/// Why a translation failed.  `level` counts from the leaf: 1 is the page
/// table, 2 the page directory, 3 the PDPT, 4 the PML4, 5 the PML5.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// An entry on the walk is not present (vmd: EFAULT).
    #[error("gva 0x{gva:x} not present (level {level} entry)")]
    NotPresent { gva: u64, level: u8 },
    /// A write to a page that is read-only for this access (vmd: EPERM).
    #[error("write to read-only gva 0x{gva:x}")]
    ReadOnly { gva: u64 },
    /// A CPL 3 access to a supervisor page (vmd: EPERM).
    #[error("user access to supervisor gva 0x{gva:x}")]
    Supervisor { gva: u64 },
    /// A fetch from a page with XD set while EFER.NXE is on.
    #[error("fetch from no-execute gva 0x{gva:x}")]
    NoExecute { gva: u64 },
    /// A paging structure lies outside guest RAM.
    #[error("page table for gva 0x{gva:x} at gpa 0x{gpa:x} is not guest RAM")]
    TableNotInRam { gva: u64, gpa: u64 },
}

impl TranslateError {
    /// The errno vmd's `translate_gva` returns for this failure.
    pub fn errno(&self) -> i32 {
        match self {
            TranslateError::NotPresent { .. } | TranslateError::TableNotInRam { .. } => {
                libc::EFAULT
            }
            _ => libc::EPERM,
        }
    }
}

/// One entry read during a walk, kept for the Accessed/Dirty update.
#[derive(Clone, Copy)]
struct Walked {
    gpa: u64,
    entry: u64,
    /// False for PAE PDPTEs, whose A/D positions are reserved.
    has_ad: bool,
}

/// The paging structures a walk goes through (in walk order).
struct Walk {
    entries: [Walked; 5],
    n: usize,
}

impl Walk {
    fn push(&mut self, w: Walked) {
        self.entries[self.n] = w;
        self.n += 1;
    }
}

fn read_entry<M: GuestRam + ?Sized>(
    mem: &M,
    gva: u64,
    gpa: u64,
    size: usize,
) -> Result<u64, TranslateError> {
    let mut b = [0u8; 8];
    if !mem.read_phys(gpa, &mut b[..size]) {
        return Err(TranslateError::TableNotInRam { gva, gpa });
    }
    Ok(u64::from_le_bytes(b))
}

/// Translates the linear address `gva` for an access of kind `access` at
/// privilege level `cpl` (0..=3; only 3 is "user").  See the module comment
/// for what is checked and what the walk writes back.
pub fn translate_gva<M: GuestRam + ?Sized>(
    regs: &vcpu_reg_state,
    mem: &M,
    gva: u64,
    access: Access,
    cpl: u8,
) -> Result<u64, TranslateError> {
    let cr0 = regs.vrs_crs[VCPU_REGS_CR0 as usize];
    let cr3 = regs.vrs_crs[VCPU_REGS_CR3 as usize];
    let cr4 = regs.vrs_crs[VCPU_REGS_CR4 as usize];
    let efer = regs.vrs_msrs[VCPU_REGS_EFER as usize];

    if cr0 & CR0_PG == 0 || cr0 & CR0_PE == 0 {
        return Ok(gva & 0xffff_ffff);
    }

    let empty = Walked {
        gpa: 0,
        entry: 0,
        has_ad: false,
    };
    let mut walk = Walk {
        entries: [empty; 5],
        n: 0,
    };
    // Physical address of the page and the page-offset mask.
    let (page, offset_mask);

    if cr4 & CR4_PAE == 0 {
        // 2-level 32-bit paging with 4-byte entries.
        let gva = gva & 0xffff_ffff;
        let pde_gpa = (cr3 & ADDR_MASK_32) + ((gva >> 22) & 0x3ff) * 4;
        let pde = read_entry(mem, gva, pde_gpa, 4)?;
        if pde & PG_P == 0 {
            return Err(TranslateError::NotPresent { gva, level: 2 });
        }
        walk.push(Walked {
            gpa: pde_gpa,
            entry: pde,
            has_ad: true,
        });
        if pde & PG_PS != 0 && cr4 & CR4_PSE != 0 {
            // 4 MiB page; PSE-36 puts physical bits 32..39 in PDE bits 13..20.
            page = (pde & 0xffc0_0000) | (((pde >> 13) & 0xff) << 32);
            offset_mask = 0x3f_ffff;
        } else {
            let pte_gpa = (pde & ADDR_MASK_32) + ((gva >> 12) & 0x3ff) * 4;
            let pte = read_entry(mem, gva, pte_gpa, 4)?;
            if pte & PG_P == 0 {
                return Err(TranslateError::NotPresent { gva, level: 1 });
            }
            walk.push(Walked {
                gpa: pte_gpa,
                entry: pte,
                has_ad: true,
            });
            page = pte & ADDR_MASK_32;
            offset_mask = 0xfff;
        }
        return finish(
            regs,
            mem,
            gva,
            access,
            cpl,
            &walk,
            page | (gva & offset_mask),
        );
    }

    let long = efer & EFER_LMA != 0;
    let mut gva = gva;
    // The table walked next and the GVA shift of its index.
    let (mut table, mut shift);
    if long {
        table = cr3 & ADDR_MASK_64;
        shift = if cr4 & CR4_LA57 != 0 { 48 } else { 39 };
    } else {
        // PAE: the 4-entry PDPT at CR3 & ~0x1F, presence-checked only.
        gva &= 0xffff_ffff;
        let pdpte_gpa = (cr3 & 0xffff_ffe0) + ((gva >> 30) & 3) * 8;
        let pdpte = read_entry(mem, gva, pdpte_gpa, 8)?;
        if pdpte & PG_P == 0 {
            return Err(TranslateError::NotPresent { gva, level: 3 });
        }
        walk.push(Walked {
            gpa: pdpte_gpa,
            entry: pdpte,
            has_ad: false,
        });
        table = pdpte & ADDR_MASK_64;
        shift = 21;
    }
    loop {
        let level = ((shift - 12) / 9 + 1) as u8;
        let gpa = table + ((gva >> shift) & 0x1ff) * 8;
        let entry = read_entry(mem, gva, gpa, 8)?;
        if entry & PG_P == 0 {
            return Err(TranslateError::NotPresent { gva, level });
        }
        walk.push(Walked {
            gpa,
            entry,
            has_ad: true,
        });
        // Large pages: 1 GiB at the PDPT (level 3), 2 MiB at the PD.
        let large = entry & PG_PS != 0 && (level == 2 || level == 3);
        if shift == 12 || large {
            let mask = (1u64 << shift) - 1;
            page = entry & ADDR_MASK_64 & !mask;
            offset_mask = mask;
            break;
        }
        table = entry & ADDR_MASK_64;
        shift -= 9;
    }
    finish(
        regs,
        mem,
        gva,
        access,
        cpl,
        &walk,
        page | (gva & offset_mask),
    )
}

/// Permission checks over the whole walk, then the Accessed/Dirty update.
fn finish<M: GuestRam + ?Sized>(
    regs: &vcpu_reg_state,
    mem: &M,
    gva: u64,
    access: Access,
    cpl: u8,
    walk: &Walk,
    gpa: u64,
) -> Result<u64, TranslateError> {
    let cr0 = regs.vrs_crs[VCPU_REGS_CR0 as usize];
    let efer = regs.vrs_msrs[VCPU_REGS_EFER as usize];
    let checked = walk.entries[..walk.n].iter().filter(|w| w.has_ad);
    let (mut writable, mut user, mut xd) = (true, true, false);
    for w in checked {
        writable &= w.entry & PG_RW != 0;
        user &= w.entry & PG_US != 0;
        xd |= w.entry & PG_XD != 0;
    }
    let is_user = cpl == 3;
    if is_user && !user {
        return Err(TranslateError::Supervisor { gva });
    }
    if access == Access::Write && !writable && (is_user || cr0 & CR0_WP != 0) {
        return Err(TranslateError::ReadOnly { gva });
    }
    if access == Access::Exec && xd && efer & EFER_NXE != 0 {
        return Err(TranslateError::NoExecute { gva });
    }

    let last = walk.n - 1;
    for (i, w) in walk.entries[..walk.n].iter().enumerate() {
        if !w.has_ad {
            continue;
        }
        let mut set = PG_A;
        if i == last && access == Access::Write {
            set |= PG_D;
        }
        let low = w.entry as u8;
        let new = low | set as u8;
        if new != low && !mem.write_phys(w.gpa, &[new]) {
            return Err(TranslateError::TableNotInRam { gva, gpa: w.gpa });
        }
    }
    Ok(gpa)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Flat mock RAM from GPA 0, with a bump allocator for page tables.
    pub(crate) struct MockRam {
        pub bytes: RefCell<Vec<u8>>,
        pub next_table: std::cell::Cell<u64>,
        /// A range that is not RAM (an MMIO hole), as (base, len).
        pub hole: std::cell::Cell<(u64, u64)>,
    }

    impl MockRam {
        pub fn new(size: usize) -> Self {
            MockRam {
                bytes: RefCell::new(vec![0; size]),
                next_table: std::cell::Cell::new(0x10_0000),
                hole: std::cell::Cell::new((0, 0)),
            }
        }
        pub fn alloc_table(&self) -> u64 {
            let t = self.next_table.get();
            self.next_table.set(t + 0x1000);
            t
        }
        pub fn r64(&self, gpa: u64) -> u64 {
            let mut b = [0; 8];
            assert!(self.read_phys(gpa, &mut b));
            u64::from_le_bytes(b)
        }
        pub fn w64(&self, gpa: u64, v: u64) {
            assert!(self.write_phys(gpa, &v.to_le_bytes()));
        }
        pub fn r32(&self, gpa: u64) -> u32 {
            let mut b = [0; 4];
            assert!(self.read_phys(gpa, &mut b));
            u32::from_le_bytes(b)
        }
        pub fn w32(&self, gpa: u64, v: u32) {
            assert!(self.write_phys(gpa, &v.to_le_bytes()));
        }
        pub fn fill(&self, gpa: u64, data: &[u8]) {
            assert!(self.write_phys(gpa, data));
        }
        fn range(&self, gpa: u64, len: usize) -> Option<std::ops::Range<usize>> {
            let end = gpa.checked_add(len as u64)?;
            let (hb, hl) = self.hole.get();
            if end > self.bytes.borrow().len() as u64 || (gpa < hb + hl && end > hb) {
                return None;
            }
            Some(gpa as usize..end as usize)
        }

        /// Maps a 4 KiB page in a 4-level (or, with `pae`, 3-level PAE)
        /// hierarchy rooted at `cr3`, creating tables as needed.  `flags`
        /// go into every level (P is added).
        pub fn map4k_64(&self, cr3: u64, levels: u32, gva: u64, gpa: u64, flags: u64) {
            let mut table = cr3 & ADDR_MASK_64;
            let mut shift = 12 + 9 * (levels - 1);
            if levels == 3 {
                // PAE PDPT: 4 entries at CR3 & ~0x1F, P only.
                let e_gpa = (cr3 & 0xffff_ffe0) + ((gva >> 30) & 3) * 8;
                let mut e = self.r64(e_gpa);
                if e & PG_P == 0 {
                    e = self.alloc_table() | PG_P;
                    self.w64(e_gpa, e);
                }
                table = e & ADDR_MASK_64;
                shift = 21;
            }
            while shift > 12 {
                let e_gpa = table + ((gva >> shift) & 0x1ff) * 8;
                let mut e = self.r64(e_gpa);
                if e & PG_P == 0 {
                    e = self.alloc_table() | PG_P | flags;
                    self.w64(e_gpa, e);
                }
                table = e & ADDR_MASK_64;
                shift -= 9;
            }
            self.w64(table + ((gva >> 12) & 0x1ff) * 8, gpa | PG_P | flags);
        }

        /// Maps a 4 KiB page with 2-level 32-bit paging.
        pub fn map4k_32(&self, cr3: u64, gva: u64, gpa: u64, flags: u64) {
            let pde_gpa = (cr3 & ADDR_MASK_32) + ((gva >> 22) & 0x3ff) * 4;
            let mut pde = self.r32(pde_gpa) as u64;
            if pde & PG_P == 0 {
                pde = self.alloc_table() | PG_P | flags;
                self.w32(pde_gpa, pde as u32);
            }
            let pte_gpa = (pde & ADDR_MASK_32) + ((gva >> 12) & 0x3ff) * 4;
            self.w32(pte_gpa, (gpa | PG_P | flags) as u32);
        }
    }

    impl GuestRam for MockRam {
        fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> bool {
            let Some(r) = self.range(gpa, buf.len()) else {
                return false;
            };
            buf.copy_from_slice(&self.bytes.borrow()[r]);
            true
        }
        fn write_phys(&self, gpa: u64, buf: &[u8]) -> bool {
            let Some(r) = self.range(gpa, buf.len()) else {
                return false;
            };
            self.bytes.borrow_mut()[r].copy_from_slice(buf);
            true
        }
    }

    pub(crate) fn regs(cr0: u64, cr3: u64, cr4: u64, efer: u64) -> vcpu_reg_state {
        let mut r = vcpu_reg_state::default();
        r.vrs_crs[VCPU_REGS_CR0 as usize] = cr0;
        r.vrs_crs[VCPU_REGS_CR3 as usize] = cr3;
        r.vrs_crs[VCPU_REGS_CR4 as usize] = cr4;
        r.vrs_msrs[VCPU_REGS_EFER as usize] = efer;
        r
    }

    const PROT: u64 = CR0_PE | CR0_PG;
    const LONG_EFER: u64 = EFER_LME | EFER_LMA;

    #[test]
    fn paging_off_is_identity_truncated_to_32_bits() {
        let ram = MockRam::new(0x1000);
        for cr0 in [0, CR0_PE] {
            let r = regs(cr0, 0, 0, 0);
            assert_eq!(translate_gva(&r, &ram, 0x1234, Access::Read, 0), Ok(0x1234));
            assert_eq!(
                translate_gva(&r, &ram, 0x1_fee0_0010, Access::Write, 0),
                Ok(0xfee0_0010)
            );
        }
    }

    #[test]
    fn two_level_4k_and_4m_pages() {
        let ram = MockRam::new(0x40_0000);
        let cr3 = ram.alloc_table();
        ram.map4k_32(cr3, 0xc010_3000, 0x5000, PG_RW);
        let r = regs(PROT, cr3, 0, 0);
        assert_eq!(
            translate_gva(&r, &ram, 0xc010_3abc, Access::Read, 0),
            Ok(0x5abc)
        );
        // Upper 32 bits of the GVA are ignored outside long mode.
        assert_eq!(
            translate_gva(&r, &ram, 0x7_c010_3abc, Access::Read, 0),
            Ok(0x5abc)
        );
        assert_eq!(
            translate_gva(&r, &ram, 0xc010_4000, Access::Read, 0),
            Err(TranslateError::NotPresent {
                gva: 0xc010_4000,
                level: 1
            })
        );
        assert_eq!(
            translate_gva(&r, &ram, 0x0040_0000, Access::Read, 0),
            Err(TranslateError::NotPresent {
                gva: 0x0040_0000,
                level: 2
            })
        );

        // A 4 MiB page (PS) with PSE-36 high bits: PDE bits 13..20 → 32..39.
        let pde = 0xfec0_0000 | (0x3 << 13) | PG_PS | PG_RW | PG_P;
        ram.w32(cr3 + (0xfec0_0000u64 >> 22) * 4, pde as u32);
        let r = regs(PROT, cr3, CR4_PSE, 0);
        assert_eq!(
            translate_gva(&r, &ram, 0xfee0_0030, Access::Read, 0),
            Ok(0x3_fee0_0030)
        );
        // Without CR4.PSE the PS bit is ignored and the PDE points at a PT.
        let r = regs(PROT, cr3, 0, 0);
        assert_eq!(
            translate_gva(&r, &ram, 0xfee0_0030, Access::Read, 0),
            Err(TranslateError::TableNotInRam {
                gva: 0xfee0_0030,
                gpa: 0xfec0_6000 + 0x200 * 4
            })
        );
    }

    #[test]
    fn pae_three_level_uses_cr3_aligned_to_32_bytes() {
        let ram = MockRam::new(0x40_0000);
        let cr3 = ram.alloc_table() + 0x20; // PDPT need only be 32-byte aligned
        ram.map4k_64(cr3, 3, 0xc000_1000, 0x7000, PG_RW);
        let r = regs(PROT, cr3 | 0x18, CR4_PAE, 0);
        assert_eq!(
            translate_gva(&r, &ram, 0xc000_1008, Access::Write, 0),
            Ok(0x7008)
        );
        // PDPTEs are not permission-checked and get no A bit.
        let pdpte = ram.r64(cr3 + 3 * 8);
        assert_eq!(pdpte & (PG_A | PG_D), 0);
        // 2 MiB page at the PD level.
        let pdpt_entry = ram.r64(cr3 + 3 * 8);
        let pd = pdpt_entry & ADDR_MASK_64;
        ram.w64(pd + 8, 0x2_0060_0000 | PG_PS | PG_P);
        assert_eq!(
            translate_gva(&r, &ram, 0xc020_1234, Access::Read, 0),
            Ok(0x2_0060_1234)
        );
        assert_eq!(
            translate_gva(&r, &ram, 0x4000_0000, Access::Read, 0),
            Err(TranslateError::NotPresent {
                gva: 0x4000_0000,
                level: 3
            })
        );
    }

    #[test]
    fn four_level_with_large_pages() {
        let ram = MockRam::new(0x40_0000);
        let cr3 = ram.alloc_table();
        let gva = 0xffff_8000_0012_3000u64;
        ram.map4k_64(cr3, 4, gva, 0x9000, PG_RW);
        let r = regs(PROT, cr3, CR4_PAE, LONG_EFER);
        assert_eq!(
            translate_gva(&r, &ram, gva + 0x10, Access::Read, 0),
            Ok(0x9010)
        );
        // 1 GiB page in the PDPT.
        let pml4e = ram.r64(cr3 + ((gva >> 39) & 0x1ff) * 8);
        let pdpt = pml4e & ADDR_MASK_64;
        ram.w64(pdpt + 3 * 8, 0xc000_0000 | PG_PS | PG_RW | PG_P);
        assert_eq!(
            translate_gva(&r, &ram, 0xffff_8000_fee0_0020, Access::Write, 0),
            Ok(0xfee0_0020)
        );
        // 2 MiB page in a PD.
        let pd = ram.alloc_table();
        ram.w64(pdpt + 8, pd | PG_RW | PG_P);
        ram.w64(pd + 5 * 8, 0x20_0000 | PG_PS | PG_P);
        assert_eq!(
            translate_gva(&r, &ram, 0xffff_8000_40a1_2345, Access::Read, 0),
            Ok(0x21_2345)
        );
        assert_eq!(
            translate_gva(&r, &ram, 0x1000, Access::Read, 0),
            Err(TranslateError::NotPresent {
                gva: 0x1000,
                level: 4
            })
        );
    }

    #[test]
    fn five_level_paging() {
        let ram = MockRam::new(0x40_0000);
        let cr3 = ram.alloc_table();
        let gva = 0x00ab_cdef_0123_4000u64;
        ram.map4k_64(cr3, 5, gva, 0x3000, PG_RW);
        let r = regs(PROT, cr3, CR4_PAE | CR4_LA57, LONG_EFER);
        assert_eq!(
            translate_gva(&r, &ram, gva + 1, Access::Read, 0),
            Ok(0x3001)
        );
    }

    #[test]
    fn write_protection_follows_cr0_wp_and_cpl() {
        let ram = MockRam::new(0x40_0000);
        let cr3 = ram.alloc_table();
        ram.map4k_64(cr3, 4, 0x1000, 0x8000, PG_US); // read-only, user
        let r = regs(PROT, cr3, CR4_PAE, LONG_EFER);
        // CPL 0 with WP clear may write read-only pages.
        assert_eq!(
            translate_gva(&r, &ram, 0x1000, Access::Write, 0),
            Ok(0x8000)
        );
        let wp = regs(PROT | CR0_WP, cr3, CR4_PAE, LONG_EFER);
        assert_eq!(
            translate_gva(&wp, &ram, 0x1000, Access::Write, 0),
            Err(TranslateError::ReadOnly { gva: 0x1000 })
        );
        // CPL 3 never may, whatever WP says.
        assert_eq!(
            translate_gva(&r, &ram, 0x1000, Access::Write, 3),
            Err(TranslateError::ReadOnly { gva: 0x1000 })
        );
        assert_eq!(translate_gva(&r, &ram, 0x1000, Access::Read, 3), Ok(0x8000));
        assert_eq!(TranslateError::ReadOnly { gva: 0 }.errno(), libc::EPERM);
    }

    #[test]
    fn user_access_to_supervisor_page_faults_at_cpl3_only() {
        let ram = MockRam::new(0x40_0000);
        let cr3 = ram.alloc_table();
        ram.map4k_32(cr3, 0x2000, 0x6000, PG_RW); // supervisor
        let r = regs(PROT, cr3, 0, 0);
        assert_eq!(translate_gva(&r, &ram, 0x2000, Access::Read, 0), Ok(0x6000));
        assert_eq!(translate_gva(&r, &ram, 0x2000, Access::Read, 1), Ok(0x6000));
        assert_eq!(
            translate_gva(&r, &ram, 0x2000, Access::Read, 3),
            Err(TranslateError::Supervisor { gva: 0x2000 })
        );
    }

    #[test]
    fn no_execute_needs_efer_nxe() {
        let ram = MockRam::new(0x40_0000);
        let cr3 = ram.alloc_table();
        ram.map4k_64(cr3, 4, 0x1000, 0x8000, PG_RW);
        let pte_gpa = {
            let mut t = cr3;
            for shift in [39, 30, 21] {
                t = ram.r64(t + ((0x1000u64 >> shift) & 0x1ff) * 8) & ADDR_MASK_64;
            }
            t + 8
        };
        ram.w64(pte_gpa, ram.r64(pte_gpa) | PG_XD);
        let r = regs(PROT, cr3, CR4_PAE, LONG_EFER);
        assert_eq!(translate_gva(&r, &ram, 0x1000, Access::Exec, 0), Ok(0x8000));
        let r = regs(PROT, cr3, CR4_PAE, LONG_EFER | EFER_NXE);
        assert_eq!(
            translate_gva(&r, &ram, 0x1000, Access::Exec, 0),
            Err(TranslateError::NoExecute { gva: 0x1000 })
        );
        assert_eq!(translate_gva(&r, &ram, 0x1000, Access::Read, 0), Ok(0x8000));
    }

    #[test]
    fn accessed_on_every_level_and_dirty_on_the_leaf_for_writes() {
        let ram = MockRam::new(0x40_0000);
        let cr3 = ram.alloc_table();
        let gva = 0x7f00_1234_5000u64;
        ram.map4k_64(cr3, 4, gva, 0xa000, PG_RW);
        let r = regs(PROT, cr3, CR4_PAE, LONG_EFER);
        let entries = |ram: &MockRam| {
            let mut t = cr3;
            let mut v = Vec::new();
            for shift in [39, 30, 21, 12] {
                let e = ram.r64(t + ((gva >> shift) & 0x1ff) * 8);
                v.push(e);
                t = e & ADDR_MASK_64;
            }
            v
        };
        assert!(entries(&ram).iter().all(|e| e & (PG_A | PG_D) == 0));
        translate_gva(&r, &ram, gva, Access::Read, 0).unwrap();
        let e = entries(&ram);
        assert!(e.iter().all(|e| e & PG_A != 0));
        assert!(e.iter().all(|e| e & PG_D == 0));
        translate_gva(&r, &ram, gva, Access::Write, 0).unwrap();
        let e = entries(&ram);
        assert!(e[..3].iter().all(|e| e & PG_D == 0));
        assert_ne!(e[3] & PG_D, 0);
        // The rest of each entry is untouched.
        assert_eq!(e[3] & ADDR_MASK_64, 0xa000);

        // 32-bit paging sets them too.
        let cr3 = ram.alloc_table();
        ram.map4k_32(cr3, 0x40_0000, 0x5000, PG_RW);
        let r = regs(PROT, cr3, 0, 0);
        translate_gva(&r, &ram, 0x40_0000, Access::Write, 0).unwrap();
        let pde = ram.r32(cr3 + 4) as u64;
        let pte = ram.r32(pde & ADDR_MASK_32) as u64;
        assert_eq!(pde & (PG_A | PG_D), PG_A);
        assert_eq!(pte & (PG_A | PG_D), PG_A | PG_D);
    }

    #[test]
    fn a_failed_walk_sets_no_bits() {
        let ram = MockRam::new(0x40_0000);
        let cr3 = ram.alloc_table();
        ram.map4k_64(cr3, 4, 0x1000, 0x8000, 0);
        let r = regs(PROT | CR0_WP, cr3, CR4_PAE, LONG_EFER);
        let before = ram.bytes.borrow().clone();
        assert!(translate_gva(&r, &ram, 0x1000, Access::Write, 0).is_err());
        assert!(*ram.bytes.borrow() == before);
    }
}
