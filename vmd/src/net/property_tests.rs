//! "No panic" properties of the DHCP server and its packet parser: the
//! guest writes every byte of the frames it sends, so
//! [`LocalServer::respond`] and [`decode_udp_ip`] must return for any of
//! them, and every reply must be well formed.
//!
//! Each case starts from a request a client could send (random message
//! type, options, padding, to broadcast or the tap's MAC) and then maybe
//! damages it: truncation, random bytes anywhere, hostile IHL, IP and UDP
//! lengths, option TLVs whose lengths run past the end, option areas of
//! every size; the checksums are then usually recomputed so that the
//! damage reaches the checks behind them.  Some cases are pure noise.
//! A reply must decode with valid checksums, go to the guest from the
//! host side, and echo the request's xid.
//!
//! A failing case prints its seed and input; rerunning the test
//! reproduces it.
use std::net::Ipv4Addr;

use super::dhcp::*;
use super::packet::{self, checksum, decode_udp_ip, wrapsum};
use super::tests::{decode_reply, lease, Req, HOST_MAC, MAC};
use crate::property::{cases, Rng};

/// Recomputes the IP header checksum (over IHL's length, when it fits)
/// and the UDP checksum (when the UDP length fits), leaving lengths as
/// they are.
fn fix_checksums(f: &mut [u8]) {
    if f.len() < 34 {
        return;
    }
    let ihl = usize::from(f[14] & 0xf) * 4;
    if 14 + ihl > f.len() || ihl < 12 {
        return;
    }
    f[24] = 0;
    f[25] = 0;
    let s = wrapsum(checksum(&f[14..14 + ihl], 0));
    f[24..26].copy_from_slice(&s.to_be_bytes());
    let u = 14 + ihl;
    if u + 8 > f.len() || ihl < 20 {
        return;
    }
    let ulen = usize::from(u16::from_be_bytes([f[u + 4], f[u + 5]]));
    if ulen < 8 || u + ulen > f.len() {
        return;
    }
    let src = Ipv4Addr::new(f[26], f[27], f[28], f[29]);
    let dst = Ipv4Addr::new(f[30], f[31], f[32], f[33]);
    let mut hdr = [0u8; 8];
    hdr.copy_from_slice(&f[u..u + 8]);
    let s = packet::udp_checksum(src, dst, &hdr, &f[u + 8..u + ulen]);
    f[u + 6..u + 8].copy_from_slice(&s.to_be_bytes());
}

/// Random option TLVs, often hostile.
fn options(rng: &mut Rng) -> Vec<u8> {
    let mut o = Vec::new();
    if rng.one_in(4) {
        o.extend_from_slice(&[DHO_DHCP_MESSAGE_TYPE, 1, rng.below(10) as u8]);
    }
    for _ in 0..rng.below(12) {
        match rng.below(7) {
            0 => o.push(DHO_PAD),
            1 => o.push(DHO_END),
            2 => o.extend_from_slice(&[DHO_DHCP_MESSAGE_TYPE, 1, rng.below(10) as u8]),
            3 => {
                o.extend_from_slice(&[DHO_DHCP_REQUESTED_ADDRESS, 4]);
                o.extend_from_slice(&[100, 64, rng.below(3) as u8 + 4, rng.below(8) as u8]);
            }
            4 => {
                // A length running anywhere, likely past the end.
                o.push(rng.next() as u8);
                o.push(rng.next() as u8);
            }
            _ => {
                let code = rng.next() as u8;
                let len = rng.below(40) as usize;
                o.push(code);
                o.push(len as u8);
                let mut v = vec![0u8; len];
                rng.fill(&mut v);
                o.extend_from_slice(&v);
            }
        }
    }
    o
}

