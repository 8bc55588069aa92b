//! The VM process, `vmd -V 0` (vm.c's `vm_main`): receives its create
//! parameters, boot image and console from the vmm process, creates and
//! runs the VM, and exits with vmd's status: 0 when the guest halted or
//! the VM was stopped, EAGAIN when the guest reset itself, an errno when
//! the VM failed.
//!
//! It runs as `_vmd` from the start, as its vmm process does: vmm(4) is
//! the descriptor the parent opened as root (OpenBSD's `-i fd`, here a
//! message: std can place a descriptor only on 0, 1 or 2 without `unsafe`
//! code, and 0 is the socket).
//!
//! On the socket (all `vmd::proc` messages):
//! - vmm → VM: `RECEIVE_VMM_FD`(vmm(4) fd), `START_VM_REQUEST`(create
//!   params, boot image fd), a `START_VM_DISK`(fd) per file of each
//!   disk's chain (vioblk builds the image from them), a
//!   `CONFIG` (the global configuration: local prefixes), a
//!   `START_VM_IF`(tap fd) per NIC (vionet serves it), then
//!   `START_VM_END`(pty master fd); VM → vmm:
//!   `START_VM_RESPONSE` with result 0 once the VM exists, or the errno
//!   it failed with (and exit).
//! - vmm → VM: `PAUSE_VM` / `UNPAUSE_VM` (peer id: the client), answered
//!   with `PAUSE_VM_RESPONSE` / `UNPAUSE_VM_RESPONSE`; `VM_REBOOT`, the
//!   graceful stop: the guest is asked through vmmci and the VM ends at
//!   its reset or at vmmci's timeout; a guest without a vmmci driver is
//!   stopped at once; `CTL_VERBOSE`.
//! - End of file from vmm: the VM stops and the process exits.
use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::args::{child_flags, Args};
use super::{logging, privsep, vmfiles};
use crate::devices::virtio::blk::DiskImage;
use crate::vm::devproc::{DeviceProcesses, DiskFiles, NicFiles, NicLocal, NicSetup};
use crate::vm::machine::{BootImage, Control, Machine, Outcome, ShutdownRequest, VmConfig};
use vmd_proto::msg::{VmopCreateParams, VmopResult, VMD_CDROM_INVALID, VMD_DISK_INVALID};
use vmd_proto::{ImsgChannel, Message};

fn fail(chan: &mut ImsgChannel, id: u32, errno: i32, msg: &str) -> i32 {
    log::warn!("{msg}");
    let _ = chan.send(&Message::StartVmResponse(VmopResult {
        result: errno,
        id,
        pid: std::process::id() as i32,
        ttyname: String::new(),
    }));
    errno
}

