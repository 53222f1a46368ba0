//! `GET /twilio/media`: the Media Streams WebSocket (protocols.md §4, §8). A thin loop around
//! [`Call`]: it checks the upgrade's signature, then waits for one input at a time, feeds it to
//! the machine and dispatches what comes out (style.md §2).
//!
//! On `start` it verifies the stream token, claims the warm session by CallSid (exactly once,
//! from the registry) or opens one now (the cold path), and hands the buffered greeting to the
//! machine, which flushes it to Twilio before anything else happens.
//!
//! IO discipline (style.md §3): a writer task owns the Twilio sink behind a bounded queue;
//! agent audio is dropped (and counted) when that queue is full, control frames (marks, clear)
//! are never dropped. Caller audio goes to the session's own bounded queue. No database access
//! and no global lock per frame: the call record is queued to the writer when the call ends.

use std::{sync::Arc, time::Instant};

use axum::{
    extract::{
        State, WebSocketUpgrade,
        ws::{CloseFrame, Message, WebSocket},
    },
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use chrono::Utc;
use futures_util::{SinkExt, StreamExt};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use super::{
    CallContext,
    call::{AgentAudio, Call, Output, RealtimeCommand},
    outcome::{CallOutcome, CallPath, EndReason},
};
use crate::{
    app::AppState,
    domain::{CallSid, CallStatus, ClientId, StreamSid},
    metrics::Metrics,
    realtime::{
        client::{self, ClaimedSession, SessionSpec},
        profile::AgentProfile,
        proto::SessionEvent,
    },
    store::{
        callers,
        calls::{self, FinishedCall, NewCall, TranscriptIn},
        clients,
        writer::Job,
    },
    twilio::{
        signature::{self, Signed},
        token,
    },
};

/// Largest Twilio message accepted (a media frame is ~300 bytes).
const MAX_MESSAGE: usize = 64 * 1024;

/// Longest one write to Twilio may take. A peer that stops reading for this long is treated as
/// gone: the writer stops, its queue closes, and the call ends as `twilio_closed` (so a stalled
/// socket can neither block the call loop on a control frame nor keep the call record unsaved).
const TWILIO_SEND_LIMIT: std::time::Duration = std::time::Duration::from_secs(3);

/// The upgrade: Twilio signs it over the `wss://` URL with no params (protocols.md §2.1).
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
    // Small buffers (a call's frames are a few hundred bytes; a thousand calls must fit in
    // memory, and tungstenite zero-fills the read buffer before every read, per frame). Writes
    // are buffered only until the writer's flush, which follows every batch at once.
    ws.max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .read_buffer_size(4 * 1024)
        .write_buffer_size(8 * 1024)
        .on_upgrade(move |socket| tasks.track_future(run(state, socket)))
}

/// Per-call metric handles, looked up once.
struct Counters {
    inbound: Counter,
    outbound: Counter,
    dropped_outbound: Counter,
}

/// Whose call this is, known once `start` carried a valid token: from then on the call is
/// saved however it ends, even if no Realtime session could be attached.
struct Known {
    context: Arc<CallContext>,
    stream_sid: StreamSid,
}

