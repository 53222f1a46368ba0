//! The Twilio HTTP routes (docs/twilio-openai-reference.md §1–§5): `POST /twilio/voice` (warm the agent while the
//! phone rings, answer with `<Connect><Stream>`), `POST /twilio/status` (close a warm session
//! whose call ended before its stream), `POST /twilio/after-stream` (the `<Connect action>`:
//! what to do when the stream ends), and the `GET /twilio/media` upgrade (in `bridge::socket`).
//!
//! Rules kept:
//! 1. A bad signature is 403 and opens nothing. Apart from that, `/twilio/voice` always answers
//!    200 with valid TwiML (a caller would hear an application error otherwise).
//! 2. The webhook is never late: everything it waits for (database, Realtime) is bounded by
//!    `ring_max_ms` from its arrival.
//! 3. It answers when the warm session is ready (configured and greeting audio buffered) and
//!    `ring_min_ms` has passed, or at `ring_max_ms` whatever the state. A call that plays the
//!    client's cached greeting (`crate::greeting`) waits for nothing but `ring_min_ms`: its
//!    session opens and is configured behind the greeting (outcome `cached`).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::Utc;
use tokio::{sync::watch, time::Instant as TokioInstant};

use super::{
    form::{self, StatusRequest, TwilioCallStatus, VoiceRequest},
    signature::{self, Signed},
    token, twiml,
};
use crate::{
    app::{AppState, Registry},
    bridge::{CallContext, outcome::EndReason},
    config::PrewarmPolicy,
    domain::{CallSid, CallStatus, CallerTrust, ClientId, E164},
    fleet,
    greeting::{self, Found, GreetingKey, GreetingMode, GreetingPlan},
    limits,
    lines::{self, Line, LineOverrides},
    realtime::{
        client::{self, SessionSpec, Status},
        profile::AgentProfile,
        registry::{Begun, ColdReason, EarlyEnd, Want},
    },
    store::{
        StoreError, callers,
        calls::{self, CallPatch, NewCall},
        clients::{self, ClientProfile},
        writer::{Job, Writer},
    },
};

/// The Twilio routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/twilio/voice", post(voice))
        .route("/twilio/status", post(status))
        .route("/twilio/after-stream", post(after_stream))
}

/// `GET /twilio/media`, the Media Streams upgrade: apart from [`router`], so the request
/// timeout of the HTTP routes never reaches a call (src/app.rs).
pub fn media_router() -> Router<AppState> {
    Router::new().route("/twilio/media", get(crate::bridge::socket::upgrade))
}

fn xml(body: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        body,
    )
        .into_response()
}

/// Twilio `<Say language>` wants a locale; a bare language gets its common one.
pub fn say_language(language: &str) -> String {
    match language {
        "en" => "en-US".into(),
        "es" => "es-ES".into(),
        "fr" => "fr-FR".into(),
        "de" => "de-DE".into(),
        other => other.to_string(),
    }
}

/// Longest the after-stream callback spends looking the call up before it answers anyway.
const AFTER_STREAM_LIMIT: Duration = Duration::from_secs(5);

/// How long the voice webhook waits for the database when it can answer from the client it
/// read last time (`store::recent`): a database that takes longer is treated as unavailable.
const DB_PATIENCE: Duration = Duration::from_millis(1000);

/// Every `warmline_webhook_duration_seconds{outcome}` value the voice webhook records:
/// `forbidden` (bad signature) and each outcome `answer` returns. The series exist at zero from
/// start (src/metrics.rs); in debug builds an outcome missing here panics when recorded.
pub const OUTCOMES: &[&str] = &[
    "warm",
    "warm_not_ready",
    "cached",
    "cold",
    "unknown_number",
    "invalid",
    "forbidden",
    "error",
    "redirected",
    "replayed",
    "elsewhere",
    "ended",
    "busy",
];

