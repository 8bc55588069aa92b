//! The virtio 1.x PCI transport as vmd lays it out in one 4 KiB I/O BAR:
//! `struct virtio_pci_common_cfg` at 0x000, the notify register at 0x100
//! (notify_off_multiplier 0: every queue is notified by writing its index
//! there), the ISR at 0x200 and the device configuration at 0x300.
//!
//! [`VirtioPci`] holds the registers, the feature negotiation, the device
//! status and the queues, and raises the device's ISA line (level: up
//! while the ISR is non-zero, down when the driver reads the ISR or
//! resets the device).  What differs per device comes from a
//! [`VirtioDevice`].  A queue the driver corrupts (see
//! [`super::queue`]) puts the device in DEVICE_NEEDS_RESET with a
//! configuration-change interrupt; the device then ignores its queues
//! until the driver resets it (status 0).
use super::queue::{QueueError, VirtQueue};
use super::*;
use crate::devices::bus::{all_ones, PioDevice};
use crate::devices::irq::IrqLines;
use crate::devices::pci::{PciBus, PciDeviceConfig, PciError};
use crate::vm::guest_memory::VmMemory;
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex};
use vm_memory::GuestMemoryMmap;

// Offsets in struct virtio_pci_common_cfg.
const DEVICE_FEATURE_SELECT: u16 = 0x00;
const DEVICE_FEATURE: u16 = 0x04;
const DRIVER_FEATURE_SELECT: u16 = 0x08;
const DRIVER_FEATURE: u16 = 0x0c;
const CONFIG_MSIX_VECTOR: u16 = 0x10;
const NUM_QUEUES: u16 = 0x12;
const DEVICE_STATUS: u16 = 0x14;
const CONFIG_GENERATION: u16 = 0x15;
const QUEUE_SELECT: u16 = 0x16;
const QUEUE_SIZE: u16 = 0x18;
const QUEUE_MSIX_VECTOR: u16 = 0x1a;
const QUEUE_ENABLE: u16 = 0x1c;
const QUEUE_NOTIFY_OFF: u16 = 0x1e;
const QUEUE_DESC: u16 = 0x20;
const QUEUE_AVAIL: u16 = 0x28;
const QUEUE_USED: u16 = 0x30;

/// What a device adds to the transport.
pub trait VirtioDevice: Send {
    /// Name for log lines (`viornd`, `vioblk`).
    fn name(&self) -> &'static str;
    /// Feature bits offered, VIRTIO_F_VERSION_1 included.
    fn device_features(&self) -> u64;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// The most bytes one chain may carry before it counts as hostile.
    fn max_chain_bytes(&self) -> u64;
    /// Length of the device configuration (0: no DEVICE_CFG capability).
    fn config_len(&self) -> u32 {
        0
    }
    /// One byte of the device configuration.
    fn read_config(&self, _offset: u32) -> u8 {
        0xff
    }
    /// A driver write to one byte of the device configuration.
    fn write_config(&mut self, _offset: u32, _value: u8) {}
    /// Handles what the driver made available on queue `index`; returns
    /// whether any chain went to the used ring.
    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut VirtQueue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, QueueError>;
    /// Device reset (status 0).
    fn reset(&mut self) {}
    /// Work the device does on its own rather than at a kick (a NIC's
    /// received frames), over all its queues; returns whether the driver
    /// should get a queue interrupt.
    fn process_input(
        &mut self,
        _queues: &mut [VirtQueue],
        _mem: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        Ok(false)
    }
    /// The descriptor whose readability means input for
    /// [`process_input`](Self::process_input) (a NIC's tap), while the
    /// device has somewhere to put it; None: nothing to wait for now.
    fn input_fd(&self, _queues: &[VirtQueue], _mem: &GuestMemoryMmap) -> Option<BorrowedFd<'_>> {
        None
    }
    /// vmd's pause/unpause broadcast to devices: a paused device moves no
    /// data, and keeps what it holds for the unpause.
    fn set_paused(&mut self, _paused: bool) {}
    /// vionet: the MAC of the host side of its tap (IMSG_DEVOP_HOSTMAC).
    fn set_host_mac(&mut self, _mac: [u8; 6]) {}
    /// Whether a device process may, after a kick of queue `index`, keep
    /// looking at that queue for a short while with the driver's
    /// notifications suppressed (VIRTQ_USED_F_NO_NOTIFY) instead of
    /// waiting for the next kick: worth it where the driver makes the
    /// next request available as soon as one completes (vioblk's queue,
    /// vionet's transmit queue), not where a queue holds buffers that
    /// wait for host events (receive or event queues), which would keep
    /// it polling.
    fn polls(&self, _index: usize) -> bool {
        false
    }
}

