//! An in-process region for the embedded quick-start.
//!
//! It applies the rules of `redis/merge.lua`, in the same order, with the
//! Rust accumulators: epoch fencing (by the stored partial, or by the fence
//! a retraction leaves); stale replays skipped (an amendment at
//! an offset already applied too) while a newer epoch is still recorded;
//! replace/merge/delete of partials; public fields as the merge of all
//! partials in field-name order, starting from the first; entry versions
//! and the changes to publish under a change capture. So the quick-start
//! runs the production pipeline code with only the sink swapped.
//! `tests/integration/region_conformance.rs` runs the same sequences of writes against
//! this region and the merge function and requires the same entries. It
//! keeps no expiry: entries live as long as the process.

use std::collections::BTreeMap;
use std::sync::Mutex;

use futures::future::BoxFuture;
use futures::FutureExt;

use super::{Capture, Change, ChangeOp, EntryWrite, Region, RegionError, WriteMode, WriteOutcome};
use crate::window::{Accumulator, AggregateFunction};

#[derive(Debug, Clone)]
struct Partial {
    epoch: u64,
    offset: i64,
    accumulators: Vec<Accumulator>,
}

/// A region entry: its public fields, as `HGETALL` would show them.
pub type Fields = BTreeMap<String, String>;

#[derive(Default)]
struct State {
    entries: BTreeMap<String, BTreeMap<String, Partial>>,
    public: BTreeMap<String, Fields>,
    /// Entry versions, kept under a change capture as `_v` is.
    versions: BTreeMap<String, u64>,
    /// The epoch of the last retraction of a partial (entry key, field), as
    /// `merge.lua` keeps it in `_f:<topic>:<partition>`.
    fences: BTreeMap<(String, String), u64>,
}

pub struct MemoryRegion {
    aggregates: Vec<(AggregateFunction, String)>,
    state: Mutex<State>,
}

impl MemoryRegion {
    /// A region of these aggregates (function, entry field name), in the
    /// order of each write's accumulators.
    pub fn new(aggregates: &[(AggregateFunction, String)]) -> Self {
        MemoryRegion { aggregates: aggregates.to_vec(), state: Mutex::default() }
    }

    /// Entries and their public fields, sorted by key.
    pub fn snapshot(&self) -> Vec<(String, Fields)> {
        let state = self.state.lock().expect("region lock poisoned");
        state.public.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    pub fn len(&self) -> usize {
        self.state.lock().expect("region lock poisoned").public.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One write, as `merge.lua` applies it: -1 fenced, 0 stale, 1
    /// written, 2 entry deleted; with the change to publish, if any.
    fn apply(&self, state: &mut State, write: &EntryWrite) -> Result<(i64, Option<Change>), RegionError> {
        if write.accumulators.len() != self.aggregates.len() && write.mode != WriteMode::Delete {
            return Err(RegionError::Refused(format!(
                "{} accumulators for {} aggregates",
                write.accumulators.len(),
                self.aggregates.len()
            )));
        }
        // An entry, or (under a change capture) a deleted entry's version.
        let existed = state.entries.contains_key(&write.key) || state.versions.contains_key(&write.key);
        let fence_key = (write.key.clone(), write.field.to_string());
        let stored = state.entries.get(&write.key).is_some_and(|p| p.contains_key(&*write.field));
        if !stored && state.fences.get(&fence_key).is_some_and(|&fence| fence > write.epoch) {
            return Ok((-1, None));
        }
        let partials = state.entries.entry(write.key.clone()).or_default();
        if let Some(current) = partials.get_mut(&*write.field) {
            if current.epoch > write.epoch {
                return Ok((-1, None));
            }
            if current.offset > write.offset || (write.mode == WriteMode::Merge && current.offset == write.offset) {
                // The new owner's epoch fences the previous one from here on.
                current.epoch = write.epoch;
                let version = state.versions.get(&write.key).copied().unwrap_or(0);
                let fields = state.public.get(&write.key).cloned().unwrap_or_default();
                return Ok((0, change(write, version, ChangeOp::Upsert, fields)));
            }
        }
        match write.mode {
            WriteMode::Delete => {
                partials.remove(&*write.field);
                state.fences.insert(fence_key, write.epoch);
            }
            WriteMode::Merge if partials.contains_key(&*write.field) => {
                let current = partials.get_mut(&*write.field).expect("checked");
                for (acc, amend) in current.accumulators.iter_mut().zip(&write.accumulators) {
                    acc.merge(amend);
                }
                current.epoch = write.epoch;
                current.offset = write.offset;
            }
            WriteMode::Merge | WriteMode::Replace => {
                let partial =
                    Partial { epoch: write.epoch, offset: write.offset, accumulators: write.accumulators.clone() };
                partials.insert(write.field.to_string(), partial);
                state.fences.remove(&fence_key);
            }
        }
        let version = match write.capture {
            Capture::None => 0,
            Capture::Version | Capture::Publish => state.versions.get(&write.key).copied().unwrap_or(0) + 1,
        };
        if partials.is_empty() {
            state.entries.remove(&write.key);
            state.public.remove(&write.key);
            // The version stays as a tombstone (expiry aside, as merge.lua
            // keeps it); retracting from nothing changes nothing.
            if !existed || write.capture == Capture::None {
                return Ok((2, None));
            }
            state.versions.insert(write.key.clone(), version);
            return Ok((2, change(write, version, ChangeOp::Delete, Fields::new())));
        }
        // In field-name order from the first partial, as merge.lua does.
        let mut merged = partials.values();
        let mut values = merged.next().expect("not empty").accumulators.clone();
        for partial in merged {
            for (acc, p) in values.iter_mut().zip(&partial.accumulators) {
                acc.merge(p);
            }
        }
        let mut fields = Fields::new();
        fields.insert("window_start".into(), write.window.start.to_string());
        fields.insert("window_end".into(), write.window.end.to_string());
        for ((_, name), acc) in self.aggregates.iter().zip(&values) {
            if let Some(value) = acc.render() {
                fields.insert(name.clone(), value);
            }
        }
        if write.capture != Capture::None {
            state.versions.insert(write.key.clone(), version);
        }
        let changed = change(write, version, ChangeOp::Upsert, fields.clone());
        state.public.insert(write.key.clone(), fields);
        Ok((1, changed))
    }
}

/// The change a write under [`Capture::Publish`] publishes.
fn change(write: &EntryWrite, version: u64, op: ChangeOp, fields: Fields) -> Option<Change> {
    (write.capture == Capture::Publish).then(|| write.change(version, op, fields.into_iter().collect()))
}

impl Region for MemoryRegion {
    fn write<'a>(&'a self, writes: &'a [EntryWrite]) -> BoxFuture<'a, Result<WriteOutcome, RegionError>> {
        async move {
            let mut state = self.state.lock().expect("region lock poisoned");
            let mut outcome = WriteOutcome::default();
            for write in writes {
                outcome.bytes += (write.key.len() + write.field.len()) as u64;
                let (status, change) = self.apply(&mut state, write)?;
                match status {
                    -1 => outcome.fenced += 1,
                    0 => outcome.stale += 1,
                    _ => outcome.applied += 1,
                }
                outcome.changes.extend(change);
            }
            Ok(outcome)
        }
        .boxed()
    }
}
