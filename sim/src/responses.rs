//! A fake OpenAI Responses endpoint on loopback (`POST /v1/responses`, and
//! `POST /v1/conversations`). A request asking for a strict `json_schema` is the post-call
//! job's, answered as below; any other is a text channel's chat turn, answered by
//! [`crate::text_model`] (conversations, function tools, streaming).
//!
//! For the post-call job:
//! it checks the request the way the real API does (a Bearer key, `model`, `input`, known
//! parameters only, `text.format` a strict `json_schema` whose schema strict mode accepts) and
//! answers 400 with an OpenAI-style error body otherwise (`{"error": {"message", "type",
//! "param", "code"}}`). A valid request gets a `response` object whose `message` item's
//! `output_text` is JSON matching the schema: a deterministic summary built from the transcript
//! in the input, and the minimal valid value of every other field (the first enum value, a
//! date for `"format": "date"`, null where null is allowed first, …). A `reasoning` item comes
//! before the message, as a reasoning model's answer has.
//!
//! Faults are scripted in order ([`FakeResponses::push`]): an HTTP status with an error body, a
//! hang (the request is never answered), an answer whose fields do not match the schema, an
//! answer whose text is not JSON. Every request is recorded ([`FakeResponses::requests`]) and
//! valid answers are counted ([`FakeResponses::completions`]).
//!
//! Its strict-mode rules are written independently of warmline's own check, after the
//! Structured Outputs guide ("Supported schemas"): the root an object and not `anyOf`, every
//! object with `additionalProperties: false` and every property in `required`, the supported
//! keywords only, `$ref` to `#/$defs/…` or `#`.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use serde_json::{Map, Value, json};
use tokio::sync::Notify;

/// What the next request gets instead of a good answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// This HTTP status with an OpenAI-style error body (500, 429, 503, …).
    Status(u16),
    /// The request is never answered.
    Hang,
    /// A 200 whose `fields` (or, without fields, `summary`) do not match the schema.
    Mismatch,
    /// A 200 whose `output_text` is not JSON.
    NotJson,
    /// A good answer (places a fault at a later request: `[Answer, Hang]`).
    Answer,
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The body (`Value::Null` when it was not JSON).
    pub body: Value,
    /// The status answered (0 for a hang).
    pub status: u16,
    /// The `output_text` answered, for a 200.
    pub answer: Option<String>,
}

#[derive(Default)]
struct Shared {
    chat: crate::text_model::ChatState,
    /// Background responses by id, as `GET /v1/responses/{id}` gives them.
    background: Mutex<std::collections::HashMap<String, Value>>,
    /// Where background completions are announced: (URL, `whsec_` secret).
    webhook: Mutex<Option<(String, String)>>,
    /// Statuses the webhook receiver answered, in order.
    webhook_statuses: Mutex<Vec<u16>>,
    /// `GET /v1/responses/{id}` requests received.
    polls: AtomicUsize,
    /// Requests received over HTTP/1.x and over HTTP/2.
    versions: [AtomicUsize; 2],
    faults: Mutex<VecDeque<Fault>>,
    requests: Mutex<Vec<Recorded>>,
    completions: AtomicUsize,
    ids: AtomicUsize,
    changed: Notify,
}

/// The fake Responses endpoint.
pub struct FakeResponses {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeResponses {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeResponses {
    /// Starts on 127.0.0.1 with an OS-chosen port.
    pub async fn start() -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/v1/responses", post(respond))
            .route("/v1/responses/{id}", axum::routing::get(get_response))
            .route("/v1/conversations", post(create_conversation))
            .route(
                "/v1/conversations/{id}",
                axum::routing::delete(delete_conversation),
            )
            .route("/v1/conversations/{id}/items", post(add_items))
            .layer(axum::middleware::from_fn_with_state(
                shared.clone(),
                count_version,
            ))
            .with_state(shared.clone());
        let (addr, task) = crate::common::serve(app).await?;
        Ok(Self { addr, shared, task })
    }

