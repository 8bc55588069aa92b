//! The virtio 1.x transport and viornd, driven by the test driver over
//! port accesses and guest memory, including a hostile driver.
use super::rng::Viornd;
use super::testdriver::{Ring, TestMachine, Virtio1, F_NEXT, F_WRITE};
use super::transport::{attach, AttachedVirtio, VirtioPciIds};
use super::*;
use crate::property::{cases, Rng};

const V1: u64 = VIRTIO_F_VERSION_1;
const NEEDS_RESET: u8 = VIRTIO_CONFIG_DEVICE_STATUS_DEVICE_NEEDS_RESET;
/// Data buffers the tests hand to devices.
const BUF: u64 = 0x8000;

/// A viornd whose "entropy" counts up, so results are checkable.
fn counting_rng() -> Viornd {
    let mut n = 0u8;
    Viornd::with_source(Box::new(move |buf| {
        for b in buf {
            n = n.wrapping_add(1);
            *b = n;
        }
        Ok(())
    }))
}

fn rng_machine(dev: Viornd) -> (TestMachine, AttachedVirtio<Viornd>, Virtio1) {
    let m = TestMachine::new();
    let a = attach(
        &mut m.pci.lock().unwrap(),
        VirtioPciIds::RNG,
        dev,
        m.vm_memory(),
        m.lines(),
    )
    .unwrap();
    let v = Virtio1::probe(&m, a.slot);
    (m, a, v)
}

fn rng_up(dev: Viornd) -> (TestMachine, AttachedVirtio<Viornd>, Virtio1, Ring) {
    let (m, a, v) = rng_machine(dev);
    let ring = v.bring_up(&m, V1, Ring::new(64, 0x1000));
    (m, a, v, ring)
}

#[test]
fn rng_pci_identity_and_capabilities() {
    let (m, a, v) = rng_machine(Viornd::new());
    assert_eq!(a.slot, 1);
    assert_eq!(a.irq, 3);
    assert_eq!(m.cfg_read(1, 0x00, 4), 0x1044_1af4);
    // Class system/misc, revision 1.
    assert_eq!(m.cfg_read(1, 0x08, 4), 0x0880_0001);
    assert_eq!(m.cfg_read(1, 0x2c, 4), 0x0004_0b5d);
    assert_eq!(m.cfg_read(1, 0x3c, 2), 0x0103);
    assert_eq!(m.cfg_read(1, 0x10, 4), 0x1001);
    let base = 0x1000;
    assert_eq!(v.common, base);
    assert_eq!(v.notify, base + 0x100);
    assert_eq!(v.isr, base + 0x200);
    assert_eq!(v.device, None, "viornd has no device configuration");
    // vmd's order: COMMON, ISR, NOTIFY; each cap_len 16.
    let mut order = vec![];
    let mut p = m.cfg_read(1, 0x34, 1) as u8;
    while p != 0 {
        order.push((m.cfg_read(1, p + 3, 1), m.cfg_read(1, p + 2, 1)));
        p = m.cfg_read(1, p + 1, 1) as u8;
    }
    assert_eq!(order, vec![(1, 16), (3, 16), (2, 16)]);
    assert_eq!(m.cfg_read(1, 0x40 + 12, 4), 0x38);
}

#[test]
fn feature_negotiation() {
    let (m, a, v) = rng_machine(Viornd::new());
    assert_eq!(v.device_features(&m), V1);
    // Bits the device does not offer are not accepted.
    assert_eq!(v.negotiate(&m, V1 | 1 << 5 | 1 << 40) & 8, 8);
    assert_eq!(a.dev.lock().unwrap().driver_features(), V1);
    m.pio.write(v.common + 8, 4, 1);
    assert_eq!(m.pio.read(v.common + 0xc, 4), 1);
    // Feature words past the second read 0.
    m.pio.write(v.common, 4, 2);
    assert_eq!(m.pio.read(v.common + 4, 4), 0);
    // A legacy driver (no VERSION_1) is refused FEATURES_OK.
    assert_eq!(v.negotiate(&m, 0), 1 | 2);
    // Features cannot change after FEATURES_OK.
    assert_eq!(v.negotiate(&m, V1) & 8, 8);
    v.write_driver_features(&m, 0);
    assert_eq!(a.dev.lock().unwrap().driver_features(), V1);
}

