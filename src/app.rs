//! `AppState`, the router that merges every area's routes, and serving with a drain and a
//! graceful shutdown.
//!
//! Drain (first SIGTERM, README "Deploying without dropping calls"): `/readyz` turns 503,
//! `warmline_draining` is 1, new voice webhooks are redirected to `twilio.webhook_base_url`
//! (or answered here, cold), the listener stays up and live calls go on. Once no call is live
//! or ringing here for [`DRAIN_LINGER`] (Twilio's after-stream and status callbacks still reach
//! this instance meanwhile), or at `server.drain_secs`, when every live call is ended for its
//! after-stream TwiML to put it through to the fallback number, the shutdown below follows. A
//! second SIGTERM, or SIGINT, shuts down at once.
//!
//! Shutdown order (docs/architecture.md, "The call task", for what a live call does):
//! 1. stop accepting once the token is cancelled, and let the requests being served finish
//!    (src/listener.rs, as axum's graceful shutdown did);
//! 2. wait for the task tracker (live calls end and queue their records) up to the grace period;
//! 3. the caller then closes the store, so a call that ended during shutdown is still saved.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use axum::{
    Router,
    extract::{DefaultBodyLimit, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use sea_orm::DatabaseConnection;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower_http::{limit::RequestBodyLimitLayer, trace::TraceLayer};

use crate::{
    bridge::CallContext,
    config::Settings,
    listener::Limits,
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
    /// Cancelled when the process starts draining (the first SIGTERM).
    pub draining: CancellationToken,
    /// Cancelled when the drain runs out of time: live calls end ([`crate::bridge::outcome::EndReason::Drained`]).
    pub drain_deadline: CancellationToken,
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
    /// Clients read and calls ended lately (`store::recent`): calls go on while the database
    /// is unavailable.
    pub recent: Arc<crate::store::recent::Recent>,
    /// The other instances on the same Postgres (`crate::fleet`; off on SQLite).
    pub fleet: crate::fleet::Fleet,
    /// Rate limits and per-client caps (`[limits]`; the warm-session cap is the registry's).
    pub limits: Arc<crate::limits::Limits>,
    /// Every client's cached greeting in memory (`crate::greeting`).
    pub greetings: Arc<crate::greeting::Greetings>,
    /// Call recordings, stored off the calls' path (`crate::recording`).
    pub recorder: Arc<crate::recording::worker::Recorder>,
    /// Live call events for the admin API's `/events` stream (README.md, "Live events").
    pub events: Arc<crate::events::Events>,
    /// Call traces over OTLP (README.md, "Traces").
    pub traces: Arc<crate::traces::Traces>,
    /// Recent failed console log-ins, for their delay (`crate::accounts`).
    pub logins: Arc<crate::accounts::LoginThrottle>,
    /// The text channels' agent (README.md, "Text channels").
    pub text: Arc<crate::text::agent::TextAgent>,
    /// Sends WhatsApp and SMS answers through Twilio's Messages API.
    pub messages: Arc<crate::text::messaging::Sender>,
}

impl AppState {
    /// Builds the state around an open database and starts the background tasks (the reaper,
    /// the call-record writer, the webhook delivery worker and the post-call worker); they stop
    /// with `shutdown`. Fails if the call-record spool cannot be opened (`store.spool_dir`).
    pub fn new(settings: Settings, db: DatabaseConnection) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::new());
        let registry = Arc::new(Registry::new(
            settings.prewarm.max_sessions,
            settings.limits.warm_sessions_per_client,
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
            settings.text.chat_idle(),
            outbox_wake.clone(),
            shutdown.clone(),
            &background,
        );
        let fleet = crate::fleet::Fleet::new(&db, settings.public_ws_url("/twilio/media"));
        if fleet.enabled() {
            if settings.twilio.stream_token_secret.is_empty() {
                tracing::warn!(
                    "twilio.stream_token_secret is empty: with several instances on this database, a retried webhook that reaches another instance cannot hand the call to the one holding it"
                );
            }
            let (reg, writer, metrics) = (registry.clone(), writer.clone(), metrics.clone());
            let reg_local = registry.clone();
            background.spawn(crate::fleet::listen(
                fleet.clone(),
                settings.database.url.clone(),
                metrics.clone(),
                shutdown.clone(),
                move |sid| {
                    use crate::fleet::Local;
                    let Ok(sid) = crate::domain::CallSid::parse(sid) else {
                        return Local::Unknown;
                    };
                    if reg_local.contains(&sid) || reg_local.is_arriving(&sid) {
                        Local::Ringing
                    } else if reg_local.is_done(&sid, std::time::Instant::now()) {
                        Local::Done
                    } else {
                        Local::Unknown
                    }
                },
                move |sid, status| {
                    let Ok(sid) = crate::domain::CallSid::parse(sid) else {
                        return;
                    };
                    let status = crate::twilio::form::TwilioCallStatus::parse(status);
                    if let Some(final_status) = status.final_status()
                        && crate::twilio::webhook::close_ringing(
                            &reg,
                            &writer,
                            &sid,
                            &status,
                            final_status,
                        )
                    {
                        metrics.inc_fleet("status_closed");
                    }
                },
            ));
        }
        let recorder = Arc::new(crate::recording::worker::Recorder::new(
            &settings,
            db.clone(),
            metrics.clone(),
        )?);
        background.spawn(recorder.clone().redeliver(shutdown.clone()));
        background.spawn(crate::recording::worker::retention(
            recorder.clone(),
            settings.recording.retention_days,
            shutdown.clone(),
        ));
        background.spawn(crate::console::sweep_sessions(db.clone(), shutdown.clone()));
        background.close();
        let settings_limits = settings.limits.clone();
        let settings_events_queue = settings.admin.events_queue;
        let traces = Arc::new(crate::traces::Traces::new(
            &settings.telemetry.otlp_endpoint,
        )?);
        let text = Arc::new(
            crate::text::agent::TextAgent::new(
                &settings,
                db.clone(),
                writer.clone(),
                outbox_wake.clone(),
            )
            .context("preparing the text agent")?,
        );
        let messages = Arc::new(
            crate::text::messaging::Sender::new(&settings)
                .context("preparing the Twilio Messages client")?,
        );
        Ok(Self {
            settings: Arc::new(settings),
            db,
            metrics,
            shutdown,
            draining: CancellationToken::new(),
            drain_deadline: CancellationToken::new(),
            tasks: TaskTracker::new(),
            registry,
            stream_secret,
            writer,
            outbox_wake,
            recent: Arc::default(),
            fleet,
            limits: Arc::new(crate::limits::Limits::new(&settings_limits)),
            greetings: Arc::new(crate::greeting::Greetings::new()),
            recorder,
            events: Arc::new(crate::events::Events::new(settings_events_queue)),
            traces,
            logins: Arc::new(
                crate::accounts::LoginThrottle::new().context("preparing password checks")?,
            ),
            text,
            messages,
        })
    }
}

