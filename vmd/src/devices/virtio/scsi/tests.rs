//! vioscsi driven as a guest driver would: through PCI configuration, its
//! capabilities and split rings in guest memory.
use super::*;
use crate::devices::virtio::blk::{DiskError, DiskImage};
use crate::devices::virtio::testdriver::{Ring, TestMachine, Virtio1, F_NEXT, F_WRITE};
use crate::devices::virtio::transport::{attach, AttachedVirtio, VirtioPciIds};
use crate::devices::virtio::{
    VIRTIO_CONFIG_DEVICE_STATUS_DEVICE_NEEDS_RESET, VIRTIO_CONFIG_ISR_QUEUE,
};

fn err(what: &str) -> DiskError {
    DiskError::Io {
        path: "memiso".into(),
        op: "test",
        offset: 0,
        source: std::io::Error::other(what.to_string()),
    }
}

struct MemIso(Vec<u8>);

impl DiskImage for MemIso {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        let o = offset as usize;
        buf.copy_from_slice(
            self.0
                .get(o..o + buf.len())
                .ok_or_else(|| err("past the end"))?,
        );
        Ok(())
    }
    fn write_at(&mut self, _: &[u8], _: u64) -> Result<(), DiskError> {
        Err(err("read-only"))
    }
    fn flush(&mut self) -> Result<(), DiskError> {
        Ok(())
    }
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_only(&self) -> bool {
        true
    }
}

const BLOCKS: usize = 64;

fn iso() -> Vec<u8> {
    (0..BLOCKS * 2048)
        .map(|i| (i / 2048) as u8 ^ (i as u8).rotate_left(3))
        .collect()
}

const REQ: u64 = 0x9000;
const RESP: u64 = 0x9400;
const DATA: u64 = 0x10000;

struct Rig {
    m: TestMachine,
    a: AttachedVirtio<Vioscsi>,
    v: Virtio1,
    ctrl: Ring,
    req: Ring,
}

fn rig() -> Rig {
    let m = TestMachine::new();
    let a = attach(
        &mut m.pci.lock().unwrap(),
        VirtioPciIds::SCSI,
        Vioscsi::new(Box::new(MemIso(iso())), "CD0"),
        m.vm_memory(),
        m.lines(),
    )
    .unwrap();
    let v = Virtio1::probe(&m, a.slot);
    let (ctrl, req) = bring_up(&m, &v);
    Rig { m, a, v, ctrl, req }
}

fn bring_up(m: &TestMachine, v: &Virtio1) -> (Ring, Ring) {
    assert_eq!(v.negotiate(m, VIRTIO_F_VERSION_1) & 8, 8, "FEATURES_OK");
    let ctrl = Ring::new(128, 0x1000);
    let req = Ring::new(128, 0x4000);
    v.setup_queue(m, 0, &ctrl);
    v.setup_queue(m, 2, &req);
    v.set_status(m, 1 | 2 | 8 | 4);
    (ctrl, req)
}

fn lun(target: u8, lun: u16) -> [u8; 8] {
    [1, target, 0x40 | (lun >> 8) as u8, lun as u8, 0, 0, 0, 0]
}

/// What came back for one command.
#[derive(Debug)]
struct Resp {
    used_len: u32,
    sense_len: u32,
    resid: u32,
    status: u8,
    response: u8,
    sense: Vec<u8>,
}

impl Rig {
    fn write_req(&self, lun: [u8; 8], cdb: &[u8]) {
        let mut r = [0u8; CMD_REQ_LEN];
        r[0..8].copy_from_slice(&lun);
        r[8..16].copy_from_slice(&0x1234u64.to_le_bytes());
        r[19..19 + cdb.len()].copy_from_slice(cdb);
        self.m.mem.write(REQ, &r).unwrap();
        self.m.mem.write(RESP, &[0xee; CMD_RESP_LEN]).unwrap();
    }

    /// Submits `bufs` (after the request is written) and reads the reply.
    fn submit(&mut self, bufs: &[(u64, u32, bool)]) -> Resp {
        let head = self.req.add(&self.m, bufs);
        self.v.kick(&self.m, 2);
        let used = self.req.take_used(&self.m);
        assert_eq!(used.len(), 1, "one completion");
        assert_eq!(used[0].0, u32::from(head));
        assert_eq!(self.v.isr(&self.m), VIRTIO_CONFIG_ISR_QUEUE);
        let mut r = [0u8; CMD_RESP_LEN];
        self.m.mem.read(RESP, &mut r).unwrap();
        let sense_len = u32::from_le_bytes(r[0..4].try_into().unwrap());
        Resp {
            used_len: used[0].1,
            sense_len,
            resid: u32::from_le_bytes(r[4..8].try_into().unwrap()),
            status: r[10],
            response: r[11],
            sense: r[12..12 + (sense_len as usize).min(96)].to_vec(),
        }
    }

