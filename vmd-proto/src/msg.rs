//! The imsg catalogue (reference §3.6) and its payloads (§3.7).
//!
//! Types are numbered as in vmd.h (2026): proc.h's `IMSG_CTL_*` 0..=3, then
//! vmd.h's list from `IMSG_PROC_MAX` = 4 up to `IMSG_DEVOP_VIONET_MSG` = 42.
//! As in vmd the numbers are not a stable ABI: vmctl and vmd come from the
//! same tree.  Payloads are Rust-native serde structs that carry what the C
//! structures carry — names as `String`s instead of fixed `char` arrays,
//! lists as `Vec`s instead of array-plus-count, "none" as `Option` instead
//! of -1 — encoded by [`codec`].  Descriptors travel beside
//! the payload (the kernel fd with `START_VM_REQUEST`, disk and tap fds, the
//! pty with `START_VM_END`, ...), never inside it.
//!
//! [`Message`] pairs each type with its payload; [`ImsgChannel::send`] and
//! [`ImsgChannel::recv`] move them over a channel.

use std::net::IpAddr;
use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};

use super::codec::{self, CodecError};
use super::imsg::{Imsg, ImsgChannel, ImsgError};
use crate::config::{self, BootDevice, DiskFormat, GlobalConfig};

macro_rules! imsg_types {
    ($($(#[$doc:meta])* $name:ident = $num:literal, $cname:literal;)*) => {
        /// The imsg types, numbered as in vmd.h.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum ImsgType {
            $($(#[$doc])* $name = $num,)*
        }

        impl ImsgType {
            /// Every type, in numeric order.
            pub const ALL: &'static [ImsgType] = &[$(ImsgType::$name,)*];

            pub fn from_u32(n: u32) -> Option<ImsgType> {
                match n {
                    $($num => Some(ImsgType::$name),)*
                    _ => None,
                }
            }

            /// The C name, for log lines.
            pub fn name(self) -> &'static str {
                match self {
                    $(ImsgType::$name => $cname,)*
                }
            }
        }
    };
}

imsg_types! {
    CtlOk = 0, "IMSG_CTL_OK";
    CtlFail = 1, "IMSG_CTL_FAIL";
    CtlVerbose = 2, "IMSG_CTL_VERBOSE";
    CtlReset = 3, "IMSG_CTL_RESET";
    StartVmRequest = 4, "IMSG_VMDOP_START_VM_REQUEST";
    StartVmCdrom = 5, "IMSG_VMDOP_START_VM_CDROM";
    StartVmDisk = 6, "IMSG_VMDOP_START_VM_DISK";
    StartVmIf = 7, "IMSG_VMDOP_START_VM_IF";
    StartVmEnd = 8, "IMSG_VMDOP_START_VM_END";
    StartVmResponse = 9, "IMSG_VMDOP_START_VM_RESPONSE";
    PauseVm = 10, "IMSG_VMDOP_PAUSE_VM";
    PauseVmResponse = 11, "IMSG_VMDOP_PAUSE_VM_RESPONSE";
    UnpauseVm = 12, "IMSG_VMDOP_UNPAUSE_VM";
    UnpauseVmResponse = 13, "IMSG_VMDOP_UNPAUSE_VM_RESPONSE";
    WaitVmRequest = 14, "IMSG_VMDOP_WAIT_VM_REQUEST";
    TerminateVmRequest = 15, "IMSG_VMDOP_TERMINATE_VM_REQUEST";
    TerminateVmResponse = 16, "IMSG_VMDOP_TERMINATE_VM_RESPONSE";
    TerminateVmEvent = 17, "IMSG_VMDOP_TERMINATE_VM_EVENT";
    GetInfoVmRequest = 18, "IMSG_VMDOP_GET_INFO_VM_REQUEST";
    GetInfoVmData = 19, "IMSG_VMDOP_GET_INFO_VM_DATA";
    GetInfoVmEndData = 20, "IMSG_VMDOP_GET_INFO_VM_END_DATA";
    Load = 21, "IMSG_VMDOP_LOAD";
    ReceiveVmmFd = 22, "IMSG_VMDOP_RECEIVE_VMM_FD";
    ReceivePspFd = 23, "IMSG_VMDOP_RECEIVE_PSP_FD";
    Reload = 24, "IMSG_VMDOP_RELOAD";
    PrivIfdescr = 25, "IMSG_VMDOP_PRIV_IFDESCR";
    PrivIfadd = 26, "IMSG_VMDOP_PRIV_IFADD";
    PrivIfexists = 27, "IMSG_VMDOP_PRIV_IFEXISTS";
    PrivIfup = 28, "IMSG_VMDOP_PRIV_IFUP";
    PrivIfdown = 29, "IMSG_VMDOP_PRIV_IFDOWN";
    PrivIfgroup = 30, "IMSG_VMDOP_PRIV_IFGROUP";
    PrivIfaddr = 31, "IMSG_VMDOP_PRIV_IFADDR";
    PrivIfaddr6 = 32, "IMSG_VMDOP_PRIV_IFADDR6";
    PrivIfrdomain = 33, "IMSG_VMDOP_PRIV_IFRDOMAIN";
    PrivGetAddr = 34, "IMSG_VMDOP_PRIV_GET_ADDR";
    PrivGetAddrResponse = 35, "IMSG_VMDOP_PRIV_GET_ADDR_RESPONSE";
    VmShutdown = 36, "IMSG_VMDOP_VM_SHUTDOWN";
    VmReboot = 37, "IMSG_VMDOP_VM_REBOOT";
    Config = 38, "IMSG_VMDOP_CONFIG";
    Done = 39, "IMSG_VMDOP_DONE";
    DevHostmac = 40, "IMSG_DEVOP_HOSTMAC";
    DevMsg = 41, "IMSG_DEVOP_MSG";
    DevVionetMsg = 42, "IMSG_DEVOP_VIONET_MSG";
}

/// `vmop_id.vid_flags`: stop at once (SIGTERM, then SIGKILL).
pub const VMOP_FORCE: u32 = 0x01;
/// `vmop_id.vid_flags`: answer only when the VM has stopped.
pub const VMOP_WAIT: u32 = 0x02;

/// `IMSG_CTL_RESET` modes.
pub const CONFIG_RELOAD: u32 = 0x00;
pub const CONFIG_VMS: u32 = 0x01;
pub const CONFIG_SWITCHES: u32 = 0x02;
pub const CONFIG_ALL: u32 = 0xff;

/// The peer id of agentx's info requests.
pub const IMSG_AGENTX_PEERID: u32 = u32::MAX - 1;

/// `vmr_result` codes beyond errno values.
pub const VMD_BIOS_MISSING: i32 = 1001;
pub const VMD_DISK_MISSING: i32 = 1002;
pub const VMD_DISK_INVALID: i32 = 1003;
pub const VMD_VM_STOP_INVALID: i32 = 1004;
pub const VMD_CDROM_MISSING: i32 = 1005;
pub const VMD_CDROM_INVALID: i32 = 1006;
pub const VMD_PARENT_INVALID: i32 = 1007;

/// `vir_state` bits.
pub const VM_STATE_RUNNING: u32 = 0x01;
pub const VM_STATE_DISABLED: u32 = 0x02;
pub const VM_STATE_SHUTDOWN: u32 = 0x04;
pub const VM_STATE_PAUSED: u32 = 0x10;
pub const VM_STATE_WAITING: u32 = 0x20;

/// `struct vmop_result`: the answer to start, pause, unpause, terminate,
/// and the exit event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmopResult {
    /// 0, an errno value, or a `VMD_*` code.
    pub result: i32,
    pub id: u32,
    pub pid: i32,
    /// The VM's console, e.g. `/dev/ttyp3`; empty when none.
    pub ttyname: String,
}

/// `struct vmop_id`: a VM named by id or name (an id of 0 means "by
/// name").
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmopId {
    pub id: u32,
    pub name: String,
    /// The requesting user, stamped by the control process.
    pub uid: u32,
    /// [`VMOP_FORCE`], [`VMOP_WAIT`].
    pub flags: u32,
}

/// `struct vmop_owner`; `gid` `None` is C's -1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmopOwner {
    pub uid: u32,
    pub gid: Option<u32>,
}

