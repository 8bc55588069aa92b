//! One vCPU of the shim: `VMM_IOC_RUN` on top of `KVM_RUN`, and the register
//! verbs.
//!
//! KVM and vmm(4) disagree about when an I/O or MMIO instruction is
//! finished.  vmm(4) stops *before* the instruction: the exit record shows
//! RIP at it, vmd emulates it and writes the result and the next RIP back
//! (RAX and RIP after port I/O, all GPRs after MMIO).  KVM's emulator may
//! have half-run it (a read waits for its data on the next `KVM_RUN`) or
//! fully run it (a store, an emulated OUT).  The shim therefore works out
//! where the instruction started (decoding forward or backward from RIP),
//! reports the state before it, and on re-entry either lets KVM's pending
//! completion agree with what vmd wrote or drains it first ("flush": a
//! `KVM_RUN` with `immediate_exit`, putting back any RAM the drained
//! instruction wrote, e.g. the stack of `push [mmio]`) and then loads
//! vmd's registers.  Backward decoding prefers the shortest instruction
//! that ends at RIP and writes exactly what KVM reported, so a store with
//! a redundant prefix (`3e 89 03` where DS and the default segment agree)
//! is reported one byte late; emulating it from there has the same effect.
use super::insn::{self, PortIo};
use super::kick;
use super::regs::*;
use super::Vm;
use crate::abi::*;
use crate::{ExitFlavour, GuestMemory, Result, VmmError};
use kvm_bindings::{kvm_msr_entry, kvm_regs, kvm_run, kvm_sregs, kvm_xcrs, CpuId, Msrs};
use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd, VmFd};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;

const OP: &str = "VMM_IOC_RUN";
/// KVM_INTERRUPT = _IOW(KVMIO, 0x86, struct kvm_interrupt); kvm-ioctls
/// has no wrapper (only meaningful without an in-kernel irqchip).
const KVM_INTERRUPT: libc::c_ulong = 0x4004_AE86;
/// Exceptions that push an error code (outside real mode).
const EXC_WITH_ERROR_CODE: [u8; 7] = [8, 10, 11, 12, 13, 14, 17];

pub(crate) struct Vcpu {
    id: u32,
    inner: Mutex<Inner>,
    /// The vCPU's kvm_run page, for `immediate_exit` from other threads.
    run_page: RunPage,
    raw_fd: RawFd,
    /// vmm(4)'s `vc_intr`: set and cleared by VMM_IOC_INTR.
    intr: AtomicBool,
    terminate: AtomicBool,
    state: AtomicU8,
    /// The thread inside `run`, if any, for kicks.
    running: Mutex<Option<libc::pthread_t>>,
}

/// The one thing other threads may do to a vCPU's `kvm_run` page: set
/// `immediate_exit`.  The page is the mapping owned by the `VcpuFd` in the
/// same `Vcpu`, so it lives as long as this does.
struct RunPage(*mut kvm_run);

// SAFETY: the pointer is only used for a volatile one-byte store of
// `immediate_exit`, which KVM reads racily by design, and only through a
// live `&Vcpu`, whose VcpuFd keeps the mapping; it is never used on drop.
unsafe impl Send for RunPage {}
// SAFETY: as above; concurrent stores of the same byte value are benign.
unsafe impl Sync for RunPage {}

impl RunPage {
    fn set_immediate_exit(&self) {
        // SAFETY: self.0 is the live kvm_run mapping (see the Send impl);
        // a volatile byte store is what KVM expects from another thread.
        unsafe { std::ptr::write_volatile(&mut (*self.0).immediate_exit, 1) };
    }
}

/// What vmm(4) register state there is beside KVM's `kvm_sync_regs`:
/// refreshed by READREGS, WRITEREGS and RESETCPU.
#[derive(Default, Clone, Copy)]
struct Cached {
    msrs: [u64; VCPU_REGS_NMSRS as usize],
    drs: [u64; VCPU_REGS_NDRS as usize],
    xcr0: u64,
    pdptes: [u64; 4],
}

/// An exit handed to vmd whose instruction KVM and vmm(4) see differently.
#[derive(Clone, Copy, Debug)]
enum Pending {
    PioIn {
        start: u64,
        len: u64,
        size: u8,
        rax: u64,
        data_offset: u64,
    },
    PioOut {
        start: u64,
    },
    Mmio {
        load: Option<insn::Load>,
    },
}

struct Inner {
    fd: VcpuFd,
    pending: Option<Pending>,
    /// KVM holds an unfinished instruction that must be drained before the
    /// shim loads registers of its own.
    kvm_busy: bool,
    /// The GPRs shown in the last exit record, while it is pending.
    exit_regs: Option<kvm_regs>,
    /// An interrupt vmd injected that waits for the guest to accept it.
    irq: Option<u8>,
    cached: Cached,
    /// RAM the pending instruction writes besides its MMIO operand (the
    /// stack of a PUSH, the destination of a MOVS): vmd has written it by
    /// the time KVM's own completion is drained, which must not overwrite
    /// it.
    ram_writes: Option<(GuestMemory, Vec<(u64, usize)>)>,
}

