//! The dead-letter topic: records that cannot be processed, copied with
//! headers saying where they came from and why.
//!
//! Header names follow Kafka Connect's dead-letter queue
//! (`__connect.errors.*`), which tools and operators already read.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::format::SourceRecord;

pub const HEADER_TOPIC: &str = "__connect.errors.topic";
pub const HEADER_PARTITION: &str = "__connect.errors.partition";
pub const HEADER_OFFSET: &str = "__connect.errors.offset";
pub const HEADER_STAGE: &str = "__connect.errors.stage";
pub const HEADER_REASON: &str = "__connect.errors.exception.message";
pub const HEADER_PIPELINE: &str = "__connect.errors.connector.name";

#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
    pipeline: String,
}

/// Where a dead letter came from.
pub struct Origin<'a> {
    pub topic: &'a str,
    pub partition: i32,
}

impl DeadLetters {
    pub fn new(producer: FutureProducer, topic: String, pipeline: String) -> Self {
        DeadLetters { producer, topic, pipeline }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Produces one dead letter; resolves when the broker acknowledged it.
    pub async fn send(
        &self,
        origin: &Origin<'_>,
        record: &SourceRecord,
        stage: &str,
        reason: &str,
    ) -> Result<(), rdkafka::error::KafkaError> {
        let (partition, offset) = (origin.partition.to_string(), record.offset.to_string());
        let headers = OwnedHeaders::new()
            .insert(Header { key: HEADER_TOPIC, value: Some(origin.topic) })
            .insert(Header { key: HEADER_PARTITION, value: Some(&partition) })
            .insert(Header { key: HEADER_OFFSET, value: Some(&offset) })
            .insert(Header { key: HEADER_STAGE, value: Some(stage) })
            .insert(Header { key: HEADER_REASON, value: Some(reason) })
            .insert(Header { key: HEADER_PIPELINE, value: Some(&self.pipeline) });
        let mut message: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).headers(headers);
        if let Some(key) = record.key.as_deref() {
            message = message.key(key);
        }
        if let Some(payload) = record.payload.as_deref() {
            message = message.payload(payload);
        }
        if let Some(ts) = record.timestamp {
            message = message.timestamp(ts);
        }
        self.producer.send(message, Duration::from_secs(30)).await.map(|_| ()).map_err(|(e, _)| e)
    }
}
