//! The operations CLI for checkpoints: `regionflow checkpoints list` shows
//! what a stopped connector stored, `reset` refuses without `--yes` and then
//! deletes them.

use crate::common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use common::kafka::{Kafka, Produce};
use common::prom_text::Exposition;
use common::redis_cluster::RedisCluster;
use regionflow::config::Settings;
use regionflow::metrics::{Health, Metrics};

fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_regionflow")).args(args).output().expect("binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_shows_stored_checkpoints_and_reset_deletes_them() {
    common::init_logging();
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let kafka = Kafka::start(&[("clicks", 2)]);
    let per_partition = [37usize, 58];
    let mut records = Vec::new();
    for (partition, n) in per_partition.iter().enumerate() {
        for i in 0..*n {
            let value = format!(r#"{{"user":"u{}","ts":{}}}"#, i % 5, 1_700_000_000_000 + i as i64 * 100);
            records.push(Produce { partition: partition as i32, key: None, value: value.into_bytes() });
        }
    }
    kafka.produce("clicks", &records).await;
    let toml = format!(
        r#"
[kafka]
brokers = "{}"
group_id = "cli"
[redis]
nodes = {}
[connector]
flush_interval = "100ms"
checkpoint_interval = "200ms"
[pipelines.clicks]
topics = ["clicks"]
key = {{ from = "field", pointer = "/user" }}
event_time = {{ from = "field", pointer = "/ts" }}
window = {{ kind = "tumbling", size = "1s" }}
aggregates.clicks = {{ function = "count" }}
region = {{ name = "clicks" }}
"#,
        kafka.brokers,
        common::toml_nodes(&cluster.urls())
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("regionflow.toml");
    std::fs::write(&path, &toml).expect("written");
    let config = path.to_str().expect("utf-8 path");

    let settings = Settings::from_toml_str(&toml).expect("valid");
    let metrics = Arc::new(Metrics::new());
    let sinks = regionflow::app::redis_sinks(&settings, &metrics).await.expect("Redis reachable");
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(regionflow::connector::run(
        settings,
        sinks,
        metrics.clone(),
        Arc::new(Health::default()),
        shutdown.clone(),
    ));
    let total: usize = per_partition.iter().sum();
    while Exposition::parse(&metrics.render()).sum("regionflow_records_in_total", &[]) < total as f64 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    run.await.expect("joined").expect("clean stop");

    let (ok, stdout, stderr) = tokio::task::block_in_place(|| cli(&["checkpoints", "list", "--config", config]));
    assert!(ok, "{stderr}");
    for (partition, n) in per_partition.iter().enumerate() {
        let row = stdout
            .lines()
            .find(|l| l.split_whitespace().take(3).collect::<Vec<_>>() == ["clicks", "clicks", &partition.to_string()])
            .unwrap_or_else(|| panic!("a row for partition {partition} in:\n{stdout}"));
        let offset: i64 = row.split_whitespace().nth(3).expect("offset column").parse().expect("number");
        assert_eq!(offset, *n as i64, "partition {partition}'s checkpoint is after its last record:\n{stdout}");
    }

    let (ok, _, stderr) =
        tokio::task::block_in_place(|| cli(&["checkpoints", "reset", "--config", config, "--pipeline", "clicks"]));
    assert!(!ok && stderr.contains("--yes"), "reset needs confirmation: {stderr}");
    let (ok, stdout, stderr) = tokio::task::block_in_place(|| {
        cli(&["checkpoints", "reset", "--config", config, "--pipeline", "clicks", "--yes"])
    });
    assert!(ok && stdout.contains("deleted 2 checkpoints"), "{stdout}{stderr}");
    let (ok, stdout, _) = tokio::task::block_in_place(|| cli(&["checkpoints", "list", "--config", config]));
    assert!(ok && stdout.lines().count() == 1, "only the header is left:\n{stdout}");
}

/// An interactive command fails within seconds when Redis is not there,
/// where a connector (startup_timeout, default 30 s) waits out a restart.
#[test]
fn list_fails_fast_when_redis_is_not_there() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("regionflow.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[kafka]
brokers = "127.0.0.1:1"
[redis]
nodes = ["redis://127.0.0.1:{closed}"]
[pipelines.clicks]
topics = ["clicks"]
key = {{ from = "kafka_key" }}
event_time = {{ from = "kafka_timestamp" }}
window = {{ kind = "tumbling", size = "1s" }}
aggregates.clicks = {{ function = "count" }}
region = {{ name = "clicks" }}
"#
        ),
    )
    .expect("written");
    let started = std::time::Instant::now();
    let (ok, _, stderr) = cli(&["checkpoints", "list", "--config", path.to_str().expect("utf-8")]);
    assert!(!ok, "fails");
    assert!(stderr.contains("cannot reach Redis Cluster"), "{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "within seconds: {:?}", started.elapsed());
}
