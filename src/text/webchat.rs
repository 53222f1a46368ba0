//! The web chat (README "Text channels", "Web chat"): a business's site talks to its agent.
//!
//! - `POST /api/chat/send` `{"sessionId", "text", "leadId"?, "channel"?}` →
//!   `{"ok": true, "conversation_id", "text", "leadId"}`;
//! - `GET /api/chat/stream?sessionId=…&text=…[&leadId=…]`: Server-Sent Events, each one unnamed
//!   `data:` line of JSON with a `type`: `agent_chunk` (`text`: a delta), `tool_call` (`name`,
//!   never the arguments), `tool_result` (`name`, `ok`: never the output), and last `agent_end`
//!   (the whole `text`, `conversation_id`, `fallback`: true when the answer failed and `text` is
//!   the fallback line) with `done: true`. Unnamed, so `EventSource.onmessage` sees every event
//!   (a named `event:` line never reaches it); the page closes the source on `done`, or the
//!   browser would reconnect and send the message again;
//! - `GET /api/chat/ws`: a WebSocket; in `{"type": "user_input", "text", "thread_id"?}`, out the
//!   same events as the stream (the last of each answer with `done: true`), and `{"type":
//!   "error", "error"}` for a message refused.
//!
//! - `GET /chat/widget.js`: the embeddable widget (`src/text/widget.js`), which uses the stream.
//!
//! The business is named by its public chat key (`client` query parameter or
//! `X-Warmline-Chat-Key`); a page's `Origin` must be one of the client's `chat_origins` when it
//! lists any (CORS answers name only that origin). The person is `web:{sessionId}`, or
//! `kommo:lead:{leadId}` when a lead id comes with its `leadToken` (a Kommo lead chatting on the
//! site).
//!
//! Refusals come before anything reaches the model: bad JSON or fields (400), an unknown key
//! (401), a foreign origin (403), a message too long (413), the person over
//! `text.messages_per_minute` (429 with `Retry-After`), the client at
//! `text.concurrent_per_client` (503), a person with a message answered and another waiting
//! (429). A `leadId` makes the person the lead only with a `leadToken` proving it (made by the
//! business's server, `crate::text::kommo::lead_token`; a wrong one is 403); without one the
//! lead id is only echoed back. Every error body is `{"ok": false, "error"}`.

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
/// A chat socket that sends nothing this long is closed.
const SOCKET_IDLE: Duration = Duration::from_secs(600);

/// The web chat's routes (public: a site's pages call them). Their time limit is
/// `text.timeout_secs` (the agent's own), not `server.request_timeout_secs`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/chat/send", post(send).options(preflight))
        .route("/api/chat/stream", get(stream).options(preflight))
        .route("/api/chat/ws", get(socket))
        .route("/chat/widget.js", get(widget))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_MAX))
}

/// The embeddable widget's script (`src/text/widget.js`, served as it is).
const WIDGET: &str = include_str!("widget.js");

/// `GET /chat/widget.js`.
async fn widget() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        WIDGET,
    )
        .into_response()
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
            Refusal::Waiting => Self {
                retry_after: Some(Duration::from_secs(1)),
                ..Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "wait for the answer to your previous message",
                )
            },
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
    /// Proof from the business's server that this page may write as the lead.
    #[serde(default)]
    lead_token: Option<String>,
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
    lead_token: Option<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    client: Option<String>,
}

/// Who a request says is writing: its session id, and the Kommo lead it names (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Who {
    /// The checked session id, if one was given.
    session: Option<String>,
    /// The lead id, if one was given.
    lead: Option<u64>,
}

/// Reads a session id and a lead id (either may be absent here).
fn who(session: Option<&Value>, lead: Option<&Value>) -> Result<Who, ChatError> {
    let lead = match lead {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n > 0) => n.as_u64(),
        Some(Value::String(s)) if s.len() <= 20 && s.trim().bytes().all(|b| b.is_ascii_digit()) => {
            match s.trim().parse::<u64>() {
                Ok(n) if n > 0 => Some(n),
                _ => return Err(bad_lead()),
            }
        }
        Some(_) => return Err(bad_lead()),
    };
    let session = match session {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.trim().to_string()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => Some(String::new()),
    };
    if let Some(s) = &session
        && (s.is_empty() || s.chars().count() > SESSION_MAX || s.chars().any(char::is_control))
    {
        return Err(bad_session());
    }
    Ok(Who { session, lead })
}

fn bad_lead() -> ChatError {
    ChatError::new(
        StatusCode::BAD_REQUEST,
        "leadId must be a Kommo lead id (digits)",
    )
}

fn bad_session() -> ChatError {
    ChatError::new(
        StatusCode::BAD_REQUEST,
        format!("sessionId must be 1 to {SESSION_MAX} characters"),
    )
}

