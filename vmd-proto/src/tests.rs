//! Tests of the imsg layer: payload round trips, framing across arbitrary
//! read boundaries, descriptor passing, limits, and hostile input.

use std::fs::File;
use std::io::{IoSlice, Read, Write};
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

use crate::codec;
use crate::config::{self, BootDevice, DiskFormat, GlobalConfig};
use crate::imsg::{ImsgHdr, IMSGF_HASFD, IMSG_HEADER_SIZE, MAX_IMSG_FDS, MAX_IMSG_PAYLOAD};
use crate::msg::*;
use crate::*;

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn create_params() -> VmopCreateParams {
    VmopCreateParams {
        id: 3,
        name: "openbsd-current".into(),
        owner: VmopOwner {
            uid: 1000,
            gid: Some(1000),
        },
        flags: config::VMOP_CREATE_MEMORY | config::VMOP_CREATE_DISK,
        checkaccess: config::VMOP_CREATE_DISK,
        ncpus: 2,
        memory: 2 << 30,
        sev: false,
        seves: true,
        kernel: Some("/bsd.rd".into()),
        boot_device: BootDevice::Cdrom,
        disks: vec![
            VmDisk {
                path: "/var/vm/disk.qcow2".into(),
                format: DiskFormat::Qcow2,
                bases: 2,
            },
            VmDisk {
                path: "/var/vm/raw.img".into(),
                format: DiskFormat::Raw,
                bases: 0,
            },
        ],
        cdrom: Some("/var/vm/install78.iso".into()),
        interfaces: vec![
            config::Interface {
                name: Some("tap3".into()),
                switch: Some("uplink".into()),
                group: Some("vms".into()),
                rdomain: 5,
                lladdr: [0xfe, 0xe1, 0xbb, 0xd1, 0x00, 0x01],
                flags: config::VMIFF_UP | config::VMIFF_RDOMAIN,
            },
            config::Interface::default(),
        ],
        instance: Some("base".into()),
        insowner: VmopOwner { uid: 0, gid: None },
        insflags: config::VMOP_CREATE_INSTANCE,
    }
}

fn vmop_id() -> VmopId {
    VmopId {
        id: 0,
        name: "web".into(),
        uid: 1000,
        flags: VMOP_FORCE | VMOP_WAIT,
    }
}

fn result(r: i32) -> VmopResult {
    VmopResult {
        result: r,
        id: 7,
        pid: 4242,
        ttyname: "/dev/ttyp3".into(),
    }
}

fn ifreq() -> VmopIfreq {
    VmopIfreq {
        id: 2,
        name: "tap0".into(),
        value: "vm2-if0-web".into(),
        addr: Some(IpAddr::V4(Ipv4Addr::new(100, 64, 2, 2))),
        mask: Some(IpAddr::V6(Ipv6Addr::new(0xffff, 0xffff, 0, 0, 0, 0, 0, 0))),
    }
}

fn viodev(t: ViodevMsgType) -> ViodevMsg {
    ViodevMsg {
        type_: t,
        reg: 0x12,
        io_sz: 4,
        vcpu: 1,
        irq: 9,
        state: IntrState::Deassert,
        data: Some(0xdead_beef),
        vq_idx: 1,
    }
}

