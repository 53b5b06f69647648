//! Latency at half the maximum throughput: W1 produced live at a fixed
//! rate, from window end to the entry's acknowledged write.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::Producer;
use regionflow::time::now_millis;

use crate::connector::ConnectorChild;
use crate::data::{producer, send};
use crate::options::Options;
use crate::prom_text::Exposition;
use crate::support::{self, Raw, Workload, DISORDER_MS};

// Latency at half the maximum throughput.

pub struct Latency {
    pub rate: f64,
    pub seconds: u64,
    pub produced: u64,
    pub entries: u64,
    pub direct: HashMap<String, String>,
    pub histogram_p50: Option<f64>,
    pub histogram_p99: Option<f64>,
    pub note: String,
}

pub fn latency_run(
    brokers: &str,
    redis_nodes: &[String],
    opts: &Options,
    rate: f64,
    topic: &str,
    partitions: i32,
) -> Latency {
    let tuning = support::Tuning {
        emit: opts.latency_emit.as_deref().unwrap_or(r#"{ mode = "final" }"#),
        flush_interval: opts.latency_flush.as_deref(),
        changes: None,
    };
    let mut child = ConnectorChild::start(Workload::W1, brokers, redis_nodes, "bench-latency", topic, &tuning, true);
    child.wait_ready(partitions);
    let producer = producer(brokers);
    let mut rng = StdRng::seed_from_u64(11);
    let started = Instant::now();
    let mut produced = 0u64;
    // Per partition, the latest event time produced: the watermarks reach
    // the least of them minus the out-of-orderness.
    let mut latest = vec![i64::MIN; partitions as usize];
    let run_for = Duration::from_secs(opts.latency_secs);
    while started.elapsed() < run_for {
        let due = (rate * started.elapsed().as_secs_f64()) as u64;
        let now = now_millis();
        while produced < due {
            let raw = Raw {
                user: rng.random_range(0..opts.keys),
                ts: now - rng.random_range(0..=DISORDER_MS),
                cents: rng.random_range(1..100_000),
                page: rng.random_range(0..support::PAGES) as u16,
                country: rng.random_range(0..8),
            };
            let key = raw.key();
            let partition = support::partition_of(&key, partitions);
            latest[partition as usize] = latest[partition as usize].max(raw.ts);
            send(&producer, topic, partition, &key, &raw.json());
            produced += 1;
        }
        producer.poll(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = producer.flush(Duration::from_secs(10));
    // Let the windows the watermark has closed finish writing (later ones
    // never fire: the idle timeout is an hour), then read the histogram.
    let mut last = (-1.0, Instant::now());
    let settle = Instant::now();
    let mut text = String::new();
    while settle.elapsed() < Duration::from_secs(30) {
        text = child.metrics().unwrap_or_default();
        let applied = Exposition::parse(&text).sum("regionflow_region_writes_total", &[("outcome", "applied")]);
        if applied != last.0 {
            last = (applied, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(2) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let hist = "regionflow_event_to_region_latency_seconds";
    let metrics = Exposition::parse(&text);
    let histogram_p50 = metrics.histogram_quantile(hist, 0.5);
    let histogram_p99 = metrics.histogram_quantile(hist, 0.99);
    child.closed_by(latest.iter().copied().min().unwrap_or(i64::MIN).saturating_sub(DISORDER_MS));
    let direct = child.stop();
    Latency {
        rate,
        seconds: opts.latency_secs,
        produced,
        entries: last.0.max(0.0) as u64,
        histogram_p50,
        histogram_p99,
        note: direct.get("error").cloned().unwrap_or_default(),
        direct,
    }
}
