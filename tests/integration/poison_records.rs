//! Poison records: numbers that overflow and event times from the far
//! future, the year 0 or no time at all must neither stop the connector nor
//! blind the partition. Overflowing sums become `inf`/`-inf` in the region;
//! implausible event times go to the dead-letter topic with stage
//! `event_time` and do not move the watermark, so the records after them
//! are aggregated as if they had never been there. A topic recreated
//! behind the checkpoints stops the connector with how to start over.

use crate::common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use redis::AsyncCommands;

use common::kafka::{header, Kafka, Produce};
use common::prom_text::Exposition;
use common::redis_cluster::RedisCluster;
use regionflow::config::Settings;

const T0: i64 = 1_700_000_000_000;

fn settings(kafka_brokers: &str, redis_nodes: &[String]) -> Settings {
    Settings::from_toml_str(&format!(
        r#"
[kafka]
brokers = "{kafka_brokers}"
group_id = "poison"
[redis]
nodes = {nodes}
[connector]
flush_interval = "100ms"
[pipelines.payments]
topics = ["payments"]
key = {{ from = "field", pointer = "/account" }}
event_time = {{ from = "field", pointer = "/ts" }}
window = {{ kind = "tumbling", size = "1s" }}
watermark = {{ max_out_of_orderness = "0s", idle_timeout = "1s" }}
late_records = "drop"
errors = {{ tolerance = "all", deadletterqueue_topic_name = "payments-dlq" }}
aggregates.n = {{ function = "count" }}
aggregates.total = {{ function = "sum", field = "/amount" }}
region = {{ name = "payments" }}
"#,
        nodes = common::toml_nodes(redis_nodes)
    ))
    .expect("valid test configuration")
}

