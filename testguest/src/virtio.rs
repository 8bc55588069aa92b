//! The virtio 1.x PCI transport (modern only): the vendor capabilities
//! found by walking the capability list, wherever they point — an I/O BAR
//! (vmd) or a memory BAR (QEMU with disable-legacy=on) — and split
//! virtqueues.
use crate::arch::{inb, inl, inw, mmio_read16, mmio_read32, mmio_read8};
use crate::arch::{mmio_write16, mmio_write32, mmio_write8, outb, outl, outw};
use crate::pci::{self, Bar, Function};
use crate::{dma, timer};

pub const VENDOR: u16 = 0x1af4;
pub const DEV_BLOCK: u16 = 0x1042;
pub const DEV_RNG: u16 = 0x1044;

pub const F_VERSION_1: u64 = 1 << 32;

pub const S_ACKNOWLEDGE: u8 = 1;
pub const S_DRIVER: u8 = 2;
pub const S_DRIVER_OK: u8 = 4;
pub const S_FEATURES_OK: u8 = 8;
pub const S_NEEDS_RESET: u8 = 0x40;
pub const S_FAILED: u8 = 0x80;
/// Used ring flag: the device needs no notifications for now.
pub const USED_F_NO_NOTIFY: u16 = 1;

pub const D_NEXT: u16 = 1;
pub const D_WRITE: u16 = 2;

/// A register window: ports or memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    Io(u16),
    Mem(u64),
}

impl Region {
    pub fn at(self, off: u32) -> Region {
        match self {
            Region::Io(p) => Region::Io(p.wrapping_add(off as u16)),
            Region::Mem(a) => Region::Mem(a + off as u64),
        }
    }
    pub fn r8(self, off: u32) -> u8 {
        match self.at(off) {
            Region::Io(p) => inb(p),
            Region::Mem(a) => mmio_read8(a),
        }
    }
    pub fn r16(self, off: u32) -> u16 {
        match self.at(off) {
            Region::Io(p) => inw(p),
            Region::Mem(a) => mmio_read16(a),
        }
    }
    pub fn r32(self, off: u32) -> u32 {
        match self.at(off) {
            Region::Io(p) => inl(p),
            Region::Mem(a) => mmio_read32(a),
        }
    }
    pub fn w8(self, off: u32, v: u8) {
        match self.at(off) {
            Region::Io(p) => outb(p, v),
            Region::Mem(a) => mmio_write8(a, v),
        }
    }
    pub fn w16(self, off: u32, v: u16) {
        match self.at(off) {
            Region::Io(p) => outw(p, v),
            Region::Mem(a) => mmio_write16(a, v),
        }
    }
    pub fn w32(self, off: u32, v: u32) {
        match self.at(off) {
            Region::Io(p) => outl(p, v),
            Region::Mem(a) => mmio_write32(a, v),
        }
    }
}

/// Why a device could not be driven.
#[derive(Clone, Copy, Debug)]
pub enum Error {
    NoDevice,
    MissingCap(&'static str),
    BadBar(u8),
    ResetTimeout,
    FeaturesRefused,
    NoVersion1,
    QueueMissing(u16),
    QueueTooSmall(u16),
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self {
            Error::NoDevice => write!(f, "no such device"),
            Error::MissingCap(c) => write!(f, "no {c} capability"),
            Error::BadBar(b) => write!(f, "capability names unusable BAR {b}"),
            Error::ResetTimeout => write!(f, "device status did not read 0 after reset"),
            Error::FeaturesRefused => write!(f, "device refused FEATURES_OK"),
            Error::NoVersion1 => write!(f, "device does not offer VERSION_1"),
            Error::QueueMissing(q) => write!(f, "queue {q} has size 0"),
            Error::QueueTooSmall(q) => write!(f, "queue {q} too small"),
        }
    }
}

// Common configuration offsets.
const C_DFSELECT: u32 = 0x00;
const C_DF: u32 = 0x04;
const C_GFSELECT: u32 = 0x08;
const C_GF: u32 = 0x0c;
const C_STATUS: u32 = 0x14;
const C_QSELECT: u32 = 0x16;
const C_QSIZE: u32 = 0x18;
const C_QENABLE: u32 = 0x1c;
const C_QNOTIFYOFF: u32 = 0x1e;
const C_QDESC: u32 = 0x20;
const C_QAVAIL: u32 = 0x28;
const C_QUSED: u32 = 0x30;

