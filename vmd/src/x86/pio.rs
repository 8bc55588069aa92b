//! String port I/O: INS and OUTS, with or without REP.
//!
//! OpenBSD's vmd refuses string I/O exits and ends the VM, but SeaBIOS
//! reads fw_cfg (port 0x511) with `rep insb` before it knows fw_cfg has
//! DMA, so this vmd emulates them.  The vmm(4) backend reports such an exit
//! as an ordinary I/O exit with `vei_string` set (and `vei_rep` for REP),
//! `vei_size` the element size, `vei_port`, `vei_insn_len`, and `vrs` as
//! it was before the instruction (RIP on it).  [`emulate_string_io`]
//! decodes the instruction at CS:RIP, moves the elements between the port
//! and guest memory, and leaves the new RDI/RSI/RCX and RIP in `exit.vrs`.
//! vmm(4) reloads only RAX and RIP from `vrs` after an I/O exit, so the
//! caller writes the GPRs back (`VMM_IOC_WRITEREGS`, `VM_RWREGS_GPRS`).
//!
//! As the CPU does: INS stores at ES:rDI (a segment override does not
//! apply), OUTS loads from DS:rSI (override allowed); the address size is
//! the mode's, switched by a 67 prefix, and masks rDI, rSI and rCX; DF
//! decides the direction; F3 and F2 both repeat.  REP is batched as the
//! MMIO emulator does: up to [`REP_BATCH_BYTES`] bytes' worth of elements
//! per exit; with count left RIP stays on the instruction (and
//! [`Emulated::rep_pending`] is set) so the guest executes it again and can
//! take interrupts in between.  A REP with a zero count only advances RIP.
//!
//! Memory goes through the guest's page tables ([`translate_gva`]): a write
//! access for INS (setting A and D), a read for OUTS.  Every byte of an
//! element is translated, and for INS checked to be RAM, before the port is
//! touched, so a fault never swallows a port read; an element that crosses
//! a page is split at the page boundary.  The memory side must be RAM
//! (INS/OUTS to or from MMIO ends the VM, [`MmioError::InvalidAddress`]).
//! No #GP/#PF is injected and segment limits are not checked; every
//! failure ends the VM.
use super::emulate::{fetch_insn, linear, wrap_linear, Emulated, MmioError, REP_BATCH_BYTES};
use super::mmu::{translate_gva, Access};
use super::regs::{get_gpr, mask, set_gpr, Mode, FL_DF};
use super::GuestRam;
use iced_x86::{Code, Decoder, DecoderOptions, Instruction, OpKind, Register};
use vmm_sys::abi::{
    vm_exit, VCPU_REGS_RCX, VCPU_REGS_RDI, VCPU_REGS_RDX, VCPU_REGS_RFLAGS, VCPU_REGS_RIP,
    VCPU_REGS_RSI, VEI_DIR_IN, VEI_DIR_OUT,
};

/// The I/O port map as the string I/O emulator sees it.  `size` is 1, 2 or
/// 4 bytes; values are in the low `size` bytes.
pub trait PortAccess {
    /// A read of `size` bytes from `port`.
    fn port_read(&mut self, port: u16, size: u8) -> u32;
    /// A write of the low `size` bytes of `value` to `port`.
    fn port_write(&mut self, port: u16, size: u8, value: u32);
}

impl PortAccess for crate::devices::bus::PioBus {
    fn port_read(&mut self, port: u16, size: u8) -> u32 {
        self.read(port, size)
    }
    fn port_write(&mut self, port: u16, size: u8, value: u32) {
        self.write(port, size, value)
    }
}

type Result<T> = std::result::Result<T, MmioError>;

