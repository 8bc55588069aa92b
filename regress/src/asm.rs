//! Guests assembled with iced-x86's `code_asm`, with named marks whose
//! addresses the tests compare against the RIP of exit records.
use iced_x86::code_asm::{CodeAssembler, CodeLabel};
use iced_x86::{BlockEncoderOptions, Decoder, DecoderOptions, IcedError, Instruction};

/// Names instruction addresses while a guest is assembled.
#[derive(Default)]
pub struct Marks {
    labels: Vec<(&'static str, CodeLabel)>,
}

impl Marks {
    /// Names the address of the next instruction added to `a`; the label
    /// returned can also be a branch target.
    pub fn here(
        &mut self,
        a: &mut CodeAssembler,
        name: &'static str,
    ) -> Result<CodeLabel, IcedError> {
        let mut l = a.create_label();
        a.set_label(&mut l)?;
        self.labels.push((name, l));
        Ok(l)
    }
}

/// An assembled guest: its bytes, where they go, and its marks.
pub struct Program {
    pub bits: u32,
    pub base: u64,
    pub bytes: Vec<u8>,
    marks: Vec<(&'static str, u64)>,
}

impl Program {
    /// Assembles `f`'s instructions for `bits`-bit code at `base`.
    pub fn new(
        bits: u32,
        base: u64,
        f: impl FnOnce(&mut CodeAssembler, &mut Marks) -> Result<(), IcedError>,
    ) -> Program {
        let mut a = CodeAssembler::new(bits).expect("bitness");
        let mut m = Marks::default();
        f(&mut a, &mut m).expect("guest assembles");
        let r = a
            .assemble_options(base, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)
            .expect("guest assembles");
        let marks = m
            .labels
            .iter()
            .map(|(n, l)| (*n, r.label_ip(l).expect("mark placed")))
            .collect();
        Program {
            bits,
            base,
            bytes: r.inner.code_buffer,
            marks,
        }
    }

    /// The address of mark `name`.
    pub fn at(&self, name: &str) -> u64 {
        self.marks
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no mark {name}"))
            .1
    }

    /// The name of the mark at `ip`, for messages.
    pub fn name_of(&self, ip: u64) -> String {
        self.marks
            .iter()
            .find(|(_, a)| *a == ip)
            .map(|(n, _)| n.to_string())
            .unwrap_or_else(|| format!("0x{ip:x}"))
    }

    /// The assembled bytes of the instruction at `ip`.
    pub fn insn_bytes(&self, ip: u64) -> &[u8] {
        let i = self.insn(ip);
        let off = (ip - self.base) as usize;
        &self.bytes[off..off + i.len()]
    }

    /// The assembled instruction at `ip`.
    pub fn insn(&self, ip: u64) -> Instruction {
        let off = (ip - self.base) as usize;
        let mut d = Decoder::with_ip(self.bits, &self.bytes[off..], ip, DecoderOptions::NONE);
        d.decode()
    }

    /// The assembled length of the instruction at mark `name`.
    pub fn len_at(&self, name: &str) -> u64 {
        self.insn(self.at(name)).len() as u64
    }
}

/// Assembles a guest without marks.
pub fn asm(
    bits: u32,
    base: u64,
    f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Vec<u8> {
    Program::new(bits, base, |a, _| f(a)).bytes
}
