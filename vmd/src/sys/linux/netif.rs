//! Interfaces on Linux through rtnetlink, with the rust-netlink crates
//! (`netlink-packet-route` builds and parses the messages, `netlink-sys`
//! is the socket).  They are synchronous: priv handles one request at a
//! time from its poll loop and gains nothing from an async runtime, which
//! the `rtnetlink` crate would bring (tokio) into a process that has none.
//!
//! How OpenBSD's interface operations map onto Linux (vmd.8 says the
//! same):
//!
//! - description (`SIOCSIFDESCR`) → the link's alias (`IFLA_IFALIAS`,
//!   `ip link show` prints it as `alias`).
//! - interface groups (`SIOCAIFGROUP`): a Linux link has one numeric
//!   group (`IFLA_GROUP`), which nftables matches (`iifgroup`) and
//!   `ip link show group NAME` lists.  A group name is looked up in
//!   iproute2's group table (`/etc/iproute2/group`, then
//!   `/usr/share/iproute2/group`, read once when priv starts); a name
//!   without a number there, or a second, different group on the same
//!   link, is refused with an error instead of being half-applied.  The
//!   `tap` group OpenBSD's kernel gives every tap has no counterpart (the
//!   link kind `tun` plays its part: `nft ... iifkind`).
//! - rdomain N (`SIOCSIFRDOMAIN`) → the link is enslaved to the VRF
//!   device `rdomainN` (created if missing, routing table N): like an
//!   rdomain, a VRF is a separate routing domain whose addresses may
//!   overlap the default one's, and the host still reaches it
//!   (`ip vrf exec rdomainN ...` as `route -T N exec ...`).  A network
//!   namespace would hide the tap from priv itself.  Tables 253–255 are
//!   Linux's own (default, main, local): those rdomains are refused.  A
//!   bridge member cannot have a VRF master: its rdomain is honoured only
//!   when its bridge is in that VRF already (a `switch` with the same
//!   `rdomain`), and refused otherwise.  rdomain 0 takes the link out of
//!   any VRF.
//! - bridge(4)/veb(4) (`SIOCIFCREATE`, `SIOCBRDGADD`) → a Linux bridge of
//!   the same name, created if missing; members are enslaved to it.
//! - addresses (`SIOCAIFADDR`, `SIOCAIFADDR_IN6`) → `RTM_NEWADDR`
//!   (replacing an existing one).
//! - a tap's MAC (`SIOCGIFADDR` on the tap's descriptor) → the tap's name
//!   from the descriptor (`TUNGETIFF`, in `tap.rs` beside TUNSETIFF), then
//!   the link's `IFLA_ADDRESS`.  priv opens no file once confined.
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVrf, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::sys::netif::{IfKind, NetifError};

/// iproute2's group tables, in the order `ip` reads them.
pub const GROUP_TABLES: &[&str] = &["/etc/iproute2/group", "/usr/share/iproute2/group"];

/// What priv needs to know of a link.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub up: bool,
    /// `IFLA_INFO_KIND`: `tun`, `bridge`, `vrf`, ...
    pub kind: Option<String>,
    /// `IFLA_MASTER`: the bridge or VRF this link is enslaved to.
    pub master: Option<u32>,
    pub alias: Option<String>,
    pub group: u32,
    pub mac: Option<[u8; 6]>,
    /// `IFLA_VRF_TABLE` of a VRF.
    pub vrf_table: Option<u32>,
}

pub struct NetIf {
    sock: Socket,
    seq: u32,
    /// Group names to numbers (iproute2's table).
    groups: HashMap<String, u32>,
}

fn io_other(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Parses iproute2's group table: `number name` per line, `#` comments.
pub fn parse_group_table(text: &str) -> HashMap<String, u32> {
    let mut m = HashMap::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut w = line.split_whitespace();
        let (Some(num), Some(name)) = (w.next(), w.next()) else {
            continue;
        };
        let num = match num.strip_prefix("0x") {
            Some(h) => u32::from_str_radix(h, 16).ok(),
            None => num.parse().ok(),
        };
        if let Some(n) = num {
            m.entry(name.to_string()).or_insert(n);
        }
    }
    m
}

impl NetIf {
    /// The rtnetlink socket and iproute2's group table: all that priv
    /// needs from the file system, so call this before the chroot.
    pub fn open() -> Result<NetIf, NetifError> {
        let mut groups = HashMap::new();
        for path in GROUP_TABLES.iter().rev() {
            if let Ok(text) = std::fs::read_to_string(path) {
                groups.extend(parse_group_table(&text));
            }
        }
        Self::with_groups(groups)
    }

