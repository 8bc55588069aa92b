//! Direct boot of an OpenBSD ELF kernel (vmd's `loadfile_elf`, reference
//! §4.5): ELF64 or ELF32, gzip'd or not; PT_LOAD segments at
//! `p_paddr & 0x0FFFFFFF`; the ELF header, section headers and symbol and
//! string tables appended after the kernel as the boot loader does; then
//! the boot arguments, the boot stack, a GDT and identity page tables, and
//! the flat64 (or, for i386, 32-bit paged) register state.
use super::{regs, write, LoadError};
use std::io::Read;
use vmm_sys::abi::*;
use vmm_sys::GuestMemory;

pub const BOOTARGS_PAGE: u64 = 0x2000;
pub const STACK_PAGE: u64 = 0xF000;
pub const GDT_PAGE: u64 = 0x10000;
pub const PML4_PAGE: u64 = 0x11000;
pub const PML3_PAGE: u64 = 0x12000;
pub const PML2_PAGE: u64 = 0x13000;
pub const PAGE_SIZE: u64 = 0x1000;

const PT_LOAD: u32 = 1;
const PT_OPENBSD_RANDOMIZE: u32 = 0x65a3_dbe6;
const SHT_SYMTAB: u32 = 2;
const SHT_STRTAB: u32 = 3;
/// SHF_ALLOC, in sh_flags' low byte.
const SHF_ALLOC: u8 = 0x2;

const BOOTARG_MEMMAP: u32 = 0;
const BOOTARG_CONSDEV: u32 = 5;
const BOOTARG_BOOTMAC: u32 = 7;
const BOOTARG_END: u32 = 0xFFFF_FFFF;
const BIOS_MAP_FREE: u32 = 1;
const BIOS_MAP_RES: u32 = 2;
/// `MAKEBOOTDEV(4, 0, 0, 0, 0)`: sd0a.
const BOOTDEV: u32 = 0xa000_0004;
const BOOTAPIVER: u32 = 0x0e;

/// How the kernel should find its root: vmd's `-B` only changes bootargs.
#[derive(Clone, Debug, Default)]
pub struct BootOptions {
    /// The MAC of the first NIC when booting from the network.
    pub boot_mac: Option<[u8; 6]>,
}

/// Reads the image, inflating it when it is gzip'd.
/// The most a gzip'd image may inflate to: far above any kernel, far below
/// what a small compressed file could otherwise make the VM process take.
pub const MAX_INFLATED: u64 = 512 << 20;

pub fn read_image(raw: &[u8]) -> Result<Vec<u8>, LoadError> {
    read_image_limited(raw, MAX_INFLATED)
}

fn read_image_limited(raw: &[u8], limit: u64) -> Result<Vec<u8>, LoadError> {
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(raw)
            .take(limit + 1)
            .read_to_end(&mut out)?;
        if out.len() as u64 > limit {
            return Err(LoadError::Size {
                what: "inflated kernel image",
                size: out.len(),
                limit: limit as usize,
            });
        }
        Ok(out)
    } else {
        Ok(raw.to_vec())
    }
}

/// Whether `image` (inflated) is an ELF file.
pub fn is_elf(image: &[u8]) -> bool {
    image.starts_with(b"\x7fELF")
}

struct Phdr {
    ty: u32,
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

struct Shdr {
    ty: u32,
    offset: u64,
    size: u64,
    /// Where the header's sh_offset field sits inside the header bytes.
    raw: Vec<u8>,
}

fn rd(b: &[u8], off: u64, n: usize) -> Result<u64, LoadError> {
    let s = usize::try_from(off)
        .ok()
        .and_then(|o| b.get(o..o.checked_add(n)?))
        .ok_or_else(|| LoadError::Format(format!("ELF file truncated at offset {off}")))?;
    let mut v = [0u8; 8];
    v[..n].copy_from_slice(s);
    Ok(u64::from_le_bytes(v))
}

struct Elf<'a> {
    b: &'a [u8],
    is64: bool,
}

