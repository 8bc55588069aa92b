//! HLT exits, interrupt, exception and NMI injection through `vrp_inject`,
//! `vrp_irqready`, interrupt-window exits after VMM_IOC_INTR or
//! `vrp_intr_pending`, and kicks from other threads.
use crate::{Test, Tests};
use iced_x86::code_asm::*;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;
use vmm_regress::*;
use vmm_sys::abi::*;
use vmm_sys::ExitFlavour::{self, Svm, Vmx};
use vmm_sys::Vmm;

pub fn tests() -> Tests {
    vec![
        ("events::hlt_and_wake", Test::Plain(hlt_and_wake)),
        ("events::intr_real", Test::Plain(intr_real)),
        (
            "events::intr_held_until_sti",
            Test::Plain(|| intr_held(false)),
        ),
        (
            "events::intr_held_wakes_hlt",
            Test::Plain(|| intr_held(true)),
        ),
        ("events::intr_long64", Test::Plain(intr_long64)),
        (
            "events::int_window_vmx",
            Test::Plain(|| int_window(Vmx, false)),
        ),
        (
            "events::int_window_svm",
            Test::Plain(|| int_window(Svm, false)),
        ),
        (
            "events::int_window_intr_pending",
            Test::Plain(|| int_window(Vmx, true)),
        ),
        ("events::kick_from_thread", Test::Plain(kick_from_thread)),
        (
            "events::terminate_from_thread",
            Test::Plain(terminate_from_thread),
        ),
        ("events::exception_prot32", Test::Plain(exception_prot32)),
        ("events::exception_long64", Test::Plain(exception_long64)),
        ("events::nmi_real", Test::Plain(nmi_real)),
        ("events::nmi_long64", Test::Plain(nmi_long64)),
        (
            "events::intr_after_mmio_load",
            Test::Plain(|| inject_after_mmio_load(VCPU_INJECT_INTR)),
        ),
        (
            "events::nmi_after_mmio_load",
            Test::Plain(|| inject_after_mmio_load(VCPU_INJECT_NMI)),
        ),
        (
            "events::exception_after_mmio_load",
            Test::Plain(|| inject_after_mmio_load(VCPU_INJECT_EX)),
        ),
    ]
}

const MARK: u16 = 0x80;
const VECTOR: u8 = 0x30;

fn intr(vector: u8) -> vcpu_inject_event {
    vcpu_inject_event {
        vie_vector: vector,
        vie_type: VCPU_INJECT_INTR as u8,
        ..Default::default()
    }
}

fn exception(vector: u8, errorcode: u32) -> vcpu_inject_event {
    vcpu_inject_event {
        vie_vector: vector,
        vie_errorcode: errorcode,
        vie_type: VCPU_INJECT_EX as u8,
    }
}

fn nmi() -> vcpu_inject_event {
    vcpu_inject_event {
        vie_vector: 2,
        vie_type: VCPU_INJECT_NMI as u8,
        ..Default::default()
    }
}

fn irqready(g: &Guest, want: u8, at: &str) -> Result<()> {
    check(g.vrp.vrp_irqready == want, || {
        format!("{at}: vrp_irqready {}, want {want}", g.vrp.vrp_irqready)
    })
}

/// The real-mode interrupt frame at SS:SP: IP, CS, FLAGS.
fn frame16(g: &Guest) -> Result<[u16; 3]> {
    let top = g.gpr(VCPU_REGS_RSP) & 0xffff;
    Ok([g.read_u16(top)?, g.read_u16(top + 2)?, g.read_u16(top + 4)?])
}

/// `n` 8-byte stack slots at RSP.
fn stack64(g: &Guest, n: u64) -> Result<Vec<u64>> {
    let top = g.gpr(VCPU_REGS_RSP);
    (0..n).map(|k| g.read_u64(top + 8 * k)).collect()
}

/// `n` 4-byte stack slots at ESP.
fn stack32(g: &Guest, n: u64) -> Result<Vec<u32>> {
    let top = g.gpr(VCPU_REGS_RSP);
    (0..n).map(|k| g.read_u32(top + 4 * k)).collect()
}

