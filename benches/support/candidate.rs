//! A bench-local prototype of the fixed-window state layout proposed in
//! BENCHMARKS.md, to measure what it would buy before anyone changes
//! `src/window/fixed.rs`. Not used by the connector.
//!
//! Two changes against `FixedWindows`:
//!
//! 1. **Panes** ("No pane, no gain", Li et al. 2005): state is kept per
//!    `slide`-long pane, not per window. A record updates exactly one pane
//!    (one hash lookup, one slot) whatever `size / slide` is; a sliding
//!    window fires by merging the `size / slide` panes it covers. Tumbling
//!    windows are the one-pane case and fire straight from their pane.
//! 2. **Compact slots**: a pane is a key → row map plus one column per
//!    aggregate (`Vec<u64>` counts, `Vec<f64>` sums), instead of a
//!    `Slot { Vec<Accumulator>, dirty }` per key (a 24-byte `Vec` header in
//!    the bucket plus a separate heap block of 32-byte enum values).
//!
//! The prototype covers what W1/W2 aggregate (count, then sum) with zero
//! allowed lateness; `check_same_results` proves it fires the same values
//! as `WindowOperator` on the benchmark data.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ahash::AHashMap;
use regionflow::time::{Millis, WatermarkTracker};
use regionflow::window::{Accumulator, Event, Input, ResultKind, Window, WindowResult};

#[derive(Default)]
struct Pane {
    rows: AHashMap<Arc<str>, u32>,
    count: Vec<u64>,
    sum: Vec<f64>,
}

pub struct PaneWindows {
    size: Millis,
    slide: Millis,
    panes: BTreeMap<Millis, Pane>,
    /// End of the last window fired.
    fired_through: Millis,
    merge: AHashMap<Arc<str>, (u64, f64)>,
    pub results: Vec<WindowResult>,
}

fn floor_to(time: Millis, step: Millis) -> Millis {
    time - time.rem_euclid(step)
}

impl PaneWindows {
    pub fn new(size: Millis, slide: Millis) -> Self {
        PaneWindows {
            size,
            slide,
            panes: BTreeMap::new(),
            fired_through: Millis::MIN,
            merge: AHashMap::new(),
            results: Vec::new(),
        }
    }

    /// Count and sum inputs, in that order (the benchmark's aggregates).
    pub fn process(&mut self, event: &Event, watermark: Millis) -> bool {
        let start = floor_to(event.time, self.slide);
        // The last window holding this pane ends at start + size.
        if start + self.size <= watermark {
            return false;
        }
        let pane = self.panes.entry(start).or_default();
        let row = match pane.rows.get(&*event.key) {
            Some(&row) => row as usize,
            None => {
                pane.rows.insert(event.key.clone(), pane.count.len() as u32);
                pane.count.push(0);
                pane.sum.push(0.0);
                pane.count.len() - 1
            }
        };
        if let Input::Unit = event.inputs[0] {
            pane.count[row] += 1;
        }
        if let Input::Number(v) = event.inputs[1] {
            pane.sum[row] += v;
        }
        true
    }

    pub fn advance(&mut self, watermark: Millis) {
        // Window ends due: every slide boundary after the last fired one up
        // to the watermark that some pane still falls into.
        let mut ends: Vec<Millis> = Vec::new();
        for &start in self.panes.keys() {
            let mut end = start + self.slide;
            while end <= start + self.size {
                if end > self.fired_through && end <= watermark {
                    ends.push(end);
                }
                end += self.slide;
            }
        }
        ends.sort_unstable();
        ends.dedup();
        for end in ends {
            self.fire(Window { start: end - self.size, end });
            self.fired_through = end;
        }
        while let Some(entry) = self.panes.first_entry() {
            if *entry.key() + self.size > watermark {
                break;
            }
            entry.remove();
        }
    }

