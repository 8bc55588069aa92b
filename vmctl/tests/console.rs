//! `vmctl console` with vmctl's own terminal client (Linux, where there
//! is no OpenBSD cu): a pty stands in for the VM's console, another one
//! for the user's terminal.
#![cfg(target_os = "linux")]

mod common;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt, PtyMaster};
use nix::sys::termios::{tcgetattr, LocalFlags};
use vmd_proto::msg::VM_STATE_RUNNING;

use common::{info, serve_info, FakeVmd};

/// A pty: its master and the path of its slave.
fn pty() -> (PtyMaster, String) {
    let m = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY).unwrap();
    grantpt(&m).unwrap();
    unlockpt(&m).unwrap();
    let name = ptsname_r(&m).unwrap();
    (m, name)
}

/// Reads `fd` until what was read contains `want`, or the end, or 10
/// seconds.
fn read_until(fd: BorrowedFd<'_>, want: &[u8]) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while !got.windows(want.len()).any(|w| w == want) && Instant::now() < deadline {
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(100u8)).unwrap() == 0 {
            continue;
        }
        let mut buf = [0u8; 1024];
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A fake vmd with one running VM `web` on `tty`.
fn vmd_with_console(tty: &str) -> FakeVmd<()> {
    let mut vm = info(1, 4242, "web", VM_STATE_RUNNING);
    vm.ttyname = tty.to_string();
    FakeVmd::new(move |ch| {
        serve_info(ch, &[vm]);
    })
}

#[test]
fn console_copies_both_ways_until_end_of_input() {
    let (vm, vm_tty) = pty();
    let vmd = vmd_with_console(&vm_tty);
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmctl"))
        .args(["console", "web"])
        .env("VMD_SOCKET", &vmd.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let hello = format!("Connected to {vm_tty} (speed 115200)\r\n");
    let got = read_until(stdout.as_fd(), hello.as_bytes());
    assert_eq!(got, hello.as_bytes());
    vmd.join();

    // The guest's output reaches stdout.
    (&vm).write_all(b"guest says hi\r\n").unwrap();
    assert!(contains(
        &read_until(stdout.as_fd(), b"hi\r\n"),
        b"guest says hi\r\n"
    ));
    // Input reaches the guest unchanged; without a terminal there are no
    // escapes.
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"~.typed\n").unwrap();
    assert_eq!(read_until(vm.as_fd(), b"typed\n"), b"~.typed\n");
    drop(stdin);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(read_until(stdout.as_fd(), b"[EOT]\n"), b"\r\n[EOT]\n");
}

#[test]
fn console_escape_disconnects_and_restores_the_terminal() {
    let (vm, vm_tty) = pty();
    let (term, term_tty) = pty();
    let slave: File = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&term_tty)
        .unwrap();
    assert!(tcgetattr(&slave)
        .unwrap()
        .local_flags
        .contains(LocalFlags::ICANON));
    let vmd = vmd_with_console(&vm_tty);
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmctl"))
        .args(["console", "web"])
        .env("VMD_SOCKET", &vmd.socket)
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let hello = format!("Connected to {vm_tty} (speed 115200)\r\n");
    assert_eq!(read_until(term.as_fd(), hello.as_bytes()), hello.as_bytes());
    vmd.join();
    // cu's terminal mode: no line editing, no echo.
    let t = tcgetattr(&slave).unwrap();
    assert!(!t.local_flags.contains(LocalFlags::ICANON));
    assert!(!t.local_flags.contains(LocalFlags::ECHO));

    (&term).write_all(b"ls -l\r").unwrap();
    assert_eq!(read_until(vm.as_fd(), b"\r"), b"ls -l\r");
    // A tilde inside a line is sent; `~~` at a line start sends one.
    (&term).write_all(b"a~b\r~~x\r").unwrap();
    assert_eq!(read_until(vm.as_fd(), b"x\r"), b"a~b\r~x\r");
    // `~.` at the start of a line ends the session.
    (&term).write_all(b"~.").unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    // "\r\n[EOT]\n" is printed once the terminal is restored, so its
    // newlines come out as CR LF.
    assert_eq!(read_until(term.as_fd(), b"[EOT]\r\n"), b"\r\r\n[EOT]\r\n");
    let t = tcgetattr(&slave).unwrap();
    assert!(t
        .local_flags
        .contains(LocalFlags::ICANON | LocalFlags::ECHO));
}