/// A message of type `t` with a non-trivial payload.
fn sample(t: ImsgType) -> Message {
    use ImsgType as T;
    match t {
        T::CtlOk => Message::CtlOk,
        T::CtlFail => Message::CtlFail(Some(libc::EPERM)),
        T::CtlVerbose => Message::CtlVerbose(-2),
        T::CtlReset => Message::CtlReset(CONFIG_ALL),
        T::StartVmRequest => Message::StartVmRequest(create_params()),
        T::StartVmCdrom => Message::StartVmCdrom,
        T::StartVmDisk => Message::StartVmDisk(DiskFd { index: 1, base: 2 }),
        T::StartVmIf => Message::StartVmIf(3),
        T::StartVmEnd => Message::StartVmEnd,
        T::StartVmResponse => Message::StartVmResponse(result(0)),
        T::PauseVm => Message::PauseVm(vmop_id()),
        T::PauseVmResponse => Message::PauseVmResponse(result(libc::EALREADY)),
        T::UnpauseVm => Message::UnpauseVm(vmop_id()),
        T::UnpauseVmResponse => Message::UnpauseVmResponse(result(0)),
        T::WaitVmRequest => Message::WaitVmRequest(vmop_id()),
        T::TerminateVmRequest => Message::TerminateVmRequest(vmop_id()),
        T::TerminateVmResponse => Message::TerminateVmResponse(result(VMD_VM_STOP_INVALID)),
        T::TerminateVmEvent => Message::TerminateVmEvent(result(libc::EAGAIN)),
        T::GetInfoVmRequest => Message::GetInfoVmRequest(Some(vmop_id())),
        T::GetInfoVmData => Message::GetInfoVmData(VmopInfoResult {
            memory_size: 512 << 20,
            used_size: 100 << 20,
            ncpus: 2,
            vcpu_state: vec![1, 0],
            creator_pid: 99,
            id: 1,
            name: "web".into(),
            ttyname: "/dev/ttyp0".into(),
            uid: 0,
            gid: None,
            state: VM_STATE_RUNNING | VM_STATE_SHUTDOWN,
        }),
        T::GetInfoVmEndData => Message::GetInfoVmEndData,
        T::Load => Message::Load("/etc/vm.conf.local".into()),
        T::ReceiveVmmFd => Message::ReceiveVmmFd,
        T::ReceivePspFd => Message::ReceivePspFd,
        T::Reload => Message::Reload,
        T::PrivIfdescr => Message::PrivIfdescr(ifreq()),
        T::PrivIfadd => Message::PrivIfadd(ifreq()),
        T::PrivIfexists => Message::PrivIfexists(ifreq()),
        T::PrivIfup => Message::PrivIfup(ifreq()),
        T::PrivIfdown => Message::PrivIfdown(ifreq()),
        T::PrivIfgroup => Message::PrivIfgroup(ifreq()),
        T::PrivIfaddr => Message::PrivIfaddr(ifreq()),
        T::PrivIfaddr6 => Message::PrivIfaddr6(VmopIfreq {
            addr: Some(IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2))),
            mask: None,
            ..ifreq()
        }),
        T::PrivIfrdomain => Message::PrivIfrdomain(ifreq()),
        T::PrivGetAddr => Message::PrivGetAddr(VmopAddrReq {
            vmid: 4,
            nic_idx: 1,
        }),
        T::PrivGetAddrResponse => Message::PrivGetAddrResponse(VmopAddrResult {
            vmid: 4,
            nic_idx: 1,
            addr: [0xfe, 0xe1, 0xba, 0xd0, 0x12, 0x34],
        }),
        T::VmShutdown => Message::VmShutdown,
        T::VmReboot => Message::VmReboot,
        T::Config => Message::Config(GlobalConfig {
            inet6: true,
            ..GlobalConfig::default()
        }),
        T::Done => Message::Done,
        T::DevHostmac => Message::DevHostmac([0xfe, 0xe1, 0xba, 0xd0, 0, 1]),
        T::DevMsg => Message::DevMsg(viodev(ViodevMsgType::IoWrite)),
        T::DevVionetMsg => Message::DevVionetMsg(viodev(ViodevMsgType::Kick)),
    }
}

fn raw(type_: u32, peerid: u32, data: &[u8], nfds: usize) -> Vec<u8> {
    let hdr = ImsgHdr {
        type_,
        len: (IMSG_HEADER_SIZE + data.len()) as u16,
        flags: if nfds == 0 {
            0
        } else {
            IMSGF_HASFD | ((nfds as u16) << 8)
        },
        peerid,
        pid: 77,
    };
    let mut v = hdr.to_bytes().to_vec();
    v.extend_from_slice(data);
    v
}

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe().unwrap()
}

