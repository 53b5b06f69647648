//! One partition's task: decode, watermark, window, write.
//!
//! The task receives batches of records over a bounded channel (the Kafka
//! source waits when it is full, which is the backpressure), runs them
//! through its [`WindowOperator`], and every `flush_interval` (or when
//! enough results are pending) writes the results to the region, awaits
//! the dead letters, and only then moves the partition's committed offset.
//! The committed offset is the lowest offset still held in window state, so
//! a restart rebuilds open windows by replay; each write carries the source
//! position it was produced at and the region skips positions it has
//! already passed, so replayed results never overwrite newer ones.
//!
//! The task ends when its channel closes (revoke, shutdown): it flushes
//! first. It fails, and stops the connector, on a bad record under
//! `errors.tolerance = "none"`, or when the region stays unwritable past
//! the write deadline.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use futures::future::try_join_all;
use prometheus::{Gauge, IntCounter, IntGauge};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Pipeline;
use crate::config::LateAction;
use crate::region::{partial_field, EntryWrite, RegionError, WriteMode};
use crate::source::dead_letter::Origin;
use crate::source::decode::{DecodeError, SourceRecord, Stage};
use crate::time::{now_millis, Millis, WatermarkTracker};
use crate::window::{Accepted, ResultKind, WindowOperator, WindowResult};

/// Moves the partition's committed offset (the next record to read after a restart).
pub type CommitOffset = Box<dyn Fn(i64) + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error(
        "bad record at {topic}[{partition}]@{offset}, {error}; with errors.tolerance = \"none\" the connector stops: \
         fix the producer, or set errors.tolerance = \"all\" and errors.deadletterqueue_topic_name"
    )]
    BadRecord { topic: String, partition: i32, offset: i64, error: DecodeError },
    #[error("{topic}[{partition}]: region write failed: {source}")]
    Region {
        topic: String,
        partition: i32,
        #[source]
        source: RegionError,
    },
    #[error("{topic}[{partition}]: dead-letter topic {dlq} is not writable: {message}")]
    DeadLetter { topic: String, partition: i32, dlq: String, message: String },
}

/// A running task, as the source sees it.
pub struct TaskHandle {
    pub records: mpsc::Sender<Vec<SourceRecord>>,
    pub join: tokio::task::JoinHandle<()>,
}

struct DeadLetter {
    record: SourceRecord,
    stage: &'static str,
    reason: String,
}

/// Metric handles resolved once for this task's labels.
struct TaskMetrics {
    records_in: IntCounter,
    bytes_in: IntCounter,
    open_windows: IntGauge,
    watermark_lag: Gauge,
}

pub struct PartitionTask {
    pipeline: Arc<Pipeline>,
    topic: Arc<str>,
    partition: i32,
    field: Arc<str>,
    epoch: u64,
    operator: WindowOperator,
    watermark: WatermarkTracker,
    /// Results with the source position they were produced at.
    pending: Vec<(WindowResult, i64)>,
    dead_letters: Vec<DeadLetter>,
    next_offset: Option<i64>,
    commit: CommitOffset,
    metrics: TaskMetrics,
    last_update: Instant,
}

impl PartitionTask {
    /// Prepares the task for a newly assigned partition: takes a new
    /// ownership epoch from the region.
    pub async fn start(
        pipeline: Arc<Pipeline>,
        topic: &str,
        partition: i32,
        commit: CommitOffset,
    ) -> Result<PartitionTask, TaskError> {
        let scope = format!("{}{topic}:{partition}", pipeline.epoch_prefix);
        let epoch = pipeline.region.next_epoch(&scope).await.map_err(|source| TaskError::Region {
            topic: topic.into(),
            partition,
            source,
        })?;
        let (out_of_orderness, idle_timeout) = if pipeline.processing_time() {
            (std::time::Duration::ZERO, std::time::Duration::ZERO)
        } else {
            (pipeline.config.watermark.max_out_of_orderness, pipeline.config.watermark.idle_timeout)
        };
        let m = &pipeline.metrics;
        let partition_label = partition.to_string();
        let ptp = [&*pipeline.name, topic, &partition_label];
        let metrics = TaskMetrics {
            records_in: m.records_in.with_label_values(&[&*pipeline.name, topic]),
            bytes_in: m.bytes_in.with_label_values(&[&*pipeline.name, topic]),
            open_windows: m.open_windows.with_label_values(&ptp),
            watermark_lag: m.watermark_lag.with_label_values(&ptp),
        };
        tracing::info!(pipeline = %pipeline.name, topic, partition, epoch, "partition task started");
        Ok(PartitionTask {
            operator: WindowOperator::new(pipeline.window.clone()),
            watermark: WatermarkTracker::new(out_of_orderness, idle_timeout),
            field: partial_field(topic, partition).into(),
            topic: topic.into(),
            partition,
            epoch,
            pending: Vec::new(),
            dead_letters: Vec::new(),
            next_offset: None,
            commit,
            metrics,
            last_update: Instant::now(),
            pipeline,
        })
    }

