//! What vmd does with an MMIO-assist exit before it can emulate anything:
//! fetch the instruction, decode it, work out the guest-physical address it
//! touches (effective address + segment base, then a walk of the guest's
//! page tables), and read and write guest registers by name.  The suite
//! uses these to play vmd's part against the exit records of vmm(4).
use crate::Result;
use iced_x86::{Decoder, DecoderOptions, Instruction, OpKind, Register};
use vmm_sys::abi::*;
use vmm_sys::GuestMemory;

const CR0_PE: u64 = 1 << 0;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LMA: u64 = 1 << 10;
const PTE_P: u64 = 1 << 0;
const PTE_PS: u64 = 1 << 7;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Access-rights bits of a code segment: L (64-bit) and D/B (32-bit).
const AR_L: u32 = 1 << 13;
const AR_DB: u32 = 1 << 14;

fn cr(vrs: &vcpu_reg_state, i: u32) -> u64 {
    vrs.vrs_crs[i as usize]
}

/// The code size of the vCPU in `vrs`: 16, 32 or 64.
pub fn bitness(vrs: &vcpu_reg_state) -> u32 {
    let cs = &vrs.vrs_sregs[VCPU_REGS_CS as usize];
    if cr(vrs, VCPU_REGS_CR0) & CR0_PE == 0 {
        16
    } else if vrs.vrs_msrs[VCPU_REGS_EFER as usize] & EFER_LMA != 0 && cs.vsi_ar & AR_L != 0 {
        64
    } else if cs.vsi_ar & AR_DB != 0 {
        32
    } else {
        16
    }
}

/// Guest linear → guest physical, as vmd's `translate_gva`: no paging
/// (real mode, unpaged protected mode) or 4-level paging (long mode, with
/// 4 KiB, 2 MiB and 1 GiB pages).  Other paging modes are not needed by
/// the suite's guests and are refused.
pub fn translate(mem: &GuestMemory, vrs: &vcpu_reg_state, la: u64) -> Result<u64> {
    let cr0 = cr(vrs, VCPU_REGS_CR0);
    if cr0 & CR0_PE == 0 || cr0 & CR0_PG == 0 {
        return Ok(la & 0xffff_ffff);
    }
    if vrs.vrs_msrs[VCPU_REGS_EFER as usize] & EFER_LMA == 0 {
        let kind = if cr(vrs, VCPU_REGS_CR4) & CR4_PAE != 0 {
            "PAE"
        } else {
            "2-level"
        };
        return Err(format!("translate: {kind} paging is not supported"));
    }
    let mut table = cr(vrs, VCPU_REGS_CR3) & ADDR_MASK;
    for (level, shift) in [(4, 39u32), (3, 30), (2, 21), (1, 12)] {
        let slot = table + ((la >> shift) & 0x1ff) * 8;
        let e = mem
            .read_u64(slot)
            .map_err(|e| format!("translate 0x{la:x}: level {level} entry: {e}"))?;
        if e & PTE_P == 0 {
            return Err(format!(
                "translate 0x{la:x}: level {level} entry at 0x{slot:x} is not present"
            ));
        }
        if (level == 3 || level == 2) && e & PTE_PS != 0 {
            let size = 1u64 << shift;
            return Ok((e & ADDR_MASK & !(size - 1)) | (la & (size - 1)));
        }
        table = e & ADDR_MASK;
    }
    Ok(table | (la & 0xfff))
}

/// The base of segment register `seg` as the CPU uses it in this mode: 0
/// for ES, CS, SS and DS in 64-bit mode.
pub fn segment_base(vrs: &vcpu_reg_state, seg: Register) -> Option<u64> {
    let idx = match seg {
        Register::ES => VCPU_REGS_ES,
        Register::CS => VCPU_REGS_CS,
        Register::SS => VCPU_REGS_SS,
        Register::DS => VCPU_REGS_DS,
        Register::FS => VCPU_REGS_FS,
        Register::GS => VCPU_REGS_GS,
        _ => return None,
    };
    if bitness(vrs) == 64 && !matches!(seg, Register::FS | Register::GS) {
        return Some(0);
    }
    Some(vrs.vrs_sregs[idx as usize].vsi_base)
}