/// The VM process; the exit status.
pub fn main(args: &Args) -> i32 {
    let mut chan = match privsep::parent_channel() {
        Ok(c) => c,
        Err(e) => logging::fatal("invalid vm fd", e),
    };
    if !privsep::die_with_parent(&chan) {
        logging::fatalx("vmm process gone before the vm started");
    }
    // vmm sends vmm(4), the parameters with the boot image, then the
    // console.
    let vmm_fd = match chan.recv() {
        Ok(mut r) if matches!(r.msg, Message::ReceiveVmmFd) => match r.fds.pop() {
            Some(fd) => fd,
            None => logging::fatalx("failed to get vmm fd"),
        },
        Ok(r) => logging::fatalx(&format!("unexpected {:?}", r.msg.imsg_type())),
        Err(e) => logging::fatal("failed to receive vmm fd", e),
    };
    let (params, kernel): (VmopCreateParams, Option<OwnedFd>) = match chan.recv() {
        Ok(mut r) => match r.msg {
            Message::StartVmRequest(p) => (p, r.fds.pop()),
            other => logging::fatalx(&format!("unexpected {:?}", other.imsg_type())),
        },
        Err(e) => logging::fatal("failed to receive vm configuration", e),
    };
    // The ISO and the disks' descriptors, then the console.
    let mut cdrom = None;
    let mut disk_fds = super::disks::Received::default();
    let mut taps: Vec<(u32, OwnedFd)> = Vec::new();
    let mut global = vmd_proto::config::GlobalConfig::default();
    let pty = loop {
        match chan.recv() {
            Ok(mut r) => match r.msg {
                Message::StartVmEnd => break r.fds.pop(),
                Message::StartVmCdrom => match r.fds.pop() {
                    Some(fd) => cdrom = Some(fd),
                    None => logging::fatalx("failed to get cdrom fd"),
                },
                Message::StartVmDisk(d) => match r.fds.pop() {
                    Some(fd) => disk_fds.add(d, fd),
                    None => logging::fatalx("failed to get disk fd"),
                },
                Message::Config(g) => global = g,
                Message::StartVmIf(i) => match r.fds.pop() {
                    Some(fd) => taps.push((i, fd)),
                    None => logging::fatalx("failed to get tap fd"),
                },
                other => logging::fatalx(&format!("unexpected {:?}", other.imsg_type())),
            },
            Err(e) => logging::fatal("failed to receive vm console", e),
        }
    };
    let name = params.name.clone();
    privsep::set_title(&name);
    logging::procinit(&format!("vm/{name}"));
    // The vmm process is _vmd already, and so is this process; should it
    // be started by root some day, it must not stay root.
    if nix::unistd::geteuid().is_root() && !super::no_privdrop() {
        if let Err(e) = privsep::drop_privileges(&super::lookup_user(), None) {
            return fail(&mut chan, params.id, libc::EPERM, &format!("{name}: {e}"));
        }
    }

    // vm.c: unveil vmd's binary, pledge "stdio vmm proc exec" (and
    // sendfd here: the device processes get their descriptors as
    // messages).
    let exe = std::env::current_exe().ok();
    let sandbox_ctx = crate::sandbox::Context { exe: exe.clone() };
    if let Err(e) = crate::sandbox::confine(crate::sandbox::Kind::Vm, &sandbox_ctx) {
        return fail(
            &mut chan,
            params.id,
            libc::EPERM,
            &format!("{name}: sandbox: {e}"),
        );
    }
    crate::sandbox::test_hook(crate::sandbox::Kind::Vm);

    // vioblk runs in a device process per disk (era B), unless
    // VMD_INPROCESS_DEVICES asks for this process (for comparisons).
    let in_process = std::env::var(super::ENV_INPROCESS_DEVICES).is_ok_and(|v| v == "1");
    let (disks, disk_files) = if in_process {
        match disk_fds.images(&params.disks) {
            Ok(d) => (d, Vec::new()),
            Err(e) => {
                return fail(
                    &mut chan,
                    params.id,
                    VMD_DISK_INVALID,
                    &format!("{name}: {e}"),
                )
            }
        }
    } else {
        match disk_fds.per_disk(&params.disks) {
            Ok(per) => (
                Vec::new(),
                params
                    .disks
                    .iter()
                    .cloned()
                    .zip(per)
                    .map(|(disk, files)| DiskFiles { disk, files })
                    .collect(),
            ),
            Err(e) => {
                return fail(
                    &mut chan,
                    params.id,
                    VMD_DISK_INVALID,
                    &format!("{name}: {e}"),
                )
            }
        }
    };
    // One tap per NIC, each in its vionet device process (or here).
    let mut nics = Vec::new();
    for (index, nic) in params.interfaces.iter().enumerate() {
        let Some(pos) = taps.iter().position(|(i, _)| *i as usize == index) else {
            return fail(
                &mut chan,
                params.id,
                libc::EINVAL,
                &format!("{name}: no tap for interface {index}"),
            );
        };
        let (_, tap) = taps.swap_remove(pos);
        // A local interface whose addresses leave the local prefix fails
        // the start, as priv fails it in vmd.
        if nic.local() {
            let l = NicLocal {
                vm_id: params.id,
                vm_name: name.clone(),
                global: global.clone(),
                pxeboot: false,
            };
            if let Err(e) = l.lease(index as u32, nic.lladdr) {
                return fail(&mut chan, params.id, libc::EINVAL, &format!("{name}: {e}"));
            }
        }
        nics.push(NicFiles {
            nic: NicSetup {
                index: index as u32,
                ifname: nic.name.clone().unwrap_or_else(|| "tap".into()),
                mac: nic.lladdr,
                locked: nic.locked(),
                local: nic.local().then(|| NicLocal {
                    vm_id: params.id,
                    vm_name: name.clone(),
                    global: global.clone(),
                    pxeboot: crate::net::local::pxeboot(params.boot_device, index),
                }),
            },
            tap,
            in_process,
        });
    }
    let exe = exe.ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOENT));
    let devices = match (exe, vmm_fd.try_clone()) {
        (Ok(exe), Ok(vmm_fd)) => Some(DeviceProcesses {
            exe,
            vmm_fd,
            flags: child_flags(args),
            one_way_kicks: true,
        }),
        (Err(e), _) | (_, Err(e)) => {
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            return fail(
                &mut chan,
                params.id,
                errno,
                &format!("{name}: device processes: {e}"),
            );
        }
    };
    // The ISO, opened read-only by the parent: a raw image vioscsi reads
    // in 2048-byte blocks, in its own device process (era B's vioscsi
    // was in the VM process; 2026's has its own) unless
    // VMD_INPROCESS_DEVICES keeps it here.
    let (cdrom, cdrom_file): (Option<Box<dyn DiskImage>>, _) = match cdrom {
        None => (None, None),
        Some(fd) if !in_process => (None, Some(fd)),
        Some(fd) => match vmd_disk::Raw::open(File::from(fd), "cdrom", false) {
            Ok(r) => (Some(Box::new(r)), None),
            Err(e) => {
                return fail(
                    &mut chan,
                    params.id,
                    VMD_CDROM_INVALID,
                    &format!("{name}: {e}"),
                )
            }
        },
    };
    let Some(kernel) = kernel else {
        return fail(&mut chan, params.id, libc::EINVAL, "no boot image");
    };
    // fstat before reading: a descriptor of /dev/zero or of a sparse
    // file of gigabytes must not grow this process.
    let limit = vmfiles::max_boot_image(params.memory);
    let image = match vmfiles::read_boot_image(&mut File::from(kernel), limit) {
        Ok(v) => v,
        Err(e) => return fail(&mut chan, params.id, e.errno(), &format!("{name}: {e}")),
    };
    let (console_out, console_in): (Box<dyn std::io::Write + Send>, Option<OwnedFd>) = match pty {
        Some(fd) => {
            let out = match fd.try_clone() {
                Ok(o) => o,
                Err(e) => {
                    let errno = e.raw_os_error().unwrap_or(libc::EIO);
                    return fail(
                        &mut chan,
                        params.id,
                        errno,
                        &format!("{name}: console: {e}"),
                    );
                }
            };
            // A console no one reads must not stall the vCPU: writes that
            // would block are dropped, as vmd's are.
            let _ = set_nonblocking(&fd);
            (Box::new(File::from(out)), Some(fd))
        }
        None => (Box::new(std::io::sink()), None),
    };
    let vmm = match vmm_sys::Vmm::from_fd(vmm_fd) {
        Ok(v) => Arc::new(v),
        Err(e) => return fail(&mut chan, params.id, e.errno, &format!("{name}: {e}")),
    };
    let machine = match Machine::new(
        vmm,
        VmConfig {
            console_in,
            boot_device: params.boot_device,
            disks,
            disk_files,
            devices,
            cdrom,
            cdrom_file,
            nics,
            ..VmConfig::new(
                name.clone(),
                params.memory,
                BootImage::Kernel(image),
                console_out,
            )
        },
    ) {
        Ok(m) => m,
        Err(e) => {
            return fail(
                &mut chan,
                params.id,
                e.errno(),
                &format!("{name}: create vmm ioctl failed - exiting: {e}"),
            )
        }
    };
    if let Err(e) = chan.send(&Message::StartVmResponse(VmopResult {
        result: 0,
        id: params.id,
        pid: std::process::id() as i32,
        ttyname: String::new(),
    })) {
        logging::fatal("failed to report vm start", e);
    }
    // vm.c: "Drop privileges further before starting the vcpu run
    // loop(s)", pledge "stdio vmm".
    crate::sandbox::confine_or_die(crate::sandbox::Kind::VmRunning, &sandbox_ctx);
    crate::sandbox::test_hook(crate::sandbox::Kind::VmRunning);
    let control = machine.control();
    let shutdown = Arc::new(AtomicBool::new(false));
    {
        let control = control.clone();
        let shutdown = shutdown.clone();
        let id = params.id;
        std::thread::Builder::new()
            .name("vmm".into())
            .spawn(move || dispatch_vmm(chan, control, shutdown, id))
            .unwrap_or_else(|e| logging::fatal("thread", e));
    }
    match machine.run() {
        Ok(Outcome::Halted) => 0,
        // A reset while a graceful stop is pending ends the VM.
        Ok(Outcome::Reboot) if shutdown.load(Ordering::SeqCst) => 0,
        Ok(Outcome::Reboot) => {
            log::debug!("{name}: guest reset, restarting");
            libc::EAGAIN
        }
        Err(e) => {
            log::warn!("{name}: {e}");
            e.errno()
        }
    }
}

