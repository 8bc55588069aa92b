//! Ethernet, IPv4 and UDP headers for vmd's DHCP server: decoding what
//! the guest sends with the checks packet.c makes (`decode_hw_header`,
//! `decode_udp_ip_header`) and assembling replies as it does
//! (`assemble_hw_header`, `assemble_udp_ip_header`).  Every access is
//! bounds-checked: a short or lying frame gives `None`.
use std::net::Ipv4Addr;

pub const ETHER_ADDR_LEN: usize = 6;
pub const ETHER_HDR_LEN: usize = 14;
pub const ETHERTYPE_IP: u16 = 0x0800;
pub const ETHER_BROADCAST: [u8; 6] = [0xff; 6];
/// `struct ip` without options.
pub const IP_HDR_LEN: usize = 20;
pub const UDP_HDR_LEN: usize = 8;
pub const IPPROTO_UDP: u8 = 17;
/// What vmd puts in its replies' IP header.
pub const IPTOS_LOWDELAY: u8 = 0x10;
pub const REPLY_TTL: u8 = 16;

/// One's-complement sum of `buf` as 16-bit big-endian words (an odd last
/// byte is the high byte of a word), folded into `sum`.
pub fn checksum(buf: &[u8], mut sum: u32) -> u32 {
    let mut words = buf.chunks_exact(2);
    for w in &mut words {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
        if sum > 0xffff {
            sum -= 0xffff;
        }
    }
    if let [b] = words.remainder() {
        sum += u32::from(*b) << 8;
        if sum > 0xffff {
            sum -= 0xffff;
        }
    }
    sum
}

/// The checksum field's value for a folded sum (host order; written big
/// endian).
pub fn wrapsum(sum: u32) -> u16 {
    !(sum as u16)
}

/// An Ethernet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EtherHeader {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ethertype: u16,
}

/// The Ethernet header at the start of `frame`, and where its payload
/// starts.  Like packet.c, the type is not checked here.
pub fn decode_ether(frame: &[u8]) -> Option<(EtherHeader, usize)> {
    let h = frame.get(..ETHER_HDR_LEN)?;
    let mut dst = [0; 6];
    let mut src = [0; 6];
    dst.copy_from_slice(&h[0..6]);
    src.copy_from_slice(&h[6..12]);
    let ethertype = u16::from_be_bytes([h[12], h[13]]);
    Some((
        EtherHeader {
            dst,
            src,
            ethertype,
        },
        ETHER_HDR_LEN,
    ))
}

/// Appends an Ethernet header carrying IPv4.
pub fn assemble_ether(out: &mut Vec<u8>, dst: [u8; 6], src: [u8; 6]) {
    out.extend_from_slice(&dst);
    out.extend_from_slice(&src);
    out.extend_from_slice(&ETHERTYPE_IP.to_be_bytes());
}

/// A UDP datagram in IPv4, as decoded from a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpIp {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    /// Where the UDP payload starts in the frame.
    pub data_offset: usize,
    /// The payload's length by the UDP header (the frame may go on).
    pub data_len: usize,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

/// The pseudo-header part of a UDP checksum: addresses, protocol and
/// UDP length.
fn pseudo_sum(src: Ipv4Addr, dst: Ipv4Addr, ulen: u16) -> u32 {
    let mut addrs = [0u8; 8];
    addrs[..4].copy_from_slice(&src.octets());
    addrs[4..].copy_from_slice(&dst.octets());
    checksum(&addrs, u32::from(IPPROTO_UDP) + u32::from(ulen))
}

/// The UDP checksum over a header (checksum field taken as zero), its
/// payload and the pseudo-header.
pub fn udp_checksum(src: Ipv4Addr, dst: Ipv4Addr, udp_hdr: &[u8; 8], data: &[u8]) -> u16 {
    let ulen = u16::from_be_bytes([udp_hdr[4], udp_hdr[5]]);
    let mut hdr = *udp_hdr;
    hdr[6] = 0;
    hdr[7] = 0;
    wrapsum(checksum(&hdr, checksum(data, pseudo_sum(src, dst, ulen))))
}

