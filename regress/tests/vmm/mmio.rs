//! MMIO-assist exits (reference §6): loads and stores of 1, 2, 4 and 8
//! bytes to the VM_MEM_MMIO range in real mode, 32-bit protected,
//! compatibility and long mode, at CPL 0 and CPL 3, in both exit flavours.
//!
//! The test plays vmd: for every exit it checks the exit record, fetches
//! (VMX) or takes (SVM) the instruction bytes, decodes them, computes the
//! guest-physical address from the effective address, the segment base and
//! a walk of the guest's page tables, emulates the access against a small
//! device, writes the result into `vrs` and advances RIP.  The guest then
//! leaves what it saw in RAM, which the test compares with values worked
//! out by hand.
use crate::{Test, Tests};
use iced_x86::code_asm::*;
use iced_x86::{Code, Instruction, MemoryOperand, Mnemonic, OpKind, Register};
use vmm_regress::x86;
use vmm_regress::*;
use vmm_sys::abi::*;
use vmm_sys::ExitFlavour::{self, Svm, Vmx};

pub fn tests() -> Tests {
    vec![
        ("mmio::real16_vmx", Test::Plain(|| real16(Vmx))),
        ("mmio::real16_svm", Test::Plain(|| real16(Svm))),
        ("mmio::prot32_vmx", Test::Plain(|| prot32_(Vmx))),
        ("mmio::prot32_svm", Test::Plain(|| prot32_(Svm))),
        ("mmio::compat32_vmx", Test::Plain(|| compat32_(Vmx))),
        ("mmio::compat32_svm", Test::Plain(|| compat32_(Svm))),
        ("mmio::long64_vmx", Test::Plain(|| long64_(Vmx))),
        ("mmio::long64_svm", Test::Plain(|| long64_(Svm))),
        ("mmio::user64_vmx", Test::Plain(|| user64_(Vmx))),
        ("mmio::user64_svm", Test::Plain(|| user64_(Svm))),
        ("mmio::zoo64_vmx", Test::Plain(|| zoo64(Vmx))),
        ("mmio::zoo64_svm", Test::Plain(|| zoo64(Svm))),
        ("mmio::zoo32_vmx", Test::Plain(|| zoo32(Vmx))),
        ("mmio::zoo32_svm", Test::Plain(|| zoo32(Svm))),
        ("mmio::rep_stos32", Test::Plain(|| rep_stos(32, false))),
        ("mmio::rep_stos64", Test::Plain(|| rep_stos(64, false))),
        ("mmio::rep_stos64_batch", Test::Plain(|| rep_stos(64, true))),
    ]
}

/// The port a guest writes to when it is done (CPL 3 cannot HLT).
const DONE: u16 = 0x9a;
/// Where the long-mode guests see MMIO through 4 KiB pages: a linear
/// address far from the physical one, so only a page walk finds it.
const VA_4K: u64 = 0x4000_0000_0000;
const VA_4K_GPA: u64 = MMIO_BASE + 0x2000;
/// A 4 KiB page near the code, for RIP-relative operands.
const VA_RIPREL: u64 = 0x20_0000;
const VA_RIPREL_GPA: u64 = MMIO_BASE + 0x3000;
/// FS base of the 32- and 64-bit guests.
const FS_BASE: u64 = MMIO_BASE + 0x1000;

const RFLAGS_ARITH: u64 = 0x8d5; // CF PF AF ZF SF OF
const DEV_SIZE: usize = 0x4000;

/// The device behind MMIO_BASE: registers that read back what was stored.
/// Byte `o` starts as 0x80 | (o & 0x7f), so a load of n bytes at offset o
/// is easy to work out by hand; 0x60..0x64 start as 0xff.
struct Device {
    bytes: Vec<u8>,
    /// (gpa, size, value) of every store, in order.
    stores: Vec<(u64, usize, u64)>,
}

impl Device {
    fn new() -> Device {
        let mut bytes: Vec<u8> = (0..DEV_SIZE).map(|o| 0x80 | (o & 0x7f) as u8).collect();
        bytes[0x60..0x64].fill(0xff);
        Device {
            bytes,
            stores: Vec::new(),
        }
    }

    fn offset(gpa: u64, size: usize) -> Result<usize> {
        let o = gpa
            .checked_sub(MMIO_BASE)
            .filter(|&o| o as usize + size <= DEV_SIZE)
            .ok_or_else(|| format!("invalid MMIO address 0x{gpa:x} ({size} bytes)"))?;
        Ok(o as usize)
    }

    fn read(&self, gpa: u64, size: usize) -> Result<u64> {
        let o = Self::offset(gpa, size)?;
        let mut b = [0u8; 8];
        b[..size].copy_from_slice(&self.bytes[o..o + size]);
        Ok(u64::from_le_bytes(b))
    }

    fn write(&mut self, gpa: u64, size: usize, v: u64) -> Result<()> {
        let o = Self::offset(gpa, size)?;
        self.bytes[o..o + size].copy_from_slice(&v.to_le_bytes()[..size]);
        self.stores.push((gpa, size, v));
        Ok(())
    }
}

fn mask(size: usize) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size * 8)) - 1
    }
}

fn parity_even(v: u64) -> bool {
    (v as u8).count_ones() & 1 == 0
}

/// RFLAGS after `a + b` of `size` bytes.
fn add_flags(rflags: u64, a: u64, b: u64, size: usize) -> (u64, u64) {
    let m = mask(size);
    let sign = 1u64 << (size * 8 - 1);
    let res = a.wrapping_add(b) & m;
    let mut f = rflags & !RFLAGS_ARITH;
    if (a as u128 & m as u128) + (b as u128 & m as u128) > m as u128 {
        f |= 0x1;
    }
    if parity_even(res) {
        f |= 0x4;
    }
    if (a ^ b ^ res) & 0x10 != 0 {
        f |= 0x10;
    }
    if res == 0 {
        f |= 0x40;
    }
    if res & sign != 0 {
        f |= 0x80;
    }
    if (a ^ res) & (b ^ res) & sign != 0 {
        f |= 0x800;
    }
    (res, f)
}

