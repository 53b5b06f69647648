//! Reading a region's change feed back, and the checks every feed test
//! makes, written from the feed's documented contract (README, "Change
//! feed"), not from the publisher's code:
//!
//! - every message is keyed by its entry and carries `regionflow.version`
//!   and `regionflow.op` headers; an upsert's value is the JSON change, a
//!   delete is a tombstone;
//! - two copies of one (entry, version) are the same change;
//! - the highest version per entry is the region: its fields for an entry
//!   that exists, a delete (or nothing) for one that does not.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientConfig, Message, TopicPartitionList};

use super::kafka::header;
use super::region_watch::Snapshot;

/// One change as read from the topic.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedChange {
    pub partition: i32,
    pub offset: i64,
    pub entry: String,
    pub version: u64,
    /// The public fields; `None` for a delete.
    pub fields: Option<BTreeMap<String, String>>,
}

/// Every message of `topic` up to its end, as it is when called.
pub fn read_to_end(brokers: &str, topic: &str, partitions: i32, timeout: Duration) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("feed-reader-{topic}-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer created");
    let mut ends = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks");
        if high > 0 {
            ends.insert(p, high);
            tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning).expect("partition added");
        }
    }
    if ends.is_empty() {
        return Vec::new();
    }
    consumer.assign(&tpl).expect("assigned");
    let started = Instant::now();
    let mut out = Vec::new();
    let mut reached = BTreeMap::new();
    while reached.len() < ends.len() {
        assert!(
            started.elapsed() < timeout,
            "{topic}: read {} messages, not to the end, within {timeout:?}",
            out.len()
        );
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            if m.offset() + 1 >= ends[&m.partition()] {
                reached.insert(m.partition(), ());
            }
            out.push(m.detach());
        }
    }
    out
}

/// Parses the feed's messages; panics on one that breaks the format.
pub fn parse(messages: &[OwnedMessage], region: &str) -> Vec<FeedChange> {
    messages
        .iter()
        .map(|m| {
            let entry = String::from_utf8(m.key().expect("a change has a key").to_vec()).expect("UTF-8 entry key");
            let version: u64 = header(m, "regionflow.version").expect("version header").parse().expect("version");
            assert_eq!(header(m, "regionflow.region").as_deref(), Some(region), "{entry}: region header");
            let op = header(m, "regionflow.op").expect("op header");
            let fields = match (op.as_str(), m.payload()) {
                ("delete", None) => None,
                ("upsert", Some(value)) => {
                    let v: serde_json::Value = serde_json::from_slice(value).expect("JSON change");
                    assert_eq!(v["entry"], entry.as_str(), "value's entry is the message key");
                    assert_eq!(v["version"], version, "{entry}: value's version is the header's");
                    assert_eq!(v["op"], "upsert");
                    assert_eq!(v["region"], region);
                    let fields: BTreeMap<String, String> =
                        serde_json::from_value(v["fields"].clone()).expect("fields are strings");
                    assert_eq!(
                        fields.get("window_start").map(String::as_str),
                        Some(v["window_start"].to_string().as_str()),
                        "{entry}: window_start"
                    );
                    Some(fields)
                }
                (op, payload) => panic!("{entry}: op {op} with payload {payload:?}"),
            };
            FeedChange { partition: m.partition(), offset: m.offset(), entry, version, fields }
        })
        .collect()
}

/// The changes of a `regionflow region export` to standard output (JSON
/// lines in the feed's format), as if read from the feed.
pub fn parse_export(stdout: &str, region: &str) -> Vec<FeedChange> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, line)| {
            let v: serde_json::Value = serde_json::from_str(line).expect("an exported change is JSON");
            assert_eq!(v["region"], region, "exported region");
            assert_eq!(v["op"], "upsert", "an export holds upserts only");
            FeedChange {
                partition: -1,
                offset: i as i64,
                entry: v["entry"].as_str().expect("entry").to_string(),
                version: v["version"].as_u64().expect("version"),
                fields: Some(serde_json::from_value(v["fields"].clone()).expect("fields are strings")),
            }
        })
        .collect()
}

/// Problems with duplicates: one (entry, version) with two different contents.
pub fn conflicting_duplicates(changes: &[FeedChange]) -> Vec<String> {
    let mut seen: BTreeMap<(&str, u64), &FeedChange> = BTreeMap::new();
    let mut problems = Vec::new();
    for c in changes {
        if let Some(first) = seen.insert((&c.entry, c.version), c) {
            if first.fields != c.fields {
                problems.push(format!(
                    "{} version {}: {:?} at {}@{} but {:?} at {}@{}",
                    c.entry, c.version, first.fields, first.partition, first.offset, c.fields, c.partition, c.offset
                ));
            }
        }
    }
    problems
}

/// Entries whose versions go backwards within their feed partition (in
/// offset order): a repeat of the latest version is a duplicate, not a
/// regression.
pub fn out_of_order(changes: &[FeedChange]) -> Vec<String> {
    let mut sorted: Vec<&FeedChange> = changes.iter().collect();
    sorted.sort_by_key(|c| (c.partition, c.offset));
    let mut last: BTreeMap<&str, &FeedChange> = BTreeMap::new();
    let mut problems = Vec::new();
    for c in sorted {
        if let Some(before) = last.insert(&c.entry, c) {
            if c.version < before.version {
                problems.push(format!(
                    "{}: version {} at {}@{} after version {} at {}@{}",
                    c.entry, c.version, c.partition, c.offset, before.version, before.partition, before.offset
                ));
                last.insert(&c.entry, before);
            }
        }
    }
    problems
}

/// The highest version of every entry.
pub fn latest(changes: &[FeedChange]) -> BTreeMap<String, FeedChange> {
    let mut out: BTreeMap<String, FeedChange> = BTreeMap::new();
    for c in changes {
        if out.get(&c.entry).is_none_or(|seen| c.version > seen.version) {
            out.insert(c.entry.clone(), c.clone());
        }
    }
    out
}

/// The public fields of a region snapshot (partials and version left out).
pub fn public(region: &Snapshot) -> BTreeMap<String, BTreeMap<String, String>> {
    region
        .iter()
        .map(|(key, fields)| {
            let public = fields.iter().filter(|(f, _)| !f.starts_with('_')).map(|(f, v)| (f.clone(), v.clone()));
            (key.clone(), public.collect())
        })
        .collect()
}

/// Differences between the latest change per entry and the region.
pub fn differences_from_region(changes: &[FeedChange], region: &Snapshot) -> Vec<String> {
    let latest = latest(changes);
    let region = public(region);
    let mut problems = Vec::new();
    for (entry, fields) in &region {
        match latest.get(entry) {
            None => problems.push(format!("{entry}: in the region, never in the feed")),
            Some(c) if c.fields.as_ref() != Some(fields) => {
                problems.push(format!("{entry}: region {fields:?}, feed's latest (v{}) {:?}", c.version, c.fields))
            }
            Some(_) => {}
        }
    }
    for (entry, c) in &latest {
        if c.fields.is_some() && !region.contains_key(entry) {
            problems.push(format!("{entry}: feed's latest (v{}) is an upsert, the region has no entry", c.version));
        }
    }
    problems
}
