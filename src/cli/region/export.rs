//! `regionflow region export`: every entry of a region as a change, in
//! the change feed's format (`JsonChanges`), as JSON lines on standard
//! output or as messages to a Kafka topic.

use std::time::Duration;

use anyhow::Context;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::{Region, CHUNK};
use regionflow::config::Settings;
use regionflow::region::read::{Selection, StoredEntry};
use regionflow::region::{ChangeFormat, JsonChanges};

/// Kafka deliveries awaited once this many are in flight.
const IN_FLIGHT: usize = 10_000;

/// Every entry, as upserts at their versions: JSON lines on standard
/// output, or messages to `topic` (every delivery awaited). The export is
/// a scan, not a snapshot: an entry changing meanwhile is exported at the
/// version it was read at, and the feed carries the rest.
pub(super) async fn export(region: &Region, topic: Option<&str>) -> anyhow::Result<()> {
    let producer = match topic {
        Some(topic) => Some(producer_for(&region.settings, topic).await?),
        None => None,
    };
    let names = region.reader.keys(region.keys.prefix()).await?;
    let (mut exported, mut deliveries) = (0usize, Vec::new());
    for chunk in names.chunks(CHUNK) {
        for entry in region.read(chunk, &Selection::all()).await? {
            match (&producer, topic) {
                (Some(producer), Some(topic)) => {
                    deliveries.push(send(producer, topic, &region.name, &entry).await?);
                    if deliveries.len() >= IN_FLIGHT {
                        await_deliveries(&mut deliveries, topic).await?;
                    }
                }
                _ => println!("{}", JsonChanges.to_json(&region.name, &entry.change)),
            }
            exported += 1;
        }
    }
    match topic {
        Some(topic) => {
            await_deliveries(&mut deliveries, topic).await?;
            eprintln!("exported {exported} entries of region `{}` to topic `{topic}`", region.name);
        }
        None => eprintln!("exported {exported} entries of region `{}`", region.name),
    }
    Ok(())
}

/// The change-feed producer (`kafka.*` settings), once `topic` is known
/// to exist: a missing topic would otherwise hold every message until
/// librdkafka's message timeout.
async fn producer_for(settings: &Settings, topic: &str) -> anyhow::Result<FutureProducer> {
    let producer = regionflow::kafka::producer(&settings.kafka).context("creating the Kafka producer")?;
    let timeout = settings.kafka.startup_timeout.min(crate::INTERACTIVE_TIMEOUT);
    let client = producer.clone();
    let owned = topic.to_string();
    let metadata = tokio::task::spawn_blocking(move || client.client().fetch_metadata(Some(&owned), timeout))
        .await
        .expect("metadata lookup does not panic")
        .with_context(|| format!("cannot reach Kafka at {} within {timeout:?}", settings.kafka.brokers))?;
    match metadata.topics().iter().find(|t| t.name() == topic) {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(producer),
        Some(t) => anyhow::bail!("topic `{topic}` is not available: {:?}; create it first", t.error()),
        None => anyhow::bail!("topic `{topic}` does not exist; create it first"),
    }
}

type Delivery = rdkafka::producer::DeliveryFuture;

/// Queues one entry's message (waiting while librdkafka's queue is full).
async fn send(producer: &FutureProducer, topic: &str, region: &str, entry: &StoredEntry) -> anyhow::Result<Delivery> {
    let encoded = JsonChanges.encode(region, &entry.change);
    let headers = encoded
        .headers
        .iter()
        .fold(OwnedHeaders::new(), |headers, (key, value)| headers.insert(Header { key, value: Some(value) }));
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).key(encoded.key.as_slice()).headers(headers);
    if let Some(value) = &encoded.value {
        record = record.payload(value.as_slice());
    }
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err((e, _)) => return Err(e).with_context(|| format!("producing to topic `{topic}`")),
        }
    }
}

async fn await_deliveries(deliveries: &mut Vec<Delivery>, topic: &str) -> anyhow::Result<()> {
    for delivery in deliveries.drain(..) {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => {
                return Err(e).with_context(|| format!("a message to topic `{topic}` was not delivered"))
            }
            Err(_) => anyhow::bail!("the producer dropped a message to topic `{topic}`"),
        }
    }
    Ok(())
}
