//! After the call: the post-call job end to end on SQLite and Postgres, against the fake
//! Responses endpoint (`sim::responses`): summary and validated fields stored, caller memory
//! holding the summary instead of the caller's first words, a mismatch asked again once, two
//! mismatches failing the job, retries with backoff, max attempts, the lease after a kill, the
//! `call.completed` event, the client's `results_schema` in the admin API, and one call through
//! the whole gateway.

use std::time::Duration;

use chrono::Utc;
use reqwest::Method;
use serde_json::{Value, json};
use sim::responses::{FakeResponses, Fault};
use warmline::{
    bridge::outcome::{CallOutcome, EndReason, Role, TranscriptLine},
    domain::{CallStatus, ClientId},
    store::{
        callers,
        calls::{self, FinishedCall, NewCall, TranscriptIn},
        entities::post_call_job,
        outbox,
        post_call::{self, Completed, Completion, PostCallJob},
        writer::Job,
    },
};

use crate::{
    both_backends, on_both_backends,
    support::{Backend, TestApp, spawn_app_with},
};

/// Like `both_backends!`, on an app whose post-call worker is off (the test drives the store).
macro_rules! both_backends_with_post_call_off {
    ($name:ident, |$app:ident| $body:block) => {
        crate::both_backends_with!(
            $name,
            "[post_call]\nenabled = false\n[webhooks]\nallow_http = true\n",
            |$app| $body
        );
    };
}

const CALLER: &str = "+14155550100";
const KEY: &str = "sk-test-post-call-key";

/// The README's example schema: an appointment date, the reason and the urgency.
fn appointment() -> Value {
    json!({
        "type": "object",
        "properties": {
            "appointment_date": {"type": ["string", "null"], "format": "date"},
            "reason": {"type": "string"},
            "urgency": {"type": "string", "enum": ["low", "normal", "urgent"]}
        },
        "required": ["appointment_date", "reason", "urgency"],
        "additionalProperties": false
    })
}

/// What the fake answers for [`appointment`].
fn minimal_appointment() -> Value {
    json!({"appointment_date": "2026-12-01", "reason": "x", "urgency": "low"})
}

/// An app whose post-call job talks to `fake`, with fast retries; `extra` on top.
async fn app(backend: Backend, fake: &FakeResponses, extra: &str) -> TestApp {
    let base = format!("base_url = \"{}\"", fake.base_url());
    let key = format!("api_key = \"{KEY}\"");
    spawn_app_with(
        backend,
        extra,
        &[
            ("openai", &base),
            ("openai", &key),
            ("webhooks", "allow_http = true"),
            ("post_call", "retry_schedule_secs = [0.1]"),
            ("post_call", "timeout_secs = 2"),
            ("post_call", "lease_secs = 5"),
        ],
    )
    .await
}

