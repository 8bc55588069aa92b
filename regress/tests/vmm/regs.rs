//! VMM_IOC_READREGS, WRITEREGS and RESETCPU: every register group written
//! and read back exactly, groups not in the mask left alone, and the
//! register view of an exit record agreeing with READREGS.
use crate::{Test, Tests};
use iced_x86::code_asm::*;
use vmm_regress::*;
use vmm_sys::abi::*;

pub fn tests() -> Tests {
    vec![
        ("regs::gprs", Test::Plain(gprs)),
        ("regs::sregs", Test::Plain(sregs)),
        ("regs::crs", Test::Plain(crs)),
        ("regs::msrs", Test::Plain(msrs)),
        ("regs::drs", Test::Plain(drs)),
        ("regs::resetcpu_flat16", Test::Plain(resetcpu_flat16)),
        ("regs::resetcpu_long64", Test::Plain(resetcpu_long64)),
        (
            "regs::exit_matches_readregs",
            Test::Plain(exit_matches_readregs),
        ),
        ("regs::writeregs_then_run", Test::Plain(writeregs_then_run)),
        (
            "regs::resetcpu_with_pending_exit",
            Test::Plain(resetcpu_with_pending_exit),
        ),
    ]
}

const GPR_NAMES: [&str; 18] = [
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15", "rip", "rflags",
];
const CR_NAMES: [&str; 10] = [
    "cr0", "cr2", "cr3", "cr4", "cr8", "xcr0", "pdpte0", "pdpte1", "pdpte2", "pdpte3",
];
const MSR_NAMES: [&str; 7] = [
    "efer",
    "star",
    "lstar",
    "cstar",
    "sfmask",
    "kgsbase",
    "misc_enable",
];
const DR_NAMES: [&str; 6] = ["dr0", "dr1", "dr2", "dr3", "dr6", "dr7"];
const SEG_NAMES: [&str; 8] = ["es", "cs", "ss", "ds", "fs", "gs", "ldtr", "tr"];

fn diff_words(out: &mut Vec<String>, names: &[&str], got: &[u64], want: &[u64]) {
    for ((n, g), w) in names.iter().zip(got).zip(want) {
        if g != w {
            out.push(format!("{n}: 0x{g:x}, want 0x{w:x}"));
        }
    }
}

fn seg_text(s: &vcpu_segment_info) -> String {
    format!(
        "sel 0x{:x} limit 0x{:x} ar 0x{:x} base 0x{:x}",
        s.vsi_sel, s.vsi_limit, s.vsi_ar, s.vsi_base
    )
}

fn seg_eq(a: &vcpu_segment_info, b: &vcpu_segment_info) -> bool {
    (a.vsi_sel, a.vsi_limit, a.vsi_ar, a.vsi_base) == (b.vsi_sel, b.vsi_limit, b.vsi_ar, b.vsi_base)
}

/// Differences between `got` and `want` in the groups of `mask`.
fn diff(got: &vcpu_reg_state, want: &vcpu_reg_state, mask: u32) -> Vec<String> {
    let mut out = Vec::new();
    if mask & VM_RWREGS_GPRS != 0 {
        diff_words(&mut out, &GPR_NAMES, &got.vrs_gprs, &want.vrs_gprs);
    }
    if mask & VM_RWREGS_SREGS != 0 {
        for (i, n) in SEG_NAMES.iter().enumerate() {
            if !seg_eq(&got.vrs_sregs[i], &want.vrs_sregs[i]) {
                out.push(format!(
                    "{n}: {}, want {}",
                    seg_text(&got.vrs_sregs[i]),
                    seg_text(&want.vrs_sregs[i])
                ));
            }
        }
        for (n, g, w) in [
            ("gdtr", &got.vrs_gdtr, &want.vrs_gdtr),
            ("idtr", &got.vrs_idtr, &want.vrs_idtr),
        ] {
            if (g.vsi_limit, g.vsi_base) != (w.vsi_limit, w.vsi_base) {
                out.push(format!("{n}: {}, want {}", seg_text(g), seg_text(w)));
            }
        }
    }
    if mask & VM_RWREGS_CRS != 0 {
        diff_words(&mut out, &CR_NAMES, &got.vrs_crs, &want.vrs_crs);
    }
    if mask & VM_RWREGS_MSRS != 0 {
        diff_words(&mut out, &MSR_NAMES, &got.vrs_msrs, &want.vrs_msrs);
    }
    if mask & VM_RWREGS_DRS != 0 {
        diff_words(&mut out, &DR_NAMES, &got.vrs_drs, &want.vrs_drs);
    }
    out
}

