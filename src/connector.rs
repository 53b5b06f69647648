//! The connector: one process, one consumer-group member, running every
//! configured pipeline.
//!
//! Its dispatch loop polls the consumer, groups records by partition and
//! hands each group to that partition's task over a bounded channel (a full
//! channel stops the loop from polling: backpressure reaches Kafka; a
//! shutdown request still ends the wait, and the records not handed over
//! are replayed by the partition's next owner). Inside
//! the rebalance callback it starts a task for each assigned partition
//! (epoch, checkpoint restore, start offset) and, on revoke, closes the
//! task's channel and waits until the task has flushed and checkpointed, so
//! the next owner starts where this one stopped and replays nothing. On
//! shutdown it does the same for every partition, commits, and leaves the
//! group.
//!
//! A task that fails in a way a replay cures (a Redis connection replaced
//! under writes that `WAIT` must vouch for) is restarted in place, as if
//! the partition had been taken over: its fetching stops, a new task takes
//! a new epoch and restores the last checkpoint, and fetching resumes at
//! the checkpoint's offset. Other partitions keep running. Any other task
//! failure stops the connector.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use futures::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::checkpoint::{CheckpointStore, RedisCheckpointStore};
use crate::config::Settings;
use crate::metrics::{Health, Metrics};
use crate::pipeline::{PartitionSource, PartitionTask, Pipeline, Started, TaskError, TaskHandle};
use crate::region::{RedisRegion, Region, RegionError, RegionLayout, SharedConnection};
use crate::source::decode::SourceRecord;
use crate::source::kafka::{self, Partition, SourceConsumer};