    /// Requests received so far over HTTP/1.x and over HTTP/2.
    pub fn requests_by_version(&self) -> (usize, usize) {
        let [h1, h2] = &self.shared.versions;
        (h1.load(Ordering::Relaxed), h2.load(Ordering::Relaxed))
    }

    /// `http://127.0.0.1:PORT/v1`: the `openai.base_url` to give the gateway.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queues faults: each of the next requests gets one, in order, before good answers resume.
    pub fn push(&self, faults: impl IntoIterator<Item = Fault>) {
        lock(&self.shared.faults).extend(faults);
    }

    /// Streamed answers come as `deltas` stamped deltas, one every `interval` (the load
    /// generator's chat benchmark: [`crate::text_model::read_stamp`]).
    pub fn pace(&self, interval: Duration, deltas: usize) {
        *lock(&self.shared.chat.pacing) = Some((interval, deltas));
    }

    /// The model's next chat turn that offers this function calls it (instead of answering).
    pub fn script_tool(&self, name: &str, arguments: &str) {
        lock(&self.shared.chat.scripted).push_back(crate::text_model::ScriptedCall {
            name: name.into(),
            arguments: arguments.into(),
        });
    }

    /// Announces background completions to `url`, signed with `secret` (`whsec_…`), as OpenAI's
    /// webhooks do (Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`).
    pub fn webhook_to(&self, url: &str, secret: &str) {
        *lock(&self.shared.webhook) = Some((url.into(), secret.into()));
    }

    /// The statuses the webhook receiver answered, in order.
    pub fn webhook_statuses(&self) -> Vec<u16> {
        lock(&self.shared.webhook_statuses).clone()
    }

    /// `GET /v1/responses/{id}` requests received so far.
    pub fn polls(&self) -> usize {
        self.shared.polls.load(Ordering::SeqCst)
    }

    /// A conversation's items, in order (none for an unknown id).
    pub fn conversation_items(&self, id: &str) -> Option<Vec<Value>> {
        lock(&self.shared.chat.conversations).get(id).cloned()
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.requests).clone()
    }

