//! "No panic" property of exit dispatch: whatever exit reason and exit
//! record vmm(4) hands back — and a hostile guest shapes most of the
//! record — [`vcpu_exit`] with the VM process's own handler
//! ([`Handler`]) over the real port and MMIO buses of a small platform
//! returns an action or an error, never a panic.
//!
//! Each case builds the platform of `devices::property_tests` (every device
//! model, PCI with BARs, fw_cfg), fills its RAM with the x86 properties'
//! page and descriptor tables, and dispatches a run of exits: port I/O to
//! the devices' ports (any size, direction and length, string and REP
//! forms), EPT violations / nested page faults of every fault type with
//! MMIO-assist instruction bytes, HLT, shutdown and the ignored reasons,
//! and reasons vmd does not know; time passes between them.
use super::exit::vcpu_exit;
use super::machine::Handler;
use crate::devices::property_tests::{Op, Platform};
use crate::property::{cases, Rng};
use crate::x86::property_tests::{
    insn_bytes, place, random_page, random_regs, Layout, OPCODES, RAM_PAGES, STRING_IO,
};
use vmm_sys::abi::*;

/// Exit reasons vcpu_exit dispatches on, and some it does not know.
const REASONS: [u32; 17] = [
    VMX_EXIT_IO,
    SVM_VMEXIT_IOIO,
    VMX_EXIT_EPT_VIOLATION,
    SVM_VMEXIT_NPF,
    VMX_EXIT_HLT,
    SVM_VMEXIT_HLT,
    VMX_EXIT_TRIPLE_FAULT,
    SVM_VMEXIT_SHUTDOWN,
    VMX_EXIT_INT_WINDOW,
    SVM_VMEXIT_VINTR,
    VMX_EXIT_CPUID,
    VMX_EXIT_EXTINT,
    SVM_VMEXIT_INTR,
    SVM_VMEXIT_MSR,
    SVM_VMEXIT_CPUID,
    VM_EXIT_NONE,
    VM_EXIT_TERMINATED,
];

/// The platform's ports (PCI's twice), and a few nobody claims.
const PORTS: [u16; 43] = [
    0x20, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1, 0x40, 0x41, 0x42, 0x43, 0x61, 0x70, 0x71, 0x3f8, 0x3f9,
    0x3fa, 0x3fb, 0x3fc, 0x3fd, 0x3ff, 0xcf8, 0xcfa, 0xcfc, 0xcfd, 0xcfe, 0xcff, 0xcf8, 0xcfc,
    0xcfd, 0xcfe, 0xcff, 0x510, 0x511, 0x514, 0x518, 0x60, 0x64, 0x300, 0x1000, 0x1004, 0x80,
    0xcf9, 0x4d2,
];

const PAGE: u64 = 0x1000;
const _: () = assert!(crate::devices::property_tests::RAM[0].1 as u64 == RAM_PAGES * PAGE);

/// One exit as vmm(4) reports it.
#[derive(Clone, Copy)]
struct Exit {
    reason: u16,
    exit: vm_exit,
    /// Instruction bytes, also put at CS:RIP.
    bytes: [u8; 15],
    /// Time passing before the exit, in ns.
    wait: u64,
}

impl std::fmt::Debug for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.exit.vrs;
        write!(
            f,
            "reason {:#x} vee {:?} vei {:?} cpl {} bytes {:02x?} gprs {:x?} crs {:x?} \
             efer {:#x} sregs {:x?} gdtr {:x?}",
            self.reason,
            self.exit.vee(),
            self.exit.vei(),
            self.exit.cpl,
            self.bytes,
            r.vrs_gprs,
            r.vrs_crs,
            r.vrs_msrs[VCPU_REGS_EFER as usize],
            r.vrs_sregs,
            r.vrs_gdtr,
        )
    }
}

