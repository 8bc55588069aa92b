//! PCI as vmd emulates it (pci.c / pci.h): configuration mechanism #1 on
//! ports 0xCF8 (address) and 0xCFC–0xCFF (data), one bus, 32 slots filled
//! in creation order, function 0 only, the OpenBSD host bridge in slot 0.
//!
//! Each device has a 256-byte type-0 configuration space held as plain
//! storage, like vmd's `pd_cfg_space`:
//!
//! - reads of absent devices, other buses or functions, accesses that
//!   straddle the data dword (e.g. a word at 0xCFF), and accesses while
//!   the address register's enable bit is clear read all-ones and drop
//!   writes;
//! - writes are merged at byte granularity into any register (vmd does not
//!   protect the ID registers either), except the status register (0x06),
//!   which is read-only, so a dword write of the command register with
//!   status 0 keeps the capability-list bit; writes to the expansion-ROM
//!   BAR (0x30) are dropped;
//! - BARs (0x10–0x24): a register with no BAR behind it stays 0; writing
//!   0xFFFFFFFF returns the size mask (I/O: 0xFFFFF001 for the 4 KiB BARs,
//!   memory: 0xFFFF0000 for the 64 KiB BARs); other writes keep the
//!   address bits above the size and the type bit, so the guest may move
//!   a BAR and accesses follow it ([`PciIoBars`], [`PciMmioBars`] look the
//!   BARs up at access time, as vmd's `pci_handle_io` does);
//! - capabilities sit in fixed 24-byte slots from 0x40 (vmd's
//!   `struct pci_cap`, sized for virtio's vendor capabilities), chained
//!   through their next pointers, with the capability pointer at 0x34 and
//!   status bit "capabilities list".
//!
//! Interrupts: devices that need one get the next line of
//! {3, 5, 6, 7, 9, 10, 11, 12, 14, 15}, reported as interrupt line (0x3C)
//! with pin INTA (0x3D).  vmd also marks the line level-triggered in the
//! ELCR; [`PciBus::add_device`] returns the line so the caller does that.
//! Devices raise their own line through `IrqLines`, the one assigned when
//! they were added (vmd's `dev->irq`, from `pci_get_dev_irq` at init).
//! The interrupt line and pin registers are read-only, so that they keep
//! telling the guest that line: SeaBIOS's PCI setup, which knows no
//! routing for vmd's host bridge, writes 0xff there, and a guest driver
//! reading the register afterwards would otherwise find no interrupt.
use crate::devices::bus::{
    all_ones, BusError, MmioBus, MmioDevice, PioBus, PioDevice, SharedMmio, SharedPio,
};
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};

pub const PCI_MODE1_ENABLE: u32 = 0x8000_0000;
pub const PCI_MODE1_ADDRESS_REG: u16 = 0x0CF8;
pub const PCI_MODE1_DATA_REG: u16 = 0x0CFC;
/// Ports of the data register ([`PciConfigData`]) from
/// [`PCI_MODE1_DATA_REG`]; the address register ([`PciConfigAddress`]) is
/// the one port 0xCF8, so that 0xCF9 stays free for reset control.
pub const PCI_MODE1_DATA_PORTS: u16 = 4;

pub const PCI_CONFIG_MAX_DEV: usize = 32;
pub const PCI_CONFIG_SPACE_SIZE: usize = 256;
pub const PCI_MAX_BARS: usize = 6;
pub const PCI_MAX_CAPS: usize = 8;
/// Bytes per capability slot (vmd's `struct pci_cap`).
pub const PCI_CAP_SIZE: usize = 24;
/// Configuration-space offset of the first capability slot.
pub const PCI_CAPS_START: u8 = 0x40;

/// ISA lines handed to devices that need an interrupt, in order.
pub const PCI_PIC_IRQS: [u8; 10] = [3, 5, 6, 7, 9, 10, 11, 12, 14, 15];

pub const VM_PCI_IO_BAR_BASE: u16 = 0x1000;
pub const VM_PCI_IO_BAR_END: u16 = 0xFFFF;
pub const VM_PCI_IO_BAR_SIZE: u32 = 0x1000;
pub const VM_PCI_MMIO_BAR_SIZE: u32 = 0x1_0000;
/// Ports to register [`PciIoBars`] at, from [`VM_PCI_IO_BAR_BASE`].
pub const VM_PCI_IO_BAR_PORTS: u16 = VM_PCI_IO_BAR_END - VM_PCI_IO_BAR_BASE + 1;

pub const PCI_VENDOR_OPENBSD: u16 = 0x0b5d;
pub const PCI_PRODUCT_OPENBSD_PCHB: u16 = 0x0666;
pub const PCI_CLASS_BRIDGE: u8 = 0x06;
pub const PCI_SUBCLASS_BRIDGE_HOST: u8 = 0x00;

// Configuration-space offsets.
pub const PCI_ID_REG: u8 = 0x00;
pub const PCI_COMMAND_STATUS_REG: u8 = 0x04;
pub const PCI_CLASS_REG: u8 = 0x08;
pub const PCI_MAPREG_START: u8 = 0x10;
pub const PCI_MAPREG_END: u8 = 0x28;
pub const PCI_SUBSYS_ID_REG: u8 = 0x2C;
pub const PCI_EXROMADDR: u8 = 0x30;
pub const PCI_CAPLISTPTR_REG: u8 = 0x34;
pub const PCI_INTERRUPT_REG: u8 = 0x3C;

