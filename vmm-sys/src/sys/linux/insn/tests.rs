//! The shim's instruction helpers on hand-built register state and
//! instruction bytes, no /dev/kvm needed.  Every encoding is spelled out in
//! bytes so it can be checked against the opcode tables of the Intel SDM
//! (vol. 2) and every expected value follows from the instruction's
//! operation there.
use super::*;
use crate::abi::*;
use kvm_bindings::kvm_segment;

const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
/// Reserved bit 1 of RFLAGS, always set.
const RFLAGS_FIXED: u64 = 1 << 1;

fn seg(base: u64, db: u8, l: u8, dpl: u8) -> kvm_segment {
    kvm_segment {
        base,
        limit: 0xffff_ffff,
        type_: 3,
        present: 1,
        s: 1,
        db,
        l,
        dpl,
        g: 1,
        ..Default::default()
    }
}

/// Real mode (CR0.PE clear), CS based at `cs_base`, data segments at 0.
fn real(cs_base: u64) -> kvm_sregs {
    let d = kvm_segment {
        limit: 0xffff,
        ..seg(0, 0, 0, 0)
    };
    kvm_sregs {
        cs: kvm_segment { base: cs_base, ..d },
        ds: d,
        es: d,
        ss: d,
        fs: d,
        gs: d,
        ..Default::default()
    }
}

/// Unpaged protected mode, code and data segments of default size `db`.
fn prot(db: u8) -> kvm_sregs {
    let d = seg(0, db, 0, 0);
    kvm_sregs {
        cr0: CR0_PE,
        cs: d,
        ds: d,
        es: d,
        ss: d,
        fs: d,
        gs: d,
        ..Default::default()
    }
}

/// IA-32e mode on the page tables of `paged_mem`, CS with L=`l` and D=`db`
/// (64-bit mode when `l`, compatibility mode otherwise), at privilege
/// level `cpl`.
fn ia32e(l: u8, db: u8, cpl: u8) -> kvm_sregs {
    let d = seg(0, 1, 0, cpl);
    kvm_sregs {
        cr0: CR0_PE | CR0_PG,
        cr3: 0x1000,
        cr4: CR4_PAE,
        efer: EFER_LME | EFER_LMA,
        cs: seg(0, db, l, cpl),
        ds: d,
        es: d,
        ss: d,
        fs: seg(0x7000_0000, 0, 0, cpl),
        gs: seg(0x8000_0000, 0, 0, cpl),
        ..Default::default()
    }
}

fn long() -> kvm_sregs {
    ia32e(1, 0, 0)
}

/// 4 MiB of RAM with 4-level page tables (PML4 at 0x1000) that map the
/// linear pages 0x0..0xf to themselves, page 0x10 to physical 0x9000,
/// page 0x11 to physical 0x6000 (so linear 0x10fff and 0x11000 are not
/// physically adjacent) and leave page 0x12 unmapped.
fn paged_mem() -> GuestMemory {
    const P_W: u64 = 0x3;
    let mem = GuestMemory::anonymous(&[(0, 0x40_0000)]).unwrap();
    mem.write_u64(0x1000, 0x2000 | P_W).unwrap();
    mem.write_u64(0x2000, 0x3000 | P_W).unwrap();
    mem.write_u64(0x3000, 0x4000 | P_W).unwrap();
    for page in 0..0x10u64 {
        mem.write_u64(0x4000 + page * 8, (page << 12) | P_W)
            .unwrap();
    }
    mem.write_u64(0x4000 + 0x10 * 8, 0x9000 | P_W).unwrap();
    mem.write_u64(0x4000 + 0x11 * 8, 0x6000 | P_W).unwrap();
    mem
}

fn regs() -> kvm_regs {
    kvm_regs {
        rflags: RFLAGS_FIXED,
        ..Default::default()
    }
}

fn one(bytes: &[u8], bits: u32) -> Instruction {
    let i = decode(bytes, bits, 0x1000).expect("valid instruction");
    assert_eq!(i.len(), bytes.len(), "{bytes:02x?} is one instruction");
    i
}

// ---- the instruction window ----------------------------------------------

#[test]
fn bitness_follows_cr0_efer_cs_and_vm86() {
    // Real mode is 16-bit whatever CS's cached D bit says ("unreal" CS).
    assert_eq!(bitness(&real(0), RFLAGS_FIXED), 16);
    let mut unreal = real(0);
    unreal.cs.db = 1;
    assert_eq!(bitness(&unreal, RFLAGS_FIXED), 16);
    assert_eq!(bitness(&prot(0), RFLAGS_FIXED), 16);
    assert_eq!(bitness(&prot(1), RFLAGS_FIXED), 32);
    // Virtual-8086 mode (RFLAGS.VM) runs 16-bit code in protected mode.
    assert_eq!(bitness(&prot(1), RFLAGS_FIXED | RFLAGS_VM), 16);
    // CS.L is ignored outside IA-32e mode.
    let mut legacy_l = prot(1);
    legacy_l.cs.l = 1;
    assert_eq!(bitness(&legacy_l, RFLAGS_FIXED), 32);
    assert_eq!(bitness(&long(), RFLAGS_FIXED), 64);
    assert_eq!(bitness(&ia32e(1, 0, 3), RFLAGS_FIXED), 64, "CPL3");
    assert_eq!(bitness(&ia32e(0, 1, 0), RFLAGS_FIXED), 32, "compat");
    assert_eq!(bitness(&ia32e(0, 0, 3), RFLAGS_FIXED), 16, "compat 16");
}

#[test]
fn code_linear_adds_cs_base_and_wraps_outside_long_mode() {
    // The reset vector: CS base 0xf0000, IP 0xfff0.
    assert_eq!(code_linear(&real(0xf_0000), 16, 0xfff0), 0xf_fff0);
    // 16-bit IP ignores RIP's upper bits; linear may pass 1 MiB (no A20
    // wrap in the shim).
    assert_eq!(code_linear(&real(0xf_0000), 16, 0x1_2345_fff0), 0xf_fff0);
    assert_eq!(code_linear(&real(0xf_fff0), 16, 0xffff), 0x10_ffef);
    // Linear addresses outside long mode wrap at 4 GiB.
    let mut s = prot(0);
    s.cs.base = 0xffff_f000;
    assert_eq!(code_linear(&s, 16, 0x2000), 0x1000);
    let mut s = prot(1);
    s.cs.base = 0x1000;
    assert_eq!(code_linear(&s, 32, 0xffff_f800), 0x800);
    assert_eq!(code_linear(&s, 32, 0xdead_0000_0000_0010), 0x1010);
    // 64-bit mode: CS base is treated as zero.
    let mut s = long();
    s.cs.base = 0x1000;
    assert_eq!(
        code_linear(&s, 64, 0xffff_8000_0000_1234),
        0xffff_8000_0000_1234
    );
}