/// The person: the lead when the request proves it may write as the lead (`leadToken`, made by
/// the business's own server from its Kommo webhook secret: `crate::text::kommo::lead_token`),
/// else the session. A lead id without a token is only echoed back; a wrong token is refused.
fn identity(
    who: &Who,
    lead_token: Option<&str>,
    client: &clients::ClientProfile,
) -> Result<String, ChatError> {
    if let (Some(lead), Some(token)) = (who.lead, lead_token.filter(|t| !t.is_empty())) {
        let kommo = crate::text::kommo::KommoConfig::from_stored(
            client.client.kommo.as_ref().map(|k| k.expose()),
        );
        if kommo.is_some_and(|k| k.lead_token_matches(lead, token)) {
            return Ok(format!("kommo:lead:{lead}"));
        }
        return Err(ChatError::new(
            StatusCode::FORBIDDEN,
            "leadToken does not match the leadId",
        ));
    }
    match &who.session {
        Some(s) => Ok(format!("web:{s}")),
        None => Err(bad_session()),
    }
}

/// The channel a page names: `kommo` (a Kommo chat widget on the site), else `webchat` (a page
/// cannot claim to be WhatsApp, SMS or a call).
fn channel_of(raw: Option<&str>) -> Channel {
    match raw.and_then(Channel::parse) {
        Some(Channel::Kommo) => Channel::Kommo,
        _ => Channel::Webchat,
    }
}

/// The business named by the chat key, checked against the page's origin.
async fn business(
    state: &AppState,
    headers: &HeaderMap,
    key: Option<&str>,
) -> Result<Business, ChatError> {
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
    let allowed = client.chat_origins();
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
    // A browser sends no Origin on a plain GET (a link, an image): with origins listed, a
    // browser's request must say where it comes from.
    if origin.is_none() && !allowed.is_empty() && headers.contains_key("sec-fetch-site") {
        return Err(ChatError::new(
            StatusCode::FORBIDDEN,
            "the chat is used from the business's own pages only",
        ));
    }
    Ok(Business {
        client: Arc::new(client),
        origin,
    })
}

/// The business a request names, and where the request comes from.
struct Business {
    client: Arc<clients::ClientProfile>,
    /// The page's `Origin` (checked against the business's list).
    origin: Option<HeaderValue>,
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

/// What a request asks, as its route read it.
struct Asked<'a> {
    key: Option<&'a str>,
    session: Option<&'a Value>,
    lead: Option<&'a Value>,
    lead_token: Option<&'a str>,
    channel: Option<&'a str>,
    text: Option<&'a str>,
}