fn expect_same(what: &str, got: &vcpu_reg_state, want: &vcpu_reg_state, mask: u32) -> Result<()> {
    let d = diff(got, want, mask);
    check(d.is_empty(), || format!("{what}: {}", d.join("; ")))
}

/// Writes `mask` groups of `vals` over a vCPU reset to `base`, reads
/// everything back: the written groups must equal `vals`, the others must
/// be as before.
fn round_trip(name: &str, base: &vcpu_reg_state, mask: u32, vals: &vcpu_reg_state) -> Result<()> {
    let g = Guest::new(name)?;
    g.reset(base)?;
    let before = g.readregs(VM_RWREGS_ALL)?;
    g.writeregs(mask, vals)?;
    let after = g.readregs(VM_RWREGS_ALL)?;
    expect_same("written groups", &after, vals, mask)?;
    expect_same("other groups", &after, &before, VM_RWREGS_ALL & !mask)?;
    // A read of just the group agrees.
    let only = g.readregs(mask)?;
    expect_same("read by mask", &only, vals, mask)
}

fn gprs() -> Result<()> {
    let mut v = vcpu_reg_state::default();
    for (i, r) in v.vrs_gprs.iter_mut().enumerate() {
        *r = 0x0101_0101_0101_0101u64.wrapping_mul(i as u64 + 1) ^ 0x8000_0000_0000_0000;
    }
    v.vrs_gprs[VCPU_REGS_RIP as usize] = 0x1234_5678_9abc;
    // CF PF AF ZF SF DF OF and the reserved bit 1
    v.vrs_gprs[VCPU_REGS_RFLAGS as usize] = 0xcd7;
    round_trip("gprs", &long64(CODE), VM_RWREGS_GPRS, &v)
}

fn sregs() -> Result<()> {
    let mut v = prot32(CODE);
    v.vrs_sregs[VCPU_REGS_ES as usize] = seg(0x10, 0x1_0000, 0xf_ffff, 0x4093);
    v.vrs_sregs[VCPU_REGS_SS as usize] = seg(0x10, 0, 0xffff_ffff, 0xc093);
    v.vrs_sregs[VCPU_REGS_DS as usize] = seg(0x10, 0x20_0000, 0xffff_ffff, 0xc091);
    v.vrs_sregs[VCPU_REGS_FS as usize] = seg(0x33, 0x7fff_0000, 0xfff, 0x40f3);
    // unusable (a null selector loaded in 64-bit mode)
    v.vrs_sregs[VCPU_REGS_GS as usize] = seg(0, 0, 0, 0x1_0000);
    v.vrs_sregs[VCPU_REGS_LDTR as usize] = seg(0x38, 0x4000, 0x7f, 0x0082);
    v.vrs_sregs[VCPU_REGS_TR as usize] = seg(0x40, 0x5000, 0x67, 0x008b);
    v.vrs_gdtr = seg(0, 0x6000, 0x1ff, 0);
    v.vrs_idtr = seg(0, 0x7000, 0x7ff, 0);
    round_trip("sregs", &prot32(CODE), VM_RWREGS_SREGS, &v)
}

fn crs() -> Result<()> {
    let mut v = prot32(CODE);
    // PE MP ET NE WP AM
    v.vrs_crs[VCPU_REGS_CR0 as usize] = 0x5_0033;
    v.vrs_crs[VCPU_REGS_CR2 as usize] = 0xdead_b000;
    v.vrs_crs[VCPU_REGS_CR3 as usize] = 0x7_0000;
    // PAE PGE OSFXSR OSXMMEXCPT
    v.vrs_crs[VCPU_REGS_CR4 as usize] = 0x6a0;
    v.vrs_crs[VCPU_REGS_CR8 as usize] = 0x5;
    v.vrs_crs[VCPU_REGS_XCR0 as usize] = 0x1;
    for k in 0..4 {
        v.vrs_crs[VCPU_REGS_PDPTE0 as usize + k] = 0x10_0001 + 0x1000 * k as u64;
    }
    round_trip("crs", &prot32(CODE), VM_RWREGS_CRS, &v)
}

