//! In-process checkpoints for the embedded quick-start (same fencing rule).

use std::collections::HashMap;
use std::sync::Mutex;

use futures::future::BoxFuture;
use futures::FutureExt;

use super::{Checkpoint, CheckpointError, CheckpointStore, CommitOutcome, TaskId};

#[derive(Default)]
pub struct MemoryCheckpointStore {
    state: Mutex<HashMap<TaskId, (u64, Option<Checkpoint>)>>,
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
            Ok(CommitOutcome::Stored)
        }
        .boxed()
    }
}
