//! Port I/O exits: IN and OUT of 1, 2 and 4 bytes, port as an immediate
//! and in DX, in 16-, 32- and 64-bit guests; the exit record (vei_*) and
//! the write-back of vei_data into RAX on re-entry (reference §5.6).
use crate::{Test, Tests};
use iced_x86::code_asm::*;
use vmm_regress::*;
use vmm_sys::abi::*;

pub fn tests() -> Tests {
    vec![
        ("pio::real16", Test::Plain(real16)),
        ("pio::prot32", Test::Plain(prot32_)),
        ("pio::long64", Test::Plain(long64_)),
        ("pio::compat32", Test::Plain(compat32_)),
        ("pio::user64_native", Test::Plain(user64_native)),
        ("pio::string_io", Test::Plain(string_io)),
        ("pio::string_io_emulated", Test::Plain(string_io_emulated)),
        ("pio::queue_notify", Test::Probing(queue_notify)),
    ]
}

/// What RAX holds before each step (64-bit guests load all of it).
const PATTERN: u64 = 0xa5a5_5a5a_1122_3344;
/// The port the guest echoes EAX to after each IN.
const ECHO: u16 = 0x99;
/// The port the guest writes to when it is done.
const DONE: u16 = 0x9a;

#[derive(Clone, Copy)]
struct Step {
    size: u8,
    /// Port as an immediate (true) or in DX.
    imm: bool,
    out_port: u16,
    in_port: u16,
    /// What the test returns for the IN.
    in_value: u32,
}

const STEPS: [Step; 6] = [
    step(1, true, 0x40, 0x50, 0x0000_00c1),
    step(2, true, 0x41, 0x51, 0x0000_c2c3),
    step(4, true, 0x42, 0x52, 0xc4c5_c6c7),
    step(1, false, 0x3f8, 0x2f8, 0x0000_00d1),
    step(2, false, 0x3f9, 0x2f9, 0x0000_d2d3),
    step(4, false, 0x3fa, 0x2fa, 0xd4d5_d6d7),
];

const fn step(size: u8, imm: bool, out_port: u16, in_port: u16, in_value: u32) -> Step {
    Step {
        size,
        imm,
        out_port,
        in_port,
        in_value,
    }
}

const OUT_MARKS: [&str; 6] = ["out0", "out1", "out2", "out3", "out4", "out5"];
const IN_MARKS: [&str; 6] = ["in0", "in1", "in2", "in3", "in4", "in5"];
const ECHO_MARKS: [&str; 6] = ["echo0", "echo1", "echo2", "echo3", "echo4", "echo5"];

fn out_insn(a: &mut CodeAssembler, s: &Step) -> std::result::Result<(), IcedError> {
    let p = s.out_port as i32;
    match (s.size, s.imm) {
        (1, true) => a.out(p, al),
        (2, true) => a.out(p, ax),
        (4, true) => a.out(p, eax),
        (1, false) => a.out(dx, al),
        (2, false) => a.out(dx, ax),
        _ => a.out(dx, eax),
    }
}

fn in_insn(a: &mut CodeAssembler, s: &Step) -> std::result::Result<(), IcedError> {
    let p = s.in_port as i32;
    match (s.size, s.imm) {
        (1, true) => a.in_(al, p),
        (2, true) => a.in_(ax, p),
        (4, true) => a.in_(eax, p),
        (1, false) => a.in_(al, dx),
        (2, false) => a.in_(ax, dx),
        _ => a.in_(eax, dx),
    }
}

/// For each step: load RAX, OUT it; load RAX (and DX), IN; OUT EAX to
/// the echo port.  Then HLT.
fn program(bits: u32) -> Program {
    Program::new(bits, CODE, |a, m| {
        for (k, s) in STEPS.iter().enumerate() {
            let load = |a: &mut CodeAssembler| {
                if bits == 64 {
                    a.mov(rax, PATTERN)
                } else {
                    a.mov(eax, PATTERN as u32)
                }
            };
            load(a)?;
            a.mov(dx, s.out_port as u32)?;
            m.here(a, OUT_MARKS[k])?;
            out_insn(a, s)?;
            load(a)?;
            a.mov(dx, s.in_port as u32)?;
            m.here(a, IN_MARKS[k])?;
            in_insn(a, s)?;
            m.here(a, ECHO_MARKS[k])?;
            a.out(ECHO as i32, eax)?;
        }
        // The end: CPL 3 guests cannot HLT.
        a.mov(al, 0xee)?;
        m.here(a, "done")?;
        a.out(DONE as i32, al)?;
        a.hlt()
    })
}

