//! Windowed aggregation: the pure core of a pipeline.
//!
//! Plain synchronous code over events and timestamps, no runtime: a
//! [`WindowOperator`] takes decoded events and watermarks and produces
//! [`WindowResult`]s. Fixed windows (tumbling, sliding) and session windows
//! share the result type and the lateness rules:
//!
//! - a window `[start, end)` fires when the watermark reaches `end`;
//! - it keeps its state until the watermark reaches `end + allowed_lateness`,
//!   and a record that still lands in it re-fires it with the new value;
//! - a record none of whose windows are still kept is *late* and handed back
//!   to the caller, which applies the pipeline's late-record action.

mod aggregate;
mod fixed;
pub mod hll;
mod operator;
mod pane;
mod session;
mod snapshot;

pub use aggregate::{render_number, Accumulator, AggregateFunction, Input, Inputs};
pub use operator::{Accepted, WindowOperator, WindowSpec};
pub use snapshot::{FixedSnapshot, KeySessions, OperatorSnapshot, PaneSnapshot, SessionSnapshot};

use std::borrow::Cow;
use std::sync::Arc;

use crate::time::Millis;

/// A half-open interval of event time, `[start, end)`, in epoch millis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Window {
    pub start: Millis,
    pub end: Millis,
}

/// The window shape, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    Tumbling { size: Millis },
    Sliding { size: Millis, slide: Millis },
    Session { gap: Millis },
}

impl WindowKind {
    /// Every window containing `time`, earliest first (the windows a
    /// record at `time` lands in); `None` for sessions, whose bounds follow
    /// the data.
    pub fn windows_containing(&self, time: Millis) -> Option<Vec<Window>> {
        let (size, slide) = match *self {
            WindowKind::Tumbling { size } => (size, size),
            WindowKind::Sliding { size, slide } => (size, slide),
            WindowKind::Session { .. } => return None,
        };
        let last_start = floor_to(time, slide);
        Some(
            (0..size / slide)
                .rev()
                .map(|i| last_start - i * slide)
                .map(|start| Window { start, end: start + size })
                .collect(),
        )
    }

    /// The end of the window starting at `start`; `None` for sessions.
    pub fn end_of(&self, start: Millis) -> Option<Millis> {
        match *self {
            WindowKind::Tumbling { size } | WindowKind::Sliding { size, .. } => Some(start + size),
            WindowKind::Session { .. } => None,
        }
    }
}

/// What happens to a record none of whose windows is still kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LateAction {
    /// Count the record in `regionflow_late_records_total{action="drop"}`.
    #[default]
    Drop,
    /// Send it to the dead-letter topic with reason `late`.
    DeadLetter,
    /// Merge it into the already-written region entry (idempotently).
    Amend,
}

impl LateAction {
    /// The `action` label of `regionflow_late_records_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            LateAction::Drop => "drop",
            LateAction::DeadLetter => "dead_letter",
            LateAction::Amend => "amend",
        }
    }
}

/// One decoded record, as the operator sees it: its key borrowed from the
/// record where it can be (the operator makes its own `Arc<str>` only for
/// a key it has not held yet), its inputs inline.
#[derive(Debug, Clone, PartialEq)]
pub struct Event<'a> {
    pub key: Cow<'a, str>,
    pub time: Millis,
    /// One input per aggregate, in the pipeline's aggregate order.
    pub inputs: Inputs,
    /// The record's Kafka offset (amendments are stamped with it).
    pub offset: i64,
}

impl Event<'_> {
    /// The event, owning its key.
    pub fn into_owned(self) -> Event<'static> {
        Event { key: Cow::Owned(self.key.into_owned()), time: self.time, inputs: self.inputs, offset: self.offset }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultKind {
    /// The window is complete (or re-fired by a late record).
    Final,
    /// A running value of a still-open window (emit mode `updates`).
    Update,
    /// A fired session was merged into a larger one: remove this partial.
    Retract,
    /// One late record to merge into the written entry (late action `amend`).
    Amend,
}

/// The value of one key in one window, as produced by this task.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowResult {
    pub key: Arc<str>,
    pub window: Window,
    pub accumulators: Vec<Accumulator>,
    pub kind: ResultKind,
}

/// Floor division that rounds towards negative infinity.
fn floor_to(time: Millis, step: Millis) -> Millis {
    time - time.rem_euclid(step)
}
