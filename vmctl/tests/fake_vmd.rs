//! vmctl against a fake vmd: a test binds the control socket at a
//! temporary path, points `VMD_SOCKET` at it, runs the vmctl binary, and
//! answers its requests with canned messages.

mod common;

use std::io::Read;
use std::path::Path;

use common::{info, recv, result, send, serve_info, vmctl, vmctl_os, FakeVmd, TempDir};

use vmd_proto::config::{DiskFormat, VMIFF_LOCAL, VMIFF_UP, VMOP_CREATE_DISK, VMOP_CREATE_KERNEL};
use vmd_proto::config::{VMOP_CREATE_MEMORY, VMOP_CREATE_NETWORK};
use vmd_proto::msg::{
    VmopId, VmopInfoResult, CONFIG_VMS, VMD_BIOS_MISSING, VMOP_FORCE, VMOP_WAIT, VM_STATE_DISABLED,
    VM_STATE_PAUSED, VM_STATE_RUNNING,
};
use vmd_proto::Message;

const HEADER: &str = "   ID   PID VCPUS  MAXMEM  CURMEM     TTY        OWNER    STATE NAME\n";

fn three_vms() -> Vec<VmopInfoResult> {
    vec![
        info(1, 1234, "web", VM_STATE_RUNNING),
        info(2, 0, "idle", VM_STATE_DISABLED),
        info(3, 1250, "db", VM_STATE_RUNNING | VM_STATE_PAUSED),
    ]
}

#[test]
fn status_prints_the_table() {
    let vmd = FakeVmd::new(|ch| serve_info(ch, &three_vms()));
    let (req, r) = vmd.run(&["status"]);
    assert_eq!(req, Message::GetInfoVmRequest(None));
    assert_eq!(r.stderr, "");
    assert_eq!(r.status, 0);
    assert_eq!(
        r.stdout,
        format!(
            "{HEADER}\
             \x20   1  1234     1    512M    300M   ttyp1         root  running web\n\
             \x20   2     -     1    512M       -       -         root  stopped idle\n\
             \x20   3  1250     1    512M    300M   ttyp3         root   paused db\n"
        )
    );
}

#[test]
fn status_filters_by_name_and_running() {
    let vmd = FakeVmd::new(|ch| serve_info(ch, &three_vms()));
    let (_, r) = vmd.run(&["sh", "-r", "db"]);
    assert_eq!(r.status, 0);
    assert_eq!(
        r.stdout,
        format!("{HEADER}    3  1250     1    512M    300M   ttyp3         root   paused db\n")
    );

    // Nothing to show: the header, and exit 1.
    let vmd = FakeVmd::new(|ch| serve_info(ch, &[info(2, 0, "idle", 0)]));
    let (_, r) = vmd.run(&["stat", "-r"]);
    assert_eq!(
        (r.status, r.stdout.as_str(), r.stderr.as_str()),
        (1, HEADER, "")
    );
    let vmd = FakeVmd::new(|ch| serve_info(ch, &[]));
    let (_, r) = vmd.run(&["status"]);
    assert_eq!((r.status, r.stdout.as_str()), (1, HEADER));
}

#[test]
fn start_sends_the_request_and_the_kernel() {
    let dir = TempDir::new();
    let kernel = dir.path("bsd");
    std::fs::write(&kernel, b"\x7fELF kernel image").unwrap();
    let disk = dir.path("disk.img");
    std::fs::write(&disk, b"").unwrap();
    let vmd = FakeVmd::new(|ch| {
        let r = recv(ch);
        let mut fds = r.fds;
        assert_eq!(fds.len(), 1, "the boot image comes with the request");
        let mut kernel = Vec::new();
        std::fs::File::from(fds.remove(0))
            .read_to_end(&mut kernel)
            .unwrap();
        send(ch, Message::StartVmResponse(result(0, 5, "/dev/ttyp5")));
        (r.msg, kernel)
    });
    let (kernel_s, disk_s) = (
        kernel.to_string_lossy().into_owned(),
        disk.to_string_lossy().into_owned(),
    );
    let ((msg, sent), r) = vmd.run(&[
        "start", "-b", &kernel_s, "-m", "1G", "-L", "-i", "2", "-d", &disk_s, "web",
    ]);
    assert_eq!(
        r.stderr,
        "vmctl: started vm 5 successfully, tty /dev/ttyp5\n"
    );
    assert_eq!(r.status, 0);
    assert_eq!(sent, b"\x7fELF kernel image");
    let Message::StartVmRequest(p) = msg else {
        panic!("{msg:?}")
    };
    let real = |p: &Path| p.canonicalize().unwrap().to_string_lossy().into_owned();
    assert_eq!((p.id, p.name.as_str(), p.ncpus), (0, "web", 1));
    assert_eq!(
        p.flags,
        VMOP_CREATE_MEMORY | VMOP_CREATE_NETWORK | VMOP_CREATE_DISK | VMOP_CREATE_KERNEL
    );
    assert_eq!(p.memory, 1 << 30);
    assert_eq!(p.kernel, Some(real(&kernel)));
    assert_eq!(p.disks.len(), 1);
    assert_eq!(p.disks[0].path, real(&disk));
    assert_eq!(p.disks[0].format, DiskFormat::Raw);
    assert_eq!(p.interfaces.len(), 2);
    assert_eq!(p.interfaces[0].flags, VMIFF_UP | VMIFF_LOCAL);
    assert_eq!(p.interfaces[1].flags, VMIFF_UP);
    assert_eq!(p.interfaces[1].switch, None);
}

