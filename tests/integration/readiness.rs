//! `/readyz` means what the README says: ready once the connector is in its
//! group and every assigned partition has restored its checkpoint; not
//! ready while joining, after Redis stopped answering for longer than
//! `connector.unready_after_redis_down`, and from the start of shutdown.

use crate::common;

use std::time::{Duration, Instant};

use common::kafka::Kafka;
use common::redis_cluster::RedisCluster;
use regionflow::config::Settings;

async fn until(what: &str, timeout: Duration, check: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < timeout, "not {what} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_assignment_restore_redis_and_shutdown() {
    common::init_logging();
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let kafka = Kafka::start(&[("events", 2)]);
    let settings = Settings::from_toml_str(&format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "readiness"
[redis]
nodes = {nodes}
connect_timeout = "500ms"
[connector]
unready_after_redis_down = "2s"
{pipeline}"#,
        brokers = kafka.brokers,
        nodes = common::toml_nodes(&cluster.urls()),
        pipeline = common::counting_pipeline("p", "events", "r")
    ))
    .expect("valid");

    let connector = common::InProcess::start(settings).await;
    assert!(!connector.health.is_ready(), "not ready before the group assigned anything");
    let joined = until("ready", Duration::from_secs(30), || connector.health.is_ready()).await;
    let owned = connector.metrics.render();
    assert!(owned.contains("regionflow_partitions_owned{pipeline=\"p\"} 2"), "ready once both partitions run: {owned}");
    println!("ready after {joined:?}");

    // Every primary stops answering (all commands paused) for 8 s.
    for port in cluster.primary_ports() {
        cluster.node_cmd(port, &["CLIENT", "PAUSE", "8000", "ALL"]);
    }
    let down =
        until("unready while Redis does not answer", Duration::from_secs(7), || !connector.health.is_ready()).await;
    assert!(down >= Duration::from_secs(2), "not before the 2 s threshold: {down:?}");
    until("ready again once Redis answers", Duration::from_secs(15), || connector.health.is_ready()).await;

    connector.begin_stop();
    until("unready once shutdown begins", Duration::from_secs(1), || !connector.health.is_ready()).await;
    connector.stop().await.expect("clean shutdown");
}
