//! `region.redundancy` vouches only for writes that replicas hold, even when
//! the connection that made them was reset. The sequence of issue 11 hole
//! 4: an entry write is acknowledged by a primary whose replica lags (here:
//! stopped); `CLIENT KILL` resets the connector's connections to that
//! primary, and redis-rs reconnects by itself. A `WAIT` on the new socket
//! would return at once and the checkpoint would move past the entry,
//! which the primary's death would then lose. The checkpoint must instead
//! wait until the replica holds the write.

use crate::common;

use std::time::{Duration, Instant};

use redis::AsyncCommands;

use common::kafka::{Kafka, Produce};
use common::redis_cluster::RedisCluster;
use regionflow::config::Settings;

const T0: i64 = 1_700_000_000_000;
const CHECKPOINT: &str = "rf:_ckpt:{events:events:0}";

fn info_field(info: &str, name: &str) -> Option<String> {
    info.lines().find_map(|l| l.trim_end().strip_prefix(name)?.strip_prefix(':').map(str::to_string))
}

fn info(cluster: &RedisCluster, port: u16, section: &str) -> String {
    match cluster.node_cmd(port, &["INFO", section]) {
        redis::Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        redis::Value::VerbatimString { text, .. } => text,
        other => panic!("INFO answered {other:?}"),
    }
}

async fn checkpoint_offset(con: &mut redis::cluster_async::ClusterConnection) -> Option<i64> {
    let offset: Option<String> = con.hget(CHECKPOINT, "offset").await.expect("HGET");
    offset.and_then(|o| o.parse().ok())
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
    let settings = Settings::from_toml_str(&format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "replication"
[redis]
nodes = {nodes}
replica_timeout = "1s"
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
    .expect("valid");
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
    let slot = regionflow::redis::key_slot(entry.as_bytes());
    let primary = cluster
        .primary_ports()
        .into_iter()
        .find(|port| {
            let reply = cluster.node_cmd(*port, &["CLUSTER", "KEYSLOT", &entry]);
            reply == redis::Value::Int(slot as i64)
                && matches!(
                    cluster.node_cmd(*port, &["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]),
                    redis::Value::Int(_)
                )
                && info(&cluster, *port, "replication").contains("role:master")
                && owns(&cluster, *port, slot)
        })
        .expect("the primary owning the entry");
    let replication = info(&cluster, primary, "replication");
    let replica_port: u16 = info_field(&replication, "slave0")
        .and_then(|s| s.split(',').find_map(|kv| kv.strip_prefix("port=").and_then(|p| p.parse().ok())))
        .expect("the primary has a replica");
    let replica_pid = info_field(&info(&cluster, replica_port, "server"), "process_id").expect("pid");
    let signal = |sig: &str| {
        std::process::Command::new("kill").args([sig, &replica_pid]).status().expect("kill runs");
    };
    signal("-STOP");

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

    // 5. No checkpoint may move past the entry while its replica lags.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(4) {
        let offset = checkpoint_offset(&mut con).await;
        if offset != Some(20) {
            signal("-CONT");
            panic!("the checkpoint moved to {offset:?} while the write at offsets 20..30 was unreplicated");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 6. Once the replica catches up, the checkpoint follows.
    signal("-CONT");
    let deadline = Instant::now() + Duration::from_secs(30);
    while checkpoint_offset(&mut con).await != Some(30) {
        assert!(Instant::now() < deadline, "the checkpoint did not follow the replica");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let n: Option<String> = con.hget(&entry, "n").await.expect("HGET");
    assert_eq!(n.as_deref(), Some("10"));
    connector.stop().await.expect("clean shutdown");
}

/// Whether the node at `port` serves `slot` as a primary.
fn owns(cluster: &RedisCluster, port: u16, slot: u16) -> bool {
    let redis::Value::Array(ranges) = cluster.node_cmd(port, &["CLUSTER", "SLOTS"]) else { return false };
    ranges.iter().any(|range| {
        let redis::Value::Array(parts) = range else { return false };
        let int = |v: &redis::Value| if let redis::Value::Int(i) = v { *i } else { -1 };
        let port_of = |v: &redis::Value| {
            let redis::Value::Array(node) = v else { return -1 };
            node.get(1).map(int).unwrap_or(-1)
        };
        parts.len() >= 3
            && int(&parts[0]) <= slot as i64
            && slot as i64 <= int(&parts[1])
            && port_of(&parts[2]) == port as i64
    })
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
    let slot = regionflow::redis::key_slot(key.as_bytes());
    let primary = cluster.primary_ports().into_iter().find(|p| owns(&cluster, *p, slot)).expect("owner");
    let replication = info(&cluster, primary, "replication");
    let replica_port: u16 = info_field(&replication, "slave0")
        .and_then(|s| s.split(',').find_map(|kv| kv.strip_prefix("port=").and_then(|p| p.parse().ok())))
        .expect("a replica");
    let replica_pid = info_field(&info(&cluster, replica_port, "server"), "process_id").expect("pid");
    let signal = |sig: &str| {
        std::process::Command::new("kill").args([sig, &replica_pid]).status().expect("kill runs");
    };
    signal("-STOP");

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
    signal("-CONT");
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