fn mask(size: u8) -> u32 {
    if size == 4 {
        u32::MAX
    } else {
        (1u32 << (size * 8)) - 1
    }
}

fn check_vei(g: &Guest, p: &Program, mark: &str, s: &Step, port: u16, dir: u32) -> Result<()> {
    let vei = *g.exit.vei();
    let what = format!("{mark} ({}-bit)", p.bits);
    check(vei.vei_encoding == s.imm as u8, || {
        format!(
            "{what}: vei_encoding {}, want {}",
            vei.vei_encoding, s.imm as u8
        )
    })?;
    check(vei.vei_string == 0 && vei.vei_rep == 0, || {
        format!("{what}: string {} rep {}", vei.vei_string, vei.vei_rep)
    })?;
    check(vei.vei_insn_len as u64 == p.len_at(mark), || {
        format!(
            "{what}: vei_insn_len {}, want {}",
            vei.vei_insn_len,
            p.len_at(mark)
        )
    })?;
    check(g.rip() == p.at(mark), || {
        format!("{what}: rip 0x{:x}, want 0x{:x}", g.rip(), p.at(mark))
    })?;
    let cpl = g.exit.vrs.vrs_sregs[VCPU_REGS_CS as usize].vsi_sel as i32 & 3;
    check(g.exit.cpl == cpl, || {
        format!("{what}: exit cpl {}, want {cpl}", g.exit.cpl)
    })?;
    let r = g.vrp.vrp_exit_reason;
    g.expect_io(r, dir, port, s.size)
        .map_err(|e| format!("{what}: {e}"))
}

fn run_pio(name: &str, bits: u32, state: vcpu_reg_state) -> Result<()> {
    let mut g = Guest::new(name)?;
    let p = program(bits);
    g.load(&p, &state)?;
    let pattern = if bits == 64 {
        PATTERN
    } else {
        PATTERN & 0xffff_ffff
    };
    for (k, s) in STEPS.iter().enumerate() {
        let m = mask(s.size);
        // OUT: the data is the low bytes of RAX.
        g.run()?;
        check_vei(&g, &p, OUT_MARKS[k], s, s.out_port, VEI_DIR_OUT)?;
        check(g.exit.vei().vei_data & m == PATTERN as u32 & m, || {
            format!(
                "{}: vei_data 0x{:x}, want 0x{:x}",
                OUT_MARKS[k],
                g.exit.vei().vei_data & m,
                PATTERN as u32 & m
            )
        })?;
        check(g.gpr(VCPU_REGS_RAX) == pattern, || {
            format!("{}: rax 0x{:x}", OUT_MARKS[k], g.gpr(VCPU_REGS_RAX))
        })?;
        g.skip_io();

        // IN: vmm(4) reports EAX in vei_data; the test merges its data
        // into the low bytes, as vmd's set_return_data does.
        g.run()?;
        check_vei(&g, &p, IN_MARKS[k], s, s.in_port, VEI_DIR_IN)?;
        check(g.exit.vei().vei_data == PATTERN as u32, || {
            format!(
                "{}: vei_data 0x{:x} on entry, want eax 0x{:x}",
                IN_MARKS[k],
                g.exit.vei().vei_data,
                PATTERN as u32
            )
        })?;
        let merged = (g.exit.vei().vei_data & !m) | (s.in_value & m);
        g.exit.vei_mut().vei_data = merged;
        g.skip_io();

        // The guest echoes EAX: vmm(4) loaded RAX from vei_data (all 64
        // bits: the upper half is cleared).
        g.run()?;
        let echo = Step {
            size: 4,
            imm: true,
            ..*s
        };
        check_vei(&g, &p, ECHO_MARKS[k], &echo, ECHO, VEI_DIR_OUT)?;
        check(g.exit.vei().vei_data == merged, || {
            format!(
                "{}: guest has eax 0x{:x} after the IN, want 0x{merged:x}",
                ECHO_MARKS[k],
                g.exit.vei().vei_data
            )
        })?;
        check(g.gpr(VCPU_REGS_RAX) == merged as u64, || {
            format!(
                "{}: rax 0x{:x} after the IN, want 0x{merged:x}",
                ECHO_MARKS[k],
                g.gpr(VCPU_REGS_RAX)
            )
        })?;
        g.skip_io();
    }
    let r = g.run()?;
    g.expect_out(r, DONE, 1, 0xee, p.at("done"))
}

