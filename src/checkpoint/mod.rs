//! Checkpoints and ownership epochs, per task (pipeline, topic, partition).
//!
//! A checkpoint is `{epoch, offset, watermark, state}`: the next offset to
//! read, the watermark, and the encoded window state, stored only after
//! every result the task emitted before it is acknowledged (and replicated,
//! when the region asks for redundancy). An epoch is taken (atomically
//! incremented) each time a connector becomes a partition's owner; the store
//! refuses a checkpoint from an older epoch, so a zombie cannot overwrite its
//! successor's.
//!
//! [`CheckpointStore`] is the seam: `redis::RedisCheckpointStore` is the
//! production store, [`MemoryCheckpointStore`] the embedded quick-start's.
//! [`state`] encodes a task's window state for either.

mod memory;
pub mod state;

use std::sync::Arc;

use futures::future::BoxFuture;

pub use memory::MemoryCheckpointStore;

use crate::time::Millis;

/// Identifies one task's checkpoint and epoch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId {
    pub pipeline: String,
    pub topic: String,
    pub partition: i32,
}

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}[{}]", self.pipeline, self.topic, self.partition)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub epoch: u64,
    /// The next offset to read.
    pub offset: i64,
    pub watermark: Millis,
    /// [`state::encode`]d [`state::TaskState`].
    pub state: Vec<u8>,
    /// Wall-clock time of the commit, epoch millis.
    pub written_at: Millis,
    /// Recorded writes that stay recorded past this checkpoint: those a
    /// predecessor made that the task has not resolved yet (see
    /// [`CheckpointStore::record_writes`]). Every other record is covered by
    /// the checkpoint's state and dropped.
    pub carried: Vec<RecordedWrite>,
}

/// An entry a task was about to write, recorded before the write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedWrite {
    /// The entry's Redis key.
    pub entry: String,
    /// The source position the write was produced at.
    pub offset: i64,
    pub window_start: Millis,
    pub window_end: Millis,
    /// The group key.
    pub key: String,
}

impl RecordedWrite {
    /// The writes as one packed list: per write, `offset start end
    /// entry_len key_len ` (decimal, each followed by a space), then the
    /// entry's and the key's bytes. The lengths carry any entry or key
    /// whole, spaces and newlines included.
    pub fn pack_all(writes: &[RecordedWrite]) -> String {
        let mut packed = String::new();
        for write in writes {
            write.pack(&mut packed);
        }
        packed
    }

    fn pack(&self, into: &mut String) {
        use std::fmt::Write;
        let (offset, start, end) = (self.offset, self.window_start, self.window_end);
        let (entry, key) = (self.entry.len(), self.key.len());
        let _ = write!(into, "{offset} {start} {end} {entry} {key} ");
        into.push_str(&self.entry);
        into.push_str(&self.key);
    }

    /// Reads back a list [`RecordedWrite::pack_all`] wrote; `None` when it is malformed.
    pub fn unpack_all(mut packed: &str) -> Option<Vec<RecordedWrite>> {
        let mut writes = Vec::new();
        while !packed.is_empty() {
            let mut number = || -> Option<i64> {
                let (digits, rest) = packed.split_once(' ')?;
                packed = rest;
                digits.parse().ok()
            };
            let (offset, window_start, window_end) = (number()?, number()?, number()?);
            let (entry_len, key_len) = (usize::try_from(number()?).ok()?, usize::try_from(number()?).ok()?);
            let entry = packed.get(..entry_len)?;
            let key = packed.get(entry_len..entry_len.checked_add(key_len)?)?;
            packed = &packed[entry_len + key_len..];
            writes.push(RecordedWrite {
                entry: entry.to_string(),
                offset,
                window_start,
                window_end,
                key: key.to_string(),
            });
        }
        Some(writes)
    }

    /// Reads one write of the layout before packed lists (regionflow
    /// before 2026-12-07): the entry as the hash field, `offset start end
    /// key` as its value; a successor of a connector of that version reads
    /// its records.
    pub fn decode_single(entry: String, text: &str) -> Option<RecordedWrite> {
        let mut parts = text.splitn(4, ' ');
        let mut number = || parts.next()?.parse::<i64>().ok();
        let (offset, window_start, window_end) = (number()?, number()?, number()?);
        let key = parts.next()?.to_string();
        Some(RecordedWrite { entry, offset, window_start, window_end, key })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    Stored,
    /// A newer epoch owns the partition.
    Fenced,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint store unavailable after retrying for {elapsed:?}: {message}")]
    Unavailable { elapsed: std::time::Duration, message: String },
    #[error(
        "only {acked} of {wanted} replicas acknowledged the task's writes within {timeout:?}; checkpoint postponed"
    )]
    NotReplicated { acked: usize, wanted: usize, timeout: std::time::Duration },
    #[error("the primaries' replication state could not be read ({message}); checkpoint postponed")]
    ReplicationUnknown { message: String },
    #[error("checkpoint of {task} is unreadable: {message}")]
    Corrupt { task: String, message: String },
    #[error("a Redis primary failed over, restarted or changed since the task's writes before this checkpoint; their replication cannot be vouched for")]
    ReplicationUnverifiable,
}

