//! A fake Kommo CRM account: the API v4 notes warmline adds to leads, the lead field it fills
//! and the Salesbot it launches to send an answer on the lead's chat, and the form-encoded
//! webhook Kommo posts.
//!
//! `POST /api/v4/leads/{lead_id}/notes` (Kommo's "Add notes", developers.kommo.com/reference/
//! add-notes; note types at /reference/notes-types) checks what Kommo checks: a Bearer token (401
//! with a `application/problem+json` body otherwise), a JSON array of 1 to 250 notes, each with a
//! known `note_type` and, for `common`, `params.text` a non-empty string (400 otherwise). Good
//! notes are recorded ([`FakeKommo::notes`]) and answered 200 (`application/hal+json`) with
//! `_embedded.notes[]` (`id`, `entity_id`, `request_id`). Statuses can be scripted
//! ([`FakeKommo::push`]).
//!
//! `PATCH /api/v4/leads/{lead_id}` ("Edit a lead", developers.kommo.com/reference/edit-a-lead)
//! takes `custom_fields_values: [{field_id, values: [{value}]}]` (400 otherwise) and answers
//! 200 with the lead's `id`. `POST /api/v4/bots/{id}/run` ("Launch a Salesbot",
//! /reference/launch-a-salesbot) takes `{entity_id, entity_type: "leads" | "contacts"}` (400
//! otherwise) and answers 202. Everything is recorded in order ([`FakeKommo::events`]).
//!
//! [`incoming_message`] is the form Kommo posts for a chat message on a lead:
//! `message[add][0][id|chat_id|talk_id|contact_id|text|created_at|element_type|element_id|
//! entity_type|entity_id|type|author][…]` with `account[subdomain|id]`.

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
    routing::{patch, post},
};
use serde_json::{Value, json};
use tokio::sync::Notify;

/// A note added to a lead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The lead.
    pub lead_id: u64,
    /// `note_type`.
    pub note_type: String,
    /// `params.text`.
    pub text: String,
}

/// What the fake was asked to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A note added.
    Note(Note),
    /// A lead's field set.
    Field {
        /// The lead.
        lead_id: u64,
        /// The field.
        field_id: u64,
        /// Its value.
        value: String,
    },
    /// A Salesbot launched on a lead.
    BotRun {
        /// The Salesbot.
        bot_id: u64,
        /// The lead.
        lead_id: u64,
    },
}

#[derive(Default)]
struct Shared {
    token: String,
    events: Mutex<Vec<Event>>,
    statuses: Mutex<VecDeque<u16>>,
    changed: Notify,
}

/// The fake account.
pub struct FakeKommo {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeKommo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

use crate::common::lock;

/// Note types Kommo knows.
const NOTE_TYPES: &[&str] = &[
    "common",
    "call_in",
    "call_out",
    "service_message",
    "geolocation",
    "sms_in",
    "sms_out",
    "extended_service_message",
    "attachment",
];

impl FakeKommo {
    /// Starts on 127.0.0.1, accepting `token`.
    pub async fn start(token: &str) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            token: token.into(),
            ..Default::default()
        });
        let app = Router::new()
            .route("/api/v4/leads/{lead_id}/notes", post(add_notes))
            .route("/api/v4/leads/{lead_id}", patch(edit_lead))
            .route("/api/v4/bots/{bot_id}/run", post(run_bot))
            .with_state(shared.clone());
        let (addr, task) = crate::common::serve(app).await?;
        Ok(Self { addr, shared, task })
    }

    /// `http://127.0.0.1:PORT`: the client's `kommo.base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next requests are answered with these statuses, in order.
    pub fn push(&self, statuses: impl IntoIterator<Item = u16>) {
        lock(&self.shared.statuses).extend(statuses);
    }

    /// Every note added, in order.
    pub fn notes(&self) -> Vec<Note> {
        notes_of(&lock(&self.shared.events)).cloned().collect()
    }

    /// Everything done, in order.
    pub fn events(&self) -> Vec<Event> {
        lock(&self.shared.events).clone()
    }

    /// Waits until at least `n` things were done; false after `limit`.
    pub async fn wait_events(&self, n: usize, limit: Duration) -> bool {
        crate::common::wait_until(&self.shared.changed, limit, || {
            lock(&self.shared.events).len() >= n
        })
        .await
    }

    /// Waits until at least `n` notes were added; false after `limit`.
    pub async fn wait_notes(&self, n: usize, limit: Duration) -> bool {
        crate::common::wait_until(&self.shared.changed, limit, || {
            notes_of(&lock(&self.shared.events)).count() >= n
        })
        .await
    }
}

