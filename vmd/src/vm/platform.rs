//! One PC wiring: vmd's amd64 machine (reference §4.2, §4.3) built in one
//! place — the devices, the ports and windows they answer on, their
//! interrupt lines, and fw_cfg last so that it sees the PCI devices.  The
//! VM process and the device property tests both build it here, so a
//! test exercises the wiring the guest gets.
use crate::devices::bus::{all_ones, BusError, MmioBus, PioBus, PioDevice};
use crate::devices::fw_cfg::{self, BootDevice, FwCfg, FwCfgError};
use crate::devices::i8042::{self, I8042Port, I8042};
use crate::devices::i8253::{self, I8253Misc, I8253};
use crate::devices::i8259::{Chip, ElcrPort, PicPort, I8259};
use crate::devices::irq::{Clock, IrqLines, Timer};
use crate::devices::mc146818::{self, Mc146818, WallClock};
use crate::devices::ns8250::{self, Ns8250};
use crate::devices::pci::{self, PciBus, PciDeviceConfig, PciDeviceInfo, PciError};
use crate::devices::virtio::rng::Viornd;
use crate::devices::virtio::transport::{
    self as virtio, AttachedVirtio, VirtioDevice, VirtioPci, VirtioPciIds,
};
use crate::devices::virtio::vmmci::{self, Vmmci};
use crate::vm::guest_memory::VmMemory;
use crate::vm::memmap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use vmm_sys::abi::vm_mem_range;
use vmm_sys::GuestMemory;

/// Reset control (0xCF9): a write with bits 1 and 2 set resets the
/// machine (the keyboard controller has its own reset line).
pub const RESET_CONTROL: u16 = 0xCF9;

#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error("port map: {0}")]
    Bus(#[from] BusError),
    #[error("fw_cfg: {0}")]
    FwCfg(#[from] FwCfgError),
    #[error("pci: {0}")]
    Pci(#[from] PciError),
    #[error("{0}")]
    Memory(#[from] crate::vm::guest_memory::VmMemoryError),
    #[error("{0}")]
    Device(String),
}

/// What the platform is built from.
pub struct PlatformConfig<W> {
    /// Guest memory, for fw_cfg DMA.
    pub mem: GuestMemory,
    /// The VM's memory map (CMOS sizes, e820).
    pub ranges: Vec<vm_mem_range>,
    /// COM1's output (the VM's pty).
    pub console: W,
    /// The monotonic time the timers read; tests move it by hand.
    pub clock: Arc<dyn Fn() -> Instant + Send + Sync>,
    /// The RTC's wall clock (seconds since the epoch).
    pub wall_clock: WallClock,
    /// What fw_cfg's `bootorder` asks SeaBIOS to boot.
    pub boot_device: BootDevice,
}

impl<W> PlatformConfig<W> {
    /// The host's clocks.
    pub fn host(mem: GuestMemory, ranges: Vec<vm_mem_range>, console: W) -> Self {
        PlatformConfig {
            mem,
            ranges,
            console,
            clock: Arc::new(Instant::now),
            wall_clock: mc146818::host_wall_clock(),
            boot_device: BootDevice::Auto,
        }
    }
}

/// Where PCI devices are added while the platform is built (vmd's
/// `virtio_init`, between `pci_init` and `fw_cfg_init`).
pub struct PciSlots<'a> {
    pub bus: &'a mut PciBus,
    pic: &'a I8259,
    pub lines: &'a Arc<dyn IrqLines>,
    pub mem: &'a GuestMemory,
}

impl PciSlots<'_> {
    /// Adds a virtio 1.x device (vmd's `virtio_dev_init` and its BAR and
    /// capabilities) over the VM's memory, its line level-triggered.
    pub fn attach_virtio<D: VirtioDevice + 'static>(
        &mut self,
        ids: VirtioPciIds,
        dev: D,
    ) -> Result<AttachedVirtio<D>, PlatformError> {
        let mem = VmMemory::new(self.mem)?;
        let a = virtio::attach(self.bus, ids, dev, mem, self.lines.clone())?;
        self.pic.set_elcr(a.irq, true);
        Ok(a)
    }

    /// Adds a device in the next slot; its interrupt line, if it needs
    /// one, is marked level-triggered in the ELCR, as vmd does.
    pub fn add_device(&mut self, c: &PciDeviceConfig) -> Result<PciDeviceInfo, PciError> {
        let info = self.bus.add_device(c)?;
        if let Some(irq) = info.irq {
            self.pic.set_elcr(irq, true);
        }
        Ok(info)
    }
}

