//! Conversions between vmm(4)'s `vcpu_reg_state` and KVM's register
//! structures.  Segment access rights use the VMX access-rights format that
//! vmm(4) exposes on both Intel and AMD.
use crate::abi::*;
use kvm_bindings::{kvm_debugregs, kvm_dtable, kvm_regs, kvm_segment, kvm_sregs};

pub const MSR_STAR: u32 = 0xC000_0081;
pub const MSR_LSTAR: u32 = 0xC000_0082;
pub const MSR_CSTAR: u32 = 0xC000_0083;
pub const MSR_SFMASK: u32 = 0xC000_0084;
pub const MSR_KGSBASE: u32 = 0xC000_0102;
pub const MSR_MISC_ENABLE: u32 = 0x0000_01A0;

/// The MSRs of `vrs_msrs` other than EFER (which lives in `kvm_sregs`), with
/// their `VCPU_REGS_*` index.
pub const VRS_MSRS: [(usize, u32); 6] = [
    (VCPU_REGS_STAR as usize, MSR_STAR),
    (VCPU_REGS_LSTAR as usize, MSR_LSTAR),
    (VCPU_REGS_CSTAR as usize, MSR_CSTAR),
    (VCPU_REGS_SFMASK as usize, MSR_SFMASK),
    (VCPU_REGS_KGSBASE as usize, MSR_KGSBASE),
    (VCPU_REGS_MISC_ENABLE as usize, MSR_MISC_ENABLE),
];

/// VMX "segment unusable" bit of the access rights.
pub const AR_UNUSABLE: u32 = 1 << 16;

pub fn gprs_from_kvm(r: &kvm_regs, g: &mut [u64; VCPU_REGS_NGPRS as usize]) {
    g[VCPU_REGS_RAX as usize] = r.rax;
    g[VCPU_REGS_RCX as usize] = r.rcx;
    g[VCPU_REGS_RDX as usize] = r.rdx;
    g[VCPU_REGS_RBX as usize] = r.rbx;
    g[VCPU_REGS_RSP as usize] = r.rsp;
    g[VCPU_REGS_RBP as usize] = r.rbp;
    g[VCPU_REGS_RSI as usize] = r.rsi;
    g[VCPU_REGS_RDI as usize] = r.rdi;
    g[VCPU_REGS_R8 as usize] = r.r8;
    g[VCPU_REGS_R9 as usize] = r.r9;
    g[VCPU_REGS_R10 as usize] = r.r10;
    g[VCPU_REGS_R11 as usize] = r.r11;
    g[VCPU_REGS_R12 as usize] = r.r12;
    g[VCPU_REGS_R13 as usize] = r.r13;
    g[VCPU_REGS_R14 as usize] = r.r14;
    g[VCPU_REGS_R15 as usize] = r.r15;
    g[VCPU_REGS_RIP as usize] = r.rip;
    g[VCPU_REGS_RFLAGS as usize] = r.rflags;
}

pub fn gprs_to_kvm(g: &[u64; VCPU_REGS_NGPRS as usize], r: &mut kvm_regs) {
    r.rax = g[VCPU_REGS_RAX as usize];
    r.rcx = g[VCPU_REGS_RCX as usize];
    r.rdx = g[VCPU_REGS_RDX as usize];
    r.rbx = g[VCPU_REGS_RBX as usize];
    r.rsp = g[VCPU_REGS_RSP as usize];
    r.rbp = g[VCPU_REGS_RBP as usize];
    r.rsi = g[VCPU_REGS_RSI as usize];
    r.rdi = g[VCPU_REGS_RDI as usize];
    r.r8 = g[VCPU_REGS_R8 as usize];
    r.r9 = g[VCPU_REGS_R9 as usize];
    r.r10 = g[VCPU_REGS_R10 as usize];
    r.r11 = g[VCPU_REGS_R11 as usize];
    r.r12 = g[VCPU_REGS_R12 as usize];
    r.r13 = g[VCPU_REGS_R13 as usize];
    r.r14 = g[VCPU_REGS_R14 as usize];
    r.r15 = g[VCPU_REGS_R15 as usize];
    r.rip = g[VCPU_REGS_RIP as usize];
    // Bit 1 of RFLAGS is reserved as one; KVM rejects nothing but the CPU
    // would fault on entry without it.
    r.rflags = g[VCPU_REGS_RFLAGS as usize] | 0x2;
}

