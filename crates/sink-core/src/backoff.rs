//! Retry backoff: Sequin's schedule with S2's `Retry-After` as a floor.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::CoreError;

/// Backoff after the n-th consecutive failure of a message.
///
/// `base · 2^(n−1)` with ±`jitter`, and exactly `max` (no jitter) once the doubling would reach
/// the cap, as Sequin's `exponential_backoff`. With the defaults: 1, 2, 4 … 256 s, then 600 s.
/// A server's `Retry-After` is a floor: we never come back sooner than S2 asked.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffPolicy {
    /// Delay after the first failure, in milliseconds.
    pub base_ms: u64,
    /// Upper bound of any delay, in milliseconds.
    pub max_ms: u64,
    /// Relative jitter, e.g. 0.15 for ±15%.
    pub jitter: f64,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            base_ms: 1_000,
            max_ms: 600_000,
            jitter: 0.15,
        }
    }
}

impl BackoffPolicy {
    /// Checks the numbers make sense, naming the bad one.
    pub fn validate(&self) -> Result<(), CoreError> {
        if self.base_ms == 0 {
            return Err(CoreError::InvalidSetting {
                key: "backoff.base_ms",
                reason: "must be greater than 0".into(),
            });
        }
        if self.max_ms < self.base_ms {
            return Err(CoreError::InvalidSetting {
                key: "backoff.max_ms",
                reason: format!("must be at least base_ms ({})", self.base_ms),
            });
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(CoreError::InvalidSetting {
                key: "backoff.jitter",
                reason: format!("must be in [0, 1), got {}", self.jitter),
            });
        }
        Ok(())
    }

    /// The number of failures from which the delay is exactly `max_ms`.
    fn cap_from(&self) -> u32 {
        let ratio = self.max_ms as f64 / self.base_ms as f64;
        ratio.log2().floor() as u32 + 1
    }

    /// Delay after failure number `failures` (1-based), with `unit` a uniform sample in [0, 1)
    /// choosing the jitter; deterministic so schedules can be tested exactly.
    pub fn delay_with(&self, failures: u32, unit: f64, retry_after: Option<Duration>) -> Duration {
        let n = failures.max(1);
        let ms = if n >= self.cap_from() {
            self.max_ms as f64
        } else {
            let raw = self.base_ms as f64 * 2f64.powi(n as i32 - 1);
            let factor = 1.0 - self.jitter + 2.0 * self.jitter * unit.clamp(0.0, 1.0);
            (raw * factor).min(self.max_ms as f64)
        };
        let d = Duration::from_millis(ms.round() as u64);
        match retry_after {
            Some(floor) if floor > d => floor,
            _ => d,
        }
    }

    /// Delay after failure number `failures` with random jitter.
    pub fn delay(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        self.delay_with(failures, fastrand::f64(), retry_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sequin_schedule_without_jitter() {
        let p = BackoffPolicy::default();
        let secs: Vec<u64> = (1..=12)
            .map(|n| p.delay_with(n, 0.5, None).as_secs())
            .collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 600, 600, 600]);
    }

    #[test]
    fn retry_after_is_a_floor_not_a_ceiling() {
        let p = BackoffPolicy::default();
        assert_eq!(
            p.delay_with(1, 0.5, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
        assert_eq!(
            p.delay_with(3, 0.5, Some(Duration::from_millis(10))),
            Duration::from_secs(4)
        );
    }

    #[test]
    fn validation_names_the_key() {
        let bad = BackoffPolicy {
            jitter: 1.5,
            ..Default::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("backoff.jitter"));
        let bad = BackoffPolicy {
            base_ms: 0,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("base_ms"));
        assert!(BackoffPolicy::default().validate().is_ok());
    }

    proptest! {
        #[test]
        fn jitter_stays_within_fifteen_percent(n in 1u32..10, unit in 0.0f64..1.0) {
            let p = BackoffPolicy::default();
            let raw = 1000.0 * 2f64.powi(n as i32 - 1);
            let d = p.delay_with(n, unit, None).as_millis() as f64;
            prop_assert!(d >= (raw * 0.85).floor() && d <= (raw * 1.15).ceil(), "n={} d={}", n, d);
        }

        #[test]
        fn never_above_max_unless_server_asks(n in 1u32..100, unit in 0.0f64..1.0) {
            let p = BackoffPolicy { base_ms: 300, max_ms: 5_000, jitter: 0.2 };
            prop_assert!(p.delay_with(n, unit, None) <= Duration::from_millis(5_000));
        }
    }
}
