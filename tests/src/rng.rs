//! A small seeded generator for randomized tests (soaks, crash points):
//! every run prints its seed, and setting the named variable replays it.

/// xorshift64*: enough randomness for kill points, sizes and attacks.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// From a seed (0 is mapped to 1: xorshift would stay at 0).
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// From `var` in the environment, else from the clock; printed.
    pub fn from_env(var: &str) -> Self {
        Self::new(seed_from_env(var))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The seed in `var`, else one from the clock; printed either way so a
/// failing run can be replayed.
pub fn seed_from_env(var: &str) -> u64 {
    let seed = std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("seed {seed} (replay with {var}={seed})");
    seed
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn a_seed_replays_its_sequence() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        let xs: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        assert_eq!(xs, (0..8).map(|_| b.next_u64()).collect::<Vec<_>>());
        assert_ne!(xs[0], Rng::new(43).next_u64());
        // A zero seed does not stick at zero.
        assert_ne!(Rng::new(0).next_u64(), 0);
    }
}
