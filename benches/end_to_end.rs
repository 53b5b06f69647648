//! The end-to-end benchmark (issue 5): the standard workloads through a
//! real Kafka-protocol broker, the connector and the local six-node Redis
//! Cluster, each figure next to the ceiling measured in the same run.
//!
//! Run it with `scripts/bench.sh` (which builds in release); knobs are
//! environment variables, see `Options::from_env` or `scripts/bench.sh -h`.
//!
//! One process plays the harness: it starts the Redis Cluster
//! (`tests/common/redis_cluster.rs`) and librdkafka's mock cluster (three
//! brokers on loopback TCP ports), produces the records, and measures:
//!
//! - source ceiling: a bare librdkafka consumer reading the same topic
//!   (`BaseConsumer::poll`, no processing);
//! - compute ceiling: the operator core (one `WindowOperator` and watermark
//!   per partition, as the tasks run them) on pre-decoded in-memory events,
//!   one thread; also decode + operator from the raw records;
//! - sink ceiling: the entries the pipeline writes (built from the compute
//!   run's results with the connector's own `RegionLayout`), written with raw
//!   pipelines per primary: the same `FCALL` of the merge function, and plain `HSET`
//!   of the public fields;
//! - the connector: this binary re-executed as a child process
//!   (`BENCH_ROLE=connector`) that does exactly what `regionflow run` does
//!   (`connector::redis_sinks` + `connector::run`), with the regions wrapped
//!   to timestamp every acknowledged entry write; the child is separate so
//!   its peak RSS and CPU time are its own, not the broker's or the harness's;
//! - state bytes per open window-key: an operator-only run under a counting
//!   global allocator (live heap bytes / open (key, window) pairs).
//!
//! Each data set ends with one closing record per partition far ahead in
//! event time, so every data window fires; a run is done when the region
//! has acknowledged as many entry writes as the compute run fired results.

mod support;

#[allow(dead_code)]
#[path = "../tests/common/redis_cluster.rs"]
mod redis_cluster;
/// The TLS side of the harness, which redis_cluster.rs refers to.
#[allow(dead_code)]
#[path = "../tests/common/secure/mod.rs"]
mod secure;

use std::alloc::{GlobalAlloc, Layout};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicIsize, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::{Message, TopicPartitionList};
use regionflow::config::Settings;
use regionflow::format::{Decoder, JsonDecoder, SourceRecord};
use regionflow::metrics::{Health, Metrics};
use regionflow::pipeline::compile;
use regionflow::redis::function::MERGE_FUNCTION;
use regionflow::redis::partial;
use regionflow::region::{EntryWrite, Region, RegionError, WriteMode, WriteOutcome};
use regionflow::time::{now_millis, Millis};
use regionflow::window::{Event, WindowResult};
use support::{Driver, Raw, Workload, BASE_TS, DISORDER_MS};
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------
// Live heap bytes, for state size, over mimalloc: the connector child runs
// on the allocator `regionflow run` uses (`src/main.rs`).

struct CountingAlloc;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { mimalloc::MiMalloc.alloc(layout) };
        if !p.is_null() && COUNTING.load(Ordering::Relaxed) {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) };
        if COUNTING.load(Ordering::Relaxed) {
            LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) };
        if !p.is_null() && COUNTING.load(Ordering::Relaxed) {
            LIVE_BYTES.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

// ---------------------------------------------------------------------------
// Options.

#[derive(Debug, Clone)]
struct Options {
    events: usize,
    keys: u32,
    high_keys: u32,
    high_events: usize,
    w2_events: usize,
    partitions: i32,
    brokers: i32,
    workloads: Vec<String>,
    latency_secs: u64,
    latency_rate: Option<f64>,
    /// The live latency run's `emit` table (TOML inline), if not final.
    latency_emit: Option<String>,
    /// The live latency run's `connector.flush_interval`, if not the default.
    latency_flush: Option<String>,
    stress_keys: usize,
    sink_chunk: usize,
    sink_inflight: usize,
    run_timeout: Duration,
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v.replace('_', "").parse().unwrap_or_else(|_| panic!("{name}={v} is not valid")),
        Err(_) => default,
    }
}

impl Options {
    fn from_env() -> Options {
        let events = env("BENCH_EVENTS", 1_000_000usize);
        Options {
            events,
            keys: env("BENCH_KEYS", 100_000u32),
            high_keys: env("BENCH_HIGH_KEYS", 10_000_000u32),
            high_events: env("BENCH_HIGH_EVENTS", events),
            w2_events: env("BENCH_W2_EVENTS", events / 4),
            partitions: env("BENCH_PARTITIONS", 0i32),
            brokers: env("BENCH_BROKERS", 3i32),
            workloads: std::env::var("BENCH_WORKLOADS")
                .unwrap_or_else(|_| "w1,w2,w3,w1-10m,latency".into())
                .split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .filter(|s| !s.is_empty())
                .collect(),
            latency_secs: env("BENCH_LATENCY_SECS", 25u64),
            latency_rate: std::env::var("BENCH_LATENCY_RATE").ok().map(|v| v.parse().expect("BENCH_LATENCY_RATE")),
            latency_emit: std::env::var("BENCH_LATENCY_EMIT").ok().filter(|v| !v.is_empty()),
            latency_flush: std::env::var("BENCH_LATENCY_FLUSH").ok().filter(|v| !v.is_empty()),
            stress_keys: env("BENCH_STRESS_KEYS", 10_000_000usize),
            sink_chunk: env("BENCH_SINK_PIPELINE", 1_000usize),
            sink_inflight: env("BENCH_SINK_INFLIGHT", 4usize),
            run_timeout: Duration::from_secs(env("BENCH_RUN_TIMEOUT_SECS", 600u64)),
        }
    }

    fn wants(&self, name: &str) -> bool {
        self.workloads.iter().any(|w| w == name)
    }
}

// ---------------------------------------------------------------------------
// Process figures.

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// User + system CPU seconds of a process.
fn cpu_seconds(pid: u32, ticks: f64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (get(11) + get(12)) / ticks
}

/// A `/proc/<pid>/status` field in kB, as bytes.
fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

// ---------------------------------------------------------------------------
// The connector child.

/// Milliseconds from window end (event time) to acknowledged write, 1 ms
/// buckets up to two minutes; the last bucket takes the rest.
const LATENCY_BUCKETS: usize = 120_001;

/// Per entry key: its window's end and when its latest write was acknowledged.
type EntryAcks = Arc<Mutex<HashMap<String, (i64, i64)>>>;

