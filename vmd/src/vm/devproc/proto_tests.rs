//! The device side of the protocol without a VM or a second process: a
//! device core served over socket pairs, driven as the VM process drives
//! it.
use std::os::unix::net::UnixStream;

use super::proxy::recv;
use super::*;
use crate::devices::virtio::rng::Viornd;
use crate::vm::guest_memory::VmMemory;
use vmd_proto::ImsgChannel;

fn send(chan: &mut ImsgChannel, m: ViodevMsg) {
    chan.compose(IMSG_DEVOP_MSG, 0, 0, &m.to_bytes(), Vec::new())
        .unwrap();
    chan.flush().unwrap();
}

fn io(chan: &mut ImsgChannel, type_: u8, reg: u16, io_sz: u8, data: u32) -> ViodevMsg {
    send(
        chan,
        ViodevMsg {
            type_,
            reg,
            io_sz,
            data,
            data_valid: type_ == VIODEV_MSG_IO_WRITE,
            ..Default::default()
        },
    );
    recv(chan).unwrap()
}

struct Rig {
    sync: ImsgChannel,
    async_: ImsgChannel,
    served: std::thread::JoinHandle<Result<(), DevProcError>>,
}

fn rig() -> Rig {
    let mem = vmm_sys::GuestMemory::anonymous(&[(0, 0x10_0000)]).unwrap();
    let mem = VmMemory::new(&mem).unwrap();
    let (vm_sync, dev_sync) = UnixStream::pair().unwrap();
    let (vm_async, dev_async) = UnixStream::pair().unwrap();
    let served = std::thread::spawn(move || {
        let links = device::Links {
            sync: ImsgChannel::new(dev_sync),
            async_sock: dev_async,
            doorbells: Vec::new(),
        };
        device::serve(Viornd::new(), 5, mem, links)
    });
    Rig {
        sync: ImsgChannel::new(vm_sync),
        async_: ImsgChannel::new(vm_async),
        served,
    }
}

/// READY, register reads and writes answered with their data, the
/// device status kept, and SHUTDOWN ending the device.
#[test]
fn devproc_register_rpcs_and_shutdown() {
    let mut r = rig();
    let ready = recv(&mut r.sync).unwrap();
    assert_eq!((ready.type_, ready.data), (VIODEV_MSG_READY, 0));
    // NUM_QUEUES: viornd has one.
    let a = io(&mut r.sync, VIODEV_MSG_IO_READ, 0x12, 2, 0);
    assert_eq!((a.type_, a.data, a.state), (VIODEV_MSG_IO_READ, 1, 0));
    // The high feature word: VERSION_1.
    io(&mut r.sync, VIODEV_MSG_IO_WRITE, 0x00, 4, 1);
    assert_eq!(io(&mut r.sync, VIODEV_MSG_IO_READ, 0x04, 4, 0).data, 1);
    // Device status written, then read back.
    io(&mut r.sync, VIODEV_MSG_IO_WRITE, 0x14, 1, 3);
    assert_eq!(io(&mut r.sync, VIODEV_MSG_IO_READ, 0x14, 1, 0).data, 3);
    // A kick of a queue that is not ready does nothing, and answers
    // nothing.
    send(
        &mut r.async_,
        ViodevMsg {
            type_: VIODEV_MSG_KICK,
            data: 0,
            ..Default::default()
        },
    );
    assert_eq!(io(&mut r.sync, VIODEV_MSG_IO_READ, 0x200, 1, 0).data, 0);
    send(&mut r.async_, ViodevMsg::of_type(VIODEV_MSG_SHUTDOWN));
    r.served.join().unwrap().unwrap();
}

