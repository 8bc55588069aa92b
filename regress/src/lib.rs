//! Support for the vmm(4) regress suite: a VM with vmd's memory layout,
//! register states for real, protected and long mode, guests assembled with
//! iced-x86, and a way to report tests that need `/dev/kvm` or `/dev/vmm`
//! as ignored where the host lacks them.
use std::cell::Cell;
use std::sync::Arc;
use vmm_sys::abi::*;
use vmm_sys::{ExitFlavour, GuestMemory, Vmm, VmmError};

pub mod asm;
pub mod x86;
pub use asm::{asm, Marks, Program};

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
/// The protected- and long-mode IDT (256 gates of up to 16 bytes).
pub const IDT: u64 = 0x2000;
/// Scratch RAM where guests leave results for the test to read.
pub const DATA: u64 = 0x3000;
pub const STACK_TOP: u64 = 0x9_0000;
/// Real-mode stack (SS:SP = 0:0x8000).
pub const STACK16: u64 = 0x8000;
pub const PML4: u64 = 0x7_0000;
/// Page-table pages handed out by [`Guest::map_4k`].
const EXTRA_TABLES: u64 = 0x7_6000;
const EXTRA_TABLES_END: u64 = 0x8_0000;

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
    r.vrs_gprs[VCPU_REGS_RSP as usize] = STACK16;
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
/// 64-bit code and flat data at DPL 3 (selectors with RPL 3).
pub const SEL_UCODE64: u16 = 0x28 | 3;
pub const SEL_UDATA: u16 = 0x30 | 3;

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
    r.vrs_gdtr = seg(0, GDT, 0x3f, 0);
    r.vrs_idtr = seg(0, IDT, 0xfff, 0);
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