/// A client (with a webhook URL, so events are queued) and its results schema.
async fn client(app: &TestApp, results_schema: Option<Value>) -> ClientId {
    let resp = app
        .admin(Method::POST, "/clients")
        .json(&json!({
            "name": "Bright Smile", "phone_numbers": ["+15005550006"],
            "instructions": "You are the receptionist.", "greeting": "Hello!", "voice": "marin",
            "language": "es-MX",
            "webhook_url": "http://127.0.0.1:9/hook",
            "results_schema": results_schema
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let body: Value = resp.json().await.unwrap();
    ClientId::new(body["id"].as_i64().unwrap() as i32)
}

/// A finished call as the media stream leaves it: its note is the caller's first words (the
/// same `CallOutcome::memory_note` the call task writes), in `summary` and in caller memory.
fn finished(client_id: ClientId, sid: &str, said: &[&str]) -> FinishedCall {
    let now = Utc::now();
    let mut transcript = vec![TranscriptLine {
        role: Role::Agent,
        text: "Bright Smile, how can I help?".into(),
        at: now,
    }];
    transcript.extend(said.iter().map(|s| TranscriptLine {
        role: Role::Caller,
        text: s.to_string(),
        at: now,
    }));
    let outcome = CallOutcome {
        end_reason: EndReason::TwilioStop,
        path: None,
        time_to_first_audio: None,
        started_at: now,
        ended_at: now + chrono::Duration::seconds(42),
        transcript,
        frames_dropped: 0,
        recording: None,
    };
    let note = outcome.memory_note();
    FinishedCall {
        call: NewCall {
            channel: warmline::domain::Channel::Voice,
            call_sid: sid.into(),
            client_id: Some(client_id),
            from: CALLER.into(),
            to: "+15005550006".into(),
            status: CallStatus::Ringing,
            started_at: now,
            caller_trust: None,
        },
        stream_sid: Some("MZ1".into()),
        status: CallStatus::Completed,
        path: Some("warm".into()),
        time_to_first_audio_ms: Some(0),
        answered_at: Some(now),
        ended_at: outcome.ended_at,
        duration_ms: Some(42_000),
        end_reason: outcome.end_reason.describe(),
        summary: note.clone(),
        transcript: outcome
            .transcript
            .iter()
            .map(|l| TranscriptIn {
                role: l.role.as_str().into(),
                text: l.text.clone(),
                at: l.at,
            })
            .collect(),
        remember: Some((None, note)),
        timeline: None,
        chat: None,
    }
}

/// Saves the call through the app's call-record writer (as the media stream does).
async fn finish(app: &TestApp, f: FinishedCall) {
    app.state.writer.submit(Job::Finish(Box::new(f))).await;
    app.state.writer.flush(Duration::from_secs(10)).await;
}

async fn call_id(app: &TestApp, sid: &str) -> i32 {
    calls::call_by_sid(&app.state.db, sid)
        .await
        .unwrap()
        .expect("the call is saved")
        .call
        .id
}

async fn job(app: &TestApp, sid: &str) -> Option<PostCallJob> {
    let id = call_id(app, sid).await;
    post_call::job_for_call(&app.state.db, id).await.unwrap()
}

/// Waits until the call's job is no longer pending.
async fn settled(app: &TestApp, sid: &str) -> PostCallJob {
    for _ in 0..400 {
        if let Some(j) = job(app, sid).await
            && j.status != "pending"
        {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the post-call job of {sid} never settled: {:?}",
        job(app, sid).await
    );
}

async fn memory(app: &TestApp, client_id: ClientId) -> Vec<String> {
    callers::get_caller(&app.state.db, client_id, CALLER)
        .await
        .unwrap()
        .expect("the caller is remembered")
        .memory
        .lines()
        .map(str::to_string)
        .collect()
}

/// The `call.completed` events queued for the client, their `data`, oldest first.
async fn completed_events(app: &TestApp, client_id: ClientId) -> Vec<Value> {
    let mut rows = outbox::list_deliveries(&app.state.db, client_id, 100)
        .await
        .unwrap();
    rows.reverse();
    rows.into_iter()
        .filter(|r| r.event_type == "call.completed")
        .map(|r| serde_json::from_str::<Value>(&r.body).unwrap()["data"].clone())
        .collect()
}

async fn a_finished_call_gets_its_summary_and_validated_fields(backend: Backend) {
    let fake = FakeResponses::start().await.unwrap();
    let app = app(backend, &fake, "").await;
    let id = client(&app, Some(appointment())).await;
    // An earlier call, summarised first: its note stays below the new one.
    finish(&app, finished(id, "CA0", &["Are you open on Saturdays?"])).await;
    settled(&app, "CA0").await;
    let before = memory(&app, id).await;
    finish(
        &app,
        finished(id, "CA1", &["I need a cleaning next Tuesday.", "Thanks!"]),
    )
    .await;

    let job = settled(&app, "CA1").await;
    assert_eq!(
        (job.status.as_str(), job.attempts, job.last_error.as_deref()),
        ("done", 1, None)
    );
    let expected =
        "Summary: the caller asked \"I need a cleaning next Tuesday.\" (2 caller lines).";
    let call = calls::call_by_sid(&app.state.db, "CA1")
        .await
        .unwrap()
        .unwrap()
        .call;
    assert_eq!(call.summary.as_deref(), Some(expected));
    let results: Value = serde_json::from_str(call.results.as_deref().unwrap()).unwrap();
    assert_eq!(results, minimal_appointment());

    // The summary replaced this call's note, on top; the earlier call's note is untouched.
    let today = call.answered_at.unwrap().format("%Y-%m-%d").to_string();
    let lines = memory(&app, id).await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0], format!("{today}: {expected}"));
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("I need a cleaning next Tuesday.\"") && l.contains("caller said")),
        "the raw sentence is gone: {lines:?}"
    );
    assert_eq!(lines[1..], before[..], "older notes stay, newest first");

    // What was asked: the key, the model, strict structured output with the client's fields,
    // the transcript as data.
    let requests = fake.requests();
    let ours: Vec<_> = requests
        .iter()
        .filter(|r| r.body.to_string().contains("next Tuesday"))
        .collect();
    assert_eq!(ours.len(), 1);
    let r = ours[0];
    assert_eq!(r.authorization.as_deref(), Some(&*format!("Bearer {KEY}")));
    assert_eq!(r.body["model"], "gpt-5-mini");
    assert_eq!(r.body["store"], false);
    assert_eq!(r.body["text"]["format"]["strict"], true);
    assert_eq!(
        r.body["text"]["format"]["schema"]["properties"]["fields"],
        appointment()
    );
    assert!(
        r.body["instructions"]
            .as_str()
            .unwrap()
            .contains("in Spanish")
    );
    assert!(
        !r.body["instructions"]
            .as_str()
            .unwrap()
            .contains("next Tuesday")
    );

    // The admin API shows it; the business gets its call.completed event.
    let shown: Value = app
        .admin(Method::GET, "/calls/CA1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["summary"], expected);
    assert_eq!(shown["results"], minimal_appointment());
    assert_eq!(shown["post_call"]["status"], "done");
    assert_eq!(shown["post_call"]["attempts"], 1);
    assert_eq!(shown["post_call"]["next_attempt_at"], Value::Null);
    let events = completed_events(&app, id).await;
    let event = events
        .iter()
        .find(|e| e["call_sid"] == "CA1")
        .expect("a call.completed event");
    assert_eq!(event["summary"], expected);
    assert_eq!(event["results"], minimal_appointment());
    assert_eq!(event["error"], Value::Null);
    assert_eq!(event["from"], CALLER);
    assert_eq!(event["duration_ms"], 42_000);
    assert_eq!(event["transcript_path"], "/admin/api/v1/calls/CA1");
    app.shutdown().await;
}
on_both_backends!(a_finished_call_gets_its_summary_and_validated_fields);

/// A call that wrote nothing into caller memory (an untrusted caller id) is summarised, but its
/// summary does not go into the number's memory either.
async fn a_call_that_wrote_no_memory_gets_a_summary_but_leaves_memory_alone(backend: Backend) {
    let fake = FakeResponses::start().await.unwrap();
    let app = app(backend, &fake, "").await;
    let id = client(&app, None).await;
    finish(&app, finished(id, "CA0", &["Are you open on Saturdays?"])).await;
    settled(&app, "CA0").await;
    let before = memory(&app, id).await;
    let mut untrusted = finished(id, "CA1", &["Read me Dana's last appointment."]);
    untrusted.remember = None;
    finish(&app, untrusted).await;
    let job = settled(&app, "CA1").await;
    assert_eq!(job.status, "done");
    assert!(!job.remember);
    let call = calls::call_by_sid(&app.state.db, "CA1")
        .await
        .unwrap()
        .unwrap()
        .call;
    assert!(call.summary.as_deref().unwrap().starts_with("Summary:"));
    assert_eq!(
        memory(&app, id).await,
        before,
        "the number's memory is untouched"
    );
    app.shutdown().await;
}
on_both_backends!(a_call_that_wrote_no_memory_gets_a_summary_but_leaves_memory_alone);

async fn a_mismatch_is_asked_again_and_the_valid_answer_stored(backend: Backend) {
    let fake = FakeResponses::start().await.unwrap();
    fake.push([Fault::Mismatch]);
    let app = app(backend, &fake, "").await;
    let id = client(&app, Some(appointment())).await;
    finish(&app, finished(id, "CA1", &["Can I move my appointment?"])).await;
    let job = settled(&app, "CA1").await;
    assert_eq!((job.status.as_str(), job.attempts), ("done", 1));
    let requests = fake.requests();
    assert_eq!(requests.len(), 2, "asked once more, in the same attempt");
    assert!(
        requests[0]
            .answer
            .as_deref()
            .unwrap()
            .contains("not_in_the_schema"),
        "the first answer did not match"
    );
    let retry = requests[1].body["instructions"].as_str().unwrap();
    assert!(
        retry.contains("did not match the required schema") && retry.contains("/fields"),
        "{retry}"
    );
    let call = calls::call_by_sid(&app.state.db, "CA1")
        .await
        .unwrap()
        .unwrap()
        .call;
    let results: Value = serde_json::from_str(call.results.as_deref().unwrap()).unwrap();
    assert_eq!(results, minimal_appointment());
    assert!(memory(&app, id).await[0].contains("Summary: the caller asked"));
    app.shutdown().await;
}
on_both_backends!(a_mismatch_is_asked_again_and_the_valid_answer_stored);

async fn two_mismatches_fail_the_job_and_store_nothing(backend: Backend) {
    let fake = FakeResponses::start().await.unwrap();
    fake.push([Fault::Mismatch, Fault::Mismatch]);
    let app = app(backend, &fake, "").await;
    let id = client(&app, Some(appointment())).await;
    let f = finished(id, "CA1", &["My tooth hurts."]);
    let raw = f.summary.clone().unwrap();
    finish(&app, f).await;
    let job = settled(&app, "CA1").await;
    assert_eq!((job.status.as_str(), job.attempts), ("failed", 1));
    let error = job.last_error.unwrap();
    assert!(
        error.starts_with("the answer did not match the schema twice: at /fields")
            && error.contains("not_in_the_schema"),
        "{error}"
    );
    assert_eq!(fake.requests().len(), 2, "no third request");
    let call = calls::call_by_sid(&app.state.db, "CA1")
        .await
        .unwrap()
        .unwrap()
        .call;
    assert_eq!(call.summary.as_deref(), Some(raw.as_str()), "raw note kept");
    assert_eq!(call.results, None, "nothing invalid stored");
    assert_eq!(memory(&app, id).await, [raw]);
    let events = completed_events(&app, id).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["summary"], Value::Null);
    assert_eq!(events[0]["results"], Value::Null);
    assert_eq!(events[0]["error"], error.as_str());
    app.shutdown().await;
}
on_both_backends!(two_mismatches_fail_the_job_and_store_nothing);

