//! The VM process proper: creates the VM through vmm-sys, builds the
//! platform of reference §4 (memory map, port map, PCI, fw_cfg), loads the
//! boot image and runs the vCPU until the guest halts for good, reboots or
//! fails.  The exit status follows vmd: 0 halted, EAGAIN reboot, an errno
//! otherwise.
use super::boot::{self, LoadError};
use super::exit::{set_return_data, vcpu_exit, Action, ExitError, ExitHandler};
use super::memmap;
use crate::devices::bus::{MmioBus, PioBus, PioDevice};
use crate::devices::fw_cfg::{self, BootDevice, FwCfg};
use crate::devices::i8042::{self, I8042Port, I8042};
use crate::devices::i8253::{self, I8253Misc, I8253};
use crate::devices::i8259::{Chip, ElcrPort, PicPort, I8259};
use crate::devices::irq::{IrqLines, Timer};
use crate::devices::mc146818::{self, Mc146818};
use crate::devices::ns8250::{self, Ns8250};
use crate::devices::pci::{self, PciBus, PciIoBars, PciMmioBars};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use vmm_sys::abi::*;
use vmm_sys::{ExitFlavour, GuestMemory, Vmm, VmmError};

/// What the guest boots.
pub enum BootImage {
    /// A BIOS image (SeaBIOS, `vmm-bios`).
    Bios(Vec<u8>),
    /// vmd's `boot` file: an OpenBSD ELF kernel (gzip'd or not), or a BIOS
    /// image when it is not ELF.
    Kernel(Vec<u8>),
    /// A Linux bzImage with optional initrd and command line.
    Linux {
        kernel: Vec<u8>,
        initrd: Option<Vec<u8>>,
        cmdline: String,
    },
}

pub struct VmConfig {
    pub name: String,
    /// Guest memory in bytes.
    pub memory: u64,
    pub boot: BootImage,
    /// Where COM1 output goes (the pty in vmd).
    pub console_out: Box<dyn Write + Send>,
    /// Where COM1 input comes from, if anywhere (the pty in vmd).
    pub console_in: Option<OwnedFd>,
    /// Exit flavour to request from the shim; None = the host's.
    pub flavour: Option<ExitFlavour>,
}

/// How a VM ended without error.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped (the guest halted for good, or `stop` was requested).
    Halted,
    /// The guest reset itself: vmd restarts the VM (exit status EAGAIN).
    Reboot,
}

#[derive(Debug)]
pub enum VmError {
    Vmm(VmmError),
    Load(LoadError),
    Exit(ExitError),
    Setup(String),
}

impl VmError {
    /// The errno the VM process exits with.
    pub fn errno(&self) -> i32 {
        match self {
            VmError::Vmm(e) => e.errno,
            VmError::Exit(e) => e.errno(),
            VmError::Load(_) => libc::ENOEXEC,
            VmError::Setup(_) => libc::EINVAL,
        }
    }
}

