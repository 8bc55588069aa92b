//! The era-B amd64 vmm(4) ABI (OpenBSD 7.8/7.9): size, alignment and every
//! field's offset and size of each structure in `include/vmmvar.h`, the
//! `VMM_IOC_*` request numbers, and the constants vmd relies on.
//!
//! Expected values are worked out by hand from the LP64 natural-alignment
//! rules and match the sizes and request numbers stated in
//! reference/openbsd-vmd.md §5.3/§5.4; they are not read back from the
//! header.  Every check is made twice: as a `const` assertion, so that a
//! plain `cargo check --all-targets` (e.g. scripts/check-openbsd.sh for
//! x86_64-unknown-openbsd) already proves the layout for that target, and
//! as a test with a readable failure message.
//!
//! Each struct is also destructured without `..`, so a field added to the
//! header (say era C's `vee_gpa`) stops this file from compiling until the
//! expectation here is updated.
use core::mem::{align_of, offset_of, size_of};
use vmm_sys::abi::*;

/// Size of the type of field `$f` of `$t`, usable in const context.
macro_rules! field_size {
    ($t:ty, $f:ident) => {{
        const fn size_of_pointee<F>(_: *const F) -> usize {
            size_of::<F>()
        }
        let v = core::mem::MaybeUninit::<$t>::uninit();
        // SAFETY: only the address of the field is formed, nothing is read.
        size_of_pointee(unsafe { core::ptr::addr_of!((*v.as_ptr()).$f) })
    }};
}

/// `layout!(T, size S, align A, { field: offset, size; ... })`: a const
/// assertion block, a `#[test] fn T()`, and an exhaustive destructuring.
macro_rules! layout {
    ($t:ident, size $size:expr, align $align:expr, { $($f:ident: $off:expr, $fsize:expr;)* }) => {
        const _: () = {
            assert!(size_of::<$t>() == $size, concat!("size of ", stringify!($t)));
            assert!(align_of::<$t>() == $align, concat!("alignment of ", stringify!($t)));
            $(
                assert!(
                    offset_of!($t, $f) == $off,
                    concat!("offset of ", stringify!($t), ".", stringify!($f))
                );
                assert!(
                    field_size!($t, $f) == $fsize,
                    concat!("size of ", stringify!($t), ".", stringify!($f))
                );
            )*
        };

        #[test]
        #[allow(non_snake_case)]
        fn $t() {
            assert_eq!(size_of::<$t>(), $size, "size of {}", stringify!($t));
            assert_eq!(align_of::<$t>(), $align, "alignment of {}", stringify!($t));
            $(
                assert_eq!(
                    offset_of!($t, $f),
                    $off,
                    "offset of {}.{}",
                    stringify!($t),
                    stringify!($f)
                );
                assert_eq!(
                    field_size!($t, $f),
                    $fsize,
                    "size of {}.{}",
                    stringify!($t),
                    stringify!($f)
                );
            )*
        }

        const _: fn(&$t) = |v| {
            // Fails to compile when the struct has a field not listed here.
            let $t { $($f: _),* } = v;
        };
    };
}

layout!(vm_exit_inout, size 16, align 4, {
    vei_size: 0, 1;
    vei_dir: 1, 1;
    vei_rep: 2, 1;
    vei_string: 3, 1;
    vei_encoding: 4, 1;
    vei_port: 6, 2;
    vei_data: 8, 4;
    vei_insn_len: 12, 1;
});

// Era B: no vee_gpa (era C appends a u64, which would make this 32 bytes
// and move vm_exit.vrs to 32).
layout!(vm_exit_eptviolation, size 18, align 1, {
    vee_fault_type: 0, 1;
    vee_insn_info: 1, 1;
    vee_insn_len: 2, 1;
    vee_insn_bytes: 3, 15;
});

layout!(vcpu_inject_event, size 12, align 4, {
    vie_vector: 0, 1;
    vie_errorcode: 4, 4;
    vie_type: 8, 1;
});