#[test]
fn fetch_crosses_pages_and_stops_at_the_end_of_ram() {
    let mem = GuestMemory::anonymous(&[(0, 0x2000)]).unwrap();
    // mov eax, 0x12345678 (B8 id) across the page boundary at 0x1000.
    mem.write(0xffd, &[0xb8, 0x78, 0x56, 0x34, 0x12]).unwrap();
    let s = prot(1);
    let (bytes, n) = fetch(&mem, &s, 32, 0xffd);
    assert_eq!(n, 15);
    assert_eq!(&bytes[..5], &[0xb8, 0x78, 0x56, 0x34, 0x12]);
    let i = decode(&bytes[..n], 32, 0xffd).unwrap();
    assert_eq!(
        (i.code(), i.immediate32(), i.len()),
        (Code::Mov_r32_imm32, 0x1234_5678, 5)
    );
    // Four bytes left before the end of RAM.
    mem.write(0x1ffc, &[0xe6, 0x80, 0xee, 0x90]).unwrap();
    let (bytes, n) = fetch(&mem, &s, 32, 0x1ffc);
    assert_eq!((n, &bytes[..4]), (4, &[0xe6, 0x80, 0xee, 0x90][..]));
    // The same bytes reached through a CS base.
    let mut based = prot(1);
    based.cs.base = 0x1000;
    assert_eq!(fetch(&mem, &based, 32, 0xffc).1, 4);
    // RAM in two ranges that touch: one read still spans both; with a hole
    // after the first, it stops there.
    let split = GuestMemory::anonymous(&[(0, 0x1000), (0x1000, 0x1000)]).unwrap();
    assert_eq!(fetch(&split, &s, 32, 0xff8).1, 15);
    let holed = GuestMemory::anonymous(&[(0, 0x1000), (0x2000, 0x1000)]).unwrap();
    assert_eq!(fetch(&holed, &s, 32, 0xff8).1, 8);
}

#[test]
fn fetch_walks_the_guest_page_tables() {
    let mem = paged_mem();
    // mov [rbx], rax (REX.W 89 /r) split over linear 0x10fff | 0x11000,
    // which the page tables put at physical 0x9fff and 0x6000.
    mem.write(0x9fff, &[0x48]).unwrap();
    mem.write(0x6000, &[0x89, 0x03]).unwrap();
    let (bytes, n) = fetch(&mem, &long(), 64, 0x10fff);
    assert_eq!((n, &bytes[..3]), (15, &[0x48, 0x89, 0x03][..]));
    // Linear page 0x12 is not mapped: two bytes before it.
    mem.write(0x6ffe, &[0xe6, 0x80]).unwrap();
    let (bytes, n) = fetch(&mem, &long(), 64, 0x11ffe);
    assert_eq!((n, &bytes[..2]), (2, &[0xe6, 0x80][..]));
}

#[test]
fn window_decodes_forward_and_backward() {
    let mem = GuestMemory::anonymous(&[(0, 0x2000)]).unwrap();
    // 0x100: 66 89 53 22  mov [ebx+0x22], dx
    // 0x104: EE           out dx, al          <- ip
    mem.write(0x100, &[0x66, 0x89, 0x53, 0x22, 0xee]).unwrap();
    let w = Window::read(&mem, &prot(1), 32, 0x104);
    let i = w.at_ip().unwrap();
    assert_eq!((i.code(), i.ip(), i.len()), (Code::Out_DX_AL, 0x104, 1));
    let i = w.ending_at_ip(4).unwrap();
    assert_eq!((i.code(), i.ip()), (Code::Mov_rm16_r16, 0x100));
    assert_eq!(i.memory_displacement32(), 0x22);
    // Ambiguous: without the operand-size prefix the last three bytes are
    // a 4-byte store of EDX; written_gpas/first_fragment tell them apart.
    let i = w.ending_at_ip(3).unwrap();
    assert_eq!((i.code(), i.ip()), (Code::Mov_rm32_r32, 0x101));
    // 53 is PUSH EBX, one byte, not two; 22 alone lacks its ModRM byte.
    assert!(w.ending_at_ip(2).is_none());
    assert!(w.ending_at_ip(1).is_none());
    assert!(w.ending_at_ip(0).is_none());
    assert!(w.ending_at_ip(16).is_none());

    // A prefix makes two readings: F3 AA is REP STOSB, AA alone STOSB.
    mem.write(0x200, &[0xf3, 0xaa]).unwrap();
    let w = Window::read(&mem, &prot(1), 32, 0x202);
    let rep = w.ending_at_ip(2).unwrap();
    let plain = w.ending_at_ip(1).unwrap();
    assert_eq!(
        (rep.code(), rep.has_rep_prefix()),
        (Code::Stosb_m8_AL, true)
    );
    assert_eq!(
        (plain.code(), plain.has_rep_prefix()),
        (Code::Stosb_m8_AL, false)
    );

    // Forward at the end of RAM: OUT DX, AL fits in the last byte, OUT
    // imm8, AL (E6 ib) does not.
    mem.write(0x1fff, &[0xee]).unwrap();
    let w = Window::read(&mem, &prot(1), 32, 0x1fff);
    assert_eq!(w.at_ip().map(|i| i.code()), Some(Code::Out_DX_AL));
    mem.write(0x1fff, &[0xe6]).unwrap();
    assert!(Window::read(&mem, &prot(1), 32, 0x1fff).at_ip().is_none());
}

#[test]
fn window_reads_back_across_a_page_boundary() {
    let mem = GuestMemory::anonymous(&[(0, 0x2000)]).unwrap();
    // mov eax, 0x12345678 over 0xffd..0x1002; ip just past it.
    mem.write(0xffd, &[0xb8, 0x78, 0x56, 0x34, 0x12]).unwrap();
    let w = Window::read(&mem, &prot(1), 32, 0x1002);
    let i = w.ending_at_ip(5).unwrap();
    assert_eq!(
        (i.code(), i.ip(), i.immediate32()),
        (Code::Mov_r32_imm32, 0xffd, 0x1234_5678)
    );
}