/// What a checkpoint must wait for before it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replication {
    /// Replicas that must hold the task's writes (0: no wait).
    pub replicas: usize,
}

pub trait CheckpointStore: Send + Sync {
    /// Takes a new ownership epoch for the task.
    fn acquire<'a>(&'a self, task: &'a TaskId) -> BoxFuture<'a, Result<u64, CheckpointError>>;

    fn load<'a>(&'a self, task: &'a TaskId) -> BoxFuture<'a, Result<Option<Checkpoint>, CheckpointError>>;

    /// Records entries a task is about to write, unless a newer epoch owns
    /// the partition (then nothing is recorded: the task must not write).
    /// Session entries are named by their bounds, and a replay need not
    /// write the same sessions (its update ticks fall elsewhere): the
    /// records tell the partition's next owner which entries were written
    /// after the last checkpoint, so that it can retract those its replay
    /// does not produce.
    fn record_writes<'a>(
        &'a self,
        task: &'a TaskId,
        epoch: u64,
        writes: &'a [RecordedWrite],
    ) -> BoxFuture<'a, Result<CommitOutcome, CheckpointError>>;

    /// The writes recorded since the last checkpoint, and those it carried.
    fn recorded_writes<'a>(&'a self, task: &'a TaskId) -> BoxFuture<'a, Result<Vec<RecordedWrite>, CheckpointError>>;

    /// The replication ids of the primaries as the task's last checkpoint
    /// (or its start) found them, comma-separated: the histories its merges
    /// may build on (see `merge.lua`). `None` where the store tracks no
    /// replication (in memory).
    fn vouched(&self, _task: &TaskId) -> Option<Arc<str>> {
        None
    }

    /// Waits until `replication.replicas` replicas acknowledged the writes
    /// made so far, with the errors of [`CheckpointStore::commit`], without
    /// storing anything (the change feed publishes after it).
    fn confirm_replication<'a>(
        &'a self,
        task: &'a TaskId,
        replication: Replication,
    ) -> BoxFuture<'a, Result<(), CheckpointError>>;

    /// Waits until `replication.replicas` replicas acknowledged the writes
    /// made so far, on the connection they were made on (else
    /// [`CheckpointError::ReplicationUnverifiable`]), then stores the
    /// checkpoint unless a newer epoch exists, replacing the recorded
    /// writes with the checkpoint's `carried` ones.
    fn commit<'a>(
        &'a self,
        task: &'a TaskId,
        checkpoint: &'a Checkpoint,
        replication: Replication,
    ) -> BoxFuture<'a, Result<CommitOutcome, CheckpointError>>;
}

#[cfg(test)]
mod tests {
    use super::RecordedWrite;
    use proptest::prelude::*;

    fn write() -> impl Strategy<Value = RecordedWrite> {
        (".*", any::<i64>(), any::<i64>(), any::<i64>(), ".*").prop_map(
            |(entry, offset, window_start, window_end, key)| RecordedWrite {
                entry,
                offset,
                window_start,
                window_end,
                key,
            },
        )
    }

    proptest! {
        /// Any entries and keys (spaces, newlines, digits, empty, any
        /// Unicode) and any numbers come back exactly, in order.
        #[test]
        fn a_packed_list_reads_back_as_written(writes in proptest::collection::vec(write(), 0..20)) {
            prop_assert_eq!(RecordedWrite::unpack_all(&RecordedWrite::pack_all(&writes)), Some(writes));
        }

        /// Cut anywhere inside its last write, a list is refused, never misread.
        #[test]
        fn a_truncated_list_is_refused(writes in proptest::collection::vec(write(), 1..5), cut in any::<prop::sample::Index>()) {
            let whole = RecordedWrite::pack_all(&writes[..writes.len() - 1]).len();
            let packed = RecordedWrite::pack_all(&writes);
            let at = whole + 1 + cut.index(packed.len() - whole - 1);
            if let Some(prefix) = packed.get(..at) {
                prop_assert_eq!(RecordedWrite::unpack_all(prefix), None);
            }
        }
    }

    #[test]
    fn malformed_lists_are_refused() {
        for packed in ["x 0 0 0 0 ", "1 2 3 -1 0 ", "1 2 3 5 0 abc", "1 2 3 99999999999999999999 0 a", "1 2 3 1 1 é"] {
            assert_eq!(RecordedWrite::unpack_all(packed), None, "{packed:?}");
        }
        assert_eq!(RecordedWrite::unpack_all(""), Some(Vec::new()));
    }
}
