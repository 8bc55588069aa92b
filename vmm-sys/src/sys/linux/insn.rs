//! Instruction decoding for the shim's exit records: the length and form of
//! the IN/OUT or memory instruction that caused a KVM exit, which vmm(4)
//! reports and KVM does not.
use super::mmu;
use crate::abi::{VCPU_REGS_NGPRS, VCPU_REGS_RFLAGS, VCPU_REGS_RIP};
use crate::GuestMemory;
use iced_x86::{
    Code, Decoder, DecoderOptions, Instruction, InstructionInfoFactory, OpAccess, Register,
};
use kvm_bindings::{kvm_regs, kvm_sregs};

const CR0_PE: u64 = 1;
const EFER_LMA: u64 = 1 << 10;
const RFLAGS_VM: u64 = 1 << 17;
const RFLAGS_DF: u64 = 1 << 10;

/// Code size of the guest: 16, 32 or 64.
pub fn bitness(sregs: &kvm_sregs, rflags: u64) -> u32 {
    if sregs.cr0 & CR0_PE == 0 || rflags & RFLAGS_VM != 0 {
        16
    } else if sregs.efer & EFER_LMA != 0 && sregs.cs.l != 0 {
        64
    } else if sregs.cs.db != 0 {
        32
    } else {
        16
    }
}

/// Linear address of `ip` in the code segment.
pub fn code_linear(sregs: &kvm_sregs, bits: u32, ip: u64) -> u64 {
    match bits {
        64 => ip,
        32 => sregs.cs.base.wrapping_add(ip & 0xffff_ffff) & 0xffff_ffff,
        _ => sregs.cs.base.wrapping_add(ip & 0xffff) & 0xffff_ffff,
    }
}

/// Up to 15 instruction bytes at `ip`; the count is short where the next
/// page is not mapped.
pub fn fetch(mem: &GuestMemory, sregs: &kvm_sregs, bits: u32, ip: u64) -> ([u8; 15], usize) {
    let mut buf = [0u8; 15];
    let n = mmu::read_linear(mem, sregs, code_linear(sregs, bits, ip), &mut buf);
    (buf, n)
}

/// The 15 bytes before and the 15 bytes from `ip`, read once: enough to
/// decode the instruction at `ip` or any instruction that ends there.
pub struct Window {
    bytes: [u8; 30],
    /// Valid bytes are `bytes[lo..hi]`; index 15 is `ip`.
    lo: usize,
    hi: usize,
    ip: u64,
    bits: u32,
}

impl Window {
    pub fn read(mem: &GuestMemory, sregs: &kvm_sregs, bits: u32, ip: u64) -> Window {
        let mut bytes = [0u8; 30];
        let la = code_linear(sregs, bits, ip);
        let hi = 15 + mmu::read_linear(mem, sregs, la, &mut bytes[15..]);
        // Backward: the part in ip's own page first, then the page before.
        // With ip at the start of a page the part in its own page is empty
        // and all 15 bytes come from the page before (an OUT or store that
        // ends on the boundary); nothing lies before linear 0.
        let in_page = ((la & 0xfff) as usize).min(15);
        let mut lo = 15;
        if in_page == 0
            || mmu::read_linear(
                mem,
                sregs,
                la - in_page as u64,
                &mut bytes[15 - in_page..15],
            ) == in_page
        {
            lo = 15 - in_page;
            let rest = 15 - in_page;
            if let Some(start) = la.checked_sub(15) {
                if rest > 0 && mmu::read_linear(mem, sregs, start, &mut bytes[..rest]) == rest {
                    lo = 0;
                }
            }
        }
        Window {
            bytes,
            lo,
            hi,
            ip,
            bits,
        }
    }

    /// The instruction at `ip`.
    pub fn at_ip(&self) -> Option<Instruction> {
        decode(&self.bytes[15..self.hi], self.bits, self.ip)
    }

