//! OpenAI GPT-Live JSON (docs/gpt-live-reference.md §1.3, §2): the client events warmline sends
//! and the server events it reads, reduced to what a phone call needs. The session is strict
//! (an unknown field is refused), so every client event here carries exactly the documented
//! fields; an unknown server `type` parses into [`ServerEvent::Unknown`].
//!
//! Hot path: `session.input_audio.append` is written straight into a `String` (Twilio's base64
//! needs no JSON escaping), and output audio deltas borrow from the frame when they can.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::json::Text;

/// What a session is started with (`session.start`'s `session`, §1.3).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionConfig {
    /// `gpt-live-1`, `gpt-live-1.1`, …
    pub model: String,
    /// The whole prompt (immutable once started).
    pub instructions: String,
    /// Output voice.
    pub voice: String,
    /// Startup history: `(role, text)` with role `developer`, `user` or `assistant`.
    pub history: Vec<(String, String)>,
    /// Function tools for Responses delegation (`{"type":"function","name",…}`), with the
    /// backend model; none: no delegation (client delegation, the server default).
    pub delegation: Option<Delegation>,
}

/// Responses delegation (§1.7, §4): the backend model and the function tools it may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Delegation {
    /// The Responses model the Live service delegates to.
    pub model: String,
    /// Function tools, the Responses shape (`type`, `name`, `description`, `parameters`).
    pub tools: Vec<Value>,
}

fn delegation_json(d: &Delegation) -> Value {
    json!({"type": "responses", "responses": {"model": d.model, "tools": d.tools}})
}

/// `session.start`: G.711 μ-law at 8 kHz both ways (Twilio's audio passes through untouched).
pub fn session_start(c: &SessionConfig) -> String {
    let mut session = json!({
        "model": c.model,
        "instructions": c.instructions,
        "audio": {
            "format": {"type": "audio/pcmu", "rate": 8000},
            "output": {"voice": c.voice},
        },
    });
    if !c.history.is_empty() {
        let input: Vec<Value> = c
            .history
            .iter()
            .map(|(role, text)| {
                let part = if role == "assistant" {
                    "output_text"
                } else {
                    "input_text"
                };
                json!({"type": "message", "role": role, "content": [{"type": part, "text": text}]})
            })
            .collect();
        session["input"] = Value::Array(input);
    }
    if let Some(d) = &c.delegation {
        session["delegation"] = delegation_json(d);
    }
    json!({"type": "session.start", "session": session}).to_string()
}

/// `session.update` of the delegation's tools (the only thing a started session may change
/// besides triggers, §1.4).
pub fn delegation_update(d: &Delegation) -> String {
    json!({"type": "session.update", "session": {"delegation": delegation_json(d)}}).to_string()
}