fn problem(status: StatusCode, title: &str, detail: &str) -> Response {
    let body = json!({"title": title, "type": "https://httpstatus.es/".to_string() + &status.as_u16().to_string(),
        "status": status.as_u16(), "detail": detail});
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

/// The token checked, then a scripted status if one is queued, then the id in the path.
fn admit(shared: &Shared, headers: &HeaderMap, id: &str) -> Result<u64, Box<Response>> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if auth != format!("Bearer {}", shared.token) {
        return Err(Box::new(problem(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Authorization token is invalid or expired",
        )));
    }
    if let Some(status) = lock(&shared.statuses).pop_front() {
        return Err(Box::new(problem(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "Scripted",
            "A scripted failure",
        )));
    }
    id.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
        Box::new(problem(
            StatusCode::NOT_FOUND,
            "Not Found",
            "No such entity",
        ))
    })
}

/// The notes among `events`.
fn notes_of(events: &[Event]) -> impl Iterator<Item = &Note> {
    events.iter().filter_map(|e| match e {
        Event::Note(n) => Some(n),
        _ => None,
    })
}

fn record(shared: &Shared, events: impl IntoIterator<Item = Event>) {
    lock(&shared.events).extend(events);
    shared.changed.notify_waiters();
}

async fn edit_lead(
    State(shared): State<Arc<Shared>>,
    Path(lead_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let lead_id = match admit(&shared, &headers, &lead_id) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut set = Vec::new();
    for f in v["custom_fields_values"].as_array().into_iter().flatten() {
        let (Some(field_id), Some(value)) = (
            f["field_id"].as_u64(),
            f.pointer("/values/0/value").and_then(Value::as_str),
        ) else {
            set.clear();
            break;
        };
        set.push(Event::Field {
            lead_id,
            field_id,
            value: value.into(),
        });
    }
    if set.is_empty() {
        return problem(
            StatusCode::BAD_REQUEST,
            "Bad Request",
            "custom_fields_values must hold {field_id, values: [{value}]}",
        );
    }
    record(&shared, set);
    hal(json!({"id": lead_id, "updated_at": 1764500000}))
}

async fn run_bot(
    State(shared): State<Arc<Shared>>,
    Path(bot_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let bot_id = match admit(&shared, &headers, &bot_id) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (Some(lead_id), Some("leads" | "contacts")) =
        (v["entity_id"].as_u64(), v["entity_type"].as_str())
    else {
        return problem(
            StatusCode::BAD_REQUEST,
            "Bad Request",
            "entity_id must be an id and entity_type leads or contacts",
        );
    };
    record(&shared, [Event::BotRun { bot_id, lead_id }]);
    StatusCode::ACCEPTED.into_response()
}

async fn add_notes(
    State(shared): State<Arc<Shared>>,
    Path(lead_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let lead_id = match admit(&shared, &headers, &lead_id) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    let notes = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Array(a)) if (1..=250).contains(&a.len()) => a,
        _ => {
            return problem(
                StatusCode::BAD_REQUEST,
                "Bad Request",
                "The body must be a JSON array of 1 to 250 notes",
            );
        }
    };
    let mut added = Vec::new();
    for n in &notes {
        let kind = n["note_type"].as_str().unwrap_or_default();
        let text = n["params"]["text"].as_str().unwrap_or_default();
        if !NOTE_TYPES.contains(&kind) || (kind == "common" && text.trim().is_empty()) {
            return problem(
                StatusCode::BAD_REQUEST,
                "Bad Request",
                "Each note needs a known note_type, and a common note params.text",
            );
        }
        added.push(Note {
            lead_id,
            note_type: kind.into(),
            text: text.into(),
        });
    }
    let first_id = {
        let mut events = lock(&shared.events);
        let first = notes_of(&events).count() + 1;
        events.extend(added.iter().cloned().map(Event::Note));
        first
    };
    shared.changed.notify_waiters();
    let embedded: Vec<Value> = (0..added.len())
        .map(|i| {
            json!({"id": first_id + i, "entity_id": lead_id, "request_id": i.to_string(),
                "_links": {"self": {"href": format!("/api/v4/leads/notes/{}", first_id + i)}}})
        })
        .collect();
    hal(
        json!({"_links": {"self": {"href": format!("/api/v4/leads/{lead_id}/notes")}},
        "_embedded": {"notes": embedded}}),
    )
}

/// A 200 with Kommo's `application/hal+json`.
fn hal(body: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/hal+json")],
        body.to_string(),
    )
        .into_response()
}