/// A handler that reports `marker` on port 0x80, then returns (`iret`
/// in real mode) or stops (HLT).
fn handler(a: &mut CodeAssembler, marker: u8, ret: bool) -> std::result::Result<(), IcedError> {
    a.mov(al, marker as u32)?;
    a.out(MARK as i32, al)?;
    if ret {
        a.iret()
    } else {
        a.hlt()
    }
}

/// HLT exits with RIP past the HLT; running again resumes there; an
/// interrupt injected at a HLT exit (as vmd does when the PIC raises one)
/// runs the handler with the frame pointing past the HLT.
fn hlt_and_wake() -> Result<()> {
    let mut g = Guest::new("hlt")?;
    let p = Program::new(64, CODE, |a, m| {
        m.here(a, "hlt1")?;
        a.hlt()?;
        m.here(a, "after1")?;
        a.out(0x81, al)?;
        a.sti()?;
        m.here(a, "hlt2")?;
        a.hlt()?;
        m.here(a, "after2")?;
        a.out(0x82, al)?;
        a.hlt()?;
        m.here(a, "handler")?;
        handler(a, VECTOR, false)
    });
    g.set_idt64(VECTOR, p.at("handler"))?;
    let mut state = long64(CODE);
    state.vrs_gprs[VCPU_REGS_RAX as usize] = 0x77;
    g.load(&p, &state)?;
    let r = g.run()?;
    g.expect_hlt(r, p.at("hlt1"))?;
    irqready(&g, 0, "hlt with IF=0")?;
    let r = g.run()?;
    g.expect_out(r, 0x81, 1, 0x77, p.at("after1"))?;
    g.skip_io();
    let r = g.run()?;
    g.expect_hlt(r, p.at("hlt2"))?;
    irqready(&g, 1, "hlt with IF=1")?;
    g.vrp.vrp_inject = intr(VECTOR);
    let r = g.run()?;
    g.expect_out(r, MARK, 1, VECTOR as u32, p.at("handler") + 2)?;
    let f = stack64(&g, 5)?;
    check(f[0] == p.at("after2") && f[1] == SEL_CODE64 as u64, || {
        format!("interrupt frame {f:x?}, want rip 0x{:x}", p.at("after2"))
    })?;
    check(f[2] & 0x200 != 0 && f[3] == STACK_TOP, || {
        format!("interrupt frame {f:x?}: rflags without IF or wrong rsp")
    })?;
    // The handler runs with IF cleared (interrupt gate).
    check(g.gpr(VCPU_REGS_RFLAGS) & 0x200 == 0, || {
        format!("handler rflags 0x{:x}", g.gpr(VCPU_REGS_RFLAGS))
    })
}

/// Real mode: IF=0 → vrp_irqready 0; after sti → 1; an injected
/// interrupt goes through the IVT and `iret` returns to the next
/// instruction.
fn intr_real() -> Result<()> {
    let mut g = Guest::new("intr16")?;
    let p = Program::new(16, CODE, |a, m| {
        a.cli()?;
        a.nop()?;
        m.here(a, "o1")?;
        a.out(0x81, al)?;
        a.sti()?;
        a.nop()?;
        m.here(a, "o2")?;
        a.out(0x82, al)?;
        m.here(a, "o3")?;
        a.out(0x83, al)?;
        m.here(a, "hlt")?;
        a.hlt()?;
        m.here(a, "handler")?;
        handler(a, VECTOR, true)
    });
    g.set_ivt(VECTOR, p.at("handler"))?;
    g.load(&p, &flat16(CODE))?;
    let r = g.run()?;
    g.expect_io(r, VEI_DIR_OUT, 0x81, 1)?;
    irqready(&g, 0, "IF=0")?;
    g.skip_io();
    let r = g.run()?;
    g.expect_io(r, VEI_DIR_OUT, 0x82, 1)?;
    irqready(&g, 1, "IF=1")?;
    g.skip_io();
    g.vrp.vrp_inject = intr(VECTOR);
    let r = g.run()?;
    g.expect_out(r, MARK, 1, VECTOR as u32, p.at("handler") + 2)?;
    let f = frame16(&g)?;
    check(f == [p.at("o3") as u16, 0, 0x202], || {
        format!("interrupt frame {f:x?}, want [{:x}, 0, 202]", p.at("o3"))
    })?;
    irqready(&g, 0, "in the handler")?;
    g.skip_io();
    let r = g.run()?;
    g.expect_io(r, VEI_DIR_OUT, 0x83, 1)?;
    check(g.rip() == p.at("o3"), || {
        format!("after iret: rip 0x{:x}", g.rip())
    })?;
    g.skip_io();
    let r = g.run()?;
    g.expect_hlt(r, p.at("hlt"))
}

