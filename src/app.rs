//! `AppState`, the router that merges every area's routes, and serving with graceful shutdown.
//!
//! Shutdown order (docs/architecture.md, "The call task", for what a live call does):
//! 1. stop accepting (axum graceful shutdown) once the token is cancelled;
//! 2. wait for the task tracker (live calls end and queue their records) up to the grace period;
//! 3. the caller then closes the store, so a call that ended during shutdown is still saved.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use axum::{Router, extract::DefaultBodyLimit};
use sea_orm::DatabaseConnection;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower_http::{limit::RequestBodyLimitLayer, trace::TraceLayer};

use crate::{
    bridge::CallContext,
    config::Settings,
    metrics::Metrics,
    realtime::{client::SessionHandle, registry},
};

/// Warm sessions (and cold-call contexts) between webhook and media stream, by CallSid.
pub type Registry = registry::Registry<CallContext, SessionHandle>;

/// Shared, cheaply cloned state handed to every handler.
#[derive(Clone)]
pub struct AppState {
    /// Validated settings.
    pub settings: Arc<Settings>,
    /// Database pool (SQLite or Postgres).
    pub db: DatabaseConnection,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// Cancelled when the process shuts down.
    pub shutdown: CancellationToken,
    /// Owner of every long-lived task spawned on behalf of a request.
    pub tasks: TaskTracker,
    /// Calls between webhook and stream.
    pub registry: Arc<Registry>,
    /// Key of the stream `<Parameter name="token">`.
    pub stream_secret: Arc<[u8]>,
    /// Call records written off the relay path.
    pub writer: crate::store::writer::Writer,
    /// Wakes the webhook delivery worker: `notify_one()` after committing an outbox row
    /// (`store::outbox::enqueue`, `store::messages::take_message`); else it looks within a second.
    pub outbox_wake: Arc<tokio::sync::Notify>,
}

impl AppState {
    /// Builds the state around an open database and starts the background tasks (the reaper,
    /// the call-record writer, the webhook delivery worker and the post-call worker); they stop
    /// with `shutdown`. Fails if the call-record spool cannot be opened (`store.spool_dir`).
    pub fn new(settings: Settings, db: DatabaseConnection) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::new());
        let registry = Arc::new(Registry::new(
            settings.prewarm.max_sessions,
            Duration::from_secs(settings.prewarm.ttl_secs),
            metrics.clone(),
        ));
        let stream_secret: Arc<[u8]> = if settings.twilio.stream_token_secret.is_empty() {
            let mut key = [0u8; 32];
            rand::fill(&mut key);
            Arc::from(&key[..])
        } else {
            Arc::from(settings.twilio.stream_token_secret.expose().as_bytes())
        };
        let shutdown = CancellationToken::new();
        let background = TaskTracker::new();
        let writer = crate::store::writer::Writer::start(
            db.clone(),
            metrics.clone(),
            crate::store::writer::options(&settings),
            &background,
        )
        .context("opening the call-record spool (store.spool_dir)")?;
        background.spawn(crate::realtime::reaper::run(
            registry.clone(),
            writer.clone(),
            shutdown.clone(),
        ));
        let outbox_wake = Arc::new(tokio::sync::Notify::new());
        crate::webhooks::worker::start(
            db.clone(),
            settings.webhooks.clone(),
            metrics.clone(),
            outbox_wake.clone(),
            shutdown.clone(),
            &background,
        );
        crate::post_call::worker::start(
            db.clone(),
            &settings.openai,
            settings.post_call.clone(),
            outbox_wake.clone(),
            shutdown.clone(),
            &background,
        );
        background.close();
        Ok(Self {
            settings: Arc::new(settings),
            db,
            metrics,
            shutdown,
            tasks: TaskTracker::new(),
            registry,
            stream_secret,
            writer,
            outbox_wake,
        })
    }
}

/// The full router: operations, admin API (and the Twilio routes as they land).
pub fn router(state: AppState) -> Router {
    let max_body = state.settings.server.max_body_bytes;
    Router::new()
        .merge(crate::ops::router())
        .merge(crate::admin::router(&state))
        .merge(crate::twilio::webhook::router())
        .layer(DefaultBodyLimit::max(max_body))
        .layer(RequestBodyLimitLayer::new(max_body))
        // After the limits: the knowledge upload has its own (documents up to 1 MiB).
        .merge(crate::admin::knowledge::upload_router(&state))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Serves on an already bound listener until `state.shutdown` is cancelled, then drains.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState) -> anyhow::Result<()> {
    let shutdown = state.shutdown.clone();
    let tasks = state.tasks.clone();
    let writer = state.writer.clone();
    let grace = Duration::from_secs(state.settings.server.shutdown_grace_secs);
    let app = router(state);
    // Audio frames are small and latency-bound: never let Nagle hold one back.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("HTTP server failed")?;
    // Calls see the cancellation, end and queue their records; wait for them, then let the
    // writer drain its queue, so a call that ended during shutdown is still saved.
    tasks.close();
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        tracing::warn!(
            grace_secs = grace.as_secs(),
            "shutdown: calls still running after the grace period"
        );
    }
    writer.flush(grace).await;
    Ok(())
}

/// Cancels `token` on SIGINT or SIGTERM.
pub async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received: shutting down"),
        _ = term => tracing::info!("SIGTERM received: shutting down"),
    }
    token.cancel();
}
