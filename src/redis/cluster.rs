//! The Redis Cluster connection a connector shares between its regions and
//! its checkpoint store, and the one place that decides retries (on the
//! error's kind, see [`super::error`]).
//!
//! redis-rs' cluster connection normally follows failovers by itself
//! (MOVED, reconnects, slot refreshes), but it can stay stuck on a dead
//! primary; after operations keep failing for [`REPLACE_AFTER`], the retry
//! loop replaces it with a fresh one built from the seed nodes (a
//! generation counter makes one replacement serve every caller). Whether
//! writes reached replicas is decided by replication offsets, which do not
//! depend on which socket carried them (see `replication`).
//!
//! Connecting at start retries what a rolling restart explains (refused
//! connections, timeouts) until `redis.startup_timeout`, and gives up at
//! once on what no retry mends: refused credentials, TLS failures, a
//! plain-text client on a TLS port, a server that is not a cluster
//! ([`error::classify_connect`]). TLS and the ACL user come from
//! `redis.tls`, `redis.username` and `redis.password`.
//!
//! It also keeps the cluster's slot → primary map ([`SlotMap`]) for the
//! region writer's per-node pipelines: fetched on demand, forgotten when a
//! pipeline fails or the connection is replaced.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{ClientTlsConfig, TlsCertificates, TlsMode};

use super::error::{self, Retry};
use super::slots::SlotMap;
use crate::config::RedisConfig;

/// How long operations fail before the connection is replaced.
pub const REPLACE_AFTER: Duration = Duration::from_secs(3);
const MIN_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// After a failed `CLUSTER SLOTS`, writes go without a slot map this long
/// before it is asked again.
const SLOT_MAP_RETRY: Duration = Duration::from_secs(1);
/// How long seed nodes must keep closing connections without a reply
/// before start-up calls it a TLS-only port: a node shutting down in a
/// rolling restart can do it too, but only briefly.
const CLOSED_WITHOUT_REPLY_FOR: Duration = Duration::from_secs(1);

/// Why a connector cannot start on this Redis Cluster.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot reach Redis Cluster at {nodes}: {message}; check redis.nodes and that the cluster is up")]
    Unreachable { nodes: String, message: String },
    /// Connecting failed in a way no retry mends (see
    /// [`error::classify_connect`]).
    #[error("cannot connect to Redis Cluster at {nodes}: {cause}: {message}")]
    Permanent { nodes: String, cause: error::StartupFailure, message: String },
    /// The cluster answers but cannot be used as configured.
    #[error("{0}")]
    Refused(String),
}

