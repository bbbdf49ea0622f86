//! The arithmetic of usage roll-ups: latency buckets, percentiles, time buckets and windows.
//!
//! Everything here is pure so it can be tested without Envoy or a database. Latency is kept as
//! counts per fixed bucket (Envoy's default histogram bounds), because bucket counts add up
//! exactly across Envoys, minutes and hours, while percentiles do not; percentiles are computed
//! only when a query asks, from the summed buckets.

use chrono::{DateTime, Duration, Utc};

/// Upper bounds (ms) of Envoy's default histogram buckets, the ones the filter's `latency_ms`
/// uses. A sample `v` falls in the first bucket whose bound is `>= v`.
pub const LATENCY_BOUNDS_MS: [f64; 19] = [
    0.5,
    1.0,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1_000.0,
    2_500.0,
    5_000.0,
    10_000.0,
    30_000.0,
    60_000.0,
    300_000.0,
    600_000.0,
    1_800_000.0,
    3_600_000.0,
];

/// Stored buckets: one per bound plus one for samples above the last bound.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// One minute, in seconds.
pub const MINUTE: i64 = 60;
/// One hour, in seconds.
pub const HOUR: i64 = 3_600;

/// Latency samples: how many, their sum, and how many fell in each bucket.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Latency {
    /// Number of samples.
    pub count: u64,
    /// Sum of the samples in ms.
    pub sum_ms: f64,
    /// Samples per bucket (not cumulative), see [`LATENCY_BOUNDS_MS`].
    pub buckets: [u64; LATENCY_BUCKETS],
}

impl Latency {
    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Add another set of samples.
    pub fn merge(&mut self, other: &Latency) {
        self.count += other.count;
        self.sum_ms += other.sum_ms;
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
    }

    /// Samples from a Prometheus histogram as Envoy sends it: cumulative counts per upper bound
    /// (the counts of one flush interval), `sample_count` including samples above the last bound.
    ///
    /// Bounds that are not Envoy's defaults (custom `histogram_bucket_settings`) are mapped to
    /// the smallest default bound that is `>=` them, so a percentile can only be overstated, never
    /// understated. Counts that go down along the bounds (never sent by Envoy) are treated as 0.
    pub fn from_cumulative(sample_count: u64, sample_sum: f64, buckets: &[(f64, u64)]) -> Latency {
        let mut out = Latency {
            count: sample_count,
            sum_ms: if sample_sum.is_finite() {
                sample_sum
            } else {
                0.0
            },
            buckets: [0; LATENCY_BUCKETS],
        };
        let mut previous = 0u64;
        for &(bound, cumulative) in buckets {
            let n = cumulative.saturating_sub(previous);
            previous = previous.max(cumulative);
            out.buckets[bucket_index(bound)] += n;
        }
        out.buckets[LATENCY_BUCKETS - 1] += sample_count.saturating_sub(previous);
        out
    }

    /// The `q` quantile (0 < q ≤ 1) in ms, interpolated linearly inside its bucket (as
    /// Prometheus' `histogram_quantile` does); `None` without samples. A quantile that falls
    /// above the last bound is reported as the last bound.
    pub fn percentile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 || !(q > 0.0 && q <= 1.0) {
            return None;
        }
        let rank = q * total as f64;
        let mut seen = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if (seen + n) as f64 >= rank {
                let Some(&upper) = LATENCY_BOUNDS_MS.get(i) else {
                    return LATENCY_BOUNDS_MS.last().copied();
                };
                let lower = if i == 0 {
                    0.0
                } else {
                    LATENCY_BOUNDS_MS[i - 1]
                };
                let within = (rank - seen as f64) / n as f64;
                return Some(round2(lower + (upper - lower) * within));
            }
            seen += n;
        }
        LATENCY_BOUNDS_MS.last().copied()
    }

    /// Mean latency in ms.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| round2(self.sum_ms / self.count as f64))
    }
}

