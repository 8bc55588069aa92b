//! The MMIO and string I/O emulators' inputs from fuzzer bytes.
//!
//! The shape is `vmd/src/x86/property_tests.rs`'s: a register file in one
//! of the CPU modes (real, protected with or without paging, PSE, PAE,
//! v8086, long or compatibility, 5-level, or every control bit from the
//! input), segment and descriptor-table registers pointing mostly into
//! RAM, 15 instruction bytes, and RAM whose every page starts out as
//! paging entries pointing back into RAM (so that walks of any depth
//! succeed) and is then patched at offsets the input chooses.  Devices
//! answer with values from the input, or nothing.
use std::cell::RefCell;

use crate::Input;
use vmd::x86::{translate_gva, Access, GuestRam, MmioAccess, PortAccess};
use vmm_sys::abi::*;

pub const PAGE: u64 = 0x1000;
/// RAM is pages 0..RAM_PAGES from GPA 0, less the input's holes.
pub const RAM_PAGES: u64 = 32;
const RAM_SIZE: u64 = RAM_PAGES * PAGE;

// The architectural bits the mode choice sets (SDM vol. 3 §2.5, §4).
const CR0_PE: u64 = 1 << 0;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;
const FL_DF: u64 = 1 << 10;
const FL_VM: u64 = 1 << 17;
const PG_P: u64 = 1;
const PG_RW: u64 = 2;
const PG_US: u64 = 4;
// VMX access-rights format of vcpu_segment_info.vsi_ar.
const AR_L: u32 = 1 << 13;
const AR_DB: u32 = 1 << 14;
const AR_UNUSABLE: u32 = 1 << 16;

/// Guest RAM: RAM_PAGES pages with holes.
pub struct Ram {
    bytes: RefCell<Vec<u8>>,
    holes: u32,
}

impl Ram {
    fn span(&self, gpa: u64, len: usize) -> Option<std::ops::Range<usize>> {
        let end = gpa.checked_add(len as u64)?;
        if end > RAM_SIZE {
            return None;
        }
        if (gpa / PAGE..end.div_ceil(PAGE)).any(|p| self.holes & (1 << p) != 0) {
            return None;
        }
        Some(gpa as usize..end as usize)
    }
}

impl GuestRam for Ram {
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> bool {
        match self.span(gpa, buf.len()) {
            Some(r) => {
                buf.copy_from_slice(&self.bytes.borrow()[r]);
                true
            }
            None => false,
        }
    }
    fn write_phys(&self, gpa: u64, buf: &[u8]) -> bool {
        match self.span(gpa, buf.len()) {
            Some(r) => {
                self.bytes.borrow_mut()[r].copy_from_slice(buf);
                true
            }
            None => false,
        }
    }
}

/// Devices: each access takes its answer from the input's bus script;
/// an exhausted script answers zero, a 0xff tag byte is "no device".
pub struct Bus<'a> {
    script: Input<'a>,
}

impl MmioAccess for Bus<'_> {
    fn mmio_read(&mut self, _gpa: u64, _size: u8) -> Option<u64> {
        if self.script.u8() == 0xff {
            return None;
        }
        // Bits above the access size too: the emulator must mask them.
        Some(self.script.u64())
    }
    fn mmio_write(&mut self, _gpa: u64, _size: u8, _value: u64) -> bool {
        self.script.u8() != 0xff
    }
}

impl PortAccess for Bus<'_> {
    fn port_read(&mut self, _port: u16, _size: u8) -> u32 {
        self.script.u32()
    }
    fn port_write(&mut self, _port: u16, _size: u8, _value: u32) {}
}

/// An address a register might hold: in RAM unless the tag's low bits
/// say otherwise.
fn address(inp: &mut Input) -> u64 {
    let tag = inp.u8();
    let v = inp.u64();
    if tag & 3 == 0 {
        v
    } else {
        v % RAM_SIZE
    }
}

