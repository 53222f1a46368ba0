//! The web chat (README "Text channels", "Web chat"): a business's site talks to its agent.
//!
//! - `POST /api/chat/send` `{"sessionId", "text", "leadId"?, "channel"?}` →
//!   `{"ok": true, "conversation_id", "text", "leadId"}`;
//! - `GET /api/chat/stream?sessionId=…&text=…[&leadId=…]`: Server-Sent Events, each one unnamed
//!   `data:` line of JSON with a `type`: `agent_chunk` (`text`: a delta), `tool_call` (`name`,
//!   `arguments`), `tool_result` (`name`, `output`), and last `agent_end` (the whole `text`,
//!   `conversation_id`) with `done: true`. Unnamed, so `EventSource.onmessage` sees every event
//!   (a named `event:` line never reaches it); the page closes the source on `done`, or the
//!   browser would reconnect and send the message again;
//! - `GET /api/chat/ws`: a WebSocket; in `{"type": "user_input", "text", "thread_id"?}`, out the
//!   same events as the stream (the last of each answer with `done: true`), and `{"type":
//!   "error", "error"}` for a message refused.
//!
//! The business is named by its public chat key (`client` query parameter or
//! `X-Warmline-Chat-Key`); a page's `Origin` must be one of the client's `chat_origins` when it
//! lists any (CORS answers name only that origin). The person is `web:{sessionId}`, or
//! `kommo:lead:{leadId}` when a lead id is given (a Kommo lead chatting on the site).
//!
//! Refusals come before anything reaches the model: bad JSON or fields (400), an unknown key
//! (401), a foreign origin (403), a message too long (413), the person over
//! `text.messages_per_minute` (429 with `Retry-After`), the client at
//! `text.concurrent_per_client` (503). Every error body is `{"ok": false, "error"}`.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{
        Query, State, WebSocketUpgrade,
        ws::{Message, WebSocket},
    },
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{
        IntoResponse, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
    routing::{get, post},
};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::agent::{Answer, Inbound, Progress, Refusal, TextAgent};
use crate::{app::AppState, domain::Channel, store::clients};

/// Header naming the business by its chat key.
pub const KEY_HEADER: &str = "x-warmline-chat-key";
/// Longest session id (characters).
const SESSION_MAX: usize = 128;
/// Largest body of `POST /api/chat/send` and WebSocket message (bytes).
const BODY_MAX: usize = 256 * 1024;

/// The web chat's routes (public: a site's pages call them). Their time limit is
/// `text.timeout_secs` (the agent's own), not `server.request_timeout_secs`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/chat/send", post(send).options(preflight))
        .route("/api/chat/stream", get(stream).options(preflight))
        .route("/api/chat/ws", get(socket))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_MAX))
}

/// A refusal, as every route answers it.
#[derive(Debug)]
pub struct ChatError {
    status: StatusCode,
    message: String,
    retry_after: Option<Duration>,
    origin: Option<HeaderValue>,
}

impl ChatError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
            origin: None,
        }
    }
}

impl From<Refusal> for ChatError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Empty => Self::new(StatusCode::BAD_REQUEST, "text must not be empty"),
            Refusal::TooLong => Self::new(StatusCode::PAYLOAD_TOO_LARGE, "the message is too long"),
            Refusal::TooMany(after) => Self {
                retry_after: Some(after),
                ..Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many messages; write again in a moment",
                )
            },
            Refusal::Busy => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the business is answering too many messages; try again in a moment",
            ),
        }
    }
}

impl IntoResponse for ChatError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(json!({"ok": false, "error": self.message})),
        )
            .into_response();
        if let Some(after) = self.retry_after {
            let secs = after.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if let Some(origin) = self.origin {
            cors(r.headers_mut(), origin);
        }
        r
    }
}

/// `client` (the chat key) where a query may carry it.
#[derive(Debug, Deserialize)]
struct KeyQuery {
    #[serde(default)]
    client: Option<String>,
}

/// The body of `POST /api/chat/send`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SendBody {
    session_id: Option<Value>,
    text: Option<String>,
    #[serde(default)]
    lead_id: Option<Value>,
    #[serde(default)]
    channel: Option<String>,
    /// The chat key in the body, for pages that cannot set headers.
    #[serde(default)]
    client: Option<String>,
}

/// The query of `GET /api/chat/stream`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StreamQuery {
    session_id: Option<String>,
    text: Option<String>,
    #[serde(default)]
    lead_id: Option<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    client: Option<String>,
}

