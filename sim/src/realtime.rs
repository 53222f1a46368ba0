//! A fake OpenAI Realtime (GA) server on loopback, faithful to docs/twilio-openai-reference.md §7: bearer auth,
//! `session.created` first, `session.update` answered by `session.updated` (GA shape checked),
//! `response.create` answered by real μ-law speech as `response.output_audio.delta` chunks with
//! transcripts and `response.done`, a server VAD on the caller's audio (speech_started/stopped,
//! a transcription, an automatic answer, barge-in cancellation), `response.cancel`,
//! `conversation.item.truncate`, and `error` events for what the real API refuses.
//!
//! It records what it saw (every client event per connection, connections opened and open) so
//! tests can assert on it, and it can be slow (delays), down (connections dropped) or hanging
//! (TCP accepted, handshake never answered). With [`Faults`] (the load generator's chaos mode)
//! each new connection draws its own fate: refused, hanging, dropped mid-call or expired.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use futures_util::{SinkExt, StreamExt};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Notify, mpsc, watch},
};
use tokio_tungstenite::tungstenite::{
    Message,
    handshake::server::{ErrorResponse, Request, Response},
    http::StatusCode,
};

pub use crate::common::{Received, Scripted, ScriptedCall};
use crate::{
    audio::{self, Clip, clips},
    common::{Turn, Vad},
};

/// How the server behaves toward new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Serve normally.
    Normal,
    /// Drop every connection at once (like a refused or reset connection).
    Down,
    /// Accept TCP but never answer the handshake.
    Hang,
}

/// Settings (changeable at runtime through [`FakeRealtime::set_config`]).
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// Normal, down or hanging.
    pub mode: Mode,
    /// Delay before the WebSocket handshake completes.
    pub connect_delay: Duration,
    /// Delay before `session.updated`.
    pub session_ready_delay: Duration,
    /// Delay from `response.create` to the first audio delta.
    pub first_audio_delay: Duration,
    /// Audio per delta.
    pub chunk_ms: usize,
    /// Delay between deltas (the real API sends faster than real time).
    pub chunk_interval: Duration,
    /// Record `input_audio_buffer.append` events (off for load tests: 50 a second per call).
    pub record_audio: bool,
    /// Relay-delay stamps (load generator): appends are timed, agent audio is tagged and timed.
    pub stamps: Option<Arc<crate::stamp::Stamps>>,
    /// Refuse every `session.update` with an `invalid_request_error` (a model or setting the
    /// account may not use).
    pub reject_session_update: bool,
    /// Per-connection faults drawn at random (chaos runs); `None` serves every connection.
    pub faults: Option<Faults>,
}

/// What can go wrong with one connection, each a probability drawn once per connection (their
/// sum at most 1; the rest are served normally). Drawn from a seeded generator, so a run can be
/// repeated.
#[derive(Debug, Clone)]
pub struct Faults {
    /// Seed of the draws.
    pub seed: u64,
    /// The handshake is answered `503 Service Unavailable` (an overloaded or failing API).
    pub refuse: f64,
    /// TCP is accepted and the handshake never answered; held until the client gives up.
    pub hang: f64,
    /// Served, then dropped without a close frame at a random moment within `window` of the
    /// handshake (a network blip).
    pub drop: f64,
    /// Served, then answered with the `session_expired` error and closed at a random moment
    /// within `window` (the API's session-length limit, brought forward).
    pub expire: f64,
    /// When a drop or expiry happens, counted from the handshake.
    pub window: (Duration, Duration),
}

/// How many connections met each fault so far (a drop or expiry counts when it happened, not
/// when it was drawn: the client may have closed first).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct FaultCounts {
    /// Handshakes answered 503.
    pub refused: usize,
    /// Handshakes never answered.
    pub hung: usize,
    /// Connections dropped mid-call.
    pub dropped: usize,
    /// Connections ended with `session_expired`.
    pub expired: usize,
}

/// One connection's fate.
#[derive(Debug, Clone, Copy)]
enum Fate {
    Serve,
    Refuse,
    Hang,
    /// Dropped (no close frame) this long after the handshake.
    Drop(Duration),
    /// `session_expired`, then closed, this long after the handshake.
    Expire(Duration),
}

impl Faults {
    fn draw(&self, rng: &mut StdRng) -> Fate {
        let x: f64 = rng.random();
        let (lo, hi) = self.window;
        let mut at = || {
            if hi > lo {
                rng.random_range(lo..hi)
            } else {
                lo
            }
        };
        let mut edge = self.refuse;
        if x < edge {
            return Fate::Refuse;
        }
        edge += self.hang;
        if x < edge {
            return Fate::Hang;
        }
        edge += self.drop;
        if x < edge {
            return Fate::Drop(at());
        }
        edge += self.expire;
        if x < edge {
            return Fate::Expire(at());
        }
        Fate::Serve
    }
}

impl Default for FakeConfig {
    /// Latencies resembling the real API: 300 ms connect, 100 ms to session.updated, 500 ms to
    /// first audio.
    fn default() -> Self {
        Self {
            mode: Mode::Normal,
            connect_delay: Duration::from_millis(300),
            session_ready_delay: Duration::from_millis(100),
            first_audio_delay: Duration::from_millis(500),
            chunk_ms: 100,
            chunk_interval: Duration::from_millis(25),
            record_audio: true,
            stamps: None,
            reject_session_update: false,
            faults: None,
        }
    }
}

impl FakeConfig {
    /// No delays at all (unit and integration tests).
    pub fn instant() -> Self {
        Self {
            connect_delay: Duration::ZERO,
            session_ready_delay: Duration::ZERO,
            first_audio_delay: Duration::ZERO,
            chunk_interval: Duration::from_millis(5),
            ..Self::default()
        }
    }
}

/// What one connection saw.
#[derive(Debug, Clone, Default)]
pub struct ConnectionLog {
    /// `?model=`.
    pub model: Option<String>,
    /// Whether an `Authorization: Bearer` header was present.
    pub authorized: bool,
    /// Whether an `OpenAI-Beta` header was sent (a GA client must not).
    pub beta_header: bool,
    /// Client events in order.
    pub events: Vec<Received>,
    /// `error.code` of every error event the fake sent, in order.
    pub errors_sent: Vec<String>,
    /// Whether the socket is still open.
    pub open: bool,
    /// The conversation's items in order (ids): messages and function outputs created by the
    /// client, the caller's turns as committed, the responses' items.
    pub conversation: Vec<String>,
}

impl ConnectionLog {
    /// Events of one type.
    pub fn of_type(&self, kind: &str) -> Vec<&Received> {
        self.events.iter().filter(|e| e.kind == kind).collect()
    }
}