#[test]
fn start_reports_vmd_errors() {
    let vmd = FakeVmd::new(|ch| {
        let r = recv(ch);
        assert!(r.fds.is_empty());
        send(
            ch,
            Message::StartVmResponse(result(VMD_BIOS_MISSING, 0, "")),
        );
        r.msg
    });
    let (msg, r) = vmd.run(&["start", "web"]);
    let Message::StartVmRequest(p) = msg else {
        panic!("{msg:?}")
    };
    assert_eq!((p.name.as_str(), p.flags, p.memory), ("web", 0, 0));
    assert_eq!(
        (r.status, r.stderr.as_str()),
        (1, "vmctl: vmm bios firmware file not found.\n")
    );

    let vmd = FakeVmd::new(|ch| {
        recv(ch);
        send(ch, Message::StartVmResponse(result(libc::EBUSY, 0, "")));
    });
    let (_, r) = vmd.run(&["start", "3"]);
    assert_eq!(
        (r.status, r.stderr.as_str()),
        (1, "vmctl: start vm command failed: Device busy\n")
    );
}

#[test]
fn stop_wait_reports_termination() {
    let vmd = FakeVmd::new(|ch| {
        let r = recv(ch);
        send(ch, Message::TerminateVmEvent(result(0, 5, "")));
        r.msg
    });
    let (msg, r) = vmd.run(&["stop", "-w", "web"]);
    assert_eq!(
        msg,
        Message::TerminateVmRequest(VmopId {
            id: 0,
            name: "web".into(),
            uid: 0,
            flags: VMOP_WAIT
        })
    );
    assert_eq!(
        (r.status, r.stderr.as_str()),
        (0, "stopping vm web: terminated vm 5\n")
    );
}

#[test]
fn stop_answers() {
    let vmd = FakeVmd::new(|ch| {
        let r = recv(ch);
        send(ch, Message::TerminateVmResponse(result(0, 5, "")));
        r.msg
    });
    let (msg, r) = vmd.run(&["stop", "-f", "5"]);
    assert_eq!(
        msg,
        Message::TerminateVmRequest(VmopId {
            id: 5,
            name: String::new(),
            uid: 0,
            flags: VMOP_FORCE
        })
    );
    assert_eq!(
        (r.status, r.stderr.as_str()),
        (0, "stopping vm: requested to shutdown vm 5\n")
    );

    let vmd = FakeVmd::new(|ch| {
        recv(ch);
        send(
            ch,
            Message::TerminateVmResponse(result(libc::ENOENT, 0, "")),
        );
    });
    let (_, r) = vmd.run(&["stop", "nosuch"]);
    assert_eq!(
        (r.status, r.stderr.as_str()),
        (1, "stopping vm nosuch: vm not found\n")
    );
}