/// An interrupt injected while the guest has IF=0 is held (vmm(4) keeps
/// `vc_inject` until the guest is interruptible) and taken once `sti` and
/// its shadow have passed, within the same run: in a spin loop (`spin`)
/// or, with `hlt` in the shadow, as the wake-up of that HLT.
fn intr_held(end_with_hlt: bool) -> Result<()> {
    let mut g = Guest::new("intrheld")?;
    let p = Program::new(16, CODE, |a, m| {
        a.cli()?;
        m.here(a, "o1")?;
        a.out(0x81, al)?;
        a.mov(cx, 50)?;
        let mut l = a.create_label();
        a.set_label(&mut l)?;
        a.dec(cx)?;
        a.jnz(l)?;
        a.sti()?;
        if end_with_hlt {
            m.here(a, "hlt")?;
            a.hlt()?;
            m.here(a, "after")?;
            a.out(0x82, al)?;
        } else {
            a.nop()?;
            let spin = m.here(a, "after")?;
            a.jmp(spin)?;
        }
        m.here(a, "handler")?;
        handler(a, VECTOR, true)
    });
    g.set_ivt(VECTOR, p.at("handler"))?;
    g.load(&p, &flat16(CODE))?;
    let r = g.run()?;
    g.expect_io(r, VEI_DIR_OUT, 0x81, 1)?;
    irqready(&g, 0, "IF=0")?;
    g.skip_io();
    g.vrp.vrp_inject = intr(VECTOR);
    let r = g.run()?;
    if end_with_hlt && r == g.reason(VMX_EXIT_HLT, SVM_VMEXIT_HLT) {
        return Err(format!(
            "HLT exit at rip 0x{:x} with the injected interrupt still held: \
             vmd would wait for an interrupt it has already injected",
            g.rip()
        ));
    }
    g.expect_out(r, MARK, 1, VECTOR as u32, p.at("handler") + 2)?;
    check(g.gpr(VCPU_REGS_RCX) & 0xffff == 0, || {
        format!("interrupt taken with cx {:x}", g.gpr(VCPU_REGS_RCX))
    })?;
    let f = frame16(&g)?;
    check(f[0] == p.at("after") as u16, || {
        format!(
            "interrupt frame {f:x?}: taken at 0x{:x}, want 0x{:x}",
            f[0],
            p.at("after")
        )
    })?;
    if end_with_hlt {
        g.skip_io();
        let r = g.run()?;
        g.expect_io(r, VEI_DIR_OUT, 0x82, 1)?;
    }
    Ok(())
}

/// Long mode: an interrupt through a 64-bit IDT gate.
fn intr_long64() -> Result<()> {
    let mut g = Guest::new("intr64")?;
    let p = Program::new(64, CODE, |a, m| {
        a.sti()?;
        a.nop()?;
        m.here(a, "o1")?;
        a.out(0x81, al)?;
        m.here(a, "o2")?;
        a.out(0x82, al)?;
        a.hlt()?;
        m.here(a, "handler")?;
        handler(a, VECTOR, false)
    });
    g.set_idt64(VECTOR, p.at("handler"))?;
    g.load(&p, &long64(CODE))?;
    let r = g.run()?;
    g.expect_io(r, VEI_DIR_OUT, 0x81, 1)?;
    irqready(&g, 1, "IF=1")?;
    g.skip_io();
    g.vrp.vrp_inject = intr(VECTOR);
    let r = g.run()?;
    g.expect_out(r, MARK, 1, VECTOR as u32, p.at("handler") + 2)?;
    let f = stack64(&g, 5)?;
    let want = [
        p.at("o2"),
        SEL_CODE64 as u64,
        0x202,
        STACK_TOP,
        SEL_DATA as u64,
    ];
    check(f == want, || {
        format!("interrupt frame {f:x?}, want {want:x?}")
    })
}