async fn voice(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let t0 = Instant::now();
    let arrived = Utc::now();
    let deadline =
        TokioInstant::from_std(t0 + Duration::from_millis(state.settings.prewarm.ring_max_ms));
    let params = form::parse(&body);
    let signed = Signed::Form {
        uri: &uri,
        params: &params,
    };
    if !signature::check(&state.settings, &headers, signed) {
        tracing::warn!(
            call_sid = params
                .iter()
                .find(|(k, _)| k == "CallSid")
                .map(|(_, v)| v.as_str())
                .unwrap_or("-"),
            "voice webhook refused: bad X-Twilio-Signature"
        );
        state
            .metrics
            .observe_webhook("forbidden", t0.elapsed().as_secs_f64());
        return (StatusCode::FORBIDDEN, "invalid signature\n").into_response();
    }
    // Draining for a deploy: the call belongs on another instance. Twilio fetches the same
    // webhook from the shared URL (the load balancer, which no longer sends calls here); a
    // request that was already redirected once is answered here, cold.
    if state.draining.is_cancelled()
        && !state.settings.twilio.webhook_base_url.is_empty()
        && !uri.query().unwrap_or_default().contains("redirected=1")
    {
        let to = state.settings.shared_http_url("/twilio/voice?redirected=1");
        tracing::info!(
            call_sid = params
                .iter()
                .find(|(k, _)| k == "CallSid")
                .map(|(_, v)| v.as_str())
                .unwrap_or("-"),
            "draining: voice webhook redirected to twilio.webhook_base_url"
        );
        state
            .metrics
            .observe_webhook("redirected", t0.elapsed().as_secs_f64());
        return xml(twiml::redirect(&to));
    }
    let (outcome, body) = answer(&state, &params, t0, arrived, deadline).await;
    state
        .metrics
        .observe_webhook(outcome, t0.elapsed().as_secs_f64());
    xml(body)
}

