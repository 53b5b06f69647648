//! One partition's task: decode, watermark, window, write, checkpoint.
//!
//! The task's concerns each have a file: [`restore`] (epoch, checkpoint,
//! start offset), [`process`] (records and ticks through the decoder,
//! watermark and operator; dead letters and late records), [`commit`]
//! (flushes to the region, the change feed, checkpoints) and [`ledger`]
//! (session entries written since the last checkpoint). This file holds the
//! task's state and its run loop.
//!
//! The task receives batches of records over a bounded channel (the Kafka
//! source waits when it is full, which is the backpressure), runs them
//! through its [`WindowOperator`], and every `flush_interval` (or when
//! enough results are pending) writes the results to the region, queues
//! the region's changes on the change feed, and awaits the dead letters.
//! Every `checkpoint_interval`, and when it stops, it flushes, awaits the
//! feed's acknowledgements, then stores a checkpoint (next offset,
//! watermark, window state) under its epoch; only then does it move the
//! partition's committed Kafka offset, which is informational.
//!
//! On start it takes a new epoch and restores the last checkpoint, and the
//! source seeks the partition to the checkpoint's offset. Each write carries
//! the source position it was produced at, so replayed results never
//! overwrite newer ones, and the epoch, so a zombie's writes are refused.
//! Its log lines carry the span `task{pipeline, topic, partition}` (set by
//! the connector). A task that finds itself fenced fails loudly and is
//! restarted with a new epoch (see [`TaskError::restartable`]), as it is
//! when replication of its writes since the last checkpoint cannot be
//! verified or the change feed cannot be written. It fails, and stops the
//! connector, on a bad record under `errors.tolerance = "none"`, or when
//! Redis stays unavailable past the write deadline.

mod commit;
mod ledger;
mod process;
mod restore;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use futures::FutureExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Pipeline;
use crate::checkpoint::{CheckpointError, TaskId};
use crate::format::{DecodeError, RecordBatch, SourceRecord};
use crate::kafka::changes::Delivery;
use crate::kafka::consumer::LogBounds;
use crate::metrics::PartitionMetrics;
use crate::region::RegionError;
use crate::time::WatermarkTracker;
use crate::window::{WindowOperator, WindowResult};

pub use restore::Started;

/// What a task asks of its partition's source.
pub struct PartitionSource {
    /// Moves the partition's committed offset (informational: lag monitoring).
    pub commit: Box<dyn Fn(i64) + Send + Sync>,
    /// The partition's log bounds from the latest client statistics, when
    /// known: cheap, and possibly stale.
    pub log: Box<dyn Fn() -> Option<LogBounds> + Send + Sync>,
    /// The partition's log bounds as its leader reports them now: a broker
    /// request, asked only to confirm what the statistics suggest.
    pub query_log: Box<dyn Fn() -> futures::future::BoxFuture<'static, Option<LogBounds>> + Send + Sync>,
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
        "{task}: a Redis primary failed over or restarted while results since the last checkpoint were in \
         flight; their replication cannot be vouched for, so the task restarts from the last checkpoint and replays"
    )]
    ReplicationUnverifiable { task: TaskId },
    #[error(
        "{task}: writes under epoch {epoch} were fenced: a newer epoch wrote this partition (a newer owner, or \
         an epoch increment lost in a Redis failover); the partition restarts with a new epoch"
    )]
    Fenced { task: TaskId, epoch: u64 },
    #[error(
        "{task}: changes could not be published to {topic}: {message}; the task restarts from its last \
         checkpoint and publishes them again"
    )]
    ChangeFeed { task: TaskId, topic: String, message: String },
    #[error("{task}: the task panicked: {message}")]
    Panicked { task: TaskId, message: String },
    #[error(
        "{task}: the partition's log ends at offset {log_end}, before the checkpoint's position {position}: the \
         topic was recreated or truncated, so the checkpoint cannot be continued from. Reset the pipeline's \
         checkpoints deliberately (`regionflow checkpoints reset --pipeline {pipeline}`) to start over",
        pipeline = task.pipeline
    )]
    LogBehindCheckpoint { task: TaskId, position: i64, log_end: i64 },
}