/// VMM_IOC_INTR (or `vrp_intr_pending`) while the guest runs with IF=0:
/// the interrupt-window exit comes only once the guest has done `sti`
/// (and the instruction in its shadow), not during the cli loop.
fn int_window(f: ExitFlavour, via_run_params: bool) -> Result<()> {
    let mut g = Guest::new("intwin")?;
    g.set_flavour(f)?;
    let p = Program::new(16, CODE, |a, m| {
        a.cli()?;
        m.here(a, "sync")?;
        a.out(0x81, al)?;
        a.mov(cx, 300)?;
        let mut l = a.create_label();
        a.set_label(&mut l)?;
        a.dec(cx)?;
        a.jnz(l)?;
        a.sti()?;
        a.nop()?;
        let spin = m.here(a, "spin")?;
        a.jmp(spin)?;
        m.here(a, "handler")?;
        handler(a, VECTOR, true)
    });
    g.set_ivt(VECTOR, p.at("handler"))?;
    g.load(&p, &flat16(CODE))?;
    let r = g.run()?;
    g.expect_io(r, VEI_DIR_OUT, 0x81, 1)?;
    g.skip_io();
    let vip = vm_intr_params {
        vip_vm_id: g.id,
        vip_vcpu_id: 0,
        vip_intr: 1,
    };
    if via_run_params {
        g.vrp.vrp_intr_pending = 1;
    } else {
        g.vmm.intr(&vip).map_err(|e| e.to_string())?;
    }
    let r = g.run()?;
    g.expect_reason(r, VMX_EXIT_INT_WINDOW, SVM_VMEXIT_VINTR, "interrupt window")?;
    check(g.rip() == p.at("spin"), || {
        format!(
            "window exit at rip 0x{:x}, want 0x{:x} (after sti; nop)",
            g.rip(),
            p.at("spin")
        )
    })?;
    check(g.gpr(VCPU_REGS_RCX) & 0xffff == 0, || {
        format!("window exit with cx {:x}", g.gpr(VCPU_REGS_RCX))
    })?;
    check(g.gpr(VCPU_REGS_RFLAGS) & 0x200 != 0, || {
        "window exit with IF=0".into()
    })?;
    irqready(&g, 1, "window exit")?;
    // vmd clears the pending state and injects.
    g.vrp.vrp_intr_pending = 0;
    g.vmm
        .intr(&vm_intr_params { vip_intr: 0, ..vip })
        .map_err(|e| e.to_string())?;
    g.vrp.vrp_inject = intr(VECTOR);
    let r = g.run()?;
    g.expect_out(r, MARK, 1, VECTOR as u32, p.at("handler") + 2)?;
    let fr = frame16(&g)?;
    check(fr[0] == p.at("spin") as u16, || {
        format!("interrupt frame {fr:x?}")
    })
}

/// Runs `f` on this thread; if it has not returned after `secs`, kicks
/// the VM with VMM_IOC_TERM and, failing that, ends the process, so that
/// a broken kick fails the suite instead of hanging it.
fn with_watchdog<R>(vmm: &Arc<Vmm>, id: u32, secs: u64, what: &str, f: impl FnOnce() -> R) -> R {
    let (tx, rx) = mpsc::channel::<()>();
    let vmm = vmm.clone();
    let what = what.to_string();
    let dog = std::thread::spawn(move || {
        if rx.recv_timeout(Duration::from_secs(secs)) != Err(mpsc::RecvTimeoutError::Timeout) {
            return;
        }
        eprintln!("watchdog: {what}: VMM_IOC_RUN did not return in {secs} s; terminating the VM");
        let _ = vmm.terminate(id);
        if rx.recv_timeout(Duration::from_secs(5)) == Err(mpsc::RecvTimeoutError::Timeout) {
            eprintln!("watchdog: {what}: still stuck in VMM_IOC_RUN after VMM_IOC_TERM; giving up");
            std::process::exit(101);
        }
    });
    let r = f();
    let _ = tx.send(());
    let _ = dog.join();
    r
}

fn spin_guest(name: &str) -> Result<(Guest, Program)> {
    let g = Guest::new(name)?;
    let p = Program::new(16, CODE, |a, m| {
        a.cli()?;
        m.here(a, "sync")?;
        a.out(0x81, al)?;
        let spin = m.here(a, "spin")?;
        a.jmp(spin)
    });
    g.load(&p, &flat16(CODE))?;
    Ok((g, p))
}

