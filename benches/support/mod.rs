//! The standard benchmark workloads (issue 5), shared by every bench target.
//!
//! One record stream serves W1, W2 and W3: JSON page-view-like records
//! `{"user":"u123","ts":...,"amount":12.34,"page":"/page/7","country":"DE"}`
//! whose Kafka key is the user. Event time advances 1 ms per event with up
//! to [`DISORDER_MS`] of disorder; users are uniform over `keys`. The
//! pipelines aggregate `count` and `sum(/amount)` per user (aggregates
//! named `count` and `sum`, so the operator's input order, which follows
//! the names, is count then sum as [`Raw::event`] builds it):
//!
//! - W1: tumbling 10 s, key from the `/user` field;
//! - W2: sliding 60 s every 10 s, key from the `/user` field;
//! - W3: session windows, 30 s gap, key = the Kafka key (sessions need it).
//!
//! Records are routed to partition `fnv1a(user) % partitions`, so one key
//! lives in one partition in every workload.
#![allow(dead_code)]

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use regionflow::config::{PipelineConfig, Settings};
use regionflow::format::SourceRecord;
use regionflow::time::{Millis, WatermarkTracker};
use regionflow::window::{Event, Input, WindowOperator, WindowResult, WindowSpec};

pub const BASE_TS: Millis = 1_700_000_000_000;
pub const DISORDER_MS: Millis = 500;
pub const PAGES: u32 = 200;
/// librdkafka's `fetch.queue.backoff.ms` for every consumer in the benchmark
/// (the connector's and the source ceiling's alike). Its default, 1000 ms,
/// pauses fetching for a second whenever a partition's pre-fetch queue
/// reaches `queued.min.messages`, which caps a fast consumer at roughly
/// that queue per second (~190k records/s here), far below what the broker
/// serves.
pub const FETCH_QUEUE_BACKOFF_MS: u32 = 10;
const COUNTRIES: [&str; 8] = ["DE", "US", "FR", "BR", "IN", "JP", "GB", "NL"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    W1,
    W2,
    W3,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::W1 => "W1",
            Workload::W2 => "W2",
            Workload::W3 => "W3",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Workload::W1 => "tumbling 10s",
            Workload::W2 => "sliding 60s/10s",
            Workload::W3 => "session 30s gap",
        }
    }

    fn window_toml(self) -> &'static str {
        match self {
            Workload::W1 => r#"{ kind = "tumbling", size = "10s" }"#,
            Workload::W2 => r#"{ kind = "sliding", size = "60s", slide = "10s" }"#,
            Workload::W3 => r#"{ kind = "session", gap = "30s" }"#,
        }
    }

    fn key_toml(self) -> &'static str {
        match self {
            Workload::W1 | Workload::W2 => r#"{ from = "field", pointer = "/user" }"#,
            Workload::W3 => r#"{ from = "kafka_key" }"#,
        }
    }

    /// Longest event-time span of one window: how far past the data a
    /// closing marker must be to fire every data window.
    pub fn span_ms(self) -> Millis {
        match self {
            Workload::W1 => 10_000,
            Workload::W2 => 60_000,
            Workload::W3 => 30_000,
        }
    }

    pub fn parse(s: &str) -> Option<Workload> {
        match s.to_ascii_lowercase().as_str() {
            "w1" => Some(Workload::W1),
            "w2" => Some(Workload::W2),
            "w3" => Some(Workload::W3),
            _ => None,
        }
    }
}

/// Everything a connector configuration for a workload needs.
pub struct Endpoints<'a> {
    pub brokers: &'a str,
    pub redis_nodes: &'a [String],
    pub group: &'a str,
    pub topic: &'a str,
    pub metrics_listen: &'a str,
}

/// Settings a run varies (the live latency run, the change feed run).
#[derive(Debug, Clone, Copy)]
pub struct Tuning<'a> {
    /// The pipeline's `emit` table (TOML inline).
    pub emit: &'a str,
    /// `connector.flush_interval`; the connector's default when `None`.
    pub flush_interval: Option<&'a str>,
    /// The region's change feed topic (`mode = "every"`); no feed when `None`.
    pub changes: Option<&'a str>,
}

impl Default for Tuning<'_> {
    /// `emit = { mode = "final" }`, the default flush interval, no change feed.
    fn default() -> Self {
        Tuning { emit: r#"{ mode = "final" }"#, flush_interval: None, changes: None }
    }
}

