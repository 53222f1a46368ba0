//! A fake OpenAI GPT-Live server (`/v1/live/sessions`) on loopback, faithful to
//! docs/gpt-live-reference.md (§1.3, §1.4, §2, §3, §4, §6, §8): bearer auth, nothing sent
//! before `session.start`, a strictly validated session answered by `session.started`, strict
//! client events, and a session clock that advances **only** with the caller audio it consumes.
//!
//! For every 100 ms of consumed input the fake sends one `session.output_audio.delta` of
//! 100 ms of output: the output track is continuous, silence included, and stands still when no
//! audio comes in (the model only advances while input flows, §3). On that track:
//! - `session.*.append` are placed at the next 100 ms boundary the clock passes
//!   (`session.*.appended`); a commentary worded as an instruction makes the model speak (the
//!   `greeting` clip first, then `answer`, or `goodbye` when asked for one);
//! - an energy VAD follows the caller: a caller who starts talking over the model makes it yield
//!   (silence from then on), and the end of the caller's turn gets an answer, or a scripted
//!   Responses delegation (function calls) when one is queued ([`FakeLive::script`]);
//! - transcripts (`session.output_transcript.delta`, `session.input_transcript.delta`) fall on
//!   200 ms timeline windows; `session.usage.updated` comes every 15 s of timeline;
//! - `session.close` ends with `session.closed` (`close_requested`) and the socket's close; the
//!   timeline reaching [`FakeConfig::session_seconds`] ends it with `expired`.
//!
//! Only `audio/pcmu` (8 kHz μ-law, what warmline uses) is spoken and listened to: a session in
//! `audio/pcma` or `audio/pcm` is accepted and timed (bytes per ms of its format) but its track
//! carries only that format's silence and its input is not listened to.
//!
//! Like the Realtime fake it records what it saw per connection (events received, errors sent,
//! the timeline, the speech it made, the caller's turns) so tests can assert on it.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
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

/// The path the fake serves.
pub const PATH: &str = "/v1/live/sessions";

/// The client events of the primary WebSocket (docs/gpt-live-reference.md §2.1), in the order
/// the unknown-event error lists them.
pub const CLIENT_EVENTS: &[&str] = &[
    "session.start",
    "session.update",
    "session.input_audio.append",
    "session.input_audio.mute",
    "session.input_audio.unmute",
    "session.output_audio.fixture.play",
    "session.instructions.append",
    "session.thinking.append",
    "session.commentary.append",
    "response.item.create",
    "response.create",
    "decision.create",
    "decision.item.create",
    "decision.item.delete",
    "session.close",
];

/// Output audio per `session.output_audio.delta`, ms of timeline (docs/gpt-live-reference.md
/// §2.3: ≈100 ms per delta).
pub const DELTA_MS: u64 = 100;
/// Transcript fragments fall on windows of this many ms of timeline (§2.3).
pub const TRANSCRIPT_MS: u64 = 200;
/// `session.usage.updated` every this many ms of timeline (§8).
pub const USAGE_EVERY_MS: u64 = 15_000;
/// The most an append's `content` may hold, in tokens (§2.1, §6).
pub const APPEND_MAX_TOKENS: usize = 500;

/// Settings (changeable at runtime through [`FakeLive::set_config`]; a connection reads them
/// when it opens and when its session starts).
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// Delay before the WebSocket handshake completes.
    pub connect_delay: Duration,
    /// Delay from `session.start` to `session.started` (events sent meanwhile wait, in order).
    pub session_started_delay: Duration,
    /// Session length in seconds of **timeline** (the real `expires_at` is wall-clock; timeline
    /// seconds make expiry testable): the session closes `expired` when its clock gets there.
    /// `expires_at` is `session.start` time plus this many seconds.
    pub session_seconds: u64,
    /// Record `session.input_audio.append` events and the output track in the log (off for
    /// load tests).
    pub record_audio: bool,
    /// Refuse every `session.start` as if this session parameter were unknown (a field the
    /// account or model does not take): `unknown_parameter` with this `param`.
    pub refuse_start: Option<String>,
    /// Relay-delay stamps (load generator): caller audio appended is timed, and each output
    /// delta that carries speech is tagged and timed (silence is not: the gateway does not relay
    /// it, and a tag would make it speech).
    pub stamps: Option<Arc<crate::stamp::Stamps>>,
}

impl Default for FakeConfig {
    /// Latencies resembling the real API (docs/gpt-live-reference.md §1.2: `session.started`
    /// ≈0.45 s after the socket opened) and a 30 min session.
    fn default() -> Self {
        Self {
            connect_delay: Duration::from_millis(300),
            session_started_delay: Duration::from_millis(450),
            session_seconds: 30 * 60,
            record_audio: true,
            refuse_start: None,
            stamps: None,
        }
    }
}

impl FakeConfig {
    /// No delays at all (unit and integration tests).
    pub fn instant() -> Self {
        Self {
            connect_delay: Duration::ZERO,
            session_started_delay: Duration::ZERO,
            ..Self::default()
        }
    }
}

/// Something the model said (or a fixture it played) on the output track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeechSegment {
    /// The clip: `greeting`, `answer`, `goodbye`, or `fixture`.
    pub clip: String,
    /// Where it started on the timeline, ms.
    pub start_ms: u64,
    /// Where it ended (its end, or where it was cut), ms.
    pub end_ms: u64,
    /// The caller talked over it and the model yielded.
    pub cut_by_caller: bool,
}

/// One caller turn, as the fake's VAD heard it (timeline ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallerTurn {
    /// First speech.
    pub start_ms: u64,
    /// Last speech.
    pub end_ms: u64,
}

/// What one connection saw and did.
#[derive(Debug, Clone, Default)]
pub struct ConnectionLog {
    /// Whether an `Authorization: Bearer` header was present (always, on a logged connection).
    pub authorized: bool,
    /// Client events in order (`(invalid json)` for a frame that is not a JSON object;
    /// audio appends only with [`FakeConfig::record_audio`]).
    pub events: Vec<Received>,
    /// `error.code` of every error event the fake sent, in order.
    pub errors_sent: Vec<String>,
    /// Whether the socket is still open.
    pub open: bool,
    /// The resolved session as last sent (`session.started` or `session.updated`).
    pub session: Option<Value>,
    /// The session clock: ms of input audio consumed.
    pub timeline_ms: u64,
    /// `session.output_audio.delta` events sent.
    pub output_deltas: usize,
    /// The output track as sent, in the session's format (with [`FakeConfig::record_audio`]).
    pub output_audio: Vec<u8>,
    /// What the model said, in order.
    pub speech: Vec<SpeechSegment>,
    /// The caller's turns, in order.
    pub caller_turns: Vec<CallerTurn>,
    /// Scripted calls not made because the session declared no function of that name.
    pub skipped_calls: Vec<String>,
    /// `session.closed.reason`, once sent.
    pub closed: Option<String>,
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
    changed: Notify,
    ids: AtomicU64,
    /// Bumped to drop every open connection (an outage mid-call).
    kill: watch::Sender<u64>,
    /// Scripted delegations, taken in order by the caller turns that end in a Responses
    /// delegation session (any connection).
    script: Mutex<VecDeque<Scripted>>,
}

/// A running fake.
pub struct FakeLive {
    addr: SocketAddr,
    config: watch::Sender<FakeConfig>,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeLive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeLive {
    /// Starts on 127.0.0.1 with an OS-chosen port.
    pub async fn start(config: FakeConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = watch::channel(config);
        let shared = Arc::new(Shared {
            connections: Mutex::default(),
            opened: AtomicUsize::default(),
            open: AtomicUsize::default(),
            changed: Notify::new(),
            ids: AtomicU64::default(),
            kill: watch::channel(0).0,
            script: Mutex::default(),
        });
        let task = tokio::spawn(accept_loop(listener, rx, shared.clone()));
        Ok(Self {
            addr,
            config: tx,
            shared,
            task,
        })
    }

    /// `ws://127.0.0.1:PORT/v1/live/sessions`.
    pub fn url(&self) -> String {
        format!("ws://{}{PATH}", self.addr)
    }

    /// Changes behaviour for new connections and sessions.
    pub fn set_config(&self, f: impl FnOnce(&mut FakeConfig)) {
        self.config.send_modify(f);
    }

    /// Drops every open connection abruptly (no `session.closed`, no close frame).
    pub fn drop_connections(&self) {
        self.shared.kill.send_modify(|n| *n += 1);
    }

    /// Queues a Responses delegation: the next caller turn that ends (any connection whose
    /// session uses `delegation.type:"responses"` and holds no unanswered delegation) makes
    /// these function calls instead of an answer. A call whose name the session did not declare
    /// in `delegation.responses.tools` is never made (it is logged in
    /// [`ConnectionLog::skipped_calls`]); with none left the turn gets its answer. `speak` is
    /// ignored (the model speaks after the results).
    pub fn script(&self, r: Scripted) {
        self.shared
            .script
            .lock()
            .expect("fake live script lock")
            .push_back(r);
    }

    /// Successful WebSocket connections so far.
    pub fn connections_opened(&self) -> usize {
        self.shared.opened.load(Ordering::SeqCst)
    }

    /// WebSocket connections open now.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
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
            .expect("fake live log lock")
            .clone()
    }
}

async fn accept_loop(
    listener: TcpListener,
    config: watch::Receiver<FakeConfig>,
    shared: Arc<Shared>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(serve(tcp, config.clone(), shared.clone()));
    }
}

async fn serve(tcp: TcpStream, config: watch::Receiver<FakeConfig>, shared: Arc<Shared>) {
    let _ = tcp.set_nodelay(true);
    let delay = config.borrow().connect_delay;
    tokio::time::sleep(delay).await;
    let mut log = ConnectionLog::default();
    // The signature is tungstenite's, large error type included.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let refuse = |status: StatusCode, why: &str| {
            let mut e = ErrorResponse::new(Some(why.into()));
            *e.status_mut() = status;
            e
        };
        if req.uri().path() != PATH {
            return Err(refuse(StatusCode::NOT_FOUND, "no such endpoint"));
        }
        log.authorized = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Bearer ") && v.len() > 7);
        if !log.authorized {
            return Err(refuse(StatusCode::UNAUTHORIZED, "missing bearer token"));
        }
        // The URL takes no query parameters; the model goes in `session.start`
        // (docs/gpt-live-reference.md §1.1). That the real server refuses one with 400 is
        // unverified (§8).
        if req.uri().query().is_some() {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "query parameters are not accepted; send the model in session.start",
            ));
        }
        Ok(resp)
    };
    let Ok(ws) =
        tokio_tungstenite::accept_hdr_async_with_config(tcp, callback, Some(crate::ws_config()))
            .await
    else {
        return;
    };
    let index = {
        let mut all = shared.connections.lock().expect("fake live log lock");
        log.open = true;
        all.push(log);
        all.len() - 1
    };
    shared.opened.fetch_add(1, Ordering::SeqCst);
    shared.open.fetch_add(1, Ordering::SeqCst);
    shared.changed.notify_waiters();
    Conn::new(index, config, shared.clone()).run(ws).await;
    shared.open.fetch_sub(1, Ordering::SeqCst);
    if let Some(c) = shared
        .connections
        .lock()
        .expect("fake live log lock")
        .get_mut(index)
    {
        c.open = false;
    }
    shared.changed.notify_waiters();
}

/// An error to send: `error.code`, `error.message`, `error.param`.
#[derive(Debug)]
struct Refusal {
    code: &'static str,
    message: String,
    param: Option<String>,
}

impl Refusal {
    fn new(code: &'static str, message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            code,
            message: message.into(),
            param: param.map(str::to_string),
        }
    }

    fn unknown(param: &str) -> Self {
        Self::new(
            "unknown_parameter",
            format!("Unknown parameter: '{param}'."),
            Some(param),
        )
    }

    fn missing(param: &str) -> Self {
        Self::new(
            "missing_required_parameter",
            format!("Missing required parameter: '{param}'."),
            Some(param),
        )
    }

    fn invalid_type(param: &str, expected: &str) -> Self {
        Self::new(
            "invalid_type",
            format!("Invalid type for '{param}': expected {expected}."),
            Some(param),
        )
    }

    fn invalid_value(param: &str, message: impl Into<String>) -> Self {
        Self::new("invalid_value", message, Some(param))
    }
}