/// Sends raw bytes with descriptors, bypassing the channel's checks.
fn send_raw(sock: &UnixStream, bytes: &[u8], fds: &[OwnedFd]) {
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !borrowed.is_empty() {
        assert!(control.push(SendAncillaryMessage::ScmRights(&borrowed)));
    }
    let n = sendmsg(
        sock,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::empty(),
    )
    .unwrap();
    assert_eq!(n, bytes.len());
}

#[test]
fn proc_type_numbers_follow_the_catalogue() {
    assert_eq!(ImsgType::ALL.len(), 43);
    for (i, t) in ImsgType::ALL.iter().enumerate() {
        assert_eq!(*t as u32, i as u32);
        assert_eq!(ImsgType::from_u32(i as u32), Some(*t));
    }
    assert_eq!(ImsgType::from_u32(43), None);
    assert_eq!(ImsgType::from_u32(u32::MAX), None);
    assert_eq!(ImsgType::CtlReset as u32, 3);
    assert_eq!(ImsgType::StartVmRequest as u32, 4);
    assert_eq!(ImsgType::TerminateVmEvent as u32, 17);
    assert_eq!(ImsgType::PrivIfdescr as u32, 25);
    assert_eq!(ImsgType::Config.name(), "IMSG_VMDOP_CONFIG");
    assert_eq!(ImsgType::DevVionetMsg as u32, 42);
}

#[test]
fn proc_every_payload_round_trips() {
    for &t in ImsgType::ALL {
        let m = sample(t);
        assert_eq!(m.imsg_type(), t);
        let bytes = m.encode().unwrap();
        assert!(bytes.len() <= MAX_IMSG_PAYLOAD);
        assert_eq!(Message::decode(t, &bytes).unwrap(), m, "{}", t.name());
    }
    // Defaults and empty options too.
    let empties = [
        Message::StartVmRequest(VmopCreateParams::default()),
        Message::GetInfoVmRequest(None),
        Message::GetInfoVmData(VmopInfoResult::default()),
        Message::CtlFail(None),
        Message::DevMsg(ViodevMsg::default()),
        Message::PrivIfaddr(VmopIfreq::default()),
    ];
    for m in empties {
        let bytes = m.encode().unwrap();
        assert_eq!(Message::decode(m.imsg_type(), &bytes).unwrap(), m);
    }
}

#[test]
fn proc_every_message_crosses_a_channel() {
    let (mut a, mut b) = ImsgChannel::pair().unwrap();
    for (i, &t) in ImsgType::ALL.iter().enumerate() {
        a.compose_msg(&sample(t), i as u32, 0, Vec::new()).unwrap();
    }
    a.flush().unwrap();
    assert!(!a.pending());
    for (i, &t) in ImsgType::ALL.iter().enumerate() {
        let r = b.recv().unwrap();
        assert_eq!(r.msg, sample(t));
        assert_eq!(r.peerid, i as u32);
        assert_eq!(r.pid, std::process::id(), "pid 0 stands for ours");
        assert!(r.fds.is_empty());
    }
    a.send_with(&Message::CtlOk, 1, 55, Vec::new()).unwrap();
    assert_eq!(b.recv().unwrap().pid, 55);
}

