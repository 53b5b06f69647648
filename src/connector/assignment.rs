//! Assignments: starting and stopping partition tasks as the group moves
//! partitions, and restarting a task in place.
//!
//! librdkafka calls the rebalance callback inside the consumer's poll. The
//! callback ([`Assignments::handlers`]) only forwards the event to an async
//! task over a channel and waits for its answer: that task starts the
//! assigned partitions' tasks (epoch, checkpoint restore: Redis I/O in
//! async code) and returns their start offsets, or stops the revoked
//! partitions' tasks (flush, checkpoint). Waiting keeps the protocol's
//! guarantees: partitions are assigned at their restored offsets, and
//! released only after their last checkpoint.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{ConnectorError, Tasks, TASK_QUEUE_BATCHES};
use crate::kafka::consumer::{self, AssignHandler, HighWatermarks, RevokeHandler};
use crate::kafka::{Partition, SourceConsumer};
use crate::metrics::{Health, Metrics};
use crate::pipeline::{PartitionSource, PartitionTask, Pipeline, Started, TaskError, TaskHandle};

/// A task that failed to start or stopped with an error: which partition,
/// which incarnation of its task (`None`: it never ran; a revoked and
/// reassigned partition has a newer one), and why.
pub struct Failure {
    partition: Partition,
    task: Option<tokio::task::Id>,
    error: TaskError,
    /// Set on a fenced failure handed back after [`FENCED_GRACE`].
    deferred: bool,
}

/// How long a fenced partition waits before its restart: a zombie (paused
/// past its session timeout) learns from the group, meanwhile, that the
/// partition is no longer its own, instead of taking it back with a newer
/// epoch and fencing its successor in turn.
const FENCED_GRACE: Duration = Duration::from_secs(1);

/// The consumer, once created, for the tasks' offset commits (weak: the
/// consumer owns the callbacks that hold this).
type ConsumerSlot = Arc<OnceLock<Weak<SourceConsumer>>>;

/// A rebalance event, forwarded from the callback with where to answer.
enum Event {
    Assigned(Vec<Partition>, oneshot::Sender<Vec<(Partition, Option<i64>)>>),
    Revoked(Vec<Partition>, oneshot::Sender<()>),
}

/// Fenced restarts of one partition allowed within [`FENCED_WINDOW`]
/// before the connector gives up: each restart takes a new epoch, so a few
/// climb past increments that a Redis failover lost; more mean another
/// writer keeps taking the partition.
const FENCED_RESTARTS: usize = 10;
const FENCED_WINDOW: Duration = Duration::from_secs(300);

/// How long a task waits for a partition leader's answer about its log.
const LOG_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Assignments {
    starter: Arc<TaskStarter>,
    events: mpsc::UnboundedSender<Event>,
    /// Recent fenced restarts, per partition.
    fenced: std::sync::Mutex<HashMap<Partition, Vec<std::time::Instant>>>,
}

impl Assignments {
    /// Starts the task that acts on rebalance events; failures of the
    /// partition tasks it starts arrive on the returned receiver.
    pub fn start(
        by_topic: HashMap<String, Arc<Pipeline>>,
        high_watermarks: HighWatermarks,
        tasks: Tasks,
        abort: CancellationToken,
        shutdown_timeout: Duration,
    ) -> (Assignments, mpsc::UnboundedReceiver<Failure>) {
        let (failures, failed) = mpsc::unbounded_channel();
        let starter = Arc::new(TaskStarter {
            by_topic,
            slot: Arc::default(),
            high_watermarks,
            tasks: tasks.clone(),
            failures,
            abort,
        });
        let (events, mut received) = mpsc::unbounded_channel::<Event>();
        let acting = starter.clone();
        tokio::spawn(async move {
            while let Some(event) = received.recv().await {
                match event {
                    Event::Assigned(partitions, reply) => {
                        let _ = reply.send(acting.start(&partitions).await);
                    }
                    Event::Revoked(partitions, reply) => {
                        let handles: Vec<TaskHandle> = {
                            let mut tasks = tasks.lock().expect("task table lock");
                            partitions.iter().filter_map(|p| tasks.remove(p)).collect()
                        };
                        stop_tasks(handles, shutdown_timeout).await;
                        let _ = reply.send(());
                    }
                }
            }
        });
        (Assignments { starter, events, fenced: Default::default() }, failed)
    }

    pub fn set_consumer(&self, consumer: &Arc<SourceConsumer>) {
        let _ = self.starter.slot.set(Arc::downgrade(consumer));
    }

    /// The rebalance callbacks: forward, count, and wait for the answer.
    pub fn handlers(&self, metrics: &Arc<Metrics>, health: &Arc<Health>) -> (AssignHandler, RevokeHandler) {
        let (events, metrics_assign, health) = (self.events.clone(), metrics.clone(), health.clone());
        let on_assign: AssignHandler = Arc::new(move |partitions: &[Partition]| {
            metrics_assign.rebalances.with_label_values(&["assign"]).inc();
            health.restoring(partitions.len());
            let (reply, answer) = oneshot::channel();
            let offsets = if events.send(Event::Assigned(partitions.to_vec(), reply)).is_err() {
                Vec::new()
            } else {
                // Inside librdkafka's callback on a runtime worker: hand the
                // worker over while the tasks restore.
                tokio::task::block_in_place(|| answer.blocking_recv()).unwrap_or_default()
            };
            health.restored(partitions.len());
            offsets
        });
        let (events, metrics) = (self.events.clone(), metrics.clone());
        let on_revoke: RevokeHandler = Arc::new(move |partitions: &[Partition]| {
            metrics.rebalances.with_label_values(&["revoke"]).inc();
            let (reply, answer) = oneshot::channel();
            if events.send(Event::Revoked(partitions.to_vec(), reply)).is_ok() {
                let _ = tokio::task::block_in_place(|| answer.blocking_recv());
            }
        });
        (on_assign, on_revoke)
    }