/// The region as the connector sees it, timestamping every acknowledged write.
struct TimedRegion {
    inner: Arc<dyn Region>,
    latency: Arc<Mutex<Vec<u32>>>,
    writes: Arc<AtomicU64>,
    last_ack: Arc<AtomicI64>,
    /// With `BENCH_PER_ENTRY=1`: per entry key, its window's end and the
    /// acknowledgement of its latest write, i.e. when the region got the
    /// value it ends with (with `emit = updates` that can be an update
    /// written before the window closed).
    entries: Option<EntryAcks>,
}

impl Region for TimedRegion {
    fn write<'a>(&'a self, writes: &'a [EntryWrite]) -> BoxFuture<'a, Result<WriteOutcome, RegionError>> {
        async move {
            let outcome = self.inner.write(writes).await?;
            let now = now_millis();
            if let Some(entries) = &self.entries {
                let mut entries = entries.lock().expect("entries lock");
                for w in writes.iter().filter(|w| w.mode == WriteMode::Replace) {
                    match entries.get_mut(&w.key) {
                        Some(entry) => *entry = (w.window.end, now),
                        None => {
                            entries.insert(w.key.clone(), (w.window.end, now));
                        }
                    }
                }
            } else {
                let mut latency = self.latency.lock().expect("latency lock");
                for w in writes.iter().filter(|w| w.mode == WriteMode::Replace) {
                    latency[latency_bucket(now - w.window.end)] += 1;
                }
            }
            self.writes.fetch_add(writes.len() as u64, Ordering::Relaxed);
            self.last_ack.fetch_max(now, Ordering::Relaxed);
            Ok(outcome)
        }
        .boxed()
    }
}

/// The watermark the harness's data reached (`<report>.closed`, written
/// before it stops the child): windows ending at or before it are closed.
fn closed_by(report: &std::path::Path) -> i64 {
    std::fs::read_to_string(report.with_extension("closed"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(i64::MAX)
}

fn latency_bucket(ms: i64) -> usize {
    ms.clamp(0, LATENCY_BUCKETS as i64 - 1) as usize
}

fn percentile(histogram: &[u32], q: f64) -> Option<u64> {
    let total: u64 = histogram.iter().map(|&c| c as u64).sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).max(1);
    let mut seen = 0u64;
    for (ms, &c) in histogram.iter().enumerate() {
        seen += c as u64;
        if seen >= rank {
            return Some(ms as u64);
        }
    }
    None
}

/// `BENCH_ROLE=connector`: what `regionflow run --config` does
/// (`connector::redis_sinks` + `connector::run`), with the regions timed; writes a small report to `BENCH_REPORT` on exit.
fn connector_child() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,rdkafka=error,librdkafka=error"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    let config = PathBuf::from(std::env::var("BENCH_CONFIG").expect("BENCH_CONFIG"));
    let report = PathBuf::from(std::env::var("BENCH_REPORT").expect("BENCH_REPORT"));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let latency = Arc::new(Mutex::new(vec![0u32; LATENCY_BUCKETS]));
    let writes = Arc::new(AtomicU64::new(0));
    let last_ack = Arc::new(AtomicI64::new(0));
    let entries =
        (std::env::var("BENCH_PER_ENTRY").as_deref() == Ok("1")).then(|| Arc::new(Mutex::new(HashMap::new())));
    let result: anyhow::Result<()> = runtime.block_on(async {
        let settings = Settings::load(&config)?;
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::default());
        let shutdown = CancellationToken::new();
        {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
                term.recv().await;
                shutdown.cancel();
            });
        }
        regionflow::metrics::serve(settings.metrics.listen, metrics.clone(), health.clone(), shutdown.clone()).await?;
        let mut sinks = regionflow::app::redis_sinks(&settings, &metrics).await?;
        sinks.regions = std::mem::take(&mut sinks.regions)
            .into_iter()
            .map(|(name, inner)| {
                let timed = TimedRegion {
                    inner,
                    latency: latency.clone(),
                    writes: writes.clone(),
                    last_ack: last_ack.clone(),
                    entries: entries.clone(),
                };
                (name, Arc::new(timed) as Arc<dyn Region>)
            })
            .collect();
        regionflow::connector::run(settings, sinks, metrics, health, shutdown).await?;
        Ok(())
    });
    let mut histogram = latency.lock().expect("latency lock");
    if let Some(entries) = &entries {
        // Only windows the data closed: updates also write windows still
        // open at the end, whose "latency" would count as 0.
        let closed_by = closed_by(&report);
        for &(end, ack) in entries.lock().expect("entries lock").values().filter(|(end, _)| *end <= closed_by) {
            histogram[latency_bucket(ack - end)] += 1;
        }
    }
    let count: u64 = histogram.iter().map(|&c| c as u64).sum();
    let sum: u64 = histogram.iter().enumerate().map(|(ms, &c)| ms as u64 * c as u64).sum();
    let mut out = String::new();
    let _ = writeln!(out, "writes {}", writes.load(Ordering::Relaxed));
    let _ = writeln!(out, "last_ack_ms {}", last_ack.load(Ordering::Relaxed));
    let _ = writeln!(out, "latency_count {count}");
    if let Some(mean) = sum.checked_div(count) {
        let _ = writeln!(out, "latency_mean_ms {mean}");
        for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999), ("max", 1.0)] {
            let _ = writeln!(out, "latency_{name}_ms {}", percentile(&histogram, q).unwrap_or(0));
        }
    }
    if let Err(e) = &result {
        let _ = writeln!(out, "error {}", format!("{e:#}").replace('\n', " "));
    }
    std::fs::write(&report, out).expect("report written");
    if let Err(e) = result {
        eprintln!("connector failed: {e:#}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------
// Data sets.

struct DataSet {
    name: &'static str,
    topic: String,
    raws: Vec<Raw>,
    keys: u32,
    partitions: i32,
    /// Partition of each raw record.
    partition: Vec<i32>,
    /// Offset of each raw record within its partition.
    offset: Vec<i64>,
    bytes: u64,
}

impl DataSet {
    /// `partitions == 0` picks enough partitions for the mock broker to
    /// keep the whole data set (see [`MOCK_PARTITION_BYTES`]).
    fn new(name: &'static str, topic: &str, n: usize, keys: u32, partitions: i32, seed: u64) -> DataSet {
        let raws = support::generate(n, keys, BASE_TS, seed);
        let bytes: u64 = raws.iter().map(|r| (r.key().len() + r.json().len()) as u64).sum();
        let partitions = if partitions > 0 { partitions } else { auto_partitions(bytes) };
        let mut next = vec![0i64; partitions as usize];
        let mut partition = Vec::with_capacity(n);
        let mut offset = Vec::with_capacity(n);
        for r in &raws {
            let p = support::partition_of(&r.key(), partitions);
            partition.push(p);
            offset.push(next[p as usize]);
            next[p as usize] += 1;
        }
        DataSet { name, topic: topic.into(), raws, keys, partitions, partition, offset, bytes }
    }

    fn len(&self) -> usize {
        self.raws.len()
    }

    /// One record per partition far ahead in event time: fires every data window.
    fn closing_records(&self, partitions: i32) -> Vec<(i32, Raw)> {
        let ts = BASE_TS + self.len() as Millis + 10 * 60_000;
        (0..partitions)
            .map(|p| {
                // A user that routes to partition `p`, outside the data's key range.
                let user = (self.keys..).find(|u| support::partition_of(&format!("u{u}"), partitions) == p).unwrap();
                (p, Raw { user, ts, cents: 0, page: 0, country: 0 })
            })
            .collect()
    }
}

/// librdkafka's mock broker keeps at most 5 MiB of record batches per
/// partition (`rd_kafka_mock_partition_init`: `max_size`, not configurable)
/// and silently drops the oldest beyond that. Data sets are spread over
/// enough partitions to stay well below it (~20 bytes of batch overhead per
/// record, and slack); `produce` checks that nothing was dropped.
const MOCK_PARTITION_BYTES: u64 = 5 * 1024 * 1024;

/// Eight partitions, more when the data set would not fit: W1 records
/// compress about 4:1 with lz4 (measured: 1M records, 91 MB, fit in 8).
fn auto_partitions(bytes: u64) -> i32 {
    let ratio = if compression() == "none" { 1.0 } else { 4.0 };
    let per_partition = MOCK_PARTITION_BYTES as f64 * 0.75 * ratio;
    ((bytes as f64 * 1.3 / per_partition).ceil() as i32).max(8)
}

/// `BENCH_COMPRESSION`: the producer's `compression.type` (default lz4,
/// which also lets the mock broker keep 1M W1 records in 8 partitions).
fn compression() -> String {
    std::env::var("BENCH_COMPRESSION").unwrap_or_else(|_| "lz4".into())
}

fn producer(brokers: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("batch.num.messages", "100000")
        .set("queue.buffering.max.messages", "2000000")
        .set("queue.buffering.max.kbytes", "2097151")
        .set("acks", "1")
        .set("compression.type", compression())
        .create()
        .expect("producer created")
}

fn send(producer: &BaseProducer, topic: &str, partition: i32, key: &str, payload: &str) {
    let mut record = BaseRecord::to(topic).partition(partition).key(key).payload(payload);
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((_, returned)) => {
                record = returned;
                producer.poll(Duration::from_millis(5));
            }
        }
    }
}