fn set_nonblocking(fd: &OwnedFd) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let fl = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(fl | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// vm.c's `vm_dispatch_vmm`, on its own thread with a blocking socket.
fn dispatch_vmm(mut chan: ImsgChannel, control: Arc<Control>, shutdown: Arc<AtomicBool>, id: u32) {
    loop {
        let r = match chan.recv() {
            Ok(r) => r,
            Err(e) => {
                if !matches!(e, vmd_proto::ImsgError::Closed) {
                    log::warn!("vm {id}: vmm channel: {e}");
                }
                control.stop();
                return;
            }
        };
        let reply = |result: i32| VmopResult {
            result,
            id,
            pid: std::process::id() as i32,
            ttyname: String::new(),
        };
        let answer = match r.msg {
            Message::PauseVm(_) => {
                let ok = control.pause();
                Some(Message::PauseVmResponse(reply(if ok {
                    0
                } else {
                    libc::EALREADY
                })))
            }
            Message::UnpauseVm(_) => {
                let ok = control.unpause();
                Some(Message::UnpauseVmResponse(reply(if ok {
                    0
                } else {
                    libc::EINVAL
                })))
            }
            Message::VmReboot => {
                // vmctl stop without -f (vm.c's IMSG_VMDOP_VM_REBOOT): ask
                // the guest through vmmci; the vmm process treats the reset
                // that follows as the end.  vmmci's own timeouts (3 s
                // without an ack, 120 s after one) end a guest that does
                // not finish, and a guest without a vmmci driver cannot be
                // asked, so it is stopped at once, as vmd does.
                if !shutdown.swap(true, Ordering::SeqCst) {
                    match control.request_shutdown() {
                        ShutdownRequest::Asked => {
                            log::info!("vm {id}: asked the guest to shut down through vmmci")
                        }
                        ShutdownRequest::Stopped => log::info!(
                            "vm {id}: no vmmci driver in the guest to ask; stopping the vm"
                        ),
                    }
                }
                None
            }
            Message::CtlVerbose(v) => {
                logging::set_verbose(v);
                None
            }
            // The tap's MAC priv read (vm.c's IMSG_VMDOP_PRIV_GET_ADDR_RESPONSE),
            // for the NIC's DHCP server.
            Message::PrivGetAddrResponse(r) => {
                control.set_host_mac(r.nic_idx, r.addr);
                None
            }
            other => {
                log::debug!("vm {id}: unexpected {}", other.imsg_type().name());
                None
            }
        };
        if let Some(m) = answer {
            if chan.send_with(&m, r.peerid, 0, Vec::new()).is_err() {
                control.stop();
                return;
            }
        }
    }
}
