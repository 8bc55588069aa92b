//! Device processes, as era-B vmd runs vioblk (and vionet, and vioscsi
//! in 2026): the VM process forks and execs `vmd -X 0 -t <kind>` per
//! device with two sockets (reference §3.3):
//!
//! - the **sync** channel (the child's standard input): setup, then
//!   register reads and writes of the device's I/O BAR as RPCs
//!   (`viodev_msg` IO_READ / IO_WRITE with reg, io_sz, data); each answer
//!   carries the interrupt line's new state (ASSERT / DEASSERT / NOOP),
//!   so that an ISR read that lowers the line is seen by the vCPU before
//!   it goes on;
//! - the **async** channel: queue notifications (KICK, one-way: the
//!   driver needs no answer to a notify write, so a notify costs one
//!   message instead of vmd's round trip), the interrupts the device
//!   raises or lowers on its own (after a kick), and SHUTDOWN.  The
//!   device process serves its async channel before its sync one, so a
//!   kick is served before any register access the vCPU made after it.
//!
//! Each change of the interrupt line the device makes carries a sequence
//! number (the `vcpu` byte of the message that reports it, on either
//! channel), and the VM process applies only changes newer than the last
//! one it applied ([`proxy::LineOrder`]): a raise on the async channel
//! cannot overtake the lowering an ISR read answered.  The device raises
//! a line that is already up only once.
//!
//! A device that polls (vioblk: its driver makes the next request
//! available as soon as one completes) keeps serving a kicked queue for
//! as long as it finds chains there ([`device::POLL_WINDOW`] more, if
//! set), with VIRTQ_USED_F_NO_NOTIFY in the used ring so that the driver
//! does not kick meanwhile: a busy queue costs neither a VM exit nor a
//! message per request.
//!
//! The child gets, with its setup message, vmm(4)'s descriptor, the
//! async socket, the guest memory's descriptors (mapped there with
//! `VMM_IOC_SHAREMEM`, see vmm-sys's `adopt_memory`) and the device's
//! own files (a disk's chain); it builds the OS-free device core
//! ([`crate::devices::virtio::transport::VirtioPci`] over a
//! [`crate::devices::virtio::transport::VirtioDevice`]) and serves it
//! ([`device::serve`]).  In the VM process the BAR is a [`proxy::Proxy`].
//! Nothing here is vioblk's: a device kind is a letter (`d` vioblk, `s`
//! vioscsi, `n` vionet), a setup payload and the files it needs.
//!
//! Where the backend can (the Linux shim), a notify write does not even
//! reach the VM process: the kernel rings the queue's [`doorbell`] (an
//! eventfd the device process waits on), and the KICK message is left for
//! the writes it does not take.  A doorbell is rung before the vCPU goes
//! on, so it too is served before any later register access.
//!
//! If a device process dies, its sockets close: the VM process notices
//! and ends the VM with an error naming the device, as vmd does.
pub mod device;
pub mod doorbell;
#[cfg(test)]
mod proto_tests;
pub mod proxy;

use serde::{Deserialize, Serialize};

/// How the VM process starts device processes.
pub struct DeviceProcesses {
    /// vmd's binary.
    pub exe: std::path::PathBuf,
    /// vmm(4), duplicated for each device process.
    pub vmm_fd: std::os::fd::OwnedFd,
    /// `-d`, `-v` to pass on.
    pub flags: Vec<String>,
    /// Notify writes go one way (KICK on the async channel) instead of
    /// as a register round trip (vmd's way, kept for comparisons).
    pub one_way_kicks: bool,
}

/// A disk for a vioblk device process: its configuration and its chain's
/// descriptors, top first, as the parent opened them.
pub struct DiskFiles {
    pub disk: vmd_proto::msg::VmDisk,
    pub files: Vec<std::os::fd::OwnedFd>,
}

