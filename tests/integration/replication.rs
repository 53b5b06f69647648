//! `region.redundancy` vouches only for writes that replicas hold, even when
//! the connection that made them was reset. The sequence of issue 11 hole
//! 4: an entry write is acknowledged by a primary whose replica lags (here:
//! stopped); `CLIENT KILL` resets the connector's connections to that
//! primary, and redis-rs reconnects by itself. A `WAIT` on the new socket
//! would return at once and a checkpoint would cover the entry, which the
//! primary's death would then lose. No checkpoint may cover it until the
//! replica holds the write.

use crate::common;

use std::time::{Duration, Instant};

use redis::AsyncCommands;

use common::kafka::{Kafka, Produce};
use common::redis_cluster::RedisCluster;
use regionflow::config::Settings;

const T0: i64 = 1_700_000_000_000;
const CHECKPOINT: &str = "rf:_ckpt:{events:events:0}";

async fn checkpoint_field(con: &mut redis::cluster_async::ClusterConnection, field: &str) -> Option<i64> {
    let value: Option<String> = con.hget(CHECKPOINT, field).await.expect("HGET");
    value.and_then(|v| v.parse().ok())
}

async fn checkpoint_offset(con: &mut redis::cluster_async::ClusterConnection) -> Option<i64> {
    checkpoint_field(con, "offset").await
}

async fn checkpoint_watermark(con: &mut redis::cluster_async::ClusterConnection) -> Option<i64> {
    checkpoint_field(con, "watermark").await
}

/// One partition of `events`, tumbling 1 s windows counted per `/k`, with
/// one replica required.
fn events_settings(kafka: &Kafka, cluster: &RedisCluster, group: &str, replica_timeout: &str) -> Settings {
    Settings::from_toml_str(&format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "{group}"
[redis]
nodes = {nodes}
replica_timeout = "{replica_timeout}"
[connector]
flush_interval = "50ms"
checkpoint_interval = "300ms"
[pipelines.events]
topics = ["events"]
key = {{ from = "field", pointer = "/k" }}
event_time = {{ from = "field", pointer = "/ts" }}
window = {{ kind = "tumbling", size = "1s" }}
watermark = {{ max_out_of_orderness = "0s", idle_timeout = "300ms" }}
aggregates.n = {{ function = "count" }}
region = {{ name = "events", redundancy = 1 }}
"#,
        brokers = kafka.brokers,
        nodes = common::toml_nodes(&cluster.urls())
    ))
    .expect("valid")
}