/// The `vrs_gprs` slot of a general-purpose register of any width, and
/// the bit position of its low bit (8 for AH, CH, DH, BH).
fn gpr_slot(reg: Register) -> Option<(usize, u32)> {
    let high = match reg {
        Register::AH => Some(VCPU_REGS_RAX),
        Register::CH => Some(VCPU_REGS_RCX),
        Register::DH => Some(VCPU_REGS_RDX),
        Register::BH => Some(VCPU_REGS_RBX),
        _ => None,
    };
    if let Some(i) = high {
        return Some((i as usize, 8));
    }
    let i = match reg.full_register() {
        Register::RAX => VCPU_REGS_RAX,
        Register::RCX => VCPU_REGS_RCX,
        Register::RDX => VCPU_REGS_RDX,
        Register::RBX => VCPU_REGS_RBX,
        Register::RSP => VCPU_REGS_RSP,
        Register::RBP => VCPU_REGS_RBP,
        Register::RSI => VCPU_REGS_RSI,
        Register::RDI => VCPU_REGS_RDI,
        Register::R8 => VCPU_REGS_R8,
        Register::R9 => VCPU_REGS_R9,
        Register::R10 => VCPU_REGS_R10,
        Register::R11 => VCPU_REGS_R11,
        Register::R12 => VCPU_REGS_R12,
        Register::R13 => VCPU_REGS_R13,
        Register::R14 => VCPU_REGS_R14,
        Register::R15 => VCPU_REGS_R15,
        Register::RIP => VCPU_REGS_RIP,
        _ => return None,
    };
    Some((i as usize, 0))
}

fn mask(bytes: usize) -> u64 {
    if bytes >= 8 {
        u64::MAX
    } else {
        (1u64 << (bytes * 8)) - 1
    }
}

/// The value of a general-purpose register (any width) in `vrs`.
pub fn reg_get(vrs: &vcpu_reg_state, reg: Register) -> Option<u64> {
    let (i, shift) = gpr_slot(reg)?;
    Some((vrs.vrs_gprs[i] >> shift) & mask(reg.size()))
}

/// Writes a general-purpose register as an instruction with that
/// destination does: 8- and 16-bit writes merge, 32-bit writes clear the
/// upper half, 64-bit writes replace.
pub fn reg_set(vrs: &mut vcpu_reg_state, reg: Register, value: u64) -> Result<()> {
    let (i, shift) = gpr_slot(reg).ok_or_else(|| format!("{reg:?} is not a GPR"))?;
    let size = reg.size();
    let m = mask(size);
    let r = &mut vrs.vrs_gprs[i];
    *r = match size {
        4 => value & m,
        8 => value,
        _ => (*r & !(m << shift)) | ((value & m) << shift),
    };
    Ok(())
}

/// Reads up to `n` instruction bytes at CS:RIP through the page tables,
/// stopping at the end of the page, as vmd does on VMX hosts.
pub fn fetch(mem: &GuestMemory, vrs: &vcpu_reg_state, n: usize) -> Result<Vec<u8>> {
    let rip = vrs.vrs_gprs[VCPU_REGS_RIP as usize];
    let bits = bitness(vrs);
    let ip = match bits {
        64 => rip,
        32 => rip & 0xffff_ffff,
        _ => rip & 0xffff,
    };
    let la = segment_base(vrs, Register::CS).unwrap().wrapping_add(ip);
    let la = if bits == 64 { la } else { la & 0xffff_ffff };
    let gpa = translate(mem, vrs, la)?;
    let n = n.min((0x1000 - (la & 0xfff)) as usize);
    let mut buf = vec![0u8; n];
    mem.read(gpa, &mut buf).map_err(|e| e.to_string())?;
    Ok(buf)
}

