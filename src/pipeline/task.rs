//! One partition's task: decode, watermark, window, write, checkpoint.
//!
//! The task receives batches of records over a bounded channel (the Kafka
//! source waits when it is full, which is the backpressure), runs them
//! through its [`WindowOperator`], and every `flush_interval` (or when
//! enough results are pending) writes the results to the region and awaits
//! the dead letters. Every `checkpoint_interval`, and when it stops, it
//! flushes, then stores a checkpoint (next offset, watermark, window state)
//! under its epoch; only then does it move the partition's committed Kafka
//! offset, which is informational.
//!
//! On start it takes a new epoch and restores the last checkpoint, and the
//! source seeks the partition to the checkpoint's offset. Each write carries
//! the source position it was produced at, so replayed results never
//! overwrite newer ones, and the epoch, so a zombie's writes are refused.
//! Its log lines carry the span `task{pipeline, topic, partition}` (set by
//! the connector). A task that finds itself fenced stops quietly: its
//! successor owns the partition. It fails, and stops the connector, on a
//! bad record under `errors.tolerance = "none"`, or when Redis stays
//! unavailable past the write deadline. It fails and is restarted from its checkpoint (see
//! [`TaskError::restartable`]) when replication of its writes since the
//! last checkpoint cannot be verified.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use futures::future::try_join_all;
use prometheus::{Gauge, IntCounter, IntGauge};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Pipeline;
use crate::checkpoint::{encode, Checkpoint, CheckpointError, CommitOutcome, Replication, TaskId};
use crate::config::LateAction;
use crate::region::{partial_field, EntryWrite, RegionError, WriteMode};
use crate::source::dead_letter::Origin;
use crate::source::decode::{DecodeError, SourceRecord, Stage};
use crate::time::{now_millis, Millis, WatermarkTracker};
use crate::window::{Accepted, ResultKind, WindowOperator, WindowResult};

/// What a task asks of its partition's source.
pub struct PartitionSource {
    /// Moves the partition's committed offset (informational: lag monitoring).
    pub commit: Box<dyn Fn(i64) + Send + Sync>,
    /// The partition's high watermark from the latest client statistics, when known.
    pub high_watermark: Box<dyn Fn() -> Option<i64> + Send + Sync>,
}

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
    #[error("{task}: {source}")]
    Checkpoint {
        task: TaskId,
        #[source]
        source: CheckpointError,
    },
    #[error(
        "{task}: the checkpoint was written for {stored}, but the pipeline now is {current}; \
         window state cannot carry over: reset it deliberately with `regionflow checkpoints reset --pipeline {pipeline}`",
        pipeline = task.pipeline
    )]
    IncompatibleState { task: TaskId, stored: String, current: String },
    #[error(
        "{task}: the Redis connection was replaced (failover) while results since the last checkpoint were in \
         flight; WAIT cannot vouch for them, so the task restarts from the last checkpoint and replays"
    )]
    ReplicationUnverifiable { task: TaskId },
}

impl TaskError {
    /// Whether restarting the partition from its last checkpoint, in this
    /// process, is the cure: the failure concerns only the results since
    /// that checkpoint, which a replay writes again. Everything else stops
    /// the connector.
    pub fn restartable(&self) -> bool {
        matches!(self, TaskError::ReplicationUnverifiable { .. })
    }
}

/// Whether the task still owns its partition after a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ownership {
    Owner,
    /// A newer epoch wrote: stop without touching anything else.
    Fenced,
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
    bytes_out: IntCounter,
    /// Created once the lag is known (see [`consumer_lag`]), so the series
    /// never shows a guess.
    consumer_lag: Option<IntGauge>,
    open_windows: IntGauge,
    watermark_lag: Gauge,
    checkpoint_age: Gauge,
}

pub struct PartitionTask {
    pipeline: Arc<Pipeline>,
    id: TaskId,
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
    source: PartitionSource,
    metrics: TaskMetrics,
    last_update: Instant,
    last_checkpoint: Instant,
    /// Records processed or results written since the last checkpoint.
    changed_since_checkpoint: bool,
    /// The region connection's generation at the first write since the
    /// last checkpoint.
    writes_generation: Option<u64>,
    /// Set until the first record after the start: for the recovery time.
    assigned_at: Option<Instant>,
}

/// A started task and where its partition must be read from.
pub struct Started {
    pub task: PartitionTask,
    /// The checkpoint's offset; `None` means the group's committed offset.
    pub seek_to: Option<i64>,
}

