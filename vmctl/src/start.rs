//! `vmctl start`'s request (vmctl.c `vm_start`): the checks vmctl makes
//! once connected, the `vmop_create_params` it sends, and the boot image
//! it opens itself so that vmd boots only what the user can read.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use std::io::Write;

use vmd_proto::config::{
    Interface, VMIFF_LOCAL, VMIFF_UP, VMM_MAX_NAME_LEN, VMOP_CREATE_CDROM, VMOP_CREATE_DISK,
    VMOP_CREATE_INSTANCE, VMOP_CREATE_KERNEL, VMOP_CREATE_MEMORY, VMOP_CREATE_NETWORK,
    VM_DEFAULT_MEMORY, VM_MAX_DISKS_PER_VM, VM_MAX_NICS_PER_VM, VM_NAME_MAX,
};
use vmd_proto::msg::{VmDisk, VmopCreateParams};

use crate::args::{StartArgs, LOCAL_NIC, PATH_MAX};
use crate::fail::{warnx, Fail};

/// The request for `a` and the boot image to pass with it.
pub fn request(
    a: &StartArgs,
    err: &mut dyn Write,
) -> Result<(VmopCreateParams, Option<File>), Fail> {
    let mut flags = 0;
    for (given, flag) in [
        (a.memory != 0, VMOP_CREATE_MEMORY),
        (!a.nics.is_empty(), VMOP_CREATE_NETWORK),
        (!a.disks.is_empty(), VMOP_CREATE_DISK),
        (a.boot.is_some(), VMOP_CREATE_KERNEL),
        (a.iso.is_some(), VMOP_CREATE_CDROM),
        (a.instance.is_some(), VMOP_CREATE_INSTANCE),
    ] {
        if given {
            flags |= flag;
        }
    }
    let mut memory = a.memory;
    if a.instance.is_none() && flags != 0 {
        if memory == 0 {
            memory = VM_DEFAULT_MEMORY;
        }
        let kernel = a.boot.is_some();
        if a.disks.len() > VM_MAX_DISKS_PER_VM {
            return Err(Fail::errx("too many disks"));
        }
        if !kernel && a.disks.is_empty() {
            warnx(err, "starting without disks");
            if a.iso.is_none() {
                return Err(Fail::errx("no kernel or disk/cdrom specified"));
            }
        }
        if a.nics.len() > VM_MAX_NICS_PER_VM {
            return Err(Fail::errx("too many network interfaces"));
        }
        if !kernel && a.nics.is_empty() {
            warnx(err, "starting without network interfaces");
        }
    }
    // vmctl checks the counts only for new VMs, but vmop_create_params
    // has room for no more: instances are held to them too.
    if a.disks.len() > VM_MAX_DISKS_PER_VM {
        return Err(Fail::errx("too many disks"));
    }
    if a.nics.len() > VM_MAX_NICS_PER_VM {
        return Err(Fail::errx("too many network interfaces"));
    }

    let mut disks = Vec::new();
    for (path, format) in &a.disks {
        if path.len() >= PATH_MAX {
            return Err(Fail::errx("disk path too long"));
        }
        disks.push(VmDisk {
            path: path.clone(),
            format: *format,
            bases: 0,
        });
    }
    let mut interfaces = Vec::new();
    for nic in &a.nics {
        let mut i = Interface {
            flags: VMIFF_UP,
            ..Interface::default()
        };
        if nic == LOCAL_NIC {
            i.flags |= VMIFF_LOCAL;
        } else if !nic.is_empty() {
            if nic.len() >= VM_NAME_MAX {
                return Err(Fail::errx("interface name too long"));
            }
            i.switch = Some(nic.clone());
        }
        interfaces.push(i);
    }
    if let Some(name) = &a.target.name {
        check_name(name)?;
    }
    let kernel = match &a.boot {
        Some(path) => Some(open_kernel(path)?),
        None => None,
    };
    if a.iso.as_ref().is_some_and(|p| p.len() >= PATH_MAX) {
        return Err(Fail::errx("cdrom name too long"));
    }
    if a.instance
        .as_ref()
        .is_some_and(|n| n.len() >= VMM_MAX_NAME_LEN)
    {
        return Err(Fail::errx("instance vm name too long"));
    }

    let params = VmopCreateParams {
        id: a.target.id,
        name: a.target.name.clone().unwrap_or_default(),
        flags,
        ncpus: 1,
        memory,
        // For vmd's messages only: the image goes as a descriptor.
        kernel: a.boot.as_ref().map(|p| p.to_string_lossy().into_owned()),
        boot_device: a.boot_device,
        disks,
        cdrom: a.iso.clone(),
        interfaces,
        instance: a.instance.clone(),
        ..VmopCreateParams::default()
    };
    Ok((params, kernel))
}

/// VM names: alphanumerics, `.`, `-` and `_`, not starting with one of
/// the last three, shorter than 64 bytes.
fn check_name(name: &str) -> Result<(), Fail> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    if name.starts_with(['-', '.', '_']) || !name.chars().all(ok_char) {
        return Err(Fail::errx("invalid VM name"));
    }
    if name.len() >= VMM_MAX_NAME_LEN {
        return Err(Fail::errx("vm name too long"));
    }
    Ok(())
}

