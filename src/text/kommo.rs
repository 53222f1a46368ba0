//! Kommo CRM (README "Kommo"): a lead's chat messages answered by the business's agent, the
//! answer added to the lead as a note.
//!
//! `POST /api/kommo/webhook?client=<id>&secret=<secret>` is the URL the operator enters in
//! Kommo (Settings → Integrations → Web hooks). Kommo cannot sign its webhooks, so the URL names
//! the business and carries its secret (`kommo.webhook_secret` of the client), compared in
//! constant time; a wrong or missing one is 403 and takes nothing. Kommo gives a webhook about
//! 2 s, so it is acknowledged at once (200) and answered in the background.
//!
//! Bodies read:
//! - Kommo's form-encoded webhook: `message[add][N][…]` for chat messages (`id`, `text`, `type`:
//!   `incoming` or `outgoing`, `element_type` 2 with `element_id` the lead, or `entity_type`
//!   `lead` with `entity_id`); only incoming messages are answered (outgoing ones are the
//!   business's own, answering them would loop). Lead events (`leads[add|update|status|…][N][id]`)
//!   are acknowledged and logged, not answered.
//! - a minimal JSON `{"text", "lead_id"}` (for a Salesbot or a script).
//!
//! The person is `kommo:lead:{lead_id}`. The answer is added as a `common` note on the lead
//! through Kommo's API v4 (`POST {base_url}/api/v4/leads/{lead_id}/notes`, body
//! `[{"note_type": "common", "params": {"text": …}}]`, `Authorization: Bearer` the client's
//! long-lived token). A message's Kommo id is taken once (`store::conversations::take_inbound`,
//! as `kommo:{id}`), so a repeated webhook is not answered twice.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    body::Bytes,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use url::Url;

use super::{
    agent::{Inbound, Refusal},
    retry::{self, Retry},
};
use crate::{
    app::AppState,
    domain::{Channel, ClientId},
    store::{clients, conversations},
};

/// Longest Kommo note text sent (characters): longer answers are cut (Kommo's notes hold far
/// more; a chat answer is never this long).
const NOTE_MAX: usize = 10_000;
/// Most messages one webhook may carry that are answered (Kommo batches a few at most).
const BATCH_MAX: usize = 20;

/// A client's Kommo settings (stored as JSON; the token is a secret).
#[derive(Clone, PartialEq, Eq)]
pub struct KommoConfig {
    /// `https://{subdomain}.kommo.com`.
    pub base_url: Url,
    /// The long-lived token of the integration (never shown, never logged).
    pub token: String,
    /// The secret in the webhook URL.
    pub webhook_secret: String,
    /// Where the answer is also sent on the lead's chat; `None`: a note only.
    pub chat_reply: Option<ChatReply>,
}

/// How an answer reaches the lead's chat (README "Kommo"): it is written to one of the lead's
/// fields, then a Salesbot is launched on the lead whose step sends that field
/// (`{{lead.cf.<field_id>}}`) on the lead's chat. Kommo's API has no call that sends a chat
/// message with an integration's token; its Chats API needs a channel registered with Kommo.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct ChatReply {
    /// The Salesbot (its id in Kommo's Salesbot list).
    pub salesbot_id: u64,
    /// The lead's text field the answer is written to.
    pub field_id: u64,
}

impl std::fmt::Debug for KommoConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KommoConfig")
            .field("base_url", &self.base_url.as_str())
            .finish_non_exhaustive()
    }
}

impl KommoConfig {
    /// Reads the stored JSON; `None` when absent or unreadable.
    pub fn from_stored(text: Option<&str>) -> Option<Self> {
        let v: Value = serde_json::from_str(text?).ok()?;
        Some(Self {
            base_url: Url::parse(v["base_url"].as_str()?).ok()?,
            token: v["token"].as_str()?.to_string(),
            webhook_secret: v["webhook_secret"].as_str()?.to_string(),
            chat_reply: match &v["chat_reply"] {
                Value::Null => None,
                r => serde_json::from_value(r.clone())
                    .inspect_err(|e| {
                        tracing::warn!(error = %e, "kommo: the stored chat_reply is unreadable; answers go to notes only");
                    })
                    .ok(),
            },
        })
    }

    /// The stored JSON.
    pub fn to_stored(&self) -> String {
        json!({"base_url": self.base_url.as_str().trim_end_matches('/'), "token": self.token,
            "webhook_secret": self.webhook_secret, "chat_reply": self.chat_reply})
        .to_string()
    }

