//! The DHCP server against requests built here the way clients build
//! them, each reply checked field by field against dhcp.c's.
use std::net::Ipv4Addr;

use vmd_proto::config::GlobalConfig;

use super::dhcp::*;
use super::local::LocalLease;
use super::packet::{self, ETHER_BROADCAST};

pub(super) const MAC: [u8; 6] = [0xfe, 0xe1, 0xbb, 0xd1, 0x12, 0x34];
pub(super) const HOST_MAC: [u8; 6] = [0xfe, 0xe1, 0xba, 0xd0, 0x00, 0x01];
const XID: [u8; 4] = [0xde, 0xad, 0xbe, 0xef];

pub(super) fn lease() -> LocalLease {
    LocalLease::new(&GlobalConfig::default(), 5, 1, MAC, "web01").unwrap()
}

/// What a client puts in a request.
#[derive(Clone)]
pub(super) struct Req {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub chaddr: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub op: u8,
    pub htype: u8,
    pub hlen: u8,
    pub hops: u8,
    pub ciaddr: [u8; 4],
    pub file0: u8,
    /// Options after the cookie (None: no cookie at all).
    pub options: Option<Vec<u8>>,
    /// Pad the BOOTP message to at least this many bytes.
    pub min_len: usize,
}

impl Default for Req {
    fn default() -> Self {
        Req {
            dst_mac: ETHER_BROADCAST,
            src_mac: MAC,
            chaddr: MAC,
            src: Ipv4Addr::UNSPECIFIED,
            dst: Ipv4Addr::BROADCAST,
            sport: CLIENT_PORT,
            dport: SERVER_PORT,
            op: BOOTREQUEST,
            htype: 1,
            hlen: 6,
            hops: 0,
            ciaddr: [0; 4],
            file0: 0,
            options: Some(vec![DHO_DHCP_MESSAGE_TYPE, 1, DHCPDISCOVER, DHO_END]),
            min_len: BOOTP_MIN_LEN,
        }
    }
}

impl Req {
    pub(super) fn dhcp(t: u8, extra: &[u8]) -> Self {
        let mut o = vec![DHO_DHCP_MESSAGE_TYPE, 1, t];
        o.extend_from_slice(extra);
        o.push(DHO_END);
        Req {
            options: Some(o),
            ..Req::default()
        }
    }

    pub(super) fn frame(&self) -> Vec<u8> {
        let mut b = vec![0u8; OPTIONS_OFFSET];
        b[0] = self.op;
        b[1] = self.htype;
        b[2] = self.hlen;
        b[3] = self.hops;
        b[4..8].copy_from_slice(&XID);
        b[8..10].copy_from_slice(&3u16.to_be_bytes()); // secs
        b[10..12].copy_from_slice(&0x8000u16.to_be_bytes()); // broadcast flag
        b[12..16].copy_from_slice(&self.ciaddr);
        b[28..34].copy_from_slice(&self.chaddr);
        b[108] = self.file0;
        if let Some(o) = &self.options {
            b.extend_from_slice(&DHCP_OPTIONS_COOKIE);
            b.extend_from_slice(o);
        }
        if b.len() < self.min_len {
            b.resize(self.min_len, 0);
        }
        let mut f = Vec::new();
        packet::assemble_ether(&mut f, self.dst_mac, self.src_mac);
        packet::assemble_udp_ip(&mut f, self.src, self.dst, self.sport, self.dport, &b).unwrap();
        f
    }
}

/// A reply taken apart: headers through our own decoder (so checksums
/// are verified), the BOOTP fields and the options.
pub(super) struct Reply {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub udp: packet::UdpIp,
    pub ip_ttl: u8,
    pub ip_tos: u8,
    pub bootp: Vec<u8>,
    pub options: Vec<(u8, Vec<u8>)>,
}

