//! WhatsApp and SMS through Twilio Messaging (README "WhatsApp and SMS").
//!
//! `POST /twilio/messaging` is the number's "A message comes in" webhook (Twilio's form:
//! `MessageSid`, `From`, `To`, `Body`, …; twilio.com/docs/messaging/guides/webhook-request),
//! signed like the voice webhook. It is answered at once with an empty `<Response/>` (Twilio
//! waits for nothing), and the answer is made and sent in the background through the Messages
//! REST API (`POST {twilio.api_base_url}/2010-04-01/Accounts/{AccountSid}/Messages.json`, Basic
//! auth with the account SID and auth token), split into messages of at most 1600 characters
//! (the Messages resource's `Body` limit: twilio.com/docs/api/errors/21617).
//!
//! The person is the sender's E.164 number (`whatsapp:` removed), so WhatsApp, SMS and the
//! phone share one caller memory and one conversation. A retried webhook (the same
//! `MessageSid`) is acknowledged and not answered again (`store::conversations::take_inbound`).
//! Refusals: a bad signature 403 (nothing taken); a message to a number of no business, from a
//! sender that is not a phone number, empty, too long or over the person's rate is acknowledged
//! and not answered (logged). A business at `text.concurrent_per_client`, or a person whose
//! earlier messages are still being answered, is waited for (up to `text.timeout_secs`).

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::post,
};
use chrono::Utc;
use serde_json::Value;

use super::{
    agent::{Inbound, Refusal},
    retry::{self, Retry},
};
use crate::{
    app::AppState,
    config::{Secret, Settings},
    domain::{Channel, E164},
    store::{clients, conversations},
    twilio::{
        form,
        signature::{self, Signed},
    },
};

/// Longest `Body` of one message (characters).
pub const BODY_MAX: usize = 1600;
/// Pauses before sending one message again (after a 429, a 503 or no connection made).
const SEND_PAUSES: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(2)];

/// The messaging webhook's route (with the other Twilio routes).
pub fn router() -> Router<AppState> {
    Router::new().route("/twilio/messaging", post(inbound))
}

/// An empty TwiML answer: nothing is said in the webhook's answer.
fn ack() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response></Response>",
    )
        .into_response()
}

/// `POST /twilio/messaging`.
async fn inbound(
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
        tracing::warn!("messaging webhook refused: bad X-Twilio-Signature");
        return (StatusCode::FORBIDDEN, "invalid signature\n").into_response();
    }
    if state.settings.twilio.account_sid.is_empty() {
        tracing::error!(
            "messaging webhook: twilio.account_sid is empty, so answers cannot be sent; set it to take WhatsApp and SMS"
        );
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "messaging is not configured\n",
        )
            .into_response();
    }
    let get = |k: &str| {
        params
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    };
    let sid = get("MessageSid");
    if sid.is_empty() || sid.len() > 64 || !sid.bytes().all(|b| b.is_ascii_alphanumeric()) {
        tracing::warn!("messaging webhook: no valid MessageSid");
        return (StatusCode::BAD_REQUEST, "MessageSid is required\n").into_response();
    }
    let (from_raw, to_raw, text) = (get("From"), get("To"), get("Body"));
    let channel = if from_raw.starts_with("whatsapp:") {
        Channel::Whatsapp
    } else {
        Channel::Sms
    };
    let (Ok(from), Ok(to)) = (E164::parse(address(from_raw)), E164::parse(address(to_raw))) else {
        tracing::info!(message_sid = %sid, channel = %channel, "messaging webhook: sender or recipient is not a phone number; not answered");
        return ack();
    };
    if text.trim().is_empty() {
        tracing::info!(message_sid = %sid, channel = %channel, "messaging webhook: a message without text (media only?); not answered");
        return ack();
    }
    let client = match clients::client_by_number(&state.db, &to).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            tracing::info!(message_sid = %sid, to = %to, "messaging webhook: number not assigned to any active client; not answered");
            return ack();
        }
        Err(e) => {
            // Twilio retries a failed webhook: the message is taken then.
            tracing::error!(message_sid = %sid, error = %e, "messaging webhook: reading the business failed");
            return (StatusCode::SERVICE_UNAVAILABLE, "try again\n").into_response();
        }
    };
    match conversations::take_inbound(&state.db, sid, channel, Utc::now()).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!(message_sid = %sid, "messaging webhook: a retry of a message already taken; not answered again");
            return ack();
        }
        Err(e) => {
            tracing::error!(message_sid = %sid, error = %e, "messaging webhook: could not mark the message taken");
            return (StatusCode::SERVICE_UNAVAILABLE, "try again\n").into_response();
        }
    }
    let identity = from.to_string();
    let msg = Inbound {
        client: Arc::new(client),
        channel,
        identity,
        to: to.to_string(),
        text: text.trim().to_string(),
        background: true,
    };
    // Answered to where it came from, from where it went (prefixes kept).
    let (reply_to, reply_from) = (from_raw.trim().to_string(), to_raw.trim().to_string());
    let (agent, sender, sid) = (state.text.clone(), state.messages.clone(), sid.to_string());
    let wait = agent.settings().timeout();
    state.tasks.spawn(async move {
        // Taken already: a busy business or the person's earlier messages are waited for.
        let received = chrono::Utc::now();
        let answer = match agent
            .admit_waiting(msg.client.id(), &msg.identity, &msg.text, wait)
            .await
        {
            Ok(admitted) => agent.answer(msg, admitted, None).await,
            // Waited for and not taken in time: the person still hears back.
            Err(r @ (Refusal::Busy | Refusal::Waiting)) => agent.unanswered(&msg, r, received).await,
            Err(r) => {
                tracing::warn!(message_sid = %sid, client = %msg.client.id(), refusal = ?r, "messaging: message refused; not answered");
                return;
            }
        };
        let parts = split(&answer.text, BODY_MAX);
        for (i, part) in parts.iter().enumerate() {
            match sender.send(&reply_to, &reply_from, part).await {
                Ok(out) => {
                    tracing::info!(message_sid = %sid, exchange = %answer.exchange_id, sent = %out, part = i + 1, parts = parts.len(), "messaging: answer sent");
                }
                Err(e) => {
                    tracing::error!(message_sid = %sid, exchange = %answer.exchange_id, part = i + 1, parts = parts.len(), error = %e, "messaging: the answer could not be sent");
                    break;
                }
            }
        }
    });
    ack()
}

