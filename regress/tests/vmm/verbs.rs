//! The verbs in the order of OpenBSD's regress vcpu.c (reference §8), and
//! a first IO/HLT round trip on the suite's standard layout.
use crate::{Test, Tests};
use iced_x86::code_asm::*;
use vmm_regress::*;
use vmm_sys::abi::*;
use vmm_sys::Vmm;

pub fn tests() -> Tests {
    vec![
        ("verbs::smoke_out_hlt", Test::Plain(smoke_out_hlt)),
        ("verbs::vcpu_c", Test::Plain(vcpu_c)),
    ]
}

fn smoke_out_hlt() -> Result<()> {
    let mut g = Guest::new("smoke")?;
    let p = Program::new(16, CODE, |a, m| {
        a.mov(al, 0x42)?;
        m.here(a, "out")?;
        a.out(0x61, al)?;
        m.here(a, "hlt")?;
        a.hlt()
    });
    g.load(&p, &flat16(CODE))?;
    let r = g.run()?;
    g.expect_out(r, 0x61, 1, 0x42, p.at("out"))?;
    check(g.exit.vei().vei_insn_len == 2, || {
        format!("insn len {}", g.exit.vei().vei_insn_len)
    })?;
    g.skip_io();
    let r = g.run()?;
    g.expect_hlt(r, p.at("hlt"))
}

const MIB: u64 = 1 << 20;
const PCKBC_AUX: u16 = 0x61;
const PCJR_DISKCTRL: u16 = 0xf0;

fn e(x: vmm_sys::VmmError) -> String {
    x.to_string()
}

/// Expects `r` to fail with `errno`.
fn expect_errno<T>(r: vmm_sys::Result<T>, errno: i32, what: &str) -> Result<()> {
    match r {
        Ok(_) => Err(format!("{what} succeeded, want errno {errno}")),
        Err(e) if e.errno == errno => Ok(()),
        Err(e) => Err(format!(
            "{what}: {e} (errno {}), want errno {errno}",
            e.errno
        )),
    }
}

