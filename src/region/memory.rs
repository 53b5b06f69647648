//! An in-process region for the embedded quick-start.
//!
//! It applies the same rules as `merge.lua` (epoch fencing, stale-offset
//! skipping, replace/merge/delete of partials, public fields as the merge of
//! all partials) with the Rust accumulators, so the quick-start runs the
//! production pipeline code with only the sink swapped. Tests prove the
//! Redis region, not this one.

use std::collections::BTreeMap;
use std::sync::Mutex;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::Value as Json;

use super::{EntryWrite, Region, RegionError, WriteMode, WriteOutcome};
use crate::config::AggregateFunction;
use crate::window::Accumulator;

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
}

pub struct MemoryRegion {
    aggregates: Vec<(AggregateFunction, String)>,
    state: Mutex<State>,
}

impl MemoryRegion {
    pub fn new(functions: &[AggregateFunction], names: &[String]) -> Self {
        MemoryRegion {
            aggregates: functions.iter().copied().zip(names.iter().cloned()).collect(),
            state: Mutex::default(),
        }
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

    fn parse(&self, partial: &str) -> Result<Vec<Accumulator>, RegionError> {
        let json: Json = serde_json::from_str(partial).map_err(|e| RegionError::Protocol(e.to_string()))?;
        let parts = json["a"].as_array().ok_or_else(|| RegionError::Protocol("partial without \"a\"".into()))?;
        self.aggregates
            .iter()
            .zip(parts)
            .map(|((f, _), p)| Accumulator::from_partial(*f, p))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| RegionError::Protocol(format!("malformed partial {partial}")))
    }

    fn apply(&self, state: &mut State, write: &EntryWrite) -> Result<i64, RegionError> {
        let partials = state.entries.entry(write.key.clone()).or_default();
        if let Some(current) = partials.get(&*write.field) {
            if current.epoch > write.epoch {
                return Ok(-1);
            }
            if current.offset > write.offset {
                return Ok(0);
            }
        }
        match write.mode {
            WriteMode::Delete => {
                partials.remove(&*write.field);
            }
            mode => {
                let mut accumulators = self.parse(&write.partial)?;
                if let (WriteMode::Merge, Some(current)) = (mode, partials.get(&*write.field)) {
                    for (acc, old) in accumulators.iter_mut().zip(&current.accumulators) {
                        acc.merge(old);
                    }
                }
                partials.insert(
                    write.field.to_string(),
                    Partial { epoch: write.epoch, offset: write.offset, accumulators },
                );
            }
        }
        if partials.is_empty() {
            state.entries.remove(&write.key);
            state.public.remove(&write.key);
            return Ok(2);
        }
        let mut merged: Vec<Accumulator> = self.aggregates.iter().map(|(f, _)| Accumulator::new(*f)).collect();
        for partial in partials.values() {
            for (acc, p) in merged.iter_mut().zip(&partial.accumulators) {
                acc.merge(p);
            }
        }
        let mut fields = Fields::new();
        fields.insert("window_start".into(), write.window.start.to_string());
        fields.insert("window_end".into(), write.window.end.to_string());
        for ((_, name), acc) in self.aggregates.iter().zip(&merged) {
            if let Some(value) = acc.render() {
                fields.insert(name.clone(), value);
            }
        }
        state.public.insert(write.key.clone(), fields);
        Ok(1)
    }
}

impl Region for MemoryRegion {
    fn write<'a>(&'a self, writes: &'a [EntryWrite]) -> BoxFuture<'a, Result<WriteOutcome, RegionError>> {
        async move {
            let mut state = self.state.lock().expect("region lock poisoned");
            let mut outcome = WriteOutcome::default();
            for write in writes {
                match self.apply(&mut state, write)? {
                    -1 => outcome.fenced += 1,
                    0 => outcome.stale += 1,
                    _ => outcome.applied += 1,
                }
            }
            Ok(outcome)
        }
        .boxed()
    }
}
