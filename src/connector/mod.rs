//! The connector: one process, one consumer-group member, running every
//! configured pipeline.
//!
//! Its dispatch loop (this file) polls the consumer, groups records by
//! partition (copying each one's key and payload once, into the
//! partition's [`RecordBatch`]: no allocation per record) and hands each
//! group to that partition's task over a bounded channel (a full channel
//! stops the loop from polling: backpressure reaches Kafka; a shutdown
//! request still ends the wait, and the records not handed over are
//! replayed by the partition's next owner).
//!
//! The rebalance callback only forwards each assignment and revocation to
//! [`assignment`], an async task that starts a task for each assigned
//! partition (epoch, checkpoint restore, start offset) and, on revoke,
//! closes the task's channel and waits until it has flushed and
//! checkpointed, so the next owner starts where this one stopped and
//! replays nothing; the callback waits for its answer, so the partitions
//! are assigned at the restored offsets. On shutdown the same happens for
//! every partition, then the consumer commits and leaves the group (on a
//! thread of its own, waited for at most [`LEAVE_GROUP_TIMEOUT`]: with
//! Kafka unreachable, librdkafka's close may never return).
//!
//! A task that fails in a way a replay cures (a Redis connection replaced
//! under writes that `WAIT` must vouch for) is restarted in place, as if
//! the partition had been taken over: its fetching stops, a new task takes
//! a new epoch and restores the last checkpoint, and fetching resumes at
//! the checkpoint's offset. Other partitions keep running. Any other task
//! failure stops the connector.

mod assignment;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

use crate::app::Sinks;
use crate::config::Settings;
use crate::format::RecordBatch;
use crate::kafka::{self, ChangeFeed, DeadLetters, Partition};
use crate::metrics::{Health, Metrics};
use crate::pipeline::{KafkaOutputs, Pipeline, TaskError, TaskHandle};
use crate::redis::ClusterHandle;
use crate::region::JsonChanges;

use assignment::Assignments;

/// Batches queued per task before the dispatch loop waits.
const TASK_QUEUE_BATCHES: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("{0}")]
    KafkaConfig(String),
    #[error(transparent)]
    KafkaUnreachable(#[from] kafka::consumer::Unreachable),
    #[error("Kafka client error: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error(
        "{topic}[{partition}] was fenced {restarts} times within {window:?}: another writer keeps taking the \
         partition with newer epochs (two deployments or groups on one topic and region, or a zombie connector); \
         stop the other writer, then restart this connector"
    )]
    FencedRepeatedly { topic: String, partition: i32, restarts: usize, window: std::time::Duration },
}

type Tasks = Arc<Mutex<HashMap<Partition, TaskHandle>>>;