/// Decodes one instruction in the vCPU's current mode at its RIP.
pub fn decode(vrs: &vcpu_reg_state, bytes: &[u8]) -> Result<Instruction> {
    let rip = vrs.vrs_gprs[VCPU_REGS_RIP as usize];
    let mut d = Decoder::with_ip(bitness(vrs), bytes, rip, DecoderOptions::NONE);
    let i = d.decode();
    if i.is_invalid() {
        return Err(format!(
            "cannot decode {:02x?} at rip 0x{rip:x} ({}-bit)",
            bytes,
            bitness(vrs)
        ));
    }
    Ok(i)
}

/// The indexes of `i`'s memory operands (two for MOVS and CMPS).
pub fn memory_operands(i: &Instruction) -> Vec<u32> {
    (0..i.op_count())
        .filter(|&n| {
            matches!(
                i.op_kind(n),
                OpKind::Memory
                    | OpKind::MemorySegSI
                    | OpKind::MemorySegESI
                    | OpKind::MemorySegRSI
                    | OpKind::MemorySegDI
                    | OpKind::MemorySegEDI
                    | OpKind::MemorySegRDI
                    | OpKind::MemoryESDI
                    | OpKind::MemoryESEDI
                    | OpKind::MemoryESRDI
            )
        })
        .collect()
}

/// The index of `i`'s (first) memory operand.
pub fn memory_operand(i: &Instruction) -> Option<u32> {
    memory_operands(i).first().copied()
}

/// The linear address of `i`'s memory operand `op` with the registers in
/// `vrs`.
pub fn linear_address_of(i: &Instruction, op: u32, vrs: &vcpu_reg_state) -> Result<u64> {
    let la = i
        .virtual_address(op, 0, |reg, _, _| {
            segment_base(vrs, reg).or_else(|| reg_get(vrs, reg))
        })
        .ok_or_else(|| format!("cannot compute the address of {:?}", i.code()))?;
    Ok(if bitness(vrs) == 64 {
        la
    } else {
        la & 0xffff_ffff
    })
}

/// The linear address of `i`'s (first) memory operand.
pub fn linear_address(i: &Instruction, vrs: &vcpu_reg_state) -> Result<u64> {
    let op = memory_operand(i).ok_or_else(|| format!("{:?} has no memory operand", i.code()))?;
    linear_address_of(i, op, vrs)
}

/// The guest-physical address of `i`'s (first) memory operand.
pub fn operand_gpa(mem: &GuestMemory, i: &Instruction, vrs: &vcpu_reg_state) -> Result<u64> {
    translate(mem, vrs, linear_address(i, vrs)?)
}

