//! What is refused at start: a Redis Cluster whose eviction policy can
//! drop checkpoints and epoch counters (keys without a TTL), and a region
//! that another deployment's pipeline already writes.

use crate::common;

use common::redis_cluster::RedisCluster;
use regionflow::config::Settings;
use regionflow::metrics::Metrics;

fn settings(nodes: &[String], allow_eviction: bool) -> Settings {
    deployment(nodes, allow_eviction, "regionflow", "p")
}

fn deployment(nodes: &[String], allow_eviction: bool, group: &str, pipeline: &str) -> Settings {
    Settings::from_toml_str(&format!(
        r#"
[kafka]
brokers = "127.0.0.1:1"
group_id = "{group}"
[redis]
nodes = {nodes}
allow_eviction = {allow_eviction}
{pipeline}"#,
        nodes = common::toml_nodes(nodes),
        pipeline = common::counting_pipeline(pipeline, "t", "r")
    ))
    .expect("valid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eviction_policy_that_can_drop_checkpoints_is_refused() {
    common::init_logging();
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let metrics = Metrics::new();
    let port = cluster.primary_ports()[1];
    cluster.node_cmd(port, &["CONFIG", "SET", "maxmemory-policy", "volatile-lru"]);
    regionflow::app::redis_sinks(&settings(&cluster.urls(), false), &metrics)
        .await
        .expect("volatile-* evicts only keys with a TTL: accepted");

    cluster.node_cmd(port, &["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]);
    let error = match regionflow::app::redis_sinks(&settings(&cluster.urls(), false), &metrics).await {
        Ok(_) => panic!("allkeys-lru accepted"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains(&format!("{port}")) && error.contains("allkeys-lru"), "{error}");
    assert!(error.contains("noeviction") && error.contains("redis.allow_eviction"), "says what to do: {error}");

    regionflow::app::redis_sinks(&settings(&cluster.urls(), true), &metrics)
        .await
        .expect("accepted, with a warning, when explicitly allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_written_by_another_deployment_is_refused() {
    common::init_logging();
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let metrics = Metrics::new();
    let urls = cluster.urls();
    regionflow::app::redis_sinks(&deployment(&urls, false, "blue", "views"), &metrics).await.expect("first claim");
    regionflow::app::redis_sinks(&deployment(&urls, false, "blue", "views"), &metrics)
        .await
        .expect("the same pipeline of the same group (another connector of the deployment) is welcome");
    for (group, pipeline) in [("green", "views"), ("blue", "clicks")] {
        let error = match regionflow::app::redis_sinks(&deployment(&urls, false, group, pipeline), &metrics).await {
            Ok(_) => panic!("{group}/{pipeline} accepted on a region that blue/views writes"),
            Err(e) => e.to_string(),
        };
        assert!(error.contains("pipeline `views` of group `blue`"), "names the writer: {error}");
        assert!(error.contains("rf:_region_owner:r"), "names the key to delete once retired: {error}");
    }
}
