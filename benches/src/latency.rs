//! Latency samples and their summary (p50, p99, max), which criterion does not report.

use std::time::Duration;

use serde::Serialize;

/// Percentiles of a set of latency samples, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: usize,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

/// Summarises `samples` (sorted in place); `None` when there are none.
pub fn summarize(samples: &mut [Duration]) -> Option<LatencySummary> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let total: Duration = samples.iter().sum();
    Some(LatencySummary {
        count: samples.len(),
        mean_us: micros(total) / samples.len() as f64,
        p50_us: micros(percentile(samples, 0.50)),
        p99_us: micros(percentile(samples, 0.99)),
        max_us: micros(samples[samples.len() - 1]),
    })
}

/// Nearest-rank percentile of sorted, non-empty `samples`: the smallest sample with at least
/// `fraction` of all samples at or below it.
fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A duration in microseconds, with sub-microsecond precision.
pub fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// Operations per second for `count` operations done in `elapsed`.
pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        let summary = summarize(&mut samples).expect("samples");
        assert_eq!(summary.count, 100);
        assert_eq!(summary.p50_us, 50.0);
        assert_eq!(summary.p99_us, 99.0);
        assert_eq!(summary.max_us, 100.0);
        assert_eq!(summary.mean_us, 50.5);
    }

    #[test]
    fn one_sample_is_every_percentile() {
        let mut samples = vec![Duration::from_micros(7)];
        let summary = summarize(&mut samples).expect("sample");
        assert_eq!(
            (summary.p50_us, summary.p99_us, summary.max_us),
            (7.0, 7.0, 7.0)
        );
    }

    #[test]
    fn no_samples_no_summary() {
        assert_eq!(summarize(&mut []), None);
    }
}
