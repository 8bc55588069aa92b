//! End to end: guests assembled here boot in our VM process the ways vmd
//! boots a kernel (reference §4.5) and check, from the inside, what the
//! loaders promised them; then MMIO through the whole machine (the shim's
//! exits, the emulator, the device bus) in both exit flavours, and an
//! instruction the emulator refuses ending the VM with an error.
//!
//! Every guest reports on COM1 (polling LSR bit 5 before each byte) and
//! halts with interrupts off.  Checks made inside the guest print
//! `FAIL <index> <value>` on a mismatch; the test turns the index back into
//! the check's description and expected value.
//!
//! Needs /dev/kvm (or /dev/vmm); the tests are reported as ignored with the
//! reason where it is missing.
mod support;

use iced_x86::code_asm::*;
use iced_x86::BlockEncoderOptions;
use libtest_mimic::{Arguments, Failed, Trial};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::Console;
use vmd::devices::bus::MmioDevice;
use vmd::vm::boot::linux::test_bzimage;
use vmd::vm::machine::{BootImage, Machine, Outcome, VmConfig, VmError};
use vmm_sys::ExitFlavour;

const MB: u64 = 1 << 20;
/// Guest memory of every VM here.
const MEMORY: u64 = 64 * MB;
/// The memory map vmd builds for 64 MiB (reference §4.1): (addr, size,
/// BIOS/e820 type).
const MEMMAP_64M: [(u64, u64, u32); 5] = [
    (0, 0xA_0000, 1),
    (0xA_0000, 0x6_0000, 2),
    (MB, MEMORY - MB, 1),
    (0xF000_0000, 0x0FE0_0000, 2),
    (0xFFE0_0000, 2 * MB, 2),
];

/// An MMIO device that behaves as 4 KiB of memory with known contents and
/// records every access.
struct TestDevice {
    base: u64,
    mem: Vec<u8>,
    log: Vec<Access>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// (gpa, size, value)
    R(u64, u8, u64),
    W(u64, u8, u64),
}

impl TestDevice {
    fn new(base: u64, init: &[(u64, u8, u64)]) -> Self {
        let mut mem = vec![0u8; 0x1000];
        for &(off, size, v) in init {
            let off = off as usize;
            mem[off..off + size as usize].copy_from_slice(&v.to_le_bytes()[..size as usize]);
        }
        TestDevice {
            base,
            mem,
            log: Vec::new(),
        }
    }
}

impl MmioDevice for TestDevice {
    fn mmio_read(&mut self, offset: u64, size: u8) -> u64 {
        let mut b = [0u8; 8];
        let o = offset as usize;
        b[..size as usize].copy_from_slice(&self.mem[o..o + size as usize]);
        let v = u64::from_le_bytes(b);
        self.log.push(Access::R(self.base + offset, size, v));
        v
    }
    fn mmio_write(&mut self, offset: u64, size: u8, value: u64) {
        let o = offset as usize;
        self.mem[o..o + size as usize].copy_from_slice(&value.to_le_bytes()[..size as usize]);
        self.log.push(Access::W(self.base + offset, size, value));
    }
}

// ---- running a VM ------------------------------------------------------

struct Run {
    outcome: Result<Outcome, VmError>,
    console: String,
}

