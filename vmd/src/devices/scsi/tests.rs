use super::*;
use crate::devices::virtio::blk::{DiskError, DiskImage};

fn err(what: &str) -> DiskError {
    DiskError::Io {
        path: "memiso".into(),
        op: "test",
        offset: 0,
        source: std::io::Error::other(what.to_string()),
    }
}

/// An ISO in memory: block b's bytes are (b + i) as u8 ^ 0x5a.
struct MemIso {
    data: Vec<u8>,
    fail: bool,
}

impl DiskImage for MemIso {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        if self.fail {
            return Err(err("media error"));
        }
        let o = offset as usize;
        buf.copy_from_slice(
            self.data
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
        self.data.len() as u64
    }
    fn read_only(&self) -> bool {
        true
    }
}

fn iso_bytes(blocks: usize, extra: usize) -> Vec<u8> {
    (0..blocks * 2048 + extra)
        .map(|i| ((i / 2048) as u8).wrapping_add(i as u8) ^ 0x5a)
        .collect()
}

fn cdrom(blocks: usize) -> Cdrom {
    Cdrom::new(
        Box::new(MemIso {
            data: iso_bytes(blocks, 0),
            fail: false,
        }),
        "CD0",
    )
}

/// virtio-scsi's single-level address of target 0, LUN 0.
const LUN: [u8; 8] = [1, 0, 0x40, 0, 0, 0, 0, 0];

fn cdb(bytes: &[u8]) -> [u8; CDB_LEN] {
    let mut c = [0u8; CDB_LEN];
    c[..bytes.len()].copy_from_slice(bytes);
    c
}

fn run(d: &mut Cdrom, c: &[u8], cap: u64) -> (Completion, Vec<u8>) {
    let mut out = VecDataIn::with_capacity(cap);
    let done = d.execute(&LUN, &cdb(c), &mut out).unwrap();
    assert_eq!(done.transferred, out.data.len() as u64);
    assert!(out.data.len() as u64 <= cap);
    (done, out.data)
}

fn check(d: &mut Cdrom, c: &[u8], cap: u64) -> (u8, u8) {
    let (done, data) = run(d, c, cap);
    assert_eq!(done.status, SCSI_CHECK_CONDITION, "{c:02x?}");
    assert!(data.is_empty());
    let s = done.sense.expect("sense");
    let f = s.fixed();
    assert_eq!((f[0], f[7]), (0x70, 10));
    (s.key, s.asc)
}

#[test]
fn standard_inquiry_is_vmds() {
    let mut d = cdrom(10);
    let (done, data) = run(&mut d, &[INQUIRY, 0, 0, 0, 96, 0], 96);
    assert_eq!(done.status, SCSI_GOOD);
    assert_eq!(data.len(), 36);
    assert_eq!(&data[0..5], &[5, 0x80, 0, 2, 31]);
    assert_eq!(&data[8..36], b"OpenBSD VMM CD-ROM      001 ");
    // The allocation length and the buffer both cut it.
    assert_eq!(run(&mut d, &[INQUIRY, 0, 0, 0, 5, 0], 96).1.len(), 5);
    assert_eq!(run(&mut d, &[INQUIRY, 0, 0, 0, 96, 0], 8).1.len(), 8);
    // A page code without EVPD, and CmdDt, are invalid fields.
    assert_eq!(check(&mut d, &[INQUIRY, 0, 0x80, 0, 96, 0], 96), (5, 0x24));
    assert_eq!(check(&mut d, &[INQUIRY, 2, 0, 0, 96, 0], 96), (5, 0x24));
}

#[test]
fn vpd_pages() {
    let mut d = cdrom(10);
    let (_, p0) = run(&mut d, &[INQUIRY, 1, 0x00, 0, 255, 0], 255);
    assert_eq!(p0, [5, 0x00, 0, 3, 0x00, 0x80, 0x83]);
    let (_, p80) = run(&mut d, &[INQUIRY, 1, 0x80, 0, 255, 0], 255);
    assert_eq!(p80, [5, 0x80, 0, 3, b'C', b'D', b'0']);
    let (_, p83) = run(&mut d, &[INQUIRY, 1, 0x83, 0, 255, 0], 255);
    assert_eq!(&p83[0..4], &[5, 0x83, 0, p83.len() as u8 - 4]);
    assert_eq!(&p83[4..8], &[0x02, 0x01, 0, p83.len() as u8 - 8]);
    assert_eq!(&p83[8..], b"OpenBSD VMM CD-ROM CD0");
    assert_eq!(
        check(&mut d, &[INQUIRY, 1, 0xb0, 0, 255, 0], 255),
        (5, 0x24)
    );
}