/// The form Kommo posts when a person writes `text` in the chat of lead `lead_id` (message id
/// `message_id`); `outgoing` for a message the business sent.
pub fn incoming_message(
    lead_id: u64,
    message_id: &str,
    text: &str,
    outgoing: bool,
) -> Vec<(String, String)> {
    let lead = lead_id.to_string();
    let field = |f: &str, v: &str| (format!("message[add][0][{f}]"), v.to_string());
    vec![
        ("account[subdomain]".into(), "brightsmile".into()),
        ("account[id]".into(), "30012345".into()),
        field("id", message_id),
        field("chat_id", "6f1c2a3b-chat"),
        field("talk_id", "418"),
        field("contact_id", "7701"),
        field("text", text),
        field("created_at", "1764500000"),
        field("element_type", "2"),
        field("element_id", &lead),
        field("entity_type", "lead"),
        field("entity_id", &lead),
        field("type", if outgoing { "outgoing" } else { "incoming" }),
        field("author][id", "a1b2"),
        field("author][type", "external"),
        field("author][name", "Dana"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn post(base: &str, token: &str, lead: &str, body: &str) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(format!("{base}/api/v4/leads/{lead}/notes"))
            .header("Authorization", format!("Bearer {token}"))
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (
            status,
            serde_json::from_str(&r.text().await.unwrap()).unwrap(),
        )
    }

    #[tokio::test]
    async fn notes_are_checked_like_kommo() {
        let fake = FakeKommo::start("tok").await.unwrap();
        let base = fake.base_url();
        let good = r#"[{"note_type": "common", "params": {"text": "Hello"}}]"#;
        assert_eq!(post(&base, "bad", "9", good).await.0, 401);
        for bad in [
            "{}",
            "[]",
            r#"[{"note_type": "poem", "params": {"text": "x"}}]"#,
            r#"[{"note_type": "common", "params": {}}]"#,
        ] {
            assert_eq!(post(&base, "tok", "9", bad).await.0, 400, "{bad}");
        }
        assert_eq!(post(&base, "tok", "abc", good).await.0, 404);
        let (status, body) = post(&base, "tok", "9", good).await;
        assert_eq!(status, 200);
        assert_eq!(body["_embedded"]["notes"][0]["entity_id"], 9);
        assert_eq!(
            fake.notes(),
            [Note {
                lead_id: 9,
                note_type: "common".into(),
                text: "Hello".into()
            }]
        );
    }

    #[test]
    fn the_webhook_form_names_the_lead_twice() {
        let f = incoming_message(9041, "m-1", "Hi", false);
        let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("message[add][0][element_id]"), Some("9041"));
        assert_eq!(get("message[add][0][entity_id]"), Some("9041"));
        assert_eq!(get("message[add][0][type]"), Some("incoming"));
        assert_eq!(get("message[add][0][author][name]"), Some("Dana"));
    }
}