/// `stop -a -w` stops every running VM at once, on a connection each: the
/// fake vmd answers none of the requests before it has all of them (as a
/// slow guest would keep vmctl waiting), and answers the last one first;
/// vmctl prints the lines in the list's order.
#[test]
fn stop_all_stops_each_running_vm_by_name_at_once() {
    let vmd = FakeVmd::with_clients(|a| {
        let mut seen = vec![serve_info(&mut a.next(), &three_vms())];
        let (mut web, mut db) = (a.next(), a.next());
        seen.push(recv(&mut web).msg);
        seen.push(recv(&mut db).msg);
        send(&mut db, Message::TerminateVmEvent(result(0, 3, "")));
        send(&mut web, Message::TerminateVmEvent(result(0, 1, "")));
        seen
    });
    let (seen, r) = vmd.run(&["stop", "-aw"]);
    let stop = |name: &str| {
        Message::TerminateVmRequest(VmopId {
            id: 0,
            name: name.into(),
            uid: 0,
            flags: VMOP_WAIT,
        })
    };
    assert_eq!(
        seen,
        vec![Message::GetInfoVmRequest(None), stop("web"), stop("db")]
    );
    assert_eq!(
        (r.status, r.stderr.as_str()),
        (
            0,
            "stopping vm web: terminated vm 1\nstopping vm db: terminated vm 3\n"
        )
    );
}

#[test]
fn wait_pause_unpause() {
    let vmd = FakeVmd::new(|ch| {
        let r = recv(ch);
        send(ch, Message::TerminateVmEvent(result(0, 2, "")));
        r.msg
    });
    let (msg, r) = vmd.run(&["wait", "db"]);
    assert_eq!(
        msg,
        Message::WaitVmRequest(VmopId {
            id: 0,
            name: "db".into(),
            uid: 0,
            flags: 0
        })
    );
    assert_eq!(
        (r.status, r.stderr.as_str()),
        (0, "waiting for vm db: terminated vm 2\n")
    );

    let vmd = FakeVmd::new(|ch| {
        let r = recv(ch);
        send(ch, Message::PauseVmResponse(result(0, 2, "")));
        r.msg
    });
    let (msg, r) = vmd.run(&["p", "2"]);
    assert_eq!(
        msg,
        Message::PauseVm(VmopId {
            id: 2,
            ..VmopId::default()
        })
    );
    assert_eq!(
        (r.status, r.stderr.as_str()),
        (0, "vmctl: paused vm 2 successfully\n")
    );

    let vmd = FakeVmd::new(|ch| {
        recv(ch);
        send(ch, Message::UnpauseVmResponse(result(libc::EINVAL, 2, "")));
    });
    let (_, r) = vmd.run(&["unpause", "db"]);
    assert_eq!(
        (r.status, r.stderr.as_str()),
        (1, "vmctl: unpause vm command failed: Invalid argument\n")
    );
}

#[test]
fn simple_requests_and_ctl_fail() {
    for (args, want) in [
        (
            vec!["load", "/etc/more.conf"],
            Message::Load("/etc/more.conf".into()),
        ),
        (vec!["reload"], Message::Reload),
        (vec!["reset", "vms"], Message::CtlReset(CONFIG_VMS)),
        (vec!["log", "verbose"], Message::CtlVerbose(2)),
    ] {
        let vmd = FakeVmd::new(|ch| {
            let r = recv(ch);
            send(ch, Message::CtlOk);
            r.msg
        });
        let (msg, r) = vmd.run(&args);
        assert_eq!(msg, want);
        assert_eq!((r.status, r.stderr.as_str()), (0, ""), "{args:?}");
    }

    let vmd = FakeVmd::new(|ch| {
        recv(ch);
        send(ch, Message::CtlFail(Some(libc::EPERM)));
    });
    let (_, r) = vmd.run(&["reload"]);
    assert_eq!(
        (r.status, r.stderr.as_str()),
        (1, "vmctl: command failed: Operation not permitted\n")
    );
    let vmd = FakeVmd::new(|ch| {
        recv(ch);
        send(ch, Message::CtlFail(Some(0)));
    });
    let (_, r) = vmd.run(&["reset"]);
    assert_eq!(
        (r.status, r.stderr.as_str()),
        (1, "vmctl: command failed\n")
    );
    // CTL_FAIL ends any command, after what it printed already.
    let vmd = FakeVmd::new(|ch| {
        recv(ch);
        send(ch, Message::CtlFail(Some(libc::EPERM)));
    });
    let (_, r) = vmd.run(&["stop", "web"]);
    assert_eq!(
        (r.status, r.stderr.as_str()),
        (
            1,
            "stopping vm web: vmctl: command failed: Operation not permitted\n"
        )
    );
}