pub struct ClusterHandle {
    client: ClusterClient,
    current: RwLock<(u64, ClusterConnection)>,
    connect_timeout: Duration,
    replacing: tokio::sync::Mutex<Instant>,
    slots: RwLock<Slots>,
    /// Held while fetching the slot map, so that one fetch serves everyone.
    fetching_slots: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Slots {
    map: Option<Arc<SlotMap>>,
    failed_at: Option<Instant>,
}

impl ClusterHandle {
    /// Connects to the cluster, retrying until `startup_timeout`.
    pub async fn connect(config: &RedisConfig) -> Result<ClusterHandle, ConnectError> {
        let nodes = config.nodes.iter().map(|n| crate::config::redact_url(n)).collect::<Vec<_>>().join(",");
        let unreachable = |message: String| ConnectError::Unreachable { nodes: nodes.clone(), message };
        let client = Self::client(config)?;
        let tls = config.nodes.iter().any(|node| node.starts_with("rediss://"));
        let started = Instant::now();
        let mut backoff = MIN_BACKOFF;
        let mut closed_since: Option<Instant> = None;
        loop {
            match Self::open(&client, config.connect_timeout).await {
                Ok(connection) => {
                    return Ok(ClusterHandle {
                        client,
                        current: RwLock::new((0, connection)),
                        connect_timeout: config.connect_timeout,
                        replacing: tokio::sync::Mutex::new(Instant::now()),
                        slots: RwLock::default(),
                        fetching_slots: tokio::sync::Mutex::new(()),
                    })
                }
                Err(e) => {
                    let cause = error::classify_connect(&e, tls);
                    let closed = cause == Some(error::StartupFailure::PlainTextToTls);
                    closed_since = if closed { closed_since.or(Some(Instant::now())) } else { None };
                    let settled = closed_since.is_none_or(|since| since.elapsed() >= CLOSED_WITHOUT_REPLY_FOR);
                    if let Some(cause) = cause.filter(|_| settled) {
                        return Err(ConnectError::Permanent { nodes: nodes.clone(), cause, message: e.to_string() });
                    }
                    if started.elapsed() >= config.startup_timeout {
                        return Err(unreachable(e.to_string()));
                    }
                    tracing::warn!(error = %e, "Redis Cluster not reachable yet; retrying");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// The cluster client for `config`: timeouts, the ACL user, TLS.
    fn client(config: &RedisConfig) -> Result<ClusterClient, ConnectError> {
        let refused = |message: String| ConnectError::Refused(message);
        let mut builder = ClusterClientBuilder::new(config.nodes.clone())
            .connection_timeout(config.connect_timeout)
            .response_timeout(config.response_timeout)
            .retries(3);
        if let Some(username) = &config.username {
            builder = builder.username(username);
        }
        if let Some(password) = &config.password {
            builder = builder.password(password.expose());
        }
        if let Some(tls) = &config.tls {
            // Read again (validation read them at load): they may have been
            // rotated since, and the contents are not kept in the settings.
            let read = |key: &str, path: &std::path::Path| {
                std::fs::read(path).map_err(|e| refused(format!("{key}: cannot read {}: {e}", path.display())))
            };
            let root_cert = tls.ca_file.as_deref().map(|path| read("redis.tls.ca_file", path)).transpose()?;
            let client_tls = match (&tls.cert_file, &tls.key_file) {
                (Some(cert), Some(key)) => Some(ClientTlsConfig {
                    client_cert: read("redis.tls.cert_file", cert)?,
                    client_key: read("redis.tls.key_file", key)?,
                }),
                _ => None,
            };
            builder = builder.certs(TlsCertificates { client_tls, root_cert });
            if tls.danger_accept_invalid_certificates {
                tracing::warn!(
                    "redis.tls.danger_accept_invalid_certificates is set: Redis servers' certificates are NOT \
                     verified, so anyone on the network path can impersonate them; use redis.tls.ca_file instead"
                );
                builder = builder.tls(TlsMode::Insecure);
            }
        }
        builder.build().map_err(|e| {
            refused(format!("cannot build the Redis Cluster client: {e}; check redis.tls and redis.nodes"))
        })
    }

    /// Refuses (or, with `allow`, warns about) primaries whose
    /// `maxmemory-policy` may evict keys without a TTL: checkpoints and
    /// epoch counters have none, and losing them silently restarts
    /// partitions with empty state or re-issues epochs. A server that does
    /// not answer `CONFIG GET` (managed Redis often renames it) is warned
    /// about.
    pub async fn check_eviction(&self, allow: bool) -> Result<(), ConnectError> {
        let Some(slots) = self.slot_map().await else {
            tracing::warn!("cannot list the primaries to check maxmemory-policy; make sure it is noeviction");
            return Ok(());
        };
        let (_, mut connection) = self.get();
        for index in 0..slots.primaries() {
            let (host, port) = slots.address(index);
            let route = redis::cluster_routing::RoutingInfo::SingleNode(
                redis::cluster_routing::SingleNodeRoutingInfo::ByAddress { host: host.to_string(), port },
            );
            let mut cmd = redis::cmd("CONFIG");
            cmd.arg("GET").arg("maxmemory-policy");
            let policy = match connection.route_command(cmd, route).await {
                Ok(redis::Value::Array(values)) | Ok(redis::Value::Set(values)) => {
                    values.get(1).and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
                }
                Ok(redis::Value::Map(pairs)) => {
                    pairs.first().and_then(|(_, v)| redis::from_redis_value::<String>(v.clone()).ok())
                }
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(node = %format!("{host}:{port}"), error = %e,
                        "cannot read maxmemory-policy; make sure it is noeviction or volatile-*");
                    continue;
                }
            };
            let Some(policy) = policy else { continue };
            if policy.starts_with("allkeys-") {
                let message = format!(
                    "primary {host}:{port} has maxmemory-policy {policy}, which can evict checkpoints and epoch \
                     counters (they have no TTL); set it to noeviction or volatile-*, or set \
                     redis.allow_eviction = true to accept restarts with empty state"
                );
                if !allow {
                    return Err(ConnectError::Refused(message));
                }
                tracing::warn!("{message}");
            }
        }
        Ok(())
    }

    /// Sends `PING` to every primary, each bounded by the connect timeout.
    pub async fn ping_primaries(&self) -> Result<(), String> {
        let slots = self.slot_map().await.ok_or("no slot map: CLUSTER SLOTS does not answer")?;
        let (_, mut connection) = self.get();
        for index in 0..slots.primaries() {
            let (host, port) = slots.address(index);
            let route = redis::cluster_routing::RoutingInfo::SingleNode(
                redis::cluster_routing::SingleNodeRoutingInfo::ByAddress { host: host.to_string(), port },
            );
            let ping = connection.route_command(redis::cmd("PING"), route);
            match tokio::time::timeout(self.connect_timeout, ping).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("{host}:{port}: {e}")),
                Err(_) => return Err(format!("{host}:{port}: no answer within {:?}", self.connect_timeout)),
            }
        }
        Ok(())
    }

    async fn open(client: &ClusterClient, timeout: Duration) -> Result<ClusterConnection, redis::RedisError> {
        let attempt = async {
            let mut connection = client.get_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut connection).await?;
            Ok::<_, redis::RedisError>(connection)
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => {
                Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer within {timeout:?}")).into())
            }
        }
    }

