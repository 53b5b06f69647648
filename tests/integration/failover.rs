//! Chaos: connectors (the real binary, as child processes) crash, hand over,
//! turn zombie and restart; a Redis primary dies; Kafka brokers fail. In
//! every case the final region must equal, entry by entry, the reference
//! computed from the produced data, so any lost or doubled record fails.

use crate::common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::FutureRecord;
use redis::AsyncCommands;

use common::connector::Connector;
use common::kafka::Kafka;
use common::prom_text::Exposition;
use common::redis_cluster::RedisCluster;
use common::reference::{self, Order, Table};

const PARTITIONS: i32 = 4;
const DISORDER_MS: i64 = 200;
const RECORDS: usize = 24_000;
const PER_SECOND: usize = 2_000;

/// A scenario's timing settings.
struct Timing {
    /// Must exceed the longest upstream stall the scenario causes (see the
    /// README's idle-partition limit), or records after it are rightly
    /// late; every scenario pays it once more at the end of the stream, when
    /// only idleness closes the last windows.
    idle_timeout: Duration,
    checkpoint_interval: Duration,
    /// The Kafka group's; a crashed connector's partitions move after it.
    session_timeout: Duration,
    /// `connector.shutdown_timeout`: how long SIGTERM waits for tasks.
    shutdown_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            idle_timeout: Duration::from_secs(8),
            checkpoint_interval: Duration::from_millis(500),
            session_timeout: Duration::from_secs(6),
            shutdown_timeout: Duration::from_secs(20),
        }
    }
}

struct Scenario {
    cluster: RedisCluster,
    kafka: Kafka,
    dir: tempfile::TempDir,
    config: PathBuf,
    orders: Arc<Vec<Order>>,
    produced: Arc<AtomicUsize>,
}

/// Orders 1 ms of event time apart, up to `DISORDER_MS` out of order (never
/// late), keyed by order id while grouped by customer.
fn orders(seed: u64) -> Vec<Order> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..RECORDS)
        .map(|i| Order {
            partition: rng.random_range(0..PARTITIONS),
            customer: format!("c{}", rng.random_range(0..30)),
            product: format!("p{}", rng.random_range(0..20)),
            amount: rng.random_range(1..50_000) as f64 / 100.0,
            ts: 1_700_000_000_000 + i as i64 - rng.random_range(0..=DISORDER_MS),
        })
        .collect()
}

impl Scenario {
    fn new(seed: u64, redundancy: usize) -> Scenario {
        Scenario::custom(seed, redundancy, Timing::default())
    }