/// How vmd lists a virtio 1.x device on the PCI bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioPciIds {
    pub device: u16,
    pub class: u8,
    pub subclass: u8,
    pub subsys_id: u16,
}

impl VirtioPciIds {
    pub const RNG: VirtioPciIds = VirtioPciIds {
        device: PCI_PRODUCT_QUMRANET_VIO1_RNG,
        class: PCI_CLASS_SYSTEM,
        subclass: PCI_SUBCLASS_SYSTEM_MISC,
        subsys_id: PCI_PRODUCT_VIRTIO_ENTROPY,
    };
    pub const BLOCK: VirtioPciIds = VirtioPciIds {
        device: PCI_PRODUCT_QUMRANET_VIO1_BLOCK,
        class: PCI_CLASS_MASS_STORAGE,
        subclass: PCI_SUBCLASS_MASS_STORAGE_SCSI,
        subsys_id: PCI_PRODUCT_VIRTIO_BLOCK,
    };
    /// vionet: class system/misc, as vmd codes it.
    pub const NET: VirtioPciIds = VirtioPciIds {
        device: PCI_PRODUCT_QUMRANET_VIO1_NET,
        class: PCI_CLASS_SYSTEM,
        subclass: PCI_SUBCLASS_SYSTEM_MISC,
        subsys_id: PCI_PRODUCT_VIRTIO_NETWORK,
    };
    pub const SCSI: VirtioPciIds = VirtioPciIds {
        device: PCI_PRODUCT_QUMRANET_VIO1_SCSI,
        class: PCI_CLASS_MASS_STORAGE,
        subclass: PCI_SUBCLASS_MASS_STORAGE_SCSI,
        subsys_id: PCI_PRODUCT_VIRTIO_SCSI,
    };

    pub fn pci_config(&self) -> PciDeviceConfig {
        PciDeviceConfig {
            vendor: PCI_VENDOR_QUMRANET,
            device: self.device,
            class: self.class,
            subclass: self.subclass,
            subsys_vendor: crate::devices::pci::PCI_VENDOR_OPENBSD,
            subsys_id: self.subsys_id,
            revision: 1,
            irq_needed: true,
        }
    }
}

/// A virtio device on the bus.
pub struct AttachedVirtio<D> {
    pub slot: u8,
    /// The ISA line: the caller marks it level-triggered in the ELCR.
    pub irq: u8,
    pub dev: Arc<Mutex<VirtioPci<D>>>,
}

/// A `struct virtio_pci_cap` as vmd fills it: cap_len 16 for every kind
/// (the notify capability's multiplier, 0, reads from the zeroed rest of
/// the slot).
fn virtio_cap(cfg_type: u8, bar: u8, offset: u16, length: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = PCI_CAP_VENDSPEC;
    c[2] = 16;
    c[3] = cfg_type;
    c[4] = bar;
    c[8..12].copy_from_slice(&u32::from(offset).to_le_bytes());
    c[12..16].copy_from_slice(&length.to_le_bytes());
    c
}

/// Adds `dev` to the bus as vmd's `virtio_init` does: the next slot and
/// line, one I/O BAR, and the capabilities COMMON_CFG, DEVICE_CFG (when
/// the device has a configuration), ISR_CFG and NOTIFY_CFG in that order.
pub fn attach<D: VirtioDevice + 'static>(
    bus: &mut PciBus,
    ids: VirtioPciIds,
    dev: D,
    mem: VmMemory,
    lines: Arc<dyn IrqLines>,
) -> Result<AttachedVirtio<D>, PciError> {
    let info = bus.add_device(&ids.pci_config())?;
    let irq = info.irq.ok_or(PciError::NoIrqLeft)?;
    let config_len = dev.config_len();
    let shared = Arc::new(Mutex::new(VirtioPci::new(dev, mem, irq, lines)));
    add_virtio_bar(bus, info.slot, config_len, shared.clone())?;
    Ok(AttachedVirtio {
        slot: info.slot,
        irq,
        dev: shared,
    })
}

