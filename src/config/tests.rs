//! Configuration errors name the key and what would be valid.

use std::io::Write;
use std::time::Duration;

use super::*;

const VALID: &str = r#"
[kafka]
brokers = "localhost:9092"

[redis]
nodes = ["redis://127.0.0.1:7000"]

[pipelines.views]
topics = ["pageviews"]
key = { from = "field", pointer = "/page" }
event_time = { from = "field", pointer = "/ts" }
window = { kind = "sliding", size = "1m", slide = "10s" }
aggregates.views = { function = "count" }
aggregates.revenue = { function = "sum", field = "/amount" }
region = { name = "page_views" }
"#;

fn error_of(toml: &str) -> (String, String) {
    match Settings::from_toml_str(toml) {
        Err(ConfigError::Invalid { key, message }) => (key, message),
        other => panic!("expected an invalid-key error, got {other:?}"),
    }
}

#[test]
fn valid_file_loads_with_typed_defaults() {
    let s = Settings::from_toml_str(VALID).expect("valid");
    let p = &s.pipelines["views"];
    assert_eq!(p.window, WindowConfig::Sliding { size: Duration::from_secs(60), slide: Duration::from_secs(10) });
    assert_eq!(p.watermark.max_out_of_orderness, Duration::from_secs(1));
    assert_eq!(p.region.key, "{key}:{window_start}");
    assert_eq!(p.errors.tolerance, Tolerance::All);
    assert_eq!(s.kafka.group_id, "regionflow");
    assert_eq!(s.connector.flush_interval, Duration::from_millis(200));
}

#[test]
fn unknown_keys_are_refused_with_their_path() {
    let (key, message) = error_of(&VALID.replace("topics = [", "topicz = 1\ntopics = ["));
    assert_eq!(key, "pipelines.views.topicz");
    assert!(message.contains("unknown field `topicz`, expected one of"), "{message}");
    let (key, _) = error_of(&VALID.replace("[redis]", "[redis]\nnodez = 1"));
    assert_eq!(key, "redis.nodez");
}

#[test]
fn impossible_windows_are_refused() {
    let (key, message) = error_of(&VALID.replace("slide = \"10s\"", "slide = \"2m\""));
    assert_eq!(key, "pipelines.views.window.slide");
    assert!(message.contains("must not exceed size"), "{message}");
    let (key, _) = error_of(&VALID.replace("size = \"1m\"", "size = \"0s\""));
    assert_eq!(key, "pipelines.views.window.size");
    let (key, message) = error_of(&VALID.replace("slide = \"10s\"", "slide = \"7s\""));
    assert_eq!(key, "pipelines.views.window.slide");
    assert!(message.contains("whole multiple"), "{message}");
}

#[test]
fn bad_durations_name_the_key() {
    let (key, message) = error_of(&VALID.replace("size = \"1m\"", "size = \"ten seconds\""));
    assert_eq!(key, "pipelines.views.window");
    assert!(message.contains("duration") || message.contains("unknown time unit"), "{message}");
}

#[test]
fn aggregate_without_field_is_refused() {
    let (key, message) = error_of(&VALID.replace("field = \"/amount\"", ""));
    assert_eq!(key, "pipelines.views.aggregates.revenue.field");
    assert!(message.contains("needs an input field"), "{message}");
}