    /// The instruction of exactly `len` bytes that ends at `ip`.
    pub fn ending_at_ip(&self, len: usize) -> Option<Instruction> {
        if len > 15 || 15 - len < self.lo {
            return None;
        }
        let i = decode(
            &self.bytes[15 - len..15],
            self.bits,
            self.ip.wrapping_sub(len as u64),
        )?;
        (i.len() == len).then_some(i)
    }
}

/// Decodes one instruction from `bytes` at `ip`; None if invalid or longer
/// than the bytes available.
pub fn decode(bytes: &[u8], bits: u32, ip: u64) -> Option<Instruction> {
    let mut d = Decoder::with_ip(bits, bytes, ip, DecoderOptions::NONE);
    let i = d.decode();
    (!i.is_invalid() && i.len() <= bytes.len()).then_some(i)
}

/// The form of a port I/O instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortIo {
    pub dir_in: bool,
    pub size: u8,
    /// The port when encoded as an immediate.
    pub imm_port: Option<u16>,
    pub string: bool,
    pub rep: bool,
}

pub fn port_io(i: &Instruction) -> Option<PortIo> {
    let (dir_in, size, imm, string) = match i.code() {
        Code::In_AL_imm8 => (true, 1, true, false),
        Code::In_AX_imm8 => (true, 2, true, false),
        Code::In_EAX_imm8 => (true, 4, true, false),
        Code::In_AL_DX => (true, 1, false, false),
        Code::In_AX_DX => (true, 2, false, false),
        Code::In_EAX_DX => (true, 4, false, false),
        Code::Out_imm8_AL => (false, 1, true, false),
        Code::Out_imm8_AX => (false, 2, true, false),
        Code::Out_imm8_EAX => (false, 4, true, false),
        Code::Out_DX_AL => (false, 1, false, false),
        Code::Out_DX_AX => (false, 2, false, false),
        Code::Out_DX_EAX => (false, 4, false, false),
        Code::Insb_m8_DX => (true, 1, false, true),
        Code::Insw_m16_DX => (true, 2, false, true),
        Code::Insd_m32_DX => (true, 4, false, true),
        Code::Outsb_DX_m8 => (false, 1, false, true),
        Code::Outsw_DX_m16 => (false, 2, false, true),
        Code::Outsd_DX_m32 => (false, 4, false, true),
        _ => return None,
    };
    Some(PortIo {
        dir_in,
        size,
        imm_port: imm.then(|| i.immediate8() as u16),
        string,
        rep: i.has_rep_prefix() || i.has_repne_prefix(),
    })
}

/// Whether `i` is the port I/O instruction KVM reported.
pub fn matches_port_io(i: &Instruction, dir_in: bool, size: u8, port: u16, rdx: u64) -> bool {
    match port_io(i) {
        Some(p) => {
            p.dir_in == dir_in
                && p.size == size
                && match p.imm_port {
                    Some(imm) => imm == port,
                    None => rdx as u16 == port,
                }
        }
        None => false,
    }
}

