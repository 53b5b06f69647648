//! The embedded quick-start: the production connector with embedded
//! endpoints.
//!
//! It starts librdkafka's mock cluster (a Kafka-protocol broker in process,
//! on a real TCP port), a page-view generator, and runs
//! [`crate::connector::run`] on `config/quickstart.toml` with an in-memory
//! region in place of Redis, printing a live summary (with the region's
//! change feed, read back from the embedded broker) and serving `/metrics`.

mod generator;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::FutureProducer;
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::metrics::{Health, Metrics};
use crate::region::MemoryRegion;

pub use generator::{produce, PageViews};

pub const QUICKSTART_CONFIG: &str = include_str!("../../config/quickstart.toml");

pub struct Options {
    pub rate: u64,
    pub metrics_listen: SocketAddr,
}

pub async fn run(options: Options, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut settings = Settings::from_toml_str(QUICKSTART_CONFIG).context("config/quickstart.toml")?;
    // The embedded broker lives as long as the process: clients the
    // connector built (the change feed's producer) may be dropped a moment
    // after the connector returns, and would log the broker's shutdown as
    // "all brokers down" errors.
    let mock: &'static MockCluster<'static, _> =
        Box::leak(Box::new(MockCluster::new(1).context("starting the embedded Kafka-protocol broker")?));
    let mut feeds = Vec::new();
    for pipeline in settings.pipelines.values() {
        let feed = pipeline.region.changes.as_ref().map(|changes| changes.topic.clone());
        let outputs = pipeline.dead_letter_topic().map(String::from).into_iter().chain(feed.clone());
        for topic in pipeline.topics.iter().cloned().chain(outputs) {
            mock.create_topic(&topic, 4, 1).with_context(|| format!("creating topic {topic}"))?;
        }
        feeds.extend(feed);
    }
    settings.kafka.brokers = mock.bootstrap_servers();
    settings.metrics.listen = options.metrics_listen;

    let (sinks, memory) = crate::app::memory_sinks(&settings);

    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let addr = crate::metrics::serve(settings.metrics.listen, metrics.clone(), health.clone(), shutdown.clone())
        .await
        .with_context(|| format!("cannot listen on {} (pass --metrics-listen)", settings.metrics.listen))?;
    println!("regionflow quick-start: embedded broker at {}, metrics at http://{addr}/metrics", settings.kafka.brokers);
    println!("Ctrl-C stops it gracefully.\n");

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka.brokers)
        .set("linger.ms", "10")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .context("creating the generator's producer")?;
    let generator_stop = shutdown.child_token();
    let generator =
        tokio::spawn(generator::produce(producer, "pageviews".into(), options.rate, generator_stop.clone()));
    let latest_change = Arc::new(Mutex::new(None));
    let tail =
        tokio::spawn(tail_changes(settings.kafka.brokers.clone(), feeds, latest_change.clone(), shutdown.clone()));
    let summary = tokio::spawn(print_summaries(metrics.clone(), memory, latest_change, shutdown.clone()));

    let result = crate::connector::run(settings, sinks, metrics.clone(), health, shutdown.clone()).await;
    generator_stop.cancel();
    shutdown.cancel();
    let _ = generator.await;
    let _ = summary.await;
    let _ = tail.await;
    result.context("connector failed")?;
    Ok(())
}

fn counter_sum(metrics: &Metrics, name: &str) -> f64 {
    let text = metrics.render();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The most recent message of the change feeds, as text.
type LatestChange = Arc<Mutex<Option<String>>>;

/// Reads the change feeds as a downstream consumer would, keeping the
/// latest change for the summary.
async fn tail_changes(brokers: String, topics: Vec<String>, latest: LatestChange, stop: CancellationToken) {
    if topics.is_empty() {
        return;
    }
    let consumer: StreamConsumer = match ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "regionflow-quickstart-feed-reader")
        .set("auto.offset.reset", "earliest")
        .create()
    {
        Ok(consumer) => consumer,
        Err(e) => return eprintln!("the change feed reader could not start: {e}"),
    };
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    if let Err(e) = consumer.subscribe(&topics) {
        return eprintln!("the change feed reader could not subscribe: {e}");
    }
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => break,
            message = consumer.recv() => message,
        };
        if let Ok(message) = message {
            let text = match message.payload() {
                Some(value) => String::from_utf8_lossy(value).into_owned(),
                None => format!("tombstone for {}", String::from_utf8_lossy(message.key().unwrap_or_default())),
            };
            *latest.lock().expect("latest change lock") = Some(text);
        }
    }
}

async fn print_summaries(
    metrics: Arc<Metrics>,
    regions: Vec<(String, Arc<MemoryRegion>)>,
    latest_change: LatestChange,
    stop: CancellationToken,
) {
    let started = Instant::now();
    let mut last = (0.0, Instant::now());
    let mut last_changes = 0.0;
    let mut tick = tokio::time::interval(Duration::from_secs(3));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let records = counter_sum(&metrics, "regionflow_records_in_total");
        let rate = (records - last.0) / last.1.elapsed().as_secs_f64();
        let elapsed = last.1.elapsed().as_secs_f64();
        last = (records, Instant::now());
        let changes = counter_sum(&metrics, "regionflow_changes_published_total");
        let change_rate = (changes - last_changes) / elapsed;
        last_changes = changes;
        println!(
            "[{:>4}s] in: {records:.0} records ({rate:.0}/s) | windows fired: {:.0} | late: {:.0} | dead letters: {:.0}",
            started.elapsed().as_secs(),
            counter_sum(&metrics, "regionflow_windows_fired_total"),
            counter_sum(&metrics, "regionflow_late_records_total"),
            counter_sum(&metrics, "regionflow_dlq_records_total"),
        );
        println!("  change feed: {changes:.0} changes published ({change_rate:.0}/s)");
        if let Some(change) = latest_change.lock().expect("latest change lock").as_deref() {
            println!("    latest: {change}");
        }
        for (name, region) in &regions {
            let entries = region.snapshot();
            println!("  region for pipeline `{name}`: {} entries; latest windows, busiest pages:", entries.len());
            let latest = entries.iter().filter_map(|(_, f)| f.get("window_start")).max().cloned();
            let mut top: Vec<_> = entries.iter().filter(|(_, f)| f.get("window_start") == latest.as_ref()).collect();
            top.sort_by_key(|(_, f)| {
                std::cmp::Reverse(f.get("views").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0))
            });
            for (key, fields) in top.iter().take(3) {
                let fields: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!("    HGETALL {key} → {}", fields.join(" "));
            }
        }
    }
}
