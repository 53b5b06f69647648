//! The source ceiling: a bare librdkafka consumer reading the data set's
//! topic (`BaseConsumer::poll`, no processing).

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, TopicPartitionList};

use crate::data::DataSet;
use crate::report::si;
use crate::support;

#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub events_per_s: f64,
    pub bytes_per_s: f64,
}

/// The source ceiling: a bare consumer over every partition from the
/// start; best of three reads (a read sometimes stalls on a fetch).
pub fn consume_ceiling(brokers: &str, data: &DataSet, partitions: i32) -> Rate {
    let rates: Vec<Rate> = (0..3).map(|i| consume_once(brokers, data, partitions, i)).collect();
    println!(
        "  source ceiling reads: {}",
        rates.iter().map(|r| format!("{}/s", si(r.events_per_s))).collect::<Vec<_>>().join(", ")
    );
    *rates.iter().max_by(|a, b| a.events_per_s.total_cmp(&b.events_per_s)).expect("three reads")
}

fn consume_once(brokers: &str, data: &DataSet, partitions: i32, attempt: usize) -> Rate {
    consume_with(brokers, data, partitions, attempt, "")
}

pub fn consume_with(brokers: &str, data: &DataSet, partitions: i32, attempt: usize, extra: &str) -> Rate {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("ceiling-{}-{attempt}", data.topic))
        .set("enable.auto.commit", "false")
        .set("fetch.queue.backoff.ms", support::FETCH_QUEUE_BACKOFF_MS.to_string());
    for kv in extra.split(';').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').expect("k=v");
        config.set(k, v);
    }
    let consumer: BaseConsumer = config.create().expect("consumer created");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(&data.topic, p, rdkafka::Offset::Beginning).expect("partition added");
    }
    consumer.assign(&tpl).expect("assigned");
    let expected = data.len() + partitions as usize;
    let (mut n, mut bytes) = (0usize, 0u64);
    let mut started = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    while n < expected && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                started.get_or_insert_with(Instant::now);
                n += 1;
                bytes += (m.key().map_or(0, <[u8]>::len) + m.payload().map_or(0, <[u8]>::len)) as u64;
            }
            Some(Err(e)) => eprintln!("  ceiling consumer: {e}"),
            None => {}
        }
    }
    assert_eq!(n, expected, "the ceiling consumer read the whole topic");
    // The first record's poll latency is not part of the rate.
    let elapsed = started.expect("records read").elapsed().as_secs_f64();
    Rate { events_per_s: (n - 1) as f64 / elapsed, bytes_per_s: bytes as f64 / elapsed }
}