/// Produces the data set and its closing records; returns records/s.
fn produce(brokers: &str, data: &DataSet, partitions: i32) -> f64 {
    let producer = producer(brokers);
    let started = Instant::now();
    for (i, r) in data.raws.iter().enumerate() {
        send(&producer, &data.topic, data.partition[i], &r.key(), &r.json());
        if i % 10_000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(120)).expect("all records acknowledged");
    let rate = data.len() as f64 / started.elapsed().as_secs_f64();
    for (p, r) in data.closing_records(partitions) {
        send(&producer, &data.topic, p, &r.key(), &r.json());
    }
    producer.flush(Duration::from_secs(30)).expect("closing records acknowledged");
    // Nothing may have been dropped by the mock broker's size limit.
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", brokers).create().expect("consumer created");
    let mut expected = vec![1i64; partitions as usize];
    for p in &data.partition {
        expected[*p as usize] += 1;
    }
    for p in 0..partitions {
        let (low, high) =
            consumer.fetch_watermarks(&data.topic, p, Duration::from_secs(10)).expect("partition watermarks");
        assert!(
            low == 0 && high == expected[p as usize],
            "partition {p} holds offsets {low}..{high}, expected 0..{}: the mock broker dropped records \
             (5 MiB per partition); use more partitions (BENCH_PARTITIONS) or fewer events",
            expected[p as usize]
        );
    }
    rate
}

#[derive(Debug, Clone, Copy)]
struct Rate {
    events_per_s: f64,
    bytes_per_s: f64,
}

/// The source ceiling: a bare consumer over every partition from the
/// start; best of three reads (a read sometimes stalls on a fetch).
fn consume_ceiling(brokers: &str, data: &DataSet, partitions: i32) -> Rate {
    let rates: Vec<Rate> = (0..3).map(|i| consume_once(brokers, data, partitions, i)).collect();
    println!(
        "  source ceiling reads: {}",
        rates.iter().map(|r| format!("{}/s", si(r.events_per_s))).collect::<Vec<_>>().join(", ")
    );
    *rates.iter().max_by(|a, b| a.events_per_s.total_cmp(&b.events_per_s)).expect("three reads")
}

fn consume_once(brokers: &str, data: &DataSet, partitions: i32, attempt: usize) -> Rate {
    consume_with(brokers, data, partitions, attempt, "")
}

fn consume_with(brokers: &str, data: &DataSet, partitions: i32, attempt: usize, extra: &str) -> Rate {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("ceiling-{}-{attempt}", data.topic))
        .set("enable.auto.commit", "false")
        .set("fetch.queue.backoff.ms", support::FETCH_QUEUE_BACKOFF_MS.to_string());
    for kv in extra.split(';').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').expect("k=v");
        config.set(k, v);
    }
    let consumer: BaseConsumer = config.create().expect("consumer created");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(&data.topic, p, rdkafka::Offset::Beginning).expect("partition added");
    }
    consumer.assign(&tpl).expect("assigned");
    let expected = data.len() + partitions as usize;
    let (mut n, mut bytes) = (0usize, 0u64);
    let mut started = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    while n < expected && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                started.get_or_insert_with(Instant::now);
                n += 1;
                bytes += (m.key().map_or(0, <[u8]>::len) + m.payload().map_or(0, <[u8]>::len)) as u64;
            }
            Some(Err(e)) => eprintln!("  ceiling consumer: {e}"),
            None => {}
        }
    }
    assert_eq!(n, expected, "the ceiling consumer read the whole topic");
    // The first record's poll latency is not part of the rate.
    let elapsed = started.expect("records read").elapsed().as_secs_f64();
    Rate { events_per_s: (n - 1) as f64 / elapsed, bytes_per_s: bytes as f64 / elapsed }
}

