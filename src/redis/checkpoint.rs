//! Checkpoints and epochs in the Redis Cluster.
//!
//! Per task, three keys share a hash tag, so they live on one shard and one
//! script can check them atomically:
//! `<prefix>:_epoch:{<pipeline>:<topic>:<partition>}` (the epoch counter,
//! `INCR`ed on every takeover), `<prefix>:_ckpt:{...}` (a hash with
//! `epoch`, `offset`, `watermark`, `state`, `written_at`) and
//! `<prefix>:_written:{...}` (session entries written since the checkpoint,
//! recorded before they are written, one packed list per flush; see
//! `CheckpointStore::record_writes`). The commit script writes the whole
//! checkpoint and resets the records in one step, or nothing when the
//! counter has moved past the writer's epoch; the record script records
//! nothing then either. A set per pipeline,
//! `<prefix>:_ckpt_index:<pipeline>`, lists the tasks that have
//! checkpoints, for the operations CLI.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use redis::Script;

use super::cluster::{ClusterHandle, Failed};
use super::replication::{self, Snapshot, Unconfirmed};
use crate::checkpoint::{
    Checkpoint, CheckpointError, CheckpointStore, CommitOutcome, RecordedWrite, Replication, TaskId,
};

/// KEYS: epoch counter, checkpoint, recorded writes. ARGV: epoch, offset,
/// watermark, state, written_at, the carried records packed (empty: none).
const COMMIT_SCRIPT: &str = r#"
local owner = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) < owner then
  return 0
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'epoch', ARGV[1], 'offset', ARGV[2], 'watermark', ARGV[3], 'state', ARGV[4], 'written_at', ARGV[5])
redis.call('DEL', KEYS[3])
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[3], '#', 1, '1', ARGV[6])
end
return 1
"#;

/// KEYS: epoch counter, recorded writes. ARGV: epoch, the records packed.
/// Each call adds one field, numbered by the hash's counter `#`.
const RECORD_SCRIPT: &str = r#"
local owner = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) < owner then
  return 0
end
local batch = redis.call('HINCRBY', KEYS[2], '#', 1)
redis.call('HSET', KEYS[2], batch, ARGV[2])
return 1
"#;

/// The records of a recorded-writes hash, in the order they were made:
/// numbered fields hold packed lists ([`RecordedWrite::pack_all`]), counted by
/// `#`; any other field is one record of the layout before packed lists
/// (field: the entry, which always holds a `:`), older than every list.
/// A record made again (a retried call whose first answer was lost) is
/// read once, as last made.
fn read_recorded(task: &TaskId, fields: HashMap<String, String>) -> Result<Vec<RecordedWrite>, CheckpointError> {
    let corrupt = |message: String| CheckpointError::Corrupt { task: task.to_string(), message };
    let mut single = Vec::new();
    let mut batches = Vec::new();
    for (field, value) in fields {
        if field == "#" {
            continue;
        }
        match field.parse::<u64>() {
            Ok(number) => batches.push((number, value)),
            Err(_) => single.push(
                RecordedWrite::decode_single(field, &value)
                    .ok_or_else(|| corrupt(format!("recorded write {value:?} is malformed")))?,
            ),
        }
    }
    batches.sort_unstable_by_key(|(number, _)| *number);
    let mut latest: HashMap<String, RecordedWrite> = single.into_iter().map(|w| (w.entry.clone(), w)).collect();
    for (number, packed) in batches {
        let writes = RecordedWrite::unpack_all(&packed)
            .ok_or_else(|| corrupt(format!("recorded writes #{number} are malformed")))?;
        latest.extend(writes.into_iter().map(|w| (w.entry.clone(), w)));
    }
    let mut writes: Vec<RecordedWrite> = latest.into_values().collect();
    writes.sort_by(|a, b| (a.offset, &a.entry).cmp(&(b.offset, &b.entry)));
    Ok(writes)
}

