//! `RedisRegion::write` on a real Redis Cluster. A batch spread over every
//! primary, with entries that are applied, fenced and stale, amendments
//! after an entry's first write, merges first and deletions, reports each
//! outcome as the merge function decided it and leaves every entry as
//! writing one command at a time would: on the pipelined path, after the
//! function was flushed from the nodes (on both paths: "Function not
//! found" loads it again), and when a slot moved to another
//! primary behind the writer's back (MOVED: the pipeline is resent and its
//! writes retried one by one, so some run two or three times).
//!
//! Needs `redis-server`/`redis-cli` (Redis 7) on PATH; on Debian run
//! `scripts/setup-test-deps.sh`.

use crate::common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::redis_cluster::RedisCluster;
use redis::AsyncCommands;
use regionflow::metrics::Metrics;
use regionflow::redis::{ClusterHandle, RedisRegion};
use regionflow::region::{Capture, EntryWrite, Expiry, Region, WriteMode, WriteOutcome};
use regionflow::window::{Accumulator, AggregateFunction, Window};

const WINDOW: Window = Window { start: 1_700_000_000_000, end: 1_700_000_010_000 };
const AGGREGATES: [(AggregateFunction, &str); 2] = [(AggregateFunction::Count, "n"), (AggregateFunction::Sum, "total")];

fn write(key: &str, epoch: u64, offset: i64, mode: WriteMode, count: u64, sum: f64) -> EntryWrite {
    EntryWrite {
        key: format!("rf:test:{key}"),
        group: "g".into(),
        field: "_p:orders:0".into(),
        epoch,
        offset,
        mode,
        accumulators: vec![Accumulator::Count(count), Accumulator::Sum(sum)],
        window: WINDOW,
        expiry: Expiry::Never,
        capture: Capture::None,
        vouched: None,
    }
}

/// The payload a batch sends, computed independently of the writer: key,
/// partial field and the partial's JSON text (`{"a":[count,sum],"e":..,"o":..}`).
fn payload_bytes(writes: &[EntryWrite]) -> u64 {
    writes
        .iter()
        .map(|w| {
            let [Accumulator::Count(count), Accumulator::Sum(sum)] = &w.accumulators[..] else {
                panic!("count and sum: {w:?}")
            };
            let partial = format!("{{\"a\":[{count},{sum:?}],\"e\":{},\"o\":{}}}", w.epoch, w.offset);
            (w.key.len() + w.field.len() + partial.len()) as u64
        })
        .sum()
}

async fn region(cluster: &RedisCluster) -> (Arc<ClusterHandle>, RedisRegion) {
    let config = common::redis_config(cluster.urls(), 16);
    let connection = Arc::new(ClusterHandle::connect(&config).await.expect("cluster"));
    let metrics = Metrics::new().redis_region("test");
    let region = RedisRegion::new(connection.clone(), "test", AGGREGATES, 16, Duration::from_secs(30), metrics);
    (connection, region)
}

async fn entry(connection: &ClusterHandle, key: &str) -> HashMap<String, String> {
    let (_, mut c) = connection.get();
    c.hgetall(format!("rf:test:{key}")).await.expect("HGETALL")
}

const KEYS: usize = 2500;

/// Entries written before the batch: owned by a newer epoch (fenced in the
/// batch) or already at a later offset (stale in the batch).
fn seed_writes(prefix: &str) -> Vec<EntryWrite> {
    (0..KEYS)
        .filter_map(|i| match i % 10 {
            1 => Some(write(&format!("{prefix}{i}"), 9, 100, WriteMode::Replace, 1, 1.5)),
            2 => Some(write(&format!("{prefix}{i}"), 3, 900, WriteMode::Replace, 2, 2.5)),
            _ => None,
        })
        .collect()
}