impl Vcpu {
    pub fn new(vm: &VmFd, id: u32, cpuid: &CpuId) -> Result<Vcpu> {
        const OP: &str = "VMM_IOC_CREATE";
        let mut fd = vm
            .create_vcpu(id as u64)
            .map_err(|e| VmmError::with_detail(OP, e.errno(), "KVM_CREATE_VCPU"))?;
        fd.set_cpuid2(cpuid)
            .map_err(|e| VmmError::with_detail(OP, e.errno(), "KVM_SET_CPUID2"))?;
        fd.set_sync_valid_reg(SyncReg::Register);
        fd.set_sync_valid_reg(SyncReg::SystemRegister);
        let run_page = fd.get_kvm_run() as *mut kvm_run;
        let raw_fd = fd.as_raw_fd();
        let cached = Cached {
            xcr0: 1,
            ..Default::default()
        };
        Ok(Vcpu {
            id,
            inner: Mutex::new(Inner {
                fd,
                pending: None,
                kvm_busy: false,
                exit_regs: None,
                irq: None,
                cached,
                ram_writes: None,
            }),
            run_page: RunPage(run_page),
            raw_fd,
            intr: AtomicBool::new(false),
            terminate: AtomicBool::new(false),
            state: AtomicU8::new(VCPU_STATE_STOPPED as u8),
            running: Mutex::new(None),
        })
    }

    pub fn state(&self) -> u8 {
        self.state.load(Ordering::Relaxed)
    }

    fn busy(&self, op: &'static str) -> VmmError {
        VmmError::with_detail(op, libc::EBUSY, format!("vcpu {} is running", self.id))
    }

    /// Sets `immediate_exit` and signals the thread inside `run`, if any.
    fn kick(&self) {
        let running = self.running.lock().unwrap();
        if let Some(thread) = *running {
            self.run_page.set_immediate_exit();
            kick::kick(thread);
        }
    }

    pub fn intr(&self, pending: bool) {
        self.intr.store(pending, Ordering::SeqCst);
        if pending {
            self.kick();
        }
    }

    pub fn request_terminate(&self) {
        self.terminate.store(true, Ordering::SeqCst);
        self.state
            .store(VCPU_STATE_REQTERM as u8, Ordering::Relaxed);
        self.kick();
    }

    pub fn run(&self, vm: &Vm, vrp: &mut vm_run_params, exit: &mut vm_exit) -> Result<()> {
        let mut inner = self.inner.try_lock().map_err(|_| self.busy(OP))?;
        if self.terminate.load(Ordering::SeqCst) {
            vrp.vrp_exit_reason = VM_EXIT_TERMINATED as u16;
            return Ok(());
        }
        self.state
            .store(VCPU_STATE_RUNNING as u8, Ordering::Relaxed);
        let r = self.run_locked(&mut inner, vm, vrp, exit);
        if !self.terminate.load(Ordering::SeqCst) {
            self.state
                .store(VCPU_STATE_STOPPED as u8, Ordering::Relaxed);
        }
        r
    }

