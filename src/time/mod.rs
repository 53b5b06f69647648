//! Event time: reading a record's timestamp, and the per-partition
//! watermark that decides when windows are complete.
//!
//! Times are `i64` milliseconds since the Unix epoch throughout.

mod bounds;
mod clock;
mod watermark;

pub use bounds::{millis_from_f64, EventTimeBounds, EARLIEST, LATEST, MAX_SPAN};
pub use clock::Clock;
pub use watermark::WatermarkTracker;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// The wall clock in epoch milliseconds.
pub fn now_millis() -> Millis {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as Millis).unwrap_or(0)
}

/// Parses an RFC 3339 timestamp into epoch milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<Millis> {
    chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_millis())
}
