//! The parent's side of network configuration (priv.c's
//! `vm_priv_ifconfig` and `vm_priv_brconfig`, and vm.c's
//! `IMSG_VMDOP_PRIV_GET_ADDR` request): the priv requests for a VM's
//! taps once the VM runs, and for vm.conf's switches when the
//! configuration is loaded, in vmd's order.  The requests are built from
//! the parent's own records only (its configuration, the VM's parameters
//! and the tap names it opened itself), never from what a VM or the vmm
//! process says.
//!
//! Entry points:
//! - [`configure_vm_interfaces`]: after `START_VM_RESPONSE` (vmd.c calls
//!   `vm_priv_ifconfig` there), with the names of the taps the parent
//!   opened for the VM, NIC by NIC;
//! - [`configure_switches`]: after a configuration is loaded or reloaded
//!   (`vmd_configure`, `vmd_reload`), for the switches not yet set up;
//! - [`request_tap_lladdr`]: per NIC when the tap is sent to the vmm
//!   process (`config_setvm`), to learn the tap's MAC for vionet's DHCP
//!   server; the answer comes back as `PRIV_GET_ADDR_RESPONSE`.
//!
//! The builders ([`vm_ifconfig`], [`switch_brconfig`]) are pure, so the
//! order and contents are unit-tested.
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::OwnedFd;

use crate::config::Switch;
use vmd_proto::config::{GlobalConfig, Interface, Ipv4Prefix, Ipv6Prefix, VMIFF_OPTMASK};
use vmd_proto::config::{VMIFF_RDOMAIN, VMIFF_UP, VM_NAME_MAX};
use vmd_proto::msg::{VmopAddrReq, VmopIfreq};
use vmd_proto::{ImsgChannel, ImsgError, Message};

#[derive(Debug, thiserror::Error)]
pub enum NetcfgError {
    #[error("vm {vmid} interface {idx}: no tap")]
    NoTap { vmid: u32, idx: usize },
    #[error("vm {vmid} interface {idx}: dhcp address range exceeded")]
    AddressRange { vmid: u32, idx: usize },
    #[error("cannot send to priv: {0}")]
    Send(#[from] ImsgError),
}

/// `vm_priv_addr` (priv.c): the host side (`is_vm` false) or the guest
/// side of VM `vmid`'s interface `idx` in the local prefix: 100.64.N.M/31
/// with N the VM id and M = (idx + 1) * 2 (+1 for the guest).  `None`
/// when it leaves the prefix or idx ≥ 127.  net/local.rs (the DHCP side)
/// has the same rule; this copy is meant to give way to it.
pub fn vm_priv_addr(prefix: &Ipv4Prefix, vmid: u32, idx: usize, is_vm: bool) -> Option<Ipv4Addr> {
    if idx >= 0x7f {
        return None;
    }
    let mut addr = vmid.wrapping_shl(8) | ((idx as u32 + 1) * 2);
    if is_vm {
        addr += 1;
    }
    let net = u32::from(prefix.addr);
    let mask = match prefix.len {
        0 => 0,
        l if l >= 32 => u32::MAX,
        l => u32::MAX << (32 - u32::from(l)),
    };
    let addr = addr | net;
    (addr & mask == net).then_some(Ipv4Addr::from(addr))
}

/// `vm_priv_addr6`: the IPv6 prefix with the guest's IPv4 address in
/// bytes 8..12 and 1 (host) or 2 (guest) last: a /96 per interface.
pub fn vm_priv_addr6(
    prefix4: &Ipv4Prefix,
    prefix6: &Ipv6Prefix,
    vmid: u32,
    idx: usize,
    is_vm: bool,
) -> Option<Ipv6Addr> {
    let guest4 = vm_priv_addr(prefix4, vmid, idx, true)?;
    let mut a = prefix6.addr.octets();
    a[8..12].copy_from_slice(&guest4.octets());
    a[15] = if is_vm { 2 } else { 1 };
    Some(Ipv6Addr::from(a))
}

/// vmd's description buffer (`vfr_value`, VM_NAME_MAX bytes with the NUL):
/// "Description can be truncated".
fn truncate_descr(mut s: String) -> String {
    while s.len() >= VM_NAME_MAX {
        s.pop();
    }
    s
}

fn ifreq(name: &str, id: u32, value: &str) -> VmopIfreq {
    VmopIfreq {
        id,
        name: name.to_string(),
        value: value.to_string(),
        addr: None,
        mask: None,
    }
}

/// `vm_register`: a NIC on a switch inherits the switch's `locked
/// lladdr` (and its local and rdomain flags).  For the parent to apply to
/// a VM's parameters before they go to the vmm process.
pub fn inherit_switch_flags(ifs: &mut [Interface], switches: &[Switch]) {
    for i in ifs.iter_mut() {
        if let Some(sw) = i
            .switch
            .as_deref()
            .and_then(|n| switch_by_name(switches, n))
        {
            i.flags |= sw.flags & VMIFF_OPTMASK;
        }
    }
}

fn switch_by_name<'a>(switches: &'a [Switch], name: &str) -> Option<&'a Switch> {
    switches.iter().find(|s| s.name == name)
}

