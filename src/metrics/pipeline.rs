//! Typed recording: the handles one pipeline (and one partition, and one
//! Redis region) records through, resolved once, so that the label strings
//! live here and nowhere else.

use std::time::Duration;

use prometheus::{Gauge, Histogram, IntCounter, IntGauge};

use super::Metrics;
use crate::window::{LateAction, ResultKind};

/// Where a task's checkpoint attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointOutcome {
    Ok,
    Failed,
    Fenced,
}

impl CheckpointOutcome {
    const ALL: [CheckpointOutcome; 3] = [CheckpointOutcome::Ok, CheckpointOutcome::Failed, CheckpointOutcome::Fenced];

    fn as_str(self) -> &'static str {
        match self {
            CheckpointOutcome::Ok => "ok",
            CheckpointOutcome::Failed => "failed",
            CheckpointOutcome::Fenced => "fenced",
        }
    }
}

/// How a task found its partition's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoredFrom {
    Checkpoint,
    Fresh,
}

const STAGES: [&str; 6] = ["size", "parse", "key", "event_time", "aggregate", "late"];
const FIRED: [(ResultKind, &str); 4] = [
    (ResultKind::Final, "final"),
    (ResultKind::Update, "update"),
    (ResultKind::Retract, "retract"),
    (ResultKind::Amend, "amend"),
];

/// One pipeline's series. Creating it creates them at zero, so dashboards
/// and alerts see them (and `rate()` works) before the first event.
#[derive(Clone)]
pub struct PipelineMetrics {
    metrics: std::sync::Arc<Metrics>,
    name: String,
    region: String,
    records_out: IntCounter,
    bytes_out: IntCounter,
    fenced_writes: IntCounter,
    latency: Histogram,
    partitions_owned: IntGauge,
    recovery: Histogram,
    checkpoint_duration: Histogram,
    checkpoint_bytes: Histogram,
    checkpoint_bytes_total: IntCounter,
    flush_duration: Histogram,
    task_failures: IntCounter,
    offset_gap_records: IntCounter,
    changes_published: IntCounter,
    change_publish_failures: IntCounter,
    change_publish_retries: IntCounter,
    changes_pending: IntGauge,
}

impl Metrics {
    /// The series of pipeline `name`, writing region `region`.
    pub fn pipeline(self: &std::sync::Arc<Self>, name: &str, region: &str, topics: &[String]) -> PipelineMetrics {
        for topic in topics {
            self.records_in.with_label_values(&[name, topic]);
            self.bytes_in.with_label_values(&[name, topic]);
        }
        for stage in STAGES {
            if stage != "late" {
                self.decode_failures.with_label_values(&[name, stage]);
            }
            self.dlq_records.with_label_values(&[name, stage]);
        }
        for action in [LateAction::Drop, LateAction::DeadLetter, LateAction::Amend] {
            self.late_records.with_label_values(&[name, action.as_str()]);
        }
        for (_, kind) in FIRED {
            self.windows_fired.with_label_values(&[name, kind]);
        }
        for outcome in ["applied", "fenced", "stale"] {
            self.region_writes.with_label_values(&[region, outcome]);
        }
        for outcome in CheckpointOutcome::ALL {
            self.checkpoints.with_label_values(&[name, outcome.as_str()]);
        }
        for from in ["checkpoint", "fresh"] {
            self.partition_takeovers.with_label_values(&[name, from]);
        }
        for kind in ["assign", "revoke"] {
            self.rebalances.with_label_values(&[kind]);
        }
        self.kafka_errors.with_label_values(&["consumer"]);
        PipelineMetrics {
            name: name.to_string(),
            region: region.to_string(),
            records_out: self.records_out.with_label_values(&[name, region]),
            bytes_out: self.bytes_out.with_label_values(&[name]),
            fenced_writes: self.fenced_writes.with_label_values(&[name]),
            latency: self.event_to_region_latency.with_label_values(&[name]),
            partitions_owned: self.partitions_owned.with_label_values(&[name]),
            recovery: self.recovery_duration.with_label_values(&[name]),
            checkpoint_duration: self.checkpoint_duration.with_label_values(&[name]),
            checkpoint_bytes: self.checkpoint_bytes.with_label_values(&[name]),
            checkpoint_bytes_total: self.checkpoint_bytes_total.with_label_values(&[name]),
            flush_duration: self.flush_duration.clone(),
            task_failures: self.task_failures.clone(),
            offset_gap_records: self.offset_gap_records.with_label_values(&[name]),
            changes_published: self.changes_published.with_label_values(&[name, region]),
            change_publish_failures: self.change_publish_failures.with_label_values(&[name, region]),
            change_publish_retries: self.change_publish_retries.with_label_values(&[name, region]),
            changes_pending: self.changes_pending.with_label_values(&[name, region]),
            metrics: self.clone(),
        }
    }
}

