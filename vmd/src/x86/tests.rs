//! Emulator tests: single instructions assembled with iced-x86's code_asm
//! (raw bytes where code_asm picks another encoding), run against a mock
//! register file (a `vm_exit` with `vrs` set up for each CPU mode), mock
//! RAM holding the page tables, and a mock MMIO bus that records every
//! access.  Each instruction runs twice, once as the AMD flavour reports it
//! (`vee_insn_bytes`) and once as the Intel flavour does (`vee_insn_len`,
//! bytes fetched from guest memory), and both runs must agree.
use super::mmu::tests::MockRam;
use super::mmu::*;
use super::regs::*;
use super::*;
use iced_x86::code_asm::*;
use iced_x86::{Code, Instruction, MemoryOperand, Register};
use std::collections::HashMap;
use vmm_sys::abi::*;

const RAX: usize = VCPU_REGS_RAX as usize;
const RCX: usize = VCPU_REGS_RCX as usize;
const RBX: usize = VCPU_REGS_RBX as usize;
const RSP: usize = VCPU_REGS_RSP as usize;
const RBP: usize = VCPU_REGS_RBP as usize;
const RSI: usize = VCPU_REGS_RSI as usize;
const RDI: usize = VCPU_REGS_RDI as usize;
const R8: usize = VCPU_REGS_R8 as usize;
const R9: usize = VCPU_REGS_R9 as usize;
const R10: usize = VCPU_REGS_R10 as usize;
const R12: usize = VCPU_REGS_R12 as usize;
const RIP: usize = VCPU_REGS_RIP as usize;
const RFLAGS: usize = VCPU_REGS_RFLAGS as usize;
const ES: usize = VCPU_REGS_ES as usize;
const CS: usize = VCPU_REGS_CS as usize;
const SS: usize = VCPU_REGS_SS as usize;
const DS: usize = VCPU_REGS_DS as usize;
const FS: usize = VCPU_REGS_FS as usize;

/// An MMIO device window (LAPIC-like).
const MMIO: u64 = 0xfee0_0000;
/// A second window, for MMIO → MMIO moves.
const MMIO2: u64 = 0xc000_0000;
/// A window below 1 MiB for real-mode tests (VGA-like), a hole in RAM.
const LOW_MMIO: u64 = 0xa_0000;
/// Where code is placed (linear and, with identity maps, physical).
const CODE: u64 = 0x1000;
/// The top GiB of the 64-bit address space maps GPAs 0xc000_0000..
const HIGH: u64 = 0xffff_ffff_c000_0000;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Io {
    R(u64, u8),
    W(u64, u8, u64),
}

/// MMIO windows backed by a byte store, logging each access.
#[derive(Default)]
struct MockBus {
    ranges: Vec<(u64, u64)>,
    log: Vec<Io>,
    bytes: HashMap<u64, u8>,
}

impl MockBus {
    fn claims(&self, gpa: u64) -> bool {
        self.ranges.iter().any(|&(b, l)| gpa >= b && gpa - b < l)
    }
    fn poke(&mut self, gpa: u64, size: usize, v: u64) {
        for i in 0..size {
            self.bytes.insert(gpa + i as u64, (v >> (8 * i)) as u8);
        }
    }
    fn peek(&self, gpa: u64, size: usize) -> u64 {
        (0..size).fold(0, |v, i| {
            v | (u64::from(*self.bytes.get(&(gpa + i as u64)).unwrap_or(&0)) << (8 * i))
        })
    }
}

