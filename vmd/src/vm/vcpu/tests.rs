//! The vCPU state machine and run loop driven through a fake vmm(4), so
//! pause, halt, stop and injection are tested without `/dev/kvm`.
use super::*;
use crate::devices::i8259::{Chip, I8259};
use crate::devices::irq::IrqLines;
use std::sync::mpsc;
use std::time::Instant;

/// How the fake's `VMM_IOC_RUN` behaves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Guest {
    /// Returns at once with `VM_EXIT_NONE` (after a short sleep).
    Spins,
    /// Stays "in the guest" until kicked by `VMM_IOC_INTR` or terminated.
    Busy,
    /// Executes HLT: returns an HLT exit at once.
    Halts,
}

/// A vmm(4) that records what the loop asks of it.  The guest accepts
/// interrupts (`vrp_irqready` = 1) and sends the PIC a non-specific EOI
/// for each vector it gets, as an interrupt handler would.
struct FakeVmm {
    pic: Arc<I8259>,
    guest: Mutex<Guest>,
    kicked: Mutex<bool>,
    kick_cv: Condvar,
    terminated: AtomicBool,
    injected: Mutex<Vec<u8>>,
    runs: AtomicU64,
    writes: Mutex<Vec<u32>>,
}

impl FakeVmm {
    fn new(pic: Arc<I8259>, guest: Guest) -> Arc<FakeVmm> {
        Arc::new(FakeVmm {
            pic,
            guest: Mutex::new(guest),
            kicked: Mutex::new(false),
            kick_cv: Condvar::new(),
            terminated: AtomicBool::new(false),
            injected: Mutex::new(Vec::new()),
            runs: AtomicU64::new(0),
            writes: Mutex::new(Vec::new()),
        })
    }

    fn injected(&self) -> Vec<u8> {
        self.injected.lock().unwrap().clone()
    }

    fn set_guest(&self, g: Guest) {
        *self.guest.lock().unwrap() = g;
    }
}

impl VmmBackend for FakeVmm {
    fn run(&self, vrp: &mut vm_run_params, _exit: &mut vm_exit) -> Result<(), VmmError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        if vrp.vrp_inject.vie_type as u32 == VCPU_INJECT_INTR {
            self.injected
                .lock()
                .unwrap()
                .push(vrp.vrp_inject.vie_vector);
            self.pic.write_port(Chip::Master, 0, 0x20);
        }
        vrp.vrp_irqready = 1;
        vrp.vrp_exit_reason = VM_EXIT_NONE as u16;
        let guest = *self.guest.lock().unwrap();
        match guest {
            Guest::Spins => std::thread::sleep(Duration::from_millis(1)),
            Guest::Halts => vrp.vrp_exit_reason = VMX_EXIT_HLT as u16,
            Guest::Busy => {
                let mut k = self.kicked.lock().unwrap();
                while !*k && !self.terminated.load(Ordering::SeqCst) {
                    k = self.kick_cv.wait(k).unwrap();
                }
                *k = false;
            }
        }
        if self.terminated.load(Ordering::SeqCst) {
            vrp.vrp_exit_reason = VM_EXIT_TERMINATED as u16;
        }
        Ok(())
    }

    fn intr(&self, vip: &vm_intr_params) -> Result<(), VmmError> {
        if vip.vip_intr != 0 {
            *self.kicked.lock().unwrap() = true;
            self.kick_cv.notify_all();
        }
        Ok(())
    }

    fn resetcpu(&self, _vrp: &vm_resetcpu_params) -> Result<(), VmmError> {
        Ok(())
    }

    fn writeregs(&self, vrwp: &vm_rwregs_params) -> Result<(), VmmError> {
        self.writes.lock().unwrap().push(vrwp.vrwp_mask as u32);
        Ok(())
    }

    fn terminate(&self, _vm_id: u32) -> Result<(), VmmError> {
        self.terminated.store(true, Ordering::SeqCst);
        self.kick_cv.notify_all();
        Ok(())
    }
}

/// The PIC pair programmed as a BIOS leaves it: vectors 0x20 and 0x28,
/// nothing masked, its notifications going to `control`.
fn programmed_pic() -> Arc<I8259> {
    let pic = Arc::new(I8259::new());
    for (chip, base, cascade) in [(Chip::Master, 0x20, 0x04), (Chip::Slave, 0x28, 0x02)] {
        pic.write_port(chip, 0, 0x11);
        pic.write_port(chip, 1, base);
        pic.write_port(chip, 1, cascade);
        pic.write_port(chip, 1, 0x01);
    }
    pic
}

fn in_service(pic: &I8259) -> u8 {
    pic.write_port(Chip::Master, 0, 0x0B); // OCW3: read ISR
    pic.read_port(Chip::Master, 0)
}

fn rig(guest: Guest) -> (Arc<I8259>, Arc<FakeVmm>, Arc<VcpuControl>) {
    let pic = programmed_pic();
    let vmm = FakeVmm::new(pic.clone(), guest);
    let control = VcpuControl::new(vmm.clone(), 1, 0);
    let c = control.clone();
    pic.set_notify(move |pending| c.interrupt_pending(pending));
    (pic, vmm, control)
}