impl std::fmt::Display for VmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmError::Vmm(e) => write!(f, "{e}"),
            VmError::Load(e) => write!(f, "failed to load the boot image: {e}"),
            VmError::Exit(e) => write!(f, "{e}"),
            VmError::Setup(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for VmError {}

impl From<VmmError> for VmError {
    fn from(e: VmmError) -> Self {
        VmError::Vmm(e)
    }
}

/// Reset through 0xCF9 (the keyboard controller has its own reset line).
struct ResetPort {
    requested: Arc<AtomicBool>,
}

impl PioDevice for ResetPort {
    fn pio_read(&mut self, _offset: u16, size: u8) -> u32 {
        crate::devices::bus::all_ones(size)
    }
    fn pio_write(&mut self, _offset: u16, _size: u8, value: u32) {
        if value & 0x06 == 0x06 {
            self.requested.store(true, Ordering::SeqCst);
        }
    }
}

/// State shared between the vCPU thread, the event thread and whoever
/// stops or pauses the VM.
pub struct Control {
    halted: Mutex<bool>,
    wake: Condvar,
    stop: AtomicBool,
    /// `pause_vm`: the vCPU parks at its next exit and the event thread
    /// stops running device timers and console input until unpaused.
    pause: Mutex<PauseState>,
    pause_cv: Condvar,
    reset: Arc<AtomicBool>,
    /// The PIC's last "interrupt pending" notification, to restore the
    /// vCPU's pending flag after a pause kick.
    pic_pending: AtomicBool,
    vmm: Arc<Vmm>,
    vm_id: u32,
}

#[derive(Default)]
struct PauseState {
    requested: bool,
    /// The vCPU thread is parked (or gone).
    parked: bool,
}

impl Control {
    /// Ends the VM: the vCPU leaves VMM_IOC_RUN and `run` returns Halted.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.vmm.terminate(self.vm_id);
        self.wake.notify_all();
        let _ = self.pause.lock().map(|_| self.pause_cv.notify_all());
    }

    /// Pauses the VM (vmd's `pause_vm`): the vCPU is kicked out of
    /// VMM_IOC_RUN and parks; the event thread stops the timers.  Returns
    /// once the vCPU is parked (or after a second, if it has not started
    /// running yet); false if it was already paused.
    pub fn pause(&self) -> bool {
        let mut p = self.pause.lock().unwrap();
        if p.requested {
            return false;
        }
        p.requested = true;
        drop(p);
        // An interrupt request kicks the vCPU; the PIC's own state is put
        // back at once (the notify callback keeps it in step afterwards).
        self.kick();
        self.wake.notify_all();
        let p = self.pause.lock().unwrap();
        let _ = self
            .pause_cv
            .wait_timeout_while(p, Duration::from_secs(1), |p| {
                !p.parked && !self.stop.load(Ordering::SeqCst)
            });
        true
    }

    /// Resumes a paused VM; false if it was not paused.
    pub fn unpause(&self) -> bool {
        let mut p = self.pause.lock().unwrap();
        if !p.requested {
            return false;
        }
        p.requested = false;
        self.pause_cv.notify_all();
        true
    }

    pub fn is_paused(&self) -> bool {
        self.pause.lock().unwrap().requested
    }

    fn kick(&self) {
        let vip = |pending: bool| vm_intr_params {
            vip_vm_id: self.vm_id,
            vip_vcpu_id: 0,
            vip_intr: pending as u16,
        };
        let _ = self.vmm.intr(&vip(true));
        let _ = self.vmm.intr(&vip(self.pic_pending.load(Ordering::SeqCst)));
    }

    /// Called by the vCPU thread between runs: parks while paused.
    fn park_if_paused(&self) {
        let mut p = self.pause.lock().unwrap();
        if !p.requested {
            return;
        }
        p.parked = true;
        self.pause_cv.notify_all();
        while p.requested && !self.stop.load(Ordering::SeqCst) {
            p = self.pause_cv.wait(p).unwrap();
        }
        p.parked = false;
    }

    fn wake_vcpu(&self) {
        let mut h = self.halted.lock().unwrap();
        *h = false;
        self.wake.notify_all();
    }
}

pub struct Machine {
    vmm: Arc<Vmm>,
    id: u32,
    mem: GuestMemory,
    pio: PioBus,
    mmio: MmioBus,
    pic: Arc<I8259>,
    timers: Vec<Arc<Mutex<dyn Timer>>>,
    com: Arc<Mutex<Ns8250<Box<dyn Write + Send>>>>,
    console_in: Option<OwnedFd>,
    initial: vcpu_reg_state,
    control: Arc<Control>,
}

impl Machine {
    pub fn new(vmm: Arc<Vmm>, cfg: VmConfig) -> Result<Machine, VmError> {
        let ranges =
            memmap::create_memory_map(cfg.memory).map_err(|e| VmError::Setup(e.to_string()))?;
        let mut vcp = vm_create_params {
            vcp_ncpus: 1,
            vcp_nmemranges: ranges.len(),
            ..Default::default()
        };
        vcp.vcp_memranges[..ranges.len()].copy_from_slice(&ranges);
        if !vcp.set_name(&cfg.name) {
            return Err(VmError::Setup(format!("invalid VM name {:?}", cfg.name)));
        }
        vmm.create(&mut vcp)?;
        let id = vcp.vcp_id;
        let created = Self::build(vmm.clone(), id, &ranges, cfg);
        if created.is_err() {
            let _ = vmm.terminate(id);
        }
        created
    }

