//! The chat side of the fake Responses endpoint ([`crate::responses::FakeResponses`]): what a
//! text channel's agent sends (a conversation, function tools, streaming), answered the way the
//! real API answers, for warmline's text channels.
//!
//! The wire, as the OpenAI Python SDK types it (openai/openai-python, `src/openai/types/`):
//! - `POST /v1/conversations` `{metadata?, items?}` → a `conversation` object
//!   (`{id, object: "conversation", created_at, metadata}`; `conversations/conversation.py`).
//! - `POST /v1/responses` with `conversation` (an id, or `{id}`), `input` (a string, or a list
//!   of messages and `function_call_output` items `{type, call_id, output}`), `tools`
//!   (`[{type: "function", name, description?, parameters, strict?}]`) and `stream`. Items of the
//!   conversation come before the input; the input and the output are added to it once the
//!   response completes (`responses/response_create_params.py`, `conversation`).
//! - With `stream: true` the answer is Server-Sent Events, each an `event:` line naming the type
//!   and a `data:` line of JSON with the same `type` and a `sequence_number` counting from 0:
//!   `response.created`, `response.in_progress`, then per output item
//!   `response.output_item.added`, for a message `response.content_part.added`,
//!   `response.output_text.delta` (`item_id`, `output_index`, `content_index`, `delta`,
//!   `logprobs`) …, `response.output_text.done` (`text`), `response.content_part.done`, for a
//!   function call `response.function_call_arguments.delta` / `.done` (`item_id`,
//!   `output_index`, `arguments`, and `name` on `.done`), `response.output_item.done`, and last
//!   `response.completed` with the whole `response` (`responses/response_stream_event.py` and the
//!   event modules it unions). There is no `[DONE]` line.
//!
//! With `background: true` (and no stream) the answer is the response `queued`; it completes a
//! moment later (`GET /v1/responses/{id}` then gives it `completed`), and when a webhook is set
//! ([`crate::responses::FakeResponses::webhook_to`]) a `response.completed` event
//! (`{id, object: "event", created_at, type, data: {id}}`, `openai/types/webhooks/
//! response_completed_webhook_event.py`) is posted, signed Standard Webhooks style.
//! `store: false` with `background` is refused.
//!
//! `POST /v1/conversations/{id}/items` adds items to a conversation, `DELETE /v1/conversations/{id}`
//! deletes it (`conversation.deleted`). A turn on a conversation holding a function call without
//! its `function_call_output` is refused (400 "No tool output found for function call …"), as the
//! API refuses it. So is a turn on a conversation another response is in progress on (a paced
//! stream not yet ended, a background response not yet done): 400, code `conversation_locked`,
//! param `conversation`, [`CONVERSATION_LOCKED`].
//!
//! The model is deterministic: it answers a user message with `Noted: <the message>.` (so a
//! test sees which message it answered), unless a tool call was scripted
//! ([`crate::responses::FakeResponses::script_tool`]): then it calls that function, and after the
//! function's output comes back it answers `Done: <the output>.`. A conversation's items are kept
//! ([`crate::responses::FakeResponses::conversation_items`]).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, atomic::AtomicUsize, atomic::Ordering},
};

use axum::{
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

/// A function call the model makes at its next turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptedCall {
    /// The function.
    pub name: String,
    /// Its arguments (JSON text).
    pub arguments: String,
}

/// What the chat side keeps.
#[derive(Default)]
pub(crate) struct ChatState {
    pub(crate) conversations: Mutex<HashMap<String, Vec<Value>>>,
    pub(crate) scripted: Mutex<std::collections::VecDeque<ScriptedCall>>,
    ids: AtomicUsize,
    /// Streamed answers paced: (the time between deltas, how many), for the load generator.
    pub(crate) pacing: Mutex<Option<(std::time::Duration, usize)>>,
    /// Conversations a response is in progress on (a paced stream not yet ended, a background
    /// response not yet done): another turn on one is refused, `conversation_locked`.
    operating: Arc<Mutex<HashSet<String>>>,
}

/// What OpenAI answers (400, `conversation_locked`, param `conversation`) to a turn on a
/// conversation another response is in progress on, as a public report of the error quotes it
/// (github.com/paulgmiller/careme/issues/379, 2026-03).
pub const CONVERSATION_LOCKED: &str =
    "Another process is currently operating on this conversation. Please retry in a few seconds.";