    /// The web chat's proof that a page may write as lead `lead` (`leadToken`): hex
    /// HMAC-SHA256 of `kommo-lead:{lead}` keyed with the webhook secret. The business's server
    /// makes it (it knows the secret; a visitor does not).
    pub fn lead_token(&self, lead: u64) -> String {
        use hmac::{Hmac, KeyInit, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(self.webhook_secret.as_bytes())
            .expect("HMAC takes any key");
        mac.update(format!("kommo-lead:{lead}").as_bytes());
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether `given` is [`KommoConfig::lead_token`] of `lead` (constant time).
    pub fn lead_token_matches(&self, lead: u64, given: &str) -> bool {
        !self.webhook_secret.is_empty()
            && bool::from(
                self.lead_token(lead)
                    .as_bytes()
                    .ct_eq(given.trim().as_bytes()),
            )
    }

    /// Whether `given` is the webhook secret (constant time).
    pub fn secret_matches(&self, given: &str) -> bool {
        !self.webhook_secret.is_empty()
            && bool::from(self.webhook_secret.as_bytes().ct_eq(given.as_bytes()))
    }
}

/// A new webhook secret: 32 random bytes, hex.
pub fn new_secret() -> String {
    let mut b = [0u8; 32];
    rand::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A message to answer, read from a webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KommoMessage {
    /// Kommo's id of the message (empty for the JSON form, which has none).
    pub id: String,
    /// The lead.
    pub lead_id: u64,
    /// What the person wrote.
    pub text: String,
}

/// What a webhook carried.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Incoming messages on leads, to answer.
    pub messages: Vec<KommoMessage>,
    /// Events acknowledged and not answered (outgoing messages, messages on contacts, lead
    /// events), for the log.
    pub ignored: usize,
}

/// Reads Kommo's form-encoded webhook (`message[add][0][text]=…`).
pub fn parse_form(params: &[(String, String)]) -> Webhook {
    use std::collections::BTreeMap;
    // (section, action, index) → field → value
    let mut items: BTreeMap<(String, String, usize), BTreeMap<String, String>> = BTreeMap::new();
    for (k, v) in params {
        let parts: Vec<&str> = k.split(['[', ']']).filter(|p| !p.is_empty()).collect();
        if let [section, action, index, field, ..] = parts.as_slice()
            && let Ok(i) = index.parse::<usize>()
        {
            items
                .entry((section.to_string(), action.to_string(), i))
                .or_default()
                .insert(field.to_string(), v.clone());
        }
    }
    let mut out = Webhook::default();
    for ((section, action, _), f) in items {
        let get = |k: &str| f.get(k).map(String::as_str).unwrap_or_default();
        if section != "message" || action != "add" {
            out.ignored += 1;
            continue;
        }
        // The lead: `element_id` when `element_type` is 2 (a lead), else `entity_id` when
        // `entity_type` is `lead`; the id read from the field its type names.
        let id = |v: &str| v.trim().parse::<u64>().ok().filter(|n| *n > 0);
        let lead = if get("element_type") == "2" {
            id(get("element_id"))
        } else if get("entity_type") == "lead" {
            id(get("entity_id"))
        } else {
            None
        };
        let text = get("text").trim();
        match lead {
            // Only a person's message: the business's own (outgoing) would loop.
            Some(lead_id) if get("type") == "incoming" && !text.is_empty() => {
                out.messages.push(KommoMessage {
                    id: get("id").to_string(),
                    lead_id,
                    text: text.to_string(),
                });
            }
            _ => out.ignored += 1,
        }
    }
    out
}

/// Reads the minimal JSON form `{"text", "lead_id"}`.
pub fn parse_json(body: &[u8]) -> Result<KommoMessage, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let lead_id = match &v["lead_id"] {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|n| *n > 0)
    .ok_or("lead_id must be a Kommo lead id")?;
    let text = v["text"].as_str().unwrap_or_default().trim();
    if text.is_empty() {
        return Err("text must not be empty".into());
    }
    Ok(KommoMessage {
        id: v["id"].as_str().unwrap_or_default().to_string(),
        lead_id,
        text: text.to_string(),
    })
}

/// The webhook's route.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/kommo/webhook", post(webhook))
}

/// `client` and `secret` of the webhook URL.
#[derive(Debug, Deserialize)]
struct WebhookQuery {
    client: Option<String>,
    secret: Option<String>,
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"ok": false, "error": message}))).into_response()
}

