//! vmd's built-in DHCP/BOOTP server for local interfaces (dhcp.c): the
//! vionet device hands it every frame the guest sends on a local
//! interface; a DHCP or BOOTP request from the guest gets its one reply,
//! anything else is left alone.
//!
//! There is no state machine, as in vmd: every request gets the same
//! address (the guest side of the interface's /31, [`super::local`]).
//! DISCOVER → OFFER, REQUEST for that address (or none) → ACK, any other
//! DHCP message → NAK, a request without a DHCP message type (BOOTP) →
//! a BOOTP reply.  Every reply carries the subnet mask 255.255.255.254,
//! the host side as router and as DNS server, and with DHCP the lease
//! time 0xffffffff (infinite) and the host side as server identifier; a
//! network boot adds the boot file `auto_install` and the VM's name as
//! host name (when it is a valid host name of more than one character).
//!
//! What is taken as a request, as dhcp.c does: a frame of 314 to 1514
//! bytes, to the broadcast MAC or the tap's, from the guest's MAC, IPv4
//! UDP from port 68 to 67 with valid checksums ([`packet`]), a
//! BOOTREQUEST for an Ethernet address that is the guest's, with no
//! client address, boot file or relay hops.  ARP and everything else is
//! not answered here: it goes to the tap, whose host-side address the
//! host's kernel answers ARP for.
//!
//! Where vionet calls it (vionet.c's transmit path): only on a `local`
//! interface, after the `locked lladdr` source check has passed, with
//! the frame without its virtio-net header; a reply means the frame is
//! consumed (not written to the tap) and the reply is queued to the
//! guest's receive queue; no reply means the frame goes to the tap.
//! The tap's MAC, once the parent sends it (IMSG_DEVOP_HOSTMAC), goes to
//! [`LocalServer::set_host_mac`].
use std::net::Ipv4Addr;

use super::local::LocalLease;
use super::packet::{self, ETHER_ADDR_LEN, ETHER_BROADCAST, ETHER_HDR_LEN};

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
pub const BOOTREQUEST: u8 = 1;
pub const BOOTREPLY: u8 = 2;
/// `ARPHRD_ETHER`, the htype packet.c gives an Ethernet frame.
pub const HTYPE_ETHER: u8 = 1;
/// The shortest BOOTP message; replies are padded to it.
pub const BOOTP_MIN_LEN: usize = 300;
/// Where the options start in a `struct dhcp_packet`.
pub const OPTIONS_OFFSET: usize = 236;
/// Room for options in a 1500-byte IP packet (dhcp.c's OPTIONS_MAX_LEN).
pub const OPTIONS_MAX_LEN: usize = 1500 - packet::IP_HDR_LEN - packet::UDP_HDR_LEN - OPTIONS_OFFSET;
/// The largest frame dhcp.c looks at.
pub const MAX_REQUEST_FRAME: usize = 1500 + ETHER_HDR_LEN;
pub const DHCP_OPTIONS_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// vmd's lease never changes: the longest lease there is.
pub const LEASE_TIME: u32 = 0xffff_ffff;
/// The boot file of a network boot.
pub const PXEBOOT_FILE: &str = "auto_install";

// Offsets in a `struct dhcp_packet`.
const OP: usize = 0;
const HTYPE: usize = 1;
const HLEN: usize = 2;
const HOPS: usize = 3;
const XID: usize = 4;
const CIADDR: usize = 12;
const YIADDR: usize = 16;
const SIADDR: usize = 20;
const CHADDR: usize = 28;
const FILE: usize = 108;

pub const DHO_PAD: u8 = 0;
pub const DHO_SUBNET_MASK: u8 = 1;
pub const DHO_ROUTERS: u8 = 3;
pub const DHO_DOMAIN_NAME_SERVERS: u8 = 6;
pub const DHO_HOST_NAME: u8 = 12;
pub const DHO_DHCP_REQUESTED_ADDRESS: u8 = 50;
pub const DHO_DHCP_LEASE_TIME: u8 = 51;
pub const DHO_DHCP_MESSAGE_TYPE: u8 = 53;
pub const DHO_DHCP_SERVER_IDENTIFIER: u8 = 54;
pub const DHO_END: u8 = 255;

pub const DHCPDISCOVER: u8 = 1;
pub const DHCPOFFER: u8 = 2;
pub const DHCPREQUEST: u8 = 3;
pub const DHCPDECLINE: u8 = 4;
pub const DHCPACK: u8 = 5;
pub const DHCPNAK: u8 = 6;
pub const DHCPRELEASE: u8 = 7;
pub const DHCPINFORM: u8 = 8;

/// What the server takes from a request it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub htype: u8,
    pub hlen: u8,
    /// Copied into the reply as it came (byte order does not matter).
    pub xid: [u8; 4],
    /// The DHCP message type; 0 for BOOTP (no or no usable option).
    pub dhcptype: u8,
    /// The requested address option, if any.
    pub requested: Option<Ipv4Addr>,
}