/// `session.input_audio.append` (caller audio or silence, base64 μ-law).
pub fn append(b64: &str) -> String {
    let mut s = String::with_capacity(b64.len() + 48);
    s.push_str(r#"{"type":"session.input_audio.append","audio":""#);
    s.push_str(b64);
    s.push_str(r#""}"#);
    s
}

/// Which of the three text appends (§2.1): `instructions` (silent guidance), `thinking`
/// (silent context), `commentary` (spoken, paraphrased).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendKind {
    /// `session.instructions.append`.
    Instructions,
    /// `session.thinking.append`.
    Thinking,
    /// `session.commentary.append`.
    Commentary,
}

/// Most characters of one text append: the API caps each at 500 tokens (§6); at about four
/// characters a token, 1,600 characters stays well under it.
pub const APPEND_MAX_CHARS: usize = 1600;

/// A text append (`delegation_id` present and null: under Responses delegation a non-null one
/// is refused, §2.1), cut to [`APPEND_MAX_CHARS`] on a character boundary.
pub fn text_append(kind: AppendKind, content: &str) -> String {
    let kind = match kind {
        AppendKind::Instructions => "session.instructions.append",
        AppendKind::Thinking => "session.thinking.append",
        AppendKind::Commentary => "session.commentary.append",
    };
    let content: String = content.chars().take(APPEND_MAX_CHARS).collect();
    json!({"type": kind, "content": content, "delegation_id": null}).to_string()
}

/// `text` as as many appends of `kind` as it takes, each within [`APPEND_MAX_CHARS`], cut at
/// line breaks where it can (a long seed or prompt is given whole, in order, not cut short).
pub fn text_appends(kind: AppendKind, text: &str) -> Vec<String> {
    let mut frames = Vec::new();
    let mut chunk = String::new();
    for line in text.split_inclusive('\n') {
        for piece in line
            .chars()
            .collect::<Vec<_>>()
            .chunks(APPEND_MAX_CHARS)
            .map(|c| c.iter().collect::<String>())
        {
            if chunk.chars().count() + piece.chars().count() > APPEND_MAX_CHARS {
                frames.push(text_append(kind, &std::mem::take(&mut chunk)));
            }
            chunk.push_str(&piece);
        }
    }
    if !chunk.trim().is_empty() {
        frames.push(text_append(kind, &chunk));
    }
    frames
}

/// `response.item.create` with a function call's output (Responses delegation, §4).
pub fn function_output(call_id: &str, output: &str) -> String {
    json!({"type": "response.item.create",
        "item": {"type": "function_call_output", "call_id": call_id, "output": output}})
    .to_string()
}

/// `response.create`: the backend goes on once every open call has its output (§4).
pub fn response_create() -> String {
    r#"{"type":"response.create"}"#.to_string()
}

/// `session.close`.
pub fn session_close() -> String {
    r#"{"type":"session.close"}"#.to_string()
}

/// A server event, reduced to what warmline acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent<'a> {
    /// `session.started`: `session.expires_at` (unix seconds), when given.
    SessionStarted {
        /// Unix seconds.
        expires_at: Option<i64>,
    },
    /// `session.output_audio.delta` (a piece of the continuous output track, silence included).
    AudioDelta {
        /// Base64 audio in the session format.
        delta: Cow<'a, str>,
    },
    /// `session.output_transcript.delta`.
    OutputTranscript {
        /// Text.
        delta: String,
        /// Timeline ms.
        start_ms: u64,
        /// Timeline ms.
        end_ms: u64,
    },
    /// `session.input_transcript.delta`.
    InputTranscript {
        /// Text.
        delta: String,
        /// Timeline ms.
        start_ms: u64,
        /// Timeline ms.
        end_ms: u64,
    },
    /// `session.delegation.created` (a backend task started; metadata only).
    DelegationCreated {
        /// The delegation's id.
        id: String,
        /// Its Responses response id, under Responses delegation.
        response_id: Option<String>,
    },
    /// `response.event` with a completed `function_call` item (`response.output_item.done`).
    FunctionCall {
        /// The delegation the call belongs to.
        delegation_id: Option<String>,
        /// The Responses response id (from the nested event), if any.
        response_id: Option<String>,
        /// Call id for the output item.
        call_id: String,
        /// Function name.
        name: String,
        /// JSON arguments.
        arguments: String,
    },
    /// `response.event` with `response.completed`, `response.failed` or `response.incomplete`.
    ResponseEnded {
        /// The delegation.
        delegation_id: Option<String>,
        /// The Responses response id.
        response_id: Option<String>,
        /// `completed`, `failed`, `incomplete`.
        status: String,
    },
    /// `session.closed` (terminal).
    SessionClosed {
        /// `close_requested`, `expired`, `content`, `remote_hangup`, `connection_lost`.
        reason: String,
    },
    /// `error`.
    Error {
        /// `error.type`.
        kind: String,
        /// `error.code`, if any.
        code: Option<String>,
        /// `error.message`.
        message: String,
        /// `error.param`, if any.
        param: Option<String>,
    },
    /// Anything else (appended acks, usage, updated, info …): not acted on.
    Unknown {
        /// Its `type`.
        kind: String,
    },
}