fn record(account: &str, ts: &str, amount: &str) -> String {
    format!(r#"{{"account":"{account}","ts":{ts},"amount":{amount}}}"#)
}

/// How the reference renders a sum: integers plainly, overflow as Rust's
/// and the merge function's `inf`/`-inf`.
fn render(sum: f64) -> String {
    if sum.is_infinite() {
        if sum > 0.0 { "inf" } else { "-inf" }.to_string()
    } else {
        format!("{}", sum as i64)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflowing_sums_and_implausible_event_times_neither_stop_nor_blind_a_partition() {
    common::init_logging();
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let kafka = Kafka::start(&[("payments", 1), ("payments-dlq", 1)]);
    let year_3000 = "32503680000000".to_string();
    let t = |ms: i64| (T0 + ms).to_string();
    // (payload, dead-letter stage) in partition order.
    let data: Vec<(String, Option<&str>)> = vec![
        (record("big", &t(0), "1e308"), None),
        (record("big", &t(10), "1e308"), None),
        (record("neg", &t(20), "-1.7976931348623157e308"), None),
        (record("neg", &t(30), "-1e308"), None),
        (record("a", &t(40), "1"), None),
        (record("a", &year_3000, "1"), Some("event_time")),
        (record("a", r#""inf""#, "1"), Some("event_time")),
        (record("a", r#""NaN""#, "1"), Some("event_time")),
        (record("a", "1e300", "1"), Some("event_time")),
        (record("a", "-9223372036854775808", "1"), Some("event_time")),
        (record("a", &t(50), "1e400"), Some("parse")),
        // After the poison: the same window and the next ones must count.
        (record("a", &t(60), "2"), None),
        (record("big", &t(70), "1"), None),
        (record("a", &t(1_500), "3"), None),
        (record("a", &t(2_500), "4"), None),
    ];
    let produce: Vec<Produce> =
        data.iter().map(|(p, _)| Produce { partition: 0, key: None, value: p.clone().into_bytes() }).collect();
    kafka.produce("payments", &produce).await;

    // Reference: the good records, per (account, 1 s window), summed as f64.
    let mut sums: BTreeMap<String, (u64, f64)> = BTreeMap::new();
    for (payload, stage) in &data {
        if stage.is_none() {
            let v: serde_json::Value = serde_json::from_str(payload).expect("good records are JSON");
            let start = v["ts"].as_i64().expect("ts") / 1000 * 1000;
            let account = v["account"].as_str().expect("account");
            let e = sums.entry(format!("rf:payments:{account}:{start}")).or_default();
            e.0 += 1;
            e.1 += v["amount"].as_f64().expect("amount");
        }
    }
    let expected: BTreeMap<String, (String, String)> =
        sums.into_iter().map(|(k, (n, sum))| (k, (n.to_string(), render(sum)))).collect();
    assert_eq!(expected["rf:payments:big:1700000000000"].1, "inf", "the reference overflows too");
    assert_eq!(expected["rf:payments:neg:1700000000000"].1, "-inf");

    let connector = common::InProcess::start(settings(&kafka.brokers, &cluster.urls())).await;
    let client = redis::cluster::ClusterClient::new(cluster.urls()).expect("client");
    let mut con = client.get_async_connection().await.expect("connection");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = BTreeMap::new();
    while Instant::now() < deadline && !connector.handle.is_finished() {
        got.clear();
        for key in cluster.keys("rf:payments:*") {
            let fields: BTreeMap<String, String> = con.hgetall(&key).await.expect("HGETALL");
            let field = |name: &str| fields.get(name).cloned().unwrap_or_default();
            got.insert(key, (field("n"), field("total")));
        }
        if got == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(!connector.handle.is_finished(), "the connector stopped: {:?}", connector.stop().await);
    assert_eq!(got, expected, "the region holds every good record, overflow as infinities");

    let bad: Vec<(i64, &str)> = data.iter().enumerate().filter_map(|(i, (_, s))| s.map(|s| (i as i64, s))).collect();
    let letters =
        tokio::task::block_in_place(|| kafka.read_topic("payments-dlq", 1, bad.len(), Duration::from_secs(30)));
    let mut seen: Vec<(i64, String)> = letters
        .iter()
        .map(|m| {
            let offset = header(m, "__connect.errors.offset").expect("offset").parse().expect("number");
            (offset, header(m, "__connect.errors.stage").expect("stage"))
        })
        .collect();
    seen.sort();
    let want: Vec<(i64, String)> = bad.iter().map(|(i, s)| (*i, s.to_string())).collect();
    assert_eq!(seen, want, "each poison record is a dead letter at its stage");

    let text = connector.metrics.render();
    let line = "regionflow_dlq_records_total{pipeline=\"payments\",stage=\"event_time\"} 5";
    assert!(text.contains(line), "missing `{line}`");
    let metrics = Exposition::parse(&text);
    let late: Vec<_> = metrics.matching("regionflow_late_records_total", &[]).filter(|s| s.value != 0.0).collect();
    assert!(late.is_empty(), "nothing was late: {late:?}");
    connector.stop().await.expect("clean shutdown");
}

/// A topic recreated under a running pipeline's checkpoints (here: the same
/// Redis, a new broker whose `payments` holds 3 records where the checkpoint
/// says 20 were processed). Skipping every offset below the checkpoint
/// would drop the new records silently; the connector stops within seconds
/// and says how to start over. The statistics and the leader both see the
/// short log here; a zombie's stale statistics alone must not do this (the
/// task's unit tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_topic_stops_the_connector_with_how_to_start_over() {
    common::init_logging();
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let produce = |n: i64| -> Vec<Produce> {
        (0..n)
            .map(|i| Produce { partition: 0, key: None, value: record("a", &(T0 + i).to_string(), "1").into_bytes() })
            .collect()
    };

    let before = Kafka::start(&[("payments", 1), ("payments-dlq", 1)]);
    before.produce("payments", &produce(20)).await;
    let connector = common::InProcess::start(settings(&before.brokers, &cluster.urls())).await;
    let consumed = || {
        Exposition::parse(&connector.metrics.render())
            .matching("regionflow_records_in_total", &[("pipeline", "payments")])
            .map(|s| s.value)
            .sum::<f64>()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumed() < 20.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(consumed(), 20.0, "the first connector consumed the topic");
    connector.stop().await.expect("checkpointed at offset 20 on a clean stop");
    drop(before);

    let after = Kafka::start(&[("payments", 1), ("payments-dlq", 1)]);
    after.produce("payments", &produce(3)).await;
    let connector = common::InProcess::start(settings(&after.brokers, &cluster.urls())).await;
    let ended = tokio::time::timeout(Duration::from_secs(60), connector.handle)
        .await
        .expect("the connector stops by itself within a minute")
        .expect("joined");
    let error = ended.expect_err("a log behind the checkpoint stops the connector").to_string();
    assert!(error.contains("the partition's log ends at offset 3, before the checkpoint's position 20"), "{error}");
    assert!(error.contains("regionflow checkpoints reset --pipeline payments"), "{error}");
}
