//! "No panic" properties of the loaders: the boot image is whatever file
//! the VM's owner names (an instance's user may bring their own), so the
//! ELF, bzImage and BIOS loaders must refuse a bad one with an error —
//! never a panic, an overflow or an allocation the size of a header field.
//!
//! Valid images (ELF64 and ELF32 kernels with loadable, randomize and
//! symbol sections; the loader tests' bzImage) are mutated: random bytes
//! flipped, header and program/section header fields set to edge values,
//! truncated or extended, sometimes gzip'd; some images are noise behind
//! the ELF magic.  Everything loads into one anonymous guest laid out as
//! vmd lays out 64 MiB.
use super::elf::{self, BootOptions};
use super::linux::{self, LinuxBoot};
use super::{bios, test_guest};
use crate::property::{cases, Rng};
use crate::vm::memmap::MB;
use std::io::Write;

const PT_LOAD: u32 = 1;
const PT_OPENBSD_RANDOMIZE: u32 = 0x65a3_dbe6;
const SHT_SYMTAB: u32 = 2;
const SHT_STRTAB: u32 = 3;

/// Little-endian field writer for the image builders.
fn put(b: &mut [u8], off: usize, v: u64, width: usize) {
    b[off..off + width].copy_from_slice(&v.to_le_bytes()[..width]);
}

/// Where the fields the loader reads sit, as (offset, width), so that
/// mutations can aim at them; and the (entry size, count) field offsets
/// of the header tables, which mutations reshape together.
struct Fields {
    fields: Vec<(usize, usize)>,
    tables: Vec<(usize, usize)>,
}

impl Fields {
    fn at(fields: &[(usize, usize)]) -> Fields {
        Fields {
            fields: fields.to_vec(),
            tables: Vec::new(),
        }
    }
}

/// An OpenBSD-like kernel: `is64` ELF64 (amd64) or ELF32 (i386) with
/// one to three PT_LOAD segments, maybe a PT_OPENBSD_RANDOMIZE, and a
/// null, symbol and string section.
fn kernel(rng: &mut Rng, is64: bool) -> (Vec<u8>, Fields) {
    let (eh, ph, sh) = if is64 { (64, 56, 64) } else { (52, 32, 40) };
    let w = if is64 { 8 } else { 4 };
    let nload = 1 + rng.below(3) as usize;
    let random = rng.one_in(3);
    let nph = nload + usize::from(random);
    let mut f = vec![0u8; eh + nph * ph];
    let mut fields = Vec::new();
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = if is64 { 2 } else { 1 };
    f[5] = 1;
    f[6] = 1;
    put(&mut f, 16, 2, 2);
    put(&mut f, 18, if is64 { 62 } else { 3 }, 2);
    let entry = 0xffff_ffff_8100_1000u64 & if is64 { u64::MAX } else { 0xffff_ffff };
    // e_entry, e_phoff, e_shoff, e_phentsize, e_phnum, e_shentsize,
    // e_shnum at their class's offsets.
    let (o_entry, o_phoff, o_shoff, o_phent) = if is64 {
        (24, 32, 40, 54)
    } else {
        (24, 28, 32, 42)
    };
    put(&mut f, o_entry, entry, w);
    put(&mut f, o_phoff, eh as u64, w);
    put(&mut f, o_phent, ph as u64, 2);
    put(&mut f, o_phent + 2, nph as u64, 2);
    put(&mut f, o_phent + 4, sh as u64, 2);
    fields.extend([
        (18, 2),
        (o_entry, w),
        (o_phoff, w),
        (o_shoff, w),
        (o_phent, 2),
        (o_phent + 2, 2),
        (o_phent + 4, 2),
        (o_phent + 6, 2),
    ]);
    // Segment contents follow the headers.
    let mut paddr = 0x0100_0000 + rng.below(16) * 0x1000;
    for i in 0..nph {
        let p = eh + i * ph;
        let (ty, filesz, memsz) = if i == nload {
            (PT_OPENBSD_RANDOMIZE, 0, 8 + rng.below(64))
        } else {
            let filesz = rng.below(0x300);
            (PT_LOAD, filesz, filesz + rng.below(0x2000))
        };
        let offset = f.len() as u64;
        let mut data = vec![0u8; filesz as usize];
        rng.fill(&mut data);
        f.extend_from_slice(&data);
        // p_type, p_offset, p_paddr, p_filesz, p_memsz.
        let at = if is64 {
            [(0, 4), (8, 8), (24, 8), (32, 8), (40, 8)]
        } else {
            [(0, 4), (4, 4), (12, 4), (16, 4), (20, 4)]
        };
        for (&(o, width), v) in at.iter().zip([u64::from(ty), offset, paddr, filesz, memsz]) {
            put(&mut f, p + o, v, width);
            fields.push((p + o, width));
        }
        paddr += (memsz + 0xfff) & !0xfff;
    }
    // Symbol and string tables, then the section headers.
    let sym_off = f.len() as u64;
    let nsym = rng.below(4) as usize * if is64 { 24 } else { 16 };
    let mut syms = vec![0u8; nsym];
    rng.fill(&mut syms);
    f.extend_from_slice(&syms);
    let str_off = f.len() as u64;
    f.extend_from_slice(b"\0start\0end\0");
    while !f.len().is_multiple_of(8) {
        f.push(0);
    }
    let sh_off = f.len();
    put(&mut f, o_shoff, sh_off as u64, w);
    put(&mut f, o_phent + 6, 3, 2);
    f.resize(sh_off + 3 * sh, 0);
    // sh_type, sh_offset, sh_size.
    let at = if is64 {
        [(4, 4), (24, 8), (32, 8)]
    } else {
        [(4, 4), (16, 4), (20, 4)]
    };
    for (i, (ty, off, size)) in [
        (0, 0, 0),
        (SHT_SYMTAB, sym_off, nsym as u64),
        (SHT_STRTAB, str_off, 11),
    ]
    .into_iter()
    .enumerate()
    {
        let s = sh_off + i * sh;
        for (&(o, width), v) in at.iter().zip([u64::from(ty), off, size]) {
            put(&mut f, s + o, v, width);
            fields.push((s + o, width));
        }
    }
    let tables = vec![(o_phent, o_phent + 2), (o_phent + 4, o_phent + 6)];
    (f, Fields { fields, tables })
}