/// Batches queued per task before the dispatch loop waits.
const TASK_QUEUE_BATCHES: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error(transparent)]
    KafkaUnreachable(#[from] kafka::Unreachable),
    #[error("Kafka client error: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Region(#[from] RegionError),
    #[error(transparent)]
    Task(#[from] TaskError),
}

type Tasks = Arc<Mutex<HashMap<Partition, TaskHandle>>>;

/// A task that failed to start or stopped with an error: which partition,
/// which incarnation of its task (`None`: it never ran; a revoked and
/// reassigned partition has a newer one), and why.
struct Failure {
    partition: Partition,
    task: Option<tokio::task::Id>,
    error: TaskError,
}
/// The consumer, once created, for the tasks' offset commits (weak: the
/// consumer owns the callbacks that hold this).
type ConsumerSlot = Arc<OnceLock<Weak<SourceConsumer>>>;

/// Where a connector's results and checkpoints go.
pub struct Sinks {
    /// One region per pipeline, by pipeline name.
    pub regions: HashMap<String, Arc<dyn Region>>,
    pub checkpoints: Arc<dyn CheckpointStore>,
}

/// Connects to the Redis Cluster: one region per pipeline and the checkpoint
/// store, all on one cluster connection (so `WAIT` covers region writes).
pub async fn redis_sinks(settings: &Settings) -> Result<Sinks, RegionError> {
    let connection = Arc::new(SharedConnection::connect(&settings.redis).await?);
    let regions = settings
        .pipelines
        .iter()
        .map(|(name, config)| {
            let layout = RegionLayout::new(&settings.redis.key_prefix, config);
            let region = RedisRegion::new(
                connection.clone(),
                layout.spec.clone(),
                settings.redis.write_concurrency,
                settings.redis.write_deadline,
            );
            (name.clone(), Arc::new(region) as Arc<dyn Region>)
        })
        .collect();
    let checkpoints = Arc::new(RedisCheckpointStore::new(
        connection,
        &settings.redis.key_prefix,
        settings.redis.write_deadline,
        settings.redis.replica_timeout,
    ));
    Ok(Sinks { regions, checkpoints })
}

/// Runs until `shutdown` fires (then stops gracefully) or a task fails.
pub async fn run(
    settings: Settings,
    sinks: Sinks,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<(), ConnectorError> {
    let tasks: Tasks = Arc::default();
    let shutdown_timeout = settings.connector.shutdown_timeout;
    let (failures, mut failed) = mpsc::unbounded_channel::<Failure>();
    let abort = CancellationToken::new();

    let dead_letter_producer = if settings.pipelines.values().any(|p| p.dead_letter_topic().is_some()) {
        Some(kafka::producer(&settings.kafka)?)
    } else {
        None
    };
    let mut by_topic: HashMap<String, Arc<Pipeline>> = HashMap::new();
    for (name, config) in &settings.pipelines {
        let dead_letters = config.dead_letter_topic().map(|topic| {
            let producer = dead_letter_producer.clone().expect("created when any pipeline has a dead-letter topic");
            crate::source::dead_letter::DeadLetters::new(producer, topic.to_string(), name.clone())
        });
        let region = sinks.regions.get(name).cloned().expect("one region per pipeline");
        let pipeline =
            Arc::new(Pipeline::new(name, &settings, region, sinks.checkpoints.clone(), dead_letters, metrics.clone()));
        for topic in &config.topics {
            by_topic.insert(topic.clone(), pipeline.clone());
        }
    }

    let slot: ConsumerSlot = Arc::default();
    let high_watermarks: kafka::HighWatermarks = Arc::default();
    let starter = Arc::new(TaskStarter {
        by_topic,
        slot: slot.clone(),
        high_watermarks: high_watermarks.clone(),
        tasks: tasks.clone(),
        failures,
        abort: abort.clone(),
    });
    let runtime = tokio::runtime::Handle::current();
    let on_assign = {
        let (starter, metrics, runtime) = (starter.clone(), metrics.clone(), runtime.clone());
        Arc::new(move |partitions: &[Partition]| {
            metrics.rebalances.with_label_values(&["assign"]).inc();
            // Inside librdkafka's rebalance callback on a runtime worker:
            // hand the worker over while the tasks restore.
            tokio::task::block_in_place(|| runtime.block_on(starter.start(partitions)))
        })
    };
    let on_revoke = {
        let (tasks, metrics) = (tasks.clone(), metrics.clone());
        Arc::new(move |partitions: &[Partition]| {
            metrics.rebalances.with_label_values(&["revoke"]).inc();
            let handles: Vec<TaskHandle> = {
                let mut tasks = tasks.lock().expect("task table lock");
                partitions.iter().filter_map(|p| tasks.remove(p)).collect()
            };
            if !handles.is_empty() {
                tokio::task::block_in_place(|| runtime.block_on(stop_tasks(handles, shutdown_timeout)));
            }
        })
    };
    let consumer = kafka::consumer(&settings.kafka, on_assign, on_revoke, high_watermarks)?;
    let _ = slot.set(Arc::downgrade(&consumer));
    let topics: Vec<String> = settings.pipelines.values().flat_map(|p| p.topics.clone()).collect();
    kafka::wait_for_brokers(&consumer, &settings.kafka, &topics).await?;
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topic_refs)?;
    health.set_ready(true);
    tracing::info!(group = %settings.kafka.group_id, topics = ?topics, "connector running");

    let poll_batch = settings.connector.poll_batch;
    // A handful of partitions per connector: a linear scan by borrowed
    // topic beats allocating a key String per record for a hash map.
    let mut buffers: Vec<(Partition, Vec<SourceRecord>)> = Vec::new();
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            Some(failure) = failed.recv() => {
                if let Err(e) = restart(&consumer, &starter, failure).await {
                    break Err(e);
                }
            }
            message = consumer.recv() => {
                let mut polled = 0;
                let mut next = Some(message);
                while let Some(message) = next.take() {
                    match message {
                        Ok(m) => {
                            let record = SourceRecord {
                                offset: m.offset(),
                                timestamp: m.timestamp().to_millis(),
                                key: m.key().map(<[u8]>::to_vec),
                                payload: m.payload().map(<[u8]>::to_vec),
                            };
                            let (topic, partition) = (m.topic(), m.partition());
                            match buffers.iter_mut().find(|((t, p), _)| *p == partition && t == topic) {
                                Some((_, records)) => records.push(record),
                                None => buffers.push(((topic.to_string(), partition), vec![record])),
                            }
                        }
                        Err(e) => {
                            metrics.kafka_errors.with_label_values(&["consumer"]).inc();
                            tracing::warn!(error = %e, "Kafka consumer error; librdkafka retries");
                        }
                    }
                    polled += 1;
                    if polled < poll_batch {
                        next = consumer.recv().now_or_never();
                    }
                }
                if !dispatch(&mut buffers, &tasks, &shutdown).await {
                    break Ok(());
                }
            }
        }
    };
    health.set_ready(false);
    let handles: Vec<TaskHandle> = tasks.lock().expect("task table lock").drain().map(|(_, h)| h).collect();
    if result.is_ok() {
        tracing::info!(partitions = handles.len(), "shutting down: flushing and checkpointing partition tasks");
        stop_tasks(handles, shutdown_timeout).await;
        // librdkafka also commits stored offsets when the consumer closes.
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Async) {
            tracing::debug!(error = %e, "final offset commit");
        }
    } else {
        abort.cancel();
    }
    consumer.unsubscribe();
    drop(consumer);
    tracing::info!("connector stopped");
    result
}

/// What starting a partition's task needs; shared by the rebalance callback
/// and in-process restarts.
struct TaskStarter {
    by_topic: HashMap<String, Arc<Pipeline>>,
    slot: ConsumerSlot,
    high_watermarks: kafka::HighWatermarks,
    tasks: Tasks,
    failures: mpsc::UnboundedSender<Failure>,
    abort: CancellationToken,
}