impl TaskError {
    /// Whether restarting the partition from its last checkpoint, in this
    /// process, is the cure: the failure concerns only the results since
    /// that checkpoint, which a replay writes again. Everything else stops
    /// the connector.
    pub fn restartable(&self) -> bool {
        matches!(
            self,
            TaskError::ReplicationUnverifiable { .. } | TaskError::Fenced { .. } | TaskError::ChangeFeed { .. }
        )
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
    pub records: mpsc::Sender<RecordBatch>,
    pub join: tokio::task::JoinHandle<()>,
}

struct DeadLetter {
    record: SourceRecord,
    stage: &'static str,
    reason: String,
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
    /// Changes queued on the change feed, not yet acknowledged.
    publishing: Vec<Delivery>,
    /// With redundancy: changes whose writes replicas may not hold yet,
    /// published at the next checkpoint once they do.
    held_changes: Vec<crate::region::Change>,
    /// Session pipelines: entries written since the last checkpoint, and a
    /// predecessor's to resolve ([`ledger`]).
    ledger: Option<ledger::Ledger>,
    next_offset: Option<i64>,
    source: PartitionSource,
    metrics: PartitionMetrics,
    last_update: Instant,
    last_checkpoint: Instant,
    /// Records processed or results written since the last checkpoint.
    changed_since_checkpoint: bool,
    /// Set until the first record after the start: for the recovery time.
    assigned_at: Option<Instant>,
    /// The restored checkpoint's offset, until the first record past it.
    restored_at: Option<i64>,
    /// When the leader was last asked to confirm the log's bounds.
    log_queried: Option<Instant>,
    /// When (monotonic) the leader was last asked whether the task has
    /// every record of its quiet partition, and when it last said yes.
    quiet_asked_at: Option<crate::time::Millis>,
    quiet_confirmed_at: Option<crate::time::Millis>,
    /// A stored checkpoint's offset the group's committed offset waits to
    /// move to until replicas hold the checkpoint.
    uncommitted: Option<i64>,
}

impl PartitionTask {
    /// Runs until the channel closes (then flushes and checkpoints) or
    /// `cancel` fires (then stops at once, leaving unflushed results to
    /// replay). A task that finds itself fenced, or panics, fails loudly: the
    /// connector restarts a fenced partition with a new epoch and stops on a
    /// panic, so no partition is left assigned and unconsumed.
    pub async fn run(
        mut self,
        mut records: mpsc::Receiver<RecordBatch>,
        cancel: CancellationToken,
    ) -> Result<(), TaskError> {
        let mut tick = tokio::time::interval(self.pipeline.policy.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let work = async {
            loop {
                // The tick before the records: a queue that never empties
                // (a backlog, a slow sink) must not starve flushes and
                // checkpoints. It is ready once per flush interval.
                let ownership = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Ok(Ownership::Owner),
                    _ = tick.tick() => {
                        self.check_restored_position().await?;
                        self.confirm_quiet().await;
                        self.on_tick()?;
                        if self.last_checkpoint.elapsed() >= self.pipeline.policy.checkpoint_interval {
                            self.checkpoint().await?
                        } else {
                            self.flush().await?
                        }
                    }
                    batch = records.recv() => match batch {
                        Some(batch) => {
                            self.process(batch)?;
                            if self.pending.len() >= self.pipeline.policy.max_pending_results {
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
        };
        let result = match AssertUnwindSafe(work).catch_unwind().await {
            Ok(Ok(Ownership::Owner)) => Ok(()),
            Ok(Ok(Ownership::Fenced)) => Err(TaskError::Fenced { task: self.id.clone(), epoch: self.epoch }),
            Ok(Err(e)) => Err(e),
            Err(panic) => Err(TaskError::Panicked { task: self.id.clone(), message: panic_message(&*panic) }),
        };
        self.metrics.remove();
        // Still queued in the producer (and delivered if it can), but no
        // longer this task's to wait for.
        self.pipeline.metrics.changes_abandoned(self.publishing.len() as u64);
        match &result {
            Ok(()) => tracing::info!(next_offset = self.next_offset, "partition task stopped"),
            Err(e) => tracing::error!(error = %e, "partition task failed"),
        }
        result
    }
}

/// The text a panic carried (`panic!("...")`'s message), when it has one.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(s), _) => s.to_string(),
        (_, Some(s)) => s.clone(),
        _ => "a panic without a message".to_string(),
    }
}

#[cfg(test)]
mod tests;
