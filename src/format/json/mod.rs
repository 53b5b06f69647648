//! JSON records: key, event time and aggregate inputs by JSON pointer.
//!
//! Fields are read in one of two ways (see `fields`): when every
//! configured pointer names a top-level field (`/user`), one pass over the
//! object materialises only those fields and skips the rest (a
//! hand-written pass, `scan`, for flat objects of plain values, else
//! `serde_json`'s); otherwise the
//! whole value is parsed into a `serde_json::Value` and the pointers are
//! looked up in it. Both give the same events and the same errors, except
//! that a skipped field is not subject to the parser's nesting limit.

mod fields;
mod scan;

use std::borrow::Cow;

use serde_json::Value as Json;

use fields::{FieldValue, Fields, TopLevelNames};

use super::{fail, DecodeError, Decoder, EventTimeSource, KeySource, RecordRef, RecordSpec, Stage, TimeFormat};
use crate::time::{millis_from_f64, parse_rfc3339, EventTimeBounds, Millis};
use crate::window::hll::stable_hash;
use crate::window::AggregateFunction;
use crate::window::{Event, Input, Inputs};

/// JSON values: key, time and aggregate inputs by JSON pointer.
pub struct JsonDecoder {
    key: KeySource,
    event_time: EventTimeSource,
    inputs: Vec<(AggregateFunction, Option<String>)>,
    max_record_bytes: usize,
    time_bounds: EventTimeBounds,
    /// Set when every pointer is a single segment.
    top_level: Option<TopLevelNames>,
    /// Where a top-level read puts the key's, the event time's and each
    /// input's field.
    slots: Slots,
}

#[derive(Debug, Default)]
struct Slots {
    key: Option<usize>,
    time: Option<usize>,
    inputs: Vec<Option<usize>>,
}

impl JsonDecoder {
    pub fn new(spec: &RecordSpec) -> Self {
        let key_pointer = match &spec.key {
            KeySource::Field { pointer } => Some(pointer.as_str()),
            KeySource::KafkaKey => None,
        };
        let time_pointer = match &spec.event_time {
            EventTimeSource::Field { pointer, .. } => Some(pointer.as_str()),
            EventTimeSource::ProcessingTime | EventTimeSource::KafkaTimestamp => None,
        };
        let pointers =
            key_pointer.into_iter().chain(time_pointer).chain(spec.inputs.iter().filter_map(|(_, f)| f.as_deref()));
        let top_level = TopLevelNames::of(pointers);
        let slot = |pointer: Option<&str>| top_level.as_ref()?.slot(pointer?);
        let slots = Slots {
            key: slot(key_pointer),
            time: slot(time_pointer),
            inputs: spec.inputs.iter().map(|(_, field)| slot(field.as_deref())).collect(),
        };
        JsonDecoder {
            key: spec.key.clone(),
            event_time: spec.event_time.clone(),
            top_level,
            slots,
            inputs: spec.inputs.clone(),
            max_record_bytes: spec.max_record_bytes,
            time_bounds: spec.time_bounds,
        }
    }