/// Gives the device in `slot` its I/O BAR, served by `bar` (the device
/// core, or a proxy to a device process), and the virtio capabilities
/// COMMON_CFG, DEVICE_CFG (when `config_len` > 0), ISR_CFG and
/// NOTIFY_CFG in vmd's order.
pub fn add_virtio_bar(
    bus: &mut PciBus,
    slot: u8,
    config_len: u32,
    bar: crate::devices::bus::SharedPio,
) -> Result<(), PciError> {
    let bar = bus.add_io_bar(slot, bar)?.index;
    bus.add_capability(
        slot,
        &virtio_cap(
            VIRTIO_PCI_CAP_COMMON_CFG,
            bar,
            VIO1_CFG_BAR_OFFSET,
            VIRTIO_PCI_COMMON_CFG_LEN,
        ),
    )?;
    if config_len > 0 {
        bus.add_capability(
            slot,
            &virtio_cap(
                VIRTIO_PCI_CAP_DEVICE_CFG,
                bar,
                VIO1_DEV_BAR_OFFSET,
                config_len,
            ),
        )?;
    }
    bus.add_capability(
        slot,
        &virtio_cap(VIRTIO_PCI_CAP_ISR_CFG, bar, VIO1_ISR_BAR_OFFSET, 1),
    )?;
    bus.add_capability(
        slot,
        &virtio_cap(VIRTIO_PCI_CAP_NOTIFY_CFG, bar, VIO1_NOTIFY_BAR_OFFSET, 2),
    )?;
    Ok(())
}

/// The OS-free core of a virtio 1.x PCI device.
pub struct VirtioPci<D> {
    dev: D,
    mem: VmMemory,
    irq: u8,
    lines: Arc<dyn IrqLines>,
    device_features: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    isr: u8,
    line_up: bool,
    queue_select: u16,
    queues: Vec<VirtQueue>,
    /// Queues being polled (bit per index), their notifications
    /// suppressed; see [`VirtioPci::poll_start`].
    polled: u64,
    /// Hostile-driver incidents; only the first is logged.
    incidents: u64,
}

impl<D: VirtioDevice> VirtioPci<D> {
    pub fn new(dev: D, mem: VmMemory, irq: u8, lines: Arc<dyn IrqLines>) -> Self {
        let queues = dev
            .queue_max_sizes()
            .into_iter()
            .map(VirtQueue::new)
            .collect();
        VirtioPci {
            device_features: dev.device_features() | VIRTIO_F_VERSION_1,
            dev,
            mem,
            irq,
            lines,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            isr: 0,
            line_up: false,
            queue_select: 0,
            queues,
            polled: 0,
            incidents: 0,
        }
    }

    pub fn device(&self) -> &D {
        &self.dev
    }

    pub fn device_mut(&mut self) -> &mut D {
        &mut self.dev
    }

    pub fn status(&self) -> u8 {
        self.status
    }

    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    pub fn irq(&self) -> u8 {
        self.irq
    }

    /// How many times a driver corrupted a queue of this device.
    pub fn incidents(&self) -> u64 {
        self.incidents
    }

    pub fn needs_reset(&self) -> bool {
        self.status & VIRTIO_CONFIG_DEVICE_STATUS_DEVICE_NEEDS_RESET != 0
    }

    fn raise(&mut self, bits: u8) {
        self.isr |= bits;
        // The line is level-triggered: raising it again while it is up
        // changes nothing for the PIC, and costs a message (or a vCPU
        // kick) each completion.
        if !self.line_up {
            self.line_up = true;
            self.lines.assert_irq(self.irq);
        }
    }

    fn lower(&mut self) {
        if self.line_up {
            self.line_up = false;
            self.lines.deassert_irq(self.irq);
        }
    }

    /// Something the device cannot go on with: DEVICE_NEEDS_RESET, and a
    /// configuration-change interrupt if the driver is running.
    pub fn set_needs_reset(&mut self, why: &QueueError) {
        self.incidents += 1;
        if self.incidents == 1 {
            log::warn!("{}: device needs reset: {why}", self.dev.name());
        } else {
            log::debug!("{}: device needs reset: {why}", self.dev.name());
        }
        if self.needs_reset() {
            return;
        }
        self.status |= VIRTIO_CONFIG_DEVICE_STATUS_DEVICE_NEEDS_RESET;
        if self.status & VIRTIO_CONFIG_DEVICE_STATUS_DRIVER_OK != 0 {
            self.raise(VIRTIO_CONFIG_ISR_CONFIG_CHANGE);
        }
    }