/// `POST /api/kommo/webhook?client=…&secret=…`.
async fn webhook(
    State(state): State<AppState>,
    query: Result<Query<WebhookQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(Query(q)) = query else {
        return refuse(StatusCode::BAD_REQUEST, "bad query string");
    };
    let forbidden = || refuse(StatusCode::FORBIDDEN, "unknown business or wrong secret");
    let Some(id) = q
        .client
        .as_deref()
        .and_then(|c| c.trim().parse::<i32>().ok())
    else {
        return forbidden();
    };
    let client = match clients::get_client(&state.db, ClientId::new(id)).await {
        Ok(c) => c,
        Err(crate::store::StoreError::NotFound(_)) => return forbidden(),
        Err(e) => {
            tracing::error!(error = %e, "kommo webhook: reading the business failed");
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "try again");
        }
    };
    let Some(kommo) = KommoConfig::from_stored(client.client.kommo.as_ref().map(|s| s.expose()))
    else {
        return forbidden();
    };
    if !kommo.secret_matches(q.secret.as_deref().unwrap_or_default()) {
        tracing::warn!(client = id, "kommo webhook refused: wrong secret");
        return forbidden();
    }
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    let hook = if json_body {
        match parse_json(&body) {
            Ok(m) => Webhook {
                messages: vec![m],
                ignored: 0,
            },
            Err(e) => return refuse(StatusCode::BAD_REQUEST, &e),
        }
    } else {
        parse_form(&crate::twilio::form::parse(&body))
    };
    if hook.ignored > 0 {
        tracing::info!(
            client = id,
            events = hook.ignored,
            "kommo webhook: events acknowledged, not answered (outgoing messages, lead events)"
        );
    }
    let client = Arc::new(client);
    if hook.messages.len() > BATCH_MAX {
        tracing::warn!(
            client = id,
            messages = hook.messages.len(),
            "kommo webhook: more messages than {BATCH_MAX} in one webhook; the rest are not answered"
        );
    }
    for m in hook.messages.into_iter().take(BATCH_MAX) {
        if !m.id.is_empty() && m.id.len() <= 100 {
            let key = format!("kommo:{id}:{}", m.id);
            match conversations::take_inbound(&state.db, &key, Channel::Kommo, Utc::now()).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::info!(
                        client = id,
                        lead = m.lead_id,
                        "kommo webhook: a message already taken; not answered again"
                    );
                    continue;
                }
                Err(e) => {
                    tracing::error!(client = id, error = %e, "kommo webhook: could not mark the message taken");
                    return refuse(StatusCode::SERVICE_UNAVAILABLE, "try again");
                }
            }
        }
        let msg = Inbound {
            client: client.clone(),
            channel: Channel::Kommo,
            identity: format!("kommo:lead:{}", m.lead_id),
            to: Channel::Kommo.as_str().to_string(),
            text: m.text,
            background: true,
        };
        let (agent, kommo, http) = (state.text.clone(), kommo.clone(), state.text.http());
        let lead = m.lead_id;
        state.tasks.spawn(async move {
            let wait = agent.settings().timeout();
            let received = chrono::Utc::now();
            let answer = match agent
                .admit_waiting(msg.client.id(), &msg.identity, &msg.text, wait)
                .await
            {
                Ok(admitted) => agent.answer(msg, admitted, None).await,
                // Waited for and not taken in time: the lead still hears back.
                Err(r @ (Refusal::Busy | Refusal::Waiting)) => agent.unanswered(&msg, r, received).await,
                Err(r) => {
                    tracing::warn!(client = %msg.client.id(), lead, refusal = ?r, "kommo: message refused; not answered");
                    return;
                }
            };
            match add_note(&http, &kommo, lead, &answer.text).await {
                Ok(()) => {
                    tracing::info!(exchange = %answer.exchange_id, lead, "kommo: answer added to the lead as a note");
                }
                Err(e) => {
                    tracing::error!(exchange = %answer.exchange_id, lead, error = %e, "kommo: the answer could not be added to the lead");
                }
            }
            if let Some(reply) = kommo.chat_reply {
                match send_on_chat(&http, &kommo, reply, lead, &answer.text).await {
                    Ok(()) => {
                        tracing::info!(exchange = %answer.exchange_id, lead, salesbot = reply.salesbot_id, "kommo: answer sent on the lead's chat");
                    }
                    Err(e) => {
                        tracing::error!(exchange = %answer.exchange_id, lead, salesbot = reply.salesbot_id, error = %e, "kommo: the answer could not be sent on the lead's chat");
                    }
                }
            }
        });
    }
    (StatusCode::OK, axum::Json(json!({"ok": true}))).into_response()
}