    /// With a group table of the caller's (tests).
    pub fn with_groups(groups: HashMap<String, u32>) -> Result<NetIf, NetifError> {
        let mut sock =
            Socket::new(NETLINK_ROUTE).map_err(|e| NetifError::os("socket", "netlink", e))?;
        sock.bind_auto()
            .map_err(|e| NetifError::os("bind", "netlink", e))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(|e| NetifError::os("connect", "netlink", e))?;
        Ok(NetIf {
            sock,
            seq: 1,
            groups,
        })
    }

    /// Sends one request and collects the answers up to the ACK (or the
    /// end of a dump).  A kernel error comes back as the errno.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, std::io::Error> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        self.sock.send(&buf, 0)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        loop {
            let mut rbuf: Vec<u8> = Vec::with_capacity(64 * 1024);
            let n = self.sock.recv(&mut rbuf, 0)?;
            if n == 0 {
                return Err(io_other("netlink socket closed"));
            }
            let mut off = 0;
            while off < n {
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rbuf[off..n])
                    .map_err(io_other)?;
                let len = m.header.length as usize;
                if len == 0 {
                    return Err(io_other("netlink message of length 0"));
                }
                off += (len + 3) & !3;
                if m.header.sequence_number != seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None if !dump => Ok(out),
                            None => continue,
                            Some(code) => Err(std::io::Error::from_raw_os_error(-code.get())),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(inner) => out.push(inner),
                    _ => {}
                }
            }
        }
    }

    fn parse_link(m: &LinkMessage) -> Link {
        let mut l = Link {
            index: m.header.index,
            up: m.header.flags.contains(LinkFlags::Up),
            ..Link::default()
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::IfAlias(s) => l.alias = Some(s.clone()),
                LinkAttribute::Group(g) => l.group = *g,
                LinkAttribute::Controller(i) => l.master = Some(*i),
                LinkAttribute::Address(a) if a.len() == 6 => {
                    let mut mac = [0u8; 6];
                    mac.copy_from_slice(a);
                    l.mac = Some(mac);
                }
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        match i {
                            LinkInfo::Kind(k) => l.kind = Some(k.to_string()),
                            LinkInfo::Data(InfoData::Vrf(v)) => {
                                for x in v {
                                    if let InfoVrf::TableId(t) = x {
                                        l.vrf_table = Some(*t);
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        l
    }

    /// The link named `ifname`, if there is one.
    pub fn link(&mut self, ifname: &str) -> Result<Option<Link>, NetifError> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(ifname.to_string()));
        match self.request(RouteNetlinkMessage::GetLink(m), 0) {
            Ok(v) => Ok(v.iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(Self::parse_link(l)),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(NetifError::os("RTM_GETLINK", ifname, e)),
        }
    }

    fn link_by_index(&mut self, index: u32) -> Result<Option<Link>, NetifError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        match self.request(RouteNetlinkMessage::GetLink(m), 0) {
            Ok(v) => Ok(v.iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(Self::parse_link(l)),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(NetifError::os("RTM_GETLINK", &format!("index {index}"), e)),
        }
    }

    fn must_link(&mut self, ifname: &str) -> Result<Link, NetifError> {
        self.link(ifname)?
            .ok_or_else(|| NetifError::NoSuchInterface(ifname.to_string()))
    }

    /// `RTM_SETLINK` of some attributes (and flags) on an existing link.
    fn set_link(
        &mut self,
        op: &'static str,
        link: &Link,
        flags: Option<(LinkFlags, LinkFlags)>,
        attrs: Vec<LinkAttribute>,
    ) -> Result<(), NetifError> {
        let mut m = LinkMessage::default();
        m.header.index = link.index;
        if let Some((f, mask)) = flags {
            m.header.flags = f;
            m.header.change_mask = mask;
        }
        m.attributes = attrs;
        self.request(RouteNetlinkMessage::SetLink(m), 0)
            .map(|_| ())
            .map_err(|e| NetifError::os(op, &link.name, e))
    }

    /// Checks that `ifname` is of the kind priv expects: a tap must be a
    /// tun device (in tap mode: it has a MAC), a switch a bridge.  A
    /// missing interface is not an error here.
    pub fn check_kind(&mut self, ifname: &str, kind: IfKind) -> Result<(), NetifError> {
        let Some(l) = self.link(ifname)? else {
            return Ok(());
        };
        let want = match kind {
            IfKind::Tap => "tun",
            IfKind::Switch => "bridge",
        };
        let ok = l.kind.as_deref() == Some(want) && (kind != IfKind::Tap || l.mac.is_some());
        if ok {
            Ok(())
        } else {
            Err(NetifError::WrongKind {
                ifname: ifname.to_string(),
                why: format!(
                    "is a {} interface, not a {}",
                    l.kind.as_deref().unwrap_or("physical"),
                    match kind {
                        IfKind::Tap => "tap",
                        IfKind::Switch => "bridge",
                    }
                ),
            })
        }
    }

    /// `SIOCSIFDESCR`: the link's alias.
    pub fn set_description(&mut self, ifname: &str, descr: &str) -> Result<(), NetifError> {
        let l = self.must_link(ifname)?;
        self.set_link(
            "IFLA_IFALIAS",
            &l,
            None,
            vec![LinkAttribute::IfAlias(descr.to_string())],
        )
    }

    /// `SIOCGIFFLAGS`: whether the interface exists.
    pub fn exists(&mut self, ifname: &str) -> Result<bool, NetifError> {
        Ok(self.link(ifname)?.is_some())
    }

    fn create(&mut self, ifname: &str, info: Vec<LinkInfo>) -> Result<bool, NetifError> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(ifname.to_string()));
        m.attributes.push(LinkAttribute::LinkInfo(info));
        match self.request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(NetifError::os("RTM_NEWLINK", ifname, e)),
        }
    }

    /// `SIOCIFCREATE` of a bridge: a Linux bridge named `ifname`, unless
    /// it exists; whether it was created.
    pub fn create_switch(&mut self, ifname: &str) -> Result<bool, NetifError> {
        self.create(ifname, vec![LinkInfo::Kind(InfoKind::Bridge)])
    }

    /// `SIOCBRDGADD`: `member` becomes a port of `switch`.
    pub fn switch_add(&mut self, switch: &str, member: &str) -> Result<(), NetifError> {
        let br = self.must_link(switch)?;
        let m = self.must_link(member)?;
        if m.master == Some(br.index) {
            return Ok(());
        }
        self.set_link(
            "IFLA_MASTER",
            &m,
            None,
            vec![LinkAttribute::Controller(br.index)],
        )
    }

    /// `SIOCSIFFLAGS` with or without IFF_UP.
    pub fn set_up(&mut self, ifname: &str, up: bool) -> Result<(), NetifError> {
        let l = self.must_link(ifname)?;
        let f = if up {
            LinkFlags::Up
        } else {
            LinkFlags::empty()
        };
        let op = if up { "IFF_UP" } else { "IFF_DOWN" };
        self.set_link(op, &l, Some((f, LinkFlags::Up)), Vec::new())
    }

    /// The number of a group name, from iproute2's table.
    pub fn group_number(&self, group: &str) -> Option<u32> {
        self.groups.get(group).copied()
    }

    /// `SIOCAIFGROUP`: the link's numeric group (see the module note).
    pub fn add_group(&mut self, ifname: &str, group: &str) -> Result<(), NetifError> {
        let Some(n) = self.group_number(group) else {
            return Err(NetifError::Unsupported {
                ifname: ifname.to_string(),
                why: format!(
                    "group {group}: linux groups are numbers, and {group} has none in {}",
                    GROUP_TABLES[0]
                ),
            });
        };
        let l = self.must_link(ifname)?;
        if l.group == n {
            return Ok(());
        }
        if l.group != 0 {
            return Err(NetifError::Unsupported {
                ifname: ifname.to_string(),
                why: format!(
                    "group {group}: already in group {}, and a linux link has one group",
                    l.group
                ),
            });
        }
        self.set_link("IFLA_GROUP", &l, None, vec![LinkAttribute::Group(n)])
    }

    /// `SIOCSIFRDOMAIN` (see the module note).
    pub fn set_rdomain(&mut self, ifname: &str, rdomain: u32) -> Result<(), NetifError> {
        let l = self.must_link(ifname)?;
        let master = match l.master {
            Some(i) => self.link_by_index(i)?,
            None => None,
        };
        let master_kind = master.as_ref().and_then(|m| m.kind.clone());
        if rdomain == 0 {
            // Back to the default domain: out of a VRF, but a bridge port
            // stays on its bridge.
            if master_kind.as_deref() == Some("vrf") {
                return self.set_link("IFLA_MASTER", &l, None, vec![LinkAttribute::Controller(0)]);
            }
            return Ok(());
        }
        if (253..=255).contains(&rdomain) || rdomain > 255 {
            return Err(NetifError::Unsupported {
                ifname: ifname.to_string(),
                why: format!("rdomain {rdomain}: linux keeps routing table {rdomain} for itself"),
            });
        }
        let vrf = format!("rdomain{rdomain}");
        if master_kind.as_deref() == Some("bridge") {
            // A bridge port has its bridge as master; it is in the VRF only
            // through its bridge.
            let br = master.unwrap_or_default();
            let br_master = match br.master {
                Some(i) => self.link_by_index(i)?,
                None => None,
            };
            if br_master.map(|m| m.name) == Some(vrf.clone()) {
                return Ok(());
            }
            return Err(NetifError::Unsupported {
                ifname: ifname.to_string(),
                why: format!(
                    "rdomain {rdomain}: a port of bridge {} is in the bridge's rdomain; give the switch rdomain {rdomain}",
                    br.name
                ),
            });
        }
        let v = match self.link(&vrf)? {
            Some(v) => v,
            None => {
                self.create(
                    &vrf,
                    vec![
                        LinkInfo::Kind(InfoKind::Vrf),
                        LinkInfo::Data(InfoData::Vrf(vec![InfoVrf::TableId(rdomain)])),
                    ],
                )?;
                let v = self.must_link(&vrf)?;
                self.set_up(&vrf, true)?;
                v
            }
        };
        if v.kind.as_deref() != Some("vrf") || v.vrf_table.is_some_and(|t| t != rdomain) {
            return Err(NetifError::WrongKind {
                ifname: vrf,
                why: format!("is not a vrf with table {rdomain}"),
            });
        }
        if l.master == Some(v.index) {
            return Ok(());
        }
        self.set_link(
            "IFLA_MASTER",
            &l,
            None,
            vec![LinkAttribute::Controller(v.index)],
        )
    }

    fn add_addr(
        &mut self,
        op: &'static str,
        ifname: &str,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<(), NetifError> {
        let l = self.must_link(ifname)?;
        let mut m = AddressMessage::default();
        m.header.family = match addr {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        m.header.prefix_len = prefix_len;
        m.header.index = l.index;
        m.attributes.push(AddressAttribute::Local(addr));
        m.attributes.push(AddressAttribute::Address(addr));
        self.request(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(|_| ())
        .map_err(|e| NetifError::os(op, ifname, e))
    }

    /// `SIOCAIFADDR`: an IPv4 address with its mask.
    pub fn add_inet(
        &mut self,
        ifname: &str,
        addr: Ipv4Addr,
        mask: Ipv4Addr,
    ) -> Result<(), NetifError> {
        let len = u32::from(mask).leading_ones() as u8;
        self.add_addr("SIOCAIFADDR", ifname, IpAddr::V4(addr), len)
    }

    /// `SIOCAIFADDR_IN6`: an IPv6 address with its prefix mask.
    pub fn add_inet6(
        &mut self,
        ifname: &str,
        addr: Ipv6Addr,
        mask: Ipv6Addr,
    ) -> Result<(), NetifError> {
        let len = u128::from(mask).leading_ones() as u8;
        self.add_addr("SIOCAIFADDR_IN6", ifname, IpAddr::V6(addr), len)
    }

    /// The addresses of a link (tests, and what `ifconfig` would show).
    pub fn addresses(&mut self, ifname: &str) -> Result<Vec<(IpAddr, u8)>, NetifError> {
        let l = self.must_link(ifname)?;
        let msgs = self
            .request(
                RouteNetlinkMessage::GetAddress(AddressMessage::default()),
                NLM_F_DUMP,
            )
            .map_err(|e| NetifError::os("RTM_GETADDR", ifname, e))?;
        let mut out = Vec::new();
        for m in msgs {
            if let RouteNetlinkMessage::NewAddress(a) = m {
                if a.header.index != l.index {
                    continue;
                }
                for at in &a.attributes {
                    if let AddressAttribute::Address(ip) = at {
                        out.push((*ip, a.header.prefix_len));
                    }
                }
            }
        }
        Ok(out)
    }

    /// `SIOCGIFADDR` on a tap's descriptor: its MAC.
    pub fn tap_lladdr(&mut self, tap: BorrowedFd) -> Result<[u8; 6], NetifError> {
        let name = super::tap::tap_name(tap).map_err(|e| NetifError::WrongKind {
            ifname: format!("descriptor {}", tap.as_raw_fd()),
            why: format!("is not a tap ({e})"),
        })?;
        let l = self.must_link(&name)?;
        l.mac.ok_or_else(|| NetifError::WrongKind {
            ifname: name,
            why: "has no ethernet address".to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netif_group_table() {
        let t = parse_group_table(
            "# comment\n0\tdefault\n  17 vms # trailing\n0x20 lan\nbad line\n18 vms\nx y\n",
        );
        assert_eq!(t.get("default"), Some(&0));
        assert_eq!(t.get("vms"), Some(&17), "the first line wins");
        assert_eq!(t.get("lan"), Some(&32));
        assert_eq!(t.len(), 3);
    }
}
