//! The VM process: one guest, its vCPU and its devices.
pub mod boot;
pub mod devproc;
pub mod exit;
pub mod guest_memory;
pub mod machine;
pub mod memmap;
pub mod platform;
pub mod vcpu;

#[cfg(test)]
mod property_tests;
