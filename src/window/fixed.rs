//! Tumbling and sliding windows: aligned to the epoch, `size` long, one
//! every `slide` (tumbling is `slide == size`; `size` is a whole multiple of
//! `slide`, which configuration checks).
//!
//! State is kept per *pane*, the `slide`-long stretch of event time starting
//! at each multiple of `slide` ("No pane, no gain", Li et al. 2005), not per
//! window: a record updates exactly one pane whatever `size / slide` is, and
//! a window fires by merging the `size / slide` panes it covers (a tumbling
//! window is its one pane). Each pane stores its keys' aggregates in
//! columns ([`Pane`]), so a sliding window's keys are not copied into every
//! window that holds them.
//!
//! Which windows have fired is one number, `fired_through`: the highest
//! watermark seen; every window ending at or before it has fired. A pane is
//! kept until its last window (ending at `start + size`) is past its allowed
//! lateness, so every window a late record can still re-fire has all its
//! panes.
//!
//! A pane row is *dirty* from its first record until running values are
//! emitted ([`FixedWindows::updates`], emit mode `updates`), and again after
//! each later record. A window fires a final result only for the keys with
//! a dirty row among its panes: for the others the region already holds the
//! final value, written as the last update. Without updates every row with
//! records is dirty, so every key fires, as it must.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use ahash::AHashMap;

use super::pane::Pane;
use super::AggregateFunction;
use super::{floor_to, Accumulator, Event, ResultKind, Window, WindowResult};
use crate::time::Millis;

#[derive(Debug)]
pub(super) struct FixedWindows {
    size: Millis,
    slide: Millis,
    pub(super) functions: Vec<AggregateFunction>,
    /// Keyed by the pane's start.
    pub(super) panes: BTreeMap<Millis, Pane>,
    /// Every window ending at or before this has fired.
    pub(super) fired_through: Millis,
    /// (key, pane) rows held.
    pub(super) open_rows: usize,
    /// Scratch map for merging the panes of a sliding window, kept to reuse
    /// its allocation: per key, the merged value and whether any of its rows
    /// is dirty.
    merging: AHashMap<Arc<str>, (Vec<Accumulator>, bool)>,
    /// Final results not emitted because the region already held them (see
    /// the module docs), since the last [`FixedWindows::take_unchanged`].
    unchanged_finals: u64,
    /// Fire every key, dirty or not (`WindowSpec::fire_unchanged`).
    pub(super) fire_unchanged: bool,
}