fn msrs() -> Result<()> {
    let mut v = prot32(CODE);
    // SCE LME NXE (LMA stays clear without paging)
    v.vrs_msrs[VCPU_REGS_EFER as usize] = 0x901;
    v.vrs_msrs[VCPU_REGS_STAR as usize] = 0x0023_0010_0000_0000;
    v.vrs_msrs[VCPU_REGS_LSTAR as usize] = 0xffff_ffff_8100_0000;
    v.vrs_msrs[VCPU_REGS_CSTAR as usize] = 0xffff_ffff_8100_1000;
    v.vrs_msrs[VCPU_REGS_SFMASK as usize] = 0x4_7700;
    v.vrs_msrs[VCPU_REGS_KGSBASE as usize] = 0xffff_8880_0000_0000;
    v.vrs_msrs[VCPU_REGS_MISC_ENABLE as usize] = 0x1;
    round_trip("msrs", &prot32(CODE), VM_RWREGS_MSRS, &v)
}

fn drs() -> Result<()> {
    let mut v = prot32(CODE);
    for k in 0..4 {
        v.vrs_drs[k] = 0x1000 * (k as u64 + 1);
    }
    v.vrs_drs[VCPU_REGS_DR6 as usize] = 0xffff_0ff1;
    // G0, a write watchpoint in slot 0
    v.vrs_drs[VCPU_REGS_DR7 as usize] = 0x1_0402;
    round_trip("drs", &prot32(CODE), VM_RWREGS_DRS, &v)
}

fn resetcpu(name: &str, state: &vcpu_reg_state) -> Result<()> {
    let g = Guest::new(name)?;
    g.reset(state)?;
    let got = g.readregs(VM_RWREGS_ALL)?;
    expect_same("after resetcpu", &got, state, VM_RWREGS_ALL)?;
    // Reset again over a different state: nothing of the first survives.
    let mut other = long64(0x5000);
    other.vrs_gprs[VCPU_REGS_RBX as usize] = 0x1234;
    g.reset(&other)?;
    g.reset(state)?;
    let got = g.readregs(VM_RWREGS_ALL)?;
    expect_same("after a second resetcpu", &got, state, VM_RWREGS_ALL)
}

fn resetcpu_flat16() -> Result<()> {
    resetcpu("reset16", &flat16(CODE))
}

fn resetcpu_long64() -> Result<()> {
    let mut s = long64(CODE);
    s.vrs_gprs[VCPU_REGS_R15 as usize] = 0xf00d;
    s.vrs_msrs[VCPU_REGS_LSTAR as usize] = 0xffff_ffff_8000_0000;
    resetcpu("reset64", &s)
}

/// At an MMIO exit, READREGS shows what the exit record shows: the state
/// before the instruction.
fn exit_matches_readregs() -> Result<()> {
    let mut g = Guest::new("exitregs")?;
    let p = Program::new(64, CODE, |a, m| {
        a.mov(ebx, MMIO_BASE as u32)?;
        a.mov(rcx, 0x1111u64)?;
        m.here(a, "load")?;
        a.mov(rcx, qword_ptr(rbx + 8))?;
        a.mov(edx, 0x2222)?;
        m.here(a, "store")?;
        a.mov(qword_ptr(rbx + 16), rdx)?;
        a.hlt()
    });
    g.load(&p, &long64(CODE))?;
    for (mark, reg, val) in [
        ("load", VCPU_REGS_RCX, 0x1111),
        ("store", VCPU_REGS_RDX, 0x2222),
    ] {
        let r = g.run()?;
        g.expect_reason(r, VMX_EXIT_EPT_VIOLATION, SVM_VMEXIT_NPF, mark)?;
        check(g.rip() == p.at(mark), || {
            format!("{mark}: rip 0x{:x}", g.rip())
        })?;
        check(g.gpr(reg) == val, || {
            format!("{mark}: reg 0x{:x}", g.gpr(reg))
        })?;
        let read = g.readregs(VM_RWREGS_ALL)?;
        expect_same(
            &format!("READREGS at the {mark} exit"),
            &read,
            &g.exit.vrs,
            VM_RWREGS_ALL,
        )?;
        g.exit.vrs.vrs_gprs[VCPU_REGS_RIP as usize] += p.len_at(mark);
        if mark == "load" {
            g.exit.vrs.vrs_gprs[VCPU_REGS_RCX as usize] = 0xabcd;
        }
    }
    let r = g.run()?;
    g.expect_hlt(r, p.len_at("store") + p.at("store"))?;
    check(g.gpr(VCPU_REGS_RCX) == 0xabcd, || {
        format!("rcx 0x{:x} after the load", g.gpr(VCPU_REGS_RCX))
    })
}