/// The batch, and the outcome writing it one command at a time gives.
fn batch_writes(prefix: &str) -> (Vec<EntryWrite>, WriteOutcome) {
    let mut batch = Vec::new();
    let mut expected = WriteOutcome::default();
    for i in 0..KEYS {
        let key = format!("{prefix}{i}");
        match i % 10 {
            1 => {
                batch.push(write(&key, 3, 500, WriteMode::Replace, 5, 0.25));
                expected.fenced += 1;
            }
            2 => {
                batch.push(write(&key, 3, 500, WriteMode::Replace, 5, 0.25));
                expected.stale += 1;
            }
            3 => {
                // Amendments after the entry's first write, the last one at
                // an offset already applied (a replayed one: stale).
                batch.push(write(&key, 3, 500, WriteMode::Replace, 5, 0.25));
                batch.push(write(&key, 3, 501, WriteMode::Merge, 1, 0.5));
                batch.push(write(&key, 3, 502, WriteMode::Merge, 1, 0.125));
                batch.push(write(&key, 3, 502, WriteMode::Merge, 1, 100.0));
                expected.applied += 3;
                expected.stale += 1;
            }
            4 => {
                // A merge first, then a replace.
                batch.push(write(&key, 3, 500, WriteMode::Merge, 1, 0.5));
                batch.push(write(&key, 3, 501, WriteMode::Replace, 7, 7.75));
                expected.applied += 2;
            }
            5 => {
                batch.push(write(&key, 3, 500, WriteMode::Delete, 0, 0.0));
                expected.applied += 1;
            }
            _ => {
                batch.push(write(&key, 3, 500, WriteMode::Replace, 5, 0.25));
                expected.applied += 1;
            }
        }
    }
    expected.bytes = payload_bytes(&batch);
    (batch, expected)
}

