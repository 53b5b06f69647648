//! Flushes and checkpoints: pending results become entry writes to the
//! region, dead letters go to their topic, the region's changes to the change
//! feed, and a checkpoint is stored only after all three are acknowledged
//! (and the writes replicated, when the region asks).

use std::collections::HashMap;
use std::time::Instant;

use futures::future::try_join_all;

use super::ledger::Recording;
use super::{Ownership, PartitionTask, TaskError};
use crate::checkpoint::{state, Checkpoint, CheckpointError, CommitOutcome, Replication};
use crate::kafka::changes;
use crate::kafka::dead_letter::Origin;
use crate::metrics::CheckpointOutcome;
use crate::region::{Change, EntryWrite, WriteMode};
use crate::window::ResultKind;

impl PartitionTask {
    /// Writes pending results and dead letters.
    pub(super) async fn flush(&mut self) -> Result<Ownership, TaskError> {
        let started = Instant::now();
        self.send_dead_letters().await?;
        self.resolve_inherited();
        let mut ownership = Ownership::Owner;
        if !self.pending.is_empty() {
            self.changed_since_checkpoint = true;
            let mut writes = self.entry_writes();
            if self.pipeline.policy.redundancy > 0 && writes.iter().any(|w| w.mode == WriteMode::Merge) {
                // A merge must not build on a partial that a failover since
                // the last checkpoint may have cut short (chaos seed 556995).
                let vouched = self.pipeline.checkpoints.vouched(&self.id);
                for write in writes.iter_mut().filter(|w| w.mode == WriteMode::Merge) {
                    write.vouched = vouched.clone();
                }
            }
            match self.record(&writes).await? {
                Recording::Recorded => {}
                Recording::Fenced => {
                    tracing::warn!(epoch = self.epoch, "recording writes fenced: a newer owner holds this partition");
                    return Ok(Ownership::Fenced);
                }
                // Still pending: the checkpoint waits for them.
                Recording::Unreplicated => return Ok(Ownership::Owner),
            }
            let outcome = self.pipeline.region.write(&writes).await.map_err(|source| TaskError::Region {
                topic: self.topic.to_string(),
                partition: self.partition,
                source,
            })?;
            self.pipeline.metrics.region_writes(outcome.applied, outcome.fenced, outcome.stale, outcome.bytes);
            if outcome.unverified > 0 {
                // A primary failed over since the last checkpoint: replay
                // from it, under a new epoch that vouches for the new one.
                return Err(TaskError::ReplicationUnverifiable { task: self.id.clone() });
            }
            // Even when fenced: what was applied is in Redis, and a change
            // published twice carries the same version. With redundancy, a
            // change waits until replicas hold its write: a primary lost
            // before replicating takes the write, and its version, with it,
            // and a replay would number a change again.
            if self.pipeline.policy.redundancy > 0 {
                self.held_changes.extend(outcome.changes);
            } else {
                self.publish(&outcome.changes).await?;
            }
            if outcome.fenced > 0 {
                tracing::warn!(
                    epoch = self.epoch,
                    fenced = outcome.fenced,
                    "writes fenced: a newer owner holds this partition"
                );
                ownership = Ownership::Fenced;
            }
            self.record_fired();
        }
        self.pipeline.metrics.flushed(started.elapsed());
        Ok(ownership)
    }

    /// Flushes, then stores the checkpoint (waiting for replicas when the
    /// region asks for redundancy), then moves the committed Kafka offset.
    pub(super) async fn checkpoint(&mut self) -> Result<Ownership, TaskError> {
        if self.flush().await? == Ownership::Fenced {
            return Ok(Ownership::Fenced);
        }
        if !self.pending.is_empty() {
            // The flush left results unwritten (their ledger records are not
            // replicated yet): no checkpoint may move past them.
            self.pipeline.metrics.checkpoint(CheckpointOutcome::Failed);
            return Ok(Ownership::Owner);
        }
        let replication = Replication { replicas: self.pipeline.policy.redundancy };
        if !self.held_changes.is_empty() {
            // Publish the changes whose writes replicas now hold.
            if let Err(e) = self.pipeline.checkpoints.confirm_replication(&self.id, replication).await {
                return self.checkpoint_failed(e);
            }
            let held = std::mem::take(&mut self.held_changes);
            self.publish(&held).await?;
        }
        // No checkpoint covers a change Kafka has not acknowledged.
        self.settle_changes().await?;
        let Some(offset) = self.next_offset else { return Ok(Ownership::Owner) };
        self.last_checkpoint = Instant::now();
        if !self.changed_since_checkpoint {
            self.metrics.checkpoint_age.set(0.0);
            if let Some(offset) = self.uncommitted {
                self.commit_offset(offset).await;
            }
            return Ok(Ownership::Owner);
        }
        let started = Instant::now();
        let state = state::encode(&state::TaskState {
            fingerprint: self.operator.fingerprint(),
            max_seen: self.watermark.max_seen(),
            operator: self.operator.snapshot(),
        });
        let checkpoint = Checkpoint {
            epoch: self.epoch,
            offset,
            watermark: self.watermark.current(),
            state,
            written_at: self.pipeline.clock.wall(),
            carried: self.ledger.as_ref().map(|ledger| ledger.carried()).unwrap_or_default(),
        };
        let m = &self.pipeline.metrics;
        match self.pipeline.checkpoints.commit(&self.id, &checkpoint, replication).await {
            Ok(CommitOutcome::Stored) => {
                m.checkpoint_stored(started.elapsed(), checkpoint.state.len());
                self.metrics.checkpoint_age.set(0.0);
                self.changed_since_checkpoint = false;
                if let Some(ledger) = &mut self.ledger {
                    ledger.checkpointed();
                }
                self.commit_offset(offset).await;
                Ok(Ownership::Owner)
            }
            Ok(CommitOutcome::Fenced) => {
                m.checkpoint(CheckpointOutcome::Fenced);
                Ok(Ownership::Fenced)
            }
            Err(e) => self.checkpoint_failed(e),
        }
    }