/// Runs until `shutdown` fires (then stops gracefully) or a task fails.
pub async fn run(
    settings: Settings,
    sinks: Sinks,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<(), ConnectorError> {
    kafka::check_properties(&settings.kafka).map_err(ConnectorError::KafkaConfig)?;
    let tasks: Tasks = Arc::default();
    let shutdown_timeout = settings.connector.shutdown_timeout;
    let abort = CancellationToken::new();

    let producing = settings.pipelines.values().any(|p| p.dead_letter_topic().is_some() || p.region.changes.is_some());
    let producer = if producing { Some(kafka::producer(&settings.kafka)?) } else { None };
    let mut by_topic: HashMap<String, Arc<Pipeline>> = HashMap::new();
    for (name, config) in &settings.pipelines {
        let producer = || producer.clone().expect("created when any pipeline produces");
        let outputs =
            KafkaOutputs {
                dead_letters: config
                    .dead_letter_topic()
                    .map(|topic| DeadLetters::new(producer(), topic.to_string(), name.clone())),
                changes: config.region.changes.as_ref().map(|changes| {
                    ChangeFeed::new(producer(), &changes.topic, &config.region.name, Arc::new(JsonChanges))
                }),
            };
        let region = sinks.regions.get(name).cloned().expect("one region per pipeline");
        let pipeline =
            Arc::new(Pipeline::compile(name, &settings, region, sinks.checkpoints.clone(), outputs, &metrics));
        for topic in &config.topics {
            by_topic.insert(topic.clone(), pipeline.clone());
        }
    }

    let high_watermarks: kafka::consumer::HighWatermarks = Arc::default();
    let (assignments, mut failed) =
        Assignments::start(by_topic, high_watermarks.clone(), tasks.clone(), abort.clone(), shutdown_timeout);
    let (on_assign, on_revoke) = assignments.handlers(&metrics, &health);
    let consumer = kafka::consumer::consumer(&settings.kafka, on_assign, on_revoke, high_watermarks)?;
    assignments.set_consumer(&consumer);
    let topics: Vec<String> = settings.pipelines.values().flat_map(|p| p.topics.clone()).collect();
    kafka::consumer::wait_for_brokers(&consumer, &settings.kafka, &topics).await?;
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topic_refs)?;
    health.set_running(true);
    let probe = sinks.redis.clone().map(|handle| {
        tokio::spawn(probe_redis(handle, health.clone(), settings.connector.unready_after_redis_down, shutdown.clone()))
    });
    tracing::info!(group = %settings.kafka.group_id, topics = ?topics, "connector running");

    let poll_batch = settings.connector.poll_batch;
    // A handful of partitions per connector: a linear scan by borrowed
    // topic beats allocating a key String per record for a hash map.
    let mut buffers: Vec<(Partition, RecordBatch)> = Vec::new();
    // One stream for the whole loop: `recv` makes a stream per message,
    // which registers and unregisters a waker under a lock each time.
    let mut messages = consumer.stream();
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            Some(failure) = failed.recv() => {
                if let Err(e) = assignments.restart(&consumer, failure).await {
                    break Err(e);
                }
            }
            Some(message) = messages.next() => {
                let mut polled = 0;
                let mut next = Some(message);
                while let Some(message) = next.take() {
                    match message {
                        Ok(m) => {
                            let (topic, partition) = (m.topic(), m.partition());
                            let at = match buffers.iter().position(|((t, p), _)| *p == partition && t == topic) {
                                Some(at) => at,
                                None => {
                                    buffers.push(((topic.to_string(), partition), RecordBatch::default()));
                                    buffers.len() - 1
                                }
                            };
                            buffers[at].1.push(m.offset(), m.timestamp().to_millis(), m.key(), m.payload());
                        }
                        Err(e) => {
                            metrics.kafka_errors.with_label_values(&["consumer"]).inc();
                            tracing::warn!(error = %e, "Kafka consumer error; librdkafka retries");
                        }
                    }
                    polled += 1;
                    if polled < poll_batch {
                        next = messages.next().now_or_never().flatten();
                    }
                }
                if !dispatch(&mut buffers, &tasks, &shutdown).await {
                    break Ok(());
                }
            }
        }
    };
    drop(messages);
    health.set_running(false);
    if let Some(probe) = probe {
        probe.abort();
    }
    let handles: Vec<TaskHandle> = tasks.lock().expect("task table lock").drain().map(|(_, h)| h).collect();
    if result.is_ok() {
        tracing::info!(partitions = handles.len(), "shutting down: flushing and checkpointing partition tasks");
        assignment::stop_tasks(handles, shutdown_timeout).await;
        // librdkafka also commits stored offsets when the consumer closes.
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Async) {
            tracing::debug!(error = %e, "final offset commit");
        }
    } else {
        abort.cancel();
    }
    leave_group(consumer, LEAVE_GROUP_TIMEOUT).await;
    tracing::info!("connector stopped");
    result
}