fn random_exit(rng: &mut Rng) -> Exit {
    // Port I/O half the time, MMIO assists a quarter, the rest anything.
    let reason = match rng.below(8) {
        0..=3 => rng.pick(&[VMX_EXIT_IO, SVM_VMEXIT_IOIO]),
        4 | 5 => rng.pick(&[VMX_EXIT_EPT_VIOLATION, SVM_VMEXIT_NPF]),
        6 => rng.pick(&REASONS),
        _ => rng.next() as u16 as u32,
    } as u16;
    let (vrs, cpl, _) = random_regs(rng);
    let mut exit = vm_exit {
        vrs,
        cpl,
        ..Default::default()
    };
    let long = rng.one_in(2);
    let string = rng.one_in(3);
    let bytes = insn_bytes(rng, long, if string { STRING_IO } else { OPCODES });
    if rng.one_in(8) {
        // Noise in every byte of the record.
        let vee = exit.vee_mut();
        vee.vee_fault_type = rng.next() as u8;
        vee.vee_insn_info = rng.next() as u8;
        vee.vee_insn_len = rng.next() as u8;
        rng.fill(&mut vee.vee_insn_bytes);
    } else if matches!(reason as u32, VMX_EXIT_IO | SVM_VMEXIT_IOIO) {
        let any = rng.next() as u8;
        let vei = exit.vei_mut();
        vei.vei_size = rng.pick(&[1, 1, 2, 4, 4, 0, 3, 8, 255, any]);
        vei.vei_dir = rng.pick(&[0, 1, 1, any]);
        vei.vei_string = u8::from(string && !rng.one_in(4));
        vei.vei_rep = u8::from(string && rng.one_in(2));
        vei.vei_port = if rng.one_in(8) {
            rng.next() as u16
        } else {
            rng.pick(&PORTS)
        };
        vei.vei_data = if vei.vei_port == 0xcf8 && !rng.one_in(4) {
            // A configuration address the data port will use.
            0x8000_0000 | (rng.below(4) as u32) << 11 | rng.below(256) as u32
        } else {
            rng.edgy_u64() as u32
        };
        vei.vei_insn_len = rng.pick(&[1, 2, 0, 15, 16, any]);
        vei.vei_encoding = rng.next() as u8;
        exit.vrs.vrs_gprs[VCPU_REGS_RDX as usize] = u64::from(exit.vei().vei_port);
    } else {
        let any = rng.next() as u8;
        let vee = exit.vee_mut();
        vee.vee_fault_type = rng.pick(&[
            VEE_FAULT_MMIO_ASSIST as u8,
            VEE_FAULT_MMIO_ASSIST as u8,
            VEE_FAULT_HANDLED as u8,
            VEE_FAULT_PROTECT as u8,
            VEE_FAULT_INVALID as u8,
            any,
        ]);
        vee.vee_insn_info = rng.pick(&[
            VEE_BYTES_VALID as u8,
            (VEE_BYTES_VALID | VEE_LEN_VALID) as u8,
            VEE_LEN_VALID as u8,
            0,
        ]);
        vee.vee_insn_len = rng.pick(&[1, 2, 3, 4, 6, 7, 15, 0, 16, any]);
        vee.vee_insn_bytes = bytes;
    }
    let long_wait = rng.below(2_000_000_000);
    Exit {
        reason,
        exit,
        bytes,
        wait: rng.pick(&[0, 1_000, 1_000_000, long_wait]),
    }
}

struct Case {
    platform_seed: u64,
    layout: Layout,
    exits: Vec<Exit>,
}

#[test]
fn vcpu_exit_never_panics() {
    let mut done = [0u32; 2];
    // Which exit of the case is being dispatched, for the report.
    let at = std::cell::Cell::new(0);
    cases(
        "vcpu_exit",
        0x5eed_e817,
        600,
        |rng| {
            let platform_seed = rng.next();
            let (_, _, layout) = random_regs(rng);
            let exits = (0..40).map(|_| random_exit(rng)).collect();
            Case {
                platform_seed,
                layout,
                exits,
            }
        },
        |c| {
            format!(
                "platform seed {:#x}, RAM {:x?}, exit {} of {}: {:?}",
                c.platform_seed,
                c.layout,
                at.get(),
                c.exits.len(),
                c.exits[at.get()]
            )
        },
        |c| {
            let mut p = Platform::new(&mut Rng::new(c.platform_seed));
            let mut rng = Rng::new(c.layout.seed);
            let mut page = vec![0u8; PAGE as usize];
            for n in 0..RAM_PAGES {
                random_page(&mut rng, &c.layout, n, &mut page);
                p.mem.write(n * PAGE, &page).unwrap();
            }
            for (i, mut e) in c.exits.into_iter().enumerate() {
                at.set(i);
                p.apply(&Op::Time {
                    ns: e.wait,
                    jump: 0,
                    all: false,
                });
                place(&e.exit.vrs, e.exit.cpl, &p.mem, &e.bytes);
                let mut h = Handler {
                    pio: &p.pio,
                    mmio: &mut p.mmio,
                    mem: &p.mem,
                    sregs_changed: false,
                    gprs_changed: false,
                };
                match vcpu_exit(e.reason, &mut e.exit, &mut h) {
                    Ok(_) => done[0] += 1,
                    Err(err) => {
                        let _ = (err.to_string(), err.errno());
                        done[1] += 1;
                    }
                }
            }
        },
    );
    let [ok, failed] = done;
    assert!(
        ok > 10_000 && failed > 1_000,
        "{ok} exits handled, {failed} refused"
    );
}