impl<'a> Elf<'a> {
    fn parse(b: &'a [u8]) -> Result<Self, LoadError> {
        if !is_elf(b) || b.len() < 52 {
            return Err(LoadError::Format("not an ELF file".into()));
        }
        let is64 = match b[4] {
            1 => false,
            2 => true,
            c => return Err(LoadError::Format(format!("ELF class {c}"))),
        };
        if b[5] != 1 {
            return Err(LoadError::Format("big-endian ELF".into()));
        }
        let machine = rd(b, 18, 2)?;
        if machine != if is64 { 62 } else { 3 } {
            return Err(LoadError::Format(format!(
                "ELF machine {machine} is not amd64 or i386"
            )));
        }
        Ok(Elf { b, is64 })
    }

    fn entry(&self) -> Result<u64, LoadError> {
        rd(self.b, 24, if self.is64 { 8 } else { 4 })
    }

    fn ehsize(&self) -> usize {
        if self.is64 {
            64
        } else {
            52
        }
    }

    fn phdrs(&self) -> Result<Vec<Phdr>, LoadError> {
        let (off, ent, num) = if self.is64 {
            (rd(self.b, 32, 8)?, rd(self.b, 54, 2)?, rd(self.b, 56, 2)?)
        } else {
            (rd(self.b, 28, 4)?, rd(self.b, 42, 2)?, rd(self.b, 44, 2)?)
        };
        // A shorter entry would make the headers overlap: with 0, one
        // PT_LOAD counts e_phnum times (found by fuzz/).
        let min = if self.is64 { 56 } else { 32 };
        if num > 0 && ent < min {
            return Err(LoadError::Format(format!(
                "ELF program header size {ent} is below {min}"
            )));
        }
        (0..num)
            .map(|i| {
                let p = off + i * ent;
                Ok(if self.is64 {
                    Phdr {
                        ty: rd(self.b, p, 4)? as u32,
                        offset: rd(self.b, p + 8, 8)?,
                        paddr: rd(self.b, p + 24, 8)?,
                        filesz: rd(self.b, p + 32, 8)?,
                        memsz: rd(self.b, p + 40, 8)?,
                    }
                } else {
                    Phdr {
                        ty: rd(self.b, p, 4)? as u32,
                        offset: rd(self.b, p + 4, 4)?,
                        paddr: rd(self.b, p + 12, 4)?,
                        filesz: rd(self.b, p + 16, 4)?,
                        memsz: rd(self.b, p + 20, 4)?,
                    }
                })
            })
            .collect()
    }

    fn shdrs(&self) -> Result<Vec<Shdr>, LoadError> {
        let (off, ent, num) = if self.is64 {
            (rd(self.b, 40, 8)?, rd(self.b, 58, 2)?, rd(self.b, 60, 2)?)
        } else {
            (rd(self.b, 32, 4)?, rd(self.b, 46, 2)?, rd(self.b, 48, 2)?)
        };
        if off == 0 {
            return Ok(Vec::new());
        }
        // The headers are copied whole and patched at sh_flags and
        // sh_offset, so they must be at least that long.
        let min = if self.is64 { 64 } else { 40 };
        if num > 0 && ent < min {
            return Err(LoadError::Format(format!(
                "ELF section header size {ent} is below {min}"
            )));
        }
        (0..num)
            .map(|i| {
                let p = off + i * ent;
                let raw = p
                    .checked_add(ent)
                    .and_then(|end| self.b.get(p as usize..end as usize))
                    .ok_or_else(|| LoadError::Format("section headers truncated".into()))?
                    .to_vec();
                Ok(if self.is64 {
                    Shdr {
                        ty: rd(self.b, p + 4, 4)? as u32,
                        offset: rd(self.b, p + 24, 8)?,
                        size: rd(self.b, p + 32, 8)?,
                        raw,
                    }
                } else {
                    Shdr {
                        ty: rd(self.b, p + 4, 4)? as u32,
                        offset: rd(self.b, p + 16, 4)?,
                        size: rd(self.b, p + 20, 4)?,
                        raw,
                    }
                })
            })
            .collect()
    }
}

