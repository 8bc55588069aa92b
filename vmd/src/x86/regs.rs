//! The guest's execution mode and register file as the emulator reads and
//! writes them in `vcpu_reg_state`.
use super::mmu::{CR0_PE, CR0_PG, EFER_LMA, EFER_LME};
use iced_x86::Register;
use vmm_sys::abi::{
    vcpu_reg_state, VCPU_REGS_CR0, VCPU_REGS_CS, VCPU_REGS_DS, VCPU_REGS_EFER, VCPU_REGS_ES,
    VCPU_REGS_FS, VCPU_REGS_GS, VCPU_REGS_RFLAGS, VCPU_REGS_SS,
};

/// RFLAGS bits the emulator reads or writes.
pub(crate) const FL_CF: u64 = 1 << 0;
pub(crate) const FL_PF: u64 = 1 << 2;
pub(crate) const FL_AF: u64 = 1 << 4;
pub(crate) const FL_ZF: u64 = 1 << 6;
pub(crate) const FL_SF: u64 = 1 << 7;
pub(crate) const FL_DF: u64 = 1 << 10;
pub(crate) const FL_OF: u64 = 1 << 11;
pub(crate) const FL_VM: u64 = 1 << 17;
/// The status flags arithmetic instructions define.
pub(crate) const FL_STATUS: u64 = FL_CF | FL_PF | FL_AF | FL_ZF | FL_SF | FL_OF;

/// Segment access-rights bits (VMX layout).
pub(crate) const AR_L: u32 = 1 << 13;
pub(crate) const AR_DB: u32 = 1 << 14;
pub(crate) const AR_UNUSABLE: u32 = 1 << 16;

/// The processor mode the faulting instruction ran in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// CR0.PE clear.
    Real,
    /// RFLAGS.VM set in protected mode.
    V86,
    /// Protected mode (or compatibility mode) with a 16-bit code segment.
    Prot16,
    /// Protected mode (or compatibility mode) with a 32-bit code segment.
    Prot32,
    /// 64-bit mode: EFER.LMA and CS.L.
    Long,
}

impl Mode {
    /// The mode `vrs` describes.  EFER.LMA decides long mode; LME with
    /// CR0.PG is accepted too in case a backend reports LMA late.
    pub fn of(vrs: &vcpu_reg_state) -> Mode {
        let cr0 = vrs.vrs_crs[VCPU_REGS_CR0 as usize];
        let efer = vrs.vrs_msrs[VCPU_REGS_EFER as usize];
        let rflags = vrs.vrs_gprs[VCPU_REGS_RFLAGS as usize];
        let cs_ar = vrs.vrs_sregs[VCPU_REGS_CS as usize].vsi_ar;
        if cr0 & CR0_PE == 0 {
            return Mode::Real;
        }
        let lma = efer & EFER_LMA != 0 || (efer & EFER_LME != 0 && cr0 & CR0_PG != 0);
        if lma && cs_ar & AR_L != 0 {
            Mode::Long
        } else if !lma && rflags & FL_VM != 0 {
            Mode::V86
        } else if cs_ar & AR_DB != 0 {
            Mode::Prot32
        } else {
            Mode::Prot16
        }
    }

    /// The default operand/address size of code in this mode, in bits.
    pub fn bitness(self) -> u32 {
        match self {
            Mode::Real | Mode::V86 | Mode::Prot16 => 16,
            Mode::Prot32 => 32,
            Mode::Long => 64,
        }
    }
}

/// The `vrs_sregs` index of a segment register.
pub(crate) fn seg_index(reg: Register) -> Option<usize> {
    Some(match reg {
        Register::ES => VCPU_REGS_ES,
        Register::CS => VCPU_REGS_CS,
        Register::SS => VCPU_REGS_SS,
        Register::DS => VCPU_REGS_DS,
        Register::FS => VCPU_REGS_FS,
        Register::GS => VCPU_REGS_GS,
        _ => return None,
    } as usize)
}

/// Where a general-purpose register lives in `vrs_gprs`: (index, size in
/// bytes, whether it is one of AH/CH/DH/BH).
pub(crate) fn gpr_slot(reg: Register) -> Option<(usize, usize, bool)> {
    match reg {
        Register::AH => Some((0, 1, true)),
        Register::CH => Some((1, 1, true)),
        Register::DH => Some((2, 1, true)),
        Register::BH => Some((3, 1, true)),
        r if r.is_gpr() => Some((r.full_register().number(), r.size(), false)),
        _ => None,
    }
}

/// All-ones in the low `size` bytes.
pub(crate) fn mask(size: usize) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size * 8)) - 1
    }
}

/// `v`'s low `size` bytes, sign-extended to 64 bits.
pub(crate) fn sign_extend(v: u64, size: usize) -> u64 {
    let shift = 64 - size as u32 * 8;
    (((v << shift) as i64) >> shift) as u64
}