/// Emulates the INS or OUTS behind a string I/O exit (`vei_string` set).
///
/// The instruction is fetched at CS:RIP through the guest page tables,
/// exactly `vei_insn_len` bytes (up to 15 when it is 0), and must be an
/// INS/OUTS whose element size is `vei_size`, whose direction is
/// `vei_dir`, whose decoded length is `vei_insn_len` (when given) and whose
/// DX is `vei_port`; anything else is [`MmioError::StringIo`].  On success
/// `exit.vrs` holds the new RDI/RSI/RCX and RIP (see the module comment
/// for batching); on error it may be partly updated (the elements already
/// moved) and the VM is expected to end.
pub fn emulate_string_io<M, P>(exit: &mut vm_exit, mem: &M, ports: &mut P) -> Result<Emulated>
where
    M: GuestRam + ?Sized,
    P: PortAccess + ?Sized,
{
    let vei = *exit.vei();
    let mode = Mode::of(&exit.vrs);
    let cpl = (exit.cpl & 3) as u8;
    let mut rip = exit.vrs.vrs_gprs[VCPU_REGS_RIP as usize];
    if mode != Mode::Long {
        rip &= 0xffff_ffff;
    }

    let (len, len_valid) = match vei.vei_insn_len {
        0 => (15, false),
        n @ 1..=15 => (n as usize, true),
        n => return Err(MmioError::InsnLength { rip, len: n }),
    };
    let window = fetch_insn(&exit.vrs, mem, mode, cpl, rip, len, len_valid)?;
    let bitness = mode.bitness();
    let instr = Decoder::with_ip(bitness, &window, rip, DecoderOptions::NONE).decode();
    if instr.is_invalid() {
        return Err(MmioError::Undecodable { rip, bytes: window });
    }
    let bytes = window[..instr.len()].to_vec();
    let fail = |what: String| MmioError::StringIo {
        rip,
        bytes: bytes.clone(),
        what,
    };

    let (is_in, size) = match instr.code() {
        Code::Insb_m8_DX => (true, 1),
        Code::Insw_m16_DX => (true, 2),
        Code::Insd_m32_DX => (true, 4),
        Code::Outsb_DX_m8 => (false, 1),
        Code::Outsw_DX_m16 => (false, 2),
        Code::Outsd_DX_m32 => (false, 4),
        code => return Err(fail(format!("{code:?} is not INS or OUTS"))),
    };
    let name = format!("{:?}", instr.mnemonic()).to_uppercase();
    if len_valid && instr.len() != len {
        return Err(fail(format!(
            "{name} is {} bytes long but the exit reports {len}",
            instr.len()
        )));
    }
    if usize::from(vei.vei_size) != size {
        return Err(fail(format!(
            "{name} moves {size}-byte elements but the exit reports {} bytes",
            vei.vei_size
        )));
    }
    let dir = if is_in { VEI_DIR_IN } else { VEI_DIR_OUT };
    if u32::from(vei.vei_dir) != dir {
        return Err(fail(format!(
            "{name} but the exit reports direction {}",
            vei.vei_dir
        )));
    }
    let dx = get_gpr(&exit.vrs, VCPU_REGS_RDX as usize, 2) as u16;
    if dx != vei.vei_port {
        return Err(fail(format!(
            "{name} with DX=0x{dx:x} but the exit reports port 0x{:x}",
            vei.vei_port
        )));
    }

    let mut io = StringIo {
        exit,
        mem,
        ports,
        mode,
        cpl,
        rip,
        port: vei.vei_port,
        bytes: &bytes,
        tlb: Vec::new(),
    };
    let rep_pending = io.run(&instr, is_in, size)?;
    if !rep_pending {
        let next = rip.wrapping_add(instr.len() as u64);
        exit.vrs.vrs_gprs[VCPU_REGS_RIP as usize] = next & mask(bitness as usize / 8);
    }
    Ok(Emulated {
        insn_len: instr.len(),
        rep_pending,
        sregs_changed: false,
    })
}

/// One linear page's translation, kept for the rest of the call.
#[derive(Clone, Copy)]
struct TlbEntry {
    page: u64,
    gpa_page: u64,
}

/// A piece of an element within one page: (linear, physical, length).
type Piece = (u64, u64, usize);

struct StringIo<'a, M: ?Sized, P: ?Sized> {
    exit: &'a mut vm_exit,
    mem: &'a M,
    ports: &'a mut P,
    mode: Mode,
    cpl: u8,
    rip: u64,
    port: u16,
    bytes: &'a [u8],
    /// Translations done so far; all for the one access kind of the call.
    tlb: Vec<TlbEntry>,
}