#[test]
fn window_reads_back_from_the_start_of_a_page() {
    // OUT 0x80, AL (E6 80) in the last two bytes of a page, ip on the
    // first byte of the next: the whole instruction is in the page before.
    let mem = GuestMemory::anonymous(&[(0, 0x2000)]).unwrap();
    mem.write(0xffe, &[0xe6, 0x80]).unwrap();
    let w = Window::read(&mem, &prot(1), 32, 0x1000);
    let i = w.ending_at_ip(2).expect("E6 80 ends at the page boundary");
    assert_eq!(
        (i.code(), i.ip(), i.immediate8()),
        (Code::Out_imm8_AL, 0xffe, 0x80)
    );
}

#[test]
fn window_reads_back_near_linear_zero() {
    // Real mode, CS=0, IP=2 after OUT 0x80, AL at 0: nothing lies before
    // linear 0.
    let mem = GuestMemory::anonymous(&[(0, 0x1000)]).unwrap();
    mem.write(0, &[0xe6, 0x80]).unwrap();
    let w = Window::read(&mem, &real(0), 16, 2);
    let i = w.ending_at_ip(2).unwrap();
    assert_eq!((i.code(), i.ip()), (Code::Out_imm8_AL, 0));
    assert!(w.ending_at_ip(3).is_none());
}

#[test]
fn window_stops_where_the_page_before_is_not_ram() {
    // RAM starts at 0x1000: 90 E6 80 there, ip at 0x1003.
    let mem = GuestMemory::anonymous(&[(0x1000, 0x1000)]).unwrap();
    mem.write(0x1000, &[0x90, 0xe6, 0x80]).unwrap();
    let w = Window::read(&mem, &prot(1), 32, 0x1003);
    assert_eq!(w.ending_at_ip(2).map(|i| i.code()), Some(Code::Out_imm8_AL));
    // 90 decodes as a one-byte NOP, not a three-byte instruction.
    assert!(w.ending_at_ip(3).is_none());
    assert!(w.ending_at_ip(4).is_none());
}

#[test]
fn window_reads_back_through_the_page_tables() {
    let mem = paged_mem();
    // As in fetch_walks_the_guest_page_tables: 48 89 03 over linear
    // 0x10fff..0x11002, physically 0x9fff and 0x6000..0x6001.
    mem.write(0x9fff, &[0x48]).unwrap();
    mem.write(0x6000, &[0x89, 0x03, 0xee]).unwrap();
    let w = Window::read(&mem, &long(), 64, 0x11002);
    let i = w.ending_at_ip(3).unwrap();
    assert_eq!((i.code(), i.ip()), (Code::Mov_rm64_r64, 0x10fff));
    assert_eq!(w.at_ip().map(|i| i.code()), Some(Code::Out_DX_AL));
}

#[test]
fn decode_rejects_invalid_and_truncated_bytes() {
    // PUSH ES (06) exists in 32-bit mode only.
    assert_eq!(
        decode(&[0x06], 32, 0).map(|i| i.code()),
        Some(Code::Pushd_ES)
    );
    assert!(decode(&[0x06], 64, 0).is_none());
    // MOV EAX, imm32 needs five bytes.
    assert!(decode(&[0xb8, 0x01, 0x02], 32, 0).is_none());
    assert!(decode(&[], 32, 0).is_none());
    let i = decode(&[0xb8, 0x01, 0x02, 0x03, 0x04, 0x90], 32, 0x7c00).unwrap();
    assert_eq!((i.len(), i.ip(), i.next_ip()), (5, 0x7c00, 0x7c05));
}

// ---- port I/O --------------------------------------------------------------

#[test]
fn port_io_forms() {
    fn io(dir_in: bool, size: u8, imm_port: Option<u16>, string: bool, rep: bool) -> PortIo {
        PortIo {
            dir_in,
            size,
            imm_port,
            string,
            rep,
        }
    }
    let cases: &[(&[u8], u32, PortIo)] = &[
        (&[0xe4, 0x80], 32, io(true, 1, Some(0x80), false, false)),
        (&[0xe5, 0x71], 32, io(true, 4, Some(0x71), false, false)),
        (
            &[0x66, 0xe5, 0x71],
            32,
            io(true, 2, Some(0x71), false, false),
        ),
        // The operand-size default flips in 16-bit code.
        (&[0xe5, 0x71], 16, io(true, 2, Some(0x71), false, false)),
        (
            &[0x66, 0xe5, 0x71],
            16,
            io(true, 4, Some(0x71), false, false),
        ),
        (&[0xec], 32, io(true, 1, None, false, false)),
        (&[0x66, 0xed], 32, io(true, 2, None, false, false)),
        // No 8-byte port I/O in 64-bit mode.
        (&[0xed], 64, io(true, 4, None, false, false)),
        (&[0xe6, 0xff], 16, io(false, 1, Some(0xff), false, false)),
        (&[0xe7, 0x80], 32, io(false, 4, Some(0x80), false, false)),
        (
            &[0x66, 0xe7, 0x80],
            32,
            io(false, 2, Some(0x80), false, false),
        ),
        (&[0xee], 64, io(false, 1, None, false, false)),
        (&[0xef], 32, io(false, 4, None, false, false)),
        (&[0x6c], 32, io(true, 1, None, true, false)),
        (&[0xf3, 0x6d], 32, io(true, 4, None, true, true)),
        (&[0x66, 0x6d], 32, io(true, 2, None, true, false)),
        (&[0x6e], 64, io(false, 1, None, true, false)),
        (&[0xf3, 0x6f], 16, io(false, 2, None, true, true)),
        // REPNE acts as REP on INS/OUTS.
        (&[0xf2, 0x6e], 32, io(false, 1, None, true, true)),
    ];
    for (bytes, bits, want) in cases {
        assert_eq!(
            port_io(&one(bytes, *bits)),
            Some(*want),
            "{bytes:02x?} in {bits}-bit"
        );
    }
    assert_eq!(port_io(&one(&[0x90], 32)), None);
    assert_eq!(port_io(&one(&[0x89, 0x03], 32)), None);
}

