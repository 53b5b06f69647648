//! Lost epoch increments: a Redis failover can lose the last `INCR`s of a
//! partition's epoch counter while entries written under those epochs
//! survive on other shards. The partition's next owner then takes an epoch
//! older than the entries' and its writes are fenced. It must not stop
//! silently: the fenced task fails loudly, the connector restarts the
//! partition with a new epoch until it passes the entries', and the region
//! ends up exact.

use crate::common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use redis::AsyncCommands;

use common::kafka::{Kafka, Produce};
use common::redis_cluster::RedisCluster;
use regionflow::config::Settings;

const T0: i64 = 1_700_000_000_000;
/// The epoch the surviving entries carry; the counter was lost below it.
const SURVIVING_EPOCH: u64 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_fenced_by_entries_of_lost_epochs_restarts_until_it_owns_them() {
    common::init_logging();
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let kafka = Kafka::start(&[("events", 1)]);
    let settings = Settings::from_toml_str(&format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "fencing"
[redis]
nodes = {nodes}
[connector]
flush_interval = "50ms"
[pipelines.events]
topics = ["events"]
key = {{ from = "field", pointer = "/k" }}
event_time = {{ from = "field", pointer = "/ts" }}
window = {{ kind = "tumbling", size = "1s" }}
watermark = {{ max_out_of_orderness = "0s", idle_timeout = "500ms" }}
aggregates.n = {{ function = "count" }}
region = {{ name = "events" }}
"#,
        brokers = kafka.brokers,
        nodes = common::toml_nodes(&cluster.urls())
    ))
    .expect("valid");

    // Entries that an owner under epoch 4 wrote before the failover that
    // took the counter back to 0: a partial with a stale value.
    let client = redis::cluster::ClusterClient::new(cluster.urls()).expect("client");
    let mut con = client.get_async_connection().await.expect("connection");
    let keys = ["a", "b", "c"];
    for key in keys {
        let entry = format!("rf:events:{key}:{T0}");
        let partial = format!(r#"{{"a":[99],"e":{SURVIVING_EPOCH},"o":0}}"#);
        let _: () = con.hset_multiple(&entry, &[("_p:events:0", partial.as_str()), ("n", "99")]).await.expect("seeded");
    }

    let records: Vec<Produce> = (0..30)
        .map(|i| Produce {
            partition: 0,
            key: None,
            value: format!(r#"{{"k":"{}","ts":{}}}"#, keys[i % 3], T0 + i as i64 * 10).into_bytes(),
        })
        .collect();
    kafka.produce("events", &records).await;
    let expected: BTreeMap<String, String> =
        keys.iter().map(|k| (format!("rf:events:{k}:{T0}"), "10".to_string())).collect();

    let connector = common::InProcess::start(settings).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = BTreeMap::new();
    while Instant::now() < deadline && !connector.handle.is_finished() {
        got.clear();
        for key in expected.keys() {
            let n: Option<String> = con.hget(key, "n").await.expect("HGET");
            got.insert(key.clone(), n.unwrap_or_default());
        }
        if got == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!connector.handle.is_finished(), "the connector stopped: {:?}", connector.stop().await);
    assert_eq!(got, expected, "the partition restarted until its epoch passed the surviving entries'");

    let text = connector.metrics.render();
    let fenced: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("regionflow_fenced_writes_total{pipeline=\"events\"} "))
        .and_then(|v| v.parse().ok())
        .expect("fenced writes counted");
    assert!(fenced >= 1, "fenced writes were counted: {fenced}");
    let takeovers = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("regionflow_partition_takeovers_total{pipeline=\"events\",restored_from=\"fresh\"} ")
        })
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(takeovers >= 2, "the partition was restarted in place: {takeovers} starts");
    connector.stop().await.expect("clean shutdown");
}

/// The session ledger's store (src/pipeline/task/ledger.rs): writes are
/// recorded under the partition's epoch and refused once a newer epoch
/// exists (a zombie records, and so writes, nothing); a successor reads
/// what was recorded; a checkpoint replaces the records with the ones it
/// carries; and an older owner's checkpoint changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_writes_are_fenced_by_the_epoch_and_reset_by_a_checkpoint() {
    use regionflow::checkpoint::{Checkpoint, CheckpointStore, CommitOutcome, RecordedWrite, Replication, TaskId};
    let (_cluster, store) = checkpoint_store().await;
    let task = TaskId { pipeline: "p".into(), topic: "t".into(), partition: 3 };
    let checkpoint = |epoch: u64, carried: Vec<RecordedWrite>| Checkpoint {
        epoch,
        offset: 10,
        watermark: T0,
        state: vec![1],
        written_at: T0,
        carried,
    };
    let none = Replication { replicas: 0 };

    let first = store.acquire(&task).await.expect("epoch");
    let written = [record("rf:s:a b:1", 4, "a b"), record("rf:s:c:1", 7, "c")];
    assert_eq!(store.record_writes(&task, first, &written).await.expect("recorded"), CommitOutcome::Stored);

    let second = store.acquire(&task).await.expect("epoch");
    assert!(second > first);
    let zombie = [record("rf:s:z:1", 9, "z")];
    assert_eq!(store.record_writes(&task, first, &zombie).await.expect("answered"), CommitOutcome::Fenced);
    // The successor sees exactly the first owner's records, keys with spaces intact.
    assert_eq!(store.recorded_writes(&task).await.expect("read"), written.to_vec());

    // The zombie's checkpoint is refused and leaves the records alone.
    assert_eq!(
        store.commit(&task, &checkpoint(first, Vec::new()), none).await.expect("answered"),
        CommitOutcome::Fenced
    );
    assert_eq!(store.recorded_writes(&task).await.expect("read").len(), 2);
    // The successor's checkpoint carries what it has not resolved, and only that.
    let carried = vec![written[1].clone()];
    assert_eq!(
        store.commit(&task, &checkpoint(second, carried.clone()), none).await.expect("stored"),
        CommitOutcome::Stored
    );
    assert_eq!(store.recorded_writes(&task).await.expect("read"), carried);
    assert_eq!(
        store.commit(&task, &checkpoint(second, Vec::new()), none).await.expect("stored"),
        CommitOutcome::Stored
    );
    assert!(store.recorded_writes(&task).await.expect("read").is_empty());
}