/// The devices of one VM on their buses.
pub struct Platform<W: Write + Send + 'static> {
    pub pio: PioBus,
    pub mmio: MmioBus,
    pub pic: Arc<I8259>,
    pub lines: Arc<dyn IrqLines>,
    pub pit: Arc<Mutex<I8253>>,
    pub rtc: Arc<Mutex<Mc146818>>,
    pub com: Arc<Mutex<Ns8250<W>>>,
    pub pci: Arc<Mutex<PciBus>>,
    pub fw_cfg: Arc<Mutex<FwCfg<GuestMemory>>>,
    pub kbc: Arc<Mutex<I8042>>,
    /// Set by the guest through 0xCF9 or the keyboard controller.
    pub reset: Arc<AtomicBool>,
    /// The entropy device, first on the bus after the host bridge.
    pub viornd: Arc<Mutex<VirtioPci<Viornd>>>,
    /// The VMM control interface, last on the bus.
    pub vmmci: Arc<Mutex<Vmmci>>,
}

fn shared<T>(t: T) -> Arc<Mutex<T>> {
    Arc::new(Mutex::new(t))
}

impl<W: Write + Send + 'static> Platform<W> {
    /// Builds the machine in vmd's order: PIT, RTC, PIC and ELCR, COM1,
    /// PCI with the devices `add_pci` adds, fw_cfg, keyboard controller,
    /// reset control.
    pub fn build(
        cfg: PlatformConfig<W>,
        add_pci: impl FnOnce(&mut PciSlots<'_>) -> Result<(), PlatformError>,
    ) -> Result<Platform<W>, PlatformError> {
        let clock = |c: &Arc<dyn Fn() -> Instant + Send + Sync>| -> Clock {
            let c = c.clone();
            Box::new(move || c())
        };
        let pic = Arc::new(I8259::new());
        let lines: Arc<dyn IrqLines> = pic.clone();
        let mut pio = PioBus::new();
        let mut mmio = MmioBus::new();

        let pit = shared(I8253::new(lines.clone(), clock(&cfg.clock)));
        pio.register(i8253::TIMER_BASE, 4, pit.clone())?;
        pio.register(i8253::PCKBC_AUX, 1, shared(I8253Misc::new(pit.clone())))?;

        let (memlo, memhi) = memmap::cmos_memory(&cfg.ranges);
        let mut rtc = Mc146818::new(lines.clone(), clock(&cfg.clock), cfg.wall_clock);
        rtc.set_memlo(memlo);
        rtc.set_memhi(memhi);
        let rtc = shared(rtc);
        pio.register(mc146818::IO_RTC, 2, rtc.clone())?;

        pio.register(0x20, 2, shared(PicPort::new(pic.clone(), Chip::Master)))?;
        pio.register(0xA0, 2, shared(PicPort::new(pic.clone(), Chip::Slave)))?;
        pio.register(0x4D0, 2, shared(ElcrPort::new(pic.clone())))?;

        let com = shared(Ns8250::new(cfg.console, lines.clone(), clock(&cfg.clock)));
        pio.register(ns8250::COM1_BASE, ns8250::NS8250_PORTS, com.clone())?;

        let window = memmap::PCI_MMIO_BAR_BASE..=memmap::PCI_MMIO_BAR_END;
        let pci = shared(PciBus::new(window));
        pci::attach(&mut pio, &mut mmio, &pci)?;
        // vmd's virtio_init: viornd first, then what the caller adds
        // (NICs, disks, cdrom), vmmci last; every line level-triggered.
        let vm_mem = VmMemory::new(&cfg.mem)?;
        let (viornd, vmmci) = {
            let mut bus = pci.lock().unwrap();
            let rng = virtio::attach(
                &mut bus,
                VirtioPciIds::RNG,
                Viornd::new(),
                vm_mem,
                lines.clone(),
            )?;
            pic.set_elcr(rng.irq, true);
            add_pci(&mut PciSlots {
                bus: &mut bus,
                pic: &pic,
                lines: &lines,
                mem: &cfg.mem,
            })?;
            let vmmci = vmmci::attach(
                &mut bus,
                lines.clone(),
                clock(&cfg.clock),
                vmmci::host_time_of_day(),
            )?;
            pic.set_elcr(vmmci.irq, true);
            (rng.dev, vmmci.dev)
        };

        // fw_cfg last, as vmd does, so that it sees the PCI devices.
        let mut fwcfg = FwCfg::new(cfg.mem.clone());
        fwcfg.vmd_init(
            &memmap::e820(&cfg.ranges),
            cfg.boot_device,
            &pci.lock().unwrap(),
        )?;
        fwcfg.add_sercon_port(ns8250::COM1_BASE)?;
        fwcfg.add_show_boot_menu(0)?;
        let fw_cfg = shared(fwcfg);
        pio.register(
            fw_cfg::FW_CFG_IO_SELECT,
            fw_cfg::FW_CFG_PORTS,
            fw_cfg.clone(),
        )?;

        let reset = Arc::new(AtomicBool::new(false));
        let kbc = shared(I8042::new(lines.clone(), reset.clone()));
        pio.register(i8042::KBC_DATA, 1, shared(I8042Port::data(kbc.clone())))?;
        pio.register(i8042::KBC_CMD, 1, shared(I8042Port::command(kbc.clone())))?;
        pio.register(
            RESET_CONTROL,
            1,
            shared(ResetControl {
                requested: reset.clone(),
            }),
        )?;

        Ok(Platform {
            pio,
            mmio,
            pic,
            lines,
            pit,
            rtc,
            com,
            pci,
            fw_cfg,
            kbc,
            reset,
            viornd,
            vmmci,
        })
    }

    /// The devices with deadlines, for the event loop.
    pub fn timers(&self) -> Vec<Arc<Mutex<dyn Timer>>> {
        vec![
            self.pit.clone(),
            self.rtc.clone(),
            self.com.clone(),
            self.vmmci.clone(),
        ]
    }
}