    fn build(
        vmm: Arc<Vmm>,
        id: u32,
        ranges: &[vm_mem_range],
        cfg: VmConfig,
    ) -> Result<Machine, VmError> {
        if let Some(f) = cfg.flavour {
            vmm.set_exit_flavour(id, f)?;
        }
        let mem = vmm.guest_memory(id)?;
        let initial = match &cfg.boot {
            BootImage::Bios(img) => boot::bios::load(&mem, img),
            BootImage::Kernel(raw) => {
                let img = boot::elf::read_image(raw).map_err(VmError::Load)?;
                if boot::elf::is_elf(&img) {
                    boot::elf::load(&mem, ranges, &img, &boot::elf::BootOptions::default())
                } else {
                    boot::bios::load(&mem, raw)
                }
            }
            BootImage::Linux {
                kernel,
                initrd,
                cmdline,
            } => boot::linux::load(
                &mem,
                ranges,
                &boot::linux::LinuxBoot {
                    kernel,
                    initrd: initrd.as_deref(),
                    cmdline,
                },
            ),
        }
        .map_err(VmError::Load)?;

        let reset = Arc::new(AtomicBool::new(false));
        let control = Arc::new(Control {
            halted: Mutex::new(false),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            pause: Mutex::new(PauseState::default()),
            pause_cv: Condvar::new(),
            reset: reset.clone(),
            pic_pending: AtomicBool::new(false),
            vmm: vmm.clone(),
            vm_id: id,
        });

        // Interrupts: the PIC tells vmm(4) whether an interrupt is pending
        // and wakes a halted vCPU.
        let pic = Arc::new(I8259::new());
        {
            let control = Arc::downgrade(&control);
            let vmm = vmm.clone();
            pic.set_notify(move |pending| {
                if let Some(c) = control.upgrade() {
                    c.pic_pending.store(pending, Ordering::SeqCst);
                }
                let _ = vmm.intr(&vm_intr_params {
                    vip_vm_id: id,
                    vip_vcpu_id: 0,
                    vip_intr: pending as u16,
                });
                if pending {
                    if let Some(c) = control.upgrade() {
                        c.wake_vcpu();
                    }
                }
            });
        }
        let lines: Arc<dyn IrqLines> = pic.clone();
        let mut pio = PioBus::new();
        let mmio = MmioBus::new();

        let pit = Arc::new(Mutex::new(I8253::new(lines.clone(), i8253::host_clock())));
        pio.register(i8253::TIMER_BASE, 4, pit.clone());
        pio.register(
            i8253::PCKBC_AUX,
            1,
            Arc::new(Mutex::new(I8253Misc::new(pit.clone()))),
        );

        let (memlo, memhi) = memmap::cmos_memory(ranges);
        let mut rtc = Mc146818::new(
            lines.clone(),
            i8253::host_clock(),
            mc146818::host_wall_clock(),
        );
        rtc.set_memlo(memlo);
        rtc.set_memhi(memhi);
        let rtc = Arc::new(Mutex::new(rtc));
        pio.register(mc146818::IO_RTC, 2, rtc.clone());

        pio.register(
            0x20,
            2,
            Arc::new(Mutex::new(PicPort::new(pic.clone(), Chip::Master))),
        );
        pio.register(
            0xA0,
            2,
            Arc::new(Mutex::new(PicPort::new(pic.clone(), Chip::Slave))),
        );
        pio.register(0x4D0, 2, Arc::new(Mutex::new(ElcrPort::new(pic.clone()))));

        let com = Arc::new(Mutex::new(Ns8250::new(cfg.console_out, lines.clone())));
        pio.register(ns8250::COM1_BASE, ns8250::NS8250_PORTS, com.clone());

        let pci = Arc::new(Mutex::new(PciBus::new()));
        pio.register(
            pci::VM_PCI_IO_BAR_BASE,
            pci::VM_PCI_IO_BAR_PORTS,
            Arc::new(Mutex::new(PciIoBars::new(pci.clone()))),
        );
        pio.register(
            pci::PCI_MODE1_ADDRESS_REG,
            pci::PCI_MODE1_PORTS,
            pci.clone(),
        );
        let mut mmio = mmio;
        mmio.register(
            memmap::PCI_MMIO_BAR_BASE,
            pci::PCI_MMIO_WINDOW_LEN,
            Arc::new(Mutex::new(PciMmioBars::new(pci.clone()))),
        );

        // fw_cfg last, as vmd does, so that it sees the PCI devices.
        let mut fwcfg = FwCfg::new(mem.clone());
        fwcfg
            .vmd_init(
                &memmap::e820(ranges),
                BootDevice::Auto,
                &pci.lock().unwrap(),
            )
            .map_err(|e| VmError::Setup(format!("fw_cfg: {e}")))?;
        fwcfg
            .add_sercon_port(ns8250::COM1_BASE)
            .map_err(|e| VmError::Setup(format!("fw_cfg: {e}")))?;
        fwcfg
            .add_show_boot_menu(0)
            .map_err(|e| VmError::Setup(format!("fw_cfg: {e}")))?;
        pio.register(
            fw_cfg::FW_CFG_IO_SELECT,
            fw_cfg::FW_CFG_PORTS,
            Arc::new(Mutex::new(fwcfg)),
        );

        let kbc = Arc::new(Mutex::new(I8042::new(lines.clone(), reset.clone())));
        pio.register(
            i8042::KBC_DATA,
            1,
            Arc::new(Mutex::new(I8042Port::data(kbc.clone()))),
        );
        pio.register(
            i8042::KBC_CMD,
            1,
            Arc::new(Mutex::new(I8042Port::command(kbc))),
        );
        pio.register(
            0xCF9,
            1,
            Arc::new(Mutex::new(ResetPort { requested: reset })),
        );

        let timers: Vec<Arc<Mutex<dyn Timer>>> = vec![pit, rtc, com.clone()];
        Ok(Machine {
            vmm,
            id,
            mem,
            pio,
            mmio,
            pic,
            timers,
            com,
            console_in: cfg.console_in,
            initial,
            control,
        })
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// A handle to stop the VM from another thread.
    pub fn control(&self) -> Arc<Control> {
        self.control.clone()
    }

    pub fn memory(&self) -> &GuestMemory {
        &self.mem
    }

    /// Adds an MMIO device (e.g. a PCI BAR's backing, or a test device);
    /// it shadows earlier registrations over the same addresses.
    pub fn register_mmio(&mut self, base: u64, len: u64, dev: crate::devices::bus::SharedMmio) {
        self.mmio.register(base, len, dev);
    }

    /// Adds a port-I/O device; it shadows earlier registrations.
    pub fn register_pio(&mut self, base: u16, len: u16, dev: crate::devices::bus::SharedPio) {
        self.pio.register(base, len, dev);
    }

    /// Runs the VM to its end.  The VM is terminated in vmm(4) afterwards.
    pub fn run(mut self) -> Result<Outcome, VmError> {
        self.vmm.resetcpu(&vm_resetcpu_params {
            vrp_vm_id: self.id,
            vrp_vcpu_id: 0,
            vrp_init_state: self.initial,
        })?;
        let events = {
            let timers = self.timers.clone();
            let com = self.com.clone();
            let control = self.control.clone();
            let input = self.console_in.take();
            std::thread::Builder::new()
                .name("event".into())
                .spawn(move || event_thread(timers, com, input, control))
                .map_err(|e| VmError::Setup(format!("event thread: {e}")))?
        };
        let r = self.vcpu_loop();
        self.control.stop();
        let _ = events.join();
        r
    }

    fn vcpu_loop(&mut self) -> Result<Outcome, VmError> {
        let mut vrp = vm_run_params {
            vrp_vm_id: self.id,
            vrp_vcpu_id: 0,
            ..Default::default()
        };
        let mut exit = Box::<vm_exit>::default();
        loop {
            if self.control.stop.load(Ordering::SeqCst) {
                return Ok(Outcome::Halted);
            }
            self.control.park_if_paused();
            // A halted vCPU sleeps until the PIC has an interrupt for it
            // (or a pause request, to park).
            {
                let mut halted = self.control.halted.lock().unwrap();
                while *halted && !self.control.stop.load(Ordering::SeqCst) {
                    if self.control.is_paused() {
                        break;
                    }
                    if self.pic.is_pending() {
                        *halted = false;
                        break;
                    }
                    halted = self
                        .control
                        .wake
                        .wait_timeout(halted, Duration::from_millis(100))
                        .unwrap()
                        .0;
                }
            }
            if vrp.vrp_irqready != 0 && self.pic.is_pending() {
                if let Some(vector) = self.pic.ack() {
                    vrp.vrp_inject = vcpu_inject_event {
                        vie_vector: vector,
                        vie_errorcode: 0,
                        vie_type: VCPU_INJECT_INTR as u8,
                    };
                }
            }
            vrp.vrp_intr_pending = self.pic.is_pending() as u8;
            if self.control.is_paused() {
                continue;
            }
            let ran = self.vmm.run(&mut vrp, &mut exit);
            vrp.vrp_inject = vcpu_inject_event::default();
            if let Err(e) = ran {
                // Stopping terminates the VM under a running vCPU.
                if self.control.stop.load(Ordering::SeqCst) {
                    return Ok(Outcome::Halted);
                }
                return Err(e.into());
            }
            match vrp.vrp_exit_reason as u32 {
                VM_EXIT_NONE => continue,
                VM_EXIT_TERMINATED => return Ok(Outcome::Halted),
                _ => {}
            }
            let mut handler = Handler {
                pio: &self.pio,
                mmio: &mut self.mmio,
                mem: &self.mem,
                sregs_changed: false,
                gprs_changed: false,
            };
            let action =
                vcpu_exit(vrp.vrp_exit_reason, &mut exit, &mut handler).map_err(VmError::Exit)?;
            if handler.gprs_changed {
                // vmm(4) reloads only RAX and RIP after an I/O exit.
                let p = vm_rwregs_params {
                    vrwp_vm_id: self.id,
                    vrwp_vcpu_id: 0,
                    vrwp_mask: VM_RWREGS_GPRS as u64,
                    vrwp_regs: exit.vrs,
                };
                self.vmm.writeregs(&p)?;
            }
            if handler.sregs_changed {
                let p = vm_rwregs_params {
                    vrwp_vm_id: self.id,
                    vrwp_vcpu_id: 0,
                    vrwp_mask: VM_RWREGS_SREGS as u64,
                    vrwp_regs: exit.vrs,
                };
                self.vmm.writeregs(&p)?;
            }
            if self.control.reset.swap(false, Ordering::SeqCst) {
                return Ok(Outcome::Reboot);
            }
            match action {
                Action::Continue => {}
                Action::Halt => {
                    let mut h = self.control.halted.lock().unwrap();
                    *h = !self.pic.is_pending();
                }
                Action::Reboot => return Ok(Outcome::Reboot),
            }
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = self.vmm.terminate(self.id);
    }
}

/// The device side of `vcpu_exit` in the VM process (visible to the `vm`
/// module for its exit-dispatch property test).
pub(super) struct Handler<'a> {
    pub(super) pio: &'a PioBus,
    pub(super) mmio: &'a mut MmioBus,
    pub(super) mem: &'a GuestMemory,
    pub(super) sregs_changed: bool,
    pub(super) gprs_changed: bool,
}

impl ExitHandler for Handler<'_> {
    fn port_io(&mut self, vei: &mut vm_exit_inout) {
        if vei.vei_dir as u32 == VEI_DIR_IN {
            let v = self.pio.read(vei.vei_port, vei.vei_size);
            set_return_data(vei, v);
        } else {
            self.pio.write(vei.vei_port, vei.vei_size, vei.vei_data);
        }
    }