/// The low `size` bytes of GPR `idx`.
pub(crate) fn get_gpr(vrs: &vcpu_reg_state, idx: usize, size: usize) -> u64 {
    vrs.vrs_gprs[idx] & mask(size)
}

/// Writes the low `size` bytes of GPR `idx` as the CPU does: 8- and 16-bit
/// writes merge into the register, 32-bit writes zero-extend in 64-bit mode
/// (outside it the upper half is not architecturally visible and is kept).
pub(crate) fn set_gpr(vrs: &mut vcpu_reg_state, mode: Mode, idx: usize, size: usize, v: u64) {
    let old = vrs.vrs_gprs[idx];
    vrs.vrs_gprs[idx] = match size {
        8 => v,
        4 if mode == Mode::Long => v & 0xffff_ffff,
        _ => (old & !mask(size)) | (v & mask(size)),
    };
}

/// The value of a register operand (a GPR at its width, or a segment
/// register's selector).
pub(crate) fn get_reg(vrs: &vcpu_reg_state, reg: Register) -> Option<u64> {
    if let Some((idx, size, high)) = gpr_slot(reg) {
        let v = vrs.vrs_gprs[idx];
        return Some(if high {
            (v >> 8) & 0xff
        } else {
            v & mask(size)
        });
    }
    seg_index(reg).map(|i| vrs.vrs_sregs[i].vsi_sel as u64)
}

/// Writes a GPR operand with x86 merge rules (AH-BH into bits 8..15).
pub(crate) fn set_reg(vrs: &mut vcpu_reg_state, mode: Mode, reg: Register, v: u64) -> bool {
    match gpr_slot(reg) {
        Some((idx, _, true)) => {
            let old = vrs.vrs_gprs[idx];
            vrs.vrs_gprs[idx] = (old & !0xff00) | ((v & 0xff) << 8);
            true
        }
        Some((idx, size, false)) => {
            set_gpr(vrs, mode, idx, size, v);
            true
        }
        None => false,
    }
}

/// The base the CPU adds for segment `reg`: in 64-bit mode only FS and GS
/// have one; elsewhere the (32-bit) descriptor base, which in real and
/// v8086 mode is selector × 16.
pub(crate) fn seg_base(vrs: &vcpu_reg_state, mode: Mode, reg: Register) -> u64 {
    let Some(i) = seg_index(reg) else { return 0 };
    let base = vrs.vrs_sregs[i].vsi_base;
    match mode {
        Mode::Long if reg == Register::FS || reg == Register::GS => base,
        Mode::Long => 0,
        _ => base & 0xffff_ffff,
    }
}

/// The stack's address size in bytes: 8 in 64-bit mode, else SS.B.
pub(crate) fn stack_addr_size(vrs: &vcpu_reg_state, mode: Mode) -> usize {
    if mode == Mode::Long {
        8
    } else if vrs.vrs_sregs[VCPU_REGS_SS as usize].vsi_ar & AR_DB != 0 {
        4
    } else {
        2
    }
}

/// The arithmetic of the instructions that set status flags: returns the
/// result (masked to `size` bytes) and the new OF SF ZF AF PF CF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AluOp {
    Add,
    Adc,
    Sub,
    Sbb,
    And,
    Or,
    Xor,
}

fn szp(r: u64, size: usize) -> u64 {
    let sign = 1u64 << (size * 8 - 1);
    let mut f = 0;
    if r == 0 {
        f |= FL_ZF;
    }
    if r & sign != 0 {
        f |= FL_SF;
    }
    if (r as u8).count_ones() & 1 == 0 {
        f |= FL_PF;
    }
    f
}

