//! Operator state as plain data, for checkpoints.
//!
//! A fixed-window snapshot lists every pane with each key's accumulators,
//! plus the watermark through which windows have fired; a session snapshot
//! lists every session with its fired/emitted flags and accumulators.
//! Restoring one gives an operator that behaves exactly like the one
//! snapshotted (running values not yet emitted as updates are re-emitted
//! only when changed again, or when their window fires). The
//! byte encoding and its versioning live in `checkpoint::encode`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::fixed::FixedWindows;
use super::pane::Pane;
use super::session::{Session, SessionWindows};
use super::{Accumulator, Window};
use crate::time::Millis;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OperatorSnapshot {
    Fixed(FixedSnapshot),
    Session(Vec<KeySessions>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FixedSnapshot {
    /// Every window ending at or before this has fired.
    pub fired_through: Millis,
    pub panes: Vec<PaneSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaneSnapshot {
    pub start: Millis,
    pub keys: Vec<(String, Vec<Accumulator>)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeySessions {
    pub key: String,
    pub sessions: Vec<SessionSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionSnapshot {
    pub start: Millis,
    pub end: Millis,
    pub fired: bool,
    pub emitted: bool,
    pub accumulators: Vec<Accumulator>,
}

impl FixedWindows {
    pub(super) fn snapshot(&self) -> FixedSnapshot {
        FixedSnapshot {
            fired_through: self.fired_through,
            panes: self
                .panes
                .iter()
                .map(|(&start, pane)| PaneSnapshot {
                    start,
                    keys: pane.keys().map(|(key, row)| (key.to_string(), pane.values(row))).collect(),
                })
                .collect(),
        }
    }

    /// `None` when a pane holds accumulators of other aggregates than the
    /// operator's (or a key twice).
    pub(super) fn restore(&mut self, snapshot: FixedSnapshot) -> Option<()> {
        self.fired_through = snapshot.fired_through;
        for p in snapshot.panes {
            let mut pane = Pane::with_capacity(&self.functions, p.keys.len());
            for (key, values) in p.keys {
                pane.insert(Arc::from(key), values).then_some(())?;
            }
            self.open_rows += pane.len();
            self.panes.insert(p.start, pane);
        }
        Some(())
    }
}

impl SessionWindows {
    pub(super) fn snapshot(&self) -> Vec<KeySessions> {
        self.sessions
            .iter()
            .map(|(key, sessions)| KeySessions {
                key: key.to_string(),
                sessions: sessions
                    .iter()
                    .map(|s| SessionSnapshot {
                        start: s.window.start,
                        end: s.window.end,
                        fired: s.fired,
                        emitted: s.emitted,
                        accumulators: s.accumulators.clone(),
                    })
                    .collect(),
            })
            .collect()
    }

    pub(super) fn restore(&mut self, keys: Vec<KeySessions>, lateness: Millis) {
        for k in keys {
            let key: Arc<str> = Arc::from(k.key);
            let sessions: Vec<Session> = k
                .sessions
                .into_iter()
                .map(|s| Session {
                    window: Window { start: s.start, end: s.end },
                    accumulators: s.accumulators,
                    fired: s.fired,
                    emitted: s.emitted,
                    dirty: true,
                })
                .collect();
            for s in &sessions {
                let due = if s.fired { s.window.end.saturating_add(lateness) } else { s.window.end };
                self.schedule(due, key.clone());
            }
            self.open_slots += sessions.len();
            self.sessions.insert(key, sessions);
        }
    }
}
