use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;

use super::*;
use crate::testutil::{check, Check, TempDir};
use crate::Raw;

const MIB: u64 = 1 << 20;
const CS: u64 = 1 << CREATE_CLUSTER_BITS;

fn new_file(path: &str) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .unwrap()
}

fn make(path: &str, size: u64, backing: Option<&str>) {
    create(&new_file(path), path, size, backing).unwrap();
}

fn open_rw(path: &str, backing: Option<Box<dyn DiskImage>>) -> Qcow2 {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    Qcow2::open(f, path, backing, true).unwrap()
}

fn raw_with(path: &str, data: &[u8]) -> Box<dyn DiskImage> {
    std::fs::write(path, data).unwrap();
    Box::new(Raw::open(File::open(path).unwrap(), path, false).unwrap())
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn clean() -> Check {
    Check::default()
}

#[test]
fn create_lays_out_the_image_as_vmd_does() {
    let d = TempDir::new("create-layout");
    let p = d.path("a.qcow2");
    make(&p, 3 * 1024 * MIB, Some("base.qcow2"));
    let f = File::open(&p).unwrap();
    let h = Header::read(&f, &p).unwrap();
    assert_eq!(h.version, 3);
    assert_eq!(h.cluster_bits, 16);
    assert_eq!(h.size, 3 * 1024 * MIB);
    // 512 MiB per L2 table.
    assert_eq!(h.l1_size, 6);
    assert_eq!(h.l1_offset, CS);
    assert_eq!(h.refcount_table_offset, 2 * CS);
    assert_eq!(h.refcount_table_clusters, 1);
    assert_eq!((h.backing_offset, h.backing_len), (104, 10));
    assert_eq!(f.metadata().unwrap().len(), 4 * CS);
    let b = backing_file(&f, &p).unwrap().unwrap();
    assert_eq!(b.name, "base.qcow2");
    assert_eq!(b.path, d.0.join("base.qcow2"));
    assert_eq!(b.format, None);
    assert_eq!(check(&p), clean());
    let mut rb = [0u8; 10];
    f.read_exact_at(&mut rb, 3 * CS).unwrap();
    assert_eq!(rb, [0, 1, 0, 1, 0, 1, 0, 1, 0, 0]);

    let e = create(&new_file(&d.path("z")), "z", 0, None).unwrap_err();
    assert_eq!(e.to_string(), "z: invalid qcow2 header: size 0x0");
    let e = create(&new_file(&d.path("big")), "big", u64::MAX, None).unwrap_err();
    assert_eq!(
        e.to_string(),
        "big: image is full: disk size too large for qcow2"
    );
}

#[test]
fn writes_read_back_across_clusters_and_tables() {
    let d = TempDir::new("rw");
    let p = d.path("a.qcow2");
    make(&p, 1024 * MIB + 7 * 512, None);
    let mut q = open_rw(&p, None);
    assert_eq!(q.size(), 1024 * MIB + 7 * 512);
    let mut buf = vec![0xffu8; 3 * CS as usize];
    q.read_at(&mut buf, 0).unwrap();
    assert!(buf.iter().all(|&b| b == 0), "a new image reads zeros");

    // Across a cluster boundary, across the 512 MiB L2 boundary, a whole
    // cluster, and the unaligned last bytes of the disk.
    let writes = [
        (CS - 100, pattern(300, 1)),
        (512 * MIB - 4096, pattern(8192, 2)),
        (5 * CS, pattern(CS as usize, 3)),
        (q.size() - 1000, pattern(1000, 4)),
        (CS - 50, pattern(20, 5)),
    ];
    for (off, data) in &writes {
        q.write_at(data, *off).unwrap();
    }
    q.flush().unwrap();
    let mut expect = std::collections::BTreeMap::new();
    for (off, data) in &writes {
        for (i, b) in data.iter().enumerate() {
            expect.insert(off + i as u64, *b);
        }
    }
    drop(q);
    assert_eq!(check(&p), clean());
    let f = File::open(&p).unwrap();
    let mut q = Qcow2::open(f, &p, None, false).unwrap();
    for (off, data) in &writes {
        let mut got = vec![0u8; data.len() + 200];
        let start = off.saturating_sub(100);
        let len = got.len().min((q.size() - start) as usize);
        q.read_at(&mut got[..len], start).unwrap();
        for (i, &g) in got[..len].iter().enumerate() {
            let a = start + i as u64;
            assert_eq!(g, *expect.get(&a).unwrap_or(&0), "byte at {a:#x}");
        }
    }
    assert!(matches!(
        q.write_at(&[1], 0),
        Err(DiskError::ReadOnly { .. })
    ));
    let e = q.read_at(&mut [0; 2], q.size() - 1).unwrap_err();
    assert!(matches!(e, DiskError::OutOfRange { .. }), "{e}");
}

#[test]
fn partial_writes_copy_the_backing_cluster() {
    let d = TempDir::new("cow");
    let base = pattern(3 * CS as usize + 4096, 0x5a);
    let bp = d.path("base.img");
    let p = d.path("a.qcow2");
    // The overlay is larger than its base: past the base, zeros.
    make(&p, 8 * CS, Some("base.img"));
    let mut q = open_rw(&p, Some(raw_with(&bp, &base)));
    q.write_at(&[0xee; 10], CS + 5).unwrap();
    q.write_at(&[0xdd; 10], 3 * CS + 4090).unwrap();
    q.write_at(&[0xcc; 100], 2 * CS - 50).unwrap();
    let mut got = vec![0u8; 8 * CS as usize];
    q.read_at(&mut got, 0).unwrap();
    let mut want = base.clone();
    want.resize(8 * CS as usize, 0);
    want[CS as usize + 5..CS as usize + 15].fill(0xee);
    want[3 * CS as usize + 4090..3 * CS as usize + 4100].fill(0xdd);
    want[2 * CS as usize - 50..2 * CS as usize + 50].fill(0xcc);
    assert!(got == want, "overlay reads the base under its writes");
    drop(q);
    assert_eq!(check(&p), clean());
    // Three clusters and one L2 table were allocated.
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 8 * CS);
}