pub(crate) fn alu(op: AluOp, a: u64, b: u64, size: usize, flags_in: u64) -> (u64, u64) {
    let m = mask(size);
    let (a, b) = (a & m, b & m);
    let sign = 1u64 << (size * 8 - 1);
    let carry = u64::from(flags_in & FL_CF != 0);
    match op {
        AluOp::Add | AluOp::Adc => {
            let c = if op == AluOp::Adc { carry } else { 0 };
            let wide = a as u128 + b as u128 + c as u128;
            let r = (wide as u64) & m;
            let mut f = szp(r, size);
            if wide > m as u128 {
                f |= FL_CF;
            }
            if (a ^ r) & (b ^ r) & sign != 0 {
                f |= FL_OF;
            }
            if (a ^ b ^ r) & 0x10 != 0 {
                f |= FL_AF;
            }
            (r, f)
        }
        AluOp::Sub | AluOp::Sbb => {
            let c = if op == AluOp::Sbb { carry } else { 0 };
            let r = a.wrapping_sub(b).wrapping_sub(c) & m;
            let mut f = szp(r, size);
            if (b as u128 + c as u128) > a as u128 {
                f |= FL_CF;
            }
            if (a ^ b) & (a ^ r) & sign != 0 {
                f |= FL_OF;
            }
            if (a ^ b ^ r) & 0x10 != 0 {
                f |= FL_AF;
            }
            (r, f)
        }
        AluOp::And | AluOp::Or | AluOp::Xor => {
            let r = match op {
                AluOp::And => a & b,
                AluOp::Or => a | b,
                _ => a ^ b,
            };
            // CF and OF cleared; AF is undefined and cleared as Intel CPUs do.
            (r, szp(r, size))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_of_known_additions_and_subtractions() {
        // 0x7fffffff + 1: signed overflow, half carry, sign; no carry.
        let (r, f) = alu(AluOp::Add, 0x7fff_ffff, 1, 4, 0);
        assert_eq!(r, 0x8000_0000);
        assert_eq!(f, FL_OF | FL_SF | FL_AF | FL_PF);
        // 0xff + 1 (byte): carry, zero, half carry, parity of 0.
        let (r, f) = alu(AluOp::Add, 0xff, 1, 1, 0);
        assert_eq!(r, 0);
        assert_eq!(f, FL_CF | FL_ZF | FL_AF | FL_PF);
        // 0 - 1: borrow, sign, half borrow, parity of 0xff.
        let (r, f) = alu(AluOp::Sub, 0, 1, 2, 0);
        assert_eq!(r, 0xffff);
        assert_eq!(f, FL_CF | FL_SF | FL_AF | FL_PF);
        // 0x80000000 - 1: signed overflow.
        let (r, f) = alu(AluOp::Sub, 0x8000_0000, 1, 4, 0);
        assert_eq!(r, 0x7fff_ffff);
        assert_eq!(f, FL_OF | FL_AF | FL_PF);
        // Equal operands.
        assert_eq!(alu(AluOp::Sub, 42, 42, 8, 0), (0, FL_ZF | FL_PF));
        // ADC/SBB take CF in.
        assert_eq!(alu(AluOp::Adc, 1, 1, 1, FL_CF).0, 3);
        assert_eq!(alu(AluOp::Sbb, 1, 0, 1, FL_CF), (0, FL_ZF | FL_PF));
        let (r, f) = alu(AluOp::Sbb, 0, 0xffff_ffff, 4, FL_CF);
        assert_eq!((r, f & FL_CF), (0, FL_CF));
        // Logic: CF OF AF cleared.
        assert_eq!(alu(AluOp::And, 0xf0, 0x0f, 1, 0), (0, FL_ZF | FL_PF));
        assert_eq!(alu(AluOp::Or, 0x80, 0x01, 1, 0), (0x81, FL_SF | FL_PF));
        assert_eq!(alu(AluOp::Xor, 0x7, 0x1, 1, 0), (0x6, FL_PF));
        assert_eq!(alu(AluOp::Xor, 0x7, 0x0, 1, 0), (0x7, 0));
    }

    #[test]
    fn register_merging() {
        let mut vrs = vcpu_reg_state::default();
        vrs.vrs_gprs[0] = 0x1122_3344_5566_7788;
        set_reg(&mut vrs, Mode::Long, Register::AH, 0xab);
        assert_eq!(vrs.vrs_gprs[0], 0x1122_3344_5566_ab88);
        set_reg(&mut vrs, Mode::Long, Register::AL, 0x1cd);
        assert_eq!(vrs.vrs_gprs[0], 0x1122_3344_5566_abcd);
        set_reg(&mut vrs, Mode::Long, Register::AX, 0xbeef);
        assert_eq!(vrs.vrs_gprs[0], 0x1122_3344_5566_beef);
        set_reg(&mut vrs, Mode::Prot32, Register::EAX, 0xdead_beef);
        assert_eq!(vrs.vrs_gprs[0], 0x1122_3344_dead_beef);
        set_reg(&mut vrs, Mode::Long, Register::EAX, 0xcafe_f00d);
        assert_eq!(vrs.vrs_gprs[0], 0xcafe_f00d);
        vrs.vrs_gprs[7] = 0xffff;
        set_reg(&mut vrs, Mode::Long, Register::DIL, 0x12);
        assert_eq!(vrs.vrs_gprs[7], 0xff12);
        set_reg(&mut vrs, Mode::Long, Register::R15L, 0x34);
        assert_eq!(vrs.vrs_gprs[15], 0x34);
        assert_eq!(get_reg(&vrs, Register::AH), Some(0xf0));
        assert_eq!(get_reg(&vrs, Register::DIL), Some(0x12));
        assert_eq!(sign_extend(0x80, 1), 0xffff_ffff_ffff_ff80);
        assert_eq!(sign_extend(0x7fff, 2), 0x7fff);
    }
}