/// Index of the stored bucket for an upper bound.
pub fn bucket_index(bound: f64) -> usize {
    LATENCY_BOUNDS_MS
        .iter()
        .position(|b| *b >= bound - bound.abs() * 1e-9)
        .unwrap_or(LATENCY_BUCKETS - 1)
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Start of the bucket of `resolution` seconds that holds `ts` (Unix seconds).
pub fn bucket_start(ts: i64, resolution: i64) -> i64 {
    ts.div_euclid(resolution) * resolution
}

/// Minute rows that start before this time are compacted into hours: the start of the hour
/// that holds `now - minute_retention` (only whole hours move, so an hour row never has to be
/// merged with a minute row of the same hour later).
pub fn compaction_cutoff(now: i64, minute_retention: Duration) -> i64 {
    bucket_start(now - minute_retention.num_seconds(), HOUR)
}

/// Rows that start before this time are deleted: `now - retention`, rounded down to the hour so
/// an hour row is deleted only when all of it is older than the retention.
pub fn retention_cutoff(now: i64, retention: Duration) -> i64 {
    bucket_start(now - retention.num_seconds(), HOUR) - HOUR
}

/// Why a time parameter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct TimeParamError {
    /// The query parameter.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Parse a window bound: RFC 3339 (`2026-11-25T10:00:00Z`) or a duration before `now`
/// (`90s`, `15m`, `24h`, `7d`, `2w`).
pub fn parse_time(
    field: &str,
    value: &str,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, TimeParamError> {
    let err = |message: String| TimeParamError {
        field: field.to_string(),
        message,
    };
    let v = value.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(t.with_timezone(&Utc));
    }
    let d = parse_duration(v).map_err(|why| {
        err(format!(
            "expected an RFC 3339 time (2026-11-25T10:00:00Z) or a duration before now (30m, 24h, 7d), got {value:?}{why}"
        ))
    })?;
    now.checked_sub_signed(d)
        .ok_or_else(|| err(format!("{value:?} reaches before the start of time")))
}

/// Parse `<n><unit>` with unit `s`, `m`, `h`, `d` or `w` (as for retention settings too).
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let v = value.trim();
    let split = v
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| ": a duration needs a unit (s, m, h, d, w)".to_string())?;
    let (num, unit) = v.split_at(split);
    let n: i64 = num
        .parse()
        .map_err(|_| ": the duration must start with a whole number".to_string())?;
    let secs = match unit {
        "s" => 1,
        "m" => MINUTE,
        "h" => HOUR,
        "d" => 24 * HOUR,
        "w" => 7 * 24 * HOUR,
        _ => return Err(format!(": unknown unit {unit:?} (s, m, h, d, w)")),
    };
    n.checked_mul(secs)
        .filter(|s| *s <= 100 * 365 * 24 * HOUR)
        .map(Duration::seconds)
        .ok_or_else(|| ": the duration is too long".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cumulative(counts: &[u64]) -> Vec<(f64, u64)> {
        // Per-bucket counts → Envoy's cumulative form.
        let mut acc = 0;
        LATENCY_BOUNDS_MS
            .iter()
            .zip(counts.iter().chain(std::iter::repeat(&0)))
            .map(|(b, n)| {
                acc += n;
                (*b, acc)
            })
            .collect()
    }

    #[test]
    fn cumulative_buckets_become_per_bucket_counts() {
        // 4 samples ≤ 0.5 ms, 2 in (0.5, 1], 1 in (25, 50], 1 above an hour.
        let l = Latency::from_cumulative(8, 12.0, &cumulative(&[4, 2, 0, 0, 0, 1]));
        assert_eq!(l.count, 8);
        assert_eq!(&l.buckets[..6], &[4, 2, 0, 0, 0, 1]);
        assert_eq!(l.buckets[LATENCY_BUCKETS - 1], 1);
        assert_eq!(l.buckets.iter().sum::<u64>(), 8);
    }

    #[test]
    fn envoys_interval_histograms_merge_exactly() {
        let a = Latency::from_cumulative(3, 3.0, &cumulative(&[0, 3]));
        let b = Latency::from_cumulative(2, 40.0, &cumulative(&[0, 0, 0, 0, 2]));
        let mut sum = Latency::default();
        sum.merge(&a);
        sum.merge(&b);
        assert_eq!(sum.count, 5);
        assert_eq!(sum.sum_ms, 43.0);
        assert_eq!(&sum.buckets[..5], &[0, 3, 0, 0, 2]);
        assert_eq!(sum.mean(), Some(8.6));
    }

    #[test]
    fn custom_bounds_map_to_the_next_default_bound() {
        assert_eq!(bucket_index(0.5), 0);
        assert_eq!(bucket_index(0.7), 1);
        assert_eq!(bucket_index(1.0), 1);
        assert_eq!(bucket_index(3_600_000.0), 18);
        assert_eq!(bucket_index(1e12), LATENCY_BUCKETS - 1);
        let l = Latency::from_cumulative(3, 0.0, &[(2.0, 1), (7.0, 3)]);
        assert_eq!(&l.buckets[..4], &[0, 0, 1, 2]);
    }

    #[test]
    fn decreasing_cumulative_counts_do_not_underflow() {
        let l = Latency::from_cumulative(2, 0.0, &[(0.5, 2), (1.0, 1)]);
        assert_eq!(l.buckets[0], 2);
        assert_eq!(l.buckets.iter().sum::<u64>(), 2);
    }

    #[test]
    fn percentiles_interpolate_inside_the_bucket() {
        // 100 samples in (10, 25] ms.
        let mut l = Latency {
            count: 100,
            ..Default::default()
        };
        l.buckets[4] = 100;
        assert_eq!(l.percentile(0.5), Some(17.5));
        assert_eq!(l.percentile(0.99), Some(24.85));
        assert_eq!(l.percentile(1.0), Some(25.0));
        // 90 fast (≤ 0.5 ms), 10 slow in (250, 500]: p50 fast, p95 and p99 slow.
        let mut l = Latency {
            count: 100,
            ..Default::default()
        };
        l.buckets[0] = 90;
        l.buckets[8] = 10;
        assert!(l.percentile(0.5).unwrap() <= 0.5);
        assert_eq!(l.percentile(0.95), Some(375.0));
        assert_eq!(l.percentile(0.99), Some(475.0));
        // Above the last bound: the last bound.
        let mut l = Latency::default();
        l.buckets[LATENCY_BUCKETS - 1] = 1;
        assert_eq!(l.percentile(0.5), Some(3_600_000.0));
        assert_eq!(Latency::default().percentile(0.5), None);
        assert_eq!(Latency::default().mean(), None);
    }

    #[test]
    fn buckets_and_cutoffs() {
        assert_eq!(bucket_start(3_725, MINUTE), 3_720);
        assert_eq!(bucket_start(3_725, HOUR), 3_600);
        assert_eq!(bucket_start(-1, MINUTE), -60);
        let now = 10 * 24 * HOUR + 1_234;
        // 48 h of minutes: everything before the hour that holds now-48h is compacted.
        assert_eq!(compaction_cutoff(now, Duration::hours(48)), 8 * 24 * HOUR);
        // 7 days of data: hour rows that end before now-7d are deleted.
        assert_eq!(
            retention_cutoff(now, Duration::days(7)),
            3 * 24 * HOUR - HOUR
        );
    }

    #[test]
    fn time_parameters() {
        let now = DateTime::parse_from_rfc3339("2026-11-25T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let t = |v: &str| parse_time("since", v, now);
        assert_eq!(t("24h").unwrap().to_rfc3339(), "2026-11-24T12:00:00+00:00");
        assert_eq!(t("7d").unwrap().to_rfc3339(), "2026-11-18T12:00:00+00:00");
        assert_eq!(t("90s").unwrap().to_rfc3339(), "2026-11-25T11:58:30+00:00");
        assert_eq!(t("2w").unwrap().to_rfc3339(), "2026-11-11T12:00:00+00:00");
        assert_eq!(
            t("2026-11-25T10:00:00+02:00").unwrap().to_rfc3339(),
            "2026-11-25T08:00:00+00:00"
        );
        for bad in ["", "yesterday", "24", "h", "5y", "-1h", "99999999999999d"] {
            let e = t(bad).unwrap_err();
            assert_eq!(e.field, "since", "{bad}");
        }
        assert!(t("5y").unwrap_err().message.contains("unknown unit"));
    }
}