/// WRITEREGS between runs is what the guest continues with: a new RIP,
/// RAX and a segment base.
fn writeregs_then_run() -> Result<()> {
    let mut g = Guest::new("wrrun")?;
    let p = Program::new(16, CODE, |a, m| {
        m.here(a, "o1")?;
        a.out(0x81, al)?;
        a.hlt()?;
        m.here(a, "o2")?;
        a.out(0x82, ax)?;
        m.here(a, "o3")?;
        a.mov(al, byte_ptr(0x10).es())?;
        a.hlt()
    });
    g.load(&p, &flat16(CODE))?;
    let r = g.run()?;
    g.expect_io(r, VEI_DIR_OUT, 0x81, 1)?;
    let mut v = g.readregs(VM_RWREGS_ALL)?;
    v.vrs_gprs[VCPU_REGS_RIP as usize] = p.at("o2");
    v.vrs_gprs[VCPU_REGS_RAX as usize] = 0xbeef;
    v.vrs_sregs[VCPU_REGS_ES as usize].vsi_base = MMIO_BASE + 0x100;
    g.writeregs(VM_RWREGS_GPRS | VM_RWREGS_SREGS, &v)?;
    let r = g.run()?;
    g.expect_out(r, 0x82, 2, 0xbeef, p.at("o2"))?;
    g.skip_io();
    let r = g.run()?;
    g.expect_reason(r, VMX_EXIT_EPT_VIOLATION, SVM_VMEXIT_NPF, "es load")?;
    check(g.rip() == p.at("o3"), || format!("rip 0x{:x}", g.rip()))?;
    let es_seg = g.exit.vrs.vrs_sregs[VCPU_REGS_ES as usize];
    let i = vmm_regress::x86::decode(&g.exit.vrs, p.insn_bytes(p.at("o3")))?;
    let gpa = vmm_regress::x86::operand_gpa(&g.mem, &i, &g.exit.vrs)?;
    check(
        es_seg.vsi_base == MMIO_BASE + 0x100 && gpa == MMIO_BASE + 0x110,
        || format!("es base 0x{:x}, gpa 0x{gpa:x}", es_seg.vsi_base),
    )
}

/// RESETCPU while KVM still holds half an instruction (an IN or an MMIO
/// load waiting for its data, as after any exit vmd does not answer, e.g.
/// on reboot): the vCPU starts cleanly from the new state.
fn resetcpu_with_pending_exit() -> Result<()> {
    let mut g = Guest::new("resetpending")?;
    let p = Program::new(64, CODE, |a, m| {
        m.here(a, "in")?;
        a.in_(eax, 0x71)?;
        a.hlt()?;
        a.mov(ebx, MMIO_BASE as u32)?;
        m.here(a, "load")?;
        a.mov(rax, qword_ptr(rbx))?;
        a.hlt()?;
        m.here(a, "fresh")?;
        a.out(0x90, ax)?;
        m.here(a, "hlt")?;
        a.hlt()
    });
    g.load(&p, &long64(CODE))?;
    for (mark, start) in [("in", p.at("in")), ("load", p.at("load") - 5)] {
        let mut s = long64(start);
        s.vrs_gprs[VCPU_REGS_RAX as usize] = 0x1111;
        g.reset(&s)?;
        let r = g.run()?;
        check(g.rip() == p.at(mark), || {
            format!("{mark}: exit 0x{r:x} at rip 0x{:x}", g.rip())
        })?;
        // vmd answers nothing and resets the vCPU.
        let mut fresh = long64(p.at("fresh"));
        fresh.vrs_gprs[VCPU_REGS_RAX as usize] = 0x4242;
        g.reset(&fresh)?;
        let after = g.readregs(VM_RWREGS_ALL)?;
        expect_same(
            &format!("{mark}: READREGS after RESETCPU"),
            &after,
            &fresh,
            VM_RWREGS_ALL,
        )?;
        let r = g.run()?;
        g.expect_out(r, 0x90, 2, 0x4242, p.at("fresh"))
            .map_err(|e| format!("after RESETCPU at a pending {mark}: {e}"))?;
        check(g.gpr(VCPU_REGS_RAX) == 0x4242, || {
            format!("{mark}: rax 0x{:x}", g.gpr(VCPU_REGS_RAX))
        })?;
        g.skip_io();
        let r = g.run()?;
        g.expect_hlt(r, p.at("hlt"))?;
    }
    Ok(())
}
