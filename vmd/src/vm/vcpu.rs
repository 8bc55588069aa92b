//! The vCPU's run state and its run loop in small steps (vmd's
//! `vcpu_run_loop`): wait until runnable, inject a pending interrupt, run
//! once, complete the exit.
//!
//! All of a vCPU's state changes go through one [`VcpuState`] under one
//! mutex and condition variable, so a pause, a stop, a halt and an
//! interrupt that wakes a halted vCPU cannot cross each other.  The loop
//! talks to vmm(4) through [`VmmBackend`], which `vmm_sys::Vmm` implements
//! and which tests replace with a fake to drive pause, halt, reset and
//! injection without `/dev/kvm`.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use vmm_sys::abi::*;
use vmm_sys::{Vmm, VmmError};

use super::exit::Action;

/// The vmm(4) verbs the vCPU loop and its controllers use.
pub trait VmmBackend: Send + Sync {
    fn run(&self, vrp: &mut vm_run_params, exit: &mut vm_exit) -> Result<(), VmmError>;
    fn intr(&self, vip: &vm_intr_params) -> Result<(), VmmError>;
    fn resetcpu(&self, vrp: &vm_resetcpu_params) -> Result<(), VmmError>;
    fn writeregs(&self, vrwp: &vm_rwregs_params) -> Result<(), VmmError>;
    fn terminate(&self, vm_id: u32) -> Result<(), VmmError>;
}

impl VmmBackend for Vmm {
    fn run(&self, vrp: &mut vm_run_params, exit: &mut vm_exit) -> Result<(), VmmError> {
        Vmm::run(self, vrp, exit)
    }
    fn intr(&self, vip: &vm_intr_params) -> Result<(), VmmError> {
        Vmm::intr(self, vip)
    }
    fn resetcpu(&self, vrp: &vm_resetcpu_params) -> Result<(), VmmError> {
        Vmm::resetcpu(self, vrp)
    }
    fn writeregs(&self, vrwp: &vm_rwregs_params) -> Result<(), VmmError> {
        Vmm::writeregs(self, vrwp)
    }
    fn terminate(&self, vm_id: u32) -> Result<(), VmmError> {
        Vmm::terminate(self, vm_id)
    }
}

/// Where the vCPU's external interrupts come from: the i8259 pair in
/// era B.
pub trait InterruptSource: Send + Sync {
    /// An interrupt waits for INTA.
    fn is_pending(&self) -> bool;
    /// INTA: the vector to deliver, moved to in-service.
    fn ack(&self) -> Option<u8>;
}

impl InterruptSource for crate::devices::i8259::I8259 {
    fn is_pending(&self) -> bool {
        crate::devices::i8259::I8259::is_pending(self)
    }
    fn ack(&self) -> Option<u8> {
        crate::devices::i8259::I8259::ack(self)
    }
}

/// Where a vCPU is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuState {
    /// Runs the guest (or is about to).
    Running,
    /// The guest executed HLT with no interrupt pending: the vCPU sleeps
    /// until one is.
    Halted,
    /// `vmctl pause`: the vCPU parks between runs; `halted` is what it
    /// goes back to.
    Paused { halted: bool },
    /// The VM is ending; never left.
    Stopping,
}

struct Shared {
    state: VcpuState,
    /// The vCPU thread sits parked in `wait_runnable` because of a pause
    /// (or has gone): what `pause` waits for.
    parked: bool,
}