#[test]
fn common_configuration_registers() {
    let (m, _a, v) = rng_machine(Viornd::new());
    assert_eq!(m.pio.read(v.common + 0x12, 2), 1, "num_queues");
    assert_eq!(v.queue_max(&m, 0), 64);
    assert_eq!(v.queue_max(&m, 1), 0, "no second queue");
    assert_eq!(m.pio.read(v.common + 0x10, 2), 0xffff, "config msix vector");
    assert_eq!(m.pio.read(v.common + 0x1a, 2), 0xffff, "queue msix vector");
    // Queue size: a smaller power of two only.
    m.pio.write(v.common + 0x16, 2, 0);
    for (w, r) in [(32, 32), (48, 32), (128, 32), (0, 32), (16, 16)] {
        m.pio.write(v.common + 0x18, 2, w);
        assert_eq!(m.pio.read(v.common + 0x18, 2), r, "after writing {w}");
    }
    // Ring addresses take 32-bit halves and read back.
    m.pio.write(v.common + 0x20, 4, 0x1234_5000);
    m.pio.write(v.common + 0x24, 4, 0x9);
    assert_eq!(m.pio.read(v.common + 0x20, 4), 0x1234_5000);
    assert_eq!(m.pio.read(v.common + 0x24, 4), 0x9);
    // A dword read at the status register carries the bytes after it.
    v.set_status(&m, 1);
    m.pio.write(v.common + 0x16, 2, 0);
    assert_eq!(m.pio.read(v.common + 0x14, 4), 0x0000_0001);
    m.pio.write(v.common + 0x16, 2, 0x0102);
    assert_eq!(m.pio.read(v.common + 0x14, 4), 0x0102_0001);
    // Unused parts of the BAR.
    assert_eq!(m.pio.read(v.common + 0x300, 4), 0xffff_ffff);
    assert_eq!(m.pio.read(v.common + 0x400, 2), 0xffff);
}

#[test]
fn rng_fills_writable_buffers_and_interrupts() {
    let (m, a, v, mut ring) = rng_up(counting_rng());
    let irq = a.irq;
    assert!(!m.lines.is_up(irq));
    m.mem.write(BUF, &[0xee; 0x100]).unwrap();
    // A readable buffer in the chain is left alone.
    let head = ring.add(
        &m,
        &[
            (BUF, 16, true),
            (BUF + 0x40, 8, false),
            (BUF + 0x80, 48, true),
        ],
    );
    v.kick(&m, 0);
    assert_eq!(ring.take_used(&m), vec![(u32::from(head), 64)]);
    let mut got = [0u8; 0x100];
    m.mem.read(BUF, &mut got).unwrap();
    let want: Vec<u8> = (1..=16).collect();
    assert_eq!(&got[..16], &want[..]);
    assert_eq!(&got[0x40..0x48], &[0xee; 8]);
    let want: Vec<u8> = (17..=64).collect();
    assert_eq!(&got[0x80..0xb0], &want[..]);
    assert_eq!(got[0xb0], 0xee);
    assert!(m.lines.is_up(irq));
    assert_eq!(v.isr(&m), VIRTIO_CONFIG_ISR_QUEUE);
    assert!(!m.lines.is_up(irq), "reading the ISR lowers the line");
    assert_eq!(v.isr(&m), 0);

    // Several chains at once, wrapping the 64-entry ring.
    for round in 0..3 {
        let heads: Vec<u16> = (0..30)
            .map(|i| ring.add(&m, &[(BUF + i * 8, 8, true)]))
            .collect();
        v.kick(&m, 0);
        let used = ring.take_used(&m);
        assert_eq!(used.len(), 30, "round {round}");
        for (h, (id, len)) in heads.iter().zip(used) {
            assert_eq!((u32::from(*h), len), (id, 8));
        }
    }
    assert_eq!(a.dev.lock().unwrap().incidents(), 0);
}

#[test]
fn rng_from_the_host_csprng() {
    let (m, _a, v, mut ring) = rng_up(Viornd::new());
    ring.add(&m, &[(BUF, 64, true)]);
    ring.add(&m, &[(BUF + 64, 64, true)]);
    v.kick(&m, 0);
    assert_eq!(ring.take_used(&m).len(), 2);
    let mut a = [0u8; 64];
    let mut b = [0u8; 64];
    m.mem.read(BUF, &mut a).unwrap();
    m.mem.read(BUF + 64, &mut b).unwrap();
    assert_ne!(a, [0; 64]);
    assert_ne!(a, b);
}

#[test]
fn kicks_before_driver_ok_or_of_other_queues_do_nothing() {
    let (m, a, v) = rng_machine(counting_rng());
    let mut ring = Ring::new(64, 0x1000);
    assert_eq!(v.negotiate(&m, V1) & 8, 8);
    v.setup_queue(&m, 0, &ring);
    ring.add(&m, &[(BUF, 8, true)]);
    v.kick(&m, 0);
    assert_eq!(ring.used_idx(&m), 0);
    v.set_status(&m, 1 | 2 | 8 | 4);
    v.kick(&m, 7);
    assert_eq!(ring.used_idx(&m), 0);
    v.kick(&m, 0);
    assert_eq!(ring.used_idx(&m), 1);
    assert!(m.lines.is_up(a.irq));
}