/// Adds `text` to lead `lead_id` as a common note.
pub async fn add_note(
    http: &reqwest::Client,
    kommo: &KommoConfig,
    lead_id: u64,
    text: &str,
) -> Result<(), String> {
    let text: String = text.chars().take(NOTE_MAX).collect();
    let body = json!([{"note_type": "common", "params": {"text": text}}]);
    request(
        http,
        kommo,
        reqwest::Method::POST,
        &format!("/api/v4/leads/{lead_id}/notes"),
        &body,
        Retry::Always,
    )
    .await
}

/// Sends `text` on lead `lead_id`'s chat ([`ChatReply`]): the field is set
/// (`PATCH /api/v4/leads/{id}`), then the Salesbot launched (`POST /api/v4/bots/{id}/run`).
/// Kommo runs the Salesbot after its 202, on its own time: a lead's next answer written to the
/// field before then would be sent in its place (README "Kommo"). The launch is tried again only
/// when it surely was not made, so a person is not sent the message twice.
pub async fn send_on_chat(
    http: &reqwest::Client,
    kommo: &KommoConfig,
    reply: ChatReply,
    lead_id: u64,
    text: &str,
) -> Result<(), String> {
    let text: String = text.chars().take(NOTE_MAX).collect();
    let field = json!({"custom_fields_values": [
        {"field_id": reply.field_id, "values": [{"value": text}]}]});
    request(
        http,
        kommo,
        reqwest::Method::PATCH,
        &format!("/api/v4/leads/{lead_id}"),
        &field,
        Retry::Always,
    )
    .await
    .map_err(|e| format!("setting field {}: {e}", reply.field_id))?;
    request(
        http,
        kommo,
        reqwest::Method::POST,
        &format!("/api/v4/bots/{}/run", reply.salesbot_id),
        &json!({"entity_id": lead_id, "entity_type": "leads"}),
        Retry::IfNotDone,
    )
    .await
    .map_err(|e| format!("launching the Salesbot: {e}"))
}

