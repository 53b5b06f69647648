//! The window operator of one task: events and watermarks in, results out.
//!
//! The caller (a partition task) owns the watermark and calls, per record,
//! [`WindowOperator::process`] with the watermark *before* that record, then
//! [`WindowOperator::advance`] with the watermark after it. Results collect
//! in an output buffer that the caller drains when it flushes to the region.

use std::sync::Arc;

use crate::time::Millis;

use super::fixed::FixedWindows;
use super::session::SessionWindows;
use super::{Accumulator, AggregateFunction, Event, OperatorSnapshot, ResultKind, Window, WindowKind, WindowResult};

#[derive(Debug, Clone, PartialEq)]
pub struct WindowSpec {
    pub kind: WindowKind,
    pub allowed_lateness: Millis,
    pub functions: Vec<AggregateFunction>,
    /// Fire a final result for every key of a closing window, also when
    /// its last update already holds that value (emit mode `updates`): a
    /// change feed in `final` mode publishes only what finals write.
    pub fire_unchanged: bool,
}

/// Whether a record found a window still kept for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    Yes,
    /// Every window of the record is past its allowed lateness.
    Late,
}

#[derive(Debug)]
enum State {
    Fixed(FixedWindows),
    Session(SessionWindows),
}

#[derive(Debug)]
pub struct WindowOperator {
    spec: WindowSpec,
    state: State,
    results: Vec<WindowResult>,
}

impl WindowOperator {
    pub fn new(spec: WindowSpec) -> Self {
        let state = match spec.kind {
            WindowKind::Tumbling { size } => State::Fixed(FixedWindows::new(size, size, &spec.functions)),
            WindowKind::Sliding { size, slide } => State::Fixed(FixedWindows::new(size, slide, &spec.functions)),
            WindowKind::Session { gap } => State::Session(SessionWindows::new(gap)),
        };
        let mut state = state;
        match &mut state {
            State::Fixed(f) => f.fire_unchanged = spec.fire_unchanged,
            State::Session(s) => s.fire_unchanged = spec.fire_unchanged,
        }
        WindowOperator { spec, state, results: Vec::new() }
    }

    pub fn spec(&self) -> &WindowSpec {
        &self.spec
    }

    /// Adds one event, given the watermark before it.
    pub fn process(&mut self, event: &Event, watermark: Millis) -> Accepted {
        let (functions, lateness) = (&self.spec.functions, self.spec.allowed_lateness);
        let accepted = match &mut self.state {
            State::Fixed(f) => f.process(event, watermark, lateness, &mut self.results),
            State::Session(s) => s.process(event, functions, watermark, lateness, &mut self.results),
        };
        if accepted {
            Accepted::Yes
        } else {
            Accepted::Late
        }
    }

    /// Fires every window complete at `watermark` and purges those past
    /// their allowed lateness.
    pub fn advance(&mut self, watermark: Millis) {
        let lateness = self.spec.allowed_lateness;
        match &mut self.state {
            State::Fixed(f) => f.advance(watermark, lateness, &mut self.results),
            State::Session(s) => s.advance(watermark, lateness, &mut self.results),
        }
    }

    /// One-record results that amend, in the region, each window of `event`
    /// already purged at `watermark` (late action `amend`); a record can be
    /// late for some of its sliding windows only. Session windows have none:
    /// a late record's session cannot be told from the written entries.
    pub fn amendments(&self, event: &Event, watermark: Millis) -> Vec<WindowResult> {
        let State::Fixed(fixed) = &self.state else { return Vec::new() };
        let lateness = self.spec.allowed_lateness;
        fixed
            .assign(event.time)
            .filter(|w| w.end.saturating_add(lateness) <= watermark)
            .map(|window| {
                let mut accumulators: Vec<Accumulator> =
                    self.spec.functions.iter().map(|f| Accumulator::new(*f)).collect();
                for (acc, input) in accumulators.iter_mut().zip(&event.inputs) {
                    acc.add(input, event.time);
                }
                WindowResult { key: Arc::from(&*event.key), window, accumulators, kind: ResultKind::Amend }
            })
            .collect()
    }

    /// Emits the running value of every open window changed since the last call.
    pub fn emit_updates(&mut self) {
        match &mut self.state {
            State::Fixed(f) => f.updates(&mut self.results),
            State::Session(s) => s.updates(&mut self.results),
        }
    }

    /// Results produced since the last call.
    pub fn take_results(&mut self) -> Vec<WindowResult> {
        std::mem::take(&mut self.results)
    }

    /// Windows (per key) that fired since the last call without a final
    /// result, because nothing changed since their last update: the region
    /// already holds their final value (emit mode `updates` only).
    pub fn take_unchanged_finals(&mut self) -> u64 {
        match &mut self.state {
            State::Fixed(f) => f.take_unchanged(),
            State::Session(s) => s.take_unchanged(),
        }
    }

    pub fn pending_results(&self) -> usize {
        self.results.len()
    }

    pub fn snapshot(&self) -> OperatorSnapshot {
        match &self.state {
            State::Fixed(f) => OperatorSnapshot::Fixed(f.snapshot()),
            State::Session(s) => OperatorSnapshot::Session(s.snapshot()),
        }
    }

    /// An operator holding a snapshot's state; `None` when the snapshot is
    /// of another window kind than `spec` (or holds aggregates of others).
    pub fn restore(spec: WindowSpec, snapshot: OperatorSnapshot) -> Option<WindowOperator> {
        let mut operator = WindowOperator::new(spec);
        let lateness = operator.spec.allowed_lateness;
        match (&mut operator.state, snapshot) {
            (State::Fixed(f), OperatorSnapshot::Fixed(panes)) => f.restore(panes)?,
            (State::Session(s), OperatorSnapshot::Session(keys)) => s.restore(keys, lateness),
            _ => return None,
        }
        Some(operator)
    }

    /// A description of what the state means (window shape and aggregate
    /// functions): state written under one fingerprint cannot be restored
    /// under another.
    pub fn fingerprint(&self) -> String {
        format!("{:?}/{:?}", self.spec.kind, self.spec.functions)
    }

    /// Marks the session of `key` with exactly `window`, when held, as
    /// written to the region (a predecessor wrote it), so that a merge
    /// that changes its bounds retracts it. False when no such session is
    /// held (or the windows are not sessions).
    pub fn mark_session_written(&mut self, key: &str, window: Window) -> bool {
        match &mut self.state {
            State::Fixed(_) => false,
            State::Session(s) => s.mark_written(key, window),
        }
    }

    /// Open (key, window) pairs held in state. For fixed windows, (key,
    /// pane) rows: the same for tumbling windows; for sliding windows one
    /// row serves the up to `size / slide` windows holding the pane.
    pub fn open_windows(&self) -> usize {
        match &self.state {
            State::Fixed(f) => f.open_rows,
            State::Session(s) => s.open_slots,
        }
    }
}

#[cfg(test)]
mod tests;
