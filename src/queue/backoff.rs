//! Retry timing: exponential between `retry_min` and `retry_max`, with
//! jitter so that messages deferred together do not come back together.

use std::time::Duration;

/// The wait before attempt `failures + 1`, given `failures` consecutive
/// failures (at least 1). `unit` in [0, 1) is the jitter draw: the wait is
/// taken from the top fifth of the exponential step, never below `min` nor
/// above `max`.
pub(crate) fn delay(failures: u32, min: Duration, max: Duration, unit: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(32);
    let base = min.saturating_mul(1u32 << exp.min(31)).min(max);
    let jittered = base.mul_f64(0.8 + 0.2 * unit.clamp(0.0, 1.0));
    jittered.clamp(min, max)
}

/// `delay` with a random jitter draw.
pub(crate) fn next(failures: u32, min: Duration, max: Duration) -> Duration {
    delay(failures, min, max, fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule() {
        let (min, max) = (Duration::from_secs(300), Duration::from_secs(3600));
        let cases = [
            (1, 0.999, 300),
            (1, 0.0, 300),
            (2, 0.999, 599),
            (2, 0.0, 480),
            (3, 0.999, 1199),
            (4, 0.999, 2399),
            (5, 0.999, 3599),
            (5, 0.0, 2880),
            (40, 0.999, 3599),
            (0, 0.5, 300),
        ];
        for (failures, unit, secs) in cases {
            assert_eq!(delay(failures, min, max, unit).as_secs(), secs, "failures={failures} unit={unit}");
        }
    }

    #[test]
    fn always_within_bounds() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(2));
        for f in 0..100 {
            let d = next(f, min, max);
            assert!(d >= min && d <= max);
        }
    }
}