    fn cmd(&mut self, cdb: &[u8], data_len: u32) -> Resp {
        self.write_req(lun(0, 0), cdb);
        let mut bufs = vec![
            (REQ, CMD_REQ_LEN as u32, false),
            (RESP, CMD_RESP_LEN as u32, true),
        ];
        if data_len > 0 {
            bufs.push((DATA, data_len, true));
        }
        self.submit(&bufs)
    }

    fn guest(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.m.mem.read(gpa, &mut b).unwrap();
        b
    }
}

#[test]
fn pci_identity_queues_and_configuration() {
    let r = rig();
    let m = &r.m;
    assert_eq!(m.cfg_read(r.a.slot, 0x00, 4), 0x1048_1af4);
    assert_eq!(
        m.cfg_read(r.a.slot, 0x08, 4) >> 8,
        0x01_0000,
        "mass storage/SCSI"
    );
    assert_eq!(
        m.cfg_read(r.a.slot, 0x2c, 4),
        0x0008_0b5d,
        "OpenBSD, VIRTIO_SCSI"
    );
    assert_eq!(r.v.device_features(m), VIRTIO_F_VERSION_1);
    assert_eq!(m.pio.read(r.v.common + 0x12, 2), 3, "num_queues");
    for q in 0..3 {
        assert_eq!(r.v.queue_max(m, q), 128);
    }
    let (dev, len) = r.v.device.expect("DEVICE_CFG");
    assert_eq!(len, 36);
    let word = |off: u16| m.pio.read(dev + off, 4);
    let want = [1, 17, 2048, 1, 0, 96, 32];
    for (i, w) in want.iter().enumerate() {
        assert_eq!(word(4 * i as u16), *w, "config word {i}");
    }
    assert_eq!(m.pio.read(dev + 28, 2), 0, "max_channel");
    assert_eq!(m.pio.read(dev + 30, 2), 1, "max_target");
    assert_eq!(word(32), 1, "max_lun");
    // Driver writes (sense_size, cdb_size) do not change it.
    m.pio.write(dev + 20, 4, 32);
    assert_eq!(word(20), 96);
}

#[test]
fn inquiry_capacity_and_reads_through_the_ring() {
    let mut r = rig();
    let t = r.cmd(&[0; 6], 0);
    assert_eq!((t.response, t.status, t.sense_len), (0, 0, 0));
    assert_eq!(t.used_len, CMD_RESP_LEN as u32);

    let i = r.cmd(&[0x12, 0, 0, 0, 36, 0], 96);
    assert_eq!((i.response, i.status), (0, 0));
    assert_eq!(i.resid, 96 - 36);
    assert_eq!(i.used_len, CMD_RESP_LEN as u32 + 36);
    assert_eq!(&r.guest(DATA + 8, 28), b"OpenBSD VMM CD-ROM      001 ");

    let c = r.cmd(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8);
    assert_eq!(c.status, 0);
    assert_eq!(r.guest(DATA, 8), [0, 0, 0, BLOCKS as u8 - 1, 0, 0, 8, 0]);

    let rd = r.cmd(&[0x28, 0, 0, 0, 0, 10, 0, 0, 4, 0], 4 * 2048);
    assert_eq!((rd.response, rd.status, rd.resid), (0, 0, 0));
    assert_eq!(rd.used_len, CMD_RESP_LEN as u32 + 4 * 2048);
    assert_eq!(r.guest(DATA, 4 * 2048), iso()[10 * 2048..14 * 2048]);
}

#[test]
fn structures_split_over_descriptors_and_data_in_pieces() {
    let mut r = rig();
    // READ(10) of blocks 3..5: the request in two pieces, the response in
    // two, the data in three of odd sizes.
    r.write_req(lun(0, 0), &[0x28, 0, 0, 0, 0, 3, 0, 0, 2, 0]);
    let bufs = [
        (REQ, 10, false),
        (REQ + 10, CMD_REQ_LEN as u32 - 10, false),
        (RESP, 11, true),
        (RESP + 11, CMD_RESP_LEN as u32 - 11, true),
        (DATA, 1000, true),
        (DATA + 0x1000, 3000, true),
        (DATA + 0x2000, 96, true),
    ];
    let resp = r.submit(&bufs);
    assert_eq!((resp.response, resp.status, resp.resid), (0, 0, 0));
    let want = &iso()[3 * 2048..5 * 2048];
    assert_eq!(r.guest(DATA, 1000), want[..1000]);
    assert_eq!(r.guest(DATA + 0x1000, 3000), want[1000..4000]);
    assert_eq!(r.guest(DATA + 0x2000, 96), want[4000..]);
}

