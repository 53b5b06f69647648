//! Tumbling and sliding windows: aligned to the epoch, `size` long, one
//! every `slide` (tumbling is `slide == size`).
//!
//! State is a map ordered by window end, so firing and purging on a
//! watermark is a walk over the front of the map.

use std::collections::BTreeMap;
use std::sync::Arc;

use ahash::AHashMap;

use super::{floor_to, Accumulator, Event, ResultKind, Window, WindowResult};
use crate::config::AggregateFunction;
use crate::time::Millis;

#[derive(Debug, Default)]
pub(super) struct WindowState {
    pub(super) keys: AHashMap<Arc<str>, Slot>,
    pub(super) fired: bool,
}

#[derive(Debug, Clone)]
pub(super) struct Slot {
    pub(super) accumulators: Vec<Accumulator>,
    pub(super) dirty: bool,
}

#[derive(Debug)]
pub(super) struct FixedWindows {
    size: Millis,
    slide: Millis,
    /// Keyed by `(end, start)` so the earliest-ending window is first.
    pub(super) windows: BTreeMap<(Millis, Millis), WindowState>,
    pub(super) open_slots: usize,
}

impl FixedWindows {
    pub(super) fn new(size: Millis, slide: Millis) -> Self {
        FixedWindows { size, slide, windows: BTreeMap::new(), open_slots: 0 }
    }

    /// Every window containing `time`, earliest first.
    pub(super) fn assign(&self, time: Millis) -> impl Iterator<Item = Window> + '_ {
        let last_start = floor_to(time, self.slide);
        let count = self.size / self.slide;
        (0..count).rev().map(move |i| {
            let start = last_start - i * self.slide;
            Window { start, end: start + self.size }
        })
    }

    /// Adds the event to each of its windows still kept; returns whether any
    /// accepted it. A window already fired re-fires at once.
    pub(super) fn process(
        &mut self,
        event: &Event,
        functions: &[AggregateFunction],
        watermark: Millis,
        lateness: Millis,
        out: &mut Vec<WindowResult>,
    ) -> bool {
        let mut accepted = false;
        let windows: Vec<Window> = self.assign(event.time).collect();
        for window in windows {
            if window.end.saturating_add(lateness) <= watermark {
                continue;
            }
            accepted = true;
            let state = self
                .windows
                .entry((window.end, window.start))
                .or_insert_with(|| WindowState { keys: AHashMap::new(), fired: window.end <= watermark });
            let slot = state.keys.entry(event.key.clone()).or_insert_with(|| {
                self.open_slots += 1;
                Slot { accumulators: functions.iter().map(|f| Accumulator::new(*f)).collect(), dirty: false }
            });
            for (acc, input) in slot.accumulators.iter_mut().zip(&event.inputs) {
                acc.add(input, event.time);
            }
            if state.fired {
                out.push(WindowResult {
                    key: event.key.clone(),
                    window,
                    accumulators: slot.accumulators.clone(),
                    kind: ResultKind::Final,
                });
            } else {
                slot.dirty = true;
            }
        }
        accepted
    }

    /// Fires windows that end at or before the watermark and drops those
    /// past their allowed lateness.
    pub(super) fn advance(&mut self, watermark: Millis, lateness: Millis, out: &mut Vec<WindowResult>) {
        for (&(end, start), state) in self.windows.range_mut(..=(watermark, Millis::MAX)) {
            if state.fired {
                continue;
            }
            state.fired = true;
            let window = Window { start, end };
            out.extend(state.keys.iter_mut().map(|(key, slot)| {
                slot.dirty = false;
                WindowResult {
                    key: key.clone(),
                    window,
                    accumulators: slot.accumulators.clone(),
                    kind: ResultKind::Final,
                }
            }));
        }
        while let Some(entry) = self.windows.first_entry() {
            let (end, _) = *entry.key();
            if end.saturating_add(lateness) > watermark {
                break;
            }
            self.open_slots -= entry.get().keys.len();
            entry.remove();
        }
    }

    /// Running values of open windows changed since the last call.
    pub(super) fn updates(&mut self, out: &mut Vec<WindowResult>) {
        for (&(end, start), state) in self.windows.iter_mut().filter(|(_, s)| !s.fired) {
            for (key, slot) in state.keys.iter_mut().filter(|(_, s)| s.dirty) {
                slot.dirty = false;
                out.push(WindowResult {
                    key: key.clone(),
                    window: Window { start, end },
                    accumulators: slot.accumulators.clone(),
                    kind: ResultKind::Update,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_assigns_size_over_slide_windows_including_negative_times() {
        let f = FixedWindows::new(30, 10);
        let w: Vec<_> = f.assign(25).map(|w| (w.start, w.end)).collect();
        assert_eq!(w, vec![(0, 30), (10, 40), (20, 50)]);
        let w: Vec<_> = f.assign(-5).map(|w| (w.start, w.end)).collect();
        assert_eq!(w, vec![(-30, 0), (-20, 10), (-10, 20)]);
        let t = FixedWindows::new(10, 10);
        assert_eq!(t.assign(10).collect::<Vec<_>>(), vec![Window { start: 10, end: 20 }]);
    }
}