    /// Handles a task's failure. A restartable one (see
    /// [`TaskError::restartable`]) restarts that partition in this process, as a
    /// takeover would: stop fetching it, take a new epoch, restore the last
    /// checkpoint and read on from its offset; the other partitions keep
    /// running. Any other failure stops the connector.
    pub async fn restart(&self, consumer: &SourceConsumer, failure: Failure) -> Result<(), ConnectorError> {
        let starter = &self.starter;
        if matches!(failure.error, TaskError::Fenced { .. }) && !failure.deferred {
            let failures = self.starter.failures.clone();
            tokio::spawn(async move {
                tokio::time::sleep(FENCED_GRACE).await;
                let _ = failures.send(Failure { deferred: true, ..failure });
            });
            return Ok(());
        }
        let Failure { partition, task, error, .. } = failure;
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
        if let TaskError::Fenced { .. } = error {
            let mut fenced = self.fenced.lock().expect("fenced restarts lock");
            let recent = fenced.entry(partition.clone()).or_default();
            recent.retain(|at| at.elapsed() < FENCED_WINDOW);
            recent.push(std::time::Instant::now());
            if recent.len() > FENCED_RESTARTS {
                return Err(ConnectorError::FencedRepeatedly {
                    topic: partition.0.clone(),
                    partition: partition.1,
                    restarts: FENCED_RESTARTS,
                    window: FENCED_WINDOW,
                });
            }
        }
        tracing::warn!(?partition, error = %error, "restarting the partition's task from its last checkpoint");
        if let Err(e) = consumer::pause_assignment(consumer, &partition) {
            // A zombie's fenced partition has usually been taken from it by
            // the group already: nothing of ours to restart there.
            tracing::info!(?partition, error = %e, "the failed task's partition is no longer assigned here");
            return Ok(());
        }
        let offsets = starter.start(std::slice::from_ref(&partition)).await;
        // Looks up committed offsets (a blocking call) for a partition
        // without a checkpoint.
        if let Err(e) = tokio::task::block_in_place(|| consumer::resume_assignment(consumer, &offsets)) {
            // Revoked while the task restored: the group moved it on.
            tracing::info!(?partition, error = %e, "the restarted partition is no longer assigned here");
        }
        Ok(())
    }
}

/// What starting a partition's task needs; shared by assignments and
/// in-process restarts.
struct TaskStarter {
    by_topic: HashMap<String, Arc<Pipeline>>,
    slot: ConsumerSlot,
    high_watermarks: HighWatermarks,
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
        {
            // Statistics from an earlier assignment of these partitions
            // would look like logs that end before a newer checkpoint.
            let mut logs = self.high_watermarks.lock().expect("high watermark lock");
            for partition in partitions {
                logs.remove(partition);
            }
        }
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
                    let _ = self.failures.send(Failure { partition: key, task: None, error, deferred: false });
                    continue;
                }
            };
            let (sender, receiver) = mpsc::channel(TASK_QUEUE_BATCHES);
            let owned = pipeline.metrics.partitions_owned();
            owned.inc();
            let metrics = pipeline.metrics.clone();
            let (failures, abort, partition) = (self.failures.clone(), self.abort.clone(), key.clone());
            let join = tokio::spawn(async move {
                let result = task.run(receiver, abort).instrument(span).await;
                owned.dec();
                if let Err(error) = result {
                    metrics.task_failed();
                    let _ = failures.send(Failure { partition, task: Some(tokio::task::id()), error, deferred: false });
                }
            });
            self.tasks.lock().expect("task table lock").insert(key.clone(), TaskHandle { records: sender, join });
            offsets.push((key, seek_to));
        }
        offsets
    }

    /// The task's view of its partition: offset commits through the
    /// consumer, the log bounds from the client statistics or, to confirm
    /// them, from the partition's leader.
    fn source(&self, topic: &str, partition: i32) -> PartitionSource {
        let (slot, commit_topic) = (self.slot.clone(), topic.to_string());
        let (high_watermarks, key) = (self.high_watermarks.clone(), (topic.to_string(), partition));
        let (query_slot, query_topic) = (self.slot.clone(), topic.to_string());
        PartitionSource {
            commit: Box::new(move |next: i64| {
                if let Some(consumer) = slot.get().and_then(Weak::upgrade) {
                    consumer::store_offset(&consumer, &commit_topic, partition, next);
                }
            }),
            log: Box::new(move || high_watermarks.lock().expect("high watermark lock").get(&key).copied()),
            query_log: Box::new(move || {
                let consumer = query_slot.get().cloned().unwrap_or_default();
                consumer::query_log_bounds(consumer, query_topic.clone(), partition, LOG_QUERY_TIMEOUT).boxed()
            }),
        }
    }
}

/// Closes the tasks' channels and waits (bounded) for them to flush and
/// checkpoint; tasks still running after `timeout` are aborted, so none
/// outlives its partition (their unflushed results are replayed by the
/// partition's next owner).
pub async fn stop_tasks(handles: Vec<TaskHandle>, timeout: Duration) {
    let mut joins: Vec<_> = handles
        .into_iter()
        .map(|h| {
            drop(h.records);
            h.join
        })
        .collect();
    let all = futures::future::join_all(joins.iter_mut());
    if tokio::time::timeout(timeout, all).await.is_err() {
        let running = joins.iter().filter(|j| !j.is_finished()).count();
        tracing::error!(
            ?timeout,
            running,
            "partition tasks did not finish flushing in time; aborted, their unflushed results will be replayed"
        );
        for join in &joins {
            join.abort();
        }
    }
}