    /// Good answers sent so far (a 200 with JSON matching the schema).
    pub fn completions(&self) -> usize {
        self.shared.completions.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests arrived; false after `limit`.
    pub async fn wait_requests(&self, n: usize, limit: Duration) -> bool {
        crate::common::wait_until(&self.shared.changed, limit, || {
            lock(&self.shared.requests).len() >= n
        })
        .await
    }
}

pub(crate) use crate::common::lock;

fn error(
    status: StatusCode,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
    message: &str,
) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": param, "code": code}});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Top-level parameters of `POST /v1/responses` (others are refused, as the real API does).
const KNOWN_PARAMS: &[&str] = &[
    "model",
    "input",
    "instructions",
    "text",
    "store",
    "temperature",
    "top_p",
    "max_output_tokens",
    "metadata",
    "reasoning",
    "previous_response_id",
    "conversation",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "truncation",
    "include",
    "stream",
    "background",
    "service_tier",
    "user",
    "safety_identifier",
    "prompt_cache_key",
];

/// Counts each request by its HTTP version.
async fn count_version(
    State(shared): State<Arc<Shared>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let http2 = req.version() == axum::http::Version::HTTP_2;
    shared.versions[usize::from(http2)].fetch_add(1, Ordering::Relaxed);
    next.run(req).await
}

async fn respond(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let record = |status: u16, answer: Option<String>| {
        lock(&shared.requests).push(Recorded {
            authorization: authorization.clone(),
            body: parsed.clone().unwrap_or(Value::Null),
            status,
            answer,
        });
        shared.changed.notify_waiters();
    };
    if bearer_key(&headers).is_none() {
        record(401, None);
        return no_key();
    }
    let Some(request) = parsed.clone() else {
        record(400, None);
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            None,
            "We could not parse the JSON body of your request.",
        );
    };
    if request.pointer("/text/format/type").and_then(Value::as_str) != Some("json_schema") {
        return chat(&shared, &request, record).await;
    }
    let schema = match check_request(&request) {
        Ok(schema) => schema,
        Err((param, code, message)) => {
            record(400, None);
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some(&param),
                code,
                &message,
            );
        }
    };
    let fault = lock(&shared.faults).pop_front();
    let mut answer = minimal(&schema, &schema, 0);
    if let Some(obj) = answer.as_object_mut()
        && obj.contains_key("summary")
    {
        obj.insert(
            "summary".into(),
            Value::String(summary_of(&request["input"])),
        );
    }
    let text = match fault {
        Some(Fault::Status(code)) => {
            record(code, None);
            return status_fault(code);
        }
        Some(Fault::Hang) => {
            record(0, None);
            return std::future::pending().await;
        }
        Some(Fault::Mismatch) => {
            match answer.get_mut("fields").and_then(Value::as_object_mut) {
                Some(fields) => {
                    fields.insert("not_in_the_schema".into(), Value::Bool(true));
                }
                None => answer["summary"] = json!(42),
            }
            answer.to_string()
        }
        Some(Fault::NotJson) => "Sure! Here is the summary you asked for.".to_string(),
        Some(Fault::Answer) | None => answer.to_string(),
    };
    if matches!(fault, None | Some(Fault::Answer)) {
        shared.completions.fetch_add(1, Ordering::SeqCst);
    }
    record(200, Some(text.clone()));
    let n = shared.ids.fetch_add(1, Ordering::SeqCst);
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let body = json!({
        "id": format!("resp_fake{n:04}"),
        "object": "response",
        "created_at": created,
        "status": "completed",
        "error": null,
        "incomplete_details": null,
        "model": request["model"],
        "instructions": request.get("instructions"),
        "output": [
            {"id": format!("rs_fake{n:04}"), "type": "reasoning", "summary": []},
            {"id": format!("msg_fake{n:04}"), "type": "message", "status": "completed",
             "role": "assistant",
             "content": [{"type": "output_text", "text": text, "annotations": []}]}
        ],
        "store": request.get("store").cloned().unwrap_or(Value::Bool(true)),
        "text": request["text"],
        "usage": {"input_tokens": 100, "output_tokens": 50, "total_tokens": 150}
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A chat turn (a request that is not the post-call job's): the common checks and the faults,
/// then [`crate::text_model::respond`].
async fn chat(
    shared: &Arc<Shared>,
    request: &Value,
    record: impl Fn(u16, Option<String>),
) -> Response {
    if let Err((param, code, message)) = check_common(request) {
        record(400, None);
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some(&param),
            code,
            &message,
        );
    }
    let fault = lock(&shared.faults).pop_front();
    match fault {
        Some(Fault::Hang) => {
            record(0, None);
            return std::future::pending().await;
        }
        Some(Fault::Status(code)) => {
            record(code, None);
            return status_fault(code);
        }
        // The post-call job's faults have no meaning for a chat turn.
        Some(Fault::Mismatch | Fault::NotJson | Fault::Answer) | None => {}
    }
    match crate::text_model::respond(&shared.chat, request) {
        Ok(crate::text_model::Answered::Now(r)) => {
            shared.completions.fetch_add(1, Ordering::SeqCst);
            record(200, None);
            r
        }
        Ok(crate::text_model::Answered::Background {
            id,
            queued,
            done,
            operating,
        }) => {
            shared.completions.fetch_add(1, Ordering::SeqCst);
            record(200, None);
            lock(&shared.background).insert(id.clone(), queued.clone());
            tokio::spawn(complete_later(shared.clone(), id, done, operating));
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                queued.to_string(),
            )
                .into_response()
        }
        Err(p) => {
            record(p.status.as_u16(), None);
            error(
                p.status,
                "invalid_request_error",
                Some(&p.param),
                p.code,
                &p.message,
            )
        }
    }
}

/// `POST /v1/conversations`.
async fn create_conversation(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if bearer_key(&headers).is_none() {
        return no_key();
    }
    let body: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    None,
                    None,
                    "We could not parse the JSON body of your request.",
                );
            }
        }
    };
    match shared.chat.create_conversation(&body) {
        Ok(c) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            c.to_string(),
        )
            .into_response(),
        Err((param, message)) => error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some(&param),
            None,
            &message,
        ),
    }
}