impl From<config::Owner> for VmopOwner {
    fn from(o: config::Owner) -> Self {
        VmopOwner {
            uid: o.uid,
            gid: u32::try_from(o.gid).ok(),
        }
    }
}

/// `struct vmop_info_result` (the flattened 2026 form): one VM in
/// `vmctl status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmopInfoResult {
    /// Bytes.
    pub memory_size: u64,
    /// Bytes resident.
    pub used_size: u64,
    pub ncpus: u32,
    /// `VCPU_STATE_*` of each vCPU.
    pub vcpu_state: Vec<u8>,
    pub creator_pid: i32,
    pub id: u32,
    pub name: String,
    pub ttyname: String,
    pub uid: u32,
    pub gid: Option<u32>,
    /// `VM_STATE_*` bits.
    pub state: u32,
}

/// One disk of a VM (`vmc_disks[i]`, `vmc_disktypes[i]`,
/// `vmc_diskbases[i]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmDisk {
    pub path: String,
    pub format: DiskFormat,
    /// Backing images opened after the disk (qcow2, at most 4); each
    /// arrives as its own `START_VM_DISK` fd.
    pub bases: u32,
}

/// `struct vmop_create_params`: a VM to start, from vm.conf or `vmctl
/// start`.  The boot image itself travels as the fd of
/// `START_VM_REQUEST`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmopCreateParams {
    /// 0 until the parent assigns one.
    pub id: u32,
    pub name: String,
    pub owner: VmopOwner,
    /// `VMOP_CREATE_*` ([`config::VMOP_CREATE_CPU`], ...): what the request
    /// sets.
    pub flags: u32,
    /// `VMOP_CREATE_*`: resources to access-check for the requester.
    pub checkaccess: u32,
    pub ncpus: u32,
    /// Guest memory in bytes (`vmc_memranges[0].vmr_size` before the VM
    /// process lays out the map).
    pub memory: u64,
    pub sev: bool,
    pub seves: bool,
    /// The boot image's path, for messages; `None` boots vmm-bios.
    pub kernel: Option<String>,
    pub boot_device: BootDevice,
    pub disks: Vec<VmDisk>,
    pub cdrom: Option<String>,
    /// `vmc_ifnames`, `vmc_ifswitch`, `vmc_ifgroup`, `vmc_ifrdomain`,
    /// `vmc_macs`, `vmc_ifflags`.
    pub interfaces: Vec<config::Interface>,
    /// `vmc_instance`: the VM this one is an instance of.
    pub instance: Option<String>,
    pub insowner: VmopOwner,
    /// `VMOP_CREATE_*` an instance may change.
    pub insflags: u32,
}

