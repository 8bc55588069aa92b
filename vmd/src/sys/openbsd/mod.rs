//! OpenBSD: taps (/dev/tapN) and interface ioctls.
pub mod netif;
pub mod tap;
