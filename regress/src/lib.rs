//! Support for the vmm(4) regress suite: a VM with vmd's memory layout,
//! register states for real, protected and long mode, guests assembled with
//! iced-x86, and a way to report tests that need `/dev/kvm` or `/dev/vmm`
//! as ignored where the host lacks them.
use std::sync::Arc;
use vmm_sys::abi::*;
use vmm_sys::{GuestMemory, Vmm, VmmError};

pub type Result<T> = std::result::Result<T, String>;

/// Low RAM, as vmd's era-B memory map (0 – 640 KiB).
pub const LOW_RAM_END: u64 = 0xA_0000;
/// RAM above 1 MiB.
pub const HIGH_RAM: u64 = 0x10_0000;
pub const HIGH_RAM_SIZE: u64 = 0x80_0000;
/// An MMIO range, unbacked: every access exits.
pub const MMIO_BASE: u64 = 0xF000_0000;
pub const MMIO_SIZE: u64 = 0x10_0000;
/// The 2 MiB BIOS area that ends at 4 GiB (backed, RESERVED).
pub const BIOS_BASE: u64 = 0xFFE0_0000;

/// Where the tests put things in guest memory.
pub const CODE: u64 = 0x1000;
pub const GDT: u64 = 0x500;
pub const STACK_TOP: u64 = 0x9_0000;
pub const PML4: u64 = 0x7_0000;

/// Why a test that needs the hypervisor cannot run here, if it cannot.
pub fn missing_hypervisor() -> Option<String> {
    if cfg!(target_os = "linux") {
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
        {
            Ok(_) => None,
            Err(e) => Some(format!("needs read-write /dev/kvm ({e})")),
        }
    } else {
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/vmm")
        {
            Ok(_) => None,
            Err(e) => Some(format!("needs root and /dev/vmm ({e})")),
        }
    }
}

fn range(gpa: u64, size: u64, ty: u32) -> vm_mem_range {
    vm_mem_range {
        vmr_gpa: gpa,
        vmr_va: 0,
        vmr_size: size as usize,
        vmr_type: ty as i32,
    }
}

/// Create parameters with vmd's layout: low RAM, RAM at 1 MiB, an MMIO
/// window and the BIOS area below 4 GiB.
pub fn standard_params(name: &str) -> vm_create_params {
    let mut vcp = vm_create_params {
        vcp_ncpus: 1,
        ..Default::default()
    };
    let ranges = [
        range(0, LOW_RAM_END, VM_MEM_RAM),
        range(HIGH_RAM, HIGH_RAM_SIZE, VM_MEM_RAM),
        range(MMIO_BASE, MMIO_SIZE, VM_MEM_MMIO),
        range(BIOS_BASE, 0x1_0000_0000 - BIOS_BASE, VM_MEM_RESERVED),
    ];
    vcp.vcp_memranges[..ranges.len()].copy_from_slice(&ranges);
    vcp.vcp_nmemranges = ranges.len();
    assert!(vcp.set_name(name));
    vcp
}

pub fn seg(sel: u16, base: u64, limit: u32, ar: u32) -> vcpu_segment_info {
    vcpu_segment_info {
        vsi_sel: sel,
        vsi_limit: limit,
        vsi_ar: ar,
        vsi_base: base,
    }
}

/// Real mode with CS:IP = 0:`ip` (vmd's "flat16" with a different CS).
pub fn flat16(ip: u64) -> vcpu_reg_state {
    let mut r = vcpu_reg_state::default();
    r.vrs_gprs[VCPU_REGS_RIP as usize] = ip;
    r.vrs_gprs[VCPU_REGS_RFLAGS as usize] = 0x2;
    r.vrs_gprs[VCPU_REGS_RSP as usize] = 0x8000;
    r.vrs_crs[VCPU_REGS_CR0 as usize] = 0x6000_0010;
    r.vrs_crs[VCPU_REGS_XCR0 as usize] = 1;
    let data = seg(0, 0, 0xffff, 0x0093);
    r.vrs_sregs = [data; 8];
    r.vrs_sregs[VCPU_REGS_CS as usize] = seg(0, 0, 0xffff, 0x009b);
    r.vrs_sregs[VCPU_REGS_LDTR as usize] = seg(0, 0, 0xffff, 0x0082);
    r.vrs_sregs[VCPU_REGS_TR as usize] = seg(0, 0, 0xffff, 0x008b);
    r.vrs_gdtr = seg(0, 0, 0xffff, 0);
    r.vrs_idtr = seg(0, 0, 0x3ff, 0);
    r.vrs_drs[VCPU_REGS_DR6 as usize] = 0xffff_0ff0;
    r.vrs_drs[VCPU_REGS_DR7 as usize] = 0x400;
    r
}

