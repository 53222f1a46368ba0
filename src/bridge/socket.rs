//! `GET /twilio/media`: the Media Streams WebSocket (docs/twilio-openai-reference.md §4, §8), and the call's
//! task: one task per live call drives both sockets (docs/architecture.md, "The call task").
//!
//! The task is a thin loop around two machines, [`Call`] (which holds the Twilio-side
//! [`crate::twilio::media::MediaStream`]) and, once attached, the engine session
//! ([`crate::engine::Engine`]):
//! 1. drain the call's outputs: Twilio messages are encoded to JSON here, at the edge, and
//!    queued on the Twilio socket; commands go to the engine, whose frames are queued on the
//!    Realtime socket; `start` begins the attach (below);
//! 2. wait for one input: a frame from either socket, a write that failed, the attach
//!    finished, a deadline (the call's, or a peer that stopped reading), shutdown;
//! 3. read the clock once and feed that input to the machine it belongs to.
//!
//! Reads come first: queued writes are handed to the sockets and flushed when the reads run
//! dry, so a burst of frames is written with one flush. A peer that accepts nothing for its
//! limit (Twilio 3 s, Realtime 5 s) is given up and the call ends; the other direction is never
//! blocked by it, because no write is ever awaited inside the loop. Agent audio to Twilio and
//! caller audio to Realtime are dropped (and counted) when their socket is backed up beyond a
//! bound; control messages never are. A Realtime socket that sends nothing, not even a Pong, for
//! `call.realtime_silence_secs` (it is pinged after `call.realtime_ping_secs` of quiet; the rule
//! is the call's, [`Call::with_keepalive`]) is given up like one that dropped.
//!
//! Attach: on `start` the stream token is checked and the warm session claimed from the
//! registry (both without waiting); taking over the warm socket (which may still be
//! connecting), reading the call from the database (no registry entry) or opening a cold
//! session runs as a future polled by the same `select!`, and its result is the next input.
//! No database access and no global lock per frame: the call record is queued to the store
//! writer when the call ends.

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    extract::{
        State, WebSocketUpgrade,
        ws::{CloseFrame, Message, WebSocket},
    },
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use chrono::Utc;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use prometheus_client::metrics::{counter::Counter, histogram::Histogram};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message as RtMessage;
use tokio_util::sync::CancellationToken;

use super::{
    CallContext,
    call::{Call, CapturedGreeting, Output},
    outcome::{CallOutcome, CallPath, EndReason},
};
use crate::{
    app::AppState,
    domain::{CallSid, CallStatus, CallerIdTrust, CallerTrust, ClientId, StreamSid},
    engine::Engine,
    events::Kind,
    greeting::{GreetingKey, GreetingMode},
    metrics::Metrics,
    realtime::{
        client::{
            self, Attached, SEND_LIMIT as REALTIME_SEND_LIMIT, SessionHandle, SessionSpec, Ws,
        },
        keepalive::KeepaliveSpec,
        profile::AgentProfile,
    },
    store::{
        callers,
        calls::{self, CallPatch, FinishedCall, NewCall, TranscriptIn},
        clients,
        writer::Job,
    },
    tools::{self, ToolCall, ToolEnv, ToolResult},
    twilio::{
        media::Transmit,
        signature::{self, Signed},
        token,
    },
};

/// Longest Twilio's socket may accept nothing we write before it is given up: the call ends
/// as `twilio_closed` and is saved.
const TWILIO_SEND_LIMIT: Duration = Duration::from_secs(3);

/// Most messages waiting for the Realtime socket before caller audio is dropped (about 2.5 s
/// of 20 ms frames).
const REALTIME_QUEUE: usize = 128;

/// The upgrade: Twilio signs it over the `wss://` URL with no params (docs/twilio-openai-reference.md §2.1).
pub async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let signed = Signed::Upgrade {
        path: "/twilio/media",
    };
    if !signature::check(&state.settings, &headers, signed) {
        tracing::warn!("media stream refused: bad X-Twilio-Signature on the upgrade");
        return (StatusCode::FORBIDDEN, "invalid signature\n").into_response();
    }
    let tasks = state.tasks.clone();
    crate::ws::twilio_upgrade(ws).on_upgrade(move |socket| tasks.track_future(run(state, socket)))
}

/// Per-call metric handles, looked up once.
struct Counters {
    inbound: Counter,
    outbound: Counter,
    dropped_inbound: Counter,
    dropped_outbound: Counter,
}

/// One socket of the call as the call's task drives it: reads are taken as they come; writes
/// wait in `out` until the reads run dry, then go to the socket with one flush.
struct Peer<S, M> {
    sock: S,
    /// Messages not yet handed to the socket.
    out: VecDeque<M>,
    /// Messages handed to the socket since its last flush.
    unflushed: bool,
    /// Read times of the relayed frames among the unflushed writes.
    stamps: Vec<Instant>,
    /// Since when the socket has had writes waiting without accepting any (`None` while it
    /// keeps up): beyond `limit` it is given up.
    waiting_since: Option<Instant>,
    limit: Duration,
    /// Most waiting messages, while the socket pushes back, before droppable ones are dropped.
    cap: usize,
    /// The socket said "not now" (`poll_ready` or `poll_flush` pending) and has not caught up
    /// since: only then are droppable messages dropped. A burst queued while the socket keeps
    /// up (the buffered greeting at the claim) is never cut.
    blocked: bool,
    /// `warmline_relay_delay_seconds` for the direction this socket is written in.
    delay: Histogram,
    /// Its read side ended (closed, failed): never polled again.
    read_done: bool,
    /// Given up (a write failed or it stopped reading): nothing more is written.
    broken: bool,
}

