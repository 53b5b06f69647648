//! The Redis Cluster region.
//!
//! Every entry write is one `EVALSHA` of `merge.lua` on the shard that owns
//! the entry's key, so the merge of partials is atomic there. A batch is sent
//! as concurrent commands over redis-rs' cluster connection, which multiplexes
//! them per node: commands to one node share its socket and go out
//! pipelined, commands to different nodes proceed in parallel, and no
//! grouping by slot is needed (redis-rs cluster pipelines refuse a second
//! slot). Failed commands are retried by [`SharedConnection::with_retry`]
//! until the configured write deadline, riding through MOVED/ASK redirects
//! and a primary failover; a batch either fully succeeds or the task fails
//! loudly.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use redis::Script;

use super::connection::SharedConnection;
use super::{EntryWrite, Expiry, Region, RegionError, WriteOutcome};

pub const MERGE_SCRIPT: &str = include_str!("merge.lua");

/// The script's replies for one entry's writes, and the retries they took.
type EntryReplies = Result<(Vec<i64>, u64), RegionError>;

#[derive(Clone)]
pub struct RedisRegion {
    connection: Arc<SharedConnection>,
    script: Arc<Script>,
    spec: Arc<str>,
    concurrency: usize,
    write_deadline: Duration,
}

impl RedisRegion {
    /// A region writing entries with this aggregate spec over `connection`.
    pub fn new(
        connection: Arc<SharedConnection>,
        spec: Arc<str>,
        concurrency: usize,
        write_deadline: Duration,
    ) -> Self {
        RedisRegion { connection, script: Arc::new(Script::new(MERGE_SCRIPT)), spec, concurrency, write_deadline }
    }

    /// One entry's writes, in order.
    async fn write_entry(&self, writes: &[EntryWrite]) -> EntryReplies {
        let mut replies = Vec::with_capacity(writes.len());
        let mut retried = 0;
        for write in writes {
            let (reply, retries) = self.write_one(write).await?;
            replies.push(reply);
            retried += retries;
        }
        Ok((replies, retried))
    }

    /// One write, retried until the deadline; returns the script's reply
    /// and how many retries it took.
    async fn write_one(&self, write: &EntryWrite) -> Result<(i64, u64), RegionError> {
        let (ttl_mode, ttl) = match write.expiry {
            Expiry::Never => ("n", 0),
            Expiry::After(ms) => ("r", ms as i64),
            Expiry::At(at) => ("a", at),
        };
        let mut invocation = self.script.key(&write.key);
        invocation
            .arg(&*write.field)
            .arg(write.epoch)
            .arg(write.offset)
            .arg(write.mode.as_arg())
            .arg(&write.partial)
            .arg(write.window.start)
            .arg(write.window.end)
            .arg(ttl_mode)
            .arg(ttl)
            .arg(&*self.spec);
        self.connection
            .with_retry(self.write_deadline, "entry write", |mut connection| {
                let invocation = &invocation;
                async move { invocation.invoke_async::<i64>(&mut connection).await }
            })
            .await
            .map_err(|(elapsed, message)| {
                if message.contains("merge script:") {
                    RegionError::Protocol(message)
                } else {
                    RegionError::WriteFailed { elapsed, message }
                }
            })
    }
}

impl Region for RedisRegion {
    fn connection_generation(&self) -> u64 {
        self.connection.generation()
    }

    fn write<'a>(&'a self, writes: &'a [EntryWrite]) -> BoxFuture<'a, Result<WriteOutcome, RegionError>> {
        async move {
            let mut outcome = WriteOutcome::default();
            // Boxed up front: a lazily mapped iterator trips the compiler's
            // higher-ranked `Send` inference for the returned future.
            let commands: Vec<BoxFuture<'_, EntryReplies>> =
                writes.chunk_by(|a, b| a.key == b.key).map(|entry| self.write_entry(entry).boxed()).collect();
            let mut replies = futures::stream::iter(commands).buffer_unordered(self.concurrency);
            while let Some(replies) = replies.next().await {
                let (replies, retried) = replies?;
                outcome.retried += retried;
                for reply in replies {
                    match reply {
                        -1 => outcome.fenced += 1,
                        0 => outcome.stale += 1,
                        1 | 2 => outcome.applied += 1,
                        other => return Err(RegionError::Protocol(format!("merge script returned {other}"))),
                    }
                }
            }
            Ok(outcome)
        }
        .boxed()
    }
}
