//! `Vmm::from_fd`: a handle on a device descriptor opened elsewhere, as
//! vmd's parent opens `/dev/vmm` (here `/dev/kvm`) as root and its vmm and
//! VM processes use it as `_vmd`.  The VM tests need the device and are
//! reported as ignored without it; the one across a privilege drop also
//! needs root.
use libtest_mimic::{Arguments, Failed, Trial};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use vmm_sys::abi::*;
use vmm_sys::{ExitFlavour, Vmm};

/// Set in the environment of the child that runs as `nobody`.
const CHILD: &str = "VMM_SYS_FROM_FD_CHILD";
const CODE: u64 = 0x1000;
/// `mov al, 0x42; out 0x80, al; hlt`
const GUEST: [u8; 5] = [0xb0, 0x42, 0xe6, 0x80, 0xf4];

fn seg(limit: u32, ar: u32) -> vcpu_segment_info {
    vcpu_segment_info {
        vsi_sel: 0,
        vsi_limit: limit,
        vsi_ar: ar,
        vsi_base: 0,
    }
}

/// Real mode, CS:IP = 0:CODE.
fn real_mode() -> vcpu_reg_state {
    let mut r = vcpu_reg_state::default();
    r.vrs_gprs[VCPU_REGS_RIP as usize] = CODE;
    r.vrs_gprs[VCPU_REGS_RFLAGS as usize] = 0x2;
    r.vrs_gprs[VCPU_REGS_RSP as usize] = 0x8000;
    r.vrs_crs[VCPU_REGS_CR0 as usize] = 0x6000_0010;
    r.vrs_crs[VCPU_REGS_XCR0 as usize] = 1;
    r.vrs_sregs = [seg(0xffff, 0x0093); 8];
    r.vrs_sregs[VCPU_REGS_CS as usize] = seg(0xffff, 0x009b);
    r.vrs_sregs[VCPU_REGS_LDTR as usize] = seg(0xffff, 0x0082);
    r.vrs_sregs[VCPU_REGS_TR as usize] = seg(0xffff, 0x008b);
    r.vrs_gdtr = seg(0xffff, 0);
    r.vrs_idtr = seg(0x3ff, 0);
    r.vrs_drs[VCPU_REGS_DR6 as usize] = 0xffff_0ff0;
    r.vrs_drs[VCPU_REGS_DR7 as usize] = 0x400;
    r
}

/// Creates a one-vCPU VM with 640 KiB of RAM on `vmm`, runs the guest to
/// its OUT and its HLT, and destroys it.
fn run_tiny_vm(vmm: &Vmm) -> Result<(), String> {
    let mut vcp = vm_create_params {
        vcp_ncpus: 1,
        vcp_nmemranges: 1,
        ..Default::default()
    };
    vcp.vcp_memranges[0] = vm_mem_range {
        vmr_gpa: 0,
        vmr_va: 0,
        vmr_size: 0xA_0000,
        vmr_type: VM_MEM_RAM as i32,
    };
    vcp.set_name("from-fd");
    vmm.create(&mut vcp).map_err(|e| e.to_string())?;
    let id = vcp.vcp_id;
    let r = (|| {
        let mem = vmm.guest_memory(id).map_err(|e| e.to_string())?;
        mem.write(CODE, &GUEST).map_err(|e| e.to_string())?;
        vmm.resetcpu(&vm_resetcpu_params {
            vrp_vm_id: id,
            vrp_vcpu_id: 0,
            vrp_init_state: real_mode(),
        })
        .map_err(|e| e.to_string())?;
        let (io, hlt) = match vmm.host_flavour() {
            ExitFlavour::Vmx => (VMX_EXIT_IO, VMX_EXIT_HLT),
            ExitFlavour::Svm => (SVM_VMEXIT_IOIO, SVM_VMEXIT_HLT),
        };
        let mut exit: Box<vm_exit> = Box::default();
        let mut vrp = vm_run_params {
            vrp_vm_id: id,
            ..Default::default()
        };
        let mut run = |exit: &mut vm_exit| -> Result<u32, String> {
            for _ in 0..100 {
                vmm.run(&mut vrp, exit).map_err(|e| e.to_string())?;
                if vrp.vrp_exit_reason != VM_EXIT_NONE as u16 {
                    return Ok(vrp.vrp_exit_reason as u32);
                }
            }
            Err("100 VM_EXIT_NONE in a row".into())
        };
        let reason = run(&mut exit)?;
        let vei = *exit.vei();
        if reason != io || vei.vei_port != 0x80 || vei.vei_data & 0xff != 0x42 {
            return Err(format!(
                "first exit 0x{reason:x} port 0x{:x} data 0x{:x}, want OUT 0x42 to 0x80",
                vei.vei_port, vei.vei_data
            ));
        }
        exit.vrs.vrs_gprs[VCPU_REGS_RIP as usize] += vei.vei_insn_len as u64;
        let reason = run(&mut exit)?;
        let rip = exit.vrs.vrs_gprs[VCPU_REGS_RIP as usize];
        if reason != hlt || rip != CODE + GUEST.len() as u64 {
            return Err(format!(
                "second exit 0x{reason:x} at rip 0x{rip:x}, want HLT"
            ));
        }
        Ok(())
    })();
    let _ = vmm.terminate(id);
    r
}