impl PartitionTask {
    /// Prepares the task for a newly assigned partition: takes a new
    /// ownership epoch and restores the partition's last checkpoint.
    pub async fn start(
        pipeline: Arc<Pipeline>,
        topic: &str,
        partition: i32,
        source: PartitionSource,
    ) -> Result<Started, TaskError> {
        let assigned_at = Instant::now();
        let id = TaskId { pipeline: pipeline.name.to_string(), topic: topic.to_string(), partition };
        let checkpoint_error = |source| TaskError::Checkpoint { task: id.clone(), source };
        let epoch = pipeline.checkpoints.acquire(&id).await.map_err(checkpoint_error)?;
        let checkpoint = pipeline.checkpoints.load(&id).await.map_err(checkpoint_error)?;
        let (out_of_orderness, idle_timeout) = if pipeline.processing_time() {
            (std::time::Duration::ZERO, std::time::Duration::ZERO)
        } else {
            (pipeline.config.watermark.max_out_of_orderness, pipeline.config.watermark.idle_timeout)
        };
        let mut watermark = WatermarkTracker::new(out_of_orderness, idle_timeout);
        let mut operator = WindowOperator::new(pipeline.window.clone());
        let m = &pipeline.metrics;
        let seek_to = match checkpoint {
            Some(checkpoint) => {
                let corrupt =
                    |message: String| checkpoint_error(CheckpointError::Corrupt { task: id.to_string(), message });
                let state = encode::decode(&checkpoint.state).map_err(|e| corrupt(e.to_string()))?;
                if state.fingerprint != operator.fingerprint() {
                    return Err(TaskError::IncompatibleState {
                        task: id,
                        stored: state.fingerprint,
                        current: operator.fingerprint(),
                    });
                }
                operator = WindowOperator::restore(pipeline.window.clone(), state.operator)
                    .ok_or_else(|| corrupt("window kind of the state does not match".into()))?;
                watermark.restore(checkpoint.watermark, state.max_seen, now_millis());
                m.partition_takeovers.with_label_values(&[&*pipeline.name, "checkpoint"]).inc();
                tracing::info!(
                    epoch,
                    offset = checkpoint.offset,
                    watermark = checkpoint.watermark,
                    open_windows = operator.open_windows(),
                    "restored from checkpoint"
                );
                Some(checkpoint.offset)
            }
            None => {
                m.partition_takeovers.with_label_values(&[&*pipeline.name, "fresh"]).inc();
                tracing::info!(epoch, "no checkpoint: starting from the group's committed offset");
                None
            }
        };
        let partition_label = partition.to_string();
        let ptp = [&*pipeline.name, topic, &partition_label];
        let metrics = TaskMetrics {
            records_in: m.records_in.with_label_values(&[&*pipeline.name, topic]),
            bytes_in: m.bytes_in.with_label_values(&[&*pipeline.name, topic]),
            bytes_out: m.bytes_out.with_label_values(&[&*pipeline.name]),
            consumer_lag: None,
            open_windows: m.open_windows.with_label_values(&ptp),
            watermark_lag: m.watermark_lag.with_label_values(&ptp),
            checkpoint_age: m.checkpoint_age.with_label_values(&ptp),
        };
        metrics.open_windows.set(operator.open_windows() as i64);
        let task = PartitionTask {
            operator,
            watermark,
            field: partial_field(topic, partition).into(),
            id,
            topic: topic.into(),
            partition,
            epoch,
            pending: Vec::new(),
            dead_letters: Vec::new(),
            next_offset: seek_to,
            source,
            metrics,
            last_update: Instant::now(),
            last_checkpoint: Instant::now(),
            changed_since_checkpoint: false,
            writes_generation: None,
            assigned_at: Some(assigned_at),
            pipeline,
        };
        Ok(Started { task, seek_to })
    }

    /// Runs until the channel closes (then flushes and checkpoints), the
    /// task finds itself fenced, or `cancel` fires (then stops at once,
    /// leaving unflushed results to replay).
    pub async fn run(
        mut self,
        mut records: mpsc::Receiver<Vec<SourceRecord>>,
        cancel: CancellationToken,
    ) -> Result<(), TaskError> {
        let mut tick = tokio::time::interval(self.pipeline.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = async {
            loop {
                // The tick before the records: a queue that never empties
                // (a backlog, a slow sink) must not starve flushes and
                // checkpoints. It is ready once per flush interval.
                let ownership = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Ok(Ownership::Owner),
                    _ = tick.tick() => {
                        self.on_tick();
                        if self.last_checkpoint.elapsed() >= self.pipeline.checkpoint_interval {
                            self.checkpoint().await?
                        } else {
                            self.flush().await?
                        }
                    }
                    batch = records.recv() => match batch {
                        Some(batch) => {
                            self.process(batch)?;
                            if self.pending.len() >= self.pipeline.max_pending_results {
                                self.flush().await?
                            } else {
                                Ownership::Owner
                            }
                        }
                        None => break,
                    },
                };
                if ownership == Ownership::Fenced {
                    return Ok(Ownership::Fenced);
                }
            }
            self.checkpoint().await
        }
        .await;
        self.remove_partition_series();
        match &result {
            Ok(Ownership::Owner) => {
                tracing::info!(next_offset = self.next_offset, "partition task stopped")
            }
            Ok(Ownership::Fenced) => {
                tracing::warn!(epoch = self.epoch, "fenced by a newer owner: partition task stopped")
            }
            Err(e) => tracing::error!(error = %e, "partition task failed"),
        }
        result.map(|_| ())
    }