pub(super) fn decode_reply(f: &[u8]) -> Reply {
    let (eh, off) = packet::decode_ether(f).expect("ethernet header");
    assert_eq!(eh.ethertype, packet::ETHERTYPE_IP);
    let udp = packet::decode_udp_ip(f, off).expect("valid IPv4/UDP with checksums");
    assert_eq!(
        udp.data_offset + udp.data_len,
        f.len(),
        "nothing after the datagram"
    );
    let bootp = f[udp.data_offset..].to_vec();
    assert!(bootp.len() >= BOOTP_MIN_LEN);
    assert_eq!(&bootp[236..240], &DHCP_OPTIONS_COOKIE);
    let options = option_list(&bootp[240..]);
    Reply {
        eth_dst: eh.dst,
        eth_src: eh.src,
        udp,
        ip_ttl: f[off + 8],
        ip_tos: f[off + 1],
        bootp,
        options,
    }
}

fn respond(req: &Req) -> Option<Vec<u8>> {
    LocalServer::new(lease()).respond(&req.frame())
}

fn ip(a: Ipv4Addr) -> Vec<u8> {
    a.octets().to_vec()
}

#[test]
fn discover_gets_offer_field_by_field() {
    let l = lease();
    assert_eq!(l.host_addr, Ipv4Addr::new(100, 64, 5, 4));
    assert_eq!(l.guest_addr, Ipv4Addr::new(100, 64, 5, 5));
    let mut s = LocalServer::new(l.clone());
    let f = s.respond(&Req::default().frame()).expect("an offer");
    assert_eq!(s.replies(), 1);
    let r = decode_reply(&f);
    // Ethernet: to the guest, from the guest's MAC + 1 in the last byte.
    assert_eq!(r.eth_dst, MAC);
    assert_eq!(r.eth_src, [0xfe, 0xe1, 0xbb, 0xd1, 0x12, 0x35]);
    // IP/UDP: host side:67 → guest's address:68, TTL 16, TOS low delay.
    assert_eq!(r.udp.src, l.host_addr);
    assert_eq!(r.udp.dst, l.guest_addr);
    assert_eq!((r.udp.sport, r.udp.dport), (67, 68));
    assert_eq!((r.ip_ttl, r.ip_tos), (16, 0x10));
    // BOOTP fixed part.
    let b = &r.bootp;
    assert_eq!(b[0], BOOTREPLY);
    assert_eq!((b[1], b[2], b[3]), (1, 6, 0));
    assert_eq!(&b[4..8], &XID);
    assert_eq!(&b[8..12], &[0; 4], "secs and flags are not echoed");
    assert_eq!(&b[12..16], &[0; 4], "ciaddr");
    assert_eq!(&b[16..20], &[100, 64, 5, 5], "yiaddr");
    assert_eq!(&b[20..24], &[100, 64, 5, 4], "siaddr");
    assert_eq!(&b[24..28], &[0; 4], "giaddr");
    assert_eq!(&b[28..34], &MAC);
    assert!(
        b[34..236].iter().all(|&x| x == 0),
        "chaddr pad, sname, file"
    );
    // Options in dhcp.c's order, and nothing else.
    assert_eq!(
        r.options,
        vec![
            (DHO_DHCP_MESSAGE_TYPE, vec![DHCPOFFER]),
            (DHO_DHCP_LEASE_TIME, vec![0xff; 4]),
            (DHO_DHCP_SERVER_IDENTIFIER, ip(l.host_addr)),
            (DHO_SUBNET_MASK, vec![255, 255, 255, 254]),
            (DHO_ROUTERS, ip(l.host_addr)),
            (DHO_DOMAIN_NAME_SERVERS, ip(l.host_addr)),
        ]
    );
    // 240 + 3 + 6 + 6 + 6 + 6 + 6 + END = 274, padded to 300.
    assert_eq!(b.len(), BOOTP_MIN_LEN);
    assert_eq!(b[273], DHO_END);
    assert!(b[274..].iter().all(|&x| x == 0));
    assert_eq!(f.len(), 14 + 20 + 8 + 300);
}

