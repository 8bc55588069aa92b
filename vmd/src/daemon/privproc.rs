//! The priv process (priv.c): the one root process that configures
//! network interfaces for VMs and switches — descriptions, interface
//! groups, rdomains, up/down, switch (bridge/veb) creation and members,
//! the host side's addresses of local interfaces, and the MAC of a tap.
//!
//! **Who may ask.** priv reads one channel, its standard input, which is
//! the socket to the parent (privsep's star: the vmm, VM and device
//! processes have no channel to priv, so a compromised one cannot ask it
//! anything).  The parent builds every request from its own records
//! ([`super::netcfg`]): vm.conf's switches and the taps it opened itself.
//!
//! **What may be touched.** Each request is still checked here before any
//! ioctl or netlink message ([`check`]), as priv.c does, and a refused
//! one is logged and dropped (vmd ends with `fatalx`; one bad request
//! does not take vmd down here):
//!
//! - the interface must be named `tapN`, `bridgeN` or `vebN`
//!   (`priv_getiftype` and `priv_findname`), shorter than `IF_NAMESIZE`;
//! - a bridge or veb must be a configured switch: one the parent declared
//!   with `IMSG_VMDOP_PRIV_IFEXISTS` (at config load) — only then may it
//!   be described, put in an rdomain, brought up or given members;
//! - `IFADD` adds only a tap to a switch; addresses go only on taps, of
//!   the family the message says; group names are `priv_validgroup`'s;
//!   descriptions fit vmd's 64-byte buffer; rdomains are at most
//!   `RT_TABLEID_MAX`;
//! - on Linux, where the name alone says nothing, `tapN` must really be a
//!   tap (a tun device in tap mode) and `bridgeN` a bridge (checked by
//!   [`NetIf::check_kind`]): `lo`, `eth0` or a `tap0` that is a dummy are
//!   never touched.
//!
//! What Linux does for each operation, and what it refuses, is in
//! [`crate::sys::netif`]'s Linux module and vmd.8.
use std::collections::HashSet;
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};

use nix::unistd::User;

use super::args::Args;
use super::events;
use super::{logging, privsep};
use crate::event::EventLoop;
use crate::sys::netif::{IfKind, NetIf, NetifError};
use vmd_proto::config::{IF_NAMESIZE, RT_TABLEID_MAX, VM_NAME_MAX};
use vmd_proto::msg::{VmopAddrResult, VmopIfreq, CONFIG_SWITCHES};
use vmd_proto::{Message, Received};

/// Interface types priv may touch (priv.c's `desct`).
pub const PRIV_IFTYPES: &[&str] = &["tap", "bridge", "veb"];

/// `priv_getiftype`: `tap0` → (`tap`, 0).  `None` when the name has no
/// type, no unit, or a unit that is not a number.
pub fn iftype(name: &str) -> Option<(&str, u32)> {
    let span = name.find(|c: char| c.is_ascii_digit())?;
    if span == 0 || span >= IF_NAMESIZE - 1 {
        return None;
    }
    let (t, unit) = name.split_at(span);
    if !unit.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((t, unit.parse().ok()?))
}

/// `priv_validgroup`: shorter than `IF_NAMESIZE`, not ending in a digit
/// (and, here, not empty).
pub fn valid_group(name: &str) -> bool {
    !name.is_empty()
        && name.len() < IF_NAMESIZE
        && !name.ends_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_graphic())
}

