//! Which event times a pipeline believes.
//!
//! One record with an event time in the year 3000 would move its partition's
//! watermark there, and every later record of the partition would be late.
//! So a record whose event time is further ahead of the connector's wall
//! clock than `max_ahead` (or, when set, further behind it than
//! `max_behind`) is refused before it reaches the watermark: the task sends
//! it to the dead-letter topic with stage `event_time`.
//!
//! Independently of the configured bounds, event times outside years 0000 to
//! 9999 (RFC 3339's range) are never accepted. With windows and lateness
//! limited to at most [`MAX_SPAN`] by configuration, this keeps every sum of
//! window arithmetic (`start + size + lateness`) far inside `i64`.
//!
//! The bounds are judged at processing time: a replay after a failover,
//! later by the wall clock, may accept a record that was ahead of the clock
//! the first time (and refuse one that has since fallen behind
//! `max_behind`). Either way the region reflects the last processing, as
//! every replay rewrites its partials.

use std::time::Duration;

use super::Millis;

/// 0000-01-01T00:00:00Z.
pub const EARLIEST: Millis = -62_167_219_200_000;
/// 9999-12-31T23:59:59.999Z.
pub const LATEST: Millis = 253_402_300_799_999;
/// The longest window, gap, lateness or bound a pipeline may configure.
pub const MAX_SPAN: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// An event time in milliseconds from a floating-point reading, when it is
/// a finite number within [`EARLIEST`]..=[`LATEST`] (so `"inf"`, `"NaN"`
/// and `1e300` are not).
pub fn millis_from_f64(v: f64) -> Option<Millis> {
    (v.is_finite() && v >= EARLIEST as f64 && v <= LATEST as f64).then_some(v as Millis)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTimeBounds {
    max_ahead: Millis,
    max_behind: Option<Millis>,
}

impl EventTimeBounds {
    pub fn new(max_ahead: Duration, max_behind: Option<Duration>) -> Self {
        let ms = |d: Duration| d.min(MAX_SPAN).as_millis() as Millis;
        EventTimeBounds { max_ahead: ms(max_ahead), max_behind: max_behind.map(ms) }
    }

    /// Accepts `time` at wall-clock `now`, or says why not.
    pub fn check(&self, time: Millis, now: Millis) -> Result<Millis, String> {
        if !(EARLIEST..=LATEST).contains(&time) {
            return Err(format!("event time {time} is outside years 0000 to 9999"));
        }
        if time > now.saturating_add(self.max_ahead) {
            return Err(format!(
                "event time {time} is {} ahead of the wall clock, more than watermark.max_ahead_of_clock ({})",
                span(time - now),
                span(self.max_ahead)
            ));
        }
        if let Some(max_behind) = self.max_behind {
            if time < now.saturating_sub(max_behind) {
                return Err(format!(
                    "event time {time} is {} behind the wall clock, more than watermark.max_behind_clock ({})",
                    span(now - time),
                    span(max_behind)
                ));
            }
        }
        Ok(time)
    }
}

fn span(ms: Millis) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_millis(ms.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = 1_700_000_000_000;

    #[test]
    fn refuses_times_beyond_the_bounds_and_accepts_the_edges() {
        let bounds = EventTimeBounds::new(Duration::from_secs(3600), Some(Duration::from_secs(86_400)));
        assert_eq!(bounds.check(NOW + 3_600_000, NOW), Ok(NOW + 3_600_000));
        assert!(bounds.check(NOW + 3_600_001, NOW).unwrap_err().contains("ahead of the wall clock"));
        assert_eq!(bounds.check(NOW - 86_400_000, NOW), Ok(NOW - 86_400_000));
        assert!(bounds.check(NOW - 86_400_001, NOW).unwrap_err().contains("behind the wall clock"));
        let year_3000 = 32_503_680_000_000;
        assert!(bounds.check(year_3000, NOW).is_err());
    }

    #[test]
    fn without_a_lower_bound_only_the_calendar_limits_the_past() {
        let bounds = EventTimeBounds::new(Duration::from_secs(3600), None);
        assert_eq!(bounds.check(0, NOW), Ok(0));
        assert_eq!(bounds.check(EARLIEST, NOW), Ok(EARLIEST));
        assert!(bounds.check(EARLIEST - 1, NOW).is_err());
        assert!(bounds.check(Millis::MIN, NOW).is_err());
        assert!(bounds.check(Millis::MAX, Millis::MAX).is_err(), "no overflow at the extremes");
        let generous = EventTimeBounds::new(Duration::MAX, None);
        assert!(generous.check(LATEST + 1, NOW).is_err());
    }

    #[test]
    fn floats_that_are_not_plausible_times_are_none() {
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e300, -1e300, LATEST as f64 * 2.0] {
            assert_eq!(millis_from_f64(v), None, "{v}");
        }
        assert_eq!(millis_from_f64(1234.9), Some(1234));
        assert_eq!(millis_from_f64(LATEST as f64), Some(LATEST));
    }
}
