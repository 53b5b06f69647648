//! Bad input: malformed, incomplete, mistyped and oversize records go to the
//! dead-letter topic with their position and reason while the good ones are
//! aggregated exactly; `errors.tolerance = "none"` stops the connector at the
//! first bad record; unreachable Kafka or Redis fail start-up with a clear
//! error after a bounded retry.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

use common::kafka::{header, Kafka, Produce};
use common::redis_cluster::RedisCluster;
use regionflow::config::Settings;
use regionflow::metrics::{Health, Metrics};

const PARTITIONS: i32 = 3;

fn settings(kafka_brokers: &str, redis_nodes: &[String], tolerance: &str, startup: &str) -> Settings {
    Settings::from_toml_str(&format!(
        r#"
[kafka]
brokers = "{kafka_brokers}"
group_id = "bad-input"
startup_timeout = "{startup}"
[redis]
nodes = {nodes}
startup_timeout = "{startup}"
connect_timeout = "1s"
[connector]
flush_interval = "100ms"
[pipelines.payments]
topics = ["payments"]
key = {{ from = "field", pointer = "/account" }}
event_time = {{ from = "field", pointer = "/ts" }}
window = {{ kind = "tumbling", size = "1s" }}
watermark = {{ max_out_of_orderness = "0s", idle_timeout = "1s" }}
max_record_bytes = 512
errors = {{ tolerance = "{tolerance}", deadletterqueue_topic_name = "payments-dlq" }}
aggregates.payments = {{ function = "count" }}
aggregates.total = {{ function = "sum", field = "/amount" }}
region = {{ name = "payments" }}
"#,
        nodes = common::toml_nodes(redis_nodes)
    ))
    .expect("valid test configuration")
}