async fn server_errors_are_retried_with_backoff(backend: Backend) {
    let fake = FakeResponses::start().await.unwrap();
    fake.push([Fault::Status(500), Fault::Status(500)]);
    let app = app(backend, &fake, "").await;
    let id = client(&app, None).await;
    finish(&app, finished(id, "CA1", &["Do you take walk-ins?"])).await;
    let job = settled(&app, "CA1").await;
    assert_eq!(
        (job.status.as_str(), job.attempts, job.last_error.as_deref()),
        ("done", 3, None)
    );
    let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [500, 500, 200]);
    // A client without a schema gets a summary and no results.
    let call = calls::call_by_sid(&app.state.db, "CA1")
        .await
        .unwrap()
        .unwrap()
        .call;
    assert!(
        call.summary
            .unwrap()
            .starts_with("Summary: the caller asked")
    );
    assert_eq!(call.results, None);
    let r = &fake.requests()[2];
    assert!(
        r.body["text"]["format"]["schema"]["properties"]
            .get("fields")
            .is_none()
    );
    app.shutdown().await;
}
on_both_backends!(server_errors_are_retried_with_backoff);

async fn after_max_attempts_the_job_fails_with_the_last_error(backend: Backend) {
    let fake = FakeResponses::start().await.unwrap();
    fake.push([Fault::Status(429), Fault::NotJson, Fault::Hang]);
    let app = app(
        backend,
        &fake,
        "[post_call]\nmax_attempts = 3\ntimeout_secs = 1\nlease_secs = 3\n",
    )
    .await;
    let id = client(&app, Some(appointment())).await;
    finish(&app, finished(id, "CA1", &["Hello?"])).await;
    let job = settled(&app, "CA1").await;
    assert_eq!(job.status, "failed");
    assert_eq!(job.attempts, 3);
    assert_eq!(
        job.last_error.as_deref(),
        Some("no answer within post_call.timeout_secs (1 s)")
    );
    assert_eq!(fake.requests().len(), 3);
    assert_eq!(fake.completions(), 0);
    let events = completed_events(&app, id).await;
    assert_eq!(events.len(), 1, "the business hears of the call anyway");
    assert_eq!(events[0]["error"], job.last_error.unwrap());
    assert_eq!(events[0]["summary"], Value::Null);
    let shown: Value = app
        .admin(Method::GET, "/calls/CA1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["post_call"]["status"], "failed");
    assert_eq!(
        shown["post_call"]["last_error"],
        "no answer within post_call.timeout_secs (1 s)"
    );
    app.shutdown().await;
}
on_both_backends!(after_max_attempts_the_job_fails_with_the_last_error);

async fn a_refused_request_fails_at_once_and_names_the_error(backend: Backend) {
    let fake = FakeResponses::start().await.unwrap();
    fake.push([Fault::Status(400)]);
    let app = app(backend, &fake, "").await;
    let id = client(&app, None).await;
    finish(&app, finished(id, "CA1", &["Hi"])).await;
    let job = settled(&app, "CA1").await;
    assert_eq!((job.status.as_str(), job.attempts), ("failed", 1));
    let error = job.last_error.unwrap();
    assert!(
        error.starts_with("HTTP 400 Bad Request: server_error:"),
        "{error}"
    );
    assert!(!error.contains(KEY));
    app.shutdown().await;
}
on_both_backends!(a_refused_request_fails_at_once_and_names_the_error);

async fn killed_mid_job_and_restarted_it_completes_exactly_once(backend: Backend) {
    let fake = FakeResponses::start().await.unwrap();
    fake.push([Fault::Hang]);
    let app = app(backend, &fake, "").await;
    let id = client(&app, Some(appointment())).await;
    finish(&app, finished(id, "CA1", &["Please call me back."])).await;
    // The worker claimed the job and is waiting for an answer that never comes: kill it.
    assert!(fake.wait_requests(1, Duration::from_secs(20)).await);
    let app = app.restart().await;
    let abandoned = job(&app, "CA1").await.unwrap();
    assert_eq!(abandoned.status, "pending");
    assert_eq!(abandoned.attempts, 1);
    assert_eq!(
        abandoned.last_error, None,
        "the attempt was cut, not recorded"
    );
    let lease = abandoned
        .locked_until
        .expect("still leased to the dead instance");

    let done = settled(&app, "CA1").await;
    assert_eq!((done.status.as_str(), done.attempts), ("done", 2));
    assert!(
        done.updated_at >= lease,
        "the new instance waited for the lease to run out"
    );
    assert_eq!(fake.requests().len(), 2);
    assert_eq!(fake.completions(), 1);
    let summaries = memory(&app, id)
        .await
        .iter()
        .filter(|l| l.contains("Summary: the caller asked"))
        .count();
    assert_eq!(summaries, 1, "the memory has the summary once");
    assert_eq!(completed_events(&app, id).await.len(), 1, "one event");
    // Nothing comes due later: the job stays done.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fake.requests().len(), 2);
    app.shutdown().await;
}
on_both_backends!(killed_mid_job_and_restarted_it_completes_exactly_once);

/// A text exchange of the test caller's WhatsApp chat, started at `started`.
fn exchange(
    client_id: ClientId,
    sid: &str,
    started: chrono::DateTime<Utc>,
    starts: bool,
    summary_due: chrono::DateTime<Utc>,
) -> FinishedCall {
    let mut f = finished(client_id, sid, &["hi"]);
    f.call.channel = warmline::domain::Channel::Whatsapp;
    f.call.started_at = started;
    f.answered_at = Some(started);
    f.ended_at = started + secs(2);
    f.stream_sid = None;
    f.remember = None;
    f.summary = Some("hi".into());
    f.chat = Some(calls::ChatExchange {
        starts,
        summary_due,
        since: None,
        joins: false,
    });
    f
}

/// When the job of exchange `sid` is due (to the second), if it has one.
async fn due(app: &TestApp, sid: &str) -> Option<i64> {
    job(app, sid).await.map(|j| j.next_attempt_at.timestamp())
}

/// A chat's exchanges share the job of its first one; a later exchange puts it off, never
/// earlier (an exchange recorded late, from a spool, changes nothing); an exchange after the
/// job was tried holds a job of its own; a new chat's job is put off by its own exchanges only.
async fn a_chat_has_one_job_put_off_by_its_exchanges_only(backend: Backend) {
    let fake = FakeResponses::start().await.unwrap();
    let app = app(backend, &fake, "").await;
    let c = client(&app, None).await;
    let t = Utc::now();
    let h = |n: i64| (t + chrono::Duration::hours(n)).timestamp();
    let m = chrono::Duration::minutes;
    let hours = chrono::Duration::hours;
    finish(&app, exchange(c, "TXA", t, true, t + hours(1))).await;
    assert_eq!(due(&app, "TXA").await, Some(h(1)));
    finish(&app, exchange(c, "TXB", t + m(1), false, t + hours(2))).await;
    assert_eq!(
        due(&app, "TXA").await,
        Some(h(2)),
        "put off by the next message"
    );
    assert_eq!(due(&app, "TXB").await, None, "one job for the chat");
    finish(&app, exchange(c, "TXC", t + secs(30), false, t + m(30))).await;
    assert_eq!(due(&app, "TXA").await, Some(h(2)), "never earlier");
    assert_eq!(due(&app, "TXC").await, None);
    // The job is tried (here by hand, as if it came due): a message after it holds its own.
    let claim = post_call::claim_due(&app.state.db, t + hours(3), t + hours(4), 10)
        .await
        .unwrap();
    let ids: Vec<&str> = claim.jobs.iter().map(|j| j.call_sid.as_str()).collect();
    assert_eq!(ids, ["TXA"]);
    finish(&app, exchange(c, "TXD", t + m(2), false, t + hours(3))).await;
    assert_eq!(
        due(&app, "TXD").await,
        Some(h(3)),
        "the chat's job ran: its own"
    );
    // A new chat, and its next message: only the new chat's job moves.
    finish(&app, exchange(c, "TXE", t + m(5), true, t + hours(4))).await;
    finish(&app, exchange(c, "TXF", t + m(6), false, t + hours(5))).await;
    assert_eq!(due(&app, "TXE").await, Some(h(5)));
    assert_eq!(due(&app, "TXD").await, Some(h(3)));
    assert_eq!(due(&app, "TXF").await, None);
    // A call from the same number is not part of any chat.
    finish(&app, finished(c, "CAVOICE", &["hello"])).await;
    assert_eq!(due(&app, "TXE").await, Some(h(5)));
    // Another person's first two messages, answered at the same moment on two instances: the
    // one that found the chat begun is recorded first, and holds a job of its own (the
    // chat's first exchange was not recorded yet); the first, recorded next (though it began
    // a second earlier), takes that job over: one job, on the chat's first exchange.
    let other = |sid: &str, started, starts, due| {
        let mut f = exchange(c, sid, started, starts, due);
        f.call.from = "+14155550199".into();
        f
    };
    finish(&app, other("TXG", t + m(10), false, t + hours(6))).await;
    assert_eq!(due(&app, "TXG").await, Some(h(6)));
    let mut first = other("TXH", t + m(10) - secs(1), true, t + hours(7));
    first.chat.as_mut().unwrap().since = Some(t + m(10) - m(30));
    finish(&app, first).await;
    assert_eq!(due(&app, "TXG").await, None, "taken over");
    assert_eq!(due(&app, "TXH").await, Some(h(7)));
    assert_eq!(due(&app, "TXE").await, Some(h(5)), "another person's chat");
    // An exchange that joins a chat whose first is not recorded yet makes no job.
    let mut joins = other("TXI", t + m(40), false, t + hours(8));
    joins.call.from = "+14155550198".into();
    joins.chat.as_mut().unwrap().joins = true;
    finish(&app, joins).await;
    assert_eq!(due(&app, "TXI").await, None);
    app.shutdown().await;
}
on_both_backends!(a_chat_has_one_job_put_off_by_its_exchanges_only);

fn completion(raw_note: &str) -> Completion {
    Completion {
        event_type: warmline::webhooks::EventType::CallCompleted,
        summary: "The summary.".into(),
        results: None,
        raw_note: raw_note.into(),
        memory_note: "2026-11-29: The summary.".into(),
        event: json!({"summary": "The summary."}),
        erased_event: json!({"summary": null}),
    }
}

both_backends_with_post_call_off!(
    a_job_re_claimed_after_its_lease_is_completed_by_its_new_owner_only,
    |app| {
        let id = client(app, None).await;
        let f = finished(id, "CA1", &["Hi there"]);
        let raw = f.summary.clone().unwrap();
        calls::finish_call_with(&app.state.db, &f, true)
            .await
            .unwrap();
        let now = Utc::now();
        let first = post_call::claim_due(&app.state.db, now, now + secs(1), 10)
            .await
            .unwrap();
        assert_eq!(first.jobs.len(), 1);
        let a = first.jobs[0].clone();
        // Leased: nobody else gets it.
        let again = post_call::claim_due(&app.state.db, now, now + secs(1), 10)
            .await
            .unwrap();
        assert!(again.jobs.is_empty());
        // The lease runs out (its instance died): another instance claims it.
        let later = now + secs(2);
        let second = post_call::claim_due(&app.state.db, later, later + secs(60), 10)
            .await
            .unwrap();
        assert_eq!(second.jobs.len(), 1);
        let b = second.jobs[0].clone();
        assert_eq!((a.attempts, b.attempts), (1, 2));
        // The first owner comes back late: nothing it does is recorded.
        let c = completion(&raw);
        assert_eq!(
            post_call::complete(&app.state.db, &a, &c).await.unwrap(),
            Completed::NotOurs
        );
        assert!(
            !post_call::retry_at(&app.state.db, &a, later, "late")
                .await
                .unwrap()
        );
        assert!(
            !post_call::fail(
                &app.state.db,
                &a,
                "late",
                warmline::webhooks::EventType::CallCompleted,
                json!({})
            )
            .await
            .unwrap()
        );
        // The new owner completes it, once.
        assert_eq!(
            post_call::complete(&app.state.db, &b, &c).await.unwrap(),
            Completed::Done
        );
        assert_eq!(
            post_call::complete(&app.state.db, &b, &c).await.unwrap(),
            Completed::NotOurs
        );
        let stored = job(app, "CA1").await.unwrap();
        assert_eq!((stored.status.as_str(), stored.attempts), ("done", 2));
        assert_eq!(memory(app, id).await, ["2026-11-29: The summary."]);
        assert_eq!(completed_events(app, id).await.len(), 1);
    }
);

both_backends_with_post_call_off!(
    a_call_erased_while_its_job_ran_keeps_nothing_of_the_answer,
    |app| {
        let id = client(app, None).await;
        let f = finished(id, "CA1", &["My name is Dana"]);
        let raw = f.summary.clone().unwrap();
        calls::finish_call_with(&app.state.db, &f, true)
            .await
            .unwrap();
        let now = Utc::now();
        let claim = post_call::claim_due(&app.state.db, now, now + secs(60), 10)
            .await
            .unwrap();
        // A privacy request erases the caller while the model is being asked.
        callers::delete_caller(&app.state.db, id, CALLER)
            .await
            .unwrap();
        assert_eq!(
            post_call::complete(&app.state.db, &claim.jobs[0], &completion(&raw))
                .await
                .unwrap(),
            Completed::Erased
        );
        let call = calls::call_by_sid(&app.state.db, "CA1")
            .await
            .unwrap()
            .unwrap()
            .call;
        assert_eq!((call.summary, call.results), (None, None));
        assert!(
            callers::get_caller(&app.state.db, id, CALLER)
                .await
                .unwrap()
                .is_none(),
            "no memory recreated"
        );
        let stored = job(app, "CA1").await.unwrap();
        assert_eq!(stored.status, "failed");
        assert_eq!(stored.last_error.as_deref(), Some(post_call::ERASED));
        let events = completed_events(app, id).await;
        assert_eq!(events, [json!({"summary": null})]);
    }
);

both_backends_with_post_call_off!(
    only_calls_with_a_caller_line_get_a_job_and_only_when_enabled,
    |app| {
        let id = client(app, None).await;
        let metrics = app.state.metrics.clone();
        let db = &app.state.db;
        let finish = |sid: &str, said: &[&str], on: bool| {
            let f = finished(id, sid, said);
            let metrics = metrics.clone();
            async move {
                warmline::store::writer::execute(db, &metrics, on, Job::Finish(Box::new(f))).await
            }
        };
        finish("CA1", &["Hello"], true).await;
        finish("CA2", &["   "], true).await;
        finish("CA3", &[], true).await;
        finish("CA4", &["Hello"], false).await;
        let j = job(app, "CA1").await.expect("a caller line: a job");
        assert_eq!(
            (j.status.as_str(), j.attempts, j.call_sid.as_str()),
            ("pending", 0, "CA1")
        );
        assert!(
            job(app, "CA2").await.is_none(),
            "blank lines are nothing to summarise"
        );
        assert!(job(app, "CA3").await.is_none(), "the agent alone: no job");
        assert!(
            job(app, "CA4").await.is_none(),
            "post_call.enabled = false: no job"
        );
        // A call saved twice still has one job.
        calls::finish_call_with(db, &finished(id, "CA1", &["Hello"]), true)
            .await
            .unwrap();
        let jobs = post_call_job_count(app).await;
        assert_eq!(jobs, 1);
    }
);

async fn post_call_job_count(app: &TestApp) -> usize {
    use sea_orm::EntityTrait;
    post_call_job::Entity::find()
        .all(&app.state.db)
        .await
        .unwrap()
        .len()
}

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

both_backends!(results_schema_is_checked_when_a_client_is_saved, |app| {
    let base = json!({"name": "Bright Smile", "phone_numbers": ["+15005550006"],
        "instructions": "x", "greeting": "Hello", "voice": "marin"});
    let post = |body: Value| app.admin(Method::POST, "/clients").json(&body).send();
    let mut optional = appointment();
    optional["required"] = json!(["reason", "urgency"]);
    let mut open = appointment();
    open.as_object_mut().unwrap().remove("additionalProperties");
    for (schema, says) in [
        (optional, "\"appointment_date\""),
        (open, "additionalProperties"),
        (
            json!({"type": "array", "items": {"type": "string"}}),
            "type",
        ),
        (
            json!({"type": "object", "properties": {"a": {"type": "strin"}}, "required": ["a"],
            "additionalProperties": false}),
            "JSON Schema",
        ),
        (json!("not a schema"), "object"),
    ] {
        let mut body = base.clone();
        body["results_schema"] = schema.clone();
        let resp = post(body).await.unwrap();
        assert_eq!(resp.status(), 422, "{schema}");
        let err: Value = resp.json().await.unwrap();
        let message = err["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("results_schema: ") && message.contains(says),
            "{message}"
        );
    }
    let mut body = base.clone();
    body["results_schema"] = appointment();
    let resp = post(body.clone()).await.unwrap();
    assert_eq!(resp.status(), 201);
    let created: Value = resp.json().await.unwrap();
    assert_eq!(created["results_schema"], appointment());
    let id = created["id"].as_i64().unwrap();
    body["results_schema"] = Value::Null;
    let replaced: Value = app
        .admin(Method::PUT, &format!("/clients/{id}"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(replaced["results_schema"], Value::Null);
    let doc: Value = app
        .http
        .get(app.url("/admin/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let schemas = &doc["components"]["schemas"];
    assert!(schemas["ClientIn"]["properties"]["results_schema"].is_object());
    assert!(schemas["CallOut"]["properties"]["post_call"].is_object());
});

/// One call through the whole gateway (Twilio simulator, fake Realtime, fake Responses): the
/// call record's writer queues the job, the worker summarises it.
#[tokio::test]
async fn a_call_through_the_gateway_is_summarised() {
    use sim::{
        audio::clips,
        realtime::FakeConfig,
        twilio::{CallSpec, Step},
    };
    let fake = FakeResponses::start().await.unwrap();
    let gw = crate::support::gateway(
        FakeConfig::instant(),
        &format!(
            "[openai]\nbase_url = \"{}\"\n[post_call]\nretry_schedule_secs = [0.1]\n",
            fake.base_url()
        ),
    )
    .await;
    let placed = gw
        .twilio
        .place_call(&CallSpec::new(CALLER, crate::support::CLIENT_NUMBER))
        .await
        .unwrap();
    let wait = Duration::from_secs(10);
    gw.stream(
        &placed,
        &[
            Step::WaitForAgentQuiet(wait),
            Step::Say(clips::question()),
            Step::Silence(Duration::from_millis(900)),
            Step::HangUp,
        ],
    )
    .await;
    let ended = gw.ended_call(&placed.call_sid).await;
    let raw = ended
        .call
        .summary
        .clone()
        .expect("the caller's first words");
    assert!(raw.contains("caller said"), "{raw}");
    let job = settled(&gw.app, &placed.call_sid).await;
    assert_eq!(job.status, "done");
    let call = calls::call_by_sid(&gw.app.state.db, &placed.call_sid)
        .await
        .unwrap()
        .unwrap()
        .call;
    let summary = call.summary.unwrap();
    assert!(
        summary.starts_with("Summary: the caller asked"),
        "{summary}"
    );
    let lines = memory(&gw.app, gw.client_id).await;
    assert!(lines[0].ends_with(&summary), "{lines:?}");
    assert!(!lines.contains(&raw), "{lines:?}");
    assert_eq!(
        fake.requests()[0].authorization.as_deref(),
        Some("Bearer sk-test-key")
    );
    gw.app.shutdown().await;
}