#[test]
fn capacity_10_and_16() {
    let mut d = cdrom(1000);
    let (done, data) = run(&mut d, &[READ_CAPACITY_10], 8);
    assert_eq!(done.status, SCSI_GOOD);
    assert_eq!(data, [0, 0, 0x03, 0xe7, 0, 0, 0x08, 0]);
    let (_, data) = run(
        &mut d,
        &[
            SERVICE_ACTION_IN_16,
            0x10,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            32,
        ],
        64,
    );
    assert_eq!(data.len(), 32);
    assert_eq!(&data[0..12], &[0, 0, 0, 0, 0, 0, 0x03, 0xe7, 0, 0, 0x08, 0]);
    assert_eq!(check(&mut d, &[SERVICE_ACTION_IN_16, 0x11], 64), (5, 0x24));
}

#[test]
fn a_partial_last_block_is_not_visible() {
    let mut d = Cdrom::new(
        Box::new(MemIso {
            data: iso_bytes(3, 100),
            fail: false,
        }),
        "",
    );
    assert_eq!(d.blocks(), 3);
    assert_eq!(run(&mut d, &[READ_CAPACITY_10], 8).1[3], 2);
}

#[test]
fn reads_of_each_size_return_the_blocks() {
    let iso = iso_bytes(64, 0);
    let mut d = cdrom(64);
    let want = |lba: usize, n: usize| iso[lba * 2048..(lba + n) * 2048].to_vec();
    let cap = 1 << 20;
    let (done, data) = run(&mut d, &[READ_10, 0, 0, 0, 0, 5, 0, 0, 3, 0], cap);
    assert_eq!(done, Completion::good(3 * 2048));
    assert_eq!(data, want(5, 3));
    let (_, data) = run(&mut d, &[READ_12, 0, 0, 0, 0, 60, 0, 0, 0, 4], cap);
    assert_eq!(data, want(60, 4));
    let (_, data) = run(
        &mut d,
        &[READ_16, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0],
        cap,
    );
    assert_eq!(data, want(1, 2));
    let (_, data) = run(&mut d, &[READ_6, 0, 0, 7, 1, 0], cap);
    assert_eq!(data, want(7, 1));
    // Zero blocks: good, nothing moved.
    let (done, data) = run(&mut d, &[READ_10, 0, 0, 0, 0, 5, 0, 0, 0, 0], cap);
    assert_eq!((done.status, data.len()), (SCSI_GOOD, 0));
}

