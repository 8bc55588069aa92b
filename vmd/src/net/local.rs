//! The address rule of local interfaces (`local interface`, `vmctl start
//! -L`), as priv.c's `vm_priv_addr` and `vm_priv_addr6` compute it.
//!
//! VM id *n*, interface *i*: the /31 `(n << 8) | 2 * (i + 1)` ORed into
//! `local prefix` (100.64.0.0/10 by default); its even address is the tap
//! (host side, the guest's router), its odd one the guest.  So VM 1 gets
//! 100.64.1.2/.3 on its first local NIC, .4/.5 on the second.  The pair
//! is refused when the result leaves the prefix (VM id too high for it)
//! or the index would not fit the low byte (127 and up).
//!
//! With `local inet6`, the tap also gets an IPv6 address in a /96: the
//! prefix, the guest's IPv4 address in bytes 8-11, and 1 (host) or 2
//! (guest) in the last byte.  vmd does not answer router solicitations,
//! so the guest's v6 address is only ever configured by the guest (rad(8)
//! on the host).
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};
use vmd_proto::config::{BootDevice, GlobalConfig, Ipv4Prefix, Ipv6Prefix};

/// The tap's IPv4 netmask on a local interface: a /31.
pub const LOCAL_PREFIX_LEN: u8 = 31;
/// The tap's IPv6 prefix length on a local interface: a /96.
pub const LOCAL_PREFIX6_LEN: u8 = 96;
/// Interfaces per VM the rule can encode (index 0..=126).
pub const LOCAL_MAX_IDX: usize = 0x7f;

/// Why an interface has no local address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocalAddrError {
    /// vmd's own words (priv.c logs them and fails the VM's start).
    #[error("dhcp address range exceeded, vm id {vm_id} interface {idx}")]
    RangeExceeded { vm_id: u32, idx: usize },
}

/// The netmask of a prefix length (anything above 32 is a /32).
fn mask4(len: u8) -> u32 {
    match len {
        0 => 0,
        l if l >= 32 => u32::MAX,
        l => u32::MAX << (32 - u32::from(l)),
    }
}

/// `vm_priv_addr`: the host side (`is_vm` false) or the guest side of VM
/// `vm_id`'s interface `idx` in `prefix`.
///
/// As in vmd the VM id is ORed into the prefix, not added: an id whose
/// bits fall inside the mask passes the check when the prefix already has
/// those bits set (with 100.64.0.0/10, VM 16384 gets VM 0's addresses).
pub fn vm_priv_addr(
    prefix: &Ipv4Prefix,
    vm_id: u32,
    idx: usize,
    is_vm: bool,
) -> Result<Ipv4Addr, LocalAddrError> {
    let err = LocalAddrError::RangeExceeded { vm_id, idx };
    if idx >= LOCAL_MAX_IDX {
        return Err(err);
    }
    // Bits shifted out of 32 are lost, as with vmd's uint32_t.
    let mut addr = vm_id << 8;
    // idx < 127: (idx + 1) * 2 <= 254, an even low byte.
    addr |= ((idx as u32) + 1) * 2;
    if is_vm {
        addr += 1;
    }
    let net = u32::from(prefix.addr);
    let addr = addr | net;
    if addr & mask4(prefix.len) != net {
        return Err(err);
    }
    Ok(Ipv4Addr::from(addr))
}

/// `vm_priv_addr6`: the host side (`is_vm` false) or the guest side of
/// VM `vm_id`'s interface `idx` under the IPv6 prefix `prefix6`; the
/// guest's IPv4 address (from `prefix4`) names the /96.
pub fn vm_priv_addr6(
    prefix4: &Ipv4Prefix,
    prefix6: &Ipv6Prefix,
    vm_id: u32,
    idx: usize,
    is_vm: bool,
) -> Result<Ipv6Addr, LocalAddrError> {
    let guest4 = vm_priv_addr(prefix4, vm_id, idx, true)?;
    let mut a = prefix6.addr.octets();
    a[8..12].copy_from_slice(&guest4.octets());
    a[15] = if is_vm { 2 } else { 1 };
    Ok(Ipv6Addr::from(a))
}

/// The IPv6 prefix vmd makes up at startup for `local inet6` without a
/// `prefix`: fd00::/8 with the 56 bits of Global and Subnet ID random, a
/// /64.  The caller brings the randomness (this module does no I/O).
pub fn auto_prefix6(random: [u8; 7]) -> Ipv6Prefix {
    let mut a = [0u8; 16];
    a[0] = 0xfd;
    a[1..8].copy_from_slice(&random);
    Ipv6Prefix {
        addr: Ipv6Addr::from(a),
        len: 64,
    }
}

