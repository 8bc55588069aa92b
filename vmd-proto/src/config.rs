//! The configuration vmd and vmctl share: the types a VM's parameters and
//! vm.conf's global settings are made of (they travel in
//! `vmop_create_params` and `IMSG_VMDOP_CONFIG`), the `VMOP_CREATE_*` and
//! `VMIFF_*` bits, and vmd.h's limits.  vm.conf's parser is vmd's
//! (`vmd::config`); vmctl builds the same types from its command line.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// Memory of a VM without `memory` (applied by the registry, vmd.h).
pub const VM_DEFAULT_MEMORY: u64 = 512 * 1024 * 1024;
/// `VMM_MAX_VM_MEM_SIZE`: the largest `memory`.
pub const VMM_MAX_VM_MEM_SIZE: i64 = 128 * 1024 * 1024 * 1024;
/// Disks and interfaces per VM (vmd.h).
pub const VM_MAX_DISKS_PER_VM: usize = 4;
pub const VM_MAX_NICS_PER_VM: usize = 4;
/// Name buffers: VM names (`VMM_MAX_NAME_LEN`), switch names of
/// interfaces (`VM_NAME_MAX`), interface names (`IF_NAMESIZE`).
pub const VMM_MAX_NAME_LEN: usize = 64;
pub const VM_NAME_MAX: usize = 64;
pub const IF_NAMESIZE: usize = 16;
/// `RT_TABLEID_MAX`.
pub const RT_TABLEID_MAX: i64 = 255;

/// `vmc_flags` / `vmc_insflags` bits (VMOP_CREATE_*).
pub const VMOP_CREATE_CPU: u32 = 0x01;
pub const VMOP_CREATE_KERNEL: u32 = 0x02;
pub const VMOP_CREATE_MEMORY: u32 = 0x04;
pub const VMOP_CREATE_NETWORK: u32 = 0x08;
pub const VMOP_CREATE_DISK: u32 = 0x10;
pub const VMOP_CREATE_CDROM: u32 = 0x20;
pub const VMOP_CREATE_INSTANCE: u32 = 0x40;

/// Interface and switch flags (VMIFF_*).
pub const VMIFF_UP: u32 = 0x01;
pub const VMIFF_LOCKED: u32 = 0x02;
pub const VMIFF_LOCAL: u32 = 0x04;
pub const VMIFF_RDOMAIN: u32 = 0x08;
/// The flags a switch passes on to its member interfaces.
pub const VMIFF_OPTMASK: u32 = VMIFF_LOCKED | VMIFF_LOCAL | VMIFF_RDOMAIN;

/// A user or group (`owner`, `socket owner`, `allow instance { owner }`):
/// `gid` -1 means no group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub uid: u32,
    pub gid: i64,
}

impl Default for Owner {
    fn default() -> Self {
        Owner { uid: 0, gid: -1 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum BootDevice {
    /// VMBOOTDEV_AUTO (0).
    #[default]
    Auto,
    /// VMBOOTDEV_DISK (1).
    Disk,
    /// VMBOOTDEV_CDROM (2).
    Cdrom,
    /// VMBOOTDEV_NET (3).
    Net,
}

impl BootDevice {
    pub fn value(self) -> u32 {
        match self {
            BootDevice::Auto => 0,
            BootDevice::Disk => 1,
            BootDevice::Cdrom => 2,
            BootDevice::Net => 3,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiskFormat {
    /// VMDF_RAW (1).
    Raw,
    /// VMDF_QCOW2 (2).
    Qcow2,
}

/// One NIC of a VM (`vmc_ifnames[i]`, `vmc_ifswitch[i]`, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// `tap` or `tapN`; `None` picks the next free tap.
    pub name: Option<String>,
    pub switch: Option<String>,
    pub group: Option<String>,
    pub rdomain: u32,
    /// All zero when not configured (the registry randomises it).
    pub lladdr: [u8; 6],
    /// VMIFF_* bits; VMIFF_UP by default.
    pub flags: u32,
}

impl Default for Interface {
    fn default() -> Self {
        Interface {
            name: None,
            switch: None,
            group: None,
            rdomain: 0,
            lladdr: [0; 6],
            flags: VMIFF_UP,
        }
    }
}

impl Interface {
    pub fn up(&self) -> bool {
        self.flags & VMIFF_UP != 0
    }
    pub fn locked(&self) -> bool {
        self.flags & VMIFF_LOCKED != 0
    }
    pub fn local(&self) -> bool {
        self.flags & VMIFF_LOCAL != 0
    }
    /// The rdomain, when one was configured.
    pub fn rdomain(&self) -> Option<u32> {
        (self.flags & VMIFF_RDOMAIN != 0).then_some(self.rdomain)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv4Prefix {
    pub addr: Ipv4Addr,
    pub len: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv6Prefix {
    pub addr: Ipv6Addr,
    pub len: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agentx {
    pub enabled: bool,
    pub path: String,
    pub context: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaggeredStart {
    /// `int` in vmd: the number is truncated to 32 bits, as there.
    pub parallelism: i32,
    /// Seconds.
    pub delay: i64,
}

/// The global part of vm.conf (`struct vmd_config` and the socket owner).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalConfig {
    /// `local prefix`, default 100.64.0.0/10.
    pub local_prefix: Ipv4Prefix,
    /// `local inet6`: IPv6 on local interfaces (VMD_CFG_INET6).
    pub inet6: bool,
    /// `local inet6 prefix`; `None` keeps the random fd00::/8 prefix vmd
    /// generates once at startup (VMD_CFG_AUTOINET6).
    pub local_prefix6: Option<Ipv6Prefix>,
    /// `socket owner`: uid and gid of the control socket, default 0:0.
    pub socket_uid: u32,
    pub socket_gid: u32,
    pub agentx: Agentx,
    /// `staggered start`; `None` means the defaults (online CPUs, 30 s).
    pub staggered_start: Option<StaggeredStart>,
}

impl Default for GlobalConfig {
    fn default() -> Self {
        GlobalConfig {
            local_prefix: Ipv4Prefix {
                addr: Ipv4Addr::new(100, 64, 0, 0),
                len: 10,
            },
            inet6: false,
            local_prefix6: None,
            socket_uid: 0,
            socket_gid: 0,
            agentx: Agentx {
                enabled: false,
                path: String::new(),
                context: String::new(),
            },
            staggered_start: None,
        }
    }
}