/// Value of register `reg` (any width) in `r`, segment registers as bases.
pub fn reg_value(reg: Register, r: &kvm_regs, s: &kvm_sregs, bits: u32) -> Option<u64> {
    let seg = |base: u64, always: bool| Some(if bits == 64 && !always { 0 } else { base });
    let full = match reg {
        Register::ES => return seg(s.es.base, false),
        Register::CS => return seg(s.cs.base, false),
        Register::SS => return seg(s.ss.base, false),
        Register::DS => return seg(s.ds.base, false),
        Register::FS => return seg(s.fs.base, true),
        Register::GS => return seg(s.gs.base, true),
        Register::RIP | Register::EIP => return Some(r.rip),
        Register::None => return Some(0),
        r => r,
    };
    if matches!(
        full,
        Register::AH | Register::CH | Register::DH | Register::BH
    ) {
        let base = match full {
            Register::AH => r.rax,
            Register::CH => r.rcx,
            Register::DH => r.rdx,
            _ => r.rbx,
        };
        return Some((base >> 8) & 0xff);
    }
    let v = match full.full_register() {
        Register::RAX => r.rax,
        Register::RCX => r.rcx,
        Register::RDX => r.rdx,
        Register::RBX => r.rbx,
        Register::RSP => r.rsp,
        Register::RBP => r.rbp,
        Register::RSI => r.rsi,
        Register::RDI => r.rdi,
        Register::R8 => r.r8,
        Register::R9 => r.r9,
        Register::R10 => r.r10,
        Register::R11 => r.r11,
        Register::R12 => r.r12,
        Register::R13 => r.r13,
        Register::R14 => r.r14,
        Register::R15 => r.r15,
        _ => return None,
    };
    let size = full.size();
    Some(if size >= 8 {
        v
    } else {
        v & ((1u64 << (size * 8)) - 1)
    })
}

/// Whether KVM's MMIO exit for `len` bytes at `gpa` is the first one of a
/// write of `n` bytes at `g`: the whole write, or its first fragment (KVM
/// splits writes into pieces of at most 8 bytes, and at page boundaries,
/// where the part in the first page may have gone to RAM without an exit).
/// Anything looser lets a shorter decoding win while searching backwards
/// from RIP: `89 53 22` (a 4-byte store) "covers" the 2-byte store of
/// `66 89 53 22`.
pub fn first_fragment(g: u64, n: usize, gpa: u64, len: usize) -> bool {
    let (n, len) = (n as u64, len as u64);
    let end = g + n;
    let next_page = (g | 0xfff) + 1;
    let starts = gpa == g || (gpa == next_page && next_page < end);
    starts && gpa + len <= end && (gpa + len == end || len == 8 || (gpa + len) & 0xfff == 0)
}

/// The guest-physical addresses that `i` writes, computed from registers
/// `r` as they were before it ran.
pub fn written_gpas(
    i: &Instruction,
    r: &kvm_regs,
    s: &kvm_sregs,
    bits: u32,
    mem: &GuestMemory,
) -> Vec<(u64, usize)> {
    let mut factory = InstructionInfoFactory::new();
    let info = factory.info(i);
    let mut out = Vec::new();
    for um in info.used_memory() {
        let writes = matches!(
            um.access(),
            OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
        );
        if !writes {
            continue;
        }
        let la = um.virtual_address(0, |reg, _, _| reg_value(reg, r, s, bits));
        let Some(la) = la else { continue };
        let la = if bits == 64 { la } else { la & 0xffff_ffff };
        // iced reports a REP string operand as of unknown size: one
        // element is what each of KVM's exits covers.
        let size = match um.memory_size().size() {
            0 => i.memory_size().size(),
            n => n,
        };
        let Some(gpa) = mmu::translate(mem, s, la) else {
            continue;
        };
        out.push((gpa, size));
        // A write across a page boundary goes to two pages that need not
        // be adjacent in guest-physical memory: KVM handles each page's
        // part on its own, so report the second part at its own GPA.
        let first = 0x1000 - (la & 0xfff) as usize;
        if size > first {
            let next = la.wrapping_add(first as u64);
            let next = if bits == 64 { next } else { next & 0xffff_ffff };
            match mmu::translate(mem, s, next) {
                Some(g2) if g2 == gpa + first as u64 => {}
                Some(g2) => {
                    out.pop();
                    out.extend([(gpa, first), (g2, size - first)]);
                }
                None => {
                    out.pop();
                    out.push((gpa, first));
                }
            }
        }
    }
    out
}