    fn run_locked(
        &self,
        g: &mut Inner,
        vm: &Vm,
        vrp: &mut vm_run_params,
        exit: &mut vm_exit,
    ) -> Result<()> {
        g.write_back(exit)?;
        self.inject(g, &vrp.vrp_inject)?;
        loop {
            let want_window =
                g.irq.is_some() || self.intr.load(Ordering::SeqCst) || vrp.vrp_intr_pending != 0;
            if g.irq.is_some() && g.interruptible() {
                g.deliver_irq(self.raw_fd)?;
            }
            // An interrupt window is wanted while vmd has interrupts pending
            // (VMM_IOC_INTR, vrp_intr_pending) or one is held for the guest.
            g.fd.get_kvm_run().request_interrupt_window = want_window as u8;
            *self.running.lock().unwrap() = Some(current_thread());
            let result = if self.terminate.load(Ordering::SeqCst) {
                Err(kvm_ioctls::Error::new(libc::EINTR))
            } else {
                g.fd.run().map(Exit::from)
            };
            *self.running.lock().unwrap() = None;
            g.fd.set_kvm_immediate_exit(0);
            let reason = match result {
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    if self.terminate.load(Ordering::SeqCst) {
                        VM_EXIT_TERMINATED as u16
                    } else {
                        VM_EXIT_NONE as u16
                    }
                }
                Err(e) => return Err(VmmError::with_detail(OP, e.errno(), "KVM_RUN")),
                Ok(Exit::Io {
                    dir_in,
                    port,
                    data,
                    data_offset,
                }) => {
                    // kvm-ioctls hands over the data of all `count`
                    // elements of a string instruction: the element size
                    // is KVM's io.size.
                    // SAFETY: the exit is KVM_EXIT_IO, so the io member of
                    // the union is the one KVM wrote.
                    let size = unsafe { g.fd.get_kvm_run().__bindgen_anon_1.io.size };
                    let data = match size {
                        1 => data & 0xff,
                        2 => data & 0xffff,
                        _ => data,
                    };
                    g.io_exit(vm, exit, dir_in, port, size, data, data_offset)?;
                    pick(vm, VMX_EXIT_IO, SVM_VMEXIT_IOIO)
                }
                Ok(Exit::Mmio { gpa, len, write }) => {
                    g.mmio_exit(vm, exit, gpa, len, write)?;
                    pick(vm, VMX_EXIT_EPT_VIOLATION, SVM_VMEXIT_NPF)
                }
                Ok(Exit::IrqWindow) => {
                    if g.irq.is_some() {
                        continue; // delivered at the top of the loop
                    }
                    g.plain_exit(exit);
                    pick(vm, VMX_EXIT_INT_WINDOW, SVM_VMEXIT_VINTR)
                }
                Ok(Exit::Hlt) => {
                    if g.irq.is_some() && g.interruptible() {
                        // The interrupt vmd injected wakes the HLT
                        // (delivered at the top of the loop).
                        continue;
                    }
                    g.plain_exit(exit);
                    pick(vm, VMX_EXIT_HLT, SVM_VMEXIT_HLT)
                }
                Ok(Exit::Shutdown) => {
                    g.plain_exit(exit);
                    pick(vm, VMX_EXIT_TRIPLE_FAULT, SVM_VMEXIT_SHUTDOWN)
                }
                Ok(Exit::Other(what)) => return Err(g.fatal_exit(vm, &what)),
            };
            if reason == VM_EXIT_NONE as u16 || reason == VM_EXIT_TERMINATED as u16 {
                g.plain_exit(exit);
            }
            vrp.vrp_exit_reason = reason;
            vrp.vrp_irqready = g.interruptible() as u8;
            return Ok(());
        }
    }

    fn inject(&self, g: &mut Inner, ev: &vcpu_inject_event) -> Result<()> {
        match ev.vie_type as u32 {
            VCPU_INJECT_NONE => Ok(()),
            VCPU_INJECT_INTR => {
                g.irq = Some(ev.vie_vector);
                Ok(())
            }
            VCPU_INJECT_NMI => {
                g.fd.nmi()
                    .map_err(|e| VmmError::with_detail(OP, e.errno(), "KVM_NMI"))
            }
            VCPU_INJECT_EX => {
                if ev.vie_vector > 31 || ev.vie_vector == 15 {
                    return Err(VmmError::with_detail(
                        OP,
                        libc::EINVAL,
                        format!("exception vector {}", ev.vie_vector),
                    ));
                }
                g.flush()?;
                let mut events =
                    g.fd.get_vcpu_events()
                        .map_err(|e| VmmError::with_detail(OP, e.errno(), "KVM_GET_VCPU_EVENTS"))?;
                let protected = g.fd.sync_regs().sregs.cr0 & 1 != 0;
                events.exception.injected = 1;
                events.exception.nr = ev.vie_vector;
                events.exception.has_error_code =
                    (protected && EXC_WITH_ERROR_CODE.contains(&ev.vie_vector)) as u8;
                events.exception.error_code = ev.vie_errorcode;
                events.flags = 0;
                g.fd.set_vcpu_events(&events)
                    .map_err(|e| VmmError::with_detail(OP, e.errno(), "KVM_SET_VCPU_EVENTS"))?;
                Ok(())
            }
            t => Err(VmmError::with_detail(
                OP,
                libc::EINVAL,
                format!("injection type {t}"),
            )),
        }
    }

    pub fn reset(&self, vrs: &vcpu_reg_state) -> Result<()> {
        let mut g = self
            .inner
            .try_lock()
            .map_err(|_| self.busy("VMM_IOC_RESETCPU"))?;
        g.flush()?;
        g.pending = None;
        g.exit_regs = None;
        g.irq = None;
        let events = kvm_bindings::kvm_vcpu_events::default();
        g.fd.set_vcpu_events(&events).map_err(|e| {
            VmmError::with_detail(
                "VMM_IOC_RESETCPU",
                libc::EIO,
                format!("KVM_SET_VCPU_EVENTS: errno {}", e.errno()),
            )
        })?;
        g.write_regs("VMM_IOC_RESETCPU", VM_RWREGS_ALL as u64, vrs)
            .map_err(|e| VmmError {
                errno: libc::EIO,
                ..e
            })
    }

    pub fn readregs(&self, mask: u64, vrs: &mut vcpu_reg_state) -> Result<()> {
        let mut g = self
            .inner
            .try_lock()
            .map_err(|_| self.busy("VMM_IOC_READREGS"))?;
        g.read_regs(mask, vrs)
    }

    pub fn writeregs(&self, mask: u64, vrs: &vcpu_reg_state) -> Result<()> {
        let mut g = self
            .inner
            .try_lock()
            .map_err(|_| self.busy("VMM_IOC_WRITEREGS"))?;
        g.flush()?;
        g.write_regs("VMM_IOC_WRITEREGS", mask, vrs)
    }
}

fn current_thread() -> libc::pthread_t {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() }
}

