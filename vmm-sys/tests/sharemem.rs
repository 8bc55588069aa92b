//! VMM_IOC_SHAREMEM in another process: the creator passes the memory
//! descriptors (memory_fds), the device process adopts them and maps the
//! guest memory with sharemem, as vmd's vioblk and vionet processes do.
//! Needs /dev/kvm (or /dev/vmm); reported as ignored without it.
use libtest_mimic::{Arguments, Failed, Trial};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use vmm_sys::abi::*;
use vmm_sys::Vmm;

const CHILD: &str = "VMM_SYS_SHAREMEM_CHILD";
const PATTERN: &[u8] = b"written by the device process";
const GPA: u64 = 0x1_0000 + 0x123;

fn ranges() -> Vec<vm_mem_range> {
    vec![
        vm_mem_range {
            vmr_gpa: 0,
            vmr_va: 0,
            vmr_size: 0xA_0000,
            vmr_type: VM_MEM_RAM as i32,
        },
        vm_mem_range {
            vmr_gpa: 0xF000_0000,
            vmr_va: 0,
            vmr_size: 0x10_0000,
            vmr_type: VM_MEM_MMIO as i32,
        },
        vm_mem_range {
            vmr_gpa: 0xFFE0_0000,
            vmr_va: 0,
            vmr_size: 0x20_0000,
            vmr_type: VM_MEM_RESERVED as i32,
        },
    ]
}

/// The device-process side: adopt the descriptors named in the
/// environment, share the memory in, write the pattern.
fn child(spec: &str) -> Result<(), String> {
    let mut parts = spec.split(':');
    let vm_id: u32 = parts.next().unwrap().parse().map_err(|e| format!("{e}"))?;
    let fds: Vec<Option<OwnedFd>> = parts
        .map(|p| match p {
            "-" => None,
            // SAFETY: the parent passed these descriptors to us, open and
            // without close-on-exec; nothing else owns them here.
            n => Some(unsafe { OwnedFd::from_raw_fd(n.parse().unwrap()) }),
        })
        .collect();
    let vmm = Vmm::open().map_err(|e| e.to_string())?;
    let r = ranges();
    vmm.adopt_memory(vm_id, &r, fds)
        .map_err(|e| e.to_string())?;
    let mut vsp = vm_sharemem_params {
        vsp_vm_id: vm_id,
        vsp_nmemranges: r.len(),
        ..Default::default()
    };
    vsp.vsp_memranges[..r.len()].copy_from_slice(&r);
    let mem = vmm.sharemem(&mut vsp).map_err(|e| e.to_string())?;
    if vsp.vsp_va[0] == 0 || vsp.vsp_va[1] != 0 || vsp.vsp_va[2] == 0 {
        return Err(format!("vsp_va {:x?}", &vsp.vsp_va[..3]));
    }
    mem.write(GPA, PATTERN).map_err(|e| e.to_string())
}

fn across_processes() -> Result<(), Failed> {
    let vmm = Vmm::open().map_err(|e| e.to_string())?;
    let r = ranges();
    let mut vcp = vm_create_params {
        vcp_ncpus: 1,
        vcp_nmemranges: r.len(),
        ..Default::default()
    };
    vcp.vcp_memranges[..r.len()].copy_from_slice(&r);
    vcp.set_name("sharemem");
    vmm.create(&mut vcp)?;
    let fds = vmm.memory_fds(vcp.vcp_id)?;
    let mem = vmm.guest_memory(vcp.vcp_id)?;
    let mut spec = vcp.vcp_id.to_string();
    for fd in &fds {
        spec.push(':');
        match fd {
            Some(fd) => {
                // SAFETY: clearing close-on-exec on a descriptor we own, so
                // the child inherits it.
                unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) };
                spec.push_str(&fd.as_raw_fd().to_string());
            }
            None => spec.push('-'),
        }
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .env(CHILD, &spec)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "device process failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let mut buf = vec![0u8; PATTERN.len()];
    mem.read(GPA, &mut buf)?;
    vmm.terminate(vcp.vcp_id)?;
    if buf != PATTERN {
        return Err(format!("creator sees {:?}", String::from_utf8_lossy(&buf)).into());
    }
    Ok(())
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD) {
        match child(&spec) {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                eprintln!("child: {e}");
                std::process::exit(1);
            }
        }
    }
    let args = Arguments::from_args();
    let dev = if cfg!(target_os = "linux") {
        "/dev/kvm"
    } else {
        "/dev/vmm"
    };
    let missing = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .err();
    let mut t = Trial::test("sharemem_across_processes", across_processes);
    if let Some(e) = missing {
        t = t
            .with_ignored_flag(true)
            .with_kind(format!("needs {dev} ({e})"));
    }
    libtest_mimic::run(&args, vec![t]).exit();
}