impl AppState {
    /// Starts draining (idempotent): not ready any more, live calls go on.
    pub fn begin_drain(&self) {
        if self.draining.is_cancelled() {
            return;
        }
        self.metrics.draining.set(1);
        tracing::info!(
            live_calls = self.metrics.active_calls.get(),
            ringing = self.registry.len(),
            drain_secs = self.settings.server.drain_secs,
            "draining: not ready; live calls go on"
        );
        self.draining.cancel();
    }

    /// Whether no call is live or between webhook and stream on this instance.
    fn idle(&self) -> bool {
        self.metrics.active_calls.get() == 0 && self.registry.is_empty()
    }
}

/// How long a drained instance stays up after its last call (Twilio's after-stream and status
/// callbacks for it are answered meanwhile).
pub const DRAIN_LINGER: Duration = Duration::from_secs(3);

/// Waits for the drain to start, then for the calls to end (or the drain's deadline, when
/// the calls still live are ended), then starts the shutdown.
async fn supervise_drain(state: AppState) {
    tokio::select! {
        _ = state.draining.cancelled() => {}
        _ = state.shutdown.cancelled() => return,
    }
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(state.settings.server.drain_secs);
    let grace = Duration::from_secs(state.settings.server.shutdown_grace_secs);
    let mut quiet_since: Option<tokio::time::Instant> = None;
    let mut ended_at_deadline = false;
    loop {
        let now = tokio::time::Instant::now();
        if state.idle() {
            let since = *quiet_since.get_or_insert(now);
            if now - since >= DRAIN_LINGER {
                break;
            }
        } else {
            quiet_since = None;
            if now >= deadline && !ended_at_deadline {
                ended_at_deadline = true;
                tracing::warn!(
                    live_calls = state.metrics.active_calls.get(),
                    "drain: server.drain_secs passed; putting live calls through to their fallback"
                );
                state.drain_deadline.cancel();
            }
            if ended_at_deadline && now >= deadline + grace {
                tracing::warn!("drain: calls still live after the grace period; shutting down");
                break;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = state.shutdown.cancelled() => return,
        }
    }
    tracing::info!("drain complete: shutting down");
    state.shutdown.cancel();
}

/// The full router: health, metrics, the admin API and the Twilio routes, all on one listener
/// (`server.admin_listen` empty).
pub fn router(state: AppState) -> Router {
    build(state, true, true)
}

/// The routes of `server.listen` when the admin side has its own listener: health and Twilio.
pub fn public_router(state: AppState) -> Router {
    build(state, true, false)
}

/// The routes of `server.admin_listen`: health, `/metrics` and the admin API.
pub fn admin_router(state: AppState) -> Router {
    build(state, false, true)
}

fn build(state: AppState, twilio: bool, admin: bool) -> Router {
    let max_body = state.settings.server.max_body_bytes;
    let mut r = Router::new().merge(crate::ops::health_router());
    if admin {
        r = r
            .merge(crate::ops::metrics_router())
            .merge(crate::admin::router(&state))
            .merge(crate::console::router(&state));
    }
    if twilio {
        r = r
            .merge(crate::twilio::webhook::router())
            .merge(crate::text::messaging::router())
            .merge(crate::text::kommo::router())
            .merge(crate::text::openai_webhook::router());
    }
    r = r
        .layer(DefaultBodyLimit::max(max_body))
        .layer(RequestBodyLimitLayer::new(max_body));
    if admin {
        // After the limits: the knowledge upload has its own (documents up to 1 MiB).
        r = r.merge(crate::admin::knowledge::upload_router(&state));
    }
    // Every HTTP route so far has a deadline (body read and answer); the media upgrade, merged
    // after it, has none: a call lasts as long as it lasts.
    r = r.layer(axum::middleware::from_fn_with_state(
        state.clone(),
        request_deadline,
    ));
    if twilio {
        r = r
            .merge(crate::twilio::webhook::media_router())
            // The web chat's time limit is the text agent's own (`text.timeout_secs`).
            .merge(crate::text::webchat::router());
    }
    // The span names the path only: a query may carry a secret (the Kommo webhook's).
    r.layer(
        TraceLayer::new_for_http().make_span_with(|req: &axum::extract::Request| {
            tracing::debug_span!("request", method = %req.method(), path = %req.uri().path())
        }),
    )
    .with_state(state)
}

/// `server.request_timeout_secs` on an HTTP request: past it the request is dropped, answered
/// `503` and counted in `warmline_http_request_timeouts_total`. (tower-http's `TimeoutLayer`
/// does the same, but its answer cannot be told from a handler's own, so it could not be
/// counted.)
async fn request_deadline(
    State(state): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let limit = Duration::from_secs(state.settings.server.request_timeout_secs);
    let path = req.uri().path().to_owned();
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            state.metrics.http_request_timeouts.inc();
            tracing::warn!(
                path = %path.chars().take(128).collect::<String>(),
                limit_secs = limit.as_secs(),
                "request cut at server.request_timeout_secs"
            );
            (StatusCode::SERVICE_UNAVAILABLE, "request timed out\n").into_response()
        }
    }
}