/// The connector configuration of one workload (pipeline name `bench`,
/// region `bench_<workload>`) with `tuning`'s settings.
pub fn settings_toml(workload: Workload, e: &Endpoints<'_>, tuning: &Tuning<'_>) -> String {
    let connector = match tuning.flush_interval {
        Some(interval) => format!("[connector]\nflush_interval = \"{interval}\"\n"),
        None => String::new(),
    };
    let changes = match tuning.changes {
        Some(topic) => format!(r#", changes = {{ topic = "{topic}", mode = "every" }}"#),
        None => String::new(),
    };
    let nodes: Vec<String> = e.redis_nodes.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "{group}"
properties = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500", "fetch.queue.backoff.ms" = "{backoff}" }}

[redis]
nodes = [{nodes}]
key_prefix = "rf"

[metrics]
listen = "{metrics}"

{connector}
[pipelines.bench]
topics = ["{topic}"]
key = {key}
event_time = {{ from = "field", pointer = "/ts", format = "epoch_millis" }}
window = {window}
watermark = {{ max_out_of_orderness = "{DISORDER_MS}ms", idle_timeout = "1h" }}
late_records = "drop"
emit = {emit}
region = {{ name = "bench_{region}", key = "{{key}}:{{window_start}}"{changes} }}

[pipelines.bench.aggregates]
count = {{ function = "count" }}
sum = {{ function = "sum", field = "/amount" }}
"#,
        brokers = e.brokers,
        backoff = FETCH_QUEUE_BACKOFF_MS,
        group = e.group,
        nodes = nodes.join(", "),
        metrics = e.metrics_listen,
        topic = e.topic,
        key = workload.key_toml(),
        window = workload.window_toml(),
        region = workload.name().to_ascii_lowercase(),
        emit = tuning.emit,
    )
}

pub fn settings(workload: Workload) -> Settings {
    let nodes = vec!["redis://127.0.0.1:1".to_string()];
    let toml = settings_toml(
        workload,
        &Endpoints {
            brokers: "127.0.0.1:1",
            redis_nodes: &nodes,
            group: "bench",
            topic: "bench",
            metrics_listen: "127.0.0.1:0",
        },
        &Tuning::default(),
    );
    Settings::from_toml_str(&toml).expect("benchmark configuration is valid")
}

pub fn pipeline_config(workload: Workload) -> PipelineConfig {
    settings(workload).pipelines["bench"].clone()
}

/// One generated record before encoding.
#[derive(Debug, Clone)]
pub struct Raw {
    pub user: u32,
    pub ts: Millis,
    /// Cents, so sums are exact.
    pub cents: u32,
    pub page: u16,
    pub country: u8,
}

impl Raw {
    pub fn key(&self) -> String {
        format!("u{}", self.user)
    }

    pub fn amount(&self) -> f64 {
        self.cents as f64 / 100.0
    }

    pub fn json(&self) -> String {
        format!(
            r#"{{"user":"u{}","ts":{},"amount":{}.{:02},"page":"/page/{}","country":"{}"}}"#,
            self.user,
            self.ts,
            self.cents / 100,
            self.cents % 100,
            self.page,
            COUNTRIES[self.country as usize]
        )
    }

    /// The event the decoder makes of this record (owning its key, where
    /// decoding borrows it from the record).
    pub fn event(&self, offset: i64) -> Event<'static> {
        Event {
            key: self.key().into(),
            time: self.ts,
            inputs: smallvec::smallvec![Input::Unit, Input::Number(self.amount())],
            offset,
        }
    }
}

/// `n` records, 1 ms of event time each starting at `base`, up to
/// [`DISORDER_MS`] behind the stream clock, users uniform over `keys`.
pub fn generate(n: usize, keys: u32, base: Millis, seed: u64) -> Vec<Raw> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| Raw {
            user: rng.random_range(0..keys),
            ts: base + i as Millis - rng.random_range(0..=DISORDER_MS),
            cents: rng.random_range(1..100_000),
            page: rng.random_range(0..PAGES) as u16,
            country: rng.random_range(0..COUNTRIES.len()) as u8,
        })
        .collect()
}

pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

pub fn partition_of(key: &str, partitions: i32) -> i32 {
    (fnv1a(key.as_bytes()) % partitions as u64) as i32
}

pub fn source_record(raw: &Raw, offset: i64) -> SourceRecord {
    SourceRecord {
        offset,
        timestamp: Some(raw.ts),
        key: Some(raw.key().into_bytes()),
        payload: Some(raw.json().into_bytes()),
    }
}

/// The operator core as a partition task drives it: the watermark before
/// the record, the record, the watermark after it, fired results drained.
pub struct Driver {
    pub operator: WindowOperator,
    pub watermark: WatermarkTracker,
    pub fired: usize,
    /// Keeps fired results when asked to (to build the sink's writes).
    pub keep: Option<Vec<WindowResult>>,
}

impl Driver {
    pub fn new(spec: &WindowSpec, keep: bool) -> Self {
        Driver {
            operator: WindowOperator::new(spec.clone()),
            watermark: WatermarkTracker::new(Duration::from_millis(DISORDER_MS as u64), Duration::from_secs(3600)),
            fired: 0,
            keep: keep.then(Vec::new),
        }
    }

    #[inline]
    pub fn feed(&mut self, event: &Event) {
        let before = self.watermark.current();
        let _ = self.operator.process(event, before);
        let watermark = self.watermark.observe(event.time, 0);
        if watermark > before {
            self.operator.advance(watermark);
        }
        if self.operator.pending_results() > 0 {
            self.drain();
        }
    }

    /// Fires every window still open (what the closing markers do end to end).
    pub fn finish(&mut self) {
        self.operator.advance(Millis::MAX / 2);
        self.drain();
    }

    fn drain(&mut self) {
        let results = self.operator.take_results();
        self.fired += results.len();
        if let Some(keep) = &mut self.keep {
            keep.extend(results);
        }
    }
}

pub fn spec(workload: Workload) -> WindowSpec {
    regionflow::pipeline::compile::window_spec(&pipeline_config(workload))
}