#[derive(Clone)]
pub struct RedisCheckpointStore {
    connection: Arc<ClusterHandle>,
    prefix: String,
    deadline: Duration,
    replica_timeout: Duration,
    script: Arc<Script>,
    record_script: Arc<Script>,
    /// Per task, every primary's identity before its writes since its last
    /// checkpoint (see `replication`).
    snapshots: Arc<std::sync::Mutex<HashMap<TaskId, Snapshot>>>,
}

impl RedisCheckpointStore {
    /// `connection` should be the one region writes use: `WAIT` only covers
    /// writes made on the same connections.
    pub fn new(connection: Arc<ClusterHandle>, prefix: &str, deadline: Duration, replica_timeout: Duration) -> Self {
        RedisCheckpointStore {
            connection,
            prefix: prefix.to_string(),
            deadline,
            replica_timeout,
            script: Arc::new(Script::new(COMMIT_SCRIPT)),
            record_script: Arc::new(Script::new(RECORD_SCRIPT)),
            snapshots: Arc::default(),
        }
    }

    fn tag(task: &TaskId) -> String {
        format!("{{{}:{}:{}}}", task.pipeline, task.topic, task.partition)
    }

    pub fn epoch_key(&self, task: &TaskId) -> String {
        format!("{}:_epoch:{}", self.prefix, Self::tag(task))
    }

    pub fn checkpoint_key(&self, task: &TaskId) -> String {
        format!("{}:_ckpt:{}", self.prefix, Self::tag(task))
    }

    /// The writes recorded since the task's last checkpoint: a hash of
    /// packed lists ([`RecordedWrite::pack_all`]), one per recording call.
    pub fn recorded_key(&self, task: &TaskId) -> String {
        format!("{}:_written:{}", self.prefix, Self::tag(task))
    }

    fn index_key(&self, pipeline: &str) -> String {
        format!("{}:_ckpt_index:{pipeline}", self.prefix)
    }

    fn unavailable(failed: Failed) -> CheckpointError {
        CheckpointError::Unavailable { elapsed: failed.elapsed, message: failed.message() }
    }