/// 0xCF9.
struct ResetControl {
    requested: Arc<AtomicBool>,
}

impl PioDevice for ResetControl {
    fn pio_read(&mut self, _offset: u16, size: u8) -> u32 {
        all_ones(size)
    }
    fn pio_write(&mut self, _offset: u16, _size: u8, value: u32) {
        if value & 0x06 == 0x06 {
            self.requested.store(true, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform() -> Platform<Vec<u8>> {
        let ranges = memmap::create_memory_map(64 << 20).unwrap();
        let mem = GuestMemory::anonymous(&[(0, 0x1000)]).unwrap();
        Platform::build(PlatformConfig::host(mem, ranges, Vec::new()), |_| Ok(())).unwrap()
    }

    /// The port map against reference §4.2 (era B: no ACPI ports), in the
    /// order vmd registers them.
    #[test]
    fn port_map_is_vmds() {
        let p = platform();
        let map: Vec<(u16, u16)> = p.pio.ranges().collect();
        assert_eq!(
            map,
            [
                (0x40, 4),        // i8253
                (0x61, 1),        // PCKBC_AUX
                (0x70, 2),        // mc146818
                (0x20, 2),        // i8259 master
                (0xA0, 2),        // i8259 slave
                (0x4D0, 2),       // ELCR
                (0x3F8, 8),       // ns8250 COM1
                (0xCF8, 1),       // PCI address
                (0xCFC, 4),       // PCI data
                (0x1000, 0xF000), // PCI I/O BARs
                (0x510, 9),       // fw_cfg select, data, DMA
                (0x60, 1),        // i8042 data
                (0x64, 1),        // i8042 command
                (0xCF9, 1),       // reset control
            ]
        );
    }

    #[test]
    fn unclaimed_ports_read_all_ones_and_reset_control_resets() {
        let p = platform();
        assert_eq!(p.pio.read(0xCFA, 1), 0xFF);
        assert_eq!(p.pio.read(0x80, 4), 0xFFFF_FFFF);
        p.pio.write(RESET_CONTROL, 1, 0x02);
        assert!(!p.reset.load(Ordering::SeqCst));
        p.pio.write(RESET_CONTROL, 1, 0x06);
        assert!(p.reset.load(Ordering::SeqCst));
    }

    #[test]
    fn pci_devices_get_level_triggered_lines_and_fw_cfg_sees_them() {
        let ranges = memmap::create_memory_map(64 << 20).unwrap();
        let mem = GuestMemory::anonymous(&[(0, 0x1000)]).unwrap();
        let mut cfg = PlatformConfig::host(mem, ranges, Vec::new());
        cfg.boot_device = BootDevice::Disk;
        let p = Platform::build(cfg, |slots| {
            let info = slots.add_device(&PciDeviceConfig {
                vendor: 0x1af4,
                device: 0x1042,
                class: 0x01,
                subclass: 0x00,
                subsys_vendor: pci::PCI_VENDOR_OPENBSD,
                subsys_id: 2,
                revision: 1,
                irq_needed: true,
            })?;
            // Slot 1 and line 3 are viornd's.
            assert_eq!((info.slot, info.irq), (2, Some(5)));
            Ok(())
        })
        .unwrap();
        // viornd (3), the disk (5) and vmmci (6) are level-triggered.
        assert_eq!(p.pic.read_elcr(0), 1 << 3 | 1 << 5 | 1 << 6);
        p.pio.write(0xCF8, 4, 0x8000_0800);
        assert_eq!(p.pio.read(0xCFC, 4), 0x1044_1af4, "viornd in slot 1");
        p.pio.write(0xCF8, 4, 0x8000_1800);
        assert_eq!(p.pio.read(0xCFC, 4), 0x0777_0b5d, "vmmci last, in slot 3");
        p.pio.write(0xCF8, 4, 0x8000_183c);
        assert_eq!(p.pio.read(0xCFC, 2), 0x0106);
        p.pio.write(0xCF8, 4, 0x8000_2000);
        assert_eq!(p.pio.read(0xCFC, 4), 0xffff_ffff, "nothing after vmmci");
        // Slot 2 through the configuration ports: vendor and device.
        p.pio.write(0xCF8, 4, 0x8000_1000);
        assert_eq!(p.pio.read(0xCFC, 4), 0x1042_1af4);
        assert_eq!(p.pio.read(0xCFE, 2), 0x1042);
        // fw_cfg has a bootorder naming it.
        p.pio.write(fw_cfg::FW_CFG_IO_SELECT, 2, 0x19); // file directory
        let count = (0..4).fold(0u32, |n, _| n << 8 | p.pio.read(0x511, 1));
        assert!(
            count >= 5,
            "e820, screen-and-debug, bootorder, sercon, boot menu"
        );
    }

    /// viornd through the whole platform: the test driver finds it in
    /// slot 1, gets random bytes, and its interrupt reaches the i8259 as
    /// a level on line 3 that reading the ISR takes away.
    #[test]
    fn viornd_interrupts_through_the_pic() {
        use crate::devices::virtio::testdriver::{Ring, TestMachine, Virtio1};
        let ranges = memmap::create_memory_map(64 << 20).unwrap();
        let mem = GuestMemory::anonymous(&[(0, 0x10_0000)]).unwrap();
        let p = Platform::build(
            PlatformConfig::host(mem.clone(), ranges, Vec::new()),
            |_| Ok(()),
        )
        .unwrap();
        let m = TestMachine::over(p.pio.clone(), p.pci.clone(), mem.clone());
        let v = Virtio1::probe(&m, 1);
        let mut ring = v.bring_up(&m, 1 << 32, Ring::new(64, 0x1000));
        let irr = || p.pic.read_port(Chip::Master, 0) & (1 << 3);
        assert_eq!(irr(), 0);
        ring.add(&m, &[(0x8000, 64, true)]);
        v.kick(&m, 0);
        assert_eq!(ring.take_used(&m), vec![(0, 64)]);
        assert_eq!(irr(), 1 << 3, "line 3 up");
        assert_eq!(v.isr(&m), 1);
        assert_eq!(irr(), 0, "line 3 down after the ISR read");
        let mut buf = [0u8; 64];
        mem.read(0x8000, &mut buf).unwrap();
        assert_ne!(buf, [0; 64]);
    }
}
