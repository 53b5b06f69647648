//! The `regionflow` command: run a connector, validate a configuration, or
//! try everything on the embedded quick-start.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

mod cli;

use regionflow::app::{shutdown_after, shutdown_on_signals};
use regionflow::config::Settings;

/// mimalloc instead of glibc's malloc: the operator and the write path
/// allocate per record and per result, and mimalloc serves that faster on
/// every workload (measurements in BENCHMARKS.md, optimisation 8).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// List or reset the checkpoints stored in Redis.
    Checkpoints {
        #[command(subcommand)]
        action: CheckpointAction,
    },
    /// Read a region back: one entry, a scan, or an export in the change feed's format.
    Region {
        #[command(subcommand)]
        action: cli::region::RegionAction,
    },
    /// Produce generated page views into a Kafka topic (load for demos and benchmarks).
    Generate {
        #[arg(long, default_value = "localhost:9092")]
        brokers: String,
        #[arg(long, default_value = "pageviews")]
        topic: String,
        /// Events per second (0 = as fast as the producer takes them).
        #[arg(long, default_value_t = 5_000)]
        rate: u64,
        /// Stop after this long; runs until Ctrl-C without it.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
    },
    /// Probe a connector's health endpoint (for container health checks):
    /// exits 0 when it answers 200.
    Probe {
        /// host:port of the metrics endpoint.
        #[arg(long, default_value = "127.0.0.1:9464", conflicts_with = "config")]
        address: String,
        /// Probe the endpoint this configuration (with its environment
        /// overrides) serves: `metrics.listen`, on loopback when it listens
        /// on every address.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Probe /readyz instead of /healthz.
        #[arg(long)]
        ready: bool,
    },
    /// Run a complete pipeline with no external services: an in-process
    /// Kafka-protocol broker, a page-view generator and an in-memory region.
    Quickstart {
        /// Stop after this long (e.g. "30s"); runs until Ctrl-C without it.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Events per second the generator produces. The embedded broker
        /// keeps a bounded log, so an unbounded rate would only measure it.
        #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        rate: u64,
        /// Where `/metrics` is served.
        #[arg(long, default_value = "127.0.0.1:9464")]
        metrics_listen: std::net::SocketAddr,
    },
}

#[derive(Subcommand)]
enum CheckpointAction {
    /// Show each task's checkpoint: offset, watermark, epoch, state size, age.
    List {
        #[arg(long, short)]
        config: PathBuf,
        /// Only this pipeline (default: every pipeline in the file).
        #[arg(long)]
        pipeline: Option<String>,
    },
    /// Delete a pipeline's checkpoints, so its tasks start from the group's
    /// committed offsets with empty window state. Stop its connectors first.
    Reset {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        pipeline: String,
        /// Confirm: this discards window state.
        #[arg(long)]
        yes: bool,
    },
}

/// How long interactive commands wait for Redis.
const INTERACTIVE_TIMEOUT: Duration = Duration::from_secs(5);

