//! The shared integration-test harness: real servers started per test and
//! torn down even when the test fails.
#![allow(dead_code)]

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
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,librdkafka=warn,rdkafka=warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

/// Seed nodes as a TOML array, for test configurations.
pub fn toml_nodes(urls: &[String]) -> String {
    let quoted: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

/// A connector running inside the test process, on the Redis Cluster.
pub struct InProcess {
    pub metrics: std::sync::Arc<regionflow::metrics::Metrics>,
    shutdown: tokio_util::sync::CancellationToken,
    pub handle: tokio::task::JoinHandle<Result<(), regionflow::connector::ConnectorError>>,
}

impl InProcess {
    pub async fn start(settings: regionflow::config::Settings) -> InProcess {
        let metrics = std::sync::Arc::new(regionflow::metrics::Metrics::new());
        let shutdown = tokio_util::sync::CancellationToken::new();
        let sinks = regionflow::app::redis_sinks(&settings, &metrics).await.expect("Redis Cluster reachable");
        let handle = tokio::spawn(regionflow::connector::run(
            settings,
            sinks,
            metrics.clone(),
            std::sync::Arc::new(regionflow::metrics::Health::default()),
            shutdown.clone(),
        ));
        InProcess { metrics, shutdown, handle }
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
