//! Operator state as plain data, for checkpoints.
//!
//! A snapshot lists every window (or session) with its fired/emitted flags
//! and each key's accumulators; restoring it
//! gives an operator that behaves exactly like the one snapshotted. The
//! byte encoding and its versioning live in `checkpoint::encode`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::fixed::{FixedWindows, Slot, WindowState};
use super::session::{Session, SessionWindows};
use super::{Accumulator, Window};
use crate::time::Millis;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OperatorSnapshot {
    Fixed(Vec<WindowSnapshot>),
    Session(Vec<KeySessions>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowSnapshot {
    pub start: Millis,
    pub end: Millis,
    pub fired: bool,
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
    pub(super) fn snapshot(&self) -> Vec<WindowSnapshot> {
        self.windows
            .iter()
            .map(|(&(end, start), state)| WindowSnapshot {
                start,
                end,
                fired: state.fired,
                keys: state.keys.iter().map(|(k, slot)| (k.to_string(), slot.accumulators.clone())).collect(),
            })
            .collect()
    }

    pub(super) fn restore(&mut self, windows: Vec<WindowSnapshot>) {
        for w in windows {
            self.open_slots += w.keys.len();
            let keys = w
                .keys
                .into_iter()
                .map(|(k, accumulators)| (Arc::from(k), Slot { accumulators, dirty: false }))
                .collect();
            self.windows.insert((w.end, w.start), WindowState { keys, fired: w.fired });
        }
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
                    dirty: false,
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
