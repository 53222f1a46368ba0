//! After the call (README.md, "After the call"): a durable job per finished call asks the
//! OpenAI Responses API for a summary and the client's own structured fields (its
//! `results_schema`), with strict structured output, validates the answer, and stores it on the
//! call; the summary replaces the caller's first words in caller memory, and the business gets
//! a `call.completed` webhook event.
//!
//! - [`schema`]: the client's schema (checked when saved, strict-mode rules), the answer's
//!   schema and checking an answer against it (pure).
//! - [`responses`]: the Responses API request and answer (pure).
//! - [`worker`]: the task the app starts; it claims due jobs with a lease, asks, validates and
//!   records the outcome (`store::post_call`).
//! - [`completed_event`] and [`memory_note`]: what the business and the caller's memory get
//!   (pure).
//!
//! Invariants:
//! 1. Durable: a job is a row of `post_call_jobs`, inserted in the transaction that writes the
//!    finished call (only for a call with a caller line, only with `post_call.enabled`);
//!    nothing is kept in memory between attempts, so a restart loses nothing.
//! 2. Exactly once: a job is claimed by a compare-and-set and leased (`post_call.lease_secs`);
//!    a job whose instance died is claimed again after its lease; its completion (results,
//!    memory, event, `done`) is one transaction that commits only while the job is still
//!    pending with the claimer's attempt count, so it never completes twice.
//! 3. Nothing invalid is stored: the fields are validated against the client's schema; a
//!    mismatch is asked again once, a second mismatch fails the job.
//! 4. The transcript is data: it goes in `input` as a JSON document, and the instructions say
//!    it is a transcript to summarise, never instructions.
//! 5. Every job ends in a `call.completed` event (through the outbox, for a client with a
//!    `webhook_url`): with the summary and results, or with them null and the error.
//! 6. The API key never reaches logs or `last_error`.

pub mod responses;
pub mod schema;
pub mod worker;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::{domain::Channel, store::entities::call};

/// Most characters of a summary kept in the caller's memory note.
pub const MEMORY_NOTE_CHARS: usize = 300;

/// The caller-memory note of a summarised call: `YYYY-MM-DD: summary`, one line, at most
/// [`MEMORY_NOTE_CHARS`] characters of summary (the same date the end of the call wrote); of a
/// chat, `YYYY-MM-DD: wrote on whatsapp: summary` (the date of its first message, the channel
/// as the chat's own note names it).
pub fn memory_note(channel: Channel, answered_at: DateTime<Utc>, summary: &str) -> String {
    let line = summary.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut text: String = line.chars().take(MEMORY_NOTE_CHARS).collect();
    if line.chars().count() > MEMORY_NOTE_CHARS {
        text.pop();
        text.push('…');
    }
    let date = answered_at.format("%Y-%m-%d");
    match channel {
        Channel::Voice => format!("{date}: {text}"),
        chat => format!("{date}: wrote on {chat}: {text}"),
    }
}

/// A chat's extent, as its summary job read it: when its last exchange ended and how many
/// messages the person sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatSpan {
    /// The end of the chat's last exchange.
    pub ended_at: DateTime<Utc>,
    /// The person's messages.
    pub messages: usize,
}

