//! The MMIO emulator (`vmd::x86::emulate`) on an MMIO-assist exit: a
//! hostile guest controls the instruction bytes, every register, the page
//! and descriptor tables and what the devices answer.  It must return Ok
//! or Err, never panic, and a success consumed 1 to 15 bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vmd_fuzz::{x86, Input};
use vmm_sys::abi::*;

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    let info = inp.u8();
    let len = inp.u8();
    let mut c = x86::case(&mut inp);
    c.set_bus(inp.rest());
    let vee = c.exit.vee_mut();
    vee.vee_fault_type = VEE_FAULT_MMIO_ASSIST as u8;
    // AMD hands the bytes over, Intel the length only, or neither.
    vee.vee_insn_info = match info & 7 {
        0 | 1 => VEE_BYTES_VALID as u8,
        2 => (VEE_BYTES_VALID | VEE_LEN_VALID) as u8,
        3 => VEE_LEN_VALID as u8,
        4 => 0,
        _ => info,
    };
    vee.vee_insn_len = len;
    vee.vee_insn_bytes = c.bytes;
    if c.place {
        c.place_bytes();
    }
    match vmd::x86::emulate(&mut c.exit, &c.ram, &mut c.bus) {
        Ok(done) => assert!((1..=15).contains(&done.insn_len)),
        Err(e) => {
            let _ = (e.to_string(), e.errno(), e.rip());
        }
    }
});
