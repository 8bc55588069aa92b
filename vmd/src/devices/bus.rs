//! The port-I/O and MMIO buses: devices register ranges and receive
//! accesses by offset into their range, so each model can be tested by
//! injecting accesses (QEMU's qtest idea) without a VM.
use std::sync::{Arc, Mutex};

/// A device reached through port I/O.  `offset` is relative to the start
/// of the range the device was registered at; `size` is 1, 2 or 4.
pub trait PioDevice: Send {
    fn pio_read(&mut self, offset: u16, size: u8) -> u32;
    fn pio_write(&mut self, offset: u16, size: u8, value: u32);
}

/// A device reached through MMIO.  `size` is 1, 2, 4 or 8.
pub trait MmioDevice: Send {
    fn mmio_read(&mut self, offset: u64, size: u8) -> u64;
    fn mmio_write(&mut self, offset: u64, size: u8, value: u64);
}

pub type SharedPio = Arc<Mutex<dyn PioDevice>>;
pub type SharedMmio = Arc<Mutex<dyn MmioDevice>>;

/// All-ones of `size` bytes: what reads of unclaimed ports return.
pub fn all_ones(size: u8) -> u32 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        _ => 0xffff_ffff,
    }
}

/// The I/O port map (vmd's `ioports_map`): ranges of ports → devices.
#[derive(Default, Clone)]
pub struct PioBus {
    ranges: Vec<(u16, u16, SharedPio)>,
}

impl PioBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Claims `len` ports from `base` for `dev`; later registrations shadow
    /// earlier ones where they overlap.
    pub fn register(&mut self, base: u16, len: u16, dev: SharedPio) {
        self.ranges.push((base, len, dev));
    }

    fn find(&self, port: u16) -> Option<(u16, &SharedPio)> {
        self.ranges
            .iter()
            .rev()
            .find(|(base, len, _)| port >= *base && (port as u32) < *base as u32 + *len as u32)
            .map(|(base, _, dev)| (port - base, dev))
    }

    /// A read from `port`; unclaimed ports read as all-ones.
    pub fn read(&self, port: u16, size: u8) -> u32 {
        match self.find(port) {
            Some((off, dev)) => dev.lock().unwrap().pio_read(off, size),
            None => all_ones(size),
        }
    }

    /// A write to `port`; writes to unclaimed ports are dropped.
    pub fn write(&self, port: u16, size: u8, value: u32) {
        if let Some((off, dev)) = self.find(port) {
            dev.lock().unwrap().pio_write(off, size, value);
        }
    }

    pub fn is_claimed(&self, port: u16) -> bool {
        self.find(port).is_some()
    }
}

/// The MMIO device registry (vmd's `mmio_dev_add`): searched newest
/// registration first, so small ranges can shadow a larger window.
#[derive(Default, Clone)]
pub struct MmioBus {
    ranges: Vec<(u64, u64, SharedMmio)>,
}

impl MmioBus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&mut self, base: u64, len: u64, dev: SharedMmio) {
        self.ranges.push((base, len, dev));
    }

    fn find(&self, gpa: u64) -> Option<(u64, &SharedMmio)> {
        self.ranges
            .iter()
            .rev()
            .find(|(base, len, _)| gpa >= *base && gpa - base < *len)
            .map(|(base, _, dev)| (gpa - base, dev))
    }

    /// A read at `gpa`; None when no device claims the address.
    pub fn read(&self, gpa: u64, size: u8) -> Option<u64> {
        let (off, dev) = self.find(gpa)?;
        Some(dev.lock().unwrap().mmio_read(off, size))
    }

    /// A write at `gpa`; false when no device claims the address.
    pub fn write(&self, gpa: u64, size: u8, value: u64) -> bool {
        match self.find(gpa) {
            Some((off, dev)) => {
                dev.lock().unwrap().mmio_write(off, size, value);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u32);
    impl PioDevice for Echo {
        fn pio_read(&mut self, offset: u16, _size: u8) -> u32 {
            self.0 + offset as u32
        }
        fn pio_write(&mut self, _offset: u16, _size: u8, value: u32) {
            self.0 = value;
        }
    }

    #[test]
    fn unclaimed_ports_read_all_ones_and_offsets_are_relative() {
        let mut bus = PioBus::new();
        bus.register(0x40, 4, Arc::new(Mutex::new(Echo(0x100))));
        assert_eq!(bus.read(0x10, 1), 0xff);
        assert_eq!(bus.read(0x10, 2), 0xffff);
        assert_eq!(bus.read(0x10, 4), 0xffff_ffff);
        assert_eq!(bus.read(0x42, 1), 0x102);
        bus.write(0x43, 1, 7);
        assert_eq!(bus.read(0x40, 1), 7);
        assert_eq!(bus.read(0x44, 1), 0xff);
    }

    struct Mem(u64);
    impl MmioDevice for Mem {
        fn mmio_read(&mut self, offset: u64, _size: u8) -> u64 {
            self.0 + offset
        }
        fn mmio_write(&mut self, _offset: u64, _size: u8, value: u64) {
            self.0 = value;
        }
    }

    #[test]
    fn newest_mmio_registration_shadows_older() {
        let mut bus = MmioBus::new();
        bus.register(0xF000_0000, 0x100_0000, Arc::new(Mutex::new(Mem(0))));
        bus.register(0xF000_1000, 0x1000, Arc::new(Mutex::new(Mem(0x10_0000))));
        assert_eq!(bus.read(0xF000_0010, 4), Some(0x10));
        assert_eq!(bus.read(0xF000_1010, 4), Some(0x10_0010));
        assert_eq!(bus.read(0xE000_0000, 4), None);
        assert!(!bus.write(0xE000_0000, 4, 1));
    }
}