type Checked<T> = Result<T, Refusal>;

/// `v` as an object whose keys are all in `allowed` (`path` names it in errors: `session`,
/// `session.audio`, …; empty for a client event's top level).
fn object<'a>(v: &'a Value, path: &str, allowed: &[&str]) -> Checked<&'a Map<String, Value>> {
    let Some(map) = v.as_object() else {
        return Err(Refusal::invalid_type(path, "an object"));
    };
    if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(Refusal::unknown(&join(path, k)));
    }
    Ok(map)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn string<'a>(v: &'a Value, path: &str) -> Checked<&'a str> {
    v.as_str()
        .ok_or_else(|| Refusal::invalid_type(path, "a string"))
}

/// Tokens of a text, approximated as one per 4 characters (rounded up).
pub fn approx_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4)
}

/// The audio format of a session (docs/gpt-live-reference.md §1.3: one format both ways).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Pcmu,
    Pcma,
    Pcm(u32),
}

impl Format {
    fn bytes_per_ms(self) -> usize {
        match self {
            Self::Pcmu | Self::Pcma => 8,
            Self::Pcm(rate) => rate as usize / 1000 * 2,
        }
    }

    fn silence(self) -> u8 {
        match self {
            Self::Pcmu => audio::SILENCE,
            Self::Pcma => 0xD5,
            Self::Pcm(_) => 0,
        }
    }
}

/// `session.audio.format` (§1.3): pcmu/pcma at 8000, pcm at 16000 or 24000; `rate` required.
fn check_format(v: &Value) -> Checked<Format> {
    let path = "session.audio.format";
    let f = object(v, path, &["type", "rate"])?;
    let kind = string(
        f.get("type")
            .ok_or_else(|| Refusal::missing("session.audio.format.type"))?,
        "session.audio.format.type",
    )?;
    let rate_param = "session.audio.format.rate";
    let rate = f.get("rate").ok_or_else(|| Refusal::missing(rate_param))?;
    let Some(rate) = rate.as_u64() else {
        return Err(Refusal::invalid_type(rate_param, "an integer"));
    };
    match (kind, rate) {
        ("audio/pcmu", 8000) => Ok(Format::Pcmu),
        ("audio/pcma", 8000) => Ok(Format::Pcma),
        ("audio/pcm", 16000 | 24000) => Ok(Format::Pcm(rate as u32)),
        ("audio/pcmu" | "audio/pcma", _) => Err(Refusal::invalid_value(
            rate_param,
            format!("Invalid value: {rate}. '{kind}' supports only a rate of 8000."),
        )),
        ("audio/pcm", _) => Err(Refusal::invalid_value(
            rate_param,
            format!("Invalid value: {rate}. 'audio/pcm' supports rates 16000 and 24000."),
        )),
        (other, _) => Err(Refusal::invalid_value(
            "session.audio.format.type",
            format!(
                "Invalid value: '{other}'. Supported values are: 'audio/pcm', 'audio/pcmu' and 'audio/pcma'."
            ),
        )),
    }
}