/// The IPv4 and UDP headers at `offset` in `frame`, with packet.c's
/// checks: the header length from IHL within the frame, protocol UDP,
/// the header checksum, the IP total length and the UDP length within the
/// frame (bytes after them are allowed), a UDP length of at least its
/// header, and the UDP checksum unless it is zero.  The IP version and
/// fragment fields are not looked at, as in vmd.
pub fn decode_udp_ip(frame: &[u8], offset: usize) -> Option<UdpIp> {
    let ip = frame.get(offset..offset.checked_add(IP_HDR_LEN)?)?;
    let ip_len = usize::from(ip[0] & 0x0f) << 2;
    let hdr = frame.get(offset..offset + ip_len)?;
    if ip[9] != IPPROTO_UDP {
        return None;
    }
    if wrapsum(checksum(hdr, 0)) != 0 {
        return None;
    }
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if frame.len() < offset + total {
        return None;
    }
    let udp_at = offset + ip_len;
    let udp = frame.get(udp_at..udp_at + UDP_HDR_LEN)?;
    let ulen = be16(udp, 4)?;
    if frame.len() < udp_at + usize::from(ulen) {
        return None;
    }
    let data_len = usize::from(ulen).checked_sub(UDP_HDR_LEN)?;
    let data_offset = udp_at + UDP_HDR_LEN;
    let data = frame.get(data_offset..data_offset + data_len)?;
    let usum = be16(udp, 6)?;
    let mut udp_hdr = [0u8; 8];
    udp_hdr.copy_from_slice(udp);
    if usum != 0 && usum != udp_checksum(src, dst, &udp_hdr, data) {
        return None;
    }
    Some(UdpIp {
        src,
        dst,
        sport: be16(udp, 0)?,
        dport: be16(udp, 2)?,
        data_offset,
        data_len,
    })
}