fn align(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// Loads the kernel, returns the initial register state.
pub fn load(
    mem: &GuestMemory,
    ranges: &[vm_mem_range],
    image: &[u8],
    opts: &BootOptions,
) -> Result<vcpu_reg_state, LoadError> {
    let elf = Elf::parse(image)?;
    let mut end = 0u64;
    // Each segment is written whole, its zeros too: segments adding up to
    // more than the guest's memory are refused before up to 65535 of
    // them, each in guest memory, have the loader write gigabytes.
    let budget: u64 = ranges
        .iter()
        .filter(|r| r.vmr_type != VM_MEM_MMIO as i32)
        .map(|r| r.vmr_size as u64)
        .sum();
    let mut loaded = 0u64;
    for ph in elf.phdrs()? {
        let dst = ph.paddr & 0x0FFF_FFFF;
        // p_memsz is the file's word: the segment must lie in guest
        // memory before anything is allocated for it.
        let in_memory = || {
            usize::try_from(ph.memsz)
                .ok()
                .filter(|&n| mem.is_backed(dst, n))
                .ok_or_else(|| {
                    LoadError::Memory(format!(
                        "segment of {} bytes at 0x{dst:x} is outside guest memory",
                        ph.memsz
                    ))
                })
        };
        if ph.ty == PT_LOAD || ph.ty == PT_OPENBSD_RANDOMIZE {
            // One segment too big on its own says so.
            in_memory()?;
            loaded = loaded.saturating_add(ph.memsz);
            if loaded > budget {
                return Err(LoadError::Size {
                    what: "ELF segments",
                    size: usize::try_from(loaded).unwrap_or(usize::MAX),
                    limit: usize::try_from(budget).unwrap_or(usize::MAX),
                });
            }
        }
        if ph.ty == PT_OPENBSD_RANDOMIZE {
            let mut rnd = vec![0u8; in_memory()?];
            random_bytes(&mut rnd);
            write(mem, dst, &rnd)?;
            continue;
        }
        if ph.ty != PT_LOAD {
            continue;
        }
        if ph.filesz > ph.memsz {
            return Err(LoadError::Format(
                "segment file size exceeds its memory size".into(),
            ));
        }
        in_memory()?;
        let data = ph
            .offset
            .checked_add(ph.filesz)
            .and_then(|end| image.get(ph.offset as usize..end as usize))
            .ok_or_else(|| LoadError::Format("segment beyond the end of the file".into()))?;
        write(mem, dst, data)?;
        write(
            mem,
            dst + ph.filesz,
            &vec![0u8; (ph.memsz - ph.filesz) as usize],
        )?;
        end = end.max(dst + ph.memsz);
    }
    if end == 0 {
        return Err(LoadError::Format("ELF file has no loadable segment".into()));
    }
    let end = append_symbols(mem, &elf, end)?;
    let bootargs_size = push_bootargs(mem, ranges, opts)?;
    let stack_size = push_stack(mem, bootargs_size, end as u32)?;
    push_gdt(mem)?;
    let rsp = STACK_PAGE + PAGE_SIZE - stack_size;
    // LOADADDR(e_entry): the kernel is linked high and starts at its
    // physical address, paging being an identity map.
    let entry = elf.entry()? & 0x0FFF_FFFF;
    if elf.is64 {
        push_pt_amd64(mem)?;
        Ok(regs::flat64(entry, rsp))
    } else {
        push_pt_i386(mem)?;
        let mut r = regs::flat64(entry, rsp);
        r.vrs_crs[VCPU_REGS_CR3 as usize] = PML3_PAGE;
        r.vrs_crs[VCPU_REGS_CR4 as usize] = 0x10; // PSE
        r.vrs_msrs[VCPU_REGS_EFER as usize] = 0;
        Ok(r)
    }
}

/// Appends the ELF header, section headers and the symbol and string
/// tables after `end`, as the boot loader does; returns the new end.
fn append_symbols(mem: &GuestMemory, elf: &Elf, end: u64) -> Result<u64, LoadError> {
    let shdrs = elf.shdrs()?;
    if shdrs.is_empty() {
        return Ok(end);
    }
    let word = if elf.is64 { 8 } else { 4 };
    let elfp = align(end, word);
    let shpp = elfp + elf.ehsize() as u64;
    let shsize: usize = shdrs.iter().map(|s| s.raw.len()).sum();
    let mut maxp = shpp + align(shsize as u64, word);
    let mut table = Vec::with_capacity(shsize);
    for sh in shdrs {
        let mut raw = sh.raw.clone();
        // As elf64_exec/elf32_exec: the symbol and string tables are
        // copied, their sh_offset made relative to elfp and SHF_ALLOC set;
        // the other headers are copied unchanged.
        if sh.ty == SHT_SYMTAB || sh.ty == SHT_STRTAB {
            let data = sh
                .offset
                .checked_add(sh.size)
                .and_then(|end| elf.b.get(sh.offset as usize..end as usize))
                .ok_or_else(|| {
                    LoadError::Format("symbol section beyond the end of the file".into())
                })?;
            write(mem, maxp, data)?;
            let off = maxp - elfp;
            maxp += align(sh.size, word);
            if elf.is64 {
                raw[24..32].copy_from_slice(&off.to_le_bytes());
            } else {
                raw[16..20].copy_from_slice(&(off as u32).to_le_bytes());
            }
            raw[8] |= SHF_ALLOC; // sh_flags, at offset 8 in both classes
        }
        table.extend_from_slice(&raw);
    }
    write(mem, shpp, &table)?;
    // The header of the appended image: no program headers, section
    // headers right after it.
    let mut eh = elf.b[..elf.ehsize()].to_vec();
    if elf.is64 {
        eh[32..40].copy_from_slice(&0u64.to_le_bytes()); // e_phoff
        eh[40..48].copy_from_slice(&(elf.ehsize() as u64).to_le_bytes()); // e_shoff
        eh[54..58].copy_from_slice(&[0; 4]); // e_phentsize, e_phnum
    } else {
        eh[28..32].copy_from_slice(&0u32.to_le_bytes());
        eh[32..36].copy_from_slice(&(elf.ehsize() as u32).to_le_bytes());
        eh[42..46].copy_from_slice(&[0; 4]);
    }
    write(mem, elfp, &eh)?;
    Ok(maxp)
}

fn bootarg(out: &mut Vec<u8>, ty: u32, payload: &[u8]) {
    let size = 12 + payload.len() as u32;
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&size.to_le_bytes()); // ba_nextX
    out.extend_from_slice(payload);
}

