//! "No panic" properties of the MMIO and string I/O emulators: a hostile
//! guest controls the instruction bytes, every register, the page tables
//! and descriptor tables, and what the devices answer, so [`emulate`] and
//! [`emulate_string_io`] must return `Ok` or `Err` for any of it.
//!
//! Each case draws a register file for one of the CPU modes (real, v8086,
//! 16/32-bit protected with or without paging, PAE, long, compatibility,
//! 5-level, or every control bit at random), instruction bytes (random, or
//! prefixes + an opcode the emulator handles + random operand bytes), RAM
//! whose pages are page tables, descriptors or noise pointing mostly back
//! into RAM, and a bus that answers random values or nothing.  The bytes
//! come with the exit (AMD) or are placed at CS:RIP for the emulator to
//! fetch (Intel, and string I/O).  A third property aims at MOV Sreg,
//! whose descriptor fetch needs small selectors and tables near the top
//! of the address space to reach its edges.
//!
//! A failing case prints its seed and input; every case is generated from
//! its own seed, so rerunning the test reproduces it.
use super::emulate::linear;
use super::mmu::{
    translate_gva, Access, CR0_PE, CR0_PG, CR0_WP, CR4_LA57, CR4_PAE, CR4_PSE, EFER_LMA, EFER_LME,
    EFER_NXE, PG_P, PG_PS, PG_RW, PG_US, PG_XD,
};
use super::regs::{Mode, AR_DB, AR_L, AR_UNUSABLE, FL_DF, FL_VM};
use super::*;
use crate::property::{cases, Rng};
use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Register};
use std::cell::RefCell;
use vmm_sys::abi::*;

const PAGE: u64 = 0x1000;
/// RAM is pages 0..RAM_PAGES from GPA 0, less a case's holes.
pub(crate) const RAM_PAGES: u64 = 64;

/// What a case's RAM holds: every page is paging entries of the case's
/// width pointing mostly back into RAM (so that walks of any depth tend
/// to succeed and land on RAM, holes or beyond), except the descriptor
/// pages and the odd page of noise or zeros.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    pub(crate) seed: u64,
    /// 8-byte entries (PAE, long mode) rather than 4-byte ones.
    pub(crate) wide: bool,
    /// Bit n: page n is not RAM (an MMIO hole).
    pub(crate) holes: u64,
    /// Bit n: page n holds segment descriptors (a GDT or LDT).
    pub(crate) descriptors: u64,
}

/// A page number for a paging entry: mostly RAM, sometimes just past it,
/// sometimes anywhere.
fn target_page(rng: &mut Rng) -> u64 {
    match rng.below(32) {
        0 => rng.next() & 0xff_ffff_ffff,
        1 => RAM_PAGES + rng.below(4),
        _ => rng.below(RAM_PAGES),
    }
}

/// Page `n` of the guest's RAM as `layout` has it.
pub(crate) fn random_page(rng: &mut Rng, layout: &Layout, n: u64, page: &mut [u8]) {
    if layout.descriptors & (1 << n) != 0 {
        for d in page.chunks_mut(8) {
            let mut v = rng.next();
            if !rng.one_in(4) {
                // Present code or data, base in RAM.
                v = (v & !(0xff << 40) & !(0xff_ffff << 16) & !(0xff << 56))
                    | (0x90 | (rng.next() & 0xf)) << 40
                    | (rng.below(RAM_PAGES * PAGE) << 16);
            }
            d.copy_from_slice(&v.to_le_bytes());
        }
        return;
    }
    let wide = match rng.below(64) {
        0 => return rng.fill(page),
        1 => return page.fill(0),
        2 => !layout.wide,
        _ => layout.wide,
    };
    let entry = |rng: &mut Rng| {
        let mut v = (target_page(rng) << 12) | (rng.next() & 0xfff) | PG_P;
        if rng.one_in(32) {
            v &= !PG_P;
        }
        if !rng.one_in(8) {
            v |= PG_RW | PG_US;
        }
        if !rng.one_in(4) {
            v &= !PG_PS;
        }
        v
    };
    if wide {
        for e in page.chunks_mut(8) {
            let mut v = entry(rng);
            if rng.one_in(16) {
                v |= PG_XD;
            }
            e.copy_from_slice(&v.to_le_bytes());
        }
    } else {
        for e in page.chunks_mut(4) {
            e.copy_from_slice(&(entry(rng) as u32).to_le_bytes());
        }
    }
}