    /// Every stored checkpoint of a pipeline, by task.
    pub async fn list(&self, pipeline: &str) -> Result<Vec<(TaskId, Option<Checkpoint>)>, CheckpointError> {
        let members: Vec<String> = self
            .connection
            .with_retry(self.deadline, "list checkpoints", |mut c| {
                let key = self.index_key(pipeline);
                async move { redis::cmd("SMEMBERS").arg(key).query_async(&mut c).await }
            })
            .await
            .map_err(Self::unavailable)?
            .0;
        let mut out = Vec::new();
        for member in members {
            let Some((topic, partition)) = member.rsplit_once(':') else { continue };
            let Ok(partition) = partition.parse() else { continue };
            let task = TaskId { pipeline: pipeline.to_string(), topic: topic.to_string(), partition };
            let checkpoint = self.load(&task).await?;
            out.push((task, checkpoint));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Deletes a pipeline's checkpoints (not its epochs: they keep fencing
    /// old owners). Returns how many were deleted.
    pub async fn reset(&self, pipeline: &str) -> Result<usize, CheckpointError> {
        let tasks = self.list(pipeline).await?;
        for (task, _) in &tasks {
            self.delete(self.checkpoint_key(task)).await?;
        }
        self.delete(self.index_key(pipeline)).await?;
        Ok(tasks.len())
    }

    async fn delete(&self, key: String) -> Result<(), CheckpointError> {
        self.connection
            .with_retry(self.deadline, "delete", |mut c| {
                let key = key.clone();
                async move { redis::cmd("DEL").arg(key).query_async::<i64>(&mut c).await }
            })
            .await
            .map(|_| ())
            .map_err(Self::unavailable)
    }
}

fn parse(task: &TaskId, mut fields: HashMap<String, Vec<u8>>) -> Result<Checkpoint, CheckpointError> {
    let corrupt = |message: String| CheckpointError::Corrupt { task: task.to_string(), message };
    let mut number = |name: &str| -> Result<i64, CheckpointError> {
        let raw = fields.remove(name).ok_or_else(|| corrupt(format!("field {name} missing")))?;
        std::str::from_utf8(&raw)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| corrupt(format!("field {name} is not a number")))
    };
    let epoch = number("epoch")? as u64;
    let offset = number("offset")?;
    let watermark = number("watermark")?;
    let written_at = number("written_at")?;
    let state = fields.remove("state").ok_or_else(|| corrupt("field state missing".into()))?;
    Ok(Checkpoint { epoch, offset, watermark, state, written_at, carried: Vec::new() })
}

impl RedisCheckpointStore {
    /// The primaries' identities and offsets once `replication.replicas`
    /// replicas hold the task's writes (`None` when none are asked for).
    async fn confirm(&self, task: &TaskId, replication: Replication) -> Result<Option<Snapshot>, CheckpointError> {
        let replicas = replication.replicas;
        if replicas == 0 {
            return Ok(None);
        }
        let before = self.snapshots.lock().expect("snapshots lock").get(task).cloned();
        let Some(before) = before else {
            return Err(CheckpointError::ReplicationUnverifiable);
        };
        let started = std::time::Instant::now();
        match replication::confirm(&self.connection, &before, replicas, self.replica_timeout).await {
            Ok(now) => Ok(Some(now)),
            Err(Unconfirmed::Changed) => Err(CheckpointError::ReplicationUnverifiable),
            Err(Unconfirmed::Behind { acked }) => {
                Err(CheckpointError::NotReplicated { acked, wanted: replicas, timeout: self.replica_timeout })
            }
            Err(Unconfirmed::Unavailable(message)) => {
                tracing::debug!(took = ?started.elapsed(), "replication state unreadable");
                Err(CheckpointError::ReplicationUnknown { message })
            }
        }
    }
}

impl CheckpointStore for RedisCheckpointStore {
    fn vouched(&self, task: &TaskId) -> Option<Arc<str>> {
        // Without a snapshot nothing is vouched for: every merge is refused
        // (and the task restarts, taking one).
        let snapshots = self.snapshots.lock().expect("snapshots lock");
        let ids: Vec<&str> =
            snapshots.get(task).map(|s| s.0.values().map(|p| p.replid.as_str()).collect()).unwrap_or_default();
        Some(ids.join(",").into())
    }