/// VMM_IOC_INTR from another thread gets a vCPU spinning with IF=0 out of
/// VMM_IOC_RUN with VM_EXIT_NONE; running again resumes the loop.
fn kick_from_thread() -> Result<()> {
    let (mut g, p) = spin_guest("kick")?;
    let r = g.run()?;
    g.expect_io(r, VEI_DIR_OUT, 0x81, 1)?;
    g.skip_io();
    for round in 0..2 {
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let vmm = g.vmm.clone();
        let id = g.id;
        // Keep kicking until the run returns: a kick that arrives before
        // the vCPU enters the guest only marks the interrupt pending.
        let kicker = std::thread::spawn(move || {
            let vip = vm_intr_params {
                vip_vm_id: id,
                vip_vcpu_id: 0,
                vip_intr: 1,
            };
            // VMM_IOC_INFO shows the vCPU running before it is kicked.
            let state = || -> Result<u8> {
                let info = vmm.info().map_err(|e| e.to_string())?;
                let vm = info
                    .iter()
                    .find(|i| i.vir_id == id)
                    .ok_or("vm not listed")?;
                Ok(vm.vir_vcpu_state[0])
            };
            let mut seen = state()?;
            for _ in 0..100 {
                if seen == VCPU_STATE_RUNNING as u8 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
                seen = state()?;
            }
            if seen != VCPU_STATE_RUNNING as u8 {
                // Kick anyway, so that the run ends; report afterwards.
                let _ = vmm.intr(&vip);
                return Err(format!(
                    "vir_vcpu_state {seen} while spinning in VMM_IOC_RUN"
                ));
            }
            let mut n = 0;
            while stop_rx.recv_timeout(Duration::from_millis(20)).is_err() {
                vmm.intr(&vip).map_err(|e| e.to_string())?;
                n += 1;
            }
            Ok::<_, String>(n)
        });
        let vmm = g.vmm.clone();
        let r = with_watchdog(&vmm, g.id, 5, "kick_from_thread", || g.run_once());
        let _ = stop_tx.send(());
        let kicks = kicker.join().map_err(|_| "kicker panicked")??;
        let r = r.map_err(|e| e.to_string())?;
        check(r == VM_EXIT_NONE as u16, || {
            format!("round {round}: exit reason 0x{r:x} after {kicks} kicks, want VM_EXIT_NONE")
        })?;
        check(g.rip() == p.at("spin"), || {
            format!("round {round}: rip 0x{:x} after the kick", g.rip())
        })?;
        irqready(&g, 0, "kicked with IF=0")?;
        let info = g.vmm.info().map_err(|e| e.to_string())?;
        let state = info
            .iter()
            .find(|i| i.vir_id == g.id)
            .map(|i| i.vir_vcpu_state[0]);
        check(state == Some(VCPU_STATE_STOPPED as u8), || {
            format!("vir_vcpu_state {state:?} after the run returned")
        })?;
        g.vmm
            .intr(&vm_intr_params {
                vip_vm_id: g.id,
                vip_vcpu_id: 0,
                vip_intr: 0,
            })
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// VMM_IOC_TERM from another thread ends a VMM_IOC_RUN spinning in the
/// guest with VM_EXIT_TERMINATED; the VM is gone afterwards.
fn terminate_from_thread() -> Result<()> {
    let (mut g, _p) = spin_guest("term")?;
    let r = g.run()?;
    g.expect_io(r, VEI_DIR_OUT, 0x81, 1)?;
    g.skip_io();
    let vmm = g.vmm.clone();
    let id = g.id;
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        vmm.terminate(id)
    });
    let vmm = g.vmm.clone();
    let r = with_watchdog(&vmm, g.id, 5, "terminate_from_thread", || g.run_once());
    killer
        .join()
        .map_err(|_| "killer panicked")?
        .map_err(|e| e.to_string())?;
    let r = r.map_err(|e| e.to_string())?;
    check(r == VM_EXIT_TERMINATED as u16, || {
        format!("exit reason 0x{r:x}, want VM_EXIT_TERMINATED")
    })?;
    match g.run_once() {
        Err(e) if e.errno == libc::ENOENT => Ok(()),
        other => Err(format!("run after terminate: {other:?}, want ENOENT")),
    }
}