impl<S, M> Peer<S, M>
where
    S: Stream + Sink<M> + Unpin,
{
    fn new(sock: S, limit: Duration, cap: usize, delay: Histogram) -> Self {
        Self {
            sock,
            out: VecDeque::new(),
            unflushed: false,
            stamps: Vec::new(),
            waiting_since: None,
            limit,
            cap,
            blocked: false,
            delay,
            read_done: false,
            broken: false,
        }
    }

    /// Queues a message; `read_at` is the read time of the frame it relays, if it relays one.
    fn queue(&mut self, m: M, read_at: Option<Instant>) {
        if self.broken {
            return;
        }
        self.out.push_back(m);
        if let Some(t) = read_at {
            self.stamps.push(t);
        }
    }

    /// Whether a droppable message may be queued: always while the socket keeps up; while it
    /// pushes back, until `cap` messages wait.
    fn has_room(&self) -> bool {
        !self.broken && (!self.blocked || self.out.len() < self.cap)
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        if self.read_done {
            return Poll::Pending;
        }
        self.sock.poll_next_unpin(cx)
    }

    /// Hands waiting messages to the socket and flushes them. Ready(Ok) once everything is
    /// written; Pending while the socket cannot take more (the task is woken when it can).
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        if self.broken {
            self.out.clear();
            return Poll::Ready(Ok(()));
        }
        while !self.out.is_empty() {
            if self.sock.poll_ready_unpin(cx)?.is_pending() {
                return self.pushed_back();
            }
            let m = self.out.pop_front().expect("checked non-empty above");
            self.sock.start_send_unpin(m)?;
            self.unflushed = true;
            self.waiting_since = None;
        }
        if self.unflushed {
            if self.sock.poll_flush_unpin(cx)?.is_pending() {
                return self.pushed_back();
            }
            self.unflushed = false;
            self.waiting_since = None;
            self.blocked = false;
            if !self.stamps.is_empty() {
                let flushed = Instant::now();
                for read_at in self.stamps.drain(..) {
                    self.delay
                        .observe(flushed.saturating_duration_since(read_at).as_secs_f64());
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// The socket cannot take more now (the task is woken when it can): the stall clock runs
    /// from here if it was not running, and droppable messages may be dropped.
    fn pushed_back(&mut self) -> Poll<Result<(), S::Error>> {
        self.blocked = true;
        self.waiting_since.get_or_insert_with(Instant::now);
        Poll::Pending
    }

    /// End of a turn: if writes are waiting, the wait starts now (unless it already had).
    fn note_waiting(&mut self, now: Instant) {
        if !self.broken && (self.unflushed || !self.out.is_empty()) {
            self.waiting_since.get_or_insert(now);
        }
    }

    /// When this socket will be given up if it accepts nothing until then.
    fn deadline(&self) -> Option<Instant> {
        self.waiting_since.map(|t| t + self.limit)
    }

    fn stalled(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|d| now >= d)
    }

    /// The end of the call: whatever is still queued, then `last` (a close frame, if any) and
    /// the close handshake, all within the socket's limit.
    async fn finish(&mut self, last: Option<M>) {
        if self.broken {
            return;
        }
        let limit = self.limit;
        let _ = tokio::time::timeout(limit, async {
            std::future::poll_fn(|cx| self.poll_write(cx)).await?;
            if let Some(m) = last {
                self.sock.send(m).await?;
            }
            self.sock.close().await
        })
        .await;
    }
}

type TwilioPeer = Peer<WebSocket, Message>;
type RealtimePeer = Peer<Ws, RtMessage>;

/// What woke the call's task.
enum Input {
    /// A frame (or the end) from Twilio.
    Twilio(Option<Result<Message, axum::Error>>),
    /// A frame (or the end) from the Realtime socket.
    Realtime(Option<Result<RtMessage, tokio_tungstenite::tungstenite::Error>>),
    /// Writing to Twilio failed.
    TwilioWriteFailed,
    /// Writing to Realtime failed.
    RealtimeWriteFailed,
    /// A step of the attach begun at `start` finished.
    Attached(Box<AttachStep>),
    /// A tool the model called finished (or failed, or ran out of time).
    ToolDone(String, ToolResult),
    /// A deadline passed (the call's, or a peer's write limit).
    Tick,
    /// The process is shutting down.
    Shutdown,
    /// The deploy's drain ran out of time.
    DrainDeadline,
}

/// Most reads in a row before the queued writes, and the `select!`'s other branches, get a turn
/// anyway (under sustained input the reads would otherwise never run dry).
const READS_BEFORE_WRITE: u32 = 32;

/// Reads first, both sockets; once neither has a frame ready (or after
/// [`READS_BEFORE_WRITE`] reads in a row), writes and flushes what the turns queued. Resolves
/// with the first read or failed write.
fn poll_io(
    cx: &mut Context<'_>,
    twilio: &mut TwilioPeer,
    realtime: Option<&mut RealtimePeer>,
    reads_in_a_row: &mut u32,
) -> Poll<Input> {
    let mut realtime = realtime;
    if *reads_in_a_row >= READS_BEFORE_WRITE {
        *reads_in_a_row = 0;
        if let Poll::Ready(Some(failed)) = poll_writes(cx, twilio, realtime.as_deref_mut()) {
            return Poll::Ready(failed);
        }
        // Let the `select!`'s other branches (the timer, the attach, shutdown) be polled this
        // round too; the task is polled again at once.
        cx.waker().wake_by_ref();
        return Poll::Pending;
    }
    if let Poll::Ready(m) = twilio.poll_read(cx) {
        *reads_in_a_row += 1;
        return Poll::Ready(Input::Twilio(m));
    }
    if let Some(rt) = realtime.as_deref_mut()
        && let Poll::Ready(m) = rt.poll_read(cx)
    {
        *reads_in_a_row += 1;
        return Poll::Ready(Input::Realtime(m));
    }
    *reads_in_a_row = 0;
    match poll_writes(cx, twilio, realtime) {
        Poll::Ready(Some(failed)) => Poll::Ready(failed),
        _ => Poll::Pending,
    }
}

/// Writes both sockets' queues; `Ready(Some(..))` names the one whose write failed.
fn poll_writes(
    cx: &mut Context<'_>,
    twilio: &mut TwilioPeer,
    realtime: Option<&mut RealtimePeer>,
) -> Poll<Option<Input>> {
    if let Poll::Ready(Err(_)) = twilio.poll_write(cx) {
        twilio.broken = true;
        return Poll::Ready(Some(Input::TwilioWriteFailed));
    }
    if let Some(rt) = realtime
        && let Poll::Ready(Err(_)) = rt.poll_write(cx)
    {
        rt.broken = true;
        return Poll::Ready(Some(Input::RealtimeWriteFailed));
    }
    Poll::Ready(None)
}

/// A step of the attach; each is the next input when it finishes.
enum AttachStep {
    /// The call read from the database (the registry had no entry): from now on it is known,
    /// and saved however it ends; taking the session is the next step.
    Context(Result<Arc<CallContext>, EndReason>),
    /// The session, taken over or opened (or why there is none).
    Session(Result<Box<(Attached, CallPath)>, EndReason>),
}

type Attaching = Pin<Box<dyn Future<Output = AttachStep> + Send>>;

/// Longest the database may take to give a call's context when the registry has none.
const CONTEXT_LIMIT: Duration = Duration::from_secs(5);

/// The engine session a call owns, and its socket.
struct Live {
    engine: Box<dyn Engine>,
    peer: RealtimePeer,
}

async fn run(state: AppState, socket: WebSocket) {
    state.metrics.active_calls.inc();
    let metrics = &state.metrics;
    let counters = Counters {
        inbound: metrics.frames_relayed("inbound"),
        outbound: metrics.frames_relayed("outbound"),
        dropped_inbound: metrics.frames_dropped("inbound"),
        dropped_outbound: metrics.frames_dropped("outbound"),
    };
    let mut twilio: TwilioPeer = Peer::new(
        socket,
        TWILIO_SEND_LIMIT,
        // Each frame is a media message and its mark.
        state.settings.call.outbound_queue_frames * 2,
        metrics.relay_delay("outbound"),
    );
    let mut live: Option<Live> = None;
    let max = Duration::from_secs(state.settings.call.max_duration_secs);
    let mut now = Instant::now();
    let renew = state.settings.call.session_renew_secs;
    let mut call = Call::new(max, now, Utc::now())
        .with_reconnects(
            state.settings.call.realtime_reconnects,
            (renew > 0).then(|| Duration::from_secs(renew)),
        )
        .with_peer_timeouts(
            Duration::from_secs(state.settings.call.start_timeout_secs),
            Duration::from_secs(state.settings.call.media_timeout_secs),
        )
        .with_keepalive(KeepaliveSpec::from_settings(&state.settings.call));
    // Whose call this is, known once `start` carried a valid token and the context was found
    // (registry or database): from then on the call is saved however it ends, even if no
    // Realtime session could be attached.
    let mut known: Option<Arc<CallContext>> = None;
    let mut stream_sid: Option<StreamSid> = None;
    let mut attaching: Option<Attaching> = None;
    // An input decided while dispatching (a refused token): it is the next turn's input.
    let mut pending: Option<Input> = None;
    let mut outcome: Option<Box<CallOutcome>> = None;
    // The read time of the frame this turn relays (for the relay-delay histogram).
    let mut relaying_inbound: Option<Instant> = None;
    let mut relaying_outbound: Option<Instant> = None;
    // One timer for the call's deadlines, armed at the earliest one.
    let timer = tokio::time::sleep(Duration::from_secs(86_400));
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;
    let mut reads_in_a_row = 0u32;
    // The tools the model called, running off the relay path (task id → call id).
    let mut tool_tasks: JoinSet<(String, ToolResult)> = JoinSet::new();
    let mut tool_ids: HashMap<tokio::task::Id, String> = HashMap::new();
    // When each running tool started, and its name (for its trace span; kept only when traced).
    let mut tool_started: HashMap<String, (String, std::time::SystemTime)> = HashMap::new();
    let tool_limit = Duration::from_millis(state.settings.call.tool_timeout_ms);
    // Cancelled when this loop ends (and on shutdown): an attach still running opens nothing new.
    let call_over = state.shutdown.child_token();
    // Kept across turns (registering a new waiter on the token every turn costs per frame).
    let shutdown = state.shutdown.cancelled();
    tokio::pin!(shutdown);
    let drain_deadline = state.drain_deadline.cancelled();
    tokio::pin!(drain_deadline);
    let mut drain_seen = false;
    // Whether a session was attached yet (later ones replace a lost one).
    let mut attached_once = false;
    loop {
        // Transcript outputs only while someone follows the live events.
        call.set_observed(state.events.active());
        while let Some(out) = call.poll_output() {
            match out {
                Output::Twilio(t) => {
                    let Some(sid) = &stream_sid else { continue };
                    let mut read_at = None;
                    if let Transmit::Media { seq, .. } = &t {
                        if !twilio.has_room() {
                            // Twilio's leg is backed up: this audio is stale before it is heard.
                            counters.dropped_outbound.inc();
                            call.handle_media_dropped(*seq);
                            continue;
                        }
                        counters.outbound.inc();
                        read_at = relaying_outbound;
                    }
                    twilio.queue(Message::Text(t.encode(sid.as_str()).into()), read_at);
                }
                Output::Engine(cmd) => {
                    let Some(l) = live.as_mut() else { continue };
                    if cmd.is_droppable() {
                        if !l.peer.has_room() {
                            // Realtime's leg is backed up: this caller audio is dropped.
                            counters.dropped_inbound.inc();
                            continue;
                        }
                        counters.inbound.inc();
                        if let Some(t) = relaying_inbound {
                            l.peer.stamps.push(t);
                        }
                    }
                    l.engine.handle_command(cmd);
                }
                Output::Start {
                    call_sid,
                    stream_sid: sid,
                    custom_parameters,
                } => {
                    stream_sid = Some(sid.clone());
                    let tok = custom_parameters
                        .get("token")
                        .map(String::as_str)
                        .unwrap_or_default();
                    let now_unix = Utc::now().timestamp().max(0) as u64;
                    if let Err(e) = token::verify(&state.stream_secret, tok, &call_sid, now_unix) {
                        pending = Some(Input::Attached(Box::new(AttachStep::Session(Err(
                            EndReason::TwilioProtocol(format!("stream token refused: {e}")),
                        )))));
                        continue;
                    }
                    // Exactly once: whoever removes the registry entry owns its session.
                    attaching = Some(match state.registry.claim(&call_sid) {
                        Some(claimed) => {
                            known = Some(claimed.context.clone());
                            let path = if claimed.session.is_some() {
                                CallPath::Warm
                            } else {
                                CallPath::Cold
                            };
                            begin(&state, &mut call, &claimed.context, now, path);
                            // Other instances (and this one after a restart) learn from the
                            // database that the call has its stream.
                            state.writer.enqueue(Job::Patch(
                                call_sid.to_string(),
                                CallPatch {
                                    stream_sid: Some(sid.to_string()),
                                    ..Default::default()
                                },
                            ));
                            take_session(
                                state.clone(),
                                call_over.clone(),
                                claimed.context,
                                claimed.session,
                            )
                        }
                        // One stream per call: a second `start` (a replayed token) opens
                        // nothing and writes nothing.
                        None if state.registry.is_done(&call_sid, Instant::now()) => {
                            pending = Some(Input::Attached(Box::new(AttachStep::Session(Err(
                                EndReason::TwilioProtocol(SECOND_STREAM.into()),
                            )))));
                            continue;
                        }
                        None => read_context(state.clone(), call_sid, sid.clone()),
                    });
                }
                Output::FirstAudio { path, elapsed } => {
                    metrics.observe_first_audio(path.as_str(), elapsed.as_secs_f64());
                    note(known.as_deref(), "first_audio", Some(elapsed), || {
                        path.as_str().into()
                    });
                    publish(&state, known.as_deref(), || Kind::Latency {
                        metric: "time_to_first_audio".into(),
                        ms: elapsed.as_secs_f64() * 1000.0,
                    });
                    // From the webhook's arrival (wall clock: it may have been another process
                    // of this instance, before a restart): the cached greeting, or the one the
                    // session generated.
                    if let Some(ctx) = &known {
                        let waited = (Utc::now() - ctx.started_at).to_std().unwrap_or_default();
                        metrics.observe_dial_to_first_audio(
                            ctx.greeting.label(),
                            waited.as_secs_f64(),
                        );
                    }
                }
                Output::GreetingCaptured(captured) => {
                    if let Some(ctx) = &known {
                        keep_greeting(&state, ctx, captured);
                    }
                }
                Output::ResponseLatency(d) => {
                    metrics.response_latency.observe(d.as_secs_f64());
                    note(known.as_deref(), "turn", Some(d), String::new);
                    if let Some(t) = known.as_ref().and_then(|c| c.trace.as_ref()) {
                        t.span(
                            "turn",
                            crate::traces::ago(d),
                            vec![opentelemetry::KeyValue::new(
                                "response_latency_ms",
                                d.as_secs_f64() * 1000.0,
                            )],
                        );
                    }
                    publish(&state, known.as_deref(), || Kind::Latency {
                        metric: "response".into(),
                        ms: d.as_secs_f64() * 1000.0,
                    });
                }
                Output::Transcript { role, text, done } => {
                    let kind = if done {
                        Kind::TranscriptDone {
                            role: role.as_str().into(),
                            text,
                        }
                    } else {
                        Kind::TranscriptDelta {
                            role: role.as_str().into(),
                            text,
                        }
                    };
                    publish(&state, known.as_deref(), || kind);
                }
                Output::Reconnect {
                    attempt,
                    reason,
                    history,
                } => {
                    tracing::warn!(
                        call_sid = sid(&call),
                        attempt,
                        reason,
                        "realtime session lost; opening a new one"
                    );
                    note(known.as_deref(), "reconnect", None, || reason.to_string());
                    // What is left of the old socket is closed off the call's path, ended
                    // properly if it still works (a renewal: GPT-Live's `session.close`).
                    if let Some(mut old) = live.take() {
                        metrics.add_engine_time(
                            old.engine.kind().as_str(),
                            old.engine.input_ms(),
                            0,
                        );
                        old.engine.handle_command(crate::engine::Command::Close);
                        while let Some(frame) = old.engine.poll_transmit() {
                            old.peer.queue(RtMessage::text(frame), None);
                        }
                        state.tasks.spawn(async move {
                            old.engine.handle_closed();
                            old.peer.finish(None).await;
                        });
                    }
                    attaching = Some(match known.clone() {
                        Some(ctx) => {
                            reopen(state.clone(), call_over.clone(), ctx, attempt, history)
                        }
                        None => Box::pin(async {
                            AttachStep::Session(Err(EndReason::RealtimeUnavailable(
                                "no call context".into(),
                            )))
                        }),
                    });
                }
                Output::Reconnected(outcome) => {
                    tracing::info!(call_sid = sid(&call), outcome, "realtime reconnect");
                    metrics.inc_reconnect(outcome);
                }
                Output::RunTool(tool) => {
                    let Some(ctx) = known.clone() else {
                        let id = tool.call_id.clone();
                        pending = Some(Input::ToolDone(
                            id,
                            ToolResult::error("unavailable", "No call context yet."),
                        ));
                        continue;
                    };
                    tracing::info!(call_sid = %ctx.call_sid, tool = %tool.name.chars().take(64).collect::<String>(), "running tool");
                    note(Some(&ctx), "tool", None, || {
                        tool.name.chars().take(64).collect()
                    });
                    publish(&state, Some(&ctx), || Kind::ToolCall {
                        call_id: tool.call_id.clone(),
                        name: tool.name.chars().take(64).collect(),
                        arguments: tool.arguments.clone(),
                    });
                    let env = ToolEnv {
                        db: state.db.clone(),
                        context: ctx,
                        outbox_wake: state.outbox_wake.clone(),
                        settings: state.settings.tools.clone(),
                    };
                    let call_id = tool.call_id.clone();
                    if env.context.trace.is_some() {
                        tool_started.insert(
                            call_id.clone(),
                            (
                                tool.name.chars().take(64).collect::<String>(),
                                std::time::SystemTime::now(),
                            ),
                        );
                    }
                    let handle = tool_tasks.spawn(run_tool(env, tool, tool_limit));
                    tool_ids.insert(handle.id(), call_id);
                }
                Output::PingEngine => {
                    if let Some(l) = live.as_mut() {
                        l.peer.queue(RtMessage::Ping(Default::default()), None);
                    }
                }
                Output::EngineSilent => {
                    metrics.realtime_ping_timeouts.inc();
                    tracing::warn!(
                        call_sid = sid(&call),
                        silence_secs = state.settings.call.realtime_silence_secs,
                        "Realtime sent nothing, not even a Pong; giving up on its socket"
                    );
                    // Half-open: nothing more is written to it, and no close handshake waited for.
                    if let Some(l) = live.as_mut() {
                        l.peer.read_done = true;
                        l.peer.broken = true;
                    }
                }
                Output::BargeIn => {
                    tracing::debug!(
                        call_sid = sid(&call),
                        "barge-in: cleared Twilio, cancelled and truncated"
                    );
                    note(known.as_deref(), "barge_in", None, String::new);
                    publish(&state, known.as_deref(), || Kind::BargeIn {});
                }
                Output::HeldAudioDropped => {
                    counters.dropped_inbound.inc();
                }
                Output::Log(msg) => tracing::debug!(call_sid = sid(&call), "{msg}"),
                Output::Ended(o) => outcome = Some(o),
            }
        }
        if let Some(l) = live.as_mut() {
            while let Some(frame) = l.engine.poll_transmit() {
                l.peer.queue(RtMessage::text(frame), None);
            }
        }
        if call.is_ended() {
            break;
        }
        twilio.note_waiting(now);
        if let Some(l) = live.as_mut() {
            l.peer.note_waiting(now);
        }
        // The timer is moved only to an earlier deadline (a peer starting to wait, per frame
        // under load, must not re-register a timer every turn); firing early is harmless: the
        // tick finds nothing due and the timer is armed again.
        let deadline = [
            call.poll_timeout(),
            twilio.deadline(),
            live.as_ref().and_then(|l| l.peer.deadline()),
            // An engine that keeps its model's timeline moving (GPT-Live's silence feed).
            live.as_ref().and_then(|l| l.engine.poll_timeout()),
        ]
        .into_iter()
        .flatten()
        .min();
        if let Some(d) = deadline
            && armed.is_none_or(|a| d < a)
        {
            timer.as_mut().reset(tokio::time::Instant::from_std(d));
            armed = Some(d);
        }
        let input = match pending.take() {
            Some(input) => input,
            None => tokio::select! {
                biased;
                input = std::future::poll_fn(|cx| poll_io(cx, &mut twilio, live.as_mut().map(|l| &mut l.peer), &mut reads_in_a_row)) => input,
                outcome = next_attach(&mut attaching) => Input::Attached(Box::new(outcome)),
                Some(done) = tool_tasks.join_next_with_id(), if !tool_tasks.is_empty() => {
                    match done {
                        Ok((id, (call_id, result))) => {
                            tool_ids.remove(&id);
                            Input::ToolDone(call_id, result)
                        }
                        // A tool that panicked: its call still gets an answer.
                        Err(e) => {
                            let call_id = tool_ids.remove(&e.id()).unwrap_or_default();
                            tracing::error!(call_sid = sid(&call), error = %e, "tool task failed");
                            Input::ToolDone(call_id, ToolResult::error("tool_failed", "The tool failed."))
                        }
                    }
                }
                _ = &mut timer, if armed.is_some() => {
                    armed = None;
                    Input::Tick
                }
                _ = &mut shutdown => Input::Shutdown,
                _ = &mut drain_deadline, if !drain_seen => {
                    drain_seen = true;
                    Input::DrainDeadline
                }
            },
        };
        now = Instant::now();
        relaying_inbound = None;
        relaying_outbound = None;
        match input {
            Input::Twilio(msg) => match msg {
                Some(Ok(Message::Text(text))) => {
                    relaying_inbound = Some(now);
                    if let Err(e) = call.handle_twilio_text(now, text.as_str()) {
                        tracing::warn!(call_sid = sid(&call), error = %e, "closing media stream: bad message from Twilio");
                    }
                }
                Some(Ok(Message::Binary(_))) => call
                    .handle_session_refused(now, EndReason::TwilioProtocol("binary frame".into())),
                Some(Ok(Message::Close(_))) | None => {
                    twilio.read_done = true;
                    call.handle_twilio_closed(now);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    twilio.read_done = true;
                    tracing::warn!(call_sid = sid(&call), error = %e, "media stream socket error");
                    call.handle_session_refused(now, EndReason::TwilioProtocol(e.to_string()));
                }
            },
            Input::Realtime(msg) => {
                let Some(l) = live.as_mut() else { continue };
                if matches!(msg, Some(Ok(_))) {
                    // Any frame, a Pong included, shows the socket is alive.
                    call.handle_engine_heard(now);
                }
                match msg {
                    Some(Ok(RtMessage::Text(text))) => {
                        relaying_outbound = Some(now);
                        if let Err(e) = l.engine.handle_text(text.as_str()) {
                            tracing::debug!(call_sid = sid(&call), error = %e, "ignoring unparsable realtime frame");
                        }
                        // A GPT-Live session opened by the call asks for its greeting once
                        // started (one that was warm has been counted already).
                        if l.engine.take_greeted() {
                            state.metrics.inc_greeting("generated");
                        }
                        // One frame is one event at most (docs/architecture.md).
                        while let Some(event) = l.engine.poll_event() {
                            call.handle_realtime(now, event);
                        }
                    }
                    Some(Ok(RtMessage::Close(frame))) => {
                        l.peer.read_done = true;
                        l.peer.broken = true;
                        let why = frame.map_or_else(
                            || "closed by server".to_string(),
                            |f| format!("closed by server: {} {}", f.code, f.reason),
                        );
                        call.handle_realtime_closed(now, why);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        l.peer.read_done = true;
                        l.peer.broken = true;
                        call.handle_realtime_closed(now, format!("socket error: {e}"));
                    }
                    None => {
                        l.peer.read_done = true;
                        l.peer.broken = true;
                        call.handle_realtime_closed(now, "socket ended".into());
                    }
                }
            }
            Input::TwilioWriteFailed => call.handle_twilio_closed(now),
            Input::RealtimeWriteFailed => {
                call.handle_realtime_closed(now, "send to realtime failed".into())
            }
            Input::Attached(step) => {
                let result = match *step {
                    AttachStep::Context(Ok(ctx)) => {
                        known = Some(ctx.clone());
                        begin(&state, &mut call, &ctx, now, CallPath::Cold);
                        attaching = Some(take_session(state.clone(), call_over.clone(), ctx, None));
                        continue;
                    }
                    AttachStep::Context(Err(reason)) => Err(reason),
                    AttachStep::Session(result) => result,
                };
                match result {
                    Ok(taken) => {
                        let (Attached { ws, session }, path) = *taken;
                        // The first session of a call that keeps its client's greeting: the
                        // greeting is captured, unless part of it was already dropped while it
                        // was buffered (it would be kept cut short).
                        if !attached_once
                            && let Some(ctx) = &known
                            && let Some(fill) = ctx.greeting.fill()
                        {
                            if session.dropped_bytes() == 0 {
                                call.capture_greeting();
                            } else {
                                fill.release();
                            }
                        }
                        // The claim: the stream's start to its first session attached.
                        if !attached_once
                            && let Some(t) = known.as_ref().and_then(|c| c.trace.as_ref())
                        {
                            let claimed_for = call
                                .stream_started()
                                .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
                            t.span(
                                "claim",
                                crate::traces::ago(claimed_for),
                                vec![opentelemetry::KeyValue::new("path", path.as_str())],
                            );
                        }
                        attached_once = true;
                        let mut engine = session;
                        let buffered = engine.claim();
                        call.set_model_yields(engine.model_yields());
                        tracing::info!(
                            call_sid = sid(&call),
                            path = path.as_str(),
                            buffered_events = buffered.len(),
                            "media stream started"
                        );
                        live = Some(Live {
                            engine,
                            peer: Peer::new(
                                ws,
                                REALTIME_SEND_LIMIT,
                                REALTIME_QUEUE,
                                metrics.relay_delay("inbound"),
                            ),
                        });
                        call.handle_session_attached(now, path, buffered);
                    }
                    Err(reason) => {
                        tracing::warn!(call_sid = sid(&call), reason = %reason.describe(), "media stream refused");
                        call.handle_session_refused(now, reason);
                    }
                }
            }
            Input::Tick => {
                if let Some(l) = live.as_mut() {
                    l.engine.handle_timeout(now);
                }
                if twilio.stalled(now) {
                    tracing::warn!(
                        call_sid = sid(&call),
                        "Twilio stopped reading the media stream; giving up on it"
                    );
                    twilio.broken = true;
                    call.handle_twilio_closed(now);
                } else if let Some(l) = live.as_mut().filter(|l| l.peer.stalled(now)) {
                    tracing::warn!(
                        call_sid = sid(&call),
                        "Realtime stopped reading; giving up on it"
                    );
                    l.peer.broken = true;
                    call.handle_realtime_closed(now, "realtime stopped reading".into());
                } else {
                    call.handle_timeout(now);
                }
            }
            Input::ToolDone(call_id, result) => {
                if let (Some(t), Some((name, started))) = (
                    known.as_ref().and_then(|c| c.trace.as_ref()),
                    tool_started.remove(&call_id),
                ) {
                    t.span(
                        "tool",
                        started,
                        vec![
                            opentelemetry::KeyValue::new("tool", name),
                            opentelemetry::KeyValue::new("ok", !result.is_error()),
                        ],
                    );
                }
                note(known.as_deref(), "tool_result", None, || {
                    if result.is_error() { "error" } else { "ok" }.into()
                });
                publish(&state, known.as_deref(), || Kind::ToolResult {
                    call_id: call_id.clone(),
                    ok: !result.is_error(),
                });
                call.handle_tool_result(now, &call_id, result)
            }
            Input::Shutdown => call.handle_shutdown(now),
            Input::DrainDeadline => call.handle_drain_deadline(now),
        }
    }
    // Tools still running finish on their own (a message being saved is not cut off midway);
    // their answers have nobody to go to.
    tool_tasks.detach_all();
    call_over.cancel();
    // A call that ended while it was still being read from the database: wait for its context
    // (bounded), so that it is saved like any other.
    let mut late = attaching.take();
    if known.is_none()
        && let Some(step) = late.take()
        && let Ok(AttachStep::Context(Ok(ctx))) = tokio::time::timeout(CONTEXT_LIMIT, step).await
    {
        known = Some(ctx);
    }
    // The record is queued before Twilio's side is closed: Twilio then asks
    // `/twilio/after-stream`, which reads it. Meanwhile the Realtime socket is flushed and
    // closed (caller audio queued before the end still reaches it), and a session still being
    // attached is finished (bounded) and closed: each within its own limit, all at once.
    let record_then_twilio = async {
        if let (Some(mut o), Some(ctx), Some(sid)) = (outcome, &known, &stream_sid) {
            Metrics::inc_reason(&state.metrics.calls_ended, o.end_reason.code());
            if let Some(recording) = o.recording.take() {
                state.recorder.submit(
                    &state.tasks,
                    ctx.call_sid.to_string(),
                    ctx.client_id,
                    recording,
                );
            }
            if let Some(t) = &ctx.trace {
                t.end(o.end_reason.code());
            }
            // The agent's own way out gets a line of its own before the end.
            match o.end_reason.code() {
                "transfer" => note(Some(ctx), "transfer", None, String::new),
                "agent_hangup" => note(Some(ctx), "hang_up", None, String::new),
                _ => {}
            }
            note(Some(ctx), "ended", Some(o.duration()), || {
                o.end_reason.describe()
            });
            publish(&state, Some(ctx), || Kind::CallEnded {
                end_reason: o.end_reason.describe(),
                duration_ms: o.duration().as_millis() as u64,
            });
            tracing::info!(
                call_sid = %ctx.call_sid,
                end_reason = %o.end_reason.describe(),
                path = o.path.map_or("none", CallPath::as_str),
                duration_ms = o.duration().as_millis() as u64,
                transcript_lines = o.transcript.len(),
                frames_dropped = o.frames_dropped,
                "call ended"
            );
            // Remembered before Twilio hears the stream end: its after-stream request finds
            // it here even while the record waits for the database.
            state.recent.call_ended(
                ctx.call_sid.as_str(),
                ctx.client_id,
                o.end_reason.describe(),
                Instant::now(),
            );
            state
                .writer
                .submit(Job::Finish(Box::new(finished(ctx, sid, &o))))
                .await;
        }
        twilio
            .finish(Some(Message::Close(Some(CloseFrame {
                code: 1000,
                reason: "call ended".into(),
            }))))
            .await;
    };
    let close_realtime = async {
        if let Some(l) = live.as_mut() {
            state
                .metrics
                .add_engine_time(l.engine.kind().as_str(), l.engine.input_ms(), 0);
            l.engine.handle_closed();
            l.peer.finish(None).await;
        }
    };
    let close_late = async {
        let limit = Duration::from_millis(state.settings.openai.connect_timeout_ms)
            + Duration::from_secs(1);
        if let Some(step) = late
            && let Ok(AttachStep::Session(Ok(taken))) = tokio::time::timeout(limit, step).await
        {
            let (mut attached, _) = *taken;
            client::close(&mut attached.ws).await;
        }
    };
    tokio::join!(record_then_twilio, close_realtime, close_late);
    state.metrics.active_calls.dec();
}

/// Plays the client's cached greeting at once, if the call has one (`crate::greeting`): the
/// session, warm or still to open (`path`), learns it as an assistant message.
/// The call's context is known (its client and caller): a recorded call starts recording
/// (the cached greeting, the notice in it, included), then the cached greeting plays.
fn begin(state: &AppState, call: &mut Call, ctx: &CallContext, now: Instant, path: CallPath) {
    if ctx.profile.recording {
        // The call's own bound, and a minute for the end.
        let max = Duration::from_secs(state.settings.call.max_duration_secs + 60);
        call.start_recording(max);
        state
            .recorder
            .begin(&state.tasks, ctx.call_sid.as_str(), ctx.client_id);
    }
    if let Some(t) = &ctx.trace {
        t.set_path(path.as_str());
    }
    ctx.timeline.note("claim", None, Some(path.as_str().into()));
    publish(state, Some(ctx), || Kind::CallStarted {
        path: path.as_str().into(),
        engine: ctx.profile.engine.as_str().into(),
    });
    play_cached(state, call, ctx, now, path);
}

/// Notes a moment of the call on its timeline once its context is known (`crate::timeline`).
fn note(
    ctx: Option<&CallContext>,
    what: &str,
    took: Option<Duration>,
    detail: impl FnOnce() -> String,
) {
    if let Some(c) = ctx {
        let detail = detail();
        c.timeline.note(
            what,
            took.map(|d| d.as_secs_f64() * 1000.0),
            (!detail.is_empty()).then_some(detail),
        );
    }
}

/// Publishes a live event of this call once its context is known (README.md, "Live events");
/// nothing is built when no one subscribes.
fn publish(state: &AppState, ctx: Option<&CallContext>, kind: impl FnOnce() -> Kind) {
    if let Some(c) = ctx {
        state
            .events
            .publish(c.call_sid.as_str(), Some(c.client_id), kind);
    }
}

fn play_cached(state: &AppState, call: &mut Call, ctx: &CallContext, now: Instant, path: CallPath) {
    if let Some(g) = ctx.greeting.cached() {
        state.metrics.inc_greeting("cached");
        tracing::debug!(call_sid = %ctx.call_sid, duration_ms = g.duration().as_millis() as u64, "playing the cached greeting");
        call.play_greeting(now, path, client::GREETING_ITEM, &g.transcript, &g.frames);
    }
}

/// Keeps a greeting the call generated whole as its client's cached greeting (in memory at
/// once, in the database off the call's path); one that was not whole lets the next call try.
fn keep_greeting(state: &AppState, ctx: &CallContext, captured: Option<CapturedGreeting>) {
    let Some(fill) = ctx.greeting.fill() else {
        return;
    };
    let stored = captured.and_then(|c| {
        crate::greeting::heard(fill.key(), c.transcript, &c.frames, "call", Utc::now())
    });
    let Some(stored) = stored else {
        tracing::debug!(call_sid = %ctx.call_sid, "greeting not heard whole; not cached");
        fill.release();
        return;
    };
    let (db, greetings, client, call_sid) = (
        state.db.clone(),
        state.greetings.clone(),
        ctx.client_id,
        ctx.call_sid.clone(),
    );
    state.tasks.spawn(async move {
        let duration_ms = stored.audio.len() / 8;
        match crate::greeting::keep(&db, &greetings, client, stored).await {
            Ok(_) => {
                tracing::info!(call_sid = %call_sid, client_id = client.get(), duration_ms, "greeting cached: the client's next calls can hear it at once")
            }
            Err(e) => {
                tracing::warn!(call_sid = %call_sid, client_id = client.get(), error = %e, source = ?std::error::Error::source(&e), "greeting cached in memory only: the database refused it")
            }
        }
    });
}

/// Opens the session that replaces a lost one (attempt `attempt`, from 1; later attempts wait
/// a little first), configured like the first, without a greeting, and on an engine that
/// takes one with the conversation so far as its startup history.
fn reopen(
    state: AppState,
    call_over: CancellationToken,
    ctx: Arc<CallContext>,
    attempt: u32,
    history: Vec<(&'static str, String)>,
) -> Attaching {
    Box::pin(async move {
        if attempt > 1 {
            let backoff = Duration::from_millis(250 * (1u64 << (attempt - 2).min(3)));
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = call_over.cancelled() => {}
            }
        }
        if call_over.is_cancelled() {
            return AttachStep::Session(Err(EndReason::Shutdown));
        }
        let spec = SessionSpec::resumed(
            &state.settings,
            &ctx.profile,
            &ctx.call_sid,
            Utc::now(),
            &history,
        );
        AttachStep::Session(
            client::open(&state.settings.openai, spec, &state.metrics)
                .await
                .map(|a| Box::new((a, CallPath::Cold)))
                .map_err(|e| EndReason::RealtimeUnavailable(e.to_string())),
        )
    })
}

/// Runs one tool within `limit`; a tool that runs out of time gets an error answer.
async fn run_tool(env: ToolEnv, tool: ToolCall, limit: Duration) -> (String, ToolResult) {
    let result = match tokio::time::timeout(limit, tools::run(&env, &tool, Utc::now())).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(call_sid = %env.context.call_sid, tool = %tool.name.chars().take(64).collect::<String>(), limit_ms = limit.as_millis() as u64, "tool timed out");
            ToolResult::error(
                "timeout",
                format!("The tool did not answer within {} ms.", limit.as_millis()),
            )
        }
    };
    if result.is_error() {
        tracing::info!(call_sid = %env.context.call_sid, tool = %tool.name.chars().take(64).collect::<String>(), error = %result.output["error"]["code"], "tool answered with an error");
    }
    (tool.call_id, result)
}

