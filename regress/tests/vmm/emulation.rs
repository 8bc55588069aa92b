//! A guest instruction the host's KVM cannot emulate ends VMM_IOC_RUN with
//! EIO and a message naming the instruction and RIP: no hang, no crash,
//! and the handle keeps working.  On the nested KVM of the development
//! machines, guest code at CPL 0 goes through KVM's instruction emulator,
//! which lacks some instructions (kvm-on-these-hosts.md); the test finds
//! one that fails here, and reports itself as not applicable on a host
//! that runs them all.
use crate::{Outcome, Test, Tests};
use iced_x86::code_asm::*;
use std::sync::Arc;
use vmm_regress::*;
use vmm_sys::abi::*;
use vmm_sys::Vmm;

pub fn tests() -> Tests {
    vec![(
        "emulation::failure_is_an_error",
        Test::Probing(failure_is_an_error),
    )]
}

/// Where the probe reports exceptions: vector in AL to this port.
const FAULT: u16 = 0x80;
const REACHED: u16 = 0x81;

type Emit = fn(&mut CodeAssembler) -> std::result::Result<(), IcedError>;

/// Candidates, from kvm-on-these-hosts.md, in long mode at CPL 0: (name,
/// instruction bytes for the message check, emitter).  Every one that
/// fails is checked.  Measured on the development machines: fwait,
/// cmpxchg16b and xrstor fail; fninit runs.
const CANDIDATES: [(&str, &[u8], Emit); 4] = [
    ("fninit", &[0xdb, 0xe3], |a| a.fninit()),
    ("fwait", &[0x9b], |a| a.wait()),
    ("cmpxchg16b", &[0x48, 0x0f, 0xc7, 0x0e], |a| {
        a.cmpxchg16b(xmmword_ptr(rsi))
    }),
    ("xrstor", &[0x0f, 0xae, 0x2e], |a| a.xrstor(ptr(rsi))),
];

/// What running one candidate did.
enum Probe {
    /// VMM_IOC_RUN failed: errno and message, and the instruction's RIP.
    Failed(vmm_sys::VmmError, u64),
    /// The instruction ran (or faulted into the guest's handler).
    Ran(String),
}

fn probe(vmm: &Arc<Vmm>, name: &str, emit: Emit) -> Result<(Probe, Guest)> {
    let mut g = Guest::with_vmm(vmm.clone(), name)?;
    let p = Program::new(64, CODE, |a, m| {
        a.mov(esi, DATA as u32)?;
        a.mov(eax, 0)?;
        a.mov(edx, 0)?;
        m.here(a, "insn")?;
        emit(a)?;
        m.here(a, "reached")?;
        a.out(REACHED as i32, al)?;
        a.hlt()?;
        // One stub per exception vector: report it, stop.
        for v in 0..32u32 {
            m.here(a, STUBS[v as usize])?;
            a.mov(al, v)?;
            a.out(FAULT as i32, al)?;
            a.hlt()?;
        }
        Ok(())
    });
    for v in 0..32u8 {
        g.set_idt64(v, p.at(STUBS[v as usize]))?;
    }
    g.write(DATA, &[0u8; 64])?;
    g.load(&p, &long64(CODE))?;
    let probe = match g.run_once() {
        Err(e) => Probe::Failed(e, p.at("insn")),
        Ok(r) if r == g.reason(VMX_EXIT_IO, SVM_VMEXIT_IOIO) => {
            let vei = g.exit.vei();
            Probe::Ran(if vei.vei_port == FAULT {
                format!("raised exception {}", vei.vei_data & 0xff)
            } else {
                "ran".into()
            })
        }
        Ok(r) => Probe::Ran(format!("exit 0x{r:x} at rip 0x{:x}", g.rip())),
    };
    Ok((probe, g))
}

const STUBS: [&str; 32] = [
    "v0", "v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9", "v10", "v11", "v12", "v13", "v14",
    "v15", "v16", "v17", "v18", "v19", "v20", "v21", "v22", "v23", "v24", "v25", "v26", "v27",
    "v28", "v29", "v30", "v31",
];

fn failure_is_an_error() -> Result<Outcome> {
    let vmm = Arc::new(Vmm::open().map_err(|e| e.to_string())?);
    let mut ran = Vec::new();
    let mut failing = Vec::new();
    for (name, bytes, emit) in CANDIDATES {
        let (result, mut failed) = probe(&vmm, name, emit)?;
        match result {
            Probe::Ran(what) => ran.push(format!("{name}: {what}")),
            Probe::Failed(e, rip) => {
                check(e.errno == libc::EIO, || {
                    format!("{name}: run failed with {e} (errno {}), want EIO", e.errno)
                })?;
                let text = e.to_string();
                let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
                let hex = hex.join(" ");
                check(text.contains(&format!("0x{rip:x}")), || {
                    format!("{name}: message {text:?} does not name rip 0x{rip:x}")
                })?;
                check(text.contains(&hex), || {
                    format!("{name}: message {text:?} does not name the bytes {hex}")
                })?;
                // Running it again fails the same way (no hang, no crash).
                match failed.run_once() {
                    Err(again) if again == e => {}
                    other => {
                        return Err(format!(
                            "{name}: second run gave {other:?}, want the same error"
                        ))
                    }
                }
                // The VM can be torn down.
                vmm.terminate(failed.id)
                    .map_err(|e| format!("{name}: terminate after the failure: {e}"))?;
                failing.push(name);
            }
        }
    }
    if failing.is_empty() {
        return Ok(Outcome::Unsupported(format!(
            "this host's KVM runs every candidate ({})",
            ran.join("; ")
        )));
    }
    // The handle runs another guest.
    let mut g = Guest::with_vmm(vmm.clone(), "after")?;
    let p = Program::new(16, CODE, |a, m| {
        m.here(a, "hlt")?;
        a.hlt()
    });
    g.load(&p, &flat16(CODE))?;
    let r = g.run()?;
    g.expect_hlt(r, p.at("hlt"))?;
    Ok(Outcome::Passed)
}
