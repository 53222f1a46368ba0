//! The Realtime socket's IO edge: one task per session owns the WebSocket and drives a
//! [`Session`] machine; everyone else talks to it through channels (style.md §3).
//!
//! - The webhook spawns the task with [`spawn`] and waits on [`SessionHandle::status`] for
//!   `Ready` (or gives up at `ring_max_ms`); the registry keeps the handle until a stream
//!   claims it, the status callback closes it, or the reaper does.
//! - The stream handler calls [`SessionHandle::claim`] and gets the buffered greeting plus a
//!   bounded event receiver; caller audio goes in through [`ClaimedSession::append`].
//!
//! Invariants:
//! 1. Exactly one owner closes the socket: the task, when told (`close`), when every handle is
//!    gone (drop backstop), on shutdown, or when the server closes.
//! 2. Caller audio is dropped (and counted) if the socket cannot keep up; control messages
//!    (cancel, truncate, text, close) are never dropped.
//! 3. The API key is sent in the `Authorization` header and never logged.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::{
    Message,
    client::IntoClientRequest,
    http::{HeaderValue, header::AUTHORIZATION},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    proto::{Phase, Session, SessionEvent},
    registry::WarmSession,
};
use crate::{config::OpenAiSettings, metrics::Metrics};

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
    Claim(
        oneshot::Sender<Vec<SessionEvent>>,
        mpsc::Sender<SessionEvent>,
    ),
    Cancel,
    Truncate {
        item_id: String,
        audio_end_ms: u64,
    },
    UserText(String),
    Close(&'static str),
}

/// A session not yet claimed. Dropping it closes the socket.
pub struct SessionHandle {
    ctl: mpsc::Sender<Control>,
    audio: mpsc::Sender<String>,
    status: watch::Receiver<Status>,
    prewarm_observed: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    started: Instant,
}

/// A session a media stream owns.
pub struct ClaimedSession {
    /// Events buffered before the claim (the greeting), in order.
    pub buffered: Vec<SessionEvent>,
    /// Later events.
    pub events: mpsc::Receiver<SessionEvent>,
    ctl: mpsc::Sender<Control>,
    audio: mpsc::Sender<String>,
    dropped: prometheus_client::metrics::counter::Counter,
}

/// Capacity of the caller-audio queue (frames); beyond it, audio is dropped.
const AUDIO_QUEUE: usize = 64;
/// Longest one write to the Realtime socket may take before the session is given up as stuck
/// (so a server that stops reading cannot hold the session task, or the socket, forever).
const SEND_LIMIT: Duration = Duration::from_secs(5);
/// Capacity of the event queue to the call.
const EVENT_QUEUE: usize = 256;

/// What to open.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    /// The `session.update` frame.
    pub session_update: String,
    /// The greeting's `response.create`, if the agent speaks first.
    pub greeting: Option<String>,
    /// Most greeting audio buffered before a claim (base64 bytes).
    pub buffer_cap: usize,
    /// For logs.
    pub call_sid: String,
    /// Whether this is a warm session (its time to ready is the prewarm metric).
    pub prewarm: bool,
}