fn real16() -> Result<()> {
    run_pio("pio16", 16, flat16(CODE))
}

fn prot32_() -> Result<()> {
    run_pio("pio32", 32, prot32(CODE))
}

fn long64_() -> Result<()> {
    run_pio("pio64", 64, long64(CODE))
}

fn compat32_() -> Result<()> {
    run_pio("piocompat", 32, compat32(CODE))
}

/// CPL 3 with IOPL 3: code that a host emulating CPL 0 runs natively.
/// Where KVM then takes its fast PIO paths (OUT: RIP not yet advanced;
/// IN: completion pending) the shim must hide them just the same.  (On
/// the nested KVM of the development machines port I/O still goes
/// through the instruction emulator, even at CPL 3.)
fn user64_native() -> Result<()> {
    run_pio("pio64u", 64, user64(CODE))
}

/// String port I/O: vmd refuses it (`can't emulate REP prefixed
/// IN(S)/OUT(S)`), so what matters is an exit record that says so:
/// vei_string, vei_rep, the element size, and the length of the whole
/// instruction.  vcpu.c's INS step (advance RIP, continue) must work.
fn string_io() -> Result<()> {
    let mut g = Guest::new("piostr")?;
    let p = Program::new(16, CODE, |a, m| {
        a.mov(dx, 0x61)?;
        a.mov(di, DATA as u32)?;
        m.here(a, "insb")?;
        a.insb()?;
        m.here(a, "after")?;
        a.out(0x81, al)?;
        m.here(a, "rep_outsb")?;
        a.rep().outsb()?;
        a.hlt()?;
        m.here(a, "rep_insw")?;
        a.rep().insw()?;
        a.hlt()
    });
    g.load(&p, &flat16(CODE))?;
    let cases = [
        ("insb", VEI_DIR_IN, 0x61, 1, 0),
        ("rep_outsb", VEI_DIR_OUT, 0x3f8, 1, 1),
        ("rep_insw", VEI_DIR_IN, 0x3f8, 2, 1),
    ];
    for (k, (mark, dir, port, size, rep)) in cases.into_iter().enumerate() {
        if k > 0 {
            // Start over at the instruction (vmd would end the VM), with
            // counts and pointers for it.
            let mut s = flat16(p.at(mark));
            s.vrs_gprs[VCPU_REGS_RCX as usize] = 3;
            s.vrs_gprs[VCPU_REGS_RSI as usize] = DATA;
            s.vrs_gprs[VCPU_REGS_RDI as usize] = DATA + 0x10;
            s.vrs_gprs[VCPU_REGS_RDX as usize] = port as u64;
            g.reset(&s)?;
        }
        let r = g.run()?;
        g.expect_io(r, dir, port, size)
            .map_err(|e| format!("{mark}: {e}"))?;
        let vei = *g.exit.vei();
        check(vei.vei_string == 1 && vei.vei_rep == rep, || {
            format!(
                "{mark}: vei_string {} vei_rep {}, want 1 {rep}",
                vei.vei_string, vei.vei_rep
            )
        })?;
        check(vei.vei_encoding == 0, || {
            format!("{mark}: vei_encoding {}", vei.vei_encoding)
        })?;
        check(vei.vei_insn_len as u64 == p.len_at(mark), || {
            format!(
                "{mark}: vei_insn_len {}, want {}",
                vei.vei_insn_len,
                p.len_at(mark)
            )
        })?;
        check(g.rip() == p.at(mark), || {
            format!("{mark}: rip 0x{:x}, want 0x{:x}", g.rip(), p.at(mark))
        })?;
        if mark == "insb" {
            g.skip_io();
            let r = g.run()?;
            g.expect_io(r, VEI_DIR_OUT, 0x81, 1)?;
            check(g.rip() == p.at("after"), || {
                format!("after insb: rip 0x{:x}", g.rip())
            })?;
        }
    }
    Ok(())
}