impl<M: GuestRam + ?Sized, P: PortAccess + ?Sized> StringIo<'_, M, P> {
    /// Moves the elements; returns whether a REP has count left.
    fn run(&mut self, instr: &Instruction, is_in: bool, size: usize) -> Result<bool> {
        let mem_op = if is_in { 0 } else { 1 };
        let asz = match instr.op_kind(mem_op) {
            OpKind::MemoryESDI | OpKind::MemorySegSI => 2,
            OpKind::MemoryESEDI | OpKind::MemorySegESI => 4,
            _ => 8,
        };
        let (rcx, idx, seg) = if is_in {
            (VCPU_REGS_RCX as usize, VCPU_REGS_RDI as usize, Register::ES)
        } else {
            (
                VCPU_REGS_RCX as usize,
                VCPU_REGS_RSI as usize,
                instr.memory_segment(),
            )
        };
        let rep = instr.has_rep_prefix() || instr.has_repne_prefix();
        let mut count = if rep {
            get_gpr(&self.exit.vrs, rcx, asz)
        } else {
            1
        };
        let step = if self.exit.vrs.vrs_gprs[VCPU_REGS_RFLAGS as usize] & FL_DF != 0 {
            (size as u64).wrapping_neg()
        } else {
            size as u64
        };
        let batch = REP_BATCH_BYTES / size;
        let access = if is_in { Access::Write } else { Access::Read };
        let mut done = 0;
        while count > 0 && done < batch {
            let off = get_gpr(&self.exit.vrs, idx, asz);
            let lin = linear(&self.exit.vrs, self.mode, seg, off);
            let pieces = self.pieces(lin, size, access)?;
            if is_in {
                // Only RAM is written; check every piece before the port
                // read, which may have side effects.
                let mut probe = [0u8; 4];
                for &(gva, gpa, n) in pieces.iter().flatten() {
                    self.ram_read(gva, gpa, &mut probe[..n])?;
                }
                let v = self.ports.port_read(self.port, size as u8) & mask(size) as u32;
                let le = v.to_le_bytes();
                let mut at = 0;
                for &(gva, gpa, n) in pieces.iter().flatten() {
                    if !self.mem.write_phys(gpa, &le[at..at + n]) {
                        return Err(self.invalid(gva, gpa));
                    }
                    at += n;
                }
            } else {
                let mut le = [0u8; 4];
                let mut at = 0;
                for &(gva, gpa, n) in pieces.iter().flatten() {
                    self.ram_read(gva, gpa, &mut le[at..at + n])?;
                    at += n;
                }
                self.ports
                    .port_write(self.port, size as u8, u32::from_le_bytes(le));
            }
            set_gpr(
                &mut self.exit.vrs,
                self.mode,
                idx,
                asz,
                off.wrapping_add(step) & mask(asz),
            );
            done += 1;
            count -= 1;
            if rep {
                set_gpr(&mut self.exit.vrs, self.mode, rcx, asz, count);
            }
        }
        Ok(rep && count > 0)
    }

    fn invalid(&self, gva: u64, gpa: u64) -> MmioError {
        MmioError::InvalidAddress {
            rip: self.rip,
            gva,
            gpa,
        }
    }

    fn ram_read(&self, gva: u64, gpa: u64, buf: &mut [u8]) -> Result<()> {
        if self.mem.read_phys(gpa, buf) {
            Ok(())
        } else {
            Err(self.invalid(gva, gpa))
        }
    }

    /// Translates the `size` bytes at `lin`: one piece, or two when they
    /// cross a page boundary.
    fn pieces(&mut self, lin: u64, size: usize, access: Access) -> Result<[Option<Piece>; 2]> {
        let first = size.min(0x1000 - (lin & 0xfff) as usize);
        let a = (lin, self.translate(lin, access)?, first);
        if first == size {
            return Ok([Some(a), None]);
        }
        let lin2 = wrap_linear(self.mode, lin.wrapping_add(first as u64));
        let b = (lin2, self.translate(lin2, access)?, size - first);
        Ok([Some(a), Some(b)])
    }

    fn translate(&mut self, lin: u64, access: Access) -> Result<u64> {
        let page = lin & !0xfff;
        if let Some(e) = self.tlb.iter().find(|e| e.page == page) {
            return Ok(e.gpa_page | (lin & 0xfff));
        }
        let gpa =
            translate_gva(&self.exit.vrs, self.mem, lin, access, self.cpl).map_err(|error| {
                MmioError::PageFault {
                    rip: self.rip,
                    bytes: self.bytes.to_vec(),
                    gva: lin,
                    error,
                }
            })?;
        self.tlb.push(TlbEntry {
            page,
            gpa_page: gpa & !0xfff,
        });
        Ok(gpa)
    }
}

#[cfg(test)]
mod tests {
    //! Single INS/OUTS instructions (assembled with iced-x86's code_asm,
    //! raw bytes where it has no form for the prefixes wanted) run against
    //! a register file set up for each CPU mode, mock RAM with and without
    //! page tables, and a mock port device that logs every access.
    use super::*;
    use crate::x86::mmu::tests::MockRam;
    use crate::x86::mmu::{
        TranslateError, CR0_PE, CR0_PG, CR0_WP, CR4_PAE, EFER_LMA, EFER_LME, PG_A, PG_D, PG_RW,
    };
    use iced_x86::code_asm::*;
    use iced_x86::RepPrefixKind;
    use std::collections::VecDeque;
    use vmm_sys::abi::*;

    const RCX: usize = VCPU_REGS_RCX as usize;
    const RDX: usize = VCPU_REGS_RDX as usize;
    const RSI: usize = VCPU_REGS_RSI as usize;
    const RDI: usize = VCPU_REGS_RDI as usize;
    const RIP: usize = VCPU_REGS_RIP as usize;
    const RFLAGS: usize = VCPU_REGS_RFLAGS as usize;
    const ES: usize = VCPU_REGS_ES as usize;
    const CS: usize = VCPU_REGS_CS as usize;
    const DS: usize = VCPU_REGS_DS as usize;
    const FS: usize = VCPU_REGS_FS as usize;
    const CODE: u64 = 0x1000;
    const FW_CFG_DATA: u16 = 0x511;
    const COM1: u16 = 0x3f8;
    const IN: u8 = VEI_DIR_IN as u8;
    const OUT: u8 = VEI_DIR_OUT as u8;

    #[derive(Clone, Debug, PartialEq, Eq)]
    enum PortIo {
        R(u16, u8),
        W(u16, u8, u32),
    }

    /// A port device: reads return `input` in order (all-ones once it is
    /// empty); every access is logged.
    #[derive(Default)]
    struct MockPorts {
        input: VecDeque<u32>,
        log: Vec<PortIo>,
    }

    impl PortAccess for MockPorts {
        fn port_read(&mut self, port: u16, size: u8) -> u32 {
            self.log.push(PortIo::R(port, size));
            self.input.pop_front().unwrap_or(u32::MAX)
        }
        fn port_write(&mut self, port: u16, size: u8, value: u32) {
            self.log.push(PortIo::W(port, size, value));
        }
    }

