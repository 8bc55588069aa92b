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
        device::serve(Viornd::new(), 5, mem, ImsgChannel::new(dev_sync), dev_async)
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