/// A disk or backing-image fd for the vmm process (`START_VM_DISK`; C
/// sends only the index and relies on the order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskFd {
    /// Disk index in [`VmopCreateParams::disks`].
    pub index: u32,
    /// 0 for the disk image, 1.. for its backing images in order.
    pub base: u32,
}

/// `struct vmop_ifreq`, for the priv process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmopIfreq {
    pub id: u32,
    /// The tap or bridge interface.
    pub name: String,
    /// Description, bridge, group or rdomain, by message type.
    pub value: String,
    pub addr: Option<IpAddr>,
    pub mask: Option<IpAddr>,
}

/// `struct vmop_addr_req`: the MAC of a VM's tap (its fd attached).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmopAddrReq {
    pub vmid: u32,
    pub nic_idx: u32,
}

/// `struct vmop_addr_result`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmopAddrResult {
    pub vmid: u32,
    pub nic_idx: u32,
    pub addr: [u8; 6],
}

/// `viodev_msg.type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ViodevMsgType {
    #[default]
    Invalid,
    Ready,
    Error,
    Kick,
    IoRead,
    IoWrite,
    Dump,
    Shutdown,
}

/// `viodev_msg.state`: `INTR_STATE_ASSERT` 1, `NOOP` 0, `DEASSERT` -1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IntrState {
    Assert,
    #[default]
    Noop,
    Deassert,
}

/// `struct viodev_msg`: VM process <-> device process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViodevMsg {
    pub type_: ViodevMsgType,
    /// The virtio register.
    pub reg: u16,
    pub io_sz: u8,
    pub vcpu: u8,
    pub irq: u8,
    pub state: IntrState,
    /// `data` when `data_valid`.
    pub data: Option<u32>,
    /// Virtqueue index (2026).
    pub vq_idx: u16,
}