layout!(vcpu_segment_info, size 24, align 8, {
    vsi_sel: 0, 2;
    vsi_limit: 4, 4;
    vsi_ar: 8, 4;
    vsi_base: 16, 8;
});

layout!(vcpu_reg_state, size 568, align 8, {
    vrs_gprs: 0, 18 * 8;
    vrs_crs: 144, 10 * 8;
    vrs_msrs: 224, 7 * 8;
    vrs_drs: 280, 6 * 8;
    vrs_sregs: 328, 8 * 24;
    vrs_gdtr: 520, 24;
    vrs_idtr: 544, 24;
});

// The anonymous union: 18 bytes (vee) at alignment 4 (vei) → 20.
const _: () = {
    assert!(size_of::<vm_exit__bindgen_ty_1>() == 20);
    assert!(align_of::<vm_exit__bindgen_ty_1>() == 4);
    assert!(offset_of!(vm_exit__bindgen_ty_1, vei) == 0);
    assert!(offset_of!(vm_exit__bindgen_ty_1, vee) == 0);
    assert!(field_size!(vm_exit__bindgen_ty_1, vei) == 16);
    assert!(field_size!(vm_exit__bindgen_ty_1, vee) == 18);
};

#[test]
fn vm_exit_union() {
    assert_eq!(size_of::<vm_exit__bindgen_ty_1>(), 20);
    assert_eq!(align_of::<vm_exit__bindgen_ty_1>(), 4);
    assert_eq!(offset_of!(vm_exit__bindgen_ty_1, vei), 0);
    assert_eq!(offset_of!(vm_exit__bindgen_ty_1, vee), 0);
    assert_eq!(field_size!(vm_exit__bindgen_ty_1, vei), 16);
    assert_eq!(field_size!(vm_exit__bindgen_ty_1, vee), 18);
}

// Union padded to 24 by vrs's alignment, cpl at 592, tail-padded to 600.
layout!(vm_exit, size 600, align 8, {
    __bindgen_anon_1: 0, 20;
    vrs: 24, 568;
    cpl: 592, 4;
});

layout!(vm_mem_range, size 32, align 8, {
    vmr_gpa: 0, 8;
    vmr_va: 8, 8;
    vmr_size: 16, 8;
    vmr_type: 24, 4;
});

layout!(vm_create_params, size 2656, align 8, {
    vcp_nmemranges: 0, 8;
    vcp_ncpus: 8, 8;
    vcp_memranges: 16, 16 * 32;
    vcp_name: 528, 64;
    vcp_sev: 592, 4;
    vcp_seves: 596, 4;
    vcp_id: 600, 4;
    vcp_poscbit: 604, 4;
    vcp_asid: 608, 512 * 4;
});

layout!(vm_info_result, size 160, align 8, {
    vir_memory_size: 0, 8;
    vir_used_size: 8, 8;
    vir_ncpus: 16, 8;
    vir_vcpu_state: 24, 64;
    vir_creator_pid: 88, 4;
    vir_id: 92, 4;
    vir_name: 96, 64;
});

layout!(vm_info_params, size 24, align 8, {
    vip_size: 0, 8;
    vip_info_ct: 8, 8;
    vip_info: 16, 8;
});

layout!(vm_terminate_params, size 4, align 4, {
    vtp_vm_id: 0, 4;
});

layout!(vm_resetcpu_params, size 576, align 8, {
    vrp_vm_id: 0, 4;
    vrp_vcpu_id: 4, 4;
    vrp_init_state: 8, 568;
});

layout!(vm_sharemem_params, size 656, align 8, {
    vsp_vm_id: 0, 4;
    vsp_nmemranges: 8, 8;
    vsp_memranges: 16, 16 * 32;
    vsp_va: 528, 16 * 8;
});

