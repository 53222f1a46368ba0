//! Reading a streamed Responses API answer (`stream: true`): pure, fed the body's bytes as they
//! arrive, it yields what the text agent acts on.
//!
//! The wire (openai/openai-python, `src/openai/types/responses/response_stream_event.py` and the
//! event modules it unions): Server-Sent Events whose `data:` line is JSON with a `type`; an
//! `event:` line naming the same type may come before it and is not needed. There is no
//! `[DONE]` line: the stream ends after `response.completed`, `response.incomplete` or
//! `response.failed` (or an `error` event). What is read:
//! - `response.output_text.delta` → [`Event::Delta`] (`delta`);
//! - `response.output_item.done` with an item of `type: "function_call"` → [`Event::Call`]
//!   (`call_id`, `name`, `arguments` as JSON text);
//! - `response.completed` → [`Event::Completed`] (the response `id` and the text of its
//!   `message` items' `output_text` parts, joined);
//! - `response.incomplete` (`incomplete_details.reason`), `response.failed` (`error.message`)
//!   and `error` (`message`) → [`Event::Failed`].
//!
//! Everything else (`response.created`, content parts, argument deltas, …) is skipped. A line
//! longer than [`MAX_LINE`] or a `data:` line that is not JSON fails the stream: nothing the model
//! says is ever bigger, and a peer that sends it is not the API.

use serde_json::Value;

/// Longest line read (bytes).
pub const MAX_LINE: usize = 1 << 20;

/// What the agent acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// More of the answer's text.
    Delta(String),
    /// The model calls a function.
    Call {
        /// Its id, to send the output back with.
        call_id: String,
        /// The function.
        name: String,
        /// Its arguments (JSON text).
        arguments: String,
    },
    /// The answer is complete.
    Completed {
        /// The response's id.
        response_id: String,
        /// Its text (the `output_text` parts of its messages).
        text: String,
    },
    /// No answer: why, for the log (never shown to the person).
    Failed(String),
}

/// The reader: bytes in ([`Reader::feed`]), events out.
#[derive(Debug, Default)]
pub struct Reader {
    line: Vec<u8>,
    over: bool,
}

impl Reader {
    /// A reader at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the stream has ended (completed, failed or broken): anything after is ignored.
    pub fn is_over(&self) -> bool {
        self.over
    }

    /// Reads `bytes` (any split of the body); the events they complete, in order. A line whole in
    /// `bytes` is read where it lies; only a line split across reads is gathered.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Vec<Event> {
        let mut out = Vec::new();
        while !self.over && !bytes.is_empty() {
            let nl = bytes.iter().position(|&b| b == b'\n');
            let part = &bytes[..nl.unwrap_or(bytes.len())];
            if self.line.len() + part.len() > MAX_LINE {
                self.over = true;
                out.push(Event::Failed(format!(
                    "a stream line longer than {MAX_LINE} bytes"
                )));
                break;
            }
            let Some(nl) = nl else {
                self.line.extend_from_slice(part);
                break;
            };
            bytes = &bytes[nl + 1..];
            let event = if self.line.is_empty() {
                Self::line_event(part)
            } else {
                self.line.extend_from_slice(part);
                Self::line_event(&std::mem::take(&mut self.line))
            };
            if let Some(e) = event {
                self.over = matches!(e, Event::Completed { .. } | Event::Failed(_));
                out.push(e);
            }
        }
        out
    }

    fn line_event(line: &[u8]) -> Option<Event> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let data = line.strip_prefix(b"data:")?;
        let data = data.strip_prefix(b" ").unwrap_or(data);
        // Most lines are text deltas or events not needed: their type (and a delta's text) is
        // read without building the event as a JSON tree. Anything else, or a line this does
        // not read, is read whole below.
        if let Ok(head) = serde_json::from_slice::<Head>(data) {
            match &*head.kind {
                "response.output_text.delta" => {
                    return Some(Event::Delta(head.delta.unwrap_or_default()));
                }
                "response.output_item.done"
                | "response.completed"
                | "response.incomplete"
                | "response.failed"
                | "error" => {}
                _ => return None,
            }
        }
        let v: Value = match serde_json::from_slice(data) {
            Ok(v) => v,
            Err(e) => {
                return Some(Event::Failed(format!(
                    "a stream event that is not JSON: {e}"
                )));
            }
        };
        let text = |v: &Value, k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        match v.get("type").and_then(Value::as_str)? {
            "response.output_text.delta" => Some(Event::Delta(text(&v, "delta"))),
            "response.output_item.done"
                if v.pointer("/item/type").and_then(Value::as_str) == Some("function_call") =>
            {
                let item = &v["item"];
                Some(Event::Call {
                    call_id: text(item, "call_id"),
                    name: text(item, "name"),
                    arguments: text(item, "arguments"),
                })
            }
            "response.completed" => {
                let r = &v["response"];
                Some(Event::Completed {
                    response_id: text(r, "id"),
                    text: output_text(r),
                })
            }
            "response.incomplete" => Some(Event::Failed(format!(
                "incomplete: {}",
                v.pointer("/response/incomplete_details/reason")
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given")
            ))),
            "response.failed" => Some(Event::Failed(format!(
                "failed: {}",
                v.pointer("/response/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("no message given")
            ))),
            "error" => Some(Event::Failed(format!("error: {}", text(&v, "message")))),
            _ => None,
        }
    }
}