struct Shared {
    connections: Mutex<Vec<ConnectionLog>>,
    opened: AtomicUsize,
    open: AtomicUsize,
    attempts: AtomicUsize,
    changed: Notify,
    ids: AtomicU64,
    /// Bumped to drop every open connection (a Realtime outage mid-call).
    kill: watch::Sender<u64>,
    /// While true, open connections stop reading their sockets (a server that is stuck; the
    /// client's writes back up in the kernel's buffers). They still send.
    stalled: watch::Sender<bool>,
    /// Bumped to make every open connection go silent for good without closing (a half-open
    /// peer): it reads nothing (so answers no Ping) and sends nothing.
    silent: watch::Sender<u64>,
    /// Server events sent as they are to every open connection (tests of what the gateway does
    /// with an event at a chosen moment).
    inject: tokio::sync::broadcast::Sender<String>,
    /// Scripted responses, taken in order by the next responses after the greeting.
    script: Mutex<VecDeque<Scripted>>,
    /// The fault draws (seeded from `Faults::seed` when the first connection draws).
    rng: Mutex<Option<StdRng>>,
    /// Faults met: refused, hung, dropped, expired.
    faults: [AtomicUsize; 4],
    /// Hanging handshakes whose client has not closed its socket yet.
    held: AtomicUsize,
}

/// A running fake.
pub struct FakeRealtime {
    addr: SocketAddr,
    config: watch::Sender<FakeConfig>,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeRealtime {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeRealtime {
    /// Starts on 127.0.0.1 with an OS-chosen port.
    pub async fn start(config: FakeConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = watch::channel(config);
        let shared = Arc::new(Shared {
            connections: Mutex::default(),
            opened: AtomicUsize::default(),
            open: AtomicUsize::default(),
            attempts: AtomicUsize::default(),
            changed: Notify::new(),
            ids: AtomicU64::default(),
            kill: watch::channel(0).0,
            stalled: watch::channel(false).0,
            silent: watch::channel(0).0,
            inject: tokio::sync::broadcast::channel(256).0,
            script: Mutex::default(),
            rng: Mutex::default(),
            faults: Default::default(),
            held: AtomicUsize::default(),
        });
        let task = tokio::spawn(accept_loop(listener, rx, shared.clone()));
        Ok(Self {
            addr,
            config: tx,
            shared,
            task,
        })
    }

    /// `ws://127.0.0.1:PORT/v1/realtime`.
    pub fn url(&self) -> String {
        format!("ws://{}/v1/realtime", self.addr)
    }

    /// Changes behaviour for new connections and responses.
    pub fn set_config(&self, f: impl FnOnce(&mut FakeConfig)) {
        self.config.send_modify(f);
    }

    /// Drops every open connection abruptly (no close frame), like a Realtime outage.
    pub fn drop_connections(&self) {
        self.shared.kill.send_modify(|n| *n += 1);
    }

    /// Open connections stop (`true`) or resume (`false`) reading their sockets: a server
    /// that stopped reading, while it still sends.
    pub fn stall_reading(&self, stalled: bool) {
        self.shared.stalled.send_replace(stalled);
    }

    /// Every open connection goes silent for good, its socket left open: it reads nothing (so
    /// no Ping is answered) and sends nothing, like a peer gone half-open. Later connections are
    /// served normally.
    pub fn silence_connections(&self) {
        self.shared.silent.send_modify(|n| *n += 1);
    }

    /// Sends `event` as it is to every open connection.
    pub fn inject(&self, event: &Value) {
        let _ = self.shared.inject.send(event.to_string());
    }

    /// The next response after the greeting (any connection) plays `r` instead of a spoken
    /// answer; several are taken in order. A `response.create` with `tool_choice: "none"`
    /// never takes one.
    pub fn script(&self, r: Scripted) {
        self.shared
            .script
            .lock()
            .expect("fake realtime script lock")
            .push_back(r);
    }

    /// Successful WebSocket connections so far.
    pub fn connections_opened(&self) -> usize {
        self.shared.opened.load(Ordering::SeqCst)
    }

    /// TCP connections accepted (including refused and hanging ones).
    pub fn connection_attempts(&self) -> usize {
        self.shared.attempts.load(Ordering::SeqCst)
    }

    /// WebSocket connections open now.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// The faults met so far (see [`Faults`]).
    pub fn faults_met(&self) -> FaultCounts {
        let n = |i: usize| self.shared.faults[i].load(Ordering::SeqCst);
        FaultCounts {
            refused: n(0),
            hung: n(1),
            dropped: n(2),
            expired: n(3),
        }
    }

    /// Hanging handshakes (a [`Faults::hang`] fate) whose client still holds the socket: a
    /// client that gave up closed it.
    pub fn held_handshakes(&self) -> usize {
        self.shared.held.load(Ordering::SeqCst)
    }

    /// Waits until exactly `n` connections are open; false after `limit`.
    pub async fn wait_open(&self, n: usize, limit: Duration) -> bool {
        crate::common::wait_until(&self.shared.changed, limit, || self.open_connections() == n)
            .await
    }

    /// Waits until the connections together have received `count` client events of `kind`;
    /// false after `limit`.
    pub async fn wait_event(&self, kind: &str, count: usize, limit: Duration) -> bool {
        crate::common::wait_until(&self.shared.changed, limit, || {
            self.connections()
                .iter()
                .map(|c| c.of_type(kind).len())
                .sum::<usize>()
                >= count
        })
        .await
    }

    /// Everything each connection saw, in connection order.
    pub fn connections(&self) -> Vec<ConnectionLog> {
        self.shared
            .connections
            .lock()
            .expect("fake realtime log lock")
            .clone()
    }
}

async fn accept_loop(
    listener: TcpListener,
    config: watch::Receiver<FakeConfig>,
    shared: Arc<Shared>,
) {
    let mut hanging = Vec::new();
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        shared.attempts.fetch_add(1, Ordering::SeqCst);
        let cfg = config.borrow().clone();
        match cfg.mode {
            Mode::Down => drop(tcp),
            Mode::Hang => hanging.push(tcp),
            Mode::Normal => {
                let fate = cfg.faults.as_ref().map_or(Fate::Serve, |f| {
                    let mut rng = shared.rng.lock().expect("fake realtime rng lock");
                    f.draw(rng.get_or_insert_with(|| StdRng::seed_from_u64(f.seed)))
                });
                if let Fate::Hang = fate {
                    shared.faults[1].fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(hold(tcp, shared.clone()));
                } else {
                    tokio::spawn(serve(tcp, fate, config.clone(), shared.clone()));
                }
            }
        }
    }
}

/// A handshake never answered: what the client sends is read and ignored until it closes.
async fn hold(mut tcp: TcpStream, shared: Arc<Shared>) {
    use tokio::io::AsyncReadExt;
    shared.held.fetch_add(1, Ordering::SeqCst);
    let mut buf = [0u8; 1024];
    while let Ok(n) = tcp.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
    shared.held.fetch_sub(1, Ordering::SeqCst);
    shared.changed.notify_waiters();
}

async fn serve(
    tcp: TcpStream,
    fate: Fate,
    config: watch::Receiver<FakeConfig>,
    shared: Arc<Shared>,
) {
    let _ = tcp.set_nodelay(true);
    let delay = config.borrow().connect_delay;
    tokio::time::sleep(delay).await;
    let mut log = ConnectionLog::default();
    // The signature is tungstenite's, large error type included.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let h = req.headers();
        log.authorized = h
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Bearer ") && v.len() > 7);
        log.beta_header = h.contains_key("openai-beta");
        log.model = req.uri().query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("model=").map(str::to_string))
        });
        if !log.authorized {
            let mut e = ErrorResponse::new(Some("missing bearer token".into()));
            *e.status_mut() = StatusCode::UNAUTHORIZED;
            return Err(e);
        }
        if let Fate::Refuse = fate {
            let mut e = ErrorResponse::new(Some("the server is overloaded".into()));
            *e.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return Err(e);
        }
        Ok(resp)
    };
    let Ok(ws) =
        tokio_tungstenite::accept_hdr_async_with_config(tcp, callback, Some(crate::ws_config()))
            .await
    else {
        if let Fate::Refuse = fate {
            shared.faults[0].fetch_add(1, Ordering::SeqCst);
        }
        return;
    };
    let index = {
        let mut all = shared.connections.lock().expect("fake realtime log lock");
        log.open = true;
        all.push(log);
        all.len() - 1
    };
    shared.opened.fetch_add(1, Ordering::SeqCst);
    shared.open.fetch_add(1, Ordering::SeqCst);
    shared.changed.notify_waiters();
    let end = match fate {
        Fate::Drop(after) => Some((after, false)),
        Fate::Expire(after) => Some((after, true)),
        _ => None,
    };
    Conn::new(index, config, shared.clone()).run(ws, end).await;
    shared.open.fetch_sub(1, Ordering::SeqCst);
    if let Some(c) = shared
        .connections
        .lock()
        .expect("fake realtime log lock")
        .get_mut(index)
    {
        c.open = false;
    }
    shared.changed.notify_waiters();
}