/// A response in progress on a conversation: the conversation takes no other turn until this
/// is dropped (its stream ended or was dropped, or its background response done).
pub(crate) struct Operating {
    set: Arc<Mutex<HashSet<String>>>,
    id: String,
}

impl Drop for Operating {
    fn drop(&mut self) {
        crate::responses::lock(&self.set).remove(&self.id);
    }
}

impl ChatState {
    /// Marks a response in progress on conversation `id`, or refuses if one is already.
    fn operate(&self, id: &str) -> Result<Operating, Problem> {
        if !crate::responses::lock(&self.operating).insert(id.to_string()) {
            return Err(Problem {
                status: StatusCode::BAD_REQUEST,
                param: "conversation".into(),
                code: Some("conversation_locked"),
                message: CONVERSATION_LOCKED.into(),
            });
        }
        Ok(Operating {
            set: self.operating.clone(),
            id: id.to_string(),
        })
    }

    fn next_id(&self, prefix: &str) -> String {
        format!(
            "{prefix}_fake{:04}",
            self.ids.fetch_add(1, Ordering::SeqCst)
        )
    }

    /// `POST /v1/conversations`.
    pub(crate) fn create_conversation(&self, body: &Value) -> Result<Value, (String, String)> {
        let items = match body.get("items") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) if items.len() <= 20 => items.clone(),
            Some(_) => {
                return Err((
                    "items".into(),
                    "Invalid 'items': at most 20 items at a time.".into(),
                ));
            }
        };
        if let Some(m) = body.get("metadata")
            && !m.is_null()
            && !m.as_object().is_some_and(|o| {
                o.len() <= 16
                    && o.iter()
                        .all(|(k, v)| k.len() <= 64 && v.as_str().is_some_and(|s| s.len() <= 512))
            })
        {
            return Err((
                "metadata".into(),
                "Invalid 'metadata': at most 16 string values, keys up to 64 and values up to 512 characters.".into(),
            ));
        }
        let id = self.next_id("conv");
        crate::responses::lock(&self.conversations).insert(id.clone(), items);
        Ok(json!({
            "id": id,
            "object": "conversation",
            "created_at": now_secs(),
            "metadata": body.get("metadata").cloned().unwrap_or_else(|| json!({})),
        }))
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Why a chat request is refused: answered `status` (400; 404 for an unknown conversation)
/// with an `invalid_request_error` naming `param`, and an error `code` where the API gives one.
#[derive(Debug)]
pub(crate) struct Problem {
    pub(crate) status: StatusCode,
    pub(crate) param: String,
    pub(crate) code: Option<&'static str>,
    pub(crate) message: String,
}

fn problem(param: &str, message: impl Into<String>) -> Problem {
    Problem {
        status: StatusCode::BAD_REQUEST,
        param: param.into(),
        code: None,
        message: message.into(),
    }
}

/// The input as a list of items (a string is one user message).
fn input_items(input: Option<&Value>) -> Result<Vec<Value>, Problem> {
    let items = match input {
        Some(Value::String(s)) if !s.trim().is_empty() => {
            vec![json!({"type": "message", "role": "user", "content": s})]
        }
        Some(Value::Array(items)) if !items.is_empty() => items.clone(),
        _ => {
            return Err(problem(
                "input",
                "Invalid 'input': expected a non-empty string or a list of items.",
            ));
        }
    };
    for item in &items {
        let kind = item
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("message");
        let ok = match kind {
            "message" => {
                matches!(
                    item.get("role").and_then(Value::as_str),
                    Some("user" | "system" | "developer" | "assistant")
                ) && match item.get("content") {
                    Some(Value::String(s)) => !s.is_empty(),
                    Some(Value::Array(parts)) => parts.iter().all(|p| {
                        matches!(
                            p.get("type").and_then(Value::as_str),
                            Some("input_text" | "output_text")
                        ) && p.get("text").is_some_and(Value::is_string)
                    }),
                    _ => false,
                }
            }
            "function_call_output" => {
                item.get("call_id")
                    .and_then(Value::as_str)
                    .is_some_and(|c| !c.is_empty())
                    && item.get("output").is_some_and(Value::is_string)
            }
            "function_call" => {
                item.get("call_id").is_some_and(Value::is_string)
                    && item.get("name").is_some_and(Value::is_string)
                    && item.get("arguments").is_some_and(Value::is_string)
            }
            _ => false,
        };
        if !ok {
            return Err(problem(
                "input",
                format!("Invalid input item of type '{kind}'."),
            ));
        }
    }
    Ok(items)
}

