//! Bounded-out-of-orderness watermarks with idle-partition advance.
//!
//! A partition's watermark `W` promises that no further on-time record has
//! an event time below `W`: it trails the highest event time seen by the
//! configured out-of-orderness. A window `[start, end)` is complete once
//! `W >= end`.
//!
//! A partition that goes quiet would otherwise hold its last windows open
//! forever. After `idle_timeout` of silence (measured on the monotonic
//! clock the caller passes as `now`, see `time::Clock`) while the task is
//! caught up with the partition (the task checks that, and passes as `now`
//! the latest time the partition's leader confirmed it; see
//! [`WatermarkTracker::touch`]), the tracker drops
//! the out-of-orderness allowance and lets the watermark follow the wall
//! passage of time from the highest event time seen:
//! `W = max_seen + 1 + (now - last_arrival - idle_timeout)`. The watermark
//! never goes back, so records that arrive after such an advance may be late.

use std::time::Duration;

use super::Millis;

#[derive(Debug, Clone)]
pub struct WatermarkTracker {
    out_of_orderness: Millis,
    idle_timeout: Millis,
    max_seen: Option<Millis>,
    last_arrival: Millis,
    current: Millis,
}

impl WatermarkTracker {
    pub fn new(out_of_orderness: Duration, idle_timeout: Duration) -> Self {
        WatermarkTracker {
            out_of_orderness: out_of_orderness.as_millis() as Millis,
            idle_timeout: idle_timeout.as_millis() as Millis,
            max_seen: None,
            last_arrival: 0,
            current: Millis::MIN,
        }
    }

    /// Restores a tracker at a checkpointed watermark.
    pub fn restore(&mut self, watermark: Millis, max_seen: Option<Millis>, now: Millis) {
        self.current = watermark;
        self.max_seen = max_seen;
        self.last_arrival = now;
    }

    /// Records an event time seen at wall-clock `now`; returns the watermark.
    pub fn observe(&mut self, event_time: Millis, now: Millis) -> Millis {
        self.last_arrival = now;
        let max_seen = self.max_seen.map_or(event_time, |m| m.max(event_time));
        self.max_seen = Some(max_seen);
        self.advance_to(max_seen.saturating_sub(self.out_of_orderness))
    }

    /// Restarts the idle clock: the partition is not quiet (records are
    /// waiting upstream), so its watermark must not advance by wall clock.
    pub fn touch(&mut self, now: Millis) {
        self.last_arrival = now;
    }

    /// Whether the partition has been quiet for the idle timeout at `now`,
    /// having seen a record: an idle advance is due.
    pub fn idle_due(&self, now: Millis) -> bool {
        self.max_seen.is_some() && now - self.last_arrival >= self.idle_timeout
    }

    /// Advances the watermark of a partition known to be quiet at `now`;
    /// returns the watermark.
    pub fn on_idle(&mut self, now: Millis) -> Millis {
        if let Some(max_seen) = self.max_seen {
            let quiet_for = now - self.last_arrival;
            if quiet_for >= self.idle_timeout {
                let idle_mark = max_seen.saturating_add(1 + quiet_for - self.idle_timeout);
                return self.advance_to(idle_mark);
            }
        }
        self.current
    }

    pub fn current(&self) -> Millis {
        self.current
    }

    pub fn max_seen(&self) -> Option<Millis> {
        self.max_seen
    }

    fn advance_to(&mut self, candidate: Millis) -> Millis {
        self.current = self.current.max(candidate);
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trails_max_seen_by_out_of_orderness_and_never_regresses() {
        let mut w = WatermarkTracker::new(Duration::from_millis(100), Duration::from_secs(5));
        assert_eq!(w.observe(1_000, 0), 900);
        assert_eq!(w.observe(950, 1), 900, "an older record must not move it back");
        assert_eq!(w.observe(1_500, 2), 1_400);
    }

    #[test]
    fn idle_partition_advances_with_wall_clock_after_timeout() {
        let mut w = WatermarkTracker::new(Duration::from_millis(100), Duration::from_millis(1_000));
        w.observe(10_000, 50_000);
        assert_eq!(w.on_idle(50_500), 9_900, "not idle yet");
        assert_eq!(w.on_idle(51_000), 10_001, "idle: allowance dropped");
        assert_eq!(w.on_idle(53_000), 12_001, "then follows the wall clock");
        assert_eq!(w.observe(10_500, 53_001), 12_001, "a new record does not pull it back");
    }

    #[test]
    fn empty_partition_has_no_watermark() {
        let mut w = WatermarkTracker::new(Duration::from_millis(100), Duration::from_millis(10));
        assert_eq!(w.on_idle(1_000_000), Millis::MIN);
    }
}