    /// Moves the group's committed offset to a stored checkpoint's
    /// `offset`, with redundancy once replicas hold the checkpoint (else at
    /// a later checkpoint). A partition without a checkpoint starts at the
    /// committed offset, so it must never pass a checkpoint that a failover
    /// can lose: the partition would restart there with empty window state,
    /// and its windows' earlier records would be gone from the region
    /// (found reading the code while chasing chaos seed 556995).
    async fn commit_offset(&mut self, offset: i64) {
        let replication = Replication { replicas: self.pipeline.policy.redundancy };
        if replication.replicas > 0 {
            if let Err(e) = self.pipeline.checkpoints.confirm_replication(&self.id, replication).await {
                tracing::debug!(offset, error = %e, "committed offset waits for the checkpoint's replication");
                self.uncommitted = Some(offset);
                return;
            }
        }
        self.uncommitted = None;
        (self.source.commit)(offset);
    }

    /// A checkpoint that could not be stored: postponed when replicas are
    /// behind or unreadable, a restart from the last checkpoint when the
    /// writes' replication cannot be vouched for, else the task's failure.
    fn checkpoint_failed(&self, error: CheckpointError) -> Result<Ownership, TaskError> {
        let m = &self.pipeline.metrics;
        match error {
            CheckpointError::ReplicationUnverifiable => {
                m.checkpoint(CheckpointOutcome::Failed);
                Err(TaskError::ReplicationUnverifiable { task: self.id.clone() })
            }
            e @ (CheckpointError::NotReplicated { .. } | CheckpointError::ReplicationUnknown { .. }) => {
                m.checkpoint(CheckpointOutcome::Failed);
                tracing::warn!(error = %e, "checkpoint postponed");
                Ok(Ownership::Owner)
            }
            source => {
                m.checkpoint(CheckpointOutcome::Failed);
                Err(TaskError::Checkpoint { task: self.id.clone(), source })
            }
        }
    }

    /// Queues changes on the change feed; their deliveries are awaited
    /// before the next checkpoint ([`Self::settle_changes`]).
    async fn publish(&mut self, changes: &[Change]) -> Result<(), TaskError> {
        let Some(feed) = self.pipeline.changes.clone() else { return Ok(()) };
        for change in changes {
            loop {
                match feed.enqueue(change) {
                    Ok(delivery) => {
                        self.publishing.push(delivery);
                        self.pipeline.metrics.changes_enqueued(1);
                        break;
                    }
                    Err(e) if changes::is_queue_full(&e) => {
                        // Wait for our own deliveries, or, when other tasks
                        // filled the queue, a moment.
                        self.pipeline.metrics.change_publish_retried();
                        if self.publishing.is_empty() {
                            tokio::time::sleep(changes::QUEUE_FULL_BACKOFF).await;
                        }
                        self.settle_changes().await?;
                    }
                    Err(e) => return Err(self.change_feed_error(feed.topic(), &e)),
                }
            }
        }
        Ok(())
    }

    /// Awaits every queued change's acknowledgement.
    async fn settle_changes(&mut self) -> Result<(), TaskError> {
        if self.publishing.is_empty() {
            return Ok(());
        }
        let deliveries = std::mem::take(&mut self.publishing);
        let settled = deliveries.len() as u64;
        let (acknowledged, result) = changes::settle(deliveries).await;
        self.pipeline.metrics.changes_settled(settled, acknowledged);
        result.map_err(|e| {
            let topic = self.pipeline.changes.as_ref().map_or("", |feed| feed.topic());
            self.change_feed_error(topic, &e)
        })
    }

    fn change_feed_error(&self, topic: &str, e: &rdkafka::error::KafkaError) -> TaskError {
        TaskError::ChangeFeed { task: self.id.clone(), topic: topic.to_string(), message: e.to_string() }
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

    /// Counts the flushed results and observes each final result's latency
    /// from its window's end.
    fn record_fired(&mut self) {
        let m = &self.pipeline.metrics;
        let now = self.pipeline.clock.wall();
        let mut counts = [0u64; 4];
        for (result, _) in self.pending.drain(..) {
            let i = match result.kind {
                ResultKind::Final => {
                    m.event_to_region(((now - result.window.end).max(0)) as f64 / 1000.0);
                    0
                }
                ResultKind::Update => 1,
                ResultKind::Retract => 2,
                ResultKind::Amend => 3,
            };
            counts[i] += 1;
        }
        let kinds = [ResultKind::Final, ResultKind::Update, ResultKind::Retract, ResultKind::Amend];
        for (kind, n) in kinds.into_iter().zip(counts) {
            m.fired(kind, n);
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
            m.dead_letters(l.stage, 1);
        }
        Ok(())
    }
}