#[test]
fn proc_largest_create_params_fit() {
    // Five paths of OpenBSD's PATH_MAX and every name at its C limit.
    let path = "/".repeat(1023);
    let nic = config::Interface {
        name: Some("t".repeat(15)),
        switch: Some("s".repeat(63)),
        group: Some("g".repeat(15)),
        ..Default::default()
    };
    let p = VmopCreateParams {
        name: "n".repeat(63),
        kernel: Some(path.clone()),
        disks: vec![
            VmDisk {
                path: path.clone(),
                format: DiskFormat::Raw,
                bases: 4,
            };
            4
        ],
        cdrom: Some(path),
        interfaces: vec![nic; 4],
        instance: Some("i".repeat(63)),
        ..Default::default()
    };
    let m = Message::StartVmRequest(p);
    let bytes = m.encode().unwrap();
    assert!(bytes.len() < MAX_IMSG_PAYLOAD / 2, "{}", bytes.len());
    // Too large is refused at the sender, not truncated.
    let huge = Message::Load("x".repeat(MAX_IMSGSIZE));
    let (mut a, _b) = ImsgChannel::pair().unwrap();
    assert!(matches!(
        a.compose_msg(&huge, 0, 0, Vec::new()),
        Err(ImsgError::Payload {
            source: CodecError::TooLarge(_),
            ..
        })
    ));
    assert!(matches!(
        a.compose(0, 0, 0, &vec![0; MAX_IMSG_PAYLOAD + 1], Vec::new()),
        Err(ImsgError::TooLong(16385))
    ));
    let many: Vec<OwnedFd> = (0..MAX_IMSG_FDS + 1)
        .map(|_| File::open("/dev/null").unwrap().into())
        .collect();
    assert!(matches!(
        a.compose(0, 0, 0, &[], many),
        Err(ImsgError::TooManyFds(33))
    ));
    assert!(!a.pending());
}

/// (type, peer id, payload) of a parsed message.
type Parsed = (u32, u32, Vec<u8>);

/// A stream of messages of assorted sizes, and what should come out.
fn stream() -> (Vec<u8>, Vec<Parsed>) {
    let mut rng = Rng(0x5eed);
    let mut bytes = Vec::new();
    let mut want = Vec::new();
    for (i, n) in [0usize, 1, 2, 15, 16, 17, 100, 0, 255, 3]
        .into_iter()
        .enumerate()
    {
        let data = rng.bytes(n);
        bytes.extend(raw(i as u32, 1000 + i as u32, &data, 0));
        want.push((i as u32, 1000 + i as u32, data));
    }
    (bytes, want)
}

fn drain(r: &mut ImsgReader, out: &mut Vec<Parsed>) {
    while let Some(m) = r.next_msg().unwrap() {
        out.push((m.hdr.type_, m.hdr.peerid, m.data));
    }
}

#[test]
fn proc_framing_split_at_every_byte_boundary() {
    let (bytes, want) = stream();
    for k in 0..=bytes.len() {
        let mut r = ImsgReader::new();
        let mut got = Vec::new();
        r.push(&bytes[..k], []).unwrap();
        drain(&mut r, &mut got);
        r.push(&bytes[k..], []).unwrap();
        drain(&mut r, &mut got);
        assert_eq!(got, want, "split at {k}");
        assert_eq!(r.buffered(), 0);
    }
    // One byte per read.
    let mut r = ImsgReader::new();
    let mut got = Vec::new();
    for b in &bytes {
        r.push(std::slice::from_ref(b), []).unwrap();
        drain(&mut r, &mut got);
    }
    assert_eq!(got, want);
}

#[test]
fn proc_framing_split_across_socket_reads() {
    let (bytes, want) = stream();
    for k in 0..=bytes.len() {
        let (mut tx, rx) = UnixStream::pair().unwrap();
        let mut ch = ImsgChannel::new(rx);
        let mut got = Vec::new();
        for part in [&bytes[..k], &bytes[k..]] {
            if part.is_empty() {
                continue;
            }
            tx.write_all(part).unwrap();
            for m in ch.read_ready().unwrap() {
                got.push((m.hdr.type_, m.hdr.peerid, m.data));
            }
        }
        assert_eq!(got, want, "split at {k}");
    }
}