/// A NIC for a vionet device (process): its tap's descriptor, as the
/// parent opened it, and what vionet needs to know.
pub struct NicFiles {
    pub nic: NicSetup,
    pub tap: std::os::fd::OwnedFd,
    /// Served in the VM process (VMD_INPROCESS_DEVICES) rather than by a
    /// device process of its own.
    pub in_process: bool,
}

/// vionet's setup payload (`struct vionet_dev`'s configured part).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicSetup {
    /// The NIC's index in the VM.
    pub index: u32,
    /// The tap's name (`tapN`), for messages.
    pub ifname: String,
    pub mac: [u8; 6],
    /// `locked lladdr`.
    pub locked: bool,
    /// A `local interface`, on which vmd answers DHCP: the addresses.
    pub local: Option<NicLocal>,
}

/// What a `local interface`'s DHCP server needs to make its lease
/// ([`crate::net::LocalLease`]): the VM, the global configuration's local
/// prefixes, and whether to answer as to a network boot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicLocal {
    pub vm_id: u32,
    pub vm_name: String,
    pub global: vmd_proto::config::GlobalConfig,
    pub pxeboot: bool,
}

impl NicLocal {
    /// The lease of NIC `idx` with MAC `mac`, by vmd's address rule.
    pub fn lease(
        &self,
        idx: u32,
        mac: [u8; 6],
    ) -> Result<crate::net::LocalLease, crate::net::LocalAddrError> {
        crate::net::LocalLease::new(&self.global, self.vm_id, idx as usize, mac, &self.vm_name)
            .map(|l| l.with_pxeboot(self.pxeboot))
    }
}

/// How many queues a device process of `kind` serves (one doorbell
/// each).
pub fn queue_count(kind: char) -> usize {
    use crate::devices::virtio::{blk, net, scsi};
    match kind {
        'd' => blk::VIOBLK_QUEUES,
        'n' => net::VIONET_QUEUES,
        's' => scsi::VIOSCSI_QUEUES,
        _ => 0,
    }
}

/// imsg types on the device sockets.
pub const IMSG_DEVOP_MSG: u32 = 1;
/// VM → device, once: [`DevSetup`] with the descriptors it lists.
pub const IMSG_DEVOP_SETUP: u32 = 2;
/// VM → device on the async channel, no payload: vmd's PAUSE_VM /
/// UNPAUSE_VM broadcast (a NIC stops and restarts its traffic).
pub const IMSG_DEVOP_PAUSE: u32 = 3;
pub const IMSG_DEVOP_UNPAUSE: u32 = 4;
/// VM → vionet on the async channel: the tap's MAC, 6 bytes (vmd's
/// IMSG_DEVOP_HOSTMAC), for the DHCP server of a local interface.
pub const IMSG_DEVOP_HOSTMAC: u32 = 5;

// `enum viodev_msg_type`.
pub const VIODEV_MSG_INVALID: u8 = 0;
pub const VIODEV_MSG_READY: u8 = 1;
pub const VIODEV_MSG_ERROR: u8 = 2;
pub const VIODEV_MSG_KICK: u8 = 3;
pub const VIODEV_MSG_IO_READ: u8 = 4;
pub const VIODEV_MSG_IO_WRITE: u8 = 5;
pub const VIODEV_MSG_DUMP: u8 = 6;
pub const VIODEV_MSG_SHUTDOWN: u8 = 7;

// Interrupt line states in a message.
pub const INTR_STATE_ASSERT: i8 = 1;
pub const INTR_STATE_NOOP: i8 = 0;
pub const INTR_STATE_DEASSERT: i8 = -1;

/// Bytes of an encoded [`ViodevMsg`].
pub const VIODEV_MSG_LEN: usize = 12;