    /// The record's fields, or why its value is not JSON.
    fn fields<'a>(&self, payload: &'a [u8]) -> Result<Fields<'a>, DecodeError> {
        let parse_error = |e: serde_json::Error| fail(Stage::Parse, format!("invalid JSON: {e}"));
        // Payloads that are not UTF-8 take the tree path, whose parser
        // names the offending position (the single-pass reader would not
        // check UTF-8 inside skipped strings).
        if let Some(wanted) = &self.top_level {
            if let Ok(text) = std::str::from_utf8(payload) {
                if let Some(values) = wanted.read(text).map_err(parse_error)? {
                    return Ok(Fields::TopLevel(values));
                }
            }
        }
        serde_json::from_slice(payload).map(Fields::Tree).map_err(parse_error)
    }

    /// The grouping key: the Kafka key as UTF-8, or a field's text. A JSON
    /// string is its text; a number or bool its JSON text (so `1` and `"1"`
    /// are one key, `1.0` another). An empty key is refused: every entry
    /// of every empty-keyed record would share one entry by accident.
    fn key<'a>(&self, record: RecordRef<'a>, fields: &Fields<'a>) -> Result<Cow<'a, str>, DecodeError> {
        let key: Cow<'a, str> = match &self.key {
            KeySource::KafkaKey => {
                let key = record.key.ok_or_else(|| fail(Stage::Key, "record has no Kafka key"))?;
                let key = std::str::from_utf8(key).map_err(|_| fail(Stage::Key, "Kafka key is not UTF-8"))?;
                Cow::Borrowed(key)
            }
            KeySource::Field { pointer } => match fields.get(pointer, self.slots.key) {
                None => return Err(fail(Stage::Key, format!("missing key field {pointer}"))),
                Some(FieldValue::Str(s)) => match fields.payload_str(self.slots.key) {
                    Some(text) => Cow::Borrowed(text),
                    None => Cow::Owned(s.to_owned()),
                },
                Some(FieldValue::Other(v @ (Json::Number(_) | Json::Bool(_)))) => Cow::Owned(v.to_string()),
                Some(_) => {
                    return Err(fail(Stage::Key, format!("key field {pointer} is not a string, number or bool")))
                }
            },
        };
        if key.is_empty() {
            return Err(fail(Stage::Key, "empty key"));
        }
        Ok(key)
    }

    /// The record's event time, refused when it is not a plausible time
    /// at `now` (see `time::bounds`): such a record must not move the
    /// watermark.
    fn event_time(&self, record: RecordRef, fields: &Fields, now: Millis) -> Result<Millis, DecodeError> {
        let time = match &self.event_time {
            EventTimeSource::ProcessingTime => return Ok(now),
            EventTimeSource::KafkaTimestamp => {
                record.timestamp.ok_or_else(|| fail(Stage::EventTime, "record has no Kafka timestamp"))?
            }
            EventTimeSource::Field { pointer, format } => {
                let v = match fields.get(pointer, self.slots.time) {
                    None => return Err(fail(Stage::EventTime, format!("missing event time field {pointer}"))),
                    Some(v) => v,
                };
                let wrong =
                    || fail(Stage::EventTime, format!("event time field {pointer} is not {}", describe(*format)));
                let out_of_range = |n: f64| {
                    fail(Stage::EventTime, format!("event time field {pointer} ({n}) is outside years 0000 to 9999"))
                };
                match format {
                    TimeFormat::EpochMillis => {
                        let n = number(v).ok_or_else(wrong)?;
                        millis_from_f64(n).ok_or_else(|| out_of_range(n))?
                    }
                    TimeFormat::EpochSeconds => {
                        let n = number(v).ok_or_else(wrong)?;
                        millis_from_f64((n * 1000.0).round()).ok_or_else(|| out_of_range(n))?
                    }
                    TimeFormat::Rfc3339 => match v {
                        FieldValue::Str(s) => parse_rfc3339(s).ok_or_else(wrong)?,
                        FieldValue::Other(_) => return Err(wrong()),
                    },
                }
            }
        };
        self.time_bounds.check(time, now).map_err(|reason| fail(Stage::EventTime, reason))
    }

    fn input(
        function: AggregateFunction,
        field: &Option<String>,
        slot: Option<usize>,
        fields: &Fields,
    ) -> Result<Input, DecodeError> {
        let Some(pointer) = field else { return Ok(Input::Unit) };
        let v = fields.get(pointer, slot);
        if function == AggregateFunction::Count {
            return Ok(if v.is_some() { Input::Unit } else { Input::Absent });
        }
        let v = v.ok_or_else(|| fail(Stage::Aggregate, format!("missing field {pointer}")))?;
        match function {
            AggregateFunction::Count => unreachable!("handled above"),
            AggregateFunction::Sum | AggregateFunction::Min | AggregateFunction::Max | AggregateFunction::Avg => {
                match v {
                    FieldValue::Other(Json::Number(n)) => n.as_f64(),
                    _ => None,
                }
                .map(Input::Number)
                .ok_or_else(|| fail(Stage::Aggregate, format!("field {pointer} is not a number")))
            }
            AggregateFunction::DistinctCount => Ok(Input::Hash(match v {
                FieldValue::Str(s) => stable_hash(s.as_bytes()),
                FieldValue::Other(other) => stable_hash(other.to_string().as_bytes()),
            })),
            AggregateFunction::First | AggregateFunction::Last => Ok(Input::Text(match v {
                FieldValue::Str(s) => s.into(),
                FieldValue::Other(other) => other.to_string().into(),
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
fn number(v: FieldValue) -> Option<f64> {
    match v {
        FieldValue::Other(Json::Number(n)) => n.as_f64(),
        FieldValue::Str(s) => s.trim().parse().ok(),
        FieldValue::Other(_) => None,
    }
}

impl Decoder for JsonDecoder {
    fn decode<'a>(&self, record: RecordRef<'a>, now: Millis) -> Result<Event<'a>, DecodeError> {
        let size = record.size();
        if size > self.max_record_bytes {
            return Err(fail(
                Stage::Size,
                format!("record is {size} bytes, more than max_record_bytes ({})", self.max_record_bytes),
            ));
        }
        let payload = record.payload.ok_or_else(|| fail(Stage::Parse, "record has no value"))?;
        let fields = self.fields(payload)?;
        let key = self.key(record, &fields)?;
        let time = self.event_time(record, &fields, now)?;
        let mut inputs = Inputs::new();
        for ((function, field), slot) in self.inputs.iter().zip(&self.slots.inputs) {
            inputs.push(Self::input(*function, field, *slot, &fields)?);
        }
        Ok(Event { key, time, inputs, offset: record.offset })
    }
}

#[cfg(test)]
mod tests;
