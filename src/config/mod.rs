//! Configuration: one TOML file, every key overridable from the environment
//! as `REGIONFLOW__SECTION__KEY` (e.g. `REGIONFLOW__KAFKA__BROKERS`,
//! `REGIONFLOW__PIPELINES__PAGEVIEWS__WINDOW__SIZE`).
//!
//! Secrets may be references to files or environment variables and are
//! never shown (see `secrets`).
//!
//! Loading deserializes into typed structs (durations are `Duration`,
//! windows an enum) and then validates once; errors carry the key's path and
//! what would be valid. Nothing downstream re-parses strings.

mod errors;
mod pipeline;
mod redis;
mod secrets;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use pipeline::*;
pub use redis::RedisTlsConfig;
pub use secrets::{is_secret_property, redact_url, Secret, REDACTED};

pub const ENV_PREFIX: &str = "REGIONFLOW";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration {path}: {message}")]
    Read { path: String, message: String },
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub kafka: KafkaConfig,
    pub redis: RedisConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub connector: ConnectorConfig,
    /// Pipelines by name (lower-case names keep them overridable from the
    /// environment, which is case-insensitive).
    pub pipelines: BTreeMap<String, PipelineConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated bootstrap servers, as librdkafka takes them.
    pub brokers: String,
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// librdkafka properties passed through unchanged (e.g. security.protocol).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// How long start-up keeps trying to reach the brokers before giving up.
    #[serde(default = "default_startup_timeout", with = "humantime_serde")]
    pub startup_timeout: Duration,
}

fn default_group_id() -> String {
    "regionflow".into()
}

fn default_startup_timeout() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// Seed nodes of the Redis Cluster, e.g. `redis://10.0.0.1:6379`
    /// (a list, or one comma-separated string as environment overrides give).
    #[serde(deserialize_with = "list_or_comma_separated")]
    pub nodes: Vec<String>,
    /// Every region key starts with `<key_prefix>:`.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    #[serde(default = "default_redis_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(default = "default_redis_timeout", with = "humantime_serde")]
    pub response_timeout: Duration,
    /// Writes are retried with exponential backoff for at most this long
    /// (riding through MOVED/ASK and primary failovers) before the task fails.
    #[serde(default = "default_write_deadline", with = "humantime_serde")]
    pub write_deadline: Duration,
    #[serde(default = "default_startup_timeout", with = "humantime_serde")]
    pub startup_timeout: Duration,
    /// Entries written one command at a time, at once, per task: amendments
    /// and writes retried after a failed pipeline (an entry's first write
    /// goes in a pipeline per primary; see `redis/region.rs`).
    #[serde(default = "default_write_concurrency")]
    pub write_concurrency: usize,
    /// How long a checkpoint waits for `region.redundancy` replicas.
    #[serde(default = "default_redis_timeout", with = "humantime_serde")]
    pub replica_timeout: Duration,
    /// Start even when a primary's `maxmemory-policy` may evict keys without
    /// a TTL (`allkeys-*`): checkpoints and epoch counters could vanish,
    /// which restarts partitions with empty state. Off: such a cluster is
    /// refused at start.
    #[serde(default)]
    pub allow_eviction: bool,
    /// ACL user to log in as (else the URLs' user, else `default`).
    #[serde(default)]
    pub username: Option<String>,
    /// Password of `username` (or of `default`); may be a `${file:...}` or
    /// `${env:...}` reference, and is never shown.
    #[serde(default)]
    pub password: Option<Secret>,
    /// TLS files and the opt-out from verification; needs `rediss://` nodes.
    #[serde(default)]
    pub tls: Option<RedisTlsConfig>,
}

fn default_key_prefix() -> String {
    "rf".into()
}

fn default_redis_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_write_deadline() -> Duration {
    Duration::from_secs(120)
}

fn default_write_concurrency() -> usize {
    256
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the `/metrics`, `/healthz` and `/readyz` endpoints.
    #[serde(default = "default_metrics_listen")]
    pub listen: SocketAddr,
}

fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 9464))
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { listen: default_metrics_listen() }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorConfig {
    /// Records the dispatch loop takes from the consumer per round before
    /// handing them to the partitions' tasks.
    #[serde(default = "default_poll_batch")]
    pub poll_batch: usize,
    /// How often a task writes fired results (offsets are stored at checkpoints).
    #[serde(default = "default_flush_interval", with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Fired results a task buffers before it flushes early.
    #[serde(default = "default_max_pending")]
    pub max_pending_results: usize,
    /// How often each task stores a checkpoint (also on revoke and shutdown).
    #[serde(default = "default_checkpoint_interval", with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// How long graceful shutdown waits for tasks to flush.
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// `/readyz` turns 503 once Redis has not answered for this long.
    #[serde(default = "default_unready_after_redis_down", with = "humantime_serde")]
    pub unready_after_redis_down: Duration,
}

fn default_poll_batch() -> usize {
    1024
}

fn default_flush_interval() -> Duration {
    Duration::from_millis(200)
}

fn default_max_pending() -> usize {
    10_000
}

fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_unready_after_redis_down() -> Duration {
    Duration::from_secs(10)
}