    fn fire(&mut self, window: Window) {
        let result = |key: Arc<str>, count: u64, sum: f64| WindowResult {
            key,
            window,
            accumulators: vec![Accumulator::Count(count), Accumulator::Sum(sum)],
            kind: ResultKind::Final,
        };
        if self.size == self.slide {
            if let Some(pane) = self.panes.get(&window.start) {
                for (key, &row) in &pane.rows {
                    let row = row as usize;
                    self.results.push(result(key.clone(), pane.count[row], pane.sum[row]));
                }
            }
            return;
        }
        self.merge.clear();
        for (_, pane) in self.panes.range(window.start..window.end) {
            for (key, &row) in &pane.rows {
                let row = row as usize;
                match self.merge.get_mut(&**key) {
                    Some(m) => {
                        m.0 += pane.count[row];
                        m.1 += pane.sum[row];
                    }
                    None => {
                        self.merge.insert(key.clone(), (pane.count[row], pane.sum[row]));
                    }
                }
            }
        }
        for (key, (count, sum)) in self.merge.drain() {
            self.results.push(result(key, count, sum));
        }
    }

    pub fn open_windows(&self) -> usize {
        self.panes.values().map(|p| p.rows.len()).sum()
    }
}

/// The prototype driven like `support::Driver` drives the operator.
pub struct PaneDriver {
    pub windows: PaneWindows,
    pub watermark: WatermarkTracker,
    pub fired: usize,
    pub keep: Option<Vec<WindowResult>>,
}

impl PaneDriver {
    pub fn new(size: Millis, slide: Millis, keep: bool) -> Self {
        PaneDriver {
            windows: PaneWindows::new(size, slide),
            watermark: WatermarkTracker::new(
                std::time::Duration::from_millis(super::DISORDER_MS as u64),
                std::time::Duration::from_secs(3600),
            ),
            fired: 0,
            keep: keep.then(Vec::new),
        }
    }

    #[inline]
    pub fn feed(&mut self, event: &Event) {
        let before = self.watermark.current();
        let _ = self.windows.process(event, before);
        let watermark = self.watermark.observe(event.time, 0);
        if watermark > before {
            self.windows.advance(watermark);
        }
        if !self.windows.results.is_empty() {
            let results = std::mem::take(&mut self.windows.results);
            self.fired += results.len();
            if let Some(keep) = &mut self.keep {
                keep.extend(results);
            }
        }
    }

    pub fn finish(&mut self) {
        self.windows.advance(Millis::MAX / 4);
        let results = std::mem::take(&mut self.windows.results);
        self.fired += results.len();
        if let Some(keep) = &mut self.keep {
            keep.extend(results);
        }
    }
}

/// Panics unless both fire the same (key, window) → (count, sum), sums
/// within 1e-9 relative (panes add in a different order).
pub fn check_same_results(current: &[WindowResult], candidate: &[WindowResult]) {
    let table = |results: &[WindowResult]| -> HashMap<(Arc<str>, Millis), (u64, f64)> {
        results
            .iter()
            .map(|r| {
                let count = match r.accumulators[0] {
                    Accumulator::Count(c) => c,
                    _ => panic!("count first"),
                };
                let sum = match r.accumulators[1] {
                    Accumulator::Sum(s) => s,
                    _ => panic!("sum second"),
                };
                ((r.key.clone(), r.window.start), (count, sum))
            })
            .collect()
    };
    let (a, b) = (table(current), table(candidate));
    assert_eq!(a.len(), current.len(), "one result per (key, window)");
    assert_eq!(a.len(), b.len(), "same number of results");
    for (k, (count, sum)) in &a {
        let (c2, s2) = b.get(k).unwrap_or_else(|| panic!("candidate lacks {k:?}"));
        assert_eq!(count, c2, "count of {k:?}");
        assert!((sum - s2).abs() <= 1e-9 * sum.abs().max(1.0), "sum of {k:?}: {sum} vs {s2}");
    }
}