#[test]
fn proc_framing_largest_message() {
    let data = Rng(9).bytes(MAX_IMSG_PAYLOAD);
    let bytes = raw(38, 1, &data, 0);
    assert_eq!(bytes.len(), MAX_IMSGSIZE);
    for k in [0, 1, 15, 16, 17, 8192, MAX_IMSGSIZE - 1, MAX_IMSGSIZE] {
        let mut r = ImsgReader::new();
        r.push(&bytes[..k], []).unwrap();
        let first = r.next_msg().unwrap();
        assert_eq!(first.is_some(), k == MAX_IMSGSIZE);
        r.push(&bytes[k..], []).unwrap();
        let m = first.or_else(|| r.next_msg().unwrap()).unwrap();
        assert_eq!(m.data, data);
    }
    // And through a socket, with a channel composing it.
    let (mut a, mut b) = ImsgChannel::pair().unwrap();
    a.compose(38, 1, 0, &data, Vec::new()).unwrap();
    a.flush().unwrap();
    let m = loop {
        if let Some(m) = b.get().unwrap() {
            break m;
        }
        b.fill().unwrap();
    };
    assert_eq!(m.data, data);
}

#[test]
fn proc_header_limits() {
    let check = |bytes: Vec<u8>| {
        let mut r = ImsgReader::new();
        r.push(&bytes, []).unwrap();
        r.next_msg().unwrap_err()
    };
    let mut h = ImsgHdr {
        type_: 0,
        len: 15,
        flags: 0,
        peerid: 0,
        pid: 0,
    };
    assert!(matches!(
        check(h.to_bytes().to_vec()),
        ImsgError::TooShort(15)
    ));
    h.len = 0;
    assert!(matches!(
        check(h.to_bytes().to_vec()),
        ImsgError::TooShort(0)
    ));
    // Rejected on the header alone, without waiting for 16369 bytes.
    h.len = MAX_IMSGSIZE as u16 + 1;
    assert!(matches!(
        check(h.to_bytes().to_vec()),
        ImsgError::TooLong(16385)
    ));
    h.len = u16::MAX;
    assert!(matches!(
        check(h.to_bytes().to_vec()),
        ImsgError::TooLong(65535)
    ));
    h.len = 16;
    h.flags = IMSGF_HASFD | (33 << 8);
    assert!(matches!(
        check(h.to_bytes().to_vec()),
        ImsgError::TooManyFds(33)
    ));
    h.flags = 0x0002;
    assert!(matches!(
        check(h.to_bytes().to_vec()),
        ImsgError::BadFlags(2)
    ));
    h.flags = IMSGF_HASFD;
    assert!(matches!(
        check(h.to_bytes().to_vec()),
        ImsgError::BadFlags(1)
    ));
    h.flags = 1 << 8;
    assert!(matches!(
        check(h.to_bytes().to_vec()),
        ImsgError::BadFlags(_)
    ));
    // A message declaring an fd that never came.
    assert!(matches!(
        check(raw(5, 0, &[], 1)),
        ImsgError::MissingFds { wanted: 1, have: 0 }
    ));
    // The messages say what is wrong, for the log line.
    assert_eq!(
        ImsgError::TooLong(16385).to_string(),
        "imsg length 16385 exceeds the maximum of 16384"
    );
    assert_eq!(
        ImsgError::TooShort(3).to_string(),
        "imsg length 3 shorter than its 16-byte header"
    );
}

#[test]
fn proc_bad_header_over_a_socket() {
    let (mut tx, rx) = UnixStream::pair().unwrap();
    let mut ch = ImsgChannel::new(rx);
    let mut bytes = raw(0, 0, &[], 0);
    bytes[4..6].copy_from_slice(&20000u16.to_le_bytes());
    tx.write_all(&bytes).unwrap();
    assert!(matches!(ch.read_ready(), Err(ImsgError::TooLong(20000))));

    // A known type with a payload that does not decode.
    let (mut tx, rx) = UnixStream::pair().unwrap();
    let mut ch = ImsgChannel::new(rx);
    tx.write_all(&raw(ImsgType::PauseVm as u32, 0, &[0xff; 3], 0))
        .unwrap();
    tx.write_all(&raw(ImsgType::Done as u32, 0, &[0], 0))
        .unwrap();
    tx.write_all(&raw(999, 0, &[], 0)).unwrap();
    let e = ch.recv().unwrap_err();
    assert!(
        e.to_string().starts_with("bad IMSG_VMDOP_PAUSE_VM payload"),
        "{e}"
    );
    assert!(matches!(
        ch.recv(),
        Err(ImsgError::Payload {
            type_name: "IMSG_VMDOP_DONE",
            source: CodecError::Trailing(1)
        })
    ));
    assert!(matches!(ch.recv(), Err(ImsgError::UnknownType(999))));
}