/// The KVM exits the shim translates, copied out of kvm_run.
enum Exit {
    Io {
        dir_in: bool,
        port: u16,
        /// The first element's data (OUT); its size is in kvm_run.
        data: u32,
        data_offset: u64,
    },
    Mmio {
        gpa: u64,
        len: usize,
        write: bool,
    },
    IrqWindow,
    Hlt,
    Shutdown,
    Other(String),
}

impl From<VcpuExit<'_>> for Exit {
    fn from(e: VcpuExit<'_>) -> Exit {
        match e {
            VcpuExit::IoIn(port, _) => Exit::Io {
                dir_in: true,
                port,
                data: 0,
                data_offset: 0,
            },
            VcpuExit::IoOut(port, data) => {
                let mut b = [0u8; 4];
                let n = data.len().min(4);
                b[..n].copy_from_slice(&data[..n]);
                Exit::Io {
                    dir_in: false,
                    port,
                    data: u32::from_le_bytes(b),
                    data_offset: 0,
                }
            }
            VcpuExit::MmioRead(gpa, data) => Exit::Mmio {
                gpa,
                len: data.len(),
                write: false,
            },
            VcpuExit::MmioWrite(gpa, data) => Exit::Mmio {
                gpa,
                len: data.len(),
                write: true,
            },
            VcpuExit::IrqWindowOpen => Exit::IrqWindow,
            VcpuExit::Hlt => Exit::Hlt,
            VcpuExit::Shutdown => Exit::Shutdown,
            VcpuExit::InternalError => Exit::Other("internal error".into()),
            VcpuExit::FailEntry(reason, cpu) => Exit::Other(format!(
                "entry failed (hardware reason 0x{reason:x}, cpu {cpu})"
            )),
            other => Exit::Other(format!("unexpected KVM exit {other:?}")),
        }
    }
}

impl Inner {
    fn regs(&self) -> kvm_regs {
        self.fd.sync_regs().regs
    }

    fn sregs(&self) -> kvm_sregs {
        self.fd.sync_regs().sregs
    }

    /// Whether the guest takes an external interrupt now (IF set, no
    /// interrupt shadow), as KVM last reported.
    fn interruptible(&mut self) -> bool {
        let run = self.fd.get_kvm_run();
        run.ready_for_interrupt_injection != 0 && run.if_flag != 0
    }

    fn deliver_irq(&mut self, raw_fd: RawFd) -> Result<()> {
        let Some(vector) = self.irq.take() else {
            return Ok(());
        };
        let irq: u32 = vector as u32;
        // SAFETY: KVM_INTERRUPT reads one u32 (struct kvm_interrupt) from a
        // pointer that is valid for the call.
        let r = unsafe { libc::ioctl(raw_fd, KVM_INTERRUPT, &irq as *const u32) };
        if r < 0 {
            return Err(VmmError::last_os_error(OP));
        }
        Ok(())
    }

    /// Drains an instruction KVM has not finished, discarding any further
    /// exits it raises: vmd has already emulated the whole instruction.
    fn flush(&mut self) -> Result<()> {
        if !self.kvm_busy {
            return Ok(());
        }
        self.kvm_busy = false;
        self.fd.get_kvm_run().kvm_dirty_regs = 0;
        self.fd.set_kvm_immediate_exit(1);
        // What vmd left in the RAM the instruction writes, to put back
        // once KVM's completion (fed zeros) has run.
        let saved = self.ram_writes.take().map(|(mem, ranges)| {
            let bytes: Vec<(u64, Vec<u8>)> = ranges
                .iter()
                .map(|&(gpa, n)| {
                    let mut b = vec![0u8; n];
                    let _ = mem.read(gpa, &mut b);
                    (gpa, b)
                })
                .collect();
            (mem, bytes)
        });
        let mut r = Ok(());
        // A REP INS drained here can take many batches of a page each.
        for _ in 0..4096 {
            match self.fd.run() {
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => break,
                Err(e) => {
                    r = Err(VmmError::with_detail(
                        OP,
                        e.errno(),
                        "KVM_RUN (completing an instruction)",
                    ));
                    break;
                }
                Ok(VcpuExit::MmioRead(_, d)) | Ok(VcpuExit::IoIn(_, d)) => d.fill(0),
                Ok(VcpuExit::MmioWrite(..)) | Ok(VcpuExit::IoOut(..)) => {}
                Ok(other) => {
                    r = Err(VmmError::with_detail(
                        OP,
                        libc::EIO,
                        format!("KVM exit {other:?} while completing an instruction"),
                    ));
                    break;
                }
            }
        }
        self.fd.set_kvm_immediate_exit(0);
        if let Some((mem, bytes)) = saved {
            for (gpa, b) in bytes {
                let _ = mem.write(gpa, &b);
            }
        }
        r
    }

