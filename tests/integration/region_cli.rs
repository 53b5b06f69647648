//! Reading regions back: `regionflow region get`, `scan` and `export`.
//!
//! - Real pipelines (tumbling, sliding and session windows, three key
//!   templates, group keys with colons and non-ASCII characters) fill three
//!   regions from the mock broker; `get` and `scan` must show what an
//!   independent reference (`common::reference`) computes, with times in
//!   RFC 3339, and `export` (to standard output and to a topic, read back)
//!   must carry every entry exactly as `HGETALL` shows it.
//! - A scan while slots move between primaries, key by key, must list every
//!   entry once; a naive `SCAN` of each primary is run beside it to show
//!   that the moves do hide keys from it.
//! - Bad arguments and an unreachable cluster fail at once, saying why.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis_cluster::RedisCluster;
use regionflow::metrics::Metrics;
use regionflow::redis::read::RegionReader;
use regionflow::redis::{ClusterHandle, RedisRegion};
use regionflow::region::{EntryWrite, Expiry, Region, WriteMode};
use regionflow::window::{Accumulator, AggregateFunction, Window};

fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_regionflow")).args(args).output().expect("binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the CLI from async tests without stalling the runtime.
fn run(args: &[&str]) -> (bool, String, String) {
    tokio::task::block_in_place(|| cli(args))
}

fn write_config(dir: &Path, toml: &str) -> PathBuf {
    let path = dir.join("regionflow.toml");
    std::fs::write(&path, toml).expect("written");
    path
}

/// Epoch milliseconds as RFC 3339, formatted here rather than by the code
/// under test.
fn rfc3339(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis).expect("in range").format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

fn text(value: redis::Value) -> String {
    match value {
        redis::Value::BulkString(b) => String::from_utf8(b).expect("UTF-8"),
        redis::Value::SimpleString(s) => s,
        redis::Value::VerbatimString { text, .. } => text,
        other => panic!("expected a string, got {other:?}"),
    }
}