/// What vmd does with INS/OUTS (which OpenBSD's vmd refuses but Debian's
/// SeaBIOS needs): emulate from the registers before the instruction, then
/// write the GPRs back with WRITEREGS.  KVM's own handling must neither
/// overwrite the data vmd stored nor move rDI/rSI/rCX on its own.
fn string_io_emulated() -> Result<()> {
    let mut g = Guest::new("piostr2")?;
    let p = Program::new(32, CODE, |a, m| {
        a.mov(edi, DATA as u32)?;
        a.mov(ecx, 4)?;
        a.mov(dx, 0x511)?;
        m.here(a, "rep_insb")?;
        a.rep().insb()?;
        a.mov(esi, DATA as u32)?;
        a.mov(ecx, 3)?;
        a.mov(dx, 0x3f8)?;
        m.here(a, "rep_outsb")?;
        a.rep().outsb()?;
        m.here(a, "done")?;
        a.out(0x80, al)?;
        a.hlt()
    });
    g.load(&p, &prot32(CODE))?;
    // rep insb: four bytes from the port, as vmd would read them.
    let r = g.run()?;
    g.expect_io(r, VEI_DIR_IN, 0x511, 1)?;
    let v = *g.exit.vei();
    check(v.vei_string == 1 && v.vei_rep == 1, || {
        format!("string {} rep {}", v.vei_string, v.vei_rep)
    })?;
    check(g.rip() == p.at("rep_insb"), || {
        format!("rip 0x{:x}", g.rip())
    })?;
    check(
        g.gpr(VCPU_REGS_RDI) == DATA && g.gpr(VCPU_REGS_RCX) == 4,
        || {
            format!(
                "before: rdi 0x{:x} rcx {}",
                g.gpr(VCPU_REGS_RDI),
                g.gpr(VCPU_REGS_RCX)
            )
        },
    )?;
    g.write(DATA, b"QEMU")?;
    let mut regs = g.exit.vrs;
    regs.vrs_gprs[VCPU_REGS_RDI as usize] = DATA + 4;
    regs.vrs_gprs[VCPU_REGS_RCX as usize] = 0;
    regs.vrs_gprs[VCPU_REGS_RIP as usize] = p.at("rep_insb") + p.len_at("rep_insb");
    g.writeregs(VM_RWREGS_GPRS, &regs)?;
    // rep outsb: the exit shows rSI and rCX before KVM's batch.
    let r = g.run()?;
    g.expect_io(r, VEI_DIR_OUT, 0x3f8, 1)?;
    check(g.rip() == p.at("rep_outsb"), || {
        format!("outsb rip 0x{:x}", g.rip())
    })?;
    check(
        g.gpr(VCPU_REGS_RSI) == DATA && g.gpr(VCPU_REGS_RCX) == 3,
        || {
            format!(
                "outsb before: rsi 0x{:x} rcx {}",
                g.gpr(VCPU_REGS_RSI),
                g.gpr(VCPU_REGS_RCX)
            )
        },
    )?;
    check(g.exit.vei().vei_data & 0xff == b'Q' as u32, || {
        format!("first element 0x{:x}", g.exit.vei().vei_data)
    })?;
    let mut regs = g.exit.vrs;
    regs.vrs_gprs[VCPU_REGS_RSI as usize] = DATA + 3;
    regs.vrs_gprs[VCPU_REGS_RCX as usize] = 0;
    regs.vrs_gprs[VCPU_REGS_RIP as usize] = p.at("rep_outsb") + p.len_at("rep_outsb");
    g.writeregs(VM_RWREGS_GPRS, &regs)?;
    let r = g.run()?;
    g.expect_io(r, VEI_DIR_OUT, 0x80, 1)?;
    check(g.rip() == p.at("done"), || {
        format!("done rip 0x{:x}", g.rip())
    })?;
    let mut b = [0u8; 4];
    g.mem.read(DATA, &mut b).map_err(|e| e.to_string())?;
    check(&b == b"QEMU", || {
        format!("memory {:?}: KVM overwrote vmd's data", b)
    })?;
    let now = g.readregs(VM_RWREGS_GPRS)?;
    check(
        now.vrs_gprs[VCPU_REGS_RDI as usize] == DATA + 4
            && now.vrs_gprs[VCPU_REGS_RSI as usize] == DATA + 3,
        || {
            format!(
                "after: rdi 0x{:x} rsi 0x{:x}",
                now.vrs_gprs[VCPU_REGS_RDI as usize], now.vrs_gprs[VCPU_REGS_RSI as usize]
            )
        },
    )
}