/// Serves on an already bound listener until `state.shutdown` is cancelled, then drains.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState) -> anyhow::Result<()> {
    let shutdown = state.shutdown.clone();
    let tasks = state.tasks.clone();
    let writer = state.writer.clone();
    let traces = state.traces.clone();
    let grace = Duration::from_secs(state.settings.server.shutdown_grace_secs);
    let limits = Limits::from_settings(&state.settings.server);
    let metrics = state.metrics.clone();
    let drain = tokio::spawn(supervise_drain(state.clone()));
    // `/metrics` and the admin API on their own listener, when one is set.
    let (app, admin) = match state.settings.server.admin_addr() {
        Some(addr) => {
            let admin_listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding server.admin_listen = {addr}"))?;
            tracing::info!(admin_listen = %addr, "metrics and admin API on their own listener");
            let admin = crate::listener::serve(
                admin_listener,
                admin_router(state.clone()),
                limits,
                metrics.clone(),
                shutdown.clone(),
            );
            (public_router(state), Some(tokio::spawn(admin)))
        }
        None => (router(state), None),
    };
    crate::listener::serve(listener, app, limits, metrics, shutdown).await;
    if let Some(admin) = admin
        && let Err(e) = admin.await
    {
        tracing::error!(error = %e, "admin listener task failed");
    }
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
    // The last calls' spans go out (bounded: a collector that does not answer is not waited).
    let _ = tokio::time::timeout(Duration::from_secs(5), traces.shutdown()).await;
    drain.abort();
    Ok(())
}

/// Signals: the first SIGTERM starts the drain ([`AppState::begin_drain`]); a second SIGTERM,
/// or SIGINT at any time, shuts down at once.
pub async fn handle_signals(state: AppState) {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    loop {
        #[cfg(unix)]
        let next_term = async {
            match term.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let next_term = std::future::pending::<()>();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("SIGINT received: shutting down now");
                state.shutdown.cancel();
                return;
            }
            _ = next_term => {
                if state.draining.is_cancelled() {
                    tracing::info!("second SIGTERM received: shutting down now");
                    state.shutdown.cancel();
                    return;
                }
                tracing::info!("SIGTERM received: draining (send it again to stop at once)");
                state.begin_drain();
            }
        }
    }
}
