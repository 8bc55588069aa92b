//! The VM process proper: creates the VM through vmm-sys, builds the
//! platform of reference §4 (memory map, port map, PCI, fw_cfg), loads the
//! boot image and runs the vCPU until the guest halts for good, reboots or
//! fails.  The exit status follows vmd: 0 halted, EAGAIN reboot, an errno
//! otherwise.
use super::boot::{self, LoadError};
use super::exit::{set_return_data, vcpu_exit, Action, ExitError, ExitHandler};
use super::memmap;
use super::platform::{Platform, PlatformConfig, PlatformError};
use super::vcpu::{run_loop, LoopEnd, Vcpu, VcpuControl, WriteBack};
use crate::devices::bus::{MmioBus, PioBus, SharedMmio, SharedPio};
use crate::devices::fw_cfg::BootDevice;
use crate::devices::irq::Timer;
use crate::devices::ns8250::Ns8250;
use crate::devices::virtio::blk::{DiskImage, Vioblk};
use crate::devices::virtio::scsi::Vioscsi;
use crate::devices::virtio::transport::{add_virtio_bar, VirtioPciIds};
use crate::devices::virtio::vmmci::{Vmmci, VmmciCmd};
use crate::event::{EventLoop, Waker};
use crate::vm::devproc::{self, proxy, DevSetup, DeviceProcesses, DiskFiles, MemRange, NicFiles};
use crate::x86::MmioError;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
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
    /// What fw_cfg's `bootorder` asks SeaBIOS to boot.
    pub boot_device: BootDevice,
    /// Disks served by vioblk inside this process, in slot order after
    /// viornd (until vioblk has its device process).
    pub disks: Vec<Box<dyn DiskImage>>,
    /// Disks served by vioblk device processes (`vmd -X`), after `disks`;
    /// needs `devices`.
    pub disk_files: Vec<DiskFiles>,
    /// How to start device processes; None: no device processes.
    pub devices: Option<DeviceProcesses>,
    /// The ISO served by vioscsi as a CD-ROM (2048-byte blocks, read
    /// only) inside this process, in the slot after the disks.
    pub cdrom: Option<Box<dyn DiskImage>>,
    /// The ISO's descriptor, for a vioscsi device process (`vmd -X -t s`)
    /// in the slot after the disks; needs `devices`.
    pub cdrom_file: Option<OwnedFd>,
    /// The NICs, each on its tap, in slot order after viornd and before
    /// the disks: each in a vionet device process (`vmd -X -t n`, needs
    /// `devices`) or in this process.
    pub nics: Vec<NicFiles>,
}

impl VmConfig {
    /// A VM with memory, a boot image and a console, and nothing else: no
    /// console input, the host's exit flavour, SeaBIOS's own boot order,
    /// no disks, CD-ROM, NICs or device processes.  Callers add what they
    /// need with struct update syntax.
    pub fn new(
        name: impl Into<String>,
        memory: u64,
        boot: BootImage,
        console_out: Box<dyn Write + Send>,
    ) -> VmConfig {
        VmConfig {
            name: name.into(),
            memory,
            boot,
            console_out,
            console_in: None,
            flavour: None,
            boot_device: BootDevice::Auto,
            disks: Vec::new(),
            disk_files: Vec::new(),
            devices: None,
            cdrom: None,
            cdrom_file: None,
            nics: Vec::new(),
        }
    }
}