/// Who is writing, from a session id and a lead id.
fn identity(session: Option<&Value>, lead: Option<&Value>) -> Result<(String, Value), ChatError> {
    let lead = match lead {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_u64().is_some() => Some(n.to_string()),
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) if s.len() <= 20 && s.trim().bytes().all(|b| b.is_ascii_digit()) => {
            Some(s.trim().to_string())
        }
        Some(_) => {
            return Err(ChatError::new(
                StatusCode::BAD_REQUEST,
                "leadId must be a Kommo lead id (digits)",
            ));
        }
    };
    if let Some(lead) = lead {
        let id: u64 = lead.parse().unwrap_or_default();
        return Ok((format!("kommo:lead:{lead}"), json!(id)));
    }
    let session = match session {
        Some(Value::String(s)) => s.trim().to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    if session.is_empty()
        || session.chars().count() > SESSION_MAX
        || session.chars().any(char::is_control)
    {
        return Err(ChatError::new(
            StatusCode::BAD_REQUEST,
            format!("sessionId must be 1 to {SESSION_MAX} characters"),
        ));
    }
    Ok((format!("web:{session}"), Value::Null))
}

/// The channel a page names (`webchat` unless it names another text channel).
fn channel_of(raw: Option<&str>) -> Channel {
    match raw.and_then(Channel::parse) {
        Some(Channel::Voice) | None => Channel::Webchat,
        Some(c) => c,
    }
}

/// The business named by the chat key, checked against the page's origin.
async fn business(
    state: &AppState,
    headers: &HeaderMap,
    key: Option<&str>,
) -> Result<(Arc<clients::ClientProfile>, Option<HeaderValue>), ChatError> {
    let origin = headers.get(header::ORIGIN).cloned();
    let key = headers
        .get(KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .or(key)
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 100);
    let Some(key) = key else {
        return Err(ChatError::new(
            StatusCode::UNAUTHORIZED,
            "name the business by its chat key (client parameter or X-Warmline-Chat-Key)",
        ));
    };
    let client = match clients::client_by_chat_key(&state.db, key).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return Err(ChatError::new(
                StatusCode::UNAUTHORIZED,
                "no business has this chat key",
            ));
        }
        Err(e) => {
            tracing::error!(error = %e, "web chat: reading the business failed");
            return Err(ChatError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the chat is unavailable; try again in a moment",
            ));
        }
    };
    let allowed: Vec<String> =
        crate::json::from_stored(client.client.chat_origins.as_deref(), |v| {
            serde_json::from_value(v.clone()).map_err(|e| e.to_string())
        });
    if let Some(o) = &origin
        && !allowed.is_empty()
        && !allowed
            .iter()
            .any(|a| o.to_str().is_ok_and(|o| o.eq_ignore_ascii_case(a)))
    {
        return Err(ChatError::new(
            StatusCode::FORBIDDEN,
            "this page's origin may not use the business's chat",
        ));
    }
    Ok((Arc::new(client), origin))
}

/// Lets the page at `origin` read the answer.
fn cors(headers: &mut HeaderMap, origin: HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
}