/// RFLAGS after `a - b` of `size` bytes.
fn sub_flags(rflags: u64, a: u64, b: u64, size: usize) -> (u64, u64) {
    let m = mask(size);
    let sign = 1u64 << (size * 8 - 1);
    let (a, b) = (a & m, b & m);
    let res = a.wrapping_sub(b) & m;
    let mut f = rflags & !RFLAGS_ARITH;
    if a < b {
        f |= 0x1;
    }
    if parity_even(res) {
        f |= 0x4;
    }
    if (a ^ b ^ res) & 0x10 != 0 {
        f |= 0x10;
    }
    if res == 0 {
        f |= 0x40;
    }
    if res & sign != 0 {
        f |= 0x80;
    }
    if (a ^ b) & (a ^ res) & sign != 0 {
        f |= 0x800;
    }
    (res, f)
}

/// RFLAGS after a logic operation with result `res` (CF, OF and, in this
/// emulation, AF cleared).
fn logic_flags(rflags: u64, res: u64, size: usize) -> u64 {
    let mut f = rflags & !RFLAGS_ARITH;
    if parity_even(res) {
        f |= 0x4;
    }
    if res & mask(size) == 0 {
        f |= 0x40;
    }
    if res & (1u64 << (size * 8 - 1)) != 0 {
        f |= 0x80;
    }
    f
}

fn sign_extend(v: u64, size: usize) -> u64 {
    let shift = 64 - size * 8;
    (((v << shift) as i64) >> shift) as u64
}

/// What vmd's MMIO emulation does with one decoded instruction; `gpa` is
/// the MMIO operand's address; stack and string accesses to RAM go to
/// `mem` (flat segments: linear = physical).
fn emulate(
    i: &Instruction,
    gpa: u64,
    vrs: &mut vcpu_reg_state,
    dev: &mut Device,
    mem: &vmm_sys::GuestMemory,
) -> Result<()> {
    let size = i.memory_size().size();
    let reg = |n: u32| (i.op_kind(n) == OpKind::Register).then(|| i.op_register(n));
    let mem_first = x86::memory_operand(i) == Some(0);
    let get = |vrs: &vcpu_reg_state, r: Register| {
        x86::reg_get(vrs, r).ok_or_else(|| format!("{r:?} is not a GPR"))
    };
    let flags = vrs.vrs_gprs[VCPU_REGS_RFLAGS as usize];
    let sp_mask = if x86::bitness(vrs) == 64 {
        u64::MAX
    } else {
        0xffff_ffff
    };
    let ram_err = |e: vmm_sys::VmmError| e.to_string();
    match i.mnemonic() {
        Mnemonic::Mov if mem_first => {
            let v = match reg(1) {
                Some(r) => get(vrs, r)?,
                None => i.immediate(1),
            };
            dev.write(gpa, size, v & mask(size))?;
        }
        Mnemonic::Mov | Mnemonic::Movzx => {
            let v = dev.read(gpa, size)?;
            x86::reg_set(vrs, reg(0).ok_or("load without a register")?, v)?;
        }
        Mnemonic::Movsx | Mnemonic::Movsxd => {
            let v = sign_extend(dev.read(gpa, size)?, size);
            x86::reg_set(vrs, reg(0).ok_or("load without a register")?, v)?;
        }
        Mnemonic::Add | Mnemonic::Or | Mnemonic::And if mem_first => {
            let a = dev.read(gpa, size)?;
            let b = match reg(1) {
                Some(r) => get(vrs, r)?,
                None => i.immediate(1),
            } & mask(size);
            let (res, f) = match i.mnemonic() {
                Mnemonic::Add => add_flags(flags, a, b, size),
                Mnemonic::Or => (a | b, logic_flags(flags, a | b, size)),
                _ => (a & b, logic_flags(flags, a & b, size)),
            };
            dev.write(gpa, size, res)?;
            vrs.vrs_gprs[VCPU_REGS_RFLAGS as usize] = f;
        }
        Mnemonic::Sub if !mem_first => {
            let r = reg(0).ok_or("sub without a register")?;
            let (res, f) = sub_flags(flags, get(vrs, r)?, dev.read(gpa, size)?, size);
            x86::reg_set(vrs, r, res)?;
            vrs.vrs_gprs[VCPU_REGS_RFLAGS as usize] = f;
        }
        Mnemonic::Cmp if mem_first => {
            let b = match reg(1) {
                Some(r) => get(vrs, r)?,
                None => i.immediate(1),
            };
            let (_, f) = sub_flags(flags, dev.read(gpa, size)?, b, size);
            vrs.vrs_gprs[VCPU_REGS_RFLAGS as usize] = f;
        }
        Mnemonic::Test if mem_first => {
            let res = dev.read(gpa, size)? & i.immediate(1);
            vrs.vrs_gprs[VCPU_REGS_RFLAGS as usize] = logic_flags(flags, res, size);
        }
        Mnemonic::Xchg => {
            let r = reg(0).or(reg(1)).ok_or("xchg without a register")?;
            let old = dev.read(gpa, size)?;
            dev.write(gpa, size, get(vrs, r)? & mask(size))?;
            x86::reg_set(vrs, r, old)?;
        }
        Mnemonic::Push => {
            let v = dev.read(gpa, size)?;
            let stack = &mut vrs.vrs_gprs[VCPU_REGS_RSP as usize];
            *stack = stack.wrapping_sub(size as u64) & sp_mask;
            mem.write(*stack, &v.to_le_bytes()[..size])
                .map_err(ram_err)?;
        }
        Mnemonic::Pop => {
            let stack = &mut vrs.vrs_gprs[VCPU_REGS_RSP as usize];
            let mut b = [0u8; 8];
            mem.read(*stack, &mut b[..size]).map_err(ram_err)?;
            *stack = stack.wrapping_add(size as u64) & sp_mask;
            dev.write(gpa, size, u64::from_le_bytes(b))?;
        }
        Mnemonic::Movsb | Mnemonic::Movsw | Mnemonic::Movsd | Mnemonic::Movsq => {
            // MMIO source, RAM destination, DF=0, no REP.
            let v = dev.read(gpa, size)?;
            let dest = vrs.vrs_gprs[VCPU_REGS_RDI as usize];
            mem.write(dest, &v.to_le_bytes()[..size]).map_err(ram_err)?;
            vrs.vrs_gprs[VCPU_REGS_RSI as usize] += size as u64;
            vrs.vrs_gprs[VCPU_REGS_RDI as usize] += size as u64;
        }
        m => return Err(format!("the test cannot emulate {m:?} ({:?})", i.code())),
    }
    vrs.vrs_gprs[VCPU_REGS_RIP as usize] += i.len() as u64;
    Ok(())
}