layout!(vm_run_params, size 40, align 8, {
    vrp_vm_id: 0, 4;
    vrp_vcpu_id: 4, 4;
    vrp_inject: 8, 12;
    vrp_intr_pending: 20, 1;
    vrp_exit: 24, 8;
    vrp_exit_reason: 32, 2;
    vrp_irqready: 34, 1;
});

layout!(vm_rwvmparams_params, size 32, align 8, {
    vpp_vm_id: 0, 4;
    vpp_vcpu_id: 4, 4;
    vpp_mask: 8, 4;
    vpp_pvclock_system_gpa: 16, 8;
    vpp_pvclock_version: 24, 4;
});

layout!(vm_intr_params, size 12, align 4, {
    vip_vm_id: 0, 4;
    vip_vcpu_id: 4, 4;
    vip_intr: 8, 2;
});

layout!(vm_rwregs_params, size 584, align 8, {
    vrwp_vm_id: 0, 4;
    vrwp_vcpu_id: 4, 4;
    vrwp_mask: 8, 8;
    vrwp_regs: 16, 568;
});

/// The exit union is not padded into vrs: vee ends at 18, before vrs at 24.
#[test]
fn vm_exit_record_has_no_vee_gpa() {
    let header = include_str!("../include/vmmvar.h");
    let bindings = include_str!("../src/bindings.rs");
    assert!(
        !bindings.contains("vee_gpa"),
        "era C field vee_gpa in bindings"
    );
    assert!(
        !header
            .lines()
            .any(|l| l.contains("vee_gpa") && !l.trim_start().starts_with('*')),
        "era C field vee_gpa declared in vmmvar.h"
    );
    assert_eq!(size_of::<vm_exit_eptviolation>(), 18);
    assert_eq!(offset_of!(vm_exit, vrs), 24);
}

/// `consts!{ NAME = value, ... }`: const assertions plus one test.
macro_rules! consts {
    ($test:ident { $($name:ident = $val:expr,)* }) => {
        const _: () = {
            $( assert!($name == $val, stringify!($name)); )*
        };

        #[test]
        fn $test() {
            $( assert_eq!($name, $val, "{}", stringify!($name)); )*
        }
    };
}

// Request numbers: reference §5.3, era B column.
consts!(ioctl_request_numbers {
    VMM_IOC_CREATE = 0xCA60_5601,
    VMM_IOC_RUN = 0xC028_5602,
    VMM_IOC_INFO = 0xC018_5603,
    VMM_IOC_TERM = 0x8004_5604,
    VMM_IOC_RESETCPU = 0x8240_5605,
    VMM_IOC_INTR = 0x800C_5606,
    VMM_IOC_READREGS = 0xC248_5607,
    VMM_IOC_WRITEREGS = 0x8248_5608,
    VMM_IOC_READVMPARAMS = 0xC020_5609,
    VMM_IOC_WRITEVMPARAMS = 0x8020_560A,
    VMM_IOC_SHAREMEM = 0xC290_560B,
    VMM_IOC_VOID = 0x2000_0000,
    VMM_IOC_OUT = 0x4000_0000,
    VMM_IOC_IN = 0x8000_0000,
    VMM_IOC_INOUT = 0xC000_0000,
    VMM_IOCPARM_MASK = 0x1FFF,
});

#[test]
fn ioctl_names() {
    for (req, name) in [
        (VMM_IOC_CREATE, "VMM_IOC_CREATE"),
        (VMM_IOC_RUN, "VMM_IOC_RUN"),
        (VMM_IOC_INFO, "VMM_IOC_INFO"),
        (VMM_IOC_TERM, "VMM_IOC_TERM"),
        (VMM_IOC_RESETCPU, "VMM_IOC_RESETCPU"),
        (VMM_IOC_INTR, "VMM_IOC_INTR"),
        (VMM_IOC_READREGS, "VMM_IOC_READREGS"),
        (VMM_IOC_WRITEREGS, "VMM_IOC_WRITEREGS"),
        (VMM_IOC_READVMPARAMS, "VMM_IOC_READVMPARAMS"),
        (VMM_IOC_WRITEVMPARAMS, "VMM_IOC_WRITEVMPARAMS"),
        (VMM_IOC_SHAREMEM, "VMM_IOC_SHAREMEM"),
    ] {
        assert_eq!(vmm_sys::ioctl_name(req), name);
    }
}

