//! Decoding: a raw Kafka record into the operator's [`Event`].
//!
//! Decoding sits behind the [`Decoder`] trait so formats other than JSON
//! (Avro, CSV) can follow. A record that cannot become an event yields a
//! [`DecodeError`] naming the stage that failed and why; the task sends it to
//! the dead-letter topic.

use std::sync::Arc;

use serde_json::Value as Json;

use crate::config::{AggregateFunction, EventTimeSource, KeySource, PipelineConfig, TimeFormat};
use crate::time::{parse_rfc3339, Millis};
use crate::window::hll::stable_hash;
use crate::window::{Event, Input};

/// A record as it comes off a partition.
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
        self.key.as_ref().map_or(0, Vec::len) + self.payload.as_ref().map_or(0, Vec::len)
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

fn fail(stage: Stage, reason: impl Into<String>) -> DecodeError {
    DecodeError { stage, reason: reason.into() }
}

pub trait Decoder: Send + Sync {
    /// Decodes one record; `now` is the processing time for
    /// processing-time pipelines.
    fn decode(&self, record: &SourceRecord, now: Millis) -> Result<Event, DecodeError>;
}

/// Builds the decoder for a pipeline's configured format.
pub fn decoder_for(config: &PipelineConfig) -> Box<dyn Decoder> {
    match config.format {
        crate::config::Format::Json => Box::new(JsonDecoder::new(config)),
    }
}

/// JSON values: key, time and aggregate inputs by JSON pointer.
pub struct JsonDecoder {
    key: KeySource,
    event_time: EventTimeSource,
    inputs: Vec<(AggregateFunction, Option<String>)>,
    max_record_bytes: usize,
}

impl JsonDecoder {
    pub fn new(config: &PipelineConfig) -> Self {
        JsonDecoder {
            key: config.key.clone(),
            event_time: config.event_time.clone(),
            inputs: config.aggregates.values().map(|a| (a.function, a.field.clone())).collect(),
            max_record_bytes: config.max_record_bytes,
        }
    }

    fn key(&self, record: &SourceRecord, value: &Json) -> Result<Arc<str>, DecodeError> {
        match &self.key {
            KeySource::KafkaKey => {
                let key = record.key.as_deref().ok_or_else(|| fail(Stage::Key, "record has no Kafka key"))?;
                let key = std::str::from_utf8(key).map_err(|_| fail(Stage::Key, "Kafka key is not UTF-8"))?;
                Ok(Arc::from(key))
            }
            KeySource::Field { pointer } => match value.pointer(pointer) {
                None | Some(Json::Null) => Err(fail(Stage::Key, format!("missing key field {pointer}"))),
                Some(Json::String(s)) => Ok(Arc::from(s.as_str())),
                Some(v @ (Json::Number(_) | Json::Bool(_))) => Ok(Arc::from(v.to_string())),
                Some(_) => Err(fail(Stage::Key, format!("key field {pointer} is not a string, number or bool"))),
            },
        }
    }

    fn event_time(&self, record: &SourceRecord, value: &Json, now: Millis) -> Result<Millis, DecodeError> {
        match &self.event_time {
            EventTimeSource::ProcessingTime => Ok(now),
            EventTimeSource::KafkaTimestamp => {
                record.timestamp.ok_or_else(|| fail(Stage::EventTime, "record has no Kafka timestamp"))
            }
            EventTimeSource::Field { pointer, format } => {
                let v = match value.pointer(pointer) {
                    None | Some(Json::Null) => {
                        return Err(fail(Stage::EventTime, format!("missing event time field {pointer}")))
                    }
                    Some(v) => v,
                };
                let wrong =
                    || fail(Stage::EventTime, format!("event time field {pointer} is not {}", describe(*format)));
                match format {
                    TimeFormat::EpochMillis => number(v).map(|n| n as Millis).ok_or_else(wrong),
                    TimeFormat::EpochSeconds => number(v).map(|n| (n * 1000.0).round() as Millis).ok_or_else(wrong),
                    TimeFormat::Rfc3339 => v.as_str().and_then(parse_rfc3339).ok_or_else(wrong),
                }
            }
        }
    }

    fn input(function: AggregateFunction, field: &Option<String>, value: &Json) -> Result<Input, DecodeError> {
        let Some(pointer) = field else { return Ok(Input::Unit) };
        let v = value.pointer(pointer).filter(|v| !v.is_null());
        if function == AggregateFunction::Count {
            return Ok(if v.is_some() { Input::Unit } else { Input::Absent });
        }
        let v = v.ok_or_else(|| fail(Stage::Aggregate, format!("missing field {pointer}")))?;
        match function {
            AggregateFunction::Count => unreachable!("handled above"),
            AggregateFunction::Sum | AggregateFunction::Min | AggregateFunction::Max | AggregateFunction::Avg => v
                .as_f64()
                .map(Input::Number)
                .ok_or_else(|| fail(Stage::Aggregate, format!("field {pointer} is not a number"))),
            AggregateFunction::DistinctCount => Ok(Input::Hash(match v {
                Json::String(s) => stable_hash(s.as_bytes()),
                other => stable_hash(other.to_string().as_bytes()),
            })),
            AggregateFunction::First | AggregateFunction::Last => Ok(Input::Text(match v {
                Json::String(s) => s.as_str().into(),
                other => other.to_string().into(),
            })),
        }
    }
}

fn describe(format: TimeFormat) -> &'static str {
    match format {
        TimeFormat::EpochMillis => "epoch milliseconds",
        TimeFormat::EpochSeconds => "epoch seconds",
        TimeFormat::Rfc3339 => "an RFC 3339 timestamp",
    }
}

/// A JSON number, or a string holding one (common for epoch times).
fn number(v: &Json) -> Option<f64> {
    match v {
        Json::Number(n) => n.as_f64(),
        Json::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

impl Decoder for JsonDecoder {
    fn decode(&self, record: &SourceRecord, now: Millis) -> Result<Event, DecodeError> {
        let size = record.size();
        if size > self.max_record_bytes {
            return Err(fail(
                Stage::Size,
                format!("record is {size} bytes, more than max_record_bytes ({})", self.max_record_bytes),
            ));
        }
        let payload = record.payload.as_deref().ok_or_else(|| fail(Stage::Parse, "record has no value"))?;
        let value: Json =
            serde_json::from_slice(payload).map_err(|e| fail(Stage::Parse, format!("invalid JSON: {e}")))?;
        let key = self.key(record, &value)?;
        let time = self.event_time(record, &value, now)?;
        let inputs = self
            .inputs
            .iter()
            .map(|(function, field)| Self::input(*function, field, &value))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Event { key, time, inputs, offset: record.offset })
    }
}

#[cfg(test)]
mod tests;