/// A value for a header field: an edge, a small count or size, near the
/// image's own size, or anything.
fn field_value(rng: &mut Rng, len: usize) -> u64 {
    match rng.below(5) {
        0 => (len as u64).wrapping_add(rng.below(64)).wrapping_sub(32),
        1 => rng.below(0x1_0000),
        2 => rng.below(80),
        _ => rng.edgy_u64(),
    }
}

/// `image` with a few mutations: bytes flipped, fields set to edge
/// values, the end cut off or grown.
fn mutate(rng: &mut Rng, mut image: Vec<u8>, fields: &Fields) -> Vec<u8> {
    for _ in 0..1 + rng.below(4) {
        match rng.below(7) {
            0 | 1 if !fields.fields.is_empty() => {
                let (off, width) = rng.pick(&fields.fields);
                let v = field_value(rng, image.len());
                if off + width <= image.len() {
                    put(&mut image, off, v, width);
                }
            }
            // Entries shorter or longer than a header, more or fewer.
            5 if !fields.tables.is_empty() => {
                let (ent, num) = rng.pick(&fields.tables);
                if num + 2 <= image.len() {
                    put(&mut image, ent, rng.below(80), 2);
                    put(&mut image, num, rng.below(80), 2);
                }
            }
            2 if !image.is_empty() => {
                let i = rng.below(image.len() as u64) as usize;
                image[i] = rng.next() as u8;
            }
            3 => image.truncate(rng.below(image.len() as u64 + 1) as usize),
            4 => {
                let mut more = vec![0u8; rng.below(256) as usize];
                rng.fill(&mut more);
                image.extend_from_slice(&more);
            }
            _ => {}
        }
    }
    image
}

fn gzip(image: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(image).unwrap();
    gz.finish().unwrap()
}

/// First bytes of an image, for the report.
fn head(image: &[u8]) -> String {
    format!(
        "{} bytes: {:02x?}",
        image.len(),
        &image[..image.len().min(256)]
    )
}

