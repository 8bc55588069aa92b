//! The string I/O emulator (`vmd::x86::emulate_string_io`): an INS/OUTS
//! exit whose record (`vei`) and register file the guest controls; the
//! instruction is fetched at CS:RIP through the guest's page tables.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vmd_fuzz::{x86, Input};

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    let size = inp.u8();
    let dir = inp.u8();
    let rep = inp.u8();
    let port = inp.u16();
    let len = inp.u8();
    let vdata = inp.u32();
    let mut c = x86::case(&mut inp);
    c.set_bus(inp.rest());
    let dx = c.exit.vrs.vrs_gprs[vmm_sys::abi::VCPU_REGS_RDX as usize] as u16;
    let vei = c.exit.vei_mut();
    // Mostly what the kernel reports for an INS/OUTS: sizes 1, 2, 4, the
    // port in DX; sometimes anything.
    vei.vei_size = if size & 0x80 != 0 {
        size
    } else {
        [1, 2, 4, 4][usize::from(size & 3)]
    };
    vei.vei_dir = if dir & 0x80 != 0 { dir } else { dir & 1 };
    vei.vei_string = 1;
    vei.vei_rep = rep & 1;
    vei.vei_port = if rep & 0x80 != 0 { port } else { dx };
    vei.vei_insn_len = len;
    vei.vei_data = vdata;
    // The instruction is always fetched from memory for string I/O.
    c.place_bytes();
    match vmd::x86::emulate_string_io(&mut c.exit, &c.ram, &mut c.bus) {
        Ok(done) => assert!((1..=15).contains(&done.insn_len)),
        Err(e) => {
            let _ = (e.to_string(), e.errno(), e.rip());
        }
    }
});