/// A CORS preflight: the methods and headers the chat takes. Which origins may use a business
/// is decided on the request itself (a preflight carries no key when it is in the header).
async fn preflight(headers: HeaderMap) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    if let Some(origin) = headers.get(header::ORIGIN).cloned() {
        let h = r.headers_mut();
        cors(h, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("content-type, x-warmline-chat-key"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
    }
    r
}

/// Checks and admits one message; the inbound to answer.
async fn take(
    state: &AppState,
    headers: &HeaderMap,
    key: Option<&str>,
    session: Option<&Value>,
    lead: Option<&Value>,
    channel: Option<&str>,
    text: Option<&str>,
) -> Result<(Inbound, super::agent::Admitted, Option<HeaderValue>, Value), ChatError> {
    let (client, origin) = business(state, headers, key).await?;
    let with_origin = |mut e: ChatError| {
        e.origin = origin.clone();
        e
    };
    let (identity, lead) = identity(session, lead).map_err(with_origin)?;
    let text = text.unwrap_or_default();
    let agent = &state.text;
    let admitted = agent
        .admit(client.id(), &identity, text)
        .map_err(|r| with_origin(r.into()))?;
    let channel = channel_of(channel);
    let to = channel.as_str().to_string();
    Ok((
        Inbound {
            client,
            channel,
            identity,
            to,
            text: text.trim().to_string(),
        },
        admitted,
        origin,
        lead,
    ))
}

/// `POST /api/chat/send`.
async fn send(
    State(state): State<AppState>,
    Query(q): Query<KeyQuery>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ChatError> {
    let body: SendBody = serde_json::from_slice(&body).map_err(|e| {
        ChatError::new(
            StatusCode::BAD_REQUEST,
            format!("the body must be JSON {{\"sessionId\", \"text\"}}: {e}"),
        )
    })?;
    let key = q.client.as_deref().or(body.client.as_deref());
    let (inbound, admitted, origin, lead) = take(
        &state,
        &headers,
        key,
        body.session_id.as_ref(),
        body.lead_id.as_ref(),
        body.channel.as_deref(),
        body.text.as_deref(),
    )
    .await?;
    // The answer is made in its own task: a page that goes away does not lose the exchange.
    let agent = state.text.clone();
    let task = state
        .tasks
        .spawn(async move { agent.answer(inbound, admitted, None).await });
    let answer = task.await.map_err(|e| {
        tracing::error!(error = %e, "web chat: the answer's task failed");
        ChatError::new(StatusCode::INTERNAL_SERVER_ERROR, "the answer failed")
    })?;
    let mut r = Json(json!({
        "ok": true,
        "conversation_id": answer.conversation_id,
        "text": answer.text,
        "leadId": lead,
    }))
    .into_response();
    if let Some(o) = origin {
        cors(r.headers_mut(), o);
    }
    Ok(r)
}

/// The JSON of one event.
fn event_json(p: &Progress) -> Value {
    match p {
        Progress::Delta(d) => json!({"type": "agent_chunk", "text": d}),
        Progress::ToolCall { name, arguments } => {
            json!({"type": "tool_call", "name": name, "arguments": arguments})
        }
        Progress::ToolResult { name, output } => {
            json!({"type": "tool_result", "name": name, "output": output})
        }
    }
}

/// The last event of an answer.
fn end_json(a: &Answer, thread_id: Option<&str>) -> Value {
    let mut v = json!({"type": "agent_end", "text": a.text,
        "conversation_id": a.conversation_id, "done": true});
    if let Some(t) = thread_id {
        v["thread_id"] = json!(t);
    }
    v
}

/// Runs the answer in its own task; its events, the end last.
fn answer_events(
    state: &AppState,
    inbound: Inbound,
    admitted: super::agent::Admitted,
    thread_id: Option<String>,
) -> impl Stream<Item = Value> + Send + 'static {
    let (tx, rx) = mpsc::unbounded_channel();
    let agent: Arc<TextAgent> = state.text.clone();
    let task = state
        .tasks
        .spawn(async move { agent.answer(inbound, admitted, Some(tx)).await });
    futures_util::stream::unfold((rx, Some(task)), move |(mut rx, task)| {
        let thread_id = thread_id.clone();
        async move {
            if let Some(p) = rx.recv().await {
                return Some((event_json(&p), (rx, task)));
            }
            // Every progress sender is gone: the answer is made.
            let end = match task?.await {
                Ok(answer) => end_json(&answer, thread_id.as_deref()),
                Err(e) => {
                    tracing::error!(error = %e, "web chat: the answer's task failed");
                    json!({"type": "error", "error": "the answer failed", "done": true})
                }
            };
            Some((end, (rx, None)))
        }
    })
}

/// `GET /api/chat/stream`.
async fn stream(
    State(state): State<AppState>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<Response, ChatError> {
    let session = q.session_id.map(Value::String);
    let lead = q.lead_id.map(Value::String);
    let (inbound, admitted, origin, _) = take(
        &state,
        &headers,
        q.client.as_deref(),
        session.as_ref(),
        lead.as_ref(),
        q.channel.as_deref(),
        q.text.as_deref(),
    )
    .await?;
    let events = answer_events(&state, inbound, admitted, None)
        .map(|v| Ok::<_, Infallible>(SseEvent::default().data(v.to_string())));
    let mut r = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies (nginx) must pass each event on as it comes.
    r.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Some(o) = origin {
        cors(r.headers_mut(), o);
    }
    Ok(r)
}

/// `GET /api/chat/ws`: the business and origin are checked at the upgrade.
async fn socket(
    State(state): State<AppState>,
    Query(q): Query<KeyQuery>,
    method: Method,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, ChatError> {
    debug_assert_eq!(method, Method::GET);
    let (client, _) = business(&state, &headers, q.client.as_deref()).await?;
    Ok(ws
        .max_message_size(BODY_MAX)
        .max_frame_size(BODY_MAX)
        .on_upgrade(move |socket| serve_socket(state, client, socket)))
}

/// One input of the socket.
#[derive(Debug, Deserialize)]
struct UserInput {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thread_id: Option<Value>,
}

async fn serve_socket(state: AppState, client: Arc<clients::ClientProfile>, mut socket: WebSocket) {
    // A socket that names no thread is one thread of its own.
    let own_thread = {
        let mut b = [0u8; 12];
        rand::fill(&mut b);
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    };
    let shutdown = state.shutdown.clone();
    loop {
        let msg = tokio::select! {
            m = socket.recv() => m,
            _ = shutdown.cancelled() => None,
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => continue,
        };
        let error = |m: &str| json!({"type": "error", "error": m, "done": true});
        let input: UserInput = match serde_json::from_str(text.as_str()) {
            Ok(i) => i,
            Err(e) => {
                let m = format!("expected {{\"type\": \"user_input\", \"text\"}}: {e}");
                if send_json(&mut socket, &error(&m)).await.is_err() {
                    break;
                }
                continue;
            }
        };
        if input.kind != "user_input" {
            if send_json(&mut socket, &error("unknown message type"))
                .await
                .is_err()
            {
                break;
            }
            continue;
        }
        let thread = match &input.thread_id {
            Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
            Some(Value::Number(n)) => n.to_string(),
            _ => own_thread.clone(),
        };
        let Ok((identity, _)) = identity(Some(&Value::String(thread.clone())), None) else {
            if send_json(&mut socket, &error("thread_id must be 1 to 128 characters"))
                .await
                .is_err()
            {
                break;
            }
            continue;
        };
        let text = input.text.unwrap_or_default();
        let admitted = match state.text.admit(client.id(), &identity, &text) {
            Ok(a) => a,
            Err(r) => {
                let e: ChatError = r.into();
                if send_json(&mut socket, &error(&e.message)).await.is_err() {
                    break;
                }
                continue;
            }
        };
        let inbound = Inbound {
            client: client.clone(),
            channel: Channel::Webchat,
            identity,
            to: Channel::Webchat.as_str().to_string(),
            text: text.trim().to_string(),
        };
        let mut events = Box::pin(answer_events(&state, inbound, admitted, Some(thread)));
        while let Some(v) = events.next().await {
            // A peer gone mid-answer: the answer still completes and is recorded.
            if send_json(&mut socket, &v).await.is_err() {
                return;
            }
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}

async fn send_json(socket: &mut WebSocket, v: &Value) -> Result<(), axum::Error> {
    socket.send(Message::Text(v.to_string().into())).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_follow_the_lead_then_the_session() {
        let s = json!("abc-123");
        assert_eq!(identity(Some(&s), None).unwrap().0, "web:abc-123");
        assert_eq!(
            identity(Some(&s), Some(&json!(9041))).unwrap(),
            ("kommo:lead:9041".to_string(), json!(9041))
        );
        assert_eq!(
            identity(Some(&s), Some(&json!("77"))).unwrap().0,
            "kommo:lead:77"
        );
        assert_eq!(
            identity(Some(&s), Some(&json!(""))).unwrap().0,
            "web:abc-123"
        );
        assert_eq!(identity(Some(&json!(42)), None).unwrap().0, "web:42");
        for bad in [
            json!(""),
            json!("a\nb"),
            json!("x".repeat(129)),
            json!(null),
        ] {
            assert!(identity(Some(&bad), None).is_err(), "{bad}");
        }
        assert!(identity(Some(&s), Some(&json!("12ab"))).is_err());
        assert!(identity(Some(&s), Some(&json!(-3))).is_err());
    }

    #[test]
    fn pages_name_text_channels_only() {
        assert_eq!(channel_of(None), Channel::Webchat);
        assert_eq!(channel_of(Some("voice")), Channel::Webchat);
        assert_eq!(channel_of(Some("kommo")), Channel::Kommo);
        assert_eq!(channel_of(Some("telepathy")), Channel::Webchat);
    }

    #[test]
    fn events_carry_their_type_and_the_end_is_done() {
        assert_eq!(
            event_json(&Progress::Delta("Hi".into())),
            json!({"type": "agent_chunk", "text": "Hi"})
        );
        let end = end_json(
            &Answer {
                exchange_id: "TX1".into(),
                conversation_id: "conv_1".into(),
                text: "Hello.".into(),
                failure: None,
            },
            Some("t1"),
        );
        assert_eq!(end["type"], "agent_end");
        assert_eq!(end["done"], true);
        assert_eq!(end["text"], "Hello.");
        assert_eq!(end["thread_id"], "t1");
    }
}