#[test]
fn request_gets_ack_or_nak() {
    let l = lease();
    let ack_type = |f: Vec<u8>| decode_reply(&f).options[0].clone();
    // No requested address, the right one, or 0.0.0.0: ACK.
    let plain = Req::dhcp(DHCPREQUEST, &[]);
    assert_eq!(ack_type(respond(&plain).unwrap()), (53, vec![DHCPACK]));
    let mut right = vec![DHO_DHCP_REQUESTED_ADDRESS, 4];
    right.extend_from_slice(&l.guest_addr.octets());
    let r = respond(&Req::dhcp(DHCPREQUEST, &right)).unwrap();
    let rep = decode_reply(&r);
    assert_eq!(rep.options[0], (53, vec![DHCPACK]));
    assert_eq!(&rep.bootp[16..20], &l.guest_addr.octets());
    let zero = [DHO_DHCP_REQUESTED_ADDRESS, 4, 0, 0, 0, 0];
    assert_eq!(
        ack_type(respond(&Req::dhcp(DHCPREQUEST, &zero)).unwrap()),
        (53, vec![DHCPACK])
    );
    // Another address: NAK, with the same fields otherwise.
    let wrong = [DHO_DHCP_REQUESTED_ADDRESS, 4, 192, 168, 1, 9];
    let r = decode_reply(&respond(&Req::dhcp(DHCPREQUEST, &wrong)).unwrap());
    assert_eq!(r.options[0], (53, vec![DHCPNAK]));
    assert_eq!(&r.bootp[16..20], &l.guest_addr.octets());
    // A requested-address option of the wrong size is ignored.
    let odd = [DHO_DHCP_REQUESTED_ADDRESS, 3, 192, 168, 1];
    assert_eq!(
        ack_type(respond(&Req::dhcp(DHCPREQUEST, &odd)).unwrap()),
        (53, vec![DHCPACK])
    );
    // Every other message type gets a NAK (vmd keeps no state).
    for t in [DHCPDECLINE, DHCPRELEASE, DHCPINFORM, DHCPOFFER, 9, 200] {
        let r = decode_reply(&respond(&Req::dhcp(t, &[])).unwrap());
        assert_eq!(r.options[0], (53, vec![DHCPNAK]), "type {t}");
    }
}

#[test]
fn bootp_request_gets_bootp_reply() {
    let l = lease();
    // No cookie at all.
    let req = Req {
        options: None,
        ..Req::default()
    };
    let r = decode_reply(&respond(&req).unwrap());
    assert_eq!(
        r.options,
        vec![
            (DHO_SUBNET_MASK, vec![255, 255, 255, 254]),
            (DHO_ROUTERS, ip(l.host_addr)),
            (DHO_DOMAIN_NAME_SERVERS, ip(l.host_addr)),
        ]
    );
    assert_eq!(&r.bootp[16..20], &l.guest_addr.octets());
    // A cookie but no message type; and a message type of 0.
    for opts in [vec![DHO_END], vec![DHO_DHCP_MESSAGE_TYPE, 1, 0, DHO_END]] {
        let req = Req {
            options: Some(opts),
            ..Req::default()
        };
        let r = decode_reply(&respond(&req).unwrap());
        assert_eq!(r.options.len(), 3);
        assert_eq!(r.options[0].0, DHO_SUBNET_MASK);
    }
}

#[test]
fn options_are_scanned_as_dhcp_c_does() {
    // Pads before the type; the last message type wins; END stops.
    let o = vec![
        0,
        0,
        DHO_DHCP_MESSAGE_TYPE,
        1,
        DHCPREQUEST,
        DHO_DHCP_MESSAGE_TYPE,
        1,
        DHCPDISCOVER,
        DHO_END,
        DHO_DHCP_MESSAGE_TYPE,
        1,
        DHCPINFORM,
    ];
    let req = Req {
        options: Some(o),
        ..Req::default()
    };
    let r = decode_reply(&respond(&req).unwrap());
    assert_eq!(r.options[0], (53, vec![DHCPOFFER]));
    // A message type of length 2 is not one.
    let req = Req {
        options: Some(vec![DHO_DHCP_MESSAGE_TYPE, 2, 1, 1, DHO_END]),
        ..Req::default()
    };
    let r = decode_reply(&respond(&req).unwrap());
    assert_eq!(r.options[0].0, DHO_SUBNET_MASK, "BOOTP");
    // An option running past the frame ends the scan: what came before
    // counts.
    let mut req = Req {
        options: Some(vec![DHO_DHCP_MESSAGE_TYPE, 1, DHCPDISCOVER, 77, 250]),
        min_len: 0,
        ..Req::default()
    };
    req.options.as_mut().unwrap().resize(70, 0x41);
    let f = req.frame();
    assert!(f.len() >= 314);
    let r = decode_reply(&LocalServer::new(lease()).respond(&f).unwrap());
    assert_eq!(r.options[0], (53, vec![DHCPOFFER]));
    // The type as the very last two... three bytes of the frame.
    let mut o = vec![0u8; 100];
    o.extend_from_slice(&[DHO_DHCP_MESSAGE_TYPE, 1, DHCPDISCOVER]);
    let req = Req {
        options: Some(o),
        min_len: 0,
        ..Req::default()
    };
    let r = decode_reply(&respond(&req).unwrap());
    assert_eq!(r.options[0], (53, vec![DHCPOFFER]));
}