/// A response being spoken.
struct Speaking {
    id: String,
    item_id: String,
    cancel: Arc<Notify>,
    /// ms of audio this response has sent (for truncate checks).
    sent_ms: Arc<AtomicU64>,
}

struct Conn {
    index: usize,
    config: watch::Receiver<FakeConfig>,
    shared: Arc<Shared>,
    out: mpsc::Sender<Message>,
    out_rx: Option<mpsc::Receiver<Message>>,
    responses: u32,
    speaking: Option<Speaking>,
    finished: Arc<Mutex<Vec<String>>>,
    item_audio_ms: HashMap<String, Arc<AtomicU64>>,
    /// Items created by the client (messages, function outputs), by id.
    items: std::collections::HashSet<String>,
    /// Set by the first `input_audio_buffer.append`: the gateway is relaying this session, so
    /// agent audio sent from now on is timed by the stamps (earlier audio waits in a buffer).
    relaying: Arc<AtomicBool>,
    /// When the first `session.updated` was sent: caller audio sent before then was held by the
    /// gateway, not relayed (the stamps leave it out of the delays).
    ready_at: Arc<std::sync::OnceLock<Instant>>,
    /// The last append's audio, decoded (its buffer is reused).
    decoded: Vec<u8>,
    create_response: bool,
    interrupt_response: bool,
    /// Function names declared in the last `session.update`.
    tools: Vec<String>,
    /// `event_id` of the client event being handled (errors about it echo it).
    current_event: Option<String>,
    /// A `session.update` was accepted (later ones may be partial).
    configured: bool,
    /// Call ids of the function calls made, not yet answered with a `function_call_output`.
    open_calls: Vec<String>,
    vad: Vad,
    user_item: String,
}

impl Conn {
    fn new(index: usize, config: watch::Receiver<FakeConfig>, shared: Arc<Shared>) -> Self {
        let (out, out_rx) = mpsc::channel(1024);
        Self {
            index,
            config,
            shared,
            out,
            out_rx: Some(out_rx),
            responses: 0,
            speaking: None,
            finished: Arc::default(),
            item_audio_ms: HashMap::new(),
            items: Default::default(),
            relaying: Arc::default(),
            ready_at: Arc::default(),
            decoded: Vec::new(),
            create_response: true,
            interrupt_response: true,
            tools: Vec::new(),
            current_event: None,
            configured: false,
            open_calls: Vec::new(),
            vad: Vad::default(),
            user_item: String::new(),
        }
    }

    /// Since when this session could be relaying caller audio (its first `session.updated`);
    /// `now` while it is not ready yet.
    fn ready_since(&self, now: Instant) -> Instant {
        self.ready_at.get().copied().unwrap_or(now)
    }

    fn id(&self, prefix: &str) -> String {
        format!(
            "{prefix}_{:06}",
            self.shared.ids.fetch_add(1, Ordering::Relaxed)
        )
    }

    async fn send(&self, v: Value) {
        let _ = self.out.send(Message::text(v.to_string())).await;
    }

    async fn error(&self, kind: &str, code: Option<&str>, message: &str) {
        self.log(|c| c.errors_sent.push(code.unwrap_or(kind).to_string()));
        self.send(
            json!({"type": "error", "event_id": self.id("event"), "error": {
            "type": kind, "code": code, "message": message, "param": null,
            "event_id": self.current_event}}),
        )
        .await;
    }

    fn record(&self, kind: &str, raw: &str) {
        if kind == "input_audio_buffer.append" && !self.config.borrow().record_audio {
            return;
        }
        self.log(|c| {
            c.events.push(Received {
                kind: kind.to_string(),
                raw: raw.to_string(),
                at: Instant::now(),
            })
        });
        self.shared.changed.notify_waiters();
    }

    /// Updates this connection's log.
    fn log(&self, f: impl FnOnce(&mut ConnectionLog)) {
        if let Some(c) = self
            .shared
            .connections
            .lock()
            .expect("fake realtime log lock")
            .get_mut(self.index)
        {
            f(c);
        }
    }