async fn run(state: AppState, socket: WebSocket) {
    state.metrics.active_calls.inc();
    let counters = Counters {
        inbound: state.metrics.frames_relayed("inbound"),
        outbound: state.metrics.frames_relayed("outbound"),
        dropped_outbound: state.metrics.frames_dropped("outbound"),
    };
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Message>(state.settings.call.outbound_queue_frames);
    let writer = tokio::spawn(async move {
        use tokio::time::timeout;
        while let Some(first) = rx.recv().await {
            // Everything already queued (a media frame and its mark, or a burst under load)
            // goes out with one flush: one write instead of one per message.
            let batch = async {
                sink.feed(first).await?;
                while let Ok(m) = rx.try_recv() {
                    sink.feed(m).await?;
                }
                sink.flush().await
            };
            match timeout(TWILIO_SEND_LIMIT, batch).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::warn!("Twilio stopped reading the media stream; giving up on it");
                    return;
                }
            }
        }
        // Closing our side ends `<Connect>`; Twilio then asks `<Connect action>` what to do.
        let _ = timeout(
            TWILIO_SEND_LIMIT,
            sink.send(Message::Close(Some(CloseFrame {
                code: 1000,
                reason: "call ended".into(),
            }))),
        )
        .await;
        let _ = timeout(TWILIO_SEND_LIMIT, sink.close()).await;
    });

    let max = std::time::Duration::from_secs(state.settings.call.max_duration_secs);
    let mut call = Call::new(max);
    let mut known: Option<Known> = None;
    let mut attached: Option<ClaimedSession> = None;
    let mut outcome: Option<Box<CallOutcome>> = None;
    loop {
        while let Some(out) = call.poll_output() {
            match out {
                Output::Twilio(text) => {
                    // Agent audio may be dropped when Twilio's leg is stuck; control never is.
                    if text.starts_with(r#"{"event":"media""#) {
                        match tx.try_send(Message::Text(text.into())) {
                            Ok(()) => {
                                counters.outbound.inc();
                            }
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                counters.dropped_outbound.inc();
                                call.handle_media_dropped();
                            }
                            // The writer gave up on Twilio (closed or stuck).
                            Err(mpsc::error::TrySendError::Closed(_)) => {
                                call.handle_twilio_closed(Instant::now());
                            }
                        };
                    } else if tx.send(Message::Text(text.into())).await.is_err() {
                        call.handle_twilio_closed(Instant::now());
                    }
                }
                Output::Realtime(cmd) => {
                    if let Some(session) = &attached {
                        dispatch(session, cmd, &counters).await;
                    }
                }
                Output::Start {
                    call_sid,
                    stream_sid,
                    custom_parameters,
                } => match attach(
                    &state,
                    &call_sid,
                    stream_sid,
                    &custom_parameters,
                    &mut known,
                )
                .await
                {
                    Ok((session, path, greeting, rest)) => {
                        tracing::info!(call_sid = %call_sid, path = path.as_str(), greeting_chunks = greeting.len(), "media stream started");
                        call.handle_session_attached(Instant::now(), path, greeting);
                        for e in rest {
                            call.handle_realtime(Instant::now(), e);
                        }
                        attached = Some(session);
                    }
                    Err(reason) => {
                        tracing::warn!(call_sid = %call_sid, reason = %reason.describe(), "media stream refused");
                        call.handle_session_refused(Instant::now(), reason);
                    }
                },
                Output::FirstAudio { path, elapsed } => {
                    state
                        .metrics
                        .observe_first_audio(path.as_str(), elapsed.as_secs_f64());
                }
                Output::ResponseLatency(d) => {
                    state.metrics.response_latency.observe(d.as_secs_f64())
                }
                Output::BargeIn => {
                    tracing::debug!(call_sid = ?call.call_sid(), "barge-in: cleared Twilio, cancelled and truncated")
                }
                Output::Log(msg) => tracing::debug!(call_sid = ?call.call_sid(), "{msg}"),
                Output::Ended(o) => outcome = Some(o),
            }
        }
        if call.is_ended() {
            break;
        }
        let timeout = call.poll_timeout();
        tokio::select! {
            msg = stream.next() => {
                let now = Instant::now();
                match msg {
                    Some(Ok(Message::Text(text))) => {
                        if let Err(e) = call.handle_twilio_text(now, text.as_str()) {
                            tracing::warn!(call_sid = ?call.call_sid(), error = %e, "closing media stream: bad message from Twilio");
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        call.handle_session_refused(now, EndReason::TwilioProtocol("binary frame".into()));
                    }
                    Some(Ok(Message::Close(_))) | None => call.handle_twilio_closed(now),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!(call_sid = ?call.call_sid(), error = %e, "media stream socket error");
                        call.handle_session_refused(now, EndReason::TwilioProtocol(e.to_string()));
                    }
                }
            }
            ev = next_event(&mut attached) => match ev {
                Some(e) => call.handle_realtime(Instant::now(), e),
                // The session task also stops on shutdown; say why the call really ended.
                None if state.shutdown.is_cancelled() => call.handle_shutdown(Instant::now()),
                None => call.handle_realtime_closed(Instant::now(), "realtime session ended".into()),
            },
            _ = sleep_until(timeout) => call.handle_timeout(Instant::now()),
            _ = state.shutdown.cancelled() => call.handle_shutdown(Instant::now()),
        }
    }
    // Drain what the end produced (the Close to Realtime, the outcome).
    while let Some(out) = call.poll_output() {
        match out {
            Output::Realtime(cmd) => {
                if let Some(session) = &attached {
                    dispatch(session, cmd, &counters).await;
                }
            }
            Output::Ended(o) => outcome = Some(o),
            Output::Twilio(text) => {
                let _ = tx.try_send(Message::Text(text.into()));
            }
            _ => {}
        }
    }
    if let Some(session) = &attached {
        session.close("call ended").await;
    }
    // The record is queued before waiting for Twilio's side to close, so that a peer slow to
    // take the close cannot delay or lose it.
    if let (Some(o), Some(k)) = (outcome, &known) {
        Metrics::inc_reason(&state.metrics.calls_ended, o.end_reason.code());
        tracing::info!(
            call_sid = %k.context.call_sid,
            end_reason = %o.end_reason.describe(),
            path = o.path.map_or("none", CallPath::as_str),
            duration_ms = o.duration().as_millis() as u64,
            transcript_lines = o.transcript.len(),
            frames_dropped = o.frames_dropped,
            "call ended"
        );
        state
            .writer
            .submit(Job::Finish(Box::new(finished(k, &o))))
            .await;
    }
    // Only now may the writer close Twilio's side (Twilio then asks `/twilio/after-stream`,
    // which reads the record just queued).
    drop(tx);
    let _ = writer.await;
    state.metrics.active_calls.dec();
}