    /// Runs until the channel closes (then flushes) or `cancel` fires (then
    /// stops at once, leaving unflushed results to replay).
    pub async fn run(
        mut self,
        mut records: mpsc::Receiver<Vec<SourceRecord>>,
        cancel: CancellationToken,
    ) -> Result<(), TaskError> {
        let mut tick = tokio::time::interval(self.pipeline.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = async {
            loop {
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Ok(()),
                    batch = records.recv() => match batch {
                        Some(batch) => {
                            self.process(batch)?;
                            if self.pending.len() >= self.pipeline.max_pending_results {
                                self.flush().await?;
                            }
                        }
                        None => break,
                    },
                    _ = tick.tick() => {
                        self.on_tick();
                        self.flush().await?;
                    }
                }
            }
            self.flush().await
        }
        .await;
        self.remove_partition_series();
        match &result {
            Ok(()) => {
                tracing::info!(pipeline = %self.pipeline.name, topic = %self.topic, partition = self.partition, "partition task stopped")
            }
            Err(e) => {
                tracing::error!(pipeline = %self.pipeline.name, topic = %self.topic, partition = self.partition, error = %e, "partition task failed")
            }
        }
        result
    }

    fn process(&mut self, batch: Vec<SourceRecord>) -> Result<(), TaskError> {
        let now = now_millis();
        let bytes: usize = batch.iter().map(SourceRecord::size).sum();
        self.metrics.records_in.inc_by(batch.len() as u64);
        self.metrics.bytes_in.inc_by(bytes as u64);
        for record in batch {
            self.process_record(record, now)?;
        }
        Ok(())
    }

    fn process_record(&mut self, record: SourceRecord, now: Millis) -> Result<(), TaskError> {
        let position = record.offset + 1;
        self.next_offset = Some(position);
        let event = match self.pipeline.decoder.decode(&record, now) {
            Ok(event) => event,
            Err(error) => return self.reject(record, error),
        };
        let before = self.watermark.current();
        if self.pipeline.config.late_records == LateAction::Amend {
            // Windows of the record already purged take it in the region.
            let amendments = self.operator.amendments(&event, before);
            self.pending.extend(amendments.into_iter().map(|r| (r, position)));
        }
        if self.operator.process(&event, before) == Accepted::Late {
            self.on_late(&event, record);
        }
        let watermark = self.watermark.observe(event.time, now);
        if watermark > before {
            self.operator.advance(watermark);
        }
        if self.operator.pending_results() > 0 {
            self.pending.extend(self.operator.take_results().into_iter().map(|r| (r, position)));
        }
        Ok(())
    }

    fn reject(&mut self, record: SourceRecord, error: DecodeError) -> Result<(), TaskError> {
        let m = &self.pipeline.metrics;
        m.decode_failures.with_label_values(&[&*self.pipeline.name, error.stage.as_str()]).inc();
        if !self.pipeline.tolerates_errors() {
            return Err(TaskError::BadRecord {
                topic: self.topic.to_string(),
                partition: self.partition,
                offset: record.offset,
                error,
            });
        }
        tracing::debug!(pipeline = %self.pipeline.name, topic = %self.topic, partition = self.partition, offset = record.offset, error = %error, "bad record to dead letters");
        // An oversize record would likely be refused by the dead-letter
        // topic too: keep its headers, drop its body.
        let record = if error.stage == Stage::Size { SourceRecord { payload: None, ..record } } else { record };
        self.dead_letters.push(DeadLetter { record, stage: error.stage.as_str(), reason: error.reason });
        Ok(())
    }

    fn on_late(&mut self, event: &crate::window::Event, record: SourceRecord) {
        let action = self.pipeline.config.late_records;
        let label = match action {
            LateAction::Drop => "drop",
            LateAction::DeadLetter => "dead_letter",
            LateAction::Amend => "amend",
        };
        self.pipeline.metrics.late_records.with_label_values(&[&*self.pipeline.name, label]).inc();
        match action {
            LateAction::Drop | LateAction::Amend => {}
            LateAction::DeadLetter => self.dead_letters.push(DeadLetter {
                reason: format!(
                    "late: event time {} is behind watermark {} by more than the allowed lateness",
                    event.time,
                    self.watermark.current()
                ),
                record,
                stage: "late",
            }),
        }
    }

    fn on_tick(&mut self) {
        let now = now_millis();
        let watermark = if self.pipeline.processing_time() {
            self.watermark.observe(now, now)
        } else {
            self.watermark.on_idle(now)
        };
        self.operator.advance(watermark);
        if let Some(interval) = self.pipeline.update_interval() {
            if self.last_update.elapsed() >= interval {
                self.last_update = Instant::now();
                self.operator.emit_updates();
            }
        }
        let position = self.next_offset.unwrap_or(0);
        self.pending.extend(self.operator.take_results().into_iter().map(|r| (r, position)));
        self.metrics.open_windows.set(self.operator.open_windows() as i64);
        if watermark > Millis::MIN {
            self.metrics.watermark_lag.set((now - watermark) as f64 / 1000.0);
        }
    }