/// RAM whose pages are drawn on first touch, from the case's layout: only
/// the pages a case reaches cost anything.
pub(crate) struct LazyRam {
    pages: RefCell<Vec<Option<Box<[u8]>>>>,
    rng: RefCell<Rng>,
    layout: Layout,
}

impl LazyRam {
    pub(crate) fn new(layout: Layout) -> Self {
        LazyRam {
            pages: RefCell::new(vec![None; RAM_PAGES as usize]),
            rng: RefCell::new(Rng::new(layout.seed)),
            layout,
        }
    }

    /// Calls `f` on each piece of the span within one page, with how
    /// many bytes came before it; false (and no call) when any of the span
    /// is not RAM.
    fn span(&self, gpa: u64, len: usize, mut f: impl FnMut(&mut [u8], usize)) -> bool {
        let Some(end) = gpa.checked_add(len as u64) else {
            return false;
        };
        if end > RAM_PAGES * PAGE {
            return false;
        }
        if (gpa / PAGE..end.div_ceil(PAGE)).any(|p| self.layout.holes & (1 << p) != 0) {
            return false;
        }
        let mut pages = self.pages.borrow_mut();
        let mut done = 0;
        while done < len {
            let at = gpa + done as u64;
            let off = (at % PAGE) as usize;
            let n = (len - done).min(PAGE as usize - off);
            let page = pages[(at / PAGE) as usize].get_or_insert_with(|| {
                let mut b = vec![0u8; PAGE as usize].into_boxed_slice();
                random_page(&mut self.rng.borrow_mut(), &self.layout, at / PAGE, &mut b);
                b
            });
            f(&mut page[off..off + n], done);
            done += n;
        }
        true
    }
}

impl GuestRam for LazyRam {
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> bool {
        self.span(gpa, buf.len(), |piece, done| {
            buf[done..done + piece.len()].copy_from_slice(piece)
        })
    }
    fn write_phys(&self, gpa: u64, buf: &[u8]) -> bool {
        self.span(gpa, buf.len(), |piece, done| {
            let n = piece.len();
            piece.copy_from_slice(&buf[done..done + n])
        })
    }
}

/// Devices that answer anything, including bits above the access size,
/// or nothing.
struct FuzzBus(Rng);

impl MmioAccess for FuzzBus {
    fn mmio_read(&mut self, _gpa: u64, _size: u8) -> Option<u64> {
        (!self.0.one_in(8)).then(|| self.0.edgy_u64())
    }
    fn mmio_write(&mut self, _gpa: u64, _size: u8, _value: u64) -> bool {
        !self.0.one_in(8)
    }
}

impl PortAccess for FuzzBus {
    fn port_read(&mut self, _port: u16, _size: u8) -> u32 {
        self.0.edgy_u64() as u32
    }
    fn port_write(&mut self, _port: u16, _size: u8, _value: u32) {}
}

/// An address a guest register might hold: in RAM most of the time.
pub(crate) fn address(rng: &mut Rng) -> u64 {
    if rng.one_in(3) {
        rng.edgy_u64()
    } else {
        rng.below(RAM_PAGES * PAGE)
    }
}