/// GDT selectors written by [`Guest::write_gdt`].
pub const SEL_CODE32: u16 = 0x08;
pub const SEL_DATA: u16 = 0x10;
pub const SEL_CODE64: u16 = 0x18;
pub const SEL_CODE16: u16 = 0x20;

/// 32-bit protected mode, flat segments, no paging.
pub fn prot32(ip: u64) -> vcpu_reg_state {
    let mut r = flat16(ip);
    r.vrs_crs[VCPU_REGS_CR0 as usize] = 0x11;
    r.vrs_gprs[VCPU_REGS_RSP as usize] = STACK_TOP;
    let data = seg(SEL_DATA, 0, 0xffff_ffff, 0xc093);
    for i in [
        VCPU_REGS_ES,
        VCPU_REGS_SS,
        VCPU_REGS_DS,
        VCPU_REGS_FS,
        VCPU_REGS_GS,
    ] {
        r.vrs_sregs[i as usize] = data;
    }
    r.vrs_sregs[VCPU_REGS_CS as usize] = seg(SEL_CODE32, 0, 0xffff_ffff, 0xc09b);
    r.vrs_gdtr = seg(0, GDT, 0x2f, 0);
    r
}

/// 16-bit protected mode (a 16-bit code segment, flat 32-bit data).
pub fn prot16(ip: u64) -> vcpu_reg_state {
    let mut r = prot32(ip);
    r.vrs_sregs[VCPU_REGS_CS as usize] = seg(SEL_CODE16, 0, 0xffff, 0x009b);
    r
}

/// Long mode, identity map of the first 4 GiB with 2 MiB pages.
pub fn long64(ip: u64) -> vcpu_reg_state {
    let mut r = prot32(ip);
    r.vrs_crs[VCPU_REGS_CR0 as usize] = 0x8000_0011;
    r.vrs_crs[VCPU_REGS_CR3 as usize] = PML4;
    r.vrs_crs[VCPU_REGS_CR4 as usize] = 0x20;
    r.vrs_msrs[VCPU_REGS_EFER as usize] = 0x500;
    r.vrs_sregs[VCPU_REGS_CS as usize] = seg(SEL_CODE64, 0, 0xffff_ffff, 0xa09b);
    r
}

/// Compatibility mode: long mode paging, a 32-bit code segment.
pub fn compat32(ip: u64) -> vcpu_reg_state {
    let mut r = long64(ip);
    r.vrs_sregs[VCPU_REGS_CS as usize] = seg(SEL_CODE32, 0, 0xffff_ffff, 0xc09b);
    r
}

/// One VM with one vCPU, created through the vmm(4) handle.
pub struct Guest {
    pub vmm: Arc<Vmm>,
    pub id: u32,
    pub mem: GuestMemory,
    pub exit: Box<vm_exit>,
    pub vrp: vm_run_params,
}

impl Guest {
    pub fn new(name: &str) -> Result<Guest> {
        let vmm = Arc::new(Vmm::open().map_err(|e| e.to_string())?);
        Self::with_vmm(vmm, name)
    }

    pub fn with_vmm(vmm: Arc<Vmm>, name: &str) -> Result<Guest> {
        let mut vcp = standard_params(name);
        vmm.create(&mut vcp).map_err(|e| e.to_string())?;
        let id = vcp.vcp_id;
        let mem = vmm.guest_memory(id).map_err(|e| e.to_string())?;
        let g = Guest {
            vmm,
            id,
            mem,
            exit: Box::default(),
            vrp: vm_run_params {
                vrp_vm_id: id,
                ..Default::default()
            },
        };
        g.write_gdt()?;
        g.write_page_tables()?;
        Ok(g)
    }

    pub fn write(&self, gpa: u64, bytes: &[u8]) -> Result<()> {
        self.mem.write(gpa, bytes).map_err(|e| e.to_string())
    }

    fn write_gdt(&self) -> Result<()> {
        let gdt: [u64; 6] = [
            0,
            0x00cf_9b00_0000_ffff, // 0x08 code32
            0x00cf_9300_0000_ffff, // 0x10 data
            0x00af_9b00_0000_ffff, // 0x18 code64
            0x0000_9b00_0000_ffff, // 0x20 code16
            0,
        ];
        let bytes: Vec<u8> = gdt.iter().flat_map(|d| d.to_le_bytes()).collect();
        self.write(GDT, &bytes)
    }

