//! Bad parameters get vmm(4)'s errno, leave nothing behind, and the
//! handle keeps working: a VM created and run afterwards with the same
//! handle behaves.
use crate::{Test, Tests};
use iced_x86::code_asm::*;
use std::sync::Arc;
use vmm_regress::*;
use vmm_sys::abi::*;
use vmm_sys::{Vmm, VmmError};

pub fn tests() -> Tests {
    vec![
        ("params::create", Test::Plain(create)),
        ("params::unknown_vm", Test::Plain(unknown_vm)),
        ("params::unknown_vcpu", Test::Plain(unknown_vcpu)),
        ("params::terminate_twice", Test::Plain(terminate_twice)),
        ("params::sharemem", Test::Plain(sharemem)),
    ]
}

const GIB: u64 = 1 << 30;

fn expect_errno<T>(r: std::result::Result<T, VmmError>, errno: i32, what: &str) -> Result<()> {
    match r {
        Ok(_) => Err(format!("{what}: succeeded, want errno {errno}")),
        Err(e) if e.errno == errno => Ok(()),
        Err(e) => Err(format!(
            "{what}: {e} (errno {}), want errno {errno}",
            e.errno
        )),
    }
}

fn ranges(list: &[(u64, u64, u32)]) -> vm_create_params {
    let mut vcp = vm_create_params {
        vcp_ncpus: 1,
        vcp_nmemranges: list.len(),
        ..Default::default()
    };
    for (d, &(gpa, size, ty)) in vcp.vcp_memranges.iter_mut().zip(list) {
        *d = vm_mem_range {
            vmr_gpa: gpa,
            vmr_size: size as usize,
            vmr_type: ty as i32,
            ..Default::default()
        };
    }
    assert!(vcp.set_name("bad"));
    vcp
}

/// Creates and runs a small guest with `vmm`: the handle still works.
fn still_works(vmm: &Arc<Vmm>, name: &str) -> Result<()> {
    let mut g = Guest::with_vmm(vmm.clone(), name)?;
    let p = Program::new(16, CODE, |a, m| {
        a.mov(al, 0x5a)?;
        m.here(a, "out")?;
        a.out(0x61, al)?;
        m.here(a, "hlt")?;
        a.hlt()
    });
    g.load(&p, &flat16(CODE))?;
    let r = g.run()?;
    g.expect_out(r, 0x61, 1, 0x5a, p.at("out"))?;
    g.skip_io();
    let r = g.run()?;
    g.expect_hlt(r, p.at("hlt"))
}

fn vm_ids(vmm: &Vmm) -> Result<Vec<u32>> {
    Ok(vmm
        .info()
        .map_err(|e| e.to_string())?
        .iter()
        .map(|i| i.vir_id)
        .collect())
}

