//! Record formats: a raw Kafka record into the operator's [`Event`].
//!
//! Decoding sits behind the [`Decoder`] trait; [`json`] is the one format so
//! far, and another (Avro, CSV) would sit beside it as its own module. A
//! record that cannot become an event yields a [`DecodeError`] naming the
//! stage that failed and why; the task sends it to the dead-letter topic.

mod batch;
pub mod json;

use serde::{Deserialize, Serialize};

use crate::time::{EventTimeBounds, Millis};
use crate::window::AggregateFunction;
use crate::window::Event;

pub use batch::RecordBatch;
pub use json::JsonDecoder;

/// A record as it comes off a partition, owning its bytes: what a dead
/// letter carries. The hot path reads records as [`RecordRef`]s borrowed
/// from their [`RecordBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRecord {
    pub offset: i64,
    /// Kafka timestamp (create or log-append time), when the record has one.
    pub timestamp: Option<Millis>,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

impl SourceRecord {
    pub fn size(&self) -> usize {
        self.view().size()
    }

    /// The record as decoders read it.
    pub fn view(&self) -> RecordRef<'_> {
        RecordRef {
            offset: self.offset,
            timestamp: self.timestamp,
            key: self.key.as_deref(),
            payload: self.payload.as_deref(),
        }
    }
}

/// A record borrowed from the buffer that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub offset: i64,
    /// Kafka timestamp (create or log-append time), when the record has one.
    pub timestamp: Option<Millis>,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
}

impl RecordRef<'_> {
    /// Key and payload bytes.
    pub fn size(&self) -> usize {
        self.key.map_or(0, <[u8]>::len) + self.payload.map_or(0, <[u8]>::len)
    }

    /// The record owning its bytes (for a dead letter).
    pub fn to_record(&self) -> SourceRecord {
        SourceRecord {
            offset: self.offset,
            timestamp: self.timestamp,
            key: self.key.map(<[u8]>::to_vec),
            payload: self.payload.map(<[u8]>::to_vec),
        }
    }
}

/// Where decoding failed; the `stage` label of metrics and DLQ headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Size,
    Parse,
    Key,
    EventTime,
    Aggregate,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Size => "size",
            Stage::Parse => "parse",
            Stage::Key => "key",
            Stage::EventTime => "event_time",
            Stage::Aggregate => "aggregate",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {reason}", stage.as_str())]
pub struct DecodeError {
    pub stage: Stage,
    pub reason: String,
}

pub(crate) fn fail(stage: Stage, reason: impl Into<String>) -> DecodeError {
    DecodeError { stage, reason: reason.into() }
}

pub trait Decoder: Send + Sync {
    /// Decodes one record; `now` is the processing time for
    /// processing-time pipelines.
    fn decode<'a>(&self, record: RecordRef<'a>, now: Millis) -> Result<Event<'a>, DecodeError>;
}

/// What a decoder extracts from a record, compiled from a pipeline's
/// configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordSpec {
    pub key: KeySource,
    pub event_time: EventTimeSource,
    /// Per aggregate, in the operator's order: the function and its input
    /// field (a JSON pointer).
    pub inputs: Vec<(AggregateFunction, Option<String>)>,
    pub max_record_bytes: usize,
    pub time_bounds: EventTimeBounds,
}

/// Builds the decoder for a format.
pub fn decoder_for(format: Format, spec: &RecordSpec) -> Box<dyn Decoder> {
    match format {
        Format::Json => Box::new(JsonDecoder::new(spec)),
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    #[default]
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "from", rename_all = "snake_case", deny_unknown_fields)]
pub enum KeySource {
    /// A JSON pointer into the record value, e.g. `/user/id`.
    Field { pointer: String },
    /// The Kafka message key, as UTF-8.
    KafkaKey,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "from", rename_all = "snake_case", deny_unknown_fields)]
pub enum EventTimeSource {
    /// A JSON pointer into the record value.
    Field {
        pointer: String,
        #[serde(default)]
        format: TimeFormat,
    },
    /// The Kafka record's timestamp (create or log-append time).
    KafkaTimestamp,
    /// The wall clock when the record is processed: windows are
    /// processing-time windows and results are at-least-once.
    ProcessingTime,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeFormat {
    #[default]
    EpochMillis,
    EpochSeconds,
    Rfc3339,
}