fn check_tools(tools: Option<&Value>) -> Result<Vec<String>, Problem> {
    let Some(tools) = tools.filter(|t| !t.is_null()) else {
        return Ok(Vec::new());
    };
    let Some(list) = tools.as_array() else {
        return Err(problem("tools", "Invalid 'tools': expected an array."));
    };
    let mut names = Vec::new();
    for (i, t) in list.iter().enumerate() {
        let name = t.get("name").and_then(Value::as_str).unwrap_or_default();
        let name_ok = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if t.get("type").and_then(Value::as_str) != Some("function")
            || !name_ok
            || !t.get("parameters").is_some_and(Value::is_object)
        {
            return Err(problem(
                &format!("tools[{i}]"),
                "Invalid tool: expected {type: 'function', name (a-z, A-Z, 0-9, _ or -, at most 64), parameters (an object)}.",
            ));
        }
        names.push(name.to_string());
    }
    Ok(names)
}

/// The text of the last user message of `items`.
fn last_user_text(items: &[Value]) -> Option<String> {
    items.iter().rev().find_map(|i| {
        if i.get("role").and_then(Value::as_str) != Some("user") {
            return None;
        }
        match i.get("content") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(parts)) => Some(
                parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            _ => None,
        }
    })
}

/// What the model outputs: one item.
enum Turn {
    Text(String),
    Call {
        call_id: String,
        name: String,
        arguments: String,
    },
}

/// The microseconds since the Unix epoch a paced delta carries: `t<16 digits> `.
pub fn stamp_now() -> String {
    let us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or_default();
    format!("t{us:016} ")
}

/// Reads a paced delta's stamp (microseconds since the Unix epoch).
pub fn read_stamp(delta: &str) -> Option<u64> {
    let digits = delta.strip_prefix('t')?.trim_end();
    (digits.len() == 16).then(|| digits.parse().ok()).flatten()
}