/// Opens a session in the background: connect, then the configuration and the greeting.
pub fn spawn(
    settings: &OpenAiSettings,
    spec: SessionSpec,
    metrics: Arc<Metrics>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> SessionHandle {
    let (ctl_tx, ctl_rx) = mpsc::channel(32);
    let (audio_tx, audio_rx) = mpsc::channel(AUDIO_QUEUE);
    let (status_tx, status_rx) = watch::channel(Status::Connecting);
    // A cold session's time to ready is not a prewarm figure: mark it observed from the start.
    let observed = Arc::new(AtomicBool::new(!spec.prewarm));
    let started = Instant::now();
    let task = Task {
        settings: settings.clone(),
        session: Session::new(spec.session_update, spec.greeting, spec.buffer_cap),
        status: status_tx,
        observed: observed.clone(),
        metrics: metrics.clone(),
        started,
        call_sid: spec.call_sid,
    };
    tracker.spawn(task.run(ctl_rx, audio_rx, shutdown));
    SessionHandle {
        ctl: ctl_tx,
        audio: audio_tx,
        status: status_rx,
        prewarm_observed: observed,
        metrics,
        started,
    }
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

    /// Takes the session over: the buffered events and a receiver for the rest.
    pub async fn claim(self) -> Result<ClaimedSession, SessionError> {
        if let Status::Failed(reason) = &*self.status.borrow() {
            return Err(SessionError::Connect(reason.clone()));
        }
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        let (tx, rx) = oneshot::channel();
        self.ctl
            .send(Control::Claim(tx, events_tx))
            .await
            .map_err(|_| SessionError::Closed(self.closed_reason()))?;
        let buffered = rx
            .await
            .map_err(|_| SessionError::Closed(self.closed_reason()))?;
        Ok(ClaimedSession {
            buffered,
            events: events_rx,
            ctl: self.ctl.clone(),
            audio: self.audio.clone(),
            dropped: self.metrics.frames_dropped("inbound"),
        })
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
}

impl ClaimedSession {
    /// Queues caller audio; returns false (and counts it) if the queue is full.
    pub fn append(&self, b64: String) -> bool {
        match self.audio.try_send(b64) {
            Ok(()) => true,
            Err(_) => {
                self.dropped.inc();
                false
            }
        }
    }

    /// `response.cancel`.
    pub async fn cancel(&self) {
        let _ = self.ctl.send(Control::Cancel).await;
    }

    /// `conversation.item.truncate`.
    pub async fn truncate(&self, item_id: String, audio_end_ms: u64) {
        let _ = self
            .ctl
            .send(Control::Truncate {
                item_id,
                audio_end_ms,
            })
            .await;
    }

    /// A user text item plus `response.create`.
    pub async fn user_text(&self, text: String) {
        let _ = self.ctl.send(Control::UserText(text)).await;
    }

    /// Closes the socket.
    pub async fn close(&self, reason: &'static str) {
        let _ = self.ctl.send(Control::Close(reason)).await;
    }
}

struct Task {
    settings: OpenAiSettings,
    session: Session,
    status: watch::Sender<Status>,
    observed: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    started: Instant,
    call_sid: String,
}

impl Task {
    fn observe(&self, outcome: &'static str) {
        if !self.observed.swap(true, Ordering::AcqRel) {
            self.metrics
                .observe_prewarm(outcome, self.started.elapsed().as_secs_f64());
        }
    }

    async fn run(
        mut self,
        mut ctl: mpsc::Receiver<Control>,
        mut audio: mpsc::Receiver<String>,
        shutdown: CancellationToken,
    ) {
        // While connecting, only a close (or every handle dropping) matters; a claim that
        // arrives early (the stream started before the handshake) is answered once open.
        let mut early_claim = None;
        let settings = self.settings.clone();
        let connecting = connect(&settings);
        tokio::pin!(connecting);
        let ws = loop {
            tokio::select! {
                r = &mut connecting => break r,
                _ = shutdown.cancelled() => break Err(SessionError::Closed("shutdown".into())),
                cmd = ctl.recv() => match cmd {
                    None | Some(Control::Close(_)) => {
                        break Err(SessionError::Closed("closed before connecting".into()))
                    }
                    Some(Control::Claim(reply, tx)) => early_claim = Some((reply, tx)),
                    Some(_) => {}
                },
            }
        };
        let ws = match ws {
            Ok(ws) => ws,
            Err(e) => {
                tracing::warn!(call_sid = %self.call_sid, error = %e, "realtime session failed to open");
                self.observe("error");
                let _ = self.status.send(Status::Failed(e.to_string()));
                return;
            }
        };
        let (mut sink, mut stream) = ws.split();
        self.session.handle_open();
        let _ = self.status.send(Status::Open);
        let mut events: Option<mpsc::Sender<SessionEvent>> = None;
        if let Some((reply, tx)) = early_claim {
            let _ = reply.send(self.session.claim());
            events = Some(tx);
        }
        // False once the socket is known to be closed or stuck: nothing more is sent on it.
        let mut sink_usable = true;
        let close_reason: String = loop {
            // Drain the machine.
            if let Err(reason) = send_queued(&mut self.session, &mut sink).await {
                sink_usable = false;
                break reason.into();
            }
            if let Some(tx) = &events {
                let mut gone = false;
                while let Some(e) = self.session.poll_event() {
                    if tx.send(e).await.is_err() {
                        gone = true;
                        break;
                    }
                }
                if gone {
                    break "call ended".into();
                }
            }
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(Ok(Message::Text(text))) => {
                        if let Err(e) = self.session.handle_text(text.as_str()) {
                            tracing::debug!(call_sid = %self.call_sid, error = %e, "ignoring unparsable realtime frame");
                        }
                        if let Some(why) = self.session.poll_setup_error() {
                            tracing::warn!(call_sid = %self.call_sid, error = %why, "realtime session refused its configuration");
                            self.observe("error");
                            // A call already on this session ends saying why.
                            if let Some(tx) = &events {
                                let _ = tx.try_send(SessionEvent::Error {
                                    code: "session_update_refused".into(),
                                    message: why.clone(),
                                    fatal: true,
                                });
                            }
                            let _ = self.status.send(Status::Failed(why));
                            break "configuration refused".into();
                        }
                        self.update_status();
                    }
                    Some(Ok(Message::Close(frame))) => {
                        sink_usable = false;
                        break frame.map_or_else(|| "closed by server".into(), |f| format!("closed by server: {} {}", f.code, f.reason));
                    }
                    Some(Ok(_)) => {}
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
                    Some(Control::Claim(reply, tx)) => {
                        let buffered = self.session.claim();
                        let _ = reply.send(buffered);
                        events = Some(tx);
                    }
                    Some(Control::Cancel) => self.session.cancel_response(),
                    Some(Control::Truncate { item_id, audio_end_ms }) => self.session.truncate(&item_id, audio_end_ms),
                    Some(Control::UserText(t)) => self.session.send_user_text(&t),
                    Some(Control::Close(reason)) => break reason.to_string(),
                    None => break "released".into(),
                },
                Some(b64) = audio.recv() => {
                    self.session.append_audio(&b64);
                    // Frames that queued up meanwhile are taken in the same turn.
                    while let Ok(b64) = audio.try_recv() {
                        self.session.append_audio(&b64);
                    }
                }
                _ = shutdown.cancelled() => break "shutdown".into(),
            }
        };
        // Caller audio queued before the end still goes out, whatever ended the session (the
        // audio and control queues are separate, so a close can overtake audio sent before it).
        if sink_usable {
            while let Ok(b64) = audio.try_recv() {
                self.session.append_audio(&b64);
            }
            let _ = send_queued(&mut self.session, &mut sink).await;
            let _ = tokio::time::timeout(SEND_LIMIT, sink.send(Message::Close(None))).await;
            let _ = tokio::time::timeout(SEND_LIMIT, sink.close()).await;
        }
        self.session.handle_closed();
        if !matches!(*self.status.borrow(), Status::Failed(_)) {
            let _ = self.status.send(Status::Closed);
        }
        tracing::debug!(call_sid = %self.call_sid, reason = %close_reason, "realtime session closed");
    }

    fn update_status(&mut self) {
        let ready = self.session.poll_ready();
        let next = match self.session.phase() {
            Phase::Configured => Status::Configured,
            Phase::Ready => Status::Ready,
            _ => return,
        };
        if ready {
            self.observe("ready");
        }
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

/// Sends everything the machine has queued with one flush (under load, several caller frames
/// per write), within [`SEND_LIMIT`]; the error says why the socket is unusable.
async fn send_queued(
    session: &mut Session,
    sink: &mut futures_util::stream::SplitSink<Ws, Message>,
) -> Result<(), &'static str> {
    if !session.has_transmit() {
        return Ok(());
    }
    let batch = async {
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

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the WebSocket: `realtime_url?model=…` with `Authorization: Bearer …` and no
/// `OpenAI-Beta` header (GA), bounded by `connect_timeout_ms`.
pub async fn connect(settings: &OpenAiSettings) -> Result<Ws, SessionError> {
    let mut url = settings.realtime_url.clone();
    url.query_pairs_mut().append_pair("model", &settings.model);
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
        tokio_tungstenite::connect_async_with_config(req, Some(ws_config()), true),
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

/// Small buffers: a call's messages are a few KiB, and a thousand calls must fit in memory;
/// tungstenite also zero-fills up to `read_buffer_size` before every read, a cost paid per
/// frame (4 KiB: a 100 ms audio delta, ~1.3 KiB, fits in one read). Writes are buffered only
/// until the flush that ends every turn of the session loop.
fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(8 * 1024)
        .max_message_size(Some(16 * 1024 * 1024))
}

/// A connection error without anything secret (tungstenite errors carry no headers).
fn describe(e: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Http(resp) => format!("HTTP {}", resp.status()),
        other => other.to_string(),
    }
}