#[test]
fn proc_end_of_file() {
    let (tx, rx) = UnixStream::pair().unwrap();
    let mut ch = ImsgChannel::new(rx);
    drop(tx);
    assert!(matches!(ch.read_ready(), Err(ImsgError::Closed)));

    let (mut tx, rx) = UnixStream::pair().unwrap();
    let mut ch = ImsgChannel::new(rx);
    tx.write_all(&raw(1, 0, &[1, 2, 3], 0)[..10]).unwrap();
    drop(tx);
    assert!(ch.read_ready().unwrap().is_empty());
    assert!(matches!(ch.read_ready(), Err(ImsgError::Truncated(10))));

    // Writing to a closed peer is an error, not SIGPIPE.
    let (mut a, b) = ImsgChannel::pair().unwrap();
    drop(b);
    assert!(matches!(a.send(&Message::CtlOk), Err(ImsgError::Closed)));
}

#[test]
fn proc_fds_pass_through_a_socketpair() {
    let (mut a, mut b) = ImsgChannel::pair().unwrap();
    let (r1, w1) = pipe();
    let (r2, w2) = pipe();
    let (r3, w3) = pipe();
    a.send(&Message::CtlVerbose(1)).unwrap();
    a.send_with(
        &Message::StartVmDisk(DiskFd { index: 0, base: 0 }),
        9,
        0,
        vec![r1],
    )
    .unwrap();
    a.send(&Message::CtlVerbose(2)).unwrap();
    a.send_with(&Message::StartVmEnd, 9, 0, vec![r2, r3])
        .unwrap();
    a.send(&Message::Done).unwrap();

    let got: Vec<Received> = (0..5).map(|_| b.recv().unwrap()).collect();
    assert_eq!(
        got.iter().map(|r| r.fds.len()).collect::<Vec<_>>(),
        [0, 1, 0, 2, 0]
    );
    assert_eq!(
        got[1].msg,
        Message::StartVmDisk(DiskFd { index: 0, base: 0 })
    );
    assert_eq!(got[1].peerid, 9);
    let mut got = got;
    let mut fds: Vec<OwnedFd> = got[1].fds.drain(..).collect();
    fds.append(&mut got[3].fds);
    for (w, text) in [(w1, "one"), (w2, "two"), (w3, "three")] {
        File::from(w).write_all(text.as_bytes()).unwrap();
    }
    for (fd, text) in fds.into_iter().zip(["one", "two", "three"]) {
        // Received descriptors are close-on-exec.
        let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
        let mut s = String::new();
        File::from(fd).read_to_string(&mut s).unwrap();
        assert_eq!(s, text);
    }
}

