//! A fake Twilio Messaging: the Messages REST API warmline sends answers through, and the
//! signed inbound-message webhook Twilio posts to warmline.
//!
//! The REST side (`POST /2010-04-01/Accounts/{AccountSid}/Messages.json`, Twilio's Messages
//! resource) checks what Twilio checks: HTTP Basic auth with the account SID and auth token
//! (401 with Twilio's error body, code 20003, otherwise), the account in the path being the one
//! authenticated, a form body with `To`, `From` (or `MessagingServiceSid`) and a `Body` of 1 to
//! 1600 characters (400, code 21617 for a longer one: twilio.com/docs/api/errors/21617; code
//! 21602 for none: a message needs a body). A WhatsApp message has both numbers prefixed
//! `whatsapp:`; mixing a WhatsApp sender with an SMS recipient is refused (code 63007 is the
//! nearest). A good request is recorded ([`FakeMessages::sent`]) and answered 201 with a
//! Message resource (`sid` `SM…`, `status: "queued"`, `num_segments`). Statuses can be
//! scripted ([`FakeMessages::push`]) to exercise retries.
//!
//! The webhook side ([`inbound`]) is the form Twilio posts for an incoming SMS or WhatsApp
//! message (twilio.com/docs/messaging/guides/webhook-request): `MessageSid`, `SmsMessageSid`,
//! `AccountSid`, `From`, `To`, `Body`, `NumMedia`, `NumSegments`, `ApiVersion`, and for
//! WhatsApp `ProfileName` and `WaId`; signed with X-Twilio-Signature like every webhook.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::json;
use tokio::sync::Notify;

/// Longest `Body` the Messages resource accepts (characters).
pub const BODY_MAX: usize = 1600;

/// One message sent through the fake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// Its `SM…` sid.
    pub sid: String,
    /// `To`.
    pub to: String,
    /// `From`.
    pub from: String,
    /// `Body`.
    pub body: String,
}

#[derive(Default)]
struct Shared {
    account_sid: String,
    auth_token: String,
    sent: Mutex<Vec<Sent>>,
    statuses: Mutex<VecDeque<u16>>,
    attempts: Mutex<usize>,
    changed: Notify,
}

/// The fake Messages API.
pub struct FakeMessages {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeMessages {
    fn drop(&mut self) {
        self.task.abort();
    }
}

use crate::common::lock;

impl FakeMessages {
    /// Starts on 127.0.0.1 for the account `account_sid` with `auth_token`.
    pub async fn start(account_sid: &str, auth_token: &str) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            account_sid: account_sid.into(),
            auth_token: auth_token.into(),
            ..Default::default()
        });
        let app = Router::new()
            .route("/2010-04-01/Accounts/{account}/Messages.json", post(create))
            .with_state(shared.clone());
        let (addr, task) = crate::common::serve(app).await?;
        Ok(Self { addr, shared, task })
    }

    /// `http://127.0.0.1:PORT`: the API base to give warmline (`twilio.api_base_url`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next requests are answered with these statuses (Twilio's error body), in order.
    pub fn push(&self, statuses: impl IntoIterator<Item = u16>) {
        lock(&self.shared.statuses).extend(statuses);
    }

    /// Every message accepted so far, in order.
    pub fn sent(&self) -> Vec<Sent> {
        lock(&self.shared.sent).clone()
    }

    /// Requests received so far, refused ones included.
    pub fn attempts(&self) -> usize {
        *lock(&self.shared.attempts)
    }

    /// Waits until at least `n` messages were accepted; false after `limit`.
    pub async fn wait_sent(&self, n: usize, limit: Duration) -> bool {
        crate::common::wait_until(&self.shared.changed, limit, || {
            lock(&self.shared.sent).len() >= n
        })
        .await
    }
}

/// Twilio's error body.
fn error(status: StatusCode, code: u32, message: &str) -> Response {
    let body = json!({"code": code, "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"), "status": status.as_u16()});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn create(
    State(shared): State<Arc<Shared>>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    *lock(&shared.attempts) += 1;
    shared.changed.notify_waiters();
    let expected = format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", shared.account_sid, shared.auth_token))
    );
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if auth != expected {
        return error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    }
    if account != shared.account_sid {
        return error(
            StatusCode::NOT_FOUND,
            20404,
            "The requested resource was not found",
        );
    }
    if let Some(status) = lock(&shared.statuses).pop_front() {
        let code = if status == 429 { 20429 } else { 20500 };
        return error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code,
            "Scripted failure",
        );
    }
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let get = |k: &str| {
        form.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let (to, from, text) = (get("To"), get("From"), get("Body"));
    if to.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            21604,
            "A 'To' phone number is required.",
        );
    }
    if from.is_empty() && get("MessagingServiceSid").is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            21603,
            "A 'From' phone number is required.",
        );
    }
    if text.is_empty() {
        return error(StatusCode::BAD_REQUEST, 21602, "Message body is required.");
    }
    if text.chars().count() > BODY_MAX {
        return error(
            StatusCode::BAD_REQUEST,
            21617,
            "The concatenated message body exceeds the 1600 character limit.",
        );
    }
    if to.starts_with("whatsapp:") != from.starts_with("whatsapp:") {
        return error(
            StatusCode::BAD_REQUEST,
            63007,
            "Twilio could not find a Channel with the specified From address",
        );
    }
    let sid = crate::twilio::sid("SM");
    let segments = text.chars().count().div_ceil(153).max(1);
    let message = json!({
        "sid": sid, "account_sid": shared.account_sid, "to": to, "from": from, "body": text,
        "status": "queued", "direction": "outbound-api", "num_segments": segments.to_string(),
        "num_media": "0", "api_version": "2010-04-01", "error_code": null, "error_message": null,
        "uri": format!("/2010-04-01/Accounts/{}/Messages/{sid}.json", shared.account_sid),
    });
    lock(&shared.sent).push(Sent {
        sid,
        to,
        from,
        body: text,
    });
    shared.changed.notify_waiters();
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        message.to_string(),
    )
        .into_response()
}