fn segment(inp: &mut Input, real: bool) -> vcpu_segment_info {
    let tag = inp.u8();
    let sel = inp.u16();
    let base = match tag & 3 {
        0 if real => u64::from(sel) << 4,
        0 | 1 => 0,
        2 => inp.u64() % RAM_SIZE,
        _ => inp.u64(),
    };
    let mut ar = inp.u32();
    if tag & 4 == 0 {
        // Present, read/write data, granularity and size from the input.
        ar = 0x93 | (ar & 0xf) << 12;
    }
    if tag & 0x38 == 0x38 {
        ar |= AR_UNUSABLE;
    }
    let limit = inp.u32();
    vcpu_segment_info {
        vsi_sel: sel,
        vsi_limit: if tag & 0x40 == 0 { u32::MAX } else { limit },
        vsi_ar: ar,
        vsi_base: base,
    }
}

/// A descriptor-table register: mostly on a RAM page.
fn table(inp: &mut Input) -> vcpu_segment_info {
    let tag = inp.u8();
    let base = if tag & 3 == 0 {
        inp.u64()
    } else {
        (inp.u64() % RAM_SIZE) & !7
    };
    vcpu_segment_info {
        vsi_sel: inp.u16() & !7,
        vsi_limit: if tag & 4 == 0 {
            u32::from(inp.u16() & 0xfff)
        } else {
            inp.u32()
        },
        vsi_ar: if tag & 0x18 == 0x18 {
            AR_UNUSABLE
        } else {
            0x82
        },
        vsi_base: base,
    }
}

/// One emulation's inputs: the exit (register file and CPL; the caller
/// fills the exit record), the instruction bytes and RAM.
pub struct Case<'a> {
    pub exit: vm_exit,
    pub bytes: [u8; 15],
    pub ram: Ram,
    pub bus: Bus<'a>,
    /// Whether the bytes are also written at CS:RIP (Intel's fetch path).
    pub place: bool,
}

/// Reads a register file, instruction bytes, RAM patches and the rest as
/// the bus script.
pub fn case<'a>(inp: &mut Input<'a>) -> Case<'a> {
    let mut r = vcpu_reg_state::default();
    let mode = inp.below(9);
    for g in r.vrs_gprs.iter_mut() {
        *g = address(inp);
    }
    let cr3 = if inp.u8() & 7 == 0 {
        inp.u64()
    } else {
        (inp.below(RAM_PAGES) << 12) | u64::from(inp.u16() & 0xfff)
    };
    let extra = inp.u8();
    let flags = r.vrs_gprs[VCPU_REGS_RFLAGS as usize];
    let (mut cr0, mut cr4, mut efer, mut rflags) = (0u64, 0u64, 0u64, flags & !FL_VM);
    match mode {
        0 => {}
        1 => cr0 = CR0_PE,
        2 => cr0 = CR0_PE | CR0_PG,
        3 => {
            cr0 = CR0_PE | CR0_PG;
            cr4 = CR4_PSE;
        }
        4 => {
            cr0 = CR0_PE | CR0_PG;
            cr4 = CR4_PAE;
        }
        5 => {
            cr0 = CR0_PE | if extra & 1 != 0 { CR0_PG } else { 0 };
            rflags |= FL_VM;
        }
        6 | 7 => {
            cr0 = CR0_PE | CR0_PG;
            cr4 = CR4_PAE | if extra & 6 == 6 { CR4_LA57 } else { 0 };
            efer = EFER_LME | if extra & 8 == 0 { EFER_LMA } else { 0 };
        }
        _ => {
            cr0 = inp.u64();
            cr4 = inp.u64();
            efer = inp.u64();
            rflags = inp.u64();
        }
    }
    if extra & 0x10 != 0 {
        cr0 |= CR0_WP;
    }
    if extra & 0x20 != 0 {
        efer |= EFER_NXE;
    }
    if mode != 8 {
        rflags = (rflags & !FL_DF) | if extra & 0x40 != 0 { FL_DF } else { 0 };
    }
    r.vrs_crs[VCPU_REGS_CR0 as usize] = cr0;
    r.vrs_crs[VCPU_REGS_CR3 as usize] = cr3;
    r.vrs_crs[VCPU_REGS_CR4 as usize] = cr4;
    r.vrs_msrs[VCPU_REGS_EFER as usize] = efer;
    r.vrs_gprs[VCPU_REGS_RFLAGS as usize] = rflags;
    for s in r.vrs_sregs.iter_mut() {
        *s = segment(inp, mode == 0 || mode == 5);
    }
    // CS decides 16/32/64-bit code.
    let cs_ar = [0, AR_DB, AR_L, AR_L | AR_DB][usize::from(inp.u8() & 3)];
    let cs = &mut r.vrs_sregs[VCPU_REGS_CS as usize];
    cs.vsi_ar = (cs.vsi_ar & !(AR_L | AR_DB)) | cs_ar;
    r.vrs_gdtr = table(inp);
    r.vrs_sregs[VCPU_REGS_LDTR as usize] = table(inp);
    let cpl = match inp.u8() {
        0xff => inp.u32() as i32,
        c => i32::from(c & 3),
    };
    let mut bytes = [0u8; 15];
    let got = inp.bytes(15);
    bytes[..got.len()].copy_from_slice(got);
    let wide = cr4 & CR4_PAE != 0 || (mode == 8 && extra & 0x80 != 0);
    let holes = match inp.u8() & 3 {
        0 | 1 => 0,
        2 => 1 << inp.below(RAM_PAGES),
        _ => inp.u32(),
    };
    let ram = ram(inp, wide, holes);
    let place = inp.u8() & 7 != 0;
    let exit = vm_exit {
        vrs: r,
        cpl,
        ..Default::default()
    };
    Case {
        exit,
        bytes,
        ram,
        bus: Bus {
            script: Input::new(&[]),
        },
        place,
    }
}

