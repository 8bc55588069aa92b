//! CPUID as vmm(4) presents it (reference §4.8): the hypervisor leaf says
//! "OpenBSDVMM58", and the features vmm(4) does not virtualise are hidden.
use crate::{Outcome, Test, Tests};
use iced_x86::code_asm::*;
use vmm_regress::*;
use vmm_sys::abi::*;

pub fn tests() -> Tests {
    vec![("cpuid::filtered_leaves", Test::Probing(filtered_leaves))]
}

/// Runs CPUID(leaf, 0) in the guest; returns EAX, EBX, ECX, EDX as the
/// guest saw them (it OUTs each to port 0x90).
fn guest_cpuid(g: &mut Guest, leaf: u32) -> Result<[u32; 4]> {
    let p = Program::new(32, CODE, |a, _m| {
        a.mov(eax, leaf)?;
        a.xor(ecx, ecx)?;
        a.cpuid()?;
        a.mov(esi, edx)?;
        a.mov(dx, 0x90)?;
        a.out(dx, eax)?;
        a.mov(eax, ebx)?;
        a.out(dx, eax)?;
        a.mov(eax, ecx)?;
        a.out(dx, eax)?;
        a.mov(eax, esi)?;
        a.out(dx, eax)?;
        a.hlt()
    });
    g.load(&p, &prot32(CODE))?;
    let mut out = [0u32; 4];
    for v in out.iter_mut() {
        let r = g.run()?;
        g.expect_io(r, VEI_DIR_OUT, 0x90, 4)?;
        *v = g.exit.vei().vei_data;
        g.skip_io();
    }
    Ok(out)
}

fn filtered_leaves() -> Result<Outcome> {
    let mut g = Guest::new("cpuid")?;
    let [max, b, c, d] = guest_cpuid(&mut g, 0x4000_0000)?;
    let sig: Vec<u8> = [b, c, d].iter().flat_map(|w| w.to_le_bytes()).collect();
    check(&sig == b"OpenBSDVMM58", || {
        format!(
            "hypervisor leaf signature {:?}",
            String::from_utf8_lossy(&sig)
        )
    })?;
    check(max >= 0x4000_0000, || {
        format!("hypervisor leaf max 0x{max:x}")
    })?;
    let [_, _, ecx1, edx1] = guest_cpuid(&mut g, 1)?;
    // Hidden in leaf 1 ECX: MONITOR 3, VMX 5, SMX 6, EST 7, TM2 8, PCID 17,
    // x2APIC 21, TSC-DEADLINE 24; set: hypervisor 31.
    let mut visible = Vec::new();
    for bit in [3, 5, 6, 7, 8, 17, 21, 24] {
        if ecx1 & (1 << bit) != 0 {
            visible.push(format!("CPUID.1:ECX bit {bit} visible (ecx 0x{ecx1:08x})"));
        }
    }
    check(ecx1 & (1 << 31) != 0, || {
        format!("CPUID.1:ECX hypervisor bit clear (0x{ecx1:08x})")
    })?;
    // Hidden in leaf 1 EDX: MCE 7, APIC 9 (era B), MTRR 12, MCA 14, PSN 18,
    // DS 21, ACPI 22, SS 27, HTT 28, TM 29, PBE 31.
    for bit in [7, 9, 12, 14, 18, 21, 22, 27, 28, 29, 31] {
        if edx1 & (1 << bit) != 0 {
            visible.push(format!("CPUID.1:EDX bit {bit} visible (edx 0x{edx1:08x})"));
        }
    }
    let [_, _, ecx8, edx8] = guest_cpuid(&mut g, 0x8000_0001)?;
    if ecx8 & (1 << 2) != 0 {
        visible.push(format!("CPUID.80000001:ECX SVM visible (0x{ecx8:08x})"));
    }
    if edx8 & (1 << 27) != 0 {
        visible.push(format!("CPUID.80000001:EDX RDTSCP visible (0x{edx8:08x})"));
    }
    if visible.is_empty() {
        return Ok(Outcome::Passed);
    }
    // The paravirtualised KVM of our development hosts (kvm_pvm) does not
    // apply the whole KVM_SET_CPUID2 table to the architectural leaves;
    // anywhere else a visible masked bit is a shim bug.
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        return Ok(Outcome::Unsupported(format!(
            "kvm_pvm does not apply the CPUID table to every leaf: {}; the hypervisor leaf was checked",
            visible.join(", ")
        )));
    }
    Err(visible.join("; "))
}