fn segment(rng: &mut Rng, real: bool) -> vcpu_segment_info {
    let sel = if rng.one_in(3) {
        rng.next() as u16
    } else {
        (rng.below(16) << 3) as u16 | rng.below(8) as u16
    };
    let base = match rng.below(6) {
        0 if real => u64::from(sel) << 4,
        0..=2 => 0,
        3 | 4 => rng.below(RAM_PAGES * PAGE),
        _ => rng.edgy_u64(),
    };
    let mut ar = if rng.one_in(4) {
        rng.next() as u32
    } else {
        0x93 | (rng.below(16) as u32) << 12
    };
    if rng.one_in(8) {
        ar |= AR_UNUSABLE;
    }
    vcpu_segment_info {
        vsi_sel: sel,
        vsi_limit: if rng.one_in(2) {
            u32::MAX
        } else {
            rng.edgy_u64() as u32
        },
        vsi_ar: ar,
        vsi_base: base,
    }
}

/// A descriptor table register: mostly on a RAM page of descriptors.
fn table(rng: &mut Rng, descriptors: &mut u64) -> vcpu_segment_info {
    let base = if rng.one_in(4) {
        rng.edgy_u64()
    } else {
        let page = rng.below(RAM_PAGES);
        *descriptors |= 1 << page;
        page * PAGE + rng.below(8) * 8
    };
    vcpu_segment_info {
        vsi_sel: (rng.below(16) << 3) as u16,
        vsi_limit: if rng.one_in(4) {
            rng.next() as u32
        } else {
            rng.below(0x1000) as u32
        },
        vsi_ar: if rng.one_in(4) { AR_UNUSABLE } else { 0x82 },
        vsi_base: base,
    }
}

/// A register file in one of the CPU modes (or none in particular), a
/// CPL (any int: the emulator takes the low two bits), and what RAM holds
/// for it.
pub(crate) fn random_regs(rng: &mut Rng) -> (vcpu_reg_state, i32, Layout) {
    let mut r = vcpu_reg_state::default();
    for g in r.vrs_gprs.iter_mut() {
        *g = match rng.below(4) {
            0 => rng.below(32),
            1 | 2 => address(rng),
            _ => rng.edgy_u64(),
        };
    }
    let rip = &mut r.vrs_gprs[VCPU_REGS_RIP as usize];
    if !rng.one_in(4) {
        *rip = rng.below(RAM_PAGES * PAGE);
    }
    let cr3 = if rng.one_in(8) {
        rng.next()
    } else {
        rng.below(RAM_PAGES) << 12 | rng.below(PAGE)
    };
    let flags = r.vrs_gprs[VCPU_REGS_RFLAGS as usize];
    let (mut cr0, mut cr4, mut efer, mut rflags) = (0u64, 0u64, 0u64, flags & !FL_VM);
    let mode = rng.below(9);
    match mode {
        0 => {}            // real
        1 => cr0 = CR0_PE, // protected, no paging
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
            cr0 = CR0_PE | rng.pick(&[0, CR0_PG]);
            rflags |= FL_VM;
        }
        6 | 7 => {
            cr0 = CR0_PE | CR0_PG;
            cr4 = CR4_PAE | rng.pick(&[0, 0, 0, CR4_LA57]);
            efer = EFER_LME | rng.pick(&[EFER_LMA, EFER_LMA, 0]);
        }
        _ => {
            cr0 = rng.next();
            cr4 = rng.next();
            efer = rng.next();
            rflags = rng.next();
        }
    }
    if rng.one_in(2) {
        cr0 |= CR0_WP;
    }
    if rng.one_in(2) {
        efer |= EFER_NXE;
    }
    if mode != 8 {
        rflags = (rflags & !FL_DF) | rng.pick(&[0, FL_DF]);
    }
    r.vrs_crs[VCPU_REGS_CR0 as usize] = cr0;
    r.vrs_crs[VCPU_REGS_CR3 as usize] = cr3;
    r.vrs_crs[VCPU_REGS_CR4 as usize] = cr4;
    r.vrs_msrs[VCPU_REGS_EFER as usize] = efer;
    r.vrs_gprs[VCPU_REGS_RFLAGS as usize] = rflags;
    for s in r.vrs_sregs.iter_mut() {
        *s = segment(rng, mode == 0 || mode == 5);
    }
    // CS decides 16/32/64-bit code.
    let any = rng.next() as u32 & (AR_L | AR_DB);
    let cs_ar = rng.pick(&[0, AR_DB, AR_L, AR_L, AR_L | AR_DB, any]);
    let cs = &mut r.vrs_sregs[VCPU_REGS_CS as usize];
    cs.vsi_ar = (cs.vsi_ar & !(AR_L | AR_DB)) | cs_ar;
    let mut descriptors = 0;
    r.vrs_gdtr = table(rng, &mut descriptors);
    r.vrs_sregs[VCPU_REGS_LDTR as usize] = table(rng, &mut descriptors);
    let cpl = if rng.one_in(8) {
        rng.next() as i32
    } else {
        rng.below(4) as i32
    };
    let holes = match rng.below(4) {
        0 | 1 => 0,
        2 => 1 << rng.below(RAM_PAGES),
        _ => rng.next() & rng.next() & rng.next(),
    };
    let layout = Layout {
        seed: rng.next(),
        wide: cr4 & CR4_PAE != 0 || (mode == 8 && rng.one_in(2)),
        holes: holes & !descriptors,
        descriptors,
    };
    (r, cpl, layout)
}