/// How long stopping waits for the consumer to leave the group, after
/// `connector.shutdown_timeout`: a deployment's grace period covers both.
pub const LEAVE_GROUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Unsubscribes and closes the consumer (librdkafka's close: the last
/// revoke, the final offset commit, LeaveGroup) on a thread of its own,
/// waiting at most `limit`. With the brokers gone the close waits for
/// requests that time out after `socket.timeout.ms` (a minute by default),
/// and sometimes does not return at all (librdkafka #4519). Nothing of the
/// pipeline's depends on it (tasks have checkpointed, committed offsets are
/// informational, and the group drops a member that left without a word
/// after its session timeout), so stopping does not wait for it longer.
///
/// A detached thread, not `spawn_blocking`: dropping a Tokio runtime waits
/// for its blocking tasks without a bound, so a close that never returns
/// would hold the process (or a test's runtime) forever after `run` had
/// returned. A detached thread ends with the process.
async fn leave_group(consumer: Arc<kafka::consumer::SourceConsumer>, limit: Duration) {
    let (closed, done) = tokio::sync::oneshot::channel();
    // Handed over once the thread runs: should no thread start, the consumer
    // stays here, to be leaked rather than closed on a runtime worker.
    let (hand_over, receive) = std::sync::mpsc::channel::<Arc<kafka::consumer::SourceConsumer>>();
    let spawned = std::thread::Builder::new().name("leave-group".into()).spawn(move || {
        let Ok(mut shared) = receive.recv() else { return };
        shared.unsubscribe();
        // The close runs wherever the last reference drops: wait out the
        // brief holders (log-bound lookups, offset commits) so it runs here.
        let consumer = loop {
            match Arc::try_unwrap(shared) {
                Ok(consumer) => break consumer,
                Err(still_shared) => {
                    shared = still_shared;
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        drop(consumer);
        let _ = closed.send(());
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no thread to close the consumer on; stopping without leaving the group");
        std::mem::forget(consumer);
        return;
    }
    let _ = hand_over.send(consumer);
    if tokio::time::timeout(limit, done).await.is_err() {
        tracing::warn!(
            waited = ?limit,
            "the consumer did not leave the group in time (Kafka unreachable?); stopping without waiting for it"
        );
    }
}

/// Hands each partition's records to its task, waiting while a task's queue
/// is full (backpressure). Returns `false` when shutdown was requested
/// during such a wait: the records not handed over were never processed,
/// so no checkpoint covers them and the partition's next owner replays
/// them; a Redis stall must not hold a shutdown past its timeout.
async fn dispatch(buffers: &mut [(Partition, RecordBatch)], tasks: &Tasks, shutdown: &CancellationToken) -> bool {
    for (partition, records) in buffers.iter_mut().filter(|(_, r)| !r.is_empty()) {
        let sender = tasks.lock().expect("task table lock").get(partition).map(|h| h.records.clone());
        let records = std::mem::take(records);
        match sender {
            // A closed channel means the task just stopped; its successor replays.
            Some(sender) => {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return false,
                    _ = sender.send(records) => {}
                }
            }
            None => {
                tracing::debug!(?partition, "records for a partition without a task dropped; they will be replayed")
            }
        }
    }
    true
}

/// Pings every Redis primary each second; marks the connector unready once
/// they have not all answered for `unready_after`, ready again when they do.
async fn probe_redis(
    handle: Arc<ClusterHandle>,
    health: Arc<Health>,
    unready_after: Duration,
    stop: CancellationToken,
) {
    let mut failing_since: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match handle.ping_primaries().await {
            Ok(()) => {
                if failing_since.take().is_some() {
                    tracing::info!("Redis answers again: ready");
                }
                health.set_redis_down(false);
            }
            Err(e) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= unready_after {
                    if !health.is_ready() {
                        tracing::debug!(error = %e, "Redis still not answering");
                    } else {
                        tracing::warn!(error = %e, down_for = ?since.elapsed(), "Redis not answering: not ready");
                    }
                    health.set_redis_down(true);
                }
            }
        }
    }
}