/// A message of the catalogue with its payload.  Descriptors are not
/// part of it (see [`Received::fds`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    CtlOk,
    /// Optional errno.
    CtlFail(Option<i32>),
    /// Log verbosity.
    CtlVerbose(i32),
    /// [`CONFIG_ALL`], [`CONFIG_VMS`], [`CONFIG_SWITCHES`].
    CtlReset(u32),
    /// With the boot image fd, if any.
    StartVmRequest(VmopCreateParams),
    /// With the ISO fd.
    StartVmCdrom,
    /// With a disk or backing-image fd.
    StartVmDisk(DiskFd),
    /// NIC index, with the tap fd.
    StartVmIf(u32),
    /// With the pty fd; the vmm process starts the VM.
    StartVmEnd,
    StartVmResponse(VmopResult),
    PauseVm(VmopId),
    PauseVmResponse(VmopResult),
    UnpauseVm(VmopId),
    UnpauseVmResponse(VmopResult),
    WaitVmRequest(VmopId),
    TerminateVmRequest(VmopId),
    TerminateVmResponse(VmopResult),
    /// The VM exited; `result` is its status.
    TerminateVmEvent(VmopResult),
    /// `None` asks for every VM.
    GetInfoVmRequest(Option<VmopId>),
    GetInfoVmData(VmopInfoResult),
    GetInfoVmEndData,
    /// Path of a configuration file to load.
    Load(String),
    /// With the `/dev/vmm` fd.
    ReceiveVmmFd,
    /// With the `/dev/psp` fd.
    ReceivePspFd,
    Reload,
    PrivIfdescr(VmopIfreq),
    PrivIfadd(VmopIfreq),
    PrivIfexists(VmopIfreq),
    PrivIfup(VmopIfreq),
    PrivIfdown(VmopIfreq),
    PrivIfgroup(VmopIfreq),
    PrivIfaddr(VmopIfreq),
    PrivIfaddr6(VmopIfreq),
    PrivIfrdomain(VmopIfreq),
    /// With the tap fd.
    PrivGetAddr(VmopAddrReq),
    PrivGetAddrResponse(VmopAddrResult),
    VmShutdown,
    VmReboot,
    /// `struct vmd_config`: the global part of vm.conf.
    Config(GlobalConfig),
    Done,
    /// The host side's MAC, for vionet's DHCP server.
    DevHostmac([u8; 6]),
    DevMsg(ViodevMsg),
    /// vionet's own messages on the same structure.
    DevVionetMsg(ViodevMsg),
}

impl Message {
    pub fn imsg_type(&self) -> ImsgType {
        use ImsgType as T;
        match self {
            Message::CtlOk => T::CtlOk,
            Message::CtlFail(_) => T::CtlFail,
            Message::CtlVerbose(_) => T::CtlVerbose,
            Message::CtlReset(_) => T::CtlReset,
            Message::StartVmRequest(_) => T::StartVmRequest,
            Message::StartVmCdrom => T::StartVmCdrom,
            Message::StartVmDisk(_) => T::StartVmDisk,
            Message::StartVmIf(_) => T::StartVmIf,
            Message::StartVmEnd => T::StartVmEnd,
            Message::StartVmResponse(_) => T::StartVmResponse,
            Message::PauseVm(_) => T::PauseVm,
            Message::PauseVmResponse(_) => T::PauseVmResponse,
            Message::UnpauseVm(_) => T::UnpauseVm,
            Message::UnpauseVmResponse(_) => T::UnpauseVmResponse,
            Message::WaitVmRequest(_) => T::WaitVmRequest,
            Message::TerminateVmRequest(_) => T::TerminateVmRequest,
            Message::TerminateVmResponse(_) => T::TerminateVmResponse,
            Message::TerminateVmEvent(_) => T::TerminateVmEvent,
            Message::GetInfoVmRequest(_) => T::GetInfoVmRequest,
            Message::GetInfoVmData(_) => T::GetInfoVmData,
            Message::GetInfoVmEndData => T::GetInfoVmEndData,
            Message::Load(_) => T::Load,
            Message::ReceiveVmmFd => T::ReceiveVmmFd,
            Message::ReceivePspFd => T::ReceivePspFd,
            Message::Reload => T::Reload,
            Message::PrivIfdescr(_) => T::PrivIfdescr,
            Message::PrivIfadd(_) => T::PrivIfadd,
            Message::PrivIfexists(_) => T::PrivIfexists,
            Message::PrivIfup(_) => T::PrivIfup,
            Message::PrivIfdown(_) => T::PrivIfdown,
            Message::PrivIfgroup(_) => T::PrivIfgroup,
            Message::PrivIfaddr(_) => T::PrivIfaddr,
            Message::PrivIfaddr6(_) => T::PrivIfaddr6,
            Message::PrivIfrdomain(_) => T::PrivIfrdomain,
            Message::PrivGetAddr(_) => T::PrivGetAddr,
            Message::PrivGetAddrResponse(_) => T::PrivGetAddrResponse,
            Message::VmShutdown => T::VmShutdown,
            Message::VmReboot => T::VmReboot,
            Message::Config(_) => T::Config,
            Message::Done => T::Done,
            Message::DevHostmac(_) => T::DevHostmac,
            Message::DevMsg(_) => T::DevMsg,
            Message::DevVionetMsg(_) => T::DevVionetMsg,
        }
    }