/// The server of one local interface.
#[derive(Debug, Clone)]
pub struct LocalServer {
    lease: LocalLease,
    /// The tap's MAC (IMSG_DEVOP_HOSTMAC); all zero until the parent
    /// sends it, as in vmd.
    host_mac: [u8; 6],
    replies: u64,
}

impl LocalServer {
    pub fn new(lease: LocalLease) -> Self {
        LocalServer {
            lease,
            host_mac: [0; 6],
            replies: 0,
        }
    }

    pub fn lease(&self) -> &LocalLease {
        &self.lease
    }

    /// The tap's MAC: requests may be sent to it as well as broadcast.
    pub fn set_host_mac(&mut self, mac: [u8; 6]) {
        self.host_mac = mac;
    }

    /// Replies given so far.
    pub fn replies(&self) -> u64 {
        self.replies
    }

    /// Looks at a frame the guest sent.  `Some(reply)`: the frame was a
    /// request this server answered; the reply is a full Ethernet frame
    /// for the guest's receive queue, and the request is not passed on
    /// to the tap.  `None`: not for this server; the frame goes on to the
    /// tap as any other.
    pub fn respond(&mut self, frame_from_guest: &[u8]) -> Option<Vec<u8>> {
        let req = parse_request(&self.lease, &self.host_mac, frame_from_guest)?;
        let reply = build_reply(&self.lease, &req)?;
        self.replies += 1;
        Some(reply)
    }
}

/// The request in `frame`, if it is one the server of `lease` answers.
pub fn parse_request(lease: &LocalLease, host_mac: &[u8; 6], frame: &[u8]) -> Option<Request> {
    if frame.len() < BOOTP_MIN_LEN + ETHER_HDR_LEN || frame.len() > MAX_REQUEST_FRAME {
        return None;
    }
    let (eh, offset) = packet::decode_ether(frame)?;
    if eh.dst != ETHER_BROADCAST && eh.dst != *host_mac {
        return None;
    }
    if eh.src != lease.guest_mac {
        return None;
    }
    let udp = packet::decode_udp_ip(frame, offset)?;
    if udp.sport != CLIENT_PORT || udp.dport != SERVER_PORT {
        return None;
    }
    // The fixed part from where UDP's payload starts; the options run to
    // the end of the frame (as dhcp.c reads them), not of the datagram.
    let off = udp.data_offset;
    let fixed = frame.get(off..off.checked_add(OPTIONS_OFFSET)?)?;
    if fixed[OP] != BOOTREQUEST
        || fixed[HTYPE] != HTYPE_ETHER
        || usize::from(fixed[HLEN]) != ETHER_ADDR_LEN
        || fixed[CHADDR..CHADDR + ETHER_ADDR_LEN] != lease.guest_mac
    {
        return None;
    }
    // vmd answers only a client without an address, asking for no boot
    // file, not through a relay.
    if fixed[CIADDR..CIADDR + 4] != [0; 4] || fixed[FILE] != 0 || fixed[HOPS] != 0 {
        return None;
    }
    let mut req = Request {
        htype: fixed[HTYPE],
        hlen: fixed[HLEN],
        xid: [fixed[XID], fixed[XID + 1], fixed[XID + 2], fixed[XID + 3]],
        dhcptype: 0,
        requested: None,
    };
    // Options only when there is room for the cookie and one option, and
    // less than a full packet's worth; otherwise BOOTP.
    let opts = &frame[off + OPTIONS_OFFSET..];
    if opts.len() > DHCP_OPTIONS_COOKIE.len() + 3
        && opts.len() < OPTIONS_MAX_LEN
        && opts[..4] == DHCP_OPTIONS_COOKIE
    {
        let (t, r) = scan_options(&opts[4..]);
        req.dhcptype = t;
        req.requested = r;
    }
    Some(req)
}

/// The message type (last one of length 1) and requested address (last
/// one of length 4) among `opts` (after the cookie).  Stops at END, at an
/// option running past the end, or when fewer than two bytes are left.
fn scan_options(opts: &[u8]) -> (u8, Option<Ipv4Addr>) {
    let mut dhcptype = 0;
    let mut requested = None;
    let mut i = 0;
    while i + 1 < opts.len() && opts[i] != DHO_END {
        if opts[i] == DHO_PAD {
            i += 1;
            continue;
        }
        let len = usize::from(opts[i + 1]);
        let Some(val) = opts.get(i + 2..i + 2 + len) else {
            break;
        };
        match (opts[i], val) {
            (DHO_DHCP_MESSAGE_TYPE, [t]) => dhcptype = *t,
            (DHO_DHCP_REQUESTED_ADDRESS, [a, b, c, d]) => {
                requested = Some(Ipv4Addr::new(*a, *b, *c, *d))
            }
            _ => {}
        }
        i += 2 + len;
    }
    (dhcptype, requested)
}

/// The reply's DHCP message type for a request's.
pub fn reply_type(lease: &LocalLease, req: &Request) -> u8 {
    match req.dhcptype {
        DHCPDISCOVER => DHCPOFFER,
        DHCPREQUEST
            if req
                .requested
                .is_none_or(|a| a == lease.guest_addr || a.is_unspecified()) =>
        {
            DHCPACK
        }
        _ => DHCPNAK,
    }
}

