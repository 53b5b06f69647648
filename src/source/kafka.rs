//! The Kafka side: consumer and producer configuration, the rebalance
//! context, and the start-up reachability check.
//!
//! The consumer joins the group with the cooperative-sticky assignor, so a
//! rebalance only moves the partitions that change owner. Offsets are stored
//! explicitly (`enable.auto.offset.store = false`) by the partition tasks
//! once the results they cover are written, and committed by librdkafka's
//! auto-commit, plus synchronously on revoke and shutdown.
//!
//! librdkafka calls the rebalance callbacks from inside `poll`, i.e. from the
//! connector's dispatch loop. On revoke, [`SourceContext`] runs the
//! connector's revoke handler there, before the partitions are released,
//! so tasks can flush first; assignments are passed on to the dispatch loop,
//! which starts their tasks before it dispatches any of their records.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::producer::FutureProducer;
use rdkafka::TopicPartitionList;
use tokio::sync::mpsc;

use crate::config::KafkaConfig;

/// A rebalance, as the dispatch loop sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebalanceEvent {
    Assigned(Vec<(String, i32)>),
}

/// Called on revoke, inside the rebalance, with the partitions about to go.
pub type RevokeHandler = Arc<dyn Fn(&[(String, i32)]) + Send + Sync>;

pub struct SourceContext {
    events: mpsc::UnboundedSender<RebalanceEvent>,
    on_revoke: RevokeHandler,
}

pub type SourceConsumer = StreamConsumer<SourceContext>;

impl ClientContext for SourceContext {}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let partitions = partitions_of(tpl);
            tracing::info!(?partitions, "partitions revoked");
            (self.on_revoke)(&partitions);
            if let Err(e) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
                // Nothing stored yet is a normal case for a fresh group.
                tracing::debug!(error = %e, "offset commit on revoke");
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let partitions = partitions_of(tpl);
                tracing::info!(?partitions, "partitions assigned");
                let _ = self.events.send(RebalanceEvent::Assigned(partitions));
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::error!(error = %e, "rebalance error"),
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect()
}

fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.brokers);
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
    config
}

/// Creates the group consumer and the channel its assignments arrive on.
pub fn consumer(
    kafka: &KafkaConfig,
    on_revoke: RevokeHandler,
) -> Result<(Arc<SourceConsumer>, mpsc::UnboundedReceiver<RebalanceEvent>), rdkafka::error::KafkaError> {
    let (events, receiver) = mpsc::unbounded_channel();
    let mut config = ClientConfig::new();
    config
        .set("group.id", &kafka.group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky");
    for (key, value) in client_config(kafka).config_map() {
        config.set(key, value);
    }
    let consumer: SourceConsumer = config.create_with_context(SourceContext { events, on_revoke })?;
    Ok((Arc::new(consumer), receiver))
}

/// A producer for dead letters (idempotent, so retries do not duplicate).
pub fn producer(kafka: &KafkaConfig) -> Result<FutureProducer, rdkafka::error::KafkaError> {
    let mut config = ClientConfig::new();
    config.set("enable.idempotence", "true").set("linger.ms", "5");
    config.set("bootstrap.servers", &kafka.brokers);
    for (key, value) in kafka.properties.iter().filter(|(k, _)| !CONSUMER_ONLY.contains(&k.as_str())) {
        config.set(key, value);
    }
    config.create()
}

const CONSUMER_ONLY: [&str; 6] = [
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "fetch.min.bytes",
    "fetch.wait.max.ms",
    "group.protocol",
];

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