fn from_fd_runs_a_vm() -> Result<(), Failed> {
    let fd = Vmm::open_device()?;
    let vmm = Vmm::from_fd(fd)?;
    Ok(run_tiny_vm(&vmm)?)
}

/// A file that is not the device is refused, before any vmm(4) verb.
fn from_fd_refuses_other_files() -> Result<(), Failed> {
    let f = std::fs::File::open(std::env::current_exe()?)?;
    match Vmm::from_fd(OwnedFd::from(f)) {
        Err(e) if e.op == "open" => Ok(()),
        Err(e) => Err(format!("unexpected error {e}").into()),
        Ok(_) => Err("a regular file was taken for the device".into()),
    }
}

/// The child: runs as `nobody` with the device descriptor on its standard
/// input, as a VM process gets it from vmd.
fn child() -> Result<(), String> {
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(vmm_sys::DEVICE_PATH);
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| e.to_string())?;
    let vmm = Vmm::from_fd(fd).map_err(|e| e.to_string())?;
    run_tiny_vm(&vmm)?;
    // Only the inherited descriptor made that possible.
    match opened {
        Ok(_) => Err(format!(
            "uid {} can open {} itself: nothing was proven",
            euid(),
            vmm_sys::DEVICE_PATH
        )),
        Err(_) => Ok(()),
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid(2) takes nothing and cannot fail.
    unsafe { libc::geteuid() }
}

/// Opened as root, used by `nobody`, which cannot open the device itself.
fn from_fd_after_privilege_drop() -> Result<(), Failed> {
    let fd = Vmm::open_device()?;
    let out = Command::new(std::env::current_exe()?)
        .env(CHILD, "1")
        .stdin(Stdio::from(fd))
        .uid(65534)
        .gid(65534)
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "child as nobody: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

fn main() {
    if std::env::var_os(CHILD).is_some() {
        match child() {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
    }
    let args = Arguments::from_args();
    let missing = Vmm::open_device()
        .err()
        .map(|e| format!("needs read-write {} ({e})", vmm_sys::DEVICE_PATH));
    let root = euid() == 0;
    let mut tests = vec![Trial::test(
        "from_fd_refuses_other_files",
        from_fd_refuses_other_files,
    )];
    let mut vm = Trial::test("from_fd_runs_a_vm", from_fd_runs_a_vm);
    if let Some(why) = &missing {
        vm = vm.with_ignored_flag(true).with_kind(why.clone());
    }
    tests.push(vm);
    let mut drop = Trial::test("from_fd_after_privilege_drop", from_fd_after_privilege_drop);
    if let Some(why) = missing
        .clone()
        .or((!root).then(|| "needs root".to_string()))
    {
        drop = drop.with_ignored_flag(true).with_kind(why);
    }
    tests.push(drop);
    libtest_mimic::run(&args, tests).exit();
}