fn pulse(pic: &I8259, irq: u8) {
    pic.assert_irq(irq);
    pic.deassert_irq(irq);
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn spawn_loop(
    control: &Arc<VcpuControl>,
    pic: &Arc<I8259>,
) -> std::thread::JoinHandle<Result<LoopEnd, VmmError>> {
    let control = control.clone();
    let pic = pic.clone();
    std::thread::spawn(move || {
        let mut vcpu = Vcpu::new(control);
        run_loop(&mut vcpu, &*pic, |reason, _exit| {
            let action = if reason == VMX_EXIT_HLT as u16 {
                Action::Halt
            } else {
                Action::Continue
            };
            Ok::<_, VmmError>((action, WriteBack::default()))
        })
    })
}

/// An interrupt source that, on its first INTA, has a pause requested
/// before the vector gets back to the loop: the pause lands exactly
/// between the ack and the run.
struct PauseOnFirstAck {
    pic: Arc<I8259>,
    control: Arc<VcpuControl>,
    pauser: Mutex<Option<std::thread::JoinHandle<bool>>>,
}

impl InterruptSource for PauseOnFirstAck {
    fn is_pending(&self) -> bool {
        self.pic.is_pending()
    }
    fn ack(&self) -> Option<u8> {
        let v = self.pic.ack();
        let mut pauser = self.pauser.lock().unwrap();
        if pauser.is_none() {
            let control = self.control.clone();
            *pauser = Some(std::thread::spawn(move || control.pause()));
            wait_for("the pause request", || self.control.is_paused());
        }
        v
    }
}

/// The bug this module was written for: an interrupt acknowledged from
/// the PIC just before a pause must still reach the guest, and one that
/// arrives during the pause must not overwrite it.  Before, the loop
/// acked, saw the pause and skipped the run; after the unpause it acked
/// again, so the first vector stayed in service and blocked its line and
/// every lower one for good.
#[test]
fn an_interrupt_acked_before_a_pause_is_delivered_after_it() {
    let (pic, vmm, control) = rig(Guest::Busy);
    let src = Arc::new(PauseOnFirstAck {
        pic: pic.clone(),
        control: control.clone(),
        pauser: Mutex::new(None),
    });
    pulse(&pic, 4);
    let looper = {
        let (control, src) = (control.clone(), src.clone());
        std::thread::spawn(move || {
            let mut vcpu = Vcpu::new(control);
            vcpu.vrp.vrp_irqready = 1;
            run_loop(&mut vcpu, &*src, |_, _| {
                Ok::<_, VmmError>((Action::Continue, WriteBack::default()))
            })
        })
    };
    wait_for("the pauser", || src.pauser.lock().unwrap().is_some());
    let pauser = src.pauser.lock().unwrap().take().unwrap();
    assert!(pauser.join().unwrap(), "pause returns once the vCPU parked");
    assert_eq!(vmm.injected(), [0x24], "the acked vector reached the guest");
    // An interrupt arrives while paused, then the unpause.
    pulse(&pic, 0);
    assert_eq!(control.state(), VcpuState::Paused { halted: false });
    vmm.set_guest(Guest::Spins);
    assert!(control.unpause());
    wait_for("the timer vector", || vmm.injected().len() == 2);
    control.stop();
    assert_eq!(looper.join().unwrap().unwrap(), LoopEnd::Stopped);
    assert_eq!(vmm.injected(), [0x24, 0x20]);
    assert_eq!(in_service(&pic), 0, "every delivered vector was EOI'd");
}

/// The same through the whole loop in its own thread: timer interrupts
/// keep arriving across pauses and are all delivered.
#[test]
fn interrupts_keep_flowing_across_pause_and_unpause() {
    let (pic, vmm, control) = rig(Guest::Spins);
    let looper = spawn_loop(&control, &pic);
    for round in 1..=5 {
        pulse(&pic, 4);
        pulse(&pic, 0);
        wait_for("both vectors", || vmm.injected().len() >= 4 * round - 2);
        assert!(control.pause());
        pulse(&pic, 0);
        pulse(&pic, 4);
        let seen = vmm.injected().len();
        std::thread::sleep(Duration::from_millis(10));
        assert!(
            vmm.injected().len() <= seen + 1,
            "nothing runs while paused"
        );
        assert!(control.unpause());
        wait_for("the vectors raised while paused", || {
            vmm.injected().len() >= 4 * round
        });
        // Let the run loop settle so the next round starts clean.
        wait_for("idle PIC", || in_service(&pic) == 0 && !pic.is_pending());
    }
    control.stop();
    assert_eq!(looper.join().unwrap().unwrap(), LoopEnd::Stopped);
    let v = vmm.injected();
    assert_eq!(v.iter().filter(|&&x| x == 0x20).count(), 10, "{v:x?}");
    assert_eq!(v.iter().filter(|&&x| x == 0x24).count(), 10, "{v:x?}");
}

#[test]
fn a_second_inject_never_overwrites_one_not_yet_run() {
    let (pic, vmm, control) = rig(Guest::Spins);
    let mut vcpu = Vcpu::new(control);
    vcpu.vrp.vrp_irqready = 1;
    pulse(&pic, 4);
    vcpu.inject(&*pic);
    pulse(&pic, 0);
    vcpu.inject(&*pic);
    assert_eq!(vcpu.vrp.vrp_inject.vie_vector, 0x24);
    assert_eq!(vcpu.vrp.vrp_intr_pending, 1, "IRQ 0 still waits in the PIC");
    assert_eq!(in_service(&pic), 1 << 4, "only IRQ 4 was acknowledged");
    vcpu.run_once().unwrap();
    assert_eq!(vcpu.vrp.vrp_inject.vie_type as u32, VCPU_INJECT_NONE);
    vcpu.inject(&*pic);
    assert_eq!(vcpu.vrp.vrp_inject.vie_vector, 0x20);
    assert_eq!(vmm.injected(), [0x24]);
}

#[test]
fn nothing_is_acked_until_the_guest_can_take_it() {
    let (pic, _vmm, control) = rig(Guest::Spins);
    let mut vcpu = Vcpu::new(control);
    pulse(&pic, 0);
    vcpu.inject(&*pic);
    assert_eq!(vcpu.vrp.vrp_inject.vie_type as u32, VCPU_INJECT_NONE);
    assert_eq!(vcpu.vrp.vrp_intr_pending, 1, "asks for an interrupt window");
    assert_eq!(in_service(&pic), 0);
}

#[test]
fn a_halted_vcpu_sleeps_until_a_line_is_raised() {
    let (pic, vmm, control) = rig(Guest::Halts);
    let looper = spawn_loop(&control, &pic);
    wait_for("halt", || control.state() == VcpuState::Halted);
    let runs = vmm.runs.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        vmm.runs.load(Ordering::SeqCst),
        runs,
        "no runs while halted"
    );
    let wakeups = control.wakeups();
    pulse(&pic, 0);
    wait_for("the timer vector", || vmm.injected() == [0x20]);
    wait_for("halt again", || control.state() == VcpuState::Halted);
    assert_eq!(control.wakeups(), wakeups + 1, "one interrupt, one wake-up");
    control.stop();
    assert_eq!(looper.join().unwrap().unwrap(), LoopEnd::Stopped);
}

