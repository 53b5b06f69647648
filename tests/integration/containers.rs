//! The optional container lane: the end-to-end scenario of
//! tests/integration/end_to_end.rs (tests/common/scenario.rs: produce a data set, run
//! the connector, compare every region entry with the independent
//! reference) against the official images instead of local processes:
//! Apache Kafka (`apache/kafka`, one KRaft node) and a Redis Cluster of six
//! nodes (three primaries, one replica each) from the official `redis`
//! image. Containers are started with testcontainers.
//!
//! **Skipped without a Docker engine.** The lane asks the engine itself
//! (HTTP `GET /_ping` on the socket named by `DOCKER_HOST`, or on
//! `/var/run/docker.sock`, expecting `OK`); having a `docker` binary is not
//! enough. When no engine answers, the test prints `SKIPPED` and why (see it
//! with `--nocapture`) and passes, so the default suite never needs Docker:
//!
//! ```sh
//! cargo test --test integration -- containers:: --nocapture
//! ```
//!
//! Why the ports look the way they do: Kafka brokers and Redis Cluster
//! nodes tell clients where to connect (advertised listeners, `CLUSTER
//! SLOTS`), so a port Docker maps to a random host port would send clients
//! to an address only valid inside the container. Each service therefore
//! listens *inside* its container on the same port number it is published
//! on (free ports picked here), and announces `127.0.0.1:<port>`, which
//! works from the host and from inside the container alike. The six Redis
//! nodes run in one container, so they reach each other over its loopback
//! (cluster bus on port + 10000, not published). This needs an engine whose
//! published ports appear on this machine's loopback: a local engine (Unix
//! socket or `tcp://127.0.0.1`), the usual Docker or Podman setup.
//! testcontainers is built without TLS, so `DOCKER_TLS_VERIFY` engines are
//! not supported.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

use common::net::free_ports;
use common::scenario::{Scenario, TOPICS};

/// The images docker/compose.yml uses.
const KAFKA_IMAGE: (&str, &str) = ("apache/kafka", "3.9.0");
const REDIS_IMAGE: (&str, &str) = ("redis", "7.2");
const REDIS_NODES: usize = 6;
/// Generous: the first run pulls the images.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(300);
const REDIS_READY: &str = "regionflow: redis cluster ready";

/// Where the Docker engine listens.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Engine {
    Unix(PathBuf),
    /// `host:port` of a plain-HTTP engine.
    Tcp(String),
}

/// The engine `DOCKER_HOST` names, or the default socket. `Err` says why
/// the lane cannot use it.
fn engine_from(docker_host: Option<&str>) -> Result<Engine, String> {
    let Some(host) = docker_host.map(str::trim).filter(|h| !h.is_empty()) else {
        return Ok(Engine::Unix(PathBuf::from("/var/run/docker.sock")));
    };
    if let Some(path) = host.strip_prefix("unix://") {
        return Ok(Engine::Unix(PathBuf::from(path)));
    }
    if let Some(address) = host.strip_prefix("tcp://").or_else(|| host.strip_prefix("http://")) {
        let address = address.trim_end_matches('/');
        let hostname = address.rsplit_once(':').map_or(address, |(h, _)| h);
        if !["127.0.0.1", "localhost", "[::1]"].contains(&hostname) {
            return Err(format!(
                "DOCKER_HOST={host} is not on this machine: the lane publishes container ports on fixed \
                 host ports and announces them as 127.0.0.1, which needs a local engine"
            ));
        }
        return Ok(Engine::Tcp(address.to_string()));
    }
    Err(format!("DOCKER_HOST={host}: only unix:// and tcp:// (plain HTTP, no TLS) engines are supported here"))
}

