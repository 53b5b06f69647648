//! `BENCH_ROLE=connector`: this binary re-executed as the connector under
//! measurement, doing what `regionflow run` does with its regions wrapped to
//! timestamp every acknowledged entry write. It writes a small report for
//! the harness (`crate::connector`) when it stops.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::FutureExt;
use regionflow::config::Settings;
use regionflow::metrics::{Health, Metrics};
use regionflow::region::{EntryWrite, Region, RegionError, WriteMode, WriteOutcome};
use regionflow::time::now_millis;
use tokio_util::sync::CancellationToken;

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
/// (`app::redis_sinks` + `connector::run`), with the regions timed; writes a small report to `BENCH_REPORT` on exit.
pub fn connector_child() {
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
