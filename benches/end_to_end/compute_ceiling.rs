//! The compute ceiling: the operator core (one `WindowOperator` and
//! watermark per partition, as the tasks run them) on pre-decoded events,
//! one thread; also decode + operator from the raw records.

use std::time::Instant;

use regionflow::format::{Decoder, JsonDecoder, SourceRecord};
use regionflow::pipeline::compile;
use regionflow::window::{Event, WindowResult};

use crate::data::DataSet;
use crate::support::{self, Driver, Workload};

// Compute ceiling and state size.

pub struct Compute {
    pub operator_events_per_s: f64,
    pub decode_operator_events_per_s: f64,
    pub results: Vec<(i32, WindowResult)>,
}

pub fn drivers(workload: Workload, partitions: i32, keep: bool) -> Vec<Driver> {
    let spec = support::spec(workload);
    (0..partitions).map(|_| Driver::new(&spec, keep)).collect()
}

pub fn compute_ceiling(workload: Workload, data: &DataSet, partitions: i32) -> Compute {
    let events: Vec<(usize, Event<'static>)> =
        data.raws.iter().enumerate().map(|(i, r)| (data.partition[i] as usize, r.event(data.offset[i]))).collect();
    // Operator core alone, best of two passes (the first also warms up).
    let mut best = f64::MAX;
    for _ in 0..2 {
        let mut ds = drivers(workload, partitions, false);
        let started = Instant::now();
        for (p, e) in &events {
            ds[*p].feed(e);
        }
        best = best.min(started.elapsed().as_secs_f64());
    }
    drop(events);
    let operator_events_per_s = data.len() as f64 / best;

    // Decode + operator, from the records as Kafka delivers them.
    let config = support::pipeline_config(workload);
    let decoder = JsonDecoder::new(&compile::record_spec(&config));
    // The wall clock: event times are judged against it (max_ahead_of_clock).
    let now = regionflow::time::now_millis();
    let records: Vec<SourceRecord> =
        data.raws.iter().enumerate().map(|(i, r)| support::source_record(r, data.offset[i])).collect();
    let mut ds = drivers(workload, partitions, false);
    let started = Instant::now();
    for (i, r) in records.iter().enumerate() {
        let event = decoder.decode(r.view(), now).expect("valid record");
        ds[data.partition[i] as usize].feed(&event);
    }
    let decode_operator_events_per_s = data.len() as f64 / started.elapsed().as_secs_f64();
    drop(records);

    // The results the pipeline will write (kept, then every window fired).
    let mut ds = drivers(workload, partitions, true);
    for (i, r) in data.raws.iter().enumerate() {
        ds[data.partition[i] as usize].feed(&r.event(data.offset[i]));
    }
    let mut results = Vec::new();
    for (p, d) in ds.iter_mut().enumerate() {
        d.finish();
        results.extend(d.keep.take().expect("kept").into_iter().map(|r| (p as i32, r)));
    }
    Compute { operator_events_per_s, decode_operator_events_per_s, results }
}
