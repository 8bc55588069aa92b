//! A device process, `vmd -X 0 -t <kind> -p <vm>` (vioblk.c's
//! `vioblk_main` and its siblings): receives its setup from the VM
//! process on its standard input (the sync channel), drops privileges,
//! maps the guest's memory with `VMM_IOC_SHAREMEM`, builds the device
//! core from its files and serves it ([`crate::vm::devproc::device`]).
//! Exit status 0 when the VM shut it down or went away, 1 on a setup
//! failure (logged, and the VM process sees the socket close).
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use super::args::Args;
use super::{disks, logging, privsep};
use crate::devices::virtio::blk::Vioblk;
use crate::devices::virtio::net::{Vionet, VionetConfig};
use crate::devices::virtio::scsi::Vioscsi;
use crate::vm::devproc::{
    device, proxy::kind_name, DevProcError, DevSetup, NicSetup, IMSG_DEVOP_SETUP,
};
use crate::vm::guest_memory::VmMemory;
use vmd_proto::msg::{DiskFd, VmDisk};
use vmm_sys::abi::{vm_mem_range, vm_sharemem_params};

/// The device process; the exit status.
pub fn main(args: &Args) -> i32 {
    let kind = args.dev_type.unwrap_or('?');
    let vm = args.name.clone().unwrap_or_default();
    privsep::set_title(&format!("{vm} {}", kind_name(kind)));
    logging::procinit(&format!("{}/{vm}", kind_name(kind)));
    match run(kind) {
        Ok(()) => 0,
        Err(e) => {
            log::warn!("{} {vm}: {e}", kind_name(kind));
            1
        }
    }
}

fn setup_err(s: impl Into<String>) -> DevProcError {
    DevProcError::Setup(s.into())
}

fn run(kind: char) -> Result<(), DevProcError> {
    let mut sync = privsep::parent_channel().map_err(|source| DevProcError::Io {
        what: "sync channel",
        source,
    })?;
    let mut m = loop {
        if let Some(m) = sync.get()? {
            break m;
        }
        sync.fill()?;
    };
    if m.type_() != IMSG_DEVOP_SETUP {
        return Err(DevProcError::BadType(m.type_()));
    }
    let setup: DevSetup = vmd_proto::codec::decode(&m.data)?;
    if setup.kind != kind {
        return Err(setup_err(format!(
            "setup for device type {}, started as {kind}",
            setup.kind
        )));
    }
    let mut fds = std::mem::take(&mut m.fds).into_iter();
    let mut next = |what: &str| fds.next().ok_or_else(|| setup_err(format!("no {what} fd")));
    let vmm_fd = next("vmm")?;
    let async_sock = UnixStream::from(next("async channel")?);
    let mut mem_fds = Vec::new();
    for r in &setup.ranges {
        mem_fds.push(if r.has_fd {
            Some(next("memory")?)
        } else {
            None
        });
    }
    let files: Vec<OwnedFd> = (0..setup.files)
        .map(|_| next("device file"))
        .collect::<Result<_, _>>()?;
    let doorbells: Vec<OwnedFd> = (0..setup.doorbells)
        .map(|_| next("doorbell"))
        .collect::<Result<_, _>>()?;
    // vmd's device processes run as _vmd; this one inherits it from the
    // VM process, and must not stay root if started by root.
    if nix::unistd::geteuid().is_root() && !super::no_privdrop() {
        privsep::drop_privileges(&super::lookup_user(), None).map_err(|source| {
            DevProcError::Io {
                what: "drop privileges",
                source,
            }
        })?;
    }
    let mem = share_memory(&setup, vmm_fd, mem_fds)?;
    let links = device::Links {
        sync,
        async_sock,
        doorbells,
    };
    // Set up: from here on it serves the guest's requests (vioblk.c's
    // pledge "stdio vmm proc").
    let confined = crate::sandbox::Kind::Device(kind);
    crate::sandbox::confine(confined, &Default::default())
        .map_err(|e| setup_err(format!("sandbox: {e}")))?;
    crate::sandbox::test_hook(confined);
    match kind {
        'd' => {
            let disk: VmDisk = vmd_proto::codec::decode(&setup.payload)?;
            let mut got = disks::Received::default();
            for (base, fd) in files.into_iter().enumerate() {
                got.add(
                    DiskFd {
                        index: 0,
                        base: base as u32,
                    },
                    fd,
                );
            }
            let image = got
                .images(std::slice::from_ref(&disk))
                .map_err(|e| setup_err(e.to_string()))?
                .pop()
                .ok_or_else(|| setup_err("no disk"))?;
            device::serve(Vioblk::new(image, ""), setup.irq, mem, links)
        }
        's' => {
            // The ISO, opened read-only by the parent.
            let fd = files
                .into_iter()
                .next()
                .ok_or_else(|| setup_err("no cdrom"))?;
            let iso = vmd_disk::Raw::open(std::fs::File::from(fd), "cdrom", false)
                .map_err(|e| setup_err(e.to_string()))?;
            device::serve(Vioscsi::new(Box::new(iso), "cd0"), setup.irq, mem, links)
        }
        'n' => {
            let nic: NicSetup = vmd_proto::codec::decode(&setup.payload)?;
            let fd = files
                .into_iter()
                .next()
                .ok_or_else(|| setup_err("no tap"))?;
            let tap = crate::sys::Tap::from_fd(fd, nic.ifname.clone()).map_err(|source| {
                DevProcError::Io {
                    what: "tap",
                    source,
                }
            })?;
            device::serve(vionet(&nic, tap), setup.irq, mem, links)
        }
        other => Err(setup_err(format!(
            "device type {other} has no device process"
        ))),
    }
}

