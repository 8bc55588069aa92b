//! OpenBSD: interface ioctls.
pub mod netif;
