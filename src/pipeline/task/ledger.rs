//! Session entries written since the last checkpoint, for the partition's
//! next owner.
//!
//! A session's entry is named by its bounds, and which sessions a task
//! writes depends on timing as well as on records: under emit mode
//! `updates`, a running session is written at each update tick, and a
//! session that later grows is retracted only by the task that wrote it.
//! When a task dies after such writes and before its next checkpoint, its
//! successor replays the same records with its ticks elsewhere; it may
//! never produce (and so never retract) a session its predecessor wrote,
//! which then stays in the region for good.
//!
//! So a session task records every entry before its first write since the
//! last checkpoint ([`CheckpointStore::record_writes`], fenced by the
//! partition's epoch, so a zombie that lost the partition records nothing
//! and writes nothing); a checkpoint resets the records, since its state
//! knows every session written before it. With `region.redundancy`, the
//! entries wait until replicas hold their records: a failover that lost
//! the records but not the entries (they live on other shards) would hide
//! those entries from the successor for good. Until then the results stay
//! pending, and no checkpoint moves past them. A successor loads the records
//! and resolves each once its replay has passed the record's position: a
//! session it writes itself, or holds in state (which it then marks as
//! written, so a merge retracts it), is its own; any other is retracted.
//! Records not yet resolved are carried over by the successor's
//! checkpoints.
//!
//! [`CheckpointStore::record_writes`]: crate::checkpoint::CheckpointStore::record_writes

use std::collections::HashSet;

use super::{PartitionTask, TaskError};
use crate::checkpoint::{CheckpointError, CommitOutcome, RecordedWrite, Replication};
use crate::region::EntryWrite;
use crate::window::{ResultKind, Window, WindowResult};

#[derive(Debug, Default)]
pub(super) struct Ledger {
    /// Entries recorded since the last checkpoint.
    recorded: HashSet<String>,
    /// A predecessor's records this task has not resolved yet.
    inherited: Vec<RecordedWrite>,
}

impl Ledger {
    pub(super) fn inherit(records: Vec<RecordedWrite>) -> Ledger {
        Ledger { recorded: HashSet::new(), inherited: records }
    }

    /// What a checkpoint carries over.
    pub(super) fn carried(&self) -> Vec<RecordedWrite> {
        self.inherited.clone()
    }

    /// After a checkpoint: its state covers every recorded write.
    pub(super) fn checkpointed(&mut self) {
        self.recorded.clear();
    }
}

/// Whether a flush's entries may be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Recording {
    /// Recorded (and, with redundancy, replicated): write them.
    Recorded,
    /// A newer epoch owns the partition: write nothing.
    Fenced,
    /// Recorded, but replicas do not hold the records yet: keep the results
    /// pending and try again at the next flush.
    Unreplicated,
}

impl PartitionTask {
    /// Resolves inherited records against the results about to be written
    /// and the operator's sessions: adds a retraction for each session the
    /// predecessor wrote that this task's replay, now past the record's
    /// position, neither writes nor holds.
    pub(super) fn resolve_inherited(&mut self) {
        let Some(ledger) = &mut self.ledger else { return };
        if ledger.inherited.is_empty() {
            return;
        }
        let layout = &self.pipeline.layout;
        let pending: HashSet<String> = self.pending.iter().map(|(r, _)| layout.entry_key(&r.key, r.window)).collect();
        let Some(position) = self.next_offset else { return };
        let mut retractions = Vec::new();
        ledger.inherited.retain(|record| {
            if pending.contains(&record.entry) {
                return false;
            }
            if record.offset > position {
                return true;
            }
            let window = Window { start: record.window_start, end: record.window_end };
            if !self.operator.mark_session_written(&record.key, window) {
                retractions.push(WindowResult {
                    key: record.key.as_str().into(),
                    window,
                    accumulators: Vec::new(),
                    kind: ResultKind::Retract,
                });
            }
            false
        });
        if !retractions.is_empty() {
            tracing::info!(
                retractions = retractions.len(),
                "retracting sessions a predecessor wrote after its last checkpoint that the replay does not produce"
            );
            self.changed_since_checkpoint = true;
            self.pending.extend(retractions.into_iter().map(|r| (r, position)));
        }
    }

    /// Records the entries of `writes` not recorded since the last
    /// checkpoint, and waits for replicas to hold the records when the
    /// region asks for redundancy.
    pub(super) async fn record(&mut self, writes: &[EntryWrite]) -> Result<Recording, TaskError> {
        let Some(ledger) = &mut self.ledger else { return Ok(Recording::Recorded) };
        let new: Vec<RecordedWrite> = writes
            .iter()
            .filter(|w| !ledger.recorded.contains(&w.key))
            .map(|w| RecordedWrite {
                entry: w.key.clone(),
                offset: w.offset,
                window_start: w.window.start,
                window_end: w.window.end,
                key: w.group.to_string(),
            })
            .collect();
        if new.is_empty() {
            return Ok(Recording::Recorded);
        }
        let checkpoints = &self.pipeline.checkpoints;
        let failed = |source| TaskError::Checkpoint { task: self.id.clone(), source };
        if checkpoints.record_writes(&self.id, self.epoch, &new).await.map_err(failed)? == CommitOutcome::Fenced {
            return Ok(Recording::Fenced);
        }
        let replication = Replication { replicas: self.pipeline.policy.redundancy };
        if replication.replicas > 0 {
            match checkpoints.confirm_replication(&self.id, replication).await {
                Ok(()) => {}
                Err(CheckpointError::ReplicationUnverifiable) => {
                    return Err(TaskError::ReplicationUnverifiable { task: self.id.clone() })
                }
                Err(e @ (CheckpointError::NotReplicated { .. } | CheckpointError::ReplicationUnknown { .. })) => {
                    tracing::warn!(error = %e, "session entries wait for their records' replication");
                    return Ok(Recording::Unreplicated);
                }
                Err(source) => return Err(failed(source)),
            }
        }
        ledger.recorded.extend(new.into_iter().map(|r| r.entry));
        Ok(Recording::Recorded)
    }
}
