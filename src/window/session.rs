//! Session windows: per key, records at most `gap` apart belong to one
//! session `[first, last + gap)`.
//!
//! Merging follows Flink: a record opens `[t, t + gap)` and every session it
//! intersects merges with it, touching included: a record exactly `gap`
//! after the last one (its window starts where the session ends) joins. A merge that swallows a
//! session already fired retracts the old entry, since its bounds (and so its
//! region key) change. Timers `(time, key)` in an ordered set drive firing
//! and purging; stale timers are skipped when they come due.
//!
//! A session that fires unchanged since its last update (emit mode
//! `updates`) emits no final result: the region holds it already. A
//! restored session counts as changed, since the snapshot does not say
//! whether its latest value was written.

use std::collections::BTreeSet;
use std::sync::Arc;

use ahash::AHashMap;

use super::AggregateFunction;
use super::{Accumulator, Event, ResultKind, Window, WindowResult};
use crate::time::Millis;

#[derive(Debug, Clone)]
pub(super) struct Session {
    pub(super) window: Window,
    pub(super) accumulators: Vec<Accumulator>,
    pub(super) fired: bool,
    /// Written to the region (fired, or as an update): a merge that changes
    /// its bounds must retract it.
    pub(super) emitted: bool,
    pub(super) dirty: bool,
}

#[derive(Debug)]
pub(super) struct SessionWindows {
    gap: Millis,
    pub(super) sessions: AHashMap<Arc<str>, Vec<Session>>,
    timers: BTreeSet<(Millis, Arc<str>)>,
    pub(super) open_slots: usize,
    /// Final results not emitted because the region already held them,
    /// since the last [`SessionWindows::take_unchanged`].
    unchanged_finals: u64,
    /// Fire every session, changed or not (`WindowSpec::fire_unchanged`).
    pub(super) fire_unchanged: bool,
}

impl SessionWindows {
    pub(super) fn new(gap: Millis) -> Self {
        SessionWindows {
            gap,
            sessions: AHashMap::new(),
            timers: BTreeSet::new(),
            open_slots: 0,
            unchanged_finals: 0,
            fire_unchanged: false,
        }
    }

    pub(super) fn process(
        &mut self,
        event: &Event,
        functions: &[AggregateFunction],
        watermark: Millis,
        lateness: Millis,
        out: &mut Vec<WindowResult>,
    ) -> bool {
        let mut merged = Window { start: event.time, end: event.time.saturating_add(self.gap) };
        // Most keys have one session at a time: room for exactly one (a
        // first push would make room for four).
        // The key's own `Arc` where the key has sessions already: the
        // event's key is borrowed from its record.
        let key: Arc<str> = match self.sessions.get_key_value(&*event.key) {
            Some((key, _)) => key.clone(),
            None => Arc::from(&*event.key),
        };
        let sessions = self.sessions.entry(key.clone()).or_insert_with(|| Vec::with_capacity(1));
        let intersects = |s: &Session, w: &Window| s.window.start <= w.end && s.window.end >= w.start;
        // Sessions of one key never intersect each other, so one pass finds
        // the extent of the merge.
        let opened = merged;
        for s in sessions.iter().filter(|s| intersects(s, &opened)) {
            merged.start = merged.start.min(s.window.start);
            merged.end = merged.end.max(s.window.end);
        }
        if merged.end.saturating_add(lateness) <= watermark {
            if sessions.is_empty() {
                self.sessions.remove(&key);
            }
            return false;
        }
        let mut session = Session {
            window: merged,
            accumulators: functions.iter().map(|f| Accumulator::new(*f)).collect(),
            fired: false,
            emitted: false,
            dirty: true,
        };
        let mut i = 0;
        while i < sessions.len() {
            if intersects(&sessions[i], &merged) {
                let old = sessions.swap_remove(i);
                self.open_slots -= 1;
                for (acc, other) in session.accumulators.iter_mut().zip(&old.accumulators) {
                    acc.merge(other);
                }
                if old.window == merged {
                    session.emitted |= old.emitted;
                } else if old.emitted {
                    out.push(WindowResult {
                        key: key.clone(),
                        window: old.window,
                        accumulators: old.accumulators,
                        kind: ResultKind::Retract,
                    });
                }
            } else {
                i += 1;
            }
        }
        for (acc, input) in session.accumulators.iter_mut().zip(&event.inputs) {
            acc.add(input, event.time);
        }
        if merged.end <= watermark {
            // Complete already: a late record within the allowed lateness.
            session.fired = true;
            session.emitted = true;
            session.dirty = false;
            out.push(WindowResult {
                key: key.clone(),
                window: merged,
                accumulators: session.accumulators.clone(),
                kind: ResultKind::Final,
            });
            self.timers.insert((merged.end.saturating_add(lateness), key));
        } else {
            self.timers.insert((merged.end, key));
        }
        sessions.push(session);
        self.open_slots += 1;
        true
    }

    pub(super) fn advance(&mut self, watermark: Millis, lateness: Millis, out: &mut Vec<WindowResult>) {
        while let Some((time, _)) = self.timers.first() {
            if *time > watermark {
                break;
            }
            let (_, key) = self.timers.pop_first().expect("first() was Some");
            let Some(sessions) = self.sessions.get_mut(&key) else {
                continue;
            };
            for s in sessions.iter_mut() {
                if !s.fired && s.window.end <= watermark {
                    s.fired = true;
                    if s.dirty || !s.emitted || self.fire_unchanged {
                        out.push(WindowResult {
                            key: key.clone(),
                            window: s.window,
                            accumulators: s.accumulators.clone(),
                            kind: ResultKind::Final,
                        });
                    } else {
                        self.unchanged_finals += 1;
                    }
                    s.emitted = true;
                    s.dirty = false;
                    if lateness > 0 {
                        self.timers.insert((s.window.end.saturating_add(lateness), key.clone()));
                    }
                }
            }
            let before = sessions.len();
            sessions.retain(|s| !(s.fired && s.window.end.saturating_add(lateness) <= watermark));
            self.open_slots -= before - sessions.len();
            if sessions.is_empty() {
                self.sessions.remove(&key);
            }
        }
    }

    pub(super) fn mark_written(&mut self, key: &str, window: Window) -> bool {
        let Some(session) = self.sessions.get_mut(key).and_then(|s| s.iter_mut().find(|s| s.window == window)) else {
            return false;
        };
        session.emitted = true;
        true
    }

    /// Final results left out since the last call because the region held
    /// them already (the count for the `windows fired` metric).
    pub(super) fn take_unchanged(&mut self) -> u64 {
        std::mem::take(&mut self.unchanged_finals)
    }

    pub(super) fn schedule(&mut self, time: Millis, key: Arc<str>) {
        self.timers.insert((time, key));
    }

    pub(super) fn updates(&mut self, out: &mut Vec<WindowResult>) {
        for (key, sessions) in self.sessions.iter_mut() {
            for s in sessions.iter_mut().filter(|s| s.dirty && !s.fired) {
                s.dirty = false;
                s.emitted = true;
                out.push(WindowResult {
                    key: key.clone(),
                    window: s.window,
                    accumulators: s.accumulators.clone(),
                    kind: ResultKind::Update,
                });
            }
        }
    }
}