/// Why a request was refused (logged by priv).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("rejected priv operation on interface: {0}")]
    Interface(String),
    #[error("{0} is not a configured switch")]
    NotASwitch(String),
    #[error("{0}: only taps may be {1}")]
    NotATap(String, &'static str),
    #[error("invalid group name: {0}")]
    Group(String),
    #[error("invalid description for {0}")]
    Description(String),
    #[error("invalid rdomain {1} for {0}")]
    Rdomain(String, u32),
    #[error("invalid address family for {0}")]
    Family(String),
    #[error("{0} without a tap descriptor")]
    NoDescriptor(&'static str),
    #[error("unexpected {0}")]
    Unexpected(&'static str),
}

/// What is left of a request after [`check`]: the operation and the
/// interface's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tap,
    Switch,
}

fn kind_of(name: &str) -> Result<Kind, Refused> {
    if name.len() >= IF_NAMESIZE {
        return Err(Refused::Interface(name.to_string()));
    }
    match iftype(name) {
        Some(("tap", _)) => Ok(Kind::Tap),
        Some(("bridge" | "veb", _)) => Ok(Kind::Switch),
        _ => Err(Refused::Interface(name.to_string())),
    }
}

/// The request checks of priv.c and more (see the module note), against
/// the switches configured so far.  Pure: unit-tested without a kernel.
pub fn check(msg: &Message, nfds: usize, switches: &HashSet<String>) -> Result<(), Refused> {
    let ifreq_name = |vfr: &VmopIfreq| -> Result<Kind, Refused> {
        let k = kind_of(&vfr.name)?;
        if k == Kind::Switch && !switches.contains(&vfr.name) {
            return Err(Refused::NotASwitch(vfr.name.clone()));
        }
        Ok(k)
    };
    match msg {
        Message::PrivIfexists(vfr) => {
            if kind_of(&vfr.name)? != Kind::Switch {
                return Err(Refused::NotASwitch(vfr.name.clone()));
            }
        }
        Message::PrivIfdescr(vfr) => {
            ifreq_name(vfr)?;
            if vfr.value.len() >= VM_NAME_MAX || vfr.value.bytes().any(|b| b.is_ascii_control()) {
                return Err(Refused::Description(vfr.name.clone()));
            }
        }
        Message::PrivIfrdomain(vfr) => {
            ifreq_name(vfr)?;
            if i64::from(vfr.id) > RT_TABLEID_MAX {
                return Err(Refused::Rdomain(vfr.name.clone(), vfr.id));
            }
        }
        Message::PrivIfup(vfr) | Message::PrivIfdown(vfr) => {
            ifreq_name(vfr)?;
        }
        Message::PrivIfadd(vfr) => {
            if ifreq_name(vfr)? != Kind::Switch {
                return Err(Refused::NotASwitch(vfr.name.clone()));
            }
            if kind_of(&vfr.value).map_err(|_| Refused::Interface(vfr.value.clone()))? != Kind::Tap
            {
                return Err(Refused::NotATap(vfr.value.clone(), "added to a switch"));
            }
        }
        Message::PrivIfgroup(vfr) => {
            ifreq_name(vfr)?;
            if !valid_group(&vfr.value) {
                return Err(Refused::Group(vfr.value.clone()));
            }
        }
        Message::PrivIfaddr(vfr) | Message::PrivIfaddr6(vfr) => {
            if ifreq_name(vfr)? != Kind::Tap {
                return Err(Refused::NotATap(vfr.name.clone(), "given addresses"));
            }
            let v6 = matches!(msg, Message::PrivIfaddr6(_));
            let ok = match (vfr.addr, vfr.mask) {
                (Some(IpAddr::V4(_)), Some(IpAddr::V4(_))) => !v6,
                (Some(IpAddr::V6(_)), Some(IpAddr::V6(_))) => v6,
                _ => false,
            };
            if !ok {
                return Err(Refused::Family(vfr.name.clone()));
            }
        }
        Message::PrivGetAddr(_) => {
            if nfds != 1 {
                return Err(Refused::NoDescriptor("IMSG_VMDOP_PRIV_GET_ADDR"));
            }
        }
        Message::Config(_) | Message::CtlReset(_) | Message::CtlVerbose(_) => {}
        other => return Err(Refused::Unexpected(other.imsg_type().name())),
    }
    Ok(())
}

/// What became of one request.
#[derive(Debug)]
pub enum Outcome {
    /// Done; nothing to answer.
    Done,
    /// Done; this goes back to the parent (with the request's peer id).
    Reply(Message),
    /// Refused by [`check`] or because the interface is not of its kind.
    Refused(String),
    /// Checked, but the kernel (or this OS) said no.
    Failed(NetifError),
}

/// priv's state: the interface handle and the switches the parent
/// configured.
pub struct Priv {
    pub netif: NetIf,
    switches: HashSet<String>,
}

impl Priv {
    pub fn new(netif: NetIf) -> Priv {
        Priv {
            netif,
            switches: HashSet::new(),
        }
    }

    /// The switches configured so far.
    pub fn switches(&self) -> &HashSet<String> {
        &self.switches
    }

    /// `priv_dispatch_parent`: check, then apply one request.
    pub fn handle(&mut self, msg: &Message, fds: Vec<OwnedFd>) -> Outcome {
        if let Err(r) = check(msg, fds.len(), &self.switches) {
            return Outcome::Refused(r.to_string());
        }
        // On Linux the names do not say the kind: check the interface.
        let kinds: Vec<(&str, IfKind)> = match msg {
            Message::PrivIfadd(vfr) => vec![
                (vfr.name.as_str(), IfKind::Switch),
                (vfr.value.as_str(), IfKind::Tap),
            ],
            Message::PrivIfdescr(vfr)
            | Message::PrivIfrdomain(vfr)
            | Message::PrivIfup(vfr)
            | Message::PrivIfdown(vfr)
            | Message::PrivIfgroup(vfr)
            | Message::PrivIfaddr(vfr)
            | Message::PrivIfaddr6(vfr)
            | Message::PrivIfexists(vfr) => {
                let k = match kind_of(&vfr.name) {
                    Ok(Kind::Tap) => IfKind::Tap,
                    _ => IfKind::Switch,
                };
                vec![(vfr.name.as_str(), k)]
            }
            _ => Vec::new(),
        };
        for (name, k) in kinds {
            if let Err(e) = self.netif.check_kind(name, k) {
                return Outcome::Refused(format!("rejected priv operation: {e}"));
            }
        }
        match self.apply(msg, fds) {
            Ok(Some(m)) => Outcome::Reply(m),
            Ok(None) => Outcome::Done,
            Err(e) => Outcome::Failed(e),
        }
    }

    fn apply(
        &mut self,
        msg: &Message,
        mut fds: Vec<OwnedFd>,
    ) -> Result<Option<Message>, NetifError> {
        let n = &mut self.netif;
        match msg {
            Message::PrivIfdescr(v) => n.set_description(&v.name, &v.value)?,
            Message::PrivIfrdomain(v) => n.set_rdomain(&v.name, v.id)?,
            Message::PrivIfexists(v) => {
                // Era-B vmd gives up when the bridge is missing; as the
                // older IFCREATE did, it is created instead.
                if n.create_switch(&v.name)? {
                    log::info!("priv: created switch interface {}", v.name);
                }
                self.switches.insert(v.name.clone());
            }
            Message::PrivIfadd(v) => n.switch_add(&v.name, &v.value)?,
            Message::PrivIfup(v) => n.set_up(&v.name, true)?,
            Message::PrivIfdown(v) => n.set_up(&v.name, false)?,
            Message::PrivIfgroup(v) => n.add_group(&v.name, &v.value)?,
            Message::PrivIfaddr(v) => {
                if let (Some(IpAddr::V4(a)), Some(IpAddr::V4(m))) = (v.addr, v.mask) {
                    n.add_inet(&v.name, a, m)?;
                }
            }
            Message::PrivIfaddr6(v) => {
                if let (Some(IpAddr::V6(a)), Some(IpAddr::V6(m))) = (v.addr, v.mask) {
                    n.add_inet6(&v.name, a, m)?;
                }
            }
            Message::PrivGetAddr(req) => {
                let Some(fd) = fds.pop() else {
                    return Ok(None);
                };
                let addr = n.tap_lladdr(fd.as_fd())?;
                return Ok(Some(Message::PrivGetAddrResponse(VmopAddrResult {
                    vmid: req.vmid,
                    nic_idx: req.nic_idx,
                    addr,
                })));
            }
            Message::CtlReset(mode) if mode & CONFIG_SWITCHES != 0 => self.switches.clear(),
            Message::CtlVerbose(v) => logging::set_verbose(*v),
            _ => {}
        }
        Ok(None)
    }
}

/// Logs what became of a request, as priv.c's log_warn/fatalx lines.
pub fn log_outcome(msg: &Message, outcome: &Outcome) {
    match outcome {
        Outcome::Refused(why) => {
            log::warn!("priv: refused {}: {why}", msg.imsg_type().name())
        }
        Outcome::Failed(e) => log::warn!("priv: {}: {e}", msg.imsg_type().name()),
        Outcome::Done | Outcome::Reply(_) => {
            log::debug!("priv: {} done", msg.imsg_type().name())
        }
    }
}

pub fn main(_args: &Args, user: &User) -> i32 {
    privsep::set_title("priv");
    logging::procinit("priv");
    let mut parent = match privsep::parent_channel() {
        Ok(c) => c,
        Err(e) => logging::fatal("priv: parent socket", e),
    };
    let _ = parent.socket().set_nonblocking(true);
    // Before the chroot: netlink and iproute2's group table on Linux,
    // the ioctl sockets on OpenBSD.
    let netif = match NetIf::open() {
        Ok(n) => n,
        Err(e) => logging::fatalx(&format!("priv: {e}")),
    };
    let mut p = Priv::new(netif);
    // "First proc runs as root without pledge but in default chroot."
    if !super::no_privdrop() && user.dir.is_dir() {
        if let Err(e) = nix::unistd::chroot(&user.dir).and_then(|_| nix::unistd::chdir("/")) {
            logging::fatal("priv: chroot", e);
        }
    }
    crate::sandbox::confine_or_die(crate::sandbox::Kind::Priv, &Default::default());
    crate::sandbox::test_hook(crate::sandbox::Kind::Priv);
    let mut ev = match EventLoop::with_signals(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP]) {
        Ok(s) => s,
        Err(e) => logging::fatal("signals", e),
    };
    loop {
        let _ = ev.wait(&[(parent.as_fd(), parent.pending())], None);
        let _ = ev.take_signals();
        match events::drain(&mut parent) {
            Ok(msgs) => {
                for r in msgs {
                    let Received {
                        msg, peerid, fds, ..
                    } = r;
                    let outcome = p.handle(&msg, fds);
                    log_outcome(&msg, &outcome);
                    if let Outcome::Reply(m) = outcome {
                        if let Err(e) = events::post(&mut parent, &m, peerid, Vec::new()) {
                            log::warn!("priv: cannot answer the parent: {e}");
                        }
                    }
                }
            }
            Err(e) => {
                // The parent's end, or a malformed message from it: priv
                // has no one else to listen to.
                log::debug!("priv: parent channel: {e}");
                return 0;
            }
        }
        let _ = parent.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmd_proto::msg::{ImsgType, VmopAddrReq};

    fn vfr(name: &str, value: &str) -> VmopIfreq {
        VmopIfreq {
            id: 0,
            name: name.into(),
            value: value.into(),
            addr: None,
            mask: None,
        }
    }

    fn sw(names: &[&str]) -> HashSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn priv_iftype_is_priv_getiftype() {
        assert_eq!(iftype("tap0"), Some(("tap", 0)));
        assert_eq!(iftype("bridge12"), Some(("bridge", 12)));
        assert_eq!(iftype("veb3"), Some(("veb", 3)));
        // No type, no unit, a unit that is not a number, too long.
        for bad in ["", "0", "tap", "lo", "eth0x", "tap0:1"] {
            assert_eq!(iftype(bad), None, "{bad:?}");
        }
        // A type priv.c does not know: refused by the name list.
        assert_eq!(iftype("tap-1"), Some(("tap-", 1)));
        assert!(kind_of("tap-1").is_err());
        assert!(kind_of("lo0").is_err());
        assert!(kind_of("tap 0").is_err());
        assert_eq!(iftype("abcdefghijklmno1"), None);
        assert_eq!(iftype("tap99999999999"), None, "unit beyond u32");
    }

    #[test]
    fn priv_valid_group_is_priv_validgroup() {
        assert!(valid_group("vms"));
        assert!(valid_group("a"));
        assert!(!valid_group(""));
        assert!(!valid_group("vm1"), "ends in a digit");
        assert!(!valid_group("abcdefghijklmnop"), "IF_NAMESIZE");
        assert!(!valid_group("a b"));
    }

    #[test]
    fn priv_check_refuses_foreign_interfaces() {
        let s = sw(&["bridge0"]);
        for name in [
            "lo", "eth0", "enp0s3", "wlan0", "vrf1", "docker0", "tap", "",
        ] {
            for m in [
                Message::PrivIfdescr(vfr(name, "x")),
                Message::PrivIfup(vfr(name, "")),
                Message::PrivIfdown(vfr(name, "")),
                Message::PrivIfrdomain(vfr(name, "")),
                Message::PrivIfgroup(vfr(name, "vms")),
                Message::PrivIfexists(vfr(name, "")),
            ] {
                assert!(check(&m, 0, &s).is_err(), "{name} {m:?}");
            }
        }
        // Taps are fine.
        assert_eq!(check(&Message::PrivIfup(vfr("tap3", "")), 0, &s), Ok(()));
    }

    #[test]
    fn priv_check_switches_must_be_configured() {
        let none = HashSet::new();
        let s = sw(&["bridge0"]);
        let m = Message::PrivIfup(vfr("bridge1", ""));
        assert_eq!(check(&m, 0, &s), Err(Refused::NotASwitch("bridge1".into())));
        assert!(check(&Message::PrivIfup(vfr("bridge0", "")), 0, &s).is_ok());
        assert!(check(&Message::PrivIfadd(vfr("bridge0", "tap0")), 0, &none).is_err());
        // IFEXISTS declares one; only bridges and vebs can be switches.
        assert!(check(&Message::PrivIfexists(vfr("veb4", "")), 0, &none).is_ok());
        assert!(check(&Message::PrivIfexists(vfr("tap4", "")), 0, &none).is_err());
    }

    #[test]
    fn priv_check_ifadd_adds_only_taps_to_switches() {
        let s = sw(&["bridge0", "bridge1"]);
        assert!(check(&Message::PrivIfadd(vfr("bridge0", "tap1")), 0, &s).is_ok());
        for (br, member) in [
            ("bridge0", "eth0"),
            ("bridge0", "lo"),
            ("bridge0", "bridge1"),
            ("tap0", "tap1"),
            ("bridge0", ""),
        ] {
            assert!(
                check(&Message::PrivIfadd(vfr(br, member)), 0, &s).is_err(),
                "{br} {member}"
            );
        }
    }

    #[test]
    fn priv_check_values() {
        let s = HashSet::new();
        let long = "x".repeat(VM_NAME_MAX);
        assert!(check(&Message::PrivIfdescr(vfr("tap0", &long)), 0, &s).is_err());
        assert!(check(&Message::PrivIfdescr(vfr("tap0", &long[1..])), 0, &s).is_ok());
        assert!(check(&Message::PrivIfdescr(vfr("tap0", "a\nb")), 0, &s).is_err());
        assert!(check(&Message::PrivIfgroup(vfr("tap0", "vm1")), 0, &s).is_err());
        let mut r = vfr("tap0", "");
        r.id = 256;
        assert!(check(&Message::PrivIfrdomain(r.clone()), 0, &s).is_err());
        r.id = 255;
        assert!(check(&Message::PrivIfrdomain(r), 0, &s).is_ok());
    }

    #[test]
    fn priv_check_address_families() {
        let s = sw(&["bridge0"]);
        let v4 = |a: &str| Some(a.parse::<IpAddr>().unwrap());
        let mut r = vfr("tap0", "");
        r.addr = v4("100.64.1.2");
        r.mask = v4("255.255.255.254");
        assert!(check(&Message::PrivIfaddr(r.clone()), 0, &s).is_ok());
        assert!(check(&Message::PrivIfaddr6(r.clone()), 0, &s).is_err());
        r.mask = v4("ffff::");
        assert!(check(&Message::PrivIfaddr(r.clone()), 0, &s).is_err());
        r.mask = None;
        assert!(check(&Message::PrivIfaddr(r.clone()), 0, &s).is_err());
        r.addr = v4("fd00::1");
        r.mask = v4("ffff:ffff:ffff:ffff:ffff:ffff::");
        assert!(check(&Message::PrivIfaddr6(r.clone()), 0, &s).is_ok());
        // Addresses go on taps only, never on a switch.
        r.name = "bridge0".into();
        assert!(check(&Message::PrivIfaddr6(r), 0, &s).is_err());
    }

    #[test]
    fn priv_check_other_messages() {
        let s = HashSet::new();
        let ga = Message::PrivGetAddr(VmopAddrReq {
            vmid: 1,
            nic_idx: 0,
        });
        assert!(check(&ga, 0, &s).is_err());
        assert!(check(&ga, 2, &s).is_err());
        assert!(check(&ga, 1, &s).is_ok());
        for m in [
            Message::StartVmEnd,
            Message::Reload,
            Message::Load("/etc/vm.conf".into()),
            Message::TerminateVmRequest(Default::default()),
        ] {
            assert!(matches!(check(&m, 0, &s), Err(Refused::Unexpected(_))));
        }
        assert!(check(&Message::CtlReset(CONFIG_SWITCHES), 0, &s).is_ok());
    }

    /// The payloads priv decodes take any bytes without panicking, and a
    /// decoded one goes through the checks without panicking either.
    #[test]
    fn priv_decoders_take_garbage() {
        let types = [
            ImsgType::PrivIfdescr,
            ImsgType::PrivIfadd,
            ImsgType::PrivIfexists,
            ImsgType::PrivIfup,
            ImsgType::PrivIfdown,
            ImsgType::PrivIfgroup,
            ImsgType::PrivIfaddr,
            ImsgType::PrivIfaddr6,
            ImsgType::PrivIfrdomain,
            ImsgType::PrivGetAddr,
            ImsgType::PrivGetAddrResponse,
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let s = sw(&["bridge0"]);
        let mut decoded = 0;
        for _ in 0..20_000 {
            let len = (next() % 48) as usize;
            let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let t = types[(next() % types.len() as u64) as usize];
            if let Ok(m) = Message::decode(t, &data) {
                decoded += 1;
                let _ = check(&m, 0, &s);
            }
        }
        // The generator must reach the checks too, not only the decoder.
        assert!(decoded > 20, "only {decoded} payloads decoded");
        // Truncations of a real request never decode into something else.
        let m = Message::PrivIfdescr(vfr("tap0", "vm1-if0-a"));
        let bytes = m.encode().unwrap();
        for cut in 0..bytes.len() {
            assert!(Message::decode(ImsgType::PrivIfdescr, &bytes[..cut]).is_err());
        }
    }
}