/// Checks and admits one message; the inbound to answer.
async fn take(
    state: &AppState,
    headers: &HeaderMap,
    asked: Asked<'_>,
) -> Result<(Inbound, super::agent::Admitted, Option<HeaderValue>, Value), ChatError> {
    let Asked {
        key,
        session,
        lead,
        lead_token,
        channel,
        text,
    } = asked;
    let Business { client, origin } = business(state, headers, key).await?;
    let with_origin = |mut e: ChatError| {
        e.origin = origin.clone();
        e
    };
    let who = who(session, lead).map_err(with_origin)?;
    let identity = identity(&who, lead_token, &client).map_err(with_origin)?;
    let lead = who.lead.map_or(Value::Null, |l| json!(l));
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
            background: false,
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
        Asked {
            key,
            session: body.session_id.as_ref(),
            lead: body.lead_id.as_ref(),
            lead_token: body.lead_token.as_deref(),
            channel: body.channel.as_deref(),
            text: body.text.as_deref(),
        },
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

/// One event's JSON text, written without a JSON tree (a delta is most of them). A page learns
/// which tool runs and whether it worked, never its arguments or output (an operator's tool may
/// return what the agent is not to recite).
fn event_text(p: &Progress) -> String {
    #[derive(serde::Serialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum PageEvent<'a> {
        AgentChunk { text: &'a str },
        ToolCall { name: &'a str },
        ToolResult { name: &'a str, ok: bool },
    }
    let event = match p {
        Progress::Delta(text, _) => PageEvent::AgentChunk { text },
        Progress::ToolCall { name } => PageEvent::ToolCall { name },
        Progress::ToolResult { name, ok } => PageEvent::ToolResult { name, ok: *ok },
    };
    serde_json::to_string(&event).unwrap_or_default()
}

/// The last event of an answer.
fn end_json(a: &Answer, thread_id: Option<&str>) -> Value {
    let mut v = json!({"type": "agent_end", "text": a.text,
        "conversation_id": a.conversation_id, "fallback": a.failure.is_some(), "done": true});
    if let Some(t) = thread_id {
        v["thread_id"] = json!(t);
    }
    v
}

/// Runs the answer in its own task; its events' JSON texts, the end last.
fn answer_events(
    state: &AppState,
    inbound: Inbound,
    admitted: super::agent::Admitted,
    thread_id: Option<String>,
) -> impl Stream<Item = String> + Send + 'static {
    let (tx, rx) = mpsc::unbounded_channel();
    let agent: Arc<TextAgent> = state.text.clone();
    let delay = state.metrics.text_delta_delay.clone();
    let task = state
        .tasks
        .spawn(async move { agent.answer(inbound, admitted, Some(tx)).await });
    // The state carries what every event needs, moved along rather than copied per event.
    let state = (rx, Some(task), thread_id, delay);
    futures_util::stream::unfold(state, |(mut rx, task, thread_id, delay)| async move {
        if let Some(p) = rx.recv().await {
            let event = event_text(&p);
            if let Progress::Delta(_, at) = p {
                delay.observe(at.elapsed().as_secs_f64());
            }
            return Some((event, (rx, task, thread_id, delay)));
        }
        // Every progress sender is gone: the answer is made.
        let end = match task?.await {
            Ok(answer) => end_json(&answer, thread_id.as_deref()).to_string(),
            Err(e) => {
                tracing::error!(error = %e, "web chat: the answer's task failed");
                json!({"type": "error", "error": "the answer failed", "done": true}).to_string()
            }
        };
        Some((end, (rx, None, thread_id, delay)))
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
        Asked {
            key: q.client.as_deref(),
            session: session.as_ref(),
            lead: lead.as_ref(),
            lead_token: q.lead_token.as_deref(),
            channel: q.channel.as_deref(),
            text: q.text.as_deref(),
        },
    )
    .await?;
    let events = answer_events(&state, inbound, admitted, None)
        .map(|text| Ok::<_, Infallible>(SseEvent::default().data(text)));
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
    let client = business(&state, &headers, q.client.as_deref())
        .await?
        .client;
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
            m = tokio::time::timeout(SOCKET_IDLE, socket.recv()) => m.ok().flatten(),
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
        let Ok(identity) = who(Some(&Value::String(thread.clone())), None)
            .and_then(|w| identity(&w, None, &client))
        else {
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
            background: false,
        };
        let mut events = Box::pin(answer_events(&state, inbound, admitted, Some(thread)));
        while let Some(text) = events.next().await {
            // A peer gone mid-answer: the answer still completes and is recorded.
            if socket.send(Message::Text(text.into())).await.is_err() {
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
    fn a_request_names_its_session_and_lead() {
        let s = json!("abc-123");
        assert_eq!(
            who(Some(&s), None).unwrap(),
            Who {
                session: Some("abc-123".into()),
                lead: None
            }
        );
        assert_eq!(who(Some(&s), Some(&json!(9041))).unwrap().lead, Some(9041));
        assert_eq!(who(Some(&s), Some(&json!("77"))).unwrap().lead, Some(77));
        assert_eq!(who(Some(&s), Some(&json!(""))).unwrap().lead, None);
        assert_eq!(
            who(Some(&json!(42)), None).unwrap().session.as_deref(),
            Some("42")
        );
        assert_eq!(who(None, Some(&json!(5))).unwrap().session, None);
        for bad in [json!(""), json!("a\nb"), json!("x".repeat(129)), json!([1])] {
            assert!(who(Some(&bad), None).is_err(), "{bad}");
        }
        for bad in [json!("12ab"), json!(-3), json!(0), json!("0"), json!(1.5)] {
            assert!(who(Some(&s), Some(&bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn pages_name_text_channels_only() {
        assert_eq!(channel_of(None), Channel::Webchat);
        assert_eq!(channel_of(Some("voice")), Channel::Webchat);
        assert_eq!(channel_of(Some("kommo")), Channel::Kommo);
        assert_eq!(channel_of(Some("whatsapp")), Channel::Webchat);
        assert_eq!(channel_of(Some("telepathy")), Channel::Webchat);
    }

    #[test]
    fn events_carry_their_type_and_the_end_is_done() {
        let at = super::super::agent::ReadAt::now();
        for text in ["Hi", "say \"hi\"\n\u{e9}</script>"] {
            let event = event_text(&Progress::Delta(text.into(), at));
            assert_eq!(
                serde_json::from_str::<Value>(&event).unwrap(),
                json!({"type": "agent_chunk", "text": text})
            );
        }
        let tool = Progress::ToolResult {
            name: "business_hours".into(),
            ok: true,
        };
        assert_eq!(
            serde_json::from_str::<Value>(&event_text(&tool)).unwrap(),
            json!({"type": "tool_result", "name": "business_hours", "ok": true})
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
