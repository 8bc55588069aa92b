//! Decoding and emulating the instruction behind an MMIO-assist exit
//! (vmd's `vcpu_exit_eptviolation` for `VEE_FAULT_MMIO_ASSIST`, then
//! `insn_decode` / `insn_emulate` of x86_mmio.c), with iced-x86 as the
//! decoder.
//!
//! Covered, in real, v8086, 16- and 32-bit protected, compatibility and
//! 64-bit mode, with the 66/67/segment/REP/LOCK prefixes and REX:
//!
//! - MOV r/m↔r, r/m←imm, the moffs forms (A0–A3), MOV r/m16←Sreg and
//!   MOV Sreg←r/m16 (the latter reports [`Emulated::sregs_changed`]);
//! - MOVZX, MOVSX, MOVSXD;
//! - ADD ADC SUB SBB AND OR XOR CMP TEST in every r/m form (r/m,r; r,r/m;
//!   r/m,imm including the 80/81/83 groups), INC DEC NEG NOT, with the
//!   status flags the CPU sets;
//! - XCHG r/m,r;
//! - MOVS, STOS and LODS, with REP (F3 or F2), DF and 16/32/64-bit address
//!   size, between MMIO and RAM in either direction or MMIO and MMIO;
//! - PUSH r/m and POP r/m (FF /6, 8F /0), the stack through SS with SS.B's
//!   address size.
//!
//! REP string instructions are batched as vmd does: up to 4096 bytes'
//! worth of elements per exit, registers updated per element; when count
//! is left RIP stays on the instruction so the guest executes it again
//! (and can take interrupts in between).  A REP with a zero count does
//! nothing but advance RIP.
//!
//! Not emulated (→ [`MmioError::Unsupported`]): CMPS/SCAS, CMPXCHG, XADD,
//! BT*, SETcc, shifts and rotates, CMOVcc, SSE/AVX loads and stores, far
//! pointers (LDS/LES...), PUSH/POP of non-memory operands, and anything
//! without a memory operand.  No #GP/#PF/#UD is injected: segment limits
//! and canonical addresses are not checked, and every failure ends the VM
//! as vmd's does.
use super::mmu::{translate_gva, Access, TranslateError};
use super::regs::*;
use super::{GuestRam, MmioAccess};
use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};
use vmm_sys::abi::{
    vcpu_reg_state, vm_exit, VCPU_REGS_CS, VCPU_REGS_LDTR, VCPU_REGS_RAX, VCPU_REGS_RCX,
    VCPU_REGS_RDI, VCPU_REGS_RFLAGS, VCPU_REGS_RIP, VCPU_REGS_RSI, VCPU_REGS_RSP, VCPU_REGS_SS,
    VEE_BYTES_VALID, VEE_LEN_VALID,
};

/// The most bytes one REP string instruction moves per exit (vmd's batch).
pub const REP_BATCH_BYTES: usize = 4096;

/// What [`emulate`] did, beyond updating `exit.vrs`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Emulated {
    /// The decoded instruction's length.
    pub insn_len: usize,
    /// A REP string instruction stopped at the batch limit with count left;
    /// RIP still points at it.
    pub rep_pending: bool,
    /// A segment register was loaded (MOV Sreg, m16).  vmm(4) reloads only
    /// the GPRs from `vrs` after an MMIO assist, so the caller must write
    /// the segment registers back (`VMM_IOC_WRITEREGS` with
    /// `VM_RWREGS_SREGS`).
    pub sregs_changed: bool,
}