// ---------------------------------------------------------------------------
// Compute ceiling and state size.

struct Compute {
    operator_events_per_s: f64,
    decode_operator_events_per_s: f64,
    results: Vec<(i32, WindowResult)>,
}

fn drivers(workload: Workload, partitions: i32, keep: bool) -> Vec<Driver> {
    let spec = support::spec(workload);
    (0..partitions).map(|_| Driver::new(&spec, keep)).collect()
}

fn compute_ceiling(workload: Workload, data: &DataSet, partitions: i32) -> Compute {
    let events: Vec<(usize, Event)> =
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
    let records: Vec<SourceRecord> =
        data.raws.iter().enumerate().map(|(i, r)| support::source_record(r, data.offset[i])).collect();
    let mut ds = drivers(workload, partitions, false);
    let started = Instant::now();
    for (i, r) in records.iter().enumerate() {
        let event = decoder.decode(r, 0).expect("valid record");
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

struct StateSize {
    bytes_per_window_key: f64,
    open_window_keys: usize,
}

/// Live heap bytes held by the operators over their open window-keys
/// (`WindowOperator::open_windows`: (key, window) pairs; for fixed windows
/// (key, pane) rows, one per (key, window) when tumbling), at the sample
/// with the most. Keys are allocated per event, as
/// the decoder does, so the state pays for the key copy it keeps.
fn state_size(workload: Workload, data: &DataSet, partitions: i32) -> StateSize {
    COUNTING.store(true, Ordering::SeqCst);
    let baseline = LIVE_BYTES.load(Ordering::SeqCst);
    let mut ds = drivers(workload, partitions, false);
    let mut best = StateSize { bytes_per_window_key: 0.0, open_window_keys: 0 };
    for (i, r) in data.raws.iter().enumerate() {
        let event = r.event(data.offset[i]);
        ds[data.partition[i] as usize].feed(&event);
        drop(event);
        if i % 1024 == 1023 {
            let open: usize = ds.iter().map(|d| d.operator.open_windows()).sum();
            if open > best.open_window_keys {
                let live = LIVE_BYTES.load(Ordering::SeqCst) - baseline;
                best = StateSize { bytes_per_window_key: live as f64 / open as f64, open_window_keys: open };
            }
        }
    }
    drop(ds);
    COUNTING.store(false, Ordering::SeqCst);
    best
}

/// W1 with many open window-keys at once: `keys` distinct keys in one
/// 10 s window (event time compressed), the state at that size.
fn state_stress(keys: usize) -> (f64, f64, usize) {
    let spec = support::spec(Workload::W1);
    COUNTING.store(true, Ordering::SeqCst);
    let baseline = LIVE_BYTES.load(Ordering::SeqCst);
    let mut d = Driver::new(&spec, false);
    let mut rng = StdRng::seed_from_u64(9);
    let started = Instant::now();
    for i in 0..keys {
        let raw = Raw {
            user: i as u32,
            ts: BASE_TS + 1_000 + (i as i64 * 8_000 / keys as i64),
            cents: rng.random_range(1..100_000),
            page: 0,
            country: 0,
        };
        d.feed(&raw.event(i as i64));
    }
    let rate = keys as f64 / started.elapsed().as_secs_f64();
    let open = d.operator.open_windows();
    let live = LIVE_BYTES.load(Ordering::SeqCst) - baseline;
    drop(d);
    COUNTING.store(false, Ordering::SeqCst);
    (rate, live as f64 / open as f64, open)
}

// ---------------------------------------------------------------------------
// Redis: slots, raw pipelines, counters.

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

fn key_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = match bytes.iter().position(|&b| b == b'{') {
        Some(open) => match bytes[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &bytes[open + 1..open + 1 + len],
            _ => bytes,
        },
        None => bytes,
    };
    crc16(hashed) % 16384
}

struct Redis {
    /// Primary port of each slot.
    slot_owner: Vec<u16>,
    primaries: Vec<u16>,
    connections: HashMap<u16, redis::aio::MultiplexedConnection>,
}

impl Redis {
    async fn connect(cluster: &redis_cluster::RedisCluster) -> Redis {
        let primaries = cluster.primary_ports();
        let mut connections = HashMap::new();
        for &port in &primaries {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("client");
            // No response timeout: a deep pipeline of scripts can take longer
            // than redis-rs' default 500 ms on a loaded machine.
            let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
            let con = client.get_multiplexed_async_connection_with_config(&config).await.expect("connection");
            connections.insert(port, con);
        }
        let mut any = connections.values().next().expect("a primary").clone();
        let slots: redis::Value =
            redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut any).await.expect("CLUSTER SLOTS");
        let mut slot_owner = vec![0u16; 16384];
        if let redis::Value::Array(ranges) = slots {
            for range in ranges {
                let redis::Value::Array(parts) = range else { continue };
                let int = |v: &redis::Value| match v {
                    redis::Value::Int(i) => *i,
                    _ => panic!("CLUSTER SLOTS: unexpected {v:?}"),
                };
                let (start, end) = (int(&parts[0]), int(&parts[1]));
                let redis::Value::Array(node) = &parts[2] else { panic!("CLUSTER SLOTS node") };
                let port = int(&node[1]) as u16;
                for s in start..=end {
                    slot_owner[s as usize] = port;
                }
            }
        }
        for con in connections.values_mut() {
            MERGE_FUNCTION.load().query_async::<redis::Value>(con).await.expect("FUNCTION LOAD");
        }
        Redis { slot_owner, primaries, connections }
    }

    async fn each_primary(&self, cmd: &redis::Cmd) -> Vec<String> {
        let mut out = Vec::new();
        for port in &self.primaries {
            let mut con = self.connections[port].clone();
            let v: redis::Value = cmd.query_async(&mut con).await.expect("command on a primary");
            out.push(match v {
                redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                redis::Value::VerbatimString { text, .. } => text,
                redis::Value::SimpleString(s) => s,
                redis::Value::Okay => "OK".into(),
                other => format!("{other:?}"),
            });
        }
        out
    }

    async fn flush_all(&self) {
        self.each_primary(&redis::cmd("FLUSHALL")).await;
    }

    async fn reset_stats(&self) {
        self.each_primary(redis::cmd("CONFIG").arg("RESETSTAT")).await;
    }

    /// Sum over primaries of `INFO` fields and `cmdstat_*` calls.
    async fn counters(&self) -> HashMap<String, u64> {
        let mut out: HashMap<String, u64> = HashMap::new();
        for info in self.each_primary(redis::cmd("INFO").arg("stats").arg("commandstats")).await {
            for line in info.lines() {
                let Some((name, value)) = line.trim().split_once(':') else { continue };
                if let Some(cmd) = name.strip_prefix("cmdstat_") {
                    let field =
                        |f: &str| value.split(',').find_map(|kv| kv.strip_prefix(f)).and_then(|v| v.parse().ok());
                    *out.entry(format!("calls_{cmd}")).or_default() += field("calls=").unwrap_or(0);
                    *out.entry(format!("usec_{cmd}")).or_default() += field("usec=").unwrap_or(0);
                } else if let Ok(v) = value.parse::<u64>() {
                    *out.entry(name.to_string()).or_default() += v;
                }
            }
        }
        out
    }

    /// Sends `commands` (key, packed command) to the primaries owning their
    /// keys as raw pipelines, `chunk` commands each, `inflight` pipelines
    /// per primary at once; returns entries/s.
    async fn pipelined(&self, commands: Vec<(String, redis::Cmd)>, chunk: usize, inflight: usize) -> f64 {
        let n = commands.len();
        let mut by_node: HashMap<u16, Vec<redis::Cmd>> = HashMap::new();
        for (key, cmd) in commands {
            by_node.entry(self.slot_owner[key_slot(&key) as usize]).or_default().push(cmd);
        }
        let errors = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let nodes = by_node.into_iter().map(|(port, cmds)| {
            let con = self.connections[&port].clone();
            let errors = errors.clone();
            async move {
                let pipes: Vec<redis::Pipeline> = cmds
                    .chunks(chunk)
                    .map(|c| {
                        let mut pipe = redis::pipe();
                        for cmd in c {
                            pipe.add_command(cmd.clone());
                        }
                        pipe
                    })
                    .collect();
                futures::stream::iter(pipes)
                    .map(|pipe| {
                        let mut con = con.clone();
                        let errors = errors.clone();
                        async move {
                            match pipe.query_async::<Vec<redis::Value>>(&mut con).await {
                                Ok(replies) => {
                                    let bad =
                                        replies.iter().filter(|v| matches!(v, redis::Value::ServerError(_))).count();
                                    errors.fetch_add(bad as u64, Ordering::Relaxed);
                                }
                                Err(e) => {
                                    eprintln!("  sink pipeline: {e}");
                                    errors.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    })
                    .buffer_unordered(inflight)
                    .collect::<Vec<()>>()
                    .await;
            }
        });
        futures::future::join_all(nodes).await;
        let elapsed = started.elapsed().as_secs_f64();
        let errors = errors.load(Ordering::Relaxed);
        assert_eq!(errors, 0, "sink ceiling: {errors} commands failed");
        n as f64 / elapsed
    }
}

struct Sink {
    merge_per_s: f64,
    hset_per_s: f64,
    /// Commands one `merge.lua` run issues (counted by Redis as calls too).
    inner_per_script: f64,
    /// Redis's own time per `merge.lua` run (commandstats usec/calls).
    script_us: f64,
    /// This harness's CPU per entry while pipelining the scripts (the
    /// client-side cost of a write done with raw per-node pipelines).
    client_us: f64,
}

/// Calls of every command but this harness's own INFO and CONFIG.
fn all_calls(counters: &HashMap<String, u64>) -> f64 {
    counters
        .iter()
        .filter(|(k, _)| k.starts_with("calls_") && !k.starts_with("calls_info") && !k.starts_with("calls_config"))
        .map(|(_, v)| *v as f64)
        .sum()
}

async fn sink_ceiling(
    redis: &Redis,
    workload: Workload,
    topic: &str,
    results: &[(i32, WindowResult)],
    opts: &Options,
) -> Sink {
    let config = support::pipeline_config(workload);
    let layout = compile::region_layout("rf", &config);
    let aggregates = compile::aggregates(&config);
    let spec = partial::aggregate_spec(aggregates.iter().map(|(f, n)| (*f, n.as_str())));
    let partitions = results.iter().map(|(p, _)| *p + 1).max().unwrap_or(1);
    let fields: Vec<Arc<str>> = (0..partitions).map(|p| regionflow::region::partial_field(topic, p).into()).collect();
    let writes: Vec<EntryWrite> =
        results.iter().map(|(p, r)| layout.write(r, &fields[*p as usize], 1, 1_000_000_000)).collect();
    let merges: Vec<(String, redis::Cmd)> = writes
        .iter()
        .map(|w| {
            let partial = partial::entry_partial(&w.accumulators, w.epoch, w.offset);
            let args = (&*w.field, w.epoch, w.offset, w.mode.as_arg(), partial, w.window.start, w.window.end);
            (w.key.clone(), MERGE_FUNCTION.call(&w.key, (args, "n", 0, &*spec)))
        })
        .collect();
    let hset: Vec<(String, redis::Cmd)> = writes
        .iter()
        .zip(results)
        .map(|(w, (_, r))| {
            let mut cmd = redis::cmd("HSET");
            cmd.arg(&w.key).arg("window_start").arg(w.window.start).arg("window_end").arg(w.window.end);
            for (name, acc) in ["count", "sum"].iter().zip(&r.accumulators) {
                cmd.arg(*name).arg(acc.render().unwrap_or_default());
            }
            (w.key.clone(), cmd)
        })
        .collect();
    drop(writes);
    redis.flush_all().await;
    redis.reset_stats().await;
    let cpu = cpu_seconds(std::process::id(), clock_ticks());
    let merge_per_s = redis.pipelined(merges, opts.sink_chunk, opts.sink_inflight).await;
    let client_us = (cpu_seconds(std::process::id(), clock_ticks()) - cpu) * 1e6 / results.len().max(1) as f64;
    let counters = redis.counters().await;
    let scripts = (counters.get("calls_fcall").copied().unwrap_or(0) as f64).max(1.0);
    let inner_per_script = (all_calls(&counters) - scripts) / scripts;
    let script_us = counters.get("usec_fcall").copied().unwrap_or(0) as f64 / scripts;
    redis.flush_all().await;
    let hset_per_s = redis.pipelined(hset, opts.sink_chunk, opts.sink_inflight).await;
    redis.flush_all().await;
    Sink { merge_per_s, hset_per_s, inner_per_script, script_us, client_us }
}

// ---------------------------------------------------------------------------
// The connector run.

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn scrape(port: u16) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

/// Sum of a metric's samples whose line contains every one of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// p-quantile of a Prometheus histogram, interpolated within its bucket
/// like `histogram_quantile`.
fn histogram_quantile(text: &str, name: &str, q: f64) -> Option<f64> {
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket{{")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    let total = buckets.last()?.1;
    if total == 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in &buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            return Some(prev.0 + (le - prev.0) * (rank - prev.1) / (count - prev.1).max(1e-9));
        }
        prev = (le, count);
    }
    None
}

struct ConnectorChild {
    child: Child,
    port: u16,
    report: PathBuf,
    _dir: tempfile::TempDir,
}

impl ConnectorChild {
    /// `live`: the live latency run's settings (see `support::settings_toml`);
    /// when set, the child also times each entry's last write, which costs a
    /// map entry per entry.
    fn start(
        workload: Workload,
        brokers: &str,
        redis_nodes: &[String],
        group: &str,
        topic: &str,
        live: Option<&support::Tuning<'_>>,
    ) -> ConnectorChild {
        let dir = tempfile::Builder::new().prefix("regionflow-bench-").tempdir().expect("temp dir");
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let toml = support::settings_toml(
            workload,
            &support::Endpoints { brokers, redis_nodes, group, topic, metrics_listen: &listen },
            live,
        );
        let config = dir.path().join("connector.toml");
        std::fs::write(&config, toml).expect("config written");
        let report = dir.path().join("report.txt");
        let child = Command::new(std::env::current_exe().expect("own executable"))
            .env("BENCH_ROLE", "connector")
            .env("BENCH_CONFIG", &config)
            .env("BENCH_REPORT", &report)
            .env("BENCH_PER_ENTRY", if live.is_some() { "1" } else { "" })
            .spawn()
            .expect("connector child started");
        ConnectorChild { child, port, report, _dir: dir }
    }

    fn metrics(&self) -> Option<String> {
        scrape(self.port)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the connector owns every partition.
    fn wait_ready(&mut self, partitions: i32) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("child status") {
                panic!("connector exited early: {status}");
            }
            if let Some(text) = self.metrics() {
                if metric(&text, "regionflow_partitions_owned", &[]) >= partitions as f64 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "connector did not take its partitions within 60s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, wait, and read the report.
    /// Tells the child that windows ending at or before `watermark` are
    /// closed (see `closed_by`).
    fn closed_by(&self, watermark: i64) {
        std::fs::write(self.report.with_extension("closed"), watermark.to_string()).expect("closed_by written");
    }

    fn stop(mut self) -> HashMap<String, String> {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait().expect("child status").is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.wait();
        std::fs::read_to_string(&self.report)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' ').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect()
    }
}

impl Drop for ConnectorChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[derive(Default)]
struct Run {
    events_per_s: f64,
    bytes_per_s: f64,
    entries_per_s: f64,
    seconds: f64,
    commands_per_event: f64,
    merges_per_event: f64,
    script_inner_per_event: f64,
    peak_rss: u64,
    cpu_us_per_event: f64,
    harness_cpu_us_per_event: f64,
    written: u64,
    note: String,
}

#[allow(clippy::too_many_arguments)]
async fn connector_run(
    redis: &Redis,
    workload: Workload,
    brokers: &str,
    redis_nodes: &[String],
    data: &DataSet,
    expected: u64,
    inner_per_script: f64,
    opts: &Options,
    ticks: f64,
) -> Run {
    redis.flush_all().await;
    let group = format!("bench-{}-{}", workload.name(), data.topic);
    let mut child = ConnectorChild::start(workload, brokers, redis_nodes, &group, &data.topic, None);
    let pid = child.pid();
    // BENCH_PROFILE_DIR: sample the connector with `perf record` while it
    // runs; with BENCH_PROFILE_SYSTEM=1 every process on the machine (Redis,
    // the mock brokers, the connector), to see which one the time goes to.
    let mut perf = std::env::var("BENCH_PROFILE_DIR").ok().map(|dir| {
        let out = format!("{dir}/perf-{}-{}.data", workload.name(), data.name);
        let pid = pid.to_string();
        let target = match std::env::var("BENCH_PROFILE_SYSTEM").as_deref() {
            Ok("1") => vec!["-a", "-g"],
            _ => vec!["--call-graph", "dwarf,16384", "-p", &pid],
        };
        Command::new("perf")
            .args(["record", "-F", "499", "-o", &out])
            .args(target)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("perf record started")
    });
    let mut run = Run::default();
    // Records flow as soon as the group assigns the partitions; stats are
    // reset before that.
    redis.reset_stats().await;
    let region = format!("region=\"bench_{}\"", workload.name().to_ascii_lowercase());
    let deadline = Instant::now() + opts.run_timeout;
    let mut t0: Option<(Instant, i64, f64, f64)> = None;
    let mut last_text = String::new();
    loop {
        if let Some(status) = child.child.try_wait().expect("child status") {
            run.note = format!("connector exited: {status}");
            break;
        }
        let text = child.metrics().unwrap_or_default();
        let records = metric(&text, "regionflow_records_in_total", &[]);
        let applied = metric(&text, "regionflow_region_writes_total", &[&region, "outcome=\"applied\""]);
        if t0.is_none() && records > 0.0 {
            t0 = Some((Instant::now(), now_millis(), cpu_seconds(pid, ticks), cpu_seconds(std::process::id(), ticks)));
        }
        if !text.is_empty() {
            last_text = text;
        }
        if applied >= expected as f64 {
            break;
        }
        if Instant::now() > deadline {
            run.note = format!("timed out: {applied} of {expected} entries written");
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu_child = cpu_seconds(pid, ticks);
    let cpu_harness = cpu_seconds(std::process::id(), ticks);
    if let Some(mut perf) = perf.take() {
        let _ = Command::new("kill").arg("-INT").arg(perf.id().to_string()).status();
        let _ = perf.wait();
    }
    run.peak_rss = status_bytes(pid, "VmHWM:");
    let counters = redis.counters().await;
    let report = child.stop();
    if let Some(e) = report.get("error") {
        run.note = format!("{} connector error: {e}", run.note);
    }
    let Some((_, t0_ms, cpu0, harness0)) = t0 else {
        run.note = format!("{} no record consumed", run.note);
        return run;
    };
    let last_ack: i64 = report.get("last_ack_ms").and_then(|v| v.parse().ok()).unwrap_or(now_millis());
    let seconds = ((last_ack - t0_ms) as f64 / 1000.0).max(1e-3);
    let n = data.len() as f64;
    run.seconds = seconds;
    run.written = metric(&last_text, "regionflow_region_writes_total", &[&region, "outcome=\"applied\""]) as u64;
    run.events_per_s = n / seconds;
    run.bytes_per_s = metric(&last_text, "regionflow_bytes_in_total", &[]) / seconds;
    run.entries_per_s = run.written as f64 / seconds;
    run.cpu_us_per_event = (cpu_child - cpu0) * 1e6 / n;
    run.harness_cpu_us_per_event = (cpu_harness - harness0) * 1e6 / n;
    let get = |k: &str| *counters.get(k).unwrap_or(&0) as f64;
    // Commandstats also count the commands a script runs (`redis.call`);
    // the sink ceiling's EVALSHA-only run gives how many one merge runs, so
    // client commands are the rest (less this harness's INFO/CONFIG).
    let merges = get("calls_fcall");
    let inner = inner_per_script * merges;
    run.merges_per_event = merges / n;
    run.script_inner_per_event = inner / n;
    run.commands_per_event = (all_calls(&counters) - inner) / n;
    run
}

// ---------------------------------------------------------------------------
// Latency at half the maximum throughput.

struct Latency {
    rate: f64,
    seconds: u64,
    produced: u64,
    entries: u64,
    direct: HashMap<String, String>,
    histogram_p50: Option<f64>,
    histogram_p99: Option<f64>,
    note: String,
}

fn latency_run(
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
    };
    let mut child = ConnectorChild::start(Workload::W1, brokers, redis_nodes, "bench-latency", topic, Some(&tuning));
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
        let applied = metric(&text, "regionflow_region_writes_total", &["outcome=\"applied\""]);
        if applied != last.0 {
            last = (applied, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(2) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let hist = "regionflow_event_to_region_latency_seconds";
    let histogram_p50 = histogram_quantile(&text, hist, 0.5);
    let histogram_p99 = histogram_quantile(&text, hist, 0.99);
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

// ---------------------------------------------------------------------------
// Report.

struct Row {
    label: String,
    events: usize,
    source: Rate,
    compute: Compute,
    sink: Sink,
    entries: usize,
    run: Run,
    state: StateSize,
}

fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn pct(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.0}%", 100.0 * a / b)
    } else {
        "-".into()
    }
}

fn print_rows(rows: &[Row]) {
    println!();
    println!("== Throughput (events/s unless noted; ratio = end-to-end / ceiling) ==");
    println!(
        "{:<14} {:>7} {:>9} {:>8} | {:>9} {:>5} | {:>9} {:>9} {:>5} | {:>8} {:>9} {:>9} {:>9} {:>5}",
        "workload",
        "events",
        "e2e ev/s",
        "e2e MB/s",
        "source",
        "ratio",
        "operator",
        "dec+op",
        "ratio",
        "entries",
        "e2e ent/s",
        "merge FCALL/s",
        "HSET/s",
        "ratio"
    );
    for r in rows {
        println!(
            "{:<14} {:>7} {:>9} {:>8.1} | {:>9} {:>5} | {:>9} {:>9} {:>5} | {:>8} {:>9} {:>9} {:>9} {:>5}",
            r.label,
            si(r.events as f64),
            si(r.run.events_per_s),
            r.run.bytes_per_s / 1e6,
            si(r.source.events_per_s),
            pct(r.run.events_per_s, r.source.events_per_s),
            si(r.compute.operator_events_per_s),
            si(r.compute.decode_operator_events_per_s),
            pct(r.run.events_per_s, r.compute.operator_events_per_s),
            si(r.entries as f64),
            si(r.run.entries_per_s),
            si(r.sink.merge_per_s),
            si(r.sink.hset_per_s),
            pct(r.run.entries_per_s, r.sink.merge_per_s),
        );
    }
    println!();
    println!("== Cost per event ==");
    println!(
        "{:<14} {:>8} {:>10} {:>9} {:>9} {:>10} {:>11} {:>12} {:>10}  note",
        "workload", "run s", "cmds/ev", "FCALL", "in-function", "peak RSS", "state B/wk", "open w-keys", "CPU us/ev"
    );
    for r in rows {
        println!(
            "{:<14} {:>8.1} {:>10.3} {:>9.3} {:>9.2} {:>8.0}MB {:>11.0} {:>12} {:>5.2} (+{:.2})  {}",
            r.label,
            r.run.seconds,
            r.run.commands_per_event,
            r.run.merges_per_event,
            r.run.script_inner_per_event,
            r.run.peak_rss as f64 / 1048576.0,
            r.state.bytes_per_window_key,
            r.state.open_window_keys,
            r.run.cpu_us_per_event,
            r.run.harness_cpu_us_per_event,
            r.run.note
        );
    }
}

// ---------------------------------------------------------------------------

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':').map(|(_, v)| v.trim().to_string()))
        .unwrap_or_default();
    let mem = status_line("/proc/meminfo", "MemTotal:");
    format!("{} cores ({cpu}), {mem} RAM", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0))
}

fn status_line(path: &str, field: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| {
            let kb: f64 = l.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            format!("{:.1} GiB", kb / 1048576.0)
        })
        .unwrap_or_default()
}

fn main() {
    if std::env::var("BENCH_ROLE").as_deref() == Ok("connector") {
        connector_child();
        return;
    }
    let opts = Options::from_env();
    let ticks = clock_ticks();
    println!("regionflow end-to-end benchmark — {}", machine());
    println!("options: {opts:?}");
    let total = Instant::now();

    let redis_cluster = redis_cluster::RedisCluster::start();
    let redis_nodes = redis_cluster.urls();
    let mock = MockCluster::<DefaultProducerContext>::new(opts.brokers).expect("mock Kafka cluster");
    let brokers = mock.bootstrap_servers();
    println!("Redis Cluster: {} primaries; mock Kafka: {brokers}", redis_cluster.primary_ports().len());

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let redis = runtime.block_on(Redis::connect(&redis_cluster));

    let mut plans: Vec<(&'static str, u32, usize, Vec<Workload>)> = Vec::new();
    let main_workloads: Vec<Workload> =
        ["w1", "w3"].iter().filter(|w| opts.wants(w)).filter_map(|w| Workload::parse(w)).collect();
    if !main_workloads.is_empty() {
        plans.push(("100k", opts.keys, opts.events, main_workloads));
    }
    if opts.wants("w2") {
        // W2 writes ~4.5 entries per event (six windows per event, each
        // closing with ~45k keys); fewer events keep the run short.
        plans.push(("100k-w2", opts.keys, opts.w2_events, vec![Workload::W2]));
    }
    if opts.wants("w1-10m") {
        plans.push(("10m", opts.high_keys, opts.high_events, vec![Workload::W1]));
    }

    let mut rows = Vec::new();
    let mut live_partitions = None;
    for (name, keys, n, workloads) in plans {
        let topic = format!("bench-{name}");
        let data = DataSet::new(name, &topic, n, keys, opts.partitions, 42);
        let partitions = data.partitions;
        live_partitions.get_or_insert(partitions);
        mock.create_topic(&topic, partitions, 1).expect("topic created");
        println!(
            "\n[{name}] {n} events over {keys} keys, {} partitions, {:.1} MB of keys+values",
            partitions,
            data.bytes as f64 / 1e6
        );
        let produced = produce(&brokers, &data, partitions);
        println!("  produced at {}/s", si(produced));
        if let Ok(extra) = std::env::var("BENCH_SOURCE_DEBUG") {
            // Diagnostics for the source ceiling: repeated reads with extra
            // consumer properties (`k=v;k=v`).
            for i in 0..4 {
                let r = consume_with(&brokers, &data, partitions, 100 + i, &extra);
                println!("  debug read {i} [{extra}]: {}/s", si(r.events_per_s));
            }
            continue;
        }
        let source = consume_ceiling(&brokers, &data, partitions);
        println!("  source ceiling: {}/s, {:.1} MB/s", si(source.events_per_s), source.bytes_per_s / 1e6);
        for workload in workloads {
            let label = if data.name == "10m" {
                format!("{}-10M keys", workload.name())
            } else {
                format!("{} {}", workload.name(), workload.describe().split(' ').next().unwrap_or(""))
            };
            println!("  {label}:");
            let compute = compute_ceiling(workload, &data, partitions);
            println!(
                "    compute ceiling: operator {}/s, decode+operator {}/s; {} entries",
                si(compute.operator_events_per_s),
                si(compute.decode_operator_events_per_s),
                compute.results.len()
            );
            let entries = compute.results.len();
            let sink = runtime.block_on(sink_ceiling(&redis, workload, &topic, &compute.results, &opts));
            println!(
                "    sink ceiling: merge FCALL {}/s ({:.1} us of Redis time per merge function run, {:.1} us client CPU \
                 per entry), HSET {}/s",
                si(sink.merge_per_s),
                sink.script_us,
                sink.client_us,
                si(sink.hset_per_s)
            );
            let state = state_size(workload, &data, partitions);
            println!(
                "    state: {:.0} B per open window-key at {} open",
                state.bytes_per_window_key, state.open_window_keys
            );
            let run = runtime.block_on(connector_run(
                &redis,
                workload,
                &brokers,
                &redis_nodes,
                &data,
                entries as u64,
                sink.inner_per_script,
                &opts,
                ticks,
            ));
            println!(
                "    connector: {}/s ({:.1} s), {} entries written, peak RSS {:.0} MB, {:.2} CPU us/event {}",
                si(run.events_per_s),
                run.seconds,
                run.written,
                run.peak_rss as f64 / 1048576.0,
                run.cpu_us_per_event,
                run.note
            );
            rows.push(Row { label, events: n, source, compute, sink, entries, run, state });
        }
        // Free the data set's results before the next one.
        runtime.block_on(redis.flush_all());
    }

    let stress = (opts.stress_keys > 0).then(|| {
        println!("\n[stress] W1, {} keys in one window", opts.stress_keys);
        state_stress(opts.stress_keys)
    });

    let latency = if opts.wants("latency") {
        let w1 = rows.iter().find(|r| r.label.starts_with("W1 ")).map(|r| r.run.events_per_s);
        let rate = opts.latency_rate.or(w1.map(|r| r / 2.0)).unwrap_or(50_000.0);
        let topic = "bench-live";
        let partitions = live_partitions.unwrap_or(if opts.partitions > 0 { opts.partitions } else { 4 });
        mock.create_topic(topic, partitions, 1).expect("topic created");
        runtime.block_on(redis.flush_all());
        println!("\n[latency] W1 live at {}/s for {} s", si(rate), opts.latency_secs);
        Some(latency_run(&brokers, &redis_nodes, &opts, rate, topic, partitions))
    } else {
        None
    };

    print_rows(&rows);
    if let Some((rate, bytes, open)) = stress {
        println!();
        println!(
            "== State at scale: W1 operator with {} open window-keys: {:.0} B/window-key, {}/s ==",
            si(open as f64),
            bytes,
            si(rate)
        );
    }
    if let Some(l) = latency {
        let ms = |k: &str| l.direct.get(k).and_then(|v| v.parse::<f64>().ok());
        let fmt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0} ms"));
        let beyond = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.0} ms", v - DISORDER_MS as f64));
        println!();
        println!(
            "== Latency: W1 live at {}/s ({}) for {} s, emit = {}, flush_interval = {}, {} events, {} writes applied ==",
            si(l.rate),
            if opts.latency_rate.is_some() { "BENCH_LATENCY_RATE" } else { "half the W1 end-to-end rate" },
            l.seconds,
            opts.latency_emit.as_deref().unwrap_or(r#"{ mode = "final" }"#),
            opts.latency_flush.as_deref().unwrap_or("default"),
            l.produced,
            l.entries
        );
        println!(
"window end → the entry's last write acknowledged (0 when before the end): p50 {}, p90 {}, p99 {}, max {} ({} entries)",
            fmt(ms("latency_p50_ms")),
            fmt(ms("latency_p90_ms")),
            fmt(ms("latency_p99_ms")),
            fmt(ms("latency_max_ms")),
            l.direct.get("latency_count").cloned().unwrap_or_default()
        );
        println!(
            "beyond the window's own wait ({DISORDER_MS} ms out-of-orderness): p50 {}, p99 {}",
            beyond(ms("latency_p50_ms")),
            beyond(ms("latency_p99_ms"))
        );
        println!(
            "connector histogram regionflow_event_to_region_latency_seconds (bucketed): p50 {}, p99 {} {}",
            fmt(l.histogram_p50.map(|s| s * 1000.0)),
            fmt(l.histogram_p99.map(|s| s * 1000.0)),
            l.note
        );
    }
    println!("\ntotal {:.0} s", total.elapsed().as_secs_f64());
    drop(redis);
    drop(runtime);
    drop(mock);
    drop(redis_cluster);
}