/// `vm_priv_ifconfig`: the priv requests for VM `vmid` (`vmname`), whose
/// interface `i` is the tap `taps[i]`, in vmd's order per NIC:
/// description `vm<id>-if<idx>-<name>`; the switch's `IFADD`; the rdomain
/// (the interface's, else the switch's, else 0); the interface's group,
/// then the switch's; up or down; and for a local interface its host
/// address (/31) and, with `local inet6`, its IPv6 address (/96).
pub fn vm_ifconfig(
    global: &GlobalConfig,
    switches: &[Switch],
    vmid: u32,
    vmname: &str,
    ifs: &[Interface],
    taps: &[String],
) -> Result<Vec<Message>, NetcfgError> {
    let mut out = Vec::new();
    for (i, nic) in ifs.iter().enumerate() {
        let Some(tap) = taps.get(i) else {
            return Err(NetcfgError::NoTap { vmid, idx: i });
        };
        let descr = truncate_descr(format!("vm{vmid}-if{i}-{vmname}"));
        log::debug!("vm_priv_ifconfig: interface {tap} description {descr}");
        out.push(Message::PrivIfdescr(ifreq(tap, 0, &descr)));
        let sw = nic
            .switch
            .as_deref()
            .and_then(|n| switch_by_name(switches, n));
        if let (None, Some(name)) = (sw, nic.switch.as_deref()) {
            log::warn!("switch \"{name}\" not found");
        }
        let mut rdomain = 0;
        if let Some(sw) = sw {
            log::debug!(
                "vm_priv_ifconfig: switch \"{}\" interface {} add {tap}",
                sw.name,
                sw.ifname
            );
            out.push(Message::PrivIfadd(ifreq(&sw.ifname, 0, tap)));
            if sw.flags & VMIFF_RDOMAIN != 0 {
                rdomain = sw.rdomain;
            }
        }
        if let Some(r) = nic.rdomain() {
            rdomain = r;
        }
        if rdomain != 0 {
            log::debug!("vm_priv_ifconfig: interface {tap} rdomain {rdomain}");
        }
        out.push(Message::PrivIfrdomain(ifreq(tap, rdomain, "")));
        for g in [nic.group.as_deref(), sw.and_then(|s| s.group.as_deref())]
            .into_iter()
            .flatten()
        {
            log::debug!("vm_priv_ifconfig: interface {tap} group {g}");
            out.push(Message::PrivIfgroup(ifreq(tap, rdomain, g)));
        }
        out.push(if nic.flags & VMIFF_UP != 0 {
            Message::PrivIfup(ifreq(tap, rdomain, ""))
        } else {
            Message::PrivIfdown(ifreq(tap, rdomain, ""))
        });
        if nic.local() {
            let addr = vm_priv_addr(&global.local_prefix, vmid, i, false)
                .ok_or(NetcfgError::AddressRange { vmid, idx: i })?;
            log::debug!("vm_priv_ifconfig: interface {tap} address {addr}/31");
            out.push(Message::PrivIfaddr(VmopIfreq {
                addr: Some(IpAddr::V4(addr)),
                mask: Some(IpAddr::V4(Ipv4Addr::new(255, 255, 255, 254))),
                ..ifreq(tap, rdomain, "")
            }));
            if global.inet6 {
                match global.local_prefix6 {
                    Some(p6) => {
                        let a6 = vm_priv_addr6(&global.local_prefix, &p6, vmid, i, false)
                            .ok_or(NetcfgError::AddressRange { vmid, idx: i })?;
                        log::debug!("vm_priv_ifconfig: interface {tap} address {a6}/96");
                        out.push(Message::PrivIfaddr6(VmopIfreq {
                            addr: Some(IpAddr::V6(a6)),
                            mask: Some(IpAddr::V6(Ipv6Addr::from(u128::MAX << 32))),
                            ..ifreq(tap, rdomain, "")
                        }));
                    }
                    None => log::warn!(
                        "vm_priv_ifconfig: interface {tap}: local inet6 without a prefix yet"
                    ),
                }
            }
        }
    }
    Ok(out)
}