#[test]
fn matches_port_io_checks_port_size_and_direction() {
    let out_imm = one(&[0xe6, 0x80], 32);
    assert!(matches_port_io(&out_imm, false, 1, 0x80, 0));
    assert!(!matches_port_io(&out_imm, false, 1, 0x81, 0));
    // The immediate wins over DX.
    assert!(!matches_port_io(&out_imm, false, 1, 0x81, 0x81));

    let out_dx = one(&[0xee], 32);
    // Only DX (the low 16 bits of RDX) names the port.
    assert!(matches_port_io(
        &out_dx,
        false,
        1,
        0x3f8,
        0xffff_ffff_0000_03f8
    ));
    assert!(!matches_port_io(&out_dx, false, 1, 0x3f8, 0x3f9));
    assert!(!matches_port_io(&out_dx, false, 2, 0x3f8, 0x3f8), "size");
    assert!(
        !matches_port_io(&out_dx, true, 1, 0x3f8, 0x3f8),
        "direction"
    );

    let in_dx = one(&[0x66, 0xed], 32);
    assert!(matches_port_io(&in_dx, true, 2, 0xcfc, 0xcfc));
    assert!(!matches_port_io(&in_dx, true, 4, 0xcfc, 0xcfc));
    assert!(!matches_port_io(&in_dx, false, 2, 0xcfc, 0xcfc));

    let outs = one(&[0xf3, 0x6f], 16);
    assert!(matches_port_io(&outs, false, 2, 0x1f0, 0x1f0));
    assert!(!matches_port_io(&one(&[0x90], 32), false, 1, 0, 0));
}

// ---- register values -------------------------------------------------------

fn distinct_regs() -> kvm_regs {
    kvm_regs {
        rax: 0x1122_3344_5566_7788,
        rcx: 0x0102_0304_0506_0708,
        rdx: 0xa1a2_a3a4_a5a6_a7a8,
        rbx: 0xb1b2_b3b4_b5b6_b7b8,
        rsp: 0xc1c2_c3c4_c5c6_c7c8,
        rbp: 0xd1d2_d3d4_d5d6_d7d8,
        rsi: 0xe1e2_e3e4_e5e6_e7e8,
        rdi: 0xf1f2_f3f4_f5f6_f7f8,
        r8: 0x8888_8888_8888_8801,
        r9: 0x9999_9999_9999_9902,
        r10: 0x1010_1010_1010_1003,
        r15: 0x1515_1515_1515_1504,
        rip: 0xffff_8000_0000_1000,
        rflags: RFLAGS_FIXED,
        ..Default::default()
    }
}

#[test]
fn reg_value_of_each_register_class() {
    let r = distinct_regs();
    let s = long();
    let v = |reg| reg_value(reg, &r, &s, 64);
    // Views of RAX.
    assert_eq!(v(Register::AL), Some(0x88));
    assert_eq!(v(Register::AH), Some(0x77));
    assert_eq!(v(Register::AX), Some(0x7788));
    assert_eq!(v(Register::EAX), Some(0x5566_7788));
    assert_eq!(v(Register::RAX), Some(0x1122_3344_5566_7788));
    // The other legacy high bytes.
    assert_eq!(v(Register::CH), Some(0x07));
    assert_eq!(v(Register::DH), Some(0xa7));
    assert_eq!(v(Register::BH), Some(0xb7));
    assert_eq!(v(Register::BL), Some(0xb8));
    // REX byte registers are low bytes.
    assert_eq!(v(Register::SPL), Some(0xc8));
    assert_eq!(v(Register::BPL), Some(0xd8));
    assert_eq!(v(Register::SIL), Some(0xe8));
    assert_eq!(v(Register::DIL), Some(0xf8));
    assert_eq!(v(Register::SI), Some(0xe7e8));
    assert_eq!(v(Register::EDI), Some(0xf5f6_f7f8));
    assert_eq!(v(Register::ESP), Some(0xc5c6_c7c8));
    assert_eq!(v(Register::R8L), Some(0x01));
    assert_eq!(v(Register::R9W), Some(0x9902));
    assert_eq!(v(Register::R10D), Some(0x1010_1003));
    assert_eq!(v(Register::R15), Some(0x1515_1515_1515_1504));
    assert_eq!(v(Register::RIP), Some(0xffff_8000_0000_1000));
    assert_eq!(v(Register::None), Some(0));
    // Not general-purpose registers.
    assert_eq!(v(Register::XMM0), None);
    assert_eq!(v(Register::CR0), None);
}

#[test]
fn reg_value_of_segments_as_bases() {
    let r = distinct_regs();
    let mut s = long();
    s.es.base = 0x1000;
    s.cs.base = 0x2000;
    s.ss.base = 0x3000;
    s.ds.base = 0x4000;
    // 64-bit mode: ES, CS, SS and DS are based at zero; FS and GS keep
    // their bases.
    for reg in [Register::ES, Register::CS, Register::SS, Register::DS] {
        assert_eq!(reg_value(reg, &r, &s, 64), Some(0), "{reg:?}");
    }
    assert_eq!(reg_value(Register::FS, &r, &s, 64), Some(0x7000_0000));
    assert_eq!(reg_value(Register::GS, &r, &s, 64), Some(0x8000_0000));
    // Elsewhere every segment has its base.
    assert_eq!(reg_value(Register::ES, &r, &s, 32), Some(0x1000));
    assert_eq!(reg_value(Register::CS, &r, &s, 32), Some(0x2000));
    assert_eq!(reg_value(Register::SS, &r, &s, 16), Some(0x3000));
    assert_eq!(reg_value(Register::DS, &r, &s, 16), Some(0x4000));
}

// ---- stores: written GPAs and KVM's fragments -----------------------------

#[test]
fn first_fragment_of_whole_split_and_page_crossing_writes() {
    // The whole 4-byte write.
    assert!(first_fragment(0x1000, 4, 0x1000, 4));
    // A 16-byte write comes in 8-byte fragments; the first one counts.
    assert!(first_fragment(0x1000, 16, 0x1000, 8));
    assert!(!first_fragment(0x1000, 16, 0x1008, 8));
    // A 4-byte write at 0xffe: 2 bytes in the first page, then (if the
    // first page was RAM) 2 bytes at the start of the next.
    assert!(first_fragment(0xffe, 4, 0xffe, 2));
    assert!(first_fragment(0xffe, 4, 0x1000, 2));
    // A write that ends on the page boundary has no next-page fragment.
    assert!(!first_fragment(0xffc, 4, 0x1000, 4));
    // A 2-byte exit is not a whole 4-byte write (the `89 53 22` reading
    // of `66 89 53 22`), nor is a 4-byte exit a 2-byte write.
    assert!(!first_fragment(0x1022, 4, 0x1022, 2));
    assert!(!first_fragment(0x1022, 2, 0x1022, 4));
    assert!(!first_fragment(0x1022, 4, 0x1023, 3));
}