fn fields(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn with_partial(count: u64, sum: f64, epoch: u64, offset: i64, n: &str, total: &str) -> HashMap<String, String> {
    let partial = format!("{{\"a\":[{count},{sum:?}],\"e\":{epoch},\"o\":{offset}}}");
    fields(&[
        ("window_start", "1700000000000"),
        ("window_end", "1700000010000"),
        ("_p:orders:0", &partial),
        ("n", n),
        ("total", total),
    ])
}

/// Entry `i` of `batch_writes(prefix)` after the seed and the batch.
fn expected_entry(i: usize) -> HashMap<String, String> {
    match i % 10 {
        1 => with_partial(1, 1.5, 9, 100, "1", "1.5"),
        2 => with_partial(2, 2.5, 3, 900, "2", "2.5"),
        // merge.lua writes a merged partial in e/o/a order.
        3 => fields(&[
            ("window_start", "1700000000000"),
            ("window_end", "1700000010000"),
            ("_p:orders:0", "{\"e\":3,\"o\":502,\"a\":[7,0.875]}"),
            ("n", "7"),
            ("total", "0.875"),
        ]),
        4 => with_partial(7, 7.75, 3, 501, "7", "7.75"),
        // Deleted: only the retraction's fence stays, as a tombstone.
        5 => fields(&[("_f:orders:0", "3")]),
        _ => with_partial(5, 0.25, 3, 500, "5", "0.25"),
    }
}

async fn assert_entries(connection: &ClusterHandle, prefix: &str) {
    for i in (0..KEYS).step_by(7).chain(10..20) {
        assert_eq!(entry(connection, &format!("{prefix}{i}")).await, expected_entry(i), "{prefix}{i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_outcomes_and_entries_are_per_write() {
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let (connection, region) = region(&cluster).await;
    let slots = connection.slot_map().await.expect("a slot map from CLUSTER SLOTS");
    assert_eq!(slots.primaries(), 3, "{slots:?}");

    let seed = seed_writes("k");
    let seeded = region.write(&seed).await.expect("seed");
    assert_eq!(
        seeded,
        WriteOutcome { applied: seed.len() as u64, bytes: payload_bytes(&seed), ..WriteOutcome::default() }
    );
    let (batch, expected) = batch_writes("k");
    // No retry: every write went in a pipeline, or after its entry's first.
    assert_eq!(region.write(&batch).await.expect("batch"), expected);
    assert_entries(&connection, "k").await;

    // The function gone from every node: the pipelines load it again.
    let flush = || {
        for port in cluster.primary_ports() {
            cluster.node_cmd(port, &["FUNCTION", "FLUSH"]);
        }
    };
    flush();
    let seed = seed_writes("n");
    assert_eq!(region.write(&seed).await.expect("seed").applied, seed.len() as u64);
    let (batch, expected) = batch_writes("n");
    assert_eq!(region.write(&batch).await.expect("batch after FUNCTION FLUSH"), expected);
    assert_entries(&connection, "n").await;

    // Gone again, and a batch of entries whose first write is a merge,
    // which only the per-entry path writes: it loads the function too.
    flush();
    let (batch, _) = batch_writes("m");
    let merge_first: Vec<EntryWrite> = batch
        .into_iter()
        .filter(|w| w.key.trim_start_matches("rf:test:m").parse::<usize>().unwrap() % 10 == 4)
        .collect();
    let outcome = region.write(&merge_first).await.expect("merges first after FUNCTION FLUSH");
    let bytes = payload_bytes(&merge_first);
    assert_eq!(outcome, WriteOutcome { applied: merge_first.len() as u64, bytes, ..WriteOutcome::default() });
    for i in (4..KEYS).step_by(10).take(20) {
        assert_eq!(entry(&connection, &format!("m{i}")).await, expected_entry(i), "m{i}");
    }
}

fn int(value: &redis::Value) -> i64 {
    match value {
        redis::Value::Int(i) => *i,
        other => panic!("expected an integer, got {other:?}"),
    }
}

fn text(value: redis::Value) -> String {
    match value {
        redis::Value::BulkString(b) => String::from_utf8(b).expect("UTF-8"),
        redis::Value::SimpleString(s) => s,
        other => panic!("expected a string, got {other:?}"),
    }
}

/// The primary port serving `slot`.
fn owner(cluster: &RedisCluster, slot: i64) -> u16 {
    let port = cluster.primary_ports()[0];
    let redis::Value::Array(ranges) = cluster.node_cmd(port, &["CLUSTER", "SLOTS"]) else { panic!("CLUSTER SLOTS") };
    for range in ranges {
        let redis::Value::Array(range) = range else { continue };
        let redis::Value::Array(node) = &range[2] else { continue };
        if (int(&range[0])..=int(&range[1])).contains(&slot) {
            return int(&node[1]) as u16;
        }
    }
    panic!("no primary serves slot {slot}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_slot_is_ridden_through_with_the_same_outcomes() {
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let (connection, region) = region(&cluster).await;
    let seed = seed_writes("k");
    assert_eq!(region.write(&seed).await.expect("seed").applied, seed.len() as u64);

    // An empty slot of some primary (written in the batch by a plain
    // replace) moves to another one; the writer's slot map still says the
    // first.
    let (moved, slot, from) = (0..)
        .map(|i| format!("moved{i}"))
        .find_map(|key| {
            let slot =
                int(&cluster.node_cmd(cluster.primary_ports()[0], &["CLUSTER", "KEYSLOT", &format!("rf:test:{key}")]));
            let from = owner(&cluster, slot);
            let keys = int(&cluster.node_cmd(from, &["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]));
            (keys == 0).then_some((key, slot, from))
        })
        .expect("an empty slot");
    let to = *cluster.primary_ports().iter().find(|&&p| p != from).expect("another primary");
    let (from_id, to_id) =
        (text(cluster.node_cmd(from, &["CLUSTER", "MYID"])), text(cluster.node_cmd(to, &["CLUSTER", "MYID"])));
    let slot = slot.to_string();
    cluster.node_cmd(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
    cluster.node_cmd(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]);
    cluster.node_cmd(to, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
    cluster.node_cmd(from, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
    assert_eq!(owner(&cluster, slot.parse().expect("slot")), to);

    let (mut batch, mut expected) = batch_writes("k");
    batch.push(write(&moved, 3, 500, WriteMode::Replace, 5, 0.25));
    expected.applied += 1;
    expected.bytes = payload_bytes(&batch);
    let outcome = region.write(&batch).await.expect("batch");
    assert!(outcome.retried > 0, "the redirected pipeline was retried: {outcome:?}");
    assert_eq!(WriteOutcome { retried: 0, ..outcome }, expected);
    assert_entries(&connection, "k").await;
    assert_eq!(entry(&connection, &moved).await, with_partial(5, 0.25, 3, 500, "5", "0.25"));

    // The next batch fetches the new slot map and pipelines again.
    let again: Vec<EntryWrite> =
        (0..KEYS).map(|i| write(&format!("n{i}"), 3, 500, WriteMode::Replace, 5, 0.25)).collect();
    let outcome = region.write(&again).await.expect("after the move");
    let bytes = payload_bytes(&again);
    assert_eq!(outcome, WriteOutcome { applied: KEYS as u64, bytes, ..WriteOutcome::default() });
}