/// The `data` of a `chat.completed` event: the chat (its id, the `call_sid` of its first
/// exchange; the client, channel, who wrote and to where, when it started and ended, how many
/// messages the person sent), its `summary` and `results` (null when the job failed, with
/// `error` saying why; `ended_at` and `messages` are null when the chat could not be read), and
/// `transcript_path` (the first exchange's).
pub fn chat_completed_event(
    first: &call::Model,
    span: Option<ChatSpan>,
    summary: Option<&str>,
    results: Option<&Value>,
    error: Option<&str>,
) -> Value {
    json!({
        "chat_id": first.call_sid,
        "client_id": first.client_id,
        "channel": first.channel,
        "from": first.from_number,
        "to": first.to_number,
        "started_at": time(first.started_at),
        "ended_at": span.map(|s| time(s.ended_at)),
        "messages": span.map(|s| s.messages),
        "summary": summary,
        "results": results,
        "error": error,
        "transcript_path": format!("{}/calls/{}", crate::admin::BASE, first.call_sid),
    })
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The `data` of a `call.completed` event: the call (sid, client, from, to, when it started and
/// ended, its duration and end reason), its `summary` and `results` (null when the job failed,
/// with `error` saying why), and `transcript_path`, where the admin API shows the transcript.
pub fn completed_event(
    call: &call::Model,
    summary: Option<&str>,
    results: Option<&Value>,
    error: Option<&str>,
) -> Value {
    json!({
        "call_sid": call.call_sid,
        "client_id": call.client_id,
        "from": call.from_number,
        "to": call.to_number,
        "started_at": time(call.started_at),
        "answered_at": call.answered_at.map(time),
        "ended_at": call.ended_at.map(time),
        "duration_ms": call.duration_ms,
        "end_reason": call.end_reason,
        "summary": summary,
        "results": results,
        "error": error,
        "transcript_path": format!("{}/calls/{}", crate::admin::BASE, call.call_sid),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::Settings,
        webhooks::retry::{AfterFailure, after_failure},
    };
    use std::time::Duration;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn call() -> call::Model {
        call::Model {
            id: 7,
            call_sid: "CA0123".into(),
            client_id: Some(3),
            from_number: "+14155550100".into(),
            to_number: "+15005550006".into(),
            stream_sid: Some("MZ1".into()),
            status: "completed".into(),
            path: Some("warm".into()),
            webhook_ms: Some(800),
            time_to_first_audio_ms: Some(0),
            started_at: at("2026-11-29T10:15:00Z"),
            answered_at: Some(at("2026-11-29T10:15:01.250Z")),
            ended_at: Some(at("2026-11-29T10:16:25Z")),
            duration_ms: Some(83_750),
            end_reason: Some("twilio_stop".into()),
            summary: Some("2026-11-29: caller said \"hi\"".into()),
            created_at: at("2026-11-29T10:15:00Z"),
            updated_at: at("2026-11-29T10:16:25Z"),
            results: None,
            recorded: true,
            caller_trust: None,
            timeline: None,
            channel: "voice".into(),
        }
    }

    #[test]
    fn the_completed_event_carries_the_call_summary_results_and_transcript_path() {
        let results = json!({"reason": "cleaning", "urgency": "low"});
        let data = completed_event(
            &call(),
            Some("Dana booked a cleaning."),
            Some(&results),
            None,
        );
        assert_eq!(
            data,
            json!({
                "call_sid": "CA0123", "client_id": 3,
                "from": "+14155550100", "to": "+15005550006",
                "started_at": "2026-11-29T10:15:00.000Z",
                "answered_at": "2026-11-29T10:15:01.250Z",
                "ended_at": "2026-11-29T10:16:25.000Z",
                "duration_ms": 83750, "end_reason": "twilio_stop",
                "summary": "Dana booked a cleaning.",
                "results": {"reason": "cleaning", "urgency": "low"},
                "error": null,
                "transcript_path": "/admin/api/v1/calls/CA0123"
            })
        );
    }

    #[test]
    fn the_chat_completed_event_names_the_chat_its_channel_and_extent() {
        let first = call::Model {
            call_sid: "TX0001".into(),
            channel: "whatsapp".into(),
            to_number: "+15005550006".into(),
            ..call()
        };
        let span = ChatSpan {
            ended_at: at("2026-11-29T10:40:00Z"),
            messages: 3,
        };
        let data = chat_completed_event(&first, Some(span), Some("Dana asked."), None, None);
        assert_eq!(
            data,
            json!({
                "chat_id": "TX0001", "client_id": 3, "channel": "whatsapp",
                "from": "+14155550100", "to": "+15005550006",
                "started_at": "2026-11-29T10:15:00.000Z",
                "ended_at": "2026-11-29T10:40:00.000Z",
                "messages": 3,
                "summary": "Dana asked.", "results": null, "error": null,
                "transcript_path": "/admin/api/v1/calls/TX0001"
            })
        );
        let unread = chat_completed_event(&first, None, None, None, Some("HTTP 500"));
        assert_eq!(unread["ended_at"], Value::Null);
        assert_eq!(unread["messages"], Value::Null);
        assert_eq!(unread["error"], "HTTP 500");
    }

    #[test]
    fn a_failed_job_still_gets_its_event_with_nulls_and_the_error() {
        let data = completed_event(&call(), None, None, Some("HTTP 500"));
        assert_eq!(data["summary"], Value::Null);
        assert_eq!(data["results"], Value::Null);
        assert_eq!(data["error"], "HTTP 500");
        assert_eq!(data["call_sid"], "CA0123");
    }

    #[test]
    fn the_memory_note_is_one_dated_bounded_line() {
        let note = memory_note(
            Channel::Voice,
            at("2026-11-29T23:59:00Z"),
            "Dana wants\na cleaning.\n",
        );
        assert_eq!(note, "2026-11-29: Dana wants a cleaning.");
        let chat = memory_note(Channel::Sms, at("2026-11-29T10:00:00Z"), "Dana asked.");
        assert_eq!(chat, "2026-11-29: wrote on sms: Dana asked.");
        let long = memory_note(
            Channel::Voice,
            at("2026-11-29T10:00:00Z"),
            &"é".repeat(1000),
        );
        assert_eq!(
            long.chars().count(),
            "2026-11-29: ".len() + MEMORY_NOTE_CHARS
        );
        assert!(long.ends_with('…'));
    }

    #[test]
    fn the_default_backoff_follows_the_schedule_then_gives_up() {
        let s = Settings::from_toml("[twilio]\nauth_token=\"t\"\n").unwrap();
        let schedule = s.post_call.retry_schedule();
        let max = s.post_call.max_attempts;
        let delays: Vec<u64> = (1..max)
            .map(|a| match after_failure(&schedule, a, max, 0.0) {
                AfterFailure::Retry(d) => d.as_secs(),
                AfterFailure::GiveUp => 0,
            })
            .collect();
        assert_eq!(delays, [10, 60, 300, 1800, 3600, 3600, 3600]);
        assert_eq!(
            after_failure(&schedule, max, max, 0.0),
            AfterFailure::GiveUp
        );
        // Jitter only ever stretches a delay, by at most a fifth.
        let AfterFailure::Retry(d) = after_failure(&schedule, 1, max, 0.99) else {
            panic!("retry expected");
        };
        assert!(d >= Duration::from_secs(10) && d < Duration::from_secs(12));
    }
}