    fn string_io(&mut self, exit: &mut vm_exit) -> Result<(), String> {
        let mut ports = self.pio.clone();
        crate::x86::emulate_string_io(exit, self.mem, &mut ports).map_err(|e| e.to_string())?;
        self.gprs_changed = true;
        Ok(())
    }

    fn mmio(&mut self, exit: &mut vm_exit) -> Result<(), String> {
        let done = crate::x86::emulate(exit, self.mem, self.mmio).map_err(|e| e.to_string())?;
        self.sregs_changed |= done.sregs_changed;
        Ok(())
    }
}

/// The event thread: device timers and console input.
fn event_thread(
    timers: Vec<Arc<Mutex<dyn Timer>>>,
    com: Arc<Mutex<Ns8250<Box<dyn Write + Send>>>>,
    input: Option<OwnedFd>,
    control: Arc<Control>,
) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut pending: Vec<u8> = Vec::new();
    let mut input = input;
    while !control.stop.load(Ordering::SeqCst) {
        if control.is_paused() {
            // Paused: no timers, no console input (pause_vm_md).
            let p = control.pause.lock().unwrap();
            let _ = control
                .pause_cv
                .wait_timeout_while(p, Duration::from_millis(100), |p| {
                    p.requested && !control.stop.load(Ordering::SeqCst)
                });
            continue;
        }
        let now = Instant::now();
        let mut next = now + Duration::from_millis(5);
        for t in &timers {
            let mut t = t.lock().unwrap();
            if let Some(d) = t.next_deadline() {
                if d <= now {
                    t.on_timer(now);
                }
            }
            if let Some(d) = t.next_deadline() {
                next = next.min(d.max(now));
            }
        }
        // Feed console input one byte at a time, as the UART takes it.
        if !pending.is_empty() {
            let mut c = com.lock().unwrap();
            if c.can_receive() {
                let n = c.receive(&pending);
                pending.drain(..n);
            }
            next = next.min(now + Duration::from_millis(1));
        }
        let wait = next.saturating_duration_since(Instant::now());
        match input.as_ref() {
            Some(fd) if pending.len() < 4096 => {
                let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                let ms = wait.as_millis().min(u16::MAX as u128) as u16;
                if let Ok(n) = poll(&mut fds, PollTimeout::from(ms)) {
                    if n > 0 {
                        let mut buf = [0u8; 256];
                        match nix::unistd::read(fd, &mut buf) {
                            Ok(0) | Err(_) => input = None, // EOF: no more input
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                        }
                    }
                }
            }
            _ => std::thread::sleep(wait),
        }
    }
}
