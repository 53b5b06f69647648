//! Settings → built components → jobs.
//!
//! Each external component is built from its settings by one function here,
//! used by `run`, the `checkpoints` commands and the quick-start alike: the
//! Redis Cluster handle with one region per pipeline and the checkpoint
//! store on it ([`redis_sinks`]), the in-memory equivalents
//! ([`memory_sinks`]), and the whole connector with its metrics endpoint
//! ([`run`]). Signals become a [`CancellationToken`] here too.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{CheckpointStore, MemoryCheckpointStore};
use crate::config::Settings;
use crate::metrics::{Health, Metrics};
use crate::pipeline::compile;
use crate::redis::{ClusterHandle, ConnectError, RedisCheckpointStore, RedisRegion};
use crate::region::{MemoryRegion, Region};

/// Where a connector's results and checkpoints go.
pub struct Sinks {
    /// One region per pipeline, by pipeline name.
    pub regions: HashMap<String, Arc<dyn Region>>,
    pub checkpoints: Arc<dyn CheckpointStore>,
    /// The Redis Cluster they live on, for readiness (`None` in memory).
    pub redis: Option<Arc<ClusterHandle>>,
}

/// Connects to the Redis Cluster: one region per pipeline and the checkpoint
/// store, all on one cluster handle (so that `WAIT` covers region writes).
pub async fn redis_sinks(settings: &Settings, metrics: &Metrics) -> Result<Sinks, ConnectError> {
    let handle = Arc::new(ClusterHandle::connect(&settings.redis).await?);
    handle.check_eviction(settings.redis.allow_eviction).await?;
    for (name, config) in &settings.pipelines {
        let owner = format!("pipeline `{name}` of group `{}`", settings.kafka.group_id);
        crate::redis::claim(
            &handle,
            &settings.redis.key_prefix,
            &config.region.name,
            &owner,
            settings.redis.startup_timeout,
        )
        .await
        .map_err(ConnectError::Refused)?;
    }
    let regions = settings
        .pipelines
        .iter()
        .map(|(name, config)| {
            let aggregates = compile::aggregates(config);
            let region = RedisRegion::new(
                handle.clone(),
                &config.region.name,
                aggregates.iter().map(|(f, n)| (*f, n.as_str())),
                settings.redis.write_concurrency,
                settings.redis.write_deadline,
                metrics.redis_region(&config.region.name),
            );
            (name.clone(), Arc::new(region) as Arc<dyn Region>)
        })
        .collect();
    Ok(Sinks { regions, checkpoints: Arc::new(checkpoint_store(settings, handle.clone())), redis: Some(handle) })
}

/// The checkpoint store on `handle`.
pub fn checkpoint_store(settings: &Settings, handle: Arc<ClusterHandle>) -> RedisCheckpointStore {
    RedisCheckpointStore::new(
        handle,
        &settings.redis.key_prefix,
        settings.redis.write_deadline,
        settings.redis.replica_timeout,
    )
}

/// In-process regions and checkpoints (the quick-start): the sinks and each
/// pipeline's region, to read back.
pub fn memory_sinks(settings: &Settings) -> (Sinks, Vec<(String, Arc<MemoryRegion>)>) {
    let mut memory = Vec::new();
    let mut regions: HashMap<String, Arc<dyn Region>> = HashMap::new();
    for (name, config) in &settings.pipelines {
        let region = Arc::new(MemoryRegion::new(&compile::aggregates(config)));
        memory.push((name.clone(), region.clone()));
        regions.insert(name.clone(), region);
    }
    (Sinks { regions, checkpoints: Arc::new(MemoryCheckpointStore::default()), redis: None }, memory)
}

/// Runs a connector on Redis until `shutdown`, serving its metrics.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let addr = crate::metrics::serve(settings.metrics.listen, metrics.clone(), health.clone(), shutdown.clone())
        .await
        .with_context(|| format!("cannot listen on metrics.listen = {}", settings.metrics.listen))?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    let sinks = redis_sinks(&settings, &metrics).await?;
    crate::connector::run(settings, sinks, metrics, health, shutdown).await?;
    Ok(())
}

/// A token cancelled on SIGINT or SIGTERM.
pub fn shutdown_on_signals() -> CancellationToken {
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

/// A shutdown token cancelled by signals, or after `duration` when given.
pub fn shutdown_after(duration: Option<Duration>) -> CancellationToken {
    let shutdown = shutdown_on_signals();
    if let Some(duration) = duration {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            stop.cancel();
        });
    }
    shutdown
}
