//! The x86 side of MMIO emulation (reference §6).
