//! A real Kafka-protocol broker for tests: librdkafka's mock cluster,
//! listening on loopback TCP ports, with helpers to produce a data set and
//! read a topic back. The free functions work on any brokers (the
//! container lane's Apache Kafka too).

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::{Message, TopicPartitionList};

pub struct Kafka {
    pub cluster: MockCluster<'static, DefaultProducerContext>,
    pub brokers: String,
}

/// One record to produce, to an explicit partition so tests know each
/// partition's order.
#[derive(Debug, Clone)]
pub struct Produce {
    pub partition: i32,
    pub key: Option<String>,
    pub value: Vec<u8>,
}

impl Kafka {
    /// Starts a three-broker mock cluster with the given topics.
    pub fn start(topics: &[(&str, i32)]) -> Kafka {
        super::report_panics_at_once();
        let cluster = MockCluster::new(3).expect("librdkafka mock cluster starts");
        for (topic, partitions) in topics {
            cluster.create_topic(topic, *partitions, 1).expect("topic created");
        }
        let brokers = cluster.bootstrap_servers();
        Kafka { cluster, brokers }
    }

    pub fn producer(&self) -> FutureProducer {
        producer(&self.brokers)
    }

    /// Produces every record and waits for all acknowledgements.
    pub async fn produce(&self, topic: &str, records: &[Produce]) {
        produce(&self.brokers, topic, records).await
    }

    /// Reads `topic` from the beginning until `expected` records arrived or
    /// `timeout` passed; returns what it read.
    /// The group's committed offset of one partition (`None`: nothing
    /// committed), read the way a lag monitor reads it.
    pub fn committed(&self, group: &str, topic: &str, partition: i32) -> Option<i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", group)
            .create()
            .expect("consumer");
        let mut wanted = TopicPartitionList::new();
        wanted.add_partition(topic, partition);
        let answer = consumer.committed_offsets(wanted, Duration::from_secs(10)).expect("OffsetFetch answers");
        let offset = answer.find_partition(topic, partition).expect("asked for it").offset();
        offset.to_raw().filter(|o| *o >= 0)
    }

    pub fn read_topic(&self, topic: &str, partitions: i32, expected: usize, timeout: Duration) -> Vec<OwnedMessage> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", format!("reader-{topic}-{}", std::process::id()))
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer created");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning).expect("partition added");
        }
        consumer.assign(&tpl).expect("assigned");
        let started = Instant::now();
        let mut out = Vec::new();
        while out.len() < expected && started.elapsed() < timeout {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                out.push(m.detach());
            }
        }
        // A little longer, to catch records beyond the expected count.
        let extra = Instant::now();
        while extra.elapsed() < Duration::from_millis(500) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
                out.push(m.detach());
            }
        }
        out
    }
}

/// An idempotent producer to `brokers`.
pub fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        // Back within half a second of a broker's return (librdkafka's
        // default backoff grows to 10 s): the chaos tests' producer stalls
        // every partition while one broker is down, and that stall must stay
        // below the pipelines' idle_timeout, or idle partitions' watermarks
        // move on and the records after it are rightly late.
        .set("reconnect.backoff.max.ms", "500")
        .create()
        .expect("producer created")
}

/// Produces every record to `topic` on `brokers` and waits for all acknowledgements.
pub async fn produce(brokers: &str, topic: &str, records: &[Produce]) {
    let producer = producer(brokers);
    let mut deliveries = Vec::with_capacity(records.len());
    for r in records {
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).partition(r.partition).payload(&r.value);
        if let Some(key) = &r.key {
            record = record.key(key.as_str());
        }
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    break;
                }
                Err((_, returned)) => {
                    record = returned;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    for d in deliveries {
        d.await.expect("delivery not cancelled").expect("record acknowledged by the broker");
    }
}

/// Creates topics (name, partitions; replication factor 1) on a real
/// broker, retrying until it accepts them or `timeout` passes; a topic that
/// already exists is fine.
pub async fn create_topics(brokers: &str, topics: &[(&str, i32)], timeout: Duration) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().expect("admin client created");
    let new_topics: Vec<NewTopic<'_>> =
        topics.iter().map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1))).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let started = Instant::now();
    loop {
        let problem = match admin.create_topics(&new_topics, &options).await {
            Ok(results) => {
                let failed: Vec<String> = results
                    .into_iter()
                    .filter_map(|r| match r {
                        Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => None,
                        Err((topic, code)) => Some(format!("{topic}: {code}")),
                    })
                    .collect();
                if failed.is_empty() {
                    return;
                }
                failed.join(", ")
            }
            Err(e) => e.to_string(),
        };
        assert!(started.elapsed() < timeout, "cannot create topics on {brokers} within {timeout:?}: {problem}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    use rdkafka::message::Headers;
    let headers = message.headers()?;
    headers.iter().find(|h| h.key == name).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
}