fn create() -> Result<()> {
    let vmm = Arc::new(Vmm::open().map_err(|e| e.to_string())?);
    let ram = VM_MEM_RAM;
    let page = 0x1000;
    let mut cases: Vec<(&str, vm_create_params)> = vec![
        (
            "overlapping ranges",
            ranges(&[(0, 0x10000, ram), (0x8000, 0x10000, ram)]),
        ),
        (
            "non-ascending ranges",
            ranges(&[(0x10_0000, 0x10000, ram), (0, 0x10000, ram)]),
        ),
        ("unaligned gpa", ranges(&[(0x800, 0x10000, ram)])),
        ("unaligned size", ranges(&[(0, 0x1800, ram)])),
        (
            "empty range",
            ranges(&[(0, 0x10000, ram), (0x20000, 0, ram)]),
        ),
        ("zero ranges", ranges(&[])),
        ("range over 128 GiB", ranges(&[(0, 129 * GIB, ram)])),
        (
            "range ending above 128 GiB",
            ranges(&[(0, page, ram), (127 * GIB, 2 * GIB, ram)]),
        ),
        (
            "range starting at 128 GiB",
            ranges(&[(0, page, ram), (128 * GIB, page, ram)]),
        ),
        ("unknown range type", ranges(&[(0, 0x10000, 7)])),
    ];
    // 17 ranges: more than VMM_MAX_MEM_RANGES.
    let mut many = ranges(&[(0, page, ram)]);
    for (k, r) in many.vcp_memranges.iter_mut().enumerate() {
        r.vmr_gpa = k as u64 * 2 * page;
        r.vmr_size = page as usize;
    }
    many.vcp_nmemranges = VMM_MAX_MEM_RANGES as usize + 1;
    cases.push(("17 ranges", many));
    let mut noname = ranges(&[(0, 0x10000, ram)]);
    noname.vcp_name = [b'x' as _; VMM_MAX_NAME_LEN as usize];
    cases.push(("64-byte name without NUL", noname));
    let mut nocpu = ranges(&[(0, 0x10000, ram)]);
    nocpu.vcp_ncpus = 0;
    cases.push(("0 vcpus", nocpu));
    let mut toomany = ranges(&[(0, 0x10000, ram)]);
    toomany.vcp_ncpus = VMM_MAX_VCPUS_PER_VM as usize + 1;
    cases.push(("65 vcpus", toomany));

    let before = vm_ids(&vmm)?;
    for (what, mut vcp) in cases {
        expect_errno(vmm.create(&mut vcp), libc::EINVAL, what)?;
    }
    // The limits themselves are accepted: 16 ranges, a 63-byte name, a
    // range ending exactly at 128 GiB (MMIO, so nothing is allocated).
    let mut ok = ranges(&[(0, 0x1000, ram)]);
    for (k, r) in ok.vcp_memranges.iter_mut().enumerate() {
        r.vmr_gpa = k as u64 * 2 * page;
        r.vmr_size = page as usize;
        r.vmr_type = ram as i32;
    }
    ok.vcp_memranges[15] = vm_mem_range {
        vmr_gpa: 127 * GIB,
        vmr_size: GIB as usize,
        vmr_type: VM_MEM_MMIO as i32,
        ..Default::default()
    };
    ok.vcp_nmemranges = VMM_MAX_MEM_RANGES as usize;
    let long_name = "n".repeat(VMM_MAX_NAME_LEN as usize - 1);
    assert!(ok.set_name(&long_name));
    vmm.create(&mut ok)
        .map_err(|e| format!("16 ranges up to 128 GiB, 63-byte name: {e}"))?;
    let info = vmm.info().map_err(|e| e.to_string())?;
    let vm = info
        .iter()
        .find(|i| i.vir_id == ok.vcp_id)
        .ok_or("the valid vm is not listed")?;
    check(c_name(&vm.vir_name) == long_name, || {
        format!("name {:?}", c_name(&vm.vir_name))
    })?;
    check(vm.vir_memory_size == 15 * page as usize, || {
        format!("vir_memory_size 0x{:x}, want 0xf000", vm.vir_memory_size)
    })?;
    vmm.terminate(ok.vcp_id).map_err(|e| e.to_string())?;
    let after = vm_ids(&vmm)?;
    check(before == after, || {
        format!("vms before the bad creates {before:?}, after {after:?}")
    })?;
    still_works(&vmm, "after-bad-create")
}

fn unknown_vm() -> Result<()> {
    let vmm = Arc::new(Vmm::open().map_err(|e| e.to_string())?);
    // A live VM on the same handle, so that the lookups have something to
    // miss.
    let live = Guest::with_vmm(vmm.clone(), "live")?;
    for id in [0u32, live.id + 1000, u32::MAX] {
        let mut exit = Box::<vm_exit>::default();
        let mut vrp = vm_run_params {
            vrp_vm_id: id,
            ..Default::default()
        };
        let w = |what: &str| format!("{what} of vm {id}");
        expect_errno(vmm.run(&mut vrp, &mut exit), libc::ENOENT, &w("run"))?;
        let reset = vm_resetcpu_params {
            vrp_vm_id: id,
            vrp_vcpu_id: 0,
            vrp_init_state: flat16(CODE),
        };
        expect_errno(vmm.resetcpu(&reset), libc::ENOENT, &w("resetcpu"))?;
        let mut rw = vm_rwregs_params {
            vrwp_vm_id: id,
            vrwp_mask: VM_RWREGS_ALL as u64,
            ..Default::default()
        };
        expect_errno(vmm.readregs(&mut rw), libc::ENOENT, &w("readregs"))?;
        expect_errno(vmm.writeregs(&rw), libc::ENOENT, &w("writeregs"))?;
        expect_errno(vmm.terminate(id), libc::ENOENT, &w("terminate"))?;
        let vip = vm_intr_params {
            vip_vm_id: id,
            vip_vcpu_id: 0,
            vip_intr: 1,
        };
        expect_errno(vmm.intr(&vip), libc::ENOENT, &w("intr"))?;
        let mut vpp = vm_rwvmparams_params {
            vpp_vm_id: id,
            vpp_mask: VM_RWVMPARAMS_ALL,
            ..Default::default()
        };
        expect_errno(vmm.readvmparams(&mut vpp), libc::ENOENT, &w("readvmparams"))?;
        let mut vsp = vm_sharemem_params {
            vsp_vm_id: id,
            ..Default::default()
        };
        expect_errno(vmm.sharemem(&mut vsp), libc::ENOENT, &w("sharemem"))?;
    }
    drop(live);
    still_works(&vmm, "after-unknown-vm")
}

