//! A task's start: take a new ownership epoch, load the partition's last
//! checkpoint and rebuild the window state and watermark from it, and say
//! where the partition must be read from.

use std::sync::Arc;
use std::time::Instant;

use super::{PartitionSource, PartitionTask, TaskError};
use crate::checkpoint::{state, CheckpointError, TaskId};
use crate::metrics::RestoredFrom;
use crate::pipeline::Pipeline;
use crate::region::partial_field;
use crate::time::WatermarkTracker;
use crate::window::{WindowKind, WindowOperator};

use super::ledger::Ledger;

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
        let mut watermark = WatermarkTracker::new(pipeline.policy.out_of_orderness, pipeline.policy.idle_timeout);
        let mut operator = WindowOperator::new(pipeline.window.clone());
        let m = &pipeline.metrics;
        let seek_to = match checkpoint {
            Some(checkpoint) => {
                let corrupt =
                    |message: String| checkpoint_error(CheckpointError::Corrupt { task: id.to_string(), message });
                let state = state::decode(&checkpoint.state).map_err(|e| corrupt(e.to_string()))?;
                if state.fingerprint != operator.fingerprint() {
                    return Err(TaskError::IncompatibleState {
                        task: id,
                        stored: state.fingerprint,
                        current: operator.fingerprint(),
                    });
                }
                operator = WindowOperator::restore(pipeline.window.clone(), state.operator)
                    .ok_or_else(|| corrupt("window kind of the state does not match".into()))?;
                watermark.restore(checkpoint.watermark, state.max_seen, pipeline.clock.monotonic());
                m.takeover(RestoredFrom::Checkpoint);
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
                m.takeover(RestoredFrom::Fresh);
                tracing::info!(epoch, "no checkpoint: starting from the group's committed offset");
                None
            }
        };
        // Sessions: what a predecessor wrote after its last checkpoint.
        let ledger = match pipeline.window.kind {
            WindowKind::Session { .. } => {
                let records = pipeline.checkpoints.recorded_writes(&id).await.map_err(checkpoint_error)?;
                if !records.is_empty() {
                    tracing::info!(records = records.len(), "sessions written after the last checkpoint, to resolve");
                }
                Some(Ledger::inherit(records))
            }
            WindowKind::Tumbling { .. } | WindowKind::Sliding { .. } => None,
        };
        let metrics = m.partition(topic, partition);
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
            publishing: Vec::new(),
            held_changes: Vec::new(),
            ledger,
            next_offset: seek_to,
            source,
            metrics,
            last_update: Instant::now(),
            last_checkpoint: Instant::now(),
            changed_since_checkpoint: false,
            assigned_at: Some(assigned_at),
            restored_at: seek_to,
            log_queried: None,
            quiet_asked_at: None,
            quiet_confirmed_at: None,
            uncommitted: None,
            pipeline,
        };
        Ok(Started { task, seek_to })
    }
}