    fn reset(&mut self) {
        self.status = 0;
        self.driver_features = 0;
        self.driver_feature_select = 0;
        self.device_feature_select = 0;
        self.isr = 0;
        self.lower();
        self.queue_select = 0;
        self.polled = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.dev.reset();
    }

    fn write_status(&mut self, value: u8) {
        if value == 0 {
            self.reset();
            return;
        }
        let mut value = value & !VIRTIO_CONFIG_DEVICE_STATUS_DEVICE_NEEDS_RESET;
        // A driver that did not take VERSION_1 cannot drive a 1.x-only
        // device: refuse FEATURES_OK, as the specification lets a device.
        if value & VIRTIO_CONFIG_DEVICE_STATUS_FEATURES_OK != 0
            && self.status & VIRTIO_CONFIG_DEVICE_STATUS_FEATURES_OK == 0
            && self.driver_features & VIRTIO_F_VERSION_1 == 0
        {
            log::debug!(
                "{}: features 0x{:x} lack VERSION_1, FEATURES_OK refused",
                self.dev.name(),
                self.driver_features
            );
            value &= !VIRTIO_CONFIG_DEVICE_STATUS_FEATURES_OK;
        }
        self.status = value | (self.status & VIRTIO_CONFIG_DEVICE_STATUS_DEVICE_NEEDS_RESET);
    }

    fn selected(&mut self) -> Option<&mut VirtQueue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    /// The common configuration as bytes, for reads of any width.
    fn common_cfg(&self) -> [u8; VIRTIO_PCI_COMMON_CFG_LEN as usize] {
        let mut c = [0u8; VIRTIO_PCI_COMMON_CFG_LEN as usize];
        let put = |c: &mut [u8], off: u16, bytes: &[u8]| {
            c[off as usize..off as usize + bytes.len()].copy_from_slice(bytes)
        };
        put(
            &mut c,
            DEVICE_FEATURE_SELECT,
            &self.device_feature_select.to_le_bytes(),
        );
        let df = match self.device_feature_select {
            0 => self.device_features as u32,
            1 => (self.device_features >> 32) as u32,
            _ => 0,
        };
        put(&mut c, DEVICE_FEATURE, &df.to_le_bytes());
        put(
            &mut c,
            DRIVER_FEATURE_SELECT,
            &self.driver_feature_select.to_le_bytes(),
        );
        let drf = match self.driver_feature_select {
            0 => self.driver_features as u32,
            1 => (self.driver_features >> 32) as u32,
            _ => 0,
        };
        put(&mut c, DRIVER_FEATURE, &drf.to_le_bytes());
        put(
            &mut c,
            CONFIG_MSIX_VECTOR,
            &VIRTIO_MSI_NO_VECTOR.to_le_bytes(),
        );
        put(
            &mut c,
            NUM_QUEUES,
            &(self.queues.len() as u16).to_le_bytes(),
        );
        c[DEVICE_STATUS as usize] = self.status;
        c[CONFIG_GENERATION as usize] = 0;
        put(&mut c, QUEUE_SELECT, &self.queue_select.to_le_bytes());
        if let Some(q) = self.queues.get(self.queue_select as usize) {
            put(&mut c, QUEUE_SIZE, &q.size().to_le_bytes());
            put(
                &mut c,
                QUEUE_MSIX_VECTOR,
                &VIRTIO_MSI_NO_VECTOR.to_le_bytes(),
            );
            put(&mut c, QUEUE_ENABLE, &u16::from(q.ready()).to_le_bytes());
            put(&mut c, QUEUE_NOTIFY_OFF, &0u16.to_le_bytes());
            put(&mut c, QUEUE_DESC, &q.desc_addr().to_le_bytes());
            put(&mut c, QUEUE_AVAIL, &q.avail_addr().to_le_bytes());
            put(&mut c, QUEUE_USED, &q.used_addr().to_le_bytes());
        } else {
            // A queue that does not exist reads size 0 (virtio_update_qs).
            put(
                &mut c,
                QUEUE_MSIX_VECTOR,
                &VIRTIO_MSI_NO_VECTOR.to_le_bytes(),
            );
        }
        c
    }

