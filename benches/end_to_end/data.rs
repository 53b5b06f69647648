//! The data sets: the standard workloads' records (`support::generate`)
//! spread over partitions, produced into the mock Kafka cluster.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use regionflow::time::Millis;

use crate::support::{self, Raw, BASE_TS};

// Data sets.

pub struct DataSet {
    pub name: &'static str,
    pub topic: String,
    pub raws: Vec<Raw>,
    pub keys: u32,
    pub partitions: i32,
    /// Partition of each raw record.
    pub partition: Vec<i32>,
    /// Offset of each raw record within its partition.
    pub offset: Vec<i64>,
    pub bytes: u64,
}

impl DataSet {
    /// `partitions == 0` picks enough partitions for the mock broker to
    /// keep the whole data set (see [`MOCK_PARTITION_BYTES`]).
    pub fn new(name: &'static str, topic: &str, n: usize, keys: u32, partitions: i32, seed: u64) -> DataSet {
        let raws = support::generate(n, keys, BASE_TS, seed);
        let mut bytes_per_key: std::collections::HashMap<u32, u64> = std::collections::HashMap::new();
        for r in &raws {
            *bytes_per_key.entry(r.user).or_default() += (r.key().len() + r.json().len()) as u64;
        }
        let bytes: u64 = bytes_per_key.values().sum();
        let partitions = if partitions > 0 { partitions } else { auto_partitions(&bytes_per_key) };
        let mut next = vec![0i64; partitions as usize];
        let mut partition = Vec::with_capacity(n);
        let mut offset = Vec::with_capacity(n);
        for r in &raws {
            let p = support::partition_of(&r.key(), partitions);
            partition.push(p);
            offset.push(next[p as usize]);
            next[p as usize] += 1;
        }
        DataSet { name, topic: topic.into(), raws, keys, partitions, partition, offset, bytes }
    }

    pub fn len(&self) -> usize {
        self.raws.len()
    }

    /// One record per partition far ahead in event time: fires every data window.
    fn closing_records(&self, partitions: i32) -> Vec<(i32, Raw)> {
        let ts = BASE_TS + self.len() as Millis + 10 * 60_000;
        (0..partitions)
            .map(|p| {
                // A user that routes to partition `p`, outside the data's key range.
                let user = (self.keys..).find(|u| support::partition_of(&format!("u{u}"), partitions) == p).unwrap();
                (p, Raw { user, ts, cents: 0, page: 0, country: 0 })
            })
            .collect()
    }
}

/// librdkafka's mock broker keeps at most 5 MiB of record batches per
/// partition (`rd_kafka_mock_partition_init`: `max_size`, not configurable)
/// and silently drops the oldest beyond that. Data sets are spread over
/// enough partitions to stay well below it (~20 bytes of batch overhead per
/// record, and slack); `produce` checks that nothing was dropped.
const MOCK_PARTITION_BYTES: u64 = 5 * 1024 * 1024;

/// Eight partitions, more when the data set would not fit: W1 records
/// compress about 4:1 with lz4 (measured: 1M records, 91 MB, fit in 8).
/// A key lives in one partition, so with few keys (the dense workloads)
/// the fullest partition, not the average, decides: the count grows until
/// the keys' bytes, routed by [`support::partition_of`], fit everywhere.
fn auto_partitions(bytes_per_key: &std::collections::HashMap<u32, u64>) -> i32 {
    let ratio = if compression() == "none" { 1.0 } else { 4.0 };
    let per_partition = MOCK_PARTITION_BYTES as f64 * 0.75 * ratio / 1.3;
    let total: u64 = bytes_per_key.values().sum();
    let mut partitions = ((total as f64 / per_partition).ceil() as i32).max(8);
    loop {
        let mut load = vec![0u64; partitions as usize];
        for (user, bytes) in bytes_per_key {
            load[support::partition_of(&format!("u{user}"), partitions) as usize] += bytes;
        }
        if load.iter().all(|&b| b as f64 <= per_partition) || partitions >= 1024 {
            return partitions;
        }
        partitions += (partitions / 8).max(1);
    }
}

/// `BENCH_COMPRESSION`: the producer's `compression.type` (default lz4,
/// which also lets the mock broker keep 1M W1 records in 8 partitions).
fn compression() -> String {
    std::env::var("BENCH_COMPRESSION").unwrap_or_else(|_| "lz4".into())
}

pub fn producer(brokers: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("batch.num.messages", "100000")
        .set("queue.buffering.max.messages", "2000000")
        .set("queue.buffering.max.kbytes", "2097151")
        .set("acks", "1")
        .set("compression.type", compression())
        .create()
        .expect("producer created")
}

pub fn send(producer: &BaseProducer, topic: &str, partition: i32, key: &str, payload: &str) {
    let mut record = BaseRecord::to(topic).partition(partition).key(key).payload(payload);
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((_, returned)) => {
                record = returned;
                producer.poll(Duration::from_millis(5));
            }
        }
    }
}

/// Produces the data set and its closing records; returns records/s.
pub fn produce(brokers: &str, data: &DataSet, partitions: i32) -> f64 {
    let producer = producer(brokers);
    let started = Instant::now();
    for (i, r) in data.raws.iter().enumerate() {
        send(&producer, &data.topic, data.partition[i], &r.key(), &r.json());
        if i % 10_000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(120)).expect("all records acknowledged");
    let rate = data.len() as f64 / started.elapsed().as_secs_f64();
    for (p, r) in data.closing_records(partitions) {
        send(&producer, &data.topic, p, &r.key(), &r.json());
    }
    producer.flush(Duration::from_secs(30)).expect("closing records acknowledged");
    // Nothing may have been dropped by the mock broker's size limit.
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", brokers).create().expect("consumer created");
    let mut expected = vec![1i64; partitions as usize];
    for p in &data.partition {
        expected[*p as usize] += 1;
    }
    for p in 0..partitions {
        let (low, high) =
            consumer.fetch_watermarks(&data.topic, p, Duration::from_secs(10)).expect("partition watermarks");
        assert!(
            low == 0 && high == expected[p as usize],
            "partition {p} holds offsets {low}..{high}, expected 0..{}: the mock broker dropped records \
             (5 MiB per partition); use more partitions (BENCH_PARTITIONS) or fewer events",
            expected[p as usize]
        );
    }
    rate
}
