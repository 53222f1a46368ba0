//! The Realtime socket's IO edge while a call is ringing (docs/architecture.md, "Who owns
//! each socket"): one task per warm session owns the WebSocket and drives a [`Session`]
//! machine until a media stream claims it; then the socket and the machine move, together,
//! into the call's task, and this task ends.
//!
//! - The webhook spawns the task with [`spawn`] and waits on [`SessionHandle::status`] for
//!   `Ready` (or gives up at `ring_max_ms`); the registry keeps the handle until a stream
//!   claims it, the status callback closes it, or the reaper does.
//! - The stream handler calls [`SessionHandle::claim`] and gets an [`Attached`] session: the
//!   open socket and the machine holding the greeting buffered so far. A claim made while the
//!   socket is still connecting is answered the moment it opens.
//! - The cold path ([`open`]) connects in the call's own task and ends in the same shape.
//!
//! Invariants:
//! 1. Exactly one owner closes the socket: this task (when told to close, when every handle
//!    is gone, on shutdown, or when the server closes), or, once handed over, the call.
//! 2. A hand-over the claimer no longer waits for is closed here, never leaked.
//! 3. The API key is sent in the `Authorization` header and never logged.
//! 4. A warm socket quiet for `call.realtime_ping_secs` is pinged; one silent (not even a Pong)
//!    for `call.realtime_silence_secs` is closed and counted
//!    (`warmline_realtime_ping_timeouts_total`), like a socket the server closed: its claim
//!    fails and the call goes cold ([`super::keepalive`]).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::{
    Message,
    client::IntoClientRequest,
    http::{HeaderValue, header::AUTHORIZATION},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    keepalive::{Due, Keepalive, KeepaliveSpec},
    profile::AgentProfile,
    proto::{Greeting, Session},
    registry::WarmSession,
    wire,
};
use crate::{
    config::{OpenAiSettings, Settings},
    domain::CallSid,
    engine::{Engine, EngineKind, Readiness},
    greeting::GreetingPlan,
    live::{
        proto::{Greeting as LiveGreeting, LiveSession},
        wire as live_wire,
    },
    metrics::Metrics,
};

/// The engine's item id of a greeting played from the cache (one per session).
pub const GREETING_ITEM: &str = "wl_greeting";

/// Where a session stands, as waiters see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Handshake in progress.
    Connecting,
    /// Socket open, configuration sent.
    Open,
    /// `session.updated` seen.
    Configured,
    /// Configured and greeting audio buffered: the caller can hear it at once.
    Ready,
    /// The connection failed (the reason is safe to log).
    Failed(String),
    /// Closed.
    Closed,
}

/// Why a session could not be opened or claimed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Connecting failed or timed out.
    #[error("realtime connect failed: {0}")]
    Connect(String),
    /// The session task is gone (closed or failed).
    #[error("realtime session closed: {0}")]
    Closed(String),
}

enum Control {
    /// A stream takes the session over.
    Claim(oneshot::Sender<Attached>),
    /// Close the socket (status callback, reaper, shutdown).
    Close(&'static str),
}

/// The Realtime WebSocket.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A session a call owns: the open socket and the machine, with everything it buffered
/// before the claim (the greeting first) and frames it still has to send (a claim made while
/// connecting gets the configuration and the greeting request unsent).
pub struct Attached {
    /// The open socket.
    pub ws: Ws,
    /// The machine (Realtime's or GPT-Live's).
    pub session: Box<dyn Engine>,
}

/// A session not yet claimed. Dropping it closes the socket.
pub struct SessionHandle {
    ctl: mpsc::Sender<Control>,
    /// The session generates the greeting once open.
    generates: bool,
    status: watch::Receiver<Status>,
    prewarm_observed: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    started: Instant,
}

/// Longest one write to the Realtime socket may take before the session is given up as stuck
/// (so a server that stops reading cannot hold the socket forever). The call's task applies
/// the same limit ([`crate::bridge::socket`]).
pub const SEND_LIMIT: Duration = Duration::from_secs(5);

/// What to open.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    /// The engine, its model, and what is sent first.
    pub opening: Opening,
    /// Most greeting audio buffered before a claim (base64 bytes).
    pub buffer_cap: usize,
    /// For logs.
    pub call_sid: String,
    /// Whether this is a warm session (its time to ready is the prewarm metric).
    pub prewarm: bool,
    /// Ping and silence deadlines while the session waits for its call.
    pub keepalive: KeepaliveSpec,
}