/// Doorbells (vmm-sys's queue-notify extension, not vmm(4)'s): a 2-byte
/// write of an attached queue's index to its port signals that queue's
/// descriptor and does not exit; every other write to the port (another
/// queue, another width) exits as before, and once detached, so does
/// the queue's own.  Unsupported where the backend has none (/dev/vmm).
fn queue_notify() -> Result<crate::Outcome> {
    use std::os::fd::{AsFd, OwnedFd};
    const BELL: u16 = 0x1100;
    let mut g = Guest::new("doorbell")?;
    let bells: Vec<OwnedFd> = match (0..2).map(|_| g.vmm.queue_notify_fd()).collect() {
        Ok(b) => b,
        Err(e) if e.errno() == libc::EOPNOTSUPP => {
            return Ok(crate::Outcome::Unsupported(format!("no doorbells: {e}")))
        }
        Err(e) => return Err(e.to_string()),
    };
    for (q, b) in bells.iter().enumerate() {
        g.vmm
            .set_queue_notify(g.id, BELL, q as u16, b.as_fd(), true)
            .map_err(|e| e.to_string())?;
    }
    // The same port and queue twice: EEXIST.
    let again = g
        .vmm
        .set_queue_notify(g.id, BELL, 1, bells[1].as_fd(), true);
    check(
        again.as_ref().is_err_and(|e| e.errno() == libc::EEXIST),
        || format!("attaching queue 1 twice: {again:?}, want EEXIST"),
    )?;
    let p = Program::new(16, CODE, |a, m| {
        a.mov(dx, BELL as u32)?;
        // Rings queue 1: no exit.
        a.mov(ax, 1)?;
        a.out(dx, ax)?;
        a.mov(ax, 7)?;
        m.here(a, "queue7")?;
        a.out(dx, ax)?;
        a.mov(al, 1)?;
        m.here(a, "byte")?;
        a.out(dx, al)?;
        a.mov(ax, 1)?;
        m.here(a, "detached")?;
        a.out(dx, ax)?;
        a.mov(al, 0xee)?;
        m.here(a, "done")?;
        a.out(DONE as i32, al)?;
        a.hlt()
    });
    g.load(&p, &flat16(CODE))?;
    // How many times each doorbell rang (reading resets it).
    let rung = |b: &OwnedFd| -> u64 {
        use std::io::Read;
        let mut n = [0u8; 8];
        let read = b
            .try_clone()
            .map(std::fs::File::from)
            .and_then(|mut f| f.read(&mut n));
        match read {
            Ok(8) => u64::from_ne_bytes(n),
            _ => 0,
        }
    };
    let r = g.run()?;
    g.expect_out(r, BELL, 2, 7, p.at("queue7"))?;
    check(rung(&bells[1]) == 1 && rung(&bells[0]) == 0, || {
        "queue 1's write did not ring its doorbell alone".to_string()
    })?;
    g.skip_io();
    let r = g.run()?;
    g.expect_out(r, BELL, 1, 1, p.at("byte"))?;
    g.skip_io();
    g.vmm
        .set_queue_notify(g.id, BELL, 1, bells[1].as_fd(), false)
        .map_err(|e| e.to_string())?;
    let r = g.run()?;
    g.expect_out(r, BELL, 2, 1, p.at("detached"))?;
    check(rung(&bells[1]) == 0, || {
        "a detached doorbell rang".to_string()
    })?;
    g.skip_io();
    let r = g.run()?;
    g.expect_out(r, DONE, 1, 0xee, p.at("done"))?;
    Ok(crate::Outcome::Passed)
}