/// 32-bit protected mode: #GP with an error code and #UD without one,
/// through 32-bit interrupt gates.
fn exception_prot32() -> Result<()> {
    let mut g = Guest::new("exc32")?;
    let p = Program::new(32, CODE, |a, m| {
        m.here(a, "o1")?;
        a.out(0x81, al)?;
        m.here(a, "o2")?;
        a.out(0x82, al)?;
        a.hlt()?;
        m.here(a, "gp")?;
        handler(a, 13, false)?;
        m.here(a, "ud")?;
        handler(a, 6, false)
    });
    g.set_idt32(13, p.at("gp"))?;
    g.set_idt32(6, p.at("ud"))?;
    g.load(&p, &prot32(CODE))?;
    let r = g.run()?;
    g.expect_io(r, VEI_DIR_OUT, 0x81, 1)?;
    g.skip_io();
    g.vrp.vrp_inject = exception(13, 0x1234);
    let r = g.run()?;
    g.expect_out(r, MARK, 1, 13, p.at("gp") + 2)?;
    let f = stack32(&g, 4)?;
    let want = [0x1234, p.at("o2") as u32, SEL_CODE32 as u32, 0x2];
    check(f == want, || {
        format!("#GP frame {f:x?}, want {want:x?} (error code, eip, cs, eflags)")
    })?;
    check(g.gpr(VCPU_REGS_RSP) == STACK_TOP - 16, || {
        format!("esp 0x{:x}", g.gpr(VCPU_REGS_RSP))
    })?;
    // #UD pushes no error code.
    let mut regs = g.readregs(VM_RWREGS_GPRS)?;
    regs.vrs_gprs[VCPU_REGS_RIP as usize] = p.at("o2");
    regs.vrs_gprs[VCPU_REGS_RSP as usize] = STACK_TOP;
    g.writeregs(VM_RWREGS_GPRS, &regs)?;
    g.vrp.vrp_inject = exception(6, 0x5678);
    let r = g.run()?;
    g.expect_out(r, MARK, 1, 6, p.at("ud") + 2)?;
    let f = stack32(&g, 3)?;
    let want = [p.at("o2") as u32, SEL_CODE32 as u32, 0x2];
    check(f == want, || {
        format!("#UD frame {f:x?}, want {want:x?} (eip, cs, eflags)")
    })
}

/// Long mode: #GP with an error code through a 64-bit gate.
fn exception_long64() -> Result<()> {
    let mut g = Guest::new("exc64")?;
    let p = Program::new(64, CODE, |a, m| {
        m.here(a, "o1")?;
        a.out(0x81, al)?;
        m.here(a, "o2")?;
        a.out(0x82, al)?;
        a.hlt()?;
        m.here(a, "gp")?;
        handler(a, 13, false)
    });
    g.set_idt64(13, p.at("gp"))?;
    g.load(&p, &long64(CODE))?;
    let r = g.run()?;
    g.expect_io(r, VEI_DIR_OUT, 0x81, 1)?;
    g.skip_io();
    g.vrp.vrp_inject = exception(13, 0xbeef);
    let r = g.run()?;
    g.expect_out(r, MARK, 1, 13, p.at("gp") + 2)?;
    let f = stack64(&g, 6)?;
    let want = [
        0xbeef,
        p.at("o2"),
        SEL_CODE64 as u64,
        0x2,
        STACK_TOP,
        SEL_DATA as u64,
    ];
    check(f == want, || {
        format!("#GP frame {f:x?}, want {want:x?} (error code, rip, cs, rflags, rsp, ss)")
    })
}

/// NMI in real mode through IVT vector 2, with IF=0 (NMIs ignore IF).
fn nmi_real() -> Result<()> {
    let mut g = Guest::new("nmi16")?;
    let p = Program::new(16, CODE, |a, m| {
        a.cli()?;
        m.here(a, "o1")?;
        a.out(0x81, al)?;
        m.here(a, "o2")?;
        a.out(0x82, al)?;
        a.hlt()?;
        m.here(a, "nmi")?;
        handler(a, 2, true)
    });
    g.set_ivt(2, p.at("nmi"))?;
    g.load(&p, &flat16(CODE))?;
    let r = g.run()?;
    g.expect_io(r, VEI_DIR_OUT, 0x81, 1)?;
    g.skip_io();
    g.vrp.vrp_inject = nmi();
    let r = g.run()?;
    g.expect_out(r, MARK, 1, 2, p.at("nmi") + 2)?;
    let f = frame16(&g)?;
    check(f == [p.at("o2") as u16, 0, 0x2], || {
        format!("NMI frame {f:x?}")
    })?;
    g.skip_io();
    let r = g.run()?;
    g.expect_io(r, VEI_DIR_OUT, 0x82, 1)
}