/// One MMIO-assist exit the guest must raise: at mark `at`, for `gpa`.
struct Expect {
    at: &'static str,
    gpa: u64,
    /// The RFLAGS arithmetic flags the exit must show.
    flags: Option<u64>,
}

const fn ex(at: &'static str, off: u64) -> Expect {
    Expect {
        at,
        gpa: MMIO_BASE + off,
        flags: None,
    }
}

/// An exit that must show the arithmetic flags `flags`.
const fn ex_flags(at: &'static str, off: u64, flags: u64) -> Expect {
    Expect {
        at,
        gpa: MMIO_BASE + off,
        flags: Some(flags),
    }
}

/// What the run must leave behind.
struct Want<'a> {
    exits: &'a [Expect],
    /// (gpa in RAM, size, value) written by the guest.
    ram: &'a [(u64, usize, u64)],
    /// (offset in the device, bytes) after the run.
    dev: &'a [(usize, &'a [u8])],
    /// Where the guest pushed RFLAGS after the `add` (gpa, size), and the
    /// exact value, where the host shows it (otherwise only the
    /// arithmetic flags are compared).
    flags: (u64, usize, Option<u64>),
}

/// Checks one MMIO exit, and does vmd's part.
fn handle_exit(g: &mut Guest, p: &Program, want: &Expect, dev: &mut Device) -> Result<()> {
    let ip = p.at(want.at);
    let what = format!("{} ({}-bit, {:?})", want.at, p.bits, g.flavour());
    g.expect_reason(
        g.vrp.vrp_exit_reason,
        VMX_EXIT_EPT_VIOLATION,
        SVM_VMEXIT_NPF,
        &format!("MMIO exit for {what}"),
    )?;
    check(g.rip() == ip, || {
        format!(
            "{what}: rip 0x{:x} ({}), want 0x{ip:x}",
            g.rip(),
            p.name_of(g.rip())
        )
    })?;
    let rflags = g.gpr(VCPU_REGS_RFLAGS);
    if let Some(f) = want.flags {
        check(rflags & RFLAGS_ARITH == f, || {
            format!("{what}: rflags 0x{rflags:x}, want arithmetic flags 0x{f:x}")
        })?;
    }
    let vee = *g.exit.vee();
    check(vee.vee_fault_type == VEE_FAULT_MMIO_ASSIST as u8, || {
        format!("{what}: vee_fault_type {}", vee.vee_fault_type)
    })?;
    let assembled = p.insn_bytes(ip);
    let bytes = match g.flavour() {
        ExitFlavour::Vmx => {
            check(vee.vee_insn_info & VEE_LEN_VALID as u8 != 0, || {
                format!("{what}: vee_insn_info 0x{:x}", vee.vee_insn_info)
            })?;
            check(vee.vee_insn_len as usize == assembled.len(), || {
                format!(
                    "{what}: vee_insn_len {}, want {}",
                    vee.vee_insn_len,
                    assembled.len()
                )
            })?;
            x86::fetch(&g.mem, &g.exit.vrs, vee.vee_insn_len as usize)?
        }
        ExitFlavour::Svm => {
            check(vee.vee_insn_info & VEE_BYTES_VALID as u8 != 0, || {
                format!("{what}: vee_insn_info 0x{:x}", vee.vee_insn_info)
            })?;
            check(vee.vee_insn_bytes.starts_with(assembled), || {
                format!(
                    "{what}: vee_insn_bytes {:02x?}, want {assembled:02x?}",
                    vee.vee_insn_bytes
                )
            })?;
            vee.vee_insn_bytes.to_vec()
        }
    };
    let i = x86::decode(&g.exit.vrs, &bytes)?;
    check(
        i.len() == assembled.len() && i.code() == p.insn(ip).code(),
        || {
            format!(
                "{what}: decoded {:?}, want {:?}",
                i.code(),
                p.insn(ip).code()
            )
        },
    )?;
    // The operand in the MMIO range (MOVS has a second one, in RAM).
    let gpas = x86::operand_gpas(&g.mem, &i, &g.exit.vrs)?;
    let gpa = gpas
        .iter()
        .copied()
        .find(|&a| (MMIO_BASE..MMIO_BASE + MMIO_SIZE).contains(&a))
        .ok_or_else(|| format!("{what}: no operand in the MMIO range ({gpas:x?})"))?;
    check(gpa == want.gpa, || {
        format!("{what}: computed gpa 0x{gpa:x}, want 0x{:x}", want.gpa)
    })?;
    emulate(&i, gpa, &mut g.exit.vrs, dev, &g.mem).map_err(|e| format!("{what}: {e}"))
}

