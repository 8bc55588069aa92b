//! Linux: taps (/dev/net/tun) and rtnetlink for interfaces.
pub mod netif;
pub mod tap;