    /// Serves the connection; `end` is a fault's moment (from now) and whether it is an expiry
    /// (`true`) or a drop.
    async fn run(
        mut self,
        ws: tokio_tungstenite::WebSocketStream<TcpStream>,
        end: Option<(Duration, bool)>,
    ) {
        let (mut sink, mut stream) = ws.split();
        let mut out_rx = self.out_rx.take().expect("taken once");
        let writer = tokio::spawn(async move {
            // What is queued goes out with one flush (events come in bursts).
            while let Some(first) = out_rx.recv().await {
                let batch = async {
                    sink.feed(first).await?;
                    while let Ok(m) = out_rx.try_recv() {
                        sink.feed(m).await?;
                    }
                    sink.flush().await
                };
                if batch.await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        self.send(json!({"type": "session.created", "event_id": self.id("event"),
            "session": {"type": "realtime", "id": self.id("sess"), "model": "fake", "expires_at": 0}}))
            .await;
        let mut kill = self.shared.kill.subscribe();
        kill.mark_unchanged();
        let mut stalled = self.shared.stalled.subscribe();
        let mut silence = self.shared.silent.subscribe();
        silence.mark_unchanged();
        let mut silent = false;
        let mut inject = self.shared.inject.subscribe();
        let fault = async {
            match end {
                Some((after, expire)) => {
                    tokio::time::sleep(after).await;
                    expire
                }
                None => std::future::pending().await,
            }
        };
        tokio::pin!(fault);
        loop {
            // Reading is what answers a Ping (tungstenite queues the Pong and flushes it as it
            // reads), so a silent connection answers none.
            let reading = !*stalled.borrow_and_update() && !silent;
            tokio::select! {
                msg = stream.next(), if reading => match msg {
                    Some(Ok(Message::Text(text))) => self.on_text(text.as_str()).await,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
                _ = stalled.changed() => {}
                _ = silence.changed(), if !silent => {
                    silent = true;
                    // Nothing more is written; the socket stays open (its reading half is kept).
                    writer.abort();
                }
                event = inject.recv() => {
                    if let Ok(text) = event
                        && !silent
                    {
                        let _ = self.out.send(Message::text(text)).await;
                    }
                }
                _ = kill.changed() => {
                    writer.abort();
                    break;
                }
                expire = &mut fault => {
                    if expire {
                        self.shared.faults[3].fetch_add(1, Ordering::SeqCst);
                        // As the API does at its session-length limit: the error, then a close.
                        self.send(json!({"type": "error", "event_id": self.id("event"), "error": {
                            "type": "invalid_request_error", "code": "session_expired",
                            "message": "Your session hit the maximum duration of 60 minutes.",
                            "param": null, "event_id": null}}))
                        .await;
                    } else {
                        self.shared.faults[2].fetch_add(1, Ordering::SeqCst);
                        writer.abort();
                    }
                    break;
                }
            }
        }
        if let Some(s) = self.speaking.take() {
            s.cancel.notify_one();
        }
        drop(self.out);
        let _ = writer.await;
    }

    async fn on_text(&mut self, text: &str) {
        // Fast path for the frame that arrives 50 times a second per call: the exact shape
        // warmline sends. Anything else takes the full parse below.
        const APPEND: &str = r#"{"type":"input_audio_buffer.append","audio":""#;
        if let Some(audio) = text
            .strip_prefix(APPEND)
            .and_then(|r| r.strip_suffix(r#""}"#))
            && !audio.contains('"')
        {
            self.record("input_audio_buffer.append", text);
            self.current_event = None;
            self.relaying.store(true, Ordering::Relaxed);
            // Decoded into a buffer kept for the connection (one frame per append).
            let mut bytes = std::mem::take(&mut self.decoded);
            bytes.clear();
            match STANDARD.decode_vec(audio, &mut bytes) {
                Ok(()) => {
                    if let Some(st) = &self.config.borrow().stamps {
                        let now = Instant::now();
                        st.inbound
                            .received_since(audio, now, Some(self.ready_since(now)));
                    }
                    self.vad(&bytes).await;
                    self.decoded = bytes;
                }
                Err(_) => {
                    self.error(
                        "invalid_request_error",
                        Some("invalid_value"),
                        "audio must be base64",
                    )
                    .await
                }
            }
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            self.record("(invalid json)", text);
            self.error(
                "invalid_request_error",
                Some("invalid_json"),
                "The message is not valid JSON.",
            )
            .await;
            return;
        };
        let kind = v["type"].as_str().unwrap_or("").to_string();
        self.current_event = v["event_id"].as_str().map(str::to_string);
        self.record(&kind, text);
        match kind.as_str() {
            "session.update" => self.on_session_update(&v).await,
            "response.create" => {
                // One response at a time: the real API refuses a second while one is active
                // (the server's own turn detection does cancel and replace, see `vad`).
                if let Some(active) = self.active_response_id() {
                    self.error("invalid_request_error", Some("conversation_already_has_active_response"),
                        &format!("Conversation already has an active response in progress: {active}. Wait until the response is finished before creating a new one.")).await;
                    return;
                }
                let instructions = v["response"]["instructions"].as_str().unwrap_or("").to_string();
                let tools_allowed = v["response"]["tool_choice"] != "none";
                let metadata = v["response"]["metadata"].clone();
                self.start_response(&instructions, tools_allowed, metadata).await;
            }
            "response.cancel" => {
                if !self.cancel_active("client_cancelled").await {
                    self.error("invalid_request_error", Some("response_cancel_not_active"),
                        "Cancellation failed: no active response found").await;
                }
            }
            "input_audio_buffer.append" => match v["audio"].as_str().map(|a| (a, STANDARD.decode(a))) {
                Some((raw, Ok(bytes))) => {
                    self.relaying.store(true, Ordering::Relaxed);
                    if let Some(st) = &self.config.borrow().stamps {
                        let now = Instant::now();
                        st.inbound.received_since(raw, now, Some(self.ready_since(now)));
                    }
                    self.vad(&bytes).await
                }
                _ => self.error("invalid_request_error", Some("invalid_value"), "audio must be base64").await,
            },
            "conversation.item.truncate" => self.on_truncate(&v).await,
            "conversation.item.create" => self.on_item_create(&v).await,
            "conversation.item.delete" => {
                let item_id = v["item_id"].as_str().unwrap_or("");
                if self.remove_item(item_id) {
                    self.send(json!({"type": "conversation.item.deleted", "event_id": self.id("event"),
                        "item_id": item_id}))
                        .await;
                } else {
                    self.error("invalid_request_error", Some("item_not_found"),
                        &format!("Item with item_id '{item_id}' not found.")).await;
                }
            }
            "input_audio_buffer.commit" | "input_audio_buffer.clear" => {}
            other => {
                self.error("invalid_request_error", Some("unknown_event"),
                    &format!("Invalid value: '{other}'. Supported values are the client events of the GA Realtime API."))
                    .await
            }
        }
    }

    /// Puts `id` at the end of the conversation; the id before it (JSON null when first).
    fn append_item(&self, id: &str) -> Value {
        let mut previous = Value::Null;
        self.log(|c| {
            previous = c.conversation.last().map_or(Value::Null, |p| json!(p));
            c.conversation.push(id.to_string());
        });
        previous
    }

    /// Puts `id` right after `after` (`root`: first); the id before it, or `Err` when `after`
    /// is not in the conversation.
    fn insert_item_after(&self, id: &str, after: &str) -> Result<Value, ()> {
        let mut result = Err(());
        self.log(|c| {
            let at = if after == "root" {
                Some(0)
            } else {
                c.conversation
                    .iter()
                    .position(|i| i == after)
                    .map(|i| i + 1)
            };
            if let Some(at) = at {
                c.conversation.insert(at, id.to_string());
                result = Ok(if at == 0 {
                    Value::Null
                } else {
                    json!(c.conversation[at - 1])
                });
            }
        });
        result
    }

    /// Deletes an item the conversation has; false if it has none with that id.
    fn remove_item(&mut self, id: &str) -> bool {
        let mut found = false;
        self.log(|c| {
            if let Some(i) = c.conversation.iter().position(|x| x == id) {
                c.conversation.remove(i);
                found = true;
            }
        });
        self.items.remove(id);
        self.item_audio_ms.remove(id);
        found
    }

    /// `conversation.item.create`: a function call's output, or a message whose content types
    /// must match its role (user and system `input_*`, assistant `output_*`, as the GA API
    /// checks). A client-chosen `id` is kept (a second item with the same id is refused).
    async fn on_item_create(&mut self, v: &Value) {
        let item = &v["item"];
        let item_id = match item["id"].as_str() {
            Some("") => {
                self.error(
                    "invalid_request_error",
                    Some("invalid_value"),
                    "Invalid 'item.id': empty string. Expected a string with minimum length 1.",
                )
                .await;
                return;
            }
            Some(id) if id.len() > 32 => {
                self.error(
                    "invalid_request_error",
                    Some("invalid_value"),
                    "Invalid 'item.id': string too long. Expected a string with maximum length 32.",
                )
                .await;
                return;
            }
            Some(id) if self.items.contains(id) || self.item_audio_ms.contains_key(id) => {
                self.error(
                    "invalid_request_error",
                    Some("invalid_value"),
                    &format!("Item with id '{id}' already exists."),
                )
                .await;
                return;
            }
            Some(id) => id.to_string(),
            None => self.id("item"),
        };
        let added = if item["type"] == "function_call_output" {
            let call_id = item["call_id"].as_str().unwrap_or("");
            let Some(i) = self.open_calls.iter().position(|c| c == call_id) else {
                self.error(
                    "invalid_request_error",
                    Some("invalid_value"),
                    &format!(
                        "Invalid value: no function call with call_id '{call_id}' awaits an output."
                    ),
                )
                .await;
                return;
            };
            if !item["output"].is_string() {
                self.error(
                    "invalid_request_error",
                    Some("invalid_type"),
                    "Invalid type for 'item.output': expected a string.",
                )
                .await;
                return;
            }
            self.open_calls.remove(i);
            json!({"id": item_id, "type": "function_call_output", "call_id": call_id, "output": item["output"]})
        } else {
            let role = item["role"].as_str().unwrap_or("user");
            let allowed: &[&str] = match role {
                "assistant" => &["output_text", "output_audio"],
                "user" => &["input_text", "input_audio", "input_image"],
                "system" => &["input_text"],
                other => {
                    self.error("invalid_request_error", Some("invalid_value"),
                        &format!("Invalid value: '{other}'. Supported values are: 'user', 'assistant', and 'system'.")).await;
                    return;
                }
            };
            let empty = vec![];
            let content = item["content"].as_array().unwrap_or(&empty);
            if let Some(bad) = content
                .iter()
                .map(|c| c["type"].as_str().unwrap_or(""))
                .find(|t| !allowed.contains(t))
            {
                self.error("invalid_request_error", Some("invalid_value"),
                    &format!("Invalid value: '{bad}'. Supported values for a {role} message are: {allowed:?}.")).await;
                return;
            }
            json!({"id": item_id, "type": "message", "role": role, "status": "completed",
                "content": item["content"]})
        };
        let previous = match v["previous_item_id"].as_str() {
            None => self.append_item(&item_id),
            Some(after) => match self.insert_item_after(&item_id, after) {
                Ok(previous) => previous,
                Err(()) => {
                    self.error("invalid_request_error", Some("invalid_value"),
                        &format!("Invalid 'previous_item_id': no item with id '{after}' in the conversation.")).await;
                    return;
                }
            },
        };
        self.items.insert(item_id);
        self.send(
            json!({"type": "conversation.item.added", "event_id": self.id("event"),
            "previous_item_id": previous, "item": added}),
        )
        .await;
        self.send(
            json!({"type": "conversation.item.done", "event_id": self.id("event"),
            "previous_item_id": previous, "item": added}),
        )
        .await;
    }

    async fn on_session_update(&mut self, v: &Value) {
        let s = &v["session"];
        let format_ok = |f: &Value| {
            matches!(
                f["type"].as_str(),
                Some("audio/pcmu" | "audio/pcma" | "audio/pcm")
            )
        };
        // Only the fields present are updated: a later update may leave the audio out, but
        // formats that are given must be GA objects.
        let format_given_ok = |f: &Value| f.is_null() || format_ok(f);
        let first = !self.configured;
        let ga = s["type"] == "realtime"
            && if first {
                format_ok(&s["audio"]["input"]["format"])
                    && format_ok(&s["audio"]["output"]["format"])
            } else {
                format_given_ok(&s["audio"]["input"]["format"])
                    && format_given_ok(&s["audio"]["output"]["format"])
            };
        if !ga {
            self.error(
                "invalid_request_error",
                Some("invalid_session"),
                "session.type is required and audio formats must be objects (GA)",
            )
            .await;
            return;
        }
        if self.config.borrow().reject_session_update {
            self.error(
                "invalid_request_error",
                Some("invalid_value"),
                "Invalid value for 'session': this setting is not available to your organization.",
            )
            .await;
            return;
        }
        // Tools in the GA shape: `{"type":"function","name","description","parameters"}`.
        let mut tools = Vec::new();
        if let Some(list) = s.get("tools") {
            let valid_name = |n: &str| {
                (1..=64).contains(&n.len())
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            };
            let Some(list) = list.as_array() else {
                self.error(
                    "invalid_request_error",
                    Some("invalid_type"),
                    "Invalid type for 'session.tools': expected an array.",
                )
                .await;
                return;
            };
            for (i, t) in list.iter().enumerate() {
                let name = t["name"].as_str().unwrap_or("");
                if t["type"] != "function" || !valid_name(name) || !t["parameters"].is_object() {
                    self.error("invalid_request_error", Some("invalid_value"),
                        &format!("Invalid value for 'session.tools[{i}]': a function needs type \"function\", a name matching ^[a-zA-Z0-9_-]{{1,64}}$ and parameters as a JSON Schema object.")).await;
                    return;
                }
                tools.push(name.to_string());
            }
        }
        if s.get("tools").is_some() {
            self.tools = tools;
        }
        self.configured = true;
        let td = &s["audio"]["input"]["turn_detection"];
        if !td.is_null() {
            self.create_response = td["create_response"].as_bool().unwrap_or(true);
            self.interrupt_response = td["interrupt_response"].as_bool().unwrap_or(true);
        }
        let delay = self.config.borrow().session_ready_delay;
        let out = self.out.clone();
        let ready_at = self.ready_at.clone();
        let mut session = s.clone();
        session["id"] = json!(self.id("sess"));
        let event =
            json!({"type": "session.updated", "event_id": self.id("event"), "session": session});
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            ready_at.get_or_init(Instant::now);
            let _ = out.send(Message::text(event.to_string())).await;
        });
    }

    async fn start_response(&mut self, instructions: &str, tools_allowed: bool, metadata: Value) {
        self.cancel_active("turn_detected").await;
        self.responses += 1;
        let greeting = self.responses == 1 && !instructions.is_empty();
        let scripted = if greeting || !tools_allowed {
            None
        } else {
            self.shared
                .script
                .lock()
                .expect("fake realtime script lock")
                .pop_front()
        };
        let clip = match &scripted {
            _ if greeting => Some(clips::greeting()),
            Some(sc) if !sc.speak => None,
            Some(sc) if sc.calls.iter().any(|c| c.name == "end_call") => Some(clips::goodbye()),
            _ if instructions.contains("keypad") || instructions.contains("goodbye") => {
                Some(clips::goodbye())
            }
            _ => Some(clips::answer()),
        };
        let calls: Vec<(ScriptedCall, String, String)> = scripted
            .map(|sc| sc.calls)
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c, self.id("call"), self.id("item")))
            .collect();
        self.open_calls
            .extend(calls.iter().map(|(_, call_id, _)| call_id.clone()));
        let id = self.id("resp");
        let item_id = self.id("item");
        if clip.is_some() {
            self.append_item(&item_id);
        }
        for (_, _, call_item) in &calls {
            self.append_item(call_item);
        }
        let cancel = Arc::new(Notify::new());
        let sent_ms = Arc::new(AtomicU64::new(0));
        self.item_audio_ms.insert(item_id.clone(), sent_ms.clone());
        self.speaking = Some(Speaking {
            id: id.clone(),
            item_id: item_id.clone(),
            cancel: cancel.clone(),
            sent_ms: sent_ms.clone(),
        });
        let cfg = self.config.borrow().clone();
        let out = self.out.clone();
        let finished = self.finished.clone();
        let shared = self.shared.clone();
        let relaying = self.relaying.clone();
        tokio::spawn(async move {
            speak(Speech {
                out,
                id,
                item_id,
                clip,
                cfg,
                cancel,
                sent_ms,
                finished,
                shared,
                relaying,
                calls,
                metadata,
            })
            .await;
        });
    }

    /// The response still being generated, if any.
    fn active_response_id(&self) -> Option<String> {
        let s = self.speaking.as_ref()?;
        let done = self.finished.lock().expect("finished lock").contains(&s.id);
        (!done).then(|| s.id.clone())
    }

    /// Cancels the active response; false if none was active.
    async fn cancel_active(&mut self, reason: &str) -> bool {
        let Some(s) = self.speaking.take() else {
            return false;
        };
        if self.finished.lock().expect("finished lock").contains(&s.id) {
            return false;
        }
        self.finished
            .lock()
            .expect("finished lock")
            .push(s.id.clone());
        s.cancel.notify_one();
        let _ = s.sent_ms.load(Ordering::Relaxed);
        self.send(
            json!({"type": "response.done", "event_id": self.id("event"), "response": {
            "id": s.id, "object": "realtime.response", "status": "cancelled",
            "status_details": {"type": "cancelled", "reason": reason}, "output": [],
            "usage": {"total_tokens": 0, "input_tokens": 0, "output_tokens": 0}}}),
        )
        .await;
        let _ = s.item_id;
        true
    }

    async fn on_truncate(&mut self, v: &Value) {
        let item_id = v["item_id"].as_str().unwrap_or("");
        let Some(end) = v["audio_end_ms"].as_u64() else {
            self.error(
                "invalid_request_error",
                Some("missing_required_parameter"),
                "audio_end_ms is required",
            )
            .await;
            return;
        };
        let Some(sent) = self
            .item_audio_ms
            .get(item_id)
            .map(|m| m.load(Ordering::Relaxed))
        else {
            self.error(
                "invalid_request_error",
                Some("item_not_found"),
                "No assistant item with that id",
            )
            .await;
            return;
        };
        if end > sent {
            self.error(
                "invalid_request_error",
                Some("invalid_value"),
                &format!("audio_end_ms {end} is beyond the item's audio ({sent} ms)"),
            )
            .await;
            return;
        }
        self.send(
            json!({"type": "conversation.item.truncated", "event_id": self.id("event"),
            "item_id": item_id, "content_index": 0, "audio_end_ms": end}),
        )
        .await;
    }

    /// The caller's turns, by the shared energy VAD ([`Vad`]): 100 ms of speech starts a
    /// turn, 500 ms of silence ends it.
    async fn vad(&mut self, mulaw: &[u8]) {
        for frame in mulaw.chunks(audio::FRAME_BYTES) {
            match self.vad.frame(frame) {
                Some(Turn::Started { at_ms }) => {
                    self.user_item = self.id("item");
                    self.send(json!({"type": "input_audio_buffer.speech_started", "event_id": self.id("event"),
                        "audio_start_ms": at_ms, "item_id": self.user_item}))
                        .await;
                    if self.interrupt_response {
                        self.cancel_active("turn_detected").await;
                    }
                }
                Some(Turn::Ended { start_ms, end_ms }) => {
                    let spoke = (end_ms - start_ms) as f64 / 1000.0;
                    let item = self.user_item.clone();
                    self.send(json!({"type": "input_audio_buffer.speech_stopped", "event_id": self.id("event"),
                        "audio_end_ms": end_ms, "item_id": item}))
                        .await;
                    let previous = self.append_item(&item);
                    self.send(
                        json!({"type": "input_audio_buffer.committed", "event_id": self.id("event"),
                        "previous_item_id": previous, "item_id": item}),
                    )
                    .await;
                    self.send(
                        json!({"type": "conversation.item.input_audio_transcription.completed",
                        "event_id": self.id("event"), "item_id": item, "content_index": 0,
                        "transcript": format!("(caller spoke for {spoke:.1} s)")}),
                    )
                    .await;
                    if self.create_response {
                        self.start_response("", true, Value::Null).await;
                    }
                }
                None => {}
            }
        }
    }
}

struct Speech {
    out: mpsc::Sender<Message>,
    id: String,
    item_id: String,
    /// What it says (`None`: a response that only calls functions).
    clip: Option<Clip>,
    /// Function calls after the speech: (call, call id, item id).
    calls: Vec<(ScriptedCall, String, String)>,
    /// `response.metadata` of the `response.create` (echoed in `response.created|done`).
    metadata: Value,
    cfg: FakeConfig,
    cancel: Arc<Notify>,
    sent_ms: Arc<AtomicU64>,
    finished: Arc<Mutex<Vec<String>>>,
    shared: Arc<Shared>,
    relaying: Arc<AtomicBool>,
}

async fn speak(s: Speech) {
    let ev = |v: Value| Message::text(v.to_string());
    let eid = || format!("event_{:06}", s.shared.ids.fetch_add(1, Ordering::Relaxed));
    let _ = s
        .out
        .send(ev(json!({"type": "response.created", "event_id": eid(), "response": {"id": s.id, "object": "realtime.response", "status": "in_progress", "output": [], "metadata": s.metadata}})))
        .await;
    let mut output = Vec::new();
    if let Some(clip) = &s.clip {
        if !speak_clip(&s, clip).await {
            return; // cancelled: its `response.done` was sent by the cancel
        }
        output.push(
            json!({"id": s.item_id, "type": "message", "role": "assistant", "status": "completed"}),
        );
    }
    let cancelled = || s.finished.lock().expect("finished lock").contains(&s.id);
    for (call, call_id, item_id) in &s.calls {
        if cancelled() {
            return;
        }
        let output_index = output.len();
        let item = |status: &str, arguments: &str| {
            json!({"id": item_id, "type": "function_call", "status": status, "name": call.name,
                "call_id": call_id, "arguments": arguments})
        };
        for m in [
            json!({"type": "response.output_item.added", "event_id": eid(), "response_id": s.id, "output_index": output_index, "item": item("in_progress", "")}),
            json!({"type": "conversation.item.added", "event_id": eid(), "previous_item_id": null, "item": item("in_progress", "")}),
            json!({"type": "response.function_call_arguments.delta", "event_id": eid(), "response_id": s.id, "item_id": item_id, "output_index": output_index, "call_id": call_id, "delta": call.arguments}),
            // As the GA SDK types it: no `name` here (it is on the item).
            json!({"type": "response.function_call_arguments.done", "event_id": eid(), "response_id": s.id, "item_id": item_id, "output_index": output_index, "call_id": call_id, "arguments": call.arguments}),
            json!({"type": "response.output_item.done", "event_id": eid(), "response_id": s.id, "output_index": output_index, "item": item("completed", &call.arguments)}),
            json!({"type": "conversation.item.done", "event_id": eid(), "previous_item_id": null, "item": item("completed", &call.arguments)}),
        ] {
            let _ = s.out.send(ev(m)).await;
        }
        output.push(item("completed", &call.arguments));
    }
    if cancelled() {
        return;
    }
    s.finished.lock().expect("finished lock").push(s.id.clone());
    let _ = s
        .out
        .send(ev(json!({"type": "response.done", "event_id": eid(), "response": {"id": s.id, "object": "realtime.response", "status": "completed", "status_details": null,
            "output": output, "metadata": s.metadata, "usage": {"total_tokens": 120, "input_tokens": 80, "output_tokens": 40}}})))
        .await;
}

/// The audio item of a response: added, deltas with their transcript, done. False if the
/// response was cancelled on the way.
async fn speak_clip(s: &Speech, clip: &Clip) -> bool {
    let ev = |v: Value| Message::text(v.to_string());
    let eid = || format!("event_{:06}", s.shared.ids.fetch_add(1, Ordering::Relaxed));
    let item = json!({"id": s.item_id, "type": "message", "role": "assistant", "status": "in_progress", "content": []});
    for m in [
        json!({"type": "response.output_item.added", "event_id": eid(), "response_id": s.id, "output_index": 0, "item": item}),
        json!({"type": "conversation.item.added", "event_id": eid(), "previous_item_id": null, "item": item}),
        json!({"type": "response.content_part.added", "event_id": eid(), "response_id": s.id, "item_id": s.item_id, "output_index": 0, "content_index": 0, "part": {"type": "audio", "transcript": ""}}),
    ] {
        let _ = s.out.send(ev(m)).await;
    }
    let cancelled = || s.finished.lock().expect("finished lock").contains(&s.id);
    tokio::select! {
        _ = tokio::time::sleep(s.cfg.first_audio_delay) => {}
        _ = s.cancel.notified() => return false,
    }
    let chunk = s.cfg.chunk_ms.max(10) * audio::BYTES_PER_MS;
    let parts = clip.mulaw.len().div_ceil(chunk).max(1);
    let words: Vec<&str> = clip.text.split_inclusive(' ').collect();
    for (i, part) in clip.mulaw.chunks(chunk).enumerate() {
        if cancelled() {
            return false;
        }
        // The transcript streams alongside the audio, in proportion.
        let (from, to) = (words.len() * i / parts, words.len() * (i + 1) / parts);
        if to > from {
            let text: String = words[from..to].concat();
            let d = delta_event(
                "response.output_audio_transcript.delta",
                &eid(),
                &s.id,
                &s.item_id,
                &Value::from(text).to_string(),
            );
            let _ = s.out.send(Message::text(d)).await;
        }
        let payload = match &s.cfg.stamps {
            Some(st) => {
                let mut tagged = part.to_vec();
                st.tag(&mut tagged);
                let p = STANDARD.encode(&tagged);
                if s.relaying.load(Ordering::Relaxed) {
                    st.outbound.sent(&p, Instant::now());
                } else {
                    st.outbound.held(&p);
                }
                p
            }
            None => STANDARD.encode(part),
        };
        // Base64 needs no escaping: the payload goes in as it is, between quotes.
        let delta = delta_event(
            "response.output_audio.delta",
            &eid(),
            &s.id,
            &s.item_id,
            &format!("\"{payload}\""),
        );
        if s.out.send(Message::text(delta)).await.is_err() {
            return false;
        }
        s.sent_ms
            .fetch_add((part.len() / audio::BYTES_PER_MS) as u64, Ordering::Relaxed);
        tokio::select! {
            _ = tokio::time::sleep(s.cfg.chunk_interval) => {}
            _ = s.cancel.notified() => return false,
        }
    }
    if cancelled() {
        return false;
    }
    for m in [
        json!({"type": "response.output_audio.done", "event_id": eid(), "response_id": s.id, "item_id": s.item_id, "output_index": 0, "content_index": 0}),
        json!({"type": "response.output_audio_transcript.done", "event_id": eid(), "response_id": s.id, "item_id": s.item_id, "output_index": 0, "content_index": 0, "transcript": clip.text}),
        json!({"type": "response.content_part.done", "event_id": eid(), "response_id": s.id, "item_id": s.item_id, "output_index": 0, "content_index": 0, "part": {"type": "audio", "transcript": clip.text}}),
        json!({"type": "response.output_item.done", "event_id": eid(), "response_id": s.id, "output_index": 0, "item": {"id": s.item_id, "type": "message", "role": "assistant", "status": "completed"}}),
    ] {
        let _ = s.out.send(ev(m)).await;
    }
    true
}

/// A `response.output_audio.delta` or `…transcript.delta` event, byte for byte what `json!`
/// with these fields writes (keys in order), without building a `Value` for each chunk:
/// `delta_json` is the delta already as JSON (a quoted string).
fn delta_event(
    kind: &str,
    event_id: &str,
    response_id: &str,
    item_id: &str,
    delta_json: &str,
) -> String {
    let (kind, event_id, response_id, item_id) = (
        Value::from(kind),
        Value::from(event_id),
        Value::from(response_id),
        Value::from(item_id),
    );
    format!(
        r#"{{"content_index":0,"delta":{delta_json},"event_id":{event_id},"item_id":{item_id},"output_index":0,"response_id":{response_id},"type":{kind}}}"#
    )
}

#[cfg(test)]
mod tests {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    use super::*;

    #[test]
    fn delta_events_are_what_json_writes() {
        let payload = STANDARD.encode([0xFFu8, 0x7F, 0x00, 0x12]);
        assert_eq!(
            delta_event("response.output_audio.delta", "event_000007", "resp_000001", "item_000002", &format!("\"{payload}\"")),
            json!({"type": "response.output_audio.delta", "event_id": "event_000007", "response_id": "resp_000001",
                "item_id": "item_000002", "output_index": 0, "content_index": 0, "delta": payload}).to_string()
        );
        let text = "You're \"welcome\". ";
        assert_eq!(
            delta_event("response.output_audio_transcript.delta", "e", "r", "i", &Value::from(text).to_string()),
            json!({"type": "response.output_audio_transcript.delta", "event_id": "e", "response_id": "r",
                "item_id": "i", "output_index": 0, "content_index": 0, "delta": text}).to_string()
        );
    }

    type Client = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

    async fn connect(fake: &FakeRealtime) -> Client {
        let mut req = format!("{}?model=gpt-realtime-2", fake.url())
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("authorization", "Bearer sk-test".parse().unwrap());
        tokio_tungstenite::connect_async(req).await.unwrap().0
    }

    async fn next_of(ws: &mut Client, kind: &str) -> Value {
        loop {
            let next = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
            let Ok(Some(Ok(Message::Text(t)))) = next else {
                panic!("no {kind} (socket ended or timed out)")
            };
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["type"] == kind {
                return v;
            }
        }
    }

    fn session_update() -> String {
        json!({"type": "session.update", "session": {"type": "realtime", "instructions": "x",
            "audio": {"input": {"format": {"type": "audio/pcmu"}, "turn_detection": {"type": "server_vad", "create_response": true, "interrupt_response": true}},
                      "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"}}}})
        .to_string()
    }

    #[tokio::test]
    async fn without_a_bearer_token_the_handshake_is_refused() {
        let fake = FakeRealtime::start(FakeConfig::instant()).await.unwrap();
        let err = tokio_tungstenite::connect_async(fake.url())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("401"), "{err}");
        assert_eq!(fake.connections_opened(), 0);
    }