    /// Writes pending results and dead letters, then moves the committed offset.
    async fn flush(&mut self) -> Result<(), TaskError> {
        let started = Instant::now();
        self.send_dead_letters().await?;
        if !self.pending.is_empty() {
            let writes = self.entry_writes();
            let region_name = &self.pipeline.config.region.name;
            let m = &self.pipeline.metrics;
            let timer = m.redis_write_duration.with_label_values(&[region_name]).start_timer();
            let outcome = self.pipeline.region.write(&writes).await.map_err(|source| {
                m.redis_errors.with_label_values(&[region_name, "write"]).inc();
                m.redis_operations.with_label_values(&[region_name, "failed"]).inc();
                TaskError::Region { topic: self.topic.to_string(), partition: self.partition, source }
            })?;
            timer.observe_duration();
            m.redis_operations.with_label_values(&[region_name, "ok"]).inc_by(writes.len() as u64);
            if outcome.retried > 0 {
                m.redis_retries.with_label_values(&[region_name]).inc_by(outcome.retried);
                m.redis_operations.with_label_values(&[region_name, "retried"]).inc_by(outcome.retried);
                m.redis_failovers.with_label_values(&[region_name]).inc();
                tracing::warn!(region = %region_name, retried = outcome.retried, "Redis errors ridden through; writes succeeded");
            }
            m.records_out.with_label_values(&[&*self.pipeline.name, region_name]).inc_by(outcome.applied);
            for (outcome_label, n) in
                [("applied", outcome.applied), ("fenced", outcome.fenced), ("stale", outcome.stale)]
            {
                if n > 0 {
                    m.region_writes.with_label_values(&[region_name, outcome_label]).inc_by(n);
                }
            }
            if outcome.fenced > 0 {
                m.fenced_writes.with_label_values(&[&*self.pipeline.name]).inc_by(outcome.fenced);
                tracing::warn!(topic = %self.topic, partition = self.partition, epoch = self.epoch, fenced = outcome.fenced, "writes fenced: a newer owner holds this partition");
            }
            self.record_fired();
        }
        if let Some(next) = self.next_offset {
            let safe = self.operator.min_offset().map_or(next, |held| held.min(next));
            (self.commit)(safe);
        }
        self.pipeline.metrics.flush_duration.observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// The flush's writes, grouped by entry with each entry's writes in
    /// production order (the region applies one entry's writes in order).
    /// Within an entry, a replace or delete supersedes the replace or delete
    /// just before it, so a busy window costs one write per flush.
    fn entry_writes(&self) -> Vec<EntryWrite> {
        let mut by_entry: Vec<Vec<EntryWrite>> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for (result, position) in &self.pending {
            let write = self.pipeline.layout.write(result, &self.field, self.epoch, *position);
            let i = *index.entry(write.key.clone()).or_insert_with(|| {
                by_entry.push(Vec::new());
                by_entry.len() - 1
            });
            let writes = &mut by_entry[i];
            match writes.last_mut() {
                Some(last) if last.mode != WriteMode::Merge && write.mode != WriteMode::Merge => *last = write,
                _ => writes.push(write),
            }
        }
        by_entry.into_iter().flatten().collect()
    }

    fn record_fired(&mut self) {
        let m = &self.pipeline.metrics;
        let name = &*self.pipeline.name;
        let now = now_millis();
        let latency = m.event_to_region_latency.with_label_values(&[name]);
        let mut counts = [0u64; 4];
        for (result, _) in self.pending.drain(..) {
            let i = match result.kind {
                ResultKind::Final => {
                    latency.observe(((now - result.window.end).max(0)) as f64 / 1000.0);
                    0
                }
                ResultKind::Update => 1,
                ResultKind::Retract => 2,
                ResultKind::Amend => 3,
            };
            counts[i] += 1;
        }
        for (kind, n) in ["final", "update", "retract", "amend"].iter().zip(counts) {
            if n > 0 {
                m.windows_fired.with_label_values(&[name, kind]).inc_by(n);
            }
        }
    }

    async fn send_dead_letters(&mut self) -> Result<(), TaskError> {
        if self.dead_letters.is_empty() {
            return Ok(());
        }
        let letters = std::mem::take(&mut self.dead_letters);
        let m = &self.pipeline.metrics;
        let Some(dlq) = &self.pipeline.dead_letters else {
            // Tolerated without a dead-letter topic: counted and logged only.
            return Ok(());
        };
        let origin = Origin { topic: &self.topic, partition: self.partition };
        try_join_all(letters.iter().map(|l| dlq.send(&origin, &l.record, l.stage, &l.reason))).await.map_err(|e| {
            TaskError::DeadLetter {
                topic: self.topic.to_string(),
                partition: self.partition,
                dlq: dlq.topic().to_string(),
                message: e.to_string(),
            }
        })?;
        for l in &letters {
            m.dlq_records.with_label_values(&[&*self.pipeline.name, l.stage]).inc();
        }
        Ok(())
    }

    fn remove_partition_series(&self) {
        let m = &self.pipeline.metrics;
        let partition = self.partition.to_string();
        let labels = [&*self.pipeline.name, &*self.topic, &partition];
        let _ = m.open_windows.remove_label_values(&labels);
        let _ = m.watermark_lag.remove_label_values(&labels);
    }
}
