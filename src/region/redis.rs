//! The Redis Cluster region.
//!
//! Every entry write is one `EVALSHA` of `merge.lua` on the shard that owns
//! the entry's key, so the merge of partials is atomic there. A batch is sent
//! as concurrent commands over redis-rs' cluster connection, which multiplexes
//! them per node: commands to one node share its socket and go out
//! pipelined, commands to different nodes proceed in parallel, and no
//! grouping by slot is needed (redis-rs cluster pipelines refuse a second
//! slot). Failed commands are retried with exponential backoff until the
//! configured write deadline, which rides through MOVED/ASK redirects and a
//! primary failover; a batch either fully succeeds or the task fails loudly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::Script;

use super::{EntryWrite, Expiry, Region, RegionError, WriteOutcome};
use crate::config::RedisConfig;

pub const MERGE_SCRIPT: &str = include_str!("merge.lua");

const MIN_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The script's replies for one entry's writes, and the retries they took.
type EntryReplies = Result<(Vec<i64>, u64), RegionError>;

#[derive(Clone)]
pub struct RedisRegion {
    connection: ClusterConnection,
    script: Arc<Script>,
    spec: Arc<str>,
    concurrency: usize,
    write_deadline: Duration,
}

impl RedisRegion {
    /// Connects to the cluster, retrying until `startup_timeout`.
    pub async fn connect(config: &RedisConfig) -> Result<RedisRegion, RegionError> {
        let nodes = config.nodes.join(",");
        let unreachable = |message: String| RegionError::Unreachable { nodes: nodes.clone(), message };
        let client = ClusterClientBuilder::new(config.nodes.clone())
            .connection_timeout(config.connect_timeout)
            .response_timeout(config.response_timeout)
            .retries(3)
            .build()
            .map_err(|e| unreachable(e.to_string()))?;
        let started = Instant::now();
        let mut backoff = MIN_BACKOFF;
        loop {
            let attempt = async {
                let mut connection = client.get_async_connection().await?;
                redis::cmd("PING").query_async::<String>(&mut connection).await?;
                Ok::<_, redis::RedisError>(connection)
            };
            match tokio::time::timeout(config.connect_timeout, attempt).await {
                Ok(Ok(connection)) => {
                    return Ok(RedisRegion {
                        connection,
                        script: Arc::new(Script::new(MERGE_SCRIPT)),
                        spec: "".into(),
                        concurrency: config.write_concurrency,
                        write_deadline: config.write_deadline,
                    })
                }
                Ok(Err(e)) if started.elapsed() >= config.startup_timeout => return Err(unreachable(e.to_string())),
                Err(_) if started.elapsed() >= config.startup_timeout => {
                    return Err(unreachable(format!("no answer within {:?}", config.connect_timeout)))
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "Redis Cluster not reachable yet; retrying"),
                Err(_) => tracing::warn!("Redis Cluster did not answer in time; retrying"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// The same connection, writing entries of a region with this aggregate spec.
    pub fn for_spec(&self, spec: Arc<str>) -> RedisRegion {
        RedisRegion { spec, ..self.clone() }
    }

    pub fn connection(&self) -> ClusterConnection {
        self.connection.clone()
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
        with_retry(self.write_deadline, "entry write", || {
            let mut connection = self.connection.clone();
            let invocation = &invocation;
            async move { invocation.invoke_async::<i64>(&mut connection).await }
        })
        .await
        .map_err(|(elapsed, message)| {
            if message.contains("merge script") {
                RegionError::Protocol(message)
            } else {
                RegionError::WriteFailed { elapsed, message }
            }
        })
    }
}

/// Runs a Redis operation, retrying transient failures (connection loss,
/// MOVED/ASK, CLUSTERDOWN, TRYAGAIN, timeouts) with exponential backoff
/// until `deadline` has passed. Script errors fail at once: they would fail
/// the same way again. Returns the result and the number of retries, or the
/// time spent and the last error.
pub(crate) async fn with_retry<T, F, Fut>(
    deadline: Duration,
    what: &str,
    mut op: F,
) -> Result<(T, u64), (Duration, String)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = redis::RedisResult<T>>,
{
    let started = Instant::now();
    let mut backoff = MIN_BACKOFF;
    let mut retries = 0;
    loop {
        match op().await {
            Ok(value) => return Ok((value, retries)),
            Err(e) if is_script_error(&e) || started.elapsed() >= deadline => {
                return Err((started.elapsed(), e.to_string()))
            }
            Err(e) => {
                retries += 1;
                tracing::warn!(operation = what, error = %e, retries, "Redis operation failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// A script that fails on its input fails the same way on every retry.
fn is_script_error(e: &redis::RedisError) -> bool {
    e.code().is_some_and(|code| code.starts_with("ERR") && e.to_string().contains("script"))
}

impl Region for RedisRegion {
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
