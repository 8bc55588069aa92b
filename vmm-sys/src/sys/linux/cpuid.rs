//! CPUID as vmm(4) presents it (reference §4.8): the host's leaves with the
//! features vmm(4) does not virtualise removed, and the `OpenBSDVMM58`
//! hypervisor leaf.
use kvm_bindings::{kvm_cpuid_entry2, CpuId};

fn bits(list: &[u32]) -> u32 {
    list.iter().fold(0, |m, b| m | (1 << b))
}

/// Whether this KVM runs guest kernel code through its instruction emulator
/// (a nested, paravirtualised KVM: the host CPU shows neither VMX nor SVM).
pub fn host_emulates_guest_code() -> bool {
    let (l1, ext) = (
        core::arch::x86_64::__cpuid(1),
        core::arch::x86_64::__cpuid(0x8000_0001),
    );
    l1.ecx & (1 << 5) == 0 && ext.ecx & (1 << 2) == 0
}

/// Applies vmm(4)'s masks to KVM's supported CPUID.  With `emulated`, also
/// hides what KVM's instruction emulator cannot execute, so that guests do
/// not pick code paths that end in an emulation failure.
pub fn filter(cpuid: &mut CpuId, emulated: bool) {
    // Leaf 1 ECX: EST, TM2, MONITOR, PDCM, VMX, DTES64, DS-CPL, SMX, CNXT-ID,
    // SDBG, xTPR, PCID, DCA, x2APIC, TSC-DEADLINE.
    let mut l1_ecx = bits(&[7, 8, 3, 15, 5, 2, 4, 6, 10, 11, 14, 17, 18, 21, 24]);
    if emulated {
        // CMPXCHG16B (13) and XRSTOR (reached through XSAVE 26 / OSXSAVE 27,
        // and everything that needs XSAVE state: FMA 12, AVX 28, F16C 29)
        // fail in this KVM's emulator.
        l1_ecx |= bits(&[13, 26, 27, 12, 28, 29]);
    }
    // Leaf 1 EDX: ACPI, TM, HTT, DS, PSN, SS, PBE, MTRR, MCE, MCA, and APIC
    // (era B emulates no local APIC).
    let l1_edx = bits(&[22, 29, 28, 21, 18, 27, 31, 12, 7, 14, 9]);
    // Leaf 7.0 EBX: TSC_ADJUST, SGX, HLE, INVPCID, RTM, PQM, MPX, PCOMMIT, PT,
    // AVX512 F/DQ/IFMA/PF/ER/CD/BW/VL.
    let mut l7_ebx = bits(&[
        1, 2, 4, 10, 11, 12, 14, 22, 25, 16, 17, 21, 26, 27, 28, 30, 31,
    ]);
    if emulated {
        l7_ebx |= bits(&[5]); // AVX2 needs XSAVE state
    }
    let l7_ecx_keep = bits(&[2]); // UMIP
    let l7_edx_keep = bits(&[10]); // MD_CLEAR
                                   // 0x80000008 EBX (AMD): IBPB, IBRS, STIBP, IBRS_ALWAYSON, STIBP_ALWAYSON,
                                   // IBRS_PREF, SSBD, VIRT_SSBD, SSBD_NOTREQ.
    let l8_ebx = bits(&[12, 14, 15, 16, 17, 18, 24, 25, 26]);

    let mut out: Vec<kvm_cpuid_entry2> = Vec::new();
    for e in cpuid.as_slice() {
        let mut e = *e;
        match e.function {
            0x4000_0000..=0x4fff_ffff => continue, // replaced below
            0xd if emulated => continue,
            1 => {
                e.ecx &= !l1_ecx;
                e.ecx |= 1 << 31; // running under a hypervisor
                e.edx &= !l1_edx;
            }
            4 => e.eax &= 0x3ff,
            7 if e.index == 0 => {
                e.ebx &= !l7_ebx;
                e.ecx &= l7_ecx_keep;
                e.edx &= l7_edx_keep;
            }
            7 => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0x8000_0001 => {
                e.ecx &= !bits(&[2, 29]); // SVM, MWAITX
                e.edx &= !bits(&[27]); // RDTSCP
            }
            0x8000_0007 => e.edx &= bits(&[8]), // invariant TSC only
            0x8000_0008 => e.ebx &= !l8_ebx,
            _ => {}
        }
        out.push(e);
    }
    let sig = b"OpenBSDVMM58";
    let word = |i: usize| u32::from_le_bytes([sig[i], sig[i + 1], sig[i + 2], sig[i + 3]]);
    out.push(kvm_cpuid_entry2 {
        function: 0x4000_0000,
        eax: 0x4000_0001,
        ebx: word(0),
        ecx: word(4),
        edx: word(8),
        ..Default::default()
    });
    // KVM-compatible feature leaf: kvmclock (CLOCKSOURCE2, bit 3) with the
    // stable bit (24), as vmm(4) offers its pvclock.
    out.push(kvm_cpuid_entry2 {
        function: 0x4000_0001,
        eax: (1 << 3) | (1 << 24),
        ..Default::default()
    });
    *cpuid = CpuId::from_entries(&out).expect("cpuid entries fit");
}