const PREFIXES: [u8; 11] = [
    0x66, 0x67, 0xf2, 0xf3, 0xf0, 0x2e, 0x36, 0x3e, 0x26, 0x64, 0x65,
];

/// Opcodes the emulator handles (and a few neighbours it refuses).
pub(crate) const OPCODES: &[&[u8]] = &[
    &[0x00],
    &[0x01],
    &[0x02],
    &[0x03],
    &[0x08],
    &[0x09],
    &[0x0a],
    &[0x0b],
    &[0x10],
    &[0x11],
    &[0x12],
    &[0x13],
    &[0x18],
    &[0x19],
    &[0x1a],
    &[0x1b],
    &[0x20],
    &[0x21],
    &[0x22],
    &[0x23],
    &[0x28],
    &[0x29],
    &[0x2a],
    &[0x2b],
    &[0x30],
    &[0x31],
    &[0x32],
    &[0x33],
    &[0x38],
    &[0x39],
    &[0x3a],
    &[0x3b],
    &[0x63],
    &[0x80],
    &[0x81],
    &[0x83],
    &[0x84],
    &[0x85],
    &[0x86],
    &[0x87],
    &[0x88],
    &[0x89],
    &[0x8a],
    &[0x8b],
    &[0x8c],
    &[0x8e],
    &[0x8e],
    &[0x8f],
    &[0xa0],
    &[0xa1],
    &[0xa2],
    &[0xa3],
    &[0xa4],
    &[0xa5],
    &[0xa6],
    &[0xa7],
    &[0xaa],
    &[0xab],
    &[0xac],
    &[0xad],
    &[0xae],
    &[0xaf],
    &[0xc4],
    &[0xc5],
    &[0xc6],
    &[0xc7],
    &[0xf6],
    &[0xf7],
    &[0xfe],
    &[0xff],
    &[0x6c],
    &[0x6d],
    &[0x6e],
    &[0x6f],
    &[0x0f, 0xb6],
    &[0x0f, 0xb7],
    &[0x0f, 0xbe],
    &[0x0f, 0xbf],
    &[0x0f, 0xb0],
    &[0x0f, 0xb1],
    &[0x0f, 0xc0],
    &[0x0f, 0xc1],
    &[0x0f, 0xa3],
    &[0x0f, 0x10],
];

