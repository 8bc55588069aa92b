//! PCI configuration mechanism #1 (0xcf8/0xcfc), bus 0.
use crate::arch::{inl, outl, outw};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bdf {
    pub dev: u8,
    pub func: u8,
}

fn addr(b: Bdf, off: u8) -> u32 {
    0x8000_0000 | ((b.dev as u32) << 11) | ((b.func as u32) << 8) | (off as u32 & 0xfc)
}

pub fn read32(b: Bdf, off: u8) -> u32 {
    outl(0xcf8, addr(b, off));
    inl(0xcfc)
}

pub fn write16(b: Bdf, off: u8, v: u16) {
    outl(0xcf8, addr(b, off));
    outw(0xcfc + u16::from(off & 2), v);
}

pub fn read16(b: Bdf, off: u8) -> u16 {
    (read32(b, off) >> ((off & 2) * 8)) as u16
}

pub fn read8(b: Bdf, off: u8) -> u8 {
    (read32(b, off) >> ((off & 3) * 8)) as u8
}

#[derive(Clone, Copy, Debug)]
pub struct Function {
    pub bdf: Bdf,
    pub vendor: u16,
    pub device: u16,
    pub class: u32,
    pub subsys_vendor: u16,
    pub subsys: u16,
    pub irq_line: u8,
    pub irq_pin: u8,
}

fn probe(bdf: Bdf) -> Option<Function> {
    let id = read32(bdf, 0);
    if id & 0xffff == 0xffff {
        return None;
    }
    let sub = read32(bdf, 0x2c);
    let irq = read32(bdf, 0x3c);
    Some(Function {
        bdf,
        vendor: id as u16,
        device: (id >> 16) as u16,
        class: read32(bdf, 8) >> 8,
        subsys_vendor: sub as u16,
        subsys: (sub >> 16) as u16,
        irq_line: irq as u8,
        irq_pin: (irq >> 8) as u8,
    })
}

/// Every function on bus 0, in slot order, into `out`; returns how many.
pub fn scan(out: &mut [Option<Function>; 64]) -> usize {
    let mut n = 0;
    for dev in 0..32u8 {
        let Some(f0) = probe(Bdf { dev, func: 0 }) else {
            continue;
        };
        let multi = read8(f0.bdf, 0x0e) & 0x80 != 0;
        for func in 0..if multi { 8 } else { 1 } {
            if let Some(f) = probe(Bdf { dev, func }) {
                if n < out.len() {
                    out[n] = Some(f);
                    n += 1;
                }
            }
        }
    }
    n
}

pub fn find(vendor: u16, device: u16, nth: usize) -> Option<Function> {
    let mut all = [None; 64];
    let n = scan(&mut all);
    all[..n]
        .iter()
        .flatten()
        .filter(|f| f.vendor == vendor && f.device == device)
        .nth(nth)
        .copied()
}

pub fn print_all() {
    let mut all = [None; 64];
    let n = scan(&mut all);
    for f in all[..n].iter().flatten() {
        println!(
            "pci {:02x}.{} {:04x}:{:04x} class {:06x} subsys {:04x}:{:04x} irq {} pin {}",
            f.bdf.dev,
            f.bdf.func,
            f.vendor,
            f.device,
            f.class,
            f.subsys_vendor,
            f.subsys,
            f.irq_line,
            f.irq_pin
        );
    }
    println!("pci functions {n}");
}

/// Turns on I/O and memory decoding and bus mastering, with a 16-bit
/// write of the command register alone: vmd's PCI emulation stores the
/// status half of a 32-bit write too, and zeros there would clear its
/// "capabilities list" bit.
pub fn enable(b: Bdf) {
    write16(b, 4, read16(b, 4) | 0x7);
}

/// A BAR: I/O port base, or a memory address (64-bit BARs combined).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bar {
    Io(u16),
    Mem(u64),
}

pub fn bar(b: Bdf, idx: u8) -> Option<Bar> {
    if idx > 5 {
        return None;
    }
    let off = 0x10 + idx * 4;
    let lo = read32(b, off);
    if lo & 1 == 1 {
        let base = lo & 0xffff_fffc;
        return (base != 0 && base <= 0xffff).then_some(Bar::Io(base as u16));
    }
    let mut base = (lo & 0xffff_fff0) as u64;
    if (lo >> 1) & 3 == 2 && idx < 5 {
        base |= (read32(b, off + 4) as u64) << 32;
    }
    (base != 0).then_some(Bar::Mem(base))
}
