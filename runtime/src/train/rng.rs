//! The random stream behind initialisation and data: SplitMix64, whose whole state is one
//! `u64`, so any position in a run can be reproduced from (seed, purpose, step).

#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A stream for one purpose at one step, independent of every other (seed, purpose, step).
    pub fn for_step(seed: u64, purpose: u64, step: u64) -> Rng {
        let mut r = Rng(seed ^ purpose.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        r.0 ^= r.next_u64().wrapping_add(step.wrapping_mul(0xD1B5_4A32_D192_ED03));
        r
    }

    /// The stream `draws` draws further on: SplitMix64's state advances by a constant per
    /// draw, so a stream splits into chunks that threads fill with the same values.
    pub fn skipped(&self, draws: u64) -> Rng {
        Rng(self.0.wrapping_add(draws.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform on [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn a_skipped_stream_continues_where_the_draws_would_have_left_it() {
        let mut r = Rng::for_step(7, 3, 11);
        let skipped = r.skipped(1000);
        for _ in 0..1000 {
            r.next_u64();
        }
        assert_eq!(skipped.clone().next_u64(), r.next_u64());
    }
}
