//! A fake vmd for vmctl's tests: it binds the control socket at a
//! temporary path, vmctl finds it through `VMD_SOCKET`, and a script
//! answers vmctl's requests with canned messages.
#![allow(dead_code)]

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmd_proto::msg::{VmopInfoResult, VmopResult};
use vmd_proto::{ImsgChannel, Message, Received};

/// A scratch directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "vmctl-fake-vmd-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What vmctl printed and how it exited.
#[derive(Debug)]
pub struct Run {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn vmctl(socket: &Path, args: &[&str]) -> Run {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    vmctl_os(socket, &args)
}

/// [`vmctl`] with arguments that need not be UTF-8.
pub fn vmctl_os(socket: &Path, args: &[&std::ffi::OsStr]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_vmctl"))
        .args(args)
        .env("VMD_SOCKET", socket)
        .stdin(Stdio::null())
        .output()
        .expect("run vmctl");
    Run {
        status: out.status.code().expect("exit status"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A fake vmd serving one connection with `script`, which gets the
/// channel and returns what the test wants to look at.
pub struct FakeVmd<T> {
    _dir: TempDir,
    pub socket: PathBuf,
    thread: JoinHandle<T>,
}

/// The fake vmd's listening socket: the next connection of vmctl.
pub struct Accept(UnixListener);

impl Accept {
    pub fn next(&mut self) -> ImsgChannel {
        let deadline = Instant::now() + Duration::from_secs(20);
        let stream = loop {
            match self.0.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "vmctl never connected");
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        stream.set_nonblocking(false).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        ImsgChannel::new(stream)
    }
}

impl<T: Send + 'static> FakeVmd<T> {
    pub fn new(script: impl FnOnce(&mut ImsgChannel) -> T + Send + 'static) -> FakeVmd<T> {
        Self::with_clients(move |a| script(&mut a.next()))
    }

    /// A fake vmd whose script accepts vmctl's connections itself.
    pub fn with_clients(script: impl FnOnce(&mut Accept) -> T + Send + 'static) -> FakeVmd<T> {
        let dir = TempDir::new();
        let socket = dir.path("vmd.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        listener.set_nonblocking(true).unwrap();
        let thread = std::thread::spawn(move || script(&mut Accept(listener)));
        FakeVmd {
            _dir: dir,
            socket,
            thread,
        }
    }

    /// Runs vmctl against this daemon; the script's result and vmctl's.
    pub fn run(self, args: &[&str]) -> (T, Run) {
        let r = vmctl(&self.socket, args);
        (self.join(), r)
    }

    /// The script's result.
    pub fn join(self) -> T {
        self.thread.join().expect("fake vmd")
    }
}

pub fn recv(ch: &mut ImsgChannel) -> Received {
    ch.recv().expect("a request from vmctl")
}

pub fn send(ch: &mut ImsgChannel, msg: Message) {
    ch.send(&msg).expect("answer vmctl");
}

pub fn result(result: i32, id: u32, tty: &str) -> VmopResult {
    VmopResult {
        result,
        id,
        pid: 0,
        ttyname: tty.into(),
    }
}

pub fn info(id: u32, pid: i32, name: &str, state: u32) -> VmopInfoResult {
    VmopInfoResult {
        memory_size: 512 << 20,
        used_size: if pid != 0 { 300 << 20 } else { 0 },
        ncpus: 1,
        vcpu_state: vec![0],
        creator_pid: pid,
        id,
        name: name.into(),
        ttyname: if pid != 0 {
            format!("/dev/ttyp{id}")
        } else {
            String::new()
        },
        uid: 0,
        gid: None,
        state,
    }
}

/// Answers GET_INFO_VM_REQUEST with `list`; the request.
pub fn serve_info(ch: &mut ImsgChannel, list: &[VmopInfoResult]) -> Message {
    let req = recv(ch).msg;
    for vm in list {
        send(ch, Message::GetInfoVmData(vm.clone()));
    }
    send(ch, Message::GetInfoVmEndData);
    req
}