/// Opens the boot image (ELF kernel or BIOS) for vmd.
fn open_kernel(path: &Path) -> Result<File, Fail> {
    if path.as_os_str().len() >= PATH_MAX {
        return Err(Fail::errx("kernel name too long"));
    }
    // O_NONBLOCK until the type is known: open(2) of a FIFO would wait
    // for a writer.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| Fail::io(format!("cannot open kernel '{}'", path.display()), &e))?;
    let meta = f.metadata().map_err(|e| Fail::io("fstat kernel", &e))?;
    if !meta.is_file() {
        return Err(Fail::errx("kernel must be a regular file"));
    }
    // vmd reads the descriptor, whose status flags it shares.
    let fl = fcntl(&f, FcntlArg::F_GETFL).map_err(|e| Fail::err("fcntl kernel", e as i32))?;
    let fl = OFlag::from_bits_truncate(fl) & !OFlag::O_NONBLOCK;
    fcntl(&f, FcntlArg::F_SETFL(fl)).map_err(|e| Fail::err("fcntl kernel", e as i32))?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Target;
    use crate::testdir::Dir;
    use vmd_proto::config::DiskFormat;

    fn run(a: &StartArgs) -> (Result<(VmopCreateParams, Option<File>), Fail>, String) {
        let mut err = Vec::new();
        let r = request(a, &mut err);
        (r, String::from_utf8(err).unwrap())
    }

    fn named(name: &str) -> StartArgs {
        StartArgs {
            target: Target {
                id: 0,
                name: Some(name.into()),
            },
            ..StartArgs::default()
        }
    }

    #[test]
    fn start_configured_vm_by_name_or_id() {
        let (r, w) = run(&named("web"));
        let (p, k) = r.unwrap();
        assert!(w.is_empty() && k.is_none());
        assert_eq!(p.name, "web");
        assert_eq!((p.id, p.flags, p.memory, p.ncpus), (0, 0, 0, 1));

        let a = StartArgs {
            target: Target { id: 7, name: None },
            ..StartArgs::default()
        };
        let (p, _) = run(&a).0.unwrap();
        assert_eq!((p.id, p.name.as_str()), (7, ""));
    }

    #[test]
    fn start_new_vm_defaults_and_warnings() {
        let mut a = named("new");
        a.disks.push(("/tmp/d.img".into(), DiskFormat::Raw));
        let (r, w) = run(&a);
        let p = r.unwrap().0;
        assert_eq!(w, "vmctl: starting without network interfaces\n");
        assert_eq!(p.flags, VMOP_CREATE_DISK);
        assert_eq!(p.memory, VM_DEFAULT_MEMORY);
        assert_eq!(p.disks[0].path, "/tmp/d.img");

        let mut a = named("new");
        a.iso = Some("/tmp/install.iso".into());
        a.nics = vec![LOCAL_NIC.into(), "uplink".into(), String::new()];
        let (r, w) = run(&a);
        let p = r.unwrap().0;
        assert_eq!(w, "vmctl: starting without disks\n");
        assert_eq!(p.flags, VMOP_CREATE_CDROM | VMOP_CREATE_NETWORK);
        assert_eq!(p.interfaces[0].flags, VMIFF_UP | VMIFF_LOCAL);
        assert_eq!(p.interfaces[0].switch, None);
        assert_eq!(p.interfaces[1].switch.as_deref(), Some("uplink"));
        assert_eq!(p.interfaces[1].flags, VMIFF_UP);
        assert_eq!(p.interfaces[2].switch, None);

        let mut a = named("new");
        a.memory = 1 << 30;
        let (r, w) = run(&a);
        assert_eq!(
            r.unwrap_err(),
            Fail::errx("no kernel or disk/cdrom specified")
        );
        assert_eq!(w, "vmctl: starting without disks\n");
    }

    #[test]
    fn start_limits_and_names() {
        let mut a = named("x");
        a.disks = vec![("/d".into(), DiskFormat::Raw); 5];
        assert_eq!(run(&a).0.unwrap_err(), Fail::errx("too many disks"));
        let mut a = named("x");
        a.disks = vec![("/d".into(), DiskFormat::Raw)];
        a.nics = vec![String::new(); 5];
        assert_eq!(
            run(&a).0.unwrap_err(),
            Fail::errx("too many network interfaces")
        );
        let mut a = named("x");
        a.disks = vec![("/d".into(), DiskFormat::Raw)];
        a.nics = vec!["s".repeat(64)];
        assert_eq!(
            run(&a).0.unwrap_err(),
            Fail::errx("interface name too long")
        );
        for bad in ["-x", ".x", "_x", "a b", "a/b", "é"] {
            assert_eq!(
                run(&named(bad)).0.unwrap_err(),
                Fail::errx("invalid VM name"),
                "{bad}"
            );
        }
        assert!(run(&named("a.b-c_9")).0.is_ok());
    }

    #[test]
    fn start_opens_the_boot_image() {
        let dir = Dir::new("start-kernel");
        let mut a = named("k");
        let bsd = dir.file("bsd", b"\x7fELF");
        a.boot = Some(bsd.clone().into());
        let (r, w) = run(&a);
        let (p, k) = r.unwrap();
        assert!(w.is_empty(), "a kernel needs neither disks nor NICs: {w}");
        assert!(k.is_some());
        assert_eq!(p.flags, VMOP_CREATE_KERNEL);
        assert_eq!(p.kernel, Some(bsd));

        a.boot = Some(dir.path("").into());
        assert_eq!(
            run(&a).0.unwrap_err(),
            Fail::errx("kernel must be a regular file")
        );
        // A FIFO: refused at once, not waited on.
        let fifo = dir.path("fifo");
        nix::unistd::mkfifo(
            fifo.as_str(),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        a.boot = Some(fifo.into());
        assert_eq!(
            run(&a).0.unwrap_err(),
            Fail::errx("kernel must be a regular file")
        );
        let gone = dir.path("gone");
        a.boot = Some(gone.clone().into());
        assert_eq!(
            run(&a).0.unwrap_err(),
            Fail::errx(format!(
                "cannot open kernel '{gone}': No such file or directory"
            ))
        );
    }
}