    fn write_page_tables(&self) -> Result<()> {
        let pdpt = PML4 + 0x1000;
        self.mem
            .write_u64(PML4, pdpt | 0x3)
            .map_err(|e| e.to_string())?;
        for i in 0..4u64 {
            let pd = PML4 + 0x2000 + i * 0x1000;
            self.mem
                .write_u64(pdpt + i * 8, pd | 0x3)
                .map_err(|e| e.to_string())?;
            for j in 0..512u64 {
                let page = (i << 30) | (j << 21);
                self.mem
                    .write_u64(pd + j * 8, page | 0x83)
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    pub fn reset(&self, state: &vcpu_reg_state) -> Result<()> {
        let p = vm_resetcpu_params {
            vrp_vm_id: self.id,
            vrp_vcpu_id: 0,
            vrp_init_state: *state,
        };
        self.vmm.resetcpu(&p).map_err(|e| e.to_string())
    }

    /// Loads `code` at [`CODE`] and resets the vCPU to `state` (whose RIP
    /// should be CODE).
    pub fn boot(&self, code: &[u8], state: &vcpu_reg_state) -> Result<()> {
        self.write(CODE, code)?;
        self.reset(state)
    }

    /// One VMM_IOC_RUN; returns the exit reason.  The injection field is
    /// cleared afterwards, as vmd does.
    pub fn run_once(&mut self) -> std::result::Result<u16, VmmError> {
        let r = self.vmm.run(&mut self.vrp, &mut self.exit);
        self.vrp.vrp_inject = vcpu_inject_event::default();
        r.map(|_| self.vrp.vrp_exit_reason)
    }

    /// Runs until an exit other than VM_EXIT_NONE.
    pub fn run(&mut self) -> Result<u16> {
        for _ in 0..1000 {
            match self.run_once() {
                Ok(r) if r == VM_EXIT_NONE as u16 => continue,
                Ok(r) => return Ok(r),
                Err(e) => return Err(e.to_string()),
            }
        }
        Err("1000 VM_EXIT_NONE in a row".into())
    }

    pub fn rip(&self) -> u64 {
        self.exit.vrs.vrs_gprs[VCPU_REGS_RIP as usize]
    }

    pub fn gpr(&self, i: u32) -> u64 {
        self.exit.vrs.vrs_gprs[i as usize]
    }

    /// Advances RIP past an I/O instruction, as vmd does.
    pub fn skip_io(&mut self) {
        let len = self.exit.vei().vei_insn_len as u64;
        self.exit.vrs.vrs_gprs[VCPU_REGS_RIP as usize] += len;
    }

    pub fn readregs(&self, mask: u32) -> Result<vcpu_reg_state> {
        let mut p = vm_rwregs_params {
            vrwp_vm_id: self.id,
            vrwp_mask: mask as u64,
            ..Default::default()
        };
        self.vmm.readregs(&mut p).map_err(|e| e.to_string())?;
        Ok(p.vrwp_regs)
    }

    pub fn writeregs(&self, mask: u32, regs: &vcpu_reg_state) -> Result<()> {
        let p = vm_rwregs_params {
            vrwp_vm_id: self.id,
            vrwp_mask: mask as u64,
            vrwp_regs: *regs,
            ..Default::default()
        };
        self.vmm.writeregs(&p).map_err(|e| e.to_string())
    }

    /// Expects a port I/O exit with the given direction, port and size.
    pub fn expect_io(&self, reason: u16, dir: u32, port: u16, size: u8) -> Result<()> {
        let want = [VMX_EXIT_IO as u16, SVM_VMEXIT_IOIO as u16];
        if !want.contains(&reason) {
            return Err(format!(
                "exit reason 0x{reason:x}, want an I/O exit (rip 0x{:x})",
                self.rip()
            ));
        }
        let vei = self.exit.vei();
        if vei.vei_dir as u32 != dir || vei.vei_port != port || vei.vei_size != size {
            return Err(format!(
                "I/O exit dir {} port 0x{:x} size {}, want dir {dir} port 0x{port:x} size {size}",
                vei.vei_dir, vei.vei_port, vei.vei_size
            ));
        }
        Ok(())
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.vmm.terminate(self.id);
    }
}

/// Turns `cond` into a test failure with `msg`.
pub fn check(cond: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}
