//! The `regionflow` command: run a connector, validate a configuration, or
//! try everything on the embedded quick-start.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use regionflow::config::Settings;
use regionflow::metrics::{Health, Metrics};

#[derive(Parser)]
#[command(name = "regionflow", version, about = "Kafka topics → windowed aggregations → Redis Cluster regions")]
struct Cli {
    /// Log format: human-readable text, or JSON lines.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "REGIONFLOW_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a connector against Kafka and a Redis Cluster.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a configuration file (with environment overrides) and print it resolved.
    Validate {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run a complete pipeline with no external services: an in-process
    /// Kafka-protocol broker, a page-view generator and an in-memory region.
    Quickstart {
        /// Stop after this long (e.g. "30s"); runs until Ctrl-C without it.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Events per second the generator produces (0 = as fast as it can).
        #[arg(long, default_value_t = 20_000)]
        rate: u64,
        /// Where `/metrics` is served.
        #[arg(long, default_value = "127.0.0.1:9464")]
        metrics_listen: std::net::SocketAddr,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn,librdkafka=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Cancels the token on SIGINT or SIGTERM.
fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => tracing::info!("SIGINT: shutting down gracefully"),
            _ = term => tracing::info!("SIGTERM: shutting down gracefully"),
        }
        cancel.cancel();
    });
    token
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Validate { config } => {
            let settings =
                Settings::load(&config).with_context(|| format!("invalid configuration {}", config.display()))?;
            println!("# {} is valid; resolved with environment overrides:", config.display());
            print!("{}", toml::to_string_pretty(&settings).context("printing the configuration")?);
            Ok(())
        }
        Command::Run { config } => {
            let settings =
                Settings::load(&config).with_context(|| format!("invalid configuration {}", config.display()))?;
            let metrics = Arc::new(Metrics::new());
            let health = Arc::new(Health::default());
            let shutdown = shutdown_on_signals();
            let addr =
                regionflow::metrics::serve(settings.metrics.listen, metrics.clone(), health.clone(), shutdown.clone())
                    .await
                    .with_context(|| format!("cannot listen on metrics.listen = {}", settings.metrics.listen))?;
            tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
            let regions = regionflow::connector::redis_regions(&settings).await?;
            regionflow::connector::run(settings, regions, metrics, health, shutdown).await?;
            Ok(())
        }
        Command::Quickstart { duration, rate, metrics_listen } => {
            let shutdown = shutdown_on_signals();
            if let Some(duration) = duration {
                let stop = shutdown.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(duration).await;
                    stop.cancel();
                });
            }
            regionflow::embedded::run(regionflow::embedded::Options { rate, metrics_listen }, shutdown).await
        }
    }
}