    /// Applies what vmd wrote into the exit record of the last exit.
    fn write_back(&mut self, exit: &vm_exit) -> Result<()> {
        let Some(p) = self.pending.take() else {
            return Ok(());
        };
        self.exit_regs = None;
        let rip = exit.vrs.vrs_gprs[VCPU_REGS_RIP as usize];
        match p {
            Pending::PioIn {
                start,
                len,
                size,
                rax,
                data_offset,
            } => {
                let data = exit.vei().vei_data;
                let mask: u32 = if size >= 4 {
                    u32::MAX
                } else {
                    (1u32 << (size * 8)) - 1
                };
                // KVM's pending completion writes the low `size` bytes into
                // RAX and moves RIP past the instruction; where that equals
                // vmm(4)'s "RAX = vei_data, RIP = vrs", let it.
                let agrees = rip == start + len
                    && (size == 4 || (rax >> 32 == 0 && (data & !mask) == (rax as u32 & !mask)));
                if self.kvm_busy && agrees {
                    let run = self.fd.get_kvm_run() as *mut kvm_run as *mut u8;
                    let bytes = data.to_le_bytes();
                    // SAFETY: data_offset is where KVM placed this exit's I/O
                    // data inside the kvm_run mapping (at least `size` bytes).
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            bytes.as_ptr(),
                            run.add(data_offset as usize),
                            size as usize,
                        )
                    };
                    self.kvm_busy = false;
                } else {
                    self.flush()?;
                }
                let regs = &mut self.fd.sync_regs_mut().regs;
                regs.rax = data as u64;
                regs.rip = rip;
                self.fd.set_sync_dirty_reg(SyncReg::Register);
            }
            Pending::PioOut { start } => {
                // A fast-path OUT that KVM would still skip: only harmful if
                // vmd left RIP on the instruction.
                if rip == start {
                    self.flush()?;
                }
                self.kvm_busy = false;
                self.fd.sync_regs_mut().regs.rip = rip;
                self.fd.set_sync_dirty_reg(SyncReg::Register);
            }
            Pending::Mmio { load } => {
                // A plain load waits in KVM for its data: where vmd's
                // registers are exactly what KVM would produce from some
                // data, hand KVM that data instead of draining it.
                let pre = self.regs();
                if let Some(data) = load
                    .filter(|_| self.kvm_busy)
                    .and_then(|l| l.data_for(&pre, &exit.vrs.vrs_gprs))
                {
                    // The pending exit is KVM_EXIT_MMIO: KVM reads this
                    // member of the union back on the next run.
                    self.fd.get_kvm_run().__bindgen_anon_1.mmio.data = data.to_le_bytes();
                    self.kvm_busy = false;
                    return Ok(());
                }
                self.flush()?;
                gprs_to_kvm(&exit.vrs.vrs_gprs, &mut self.fd.sync_regs_mut().regs);
                self.fd.set_sync_dirty_reg(SyncReg::Register);
            }
        }
        Ok(())
    }

    /// Fills the exit record with the current state and no exit data.
    fn plain_exit(&mut self, exit: &mut vm_exit) {
        let regs = self.regs();
        self.fill_exit(exit, &regs);
    }

    fn fill_exit(&mut self, exit: &mut vm_exit, regs: &kvm_regs) {
        let sregs = self.sregs();
        exit.clear_exit_data();
        let vrs = &mut exit.vrs;
        gprs_from_kvm(regs, &mut vrs.vrs_gprs);
        sregs_from_kvm(&sregs, vrs);
        crs_from_kvm(&sregs, &mut vrs.vrs_crs);
        vrs.vrs_crs[VCPU_REGS_XCR0 as usize] = self.cached.xcr0;
        vrs.vrs_crs[VCPU_REGS_PDPTE0 as usize..].copy_from_slice(&self.cached.pdptes);
        vrs.vrs_msrs = self.cached.msrs;
        vrs.vrs_msrs[VCPU_REGS_EFER as usize] = sregs.efer;
        vrs.vrs_drs = self.cached.drs;
        exit.cpl = if sregs.cr0 & 1 == 0 {
            0
        } else {
            sregs.ss.dpl as i32
        };
    }

    #[allow(clippy::too_many_arguments)]
    fn io_exit(
        &mut self,
        vm: &Vm,
        exit: &mut vm_exit,
        dir_in: bool,
        port: u16,
        size: u8,
        data: u32,
        _offset: u64,
    ) -> Result<()> {
        let mut regs = self.regs();
        let sregs = self.sregs();
        let bits = insn::bitness(&sregs, regs.rflags);
        let rip = regs.rip;
        let w = insn::Window::read(&vm.memory, &sregs, bits, rip);
        let is_it =
            |i: &iced_x86::Instruction| insn::matches_port_io(i, dir_in, size, port, regs.rdx);
        // SAFETY: the exit is KVM_EXIT_IO, so the io member of the union is
        // the one KVM wrote.
        let io = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.io };
        let (start, form) = if dir_in {
            // KVM stops before an IN on both of its paths.
            let i = w
                .at_ip()
                .filter(is_it)
                .ok_or_else(|| self.undecodable(vm, "IN", rip, bits, &sregs))?;
            (rip, i)
        } else {
            // Fast path: RIP still on the OUT (KVM skips it on the next run).
            // Emulator path: RIP already past it, except for a REP OUTS with
            // iterations left, which KVM restarts.
            let fwd = w.at_ip().filter(is_it);
            let bwd = (1..=15).find_map(|l| w.ending_at_ip(l).filter(is_it));
            let restarted = fwd.filter(|i| {
                insn::port_io(i).is_some_and(|p| p.string && p.rep)
                    && insn::string_count(i, &regs, bits) != 0
            });
            match (fwd, bwd, restarted) {
                (_, _, Some(i)) => (rip, i),
                (Some(i), None, None) => {
                    self.kvm_busy = !insn::port_io(&i).is_some_and(|p| p.string);
                    (rip, i)
                }
                (None, Some(i), None) => (i.ip(), i),
                (Some(f), Some(b), None) => {
                    // Both readings fit: let KVM finish and see whether it
                    // moved RIP.
                    self.kvm_busy = true;
                    self.flush()?;
                    if self.regs().rip != rip {
                        (rip, f)
                    } else {
                        (b.ip(), b)
                    }
                }
                (None, None, None) => return Err(self.undecodable(vm, "OUT", rip, bits, &sregs)),
            }
        };
        let p: PortIo = insn::port_io(&form).expect("matched a port I/O form");
        let len = form.len() as u64;
        let data_offset = io.data_offset;
        if p.string {
            // vmd emulates INS/OUTS itself from the registers before the
            // instruction and writes them back with VMM_IOC_WRITEREGS.
            if dir_in {
                // KVM would store its elements at ES:rDI on the next run,
                // over what vmd writes: let it finish now (fed zeros).
                self.kvm_busy = true;
                self.flush()?;
            } else {
                // KVM's emulator already moved rSI (and rCX) past the
                // elements it handed over.
                regs = insn::undo_string_out(&form, &regs, bits, io.count as u64);
            }
            self.kvm_busy = false;
        }
        self.pending = Some(if dir_in {
            self.kvm_busy |= !p.string;
            Pending::PioIn {
                start,
                len,
                size,
                rax: regs.rax,
                data_offset,
            }
        } else {
            Pending::PioOut { start }
        });
        regs.rip = start;
        self.exit_regs = Some(regs);
        self.fill_exit(exit, &regs);
        let vei = exit.vei_mut();
        vei.vei_size = size;
        vei.vei_dir = if dir_in { VEI_DIR_IN } else { VEI_DIR_OUT } as u8;
        vei.vei_rep = p.rep as u8;
        vei.vei_string = p.string as u8;
        vei.vei_encoding = p.imm_port.is_some() as u8;
        vei.vei_port = port;
        vei.vei_data = if dir_in { regs.rax as u32 } else { data };
        vei.vei_insn_len = len as u8;
        Ok(())
    }

    fn mmio_exit(
        &mut self,
        vm: &Vm,
        exit: &mut vm_exit,
        gpa: u64,
        len: usize,
        write: bool,
    ) -> Result<()> {
        let regs = self.regs();
        let sregs = self.sregs();
        let bits = insn::bitness(&sregs, regs.rflags);
        let rip = regs.rip;
        let covers = |i: &iced_x86::Instruction, pre: &kvm_regs| {
            insn::written_gpas(i, pre, &sregs, bits, &vm.memory)
                .iter()
                .any(|&(g, n)| insn::first_fragment(g, n, gpa, len))
        };
        let w = insn::Window::read(&vm.memory, &sregs, bits, rip);
        let (pre, form) = if !write {
            // A load waits in KVM's emulator with the registers untouched.
            let i = w
                .at_ip()
                .ok_or_else(|| self.undecodable(vm, "MMIO load", rip, bits, &sregs))?;
            self.kvm_busy = true;
            self.ram_writes = None;
            if insn::Load::of(&i).is_none() {
                let ram: Vec<(u64, usize)> =
                    insn::written_gpas(&i, &regs, &sregs, bits, &vm.memory)
                        .into_iter()
                        .filter(|&(g, n)| vm.memory.is_backed(g, n))
                        .collect();
                if !ram.is_empty() {
                    self.ram_writes = Some((vm.memory.clone(), ram));
                }
            }
            (regs, i)
        } else {
            // A store has been carried out by KVM's emulator: find the
            // instruction that ends at RIP (or, for a REP string store with
            // iterations left, the one at RIP) and undo its register updates.
            let restarted = w.at_ip().and_then(|i| {
                let rep = i.has_rep_prefix() || i.has_repne_prefix();
                if !(rep && i.code().is_string_instruction()) {
                    return None;
                }
                let mut pre = insn::undo_side_effects(&i, &regs, bits);
                pre.rip = rip;
                covers(&i, &pre).then_some((pre, i))
            });
            let found = restarted.or_else(|| {
                (1..=15).find_map(|l| {
                    let i = w.ending_at_ip(l)?;
                    let mut pre = insn::undo_side_effects(&i, &regs, bits);
                    pre.rip = i.ip();
                    covers(&i, &pre).then_some((pre, i))
                })
            });
            let (pre, i) =
                found.ok_or_else(|| self.undecodable(vm, "MMIO store", rip, bits, &sregs))?;
            // A store wider than one KVM fragment leaves more fragments.
            self.kvm_busy = i.memory_size().size() > len;
            (pre, i)
        };
        let insn_len = form.len();
        if !(1..=15).contains(&insn_len) {
            return Err(VmmError::with_detail(
                OP,
                libc::EINVAL,
                format!("instruction length {insn_len} at rip 0x{rip:x}"),
            ));
        }
        let load = if write { None } else { insn::Load::of(&form) };
        self.pending = Some(Pending::Mmio { load });
        self.exit_regs = Some(pre);
        self.fill_exit(exit, &pre);
        let flavour = vm.flavour();
        let vee = exit.vee_mut();
        vee.vee_fault_type = VEE_FAULT_MMIO_ASSIST as u8;
        match flavour {
            ExitFlavour::Vmx => {
                vee.vee_insn_info = VEE_LEN_VALID as u8;
                vee.vee_insn_len = insn_len as u8;
            }
            ExitFlavour::Svm => {
                let (bytes, n) = insn::fetch(&vm.memory, &sregs, bits, pre.rip);
                vee.vee_insn_info = VEE_BYTES_VALID as u8;
                vee.vee_insn_bytes[..n].copy_from_slice(&bytes[..n]);
            }
        }
        Ok(())
    }

    fn undecodable(&self, vm: &Vm, what: &str, rip: u64, bits: u32, sregs: &kvm_sregs) -> VmmError {
        let (bytes, n) = insn::fetch(&vm.memory, sregs, bits, rip);
        VmmError::with_detail(
            OP,
            libc::EINVAL,
            format!(
                "cannot identify the {what} instruction at rip 0x{rip:x} (bytes {})",
                hex(&bytes[..n])
            ),
        )
    }

    /// A KVM exit that ends the run: internal errors name the instruction
    /// KVM could not emulate.
    fn fatal_exit(&mut self, vm: &Vm, what: &str) -> VmmError {
        let regs = self.regs();
        let sregs = self.sregs();
        let bits = insn::bitness(&sregs, regs.rflags);
        let (bytes, n) = insn::fetch(&vm.memory, &sregs, bits, regs.rip);
        let run = self.fd.get_kvm_run();
        let mut detail = format!("vcpu stopped: {what}");
        if run.exit_reason == kvm_bindings::KVM_EXIT_INTERNAL_ERROR {
            // SAFETY: the exit reason says the internal member is valid.
            let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
            if suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION {
                let text = insn::decode(&bytes[..n], bits, regs.rip)
                    .map(|i| format!(" ({:?})", i.code()))
                    .unwrap_or_default();
                detail = format!(
                    "this host's KVM cannot emulate the instruction at rip 0x{:x}: {}{}",
                    regs.rip,
                    hex(&bytes[..n.min(8)]),
                    text
                );
            } else {
                detail = format!(
                    "KVM internal error, suberror {suberror}, at rip 0x{:x}",
                    regs.rip
                );
            }
        }
        VmmError::with_detail(OP, libc::EIO, detail)
    }

    fn read_regs(&mut self, mask: u64, vrs: &mut vcpu_reg_state) -> Result<()> {
        const OP: &str = "VMM_IOC_READREGS";
        let e = |what: &'static str| {
            move |err: kvm_ioctls::Error| VmmError::with_detail(OP, err.errno(), what)
        };
        if mask & VM_RWREGS_GPRS as u64 != 0 {
            let regs = match self.exit_regs {
                Some(r) => r,
                None => self.fd.get_regs().map_err(e("KVM_GET_REGS"))?,
            };
            gprs_from_kvm(&regs, &mut vrs.vrs_gprs);
        }
        let need_sregs = mask & (VM_RWREGS_SREGS | VM_RWREGS_CRS | VM_RWREGS_MSRS) as u64 != 0;
        let sregs = if need_sregs {
            Some(self.fd.get_sregs().map_err(e("KVM_GET_SREGS"))?)
        } else {
            None
        };
        if mask & VM_RWREGS_SREGS as u64 != 0 {
            sregs_from_kvm(sregs.as_ref().unwrap(), vrs);
        }
        if mask & VM_RWREGS_CRS as u64 != 0 {
            crs_from_kvm(sregs.as_ref().unwrap(), &mut vrs.vrs_crs);
            if let Ok(x) = self.fd.get_xcrs() {
                if let Some(x0) = x.xcrs[..x.nr_xcrs as usize].iter().find(|x| x.xcr == 0) {
                    self.cached.xcr0 = x0.value;
                }
            }
            vrs.vrs_crs[VCPU_REGS_XCR0 as usize] = self.cached.xcr0;
            vrs.vrs_crs[VCPU_REGS_PDPTE0 as usize..].copy_from_slice(&self.cached.pdptes);
        }
        if mask & VM_RWREGS_MSRS as u64 != 0 {
            let entries: Vec<kvm_msr_entry> = VRS_MSRS
                .iter()
                .map(|&(_, index)| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect();
            let mut msrs = Msrs::from_entries(&entries).expect("few msrs");
            self.fd.get_msrs(&mut msrs).map_err(e("KVM_GET_MSRS"))?;
            for (&(slot, _), m) in VRS_MSRS.iter().zip(msrs.as_slice()) {
                self.cached.msrs[slot] = m.data;
            }
            vrs.vrs_msrs = self.cached.msrs;
            vrs.vrs_msrs[VCPU_REGS_EFER as usize] = sregs.as_ref().unwrap().efer;
        }
        if mask & VM_RWREGS_DRS as u64 != 0 {
            let d = self.fd.get_debug_regs().map_err(e("KVM_GET_DEBUGREGS"))?;
            drs_from_kvm(&d, &mut self.cached.drs);
            vrs.vrs_drs = self.cached.drs;
        }
        Ok(())
    }

    fn write_regs(&mut self, op: &'static str, mask: u64, vrs: &vcpu_reg_state) -> Result<()> {
        let e = |what: &'static str| {
            move |err: kvm_ioctls::Error| VmmError::with_detail(op, err.errno(), what)
        };
        // Registers set through ioctls must not be overwritten by a stale
        // sync-regs copy on the next run.
        self.fd.get_kvm_run().kvm_dirty_regs = 0;
        if mask & VM_RWREGS_GPRS as u64 != 0 {
            let mut regs = kvm_regs::default();
            gprs_to_kvm(&vrs.vrs_gprs, &mut regs);
            self.fd.set_regs(&regs).map_err(e("KVM_SET_REGS"))?;
            if self.exit_regs.is_some() {
                self.exit_regs = Some(regs);
            }
            // The registers are vmd's now: there is nothing left to write
            // back from the last exit.
            self.pending = None;
        }
        let sreg_mask = (VM_RWREGS_SREGS | VM_RWREGS_CRS | VM_RWREGS_MSRS) as u64;
        if mask & sreg_mask != 0 {
            let mut s = self.fd.get_sregs().map_err(e("KVM_GET_SREGS"))?;
            if mask & VM_RWREGS_SREGS as u64 != 0 {
                sregs_to_kvm(vrs, &mut s);
            }
            if mask & VM_RWREGS_CRS as u64 != 0 {
                crs_to_kvm(&vrs.vrs_crs, &mut s);
            }
            if mask & VM_RWREGS_MSRS as u64 != 0 {
                s.efer = vrs.vrs_msrs[VCPU_REGS_EFER as usize];
            }
            s.interrupt_bitmap = [0; 4];
            // Era B has no local APIC: keep it disabled so that KVM's
            // runtime CPUID update hides CPUID.1:EDX.APIC as vmm(4) does.
            s.apic_base &= !(1 << 11);
            self.fd.set_sregs(&s).map_err(e("KVM_SET_SREGS"))?;
        }
        if mask & VM_RWREGS_CRS as u64 != 0 {
            let xcr0 = vrs.vrs_crs[VCPU_REGS_XCR0 as usize];
            if xcr0 & 1 != 0 {
                let mut x = kvm_xcrs {
                    nr_xcrs: 1,
                    ..Default::default()
                };
                x.xcrs[0].xcr = 0;
                x.xcrs[0].value = xcr0;
                // XCR0 is only settable where the guest has XSAVE; keep the
                // value for the register view either way.
                let _ = self.fd.set_xcrs(&x);
            }
            self.cached.xcr0 = xcr0;
            let mut p = [0u64; 4];
            p.copy_from_slice(&vrs.vrs_crs[VCPU_REGS_PDPTE0 as usize..]);
            self.cached.pdptes = p;
        }
        if mask & VM_RWREGS_MSRS as u64 != 0 {
            let entries: Vec<kvm_msr_entry> = VRS_MSRS
                .iter()
                .map(|&(slot, index)| kvm_msr_entry {
                    index,
                    data: vrs.vrs_msrs[slot],
                    ..Default::default()
                })
                .collect();
            let msrs = Msrs::from_entries(&entries).expect("few msrs");
            let n = self.fd.set_msrs(&msrs).map_err(e("KVM_SET_MSRS"))?;
            if n != entries.len() {
                return Err(VmmError::with_detail(
                    op,
                    libc::EINVAL,
                    format!("msr 0x{:x} rejected", entries[n].index),
                ));
            }
            self.cached.msrs = vrs.vrs_msrs;
        }
        if mask & VM_RWREGS_DRS as u64 != 0 {
            let mut d = kvm_bindings::kvm_debugregs::default();
            drs_to_kvm(&vrs.vrs_drs, &mut d);
            self.fd.set_debug_regs(&d).map_err(e("KVM_SET_DEBUGREGS"))?;
            self.cached.drs = vrs.vrs_drs;
        }
        Ok(())
    }
}

/// The exit reason in the VM's flavour.
fn pick(vm: &Vm, vmx: u32, svm: u32) -> u16 {
    match vm.flavour() {
        ExitFlavour::Vmx => vmx as u16,
        ExitFlavour::Svm => svm as u16,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}