/// resolv(3)'s `res_hnok`: letters, digits and hyphens in dot-separated
/// labels, each label starting and ending with a letter or digit.
pub fn res_hnok(name: &[u8]) -> bool {
    let border = |c: u8| c.is_ascii_alphanumeric();
    let mut prev = b'.';
    for (i, &c) in name.iter().enumerate() {
        let next = name.get(i + 1).copied().unwrap_or(0);
        let ok = if c == b'.' {
            true
        } else if prev == b'.' || next == b'.' || next == 0 {
            border(c)
        } else {
            border(c) || c == b'-'
        };
        if !ok {
            return false;
        }
        prev = c;
    }
    true
}

/// The host name a network boot is given: the VM's name up to a NUL (it
/// is a C string in vmd), when it is a valid host name.
fn pxe_hostname(lease: &LocalLease) -> Option<&[u8]> {
    if !lease.pxeboot {
        return None;
    }
    let b = lease.vm_name.as_bytes();
    let name = &b[..b.iter().position(|&c| c == 0).unwrap_or(b.len())];
    res_hnok(name).then_some(name)
}

fn put_opt(o: &mut Vec<u8>, code: u8, val: &[u8]) {
    o.push(code);
    // Every caller's value is shorter than 256 bytes.
    o.push(val.len() as u8);
    o.extend_from_slice(val);
}

/// The full Ethernet frame answering `req`: from the guest's MAC with its
/// last byte plus one (dhcp.c's choice, not the tap's MAC) to the
/// guest's MAC, from the host side port 67 to the guest's address port
/// 68.  `None` where vmd gives up (a host name too long for the options).
pub fn build_reply(lease: &LocalLease, req: &Request) -> Option<Vec<u8>> {
    let server = lease.host_addr.octets();
    let client = lease.guest_addr.octets();

    let mut bootp = vec![0u8; OPTIONS_OFFSET];
    bootp[OP] = BOOTREPLY;
    bootp[HTYPE] = req.htype;
    bootp[HLEN] = req.hlen;
    bootp[XID..XID + 4].copy_from_slice(&req.xid);
    bootp[YIADDR..YIADDR + 4].copy_from_slice(&client);
    bootp[SIADDR..SIADDR + 4].copy_from_slice(&server);
    // hlen is 6: the request was refused otherwise.
    bootp[CHADDR..CHADDR + ETHER_ADDR_LEN].copy_from_slice(&lease.guest_mac);
    let hostname = pxe_hostname(lease);
    if lease.pxeboot {
        bootp[FILE..FILE + PXEBOOT_FILE.len()].copy_from_slice(PXEBOOT_FILE.as_bytes());
    }

    let mut o = DHCP_OPTIONS_COOKIE.to_vec();
    if req.dhcptype != 0 {
        put_opt(&mut o, DHO_DHCP_MESSAGE_TYPE, &[reply_type(lease, req)]);
        put_opt(&mut o, DHO_DHCP_LEASE_TIME, &LEASE_TIME.to_be_bytes());
        put_opt(&mut o, DHO_DHCP_SERVER_IDENTIFIER, &server);
    }
    put_opt(&mut o, DHO_SUBNET_MASK, &[255, 255, 255, 254]);
    put_opt(&mut o, DHO_ROUTERS, &server);
    put_opt(&mut o, DHO_DOMAIN_NAME_SERVERS, &server);
    if let Some(name) = hostname.filter(|n| n.len() > 1) {
        // Room for the option, the name and END, as dhcp.c checks.
        if o.len() + 2 + name.len() + 1 > OPTIONS_MAX_LEN || name.len() > 255 {
            return None;
        }
        put_opt(&mut o, DHO_HOST_NAME, name);
    }
    o.push(DHO_END);
    bootp.extend_from_slice(&o);
    if bootp.len() < BOOTP_MIN_LEN {
        bootp.resize(BOOTP_MIN_LEN, 0);
    }

    let mut src_mac = lease.guest_mac;
    src_mac[5] = src_mac[5].wrapping_add(1);
    let mut frame = Vec::with_capacity(ETHER_HDR_LEN + 28 + bootp.len());
    packet::assemble_ether(&mut frame, lease.guest_mac, src_mac);
    packet::assemble_udp_ip(
        &mut frame,
        lease.host_addr,
        lease.guest_addr,
        SERVER_PORT,
        CLIENT_PORT,
        &bootp,
    )?;
    Some(frame)
}

/// The options of a DHCP message (after the cookie) as (code, value)
/// pairs, up to END or the first one that runs past the end; for tests
/// and diagnostics.
pub fn option_list(opts: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(&code) = opts.get(i) {
        match code {
            DHO_END => break,
            DHO_PAD => i += 1,
            _ => {
                let Some(&len) = opts.get(i + 1) else { break };
                let Some(val) = opts.get(i + 2..i + 2 + usize::from(len)) else {
                    break;
                };
                out.push((code, val.to_vec()));
                i += 2 + usize::from(len);
            }
        }
    }
    out
}
