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
use regionflow::connector::LEAVE_GROUP_TIMEOUT;

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

/// What has happened to Kafka when the connector is asked to stop.
#[derive(Clone, Copy, Debug)]
enum Outage {
    /// Every broker gone: connections refused.
    Gone,
    /// Every broker up but answering nothing for an hour.
    Silent,
}

/// Kafka gone (every broker down) when the connector is asked to stop: the
/// consumer's close cannot leave the group, and librdkafka's close waits
/// for the coordinator without a bound of its own (librdkafka #4519).
/// The connector must still stop within its shutdown timeout plus
/// [`LEAVE_GROUP_TIMEOUT`], flushing and checkpointing what it has.
#[test]
fn a_connector_stops_in_time_with_kafka_gone() {
    stops_in_time(Outage::Gone);
}

/// As above, with brokers that accept requests and answer none: the close
/// waits on requests until `socket.timeout.ms` (a minute), then retries.
#[test]
fn a_connector_stops_in_time_with_kafka_not_answering() {
    stops_in_time(Outage::Silent);
}

/// Runs the connector on a runtime of the test's own and counts stopping
/// as done when that runtime is gone too: the binary's `#[tokio::main]`
/// drops its runtime when `run` returns, and that drop waits without a
/// bound for every thread the runtime handed blocking work to. A close
/// left on such a thread held the suite's runtime forever once (CI at
/// `170ad1b`).
fn stops_in_time(outage: Outage) {
    common::init_logging();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a Tokio runtime");
    let cluster = RedisCluster::start();
    let kafka = Kafka::start(&TOPICS);
    let scenario = Scenario::new();
    let mut settings = scenario.settings(&kafka.brokers, &cluster.urls(), "gone");
    // A producer too (dead letters), whose close is the other one Kafka's outage can hold.
    let tumbling = settings.pipelines.get_mut("tumbling").expect("the scenario's tumbling pipeline");
    tumbling.errors.deadletterqueue_topic_name = Some("tumbling-dead".to_string());
    let budget = settings.connector.shutdown_timeout + LEAVE_GROUP_TIMEOUT;
    let (asked, kafka) = runtime.block_on(async {
        scenario.produce(&kafka.brokers).await;
        let connector = common::InProcess::start(settings).await;
        let started = Instant::now();
        while Exposition::parse(&connector.metrics.render()).sum("regionflow_records_in_total", &[]) == 0.0 {
            assert!(started.elapsed() < Duration::from_secs(30), "the connector consumes within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let kafka = match outage {
            Outage::Gone => {
                drop(kafka);
                None
            }
            Outage::Silent => {
                // -1: every broker.
                kafka.cluster.broker_round_trip_time(-1, Duration::from_secs(3600)).expect("mock brokers slowed");
                Some(kafka)
            }
        };
        let asked = Instant::now();
        connector.begin_stop();
        let ended = tokio::time::timeout(budget + Duration::from_secs(20), connector.handle)
            .await
            .unwrap_or_else(|_| panic!("the connector did not stop within {budget:?} + 20 s with Kafka {outage:?}"));
        eprintln!("run returned {:?} after the request: {ended:?}", asked.elapsed());
        (asked, kafka)
    });
    let (dropped, gone) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(runtime);
        let _ = dropped.send(());
    });
    let waited = gone.recv_timeout(budget.saturating_sub(asked.elapsed()) + Duration::from_secs(5));
    let took = asked.elapsed();
    assert!(
        waited.is_ok(),
        "the connector's runtime was still not dropped {took:?} after the request: a thread it waits for hangs"
    );
    eprintln!("runtime dropped {took:?} after the request");
    assert!(took < budget, "stopped {took:?} after the request, beyond the {budget:?} it may take");
    drop(kafka);
}
