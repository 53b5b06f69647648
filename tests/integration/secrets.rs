//! Secrets never appear in what regionflow prints: distinctive secrets are
//! planted in the configuration file, the environment and a secret file,
//! then `validate`, a failing `run` and a successful `run` are captured,
//! and none of their output may contain a secret.

use crate::common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::kafka::Kafka;
use common::redis_cluster::RedisCluster;

const IN_FILE: &str = "KAFKA-SECRET-IN-THE-FILE-7f3a";
const IN_ENV: &str = "ENV-SECRET-91c2";
const IN_SECRET_FILE: &str = "FILE-SECRET-44d0";

struct Planted {
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
    env: Vec<(String, String)>,
}

/// A configuration with a secret in the file, one from the environment
/// (a dotted librdkafka key written with `_`) and one from a secret file.
fn plant(brokers: &str, redis: &[String]) -> Planted {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret_file = dir.path().join("kafka-oauth-secret");
    std::fs::write(&secret_file, format!("{IN_SECRET_FILE}\n")).expect("written");
    let config = dir.path().join("regionflow.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[kafka]
brokers = "{brokers}"
group_id = "secrets"
startup_timeout = "3s"
[kafka.properties]
"sasl.password" = "{IN_FILE}"
"sasl.oauthbearer.client.secret" = "${{file:{secret_file}}}"
[redis]
nodes = {nodes}
startup_timeout = "3s"
connect_timeout = "1s"
{pipeline}"#,
            secret_file = secret_file.display(),
            nodes = common::toml_nodes(redis),
            pipeline = common::counting_pipeline("p", "events", "r")
        ),
    )
    .expect("written");
    let env = vec![("REGIONFLOW__KAFKA__PROPERTIES__SSL_KEY_PASSWORD".to_string(), IN_ENV.to_string())];
    Planted { _dir: dir, config, env }
}

fn assert_no_secret(what: &str, output: &str) {
    for secret in [IN_FILE, IN_ENV, IN_SECRET_FILE] {
        assert!(!output.contains(secret), "{what} shows the secret {secret}:\n{output}");
    }
}

fn regionflow(planted: &Planted, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_regionflow"));
    command.args(args).arg("--config").arg(&planted.config).envs(planted.env.iter().cloned());
    command.env("REGIONFLOW__METRICS__LISTEN", "127.0.0.1:0").env("RUST_LOG", "debug").stdin(Stdio::null());
    command
}

#[test]
fn validate_and_a_failing_run_show_no_secret() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let planted = plant("127.0.0.1:1", &[format!("redis://default:{IN_ENV}@127.0.0.1:{closed}")]);

    let out = regionflow(&planted, &["validate"]).output().expect("runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert_no_secret("validate", &text);
    assert!(text.contains(r#""sasl.password" = "<redacted>""#), "the secret's key is shown, redacted:\n{text}");
    assert!(text.contains(r#""ssl.key.password" = "<redacted>""#), "the environment's dotted key arrived:\n{text}");
    assert!(text.contains("redis://default:<redacted>@127.0.0.1"), "{text}");

    let out = regionflow(&planted, &["run"]).output().expect("runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "Redis is not there: {text}");
    assert!(text.contains("cannot reach Redis Cluster"), "{text}");
    assert_no_secret("a failing run", &text);
}

#[test]
fn a_successful_run_shows_no_secret() {
    let cluster = RedisCluster::start();
    let kafka = Kafka::start(&[("events", 2)]);
    let planted = plant(&kafka.brokers, &cluster.urls());
    let mut child = regionflow(&planted, &["run"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("runs");
    let started = Instant::now();
    // Running: it joined the group and wrote its first checkpoint index or
    // at least reached its dispatch loop; then stop it gracefully.
    std::thread::sleep(Duration::from_secs(6));
    assert!(child.try_wait().expect("status").is_none(), "still running after {:?}", started.elapsed());
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    let out = child.wait_with_output().expect("exits");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "a clean stop: {text}");
    assert!(text.contains("connector running"), "it ran: {text}");
    assert_no_secret("a successful run", &text);
}
