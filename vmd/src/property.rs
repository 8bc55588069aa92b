//! What the crate's "no panic" property tests share: a small seeded PRNG
//! and a runner that catches a panic in one case and reports the case's
//! seed and input.  Every case is generated from its own seed, so a
//! failure reproduces by rerunning the test (or the one case).
use std::panic::{catch_unwind, AssertUnwindSafe};

/// xorshift64*: deterministic and cheap enough for debug builds.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        // xorshift must not start at 0; splitmix the seed.
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

    /// Uniform in `0..n` (n > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True once in `n` times.
    pub(crate) fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    pub(crate) fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }

    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    /// A value that tends to sit on an edge: 0, all-ones, a power of two,
    /// near a page, 4 GiB or 2^64 boundary, or just random.
    pub(crate) fn edgy_u64(&mut self) -> u64 {
        let k = self.below(16);
        match self.below(9) {
            0 => k,
            1 => u64::MAX - k,
            2 => 1u64 << self.below(64),
            3 => (1u64 << self.below(64)).wrapping_sub(1),
            4 => (0x1_0000_0000u64).wrapping_sub(k),
            5 => (self.below(0x10_0000) << 12).wrapping_sub(k),
            6 => self.next() & 0xffff_ffff,
            7 => 0xffff_8000_0000_0000 | self.below(1 << 20),
            _ => self.next(),
        }
    }
}

/// Runs `iters` cases of a property: case `i` is `gen` applied to a fresh
/// [`Rng`] seeded from `seed` and `i`, then `run` on the input.  A panic in
/// `run` fails the test with the case's number and seed and `describe` of
/// the input (generated again from the same seed).
pub(crate) fn cases<I>(
    name: &str,
    seed: u64,
    iters: u64,
    mut gen: impl FnMut(&mut Rng) -> I,
    describe: impl Fn(&I) -> String,
    mut run: impl FnMut(I),
) {
    for i in 0..iters {
        let case_seed = seed ^ i.wrapping_mul(0xd6e8_feb8_6659_fd93);
        let input = gen(&mut Rng::new(case_seed));
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| run(input))) {
            let msg = p
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("(non-string panic)");
            let again = gen(&mut Rng::new(case_seed));
            panic!(
                "{name}: case {i} (seed {case_seed:#x}) panicked: {msg}\ninput: {}",
                describe(&again)
            );
        }
    }
}
