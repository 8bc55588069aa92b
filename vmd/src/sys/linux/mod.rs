//! Linux: rtnetlink for interfaces.
pub mod netif;