/// Why a server frame could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unparsable GPT-Live event: {0}")]
pub struct WireError(pub String);

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow)]
    delta: Text<'a>,
}

#[derive(Deserialize)]
struct TranscriptDelta {
    delta: String,
    #[serde(default)]
    start_ms: u64,
    #[serde(default)]
    end_ms: u64,
}

/// Parses one server frame.
pub fn parse(text: &str) -> Result<ServerEvent<'_>, WireError> {
    let head: Head<'_> = serde_json::from_str(text).map_err(|e| WireError(e.to_string()))?;
    // The frame that comes ten times a second: read without building a `Value`.
    if head.kind == "session.output_audio.delta" {
        let d: Delta<'_> = serde_json::from_str(text).map_err(|e| WireError(e.to_string()))?;
        return Ok(ServerEvent::AudioDelta { delta: d.delta.0 });
    }
    let kind = head.kind.into_owned();
    let transcript = |text: &str| -> Result<TranscriptDelta, WireError> {
        serde_json::from_str(text).map_err(|e| WireError(e.to_string()))
    };
    match kind.as_str() {
        "session.output_transcript.delta" => {
            let t = transcript(text)?;
            return Ok(ServerEvent::OutputTranscript {
                delta: t.delta,
                start_ms: t.start_ms,
                end_ms: t.end_ms,
            });
        }
        "session.input_transcript.delta" => {
            let t = transcript(text)?;
            return Ok(ServerEvent::InputTranscript {
                delta: t.delta,
                start_ms: t.start_ms,
                end_ms: t.end_ms,
            });
        }
        _ => {}
    }
    let v: Value = serde_json::from_str(text).map_err(|e| WireError(e.to_string()))?;
    let s = |v: &Value| v.as_str().map(str::to_string);
    Ok(match kind.as_str() {
        "session.started" => ServerEvent::SessionStarted {
            expires_at: v["session"]["expires_at"].as_i64(),
        },
        "session.delegation.created" => ServerEvent::DelegationCreated {
            id: s(&v["delegation"]["id"]).unwrap_or_default(),
            response_id: s(&v["delegation"]["response_id"]),
        },
        "response.event" => {
            let delegation_id = s(&v["delegation_id"]);
            let event = &v["event"];
            let response_id = s(&event["response"]["id"]).or_else(|| s(&event["response_id"]));
            match event["type"].as_str().unwrap_or_default() {
                "response.output_item.done"
                    if event["item"]["type"] == "function_call"
                        && event["item"]["status"] == "completed" =>
                {
                    let item = &event["item"];
                    ServerEvent::FunctionCall {
                        delegation_id,
                        response_id,
                        call_id: s(&item["call_id"]).unwrap_or_default(),
                        name: s(&item["name"]).unwrap_or_default(),
                        arguments: s(&item["arguments"]).unwrap_or_else(|| "{}".into()),
                    }
                }
                t @ ("response.completed" | "response.failed" | "response.incomplete") => {
                    ServerEvent::ResponseEnded {
                        delegation_id,
                        response_id,
                        status: t.trim_start_matches("response.").to_string(),
                    }
                }
                other => ServerEvent::Unknown {
                    kind: format!("response.event/{other}"),
                },
            }
        }
        "session.closed" => ServerEvent::SessionClosed {
            reason: s(&v["reason"]).unwrap_or_else(|| "unknown".into()),
        },
        "error" => ServerEvent::Error {
            kind: s(&v["error"]["type"]).unwrap_or_else(|| "error".into()),
            code: s(&v["error"]["code"]),
            message: s(&v["error"]["message"]).unwrap_or_default(),
            param: s(&v["error"]["param"]),
        },
        _ => ServerEvent::Unknown { kind },
    })
}