/// The form Twilio posts for an incoming message from `from` to `to` (both `whatsapp:+…` for
/// WhatsApp, bare E.164 for SMS) with `body` and sid `message_sid`.
pub fn inbound(
    account_sid: &str,
    message_sid: &str,
    from: &str,
    to: &str,
    body: &str,
) -> Vec<(String, String)> {
    let mut form: Vec<(String, String)> = [
        ("MessageSid", message_sid),
        ("SmsMessageSid", message_sid),
        ("SmsSid", message_sid),
        ("AccountSid", account_sid),
        ("From", from),
        ("To", to),
        ("Body", body),
        ("NumMedia", "0"),
        ("NumSegments", "1"),
        ("SmsStatus", "received"),
        ("ApiVersion", "2010-04-01"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if let Some(number) = from.strip_prefix("whatsapp:") {
        form.push(("ProfileName".into(), "Dana".into()));
        form.push(("WaId".into(), number.trim_start_matches('+').into()));
        form.push(("MessageType".into(), "text".into()));
    }
    form
}

/// Posts an inbound message to `url` signed with `auth_token` (or with a wrong signature when
/// `valid` is false); the status and body warmline answered.
pub async fn post_inbound(
    url: &str,
    auth_token: &str,
    form: &[(String, String)],
    valid: bool,
) -> anyhow::Result<(u16, String)> {
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let token = if valid { auth_token } else { "wrong-token" };
    let signature = crate::twilio::sign(token, url, &pairs);
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form.iter())
        .finish();
    let resp = reqwest::Client::new()
        .post(url)
        .header("X-Twilio-Signature", signature)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn send(base: &str, auth: (&str, &str), account: &str, form: &[(&str, &str)]) -> u16 {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form.iter())
            .finish();
        reqwest::Client::new()
            .post(format!(
                "{base}/2010-04-01/Accounts/{account}/Messages.json"
            ))
            .basic_auth(auth.0, Some(auth.1))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    #[tokio::test]
    async fn the_messages_api_checks_what_twilio_checks() {
        let fake = FakeMessages::start("AC1", "tok").await.unwrap();
        let base = fake.base_url();
        let ok = [
            ("To", "whatsapp:+14155550100"),
            ("From", "whatsapp:+15005550006"),
            ("Body", "Hi"),
        ];
        assert_eq!(send(&base, ("AC1", "bad"), "AC1", &ok).await, 401);
        assert_eq!(send(&base, ("AC1", "tok"), "AC2", &ok).await, 404);
        let long = "x".repeat(BODY_MAX + 1);
        for bad in [
            vec![("From", "+15005550006"), ("Body", "Hi")],
            vec![("To", "+14155550100"), ("Body", "Hi")],
            vec![("To", "+14155550100"), ("From", "+15005550006")],
            vec![
                ("To", "+14155550100"),
                ("From", "+15005550006"),
                ("Body", long.as_str()),
            ],
            vec![
                ("To", "+14155550100"),
                ("From", "whatsapp:+15005550006"),
                ("Body", "Hi"),
            ],
        ] {
            assert_eq!(
                send(&base, ("AC1", "tok"), "AC1", &bad).await,
                400,
                "{bad:?}"
            );
        }
        assert!(fake.sent().is_empty());
        fake.push([503]);
        assert_eq!(send(&base, ("AC1", "tok"), "AC1", &ok).await, 503);
        assert_eq!(send(&base, ("AC1", "tok"), "AC1", &ok).await, 201);
        let sent = fake.sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].body, "Hi");
        assert!(sent[0].sid.starts_with("SM"));
        assert_eq!(fake.attempts(), 9);
    }

    #[test]
    fn an_inbound_whatsapp_form_has_its_profile() {
        let f = inbound(
            "AC1",
            "SM1",
            "whatsapp:+14155550100",
            "whatsapp:+15005550006",
            "Hi",
        );
        let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("WaId"), Some("14155550100"));
        assert_eq!(get("Body"), Some("Hi"));
        let sms = inbound("AC1", "SM2", "+14155550100", "+15005550006", "Hi");
        assert!(!sms.iter().any(|(k, _)| k == "WaId"));
    }
}