async fn dispatch(session: &ClaimedSession, cmd: RealtimeCommand, counters: &Counters) {
    match cmd {
        RealtimeCommand::Append(b64) => {
            if session.append(b64) {
                counters.inbound.inc();
            }
        }
        RealtimeCommand::Cancel => session.cancel().await,
        RealtimeCommand::Truncate {
            item_id,
            audio_end_ms,
        } => session.truncate(item_id, audio_end_ms).await,
        RealtimeCommand::UserText(t) => session.user_text(t).await,
        RealtimeCommand::Close => session.close("call ended").await,
    }
}

async fn next_event(attached: &mut Option<ClaimedSession>) -> Option<SessionEvent> {
    match attached {
        Some(session) => session.events.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

type AttachResult = (ClaimedSession, CallPath, Vec<AgentAudio>, Vec<SessionEvent>);

/// Verifies the token, then claims the warm session or opens a cold one. Once the token and
/// the call's context are known they are stored in `known`, so the call is saved even when no
/// session can be attached.
async fn attach(
    state: &AppState,
    call_sid: &CallSid,
    stream_sid: StreamSid,
    params: &std::collections::HashMap<String, String>,
    known: &mut Option<Known>,
) -> Result<AttachResult, EndReason> {
    let tok = params.get("token").map(String::as_str).unwrap_or_default();
    let now_unix = Utc::now().timestamp().max(0) as u64;
    token::verify(&state.stream_secret, tok, call_sid, now_unix)
        .map_err(|e| EndReason::TwilioProtocol(format!("stream token refused: {e}")))?;
    let claimed = state.registry.claim(call_sid);
    let (context, warm) = match claimed {
        Some(c) => (c.context, c.session),
        None => (Arc::new(context_from_db(state, call_sid).await?), None),
    };
    *known = Some(Known {
        context: context.clone(),
        stream_sid,
    });
    let (session, path) = match warm {
        Some(handle) => match handle.claim().await {
            Ok(s) => (s, CallPath::Warm),
            Err(e) => {
                tracing::warn!(call_sid = %call_sid, error = %e, "warm session unusable; going cold");
                Metrics::inc_reason(&state.metrics.cold_sessions, "failed");
                (open_cold(state, &context).await?, CallPath::Cold)
            }
        },
        None => (open_cold(state, &context).await?, CallPath::Cold),
    };
    let mut session = session;
    let mut greeting = Vec::new();
    let mut rest = Vec::new();
    for e in std::mem::take(&mut session.buffered) {
        match e {
            SessionEvent::AudioDelta {
                response_id,
                item_id,
                payload,
            } if rest.is_empty() => greeting.push(AgentAudio {
                response_id,
                item_id,
                payload,
            }),
            other => rest.push(other),
        }
    }
    Ok((session, path, greeting, rest))
}

async fn open_cold(state: &AppState, ctx: &CallContext) -> Result<ClaimedSession, EndReason> {
    let handle = client::spawn(
        &state.settings.openai,
        SessionSpec {
            session_update: ctx
                .profile
                .session_update(&state.settings.openai.transcription_model, Utc::now()),
            greeting: Some(ctx.profile.greeting_request()),
            buffer_cap: state.settings.prewarm.greeting_buffer_bytes * 4 / 3 + 4,
            call_sid: ctx.call_sid.to_string(),
            prewarm: false,
        },
        state.metrics.clone(),
        &state.tasks,
        state.shutdown.clone(),
    );
    handle
        .claim()
        .await
        .map_err(|e| EndReason::RealtimeUnavailable(e.to_string()))
}

/// Rebuilds a call's context from the database when the registry has none (the entry expired,
/// or this process restarted between webhook and stream).
async fn context_from_db(state: &AppState, call_sid: &CallSid) -> Result<CallContext, EndReason> {
    let unavailable = |m: String| EndReason::RealtimeUnavailable(m);
    let call = calls::call_by_sid(&state.db, call_sid.as_str())
        .await
        .map_err(|e| unavailable(format!("call lookup failed: {e}")))?
        .ok_or_else(|| unavailable("no record of this call".into()))?
        .call;
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
    Ok(CallContext {
        call_sid: call_sid.clone(),
        client_id,
        from: call.from_number.clone(),
        to: call.to_number.clone(),
        profile: AgentProfile::new(&client, caller),
        started_at: call.started_at,
    })
}

fn finished(k: &Known, o: &CallOutcome) -> FinishedCall {
    let ctx = &k.context;
    let note = o.memory_note();
    // Memory is kept per phone number; a withheld or non-phone caller id (`anonymous`,
    // `client:…`) is nobody in particular, so it is never remembered.
    let remember = callers::remembers(&ctx.from).then(|| (None, note.clone()));
    FinishedCall {
        call: NewCall {
            call_sid: ctx.call_sid.to_string(),
            client_id: Some(ctx.client_id),
            from: ctx.from.clone(),
            to: ctx.to.clone(),
            status: CallStatus::Ringing,
            started_at: ctx.started_at,
        },
        stream_sid: Some(k.stream_sid.to_string()),
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
    }
}