/// Status register bit (in the upper half of dword 0x04).
pub const PCI_STATUS_CAPLIST_SUPPORT: u16 = 0x0010;
const PCI_MAPREG_TYPE_IO: u32 = 0x1;
const PCI_MAPREG_IO_ADDR_MASK: u32 = 0xFFFF_FFFC;
const PCI_MAPREG_MEM_ADDR_MASK: u32 = 0xFFFF_FFF0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PciError {
    #[error("too many pci devices")]
    TooManyDevices,
    #[error("no pci interrupt line left")]
    NoIrqLeft,
    #[error("no pci device in slot {0}")]
    NoDevice(u8),
    #[error("too many bars for pci device {0}")]
    TooManyBars(u8),
    #[error("pci {0} bar space exhausted")]
    BarSpaceExhausted(&'static str),
    #[error("too many capabilities for pci device {0}")]
    TooManyCaps(u8),
    #[error("bad pci capability length {0}")]
    BadCapLength(usize),
}

/// What a new device looks like (vmd's `pci_add_device` arguments).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PciDeviceConfig {
    pub vendor: u16,
    pub device: u16,
    pub class: u8,
    pub subclass: u8,
    pub subsys_vendor: u16,
    pub subsys_id: u16,
    pub revision: u8,
    /// Whether the device gets an ISA interrupt line (pin INTA).
    pub irq_needed: bool,
}

/// Where a new device went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciDeviceInfo {
    /// The slot, i.e. the device number on bus 0 (vmd's device id).
    pub slot: u8,
    /// The ISA line assigned, to be set level-triggered in the ELCR.
    pub irq: Option<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PciBarType {
    Io,
    Mmio,
}

/// A BAR as it stands: its current address (as the guest last set it),
/// type and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciBar {
    pub index: u8,
    pub kind: PciBarType,
    pub address: u64,
    pub size: u32,
}

#[derive(Clone)]
/// An I/O BAR the guest moved: its handler and its new base
/// ([`PciBus::config_write`]).
pub struct IoBarMove {
    handler: SharedPio,
    base: Option<u16>,
}

impl IoBarMove {
    /// Tells the handler (call without the bus locked).
    pub fn tell(self) {
        self.handler.lock().unwrap().io_bar_moved(self.base);
    }
}

/// Where an I/O BAR at `address` starts, if all of it decodes through
/// [`PciIoBars`].
fn io_window_port(address: u64) -> Option<u16> {
    let end = address.checked_add(u64::from(VM_PCI_IO_BAR_SIZE))?;
    (address >= u64::from(VM_PCI_IO_BAR_BASE) && end <= u64::from(VM_PCI_IO_BAR_END) + 1)
        .then_some(address as u16)
}

enum BarHandler {
    Io(SharedPio),
    Mmio(SharedMmio),
}

struct Bar {
    kind: PciBarType,
    size: u32,
    handler: BarHandler,
}

struct PciDev {
    cfg: [u8; PCI_CONFIG_SPACE_SIZE],
    bars: Vec<Bar>,
    caps: u8,
}

impl PciDev {
    fn dword(&self, reg: usize) -> u32 {
        let o = reg * 4;
        u32::from_le_bytes(self.cfg[o..o + 4].try_into().unwrap())
    }