/// Decides the TwiML for a genuine voice request; returns the metric outcome too.
async fn answer(
    state: &AppState,
    params: &[(String, String)],
    t0: Instant,
    arrived: chrono::DateTime<Utc>,
    deadline: TokioInstant,
) -> (&'static str, String) {
    let req = match VoiceRequest::from_params(params) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "voice webhook: malformed request");
            return (
                "invalid",
                twiml::say_hangup(lines::text(Line::Unavailable, "en"), "en-US"),
            );
        }
    };
    let sid = req.call_sid.clone();
    // Held until the call is registered (the end of this answer): meanwhile a hang-up is kept
    // for this answer (`Begun::Ended`), and another instance asking who holds the call is
    // answered from here (src/fleet.rs, `Local::Ringing`).
    let _arriving = state.registry.arrive(&sid);
    let Ok(to) = E164::parse(&req.to) else {
        tracing::warn!(call_sid = %sid, "voice webhook: To is not an E.164 number");
        return (
            "unknown_number",
            twiml::say_hangup(lines::text(Line::NotInService, "en"), "en-US"),
        );
    };
    // The database is bounded by the same deadline as everything else; when this number's
    // client was read before, by a shorter one, past which the call is answered from it.
    let remembered = state.recent.client_for(&to, Instant::now());
    let limit = if remembered.is_some() {
        deadline.min(TokioInstant::now() + DB_PATIENCE)
    } else {
        deadline
    };
    // Beside it: whether this call already streamed or ended somewhere (a replayed webhook).
    // And with several instances on one Postgres: this instance's claim on the call, so that a
    // retry reaching another instance finds the one warming it (src/fleet.rs).
    let lookup = tokio::time::timeout_at(limit, async {
        tokio::join!(
            clients::client_by_number(&state.db, &to),
            calls::streamed_or_ended(&state.db, sid.as_str()),
            state.fleet.claim(sid.as_str()),
        )
    })
    .await;
    let replayed_in_db = matches!(lookup, Ok((_, Ok(true), _)));
    if replayed_in_db || state.registry.is_done(&sid, Instant::now()) {
        tracing::warn!(call_sid = %sid, "voice webhook for a call that already streamed or ended (a replay?): <Hangup/>, nothing opened");
        return ("replayed", twiml::hangup());
    }
    let (lookup, claim) = match lookup {
        Ok((client, _, claim)) => (Ok(client), Some(claim)),
        Err(e) => (Err(e), None),
    };
    // Held by another instance (a retry that reached this one): its warm session takes the
    // call; nothing is opened or written here.
    match claim {
        Some(Ok(fleet::Claim::Theirs(holder))) if !state.registry.contains(&sid) => {
            match hand_over(state, &sid, &holder, deadline).await {
                HandOver::There(stream_url) => {
                    let min_at = TokioInstant::from_std(
                        t0 + Duration::from_millis(state.settings.prewarm.ring_min_ms),
                    );
                    tokio::time::sleep_until(min_at.min(deadline)).await;
                    tracing::info!(call_sid = %sid, holder, "voice webhook for a call another instance holds: its stream goes there");
                    return ("elsewhere", stream_twiml(state, &sid, &stream_url));
                }
                HandOver::Over => {
                    tracing::warn!(call_sid = %sid, holder, "voice webhook for a call that streamed or ended on another instance: <Hangup/>, nothing opened");
                    return ("replayed", twiml::hangup());
                }
                HandOver::Here => {}
            }
        }
        Some(Err(e)) => {
            tracing::warn!(call_sid = %sid, error = %e, source = ?std::error::Error::source(&e), "voice webhook: could not claim the call for this instance; answering here");
        }
        _ => {}
    }
    let (client, read) = match lookup {
        Ok(Ok(found)) => {
            state
                .recent
                .client_read(&to, found.as_ref(), Instant::now());
            (found, true)
        }
        failed => {
            let why = match &failed {
                Ok(Err(e)) => {
                    tracing::error!(call_sid = %sid, error = %e, source = ?std::error::Error::source(e), "voice webhook: database lookup failed");
                    "failed"
                }
                _ => {
                    tracing::error!(call_sid = %sid, "voice webhook: database lookup timed out");
                    "timed out"
                }
            };
            let Some(client) = remembered else {
                // Turned away, and kept: the record waits in the spool for the database.
                state.writer.enqueue(Job::Insert(NewCall {
                    channel: crate::domain::Channel::Voice,
                    call_sid: sid.to_string(),
                    client_id: None,
                    from: req.from.clone(),
                    to: req.to.clone(),
                    status: CallStatus::Failed,
                    started_at: arrived,
                    caller_trust: None,
                }));
                state.writer.enqueue(Job::Patch(
                    sid.to_string(),
                    CallPatch::ended(
                        CallStatus::Failed,
                        format!("turned away: database lookup {why}"),
                    ),
                ));
                return (
                    "error",
                    twiml::say_hangup(lines::text(Line::Unavailable, "en"), "en-US"),
                );
            };
            tracing::warn!(call_sid = %sid, client_id = client.id().get(), "voice webhook: database lookup {why}; answering from the client last read (without the caller's memory)");
            (Some(ClientProfile::clone(&client)), false)
        }
    };
    // Memory is per phone number: `get_caller` finds none for a withheld caller id. A memory
    // that cannot be read costs the call its memory, not the call. Beside it, the client's
    // cached greeting (memory first; the database only when memory has none for its key).
    let key = client.as_ref().map(|c| {
        GreetingKey::new(
            &c.client.greeting,
            &c.client.voice,
            &state.settings.openai.model,
            &c.client.language,
        )
    });
    let (caller, found) = match (&client, &key) {
        (Some(c), Some(key)) if read => {
            let memory = async {
                match tokio::time::timeout_at(
                    limit,
                    callers::get_caller(&state.db, c.id(), &req.from),
                )
                .await
                {
                    Ok(Ok(caller)) => caller,
                    Ok(Err(e)) => {
                        tracing::warn!(call_sid = %sid, error = %e, "voice webhook: caller memory lookup failed; answering without it");
                        None
                    }
                    Err(_) => {
                        tracing::warn!(call_sid = %sid, "voice webhook: caller memory lookup timed out; answering without it");
                        None
                    }
                }
            };
            let cached = async {
                tokio::time::timeout_at(
                    limit,
                    greeting::find(&state.db, &state.greetings, c.id(), key),
                )
                .await
                .unwrap_or(Found::Missing)
            };
            tokio::join!(memory, cached)
        }
        (Some(c), Some(key)) => (None, state.greetings.lookup(c.id(), key, Instant::now())),
        _ => (None, Found::Missing),
    };
    let Some(client) = client else {
        tracing::info!(call_sid = %sid, to = %to, "voice webhook: number not assigned to any active client");
        state.writer.enqueue(Job::Insert(NewCall {
            channel: crate::domain::Channel::Voice,
            call_sid: sid.to_string(),
            client_id: None,
            from: req.from.clone(),
            to: req.to.clone(),
            status: CallStatus::Rejected,
            started_at: arrived,
            caller_trust: None,
        }));
        return (
            "unknown_number",
            twiml::say_hangup(lines::text(Line::NotInService, "en"), "en-US"),
        );
    };
    // Twilio retrying the webhook of a call registered here: it reuses what the first took.
    let retry = state.registry.contains(&sid);
    // The call's place under `limits.live_calls_per_client` (ringing and live, this instance).
    let live_slot = match state.limits.live_calls.try_take(client.id()) {
        Some(slot) => Some(Arc::new(slot)),
        None if retry => None,
        None => return turn_away_busy(state, &req, &client, arrived),
    };
    let policy = client
        .prewarm_policy()
        .unwrap_or(state.settings.prewarm.policy);
    let known = caller.as_ref().is_some_and(|c| c.call_count > 0);
    // A draining instance opens no warm session: the call may outlive the drain.
    let policy_warm = !state.draining.is_cancelled()
        && match policy {
            PrewarmPolicy::Always => true,
            PrewarmPolicy::KnownCallers => known,
            PrewarmPolicy::Never => false,
        };
    // `limits.caller_webhooks_per_minute`: counts the calls from one number that would be
    // warmed (a retry is not a new call); beyond it they are answered cold, so a dialer
    // ringing and hanging up costs no generated greeting.
    let over_rate = policy_warm
        && !retry
        && state.limits.caller_webhooks.as_ref().is_some_and(|r| {
            matches!(
                r.check(limits::caller_key(&req.from)),
                limits::Verdict::Limited { .. }
            )
        });
    let want = if !policy_warm {
        Want::Cold(ColdReason::Policy)
    } else if over_rate {
        state.metrics.inc_rate_limited("caller_webhooks");
        tracing::info!(call_sid = %sid, "caller number over limits.caller_webhooks_per_minute: answered cold");
        Want::Cold(ColdReason::RateLimited)
    } else {
        Want::Warm
    };
    let trust = client.caller_id_trust().judge(req.stir_verstat.as_deref());
    if trust == CallerTrust::Untrusted {
        tracing::info!(call_sid = %sid, stir_verstat = req.stir_verstat.as_deref().unwrap_or("absent"), "caller id not trusted: no caller memory on this call");
    }
    let profile = AgentProfile::new(&client, caller, trust, callers::remembers(&req.from));
    let plan = match &key {
        Some(key) => state.greetings.plan(
            client.id(),
            key,
            GreetingMode::from_stored(client.client.greeting_mode.as_deref()),
            found,
            profile.greets_by_name(),
            Instant::now(),
        ),
        None => GreetingPlan::GENERATE,
    };
    // Queued, not waited for: the warm session is opened at once (no disk wait on the ring).
    state.writer.enqueue(Job::Insert(NewCall {
        channel: crate::domain::Channel::Voice,
        call_sid: sid.to_string(),
        client_id: Some(client.id()),
        from: req.from.clone(),
        to: req.to.clone(),
        status: CallStatus::Ringing,
        started_at: arrived,
        caller_trust: Some(trust.as_str().to_string()),
    }));
    let ctx = CallContext {
        call_sid: sid.clone(),
        client_id: client.id(),
        from: req.from.clone(),
        to: req.to.clone(),
        profile: profile.clone(),
        started_at: arrived,
        live_slot,
        greeting: plan.clone(),
        trace: state.traces.call(sid.as_str(), client.id(), arrived.into()),
        timeline: Default::default(),
    };
    let trace = ctx.trace.clone();
    let timeline = ctx.timeline.clone();
    let begun_at = std::time::SystemTime::now();
    let begun = state
        .registry
        .begin(&sid, client.id(), ctx, want, Instant::now(), || {
            client::spawn(
                &state.settings.openai,
                SessionSpec::new(&state.settings, &profile, &sid, true, arrived)
                    .greeting_from(&plan),
                state.metrics.clone(),
                &state.tasks,
                state.shutdown.clone(),
            )
        });
    // A webhook for a call already registered (a retry) or over: its trace is its own, short.
    if let Some(t) = &trace {
        match &begun {
            Begun::Retry(_) => t.end("retried_webhook"),
            Begun::Over => t.end("replayed_webhook"),
            Begun::Ended(_) => t.end("ended_before_stream"),
            Begun::Warm(_) | Begun::Cold(_) => {}
        }
    }
    let min_at =
        TokioInstant::from_std(t0 + Duration::from_millis(state.settings.prewarm.ring_min_ms));
    let outcome = match begun {
        // The cached greeting plays at stream start: nothing to wait for; the session opens
        // and is configured behind it.
        Begun::Warm(_) | Begun::Retry(Some(_)) if plan.cached().is_some() => {
            timeline.note(
                "prewarm",
                None,
                Some("cached greeting; the session opens behind it".into()),
            );
            tokio::time::sleep_until(min_at.min(deadline)).await;
            "cached"
        }
        Begun::Warm(rx) | Begun::Retry(Some(rx)) => {
            let ready = wait_ready(rx, deadline).await;
            // Stamped when it began, with how long it took to be ready.
            timeline.note_at(
                begun_at.into(),
                "prewarm",
                begun_at.elapsed().ok().map(|d| d.as_secs_f64() * 1000.0),
                Some(if ready { "ready" } else { "not ready in time" }.into()),
            );
            if let Some(t) = &trace {
                t.span(
                    "prewarm",
                    begun_at,
                    vec![opentelemetry::KeyValue::new("ready", ready)],
                );
            }
            if !ready {
                state.registry.peek(&sid, |s| s.note_timeout());
            }
            tokio::time::sleep_until(min_at.min(deadline)).await;
            if ready { "warm" } else { "warm_not_ready" }
        }
        Begun::Cold(reason) => {
            tracing::info!(call_sid = %sid, reason = reason.as_str(), "call will take the cold path");
            tokio::time::sleep_until(min_at.min(deadline)).await;
            "cold"
        }
        Begun::Retry(None) => {
            tokio::time::sleep_until(min_at.min(deadline)).await;
            "cold"
        }
        // It streamed or ended between the check above and now.
        Begun::Over => return ("replayed", twiml::hangup()),
        // Twilio said it ended (a hang-up) while this answer was being prepared.
        Begun::Ended(early) => {
            tracing::info!(call_sid = %sid, status = early.reason, "call ended while its webhook was answered; nothing opened");
            state.writer.enqueue(Job::Patch(
                sid.to_string(),
                CallPatch::ended(
                    early.status,
                    format!("ended before the media stream ({})", early.reason),
                ),
            ));
            return ("ended", twiml::hangup());
        }
    };
    let body = stream_twiml(state, &sid, &state.settings.public_ws_url("/twilio/media"));
    let webhook_ms = t0.elapsed().as_millis() as i64;
    // Twilio is waiting for this answer: queued, never waited for.
    state.writer.enqueue(Job::Patch(
        sid.to_string(),
        CallPatch {
            webhook_ms: Some(webhook_ms),
            ..Default::default()
        },
    ));
    tracing::info!(call_sid = %sid, client_id = client.id().get(), outcome, webhook_ms, "voice webhook answered");
    if let Some(t) = &trace {
        t.span(
            "webhook",
            arrived.into(),
            vec![opentelemetry::KeyValue::new("outcome", outcome)],
        );
    }
    state.events.publish(sid.as_str(), Some(client.id()), || {
        crate::events::Kind::CallRinging {
            from: req.from.clone(),
            to: to.to_string(),
            warm: outcome != "cold",
        }
    });
    (outcome, body)
}