/// What a session opens with, per engine.
#[derive(Debug, Clone)]
pub enum Opening {
    /// OpenAI Realtime: `?model=` and the `session.update` frame, then the greeting.
    Realtime {
        /// The model (the URL's `?model=`).
        model: String,
        /// The `session.update` frame.
        session_update: String,
        /// Generate the greeting, learn the one heard from the cache, or nothing.
        greeting: Greeting,
    },
    /// OpenAI GPT-Live: the `session.start` frame, then the greeting.
    Live {
        /// The `session.start` frame (model, prompt, voice, μ-law 8 kHz, delegation).
        start: String,
        /// Generate the greeting (a commentary), tell the one heard from the cache, or nothing.
        greeting: LiveGreeting,
        /// The Responses model tools are delegated to (none: no tools).
        delegation_model: Option<String>,
        /// `start` carries the conversation so far (a session replacing one).
        history_at_start: bool,
    },
}

/// What a GPT-Live session replacing one mid-call is told first, before the conversation's
/// lines (its startup history).
const RESUMED_NOTE: &str = "This call is already under way: the session that carried it \
     reached its time limit or dropped, and you take over. The conversation so far follows, \
     oldest first. Carry on from where it stopped; do not greet the caller again.";

impl SessionSpec {
    /// The session a call gets on its client's engine: the agent's configuration at `now`, the
    /// greeting, and a greeting buffer of `prewarm.greeting_buffer_bytes` μ-law bytes (as
    /// base64: 4/3 of that, rounded up, plus padding).
    pub fn new(
        settings: &Settings,
        profile: &AgentProfile,
        call_sid: &CallSid,
        prewarm: bool,
        now: DateTime<Utc>,
    ) -> Self {
        let opening = match profile.engine {
            EngineKind::Realtime => Opening::Realtime {
                model: profile
                    .model
                    .clone()
                    .unwrap_or_else(|| settings.openai.model.clone()),
                session_update: profile.session_update(&settings.openai.transcription_model, now),
                greeting: Greeting::Generate(profile.greeting_request()),
            },
            EngineKind::Live => {
                let config = profile.live_config(&settings.openai, now);
                Opening::Live {
                    delegation_model: config.delegation.as_ref().map(|d| d.model.clone()),
                    start: live_wire::session_start(&config),
                    greeting: LiveGreeting::Generate(profile.live_greeting()),
                    history_at_start: false,
                }
            }
        };
        Self {
            opening,
            buffer_cap: settings.prewarm.greeting_buffer_bytes * 4 / 3 + 4,
            call_sid: call_sid.to_string(),
            prewarm,
            keepalive: KeepaliveSpec::from_settings(&settings.call),
        }
    }