/// Why an MMIO-assist exit could not be completed; the VM ends with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MmioError {
    /// `vee_insn_len` is 0 or more than 15.
    #[error("invalid instruction length {len} at rip=0x{rip:x}")]
    InsnLength { rip: u64, len: u8 },
    /// The instruction bytes at CS:RIP could not be translated.
    #[error("cannot fetch the instruction at rip=0x{rip:x} (gva 0x{gva:x}): {error}")]
    Fetch {
        rip: u64,
        gva: u64,
        error: TranslateError,
    },
    /// The instruction bytes are not in guest RAM.
    #[error("instruction at rip=0x{rip:x} (gva 0x{gva:x}, gpa 0x{gpa:x}) is not in guest RAM")]
    FetchNotRam { rip: u64, gva: u64, gpa: u64 },
    /// iced-x86 cannot decode the bytes.
    #[error("undecodable instruction at rip=0x{rip:x}: bytes {}", hex(bytes))]
    Undecodable { rip: u64, bytes: Vec<u8> },
    /// A valid instruction this emulator does not handle.
    #[error(
        "unsupported MMIO instruction {what} at rip=0x{rip:x}: bytes {}",
        hex(bytes)
    )]
    Unsupported {
        rip: u64,
        bytes: Vec<u8>,
        what: String,
    },
    /// A memory operand's linear address does not translate.
    #[error(
        "page fault at gva 0x{gva:x} emulating rip=0x{rip:x} (bytes {}): {error}",
        hex(bytes)
    )]
    PageFault {
        rip: u64,
        bytes: Vec<u8>,
        gva: u64,
        error: TranslateError,
    },
    /// Neither RAM nor an MMIO device is at the operand's address.
    #[error("invalid MMIO address: rip=0x{rip:x} gva=0x{gva:x} gpa=0x{gpa:x}")]
    InvalidAddress { rip: u64, gva: u64, gpa: u64 },
    /// MOV Sreg with a selector the CPU would fault on.
    #[error("cannot load selector 0x{selector:x} at rip=0x{rip:x}: {reason}")]
    Segment {
        rip: u64,
        selector: u16,
        reason: &'static str,
    },
    /// A string I/O exit whose instruction is not the INS/OUTS the exit
    /// describes (see [`crate::x86::pio`]).
    #[error(
        "cannot emulate string I/O at rip=0x{rip:x}: {what} (bytes {})",
        hex(bytes)
    )]
    StringIo {
        rip: u64,
        bytes: Vec<u8>,
        what: String,
    },
}

impl MmioError {
    /// The errno vmd's `vcpu_exit` returns for this failure.
    pub fn errno(&self) -> i32 {
        match self {
            MmioError::Fetch { error, .. } | MmioError::PageFault { error, .. } => error.errno(),
            MmioError::FetchNotRam { .. } => libc::EFAULT,
            _ => libc::EINVAL,
        }
    }

    /// The RIP of the instruction that failed.
    pub fn rip(&self) -> u64 {
        match self {
            MmioError::InsnLength { rip, .. }
            | MmioError::Fetch { rip, .. }
            | MmioError::FetchNotRam { rip, .. }
            | MmioError::Undecodable { rip, .. }
            | MmioError::Unsupported { rip, .. }
            | MmioError::PageFault { rip, .. }
            | MmioError::InvalidAddress { rip, .. }
            | MmioError::Segment { rip, .. }
            | MmioError::StringIo { rip, .. } => *rip,
        }
    }
}

/// Bytes as lowercase hex pairs separated by spaces.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

type Result<T> = std::result::Result<T, MmioError>;

/// Emulates the instruction of an MMIO-assist exit (`vee_fault_type ==
/// VEE_FAULT_MMIO_ASSIST`; the caller dispatches on the fault type).
///
/// The instruction bytes come from `vee_insn_bytes` when `VEE_BYTES_VALID`
/// is set (AMD decode assist), else they are fetched from guest memory at
/// CS:RIP (Intel), `vee_insn_len` bytes when `VEE_LEN_VALID` is set, else up
/// to 15; each page of the fetch is translated on its own.  The memory
/// operand's address is computed from the decoded instruction and
/// translated through the guest's page tables; the access goes to RAM when
/// the GPA is RAM and to `bus` otherwise.  On success `exit.vrs` holds the
/// new GPRs, RFLAGS and RIP (and segment registers, see
/// [`Emulated::sregs_changed`]).  On error `exit.vrs` may be partly
/// updated; the VM is expected to end.
pub fn emulate<M, B>(exit: &mut vm_exit, mem: &M, bus: &mut B) -> Result<Emulated>
where
    M: GuestRam + ?Sized,
    B: MmioAccess + ?Sized,
{
    let vee = *exit.vee();
    let cpl = (exit.cpl & 3) as u8;
    let mode = Mode::of(&exit.vrs);
    let mut cpu = Cpu {
        vrs: &mut exit.vrs,
        mem,
        bus,
        mode,
        cpl,
        rip: 0,
        bytes: Vec::new(),
        tlb: Vec::new(),
        sregs_changed: false,
    };
    cpu.rip = cpu.vrs.vrs_gprs[VCPU_REGS_RIP as usize];
    if mode != Mode::Long {
        cpu.rip &= 0xffff_ffff;
    }

    let info = u32::from(vee.vee_insn_info);
    let len_valid = info & VEE_LEN_VALID != 0;
    let len = if len_valid {
        if !(1..=15).contains(&vee.vee_insn_len) {
            return Err(MmioError::InsnLength {
                rip: cpu.rip,
                len: vee.vee_insn_len,
            });
        }
        vee.vee_insn_len as usize
    } else {
        15
    };
    let window = if info & VEE_BYTES_VALID != 0 {
        vee.vee_insn_bytes[..len].to_vec()
    } else {
        cpu.fetch(len, len_valid)?
    };

    let bitness = mode.bitness();
    let mut decoder = Decoder::with_ip(bitness, &window, cpu.rip, DecoderOptions::NONE);
    let instr = decoder.decode();
    if instr.is_invalid() {
        return Err(MmioError::Undecodable {
            rip: cpu.rip,
            bytes: window,
        });
    }
    cpu.bytes = window[..instr.len()].to_vec();

    let rep_pending = cpu.execute(&instr)?;
    if !rep_pending {
        let next = cpu.rip.wrapping_add(instr.len() as u64);
        cpu.vrs.vrs_gprs[VCPU_REGS_RIP as usize] = match bitness {
            16 => next & 0xffff,
            32 => next & 0xffff_ffff,
            _ => next,
        };
    }
    Ok(Emulated {
        insn_len: instr.len(),
        rep_pending,
        sregs_changed: cpu.sregs_changed,
    })
}

