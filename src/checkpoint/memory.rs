//! In-process checkpoints for the embedded quick-start (same fencing rule).

use std::collections::HashMap;
use std::sync::Mutex;

use futures::future::BoxFuture;
use futures::FutureExt;

use super::{Checkpoint, CheckpointError, CheckpointStore, CommitOutcome, RecordedWrite, TaskId};

#[derive(Default)]
pub struct MemoryCheckpointStore {
    state: Mutex<HashMap<TaskId, (u64, Option<Checkpoint>)>>,
    recorded: Mutex<HashMap<TaskId, Vec<RecordedWrite>>>,
}

impl CheckpointStore for MemoryCheckpointStore {
    fn acquire<'a>(&'a self, task: &'a TaskId) -> BoxFuture<'a, Result<u64, CheckpointError>> {
        async move {
            let mut state = self.state.lock().expect("checkpoint lock");
            let entry = state.entry(task.clone()).or_default();
            entry.0 += 1;
            Ok(entry.0)
        }
        .boxed()
    }

    fn load<'a>(&'a self, task: &'a TaskId) -> BoxFuture<'a, Result<Option<Checkpoint>, CheckpointError>> {
        async move { Ok(self.state.lock().expect("checkpoint lock").get(task).and_then(|(_, c)| c.clone())) }.boxed()
    }

    fn commit<'a>(
        &'a self,
        task: &'a TaskId,
        checkpoint: &'a Checkpoint,
        _replication: super::Replication,
    ) -> BoxFuture<'a, Result<CommitOutcome, CheckpointError>> {
        async move {
            let mut state = self.state.lock().expect("checkpoint lock");
            let entry = state.entry(task.clone()).or_default();
            if checkpoint.epoch < entry.0 {
                return Ok(CommitOutcome::Fenced);
            }
            entry.1 = Some(checkpoint.clone());
            self.recorded.lock().expect("records lock").insert(task.clone(), checkpoint.carried.clone());
            Ok(CommitOutcome::Stored)
        }
        .boxed()
    }

    fn confirm_replication<'a>(
        &'a self,
        _task: &'a TaskId,
        _replication: super::Replication,
    ) -> BoxFuture<'a, Result<(), CheckpointError>> {
        async move { Ok(()) }.boxed()
    }

    fn record_writes<'a>(
        &'a self,
        task: &'a TaskId,
        epoch: u64,
        writes: &'a [RecordedWrite],
    ) -> BoxFuture<'a, Result<CommitOutcome, CheckpointError>> {
        async move {
            let owner = self.state.lock().expect("checkpoint lock").get(task).map_or(0, |(epoch, _)| *epoch);
            if epoch < owner {
                return Ok(CommitOutcome::Fenced);
            }
            self.recorded.lock().expect("records lock").entry(task.clone()).or_default().extend_from_slice(writes);
            Ok(CommitOutcome::Stored)
        }
        .boxed()
    }

    fn recorded_writes<'a>(&'a self, task: &'a TaskId) -> BoxFuture<'a, Result<Vec<RecordedWrite>, CheckpointError>> {
        async move { Ok(self.recorded.lock().expect("records lock").get(task).cloned().unwrap_or_default()) }.boxed()
    }
}