    #[tokio::test]
    async fn session_update_then_greeting_speech() {
        let fake = FakeRealtime::start(FakeConfig::instant()).await.unwrap();
        let mut ws = connect(&fake).await;
        next_of(&mut ws, "session.created").await;
        ws.send(Message::text(session_update())).await.unwrap();
        let updated = next_of(&mut ws, "session.updated").await;
        assert_eq!(updated["session"]["audio"]["output"]["voice"], "marin");
        ws.send(Message::text(
            r#"{"type":"response.create","response":{"instructions":"greet"}}"#,
        ))
        .await
        .unwrap();
        let delta = next_of(&mut ws, "response.output_audio.delta").await;
        let audio = STANDARD.decode(delta["delta"].as_str().unwrap()).unwrap();
        assert!(
            audio.chunks(160).any(audio::is_speech),
            "greeting is speech, not silence"
        );
        let done = next_of(&mut ws, "response.done").await;
        assert_eq!(done["response"]["status"], "completed");
        let log = &fake.connections()[0];
        assert_eq!(log.model.as_deref(), Some("gpt-realtime-2"));
        assert!(!log.beta_header);
        assert_eq!(log.of_type("session.update").len(), 1);
    }

    /// The next Pong, skipping events; `None` if none comes within `limit` (the socket staying
    /// open) and `Err` if the socket ends.
    async fn pong_within(ws: &mut Client, limit: Duration) -> Result<Option<Vec<u8>>, String> {
        let until = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(until, ws.next()).await {
                Err(_) => return Ok(None),
                Ok(Some(Ok(Message::Pong(p)))) => return Ok(Some(p.to_vec())),
                Ok(Some(Ok(_))) => {}
                Ok(other) => return Err(format!("socket ended: {other:?}")),
            }
        }
    }

    #[tokio::test]
    async fn pings_are_answered_until_the_connection_goes_silent_without_closing() {
        let fake = FakeRealtime::start(FakeConfig::instant()).await.unwrap();
        let mut ws = connect(&fake).await;
        next_of(&mut ws, "session.created").await;
        ws.send(Message::Ping(b"one".to_vec().into()))
            .await
            .unwrap();
        assert_eq!(
            pong_within(&mut ws, Duration::from_secs(10)).await,
            Ok(Some(b"one".to_vec()))
        );
        fake.silence_connections();
        // Let the connection see it before the next Ping.
        tokio::time::sleep(Duration::from_millis(200)).await;
        ws.send(Message::Ping(b"two".to_vec().into()))
            .await
            .unwrap();
        ws.send(Message::text(session_update())).await.unwrap();
        assert_eq!(
            pong_within(&mut ws, Duration::from_secs(2)).await,
            Ok(None),
            "no Pong, no event, and no close"
        );
        assert_eq!(fake.open_connections(), 1);
        // A new connection is served as ever.
        let mut fresh = connect(&fake).await;
        next_of(&mut fresh, "session.created").await;
        fresh
            .send(Message::Ping(b"three".to_vec().into()))
            .await
            .unwrap();
        assert_eq!(
            pong_within(&mut fresh, Duration::from_secs(10)).await,
            Ok(Some(b"three".to_vec()))
        );
    }

    #[tokio::test]
    async fn beta_shapes_and_unknown_events_get_errors() {
        let fake = FakeRealtime::start(FakeConfig::instant()).await.unwrap();
        let mut ws = connect(&fake).await;
        ws.send(Message::text(
            r#"{"type":"session.update","session":{"input_audio_format":"g711_ulaw"}}"#,
        ))
        .await
        .unwrap();
        let e = next_of(&mut ws, "error").await;
        assert_eq!(e["error"]["code"], "invalid_session");
        ws.send(Message::text(r#"{"type":"input_audio_buffer.push"}"#))
            .await
            .unwrap();
        let e = next_of(&mut ws, "error").await;
        assert_eq!(e["error"]["code"], "unknown_event");
        ws.send(Message::text(r#"{"type":"response.cancel"}"#))
            .await
            .unwrap();
        let e = next_of(&mut ws, "error").await;
        assert_eq!(e["error"]["code"], "response_cancel_not_active");
    }

    #[tokio::test]
    async fn caller_speech_interrupts_and_gets_an_answer() {
        let mut cfg = FakeConfig::instant();
        cfg.chunk_interval = Duration::from_millis(200);
        let fake = FakeRealtime::start(cfg).await.unwrap();
        let mut ws = connect(&fake).await;
        ws.send(Message::text(session_update())).await.unwrap();
        ws.send(Message::text(
            r#"{"type":"response.create","response":{"instructions":"greet"}}"#,
        ))
        .await
        .unwrap();
        let delta = next_of(&mut ws, "response.output_audio.delta").await;
        let item = delta["item_id"].as_str().unwrap().to_string();
        let speech = clips::question();
        for frame in speech
            .mulaw
            .chunks(160)
            .chain(audio::silence(700).chunks(160))
        {
            let m = json!({"type": "input_audio_buffer.append", "audio": STANDARD.encode(frame)});
            ws.send(Message::text(m.to_string())).await.unwrap();
        }
        let started = next_of(&mut ws, "input_audio_buffer.speech_started").await;
        assert!(started["audio_start_ms"].as_u64().unwrap() < 500);
        let cancelled = next_of(&mut ws, "response.done").await;
        assert_eq!(cancelled["response"]["status"], "cancelled");
        assert_eq!(
            cancelled["response"]["status_details"]["reason"],
            "turn_detected"
        );
        // Silence after the question ends the turn: transcript, then an automatic answer.
        next_of(&mut ws, "input_audio_buffer.speech_stopped").await;
        next_of(
            &mut ws,
            "conversation.item.input_audio_transcription.completed",
        )
        .await;
        let answer = next_of(&mut ws, "response.created").await;
        assert_ne!(answer["response"]["id"], delta["response_id"]);
        ws.send(Message::text(json!({"type": "conversation.item.truncate", "item_id": item, "content_index": 0, "audio_end_ms": 50}).to_string())).await.unwrap();
        let t = next_of(&mut ws, "conversation.item.truncated").await;
        assert_eq!(t["audio_end_ms"], 50);
        ws.send(Message::text(json!({"type": "conversation.item.truncate", "item_id": item, "content_index": 0, "audio_end_ms": 999_999}).to_string())).await.unwrap();
        let e = next_of(&mut ws, "error").await;
        assert_eq!(e["error"]["code"], "invalid_value");
    }

    #[tokio::test]
    async fn down_and_hang_modes() {
        let mut cfg = FakeConfig::instant();
        cfg.mode = Mode::Down;
        let fake = FakeRealtime::start(cfg).await.unwrap();
        let mut req = fake.url().into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", "Bearer x".parse().unwrap());
        assert!(tokio_tungstenite::connect_async(req.clone()).await.is_err());
        fake.set_config(|c| c.mode = Mode::Hang);
        let hung = tokio::time::timeout(
            Duration::from_millis(200),
            tokio_tungstenite::connect_async(req),
        )
        .await;
        assert!(hung.is_err(), "handshake never completes");
        assert_eq!(fake.connection_attempts(), 2);
        assert_eq!(fake.connections_opened(), 0);
    }
}