    fn read_common(&self, offset: u16, size: u8) -> u32 {
        let c = self.common_cfg();
        let mut v = 0u32;
        for i in 0..u16::from(size.min(4)) {
            let b = c.get((offset + i) as usize).copied().unwrap_or(0);
            v |= u32::from(b) << (8 * i);
        }
        v
    }

    fn write_common(&mut self, offset: u16, size: u8, value: u32) {
        let name = self.dev.name();
        match (offset, size) {
            (DEVICE_FEATURE_SELECT, 4) => self.device_feature_select = value,
            (DRIVER_FEATURE_SELECT, 4) => self.driver_feature_select = value,
            (DRIVER_FEATURE, 4) => {
                if self.status & VIRTIO_CONFIG_DEVICE_STATUS_FEATURES_OK != 0 {
                    log::debug!("{name}: driver features written after FEATURES_OK");
                    return;
                }
                let f = match self.driver_feature_select {
                    0 => (self.driver_features & !0xffff_ffff) | u64::from(value),
                    1 => (self.driver_features & 0xffff_ffff) | u64::from(value) << 32,
                    _ => return,
                };
                // Only what the device offers can be accepted.
                self.driver_features = f & self.device_features;
            }
            (DEVICE_STATUS, 1) => self.write_status(value as u8),
            (QUEUE_SELECT, 2) => self.queue_select = value as u16,
            (QUEUE_SIZE, 2) => {
                if let Some(q) = self.selected() {
                    if !q.set_size(value as u16) {
                        log::debug!("{name}: queue size {value} refused");
                    }
                }
            }
            (QUEUE_ENABLE, 2) => {
                if value & 1 == 0 {
                    return;
                }
                let mem = self.mem.clone();
                let r = match self.selected() {
                    Some(q) if !q.ready() => q.enable(mem.mmap()),
                    _ => Ok(()),
                };
                if let Err(e) = r {
                    self.set_needs_reset(&e);
                }
            }
            (QUEUE_DESC | QUEUE_AVAIL | QUEUE_USED, 4) | (0x24 | 0x2c | 0x34, 4) => {
                let which = ((offset - QUEUE_DESC) / 8) as u8;
                let high = offset & 4 != 0;
                if let Some(q) = self.selected() {
                    q.set_addr_half(which, high, value);
                }
            }
            // No MSI-X in era B: the vector registers stay NO_VECTOR.
            (CONFIG_MSIX_VECTOR | QUEUE_MSIX_VECTOR, 2) => {}
            _ => log::debug!(
                "{name}: ignored write of 0x{value:x} (size {size}) at common cfg 0x{offset:x}"
            ),
        }
    }

    /// A write to the notify register: the driver kicks queue `index`.
    pub fn notify(&mut self, index: u16) {
        if self.status & VIRTIO_CONFIG_DEVICE_STATUS_DRIVER_OK == 0 || self.needs_reset() {
            return;
        }
        let Some(q) = self.queues.get_mut(index as usize) else {
            log::debug!("{}: notify of queue {index}", self.dev.name());
            return;
        };
        if !q.ready() {
            return;
        }
        let mem = self.mem.mmap();
        let done = match self.dev.process_queue(index as usize, q, mem) {
            Ok(used) => Ok(used && q.needs_notification(mem)),
            Err(e) => Err(e),
        };
        match done {
            Ok(true) => self.raise(VIRTIO_CONFIG_ISR_QUEUE),
            Ok(false) => {}
            Err(e) => return self.set_needs_reset(&e),
        }
        // What the kick made possible besides its own queue (a NIC's
        // answers to what it just sent, frames for new receive buffers).
        self.input();
    }

    /// Whether the device waits for input of its own now (see
    /// [`VirtioDevice::input_fd`]).
    pub fn wants_input(&self) -> bool {
        self.input_fd().is_some()
    }

    fn running(&self) -> bool {
        self.status & VIRTIO_CONFIG_DEVICE_STATUS_DRIVER_OK != 0 && !self.needs_reset()
    }

    /// The device's own input is ready (or may be): lets it move what it
    /// can into its queues, and interrupts the driver if it asked.
    pub fn input(&mut self) {
        if !self.running() {
            return;
        }
        match self.dev.process_input(&mut self.queues, self.mem.mmap()) {
            Ok(true) => self.raise(VIRTIO_CONFIG_ISR_QUEUE),
            Ok(false) => {}
            Err(e) => self.set_needs_reset(&e),
        }
    }