    fn process(&mut self, batch: Vec<SourceRecord>) -> Result<(), TaskError> {
        let now = now_millis();
        let bytes: usize = batch.iter().map(SourceRecord::size).sum();
        self.metrics.records_in.inc_by(batch.len() as u64);
        self.metrics.bytes_in.inc_by(bytes as u64);
        for record in batch {
            self.process_record(record, now)?;
        }
        self.update_consumer_lag();
        Ok(())
    }

    fn process_record(&mut self, record: SourceRecord, now: Millis) -> Result<(), TaskError> {
        if self.next_offset.is_some_and(|next| record.offset < next) {
            // Already in the restored state (fetched before the seek).
            return Ok(());
        }
        if let Some(assigned_at) = self.assigned_at.take() {
            let m = &self.pipeline.metrics;
            m.recovery_duration.with_label_values(&[&*self.pipeline.name]).observe(assigned_at.elapsed().as_secs_f64());
        }
        self.changed_since_checkpoint = true;
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
            self.take_operator_results(position);
        }
        Ok(())
    }

    /// Moves the operator's results to the pending ones, stamped with the
    /// source position, and counts the windows that fired with nothing to
    /// write (their final value already written as an update).
    fn take_operator_results(&mut self, position: i64) {
        self.pending.extend(self.operator.take_results().into_iter().map(|r| (r, position)));
        let unchanged = self.operator.take_unchanged_finals();
        if unchanged > 0 {
            self.pipeline.metrics.windows_fired.with_label_values(&[&*self.pipeline.name, "final"]).inc_by(unchanged);
        }
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
        tracing::debug!(offset = record.offset, error = %error, "bad record to dead letters");
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
        } else if self.caught_up() {
            self.watermark.on_idle(now)
        } else {
            // Records are waiting (in Kafka or in our queue): the partition is
            // not quiet, the pipeline is behind. Restart the idle clock.
            self.watermark.touch(now);
            self.watermark.current()
        };
        self.operator.advance(watermark);
        if let Some(interval) = self.pipeline.update_interval() {
            if self.last_update.elapsed() >= interval {
                self.last_update = Instant::now();
                self.operator.emit_updates();
            }
        }
        self.take_operator_results(self.next_offset.unwrap_or(0));
        self.metrics.open_windows.set(self.operator.open_windows() as i64);
        self.metrics.checkpoint_age.set(self.last_checkpoint.elapsed().as_secs_f64());
        self.update_consumer_lag();
        if watermark > Millis::MIN {
            self.metrics.watermark_lag.set((now - watermark) as f64 / 1000.0);
        }
    }

    /// Whether every record the partition had when last fetched is processed.
    fn caught_up(&self) -> bool {
        consumer_lag((self.source.high_watermark)(), self.next_offset) == Some(0)
    }

    fn update_consumer_lag(&mut self) {
        let Some(lag) = consumer_lag((self.source.high_watermark)(), self.next_offset) else { return };
        let gauge = self.metrics.consumer_lag.get_or_insert_with(|| {
            let partition = self.partition.to_string();
            self.pipeline.metrics.consumer_lag.with_label_values(&[&*self.pipeline.name, &*self.topic, &partition])
        });
        gauge.set(lag);
    }

    /// Writes pending results and dead letters.
    async fn flush(&mut self) -> Result<Ownership, TaskError> {
        let started = Instant::now();
        self.send_dead_letters().await?;
        let mut ownership = Ownership::Owner;
        if !self.pending.is_empty() {
            self.changed_since_checkpoint = true;
            self.writes_generation.get_or_insert(self.pipeline.region.connection_generation());
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
            self.metrics.bytes_out.inc_by(writes.iter().map(EntryWrite::payload_bytes).sum::<usize>() as u64);
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
                tracing::warn!(
                    epoch = self.epoch,
                    fenced = outcome.fenced,
                    "writes fenced: a newer owner holds this partition"
                );
                ownership = Ownership::Fenced;
            }
            self.record_fired();
        }
        self.pipeline.metrics.flush_duration.observe(started.elapsed().as_secs_f64());
        Ok(ownership)
    }

    /// Flushes, then stores the checkpoint (waiting for replicas when the
    /// region asks for redundancy), then moves the committed Kafka offset.
    async fn checkpoint(&mut self) -> Result<Ownership, TaskError> {
        if self.flush().await? == Ownership::Fenced {
            return Ok(Ownership::Fenced);
        }
        let Some(offset) = self.next_offset else { return Ok(Ownership::Owner) };
        self.last_checkpoint = Instant::now();
        if !self.changed_since_checkpoint {
            self.metrics.checkpoint_age.set(0.0);
            return Ok(Ownership::Owner);
        }
        let started = Instant::now();
        let state = encode::encode(&encode::TaskState {
            fingerprint: self.operator.fingerprint(),
            max_seen: self.watermark.max_seen(),
            operator: self.operator.snapshot(),
        });
        let checkpoint = Checkpoint {
            epoch: self.epoch,
            offset,
            watermark: self.watermark.current(),
            state,
            written_at: now_millis(),
        };
        let m = &self.pipeline.metrics;
        let name = &*self.pipeline.name;
        let replication =
            Replication { replicas: self.pipeline.config.region.redundancy, writes_generation: self.writes_generation };
        match self.pipeline.checkpoints.commit(&self.id, &checkpoint, replication).await {
            Ok(CommitOutcome::Stored) => {
                m.checkpoints.with_label_values(&[name, "ok"]).inc();
                m.checkpoint_duration.with_label_values(&[name]).observe(started.elapsed().as_secs_f64());
                m.checkpoint_bytes.with_label_values(&[name]).observe(checkpoint.state.len() as f64);
                m.checkpoint_bytes_total.with_label_values(&[name]).inc_by(checkpoint.state.len() as u64);
                self.metrics.checkpoint_age.set(0.0);
                self.changed_since_checkpoint = false;
                self.writes_generation = None;
                (self.source.commit)(offset);
                Ok(Ownership::Owner)
            }
            Ok(CommitOutcome::Fenced) => {
                m.checkpoints.with_label_values(&[name, "fenced"]).inc();
                Ok(Ownership::Fenced)
            }
            Err(CheckpointError::ReplicationUnverifiable) => {
                m.checkpoints.with_label_values(&[name, "failed"]).inc();
                Err(TaskError::ReplicationUnverifiable { task: self.id.clone() })
            }
            Err(e @ CheckpointError::NotReplicated { .. }) => {
                m.checkpoints.with_label_values(&[name, "failed"]).inc();
                tracing::warn!(error = %e, "checkpoint postponed");
                Ok(Ownership::Owner)
            }
            Err(source) => {
                m.checkpoints.with_label_values(&[name, "failed"]).inc();
                Err(TaskError::Checkpoint { task: self.id.clone(), source })
            }
        }
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
        let _ = m.checkpoint_age.remove_label_values(&labels);
        let _ = m.consumer_lag.remove_label_values(&labels);
    }
}

/// Records the partition holds beyond the task's position: its high
/// watermark (from the client's statistics) minus the next offset to
/// process. Never negative, since the statistics trail the task by up to
/// their interval. `None` while unknown: no statistics yet, or no record
/// seen and no checkpoint (the start offset is the group's committed one,
/// which the task does not know), unless the partition is empty.
fn consumer_lag(high_watermark: Option<i64>, next_offset: Option<i64>) -> Option<i64> {
    match (high_watermark, next_offset) {
        (Some(high), Some(next)) => Some((high - next).max(0)),
        (Some(0), None) => Some(0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::consumer_lag;

    #[test]
    fn consumer_lag_is_high_watermark_minus_next_offset_once_both_are_known() {
        assert_eq!(consumer_lag(Some(100), Some(40)), Some(60));
        assert_eq!(consumer_lag(Some(100), Some(100)), Some(0), "caught up");
        assert_eq!(consumer_lag(Some(90), Some(100)), Some(0), "statistics older than the task's position");
        assert_eq!(consumer_lag(Some(0), None), Some(0), "an empty partition");
        assert_eq!(consumer_lag(Some(5), None), None, "start offset not known yet");
        assert_eq!(consumer_lag(None, Some(7)), None, "no statistics yet");
    }
}