#[test]
fn pause_of_a_halted_vcpu_keeps_it_halted_and_an_interrupt_waits() {
    let (pic, vmm, control) = rig(Guest::Halts);
    let looper = spawn_loop(&control, &pic);
    wait_for("halt", || control.state() == VcpuState::Halted);
    assert!(control.pause());
    assert!(!control.pause(), "already paused");
    assert_eq!(control.state(), VcpuState::Paused { halted: true });
    pulse(&pic, 0);
    assert_eq!(control.state(), VcpuState::Paused { halted: false });
    std::thread::sleep(Duration::from_millis(20));
    assert!(vmm.injected().is_empty(), "not delivered while paused");
    assert!(control.unpause());
    assert!(!control.unpause(), "not paused any more");
    wait_for("the timer vector", || vmm.injected() == [0x20]);
    control.stop();
    assert_eq!(looper.join().unwrap().unwrap(), LoopEnd::Stopped);
}

#[test]
fn stop_ends_the_loop_from_every_state() {
    for (guest, state) in [
        (Guest::Busy, None),
        (Guest::Halts, Some(VcpuState::Halted)),
        (Guest::Spins, Some(VcpuState::Paused { halted: false })),
    ] {
        let (pic, _vmm, control) = rig(guest);
        let looper = spawn_loop(&control, &pic);
        match state {
            Some(VcpuState::Halted) => wait_for("halt", || control.state() == VcpuState::Halted),
            Some(VcpuState::Paused { .. }) => assert!(control.pause()),
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
        control.stop();
        assert_eq!(looper.join().unwrap().unwrap(), LoopEnd::Stopped);
        assert!(!control.pause() && !control.unpause(), "stopping is final");
    }
}

#[test]
fn reboot_ends_the_loop_and_write_back_follows_the_handler() {
    let (pic, vmm, control) = rig(Guest::Halts);
    let mut vcpu = Vcpu::new(control);
    let (tx, rx) = mpsc::channel();
    let mut n = 0;
    let end = run_loop(&mut vcpu, &*pic, |_reason, _exit| {
        n += 1;
        let _ = tx.send(n);
        let wb = WriteBack {
            gprs: n == 1,
            sregs: n == 2,
        };
        let action = if n == 2 {
            Action::Reboot
        } else {
            Action::Continue
        };
        Ok::<_, VmmError>((action, wb))
    })
    .unwrap();
    assert_eq!(end, LoopEnd::Reboot);
    assert_eq!(rx.try_iter().count(), 2);
    assert_eq!(
        *vmm.writes.lock().unwrap(),
        [VM_RWREGS_GPRS, VM_RWREGS_SREGS]
    );
}
