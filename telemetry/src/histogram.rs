//! Percentiles of samples and of bucketed histograms.
//!
//! Every percentile in the workspace is the nearest rank: the smallest
//! sample (or bucket) at or below which at least `q` of the samples lie.
//! Over sorted samples that is a sample itself; over a histogram it is the
//! bucket holding that rank, reported by one of its bounds.

/// The 1-based nearest rank of quantile `q` (0..=1) among `n` samples
/// (`n > 0`): `ceil(n * q)`, at least 1 and at most `n`.
pub fn nearest_rank(n: u64, q: f64) -> u64 {
    ((n as f64 * q).ceil().max(1.0) as u64).min(n)
}

/// Percentile `q` (0..=1) of `sorted` (ascending) by nearest rank; `None`
/// when there are no samples.
pub fn percentile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    let rank = nearest_rank(sorted.len() as u64, q);
    sorted
        .get(usize::try_from(rank).ok()?.checked_sub(1)?)
        .copied()
}

/// The index of the bucket holding quantile `q` (0..=1) of a histogram
/// given as non-cumulative counts per bucket; `None` when it is empty.
pub fn bucket_of(counts: &[u64], q: f64) -> Option<usize> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = nearest_rank(total, q);
    let mut seen = 0;
    counts.iter().position(|&n| {
        seen += n;
        seen >= rank
    })
}

/// An upper bound of quantile `q` of a histogram whose bucket `i` holds
/// the samples at most `bounds[i]`, with one last bucket past the final
/// bound (`counts` has `bounds.len() + 1` entries, Prometheus-style): the
/// bound of the bucket holding the rank, infinity for the last bucket,
/// `None` when the histogram is empty.
pub fn upper_bound(counts: &[u64], bounds: &[f64], q: f64) -> Option<f64> {
    bucket_of(counts, q).map(|i| bounds.get(i).copied().unwrap_or(f64::INFINITY))
}

/// Buckets exact below this value, then [`SUB_BUCKETS`] per power of two.
const EXACT: u64 = 16;
/// Buckets per power of two above [`EXACT`] (about 12% wide).
const SUB_BUCKETS: usize = 8;

/// A log-scale histogram of non-negative integers (durations in
/// microseconds, say): exact below 16, then 8 buckets per power of two,
/// so a quantile is known to within about 12%.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogHistogram {
    buckets: Vec<u64>,
    sum: u64,
}

impl Default for LogHistogram {
    fn default() -> Self {
        Self {
            buckets: vec![0; EXACT as usize + 60 * SUB_BUCKETS],
            sum: 0,
        }
    }
}

impl LogHistogram {
    fn index(v: u64) -> usize {
        if v < EXACT {
            return v as usize;
        }
        let exp = 63 - v.leading_zeros() as usize; // >= 4
        let sub = ((v >> (exp - 3)) & 7) as usize;
        EXACT as usize + (exp - 4) * SUB_BUCKETS + sub
    }

    /// The smallest value that falls in bucket `i`.
    fn lower(i: usize) -> u64 {
        if i < EXACT as usize {
            return i as u64;
        }
        let exp = (i - EXACT as usize) / SUB_BUCKETS + 4;
        let sub = ((i - EXACT as usize) % SUB_BUCKETS) as u64;
        (1u64 << exp) | (sub << (exp - 3))
    }

    /// Counts one sample.
    pub fn record(&mut self, v: u64) {
        let i = Self::index(v).min(self.buckets.len() - 1);
        self.buckets[i] += 1;
        self.sum = self.sum.saturating_add(v);
    }

    /// The sum of every sample.
    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// The samples counted against fixed `bounds` (ascending): one count
    /// per bound of the samples above the previous bound and at most this
    /// one, then one for the rest (Prometheus' buckets, not cumulative).
    /// A sample is placed by its bucket's lower end, so a count may hold
    /// samples up to about 12% above its bound.
    pub fn counts_within(&self, bounds: &[u64]) -> Vec<u64> {
        let mut out = vec![0; bounds.len() + 1];
        for (i, &n) in self.buckets.iter().enumerate().filter(|(_, n)| **n > 0) {
            let v = Self::lower(i);
            let k = bounds.iter().position(|&b| v <= b).unwrap_or(bounds.len());
            out[k] += n;
        }
        out
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Quantile `q` (0..=1): the lower bound of the bucket holding its
    /// nearest rank, so never above the true value; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        bucket_of(&self.buckets, q).map_or(0, Self::lower)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_sorted_samples_by_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&v, 1.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&v[..1], 0.99), Some(1));
        assert_eq!(percentile::<u32>(&[], 0.5), None);
        let f = [0.5, 1.5, 2.5];
        assert_eq!(percentile(&f, 0.5), Some(1.5));
        assert_eq!(nearest_rank(3, 0.5), 2);
        assert_eq!(nearest_rank(3, 2.0), 3);
    }

    #[test]
    fn counts_within_fixed_bounds() {
        let mut h = LogHistogram::default();
        for v in [1, 5, 100, 100, 5000] {
            h.record(v);
        }
        assert_eq!(h.counts_within(&[10, 1000]), vec![2, 2, 1]);
        assert_eq!(h.sum(), 5206);
        assert_eq!(h.count(), 5);
    }

    #[test]
    fn upper_bounds_come_from_the_bucket_bounds() {
        let bounds = [0.1, 0.5, 1.0];
        let counts = [98, 1, 0, 1];
        assert_eq!(upper_bound(&counts, &bounds, 0.5), Some(0.1));
        assert_eq!(upper_bound(&counts, &bounds, 0.99), Some(0.5));
        assert_eq!(upper_bound(&counts, &bounds, 1.0), Some(f64::INFINITY));
        assert_eq!(upper_bound(&[0; 4], &bounds, 0.5), None);
        assert_eq!(bucket_of(&[0, 3, 0], 0.1), Some(1));
    }

    #[test]
    fn log_histogram_quantiles_stay_within_a_bucket() {
        let mut h = LogHistogram::default();
        for us in 1..=1000u64 {
            h.record(us);
        }
        assert_eq!(h.count(), 1000);
        let p50 = h.quantile(0.5);
        let p99 = h.quantile(0.99);
        assert!((448..=500).contains(&p50), "{p50}");
        assert!((896..=990).contains(&p99), "{p99}");
        assert_eq!(LogHistogram::default().quantile(0.5), 0);
        for v in [0, 15, 16, 17, 1000, u64::MAX] {
            let i = LogHistogram::index(v);
            assert!(LogHistogram::lower(i) <= v, "{v}");
        }
        let mut exact = LogHistogram::default();
        exact.record(7);
        assert_eq!(exact.quantile(0.5), 7);
    }
}