    /// The session that replaces a lost one mid-call: the same configuration, no greeting (the
    /// call goes on; the conversation so far is seeded by the call).
    ///
    /// On GPT-Live `history` (the conversation, `(role, text)`, oldest first) is the session's
    /// startup history, after a note that the call is under way; on Realtime the call seeds
    /// the conversation once attached ([`crate::engine::Command::Seed`]).
    pub fn resumed(
        settings: &Settings,
        profile: &AgentProfile,
        call_sid: &CallSid,
        now: DateTime<Utc>,
        history: &[(&'static str, String)],
    ) -> Self {
        let mut spec = Self::new(settings, profile, call_sid, false, now);
        match &mut spec.opening {
            Opening::Realtime { greeting, .. } => *greeting = Greeting::None,
            Opening::Live {
                greeting,
                start,
                history_at_start,
                ..
            } => {
                *greeting = LiveGreeting::None;
                let mut config = profile.live_config(&settings.openai, now);
                config
                    .history
                    .push(("developer".into(), RESUMED_NOTE.into()));
                config
                    .history
                    .extend(history.iter().map(|(r, t)| (r.to_string(), t.clone())));
                *start = live_wire::session_start(&config);
                *history_at_start = true;
            }
        }
        spec
    }

    /// The session of a call whose greeting follows `plan`: generated (as [`SessionSpec::new`]),
    /// or played from the cache, which the session is told: on Realtime an assistant message
    /// with the id the call knows it by ([`GREETING_ITEM`]), on GPT-Live instructions.
    pub fn greeting_from(mut self, plan: &GreetingPlan) -> Self {
        if let Some(cached) = plan.cached() {
            match &mut self.opening {
                Opening::Realtime { greeting, .. } => {
                    *greeting = Greeting::Said(wire::assistant_text(
                        Some(GREETING_ITEM),
                        None,
                        &cached.transcript,
                    ))
                }
                Opening::Live { greeting, .. } => {
                    *greeting = LiveGreeting::Said(format!(
                        "The caller has already been greeted, from a recording in your voice, \
                         with these words: {}. Do not greet them again: listen, then answer.",
                        serde_json::to_string(&cached.transcript).unwrap_or_default()
                    ))
                }
            }
        }
        self
    }

    /// Whether the session generates the greeting once open (billed whether heard or not).
    pub fn generates(&self) -> bool {
        matches!(
            self.opening,
            Opening::Realtime {
                greeting: Greeting::Generate(_),
                ..
            } | Opening::Live {
                greeting: LiveGreeting::Generate(_),
                ..
            }
        )
    }

    fn machine(self) -> Box<dyn Engine> {
        match self.opening {
            Opening::Realtime {
                session_update,
                greeting,
                ..
            } => Box::new(Session::new(session_update, greeting, self.buffer_cap)),
            Opening::Live {
                start,
                greeting,
                delegation_model,
                history_at_start,
            } => Box::new(
                LiveSession::new(start, greeting, self.buffer_cap)
                    .with_delegation_model(delegation_model)
                    .with_history_at_start(history_at_start),
            ),
        }
    }

    /// Where to connect: the engine and, on Realtime, the model.
    fn endpoint(&self) -> Endpoint {
        match &self.opening {
            Opening::Realtime { model, .. } => Endpoint::Realtime(model.clone()),
            Opening::Live { .. } => Endpoint::Live,
        }
    }
}

/// The socket a session connects to.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// `openai.realtime_url?model=…`.
    Realtime(String),
    /// `openai.live_url` (the model is in `session.start`).
    Live,
}

/// Opens a session in the background: connect, then the configuration and the greeting.
pub fn spawn(
    settings: &OpenAiSettings,
    spec: SessionSpec,
    metrics: Arc<Metrics>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> SessionHandle {
    let (ctl_tx, ctl_rx) = mpsc::channel(8);
    let (status_tx, status_rx) = watch::channel(Status::Connecting);
    // A cold session's time to ready is not a prewarm figure: mark it observed from the start.
    let observed = Arc::new(AtomicBool::new(!spec.prewarm));
    let started = Instant::now();
    let generates = spec.generates();
    let task = Task {
        endpoint: spec.endpoint(),
        settings: settings.clone(),
        keepalive: spec.keepalive,
        call_sid: spec.call_sid.clone(),
        session: spec.machine(),
        status: status_tx,
        observed: observed.clone(),
        metrics: metrics.clone(),
        started,
    };
    tracker.spawn(task.run(ctl_rx, shutdown));
    SessionHandle {
        ctl: ctl_tx,
        generates,
        status: status_rx,
        prewarm_observed: observed,
        metrics,
        started,
    }
}

/// Opens a session in the caller's task (the cold path): connect, and the machine with the
/// configuration and the greeting queued for the socket.
pub async fn open(
    settings: &OpenAiSettings,
    spec: SessionSpec,
    metrics: &Metrics,
) -> Result<Attached, SessionError> {
    let ws = connect(settings, &spec.endpoint()).await?;
    let mut session = spec.machine();
    session.handle_open(Instant::now());
    if session.take_greeted() {
        metrics.inc_greeting("generated");
    }
    Ok(Attached { ws, session })
}

impl SessionHandle {
    /// A watch on the session's status.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Records `warmline_prewarm_duration_seconds{outcome="timeout"}` if the session had not
    /// reported ready or error yet (the webhook answered without it).
    pub fn note_timeout(&self) {
        if !self.prewarm_observed.swap(true, Ordering::AcqRel) {
            self.metrics
                .observe_prewarm("timeout", self.started.elapsed().as_secs_f64());
        }
    }

    /// Takes the session over: its socket and machine move to the caller. Waits while the
    /// socket is still connecting (bounded by `openai.connect_timeout_ms`).
    pub async fn claim(self) -> Result<Attached, SessionError> {
        if let Status::Failed(reason) = &*self.status.borrow() {
            // `reason` already says what failed ("realtime connect failed: …").
            return Err(SessionError::Closed(reason.clone()));
        }
        let (tx, rx) = oneshot::channel();
        self.ctl
            .send(Control::Claim(tx))
            .await
            .map_err(|_| SessionError::Closed(self.closed_reason()))?;
        rx.await
            .map_err(|_| SessionError::Closed(self.closed_reason()))
    }

    fn closed_reason(&self) -> String {
        match &*self.status.borrow() {
            Status::Failed(r) => r.clone(),
            _ => "session task ended".into(),
        }
    }

    /// Closes the socket (the caller hung up while it rang, or the session expired).
    pub fn close_now(&self, reason: &'static str) {
        // If the queue is full the handle's drop closes the socket anyway.
        let _ = self.ctl.try_send(Control::Close(reason));
    }
}

impl WarmSession for SessionHandle {
    type Ready = watch::Receiver<Status>;

    fn ready(&self) -> Self::Ready {
        self.status()
    }

    fn close(self, reason: &'static str) {
        self.close_now(reason);
    }

    fn greeted(&self) -> bool {
        // The socket opened, so the greeting was asked for (`Task::run`, after `handle_open`).
        self.generates
            && matches!(
                *self.status.borrow(),
                Status::Open | Status::Configured | Status::Ready
            )
    }
}

struct Task {
    endpoint: Endpoint,
    settings: OpenAiSettings,
    keepalive: KeepaliveSpec,
    call_sid: String,
    session: Box<dyn Engine>,
    status: watch::Sender<Status>,
    observed: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    started: Instant,
}

impl Task {
    fn observe(&self, outcome: &'static str) {
        if !self.observed.swap(true, Ordering::AcqRel) {
            self.metrics
                .observe_prewarm(outcome, self.started.elapsed().as_secs_f64());
        }
    }

    async fn run(mut self, mut ctl: mpsc::Receiver<Control>, shutdown: CancellationToken) {
        // While connecting, only a close (or every handle dropping) matters; a claim that
        // arrives early (the stream started before the handshake) is answered once open.
        let mut early_claim = None;
        let settings = self.settings.clone();
        let endpoint = self.endpoint.clone();
        let connecting = connect(&settings, &endpoint);
        tokio::pin!(connecting);
        let ws = loop {
            tokio::select! {
                r = &mut connecting => break r,
                _ = shutdown.cancelled() => break Err(SessionError::Closed("shutdown".into())),
                cmd = ctl.recv() => match cmd {
                    None | Some(Control::Close(_)) => {
                        break Err(SessionError::Closed("closed before connecting".into()))
                    }
                    Some(Control::Claim(reply)) => early_claim = Some(reply),
                },
            }
        };
        let mut ws = match ws {
            Ok(ws) => ws,
            Err(e) => {
                tracing::warn!(call_sid = %self.call_sid, error = %e, "realtime session failed to open");
                self.observe("error");
                let _ = self.status.send(Status::Failed(e.to_string()));
                return;
            }
        };
        self.session.handle_open(Instant::now());
        if self.session.take_greeted() {
            self.metrics.inc_greeting("generated");
        }
        let _ = self.status.send(Status::Open);
        if let Some(reply) = early_claim {
            return self.hand_over(ws, reply).await;
        }
        // False once the socket is known to be closed or stuck: nothing more is sent on it.
        let mut sink_usable = true;
        // A half-open socket is found by its silence (src/realtime/keepalive.rs).
        let mut keepalive = Keepalive::new(self.keepalive, Instant::now());
        let timer = tokio::time::sleep_until(keepalive.poll_timeout().into());
        tokio::pin!(timer);
        let close_reason: String = loop {
            if let Err(reason) = send_queued(self.session.as_mut(), &mut ws).await {
                sink_usable = false;
                break reason.into();
            }
            // The keepalive's deadline, or the engine's own (GPT-Live's silence feed) if sooner.
            let due = match self.session.poll_timeout() {
                Some(e) => e.min(keepalive.poll_timeout()),
                None => keepalive.poll_timeout(),
            };
            let wake = tokio::time::Instant::from_std(due);
            if timer.deadline() != wake {
                timer.as_mut().reset(wake);
            }
            tokio::select! {
                _ = &mut timer => match self.tick(&mut keepalive, Instant::now()) {
                    Some(Due::Ping) => {
                        let ping = ws.send(Message::Ping(Default::default()));
                        if !matches!(tokio::time::timeout(SEND_LIMIT, ping).await, Ok(Ok(()))) {
                            sink_usable = false;
                            break "realtime stopped reading".into();
                        }
                    }
                    Some(Due::Silent) => {
                        self.metrics.realtime_ping_timeouts.inc();
                        tracing::warn!(call_sid = %self.call_sid, silence_secs = keepalive.silence().as_secs(), "warm realtime session sent nothing, not even a Pong; closing it");
                        sink_usable = false;
                        break "no answer from realtime".into();
                    }
                    None => {}
                },
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(text))) => {
                        keepalive.handle_heard(Instant::now());
                        if let Err(e) = self.session.handle_text(text.as_str()) {
                            tracing::debug!(call_sid = %self.call_sid, error = %e, "ignoring unparsable realtime frame");
                        }
                        // GPT-Live asks for the greeting once the session started.
                        if self.session.take_greeted() {
                            self.metrics.inc_greeting("generated");
                        }
                        if let Some(why) = self.session.poll_setup_error() {
                            tracing::warn!(call_sid = %self.call_sid, error = %why, "realtime session refused its configuration");
                            self.observe("error");
                            let _ = self.status.send(Status::Failed(why));
                            break "configuration refused".into();
                        }
                        self.update_status();
                    }
                    Some(Ok(Message::Close(frame))) => {
                        sink_usable = false;
                        break frame.map_or_else(|| "closed by server".into(), |f| format!("closed by server: {} {}", f.code, f.reason));
                    }
                    // A Pong (or a Ping, answered by tungstenite): the socket is alive.
                    Some(Ok(_)) => keepalive.handle_heard(Instant::now()),
                    Some(Err(e)) => {
                        sink_usable = false;
                        break format!("socket error: {e}");
                    }
                    None => {
                        sink_usable = false;
                        break "socket ended".into();
                    }
                },
                cmd = ctl.recv() => match cmd {
                    Some(Control::Claim(reply)) => return self.hand_over(ws, reply).await,
                    Some(Control::Close(reason)) => break reason.to_string(),
                    None => break "released".into(),
                },
                _ = shutdown.cancelled() => break "shutdown".into(),
            }
        };
        if sink_usable {
            close(&mut ws).await;
        }
        self.session.handle_closed();
        // Never claimed: all of its timeline was spent while the phone rang.
        let ms = self.session.input_ms();
        self.metrics
            .add_engine_time(self.session.kind().as_str(), ms, ms);
        if !matches!(*self.status.borrow(), Status::Failed(_)) {
            let _ = self.status.send(Status::Closed);
        }
        tracing::debug!(call_sid = %self.call_sid, reason = %close_reason, "realtime session closed");
    }

    /// The timer fired at `now`: the engine's own deadline (GPT-Live's silence feed), and the
    /// keepalive's if it is due.
    fn tick(&mut self, keepalive: &mut Keepalive, now: Instant) -> Option<Due> {
        self.session.handle_timeout(now);
        if now >= keepalive.poll_timeout() {
            keepalive.handle_timeout(now)
        } else {
            None
        }
    }

    /// Moves the socket and the machine to the claimer. If the claimer stopped waiting (its
    /// call ended during the hand-over), the session comes back and is closed here.
    async fn hand_over(self, ws: Ws, reply: oneshot::Sender<Attached>) {
        let call_sid = self.call_sid;
        // The timeline so far was spent ringing; the call counts the whole when it ends.
        let (kind, rung) = (self.session.kind().as_str(), self.session.input_ms());
        self.metrics.add_engine_time(kind, 0, rung);
        match reply.send(Attached {
            ws,
            session: self.session,
        }) {
            Ok(()) => {
                tracing::debug!(call_sid = %call_sid, "realtime session handed to its call");
            }
            Err(mut back) => {
                tracing::debug!(call_sid = %call_sid, "claimer gone during the hand-over; closing the session");
                self.metrics
                    .add_engine_time(kind, back.session.input_ms(), 0);
                close(&mut back.ws).await;
                let _ = self.status.send(Status::Closed);
            }
        }
    }

    fn update_status(&mut self) {
        let next = match self.session.readiness() {
            Readiness::Opening => return,
            Readiness::Configured => Status::Configured,
            Readiness::Ready => {
                self.observe("ready");
                Status::Ready
            }
        };
        self.status.send_if_modified(|s| {
            if *s != next {
                *s = next;
                true
            } else {
                false
            }
        });
    }
}