fn vcpu_c() -> Result<()> {
    let vmm = Vmm::open().map_err(e)?;

    // 1. A VM named "regress": one vCPU, 64 MiB in a low range (0 – 640 KiB)
    //    and an upper range that ends at 4 GiB, so the reset vector is RAM.
    let low = 640 * 1024u64;
    let upper = 64 * MIB - low;
    let upper_gpa = (1u64 << 32) - upper;
    let mut vcp = vm_create_params {
        vcp_ncpus: 1,
        vcp_nmemranges: 2,
        ..Default::default()
    };
    vcp.vcp_memranges[0] = vm_mem_range {
        vmr_gpa: 0,
        vmr_size: low as usize,
        vmr_type: VM_MEM_RAM as i32,
        ..Default::default()
    };
    vcp.vcp_memranges[1] = vm_mem_range {
        vmr_gpa: upper_gpa,
        vmr_size: upper as usize,
        vmr_type: VM_MEM_RAM as i32,
        ..Default::default()
    };
    assert!(vcp.set_name("regress"));
    vmm.create(&mut vcp).map_err(e)?;
    let id = vcp.vcp_id;
    check(id != 0, || "VMM_IOC_CREATE returned vm id 0".into())?;
    for (i, r) in vcp.vcp_memranges[..2].iter().enumerate() {
        check(r.vmr_va != 0, || format!("range {i}: no vmr_va"))?;
    }
    let mem = vmm.guest_memory(id).map_err(e)?;

    // 2. VMM_IOC_SHAREMEM: a second mapping of the same memory.
    let mut vsp = vm_sharemem_params {
        vsp_vm_id: id,
        vsp_nmemranges: 2,
        ..Default::default()
    };
    vsp.vsp_memranges[..2].copy_from_slice(&vcp.vcp_memranges[..2]);
    vsp.vsp_memranges[0].vmr_va = 0;
    vsp.vsp_memranges[1].vmr_va = 0;
    let shared = vmm.sharemem(&mut vsp).map_err(e)?;
    for i in 0..2 {
        check(vsp.vsp_va[i] != 0, || format!("sharemem: vsp_va[{i}] is 0"))?;
        check(vsp.vsp_va[i] != vcp.vcp_memranges[i].vmr_va, || {
            format!("sharemem: vsp_va[{i}] is the creating mapping")
        })?;
    }
    // The IVT: the #GP vector written through the shared mapping, read
    // through the creating one (and so seen by the guest below); and the
    // other way round for the top of the upper range.
    let handler = 0x600u64;
    shared.write_u32(13 * 4, handler as u32).map_err(e)?;
    check(mem.read_u32(13 * 4).map_err(e)? == handler as u32, || {
        "write at gpa 0x34 through the sharemem mapping not seen by the creating mapping".into()
    })?;
    mem.write_u32(0xffff_fff0 - 16, 0x5eed_cafe).map_err(e)?;
    check(
        shared.read_u32(0xffff_fff0 - 16).map_err(e)? == 0x5eed_cafe,
        || "write through the creating mapping not seen through the sharemem mapping".into(),
    )?;

    // 3. VMM_IOC_INFO: by id and by name.
    let info = vmm.info().map_err(e)?;
    let by_id = info
        .iter()
        .find(|i| i.vir_id == id)
        .ok_or_else(|| format!("VMM_IOC_INFO does not list vm {id}"))?;
    let by_name = info
        .iter()
        .find(|i| c_name(&i.vir_name) == "regress")
        .ok_or_else(|| "VMM_IOC_INFO does not list a vm named regress".to_string())?;
    check(by_name.vir_id == id, || {
        format!("vm named regress has id {}, want {id}", by_name.vir_id)
    })?;
    check(by_id.vir_ncpus == 1, || {
        format!("vir_ncpus {}", by_id.vir_ncpus)
    })?;
    check(by_id.vir_memory_size == (64 * MIB) as usize, || {
        format!("vir_memory_size {}", by_id.vir_memory_size)
    })?;
    check(by_id.vir_creator_pid == std::process::id() as i32, || {
        format!("vir_creator_pid {}", by_id.vir_creator_pid)
    })?;
    check(by_id.vir_vcpu_state[0] == VCPU_STATE_STOPPED as u8, || {
        format!("vcpu state {}", by_id.vir_vcpu_state[0])
    })?;

    // 4. VMM_IOC_RESETCPU to vmd's flat16 state at the reset vector, with
    //    a stub there: IN from PCKBC_AUX, then HLT.  The #GP handler does
    //    an IN from PCJR_DISKCTRL.
    let stub = asm(16, 0xfff0, |a| {
        a.in_(al, PCKBC_AUX as i32)?;
        a.hlt()
    });
    mem.write(0xffff_fff0, &stub).map_err(e)?;
    let gp = asm(16, handler, |a| {
        a.in_(al, PCJR_DISKCTRL as i32)?;
        a.hlt()
    });
    mem.write(handler, &gp).map_err(e)?;
    let mut init = flat16(0xfff0);
    init.vrs_sregs[VCPU_REGS_CS as usize] = seg(0xf000, 0xffff_0000, 0xffff, 0x9b);
    init.vrs_gprs[VCPU_REGS_RSP as usize] = 0x800;
    init.vrs_gprs[VCPU_REGS_RDX as usize] = PCKBC_AUX as u64;
    vmm.resetcpu(&vm_resetcpu_params {
        vrp_vm_id: id,
        vrp_vcpu_id: 0,
        vrp_init_state: init,
    })
    .map_err(e)?;

    // 5. VMM_IOC_RUN: an I/O exit for the IN.
    let mut exit = Box::<vm_exit>::default();
    let mut vrp = vm_run_params {
        vrp_vm_id: id,
        ..Default::default()
    };
    let io = [VMX_EXIT_IO as u16, SVM_VMEXIT_IOIO as u16];
    vmm.run(&mut vrp, &mut exit).map_err(e)?;
    check(io.contains(&vrp.vrp_exit_reason), || {
        format!("exit reason 0x{:x}, want an I/O exit", vrp.vrp_exit_reason)
    })?;
    let vei = *exit.vei();
    check(vei.vei_port == PCKBC_AUX, || {
        format!("port 0x{:x}", vei.vei_port)
    })?;
    check(vei.vei_dir == VEI_DIR_IN as u8, || {
        format!("dir {}", vei.vei_dir)
    })?;
    check(vei.vei_size == 1, || format!("size {}", vei.vei_size))?;
    check(vei.vei_string == 0 && vei.vei_rep == 0, || {
        format!("string {} rep {}", vei.vei_string, vei.vei_rep)
    })?;
    check(vei.vei_encoding == 1, || {
        format!("encoding {}", vei.vei_encoding)
    })?;
    check(vei.vei_insn_len == 2, || {
        format!("insn len {}", vei.vei_insn_len)
    })?;
    let rip = exit.vrs.vrs_gprs[VCPU_REGS_RIP as usize];
    check(rip == 0xfff0, || format!("rip 0x{rip:x}, want 0xfff0"))?;
    check(
        exit.vrs.vrs_sregs[VCPU_REGS_CS as usize].vsi_base == 0xffff_0000,
        || "cs base".into(),
    )?;

    // 6. Advance RIP as vmd would, and inject #GP with an error code: the
    //    real-mode IVT sends the guest to the handler, which does an IN.
    exit.vrs.vrs_gprs[VCPU_REGS_RIP as usize] += vei.vei_insn_len as u64;
    exit.vei_mut().vei_data = 0xff;
    vrp.vrp_inject = vcpu_inject_event {
        vie_vector: 13,
        vie_errorcode: 0x1234,
        vie_type: VCPU_INJECT_EX as u8,
    };
    vmm.run(&mut vrp, &mut exit).map_err(e)?;
    vrp.vrp_inject = vcpu_inject_event::default();
    check(io.contains(&vrp.vrp_exit_reason), || {
        format!(
            "after #GP: exit reason 0x{:x} at rip 0x{:x}, want the handler's IN",
            vrp.vrp_exit_reason, exit.vrs.vrs_gprs[VCPU_REGS_RIP as usize]
        )
    })?;
    let vei = *exit.vei();
    check(
        vei.vei_port == PCJR_DISKCTRL && vei.vei_dir == VEI_DIR_IN as u8 && vei.vei_size == 1,
        || {
            format!(
                "after #GP: port 0x{:x} dir {} size {}",
                vei.vei_port, vei.vei_dir, vei.vei_size
            )
        },
    )?;
    let v = &exit.vrs;
    check(v.vrs_gprs[VCPU_REGS_RIP as usize] == handler, || {
        format!("handler rip 0x{:x}", v.vrs_gprs[VCPU_REGS_RIP as usize])
    })?;
    check(
        v.vrs_sregs[VCPU_REGS_CS as usize].vsi_sel == 0
            && v.vrs_sregs[VCPU_REGS_CS as usize].vsi_base == 0,
        || "handler runs with cs 0".into(),
    )?;
    // Real mode pushes FLAGS, CS, IP and no error code.
    check(v.vrs_gprs[VCPU_REGS_RSP as usize] == 0x7fa, || {
        format!("sp 0x{:x}, want 0x7fa", v.vrs_gprs[VCPU_REGS_RSP as usize])
    })?;
    let frame: Vec<u16> = (0..3)
        .map(|k| {
            let mut b = [0u8; 2];
            mem.read(0x7fa + 2 * k, &mut b)
                .map(|_| u16::from_le_bytes(b))
        })
        .collect::<std::result::Result<_, _>>()
        .map_err(e)?;
    check(frame == [0xfff2, 0xf000, 0x0002], || {
        format!("interrupt frame {frame:x?}, want [fff2, f000, 2]")
    })?;
    // AL got the IN's data.
    check(v.vrs_gprs[VCPU_REGS_RAX as usize] & 0xff == 0xff, || {
        format!("al 0x{:x}", v.vrs_gprs[VCPU_REGS_RAX as usize])
    })?;

    // 7. VMM_IOC_TERM, then the id is gone.
    vmm.terminate(id).map_err(e)?;
    expect_errno(vmm.run(&mut vrp, &mut exit), libc::ENOENT, "run after term")?;
    let mut rw = vm_rwregs_params {
        vrwp_vm_id: id,
        vrwp_mask: VM_RWREGS_ALL as u64,
        ..Default::default()
    };
    expect_errno(vmm.readregs(&mut rw), libc::ENOENT, "readregs after term")?;
    expect_errno(vmm.terminate(id), libc::ENOENT, "second terminate")?;
    let info = vmm.info().map_err(e)?;
    check(info.iter().all(|i| i.vir_id != id), || {
        "VMM_IOC_INFO still lists the terminated vm".into()
    })?;
    // The shared mapping outlives the VM, as on OpenBSD.
    check(
        shared.read_u32(13 * 4).map_err(e)? == handler as u32,
        || "sharemem mapping changed after terminate".into(),
    )
}
