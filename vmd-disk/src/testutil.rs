//! What the unit tests share: a temporary directory, a seeded PRNG and
//! an independent refcount check of a qcow2 file (what `qemu-img check`
//! counts, for hosts without it).
#![allow(dead_code)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// A directory removed when dropped.
pub(crate) struct TempDir(pub PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "vmd-disk-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub(crate) fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// xorshift64*, seeded through splitmix64.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// 0, all-ones, a power of two or its neighbour, or random.
    pub(crate) fn edgy_u64(&mut self) -> u64 {
        match self.below(6) {
            0 => self.below(16),
            1 => u64::MAX - self.below(16),
            2 => 1u64 << self.below(64),
            3 => (1u64 << self.below(64)).wrapping_sub(1),
            4 => self.next() & 0xffff_ffff,
            _ => self.next(),
        }
    }
}

fn be64(f: &File, off: u64) -> u64 {
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, off).unwrap();
    u64::from_be_bytes(b)
}

fn be32(f: &File, off: u64) -> u32 {
    let mut b = [0u8; 4];
    f.read_exact_at(&mut b, off).unwrap();
    u32::from_be_bytes(b)
}

/// What a refcount check found: references to clusters counted too few
/// times (corruption) and clusters counted but not referenced (leaks).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Check {
    pub corruptions: Vec<String>,
    pub leaks: u64,
}

/// Counts every reference in a qcow2 file made as vmd-disk makes them
/// (no snapshots) and compares with its refcounts.
pub(crate) fn check(path: &str) -> Check {
    let f = File::open(path).unwrap();
    let bits = be32(&f, 20);
    let cs = 1u64 << bits;
    let file_len = f.metadata().unwrap().len();
    let nclusters = file_len.div_ceil(cs) as usize;
    let mut want = vec![0u32; nclusters + 1];
    let bump = |off: u64, want: &mut Vec<u32>| {
        let i = (off / cs) as usize;
        if i >= want.len() {
            want.resize(i + 1, 0);
        }
        want[i] += 1;
    };
    bump(0, &mut want);
    let l1_size = u64::from(be32(&f, 36));
    let l1_off = be64(&f, 40);
    for c in 0..(l1_size * 8).div_ceil(cs) {
        bump(l1_off + c * cs, &mut want);
    }
    let rt_off = be64(&f, 48);
    let rt_clusters = u64::from(be32(&f, 56));
    for c in 0..rt_clusters {
        bump(rt_off + c * cs, &mut want);
    }
    let mut blocks = Vec::new();
    for i in 0..rt_clusters * cs / 8 {
        let b = be64(&f, rt_off + i * 8);
        blocks.push(b);
        if b != 0 {
            bump(b, &mut want);
        }
    }
    for i in 0..l1_size {
        let t = be64(&f, l1_off + i * 8) & 0x00ff_ffff_ffff_fe00;
        if t == 0 {
            continue;
        }
        bump(t, &mut want);
        for j in 0..cs / 8 {
            let e = be64(&f, t + j * 8);
            if e & (1 << 62) != 0 {
                let x = 62 - (bits - 8);
                let off = e & ((1 << x) - 1);
                let sectors = ((e >> x) & ((1 << (bits - 8)) - 1)) + 1;
                let start = off & !511;
                let end = start + sectors * 512;
                for c in start / cs..=(end - 1) / cs {
                    bump(c * cs, &mut want);
                }
            } else if e & 0x00ff_ffff_ffff_fe00 != 0 {
                bump(e & 0x00ff_ffff_ffff_fe00, &mut want);
            }
        }
    }
    let mut r = Check::default();
    let per_block = cs / 2;
    for (i, &w) in want.iter().enumerate() {
        let bi = i as u64 / per_block;
        let have = match blocks.get(bi as usize) {
            Some(&b) if b != 0 => {
                let mut v = [0u8; 2];
                f.read_exact_at(&mut v, b + (i as u64 % per_block) * 2)
                    .map(|_| u16::from_be_bytes(v))
                    .unwrap_or(0)
            }
            _ => 0,
        };
        let have = u32::from(have);
        if have < w {
            r.corruptions.push(format!(
                "cluster {i}: refcount {have}, referenced {w} times"
            ));
        } else if have > w {
            r.leaks += 1;
        }
    }
    r
}