async fn next_attach(attaching: &mut Option<Attaching>) -> AttachStep {
    match attaching {
        Some(f) => {
            let step = f.await;
            *attaching = None;
            step
        }
        None => std::future::pending().await,
    }
}

/// Why a second `start` for a call is refused (one stream per call; docs/architecture.md,
/// invariant 12).
const SECOND_STREAM: &str = "a second stream for a call that already streamed or ended";

/// Reads the call from the database (the registry had no entry: it expired, or this process
/// restarted between webhook and stream), within [`CONTEXT_LIMIT`].
fn read_context(state: AppState, call_sid: CallSid, stream_sid: StreamSid) -> Attaching {
    Box::pin(async move {
        let read = tokio::time::timeout(
            CONTEXT_LIMIT,
            context_from_db(&state, &call_sid, &stream_sid),
        )
        .await;
        AttachStep::Context(match read {
            Ok(Ok(ctx)) => Ok(Arc::new(ctx)),
            Ok(Err(reason)) => Err(reason),
            Err(_) => Err(EndReason::RealtimeUnavailable(format!(
                "call lookup took longer than {} s",
                CONTEXT_LIMIT.as_secs()
            ))),
        })
    })
}

/// Takes over the warm session (waiting while it connects) or opens a cold one. Nothing new is
/// opened once the call is over or the process is shutting down (`call_over`, a child of the
/// shutdown token cancelled when the call's loop ends).
fn take_session(
    state: AppState,
    call_over: CancellationToken,
    ctx: Arc<CallContext>,
    warm: Option<SessionHandle>,
) -> Attaching {
    Box::pin(async move {
        let result = match warm {
            Some(handle) => match handle.claim().await {
                Ok(attached) => Ok((attached, CallPath::Warm)),
                Err(_) if call_over.is_cancelled() => Err(EndReason::Shutdown),
                Err(e) => {
                    tracing::warn!(call_sid = %ctx.call_sid, error = %e, "warm session unusable; going cold");
                    Metrics::inc_reason(&state.metrics.cold_sessions, "failed");
                    open_cold(&state, &call_over, &ctx)
                        .await
                        .map(|a| (a, CallPath::Cold))
                }
            },
            None => open_cold(&state, &call_over, &ctx)
                .await
                .map(|a| (a, CallPath::Cold)),
        };
        AttachStep::Session(result.map(Box::new))
    })
}

