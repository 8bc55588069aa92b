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
/// when it leaves the prefix or idx ≥ 127.  The rule is
/// [`crate::net::local`]'s, which vionet's DHCP server uses too.
pub fn vm_priv_addr(prefix: &Ipv4Prefix, vmid: u32, idx: usize, is_vm: bool) -> Option<Ipv4Addr> {
    crate::net::local::vm_priv_addr(prefix, vmid, idx, is_vm).ok()
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
    crate::net::local::vm_priv_addr6(prefix4, prefix6, vmid, idx, is_vm).ok()
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
/// a VM's parameters before they go to the vmm process.  The switch's
/// rdomain comes with its flag unless the NIC has its own, so that
/// [`vm_ifconfig`] gives the same rdomain before and after.
pub fn inherit_switch_flags(ifs: &mut [Interface], switches: &[Switch]) {
    for i in ifs.iter_mut() {
        if let Some(sw) = i
            .switch
            .as_deref()
            .and_then(|n| switch_by_name(switches, n))
        {
            if sw.flags & VMIFF_RDOMAIN != 0 && i.flags & VMIFF_RDOMAIN == 0 {
                i.rdomain = sw.rdomain;
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use vmd_proto::config::{VMIFF_LOCAL, VMIFF_LOCKED};

    fn switch(id: u32, name: &str, ifname: &str) -> Switch {
        Switch {
            id,
            name: name.into(),
            ifname: ifname.into(),
            flags: VMIFF_UP,
            ..Switch::default()
        }
    }

    fn inet6_config() -> GlobalConfig {
        GlobalConfig {
            inet6: true,
            local_prefix6: Some(Ipv6Prefix {
                addr: "fd00::".parse().unwrap(),
                len: 64,
            }),
            ..GlobalConfig::default()
        }
    }

    fn nic() -> Interface {
        Interface::default()
    }

    /// (type, name, value, id) of each request, to compare orders.
    fn summary(msgs: &[Message]) -> Vec<(&'static str, String, String, u32)> {
        msgs.iter()
            .map(|m| {
                let v = match m {
                    Message::PrivIfdescr(v)
                    | Message::PrivIfadd(v)
                    | Message::PrivIfexists(v)
                    | Message::PrivIfup(v)
                    | Message::PrivIfdown(v)
                    | Message::PrivIfgroup(v)
                    | Message::PrivIfaddr(v)
                    | Message::PrivIfaddr6(v)
                    | Message::PrivIfrdomain(v) => v,
                    other => panic!("not a priv request: {other:?}"),
                };
                let t = m.imsg_type().name().trim_start_matches("IMSG_VMDOP_PRIV_");
                (t, v.name.clone(), v.value.clone(), v.id)
            })
            .collect()
    }

    #[test]
    fn netcfg_vm_priv_addr_rule() {
        let p = GlobalConfig::default().local_prefix;
        let a = |id, idx, vm| vm_priv_addr(&p, id, idx, vm).map(|a| a.to_string());
        // vmctl.8: VM n's first local interface 100.64.n.2 / .3, then .4 / .5.
        assert_eq!(a(1, 0, false).as_deref(), Some("100.64.1.2"));
        assert_eq!(a(1, 0, true).as_deref(), Some("100.64.1.3"));
        assert_eq!(a(7, 1, false).as_deref(), Some("100.64.7.4"));
        assert_eq!(a(300, 3, true).as_deref(), Some("100.65.44.9"));
        assert_eq!(a(1, 126, false).as_deref(), Some("100.64.1.254"));
        assert_eq!(a(1, 127, false), None);
        // A VM id beyond the /10 leaves the prefix.
        assert_eq!(a(1 << 23, 0, false), None);
        // As vmd ORs the id in: VM 16384 has VM 0's bits under a /10.
        assert_eq!(a(1 << 14, 0, false).as_deref(), Some("100.64.0.2"));
        let p16 = Ipv4Prefix {
            addr: Ipv4Addr::new(10, 9, 0, 0),
            len: 16,
        };
        assert_eq!(vm_priv_addr(&p16, 512, 0, false), None);
        let p6 = Ipv6Prefix {
            addr: "fd00:1:2:3::".parse().unwrap(),
            len: 64,
        };
        assert_eq!(
            vm_priv_addr6(&p, &p6, 1, 0, false).unwrap().to_string(),
            "fd00:1:2:3:6440:103:0:1"
        );
        assert_eq!(
            vm_priv_addr6(&p, &p6, 1, 0, true).unwrap().to_string(),
            "fd00:1:2:3:6440:103:0:2"
        );
    }

    #[test]
    fn netcfg_vm_ifconfig_order_and_values() {
        let mut sw = switch(1, "uplink", "bridge0");
        sw.group = Some("swgrp".into());
        let switches = vec![sw];
        let mut if0 = nic();
        if0.switch = Some("uplink".into());
        if0.group = Some("vms".into());
        let mut if1 = nic();
        if1.flags = VMIFF_LOCAL; // down, local
        let msgs = vm_ifconfig(
            &GlobalConfig::default(),
            &switches,
            3,
            "web",
            &[if0, if1],
            &["tap4".into(), "tap7".into()],
        )
        .unwrap();
        let s = summary(&msgs);
        let e = |t: &'static str, n: &str, v: &str, id| (t, n.to_string(), v.to_string(), id);
        assert_eq!(
            s,
            vec![
                e("IFDESCR", "tap4", "vm3-if0-web", 0),
                e("IFADD", "bridge0", "tap4", 0),
                e("IFRDOMAIN", "tap4", "", 0),
                e("IFGROUP", "tap4", "vms", 0),
                e("IFGROUP", "tap4", "swgrp", 0),
                e("IFUP", "tap4", "", 0),
                e("IFDESCR", "tap7", "vm3-if1-web", 0),
                e("IFRDOMAIN", "tap7", "", 0),
                e("IFDOWN", "tap7", "", 0),
                e("IFADDR", "tap7", "", 0),
            ]
        );
        let Message::PrivIfaddr(a) = msgs.last().unwrap() else {
            unreachable!()
        };
        assert_eq!(a.addr, Some("100.64.3.4".parse().unwrap()));
        assert_eq!(a.mask, Some("255.255.255.254".parse().unwrap()));
    }

    #[test]
    fn netcfg_rdomain_interface_beats_switch() {
        let mut sw = switch(1, "s", "veb2");
        sw.flags |= VMIFF_RDOMAIN;
        sw.rdomain = 5;
        let switches = vec![sw];
        let mut a = nic();
        a.switch = Some("s".into());
        let mut b = a.clone();
        b.flags |= VMIFF_RDOMAIN;
        b.rdomain = 9;
        let mut c = nic();
        c.switch = Some("nosuch".into());
        let msgs = vm_ifconfig(
            &GlobalConfig::default(),
            &switches,
            1,
            "x",
            &[a, b, c],
            &["tap0".into(), "tap1".into(), "tap2".into()],
        )
        .unwrap();
        let rd: Vec<(String, u32)> = summary(&msgs)
            .into_iter()
            .filter(|x| x.0 == "IFRDOMAIN")
            .map(|x| (x.1, x.3))
            .collect();
        assert_eq!(
            rd,
            vec![("tap0".into(), 5), ("tap1".into(), 9), ("tap2".into(), 0)]
        );
        // An unknown switch adds nothing.
        assert!(!summary(&msgs)
            .iter()
            .any(|x| x.0 == "IFADD" && x.2 == "tap2"));
    }

    #[test]
    fn netcfg_local_inet6_and_limits() {
        let g = inet6_config();
        let mut l = nic();
        l.flags |= VMIFF_LOCAL;
        let msgs = vm_ifconfig(&g, &[], 2, "v", &[l.clone()], &["tap0".into()]).unwrap();
        let Message::PrivIfaddr6(a) = msgs.last().unwrap() else {
            panic!("no IFADDR6: {msgs:?}")
        };
        assert_eq!(a.addr, Some("fd00::6440:203:0:1".parse().unwrap()));
        assert_eq!(
            a.mask,
            Some("ffff:ffff:ffff:ffff:ffff:ffff::".parse().unwrap())
        );
        // Taps missing, or a VM id the prefix cannot hold: nothing is built.
        assert!(matches!(
            vm_ifconfig(&g, &[], 2, "v", &[l.clone()], &[]),
            Err(NetcfgError::NoTap { .. })
        ));
        assert!(matches!(
            vm_ifconfig(&g, &[], 1 << 23, "v", &[l], &["tap0".into()]),
            Err(NetcfgError::AddressRange { .. })
        ));
    }

    #[test]
    fn netcfg_descriptions_are_truncated_as_vmd() {
        let name = "n".repeat(63);
        let msgs = vm_ifconfig(
            &GlobalConfig::default(),
            &[],
            12,
            &name,
            &[nic()],
            &["tap0".into()],
        )
        .unwrap();
        let Message::PrivIfdescr(d) = &msgs[0] else {
            unreachable!()
        };
        assert_eq!(d.value.len(), VM_NAME_MAX - 1);
        assert!(d.value.starts_with("vm12-if0-nnn"));
    }

    #[test]
    fn netcfg_switch_brconfig() {
        let mut sw = switch(2, "lan", "bridge3");
        sw.flags = VMIFF_RDOMAIN;
        sw.rdomain = 4;
        let s = summary(&switch_brconfig(&sw));
        let e = |t: &'static str, v: &str, id| (t, "bridge3".to_string(), v.to_string(), id);
        assert_eq!(
            s,
            vec![
                e("IFEXISTS", "", 0),
                e("IFRDOMAIN", "", 4),
                e("IFDESCR", "switch2-lan", 4),
                e("IFDOWN", "switch2-lan", 4),
            ]
        );
    }

    #[test]
    fn netcfg_inherit_switch_flags() {
        let mut sw = switch(1, "s", "bridge0");
        sw.flags |= VMIFF_LOCKED;
        let mut ifs = vec![nic(), nic()];
        ifs[0].switch = Some("s".into());
        inherit_switch_flags(&mut ifs, &[sw]);
        assert!(ifs[0].locked());
        assert!(!ifs[1].locked());
        assert!(ifs[0].up(), "VMIFF_UP is not the switch's to give");
        // The rdomain the taps get is the same before and after.
        let mut sw = switch(1, "s", "bridge0");
        sw.flags |= VMIFF_RDOMAIN;
        sw.rdomain = 7;
        let mut ifs = vec![nic(), nic()];
        ifs[0].switch = Some("s".into());
        ifs[1].switch = Some("s".into());
        ifs[1].flags |= VMIFF_RDOMAIN;
        ifs[1].rdomain = 2;
        let taps = ["tap0".to_string(), "tap1".to_string()];
        let g = GlobalConfig::default();
        let sws = [sw];
        let before = vm_ifconfig(&g, &sws, 1, "v", &ifs, &taps).unwrap();
        inherit_switch_flags(&mut ifs, &sws);
        assert_eq!(ifs[0].rdomain(), Some(7));
        assert_eq!(ifs[1].rdomain(), Some(2));
        assert_eq!(vm_ifconfig(&g, &sws, 1, "v", &ifs, &taps).unwrap(), before);
    }

    /// Every request the parent builds passes priv's checks once the
    /// switches are configured (and none before).
    #[test]
    fn netcfg_requests_pass_priv_checks() {
        use super::super::privproc::check;
        let mut sw = switch(1, "s", "bridge0");
        sw.group = Some("g".into());
        let g = inet6_config();
        let mut a = nic();
        a.switch = Some("s".into());
        a.flags |= VMIFF_LOCAL;
        let mut known = HashSet::new();
        for m in switch_brconfig(&sw) {
            check(&m, 0, &known).unwrap();
            if let Message::PrivIfexists(v) = &m {
                known.insert(v.name.clone());
            }
        }
        let msgs = vm_ifconfig(&g, &[sw], 1, "vm", &[a], &["tap0".into()]).unwrap();
        for m in &msgs {
            check(m, 0, &known).unwrap_or_else(|e| panic!("{m:?}: {e}"));
        }
        assert!(msgs.iter().any(|m| check(m, 0, &HashSet::new()).is_err()));
    }
}