/// (payload, expected DLQ stage or None for a good record)
fn data_set() -> Vec<(String, Option<&'static str>)> {
    let mut out = Vec::new();
    for i in 0..300i64 {
        let ts = 1_700_000_000_000 + i * 10;
        let good = format!(r#"{{"account":"a{}","ts":{ts},"amount":{}}}"#, i % 7, i % 13);
        let record = match i % 25 {
            3 => (r#"{"account":"a1","ts":"#.to_string(), Some("parse")),
            8 => (format!(r#"{{"ts":{ts},"amount":1}}"#), Some("key")),
            13 => (format!(r#"{{"account":"a2","amount":1,"t":{ts}}}"#), Some("event_time")),
            18 => (format!(r#"{{"account":"a3","ts":{ts},"amount":"lots"}}"#), Some("aggregate")),
            23 => (format!(r#"{{"account":"a4","ts":{ts},"amount":1,"pad":"{}"}}"#, "x".repeat(600)), Some("size")),
            _ => (good, None),
        };
        out.push(record);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_go_to_the_dead_letter_topic_and_good_ones_are_exact() {
    common::init_logging();
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let kafka = Kafka::start(&[("payments", PARTITIONS), ("payments-dlq", 1)]);
    let data = data_set();
    let records: Vec<Produce> = data
        .iter()
        .enumerate()
        .map(|(i, (payload, _))| Produce {
            partition: i as i32 % PARTITIONS,
            key: None,
            value: payload.clone().into_bytes(),
        })
        .collect();
    kafka.produce("payments", &records).await;

    // Reference: good records only, per (account, 1 s window).
    let mut expected: BTreeMap<String, (u64, f64)> = BTreeMap::new();
    for (payload, stage) in &data {
        if stage.is_none() {
            let v: serde_json::Value = serde_json::from_str(payload).expect("good records are JSON");
            let start = v["ts"].as_i64().expect("ts") / 1000 * 1000;
            let e =
                expected.entry(format!("rf:payments:{}:{start}", v["account"].as_str().expect("account"))).or_default();
            e.0 += 1;
            e.1 += v["amount"].as_f64().expect("amount");
        }
    }
    let bad: Vec<(usize, &str)> = data.iter().enumerate().filter_map(|(i, (_, s))| s.map(|s| (i, s))).collect();

    let connector = common::InProcess::start(settings(&kafka.brokers, &cluster.urls(), "all", "20s")).await;

    let client = redis::cluster::ClusterClient::new(cluster.urls()).expect("client");
    let mut con = client.get_async_connection().await.expect("connection");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got: BTreeMap<String, (u64, f64)> = BTreeMap::new();
    while Instant::now() < deadline {
        got.clear();
        for key in cluster.keys("rf:payments:*") {
            let fields: BTreeMap<String, String> = con.hgetall(&key).await.expect("HGETALL");
            let n = fields.get("payments").and_then(|v| v.parse().ok()).unwrap_or(0);
            let total = fields.get("total").and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
            got.insert(key, (n, total));
        }
        if got == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(got, expected, "the region holds exactly the good records");

    let letters =
        tokio::task::block_in_place(|| kafka.read_topic("payments-dlq", 1, bad.len(), Duration::from_secs(30)));
    assert_eq!(letters.len(), bad.len(), "one dead letter per bad record");
    let mut seen: Vec<(i32, i64, String)> = letters
        .iter()
        .map(|m| {
            assert_eq!(header(m, "__connect.errors.topic").as_deref(), Some("payments"));
            assert!(header(m, "__connect.errors.exception.message").is_some_and(|r| !r.is_empty()), "a reason");
            (
                header(m, "__connect.errors.partition").expect("partition").parse().expect("number"),
                header(m, "__connect.errors.offset").expect("offset").parse().expect("number"),
                header(m, "__connect.errors.stage").expect("stage"),
            )
        })
        .collect();
    seen.sort();
    // Record i went to partition i % P at offset i / P.
    let mut want: Vec<(i32, i64, String)> =
        bad.iter().map(|(i, s)| (*i as i32 % PARTITIONS, (*i as i32 / PARTITIONS) as i64, s.to_string())).collect();
    want.sort();
    assert_eq!(seen, want, "each bad record's position and stage");

    let text = connector.metrics.render();
    for stage in ["parse", "key", "event_time", "aggregate", "size"] {
        let n = bad.iter().filter(|(_, s)| *s == stage).count();
        let line = format!("regionflow_dlq_records_total{{pipeline=\"payments\",stage=\"{stage}\"}} {n}");
        assert!(text.contains(&line), "missing `{line}`");
        let line = format!("regionflow_decode_failures_total{{pipeline=\"payments\",stage=\"{stage}\"}} {n}");
        assert!(text.contains(&line), "missing `{line}`");
    }
    connector.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tolerance_none_stops_at_the_first_bad_record_with_its_position() {
    common::init_logging();
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let kafka = Kafka::start(&[("payments", 1)]);
    let records = [r#"{"account":"a","ts":1,"amount":1}"#, "not json", r#"{"account":"a","ts":2,"amount":1}"#];
    let records: Vec<Produce> =
        records.iter().map(|r| Produce { partition: 0, key: None, value: r.as_bytes().to_vec() }).collect();
    kafka.produce("payments", &records).await;
    let settings = settings(&kafka.brokers, &cluster.urls(), "none", "20s");
    let metrics = Arc::new(Metrics::new());
    let sinks = regionflow::app::redis_sinks(&settings, &metrics).await.expect("Redis reachable");
    let run =
        regionflow::connector::run(settings, sinks, metrics, Arc::new(Health::default()), CancellationToken::new());
    let error = tokio::time::timeout(Duration::from_secs(60), run).await.expect("stops by itself").expect_err("fails");
    let message = error.to_string();
    assert!(message.contains("payments[0]@1"), "names the record's position: {message}");
    assert!(message.contains("parse"), "names the stage: {message}");
}

#[test]
fn unreachable_kafka_and_redis_fail_start_up_clearly() {
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("temp dir");
    let run = |kafka: &str, redis: &str| {
        let path = dir.path().join("regionflow.toml");
        let s = settings(kafka, &[redis.to_string()], "all", "2s");
        std::fs::write(&path, toml::to_string(&s).expect("serializable")).expect("written");
        let started = Instant::now();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_regionflow"))
            .args(["run", "--config"])
            .arg(&path)
            .env("REGIONFLOW__METRICS__LISTEN", "127.0.0.1:0")
            .output()
            .expect("binary runs");
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned(), started.elapsed())
    };
    let (ok, stderr, took) = run("127.0.0.1:1", &format!("redis://127.0.0.1:{closed_port}"));
    assert!(!ok, "fails");
    assert!(stderr.contains("cannot reach Redis Cluster") && stderr.contains("redis.nodes"), "{stderr}");
    assert!(took < Duration::from_secs(20), "bounded retry, took {took:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let cluster = RedisCluster::start();
    let (ok, stderr, took) = run(&format!("127.0.0.1:{closed_port}"), &cluster.urls()[0]);
    assert!(!ok, "fails");
    assert!(stderr.contains("cannot reach Kafka brokers") && stderr.contains("kafka.brokers"), "{stderr}");
    assert!(took < Duration::from_secs(30), "bounded retry, took {took:?}");
}
