//! End to end: a real Kafka-protocol broker (librdkafka's mock cluster over
//! TCP), a real six-node Redis Cluster, and the connector in process.
//! Every region entry is compared with a reference computed in the test from
//! the produced data, for tumbling, sliding and session windows, with
//! out-of-order and late records and a group key (the customer) that differs
//! from the Kafka key (the order), so entries merge partials of several
//! partitions; then the connector's metrics are checked against the data
//! (records in, late records, bytes out, consumer lag back at 0). The
//! scenario lives in tests/common/scenario.rs; tests/integration/containers.rs runs it
//! against the official Apache Kafka and Redis images.

use crate::common;

use std::time::{Duration, Instant};

use common::kafka::Kafka;
use common::prom_text::Exposition;
use common::redis_cluster::RedisCluster;
use common::scenario::{Scenario, TOPICS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regions_equal_reference_for_every_window_kind() {
    common::init_logging();
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    tracing::info!("redis cluster up");
    let kafka = Kafka::start(&TOPICS);
    let scenario = Scenario::new();
    scenario.produce(&kafka.brokers).await;
    tracing::info!("data produced");

    let connector = common::InProcess::start(scenario.settings(&kafka.brokers, &cluster.urls(), "e2e")).await;
    scenario.check_regions(&cluster.urls(), |pattern| cluster.keys(pattern), &connector, Duration::from_secs(90)).await;
    scenario.check_metrics(&connector).await;

    connector.stop().await.expect("connector ran without error");
}

/// Kafka gone (every broker down) when the connector is asked to stop: the
/// consumer's close cannot leave the group, and librdkafka waits for the
/// coordinator without a bound of its own. The connector must still stop
/// within its shutdown timeout, flushing and checkpointing what it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_stops_in_time_with_kafka_gone() {
    common::init_logging();
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let kafka = Kafka::start(&TOPICS);
    let scenario = Scenario::new();
    scenario.produce(&kafka.brokers).await;
    let connector = common::InProcess::start(scenario.settings(&kafka.brokers, &cluster.urls(), "gone")).await;
    let started = Instant::now();
    while Exposition::parse(&connector.metrics.render()).sum("regionflow_records_in_total", &[]) == 0.0 {
        assert!(started.elapsed() < Duration::from_secs(30), "the connector consumes within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(kafka);
    let asked = Instant::now();
    connector.begin_stop();
    let ended = tokio::time::timeout(Duration::from_secs(60), connector.handle).await;
    let took = asked.elapsed();
    let ended =
        ended.unwrap_or_else(|_| panic!("the connector did not stop within 60 s of its shutdown with Kafka gone"));
    eprintln!("stopped {took:?} after the request: {ended:?}");
    assert!(took < Duration::from_secs(40), "stopped {took:?} after the request, beyond its 30 s shutdown timeout");
}