impl TaskStarter {
    /// Starts (restores) the tasks of newly assigned partitions; returns the
    /// offset each partition must be read from. A partition whose task
    /// cannot start is reported as a failure (which stops the connector) and
    /// left out.
    async fn start(&self, partitions: &[Partition]) -> Vec<(Partition, Option<i64>)> {
        let starts = partitions.iter().filter_map(|(topic, partition)| {
            let pipeline = self.by_topic.get(topic)?.clone();
            let source = self.source(topic, *partition);
            let span = tracing::info_span!("task", pipeline = %pipeline.name, %topic, partition = *partition);
            Some(async move {
                let started =
                    PartitionTask::start(pipeline.clone(), topic, *partition, source).instrument(span.clone()).await;
                ((topic.clone(), *partition), pipeline, started.map(|s| (s, span)))
            })
        });
        let mut offsets = Vec::new();
        for (key, pipeline, started) in futures::future::join_all(starts).await {
            let (Started { task, seek_to }, span) = match started {
                Ok(started) => started,
                Err(error) => {
                    let _ = self.failures.send(Failure { partition: key, task: None, error });
                    continue;
                }
            };
            let (sender, receiver) = mpsc::channel(TASK_QUEUE_BATCHES);
            let owned = pipeline.metrics.partitions_owned.with_label_values(&[&*pipeline.name]);
            owned.inc();
            let task_failures = pipeline.metrics.errors_total.clone();
            let (failures, abort, partition) = (self.failures.clone(), self.abort.clone(), key.clone());
            let join = tokio::spawn(async move {
                let result = task.run(receiver, abort).instrument(span).await;
                owned.dec();
                if let Err(error) = result {
                    task_failures.inc();
                    let _ = failures.send(Failure { partition, task: Some(tokio::task::id()), error });
                }
            });
            self.tasks.lock().expect("task table lock").insert(key.clone(), TaskHandle { records: sender, join });
            offsets.push((key, seek_to));
        }
        offsets
    }

    /// The task's view of its partition: offset commits through the
    /// consumer, the high watermark from the client statistics.
    fn source(&self, topic: &str, partition: i32) -> PartitionSource {
        let (slot, commit_topic) = (self.slot.clone(), topic.to_string());
        let (high_watermarks, key) = (self.high_watermarks.clone(), (topic.to_string(), partition));
        PartitionSource {
            commit: Box::new(move |next: i64| {
                if let Some(consumer) = slot.get().and_then(Weak::upgrade) {
                    kafka::store_offset(&consumer, &commit_topic, partition, next);
                }
            }),
            high_watermark: Box::new(move || high_watermarks.lock().expect("high watermark lock").get(&key).copied()),
        }
    }
}

/// Handles a task's failure. A restartable one (see
/// [`TaskError::restartable`]) restarts that partition in this process, as a
/// takeover would: stop fetching it, take a new epoch, restore the last
/// checkpoint and read on from its offset; the other partitions keep
/// running. Any other failure stops the connector.
async fn restart(consumer: &SourceConsumer, starter: &TaskStarter, failure: Failure) -> Result<(), ConnectorError> {
    let Failure { partition, task, error } = failure;
    let Some(task) = task.filter(|_| error.restartable()) else {
        return Err(ConnectorError::Task(error));
    };
    let stale = {
        let mut tasks = starter.tasks.lock().expect("task table lock");
        let current = tasks.get(&partition).map(|h| h.join.id());
        if current == Some(task) {
            tasks.remove(&partition);
        }
        current != Some(task)
    };
    if stale {
        // Revoked meanwhile (and maybe assigned again, to a newer task).
        tracing::info!(?partition, error = %error, "failed task's partition has moved on; nothing to restart");
        return Ok(());
    }
    tracing::warn!(?partition, error = %error, "restarting the partition's task from its last checkpoint");
    kafka::pause_assignment(consumer, &partition)?;
    let offsets = starter.start(std::slice::from_ref(&partition)).await;
    kafka::resume_assignment(consumer, &offsets)?;
    Ok(())
}

/// Hands each partition's records to its task, waiting while a task's queue
/// is full (backpressure). Returns `false` when shutdown was requested
/// during such a wait: the records not handed over were never processed,
/// so no checkpoint covers them and the partition's next owner replays
/// them; a Redis stall must not hold a shutdown past its timeout.
async fn dispatch(buffers: &mut [(Partition, Vec<SourceRecord>)], tasks: &Tasks, shutdown: &CancellationToken) -> bool {
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

/// Closes the tasks' channels and waits (bounded) for them to flush.
async fn stop_tasks(handles: Vec<TaskHandle>, timeout: Duration) {
    let joins: Vec<_> = handles
        .into_iter()
        .map(|h| {
            drop(h.records);
            h.join
        })
        .collect();
    if tokio::time::timeout(timeout, futures::future::join_all(joins)).await.is_err() {
        tracing::error!(
            ?timeout,
            "partition tasks did not finish flushing in time; unflushed results will be replayed"
        );
    }
}
