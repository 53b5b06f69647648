//! The group consumer: its configuration, the rebalance context, offsets
//! and per-partition high watermarks, and the start-up reachability check.
//!
//! The consumer joins the group with the cooperative-sticky assignor, so a
//! rebalance only moves the partitions that change owner. Offsets are stored
//! explicitly (`enable.auto.offset.store = false`) by the partition tasks
//! after each checkpoint, and committed by librdkafka's auto-commit and on
//! revoke and close; they are informational (lag tools), the checkpoints in
//! Redis are the truth.
//!
//! librdkafka calls the rebalance callback from inside `poll`, i.e. from
//! the connector's dispatch loop. [`SourceContext`] replaces rdkafka's
//! default callback so the connector can act *inside* the rebalance: on
//! assign it starts the tasks (each takes an epoch and restores its
//! checkpoint) and sets each partition's start offset to its checkpoint's
//! (without one, to the group's committed offset, looked up here: see
//! `start_positions`) before the partitions are assigned, so fetching
//! starts exactly there; on
//! revoke it lets the tasks flush and checkpoint before the partitions are
//! released. Only the partitions that move are touched.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

use super::apply_user_config;
use crate::config::KafkaConfig;

pub type Partition = (String, i32);

/// Called on assign, inside the rebalance: starts the partitions' tasks and
/// returns the offset each must start from (`None`: the committed offset).
/// Partitions it leaves out are not assigned.
pub type AssignHandler = Arc<dyn Fn(&[Partition]) -> Vec<(Partition, Option<i64>)> + Send + Sync>;

/// Called on revoke, inside the rebalance, with the partitions about to go.
pub type RevokeHandler = Arc<dyn Fn(&[Partition]) + Send + Sync>;

/// The offsets a partition's log holds: `start` (the log start, after
/// retention and deletions) to `end` (the high watermark, the next offset
/// to be written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogBounds {
    pub start: i64,
    pub end: i64,
    /// When the statistics said so: they are only delivered while the
    /// dispatch loop polls, so a frozen or blocked connector holds old ones.
    pub observed: Instant,
}

/// Each partition's log bounds, from librdkafka's statistics (emitted
/// every `statistics.interval.ms` and served by the consumer's poll), so
/// tasks can tell a quiet partition from a stalled pipeline, and notice a
/// log that no longer holds their position, without calling into
/// librdkafka from their own threads. Only partitions being fetched from a
/// reachable leader are listed: a partition whose broker is down is not
/// quiet but cut off, and its idle clock must not run.
pub type HighWatermarks = Arc<std::sync::Mutex<std::collections::HashMap<Partition, LogBounds>>>;

pub struct SourceContext {
    on_assign: AssignHandler,
    on_revoke: RevokeHandler,
    high_watermarks: HighWatermarks,
    /// Where a partition with no committed offset starts (`auto.offset.reset`).
    reset: Offset,
}

pub type SourceConsumer = StreamConsumer<SourceContext>;

impl ClientContext for SourceContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let reachable: std::collections::HashSet<i32> = statistics
            .brokers
            .values()
            .filter(|b| matches!(b.state.as_str(), "UP" | "UPDATE"))
            .map(|b| b.nodeid)
            .collect();
        let mut high = self.high_watermarks.lock().expect("high watermark lock");
        for (topic, t) in statistics.topics {
            for (partition, p) in t.partitions.into_iter().filter(|(id, _)| *id >= 0) {
                let key = (topic.clone(), partition);
                if p.hi_offset >= 0 && p.fetch_state == "active" && reachable.contains(&p.leader) {
                    high.insert(
                        key,
                        LogBounds { start: p.lo_offset.max(0), end: p.hi_offset, observed: Instant::now() },
                    );
                } else {
                    high.remove(&key);
                }
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let partitions = partitions_of(tpl);
                tracing::info!(?partitions, "partitions assigned");
                let assigned = start_positions(consumer, &(self.on_assign)(&partitions));
                if cooperative {
                    consumer.incremental_assign(&assigned)
                } else {
                    consumer.assign(&assigned)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let partitions = partitions_of(tpl);
                tracing::info!(?partitions, "partitions revoked");
                (self.on_revoke)(&partitions);
                // Asynchronous: committed offsets are informational (the
                // checkpoint is the truth), and a synchronous commit inside
                // the callback can block the consumer while the group
                // coordinator is unreachable.
                if let Err(e) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Async) {
                    // Nothing stored yet is a normal case for a fresh group.
                    tracing::debug!(error = %e, "offset commit on revoke");
                }
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance error; dropping the assignment");
                let partitions = partitions_of(tpl);
                (self.on_revoke)(&partitions);
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "applying the rebalance failed");
        }
    }
}