/// `struct viodev_msg`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ViodevMsg {
    pub type_: u8,
    pub reg: u16,
    pub io_sz: u8,
    pub vcpu: u8,
    pub irq: u8,
    pub state: i8,
    pub data: u32,
    pub data_valid: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DevProcError {
    #[error("viodev message of {0} bytes, not {VIODEV_MSG_LEN}")]
    BadLength(usize),
    #[error("unexpected imsg type {0} on a device socket")]
    BadType(u32),
    #[error("device socket: {0}")]
    Imsg(#[from] vmd_proto::ImsgError),
    #[error("device setup: {0}")]
    Codec(#[from] vmd_proto::codec::CodecError),
    #[error("{0}")]
    Setup(String),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}

impl ViodevMsg {
    pub fn to_bytes(&self) -> [u8; VIODEV_MSG_LEN] {
        let mut b = [0u8; VIODEV_MSG_LEN];
        b[0] = self.type_;
        b[1] = self.io_sz;
        b[2] = self.vcpu;
        b[3] = self.irq;
        b[4] = self.state as u8;
        b[5] = u8::from(self.data_valid);
        b[6..8].copy_from_slice(&self.reg.to_le_bytes());
        b[8..12].copy_from_slice(&self.data.to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8]) -> Result<ViodevMsg, DevProcError> {
        if b.len() != VIODEV_MSG_LEN {
            return Err(DevProcError::BadLength(b.len()));
        }
        Ok(ViodevMsg {
            type_: b[0],
            io_sz: b[1],
            vcpu: b[2],
            irq: b[3],
            state: b[4] as i8,
            data_valid: b[5] != 0,
            reg: u16::from_le_bytes([b[6], b[7]]),
            data: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
        })
    }

    pub fn of_type(type_: u8) -> ViodevMsg {
        ViodevMsg {
            type_,
            ..Default::default()
        }
    }
}

/// One guest memory range as the device process maps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemRange {
    pub gpa: u64,
    pub size: u64,
    /// `VM_MEM_*`.
    pub kind: i32,
    /// Whether a descriptor for it follows (none for MMIO, none at all
    /// on OpenBSD, where vmm(4) shares by VM id).
    pub has_fd: bool,
}

/// The setup message: what the device process needs besides its
/// descriptors, which come with it in this order: vmm(4), the async
/// socket, the memory ranges' (those with `has_fd`), then `files`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevSetup {
    /// `-t`: `d` vioblk, `s` vioscsi, `n` vionet.
    pub kind: char,
    pub vm_name: String,
    pub vm_id: u32,
    /// The device's ISA line.
    pub irq: u8,
    pub ranges: Vec<MemRange>,
    /// Descriptors of the device's own files that follow the memory's.
    pub files: u32,
    /// Doorbells that follow the files, queue 0's first (none under
    /// vmm(4); see [`doorbell`]).
    pub doorbells: u32,
    /// What the device kind needs to know about them (for vioblk: the
    /// disk's path and format, encoded `VmDisk`).
    pub payload: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viodev_msg_round_trips_and_refuses_other_lengths() {
        let m = ViodevMsg {
            type_: VIODEV_MSG_IO_READ,
            reg: 0x214,
            io_sz: 4,
            vcpu: 0,
            irq: 5,
            state: INTR_STATE_DEASSERT,
            data: 0xdead_beef,
            data_valid: true,
        };
        let b = m.to_bytes();
        assert_eq!(ViodevMsg::from_bytes(&b).unwrap(), m);
        assert!(matches!(
            ViodevMsg::from_bytes(&b[..11]),
            Err(DevProcError::BadLength(11))
        ));
        let s = DevSetup {
            kind: 'd',
            vm_name: "vm".into(),
            vm_id: 3,
            irq: 5,
            ranges: vec![MemRange {
                gpa: 0,
                size: 0xa0000,
                kind: 0,
                has_fd: true,
            }],
            files: 2,
            doorbells: 1,
            payload: vec![1, 2, 3],
        };
        let enc = vmd_proto::codec::encode(&s).unwrap();
        assert_eq!(vmd_proto::codec::decode::<DevSetup>(&enc).unwrap(), s);
    }
}