/// A streamed answer of `deltas` deltas, one every `interval`, each its send time
/// ([`stamp_now`]) written when it is sent: the load generator's measure of the delay the
/// gateway adds to a delta (both ends in its process, one clock). The answer's text is the
/// deltas joined; the conversation keeps the item as first built (its text is not known then).
fn paced(
    prelude: Vec<Value>,
    item_id: &str,
    item: Value,
    completed: Value,
    (interval, deltas): (std::time::Duration, usize),
    operating: Option<Operating>,
) -> Response {
    use futures_util::StreamExt;
    let mut added = item.clone();
    added["status"] = json!("in_progress");
    added["content"] = json!([]);
    let mut first = prelude;
    first.push(json!({"type": "response.output_item.added", "output_index": 0, "item": added}));
    first.push(
        json!({"type": "response.content_part.added", "item_id": item_id,
        "output_index": 0, "content_index": 0,
        "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}),
    );
    let frame = |n: usize, mut e: Value| {
        e["sequence_number"] = json!(n);
        let kind = e["type"].as_str().unwrap_or_default().to_string();
        axum::body::Bytes::from(format!("event: {kind}\ndata: {e}\n\n"))
    };
    let opening: Vec<_> = first
        .into_iter()
        .enumerate()
        .map(|(n, e)| frame(n, e))
        .collect();
    let seq = opening.len();
    let item_id = item_id.to_string();
    // Each delta is due at a fixed time: the first at a random point of the first interval
    // (answers begun a whole number of ticks apart would otherwise stay in step, their deltas
    // all due at once), each next one `interval` after the one before was due, not after it
    // went. Paced from when each was sent, the deltas a stall of this thread held back would
    // leave together and then stay together, a burst every interval for the rest of the
    // answer, which no model's independent streams make.
    let first_due = tokio::time::Instant::now() + interval.mul_f64(rand::random_range(0.0..1.0));
    // (deltas sent, text so far, the item, the response to complete and the conversation's
    // mark; None once done, the mark let go). The item and the response move through the
    // stream, never copied per delta: a thousand paced streams are the load generator's own
    // work, and what it spends delays what it measures.
    let body = futures_util::stream::iter(
        opening.into_iter().map(Ok::<_, std::convert::Infallible>),
    )
    .chain(futures_util::stream::unfold(
        (0usize, String::new(), Some((item_id, item, completed, operating))),
        move |(sent, mut text, rest)| {
            async move {
                let (item_id, mut item, mut completed, operating) = rest?;
                if sent < deltas {
                    tokio::time::sleep_until(first_due + interval * sent as u32).await;
                    let delta = stamp_now();
                    text.push_str(&delta);
                    // The event `frame` makes, written straight: a paced delta is the load
                    // generator's own hot path (its id and its stamp need no escaping).
                    let bytes = axum::body::Bytes::from(format!(
                        "event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\
                         \"item_id\":\"{item_id}\",\"output_index\":0,\"content_index\":0,\
                         \"delta\":\"{delta}\",\"logprobs\":[],\"sequence_number\":{}}}\n\n",
                        seq + sent
                    ));
                    let rest = Some((item_id, item, completed, operating));
                    return Some((Ok(bytes), (sent + 1, text, rest)));
                }
                // Done before its last events go: the turn after it is never refused.
                drop(operating);
                let part =
                    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
                item["content"] = json!([part]);
                completed["output"] = json!([item]);
                let n = seq + sent;
                let tail = [
                    json!({"type": "response.output_text.done", "item_id": item_id,
                            "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
                    json!({"type": "response.content_part.done", "item_id": item_id,
                            "output_index": 0, "content_index": 0, "part": part}),
                    json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
                    json!({"type": "response.completed", "response": completed}),
                ];
                let mut bytes = Vec::new();
                for (i, e) in tail.into_iter().enumerate() {
                    bytes.extend_from_slice(&frame(n + i, e));
                }
                Some((Ok(axum::body::Bytes::from(bytes)), (sent, text, None)))
            }
        },
    ));
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

/// Answers a chat request (the caller has checked the key and parsed the JSON): a response
/// object, or a stream of its events.
/// A chat turn's answer.
pub(crate) enum Answered {
    /// Sent as it is (a response object, or its stream).
    Now(Response),
    /// A background response: `queued` is answered now; `done` is what `GET /v1/responses/{id}`
    /// gives once it completes.
    Background {
        /// Its id.
        id: String,
        /// The response as queued.
        queued: Value,
        /// The response completed.
        done: Value,
        /// Its conversation's mark, let go once it is done.
        operating: Option<Operating>,
    },
}

pub(crate) fn respond(state: &ChatState, request: &Value) -> Result<Answered, Problem> {
    let background = request.get("background") == Some(&Value::Bool(true));
    if background && request.get("store") == Some(&Value::Bool(false)) {
        return Err(problem(
            "background",
            "Background mode requires 'store' to be true.",
        ));
    }
    let input = input_items(request.get("input"))?;
    let tools = check_tools(request.get("tools"))?;
    let conversation = match request.get("conversation") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(id.clone()),
        Some(Value::Object(o)) => o.get("id").and_then(Value::as_str).map(str::to_string),
        Some(_) => return Err(problem("conversation", "Invalid 'conversation'.")),
    };
    if conversation.is_some()
        && request
            .get("previous_response_id")
            .is_some_and(|p| !p.is_null())
    {
        return Err(problem(
            "previous_response_id",
            "'previous_response_id' cannot be used in conjunction with 'conversation'.",
        ));
    }
    let mut history = match &conversation {
        Some(id) => crate::responses::lock(&state.conversations)
            .get(id)
            .cloned()
            .ok_or_else(|| Problem {
                status: StatusCode::NOT_FOUND,
                param: "conversation".into(),
                code: None,
                message: format!("Conversation with id '{id}' not found."),
            })?,
        None => Vec::new(),
    };
    // Held while the response is in progress: through a paced stream, until a background
    // response is done; an answer made at once lets it go as it returns.
    let operating = conversation
        .as_deref()
        .map(|id| state.operate(id))
        .transpose()?;
    history.extend(input.iter().cloned());
    // Every function call in the conversation needs its output before the model goes on (the
    // API refuses a turn after calls left unanswered: "No tool output found for function call").
    if let Some(call_id) = history.iter().find_map(|i| {
        let id = i.get("call_id").and_then(Value::as_str)?;
        let answered = history.iter().any(|o| {
            o.get("type").and_then(Value::as_str) == Some("function_call_output")
                && o.get("call_id").and_then(Value::as_str) == Some(id)
        });
        (i.get("type").and_then(Value::as_str) == Some("function_call") && !answered)
            .then(|| id.to_string())
    }) {
        return Err(problem(
            "input",
            format!("No tool output found for function call {call_id}."),
        ));
    }
    // A function's output just came back: the model answers with it. Else a scripted call, if
    // its tool is offered; else it notes the last user message.
    let output_back = input.iter().rev().find_map(|i| {
        (i.get("type").and_then(Value::as_str) == Some("function_call_output"))
            .then(|| i["output"].as_str().unwrap_or_default().to_string())
    });
    let turn = if let Some(out) = output_back {
        Turn::Text(format!("Done: {out}."))
    } else {
        let scripted = {
            let mut q = crate::responses::lock(&state.scripted);
            let offered = q.front().is_some_and(|c| tools.contains(&c.name));
            if offered { q.pop_front() } else { None }
        };
        match scripted {
            Some(c) => Turn::Call {
                call_id: state.next_id("call"),
                name: c.name,
                arguments: c.arguments,
            },
            None => Turn::Text(format!(
                "Noted: {}.",
                last_user_text(&history).unwrap_or_default()
            )),
        }
    };
    let response_id = state.next_id("resp");
    let item_id = match &turn {
        Turn::Text(_) => state.next_id("msg"),
        Turn::Call { .. } => state.next_id("fc"),
    };
    let item = match &turn {
        Turn::Text(text) => json!({
            "id": item_id, "type": "message", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
        }),
        Turn::Call {
            call_id,
            name,
            arguments,
        } => json!({
            "id": item_id, "type": "function_call", "status": "completed",
            "call_id": call_id, "name": name, "arguments": arguments,
        }),
    };
    let response = |status: &str, output: Vec<Value>| {
        json!({
            "id": response_id,
            "object": "response",
            "created_at": now_secs(),
            "status": status,
            "error": null,
            "incomplete_details": null,
            "model": request["model"],
            "instructions": request.get("instructions"),
            "conversation": conversation.as_ref().map(|id| json!({"id": id})),
            "output": output,
            "tools": request.get("tools").cloned().unwrap_or_else(|| json!([])),
            "usage": {"input_tokens": 100, "output_tokens": 20, "total_tokens": 120},
        })
    };
    // The conversation gets the input and the output once the response completes.
    if let Some(id) = &conversation {
        let mut all = crate::responses::lock(&state.conversations);
        if let Some(items) = all.get_mut(id) {
            items.extend(input);
            items.push(item.clone());
        }
    }
    let stream = request.get("stream") == Some(&Value::Bool(true));
    if background && !stream {
        return Ok(Answered::Background {
            id: response_id.clone(),
            queued: response("queued", vec![]),
            done: response("completed", vec![item]),
            operating,
        });
    }
    if !stream {
        let body = response("completed", vec![item]).to_string();
        return Ok(Answered::Now(
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response(),
        ));
    }
    let mut events: Vec<Value> = vec![
        json!({"type": "response.created", "response": response("in_progress", vec![])}),
        json!({"type": "response.in_progress", "response": response("in_progress", vec![])}),
    ];
    let pacing = *crate::responses::lock(&state.pacing);
    if let (Some((interval, deltas)), Turn::Text(_)) = (pacing, &turn) {
        return Ok(Answered::Now(paced(
            events,
            &item_id,
            item.clone(),
            response("completed", vec![]),
            (interval, deltas),
            operating,
        )));
    }
    match &turn {
        Turn::Text(text) => {
            let mut added = item.clone();
            added["status"] = json!("in_progress");
            added["content"] = json!([]);
            events.push(
                json!({"type": "response.output_item.added", "output_index": 0, "item": added}),
            );
            events.push(
                json!({"type": "response.content_part.added", "item_id": item_id,
                "output_index": 0, "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}),
            );
            // Word by word, spaces kept: the deltas join to the text.
            let mut rest = text.as_str();
            while !rest.is_empty() {
                let cut = rest[1..].find(' ').map_or(rest.len(), |i| i + 1);
                events.push(
                    json!({"type": "response.output_text.delta", "item_id": item_id,
                    "output_index": 0, "content_index": 0, "delta": &rest[..cut], "logprobs": []}),
                );
                rest = &rest[cut..];
            }
            events.push(
                json!({"type": "response.output_text.done", "item_id": item_id,
                "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
            );
            events.push(
                json!({"type": "response.content_part.done", "item_id": item_id,
                "output_index": 0, "content_index": 0,
                "part": {"type": "output_text", "text": text, "annotations": [], "logprobs": []}}),
            );
        }
        Turn::Call {
            name, arguments, ..
        } => {
            let mut added = item.clone();
            added["status"] = json!("in_progress");
            added["arguments"] = json!("");
            events.push(
                json!({"type": "response.output_item.added", "output_index": 0, "item": added}),
            );
            events.push(
                json!({"type": "response.function_call_arguments.delta", "item_id": item_id,
                "output_index": 0, "delta": arguments}),
            );
            events.push(
                json!({"type": "response.function_call_arguments.done", "item_id": item_id,
                "output_index": 0, "name": name, "arguments": arguments}),
            );
        }
    }
    events.push(json!({"type": "response.output_item.done", "output_index": 0, "item": item}));
    events
        .push(json!({"type": "response.completed", "response": response("completed", vec![item])}));
    let mut body = String::new();
    for (n, mut e) in events.into_iter().enumerate() {
        e["sequence_number"] = json!(n);
        let kind = e["type"].as_str().unwrap_or_default().to_string();
        body.push_str(&format!("event: {kind}\ndata: {e}\n\n"));
    }
    Ok(Answered::Now(
        (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "text/event-stream; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            body,
        )
            .into_response(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(r: Answered) -> (StatusCode, String) {
        let Answered::Now(r) = r else {
            panic!("a background answer")
        };
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    fn events(sse: &str) -> Vec<Value> {
        sse.split("\n\n")
            .filter(|b| !b.trim().is_empty())
            .map(|block| {
                let mut lines = block.lines();
                let event = lines.next().unwrap().strip_prefix("event: ").unwrap();
                let data: Value =
                    serde_json::from_str(lines.next().unwrap().strip_prefix("data: ").unwrap())
                        .unwrap();
                assert_eq!(data["type"], event, "the event line names the data's type");
                data
            })
            .collect()
    }

    /// A stall of the fake's thread (here: its stream not polled for 250 ms) lets the deltas
    /// due meanwhile go together once, and the rest keep their times: paced from when each
    /// went, they would stay bunched for the rest of the answer (the load generator measured
    /// its own bursts so).
    #[tokio::test(start_paused = true)]
    async fn paced_deltas_keep_their_times_after_a_stall() {
        use futures_util::StreamExt;
        let interval = std::time::Duration::from_millis(100);
        let item = json!({"id": "msg_1", "type": "message", "role": "assistant"});
        let response = json!({"id": "resp_1", "object": "response"});
        let r = paced(vec![], "msg_1", item, response, (interval, 6), None);
        let mut body = r.into_body().into_data_stream();
        let mut deltas = Vec::new();
        let mut text = String::new();
        while let Some(chunk) = body.next().await {
            let chunk = String::from_utf8(chunk.unwrap().to_vec()).unwrap();
            text.push_str(&chunk);
            if chunk.contains("\"type\":\"response.output_text.delta\"") {
                deltas.push(tokio::time::Instant::now());
                if deltas.len() == 1 {
                    tokio::time::advance(std::time::Duration::from_millis(250)).await;
                }
            }
        }
        let since_first: Vec<u128> = deltas
            .iter()
            .map(|t| (*t - deltas[0]).as_millis())
            .collect();
        // Due at 100 and 200 ms: sent together when the stall ends; then 300, 400, 500.
        assert_eq!(since_first, [0, 250, 250, 300, 400, 500]);
        let ev = events(&text);
        assert_eq!(ev.last().unwrap()["type"], "response.completed");
        let done = ev
            .iter()
            .find(|e| e["type"] == "response.output_text.done")
            .unwrap();
        let joined: String = ev
            .iter()
            .filter(|e| e["type"] == "response.output_text.delta")
            .map(|e| e["delta"].as_str().unwrap())
            .collect();
        assert_eq!(done["text"], joined.as_str());
    }

    /// A conversation takes one response at a time: a turn while a paced answer streams on it
    /// is refused as OpenAI refuses it, and taken once that stream has ended; another
    /// conversation is not held up meanwhile.
    #[tokio::test]
    async fn a_conversation_busy_with_a_response_refuses_another_turn_until_it_ends() {
        use futures_util::StreamExt;
        let state = ChatState::default();
        *crate::responses::lock(&state.pacing) = Some((std::time::Duration::from_millis(1), 2));
        let conv = state.create_conversation(&json!({})).unwrap();
        let other = state.create_conversation(&json!({})).unwrap();
        let turn = |conv: &Value, text: &str| {
            respond(
                &state,
                &json!({"model": "m", "input": text, "stream": true, "conversation": conv["id"]}),
            )
        };
        let Ok(Answered::Now(first)) = turn(&conv, "one") else {
            panic!("the first turn is taken")
        };
        let Err(p) = turn(&conv, "two") else {
            panic!("a second turn while the first streams")
        };
        assert_eq!(
            (p.status, p.param.as_str(), p.code, p.message.as_str()),
            (
                StatusCode::BAD_REQUEST,
                "conversation",
                Some("conversation_locked"),
                CONVERSATION_LOCKED
            )
        );
        assert!(turn(&other, "elsewhere").is_ok(), "another conversation");
        let mut body = first.into_body().into_data_stream();
        while body.next().await.is_some() {}
        assert!(turn(&conv, "two").is_ok(), "taken once the first has ended");
        // A stream dropped unread (its client gone) lets the conversation go too.
        let Ok(Answered::Now(dropped)) = turn(&conv, "three") else {
            panic!("taken")
        };
        drop(dropped);
        assert!(turn(&conv, "four").is_ok());
    }

    #[tokio::test]
    async fn a_streamed_answer_is_the_sdks_event_sequence_and_its_deltas_join_to_the_text() {
        let state = ChatState::default();
        let conv = state
            .create_conversation(&json!({"metadata": {"identity": "web:s1"}}))
            .unwrap();
        assert_eq!(conv["object"], "conversation");
        let id = conv["id"].as_str().unwrap();
        let r = respond(
            &state,
            &json!({"model": "gpt-5-mini", "conversation": id, "stream": true,
                    "input": "Are you open on Saturday?"}),
        )
        .unwrap();
        let (status, body) = body_of(r).await;
        assert_eq!(status, StatusCode::OK);
        let ev = events(&body);
        let types: Vec<&str> = ev.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            types[..4],
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added"
            ]
        );
        assert_eq!(
            types[types.len() - 4..],
            [
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        let seq: Vec<u64> = ev
            .iter()
            .map(|e| e["sequence_number"].as_u64().unwrap())
            .collect();
        assert_eq!(seq, (0..ev.len() as u64).collect::<Vec<_>>());
        let joined: String = ev
            .iter()
            .filter(|e| e["type"] == "response.output_text.delta")
            .map(|e| e["delta"].as_str().unwrap())
            .collect();
        assert_eq!(joined, "Noted: Are you open on Saturday?.");
        assert!(
            types
                .iter()
                .filter(|t| **t == "response.output_text.delta")
                .count()
                > 3
        );
        let done = ev.last().unwrap();
        assert_eq!(done["response"]["status"], "completed");
        assert_eq!(done["response"]["output"][0]["content"][0]["text"], joined);
        // The conversation keeps the exchange.
        let items = crate::responses::lock(&state.conversations)[id].clone();
        assert_eq!(items.len(), 2);
        assert_eq!(items[1]["role"], "assistant");
    }

    #[tokio::test]
    async fn a_scripted_function_call_then_its_output_gives_the_answer() {
        let state = ChatState::default();
        crate::responses::lock(&state.scripted).push_back(ScriptedCall {
            name: "business_hours".into(),
            arguments: "{}".into(),
        });
        let tools = json!([{"type": "function", "name": "business_hours",
            "description": "Opening hours", "parameters": {"type": "object", "properties": {}}}]);
        let r = respond(
            &state,
            &json!({"model": "m", "stream": true, "tools": tools, "input": "When are you open?"}),
        )
        .unwrap();
        let ev = events(&body_of(r).await.1);
        let done = ev
            .iter()
            .find(|e| e["type"] == "response.function_call_arguments.done")
            .unwrap();
        assert_eq!(done["name"], "business_hours");
        let call = &ev.last().unwrap()["response"]["output"][0];
        assert_eq!(call["type"], "function_call");
        let call_id = call["call_id"].as_str().unwrap();
        // The output goes back (with the call, as a client without a conversation sends it).
        let r = respond(
            &state,
            &json!({"model": "m", "tools": tools, "input": [
                call,
                {"type": "function_call_output", "call_id": call_id, "output": "Mon-Fri 9-5"}]}),
        )
        .unwrap();
        let (_, body) = body_of(r).await;
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            answer["output"][0]["content"][0]["text"],
            "Done: Mon-Fri 9-5."
        );
    }

    #[tokio::test]
    async fn over_http_a_conversation_is_made_and_a_turn_streamed_with_the_key_checked() {
        let fake = crate::responses::FakeResponses::start().await.unwrap();
        let http = reqwest::Client::new();
        let base = fake.base_url();
        let refused = http
            .post(format!("{base}/conversations"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401);
        let conv: Value = serde_json::from_str(
            &http
                .post(format!("{base}/conversations"))
                .bearer_auth("sk-test")
                .body(r#"{"metadata":{"identity":"whatsapp:+14155550100"}}"#)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        )
        .unwrap();
        let id = conv["id"].as_str().unwrap().to_string();
        let resp = http
            .post(format!("{base}/responses"))
            .bearer_auth("sk-test")
            .body(
                json!({"model": "gpt-5-mini", "conversation": {"id": id}, "stream": true,
                       "instructions": "You are the receptionist.", "input": "Hi there"})
                .to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(
            resp.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        let ev = events(&resp.text().await.unwrap());
        assert_eq!(ev.last().unwrap()["type"], "response.completed");
        assert_eq!(fake.conversation_items(&id).unwrap().len(), 2);
        assert_eq!(fake.completions(), 1);
        // An unknown parameter is refused before anything else, as for the post-call job.
        let resp = http
            .post(format!("{base}/responses"))
            .bearer_auth("sk-test")
            .body(json!({"model": "m", "input": "x", "colour": "blue"}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
    }

    #[tokio::test]
    async fn bad_requests_are_refused_as_the_api_refuses_them() {
        let state = ChatState::default();
        let refused = |r: Result<Answered, Problem>| r.err().map(|p| (p.status, p.param));
        assert_eq!(
            refused(respond(&state, &json!({"model": "m", "input": ""}))),
            Some((StatusCode::BAD_REQUEST, "input".into()))
        );
        assert_eq!(
            refused(respond(
                &state,
                &json!({"model": "m", "input": "hi", "conversation": "conv_nope"})
            )),
            Some((StatusCode::NOT_FOUND, "conversation".into()))
        );
        assert_eq!(
            refused(respond(
                &state,
                &json!({"model": "m", "input": "hi",
                "tools": [{"type": "function", "name": "bad name", "parameters": {}}]})
            )),
            Some((StatusCode::BAD_REQUEST, "tools[0]".into()))
        );
        let conv = state.create_conversation(&json!({})).unwrap();
        assert_eq!(
            refused(respond(
                &state,
                &json!({"model": "m", "input": "hi",
                "conversation": conv["id"], "previous_response_id": "resp_1"})
            )),
            Some((StatusCode::BAD_REQUEST, "previous_response_id".into()))
        );
        // A scripted call waits until its tool is offered.
        crate::responses::lock(&state.scripted).push_back(ScriptedCall {
            name: "end_call".into(),
            arguments: "{}".into(),
        });
        let r = respond(&state, &json!({"model": "m", "input": "hello"})).unwrap();
        let answer: Value = serde_json::from_str(&body_of(r).await.1).unwrap();
        assert_eq!(answer["output"][0]["type"], "message");
        assert_eq!(crate::responses::lock(&state.scripted).len(), 1);
    }
}