async fn open_cold(
    state: &AppState,
    call_over: &CancellationToken,
    ctx: &CallContext,
) -> Result<Attached, EndReason> {
    if call_over.is_cancelled() {
        return Err(EndReason::Shutdown);
    }
    // A call that heard its greeting from the cache gets a session that knows it, and says none.
    let spec = SessionSpec::new(
        &state.settings,
        &ctx.profile,
        &ctx.call_sid,
        false,
        Utc::now(),
    )
    .greeting_from(&ctx.greeting);
    client::open(&state.settings.openai, spec, &state.metrics)
        .await
        .map_err(|e| EndReason::RealtimeUnavailable(e.to_string()))
}

/// Rebuilds a call's context from the database when the registry has none (the entry expired,
/// or this process restarted between webhook and stream).
/// The call is claimed for `stream_sid` in the database first (`calls::claim_stream`): a call
/// that already had its stream, here or on another instance, or that ended, is refused.
async fn context_from_db(
    state: &AppState,
    call_sid: &CallSid,
    stream_sid: &StreamSid,
) -> Result<CallContext, EndReason> {
    let unavailable = |m: String| EndReason::RealtimeUnavailable(m);
    let call = calls::call_by_sid(&state.db, call_sid.as_str())
        .await
        .map_err(|e| unavailable(format!("call lookup failed: {e}")))?
        .ok_or_else(|| unavailable("no record of this call".into()))?
        .call;
    let claimed = calls::claim_stream(&state.db, call_sid.as_str(), stream_sid.as_str())
        .await
        .map_err(|e| unavailable(format!("call claim failed: {e}")))?;
    state.registry.mark_done(call_sid, Instant::now());
    if !claimed {
        return Err(EndReason::TwilioProtocol(SECOND_STREAM.into()));
    }
    let client_id = call
        .client_id
        .map(ClientId::new)
        .ok_or_else(|| unavailable("call has no client".into()))?;
    let client = clients::get_client(&state.db, client_id)
        .await
        .map_err(|e| unavailable(format!("client lookup failed: {e}")))?;
    let caller = callers::get_caller(&state.db, client_id, &call.from_number)
        .await
        .ok()
        .flatten();
    Metrics::inc_reason(&state.metrics.cold_sessions, "expired");
    // The trust the webhook judged from `StirVerstat` is kept with the call; a row without it
    // gets the caller's memory only when the client trusts every caller id.
    let trust = call
        .caller_trust
        .as_deref()
        .and_then(CallerTrust::parse)
        .unwrap_or(match client.caller_id_trust() {
            CallerIdTrust::Always => CallerTrust::Unverified,
            _ => CallerTrust::Untrusted,
        });
    let profile = AgentProfile::new(
        &client,
        caller,
        trust,
        callers::remembers(&call.from_number),
    );
    // The greeting as the webhook would have chosen it (the one it answered with may have been
    // the cached one: the caller must not wait for a generated one instead).
    let key = GreetingKey::of(&profile, &state.settings.openai.model);
    let found = crate::greeting::find(&state.db, &state.greetings, client_id, &key).await;
    let greeting = state.greetings.plan(
        client_id,
        &key,
        GreetingMode::from_stored(client.client.greeting_mode.as_deref()),
        found,
        profile.greets_by_name(),
        Instant::now(),
    );
    Ok(CallContext {
        live_slot: None,
        call_sid: call_sid.clone(),
        client_id,
        from: call.from_number.clone(),
        to: call.to_number.clone(),
        profile,
        started_at: call.started_at,
        greeting,
        trace: state
            .traces
            .call(call_sid.as_str(), client_id, call.started_at.into()),
        timeline: Default::default(),
    })
}