fn run_mmio(
    name: &str,
    flavour: ExitFlavour,
    state: vcpu_reg_state,
    p: &Program,
    want: &Want,
) -> Result<()> {
    let mut g = Guest::new(name)?;
    g.set_flavour(flavour)?;
    if p.bits == 64 {
        g.map_4k(VA_4K, VA_4K_GPA)?;
        g.map_4k(VA_4K + 0x1000, VA_4K_GPA + 0x1000)?;
        g.map_4k(VA_RIPREL, VA_RIPREL_GPA)?;
    }
    g.load(p, &state)?;
    let mut dev = Device::new();
    for w in want.exits {
        g.run()?;
        handle_exit(&mut g, p, w, &mut dev)?;
    }
    let r = g.run()?;
    g.expect_out(r, DONE, 1, 0xee, p.at("done"))
        .map_err(|e| format!("after the last MMIO exit: {e}"))?;
    for &(gpa, size, v) in want.ram {
        let mut b = [0u8; 8];
        g.read(gpa, &mut b[..size])?;
        let got = u64::from_le_bytes(b);
        check(got == v, || {
            format!("guest left 0x{got:x} at 0x{gpa:x}, want 0x{v:x}")
        })?;
    }
    let (gpa, size, exact) = want.flags;
    let mut b = [0u8; 8];
    g.read(gpa, &mut b[..size])?;
    let pushed = u64::from_le_bytes(b);
    match exact {
        Some(v) => check(pushed == v, || {
            format!("guest pushed rflags 0x{pushed:x} after add, want 0x{v:x}")
        })?,
        None => {
            check(pushed & RFLAGS_ARITH == ADD_FLAGS, || {
                format!("guest pushed rflags 0x{pushed:x} after add, want arithmetic flags 0x{ADD_FLAGS:x}")
            })?
        }
    }
    for &(o, bytes) in want.dev {
        check(&dev.bytes[o..o + bytes.len()] == bytes, || {
            format!(
                "device at +0x{o:x}: {:02x?}, want {bytes:02x?}",
                &dev.bytes[o..o + bytes.len()]
            )
        })?;
    }
    Ok(())
}

fn done(a: &mut CodeAssembler, m: &mut Marks) -> std::result::Result<(), IcedError> {
    a.mov(al, 0xee)?;
    m.here(a, "done")?;
    a.out(DONE as i32, al)?;
    a.hlt()
}

/// Flags after `add` of 0xffffffff and 1: CF PF AF ZF (KVM's own run of
/// the instruction, with the 0 the shim feeds it, would give none).
const ADD_FLAGS: u64 = 0x55;

fn real16(f: ExitFlavour) -> Result<()> {
    // ES points at the MMIO range ("unreal" mode: the base comes from the
    // segment cache, not from the selector), DS at RAM.
    let p = Program::new(16, CODE, |a, m| {
        a.mov(ebx, 0x10)?;
        a.mov(eax, 0x1111_1111)?;
        m.here(a, "ld1")?;
        a.mov(al, byte_ptr(bx).es())?;
        a.mov(dword_ptr(DATA), eax)?;
        a.mov(eax, 0x2222_2222)?;
        m.here(a, "ld2")?;
        a.mov(ax, word_ptr(bx + 2).es())?;
        a.mov(dword_ptr(DATA + 4), eax)?;
        m.here(a, "ld4")?;
        a.mov(ecx, dword_ptr(bx + 4).es())?;
        a.mov(dword_ptr(DATA + 8), ecx)?;
        a.mov(edx, 0x3333_3333)?;
        m.here(a, "zx8")?;
        a.movzx(dx, byte_ptr(bx + 8).es())?;
        a.mov(dword_ptr(DATA + 12), edx)?;
        a.mov(esi, 0x4444_4444)?;
        m.here(a, "zx16")?;
        a.movzx(esi, word_ptr(bx + 10).es())?;
        a.mov(dword_ptr(DATA + 16), esi)?;
        a.mov(eax, 0x5555_5555)?;
        m.here(a, "moffs")?;
        a.mov(al, byte_ptr(0x20).es())?;
        a.mov(dword_ptr(DATA + 20), eax)?;
        a.mov(edx, 0xcafe_f00du32)?;
        m.here(a, "st1")?;
        a.mov(byte_ptr(bx + 0x30).es(), dl)?;
        m.here(a, "st2")?;
        a.mov(word_ptr(bx + 0x32).es(), dx)?;
        m.here(a, "st4")?;
        a.mov(dword_ptr(bx + 0x34).es(), edx)?;
        m.here(a, "st4b")?;
        a.mov(dword_ptr(bx + 0x34).es(), edx)?;
        m.here(a, "stimm")?;
        a.mov(word_ptr(bx + 0x38).es(), 0x1234)?;
        m.here(a, "sth")?;
        a.mov(byte_ptr(bx + 0x3a).es(), dh)?;
        a.mov(eax, 1)?;
        m.here(a, "add")?;
        a.add(dword_ptr(bx + 0x50).es(), eax)?;
        a.pushfd()?;
        a.pop(dword_ptr(DATA + 24))?;
        a.mov(ecx, 0x6666_6666)?;
        m.here(a, "xchg")?;
        a.xchg(dword_ptr(bx + 0x70).es(), ecx)?;
        a.mov(dword_ptr(DATA + 28), ecx)?;
        done(a, m)
    });
    let mut state = flat16(CODE);
    state.vrs_sregs[VCPU_REGS_ES as usize] = seg(0xf000, MMIO_BASE, 0xffff, 0x93);
    let exits = [
        ex("ld1", 0x10),
        ex("ld2", 0x12),
        ex("ld4", 0x14),
        ex("zx8", 0x18),
        ex("zx16", 0x1a),
        ex("moffs", 0x20),
        ex("st1", 0x40),
        ex("st2", 0x42),
        ex("st4", 0x44),
        ex("st4b", 0x44),
        ex("stimm", 0x48),
        ex("sth", 0x4a),
        ex("add", 0x60),
        ex_flags("xchg", 0x80, ADD_FLAGS),
    ];
    let ram = [
        (DATA, 4, 0x1111_1190),
        (DATA + 4, 4, 0x2222_9392),
        (DATA + 8, 4, 0x9796_9594),
        (DATA + 12, 4, 0x3333_0098),
        (DATA + 16, 4, 0x0000_9b9a),
        (DATA + 20, 4, 0x5555_55a0),
        (DATA + 28, 4, 0x8382_8180),
    ];
    let dev: [(usize, &[u8]); 7] = [
        (0x40, &[0x0d, 0xc1, 0x0d, 0xf0, 0x0d, 0xf0, 0xfe, 0xca]),
        (0x48, &[0x34, 0x12]),
        (0x4a, &[0xf0, 0xcb]),
        (0x60, &[0, 0, 0, 0, 0xe4]),
        (0x80, &[0x66, 0x66, 0x66, 0x66, 0x84]),
        (0x10, &[0x90, 0x91]),
        (0x3f, &[0xbf]),
    ];
    let want = Want {
        exits: &exits,
        ram: &ram,
        dev: &dev,
        flags: (DATA + 24, 4, Some(0x2 | ADD_FLAGS)),
    };
    run_mmio("mmio16", f, state, &p, &want)
}

