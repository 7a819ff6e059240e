//! A small deterministic PRNG (SplitMix64): the fuzzer needs reproducible streams, not
//! cryptographic quality, and no dependency.

/// A SplitMix64 generator.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub(crate) fn new(seed: u64) -> Rng {
        let mut rng = Rng(seed ^ 0x5851_F42D_4C95_7F2D);
        rng.next_u64();
        rng
    }

    /// The generator of input `index` of a run with `seed`: every input has its own stream, so
    /// input `index` is the same whatever ran before it.
    pub(crate) fn derive(seed: u64, index: u64) -> Rng {
        Rng::new(
            seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03),
        )
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// A number in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// True `num` times in `den`.
    pub(crate) fn chance(&mut self, num: u64, den: u64) -> bool {
        self.next_u64() % den < num
    }

    /// One of `items` (which must not be empty).
    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A size up to `max`, small sizes as likely as large magnitudes: a power of two picked
    /// uniformly, then a number below it. Most sizes are small; `max` itself comes up.
    pub(crate) fn size(&mut self, max: usize) -> usize {
        let bits = usize::BITS - max.leading_zeros();
        let magnitude = 1usize << self.below(bits as usize + 1).min(63);
        if self.chance(1, 16) {
            max
        } else {
            (magnitude + self.below(magnitude)).min(max)
        }
    }
}