/// `<Connect><Stream>` to `stream_url` (this instance's, or the one holding the call), with a
/// fresh stream token and the after-stream action.
fn stream_twiml(state: &AppState, sid: &CallSid, stream_url: &str) -> String {
    let expires =
        Utc::now().timestamp().max(0) as u64 + state.settings.twilio.stream_token_ttl_secs;
    let tok = token::issue(&state.stream_secret, sid, expires);
    // Any instance can answer it (it only reads the database): the shared URL when there is one.
    let action = state.settings.shared_http_url("/twilio/after-stream");
    twiml::connect_stream(&twiml::ConnectStream {
        stream_url,
        action_url: Some(&action),
        parameters: &[("token", &tok)],
    })
}

/// Where a call claimed by another instance goes.
enum HandOver {
    /// To the holder's stream URL: it rings there.
    There(String),
    /// Nowhere: it already streamed or ended there.
    Over,
    /// Here: the holder did not answer (gone, and the claim moved here), or nothing could be
    /// learnt (the database failed, no shared stream token secret).
    Here,
}

/// Asks the instance holding the call for it; takes the call over when it does not answer.
async fn hand_over(
    state: &AppState,
    sid: &CallSid,
    holder: &str,
    deadline: TokioInstant,
) -> HandOver {
    // The holder's stream verifies a token issued here only with a shared secret.
    if state.settings.twilio.stream_token_secret.is_empty() {
        tracing::warn!(call_sid = %sid, holder, "a call another instance holds, but twilio.stream_token_secret is empty (random per process): answering it here");
        return HandOver::Here;
    }
    let mut holder = holder.to_string();
    for round in 0..2 {
        let wait = fleet::ASK_FOR.min(deadline.saturating_duration_since(TokioInstant::now()));
        match state.fleet.ask(sid.as_str(), wait).await {
            fleet::Asked::Answer(fleet::Answer::There { stream_url, .. }) => {
                state.metrics.inc_fleet("webhook_forwarded");
                return HandOver::There(stream_url);
            }
            fleet::Asked::Answer(fleet::Answer::Over) => return HandOver::Over,
            fleet::Asked::Failed => return HandOver::Here,
            // Asked twice (the claim moved meanwhile): nobody answers; answered here.
            fleet::Asked::Silent if round > 0 => return HandOver::Here,
            fleet::Asked::Silent => {}
        }
        match tokio::time::timeout_at(deadline, state.fleet.take_over(sid.as_str(), &holder)).await
        {
            Ok(Ok(true)) => {
                tracing::warn!(call_sid = %sid, holder, "the instance holding the call did not answer: taken over");
                state.metrics.inc_fleet("webhook_took_over");
                return HandOver::Here;
            }
            // Another instance moved the claim first: ask the one holding it now, once.
            Ok(Ok(false)) => {
                match tokio::time::timeout_at(deadline, state.fleet.claim(sid.as_str())).await {
                    Ok(Ok(fleet::Claim::Theirs(now))) => holder = now,
                    _ => return HandOver::Here,
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(call_sid = %sid, error = %e, "could not move the call's claim here; answering it here anyway");
                return HandOver::Here;
            }
            Err(_) => return HandOver::Here,
        }
    }
    HandOver::Here
}

/// Turns a call away because its client has `limits.live_calls_per_client` calls ringing or
/// live here: put through to the client's fallback number, or told the lines are busy. The call
/// is recorded (`busy`, with the reason) and counted.
fn turn_away_busy(
    state: &AppState,
    req: &VoiceRequest,
    client: &ClientProfile,
    arrived: chrono::DateTime<Utc>,
) -> (&'static str, String) {
    let sid = &req.call_sid;
    state.metrics.inc_rate_limited("client_live_calls");
    tracing::warn!(
        call_sid = %sid,
        client_id = client.id().get(),
        cap = state.limits.live_calls.cap(),
        "client at limits.live_calls_per_client on this instance: call turned away"
    );
    state.writer.enqueue(Job::Insert(NewCall {
        channel: crate::domain::Channel::Voice,
        call_sid: sid.to_string(),
        client_id: Some(client.id()),
        from: req.from.clone(),
        to: req.to.clone(),
        status: CallStatus::Busy,
        started_at: arrived,
        caller_trust: None,
    }));
    state.writer.enqueue(Job::Patch(
        sid.to_string(),
        CallPatch::ended(
            CallStatus::Busy,
            "turned away: limits.live_calls_per_client reached".to_string(),
        ),
    ));
    let (_, body) = fallback_or_line(
        client.client.fallback_number.as_deref(),
        Line::Busy,
        &LineOverrides::from_stored(client.client.lines.as_deref()),
        &client.client.language,
    );
    ("busy", body)
}

/// Puts the caller through to `fallback`, announced with the `putting_through` line (true), or,
/// with none, says `otherwise` and hangs up (false); lines in the client's language and words.
fn fallback_or_line(
    fallback: Option<&str>,
    otherwise: Line,
    lines: &LineOverrides,
    client_language: &str,
) -> (bool, String) {
    let language = say_language(client_language);
    match fallback {
        Some(number) => {
            let say = lines.text(Line::PuttingThrough, client_language);
            (true, twiml::dial(number, Some(&say), &language))
        }
        None => {
            let say = lines.text(otherwise, client_language);
            (false, twiml::say_hangup(&say, &language))
        }
    }
}

/// Waits until the session is ready (true) or failed/closed or the deadline passed (false).
async fn wait_ready(mut rx: watch::Receiver<Status>, deadline: TokioInstant) -> bool {
    let wait = async {
        loop {
            match &*rx.borrow_and_update() {
                Status::Ready => return true,
                Status::Failed(_) | Status::Closed => return false,
                _ => {}
            }
            if rx.changed().await.is_err() {
                return false;
            }
        }
    };
    tokio::time::timeout_at(deadline, wait)
        .await
        .unwrap_or(false)
}

async fn status(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = form::parse(&body);
    let signed = Signed::Form {
        uri: &uri,
        params: &params,
    };
    if !signature::check(&state.settings, &headers, signed) {
        tracing::warn!("status callback refused: bad X-Twilio-Signature");
        return (StatusCode::FORBIDDEN, "invalid signature\n").into_response();
    }
    let req = match StatusRequest::from_params(&params) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "status callback: malformed request");
            return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response();
        }
    };
    let Some(final_status) = req.call_status.final_status() else {
        return StatusCode::NO_CONTENT.into_response();
    };
    if close_ringing(
        &state.registry,
        &state.writer,
        &req.call_sid,
        &req.call_status,
        final_status,
    ) {
        return StatusCode::NO_CONTENT.into_response();
    }
    let reason = req.call_status.label();
    if state.fleet.enabled() && !state.registry.is_done(&req.call_sid, Instant::now()) {
        // Not here, and not handled here: the instance that holds it (if one does) closes it.
        let end = fleet::Message::End {
            call_sid: req.call_sid.to_string(),
            status: req.call_status.to_string(),
            from: state.fleet.id().unwrap_or_default().to_string(),
        };
        match tokio::time::timeout(DB_PATIENCE, state.fleet.publish(&end)).await {
            Ok(Ok(())) => {
                state.metrics.inc_fleet("status_forwarded");
                tracing::debug!(call_sid = %req.call_sid, status = reason, "status callback for a call not held here: told the other instances");
            }
            Ok(Err(e)) => {
                tracing::warn!(call_sid = %req.call_sid, error = %e, "status callback: could not tell the other instances")
            }
            Err(_) => {
                tracing::warn!(call_sid = %req.call_sid, "status callback: telling the other instances timed out")
            }
        }
    } else {
        tracing::debug!(call_sid = %req.call_sid, status = reason, "status callback for a call already handled");
    }
    StatusCode::NO_CONTENT.into_response()
}