#[test]
fn options_region_of_a_full_packet_is_bootp() {
    // Options from the end of the fixed part to the end of a 1514-byte
    // frame: 1236 bytes, not below OPTIONS_MAX_LEN, so BOOTP.
    let req = Req {
        min_len: 1500 - 28,
        ..Req::default()
    };
    let f = req.frame();
    assert_eq!(f.len(), 1514);
    let r = decode_reply(&LocalServer::new(lease()).respond(&f).unwrap());
    assert_eq!(r.options[0].0, DHO_SUBNET_MASK);
    // One byte less and it is DHCP again.
    let req = Req {
        min_len: 1500 - 28 - 1,
        ..Req::default()
    };
    let r = decode_reply(&respond(&req).unwrap());
    assert_eq!(r.options[0], (53, vec![DHCPOFFER]));
}

#[test]
fn requests_vmd_does_not_answer() {
    let base = Req::default();
    let cases: Vec<(&str, Req)> = vec![
        (
            "to another MAC",
            Req {
                dst_mac: [2, 0, 0, 0, 0, 1],
                ..base.clone()
            },
        ),
        (
            "from another MAC",
            Req {
                src_mac: [2, 0, 0, 0, 0, 1],
                ..base.clone()
            },
        ),
        (
            "for another chaddr",
            Req {
                chaddr: [2, 0, 0, 0, 0, 1],
                ..base.clone()
            },
        ),
        (
            "from port 67",
            Req {
                sport: 67,
                ..base.clone()
            },
        ),
        (
            "to port 68",
            Req {
                dport: 68,
                ..base.clone()
            },
        ),
        (
            "a reply",
            Req {
                op: 2,
                ..base.clone()
            },
        ),
        (
            "htype 6",
            Req {
                htype: 6,
                ..base.clone()
            },
        ),
        (
            "hlen 16",
            Req {
                hlen: 16,
                ..base.clone()
            },
        ),
        (
            "relayed",
            Req {
                hops: 1,
                ..base.clone()
            },
        ),
        (
            "with ciaddr (renewing)",
            Req {
                ciaddr: [100, 64, 5, 5],
                ..base.clone()
            },
        ),
        (
            "asking for a boot file",
            Req {
                file0: b'b',
                ..base.clone()
            },
        ),
        (
            "shorter than BOOTP's 300 bytes",
            Req {
                min_len: 0,
                ..base.clone()
            },
        ),
    ];
    for (what, req) in cases {
        assert_eq!(respond(&req), None, "{what}");
    }
    let f = base.frame();
    let mut s = LocalServer::new(lease());
    // Longer than 1514 bytes.
    let mut long = Req {
        min_len: 1500,
        ..base.clone()
    }
    .frame();
    assert_eq!(s.respond(&long), None);
    long.truncate(1514);
    assert_eq!(s.respond(&long), None, "IP length past the frame");
    // Broken IP or UDP checksums.
    let mut g = f.clone();
    g[14 + 10] ^= 1;
    assert_eq!(s.respond(&g), None);
    let mut g = f.clone();
    g[14 + 20 + 6] ^= 1;
    assert_eq!(s.respond(&g), None);
    // A zero UDP checksum is fine.
    let mut g = f.clone();
    g[40] = 0;
    g[41] = 0;
    assert!(s.respond(&g).is_some());
    // Every truncation of a good request.
    for n in 0..f.len() {
        assert_eq!(s.respond(&f[..n]), None, "cut at {n}");
    }
    // Not IPv4 UDP at all: an ARP request for the host side, padded as
    // big as a request.  vmd leaves ARP to the tap (the host answers).
    let mut arp = Vec::new();
    arp.extend_from_slice(&ETHER_BROADCAST);
    arp.extend_from_slice(&MAC);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&MAC);
    arp.extend_from_slice(&[100, 64, 5, 5, 0, 0, 0, 0, 0, 0, 100, 64, 5, 4]);
    assert_eq!(s.respond(&arp), None);
    arp.resize(400, 0);
    assert_eq!(s.respond(&arp), None);
    assert_eq!(s.replies(), 1);
}