/// `vm_priv_brconfig`: the switch's bridge or veb must exist (created if
/// not), gets its rdomain, description `switch<N>-<name>` and up/down.
pub fn switch_brconfig(sw: &Switch) -> Vec<Message> {
    let rdomain = if sw.flags & VMIFF_RDOMAIN != 0 {
        sw.rdomain
    } else {
        0
    };
    let descr = truncate_descr(format!("switch{}-{}", sw.id, sw.name));
    log::debug!(
        "vm_priv_brconfig: interface {} description {descr}",
        sw.ifname
    );
    vec![
        Message::PrivIfexists(ifreq(&sw.ifname, 0, "")),
        Message::PrivIfrdomain(ifreq(&sw.ifname, rdomain, "")),
        Message::PrivIfdescr(ifreq(&sw.ifname, rdomain, &descr)),
        if sw.flags & VMIFF_UP != 0 {
            Message::PrivIfup(ifreq(&sw.ifname, rdomain, &descr))
        } else {
            Message::PrivIfdown(ifreq(&sw.ifname, rdomain, &descr))
        },
    ]
}

fn post(privc: &mut ImsgChannel, msgs: Vec<Message>) -> Result<(), NetcfgError> {
    for m in msgs {
        privc.compose_msg(&m, super::NO_PEER, 0, Vec::new())?;
    }
    privc.flush()?;
    Ok(())
}

/// Sends [`vm_ifconfig`]'s requests to priv.  On error nothing is sent
/// (vmd then ends the VM: "failed to configure vm").
pub fn configure_vm_interfaces(
    privc: &mut ImsgChannel,
    global: &GlobalConfig,
    switches: &[Switch],
    vmid: u32,
    vmname: &str,
    ifs: &[Interface],
    taps: &[String],
) -> Result<(), NetcfgError> {
    let msgs = vm_ifconfig(global, switches, vmid, vmname, ifs, taps)?;
    post(privc, msgs)
}

/// Sends [`switch_brconfig`] for each switch whose interface is not in
/// `running` yet (`sw_running`), and records it there.
pub fn configure_switches(
    privc: &mut ImsgChannel,
    switches: &[Switch],
    running: &mut HashSet<String>,
) -> Result<(), NetcfgError> {
    for sw in switches {
        if running.contains(&sw.ifname) {
            continue;
        }
        post(privc, switch_brconfig(sw))?;
        running.insert(sw.ifname.clone());
    }
    Ok(())
}

/// `IMSG_VMDOP_PRIV_GET_ADDR` for NIC `nic_idx` of VM `vmid`, with a
/// duplicate of its tap's descriptor (priv reads the MAC through it).
pub fn request_tap_lladdr(
    privc: &mut ImsgChannel,
    vmid: u32,
    nic_idx: u32,
    tap: OwnedFd,
) -> Result<(), NetcfgError> {
    privc.compose_msg(
        &Message::PrivGetAddr(VmopAddrReq { vmid, nic_idx }),
        vmid,
        0,
        vec![tap],
    )?;
    privc.flush()?;
    Ok(())
}