    /// The payload bytes (empty for types without one).
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        use codec::encode;
        match self {
            Message::CtlOk
            | Message::StartVmCdrom
            | Message::StartVmEnd
            | Message::GetInfoVmEndData
            | Message::ReceiveVmmFd
            | Message::ReceivePspFd
            | Message::Reload
            | Message::VmShutdown
            | Message::VmReboot
            | Message::Done => Ok(Vec::new()),
            Message::CtlFail(p) => encode(p),
            Message::CtlVerbose(p) => encode(p),
            Message::CtlReset(p) | Message::StartVmIf(p) => encode(p),
            Message::StartVmRequest(p) => encode(p),
            Message::StartVmDisk(p) => encode(p),
            Message::StartVmResponse(p)
            | Message::PauseVmResponse(p)
            | Message::UnpauseVmResponse(p)
            | Message::TerminateVmResponse(p)
            | Message::TerminateVmEvent(p) => encode(p),
            Message::PauseVm(p)
            | Message::UnpauseVm(p)
            | Message::WaitVmRequest(p)
            | Message::TerminateVmRequest(p) => encode(p),
            Message::GetInfoVmRequest(p) => encode(p),
            Message::GetInfoVmData(p) => encode(p),
            Message::Load(p) => encode(p),
            Message::PrivIfdescr(p)
            | Message::PrivIfadd(p)
            | Message::PrivIfexists(p)
            | Message::PrivIfup(p)
            | Message::PrivIfdown(p)
            | Message::PrivIfgroup(p)
            | Message::PrivIfaddr(p)
            | Message::PrivIfaddr6(p)
            | Message::PrivIfrdomain(p) => encode(p),
            Message::PrivGetAddr(p) => encode(p),
            Message::PrivGetAddrResponse(p) => encode(p),
            Message::Config(p) => encode(p),
            Message::DevHostmac(p) => encode(p),
            Message::DevMsg(p) | Message::DevVionetMsg(p) => encode(p),
        }
    }

    /// Decodes the payload of a message of type `t`; types without a
    /// payload must have none.
    pub fn decode(t: ImsgType, data: &[u8]) -> Result<Message, CodecError> {
        use codec::decode as d;
        use ImsgType as T;
        let empty = |m: Message| {
            if data.is_empty() {
                Ok(m)
            } else {
                Err(CodecError::Trailing(data.len()))
            }
        };
        Ok(match t {
            T::CtlOk => empty(Message::CtlOk)?,
            T::CtlFail => Message::CtlFail(d(data)?),
            T::CtlVerbose => Message::CtlVerbose(d(data)?),
            T::CtlReset => Message::CtlReset(d(data)?),
            T::StartVmRequest => Message::StartVmRequest(d(data)?),
            T::StartVmCdrom => empty(Message::StartVmCdrom)?,
            T::StartVmDisk => Message::StartVmDisk(d(data)?),
            T::StartVmIf => Message::StartVmIf(d(data)?),
            T::StartVmEnd => empty(Message::StartVmEnd)?,
            T::StartVmResponse => Message::StartVmResponse(d(data)?),
            T::PauseVm => Message::PauseVm(d(data)?),
            T::PauseVmResponse => Message::PauseVmResponse(d(data)?),
            T::UnpauseVm => Message::UnpauseVm(d(data)?),
            T::UnpauseVmResponse => Message::UnpauseVmResponse(d(data)?),
            T::WaitVmRequest => Message::WaitVmRequest(d(data)?),
            T::TerminateVmRequest => Message::TerminateVmRequest(d(data)?),
            T::TerminateVmResponse => Message::TerminateVmResponse(d(data)?),
            T::TerminateVmEvent => Message::TerminateVmEvent(d(data)?),
            T::GetInfoVmRequest => Message::GetInfoVmRequest(d(data)?),
            T::GetInfoVmData => Message::GetInfoVmData(d(data)?),
            T::GetInfoVmEndData => empty(Message::GetInfoVmEndData)?,
            T::Load => Message::Load(d(data)?),
            T::ReceiveVmmFd => empty(Message::ReceiveVmmFd)?,
            T::ReceivePspFd => empty(Message::ReceivePspFd)?,
            T::Reload => empty(Message::Reload)?,
            T::PrivIfdescr => Message::PrivIfdescr(d(data)?),
            T::PrivIfadd => Message::PrivIfadd(d(data)?),
            T::PrivIfexists => Message::PrivIfexists(d(data)?),
            T::PrivIfup => Message::PrivIfup(d(data)?),
            T::PrivIfdown => Message::PrivIfdown(d(data)?),
            T::PrivIfgroup => Message::PrivIfgroup(d(data)?),
            T::PrivIfaddr => Message::PrivIfaddr(d(data)?),
            T::PrivIfaddr6 => Message::PrivIfaddr6(d(data)?),
            T::PrivIfrdomain => Message::PrivIfrdomain(d(data)?),
            T::PrivGetAddr => Message::PrivGetAddr(d(data)?),
            T::PrivGetAddrResponse => Message::PrivGetAddrResponse(d(data)?),
            T::VmShutdown => empty(Message::VmShutdown)?,
            T::VmReboot => empty(Message::VmReboot)?,
            T::Config => Message::Config(d(data)?),
            T::Done => empty(Message::Done)?,
            T::DevHostmac => Message::DevHostmac(d(data)?),
            T::DevMsg => Message::DevMsg(d(data)?),
            T::DevVionetMsg => Message::DevVionetMsg(d(data)?),
        })
    }
}