pub struct Transport {
    pub pci: Function,
    pub common: Region,
    notify: Region,
    notify_mult: u32,
    isr: Region,
    pub device: Option<Region>,
    /// Whether the common configuration sits in an I/O BAR (vmd) or in
    /// memory (QEMU).
    pub io: bool,
}

fn bar_region(f: &Function, bar: u8, off: u32) -> Result<Region, Error> {
    match pci::bar(f.bdf, bar) {
        Some(Bar::Io(p)) => Ok(Region::Io(p).at(off)),
        Some(Bar::Mem(a)) if a + off as u64 <= 0xffff_f000 => Ok(Region::Mem(a).at(off)),
        _ => Err(Error::BadBar(bar)),
    }
}

impl Transport {
    /// The `nth` function with this device id, its capabilities mapped.
    pub fn find(device: u16, nth: usize) -> Result<Transport, Error> {
        let f = pci::find(VENDOR, device, nth).ok_or(Error::NoDevice)?;
        Transport::new(f)
    }

    pub fn new(f: Function) -> Result<Transport, Error> {
        pci::enable(f.bdf);
        let (mut common, mut notify, mut isr, mut device) = (None, None, None, None);
        let mut notify_mult = 0;
        if pci::read16(f.bdf, 6) & 0x10 != 0 {
            let mut cap = pci::read8(f.bdf, 0x34) & 0xfc;
            let mut guard = 0;
            while cap != 0 && guard < 48 {
                guard += 1;
                if pci::read8(f.bdf, cap) == 0x09 {
                    let ty = pci::read8(f.bdf, cap + 3);
                    let bar = pci::read8(f.bdf, cap + 4);
                    let off = pci::read32(f.bdf, cap + 8);
                    // The first capability of each type is the one to use.
                    match ty {
                        1 if common.is_none() => common = Some(bar_region(&f, bar, off)?),
                        2 if notify.is_none() => {
                            notify = Some(bar_region(&f, bar, off)?);
                            notify_mult = pci::read32(f.bdf, cap + 16);
                        }
                        3 if isr.is_none() => isr = Some(bar_region(&f, bar, off)?),
                        4 if device.is_none() => device = Some(bar_region(&f, bar, off)?),
                        _ => {}
                    }
                }
                cap = pci::read8(f.bdf, cap + 1) & 0xfc;
            }
        }
        let common = common.ok_or(Error::MissingCap("COMMON_CFG"))?;
        Ok(Transport {
            pci: f,
            io: matches!(common, Region::Io(_)),
            common,
            notify: notify.ok_or(Error::MissingCap("NOTIFY"))?,
            notify_mult,
            isr: isr.ok_or(Error::MissingCap("ISR"))?,
            device,
        })
    }

    pub fn status(&self) -> u8 {
        self.common.r8(C_STATUS)
    }

    pub fn set_status(&self, s: u8) {
        self.common.w8(C_STATUS, s)
    }

    pub fn reset(&self) -> Result<(), Error> {
        self.set_status(0);
        let d = timer::deadline_ms(1000);
        while self.status() != 0 {
            if timer::passed(d) {
                return Err(Error::ResetTimeout);
            }
            core::hint::spin_loop();
        }
        Ok(())
    }

    pub fn device_features(&self) -> u64 {
        self.common.w32(C_DFSELECT, 0);
        let lo = self.common.r32(C_DF) as u64;
        self.common.w32(C_DFSELECT, 1);
        let hi = self.common.r32(C_DF) as u64;
        (hi << 32) | lo
    }

