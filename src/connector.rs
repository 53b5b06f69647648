//! The connector: one process, one consumer-group member, running every
//! configured pipeline.
//!
//! Its dispatch loop polls the consumer, groups records by partition and
//! hands each group to that partition's task over a bounded channel (a full
//! channel stops the loop from polling: backpressure reaches Kafka). It
//! starts a task when a partition is assigned and, on revoke, closes the
//! task's channel and waits inside the rebalance until the task has flushed
//! and stored its offset, so the next owner starts where this one stopped.
//! On shutdown it does the same for every partition, commits, and leaves
//! the group.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::metrics::{Health, Metrics};
use crate::pipeline::{PartitionTask, Pipeline, TaskError, TaskHandle};
use crate::region::{RedisRegion, Region, RegionError, RegionLayout};
use crate::source::decode::SourceRecord;
use crate::source::kafka::{self, RebalanceEvent, SourceConsumer};

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

type Partition = (String, i32);
type Tasks = Arc<Mutex<HashMap<Partition, TaskHandle>>>;

/// Connects one Redis region per pipeline (sharing one cluster connection).
pub async fn redis_regions(settings: &Settings) -> Result<HashMap<String, Arc<dyn Region>>, RegionError> {
    let redis = RedisRegion::connect(&settings.redis).await?;
    Ok(settings
        .pipelines
        .iter()
        .map(|(name, config)| {
            let layout = RegionLayout::new(&settings.redis.key_prefix, config);
            (name.clone(), Arc::new(redis.for_spec(layout.spec.clone())) as Arc<dyn Region>)
        })
        .collect())
}

/// Runs until `shutdown` fires (then stops gracefully) or a task fails.
pub async fn run(
    settings: Settings,
    regions: HashMap<String, Arc<dyn Region>>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<(), ConnectorError> {
    let tasks: Tasks = Arc::default();
    let shutdown_timeout = settings.connector.shutdown_timeout;
    let on_revoke = {
        let tasks = tasks.clone();
        let metrics = metrics.clone();
        Arc::new(move |partitions: &[Partition]| {
            metrics.rebalances.with_label_values(&["revoke"]).inc();
            let handles: Vec<TaskHandle> = {
                let mut tasks = tasks.lock().expect("task table lock");
                partitions.iter().filter_map(|p| tasks.remove(p)).collect()
            };
            if !handles.is_empty() {
                // Inside librdkafka's rebalance callback on a runtime worker:
                // hand the worker over while the tasks flush.
                tokio::task::block_in_place(|| {
                    tokio::runtime::Handle::current().block_on(stop_tasks(handles, shutdown_timeout))
                });
            }
        })
    };
    let (consumer, mut assignments) = kafka::consumer(&settings.kafka, on_revoke)?;
    let topics: Vec<String> = settings.pipelines.values().flat_map(|p| p.topics.clone()).collect();
    kafka::wait_for_brokers(&consumer, &settings.kafka, &topics).await?;

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
        let region = regions.get(name).cloned().expect("one region per pipeline");
        let pipeline = Arc::new(Pipeline::new(name, &settings, region, dead_letters, metrics.clone()));
        for topic in &config.topics {
            by_topic.insert(topic.clone(), pipeline.clone());
        }
    }

    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topic_refs)?;
    health.set_ready(true);
    tracing::info!(group = %settings.kafka.group_id, topics = ?topics, "connector running");

    let (failures, mut failed) = mpsc::unbounded_channel::<TaskError>();
    let abort = CancellationToken::new();
    let poll_batch = settings.connector.poll_batch;
    let mut buffers: HashMap<Partition, Vec<SourceRecord>> = HashMap::new();
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            Some(error) = failed.recv() => break Err(ConnectorError::Task(error)),
            Some(RebalanceEvent::Assigned(partitions)) = assignments.recv() => {
                metrics.rebalances.with_label_values(&["assign"]).inc();
                start_tasks(&partitions, &by_topic, &consumer, &tasks, &failures, &abort).await?;
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
                            buffers.entry((m.topic().to_string(), m.partition())).or_default().push(record);
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
                // Assignments seen while polling start their tasks before
                // any of their records are handed out.
                while let Ok(RebalanceEvent::Assigned(partitions)) = assignments.try_recv() {
                    metrics.rebalances.with_label_values(&["assign"]).inc();
                    start_tasks(&partitions, &by_topic, &consumer, &tasks, &failures, &abort).await?;
                }
                dispatch(&mut buffers, &tasks).await;
            }
        }
    };
    health.set_ready(false);
    let handles: Vec<TaskHandle> = tasks.lock().expect("task table lock").drain().map(|(_, h)| h).collect();
    if result.is_ok() {
        tracing::info!(partitions = handles.len(), "shutting down: flushing partition tasks");
        stop_tasks(handles, shutdown_timeout).await;
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
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

async fn start_tasks(
    partitions: &[Partition],
    by_topic: &HashMap<String, Arc<Pipeline>>,
    consumer: &Arc<SourceConsumer>,
    tasks: &Tasks,
    failures: &mpsc::UnboundedSender<TaskError>,
    abort: &CancellationToken,
) -> Result<(), ConnectorError> {
    for (topic, partition) in partitions {
        let Some(pipeline) = by_topic.get(topic) else { continue };
        let commit = {
            let (consumer, topic, partition) = (consumer.clone(), topic.clone(), *partition);
            Box::new(move |next: i64| kafka::store_offset(&consumer, &topic, partition, next))
        };
        let task = PartitionTask::start(pipeline.clone(), topic, *partition, commit).await?;
        let (sender, receiver) = mpsc::channel(TASK_QUEUE_BATCHES);
        let owned = pipeline.metrics.partitions_owned.with_label_values(&[&*pipeline.name]);
        owned.inc();
        let failures = failures.clone();
        let abort = abort.clone();
        let join = tokio::spawn(async move {
            let result = task.run(receiver, abort).await;
            owned.dec();
            if let Err(e) = result {
                let _ = failures.send(e);
            }
        });
        tasks
            .lock()
            .expect("task table lock")
            .insert((topic.clone(), *partition), TaskHandle { records: sender, join });
    }
    Ok(())
}

async fn dispatch(buffers: &mut HashMap<Partition, Vec<SourceRecord>>, tasks: &Tasks) {
    for (partition, records) in buffers.iter_mut().filter(|(_, r)| !r.is_empty()) {
        let sender = tasks.lock().expect("task table lock").get(partition).map(|h| h.records.clone());
        let records = std::mem::take(records);
        match sender {
            // A closed channel means the task just stopped; its successor replays.
            Some(sender) => {
                let _ = sender.send(records).await;
            }
            None => {
                tracing::debug!(?partition, "records for a partition without a task dropped; they will be replayed")
            }
        }
    }
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