#[test]
fn errors_carry_fixed_format_sense() {
    let mut r = rig();
    // Past the end: LBA OUT OF RANGE.
    let e = r.cmd(&[0x28, 0, 0, 0, 0, BLOCKS as u8 - 2, 0, 0, 4, 0], 4 * 2048);
    assert_eq!((e.response, e.status, e.sense_len), (0, 2, 18));
    assert_eq!(
        (e.sense[0], e.sense[2], e.sense[12], e.sense[13]),
        (0x70, 5, 0x21, 0)
    );
    assert_eq!(e.used_len, CMD_RESP_LEN as u32);
    // An opcode it does not know: INVALID COMMAND OPERATION CODE.
    let e = r.cmd(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], 0);
    assert_eq!((e.status, e.sense[2], e.sense[12]), (2, 5, 0x20));
    // A read bigger than its data-in buffer: OVERRUN.
    let o = r.cmd(&[0x28, 0, 0, 0, 0, 0, 0, 0, 2, 0], 2048);
    assert_eq!(o.response, VIRTIO_SCSI_S_OVERRUN);
    assert_eq!(o.resid, 2048);
    // A huge transfer length: out of range, never a huge allocation.
    let h = r.cmd(&[0xa8, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff], 2048);
    assert_eq!((h.status, h.sense[12]), (2, 0x21));
}

#[test]
fn other_targets_and_luns_are_bad_targets() {
    let mut r = rig();
    for (target, l) in [(1, 0), (2, 0), (0, 1), (255, 3), (0, 0x101)] {
        r.write_req(lun(target, l), &[0x12, 0, 0, 0, 36, 0]);
        let resp = r.submit(&[
            (REQ, CMD_REQ_LEN as u32, false),
            (RESP, CMD_RESP_LEN as u32, true),
            (DATA, 96, true),
        ]);
        assert_eq!(resp.response, VIRTIO_SCSI_S_BAD_TARGET, "{target}:{l}");
    }
    // A short request header: FAILURE, the device goes on.
    r.write_req(lun(0, 0), &[0x00]);
    let resp = r.submit(&[(REQ, 20, false), (RESP, CMD_RESP_LEN as u32, true)]);
    assert_eq!(resp.response, VIRTIO_SCSI_S_FAILURE);
    assert_eq!(r.cmd(&[0; 6], 0).response, 0);
}

/// SeaBIOS scans with REPORT LUNS, takes vmd's answer (the request's LUN
/// field) for LUN 0x40000100 and then addresses it with 0x41 in byte 2:
/// that is still the CD-ROM, as in vmd.
#[test]
fn report_luns_and_seabios_addressing() {
    let mut r = rig();
    let l = r.cmd(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0], 16);
    assert_eq!((l.response, l.status), (0, 0));
    let got = r.guest(DATA + 8, 8);
    assert_eq!(got, [1, 0, 0x40, 0, 0, 0, 0, 0]);
    let as_seabios = (0..4).fold(0u64, |v, i| {
        v | u64::from(u16::from_be_bytes([got[2 * i], got[2 * i + 1]])) << (16 * i)
    });
    assert_eq!(as_seabios, 0x4000_0100, "the LUN in vmd's cdrom bootorder");
    r.write_req(lun(0, 0x100), &[0; 6]);
    let t = r.submit(&[
        (REQ, CMD_REQ_LEN as u32, false),
        (RESP, CMD_RESP_LEN as u32, true),
    ]);
    assert_eq!((t.response, t.status), (0, 0));
}

