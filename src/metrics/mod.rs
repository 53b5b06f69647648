//! Metrics: every `regionflow_*` series, defined in this one place.
//!
//! One [`Metrics`] per connector owns its own registry (no globals), so
//! several connectors can live in one process (tests, the quick-start).
//! Names use base units and `_total` on counters; labels are bounded:
//! pipeline, topic, partition, region, stage, action, outcome.

mod pipeline;
mod server;

pub use pipeline::{CheckpointOutcome, PartitionMetrics, PipelineMetrics, RedisRegionMetrics, RestoredFrom};
pub use server::{serve, Health, HEADER_READ_TIMEOUT, MAX_CONNECTIONS};

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub records_in: IntCounterVec,
    pub bytes_in: IntCounterVec,
    pub records_out: IntCounterVec,
    pub bytes_out: IntCounterVec,
    pub decode_failures: IntCounterVec,
    pub dlq_records: IntCounterVec,
    pub late_records: IntCounterVec,
    pub windows_fired: IntCounterVec,
    pub open_windows: IntGaugeVec,
    pub watermark_lag: GaugeVec,
    pub consumer_lag: IntGaugeVec,
    pub redis_write_duration: HistogramVec,
    pub redis_errors: IntCounterVec,
    pub redis_retries: IntCounterVec,
    pub region_writes: IntCounterVec,
    pub fenced_writes: IntCounterVec,
    pub partitions_owned: IntGaugeVec,
    pub rebalances: IntCounterVec,
    pub event_to_region_latency: HistogramVec,
    pub build_info: IntGaugeVec,
    pub flush_duration: Histogram,
    pub checkpoint_duration: HistogramVec,
    pub checkpoint_bytes: HistogramVec,
    pub checkpoint_bytes_total: IntCounterVec,
    pub checkpoints: IntCounterVec,
    pub checkpoint_age: GaugeVec,
    pub partition_takeovers: IntCounterVec,
    pub recovery_duration: HistogramVec,
    pub redis_operations: IntCounterVec,
    pub redis_failovers: IntCounterVec,
    pub kafka_errors: IntCounterVec,
    pub up: IntGauge,
    pub task_failures: IntCounter,
    pub offset_gap_records: IntCounterVec,
    pub changes_published: IntCounterVec,
    pub change_publish_failures: IntCounterVec,
    pub change_publish_retries: IntCounterVec,
    pub changes_pending: IntGaugeVec,
}

fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry.register(Box::new(metric.clone())).expect("metric registered once");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition"))
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(registry, IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition"))
}

/// A gauge of fractional values (seconds).
fn gauge_f64(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    register(registry, GaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition"))
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets);
    register(registry, HistogramVec::new(opts, labels).expect("valid metric definition"))
}