fn unknown_vcpu() -> Result<()> {
    let vmm = Arc::new(Vmm::open().map_err(|e| e.to_string())?);
    let g = Guest::with_vmm(vmm.clone(), "onecpu")?;
    for vcpu in [1u32, 63, 64, u32::MAX] {
        let w = |what: &str| format!("{what} of vcpu {vcpu}");
        let mut exit = Box::<vm_exit>::default();
        let mut vrp = vm_run_params {
            vrp_vm_id: g.id,
            vrp_vcpu_id: vcpu,
            ..Default::default()
        };
        expect_errno(vmm.run(&mut vrp, &mut exit), libc::ENOENT, &w("run"))?;
        let reset = vm_resetcpu_params {
            vrp_vm_id: g.id,
            vrp_vcpu_id: vcpu,
            vrp_init_state: flat16(CODE),
        };
        expect_errno(vmm.resetcpu(&reset), libc::ENOENT, &w("resetcpu"))?;
        let mut rw = vm_rwregs_params {
            vrwp_vm_id: g.id,
            vrwp_vcpu_id: vcpu,
            vrwp_mask: VM_RWREGS_ALL as u64,
            ..Default::default()
        };
        expect_errno(vmm.readregs(&mut rw), libc::ENOENT, &w("readregs"))?;
        expect_errno(vmm.writeregs(&rw), libc::ENOENT, &w("writeregs"))?;
        let vip = vm_intr_params {
            vip_vm_id: g.id,
            vip_vcpu_id: vcpu,
            vip_intr: 1,
        };
        expect_errno(vmm.intr(&vip), libc::ENOENT, &w("intr"))?;
    }
    // vCPU 0 of the same VM is fine.
    drop(g);
    still_works(&vmm, "after-unknown-vcpu")
}

fn terminate_twice() -> Result<()> {
    let vmm = Arc::new(Vmm::open().map_err(|e| e.to_string())?);
    let mut vcp = standard_params("twice");
    vmm.create(&mut vcp).map_err(|e| e.to_string())?;
    vmm.terminate(vcp.vcp_id).map_err(|e| e.to_string())?;
    expect_errno(vmm.terminate(vcp.vcp_id), libc::ENOENT, "second terminate")?;
    // Ids are not reused.
    let mut again = standard_params("twice");
    vmm.create(&mut again).map_err(|e| e.to_string())?;
    check(again.vcp_id > vcp.vcp_id, || {
        format!("new vm id {} after {}", again.vcp_id, vcp.vcp_id)
    })?;
    vmm.terminate(again.vcp_id).map_err(|e| e.to_string())?;
    still_works(&vmm, "after-terminate-twice")
}

fn sharemem() -> Result<()> {
    let vmm = Arc::new(Vmm::open().map_err(|e| e.to_string())?);
    let g = Guest::with_vmm(vmm.clone(), "share")?;
    let vcp = standard_params("share");
    let n = vcp.vcp_nmemranges;
    let good = || {
        let mut vsp = vm_sharemem_params {
            vsp_vm_id: g.id,
            vsp_nmemranges: n,
            ..Default::default()
        };
        vsp.vsp_memranges[..n].copy_from_slice(&vcp.vcp_memranges[..n]);
        vsp
    };
    let mut cases: Vec<(&str, vm_sharemem_params)> = Vec::new();
    let mut v = good();
    v.vsp_nmemranges = n - 1;
    cases.push(("one range too few", v));
    let mut v = good();
    v.vsp_nmemranges = n + 1;
    cases.push(("one range too many", v));
    let mut v = good();
    v.vsp_nmemranges = 0;
    cases.push(("no ranges", v));
    let mut v = good();
    v.vsp_memranges[1].vmr_size += 0x1000;
    cases.push(("a range of another size", v));
    let mut v = good();
    v.vsp_memranges[1].vmr_gpa += 0x1000;
    cases.push(("a range at another gpa", v));
    let mut v = good();
    v.vsp_memranges[3].vmr_type = VM_MEM_RAM as i32;
    cases.push(("a range of another type", v));
    for (what, mut vsp) in cases {
        expect_errno(vmm.sharemem(&mut vsp), libc::EINVAL, what)?;
    }
    // The matching ranges work, and the mapping is the VM's memory.
    let mut vsp = good();
    let shared = vmm.sharemem(&mut vsp).map_err(|e| e.to_string())?;
    g.write_u64(HIGH_RAM + 0x100, 0x0123_4567_89ab_cdef)?;
    check(
        shared
            .read_u64(HIGH_RAM + 0x100)
            .map_err(|e| e.to_string())?
            == 0x0123_4567_89ab_cdef,
        || "sharemem mapping does not show the guest's memory".into(),
    )?;
    drop(g);
    still_works(&vmm, "after-bad-sharemem")
}