// Limits: dev/vmm/vmm.h, reference §5.2.
consts!(limits {
    VMM_MAX_MEM_RANGES = 16,
    VMM_MAX_DISKS_PER_VM = 4,
    VMM_MAX_NAME_LEN = 64,
    VMM_MAX_VCPUS = 512,
    VMM_MAX_VCPUS_PER_VM = 64,
    VMM_MAX_VM_MEM_SIZE = 128 * 1024 * 1024 * 1024,
    VMM_MAX_NICS_PER_VM = 4,
});

#[test]
fn hv_signature() {
    assert_eq!(VMM_HV_SIGNATURE, b"OpenBSDVMM58\0");
}

consts!(memory_range_types {
    VM_MEM_RAM = 0,
    VM_MEM_RESERVED = 1,
    VM_MEM_MMIO = 2,
});

consts!(ept_violation_constants {
    VEE_FAULT_INVALID = 0,
    VEE_FAULT_HANDLED = 1,
    VEE_FAULT_MMIO_ASSIST = 2,
    VEE_FAULT_PROTECT = 3,
    VEE_LEN_VALID = 0x1,
    VEE_BYTES_VALID = 0x2,
});

consts!(inject_and_io_constants {
    VCPU_INJECT_NONE = 0,
    VCPU_INJECT_INTR = 1,
    VCPU_INJECT_EX = 2,
    VCPU_INJECT_NMI = 3,
    VEI_DIR_OUT = 0,
    VEI_DIR_IN = 1,
});

consts!(exception_vectors {
    VMM_EX_DE = 0,
    VMM_EX_DB = 1,
    VMM_EX_NMI = 2,
    VMM_EX_BP = 3,
    VMM_EX_OF = 4,
    VMM_EX_BR = 5,
    VMM_EX_UD = 6,
    VMM_EX_NM = 7,
    VMM_EX_DF = 8,
    VMM_EX_CP = 9,
    VMM_EX_TS = 10,
    VMM_EX_NP = 11,
    VMM_EX_SS = 12,
    VMM_EX_GP = 13,
    VMM_EX_PF = 14,
    VMM_EX_MF = 16,
    VMM_EX_AC = 17,
    VMM_EX_MC = 18,
    VMM_EX_XM = 19,
    VMM_EX_VE = 20,
});

consts!(rwregs_and_rwvmparams_masks {
    VM_RWREGS_GPRS = 0x1,
    VM_RWREGS_SREGS = 0x2,
    VM_RWREGS_CRS = 0x4,
    VM_RWREGS_MSRS = 0x8,
    VM_RWREGS_DRS = 0x10,
    VM_RWREGS_ALL = 0x1F,
    VM_RWVMPARAMS_PVCLOCK_SYSTEM_GPA = 0x1,
    VM_RWVMPARAMS_PVCLOCK_VERSION = 0x2,
    VM_RWVMPARAMS_ALL = 0x3,
});

// Era B/C: GPRs and segment registers in x86 encoding order (era A had
// RAX 0, RBX 1, RCX 2 … and CS 0, DS 1, ES 2 …).
consts!(gpr_indices {
    VCPU_REGS_RAX = 0,
    VCPU_REGS_RCX = 1,
    VCPU_REGS_RDX = 2,
    VCPU_REGS_RBX = 3,
    VCPU_REGS_RSP = 4,
    VCPU_REGS_RBP = 5,
    VCPU_REGS_RSI = 6,
    VCPU_REGS_RDI = 7,
    VCPU_REGS_R8 = 8,
    VCPU_REGS_R9 = 9,
    VCPU_REGS_R10 = 10,
    VCPU_REGS_R11 = 11,
    VCPU_REGS_R12 = 12,
    VCPU_REGS_R13 = 13,
    VCPU_REGS_R14 = 14,
    VCPU_REGS_R15 = 15,
    VCPU_REGS_RIP = 16,
    VCPU_REGS_RFLAGS = 17,
    VCPU_REGS_NGPRS = 18,
});

