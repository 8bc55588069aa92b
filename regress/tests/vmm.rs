//! The vmm(4) regress suite (after OpenBSD's regress/sys/arch/amd64/vmm),
//! run against the host's backend.  Every test needs the hypervisor and is
//! reported as ignored, with the reason, where it is missing.
use iced_x86::code_asm::*;
use libtest_mimic::{Arguments, Failed, Trial};
use vmm_regress::*;
use vmm_sys::abi::*;

type TestFn = fn() -> Result<()>;

fn asm16(f: impl FnOnce(&mut CodeAssembler) -> std::result::Result<(), IcedError>) -> Vec<u8> {
    asm(16, f)
}

fn asm(
    bits: u32,
    f: impl FnOnce(&mut CodeAssembler) -> std::result::Result<(), IcedError>,
) -> Vec<u8> {
    let mut a = CodeAssembler::new(bits).unwrap();
    f(&mut a).unwrap();
    a.assemble(CODE).unwrap()
}

fn smoke_out_hlt() -> Result<()> {
    let mut g = Guest::new("smoke")?;
    let code = asm16(|a| {
        a.mov(al, 0x42)?;
        a.out(0x61, al)?;
        a.hlt()
    });
    g.boot(&code, &flat16(CODE))?;
    let r = g.run()?;
    g.expect_io(r, VEI_DIR_OUT, 0x61, 1)?;
    check(g.exit.vei().vei_data & 0xff == 0x42, || {
        format!("data {:x}", g.exit.vei().vei_data)
    })?;
    check(g.exit.vei().vei_insn_len == 2, || {
        format!("insn len {}", g.exit.vei().vei_insn_len)
    })?;
    check(g.rip() == CODE + 2, || format!("rip {:x}", g.rip()))?;
    g.skip_io();
    let r = g.run()?;
    check(
        r == VMX_EXIT_HLT as u16 || r == SVM_VMEXIT_HLT as u16,
        || format!("exit 0x{r:x}, want HLT"),
    )?;
    check(g.rip() == CODE + 5, || {
        format!("rip after hlt {:x}", g.rip())
    })
}

fn main() {
    let args = Arguments::from_args();
    let skip = missing_hypervisor();
    let tests: Vec<(&str, TestFn)> = vec![("smoke_out_hlt", smoke_out_hlt)];
    let trials = tests
        .into_iter()
        .map(|(name, f)| {
            let t = Trial::test(name, move || f().map_err(Failed::from));
            match &skip {
                Some(why) => t.with_ignored_flag(true).with_kind(why.clone()),
                None => t,
            }
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