/// How a VM ended without error.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped (the guest halted for good, or `stop` was requested).
    Halted,
    /// The guest reset itself: vmd restarts the VM (exit status EAGAIN).
    Reboot,
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{0}")]
    Vmm(#[from] VmmError),
    #[error("failed to load the boot image: {0}")]
    Load(#[from] LoadError),
    #[error("{0}")]
    Exit(#[from] ExitError),
    #[error("{0}")]
    Platform(#[from] PlatformError),
    #[error("{0}")]
    Setup(String),
    /// A device process died or failed.
    #[error("{0}")]
    Device(String),
}

impl VmError {
    /// The errno the VM process exits with.
    pub fn errno(&self) -> i32 {
        match self {
            VmError::Vmm(e) => e.errno,
            VmError::Exit(e) => e.errno(),
            VmError::Load(_) => libc::ENOEXEC,
            VmError::Platform(_) | VmError::Setup(_) => libc::EINVAL,
            VmError::Device(_) => libc::EIO,
        }
    }
}

/// The handle other threads use to stop or pause the VM: the vCPU's state
/// machine, and the event thread, woken to notice.
pub struct Control {
    vcpu: Arc<VcpuControl>,
    /// Why the VM must end with an error (a device process died).
    failure: Arc<Mutex<Option<String>>>,
    events: Waker,
    event_wakeups: Arc<AtomicU64>,
    vmmci: Arc<Mutex<Vmmci>>,
    /// Devices told of pause and unpause (vmd's broadcast): the NICs.
    pause_hooks: Vec<PauseHook>,
    /// Each NIC (by index) told its tap's MAC.
    host_mac_hooks: Vec<(u32, HostMacHook)>,
}

type HostMacHook = Box<dyn Fn([u8; 6]) + Send + Sync>;

/// Pauses (true) or unpauses a device.
type PauseHook = Box<dyn Fn(bool) + Send + Sync>;

/// What a graceful stop request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownRequest {
    /// The guest's vmmci driver was asked to reboot: the VM ends when the
    /// guest resets (`run` returns Reboot, which the caller, having asked
    /// for a stop, treats as stopped) or when vmmci's timeout runs out
    /// (Halted): 3 s without an acknowledgement, 120 s with one.
    Asked,
    /// No vmmci driver in the guest: the VM is being stopped now, as vmd
    /// ends the VM process at once in that case.
    Stopped,
}

impl Control {
    /// Ends the VM: the vCPU leaves VMM_IOC_RUN and `run` returns Halted.
    pub fn stop(&self) {
        self.vcpu.stop();
        self.events.wake();
    }

    /// Pauses the VM (vmd's `pause_vm`): the vCPU parks at its next exit
    /// and the event thread stops running device timers and console input
    /// until unpaused.  Returns once the vCPU is parked (or after a
    /// second); false if it was already paused.
    pub fn pause(&self) -> bool {
        let paused = self.vcpu.pause();
        if paused {
            self.pause_hooks.iter().for_each(|h| h(true));
        }
        self.events.wake();
        paused
    }

    /// Resumes a paused VM; false if it was not paused.
    pub fn unpause(&self) -> bool {
        let resumed = self.vcpu.unpause();
        if resumed {
            self.pause_hooks.iter().for_each(|h| h(false));
        }
        self.events.wake();
        resumed
    }

    /// The MAC of NIC `index`'s tap, as priv read it (vmd's
    /// IMSG_DEVOP_HOSTMAC to vionet): its DHCP server answers requests
    /// sent to it.
    pub fn set_host_mac(&self, index: u32, mac: [u8; 6]) {
        match self.host_mac_hooks.iter().find(|(i, _)| *i == index) {
            Some((_, h)) => h(mac),
            None => log::debug!("host mac for interface {index}, which the vm does not have"),
        }
    }

    pub fn is_paused(&self) -> bool {
        self.vcpu.is_paused()
    }

    /// `vmctl stop` without -f (the vmm process's IMSG_VMDOP_VM_REBOOT to
    /// the VM): ask the guest through vmmci, as vmd does, to reboot.
    pub fn request_shutdown(&self) -> ShutdownRequest {
        match self.vmmci.lock().unwrap().ctl(VmmciCmd::Reboot) {
            Ok(()) => ShutdownRequest::Asked,
            Err(_) => {
                self.stop();
                ShutdownRequest::Stopped
            }
        }
    }

    /// The last shutdown or reboot request the guest acknowledged.
    pub fn shutdown_acked(&self) -> Option<VmmciCmd> {
        self.vmmci.lock().unwrap().acked()
    }

    /// How often the event thread and the vCPU woke up so far: an idle VM
    /// should barely move these.
    pub fn wakeups(&self) -> (u64, u64) {
        (
            self.event_wakeups.load(Ordering::Relaxed),
            self.vcpu.wakeups(),
        )
    }
}

type Console = Box<dyn Write + Send>;

pub struct Machine {
    vmm: Arc<Vmm>,
    id: u32,
    mem: GuestMemory,
    platform: Platform<Console>,
    events: EventLoop,
    console_in: Option<OwnedFd>,
    initial: vcpu_reg_state,
    control: Arc<Control>,
    /// In-process NICs' receive threads, stopped with the machine.
    nic_threads: Vec<NicThread>,
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
                let img = boot::elf::read_image(raw)?;
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
        }?;

        let mut platform_cfg = PlatformConfig::host(mem.clone(), ranges.to_vec(), cfg.console_out);
        platform_cfg.boot_device = cfg.boot_device;
        let events = EventLoop::new().map_err(|e| VmError::Setup(format!("event loop: {e}")))?;
        let vcpu = VcpuControl::new(vmm.clone(), id, 0);
        // A device process that dies ends the VM with its message.
        let failure: Arc<Mutex<Option<String>>> = Arc::default();
        let on_death: proxy::OnDeath = {
            let (failure, vcpu, waker) = (failure.clone(), vcpu.clone(), events.waker());
            Arc::new(move |msg: String| {
                failure.lock().unwrap().get_or_insert(msg);
                vcpu.stop();
                waker.wake();
            })
        };
        let (disk_files, devices, cdrom_file) = (cfg.disk_files, cfg.devices, cfg.cdrom_file);
        let mut pause_hooks: Vec<PauseHook> = Vec::new();
        let mut host_mac_hooks: Vec<(u32, HostMacHook)> = Vec::new();
        let mut nic_threads = Vec::new();
        let platform = Platform::build(platform_cfg, |slots| {
            // What every device process of this VM is started with.
            let spec = devices.as_ref().map(|dev| DeviceSpec {
                vmm: &vmm,
                vm_id: id,
                vm_name: &cfg.name,
                ranges,
                dev,
                on_death: &on_death,
            });
            // vmd's order (reference §4.3): NICs, disks, then the cdrom.
            for n in cfg.nics {
                let i = n.nic.index;
                let err = |m: String| PlatformError::Device(format!("vionet {i}: {m}"));
                if n.in_process || spec.is_none() {
                    let tap = crate::sys::Tap::from_fd(n.tap, n.nic.ifname.clone())
                        .map_err(|e| err(e.to_string()))?;
                    let wake_fd = tap.file.try_clone().map_err(|e| err(e.to_string()))?;
                    let mut dev = crate::daemon::devproc::vionet(&n.nic, tap);
                    let t = NicThread::new().map_err(|e| err(e.to_string()))?;
                    let w = t.waker.clone();
                    dev.set_rx_notify(Box::new(move || w.wake()));
                    let a = slots.attach_virtio(VirtioPciIds::NET, dev)?;
                    let hook = a.dev.clone();
                    pause_hooks.push(Box::new(move |p| hook.lock().unwrap().set_paused(p)));
                    let hook = a.dev.clone();
                    host_mac_hooks.push((
                        i,
                        Box::new(move |m| {
                            use crate::devices::virtio::transport::VirtioDevice;
                            hook.lock().unwrap().device_mut().set_host_mac(m)
                        }),
                    ));
                    nic_threads.push(t.start(a.dev, wake_fd).map_err(|e| err(e.to_string()))?);
                    continue;
                }
                let spec = spec.as_ref().expect("checked above");
                let payload = vmd_proto::codec::encode(&n.nic).map_err(|e| err(e.to_string()))?;
                let (pid, proxy) = attach_device_process(
                    slots,
                    spec,
                    VirtioPciIds::NET,
                    'n',
                    payload,
                    vec![n.tap],
                )
                .map_err(|e| match e {
                    PlatformError::Device(m) => err(format!("{} ({}): {m}", n.nic.ifname, i)),
                    e => e,
                })?;
                let hook = proxy.clone();
                pause_hooks.push(Box::new(move |p| hook.lock().unwrap().set_paused(p)));
                host_mac_hooks.push((i, Box::new(move |m| proxy.lock().unwrap().set_host_mac(m))));
                log::debug!("vionet {i} on {}: device process {pid}", n.nic.ifname);
            }
            for image in cfg.disks {
                slots.attach_virtio(VirtioPciIds::BLOCK, Vioblk::new(image, ""))?;
            }
            for (i, d) in disk_files.into_iter().enumerate() {
                let spec = spec.as_ref().ok_or_else(|| {
                    PlatformError::Device("disk files without device processes".into())
                })?;
                let payload = vmd_proto::codec::encode(&d.disk).map_err(|e| {
                    PlatformError::Device(format!("vioblk {i} ({}): {e}", d.disk.path))
                })?;
                let (pid, _) =
                    attach_device_process(slots, spec, VirtioPciIds::BLOCK, 'd', payload, d.files)
                        .map_err(|e| match e {
                            PlatformError::Device(m) => {
                                PlatformError::Device(format!("vioblk {i} ({}): {m}", d.disk.path))
                            }
                            e => e,
                        })?;
                log::debug!("vioblk {i}: device process {pid}");
            }
            if let Some(iso) = cfg.cdrom {
                slots.attach_virtio(VirtioPciIds::SCSI, Vioscsi::new(iso, "cd0"))?;
            } else if let Some(fd) = cdrom_file {
                let spec = spec.as_ref().ok_or_else(|| {
                    PlatformError::Device("a cdrom file without device processes".into())
                })?;
                let (pid, _) = attach_device_process(
                    slots,
                    spec,
                    VirtioPciIds::SCSI,
                    's',
                    Vec::new(),
                    vec![fd],
                )
                .map_err(|e| match e {
                    PlatformError::Device(m) => PlatformError::Device(format!("vioscsi: {m}")),
                    e => e,
                })?;
                log::debug!("vioscsi: device process {pid}");
            }
            Ok(())
        })?;
        {
            // Interrupts: the PIC tells vmm(4) whether one is pending and
            // wakes a halted vCPU.
            let vcpu = vcpu.clone();
            platform
                .pic
                .set_notify(move |pending| vcpu.interrupt_pending(pending));
        }
        // A guest access that moves a device's deadline, or drains COM1's
        // receive register, wakes the event thread (vmd's pipe messages).
        let wake = || {
            let w = events.waker();
            move || w.wake()
        };
        platform.pit.lock().unwrap().set_reschedule_notify(wake());
        platform.rtc.lock().unwrap().set_reschedule_notify(wake());
        let mut com = platform.com.lock().unwrap();
        com.set_reschedule_notify(wake());
        com.set_rx_notify(Box::new(wake()));
        drop(com);
        // vmmci: a moved ack timeout wakes the event thread, and an
        // expired one ends the VM (vmd's vm_shutdown).
        {
            let mut vmmci = platform.vmmci.lock().unwrap();
            let w = events.waker();
            vmmci.set_reschedule_notify(Box::new(move || w.wake()));
            let (v, w) = (vcpu.clone(), events.waker());
            vmmci.set_on_expire(Box::new(move |how| {
                log::info!("vmmci: {how:?} timeout, stopping the vm");
                v.stop();
                w.wake();
            }));
        }
        let control = Arc::new(Control {
            vcpu,
            failure,
            events: events.waker(),
            event_wakeups: events.wakeup_counter(),
            vmmci: platform.vmmci.clone(),
            pause_hooks,
            host_mac_hooks,
        });
        Ok(Machine {
            vmm,
            id,
            mem,
            platform,
            events,
            console_in: cfg.console_in,
            initial,
            control,
            nic_threads,
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

    /// Adds an MMIO device (e.g. a test device) over addresses no other
    /// device claims.
    pub fn register_mmio(&mut self, base: u64, len: u64, dev: SharedMmio) -> Result<(), VmError> {
        self.platform
            .mmio
            .register(base, len, dev)
            .map_err(|e| VmError::Platform(e.into()))
    }

    /// Adds a port-I/O device over ports no other device claims.
    pub fn register_pio(&mut self, base: u16, len: u16, dev: SharedPio) -> Result<(), VmError> {
        self.platform
            .pio
            .register(base, len, dev)
            .map_err(|e| VmError::Platform(e.into()))
    }

    /// Runs the VM to its end.  The VM is terminated in vmm(4) afterwards.
    pub fn run(mut self) -> Result<Outcome, VmError> {
        self.vmm.resetcpu(&vm_resetcpu_params {
            vrp_vm_id: self.id,
            vrp_vcpu_id: 0,
            vrp_init_state: self.initial,
        })?;
        let events = {
            let ev = std::mem::replace(
                &mut self.events,
                EventLoop::new().map_err(|e| VmError::Setup(format!("event loop: {e}")))?,
            );
            let timers = self.platform.timers();
            let com = self.platform.com.clone();
            let control = self.control.clone();
            let input = self.console_in.take();
            std::thread::Builder::new()
                .name("event".into())
                .spawn(move || event_thread(ev, timers, com, input, control))
                .map_err(|e| VmError::Setup(format!("event thread: {e}")))?
        };
        let r = self.vcpu_loop();
        self.control.stop();
        // In-process NICs stop taking frames.
        self.nic_threads.clear();
        let _ = events.join();
        if let Some(msg) = self.control.failure.lock().unwrap().take() {
            return Err(VmError::Device(msg));
        }
        r
    }

    fn vcpu_loop(&mut self) -> Result<Outcome, VmError> {
        let mut vcpu = Vcpu::new(self.control.vcpu.clone());
        let pic = self.platform.pic.clone();
        let reset = self.platform.reset.clone();
        let (pio, mmio, mem) = (&self.platform.pio, &mut self.platform.mmio, &self.mem);
        let end = run_loop(&mut vcpu, &*pic, |reason, exit| {
            let mut handler = Handler {
                pio,
                mmio,
                mem,
                sregs_changed: false,
                gprs_changed: false,
            };
            let action = vcpu_exit(reason, exit, &mut handler)?;
            let write_back = WriteBack {
                gprs: handler.gprs_changed,
                sregs: handler.sregs_changed,
            };
            // A reset through 0xCF9 or the keyboard controller.
            let action = if reset.swap(false, Ordering::SeqCst) {
                Action::Reboot
            } else {
                action
            };
            Ok::<_, VmError>((action, write_back))
        })?;
        Ok(match end {
            LoopEnd::Stopped => Outcome::Halted,
            LoopEnd::Reboot => Outcome::Reboot,
        })
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = self.vmm.terminate(self.id);
    }
}

/// What every device process of a VM shares.
struct DeviceSpec<'a> {
    vmm: &'a Arc<Vmm>,
    vm_id: u32,
    vm_name: &'a str,
    ranges: &'a [vm_mem_range],
    dev: &'a DeviceProcesses,
    on_death: &'a proxy::OnDeath,
}

/// Adds a virtio device served by a device process of kind `kind` (`d`
/// vioblk, `s` vioscsi, ...): the next slot and line, the process
/// started with the guest memory's descriptors, `payload` (what the kind
/// needs to know) and `files`, and its BAR forwarded to it.  The
/// device process's pid.
fn attach_device_process(
    slots: &mut crate::vm::platform::PciSlots<'_>,
    spec: &DeviceSpec<'_>,
    ids: VirtioPciIds,
    kind: char,
    payload: Vec<u8>,
    files: Vec<OwnedFd>,
) -> Result<(u32, Arc<Mutex<proxy::Proxy>>), PlatformError> {
    let bad = |e: &dyn std::fmt::Display| PlatformError::Device(e.to_string());
    let info = slots.add_device(&ids.pci_config())?;
    let irq = info.irq.ok_or(crate::devices::pci::PciError::NoIrqLeft)?;
    let fds = spec.vmm.memory_fds(spec.vm_id).map_err(|e| bad(&e))?;
    let ranges = spec
        .ranges
        .iter()
        .enumerate()
        .map(|(i, r)| MemRange {
            gpa: r.vmr_gpa,
            size: r.vmr_size as u64,
            kind: r.vmr_type,
            has_fd: fds.get(i).is_some_and(Option::is_some),
        })
        .collect();
    // Doorbells only where kicks go one way: a round-trip kick waits for
    // the device's answer, which a doorbell does not give.
    let doorbells = spec
        .dev
        .one_way_kicks
        .then(|| {
            let name = format!("{} {}", proxy::kind_name(kind), info.slot);
            devproc::doorbell::Doorbells::new(
                spec.vmm,
                spec.vm_id,
                devproc::queue_count(kind),
                &name,
            )
        })
        .flatten();
    let (proxy, config_len) = proxy::launch(proxy::Launch {
        exe: &spec.dev.exe,
        flags: &spec.dev.flags,
        vmm_fd: spec.dev.vmm_fd.try_clone().map_err(|e| bad(&e))?,
        setup: DevSetup {
            kind,
            vm_name: spec.vm_name.to_string(),
            vm_id: spec.vm_id,
            irq,
            ranges,
            files: files.len() as u32,
            doorbells: doorbells.as_ref().map_or(0, |(_, fds)| fds.len() as u32),
            payload,
        },
        mem_fds: fds.into_iter().flatten().collect(),
        files,
        lines: slots.lines.clone(),
        on_death: spec.on_death.clone(),
        one_way_kicks: spec.dev.one_way_kicks,
        doorbells,
    })
    .map_err(|e| bad(&e))?;
    let pid = proxy.pid();
    let proxy = Arc::new(Mutex::new(proxy));
    add_virtio_bar(slots.bus, info.slot, config_len, proxy.clone())?;
    Ok((pid, proxy))
}

/// The receive side of a NIC served in the VM process (vionet's tap
/// event in vmd's device process): a thread that waits for the tap while
/// the guest has receive buffers, and for the device's word that it has
/// buffers again or was unpaused.
struct NicThread {
    waker: Waker,
    events: Option<EventLoop>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl NicThread {
    fn new() -> std::io::Result<NicThread> {
        let ev = EventLoop::new()?;
        Ok(NicThread {
            waker: ev.waker(),
            events: Some(ev),
            stop: Arc::default(),
            handle: None,
        })
    }

    fn start(
        mut self,
        dev: Arc<
            Mutex<
                crate::devices::virtio::transport::VirtioPci<crate::devices::virtio::net::Vionet>,
            >,
        >,
        tap: std::fs::File,
    ) -> std::io::Result<NicThread> {
        let mut ev = self.events.take().expect("started once");
        let stop = self.stop.clone();
        self.handle = Some(
            std::thread::Builder::new()
                .name("vionet".into())
                .spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let want = dev.lock().unwrap().wants_input();
                        let fds: Vec<_> = if want {
                            vec![(tap.as_fd(), false)]
                        } else {
                            Vec::new()
                        };
                        let (ready, _) = ev.wait(&fds, None);
                        if ready.first().is_some_and(|r| r.read) {
                            dev.lock().unwrap().input();
                        }
                    }
                })?,
        );
        Ok(self)
    }
}