fn finished(ctx: &CallContext, stream_sid: &StreamSid, o: &CallOutcome) -> FinishedCall {
    let note = o.memory_note();
    // Memory is kept per phone number; a withheld or non-phone caller id (`anonymous`,
    // `client:…`) is nobody in particular, so it is never remembered.
    // Nor is a caller id the client does not trust (a spoofer must not write the real owner's
    // memory).
    let remember = (callers::remembers(&ctx.from) && ctx.profile.trust != CallerTrust::Untrusted)
        .then(|| (None, note.clone()));
    FinishedCall {
        call: NewCall {
            channel: crate::domain::Channel::Voice,
            call_sid: ctx.call_sid.to_string(),
            client_id: Some(ctx.client_id),
            from: ctx.from.clone(),
            to: ctx.to.clone(),
            status: CallStatus::Ringing,
            started_at: ctx.started_at,
            caller_trust: Some(ctx.profile.trust.as_str().to_string()),
        },
        stream_sid: Some(stream_sid.to_string()),
        status: CallStatus::Completed,
        path: o.path.map(|p| p.as_str().to_string()),
        time_to_first_audio_ms: o.time_to_first_audio.map(|d| d.as_millis() as i64),
        answered_at: Some(o.started_at),
        ended_at: o.ended_at,
        duration_ms: Some(o.duration().as_millis() as i64),
        end_reason: o.end_reason.describe(),
        summary: note.clone(),
        transcript: o
            .transcript
            .iter()
            .map(|l| TranscriptIn {
                role: l.role.as_str().to_string(),
                text: l.text.clone(),
                at: l.at,
            })
            .collect(),
        remember,
        timeline: ctx.timeline.to_json(),
        chat: None,
    }
}

/// The call's CallSid for a log line (empty before `start`).
fn sid(call: &Call) -> &str {
    call.call_sid().map_or("", |s| s.as_str())
}