/// What is read of every event first: its type, and a text delta's text.
#[derive(serde::Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default)]
    delta: Option<String>,
}

/// The text of a response object's `message` items' `output_text` parts, joined.
fn output_text(response: &Value) -> String {
    response
        .get("output")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|i| i.get("type").and_then(Value::as_str) == Some("message"))
        .flat_map(|i| {
            i.get("content")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .filter(|p| p.get("type").and_then(Value::as_str) == Some("output_text"))
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect()
}

/// Where a background response stands (a `response` object, as `POST /responses` with
/// `background: true` and `GET /responses/{id}` answer it; `status` `queued`, `in_progress`,
/// `completed`, `failed`, `incomplete` or `cancelled`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Not done yet.
    Pending,
    /// Done: its function calls (`call_id`, `name`, `arguments`) and its text.
    Done {
        /// The calls, in order.
        calls: Vec<(String, String, String)>,
        /// The text of its messages.
        text: String,
    },
    /// No answer: why.
    Failed(String),
}

/// Reads a response object.
pub fn standing(response: &Value) -> Standing {
    let text = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    match response.get("status").and_then(Value::as_str) {
        Some("queued" | "in_progress") => Standing::Pending,
        Some("completed") => Standing::Done {
            calls: response
                .get("output")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|i| i.get("type").and_then(Value::as_str) == Some("function_call"))
                .map(|i| (text(i, "call_id"), text(i, "name"), text(i, "arguments")))
                .collect(),
            text: output_text(response),
        },
        Some("incomplete") => Standing::Failed(format!(
            "incomplete: {}",
            response
                .pointer("/incomplete_details/reason")
                .and_then(Value::as_str)
                .unwrap_or("no reason given")
        )),
        Some("failed") => Standing::Failed(format!(
            "failed: {}",
            response
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("no message given")
        )),
        Some("cancelled") => Standing::Failed("cancelled".into()),
        Some(other) => Standing::Failed(format!(
            "a response of unknown status {:?}",
            other.chars().take(40).collect::<String>()
        )),
        None => Standing::Failed("not a response object".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A turn streamed by the project's fake Responses endpoint.
    async fn streamed(fake: &sim::responses::FakeResponses, body: serde_json::Value) -> Vec<u8> {
        reqwest::Client::new()
            .post(format!("{}/responses", fake.base_url()))
            .bearer_auth("sk-test")
            .json(&body)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec()
    }

    fn read_in_pieces(body: &[u8], piece: usize) -> Vec<Event> {
        let mut r = Reader::new();
        let events: Vec<Event> = body.chunks(piece).flat_map(|c| r.feed(c)).collect();
        assert!(r.is_over());
        events
    }

    #[tokio::test]
    async fn the_deltas_of_any_split_join_to_the_completed_text() {
        let fake = sim::responses::FakeResponses::start().await.unwrap();
        let body = streamed(
            &fake,
            serde_json::json!({"model": "m", "stream": true, "input": "Do you open on Sunday?"}),
        )
        .await;
        for piece in [1, 7, 64, body.len()] {
            let events = read_in_pieces(&body, piece);
            let Some(Event::Completed { response_id, text }) = events.last() else {
                panic!("no completion: {events:?}");
            };
            assert!(response_id.starts_with("resp_"));
            let joined: String = events
                .iter()
                .filter_map(|e| match e {
                    Event::Delta(d) => Some(d.as_str()),
                    _ => None,
                })
                .collect();
            assert_eq!(&joined, text, "split in pieces of {piece}");
            assert_eq!(text, "Noted: Do you open on Sunday?.");
        }
    }

    #[tokio::test]
    async fn a_function_call_is_read_whole() {
        let fake = sim::responses::FakeResponses::start().await.unwrap();
        fake.script_tool("business_hours", r#"{"day":"sunday"}"#);
        let tools = serde_json::json!([{"type": "function", "name": "business_hours",
            "parameters": {"type": "object", "properties": {"day": {"type": "string"}}}}]);
        let body = streamed(
            &fake,
            serde_json::json!({"model": "m", "stream": true, "tools": tools, "input": "Sunday?"}),
        )
        .await;
        let events = read_in_pieces(&body, 5);
        let calls: Vec<_> = events
            .iter()
            .filter(|e| matches!(e, Event::Call { .. }))
            .collect();
        assert_eq!(calls.len(), 1);
        let Event::Call {
            call_id,
            name,
            arguments,
        } = calls[0]
        else {
            unreachable!()
        };
        assert!(call_id.starts_with("call_"));
        assert_eq!(name, "business_hours");
        assert_eq!(arguments, r#"{"day":"sunday"}"#);
        assert!(matches!(events.last(), Some(Event::Completed { text, .. }) if text.is_empty()));
    }

    #[test]
    fn a_line_is_read_up_to_its_cap_and_a_delta_of_any_shape_is_read() {
        // A delta with escapes, a skipped event whose `delta` is no text, CRLF endings, then a
        // delta split across reads.
        let body = concat!(
            "data: {\"type\":\"response.output_text.delta\",\"delta\":\"say \\\"hi\\\"\\n\\u00e9\"}\r\n\r\n",
            "data: {\"type\":\"response.reasoning.delta\",\"delta\":{\"x\":1}}\n\n",
            "data: {\"type\":\"response.output_text.delta\",\"delta\":\"ok\"}\n\n",
            "data: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"output\":[]}}\n\n",
        );
        for piece in [1, 7, body.len()] {
            assert_eq!(
                read_in_pieces(body.as_bytes(), piece),
                vec![
                    Event::Delta("say \"hi\"\né".into()),
                    Event::Delta("ok".into()),
                    Event::Completed {
                        response_id: "r".into(),
                        text: String::new()
                    }
                ],
                "pieces of {piece}"
            );
        }
        // A line of exactly the cap is read; one byte more fails the stream.
        let head = "data: {\"type\":\"response.output_text.delta\",\"delta\":\"";
        let at_cap = |extra: usize| {
            let fill = MAX_LINE + extra - head.len() - 2;
            format!("{head}{}\"}}\n", "a".repeat(fill))
        };
        // Whole in one read (read in place) and split across two (gathered).
        for split in [None, Some(1000)] {
            let feed = |line: String| {
                let mut r = Reader::new();
                let mut events = match split {
                    None => r.feed(line.as_bytes()),
                    Some(at) => r.feed(&line.as_bytes()[..at]),
                };
                if let Some(at) = split {
                    events.extend(r.feed(&line.as_bytes()[at..]));
                }
                (events, r.is_over())
            };
            let (events, _) = feed(at_cap(0));
            assert!(
                matches!(&events[..], [Event::Delta(d)] if d.len() == MAX_LINE - head.len() - 2),
                "{split:?}: {} events",
                events.len()
            );
            let (events, over) = feed(at_cap(1));
            assert!(
                matches!(&events[..], [Event::Failed(why)] if why.contains("longer than")),
                "{split:?}: {events:?}"
            );
            assert!(over);
        }
    }

    #[test]
    fn failures_end_the_stream_and_what_follows_is_ignored() {
        let mut r = Reader::new();
        let e = r.feed(
            b"event: response.failed\r\ndata: {\"type\":\"response.failed\",\"response\":{\"error\":{\"message\":\"overloaded\"}}}\r\n\r\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"late\"}\n",
        );
        assert_eq!(e, vec![Event::Failed("failed: overloaded".into())]);
        assert!(r.is_over());
        let mut r = Reader::new();
        assert_eq!(
            r.feed(b"data: {\"type\":\"response.incomplete\",\"response\":{\"incomplete_details\":{\"reason\":\"max_output_tokens\"}}}\n"),
            vec![Event::Failed("incomplete: max_output_tokens".into())]
        );
        let mut r = Reader::new();
        assert!(
            matches!(&r.feed(b"data: {not json\n")[..], [Event::Failed(m)] if m.contains("not JSON"))
        );
        // Comments, unknown events and events without a type are skipped.
        let mut r = Reader::new();
        assert!(r
            .feed(b": keep-alive\n\ndata: {\"type\":\"response.reasoning_summary_text.delta\"}\ndata: {}\n")
            .is_empty());
        assert!(!r.is_over());
        // A line that never ends is cut off.
        let mut r = Reader::new();
        let e = r.feed(&vec![b'x'; MAX_LINE + 1]);
        assert!(matches!(&e[..], [Event::Failed(m)] if m.contains("longer than")));
    }

    #[test]
    fn a_response_object_is_read_by_its_status() {
        use serde_json::json;
        assert_eq!(standing(&json!({"status": "queued"})), Standing::Pending);
        assert_eq!(
            standing(&json!({"status": "in_progress"})),
            Standing::Pending
        );
        let done = json!({"status": "completed", "output": [
            {"type": "reasoning", "summary": []},
            {"type": "message", "content": [{"type": "output_text", "text": "One moment."}]},
            {"type": "function_call", "call_id": "c1", "name": "business_hours", "arguments": "{}"}]});
        assert_eq!(
            standing(&done),
            Standing::Done {
                calls: vec![("c1".into(), "business_hours".into(), "{}".into())],
                text: "One moment.".into()
            }
        );
        assert_eq!(
            standing(&json!({"status": "failed", "error": {"message": "boom"}})),
            Standing::Failed("failed: boom".into())
        );
        assert_eq!(
            standing(
                &json!({"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}})
            ),
            Standing::Failed("incomplete: max_output_tokens".into())
        );
        assert!(matches!(
            standing(&json!({"status": 3})),
            Standing::Failed(_)
        ));
        assert!(matches!(standing(&json!([])), Standing::Failed(_)));
    }
}
