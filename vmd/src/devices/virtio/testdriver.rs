//! A tiny virtio guest driver for the device tests: it finds a device
//! through PCI configuration mechanism #1 and its capability list, then
//! negotiates, programs split rings in guest memory and kicks, all by
//! port accesses, as a guest kernel would.
use crate::devices::bus::{MmioBus, PioBus};
use crate::devices::irq::IrqLines;
use crate::devices::pci::{self, PciBus};
use crate::vm::guest_memory::VmMemory;
use std::sync::{Arc, Mutex};
use vmm_sys::GuestMemory;

/// Guest RAM of the test machine: 1 MiB at 0 and 1 MiB at 4 MiB, with a
/// hole between to aim buffers at.
pub(crate) const RAM: [(u64, usize); 2] = [(0, 0x10_0000), (0x40_0000, 0x10_0000)];

/// ISA lines as levels.
#[derive(Default)]
pub(crate) struct Levels {
    up: Mutex<[bool; 16]>,
    pub(crate) asserts: Mutex<u32>,
}

impl Levels {
    pub(crate) fn is_up(&self, irq: u8) -> bool {
        self.up.lock().unwrap()[irq as usize & 15]
    }
}

impl IrqLines for Levels {
    fn assert_irq(&self, irq: u8) {
        self.up.lock().unwrap()[irq as usize & 15] = true;
        *self.asserts.lock().unwrap() += 1;
    }
    fn deassert_irq(&self, irq: u8) {
        self.up.lock().unwrap()[irq as usize & 15] = false;
    }
}

/// The ports and memory a device test needs.
pub(crate) struct TestMachine {
    pub(crate) pio: PioBus,
    pub(crate) pci: Arc<Mutex<PciBus>>,
    pub(crate) mem: GuestMemory,
    pub(crate) lines: Arc<Levels>,
}

impl TestMachine {
    pub(crate) fn new() -> Self {
        let window = crate::vm::memmap::PCI_MMIO_BAR_BASE..=crate::vm::memmap::PCI_MMIO_BAR_END;
        let pci = Arc::new(Mutex::new(PciBus::new(window)));
        let mut pio = PioBus::new();
        pci::attach(&mut pio, &mut MmioBus::new(), &pci).unwrap();
        TestMachine {
            pio,
            pci,
            mem: GuestMemory::anonymous(&RAM).unwrap(),
            lines: Arc::new(Levels::default()),
        }
    }

    /// A driver's view of a machine built elsewhere (the platform).
    pub(crate) fn over(pio: PioBus, pci: Arc<Mutex<PciBus>>, mem: GuestMemory) -> Self {
        TestMachine {
            pio,
            pci,
            mem,
            lines: Arc::new(Levels::default()),
        }
    }

    pub(crate) fn vm_memory(&self) -> VmMemory {
        VmMemory::new(&self.mem).unwrap()
    }

    pub(crate) fn lines(&self) -> Arc<dyn IrqLines> {
        self.lines.clone()
    }

    pub(crate) fn cfg_read(&self, slot: u8, reg: u8, size: u8) -> u32 {
        self.pio.write(
            pci::PCI_MODE1_ADDRESS_REG,
            4,
            pci::PCI_MODE1_ENABLE | u32::from(slot) << 11 | u32::from(reg & 0xfc),
        );
        self.pio
            .read(pci::PCI_MODE1_DATA_REG + u16::from(reg & 3), size)
    }

    /// The I/O base of BAR 0 of the device in `slot`.
    pub(crate) fn io_bar(&self, slot: u8) -> u16 {
        let bar = self.cfg_read(slot, 0x10, 4);
        assert_eq!(bar & 1, 1, "BAR 0 is an I/O BAR");
        (bar & !3) as u16
    }

    pub(crate) fn read_u16(&self, gpa: u64) -> u16 {
        let mut b = [0; 2];
        self.mem.read(gpa, &mut b).unwrap();
        u16::from_le_bytes(b)
    }

    pub(crate) fn write_u16(&self, gpa: u64, v: u16) {
        self.mem.write(gpa, &v.to_le_bytes()).unwrap();
    }
}

/// Where a 1.x device's structures are, found through its capabilities.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Virtio1 {
    pub(crate) common: u16,
    pub(crate) notify: u16,
    pub(crate) isr: u16,
    pub(crate) device: Option<(u16, u32)>,
}

impl Virtio1 {
    /// Walks the capability list of `slot` as virtio_pci_modern does.
    pub(crate) fn probe(m: &TestMachine, slot: u8) -> Virtio1 {
        assert_ne!(m.cfg_read(slot, 0x06, 2) & 0x10, 0, "capability list");
        let base = m.io_bar(slot);
        let mut found = [None; 5];
        let mut ptr = m.cfg_read(slot, 0x34, 1) as u8;
        let mut n = 0;
        while ptr != 0 {
            n += 1;
            assert!(n < 16, "capability list loops");
            if m.cfg_read(slot, ptr, 1) == 0x09 {
                let ty = m.cfg_read(slot, ptr + 3, 1) as usize;
                assert_eq!(m.cfg_read(slot, ptr + 4, 1), 0, "bar");
                let off = m.cfg_read(slot, ptr + 8, 4);
                let len = m.cfg_read(slot, ptr + 12, 4);
                if ty == 2 {
                    assert_eq!(m.cfg_read(slot, ptr + 16, 4), 0, "notify_off_multiplier");
                }
                found[ty] = Some((base + off as u16, len));
            }
            ptr = m.cfg_read(slot, ptr + 1, 1) as u8;
        }
        Virtio1 {
            common: found[1].expect("COMMON_CFG").0,
            notify: found[2].expect("NOTIFY_CFG").0,
            isr: found[3].expect("ISR_CFG").0,
            device: found[4],
        }
    }

