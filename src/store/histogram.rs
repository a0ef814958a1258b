//! A fixed-bucket histogram of atomics: the writer observes each fsync's
//! latency and each pass's size into one without a lock; the metrics
//! endpoint reads it.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts of observations per bucket (each bucket holds values up to its
/// bound and above the previous one; the last is unbounded), their sum and
/// their number.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    /// Sum of the observations, in millionths of their unit.
    sum_micros: AtomicU64,
}

/// What a histogram held when read: (upper bound, count) per bucket, not
/// cumulative, the last bound being +Inf; the sum; the number.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        let at = self.bounds.iter().position(|b| value <= *b).unwrap_or(self.bounds.len());
        self.counts[at].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add((value * 1e6).max(0.0) as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let bounds = self.bounds.iter().copied().chain(std::iter::once(f64::INFINITY));
        HistogramSnapshot {
            buckets: bounds.zip(counts.iter().copied()).collect(),
            sum: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            count: counts.iter().sum(),
        }
    }
}

/// Bounds of the fsync latency histogram, in seconds.
pub const FSYNC_SECONDS: &[f64] = &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];
/// Bounds of the writer pass size histogram, in bytes.
pub const PASS_BYTES: &[f64] =
    &[512.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0, 67108864.0];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket() {
        let h = Histogram::new(&[1.0, 10.0]);
        for v in [0.5, 1.0, 3.0, 10.0, 11.0, 1000.0] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(1.0, 2), (10.0, 2), (f64::INFINITY, 2)]);
        assert_eq!(s.count, 6);
        assert!((s.sum - 1025.5).abs() < 1e-6, "{}", s.sum);
    }
}