impl Default for ConnectorConfig {
    fn default() -> Self {
        ConnectorConfig {
            poll_batch: default_poll_batch(),
            flush_interval: default_flush_interval(),
            max_pending_results: default_max_pending(),
            checkpoint_interval: default_checkpoint_interval(),
            shutdown_timeout: default_shutdown_timeout(),
            unready_after_redis_down: default_unready_after_redis_down(),
        }
    }
}

impl Settings {
    /// Loads `path`, applies `REGIONFLOW__*` environment overrides, and
    /// validates the result.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// As [`Settings::load`], with the environment given explicitly (tests).
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let env: config::Map<String, String> = env.into_iter().collect();
        let variables: BTreeMap<String, String> = env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let source = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml).required(true))
            .add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .source(Some(env)),
            )
            .build()
            .map_err(|e| ConfigError::Read { path: path.display().to_string(), message: e.to_string() })?;
        for variable in errors::ignored_lookalikes(&variables) {
            tracing::warn!(
                %variable,
                "looks like a configuration override but is ignored: overrides start with REGIONFLOW__ (two underscores)"
            );
        }
        let explain = |e: ConfigError| errors::explain(e, &variables);
        let mut settings: Settings = serde_path_to_error::deserialize(source)
            .map_err(|e| ConfigError::Invalid { key: e.path().to_string(), message: e.inner().to_string() })
            .map_err(explain)?;
        settings.resolve_secrets(&variables)?;
        settings.validate().map_err(explain)?;
        Ok(settings)
    }

    pub fn from_toml_str(toml: &str) -> Result<Settings, ConfigError> {
        let source = config::Config::builder()
            .add_source(config::File::from_str(toml, config::FileFormat::Toml))
            .build()
            .map_err(|e| ConfigError::Read { path: "<string>".into(), message: e.to_string() })?;
        let mut settings: Settings = serde_path_to_error::deserialize(source)
            .map_err(|e| ConfigError::Invalid { key: e.path().to_string(), message: e.inner().to_string() })
            .map_err(|e| errors::explain(e, &BTreeMap::new()))?;
        settings.resolve_secrets(&std::env::vars().collect())?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid { key: key.into(), message: message.into() };
        if self.kafka.brokers.trim().is_empty() {
            return Err(invalid("kafka.brokers", "comma-separated host:port list, e.g. \"localhost:9092\""));
        }
        if self.redis.nodes.is_empty() {
            return Err(invalid("redis.nodes", "at least one seed node, e.g. [\"redis://127.0.0.1:7000\"]"));
        }
        for (i, node) in self.redis.nodes.iter().enumerate() {
            if !node.starts_with("redis://") && !node.starts_with("rediss://") {
                return Err(invalid(
                    &format!("redis.nodes[{i}]"),
                    "a redis:// or rediss:// URL, e.g. \"redis://127.0.0.1:7000\"",
                ));
            }
        }
        self.redis.validate_security()?;
        if self.redis.key_prefix.is_empty() || self.redis.key_prefix.contains(':') {
            return Err(invalid("redis.key_prefix", "a non-empty prefix without ':'"));
        }
        if self.redis.write_concurrency == 0 {
            return Err(invalid("redis.write_concurrency", "at least 1"));
        }
        if self.connector.poll_batch == 0 {
            return Err(invalid("connector.poll_batch", "at least 1"));
        }
        if self.connector.checkpoint_interval < self.connector.flush_interval {
            return Err(invalid(
                "connector.checkpoint_interval",
                "at least connector.flush_interval (a checkpoint includes a flush)",
            ));
        }
        if self.connector.flush_interval.is_zero() {
            return Err(invalid("connector.flush_interval", "a positive duration, e.g. \"200ms\""));
        }
        if self.pipelines.is_empty() {
            return Err(invalid("pipelines", "declare at least one pipeline, e.g. [pipelines.pageviews]"));
        }
        let mut regions = BTreeMap::new();
        for (name, pipeline) in &self.pipelines {
            pipeline.validate(&format!("pipelines.{name}"))?;
            if let Some(other) = regions.insert(pipeline.region.name.clone(), name) {
                return Err(invalid(
                    &format!("pipelines.{name}.region.name"),
                    &format!(
                        "region `{}` is already written by pipeline `{other}`; each region has one pipeline",
                        pipeline.region.name
                    ),
                ));
            }
        }
        let mut topics = BTreeMap::new();
        for (name, pipeline) in &self.pipelines {
            for topic in &pipeline.topics {
                if let Some(other) = topics.insert(topic.clone(), name) {
                    return Err(invalid(
                        &format!("pipelines.{name}.topics"),
                        &format!(
                            "topic `{topic}` is already consumed by pipeline `{other}`; a topic feeds one pipeline"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Accepts `["a", "b"]` or `"a,b"`, so lists can be overridden from the
/// environment.
pub(crate) fn list_or_comma_separated<'de, D>(deserializer: D) -> Result<Vec<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString {
        List(Vec<String>),
        String(String),
    }
    Ok(match ListOrString::deserialize(deserializer)? {
        ListOrString::List(list) => list,
        ListOrString::String(s) => s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
    })
}

#[cfg(test)]
mod tests;