/// Closes a socket we own: a close frame and the close handshake, each within [`SEND_LIMIT`].
pub async fn close(ws: &mut Ws) {
    let _ = tokio::time::timeout(SEND_LIMIT, ws.close(None)).await;
}

/// Sends everything the machine has queued with one flush (under load, several caller frames
/// per write), within [`SEND_LIMIT`]; the error says why the socket is unusable.
async fn send_queued(session: &mut dyn Engine, sink: &mut Ws) -> Result<(), &'static str> {
    let Some(first) = session.poll_transmit() else {
        return Ok(());
    };
    let batch = async {
        sink.feed(Message::text(first)).await?;
        while let Some(text) = session.poll_transmit() {
            sink.feed(Message::text(text)).await?;
        }
        sink.flush().await
    };
    match tokio::time::timeout(SEND_LIMIT, batch).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err("send to realtime failed"),
        Err(_) => Err("realtime stopped reading"),
    }
}

/// Opens the WebSocket: `realtime_url?model=…` (Realtime) or `live_url` (GPT-Live, no query),
/// with `Authorization: Bearer …` and no `OpenAI-Beta` header (GA), bounded by
/// `connect_timeout_ms`.
pub async fn connect(settings: &OpenAiSettings, endpoint: &Endpoint) -> Result<Ws, SessionError> {
    let url = match endpoint {
        Endpoint::Realtime(model) => {
            let mut url = settings.realtime_url.clone();
            url.query_pairs_mut().append_pair("model", model);
            url
        }
        Endpoint::Live => settings.live_url.clone(),
    };
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| SessionError::Connect(e.to_string()))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {}", settings.api_key.expose()))
        .map_err(|_| SessionError::Connect("openai.api_key is not a valid header value".into()))?;
    req.headers_mut().insert(AUTHORIZATION, bearer);
    let timeout = Duration::from_millis(settings.connect_timeout_ms);
    match tokio::time::timeout(
        timeout,
        tokio_tungstenite::connect_async_with_config(req, Some(crate::ws::realtime_client()), true),
    )
    .await
    {
        Ok(Ok((ws, _resp))) => Ok(ws),
        Ok(Err(e)) => Err(SessionError::Connect(describe(&e))),
        Err(_) => Err(SessionError::Connect(format!(
            "no handshake within {} ms",
            settings.connect_timeout_ms
        ))),
    }
}

/// A connection error without anything secret (tungstenite errors carry no headers).
fn describe(e: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Http(resp) => format!("HTTP {}", resp.status()),
        other => other.to_string(),
    }
}