#[test]
fn written_gpas_of_plain_stores() {
    let mem = GuestMemory::anonymous(&[(0, 0x10_0000)]).unwrap();
    let mut r = regs();
    r.rbx = 0x1234;
    let mut s = prot(1);
    // mov [ebx], eax (89 /r)
    let store = one(&[0x89, 0x03], 32);
    assert_eq!(written_gpas(&store, &r, &s, 32, &mem), vec![(0x1234, 4)]);
    s.ds.base = 0x1000;
    assert_eq!(written_gpas(&store, &r, &s, 32, &mem), vec![(0x2234, 4)]);
    // A load writes no memory.
    assert!(written_gpas(&one(&[0x8b, 0x03], 32), &r, &s, 32, &mem).is_empty());
    // Real mode, DS=0x1000: mov [bx+si], ax with BX+SI = 0x10010 wraps to
    // offset 0x10 in the segment.
    let mut s = real(0);
    s.ds.base = 0x1_0000;
    let mut r = regs();
    r.rbx = 0xfff0;
    r.rsi = 0x20;
    let i = one(&[0x89, 0x00], 16);
    assert_eq!(written_gpas(&i, &r, &s, 16, &mem), vec![(0x1_0010, 2)]);
}

#[test]
fn written_gpas_of_rip_relative_and_fs_stores() {
    let mem = paged_mem();
    let mut r = regs();
    r.rip = 0x1000;
    // mov [rip+0x10], eax (89 05 disp32) at 0x1000, six bytes: the target
    // is next RIP + 0x10 = 0x1016.
    let i = decode(&[0x89, 0x05, 0x10, 0, 0, 0], 64, 0x1000).unwrap();
    assert_eq!(written_gpas(&i, &r, &long(), 64, &mem), vec![(0x1016, 4)]);
    // mov fs:[rbx], al (64 88 03) with an FS base below 4 GiB that the
    // page tables do not map: no GPA.
    r.rbx = 0x10;
    let i = one(&[0x64, 0x88, 0x03], 64);
    assert!(written_gpas(&i, &r, &long(), 64, &mem).is_empty());
    let mut s = long();
    s.fs.base = 0x5000;
    assert_eq!(written_gpas(&i, &r, &s, 64, &mem), vec![(0x5010, 1)]);
}

#[test]
fn written_gpas_of_pushes() {
    let mem = paged_mem();
    // push rax (50) at CPL3: RSP - 8, through the page tables (linear
    // 0x11000 is physical 0x6000).
    let mut r = regs();
    r.rsp = 0x11008;
    let push = one(&[0x50], 64);
    assert_eq!(
        written_gpas(&push, &r, &ia32e(1, 0, 3), 64, &mem),
        vec![(0x6000, 8)]
    );
    // push eax in 32-bit code.
    let mem = GuestMemory::anonymous(&[(0, 0x10_0000)]).unwrap();
    r.rsp = 0x2000;
    let push = one(&[0x50], 32);
    assert_eq!(
        written_gpas(&push, &r, &prot(1), 32, &mem),
        vec![(0x1ffc, 4)]
    );
    // push ax in real mode with SS:SP = 9000:0000 writes SS:FFFE.
    let mut s = real(0);
    s.ss.base = 0x9_0000;
    r.rsp = 0;
    let push = one(&[0x50], 16);
    assert_eq!(written_gpas(&push, &r, &s, 16, &mem), vec![(0x9_fffe, 2)]);
}

#[test]
fn written_gpas_of_string_stores() {
    let mem = GuestMemory::anonymous(&[(0, 0x10_0000)]).unwrap();
    let mut s = prot(1);
    s.ds.base = 0x2_0000;
    s.es.base = 0x1_0000;
    let mut r = regs();
    r.rsi = 0x100;
    r.rdi = 0x200;
    // movsd (A5): reads DS:ESI, writes ES:EDI.
    let movs = one(&[0xa5], 32);
    assert_eq!(written_gpas(&movs, &r, &s, 32, &mem), vec![(0x1_0200, 4)]);
    // A segment override applies to the source only.
    let movs = one(&[0x2e, 0xa5], 32);
    assert_eq!(written_gpas(&movs, &r, &s, 32, &mem), vec![(0x1_0200, 4)]);
    // rep stosb / rep stosq: one element per exit.
    let mem = paged_mem();
    let mut r = regs();
    r.rdi = 0x10ff0;
    r.rcx = 100;
    let stosb = one(&[0xf3, 0xaa], 64);
    assert_eq!(
        written_gpas(&stosb, &r, &long(), 64, &mem),
        vec![(0x9ff0, 1)]
    );
    let stosq = one(&[0xf3, 0x48, 0xab], 64);
    assert_eq!(
        written_gpas(&stosq, &r, &long(), 64, &mem),
        vec![(0x9ff0, 8)]
    );
}

#[test]
fn written_gpas_of_a_store_across_pages_apart_in_ram() {
    let mem = paged_mem();
    let mut r = regs();
    // mov [rbx], rax at linear 0x10ffc: four bytes at physical 0x9ffc and
    // four at 0x6000 (linear 0x11000).
    r.rbx = 0x10ffc;
    let i = one(&[0x48, 0x89, 0x03], 64);
    let gpas = written_gpas(&i, &r, &long(), 64, &mem);
    assert_eq!(gpas, vec![(0x9ffc, 4), (0x6000, 4)]);
    // KVM's exit for either part, if it is MMIO, is a first fragment.
    let covers = |gpa, len| gpas.iter().any(|&(g, n)| first_fragment(g, n, gpa, len));
    assert!(covers(0x9ffc, 4));
    assert!(covers(0x6000, 4));
    assert!(!covers(0xa000, 4));
    // Pages that are adjacent in RAM too give one span, as before.
    r.rbx = 0xffc;
    assert_eq!(written_gpas(&i, &r, &long(), 64, &mem), vec![(0xffc, 8)]);
    // Only the mapped part of a store into an unmapped page (linear page
    // 0x12) is guest memory.
    r.rbx = 0x11ffc;
    assert_eq!(written_gpas(&i, &r, &long(), 64, &mem), vec![(0x6ffc, 4)]);
    // Without paging, a 32-bit store across 0x1000 is one span.
    let flat = GuestMemory::anonymous(&[(0, 0x2000)]).unwrap();
    r.rbx = 0xffe;
    let i = one(&[0x89, 0x03], 32);
    assert_eq!(written_gpas(&i, &r, &prot(1), 32, &flat), vec![(0xffe, 4)]);
}

