//! The HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the
//! process is alive) and `/readyz` (see [`Health`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::Metrics;

/// Readiness: the connector is running (subscribed, not shutting down),
/// the group has given it an assignment (possibly empty), every assigned
/// partition has restored its checkpoint, and Redis answers. Each part is
/// set by the component that knows it.
#[derive(Debug, Default)]
pub struct Health {
    running: AtomicBool,
    assigned: AtomicBool,
    /// Partitions whose tasks are starting (epoch, checkpoint restore).
    restoring: AtomicUsize,
    /// Set while Redis has stopped answering for longer than the connector
    /// tolerates (`connector.unready_after_redis_down`).
    redis_down: AtomicBool,
}

impl Health {
    /// Subscribed and running (`true`), or shutting down (`false`).
    pub fn set_running(&self, running: bool) {
        self.running.store(running, Ordering::Relaxed);
    }

    /// The group's assignment arrived, and `partitions` of it start restoring.
    pub fn restoring(&self, partitions: usize) {
        self.restoring.fetch_add(partitions, Ordering::Relaxed);
        self.assigned.store(true, Ordering::Relaxed);
    }

    /// `partitions` finished starting (restored, or failed and reported).
    pub fn restored(&self, partitions: usize) {
        self.restoring.fetch_sub(partitions, Ordering::Relaxed);
    }

    pub fn set_redis_down(&self, down: bool) {
        self.redis_down.store(down, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.running.load(Ordering::Relaxed)
            && self.assigned.load(Ordering::Relaxed)
            && self.restoring.load(Ordering::Relaxed) == 0
            && !self.redis_down.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// How long a client may take to send a request's headers: a slow or
/// half-open client is dropped after it, not held.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; beyond it, new connections are closed at
/// once. A scraper, probes and a few humans need a handful.
pub const MAX_CONNECTIONS: usize = 128;
/// A connection is closed after this long, however busy: keep-alive
/// clients reconnect, idle ones do not hold a slot for ever.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Binds `listen` and serves until `shutdown`; returns the bound address
/// (port 0 picks a free one).
///
/// HTTP/1 only, every connection with a header-read timeout and a bounded
/// lifetime, at most [`MAX_CONNECTIONS`] at once, so slow or half-open
/// clients cannot starve the scraper.
pub async fn serve(
    listen: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(|State(s): State<AppState>| async move { s.metrics.render() }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(s): State<AppState>| async move {
                if s.health.is_ready() {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }),
        )
        .with_state(AppState { metrics, health });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics endpoint: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::debug!("metrics endpoint: connection limit reached; closing a new connection");
                continue;
            };
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(connection);
                tokio::select! {
                    _ = &mut connection => {}
                    _ = tokio::time::sleep(CONNECTION_LIFETIME) => {}
                    _ = shutdown.cancelled() => connection.as_mut().graceful_shutdown(),
                }
            });
        }
    });
    Ok(addr)
}
