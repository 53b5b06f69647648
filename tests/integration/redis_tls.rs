//! Redis over TLS: a TLS-only six-node cluster (no plain-text port, TLS on
//! the cluster bus and replication, client certificates required, the
//! `default` user disabled for an ACL user) carries the whole end-to-end
//! scenario; and what cannot work fails at start within seconds, naming
//! the cause and never the password: an untrusted CA, a wrong password, a
//! plain-text `redis://` client on the TLS ports, and a standalone
//! (non-cluster) Redis.

use crate::common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::kafka::Kafka;
use common::redis_cluster::RedisCluster;
use common::scenario::{Scenario, TOPICS};
use regionflow::config::Settings;
use regionflow::metrics::Metrics;

/// Fail-fast bound: well under `redis.startup_timeout` (30 s by default).
const FAIL_WITHIN: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regions_equal_reference_over_mutual_tls_with_an_acl_user() {
    common::init_logging();
    let cluster = tokio::task::block_in_place(RedisCluster::start_tls);
    let tls = cluster.tls();
    let kafka = Kafka::start(&TOPICS);
    let scenario = Scenario::new();
    scenario.produce(&kafka.brokers).await;

    let settings = scenario.settings_with_redis(&kafka.brokers, &cluster.urls(), "e2e-tls", &tls.settings_toml());
    let connector = common::InProcess::start(settings).await;
    let reader = tls.cluster_client(&cluster.urls());
    scenario.check_regions_with(&reader, |pattern| cluster.keys(pattern), &connector, Duration::from_secs(90)).await;
    scenario.check_metrics(&connector).await;
    connector.stop().await.expect("connector ran without error");
}

/// A configuration with `nodes` and `extra` `[redis]` keys, and a pipeline
/// to build sinks for.
fn settings_text(nodes: &[String], extra: &str) -> String {
    format!(
        "[kafka]\nbrokers = \"127.0.0.1:1\"\n[redis]\nnodes = {}\n{extra}\n[pipelines.p]\ntopics = [\"t\"]\n\
         key = {{ from = \"kafka_key\" }}\nevent_time = {{ from = \"kafka_timestamp\" }}\n\
         window = {{ kind = \"tumbling\", size = \"1s\" }}\naggregates.n = {{ function = \"count\" }}\n\
         region = {{ name = \"r\" }}\n",
        common::toml_nodes(nodes)
    )
}

fn settings(nodes: &[String], extra: &str) -> Settings {
    Settings::from_toml_str(&settings_text(nodes, extra)).expect("valid configuration")
}

/// Builds the Redis sinks and returns the error, requiring that it comes
/// within [`FAIL_WITHIN`].
async fn start_error(settings: &Settings) -> String {
    let started = Instant::now();
    let error = match regionflow::app::redis_sinks(settings, &Metrics::new()).await {
        Ok(_) => panic!("connected"),
        Err(e) => e.to_string(),
    };
    let elapsed = started.elapsed();
    assert!(elapsed < FAIL_WITHIN, "failed after {elapsed:?}, not within {FAIL_WITHIN:?}: {error}");
    tracing::info!(?elapsed, %error, "refused at start");
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_ca_wrong_password_and_plain_text_fail_fast_naming_the_cause() {
    common::init_logging();
    let cluster = tokio::task::block_in_place(RedisCluster::start_tls);
    let tls = cluster.tls();
    let dir = tempfile::tempdir().expect("temp dir");
    let good = tls.settings_toml();
    regionflow::app::redis_sinks(&settings(&cluster.urls(), &good), &Metrics::new())
        .await
        .expect("the right CA, client certificate and password connect");
    let mut errors = Vec::new();

    let unrelated = common::secure::certs::unrelated_ca(dir.path());
    let wrong_ca = good.replace(&tls.certs.ca.display().to_string(), &unrelated.display().to_string());
    let error = start_error(&settings(&cluster.urls(), &wrong_ca)).await;
    assert!(error.contains("TLS certificate verification failed") && error.contains("UnknownIssuer"), "{error}");
    errors.push(error);

    let wrong_password = "not-the-password";
    let error = start_error(&settings(&cluster.urls(), &good.replace(&tls.password, wrong_password))).await;
    assert!(error.contains("authentication refused") && error.contains("redis.password"), "{error}");
    assert!(!error.contains(wrong_password), "the wrong password is not shown either: {error}");
    errors.push(error);

    let plain: Vec<String> = cluster.urls().iter().map(|u| u.replace("rediss://", "redis://")).collect();
    let credentials = format!("username = \"{}\"\npassword = \"{}\"", common::secure::redis_tls::USER, tls.password);
    let error = start_error(&settings(&plain, &credentials)).await;
    assert!(error.contains("plain-text client") && error.contains("rediss://"), "{error}");
    errors.push(error);

    let ca_only = format!("{credentials}\ntls = {{ ca_file = \"{}\" }}", tls.certs.ca.display());
    let error = start_error(&settings(&cluster.urls(), &ca_only)).await;
    assert!(error.contains("CertificateRequired") && error.contains("redis.tls.cert_file"), "{error}");
    errors.push(error);

    // `regionflow checkpoints list` connects the same way, with the wrong
    // password here kept in a secret file.
    let secret = dir.path().join("redis-password");
    std::fs::write(&secret, format!("{wrong_password}\n")).expect("written");
    let config = dir.path().join("wrong-password.toml");
    let reference = format!("${{file:{}}}", secret.display());
    std::fs::write(&config, settings_text(&cluster.urls(), &good.replace(&tls.password, &reference))).expect("written");
    let started = Instant::now();
    let out = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_regionflow"))
            .args(["checkpoints", "list", "--config"])
            .arg(&config)
            .output()
            .expect("regionflow runs")
    });
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success() && elapsed < FAIL_WITHIN, "after {elapsed:?}: {stderr}");
    assert!(stderr.contains("authentication refused") && !stderr.contains(wrong_password), "{stderr}");
    errors.push(stderr);

    let refused = Settings::from_toml_str(&settings_text(&plain, &good)).expect_err("TLS settings with redis://");
    let refused = refused.to_string();
    assert!(refused.contains("`redis.tls`") && refused.contains("rediss://"), "{refused}");
    errors.push(refused);

    for error in errors {
        assert!(!error.contains(&tls.password), "no password in: {error}");
    }
}

/// A standalone redis-server (`cluster-enabled no`), killed on drop.
struct Standalone(Child);

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_redis_fails_fast_as_not_a_cluster() {
    common::init_logging();
    let dir = tempfile::tempdir().expect("temp dir");
    let port = common::secure::free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server on PATH (scripts/setup-test-deps.sh)");
    let _server = Standalone(child);
    common::secure::wait_for_port(port, Duration::from_secs(10), "redis-server", String::new);

    let error = start_error(&settings(&[format!("redis://127.0.0.1:{port}")], "")).await;
    assert!(error.contains("not a Redis Cluster") && error.contains("cluster-enabled yes"), "{error}");
}