/// Whether a base64 μ-law payload is digital silence (every byte 0xFF, the G.711 zero the model
/// and the gateway write), read from the base64 text without decoding it: 0xFF bytes encode as
/// `/`, with a `/w==` or `//8=` tail for a length that is not a multiple of three.
pub fn is_silence(b64: &str) -> bool {
    let body = b64
        .strip_suffix("/w==")
        .or_else(|| b64.strip_suffix("//8="))
        .unwrap_or(b64);
    !b64.is_empty() && body.bytes().all(|b| b == b'/')
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    fn config() -> SessionConfig {
        SessionConfig {
            model: "gpt-live-1".into(),
            instructions: "Be brief.".into(),
            voice: "marin".into(),
            history: vec![("developer".into(), "The caller is Dana.".into())],
            delegation: Some(Delegation {
                model: "gpt-5.5".into(),
                tools: vec![json!({"type": "function", "name": "end_call",
                    "description": "End the call.", "parameters": {"type": "object", "properties": {}}})],
            }),
        }
    }

    #[test]
    fn session_start_has_exactly_the_documented_fields() {
        let v: Value = serde_json::from_str(&session_start(&config())).unwrap();
        assert_eq!(v["type"], "session.start");
        let s = v["session"].as_object().unwrap();
        let mut keys: Vec<&str> = s.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["audio", "delegation", "input", "instructions", "model"]
        );
        assert_eq!(
            v["session"]["audio"],
            json!({"format": {"type": "audio/pcmu", "rate": 8000}, "output": {"voice": "marin"}})
        );
        assert_eq!(
            v["session"]["input"][0],
            json!({"type": "message", "role": "developer",
                "content": [{"type": "input_text", "text": "The caller is Dana."}]})
        );
        assert_eq!(v["session"]["delegation"]["type"], "responses");
        assert_eq!(v["session"]["delegation"]["responses"]["model"], "gpt-5.5");
        // No history, no delegation: neither key.
        let mut bare = config();
        bare.history.clear();
        bare.delegation = None;
        let v: Value = serde_json::from_str(&session_start(&bare)).unwrap();
        assert!(v["session"].get("input").is_none() && v["session"].get("delegation").is_none());
    }

    #[test]
    fn client_events_encode() {
        let v: Value = serde_json::from_str(&append("//8=")).unwrap();
        assert_eq!(
            v,
            json!({"type": "session.input_audio.append", "audio": "//8="})
        );
        let v: Value = serde_json::from_str(&text_append(
            AppendKind::Commentary,
            "Greet the caller now.",
        ))
        .unwrap();
        assert_eq!(
            v,
            json!({"type": "session.commentary.append", "content": "Greet the caller now.",
                "delegation_id": null})
        );
        let long = "é".repeat(APPEND_MAX_CHARS + 10);
        let v: Value = serde_json::from_str(&text_append(AppendKind::Thinking, &long)).unwrap();
        assert_eq!(
            v["content"].as_str().unwrap().chars().count(),
            APPEND_MAX_CHARS
        );
        let v: Value = serde_json::from_str(&function_output("call_1", "{\"ok\":true}")).unwrap();
        assert_eq!(v["item"]["type"], "function_call_output");
        assert_eq!(v["item"]["output"], "{\"ok\":true}");
        let v: Value =
            serde_json::from_str(&delegation_update(&config().delegation.unwrap())).unwrap();
        assert_eq!(
            v["session"]["delegation"]["responses"]["tools"][0]["name"],
            "end_call"
        );
    }

    #[test]
    fn a_long_text_is_split_over_appends_in_order_at_line_breaks() {
        let lines: Vec<String> = (0..200)
            .map(|i| format!("caller: line {i:03} of the talk"))
            .collect();
        let text = lines.join("\n");
        let frames = text_appends(AppendKind::Instructions, &text);
        assert!(frames.len() > 1);
        let mut back = String::new();
        for f in &frames {
            let v: Value = serde_json::from_str(f).unwrap();
            let c = v["content"].as_str().unwrap();
            assert!(c.chars().count() <= APPEND_MAX_CHARS);
            back.push_str(c);
        }
        assert_eq!(back, text, "whole, in order");
        // A single line longer than an append is cut, not lost.
        let long = "x".repeat(APPEND_MAX_CHARS * 2 + 5);
        let frames = text_appends(AppendKind::Thinking, &long);
        assert_eq!(frames.len(), 3);
    }

    #[test]
    fn server_events_parse() {
        assert_eq!(
            parse(r#"{"type":"session.started","event_id":"e1","session":{"id":"live_1","expires_at":1800,"model":"gpt-live-1","status":"active"}}"#).unwrap(),
            ServerEvent::SessionStarted { expires_at: Some(1800) }
        );
        assert!(matches!(
            parse(r#"{"type":"session.output_audio.delta","event_id":"e","delta":"AAAA"}"#)
                .unwrap(),
            ServerEvent::AudioDelta {
                delta: Cow::Borrowed("AAAA")
            }
        ));
        assert_eq!(
            parse(r#"{"type":"session.input_transcript.delta","event_id":"e","delta":"Hi","start_ms":600,"end_ms":800}"#).unwrap(),
            ServerEvent::InputTranscript { delta: "Hi".into(), start_ms: 600, end_ms: 800 }
        );
        assert_eq!(
            parse(r#"{"type":"response.event","event_id":"e","delegation_id":"d1","event":{"type":"response.output_item.done","response_id":"resp_1","item":{"type":"function_call","id":"fc_1","status":"completed","call_id":"call_1","name":"end_call","arguments":"{}"}}}"#).unwrap(),
            ServerEvent::FunctionCall {
                delegation_id: Some("d1".into()),
                response_id: Some("resp_1".into()),
                call_id: "call_1".into(),
                name: "end_call".into(),
                arguments: "{}".into(),
            }
        );
        // An item still in progress is not a call yet.
        assert!(matches!(
            parse(r#"{"type":"response.event","event":{"type":"response.output_item.done","item":{"type":"function_call","status":"in_progress"}}}"#).unwrap(),
            ServerEvent::Unknown { .. }
        ));
        assert_eq!(
            parse(r#"{"type":"response.event","delegation_id":"d1","event":{"type":"response.completed","response":{"id":"resp_1","output":[]}}}"#).unwrap(),
            ServerEvent::ResponseEnded { delegation_id: Some("d1".into()), response_id: Some("resp_1".into()), status: "completed".into() }
        );
        assert_eq!(
            parse(r#"{"type":"session.closed","event_id":"e","reason":"expired","session":{},"usage":{"seconds":12}}"#).unwrap(),
            ServerEvent::SessionClosed { reason: "expired".into() }
        );
        assert_eq!(
            parse(r#"{"type":"error","event_id":"e","error":{"type":"invalid_request_error","code":"unknown_parameter","message":"Unknown parameter: 'session.turn_detection'.","param":"session.turn_detection"}}"#).unwrap(),
            ServerEvent::Error {
                kind: "invalid_request_error".into(),
                code: Some("unknown_parameter".into()),
                message: "Unknown parameter: 'session.turn_detection'.".into(),
                param: Some("session.turn_detection".into()),
            }
        );
        assert!(matches!(
            parse(r#"{"type":"session.usage.updated","usage":{"seconds":15}}"#).unwrap(),
            ServerEvent::Unknown { .. }
        ));
        assert!(parse("not json").is_err());
        assert!(parse(r#"{"type":"session.output_audio.delta"}"#).is_err());
    }

    #[test]
    fn silence_is_told_from_the_base64_text() {
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        for n in [1, 2, 3, 160, 799, 800] {
            assert!(is_silence(&b64(&vec![0xFF; n])), "{n}");
        }
        let mut speech = vec![0xFF; 800];
        speech[400] = 0x10;
        assert!(!is_silence(&b64(&speech)));
        assert!(!is_silence(""));
        assert!(!is_silence(&b64(&[0x00; 3])));
    }
}
