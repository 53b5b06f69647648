//! The shared integration-test harness: real servers started per test and
//! torn down even when the test fails.
#![allow(dead_code)]

pub mod change_feed;
pub mod chaos_plan;
pub mod connector;
pub mod kafka;
pub mod net;
pub mod prom_text;
pub mod prometheus;
pub mod redis_cluster;
pub mod redis_faults;
pub mod reference;
pub mod region_watch;
pub mod scenario;
pub mod secure;

/// Logs to the test's captured output (`RUST_LOG` filters, default info).
pub fn init_logging() {
    report_panics_at_once();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,librdkafka=warn,rdkafka=warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

/// Makes every panic of a test also print at once, uncaptured, naming the
/// test: libtest shows a test's captured output only when the test ends,
/// and a test whose teardown then hangs would otherwise fail with no word
/// until the suite's time limit kills it. Installed by [`init_logging`] and
/// [`kafka::Kafka::start`].
pub fn report_panics_at_once() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            use std::io::Write;
            let thread = std::thread::current();
            // Straight to the process's stderr: libtest captures only the
            // print macros and the default hook.
            let _ = writeln!(std::io::stderr().lock(), "[panic in {}] {info}", thread.name().unwrap_or("unnamed"));
            default(info);
        }));
    });
}

/// The smallest valid pipeline, for tests about everything around one:
/// `[pipelines.<name>]` counting records of `topic` per Kafka key in 1 s
/// tumbling windows of Kafka timestamps, into region `region`.
pub fn counting_pipeline(name: &str, topic: &str, region: &str) -> String {
    format!(
        r#"
[pipelines.{name}]
topics = ["{topic}"]
key = {{ from = "kafka_key" }}
event_time = {{ from = "kafka_timestamp" }}
window = {{ kind = "tumbling", size = "1s" }}
aggregates.n = {{ function = "count" }}
region = {{ name = "{region}" }}
"#
    )
}

/// Redis settings for tests that build Redis components directly: the
/// cluster at `nodes`, short timeouts, 30 s write deadlines.
pub fn redis_config(nodes: Vec<String>, write_concurrency: usize) -> regionflow::config::RedisConfig {
    use std::time::Duration;
    regionflow::config::RedisConfig {
        nodes,
        key_prefix: "rf".into(),
        connect_timeout: Duration::from_secs(5),
        response_timeout: Duration::from_secs(5),
        write_deadline: Duration::from_secs(30),
        startup_timeout: Duration::from_secs(30),
        write_concurrency,
        replica_timeout: Duration::from_secs(5),
        allow_eviction: false,
        username: None,
        password: None,
        tls: None,
    }
}

/// Seed nodes as a TOML array, for test configurations.
pub fn toml_nodes(urls: &[String]) -> String {
    let quoted: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

/// A connector running inside the test process, on the Redis Cluster.
///
/// Dropped without [`InProcess::stop`] (a test that panics), it is aborted
/// and waited for, so it is gone before the test's Kafka and Redis are:
/// left running, its consumer would close only when the runtime drops it,
/// with the brokers already destroyed.
pub struct InProcess {
    pub metrics: std::sync::Arc<regionflow::metrics::Metrics>,
    pub health: std::sync::Arc<regionflow::metrics::Health>,
    shutdown: tokio_util::sync::CancellationToken,
    pub handle: tokio::task::JoinHandle<Result<(), regionflow::connector::ConnectorError>>,
    _abort_on_drop: AbortOnDrop,
}

/// Aborts a task when dropped and waits (up to a minute) until it has ended.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if self.0.is_finished() {
            return;
        }
        self.0.abort();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !self.0.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl InProcess {
    pub async fn start(settings: regionflow::config::Settings) -> InProcess {
        let metrics = std::sync::Arc::new(regionflow::metrics::Metrics::new());
        let shutdown = tokio_util::sync::CancellationToken::new();
        let sinks = regionflow::app::redis_sinks(&settings, &metrics).await.expect("Redis Cluster reachable");
        let health = std::sync::Arc::new(regionflow::metrics::Health::default());
        let handle = tokio::spawn(regionflow::connector::run(
            settings,
            sinks,
            metrics.clone(),
            health.clone(),
            shutdown.clone(),
        ));
        let _abort_on_drop = AbortOnDrop(handle.abort_handle());
        InProcess { metrics, health, shutdown, handle, _abort_on_drop }
    }

    /// Starts stopping (as SIGTERM does) without waiting.
    pub fn begin_stop(&self) {
        self.shutdown.cancel();
    }

    /// Stops gracefully (flush, checkpoint, leave the group) and returns how the run ended.
    pub async fn stop(self) -> Result<(), regionflow::connector::ConnectorError> {
        self.shutdown.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(60), self.handle)
            .await
            .expect("graceful shutdown within 60s")
            .expect("connector task joined")
    }
}