#[test]
fn written_gpas_tell_the_ambiguous_store_apart() {
    // 66 89 53 22 (2-byte store of DX) ends at RIP; so does 89 53 22 (a
    // 4-byte store of EDX one byte later).  KVM's 2-byte exit at
    // EBX+0x22 is the first fragment of the former only.
    let mem = GuestMemory::anonymous(&[(0, 0x10_0000)]).unwrap();
    let mut r = regs();
    r.rbx = 0x2000;
    let s = prot(1);
    let long_form = decode(&[0x66, 0x89, 0x53, 0x22], 32, 0x100).unwrap();
    let short_form = decode(&[0x89, 0x53, 0x22], 32, 0x101).unwrap();
    let covers = |i: &Instruction| {
        written_gpas(i, &r, &s, 32, &mem)
            .iter()
            .any(|&(g, n)| first_fragment(g, n, 0x2022, 2))
    };
    assert!(covers(&long_form));
    assert!(!covers(&short_form));
}

// ---- undoing what KVM's emulator already did -------------------------------

#[test]
fn undo_string_stores_by_address_size_and_direction() {
    // stosd (AB) in 32-bit code moved EDI by 4, up with DF=0, down with DF=1.
    let stosd = one(&[0xab], 32);
    let mut after = regs();
    after.rdi = 0x1004;
    assert_eq!(undo_side_effects(&stosd, &after, 32).rdi, 0x1000);
    after.rflags |= RFLAGS_DF;
    after.rdi = 0x0ffc;
    assert_eq!(undo_side_effects(&stosd, &after, 32).rdi, 0x1000);

    // stosd (66 AB) in 16-bit code steps DI only, wrapping at 64 KiB:
    // DI 0xfffe + 4 = 0x0002; the upper bits of RDI are not DI's.
    let stosd16 = one(&[0x66, 0xab], 16);
    let mut after = regs();
    after.rdi = 0x1234_0002;
    assert_eq!(undo_side_effects(&stosd16, &after, 16).rdi, 0x1234_fffe);

    // movsw with a 16-bit address size in 32-bit code (67 66 A5) steps
    // SI and DI: both 0xffff before, 0x0001 after.
    let movsw = one(&[0x67, 0x66, 0xa5], 32);
    let mut after = regs();
    after.rsi = 0x0001;
    after.rdi = 0x5_0001;
    let pre = undo_side_effects(&movsw, &after, 32);
    assert_eq!((pre.rsi, pre.rdi), (0xffff, 0x5_ffff));

    // rep movsq (F3 48 A5) stopped with 4 iterations left after one.
    let movsq = one(&[0xf3, 0x48, 0xa5], 64);
    let mut after = regs();
    after.rcx = 4;
    after.rsi = 0x2008;
    after.rdi = 0x3008;
    after.rip = 0x1234;
    let pre = undo_side_effects(&movsq, &after, 64);
    assert_eq!((pre.rcx, pre.rsi, pre.rdi), (5, 0x2000, 0x3000));
    assert_eq!(pre.rip, 0x1234, "RIP is the caller's");
    // rep stosb (F3 AA) with DF=1 moved RDI down.
    let mut after = regs();
    after.rflags |= RFLAGS_DF;
    after.rcx = 0;
    after.rdi = 0x1fff;
    let pre = undo_side_effects(&one(&[0xf3, 0xaa], 64), &after, 64);
    assert_eq!((pre.rcx, pre.rdi), (1, 0x2000));

    // rep stosb with a 32-bit address size in 64-bit code (67 F3 AA)
    // counts in ECX and steps EDI: EDI 0xffffffff + 1 = 0.
    let stosb32 = one(&[0x67, 0xf3, 0xaa], 64);
    let mut after = regs();
    after.rcx = 9;
    after.rdi = 0;
    let pre = undo_side_effects(&stosb32, &after, 64);
    assert_eq!((pre.rcx, pre.rdi), (10, 0xffff_ffff));
    // ... and in 16-bit code CX, keeping the bits above it.
    let mut after = regs();
    after.rcx = 0xabcd_0003;
    after.rdi = 0x10;
    let pre = undo_side_effects(&one(&[0xf3, 0xaa], 16), &after, 16);
    assert_eq!((pre.rcx, pre.rdi), (0xabcd_0004, 0xf));
}

#[test]
fn undo_stack_pointer_of_push_and_pop() {
    let mut after = regs();
    // push rax: RSP 0x2000 -> 0x1ff8.
    after.rsp = 0x1ff8;
    assert_eq!(undo_side_effects(&one(&[0x50], 64), &after, 64).rsp, 0x2000);
    // push ax (66 50) in 64-bit code moves RSP by 2.
    after.rsp = 0x1ffe;
    assert_eq!(
        undo_side_effects(&one(&[0x66, 0x50], 64), &after, 64).rsp,
        0x2000
    );
    // push eax in 32-bit code.
    after.rsp = 0xffc;
    assert_eq!(undo_side_effects(&one(&[0x50], 32), &after, 32).rsp, 0x1000);
    // pop qword [rbx] (8F /0) moved RSP up by 8.
    after.rsp = 0x2008;
    assert_eq!(
        undo_side_effects(&one(&[0x8f, 0x03], 64), &after, 64).rsp,
        0x2000
    );
    // push ax in real mode with SP=0 left SP=0xfffe: the stack wraps in
    // its 64 KiB segment, so SP was 0, not 0x10000.
    after.rsp = 0xfffe;
    assert_eq!(undo_side_effects(&one(&[0x50], 16), &after, 16).rsp, 0);
}