consts!(sreg_indices {
    VCPU_REGS_ES = 0,
    VCPU_REGS_CS = 1,
    VCPU_REGS_SS = 2,
    VCPU_REGS_DS = 3,
    VCPU_REGS_FS = 4,
    VCPU_REGS_GS = 5,
    VCPU_REGS_LDTR = 6,
    VCPU_REGS_TR = 7,
    VCPU_REGS_NSREGS = 8,
});

consts!(cr_msr_dr_indices {
    VCPU_REGS_CR0 = 0,
    VCPU_REGS_CR2 = 1,
    VCPU_REGS_CR3 = 2,
    VCPU_REGS_CR4 = 3,
    VCPU_REGS_CR8 = 4,
    VCPU_REGS_XCR0 = 5,
    VCPU_REGS_PDPTE0 = 6,
    VCPU_REGS_PDPTE1 = 7,
    VCPU_REGS_PDPTE2 = 8,
    VCPU_REGS_PDPTE3 = 9,
    VCPU_REGS_NCRS = 10,
    VCPU_REGS_EFER = 0,
    VCPU_REGS_STAR = 1,
    VCPU_REGS_LSTAR = 2,
    VCPU_REGS_CSTAR = 3,
    VCPU_REGS_SFMASK = 4,
    VCPU_REGS_KGSBASE = 5,
    VCPU_REGS_MISC_ENABLE = 6,
    VCPU_REGS_NMSRS = 7,
    VCPU_REGS_DR0 = 0,
    VCPU_REGS_DR1 = 1,
    VCPU_REGS_DR2 = 2,
    VCPU_REGS_DR3 = 3,
    VCPU_REGS_DR6 = 4,
    VCPU_REGS_DR7 = 5,
    VCPU_REGS_NDRS = 6,
});

// The exit reasons vmd dispatches on (reference §5.5).
consts!(exit_reasons {
    VMX_EXIT_NMI = 0,
    VMX_EXIT_EXTINT = 1,
    VMX_EXIT_TRIPLE_FAULT = 2,
    VMX_EXIT_INT_WINDOW = 7,
    VMX_EXIT_CPUID = 10,
    VMX_EXIT_HLT = 12,
    VMX_EXIT_IO = 30,
    VMX_EXIT_RDMSR = 31,
    VMX_EXIT_WRMSR = 32,
    VMX_EXIT_ENTRY_FAILED_GUEST_STATE = 33,
    VMX_EXIT_EPT_VIOLATION = 48,
    VMX_EXIT_EPT_MISCONFIGURATION = 49,
    VMX_EXIT_XSETBV = 55,
    SVM_VMEXIT_INTR = 0x60,
    SVM_VMEXIT_NMI = 0x61,
    SVM_VMEXIT_VINTR = 0x64,
    SVM_VMEXIT_CPUID = 0x72,
    SVM_VMEXIT_HLT = 0x78,
    SVM_VMEXIT_IOIO = 0x7B,
    SVM_VMEXIT_MSR = 0x7C,
    SVM_VMEXIT_SHUTDOWN = 0x7F,
    SVM_VMEXIT_NPF = 0x400,
    SVM_VMEXIT_VMGEXIT = 0x403,
    VM_EXIT_TERMINATED = 0xFFFE,
    VM_EXIT_NONE = 0xFFFF,
});