/// Gives a configuration with `local inet6` and no explicit prefix its
/// made-up one, once (vmd keeps it across reloads: VMD_CFG_AUTOINET6).
/// Returns whether it set one.
pub fn resolve_auto_prefix6(cfg: &mut GlobalConfig, random: [u8; 7]) -> bool {
    if cfg.inet6 && cfg.local_prefix6.is_none() {
        cfg.local_prefix6 = Some(auto_prefix6(random));
        true
    } else {
        false
    }
}

/// Whether vmd's DHCP server answers interface `idx` as a network boot
/// (boot file `auto_install` and the VM's name as host name).  vm.c tests
/// the boot device with a bitwise AND against VMBOOTDEV_NET (3), so an
/// explicit `boot device disk` or `cdrom` counts too, on the first NIC.
pub fn pxeboot(boot: BootDevice, idx: usize) -> bool {
    idx == 0 && boot.value() & BootDevice::Net.value() != 0
}

/// What vmd's DHCP server hands one local interface of a VM, and what
/// priv puts on its tap.  It can travel to a device process in an imsg
/// (serde).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalLease {
    /// The guest's MAC (the NIC's lladdr): requests must come from it.
    pub guest_mac: [u8; 6],
    /// The odd address of the /31: the guest's.
    pub guest_addr: Ipv4Addr,
    /// The even address: the tap's, the guest's router and DNS server.
    pub host_addr: Ipv4Addr,
    /// Always [`LOCAL_PREFIX_LEN`].
    pub prefix_len: u8,
    /// The VM's name (the host name option of a network boot).
    pub vm_name: String,
    /// With `local inet6`: the guest's and the tap's IPv6 addresses in
    /// their /96 ([`LOCAL_PREFIX6_LEN`]).
    pub guest_addr6: Option<Ipv6Addr>,
    pub host_addr6: Option<Ipv6Addr>,
    /// Answer as to a network boot (see [`pxeboot`]).
    pub pxeboot: bool,
}

impl LocalLease {
    /// The lease of interface `idx` of VM `vm_id` under `cfg`'s `local
    /// prefix` and, with `local inet6`, its IPv6 prefix.  The daemon must
    /// have given an automatic IPv6 prefix its value
    /// ([`resolve_auto_prefix6`]); until then there is no IPv6 address.
    pub fn new(
        cfg: &GlobalConfig,
        vm_id: u32,
        idx: usize,
        guest_mac: [u8; 6],
        vm_name: &str,
    ) -> Result<Self, LocalAddrError> {
        let p4 = &cfg.local_prefix;
        let host_addr = vm_priv_addr(p4, vm_id, idx, false)?;
        let guest_addr = vm_priv_addr(p4, vm_id, idx, true)?;
        let (host_addr6, guest_addr6) = match (cfg.inet6, &cfg.local_prefix6) {
            (true, Some(p6)) => (
                Some(vm_priv_addr6(p4, p6, vm_id, idx, false)?),
                Some(vm_priv_addr6(p4, p6, vm_id, idx, true)?),
            ),
            _ => (None, None),
        };
        Ok(LocalLease {
            guest_mac,
            guest_addr,
            host_addr,
            prefix_len: LOCAL_PREFIX_LEN,
            vm_name: vm_name.to_string(),
            guest_addr6,
            host_addr6,
            pxeboot: false,
        })
    }

    /// The same lease answering as to a network boot or not.
    pub fn with_pxeboot(mut self, pxeboot: bool) -> Self {
        self.pxeboot = pxeboot;
        self
    }