/// Registers as they were before `i` ran, from the registers after KVM's
/// emulator completed it: undoes the pointer and count updates of string
/// stores and the stack pointer update of pushes.  `restarted` is set when
/// a REP string instruction stopped with iterations left (RIP stayed on it).
pub fn undo_side_effects(i: &Instruction, after: &kvm_regs, bits: u32) -> kvm_regs {
    let mut r = *after;
    let asz = if i.code().is_string_instruction() {
        address_size(i, bits)
    } else {
        bits
    };
    let amask = if asz == 64 {
        u64::MAX
    } else {
        (1u64 << asz) - 1
    };
    let step_back = |v: u64, n: u64, df: bool| -> u64 {
        let nv = if df {
            v.wrapping_add(n)
        } else {
            v.wrapping_sub(n)
        };
        (v & !amask) | (nv & amask)
    };
    let df = r.rflags & RFLAGS_DF != 0;
    let size = i.memory_size().size() as u64;
    match i.mnemonic() {
        iced_x86::Mnemonic::Stosb
        | iced_x86::Mnemonic::Stosw
        | iced_x86::Mnemonic::Stosd
        | iced_x86::Mnemonic::Stosq => {
            r.rdi = step_back(r.rdi, size, df);
        }
        iced_x86::Mnemonic::Movsb
        | iced_x86::Mnemonic::Movsw
        | iced_x86::Mnemonic::Movsd
        | iced_x86::Mnemonic::Movsq => {
            r.rdi = step_back(r.rdi, size, df);
            r.rsi = step_back(r.rsi, size, df);
        }
        iced_x86::Mnemonic::Push | iced_x86::Mnemonic::Pop => {
            // PUSH moved RSP down, POP (to an MMIO operand) up.
            // The stack pointer is SP, ESP or RSP after the code size (as
            // iced assumes for written_gpas; SS.B is not consulted): a
            // real-mode PUSH with SP=0 leaves SP=0xfffe, not 0x1_0000.
            let delta = i.stack_pointer_increment() as i64 as u64;
            let smask = match bits {
                64 => u64::MAX,
                32 => 0xffff_ffff,
                _ => 0xffff,
            };
            let sp = r.rsp.wrapping_sub(delta);
            r.rsp = (r.rsp & !smask) | (sp & smask);
        }
        _ => {}
    }
    if i.code().is_string_instruction() && (i.has_rep_prefix() || i.has_repne_prefix()) {
        let c = (r.rcx & amask).wrapping_add(1) & amask;
        r.rcx = (r.rcx & !amask) | c;
    }
    r
}

fn address_size(i: &Instruction, bits: u32) -> u32 {
    use iced_x86::OpKind;
    for n in 0..i.op_count() {
        match i.op_kind(n) {
            OpKind::MemoryESRDI | OpKind::MemorySegRSI | OpKind::MemorySegRDI => return 64,
            OpKind::MemoryESEDI | OpKind::MemorySegESI | OpKind::MemorySegEDI => return 32,
            OpKind::MemoryESDI | OpKind::MemorySegSI | OpKind::MemorySegDI => return 16,
            _ => {}
        }
    }
    match i.memory_base() {
        Register::RDI | Register::RSI => 64,
        Register::EDI | Register::ESI => 32,
        Register::DI | Register::SI => 16,
        _ => bits,
    }
}

/// A load from MMIO whose only effects are a destination register and RIP:
/// MOV, MOVZX and MOVSX into a general-purpose register.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    dest: Register,
    /// Bytes read from memory.
    size: usize,
    kind: LoadKind,
    next_ip: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LoadKind {
    Mov,
    Zero,
    Sign,
}

impl Load {
    pub fn of(i: &Instruction) -> Option<Load> {
        use iced_x86::{Mnemonic, OpKind};
        if i.op_count() != 2 || i.op0_kind() != OpKind::Register || i.op1_kind() != OpKind::Memory {
            return None;
        }
        let kind = match i.mnemonic() {
            Mnemonic::Mov => LoadKind::Mov,
            Mnemonic::Movzx => LoadKind::Zero,
            Mnemonic::Movsx | Mnemonic::Movsxd => LoadKind::Sign,
            _ => return None,
        };
        let dest = i.op0_register();
        if !dest.is_gpr() {
            return None;
        }
        Some(Load {
            dest,
            size: i.memory_size().size(),
            kind,
            next_ip: i.next_ip(),
        })
    }

