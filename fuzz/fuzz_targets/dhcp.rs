//! vmd's built-in DHCP server for local interfaces (`vmd::net`): the
//! Ethernet/IPv4/UDP decoder with its checksums, the BOOTP fixed part
//! and option TLVs of any length, through `LocalServer::respond` as the
//! vionet device calls it with every frame a guest sends.  A reply must
//! decode again with valid checksums, go from the host side port 67 to
//! the guest's address port 68 and MAC, give the lease's address and echo
//! the request's xid, and fit an Ethernet frame.
//!
//! Input: flags (bit 0: network boot, bit 1: the tap's MAC is known), VM
//! id (byte 1), interface index (byte 2, mod 4), then the guest's frame.
//! The guest's MAC is fe:e1:bb:d1:00:01, the tap's fe:e1:ba:d0:00:01.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vmd::net::dhcp::{option_list, BOOTREPLY, CLIENT_PORT, SERVER_PORT};
use vmd::net::packet::{decode_ether, decode_udp_ip, ETHERTYPE_IP};
use vmd::net::{LocalLease, LocalServer};
use vmd_proto::config::GlobalConfig;

const GUEST_MAC: [u8; 6] = [0xfe, 0xe1, 0xbb, 0xd1, 0x00, 0x01];
const HOST_MAC: [u8; 6] = [0xfe, 0xe1, 0xba, 0xd0, 0x00, 0x01];

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let frame = &data[3..];
    // The parsers on their own, at every plausible offset.
    for off in [0, 14, 18] {
        let _ = decode_udp_ip(frame, off);
    }
    let _ = option_list(frame);

    let lease = LocalLease::new(
        &GlobalConfig::default(),
        u32::from(data[1]),
        usize::from(data[2] % 4),
        GUEST_MAC,
        "fuzz-vm",
    )
    .expect("small ids fit the default prefix")
    .with_pxeboot(data[0] & 1 != 0);
    let mut server = LocalServer::new(lease.clone());
    if data[0] & 2 != 0 {
        server.set_host_mac(HOST_MAC);
    }
    let Some(reply) = server.respond(frame) else {
        return;
    };
    assert!(reply.len() <= 1514, "reply of {} bytes", reply.len());
    let (eh, off) = decode_ether(&reply).expect("reply's ethernet header");
    assert_eq!(eh.dst, GUEST_MAC);
    assert_eq!(eh.ethertype, ETHERTYPE_IP);
    let u = decode_udp_ip(&reply, off).expect("reply decodes with valid checksums");
    assert_eq!((u.src, u.dst), (lease.host_addr, lease.guest_addr));
    assert_eq!((u.sport, u.dport), (SERVER_PORT, CLIENT_PORT));
    assert_eq!(u.data_offset + u.data_len, reply.len());
    let bootp = &reply[u.data_offset..];
    assert_eq!(bootp[0], BOOTREPLY);
    assert_eq!(&bootp[16..20], &lease.guest_addr.octets());
    let req = decode_udp_ip(frame, 14).expect("an answered request decodes");
    assert_eq!(&bootp[4..8], &frame[req.data_offset + 4..req.data_offset + 8]);
});