/// `GET /_ping`: `Ok` when the engine answers `OK`, else what happened.
fn ping(engine: &Engine) -> Result<(), String> {
    const REQUEST: &[u8] = b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n";
    let timeout = Some(Duration::from_secs(3));
    let response = match engine {
        Engine::Unix(path) => {
            let mut stream = std::os::unix::net::UnixStream::connect(path)
                .map_err(|e| format!("cannot connect to {}: {e}", path.display()))?;
            stream
                .set_read_timeout(timeout)
                .and_then(|_| stream.set_write_timeout(timeout))
                .map_err(|e| e.to_string())?;
            exchange(&mut stream, REQUEST)
        }
        Engine::Tcp(address) => {
            let mut stream =
                std::net::TcpStream::connect(address).map_err(|e| format!("cannot connect to {address}: {e}"))?;
            stream
                .set_read_timeout(timeout)
                .and_then(|_| stream.set_write_timeout(timeout))
                .map_err(|e| e.to_string())?;
            exchange(&mut stream, REQUEST)
        }
    }
    .map_err(|e| format!("{engine:?}: /_ping failed: {e}"))?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) == Some("200") && body.trim() == "OK" {
        Ok(())
    } else {
        Err(format!("{engine:?}: /_ping answered {status:?} with body {:?}, expected 200 OK", body.trim()))
    }
}