#[test]
fn proc_undeclared_or_missing_fds_are_errors() {
    // An fd sent with a message whose header declares none.
    let (tx, rx) = UnixStream::pair().unwrap();
    let mut ch = ImsgChannel::new(rx);
    let (r, _w) = pipe();
    send_raw(&tx, &raw(ImsgType::CtlOk as u32, 0, &[], 0), &[r]);
    let e = ch.read_ready().unwrap_err();
    assert!(matches!(e, ImsgError::StrayFds(1)), "{e}");

    // Two declared, one sent.
    let (tx, rx) = UnixStream::pair().unwrap();
    let mut ch = ImsgChannel::new(rx);
    let (r, _w) = pipe();
    send_raw(&tx, &raw(ImsgType::StartVmEnd as u32, 0, &[], 2), &[r]);
    assert!(matches!(
        ch.read_ready(),
        Err(ImsgError::MissingFds { wanted: 2, have: 1 })
    ));

    // More than the receive buffer holds: the kernel truncates the
    // control message and the channel says so.
    let (tx, rx) = UnixStream::pair().unwrap();
    let mut ch = ImsgChannel::new(rx);
    let fds: Vec<OwnedFd> = (0..MAX_IMSG_FDS + 8)
        .map(|_| File::open("/dev/null").unwrap().into())
        .collect();
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_IMSG_FDS + 8))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    assert!(control.push(SendAncillaryMessage::ScmRights(&borrowed)));
    let bytes = raw(0, 0, &[], 0);
    sendmsg(
        &tx,
        &[IoSlice::new(&bytes)],
        &mut control,
        SendFlags::empty(),
    )
    .unwrap();
    assert!(matches!(ch.read_ready(), Err(ImsgError::ControlTruncated)));
}