/// The vCPU's state as seen by every thread: the vCPU itself, the event
/// thread, the PIC's notifications and the VM's channel to vmd.
pub struct VcpuControl {
    shared: Mutex<Shared>,
    changed: Condvar,
    vmm: Arc<dyn VmmBackend>,
    vm_id: u32,
    vcpu_id: u32,
    /// The PIC's last "interrupt pending" notification, put back after a
    /// pause kick.
    intr_line: AtomicBool,
    /// Times the vCPU left `wait_runnable` after sleeping (for tests and
    /// the idle wake-up figures).
    wakeups: AtomicU64,
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl VcpuControl {
    pub fn new(vmm: Arc<dyn VmmBackend>, vm_id: u32, vcpu_id: u32) -> Arc<VcpuControl> {
        Arc::new(VcpuControl {
            shared: Mutex::new(Shared {
                state: VcpuState::Running,
                parked: false,
            }),
            changed: Condvar::new(),
            vmm,
            vm_id,
            vcpu_id,
            intr_line: AtomicBool::new(false),
            wakeups: AtomicU64::new(0),
        })
    }

    pub fn state(&self) -> VcpuState {
        lock(&self.shared).state
    }

    pub fn is_paused(&self) -> bool {
        matches!(self.state(), VcpuState::Paused { .. })
    }

    pub fn is_stopping(&self) -> bool {
        self.state() == VcpuState::Stopping
    }

    /// Ends the vCPU: it leaves `VMM_IOC_RUN` (the VM is terminated under
    /// it) or its sleep, and the loop returns.
    pub fn stop(&self) {
        {
            let mut s = lock(&self.shared);
            s.state = VcpuState::Stopping;
            self.changed.notify_all();
        }
        let _ = self.vmm.terminate(self.vm_id);
    }

    /// Pauses the vCPU (vmd's `pause_vm`): it is kicked out of
    /// `VMM_IOC_RUN` and parks.  Returns once it is parked (or after a
    /// second, if it has not started running yet); false if it was
    /// already paused or is stopping.
    pub fn pause(&self) -> bool {
        let mut s = lock(&self.shared);
        let halted = match s.state {
            VcpuState::Running => false,
            VcpuState::Halted => true,
            VcpuState::Paused { .. } | VcpuState::Stopping => return false,
        };
        s.state = VcpuState::Paused { halted };
        self.changed.notify_all();
        drop(s);
        self.kick();
        let s = lock(&self.shared);
        let _ = self
            .changed
            .wait_timeout_while(s, Duration::from_secs(1), |s| {
                !s.parked && matches!(s.state, VcpuState::Paused { .. })
            });
        true
    }

    /// Resumes a paused vCPU where it was; false if it was not paused.
    pub fn unpause(&self) -> bool {
        let mut s = lock(&self.shared);
        let VcpuState::Paused { halted } = s.state else {
            return false;
        };
        s.state = if halted {
            VcpuState::Halted
        } else {
            VcpuState::Running
        };
        self.changed.notify_all();
        true
    }

    /// The PIC's notification: tells vmm(4) whether an interrupt is
    /// pending (so it opens an interrupt window) and wakes a halted vCPU.
    pub fn interrupt_pending(&self, pending: bool) {
        self.intr_line.store(pending, Ordering::SeqCst);
        let _ = self.vmm.intr(&self.intr_params(pending));
        if pending {
            let mut s = lock(&self.shared);
            match s.state {
                VcpuState::Halted => s.state = VcpuState::Running,
                VcpuState::Paused { halted: true } => s.state = VcpuState::Paused { halted: false },
                _ => return,
            }
            self.changed.notify_all();
        }
    }

    /// How often the vCPU woke from a sleep in `wait_runnable`.
    pub fn wakeups(&self) -> u64 {
        self.wakeups.load(Ordering::Relaxed)
    }

    fn intr_params(&self, pending: bool) -> vm_intr_params {
        vm_intr_params {
            vip_vm_id: self.vm_id,
            vip_vcpu_id: self.vcpu_id,
            vip_intr: pending as u16,
        }
    }

    /// Kicks the vCPU out of `VMM_IOC_RUN`: an interrupt request does, and
    /// the PIC's own line is put back at once.
    fn kick(&self) {
        let _ = self.vmm.intr(&self.intr_params(true));
        let line = self.intr_line.load(Ordering::SeqCst);
        let _ = self.vmm.intr(&self.intr_params(line));
    }

    /// Sleeps while the vCPU is halted or paused.  False when it is to
    /// stop.  A halted vCPU whose interrupt source already has something
    /// pending runs at once: the PIC only notifies on line changes.
    fn wait_runnable(&self, src: &dyn InterruptSource) -> bool {
        let mut s = lock(&self.shared);
        let mut slept = false;
        loop {
            match s.state {
                VcpuState::Running => break,
                VcpuState::Stopping => {
                    s.parked = true;
                    self.changed.notify_all();
                    return false;
                }
                VcpuState::Halted if src.is_pending() => {
                    s.state = VcpuState::Running;
                    break;
                }
                VcpuState::Halted => {}
                VcpuState::Paused { .. } => {
                    if !s.parked {
                        s.parked = true;
                        self.changed.notify_all();
                    }
                }
            }
            slept = true;
            s = self.changed.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
        s.parked = false;
        if slept {
            self.wakeups.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// After HLT: sleep unless an interrupt is already pending.  Decided
    /// under the state lock, so a notification racing with it is never
    /// lost (it either finds `Halted` or comes before the check).
    fn halt(&self, src: &dyn InterruptSource) {
        let mut s = lock(&self.shared);
        if s.state == VcpuState::Running && !src.is_pending() {
            s.state = VcpuState::Halted;
        }
    }
}

/// What one `VMM_IOC_RUN` ended with.
#[derive(Debug, PartialEq, Eq)]
pub enum RunExit {
    /// An exit for `vcpu_exit` to handle (the reason is in `vrp`).
    Exit(u16),
    /// Kicked or interrupted: nothing to handle.
    None,
    /// The VM was terminated under the vCPU: the loop ends.
    Terminated,
}

/// One vCPU's run loop state: its run parameters and exit record.
pub struct Vcpu {
    control: Arc<VcpuControl>,
    pub vrp: vm_run_params,
    pub exit: Box<vm_exit>,
}

impl Vcpu {
    pub fn new(control: Arc<VcpuControl>) -> Vcpu {
        let vrp = vm_run_params {
            vrp_vm_id: control.vm_id,
            vrp_vcpu_id: control.vcpu_id,
            ..Default::default()
        };
        Vcpu {
            control,
            vrp,
            exit: Box::default(),
        }
    }

    pub fn control(&self) -> &Arc<VcpuControl> {
        &self.control
    }

    /// Step 1: sleeps while halted or paused; false when stopping.  A
    /// pause is honoured here, before anything is taken from the PIC.
    pub fn wait_runnable(&self, src: &dyn InterruptSource) -> bool {
        self.control.wait_runnable(src)
    }

    /// Step 2: takes an interrupt from `src` if the guest can accept one
    /// and none is already waiting in `vrp_inject` — acknowledging a
    /// second one would overwrite the first and leave it in service
    /// forever.  Sets `vrp_intr_pending` so vmm(4) opens an interrupt
    /// window while more wait.
    pub fn inject(&mut self, src: &dyn InterruptSource) {
        let free = self.vrp.vrp_inject.vie_type as u32 == VCPU_INJECT_NONE;
        if free && self.vrp.vrp_irqready != 0 && src.is_pending() {
            if let Some(vector) = src.ack() {
                self.vrp.vrp_inject = vcpu_inject_event {
                    vie_vector: vector,
                    vie_errorcode: 0,
                    vie_type: VCPU_INJECT_INTR as u8,
                };
            }
        }
        self.vrp.vrp_intr_pending = src.is_pending() as u8;
    }

    /// Step 3: one `VMM_IOC_RUN`.  vmm(4) takes `vrp_inject` on entry, so
    /// it is cleared once the run has happened.  An error while stopping
    /// is the termination, not a failure.
    pub fn run_once(&mut self) -> Result<RunExit, VmmError> {
        let ran = self.control.vmm.run(&mut self.vrp, &mut self.exit);
        if let Err(e) = ran {
            if self.control.is_stopping() {
                return Ok(RunExit::Terminated);
            }
            return Err(e);
        }
        self.vrp.vrp_inject = vcpu_inject_event::default();
        Ok(match self.vrp.vrp_exit_reason as u32 {
            VM_EXIT_NONE => RunExit::None,
            VM_EXIT_TERMINATED => RunExit::Terminated,
            _ => RunExit::Exit(self.vrp.vrp_exit_reason),
        })
    }

    /// Step 4: after `vcpu_exit` handled an exit, writes back what
    /// vmm(4) would not reload by itself, and parks a halted vCPU.
    pub fn complete(
        &mut self,
        action: &Action,
        write_back: WriteBack,
        src: &dyn InterruptSource,
    ) -> Result<(), VmmError> {
        let mut mask = 0;
        if write_back.gprs {
            // vmm(4) reloads only RAX and RIP after an I/O exit.
            mask |= VM_RWREGS_GPRS;
        }
        if write_back.sregs {
            mask |= VM_RWREGS_SREGS;
        }
        if mask != 0 {
            self.control.vmm.writeregs(&vm_rwregs_params {
                vrwp_vm_id: self.control.vm_id,
                vrwp_vcpu_id: self.control.vcpu_id,
                vrwp_mask: u64::from(mask),
                vrwp_regs: self.exit.vrs,
            })?;
        }
        if *action == Action::Halt {
            self.control.halt(src);
        }
        Ok(())
    }
}

/// Runs the vCPU until it stops, the guest reboots or an exit fails:
/// the four steps in a loop.  `on_exit` is `vcpu_exit` with the VM's
/// devices; it says what to do next and which registers to write back.
pub fn run_loop<E: From<VmmError>>(
    vcpu: &mut Vcpu,
    src: &dyn InterruptSource,
    mut on_exit: impl FnMut(u16, &mut vm_exit) -> Result<(Action, WriteBack), E>,
) -> Result<LoopEnd, E> {
    loop {
        if !vcpu.wait_runnable(src) {
            return Ok(LoopEnd::Stopped);
        }
        vcpu.inject(src);
        let reason = match vcpu.run_once()? {
            RunExit::Exit(reason) => reason,
            RunExit::None => continue,
            RunExit::Terminated => return Ok(LoopEnd::Stopped),
        };
        let (action, write_back) = on_exit(reason, &mut vcpu.exit)?;
        vcpu.complete(&action, write_back, src)?;
        if action == Action::Reboot {
            return Ok(LoopEnd::Reboot);
        }
    }
}

/// How the run loop ended without error.
#[derive(Debug, PartialEq, Eq)]
pub enum LoopEnd {
    /// Stopped from outside, or the VM was terminated.
    Stopped,
    /// The guest reset itself.
    Reboot,
}

/// Register groups an exit's emulation changed beyond RAX and RIP.
#[derive(Clone, Copy, Debug, Default)]
pub struct WriteBack {
    pub gprs: bool,
    pub sregs: bool,
}

#[cfg(test)]
mod tests;