impl PipelineMetrics {
    /// The series of one partition of the pipeline.
    pub fn partition(&self, topic: &str, partition: i32) -> PartitionMetrics {
        let m = &self.metrics;
        let partition_label = partition.to_string();
        let ptp = [&*self.name, topic, &partition_label];
        PartitionMetrics {
            records_in: m.records_in.with_label_values(&[&*self.name, topic]),
            bytes_in: m.bytes_in.with_label_values(&[&*self.name, topic]),
            consumer_lag: None,
            open_windows: m.open_windows.with_label_values(&ptp),
            watermark_lag: m.watermark_lag.with_label_values(&ptp),
            checkpoint_age: m.checkpoint_age.with_label_values(&ptp),
            labels: [self.name.clone(), topic.to_string(), partition_label],
            metrics: m.clone(),
        }
    }

    /// Changes handed to the feed's producer.
    pub fn changes_enqueued(&self, n: u64) {
        self.changes_pending.add(n as i64);
    }

    /// Changes that settled: `acknowledged` of `settled` were, the rest failed.
    pub fn changes_settled(&self, settled: u64, acknowledged: u64) {
        self.changes_pending.sub(settled as i64);
        self.changes_published.inc_by(acknowledged);
        self.change_publish_failures.inc_by(settled - acknowledged);
    }

    /// Changes a stopping task no longer waits for.
    pub fn changes_abandoned(&self, n: u64) {
        self.changes_pending.sub(n as i64);
    }

    pub fn change_publish_retried(&self) {
        self.change_publish_retries.inc();
    }

    pub fn decode_failure(&self, stage: &str) {
        self.metrics.decode_failures.with_label_values(&[&*self.name, stage]).inc();
    }

    pub fn dead_letters(&self, stage: &str, n: u64) {
        self.metrics.dlq_records.with_label_values(&[&*self.name, stage]).inc_by(n);
    }

    pub fn late(&self, action: LateAction) {
        self.metrics.late_records.with_label_values(&[&*self.name, action.as_str()]).inc();
    }

    /// Windows fired, by result kind.
    pub fn fired(&self, kind: ResultKind, n: u64) {
        if n > 0 {
            let label = FIRED.iter().find(|(k, _)| *k == kind).map(|(_, l)| *l).expect("every kind has a label");
            self.metrics.windows_fired.with_label_values(&[&*self.name, label]).inc_by(n);
        }
    }

    /// From a window's end to its result acknowledged by the region.
    pub fn event_to_region(&self, seconds: f64) {
        self.latency.observe(seconds);
    }

    /// What the region did with a batch.
    pub fn region_writes(&self, applied: u64, fenced: u64, stale: u64, bytes: u64) {
        self.records_out.inc_by(applied);
        self.bytes_out.inc_by(bytes);
        for (outcome, n) in [("applied", applied), ("fenced", fenced), ("stale", stale)] {
            if n > 0 {
                self.metrics.region_writes.with_label_values(&[&*self.region, outcome]).inc_by(n);
            }
        }
        if fenced > 0 {
            self.fenced_writes.inc_by(fenced);
        }
    }

    pub fn flushed(&self, took: Duration) {
        self.flush_duration.observe(took.as_secs_f64());
    }

    pub fn checkpoint(&self, outcome: CheckpointOutcome) {
        self.metrics.checkpoints.with_label_values(&[&*self.name, outcome.as_str()]).inc();
    }

