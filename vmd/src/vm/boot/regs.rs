//! The initial vCPU states vmd uses: "flat16" for a BIOS, "flat64" for a
//! directly loaded kernel (reference §4.5, §4.6).
use vmm_sys::abi::*;

fn seg(sel: u16, limit: u32, ar: u32, base: u64) -> vcpu_segment_info {
    vcpu_segment_info {
        vsi_sel: sel,
        vsi_limit: limit,
        vsi_ar: ar,
        vsi_base: base,
    }
}

/// Real mode at the reset vector F000:FFF0.
pub fn flat16() -> vcpu_reg_state {
    let mut r = vcpu_reg_state::default();
    r.vrs_gprs[VCPU_REGS_RIP as usize] = 0xFFF0;
    r.vrs_gprs[VCPU_REGS_RFLAGS as usize] = 0x2;
    r.vrs_crs[VCPU_REGS_CR0 as usize] = 0x6000_0010;
    r.vrs_crs[VCPU_REGS_XCR0 as usize] = 1; // XFEATURE_X87
    let data = seg(0, 0xFFFF, 0x8093, 0);
    r.vrs_sregs = [data; VCPU_REGS_NSREGS as usize];
    r.vrs_sregs[VCPU_REGS_CS as usize] = seg(0xF000, 0xFFFF, 0x809F, 0xF0000);
    r.vrs_sregs[VCPU_REGS_LDTR as usize] = seg(0, 0xFFFF, 0x0082, 0);
    r.vrs_sregs[VCPU_REGS_TR as usize] = seg(0, 0xFFFF, 0x008B, 0);
    r.vrs_gdtr = seg(0, 0xFFFF, 0, 0);
    r.vrs_idtr = seg(0, 0xFFFF, 0, 0);
    r.vrs_drs[VCPU_REGS_DR6 as usize] = 0xFFFF_0FF0;
    r.vrs_drs[VCPU_REGS_DR7 as usize] = 0x400;
    r
}

/// Long mode entered from a 32-bit code segment, paging on with the
/// identity map at `PML4_PAGE` (what OpenBSD/amd64's `start` expects).
pub fn flat64(entry: u64, rsp: u64) -> vcpu_reg_state {
    let mut r = flat16();
    r.vrs_gprs[VCPU_REGS_RIP as usize] = entry;
    r.vrs_gprs[VCPU_REGS_RSP as usize] = rsp;
    r.vrs_crs[VCPU_REGS_CR0 as usize] = 0x1 | 0x10 | 0x8000_0000; // PE | ET | PG
    r.vrs_crs[VCPU_REGS_CR3 as usize] = 0x11000;
    r.vrs_crs[VCPU_REGS_CR4 as usize] = 0x20 | 0x10; // PAE | PSE
    r.vrs_msrs[VCPU_REGS_EFER as usize] = 0x100 | 0x400; // LME | LMA
    let data = seg(0x10, 0xFFFF_FFFF, 0xC093, 0);
    for i in [
        VCPU_REGS_ES,
        VCPU_REGS_SS,
        VCPU_REGS_DS,
        VCPU_REGS_FS,
        VCPU_REGS_GS,
    ] {
        r.vrs_sregs[i as usize] = data;
    }
    r.vrs_sregs[VCPU_REGS_CS as usize] = seg(0x8, 0xFFFF_FFFF, 0xC09F, 0);
    r.vrs_gdtr = seg(0, 0xFFFF, 0, 0x10000);
    r.vrs_idtr = seg(0, 0xFFFF, 0, 0);
    r
}