#[test]
fn status_zero_resets_the_device() {
    let (m, a, v, mut ring) = rng_up(counting_rng());
    ring.add(&m, &[(BUF, 8, true)]);
    v.kick(&m, 0);
    assert!(m.lines.is_up(a.irq));
    v.set_status(&m, 0);
    assert!(!m.lines.is_up(a.irq), "reset lowers the line");
    assert_eq!(v.status(&m), 0);
    assert_eq!(a.dev.lock().unwrap().driver_features(), 0);
    m.pio.write(v.common + 0x16, 2, 0);
    assert_eq!(m.pio.read(v.common + 0x1c, 2), 0, "queue disabled");
    assert_eq!(m.pio.read(v.common + 0x18, 2), 64, "full size again");
    assert_eq!(m.pio.read(v.common + 0x20, 4), 0);
    // And it comes back with a fresh ring.
    let mut ring = v.bring_up(&m, V1, Ring::new(64, 0x3000));
    ring.add(&m, &[(BUF, 8, true)]);
    v.kick(&m, 0);
    assert_eq!(ring.take_used(&m), vec![(0, 8)]);
}

/// Sets up a hostile chain with `corrupt`, kicks, and checks the device
/// went to NEEDS_RESET with a config interrupt, ignores its queue until
/// reset, and works again after a reset.
fn hostile(corrupt: impl FnOnce(&TestMachine, &mut Ring)) {
    let (m, a, v, mut ring) = rng_up(counting_rng());
    // One good chain first: it completes.
    ring.add(&m, &[(BUF, 8, true)]);
    v.kick(&m, 0);
    assert_eq!(ring.take_used(&m).len(), 1);
    assert_eq!(v.isr(&m), VIRTIO_CONFIG_ISR_QUEUE);

    corrupt(&m, &mut ring);
    v.kick(&m, 0);
    assert_eq!(v.status(&m) & NEEDS_RESET, NEEDS_RESET);
    assert_eq!(v.status(&m) & 0xf, 0xf, "driver's bits kept");
    assert!(m.lines.is_up(a.irq));
    assert_eq!(v.isr(&m), VIRTIO_CONFIG_ISR_CONFIG_CHANGE);
    assert_eq!(a.dev.lock().unwrap().incidents(), 1);
    // The driver cannot clear NEEDS_RESET by writing status.
    v.set_status(&m, 1 | 2 | 8 | 4);
    assert_eq!(v.status(&m) & NEEDS_RESET, NEEDS_RESET);
    // Further kicks are ignored, even of good chains.
    let before = ring.used_idx(&m);
    ring.add(&m, &[(BUF, 8, true)]);
    v.kick(&m, 0);
    assert_eq!(ring.used_idx(&m), before);
    assert_eq!(v.isr(&m), 0);

    // Reset and a fresh ring: the device works again.
    let mut ring = v.bring_up(&m, V1, Ring::new(64, 0x3000));
    assert_eq!(v.status(&m), 0xf);
    ring.add(&m, &[(BUF, 32, true)]);
    v.kick(&m, 0);
    assert_eq!(ring.take_used(&m), vec![(0, 32)]);
}

#[test]
fn hostile_descriptor_loop() {
    hostile(|m, ring| {
        // 5 → 6 → 5 → …
        ring.put_desc(m, 5, BUF, 8, F_WRITE | F_NEXT, 6);
        ring.put_desc(m, 6, BUF, 8, F_WRITE | F_NEXT, 5);
        ring.publish(m, 5);
    });
}

#[test]
fn hostile_self_loop() {
    hostile(|m, ring| {
        ring.put_desc(m, 9, BUF, 1, F_WRITE | F_NEXT, 9);
        ring.publish(m, 9);
    });
}

#[test]
fn hostile_next_out_of_table() {
    hostile(|m, ring| {
        ring.put_desc(m, 3, BUF, 8, F_WRITE | F_NEXT, 64);
        ring.publish(m, 3);
    });
}

#[test]
fn hostile_head_out_of_table() {
    hostile(|m, ring| {
        ring.publish(m, 0xffff);
    });
}

#[test]
fn hostile_buffer_in_the_memory_hole() {
    hostile(|m, ring| {
        ring.add(m, &[(0x20_0000, 8, true)]);
    });
}

#[test]
fn hostile_buffer_past_the_end_of_memory() {
    hostile(|m, ring| {
        ring.add(m, &[(0x4f_fff0, 0x20, true)]);
    });
    hostile(|m, ring| {
        ring.add(m, &[(u64::MAX - 3, 8, true)]);
    });
}