#[test]
fn elf_loader_never_panics() {
    let (mem, ranges) = test_guest(64 * MB);
    let mut loaded = 0;
    cases(
        "elf load",
        0xe1f0_0001,
        30_000,
        |rng| {
            let image = if rng.one_in(10) {
                // Noise behind the ELF magic, class and machine.
                let mut b = vec![0u8; rng.below(512) as usize];
                rng.fill(&mut b);
                let is64 = rng.one_in(2);
                let head = [0x7f, b'E', b'L', b'F', if is64 { 2 } else { 1 }, 1];
                for (d, s) in b.iter_mut().zip(head) {
                    *d = s;
                }
                if b.len() > 20 {
                    put(&mut b, 18, if is64 { 62 } else { 3 }, 2);
                }
                b
            } else {
                let is64 = rng.one_in(2);
                let (image, fields) = kernel(rng, is64);
                if rng.one_in(8) {
                    image
                } else {
                    mutate(rng, image, &fields)
                }
            };
            if rng.one_in(10) {
                let mut gz = gzip(&image);
                if rng.one_in(2) {
                    gz = mutate(rng, gz, &Fields::at(&[]));
                }
                gz
            } else {
                image
            }
        },
        |raw| match elf::read_image(raw) {
            Ok(image) if image != *raw => format!("gzip of {}", head(&image)),
            _ => head(raw),
        },
        |raw| {
            // As the VM process boots a `boot` image.
            let Ok(image) = elf::read_image(&raw) else {
                return;
            };
            let r = if elf::is_elf(&image) {
                elf::load(&mem, &ranges, &image, &BootOptions::default())
            } else {
                bios::load(&mem, &raw)
            };
            match r {
                Ok(_) => loaded += 1,
                Err(e) => {
                    let _ = e.to_string();
                }
            }
        },
    );
    assert!(loaded > 300, "only {loaded} images loaded");
}

/// Offsets of the setup header fields the loader reads, as (offset,
/// width).
const BZ_FIELDS: [(usize, usize); 10] = [
    (0x1f1, 1), // setup_sects
    (0x1fe, 2), // boot_flag
    (0x202, 4), // header
    (0x206, 2), // version
    (0x211, 1), // loadflags
    (0x214, 4), // code32_start
    (0x218, 4), // ramdisk_image
    (0x22c, 4), // initrd_addr_max
    (0x236, 2), // xloadflags
    (0x238, 4), // cmdline_size
];

struct LinuxCase {
    kernel: Vec<u8>,
    initrd: Option<Vec<u8>>,
    cmdline: String,
}

#[test]
fn bzimage_loader_never_panics() {
    let (mem, ranges) = test_guest(64 * MB);
    let mut loaded = 0;
    cases(
        "bzImage load",
        0xb2_0001,
        2_000,
        |rng| {
            let mut payload = vec![0u8; 0x200 + rng.below(0x2000) as usize];
            rng.fill(&mut payload);
            let image = linux::test_bzimage(&payload);
            let kernel = if rng.one_in(8) {
                image
            } else {
                mutate(rng, image, &Fields::at(&BZ_FIELDS))
            };
            let initrd = match rng.below(200) {
                0..=49 => None,
                50..=69 => Some(vec![0x5a; rng.pick(&[0, 1, 4096, 1 << 20])]),
                // More than the guest's RAM above 1 MiB.
                70 => Some(vec![0x5a; 70 << 20]),
                _ => Some(vec![0x5a; rng.below(0x1_0000) as usize]),
            };
            let cmdline = (0..rng.pick(&[0, 10, 254, 255, 2047, 2048, 5000]))
                .map(|_| char::from(b' ' + rng.below(95) as u8))
                .collect();
            LinuxCase {
                kernel,
                initrd,
                cmdline,
            }
        },
        |c| {
            format!(
                "kernel {}, initrd {:?} bytes, cmdline {} bytes",
                head(&c.kernel),
                c.initrd.as_ref().map(Vec::len),
                c.cmdline.len()
            )
        },
        |c| {
            let boot = LinuxBoot {
                kernel: &c.kernel,
                initrd: c.initrd.as_deref(),
                cmdline: &c.cmdline,
            };
            match linux::load(&mem, &ranges, &boot) {
                Ok(_) => loaded += 1,
                Err(e) => {
                    let _ = e.to_string();
                }
            }
        },
    );
    assert!(loaded > 100, "only {loaded} bzImages loaded");
}

#[test]
fn bios_loader_never_panics() {
    let (mem, _) = test_guest(64 * MB);
    let limit = (MB - crate::vm::memmap::LOWMEM) as usize;
    cases(
        "bios load",
        0xb105_0001,
        300,
        |rng| {
            let len = match rng.below(4) {
                0 => rng.below(2 * bios::MIN_SIZE as u64) as usize,
                1 => (limit + 16).saturating_sub(rng.below(32) as usize),
                _ => rng.below(limit as u64 + 1) as usize,
            };
            let mut image = vec![0u8; len];
            rng.fill(&mut image);
            image
        },
        |image| head(image),
        |image| {
            if let Err(e) = bios::load(&mem, &image) {
                let _ = e.to_string();
            }
        },
    );
}