/// How long an assignment waits for the group's committed offsets while
/// the coordinator is loading or moving.
const COMMITTED_LOOKUP: Duration = Duration::from_secs(30);

/// The partitions at their start offsets: the checkpoint's, or for `None`
/// the group's committed offset, looked up here, or with nothing committed
/// where `auto.offset.reset` says. Never left to librdkafka's own lookup
/// during the assignment: a partition whose lookup fails there (a
/// partition-level error, or any error once the assignment changed while
/// the request was out, as restarting partitions one by one does) stays
/// assigned and is never fetched, silently (librdkafka's
/// rdkafka_assignment.c; chaos seed 833981: partitions restarted while
/// OffsetFetch failed stopped for good).
fn start_positions<C: Consumer<SourceContext>>(
    consumer: &C,
    offsets: &[(Partition, Option<i64>)],
) -> TopicPartitionList {
    let unknown: Vec<&Partition> = offsets.iter().filter(|(_, o)| o.is_none()).map(|(p, _)| p).collect();
    let committed = committed_offsets(consumer, &unknown);
    let mut positions = TopicPartitionList::new();
    for ((topic, partition), offset) in offsets {
        let offset = match offset {
            Some(offset) => Offset::Offset(*offset),
            None => committed.get(&(topic.clone(), *partition)).copied().unwrap_or(Offset::Stored),
        };
        if let Err(e) = positions.add_partition_offset(topic, *partition, offset) {
            tracing::error!(topic, partition, error = %e, "cannot set start offset");
        }
    }
    positions
}