#[test]
fn hostile_buffer_running_into_the_hole_leaves_memory_untouched() {
    let (m, a, v, mut ring) = rng_up(counting_rng());
    // The first buffer is fine, the second runs from RAM into the hole:
    // nothing of the chain is written.
    m.mem.write(BUF, &[0xee; 8]).unwrap();
    m.mem.write(0xf_fff0, &[0xee; 16]).unwrap();
    ring.add(&m, &[(BUF, 8, true), (0xf_fff0, 0x20, true)]);
    v.kick(&m, 0);
    assert!(a.dev.lock().unwrap().needs_reset());
    let mut b = [0u8; 16];
    m.mem.read(0xf_fff0, &mut b).unwrap();
    assert_eq!(b, [0xee; 16]);
    m.mem.read(BUF, &mut b[..8]).unwrap();
    assert_eq!(b[..8], [0xee; 8]);
    assert_eq!(ring.used_idx(&m), 0);
}

#[test]
fn hostile_oversized_chain() {
    hostile(|m, ring| {
        // In RAM, but more than MAXPHYS in all.
        ring.add(m, &[(0x1_0000, 0x8000, true), (0x2_0000, 0x8001, true)]);
    });
    hostile(|m, ring| {
        ring.add(m, &[(0, u32::MAX, true)]);
    });
}

#[test]
fn hostile_wild_avail_index() {
    hostile(|m, ring| {
        let idx = ring.used_idx(m);
        ring.set_avail_idx(m, idx.wrapping_add(65));
    });
    hostile(|m, ring| {
        let idx = ring.used_idx(m);
        ring.set_avail_idx(m, idx.wrapping_sub(1));
    });
}

#[test]
fn rings_outside_guest_memory_are_refused_at_enable() {
    let (m, a, v) = rng_machine(counting_rng());
    assert_eq!(v.negotiate(&m, V1) & 8, 8);
    // Used ring in the hole.
    let mut ring = Ring::new(64, 0x1000);
    ring.used = 0x20_0000;
    v.setup_queue(&m, 0, &ring);
    assert_eq!(v.status(&m) & NEEDS_RESET, NEEDS_RESET);
    m.pio.write(v.common + 0x16, 2, 0);
    assert_eq!(m.pio.read(v.common + 0x1c, 2), 0, "not enabled");
    // No DRIVER_OK yet: no interrupt.
    assert!(!m.lines.is_up(a.irq));
    // Misaligned descriptor table.
    assert_eq!(v.negotiate(&m, V1) & NEEDS_RESET, 0);
    let ring = Ring::new(64, 0x1008);
    v.setup_queue(&m, 0, &ring);
    assert_eq!(v.status(&m) & NEEDS_RESET, NEEDS_RESET);
    // A ring straddling the end of RAM.
    assert_eq!(v.negotiate(&m, V1) & NEEDS_RESET, 0);
    let ring = Ring::new(64, 0xf_fc00);
    v.setup_queue(&m, 0, &ring);
    assert_eq!(v.status(&m) & NEEDS_RESET, NEEDS_RESET);
    assert_eq!(a.dev.lock().unwrap().incidents(), 3);
}

/// Random register traffic and random ring contents, including
/// re-initialisation in between: the device never panics or hangs.
#[test]
fn property_random_drivers_do_not_panic() {
    cases(
        "virtio random driver",
        0x7669_7274,
        300,
        |r: &mut Rng| {
            let mut ops = vec![];
            for _ in 0..r.below(60) + 1 {
                ops.push((r.next(), r.next(), r.next()));
            }
            ops
        },
        |ops| format!("{ops:x?}"),
        |ops| {
            let (m, _a, v, mut ring) = rng_up(counting_rng());
            let mut r = Rng::new(ops.len() as u64);
            for (a, b, c) in ops {
                match a % 6 {
                    0 => {
                        let off = (b % 0x400) as u16;
                        let size = [1, 2, 4][(c % 3) as usize];
                        m.pio.write(v.common + off, size, (c >> 8) as u32);
                    }
                    1 => {
                        let off = (b % 0x400) as u16;
                        m.pio.read(v.common + off, [1, 2, 4][(c % 3) as usize]);
                    }
                    2 => {
                        let i = (b % 64) as u16;
                        let addr = r.edgy_u64() % 0x60_0000;
                        ring.put_desc(
                            &m,
                            i,
                            addr,
                            c as u32 % 0x2_0000,
                            (c >> 32) as u16 & 3,
                            (c >> 48) as u16 % 70,
                        );
                    }
                    3 => ring.publish(&m, (b % 80) as u16),
                    4 => v.kick(&m, (b % 3) as u16),
                    _ => {
                        if b % 4 == 0 {
                            ring = v.bring_up(&m, V1, Ring::new(64, 0x1000));
                        }
                    }
                }
            }
        },
    );
}