/// The boot-argument list at BOOTARGS_PAGE; returns its size.
pub fn push_bootargs(
    mem: &GuestMemory,
    ranges: &[vm_mem_range],
    opts: &BootOptions,
) -> Result<u64, LoadError> {
    let mut memmap = Vec::new();
    for r in ranges {
        let ty = if r.vmr_type == VM_MEM_RAM as i32 {
            BIOS_MAP_FREE
        } else {
            BIOS_MAP_RES
        };
        memmap.extend_from_slice(&r.vmr_gpa.to_le_bytes());
        memmap.extend_from_slice(&(r.vmr_size as u64).to_le_bytes());
        memmap.extend_from_slice(&ty.to_le_bytes());
    }
    memmap.extend_from_slice(&[0u8; 20]); // BIOS_MAP_END
    let mut ba = Vec::new();
    bootarg(&mut ba, BOOTARG_MEMMAP, &memmap);
    // bios_consdev_t (packed): com0 at 115200 baud, 0x3f8.
    let mut cons = Vec::new();
    cons.extend_from_slice(&0x800u32.to_le_bytes()); // makedev(8, 0)
    cons.extend_from_slice(&115200u32.to_le_bytes());
    cons.extend_from_slice(&0x3f8u64.to_le_bytes());
    cons.extend_from_slice(&0u32.to_le_bytes()); // consfreq
    cons.extend_from_slice(&[0u8; 12]); // flags, reg_width, reg_shift
    bootarg(&mut ba, BOOTARG_CONSDEV, &cons);
    if let Some(mac) = opts.boot_mac {
        let mut m = mac.to_vec();
        m.resize(8, 0);
        bootarg(&mut ba, BOOTARG_BOOTMAC, &m);
    }
    ba.extend_from_slice(&BOOTARG_END.to_le_bytes());
    if ba.len() as u64 > PAGE_SIZE {
        return Err(LoadError::Size {
            what: "boot arguments",
            size: ba.len(),
            limit: PAGE_SIZE as usize,
        });
    }
    write(mem, BOOTARGS_PAGE, &ba)?;
    Ok(ba.len() as u64)
}