/// A linear address as the CPU forms it: 64 bits in 64-bit mode, else
/// truncated to 32.
pub(crate) fn wrap_linear(mode: Mode, lin: u64) -> u64 {
    if mode == Mode::Long {
        lin
    } else {
        lin & 0xffff_ffff
    }
}

/// The linear address of `seg:offset`.
pub(crate) fn linear(vrs: &vcpu_reg_state, mode: Mode, seg: Register, offset: u64) -> u64 {
    wrap_linear(mode, seg_base(vrs, mode, seg).wrapping_add(offset))
}

/// Reads `len` instruction bytes at CS:`rip`, translating each page on its
/// own.  Without a valid length the window stops short at the first page
/// that does not translate, once at least one byte was read.
pub(crate) fn fetch_insn<M: GuestRam + ?Sized>(
    vrs: &vcpu_reg_state,
    mem: &M,
    mode: Mode,
    cpl: u8,
    rip: u64,
    len: usize,
    len_valid: bool,
) -> Result<Vec<u8>> {
    let start = linear(vrs, mode, Register::CS, rip);
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let lin = wrap_linear(mode, start.wrapping_add(got as u64));
        let chunk = (len - got).min(0x1000 - (lin & 0xfff) as usize);
        let gpa = match translate_gva(vrs, mem, lin, Access::Exec, cpl) {
            Ok(gpa) => gpa,
            Err(_) if got > 0 && !len_valid => break,
            Err(error) => {
                return Err(MmioError::Fetch {
                    rip,
                    gva: lin,
                    error,
                })
            }
        };
        if !mem.read_phys(gpa, &mut buf[got..got + chunk]) {
            if got > 0 && !len_valid {
                break;
            }
            return Err(MmioError::FetchNotRam { rip, gva: lin, gpa });
        }
        got += chunk;
    }
    buf.truncate(got);
    Ok(buf)
}

/// One translation kept for the rest of the instruction: linear page →
/// physical page, and whether it was checked (and marked dirty) for writes.
#[derive(Clone, Copy)]
struct TlbEntry {
    page: u64,
    gpa_page: u64,
    write: bool,
}

struct Cpu<'a, M: ?Sized, B: ?Sized> {
    vrs: &'a mut vcpu_reg_state,
    mem: &'a M,
    bus: &'a mut B,
    mode: Mode,
    cpl: u8,
    rip: u64,
    /// The instruction's bytes, for error messages.
    bytes: Vec<u8>,
    tlb: Vec<TlbEntry>,
    sregs_changed: bool,
}

/// Whether `kind` is one of the memory operand kinds.
fn is_mem(kind: OpKind) -> bool {
    matches!(
        kind,
        OpKind::Memory
            | OpKind::MemorySegSI
            | OpKind::MemorySegESI
            | OpKind::MemorySegRSI
            | OpKind::MemoryESDI
            | OpKind::MemoryESEDI
            | OpKind::MemoryESRDI
    )
}