    impl MockPorts {
        fn writes(&self) -> Vec<u32> {
            self.log
                .iter()
                .map(|io| match io {
                    PortIo::W(_, _, v) => *v,
                    PortIo::R(..) => panic!("unexpected read"),
                })
                .collect()
        }
    }

    struct Vm {
        exit: vm_exit,
        ram: MockRam,
        ports: MockPorts,
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
            let mut vm = Vm {
                exit: vm_exit::default(),
                ram: MockRam::new(0x40_0000),
                ports: MockPorts::default(),
            };
            vm.set(RIP, CODE).set(RFLAGS, 0x2);
            vm
        }

        /// Real mode: CS=F000 (base 0xf0000), ES=1000, DS=2000, FS=3000.
        fn real() -> Vm {
            let mut vm = Vm::base();
            for (i, sel) in [0x1000u16, 0xf000, 0, 0x2000, 0x3000, 0]
                .into_iter()
                .enumerate()
            {
                let ar = if i == CS { 0x9b } else { 0x93 };
                seg(&mut vm, i, sel, u64::from(sel) << 4, 0xffff, ar);
            }
            vm.set(RIP, 0x100);
            vm
        }

        /// 32-bit protected mode, paging off, flat segments.
        fn prot32() -> Vm {
            let mut vm = Vm::base();
            vm.exit.vrs.vrs_crs[VCPU_REGS_CR0 as usize] = CR0_PE;
            seg(&mut vm, CS, 0x8, 0, 0xffff_ffff, 0xc09b);
            for i in [ES, VCPU_REGS_SS as usize, DS, FS, VCPU_REGS_GS as usize] {
                seg(&mut vm, i, 0x10, 0, 0xffff_ffff, 0xc093);
            }
            vm
        }

        /// 32-bit protected mode with 2-level paging; only the code page
        /// is mapped (identity), the test maps the rest.
        fn prot32_paged() -> Vm {
            let mut vm = Vm::prot32();
            let root = vm.ram.alloc_table();
            vm.ram.map4k_32(root, CODE, CODE, PG_RW);
            let r = &mut vm.exit.vrs;
            r.vrs_crs[VCPU_REGS_CR0 as usize] |= CR0_PG | CR0_WP;
            r.vrs_crs[VCPU_REGS_CR3 as usize] = root;
            vm
        }

        /// 64-bit mode with 4-level paging; the code page is mapped to GPA
        /// 0x3000, so that a fetch that skipped the walk would read zeros.
        fn long() -> Vm {
            let mut vm = Vm::prot32();
            let root = vm.ram.alloc_table();
            vm.ram.map4k_64(root, 4, CODE, 0x3000, PG_RW);
            let r = &mut vm.exit.vrs;
            r.vrs_crs[VCPU_REGS_CR0 as usize] |= CR0_PG | CR0_WP;
            r.vrs_crs[VCPU_REGS_CR3 as usize] = root;
            r.vrs_crs[VCPU_REGS_CR4 as usize] = CR4_PAE;
            r.vrs_msrs[VCPU_REGS_EFER as usize] = EFER_LME | EFER_LMA;
            r.vrs_sregs[CS].vsi_ar = 0xa09b;
            vm
        }

        fn cr3(&self) -> u64 {
            self.exit.vrs.vrs_crs[VCPU_REGS_CR3 as usize]
        }

        fn set(&mut self, reg: usize, v: u64) -> &mut Self {
            self.exit.vrs.vrs_gprs[reg] = v;
            self
        }

        fn get(&self, reg: usize) -> u64 {
            self.exit.vrs.vrs_gprs[reg]
        }

        fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
            self.ram.bytes.borrow()[gpa as usize..gpa as usize + len].to_vec()
        }

        /// Places `code` at CS:RIP and fills `vei` as the backend reports
        /// the exit (RDX is set to `port`).
        fn report(&mut self, code: &[u8], dir: u8, size: u8, port: u16) {
            let vrs = &self.exit.vrs;
            let mode = Mode::of(vrs);
            let lin = linear(vrs, mode, Register::CS, self.get(RIP));
            for (i, b) in code.iter().enumerate() {
                let l = wrap_linear(mode, lin + i as u64);
                let gpa = translate_gva(vrs, &self.ram, l, Access::Read, 0).unwrap();
                self.ram.fill(gpa, &[*b]);
            }
            let rep = code.iter().any(|&b| b == 0xf3 || b == 0xf2);
            *self.exit.vei_mut() = vm_exit_inout {
                vei_size: size,
                vei_dir: dir,
                vei_rep: rep.into(),
                vei_string: 1,
                vei_encoding: 0,
                vei_port: port,
                vei_data: 0,
                vei_insn_len: code.len() as u8,
            };
            self.exit.vrs.vrs_gprs[RDX] = 0xdead_0000 | u64::from(port);
        }

        fn emulate(&mut self) -> Result<Emulated> {
            emulate_string_io(&mut self.exit, &self.ram, &mut self.ports)
        }

        fn run(&mut self, code: &[u8], dir: u8, size: u8, port: u16) -> Emulated {
            self.report(code, dir, size, port);
            self.emulate().unwrap_or_else(|e| panic!("{e}"))
        }

        fn run_err(&mut self, code: &[u8], dir: u8, size: u8, port: u16) -> MmioError {
            self.report(code, dir, size, port);
            self.emulate().unwrap_err()
        }
    }

    fn asm(
        bits: u32,
        f: impl FnOnce(&mut CodeAssembler) -> std::result::Result<(), IcedError>,
    ) -> Vec<u8> {
        let mut a = CodeAssembler::new(bits).unwrap();
        f(&mut a).unwrap();
        a.assemble(CODE).unwrap()
    }

    fn done(len: usize) -> Emulated {
        Emulated {
            insn_len: len,
            rep_pending: false,
            sregs_changed: false,
        }
    }

    /// The GPA of the page-table entry mapping `gva` with 4-level paging
    /// of 4 KiB pages.
    fn pte64(ram: &MockRam, root: u64, gva: u64) -> u64 {
        let mut table = root;
        for shift in [39, 30, 21] {
            table = ram.r64(table + ((gva >> shift) & 0x1ff) * 8) & 0x000f_ffff_ffff_f000;
        }
        table + ((gva >> 12) & 0x1ff) * 8
    }

    #[test]
    fn rep_insb_reads_fw_cfg_signature_into_paged_memory() {
        let mut vm = Vm::long();
        let buf = 0x7fff_1234_5000;
        vm.ram.map4k_64(vm.cr3(), 4, buf, 0x8000, PG_RW);
        vm.set(RDI, buf).set(RCX, 4).set(RSI, 0x5151);
        vm.ports.input = "QEMU".bytes().map(u32::from).collect();
        let code = asm(64, |a| a.rep().insb());
        assert_eq!(code, [0xf3, 0x6c]);
        assert_eq!(vm.run(&code, IN, 1, FW_CFG_DATA), done(2));
        assert_eq!(vm.read(0x8000, 5), b"QEMU\0");
        assert_eq!(vm.get(RDI), buf + 4);
        assert_eq!(vm.get(RCX), 0);
        assert_eq!(vm.get(RSI), 0x5151);
        assert_eq!(vm.get(RIP), CODE + 2);
        assert_eq!(vm.ports.log, vec![PortIo::R(FW_CFG_DATA, 1); 4]);
        // The destination was walked as a write, the code as a fetch.
        let pte = vm.ram.r64(pte64(&vm.ram, vm.cr3(), buf));
        assert_eq!(pte & (PG_A | PG_D), PG_A | PG_D);
        let pte = vm.ram.r64(pte64(&vm.ram, vm.cr3(), CODE));
        assert_eq!(pte & (PG_A | PG_D), PG_A);
    }

    #[test]
    fn addr32_in_64_bit_mode_uses_edi_and_ecx() {
        let mut vm = Vm::long();
        vm.ram.map4k_64(vm.cr3(), 4, 0x7000, 0x9000, PG_RW);
        vm.set(RDI, 0xffff_ffff_0000_7000)
            .set(RCX, 0xffff_ffff_0000_0002);
        vm.ports.input = [0x11, 0x22].into();
        // a32 rep insb
        assert_eq!(vm.run(&[0x67, 0xf3, 0x6c], IN, 1, FW_CFG_DATA), done(3));
        assert_eq!(vm.read(0x9000, 2), [0x11, 0x22]);
        // 32-bit register writes zero-extend in 64-bit mode.
        assert_eq!(vm.get(RDI), 0x7002);
        assert_eq!(vm.get(RCX), 0);
    }

    #[test]
    fn insw_and_insd_store_little_endian_elements() {
        for (code, size, values, bytes) in [
            (asm(32, |a| a.insw()), 2u8, vec![0xbeef], vec![0xef, 0xbe]),
            (
                asm(32, |a| a.insd()),
                4,
                vec![0xdead_beef],
                vec![0xef, 0xbe, 0xad, 0xde],
            ),
            (
                asm(32, |a| a.rep().insw()),
                2,
                vec![0x1234, 0x5678],
                vec![0x34, 0x12, 0x78, 0x56],
            ),
            (
                asm(32, |a| a.rep().insd()),
                4,
                vec![0x0403_0201, 0x0807_0605],
                (1..=8).collect(),
            ),
        ] {
            let mut vm = Vm::prot32();
            vm.set(RDI, 0x2000).set(RCX, 2);
            vm.ports.input = values.iter().copied().collect();
            let rep = code.contains(&0xf3);
            assert_eq!(vm.run(&code, IN, size, 0x1f0), done(code.len()));
            assert_eq!(vm.read(0x2000, bytes.len() + 1)[..bytes.len()], bytes[..]);
            assert_eq!(vm.read(0x2000 + bytes.len() as u64, 1), [0]);
            assert_eq!(vm.get(RDI), 0x2000 + bytes.len() as u64);
            assert_eq!(vm.get(RCX), if rep { 0 } else { 2 });
            assert_eq!(vm.get(RIP), CODE + code.len() as u64);
            assert_eq!(vm.ports.log, vec![PortIo::R(0x1f0, size); values.len()]);
        }
    }

    #[test]
    fn outsb_with_segment_override_and_df_set_goes_backwards() {
        let mut vm = Vm::prot32();
        vm.exit.vrs.vrs_sregs[DS].vsi_base = 0x3_0000;
        vm.exit.vrs.vrs_sregs[FS].vsi_base = 0x2_0000;
        vm.ram.fill(0x2_0100, b"ABCD");
        vm.ram.fill(0x3_0100, b"abcd");
        vm.set(RSI, 0x103).set(RCX, 4).set(RDI, 0x77);
        vm.exit.vrs.vrs_gprs[RFLAGS] |= FL_DF;
        let code = asm(32, |a| {
            a.add_instruction(Instruction::with_outsb(
                32,
                Register::FS,
                RepPrefixKind::Repe,
            )?)
        });
        assert_eq!(code, [0x64, 0xf3, 0x6e]);
        assert_eq!(vm.run(&code, OUT, 1, COM1), done(3));
        assert_eq!(vm.ports.writes(), b"DCBA".map(u32::from));
        assert!(vm
            .ports
            .log
            .iter()
            .all(|io| matches!(io, PortIo::W(COM1, 1, _))));
        assert_eq!(vm.get(RSI), 0xff);
        assert_eq!(vm.get(RCX), 0);
        assert_eq!(vm.get(RDI), 0x77);
        assert_eq!(vm.get(RIP), CODE + 3);

        // Without the override OUTS reads DS.
        let mut vm = Vm::prot32();
        vm.exit.vrs.vrs_sregs[DS].vsi_base = 0x3_0000;
        vm.ram.fill(0x3_0100, b"abcd");
        vm.set(RSI, 0x100).set(RCX, 2);
        let code = asm(32, |a| a.rep().outsw());
        assert_eq!(vm.run(&code, OUT, 2, COM1), done(code.len()));
        assert_eq!(vm.ports.writes(), [0x6261, 0x6463]);
        assert_eq!(vm.get(RSI), 0x104);
    }

    #[test]
    fn ins_ignores_a_segment_override() {
        let mut vm = Vm::prot32();
        vm.exit.vrs.vrs_sregs[ES].vsi_base = 0x4_0000;
        vm.exit.vrs.vrs_sregs[FS].vsi_base = 0x5_0000;
        vm.set(RDI, 0x10);
        vm.ports.input = [0x5a].into();
        // fs insb
        assert_eq!(vm.run(&[0x64, 0x6c], IN, 1, 0x60), done(2));
        assert_eq!(vm.read(0x4_0010, 1), [0x5a]);
        assert_eq!(vm.read(0x5_0010, 1), [0]);
    }

    #[test]
    fn a_count_beyond_the_batch_leaves_rip_on_the_instruction() {
        for size in [1u8, 2, 4] {
            let code = asm(32, |a| match size {
                1 => a.rep().insb(),
                2 => a.rep().insw(),
                _ => a.rep().insd(),
            });
            let per_call = (REP_BATCH_BYTES / size as usize) as u64;
            let count = per_call + 100;
            let mut vm = Vm::prot32();
            vm.set(RDI, 0x1_0000).set(RCX, count);
            vm.ports.input = (0..count as u32).collect();
            vm.report(&code, IN, size, FW_CFG_DATA);
            let r = vm.emulate().unwrap();
            assert!(r.rep_pending);
            assert_eq!(r.insn_len, code.len());
            assert_eq!(vm.get(RIP), CODE);
            assert_eq!(vm.get(RCX), 100);
            assert_eq!(vm.get(RDI), 0x1_0000 + REP_BATCH_BYTES as u64);
            assert_eq!(vm.ports.log.len() as u64, per_call);
            // The guest executes it again: the rest completes.
            assert_eq!(vm.emulate().unwrap(), done(code.len()));
            assert_eq!(vm.get(RIP), CODE + code.len() as u64);
            assert_eq!(vm.get(RCX), 0);
            assert_eq!(vm.get(RDI), 0x1_0000 + count * u64::from(size));
            assert_eq!(vm.ports.log.len() as u64, count);
            let last = 0x1_0000 + (count - 1) * u64::from(size);
            let mut want = ((count - 1) as u32).to_le_bytes().to_vec();
            want.truncate(size as usize);
            assert_eq!(vm.read(last, size as usize), want);
        }
    }

    #[test]
    fn a_rep_with_zero_count_only_advances_rip() {
        let mut vm = Vm::real();
        // CX is 0; the upper bits are not part of a 16-bit count.
        vm.set(RCX, 0x1_0000).set(RDI, 0x40).set(RSI, 0x50);
        let code = asm(16, |a| a.rep().insb());
        assert_eq!(vm.run(&code, IN, 1, FW_CFG_DATA), done(2));
        assert_eq!(vm.get(RIP), 0x102);
        assert_eq!(
            (vm.get(RCX), vm.get(RDI), vm.get(RSI)),
            (0x1_0000, 0x40, 0x50)
        );
        assert!(vm.ports.log.is_empty());
    }

    #[test]
    fn real_mode_uses_segment_bases_and_16_bit_registers() {
        // rep insw: ES base 0x10000, DI wraps within 16 bits, the upper
        // bits of RDI and RCX are kept.
        let mut vm = Vm::real();
        vm.set(RDI, 0x1234_0000_fffc).set(RCX, 0xdead_0002);
        vm.ports.input = [0xa1a0, 0xb1b0].into();
        let code = asm(16, |a| a.rep().insw());
        assert_eq!(vm.run(&code, IN, 2, 0x1ce), done(2));
        // The code was fetched at CS base 0xf0000 + IP.
        assert_eq!(vm.read(0xf0100, 2), code);
        assert_eq!(vm.read(0x1_fffc, 4), [0xa0, 0xa1, 0xb0, 0xb1]);
        assert_eq!(vm.get(RDI), 0x1234_0000_0000);
        assert_eq!(vm.get(RCX), 0xdead_0000);
        assert_eq!(vm.get(RIP), 0x102);

        // rep outsb from DS (base 0x20000); cs outsb from CS.
        let mut vm = Vm::real();
        vm.ram.fill(0x2_0010, b"hi");
        vm.ram.fill(0xf_0020, b"!");
        vm.set(RSI, 0x10).set(RCX, 2);
        assert_eq!(vm.run(&asm(16, |a| a.rep().outsb()), OUT, 1, COM1), done(2));
        assert_eq!(vm.get(RSI), 0x12);
        vm.set(RSI, 0x20).set(RIP, 0x100);
        assert_eq!(vm.run(&[0x2e, 0x6e], OUT, 1, COM1), done(2));
        assert_eq!(vm.ports.writes(), b"hi!".map(u32::from));

        // a32 rep insb: EDI and ECX, ES base added to a 32-bit offset.
        let mut vm = Vm::real();
        vm.set(RDI, 0x1_0000).set(RCX, 0xffff_ffff_0000_0003);
        vm.ports.input = [1, 2, 3].into();
        assert_eq!(vm.run(&[0x67, 0xf3, 0x6c], IN, 1, 0x511), done(3));
        assert_eq!(vm.read(0x2_0000, 4), [1, 2, 3, 0]);
        assert_eq!(vm.get(RDI), 0x1_0003);
        assert_eq!(vm.get(RCX), 0xffff_ffff_0000_0000);

        // IP wraps at 64 KiB.
        let mut vm = Vm::real();
        vm.set(RIP, 0xffff).set(RDI, 0);
        assert_eq!(vm.run(&[0x6c], IN, 1, 0x80), done(1));
        assert_eq!(vm.get(RIP), 0);
    }

    #[test]
    fn elements_crossing_a_page_are_split_between_frames() {
        let mut vm = Vm::prot32_paged();
        let root = vm.cr3();
        vm.ram.map4k_32(root, 0x40_0000, 0x5000, PG_RW);
        vm.ram.map4k_32(root, 0x40_1000, 0x9000, PG_RW);
        vm.set(RDI, 0x40_0ffe);
        vm.ports.input = [0x4433_2211].into();
        assert_eq!(vm.run(&asm(32, |a| a.insd()), IN, 4, 0xcfc), done(1));
        assert_eq!(vm.read(0x5ffe, 2), [0x11, 0x22]);
        assert_eq!(vm.read(0x9000, 2), [0x33, 0x44]);
        assert_eq!(vm.get(RDI), 0x40_1002);

        vm.set(RSI, 0x40_0ffd).set(RIP, CODE);
        vm.ram.fill(0x5ffd, &[0xaa]);
        assert_eq!(vm.run(&asm(32, |a| a.outsd()), OUT, 4, 0xcfc), done(1));
        assert_eq!(vm.ports.log[1], PortIo::W(0xcfc, 4, 0x3322_11aa));
        assert_eq!(vm.get(RSI), 0x40_1001);
    }

    #[test]
    fn a_faulting_destination_is_found_before_the_port_is_read() {
        // The element's second page is not mapped.
        let mut vm = Vm::prot32_paged();
        vm.ram.map4k_32(vm.cr3(), 0x40_1000, 0x5000, PG_RW);
        vm.set(RDI, 0x40_1ffe).set(RCX, 1);
        let e = vm.run_err(&asm(32, |a| a.rep().insd()), IN, 4, 0xcfc);
        let MmioError::PageFault { gva, error, .. } = e else {
            panic!("{e:?}")
        };
        assert_eq!(gva, 0x40_2000);
        assert!(matches!(error, TranslateError::NotPresent { .. }));
        assert!(vm.ports.log.is_empty());
        assert_eq!(
            (vm.get(RDI), vm.get(RCX), vm.get(RIP)),
            (0x40_1ffe, 1, CODE)
        );

        // A read-only page: INS faults, OUTS reads it.
        let mut vm = Vm::prot32_paged();
        vm.ram.map4k_32(vm.cr3(), 0x40_0000, 0x5000, 0);
        vm.set(RDI, 0x40_0000).set(RSI, 0x40_0000);
        let e = vm.run_err(&asm(32, |a| a.insb()), IN, 1, 0x60);
        assert!(
            matches!(
                e,
                MmioError::PageFault {
                    error: TranslateError::ReadOnly { .. },
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(vm.ports.log.is_empty());
        assert_eq!(vm.run(&asm(32, |a| a.outsb()), OUT, 1, 0x60), done(1));
        assert_eq!(vm.ports.log, [PortIo::W(0x60, 1, 0)]);

        // Not RAM: the port is not read either.
        let mut vm = Vm::prot32();
        vm.ram.hole.set((0xa_0000, 0x2_0000));
        vm.set(RDI, 0xa_0000);
        let e = vm.run_err(&asm(32, |a| a.insb()), IN, 1, 0x60);
        assert_eq!(
            e,
            MmioError::InvalidAddress {
                rip: CODE,
                gva: 0xa_0000,
                gpa: 0xa_0000
            }
        );
        assert!(vm.ports.log.is_empty());
    }

    #[test]
    fn an_exit_that_does_not_match_the_instruction_is_an_error() {
        let insb = asm(32, |a| a.rep().insb());
        let check = |e: MmioError, what: &str| {
            let MmioError::StringIo {
                rip,
                bytes,
                what: w,
            } = &e
            else {
                panic!("{e:?}")
            };
            assert_eq!((*rip, bytes.as_slice()), (CODE, &insb[..]));
            assert!(w.contains(what), "{w}");
            let msg = e.to_string();
            assert!(msg.contains("rip=0x1000") && msg.contains("f3 6c"), "{msg}");
            assert_eq!(e.rip(), CODE);
            assert_eq!(e.errno(), libc::EINVAL);
        };
        let mut vm = Vm::prot32();
        vm.set(RCX, 3).set(RDI, 0x2000);
        check(
            vm.run_err(&insb, IN, 2, 0x511),
            "1-byte elements but the exit reports 2",
        );
        check(vm.run_err(&insb, OUT, 1, 0x511), "direction 0");
        vm.report(&insb, IN, 1, 0x511);
        vm.exit.vei_mut().vei_insn_len = 3;
        check(
            vm.emulate().unwrap_err(),
            "2 bytes long but the exit reports 3",
        );
        vm.report(&insb, IN, 1, 0x511);
        vm.exit.vei_mut().vei_port = 0x510;
        check(
            vm.emulate().unwrap_err(),
            "DX=0x511 but the exit reports port 0x510",
        );
        assert!(vm.ports.log.is_empty());
        assert_eq!((vm.get(RCX), vm.get(RDI), vm.get(RIP)), (3, 0x2000, CODE));

        // Not a string instruction at all.
        let mut vm = Vm::prot32();
        let e = vm.run_err(&asm(32, |a| a.in_(al, dx)), IN, 1, 0x511);
        assert!(
            matches!(&e, MmioError::StringIo { what, .. } if what.contains("In_AL_DX")),
            "{e:?}"
        );
        let e = vm.run_err(&asm(32, |a| a.rep().movsb()), IN, 1, 0x511);
        assert!(matches!(e, MmioError::StringIo { .. }), "{e:?}");

        // A length no instruction has.
        vm.report(&insb, IN, 1, 0x511);
        vm.exit.vei_mut().vei_insn_len = 16;
        assert_eq!(
            vm.emulate(),
            Err(MmioError::InsnLength { rip: CODE, len: 16 })
        );
    }

    #[test]
    fn a_length_of_zero_decodes_up_to_15_bytes() {
        let mut vm = Vm::prot32();
        vm.set(RDI, 0x2000);
        vm.ports.input = [7].into();
        vm.report(&[0x6c], IN, 1, 0x80);
        vm.exit.vei_mut().vei_insn_len = 0;
        assert_eq!(vm.emulate(), Ok(done(1)));
        assert_eq!(vm.read(0x2000, 1), [7]);
        assert_eq!(vm.get(RIP), CODE + 1);
    }

    #[test]
    fn the_pio_bus_serves_the_ports() {
        use crate::devices::bus::{PioBus, PioDevice};
        use std::sync::{Arc, Mutex};
        /// fw_cfg's selector (offset 0) and data (offset 1) ports.
        struct FwCfg {
            pos: usize,
            written: Vec<u8>,
        }
        impl PioDevice for FwCfg {
            fn pio_read(&mut self, offset: u16, _size: u8) -> u32 {
                assert_eq!(offset, 1);
                self.pos += 1;
                u32::from(b"QEMU"[(self.pos - 1) % 4])
            }
            fn pio_write(&mut self, _offset: u16, _size: u8, value: u32) {
                self.written.push(value as u8);
            }
        }
        let dev = Arc::new(Mutex::new(FwCfg {
            pos: 0,
            written: Vec::new(),
        }));
        let mut bus = PioBus::new();
        bus.register(0x510, 2, dev.clone()).unwrap();
        let mut vm = Vm::prot32();
        vm.set(RDI, 0x2000).set(RCX, 4);
        vm.report(&asm(32, |a| a.rep().insb()), IN, 1, FW_CFG_DATA);
        emulate_string_io(&mut vm.exit, &vm.ram, &mut bus).unwrap();
        assert_eq!(vm.read(0x2000, 4), b"QEMU");
        vm.set(RSI, 0x2000).set(RCX, 4).set(RIP, CODE);
        vm.report(&asm(32, |a| a.rep().outsb()), OUT, 1, FW_CFG_DATA);
        emulate_string_io(&mut vm.exit, &vm.ram, &mut bus).unwrap();
        assert_eq!(dev.lock().unwrap().written, b"QEMU");
    }
}