fn is_function_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The delegation kinds (docs/gpt-live-reference.md §1.3, §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DelegationKind {
    Client,
    Responses,
    Decisions,
}

/// Checks a `delegation` object (§1.3, §1.7). `sparse`: a `session.update` (nothing required,
/// the type may be left out). Returns its type when given.
fn check_delegation(v: &Value, path: &str, sparse: bool) -> Checked<Option<DelegationKind>> {
    let d = v
        .as_object()
        .ok_or_else(|| Refusal::invalid_type(path, "an object or null"))?;
    let kind = match d.get("type") {
        None if sparse => None,
        None => return Err(Refusal::missing(&join(path, "type"))),
        Some(t) => Some(match string(t, &join(path, "type"))? {
            "client" => DelegationKind::Client,
            "responses" => DelegationKind::Responses,
            "decisions" => DelegationKind::Decisions,
            other => {
                return Err(Refusal::invalid_value(
                    &join(path, "type"),
                    format!(
                        "Invalid value: '{other}'. Supported values are: 'client', 'responses' and 'decisions'."
                    ),
                ));
            }
        }),
    };
    let mut allowed = vec!["type", "acknowledgement_delay_ms"];
    match kind {
        Some(DelegationKind::Responses) => allowed.push("responses"),
        Some(DelegationKind::Decisions) => allowed.push("decisions"),
        Some(DelegationKind::Client) => {}
        // A sparse update without a type: the settings of whichever it is.
        None => allowed.extend(["responses", "decisions"]),
    }
    object(v, path, &allowed)?;
    if let Some(ms) = d.get("acknowledgement_delay_ms")
        && ms.as_u64().is_none()
    {
        return Err(Refusal::invalid_type(
            &join(path, "acknowledgement_delay_ms"),
            "a non-negative integer",
        ));
    }
    if kind == Some(DelegationKind::Responses) && !sparse && !d.contains_key("responses") {
        return Err(Refusal::missing(&join(path, "responses")));
    }
    if let Some(r) = d.get("responses") {
        let rp = join(path, "responses");
        let r = object(
            r,
            &rp,
            &[
                "model",
                "instructions",
                "max_output_tokens",
                "parallel_tool_calls",
                "reasoning",
                "text",
                "service_tier",
                "tool_choice",
                "tools",
            ],
        )?;
        match r.get("model") {
            Some(m) => {
                string(m, &join(&rp, "model"))?;
            }
            None if !sparse => return Err(Refusal::missing(&join(&rp, "model"))),
            None => {}
        }
        if let Some(v) = r.get("instructions") {
            string(v, &join(&rp, "instructions"))?;
        }
        if let Some(v) = r.get("reasoning") {
            object(v, &join(&rp, "reasoning"), &["effort", "summary"])?;
        }
        if let Some(v) = r.get("text") {
            object(v, &join(&rp, "text"), &["verbosity"])?;
        }
        if let Some(tools) = r.get("tools") {
            let tp = join(&rp, "tools");
            let tools = tools
                .as_array()
                .ok_or_else(|| Refusal::invalid_type(&tp, "an array"))?;
            for (i, t) in tools.iter().enumerate() {
                let ip = format!("{tp}[{i}]");
                let kind = t
                    .get("type")
                    .ok_or_else(|| Refusal::missing(&join(&ip, "type")))?;
                // Hosted tools (web_search, mcp, …) have many settings of their own; only
                // function tools are checked key by key.
                if string(kind, &join(&ip, "type"))? == "function" {
                    let f = object(
                        t,
                        &ip,
                        &["type", "name", "description", "parameters", "strict"],
                    )?;
                    let name = string(
                        f.get("name")
                            .ok_or_else(|| Refusal::missing(&join(&ip, "name")))?,
                        &join(&ip, "name"),
                    )?;
                    if !is_function_name(name) {
                        return Err(Refusal::invalid_value(
                            &join(&ip, "name"),
                            format!(
                                "Invalid value: '{name}'. A function name must match ^[a-zA-Z0-9_-]{{1,64}}$."
                            ),
                        ));
                    }
                    if let Some(p) = f.get("parameters")
                        && !p.is_object()
                    {
                        return Err(Refusal::invalid_type(
                            &join(&ip, "parameters"),
                            "a JSON Schema object",
                        ));
                    }
                }
            }
        }
    }
    if let Some(dv) = d.get("decisions") {
        object(dv, &join(path, "decisions"), &["model", "questions"])?;
    }
    Ok(kind)
}

/// The function names a delegation declares (`responses.tools[*]` of type `function`).
fn function_names(delegation: &Value) -> Vec<String> {
    delegation["responses"]["tools"]
        .as_array()
        .map(|tools| {
            tools
                .iter()
                .filter(|t| t["type"] == "function")
                .filter_map(|t| t["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A session as `session.start` configured it.
struct Started {
    /// The resolved session (`session.started.session`, status aside).
    resource: Value,
    format: Format,
    delegation: DelegationKind,
    /// Function names declared under Responses delegation.
    tools: Vec<String>,
    /// Timeline ms at which the session expires.
    expires_ms: u64,
}

/// `session.start.session` checked (docs/gpt-live-reference.md §1.3, §1.4) and resolved.
fn check_session(s: Option<&Value>) -> Checked<(Value, Format, DelegationKind)> {
    let s = s.ok_or_else(|| Refusal::missing("session"))?;
    let map = object(
        s,
        "session",
        &[
            "model",
            "instructions",
            "input",
            "audio",
            "delegation",
            "store",
            "safety_identifier",
            "triggers",
        ],
    )?;
    let model = string(
        map.get("model")
            .ok_or_else(|| Refusal::missing("session.model"))?,
        "session.model",
    )?;
    let instructions = match map.get("instructions") {
        Some(v) => string(v, "session.instructions")?,
        None => "",
    };
    if approx_tokens(instructions) > 16_384 {
        return Err(Refusal::invalid_value(
            "session.instructions",
            "Instructions must not exceed 16384 tokens.",
        ));
    }
    let input = map.get("input").cloned().unwrap_or_else(|| json!([]));
    let messages = input
        .as_array()
        .ok_or_else(|| Refusal::invalid_type("session.input", "an array"))?;
    if messages.len() > 128 {
        return Err(Refusal::invalid_value(
            "session.input",
            "The startup input holds at most 128 messages.",
        ));
    }
    let mut input_tokens = 0;
    for (i, m) in messages.iter().enumerate() {
        let p = format!("session.input[{i}]");
        let msg = object(m, &p, &["role", "content", "type", "id", "status"])?;
        let role = string(
            msg.get("role")
                .ok_or_else(|| Refusal::missing(&join(&p, "role")))?,
            &join(&p, "role"),
        )?;
        let parts: &[&str] = match role {
            "developer" | "user" => &["input_text"],
            "assistant" => &["output_text", "text"],
            other => {
                return Err(Refusal::invalid_value(
                    &join(&p, "role"),
                    format!(
                        "Invalid value: '{other}'. Supported values are: 'developer', 'user' and 'assistant'."
                    ),
                ));
            }
        };
        if let Some(t) = msg.get("type")
            && t != "message"
        {
            return Err(Refusal::invalid_value(
                &join(&p, "type"),
                "Invalid value. Supported values are: 'message'.",
            ));
        }
        let cp = join(&p, "content");
        let content = msg
            .get("content")
            .ok_or_else(|| Refusal::missing(&cp))?
            .as_array()
            .ok_or_else(|| Refusal::invalid_type(&cp, "an array"))?;
        if content.len() != 1 {
            return Err(Refusal::invalid_value(
                &cp,
                "A startup message holds exactly one text part.",
            ));
        }
        let pp = format!("{cp}[0]");
        let part = object(&content[0], &pp, &["type", "text"])?;
        let kind = string(
            part.get("type")
                .ok_or_else(|| Refusal::missing(&join(&pp, "type")))?,
            &join(&pp, "type"),
        )?;
        if !parts.contains(&kind) {
            return Err(Refusal::invalid_value(
                &join(&pp, "type"),
                format!(
                    "Invalid value: '{kind}'. Supported values for a {role} message are: {parts:?}."
                ),
            ));
        }
        let text = string(
            part.get("text")
                .ok_or_else(|| Refusal::missing(&join(&pp, "text")))?,
            &join(&pp, "text"),
        )?;
        input_tokens += approx_tokens(text);
    }
    if input_tokens > 8_192 {
        return Err(Refusal::invalid_value(
            "session.input",
            "The startup input must not exceed 8192 tokens.",
        ));
    }
    let (format, voice) = match map.get("audio") {
        Some(a) => {
            let a = object(a, "session.audio", &["format", "output"])?;
            let format = match a.get("format") {
                Some(f) => check_format(f)?,
                None => Format::Pcm(24000),
            };
            let voice = match a.get("output") {
                Some(o) => {
                    let o = object(o, "session.audio.output", &["voice"])?;
                    match o.get("voice") {
                        None => json!("marin"),
                        Some(Value::String(v)) => json!(v),
                        Some(v @ Value::Object(_)) => {
                            let id = object(v, "session.audio.output.voice", &["id"])?
                                .get("id")
                                .ok_or_else(|| Refusal::missing("session.audio.output.voice.id"))?;
                            string(id, "session.audio.output.voice.id")?;
                            v.clone()
                        }
                        Some(_) => {
                            return Err(Refusal::invalid_type(
                                "session.audio.output.voice",
                                "a string or an object",
                            ));
                        }
                    }
                }
                None => json!("marin"),
            };
            (format, voice)
        }
        None => (Format::Pcm(24000), json!("marin")),
    };
    let (delegation, kind) = match map.get("delegation") {
        None | Some(Value::Null) => (json!({"type": "client"}), DelegationKind::Client),
        Some(d) => {
            let kind =
                check_delegation(d, "session.delegation", false)?.unwrap_or(DelegationKind::Client);
            (d.clone(), kind)
        }
    };
    if let Some(v) = map.get("store")
        && !v.is_boolean()
    {
        return Err(Refusal::invalid_type("session.store", "a boolean"));
    }
    if let Some(v) = map.get("safety_identifier") {
        string(v, "session.safety_identifier")?;
    }
    if let Some(v) = map.get("triggers")
        && !v.is_array()
    {
        return Err(Refusal::invalid_type("session.triggers", "an array"));
    }
    let (kind_name, rate) = match format {
        Format::Pcmu => ("audio/pcmu", 8000),
        Format::Pcma => ("audio/pcma", 8000),
        Format::Pcm(rate) => ("audio/pcm", rate),
    };
    // Resolved as the recorded `session.started` shows it (docs/gpt-live-reference.md §8):
    // instructions, audio with the voice and format, delegation (client by default), input.
    let mut resource = json!({
        "model": model,
        "instructions": instructions,
        "audio": {"output": {"voice": voice}, "format": {"type": kind_name, "rate": rate}},
        "delegation": delegation,
        "input": input,
    });
    for k in ["store", "safety_identifier", "triggers"] {
        if let Some(v) = map.get(k) {
            resource[k] = v.clone();
        }
    }
    Ok((resource, format, kind))
}

/// Whether a commentary is worded as an instruction to speak (docs/gpt-live-reference.md §3:
/// the greeting text itself, not worded as an instruction, makes the model wait for the caller).
/// The fake's rule: it asks for something to be said (greet, say, tell, ask, speak, …).
pub fn is_instruction(content: &str) -> bool {
    let c = content.to_lowercase();
    [
        "greet",
        "say ",
        "say:",
        "tell ",
        "ask ",
        "ask:",
        "speak",
        "let the caller know",
        "let the user know",
        "inform ",
        "announce",
        "explain",
        "repeat",
        "apologi",
        "confirm ",
        "answer the",
        "respond",
        "read ",
    ]
    .iter()
    .any(|w| c.contains(w))
}

/// Whether a commentary asks for a goodbye.
fn asks_goodbye(content: &str) -> bool {
    let c = content.to_lowercase();
    c.contains("bye") || c.contains("farewell")
}

fn floor_to(ms: u64, step: u64) -> u64 {
    ms / step * step
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A `*.append` waiting for the clock to place it.
struct Pending {
    /// `instructions`, `thinking` or `commentary`.
    kind: &'static str,
    content: String,
    /// The append's `event_id`.
    client_event_id: Option<String>,
}

/// Something the model will say when it gets the floor.
struct Say {
    name: &'static str,
    text: &'static str,
    audio: Option<Arc<[u8]>>,
    duration_ms: u64,
}

impl Say {
    fn clip(c: Clip) -> Self {
        Self {
            name: c.name,
            text: c.text,
            duration_ms: c.duration_ms() as u64,
            audio: Some(c.mulaw),
        }
    }
}

/// What is on the output track now.
struct Segment {
    name: &'static str,
    /// μ-law audio (`None`: a session format the fake does not speak; silence).
    audio: Option<Arc<[u8]>>,
    start: u64,
    duration_ms: u64,
    /// Where it was cut (the caller talked over it, or a fixture interrupted it).
    cut: Option<u64>,
    /// Its index in the log's `speech`.
    log_index: usize,
}

impl Segment {
    fn end(&self) -> u64 {
        let end = self.start + self.duration_ms;
        self.cut.map_or(end, |c| c.min(end))
    }
}

/// A Responses delegation waiting for its function outputs and a `response.create`
/// (docs/gpt-live-reference.md §4).
struct Held {
    id: String,
    /// Call ids without an output yet.
    open: Vec<String>,
    /// `end_call` among the calls: the continuation is a goodbye.
    ends_call: bool,
}

struct Conn {
    index: usize,
    config: watch::Receiver<FakeConfig>,
    shared: Arc<Shared>,
    out: mpsc::Sender<Message>,
    out_rx: Option<mpsc::Receiver<Message>>,
    /// `event_id` of the client event being handled (acks and errors echo it).
    current_event: Option<String>,
    session: Option<Started>,
    /// `session.closed` was sent: the socket closes.
    closing: bool,
    record_audio: bool,
    // The timeline.
    clock: u64,
    /// Input not yet a whole 20 ms frame.
    carry: Vec<u8>,
    decoded: Vec<u8>,
    vad: Vad,
    /// Timeline ms at the end of the last speech frame heard.
    heard_until: u64,
    /// The caller's current turn is transcribed up to this timeline ms.
    transcribed_to: u64,
    muted: bool,
    pending: Vec<Pending>,
    /// Instruction commentaries placed so far (the first is the greeting).
    commentaries: usize,
    current: Option<Segment>,
    queue: VecDeque<Say>,
    /// Output transcript words not sent yet: (timeline ms, text).
    words: VecDeque<(u64, String)>,
    held: Option<Held>,
    /// A fixture asked for, started at the next 100 ms boundary.
    fixture: Option<Arc<[u8]>>,
    fixture_playing: bool,
    /// Responses streaming events' `sequence_number`.
    sequence: u64,
    /// The load generator's stamps (read when the connection opens).
    stamps: Option<Arc<crate::stamp::Stamps>>,
    /// When `session.started` was sent: caller audio sent before then was held by the gateway.
    started_at: Option<Instant>,
    /// Caller audio (anything but silence) was appended: the gateway relays this session, so
    /// speech sent from now on is timed (earlier speech is the greeting, buffered while the
    /// phone rang).
    relaying: bool,
}

impl Conn {
    fn new(index: usize, config: watch::Receiver<FakeConfig>, shared: Arc<Shared>) -> Self {
        let (out, out_rx) = mpsc::channel(1024);
        let (record_audio, stamps) = {
            let c = config.borrow();
            (c.record_audio, c.stamps.clone())
        };
        Self {
            index,
            config,
            shared,
            out,
            out_rx: Some(out_rx),
            current_event: None,
            session: None,
            closing: false,
            record_audio,
            clock: 0,
            carry: Vec::new(),
            decoded: Vec::new(),
            vad: Vad::default(),
            heard_until: 0,
            transcribed_to: 0,
            muted: false,
            pending: Vec::new(),
            commentaries: 0,
            current: None,
            queue: VecDeque::new(),
            words: VecDeque::new(),
            held: None,
            fixture: None,
            fixture_playing: false,
            sequence: 0,
            stamps,
            started_at: None,
            relaying: false,
        }
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

    /// Sends a server event: `type`, a fresh `event_id`, `client_event_id` when the client event
    /// it answers had one (docs/gpt-live-reference.md §2), and `fields`.
    async fn event(&self, kind: &str, client_event_id: Option<&str>, fields: Value) {
        let mut v = json!({"type": kind, "event_id": self.id("event")});
        if let Some(c) = client_event_id {
            v["client_event_id"] = json!(c);
        }
        if let Value::Object(f) = fields {
            for (k, x) in f {
                v[k] = x;
            }
        }
        self.send(v).await;
    }

    /// An ack of the client event being handled.
    async fn ack(&self, kind: &str, fields: Value) {
        let c = self.current_event.clone();
        self.event(kind, c.as_deref(), fields).await;
    }

    /// An `error` event (`invalid_request_error`) about the client event being handled.
    async fn refuse(&self, r: Refusal) {
        let c = self.current_event.clone();
        self.error_for(r, c.as_deref()).await;
    }

    async fn error_for(&self, r: Refusal, client_event_id: Option<&str>) {
        self.log(|c| c.errors_sent.push(r.code.to_string()));
        let mut error = json!({"type": "invalid_request_error", "code": r.code,
            "message": r.message, "param": r.param});
        if let Some(c) = client_event_id {
            error["client_event_id"] = json!(c);
        }
        self.send(json!({"type": "error", "event_id": self.id("event"), "error": error}))
            .await;
    }

    fn record(&self, kind: &str, raw: &str) {
        if kind == "session.input_audio.append" && !self.record_audio {
            return;
        }
        self.log(|c| {
            c.events.push(Received {
                kind: kind.to_string(),
                raw: raw.to_string(),
                at: std::time::Instant::now(),
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
            .expect("fake live log lock")
            .get_mut(self.index)
        {
            f(c);
        }
    }

    async fn run(mut self, ws: tokio_tungstenite::WebSocketStream<TcpStream>) {
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
        let mut kill = self.shared.kill.subscribe();
        kill.mark_unchanged();
        // Nothing is sent before `session.start` (docs/gpt-live-reference.md §1.2).
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(Ok(Message::Text(text))) => self.on_text(text.as_str()).await,
                    Some(Ok(Message::Binary(_))) => {
                        self.record("(binary)", "");
                        self.current_event = None;
                        self.refuse(Refusal::new("invalid_json",
                            "Binary frames are not accepted; send JSON text frames.", None)).await;
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
                _ = kill.changed() => {
                    writer.abort();
                    break;
                }
            }
            if self.closing {
                break;
            }
        }
        drop(self.out);
        let _ = writer.await;
    }

    async fn on_text(&mut self, text: &str) {
        // Fast path for the frame that arrives 50 times a second per call.
        const APPEND: &str = r#"{"type":"session.input_audio.append","audio":""#;
        if self.session.is_some()
            && let Some(audio) = text
                .strip_prefix(APPEND)
                .and_then(|r| r.strip_suffix(r#""}"#))
            && !audio.contains('"')
        {
            self.record("session.input_audio.append", text);
            self.current_event = None;
            self.on_audio(audio).await;
            return;
        }
        let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) else {
            self.record("(invalid json)", text);
            self.current_event = None;
            self.refuse(Refusal::new(
                "invalid_json",
                "The message is not a valid JSON object.",
                None,
            ))
            .await;
            return;
        };
        let v = Value::Object(map);
        let kind = v["type"].as_str().unwrap_or("").to_string();
        self.current_event = v["event_id"].as_str().map(str::to_string);
        self.record(&kind, text);
        if let Err(r) = self.handle(&kind, &v).await {
            self.refuse(r).await;
        }
    }

    async fn handle(&mut self, kind: &str, v: &Value) -> Checked<()> {
        if v.get("type").is_none() {
            return Err(Refusal::missing("type"));
        }
        if !CLIENT_EVENTS.contains(&kind) {
            // The real error lists the supported client events (docs/gpt-live-reference.md
            // §1.4); its code and wording here are the fake's.
            let list = CLIENT_EVENTS
                .iter()
                .map(|e| format!("'{e}'"))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Refusal::invalid_value(
                "type",
                format!("Invalid value: '{kind}'. Supported values are: {list}."),
            ));
        }
        let fields: Option<&[&str]> = match kind {
            "session.start" | "session.update" => Some(&["type", "event_id", "session"]),
            "session.input_audio.append" | "session.output_audio.fixture.play" => {
                Some(&["type", "event_id", "audio"])
            }
            "session.instructions.append"
            | "session.thinking.append"
            | "session.commentary.append" => {
                Some(&["type", "event_id", "content", "delegation_id"])
            }
            "response.item.create" => Some(&["type", "event_id", "item"]),
            // The Decisions events are not modelled: their fields are not checked.
            "decision.create" | "decision.item.create" | "decision.item.delete" => None,
            _ => Some(&["type", "event_id"]),
        };
        if let Some(fields) = fields {
            object(v, "", fields)?;
        }
        if kind == "session.start" {
            return self.on_start(v).await;
        }
        if self.session.is_none() {
            // Code and wording are the fake's (docs/gpt-live-reference.md §1.2: `session.start`
            // comes first).
            return Err(Refusal::new(
                "session_not_started",
                format!(
                    "'{kind}' was sent before the session started: the first message must be session.start."
                ),
                None,
            ));
        }
        match kind {
            "session.update" => self.on_update(v).await,
            "session.input_audio.append" => {
                let audio = string(
                    v.get("audio").ok_or_else(|| Refusal::missing("audio"))?,
                    "audio",
                )?
                .to_string();
                self.on_audio(&audio).await;
                Ok(())
            }
            "session.input_audio.mute" => {
                self.muted = true;
                self.ack("session.input_audio.muted", json!({})).await;
                Ok(())
            }
            "session.input_audio.unmute" => {
                self.muted = false;
                self.ack("session.input_audio.unmuted", json!({})).await;
                Ok(())
            }
            "session.output_audio.fixture.play" => self.on_fixture(v).await,
            "session.instructions.append" => self.on_append("instructions", v),
            "session.thinking.append" => self.on_append("thinking", v),
            "session.commentary.append" => self.on_append("commentary", v),
            "response.item.create" => self.on_item_create(v),
            "response.create" => self.on_response_create().await,
            "session.close" => {
                self.close("close_requested").await;
                Ok(())
            }
            // decision.*
            _ => {
                if self.delegation() != DelegationKind::Decisions {
                    Err(Refusal::new(
                        "delegation_mismatch",
                        format!("{kind} requires Decisions delegation."),
                        None,
                    ))
                } else {
                    Err(Refusal::new(
                        "not_implemented",
                        format!("{kind}: the fake does not model the Decisions API."),
                        None,
                    ))
                }
            }
        }
    }

    fn delegation(&self) -> DelegationKind {
        self.session
            .as_ref()
            .map_or(DelegationKind::Client, |s| s.delegation)
    }

    async fn on_start(&mut self, v: &Value) -> Checked<()> {
        if self.session.is_some() {
            return Err(Refusal::new(
                "session_already_started",
                "The session has already started.",
                None,
            ));
        }
        if let Some(param) = self.config.borrow().refuse_start.clone() {
            return Err(Refusal::unknown(&param));
        }
        let (mut resource, format, delegation) = check_session(v.get("session"))?;
        let (delay, seconds) = {
            let c = self.config.borrow();
            (c.session_started_delay, c.session_seconds)
        };
        let id = self.id("live");
        resource["id"] = json!(id);
        resource["expires_at"] = json!(now_unix().saturating_add(seconds));
        resource["status"] = json!("active");
        let tools = function_names(&resource["delegation"]);
        self.session = Some(Started {
            resource: resource.clone(),
            format,
            delegation,
            tools,
            expires_ms: seconds.saturating_mul(1000),
        });
        // Events sent meanwhile wait (this connection reads nothing while it waits).
        tokio::time::sleep(delay).await;
        self.log(|c| c.session = Some(resource.clone()));
        self.ack("session.started", json!({"session": resource}))
            .await;
        self.started_at = Some(Instant::now());
        Ok(())
    }

    /// `session.update`: only `delegation` (sparse, same type) and `triggers` change
    /// (docs/gpt-live-reference.md §1.4).
    async fn on_update(&mut self, v: &Value) -> Checked<()> {
        let s = v
            .get("session")
            .ok_or_else(|| Refusal::missing("session"))?;
        let map = s
            .as_object()
            .ok_or_else(|| Refusal::invalid_type("session", "an object"))?;
        for k in map.keys() {
            match k.as_str() {
                "delegation" | "triggers" => {}
                "model" | "instructions" | "input" | "audio" | "store" | "safety_identifier" => {
                    return Err(Refusal::new(
                        "immutable_field_update",
                        format!("'session.{k}' cannot be changed after the session started."),
                        Some(&format!("session.{k}")),
                    ));
                }
                other => return Err(Refusal::unknown(&format!("session.{other}"))),
            }
        }
        let current = self.delegation();
        let mut merged = self.session.as_ref().expect("started").resource["delegation"].clone();
        if let Some(d) = map.get("delegation") {
            if d.is_null() {
                return Err(Refusal::new(
                    "immutable_field_update",
                    "The delegation type cannot be changed after the session started.",
                    Some("session.delegation"),
                ));
            }
            if let Some(kind) = check_delegation(d, "session.delegation", true)?
                && kind != current
            {
                return Err(Refusal::new(
                    "immutable_field_update",
                    "The delegation type cannot be changed after the session started.",
                    Some("session.delegation.type"),
                ));
            }
            let key = match current {
                DelegationKind::Responses => Some("responses"),
                DelegationKind::Decisions => Some("decisions"),
                DelegationKind::Client => None,
            };
            for (k, x) in d.as_object().into_iter().flatten() {
                if k == "type" {
                    continue;
                }
                if Some(k.as_str()) != key && k != "acknowledgement_delay_ms" {
                    return Err(Refusal::unknown(&format!("session.delegation.{k}")));
                }
                match (merged.get_mut(k), x) {
                    (Some(Value::Object(old)), Value::Object(new)) => {
                        for (nk, nv) in new {
                            old.insert(nk.clone(), nv.clone());
                        }
                    }
                    _ => merged[k] = x.clone(),
                }
            }
        }
        let session = self.session.as_mut().expect("started");
        session.resource["delegation"] = merged;
        session.tools = function_names(&session.resource["delegation"]);
        if let Some(t) = map.get("triggers") {
            if !t.is_array() {
                return Err(Refusal::invalid_type("session.triggers", "an array"));
            }
            session.resource["triggers"] = t.clone();
        }
        let resource = session.resource.clone();
        self.log(|c| c.session = Some(resource.clone()));
        self.ack("session.updated", json!({"session": resource}))
            .await;
        Ok(())
    }

    /// The three appends (docs/gpt-live-reference.md §2.1): `content` ≤500 tokens,
    /// `delegation_id` a required key (nullable), placed when the clock passes the next 100 ms
    /// boundary.
    fn on_append(&mut self, kind: &'static str, v: &Value) -> Checked<()> {
        let content = string(
            v.get("content")
                .ok_or_else(|| Refusal::missing("content"))?,
            "content",
        )?;
        let Some(delegation_id) = v.get("delegation_id") else {
            return Err(Refusal::missing("delegation_id"));
        };
        if self.fixture_playing || self.fixture.is_some() {
            return Err(Refusal::new(
                "fixture_playing",
                "Context appends are not accepted while a fixture plays.",
                None,
            ));
        }
        if approx_tokens(content) > APPEND_MAX_TOKENS {
            // The wording seen in practice (docs/gpt-live-reference.md §2.3).
            return Err(Refusal::invalid_value(
                "content",
                "Context append text must not exceed 500 tokens.",
            ));
        }
        match delegation_id {
            Value::Null => {}
            Value::String(id) => {
                // Not accepted under Responses delegation (§2.1); under client delegation it must
                // name a client delegation, and this fake creates none.
                let why = if self.delegation() == DelegationKind::Responses {
                    "delegation_id must be null under Responses delegation.".to_string()
                } else {
                    format!("Unknown delegation_id '{id}'.")
                };
                return Err(Refusal::invalid_value("delegation_id", why));
            }
            _ => return Err(Refusal::invalid_type("delegation_id", "a string or null")),
        }
        self.pending.push(Pending {
            kind,
            content: content.to_string(),
            client_event_id: self.current_event.clone(),
        });
        Ok(())
    }

    /// `session.output_audio.fixture.play`: base64 PCM16 24 kHz, ≤30 s
    /// (docs/gpt-live-reference.md §2.1). Interrupts the model and mutes input while it plays.
    async fn on_fixture(&mut self, v: &Value) -> Checked<()> {
        let b64 = string(
            v.get("audio").ok_or_else(|| Refusal::missing("audio"))?,
            "audio",
        )?;
        let Ok(pcm) = STANDARD.decode(b64) else {
            return Err(Refusal::invalid_value(
                "audio",
                "Invalid 'audio': expected base64-encoded PCM16 at 24 kHz.",
            ));
        };
        if pcm.len() % 2 != 0 || pcm.len() > 30 * 24_000 * 2 {
            return Err(Refusal::invalid_value(
                "audio",
                "Invalid 'audio': PCM16 at 24 kHz, at most 30 seconds.",
            ));
        }
        if self.fixture_playing || self.fixture.is_some() {
            return Err(Refusal::new(
                "fixture_already_playing",
                "A fixture is already playing.",
                None,
            ));
        }
        // 24 kHz PCM16 to 8 kHz μ-law: every third sample.
        let mulaw: Vec<u8> = pcm
            .chunks_exact(2)
            .step_by(3)
            .map(|s| audio::encode_sample(i16::from_le_bytes([s[0], s[1]])))
            .collect();
        self.fixture = Some(Arc::from(mulaw));
        self.fixture_playing = true;
        self.ack("session.output_audio.fixture.playing", json!({}))
            .await;
        Ok(())
    }

    /// `response.item.create`: Responses delegation only (docs/gpt-live-reference.md §2.1,
    /// §4); a `function_call_output` must answer an open call.
    fn on_item_create(&mut self, v: &Value) -> Checked<()> {
        if self.delegation() != DelegationKind::Responses {
            // The message seen in practice (docs/gpt-live-reference.md §2.3); the code is the
            // fake's.
            return Err(Refusal::new(
                "delegation_mismatch",
                "response.item.create requires Responses delegation.",
                None,
            ));
        }
        let item = v.get("item").ok_or_else(|| Refusal::missing("item"))?;
        if !item.is_object() {
            return Err(Refusal::invalid_type("item", "an object"));
        }
        let kind = string(
            item.get("type")
                .ok_or_else(|| Refusal::missing("item.type"))?,
            "item.type",
        )?;
        if kind != "function_call_output" {
            // Other Responses input items only add context.
            return Ok(());
        }
        object(item, "item", &["type", "call_id", "output", "id", "status"])?;
        let call_id = string(
            item.get("call_id")
                .ok_or_else(|| Refusal::missing("item.call_id"))?,
            "item.call_id",
        )?;
        match item.get("output") {
            None => return Err(Refusal::missing("item.output")),
            Some(Value::String(_) | Value::Array(_)) => {}
            Some(_) => {
                return Err(Refusal::invalid_type("item.output", "a string or an array"));
            }
        }
        let open = self
            .held
            .as_mut()
            .and_then(|h| h.open.iter().position(|c| c == call_id).map(|i| (h, i)));
        let Some((held, i)) = open else {
            return Err(Refusal::invalid_value(
                "item.call_id",
                format!("Invalid value: no open function call has call_id '{call_id}'."),
            ));
        };
        held.open.remove(i);
        Ok(())
    }

    /// `response.create`: once every open call has its output, the backend continues and the
    /// model speaks the result (docs/gpt-live-reference.md §4). With no delegation held it
    /// starts the backend.
    async fn on_response_create(&mut self) -> Checked<()> {
        if self.delegation() != DelegationKind::Responses {
            return Err(Refusal::new(
                "delegation_mismatch",
                "response.create requires Responses delegation.",
                None,
            ));
        }
        match self.held.take() {
            Some(h) if !h.open.is_empty() => {
                let missing = h.open.join("', '");
                self.held = Some(h);
                // The service refuses a partial batch (§4); code and wording are the fake's.
                Err(Refusal::new(
                    "function_call_output_missing",
                    format!(
                        "Every open function call needs a function_call_output before response.create: '{missing}' has none."
                    ),
                    None,
                ))
            }
            Some(h) => {
                self.continuation(&h.id, None, h.ends_call).await;
                Ok(())
            }
            None => {
                match self.take_script() {
                    Some(calls) => self.delegate(calls).await,
                    None => {
                        let (id, response_id) = self.delegation_created().await;
                        self.continuation(&id, Some(response_id), false).await;
                    }
                }
                Ok(())
            }
        }
    }

    /// One `session.input_audio.append` (base64 in the session format).
    async fn on_audio(&mut self, b64: &str) {
        let mut bytes = std::mem::take(&mut self.decoded);
        bytes.clear();
        if STANDARD.decode_vec(b64, &mut bytes).is_err() {
            self.decoded = bytes;
            self.refuse(Refusal::invalid_value(
                "audio",
                "Invalid 'audio': expected base64-encoded audio in the session's format.",
            ))
            .await;
            return;
        }
        let format = self.session.as_ref().expect("started").format;
        if let Some(st) = &self.stamps {
            let now = Instant::now();
            if !self.relaying && bytes.iter().any(|&b| b != format.silence()) {
                self.relaying = true;
            }
            st.inbound
                .received_since(b64, now, Some(self.started_at.unwrap_or(now)));
        }
        let mut carry = std::mem::take(&mut self.carry);
        if self.muted || self.fixture_playing {
            // Muted input is silence to the model (§2.1).
            carry.extend(std::iter::repeat_n(format.silence(), bytes.len()));
        } else {
            carry.extend_from_slice(&bytes);
        }
        self.decoded = bytes;
        let frame = 20 * format.bytes_per_ms();
        let mut used = 0;
        while carry.len() - used >= frame && !self.closing {
            self.on_frame(&carry[used..used + frame], format).await;
            used += frame;
        }
        carry.drain(..used);
        self.carry = carry;
        let clock = self.clock;
        self.log(|c| c.timeline_ms = clock);
    }

    /// 20 ms of consumed input: the clock moves, the VAD listens, and every 100 ms the model
    /// produces its next 100 ms.
    async fn on_frame(&mut self, frame: &[u8], format: Format) {
        self.clock += 20;
        let now = self.clock;
        let turn = if format == Format::Pcmu {
            self.vad.frame(frame)
        } else {
            // Other formats are not listened to.
            self.vad.frame(&[audio::SILENCE; audio::FRAME_BYTES])
        };
        if self.vad.last_was_speech() {
            self.heard_until = now;
        }
        match turn {
            Some(Turn::Started { at_ms }) => self.caller_started(now, at_ms).await,
            Some(Turn::Ended { start_ms, end_ms }) => self.caller_ended(start_ms, end_ms).await,
            None => {}
        }
        if now.is_multiple_of(DELTA_MS) {
            self.tick(now).await;
        }
    }

    /// The caller started talking (at `start_ms`; the VAD is sure at `now`): the transcript's
    /// first fragment comes now, in the window the speech started in (transcription streams
    /// while the caller talks, §2.3: a client learns of a turn from it); a model speaking
    /// yields (its speech stops now) and drops what it meant to say next. What it has to say
    /// while silent waits for the turn's end.
    async fn caller_started(&mut self, now: u64, start_ms: u64) {
        let window = floor_to(start_ms, TRANSCRIPT_MS);
        self.event(
            "session.input_transcript.delta",
            None,
            json!({"delta": FIRST_HEARD, "start_ms": window, "end_ms": window + TRANSCRIPT_MS}),
        )
        .await;
        self.transcribed_to = window + TRANSCRIPT_MS;
        if let Some(seg) = &mut self.current
            && seg.name != "fixture"
            && seg.end() > now
        {
            self.queue.clear();
            seg.cut = Some(now.max(seg.start));
            let i = seg.log_index;
            self.words.retain(|(at, _)| *at < now);
            self.log(|c| {
                if let Some(s) = c.speech.get_mut(i) {
                    s.end_ms = now;
                    s.cut_by_caller = true;
                }
            });
        }
    }

    /// The caller's turn ended: its transcript, then a scripted delegation or an answer.
    async fn caller_ended(&mut self, start_ms: u64, end_ms: u64) {
        self.log(|c| c.caller_turns.push(CallerTurn { start_ms, end_ms }));
        let spoke = (end_ms - start_ms) as f64 / 1000.0;
        // The rest of the turn's transcript, in the window its speech ended in.
        let last = floor_to(end_ms.saturating_sub(1), TRANSCRIPT_MS)
            .max(floor_to(start_ms, TRANSCRIPT_MS));
        self.event(
            "session.input_transcript.delta",
            None,
            json!({"delta": format!(" spoke for {spoke:.1} s)"), "start_ms": last, "end_ms": last + TRANSCRIPT_MS}),
        )
        .await;
        if self.delegation() == DelegationKind::Responses
            && self.held.is_none()
            && let Some(calls) = self.take_script()
        {
            self.delegate(calls).await;
            return;
        }
        self.queue.push_back(Say::clip(clips::answer()));
    }

    /// The next scripted delegation's calls this session may make (undeclared ones are
    /// logged and skipped); `None` with no script or no call left.
    fn take_script(&mut self) -> Option<Vec<ScriptedCall>> {
        let script = self
            .shared
            .script
            .lock()
            .expect("fake live script lock")
            .pop_front()?;
        let tools = &self.session.as_ref()?.tools;
        let (calls, skipped): (Vec<_>, Vec<_>) = script
            .calls
            .into_iter()
            .partition(|c| tools.contains(&c.name));
        if !skipped.is_empty() {
            self.log(|c| c.skipped_calls.extend(skipped.into_iter().map(|c| c.name)));
        }
        (!calls.is_empty()).then_some(calls)
    }

    /// `session.delegation.created` for a new Responses delegation; its id and the id of the
    /// backend response it starts.
    async fn delegation_created(&mut self) -> (String, String) {
        let id = self.id("item");
        let response_id = self.id("resp");
        self.event(
            "session.delegation.created",
            None,
            json!({"delegation": {"id": id, "type": "delegation", "target": "responses",
                "response_id": response_id}, "offset_ms": self.clock}),
        )
        .await;
        (id, response_id)
    }

    fn backend_model(&self) -> Value {
        self.session.as_ref().map_or(Value::Null, |s| {
            s.resource["delegation"]["responses"]["model"].clone()
        })
    }

    /// A backend response's events inside `response.event` (docs/gpt-live-reference.md §4):
    /// `response.created`, one `response.output_item.done` per item, `response.completed`
    /// (its snapshot `output` cleared). `id`: the response's id (`None`: a new one).
    async fn backend_response(
        &mut self,
        delegation_id: &str,
        id: Option<String>,
        items: Vec<Value>,
    ) {
        let id = id.unwrap_or_else(|| self.id("resp"));
        let model = self.backend_model();
        let mut events = vec![json!({"type": "response.created", "response": {"id": id,
            "object": "response", "status": "in_progress", "model": model, "output": []}})];
        for (i, item) in items.into_iter().enumerate() {
            events.push(
                json!({"type": "response.output_item.done", "output_index": i,
                "item": item}),
            );
        }
        events.push(json!({"type": "response.completed", "response": {"id": id,
            "object": "response", "status": "completed", "model": model, "output": [],
            "usage": {"input_tokens": 80, "output_tokens": 20, "total_tokens": 100}}}));
        for mut e in events {
            e["sequence_number"] = json!(self.sequence);
            self.sequence += 1;
            self.event(
                "response.event",
                None,
                json!({"delegation_id": delegation_id, "event": e}),
            )
            .await;
        }
    }

    /// The Responses delegation script (docs/gpt-live-reference.md §4, §8): created, the
    /// backend's function calls, then hold for their outputs and a `response.create`.
    async fn delegate(&mut self, calls: Vec<ScriptedCall>) {
        let (id, response_id) = self.delegation_created().await;
        let mut open = Vec::new();
        let mut items = Vec::new();
        for c in &calls {
            let call_id = self.id("call");
            items.push(
                json!({"type": "function_call", "id": self.id("fc"), "call_id": call_id,
                "name": c.name, "arguments": c.arguments, "status": "completed"}),
            );
            open.push(call_id);
        }
        self.backend_response(&id, Some(response_id), items).await;
        self.held = Some(Held {
            id,
            open,
            ends_call: calls.iter().any(|c| c.name == "end_call"),
        });
    }

    /// The backend continues after the function outputs; the voice model speaks the result
    /// (always: there is no silent close, §4). `response_id`: the backend response's id when
    /// the delegation just announced it (`None`: a new response, after the function outputs).
    async fn continuation(
        &mut self,
        delegation_id: &str,
        response_id: Option<String>,
        ends_call: bool,
    ) {
        self.backend_response(delegation_id, response_id, Vec::new())
            .await;
        self.queue.push_back(Say::clip(if ends_call {
            clips::goodbye()
        } else {
            clips::answer()
        }));
    }

    /// A 100 ms boundary `t` of the timeline.
    async fn tick(&mut self, t: u64) {
        let format = self.session.as_ref().expect("started").format;
        // 1. The output track's last 100 ms, silence included.
        let mut block = vec![format.silence(); DELTA_MS as usize * format.bytes_per_ms()];
        if let Some(seg) = &self.current
            && let Some(clip) = &seg.audio
        {
            let from = t - DELTA_MS;
            let (a, b) = (from.max(seg.start), t.min(seg.end()));
            let bpm = audio::BYTES_PER_MS;
            if a < b {
                let src = ((a - seg.start) as usize * bpm).min(clip.len())
                    ..((b - seg.start) as usize * bpm).min(clip.len());
                let at = (a - from) as usize * bpm;
                block[at..at + src.len()].copy_from_slice(&clip[src]);
            }
        }
        let speech = block.iter().any(|&b| b != format.silence());
        let payload = match &self.stamps {
            Some(st) if speech => {
                st.tag(&mut block);
                let p = STANDARD.encode(&block);
                if self.relaying {
                    st.outbound.sent(&p, Instant::now());
                } else {
                    st.outbound.held(&p);
                }
                p
            }
            _ => STANDARD.encode(&block),
        };
        let delta = format!(
            r#"{{"type":"session.output_audio.delta","event_id":"{}","delta":"{payload}"}}"#,
            self.id("event")
        );
        let _ = self.out.send(Message::text(delta)).await;
        let record = self.record_audio;
        self.log(|c| {
            c.output_deltas += 1;
            if record {
                c.output_audio.extend_from_slice(&block);
            }
        });
        if let Some(seg) = &self.current
            && seg.end() <= t
        {
            if seg.name == "fixture" {
                self.fixture_playing = false;
                self.event("session.output_audio.fixture.played", None, json!({}))
                    .await;
            }
            self.current = None;
        }
        // 2. The output transcript of the last 200 ms window.
        if t.is_multiple_of(TRANSCRIPT_MS) {
            let mut text = String::new();
            while let Some((at, _)) = self.words.front()
                && *at < t
            {
                text.push_str(&self.words.pop_front().expect("front").1);
            }
            if !text.is_empty() {
                self.event(
                    "session.output_transcript.delta",
                    None,
                    json!({"delta": text, "start_ms": t - TRANSCRIPT_MS, "end_ms": t}),
                )
                .await;
            }
        }
        // 2b. The caller's transcript streams while the caller talks: a fragment for each window
        //     with speech in it.
        if t.is_multiple_of(TRANSCRIPT_MS)
            && self.vad.in_speech()
            && self.heard_until > t - TRANSCRIPT_MS
            && t - TRANSCRIPT_MS >= self.transcribed_to
        {
            self.event(
                "session.input_transcript.delta",
                None,
                json!({"delta": HEARING, "start_ms": t - TRANSCRIPT_MS, "end_ms": t}),
            )
            .await;
            self.transcribed_to = t;
        }
        // 3. Appends are placed now, reported as the 200 ms window they fall in (the recorded
        //    acks span 200 ms windows, docs/gpt-live-reference.md §8).
        let window = floor_to(t, TRANSCRIPT_MS);
        for p in std::mem::take(&mut self.pending) {
            self.event(
                &format!("session.{}.appended", p.kind),
                p.client_event_id.as_deref(),
                json!({"start_ms": window, "end_ms": window + TRANSCRIPT_MS}),
            )
            .await;
            if p.kind == "commentary" && is_instruction(&p.content) {
                self.commentaries += 1;
                let clip = if self.commentaries == 1 {
                    clips::greeting()
                } else if asks_goodbye(&p.content) {
                    clips::goodbye()
                } else {
                    clips::answer()
                };
                self.queue.push_back(Say::clip(clip));
            }
        }
        // 4. A fixture interrupts the model; otherwise the model speaks what it has to say
        //    when it has the floor (not while the caller talks).
        if let Some(fixture) = self.fixture.take() {
            self.queue.clear();
            self.words.retain(|(at, _)| *at < t);
            if let Some(seg) = &mut self.current {
                seg.cut = Some(t);
                let i = seg.log_index;
                self.log(|c| {
                    if let Some(s) = c.speech.get_mut(i) {
                        s.end_ms = t;
                    }
                });
            }
            let duration_ms = (fixture.len() / audio::BYTES_PER_MS) as u64;
            self.start_segment(
                t,
                Say {
                    name: "fixture",
                    text: "",
                    audio: Some(fixture),
                    duration_ms,
                },
                format,
            );
        } else if self.current.is_none()
            && !self.vad.in_speech()
            && let Some(say) = self.queue.pop_front()
        {
            self.start_segment(t, say, format);
        }
        // 5. Usage, cumulative seconds of timeline.
        if t.is_multiple_of(USAGE_EVERY_MS) {
            self.event("session.usage.updated", None, self.usage(t))
                .await;
        }
        // 6. The session's length.
        if t >= self.session.as_ref().expect("started").expires_ms {
            self.close("expired").await;
        }
    }

    fn usage(&self, t: u64) -> Value {
        let seconds = t / 1000;
        // A small context filling slowly (the recorded ratio: ≈0.0089 at 7 s).
        let ratio = (seconds as f64 * 0.00125).min(1.0);
        json!({"usage": {"seconds": seconds}, "context_window": {"usage_ratio": ratio}})
    }

    fn start_segment(&mut self, t: u64, say: Say, format: Format) {
        // Only μ-law is spoken; other formats carry silence (see the module's doc).
        let audio = if format == Format::Pcmu {
            say.audio
        } else {
            None
        };
        let words = split_words(say.text);
        let n = words.len().max(1) as u64;
        for (i, w) in words.into_iter().enumerate() {
            self.words
                .push_back((t + say.duration_ms * i as u64 / n, w));
        }
        let mut log_index = 0;
        self.log(|c| {
            log_index = c.speech.len();
            c.speech.push(SpeechSegment {
                clip: say.name.to_string(),
                start_ms: t,
                end_ms: t + say.duration_ms,
                cut_by_caller: false,
            });
        });
        self.current = Some(Segment {
            name: say.name,
            audio,
            start: t,
            duration_ms: say.duration_ms,
            cut: None,
            log_index,
        });
    }

    /// Ends the session: one `context_injection_incomplete` per append never placed, then
    /// `session.closed` (docs/gpt-live-reference.md §2.2, §2.3); the socket closes after it.
    async fn close(&mut self, reason: &str) {
        for p in std::mem::take(&mut self.pending) {
            // The code seen in practice (§2.3); the wording is the fake's.
            self.error_for(
                Refusal::new(
                    "context_injection_incomplete",
                    format!(
                        "The {} append was not placed before the session closed.",
                        p.kind
                    ),
                    None,
                ),
                p.client_event_id.as_deref(),
            )
            .await;
        }
        let (mut session, clock) = match &self.session {
            Some(s) => (s.resource.clone(), self.clock),
            None => return,
        };
        session["status"] = json!("closed");
        let usage = self.usage(clock)["usage"].clone();
        let client = if reason == "close_requested" {
            self.current_event.clone()
        } else {
            None
        };
        self.event(
            "session.closed",
            client.as_deref(),
            json!({"reason": reason, "session": session, "usage": usage}),
        )
        .await;
        let reason = reason.to_string();
        self.log(|c| c.closed = Some(reason));
        self.closing = true;
    }
}

/// The caller's transcript: this fragment as the turn starts, [`HEARING`] for each 200 ms
/// window with speech after it, and ` spoke for 3.3 s)` at its end (the fake does not know the
/// words, only that someone talks and for how long): `(caller……… spoke for 3.3 s)`.
const FIRST_HEARD: &str = "(caller";
/// See [`FIRST_HEARD`].
const HEARING: &str = "…";

/// Words with their leading space ("Thanks", " for", …): joined, they give the text back.
fn split_words(text: &str) -> Vec<String> {
    text.split(' ')
        .enumerate()
        .filter(|(_, w)| !w.is_empty())
        .map(|(i, w)| {
            if i == 0 {
                w.to_string()
            } else {
                format!(" {w}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    use super::*;

    type Client = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

    async fn connect(fake: &FakeLive) -> Client {
        let mut req = fake.url().into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", "Bearer sk-test".parse().unwrap());
        tokio_tungstenite::connect_async(req).await.unwrap().0
    }

    async fn send(ws: &mut Client, v: Value) {
        ws.send(Message::text(v.to_string())).await.unwrap();
    }

    /// The next event; `None` once the socket is closed.
    async fn next(ws: &mut Client) -> Option<Value> {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .expect("an event within 10 s");
            match m {
                Some(Ok(Message::Text(t))) => {
                    return Some(serde_json::from_str(t.as_str()).unwrap());
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    }

    async fn next_of(ws: &mut Client, kind: &str) -> Value {
        loop {
            let v = next(ws)
                .await
                .unwrap_or_else(|| panic!("no {kind}: socket closed"));
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// Everything the fake sent until it handled what was sent before: a marker event it
    /// refuses (an unknown type) ends the batch.
    async fn sync(ws: &mut Client) -> Vec<Value> {
        send(ws, json!({"type": "test.sync", "event_id": "sync"})).await;
        let mut got = Vec::new();
        loop {
            let v = next(ws).await.expect("socket open");
            if v["type"] == "error" && v["error"]["client_event_id"] == "sync" {
                return got;
            }
            got.push(v);
        }
    }

    fn of<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
        events.iter().filter(|e| e["type"] == kind).collect()
    }

    /// Sends audio as appends of 200 ms.
    async fn feed(ws: &mut Client, bytes: &[u8]) {
        for chunk in bytes.chunks(1600) {
            send(
                ws,
                json!({"type": "session.input_audio.append", "audio": STANDARD.encode(chunk)}),
            )
            .await;
        }
    }

    fn pcmu_session() -> Value {
        json!({"model": "gpt-live-1", "instructions": "You answer calls for a shop. Be brief.",
            "audio": {"format": {"type": "audio/pcmu", "rate": 8000}, "output": {"voice": "marin"}}})
    }

    fn responses_session() -> Value {
        let mut s = pcmu_session();
        s["delegation"] = json!({"type": "responses", "responses": {"model": "gpt-5.5",
            "instructions": "Use the tools.", "tools": [
                {"type": "function", "name": "business_hours", "description": "Opening hours",
                 "parameters": {"type": "object", "properties": {}}},
                {"type": "function", "name": "end_call", "description": "Hang up",
                 "parameters": {"type": "object", "properties": {}}}]}});
        s
    }

    async fn started(fake: &FakeLive, session: Value) -> Client {
        let mut ws = connect(fake).await;
        send(
            &mut ws,
            json!({"type": "session.start", "session": session}),
        )
        .await;
        next_of(&mut ws, "session.started").await;
        ws
    }

    const GREET: &str = "Greet the caller now. Do not wait for the caller to speak first.";

    fn commentary(content: &str, event_id: &str) -> Value {
        json!({"type": "session.commentary.append", "event_id": event_id, "content": content,
            "delegation_id": null})
    }

    fn decoded(delta: &Value) -> Vec<u8> {
        STANDARD.decode(delta["delta"].as_str().unwrap()).unwrap()
    }

    #[tokio::test]
    async fn without_a_bearer_token_or_with_a_query_the_handshake_is_refused() {
        let fake = FakeLive::start(FakeConfig::instant()).await.unwrap();
        let err = tokio_tungstenite::connect_async(fake.url())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("401"), "{err}");
        let mut req = format!("{}?model=gpt-live-1", fake.url())
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("authorization", "Bearer sk-test".parse().unwrap());
        let err = tokio_tungstenite::connect_async(req).await.unwrap_err();
        assert!(err.to_string().contains("400"), "{err}");
        assert_eq!(fake.connections_opened(), 0);
        connect(&fake).await;
        assert_eq!(fake.connections_opened(), 1);
        assert!(fake.connections()[0].authorized);
    }

    #[tokio::test]
    async fn nothing_before_session_start_and_session_start_first() {
        let fake = FakeLive::start(FakeConfig::instant()).await.unwrap();
        let mut ws = connect(&fake).await;
        let quiet = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
        assert!(
            quiet.is_err(),
            "a passive socket receives nothing: {quiet:?}"
        );
        send(&mut ws, json!({"type": "session.input_audio.append", "audio": STANDARD.encode(audio::silence(20))})).await;
        let e = next_of(&mut ws, "error").await;
        assert_eq!(e["error"]["code"], "session_not_started");
        send(&mut ws, commentary(GREET, "c1")).await;
        let e = next_of(&mut ws, "error").await;
        assert_eq!(e["error"]["code"], "session_not_started");
        assert_eq!(e["error"]["client_event_id"], "c1");
        send(
            &mut ws,
            json!({"type": "session.start", "session": pcmu_session()}),
        )
        .await;
        next_of(&mut ws, "session.started").await;
        send(
            &mut ws,
            json!({"type": "session.start", "session": pcmu_session()}),
        )
        .await;
        let e = next_of(&mut ws, "error").await;
        assert_eq!(e["error"]["code"], "session_already_started");
        assert!(
            fake.wait_event("session.start", 2, Duration::from_secs(5))
                .await
        );
        assert_eq!(
            fake.connections()[0].errors_sent,
            [
                "session_not_started",
                "session_not_started",
                "session_already_started"
            ]
        );
    }

    #[tokio::test]
    async fn the_session_is_validated_strictly() {
        let fake = FakeLive::start(FakeConfig::instant()).await.unwrap();
        let mut ws = connect(&fake).await;
        let mut refused = async |session: Value, extra: Option<(&str, Value)>| {
            let mut ev = json!({"type": "session.start", "session": session});
            if let Some((k, v)) = extra {
                ev[k] = v;
            }
            send(&mut ws, ev).await;
            next_of(&mut ws, "error").await["error"].clone()
        };
        let mut s = pcmu_session();
        s["audio"]["output"]["speed"] = json!(1.1);
        let e = refused(s, None).await;
        assert_eq!(e["type"], "invalid_request_error");
        assert_eq!(e["code"], "unknown_parameter");
        assert_eq!(e["param"], "session.audio.output.speed");
        let mut s = pcmu_session();
        s["turn_detection"] = json!({"type": "server_vad"});
        let e = refused(s, None).await;
        assert_eq!(
            (&e["code"], &e["param"]),
            (
                &json!("unknown_parameter"),
                &json!("session.turn_detection")
            )
        );
        let mut s = pcmu_session();
        s.as_object_mut().unwrap().remove("model");
        let e = refused(s, None).await;
        assert_eq!(
            (&e["code"], &e["param"]),
            (
                &json!("missing_required_parameter"),
                &json!("session.model")
            )
        );
        let mut s = pcmu_session();
        s["audio"]["format"]["rate"] = json!(16000);
        let e = refused(s, None).await;
        assert_eq!(
            (&e["code"], &e["param"]),
            (&json!("invalid_value"), &json!("session.audio.format.rate"))
        );
        let mut s = pcmu_session();
        s["audio"]["format"] = json!({"type": "audio/pcm", "rate": 8000});
        let e = refused(s, None).await;
        assert_eq!(
            (&e["code"], &e["param"]),
            (&json!("invalid_value"), &json!("session.audio.format.rate"))
        );
        let mut s = pcmu_session();
        s["audio"]["format"] = json!({"type": "audio/pcmu"});
        let e = refused(s, None).await;
        assert_eq!(
            (&e["code"], &e["param"]),
            (
                &json!("missing_required_parameter"),
                &json!("session.audio.format.rate")
            )
        );
        let mut s = responses_session();
        s["delegation"]["responses"]["tools"][1]["cache"] = json!(true);
        let e = refused(s, None).await;
        assert_eq!(
            (&e["code"], &e["param"]),
            (
                &json!("unknown_parameter"),
                &json!("session.delegation.responses.tools[1].cache")
            )
        );
        let mut s = pcmu_session();
        s["input"] = json!([{"role": "system", "content": [{"type": "input_text", "text": "x"}]}]);
        let e = refused(s, None).await;
        assert_eq!(
            (&e["code"], &e["param"]),
            (&json!("invalid_value"), &json!("session.input[0].role"))
        );
        let e = refused(pcmu_session(), Some(("turn_detection", json!(null)))).await;
        assert_eq!(
            (&e["code"], &e["param"]),
            (&json!("unknown_parameter"), &json!("turn_detection"))
        );
        // pcma and pcm are accepted.
        let mut s = pcmu_session();
        s["audio"]["format"] = json!({"type": "audio/pcm", "rate": 24000});
        send(&mut ws, json!({"type": "session.start", "session": s})).await;
        let started = next_of(&mut ws, "session.started").await;
        assert_eq!(
            started["session"]["audio"]["format"],
            json!({"type": "audio/pcm", "rate": 24000})
        );
    }

    #[tokio::test]
    async fn session_started_echoes_the_resolved_session() {
        let fake = FakeLive::start(FakeConfig::instant()).await.unwrap();
        let mut ws = connect(&fake).await;
        send(
            &mut ws,
            json!({"type": "session.start", "event_id": "evt_1", "session": pcmu_session()}),
        )
        .await;
        let v = next(&mut ws).await.unwrap();
        assert_eq!(v["type"], "session.started", "the first event: {v}");
        assert_eq!(v["client_event_id"], "evt_1");
        assert!(v["event_id"].as_str().unwrap().starts_with("event_"));
        let s = &v["session"];
        assert!(s["id"].as_str().unwrap().starts_with("live_"), "{s}");
        let expires = s["expires_at"].as_u64().unwrap();
        assert!(expires.abs_diff(now_unix() + 1800) <= 5, "{expires}");
        assert_eq!(s["model"], "gpt-live-1");
        assert_eq!(s["status"], "active");
        assert_eq!(s["instructions"], "You answer calls for a shop. Be brief.");
        assert_eq!(
            s["audio"],
            json!({"output": {"voice": "marin"}, "format": {"type": "audio/pcmu", "rate": 8000}})
        );
        assert_eq!(s["delegation"], json!({"type": "client"}));
        assert_eq!(s["input"], json!([]));
        assert_eq!(fake.connections()[0].session.as_ref(), Some(s));
    }

    #[tokio::test]
    async fn the_clock_moves_only_with_input_audio() {
        let fake = FakeLive::start(FakeConfig::instant()).await.unwrap();
        let mut ws = started(&fake, pcmu_session()).await;
        let quiet = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
        assert!(quiet.is_err(), "no input, no output: {quiet:?}");
        feed(&mut ws, &audio::silence(50)).await;
        assert!(of(&sync(&mut ws).await, "session.output_audio.delta").is_empty());
        assert_eq!(
            fake.connections()[0].timeline_ms,
            40,
            "whole 20 ms frames consumed"
        );
        feed(&mut ws, &audio::silence(50)).await;
        let got = sync(&mut ws).await;
        let deltas = of(&got, "session.output_audio.delta");
        assert_eq!(deltas.len(), 1);
        assert_eq!(
            decoded(deltas[0]),
            audio::silence(100),
            "100 ms of μ-law silence"
        );
        assert_eq!(
            deltas[0].as_object().unwrap().len(),
            3,
            "type, event_id, delta: {}",
            deltas[0]
        );
        feed(&mut ws, &audio::silence(300)).await;
        let got = sync(&mut ws).await;
        assert_eq!(of(&got, "session.output_audio.delta").len(), 3);
        let log = &fake.connections()[0];
        assert_eq!((log.timeline_ms, log.output_deltas), (400, 4));
        assert_eq!(log.output_audio, audio::silence(400));
    }

    #[tokio::test]
    async fn a_commentary_instruction_greets_on_the_track_with_a_transcript() {
        let fake = FakeLive::start(FakeConfig::instant()).await.unwrap();
        let mut ws = started(&fake, pcmu_session()).await;
        send(&mut ws, commentary(GREET, "c1")).await;
        // Not placed without audio.
        assert!(of(&sync(&mut ws).await, "session.commentary.appended").is_empty());
        feed(&mut ws, &audio::silence(120)).await;
        let got = sync(&mut ws).await;
        let appended = of(&got, "session.commentary.appended");
        assert_eq!(appended.len(), 1);
        assert_eq!(appended[0]["client_event_id"], "c1");
        assert_eq!(
            (&appended[0]["start_ms"], &appended[0]["end_ms"]),
            (&json!(0), &json!(200))
        );
        let greeting = clips::greeting();
        feed(&mut ws, &audio::silence(greeting.duration_ms() + 600)).await;
        let got = sync(&mut ws).await;
        let deltas = of(&got, "session.output_audio.delta");
        assert!(
            deltas
                .iter()
                .take(5)
                .any(|d| decoded(d).chunks(160).any(audio::is_speech)),
            "greeting speech on the track"
        );
        assert!(deltas.iter().all(|d| decoded(d).len() == 800));
        let transcript = of(&got, "session.output_transcript.delta");
        assert!(transcript.len() > 3);
        for t in &transcript {
            let (s, e) = (
                t["start_ms"].as_u64().unwrap(),
                t["end_ms"].as_u64().unwrap(),
            );
            assert!(s % 200 == 0 && e == s + 200, "{t}");
        }
        let text: String = transcript
            .iter()
            .map(|t| t["delta"].as_str().unwrap())
            .collect();
        assert_eq!(text, greeting.text);
        let log = &fake.connections()[0];
        assert_eq!(
            log.speech,
            [SpeechSegment {
                clip: "greeting".into(),
                start_ms: 100,
                end_ms: 100 + greeting.duration_ms() as u64,
                cut_by_caller: false
            }]
        );
        // The track holds the clip from 100 ms on, then silence.
        let (at, len) = (
            100 * audio::BYTES_PER_MS,
            greeting.duration_ms() * audio::BYTES_PER_MS,
        );
        assert!(
            log.output_audio[at..at + len] == greeting.mulaw[..len],
            "the clip, byte for byte"
        );
        assert!(
            log.output_audio[at + len..]
                .iter()
                .all(|&b| b == audio::SILENCE)
        );
        // Commentary that is the greeting's text, not an instruction, is placed and not spoken.
        send(
            &mut ws,
            commentary("Thanks for calling. How can I help you today?", "c2"),
        )
        .await;
        feed(&mut ws, &audio::silence(1000)).await;
        let got = sync(&mut ws).await;
        assert_eq!(of(&got, "session.commentary.appended").len(), 1);
        assert_eq!(fake.connections()[0].speech.len(), 1);
    }

    /// The greeting starts, the caller talks over it after `after_ms`, then goes quiet.
    #[tokio::test]
    async fn the_model_yields_to_the_caller_and_then_answers() {
        let fake = FakeLive::start(FakeConfig::instant()).await.unwrap();
        let mut ws = started(&fake, pcmu_session()).await;
        send(&mut ws, commentary(GREET, "c1")).await;
        feed(&mut ws, &audio::silence(600)).await;
        let question = clips::question();
        feed(&mut ws, &question.mulaw).await;
        feed(&mut ws, &audio::silence(800)).await;
        let got = sync(&mut ws).await;
        let log = &fake.connections()[0];
        assert_eq!(log.speech.len(), 2, "{:?}", log.speech);
        let (greeting, answer) = (&log.speech[0], &log.speech[1]);
        assert_eq!(greeting.clip, "greeting");
        assert!(greeting.cut_by_caller);
        // Cut about 100 ms into the caller's speech (the VAD's onset), well before its end.
        assert!((700..1000).contains(&greeting.end_ms), "{greeting:?}");
        assert_eq!(log.caller_turns.len(), 1);
        let turn = log.caller_turns[0];
        assert!(turn.start_ms >= 600 && turn.end_ms <= 600 + question.duration_ms() as u64);
        assert_eq!(answer.clip, "answer");
        assert!(!answer.cut_by_caller);
        assert!(answer.start_ms >= turn.end_ms + 500, "{answer:?} {turn:?}");
        // Silence on the track from the cut until the answer.
        let track = &log.output_audio;
        let (from, to) = (greeting.end_ms as usize * 8, answer.start_ms as usize * 8);
        assert!(track[from..to].iter().all(|&b| b == audio::SILENCE));
        assert!(
            track[answer.start_ms as usize * 8..]
                .chunks(160)
                .any(audio::is_speech)
        );
        // The output transcript stops at the cut; the caller's turn is transcribed.
        let words: String = of(&got, "session.output_transcript.delta")
            .iter()
            .filter(|t| t["end_ms"].as_u64().unwrap() <= greeting.end_ms + 200)
            .map(|t| t["delta"].as_str().unwrap())
            .collect();
        assert!(
            !words.is_empty() && words.len() < clips::greeting().text.len(),
            "{words}"
        );
        let heard = of(&got, "session.input_transcript.delta");
        assert!(!heard.is_empty());
        let text: String = heard.iter().map(|t| t["delta"].as_str().unwrap()).collect();
        assert!(
            text.starts_with("(caller…") && text.contains("… spoke for ") && text.ends_with(" s)"),
            "{text}"
        );
        for t in heard {
            let (s, e) = (
                t["start_ms"].as_u64().unwrap(),
                t["end_ms"].as_u64().unwrap(),
            );
            assert!(
                s % 200 == 0 && e == s + 200 && s + 200 > turn.start_ms && s < turn.end_ms,
                "{t}"
            );
        }
        assert!(
            got.iter()
                .all(|e| !e["type"].as_str().unwrap().contains("speech_"))
        );
    }

    #[tokio::test]
    async fn a_scripted_call_is_delegated_and_held_until_outputs_and_response_create() {
        let fake = FakeLive::start(FakeConfig::instant()).await.unwrap();
        let mut ws = started(&fake, responses_session()).await;
        fake.script(
            Scripted::call("business_hours", json!({"day": "monday"}))
                .then_call("launch_rockets", json!({})),
        );
        feed(&mut ws, &audio::silence(200)).await;
        feed(&mut ws, &clips::question().mulaw).await;
        feed(&mut ws, &audio::silence(700)).await;
        let got = sync(&mut ws).await;
        let script: Vec<&Value> = got
            .iter()
            .filter(|e| e["type"] == "session.delegation.created" || e["type"] == "response.event")
            .collect();
        assert_eq!(script.len(), 4, "{script:?}");
        let d = &script[0]["delegation"];
        assert_eq!(
            (&d["type"], &d["target"]),
            (&json!("delegation"), &json!("responses"))
        );
        let id = d["id"].as_str().unwrap();
        assert!(d["response_id"].as_str().unwrap().starts_with("resp_"));
        assert_eq!(script[1]["event"]["response"]["id"], d["response_id"]);
        assert_eq!(script[3]["event"]["response"]["id"], d["response_id"]);
        let offset = script[0]["offset_ms"].as_u64().unwrap();
        let turn = fake.connections()[0].caller_turns[0];
        assert!(offset >= turn.end_ms + 500, "{offset}");
        let kinds: Vec<&Value> = script[1..].iter().map(|e| &e["event"]["type"]).collect();
        assert_eq!(
            kinds,
            [
                &json!("response.created"),
                &json!("response.output_item.done"),
                &json!("response.completed")
            ]
        );
        assert!(script[1..].iter().all(|e| e["delegation_id"] == id));
        let item = &script[2]["event"]["item"];
        assert_eq!(item["type"], "function_call");
        assert_eq!(item["name"], "business_hours");
        assert_eq!(item["arguments"], r#"{"day":"monday"}"#);
        assert_eq!(item["status"], "completed");
        assert!(item["id"].is_string());
        let call_id = item["call_id"].as_str().unwrap().to_string();
        assert_eq!(script[3]["event"]["response"]["output"], json!([]));
        assert_eq!(fake.connections()[0].skipped_calls, ["launch_rockets"]);
        // Held: no speech while the call has no output.
        feed(&mut ws, &audio::silence(1000)).await;
        sync(&mut ws).await;
        assert!(fake.connections()[0].speech.is_empty());
        send(&mut ws, json!({"type": "response.create"})).await;
        assert_eq!(
            next_of(&mut ws, "error").await["error"]["code"],
            "function_call_output_missing"
        );
        send(&mut ws, json!({"type": "response.item.create", "item": {"type": "function_call_output", "call_id": "call_nope", "output": "{}"}})).await;
        let e = next_of(&mut ws, "error").await;
        assert_eq!(
            (&e["error"]["code"], &e["error"]["param"]),
            (&json!("invalid_value"), &json!("item.call_id"))
        );
        send(&mut ws, json!({"type": "response.item.create", "item": {"type": "function_call_output", "call_id": call_id, "output": "{\"open\":\"9-5\"}"}})).await;
        feed(&mut ws, &audio::silence(500)).await;
        let got = sync(&mut ws).await;
        assert!(of(&got, "error").is_empty(), "{got:?}");
        assert!(
            fake.connections()[0].speech.is_empty(),
            "outputs alone do not continue"
        );
        send(&mut ws, json!({"type": "response.create"})).await;
        feed(&mut ws, &audio::silence(500)).await;
        let got = sync(&mut ws).await;
        let cont: Vec<&Value> = of(&got, "response.event")
            .iter()
            .map(|e| &e["event"]["type"])
            .collect();
        assert_eq!(
            cont,
            [&json!("response.created"), &json!("response.completed")]
        );
        let log = &fake.connections()[0];
        assert_eq!(log.speech.len(), 1);
        assert_eq!(log.speech[0].clip, "answer");
        // end_call: its continuation is a goodbye.
        fake.script(Scripted::call("end_call", json!({})));
        feed(&mut ws, &clips::thanks().mulaw).await;
        feed(&mut ws, &audio::silence(700)).await;
        let got = sync(&mut ws).await;
        let done = of(&got, "response.event");
        let call_id = done[1]["event"]["item"]["call_id"].as_str().unwrap();
        send(&mut ws, json!({"type": "response.item.create", "item": {"type": "function_call_output", "call_id": call_id, "output": "ok"}})).await;
        send(&mut ws, json!({"type": "response.create"})).await;
        feed(&mut ws, &audio::silence(300)).await;
        sync(&mut ws).await;
        let log = &fake.connections()[0];
        assert_eq!(
            log.speech.last().unwrap().clip,
            "goodbye",
            "{:?}",
            log.speech
        );
    }

    #[tokio::test]
    async fn client_events_are_checked() {
        let fake = FakeLive::start(FakeConfig::instant()).await.unwrap();
        let mut ws = started(&fake, pcmu_session()).await;
        let mut refused = async |ev: Value| {
            send(&mut ws, ev).await;
            next_of(&mut ws, "error").await["error"].clone()
        };
        let long = "word ".repeat(401); // 2005 characters: 502 tokens
        let e = refused(commentary(&long, "c1")).await;
        assert_eq!(
            (&e["code"], &e["param"]),
            (&json!("invalid_value"), &json!("content"))
        );
        assert_eq!(
            e["message"],
            "Context append text must not exceed 500 tokens."
        );
        let e = refused(json!({"type": "session.thinking.append", "content": "x"})).await;
        assert_eq!(
            (&e["code"], &e["param"]),
            (
                &json!("missing_required_parameter"),
                &json!("delegation_id")
            )
        );
        let e = refused(json!({"type": "session.instructions.append", "content": "x", "delegation_id": null, "role": "system"})).await;
        assert_eq!(
            (&e["code"], &e["param"]),
            (&json!("unknown_parameter"), &json!("role"))
        );
        let e = refused(json!({"type": "response.item.create", "item": {"type": "function_call_output", "call_id": "c", "output": "x"}})).await;
        assert_eq!(
            e["message"],
            "response.item.create requires Responses delegation."
        );
        let e = refused(json!({"type": "input_audio_buffer.append", "audio": ""})).await;
        assert_eq!(
            (&e["code"], &e["param"]),
            (&json!("invalid_value"), &json!("type"))
        );
        let message = e["message"].as_str().unwrap();
        assert!(
            CLIENT_EVENTS.iter().all(|k| message.contains(k)),
            "{message}"
        );
        let e =
            refused(json!({"type": "session.update", "session": {"instructions": "new"}})).await;
        assert_eq!(
            (&e["code"], &e["param"]),
            (
                &json!("immutable_field_update"),
                &json!("session.instructions")
            )
        );
        let e = refused(json!({"type": "session.update", "session": {"delegation": {"type": "responses", "responses": {"model": "gpt-5.5"}}}})).await;
        assert_eq!(
            (&e["code"], &e["param"]),
            (
                &json!("immutable_field_update"),
                &json!("session.delegation.type")
            )
        );
        let e =
            refused(json!({"type": "session.input_audio.append", "audio": "not base64!"})).await;
        assert_eq!(
            (&e["code"], &e["param"]),
            (&json!("invalid_value"), &json!("audio"))
        );
        ws.send(Message::text("{not json")).await.unwrap();
        assert_eq!(
            next_of(&mut ws, "error").await["error"]["code"],
            "invalid_json"
        );
        ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
        assert_eq!(
            next_of(&mut ws, "error").await["error"]["code"],
            "invalid_json"
        );
        // Mute, unmute and a triggers update are acknowledged.
        send(
            &mut ws,
            json!({"type": "session.input_audio.mute", "event_id": "m"}),
        )
        .await;
        assert_eq!(
            next_of(&mut ws, "session.input_audio.muted").await["client_event_id"],
            "m"
        );
        send(&mut ws, json!({"type": "session.input_audio.unmute"})).await;
        next_of(&mut ws, "session.input_audio.unmuted").await;
        send(
            &mut ws,
            json!({"type": "session.update", "session": {"triggers": []}}),
        )
        .await;
        assert_eq!(
            next_of(&mut ws, "session.updated").await["session"]["triggers"],
            json!([])
        );

        // Under Responses delegation: no delegation_id on appends; tools may change.
        let mut ws = started(&fake, responses_session()).await;
        send(&mut ws, json!({"type": "session.commentary.append", "content": "Say hi.", "delegation_id": "item_1"})).await;
        let e = next_of(&mut ws, "error").await["error"].clone();
        assert_eq!(
            (&e["code"], &e["param"]),
            (&json!("invalid_value"), &json!("delegation_id"))
        );
        send(&mut ws, json!({"type": "session.update", "session": {"delegation": {"type": "responses",
            "responses": {"tools": [{"type": "function", "name": "remember_caller", "parameters": {"type": "object"}}]}}}})).await;
        let updated = next_of(&mut ws, "session.updated").await;
        let r = &updated["session"]["delegation"]["responses"];
        assert_eq!(
            (&r["model"], &r["tools"][0]["name"]),
            (&json!("gpt-5.5"), &json!("remember_caller"))
        );
        send(
            &mut ws,
            json!({"type": "session.update", "session": {"delegation": null}}),
        )
        .await;
        assert_eq!(
            next_of(&mut ws, "error").await["error"]["code"],
            "immutable_field_update"
        );
    }

    #[tokio::test]
    async fn appends_never_placed_are_reported_at_close() {
        let fake = FakeLive::start(FakeConfig::instant()).await.unwrap();
        let mut ws = started(&fake, pcmu_session()).await;
        send(&mut ws, json!({"type": "session.thinking.append", "event_id": "t1", "content": "The caller is Ana.", "delegation_id": null})).await;
        feed(&mut ws, &audio::silence(100)).await;
        assert_eq!(
            of(&sync(&mut ws).await, "session.thinking.appended").len(),
            1
        );
        send(&mut ws, commentary(GREET, "a1")).await;
        send(&mut ws, json!({"type": "session.instructions.append", "event_id": "a2", "content": "Be formal.", "delegation_id": null})).await;
        send(&mut ws, json!({"type": "session.close", "event_id": "bye"})).await;
        let mut rest = Vec::new();
        while let Some(v) = next(&mut ws).await {
            rest.push(v);
        }
        assert_eq!(rest.len(), 3, "{rest:?}");
        for (e, id) in rest[..2].iter().zip(["a1", "a2"]) {
            assert_eq!(e["type"], "error");
            assert_eq!(e["error"]["code"], "context_injection_incomplete");
            assert_eq!(e["error"]["client_event_id"], id);
        }
        let closed = &rest[2];
        assert_eq!(closed["type"], "session.closed");
        assert_eq!(closed["reason"], "close_requested");
        assert_eq!(closed["client_event_id"], "bye");
        assert_eq!(closed["usage"], json!({"seconds": 0}));
        assert_eq!(closed["session"]["status"], "closed");
        assert!(
            closed["session"]["id"]
                .as_str()
                .unwrap()
                .starts_with("live_")
        );
        assert!(fake.wait_open(0, Duration::from_secs(5)).await);
        let log = &fake.connections()[0];
        assert_eq!(log.closed.as_deref(), Some("close_requested"));
        assert!(!log.open);
    }

    #[tokio::test]
    async fn usage_every_15_s_of_timeline() {
        let fake = FakeLive::start(FakeConfig::instant()).await.unwrap();
        let mut ws = started(&fake, pcmu_session()).await;
        let mut usage = Vec::new();
        for _ in 0..4 {
            feed(&mut ws, &audio::silence(8_000)).await;
            let got = sync(&mut ws).await;
            usage.extend(of(&got, "session.usage.updated").into_iter().cloned());
        }
        assert_eq!(usage.len(), 2, "{usage:?}");
        assert_eq!(usage[0]["usage"], json!({"seconds": 15}));
        assert_eq!(usage[1]["usage"], json!({"seconds": 30}));
        let ratio = usage[1]["context_window"]["usage_ratio"].as_f64().unwrap();
        assert!(ratio > 0.0 && ratio < 1.0);
        assert_eq!(fake.connections()[0].output_deltas, 320);
    }

    #[tokio::test]
    async fn the_session_expires_on_its_timeline() {
        let mut cfg = FakeConfig::instant();
        cfg.session_seconds = 2;
        let fake = FakeLive::start(cfg).await.unwrap();
        let mut ws = started(&fake, pcmu_session()).await;
        feed(&mut ws, &audio::silence(3_000)).await;
        let mut deltas = 0;
        let closed = loop {
            let v = next(&mut ws)
                .await
                .expect("session.closed before the socket closes");
            if v["type"] == "session.output_audio.delta" {
                deltas += 1;
            }
            if v["type"] == "session.closed" {
                break v;
            }
        };
        assert_eq!(deltas, 20);
        assert_eq!(closed["reason"], "expired");
        assert_eq!(closed["usage"]["seconds"], 2);
        assert!(closed.get("client_event_id").is_none());
        assert!(next(&mut ws).await.is_none(), "the socket closes");
        assert!(fake.wait_open(0, Duration::from_secs(5)).await);
        let log = &fake.connections()[0];
        assert_eq!(
            (log.timeline_ms, log.closed.as_deref()),
            (2000, Some("expired"))
        );
    }

    #[tokio::test]
    async fn a_fixture_plays_over_the_model_and_mutes_the_input() {
        let fake = FakeLive::start(FakeConfig::instant()).await.unwrap();
        let mut ws = started(&fake, pcmu_session()).await;
        // 500 ms of a 1 kHz tone, PCM16 24 kHz.
        let pcm: Vec<u8> = (0..12_000)
            .map(|i: i32| {
                ((f64::from(i) * 2.0 * std::f64::consts::PI / 24.0).sin() * 8000.0) as i16
            })
            .flat_map(i16::to_le_bytes)
            .collect();
        send(&mut ws, json!({"type": "session.output_audio.fixture.play", "event_id": "f", "audio": STANDARD.encode(&pcm)})).await;
        assert_eq!(
            next_of(&mut ws, "session.output_audio.fixture.playing").await["client_event_id"],
            "f"
        );
        send(&mut ws, commentary(GREET, "c")).await;
        assert_eq!(
            next_of(&mut ws, "error").await["error"]["code"],
            "fixture_playing"
        );
        feed(&mut ws, &clips::question().mulaw[..8000]).await;
        let got = sync(&mut ws).await;
        assert_eq!(of(&got, "session.output_audio.fixture.played").len(), 1);
        let log = &fake.connections()[0];
        assert_eq!(
            log.speech,
            [SpeechSegment {
                clip: "fixture".into(),
                start_ms: 100,
                end_ms: 600,
                cut_by_caller: false
            }]
        );
        assert!(
            log.output_audio[800..4800]
                .chunks(160)
                .all(audio::is_speech)
        );
        assert!(
            log.caller_turns.is_empty(),
            "input muted while the fixture played"
        );
    }

    #[tokio::test]
    async fn dropped_connections_end_without_a_close() {
        let fake = FakeLive::start(FakeConfig::instant()).await.unwrap();
        let mut ws = started(&fake, pcmu_session()).await;
        fake.drop_connections();
        assert!(next(&mut ws).await.is_none());
        assert!(fake.wait_open(0, Duration::from_secs(5)).await);
        assert_eq!(fake.connections()[0].closed, None);
    }
}