#[test]
fn control_queue_task_management() {
    let mut r = rig();
    let mut tmf = [0u8; 24];
    tmf[8..16].copy_from_slice(&lun(0, 0));
    r.m.mem.write(REQ, &tmf).unwrap();
    r.m.mem.write(RESP, &[0xee]).unwrap();
    let head = r.ctrl.add(&r.m, &[(REQ, 24, false), (RESP, 1, true)]);
    r.v.kick(&r.m, 0);
    assert_eq!(r.ctrl.take_used(&r.m), [(u32::from(head), 1)]);
    assert_eq!(r.guest(RESP, 1), [VIRTIO_SCSI_S_FUNCTION_COMPLETE]);
    tmf[9] = 5;
    r.m.mem.write(REQ, &tmf).unwrap();
    r.ctrl.add(&r.m, &[(REQ, 24, false), (RESP, 1, true)]);
    r.v.kick(&r.m, 0);
    r.ctrl.take_used(&r.m);
    assert_eq!(r.guest(RESP, 1), [VIRTIO_SCSI_S_BAD_TARGET]);
}

fn needs_reset(r: &Rig) -> bool {
    r.v.status(&r.m) & VIRTIO_CONFIG_DEVICE_STATUS_DEVICE_NEEDS_RESET != 0
}

/// Chains the device cannot answer put it in NEEDS_RESET; after a reset
/// it works again.
#[test]
fn hostile_chains_need_reset_then_work_again() {
    let hostile: [&[(u64, u32, bool)]; 4] = [
        // No writable buffer at all.
        &[(REQ, CMD_REQ_LEN as u32, false)],
        // A response too short for status and response.
        &[(REQ, CMD_REQ_LEN as u32, false), (RESP, 8, true)],
        // Readable after writable.
        &[
            (REQ, CMD_REQ_LEN as u32, false),
            (RESP, CMD_RESP_LEN as u32, true),
            (DATA, 64, false),
        ],
        // Outside guest memory.
        &[
            (REQ, CMD_REQ_LEN as u32, false),
            (0x30_0000, CMD_RESP_LEN as u32, true),
        ],
    ];
    for (i, bufs) in hostile.iter().enumerate() {
        let mut r = rig();
        r.write_req(lun(0, 0), &[0; 6]);
        r.req.add(&r.m, bufs);
        r.v.kick(&r.m, 2);
        assert!(needs_reset(&r), "chain {i}");
        // Ignored until reset.
        r.write_req(lun(0, 0), &[0; 6]);
        r.req.add(
            &r.m,
            &[
                (REQ, CMD_REQ_LEN as u32, false),
                (RESP, CMD_RESP_LEN as u32, true),
            ],
        );
        r.v.kick(&r.m, 2);
        let (ctrl, req) = bring_up(&r.m, &r.v);
        r.ctrl = ctrl;
        r.req = req;
        assert!(!needs_reset(&r));
        assert_eq!(r.cmd(&[0; 6], 0).status, 0, "chain {i}: works after reset");
    }
}

/// A looping chain.
#[test]
fn a_looping_chain_needs_reset() {
    let mut r = rig();
    r.write_req(lun(0, 0), &[0; 6]);
    r.req.put_desc(&r.m, 0, REQ, CMD_REQ_LEN as u32, F_NEXT, 1);
    r.req
        .put_desc(&r.m, 1, RESP, CMD_RESP_LEN as u32, F_WRITE | F_NEXT, 0);
    r.req.publish(&r.m, 0);
    r.v.kick(&r.m, 2);
    assert!(needs_reset(&r));
}

/// Random chains and requests against the device: never a panic, and it
/// either answers or needs a reset.
#[test]
fn random_requests_never_panic() {
    let mut r = rig();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..3000u32 {
        let mut req = [0u8; CMD_REQ_LEN];
        for b in req.iter_mut() {
            *b = next() as u8;
        }
        if i % 2 == 0 {
            req[0..8].copy_from_slice(&lun(0, 0));
            for b in req[21..].iter_mut() {
                *b &= 1;
            }
        }
        r.m.mem.write(REQ, &req).unwrap();
        let n = 1 + next() % 5;
        let mut bufs = vec![];
        for k in 0..n {
            let w = k > 0 && next() % 4 != 0;
            let len = (next() % 0x3000) as u32;
            let addr = if next() % 16 == 0 {
                0x18_0000
            } else {
                DATA + k * 0x4000
            };
            bufs.push((if k == 0 { REQ } else { addr }, len, w));
        }
        r.req.add(&r.m, &bufs);
        r.v.kick(&r.m, 2);
        r.req.take_used(&r.m);
        if needs_reset(&r) {
            let (ctrl, req) = bring_up(&r.m, &r.v);
            r.ctrl = ctrl;
            r.req = req;
        }
    }
    assert_eq!(r.cmd(&[0; 6], 0).status, 0);
}