#[test]
fn console_without_a_tty() {
    let vmd = FakeVmd::new(|ch| serve_info(ch, &three_vms()));
    let (_, r) = vmd.run(&["console", "idle"]);
    assert_eq!(
        (r.status, r.stderr.as_str()),
        (1, "vmctl: console not found\n")
    );
    let vmd = FakeVmd::new(|ch| serve_info(ch, &three_vms()));
    let (_, r) = vmd.run(&["console", "0"]);
    assert_eq!(
        (r.status, r.stderr.as_str()),
        (1, "vmctl: console not found\n")
    );
}

#[test]
fn no_daemon_or_a_closed_connection() {
    let dir = TempDir::new();
    let sock = dir.path("absent.sock");
    let r = vmctl(&sock, &["status"]);
    assert_eq!(r.status, 1);
    assert_eq!(
        r.stderr,
        format!(
            "vmctl: connect: {}: No such file or directory\n",
            sock.display()
        )
    );

    let vmd = FakeVmd::new(|ch| {
        recv(ch);
    });
    let (_, r) = vmd.run(&["status"]);
    assert_eq!((r.status, r.stderr.as_str()), (1, "vmctl: pipe closed\n"));
}

#[test]
fn create_needs_no_daemon() {
    let dir = TempDir::new();
    let img = dir.path("disk.img");
    let img_s = img.to_string_lossy().into_owned();
    let r = vmctl(&dir.path("absent.sock"), &["create", "-s", "64M", &img_s]);
    assert_eq!(
        (r.status, r.stderr.as_str()),
        (0, "vmctl: raw imagefile created\n")
    );
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 64 << 20);
    let r = vmctl(&dir.path("absent.sock"), &["create", "-s", "64M", &img_s]);
    assert_eq!(
        (r.status, r.stderr.as_str()),
        (1, "vmctl: create imagefile operation failed: File exists\n")
    );
    let r = vmctl(&dir.path("absent.sock"), &["create", &img_s]);
    assert_eq!(
        (r.status, r.stderr),
        (
            1,
            format!(
                "could not create {img_s}: missing size argument\n\
                 usage:\tvmctl [-v] create [-b base | -i disk] [-s size] disk\n"
            )
        )
    );
}

/// File names and the socket's name are bytes: a name that is not UTF-8
/// is used as it is (create), or refused where vmd would get it as text
/// (load, start -d), never turned into another name and never a panic.
#[test]
fn arguments_that_are_not_utf8() {
    use std::ffi::{OsStr, OsString};
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let dir = TempDir::new();
    let mut img = dir.0.clone().into_os_string().into_vec();
    img.extend_from_slice(b"/d\xff.img");
    let img = OsString::from_vec(img);
    let sock = dir.path("absent.sock");
    let r = vmctl_os(&sock, &[OsStr::new("create"), OsStr::new("-s1M"), &img]);
    assert_eq!(
        (r.status, r.stderr.as_str()),
        (0, "vmctl: raw imagefile created\n")
    );
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 1 << 20);
    let names: Vec<Vec<u8>> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_vec())
        .collect();
    assert_eq!(names, [b"d\xff.img".to_vec()]);
    let r = vmctl_os(
        &sock,
        &[OsStr::new("load"), OsStr::from_bytes(b"/etc/\xff.conf")],
    );
    assert_eq!(
        (r.status, r.stderr.as_str()),
        (1, "vmctl: /etc/\u{fffd}.conf: Illegal byte sequence\n")
    );
    let r = vmctl_os(
        &sock,
        &[OsStr::new("start"), OsStr::new("-d"), &img, OsStr::new("x")],
    );
    assert_eq!(r.status, 1);
    assert!(
        r.stderr.starts_with("vmctl: invalid disk path: "),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.ends_with(".img: Illegal byte sequence\n"),
        "{}",
        r.stderr
    );
    // VMD_SOCKET names the socket byte for byte.
    let vmd = FakeVmd::with_clients(|a| serve_info(&mut a.next(), &three_vms()));
    let mut odd = dir.0.clone().into_os_string().into_vec();
    odd.extend_from_slice(b"/s\xfe.sock");
    let odd = std::path::PathBuf::from(OsString::from_vec(odd));
    std::os::unix::fs::symlink(&vmd.socket, &odd).unwrap();
    let r = vmctl(&odd, &["status"]);
    vmd.join();
    assert_eq!(r.status, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with(HEADER));
}
