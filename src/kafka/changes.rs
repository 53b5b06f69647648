//! The change feed: a region's entry changes, produced to a Kafka topic.
//!
//! A task hands each flush's changes to [`ChangeFeed::enqueue`], which puts
//! them in the producer's queue at once (keyed by entry, so one entry's
//! changes stay in one partition and in order) and returns their delivery
//! futures; the task awaits them all before it stores a checkpoint. So a
//! checkpoint never covers a change that Kafka has not acknowledged, and a
//! change whose publication died with its connector is published again when
//! the next owner replays from that checkpoint (the merge function answers
//! a replayed write with the entry's current state and version).
//!
//! The producer is idempotent: librdkafka's retries neither duplicate nor
//! reorder a partition's messages.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use crate::region::{Change, ChangeFormat};

/// One region's change feed.
#[derive(Clone)]
pub struct ChangeFeed {
    producer: FutureProducer,
    topic: Arc<str>,
    region: Arc<str>,
    format: Arc<dyn ChangeFormat>,
}

/// A change in the producer's queue, until Kafka acknowledges it.
pub type Delivery = DeliveryFuture;

impl ChangeFeed {
    pub fn new(producer: FutureProducer, topic: &str, region: &str, format: Arc<dyn ChangeFormat>) -> Self {
        ChangeFeed { producer, topic: topic.into(), region: region.into(), format }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Queues one change for production. `Err(QueueFull)` asks the caller to
    /// await earlier deliveries and try again; other errors are final.
    pub fn enqueue(&self, change: &Change) -> Result<Delivery, KafkaError> {
        let encoded = self.format.encode(&self.region, change);
        let mut headers = OwnedHeaders::new_with_capacity(encoded.headers.len());
        for (key, value) in &encoded.headers {
            headers = headers.insert(Header { key, value: Some(value.as_bytes()) });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.topic).key(encoded.key.as_slice()).headers(headers);
        if let Some(value) = encoded.value.as_deref() {
            record = record.payload(value);
        }
        self.producer.send_result(record).map_err(|(e, _)| e)
    }
}

/// Whether an enqueue failed only because the producer's queue is full.
pub fn is_queue_full(e: &KafkaError) -> bool {
    matches!(e, KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull))
}

/// How long to wait for the queue to drain before retrying an enqueue.
pub const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(10);

/// Awaits deliveries; the first failure is returned (after all have
/// settled), with how many were acknowledged.
pub async fn settle(deliveries: Vec<Delivery>) -> (u64, Result<(), KafkaError>) {
    let mut acknowledged = 0;
    let mut result = Ok(());
    for delivery in deliveries {
        match delivery.await {
            Ok(Ok(_)) => acknowledged += 1,
            Ok(Err((e, _))) => {
                if result.is_ok() {
                    result = Err(e);
                }
            }
            Err(_canceled) => {
                if result.is_ok() {
                    result = Err(KafkaError::Canceled);
                }
            }
        }
    }
    (acknowledged, result)
}
