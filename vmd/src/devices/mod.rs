//! Device models of vmd's amd64 machine (reference §4.2, §4.3).
pub mod bus;
pub mod fw_cfg;
pub mod i8042;
pub mod i8253;
pub mod i8259;
pub mod irq;
pub mod mc146818;
pub mod ns8250;
pub mod pci;
pub mod scsi;
pub mod virtio;

#[cfg(test)]
pub(crate) mod property_tests;