    fn custom(seed: u64, redundancy: usize, timing: Timing) -> Scenario {
        let Timing { idle_timeout, checkpoint_interval, session_timeout, shutdown_timeout } = timing;
        common::init_logging();
        let cluster = tokio::task::block_in_place(RedisCluster::start);
        let kafka = Kafka::start(&[("orders", PARTITIONS)]);
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("regionflow.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[kafka]
brokers = "{brokers}"
group_id = "chaos"
properties = {{ "session.timeout.ms" = "{session}", "heartbeat.interval.ms" = "500" }}
[redis]
nodes = {nodes}
write_deadline = "90s"
response_timeout = "2s"
replica_timeout = "2s"
[connector]
flush_interval = "100ms"
checkpoint_interval = "{checkpoint}ms"
shutdown_timeout = "{shutdown}ms"
[pipelines.orders]
topics = ["orders"]
key = {{ from = "field", pointer = "/customer" }}
event_time = {{ from = "field", pointer = "/ts" }}
window = {{ kind = "tumbling", size = "1s" }}
watermark = {{ max_out_of_orderness = "{DISORDER_MS}ms", idle_timeout = "{idle}ms" }}
region = {{ name = "orders", redundancy = {redundancy} }}
[pipelines.orders.aggregates]
{aggregates}
"#,
                brokers = kafka.brokers,
                nodes = common::toml_nodes(&cluster.urls()),
                aggregates = reference::AGGREGATES,
                idle = idle_timeout.as_millis(),
                checkpoint = checkpoint_interval.as_millis(),
                session = session_timeout.as_millis(),
                shutdown = shutdown_timeout.as_millis()
            ),
        )
        .expect("config written");
        Scenario { cluster, kafka, dir, config, orders: Arc::new(orders(seed)), produced: Arc::default() }
    }

    fn connector(&self, name: &str) -> Connector {
        tokio::task::block_in_place(|| Connector::start(name, &self.config, self.dir.path()))
    }

    /// Produces every order at `PER_SECOND`, in the background.
    fn start_producing(&self) -> tokio::task::JoinHandle<()> {
        let (producer, orders, produced) = (self.kafka.producer(), self.orders.clone(), self.produced.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            for chunk in orders.chunks(PER_SECOND / 10).collect::<Vec<_>>() {
                tick.tick().await;
                let values: Vec<String> = chunk
                    .iter()
                    .map(|o| serde_json::json!({"customer": o.customer, "product": o.product, "amount": o.amount, "ts": o.ts}).to_string())
                    .collect();
                let mut deliveries = Vec::new();
                for (o, value) in chunk.iter().zip(&values) {
                    let record = FutureRecord::to("orders").partition(o.partition).key("order").payload(value);
                    deliveries.push(producer.send(record, Duration::from_secs(60)));
                }
                for d in futures::future::join_all(deliveries).await {
                    d.expect("produced");
                }
                produced.fetch_add(chunk.len(), Ordering::SeqCst);
            }
        })
    }

    async fn wait_produced(&self, fraction: f64) {
        let target = (RECORDS as f64 * fraction) as usize;
        while self.produced.load(Ordering::SeqCst) < target {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn reference(&self) -> Table {
        let (table, late) = reference::fixed_windows(&self.orders, 1_000, 1_000, 0, DISORDER_MS, false);
        assert_eq!(late, 0, "the data set has no late records");
        table
    }

    async fn redis(&self) -> redis::cluster_async::ClusterConnection {
        let client = redis::cluster::ClusterClientBuilder::new(self.cluster.urls())
            .connection_timeout(Duration::from_secs(2))
            .response_timeout(Duration::from_secs(2))
            .build()
            .expect("client");
        client.get_async_connection().await.expect("connection")
    }

    /// Waits until every partition has a stored checkpoint (the store's
    /// index lists it): a crash or stop from then on must be recovered from
    /// checkpoints, however slowly the group formed and caught up.
    async fn wait_for_checkpoints(&self, timeout: Duration) {
        let mut con = self.redis().await;
        let deadline = Instant::now() + timeout;
        loop {
            let tasks: Vec<String> = con.smembers("rf:_ckpt_index:orders").await.unwrap_or_default();
            if tasks.len() >= PARTITIONS as usize {
                return;
            }
            assert!(Instant::now() < deadline, "every partition checkpointed within {timeout:?}, only {tasks:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the region equals the reference; panics with the
    /// differences and the state of `connectors` after `timeout`. Then
    /// checks that no live connector dropped a record as late (the data set
    /// has none, so one would be a watermark bug).
    async fn assert_region_equals_reference(&self, timeout: Duration, connectors: &[&Connector]) {
        self.assert_region_equals(&self.reference(), 0, timeout, connectors).await;
    }

    /// Waits until the region equals `expected`, then checks that the live
    /// connectors dropped exactly `late` records as late.
    async fn assert_region_equals(&self, expected: &Table, late: u64, timeout: Duration, connectors: &[&Connector]) {
        let mut con = self.redis().await;
        let deadline = Instant::now() + timeout;
        loop {
            let problems = self.differences(&mut con, expected).await;
            if problems.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {} entries differ, e.g. {:?}\nconnectors: {}",
                problems.len(),
                expected.len(),
                &problems[..problems.len().min(5)],
                connector_states(connectors)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let dropped: f64 = connectors.iter().map(|c| c.metric("regionflow_late_records_total", &[])).sum();
        assert_eq!(dropped, late as f64, "late records; connectors: {}", connector_states(connectors));
    }

    /// The orders as the broker stored them: each partition in offset order.
    fn stored_orders(&self) -> Vec<Order> {
        use rdkafka::Message;
        let messages = tokio::task::block_in_place(|| {
            self.kafka.read_topic("orders", PARTITIONS, RECORDS, Duration::from_secs(60))
        });
        messages
            .iter()
            .map(|m| {
                let v: serde_json::Value = serde_json::from_slice(m.payload().expect("payload")).expect("JSON order");
                Order {
                    partition: m.partition(),
                    customer: v["customer"].as_str().expect("customer").to_string(),
                    product: v["product"].as_str().expect("product").to_string(),
                    amount: v["amount"].as_f64().expect("amount"),
                    ts: v["ts"].as_i64().expect("ts"),
                }
            })
            .collect()
    }

    async fn differences(&self, con: &mut redis::cluster_async::ClusterConnection, expected: &Table) -> Vec<String> {
        let keys = tokio::task::block_in_place(|| self.cluster.keys("rf:orders:*"));
        let mut problems = Vec::new();
        let want: BTreeMap<String, _> =
            expected.iter().map(|((c, s), e)| (format!("rf:orders:{c}:{s}"), (*s, e))).collect();
        for key in keys.iter().filter(|k| !want.contains_key(*k)) {
            problems.push(format!("unexpected {key}"));
        }
        for (key, (start, e)) in &want {
            let fields: BTreeMap<String, String> = match con.hgetall(key).await {
                Ok(f) => f,
                Err(err) => {
                    problems.push(format!("{key}: {err}"));
                    continue;
                }
            };
            if fields.is_empty() {
                problems.push(format!("missing {key}"));
            } else if let Err(p) = reference::check_entry(&fields, *start, e) {
                problems.push(format!("{key}: {p}"));
            }
        }
        problems
    }
}

/// Per connector: whether it answers, records in, late records.
fn connector_states(connectors: &[&Connector]) -> String {
    let states: Vec<String> = connectors
        .iter()
        .map(|c| match c.scrape() {
            Some(text) => {
                let metrics = Exposition::parse(&text);
                format!(
                    "{} (records in {}, late {})",
                    c.name,
                    metrics.sum("regionflow_records_in_total", &[]),
                    metrics.sum("regionflow_late_records_total", &[])
                )
            }
            None => format!("{} (not answering)", c.name),
        })
        .collect();
    states.join(", ")
}

/// Offsets at which `connector` stopped each partition gracefully, and at
/// which `successor` restored them (partitions from the lines' task span).
fn handoff_offsets(stopped: &Connector, successor: &Connector) -> (BTreeMap<i64, i64>, BTreeMap<i64, i64>) {
    let by_partition = |events: Vec<serde_json::Value>, offset: &str| {
        events.into_iter().filter_map(|e| Some((e["span"]["partition"].as_i64()?, e[offset].as_i64()?))).collect()
    };
    (
        by_partition(stopped.log_events("partition task stopped"), "next_offset"),
        by_partition(successor.log_events("restored from checkpoint"), "offset"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_of_one_connector_loses_and_doubles_nothing() {
    let s = Scenario::new(1, 1);
    let mut a = s.connector("a");
    let b = s.connector("b");
    let producing = s.start_producing();
    s.wait_produced(0.4).await;
    s.wait_for_checkpoints(Duration::from_secs(30)).await;
    a.kill();
    producing.await.expect("produced");
    s.assert_region_equals_reference(Duration::from_secs(120), &[&b]).await;
    let takeovers =
        b.metric("regionflow_partition_takeovers_total", &[("pipeline", "orders"), ("restored_from", "checkpoint")]);
    assert!(takeovers >= 1.0, "b restored a's partitions from checkpoints");
    let recovery_sum = b.metric("regionflow_recovery_duration_seconds_sum", &[]);
    let recovery_count = b.metric("regionflow_recovery_duration_seconds_count", &[]);
    eprintln!("recovery after SIGKILL: {:.3}s mean over {recovery_count} partition starts (session timeout 6s not included: it precedes the assignment)", recovery_sum / recovery_count.max(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_handoff_replays_nothing() {
    let s = Scenario::new(2, 1);
    let mut a = s.connector("a");
    let producing = s.start_producing();
    s.wait_produced(0.3).await;
    let b = s.connector("b");
    s.wait_produced(0.5).await;
    assert!(
        tokio::task::block_in_place(|| a.terminate(Duration::from_secs(30))),
        "a exits 0 on SIGTERM:\n{}",
        a.logs()
    );
    producing.await.expect("produced");
    s.assert_region_equals_reference(Duration::from_secs(120), &[&b]).await;
    let (stops, restores) = handoff_offsets(&a, &b);
    assert!(!stops.is_empty(), "a stopped its partitions gracefully");
    for (partition, stopped_at) in &stops {
        let restored_at =
            restores.get(partition).unwrap_or_else(|| panic!("b restored partition {partition}: {restores:?}"));
        assert_eq!(
            restored_at, stopped_at,
            "partition {partition}: b starts exactly where a stopped (nothing replayed)"
        );
    }
    let recovery_sum = b.metric("regionflow_recovery_duration_seconds_sum", &[]);
    let recovery_count = b.metric("regionflow_recovery_duration_seconds_count", &[]);
    eprintln!(
        "recovery after graceful handoff: {:.3}s mean over {recovery_count} partition starts",
        recovery_sum / recovery_count.max(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zombie_connector_is_fenced() {
    // No checkpoint within the test: the zombie surely holds results it has
    // not checkpointed when it wakes, and stopping its tasks writes them
    // (with the default 500 ms, a pause right after a checkpoint leaves the
    // zombie nothing to write and nothing to fence; CI hit that).
    let timing = Timing { checkpoint_interval: Duration::from_secs(300), ..Timing::default() };
    let s = Scenario::custom(3, 0, timing);
    let a = s.connector("a");
    let producing = s.start_producing();
    s.wait_produced(0.3).await;
    a.pause();
    let b = s.connector("b");
    // Past a's session timeout: b takes over all partitions while a sleeps
    // with its unflushed results.
    s.wait_produced(0.6).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    a.resume();
    producing.await.expect("produced");
    s.assert_region_equals_reference(Duration::from_secs(120), &[&b]).await;
    let fenced = a.metric("regionflow_fenced_writes_total", &[])
        + a.metric("regionflow_checkpoints_total", &[("outcome", "fenced")]);
    // A zombie whose fenced restart lost the race to the group may have
    // stopped by now (its metrics gone); its log still shows the fencing:
    // a fenced write, or a task that failed because it was fenced.
    let fenced_writes = a.log_events("writes fenced: a newer owner holds this partition").len();
    let fenced_tasks = a
        .log_events("partition task failed")
        .iter()
        .filter(|e| e["error"].as_str().is_some_and(|e| e.contains("were fenced")))
        .count();
    assert!(
        fenced >= 1.0 || fenced_writes + fenced_tasks > 0,
        "the zombie's stale writes or checkpoints were fenced:\n{}",
        a.logs()
    );
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_primary_failover_is_ridden_through() {
    let mut s = Scenario::new(4, 0);
    let a = s.connector("a");
    let producing = s.start_producing();
    s.wait_produced(0.4).await;
    // Kill the primary holding a region entry that is being written.
    let victim = tokio::task::block_in_place(|| s.cluster.kill_primary_for_key("rf:orders:c1:1700000000000"));
    eprintln!("killed Redis primary on port {victim}");
    producing.await.expect("produced");
    s.assert_region_equals_reference(Duration::from_secs(150), &[&a]).await;
    let ridden = a.metric("regionflow_redis_failovers_total", &[]) + a.metric("regionflow_redis_retries_total", &[]);
    assert!(ridden >= 1.0, "the failover shows in the metrics:\n{}", a.scrape().unwrap_or_default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stall_under_redundancy_is_ridden_through() {
    // With redundancy, a checkpoint vouches for the writes since the
    // previous one by the primaries' replication offsets, which a stall long
    // enough to replace the Redis connection does not disturb: the tasks
    // wait out the stall and go on, and the connector keeps running. Windows
    // close every second, so tasks are writing results when the stall
    // begins. While its tasks wait on Redis the connector stops polling
    // Kafka (backpressure), so the group session must outlast the stall;
    // the statistics a blocked connector holds are too old to call a
    // partition caught up, so no idle watermark jumps past the records
    // that piled up in Kafka meanwhile.
    let timing = Timing {
        checkpoint_interval: Duration::from_secs(10),
        session_timeout: Duration::from_secs(30),
        ..Timing::default()
    };
    let s = Scenario::custom(8, 1, timing);
    let mut a = s.connector("a");
    let producing = s.start_producing();
    s.wait_produced(0.4).await;
    // Long enough that writes time out in a pipeline (2 s), then fail one
    // by one for longer than the connection's replacement threshold (3 s).
    s.cluster.pause_writes(Duration::from_secs(12));
    producing.await.expect("produced");
    s.assert_region_equals_reference(Duration::from_secs(150), &[&a]).await;
    assert!(a.is_running(), "the connector rode the stall out:\n{}", a.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_redis_stall_stops_within_the_shutdown_timeout() {
    // Redis takes no writes for 25 s: the tasks wait on their writes, their
    // queues fill and the dispatch loop waits to hand over more records.
    // SIGTERM must still stop the connector within its shutdown timeout
    // (3 s here), not when the stall ends; what it had not written or
    // checkpointed, the next connector replays.
    let timing = Timing {
        session_timeout: Duration::from_secs(30),
        shutdown_timeout: Duration::from_secs(3),
        ..Timing::default()
    };
    let s = Scenario::custom(9, 0, timing);
    let mut a = s.connector("a");
    let producing = s.start_producing();
    s.wait_produced(0.3).await;
    s.wait_for_checkpoints(Duration::from_secs(30)).await;
    let stall = Duration::from_secs(25);
    s.cluster.pause_writes(stall);
    let stalled = Instant::now();
    // Records keep coming: the tasks stop taking them (their writes are
    // stuck), so their queues fill and the dispatch loop waits.
    s.wait_produced(0.55).await;
    let processed = a.metric("regionflow_records_in_total", &[]);
    s.wait_produced(0.6).await;
    assert_eq!(a.metric("regionflow_records_in_total", &[]), processed, "the stall stopped the tasks:\n{}", a.logs());
    let asked = Instant::now();
    let exited = tokio::task::block_in_place(|| a.terminate(Duration::from_secs(15)));
    let took = asked.elapsed();
    eprintln!("SIGTERM {:?} into the stall; the connector exited after {took:?}", asked - stalled);
    assert!(exited, "SIGTERM during the stall: exit 0 within 15 s (took {took:?}):\n{}", a.logs());
    assert!(
        took < Duration::from_secs(10) && stalled.elapsed() < stall,
        "stopped {took:?} after SIGTERM, {:?} into the {stall:?} stall:\n{}",
        stalled.elapsed(),
        a.logs()
    );
    tokio::time::sleep(stall.saturating_sub(stalled.elapsed())).await;
    let b = s.connector("b");
    producing.await.expect("produced");
    s.assert_region_equals_reference(Duration::from_secs(120), &[&b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_broker_faults_delay_but_lose_nothing() {
    // One broker down stalls the test's producer for every partition: 3 s
    // plus its reconnect and idempotent-producer recovery, several seconds
    // more on a loaded machine. Partitions on the other brokers are then
    // genuinely idle, so the idle timeout must be longer than that stall.
    let s = Scenario::custom(5, 1, Timing { idle_timeout: Duration::from_secs(20), ..Timing::default() });
    let a = s.connector("a");
    let b = s.connector("b");
    let producing = s.start_producing();
    s.wait_produced(0.3).await;
    // Fetches and offset commits fail for a while.
    s.kafka.cluster.request_errors(
        rdkafka::types::RDKafkaApiKey::Fetch,
        &[rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 20],
    );
    s.kafka.cluster.request_errors(
        rdkafka::types::RDKafkaApiKey::OffsetCommit,
        &[rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT; 5],
    );
    s.wait_produced(0.5).await;
    // A broker (leader of some partitions, maybe the group coordinator)
    // goes away for 3 s, then more request errors: heartbeats and fetches.
    s.kafka.cluster.broker_down(2).expect("broker 2 down");
    tokio::time::sleep(Duration::from_secs(3)).await;
    s.kafka.cluster.broker_up(2).expect("broker 2 up");
    s.kafka.cluster.request_errors(
        rdkafka::types::RDKafkaApiKey::Heartbeat,
        &[rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT; 3],
    );
    s.kafka.cluster.request_errors(
        rdkafka::types::RDKafkaApiKey::Fetch,
        &[rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART; 10],
    );
    producing.await.expect("produced");
    // The idempotent producer's retries around the outage may leave the
    // mock broker's log in another order than produced (records more than
    // the allowed disorder behind their partition's newest one). The
    // contract is every *stored* record exactly once, in stored order, late
    // ones dropped: the reference follows the topic as stored.
    let stored = s.stored_orders();
    let (expected, late) = reference::fixed_windows(&stored, 1_000, 1_000, 0, DISORDER_MS, false);
    eprintln!("broker stored {} records ({RECORDS} produced); {late} late in stored order", stored.len());
    s.assert_region_equals(&expected, late, Duration::from_secs(150), &[&a, &b]).await;
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_stop_and_restart_continues_from_checkpoints() {
    let s = Scenario::new(6, 1);
    let mut a = s.connector("a");
    let mut b = s.connector("b");
    let producing = s.start_producing();
    s.wait_produced(0.4).await;
    s.wait_for_checkpoints(Duration::from_secs(30)).await;
    let (ta, tb) =
        tokio::task::block_in_place(|| (a.terminate(Duration::from_secs(30)), b.terminate(Duration::from_secs(30))));
    assert!(ta && tb, "both exit 0");
    // Input continues while nothing runs.
    s.wait_produced(0.6).await;
    let c = s.connector("c");
    let d = s.connector("d");
    producing.await.expect("produced");
    s.assert_region_equals_reference(Duration::from_secs(120), &[&c, &d]).await;
    let restored = c
        .metric("regionflow_partition_takeovers_total", &[("pipeline", "orders"), ("restored_from", "checkpoint")])
        + d.metric("regionflow_partition_takeovers_total", &[("pipeline", "orders"), ("restored_from", "checkpoint")]);
    assert!(restored >= PARTITIONS as f64, "every partition restored from its checkpoint, got {restored}");
}