consts!(vcpu_states_and_cpu_modes {
    VCPU_STATE_STOPPED = 0,
    VCPU_STATE_RUNNING = 1,
    VCPU_STATE_REQTERM = 2,
    VCPU_STATE_TERMINATED = 3,
    VCPU_STATE_UNKNOWN = 4,
    VMM_CPU_MODE_REAL = 0,
    VMM_CPU_MODE_PROT = 1,
    VMM_CPU_MODE_PROT32 = 2,
    VMM_CPU_MODE_COMPAT = 3,
    VMM_CPU_MODE_LONG = 4,
    VMM_CPU_MODE_UNKNOWN = 5,
});

/// The array bounds in the structs follow the constants.
#[test]
fn array_bounds_follow_constants() {
    let vcp = vm_create_params::default();
    assert_eq!(vcp.vcp_memranges.len(), VMM_MAX_MEM_RANGES as usize);
    assert_eq!(vcp.vcp_name.len(), VMM_MAX_NAME_LEN as usize);
    assert_eq!(vcp.vcp_asid.len(), VMM_MAX_VCPUS as usize);
    let vir = vm_info_result::default();
    assert_eq!(vir.vir_vcpu_state.len(), VMM_MAX_VCPUS_PER_VM as usize);
    assert_eq!(vir.vir_name.len(), VMM_MAX_NAME_LEN as usize);
    let vsp = vm_sharemem_params::default();
    assert_eq!(vsp.vsp_memranges.len(), VMM_MAX_MEM_RANGES as usize);
    assert_eq!(vsp.vsp_va.len(), VMM_MAX_MEM_RANGES as usize);
    let vrs = vcpu_reg_state::default();
    assert_eq!(vrs.vrs_gprs.len(), VCPU_REGS_NGPRS as usize);
    assert_eq!(vrs.vrs_crs.len(), VCPU_REGS_NCRS as usize);
    assert_eq!(vrs.vrs_msrs.len(), VCPU_REGS_NMSRS as usize);
    assert_eq!(vrs.vrs_drs.len(), VCPU_REGS_NDRS as usize);
    assert_eq!(vrs.vrs_sregs.len(), VCPU_REGS_NSREGS as usize);
}

/// Each request number carries its struct's size in bits 16..29 (the
/// kernel copies exactly that many bytes) and its number in bits 0..7.
#[test]
fn request_numbers_encode_struct_sizes() {
    let len = |req: u64| ((req >> 16) & VMM_IOCPARM_MASK as u64) as usize;
    assert_eq!(len(VMM_IOC_CREATE), size_of::<vm_create_params>());
    assert_eq!(len(VMM_IOC_RUN), size_of::<vm_run_params>());
    assert_eq!(len(VMM_IOC_INFO), size_of::<vm_info_params>());
    assert_eq!(len(VMM_IOC_TERM), size_of::<vm_terminate_params>());
    assert_eq!(len(VMM_IOC_RESETCPU), size_of::<vm_resetcpu_params>());
    assert_eq!(len(VMM_IOC_INTR), size_of::<vm_intr_params>());
    assert_eq!(len(VMM_IOC_READREGS), size_of::<vm_rwregs_params>());
    assert_eq!(len(VMM_IOC_WRITEREGS), size_of::<vm_rwregs_params>());
    assert_eq!(len(VMM_IOC_READVMPARAMS), size_of::<vm_rwvmparams_params>());
    assert_eq!(
        len(VMM_IOC_WRITEVMPARAMS),
        size_of::<vm_rwvmparams_params>()
    );
    assert_eq!(len(VMM_IOC_SHAREMEM), size_of::<vm_sharemem_params>());
    for (n, req) in [
        VMM_IOC_CREATE,
        VMM_IOC_RUN,
        VMM_IOC_INFO,
        VMM_IOC_TERM,
        VMM_IOC_RESETCPU,
        VMM_IOC_INTR,
        VMM_IOC_READREGS,
        VMM_IOC_WRITEREGS,
        VMM_IOC_READVMPARAMS,
        VMM_IOC_WRITEVMPARAMS,
        VMM_IOC_SHAREMEM,
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(req & 0xFF, n as u64 + 1);
        assert_eq!((req >> 8) & 0xFF, b'V' as u64);
    }
}