/// The 32-bit boot stack of OpenBSD's boot loader ABI; returns its size.
fn push_stack(mem: &GuestMemory, bootargs_size: u64, end: u32) -> Result<u64, LoadError> {
    // From the top down: bootargs address, size, biosbasemem, biosextmem,
    // kernel end, bootapiver, bootdev, howto, and a fake return address.
    let words = [
        0u32,
        0,
        BOOTDEV,
        BOOTAPIVER,
        end,
        0,
        0,
        bootargs_size as u32,
        BOOTARGS_PAGE as u32,
    ];
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let size = bytes.len() as u64;
    write(mem, STACK_PAGE + PAGE_SIZE - size, &bytes)?;
    Ok(size)
}

fn push_gdt(mem: &GuestMemory) -> Result<(), LoadError> {
    let gdt: [u64; 4] = [
        0,
        0x00cf_9b00_0000_ffff, // 0x08: flat 32-bit code, execute/read accessed
        0x00cf_9300_0000_ffff, // 0x10: flat data, read/write accessed
        0x00af_9b00_0000_ffff, // 0x18: 64-bit code
    ];
    let bytes: Vec<u8> = gdt.iter().flat_map(|d| d.to_le_bytes()).collect();
    write(mem, GDT_PAGE, &bytes)
}

/// Identity map of the first 1 GiB with 2 MiB pages.
fn push_pt_amd64(mem: &GuestMemory) -> Result<(), LoadError> {
    const V_RW: u64 = 0x3;
    const PS_RW_U_V: u64 = 0x87;
    write(mem, PML4_PAGE, &(PML3_PAGE | V_RW).to_le_bytes())?;
    write(mem, PML3_PAGE, &(PML2_PAGE | V_RW).to_le_bytes())?;
    let pd: Vec<u8> = (0..512u64)
        .flat_map(|i| ((i << 21) | PS_RW_U_V).to_le_bytes())
        .collect();
    write(mem, PML2_PAGE, &pd)
}

/// For i386 kernels: 1024 PSE 4 MiB pages at PML3_PAGE.
fn push_pt_i386(mem: &GuestMemory) -> Result<(), LoadError> {
    let pd: Vec<u8> = (0..1024u32)
        .flat_map(|i| ((i << 22) | 0x87).to_le_bytes())
        .collect();
    write(mem, PML3_PAGE, &pd)
}