fn program32() -> Program {
    Program::new(32, CODE, |a, m| {
        a.mov(ebx, (MMIO_BASE + 0x10) as u32)?;
        a.mov(eax, 0x1111_1111)?;
        m.here(a, "ld1")?;
        a.mov(al, byte_ptr(ebx))?;
        a.mov(dword_ptr(DATA), eax)?;
        a.mov(eax, 0x2222_2222)?;
        m.here(a, "ld2")?;
        a.mov(ax, word_ptr(ebx + 2))?;
        a.mov(dword_ptr(DATA + 4), eax)?;
        m.here(a, "ld4")?;
        a.mov(ecx, dword_ptr(ebx + 4))?;
        a.mov(dword_ptr(DATA + 8), ecx)?;
        a.mov(edx, 0x3333_3333)?;
        m.here(a, "zx8")?;
        a.movzx(dx, byte_ptr(ebx + 8))?;
        a.mov(dword_ptr(DATA + 12), edx)?;
        a.mov(esi, 0x4444_4444)?;
        m.here(a, "zx16")?;
        a.movzx(esi, word_ptr(ebx + 10))?;
        a.mov(dword_ptr(DATA + 16), esi)?;
        a.mov(eax, 0x5555_5555)?;
        m.here(a, "moffs")?;
        a.mov(eax, dword_ptr(MMIO_BASE + 0x20))?;
        a.mov(dword_ptr(DATA + 20), eax)?;
        m.here(a, "fs")?;
        a.mov(edi, dword_ptr(8).fs())?;
        a.mov(dword_ptr(DATA + 32), edi)?;
        // scaled index
        a.mov(ecx, 3)?;
        m.here(a, "sib")?;
        a.mov(edi, dword_ptr(ebx + ecx * 4 + 0x10))?;
        a.mov(dword_ptr(DATA + 36), edi)?;
        a.mov(edx, 0xcafe_f00du32)?;
        m.here(a, "st1")?;
        a.mov(byte_ptr(ebx + 0x30), dl)?;
        m.here(a, "st2")?;
        a.mov(word_ptr(ebx + 0x32), dx)?;
        m.here(a, "st4")?;
        a.mov(dword_ptr(ebx + 0x34), edx)?;
        m.here(a, "st4b")?;
        a.mov(dword_ptr(ebx + 0x34), edx)?;
        m.here(a, "stimm")?;
        a.mov(word_ptr(ebx + 0x38), 0x1234)?;
        m.here(a, "sth")?;
        a.mov(byte_ptr(ebx + 0x3a), dh)?;
        a.mov(eax, 1)?;
        m.here(a, "add")?;
        a.add(dword_ptr(ebx + 0x50), eax)?;
        a.pushfd()?;
        a.pop(dword_ptr(DATA + 24))?;
        a.mov(ecx, 0x6666_6666)?;
        m.here(a, "xchg")?;
        a.xchg(dword_ptr(ebx + 0x70), ecx)?;
        a.mov(dword_ptr(DATA + 28), ecx)?;
        done(a, m)
    })
}

fn run32(name: &str, f: ExitFlavour, mut state: vcpu_reg_state) -> Result<()> {
    state.vrs_sregs[VCPU_REGS_FS as usize].vsi_base = FS_BASE;
    let exits = [
        ex("ld1", 0x10),
        ex("ld2", 0x12),
        ex("ld4", 0x14),
        ex("zx8", 0x18),
        ex("zx16", 0x1a),
        ex("moffs", 0x20),
        ex("fs", 0x1008),
        ex("sib", 0x2c),
        ex("st1", 0x40),
        ex("st2", 0x42),
        ex("st4", 0x44),
        ex("st4b", 0x44),
        ex("stimm", 0x48),
        ex("sth", 0x4a),
        ex("add", 0x60),
        ex_flags("xchg", 0x80, ADD_FLAGS),
    ];
    let ram = [
        (DATA, 4, 0x1111_1190),
        (DATA + 4, 4, 0x2222_9392),
        (DATA + 8, 4, 0x9796_9594),
        (DATA + 12, 4, 0x3333_0098),
        (DATA + 16, 4, 0x0000_9b9a),
        (DATA + 20, 4, 0xa3a2_a1a0),
        (DATA + 32, 4, 0x8b8a_8988),
        (DATA + 36, 4, 0xafae_adac),
        (DATA + 28, 4, 0x8382_8180),
    ];
    let dev: [(usize, &[u8]); 5] = [
        (0x40, &[0x0d, 0xc1, 0x0d, 0xf0, 0x0d, 0xf0, 0xfe, 0xca]),
        (0x48, &[0x34, 0x12]),
        (0x4a, &[0xf0, 0xcb]),
        (0x60, &[0, 0, 0, 0, 0xe4]),
        (0x80, &[0x66, 0x66, 0x66, 0x66, 0x84]),
    ];
    let want = Want {
        exits: &exits,
        ram: &ram,
        dev: &dev,
        flags: (DATA + 24, 4, Some(0x2 | ADD_FLAGS)),
    };
    run_mmio(name, f, state, &program32(), &want)
}