fn exchange(stream: &mut (impl Read + Write), request: &[u8]) -> std::io::Result<String> {
    stream.write_all(request)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

/// The engine when one answers; otherwise why the lane is skipped.
fn docker_engine() -> Result<Engine, String> {
    let engine = engine_from(std::env::var("DOCKER_HOST").ok().as_deref())?;
    ping(&engine)?;
    Ok(engine)
}

/// Apache Kafka, one KRaft node (broker and controller), listening on
/// `port` inside the container and advertising `127.0.0.1:port`.
async fn start_kafka(port: u16) -> ContainerAsync<GenericImage> {
    let (name, tag) = KAFKA_IMAGE;
    GenericImage::new(name, tag)
        .with_exposed_port(port.tcp())
        .with_wait_for(WaitFor::message_on_either_std("Kafka Server started"))
        .with_mapped_port(port, port.tcp())
        .with_env_var("CLUSTER_ID", "4L6g3nShT-eMCtK--X86sw")
        .with_env_var("KAFKA_NODE_ID", "1")
        .with_env_var("KAFKA_PROCESS_ROLES", "broker,controller")
        .with_env_var("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@127.0.0.1:9093")
        .with_env_var("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
        .with_env_var("KAFKA_LISTENERS", format!("PLAINTEXT://0.0.0.0:{port},CONTROLLER://127.0.0.1:9093"))
        .with_env_var("KAFKA_ADVERTISED_LISTENERS", format!("PLAINTEXT://127.0.0.1:{port}"))
        .with_env_var("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT")
        .with_env_var("KAFKA_INTER_BROKER_LISTENER_NAME", "PLAINTEXT")
        .with_env_var("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
        .with_env_var("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env_var("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env_var("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
        .with_env_var("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
        .with_startup_timeout(STARTUP_TIMEOUT)
        .start()
        .await
        .expect("the apache/kafka container starts")
}

/// A six-node Redis Cluster (three primaries, one replica each) in one
/// container of the official image: `redis-server` per port, announced as
/// 127.0.0.1, then `redis-cli --cluster create`; ready once every node
/// reports `cluster_state:ok`.
async fn start_redis_cluster(ports: &[u16]) -> ContainerAsync<GenericImage> {
    let script = format!(
        r#"set -e
for port in $PORTS; do
  mkdir -p /data/$port
  redis-server --port $port --bind 0.0.0.0 --protected-mode no --cluster-enabled yes \
    --cluster-config-file /data/$port/nodes.conf --cluster-node-timeout 1000 \
    --cluster-announce-ip 127.0.0.1 --appendonly no --save '' --dir /data/$port \
    --daemonize yes --logfile /data/$port/redis.log
done
nodes=""
for port in $PORTS; do
  until redis-cli -p $port ping 2>/dev/null | grep -q PONG; do sleep 0.1; done
  nodes="$nodes 127.0.0.1:$port"
done
redis-cli --cluster create $nodes --cluster-replicas 1 --cluster-yes
for port in $PORTS; do
  until redis-cli -p $port cluster info | grep -q cluster_state:ok; do sleep 0.1; done
done
echo "{REDIS_READY}"
exec tail -F /data/*/redis.log
"#
    );
    let ports_env: Vec<String> = ports.iter().map(u16::to_string).collect();
    let (name, tag) = REDIS_IMAGE;
    let mut image = GenericImage::new(name, tag).with_wait_for(WaitFor::message_on_stdout(REDIS_READY));
    for port in ports {
        image = image.with_exposed_port(port.tcp());
    }
    let mut request = image.with_cmd(["sh", "-c", script.as_str()]).with_env_var("PORTS", ports_env.join(" "));
    for port in ports {
        request = request.with_mapped_port(*port, port.tcp());
    }
    request.with_startup_timeout(STARTUP_TIMEOUT).start().await.expect("the redis cluster container starts")
}

/// Keys matching `pattern` on every primary (SCAN each node that reports
/// the master role), deduplicated and sorted.
fn primary_keys(urls: &[String], pattern: &str) -> Vec<String> {
    let mut keys = std::collections::BTreeSet::new();
    for url in urls {
        let client = redis::Client::open(url.as_str()).expect("valid node URL");
        let mut con = client.get_connection_with_timeout(Duration::from_secs(5)).expect("node reachable");
        let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut con).expect("ROLE");
        if !matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master") {
            continue;
        }
        common::redis_cluster::scan_into(&mut con, pattern, &mut keys).expect("SCAN");
    }
    keys.into_iter().collect()
}

/// SKIPPED (passes) when no Docker engine answers `/_ping`; see the module docs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_kafka_and_redis_images_regions_equal_reference_skipped_without_docker() {
    common::init_logging();
    let engine = match docker_engine() {
        Ok(engine) => engine,
        Err(why) => {
            eprintln!(
                "SKIPPED: container lane (tests/integration/containers.rs) not run: no Docker engine answered: {why}. \
                 Start one (or set DOCKER_HOST) and run `cargo test --test integration -- containers:: --nocapture`."
            );
            return;
        }
    };
    eprintln!("container lane: Docker engine at {engine:?} answered /_ping");

    let ports = free_ports(1 + REDIS_NODES);
    let (kafka_port, redis_ports) = (ports[0], &ports[1..]);
    let (kafka, redis) = tokio::join!(start_kafka(kafka_port), start_redis_cluster(redis_ports));
    let brokers = format!("127.0.0.1:{kafka_port}");
    let redis_urls: Vec<String> = redis_ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect();
    eprintln!("container lane: Kafka {} at {brokers}, Redis Cluster {} at {redis_urls:?}", kafka.id(), redis.id());

    common::kafka::create_topics(&brokers, &TOPICS, Duration::from_secs(60)).await;
    let scenario = Scenario::new();
    scenario.produce(&brokers).await;
    let connector = common::InProcess::start(scenario.settings(&brokers, &redis_urls, "containers")).await;
    scenario
        .check_regions(&redis_urls, |pattern| primary_keys(&redis_urls, pattern), &connector, Duration::from_secs(120))
        .await;
    scenario.check_metrics(&connector).await;
    connector.stop().await.expect("connector ran without error");
    eprintln!("container lane: regions equal the reference on apache/kafka and redis containers");
}

/// The engine probe itself, without Docker: it reports why nothing
/// answered, and accepts an engine that answers `/_ping` with `OK`.
#[test]
fn engine_probe_reports_why_the_lane_is_skipped() {
    assert_eq!(engine_from(None), Ok(Engine::Unix("/var/run/docker.sock".into())));
    assert_eq!(
        engine_from(Some("unix:///run/user/1000/docker.sock")),
        Ok(Engine::Unix("/run/user/1000/docker.sock".into()))
    );
    assert_eq!(engine_from(Some("tcp://127.0.0.1:2375")), Ok(Engine::Tcp("127.0.0.1:2375".into())));
    assert!(engine_from(Some("tcp://build-host:2376")).unwrap_err().contains("not on this machine"));
    assert!(engine_from(Some("ssh://me@host")).unwrap_err().contains("only unix://"));

    let dir = tempfile::tempdir().expect("temp dir");
    let missing = Engine::Unix(dir.path().join("docker.sock"));
    assert!(ping(&missing).unwrap_err().contains("cannot connect"), "a missing socket is reported");

    // A fake engine on a loopback port: answers once, like dockerd does.
    let fake = |reply: &'static str| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut request = [0u8; 512];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(reply.as_bytes());
        });
        Engine::Tcp(address)
    };
    assert_eq!(ping(&fake("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nOK")), Ok(()));
    assert!(ping(&fake("HTTP/1.1 404 Not Found\r\n\r\nnope")).unwrap_err().contains("404"));
}
