//! The VM process: one guest, its vCPU and its devices.
pub mod boot;
pub mod bus;
pub mod exit;
pub mod guest_memory;
pub mod irq;
pub mod machine;
pub mod memmap;

#[cfg(test)]
mod fuzz_tests;
