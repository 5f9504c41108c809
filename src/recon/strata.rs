//! The strata difference estimator (Eppstein et al., "What's the Difference?", SIGCOMM 2011).
//!
//! Used to size an IBF when no watermark bounds the difference (a first contact). Each element
//! goes to stratum `i` with probability `2^-(i+1)` (by the trailing zeros of a mix of its short
//! id), and each stratum is a small IBF. To estimate `|A Δ B|`, subtract the two estimators and
//! decode strata from the sparsest down: while they decode, their elements are counted exactly;
//! at the first stratum that fails, the count so far is scaled by the sampling rate of the strata
//! decoded. Small differences are counted exactly; large ones are estimated within a few tens of
//! percent, so callers scale the estimate up (see [`SAFETY`]).

use super::ibf::{Ibf, SketchError};

/// Number of strata.
pub const STRATA: usize = 24;

/// Cells per sub-table of each stratum's IBF, as a power of two (3 × 32 = 96 cells).
pub const STRATUM_LOG2: u8 = 5;

/// Factor by which callers scale an estimate to cover the true difference in nearly every case.
pub const SAFETY: f64 = 1.4;

const STRATUM_SALT: u64 = 0x5851_f42d_4c95_7f2d;

/// A strata estimator over short ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Strata {
    strata: Vec<Ibf>,
}

fn stratum_of(short: u64) -> usize {
    let mixed = super::ibf::mix(short ^ STRATUM_SALT);
    usize::try_from(mixed.trailing_zeros())
        .unwrap_or(usize::MAX)
        .min(STRATA - 1)
}

impl Strata {
    /// An empty estimator.
    pub fn new() -> Self {
        let strata = (0..STRATA)
            .filter_map(|_| Ibf::new(STRATUM_LOG2).ok())
            .collect();
        Self { strata }
    }

    /// Rebuilds an estimator from received strata, checking their number and sizes.
    pub fn from_strata(strata: Vec<Ibf>) -> Result<Self, SketchError> {
        if strata.len() != STRATA || strata.iter().any(|s| s.log2() != STRATUM_LOG2) {
            return Err(SketchError::BadSize);
        }
        Ok(Self { strata })
    }

    /// The strata, sparsest last.
    pub fn strata(&self) -> &[Ibf] {
        &self.strata
    }

    /// Adds an element by its short id. O(K).
    pub fn insert(&mut self, short: u64) {
        if let Some(stratum) = self.strata.get_mut(stratum_of(short)) {
            stratum.insert(short);
        }
    }

    /// Estimates the size of the symmetric difference between the two sets.
    pub fn estimate(&self, other: &Strata) -> u64 {
        let mut counted = 0u64;
        for (index, (mine, theirs)) in self.strata.iter().zip(&other.strata).enumerate().rev() {
            let decoded = mine.subtract(theirs).and_then(Ibf::decode);
            match decoded {
                Ok(diff) => counted += (diff.ours.len() + diff.theirs.len()) as u64,
                // Strata index..STRATA decoded hold about 2^-index of all elements.
                Err(_) => {
                    return counted
                        .saturating_add(1)
                        .saturating_mul(1u64 << (index + 1).min(63));
                }
            }
        }
        counted
    }
}

impl Default for Strata {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn estimator(shorts: impl Iterator<Item = u64>) -> Strata {
        let mut s = Strata::new();
        shorts.for_each(|x| s.insert(x));
        s
    }

    #[test]
    fn small_differences_are_counted_exactly() {
        let mut rng = StdRng::seed_from_u64(1);
        let common: Vec<u64> = (0..10_000).map(|_| rng.random()).collect();
        for d in [0usize, 1, 5, 20] {
            let extra: Vec<u64> = (0..d).map(|_| rng.random()).collect();
            let a = estimator(common.iter().copied());
            let b = estimator(common.iter().chain(&extra).copied());
            assert_eq!(a.estimate(&b), d as u64);
        }
    }

    #[test]
    fn large_differences_are_estimated_within_bounds() {
        let mut rng = StdRng::seed_from_u64(2);
        let common: Vec<u64> = (0..20_000).map(|_| rng.random()).collect();
        for d in [1_000usize, 10_000, 100_000] {
            let mut covered = 0;
            for _ in 0..10 {
                let only_a: Vec<u64> = (0..d / 2).map(|_| rng.random()).collect();
                let only_b: Vec<u64> = (0..d - d / 2).map(|_| rng.random()).collect();
                let a = estimator(common.iter().chain(&only_a).copied());
                let b = estimator(common.iter().chain(&only_b).copied());
                let estimate = a.estimate(&b) as f64;
                let ratio = estimate / d as f64;
                assert!((0.3..3.0).contains(&ratio), "d = {d}: estimate {estimate}");
                if estimate * SAFETY >= d as f64 {
                    covered += 1;
                }
            }
            assert!(
                covered >= 8,
                "d = {d}: safety factor covered only {covered} of 10"
            );
        }
    }

    #[test]
    fn malformed_estimators_are_refused() {
        assert_eq!(Strata::from_strata(vec![]), Err(SketchError::BadSize));
        let wrong = (0..STRATA)
            .map(|_| Ibf::new(STRATUM_LOG2 + 1).unwrap())
            .collect();
        assert_eq!(Strata::from_strata(wrong), Err(SketchError::BadSize));
        let right = Strata::new().strata().to_vec();
        assert!(Strata::from_strata(right).is_ok());
    }
}
