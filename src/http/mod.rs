//! The HTTP API, in the same process as the wire server (`--http-listen`,
//! default 127.0.0.1:8080; `off` to disable):
//! - `GET /health`: the process is up (liveness);
//! - `GET /ready`: the metadata store, Redis (when used) and the lake answer
//!   within 2 s each (200), or which of them do not (503);
//! - `GET /metrics`: Prometheus metrics in the OpenMetrics text format.
//!
//! None of these serve data: they carry no user's rows, so they need no
//! login. The JSON API under `/api` ([`api`]) and the web console
//! ([`console`]: `/`, `/datasets/..`, `/runs/..`, `/lineage`) do, and take
//! the same users and roles as the wire.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod api;
pub mod console;
mod spool;
pub mod tls;

use crate::cache::Coordinator;
use crate::meta::MetaStore;
use crate::storage::Lake;

/// How long each readiness check may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the endpoints look at.
#[derive(Clone)]
pub struct HttpState {
    pub meta: Arc<MetaStore>,
    pub coordinator: Arc<Coordinator>,
    pub lake: Arc<Lake>,
    pub engine: Arc<crate::engine::Engine>,
    pub policy: Arc<crate::governance::Policy>,
    /// The config's users (empty: local trust).
    pub users: Arc<Vec<crate::config::User>>,
    pub pipeline: Option<Arc<crate::pipeline::Pipeline>>,
    pub upload_limit: usize,
    /// Served over TLS (`tls:` in the config): cookies are marked `Secure`.
    pub https: bool,
    /// The console's logged-in browsers, by session cookie.
    pub sessions: Arc<std::sync::Mutex<std::collections::HashMap<String, console::BrowserSession>>>,
}

/// Serve the API on `listener` (over TLS with `tls`) until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = api::routes()
        .merge(console::routes(state.upload_limit))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state);
    let stop = shutdown.clone();
    match tls {
        Some(acceptor) => {
            let listener = tls::TlsListener::new(listener, acceptor, shutdown.clone())?;
            axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await
        }
        None => axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await,
    }
}

/// Bind the API's address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

async fn health() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

async fn ready(State(state): State<HttpState>) -> impl IntoResponse {
    let (meta, redis, lake) = tokio::join!(
        probe(state.meta.ping()),
        probe(state.coordinator.ping()),
        probe(state.lake.probe()),
    );
    let checks = [("metadata", meta), ("redis", redis), ("lake", lake)];
    let ready = checks.iter().all(|(_, c)| c.ok);
    let body = serde_json::json!({
        "ready": ready,
        "checks": checks.iter().map(|(name, c)| (name.to_string(), serde_json::json!({
            "ok": c.ok,
            "ms": c.ms,
            "error": c.error,
        }))).collect::<serde_json::Map<_, _>>(),
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body))
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        crate::metrics::render(),
    )
}

struct Check {
    ok: bool,
    ms: u64,
    error: Option<String>,
}

async fn probe<E: std::fmt::Display>(check: impl std::future::Future<Output = Result<(), E>>) -> Check {
    let started = Instant::now();
    let outcome = tokio::time::timeout(PROBE_TIMEOUT, check).await;
    let ms = started.elapsed().as_millis() as u64;
    match outcome {
        Ok(Ok(())) => Check { ok: true, ms, error: None },
        Ok(Err(err)) => Check { ok: false, ms, error: Some(crate::spec::secrets::redact(&err.to_string())) },
        Err(_) => Check { ok: false, ms, error: Some(format!("no answer within {}s", PROBE_TIMEOUT.as_secs())) },
    }
}