/// The API's answer to a request without a Bearer key (401).
fn no_key() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "invalid_request_error",
        None,
        None,
        "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
    )
}

/// How long a background response takes to complete.
const BACKGROUND_TAKES: Duration = Duration::from_millis(30);

/// Completes background response `id` with `done`, then announces it to the webhook, if set.
async fn complete_later(
    shared: Arc<Shared>,
    id: String,
    done: Value,
    operating: Option<crate::text_model::Operating>,
) {
    tokio::time::sleep(BACKGROUND_TAKES).await;
    // Let go before it is seen done: the turn after it is never refused.
    drop(operating);
    lock(&shared.background).insert(id.clone(), done);
    let Some((url, secret)) = lock(&shared.webhook).clone() else {
        return;
    };
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let event_id = format!("evt_fake{}", shared.ids.fetch_add(1, Ordering::SeqCst));
    let body = json!({"id": event_id, "object": "event", "created_at": created,
        "type": "response.completed", "data": {"id": id}})
    .to_string();
    let signature = sign_webhook(&secret, &event_id, created, body.as_bytes());
    let status = reqwest::Client::new()
        .post(&url)
        .header("webhook-id", &event_id)
        .header("webhook-timestamp", created.to_string())
        .header("webhook-signature", signature)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0);
    lock(&shared.webhook_statuses).push(status);
    shared.changed.notify_waiters();
}

/// `v1,<base64 HMAC-SHA256(base64-decoded whsec_ secret, "{id}.{timestamp}.{body}")>`.
pub fn sign_webhook(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    use base64::Engine;
    use hmac::{Hmac, KeyInit, Mac};
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .unwrap_or_default();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("HMAC takes any key");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", b64.encode(mac.finalize().into_bytes()))
}

/// `GET /v1/responses/{id}`: a background response as it stands.
async fn get_response(
    State(shared): State<Arc<Shared>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    shared.polls.fetch_add(1, Ordering::SeqCst);
    if bearer_key(&headers).is_none() {
        return no_key();
    }
    match lock(&shared.background).get(&id) {
        Some(r) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            r.to_string(),
        )
            .into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            None,
            None,
            &format!("Response with id '{id}' not found."),
        ),
    }
}

/// `DELETE /v1/conversations/{id}`.
async fn delete_conversation(
    State(shared): State<Arc<Shared>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    if bearer_key(&headers).is_none() {
        return no_key();
    }
    if lock(&shared.chat.conversations).remove(&id).is_none() {
        return error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            None,
            None,
            &format!("Conversation with id '{id}' not found."),
        );
    }
    let body = json!({"id": id, "object": "conversation.deleted", "deleted": true});
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// `POST /v1/conversations/{id}/items` `{items}` (at most 20): a `list` of the items added.
async fn add_items(
    State(shared): State<Arc<Shared>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if bearer_key(&headers).is_none() {
        return no_key();
    }
    let items = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("items").and_then(Value::as_array).cloned())
        .filter(|i| !i.is_empty() && i.len() <= 20);
    let Some(items) = items else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("items"),
            None,
            "Invalid 'items': expected 1 to 20 items.",
        );
    };
    let mut all = lock(&shared.chat.conversations);
    let Some(conv) = all.get_mut(&id) else {
        return error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            None,
            None,
            &format!("Conversation with id '{id}' not found."),
        );
    };
    conv.extend(items.iter().cloned());
    let body = json!({"object": "list", "data": items, "has_more": false,
        "first_id": "", "last_id": ""});
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A scripted [`Fault::Status`]: that status with the API's error body (a rate limit's for 429,
/// a server error's otherwise).
fn status_fault(code: u16) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (kind, message) = if code == 429 {
        (
            "requests",
            "Rate limit reached for requests. Please try again later.",
        )
    } else {
        (
            "server_error",
            "The server had an error while processing your request. Sorry about that!",
        )
    };
    error(status, kind, None, None, message)
}