/// A decoded message with its header fields and descriptors.
#[derive(Debug)]
pub struct Received {
    pub msg: Message,
    pub peerid: u32,
    pub pid: u32,
    pub fds: Vec<OwnedFd>,
}

impl TryFrom<Imsg> for Received {
    type Error = ImsgError;

    fn try_from(imsg: Imsg) -> Result<Received, ImsgError> {
        let t = ImsgType::from_u32(imsg.hdr.type_).ok_or(ImsgError::UnknownType(imsg.hdr.type_))?;
        let msg = Message::decode(t, &imsg.data).map_err(|source| ImsgError::Payload {
            type_name: t.name(),
            source,
        })?;
        Ok(Received {
            msg,
            peerid: imsg.hdr.peerid,
            pid: imsg.hdr.pid,
            fds: imsg.fds,
        })
    }
}

impl ImsgChannel {
    /// Queues `msg`; [`flush`](ImsgChannel::flush) writes it.
    pub fn compose_msg(
        &mut self,
        msg: &Message,
        peerid: u32,
        pid: u32,
        fds: Vec<OwnedFd>,
    ) -> Result<(), ImsgError> {
        let t = msg.imsg_type();
        let data = msg.encode().map_err(|source| ImsgError::Payload {
            type_name: t.name(),
            source,
        })?;
        self.compose(t as u32, peerid, pid, &data, fds)
    }

    /// Sends `msg` with peer id 0, no descriptors, and flushes.
    pub fn send(&mut self, msg: &Message) -> Result<(), ImsgError> {
        self.send_with(msg, 0, 0, Vec::new())
    }

    /// Sends `msg` with a peer id, pid (0: this process) and descriptors,
    /// and flushes.
    pub fn send_with(
        &mut self,
        msg: &Message,
        peerid: u32,
        pid: u32,
        fds: Vec<OwnedFd>,
    ) -> Result<(), ImsgError> {
        self.compose_msg(msg, peerid, pid, fds)?;
        self.flush()
    }

    /// The next message, reading as needed.  Meant for blocking sockets;
    /// on a non-blocking one it fails with `WouldBlock` when no complete
    /// message is buffered (event loops use
    /// [`read_ready`](ImsgChannel::read_ready) and [`Received::try_from`]).
    pub fn recv(&mut self) -> Result<Received, ImsgError> {
        loop {
            if let Some(imsg) = self.get()? {
                return Received::try_from(imsg);
            }
            if self.fill()? == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::WouldBlock).into());
            }
        }
    }
}
