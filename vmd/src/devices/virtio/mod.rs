//! virtio devices as vmd builds them (reference §4.3): virtio 1.x PCI
//! devices with one 4 KiB I/O BAR holding the common configuration
//! (0x000), the notify register (0x100, one for all queues), the ISR
//! (0x200) and the device configuration (0x300), described by vendor
//! capabilities; split virtqueues; a level-triggered ISA line per device.
//! vmmci keeps the legacy virtio 0.9 register layout.
//!
//! [`transport::VirtioPci`] is the OS-free core of a 1.x device (registers,
//! feature negotiation, status, queues) over guest memory; a
//! [`transport::VirtioDevice`] supplies what differs per device.  Queues
//! are rust-vmm's `virtio-queue` behind [`queue::VirtQueue`], which checks
//! every chain a driver offers and turns a hostile one into an error the
//! transport answers with DEVICE_NEEDS_RESET.
pub mod blk;
pub mod net;
pub mod queue;
pub mod rng;
pub mod scsi;
pub mod transport;
pub mod vmmci;

#[cfg(test)]
pub(crate) mod testdriver;
#[cfg(test)]
mod tests;

/// Qumranet, the virtio vendor.
pub const PCI_VENDOR_QUMRANET: u16 = 0x1af4;
pub const PCI_PRODUCT_QUMRANET_VIO1_NET: u16 = 0x1041;
pub const PCI_PRODUCT_QUMRANET_VIO1_BLOCK: u16 = 0x1042;
pub const PCI_PRODUCT_QUMRANET_VIO1_RNG: u16 = 0x1044;
pub const PCI_PRODUCT_QUMRANET_VIO1_SCSI: u16 = 0x1048;
/// vmmci: OpenBSD's VMM control interface.
pub const PCI_PRODUCT_OPENBSD_CONTROL: u16 = 0x0777;

/// Subsystem ids vmd gives its devices (the virtio device types; vmmci's
/// is OpenBSD's own).
pub const PCI_PRODUCT_VIRTIO_NETWORK: u16 = 1;
pub const PCI_PRODUCT_VIRTIO_BLOCK: u16 = 2;
pub const PCI_PRODUCT_VIRTIO_ENTROPY: u16 = 4;
pub const PCI_PRODUCT_VIRTIO_SCSI: u16 = 8;
pub const PCI_PRODUCT_VIRTIO_VMMCI: u16 = 0xffff;

pub const PCI_CLASS_MASS_STORAGE: u8 = 0x01;
pub const PCI_SUBCLASS_MASS_STORAGE_SCSI: u8 = 0x00;
pub const PCI_CLASS_COMMUNICATIONS: u8 = 0x07;
pub const PCI_SUBCLASS_COMMUNICATIONS_MISC: u8 = 0x80;
pub const PCI_CLASS_SYSTEM: u8 = 0x08;
pub const PCI_SUBCLASS_SYSTEM_MISC: u8 = 0x80;

/// Feature bit 32: the device speaks virtio 1.x.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

// Device status bits.
pub const VIRTIO_CONFIG_DEVICE_STATUS_ACK: u8 = 1;
pub const VIRTIO_CONFIG_DEVICE_STATUS_DRIVER: u8 = 2;
pub const VIRTIO_CONFIG_DEVICE_STATUS_DRIVER_OK: u8 = 4;
pub const VIRTIO_CONFIG_DEVICE_STATUS_FEATURES_OK: u8 = 8;
pub const VIRTIO_CONFIG_DEVICE_STATUS_DEVICE_NEEDS_RESET: u8 = 0x40;
pub const VIRTIO_CONFIG_DEVICE_STATUS_FAILED: u8 = 0x80;

// ISR bits.
pub const VIRTIO_CONFIG_ISR_QUEUE: u8 = 1;
pub const VIRTIO_CONFIG_ISR_CONFIG_CHANGE: u8 = 2;

/// The MSI-X "no vector" value; era B vmd has no MSI-X, so every vector
/// register reads this.
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;

// Where vmd puts the structures inside the I/O BAR.
pub const VIO1_CFG_BAR_OFFSET: u16 = 0x000;
pub const VIO1_NOTIFY_BAR_OFFSET: u16 = 0x100;
pub const VIO1_ISR_BAR_OFFSET: u16 = 0x200;
pub const VIO1_DEV_BAR_OFFSET: u16 = 0x300;

// virtio_pci_cap cfg_type values.
pub const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
pub const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
pub const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
pub const VIRTIO_PCI_CAP_DEVICE_CFG: u8 = 4;
/// PCI vendor-specific capability id.
pub const PCI_CAP_VENDSPEC: u8 = 0x09;
/// Size of `struct virtio_pci_common_cfg`.
pub const VIRTIO_PCI_COMMON_CFG_LEN: u32 = 0x38;

/// vmd's largest single transfer (MAXPHYS), also the most viornd fills
/// for one chain.
pub const MAXPHYS: u64 = 64 * 1024;