#[test]
fn proc_nonblocking_bulk_transfer() {
    let (mut a, mut b) = ImsgChannel::pair().unwrap();
    a.socket().set_nonblocking(true).unwrap();
    b.socket().set_nonblocking(true).unwrap();
    assert!(b.read_ready().unwrap().is_empty());
    assert!(
        matches!(b.recv(), Err(ImsgError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock)
    );

    const N: u32 = 3000;
    let payload = |i: u32| vec![i as u8; 1000 + (i as usize % 7)];
    for i in 0..N {
        let fds = if i % 100 == 0 {
            vec![File::open("/dev/null").unwrap().into()]
        } else {
            Vec::new()
        };
        a.compose(ImsgType::DevMsg as u32, i, 0, &payload(i), fds)
            .unwrap();
    }
    let mut next = 0;
    let mut stalls = 0;
    while next < N {
        a.flush().unwrap();
        let msgs = b.read_ready().unwrap();
        if msgs.is_empty() {
            stalls += 1;
            assert!(stalls < 100_000);
        }
        for m in msgs {
            assert_eq!(m.hdr.peerid, next);
            assert_eq!(m.data, payload(next));
            assert_eq!(m.fds.len(), usize::from(next % 100 == 0));
            next += 1;
        }
    }
    assert!(!a.pending());
}

#[test]
fn proc_fuzz_framing_parser() {
    let mut rng = Rng(0xdead_beef_cafe);
    let (valid, _) = stream();
    for iter in 0..20_000 {
        let mut bytes = match iter % 3 {
            // Random bytes, with plausible lengths now and then.
            0 => {
                let n = rng.below(200);
                let mut b = rng.bytes(n);
                if b.len() >= 8 && rng.below(2) == 0 {
                    let len = (rng.below(64) + 10) as u16;
                    b[4..6].copy_from_slice(&len.to_le_bytes());
                    b[6] = 0;
                    b[7] = 0;
                }
                b
            }
            // A valid stream, mutated.
            1 => {
                let mut b = valid.clone();
                for _ in 0..1 + rng.below(4) {
                    let i = rng.below(b.len());
                    b[i] = rng.next() as u8;
                }
                b
            }
            // A valid stream, truncated.
            _ => valid[..rng.below(valid.len() + 1)].to_vec(),
        };
        if rng.below(4) == 0 {
            bytes.truncate(rng.below(bytes.len() + 1));
        }
        let mut r = ImsgReader::new();
        let mut pos = 0;
        'feed: while pos < bytes.len() {
            let n = 1 + rng.below(bytes.len() - pos);
            r.push(&bytes[pos..pos + n], []).unwrap();
            pos += n;
            loop {
                match r.next_msg() {
                    Ok(Some(m)) => {
                        assert!(m.data.len() + IMSG_HEADER_SIZE <= MAX_IMSGSIZE);
                        // Decoding whatever came must not panic either.
                        if let Some(t) = ImsgType::from_u32(m.hdr.type_) {
                            let _ = Message::decode(t, &m.data);
                        }
                    }
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
            }
        }
    }
    // Every prefix of a valid stream parses without error.
    for k in 0..=valid.len() {
        let mut r = ImsgReader::new();
        r.push(&valid[..k], []).unwrap();
        while r.next_msg().unwrap().is_some() {}
    }
}

#[test]
fn proc_fuzz_payload_decoders() {
    let mut rng = Rng(42);
    for &t in ImsgType::ALL {
        let good = sample(t).encode().unwrap();
        // Every strict prefix of a valid payload is an error (bincode is
        // self-delimiting and trailing bytes are refused).
        for k in 0..good.len() {
            assert!(Message::decode(t, &good[..k]).is_err(), "{} {k}", t.name());
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(Message::decode(t, &longer).is_err());
        for _ in 0..3000 {
            let bytes = if rng.below(2) == 0 {
                let max = if rng.below(10) == 0 { 4096 } else { 48 };
                let n = rng.below(max);
                rng.bytes(n)
            } else {
                let mut b = good.clone();
                for _ in 0..1 + rng.below(3) {
                    if b.is_empty() {
                        break;
                    }
                    let i = rng.below(b.len());
                    b[i] = rng.next() as u8;
                }
                b
            };
            let _ = Message::decode(t, &bytes);
        }
    }
    // Hostile length prefixes do not allocate: a string claiming 2^60
    // bytes fails quickly.
    let mut claim = vec![0xfd];
    claim.extend_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(Message::decode(ImsgType::Load, &claim).is_err());
    assert!(codec::decode::<Vec<u64>>(&claim).is_err());
}

#[test]
fn proc_owner_from_config() {
    assert_eq!(
        VmopOwner::from(config::Owner { uid: 5, gid: -1 }),
        VmopOwner { uid: 5, gid: None }
    );
    assert_eq!(
        VmopOwner::from(config::Owner { uid: 5, gid: 20 }),
        VmopOwner {
            uid: 5,
            gid: Some(20)
        }
    );
}

/// A peer that never reads: the channel queues up to its bound, then
/// refuses more (the caller drops the peer) instead of growing.
#[test]
fn proc_outgoing_queue_is_bounded() {
    let (mut a, _b) = ImsgChannel::pair().unwrap();
    a.socket().set_nonblocking(true).unwrap();
    a.set_max_queued(256 << 10);
    let data = vec![7u8; 1000];
    let mut sent = 0usize;
    let err = loop {
        match a
            .compose(ImsgType::DevMsg as u32, 0, 0, &data, Vec::new())
            .and_then(|_| a.flush())
        {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 100_000, "no bound after {sent} messages");
    };
    assert!(
        matches!(err, ImsgError::QueueFull { limit, .. } if limit == 256 << 10),
        "{err}"
    );
    // What the socket took plus the queue: the bound, not more.
    assert!(a.queued() <= 256 << 10);
    assert!(a.pending());
}

/// Received bytes that are not taken as messages are bounded too.
#[test]
fn proc_incoming_buffer_is_bounded() {
    let (mut tx, rx) = UnixStream::pair().unwrap();
    let mut ch = ImsgChannel::new(rx);
    let one = raw(ImsgType::DevMsg as u32, 0, &[1; 1000], 0);
    let writer = std::thread::spawn(move || {
        // Until the reader gives up and closes.
        while tx.write_all(&one).is_ok() {}
    });
    let mut total = 0;
    let err = loop {
        match ch.fill() {
            Ok(n) => total += n,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, ImsgError::InputFull(_)), "{err}");
    assert!(total <= crate::imsg::MAX_BUFFERED, "{total}");
    drop(ch);
    writer.join().unwrap();
}