fn int(value: &redis::Value) -> i64 {
    match value {
        redis::Value::Int(i) => *i,
        other => panic!("expected an integer, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Slot moves
// ---------------------------------------------------------------------------

/// The primary serving `slot`, by its own account.
fn owner(cluster: &RedisCluster, slot: u16) -> u16 {
    *cluster
        .primary_ports()
        .iter()
        .find(|&&port| {
            let nodes = text(cluster.node_cmd(port, &["CLUSTER", "NODES"]));
            let me = nodes.lines().find(|l| l.split_whitespace().nth(2).is_some_and(|f| f.contains("myself")));
            me.expect("a myself line").split_whitespace().skip(8).any(|range| match range.split_once('-') {
                _ if range.starts_with('[') => false,
                Some((a, b)) => (a.parse::<u16>().unwrap()..=b.parse::<u16>().unwrap()).contains(&slot),
                None => range.parse::<u16>().unwrap() == slot,
            })
        })
        .unwrap_or_else(|| panic!("no primary serves slot {slot}"))
}

/// Moves `slot` to another primary as `redis-cli --cluster reshard` does:
/// IMPORTING/MIGRATING, `MIGRATE` a few keys at a time with a pause between
/// batches (so that scans overlap the move), then `SETSLOT NODE` on the
/// target, the source and the rest.
fn move_slot(cluster: &RedisCluster, slot: u16, pause: Duration) {
    let from = owner(cluster, slot);
    let primaries = cluster.primary_ports();
    let to = *primaries.iter().find(|&&p| p != from).expect("another primary");
    let id = |port: u16| text(cluster.node_cmd(port, &["CLUSTER", "MYID"]));
    let (from_id, to_id, slot) = (id(from), id(to), slot.to_string());
    cluster.node_cmd(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
    cluster.node_cmd(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]);
    loop {
        let redis::Value::Array(keys) = cluster.node_cmd(from, &["CLUSTER", "GETKEYSINSLOT", &slot, "5"]) else {
            panic!("GETKEYSINSLOT")
        };
        if keys.is_empty() {
            break;
        }
        let keys: Vec<String> = keys.into_iter().map(text).collect();
        let port = to.to_string();
        let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
        args.extend(keys.iter().map(String::as_str));
        cluster.node_cmd(from, &args);
        std::thread::sleep(pause);
    }
    for port in [to, from].into_iter().chain(primaries.into_iter().filter(|p| *p != to && *p != from)) {
        cluster.node_cmd(port, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
    }
}

/// Entries of region `moving`: `hot` and `warm` keys share one slot each
/// (hash tags), the rest spread over the cluster.
fn moving_entries() -> Vec<String> {
    let mut keys: Vec<String> = (0..400).map(|i| format!("{{hot}}u{i}")).collect();
    keys.extend((0..400).map(|i| format!("{{warm}}u{i}")));
    keys.extend((0..6000).map(|i| format!("u{i}")));
    keys.into_iter().map(|k| format!("rf:moving:{k}:1000")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_during_slot_moves_lists_every_entry_once() {
    common::init_logging();
    let cluster = Arc::new(tokio::task::block_in_place(RedisCluster::start));
    let handle = Arc::new(ClusterHandle::connect(&common::redis_config(cluster.urls(), 64)).await.expect("cluster"));
    let region = RedisRegion::new(
        handle.clone(),
        "moving",
        [(AggregateFunction::Count, "n")],
        64,
        Duration::from_secs(30),
        Metrics::new().redis_region("moving"),
    );
    let expected = moving_entries();
    let writes: Vec<EntryWrite> = expected
        .iter()
        .map(|key| EntryWrite {
            key: key.clone(),
            field: "_p:moving:0".into(),
            epoch: 1,
            offset: 1,
            mode: WriteMode::Replace,
            accumulators: vec![Accumulator::Count(1)],
            window: Window { start: 1000, end: 2000 },
            expiry: Expiry::Never,
        })
        .collect();
    region.write(&writes).await.expect("written");
    let expected: BTreeSet<String> = expected.into_iter().collect();

    let slots: Vec<u16> = ["hot", "warm"].iter().map(|t| regionflow::redis::key_slot(t.as_bytes())).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let moves = Arc::new(AtomicUsize::new(0));
    let mover = {
        let (cluster, stop, moves) = (cluster.clone(), stop.clone(), moves.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for &slot in &slots {
                    move_slot(&cluster, slot, Duration::from_millis(2));
                    moves.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let dir = tempfile::tempdir().expect("temp dir");
    let toml = format!(
        "[kafka]\nbrokers = \"127.0.0.1:1\"\n[redis]\nnodes = {}\n{}",
        common::toml_nodes(&cluster.urls()),
        common::counting_pipeline("moving", "moving", "moving")
    );
    let config = write_config(dir.path(), &toml);
    let config = config.to_str().expect("UTF-8 path");

    let reader = RegionReader::new(handle.clone(), Duration::from_secs(10));
    let (mut scans, mut naive_misses) = (0, 0);
    let started = Instant::now();
    while scans < 30 || moves.load(Ordering::Relaxed) < 6 {
        assert!(started.elapsed() < Duration::from_secs(120), "{scans} scans, {moves:?} moves in 2 minutes");
        let listed = reader.keys("rf:moving:").await.expect("listed");
        let listed_once: BTreeSet<String> = listed.iter().cloned().collect();
        assert_eq!(listed_once.len(), listed.len(), "listed twice");
        assert_eq!(
            listed_once,
            expected,
            "scan {scans}: missing {:?}",
            expected.difference(&listed_once).take(5).collect::<Vec<_>>()
        );
        let naive: BTreeSet<String> = tokio::task::block_in_place(|| cluster.keys("rf:moving:*")).into_iter().collect();
        naive_misses += usize::from(naive != expected);
        scans += 1;
        if scans % 10 == 0 {
            // Through the binary too: every entry, each once.
            let (ok, stdout, stderr) =
                run(&["region", "scan", "--config", config, "--region", "moving", "--limit", "0", "--output", "json"]);
            assert!(ok, "{stderr}");
            let entries: Vec<String> =
                json_lines(&stdout).iter().map(|e| e["entry"].as_str().expect("entry").to_string()).collect();
            assert!(entries.windows(2).all(|w| w[0] < w[1]), "in key order, each once");
            assert_eq!(entries.into_iter().collect::<BTreeSet<_>>(), expected);
        }
    }
    stop.store(true, Ordering::Relaxed);
    tokio::task::block_in_place(|| mover.join()).expect("mover");
    // The moves did hide keys from a scan that does not look for them (in
    // about half the scans here), so the scans above were put to the test.
    assert!(naive_misses > 0, "no naive scan missed a key in {scans} scans: the moves never overlapped a scan");
    eprintln!(
        "{scans} scans during {} slot moves; a naive SCAN of each primary missed keys in {naive_misses}",
        moves.load(Ordering::Relaxed)
    );
}