impl MmioAccess for MockBus {
    fn mmio_read(&mut self, gpa: u64, size: u8) -> Option<u64> {
        if !self.claims(gpa) {
            return None;
        }
        self.log.push(Io::R(gpa, size));
        Some(self.peek(gpa, size as usize))
    }
    fn mmio_write(&mut self, gpa: u64, size: u8, value: u64) -> bool {
        if !self.claims(gpa) {
            return false;
        }
        self.log.push(Io::W(gpa, size, value));
        self.poke(gpa, size as usize, value);
        true
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavour {
    /// Decode assist: the bytes come with the exit.
    Amd,
    /// The length comes with the exit; the emulator fetches the bytes.
    Intel,
}

struct Vm {
    exit: vm_exit,
    ram: MockRam,
    bus: MockBus,
}

fn seg(vm: &mut Vm, idx: usize, sel: u16, base: u64, limit: u32, ar: u32) {
    vm.exit.vrs.vrs_sregs[idx] = vcpu_segment_info {
        vsi_sel: sel,
        vsi_limit: limit,
        vsi_ar: ar,
        vsi_base: base,
    };
}

impl Vm {
    fn base() -> Vm {
        let ram = MockRam::new(0x40_0000);
        ram.hole.set((LOW_MMIO, 0x2_0000));
        let bus = MockBus {
            ranges: vec![(MMIO, 0x1_0000), (MMIO2, 0x1_0000), (LOW_MMIO, 0x2_0000)],
            ..Default::default()
        };
        let mut vm = Vm {
            exit: vm_exit::default(),
            ram,
            bus,
        };
        vm.exit.vrs.vrs_gprs[RIP] = CODE;
        vm.exit.vrs.vrs_gprs[RFLAGS] = 0x2;
        vm
    }

    fn flat_segments(&mut self, code_ar: u32, data_ar: u32) {
        seg(self, CS, 0x8, 0, 0xffff_ffff, code_ar);
        for i in [ES, SS, DS, FS, VCPU_REGS_GS as usize] {
            seg(self, i, 0x10, 0, 0xffff_ffff, data_ar);
        }
    }

    /// 64-bit mode: 4-level paging identity-mapping the low 4 GiB with
    /// 1 GiB pages, and the top GiB onto GPA 0xc000_0000.
    fn long() -> Vm {
        let mut vm = Vm::base();
        let root = vm.ram.alloc_table();
        let pdpt = vm.ram.alloc_table();
        vm.ram.w64(root, pdpt | PG_RW | PG_P);
        for i in 0..4u64 {
            vm.ram.w64(pdpt + i * 8, (i << 30) | PG_PS | PG_RW | PG_P);
        }
        let pdpt_hi = vm.ram.alloc_table();
        vm.ram.w64(root + 511 * 8, pdpt_hi | PG_RW | PG_P);
        vm.ram.w64(pdpt_hi + 511 * 8, MMIO2 | PG_PS | PG_RW | PG_P);
        let r = &mut vm.exit.vrs;
        r.vrs_crs[VCPU_REGS_CR0 as usize] = CR0_PE | CR0_PG | CR0_WP;
        r.vrs_crs[VCPU_REGS_CR3 as usize] = root;
        r.vrs_crs[VCPU_REGS_CR4 as usize] = CR4_PAE;
        r.vrs_msrs[VCPU_REGS_EFER as usize] = EFER_LME | EFER_LMA | EFER_NXE;
        vm.flat_segments(0xa09b, 0xc093);
        vm
    }

    /// Compatibility mode: long-mode paging, a 32-bit code segment.
    fn compat() -> Vm {
        let mut vm = Vm::long();
        vm.exit.vrs.vrs_sregs[CS].vsi_ar = 0xc09b;
        vm
    }

    /// 32-bit protected mode, paging off, flat segments.
    fn prot32() -> Vm {
        let mut vm = Vm::base();
        vm.exit.vrs.vrs_crs[VCPU_REGS_CR0 as usize] = CR0_PE;
        vm.flat_segments(0xc09b, 0xc093);
        vm
    }

    /// 32-bit protected mode with 2-level paging: 4 MiB identity pages
    /// (PSE) for low RAM and both MMIO windows.
    fn prot32_paged() -> Vm {
        let mut vm = Vm::prot32();
        let root = vm.ram.alloc_table();
        for gpa in [0, MMIO & !0x3f_ffff, MMIO2] {
            vm.ram
                .w32(root + (gpa >> 22) * 4, (gpa | PG_PS | PG_RW | PG_P) as u32);
        }
        let r = &mut vm.exit.vrs;
        r.vrs_crs[VCPU_REGS_CR0 as usize] |= CR0_PG | CR0_WP;
        r.vrs_crs[VCPU_REGS_CR3 as usize] = root;
        r.vrs_crs[VCPU_REGS_CR4 as usize] = CR4_PSE;
        vm
    }

    /// 16-bit protected mode: CS.D and SS.B clear.
    fn prot16() -> Vm {
        let mut vm = Vm::base();
        vm.exit.vrs.vrs_crs[VCPU_REGS_CR0 as usize] = CR0_PE;
        vm.flat_segments(0x009b, 0x0093);
        vm
    }

    /// Real mode, all segments 0.
    fn real() -> Vm {
        let mut vm = Vm::base();
        for i in 0..6 {
            seg(&mut vm, i, 0, 0, 0xffff, if i == CS { 0x9b } else { 0x93 });
        }
        vm
    }

    fn set(&mut self, reg: usize, v: u64) -> &mut Self {
        self.exit.vrs.vrs_gprs[reg] = v;
        self
    }

    fn get(&self, reg: usize) -> u64 {
        self.exit.vrs.vrs_gprs[reg]
    }

    fn flags(&self) -> u64 {
        self.get(RFLAGS)
    }

    /// Places `code` at CS:RIP (through the page tables) and emulates it as
    /// `flavour` reports it.
    fn run(&mut self, code: &[u8], flavour: Flavour) -> Result<Emulated, MmioError> {
        let vrs = &self.exit.vrs;
        let mode = Mode::of(vrs);
        let rip = self.get(RIP);
        let lin = seg_base(vrs, mode, Register::CS).wrapping_add(rip);
        let lin = if mode == Mode::Long {
            lin
        } else {
            lin & 0xffff_ffff
        };
        let gpa = translate_gva(vrs, &self.ram, lin, Access::Read, 0).unwrap();
        self.ram.fill(gpa, code);
        self.report(code, flavour);
        emulate(&mut self.exit, &self.ram, &mut self.bus)
    }

    /// Fills the exit's `vee` as the flavour's kernel would for `code`.
    fn report(&mut self, code: &[u8], flavour: Flavour) {
        let vee = self.exit.vee_mut();
        vee.vee_fault_type = VEE_FAULT_MMIO_ASSIST as u8;
        match flavour {
            Flavour::Amd => {
                vee.vee_insn_info = VEE_BYTES_VALID as u8;
                vee.vee_insn_bytes = [0; 15];
                let n = code.len().min(15);
                vee.vee_insn_bytes[..n].copy_from_slice(&code[..n]);
            }
            Flavour::Intel => {
                vee.vee_insn_info = VEE_LEN_VALID as u8;
                vee.vee_insn_len = code.len() as u8;
            }
        }
    }
}

fn asm(bits: u32, f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(bits).unwrap();
    f(&mut a).unwrap();
    a.assemble(CODE).unwrap()
}

fn asm64(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    asm(64, f)
}

/// Runs `code` in a VM from `mk`, prepared by `prep`, in both flavours;
/// checks that they agree and returns the (Intel) VM after the run.
fn emu(mk: fn() -> Vm, prep: impl Fn(&mut Vm), code: &[u8]) -> (Vm, Emulated) {
    let mut out = Vec::new();
    for flavour in [Flavour::Amd, Flavour::Intel] {
        let mut vm = mk();
        prep(&mut vm);
        let r = vm
            .run(code, flavour)
            .unwrap_or_else(|e| panic!("{flavour:?}: {e}"));
        out.push((vm, r));
    }
    let (intel, amd) = (out.pop().unwrap(), out.pop().unwrap());
    assert_eq!(amd.1, intel.1);
    assert_eq!(amd.0.exit.vrs.vrs_gprs, intel.0.exit.vrs.vrs_gprs);
    assert_eq!(amd.0.bus.log, intel.0.bus.log);
    assert!(*amd.0.ram.bytes.borrow() == *intel.0.ram.bytes.borrow());
    intel
}

/// Like [`emu`] for an instruction that must fail; returns the error.
fn emu_err(mk: fn() -> Vm, prep: impl Fn(&mut Vm), code: &[u8]) -> MmioError {
    let mut errs = Vec::new();
    for flavour in [Flavour::Amd, Flavour::Intel] {
        let mut vm = mk();
        prep(&mut vm);
        errs.push(vm.run(code, flavour).unwrap_err());
    }
    // AMD's window may hold more bytes than the instruction; the rest agrees.
    if let (MmioError::Undecodable { .. }, MmioError::Undecodable { .. }) = (&errs[0], &errs[1]) {
    } else {
        assert_eq!(errs[0], errs[1]);
    }
    errs.pop().unwrap()
}

fn next_rip(code: &[u8]) -> u64 {
    CODE + code.len() as u64
}

// ---- MOV ---------------------------------------------------------------

#[test]
fn mov_register_to_mmio() {
    let prep = |vm: &mut Vm| {
        vm.set(RAX, MMIO + 0x10)
            .set(RBX, MMIO + 0x20)
            .set(RCX, 0x1122_3344_5566_7788)
            .set(RSI, 0x99aa)
            .set(R8, MMIO)
            .set(R9, 0x3)
            .set(R10, 0xcafe_f00d_dead_beef);
    };
    let cases: Vec<(Vec<u8>, Io)> = vec![
        (
            asm64(|a| a.mov(dword_ptr(rax), ecx)),
            Io::W(MMIO + 0x10, 4, 0x5566_7788),
        ),
        (
            asm64(|a| a.mov(byte_ptr(rax), cl)),
            Io::W(MMIO + 0x10, 1, 0x88),
        ),
        (
            asm64(|a| a.mov(word_ptr(rax), cx)),
            Io::W(MMIO + 0x10, 2, 0x7788),
        ),
        (
            asm64(|a| a.mov(qword_ptr(rax), rcx)),
            Io::W(MMIO + 0x10, 8, 0x1122_3344_5566_7788),
        ),
        // CH without REX is bits 8..15 of RCX; SIL needs REX.
        (
            asm64(|a| a.mov(byte_ptr(rbx), ch)),
            Io::W(MMIO + 0x20, 1, 0x77),
        ),
        (
            asm64(|a| a.mov(byte_ptr(rbx), sil)),
            Io::W(MMIO + 0x20, 1, 0xaa),
        ),
        // REX.B/X/R: base R8, index R9, source R10D, SIB and disp8.
        (
            asm64(|a| a.mov(dword_ptr(r8 + r9 * 4 + 0x20), r10d)),
            Io::W(MMIO + 0x2c, 4, 0xdead_beef),
        ),
    ];
    for (code, io) in cases {
        let (vm, r) = emu(Vm::long, prep, &code);
        assert_eq!(vm.bus.log, [io], "{code:02x?}");
        assert_eq!(vm.get(RIP), next_rip(&code));
        assert_eq!(r.insn_len, code.len());
        assert!(!r.rep_pending && !r.sregs_changed);
        assert_eq!(vm.get(RCX), 0x1122_3344_5566_7788);
    }
}

#[test]
fn mov_mmio_to_register_merges_like_the_cpu() {
    let prep = |vm: &mut Vm| {
        vm.set(RAX, MMIO + 0x10)
            .set(RCX, u64::MAX)
            .set(R12, u64::MAX);
        vm.bus.poke(MMIO + 0x10, 8, 0x8877_6655_4433_2211);
    };
    let cases: Vec<(Vec<u8>, usize, u8, u64)> = vec![
        // 32-bit destinations zero-extend in 64-bit mode.
        (asm64(|a| a.mov(ecx, dword_ptr(rax))), RCX, 4, 0x4433_2211),
        (
            asm64(|a| a.mov(cx, word_ptr(rax))),
            RCX,
            2,
            0xffff_ffff_ffff_2211,
        ),
        (
            asm64(|a| a.mov(cl, byte_ptr(rax))),
            RCX,
            1,
            0xffff_ffff_ffff_ff11,
        ),
        (
            asm64(|a| a.mov(ch, byte_ptr(rax))),
            RCX,
            1,
            0xffff_ffff_ffff_11ff,
        ),
        (
            asm64(|a| a.mov(rcx, qword_ptr(rax))),
            RCX,
            8,
            0x8877_6655_4433_2211,
        ),
        (
            asm64(|a| a.mov(r12b, byte_ptr(rax))),
            R12,
            1,
            0xffff_ffff_ffff_ff11,
        ),
    ];
    for (code, reg, size, want) in cases {
        let (vm, _) = emu(Vm::long, prep, &code);
        assert_eq!(vm.bus.log, [Io::R(MMIO + 0x10, size)], "{code:02x?}");
        assert_eq!(vm.get(reg), want, "{code:02x?}");
        assert_eq!(vm.get(RIP), next_rip(&code));
    }
}

#[test]
fn mov_immediate_to_mmio() {
    let prep = |vm: &mut Vm| {
        vm.set(RAX, MMIO);
    };
    let cases: Vec<(Vec<u8>, Io)> = vec![
        (
            asm64(|a| a.mov(dword_ptr(rax), 0xdead_beef_u32)),
            Io::W(MMIO, 4, 0xdead_beef),
        ),
        // imm32 sign-extended to 64 bits.
        (
            asm64(|a| a.mov(qword_ptr(rax), -2)),
            Io::W(MMIO, 8, 0xffff_ffff_ffff_fffe),
        ),
        (
            asm64(|a| a.mov(byte_ptr(rax + 8), 0x5a)),
            Io::W(MMIO + 8, 1, 0x5a),
        ),
        (
            asm64(|a| a.mov(word_ptr(rax - 2 + 0x10), 0x1234)),
            Io::W(MMIO + 0xe, 2, 0x1234),
        ),
    ];
    for (code, io) in cases {
        let (vm, _) = emu(Vm::long, prep, &code);
        assert_eq!(vm.bus.log, [io], "{code:02x?}");
    }
}

#[test]
fn mov_moffs_forms() {
    let prep = |vm: &mut Vm| {
        vm.set(RAX, 0x1234_5678_9abc_def0);
        vm.bus.poke(MMIO + 0x20, 8, 0x1122_3344_5566_7788);
    };
    // A1 moffs32: mov eax, [0xfee00020] (32-bit code).
    let code = [0xa1, 0x20, 0x00, 0xe0, 0xfe];
    let (vm, _) = emu(Vm::prot32, prep, &code);
    assert_eq!(vm.bus.log, [Io::R(MMIO + 0x20, 4)]);
    assert_eq!(vm.get(RAX), 0x1234_5678_5566_7788);
    // A0: mov al, moffs.
    let code = [0xa0, 0x20, 0x00, 0xe0, 0xfe];
    let (vm, _) = emu(Vm::prot32, prep, &code);
    assert_eq!(vm.get(RAX), 0x1234_5678_9abc_de88);
    // 66 A1: mov ax, moffs.
    let code = [0x66, 0xa1, 0x20, 0x00, 0xe0, 0xfe];
    let (vm, _) = emu(Vm::prot32, prep, &code);
    assert_eq!(vm.get(RAX), 0x1234_5678_9abc_7788);
    assert_eq!(vm.get(RIP), CODE + 6);
    // A2 / A3: stores.
    let code = [0xa2, 0x24, 0x00, 0xe0, 0xfe];
    let (vm, _) = emu(Vm::prot32, prep, &code);
    assert_eq!(vm.bus.log, [Io::W(MMIO + 0x24, 1, 0xf0)]);
    let code = [0xa3, 0x24, 0x00, 0xe0, 0xfe];
    let (vm, _) = emu(Vm::prot32, prep, &code);
    assert_eq!(vm.bus.log, [Io::W(MMIO + 0x24, 4, 0x9abc_def0)]);
    // REX.W A1 moffs64 in 64-bit mode.
    let code = [0x48, 0xa1, 0x20, 0x00, 0xe0, 0xfe, 0, 0, 0, 0];
    let (vm, _) = emu(Vm::long, prep, &code);
    assert_eq!(vm.bus.log, [Io::R(MMIO + 0x20, 8)]);
    assert_eq!(vm.get(RAX), 0x1122_3344_5566_7788);
    assert_eq!(vm.get(RIP), CODE + 10);
}

#[test]
fn mov_segment_register_to_mmio() {
    let prep = |vm: &mut Vm| {
        vm.set(RAX, MMIO);
        vm.exit.vrs.vrs_sregs[ES].vsi_sel = 0x2b;
    };
    let code = asm64(|a| a.mov(word_ptr(rax), es));
    let (vm, r) = emu(Vm::long, prep, &code);
    assert_eq!(vm.bus.log, [Io::W(MMIO, 2, 0x2b)]);
    assert!(!r.sregs_changed);
}

#[test]
fn mov_segment_register_from_mmio_in_real_mode() {
    let prep = |vm: &mut Vm| {
        seg(vm, DS, 0xa000, 0xa_0000, 0xffff, 0x93);
        vm.set(RBX, 0x10);
        vm.bus.poke(LOW_MMIO + 0x10, 2, 0x1234);
    };
    let code = asm(16, |a| a.mov(es, word_ptr(bx)));
    let (vm, r) = emu(Vm::real, prep, &code);
    assert_eq!(vm.bus.log, [Io::R(LOW_MMIO + 0x10, 2)]);
    let s = vm.exit.vrs.vrs_sregs[ES];
    assert_eq!((s.vsi_sel, s.vsi_base), (0x1234, 0x1_2340));
    assert!(r.sregs_changed);
}

#[test]
fn mov_segment_register_from_mmio_loads_the_gdt_descriptor() {
    const GDT: u64 = 0x8000;
    let prep = |vm: &mut Vm| {
        vm.exit.vrs.vrs_gdtr.vsi_base = GDT;
        vm.exit.vrs.vrs_gdtr.vsi_limit = 0x1f;
        // Selector 0x18: base 0x00123000, limit 0xfffff pages, data RW,
        // DPL 0, present, G and D/B, not yet accessed.
        vm.ram.w64(GDT + 0x18, 0x00cf_9212_3000_ffff);
        vm.set(RAX, MMIO);
        vm.bus.poke(MMIO, 2, 0x18);
    };
    let code = asm(32, |a| a.mov(fs, word_ptr(eax)));
    let (vm, r) = emu(Vm::prot32, prep, &code);
    assert!(r.sregs_changed);
    let s = vm.exit.vrs.vrs_sregs[FS];
    assert_eq!(s.vsi_sel, 0x18);
    assert_eq!(s.vsi_base, 0x0012_3000);
    assert_eq!(s.vsi_limit, 0xffff_ffff);
    assert_eq!(s.vsi_ar, 0xc093);
    // The CPU marks the descriptor accessed.
    assert_eq!(vm.ram.r64(GDT + 0x18), 0x00cf_9312_3000_ffff);

    // A selector past the GDT limit is refused, naming the selector.
    let e = emu_err(
        Vm::prot32,
        |vm| {
            prep(vm);
            vm.bus.poke(MMIO, 2, 0x20);
        },
        &code,
    );
    assert!(
        matches!(e, MmioError::Segment { selector: 0x20, .. }),
        "{e}"
    );

    // A 64-bit GDT base whose descriptor runs past 2^64 wraps, as linear
    // addresses do, rather than overflowing: its first two bytes are the
    // last of the address space (a device there), the rest come from
    // linear 0 (zeros in RAM), a system descriptor.
    let e = emu_err(
        Vm::long,
        |vm| {
            vm.exit.vrs.vrs_gdtr.vsi_base = u64::MAX - 9;
            vm.exit.vrs.vrs_gdtr.vsi_limit = 0xffff;
            vm.bus.ranges.push((0xffff_fff0, 0x10));
            vm.set(RAX, MMIO);
            vm.bus.poke(MMIO, 2, 0x8);
        },
        &asm64(|a| a.mov(gs, word_ptr(rax))),
    );
    assert!(
        matches!(
            e,
            MmioError::Segment {
                selector: 0x8,
                reason: "system descriptor",
                ..
            }
        ),
        "{e}"
    );
}

// ---- MOVZX / MOVSX / MOVSXD ------------------------------------------

#[test]
fn movzx_movsx_movsxd() {
    let prep = |vm: &mut Vm| {
        vm.set(RAX, MMIO).set(RCX, 0x1111_1111_1111_1111);
        vm.bus.poke(MMIO, 4, 0x8000_8080);
    };
    let cases: Vec<(Vec<u8>, u8, u64)> = vec![
        (asm64(|a| a.movzx(ecx, byte_ptr(rax))), 1, 0x80),
        (asm64(|a| a.movzx(rcx, word_ptr(rax))), 2, 0x8080),
        (
            asm64(|a| a.movzx(cx, byte_ptr(rax))),
            1,
            0x1111_1111_1111_0080,
        ),
        (asm64(|a| a.movsx(ecx, byte_ptr(rax))), 1, 0xffff_ff80),
        (
            asm64(|a| a.movsx(rcx, word_ptr(rax))),
            2,
            0xffff_ffff_ffff_8080,
        ),
        (
            asm64(|a| a.movsx(cx, byte_ptr(rax))),
            1,
            0x1111_1111_1111_ff80,
        ),
        (
            asm64(|a| a.movsxd(rcx, dword_ptr(rax))),
            4,
            0xffff_ffff_8000_8080,
        ),
    ];
    for (code, size, want) in cases {
        let (vm, _) = emu(Vm::long, prep, &code);
        assert_eq!(vm.bus.log, [Io::R(MMIO, size)], "{code:02x?}");
        assert_eq!(vm.get(RCX), want, "{code:02x?}");
    }
}

// ---- ALU ---------------------------------------------------------------

/// Runs an ALU instruction on MMIO holding `mem` (4 bytes at MMIO) with
/// RCX = `count` and RFLAGS = `flags_in`; returns the VM after it.
fn alu_run(code: &[u8], mem: u64, count: u64, flags_in: u64) -> Vm {
    let prep = move |vm: &mut Vm| {
        vm.set(RAX, MMIO).set(RCX, count).set(RFLAGS, flags_in);
        vm.bus.poke(MMIO, 8, mem);
    };
    emu(Vm::long, prep, code).0
}

/// RFLAGS with bit 1, IF and DF clear, plus `status`.
const fn fl(status: u64) -> u64 {
    0x202 | status
}

#[test]
fn add_sets_flags_and_writes_back() {
    // add [rax], ecx: 0x7fffffff + 1 overflows into the sign bit.
    let code = asm64(|a| a.add(dword_ptr(rax), ecx));
    let vm = alu_run(&code, 0x7fff_ffff, 1, fl(FL_CF | FL_ZF));
    assert_eq!(vm.bus.log, [Io::R(MMIO, 4), Io::W(MMIO, 4, 0x8000_0000)]);
    assert_eq!(vm.flags(), fl(FL_OF | FL_SF | FL_AF | FL_PF));
    assert_eq!(vm.get(RIP), next_rip(&code));

    // add ecx, [rax]: carry out, zero result, only a read.
    let code = asm64(|a| a.add(ecx, dword_ptr(rax)));
    let vm = alu_run(&code, 1, 0xffff_ffff_ffff_ffff, fl(0));
    assert_eq!(vm.bus.log, [Io::R(MMIO, 4)]);
    assert_eq!(vm.get(RCX), 0);
    assert_eq!(vm.flags(), fl(FL_CF | FL_ZF | FL_AF | FL_PF));

    // adc byte [rax], cl with CF in.
    let code = asm64(|a| a.adc(byte_ptr(rax), cl));
    let vm = alu_run(&code, 0xfe, 1, fl(FL_CF));
    assert_eq!(vm.bus.log[1], Io::W(MMIO, 1, 0x00));
    assert_eq!(vm.flags(), fl(FL_CF | FL_ZF | FL_AF | FL_PF));
}

#[test]
fn sub_and_cmp_in_every_group() {
    // sub dword [rax], 1 (83 /5 ib): borrow.
    let code = asm64(|a| a.sub(dword_ptr(rax), 1));
    assert_eq!(code[0], 0x83);
    let vm = alu_run(&code, 0, 0, fl(0));
    assert_eq!(vm.bus.log[1], Io::W(MMIO, 4, 0xffff_ffff));
    assert_eq!(vm.flags(), fl(FL_CF | FL_SF | FL_AF | FL_PF));

    // sub rcx, [rax].
    let code = asm64(|a| a.sub(rcx, qword_ptr(rax)));
    let vm = alu_run(&code, 0x10, 0x8000_0000_0000_0000, fl(0));
    assert_eq!(vm.get(RCX), 0x7fff_ffff_ffff_fff0);
    assert_eq!(vm.flags(), fl(FL_OF | FL_PF));

    // sbb word [rax], cx with CF in.
    let code = asm64(|a| a.sbb(word_ptr(rax), cx));
    let vm = alu_run(&code, 0x0005, 0x0004, fl(FL_CF));
    assert_eq!(vm.bus.log[1], Io::W(MMIO, 2, 0));
    assert_eq!(vm.flags(), fl(FL_ZF | FL_PF));

    // cmp dword [rax], 5 (83 /7): equal; no write.
    let code = asm64(|a| a.cmp(dword_ptr(rax), 5));
    let vm = alu_run(&code, 5, 0, fl(FL_CF | FL_SF));
    assert_eq!(vm.bus.log, [Io::R(MMIO, 4)]);
    assert_eq!(vm.flags(), fl(FL_ZF | FL_PF));

    // cmp byte [rax], 0x80 (80 /7): 0x7f - 0x80 overflows.
    let code = asm64(|a| a.cmp(byte_ptr(rax), 0x80));
    assert_eq!(code[0], 0x80);
    let vm = alu_run(&code, 0x7f, 0, fl(0));
    assert_eq!(vm.bus.log, [Io::R(MMIO, 1)]);
    assert_eq!(vm.flags(), fl(FL_CF | FL_OF | FL_SF | FL_PF));

    // cmp dword [rax], imm32 (81 /7).
    let code = asm64(|a| a.cmp(dword_ptr(rax), 0x1234_5678));
    assert_eq!(code[0], 0x81);
    let vm = alu_run(&code, 0x1234_5679, 0, fl(0));
    assert_eq!(vm.flags(), fl(0));

    // cmp ecx, [rax] (3B): 1 - 2.
    let code = asm64(|a| a.cmp(ecx, dword_ptr(rax)));
    let vm = alu_run(&code, 2, 1, fl(0));
    assert_eq!(vm.get(RCX), 1);
    assert_eq!(vm.flags(), fl(FL_CF | FL_SF | FL_AF | FL_PF));

    // cmp [rax], ecx (39).
    let code = asm64(|a| a.cmp(dword_ptr(rax), ecx));
    let vm = alu_run(&code, 2, 1, fl(0));
    assert_eq!(vm.flags(), fl(0));
}

#[test]
fn logic_ops_clear_cf_of_af() {
    let all = FL_CF | FL_OF | FL_AF | FL_ZF | FL_SF | FL_PF;
    // and [rax], ecx.
    let code = asm64(|a| a.and(dword_ptr(rax), ecx));
    let vm = alu_run(&code, 0xf0f0, 0x0ff0, fl(all));
    assert_eq!(vm.bus.log[1], Io::W(MMIO, 4, 0x00f0));
    assert_eq!(vm.flags(), fl(FL_PF));
    // and ecx, [rax] (23).
    let code = asm64(|a| a.and(ecx, dword_ptr(rax)));
    let vm = alu_run(&code, 0xff, 0xffff_ffff_0000_0f0f, fl(0));
    assert_eq!(vm.get(RCX), 0x0f);
    assert_eq!(vm.flags(), fl(FL_PF));
    // or word [rax], 0x8000 (66 81 /1).
    let code = asm64(|a| a.or(word_ptr(rax), 0x8000));
    let vm = alu_run(&code, 0x0001, 0, fl(all));
    assert_eq!(vm.bus.log[1], Io::W(MMIO, 2, 0x8001));
    assert_eq!(vm.flags(), fl(FL_SF));
    // or ecx, [rax].
    let code = asm64(|a| a.or(ecx, dword_ptr(rax)));
    let vm = alu_run(&code, 0, 0, fl(0));
    assert_eq!(vm.flags(), fl(FL_ZF | FL_PF));
    // xor byte [rax], 0xff (80 /6).
    let code = asm64(|a| a.xor(byte_ptr(rax), 0xff));
    let vm = alu_run(&code, 0x0f, 0, fl(0));
    assert_eq!(vm.bus.log[1], Io::W(MMIO, 1, 0xf0));
    assert_eq!(vm.flags(), fl(FL_SF | FL_PF));
    // xor rcx, [rax].
    let code = asm64(|a| a.xor(rcx, qword_ptr(rax)));
    let vm = alu_run(&code, 0x1, 0x3, fl(0));
    assert_eq!(vm.get(RCX), 2);
    assert_eq!(vm.flags(), fl(0));
}

#[test]
fn test_reads_only_and_sets_flags() {
    // test dword [rax], imm32 (F7 /0).
    let code = asm64(|a| a.test(dword_ptr(rax), 0x100));
    assert_eq!(code[0], 0xf7);
    let vm = alu_run(&code, 0x100, 0, fl(FL_CF | FL_OF));
    assert_eq!(vm.bus.log, [Io::R(MMIO, 4)]);
    assert_eq!(vm.flags(), fl(FL_PF));
    // test byte [rax], imm8 (F6 /0).
    let code = asm64(|a| a.test(byte_ptr(rax), 0x80));
    let vm = alu_run(&code, 0x80, 0, fl(0));
    assert_eq!(vm.flags(), fl(FL_SF));
    // test [rax], ecx (85).
    let code = asm64(|a| a.test(dword_ptr(rax), ecx));
    let vm = alu_run(&code, 0, 0xffff_ffff, fl(0));
    assert_eq!(vm.bus.log, [Io::R(MMIO, 4)]);
    assert_eq!(vm.flags(), fl(FL_ZF | FL_PF));
}

#[test]
fn inc_dec_neg_not() {
    // inc keeps CF.
    let code = asm64(|a| a.inc(dword_ptr(rax)));
    let vm = alu_run(&code, 0xffff_ffff, 0, fl(FL_CF));
    assert_eq!(vm.bus.log[1], Io::W(MMIO, 4, 0));
    assert_eq!(vm.flags(), fl(FL_CF | FL_ZF | FL_AF | FL_PF));
    let code = asm64(|a| a.dec(byte_ptr(rax)));
    let vm = alu_run(&code, 0x80, 0, fl(0));
    assert_eq!(vm.bus.log[1], Io::W(MMIO, 1, 0x7f));
    assert_eq!(vm.flags(), fl(FL_OF | FL_AF));
    let code = asm64(|a| a.neg(dword_ptr(rax)));
    let vm = alu_run(&code, 1, 0, fl(0));
    assert_eq!(vm.bus.log[1], Io::W(MMIO, 4, 0xffff_ffff));
    assert_eq!(vm.flags(), fl(FL_CF | FL_SF | FL_AF | FL_PF));
    let code = asm64(|a| a.not(word_ptr(rax)));
    let vm = alu_run(&code, 0x00ff, 0, fl(FL_ZF));
    assert_eq!(vm.bus.log[1], Io::W(MMIO, 2, 0xff00));
    assert_eq!(vm.flags(), fl(FL_ZF));
}

// ---- XCHG --------------------------------------------------------------

#[test]
fn xchg_swaps_register_and_mmio() {
    let prep = |vm: &mut Vm| {
        vm.set(RAX, MMIO)
            .set(RCX, 0xffff_ffff_0000_5555)
            .set(RBX, MMIO + 8);
        vm.bus.poke(MMIO, 4, 0xaaaa);
        vm.bus.poke(MMIO + 8, 1, 0x11);
    };
    let code = asm64(|a| a.xchg(dword_ptr(rax), ecx));
    let (vm, _) = emu(Vm::long, prep, &code);
    assert_eq!(vm.bus.log, [Io::R(MMIO, 4), Io::W(MMIO, 4, 0x5555)]);
    assert_eq!(vm.get(RCX), 0xaaaa);
    // A high-byte register.
    let code = asm64(|a| a.xchg(byte_ptr(rbx), ah));
    let (vm, _) = emu(
        Vm::long,
        |vm| {
            prep(vm);
            vm.set(RAX, 0x4200);
        },
        &code,
    );
    assert_eq!(vm.bus.log, [Io::R(MMIO + 8, 1), Io::W(MMIO + 8, 1, 0x42)]);
    assert_eq!(vm.get(RAX), 0x1100);
}

// ---- STOS / MOVS / LODS ---------------------------------------------

#[test]
fn stos_single_and_rep() {
    let prep = |vm: &mut Vm| {
        vm.set(RDI, MMIO).set(RAX, 0x1234_5678).set(RCX, 3);
    };
    let code = asm64(|a| a.stosd());
    let (vm, _) = emu(Vm::long, prep, &code);
    assert_eq!(vm.bus.log, [Io::W(MMIO, 4, 0x1234_5678)]);
    assert_eq!((vm.get(RDI), vm.get(RCX)), (MMIO + 4, 3));
    assert_eq!(vm.get(RIP), next_rip(&code));

    let code = asm64(|a| a.rep().stosd());
    let (vm, r) = emu(Vm::long, prep, &code);
    assert_eq!(
        vm.bus.log,
        [
            Io::W(MMIO, 4, 0x1234_5678),
            Io::W(MMIO + 4, 4, 0x1234_5678),
            Io::W(MMIO + 8, 4, 0x1234_5678)
        ]
    );
    assert_eq!((vm.get(RDI), vm.get(RCX)), (MMIO + 12, 0));
    assert_eq!(vm.get(RIP), next_rip(&code));
    assert!(!r.rep_pending);

    // DF set: downwards.
    let code = asm64(|a| a.rep().stosw());
    let (vm, _) = emu(
        Vm::long,
        |vm| {
            prep(vm);
            vm.set(RCX, 2)
                .set(RDI, MMIO + 0x10)
                .set(RFLAGS, 0x2 | FL_DF);
        },
        &code,
    );
    assert_eq!(
        vm.bus.log,
        [Io::W(MMIO + 0x10, 2, 0x5678), Io::W(MMIO + 0xe, 2, 0x5678)]
    );
    assert_eq!(vm.get(RDI), MMIO + 0xc);

    // A zero count does nothing but advance RIP.
    let (vm, _) = emu(
        Vm::long,
        |vm| {
            prep(vm);
            vm.set(RCX, 0);
        },
        &code,
    );
    assert!(vm.bus.log.is_empty());
    assert_eq!(vm.get(RIP), next_rip(&code));
}

#[test]
fn rep_stos_is_batched_and_leaves_rip_while_count_remains() {
    let code = asm64(|a| a.rep().stosb());
    let (vm, r) = emu(
        Vm::long,
        |vm| {
            vm.set(RDI, MMIO).set(RAX, 0xab).set(RCX, 5000);
        },
        &code,
    );
    assert_eq!(vm.bus.log.len(), emulate::REP_BATCH_BYTES);
    assert_eq!(vm.bus.log[4095], Io::W(MMIO + 4095, 1, 0xab));
    assert_eq!(vm.get(RCX), 5000 - 4096);
    assert_eq!(vm.get(RDI), MMIO + 4096);
    assert_eq!(vm.get(RIP), CODE, "RIP stays on the REP instruction");
    assert!(r.rep_pending);
}

#[test]
fn rep_stos_with_32_bit_address_size_in_64_bit_mode() {
    // 67 F3 AB: rep stosd with EDI and ECX.
    let code = [0x67, 0xf3, 0xab];
    let (vm, _) = emu(
        Vm::long,
        |vm| {
            vm.set(RDI, 0xdead_beef_0000_0000 | MMIO)
                .set(RCX, 0xffff_ffff_0000_0002)
                .set(RAX, 7);
        },
        &code,
    );
    assert_eq!(vm.bus.log, [Io::W(MMIO, 4, 7), Io::W(MMIO + 4, 4, 7)]);
    // 32-bit register writes zero-extend.
    assert_eq!(vm.get(RDI), MMIO + 8);
    assert_eq!(vm.get(RCX), 0);
}

#[test]
fn movs_between_mmio_and_ram() {
    // MMIO → RAM.
    let code = asm64(|a| a.rep().movsd());
    let (vm, _) = emu(
        Vm::long,
        |vm| {
            vm.set(RSI, MMIO).set(RDI, 0x3000).set(RCX, 2);
            vm.bus.poke(MMIO, 8, 0x2222_2222_1111_1111);
        },
        &code,
    );
    assert_eq!(vm.bus.log, [Io::R(MMIO, 4), Io::R(MMIO + 4, 4)]);
    assert_eq!(vm.ram.r64(0x3000), 0x2222_2222_1111_1111);
    assert_eq!(
        (vm.get(RSI), vm.get(RDI), vm.get(RCX)),
        (MMIO + 8, 0x3008, 0)
    );

    // RAM → MMIO.
    let code = asm64(|a| a.rep().movsb());
    let (vm, _) = emu(
        Vm::long,
        |vm| {
            vm.set(RSI, 0x3000).set(RDI, MMIO + 0x100).set(RCX, 3);
            vm.ram.fill(0x3000, &[1, 2, 3]);
        },
        &code,
    );
    assert_eq!(
        vm.bus.log,
        [
            Io::W(MMIO + 0x100, 1, 1),
            Io::W(MMIO + 0x101, 1, 2),
            Io::W(MMIO + 0x102, 1, 3)
        ]
    );

    // MMIO → MMIO, with the source through the top-GiB mapping.
    let code = asm64(|a| a.movsq());
    let (vm, _) = emu(
        Vm::long,
        |vm| {
            vm.set(RSI, HIGH + 0x40).set(RDI, MMIO);
            vm.bus.poke(MMIO2 + 0x40, 8, 0x0123_4567_89ab_cdef);
        },
        &code,
    );
    assert_eq!(
        vm.bus.log,
        [
            Io::R(MMIO2 + 0x40, 8),
            Io::W(MMIO, 8, 0x0123_4567_89ab_cdef)
        ]
    );
    assert_eq!(vm.get(RSI), HIGH + 0x48);

    // A segment override on the source: fs: movsb (64 A4).
    let code = [0x64, 0xa4];
    let (vm, _) = emu(
        Vm::long,
        |vm| {
            vm.exit.vrs.vrs_sregs[FS].vsi_base = MMIO;
            vm.set(RSI, 0x20).set(RDI, 0x3000);
            vm.bus.poke(MMIO + 0x20, 1, 0x99);
        },
        &code,
    );
    assert_eq!(vm.bus.log, [Io::R(MMIO + 0x20, 1)]);
    assert_eq!(vm.ram.r32(0x3000) & 0xff, 0x99);
}

#[test]
fn rep_movsw_in_real_mode_wraps_si_at_16_bits() {
    let code = asm(16, |a| a.rep().movsw());
    let (vm, _) = emu(
        Vm::real,
        |vm| {
            seg(vm, DS, 0xa000, LOW_MMIO, 0xffff, 0x93);
            vm.set(RSI, 0x1234_fffe).set(RDI, 0x100).set(RCX, 2);
            vm.bus.poke(LOW_MMIO + 0xfffe, 2, 0xbbaa);
            vm.bus.poke(LOW_MMIO, 2, 0xddcc);
        },
        &code,
    );
    assert_eq!(
        vm.bus.log,
        [Io::R(LOW_MMIO + 0xfffe, 2), Io::R(LOW_MMIO, 2)]
    );
    assert_eq!(vm.ram.r32(0x100), 0xddcc_bbaa);
    assert_eq!(vm.get(RSI), 0x1234_0002);
    assert_eq!(vm.get(RDI), 0x104);
    assert_eq!(vm.get(RCX), 0);
    assert_eq!(vm.get(RIP), CODE + 2);
}

#[test]
fn lods_reads_into_the_accumulator() {
    let code = asm64(|a| a.lodsw());
    let (vm, _) = emu(
        Vm::long,
        |vm| {
            vm.set(RSI, MMIO).set(RAX, 0xffff_ffff_ffff_ffff);
            vm.bus.poke(MMIO, 2, 0x1234);
        },
        &code,
    );
    assert_eq!(vm.bus.log, [Io::R(MMIO, 2)]);
    assert_eq!(vm.get(RAX), 0xffff_ffff_ffff_1234);
    assert_eq!(vm.get(RSI), MMIO + 2);
}

// ---- PUSH / POP -----------------------------------------------------

#[test]
fn push_and_pop_with_mmio_operands() {
    let prep = |vm: &mut Vm| {
        vm.set(RAX, MMIO + 0x10).set(RSP, 0x8000);
        vm.bus.poke(MMIO + 0x10, 8, 0x1122_3344_5566_7788);
        vm.ram.w64(0x8000, 0x0102_0304_0506_0708);
    };
    let code = asm64(|a| a.push(qword_ptr(rax)));
    let (vm, _) = emu(Vm::long, prep, &code);
    assert_eq!(vm.bus.log, [Io::R(MMIO + 0x10, 8)]);
    assert_eq!(vm.get(RSP), 0x7ff8);
    assert_eq!(vm.ram.r64(0x7ff8), 0x1122_3344_5566_7788);

    let code = asm64(|a| a.pop(qword_ptr(rax)));
    let (vm, _) = emu(Vm::long, prep, &code);
    assert_eq!(vm.bus.log, [Io::W(MMIO + 0x10, 8, 0x0102_0304_0506_0708)]);
    assert_eq!(vm.get(RSP), 0x8008);

    // 66: 16-bit push in 64-bit mode.
    let code = asm64(|a| a.push(word_ptr(rax)));
    let (vm, _) = emu(Vm::long, prep, &code);
    assert_eq!(vm.bus.log, [Io::R(MMIO + 0x10, 2)]);
    assert_eq!(vm.get(RSP), 0x7ffe);
}

#[test]
fn push_and_pop_in_32_and_16_bit_modes_use_ss() {
    // 32-bit: SS base applies, ESP-relative POP destination uses the
    // incremented ESP.
    let prep = |vm: &mut Vm| {
        vm.exit.vrs.vrs_sregs[SS].vsi_base = 0x1_0000;
        vm.set(RAX, MMIO).set(RSP, 0x100);
        vm.bus.poke(MMIO, 4, 0xfeed_face);
        vm.ram.w32(0x1_0100, 0xc0de_c0de);
    };
    let code = asm(32, |a| a.push(dword_ptr(eax)));
    let (vm, _) = emu(Vm::prot32, prep, &code);
    assert_eq!(vm.ram.r32(0x1_00fc), 0xfeed_face);
    assert_eq!(vm.get(RSP), 0xfc);
    // pop dword [esp + d] with d chosen so that SS.base + ESP+4 + d is
    // MMIO+0x10.
    let d = (MMIO + 0x10).wrapping_sub(0x1_0104) as u32 as i32;
    let code = asm(32, |a| a.pop(dword_ptr(esp + d)));
    let (vm, _) = emu(Vm::prot32, prep, &code);
    assert_eq!(vm.bus.log, [Io::W(MMIO + 0x10, 4, 0xc0de_c0de)]);
    assert_eq!(vm.get(RSP), 0x104);

    // 16-bit stack (SS.B clear): SP wraps, upper RSP bits kept.
    let code = asm(16, |a| a.push(word_ptr(bx)));
    let (vm, _) = emu(
        Vm::prot16,
        |vm| {
            seg(vm, DS, 0x10, MMIO, 0xffff, 0x93);
            seg(vm, SS, 0x18, 0x2_0000, 0xffff, 0x93);
            vm.set(RBX, 0x8).set(RSP, 0xabcd_0000);
            vm.bus.poke(MMIO + 8, 2, 0x4321);
        },
        &code,
    );
    assert_eq!(vm.bus.log, [Io::R(MMIO + 8, 2)]);
    assert_eq!(vm.get(RSP), 0xabcd_fffe);
    assert_eq!(vm.ram.r32(0x2_fffe) & 0xffff, 0x4321);
}

// ---- addressing ------------------------------------------------------

#[test]
fn segment_overrides_and_bases() {
    // 64-bit: FS has a base, DS does not.
    let code = asm64(|a| a.mov(ecx, dword_ptr(rax).fs()));
    let (vm, _) = emu(
        Vm::long,
        |vm| {
            vm.exit.vrs.vrs_sregs[FS].vsi_base = MMIO;
            vm.set(RAX, 0x30);
        },
        &code,
    );
    assert_eq!(vm.bus.log, [Io::R(MMIO + 0x30, 4)]);
    let code = asm64(|a| a.mov(ecx, dword_ptr(rax)));
    let (vm, _) = emu(
        Vm::long,
        |vm| {
            vm.exit.vrs.vrs_sregs[DS].vsi_base = 0x1000;
            vm.set(RAX, MMIO);
        },
        &code,
    );
    assert_eq!(vm.bus.log, [Io::R(MMIO, 4)]);

    // 32-bit: ES override, and a DS base that wraps at 4 GiB.
    let code = asm(32, |a| a.mov(ecx, dword_ptr(eax).es()));
    let (vm, _) = emu(
        Vm::prot32,
        |vm| {
            vm.exit.vrs.vrs_sregs[ES].vsi_base = MMIO;
            vm.set(RAX, 0x44);
        },
        &code,
    );
    assert_eq!(vm.bus.log, [Io::R(MMIO + 0x44, 4)]);
    let code = asm(32, |a| a.mov(dword_ptr(eax), ecx));
    let (vm, _) = emu(
        Vm::prot32,
        |vm| {
            vm.exit.vrs.vrs_sregs[DS].vsi_base = 0xffff_f000;
            vm.set(RAX, MMIO + 0x1040).set(RCX, 9);
        },
        &code,
    );
    assert_eq!(vm.bus.log, [Io::W(MMIO + 0x40, 4, 9)]);

    // 32-bit code with a 67 prefix: [bx+si] wraps at 64 KiB.
    let code = asm(32, |a| a.mov(ecx, dword_ptr(bx + si)));
    assert_eq!(code[0], 0x67);
    let (vm, _) = emu(
        Vm::prot32,
        |vm| {
            vm.exit.vrs.vrs_sregs[DS].vsi_base = MMIO;
            vm.set(RBX, 0xfff0).set(RSI, 0x20);
        },
        &code,
    );
    assert_eq!(vm.bus.log, [Io::R(MMIO + 0x10, 4)]);

    // 16-bit protected mode: [bp+di+disp] defaults to SS.
    let code = asm(16, |a| a.mov(word_ptr(bp + di + 4), ax));
    let (vm, _) = emu(
        Vm::prot16,
        |vm| {
            vm.exit.vrs.vrs_sregs[SS].vsi_base = MMIO;
            vm.set(RBP, 0x10).set(RDI, 0x2).set(RAX, 0xbeef);
        },
        &code,
    );
    assert_eq!(vm.bus.log, [Io::W(MMIO + 0x16, 2, 0xbeef)]);
    assert_eq!(vm.get(RIP), next_rip(&code));
}

#[test]
fn rip_relative_operand() {
    // mov ecx, [rip + disp] reaching the top-GiB mapping of MMIO2.
    let target = HIGH + (MMIO - MMIO2) + 0x40;
    let instr = Instruction::with2(
        Code::Mov_r32_rm32,
        Register::ECX,
        MemoryOperand::with_base_displ(Register::RIP, target as i64),
    )
    .unwrap();
    let code = asm64(|a| a.add_instruction(instr));
    assert_eq!(&code[..2], &[0x8b, 0x0d]);
    let (vm, _) = emu(Vm::long, |vm| vm.bus.poke(MMIO + 0x40, 4, 0x77), &code);
    assert_eq!(vm.bus.log, [Io::R(MMIO + 0x40, 4)]);
    assert_eq!(vm.get(RCX), 0x77);
}

// ---- modes -----------------------------------------------------------

#[test]
fn real_mode_with_segment_bases() {
    // CS:IP = 0x0100:0x0000 → linear 0x1000; DS = 0xa000.
    let code = asm(16, |a| a.mov(byte_ptr(bx + si), al));
    let prep = |vm: &mut Vm| {
        seg(vm, CS, 0x100, 0x1000, 0xffff, 0x9b);
        seg(vm, DS, 0xa000, LOW_MMIO, 0xffff, 0x93);
        vm.set(RIP, 0).set(RBX, 0x10).set(RSI, 0x5).set(RAX, 0x42);
    };
    let (vm, _) = emu(Vm::real, prep, &code);
    assert_eq!(vm.bus.log, [Io::W(LOW_MMIO + 0x15, 1, 0x42)]);
    assert_eq!(vm.get(RIP), code.len() as u64);
    // 66: a 32-bit store in real mode.
    let code = asm(16, |a| a.mov(dword_ptr(di), 0x1234_5678));
    assert_eq!(code[0], 0x66);
    let (vm, _) = emu(
        Vm::real,
        |vm| {
            prep(vm);
            vm.set(RDI, 0x20);
        },
        &code,
    );
    assert_eq!(vm.bus.log, [Io::W(LOW_MMIO + 0x20, 4, 0x1234_5678)]);
    // IP wraps at 64 KiB.
    let code = asm(16, |a| a.mov(byte_ptr(bx), al));
    let (vm, _) = emu(
        Vm::real,
        |vm| {
            seg(vm, CS, 0x100, 0x1000, 0xffff, 0x9b);
            seg(vm, DS, 0xa000, LOW_MMIO, 0xffff, 0x93);
            vm.set(RIP, 0x10000 - code.len() as u64);
        },
        &code,
    );
    assert_eq!(vm.get(RIP), 0);
}

#[test]
fn v8086_mode_decodes_16_bit() {
    let code = asm(16, |a| a.mov(ax, word_ptr(bx)));
    let (vm, _) = emu(
        Vm::prot32,
        |vm| {
            vm.set(RFLAGS, 0x2 | FL_VM);
            seg(vm, CS, 0x100, 0x1000, 0xffff, 0xf3);
            seg(vm, DS, 0xa000, LOW_MMIO, 0xffff, 0xf3);
            vm.set(RIP, 0).set(RBX, 0x30);
            vm.exit.cpl = 3;
            vm.bus.poke(LOW_MMIO + 0x30, 2, 0x5150);
        },
        &code,
    );
    assert_eq!(vm.get(RAX), 0x5150);
}

#[test]
fn protected_16_bit_mode_with_operand_size_prefix() {
    let code = asm(16, |a| a.mov(dword_ptr(bx), eax));
    assert_eq!(code[0], 0x66);
    let (vm, _) = emu(
        Vm::prot16,
        |vm| {
            seg(vm, DS, 0x10, MMIO, 0xffff, 0x93);
            vm.set(RBX, 0x4).set(RAX, 0xa1b2_c3d4);
        },
        &code,
    );
    assert_eq!(vm.bus.log, [Io::W(MMIO + 4, 4, 0xa1b2_c3d4)]);
}

#[test]
fn protected_32_bit_mode_with_paging() {
    let code = asm(32, |a| a.mov(dword_ptr(eax + 0x300), ecx));
    let prep = |vm: &mut Vm| {
        vm.set(RAX, MMIO).set(RCX, 0x5a5a_5a5a);
    };
    let (vm, _) = emu(Vm::prot32_paged, prep, &code);
    assert_eq!(vm.bus.log, [Io::W(MMIO + 0x300, 4, 0x5a5a_5a5a)]);

    // PAE: 3 levels, with the MMIO page mapped at another linear address.
    let pae = || {
        let mut vm = Vm::prot32();
        let root = vm.ram.alloc_table();
        vm.ram.map4k_64(root, 3, CODE, CODE, PG_RW);
        vm.ram.map4k_64(root, 3, 0x8000_0000, MMIO, PG_RW);
        let r = &mut vm.exit.vrs;
        r.vrs_crs[VCPU_REGS_CR0 as usize] |= CR0_PG;
        r.vrs_crs[VCPU_REGS_CR3 as usize] = root;
        r.vrs_crs[VCPU_REGS_CR4 as usize] = CR4_PAE;
        vm
    };
    let (vm, _) = emu(
        pae,
        |vm| {
            vm.set(RAX, 0x8000_0000 - 0x300).set(RCX, 1);
        },
        &code,
    );
    assert_eq!(vm.bus.log, [Io::W(MMIO, 4, 1)]);
}

#[test]
fn compatibility_mode_32_and_16_bit() {
    let code = asm(32, |a| a.mov(dword_ptr(eax), ecx));
    let (vm, _) = emu(
        Vm::compat,
        |vm| {
            vm.set(RAX, 0xffff_ffff_0000_0000 | MMIO)
                .set(RCX, 0xffff_ffff_1234_5678);
        },
        &code,
    );
    assert_eq!(vm.bus.log, [Io::W(MMIO, 4, 0x1234_5678)]);
    assert_eq!(vm.get(RIP), next_rip(&code));

    // 16-bit compatibility mode: CS.L and CS.D clear.
    let code = asm(16, |a| a.mov(word_ptr(bx), ax));
    let (vm, _) = emu(
        Vm::compat,
        |vm| {
            vm.exit.vrs.vrs_sregs[CS].vsi_ar = 0x009b;
            vm.exit.vrs.vrs_sregs[DS].vsi_base = MMIO;
            vm.set(RBX, 0x6).set(RAX, 0x1111);
        },
        &code,
    );
    assert_eq!(vm.bus.log, [Io::W(MMIO + 6, 2, 0x1111)]);
}

// ---- instruction fetch ----------------------------------------------

/// A long-mode VM with code at a linear address whose two pages map to
/// non-adjacent GPAs: 0x7000_0000_0000 → 0x5000, next page → 0x9000.
fn split_code_vm() -> Vm {
    let vm = Vm::long();
    let root = vm.exit.vrs.vrs_crs[VCPU_REGS_CR3 as usize];
    vm.ram.map4k_64(root, 4, 0x7000_0000_0000, 0x5000, PG_RW);
    vm.ram.map4k_64(root, 4, 0x7000_0000_1000, 0x9000, PG_RW);
    vm
}

#[test]
fn intel_fetch_crosses_a_page_boundary() {
    let code = asm64(|a| a.mov(dword_ptr(rax + 0x100), 0x0bad_cafe));
    assert!(code.len() > 4);
    let mut vm = split_code_vm();
    let rip = 0x7000_0000_1000 - 3;
    vm.set(RIP, rip).set(RAX, MMIO);
    vm.ram.fill(0x5ffd, &code[..3]);
    vm.ram.fill(0x9000, &code[3..]);
    vm.report(&code, Flavour::Intel);
    emulate(&mut vm.exit, &vm.ram, &mut vm.bus).unwrap();
    assert_eq!(vm.bus.log, [Io::W(MMIO + 0x100, 4, 0x0bad_cafe)]);
    assert_eq!(vm.get(RIP), rip + code.len() as u64);
}

#[test]
fn fetch_without_a_length_stops_at_an_unmapped_page() {
    // No VEE_LEN_VALID: a 15-byte window, of which the second page is not
    // mapped; the instruction fits in what was read.
    let code = asm64(|a| a.mov(dword_ptr(rax), ecx));
    let mut vm = Vm::long();
    let root = vm.exit.vrs.vrs_crs[VCPU_REGS_CR3 as usize];
    vm.ram.map4k_64(root, 4, 0x6000_0000_0000, 0x5000, PG_RW);
    let rip = 0x6000_0000_1000 - code.len() as u64;
    vm.set(RIP, rip).set(RAX, MMIO).set(RCX, 3);
    vm.ram.fill(0x6000 - code.len() as u64, &code);
    vm.exit.vee_mut().vee_insn_info = 0;
    emulate(&mut vm.exit, &vm.ram, &mut vm.bus).unwrap();
    assert_eq!(vm.bus.log, [Io::W(MMIO, 4, 3)]);
    assert_eq!(vm.get(RIP), 0x6000_0000_1000);
}

#[test]
fn fetch_fault_and_bad_length_are_errors() {
    let mut vm = Vm::long();
    vm.set(RIP, 0x5000_0000_0000);
    vm.report(&[0x89, 0x08], Flavour::Intel);
    let e = emulate(&mut vm.exit, &vm.ram, &mut vm.bus).unwrap_err();
    assert!(
        matches!(
            e,
            MmioError::Fetch {
                gva: 0x5000_0000_0000,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.errno(), libc::EFAULT);

    for len in [0, 16] {
        let mut vm = Vm::long();
        vm.exit.vee_mut().vee_insn_info = VEE_LEN_VALID as u8;
        vm.exit.vee_mut().vee_insn_len = len;
        let e = emulate(&mut vm.exit, &vm.ram, &mut vm.bus).unwrap_err();
        assert_eq!(e, MmioError::InsnLength { rip: CODE, len });
    }
}

// ---- errors ------------------------------------------------------------

#[test]
fn unsupported_instruction_names_bytes_and_rip() {
    let code = asm64(|a| a.movdqa(xmm0, xmmword_ptr(rax)));
    let e = emu_err(
        Vm::long,
        |vm| {
            vm.set(RAX, MMIO);
        },
        &code,
    );
    let msg = e.to_string();
    assert!(matches!(e, MmioError::Unsupported { .. }));
    assert!(msg.contains("66 0f 6f 00"), "{msg}");
    assert!(msg.contains("rip=0x1000"), "{msg}");
    assert_eq!(e.rip(), CODE);

    // No memory operand at all.
    let code = asm64(|a| a.mov(eax, ebx));
    let e = emu_err(Vm::long, |_| {}, &code);
    assert!(e.to_string().contains("89 d8"), "{e}");

    let code = asm64(|a| a.cmpxchg(dword_ptr(rax), ecx));
    let e = emu_err(
        Vm::long,
        |vm| {
            vm.set(RAX, MMIO);
        },
        &code,
    );
    assert!(e.to_string().contains("Cmpxchg"), "{e}");
}

#[test]
fn undecodable_bytes_are_named() {
    // 06 (PUSH ES) does not exist in 64-bit mode.
    let e = emu_err(Vm::long, |_| {}, &[0x06]);
    assert!(matches!(e, MmioError::Undecodable { .. }));
    let msg = e.to_string();
    assert!(
        msg.starts_with("undecodable instruction at rip=0x1000: bytes 06"),
        "{msg}"
    );
}

#[test]
fn unmapped_gpa_names_rip_gva_and_gpa() {
    let code = asm64(|a| a.mov(ecx, dword_ptr(rax)));
    let gva = HIGH + 0x1000_0000; // → GPA 0xd000_0000: no RAM, no device
    let e = emu_err(
        Vm::long,
        |vm| {
            vm.set(RAX, gva);
        },
        &code,
    );
    assert_eq!(
        e,
        MmioError::InvalidAddress {
            rip: CODE,
            gva,
            gpa: 0xd000_0000
        }
    );
    assert_eq!(
        e.to_string(),
        "invalid MMIO address: rip=0x1000 gva=0xffffffffd0000000 gpa=0xd0000000"
    );
}

#[test]
fn operand_page_fault_is_an_error() {
    let code = asm64(|a| a.mov(dword_ptr(rax), ecx));
    let e = emu_err(
        Vm::long,
        |vm| {
            vm.set(RAX, 0x7f00_0000_0000);
        },
        &code,
    );
    assert!(
        matches!(
            e,
            MmioError::PageFault {
                gva: 0x7f00_0000_0000,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn an_access_crossing_a_page_is_split() {
    // A 4-byte store whose linear range spans two pages mapped apart.
    let mut vm = Vm::long();
    let root = vm.exit.vrs.vrs_crs[VCPU_REGS_CR3 as usize];
    vm.ram.map4k_64(root, 4, 0x5000_0000_0000, MMIO, PG_RW);
    vm.ram.map4k_64(root, 4, 0x5000_0000_1000, MMIO2, PG_RW);
    let code = asm64(|a| a.mov(dword_ptr(rax), ecx));
    vm.set(RAX, 0x5000_0000_0ffe).set(RCX, 0x4433_2211);
    vm.run(&code, Flavour::Intel).unwrap();
    assert_eq!(
        vm.bus.log,
        [
            Io::W(MMIO + 0xffe, 1, 0x11),
            Io::W(MMIO + 0xfff, 1, 0x22),
            Io::W(MMIO2, 1, 0x33),
            Io::W(MMIO2 + 1, 1, 0x44)
        ]
    );
}

#[test]
fn user_mode_access_to_a_supervisor_page_is_refused() {
    let code = asm64(|a| a.mov(dword_ptr(rax), ecx));
    let mut vm = Vm::long();
    let root = vm.exit.vrs.vrs_crs[VCPU_REGS_CR3 as usize];
    // User code page; the MMIO page is supervisor-only.
    vm.ram
        .map4k_64(root, 4, 0x4000_0000_0000, 0x5000, PG_RW | PG_US);
    vm.ram.map4k_64(root, 4, 0x4000_0000_1000, MMIO, PG_RW);
    vm.exit.cpl = 3;
    vm.set(RIP, 0x4000_0000_0000).set(RAX, 0x4000_0000_1000);
    let e = vm.run(&code, Flavour::Intel).unwrap_err();
    assert!(
        matches!(
            e,
            MmioError::PageFault {
                error: TranslateError::Supervisor { .. },
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn works_over_guest_memory_and_the_mmio_bus() {
    use crate::devices::bus::{MmioBus, MmioDevice};
    use std::sync::{Arc, Mutex};
    struct Reg(u64, Vec<(u64, u8, u64)>);
    impl MmioDevice for Reg {
        fn mmio_read(&mut self, _offset: u64, _size: u8) -> u64 {
            self.0
        }
        fn mmio_write(&mut self, offset: u64, size: u8, value: u64) {
            self.1.push((offset, size, value));
        }
    }
    let dev = Arc::new(Mutex::new(Reg(0x77, Vec::new())));
    let mut bus = MmioBus::new();
    bus.register(MMIO, 0x1000, dev.clone()).unwrap();
    let mem = vmm_sys::GuestMemory::anonymous(&[(0, 0x10_0000)]).unwrap();
    let code = asm(32, |a| a.mov(dword_ptr(eax + 0x20), ecx));
    assert!(mem.write_phys(CODE, &code));
    let mut vm = Vm::prot32();
    vm.set(RAX, MMIO).set(RCX, 0xabcd);
    vm.report(&code, Flavour::Intel);
    emulate(&mut vm.exit, &mem, &mut bus).unwrap();
    assert_eq!(dev.lock().unwrap().1, [(0x20, 4, 0xabcd)]);
    assert_eq!(vm.get(RIP), next_rip(&code));
}