const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let p = &["pipeline"];
        let pt = &["pipeline", "topic"];
        let ptp = &["pipeline", "topic", "partition"];
        let metrics = Metrics {
            records_in: counter(&r, "regionflow_records_in_total", "Records consumed from Kafka.", pt),
            bytes_in: counter(&r, "regionflow_bytes_in_total", "Key and value bytes consumed from Kafka.", pt),
            records_out: counter(
                &r,
                "regionflow_records_out_total",
                "Window results written to a region.",
                &["pipeline", "region"],
            ),
            bytes_out: counter(
                &r,
                "regionflow_bytes_out_total",
                "Bytes of entry writes sent to the region (key, partial field and partial value).",
                p,
            ),
            decode_failures: counter(
                &r,
                "regionflow_decode_failures_total",
                "Records that could not be decoded, by stage.",
                &["pipeline", "stage"],
            ),
            dlq_records: counter(
                &r,
                "regionflow_dlq_records_total",
                "Records sent to the dead-letter topic, by stage.",
                &["pipeline", "stage"],
            ),
            late_records: counter(
                &r,
                "regionflow_late_records_total",
                "Records past their windows' allowed lateness, by action.",
                &["pipeline", "action"],
            ),
            windows_fired: counter(
                &r,
                "regionflow_windows_fired_total",
                "Window results produced, by kind (final, update, retract, amend).",
                &["pipeline", "kind"],
            ),
            open_windows: gauge(&r, "regionflow_open_windows", "(key, window) pairs held in state; for fixed windows, (key, pane) rows.", ptp),
            watermark_lag: gauge_f64(
                &r,
                "regionflow_watermark_lag_seconds",
                "Wall clock minus the partition's watermark.",
                ptp,
            ),
            consumer_lag: gauge(
                &r,
                "regionflow_consumer_lag_records",
                "The partition's high watermark minus the task's next offset (records behind).",
                ptp,
            ),
            redis_write_duration: histogram(
                &r,
                "regionflow_redis_write_duration_seconds",
                "Time to write one batch of entries to the region.",
                &["region"],
                LATENCY_BUCKETS.to_vec(),
            ),
            redis_errors: counter(
                &r,
                "regionflow_redis_errors_total",
                "Region writes that failed for good, by kind.",
                &["region", "kind"],
            ),
            redis_retries: counter(
                &r,
                "regionflow_redis_retries_total",
                "Redis commands retried after a transient error.",
                &["region"],
            ),
            region_writes: counter(
                &r,
                "regionflow_region_writes_total",
                "Entry writes by outcome (applied, fenced, stale).",
                &["region", "outcome"],
            ),
            fenced_writes: counter(
                &r,
                "regionflow_fenced_writes_total",
                "Entry writes refused because a newer owner holds the partition.",
                p,
            ),
            partitions_owned: gauge(&r, "regionflow_partitions_owned", "Kafka partitions this connector owns.", p),
            rebalances: counter(
                &r,
                "regionflow_rebalances_total",
                "Consumer-group rebalance events, by kind (assign, revoke).",
                &["kind"],
            ),
            event_to_region_latency: histogram(
                &r,
                "regionflow_event_to_region_latency_seconds",
                "From a window's end (event time) to its result acknowledged by the region.",
                p,
                vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0],
            ),
            build_info: gauge(&r, "regionflow_build_info", "Always 1; labels carry the version.", &["version"]),
            flush_duration: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "regionflow_flush_duration_seconds",
                        "Time for a task to flush results and dead letters.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                )
                .expect("valid metric definition"),
            ),
            checkpoint_duration: histogram(&r, "regionflow_checkpoint_duration_seconds", "Time to store one task checkpoint (after its results are acknowledged).", p, LATENCY_BUCKETS.to_vec()),
            checkpoint_bytes: histogram(&r, "regionflow_checkpoint_size_bytes", "Size of one stored checkpoint.", p, prometheus::exponential_buckets(64.0, 4.0, 12).expect("valid buckets")),
            checkpoint_bytes_total: counter(&r, "regionflow_checkpoint_bytes_total", "Checkpoint bytes stored (state sync volume).", p),
            checkpoints: counter(&r, "regionflow_checkpoints_total", "Checkpoints by outcome (ok, failed, fenced).", &["pipeline", "outcome"]),
            checkpoint_age: gauge_f64(&r, "regionflow_checkpoint_age_seconds", "Time since the partition's last stored checkpoint.", ptp),
            partition_takeovers: counter(&r, "regionflow_partition_takeovers_total", "Partitions assigned to this connector and restored, by source (checkpoint, fresh).", &["pipeline", "restored_from"]),
            recovery_duration: histogram(&r, "regionflow_recovery_duration_seconds", "From partition assignment to its first record processed after restore.", p, vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
            redis_operations: counter(&r, "regionflow_redis_operations_total", "Redis operations (entry writes, checkpoints, epochs) by outcome (ok, retried, failed); failover rate = retried+failed over all.", &["region", "outcome"]),
            redis_failovers: counter(&r, "regionflow_redis_failovers_total", "Periods of failing Redis operations ridden through until writes succeeded again.", &["region"]),
            kafka_errors: counter(&r, "regionflow_kafka_errors_total", "Errors reported by the Kafka client (it retries them).", &["kind"]),
            up: register(&r, IntGauge::new("regionflow_up", "1 while the connector runs.").expect("valid metric definition")),
            task_failures: register(
                &r,
                IntCounter::new("regionflow_task_failures_total", "Partition tasks that stopped on an error.")
                    .expect("valid metric definition"),
            ),
            offset_gap_records: counter(&r, "regionflow_offset_gap_records_total", "Records deleted from a partition (retention) before they were processed.", &["pipeline"]),
            changes_published: counter(&r, "regionflow_changes_published_total", "Region entry changes acknowledged by the change feed's topic.", &["pipeline", "region"]),
            change_publish_failures: counter(&r, "regionflow_change_publish_failures_total", "Change feed publications that failed (the task restarts from its checkpoint and publishes again).", &["pipeline", "region"]),
            change_publish_retries: counter(&r, "regionflow_change_publish_retries_total", "Change feed publications retried because the producer's queue was full.", &["pipeline", "region"]),
            changes_pending: gauge(&r, "regionflow_change_feed_pending", "Changes applied in Redis whose publication Kafka has not acknowledged yet (the feed's lag).", &["pipeline", "region"]),
            registry: r,
        };
        // The standard process_* series: CPU seconds, resident and virtual
        // memory, open and maximum file descriptors, start time.
        let process = prometheus::process_collector::ProcessCollector::for_self();
        metrics.registry.register(Box::new(process)).expect("process collector registered once");
        metrics.build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        metrics.up.set(1);
        metrics
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding never fails");
        String::from_utf8(out).expect("Prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