/// A message of the wrong length is an error for the device process,
/// not a panic; a VM process that goes away ends it quietly.
#[test]
fn devproc_garbage_and_hangup() {
    let mut r = rig();
    recv(&mut r.sync).unwrap();
    r.sync
        .compose(IMSG_DEVOP_MSG, 0, 0, &[1, 2, 3], Vec::new())
        .unwrap();
    r.sync.flush().unwrap();
    assert!(matches!(
        r.served.join().unwrap(),
        Err(DevProcError::BadLength(3))
    ));
    let mut r = rig();
    recv(&mut r.sync).unwrap();
    drop(r.sync);
    drop(r.async_);
    r.served.join().unwrap().unwrap();
}

/// The VM process's side of the BAR for a doorbell test: register
/// accesses over the sync channel, notify writes ring the doorbell (a
/// pipe here; the kernel's eventfd under the shim) and send nothing.
struct BellBar {
    sync: ImsgChannel,
    bell: std::fs::File,
}

impl crate::devices::bus::PioDevice for BellBar {
    fn pio_read(&mut self, offset: u16, size: u8) -> u32 {
        io(&mut self.sync, VIODEV_MSG_IO_READ, offset, size, 0).data
    }
    fn pio_write(&mut self, offset: u16, size: u8, value: u32) {
        use std::io::Write;
        if offset & 0xff00 == crate::devices::virtio::VIO1_NOTIFY_BAR_OFFSET {
            self.bell.write_all(&1u64.to_ne_bytes()).unwrap();
        } else {
            io(&mut self.sync, VIODEV_MSG_IO_WRITE, offset, size, value);
        }
    }
}

/// A queue's doorbell serves it as a KICK message would: viornd, brought
/// up by the test driver through register RPCs, fills a buffer after the
/// doorbell rings, with nothing sent on the async channel.
#[test]
fn devproc_doorbell_serves_its_queue() {
    use crate::devices::virtio::testdriver::{Ring, TestMachine, Virtio1};
    use crate::devices::virtio::transport::{add_virtio_bar, VirtioPciIds};
    use std::time::{Duration, Instant};
    let m = TestMachine::new();
    let (vm_sync, dev_sync) = UnixStream::pair().unwrap();
    let (vm_async, dev_async) = UnixStream::pair().unwrap();
    let (bell_rx, bell_tx) = nix::unistd::pipe().unwrap();
    nix::fcntl::fcntl(
        &bell_rx,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .unwrap();
    let mem = m.vm_memory();
    let served = std::thread::spawn(move || {
        let links = device::Links {
            sync: ImsgChannel::new(dev_sync),
            async_sock: dev_async,
            doorbells: vec![bell_rx],
        };
        device::serve(Viornd::new(), 5, mem, links)
    });
    let mut sync = ImsgChannel::new(vm_sync);
    let ready = recv(&mut sync).unwrap();
    assert_eq!(ready.type_, VIODEV_MSG_READY);
    let bar = BellBar {
        sync,
        bell: bell_tx.into(),
    };
    let slot = {
        let mut bus = m.pci.lock().unwrap();
        let slot = bus
            .add_device(&VirtioPciIds::RNG.pci_config())
            .unwrap()
            .slot;
        add_virtio_bar(
            &mut bus,
            slot,
            0,
            std::sync::Arc::new(std::sync::Mutex::new(bar)),
        )
        .unwrap();
        slot
    };
    let v = Virtio1::probe(&m, slot);
    let mut ring = v.bring_up(
        &m,
        crate::devices::virtio::VIRTIO_F_VERSION_1,
        Ring::new(8, 0x1_0000),
    );
    ring.add(&m, &[(0x2_0000, 64, true)]);
    v.kick(&m, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let used = loop {
        let u = ring.take_used(&m);
        if !u.is_empty() || Instant::now() > deadline {
            break u;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(used, [(0, 64)], "served after the doorbell");
    let mut data = [0u8; 64];
    m.mem.read(0x2_0000, &mut data).unwrap();
    assert_ne!(data, [0u8; 64], "random bytes");
    let mut async_ = ImsgChannel::new(vm_async);
    send(&mut async_, ViodevMsg::of_type(VIODEV_MSG_SHUTDOWN));
    served.join().unwrap().unwrap();
}