/// A session pipeline's flush can record tens of thousands of new entries
/// at once (W3 of the benchmark: ~26k open sessions), and a checkpoint can
/// carry as many: both reach Redis whole. Lua's `unpack` refuses more than
/// about 8,000 values, and a script that unpacked them all failed every
/// retry until the connector stopped ("checkpoint store unavailable").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tens_of_thousands_of_recorded_writes_are_recorded_and_carried_whole() {
    use regionflow::checkpoint::{Checkpoint, CheckpointStore, CommitOutcome, RecordedWrite, Replication, TaskId};
    let (_cluster, store) = checkpoint_store().await;
    let task = TaskId { pipeline: "p".into(), topic: "t".into(), partition: 0 };
    let records = |n: usize, tag: &str| -> Vec<RecordedWrite> {
        (0..n)
            .map(|i| RecordedWrite {
                entry: format!("rf:s:{tag}{i}:1"),
                offset: i as i64,
                window_start: T0 + i as i64,
                window_end: T0 + i as i64 + 30_000,
                key: format!("{tag}{i}"),
            })
            .collect()
    };
    let sorted = |mut writes: Vec<RecordedWrite>| {
        writes.sort_by(|a, b| a.entry.cmp(&b.entry));
        writes
    };

    let epoch = store.acquire(&task).await.expect("epoch");
    let written = records(20_001, "a");
    assert_eq!(store.record_writes(&task, epoch, &written).await.expect("recorded"), CommitOutcome::Stored);
    assert_eq!(sorted(store.recorded_writes(&task).await.expect("read")), sorted(written));

    let carried = records(15_000, "b");
    let checkpoint = Checkpoint { epoch, offset: 10, watermark: T0, state: vec![1], written_at: T0, carried };
    assert_eq!(
        store.commit(&task, &checkpoint, Replication { replicas: 0 }).await.expect("stored"),
        CommitOutcome::Stored
    );
    assert_eq!(
        sorted(store.recorded_writes(&task).await.expect("read")),
        sorted(checkpoint.carried.clone()),
        "the checkpoint replaced the records with the ones it carries"
    );
}

/// The ledger as a successor reads it, whatever wrote it: records of the
/// layout before packed lists (one field per entry, left by a connector of
/// an earlier version) and packed lists, the later record of an entry
/// winning, and a list recorded twice (a retry whose first answer was
/// lost) read once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_the_earlier_layout_and_repeated_lists_are_read_once_each() {
    use regionflow::checkpoint::{CheckpointStore, CommitOutcome, TaskId};
    let (cluster, store) = checkpoint_store().await;
    let task = TaskId { pipeline: "p".into(), topic: "t".into(), partition: 1 };
    let ledger = store.recorded_key(&task);
    let port = cluster.primary_for_key(&ledger);
    // As regionflow wrote it before 2026-12-07: entry → "offset start end key".
    for (entry, value) in
        [("rf:s:old 1:1", format!("3 {T0} {} old 1", T0 + 103)), ("rf:s:b:1", format!("4 {T0} {} b", T0 + 104))]
    {
        assert_eq!(cluster.node_cmd(port, &["HSET", &ledger, entry, &value]), redis::Value::Int(1));
    }
    let epoch = store.acquire(&task).await.expect("epoch");
    let newer = [record("rf:s:b:1", 8, "b"), record("rf:s:c\nd:1", 9, "c\nd")];
    for _ in 0..2 {
        assert_eq!(store.record_writes(&task, epoch, &newer).await.expect("recorded"), CommitOutcome::Stored);
    }
    assert_eq!(
        store.recorded_writes(&task).await.expect("read"),
        vec![record("rf:s:old 1:1", 3, "old 1"), newer[0].clone(), newer[1].clone()],
        "each entry once, as last recorded, in the order of their positions"
    );
}

/// A recorded session entry: its window ends `offset` + 100 ms after T0.
fn record(entry: &str, offset: i64, key: &str) -> regionflow::checkpoint::RecordedWrite {
    regionflow::checkpoint::RecordedWrite {
        entry: entry.into(),
        offset,
        window_start: T0,
        window_end: T0 + offset + 100,
        key: key.into(),
    }
}

/// A checkpoint store on a fresh cluster (kept running by the returned handle).
async fn checkpoint_store() -> (RedisCluster, regionflow::redis::RedisCheckpointStore) {
    use regionflow::redis::{ClusterHandle, RedisCheckpointStore};

    common::init_logging();
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let handle =
        std::sync::Arc::new(ClusterHandle::connect(&common::redis_config(cluster.urls(), 4)).await.expect("cluster"));
    (cluster, RedisCheckpointStore::new(handle, "rf", Duration::from_secs(10), Duration::from_secs(2)))
}