fn prot32_(f: ExitFlavour) -> Result<()> {
    run32("mmio32", f, prot32(CODE))
}

fn compat32_(f: ExitFlavour) -> Result<()> {
    run32("mmiocompat", f, compat32(CODE))
}

fn program64() -> Program {
    Program::new(64, CODE, |a, m| {
        a.mov(ebx, (MMIO_BASE + 0x10) as u32)?;
        a.mov(rax, 0x1111_1111_1111_1111u64)?;
        m.here(a, "ld1")?;
        a.mov(al, byte_ptr(rbx))?;
        a.mov(qword_ptr(DATA), rax)?;
        a.mov(rax, 0x2222_2222_2222_2222u64)?;
        m.here(a, "ld2")?;
        a.mov(ax, word_ptr(rbx + 2))?;
        a.mov(qword_ptr(DATA + 8), rax)?;
        a.mov(r8, -1i64)?;
        m.here(a, "ld4")?;
        a.mov(r8d, dword_ptr(rbx + 4))?;
        a.mov(qword_ptr(DATA + 16), r8)?;
        m.here(a, "ld8")?;
        a.mov(r9, qword_ptr(rbx + 8))?;
        a.mov(qword_ptr(DATA + 24), r9)?;
        a.mov(r11, -1i64)?;
        m.here(a, "zx16")?;
        a.movzx(r11, word_ptr(rbx + 10))?;
        a.mov(qword_ptr(DATA + 32), r11)?;
        a.mov(rax, 0x5555_5555_5555_5555u64)?;
        m.here(a, "fs")?;
        a.mov(eax, dword_ptr(8).fs())?;
        a.mov(qword_ptr(DATA + 40), rax)?;
        a.mov(rsi, VA_4K + 0x10)?;
        a.mov(rcx, -1i64)?;
        m.here(a, "va4k")?;
        a.mov(ecx, dword_ptr(rsi))?;
        a.mov(qword_ptr(DATA + 48), rcx)?;
        m.here(a, "riprel")?;
        a.add_instruction(Instruction::with2(
            Code::Mov_r32_rm32,
            Register::EDI,
            MemoryOperand::with_base_displ(Register::RIP, (VA_RIPREL + 0x18) as i64),
        )?)?;
        a.mov(qword_ptr(DATA + 56), rdi)?;
        a.mov(edx, 0xcafe_f00du32)?;
        a.mov(r10, 0xfedc_ba98_7654_3210u64)?;
        m.here(a, "st1")?;
        a.mov(byte_ptr(rbx + 0x30), dl)?;
        m.here(a, "st2")?;
        a.mov(word_ptr(rbx + 0x32), dx)?;
        m.here(a, "st4")?;
        a.mov(dword_ptr(rbx + 0x34), edx)?;
        m.here(a, "st4b")?;
        a.mov(dword_ptr(rbx + 0x34), edx)?;
        m.here(a, "st8")?;
        a.mov(qword_ptr(rbx + 0x38), r10)?;
        m.here(a, "stimm")?;
        a.mov(dword_ptr(rbx + 0x40), 0x1234_5678)?;
        m.here(a, "stneg")?;
        a.mov(qword_ptr(rbx + 0x48), -2)?;
        m.here(a, "sth")?;
        a.mov(byte_ptr(rbx + 0x60), dh)?;
        m.here(a, "stva")?;
        a.mov(dword_ptr(rsi + 8), ecx)?;
        a.mov(eax, 1)?;
        m.here(a, "add")?;
        a.add(dword_ptr(rbx + 0x50), eax)?;
        a.pushfq()?;
        a.pop(qword_ptr(DATA + 64))?;
        a.mov(rcx, 0x6666_6666_6666_6666u64)?;
        m.here(a, "xchg")?;
        a.xchg(qword_ptr(rbx + 0x70), rcx)?;
        a.mov(qword_ptr(DATA + 72), rcx)?;
        done(a, m)
    })
}