fn records(key: &str, from: usize, n: usize, window_start: i64) -> Vec<Produce> {
    (from..from + n)
        .map(|i| Produce {
            partition: 0,
            key: None,
            value: format!(r#"{{"k":"{key}","ts":{}}}"#, window_start + i as i64 % 900).into_bytes(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_connection_does_not_let_a_checkpoint_vouch_for_unreplicated_writes() {
    common::init_logging();
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let kafka = Kafka::start(&[("events", 1)]);
    let settings = events_settings(&kafka, &cluster, "replication", "1s");
    let client = redis::cluster::ClusterClient::new(cluster.urls()).expect("client");
    let mut con = client.get_async_connection().await.expect("connection");

    // 1. A first batch, checkpointed with its replicas.
    kafka.produce("events", &records("a", 0, 20, T0)).await;
    let connector = common::InProcess::start(settings).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while checkpoint_offset(&mut con).await != Some(20) {
        assert!(Instant::now() < deadline, "the first batch was not checkpointed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 2. The replica of the primary that will hold the next entry stops.
    let entry = format!("rf:events:b:{}", T0 + 10_000);
    let (primary, replica) = cluster.stop_replica_for_key(&entry);

    // 3. The next entry is written to that primary, which acknowledges it.
    kafka.produce("events", &records("b", 20, 10, T0 + 10_000)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n: Option<String> = con.hget(&entry, "n").await.expect("HGET");
        if n.as_deref() == Some("10") {
            break;
        }
        assert!(Instant::now() < deadline, "the entry was not written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // 4. The connector's connections to it are reset; redis-rs reconnects.
    cluster.node_cmd(primary, &["CLIENT", "KILL", "TYPE", "normal"]);

    // 5. No checkpoint may cover the entry while its replica lags. One at
    // offset 30 taken before the window closed holds the window in its
    // state and covers no write; one that covers the entry's write has a
    // watermark past the window's end.
    let window_end = T0 + 11_000;
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(4) {
        let watermark = checkpoint_watermark(&mut con).await;
        if watermark.is_some_and(|w| w >= window_end) {
            panic!("a checkpoint (watermark {watermark:?}) covered the write of window {window_end} while it was unreplicated");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 6. Once the replica catches up, the checkpoint follows.
    replica.resume();
    let deadline = Instant::now() + Duration::from_secs(30);
    while checkpoint_offset(&mut con).await != Some(30)
        || checkpoint_watermark(&mut con).await.is_none_or(|w| w < window_end)
    {
        assert!(Instant::now() < deadline, "the checkpoint did not follow the replica");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let n: Option<String> = con.hget(&entry, "n").await.expect("HGET");
    assert_eq!(n.as_deref(), Some("10"));
    connector.stop().await.expect("clean shutdown");
}

/// The same sequence one level down, where it is deterministic: a write
/// acknowledged by a primary whose replica is stopped, the primary's client
/// connections killed, redis-rs reconnected by a routed `PING` (so no error
/// ever reaches regionflow's retry loop), then a checkpoint that needs one
/// replica. It must be refused until the replica holds the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_after_a_silent_reconnect_waits_for_the_replica() {
    use regionflow::checkpoint::{Checkpoint, CheckpointError, CheckpointStore, CommitOutcome, Replication, TaskId};
    use regionflow::region::{Capture, EntryWrite, Expiry, Region, WriteMode};
    use regionflow::window::{Accumulator, AggregateFunction, Window};

    common::init_logging();
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let settings = Settings::from_toml_str(&format!(
        r#"
[kafka]
brokers = "unused:9092"
[redis]
nodes = {nodes}
replica_timeout = "1s"
[pipelines.events]
topics = ["events"]
key = {{ from = "kafka_key" }}
event_time = {{ from = "kafka_timestamp" }}
window = {{ kind = "tumbling", size = "1s" }}
aggregates.n = {{ function = "count" }}
region = {{ name = "events", redundancy = 1 }}
"#,
        nodes = common::toml_nodes(&cluster.urls())
    ))
    .expect("valid");
    let handle =
        std::sync::Arc::new(regionflow::redis::ClusterHandle::connect(&settings.redis).await.expect("cluster"));
    let store = regionflow::app::checkpoint_store(&settings, handle.clone());
    let metrics = regionflow::metrics::Metrics::new().redis_region("events");
    let region = regionflow::redis::RedisRegion::new(
        handle.clone(),
        "events",
        [(AggregateFunction::Count, "n")],
        4,
        Duration::from_secs(10),
        metrics,
    );
    let task = TaskId { pipeline: "events".into(), topic: "events".into(), partition: 0 };
    let epoch = store.acquire(&task).await.expect("epoch");

    let key = format!("rf:events:x:{T0}");
    let (primary, replica) = cluster.stop_replica_for_key(&key);

    let write = EntryWrite {
        key: key.clone(),
        group: "g".into(),
        field: "_p:events:0".into(),
        epoch,
        offset: 1,
        mode: WriteMode::Replace,
        accumulators: vec![Accumulator::Count(1)],
        window: Window { start: T0, end: T0 + 1000 },
        expiry: Expiry::Never,
        capture: Capture::None,
        vouched: None,
    };
    let outcome = region.write(std::slice::from_ref(&write)).await.expect("acknowledged by the primary");
    assert_eq!(outcome.applied, 1);

    cluster.node_cmd(primary, &["CLIENT", "KILL", "TYPE", "normal"]);
    let (_, mut connection) = handle.get();
    let route =
        redis::cluster_routing::RoutingInfo::SingleNode(redis::cluster_routing::SingleNodeRoutingInfo::ByAddress {
            host: "127.0.0.1".into(),
            port: primary,
        });
    let reconnected = Instant::now();
    while connection.route_command(redis::cmd("PING"), route.clone()).await.is_err() {
        assert!(reconnected.elapsed() < Duration::from_secs(10), "redis-rs did not reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let checkpoint =
        Checkpoint { epoch, offset: 2, watermark: 0, state: vec![1, 2, 3], written_at: T0, carried: Vec::new() };
    let refused = store.commit(&task, &checkpoint, Replication { replicas: 1 }).await;
    replica.resume();
    assert!(
        matches!(refused, Err(CheckpointError::NotReplicated { acked: 0, wanted: 1, .. })),
        "a checkpoint vouched for a write its replica does not hold: {refused:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store.commit(&task, &checkpoint, Replication { replicas: 1 }).await {
            Ok(CommitOutcome::Stored) => break,
            other => assert!(Instant::now() < deadline, "not stored once the replica caught up: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Session entries wait until replicas hold their ledger records (seed
/// 645363's path): a forced failover of the shard holding the records,
/// after the entries were written on other shards, would otherwise hide
/// those entries from the partition's next owner, which then never
/// retracts them. Here the ledger's replica is stopped: the records are
/// acknowledged by its primary, and no entry may appear until the replica
/// holds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_entries_wait_until_replicas_hold_their_ledger_records() {
    common::init_logging();
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let kafka = Kafka::start(&[("sessions", 1)]);
    let settings = Settings::from_toml_str(&format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "ledger-replication"
[redis]
nodes = {nodes}
replica_timeout = "500ms"
[connector]
flush_interval = "50ms"
checkpoint_interval = "300ms"
[pipelines.sessions]
topics = ["sessions"]
key = {{ from = "kafka_key" }}
event_time = {{ from = "field", pointer = "/ts" }}
window = {{ kind = "session", gap = "1s" }}
emit = {{ mode = "updates", interval = "100ms" }}
aggregates.n = {{ function = "count" }}
region = {{ name = "sessions", key = "{{key}}:{{window_start}}:{{window_end}}", redundancy = 1 }}
"#,
        brokers = kafka.brokers,
        nodes = common::toml_nodes(&cluster.urls())
    ))
    .expect("valid");
    let ledger = "rf:_written:{sessions:sessions:0}";
    let connector = common::InProcess::start(settings).await;
    let (primary, replica) = cluster.stop_replica_for_key(ledger);
    let keyed: Vec<Produce> =
        records("a", 0, 10, T0).into_iter().map(|p| Produce { key: Some("a".into()), ..p }).collect();
    kafka.produce("sessions", &keyed).await;

    // The records reach the primary...
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.node_cmd(primary, &["HLEN", ledger]) == redis::Value::Int(0) {
        assert!(Instant::now() < deadline, "the session was never recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...but no entry is written while its replica lacks them.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(3) {
        let written = cluster.keys("rf:sessions:a:*");
        assert!(written.is_empty(), "{written:?} written while the replica lacks its ledger record");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Once it catches up, the session is written: ten records.
    replica.resume();
    let client = redis::cluster::ClusterClient::new(cluster.urls()).expect("client");
    let mut con = client.get_async_connection().await.expect("connection");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let written = cluster.keys("rf:sessions:a:*");
        let n: Option<String> = match written.as_slice() {
            [entry] => con.hget(entry, "n").await.expect("HGET"),
            _ => None,
        };
        if n.as_deref() == Some("10") {
            break;
        }
        assert!(Instant::now() < deadline, "the session was not written once the replica caught up: {written:?} {n:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    connector.stop().await.expect("clean shutdown");
}

/// The group's committed offset is where a partition without a checkpoint
/// starts, so it must never pass a checkpoint that replicas may not hold:
/// were a partition's first checkpoint lost in a failover after the
/// committed offset moved to it, the partition would restart there with
/// empty window state, and its open windows would lose their earlier
/// records (found reading the code while chasing chaos seed 556995). Here
/// the replica of the checkpoint's shard is stopped, so the next
/// checkpoint is held by its primary alone: the committed offset must wait
/// for the replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_committed_offset_never_passes_an_unreplicated_checkpoint() {
    common::init_logging();
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let kafka = Kafka::start(&[("events", 1)]);
    let group = "committed-offset";
    let settings = events_settings(&kafka, &cluster, group, "500ms");
    // Entries on another shard than the checkpoint, so that only the
    // checkpoint's write waits for the stopped replica.
    let checkpoint_primary = cluster.primary_for_key(CHECKPOINT);
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| {
            [T0, T0 + 10_000]
                .iter()
                .all(|w| cluster.primary_for_key(&format!("rf:events:{k}:{w}")) != checkpoint_primary)
        })
        .expect("a key on another shard");
    let client = redis::cluster::ClusterClient::new(cluster.urls()).expect("client");
    let mut con = client.get_async_connection().await.expect("connection");
    let committed = || kafka.committed(group, "events", 0);

    // 1. A first batch, its window closed (by the idle timeout), then
    // checkpointed with its replicas and committed: nothing more to write.
    kafka.produce("events", &records(&key, 0, 20, T0)).await;
    let connector = common::InProcess::start(settings).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let closed = checkpoint_watermark(&mut con).await.is_some_and(|w| w >= T0 + 1000);
        if closed && checkpoint_offset(&mut con).await == Some(20) && committed() == Some(20) {
            break;
        }
        assert!(Instant::now() < deadline, "the first batch was not closed, checkpointed and committed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 2. The checkpoint's replica stops once it holds everything (and the
    // primary sends no replication pings meanwhile).
    cluster.node_cmd(checkpoint_primary, &["CONFIG", "SET", "repl-ping-replica-period", "3600"]);
    let info = || match cluster.node_cmd(checkpoint_primary, &["INFO", "replication"]) {
        redis::Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        redis::Value::VerbatimString { text, .. } => text,
        other => panic!("INFO answered {other:?}"),
    };
    let caught_up = |info: &str| {
        let field = |name: &str| info.lines().find_map(|l| l.trim_end().strip_prefix(name)).map(str::to_string);
        let primary = field("master_repl_offset:");
        let replica =
            field("slave0:").and_then(|s| s.split(',').find_map(|kv| kv.strip_prefix("offset=").map(str::to_string)));
        primary.is_some() && primary == replica
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !caught_up(&info()) {
        assert!(Instant::now() < deadline, "the replica did not catch up: {}", info());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, replica) = cluster.stop_replica_for_key(CHECKPOINT);

    // 3. The next checkpoint reaches the primary only...
    kafka.produce("events", &records(&key, 20, 10, T0 + 10_000)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster.node_cmd(checkpoint_primary, &["HGET", CHECKPOINT, "offset"])
        != redis::Value::BulkString(b"30".to_vec())
    {
        assert!(Instant::now() < deadline, "the second checkpoint was not written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...and the committed offset stays behind it while a failover could
    // lose it (librdkafka commits stored offsets every second).
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(3) {
        let offset = committed();
        assert_eq!(offset, Some(20), "the committed offset passed a checkpoint only the primary holds");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // 4. Once the replica holds it, the committed offset follows.
    replica.resume();
    let deadline = Instant::now() + Duration::from_secs(30);
    while committed() != Some(30) {
        assert!(Instant::now() < deadline, "the committed offset did not follow the replicated checkpoint");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    connector.stop().await.expect("clean shutdown");
}