impl Drop for NicThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.waker.wake();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
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

    fn string_io(&mut self, exit: &mut vm_exit) -> Result<(), MmioError> {
        let mut ports = self.pio.clone();
        crate::x86::emulate_string_io(exit, self.mem, &mut ports)?;
        self.gprs_changed = true;
        Ok(())
    }

    fn mmio(&mut self, exit: &mut vm_exit) -> Result<(), MmioError> {
        let done = crate::x86::emulate(exit, self.mem, self.mmio)?;
        self.sregs_changed |= done.sregs_changed;
        Ok(())
    }
}

/// The event thread: device timers and console input.  It sleeps until
/// the earliest timer deadline, console input, or a wake-up (a device
/// rescheduled, COM1 took a byte, pause, unpause, stop): an idle VM
/// whose timers are off does not wake at all.
fn event_thread(
    mut ev: EventLoop,
    timers: Vec<Arc<Mutex<dyn Timer>>>,
    com: Arc<Mutex<Ns8250<Console>>>,
    input: Option<OwnedFd>,
    control: Arc<Control>,
) {
    let mut pending: Vec<u8> = Vec::new();
    let mut input = input;
    loop {
        if control.vcpu.is_stopping() {
            return;
        }
        if control.vcpu.is_paused() {
            // Paused: no timers, no console input (pause_vm_md) until
            // unpause or stop wakes the loop.
            ev.wait(&[], None);
            continue;
        }
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for t in &timers {
            let mut t = t.lock().unwrap();
            if t.next_deadline().is_some_and(|d| d <= now) {
                t.on_timer(now);
            }
            next = crate::event::earliest([next, t.next_deadline()]);
        }
        // Feed console input as the UART takes it; it says (rx_notify)
        // when the guest has read a byte.
        if !pending.is_empty() {
            let mut c = com.lock().unwrap();
            if c.can_receive() {
                let n = c.receive(&pending);
                pending.drain(..n);
            }
        }
        let want_input = pending.len() < 4096;
        let fds: Vec<_> = input
            .as_ref()
            .filter(|_| want_input)
            .map(|fd| (fd.as_fd(), false))
            .into_iter()
            .collect();
        let (ready, _) = ev.wait(&fds, next);
        if let (Some(fd), Some(r)) = (input.as_ref(), ready.first()) {
            if r.read {
                let mut buf = [0u8; 256];
                match nix::unistd::read(fd, &mut buf) {
                    Ok(n) if n > 0 => pending.extend_from_slice(&buf[..n]),
                    Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {}
                    // EOF or the pty's other side gone: no more input.
                    _ => input = None,
                }
            }
        }
    }
}
