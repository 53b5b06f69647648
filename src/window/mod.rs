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

pub use aggregate::{render_number, Accumulator, Input};
pub use operator::{Accepted, WindowOperator, WindowSpec};
pub use snapshot::{FixedSnapshot, KeySessions, OperatorSnapshot, PaneSnapshot, SessionSnapshot};

use std::sync::Arc;

use crate::config::WindowConfig;
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

impl From<WindowConfig> for WindowKind {
    fn from(config: WindowConfig) -> Self {
        let ms = |d: std::time::Duration| d.as_millis() as Millis;
        match config {
            WindowConfig::Tumbling { size } => WindowKind::Tumbling { size: ms(size) },
            WindowConfig::Sliding { size, slide } => WindowKind::Sliding { size: ms(size), slide: ms(slide) },
            WindowConfig::Session { gap } => WindowKind::Session { gap: ms(gap) },
        }
    }
}

/// One decoded record, as the operator sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub key: Arc<str>,
    pub time: Millis,
    /// One input per aggregate, in the pipeline's aggregate order.
    pub inputs: Vec<Input>,
    /// The record's Kafka offset (amendments are stamped with it).
    pub offset: i64,
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
