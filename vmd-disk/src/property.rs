//! No-panic property test: qcow2 images with their header, L1 table, L2
//! tables, refcount table and blocks and compressed clusters mutated at
//! random are opened and read and written at random.  Whatever happens
//! must be a result: no panic, no huge allocation.  Each case is its own
//! seed, printed when it fails.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::qcow2::{self, Qcow2};
use crate::testutil::{Rng, TempDir};
use crate::{DiskImage, Raw};

const CS: u64 = 1 << qcow2::CREATE_CLUSTER_BITS;

/// A small image with data, two L2 tables and a hand-made compressed
/// cluster, over a raw base.
fn seed_image(dir: &TempDir) -> (String, String) {
    let p = dir.path("img.qcow2");
    let bp = dir.path("base.img");
    std::fs::write(&bp, vec![0x11u8; (3 * CS) as usize]).unwrap();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap();
    qcow2::create(&f, &p, 1 << 30, Some("base.img")).unwrap();
    let base = Raw::open(File::open(&bp).unwrap(), &bp, false).unwrap();
    let mut q = Qcow2::open(f, &p, Some(Box::new(base)), true).unwrap();
    q.write_at(&[0x22; 5000], CS - 100).unwrap();
    q.write_at(&[0x33; 100], 600 << 20).unwrap();
    drop(q);

    // A compressed cluster at guest cluster 8: deflate it by hand and
    // point the L2 entry at it.
    use flate2::{write::DeflateEncoder, Compression};
    use std::io::Write;
    let mut enc = DeflateEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(&vec![0x44u8; CS as usize]).unwrap();
    let z = enc.finish().unwrap();
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    let end = f.metadata().unwrap().len();
    f.write_all_at(&z, end).unwrap();
    let mut l1 = [0u8; 8];
    f.read_exact_at(&mut l1, CS).unwrap();
    let l2 = u64::from_be_bytes(l1) & 0x00ff_ffff_ffff_fe00;
    let x = 62 - (16 - 8);
    let sectors = ((end + z.len() as u64 - 1) / 512) - end / 512;
    let e = (1u64 << 62) | (sectors << x) | end;
    f.write_all_at(&e.to_be_bytes(), l2 + 8 * 8).unwrap();
    // Count the compressed cluster's host cluster, as qemu does.
    let mut rt = [0u8; 8];
    f.read_exact_at(&mut rt, 2 * CS).unwrap();
    let rb = u64::from_be_bytes(rt);
    f.write_all_at(&1u16.to_be_bytes(), rb + (end / CS) * 2)
        .unwrap();
    (p, bp)
}

#[test]
fn compressed_cluster_reads_and_rewrites() {
    let d = TempDir::new("compressed");
    let (p, bp) = seed_image(&d);
    let base = Raw::open(File::open(&bp).unwrap(), &bp, false).unwrap();
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    let mut q = Qcow2::open(f, &p, Some(Box::new(base)), true).unwrap();
    let mut b = vec![0u8; 8192];
    q.read_at(&mut b, 8 * CS + 1000).unwrap();
    assert!(b.iter().all(|&x| x == 0x44));
    q.write_at(&[0x55; 10], 8 * CS + 20).unwrap();
    let mut c = vec![0u8; CS as usize];
    q.read_at(&mut c, 8 * CS).unwrap();
    assert!(c[..20].iter().all(|&x| x == 0x44));
    assert!(c[20..30].iter().all(|&x| x == 0x55));
    assert!(c[30..].iter().all(|&x| x == 0x44));
    drop(q);
    let r = crate::testutil::check(&p);
    assert!(r.corruptions.is_empty(), "{:?}", r.corruptions);
    // The compressed cluster's sectors were unreferenced: its host
    // cluster, which holds nothing else, is free again and not a leak.
    assert_eq!(r.leaks, 0);
}

/// One mutation: a byte, a u16, a u32 or a u64 of an edgy value at a
/// place that matters.
fn mutate(f: &File, rng: &mut Rng, len: u64, l2: u64) {
    let targets = [
        rng.below(112),         // the header
        CS + rng.below(64),     // the L1 table
        2 * CS + rng.below(32), // the refcount table
        3 * CS + rng.below(64), // the refcount block
        l2 + rng.below(16) * 8, // the first L2 table's used entries
        rng.below(len.max(1)),  // anywhere: data, compressed data
    ];
    let at = targets[rng.below(targets.len() as u64) as usize];
    let v = rng.edgy_u64();
    let bytes = v.to_be_bytes();
    let n = [1usize, 2, 4, 8][rng.below(4) as usize];
    let _ = f.write_all_at(&bytes[8 - n..], at);
}

fn exercise(p: &str, bp: &str, rng: &mut Rng) {
    let writable = rng.below(2) == 0;
    let f = match OpenOptions::new().read(true).write(writable).open(p) {
        Ok(f) => f,
        Err(_) => return,
    };
    let base: Option<Box<dyn DiskImage>> = match rng.below(3) {
        0 => None,
        _ => Some(Box::new(
            Raw::open(File::open(bp).unwrap(), bp, false).unwrap(),
        )),
    };
    let Ok(mut q) = Qcow2::open(f, p, base, writable) else {
        return;
    };
    let size = q.size();
    let mut buf = vec![0u8; 3 * CS as usize];
    for _ in 0..8 {
        let len = (rng.below(2 * CS) + 1) as usize;
        let off = match rng.below(3) {
            0 => rng.below(size.max(1)),
            1 => rng.below(16) * CS + rng.below(CS),
            _ => rng.edgy_u64(),
        };
        if rng.below(2) == 0 {
            let _ = q.read_at(&mut buf[..len], off);
        } else {
            let _ = q.write_at(&buf[..len], off);
        }
    }
    let _ = q.flush();
}

#[test]
fn mutated_qcow2_images_never_panic() {
    let cases: u64 = std::env::var("VMD_DISK_PROPERTY_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let d = TempDir::new("property");
    let (p, bp) = seed_image(&d);
    let pristine = std::fs::read(&p).unwrap();
    let l1 = u64::from_be_bytes(pristine[CS as usize..CS as usize + 8].try_into().unwrap());
    let l2 = l1 & 0x00ff_ffff_ffff_fe00;
    assert_ne!(l2, 0);
    for seed in 0..cases {
        std::fs::write(&p, &pristine).unwrap();
        let mut rng = Rng::new(seed);
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        for _ in 0..1 + rng.below(4) {
            mutate(&f, &mut rng, pristine.len() as u64, l2);
        }
        drop(f);
        let r = catch_unwind(AssertUnwindSafe(|| exercise(&p, &bp, &mut rng)));
        assert!(
            r.is_ok(),
            "seed {seed} panicked (VMD_DISK_PROPERTY_CASES to widen)"
        );
    }
}