pub fn seg_from_kvm(s: &kvm_segment) -> vcpu_segment_info {
    let mut ar = (s.type_ as u32 & 0xf)
        | ((s.s as u32 & 1) << 4)
        | ((s.dpl as u32 & 3) << 5)
        | ((s.present as u32 & 1) << 7)
        | ((s.avl as u32 & 1) << 12)
        | ((s.l as u32 & 1) << 13)
        | ((s.db as u32 & 1) << 14)
        | ((s.g as u32 & 1) << 15);
    if s.unusable != 0 {
        ar |= AR_UNUSABLE;
    }
    vcpu_segment_info {
        vsi_sel: s.selector,
        vsi_limit: s.limit,
        vsi_ar: ar,
        vsi_base: s.base,
    }
}

pub fn seg_to_kvm(v: &vcpu_segment_info) -> kvm_segment {
    let ar = v.vsi_ar;
    kvm_segment {
        base: v.vsi_base,
        limit: v.vsi_limit,
        selector: v.vsi_sel,
        type_: (ar & 0xf) as u8,
        s: ((ar >> 4) & 1) as u8,
        dpl: ((ar >> 5) & 3) as u8,
        present: ((ar >> 7) & 1) as u8,
        avl: ((ar >> 12) & 1) as u8,
        l: ((ar >> 13) & 1) as u8,
        db: ((ar >> 14) & 1) as u8,
        g: ((ar >> 15) & 1) as u8,
        unusable: ((ar & AR_UNUSABLE) != 0 || (ar & 0x80) == 0) as u8,
        padding: 0,
    }
}

fn dt_from_kvm(d: &kvm_dtable) -> vcpu_segment_info {
    vcpu_segment_info {
        vsi_sel: 0,
        vsi_limit: d.limit as u32,
        vsi_ar: 0,
        vsi_base: d.base,
    }
}

fn dt_to_kvm(v: &vcpu_segment_info) -> kvm_dtable {
    kvm_dtable {
        base: v.vsi_base,
        limit: v.vsi_limit as u16,
        padding: [0; 3],
    }
}

/// Segment registers, GDTR and IDTR from `kvm_sregs` (VM_RWREGS_SREGS).
pub fn sregs_from_kvm(s: &kvm_sregs, vrs: &mut vcpu_reg_state) {
    let segs = &mut vrs.vrs_sregs;
    segs[VCPU_REGS_ES as usize] = seg_from_kvm(&s.es);
    segs[VCPU_REGS_CS as usize] = seg_from_kvm(&s.cs);
    segs[VCPU_REGS_SS as usize] = seg_from_kvm(&s.ss);
    segs[VCPU_REGS_DS as usize] = seg_from_kvm(&s.ds);
    segs[VCPU_REGS_FS as usize] = seg_from_kvm(&s.fs);
    segs[VCPU_REGS_GS as usize] = seg_from_kvm(&s.gs);
    segs[VCPU_REGS_LDTR as usize] = seg_from_kvm(&s.ldt);
    segs[VCPU_REGS_TR as usize] = seg_from_kvm(&s.tr);
    vrs.vrs_gdtr = dt_from_kvm(&s.gdt);
    vrs.vrs_idtr = dt_from_kvm(&s.idt);
}