/// Boots `boot` with `dev` registered over `[base, base + len)`, until the
/// console shows `done` or the VM ends (at most 30 s), then stops it.
fn run_vm(
    boot: BootImage,
    flavour: Option<ExitFlavour>,
    dev: Option<(u64, u64, Arc<Mutex<TestDevice>>)>,
    done: &str,
) -> Result<Run, Failed> {
    let console = Console::default();
    let vmm = Arc::new(vmm_sys::Vmm::open()?);
    let cfg = VmConfig {
        flavour,
        ..VmConfig::new("boot-test", MEMORY, boot, Box::new(console.clone()))
    };
    let mut machine = Machine::new(vmm, cfg).map_err(|e| format!("Machine::new: {e}"))?;
    if let Some((base, len, dev)) = dev {
        machine
            .register_mmio(base, len, dev)
            .map_err(|e| format!("register_mmio: {e}"))?;
    }
    let control = machine.control();
    let runner = std::thread::spawn(move || machine.run());
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !runner.is_finished() {
        let text = console.text();
        if text.contains(done) || fail_line(&text).is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // A guest that goes wrong after its last line (a reset, an exit
    // error) ends run() by itself: give it a moment to show.
    std::thread::sleep(Duration::from_millis(50));
    control.stop();
    let outcome = runner.join().map_err(|_| "VM thread panicked")?;
    Ok(Run {
        outcome,
        console: console.text(),
    })
}

/// The complete `FAIL <index> <value>` line of a guest check, if any.
fn fail_line(text: &str) -> Option<(usize, u32)> {
    let at = text.find("FAIL ")?;
    let line = text[at..].split_inclusive('\n').next()?;
    let mut it = line.strip_suffix('\n')?.split(' ').skip(1);
    let idx = u32::from_str_radix(it.next()?, 16).ok()?;
    let value = u32::from_str_radix(it.next()?, 16).ok()?;
    Some((idx as usize, value))
}

/// Runs a guest whose checks end in "OK\n": passes when the VM halted
/// normally after printing exactly that.
fn expect_ok(run: Run, checks: &[(String, u32)]) -> Result<(), Failed> {
    let Run { outcome, console } = run;
    if let Some((i, got)) = fail_line(&console) {
        let (what, want) = checks
            .get(i)
            .map(|(w, v)| (w.as_str(), format!("0x{v:x}")))
            .unwrap_or(("?", "?".into()));
        return Err(format!(
            "guest check #{i} failed: {what}: got 0x{got:x}, want {want}; console:\n{console}"
        )
        .into());
    }
    match outcome {
        Ok(Outcome::Halted) => {}
        Ok(o) => return Err(format!("VM ended with {o:?}; console:\n{console}").into()),
        Err(e) => return Err(format!("VM failed: {e}; console:\n{console}").into()),
    }
    if console != "OK\n" {
        return Err(format!("console {console:?}, want \"OK\\n\"").into());
    }
    Ok(())
}

// ---- assembling guests -------------------------------------------------

/// A guest program: code_asm plus the routines every guest uses — `putc`
/// (AL to COM1), `puthex` (EBX, or RBX in 64-bit code, as lowercase hex),
/// the failure path of `check` — and the list of checks made.
struct Guest {
    a: CodeAssembler,
    bits: u32,
    checks: Vec<(String, u32)>,
    /// What the program's `report`s print, in order.
    expected: Vec<String>,
    fail: CodeLabel,
    putc: CodeLabel,
    puthex: CodeLabel,
}

type Asm<T = ()> = Result<T, IcedError>;

impl Guest {
    fn new(bits: u32) -> Self {
        let mut a = CodeAssembler::new(bits).unwrap();
        let (fail, putc, puthex) = (a.create_label(), a.create_label(), a.create_label());
        Guest {
            a,
            bits,
            checks: Vec::new(),
            expected: Vec::new(),
            fail,
            putc,
            puthex,
        }
    }

    /// Checks that EAX equals `want`; on a mismatch the guest prints
    /// `FAIL <index> <eax>` and halts.
    fn check(&mut self, what: impl Into<String>, want: u32) -> Asm {
        self.a.mov(ebp, self.checks.len() as u32)?;
        self.checks.push((what.into(), want));
        self.a.cmp(eax, want)?;
        self.a.jne(self.fail)
    }

    /// Checks that EAX is above `bound` (unsigned).
    fn check_above(&mut self, what: impl Into<String>, bound: u32) -> Asm {
        self.a.mov(ebp, self.checks.len() as u32)?;
        self.checks.push((what.into(), bound));
        self.a.cmp(eax, bound)?;
        self.a.jbe(self.fail)
    }

    /// `check` of the dword at `mem`.
    fn check_mem(&mut self, what: impl Into<String>, mem: AsmMemoryOperand, want: u32) -> Asm {
        self.a.mov(eax, dword_ptr(mem))?;
        self.check(what, want)
    }

    fn print(&mut self, s: &str) -> Asm {
        for b in s.bytes() {
            self.a.mov(al, b as u32)?;
            self.a.call(self.putc)?;
        }
        Ok(())
    }

    /// Prints `reg` in hex on a line of its own, keeping every register;
    /// `want` is what it must print.
    fn report(&mut self, reg: AsmRegister32, want: u32) -> Asm {
        if self.bits == 64 {
            // All of RBX, which the 32-bit move zero-extends.
            self.expected.push(format!("{want:016x}"));
            return self.report64_inner(|a| a.mov(ebx, reg));
        }
        self.expected.push(format!("{want:08x}"));
        self.a.pushad()?;
        self.a.mov(ebx, reg)?;
        self.a.call(self.puthex)?;
        self.a.mov(al, b'\n' as u32)?;
        self.a.call(self.putc)?;
        self.a.popad()
    }

    /// `report` of a 64-bit register (64-bit code only).
    fn report64(&mut self, reg: AsmRegister64, want: u64) -> Asm {
        self.expected.push(format!("{want:016x}"));
        self.report64_inner(|a| a.mov(rbx, reg))
    }

    fn report64_inner(&mut self, load: impl FnOnce(&mut CodeAssembler) -> Asm) -> Asm {
        for r in [rax, rbx, rcx, rdx] {
            self.a.push(r)?;
        }
        load(&mut self.a)?;
        self.a.call(self.puthex)?;
        self.a.mov(al, b'\n' as u32)?;
        self.a.call(self.putc)?;
        for r in [rdx, rcx, rbx, rax] {
            self.a.pop(r)?;
        }
        Ok(())
    }

    /// RFLAGS' status flags (masked by `mask`) into EAX.
    fn flags_to_eax(&mut self, mask: u32) -> Asm {
        if self.bits == 64 {
            self.a.pushfq()?;
            self.a.pop(rax)?;
        } else {
            self.a.pushfd()?;
            self.a.pop(eax)?;
        }
        self.a.and(eax, mask)
    }

    fn halt(&mut self) -> Asm {
        let mut l = self.a.create_label();
        self.a.cli()?;
        self.a.set_label(&mut l)?;
        self.a.hlt()?;
        self.a.jmp(l)
    }

    /// Emits the routines and assembles the program at `ip`.
    fn finish(mut self, ip: u64) -> Asm<Program> {
        let a = &mut self.a;
        // fail: "FAIL <ebp> <eax>\n", then halt.
        a.set_label(&mut self.fail)?;
        a.mov(esi, eax)?;
        for b in "FAIL ".bytes() {
            a.mov(al, b as u32)?;
            a.call(self.putc)?;
        }
        a.mov(ebx, ebp)?;
        a.call(self.puthex)?;
        a.mov(al, b' ' as u32)?;
        a.call(self.putc)?;
        a.mov(ebx, esi)?;
        a.call(self.puthex)?;
        a.mov(al, b'\n' as u32)?;
        a.call(self.putc)?;
        self.halt()?;
        let a = &mut self.a;
        // putc: AL → COM1 once the transmitter holding register is empty.
        a.set_label(&mut self.putc)?;
        a.mov(ah, al)?;
        a.mov(dx, 0x3fd)?;
        let mut wait = a.create_label();
        a.set_label(&mut wait)?;
        a.in_(al, dx)?;
        a.test(al, 0x20)?;
        a.jz(wait)?;
        a.mov(dx, 0x3f8)?;
        a.mov(al, ah)?;
        a.out(dx, al)?;
        a.ret()?;
        // puthex: EBX (RBX in 64-bit code) as 8 (16) lowercase hex digits.
        a.set_label(&mut self.puthex)?;
        let digits = if self.bits == 64 { 16 } else { 8 };
        a.mov(ecx, digits)?;
        let (mut next, mut digit) = (a.create_label(), a.create_label());
        a.set_label(&mut next)?;
        if self.bits == 64 {
            a.rol(rbx, 4)?;
        } else {
            a.rol(ebx, 4)?;
        }
        a.mov(al, bl)?;
        a.and(al, 0xf)?;
        a.add(al, b'0' as u32)?;
        a.cmp(al, b'9' as u32)?;
        a.jbe(digit)?;
        a.add(al, (b'a' - b'9' - 1) as u32)?;
        a.set_label(&mut digit)?;
        a.call(self.putc)?;
        a.dec(ecx)?;
        a.jnz(next)?;
        a.ret()?;
        let r = a.assemble_options(ip, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
        Ok(Program {
            code: r.inner.code_buffer.clone(),
            checks: self.checks,
            expected: self.expected,
            result: r,
        })
    }
}

struct Program {
    code: Vec<u8>,
    checks: Vec<(String, u32)>,
    expected: Vec<String>,
    result: CodeAssemblerResult,
}

// ---- OpenBSD ELF kernels -----------------------------------------------

/// Where the test kernels' only PT_LOAD goes, and how they are linked
/// (like OpenBSD/amd64's kernel: paddr 0x1000000, vaddr KERNBASE-high).
const KERN_PADDR: u64 = 0x0100_0000;
const KERN_VADDR64: u64 = 0xffff_ffff_8100_0000;
const KERN_VADDR32: u64 = 0xd100_0000;
/// The entry point's offset in the segment; the code starts there.
const ENTRY_OFF: u64 = 0x100;
/// A PT_OPENBSD_RANDOMIZE segment inside the PT_LOAD (zeros in the file).
const RANDOM_OFF: u64 = 0x80;
const RANDOM_LEN: u64 = 0x40;
/// The segment's memory size: its file data and then bss.
const KERN_MEMSZ: u64 = 0x1_1000;
/// A bss page the MMIO guests use as a page directory.
const PD_PADDR: u64 = KERN_PADDR + 0x1_0000;
/// Where the MMIO guest's 64-bit code is placed in the segment.
const CODE64_OFF: u64 = 0x4000;

const SHF_ALLOC: u32 = 2;
/// Where the segment (.text) is in the file: the loader copies .text's
/// section header with this sh_offset unchanged.
const TEXT_SH_OFFSET: u64 = 0x1000;

/// A built kernel and what the loader must make of it, by OpenBSD's
/// `elf64_exec`/`elf32_exec` (LOADADDR masks with 0x0FFFFFFF).
struct Kernel {
    file: Vec<u8>,
    /// Guest-physical entry: LOADADDR(e_entry).
    entry: u64,
    /// MARK_END: the end of the appended symbols.
    end: u64,
    /// Where the ELF header copy goes.
    elfp: u64,
    /// The section headers' copy.
    shpp: u64,
    /// sh_offset (relative to elfp) the .symtab copy must have.
    symtab_off: u64,
    /// Section header size.
    shentsize: u64,
    /// Symbol size (Elf64_Sym or Elf32_Sym).
    symsize: u64,
}

fn align(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// A minimal OpenBSD-style kernel: one PT_LOAD with `seg` (code at
/// ENTRY_OFF) and bss up to KERN_MEMSZ, a PT_OPENBSD_RANDOMIZE, and the
/// sections null, .text, .symtab, .strtab, .shstrtab.
fn build_kernel(is64: bool, seg: &[u8]) -> Kernel {
    let vaddr = if is64 { KERN_VADDR64 } else { KERN_VADDR32 };
    let entry_v = vaddr + ENTRY_OFF;
    let (ehsize, phentsize, shentsize, word, symsize) = if is64 {
        (64u64, 56u64, 64u64, 8u64, 24u64)
    } else {
        (52, 32, 40, 4, 16)
    };
    let put = |f: &mut Vec<u8>, off: u64, v: u64, n: usize| {
        let off = off as usize;
        if f.len() < off + n {
            f.resize(off + n, 0);
        }
        f[off..off + n].copy_from_slice(&v.to_le_bytes()[..n]);
    };
    let w = if is64 { 8 } else { 4 };
    let mut f = vec![0u8; ehsize as usize];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = if is64 { 2 } else { 1 };
    f[5] = 1;
    f[6] = 1;
    f[7] = 12; // ELFOSABI_OPENBSD
    put(&mut f, 16, 2, 2); // ET_EXEC
    put(&mut f, 18, if is64 { 62 } else { 3 }, 2);
    put(&mut f, 20, 1, 4);
    put(&mut f, 24, entry_v, w);
    let (phoff_at, shoff_at, tail) = if is64 { (32, 40, 48) } else { (28, 32, 36) };
    put(&mut f, phoff_at, ehsize, w);
    put(&mut f, tail + 4, ehsize, 2); // e_ehsize
    put(&mut f, tail + 6, phentsize, 2);
    put(&mut f, tail + 8, 2, 2); // e_phnum
    put(&mut f, tail + 10, shentsize, 2);
    put(&mut f, tail + 12, 5, 2); // e_shnum
    put(&mut f, tail + 14, 4, 2); // e_shstrndx

    // Program headers: PT_LOAD (R|X), then PT_OPENBSD_RANDOMIZE (R).
    let seg_off = 0x1000u64;
    assert_eq!(seg_off, TEXT_SH_OFFSET);
    let ph =
        |f: &mut Vec<u8>, at: u64, ty: u64, flags: u64, off: u64, va: u64, pa: u64, fsz, msz| {
            if is64 {
                put(f, at, ty, 4);
                put(f, at + 4, flags, 4);
                put(f, at + 8, off, 8);
                put(f, at + 16, va, 8);
                put(f, at + 24, pa, 8);
                put(f, at + 32, fsz, 8);
                put(f, at + 40, msz, 8);
                put(f, at + 48, 0x1000, 8);
            } else {
                put(f, at, ty, 4);
                put(f, at + 4, off, 4);
                put(f, at + 8, va, 4);
                put(f, at + 12, pa, 4);
                put(f, at + 16, fsz, 4);
                put(f, at + 20, msz, 4);
                put(f, at + 24, flags, 4);
                put(f, at + 28, 0x1000, 4);
            }
        };
    let filesz = seg.len() as u64;
    ph(
        &mut f, ehsize, 1, 5, seg_off, vaddr, KERN_PADDR, filesz, KERN_MEMSZ,
    );
    ph(
        &mut f,
        ehsize + phentsize,
        0x65a3_dbe6,
        4,
        seg_off + RANDOM_OFF,
        vaddr + RANDOM_OFF,
        KERN_PADDR + RANDOM_OFF,
        RANDOM_LEN,
        RANDOM_LEN,
    );
    f.resize(seg_off as usize, 0);
    f.extend_from_slice(seg);

    // .symtab: the null symbol and `start`; .strtab; .shstrtab.
    let mut symtab = vec![0u8; 2 * symsize as usize];
    let s1 = symsize;
    put(&mut symtab, s1, 1, 4); // st_name "start"
    if is64 {
        symtab[s1 as usize + 4] = 0x12; // STB_GLOBAL, STT_FUNC
        put(&mut symtab, s1 + 6, 1, 2); // st_shndx .text
        put(&mut symtab, s1 + 8, entry_v, 8);
    } else {
        put(&mut symtab, s1 + 4, entry_v, 4);
        symtab[s1 as usize + 12] = 0x12;
        put(&mut symtab, s1 + 14, 1, 2);
    }
    let strtab = b"\0start\0".to_vec();
    let shstrtab = b"\0.text\0.symtab\0.strtab\0.shstrtab\0".to_vec();
    let place = |f: &mut Vec<u8>, data: &[u8]| {
        f.resize(f.len().next_multiple_of(8), 0);
        let off = f.len() as u64;
        f.extend_from_slice(data);
        off
    };
    let sym_off = place(&mut f, &symtab);
    let str_off = place(&mut f, &strtab);
    let shstr_off = place(&mut f, &shstrtab);
    f.resize(f.len().next_multiple_of(8), 0);
    let shoff = f.len() as u64;
    put(&mut f, shoff_at, shoff, w);
    // (name, type, flags, offset, size, link, entsize)
    let sections: [(u64, u64, u64, u64, u64, u64, u64); 5] = [
        (0, 0, 0, 0, 0, 0, 0),
        (1, 1, 6, seg_off, filesz, 0, 0), // .text, AX
        (7, 2, 0, sym_off, symtab.len() as u64, 3, symsize),
        (15, 3, 0, str_off, strtab.len() as u64, 0, 0),
        (23, 3, 0, shstr_off, shstrtab.len() as u64, 0, 0),
    ];
    for (i, &(name, ty, flags, off, size, link, entsize)) in sections.iter().enumerate() {
        let at = shoff + i as u64 * shentsize;
        f.resize((at + shentsize) as usize, 0);
        put(&mut f, at, name, 4);
        put(&mut f, at + 4, ty, 4);
        if is64 {
            put(&mut f, at + 8, flags, 8);
            put(&mut f, at + 24, off, 8);
            put(&mut f, at + 32, size, 8);
            put(&mut f, at + 40, link, 4);
            put(&mut f, at + 48, 8, 8);
            put(&mut f, at + 56, entsize, 8);
        } else {
            put(&mut f, at + 8, flags, 4);
            put(&mut f, at + 16, off, 4);
            put(&mut f, at + 20, size, 4);
            put(&mut f, at + 24, link, 4);
            put(&mut f, at + 32, 4, 4);
            put(&mut f, at + 36, entsize, 4);
        }
    }

    // .symtab's sh_info: one local symbol (the null one).
    put(
        &mut f,
        shoff + 2 * shentsize + if is64 { 44 } else { 28 },
        1,
        4,
    );

    // What the loader must make of it (elf64_exec / elf32_exec).
    let elfp = align(KERN_PADDR + KERN_MEMSZ, word);
    let shpp = elfp + ehsize;
    let mut maxp = shpp + align(5 * shentsize, word);
    let mut symtab_off = 0;
    for &(_, ty, _, _, size, _, _) in &sections {
        if ty == 2 || ty == 3 {
            if ty == 2 {
                symtab_off = maxp - elfp;
            }
            maxp += align(size, word);
        }
    }
    Kernel {
        file: f,
        entry: (entry_v & 0x0FFF_FFFF),
        end: maxp & 0x0FFF_FFFF,
        elfp,
        shpp,
        symtab_off,
        shentsize,
        symsize,
    }
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(b).unwrap();
    gz.finish().unwrap()
}

/// Lays out a kernel segment: the 32-bit program at ENTRY_OFF and, if
/// any, the 64-bit one at CODE64_OFF.
fn segment(code32: &[u8], code64: Option<&[u8]>) -> Vec<u8> {
    assert!(ENTRY_OFF as usize + code32.len() <= CODE64_OFF as usize);
    let mut seg = vec![0u8; ENTRY_OFF as usize];
    seg.extend_from_slice(code32);
    if let Some(c) = code64 {
        seg.resize(CODE64_OFF as usize, 0);
        seg.extend_from_slice(c);
    }
    seg
}

/// The checks a kernel makes of the boot ABI (the state vmd leaves it in,
/// the boot stack, the boot arguments, the appended symbols), given the
/// kernel's expected layout.  Ends by printing "OK".
fn boot_abi_checks(g: &mut Guest, is64: bool, k: &Kernel) -> Asm {
    let bootargs_size = 12 + 20 * (MEMMAP_64M.len() as u32 + 1) + 12 + 32 + 4;
    // CPU state.
    g.a.mov(eax, esp)?;
    g.check("ESP at entry", 0xF000 + 0x1000 - 36)?;
    g.a.mov(ax, cs)?;
    g.a.movzx(eax, ax)?;
    g.check("CS selector", 0x08)?;
    g.a.mov(ax, ss)?;
    g.a.movzx(eax, ax)?;
    g.check("SS selector", 0x10)?;
    g.a.mov(eax, cr0)?;
    g.a.and(eax, 0x8000_0001u32)?;
    g.check("CR0.PG|PE", 0x8000_0001)?;
    if is64 {
        g.a.mov(eax, cr3)?;
        g.check("CR3 (PML4_PAGE)", 0x11000)?;
        g.a.mov(eax, cr4)?;
        g.a.and(eax, 0x30)?;
        g.check("CR4.PAE|PSE", 0x30)?;
        g.a.mov(ecx, 0xC000_0080u32)?;
        g.a.rdmsr()?;
        g.a.and(eax, 0x500)?;
        g.check("EFER.LME|LMA (compatibility mode)", 0x500)?;
    } else {
        g.a.mov(ecx, 0xC000_0080u32)?;
        g.a.rdmsr()?;
        g.a.and(eax, 0x500)?;
        g.check("EFER.LME|LMA clear", 0)?;
        g.a.mov(eax, cr3)?;
        g.check("CR3 (PML3_PAGE)", 0x12000)?;
        g.a.mov(eax, cr4)?;
        g.a.and(eax, 0x30)?;
        g.check("CR4.PSE without PAE", 0x10)?;
        g.check_mem(
            "PDE 4 (4 MiB page)",
            dword_ptr(0x12000u32 + 16),
            (4 << 22) | 0x87,
        )?;
    }
    // The boot stack: fake return address, howto, bootdev, bootapiver,
    // end, biosextmem, biosbasemem, bootargs size, bootargs.
    g.check_mem("[esp] fake return address", dword_ptr(esp), 0)?;
    g.check_mem("[esp+4] howto", dword_ptr(esp + 4), 0)?;
    g.check_mem("[esp+8] bootdev", dword_ptr(esp + 8), 0xa000_0004)?;
    g.check_mem("[esp+12] bootapiver", dword_ptr(esp + 12), 0x0e)?;
    g.a.mov(eax, dword_ptr(esp + 16))?;
    g.check_above(
        "[esp+16] kernel end above the kernel's own (bss included)",
        (KERN_PADDR + KERN_MEMSZ) as u32,
    )?;
    g.check_mem("[esp+16] kernel end", dword_ptr(esp + 16), k.end as u32)?;
    g.check_mem("[esp+20] biosextmem", dword_ptr(esp + 20), 0)?;
    g.check_mem("[esp+24] biosbasemem", dword_ptr(esp + 24), 0)?;
    g.check_mem("[esp+28] bootargs size", dword_ptr(esp + 28), bootargs_size)?;
    g.check_mem("[esp+32] bootargs", dword_ptr(esp + 32), 0x2000)?;

    // Walk the boot arguments: ESI = current, EDI = what was seen
    // (1 memmap, 2 consdev).
    let a_ = &mut g.a;
    let (mut top, mut memmap, mut consdev, mut next, mut end) = (
        a_.create_label(),
        a_.create_label(),
        a_.create_label(),
        a_.create_label(),
        a_.create_label(),
    );
    a_.mov(esi, 0x2000)?;
    a_.xor(edi, edi)?;
    a_.set_label(&mut top)?;
    a_.mov(eax, dword_ptr(esi))?;
    a_.cmp(eax, 0xFFFF_FFFFu32)?;
    a_.je(end)?;
    a_.cmp(eax, 0)?;
    a_.je(memmap)?;
    a_.cmp(eax, 5)?;
    a_.je(consdev)?;
    a_.jmp(next)?;

    // BOOTARG_MEMMAP: every entry and the terminator, exactly.
    g.a.set_label(&mut memmap)?;
    g.a.or(edi, 1)?;
    g.check_mem(
        "BOOTARG_MEMMAP size",
        dword_ptr(esi + 4),
        12 + 20 * (MEMMAP_64M.len() as u32 + 1),
    )?;
    let entries = MEMMAP_64M.iter().copied().chain([(0, 0, 0)]);
    for (i, (addr, size, ty)) in entries.enumerate() {
        let e = 12 + 20 * i as i32;
        let name = |f: &str| format!("memmap[{i}].{f}");
        g.check_mem(name("addr lo"), dword_ptr(esi + e), addr as u32)?;
        g.check_mem(name("addr hi"), dword_ptr(esi + e + 4), (addr >> 32) as u32)?;
        g.check_mem(name("size lo"), dword_ptr(esi + e + 8), size as u32)?;
        g.check_mem(
            name("size hi"),
            dword_ptr(esi + e + 12),
            (size >> 32) as u32,
        )?;
        g.check_mem(name("type"), dword_ptr(esi + e + 16), ty)?;
    }
    g.a.jmp(next)?;

    // BOOTARG_CONSDEV: com0 at 0x3f8, 115200 baud.
    g.a.set_label(&mut consdev)?;
    g.a.or(edi, 2)?;
    g.check_mem("BOOTARG_CONSDEV size", dword_ptr(esi + 4), 12 + 32)?;
    g.check_mem("consdev", dword_ptr(esi + 12), 0x800)?;
    g.check_mem("conspeed", dword_ptr(esi + 16), 115200)?;
    g.check_mem("consaddr lo", dword_ptr(esi + 20), 0x3f8)?;
    g.check_mem("consaddr hi", dword_ptr(esi + 24), 0)?;
    g.check_mem("consfreq", dword_ptr(esi + 28), 0)?;

    g.a.set_label(&mut next)?;
    g.a.mov(eax, dword_ptr(esi + 8))?;
    g.check_above("ba_nextX", 0)?;
    g.a.add(esi, eax)?;
    g.a.cmp(esi, 0x3000)?;
    g.a.jb(top)?;
    g.a.set_label(&mut end)?;
    g.a.mov(eax, esi)?;
    g.check("BOOTARG_END offset", 0x2000 + bootargs_size - 4)?;
    g.a.mov(eax, edi)?;
    g.check("memmap and consdev seen", 3)?;

    // PT_OPENBSD_RANDOMIZE: host random bytes, not the file's zeros.
    g.a.xor(eax, eax)?;
    for i in (0..RANDOM_LEN as u32).step_by(4) {
        g.a.or(eax, dword_ptr(KERN_PADDR as u32 + RANDOM_OFF as u32 + i))?;
    }
    g.check_above("PT_OPENBSD_RANDOMIZE filled", 0)?;

    // The appended ELF header, section headers and symbols.
    let elfp = k.elfp as u32;
    let (phoff, shoff, phnum_etc) = if is64 { (32, 40, 54) } else { (28, 32, 42) };
    g.check_mem("ELF magic at elfp", dword_ptr(elfp), 0x464c_457f)?;
    g.check_mem("copied e_phoff", dword_ptr(elfp + phoff), 0)?;
    g.check_mem(
        "copied e_shoff",
        dword_ptr(elfp + shoff),
        if is64 { 64 } else { 52 },
    )?;
    g.check_mem("copied e_phentsize/e_phnum", dword_ptr(elfp + phnum_etc), 0)?;
    let sh = |i: u32| k.shpp as u32 + i * k.shentsize as u32;
    let (sh_flags, sh_offset) = (8, if is64 { 24 } else { 16 });
    g.check_mem(
        ".text sh_offset kept",
        dword_ptr(sh(1) + sh_offset),
        TEXT_SH_OFFSET as u32,
    )?;
    g.check_mem(
        ".symtab sh_offset",
        dword_ptr(sh(2) + sh_offset),
        k.symtab_off as u32,
    )?;
    g.a.mov(eax, dword_ptr(sh(2) + sh_flags))?;
    g.a.and(eax, SHF_ALLOC)?;
    g.check(".symtab SHF_ALLOC", SHF_ALLOC)?;
    g.a.mov(eax, dword_ptr(sh(3) + sh_flags))?;
    g.a.and(eax, SHF_ALLOC)?;
    g.check(".strtab SHF_ALLOC", SHF_ALLOC)?;
    let start_sym = elfp + k.symtab_off as u32 + k.symsize as u32;
    let value_at = if is64 { 8 } else { 4 };
    g.check_mem("`start` st_name", dword_ptr(start_sym), 1)?;
    let vaddr = if is64 { KERN_VADDR64 } else { KERN_VADDR32 };
    g.check_mem(
        "`start` st_value",
        dword_ptr(start_sym + value_at),
        (vaddr + ENTRY_OFF) as u32,
    )?;
    g.print("OK\n")?;
    g.halt()
}

/// Builds the boot-ABI kernel.  Its layout (where the symbols go, the
/// kernel end) does not depend on the program, the segment's memory size
/// being fixed.
fn abi_kernel(is64: bool) -> Asm<(Kernel, Program)> {
    let layout = build_kernel(is64, &[]);
    let mut g = Guest::new(32);
    boot_abi_checks(&mut g, is64, &layout)?;
    let p = g.finish(KERN_PADDR + ENTRY_OFF)?;
    let k = build_kernel(is64, &segment(&p.code, None));
    assert_eq!((k.end, k.elfp), (layout.end, layout.elfp));
    Ok((k, p))
}

fn elf_boot(is64: bool, gz: bool, flavour: Option<ExitFlavour>) -> Result<(), Failed> {
    let (k, p) = abi_kernel(is64)?;
    let image = if gz { gzip(&k.file) } else { k.file.clone() };
    assert_eq!(k.entry, KERN_PADDR + ENTRY_OFF);
    let run = run_vm(BootImage::Kernel(image), flavour, None, "OK\n")?;
    expect_ok(run, &p.checks)
}

// ---- Linux bzImage -----------------------------------------------------

const CMDLINE: &str = "console=ttyS0,115200 vmd.test=boot root=/dev/vda1";

fn initrd() -> Vec<u8> {
    let mut v: Vec<u8> = (0..0x2345u32).map(|i| (i * 31 + 7) as u8).collect();
    v[..8].copy_from_slice(b"INITRD!!");
    v
}

/// The 64-bit entry of a bzImage: checks boot_params (at RSI) against
/// what the loader was given.
fn linux_guest() -> Asm<Program> {
    let rd = initrd();
    // Highest page-aligned spot in the RAM at 1 MiB.
    let rd_addr = ((MEMORY - rd.len() as u64) & !0xfff) as u32;
    let mut g = Guest::new(64);
    g.a.mov(r15, rsi)?;
    g.a.mov(rax, rsi)?;
    g.check("RSI (boot_params) low", 0x7000)?;
    g.a.mov(rax, r15)?;
    g.a.shr(rax, 32)?;
    g.check("RSI (boot_params) high", 0)?;
    g.a.mov(ax, cs)?;
    g.a.movzx(eax, ax)?;
    g.check("CS = __BOOT_CS", 0x10)?;
    g.a.mov(ax, ds)?;
    g.a.movzx(eax, ax)?;
    g.check("DS = __BOOT_DS", 0x18)?;
    g.a.mov(ecx, 0xC000_0080u32)?;
    g.a.rdmsr()?;
    g.a.and(eax, 0x500)?;
    g.check("EFER.LME|LMA", 0x500)?;

    let zp = |off: i32| r15 + off;
    g.a.movzx(eax, word_ptr(zp(0x1fe)))?;
    g.check("boot_flag", 0xaa55)?;
    g.check_mem("header magic", zp(0x202), u32::from_le_bytes(*b"HdrS"))?;
    g.a.movzx(eax, word_ptr(zp(0x206)))?;
    g.check("protocol version", 0x020c)?;
    g.a.movzx(eax, byte_ptr(zp(0x210)))?;
    g.check("type_of_loader", 0xff)?;
    g.a.movzx(eax, byte_ptr(zp(0x211)))?;
    g.check("loadflags LOADED_HIGH|KEEP_SEGMENTS|CAN_USE_HEAP", 0xc1)?;
    g.check_mem("cmdline_size", zp(0x238), 2048)?;

    g.a.movzx(eax, byte_ptr(zp(0x1e8)))?;
    g.check("e820_entries", MEMMAP_64M.len() as u32)?;
    for (i, &(addr, size, ty)) in MEMMAP_64M.iter().enumerate() {
        let e = 0x2d0 + 20 * i as i32;
        let name = |f: &str| format!("e820_table[{i}].{f}");
        g.check_mem(name("addr lo"), zp(e), addr as u32)?;
        g.check_mem(name("addr hi"), zp(e + 4), (addr >> 32) as u32)?;
        g.check_mem(name("size lo"), zp(e + 8), size as u32)?;
        g.check_mem(name("size hi"), zp(e + 12), (size >> 32) as u32)?;
        g.check_mem(name("type"), zp(e + 16), ty)?;
    }

    g.check_mem("cmd_line_ptr", zp(0x228), 0x2_0000)?;
    g.a.mov(ebx, dword_ptr(zp(0x228)))?;
    let mut cmd = CMDLINE.as_bytes().to_vec();
    cmd.push(0);
    cmd.resize(cmd.len().next_multiple_of(4), 0);
    for (i, w) in cmd.chunks(4).enumerate() {
        let want = u32::from_le_bytes(w.try_into().unwrap());
        g.check_mem(
            format!("command line bytes {}..", 4 * i),
            rbx + 4 * i as i32,
            want,
        )?;
    }

    g.check_mem("ramdisk_image", zp(0x218), rd_addr)?;
    g.check_mem("ramdisk_size", zp(0x21c), rd.len() as u32)?;
    g.a.mov(ebx, dword_ptr(zp(0x218)))?;
    let word = |at: usize| u32::from_le_bytes(rd[at..at + 4].try_into().unwrap());
    g.check_mem("initrd bytes 0..4", rbx + 0, word(0))?;
    g.check_mem("initrd bytes 4..8", rbx + 4, word(4))?;
    let last = rd.len() - 4;
    g.check_mem("initrd's last 4 bytes", rbx + last as i32, word(last))?;
    g.print("OK\n")?;
    g.halt()?;
    g.finish(MB + 0x200)
}

fn linux_boot(flavour: Option<ExitFlavour>) -> Result<(), Failed> {
    let p = linux_guest()?;
    let mut payload = vec![0u8; 0x200];
    payload.extend_from_slice(&p.code);
    let boot = BootImage::Linux {
        kernel: test_bzimage(&payload),
        initrd: Some(initrd()),
        cmdline: CMDLINE.into(),
    };
    let run = run_vm(boot, flavour, None, "OK\n")?;
    expect_ok(run, &p.checks)
}

// ---- MMIO through the machine ------------------------------------------

/// The test device's guest-physical base: in the PCI MMIO window.
/// Above the 64 MiB of RAM and below the PCI hole: no RAM and no device
/// but the test's there, so accesses exit as MMIO.
const DEV_GPA: u64 = 0xE000_0000;
/// Where the guests map it: another 1 GiB slot, so that the emulator's
/// page walk has to find the GPA.
const DEV_GVA: u32 = 0x4000_0000;

/// The device's initial contents: (offset, size, value).
const DEV_INIT: [(u64, u8, u64); 18] = [
    (0x00, 4, 0x1122_3344),
    (0x10, 2, 0x5566),
    (0x20, 1, 0x7f),
    (0x21, 1, 0x80),
    (0x22, 2, 0xfedc),
    (0x30, 4, 0xffff_fffe),
    (0x34, 4, 0x20),
    (0x38, 2, 0x1234),
    (0x3a, 1, 0x02),
    (0x3c, 4, 0xf000_0000),
    (0x40, 4, 0xfff),
    (0x44, 1, 0x33),
    (0x48, 4, 0xaabb_ccdd),
    (0x4c, 2, 0x9988),
    (0x4e, 1, 0xee),
    (0x52, 2, 0x7ffe),
    (0x60, 8, 0x0123_4567_89ab_cdef),
    (0x70, 8, 0xffff_ffff),
];

/// Maps DEV_GVA → DEV_GPA with one 2 MiB page: PDPT[1] (in the loader's
/// PML3_PAGE) → a page directory in the kernel's bss.
fn map_device(g: &mut Guest) -> Asm {
    g.a.mov(dword_ptr(PD_PADDR as u32), (DEV_GPA | 0x83) as u32)?;
    g.a.mov(dword_ptr(PD_PADDR as u32 + 4), 0)?;
    g.a.mov(dword_ptr(0x12008u32), (PD_PADDR | 0x3) as u32)?;
    g.a.mov(dword_ptr(0x1200cu32), 0)?;
    g.a.mov(eax, cr3)?;
    g.a.mov(cr3, eax)?;
    g.a.mov(edi, DEV_GVA)
}

/// The MMIO guest: loads and stores of 1, 2 and 4 bytes in compatibility
/// mode, then 8 in 64-bit mode; `log` gets the accesses the device must
/// see, in order.
fn mmio_guest(log: &mut Vec<Access>) -> Asm<(Program, Program)> {
    use Access::{R, W};
    const STATUS: u32 = 0x8d5; // OF SF ZF AF PF CF
    const LOGIC: u32 = 0x8c5; // AF is undefined after AND/OR
    let d = |off: u64| DEV_GPA + off;
    let mut g = Guest::new(32);
    map_device(&mut g)?;

    // Loads: MOV (moffs, base+disp, partial registers), MOVZX, MOVSX, SIB.
    g.a.mov(eax, dword_ptr(DEV_GVA))?;
    log.push(R(d(0), 4, 0x1122_3344));
    g.report(eax, 0x1122_3344)?;
    g.a.mov(eax, 0xdead_beefu32)?;
    g.a.mov(ax, word_ptr(edi + 0x10))?;
    log.push(R(d(0x10), 2, 0x5566));
    g.report(eax, 0xdead_5566)?;
    g.a.mov(eax, 0xcafe_babeu32)?;
    g.a.mov(al, byte_ptr(edi + 0x20))?;
    log.push(R(d(0x20), 1, 0x7f));
    g.report(eax, 0xcafe_ba7f)?;
    g.a.mov(ecx, 0xffff_ffffu32)?;
    g.a.movzx(ecx, byte_ptr(edi + 0x21))?;
    log.push(R(d(0x21), 1, 0x80));
    g.report(ecx, 0x80)?;
    g.a.mov(edx, 0xffff_ffffu32)?;
    g.a.movzx(edx, word_ptr(edi + 0x22))?;
    log.push(R(d(0x22), 2, 0xfedc));
    g.report(edx, 0xfedc)?;
    g.a.movsx(ecx, byte_ptr(edi + 0x21))?;
    log.push(R(d(0x21), 1, 0x80));
    g.report(ecx, 0xffff_ff80)?;
    g.a.mov(ebx, 0x11)?;
    g.a.movsx(ecx, word_ptr(edi + ebx * 2))?;
    log.push(R(d(0x22), 2, 0xfedc));
    g.report(ecx, 0xffff_fedc)?;

    // Stores: immediates and registers of each size, then read back.
    g.a.mov(dword_ptr(edi + 0x100), 0x1234_5678)?;
    log.push(W(d(0x100), 4, 0x1234_5678));
    g.a.mov(word_ptr(edi + 0x104), 0xbeef)?;
    log.push(W(d(0x104), 2, 0xbeef));
    g.a.mov(byte_ptr(edi + 0x106), 0x42)?;
    log.push(W(d(0x106), 1, 0x42));
    g.a.mov(ecx, 0xa5a5_a5a5u32)?;
    g.a.mov(dword_ptr(edi + 0x108), ecx)?;
    log.push(W(d(0x108), 4, 0xa5a5_a5a5));
    g.a.mov(edx, 0x1234_c0deu32)?;
    g.a.mov(word_ptr(edi + 0x10c), dx)?;
    log.push(W(d(0x10c), 2, 0xc0de));
    g.a.mov(ebx, 0x99)?;
    g.a.mov(byte_ptr(edi + 0x10e), bl)?;
    log.push(W(d(0x10e), 1, 0x99));
    for (off, v) in [
        (0x100, 0x1234_5678),
        (0x104, 0x0042_beef),
        (0x10c, 0x0099_c0de),
    ] {
        g.a.mov(eax, dword_ptr(edi + off))?;
        log.push(R(d(off as u64), 4, v as u64));
        g.report(eax, v)?;
    }

    // ALU: read-modify-write and register destinations, with flags.
    g.a.add(dword_ptr(edi + 0x30), 5)?;
    log.extend([R(d(0x30), 4, 0xffff_fffe), W(d(0x30), 4, 3)]);
    g.flags_to_eax(STATUS)?;
    g.report(eax, 0x15)?; // CF PF AF
    g.a.mov(eax, 0x10)?;
    g.a.add(eax, dword_ptr(edi + 0x34))?;
    log.push(R(d(0x34), 4, 0x20));
    g.report(eax, 0x30)?;
    g.a.and(word_ptr(edi + 0x38), 0x0ff0)?;
    log.extend([R(d(0x38), 2, 0x1234), W(d(0x38), 2, 0x0230)]);
    g.a.or(byte_ptr(edi + 0x3a), 0x81)?;
    log.extend([R(d(0x3a), 1, 0x02), W(d(0x3a), 1, 0x83)]);
    g.a.mov(eax, dword_ptr(edi + 0x38))?;
    log.push(R(d(0x38), 4, 0x0083_0230));
    g.report(eax, 0x0083_0230)?;
    g.a.mov(ecx, 0xf)?;
    g.a.or(ecx, dword_ptr(edi + 0x3c))?;
    log.push(R(d(0x3c), 4, 0xf000_0000));
    g.flags_to_eax(LOGIC)?;
    g.report(eax, 0x84)?; // SF PF
    g.report(ecx, 0xf000_000f)?;
    g.a.cmp(dword_ptr(edi + 0x40), 0x1000)?;
    log.push(R(d(0x40), 4, 0xfff));
    g.flags_to_eax(STATUS)?;
    g.report(eax, 0x85)?; // SF PF CF
    g.a.mov(al, 0x33)?;
    g.a.cmp(byte_ptr(edi + 0x44), al)?;
    log.push(R(d(0x44), 1, 0x33));
    g.flags_to_eax(STATUS)?;
    g.report(eax, 0x44)?; // ZF PF
    g.a.mov(ecx, 3)?;
    g.a.add(word_ptr(edi + 0x52), cx)?;
    log.extend([R(d(0x52), 2, 0x7ffe), W(d(0x52), 2, 0x8001)]);
    g.flags_to_eax(STATUS)?;
    g.report(eax, 0x890)?; // OF SF AF

    // XCHG of each size.
    g.a.mov(ecx, 0x0102_0304)?;
    g.a.xchg(dword_ptr(edi + 0x48), ecx)?;
    log.extend([R(d(0x48), 4, 0xaabb_ccdd), W(d(0x48), 4, 0x0102_0304)]);
    g.report(ecx, 0xaabb_ccdd)?;
    g.a.mov(edx, 0x4321)?;
    g.a.xchg(word_ptr(edi + 0x4c), dx)?;
    log.extend([R(d(0x4c), 2, 0x9988), W(d(0x4c), 2, 0x4321)]);
    g.report(edx, 0x9988)?;
    g.a.mov(ebx, 0x1234_5605)?;
    g.a.xchg(byte_ptr(edi + 0x4e), bl)?;
    log.extend([R(d(0x4e), 1, 0xee), W(d(0x4e), 1, 0x05)]);
    g.report(ebx, 0x1234_56ee)?;

    // STOS, with and without REP.
    g.a.cld()?;
    g.a.mov(edi, DEV_GVA + 0x200)?;
    g.a.mov(ecx, 4)?;
    g.a.mov(eax, 0x5a5a_a5a5u32)?;
    g.a.rep().stosd()?;
    log.extend((0..4).map(|i| W(d(0x200 + 4 * i), 4, 0x5a5a_a5a5)));
    g.report(ecx, 0)?;
    g.report(edi, DEV_GVA + 0x210)?;
    g.a.mov(ecx, 3)?;
    g.a.mov(eax, 0xabcd)?;
    g.a.rep().stosw()?;
    log.extend((0..3).map(|i| W(d(0x210 + 2 * i), 2, 0xabcd)));
    g.report(edi, DEV_GVA + 0x216)?;
    g.a.mov(edi, DEV_GVA + 0x218)?;
    g.a.mov(ecx, 2)?;
    g.a.mov(al, 0xee)?;
    g.a.rep().stosb()?;
    log.extend((0..2).map(|i| W(d(0x218 + i), 1, 0xee)));
    g.report(edi, DEV_GVA + 0x21a)?;
    g.a.mov(edi, DEV_GVA + 0x21c)?;
    g.a.mov(eax, 0x600d_cafe)?;
    g.a.stosd()?;
    log.push(W(d(0x21c), 4, 0x600d_cafe));
    g.report(edi, DEV_GVA + 0x220)?;

    // On to 64-bit mode: the loader's GDT has a 64-bit code segment at 0x18.
    g.a.push(0x18)?;
    g.a.push((KERN_PADDR + CODE64_OFF) as u32)?;
    g.a.retf()?;
    let p32 = g.finish(KERN_PADDR + ENTRY_OFF)?;

    let mut g = Guest::new(64);
    g.a.mov(edi, DEV_GVA)?;
    g.a.mov(rax, qword_ptr(rdi + 0x60))?;
    log.push(R(d(0x60), 8, 0x0123_4567_89ab_cdef));
    g.report64(rax, 0x0123_4567_89ab_cdef)?;
    g.a.mov(rcx, 0xfedc_ba98_7654_3210u64)?;
    g.a.mov(qword_ptr(rdi + 0x78), rcx)?;
    log.push(W(d(0x78), 8, 0xfedc_ba98_7654_3210));
    g.a.mov(edx, 1)?;
    g.a.add(qword_ptr(rdi + 0x70), rdx)?;
    log.extend([R(d(0x70), 8, 0xffff_ffff), W(d(0x70), 8, 0x1_0000_0000)]);
    g.flags_to_eax(STATUS)?;
    g.report(eax, 0x14)?; // PF AF
    g.a.movsxd(rax, dword_ptr(rdi + 0x3c))?;
    log.push(R(d(0x3c), 4, 0xf000_0000));
    g.report64(rax, 0xffff_ffff_f000_0000)?;
    g.a.mov(rax, qword_ptr(rdi + 0x78))?;
    log.push(R(d(0x78), 8, 0xfedc_ba98_7654_3210));
    g.report64(rax, 0xfedc_ba98_7654_3210)?;
    g.a.mov(r8, -1i64)?;
    g.a.mov(r9, rdi)?;
    g.a.mov(r8d, dword_ptr(r9 + 0x34))?;
    log.push(R(d(0x34), 4, 0x20));
    g.report64(r8, 0x20)?;
    g.a.lea(rdi, qword_ptr(rdi + 0x220))?;
    g.a.mov(ecx, 2)?;
    g.a.mov(rax, 0x1111_2222_3333_4444u64)?;
    g.a.rep().stosq()?;
    log.extend((0..2).map(|i| W(d(0x220 + 8 * i), 8, 0x1111_2222_3333_4444)));
    g.report64(rdi, (DEV_GVA + 0x230) as u64)?;
    g.report64(rcx, 0)?;
    g.print("END\n")?;
    g.halt()?;
    let p64 = g.finish(KERN_PADDR + CODE64_OFF)?;
    Ok((p32, p64))
}

fn new_device() -> Arc<Mutex<TestDevice>> {
    Arc::new(Mutex::new(TestDevice::new(DEV_GPA, &DEV_INIT)))
}

fn mmio(flavour: ExitFlavour) -> Result<(), Failed> {
    let mut want_log = Vec::new();
    let (p32, p64) = mmio_guest(&mut want_log)?;
    let k = build_kernel(true, &segment(&p32.code, Some(&p64.code)));
    let dev = new_device();
    let run = run_vm(
        BootImage::Kernel(k.file),
        Some(flavour),
        Some((DEV_GPA, 0x1000, dev.clone())),
        "END\n",
    )?;
    let mut want: String = p32
        .expected
        .iter()
        .chain(&p64.expected)
        .map(|l| format!("{l}\n"))
        .collect();
    want.push_str("END\n");
    let log = dev.lock().unwrap().log.clone();
    let Run { outcome, console } = run;
    match outcome {
        Ok(Outcome::Halted) => {}
        Ok(o) => return Err(format!("VM ended with {o:?}; console:\n{console}").into()),
        Err(e) => return Err(format!("VM failed: {e}; console:\n{console}").into()),
    }
    if console != want {
        let diff: Vec<String> = console
            .lines()
            .zip(want.lines())
            .enumerate()
            .filter(|(_, (g, w))| g != w)
            .map(|(i, (g, w))| format!("line {i}: got {g}, want {w}"))
            .collect();
        return Err(format!(
            "guest results differ ({}):\n{console}\nwant:\n{want}",
            diff.join("; ")
        )
        .into());
    }
    if log != want_log {
        let first = log
            .iter()
            .zip(&want_log)
            .position(|(g, w)| g != w)
            .unwrap_or(log.len().min(want_log.len()));
        let tail = |l: &[Access]| {
            l[first.min(l.len())..]
                .iter()
                .take(4)
                .copied()
                .collect::<Vec<_>>()
        };
        return Err(format!(
            "device accesses differ from #{first}: got {:x?}.., want {:x?}.. ({} and {} accesses)",
            tail(&log),
            tail(&want_log),
            log.len(),
            want_log.len()
        )
        .into());
    }
    Ok(())
}

// ---- an instruction the emulator refuses -------------------------------

#[derive(Clone, Copy, Debug)]
enum Refused {
    Bt,
    Cmpxchg,
}

fn refused(what: Refused, flavour: ExitFlavour) -> Result<(), Failed> {
    let mut g = Guest::new(32);
    map_device(&mut g)?;
    g.a.mov(eax, dword_ptr(edi))?;
    g.print("GO\n")?;
    let mut at = g.a.create_label();
    g.a.set_label(&mut at)?;
    let bytes: &[u8] = match what {
        Refused::Bt => {
            g.a.bt(dword_ptr(edi), 3)?;
            &[0x0f, 0xba, 0x27, 0x03]
        }
        Refused::Cmpxchg => {
            g.a.lock().cmpxchg(dword_ptr(edi + 4), ecx)?;
            &[0xf0, 0x0f, 0xb1, 0x4f, 0x04]
        }
    };
    g.print("NOT REACHED\n")?;
    g.halt()?;
    let p = g.finish(KERN_PADDR + ENTRY_OFF)?;
    let rip = p.result.label_ip(&at)?;
    let off = (rip - KERN_PADDR - ENTRY_OFF) as usize;
    assert_eq!(&p.code[off..off + bytes.len()], bytes, "{what:?} encoding");
    let k = build_kernel(true, &segment(&p.code, None));
    let dev = new_device();
    let run = run_vm(
        BootImage::Kernel(k.file),
        Some(flavour),
        Some((DEV_GPA, 0x1000, dev.clone())),
        "NOT REACHED",
    )?;
    let log = dev.lock().unwrap().log.clone();
    let Run { outcome, console } = run;
    let e = match outcome {
        Err(e) => e,
        Ok(o) => {
            return Err(format!("VM ended with {o:?}, want an error; console:\n{console}").into())
        }
    };
    let text = e.to_string();
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let (want_rip, want_bytes) = (format!("rip=0x{rip:x}"), format!("bytes {}", hex.join(" ")));
    if !(text.contains("unsupported MMIO instruction")
        && text.contains(&want_rip)
        && text.contains(&want_bytes))
    {
        return Err(format!("error {text:?} does not name {want_rip} and {want_bytes}").into());
    }
    if e.errno() != libc::EINVAL {
        return Err(format!("errno {}, want EINVAL", e.errno()).into());
    }
    if console != "GO\n" {
        return Err(format!("console {console:?}, want \"GO\\n\"").into());
    }
    let want_log = [Access::R(DEV_GPA, 4, 0x1122_3344)];
    if log != want_log {
        return Err(format!("device accesses {log:x?}, want {want_log:x?}").into());
    }
    Ok(())
}

fn main() {
    let args = Arguments::from_args();
    let skip = support::missing_vmm();
    // kvm-pvm (the paravirtual KVM of some cloud hosts) runs guests with
    // paging only in long mode: an i386 kernel's 32-bit paging shuts the
    // vCPU down before its first instruction.
    let paging32 = std::path::Path::new("/sys/module/kvm_pvm")
        .exists()
        .then(|| "host KVM is kvm-pvm: no 32-bit paging".to_string());
    let mut tests = vec![
        (
            Trial::test("elf64_kernel_boot_abi", || elf_boot(true, false, None)),
            None,
        ),
        (
            Trial::test("elf64_gzip_kernel_boot_abi_vmx_exits", || {
                elf_boot(true, true, Some(ExitFlavour::Vmx))
            }),
            None,
        ),
        (
            Trial::test("elf32_kernel_boot_abi", || elf_boot(false, false, None)),
            paging32.clone(),
        ),
        (
            Trial::test("elf32_gzip_kernel_boot_abi_svm_exits", || {
                elf_boot(false, true, Some(ExitFlavour::Svm))
            }),
            paging32,
        ),
        (
            Trial::test("linux_bzimage_boot_params", || linux_boot(None)),
            None,
        ),
    ];
    for (name, f) in [("vmx", ExitFlavour::Vmx), ("svm", ExitFlavour::Svm)] {
        let t = Trial::test(
            format!("mmio_through_the_machine_{name}_exits"),
            move || mmio(f),
        );
        tests.push((t, None));
        for what in [Refused::Bt, Refused::Cmpxchg] {
            let n = format!("unsupported_mmio_{what:?}_ends_the_vm_{name}_exits").to_lowercase();
            tests.push((Trial::test(n, move || refused(what, f)), None));
        }
    }
    let tests = tests
        .into_iter()
        .map(|(t, host)| support::skip_if(t, skip.clone().or(host)))
        .collect();
    libtest_mimic::run(&args, tests).exit();
}
