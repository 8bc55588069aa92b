//! `make bench-exits`: the cost of one port-I/O exit and one MMIO exit
//! through the vmm(4) shim, against the same guest under a bare `KVM_RUN`
//! loop on kvm-ioctls, measured in one process.
//!
//! Both sides run the same 64-bit guest.  The shim side does what vmd does
//! per exit: read the exit record, decode the MMIO instruction from the
//! exit's instruction bytes or length, write a load's result into `vrs`,
//! advance RIP through `vrs`, and re-enter.  The raw side lets KVM complete
//! the instruction itself.  Rounds alternate between the two; the medians
//! are printed as `pio_us_shim=` … `mmio_ratio=`.
#[cfg(target_os = "linux")]
fn main() {
    linux::main()
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("bench-exits compares the KVM shim with raw KVM and runs on Linux only");
    std::process::exit(2);
}

#[cfg(target_os = "linux")]
mod linux {
    use iced_x86::code_asm::*;
    use iced_x86::{Decoder, DecoderOptions, OpKind};
    use kvm_bindings::{kvm_segment, kvm_userspace_memory_region};
    use kvm_ioctls::{Kvm, VcpuExit};
    use std::time::Instant;
    use vmm_sys::abi::*;
    use vmm_sys::{ExitFlavour, Vmm};

