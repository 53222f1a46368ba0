//! Webhook events to the business (README.md, "Webhook events"): `message.taken` and
//! `call.completed`, signed the Standard Webhooks way and delivered from a durable outbox.
//!
//! - [`signing`]: sign, verify, generate secrets (pure).
//! - [`retry`]: the backoff schedule and the `last_error` text (pure).
//! - [`worker`]: the delivery task the app starts; it claims due outbox rows with a lease,
//!   POSTs them and records the outcome.
//!
//! The outbox itself is the `outbox` table (`store::outbox`): an event is enqueued in the
//! transaction that produced it, its body fixed then; the URL and the secret are read at each
//! attempt, so a rotated secret or a corrected URL applies to retries.
//!
//! Invariants:
//! 1. A body is sent exactly as stored; each attempt is signed with its own timestamp.
//! 2. Delivery is at least once: a row is marked `delivered` only after a 2xx; a crash between
//!    the answer and the mark sends it again (same `webhook-id`) once its lease expires.
//! 3. Two instances never send one row at the same time: a row is claimed by a compare-and-set
//!    on its attempt count, and held by a lease (`locked_until`) longer than the HTTP timeout.
//! 4. Secrets and webhook URLs never reach logs or `last_error`.

pub mod retry;
pub mod signing;
pub mod worker;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use url::Url;

/// The events warmline sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// `message.taken`: the agent took a message for the business.
    MessageTaken,
    /// `call.completed`: a call ended (enqueued by the post-call job).
    CallCompleted,
    /// `chat.completed`: a person's chat on a text channel ended, quiet for
    /// `text.chat_idle_secs` (enqueued by its post-call job).
    ChatCompleted,
}

impl EventType {
    /// Every event type.
    pub const ALL: [EventType; 3] = [
        EventType::MessageTaken,
        EventType::CallCompleted,
        EventType::ChatCompleted,
    ];

    /// The `type` of the envelope and the stored `event_type` (a contract: never rename one).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MessageTaken => "message.taken",
            Self::CallCompleted => "call.completed",
            Self::ChatCompleted => "chat.completed",
        }
    }

    /// The event type named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    r#type: &'static str,
    timestamp: String,
    data: &'a serde_json::Value,
}

/// The body sent for an event: `{"type": "...", "timestamp": "<RFC 3339>", "data": {...}}`,
/// `timestamp` being when the event happened.
pub fn envelope(event: EventType, at: DateTime<Utc>, data: &serde_json::Value) -> String {
    let env = Envelope {
        r#type: event.as_str(),
        timestamp: at.to_rfc3339_opts(SecondsFormat::Millis, true),
        data,
    };
    // A struct of strings and a JSON value always serialises.
    serde_json::to_string(&env).unwrap_or_else(|_| "{}".into())
}

/// A new `webhook-id`: `msg_` and 32 random hex digits.
pub fn new_webhook_id() -> String {
    let mut bytes = [0u8; 16];
    rand::fill(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("msg_{hex}")
}

/// Longest accepted webhook URL.
pub const MAX_URL_CHARS: usize = 2000;

/// Checks a client's `webhook_url`: an absolute `https://` URL with a host (`http://` too when
/// `allow_http`), no credentials, no fragment. The error says what is wrong, without the URL.
pub fn check_url(raw: &str, allow_http: bool) -> Result<Url, String> {
    let raw = raw.trim();
    if raw.chars().count() > MAX_URL_CHARS {
        return Err(format!("must be at most {MAX_URL_CHARS} characters"));
    }
    let url = Url::parse(raw).map_err(|_| "must be an absolute https:// URL".to_string())?;
    match url.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => {
            return Err(
                "must be https:// (http:// is refused unless webhooks.allow_http = true)"
                    .to_string(),
            );
        }
        _ => return Err("must be an https:// URL".to_string()),
    }
    if url.host().is_none() {
        return Err("must have a host".to_string());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials (user:password@)".to_string());
    }
    if url.fragment().is_some() {
        return Err("must not have a #fragment".to_string());
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_has_type_timestamp_and_data() {
        let at = DateTime::parse_from_rfc3339("2026-11-29T10:15:00.250Z")
            .unwrap()
            .with_timezone(&Utc);
        let body = envelope(
            EventType::MessageTaken,
            at,
            &serde_json::json!({"message": "call me"}),
        );
        assert_eq!(
            body,
            r#"{"type":"message.taken","timestamp":"2026-11-29T10:15:00.250Z","data":{"message":"call me"}}"#
        );
    }

    #[test]
    fn event_types_round_trip() {
        for e in EventType::ALL {
            assert_eq!(EventType::parse(e.as_str()), Some(e));
        }
        assert_eq!(EventType::parse("call.started"), None);
    }

    #[test]
    fn webhook_ids_are_prefixed_and_unique() {
        let a = new_webhook_id();
        assert!(a.starts_with("msg_") && a.len() == 36, "{a}");
        assert_ne!(a, new_webhook_id());
    }

    #[test]
    fn webhook_urls_are_https_unless_http_is_allowed() {
        assert!(check_url("https://hooks.example.com/warmline?k=1", false).is_ok());
        let err = check_url("http://hooks.example.com/", false).unwrap_err();
        assert!(err.contains("webhooks.allow_http"), "{err}");
        assert!(check_url("http://127.0.0.1:9000/hook", true).is_ok());
        for bad in [
            "",
            "hooks.example.com",
            "ftp://hooks.example.com/",
            "https://user:pw@hooks.example.com/",
            "https://hooks.example.com/#x",
            "unix:/run/sock",
        ] {
            let err = check_url(bad, true).expect_err(bad);
            assert!(!err.contains("pw@"), "{err}");
        }
        let long = format!("https://h.example/{}", "a".repeat(MAX_URL_CHARS));
        assert!(check_url(&long, false).is_err());
    }
}