impl FixedWindows {
    pub(super) fn new(size: Millis, slide: Millis, functions: &[AggregateFunction]) -> Self {
        FixedWindows {
            size,
            slide,
            functions: functions.to_vec(),
            panes: BTreeMap::new(),
            fired_through: Millis::MIN,
            open_rows: 0,
            merging: AHashMap::new(),
            unchanged_finals: 0,
            fire_unchanged: false,
        }
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

    /// Adds the event to its pane if any of its windows is still kept;
    /// returns whether one was. Windows already fired but within their
    /// allowed lateness re-fire at once with the new value.
    pub(super) fn process(
        &mut self,
        event: &Event,
        watermark: Millis,
        lateness: Millis,
        out: &mut Vec<WindowResult>,
    ) -> bool {
        // Windows complete at this watermark fire before the record lands
        // (a no-op when the caller advanced to it, as tasks do).
        self.fire(watermark, out);
        let start = floor_to(event.time, self.slide);
        let last_end = start + self.size;
        if last_end.saturating_add(lateness) <= watermark {
            return false;
        }
        // A new pane grows with its keys: sizing it like the previous one
        // saved a few rehashes but held two full panes while windows overlap.
        let pane = self.panes.entry(start).or_insert_with(|| Pane::with_capacity(&self.functions, 0));
        let (row, added) = pane.row_or_insert(&event.key);
        self.open_rows += added as usize;
        pane.add(row, &event.inputs, event.time);
        if last_end > self.fired_through {
            pane.mark_dirty(row);
        }
        // Fired windows of the pane that are still kept, earliest first.
        let mut end = start + self.slide;
        while end <= last_end && end <= self.fired_through {
            if end.saturating_add(lateness) > watermark {
                let window = Window { start: end - self.size, end };
                let accumulators = self.merged(&event.key, window);
                out.push(WindowResult { key: Arc::from(&*event.key), window, accumulators, kind: ResultKind::Final });
            }
            end += self.slide;
        }
        true
    }

    /// Fires windows that end at or before the watermark and drops panes
    /// whose last window is past its allowed lateness.
    pub(super) fn advance(&mut self, watermark: Millis, lateness: Millis, out: &mut Vec<WindowResult>) {
        self.fire(watermark, out);
        while let Some(entry) = self.panes.first_entry() {
            if (*entry.key() + self.size).saturating_add(lateness) > watermark {
                break;
            }
            self.open_rows -= entry.get().len();
            entry.remove();
        }
    }

    /// Running values of open windows changed since the last call.
    pub(super) fn updates(&mut self, out: &mut Vec<WindowResult>) {
        let mut due: BTreeSet<(Millis, Arc<str>)> = BTreeSet::new();
        for (&start, pane) in self.panes.range_mut((self.open_panes_from(self.fired_through), Bound::Unbounded)) {
            let keys = pane.take_dirty();
            let mut end = start + self.slide;
            while end <= start + self.size {
                if end > self.fired_through {
                    due.extend(keys.iter().map(|k| (end, k.clone())));
                }
                end += self.slide;
            }
        }
        for (end, key) in due {
            let window = Window { start: end - self.size, end };
            let accumulators = self.merged(&key, window);
            out.push(WindowResult { key, window, accumulators, kind: ResultKind::Update });
        }
    }

    /// Fires every window with data ending after `fired_through` and at or
    /// before `watermark`, in order of their ends.
    fn fire(&mut self, watermark: Millis, out: &mut Vec<WindowResult>) {
        if watermark <= self.fired_through {
            return;
        }
        let mut after = self.fired_through;
        while let Some(end) = self.next_end(after).filter(|&end| end <= watermark) {
            self.fire_window(Window { start: end - self.size, end }, out);
            after = end;
        }
        self.fired_through = watermark;
    }

    /// The bound excluding panes all of whose windows end at or before `time`.
    fn open_panes_from(&self, time: Millis) -> Bound<Millis> {
        Bound::Excluded(time.saturating_sub(self.size))
    }

    /// The earliest end, after `after`, of a window holding some pane.
    fn next_end(&self, after: Millis) -> Option<Millis> {
        let (&start, _) = self.panes.range((self.open_panes_from(after), Bound::Unbounded)).next()?;
        // The pane's windows end at start + slide, ..., start + size, and
        // the last is after `after`.
        let first = start + self.slide;
        Some(if first > after { first } else { floor_to(after, self.slide) + self.slide })
    }

    fn fire_window(&mut self, window: Window, out: &mut Vec<WindowResult>) {
        let result = |key: Arc<str>, accumulators| WindowResult { key, window, accumulators, kind: ResultKind::Final };
        let before = out.len();
        let mut keys = 0;
        if self.size == self.slide {
            if let Some(pane) = self.panes.get(&window.start) {
                keys = pane.len();
                out.reserve(keys);
                out.extend(
                    pane.keys()
                        .filter(|&(_, row)| self.fire_unchanged || pane.is_dirty(row))
                        .map(|(key, row)| result(key.clone(), pane.values(row))),
                );
            }
        } else {
            for (_, pane) in self.panes.range(window.start..window.end) {
                for (key, row) in pane.keys() {
                    match self.merging.get_mut(&**key) {
                        Some((accumulators, dirty)) => {
                            pane.merge_into(row, accumulators);
                            *dirty |= pane.is_dirty(row);
                        }
                        None => {
                            self.merging.insert(key.clone(), (pane.values(row), pane.is_dirty(row)));
                        }
                    }
                }
            }
            keys = self.merging.len();
            out.reserve(keys);
            out.extend(
                self.merging
                    .drain()
                    .filter(|(_, (_, dirty))| self.fire_unchanged || *dirty)
                    .map(|(key, (accumulators, _))| result(key, accumulators)),
            );
        }
        self.unchanged_finals += (keys - (out.len() - before)) as u64;
    }

    /// Final results left out since the last call because the region held
    /// them already (the count for the `windows fired` metric).
    pub(super) fn take_unchanged(&mut self) -> u64 {
        std::mem::take(&mut self.unchanged_finals)
    }

    /// The value of one key in one window: its rows of the window's panes merged.
    fn merged(&self, key: &str, window: Window) -> Vec<Accumulator> {
        let mut accumulators: Vec<Accumulator> = self.functions.iter().map(|f| Accumulator::new(*f)).collect();
        for (_, pane) in self.panes.range(window.start..window.end) {
            if let Some(row) = pane.row(key) {
                pane.merge_into(row, &mut accumulators);
            }
        }
        accumulators
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::Input;

    #[test]
    fn sliding_assigns_size_over_slide_windows_including_negative_times() {
        let f = FixedWindows::new(30, 10, &[]);
        let w: Vec<_> = f.assign(25).map(|w| (w.start, w.end)).collect();
        assert_eq!(w, vec![(0, 30), (10, 40), (20, 50)]);
        let w: Vec<_> = f.assign(-5).map(|w| (w.start, w.end)).collect();
        assert_eq!(w, vec![(-30, 0), (-20, 10), (-10, 20)]);
        let t = FixedWindows::new(10, 10, &[]);
        assert_eq!(t.assign(10).collect::<Vec<_>>(), vec![Window { start: 10, end: 20 }]);
    }

    /// What readers look up (`WindowKind::windows_containing`) is what
    /// the operator assigns.
    #[test]
    fn readers_find_the_windows_the_operator_assigns() {
        use crate::window::WindowKind;
        for (size, slide) in [(10, 10), (30, 10), (60_000, 15_000)] {
            let f = FixedWindows::new(size, slide, &[]);
            let kind = if size == slide { WindowKind::Tumbling { size } } else { WindowKind::Sliding { size, slide } };
            for time in [-61_000, -1, 0, 9, 10, 25, 1_700_000_012_345] {
                let assigned: Vec<Window> = f.assign(time).collect();
                assert_eq!(kind.windows_containing(time), Some(assigned), "{size}/{slide} at {time}");
                assert_eq!(kind.end_of(time), Some(time + size));
            }
        }
        assert_eq!(WindowKind::Session { gap: 5 }.windows_containing(3), None);
    }

    fn event(key: &str, time: Millis) -> Event<'_> {
        Event { key: key.into(), time, inputs: smallvec::smallvec![Input::Unit], offset: 0 }
    }

    fn summary(out: &mut Vec<WindowResult>) -> Vec<(ResultKind, &'static str, Millis, Millis, Accumulator)> {
        let mut s: Vec<_> = out
            .drain(..)
            .map(|r| {
                let key: &'static str = if &*r.key == "a" { "a" } else { "b" };
                (r.kind, key, r.window.start, r.window.end, r.accumulators[0].clone())
            })
            .collect();
        s.sort_by_key(|(_, k, start, _, _)| (*start, *k));
        s
    }

    /// With updates, a window fires a final result for the keys changed
    /// since the last update only; without, for every key.
    #[test]
    fn finals_skip_keys_the_last_update_already_wrote() {
        use ResultKind::{Final, Update};
        let c = Accumulator::Count;
        // (size, slide, updates emitted, finals after "b" changes, unchanged)
        let cases = [
            (10, 10, 3, vec![(Final, "b", 0, 10, c(2))], 1),
            // Windows [-10, 10) and [0, 20) fire; "b" changed in pane 0,
            // which both hold; "a" did not.
            (20, 10, 5, vec![(Final, "b", -10, 10, c(2)), (Final, "b", 0, 20, c(3))], 2),
        ];
        for (size, slide, updates, finals, unchanged) in cases {
            let mut f = FixedWindows::new(size, slide, &[AggregateFunction::Count]);
            let mut out = Vec::new();
            for (key, time) in [("a", 1), ("b", 2), ("b", 12)] {
                assert!(f.process(&event(key, time), Millis::MIN, 0, &mut out));
            }
            f.updates(&mut out);
            assert_eq!(out.iter().filter(|r| r.kind == Update).count(), updates, "{size}/{slide}");
            out.clear();
            assert!(f.process(&event("b", 3), Millis::MIN, 0, &mut out));
            f.advance(size, 0, &mut out);
            assert_eq!(summary(&mut out), finals, "{size}/{slide}");
            assert_eq!(f.take_unchanged(), unchanged, "{size}/{slide}");
            assert_eq!(f.take_unchanged(), 0);
        }

        // No updates: every key fires.
        let mut f = FixedWindows::new(10, 10, &[AggregateFunction::Count]);
        let mut out = Vec::new();
        for (key, time) in [("a", 1), ("b", 2)] {
            assert!(f.process(&event(key, time), Millis::MIN, 0, &mut out));
        }
        f.advance(10, 0, &mut out);
        assert_eq!(summary(&mut out), vec![(Final, "a", 0, 10, c(1)), (Final, "b", 0, 10, c(1))]);
        assert_eq!(f.take_unchanged(), 0);
    }

    /// A late record lands in a pane whose earlier windows have fired while
    /// its later ones are still open: the fired ones re-fire, the open ones
    /// take it when they fire, and updates name only the open ones.
    #[test]
    fn late_record_in_a_pane_shared_by_fired_and_open_windows() {
        use ResultKind::{Final, Update};
        let mut f = FixedWindows::new(30, 10, &[AggregateFunction::Count]);
        let mut out = Vec::new();
        let lateness = 100;
        assert!(f.process(&event("a", 5), Millis::MIN, lateness, &mut out));
        assert!(f.process(&event("b", 15), Millis::MIN, lateness, &mut out));
        f.advance(20, lateness, &mut out);
        let c = Accumulator::Count;
        assert_eq!(
            summary(&mut out),
            vec![(Final, "a", -20, 10, c(1)), (Final, "a", -10, 20, c(1)), (Final, "b", -10, 20, c(1))]
        );
        f.updates(&mut out);
        assert_eq!(
            summary(&mut out),
            vec![(Update, "a", 0, 30, c(1)), (Update, "b", 0, 30, c(1)), (Update, "b", 10, 40, c(1))]
        );
        assert!(f.process(&event("a", 7), 20, lateness, &mut out));
        assert_eq!(summary(&mut out), vec![(Final, "a", -20, 10, c(2)), (Final, "a", -10, 20, c(2))]);
        f.updates(&mut out);
        assert_eq!(summary(&mut out), vec![(Update, "a", 0, 30, c(2))]);
        // Every window firing now was written by the last updates with its
        // final value: nothing to write, three windows counted as fired.
        f.advance(40, lateness, &mut out);
        assert_eq!(summary(&mut out), vec![]);
        assert_eq!(f.take_unchanged(), 3);
        assert_eq!(f.open_rows, 2);
        f.advance(130, lateness, &mut out);
        assert_eq!(f.open_rows, 1, "pane 0 purged: its last window, [0, 30), is past its lateness");
        assert!(!f.process(&event("a", 8), 130, lateness, &mut out), "late for every window of pane 0");
        f.advance(140, lateness, &mut out);
        assert_eq!((f.open_rows, f.panes.len()), (0, 0));
    }
}