    const CODE: u64 = 0x1000;
    const PML4: u64 = 0x7_0000;
    const RAM: usize = 0x10_0000;
    const MMIO: u64 = 0xF000_0000;

    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        Pio,
        MmioStore,
        MmioLoad,
    }

    fn guest(kind: Kind, n: u32) -> Vec<u8> {
        let mut a = CodeAssembler::new(64).unwrap();
        let mut top = a.create_label();
        a.mov(ecx, n).unwrap();
        a.mov(rbx, MMIO).unwrap();
        a.set_label(&mut top).unwrap();
        match kind {
            Kind::Pio => a.out(0x80, al).unwrap(),
            Kind::MmioStore => a.mov(dword_ptr(rbx), eax).unwrap(),
            Kind::MmioLoad => a.mov(eax, dword_ptr(rbx)).unwrap(),
        }
        a.dec(ecx).unwrap();
        a.jnz(top).unwrap();
        a.hlt().unwrap();
        a.assemble(CODE).unwrap()
    }

    /// Identity map of the first 4 GiB with 2 MiB pages.
    fn page_tables(write: &mut dyn FnMut(u64, u64)) {
        let pdpt = PML4 + 0x1000;
        write(PML4, pdpt | 3);
        for i in 0..4u64 {
            let pd = PML4 + 0x2000 + i * 0x1000;
            write(pdpt + i * 8, pd | 3);
            for j in 0..512u64 {
                write(pd + j * 8, (i << 30) | (j << 21) | 0x83);
            }
        }
    }

    // ---- bare KVM ----

    struct Raw {
        _vm: kvm_ioctls::VmFd,
        vcpu: kvm_ioctls::VcpuFd,
        mem: *mut u8,
    }

    fn raw_setup(kvm: &Kvm, code: &[u8]) -> Raw {
        let vm = kvm.create_vm().unwrap();
        // SAFETY: anonymous private mapping of RAM bytes, checked below.
        let mem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                RAM,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(mem, libc::MAP_FAILED);
        let mem = mem as *mut u8;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: RAM as u64,
            userspace_addr: mem as u64,
        };
        // SAFETY: the mapping outlives the VM (it is never unmapped).
        unsafe { vm.set_user_memory_region(region).unwrap() };
        // SAFETY: all offsets written below lie inside the RAM mapping.
        let put = |gpa: u64, bytes: &[u8]| unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), mem.add(gpa as usize), bytes.len())
        };
        put(CODE, code);
        page_tables(&mut |gpa, v| put(gpa, &v.to_le_bytes()));
        let vcpu = vm.create_vcpu(0).unwrap();
        let mut s = vcpu.get_sregs().unwrap();
        let code64 = kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector: 0x18,
            type_: 11,
            present: 1,
            dpl: 0,
            db: 0,
            s: 1,
            l: 1,
            g: 1,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        let data = kvm_segment {
            selector: 0x10,
            type_: 3,
            l: 0,
            db: 1,
            ..code64
        };
        s.cs = code64;
        s.ds = data;
        s.es = data;
        s.ss = data;
        s.fs = data;
        s.gs = data;
        s.cr0 = 0x8000_0011;
        s.cr3 = PML4;
        s.cr4 = 0x20;
        s.efer = 0x500;
        vcpu.set_sregs(&s).unwrap();
        let mut r = vcpu.get_regs().unwrap();
        r.rip = CODE;
        r.rflags = 2;
        r.rsp = 0x8000;
        vcpu.set_regs(&r).unwrap();
        Raw { _vm: vm, vcpu, mem }
    }

    fn raw_run(kvm: &Kvm, kind: Kind, n: u32) -> f64 {
        let mut raw = raw_setup(kvm, &guest(kind, n));
        let _ = raw.mem;
        let t = Instant::now();
        let mut exits = 0u32;
        loop {
            match raw.vcpu.run().expect("KVM_RUN") {
                VcpuExit::IoOut(..) | VcpuExit::MmioWrite(..) => exits += 1,
                VcpuExit::MmioRead(_, d) => {
                    d.fill(0x5a);
                    exits += 1
                }
                VcpuExit::Hlt => break,
                e => panic!("raw loop: unexpected exit {e:?}"),
            }
        }
        assert_eq!(exits, n, "raw exits");
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    }

    // ---- through the shim ----

    fn shim_run(vmm: &Vmm, kind: Kind, n: u32) -> f64 {
        let mut vcp = vm_create_params {
            vcp_ncpus: 1,
            vcp_nmemranges: 2,
            ..Default::default()
        };
        vcp.vcp_memranges[0] = vm_mem_range {
            vmr_gpa: 0,
            vmr_va: 0,
            vmr_size: RAM,
            vmr_type: VM_MEM_RAM as i32,
        };
        vcp.vcp_memranges[1] = vm_mem_range {
            vmr_gpa: MMIO,
            vmr_va: 0,
            vmr_size: 0x10_0000,
            vmr_type: VM_MEM_MMIO as i32,
        };
        vcp.set_name("bench");
        vmm.create(&mut vcp).expect("VMM_IOC_CREATE");
        let id = vcp.vcp_id;
        let mem = vmm.guest_memory(id).unwrap();
        mem.write(CODE, &guest(kind, n)).unwrap();
        page_tables(&mut |gpa, v| mem.write_u64(gpa, v).unwrap());
        let mut st = vcpu_reg_state::default();
        st.vrs_gprs[VCPU_REGS_RIP as usize] = CODE;
        st.vrs_gprs[VCPU_REGS_RFLAGS as usize] = 2;
        st.vrs_gprs[VCPU_REGS_RSP as usize] = 0x8000;
        st.vrs_crs[VCPU_REGS_CR0 as usize] = 0x8000_0011;
        st.vrs_crs[VCPU_REGS_CR3 as usize] = PML4;
        st.vrs_crs[VCPU_REGS_CR4 as usize] = 0x20;
        st.vrs_crs[VCPU_REGS_XCR0 as usize] = 1;
        st.vrs_msrs[VCPU_REGS_EFER as usize] = 0x500;
        let data = vcpu_segment_info {
            vsi_sel: 0x10,
            vsi_limit: 0xffff_ffff,
            vsi_ar: 0xc093,
            vsi_base: 0,
        };
        st.vrs_sregs = [data; 8];
        st.vrs_sregs[VCPU_REGS_CS as usize] = vcpu_segment_info {
            vsi_sel: 0x18,
            vsi_ar: 0xa09b,
            ..data
        };
        st.vrs_sregs[VCPU_REGS_LDTR as usize] = vcpu_segment_info {
            vsi_sel: 0,
            vsi_ar: 0x82,
            ..data
        };
        st.vrs_sregs[VCPU_REGS_TR as usize] = vcpu_segment_info {
            vsi_sel: 0,
            vsi_ar: 0x8b,
            ..data
        };
        st.vrs_gdtr = vcpu_segment_info {
            vsi_limit: 0xffff,
            ..Default::default()
        };
        st.vrs_idtr = vcpu_segment_info {
            vsi_limit: 0xffff,
            ..Default::default()
        };
        vmm.resetcpu(&vm_resetcpu_params {
            vrp_vm_id: id,
            vrp_vcpu_id: 0,
            vrp_init_state: st,
        })
        .unwrap();
        let flavour = vmm.host_flavour();
        let mut vrp = vm_run_params {
            vrp_vm_id: id,
            ..Default::default()
        };
        let mut exit = Box::<vm_exit>::default();
        let t = Instant::now();
        let mut exits = 0u32;
        loop {
            vmm.run(&mut vrp, &mut exit).expect("VMM_IOC_RUN");
            let reason = vrp.vrp_exit_reason as u32;
            let rip = VCPU_REGS_RIP as usize;
            match reason {
                VMX_EXIT_IO | SVM_VMEXIT_IOIO => {
                    exit.vrs.vrs_gprs[rip] += exit.vei().vei_insn_len as u64;
                    exits += 1;
                }
                VMX_EXIT_EPT_VIOLATION | SVM_VMEXIT_NPF => {
                    emulate_mmio(&mut exit, flavour, &mem);
                    exits += 1;
                }
                VMX_EXIT_HLT | SVM_VMEXIT_HLT => break,
                VM_EXIT_NONE => {}
                r => panic!("shim loop: unexpected exit 0x{r:x}"),
            }
        }
        let us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        assert_eq!(exits, n, "shim exits");
        vmm.terminate(id).unwrap();
        us
    }

    /// What vmd's MMIO path does for a plain MOV: decode, complete a load
    /// into its destination register, advance RIP.
    fn emulate_mmio(exit: &mut vm_exit, flavour: ExitFlavour, mem: &vmm_sys::GuestMemory) {
        let rip = exit.vrs.vrs_gprs[VCPU_REGS_RIP as usize];
        let mut bytes = [0u8; 15];
        match flavour {
            ExitFlavour::Svm => bytes = exit.vee().vee_insn_bytes,
            ExitFlavour::Vmx => {
                let len = exit.vee().vee_insn_len as usize;
                mem.read(rip, &mut bytes[..len]).unwrap();
            }
        }
        let i = Decoder::with_ip(64, &bytes, rip, DecoderOptions::NONE).decode();
        assert!(!i.is_invalid(), "undecodable MMIO instruction");
        if i.op0_kind() == OpKind::Register && i.op1_kind() == OpKind::Memory {
            let idx = i.op0_register().full_register().number(); // RAX=0 ... encoding order
            exit.vrs.vrs_gprs[idx] = 0x5a5a_5a5a;
        }
        exit.vrs.vrs_gprs[VCPU_REGS_RIP as usize] = rip + i.len() as u64;
    }

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    }

    pub fn main() {
        let n: u32 = std::env::var("BENCH_EXITS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20_000);
        let rounds: usize = std::env::var("BENCH_ROUNDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5);
        let kvm = match Kvm::new() {
            Ok(k) => k,
            Err(e) => {
                eprintln!("bench-exits: skipped: needs /dev/kvm ({e})");
                std::process::exit(77);
            }
        };
        let vmm = Vmm::open().expect("open the vmm(4) shim");
        let mut report = Vec::new();
        for (name, kinds) in [
            ("pio", vec![Kind::Pio]),
            ("mmio", vec![Kind::MmioStore, Kind::MmioLoad]),
        ] {
            let (mut shim, mut raw) = (Vec::new(), Vec::new());
            // warm up both paths once
            for &k in &kinds {
                raw_run(&kvm, k, 1000);
                shim_run(&vmm, k, 1000);
            }
            for _ in 0..rounds {
                let mut s = 0.0;
                let mut r = 0.0;
                for &k in &kinds {
                    r += raw_run(&kvm, k, n);
                    s += shim_run(&vmm, k, n);
                }
                shim.push(s / kinds.len() as f64);
                raw.push(r / kinds.len() as f64);
            }
            let (s, r) = (median(shim), median(raw));
            report.push(format!("{name}_us_shim={s:.3}"));
            report.push(format!("{name}_us_raw={r:.3}"));
            report.push(format!("{name}_ratio={:.3}", s / r));
        }
        for line in report {
            println!("{line}");
        }
    }
}