/// NMI in long mode through IDT vector 2.
fn nmi_long64() -> Result<()> {
    let mut g = Guest::new("nmi64")?;
    let p = Program::new(64, CODE, |a, m| {
        m.here(a, "o1")?;
        a.out(0x81, al)?;
        m.here(a, "o2")?;
        a.out(0x82, al)?;
        a.hlt()?;
        m.here(a, "nmi")?;
        handler(a, 2, false)
    });
    g.set_idt64(2, p.at("nmi"))?;
    g.load(&p, &long64(CODE))?;
    let r = g.run()?;
    g.expect_io(r, VEI_DIR_OUT, 0x81, 1)?;
    g.skip_io();
    g.vrp.vrp_inject = nmi();
    let r = g.run()?;
    g.expect_out(r, MARK, 1, 2, p.at("nmi") + 2)?;
    let f = stack64(&g, 5)?;
    let want = [
        p.at("o2"),
        SEL_CODE64 as u64,
        0x2,
        STACK_TOP,
        SEL_DATA as u64,
    ];
    check(f == want, || format!("NMI frame {f:x?}, want {want:x?}"))
}

/// An event injected on the run that also completes an MMIO load (vmd
/// wrote the loaded value and the next RIP): the load completes with
/// vmd's value first, then the handler runs with the frame pointing past
/// the load.  `kind` is VCPU_INJECT_INTR, _NMI or _EX.
fn inject_after_mmio_load(kind: u32) -> Result<()> {
    let mut g = Guest::new("injmmio")?;
    let vector = match kind {
        VCPU_INJECT_INTR => VECTOR,
        VCPU_INJECT_NMI => 2,
        _ => 13,
    };
    let p = Program::new(64, CODE, |a, m| {
        a.mov(ebx, MMIO_BASE as u32)?;
        a.sti()?;
        a.mov(rcx, -1i64)?;
        m.here(a, "load")?;
        a.mov(ecx, dword_ptr(rbx + 0x40))?;
        m.here(a, "after")?;
        a.out(0x81, al)?;
        a.hlt()?;
        m.here(a, "handler")?;
        handler(a, vector, false)
    });
    g.set_idt64(vector, p.at("handler"))?;
    g.load(&p, &long64(CODE))?;
    let r = g.run()?;
    g.expect_reason(r, VMX_EXIT_EPT_VIOLATION, SVM_VMEXIT_NPF, "load")?;
    check(g.rip() == p.at("load"), || format!("rip 0x{:x}", g.rip()))?;
    irqready(&g, 1, "at the load")?;
    g.exit.vrs.vrs_gprs[VCPU_REGS_RCX as usize] = 0x1357_9bdf;
    g.exit.vrs.vrs_gprs[VCPU_REGS_RIP as usize] = p.at("after");
    g.vrp.vrp_inject = match kind {
        VCPU_INJECT_INTR => intr(VECTOR),
        VCPU_INJECT_NMI => nmi(),
        _ => exception(13, 0x42),
    };
    let r = g.run()?;
    g.expect_out(r, MARK, 1, vector as u32, p.at("handler") + 2)?;
    check(g.gpr(VCPU_REGS_RCX) == 0x1357_9bdf, || {
        format!(
            "rcx 0x{:x} in the handler, want vmd's 0x13579bdf",
            g.gpr(VCPU_REGS_RCX)
        )
    })?;
    let f = stack64(&g, 6)?;
    let frame = if kind == VCPU_INJECT_EX {
        check(f[0] == 0x42, || format!("#GP frame {f:x?}: error code"))?;
        &f[1..]
    } else {
        &f[..5]
    };
    let want = [
        p.at("after"),
        SEL_CODE64 as u64,
        0x202,
        STACK_TOP,
        SEL_DATA as u64,
    ];
    check(frame == want, || {
        format!("frame {frame:x?}, want {want:x?}")
    })
}
