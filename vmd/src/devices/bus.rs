//! The port-I/O and MMIO buses: devices register ranges and receive
//! accesses by offset into their range, so each model can be tested by
//! injecting accesses (QEMU's qtest idea) without a VM.
use std::sync::{Arc, Mutex};

/// A registration the bus refuses: a wiring bug, reported by the VM's
/// setup rather than a guest access reaching the wrong device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("{space} range at 0x{base:x} has length 0")]
    Empty { space: &'static str, base: u64 },
    #[error("{space} range 0x{base:x}+0x{len:x} runs past the end of the address space")]
    Wraps {
        space: &'static str,
        base: u64,
        len: u64,
    },
    #[error("{space} range 0x{base:x}+0x{len:x} overlaps 0x{other_base:x}+0x{other_len:x}")]
    Overlap {
        space: &'static str,
        base: u64,
        len: u64,
        other_base: u64,
        other_len: u64,
    },
}

/// Checks `[base, base + len)` against `limit` (one past the last
/// address) and the ranges already registered.
fn check_range(
    space: &'static str,
    base: u64,
    len: u64,
    limit: u128,
    taken: impl Iterator<Item = (u64, u64)>,
) -> Result<(), BusError> {
    if len == 0 {
        return Err(BusError::Empty { space, base });
    }
    if u128::from(base) + u128::from(len) > limit {
        return Err(BusError::Wraps { space, base, len });
    }
    for (other_base, other_len) in taken {
        if base < other_base.saturating_add(other_len) && other_base < base + len {
            return Err(BusError::Overlap {
                space,
                base,
                len,
                other_base,
                other_len,
            });
        }
    }
    Ok(())
}

/// A device reached through port I/O.  `offset` is relative to the start
/// of the range the device was registered at; `size` is 1, 2 or 4.
pub trait PioDevice: Send {
    fn pio_read(&mut self, offset: u16, size: u8) -> u32;
    fn pio_write(&mut self, offset: u16, size: u8, value: u32);
    /// For a PCI I/O BAR's handler: the BAR now starts at port `base`
    /// (told at creation and whenever the guest moves it), or no longer
    /// decodes in the I/O window (None: while it is sized, or moved out
    /// of reach).  A device served in another process uses it to let
    /// its notify writes bypass the VM process.
    fn io_bar_moved(&mut self, _base: Option<u16>) {}
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

    /// Claims `len` ports from `base` for `dev`.  An access is routed by
    /// the port it starts at.
    pub fn register(&mut self, base: u16, len: u16, dev: SharedPio) -> Result<(), BusError> {
        let taken = self
            .ranges
            .iter()
            .map(|(b, l, _)| (u64::from(*b), u64::from(*l)));
        check_range("port", base.into(), len.into(), 0x1_0000, taken)?;
        self.ranges.push((base, len, dev));
        Ok(())
    }

    /// The claimed ranges, (base, len), in registration order.
    pub fn ranges(&self) -> impl Iterator<Item = (u16, u16)> + '_ {
        self.ranges.iter().map(|(b, l, _)| (*b, *l))
    }

    fn find(&self, port: u16) -> Option<(u16, &SharedPio)> {
        self.ranges
            .iter()
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

/// The MMIO device registry (vmd's `mmio_dev_add`).
#[derive(Default, Clone)]
pub struct MmioBus {
    ranges: Vec<(u64, u64, SharedMmio)>,
}

impl MmioBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Claims `[base, base + len)` of guest-physical addresses for `dev`.
    pub fn register(&mut self, base: u64, len: u64, dev: SharedMmio) -> Result<(), BusError> {
        let taken = self.ranges.iter().map(|(b, l, _)| (*b, *l));
        check_range("mmio", base, len, 1 << 64, taken)?;
        self.ranges.push((base, len, dev));
        Ok(())
    }

    fn find(&self, gpa: u64) -> Option<(u64, &SharedMmio)> {
        self.ranges
            .iter()
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
        bus.register(0x40, 4, Arc::new(Mutex::new(Echo(0x100))))
            .unwrap();
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
    fn mmio_offsets_are_relative_and_unclaimed_addresses_say_so() {
        let mut bus = MmioBus::new();
        bus.register(0xF000_0000, 0x1000, Arc::new(Mutex::new(Mem(0))))
            .unwrap();
        bus.register(0xF000_1000, 0x1000, Arc::new(Mutex::new(Mem(0x10_0000))))
            .unwrap();
        assert_eq!(bus.read(0xF000_0010, 4), Some(0x10));
        assert_eq!(bus.read(0xF000_1010, 4), Some(0x10_0010));
        assert_eq!(bus.read(0xE000_0000, 4), None);
        assert!(!bus.write(0xE000_0000, 4, 1));
    }

    #[test]
    fn overlapping_empty_and_wrapping_registrations_are_refused() {
        let dev = || Arc::new(Mutex::new(Echo(0)));
        let mut bus = PioBus::new();
        bus.register(0xCF8, 1, dev()).unwrap();
        bus.register(0xCF9, 1, dev()).unwrap();
        bus.register(0xCFC, 4, dev()).unwrap();
        let overlap = bus.register(0xCF8, 4, dev()).unwrap_err();
        assert_eq!(
            overlap.to_string(),
            "port range 0xcf8+0x4 overlaps 0xcf8+0x1"
        );
        assert!(matches!(
            bus.register(0xCFE, 8, dev()),
            Err(BusError::Overlap {
                other_base: 0xCFC,
                ..
            })
        ));
        assert_eq!(
            bus.register(0x80, 0, dev()),
            Err(BusError::Empty {
                space: "port",
                base: 0x80
            })
        );
        assert!(matches!(
            bus.register(0xFFFF, 2, dev()),
            Err(BusError::Wraps { .. })
        ));
        bus.register(0xFFFF, 1, dev()).unwrap();
        assert_eq!(bus.ranges().count(), 4);

        let mem = || Arc::new(Mutex::new(Mem(0)));
        let mut bus = MmioBus::new();
        bus.register(0xF000_0000, 0x100_0000, mem()).unwrap();
        assert!(bus.register(0xF000_1000, 0x1000, mem()).is_err());
        assert!(bus.register(0xEFFF_FFFF, 2, mem()).is_err());
        assert!(bus.register(u64::MAX, 2, mem()).is_err());
        bus.register(0xEFFF_F000, 0x1000, mem()).unwrap();
    }
}