/// 15 instruction bytes: noise, or prefixes (and REX in 64-bit mode), an
/// opcode from `opcodes`, a ModRM that mostly names memory, and random
/// operand bytes.
pub(crate) fn insn_bytes(rng: &mut Rng, long: bool, opcodes: &[&[u8]]) -> [u8; 15] {
    let mut b = [0u8; 15];
    rng.fill(&mut b);
    if rng.one_in(8) {
        return b;
    }
    let mut at = 0;
    for _ in 0..rng.pick(&[0, 0, 1, 1, 2, 3]) {
        b[at] = rng.pick(&PREFIXES);
        at += 1;
    }
    if long && rng.one_in(2) {
        b[at] = 0x40 | rng.below(16) as u8;
        at += 1;
    }
    for &o in rng.pick(opcodes) {
        b[at] = o;
        at += 1;
    }
    if !rng.one_in(4) {
        // mod 0-2: a memory operand.
        b[at] = (rng.below(3) as u8) << 6 | (b[at] & 0x3f);
    }
    b
}

/// The instruction `bytes` decode to in `vrs`'s mode.
fn decode(vrs: &vcpu_reg_state, bytes: &[u8]) -> Instruction {
    Decoder::new(Mode::of(vrs).bitness(), bytes, DecoderOptions::NONE).decode()
}

/// Writes `bytes` at CS:RIP through the guest's page tables, where they
/// translate to RAM, so that a fetch finds them.
pub(crate) fn place<M: GuestRam + ?Sized>(vrs: &vcpu_reg_state, cpl: i32, ram: &M, bytes: &[u8]) {
    let mode = Mode::of(vrs);
    let mut rip = vrs.vrs_gprs[VCPU_REGS_RIP as usize];
    if mode != Mode::Long {
        rip &= 0xffff_ffff;
    }
    let start = linear(vrs, mode, Register::CS, rip);
    for (i, &b) in bytes.iter().enumerate() {
        let lin = start.wrapping_add(i as u64);
        let lin = if mode == Mode::Long {
            lin
        } else {
            lin & 0xffff_ffff
        };
        if let Ok(gpa) = translate_gva(vrs, ram, lin, Access::Exec, (cpl & 3) as u8) {
            ram.write_phys(gpa, &[b]);
        }
    }
}

/// One emulator case: the exit, its RAM and where the bus draws from,
/// and whether the bytes are also put at CS:RIP.
struct Case {
    exit: vm_exit,
    /// A string I/O exit (`vei`) rather than an MMIO assist (`vee`).
    string_io: bool,
    bytes: [u8; 15],
    layout: Layout,
    bus_seed: u64,
    place: bool,
}

fn describe(c: &Case) -> String {
    let r = &c.exit.vrs;
    let record = if c.string_io {
        format!("{:?}", c.exit.vei())
    } else {
        format!("{:?}", c.exit.vee())
    };
    format!(
        "bytes {} {record} mode {:?} cpl {} gprs {:x?} \
         cr0 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x} sregs {:x?} gdtr {:x?} \
         layout {:x?} placed {}",
        emulate::hex(&c.bytes),
        Mode::of(r),
        c.exit.cpl,
        r.vrs_gprs,
        r.vrs_crs[VCPU_REGS_CR0 as usize],
        r.vrs_crs[VCPU_REGS_CR3 as usize],
        r.vrs_crs[VCPU_REGS_CR4 as usize],
        r.vrs_msrs[VCPU_REGS_EFER as usize],
        r.vrs_sregs,
        r.vrs_gdtr,
        c.layout,
        c.place,
    )
}