    /// What the device's process should wait on for input, if anything
    /// now (see [`VirtioDevice::input_fd`]).
    pub fn input_fd(&self) -> Option<BorrowedFd<'_>> {
        if !self.running() {
            return None;
        }
        self.dev.input_fd(&self.queues, self.mem.mmap())
    }

    /// Pause or unpause the device; at unpause it catches up at once.
    pub fn set_paused(&mut self, paused: bool) {
        self.dev.set_paused(paused);
        if !paused {
            self.input();
        }
    }

    /// After a kick of queue `index` (in a device process): starts
    /// polling it, with the driver told not to notify, if the device
    /// [polls](VirtioDevice::polls) and the queue is live.  Whether it
    /// is polled now.
    pub fn poll_start(&mut self, index: u16) -> bool {
        if !self.dev.polls(index as usize)
            || self.status & VIRTIO_CONFIG_DEVICE_STATUS_DRIVER_OK == 0
            || self.needs_reset()
            || index >= 64
        {
            return false;
        }
        let Some(q) = self.queues.get_mut(index as usize) else {
            return false;
        };
        if !q.ready() {
            return false;
        }
        q.suppress_notifications(self.mem.mmap());
        self.polled |= 1 << index;
        true
    }

    /// Serves what the driver made available on the polled queues
    /// since the last look; whether there was anything.
    pub fn poll(&mut self) -> bool {
        if self.status & VIRTIO_CONFIG_DEVICE_STATUS_DRIVER_OK == 0 || self.needs_reset() {
            self.polled = 0;
            return false;
        }
        let mut work = false;
        for i in 0..self.queues.len().min(64) {
            if self.polled & (1 << i) != 0 && self.queues[i].has_avail(self.mem.mmap()) {
                self.notify(i as u16);
                work = true;
            }
        }
        work
    }

    /// Ends polling: the driver notifies again.  What it made available
    /// before it could see that is served here (it sends no kick for
    /// it), and those queues stay polled; whether there was any.
    pub fn poll_stop(&mut self) -> bool {
        let mut work = false;
        for i in 0..self.queues.len().min(64) {
            if self.polled & (1 << i) == 0 {
                continue;
            }
            let mem = self.mem.clone();
            if self.queues[i].resume_notifications(mem.mmap()) {
                self.queues[i].suppress_notifications(mem.mmap());
                self.notify(i as u16);
                work = true;
            } else {
                self.polled &= !(1 << i);
            }
        }
        work
    }

    /// Whether any queue is being polled.
    pub fn polling(&self) -> bool {
        self.polled != 0
    }

    /// Reads the ISR: its bits, cleared by the read, which also lowers the
    /// line.
    fn read_isr(&mut self) -> u8 {
        let v = self.isr;
        self.isr = 0;
        self.lower();
        v
    }
}

impl<D: VirtioDevice> PioDevice for VirtioPci<D> {
    fn pio_read(&mut self, offset: u16, size: u8) -> u32 {
        match offset & 0xff00 {
            VIO1_CFG_BAR_OFFSET => self.read_common(offset & 0xff, size),
            VIO1_NOTIFY_BAR_OFFSET => 0,
            VIO1_ISR_BAR_OFFSET => u32::from(self.read_isr()),
            VIO1_DEV_BAR_OFFSET => {
                let off = u32::from(offset & 0xff);
                let len = self.dev.config_len();
                if off >= len {
                    return all_ones(size);
                }
                let mut v = 0u32;
                for i in 0..u32::from(size.min(4)) {
                    let b = if off + i < len {
                        self.dev.read_config(off + i)
                    } else {
                        0xff
                    };
                    v |= u32::from(b) << (8 * i);
                }
                v
            }
            _ => all_ones(size),
        }
    }

    fn pio_write(&mut self, offset: u16, size: u8, value: u32) {
        match offset & 0xff00 {
            VIO1_CFG_BAR_OFFSET => self.write_common(offset & 0xff, size, value),
            VIO1_NOTIFY_BAR_OFFSET => self.notify(value as u16),
            VIO1_ISR_BAR_OFFSET => {}
            VIO1_DEV_BAR_OFFSET => {
                let off = u32::from(offset & 0xff);
                for i in 0..u32::from(size.min(4)) {
                    if off + i < self.dev.config_len() {
                        self.dev.write_config(off + i, (value >> (8 * i)) as u8);
                    }
                }
            }
            _ => {}
        }
    }
}