    pub(crate) fn status(&self, m: &TestMachine) -> u8 {
        m.pio.read(self.common + 0x14, 1) as u8
    }

    pub(crate) fn set_status(&self, m: &TestMachine, s: u8) {
        m.pio.write(self.common + 0x14, 1, u32::from(s));
    }

    pub(crate) fn device_features(&self, m: &TestMachine) -> u64 {
        m.pio.write(self.common, 4, 0);
        let lo = m.pio.read(self.common + 4, 4);
        m.pio.write(self.common, 4, 1);
        let hi = m.pio.read(self.common + 4, 4);
        u64::from(lo) | u64::from(hi) << 32
    }

    pub(crate) fn write_driver_features(&self, m: &TestMachine, f: u64) {
        m.pio.write(self.common + 8, 4, 0);
        m.pio.write(self.common + 0xc, 4, f as u32);
        m.pio.write(self.common + 8, 4, 1);
        m.pio.write(self.common + 0xc, 4, (f >> 32) as u32);
    }

    /// Reset, ACK, DRIVER, features, FEATURES_OK; returns the status read
    /// back after FEATURES_OK.
    pub(crate) fn negotiate(&self, m: &TestMachine, features: u64) -> u8 {
        self.set_status(m, 0);
        self.set_status(m, 1);
        self.set_status(m, 1 | 2);
        self.write_driver_features(m, features);
        self.set_status(m, 1 | 2 | 8);
        self.status(m)
    }

    /// Programs and enables queue `q` with `ring`.
    pub(crate) fn setup_queue(&self, m: &TestMachine, q: u16, ring: &Ring) {
        m.pio.write(self.common + 0x16, 2, u32::from(q));
        m.pio.write(self.common + 0x18, 2, u32::from(ring.size));
        for (off, addr) in [(0x20, ring.desc), (0x28, ring.avail), (0x30, ring.used)] {
            m.pio.write(self.common + off, 4, addr as u32);
            m.pio.write(self.common + off + 4, 4, (addr >> 32) as u32);
        }
        m.pio.write(self.common + 0x1c, 2, 1);
    }

    pub(crate) fn queue_max(&self, m: &TestMachine, q: u16) -> u16 {
        m.pio.write(self.common + 0x16, 2, u32::from(q));
        m.pio.read(self.common + 0x18, 2) as u16
    }

    pub(crate) fn kick(&self, m: &TestMachine, q: u16) {
        m.pio.write(self.notify, 2, u32::from(q));
    }

    pub(crate) fn isr(&self, m: &TestMachine) -> u8 {
        m.pio.read(self.isr, 1) as u8
    }

    /// Full bring-up of a device with one queue: returns its ring.
    pub(crate) fn bring_up(&self, m: &TestMachine, features: u64, ring: Ring) -> Ring {
        assert_eq!(self.negotiate(m, features) & 8, 8, "FEATURES_OK");
        self.setup_queue(m, 0, &ring);
        self.set_status(m, 1 | 2 | 8 | 4);
        ring
    }
}

/// A split ring the test driver owns.
pub(crate) struct Ring {
    pub(crate) size: u16,
    pub(crate) desc: u64,
    pub(crate) avail: u64,
    pub(crate) used: u64,
    next_desc: u16,
    avail_idx: u16,
    pub(crate) used_seen: u16,
}

pub(crate) const F_NEXT: u16 = 1;
pub(crate) const F_WRITE: u16 = 2;

impl Ring {
    /// A ring of `size` entries laid out from `base` (legacy layout:
    /// descriptors, avail, used on the next 4 KiB).
    pub(crate) fn new(size: u16, base: u64) -> Ring {
        let n = u64::from(size);
        let avail = base + 16 * n;
        let used = (avail + 6 + 2 * n + 0xfff) & !0xfff;
        Ring {
            size,
            desc: base,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// Writes descriptor `i` as given, raw.
    pub(crate) fn put_desc(
        &self,
        m: &TestMachine,
        i: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        m.mem.write(self.desc + 16 * u64::from(i), &d).unwrap();
    }

    /// Publishes `head` in the avail ring and bumps its index.
    pub(crate) fn publish(&mut self, m: &TestMachine, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        m.write_u16(slot, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        m.write_u16(self.avail + 2, self.avail_idx);
    }

    /// Sets the avail index to anything (hostile tests).
    pub(crate) fn set_avail_idx(&mut self, m: &TestMachine, idx: u16) {
        self.avail_idx = idx;
        m.write_u16(self.avail + 2, idx);
    }

    /// Adds a chain of (addr, len, writable) buffers; returns its head.
    pub(crate) fn add(&mut self, m: &TestMachine, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (k, &(addr, len, w)) in bufs.iter().enumerate() {
            let i = (head + k as u16) % self.size;
            let last = k + 1 == bufs.len();
            let flags = if w { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
            self.put_desc(m, i, addr, len, flags, (i + 1) % self.size);
        }
        self.next_desc = (head + bufs.len() as u16) % self.size;
        self.publish(m, head);
        head
    }

    pub(crate) fn used_idx(&self, m: &TestMachine) -> u16 {
        m.read_u16(self.used + 2)
    }

    /// Used entries (id, len) not seen yet.
    pub(crate) fn take_used(&mut self, m: &TestMachine) -> Vec<(u32, u32)> {
        let idx = self.used_idx(m);
        let mut out = vec![];
        while self.used_seen != idx {
            let e = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
            let mut b = [0u8; 8];
            m.mem.read(e, &mut b).unwrap();
            out.push((
                u32::from_le_bytes(b[0..4].try_into().unwrap()),
                u32::from_le_bytes(b[4..8].try_into().unwrap()),
            ));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}