    /// The /31's netmask, 255.255.255.254.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask4(self.prefix_len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p4(a: [u8; 4], len: u8) -> Ipv4Prefix {
        Ipv4Prefix {
            addr: Ipv4Addr::from(a),
            len,
        }
    }

    fn addr(p: &Ipv4Prefix, id: u32, idx: usize, vm: bool) -> Ipv4Addr {
        vm_priv_addr(p, id, idx, vm).unwrap()
    }

    #[test]
    fn default_prefix_matches_vmctl_8() {
        // vmctl.8: VM n, first NIC: tap 100.64.n.2, guest 100.64.n.3;
        // second .4/.5.  Worked out by hand from priv.c for several ids.
        let p = GlobalConfig::default().local_prefix;
        assert_eq!(addr(&p, 1, 0, false), Ipv4Addr::new(100, 64, 1, 2));
        assert_eq!(addr(&p, 1, 0, true), Ipv4Addr::new(100, 64, 1, 3));
        assert_eq!(addr(&p, 1, 1, false), Ipv4Addr::new(100, 64, 1, 4));
        assert_eq!(addr(&p, 1, 1, true), Ipv4Addr::new(100, 64, 1, 5));
        assert_eq!(addr(&p, 1, 3, true), Ipv4Addr::new(100, 64, 1, 9));
        assert_eq!(addr(&p, 7, 2, false), Ipv4Addr::new(100, 64, 7, 6));
        // 300 << 8 = 0x12c00: spills into the third octet's neighbour.
        assert_eq!(addr(&p, 300, 0, true), Ipv4Addr::new(100, 65, 44, 3));
        // The last interface the low byte holds: (126 + 1) * 2 = 254.
        assert_eq!(addr(&p, 2, 126, false), Ipv4Addr::new(100, 64, 2, 254));
        assert_eq!(addr(&p, 2, 126, true), Ipv4Addr::new(100, 64, 2, 255));
        // The highest id under a /10: 22 host bits, 14 for the id.
        assert_eq!(addr(&p, 0x3fff, 0, true), Ipv4Addr::new(100, 127, 255, 3));
        // VM id 0 (never handed out by vmd, but the rule covers it).
        assert_eq!(addr(&p, 0, 0, false), Ipv4Addr::new(100, 64, 0, 2));
    }

    #[test]
    fn other_prefixes() {
        let p = p4([10, 0, 0, 0], 8);
        assert_eq!(addr(&p, 1, 0, false), Ipv4Addr::new(10, 0, 1, 2));
        assert_eq!(addr(&p, 0xffff, 1, true), Ipv4Addr::new(10, 255, 255, 5));
        let p = p4([192, 168, 0, 0], 16);
        assert_eq!(addr(&p, 5, 0, true), Ipv4Addr::new(192, 168, 5, 3));
        assert_eq!(addr(&p, 255, 2, false), Ipv4Addr::new(192, 168, 255, 6));
        let p = p4([172, 16, 0, 0], 12);
        assert_eq!(addr(&p, 0xfff, 0, true), Ipv4Addr::new(172, 31, 255, 3));
    }

    #[test]
    fn exhausted_prefix_is_vmds_error() {
        let p = p4([192, 168, 0, 0], 16);
        let e = vm_priv_addr(&p, 256, 0, false).unwrap_err();
        assert_eq!(e, LocalAddrError::RangeExceeded { vm_id: 256, idx: 0 });
        assert_eq!(
            e.to_string(),
            "dhcp address range exceeded, vm id 256 interface 0"
        );
        // Index 127 would carry into the VM id's byte.
        let d = GlobalConfig::default().local_prefix;
        assert!(vm_priv_addr(&d, 1, 127, false).is_err());
        assert!(vm_priv_addr(&d, 1, usize::MAX, true).is_err());
        // One past the highest id of a /10 (0x4000 sets bit 22, which
        // 100.64/10 has set: accepted, VM 0's pair, as in vmd).
        assert_eq!(addr(&d, 0x4000, 0, true), Ipv4Addr::new(100, 64, 0, 3));
        // 0x8000 sets bit 23, clear in 100.64/10: refused.
        assert!(vm_priv_addr(&d, 0x8000, 0, true).is_err());
        // Ids whose bits leave 32 are lost, as in C; 0x0100_0001 << 8
        // is 0x100: id 1 with its top byte dropped.
        assert_eq!(
            addr(&p, 0x0100_0001, 0, true),
            Ipv4Addr::new(192, 168, 1, 3)
        );
        // A prefix with host bits set never matches its own mask.
        let bad = p4([192, 168, 0, 1], 16);
        assert!(vm_priv_addr(&bad, 1, 0, false).is_err());
    }

    #[test]
    fn ipv6_rule() {
        let p = GlobalConfig::default().local_prefix;
        let p6 = Ipv6Prefix {
            addr: "fd12:3456:789a:1::".parse().unwrap(),
            len: 64,
        };
        // VM 1, NIC 0: guest 100.64.1.3 = 6440:0103 in bytes 8-11.
        assert_eq!(
            vm_priv_addr6(&p, &p6, 1, 0, false).unwrap(),
            "fd12:3456:789a:1:6440:103::1".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            vm_priv_addr6(&p, &p6, 1, 0, true).unwrap(),
            "fd12:3456:789a:1:6440:103::2".parse::<Ipv6Addr>().unwrap()
        );
        // Both sides name the guest's v4 address, also for NIC 1.
        assert_eq!(
            vm_priv_addr6(&p, &p6, 9, 1, false).unwrap(),
            "fd12:3456:789a:1:6440:905::1".parse::<Ipv6Addr>().unwrap()
        );
        assert!(vm_priv_addr6(&p, &p6, 0x8000, 0, false).is_err());
    }

    #[test]
    fn auto_prefix() {
        let p = auto_prefix6([1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(p.len, 64);
        assert_eq!(p.addr, "fd01:203:405:607::".parse::<Ipv6Addr>().unwrap());
        let mut cfg = GlobalConfig::default();
        assert!(!resolve_auto_prefix6(&mut cfg, [9; 7]), "inet6 is off");
        assert_eq!(cfg.local_prefix6, None);
        cfg.inet6 = true;
        assert!(resolve_auto_prefix6(&mut cfg, [9; 7]));
        let first = cfg.local_prefix6;
        assert!(!resolve_auto_prefix6(&mut cfg, [1; 7]), "only once");
        assert_eq!(cfg.local_prefix6, first);
    }

    #[test]
    fn lease_from_config() {
        let mac = [0xfe, 0xe1, 0xbb, 0xd1, 0x00, 0x01];
        let mut cfg = GlobalConfig::default();
        let l = LocalLease::new(&cfg, 3, 1, mac, "web").unwrap();
        assert_eq!(l.guest_mac, mac);
        assert_eq!(l.host_addr, Ipv4Addr::new(100, 64, 3, 4));
        assert_eq!(l.guest_addr, Ipv4Addr::new(100, 64, 3, 5));
        assert_eq!(l.prefix_len, 31);
        assert_eq!(l.netmask(), Ipv4Addr::new(255, 255, 255, 254));
        assert_eq!(l.vm_name, "web");
        assert_eq!((l.guest_addr6, l.host_addr6), (None, None));
        assert!(!l.pxeboot);
        assert!(l.with_pxeboot(true).pxeboot);

        cfg.local_prefix = p4([10, 20, 0, 0], 16);
        cfg.inet6 = true;
        cfg.local_prefix6 = Some(Ipv6Prefix {
            addr: "fd00:1::".parse().unwrap(),
            len: 64,
        });
        let l = LocalLease::new(&cfg, 2, 0, mac, "db").unwrap();
        assert_eq!(l.host_addr, Ipv4Addr::new(10, 20, 2, 2));
        assert_eq!(l.host_addr6, Some("fd00:1::a14:203:0:1".parse().unwrap()));
        assert_eq!(l.guest_addr6, Some("fd00:1::a14:203:0:2".parse().unwrap()));

        let e = LocalLease::new(&cfg, 256, 0, mac, "x").unwrap_err();
        assert_eq!(e, LocalAddrError::RangeExceeded { vm_id: 256, idx: 0 });
    }

    #[test]
    fn lease_travels_in_an_imsg_payload() {
        let mut cfg = GlobalConfig {
            inet6: true,
            ..GlobalConfig::default()
        };
        resolve_auto_prefix6(&mut cfg, [1, 2, 3, 4, 5, 6, 7]);
        let l = LocalLease::new(&cfg, 4, 2, [2, 3, 4, 5, 6, 7], "vm4")
            .unwrap()
            .with_pxeboot(true);
        let bytes = vmd_proto::codec::encode(&l).unwrap();
        assert_eq!(vmd_proto::codec::decode::<LocalLease>(&bytes).unwrap(), l);
    }

    #[test]
    fn pxeboot_as_vm_c_tests_it() {
        assert!(pxeboot(BootDevice::Net, 0));
        assert!(!pxeboot(BootDevice::Net, 1));
        assert!(!pxeboot(BootDevice::Auto, 0));
        // VMBOOTDEV_DISK (1) & VMBOOTDEV_NET (3) != 0.
        assert!(pxeboot(BootDevice::Disk, 0));
        assert!(pxeboot(BootDevice::Cdrom, 0));
    }
}