    fn set_dword(&mut self, reg: usize, v: u32) {
        let o = reg * 4;
        self.cfg[o..o + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn u16_at(&self, off: u8) -> u16 {
        let o = off as usize;
        u16::from_le_bytes([self.cfg[o], self.cfg[o + 1]])
    }

    fn set_u16(&mut self, off: u8, v: u16) {
        let o = off as usize;
        self.cfg[o..o + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn bar_address(&self, index: usize) -> u64 {
        let v = self.dword(PCI_MAPREG_START as usize / 4 + index);
        match self.bars[index].kind {
            PciBarType::Io => u64::from(v & PCI_MAPREG_IO_ADDR_MASK),
            PciBarType::Mmio => u64::from(v & PCI_MAPREG_MEM_ADDR_MASK),
        }
    }
}

/// The PCI bus with its configuration mechanism (vmd's `struct pci`).
/// Share it in an `Arc<Mutex<_>>` and wrap that in [`PciConfigAddress`],
/// [`PciConfigData`], [`PciIoBars`] and [`PciMmioBars`] for the ports and
/// windows the guest reaches it through.
pub struct PciBus {
    devices: Vec<PciDev>,
    addr_reg: u32,
    next_io_bar: u32,
    mmio_window: RangeInclusive<u64>,
    next_mmio_bar: u64,
    next_pic_irq: usize,
}

impl PciBus {
    /// A bus holding the host bridge in slot 0 (vmd's `pci_init`), whose
    /// memory BARs are allocated from `mmio_window` (the PCI hole of the
    /// VM's memory map).
    pub fn new(mmio_window: RangeInclusive<u64>) -> Self {
        let mut bus = PciBus {
            devices: Vec::new(),
            addr_reg: 0,
            next_io_bar: u32::from(VM_PCI_IO_BAR_BASE),
            next_mmio_bar: *mmio_window.start(),
            mmio_window,
            next_pic_irq: 0,
        };
        bus.add_device(&PciDeviceConfig {
            vendor: PCI_VENDOR_OPENBSD,
            device: PCI_PRODUCT_OPENBSD_PCHB,
            class: PCI_CLASS_BRIDGE,
            subclass: PCI_SUBCLASS_BRIDGE_HOST,
            subsys_vendor: PCI_VENDOR_OPENBSD,
            subsys_id: 0,
            revision: 0,
            irq_needed: false,
        })
        .expect("empty bus takes the host bridge");
        bus
    }

    /// The memory window BARs are allocated from.
    pub fn mmio_window(&self) -> RangeInclusive<u64> {
        self.mmio_window.clone()
    }

    /// Adds a device in the next slot; with `irq_needed`, assigns it the
    /// next interrupt line, which the caller must mark level-triggered in
    /// the ELCR.
    pub fn add_device(&mut self, c: &PciDeviceConfig) -> Result<PciDeviceInfo, PciError> {
        if self.devices.len() >= PCI_CONFIG_MAX_DEV {
            return Err(PciError::TooManyDevices);
        }
        if c.irq_needed && self.next_pic_irq >= PCI_PIC_IRQS.len() {
            return Err(PciError::NoIrqLeft);
        }
        let mut d = PciDev {
            cfg: [0; PCI_CONFIG_SPACE_SIZE],
            bars: Vec::new(),
            caps: 0,
        };
        d.set_u16(0x00, c.vendor);
        d.set_u16(0x02, c.device);
        d.cfg[0x08] = c.revision;
        d.cfg[0x0A] = c.subclass;
        d.cfg[0x0B] = c.class;
        d.set_u16(0x2C, c.subsys_vendor);
        d.set_u16(0x2E, c.subsys_id);
        let irq = if c.irq_needed {
            let irq = PCI_PIC_IRQS[self.next_pic_irq];
            self.next_pic_irq += 1;
            d.cfg[PCI_INTERRUPT_REG as usize] = irq;
            d.cfg[PCI_INTERRUPT_REG as usize + 1] = 1; // INTA
            Some(irq)
        } else {
            None
        };
        let slot = self.devices.len() as u8;
        self.devices.push(d);
        Ok(PciDeviceInfo { slot, irq })
    }

    fn dev_mut(&mut self, slot: u8) -> Result<&mut PciDev, PciError> {
        self.devices
            .get_mut(slot as usize)
            .ok_or(PciError::NoDevice(slot))
    }

    fn add_bar(&mut self, slot: u8, handler: BarHandler) -> Result<PciBar, PciError> {
        let (next_io, next_mmio) = (self.next_io_bar, self.next_mmio_bar);
        let d = self
            .devices
            .get_mut(slot as usize)
            .ok_or(PciError::NoDevice(slot))?;
        let index = d.bars.len();
        if index >= PCI_MAX_BARS {
            return Err(PciError::TooManyBars(slot));
        }
        let reg = PCI_MAPREG_START as usize / 4 + index;
        let bar = match handler {
            BarHandler::Io(_) => {
                if next_io >= u32::from(VM_PCI_IO_BAR_END) {
                    return Err(PciError::BarSpaceExhausted("i/o"));
                }
                d.set_dword(
                    reg,
                    (next_io & PCI_MAPREG_IO_ADDR_MASK) | PCI_MAPREG_TYPE_IO,
                );
                self.next_io_bar = next_io + VM_PCI_IO_BAR_SIZE;
                PciBar {
                    index: index as u8,
                    kind: PciBarType::Io,
                    address: u64::from(next_io),
                    size: VM_PCI_IO_BAR_SIZE,
                }
            }
            BarHandler::Mmio(_) => {
                if next_mmio >= *self.mmio_window.end() {
                    return Err(PciError::BarSpaceExhausted("memory"));
                }
                d.set_dword(reg, next_mmio as u32 & PCI_MAPREG_MEM_ADDR_MASK);
                self.next_mmio_bar = next_mmio + u64::from(VM_PCI_MMIO_BAR_SIZE);
                PciBar {
                    index: index as u8,
                    kind: PciBarType::Mmio,
                    address: next_mmio,
                    size: VM_PCI_MMIO_BAR_SIZE,
                }
            }
        };
        if let BarHandler::Io(h) = &handler {
            h.lock().unwrap().io_bar_moved(io_window_port(bar.address));
        }
        d.bars.push(Bar {
            kind: bar.kind,
            size: bar.size,
            handler,
        });
        Ok(bar)
    }

    /// Gives the device in `slot` its next BAR: 4 KiB of I/O space from
    /// the next free 0x1000 boundary at or above 0x1000, served by
    /// `handler` with offsets relative to the BAR.
    pub fn add_io_bar(&mut self, slot: u8, handler: SharedPio) -> Result<PciBar, PciError> {
        self.add_bar(slot, BarHandler::Io(handler))
    }

    /// Gives the device in `slot` its next BAR: 64 KiB of 32-bit memory
    /// space from the next free block at or above 0xF0000000.
    pub fn add_mmio_bar(&mut self, slot: u8, handler: SharedMmio) -> Result<PciBar, PciError> {
        self.add_bar(slot, BarHandler::Mmio(handler))
    }

    /// Appends a capability (`cap[0]` its ID, `cap[1]` overwritten with
    /// the next pointer, the rest its body; at most 24 bytes) and returns
    /// its configuration-space offset.
    pub fn add_capability(&mut self, slot: u8, cap: &[u8]) -> Result<u8, PciError> {
        if cap.len() < 2 || cap.len() > PCI_CAP_SIZE {
            return Err(PciError::BadCapLength(cap.len()));
        }
        let d = self.dev_mut(slot)?;
        if d.caps as usize >= PCI_MAX_CAPS {
            return Err(PciError::TooManyCaps(slot));
        }
        let off = PCI_CAPS_START as usize + d.caps as usize * PCI_CAP_SIZE;
        d.cfg[off..off + PCI_CAP_SIZE].fill(0);
        d.cfg[off..off + cap.len()].copy_from_slice(cap);
        d.cfg[off + 1] = 0;
        if d.caps > 0 {
            d.cfg[off - PCI_CAP_SIZE + 1] = off as u8;
        }
        d.caps += 1;
        d.cfg[PCI_CAPLISTPTR_REG as usize] = PCI_CAPS_START;
        let status = d.u16_at(0x06) | PCI_STATUS_CAPLIST_SUPPORT;
        d.set_u16(0x06, status);
        Ok(off as u8)
    }

    /// Number of devices, the host bridge included.
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// The interrupt line of the device in `slot` as its line register
    /// now reads (vmd's `pci_get_dev_irq`), or None if it has no pin.
    pub fn device_irq(&self, slot: u8) -> Option<u8> {
        let d = self.devices.get(slot as usize)?;
        (d.cfg[PCI_INTERRUPT_REG as usize + 1] != 0).then_some(d.cfg[PCI_INTERRUPT_REG as usize])
    }

    /// The subsystem ID of the device in `slot` (vmd's `pci_get_subsys_id`).
    pub fn subsys_id(&self, slot: u8) -> Option<u16> {
        Some(self.devices.get(slot as usize)?.u16_at(0x2E))
    }

    /// The slot of the first device with subsystem ID `subsys_id` (vmd's
    /// `pci_find_first_device`, e.g. VIRTIO_BLOCK for the boot order).
    pub fn find_first_device(&self, subsys_id: u16) -> Option<u8> {
        self.devices
            .iter()
            .position(|d| d.u16_at(0x2E) == subsys_id)
            .map(|i| i as u8)
    }

    /// BAR `index` of the device in `slot`, at its current address.
    pub fn bar(&self, slot: u8, index: u8) -> Option<PciBar> {
        let d = self.devices.get(slot as usize)?;
        let b = d.bars.get(index as usize)?;
        Some(PciBar {
            index,
            kind: b.kind,
            address: d.bar_address(index as usize),
            size: b.size,
        })
    }

    /// A configuration read of `size` bytes at `offset` of the device in
    /// `slot`, as through the data port; all-ones where the data port
    /// would return them, and for a size other than 1, 2 or 4 (ignored,
    /// as `config_write` ignores it).
    pub fn config_read(&self, slot: u8, offset: u8, size: u8) -> u32 {
        let ofs = offset & 3;
        match self.devices.get(slot as usize) {
            Some(d) if matches!(size, 1 | 2 | 4) && ofs + size <= 4 => {
                let v = d.dword(offset as usize / 4) >> (ofs * 8);
                v & all_ones(size)
            }
            _ => all_ones(size),
        }
    }

    /// A configuration write, as through the data port.
    /// A write to configuration space.  When it moves an I/O BAR, the
    /// BAR's handler and where it is now, for the caller to tell it
    /// ([`PioDevice::io_bar_moved`]) once it has let go of the bus: a
    /// device may call back into the bus.
    #[must_use = "an I/O BAR's handler must hear that its BAR moved"]
    pub fn config_write(
        &mut self,
        slot: u8,
        offset: u8,
        size: u8,
        value: u32,
    ) -> Option<IoBarMove> {
        let ofs = offset & 3;
        if !matches!(size, 1 | 2 | 4) || ofs + size > 4 {
            return None;
        }
        let reg = offset / 4;
        if reg * 4 == PCI_EXROMADDR {
            return None;
        }
        let d = self.devices.get_mut(slot as usize)?;
        let old = d.dword(reg as usize);
        let mask = if size == 4 {
            u32::MAX
        } else {
            ((1u32 << (size * 8)) - 1) << (ofs * 8)
        };
        let mut val = (old & !mask) | ((value << (ofs * 8)) & mask);
        if reg * 4 == PCI_INTERRUPT_REG {
            // Line and pin: the device's wiring, not the guest's to move.
            val = (val & 0xffff_0000) | (old & 0xffff);
        }
        if reg * 4 == PCI_COMMAND_STATUS_REG {
            // The status half is read-only: its only bit set here,
            // "capabilities list", is hard-wired, and a driver that
            // writes the command register as a dword with status 0 (to
            // leave RW1C bits alone) must not lose the capability list.
            val = (val & 0xffff) | (old & 0xffff_0000);
        }
        if (PCI_MAPREG_START..PCI_MAPREG_END).contains(&(reg * 4)) {
            let idx = (reg * 4 - PCI_MAPREG_START) as usize / 4;
            val = match d.bars.get(idx) {
                None => 0,
                Some(b) if size == 4 && value == u32::MAX => {
                    let sizing = !(b.size - 1);
                    match b.kind {
                        PciBarType::Io => (sizing & PCI_MAPREG_IO_ADDR_MASK) | PCI_MAPREG_TYPE_IO,
                        PciBarType::Mmio => sizing & PCI_MAPREG_MEM_ADDR_MASK,
                    }
                }
                Some(b) => match b.kind {
                    PciBarType::Io => (val & !(b.size - 1)) | PCI_MAPREG_TYPE_IO,
                    PciBarType::Mmio => val & !(b.size - 1) & PCI_MAPREG_MEM_ADDR_MASK,
                },
            };
        }
        d.set_dword(reg as usize, val);
        let idx = (reg as usize).checked_sub(PCI_MAPREG_START as usize / 4)?;
        match d.bars.get(idx) {
            Some(Bar {
                handler: BarHandler::Io(h),
                ..
            }) if val != old => Some(IoBarMove {
                handler: h.clone(),
                base: io_window_port(u64::from(val & PCI_MAPREG_IO_ADDR_MASK)),
            }),
            _ => None,
        }
    }

    /// The address register's target, if the data port may use it:
    /// enabled, bus 0, function 0, an existing device.
    fn target(&self) -> Option<(u8, u8)> {
        let a = self.addr_reg;
        if a & PCI_MODE1_ENABLE == 0 {
            log::warn!("invalid address register during pci read: 0x{a:x}");
            return None;
        }
        let bus = (a >> 16) & 0xff;
        let dev = ((a >> 11) & 0x1f) as u8;
        let func = (a >> 8) & 0x7;
        let reg = (a & 0xfc) as u8;
        (bus == 0 && func == 0 && (dev as usize) < self.devices.len()).then_some((dev, reg))
    }

    /// The I/O BAR handler claiming `port` and the offset into it.
    fn find_io(&self, port: u16) -> Option<(SharedPio, u16)> {
        let port = u32::from(port);
        for d in &self.devices {
            for (i, b) in d.bars.iter().enumerate() {
                if let BarHandler::Io(h) = &b.handler {
                    let base = d.bar_address(i) as u32;
                    if port >= base && port - base < VM_PCI_IO_BAR_SIZE {
                        return Some((h.clone(), (port - base) as u16));
                    }
                }
            }
        }
        None
    }

    /// The memory BAR handler claiming `gpa` and the offset into it.
    fn find_mmio(&self, gpa: u64) -> Option<(SharedMmio, u64)> {
        for d in &self.devices {
            for (i, b) in d.bars.iter().enumerate() {
                if let BarHandler::Mmio(h) = &b.handler {
                    let base = d.bar_address(i);
                    if gpa >= base && gpa - base < u64::from(b.size) {
                        return Some((h.clone(), gpa - base));
                    }
                }
            }
        }
        None
    }
}

/// Merges a `size`-byte write into a register as vmd's `get_input_data`.
fn merge_input(reg: u32, size: u8, value: u32) -> u32 {
    match size {
        1 => (reg & 0xFFFF_FF00) | (value & 0xFF),
        2 => (reg & 0xFFFF_0000) | (value & 0xFFFF),
        _ => value,
    }
}

/// Puts `bus` where the guest reaches it: the configuration address
/// (0xCF8) and data (0xCFC–0xCFF) registers, the I/O BAR window from
/// 0x1000 and the memory BAR window.
pub fn attach(
    pio: &mut PioBus,
    mmio: &mut MmioBus,
    bus: &Arc<Mutex<PciBus>>,
) -> Result<(), BusError> {
    let window = bus.lock().unwrap().mmio_window();
    pio.register(
        PCI_MODE1_ADDRESS_REG,
        1,
        Arc::new(Mutex::new(PciConfigAddress(bus.clone()))),
    )?;
    pio.register(
        PCI_MODE1_DATA_REG,
        PCI_MODE1_DATA_PORTS,
        Arc::new(Mutex::new(PciConfigData(bus.clone()))),
    )?;
    pio.register(
        VM_PCI_IO_BAR_BASE,
        VM_PCI_IO_BAR_PORTS,
        Arc::new(Mutex::new(PciIoBars::new(bus.clone()))),
    )?;
    mmio.register(
        *window.start(),
        window.end() - window.start() + 1,
        Arc::new(Mutex::new(PciMmioBars::new(bus.clone()))),
    )
}

/// The configuration address register, port 0xCF8 (vmd's
/// `pci_handle_address_reg`).
pub struct PciConfigAddress(pub Arc<Mutex<PciBus>>);

impl PioDevice for PciConfigAddress {
    fn pio_read(&mut self, _offset: u16, size: u8) -> u32 {
        self.0.lock().unwrap().addr_reg & all_ones(size)
    }

    fn pio_write(&mut self, _offset: u16, size: u8, value: u32) {
        let mut bus = self.0.lock().unwrap();
        bus.addr_reg = merge_input(bus.addr_reg, size, value);
    }
}

/// The configuration data register, ports 0xCFC–0xCFF (vmd's
/// `pci_handle_data_reg`): the register the address register selects,
/// plus the byte offset into the data port.
pub struct PciConfigData(pub Arc<Mutex<PciBus>>);

impl PioDevice for PciConfigData {
    fn pio_read(&mut self, offset: u16, size: u8) -> u32 {
        let bus = self.0.lock().unwrap();
        match bus.target() {
            Some((dev, reg)) => bus.config_read(dev, reg + (offset & 3) as u8, size),
            None => all_ones(size),
        }
    }

    fn pio_write(&mut self, offset: u16, size: u8, value: u32) {
        let moved = {
            let mut bus = self.0.lock().unwrap();
            let Some((dev, reg)) = bus.target() else {
                return;
            };
            bus.config_write(dev, reg + (offset & 3) as u8, size, value)
        };
        if let Some(m) = moved {
            m.tell();
        }
    }
}

/// The I/O BAR window (vmd's `pci_handle_io`): register at
/// [`VM_PCI_IO_BAR_BASE`] for [`VM_PCI_IO_BAR_PORTS`] ports.  Accesses go to
/// the BAR that now covers the port; unclaimed ports read all-ones.
pub struct PciIoBars {
    bus: Arc<Mutex<PciBus>>,
}

impl PciIoBars {
    pub fn new(bus: Arc<Mutex<PciBus>>) -> Self {
        PciIoBars { bus }
    }

    fn lookup(&self, offset: u16) -> Option<(SharedPio, u16)> {
        let port = VM_PCI_IO_BAR_BASE.checked_add(offset)?;
        // The bus lock is released before the device is entered, so that
        // device code may call back into the bus.
        self.bus.lock().unwrap().find_io(port)
    }
}

impl PioDevice for PciIoBars {
    fn pio_read(&mut self, offset: u16, size: u8) -> u32 {
        match self.lookup(offset) {
            Some((h, off)) => h.lock().unwrap().pio_read(off, size),
            None => all_ones(size),
        }
    }

    fn pio_write(&mut self, offset: u16, size: u8, value: u32) {
        if let Some((h, off)) = self.lookup(offset) {
            h.lock().unwrap().pio_write(off, size, value);
        }
    }
}

/// The memory BAR window (vmd's `pci_handle_mmio`): register at
/// the start of the bus's memory window, for the whole window.  Unclaimed reads
/// return all-ones.
pub struct PciMmioBars {
    bus: Arc<Mutex<PciBus>>,
}

impl PciMmioBars {
    pub fn new(bus: Arc<Mutex<PciBus>>) -> Self {
        PciMmioBars { bus }
    }

    fn lookup(&self, offset: u64) -> Option<(SharedMmio, u64)> {
        let bus = self.bus.lock().unwrap();
        let gpa = bus.mmio_window.start().checked_add(offset)?;
        bus.find_mmio(gpa)
    }
}

impl MmioDevice for PciMmioBars {
    fn mmio_read(&mut self, offset: u64, size: u8) -> u64 {
        match self.lookup(offset) {
            Some((h, off)) => h.lock().unwrap().mmio_read(off, size),
            None => u64::MAX,
        }
    }

    fn mmio_write(&mut self, offset: u64, size: u8, value: u64) {
        if let Some((h, off)) = self.lookup(offset) {
            h.lock().unwrap().mmio_write(off, size, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDR: u16 = PCI_MODE1_ADDRESS_REG;
    const DATA: u16 = PCI_MODE1_DATA_REG;

    fn cfg_addr(dev: u32, reg: u32) -> u32 {
        PCI_MODE1_ENABLE | dev << 11 | reg
    }

    fn virtio_blk() -> PciDeviceConfig {
        PciDeviceConfig {
            vendor: 0x1af4,
            device: 0x1042,
            class: 0x01,
            subclass: 0x00,
            subsys_vendor: PCI_VENDOR_OPENBSD,
            subsys_id: 2,
            revision: 1,
            irq_needed: true,
        }
    }

    /// The PCI hole of vmd's memory map (reference §4.1).
    const PCI_MMIO_BAR_BASE: u64 = 0xF000_0000;
    const WINDOW: RangeInclusive<u64> = PCI_MMIO_BAR_BASE..=0xFFDF_FFFF;

    fn machine() -> (Arc<Mutex<PciBus>>, PioBus, MmioBus) {
        let pci = Arc::new(Mutex::new(PciBus::new(WINDOW)));
        let mut pio = PioBus::new();
        let mut mmio = MmioBus::new();
        attach(&mut pio, &mut mmio, &pci).unwrap();
        (pci, pio, mmio)
    }

    fn cfg_read(pio: &PioBus, dev: u32, reg: u32) -> u32 {
        pio.write(ADDR, 4, cfg_addr(dev, reg));
        pio.read(DATA, 4)
    }

    fn cfg_write(pio: &PioBus, dev: u32, reg: u32, v: u32) {
        pio.write(ADDR, 4, cfg_addr(dev, reg));
        pio.write(DATA, 4, v);
    }

    /// A BAR handler that remembers the last access.
    #[derive(Default)]
    struct Probe {
        last: Option<(u64, u8, u64)>,
        /// What io_bar_moved said, in order.
        moves: Vec<Option<u16>>,
    }
    impl PioDevice for Probe {
        fn pio_read(&mut self, offset: u16, _size: u8) -> u32 {
            0xab00 | u32::from(offset)
        }
        fn pio_write(&mut self, offset: u16, size: u8, value: u32) {
            self.last = Some((u64::from(offset), size, u64::from(value)));
        }
        fn io_bar_moved(&mut self, base: Option<u16>) {
            self.moves.push(base);
        }
    }
    impl MmioDevice for Probe {
        fn mmio_read(&mut self, offset: u64, _size: u8) -> u64 {
            0xcd_0000 | offset
        }
        fn mmio_write(&mut self, offset: u64, size: u8, value: u64) {
            self.last = Some((offset, size, value));
        }
    }

    #[test]
    fn host_bridge_through_the_ports() {
        let (_, pio, _) = machine();
        assert_eq!(cfg_read(&pio, 0, 0x00), 0x0666_0b5d);
        assert_eq!(cfg_read(&pio, 0, 0x08), 0x0600_0000);
        assert_eq!(cfg_read(&pio, 0, 0x2C), 0x0000_0b5d);
        assert_eq!(cfg_read(&pio, 0, 0x3C), 0);
        assert_eq!(pio.read(ADDR, 4), cfg_addr(0, 0x3C));
    }

    #[test]
    fn byte_and_word_reads_at_data_port_offsets() {
        let (_, pio, _) = machine();
        pio.write(ADDR, 4, cfg_addr(0, 0));
        assert_eq!(pio.read(DATA, 1), 0x5d);
        assert_eq!(pio.read(DATA + 1, 1), 0x0b);
        assert_eq!(pio.read(DATA + 2, 2), 0x0666);
        assert_eq!(pio.read(DATA + 3, 1), 0x06);
        assert_eq!(pio.read(DATA, 2), 0x0b5d);
        // Straddling the dword reads all-ones.
        assert_eq!(pio.read(DATA + 3, 2), 0xffff);
        assert_eq!(pio.read(DATA + 2, 4), 0xffff_ffff);
        // So do sizes the bus never issues, however large.
        assert_eq!(pio.read(DATA + 3, 255), 0xffff_ffff);
        assert_eq!(pio.read(DATA, 3), 0xffff_ffff);
        // 0xCF9–0xCFB are not part of the mechanism.
        assert_eq!(pio.read(ADDR + 1, 1), 0xff);
    }

    #[test]
    fn absent_devices_read_all_ones() {
        let (_, pio, _) = machine();
        assert_eq!(cfg_read(&pio, 1, 0), 0xffff_ffff);
        assert_eq!(cfg_read(&pio, 31, 0), 0xffff_ffff);
        // Other buses and functions.
        pio.write(ADDR, 4, PCI_MODE1_ENABLE | 1 << 16);
        assert_eq!(pio.read(DATA, 4), 0xffff_ffff);
        pio.write(ADDR, 4, PCI_MODE1_ENABLE | 1 << 8);
        assert_eq!(pio.read(DATA, 4), 0xffff_ffff);
        assert_eq!(pio.read(DATA, 2), 0xffff);
        // Enable bit clear.
        pio.write(ADDR, 4, 0);
        assert_eq!(pio.read(DATA, 4), 0xffff_ffff);
        assert_eq!(pio.read(DATA + 1, 1), 0xff);
    }

    #[test]
    fn address_register_takes_partial_writes() {
        let (_, pio, _) = machine();
        pio.write(ADDR, 4, 0x8000_1234);
        pio.write(ADDR, 1, 0x78);
        assert_eq!(pio.read(ADDR, 4), 0x8000_1278);
        pio.write(ADDR, 2, 0xabcd);
        assert_eq!(pio.read(ADDR, 4), 0x8000_abcd);
        assert_eq!(pio.read(ADDR, 2), 0xabcd);
    }

    #[test]
    fn devices_fill_slots_and_irqs_in_order() {
        let mut bus = PciBus::new(WINDOW);
        let rng = bus
            .add_device(&PciDeviceConfig {
                subsys_id: 4,
                ..virtio_blk()
            })
            .unwrap();
        assert_eq!(
            rng,
            PciDeviceInfo {
                slot: 1,
                irq: Some(3)
            }
        );
        let quiet = bus
            .add_device(&PciDeviceConfig {
                irq_needed: false,
                subsys_id: 9,
                ..virtio_blk()
            })
            .unwrap();
        assert_eq!(quiet, PciDeviceInfo { slot: 2, irq: None });
        let mut irqs = vec![3];
        for _ in 1..PCI_PIC_IRQS.len() {
            irqs.push(bus.add_device(&virtio_blk()).unwrap().irq.unwrap());
        }
        assert_eq!(irqs, PCI_PIC_IRQS);
        assert_eq!(bus.add_device(&virtio_blk()), Err(PciError::NoIrqLeft));
        // Devices without an interrupt still fit.
        let no_irq = PciDeviceConfig {
            irq_needed: false,
            ..virtio_blk()
        };
        while bus.device_count() < PCI_CONFIG_MAX_DEV {
            bus.add_device(&no_irq).unwrap();
        }
        assert_eq!(bus.add_device(&no_irq), Err(PciError::TooManyDevices));

        assert_eq!(bus.config_read(1, PCI_INTERRUPT_REG, 4), 0x0000_0103);
        assert_eq!(bus.config_read(2, PCI_INTERRUPT_REG, 4), 0);
        assert_eq!(bus.device_irq(1), Some(3));
        assert_eq!(bus.device_irq(2), None);
        assert_eq!(bus.device_irq(0), None);
        assert_eq!(bus.find_first_device(2), Some(3));
        assert_eq!(bus.find_first_device(9), Some(2));
        assert_eq!(bus.find_first_device(0x77), None);
        assert_eq!(bus.subsys_id(1), Some(4));
        assert_eq!(bus.config_read(1, PCI_CLASS_REG, 4), 0x0100_0001);
    }

    #[test]
    fn interrupt_line_and_pin_are_read_only() {
        let mut bus = PciBus::new(WINDOW);
        let d = bus.add_device(&virtio_blk()).unwrap();
        // What SeaBIOS writes for a host bridge it has no routing for.
        assert!(bus
            .config_write(d.slot, PCI_INTERRUPT_REG, 1, 0xff)
            .is_none());
        assert!(bus
            .config_write(d.slot, PCI_INTERRUPT_REG + 1, 1, 0)
            .is_none());
        assert!(bus
            .config_write(d.slot, PCI_INTERRUPT_REG, 4, 0x1234_020b)
            .is_none());
        assert_eq!(bus.device_irq(d.slot), Some(3));
        assert_eq!(bus.config_read(d.slot, PCI_INTERRUPT_REG, 4), 0x1234_0103);
    }

    #[test]
    fn bar_allocation_sizing_and_relocation() {
        let (pci, pio, mmio) = machine();
        let probe = Arc::new(Mutex::new(Probe::default()));
        let (io0, io1, mem) = {
            let mut bus = pci.lock().unwrap();
            let a = bus.add_device(&virtio_blk()).unwrap().slot;
            let b = bus.add_device(&virtio_blk()).unwrap().slot;
            let io0 = bus.add_io_bar(a, probe.clone()).unwrap();
            let io1 = bus.add_io_bar(b, probe.clone()).unwrap();
            let mem = bus.add_mmio_bar(a, probe.clone()).unwrap();
            (io0, io1, mem)
        };
        assert_eq!((io0.address, io0.index, io0.size), (0x1000, 0, 0x1000));
        assert_eq!((io1.address, io1.index), (0x2000, 0));
        assert_eq!(
            (mem.address, mem.index, mem.size),
            (0xF000_0000, 1, 0x1_0000)
        );
        assert_eq!(cfg_read(&pio, 1, 0x10), 0x1001);
        assert_eq!(cfg_read(&pio, 2, 0x10), 0x2001);
        assert_eq!(cfg_read(&pio, 1, 0x14), 0xF000_0000);

        // Sizing.
        cfg_write(&pio, 1, 0x10, 0xffff_ffff);
        assert_eq!(cfg_read(&pio, 1, 0x10), 0xffff_f001);
        cfg_write(&pio, 1, 0x14, 0xffff_ffff);
        assert_eq!(cfg_read(&pio, 1, 0x14), 0xffff_0000);
        // No BAR behind the register: stays 0.
        cfg_write(&pio, 1, 0x18, 0xffff_ffff);
        assert_eq!(cfg_read(&pio, 1, 0x18), 0);
        cfg_write(&pio, 1, 0x24, 0x1234_5678);
        assert_eq!(cfg_read(&pio, 1, 0x24), 0);

        // Restore and relocate: low bits are masked, the type bit kept.
        cfg_write(&pio, 1, 0x10, 0x3456);
        assert_eq!(cfg_read(&pio, 1, 0x10), 0x3001);
        cfg_write(&pio, 1, 0x14, 0xF012_3456);
        assert_eq!(cfg_read(&pio, 1, 0x14), 0xF012_0000);
        let bar = pci.lock().unwrap().bar(1, 0).unwrap();
        assert_eq!((bar.kind, bar.address), (PciBarType::Io, 0x3000));

        // The I/O BAR's handler heard each move: placed at 0x1000 and
        // 0x2000, out of the window while sized, then at 0x3000.  Moving
        // the memory BAR told it nothing.
        assert_eq!(
            probe.lock().unwrap().moves,
            [Some(0x1000), Some(0x2000), None, Some(0x3000)]
        );
        // Rewriting the same base is no move; the window's last page
        // decodes, a page below the window does not.
        cfg_write(&pio, 1, 0x10, 0x3001);
        cfg_write(&pio, 1, 0x10, 0xf001);
        cfg_write(&pio, 1, 0x10, 0x0801);
        cfg_write(&pio, 1, 0x10, 0x3001);
        assert_eq!(
            probe.lock().unwrap().moves[4..],
            [Some(0xf000), None, Some(0x3000)]
        );

        // Accesses follow the BARs.
        assert_eq!(pio.read(0x3004, 2), 0xab04);
        assert_eq!(pio.read(0x1004, 2), 0xffff);
        assert_eq!(pio.read(0x2ffe, 1), 0xab00 | 0xffe);
        pio.write(0x3010, 4, 0xdead_beef);
        assert_eq!(probe.lock().unwrap().last, Some((0x10, 4, 0xdead_beef)));
        assert_eq!(mmio.read(0xF012_0008, 4), Some(0xcd_0008));
        assert_eq!(mmio.read(0xF000_0008, 4), Some(u64::MAX));
        assert!(mmio.write(0xF012_FFF8, 8, 7));
        assert_eq!(probe.lock().unwrap().last, Some((0xfff8, 8, 7)));
    }

    #[test]
    fn bar_space_and_count_limits() {
        let mut bus = PciBus::new(WINDOW);
        let slot = bus.add_device(&virtio_blk()).unwrap().slot;
        let p = || Arc::new(Mutex::new(Probe::default()));
        for i in 0..PCI_MAX_BARS {
            assert_eq!(bus.add_io_bar(slot, p()).unwrap().index as usize, i);
        }
        assert_eq!(bus.add_io_bar(slot, p()), Err(PciError::TooManyBars(slot)));
        assert_eq!(bus.add_io_bar(9, p()), Err(PciError::NoDevice(9)));
        // 0x1000..=0xF000 hold 15 I/O BARs.
        let mut n = PCI_MAX_BARS;
        loop {
            let s = bus
                .add_device(&PciDeviceConfig {
                    irq_needed: false,
                    ..virtio_blk()
                })
                .unwrap()
                .slot;
            match bus.add_io_bar(s, p()) {
                Ok(b) => {
                    n += 1;
                    assert_eq!(b.address, n as u64 * 0x1000);
                }
                Err(e) => {
                    assert_eq!(e, PciError::BarSpaceExhausted("i/o"));
                    break;
                }
            }
        }
        assert_eq!(n, 15);
    }

    #[test]
    fn command_status_and_writes_merge_by_byte() {
        let (pci, pio, _) = machine();
        pci.lock().unwrap().add_device(&virtio_blk()).unwrap();
        pio.write(ADDR, 4, cfg_addr(1, 0x04));
        pio.write(DATA, 2, 0x0007);
        assert_eq!(pio.read(DATA, 4), 0x0000_0007);
        pio.write(DATA + 1, 1, 0x04);
        assert_eq!(pio.read(DATA, 4), 0x0000_0407);
        // The status half is read-only.
        pio.write(DATA + 2, 2, 0x0010);
        assert_eq!(pio.read(DATA, 4), 0x0000_0407);
        // The expansion ROM BAR ignores writes.
        cfg_write(&pio, 1, 0x30, 0xffff_ffff);
        assert_eq!(cfg_read(&pio, 1, 0x30), 0);
        // Writes to absent devices go nowhere.
        cfg_write(&pio, 5, 0x04, 0xffff_ffff);
        assert_eq!(cfg_read(&pio, 5, 0x04), 0xffff_ffff);
    }

    #[test]
    fn capability_list() {
        let mut bus = PciBus::new(WINDOW);
        let slot = bus.add_device(&virtio_blk()).unwrap().slot;
        assert_eq!(bus.config_read(slot, 0x06, 2) & 0x10, 0);
        let common = [0x09, 0xee, 16, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0x38, 0, 0, 0];
        let notify = [
            0x09, 0, 20, 2, 0, 0, 0, 0, 0, 1, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(bus.add_capability(slot, &common), Ok(0x40));
        assert_eq!(bus.add_capability(slot, &notify), Ok(0x58));
        assert_eq!(bus.config_read(slot, 0x06, 2) & 0x10, 0x10);
        assert_eq!(bus.config_read(slot, PCI_CAPLISTPTR_REG, 1), 0x40);
        // Enabling the device with a dword write that has status 0 (as a
        // driver does to leave RW1C bits alone) keeps the list.
        assert!(bus
            .config_write(slot, PCI_COMMAND_STATUS_REG, 4, 0x0000_0007)
            .is_none());
        assert_eq!(
            bus.config_read(slot, PCI_COMMAND_STATUS_REG, 4),
            0x0010_0007
        );
        assert!(bus.config_write(slot, 0x06, 2, 0).is_none());
        assert_eq!(bus.config_read(slot, 0x06, 2), 0x0010);
        // Walk the list as a guest does.
        let mut ptr = bus.config_read(slot, PCI_CAPLISTPTR_REG, 1) as u8;
        let mut seen = vec![];
        while ptr != 0 {
            seen.push((ptr, bus.config_read(slot, ptr + 3, 1)));
            ptr = bus.config_read(slot, ptr + 1, 1) as u8;
        }
        assert_eq!(seen, vec![(0x40, 1), (0x58, 2)]);
        assert_eq!(bus.config_read(slot, 0x40 + 12, 4), 0x38);
        assert_eq!(bus.config_read(slot, 0x58 + 8, 4), 0x100);
        assert_eq!(bus.config_read(slot, 0x58 + 12, 4), 4);
        assert_eq!(bus.config_read(slot, 0x58 + 16, 4), 0);
        assert_eq!(
            bus.add_capability(slot, &[0; 25]),
            Err(PciError::BadCapLength(25))
        );
        for _ in 2..PCI_MAX_CAPS {
            bus.add_capability(slot, &[0x09, 0, 4, 0]).unwrap();
        }
        assert_eq!(
            bus.add_capability(slot, &[0x09, 0]),
            Err(PciError::TooManyCaps(slot))
        );
        assert_eq!(
            bus.config_read(slot, 0x40 + 7 * 24 + 1, 1),
            0,
            "last cap ends the list"
        );
    }
}