/// The guest-physical addresses of all of `i`'s memory operands.
pub fn operand_gpas(mem: &GuestMemory, i: &Instruction, vrs: &vcpu_reg_state) -> Result<Vec<u64>> {
    memory_operands(i)
        .into_iter()
        .map(|op| translate(mem, vrs, linear_address_of(i, op, vrs)?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{flat16, long64, prot32, seg};
    use iced_x86::Register::*;

    fn mem() -> GuestMemory {
        GuestMemory::anonymous(&[(0, 0x10_0000)]).unwrap()
    }

    #[test]
    fn translate_without_paging_is_identity() {
        let m = mem();
        assert_eq!(translate(&m, &flat16(0), 0xf_fff0).unwrap(), 0xf_fff0);
        assert_eq!(translate(&m, &prot32(0), 0xf000_0010).unwrap(), 0xf000_0010);
    }

    #[test]
    fn translate_walks_four_levels() {
        let m = mem();
        let v = long64(0);
        // PML4 at 0x70000 → PDPT 0x71000 → PD 0x72000 → PT 0x73000.
        let cr3 = v.vrs_crs[VCPU_REGS_CR3 as usize];
        m.write_u64(cr3 + 0x80 * 8, 0x71000 | 7).unwrap(); // va bits 47..39 = 0x80
        m.write_u64(0x71000 + 8, 0x72000 | 7).unwrap(); // 1 GiB slot 1
        m.write_u64(0x72000 + 3 * 8, 0x73000 | 7).unwrap(); // 2 MiB slot 3
        m.write_u64(0x73000 + 5 * 8, 0xf000_2000 | 7).unwrap(); // 4 KiB slot 5
        let va = (0x80u64 << 39) | (1 << 30) | (3 << 21) | (5 << 12) | 0x123;
        assert_eq!(translate(&m, &v, va).unwrap(), 0xf000_2123);
        // 2 MiB page in slot 4, 1 GiB page in PDPT slot 2.
        m.write_u64(0x72000 + 4 * 8, 0x4000_0000 | 0x87).unwrap();
        let va2 = (0x80u64 << 39) | (1 << 30) | (4 << 21) | 0x1_2345;
        assert_eq!(translate(&m, &v, va2).unwrap(), 0x4001_2345);
        m.write_u64(0x71000 + 2 * 8, 0xc000_0000 | 0x87).unwrap();
        let va3 = (0x80u64 << 39) | (2 << 30) | 0x2345_6789;
        assert_eq!(translate(&m, &v, va3).unwrap(), 0xe345_6789);
        // Not present.
        assert!(translate(&m, &v, (0x81u64 << 39) | 0x1000).is_err());
        assert!(translate(&m, &v, va + 0x1000).is_err());
    }

    #[test]
    fn translate_refuses_other_paging_modes() {
        let mut v = prot32(0);
        v.vrs_crs[VCPU_REGS_CR0 as usize] |= 1 << 31;
        assert!(translate(&mem(), &v, 0x1000).is_err());
    }

    #[test]
    fn register_writes_merge_like_the_cpu() {
        let mut v = long64(0);
        v.vrs_gprs[VCPU_REGS_RAX as usize] = 0x1111_2222_3333_4444;
        reg_set(&mut v, AL, 0xab).unwrap();
        assert_eq!(v.vrs_gprs[0], 0x1111_2222_3333_44ab);
        reg_set(&mut v, AH, 0xcd).unwrap();
        assert_eq!(v.vrs_gprs[0], 0x1111_2222_3333_cdab);
        reg_set(&mut v, AX, 0x9876).unwrap();
        assert_eq!(v.vrs_gprs[0], 0x1111_2222_3333_9876);
        reg_set(&mut v, EAX, 0xdead_beef).unwrap();
        assert_eq!(v.vrs_gprs[0], 0xdead_beef);
        reg_set(&mut v, R9, u64::MAX).unwrap();
        assert_eq!(reg_get(&v, R9D), Some(0xffff_ffff));
        assert_eq!(reg_get(&v, AH), Some(0xbe));
        assert!(reg_set(&mut v, XMM0, 0).is_err());
    }

    #[test]
    fn effective_addresses_use_segment_bases_and_wrap() {
        // 16-bit: es:[bx+si+0x10] wraps at 64 KiB, ES base added.
        let mut v = flat16(0x1000);
        v.vrs_sregs[VCPU_REGS_ES as usize] = seg(0, 0xf000_0000, 0xffff, 0x93);
        v.vrs_gprs[VCPU_REGS_RBX as usize] = 0xfff8;
        v.vrs_gprs[VCPU_REGS_RSI as usize] = 0x4;
        let i = decode(&v, &[0x26, 0x8b, 0x40, 0x10]).unwrap(); // mov ax, es:[bx+si+0x10]
        assert_eq!(linear_address(&i, &v).unwrap(), 0xf000_000c);
        // 64-bit: DS base ignored, FS base used, RIP-relative.
        let mut v = long64(0x1000);
        v.vrs_sregs[VCPU_REGS_DS as usize].vsi_base = 0x5000;
        v.vrs_sregs[VCPU_REGS_FS as usize].vsi_base = 0x7000;
        v.vrs_gprs[VCPU_REGS_RBX as usize] = 0x100;
        let i = decode(&v, &[0x8b, 0x03]).unwrap(); // mov eax, [rbx]
        assert_eq!(linear_address(&i, &v).unwrap(), 0x100);
        let i = decode(&v, &[0x64, 0x8b, 0x03]).unwrap(); // mov eax, fs:[rbx]
        assert_eq!(linear_address(&i, &v).unwrap(), 0x7100);
        let i = decode(&v, &[0x8b, 0x05, 0x10, 0, 0, 0]).unwrap(); // mov eax, [rip+0x10]
        assert_eq!(linear_address(&i, &v).unwrap(), 0x1016);
    }
}
