//! JSON decoding of one W1 record into an operator event.
//!
//! `current/*` is `regionflow::source::decode::JsonDecoder` as it is.
//! `candidate/*` are bench-local prototypes of the optimisation proposed in
//! BENCHMARKS.md (decode only the fields the pipeline needs, borrowing
//! strings from the payload, no `serde_json::Value` tree); they produce the
//! same `Event` and exist only to measure what that change would buy.
//!
//! `cargo bench --bench decode`

mod support;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use regionflow::source::decode::{Decoder, JsonDecoder, SourceRecord};
use regionflow::window::{Event, Input};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::Deserializer;
use support::{Workload, BASE_TS};

const RECORDS: usize = 10_000;

fn records() -> Vec<SourceRecord> {
    support::generate(RECORDS, 100_000, BASE_TS, 42)
        .iter()
        .enumerate()
        .map(|(i, r)| support::source_record(r, i as i64))
        .collect()
}

/// A top-level scalar borrowed from the payload where possible.
#[derive(Debug)]
enum Scalar<'a> {
    Str(std::borrow::Cow<'a, str>),
    Num(f64),
    Int(i64),
    Other,
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(v.into()))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(v.to_owned().into()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Int(v as i64))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Num(v))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Other)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
}

impl<'de> DeserializeSeed<'de> for ScalarVisitor {
    type Value = Scalar<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Scalar<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

/// Candidate: one pass over the top-level object; only the wanted fields
/// (single-segment pointers, the common case) are materialised, the rest is
/// skipped with `IgnoredAny`. Slots: 0 = key, 1 = time, 2.. = aggregate inputs.
struct Wanted<'f> {
    names: &'f [&'f str],
}

impl<'de, 'f> Visitor<'de> for Wanted<'f> {
    type Value = [Option<Scalar<'de>>; 4];
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out: [Option<Scalar<'de>>; 4] = Default::default();
        while let Some(name) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match self.names.iter().position(|n| *n == name) {
                Some(i) => out[i] = Some(map.next_value_seed(ScalarVisitor)?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

/// Same event as `JsonDecoder` for the W1 configuration (key `/user`, time
/// `/ts` epoch millis, `count` + `sum(/amount)`).
fn candidate_decode(record: &SourceRecord) -> Option<Event> {
    let payload = record.payload.as_deref()?;
    let mut de = serde_json::Deserializer::from_slice(payload);
    let [key, time, _, amount] = de.deserialize_map(Wanted { names: &["user", "ts", "", "amount"] }).ok()?;
    let key: Arc<str> = match key? {
        Scalar::Str(s) => Arc::from(&*s),
        _ => return None,
    };
    let time = match time? {
        Scalar::Int(t) => t,
        Scalar::Num(t) => t as i64,
        _ => return None,
    };
    let amount = match amount? {
        Scalar::Num(v) => v,
        Scalar::Int(v) => v as f64,
        _ => return None,
    };
    Some(Event { key, time, inputs: vec![Input::Unit, Input::Number(amount)], offset: record.offset })
}

fn decode(c: &mut Criterion) {
    let records = records();
    let bytes: usize = records.iter().map(SourceRecord::size).sum();
    let mut group = c.benchmark_group("decode");
    group.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    group.throughput(Throughput::Elements(RECORDS as u64));

    for workload in [Workload::W1, Workload::W3] {
        let decoder = JsonDecoder::new(&support::pipeline_config(workload));
        let what = if workload == Workload::W1 { "key_field" } else { "kafka_key" };
        group.bench_function(format!("current/{}_{what}", workload.name()), |b| {
            b.iter(|| records.iter().map(|r| decoder.decode(r, 0).expect("valid").time).sum::<i64>())
        });
    }
    group.bench_function("current/parse_value_only", |b| {
        b.iter(|| {
            records
                .iter()
                .map(|r| {
                    serde_json::from_slice::<serde_json::Value>(r.payload.as_deref().unwrap()).unwrap().is_object()
                        as usize
                })
                .sum::<usize>()
        })
    });

    // The candidate must agree with the decoder before it is timed.
    let decoder = JsonDecoder::new(&support::pipeline_config(Workload::W1));
    for r in &records {
        assert_eq!(candidate_decode(r), decoder.decode(r, 0).ok(), "candidate decodes like JsonDecoder");
    }
    group.bench_function("candidate/W1_wanted_fields_borrowed", |b| {
        b.iter(|| records.iter().map(|r| candidate_decode(r).expect("valid").time).sum::<i64>())
    });
    group.finish();

    let mut group = c.benchmark_group("decode_bytes");
    group.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("current/W1_key_field", |b| {
        b.iter(|| records.iter().map(|r| decoder.decode(r, 0).expect("valid").time).sum::<i64>())
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