/// Long mode at CPL 3 with IOPL 3: guest code that KVM runs natively on
/// hosts that emulate CPL 0 (see kvm-on-these-hosts.md), so exits take
/// KVM's fast paths instead of its instruction emulator.
pub fn user64(ip: u64) -> vcpu_reg_state {
    let mut r = long64(ip);
    r.vrs_sregs[VCPU_REGS_CS as usize] = seg(SEL_UCODE64, 0, 0xffff_ffff, 0xa0fb);
    let data = seg(SEL_UDATA, 0, 0xffff_ffff, 0xc0f3);
    for i in [
        VCPU_REGS_ES,
        VCPU_REGS_SS,
        VCPU_REGS_DS,
        VCPU_REGS_FS,
        VCPU_REGS_GS,
    ] {
        r.vrs_sregs[i as usize] = data;
    }
    r.vrs_gprs[VCPU_REGS_RFLAGS as usize] = 0x3002;
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
    next_table: Cell<u64>,
    flavour: Cell<ExitFlavour>,
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
        let flavour = vmm.host_flavour();
        let g = Guest {
            vmm,
            id,
            mem,
            exit: Box::default(),
            vrp: vm_run_params {
                vrp_vm_id: id,
                ..Default::default()
            },
            next_table: Cell::new(EXTRA_TABLES),
            flavour: Cell::new(flavour),
        };
        g.write_gdt()?;
        g.write_page_tables()?;
        Ok(g)
    }

    pub fn write(&self, gpa: u64, bytes: &[u8]) -> Result<()> {
        self.mem.write(gpa, bytes).map_err(|e| e.to_string())
    }

    fn write_gdt(&self) -> Result<()> {
        let gdt: [u64; 8] = [
            0,
            0x00cf_9b00_0000_ffff, // 0x08 code32
            0x00cf_9300_0000_ffff, // 0x10 data
            0x00af_9b00_0000_ffff, // 0x18 code64
            0x0000_9b00_0000_ffff, // 0x20 code16
            0x00af_fb00_0000_ffff, // 0x28 user code64
            0x00cf_f300_0000_ffff, // 0x30 user data
            0,
        ];
        let bytes: Vec<u8> = gdt.iter().flat_map(|d| d.to_le_bytes()).collect();
        self.write(GDT, &bytes)
    }

    /// Identity map of the first 4 GiB with 2 MiB pages, present, writable
    /// and user-accessible.
    fn write_page_tables(&self) -> Result<()> {
        let pdpt = PML4 + 0x1000;
        self.write_u64(PML4, pdpt | 0x7)?;
        for i in 0..4u64 {
            let pd = PML4 + 0x2000 + i * 0x1000;
            self.write_u64(pdpt + i * 8, pd | 0x7)?;
            for j in 0..512u64 {
                let page = (i << 30) | (j << 21);
                self.write_u64(pd + j * 8, page | 0x87)?;
            }
        }
        Ok(())
    }

    fn new_table(&self) -> Result<u64> {
        let t = self.next_table.get();
        if t >= EXTRA_TABLES_END {
            return Err("out of page-table pages".into());
        }
        self.next_table.set(t + 0x1000);
        self.write(t, &[0u8; 0x1000])?;
        Ok(t)
    }

    /// Maps the 4 KiB page at linear `va` to `gpa` in the long-mode page
    /// tables, splitting a 2 MiB page or adding tables as needed.
    pub fn map_4k(&self, va: u64, gpa: u64) -> Result<()> {
        let mut table = PML4;
        for shift in [39u32, 30, 21] {
            let slot = table + ((va >> shift) & 0x1ff) * 8;
            let e = self.read_u64(slot)?;
            table = if e & 1 == 0 {
                let t = self.new_table()?;
                self.write_u64(slot, t | 0x7)?;
                t
            } else if e & 0x80 != 0 {
                // A large page: replace it by a table of the same mapping.
                let t = self.new_table()?;
                let base = e & 0x000f_ffff_ffe0_0000;
                for k in 0..512u64 {
                    self.write_u64(t + k * 8, (base + (k << 12)) | 0x7)?;
                }
                self.write_u64(slot, t | 0x7)?;
                t
            } else {
                e & 0x000f_ffff_ffff_f000
            };
        }
        self.write_u64(table + ((va >> 12) & 0x1ff) * 8, gpa | 0x7)
    }

    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<()> {
        self.mem.read(gpa, buf).map_err(|e| e.to_string())
    }

    pub fn read_u64(&self, gpa: u64) -> Result<u64> {
        self.mem.read_u64(gpa).map_err(|e| e.to_string())
    }

    pub fn read_u32(&self, gpa: u64) -> Result<u32> {
        self.mem.read_u32(gpa).map_err(|e| e.to_string())
    }

    pub fn read_u16(&self, gpa: u64) -> Result<u16> {
        let mut b = [0u8; 2];
        self.read(gpa, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    pub fn write_u64(&self, gpa: u64, v: u64) -> Result<()> {
        self.mem.write_u64(gpa, v).map_err(|e| e.to_string())
    }

    pub fn write_u32(&self, gpa: u64, v: u32) -> Result<()> {
        self.mem.write_u32(gpa, v).map_err(|e| e.to_string())
    }

    /// Points real-mode interrupt vector `vector` at 0:`ip`.
    pub fn set_ivt(&self, vector: u8, ip: u64) -> Result<()> {
        self.write_u32(vector as u64 * 4, ip as u32 & 0xffff)
    }

    /// A 32-bit interrupt gate for `vector` to SEL_CODE32:`ip`.
    pub fn set_idt32(&self, vector: u8, ip: u64) -> Result<()> {
        let lo = (ip & 0xffff) | ((SEL_CODE32 as u64) << 16);
        let hi = (ip & 0xffff_0000) | 0x8e00;
        self.write_u64(IDT + vector as u64 * 8, lo | (hi << 32))
    }

    /// A 64-bit interrupt gate for `vector` to SEL_CODE64:`ip`.
    pub fn set_idt64(&self, vector: u8, ip: u64) -> Result<()> {
        let lo = (ip & 0xffff) | ((SEL_CODE64 as u64) << 16);
        let hi = (ip & 0xffff_0000) | 0x8e00;
        self.write_u64(IDT + vector as u64 * 16, lo | (hi << 32))?;
        self.write_u64(IDT + vector as u64 * 16 + 8, ip >> 32)
    }

    /// Chooses the exit flavour of this VM.
    pub fn set_flavour(&self, f: ExitFlavour) -> Result<()> {
        self.vmm
            .set_exit_flavour(self.id, f)
            .map_err(|e| e.to_string())?;
        self.flavour.set(f);
        Ok(())
    }

    pub fn flavour(&self) -> ExitFlavour {
        self.flavour.get()
    }

    /// The exit reason `vmx` or `svm`, whichever this VM's flavour uses.
    pub fn reason(&self, vmx: u32, svm: u32) -> u16 {
        match self.flavour() {
            ExitFlavour::Vmx => vmx as u16,
            ExitFlavour::Svm => svm as u16,
        }
    }

    /// Fails unless `got` is the exit `vmx`/`svm` in this VM's flavour.
    pub fn expect_reason(&self, got: u16, vmx: u32, svm: u32, what: &str) -> Result<()> {
        let want = self.reason(vmx, svm);
        check(got == want, || {
            format!(
                "exit reason 0x{got:x}, want 0x{want:x} ({what}) at rip 0x{:x}",
                self.rip()
            )
        })
    }

    /// Expects a HLT exit with RIP just past the HLT at `hlt_ip`.
    pub fn expect_hlt(&self, got: u16, hlt_ip: u64) -> Result<()> {
        self.expect_reason(got, VMX_EXIT_HLT, SVM_VMEXIT_HLT, "HLT")?;
        check(self.rip() == hlt_ip + 1, || {
            format!("rip 0x{:x} after HLT at 0x{hlt_ip:x}", self.rip())
        })
    }

    /// Expects an OUT of `size` bytes of `data` to `port` from the
    /// instruction at `ip`.
    pub fn expect_out(&self, got: u16, port: u16, size: u8, data: u32, ip: u64) -> Result<()> {
        self.expect_io(got, VEI_DIR_OUT, port, size)?;
        let vei = self.exit.vei();
        let m = if size == 4 {
            u32::MAX
        } else {
            (1u32 << (size * 8)) - 1
        };
        check(vei.vei_data & m == data, || {
            format!(
                "OUT to 0x{port:x}: data 0x{:x}, want 0x{data:x}",
                vei.vei_data & m
            )
        })?;
        check(self.rip() == ip, || {
            format!("OUT to 0x{port:x}: rip 0x{:x}, want 0x{ip:x}", self.rip())
        })
    }

    pub fn reset(&self, state: &vcpu_reg_state) -> Result<()> {
        let p = vm_resetcpu_params {
            vrp_vm_id: self.id,
            vrp_vcpu_id: 0,
            vrp_init_state: *state,
        };
        self.vmm.resetcpu(&p).map_err(|e| e.to_string())
    }

    /// Loads a program at its base and resets the vCPU to `state`.
    pub fn load(&self, p: &Program, state: &vcpu_reg_state) -> Result<()> {
        self.write(p.base, &p.bytes)?;
        self.reset(state)
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
        if reason != self.reason(VMX_EXIT_IO, SVM_VMEXIT_IOIO) {
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
