//! The Redis Cluster region.
//!
//! Every entry write is one `FCALL` of the merge function (`merge.lua`, see
//! [`super::function`]) on the shard that owns the entry's key, so the merge
//! of partials is atomic there. A batch goes out two ways, both over the one
//! shared cluster connection (so that a checkpoint's `WAIT` covers every
//! write):
//!
//! - **Pipelined per primary**, the fast path: each entry's first write is
//!   grouped by the primary that owns its key (the slot map that
//!   [`ClusterHandle`] keeps) and sent in pipelines of up to
//!   [`PIPELINE_LEN`] commands to that node, replies read per command. A
//!   "Function not found" reply loads the library on that node and resends
//!   those writes once.
//! - **Per entry**, the path that rides through failures: one entry's writes
//!   one at a time, in order, each retried by [`ClusterHandle::with_retry`]
//!   until the write deadline, riding through MOVED/ASK and primary
//!   failovers (and loading the library where it is missing); up to
//!   `write_concurrency` entries at once. It takes what the fast path does
//!   not: an entry's writes after its first (amendments), an entry whose
//!   first write is a merge, keys whose slot has no known primary, and
//!   every write of a pipeline that failed (redirect, lost connection,
//!   timeout; the slot map is then forgotten and fetched again for the next
//!   batch). Those count as retried.
//!
//! Why only first writes, and never a merge, are pipelined: redis-rs resends
//! a whole pipeline when one of its replies is a redirect or its connection
//! drops, and the per-entry path resends what a failed pipeline held, so a
//! pipelined write may run twice. A replace or delete that runs twice
//! answers the same (same epoch and offset: applied again, stale again or
//! fenced again); a merge would answer "stale" the second time. And an
//! entry's later writes must not overtake its first, so they wait for its
//! reply, as they always have. A batch either fully succeeds or the task
//! fails loudly.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{RedisError, Value};

use super::cluster::{ClusterHandle, Failed};
use super::error::{self, Permanent, Retry};
use super::function::{self, merge_call, MERGE_FUNCTION};
use super::partial;
use crate::metrics::RedisRegionMetrics;
use crate::region::{ChangeOp, EntryWrite, Region, RegionError, WriteMode, WriteOutcome};
use crate::window::AggregateFunction;

/// Commands per pipeline: large enough that the per-command cost of the
/// client disappears, small enough to stay far below response timeouts
/// (at ~12–40 µs of Redis time per write, 12–40 ms per pipeline).
const PIPELINE_LEN: usize = 1000;
/// Pipelines of one batch in flight at once (over all primaries).
const PIPELINES_IN_FLIGHT: usize = 8;

/// The merge function's replies for one entry's writes, and the retries
/// they took.
type EntryReplies = Result<(Vec<Reply>, u64), RegionError>;

/// One merge function reply: its status (-2 unverified, -1 fenced, 0
/// stale, 1 written, 2 deleted) and, under [`Capture::Publish`], the entry's version and public
/// fields.
#[derive(Debug)]
struct Reply {
    status: i64,
    change: Option<(u64, Vec<(String, String)>)>,
}

impl Reply {
    fn parse(value: Value) -> Result<Reply, RegionError> {
        let unexpected = |value: &Value| RegionError::Refused(format!("merge function returned {value:?}"));
        match value {
            Value::Int(status) => Ok(Reply { status, change: None }),
            Value::Array(items) => {
                let mut items = items.into_iter();
                let (Some(Value::Int(status)), Some(Value::Int(version))) = (items.next(), items.next()) else {
                    return Err(RegionError::Refused("merge function returned a malformed change".into()));
                };
                let mut fields = Vec::with_capacity(items.len() / 2);
                while let (Some(name), Some(value)) = (items.next(), items.next()) {
                    match (redis::from_redis_value(name), redis::from_redis_value(value)) {
                        (Ok(name), Ok(value)) => fields.push((name, value)),
                        _ => return Err(RegionError::Refused("merge function returned a malformed field".into())),
                    }
                }
                Ok(Reply { status, change: Some((version.max(0) as u64, fields)) })
            }
            other => Err(unexpected(&other)),
        }
    }
}

