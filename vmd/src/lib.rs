//! vmd(8): the daemon and the per-VM machine.
//!
//! - [`vm`]: the VM process — guest memory map, the PC wiring
//!   (`vm::platform`), the vCPU state machine and run loop (`vm::vcpu`),
//!   exit dispatch (`vm::exit`), loaders.
//! - [`config`]: vm.conf(5), parsed as vmd's parse.y does.
//! - [`devices`]: the emulated platform (i8259, i8253, mc146818, ns8250,
//!   PCI, fw_cfg, virtio), each a small core with no OS code, driven by
//!   port or MMIO accesses so that tests can inject them without a VM;
//!   the buses they sit on and the lines they raise.
//! - [`event`]: the poll loop with a self-pipe that every process runs.
//! - [`x86`]: decoding and emulating the instructions that fault on MMIO.
//! - [`net`]: local interfaces' address rule and vmd's built-in DHCP
//!   server (no OS code).
//! - [`proc`]: the daemon's process plumbing (peer credentials); the
//!   messages its processes exchange are [`vmd_proto`]'s, shared with
//!   vmctl.
//! - [`daemon`]: the vmd binary: command line, the parent, control, vmm,
//!   priv and VM processes.
// `unsafe` only in vm::guest_memory, which allows it for itself.
#![deny(unsafe_code)]

pub mod config;
pub mod daemon;
pub mod devices;
pub mod event;
pub mod net;
pub mod proc;
pub mod sandbox;
pub mod sys;
pub mod vm;
pub mod x86;

#[cfg(test)]
pub(crate) mod property;