/// The Bearer key of a request, if it has a non-empty one.
fn bearer_key(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

type Refusal = (String, Option<&'static str>, String);

fn refuse(param: &str, message: impl Into<String>) -> Refusal {
    (param.to_string(), None, message.into())
}

/// What every request must be: an object of known parameters with a `model`.
fn check_common(r: &Value) -> Result<(), Refusal> {
    let Some(obj) = r.as_object() else {
        return Err(refuse("", "The body must be a JSON object."));
    };
    if let Some(unknown) = obj.keys().find(|k| !KNOWN_PARAMS.contains(&k.as_str())) {
        return Err((
            unknown.clone(),
            Some("unknown_parameter"),
            format!("Unknown parameter: '{unknown}'."),
        ));
    }
    match obj.get("model").and_then(Value::as_str) {
        Some(m) if !m.trim().is_empty() => {}
        _ => return Err(refuse("model", "Missing required parameter: 'model'.")),
    }
    Ok(())
}

/// Checks the post-call request's shape; the schema of `text.format` when it is good.
fn check_request(r: &Value) -> Result<Value, Refusal> {
    check_common(r)?;
    let Some(obj) = r.as_object() else {
        return Err(refuse("", "The body must be a JSON object."));
    };
    check_input(obj.get("input"))?;
    if let Some(i) = obj.get("instructions")
        && !i.is_string()
        && !i.is_null()
    {
        return Err(refuse("instructions", "'instructions' must be a string."));
    }
    if let Some(s) = obj.get("store")
        && !s.is_boolean()
    {
        return Err(refuse("store", "'store' must be a boolean."));
    }
    let format = r.pointer("/text/format");
    if format.and_then(|f| f.get("type")).and_then(Value::as_str) != Some("json_schema") {
        return Err(refuse(
            "text.format.type",
            "The post-call request must ask for text.format.type 'json_schema'.",
        ));
    }
    let format = format.unwrap_or(&Value::Null);
    let name = format
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let name_ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !name_ok {
        return Err(refuse(
            "text.format.name",
            "Invalid 'text.format.name': must be 1-64 characters of a-z, A-Z, 0-9, _ or -.",
        ));
    }
    if format.get("strict") != Some(&Value::Bool(true)) {
        return Err(refuse(
            "text.format.strict",
            "The post-call request must set text.format.strict to true.",
        ));
    }
    let Some(schema) = format.get("schema").filter(|s| s.is_object()) else {
        return Err(refuse(
            "text.format.schema",
            "Missing required parameter: 'text.format.schema'.",
        ));
    };
    strict_problem(schema).map_or(Ok(()), |problem| {
        Err((
            "text.format.schema".into(),
            Some("invalid_json_schema"),
            format!("Invalid schema for response_format '{name}': {problem}"),
        ))
    })?;
    Ok(schema.clone())
}

fn check_input(input: Option<&Value>) -> Result<(), Refusal> {
    let ok = match input {
        Some(Value::String(s)) => !s.trim().is_empty(),
        Some(Value::Array(items)) if !items.is_empty() => items.iter().all(|item| {
            let role_ok = matches!(
                item.get("role").and_then(Value::as_str),
                Some("user" | "system" | "developer" | "assistant")
            );
            let content_ok = match item.get("content") {
                Some(Value::String(s)) => !s.is_empty(),
                Some(Value::Array(parts)) => parts.iter().all(|p| {
                    p.get("type").and_then(Value::as_str) == Some("input_text")
                        && p.get("text").is_some_and(Value::is_string)
                }),
                _ => false,
            };
            role_ok && content_ok
        }),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(refuse(
            "input",
            "Invalid 'input': expected a non-empty string or a list of messages with a role and text content.",
        ))
    }
}

/// Keywords strict mode takes (the Structured Outputs guide's supported subset).
const STRICT_KEYWORDS: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "anyOf",
    "$ref",
    "$defs",
    "description",
    "title",
    "$comment",
    "pattern",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minItems",
    "maxItems",
];

/// What strict mode refuses in `schema`, in the real API's style ("In context=(...), ...").
pub fn strict_problem(schema: &Value) -> Option<String> {
    if schema.get("type").and_then(Value::as_str) != Some("object") || schema.get("anyOf").is_some()
    {
        return Some(
            "schema must be a JSON Schema of 'type: \"object\"', got something else.".into(),
        );
    }
    let mut problem = walk(schema, schema, &mut Vec::new());
    if problem.is_none()
        && let Some(defs) = schema.get("$defs").and_then(Value::as_object)
    {
        for (name, def) in defs {
            problem = walk(def, schema, &mut vec!["$defs".into(), name.clone()]);
            if problem.is_some() {
                break;
            }
        }
    }
    problem
}

fn context(path: &[String]) -> String {
    let parts: Vec<String> = path.iter().map(|p| format!("'{p}'")).collect();
    format!("In context=({})", parts.join(", "))
}

fn walk(node: &Value, root: &Value, path: &mut Vec<String>) -> Option<String> {
    let Some(obj) = node.as_object() else {
        return Some(format!("{}, schema must be an object.", context(path)));
    };
    for key in obj.keys() {
        if !STRICT_KEYWORDS.contains(&key.as_str()) || (key == "$defs" && !path.is_empty()) {
            return Some(format!("{}, '{key}' is not permitted.", context(path)));
        }
    }
    if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
        let resolves = r == "#"
            || r.strip_prefix("#/$defs/")
                .is_some_and(|n| root.pointer(&format!("/$defs/{n}")).is_some());
        return (!resolves)
            .then(|| format!("{}, reference '{r}' cannot be resolved.", context(path)));
    }
    let types: Vec<&str> = match obj.get("type") {
        Some(Value::String(t)) => vec![t],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if types.is_empty()
        && !obj.contains_key("anyOf")
        && !obj.contains_key("enum")
        && !obj.contains_key("const")
    {
        return Some(format!("{}, schema must have a 'type' key.", context(path)));
    }
    if types.contains(&"object") {
        if obj.get("additionalProperties") != Some(&Value::Bool(false)) {
            return Some(format!(
                "{}, 'additionalProperties' is required to be supplied and to be false.",
                context(path)
            ));
        }
        let props = obj
            .get("properties")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let required: Vec<&str> = obj
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(missing) = props.keys().find(|k| !required.contains(&k.as_str())) {
            return Some(format!(
                "{}, 'required' is required to be supplied and to be an array including every key in properties. Missing '{missing}'.",
                context(path)
            ));
        }
        for (k, sub) in &props {
            path.extend(["properties".to_string(), k.clone()]);
            let p = walk(sub, root, path);
            path.truncate(path.len() - 2);
            if p.is_some() {
                return p;
            }
        }
    }
    if types.contains(&"array") {
        let Some(items) = obj.get("items") else {
            return Some(format!("{}, array schema missing items.", context(path)));
        };
        path.push("items".into());
        let p = walk(items, root, path);
        path.pop();
        if p.is_some() {
            return p;
        }
    }
    if let Some(any) = obj.get("anyOf").and_then(Value::as_array) {
        for (i, sub) in any.iter().enumerate() {
            path.extend(["anyOf".to_string(), i.to_string()]);
            let p = walk(sub, root, path);
            path.truncate(path.len() - 2);
            if p.is_some() {
                return p;
            }
        }
    }
    None
}

/// The smallest value `schema` accepts (references resolved against `root`).
pub fn minimal(schema: &Value, root: &Value, depth: usize) -> Value {
    if depth > 32 {
        return Value::Null;
    }
    let Some(obj) = schema.as_object() else {
        return Value::Null;
    };
    if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
        let target = if r == "#" {
            Some(root)
        } else {
            r.strip_prefix('#').and_then(|p| root.pointer(p))
        };
        return target.map_or(Value::Null, |t| minimal(t, root, depth + 1));
    }
    if let Some(c) = obj.get("const") {
        return c.clone();
    }
    if let Some(first) = obj
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    if let Some(first) = obj
        .get("anyOf")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
    {
        return minimal(first, root, depth + 1);
    }
    let types: Vec<&str> = match obj.get("type") {
        Some(Value::String(t)) => vec![t],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let kind = types
        .iter()
        .find(|t| **t != "null")
        .copied()
        .unwrap_or("null");
    let number = |integer: bool| {
        let min = obj
            .get("minimum")
            .and_then(Value::as_f64)
            .or_else(|| {
                obj.get("exclusiveMinimum")
                    .and_then(Value::as_f64)
                    .map(|m| m.floor() + 1.0)
            })
            .unwrap_or(0.0);
        if integer {
            json!(min.ceil() as i64)
        } else {
            json!(min)
        }
    };
    match kind {
        "string" => Value::String(
            match obj.get("format").and_then(Value::as_str) {
                Some("date") => "2026-12-01",
                Some("date-time") => "2026-12-01T09:00:00Z",
                Some("time") => "09:00:00",
                Some("duration") => "P1D",
                Some("email") => "caller@example.com",
                Some("hostname") => "example.com",
                Some("ipv4") => "127.0.0.1",
                Some("ipv6") => "::1",
                Some("uuid") => "00000000-0000-4000-8000-000000000000",
                _ => "x",
            }
            .to_string(),
        ),
        "integer" => number(true),
        "number" => number(false),
        "boolean" => Value::Bool(false),
        "object" => {
            let mut out = Map::new();
            if let Some(props) = obj.get("properties").and_then(Value::as_object) {
                for (k, sub) in props {
                    out.insert(k.clone(), minimal(sub, root, depth + 1));
                }
            }
            Value::Object(out)
        }
        "array" => {
            let n = obj.get("minItems").and_then(Value::as_u64).unwrap_or(0);
            let item = obj
                .get("items")
                .map_or(Value::Null, |i| minimal(i, root, depth + 1));
            Value::Array((0..n).map(|_| item.clone()).collect())
        }
        _ => Value::Null,
    }
}

/// The deterministic summary: the caller's first line and how many lines they said, read from
/// the transcript document in the input (warmline's shape: `{"transcript": [{"role", "text"}]}`),
/// else the start of the input's text.
pub fn summary_of(input: &Value) -> String {
    let mut texts = Vec::new();
    match input {
        Value::String(s) => texts.push(s.clone()),
        Value::Array(items) => {
            for item in items {
                match item.get("content") {
                    Some(Value::String(s)) => texts.push(s.clone()),
                    Some(Value::Array(parts)) => texts.extend(
                        parts
                            .iter()
                            .filter_map(|p| p.get("text").and_then(Value::as_str))
                            .map(str::to_string),
                    ),
                    _ => {}
                }
            }
        }
        _ => {}
    }
    for text in &texts {
        let Ok(doc) = serde_json::from_str::<Value>(text) else {
            continue;
        };
        let caller: Vec<&str> = doc
            .get("transcript")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|l| l.get("role").and_then(Value::as_str) == Some("caller"))
            .filter_map(|l| l.get("text").and_then(Value::as_str))
            .collect();
        if let Some(first) = caller.first() {
            return format!(
                "Summary: the caller asked \"{first}\" ({} caller line{}).",
                caller.len(),
                if caller.len() == 1 { "" } else { "s" }
            );
        }
    }
    let all = texts.join(" ");
    format!("Summary of: {}", all.chars().take(80).collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({"type": "object",
            "properties": {
                "summary": {"type": "string"},
                "fields": {"type": "object",
                    "properties": {
                        "date": {"type": ["string", "null"], "format": "date"},
                        "urgency": {"type": "string", "enum": ["low", "urgent"]},
                        "visits": {"type": "integer", "minimum": 1},
                        "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}, "minItems": 2},
                        "contact": {"anyOf": [{"type": "null"}, {"type": "string"}]}
                    },
                    "required": ["date", "urgency", "visits", "tags", "contact"],
                    "additionalProperties": false}
            },
            "required": ["summary", "fields"],
            "additionalProperties": false,
            "$defs": {"tag": {"type": "string", "enum": ["new"]}}})
    }

    #[test]
    fn minimal_values_satisfy_the_schema() {
        let s = schema();
        assert_eq!(strict_problem(&s), None);
        assert_eq!(
            minimal(&s, &s, 0),
            json!({"summary": "x", "fields": {"date": "2026-12-01", "urgency": "low",
                "visits": 1, "tags": ["new", "new"], "contact": null}})
        );
    }

    #[test]
    fn strict_problems_are_named() {
        let mut s = schema();
        s["properties"]["fields"]["required"] = json!(["date"]);
        let problem = strict_problem(&s).unwrap();
        assert!(
            problem.starts_with("In context=('properties', 'fields'), 'required'")
                && problem.contains("Missing 'contact'"),
            "{problem}"
        );
        let mut s = schema();
        s["properties"]["fields"]
            .as_object_mut()
            .unwrap()
            .remove("additionalProperties");
        assert!(
            strict_problem(&s)
                .unwrap()
                .contains("'additionalProperties'")
        );
        let mut s = schema();
        s["properties"]["summary"]["minLength"] = json!(1);
        assert!(
            strict_problem(&s)
                .unwrap()
                .contains("'minLength' is not permitted")
        );
        assert!(strict_problem(&json!({"type": "array", "items": {"type": "string"}})).is_some());
    }

    #[test]
    fn the_summary_quotes_the_first_caller_line() {
        let doc = json!({"transcript": [{"role": "agent", "text": "Hello"},
            {"role": "caller", "text": "I need a cleaning"}, {"role": "caller", "text": "Thanks"}]});
        let input = json!([{"role": "user", "content": doc.to_string()}]);
        assert_eq!(
            summary_of(&input),
            "Summary: the caller asked \"I need a cleaning\" (2 caller lines)."
        );
        assert_eq!(summary_of(&json!("plain words")), "Summary of: plain words");
    }

    #[test]
    fn requests_missing_what_the_api_needs_are_refused() {
        let good = json!({"model": "m", "input": "hi", "store": false,
            "text": {"format": {"type": "json_schema", "name": "call_results",
                                "schema": schema(), "strict": true}}});
        assert!(check_request(&good).is_ok());
        for (change, param) in [
            (json!({"model": ""}), "model"),
            (json!({"input": []}), "input"),
            (json!({"response_format": {}}), "response_format"),
            (
                json!({"text": {"format": {"type": "json_object"}}}),
                "text.format.type",
            ),
            (
                json!({"text": {"format": {"type": "json_schema", "name": "a b", "schema": schema(), "strict": true}}}),
                "text.format.name",
            ),
            (
                json!({"text": {"format": {"type": "json_schema", "name": "n", "schema": schema()}}}),
                "text.format.strict",
            ),
            (
                json!({"text": {"format": {"type": "json_schema", "name": "n", "strict": true,
                "schema": {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": false}}}}),
                "text.format.schema",
            ),
        ] {
            let mut r = good.clone();
            for (k, v) in change.as_object().unwrap() {
                r[k] = v.clone();
            }
            let (got, _, message) = check_request(&r).expect_err(param);
            assert_eq!(got, param, "{message}");
        }
    }
}
