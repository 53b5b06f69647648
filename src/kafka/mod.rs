//! Everything about Kafka: the group consumer ([`consumer`]), the producer
//! and the topics it writes: dead letters ([`dead_letter`]) and region
//! changes ([`changes`]).

pub mod changes;
pub mod consumer;
pub mod dead_letter;

use rdkafka::config::ClientConfig;
use rdkafka::producer::FutureProducer;

use crate::config::KafkaConfig;

pub use changes::ChangeFeed;
pub use consumer::{Partition, SourceConsumer};
pub use dead_letter::DeadLetters;

/// Adds the brokers and the user's pass-through properties (which win over
/// our defaults), leaving out the keys in `skip`.
pub(crate) fn apply_user_config(config: &mut ClientConfig, kafka: &KafkaConfig, skip: &[&str]) {
    config.set("bootstrap.servers", &kafka.brokers);
    for (key, value) in kafka.properties.iter().filter(|(k, _)| !skip.contains(&k.as_str())) {
        config.set(key, value);
    }
}

/// Checks the pass-through librdkafka properties offline, the way the
/// clients will set them: unknown names, bad values, and features this
/// build lacks are refused with the property's key (and never its value
/// when it holds a secret).
pub fn check_properties(kafka: &KafkaConfig) -> Result<(), String> {
    let mut config = ClientConfig::new();
    apply_user_config(&mut config, kafka, &[]);
    match config.create_native_config() {
        Ok(_) => Ok(()),
        Err(rdkafka::error::KafkaError::ClientConfig(_, description, key, value)) => {
            let description = if crate::config::is_secret_property(&key) && !value.is_empty() {
                description.replace(&value, crate::config::REDACTED)
            } else {
                description
            };
            Err(format!("configuration key `kafka.properties.{key}`: {description}"))
        }
        Err(e) => Err(format!("kafka.properties: {e}")),
    }
}

/// A producer for dead letters and changes (idempotent, so retries neither
/// duplicate nor reorder).
pub fn producer(kafka: &KafkaConfig) -> Result<FutureProducer, rdkafka::error::KafkaError> {
    let mut config = ClientConfig::new();
    config.set("enable.idempotence", "true").set("linger.ms", "5");
    apply_user_config(&mut config, kafka, &CONSUMER_ONLY);
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
