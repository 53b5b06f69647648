//! JSON decoding of one W1 record into an operator event with
//! `regionflow::format::JsonDecoder` (single-segment pointers: the
//! one-pass top-level reader), next to parsing the same payload into a
//! `serde_json::Value` (what decoding with deeper pointers starts with).
//!
//! `cargo bench --bench decode`

mod support;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use regionflow::format::{Decoder, JsonDecoder, SourceRecord};
use regionflow::pipeline::compile;
use support::{Workload, BASE_TS};

const RECORDS: usize = 10_000;

fn records() -> Vec<SourceRecord> {
    support::generate(RECORDS, 100_000, BASE_TS, 42)
        .iter()
        .enumerate()
        .map(|(i, r)| support::source_record(r, i as i64))
        .collect()
}

fn decode(c: &mut Criterion) {
    let records = records();
    let bytes: usize = records.iter().map(SourceRecord::size).sum();
    let mut group = c.benchmark_group("decode");
    group.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    group.throughput(Throughput::Elements(RECORDS as u64));

    for workload in [Workload::W1, Workload::W3] {
        let decoder = JsonDecoder::new(&compile::record_spec(&support::pipeline_config(workload)));
        let now = regionflow::time::now_millis();
        let what = if workload == Workload::W1 { "key_field" } else { "kafka_key" };
        group.bench_function(format!("{}_{what}", workload.name()), |b| {
            b.iter(|| records.iter().map(|r| decoder.decode(r.view(), now).expect("valid").time).sum::<i64>())
        });
    }
    group.bench_function("parse_value_only", |b| {
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
    group.finish();

    let mut group = c.benchmark_group("decode_bytes");
    group.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    group.throughput(Throughput::Bytes(bytes as u64));
    let decoder = JsonDecoder::new(&compile::record_spec(&support::pipeline_config(Workload::W1)));
    let now = regionflow::time::now_millis();
    group.bench_function("W1_key_field", |b| {
        b.iter(|| records.iter().map(|r| decoder.decode(r.view(), now).expect("valid").time).sum::<i64>())
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
