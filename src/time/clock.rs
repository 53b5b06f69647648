//! The two clocks a task reads: the wall clock, where event time is
//! compared with it (processing-time windows, the plausible event-time
//! range, lag metrics), and a monotonic clock for everything that measures
//! elapsed time (how long a partition has been quiet). A wall-clock step
//! (NTP, a VM resumed) must not look like an hour of silence: that would
//! advance an idle watermark by the step and make the next records late.
//!
//! [`Clock::step_wall`] moves the wall clock of one `Clock` (and its clones)
//! the way such a step would, for tests.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use super::Millis;

/// The process's monotonic origin.
static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// Added to the system's wall clock (0 outside tests).
    wall_step: Arc<AtomicI64>,
}

impl Clock {
    /// Wall-clock time in epoch milliseconds.
    pub fn wall(&self) -> Millis {
        super::now_millis() + self.wall_step.load(Ordering::Relaxed)
    }

    /// Milliseconds on a clock that never steps (since the process's first
    /// reading); only differences mean anything.
    pub fn monotonic(&self) -> Millis {
        ORIGIN.elapsed().as_millis() as Millis
    }

    /// Steps this clock's wall time by `by` milliseconds.
    pub fn step_wall(&self, by: Millis) {
        self.wall_step.fetch_add(by, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wall_step_leaves_the_monotonic_clock_alone() {
        let clock = Clock::default();
        let (wall, mono) = (clock.wall(), clock.monotonic());
        clock.clone().step_wall(3_600_000);
        assert!(clock.wall() - wall >= 3_600_000);
        assert!(clock.monotonic() - mono < 1_000);
    }
}
