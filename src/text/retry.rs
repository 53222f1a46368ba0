//! Requests to a channel's API (a WhatsApp or SMS message through Twilio, a note, a field or a
//! Salesbot on a Kommo lead), tried again under one rule: a repeat the person would see twice (a
//! message, a Salesbot launch: [`Retry::IfNotDone`]) is only made when the first surely did not
//! happen. A note or a field ([`Retry::Always`]) is tried again after any failure: at worst the
//! business sees a note twice.
//!
//! Neither Twilio's Messages API nor Kommo's API takes an idempotency key, so after a timeout, a
//! broken connection or a 500 the request may have been done: sending a message again would
//! give the person the answer twice. A 429 (rate limited), a 503 (the server could not take
//! the request) and a connection never made are surely not done, and are always tried again.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

/// When a request is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Also after any 5xx and any transport error: a repeat does no harm (a note, a field).
    Always,
    /// Only when it surely was not done: a 429, a 503 or no connection made (a message, a
    /// Salesbot launch).
    IfNotDone,
}

impl Retry {
    /// Whether a request answered `status` is tried again.
    pub fn again_after(self, status: StatusCode) -> bool {
        status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::SERVICE_UNAVAILABLE
            || (self == Retry::Always && status.is_server_error())
    }

    /// Whether a request that failed without an answer is tried again.
    pub fn again_after_error(self, e: &reqwest::Error) -> bool {
        self == Retry::Always || e.is_connect()
    }
}

/// A transport error, for a log: never the URL (it may carry an account's id).
pub fn describe(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "the connection failed"
    }
}

/// Sends what `request` builds, at most `pauses.len() + 1` times (waiting each pause before a
/// new attempt) as `retry` allows; the successful answer's body as JSON (`Null` if it is not),
/// or the last failure: a transport error, or `refused(status, body)`.
pub async fn send(
    request: impl Fn() -> reqwest::RequestBuilder,
    retry: Retry,
    pauses: &[Duration],
    refused: impl Fn(StatusCode, &Value) -> String,
) -> Result<Value, String> {
    let mut attempt = 0;
    loop {
        let (failure, again) = match request().send().await {
            Err(e) => (describe(&e).to_string(), retry.again_after_error(&e)),
            Ok(resp) => {
                let status = resp.status();
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                if status.is_success() {
                    return Ok(body);
                }
                (refused(status, &body), retry.again_after(status))
            }
        };
        match pauses.get(attempt) {
            Some(pause) if again => tokio::time::sleep(*pause).await,
            _ => return Err(failure),
        }
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_may_have_been_done_is_repeated_only_where_a_repeat_is_harmless() {
        for status in [429, 503] {
            let s = StatusCode::from_u16(status).unwrap();
            assert!(Retry::Always.again_after(s), "{status}");
            assert!(Retry::IfNotDone.again_after(s), "{status}");
        }
        for status in [500, 502, 504] {
            let s = StatusCode::from_u16(status).unwrap();
            assert!(Retry::Always.again_after(s), "{status}");
            assert!(!Retry::IfNotDone.again_after(s), "{status}");
        }
        for status in [400, 401, 404, 409] {
            let s = StatusCode::from_u16(status).unwrap();
            assert!(!Retry::Always.again_after(s), "{status}");
            assert!(!Retry::IfNotDone.again_after(s), "{status}");
        }
    }
}