pub fn sregs_to_kvm(vrs: &vcpu_reg_state, s: &mut kvm_sregs) {
    let segs = &vrs.vrs_sregs;
    s.es = seg_to_kvm(&segs[VCPU_REGS_ES as usize]);
    s.cs = seg_to_kvm(&segs[VCPU_REGS_CS as usize]);
    s.ss = seg_to_kvm(&segs[VCPU_REGS_SS as usize]);
    s.ds = seg_to_kvm(&segs[VCPU_REGS_DS as usize]);
    s.fs = seg_to_kvm(&segs[VCPU_REGS_FS as usize]);
    s.gs = seg_to_kvm(&segs[VCPU_REGS_GS as usize]);
    s.ldt = seg_to_kvm(&segs[VCPU_REGS_LDTR as usize]);
    s.tr = seg_to_kvm(&segs[VCPU_REGS_TR as usize]);
    s.gdt = dt_to_kvm(&vrs.vrs_gdtr);
    s.idt = dt_to_kvm(&vrs.vrs_idtr);
}

/// CR0, CR2, CR3, CR4, CR8 from `kvm_sregs` (XCR0 and the PDPTEs come from
/// their own KVM calls).
pub fn crs_from_kvm(s: &kvm_sregs, crs: &mut [u64; VCPU_REGS_NCRS as usize]) {
    crs[VCPU_REGS_CR0 as usize] = s.cr0;
    crs[VCPU_REGS_CR2 as usize] = s.cr2;
    crs[VCPU_REGS_CR3 as usize] = s.cr3;
    crs[VCPU_REGS_CR4 as usize] = s.cr4;
    crs[VCPU_REGS_CR8 as usize] = s.cr8;
}

pub fn crs_to_kvm(crs: &[u64; VCPU_REGS_NCRS as usize], s: &mut kvm_sregs) {
    s.cr0 = crs[VCPU_REGS_CR0 as usize];
    s.cr2 = crs[VCPU_REGS_CR2 as usize];
    s.cr3 = crs[VCPU_REGS_CR3 as usize];
    s.cr4 = crs[VCPU_REGS_CR4 as usize];
    s.cr8 = crs[VCPU_REGS_CR8 as usize];
}

pub fn drs_from_kvm(d: &kvm_debugregs, drs: &mut [u64; VCPU_REGS_NDRS as usize]) {
    drs[..4].copy_from_slice(&d.db);
    drs[VCPU_REGS_DR6 as usize] = d.dr6;
    drs[VCPU_REGS_DR7 as usize] = d.dr7;
}

pub fn drs_to_kvm(drs: &[u64; VCPU_REGS_NDRS as usize], d: &mut kvm_debugregs) {
    d.db.copy_from_slice(&drs[..4]);
    d.dr6 = drs[VCPU_REGS_DR6 as usize];
    d.dr7 = drs[VCPU_REGS_DR7 as usize];
    d.flags = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_access_rights_round_trip() {
        // flat64 code, flat data, LDTR, TR and an unusable segment
        for ar in [
            0xC09Bu32, 0xA09B, 0xC093, 0x0082, 0x008B, 0x809F, 0x8093, 0x10000,
        ] {
            let v = vcpu_segment_info {
                vsi_sel: 0x10,
                vsi_limit: 0xffff_ffff,
                vsi_ar: ar,
                vsi_base: 0x1000,
            };
            let back = seg_from_kvm(&seg_to_kvm(&v));
            assert_eq!(back.vsi_ar & 0x1f0ff, ar & 0x1f0ff, "ar {ar:#x}");
            assert_eq!(
                (back.vsi_sel, back.vsi_limit, back.vsi_base),
                (0x10, 0xffff_ffff, 0x1000)
            );
        }
    }

    #[test]
    fn gprs_use_x86_encoding_order() {
        let mut r = kvm_regs {
            rcx: 1,
            rsp: 4,
            r15: 15,
            rip: 16,
            ..Default::default()
        };
        r.rflags = 0x202;
        let mut g = [0u64; VCPU_REGS_NGPRS as usize];
        gprs_from_kvm(&r, &mut g);
        assert_eq!((g[1], g[4], g[15], g[16], g[17]), (1, 4, 15, 16, 0x202));
        let mut back = kvm_regs::default();
        gprs_to_kvm(&g, &mut back);
        assert_eq!(back, r);
    }
}