/// The group's committed offset of each partition (`auto.offset.reset`'s
/// offset where none is committed), asking again while the coordinator
/// answers with errors, for up to [`COMMITTED_LOOKUP`]. A partition still
/// unknown then is left out: it starts at librdkafka's lookup after all.
fn committed_offsets<C: Consumer<SourceContext>>(
    consumer: &C,
    partitions: &[&Partition],
) -> HashMap<Partition, Offset> {
    let mut found = HashMap::new();
    let deadline = Instant::now() + COMMITTED_LOOKUP;
    let mut wanted: Vec<&Partition> = partitions.to_vec();
    while !wanted.is_empty() {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in &wanted {
            tpl.add_partition(topic, *partition);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        match consumer.committed_offsets(tpl, remaining.min(Duration::from_secs(5))) {
            Ok(answer) => {
                for element in answer.elements() {
                    let key = (element.topic().to_string(), element.partition());
                    match (element.error(), element.offset()) {
                        (Ok(()), Offset::Offset(offset)) => found.insert(key, Offset::Offset(offset)),
                        (Ok(()), _) => found.insert(key, consumer.context().reset),
                        (Err(e), _) => {
                            tracing::warn!(partition = ?key, error = %e, "committed offset not known yet; asking again");
                            None
                        }
                    };
                }
            }
            Err(e) => tracing::warn!(error = %e, "committed offsets not known yet; asking again"),
        }
        wanted.retain(|p| !found.contains_key(*p));
        if wanted.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            tracing::error!(
                partitions = ?wanted,
                waited = ?COMMITTED_LOOKUP,
                "the group's committed offsets could not be read; librdkafka looks them up as it assigns"
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    found
}

/// `auto.offset.reset` as an offset to assign: where a partition with no
/// committed offset starts.
fn reset_offset(kafka: &KafkaConfig) -> Offset {
    match kafka.properties.get("auto.offset.reset").map(String::as_str) {
        Some("latest" | "largest" | "end") => Offset::End,
        // `error`: librdkafka's lookup, which raises it.
        Some("error") => Offset::Stored,
        _ => Offset::Beginning,
    }
}

/// Stops fetching `partition` outside a rebalance (the group still assigns
/// it to this member); librdkafka discards what it pre-fetched, so nothing
/// from the old position reaches the application afterwards.
pub fn pause_assignment(consumer: &SourceConsumer, partition: &Partition) -> rdkafka::error::KafkaResult<()> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&partition.0, partition.1);
    consumer.incremental_unassign(&tpl)
}

/// Resumes partitions stopped by [`pause_assignment`] at the given offsets,
/// exactly as an assignment by the group would.
pub fn resume_assignment(
    consumer: &SourceConsumer,
    offsets: &[(Partition, Option<i64>)],
) -> rdkafka::error::KafkaResult<()> {
    consumer.incremental_assign(&start_positions(consumer, offsets))
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect()
}

/// Creates the group consumer with the connector's rebalance handlers.
pub fn consumer(
    kafka: &KafkaConfig,
    on_assign: AssignHandler,
    on_revoke: RevokeHandler,
    high_watermarks: HighWatermarks,
) -> Result<Arc<SourceConsumer>, rdkafka::error::KafkaError> {
    let mut config = ClientConfig::new();
    config
        .set("group.id", &kafka.group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        // librdkafka's default (1000 ms) pauses fetching for a second each
        // time a partition's pre-fetch queue fills: a 10x slower source.
        .set("fetch.queue.backoff.ms", "10")
        .set("statistics.interval.ms", "500");
    apply_user_config(&mut config, kafka, &[]);
    let consumer: SourceConsumer = config.create_with_context(SourceContext {
        on_assign,
        on_revoke,
        high_watermarks,
        reset: reset_offset(kafka),
    })?;
    Ok(Arc::new(consumer))
}

/// Stores the next offset to read for a partition (committed by auto-commit).
pub fn store_offset(consumer: &SourceConsumer, topic: &str, partition: i32, next_offset: i64) {
    let mut tpl = TopicPartitionList::new();
    if tpl.add_partition_offset(topic, partition, rdkafka::Offset::Offset(next_offset)).is_ok() {
        if let Err(e) = consumer.store_offsets(&tpl) {
            // Happens when the partition was just revoked; the new owner replays.
            tracing::debug!(topic, partition, error = %e, "offset not stored");
        }
    }
}

/// The partition's log bounds as its leader reports them now: the truth
/// where the statistics can trail (librdkafka keeps a partition's high
/// watermark from an earlier assignment until its first fetch in this one).
/// A blocking request, run on the blocking pool; `None` when the consumer is
/// gone or the leader does not answer within `timeout`.
pub async fn query_log_bounds(
    consumer: std::sync::Weak<SourceConsumer>,
    topic: String,
    partition: i32,
    timeout: Duration,
) -> Option<LogBounds> {
    let asked = tokio::task::spawn_blocking(move || {
        let consumer = consumer.upgrade()?;
        match consumer.fetch_watermarks(&topic, partition, timeout) {
            Ok((start, end)) => Some(LogBounds { start: start.max(0), end, observed: Instant::now() }),
            Err(e) => {
                tracing::warn!(topic, partition, error = %e, "could not ask the partition's leader for its log bounds");
                None
            }
        }
    });
    asked.await.ok().flatten()
}

#[derive(Debug, thiserror::Error)]
#[error("cannot reach Kafka brokers at {brokers} within {waited:?}: {message}; check kafka.brokers and that the brokers are up")]
pub struct Unreachable {
    pub brokers: String,
    pub waited: Duration,
    pub message: String,
}

/// Waits until the brokers answer a metadata request, for at most
/// `startup_timeout`; warns about subscribed topics that do not exist.
pub async fn wait_for_brokers(
    consumer: &Arc<SourceConsumer>,
    kafka: &KafkaConfig,
    topics: &[String],
) -> Result<(), Unreachable> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(100);
    loop {
        let c = consumer.clone();
        let attempt = tokio::task::spawn_blocking(move || {
            c.fetch_metadata(None, Duration::from_secs(5))
                .map(|m| m.topics().iter().map(|t| t.name().to_string()).collect::<Vec<_>>())
        })
        .await
        .expect("metadata request does not panic");
        match attempt {
            Ok(existing) => {
                for topic in topics.iter().filter(|t| !existing.contains(t)) {
                    tracing::warn!(topic, "source topic does not exist (yet); waiting for it");
                }
                return Ok(());
            }
            Err(e) if started.elapsed() >= kafka.startup_timeout => {
                return Err(Unreachable {
                    brokers: kafka.brokers.clone(),
                    waited: started.elapsed(),
                    message: e.to_string(),
                })
            }
            Err(e) => tracing::warn!(error = %e, brokers = %kafka.brokers, "Kafka not reachable yet; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