/// `pushed_flags`: what `pushfq` after the `add` must show, where the host
/// lets the test know.
fn run64(
    name: &str,
    f: ExitFlavour,
    mut state: vcpu_reg_state,
    pushed_flags: Option<u64>,
) -> Result<()> {
    state.vrs_sregs[VCPU_REGS_FS as usize].vsi_base = FS_BASE;
    let exits = [
        ex("ld1", 0x10),
        ex("ld2", 0x12),
        ex("ld4", 0x14),
        ex("ld8", 0x18),
        ex("zx16", 0x1a),
        ex("fs", 0x1008),
        ex("va4k", 0x2010),
        ex("riprel", 0x3018),
        ex("st1", 0x40),
        ex("st2", 0x42),
        ex("st4", 0x44),
        ex("st4b", 0x44),
        ex("st8", 0x48),
        ex("stimm", 0x50),
        ex("stneg", 0x58),
        ex("sth", 0x70),
        ex("stva", 0x2018),
        ex("add", 0x60),
        ex_flags("xchg", 0x80, ADD_FLAGS),
    ];
    let ram = [
        (DATA, 8, 0x1111_1111_1111_1190),
        (DATA + 8, 8, 0x2222_2222_2222_9392),
        (DATA + 16, 8, 0x9796_9594),
        (DATA + 24, 8, 0x9f9e_9d9c_9b9a_9998),
        (DATA + 32, 8, 0x9b9a),
        (DATA + 40, 8, 0x8b8a_8988),
        (DATA + 48, 8, 0x9392_9190),
        (DATA + 56, 8, 0x9b9a_9998),
        (DATA + 72, 8, 0x8786_8584_8382_8180),
    ];
    let dev: [(usize, &[u8]); 8] = [
        (0x40, &[0x0d, 0xc1, 0x0d, 0xf0, 0x0d, 0xf0, 0xfe, 0xca]),
        (0x48, &[0x10, 0x32, 0x54, 0x76, 0x98, 0xba, 0xdc, 0xfe]),
        (0x50, &[0x78, 0x56, 0x34, 0x12, 0xd4]),
        (0x58, &[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
        (0x60, &[0, 0, 0, 0, 0xe4]),
        (0x70, &[0xf0, 0xf1]),
        (0x80, &[0x66; 8]),
        (0x2018, &[0x90, 0x91, 0x92, 0x93, 0x9c]),
    ];
    let want = Want {
        exits: &exits,
        ram: &ram,
        dev: &dev,
        flags: (DATA + 64, 8, pushed_flags),
    };
    run_mmio(name, f, state, &program64(), &want)
}

fn long64_(f: ExitFlavour) -> Result<()> {
    run64("mmio64", f, long64(CODE), Some(0x2 | ADD_FLAGS))
}

/// CPL 3: natively executed guest code on hosts that emulate CPL 0, so the
/// MMIO access reaches KVM as a nested page fault first.  What `pushfq`
/// shows at CPL 3 is only checked for the arithmetic flags: the nested
/// (PVM) KVM of the development machines runs guest user code with the
/// host's IF and IOPL, and does not report the guest's IOPL in its
/// registers either.
fn user64_(f: ExitFlavour) -> Result<()> {
    run64("mmio64u", f, user64(CODE), None)
}

/// `rep stosd` into MMIO: every exit shows RIP at the instruction and the
/// registers before the iteration it reports (KVM's emulator has already
/// run that iteration).  With `batch`, the test emulates all iterations
/// at the first exit, as vmd's MOVS emulation does; otherwise one per
/// exit, leaving RIP on the instruction while RCX is not 0.
fn rep_stos(bits: u32, batch: bool) -> Result<()> {
    let mut g = Guest::new("repstos")?;
    let p = Program::new(bits, CODE, |a, m| {
        a.mov(edi, (MMIO_BASE + 0x100) as u32)?;
        a.mov(ecx, 3)?;
        a.mov(eax, 0xa1b2_c3d4u32)?;
        a.cld()?;
        m.here(a, "stos")?;
        a.rep().stosd()?;
        done(a, m)
    });
    let state = if bits == 64 {
        long64(CODE)
    } else {
        prot32(CODE)
    };
    g.load(&p, &state)?;
    let mut dev = Device::new();
    let len = p.len_at("stos");
    let iterations: u64 = if batch { 1 } else { 3 };
    for k in 0..iterations {
        let r = g.run()?;
        let what = format!("rep stosd, exit {k}");
        g.expect_reason(r, VMX_EXIT_EPT_VIOLATION, SVM_VMEXIT_NPF, &what)?;
        check(g.rip() == p.at("stos"), || {
            format!("{what}: rip 0x{:x}, want 0x{:x}", g.rip(), p.at("stos"))
        })?;
        let (cnt, dst) = (g.gpr(VCPU_REGS_RCX), g.gpr(VCPU_REGS_RDI));
        check(cnt == 3 - k && dst == MMIO_BASE + 0x100 + 4 * k, || {
            format!(
                "{what}: rcx {cnt} rdi 0x{dst:x}, want {} 0x{:x}",
                3 - k,
                MMIO_BASE + 0x100 + 4 * k
            )
        })?;
        check(
            g.exit.vee().vee_insn_len as u64 == len || g.flavour() == Svm,
            || format!("{what}: vee_insn_len {}", g.exit.vee().vee_insn_len),
        )?;
        let bytes = x86::fetch(&g.mem, &g.exit.vrs, 15)?;
        let i = x86::decode(&g.exit.vrs, &bytes)?;
        check(
            i.code() == Code::Stosd_m32_EAX && i.has_rep_prefix(),
            || format!("{what}: decoded {:?}", i.code()),
        )?;
        let gpa = x86::operand_gpa(&g.mem, &i, &g.exit.vrs)?;
        check(gpa == MMIO_BASE + 0x100 + 4 * k, || {
            format!("{what}: gpa 0x{gpa:x}")
        })?;
        let n = if batch { cnt } else { 1 };
        let v = &mut g.exit.vrs;
        for j in 0..n {
            dev.write(
                gpa + 4 * j,
                4,
                v.vrs_gprs[VCPU_REGS_RAX as usize] & 0xffff_ffff,
            )?;
        }
        v.vrs_gprs[VCPU_REGS_RCX as usize] -= n;
        v.vrs_gprs[VCPU_REGS_RDI as usize] += 4 * n;
        if v.vrs_gprs[VCPU_REGS_RCX as usize] == 0 {
            v.vrs_gprs[VCPU_REGS_RIP as usize] += len;
        }
    }
    let r = g.run()?;
    g.expect_out(r, DONE, 1, 0xee, p.at("done"))?;
    let (cnt, dst) = (g.gpr(VCPU_REGS_RCX), g.gpr(VCPU_REGS_RDI));
    check(cnt == 0 && dst == MMIO_BASE + 0x10c, || {
        format!("after rep stosd: rcx {cnt} rdi 0x{dst:x}")
    })?;
    let want = [0xd4, 0xc3, 0xb2, 0xa1].repeat(3);
    check(dev.bytes[0x100..0x10c] == want[..], || {
        format!("device {:02x?}", &dev.bytes[0x100..0x10c])
    })?;
    check(dev.stores.len() == 3, || {
        format!("{} stores", dev.stores.len())
    })
}

/// More of what vmd's decoder must handle (reference §6.3 plus movsx, or):
/// movsx/movsxd, cmp and test (flags only), or (read-modify-write), sub
/// with an MMIO source, push and pop with an MMIO operand (the other side
/// is the stack in RAM), and movs from MMIO to RAM.  KVM's emulator holds
/// each of them as a pending read; nothing of its own completion (which
/// the shim feeds zeros) may reach registers, flags or RAM.
fn zoo64(f: ExitFlavour) -> Result<()> {
    let p = Program::new(64, CODE, |a, m| {
        a.mov(ebx, (MMIO_BASE + 0x10) as u32)?;
        a.mov(rcx, -1i64)?;
        m.here(a, "movsx")?;
        a.movsx(ecx, byte_ptr(rbx))?;
        a.mov(qword_ptr(DATA), rcx)?;
        m.here(a, "movsxd")?;
        a.movsxd(rdx, dword_ptr(rbx + 4))?;
        a.mov(qword_ptr(DATA + 8), rdx)?;
        m.here(a, "cmp")?;
        a.cmp(dword_ptr(rbx + 8), 0x10)?;
        a.pushfq()?;
        a.pop(qword_ptr(DATA + 16))?;
        a.mov(eax, 0xf)?;
        m.here(a, "or")?;
        a.or(dword_ptr(rbx + 0x20), eax)?;
        a.pushfq()?;
        a.pop(qword_ptr(DATA + 24))?;
        a.mov(esi, 0x1000)?;
        m.here(a, "sub")?;
        a.sub(esi, dword_ptr(rbx + 0x24))?;
        a.pushfq()?;
        a.pop(qword_ptr(DATA + 32))?;
        a.mov(qword_ptr(DATA + 40), rsi)?;
        m.here(a, "push")?;
        a.push(qword_ptr(rbx + 0x28))?;
        a.pop(rax)?;
        a.mov(qword_ptr(DATA + 48), rax)?;
        a.mov(qword_ptr(DATA + 56), rsp)?;
        a.mov(rax, 0x1122_3344_5566_7788u64)?;
        a.push(rax)?;
        m.here(a, "pop")?;
        a.pop(qword_ptr(rbx + 0x50))?;
        a.mov(qword_ptr(DATA + 64), rsp)?;
        a.lea(rsi, ptr(rbx + 0x70))?;
        a.mov(edi, (DATA + 0x100) as u32)?;
        a.cld()?;
        m.here(a, "movs")?;
        a.movsd()?;
        a.mov(qword_ptr(DATA + 72), rsi)?;
        a.mov(qword_ptr(DATA + 80), rdi)?;
        m.here(a, "test")?;
        a.test(dword_ptr(rbx + 0x30), 0x8000_0000u32 as i32)?;
        a.pushfq()?;
        a.pop(qword_ptr(DATA + 88))?;
        done(a, m)
    });
    let exits = [
        ex("movsx", 0x10),
        ex("movsxd", 0x14),
        ex("cmp", 0x18),
        ex("or", 0x30),
        ex("sub", 0x34),
        ex("push", 0x38),
        ex("pop", 0x60),
        ex("movs", 0x80),
        ex("test", 0x40),
    ];
    let ram = [
        (DATA, 8, 0xffff_ff90),
        (DATA + 8, 8, 0xffff_ffff_9796_9594),
        (DATA + 16, 8, 0x2 | 0x84),
        (DATA + 24, 8, 0x2 | 0x80),
        (DATA + 32, 8, 0x2 | 0x11),
        (DATA + 40, 8, 0x4849_5a4c),
        (DATA + 48, 8, 0xbfbe_bdbc_bbba_b9b8),
        (DATA + 56, 8, STACK_TOP),
        (DATA + 64, 8, STACK_TOP),
        (DATA + 72, 8, MMIO_BASE + 0x84),
        (DATA + 80, 8, DATA + 0x104),
        (DATA + 0x100, 4, 0x8382_8180),
        (DATA + 88, 8, 0x2 | 0x84),
    ];
    let dev: [(usize, &[u8]); 2] = [
        (0x30, &[0xbf, 0xb1, 0xb2, 0xb3, 0xb4]),
        (
            0x60,
            &[0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0xe8],
        ),
    ];
    let want = Want {
        exits: &exits,
        ram: &ram,
        dev: &dev,
        flags: (DATA + 88, 8, Some(0x2 | 0x84)),
    };
    run_mmio("zoo64", f, long64(CODE), &p, &want)
}

/// push and pop with an MMIO operand in 32-bit protected mode (OpenBSD's
/// decoder handles these for i386 guests).
fn zoo32(f: ExitFlavour) -> Result<()> {
    let p = Program::new(32, CODE, |a, m| {
        a.mov(ebx, (MMIO_BASE + 0x10) as u32)?;
        m.here(a, "push")?;
        a.push(dword_ptr(ebx + 0x28))?;
        a.pop(eax)?;
        a.mov(dword_ptr(DATA), eax)?;
        a.mov(dword_ptr(DATA + 4), esp)?;
        a.mov(eax, 0x5566_7788)?;
        a.push(eax)?;
        m.here(a, "pop")?;
        a.pop(dword_ptr(ebx + 0x50))?;
        a.mov(dword_ptr(DATA + 8), esp)?;
        a.pushfd()?;
        a.pop(dword_ptr(DATA + 12))?;
        done(a, m)
    });
    let exits = [ex("push", 0x38), ex("pop", 0x60)];
    let ram = [
        (DATA, 4, 0xbbba_b9b8),
        (DATA + 4, 4, STACK_TOP),
        (DATA + 8, 4, STACK_TOP),
    ];
    let dev: [(usize, &[u8]); 1] = [(0x60, &[0x88, 0x77, 0x66, 0x55, 0xe4])];
    let want = Want {
        exits: &exits,
        ram: &ram,
        dev: &dev,
        flags: (DATA + 12, 4, Some(0x2)),
    };
    run_mmio("zoo32", f, prot32(CODE), &p, &want)
}