#[test]
fn session_windows_need_the_kafka_key() {
    let toml =
        VALID.replace(r#"{ kind = "sliding", size = "1m", slide = "10s" }"#, r#"{ kind = "session", gap = "30s" }"#);
    let (key, message) = error_of(&toml);
    assert_eq!(key, "pipelines.views.key");
    assert!(message.contains("kafka_key"), "{message}");
    let ok = toml.replace(r#"{ from = "field", pointer = "/page" }"#, r#"{ from = "kafka_key" }"#);
    Settings::from_toml_str(&ok).expect("session on the Kafka key is valid");
}

#[test]
fn missing_sections_and_bad_templates_are_refused() {
    let (key, message) = error_of(&VALID.replace("[kafka]\nbrokers = \"localhost:9092\"", ""));
    assert!(message.contains("missing configuration field \"kafka\""), "{key}: {message}");
    let (key, message) = error_of(&VALID.replace("{ name = \"page_views\" }", "{ name = \"pv\", key = \"{key}\" }"));
    assert_eq!(key, "pipelines.views.region.key");
    assert!(message.contains("{window_start}"), "{message}");
}

#[test]
fn colliding_templates_aggregate_names_with_commas_and_far_spans_are_refused() {
    let (key, message) =
        error_of(&VALID.replace("{ name = \"page_views\" }", "{ name = \"pv\", key = \"{key}{window_start}\" }"));
    assert_eq!(key, "pipelines.views.region.key");
    assert!(message.contains("separate adjacent placeholders"), "{message}");
    let (key, message) = error_of(&VALID.replace("aggregates.views =", "aggregates.\"a,b\" ="));
    assert_eq!(key, "pipelines.views.aggregates.a,b");
    assert!(message.contains("without ','"), "{message}");
    let (key, message) =
        error_of(&VALID.replace("[pipelines.views]", "[pipelines.views]\nallowed_lateness = \"200years\""));
    assert_eq!(key, "pipelines.views.allowed_lateness");
    assert!(message.contains("at most 100 years"), "{message}");
}

#[test]
fn environment_overrides_every_key() {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(VALID.as_bytes()).expect("written");
    let env = [
        ("REGIONFLOW__KAFKA__BROKERS", "k1:9092,k2:9092"),
        ("REGIONFLOW__REDIS__NODES", "redis://a:1,redis://b:2"),
        ("REGIONFLOW__PIPELINES__VIEWS__WINDOW__SIZE", "2m"),
        ("REGIONFLOW__CONNECTOR__POLL_BATCH", "64"),
        ("UNRELATED", "x"),
    ];
    let s =
        Settings::load_with_env(file.path(), env.iter().map(|(k, v)| (k.to_string(), v.to_string()))).expect("valid");
    assert_eq!(s.kafka.brokers, "k1:9092,k2:9092");
    assert_eq!(s.redis.nodes, vec!["redis://a:1", "redis://b:2"]);
    assert_eq!(
        s.pipelines["views"].window,
        WindowConfig::Sliding { size: Duration::from_secs(120), slide: Duration::from_secs(10) }
    );
    assert_eq!(s.connector.poll_batch, 64);
}

#[test]
fn example_configurations_are_valid() {
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/config")).expect("config/ exists") {
        let path = entry.expect("readable").path();
        if path.extension().is_some_and(|e| e == "toml") {
            Settings::load_with_env(&path, []).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
}

/// `VALID` with `nodes` and more `[redis]` keys.
fn with_redis(nodes: &str, keys: &str) -> String {
    VALID.replace("nodes = [\"redis://127.0.0.1:7000\"]", &format!("nodes = [\"{nodes}\"]\n{keys}"))
}

#[test]
fn redis_tls_and_credentials_are_checked_at_load() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pem = dir.path().join("ca.pem");
    std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").expect("written");
    let not_pem = dir.path().join("ca.der");
    std::fs::write(&not_pem, [0x30, 0x82, 0x01]).expect("written");
    let tls = |table: &str| format!("tls = {{ {table} }}");
    let ca = format!("ca_file = \"{}\"", pem.display());

    let s = Settings::from_toml_str(&with_redis(
        "rediss://h:1",
        &tls(&format!("{ca}, cert_file = \"{}\", key_file = \"{}\"", pem.display(), pem.display())),
    ))
    .expect("valid");
    let t = s.redis.tls.expect("tls table");
    assert_eq!(t.ca_file.as_deref(), Some(pem.as_path()));
    assert!(!t.danger_accept_invalid_certificates);

    let (key, message) = error_of(&with_redis("redis://h:1", &tls(&ca)));
    assert_eq!(key, "redis.tls");
    assert!(message.contains("rediss://") && message.contains("redis.nodes[0]"), "{message}");

    let (key, message) = error_of(&with_redis("rediss://h:1", &tls("ca_file = \"/nonexistent/ca.pem\"")));
    assert_eq!(key, "redis.tls.ca_file");
    assert!(message.contains("/nonexistent/ca.pem"), "{message}");

    let (key, message) = error_of(&with_redis("rediss://h:1", &tls(&format!("ca_file = \"{}\"", not_pem.display()))));
    assert_eq!((key.as_str(), message.contains("not a PEM file")), ("redis.tls.ca_file", true), "{message}");

    let (key, _) = error_of(&with_redis("rediss://h:1", &tls(&format!("cert_file = \"{}\"", pem.display()))));
    assert_eq!(key, "redis.tls.key_file");

    let (key, message) = error_of(&with_redis("rediss://h:1", "username = \"app\""));
    assert_eq!(key, "redis.password", "{message}");

    let (key, message) = error_of(&with_redis("rediss://app:pw@h:1", "password = \"other\""));
    assert_eq!(key, "redis.password");
    assert!(!message.contains("other") && !message.contains(":pw@"), "no password shown: {message}");

    let (key, _) = error_of(&with_redis("rediss://h:1", "tls = { ca = \"x\" }"));
    assert!(key.starts_with("redis.tls"), "unknown keys are refused: {key}");
}

#[test]
fn redis_password_resolves_references_and_is_never_shown() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, with_redis("rediss://h:1", "username = \"app\"\npassword = \"${env:RF_TEST_REDIS_PW}\""))
        .expect("written");
    let env = [("RF_TEST_REDIS_PW".to_string(), "s3cret-value".to_string())];
    let s = Settings::load_with_env(&path, env).expect("valid");
    assert_eq!(s.redis.password.as_ref().map(Secret::expose), Some("s3cret-value"));
    assert!(!format!("{s:?}").contains("s3cret-value"), "Debug hides it");
    let shown = toml::to_string(&s.redacted()).expect("serializes");
    assert!(!shown.contains("s3cret-value") && shown.contains("password = \"<redacted>\""), "{shown}");
}

#[test]
fn a_change_feed_needs_its_own_topic_and_a_known_mode() {
    let with = |changes: &str| {
        VALID.replace(
            r#"region = { name = "page_views" }"#,
            &format!(r#"region = {{ name = "page_views", changes = {changes} }}"#),
        )
    };
    let s = Settings::from_toml_str(&with(r#"{ topic = "view-changes" }"#)).expect("valid");
    let changes = s.pipelines["views"].region.changes.clone().expect("a feed");
    assert_eq!((changes.topic.as_str(), changes.mode), ("view-changes", ChangeMode::Every));

    let (key, message) = error_of(&with(r#"{ topic = "pageviews", mode = "final" }"#));
    assert_eq!(key, "pipelines.views.region.changes.topic");
    assert!(message.contains("source or dead-letter topic"), "{message}");
    let (key, _) = error_of(&with(r#"{ topic = "" }"#));
    assert_eq!(key, "pipelines.views.region.changes.topic");
    match Settings::from_toml_str(&with(r#"{ topic = "c", mode = "sometimes" }"#)) {
        Err(e) => assert!(e.to_string().contains("every") && e.to_string().contains("final"), "{e}"),
        Ok(_) => panic!("an unknown mode was accepted"),
    }
}