    /// The current connection and its generation.
    pub fn get(&self) -> (u64, ClusterConnection) {
        let current = self.current.read().expect("connection lock");
        (current.0, current.1.clone())
    }

    pub fn generation(&self) -> u64 {
        self.current.read().expect("connection lock").0
    }

    /// The cluster's slot → primary map, fetched with `CLUSTER SLOTS` when
    /// none is held; `None` while it cannot be had (for `SLOT_MAP_RETRY`
    /// after a failed fetch), in which case writes go one by one.
    pub async fn slot_map(&self) -> Option<Arc<SlotMap>> {
        let usable = |slots: &Slots| match &slots.map {
            Some(map) => Some(Some(map.clone())),
            None if slots.failed_at.is_some_and(|at| at.elapsed() < SLOT_MAP_RETRY) => Some(None),
            None => None,
        };
        if let Some(known) = usable(&self.slots.read().expect("slot map lock")) {
            return known;
        }
        let _fetching = self.fetching_slots.lock().await;
        if let Some(known) = usable(&self.slots.read().expect("slot map lock")) {
            return known;
        }
        let (_, mut connection) = self.get();
        let map = match redis::cmd("CLUSTER").arg("SLOTS").query_async::<redis::Value>(&mut connection).await {
            Ok(reply) => {
                let map = SlotMap::parse(&reply).map(Arc::new);
                if map.is_none() {
                    tracing::warn!("CLUSTER SLOTS names no primary by address; writing entries one by one for now");
                }
                map
            }
            Err(e) => {
                tracing::warn!(error = %e, "CLUSTER SLOTS failed; writing entries one by one for now");
                None
            }
        };
        let failed_at = map.is_none().then(Instant::now);
        *self.slots.write().expect("slot map lock") = Slots { map: map.clone(), failed_at };
        map
    }

    /// Drops the slot map (after a redirect or a connection error); the
    /// next batch fetches a new one.
    pub fn forget_slot_map(&self) {
        self.slots.write().expect("slot map lock").map = None;
    }

    /// Replaces the connection of generation `seen` (once, however many
    /// callers ask; at most every [`REPLACE_AFTER`]).
    async fn replace(&self, seen: u64) {
        let mut last = self.replacing.lock().await;
        if self.generation() != seen || last.elapsed() < REPLACE_AFTER {
            return;
        }
        *last = Instant::now();
        match Self::open(&self.client, self.connect_timeout).await {
            Ok(connection) => {
                self.forget_slot_map();
                let mut current = self.current.write().expect("connection lock");
                *current = (current.0 + 1, connection);
                tracing::warn!(
                    generation = current.0,
                    "replaced the Redis Cluster connection after persistent failures"
                );
            }
            Err(e) => tracing::warn!(error = %e, "replacing the Redis Cluster connection failed; retrying"),
        }
    }

    /// Runs an operation, retrying transient failures (connection loss,
    /// MOVED/ASK, CLUSTERDOWN, TRYAGAIN, READONLY, timeouts) with exponential
    /// backoff until `deadline`, replacing the connection when failures
    /// persist. Permanent errors ([`error::classify`]) fail at once: they
    /// would fail the same way again. Returns the result and the number of
    /// retries, or the failure.
    pub async fn with_retry<T, F, Fut>(&self, deadline: Duration, what: &str, mut op: F) -> Result<(T, u64), Failed>
    where
        F: FnMut(ClusterConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let started = Instant::now();
        let mut backoff = MIN_BACKOFF;
        let mut retries = 0;
        loop {
            let (generation, connection) = self.get();
            match op(connection).await {
                Ok(value) => return Ok((value, retries)),
                Err(e) if matches!(error::classify(&e), Retry::Permanent(_)) || started.elapsed() >= deadline => {
                    return Err(Failed { elapsed: started.elapsed(), error: e })
                }
                Err(e) => {
                    retries += 1;
                    tracing::warn!(operation = what, error = %e, retries, "Redis operation failed; retrying");
                    if started.elapsed() >= REPLACE_AFTER {
                        self.replace(generation).await;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// An operation that failed for good: the last error and how long it was
/// retried.
#[derive(Debug)]
pub struct Failed {
    pub elapsed: Duration,
    pub error: redis::RedisError,
}

impl Failed {
    pub fn is_permanent(&self) -> bool {
        matches!(error::classify(&self.error), Retry::Permanent(_))
    }

    /// The error's message, with advice when it is permanent.
    pub fn message(&self) -> String {
        error::describe(&self.error)
    }
}