fn mmio_case(rng: &mut Rng) -> Case {
    let (vrs, cpl, layout) = random_regs(rng);
    let bytes = insn_bytes(rng, Mode::of(&vrs) == Mode::Long, OPCODES);
    let decoded_len = decode(&vrs, &bytes).len() as u8;
    let mut exit = vm_exit {
        vrs,
        cpl,
        ..Default::default()
    };
    let vee = exit.vee_mut();
    vee.vee_fault_type = VEE_FAULT_MMIO_ASSIST as u8;
    vee.vee_insn_info = match rng.below(5) {
        0 => VEE_BYTES_VALID as u8,
        1 => (VEE_BYTES_VALID | VEE_LEN_VALID) as u8,
        2 => VEE_LEN_VALID as u8,
        3 => 0,
        _ => rng.next() as u8,
    };
    vee.vee_insn_len = match rng.below(8) {
        0 => 0,
        1 => 16 + rng.below(240) as u8,
        2 | 3 => 1 + rng.below(15) as u8,
        _ => decoded_len,
    };
    vee.vee_insn_bytes = bytes;
    Case {
        exit,
        string_io: false,
        bytes,
        layout,
        bus_seed: rng.next(),
        place: !rng.one_in(8),
    }
}

/// Checks what an emulation returned, exercising the error's reporting,
/// and counts the successes: each test also asserts that a fair share of
/// its cases got all the way through, so that the inputs keep reaching
/// the emulation proper.
fn outcome(r: Result<Emulated, MmioError>, ok: &mut u32) {
    match r {
        Ok(done) => {
            assert!((1..=15).contains(&done.insn_len));
            *ok += 1;
        }
        Err(e) => {
            let _ = (e.to_string(), e.errno(), e.rip());
        }
    }
}

#[test]
fn emulate_never_panics() {
    let mut ok = 0;
    cases(
        "emulate",
        0x5eed_0001,
        12_000,
        mmio_case,
        describe,
        |mut c| {
            let ram = LazyRam::new(c.layout);
            if c.place {
                place(&c.exit.vrs, c.exit.cpl, &ram, &c.bytes);
            }
            let mut bus = FuzzBus(Rng::new(c.bus_seed));
            outcome(emulate(&mut c.exit, &ram, &mut bus), &mut ok);
        },
    );
    assert!(ok > 2_000, "only {ok} cases emulated");
}

/// MOV Sreg, m16 in every mode, the selector (mostly a small one) at
/// DS:[rBX] in RAM or from a device, and the GDT and LDT anywhere, up to
/// the top of the address space: the descriptor fetch must not overflow.
struct SegmentCase {
    case: Case,
    selector: u16,
}

fn segment_load_case(rng: &mut Rng) -> SegmentCase {
    let mut c = mmio_case(rng);
    let r = &mut c.exit.vrs;
    for t in [&mut r.vrs_gdtr, &mut r.vrs_sregs[VCPU_REGS_LDTR as usize]] {
        if rng.one_in(2) {
            t.vsi_base = u64::MAX - rng.below(0x20);
        }
        let any = rng.next() as u32;
        t.vsi_limit = rng.pick(&[0xffff, 0xf, 0x17, any]);
        t.vsi_ar &= !AR_UNUSABLE;
        t.vsi_sel |= 8;
    }
    // mov sreg, [bx] (16-bit addressing) or [rbx] / [ebx].
    let rm = if Mode::of(r).bitness() == 16 { 7 } else { 3 };
    let reg = rng.pick(&[0u8, 2, 3, 4, 5]);
    let mut b = [0x90u8; 15];
    b[0] = 0x8e;
    b[1] = reg << 3 | rm;
    c.bytes = b;
    let vee = c.exit.vee_mut();
    vee.vee_insn_bytes = b;
    vee.vee_insn_info = (VEE_BYTES_VALID | VEE_LEN_VALID) as u8;
    vee.vee_insn_len = 2;
    let selector = if rng.one_in(4) {
        rng.next() as u16
    } else {
        (rng.below(8) << 3) as u16 | rng.below(8) as u16
    };
    SegmentCase { case: c, selector }
}