fn frame(rng: &mut Rng) -> Vec<u8> {
    if rng.one_in(16) {
        let mut f = vec![0u8; rng.below(1600) as usize];
        rng.fill(&mut f);
        return f;
    }
    let t = rng.pick(&[DHCPDISCOVER, DHCPREQUEST, DHCPINFORM, 0]);
    let mut req = Req::dhcp(t, &options(rng));
    if rng.one_in(6) {
        req.options = None;
    }
    if rng.one_in(3) {
        req.dst_mac = HOST_MAC;
    }
    req.min_len = rng.pick(&[0, BOOTP_MIN_LEN, 548, 1235 + 236, 1236 + 236, 1500]);
    let mut f = req.frame();
    let damage = rng.below(8);
    for _ in 0..damage {
        match rng.below(8) {
            0 => {
                let n = rng.below(f.len() as u64 + 1) as usize;
                f.truncate(n);
            }
            1 if !f.is_empty() => {
                let i = rng.below(f.len() as u64) as usize;
                f[i] = rng.next() as u8;
            }
            2 if f.len() > 14 => f[14] = 0x40 | rng.below(16) as u8,
            3 if f.len() > 17 => {
                let v = rng.edgy_u64() as u16;
                f[16..18].copy_from_slice(&v.to_be_bytes());
            }
            4 if f.len() > 39 => {
                let v = rng.edgy_u64() as u16;
                f[38..40].copy_from_slice(&v.to_be_bytes());
            }
            5 => {
                let mut tail = vec![0u8; rng.below(64) as usize];
                rng.fill(&mut tail);
                f.extend_from_slice(&tail);
            }
            6 if f.len() > 40 => {
                // The fixed BOOTP fields vmd checks.
                let i = 42 + rng.pick(&[0usize, 1, 2, 3, 12, 28, 33, 108]);
                if i < f.len() {
                    f[i] = rng.pick(&[0u8, 1, 2, 6, 0xff]);
                }
            }
            _ => {}
        }
    }
    if !rng.one_in(5) {
        fix_checksums(&mut f);
    }
    f
}

fn describe(f: &Vec<u8>) -> String {
    format!("{} bytes: {:02x?}", f.len(), f)
}

#[test]
fn respond_never_panics_and_replies_are_well_formed() {
    let l = lease();
    let mut replies = 0u64;
    cases("dhcp respond", 0x5eed_d4c9, 6_000, frame, describe, |f| {
        let mut s = LocalServer::new(l.clone());
        s.set_host_mac(HOST_MAC);
        let _ = decode_udp_ip(&f, 14);
        let _ = decode_udp_ip(&f, 0);
        let _ = option_list(&f);
        let Some(reply) = s.respond(&f) else {
            return;
        };
        replies += 1;
        let r = decode_reply(&reply);
        assert_eq!(r.eth_dst, MAC);
        assert_eq!((r.udp.src, r.udp.dst), (l.host_addr, l.guest_addr));
        assert_eq!((r.udp.sport, r.udp.dport), (67, 68));
        assert_eq!(r.bootp[0], BOOTREPLY);
        assert_eq!(&r.bootp[16..20], &l.guest_addr.octets());
        // The request's xid, from where its UDP payload starts.
        let u = decode_udp_ip(&f, 14).expect("an answered request decodes");
        assert_eq!(&r.bootp[4..8], &f[u.data_offset + 4..u.data_offset + 8]);
        assert!(reply.len() <= 1514);
    });
    // The generator must reach the answering path often enough for the
    // checks above to mean something.
    assert!(replies > 400, "only {replies} of 6000 cases were answered");
}

#[test]
fn option_scan_never_panics() {
    cases(
        "dhcp options",
        0x5eed_d4ca,
        4_000,
        |rng| {
            let mut o = options(rng);
            let n = rng.below(o.len() as u64 + 1) as usize;
            o.truncate(n);
            o
        },
        describe,
        |o| {
            let req = Req {
                options: Some(o.clone()),
                min_len: 0,
                ..Req::default()
            };
            let f = req.frame();
            let mut s = LocalServer::new(lease());
            let r = s.respond(&f);
            // A well-formed request of at least 314 bytes is answered
            // whatever its options say.
            assert_eq!(r.is_some(), f.len() >= 314, "len {}", f.len());
            let _ = option_list(&o);
        },
    );
}