/// A call ended (Twilio's final `status`) before its media stream: closes its warm session, if
/// it is registered here, and records the call as ended. Whether it was registered here. For
/// the status callback, and for one that reached another instance (src/fleet.rs).
pub fn close_ringing(
    registry: &Registry,
    writer: &Writer,
    call_sid: &CallSid,
    status: &TwilioCallStatus,
    final_status: CallStatus,
) -> bool {
    let reason = status.label();
    let Some(warm) = registry.close(call_sid, reason) else {
        // Not registered yet: its webhook, if one is being answered here, opens nothing.
        return registry.end_arriving(
            call_sid,
            EarlyEnd {
                reason,
                status: final_status,
            },
        );
    };
    tracing::info!(call_sid = %call_sid, status = reason, warm, "call ended before its media stream; session closed");
    writer.enqueue(Job::Patch(
        call_sid.to_string(),
        CallPatch::ended(
            final_status,
            format!("ended before the media stream ({reason})"),
        ),
    ));
    true
}

async fn after_stream(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = form::parse(&body);
    let signed = Signed::Form {
        uri: &uri,
        params: &params,
    };
    if !signature::check(&state.settings, &headers, signed) {
        tracing::warn!("after-stream callback refused: bad X-Twilio-Signature");
        return (StatusCode::FORBIDDEN, "invalid signature\n").into_response();
    }
    let Some(sid) = params
        .iter()
        .find(|(k, _)| k == "CallSid")
        .map(|(_, v)| v.clone())
    else {
        return xml(twiml::say_hangup(
            lines::text(Line::Unavailable, "en"),
            "en-US",
        ));
    };
    // A call that streamed here ended moments ago: how is remembered (`store::recent`), so the
    // answer does not wait for its record (nor for a database that is unavailable).
    let ended_here = state.recent.ended(&sid, Instant::now());
    // Bounded below the request timeout too (`server.request_timeout_secs` may be shorter):
    // an answer cut by it would leave the caller an application error.
    let limit = AFTER_STREAM_LIMIT.min(
        Duration::from_secs(state.settings.server.request_timeout_secs)
            .saturating_sub(Duration::from_millis(500)),
    );
    let mut end_reason = ended_here.as_ref().map(|e| e.end_reason.clone());
    let mut client_id = ended_here.as_ref().map(|e| e.client_id);
    let mut client = None;
    let mut deleted = false;
    let lookup = async {
        // Otherwise the record, written by the instance that ran the stream: give its writer a
        // moment if the stream only just closed. The whole look-up is bounded: Twilio gives up
        // on this request after 15 s, and then the caller would hear an application error.
        if ended_here.is_none() {
            for _ in 0..15 {
                match calls::call_by_sid(&state.db, &sid).await {
                    Ok(found) => {
                        let done = found.as_ref().is_some_and(|c| c.call.ended_at.is_some());
                        end_reason = found.as_ref().and_then(|c| c.call.end_reason.clone());
                        client_id = found.and_then(|c| c.call.client_id).map(ClientId::new);
                        if done {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::error!(call_sid = %sid, error = %e, "after-stream: database lookup failed");
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if let Some(id) = client_id {
            // Read fresh when the database answers; the client read lately when it cannot
            // (below, once the look-up is over or out of time).
            let patience = if state.recent.client(id, Instant::now()).is_some() {
                DB_PATIENCE
            } else {
                limit
            };
            match tokio::time::timeout(patience, clients::get_client(&state.db, id)).await {
                Ok(Ok(c)) => client = Some(c),
                // Deleted meanwhile: nobody to put the caller through to.
                Ok(Err(StoreError::NotFound(_))) => {
                    state.recent.forget_client(id);
                    deleted = true;
                }
                Ok(Err(e)) => {
                    tracing::warn!(call_sid = %sid, error = %e, "after-stream: client lookup failed; using the client read lately")
                }
                Err(_) => {
                    tracing::warn!(call_sid = %sid, "after-stream: client lookup timed out; using the client read lately")
                }
            }
        }
    };
    // On time-out, whatever was found so far (the record, perhaps the client) still decides.
    if tokio::time::timeout(limit, lookup).await.is_err() {
        tracing::error!(call_sid = %sid, "after-stream: database look-up timed out");
    }
    // Not read (failed or out of time): the one read lately, unless it was deleted.
    let client = client.or_else(|| {
        client_id
            .filter(|_| !deleted)
            .and_then(|id| state.recent.client(id, Instant::now()))
            .map(|c| ClientProfile::clone(&c))
    });
    let client_language = client.as_ref().map_or("en", |c| c.client.language.as_str());
    let language = say_language(client_language);
    let own_lines = client
        .as_ref()
        .map(|c| LineOverrides::from_stored(c.client.lines.as_deref()))
        .unwrap_or_default();
    // No record, no end reason, or one no stream wrote: not a normal end.
    let reason = end_reason.as_deref().and_then(EndReason::from_code);
    let fallback = client
        .as_ref()
        .and_then(|c| c.client.fallback_number.clone());
    // The agent's transfer: its hand-off line has just been heard, so the phone rings at once.
    let transfer_to = client.as_ref().and_then(|c| {
        c.client
            .transfer_number
            .clone()
            .or_else(|| c.client.fallback_number.clone())
    });
    let (decision, body) = match (&reason, transfer_to) {
        (Some(EndReason::Transfer), Some(number)) => {
            ("dial_transfer", twiml::dial(&number, None, &language))
        }
        // The instance it was on was deployed away and ran out of time.
        (Some(EndReason::Drained), _) => match fallback {
            Some(number) => {
                let say = own_lines.text(Line::DrainTransfer, client_language);
                (
                    "drain_fallback",
                    twiml::dial(&number, Some(&say), &language),
                )
            }
            None => {
                let say = own_lines.text(Line::DrainGoodbye, client_language);
                ("drain_goodbye", twiml::say_hangup(&say, &language))
            }
        },
        (Some(r), _) if r.is_normal() => ("hangup", twiml::hangup()),
        _ => match fallback_or_line(
            fallback.as_deref(),
            Line::Unavailable,
            &own_lines,
            client_language,
        ) {
            (true, body) => ("dial_fallback", body),
            (false, body) => ("apologise", body),
        },
    };
    tracing::info!(
        call_sid = %sid,
        end_reason = end_reason.as_deref().unwrap_or("unknown"),
        remembered = ended_here.is_some(),
        decision,
        "after-stream: answered"
    );
    xml(body)
}