    /// The memory data that makes KVM's completion of this load produce
    /// exactly the registers `want` (vmm(4) GPR order), given the registers
    /// `pre` before it; None if no data does.
    pub fn data_for(&self, pre: &kvm_regs, want: &[u64; VCPU_REGS_NGPRS as usize]) -> Option<u64> {
        let mut before = [0u64; VCPU_REGS_NGPRS as usize];
        super::regs::gprs_from_kvm(pre, &mut before);
        if want[VCPU_REGS_RIP as usize] != self.next_ip
            || want[VCPU_REGS_RFLAGS as usize] != before[VCPU_REGS_RFLAGS as usize]
        {
            return None;
        }
        let high8 = matches!(
            self.dest,
            Register::AH | Register::CH | Register::DH | Register::BH
        );
        // AH..BH belong to RAX..RBX; iced numbers GPRs in encoding order.
        let slot = self.dest.full_register().number();
        for (i, (&b, &w)) in before.iter().zip(want.iter()).enumerate() {
            if i != slot && i != VCPU_REGS_RIP as usize && b != w {
                return None;
            }
        }
        let old = before[slot];
        let new = want[slot];
        let dsize = self.dest.size();
        let mem_mask = mask(self.size);
        // What the destination register becomes for data d.
        let result = |d: u64| -> u64 {
            let v = match self.kind {
                LoadKind::Mov | LoadKind::Zero => d & mem_mask,
                LoadKind::Sign => sign_extend(d & mem_mask, self.size) & mask(dsize),
            };
            if high8 {
                (old & !0xff00) | ((v & 0xff) << 8)
            } else if dsize == 4 {
                v & 0xffff_ffff
            } else if dsize == 8 {
                v
            } else {
                (old & !mask(dsize)) | (v & mask(dsize))
            }
        };
        let d = if high8 {
            (new >> 8) & 0xff
        } else {
            new & mem_mask
        };
        (result(d) == new).then_some(d)
    }
}

fn mask(bytes: usize) -> u64 {
    if bytes >= 8 {
        u64::MAX
    } else {
        (1u64 << (bytes * 8)) - 1
    }
}

fn sign_extend(v: u64, bytes: usize) -> u64 {
    let shift = 64 - bytes * 8;
    (((v << shift) as i64) >> shift) as u64
}

/// rCX of a string instruction, masked to its address size.
pub fn string_count(i: &Instruction, r: &kvm_regs, bits: u32) -> u64 {
    let asz = address_size(i, bits);
    let mask = if asz == 64 {
        u64::MAX
    } else {
        (1u64 << asz) - 1
    };
    r.rcx & mask
}

/// Registers before an OUTS batch of `count` elements that KVM's emulator
/// has already carried out: rSI (and, with REP, rCX) moved back.
pub fn undo_string_out(i: &Instruction, after: &kvm_regs, bits: u32, count: u64) -> kvm_regs {
    let mut r = *after;
    let asz = address_size(i, bits);
    let mask = if asz == 64 {
        u64::MAX
    } else {
        (1u64 << asz) - 1
    };
    let size = port_io(i).map_or(1, |p| p.size as u64);
    let step = count.wrapping_mul(size);
    let si = if r.rflags & RFLAGS_DF != 0 {
        r.rsi.wrapping_add(step)
    } else {
        r.rsi.wrapping_sub(step)
    };
    r.rsi = (r.rsi & !mask) | (si & mask);
    if i.has_rep_prefix() || i.has_repne_prefix() {
        r.rcx = (r.rcx & !mask) | (r.rcx.wrapping_add(count) & mask);
    }
    r
}

#[cfg(test)]
mod tests;
