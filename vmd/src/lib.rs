//! vmd(8): the daemon and the per-VM machine.
//!
//! - [`vm`]: the VM process — guest memory map, vCPU loop and exit
//!   dispatch, the port and MMIO buses, loaders.
//! - [`config`]: vm.conf(5), parsed as vmd's parse.y does.
//! - [`devices`]: the emulated platform (i8259, i8253, mc146818, ns8250,
//!   PCI, fw_cfg, virtio), each a small core with no OS code, driven by
//!   port or MMIO accesses so that tests can inject them without a VM.
//! - [`x86`]: decoding and emulating the instructions that fault on MMIO.
//! - [`proc`]: the daemon's processes and their imsg-style IPC.
//! - [`daemon`]: the vmd binary: command line, the parent, control, vmm,
//!   priv and VM processes.
pub mod config;
pub mod daemon;
pub mod devices;
pub mod event;
pub mod proc;
pub mod vm;
pub mod x86;

#[cfg(test)]
pub(crate) mod property;
