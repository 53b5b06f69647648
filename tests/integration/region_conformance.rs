//! One merge semantics: the in-memory region (the quick-start's sink)
//! applies every sequence of writes exactly as the merge function does on a
//! real Redis Cluster: the same outcome per write (applied, stale, fenced)
//! and the same public fields per entry afterwards; under a change capture,
//! the same versions and changes.
//!
//! Sequences are random over a few entries and source partitions, with
//! replaces, amendments (merges), retractions (deletes), older and newer
//! epochs and repeated, older and newer offsets, including the cases that
//! once differed (an amendment at an equal offset; a stale replay under a
//! newer epoch, which must still fence the older owner). The seed is
//! printed; `REGIONFLOW_CONFORMANCE_SEED` reruns one.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::AsyncCommands;

use common::redis_cluster::RedisCluster;
use regionflow::metrics::Metrics;
use regionflow::redis::{ClusterHandle, RedisRegion};
use regionflow::region::{Capture, EntryWrite, Expiry, MemoryRegion, Region, WriteMode, WriteOutcome};
use regionflow::window::{Accumulator, AggregateFunction, Window};

const AGGREGATES: [(AggregateFunction, &str); 3] =
    [(AggregateFunction::Count, "n"), (AggregateFunction::Sum, "total"), (AggregateFunction::Max, "high")];
const WINDOW: Window = Window { start: 1_700_000_000_000, end: 1_700_000_010_000 };

fn random_write(rng: &mut StdRng, round: usize, capture: Capture) -> EntryWrite {
    let mode = match rng.random_range(0..10) {
        0..=5 => WriteMode::Replace,
        6..=8 => WriteMode::Merge,
        _ => WriteMode::Delete,
    };
    let count = rng.random_range(0..5u64);
    let max = rng.random_bool(0.7).then(|| rng.random_range(-100..100) as f64 / 4.0);
    let group = rng.random_range(0..3);
    EntryWrite {
        key: format!("rf:conf{round}:k{group}"),
        group: format!("k{group}").into(),
        field: format!("_p:orders:{}", rng.random_range(0..3)).into(),
        epoch: rng.random_range(1..4),
        offset: rng.random_range(0..6),
        mode,
        accumulators: vec![
            Accumulator::Count(count),
            Accumulator::Sum(rng.random_range(-1000..1000) as f64 / 8.0),
            Accumulator::Max(max),
        ],
        window: WINDOW,
        expiry: Expiry::Never,
        capture,
        vouched: None,
    }
}

/// The public fields of every entry (partials left out: their JSON is the
/// Redis region's business).
async fn redis_entries(
    con: &mut redis::cluster_async::ClusterConnection,
    keys: &[String],
) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for key in keys {
        let mut fields: BTreeMap<String, String> = con.hgetall(key).await.expect("HGETALL");
        // Partials, fences and versions are hidden (readers skip a hash
        // holding nothing else).
        fields.retain(|name, _| !name.starts_with('_'));
        if !fields.is_empty() {
            out.insert(key.clone(), fields);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_region_applies_writes_exactly_as_the_merge_function() {
    common::init_logging();
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let config = common::redis_config(cluster.urls(), 4);
    let handle = Arc::new(ClusterHandle::connect(&config).await.expect("cluster"));
    let redis_region = RedisRegion::new(
        handle.clone(),
        "conf",
        AGGREGATES,
        4,
        Duration::from_secs(30),
        Metrics::new().redis_region("conf"),
    );
    let (_, mut con) = handle.get();

    let seed: u64 = std::env::var("REGIONFLOW_CONFORMANCE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    println!("conformance seed {seed} (REGIONFLOW_CONFORMANCE_SEED={seed} reruns it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let aggregates: Vec<(AggregateFunction, String)> = AGGREGATES.iter().map(|(f, n)| (*f, n.to_string())).collect();

    for round in 0..40 {
        let memory = MemoryRegion::new(&aggregates);
        // Every capture: none, versions only, versions and changes.
        let capture = [Capture::None, Capture::Version, Capture::Publish][round % 3];
        let writes: Vec<EntryWrite> =
            (0..rng.random_range(5..40)).map(|_| random_write(&mut rng, round, capture)).collect();
        for (i, write) in writes.iter().enumerate() {
            // One write per call, so outcomes compare write by write.
            let batch = std::slice::from_ref(write);
            let expected = redis_region.write(batch).await.expect("Redis write");
            let got = memory.write(batch).await.expect("memory write");
            // Changes with their fields in name order: Redis replies in
            // HGETALL order.
            let strip = |o: WriteOutcome| {
                let changes: Vec<_> = o
                    .changes
                    .into_iter()
                    .map(|c| (c.entry, c.key, c.version, c.op, c.fields.into_iter().collect::<BTreeMap<_, _>>()))
                    .collect();
                (o.applied, o.fenced, o.stale, changes)
            };
            assert_eq!(strip(got), strip(expected), "seed {seed}, round {round}, write {i}: {write:?}");
        }
        let mut keys: Vec<String> = writes.iter().map(|w| w.key.clone()).collect();
        keys.sort();
        keys.dedup();
        let in_redis = redis_entries(&mut con, &keys).await;
        let in_memory: BTreeMap<_, _> = memory.snapshot().into_iter().collect();
        assert_eq!(in_memory, in_redis, "seed {seed}, round {round}: entries differ after {writes:#?}");
    }
}