/// A write with its partial encoded for the merge function.
struct Encoded<'a> {
    write: &'a EntryWrite,
    partial: String,
}

/// What became of a pipelined write: the function's reply, or `None` when it
/// must go the per-entry way.
type PipelinedReplies = Result<Vec<(usize, Option<Reply>)>, RegionError>;

#[derive(Clone)]
pub struct RedisRegion {
    connection: Arc<ClusterHandle>,
    name: Arc<str>,
    metrics: RedisRegionMetrics,
    spec: Arc<str>,
    concurrency: usize,
    write_deadline: Duration,
}

impl RedisRegion {
    /// Region `name` of these aggregates (function and field name, in the
    /// order of each write's accumulators) over `connection`.
    pub fn new<'n>(
        connection: Arc<ClusterHandle>,
        name: &str,
        aggregates: impl IntoIterator<Item = (AggregateFunction, &'n str)>,
        concurrency: usize,
        write_deadline: Duration,
        metrics: RedisRegionMetrics,
    ) -> Self {
        let spec = partial::aggregate_spec(aggregates).into();
        RedisRegion { connection, name: name.into(), metrics, spec, concurrency, write_deadline }
    }

    /// One entry's writes, in order.
    async fn write_entry(&self, writes: &[Encoded<'_>]) -> EntryReplies {
        let mut replies = Vec::with_capacity(writes.len());
        let mut retried = 0;
        for write in writes {
            let (reply, retries) = self.write_one(write).await?;
            replies.push(reply);
            retried += retries;
        }
        Ok((replies, retried))
    }

    /// One write, retried until the deadline; returns the function's reply
    /// and how many retries it took.
    async fn write_one(&self, write: &Encoded<'_>) -> Result<(Reply, u64), RegionError> {
        let call = merge_call(write.write, &write.partial, &self.spec);
        self.connection
            .with_retry(self.write_deadline, "entry write", |mut connection| {
                let call = &call;
                async move {
                    match call.query_async::<Value>(&mut connection).await {
                        Err(e) if function::is_not_loaded(&e) => {
                            MERGE_FUNCTION.load().query_async::<Value>(&mut connection).await?;
                            call.query_async::<Value>(&mut connection).await
                        }
                        reply => reply,
                    }
                }
            })
            .await
            .map_err(|failed: Failed| {
                if failed.is_permanent() {
                    RegionError::Refused(failed.message())
                } else {
                    RegionError::WriteFailed { elapsed: failed.elapsed, message: failed.message() }
                }
            })
            .and_then(|(reply, retries)| Ok((Reply::parse(reply)?, retries)))
    }

    /// The first writes of `entries[i]` for each `i` in `ids`, pipelined to
    /// one primary.
    async fn write_pipelined(
        &self,
        (host, port): (&str, u16),
        ids: &[usize],
        entries: &[&[Encoded<'_>]],
    ) -> PipelinedReplies {
        let route = || SingleNodeRoutingInfo::ByAddress { host: host.to_string(), port };
        let (_, mut connection) = self.connection.get();
        let mut done = Vec::with_capacity(ids.len());
        let mut pending = ids.to_vec();
        for attempt in 0..2 {
            let mut pipeline = redis::pipe();
            for &i in &pending {
                let write = &entries[i][0];
                pipeline.add_command(merge_call(write.write, &write.partial, &self.spec));
            }
            let replies = match connection.route_pipeline(pipeline, 0, pending.len(), route()).await {
                Ok(replies) if replies.len() == pending.len() => replies,
                Ok(replies) => {
                    return Err(RegionError::Refused(format!(
                        "a pipeline of {} writes got {} replies",
                        pending.len(),
                        replies.len()
                    )))
                }
                Err(e) => {
                    if is_script_refusal(&e) {
                        return Err(RegionError::Refused(error::describe(&e)));
                    }
                    tracing::warn!(node = %format!("{host}:{port}"), writes = pending.len(), error = %e,
                        "pipelined writes failed; retrying them one by one");
                    self.connection.forget_slot_map();
                    done.extend(pending.iter().map(|&i| (i, None)));
                    return Ok(done);
                }
            };
            let mut unloaded = Vec::new();
            for (&i, reply) in pending.iter().zip(replies) {
                match reply {
                    reply @ (Value::Int(_) | Value::Array(_)) => done.push((i, Some(Reply::parse(reply)?))),
                    Value::ServerError(e) => {
                        let e = RedisError::from(e);
                        if function::is_not_loaded(&e) && attempt == 0 {
                            unloaded.push(i);
                        } else if is_script_refusal(&e) {
                            return Err(RegionError::Refused(error::describe(&e)));
                        } else {
                            done.push((i, None));
                        }
                    }
                    // Not what the function returns: the per-entry path
                    // reports it as it always has.
                    _ => done.push((i, None)),
                }
            }
            if unloaded.is_empty() {
                break;
            }
            if let Err(e) = connection.route_command(MERGE_FUNCTION.load(), RoutingInfo::SingleNode(route())).await {
                tracing::warn!(node = %format!("{host}:{port}"), error = %e,
                    "FUNCTION LOAD failed; writing one by one");
                done.extend(unloaded.iter().map(|&i| (i, None)));
                break;
            }
            pending = unloaded;
        }
        Ok(done)
    }
}

/// The merge function refused its input (`ERR merge script: ...`): retrying
/// cannot help.
fn is_script_refusal(e: &RedisError) -> bool {
    error::classify(e) == Retry::Permanent(Permanent::ScriptRefusal)
}

/// Counts one merge function reply to `write` into `outcome`, with the
/// change it returned.
fn count(outcome: &mut WriteOutcome, write: &EntryWrite, reply: Reply) -> Result<(), RegionError> {
    match reply.status {
        -2 => outcome.unverified += 1,
        -1 => outcome.fenced += 1,
        0 => outcome.stale += 1,
        1 | 2 => outcome.applied += 1,
        other => return Err(RegionError::Refused(format!("merge function returned {other}"))),
    }
    if let Some((version, fields)) = reply.change {
        let op = if reply.status == 2 { ChangeOp::Delete } else { ChangeOp::Upsert };
        outcome.changes.push(write.change(version, op, fields));
    }
    Ok(())
}

impl Region for RedisRegion {
    fn write<'a>(&'a self, writes: &'a [EntryWrite]) -> BoxFuture<'a, Result<WriteOutcome, RegionError>> {
        async move {
            let timer = self.metrics.write_duration.start_timer();
            let result = self.write_batch(writes).await;
            match &result {
                Ok(outcome) => {
                    timer.observe_duration();
                    self.metrics.written(writes.len() as u64, outcome.retried);
                    if outcome.retried > 0 {
                        tracing::warn!(region = %self.name, retried = outcome.retried,
                            "Redis errors ridden through; writes succeeded");
                    }
                }
                Err(_) => self.metrics.failed(),
            }
            result
        }
        .boxed()
    }
}

impl RedisRegion {
    async fn write_batch(&self, writes: &[EntryWrite]) -> Result<WriteOutcome, RegionError> {
        {
            let mut outcome = WriteOutcome::default();
            let encoded: Vec<Encoded<'_>> = writes
                .iter()
                .map(|write| Encoded {
                    write,
                    partial: partial::entry_partial(&write.accumulators, write.epoch, write.offset),
                })
                .collect();
            outcome.bytes =
                encoded.iter().map(|e| e.write.key.len() + e.write.field.len() + e.partial.len()).sum::<usize>() as u64;
            let entries: Vec<&[Encoded<'_>]> = encoded.chunk_by(|a, b| a.write.key == b.write.key).collect();
            // Per entry, how many of its writes are applied.
            let mut written = vec![0; entries.len()];

            if let Some(slots) = self.connection.slot_map().await {
                let mut by_primary: Vec<Vec<usize>> = vec![Vec::new(); slots.primaries()];
                for (i, entry) in entries.iter().enumerate() {
                    if entry[0].write.mode != WriteMode::Merge {
                        if let Some(primary) = slots.primary_of(&entry[0].write.key) {
                            by_primary[primary].push(i);
                        }
                    }
                }
                let pipelines: Vec<BoxFuture<'_, PipelinedReplies>> = by_primary
                    .iter()
                    .enumerate()
                    .flat_map(|(primary, ids)| ids.chunks(PIPELINE_LEN).map(move |ids| (primary, ids)))
                    .map(|(primary, ids)| self.write_pipelined(slots.address(primary), ids, &entries).boxed())
                    .collect();
                let mut replies = futures::stream::iter(pipelines).buffer_unordered(PIPELINES_IN_FLIGHT);
                while let Some(replies) = replies.next().await {
                    for (i, reply) in replies? {
                        match reply {
                            Some(reply) => {
                                count(&mut outcome, entries[i][0].write, reply)?;
                                written[i] = 1;
                            }
                            None => outcome.retried += 1,
                        }
                    }
                }
            }

            // Boxed up front: a lazily mapped iterator trips the compiler's
            // higher-ranked `Send` inference for the returned future.
            let commands: Vec<BoxFuture<'_, (&[Encoded<'_>], EntryReplies)>> = entries
                .iter()
                .zip(&written)
                .filter(|(entry, &written)| written < entry.len())
                .map(|(entry, &written)| {
                    let rest = &entry[written..];
                    self.write_entry(rest).map(move |replies| (rest, replies)).boxed()
                })
                .collect();
            let mut replies = futures::stream::iter(commands).buffer_unordered(self.concurrency);
            while let Some((writes, replies)) = replies.next().await {
                let (replies, retried) = replies?;
                outcome.retried += retried;
                for (write, reply) in writes.iter().zip(replies) {
                    count(&mut outcome, write.write, reply)?;
                }
            }
            Ok(outcome)
        }
    }
}

/// The key that names a region's writer: `<prefix>:_region_owner:<region>`.
pub fn owner_key(prefix: &str, region: &str) -> String {
    format!("{prefix}:_region_owner:{region}")
}

/// Claims region `region` for `owner` (`<group id>/<pipeline>`), or says who
/// holds it. Partial fields name the source partition, not the pipeline,
/// so two deployments whose pipelines write one region would overwrite each
/// other's partials and fence each other; the first claim stands and any
/// other writer is refused at start. The claim has no TTL; a retired
/// pipeline's claim is deleted by hand (the error says which key).
pub async fn claim(
    handle: &ClusterHandle,
    prefix: &str,
    region: &str,
    owner: &str,
    deadline: Duration,
) -> Result<(), String> {
    let key = owner_key(prefix, region);
    let (held, _) = handle
        .with_retry(deadline, "claim region", |mut c| {
            let key = key.clone();
            async move {
                redis::cmd("SET").arg(&key).arg(owner).arg("NX").arg("GET").query_async::<Option<String>>(&mut c).await
            }
        })
        .await
        .map_err(|failed| failed.message())?;
    match held {
        Some(other) if other != owner => Err(format!(
            "region `{region}` is written by {other}, not {owner}: two pipelines writing one region overwrite each \
             other's partials; give this pipeline its own region.name (or redis.key_prefix), or, if {other} is \
             retired, delete the key {key}"
        )),
        _ => Ok(()),
    }
}