    pub fn checkpoint_stored(&self, took: Duration, bytes: usize) {
        self.checkpoint(CheckpointOutcome::Ok);
        self.checkpoint_duration.observe(took.as_secs_f64());
        self.checkpoint_bytes.observe(bytes as f64);
        self.checkpoint_bytes_total.inc_by(bytes as u64);
    }

    pub fn takeover(&self, from: RestoredFrom) {
        let label = match from {
            RestoredFrom::Checkpoint => "checkpoint",
            RestoredFrom::Fresh => "fresh",
        };
        self.metrics.partition_takeovers.with_label_values(&[&*self.name, label]).inc();
    }

    /// From assignment to the first record processed after restore.
    pub fn recovered(&self, took: Duration) {
        self.recovery.observe(took.as_secs_f64());
    }

    /// The gauge of partitions this connector owns for the pipeline.
    pub fn partitions_owned(&self) -> IntGauge {
        self.partitions_owned.clone()
    }

    /// Records deleted from a partition before they were processed.
    pub fn offset_gap(&self, records: u64) {
        self.offset_gap_records.inc_by(records);
    }

    /// Counts a task that stopped on an error.
    pub fn task_failed(&self) {
        self.task_failures.inc();
    }
}

/// One partition's series; removed when its task stops.
pub struct PartitionMetrics {
    metrics: std::sync::Arc<Metrics>,
    labels: [String; 3],
    pub records_in: IntCounter,
    pub bytes_in: IntCounter,
    /// Created once the lag is known, so the series never shows a guess.
    consumer_lag: Option<IntGauge>,
    pub open_windows: IntGauge,
    pub watermark_lag: Gauge,
    pub checkpoint_age: Gauge,
}

impl PartitionMetrics {
    pub fn consumer_lag(&mut self, lag: i64) {
        let (metrics, labels) = (&self.metrics, &self.labels);
        let gauge = self
            .consumer_lag
            .get_or_insert_with(|| metrics.consumer_lag.with_label_values(&[&*labels[0], &*labels[1], &*labels[2]]));
        gauge.set(lag);
    }

    /// Removes the partition's series (its task stopped).
    pub fn remove(&self) {
        let labels = [&*self.labels[0], &*self.labels[1], &*self.labels[2]];
        let m = &self.metrics;
        let _ = m.open_windows.remove_label_values(&labels);
        let _ = m.watermark_lag.remove_label_values(&labels);
        let _ = m.checkpoint_age.remove_label_values(&labels);
        let _ = m.consumer_lag.remove_label_values(&labels);
    }
}

/// The `redis_*` series of one region, recorded by the Redis region writer
/// (an in-memory region records none).
#[derive(Clone)]
pub struct RedisRegionMetrics {
    pub write_duration: Histogram,
    write_errors: IntCounter,
    retries: IntCounter,
    ok: IntCounter,
    retried: IntCounter,
    failed: IntCounter,
    failovers: IntCounter,
}

impl Metrics {
    /// The series of region `region` written to Redis, created at zero.
    pub fn redis_region(&self, region: &str) -> RedisRegionMetrics {
        let op = |outcome: &str| self.redis_operations.with_label_values(&[region, outcome]);
        RedisRegionMetrics {
            write_duration: self.redis_write_duration.with_label_values(&[region]),
            write_errors: self.redis_errors.with_label_values(&[region, "write"]),
            retries: self.redis_retries.with_label_values(&[region]),
            ok: op("ok"),
            retried: op("retried"),
            failed: op("failed"),
            failovers: self.redis_failovers.with_label_values(&[region]),
        }
    }
}

impl RedisRegionMetrics {
    /// A batch written: its entry writes, and the commands retried on the way.
    pub fn written(&self, writes: u64, retried: u64) {
        self.ok.inc_by(writes);
        if retried > 0 {
            self.retries.inc_by(retried);
            self.retried.inc_by(retried);
            self.failovers.inc();
        }
    }

    pub fn failed(&self) {
        self.write_errors.inc();
        self.failed.inc();
    }
}