#[test]
fn emulate_segment_loads_never_panic() {
    let mut ok = 0;
    cases(
        "emulate MOV Sreg",
        0x5eed_0003,
        4_000,
        segment_load_case,
        |s| format!("selector {:#x} {}", s.selector, describe(&s.case)),
        |SegmentCase {
             case: mut c,
             selector,
         }| {
            let ram = LazyRam::new(c.layout);
            let vrs = &c.exit.vrs;
            let mode = Mode::of(vrs);
            let bx = vrs.vrs_gprs[VCPU_REGS_RBX as usize] & regs::mask(mode.bitness() as usize / 8);
            let lin = linear(vrs, mode, Register::DS, bx);
            if let Ok(gpa) = translate_gva(vrs, &ram, lin, Access::Read, (c.exit.cpl & 3) as u8) {
                ram.write_phys(gpa, &selector.to_le_bytes());
            }
            let mut bus = FuzzBus(Rng::new(c.bus_seed));
            outcome(emulate(&mut c.exit, &ram, &mut bus), &mut ok);
        },
    );
    assert!(ok > 500, "only {ok} segment loads emulated");
}

pub(crate) const STRING_IO: &[&[u8]] = &[
    &[0x6c],
    &[0x6d],
    &[0x6e],
    &[0x6f],
    &[0x6c],
    &[0x6d],
    &[0x6e],
    &[0x6f],
    &[0xa4],
    &[0xe4],
    &[0xec],
];

fn string_io_case(rng: &mut Rng) -> Case {
    let (vrs, cpl, layout) = random_regs(rng);
    let bytes = insn_bytes(rng, Mode::of(&vrs) == Mode::Long, STRING_IO);
    let instr = decode(&vrs, &bytes);
    let (size, dir) = match instr.code() {
        Code::Insb_m8_DX => (1, VEI_DIR_IN),
        Code::Insw_m16_DX => (2, VEI_DIR_IN),
        Code::Insd_m32_DX => (4, VEI_DIR_IN),
        Code::Outsb_DX_m8 => (1, VEI_DIR_OUT),
        Code::Outsw_DX_m16 => (2, VEI_DIR_OUT),
        Code::Outsd_DX_m32 => (4, VEI_DIR_OUT),
        _ => (rng.pick(&[1, 2, 4]), rng.below(2) as u32),
    };
    let dx = vrs.vrs_gprs[VCPU_REGS_RDX as usize] as u16;
    let mut exit = vm_exit {
        vrs,
        cpl,
        ..Default::default()
    };
    let vei = exit.vei_mut();
    vei.vei_size = if rng.one_in(8) {
        rng.next() as u8
    } else {
        size
    };
    vei.vei_dir = if rng.one_in(8) {
        rng.next() as u8
    } else {
        dir as u8
    };
    vei.vei_string = 1;
    vei.vei_rep = instr.has_rep_prefix() as u8;
    vei.vei_port = if rng.one_in(8) { rng.next() as u16 } else { dx };
    vei.vei_insn_len = match rng.below(8) {
        0 | 1 => 0,
        2 => 16 + rng.below(240) as u8,
        3 => 1 + rng.below(15) as u8,
        _ => instr.len() as u8,
    };
    vei.vei_data = rng.next() as u32;
    Case {
        exit,
        string_io: true,
        bytes,
        layout,
        bus_seed: rng.next(),
        place: !rng.one_in(16),
    }
}

#[test]
fn emulate_string_io_never_panics() {
    let mut ok = 0;
    cases(
        "emulate_string_io",
        0x5eed_0002,
        12_000,
        string_io_case,
        describe,
        |mut c| {
            let ram = LazyRam::new(c.layout);
            if c.place {
                place(&c.exit.vrs, c.exit.cpl, &ram, &c.bytes);
            }
            let mut ports = FuzzBus(Rng::new(c.bus_seed));
            outcome(emulate_string_io(&mut c.exit, &ram, &mut ports), &mut ok);
        },
    );
    assert!(ok > 700, "only {ok} string I/O cases emulated");
}