/// Every page as paging entries of the case's width pointing back into
/// RAM (present, writable, user), then up to 32 patches of 8 bytes at
/// offsets from the input: a broken entry, a descriptor, an operand.
fn ram(inp: &mut Input, wide: bool, holes: u32) -> Ram {
    // The two starting images are built once per process: per input it
    // is one copy.
    thread_local! {
        static TEMPLATES: [Vec<u8>; 2] = [template(false), template(true)];
    }
    let mut b = TEMPLATES.with(|t| t[usize::from(wide)].clone());
    for _ in 0..inp.u8() % 33 {
        let at = (inp.u32() as u64 % RAM_SIZE) as usize;
        let v = inp.u64().to_le_bytes();
        let n = (b.len() - at).min(8);
        b[at..at + n].copy_from_slice(&v[..n]);
    }
    Ram {
        bytes: RefCell::new(b),
        holes,
    }
}

fn template(wide: bool) -> Vec<u8> {
    let mut b = vec![0u8; RAM_SIZE as usize];
    let flags = PG_P | PG_RW | PG_US;
    let width = if wide { 8 } else { 4 };
    for (i, e) in b.chunks_mut(width).enumerate() {
        let v = ((i as u64 * 7 + 1) % RAM_PAGES) << 12 | flags;
        e.copy_from_slice(&v.to_le_bytes()[..width]);
    }
    b
}

impl<'a> Case<'a> {
    /// The rest of the input answers device reads.
    pub fn set_bus(&mut self, script: &'a [u8]) {
        self.bus = Bus {
            script: Input::new(script),
        };
    }

    /// Writes the instruction bytes at CS:RIP through the guest's page
    /// tables, where they translate to RAM, so that a fetch finds them.
    pub fn place_bytes(&self) {
        let vrs = &self.exit.vrs;
        let cs = &vrs.vrs_sregs[VCPU_REGS_CS as usize];
        let long = vrs.vrs_msrs[VCPU_REGS_EFER as usize] & EFER_LMA != 0 && cs.vsi_ar & AR_L != 0;
        let rip = vrs.vrs_gprs[VCPU_REGS_RIP as usize];
        let start = if long {
            rip
        } else {
            cs.vsi_base.wrapping_add(rip & 0xffff_ffff)
        };
        let cpl = (self.exit.cpl & 3) as u8;
        for (i, &b) in self.bytes.iter().enumerate() {
            let mut lin = start.wrapping_add(i as u64);
            if !long {
                lin &= 0xffff_ffff;
            }
            if let Ok(gpa) = translate_gva(vrs, &self.ram, lin, Access::Exec, cpl) {
                self.ram.write_phys(gpa, &[b]);
            }
        }
    }
}