async fn checkpoints(action: CheckpointAction) -> anyhow::Result<()> {
    let config = match &action {
        CheckpointAction::List { config, .. } | CheckpointAction::Reset { config, .. } => config.clone(),
    };
    let mut settings =
        Settings::load(&config).with_context(|| format!("invalid configuration {}", config.display()))?;
    // Interactive: a person waits; a cluster that is not there now is an
    // answer (a connector instead waits out a rolling restart).
    settings.redis.startup_timeout = settings.redis.startup_timeout.min(INTERACTIVE_TIMEOUT);
    settings.redis.write_deadline = settings.redis.write_deadline.min(INTERACTIVE_TIMEOUT);
    let handle = regionflow::redis::ClusterHandle::connect(&settings.redis).await?;
    let store = regionflow::app::checkpoint_store(&settings, Arc::new(handle));
    match action {
        CheckpointAction::List { pipeline, .. } => {
            let now = regionflow::time::now_millis();
            println!(
                "{:<16} {:<24} {:>9} {:>12} {:<24} {:>6} {:>10} {:>9}",
                "pipeline", "topic", "partition", "offset", "watermark", "epoch", "state", "age"
            );
            for name in settings.pipelines.keys().filter(|n| pipeline.as_ref().is_none_or(|p| p == *n)) {
                for (task, checkpoint) in store.list(name).await? {
                    let Some(c) = checkpoint else { continue };
                    let watermark = chrono::DateTime::from_timestamp_millis(c.watermark)
                        .map_or_else(|| "-".to_string(), |t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string());
                    let age = humantime::format_duration(std::time::Duration::from_secs(
                        ((now - c.written_at).max(0) / 1000) as u64,
                    ));
                    println!(
                        "{:<16} {:<24} {:>9} {:>12} {:<24} {:>6} {:>9}B {:>9}",
                        task.pipeline,
                        task.topic,
                        task.partition,
                        c.offset,
                        watermark,
                        c.epoch,
                        c.state.len(),
                        age.to_string()
                    );
                }
            }
            Ok(())
        }
        CheckpointAction::Reset { pipeline, yes, .. } => {
            anyhow::ensure!(
                settings.pipelines.contains_key(&pipeline),
                "no pipeline `{pipeline}` in {}",
                config.display()
            );
            anyhow::ensure!(
                yes,
                "resetting discards the window state of pipeline `{pipeline}`; stop its connectors and pass --yes"
            );
            let n = store.reset(&pipeline).await?;
            println!(
                "deleted {n} checkpoints of pipeline `{pipeline}`; its tasks start from the group's committed offsets"
            );
            Ok(())
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn,librdkafka=warn"));
    // Colours only for a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        // A line logged inside a span (a partition task's) carries its
        // fields under "span": {"name", "pipeline", "topic", "partition"}.
        LogFormat::Json => builder.json().flatten_event(true).with_span_list(false).init(),
    }
}

/// A minimal HTTP/1.0 GET: the runtime image carries no curl.
async fn probe(address: &str, path: &str) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .context("no answer within 5s")?
        .with_context(|| format!("cannot reach {address}"))?;
    let status = response.lines().next().unwrap_or_default();
    anyhow::ensure!(status.contains(" 200 "), "{path} answered {status:?}");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Validate { config } => {
            let settings =
                Settings::load(&config).with_context(|| format!("invalid configuration {}", config.display()))?;
            regionflow::kafka::check_properties(&settings.kafka)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("invalid configuration {}", config.display()))?;
            println!("# {} is valid; resolved with environment overrides:", config.display());
            print!("{}", toml::to_string_pretty(&settings.redacted()).context("printing the configuration")?);
            Ok(())
        }
        Command::Run { config } => {
            let settings =
                Settings::load(&config).with_context(|| format!("invalid configuration {}", config.display()))?;
            regionflow::app::run(settings, shutdown_on_signals()).await
        }
        Command::Quickstart { duration, rate, metrics_listen } => {
            let shutdown = shutdown_after(duration);
            regionflow::quickstart::run(regionflow::quickstart::Options { rate, metrics_listen }, shutdown).await
        }
        Command::Generate { brokers, topic, rate, duration } => {
            let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("linger.ms", "10")
                .create()
                .context("creating the producer")?;
            tracing::info!(%brokers, %topic, rate, "generating page views");
            regionflow::quickstart::produce(producer, topic, rate, shutdown_after(duration)).await;
            Ok(())
        }
        Command::Checkpoints { action } => checkpoints(action).await,
        Command::Region { action } => cli::region::run(action).await,
        Command::Probe { address, config, ready } => {
            let address = match config {
                Some(config) => {
                    let settings = Settings::load(&config)
                        .with_context(|| format!("invalid configuration {}", config.display()))?;
                    let mut listen = settings.metrics.listen;
                    if listen.ip().is_unspecified() {
                        listen.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                    }
                    listen.to_string()
                }
                None => address,
            };
            probe(&address, if ready { "/readyz" } else { "/healthz" }).await
        }
    }
}