fn is_legacy_prefix(b: u8) -> bool {
    matches!(
        b,
        0xf0 | 0xf2 | 0xf3 | 0x2e | 0x36 | 0x3e | 0x26 | 0x64 | 0x65 | 0x66 | 0x67
    )
}

impl<M: GuestRam + ?Sized, B: MmioAccess + ?Sized> Cpu<'_, M, B> {
    fn wrap(&self, lin: u64) -> u64 {
        wrap_linear(self.mode, lin)
    }

    fn linear(&self, seg: Register, offset: u64) -> u64 {
        linear(self.vrs, self.mode, seg, offset)
    }

    fn unsupported(&self, instr: &Instruction) -> MmioError {
        MmioError::Unsupported {
            rip: self.rip,
            bytes: self.bytes.clone(),
            what: format!("{:?} ({:?})", instr.mnemonic(), instr.code()),
        }
    }

    // ---- instruction fetch -------------------------------------------

    /// Reads `len` bytes at CS:RIP (see [`fetch_insn`]).
    fn fetch(&mut self, len: usize, len_valid: bool) -> Result<Vec<u8>> {
        fetch_insn(
            self.vrs, self.mem, self.mode, self.cpl, self.rip, len, len_valid,
        )
    }

    // ---- memory --------------------------------------------------------

    fn translate(&mut self, lin: u64, access: Access) -> Result<u64> {
        let page = lin & !0xfff;
        let write = access == Access::Write;
        if let Some(e) = self
            .tlb
            .iter()
            .find(|e| e.page == page && (e.write || !write))
        {
            return Ok(e.gpa_page | (lin & 0xfff));
        }
        let gpa = translate_gva(self.vrs, self.mem, lin, access, self.cpl).map_err(|error| {
            MmioError::PageFault {
                rip: self.rip,
                bytes: self.bytes.clone(),
                gva: lin,
                error,
            }
        })?;
        self.tlb.push(TlbEntry {
            page,
            gpa_page: gpa & !0xfff,
            write,
        });
        Ok(gpa)
    }

    fn phys_read(&mut self, gpa: u64, size: usize, gva: u64) -> Result<u64> {
        let mut b = [0u8; 8];
        if self.mem.read_phys(gpa, &mut b[..size]) {
            return Ok(u64::from_le_bytes(b));
        }
        match self.bus.mmio_read(gpa, size as u8) {
            Some(v) => Ok(v & mask(size)),
            None => Err(MmioError::InvalidAddress {
                rip: self.rip,
                gva,
                gpa,
            }),
        }
    }

    fn phys_write(&mut self, gpa: u64, size: usize, v: u64, gva: u64) -> Result<()> {
        let b = v.to_le_bytes();
        if self.mem.write_phys(gpa, &b[..size])
            || self.bus.mmio_write(gpa, size as u8, v & mask(size))
        {
            return Ok(());
        }
        Err(MmioError::InvalidAddress {
            rip: self.rip,
            gva,
            gpa,
        })
    }

    /// A data read of `size` bytes at linear address `lin`.  An access that
    /// crosses a page is split into bytes, each translated on its own.
    fn read_lin(&mut self, lin: u64, size: usize) -> Result<u64> {
        if (lin & 0xfff) as usize + size <= 0x1000 {
            let gpa = self.translate(lin, Access::Read)?;
            return self.phys_read(gpa, size, lin);
        }
        let mut v = 0;
        for i in 0..size {
            let l = self.wrap(lin.wrapping_add(i as u64));
            let gpa = self.translate(l, Access::Read)?;
            v |= self.phys_read(gpa, 1, l)? << (8 * i);
        }
        Ok(v)
    }

    fn write_lin(&mut self, lin: u64, size: usize, v: u64) -> Result<()> {
        if (lin & 0xfff) as usize + size <= 0x1000 {
            let gpa = self.translate(lin, Access::Write)?;
            return self.phys_write(gpa, size, v, lin);
        }
        for i in 0..size {
            let l = self.wrap(lin.wrapping_add(i as u64));
            let gpa = self.translate(l, Access::Write)?;
            self.phys_write(gpa, 1, (v >> (8 * i)) & 0xff, l)?;
        }
        Ok(())
    }

    // ---- operands ------------------------------------------------------

    /// The address size (bytes) of an explicit memory operand: the mode's
    /// default, switched by a 67 prefix.
    fn addr_size(&self) -> usize {
        let long = self.mode == Mode::Long;
        let has67 = self
            .bytes
            .iter()
            .take_while(|&&b| is_legacy_prefix(b) || (long && (0x40..=0x4f).contains(&b)))
            .any(|&b| b == 0x67);
        match (self.mode.bitness(), has67) {
            (16, false) | (32, true) => 2,
            (16, true) | (32, false) | (64, true) => 4,
            _ => 8,
        }
    }

    fn reg(&self, r: Register) -> u64 {
        get_reg(self.vrs, r).unwrap_or(0)
    }

    /// The linear address of the memory operand `op`.
    fn mem_linear(&self, instr: &Instruction, op: u32) -> u64 {
        let si = |sz| get_gpr(self.vrs, VCPU_REGS_RSI as usize, sz);
        let di = |sz| get_gpr(self.vrs, VCPU_REGS_RDI as usize, sz);
        let seg = instr.memory_segment();
        match instr.op_kind(op) {
            OpKind::MemorySegSI => self.linear(seg, si(2)),
            OpKind::MemorySegESI => self.linear(seg, si(4)),
            OpKind::MemorySegRSI => self.linear(seg, si(8)),
            OpKind::MemoryESDI => self.linear(Register::ES, di(2)),
            OpKind::MemoryESEDI => self.linear(Register::ES, di(4)),
            OpKind::MemoryESRDI => self.linear(Register::ES, di(8)),
            _ => {
                // Displacement; for RIP/EIP-relative operands iced has
                // already added the next instruction's address.
                let mut ea = instr.memory_displacement64();
                match instr.memory_base() {
                    Register::None | Register::RIP | Register::EIP => {}
                    base => ea = ea.wrapping_add(self.reg(base)),
                }
                let index = instr.memory_index();
                if index != Register::None {
                    ea = ea.wrapping_add(
                        self.reg(index)
                            .wrapping_mul(instr.memory_index_scale() as u64),
                    );
                }
                self.linear(seg, ea & mask(self.addr_size()))
            }
        }
    }

    /// Reads operand `op` at `size` bytes: register, immediate or memory.
    fn read_op(&mut self, instr: &Instruction, op: u32, size: usize) -> Result<u64> {
        match instr.op_kind(op) {
            OpKind::Register => Ok(self.reg(instr.op_register(op)) & mask(size)),
            k if is_mem(k) => {
                let lin = self.mem_linear(instr, op);
                self.read_lin(lin, size)
            }
            _ => Ok(instr.immediate(op) & mask(size)),
        }
    }

    /// Writes operand `op` (a GPR or memory).
    fn write_op(&mut self, instr: &Instruction, op: u32, size: usize, v: u64) -> Result<()> {
        match instr.op_kind(op) {
            OpKind::Register => {
                if set_reg(self.vrs, self.mode, instr.op_register(op), v) {
                    Ok(())
                } else {
                    Err(self.unsupported(instr))
                }
            }
            k if is_mem(k) => {
                let lin = self.mem_linear(instr, op);
                self.write_lin(lin, size, v)
            }
            _ => Err(self.unsupported(instr)),
        }
    }

    fn set_status_flags(&mut self, flags: u64) {
        let rf = &mut self.vrs.vrs_gprs[VCPU_REGS_RFLAGS as usize];
        *rf = (*rf & !FL_STATUS) | flags;
    }

    // ---- instructions --------------------------------------------------

    /// Emulates `instr`; returns whether a REP instruction has count left.
    fn execute(&mut self, instr: &Instruction) -> Result<bool> {
        let has_mem = (0..instr.op_count()).any(|i| is_mem(instr.op_kind(i)));
        let size = instr.memory_size().size();
        if !has_mem || !matches!(size, 1 | 2 | 4 | 8) {
            return Err(self.unsupported(instr));
        }
        match instr.mnemonic() {
            Mnemonic::Mov => self.mov(instr, size)?,
            Mnemonic::Movzx | Mnemonic::Movsx | Mnemonic::Movsxd => self.extend(instr, size)?,
            Mnemonic::Add => self.alu(instr, size, AluOp::Add, true)?,
            Mnemonic::Adc => self.alu(instr, size, AluOp::Adc, true)?,
            Mnemonic::Sub => self.alu(instr, size, AluOp::Sub, true)?,
            Mnemonic::Sbb => self.alu(instr, size, AluOp::Sbb, true)?,
            Mnemonic::Cmp => self.alu(instr, size, AluOp::Sub, false)?,
            Mnemonic::And => self.alu(instr, size, AluOp::And, true)?,
            Mnemonic::Or => self.alu(instr, size, AluOp::Or, true)?,
            Mnemonic::Xor => self.alu(instr, size, AluOp::Xor, true)?,
            Mnemonic::Test => self.alu(instr, size, AluOp::And, false)?,
            Mnemonic::Inc | Mnemonic::Dec | Mnemonic::Neg | Mnemonic::Not => {
                self.unary(instr, size)?
            }
            Mnemonic::Xchg => self.xchg(instr, size)?,
            Mnemonic::Push
                if matches!(
                    instr.code(),
                    Code::Push_rm16 | Code::Push_rm32 | Code::Push_rm64
                ) =>
            {
                self.push_rm(instr, size)?
            }
            Mnemonic::Pop
                if matches!(
                    instr.code(),
                    Code::Pop_rm16 | Code::Pop_rm32 | Code::Pop_rm64
                ) =>
            {
                self.pop_rm(instr, size)?
            }
            _ => return self.string(instr, size),
        }
        Ok(false)
    }

    fn mov(&mut self, instr: &Instruction, size: usize) -> Result<()> {
        if is_mem(instr.op_kind(0)) {
            let v = self.read_op(instr, 1, size)?;
            return self.write_op(instr, 0, size, v);
        }
        let v = self.read_op(instr, 1, size)?;
        let dst = instr.op0_register();
        if dst.is_segment_register() {
            return self.load_segment(instr, dst, v as u16);
        }
        self.write_op(instr, 0, size, v)
    }

    fn extend(&mut self, instr: &Instruction, size: usize) -> Result<()> {
        let v = self.read_op(instr, 1, size)?;
        let v = if instr.mnemonic() == Mnemonic::Movzx {
            v
        } else {
            sign_extend(v, size)
        };
        let dsize = instr.op0_register().size();
        self.write_op(instr, 0, dsize, v & mask(dsize))
    }

    fn alu(&mut self, instr: &Instruction, size: usize, op: AluOp, store: bool) -> Result<()> {
        let a = self.read_op(instr, 0, size)?;
        let b = self.read_op(instr, 1, size)?;
        let flags = self.vrs.vrs_gprs[VCPU_REGS_RFLAGS as usize];
        let (r, f) = alu(op, a, b, size, flags);
        if store {
            self.write_op(instr, 0, size, r)?;
        }
        self.set_status_flags(f);
        Ok(())
    }

    fn unary(&mut self, instr: &Instruction, size: usize) -> Result<()> {
        let a = self.read_op(instr, 0, size)?;
        let flags = self.vrs.vrs_gprs[VCPU_REGS_RFLAGS as usize];
        let (r, f) = match instr.mnemonic() {
            Mnemonic::Not => (!a & mask(size), None),
            Mnemonic::Neg => {
                let (r, f) = alu(AluOp::Sub, 0, a, size, 0);
                (r, Some(f))
            }
            m => {
                let op = if m == Mnemonic::Inc {
                    AluOp::Add
                } else {
                    AluOp::Sub
                };
                // INC and DEC leave CF alone.
                let (r, f) = alu(op, a, 1, size, 0);
                (r, Some((f & !FL_CF) | (flags & FL_CF)))
            }
        };
        self.write_op(instr, 0, size, r)?;
        if let Some(f) = f {
            self.set_status_flags(f);
        }
        Ok(())
    }

    fn xchg(&mut self, instr: &Instruction, size: usize) -> Result<()> {
        let (m, r) = if is_mem(instr.op_kind(0)) {
            (0, 1)
        } else {
            (1, 0)
        };
        let mv = self.read_op(instr, m, size)?;
        let rv = self.read_op(instr, r, size)?;
        self.write_op(instr, m, size, rv)?;
        self.write_op(instr, r, size, mv)
    }

    fn stack_linear(&self, sp: u64) -> u64 {
        self.linear(Register::SS, sp)
    }

    fn push_rm(&mut self, instr: &Instruction, size: usize) -> Result<()> {
        // The source address uses RSP before the decrement.
        let v = self.read_op(instr, 0, size)?;
        let sasz = stack_addr_size(self.vrs, self.mode);
        let rsp = VCPU_REGS_RSP as usize;
        let sp = get_gpr(self.vrs, rsp, sasz).wrapping_sub(size as u64) & mask(sasz);
        self.write_lin(self.stack_linear(sp), size, v)?;
        set_gpr(self.vrs, self.mode, rsp, sasz, sp);
        Ok(())
    }

    fn pop_rm(&mut self, instr: &Instruction, size: usize) -> Result<()> {
        let sasz = stack_addr_size(self.vrs, self.mode);
        let rsp = VCPU_REGS_RSP as usize;
        let sp = get_gpr(self.vrs, rsp, sasz);
        let v = self.read_lin(self.stack_linear(sp), size)?;
        // The destination address uses RSP after the increment (SDM, POP).
        set_gpr(
            self.vrs,
            self.mode,
            rsp,
            sasz,
            sp.wrapping_add(size as u64) & mask(sasz),
        );
        self.write_op(instr, 0, size, v)
    }

    /// MOVS, STOS and LODS, with or without REP.
    fn string(&mut self, instr: &Instruction, size: usize) -> Result<bool> {
        #[derive(PartialEq)]
        enum Kind {
            Movs,
            Stos,
            Lods,
        }
        use Code::*;
        let kind = match instr.code() {
            Movsb_m8_m8 | Movsw_m16_m16 | Movsd_m32_m32 | Movsq_m64_m64 => Kind::Movs,
            Stosb_m8_AL | Stosw_m16_AX | Stosd_m32_EAX | Stosq_m64_RAX => Kind::Stos,
            Lodsb_AL_m8 | Lodsw_AX_m16 | Lodsd_EAX_m32 | Lodsq_RAX_m64 => Kind::Lods,
            _ => return Err(self.unsupported(instr)),
        };
        // The address size is in the operand kind (rSI or rDI width).
        let asz = match instr.op_kind(if kind == Kind::Lods { 1 } else { 0 }) {
            OpKind::MemorySegSI | OpKind::MemoryESDI => 2,
            OpKind::MemorySegESI | OpKind::MemoryESEDI => 4,
            _ => 8,
        };
        let (rcx, rsi, rdi, rax) = (
            VCPU_REGS_RCX as usize,
            VCPU_REGS_RSI as usize,
            VCPU_REGS_RDI as usize,
            VCPU_REGS_RAX as usize,
        );
        let rep = instr.has_rep_prefix() || instr.has_repne_prefix();
        let mut count = if rep { get_gpr(self.vrs, rcx, asz) } else { 1 };
        let step = if self.vrs.vrs_gprs[VCPU_REGS_RFLAGS as usize] & FL_DF != 0 {
            (size as u64).wrapping_neg()
        } else {
            size as u64
        };
        let batch = (REP_BATCH_BYTES / size).max(1);
        let seg = instr.memory_segment();
        let mut done = 0;
        while count > 0 && done < batch {
            let si = get_gpr(self.vrs, rsi, asz);
            let di = get_gpr(self.vrs, rdi, asz);
            match kind {
                Kind::Movs => {
                    let v = self.read_lin(self.linear(seg, si), size)?;
                    self.write_lin(self.linear(Register::ES, di), size, v)?;
                }
                Kind::Stos => {
                    let v = get_gpr(self.vrs, rax, size);
                    self.write_lin(self.linear(Register::ES, di), size, v)?;
                }
                Kind::Lods => {
                    let v = self.read_lin(self.linear(seg, si), size)?;
                    set_gpr(self.vrs, self.mode, rax, size, v);
                }
            }
            if kind != Kind::Stos {
                set_gpr(
                    self.vrs,
                    self.mode,
                    rsi,
                    asz,
                    si.wrapping_add(step) & mask(asz),
                );
            }
            if kind != Kind::Lods {
                set_gpr(
                    self.vrs,
                    self.mode,
                    rdi,
                    asz,
                    di.wrapping_add(step) & mask(asz),
                );
            }
            done += 1;
            count -= 1;
            if rep {
                set_gpr(self.vrs, self.mode, rcx, asz, count);
            }
        }
        Ok(rep && count > 0)
    }

    /// MOV Sreg, m16: real and v8086 mode take base = selector × 16;
    /// protected modes load the descriptor from the GDT or LDT.
    fn load_segment(&mut self, instr: &Instruction, reg: Register, sel: u16) -> Result<()> {
        let rip = self.rip;
        let err = |reason| MmioError::Segment {
            rip,
            selector: sel,
            reason,
        };
        let Some(idx) = seg_index(reg).filter(|&i| i != VCPU_REGS_CS as usize) else {
            return Err(self.unsupported(instr));
        };
        let is_ss = idx == VCPU_REGS_SS as usize;
        if matches!(self.mode, Mode::Real | Mode::V86) {
            let s = &mut self.vrs.vrs_sregs[idx];
            s.vsi_sel = sel;
            s.vsi_base = u64::from(sel) << 4;
            self.sregs_changed = true;
            return Ok(());
        }
        if sel & !3 == 0 {
            if is_ss && !(self.mode == Mode::Long && self.cpl < 3) {
                return Err(err("null selector into SS"));
            }
            let s = &mut self.vrs.vrs_sregs[idx];
            s.vsi_sel = sel;
            s.vsi_ar = AR_UNUSABLE;
            self.sregs_changed = true;
            return Ok(());
        }
        let (base, limit) = if sel & 4 != 0 {
            let ldtr = self.vrs.vrs_sregs[VCPU_REGS_LDTR as usize];
            if ldtr.vsi_ar & AR_UNUSABLE != 0 || ldtr.vsi_sel & !3 == 0 {
                return Err(err("no LDT"));
            }
            (ldtr.vsi_base, ldtr.vsi_limit as u64)
        } else {
            (
                self.vrs.vrs_gdtr.vsi_base,
                self.vrs.vrs_gdtr.vsi_limit as u64,
            )
        };
        let off = u64::from(sel & !7);
        if off + 7 > limit {
            return Err(err("selector beyond the descriptor table limit"));
        }
        // Descriptor-table accesses are supervisor accesses whatever the CPL.
        let lin = self.wrap(base.wrapping_add(off));
        let mut d = [0u8; 8];
        for (i, byte) in d.iter_mut().enumerate() {
            let l = self.wrap(lin.wrapping_add(i as u64));
            let gpa = translate_gva(self.vrs, self.mem, l, Access::Read, 0).map_err(|error| {
                MmioError::PageFault {
                    rip: self.rip,
                    bytes: self.bytes.clone(),
                    gva: l,
                    error,
                }
            })?;
            *byte = self.phys_read(gpa, 1, l)? as u8;
        }
        let d = u64::from_le_bytes(d);
        let access = ((d >> 40) & 0xff) as u32;
        let (present, system, code) = (access & 0x80 != 0, access & 0x10 == 0, access & 0x8 != 0);
        // Bit 1 is W for data segments and R for code segments.
        let (writable, readable) = (access & 0x2 != 0, access & 0x2 != 0);
        if system {
            return Err(err("system descriptor"));
        }
        if is_ss && (code || !writable) {
            return Err(err("SS needs a writable data segment"));
        }
        if !is_ss && code && !readable {
            return Err(err("execute-only code segment"));
        }
        if !present {
            return Err(err("segment not present"));
        }
        // Set the descriptor's Accessed bit as the CPU does.
        let access = access | 1;
        if access as u64 != (d >> 40) & 0xff {
            let l = self.wrap(lin.wrapping_add(5));
            let gpa = translate_gva(self.vrs, self.mem, l, Access::Write, 0).map_err(|error| {
                MmioError::PageFault {
                    rip: self.rip,
                    bytes: self.bytes.clone(),
                    gva: l,
                    error,
                }
            })?;
            self.phys_write(gpa, 1, u64::from(access), l)?;
        }
        let mut limit = ((d & 0xffff) | ((d >> 32) & 0xf_0000)) as u32;
        let flags = ((d >> 52) & 0xf) as u32;
        if flags & 0x8 != 0 {
            limit = (limit << 12) | 0xfff;
        }
        let base = ((d >> 16) & 0xff_ffff) | (((d >> 56) & 0xff) << 24);
        let s = &mut self.vrs.vrs_sregs[idx];
        s.vsi_sel = sel;
        s.vsi_base = base;
        s.vsi_limit = limit;
        s.vsi_ar = access | (flags << 12);
        self.sregs_changed = true;
        Ok(())
    }
}