#[test]
fn a_second_refcount_block_is_allocated_when_needed() {
    let d = TempDir::new("refblock");
    let p = d.path("a.qcow2");
    make(&p, 8 * 1024 * MIB, None);
    let mut q = open_rw(&p, None);
    // One refcount block counts 32768 clusters (2 GiB of file); move the
    // end of the file just before that, then allocate past it.
    q.next_free = 32767 * CS;
    q.write_at(&pattern(4096, 9), 0).unwrap();
    q.write_at(&pattern(4096, 10), 7 * 1024 * MIB).unwrap();
    assert_ne!(q.refcount_table[1], 0);
    drop(q);
    let c = check(&p);
    assert!(c.corruptions.is_empty(), "{:?}", c.corruptions);
    let mut q = Qcow2::open(File::open(&p).unwrap(), &p, None, false).unwrap();
    let mut b = vec![0u8; 4096];
    q.read_at(&mut b, 7 * 1024 * MIB).unwrap();
    assert_eq!(b, pattern(4096, 10));
    q.read_at(&mut b, 0).unwrap();
    assert_eq!(b, pattern(4096, 9));
}

type Patches<'a> = &'a [(u64, &'a [u8])];

/// Overwrites header bytes of a fresh image and opens it.
fn open_patched(patches: &[(u64, &[u8])], writable: bool) -> Result<Qcow2, DiskError> {
    let d = TempDir::new("patched");
    let p = d.path("x.qcow2");
    make(&p, 16 * MIB, None);
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    for (off, bytes) in patches {
        f.write_all_at(bytes, *off).unwrap();
    }
    Qcow2::open(f, "x.qcow2", None, writable)
}

#[test]
fn what_vmd_disk_refuses_is_refused_at_open_naming_the_file() {
    let cases: &[(Patches, bool, &str)] = &[
        (&[(0, b"QFI\xfa")], false, "x.qcow2: not a qcow2 image"),
        (
            &[(4, &[0, 0, 0, 4])],
            false,
            "x.qcow2: unsupported qcow2 version 0x4",
        ),
        (
            &[(20, &[0, 0, 0, 22])],
            false,
            "x.qcow2: invalid qcow2 header: cluster_bits 0x16",
        ),
        (
            &[(32, &[0, 0, 0, 1])],
            false,
            "x.qcow2: unsupported qcow2 encryption method 0x1",
        ),
        (
            &[(96, &[0, 0, 0, 5])],
            false,
            "x.qcow2: unsupported qcow2 refcount order 0x5",
        ),
        (
            &[(79, &[4])],
            false,
            "x.qcow2: unsupported qcow2 external data file, feature 0x4",
        ),
        (
            &[(79, &[8])],
            false,
            "x.qcow2: unsupported qcow2 compression type 0x0",
        ),
        (
            &[(79, &[16])],
            false,
            "x.qcow2: unsupported qcow2 extended L2 entries, feature 0x10",
        ),
        (
            &[(72, &[1])],
            false,
            "x.qcow2: unsupported qcow2 incompatible features 0x100000000000000",
        ),
        (
            &[(79, &[1])],
            true,
            "x.qcow2: qcow2 image is marked dirty; repair it with qemu-img check -r all",
        ),
        (
            &[(79, &[2])],
            true,
            "x.qcow2: qcow2 image is marked corrupt; repair it with qemu-img check -r all",
        ),
        (
            &[(60, &[0, 0, 0, 1])],
            true,
            "x.qcow2: unsupported qcow2 internal snapshots for writing, count 0x1",
        ),
        (
            &[(36, &[0, 0x40, 0, 1])],
            false,
            "x.qcow2: invalid qcow2 header: l1_size 0x400001",
        ),
        (
            &[(36, &[0, 0, 0, 0])],
            false,
            "x.qcow2: invalid qcow2 header: size 0x1000000",
        ),
        (
            &[(40, &[0, 0, 0, 0, 0, 0x10, 0, 0])],
            false,
            "x.qcow2: invalid qcow2 header: l1_table_offset 0x100000",
        ),
        (
            &[(48, &[0, 0, 0, 0, 0, 0, 0, 8])],
            false,
            "x.qcow2: invalid qcow2 header: refcount_table_offset 0x8",
        ),
        (
            &[(56, &[0, 0, 1, 0])],
            false,
            "x.qcow2: invalid qcow2 header: refcount_table_clusters 0x100",
        ),
        (
            &[(100, &[0, 0, 0, 8])],
            false,
            "x.qcow2: invalid qcow2 header: header_length 0x8",
        ),
        (
            &[(8, &[0, 0, 0, 0, 0, 0, 0, 104]), (16, &[0, 0, 4, 0])],
            false,
            "x.qcow2: invalid qcow2 header: backing_file_size 0x400",
        ),
        (
            &[
                (8, &[0, 0, 0, 0, 0, 0, 0, 104]),
                (16, &[0, 0, 0, 4]),
                (104, b"base"),
            ],
            false,
            "x.qcow2: backing file base is missing",
        ),
    ];
    for (patches, writable, msg) in cases {
        let e = open_patched(patches, *writable).unwrap_err();
        assert_eq!(e.to_string(), *msg);
    }
    // Dirty and corrupt images still serve as (read-only) backing files.
    open_patched(&[(79, &[3])], false).unwrap();
    // Unknown autoclear bits are cleared when opened for writing.
    let d = TempDir::new("autoclear");
    let p = d.path("a.qcow2");
    make(&p, MIB, None);
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    f.write_all_at(&[0x80, 0, 0, 0, 0, 0, 0, 3], 88).unwrap();
    drop(Qcow2::open(f, &p, None, true).unwrap());
    let mut ac = [0xffu8; 8];
    File::open(&p).unwrap().read_exact_at(&mut ac, 88).unwrap();
    assert_eq!(ac, [0; 8]);
}

#[test]
fn a_short_file_is_an_error() {
    let d = TempDir::new("short");
    let p = d.path("s.qcow2");
    std::fs::write(&p, b"QFI\xfb\0\0\0\x03").unwrap();
    let e = Qcow2::open(File::open(&p).unwrap(), "s.qcow2", None, false).unwrap_err();
    assert_eq!(
        e.to_string(),
        "s.qcow2: invalid qcow2 header: file size 0x8"
    );
}

#[test]
fn l2_cache_evicts_and_reloads() {
    let d = TempDir::new("cache");
    let p = d.path("a.qcow2");
    // 70 L2 tables' worth of disk: more than the cache holds.
    make(&p, 70 * 512 * MIB, None);
    let mut q = open_rw(&p, None);
    assert!(q.l2.capacity < 70);
    for i in 0..70u64 {
        q.write_at(&[i as u8 + 1; 512], i * 512 * MIB + 4096)
            .unwrap();
    }
    for i in (0..70u64).rev() {
        let mut b = [0u8; 512];
        q.read_at(&mut b, i * 512 * MIB + 4096).unwrap();
        assert_eq!(b, [i as u8 + 1; 512]);
    }
    assert_eq!(q.l2.slots.len(), q.l2.capacity);
    drop(q);
    assert_eq!(check(&p), clean());
}

#[test]
fn the_refcount_table_grows_for_small_clusters() {
    let d = TempDir::new("grow");
    let p = d.path("small.qcow2");
    // 512-byte clusters: a refcount block counts 256 clusters and one
    // table cluster 64 blocks, i.e. 8 MiB of file.
    header::create_with(&new_file(&p), &p, 64 * MIB, None, 9).unwrap();
    let mut q = open_rw(&p, None);
    let data = pattern(256 * 1024, 0x3c);
    for i in 0..48u64 {
        q.write_at(&data, i * 256 * 1024 + 100).unwrap();
    }
    assert!(q.refcount_table.len() > 64, "the table grew");
    assert!(q.refcount_table_offset > 2 * 512);
    drop(q);
    assert_eq!(check(&p), clean());
    let mut q = Qcow2::open(File::open(&p).unwrap(), &p, None, false).unwrap();
    let mut b = vec![0u8; data.len()];
    for i in [0u64, 17, 47] {
        q.read_at(&mut b, i * 256 * 1024 + 100).unwrap();
        assert!(b == data, "chunk {i}");
    }
}

#[test]
fn allocating_writes_are_linked_in_at_flush() {
    let d = TempDir::new("writeback");
    let p = d.path("a.qcow2");
    make(&p, 64 * MIB, None);
    let reopen = |p: &str| Qcow2::open(File::open(p).unwrap(), p, None, false).unwrap();
    let mut b = [0u8; 8];

    let mut q = open_rw(&p, None);
    q.write_at(&[0x71; 8], 4096).unwrap();
    q.flush().unwrap();
    q.write_at(&[0x72; 8], 600 * 1024 + 8).unwrap();
    q.write_at(&[0x73; 8], 40 * MIB).unwrap();
    // Seen at once by this image...
    q.read_at(&mut b, 40 * MIB).unwrap();
    assert_eq!(b, [0x73; 8]);
    // ...but a crash now (no write-back, no Drop) keeps only the flushed
    // write, and leaves leaks, never corruption.
    std::mem::forget(q);
    let c = check(&p);
    assert!(c.corruptions.is_empty(), "{:?}", c.corruptions);
    assert!(c.leaks > 0);
    let mut r = reopen(&p);
    r.read_at(&mut b, 4096).unwrap();
    assert_eq!(b, [0x71; 8]);
    r.read_at(&mut b, 600 * 1024 + 8).unwrap();
    assert_eq!(b, [0; 8]);
    r.read_at(&mut b, 40 * MIB).unwrap();
    assert_eq!(b, [0; 8]);
    drop(r);

    // Flushed, they stay.
    let mut q = open_rw(&p, None);
    q.write_at(&[0x74; 8], 40 * MIB).unwrap();
    q.flush().unwrap();
    std::mem::forget(q);
    reopen(&p).read_at(&mut b, 40 * MIB).unwrap();
    assert_eq!(b, [0x74; 8]);
    assert!(check(&p).corruptions.is_empty());
}

/// A failed write of guest data (ENOSPC on a full file system, EIO; here
/// a descriptor that refuses writes) fails that request only: the image
/// is not poisoned, what was written before reads back, and it stays
/// consistent.  Both kinds of data write: into an allocated cluster and
/// into a fresh one.
#[test]
fn a_failed_data_write_leaves_the_image_usable() {
    let d = TempDir::new("data-write-fails");
    let p = d.path("a.qcow2");
    make(&p, 16 * MIB, None);
    let old = pattern(CS as usize, 7);
    {
        let mut q = open_rw(&p, None);
        q.write_at(&old, 0).unwrap();
        q.flush().unwrap();
    }
    // Writable as far as the image knows; every pwrite fails with EBADF.
    let mut q = Qcow2::open(File::open(&p).unwrap(), &p, None, true).unwrap();
    let new = pattern(4096, 9);
    let err = q.write_at(&new, 512).unwrap_err();
    assert!(!matches!(err, DiskError::Poisoned { .. }), "{err}");
    let err = q.write_at(&new, 4 * CS).unwrap_err();
    assert!(!matches!(err, DiskError::Poisoned { .. }), "{err}");
    let mut got = vec![0u8; CS as usize];
    q.read_at(&mut got, 0).unwrap();
    assert_eq!(got, old);
    q.read_at(&mut got, 4 * CS).unwrap();
    assert!(
        got.iter().all(|b| *b == 0),
        "the fresh cluster is not linked"
    );
    q.flush().unwrap();
    drop(q);
    assert_eq!(check(&p), clean());
}
