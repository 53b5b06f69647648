//! Proves the Redis Cluster test harness (`tests/common/redis_cluster.rs`)
//! gives other integration tests what they rely on: a cluster the redis
//! crate's async cluster client can use across all three primaries, that
//! survives losing a primary, and that coexists with other clusters started
//! at the same time.

use crate::common;

use std::collections::BTreeSet;
use std::error::Error;
use std::thread;
use std::time::{Duration, Instant};

use common::redis_cluster::RedisCluster;
use redis::AsyncCommands;

type TestResult = Result<(), Box<dyn Error>>;

fn value_for(key: &str) -> String {
    format!("value-of-{key}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_serves_all_primaries_and_survives_losing_one() -> TestResult {
    // The harness blocks; keep it off the runtime's async scheduling.
    let mut cluster = tokio::task::block_in_place(RedisCluster::start);
    let primaries = cluster.primary_ports();
    assert_eq!(primaries.len(), 3, "primaries: {primaries:?}");
    assert_eq!(cluster.urls().len(), 6);

    let client = redis::cluster::ClusterClient::new(cluster.urls())?;
    let mut con = client.get_async_connection().await?;

    // Enough keys that hash-slot spreading gives every primary some.
    let keys: Vec<String> = (0..60).map(|i| format!("harness:{i}")).collect();
    for key in &keys {
        let _: () = con.set(key, value_for(key)).await?;
    }
    for key in &keys {
        let value: String = con.get(key).await?;
        assert_eq!(value, value_for(key));
    }
    for &port in &primaries {
        match cluster.node_cmd(port, &["DBSIZE"]) {
            redis::Value::Int(n) => assert!(n > 0, "primary {port} holds no keys"),
            other => panic!("DBSIZE on {port} returned {other:?}"),
        }
    }
    let expected: Vec<String> = keys.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect();
    assert_eq!(cluster.keys("harness:*"), expected);

    let victim = "harness:0";
    let killed = tokio::task::block_in_place(|| cluster.kill_primary_for_key(victim));
    assert!(primaries.contains(&killed), "killed {killed}, primaries were {primaries:?}");
    let survivors = cluster.primary_ports();
    assert_eq!(survivors.len(), 3, "primaries after failover: {survivors:?}");
    assert!(!survivors.contains(&killed));
    assert_eq!(cluster.urls().len(), 5);

    // The same client must find the promoted replica by itself; it learns the
    // new topology only after hitting the dead node, so allow a few errors.
    let deadline = Instant::now() + Duration::from_secs(30);
    let value = loop {
        match con.get::<_, Option<String>>(victim).await {
            Ok(Some(value)) => break value,
            Ok(None) => panic!("{victim} was lost in the failover"),
            Err(e) if Instant::now() < deadline => {
                eprintln!("read after failover failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    assert_eq!(value, value_for(victim));
    // Replicas were caught up before the kill, so nothing at all is lost.
    assert_eq!(cluster.keys("harness:*"), expected);
    Ok(())
}

#[test]
fn clusters_started_concurrently_do_not_share_ports() {
    // Also lets tests share one cluster through a static or move it to a thread.
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<RedisCluster>();

    let clusters: Vec<RedisCluster> = thread::scope(|scope| {
        let starting: Vec<_> = (0..2).map(|_| scope.spawn(RedisCluster::start)).collect();
        starting.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ports = BTreeSet::new();
    for cluster in &clusters {
        for url in cluster.urls() {
            assert!(ports.insert(url.clone()), "{url} used by two clusters");
        }
    }
    assert_eq!(ports.len(), 12);
}