    fn confirm_replication<'a>(
        &'a self,
        task: &'a TaskId,
        replication: Replication,
    ) -> BoxFuture<'a, Result<(), CheckpointError>> {
        async move { self.confirm(task, replication).await.map(|_| ()) }.boxed()
    }

    fn acquire<'a>(&'a self, task: &'a TaskId) -> BoxFuture<'a, Result<u64, CheckpointError>> {
        async move {
            let key = self.epoch_key(task);
            let (epoch, _) = self
                .connection
                .with_retry(self.deadline, "take epoch", |mut c| {
                    let key = key.clone();
                    async move { redis::cmd("INCR").arg(key).query_async::<u64>(&mut c).await }
                })
                .await
                .map_err(Self::unavailable)?;
            // Before the task's first write: what its first checkpoint
            // compares with.
            match replication::snapshot(&self.connection, self.replica_timeout).await {
                Ok(snapshot) => {
                    self.snapshots.lock().expect("snapshots lock").insert(task.clone(), snapshot);
                }
                Err(e) => {
                    self.snapshots.lock().expect("snapshots lock").remove(task);
                    tracing::warn!(error = %e, "cannot read the primaries' replication state; a checkpoint that needs replicas will restart the task");
                }
            }
            Ok(epoch)
        }
        .boxed()
    }

    fn load<'a>(&'a self, task: &'a TaskId) -> BoxFuture<'a, Result<Option<Checkpoint>, CheckpointError>> {
        async move {
            let key = self.checkpoint_key(task);
            let (fields, _) = self
                .connection
                .with_retry(self.deadline, "load checkpoint", |mut c| {
                    let key = key.clone();
                    async move { redis::cmd("HGETALL").arg(key).query_async::<HashMap<String, Vec<u8>>>(&mut c).await }
                })
                .await
                .map_err(Self::unavailable)?;
            if fields.is_empty() {
                return Ok(None);
            }
            parse(task, fields).map(Some)
        }
        .boxed()
    }

    fn commit<'a>(
        &'a self,
        task: &'a TaskId,
        checkpoint: &'a Checkpoint,
        replication: Replication,
    ) -> BoxFuture<'a, Result<CommitOutcome, CheckpointError>> {
        async move {
            let confirmed = self.confirm(task, replication).await?;
            let (epoch_key, checkpoint_key) = (self.epoch_key(task), self.checkpoint_key(task));
            let recorded_key = self.recorded_key(task);
            let carried = RecordedWrite::pack_all(&checkpoint.carried);
            let (stored, _) = self
                .connection
                .with_retry(self.deadline, "store checkpoint", |mut c| {
                    let mut invocation = self.script.key(&epoch_key);
                    invocation
                        .key(&checkpoint_key)
                        .key(&recorded_key)
                        .arg(checkpoint.epoch)
                        .arg(checkpoint.offset)
                        .arg(checkpoint.watermark)
                        .arg(&checkpoint.state[..])
                        .arg(checkpoint.written_at)
                        .arg(&carried);
                    async move { invocation.invoke_async::<i64>(&mut c).await }
                })
                .await
                .map_err(Self::unavailable)?;
            if stored == 0 {
                return Ok(CommitOutcome::Fenced);
            }
            if let Some(now) = confirmed {
                self.snapshots.lock().expect("snapshots lock").insert(task.clone(), now);
            }
            let index = self.index_key(&task.pipeline);
            let member = format!("{}:{}", task.topic, task.partition);
            self.connection
                .with_retry(self.deadline, "index checkpoint", |mut c| {
                    let (index, member) = (index.clone(), member.clone());
                    async move { redis::cmd("SADD").arg(index).arg(member).query_async::<i64>(&mut c).await }
                })
                .await
                .map_err(Self::unavailable)?;
            Ok(CommitOutcome::Stored)
        }
        .boxed()
    }

    fn record_writes<'a>(
        &'a self,
        task: &'a TaskId,
        epoch: u64,
        writes: &'a [RecordedWrite],
    ) -> BoxFuture<'a, Result<CommitOutcome, CheckpointError>> {
        async move {
            if writes.is_empty() {
                return Ok(CommitOutcome::Stored);
            }
            let (epoch_key, recorded_key) = (self.epoch_key(task), self.recorded_key(task));
            let packed = RecordedWrite::pack_all(writes);
            let (recorded, _) = self
                .connection
                .with_retry(self.deadline, "record writes", |mut c| {
                    let mut invocation = self.record_script.key(&epoch_key);
                    invocation.key(&recorded_key).arg(epoch).arg(&packed);
                    async move { invocation.invoke_async::<i64>(&mut c).await }
                })
                .await
                .map_err(Self::unavailable)?;
            Ok(if recorded == 0 { CommitOutcome::Fenced } else { CommitOutcome::Stored })
        }
        .boxed()
    }

    fn recorded_writes<'a>(&'a self, task: &'a TaskId) -> BoxFuture<'a, Result<Vec<RecordedWrite>, CheckpointError>> {
        async move {
            let key = self.recorded_key(task);
            let (fields, _) = self
                .connection
                .with_retry(self.deadline, "load recorded writes", |mut c| {
                    let key = key.clone();
                    async move { redis::cmd("HGETALL").arg(key).query_async::<HashMap<String, String>>(&mut c).await }
                })
                .await
                .map_err(Self::unavailable)?;
            read_recorded(task, fields)
        }
        .boxed()
    }
}