/// Appends IPv4 and UDP headers for `data` and then `data` itself, as
/// vmd's replies look: TOS low delay, id 0, no fragment bits, TTL 16,
/// both checksums filled in.  `None` if the datagram would not fit the
/// 16-bit length fields.
pub fn assemble_udp_ip(
    out: &mut Vec<u8>,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    data: &[u8],
) -> Option<()> {
    let ulen = u16::try_from(UDP_HDR_LEN + data.len()).ok()?;
    let total = u16::try_from(IP_HDR_LEN + usize::from(ulen)).ok()?;
    let mut ip = [0u8; IP_HDR_LEN];
    ip[0] = 0x45;
    ip[1] = IPTOS_LOWDELAY;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    // id 0, offset 0
    ip[8] = REPLY_TTL;
    ip[9] = IPPROTO_UDP;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = wrapsum(checksum(&ip, 0));
    ip[10..12].copy_from_slice(&sum.to_be_bytes());

    let mut udp = [0u8; UDP_HDR_LEN];
    udp[0..2].copy_from_slice(&sport.to_be_bytes());
    udp[2..4].copy_from_slice(&dport.to_be_bytes());
    udp[4..6].copy_from_slice(&ulen.to_be_bytes());
    let usum = udp_checksum(src, dst, &udp, data);
    udp[6..8].copy_from_slice(&usum.to_be_bytes());

    out.extend_from_slice(&ip);
    out.extend_from_slice(&udp);
    out.extend_from_slice(data);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(100, 64, 1, 2);
    const B: Ipv4Addr = Ipv4Addr::new(100, 64, 1, 3);

    fn frame(data: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        assemble_ether(&mut f, [2; 6], [4; 6]);
        assemble_udp_ip(&mut f, A, B, 67, 68, data).unwrap();
        f
    }

    #[test]
    fn checksum_known_values() {
        // RFC 1071's example: 0001 f203 f4f5 f6f7 sums to ddf2.
        let b = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&b, 0), 0xddf2);
        assert_eq!(wrapsum(0xddf2), 0x220d);
        // An odd byte is a high byte.
        assert_eq!(checksum(&[0x12], 0), 0x1200);
        // Carries fold back in.
        assert_eq!(checksum(&[0xff, 0xff, 0x00, 0x02], 0), 0x0002);
        assert_eq!(checksum(&[], 7), 7);
        // A well-known IPv4 header (Wikipedia's example): sum b861.
        let ip = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(wrapsum(checksum(&ip, 0)), 0xb861);
    }

    #[test]
    fn build_then_parse() {
        let data = b"hello, guest";
        let f = frame(data);
        assert_eq!(
            f.len(),
            ETHER_HDR_LEN + IP_HDR_LEN + UDP_HDR_LEN + data.len()
        );
        let (eh, off) = decode_ether(&f).unwrap();
        assert_eq!(
            eh,
            EtherHeader {
                dst: [2; 6],
                src: [4; 6],
                ethertype: ETHERTYPE_IP
            }
        );
        let u = decode_udp_ip(&f, off).unwrap();
        assert_eq!((u.src, u.dst, u.sport, u.dport), (A, B, 67, 68));
        assert_eq!(&f[u.data_offset..u.data_offset + u.data_len], data);
        // The header fields vmd's replies carry.
        let ip = &f[14..34];
        assert_eq!(ip[0], 0x45);
        assert_eq!(ip[1], IPTOS_LOWDELAY);
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]) as usize, 28 + data.len());
        assert_eq!(&ip[4..8], &[0, 0, 0, 0]);
        assert_eq!(ip[8], 16);
        // Both checksums verify as a receiver checks them: the sums over
        // the header, and over pseudo-header + UDP, come to 0xffff.
        assert_eq!(checksum(ip, 0), 0xffff);
        let udp_and_data = &f[34..];
        let s = checksum(udp_and_data, pseudo_sum(A, B, (8 + data.len()) as u16));
        assert_eq!(s, 0xffff);
    }

    #[test]
    fn odd_payload_and_zero_udp_checksum() {
        let mut f = frame(b"odd");
        assert!(decode_udp_ip(&f, 14).is_some());
        // A zero UDP checksum means "none": accepted as is.
        f[40] = 0;
        f[41] = 0;
        assert!(decode_udp_ip(&f, 14).is_some());
    }

    #[test]
    fn bad_checksums_are_refused() {
        let f = frame(b"payload");
        let mut bad_ip = f.clone();
        bad_ip[14 + 8] ^= 1; // TTL
        assert_eq!(decode_udp_ip(&bad_ip, 14), None);
        let mut bad_udp = f.clone();
        *bad_udp.last_mut().unwrap() ^= 0x80;
        assert_eq!(decode_udp_ip(&bad_udp, 14), None);
    }

    /// Sets a header field and fixes the IP checksum so that only the
    /// field's own check can refuse the frame.
    fn with_ip(f: &[u8], at: usize, v: &[u8]) -> Vec<u8> {
        let mut g = f.to_vec();
        g[14 + at..14 + at + v.len()].copy_from_slice(v);
        g[24] = 0;
        g[25] = 0;
        let s = wrapsum(checksum(&g[14..34], 0));
        g[24..26].copy_from_slice(&s.to_be_bytes());
        g
    }

    #[test]
    fn lengths_are_checked() {
        let f = frame(b"0123456789");
        // Truncated anywhere: nothing.
        for n in 0..f.len() {
            assert_eq!(decode_udp_ip(&f[..n], 14), None, "cut at {n}");
        }
        assert_eq!(decode_ether(&f[..13]), None);
        // Trailing bytes after the datagram are accepted (as vmd does).
        let mut longer = f.clone();
        longer.extend_from_slice(&[0; 6]);
        assert!(decode_udp_ip(&longer, 14).is_some());
        // IP total length past the frame.
        let g = with_ip(&f, 2, &(f.len() as u16).to_be_bytes());
        assert_eq!(decode_udp_ip(&g, 14), None);
        // Not UDP.
        let g = with_ip(&f, 9, &[6]);
        assert_eq!(decode_udp_ip(&g, 14), None);
        // IHL past the frame (15 * 4 = 60 bytes of header).
        let big = frame(&[0u8; 40]);
        let short = with_ip(&big[..14 + 40], 0, &[0x4f]);
        assert_eq!(decode_udp_ip(&short, 14), None);
        // UDP length below its header, or past the frame.
        let mut g = f.clone();
        g[38..40].copy_from_slice(&7u16.to_be_bytes());
        g[40..42].copy_from_slice(&[0, 0]);
        assert_eq!(decode_udp_ip(&g, 14), None);
        g[38..40].copy_from_slice(&0xffffu16.to_be_bytes());
        assert_eq!(decode_udp_ip(&g, 14), None);
        // An offset at the very end of usize.
        assert_eq!(decode_udp_ip(&f, usize::MAX), None);
        assert_eq!(decode_udp_ip(&f, usize::MAX - 10), None);
    }

    #[test]
    fn ip_options_move_the_udp_header() {
        // IHL 6: four bytes of IP options before UDP.
        let inner = frame(b"xyz");
        let mut g = inner[..34].to_vec();
        g.extend_from_slice(&[1, 1, 1, 0]); // NOP NOP NOP EOL
        g.extend_from_slice(&inner[34..]);
        g[14] = 0x46;
        let total = (g.len() - 14) as u16;
        g[16..18].copy_from_slice(&total.to_be_bytes());
        g[24] = 0;
        g[25] = 0;
        let s = wrapsum(checksum(&g[14..38], 0));
        g[24..26].copy_from_slice(&s.to_be_bytes());
        let u = decode_udp_ip(&g, 14).unwrap();
        assert_eq!(u.data_offset, 14 + 24 + 8);
        assert_eq!(&g[u.data_offset..u.data_offset + 3], b"xyz");
    }

    #[test]
    fn too_long_to_assemble() {
        let mut out = Vec::new();
        let big = vec![0u8; 65536];
        assert_eq!(assemble_udp_ip(&mut out, A, B, 1, 2, &big), None);
        assert!(out.is_empty());
        let max = vec![0u8; 65535 - 28];
        assert!(assemble_udp_ip(&mut out, A, B, 1, 2, &max).is_some());
    }
}