#[test]
fn to_the_taps_mac_once_known() {
    let to_host = Req {
        dst_mac: HOST_MAC,
        ..Req::default()
    };
    let mut s = LocalServer::new(lease());
    assert_eq!(s.respond(&to_host.frame()), None, "host MAC not known yet");
    s.set_host_mac(HOST_MAC);
    let r = decode_reply(&s.respond(&to_host.frame()).unwrap());
    assert_eq!(
        r.eth_src,
        [0xfe, 0xe1, 0xbb, 0xd1, 0x12, 0x35],
        "still mac+1"
    );
    assert!(
        s.respond(&Req::default().frame()).is_some(),
        "broadcast too"
    );
}

#[test]
fn the_last_mac_byte_wraps() {
    let mac = [2, 0, 0, 0, 0, 0xff];
    let l = LocalLease::new(&GlobalConfig::default(), 1, 0, mac, "vm").unwrap();
    let req = Req {
        src_mac: mac,
        chaddr: mac,
        ..Req::default()
    };
    let r = decode_reply(&LocalServer::new(l).respond(&req.frame()).unwrap());
    assert_eq!(r.eth_src, [2, 0, 0, 0, 0, 0]);
}

#[test]
fn network_boot_adds_file_and_host_name() {
    let l = lease().with_pxeboot(true);
    let r = decode_reply(
        &LocalServer::new(l.clone())
            .respond(&Req::default().frame())
            .unwrap(),
    );
    assert_eq!(&r.bootp[108..120], b"auto_install");
    assert!(r.bootp[120..236].iter().all(|&x| x == 0));
    assert_eq!(
        r.options.last().unwrap(),
        &(DHO_HOST_NAME, b"web01".to_vec())
    );
    assert_eq!(r.options.len(), 7);
    // Names that are no host names, or a single character: the file but
    // no host name.
    for name in ["bad_name", "-x", "x-", "a.-b", "x", "", "sp ace"] {
        let l = LocalLease {
            vm_name: name.to_string(),
            ..l.clone()
        };
        let r = decode_reply(
            &LocalServer::new(l)
                .respond(&Req::default().frame())
                .unwrap(),
        );
        assert_eq!(&r.bootp[108..120], b"auto_install", "{name:?}");
        assert!(r.options.iter().all(|o| o.0 != DHO_HOST_NAME), "{name:?}");
    }
    // Dotted names pass; a NUL ends the name as in C.
    let l2 = LocalLease {
        vm_name: "a1.b-2\0junk".to_string(),
        ..l.clone()
    };
    let r = decode_reply(
        &LocalServer::new(l2)
            .respond(&Req::default().frame())
            .unwrap(),
    );
    assert_eq!(
        r.options.last().unwrap(),
        &(DHO_HOST_NAME, b"a1.b-2".to_vec())
    );
    // A host name too long for the options: no reply at all.
    let l3 = LocalLease {
        vm_name: "a".repeat(1300),
        ..l
    };
    assert_eq!(LocalServer::new(l3).respond(&Req::default().frame()), None);
}

#[test]
fn res_hnok_as_resolv() {
    for ok in [
        "a", "web01", "a.b", "a-b.c-d", "1.2.3.4", "a.", ".", "a..", "A9z",
    ] {
        assert!(res_hnok(ok.as_bytes()), "{ok}");
    }
    for bad in ["a_b", "-a", "a-", "a.-b", "a b", "é", "a.b-"] {
        assert!(!res_hnok(bad.as_bytes()), "{bad}");
    }
}

#[test]
fn option_list_stops_safely() {
    assert_eq!(option_list(&[1, 4, 1, 2, 3]), vec![]);
    assert_eq!(option_list(&[0, 0, 1]), vec![]);
    assert_eq!(option_list(&[0, 3, 1, 9, 255, 6, 0]), vec![(3, vec![9])]);
}