#[test]
fn undo_leaves_plain_stores_alone() {
    let after = distinct_regs();
    let pre = undo_side_effects(&one(&[0x89, 0x03], 64), &after, 64);
    assert_eq!(gprs(&pre), gprs(&after));
}

#[test]
fn string_count_by_address_size() {
    let mut r = regs();
    r.rcx = 0x1_0000_2345;
    // rep outsb (F3 6E): RCX in 64-bit code, ECX with 67, ECX in 32-bit
    // code, CX in 16-bit code and ECX there with 67.
    assert_eq!(string_count(&one(&[0xf3, 0x6e], 64), &r, 64), 0x1_0000_2345);
    assert_eq!(string_count(&one(&[0x67, 0xf3, 0x6e], 64), &r, 64), 0x2345);
    assert_eq!(string_count(&one(&[0xf3, 0x6e], 32), &r, 32), 0x2345);
    r.rcx = 0x1_2345;
    assert_eq!(string_count(&one(&[0xf3, 0x6e], 16), &r, 16), 0x2345);
    assert_eq!(
        string_count(&one(&[0x67, 0xf3, 0x6e], 16), &r, 16),
        0x1_2345
    );
}

#[test]
fn undo_string_out_moves_rsi_and_rcx_back() {
    // rep outsw (F3 66 6F) in 32-bit code handed 3 words over: ESI moved
    // by 6, ECX by 3.
    let outsw = one(&[0xf3, 0x66, 0x6f], 32);
    let mut after = regs();
    after.rsi = 0x106;
    after.rcx = 2;
    let pre = undo_string_out(&outsw, &after, 32, 3);
    assert_eq!((pre.rsi, pre.rcx), (0x100, 5));
    after.rflags |= RFLAGS_DF;
    after.rsi = 0xfa;
    assert_eq!(undo_string_out(&outsw, &after, 32, 3).rsi, 0x100);
    // outsb (6E) in 16-bit code: SI wraps at 64 KiB, no REP leaves CX.
    let mut after = regs();
    after.rsi = 0x5_0000;
    after.rcx = 7;
    let pre = undo_string_out(&one(&[0x6e], 16), &after, 16, 1);
    assert_eq!((pre.rsi, pre.rcx), (0x5_ffff, 7));
    // rep outsd (F3 6F) in 64-bit code, 4 dwords, count now 0.
    let mut after = regs();
    after.rsi = 0x1010;
    let pre = undo_string_out(&one(&[0xf3, 0x6f], 64), &after, 64, 4);
    assert_eq!((pre.rsi, pre.rcx), (0x1000, 4));
}

// ---- loads -----------------------------------------------------------------

#[test]
fn load_of_mov_movzx_movsx_movsxd() {
    let load = |bytes: &[u8], bits| {
        Load::of(&one(bytes, bits)).map(|l| (l.dest, l.size, l.kind, l.next_ip))
    };
    let next = |bytes: &[u8]| 0x1000 + bytes.len() as u64;
    assert_eq!(
        load(&[0x8b, 0x03], 32),
        Some((Register::EAX, 4, LoadKind::Mov, next(&[0; 2])))
    );
    assert_eq!(
        load(&[0x66, 0x8b, 0x03], 32).map(|l| (l.0, l.1)),
        Some((Register::AX, 2))
    );
    assert_eq!(
        load(&[0x8a, 0x23], 32).map(|l| (l.0, l.1)),
        Some((Register::AH, 1))
    );
    assert_eq!(
        load(&[0x48, 0x8b, 0x03], 64).map(|l| (l.0, l.1)),
        Some((Register::RAX, 8))
    );
    assert_eq!(
        load(&[0x44, 0x8b, 0x03], 64).map(|l| (l.0, l.1)),
        Some((Register::R8D, 4))
    );
    // mov eax, moffs32 (A1 id).
    assert_eq!(
        load(&[0xa1, 0x00, 0x10, 0x00, 0x00], 32),
        Some((Register::EAX, 4, LoadKind::Mov, next(&[0; 5])))
    );
    assert_eq!(
        load(&[0x0f, 0xb6, 0x03], 32).map(|l| (l.0, l.1, l.2)),
        Some((Register::EAX, 1, LoadKind::Zero))
    );
    assert_eq!(
        load(&[0x0f, 0xbf, 0x03], 32).map(|l| (l.0, l.1, l.2)),
        Some((Register::EAX, 2, LoadKind::Sign))
    );
    assert_eq!(
        load(&[0x48, 0x63, 0x03], 64).map(|l| (l.0, l.1, l.2)),
        Some((Register::RAX, 4, LoadKind::Sign))
    );
    // Not plain loads into a GPR: a store, ADD from memory, a register
    // move, an SSE load, a segment load.
    assert!(load(&[0x89, 0x03], 32).is_none());
    assert!(load(&[0x03, 0x03], 32).is_none());
    assert!(load(&[0x8b, 0xc3], 32).is_none());
    assert!(load(&[0x0f, 0x10, 0x03], 32).is_none());
    assert!(load(&[0x8e, 0x03], 32).is_none());
}

fn gprs(r: &kvm_regs) -> [u64; VCPU_REGS_NGPRS as usize] {
    let mut g = [0u64; VCPU_REGS_NGPRS as usize];
    super::super::regs::gprs_from_kvm(r, &mut g);
    g
}

/// What vmd writes back after emulating `load` at 0x1000 (whose length is
/// `len`): `pre` with `slot` set to `value` and RIP past the instruction.
fn want(pre: &kvm_regs, len: u64, slot: u32, value: u64) -> [u64; VCPU_REGS_NGPRS as usize] {
    let mut w = gprs(pre);
    w[slot as usize] = value;
    w[VCPU_REGS_RIP as usize] = 0x1000 + len;
    w
}

