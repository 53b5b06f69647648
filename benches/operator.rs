//! Window assignment and aggregation: the operator core on pre-decoded
//! events (the compute ceiling of the end-to-end benchmark), per workload,
//! plus the per-record work around it in a partition task (decode +
//! operator) and the conversion of results into region writes.
//!
//! `cargo bench --bench operator` (a few seconds per benchmark).

mod support;

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use regionflow::format::{Decoder, JsonDecoder};
use regionflow::pipeline::compile;
use regionflow::window::Event;
use support::{Driver, Workload, BASE_TS};

/// Events per iteration: 200 s of event time, i.e. 20 tumbling windows,
/// so firing and purging are in the steady state.
const EVENTS: usize = 200_000;

fn events(keys: u32) -> Vec<Event<'static>> {
    support::generate(EVENTS, keys, BASE_TS, 42).iter().enumerate().map(|(i, r)| r.event(i as i64)).collect()
}

fn operator(c: &mut Criterion) {
    let mut group = c.benchmark_group("operator");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(EVENTS as u64));
    for (keys, label) in [(100_000u32, "100k_keys"), (10_000_000, "10m_keys")] {
        let events = events(keys);
        for workload in [Workload::W1, Workload::W2, Workload::W3] {
            if keys > 100_000 && workload != Workload::W1 {
                continue;
            }
            let spec = support::spec(workload);
            group.bench_function(format!("{}/{label}", workload.name()), |b| {
                b.iter_batched(
                    || Driver::new(&spec, false),
                    |mut driver| {
                        for e in &events {
                            driver.feed(e);
                        }
                        driver
                    },
                    BatchSize::PerIteration,
                )
            });
        }
    }
    group.finish();
}

/// What a partition task does per record before writing: decode the JSON
/// record, then the operator core.
fn decode_and_operator(c: &mut Criterion) {
    let mut group = c.benchmark_group("task_path");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(EVENTS as u64));
    let raws = support::generate(EVENTS, 100_000, BASE_TS, 42);
    let records: Vec<_> = raws.iter().enumerate().map(|(i, r)| support::source_record(r, i as i64)).collect();
    for workload in [Workload::W1, Workload::W2, Workload::W3] {
        let config = support::pipeline_config(workload);
        let decoder = JsonDecoder::new(&compile::record_spec(&config));
        let now = regionflow::time::now_millis();
        let spec = support::spec(workload);
        group.bench_function(format!("decode+operator/{}", workload.name()), |b| {
            b.iter_batched(
                || Driver::new(&spec, false),
                |mut driver| {
                    for r in &records {
                        let event = decoder.decode(r.view(), now).expect("valid record");
                        driver.feed(&event);
                    }
                    driver
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

/// Fired results into `EntryWrite`s (entry key + JSON partial), as a flush does.
fn region_writes(c: &mut Criterion) {
    let mut group = c.benchmark_group("region_layout");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    let events = events(100_000);
    let spec = support::spec(Workload::W1);
    let mut driver = Driver::new(&spec, true);
    for e in &events {
        driver.feed(e);
    }
    driver.finish();
    let results = driver.keep.take().expect("kept");
    let layout = compile::region_layout("rf", &support::pipeline_config(Workload::W1));
    let field: Arc<str> = regionflow::region::partial_field("bench", 0).into();
    group.throughput(Throughput::Elements(results.len() as u64));
    group.bench_function("W1/entry_write", |b| {
        b.iter(|| {
            results
                .iter()
                .map(|r| {
                    let write = layout.write(r, &field, 1, 7);
                    regionflow::redis::partial::entry_partial(&write.accumulators, write.epoch, write.offset).len()
                })
                .sum::<usize>()
        })
    });
    group.finish();
}

criterion_group!(benches, operator, decode_and_operator, region_writes);
criterion_main!(benches);