#[test]
fn reads_past_the_end_are_lba_out_of_range() {
    let mut d = cdrom(64);
    let cap = 1 << 20;
    // Starting inside but running past the last block.
    assert_eq!(
        check(&mut d, &[READ_10, 0, 0, 0, 0, 62, 0, 0, 4, 0], cap),
        (5, 0x21)
    );
    assert_eq!(
        check(&mut d, &[READ_10, 0, 0, 0, 0, 64, 0, 0, 1, 0], cap),
        (5, 0x21)
    );
    // Huge LBAs and counts that would overflow.
    assert_eq!(
        check(
            &mut d,
            &[READ_16, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            cap
        ),
        (5, 0x21)
    );
    assert_eq!(
        check(
            &mut d,
            &[READ_12, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
            cap
        ),
        (5, 0x21)
    );
    // The last blocks themselves are fine.
    assert_eq!(
        run(&mut d, &[READ_10, 0, 0, 0, 0, 62, 0, 0, 2, 0], cap)
            .0
            .status,
        SCSI_GOOD
    );
}

#[test]
fn a_read_bigger_than_the_buffer_overruns_without_reading() {
    let mut d = cdrom(64);
    let (done, data) = run(&mut d, &[READ_10, 0, 0, 0, 0, 0, 0, 0, 2, 0], 4095);
    assert!(done.overrun);
    assert_eq!((done.status, data.len()), (SCSI_GOOD, 0));
}

#[test]
fn a_failing_image_is_a_medium_error() {
    let mut d = Cdrom::new(
        Box::new(MemIso {
            data: iso_bytes(8, 0),
            fail: true,
        }),
        "",
    );
    assert_eq!(
        check(&mut d, &[READ_10, 0, 0, 0, 0, 1, 0, 0, 1, 0], 2048),
        (3, 0x11)
    );
}

#[test]
fn an_empty_image_has_no_medium() {
    let mut d = cdrom(0);
    assert_eq!(check(&mut d, &[TEST_UNIT_READY], 0), (2, 0x3a));
    assert_eq!(check(&mut d, &[READ_CAPACITY_10], 8), (2, 0x3a));
    assert_eq!(
        check(&mut d, &[READ_10, 0, 0, 0, 0, 0, 0, 0, 1, 0], 2048),
        (2, 0x3a)
    );
    assert_eq!(
        check(&mut d, &[READ_TOC, 0, 0, 0, 0, 0, 0, 0, 20, 0], 20),
        (2, 0x3a)
    );
}

#[test]
fn mode_sense_pages() {
    let mut d = cdrom(10);
    let (_, m6) = run(&mut d, &[MODE_SENSE_6, 0, 0x01, 0, 255, 0], 255);
    assert_eq!(m6.len(), 16);
    assert_eq!(&m6[0..4], &[15, 0x70, 0, 0]);
    assert_eq!(&m6[4..8], &[0x01, 0x0a, 0, 5]);
    let (_, m10) = run(
        &mut d,
        &[MODE_SENSE_10, 0, 0x2a, 0, 0, 0, 0, 0, 255, 0],
        255,
    );
    assert_eq!(m10.len(), 40);
    assert_eq!(&m10[0..3], &[0, 38, 0x70]);
    assert_eq!(&m10[8..11], &[0x2a, 30, 0x08]);
    let (_, all) = run(&mut d, &[MODE_SENSE_6, 0, 0x3f, 0, 255, 0], 255);
    assert_eq!(all.len(), 4 + 12 + 32);
    // Changeable values, unknown pages, subpages: invalid field.
    assert_eq!(
        check(&mut d, &[MODE_SENSE_6, 0, 0x41, 0, 255, 0], 255),
        (5, 0x24)
    );
    assert_eq!(
        check(&mut d, &[MODE_SENSE_6, 0, 0x08, 0, 255, 0], 255),
        (5, 0x24)
    );
    assert_eq!(
        check(&mut d, &[MODE_SENSE_6, 0, 0x01, 1, 255, 0], 255),
        (5, 0x24)
    );
}

#[test]
fn read_toc_formats() {
    let mut d = cdrom(1000);
    let (_, toc) = run(&mut d, &[READ_TOC, 0, 0, 0, 0, 0, 0, 0, 100, 0], 100);
    assert_eq!(
        toc,
        [0, 18, 1, 1, 0, 0x14, 1, 0, 0, 0, 0, 0, 0, 0x14, 0xaa, 0, 0, 0, 0x03, 0xe8]
    );
    // From the lead-out: only it.
    let (_, toc) = run(&mut d, &[READ_TOC, 0, 0, 0, 0, 0, 0xaa, 0, 100, 0], 100);
    assert_eq!(toc, [0, 10, 1, 1, 0, 0x14, 0xaa, 0, 0, 0, 0x03, 0xe8]);
    // MSF: 1000 + 150 frames = 0:15:25.
    let (_, toc) = run(&mut d, &[READ_TOC, 2, 0, 0, 0, 0, 0xaa, 0, 100, 0], 100);
    assert_eq!(&toc[8..12], &[0, 0, 15, 25]);
    // Session info.
    let (_, s) = run(&mut d, &[READ_TOC, 0, 1, 0, 0, 0, 0, 0, 100, 0], 100);
    assert_eq!(s, [0, 10, 1, 1, 0, 0x14, 1, 0, 0, 0, 0, 0]);
    assert_eq!(
        check(&mut d, &[READ_TOC, 0, 0, 0, 0, 0, 2, 0, 100, 0], 100),
        (5, 0x24)
    );
    assert_eq!(
        check(&mut d, &[READ_TOC, 0, 5, 0, 0, 0, 0, 0, 100, 0], 100),
        (5, 0x24)
    );
}

#[test]
fn get_configuration_gesn_mechanism_status_and_lock() {
    let mut d = cdrom(10);
    let (_, c) = run(
        &mut d,
        &[GET_CONFIGURATION, 0, 0, 0, 0, 0, 0, 0, 255, 0],
        255,
    );
    assert_eq!(c.len(), 56);
    assert_eq!(&c[0..4], &[0, 0, 0, 52]);
    assert_eq!(&c[44..52], &[0, 0x10, 3, 8, 0, 0, 8, 0]);
    let gesn = [GET_EVENT_STATUS_NOTIFICATION, 1, 0, 0, 0x10, 0, 0, 0, 8, 0];
    assert_eq!(run(&mut d, &gesn, 8).1, [0, 6, 2, 4, 0, 2, 0, 0]);
    assert_eq!(run(&mut d, &[PREVENT_ALLOW, 0, 0, 0, 1, 0], 0).0.status, 0);
    assert!(d.locked());
    assert_eq!(run(&mut d, &gesn, 8).1[5], 1);
    assert_eq!(run(&mut d, &[PREVENT_ALLOW, 0, 0, 0, 0, 0], 0).0.status, 0);
    assert!(!d.locked());
    // Asynchronous GESN is not supported.
    assert_eq!(
        check(
            &mut d,
            &[GET_EVENT_STATUS_NOTIFICATION, 0, 0, 0, 0x10, 0, 0, 0, 8, 0],
            8
        ),
        (5, 0x24)
    );
    let (_, m) = run(
        &mut d,
        &[MECHANISM_STATUS, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0],
        8,
    );
    assert_eq!(m, [0; 8]);
}

#[test]
fn unit_commands_report_luns_request_sense_and_unknown_opcodes() {
    let mut d = cdrom(10);
    assert_eq!(run(&mut d, &[TEST_UNIT_READY], 0).0, Completion::good(0));
    assert_eq!(
        run(&mut d, &[START_STOP_UNIT, 0, 0, 0, 2, 0], 0).0,
        Completion::good(0)
    );
    let (_, rs) = run(&mut d, &[REQUEST_SENSE, 0, 0, 0, 18, 0], 252);
    assert_eq!(rs.len(), 18);
    assert_eq!((rs[0], rs[2], rs[12]), (0x70, 0, 0));
    let (_, l) = run(&mut d, &[REPORT_LUNS, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0], 16);
    assert_eq!(l, [0, 0, 0, 8, 0, 0, 0, 0, 1, 0, 0x40, 0, 0, 0, 0, 0]);
    assert_eq!(
        check(&mut d, &[REPORT_LUNS, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0], 16),
        (5, 0x24)
    );
    // WRITE(10), MODE SELECT, READ DISC INFORMATION: not here.
    for op in [0x2a, 0x15, 0x51, 0xff] {
        assert_eq!(check(&mut d, &[op], 4096), (5, 0x20), "opcode {op:#x}");
    }
}

/// Random CDBs (every opcode, random fields) against random buffer sizes:
/// never a panic, never more data than the buffer or the allocation, and
/// a CHECK CONDITION always carries sense.
#[test]
fn random_cdbs_never_panic() {
    let mut d = cdrom(40);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..20_000 {
        let mut c = [0u8; CDB_LEN];
        for b in c.iter_mut() {
            *b = next() as u8;
        }
        // Mostly small numbers, so that commands get past their checks.
        if i % 2 == 0 {
            for b in c[2..].iter_mut() {
                *b &= 0x3;
            }
        }
        c[0] = (i % 256) as u8;
        let cap = next() % (200 * 1024);
        let mut out = VecDataIn::with_capacity(cap);
        let done = d.execute(&LUN, &c, &mut out).unwrap();
        assert!(out.data.len() as u64 <= cap);
        assert_eq!(done.transferred, out.data.len() as u64);
        assert_eq!(done.status == SCSI_CHECK_CONDITION, done.sense.is_some());
    }
}