/// The number of a Messaging address (`whatsapp:+1…` or `+1…`).
fn address(a: &str) -> &str {
    a.strip_prefix("whatsapp:").unwrap_or(a).trim()
}

/// Sends messages through Twilio's Messages REST API.
pub struct Sender {
    http: reqwest::Client,
    url: String,
    account_sid: String,
    auth_token: Secret,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Sender {
    /// The sender of `twilio.account_sid` on `twilio.api_base_url`.
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        let t = &settings.twilio;
        Ok(Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                // A connection not made in time is surely no message sent: tried again.
                .connect_timeout(Duration::from_secs(10))
                .timeout(Duration::from_secs(15))
                .build()?,
            url: format!(
                "{}/2010-04-01/Accounts/{}/Messages.json",
                t.api_base_url.as_str().trim_end_matches('/'),
                t.account_sid
            ),
            account_sid: t.account_sid.clone(),
            auth_token: t.auth_token.clone(),
        })
    }

    /// Sends `body` to `to` from `from`; the new message's sid. Tried again after a 429, a 503
    /// or no connection made (1 s, then 2 s), never when it may have been sent
    /// ([`super::retry`]); the error names the status and Twilio's code.
    pub async fn send(&self, to: &str, from: &str, body: &str) -> Result<String, String> {
        let request = || {
            self.http
                .post(&self.url)
                .basic_auth(&self.account_sid, Some(self.auth_token.expose()))
                .form(&[("To", to), ("From", from), ("Body", body)])
        };
        let refused = |status: StatusCode, v: &Value| {
            format!(
                "HTTP {} (Twilio code {}: {})",
                status.as_u16(),
                v["code"],
                v["message"]
                    .as_str()
                    .unwrap_or_default()
                    .chars()
                    .take(200)
                    .collect::<String>()
            )
        };
        let sent = retry::send(request, Retry::IfNotDone, &SEND_PAUSES, refused).await?;
        Ok(sent["sid"].as_str().unwrap_or_default().to_string())
    }
}

/// `text` in parts of at most `max` characters, cut after a paragraph, else a sentence, else a
/// word, else anywhere; parts are trimmed and none is empty.
pub fn split(text: &str, max: usize) -> Vec<String> {
    let max = max.max(1);
    let mut parts = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        if rest.chars().count() <= max {
            parts.push(rest.to_string());
            break;
        }
        // The byte index just past `max` characters.
        let limit = rest.char_indices().nth(max).map_or(rest.len(), |(i, _)| i);
        let head = &rest[..limit];
        let cut = head
            .rfind("\n\n")
            .map(|i| i + 2)
            .or_else(|| {
                head.match_indices(['.', '!', '?', '\n'])
                    .map(|(i, s)| i + s.len())
                    .rfind(|&i| head[i..].starts_with(char::is_whitespace) || i == head.len())
            })
            .or_else(|| head.rfind(char::is_whitespace))
            .filter(|&i| i > 0)
            .unwrap_or(limit);
        let part = rest[..cut].trim();
        if !part.is_empty() {
            parts.push(part.to_string());
        }
        rest = rest[cut..].trim_start();
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_texts_are_one_part() {
        assert_eq!(split("  Hello there.  ", 1600), ["Hello there."]);
        assert!(split("   ", 10).is_empty());
    }

    #[test]
    fn long_texts_are_cut_at_paragraphs_then_sentences_then_words() {
        let para = format!("{}\n\n{}", "a ".repeat(30).trim(), "b ".repeat(30).trim());
        assert_eq!(
            split(&para, 80),
            ["a ".repeat(30).trim(), "b ".repeat(30).trim()]
        );
        let sentences = "One two three. Four five six. Seven eight nine.";
        assert_eq!(
            split(sentences, 32),
            ["One two three. Four five six.", "Seven eight nine."]
        );
        let words = "alpha beta gamma delta epsilon";
        assert_eq!(split(words, 12), ["alpha beta", "gamma delta", "epsilon"]);
        assert_eq!(split("abcdefghij", 4), ["abcd", "efgh", "ij"]);
    }

    #[test]
    fn every_part_fits_and_nothing_is_lost() {
        let text: String = (0..500)
            .map(|i| format!("Sentence número {i}, con acentos y emojis 😀. "))
            .collect();
        let parts = split(&text, BODY_MAX);
        assert!(parts.len() > 1);
        for p in &parts {
            assert!(p.chars().count() <= BODY_MAX, "{}", p.chars().count());
            assert!(!p.is_empty());
        }
        let joined: String = parts.join(" ");
        let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(squash(&joined), squash(&text));
    }
}