#[test]
fn load_data_for_full_and_zero_extended_destinations() {
    let mut pre = regs();
    pre.rip = 0x1000;
    pre.rax = u64::MAX;
    pre.rbx = 0x4000;
    // mov eax, [rbx]: a 32-bit destination clears RAX's upper half.
    let l = Load::of(&one(&[0x8b, 0x03], 64)).unwrap();
    let w = want(&pre, 2, VCPU_REGS_RAX, 0xdead_beef);
    assert_eq!(l.data_for(&pre, &w), Some(0xdead_beef));
    let w = want(&pre, 2, VCPU_REGS_RAX, 0x1111_1111_dead_beef);
    assert_eq!(l.data_for(&pre, &w), None, "upper half kept");
    // mov rax, [rbx]
    let l = Load::of(&one(&[0x48, 0x8b, 0x03], 64)).unwrap();
    let w = want(&pre, 3, VCPU_REGS_RAX, 0x0123_4567_89ab_cdef);
    assert_eq!(l.data_for(&pre, &w), Some(0x0123_4567_89ab_cdef));
    // movzx eax, byte [rbx]: only 0..=0xff can come out.
    let l = Load::of(&one(&[0x0f, 0xb6, 0x03], 64)).unwrap();
    assert_eq!(
        l.data_for(&pre, &want(&pre, 3, VCPU_REGS_RAX, 0xff)),
        Some(0xff)
    );
    assert_eq!(l.data_for(&pre, &want(&pre, 3, VCPU_REGS_RAX, 0x1ff)), None);
    // mov r8d, [rbx] (44 8B 03) and mov ebx, [rbx] (8B 1B): other slots
    // than RAX.
    let l = Load::of(&one(&[0x44, 0x8b, 0x03], 64)).unwrap();
    assert_eq!(
        l.data_for(&pre, &want(&pre, 3, VCPU_REGS_R8, 0x42)),
        Some(0x42)
    );
    assert_eq!(l.data_for(&pre, &want(&pre, 3, VCPU_REGS_RAX, 0x42)), None);
    let l = Load::of(&one(&[0x8b, 0x1b], 64)).unwrap();
    assert_eq!(
        l.data_for(&pre, &want(&pre, 2, VCPU_REGS_RBX, 0x77)),
        Some(0x77)
    );
}

#[test]
fn load_data_for_partial_registers_merge() {
    let mut pre = regs();
    pre.rip = 0x1000;
    pre.rax = 0x1122_3344_5566_7788;
    // mov ax, [rbx] keeps RAX's bits 16..63.
    let l = Load::of(&one(&[0x66, 0x8b, 0x03], 64)).unwrap();
    let w = want(&pre, 3, VCPU_REGS_RAX, 0x1122_3344_5566_abcd);
    assert_eq!(l.data_for(&pre, &w), Some(0xabcd));
    let w = want(&pre, 3, VCPU_REGS_RAX, 0x0000_0000_0000_abcd);
    assert_eq!(l.data_for(&pre, &w), None, "bits 16..63 changed");
    // mov ah, [rbx] (8A 23) replaces bits 8..15 only.
    let l = Load::of(&one(&[0x8a, 0x23], 64)).unwrap();
    let w = want(&pre, 2, VCPU_REGS_RAX, 0x1122_3344_5566_ab88);
    assert_eq!(l.data_for(&pre, &w), Some(0xab));
    let w = want(&pre, 2, VCPU_REGS_RAX, 0x1122_3344_5566_abcd);
    assert_eq!(l.data_for(&pre, &w), None, "AL changed");
    // mov al, [rbx] (8A 03).
    let l = Load::of(&one(&[0x8a, 0x03], 64)).unwrap();
    let w = want(&pre, 2, VCPU_REGS_RAX, 0x1122_3344_5566_77ee);
    assert_eq!(l.data_for(&pre, &w), Some(0xee));
}

#[test]
fn load_data_for_sign_extension() {
    let mut pre = regs();
    pre.rip = 0x1000;
    pre.rax = 0xaaaa_aaaa_aaaa_aaaa;
    // movsx eax, byte [rbx] (0F BE 03): 0x80 -> 0xffffff80, upper half 0.
    let l = Load::of(&one(&[0x0f, 0xbe, 0x03], 64)).unwrap();
    assert_eq!(
        l.data_for(&pre, &want(&pre, 3, VCPU_REGS_RAX, 0xffff_ff80)),
        Some(0x80)
    );
    assert_eq!(
        l.data_for(&pre, &want(&pre, 3, VCPU_REGS_RAX, 0x7f)),
        Some(0x7f)
    );
    assert_eq!(l.data_for(&pre, &want(&pre, 3, VCPU_REGS_RAX, 0x80)), None);
    // movsxd rax, dword [rbx] (48 63 03).
    let l = Load::of(&one(&[0x48, 0x63, 0x03], 64)).unwrap();
    let w = want(&pre, 3, VCPU_REGS_RAX, 0xffff_ffff_8000_0000);
    assert_eq!(l.data_for(&pre, &w), Some(0x8000_0000));
    let w = want(&pre, 3, VCPU_REGS_RAX, 0x0000_0000_8000_0000);
    assert_eq!(l.data_for(&pre, &w), None);
    // movsx ax, byte [rbx] (66 0F BE 03) merges into RAX's bits 16..63.
    let l = Load::of(&one(&[0x66, 0x0f, 0xbe, 0x03], 64)).unwrap();
    let w = want(&pre, 4, VCPU_REGS_RAX, 0xaaaa_aaaa_aaaa_ff80);
    assert_eq!(l.data_for(&pre, &w), Some(0x80));
    // movsx eax, word [rbx] in 32-bit code.
    let l = Load::of(&one(&[0x0f, 0xbf, 0x03], 32)).unwrap();
    let mut pre32 = pre;
    pre32.rax = 0;
    let w = want(&pre32, 3, VCPU_REGS_RAX, 0xffff_8001);
    assert_eq!(l.data_for(&pre32, &w), Some(0x8001));
}

#[test]
fn load_data_for_rejects_other_changes() {
    let mut pre = regs();
    pre.rip = 0x1000;
    pre.rbx = 0x4000;
    let l = Load::of(&one(&[0x8b, 0x03], 64)).unwrap();
    let good = want(&pre, 2, VCPU_REGS_RAX, 5);
    assert_eq!(l.data_for(&pre, &good), Some(5));
    // vmd moved another register, RIP somewhere else, or changed RFLAGS:
    // no data makes KVM's completion do that.
    let mut w = good;
    w[VCPU_REGS_RBX as usize] = 0x4004;
    assert_eq!(l.data_for(&pre, &w), None);
    let mut w = good;
    w[VCPU_REGS_RIP as usize] = 0x1000;
    assert_eq!(l.data_for(&pre, &w), None);
    let mut w = good;
    w[VCPU_REGS_RFLAGS as usize] |= 1;
    assert_eq!(l.data_for(&pre, &w), None);
}