/// `VMM_IOC_SHAREMEM` of the VM's ranges (after adopting the memory's
/// descriptors where the shim needs them).
fn share_memory(
    setup: &DevSetup,
    vmm_fd: OwnedFd,
    mem_fds: Vec<Option<OwnedFd>>,
) -> Result<VmMemory, DevProcError> {
    let vmm = vmm_sys::Vmm::from_fd(vmm_fd).map_err(|e| setup_err(e.to_string()))?;
    let ranges: Vec<vm_mem_range> = setup
        .ranges
        .iter()
        .map(|r| vm_mem_range {
            vmr_gpa: r.gpa,
            vmr_va: 0,
            vmr_size: r.size as usize,
            vmr_type: r.kind,
        })
        .collect();
    let mut vsp = vm_sharemem_params {
        vsp_vm_id: setup.vm_id,
        vsp_nmemranges: ranges.len(),
        ..Default::default()
    };
    if ranges.len() > vsp.vsp_memranges.len() {
        return Err(setup_err(format!("{} memory ranges", ranges.len())));
    }
    vsp.vsp_memranges[..ranges.len()].copy_from_slice(&ranges);
    if mem_fds.iter().any(Option::is_some) {
        vmm.adopt_memory(setup.vm_id, &ranges, mem_fds)
            .map_err(|e| setup_err(e.to_string()))?;
    }
    let mem = vmm
        .sharemem(&mut vsp)
        .map_err(|e| setup_err(e.to_string()))?;
    VmMemory::new(&mem).map_err(|e| setup_err(e.to_string()))
}

/// The vionet core for a NIC on its tap, in a device process or in the
/// VM process.
pub fn vionet(nic: &NicSetup, tap: crate::sys::Tap) -> Vionet {
    log::debug!(
        "vionet{}: {} lladdr {}{}{}",
        nic.index,
        nic.ifname,
        nic.mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
        if nic.locked { " locked" } else { "" },
        if nic.local.is_some() { " local" } else { "" }
    );
    let dev = Vionet::new(
        VionetConfig {
            mac: nic.mac,
            locked: nic.locked,
        },
        Box::new(tap),
    );
    match nic.local.as_ref().map(|l| l.lease(nic.index, nic.mac)) {
        // vmd's DHCP server answers the guest on a local interface.
        Some(Ok(lease)) => {
            log::debug!(
                "vionet{}: local interface, guest {}/{} host {}",
                nic.index,
                lease.guest_addr,
                lease.prefix_len,
                lease.host_addr
            );
            dev.with_local(Box::new(crate::net::LocalServer::new(lease)))
        }
        // The VM process checked the addresses before starting us.
        Some(Err(e)) => {
            log::warn!("vionet{}: {e}", nic.index);
            dev
        }
        None => dev,
    }
}