/// One request to the client's Kommo API, tried again once (after a second) as `retry` allows
/// ([`super::retry`]); the error names the status and Kommo's `title`/`detail`.
async fn request(
    http: &reqwest::Client,
    kommo: &KommoConfig,
    method: reqwest::Method,
    path: &str,
    body: &Value,
    retry: Retry,
) -> Result<(), String> {
    let url = format!("{}{path}", kommo.base_url.as_str().trim_end_matches('/'));
    let request = || {
        http.request(method.clone(), &url)
            .bearer_auth(&kommo.token)
            .json(&body)
            .timeout(Duration::from_secs(15))
    };
    let refused = |status: StatusCode, v: &Value| {
        format!(
            "HTTP {} ({}: {})",
            status.as_u16(),
            v["title"].as_str().unwrap_or_default(),
            v["detail"]
                .as_str()
                .unwrap_or_default()
                .chars()
                .take(200)
                .collect::<String>()
        )
    };
    retry::send(request, retry, &[Duration::from_secs(1)], refused)
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn incoming_lead_messages_are_read_and_the_rest_acknowledged() {
        let hook = parse_form(&form(&[
            ("account[subdomain]", "brightsmile"),
            ("message[add][0][id]", "m-1"),
            ("message[add][0][chat_id]", "c-1"),
            ("message[add][0][text]", "Do you have a slot on Friday?"),
            ("message[add][0][type]", "incoming"),
            ("message[add][0][element_type]", "2"),
            ("message[add][0][element_id]", "9041"),
            ("message[add][0][entity_type]", "lead"),
            ("message[add][0][entity_id]", "9041"),
            ("message[add][1][id]", "m-2"),
            ("message[add][1][text]", "We answered that"),
            ("message[add][1][type]", "outgoing"),
            ("message[add][1][element_type]", "2"),
            ("message[add][1][element_id]", "9041"),
            ("message[add][2][id]", "m-3"),
            ("message[add][2][text]", "on a contact"),
            ("message[add][2][type]", "incoming"),
            ("message[add][2][element_type]", "1"),
            ("message[add][2][element_id]", "77"),
            ("leads[status][0][id]", "9041"),
            ("leads[status][0][status_id]", "142"),
        ]));
        assert_eq!(
            hook.messages,
            [KommoMessage {
                id: "m-1".into(),
                lead_id: 9041,
                text: "Do you have a slot on Friday?".into()
            }]
        );
        assert_eq!(hook.ignored, 3);
        // The lead by entity_id alone.
        let hook = parse_form(&form(&[
            ("message[add][0][text]", "Hi"),
            ("message[add][0][type]", "incoming"),
            ("message[add][0][entity_type]", "lead"),
            ("message[add][0][entity_id]", "12"),
        ]));
        assert_eq!(hook.messages[0].lead_id, 12);
        // The id comes from the field its type names: a contact's element id is no lead.
        let hook = parse_form(&form(&[
            ("message[add][0][text]", "Hi"),
            ("message[add][0][type]", "incoming"),
            ("message[add][0][element_type]", "1"),
            ("message[add][0][element_id]", "77"),
            ("message[add][0][entity_type]", "lead"),
            ("message[add][0][entity_id]", "12"),
        ]));
        assert_eq!(hook.messages[0].lead_id, 12);
        // No type: not answered (it could be the business's own message).
        let hook = parse_form(&form(&[
            ("message[add][0][text]", "Hi"),
            ("message[add][0][element_type]", "2"),
            ("message[add][0][element_id]", "12"),
        ]));
        assert!(hook.messages.is_empty());
        // Nothing readable: nothing to answer, no panic.
        for bad in [
            form(&[("message[add][x][text]", "Hi")]),
            form(&[("message", "Hi"), ("[[]]", "")]),
            form(&[
                ("message[add][0][text]", "Hi"),
                ("message[add][0][element_type]", "2"),
                ("message[add][0][element_id]", "-4"),
            ]),
        ] {
            assert!(parse_form(&bad).messages.is_empty(), "{bad:?}");
        }
    }

    #[test]
    fn the_json_form_needs_a_lead_and_text() {
        assert_eq!(
            parse_json(br#"{"text": " Hello ", "lead_id": "55"}"#).unwrap(),
            KommoMessage {
                id: String::new(),
                lead_id: 55,
                text: "Hello".into()
            }
        );
        for bad in [
            &br#"{"text": "Hi"}"#[..],
            br#"{"text": "", "lead_id": 3}"#,
            br#"{"text": "Hi", "lead_id": 0}"#,
            b"not json",
        ] {
            assert!(parse_json(bad).is_err());
        }
    }

    #[test]
    fn the_config_round_trips_and_hides_its_token() {
        let c = KommoConfig {
            base_url: Url::parse("https://brightsmile.kommo.com/").unwrap(),
            token: "tok-secret".into(),
            webhook_secret: "s3cret".into(),
            chat_reply: None,
        };
        assert_eq!(
            KommoConfig::from_stored(Some(&c.to_stored())),
            Some(c.clone())
        );
        let with_reply = KommoConfig {
            chat_reply: Some(ChatReply {
                salesbot_id: 36143,
                field_id: 512,
            }),
            ..c.clone()
        };
        assert_eq!(
            KommoConfig::from_stored(Some(&with_reply.to_stored())),
            Some(with_reply.clone())
        );
        // Stored before chat_reply existed, or unreadable: the rest still loads.
        let old = r#"{"base_url": "https://brightsmile.kommo.com", "token": "t", "webhook_secret": "s3cret"}"#;
        assert_eq!(
            KommoConfig::from_stored(Some(old)).unwrap().chat_reply,
            None
        );
        let bad = r#"{"base_url": "https://brightsmile.kommo.com", "token": "t", "webhook_secret": "s3cret", "chat_reply": {"salesbot_id": "x"}}"#;
        let c = KommoConfig::from_stored(Some(bad)).unwrap();
        assert_eq!((c.chat_reply, c.token.as_str()), (None, "t"));
        assert!(!format!("{c:?}").contains("tok-secret"));
        assert!(c.secret_matches("s3cret"));
        assert!(!c.secret_matches("s3cre"));
        assert!(!c.secret_matches(""));
        assert!(KommoConfig::from_stored(Some("{}")).is_none());
        let token = c.lead_token(9041);
        assert_eq!(token.len(), 64);
        assert!(c.lead_token_matches(9041, &token));
        assert!(!c.lead_token_matches(9042, &token));
        assert!(!c.lead_token_matches(9041, ""));
        assert!(KommoConfig::from_stored(None).is_none());
    }
}