fn random_bytes(buf: &mut [u8]) {
    use std::io::Read as _;
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .is_err()
    {
        // No random source: still fill deterministically rather than zeros.
        let mut x = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        for b in buf {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::boot::test_guest;
    use crate::vm::memmap::MB;

    /// A minimal ELF64 with one PT_LOAD (code at paddr 0x1001000 → loaded
    /// at 0x1001000 & 0x0FFFFFFF) and a symtab + strtab.
    fn tiny_elf64(code: &[u8], vaddr: u64, paddr: u64) -> Vec<u8> {
        let mut f = vec![0u8; 64];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[6] = 1;
        f[16..18].copy_from_slice(&2u16.to_le_bytes());
        f[18..20].copy_from_slice(&62u16.to_le_bytes());
        f[24..32].copy_from_slice(&vaddr.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        f[52..54].copy_from_slice(&64u16.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&1u16.to_le_bytes());
        f[58..60].copy_from_slice(&64u16.to_le_bytes());
        let code_off = 0x100u64;
        let mut ph = vec![0u8; 56];
        ph[0..4].copy_from_slice(&PT_LOAD.to_le_bytes());
        ph[8..16].copy_from_slice(&code_off.to_le_bytes());
        ph[16..24].copy_from_slice(&vaddr.to_le_bytes());
        ph[24..32].copy_from_slice(&paddr.to_le_bytes());
        ph[32..40].copy_from_slice(&(code.len() as u64).to_le_bytes());
        ph[40..48].copy_from_slice(&(code.len() as u64 + 0x100).to_le_bytes()); // with bss
        f.extend_from_slice(&ph);
        f.resize(code_off as usize, 0);
        f.extend_from_slice(code);
        let sym_off = f.len() as u64;
        f.extend_from_slice(&[0xAA; 24]);
        let str_off = f.len() as u64;
        f.extend_from_slice(b"\0start\0");
        while !f.len().is_multiple_of(8) {
            f.push(0);
        }
        let sh_off = f.len() as u64;
        f[40..48].copy_from_slice(&sh_off.to_le_bytes());
        f[60..62].copy_from_slice(&3u16.to_le_bytes());
        let sh = |ty: u32, off: u64, size: u64| {
            let mut s = vec![0u8; 64];
            s[4..8].copy_from_slice(&ty.to_le_bytes());
            s[24..32].copy_from_slice(&off.to_le_bytes());
            s[32..40].copy_from_slice(&size.to_le_bytes());
            s
        };
        let a = sh(0, 0, 0);
        let b = sh(SHT_SYMTAB, sym_off, 24);
        let c = sh(SHT_STRTAB, str_off, 7);
        f.extend_from_slice(&a);
        f.extend_from_slice(&b);
        f.extend_from_slice(&c);
        f
    }

    /// Found by fuzz/ (target `boot`): e_phentsize 0 makes all 52852
    /// program headers the same PT_LOAD of 256 KiB, and the loader zeroed
    /// 13 GB of guest memory (a 10 s hang, and far more with bigger
    /// segments).  A program header entry shorter than Elf64_Phdr is
    /// refused.
    #[test]
    fn fuzz_zero_phentsize_is_refused() {
        let (mem, ranges) = test_guest(64 * MB);
        let image: &[u8] = &[
            0x7f, 0x45, 0x4c, 0x46, 0x02, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x02, 0x00, 0x3e, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x01,
            0x00, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x74, 0xce, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x6d, 0x00, 0x00, 0x27, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0xec, 0xec, 0xec, 0xec, 0x90, 0x90, 0x00, 0x00, 0x00,
        ];
        let e = load(&mem, &ranges, image, &BootOptions::default()).unwrap_err();
        assert!(
            e.to_string().contains("program header size 0 is below 56"),
            "{e}"
        );
    }

    /// The same hang with well-formed headers: many PT_LOADs, each in
    /// guest memory, that add up to far more than the guest has.  The
    /// loader refuses segments whose sizes add up past guest memory.
    #[test]
    fn segments_adding_up_past_guest_memory_are_refused() {
        let (mem, ranges) = test_guest(64 * MB);
        let mut elf = tiny_elf64(&[0xf4], 0xffff_ffff_8100_1000, 0x0100_1000);
        // 4096 copies of one 32 MiB segment: 128 GiB of zeros to write.
        let n = 4096u16;
        let phoff = elf.len() as u64;
        let mut ph = vec![0u8; 56];
        ph[0..4].copy_from_slice(&PT_LOAD.to_le_bytes());
        ph[24..32].copy_from_slice(&MB.to_le_bytes());
        ph[40..48].copy_from_slice(&(32 * MB).to_le_bytes());
        for _ in 0..n {
            elf.extend_from_slice(&ph);
        }
        elf[32..40].copy_from_slice(&phoff.to_le_bytes());
        elf[56..58].copy_from_slice(&n.to_le_bytes());
        let e = load(&mem, &ranges, &elf, &BootOptions::default()).unwrap_err();
        assert!(e.to_string().contains("ELF segments"), "{e}");
    }

    #[test]
    fn loads_segments_symbols_bootargs_stack_and_page_tables() {
        let (mem, ranges) = test_guest(64 * MB);
        let code = [0x90u8, 0x90, 0xf4];
        let elf = tiny_elf64(&code, 0xffff_ffff_8100_1000, 0x0100_1000);
        let r = load(&mem, &ranges, &elf, &BootOptions::default()).unwrap();
        let mut got = [0u8; 3];
        mem.read(0x0100_1000, &mut got).unwrap();
        assert_eq!(got, code);
        assert_eq!(mem.read_u64(0x0100_1003).unwrap(), 0, "bss zeroed");
        // kernel end 0x1001103 → ELF header at the next 8-byte boundary
        let elfp = 0x0100_1108;
        let mut magic = [0u8; 4];
        mem.read(elfp, &mut magic).unwrap();
        assert_eq!(&magic, b"\x7fELF");
        assert_eq!(
            mem.read_u64(elfp + 40).unwrap(),
            64,
            "e_shoff follows the header"
        );
        // symtab copied after the section headers, sh_offset relative to elfp
        let symtab_hdr = elfp + 64 + 64;
        let sym_off = mem.read_u64(symtab_hdr + 24).unwrap();
        assert_eq!(sym_off, 64 + 3 * 64);
        assert_eq!(mem.read_u64(elfp + sym_off).unwrap(), 0xAAAA_AAAA_AAAA_AAAA);
        // register state
        assert_eq!(
            r.vrs_gprs[VCPU_REGS_RIP as usize], 0x0100_1000,
            "LOADADDR(e_entry)"
        );
        let rsp = r.vrs_gprs[VCPU_REGS_RSP as usize];
        assert_eq!(rsp, STACK_PAGE + PAGE_SIZE - 36);
        assert_eq!(r.vrs_crs[VCPU_REGS_CR3 as usize], PML4_PAGE);
        assert_eq!(r.vrs_msrs[VCPU_REGS_EFER as usize], 0x500);
        assert_eq!(r.vrs_sregs[VCPU_REGS_CS as usize].vsi_ar, 0xC09F);
        // the stack: fake return address, howto, bootdev, apiver, end, 0, 0, size, bootargs
        let words: Vec<u32> = (0..9).map(|i| mem.read_u32(rsp + i * 4).unwrap()).collect();
        let end = words[4];
        assert_eq!(&words[..4], &[0, 0, BOOTDEV, BOOTAPIVER]);
        assert_eq!(end as u64, elfp + 64 + 3 * 64 + 24 + 8);
        assert_eq!(words[8], BOOTARGS_PAGE as u32);
        // boot args: memmap first, one entry per range plus terminator
        assert_eq!(mem.read_u32(BOOTARGS_PAGE).unwrap(), BOOTARG_MEMMAP);
        let ba_size = mem.read_u32(BOOTARGS_PAGE + 4).unwrap();
        assert_eq!(ba_size as usize, 12 + 20 * (ranges.len() + 1));
        let third = BOOTARGS_PAGE + 12 + 2 * 20;
        assert_eq!(mem.read_u64(third).unwrap(), MB);
        assert_eq!(mem.read_u32(third + 16).unwrap(), BIOS_MAP_FREE);
        let cons = BOOTARGS_PAGE + ba_size as u64;
        assert_eq!(mem.read_u32(cons).unwrap(), BOOTARG_CONSDEV);
        assert_eq!(mem.read_u32(cons + 12).unwrap(), 0x800);
        assert_eq!(mem.read_u32(cons + 16).unwrap(), 115200);
        assert_eq!(mem.read_u64(cons + 20).unwrap(), 0x3f8);
        let total = 12 + 20 * (ranges.len() + 1) + 12 + 32 + 4;
        assert_eq!(words[7] as usize, total);
        assert_eq!(
            mem.read_u32(BOOTARGS_PAGE + total as u64 - 4).unwrap(),
            BOOTARG_END
        );
        // page tables: 1 GiB identity map with 2 MiB pages, GDT
        assert_eq!(mem.read_u64(PML4_PAGE).unwrap(), PML3_PAGE | 3);
        assert_eq!(
            mem.read_u64(PML2_PAGE + 8 * 511).unwrap(),
            (511 << 21) | 0x87
        );
        assert_eq!(mem.read_u64(GDT_PAGE + 8).unwrap(), 0x00cf_9b00_0000_ffff);
    }

    #[test]
    fn a_gzip_bomb_is_refused() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![0u8; 4 << 20]).unwrap();
        let small = gz.finish().unwrap();
        assert!(
            small.len() < 64 << 10,
            "compressed to {} bytes",
            small.len()
        );
        let e = read_image_limited(&small, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("inflated kernel image"), "{e}");
        assert_eq!(read_image_limited(&small, 4 << 20).unwrap().len(), 4 << 20);
    }

    #[test]
    fn gzip_images_inflate_and_garbage_is_refused() {
        use std::io::Write;
        let elf = tiny_elf64(&[0xf4], 0x1000, 0x1000);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&elf).unwrap();
        let inflated = read_image(&gz.finish().unwrap()).unwrap();
        assert_eq!(inflated, elf);
        let (mem, ranges) = test_guest(64 * MB);
        assert!(load(
            &mem,
            &ranges,
            b"\x7fELF\x02garbage",
            &BootOptions::default()
        )
        .is_err());
        let mut truncated = elf.clone();
        truncated.truncate(0x100);
        let e = load(&mem, &ranges, &truncated, &BootOptions::default()).unwrap_err();
        assert!(e.to_string().contains("beyond the end"), "{e}");
    }

    #[test]
    fn hostile_header_fields_are_errors() {
        let (mem, ranges) = test_guest(64 * MB);
        let elf = tiny_elf64(&[0xf4], 0x1000, 0x0100_0000);
        let with = |off: usize, v: &[u8]| {
            let mut b = elf.clone();
            b[off..off + v.len()].copy_from_slice(v);
            load(&mem, &ranges, &b, &BootOptions::default()).unwrap_err()
        };
        let sh_off = u64::from_le_bytes(elf[40..48].try_into().unwrap()) as usize;
        // A bss of 2^60 bytes is refused before anything is allocated.
        let e = with(64 + 40, &(1u64 << 60).to_le_bytes());
        assert!(e.to_string().contains("outside guest memory"), "{e}");
        // p_offset + p_filesz, sh_offset + sh_size and e_phoff + a field
        // past 2^64.
        with(64 + 8, &u64::MAX.to_le_bytes());
        with(sh_off + 64 + 24, &(u64::MAX - 4).to_le_bytes());
        with(32, &(u64::MAX - 1).to_le_bytes());
        // Section headers shorter than the fields patched in them.
        let e = with(58, &8u16.to_le_bytes());
        assert!(e.to_string().contains("section header size 8"), "{e}");
    }
}