    /// Reset, ACKNOWLEDGE | DRIVER, the offered subset of `wanted` (plus
    /// VERSION_1), FEATURES_OK; returns the features in use.
    pub fn begin(&self, wanted: u64) -> Result<u64, Error> {
        self.reset()?;
        self.set_status(S_ACKNOWLEDGE);
        self.set_status(S_ACKNOWLEDGE | S_DRIVER);
        let offered = self.device_features();
        if offered & F_VERSION_1 == 0 {
            self.set_status(S_FAILED);
            return Err(Error::NoVersion1);
        }
        let use_ = offered & (wanted | F_VERSION_1);
        self.common.w32(C_GFSELECT, 0);
        self.common.w32(C_GF, use_ as u32);
        self.common.w32(C_GFSELECT, 1);
        self.common.w32(C_GF, (use_ >> 32) as u32);
        self.set_status(S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
        if self.status() & S_FEATURES_OK == 0 {
            self.set_status(S_FAILED);
            return Err(Error::FeaturesRefused);
        }
        Ok(use_)
    }

    pub fn driver_ok(&self) {
        self.set_status(S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    }

    /// Sets up queue `idx` with at most `max` entries (fewer if the device
    /// has fewer), memory from the DMA window.
    pub fn queue(&self, idx: u16, max: u16) -> Result<Virtqueue, Error> {
        self.common.w16(C_QSELECT, idx);
        let dev_size = self.common.r16(C_QSIZE);
        if dev_size == 0 {
            return Err(Error::QueueMissing(idx));
        }
        let size = dev_size.min(max);
        // Sizes need not be powers of two in split rings (virtio 1.x);
        // use a power of two anyway, what every driver does.
        let size = if size.is_power_of_two() {
            size
        } else {
            1 << (15 - size.leading_zeros())
        };
        if size < 2 {
            return Err(Error::QueueTooSmall(idx));
        }
        let n = size as u64;
        let desc = dma::alloc(16 * n, 4096);
        let avail = dma::alloc(6 + 2 * n, 4096);
        let used = dma::alloc(6 + 8 * n, 4096);
        self.common.w16(C_QSIZE, size);
        for (off, a) in [(C_QDESC, desc), (C_QAVAIL, avail), (C_QUSED, used)] {
            self.common.w32(off, a as u32);
            self.common.w32(off + 4, (a >> 32) as u32);
        }
        let notify_off = self.common.r16(C_QNOTIFYOFF) as u32;
        self.common.w16(C_QENABLE, 1);
        Ok(Virtqueue {
            idx,
            size,
            desc,
            avail,
            used,
            notify: self.notify.at(notify_off.wrapping_mul(self.notify_mult)),
            avail_idx: 0,
            last_used: 0,
        })
    }

    /// Reads (and so acknowledges) the ISR status.
    pub fn isr(&self) -> u8 {
        self.isr.r8(0)
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        // The device must not use queue memory the next command reuses.
        let _ = self.reset();
    }
}

/// A split virtqueue the driver fills by hand (so that tests can also
/// build the chains a driver must never build).
pub struct Virtqueue {
    pub idx: u16,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    notify: Region,
    pub avail_idx: u16,
    pub last_used: u16,
}

impl Virtqueue {
    pub fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.desc + 16 * (i % self.size) as u64;
        dma::write64(d, addr);
        dma::write32(d + 8, len);
        dma::write16(d + 12, flags);
        dma::write16(d + 14, next);
    }

    /// Makes the chain at `head` available (without notifying).
    pub fn push(&mut self, head: u16) {
        let slot = self.avail + 4 + 2 * (self.avail_idx % self.size) as u64;
        dma::write16(slot, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        crate::arch::fence();
        dma::write16(self.avail + 2, self.avail_idx);
        crate::arch::fence();
    }

    /// Sets avail.idx to anything (for hostile tests).
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.avail_idx = idx;
        crate::arch::fence();
        dma::write16(self.avail + 2, idx);
        crate::arch::fence();
    }

    /// Notifies the device of new chains, unless it said in the used
    /// ring's flags (VIRTQ_USED_F_NO_NOTIFY) that it is looking at the
    /// ring anyway, as OpenBSD's and Linux's drivers do.  `push` fenced
    /// the avail index before this reads the flags, so a device that
    /// clears the flag and then re-reads the index cannot miss it.
    pub fn notify(&self) {
        if dma::read16(self.used) & USED_F_NO_NOTIFY == 0 {
            self.kick();
        }
    }

    /// Notifies the device whatever its flags say (hostile tests).
    pub fn kick(&self) {
        self.notify.w16(0, self.idx);
    }

    pub fn used_idx(&self) -> u16 {
        dma::read16(self.used + 2)
    }

    /// The next used element (id, len), if the device has returned one.
    pub fn pop_used(&mut self) -> Option<(u32, u32)> {
        if self.used_idx() == self.last_used {
            return None;
        }
        crate::arch::fence();
        let e = self.used + 4 + 8 * (self.last_used % self.size) as u64;
        self.last_used = self.last_used.wrapping_add(1);
        Some((dma::read32(e), dma::read32(e + 4)))
    }

    /// Waits for the next used element for at most `ms` milliseconds.
    pub fn wait_used(&mut self, ms: u64) -> Option<(u32, u32)> {
        let d = timer::deadline_ms(ms);
        loop {
            if let Some(u) = self.pop_used() {
                return Some(u);
            }
            if timer::passed(d) {
                return None;
            }
            core::hint::spin_loop();
        }
    }
}
