//! Virtqueue descriptor-chain walking behind the virtio 1.x transport: a
//! hostile driver programs the common configuration, lays out descriptor
//! tables, avail rings and buffers in guest memory as it likes and kicks.
//! The device is viornd or vioblk (over an in-memory disk), chosen by the
//! first byte; each case starts with the queues brought up at fixed
//! addresses (so most inputs reach the chains), then runs the input's
//! operations, 12 bytes each:
//!
//! kind, a (u16), b (u32), c (u32), d (u8) — register writes and reads,
//! descriptor writes, avail ring updates, raw memory writes, kicks.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use vmd::devices::bus::PioDevice;
use vmd::devices::irq::IrqLines;
use vmd::devices::virtio::blk::Vioblk;
use vmd::devices::virtio::rng::Viornd;
use vmd::devices::virtio::transport::{VirtioDevice, VirtioPci};
use vmd::vm::guest_memory::VmMemory;
use vmd_fuzz::{Input, MemDisk};
use vmm_sys::GuestMemory;

/// Guest RAM: 1 MiB at 0 and 1 MiB at 4 MiB, a hole between, as the
/// device tests' machine has it.
const RAM: [(u64, usize); 2] = [(0, 0x10_0000), (0x40_0000, 0x10_0000)];
/// Queue q's rings: descriptors at RING + q * 0x4000, avail 0x1000 and
/// used 0x2000 after them.
const RING: u64 = 0x1_0000;

struct NoLines;

impl IrqLines for NoLines {
    fn assert_irq(&self, _irq: u8) {}
    fn deassert_irq(&self, _irq: u8) {}
}

// Common configuration registers (virtio 1.x §4.1.4.3), BAR offsets.
const DRIVER_FEATURE_SELECT: u16 = 0x08;
const DRIVER_FEATURE: u16 = 0x0c;
const DEVICE_STATUS: u16 = 0x14;
const QUEUE_SELECT: u16 = 0x16;
const QUEUE_SIZE: u16 = 0x18;
const QUEUE_ENABLE: u16 = 0x1c;
const QUEUE_DESC: u16 = 0x20;
const QUEUE_DRIVER: u16 = 0x28;
const QUEUE_DEVICE: u16 = 0x30;
const NOTIFY: u16 = 0x100;

fn bring_up<D: VirtioDevice>(v: &mut VirtioPci<D>, queues: u16, size: u16) {
    v.pio_write(DEVICE_STATUS, 1, 0);
    v.pio_write(DEVICE_STATUS, 1, 1 | 2);
    v.pio_write(DRIVER_FEATURE_SELECT, 4, 0);
    v.pio_write(DRIVER_FEATURE, 4, 0xffff_ffff);
    v.pio_write(DRIVER_FEATURE_SELECT, 4, 1);
    v.pio_write(DRIVER_FEATURE, 4, 1);
    v.pio_write(DEVICE_STATUS, 1, 1 | 2 | 8);
    for q in 0..queues {
        let base = RING + u64::from(q) * 0x4000;
        v.pio_write(QUEUE_SELECT, 2, u32::from(q));
        v.pio_write(QUEUE_SIZE, 2, u32::from(size));
        for (reg, addr) in [
            (QUEUE_DESC, base),
            (QUEUE_DRIVER, base + 0x1000),
            (QUEUE_DEVICE, base + 0x2000),
        ] {
            v.pio_write(reg, 4, addr as u32);
            v.pio_write(reg + 4, 4, (addr >> 32) as u32);
        }
        v.pio_write(QUEUE_ENABLE, 2, 1);
    }
    v.pio_write(DEVICE_STATUS, 1, 1 | 2 | 8 | 4);
}

fn run<D: VirtioDevice>(mut v: VirtioPci<D>, mem: &GuestMemory, size: u16, inp: &mut Input) {
    bring_up(&mut v, 1, size);
    // The driver's avail index per queue, as it last published it.
    let mut avail_idx = [0u16; 2];
    while !inp.is_empty() {
        let kind = inp.u8();
        let a = inp.u16();
        let b = inp.u32();
        let c = inp.u32();
        let d = inp.u8();
        let q = usize::from(d & 1);
        let base = RING + q as u64 * 0x4000;
        match kind % 8 {
            0 => v.pio_write(a % 0x400, [1, 2, 4][usize::from(d % 3)], b),
            1 => {
                v.pio_read(a % 0x400, [1, 2, 4][usize::from(d % 3)]);
            }
            2 | 3 => {
                // Descriptor a & 0xff: addr (mostly near the rings and buffers,
                // sometimes in the hole or anywhere), len, flags, next.
                let i = u64::from(a & 0xff) % u64::from(size);
                let addr = match d >> 6 {
                    0 | 1 => u64::from(b) % 0x2_0000,
                    2 => u64::from(b) % 0x60_0000,
                    _ => u64::from(b) << 32 | u64::from(c),
                };
                let mut desc = [0u8; 16];
                desc[..8].copy_from_slice(&addr.to_le_bytes());
                desc[8..12].copy_from_slice(&(c >> (d & 16)).to_le_bytes());
                desc[12..14].copy_from_slice(&u16::from(d >> 1 & 7).to_le_bytes());
                desc[14..16].copy_from_slice(&(a >> 8).to_le_bytes());
                let _ = mem.write(base + i * 16, &desc);
            }
            4 | 5 => {
                // Publish a head: ring[idx % size] = head, idx += 1 (or
                // the index set anywhere).
                let idx = &mut avail_idx[q];
                let slot = base + 0x1000 + 4 + u64::from(*idx % size) * 2;
                let _ = mem.write(slot, &(a % (size + 2)).to_le_bytes());
                *idx = if d & 0x80 != 0 {
                    b as u16
                } else {
                    idx.wrapping_add(1)
                };
                let _ = mem.write(base + 0x1000 + 2, &idx.to_le_bytes());
            }
            6 => {
                // A request header or any other bytes in the buffers.
                let at = u64::from(b) % 0x2_0000;
                let mut w = [0u8; 16];
                w[..4].copy_from_slice(&c.to_le_bytes());
                w[4..8].copy_from_slice(&b.to_le_bytes());
                w[8..10].copy_from_slice(&a.to_le_bytes());
                w[10] = d;
                let _ = mem.write(at, &w);
            }
            _ => {
                if d & 0x40 != 0 {
                    bring_up(&mut v, 1, size);
                    avail_idx = [0; 2];
                } else {
                    v.pio_write(NOTIFY, 2, u32::from(a % 3));
                }
            }
        }
    }
    let _ = (v.status(), v.needs_reset(), v.incidents());
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    let which = inp.u8();
    let mem = GuestMemory::anonymous(&RAM).expect("guest memory");
    let vm = VmMemory::new(&mem).expect("guest memory map");
    let lines: Arc<dyn IrqLines> = Arc::new(NoLines);
    if which & 1 == 0 {
        let mut n = 0u8;
        let dev = Viornd::with_source(Box::new(move |buf| {
            for b in buf {
                n = n.wrapping_add(1);
                *b = n;
            }
            Ok(())
        }));
        run(VirtioPci::new(dev, vm, 3, lines), &mem, 64, &mut inp);
    } else {
        let dev = Vioblk::new(Box::new(MemDisk(vec![0; 64 << 10])), "fuzz");
        run(VirtioPci::new(dev, vm, 3, lines), &mem, 128, &mut inp);
    }
});
