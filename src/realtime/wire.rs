//! OpenAI Realtime (GA) JSON (docs/twilio-openai-reference.md §7): the client events warmline sends and the server
//! events it reads. GA names only (`response.output_audio.delta`, `session.type:"realtime"`,
//! `{"type":"audio/pcmu"}`); an unknown `type` parses into [`ServerEvent::Unknown`].
//!
//! Hot path: `input_audio_buffer.append` is written straight into a `String` (Twilio's base64
//! needs no JSON escaping) and audio deltas borrow from the frame when they can.

use std::borrow::Cow;

use serde::Deserialize;

use crate::json::Text;
use serde_json::{Value, json};

/// A server event, reduced to what warmline acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent<'a> {
    /// `session.created`.
    SessionCreated,
    /// `session.updated` (the configuration took effect).
    SessionUpdated,
    /// `error`.
    Error {
        /// `error.type`.
        kind: String,
        /// `error.code`, if any.
        code: Option<String>,
        /// `error.message`.
        message: String,
        /// `error.event_id`: the client event it is about, if the server named one.
        event_id: Option<String>,
    },
    /// `input_audio_buffer.speech_started`.
    SpeechStarted {
        /// ms into the input audio.
        audio_start_ms: u64,
        /// The user item being created.
        item_id: String,
    },
    /// `input_audio_buffer.speech_stopped`.
    SpeechStopped {
        /// ms into the input audio.
        audio_end_ms: u64,
    },
    /// `conversation.item.input_audio_transcription.completed`.
    CallerTranscript {
        /// User item.
        item_id: String,
        /// Transcript.
        transcript: String,
    },
    /// `response.created`.
    ResponseCreated {
        /// Response id.
        response_id: String,
        /// `response.metadata.warmline`: the event id of the `response.create` that asked for
        /// it (see [`response_create_tagged`]); none for a response the server started itself.
        tag: Option<String>,
    },
    /// `response.output_audio.delta`.
    AudioDelta {
        /// Response id.
        response_id: String,
        /// Assistant item id.
        item_id: String,
        /// Base64 μ-law.
        delta: Cow<'a, str>,
    },
    /// `response.output_audio.done`.
    AudioDone {
        /// Response id.
        response_id: String,
        /// Assistant item id.
        item_id: String,
    },
    /// `response.output_audio_transcript.delta`.
    AgentTranscriptDelta {
        /// Assistant item id.
        item_id: String,
        /// Text fragment.
        delta: String,
    },
    /// `response.output_audio_transcript.done`.
    AgentTranscript {
        /// Assistant item id.
        item_id: String,
        /// Transcript.
        transcript: String,
    },
    /// `response.output_item.done` of a `function_call` item (its name, call id and
    /// arguments are all on the item; `response.function_call_arguments.done` may lack the
    /// name and is not used).
    FunctionCall {
        /// The response making the call.
        response_id: String,
        /// Call id for the output item.
        call_id: String,
        /// Function name.
        name: String,
        /// JSON arguments.
        arguments: String,
    },
    /// `response.done`.
    ResponseDone {
        /// Response id.
        response_id: String,
        /// completed, cancelled, failed, incomplete.
        status: String,
        /// `status_details.reason`.
        reason: Option<String>,
    },
    /// Anything else (logged at debug and ignored).
    Unknown {
        /// Its `type`.
        kind: String,
    },
}

/// Why a server frame could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Realtime event: {0}")]
pub struct WireError(pub String);

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    response_id: Option<String>,
    item_id: Option<String>,
    #[serde(borrow, default)]
    delta: Option<Text<'a>>,
    transcript: Option<String>,
    audio_start_ms: Option<u64>,
    audio_end_ms: Option<u64>,
    response: Option<ResponseBody>,
    error: Option<ErrorBody>,
    item: Option<ItemBody>,
}

#[derive(Deserialize)]
struct ResponseBody {
    id: Option<String>,
    status: Option<String>,
    status_details: Option<StatusDetails>,
    metadata: Option<Metadata>,
}

#[derive(Deserialize)]
struct Metadata {
    warmline: Option<String>,
}

#[derive(Deserialize)]
struct ItemBody {
    #[serde(rename = "type")]
    kind: Option<String>,
    status: Option<String>,
    call_id: Option<String>,
    name: Option<String>,
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct StatusDetails {
    reason: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "type")]
    kind: Option<String>,
    code: Option<String>,
    message: Option<String>,
    event_id: Option<String>,
}

fn need<T>(v: Option<T>, kind: &str, field: &str) -> Result<T, WireError> {
    v.ok_or_else(|| WireError(format!("{kind} without {field}")))
}

/// Parses one server frame.
pub fn parse(text: &str) -> Result<ServerEvent<'_>, WireError> {
    let e: Envelope<'_> = serde_json::from_str(text).map_err(|e| WireError(e.to_string()))?;
    let kind = e.kind.as_ref();
    Ok(match kind {
        "session.created" => ServerEvent::SessionCreated,
        "session.updated" => ServerEvent::SessionUpdated,
        "error" => {
            let err = e.error.unwrap_or(ErrorBody {
                kind: None,
                code: None,
                message: None,
                event_id: None,
            });
            ServerEvent::Error {
                kind: err.kind.unwrap_or_else(|| "unknown".into()),
                code: err.code,
                message: err.message.unwrap_or_default(),
                event_id: err.event_id,
            }
        }
        "input_audio_buffer.speech_started" => ServerEvent::SpeechStarted {
            audio_start_ms: e.audio_start_ms.unwrap_or(0),
            item_id: e.item_id.unwrap_or_default(),
        },
        "input_audio_buffer.speech_stopped" => ServerEvent::SpeechStopped {
            audio_end_ms: e.audio_end_ms.unwrap_or(0),
        },
        "conversation.item.input_audio_transcription.completed" => ServerEvent::CallerTranscript {
            item_id: e.item_id.unwrap_or_default(),
            transcript: need(e.transcript, kind, "transcript")?,
        },
        "response.created" => {
            let r = need(e.response, kind, "response")?;
            ServerEvent::ResponseCreated {
                response_id: need(r.id, kind, "response.id")?,
                tag: r.metadata.and_then(|m| m.warmline),
            }
        }
        "response.output_audio.delta" => ServerEvent::AudioDelta {
            response_id: need(e.response_id, kind, "response_id")?,
            item_id: need(e.item_id, kind, "item_id")?,
            delta: need(e.delta, kind, "delta")?.0,
        },
        "response.output_audio.done" => ServerEvent::AudioDone {
            response_id: e.response_id.unwrap_or_default(),
            item_id: e.item_id.unwrap_or_default(),
        },
        "response.output_audio_transcript.delta" => ServerEvent::AgentTranscriptDelta {
            item_id: e.item_id.unwrap_or_default(),
            delta: need(e.delta, kind, "delta")?.0.into_owned(),
        },
        "response.output_audio_transcript.done" => ServerEvent::AgentTranscript {
            item_id: e.item_id.unwrap_or_default(),
            transcript: need(e.transcript, kind, "transcript")?,
        },
        "response.output_item.done" => match e.item {
            Some(item) if item.kind.as_deref() == Some("function_call") => {
                // A call cut off with its response (`incomplete`) has no usable arguments.
                if item.status.as_deref() == Some("incomplete") {
                    return Ok(ServerEvent::Unknown {
                        kind: "response.output_item.done (incomplete function_call)".into(),
                    });
                }
                ServerEvent::FunctionCall {
                    response_id: e.response_id.unwrap_or_default(),
                    call_id: need(item.call_id, kind, "item.call_id")?,
                    name: item.name.unwrap_or_default(),
                    arguments: item.arguments.unwrap_or_else(|| "{}".into()),
                }
            }
            _ => ServerEvent::Unknown { kind: kind.into() },
        },
        "response.done" => {
            let r = need(e.response, kind, "response")?;
            ServerEvent::ResponseDone {
                response_id: r.id.unwrap_or_default(),
                status: r.status.unwrap_or_else(|| "completed".into()),
                reason: r.status_details.and_then(|d| d.reason),
            }
        }
        other => ServerEvent::Unknown {
            kind: other.chars().take(80).collect(),
        },
    })
}

/// `input_audio_buffer.append` with base64 μ-law that is already valid base64.
pub fn append(audio_b64: &str) -> String {
    let mut s = String::with_capacity(48 + audio_b64.len());
    s.push_str(r#"{"type":"input_audio_buffer.append","audio":""#);
    s.push_str(audio_b64);
    s.push_str(r#""}"#);
    s
}

/// What a session is configured with (§7.2).
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The whole prompt.
    pub instructions: String,
    /// Output voice.
    pub voice: String,
    /// Input transcription model.
    pub transcription_model: String,
    /// Caller's language for transcription (`en`), if known.
    pub language: Option<String>,
    /// Function tools (GA shape: `{"type":"function","name","description","parameters"}`).
    pub tools: Vec<Value>,
}

/// `session.update` in the GA shape: PCMU both ways, server VAD with barge-in, transcription.
pub fn session_update(c: &SessionConfig) -> String {
    let mut transcription = json!({"model": c.transcription_model});
    if let Some(lang) = &c.language {
        transcription["language"] = Value::String(lang.clone());
    }
    json!({
        "type": "session.update",
        "session": {
            "type": "realtime",
            "instructions": c.instructions,
            "output_modalities": ["audio"],
            "audio": {
                "input": {
                    "format": {"type": "audio/pcmu"},
                    "noise_reduction": {"type": "near_field"},
                    "turn_detection": {
                        "type": "server_vad",
                        "threshold": 0.5,
                        "prefix_padding_ms": 300,
                        "silence_duration_ms": 500,
                        "create_response": true,
                        "interrupt_response": true
                    },
                    "transcription": transcription
                },
                "output": {"format": {"type": "audio/pcmu"}, "voice": c.voice}
            },
            "tools": c.tools,
            "tool_choice": "auto",
            "truncation": "auto"
        }
    })
    .to_string()
}

/// `response.create`, with per-response instructions (the greeting) when given.
pub fn response_create(instructions: Option<&str>) -> String {
    match instructions {
        Some(i) => json!({"type": "response.create", "response": {"instructions": i}}).to_string(),
        None => json!({"type": "response.create"}).to_string(),
    }
}

/// `response.create` for a response that must or must not use tools (`tool_choice: "none"`
/// when `tools` is false: a scripted line), with per-response instructions when given, under
/// the client event id `event_id`, which also goes into `response.metadata.warmline` so that
/// `response.created` says which request it answers (docs/twilio-openai-reference.md §7.3).
pub fn response_create_tagged(instructions: Option<&str>, tools: bool, event_id: &str) -> String {
    let mut response = serde_json::Map::new();
    if let Some(i) = instructions {
        response.insert("instructions".into(), Value::from(i));
    }
    if !tools {
        response.insert("tool_choice".into(), Value::from("none"));
    }
    response.insert("metadata".into(), json!({"warmline": event_id}));
    json!({"type": "response.create", "event_id": event_id, "response": response}).to_string()
}

/// A partial `session.update`: new instructions and tools, everything else as it was (only the
/// fields present are updated, docs/twilio-openai-reference.md §7.2).
pub fn session_reconfigure(instructions: &str, tools: &[Value]) -> String {
    json!({"type": "session.update", "session": {"type": "realtime",
        "instructions": instructions, "tools": tools, "tool_choice": "auto"}})
    .to_string()
}

/// A tool's answer: a `function_call_output` item for the model's call `call_id`.
pub fn function_output(call_id: &str, output: &str) -> String {
    json!({"type": "conversation.item.create", "item": {"type": "function_call_output",
        "call_id": call_id, "output": output}})
    .to_string()
}

/// `response.cancel`.
pub fn response_cancel() -> String {
    r#"{"type":"response.cancel"}"#.to_string()
}

/// `conversation.item.truncate` for an assistant item at what the caller heard.
pub fn truncate(item_id: &str, audio_end_ms: u64) -> String {
    json!({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": audio_end_ms})
        .to_string()
}

/// A system message item (`input_text`, the only content a system message takes).
pub fn system_text(text: &str) -> String {
    json!({"type": "conversation.item.create", "item": {"type": "message", "role": "system",
        "content": [{"type": "input_text", "text": text}]}})
    .to_string()
}

/// A user text message item (e.g. a DTMF key).
pub fn user_text(text: &str) -> String {
    json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
        "content": [{"type": "input_text", "text": text}]}})
    .to_string()
}

/// An assistant message item the caller already heard (a greeting played from the cache): the
/// model knows what was said without saying it. `id` is ours (the Realtime API takes a
/// client-chosen item id), so that a barge-in can replace it with the part heard.
/// With `after`, it is inserted right after that item (`previous_item_id`) instead of at the
/// end of the conversation.
pub fn assistant_text(id: Option<&str>, after: Option<&str>, text: &str) -> String {
    let mut item = json!({"type": "message", "role": "assistant",
        "content": [{"type": "output_text", "text": text}]});
    if let Some(id) = id {
        item["id"] = json!(id);
    }
    let mut event = json!({"type": "conversation.item.create", "item": item});
    if let Some(after) = after {
        event["previous_item_id"] = json!(after);
    }
    event.to_string()
}

/// `conversation.item.delete`.
pub fn item_delete(item_id: &str) -> String {
    json!({"type": "conversation.item.delete", "item_id": item_id}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_assistant_message_carries_output_text_and_our_id() {
        let v: Value =
            serde_json::from_str(&assistant_text(Some("wl_greeting"), None, "Hi!")).unwrap();
        assert_eq!(v["type"], "conversation.item.create");
        assert_eq!(v["item"]["id"], "wl_greeting");
        assert_eq!(v["item"]["role"], "assistant");
        assert_eq!(
            v["item"]["content"],
            json!([{"type": "output_text", "text": "Hi!"}])
        );
        let v: Value =
            serde_json::from_str(&assistant_text(None, Some("wl_greeting"), "Hi")).unwrap();
        assert!(v["item"].get("id").is_none());
        assert_eq!(v["previous_item_id"], "wl_greeting");
        let v: Value = serde_json::from_str(&item_delete("wl_greeting")).unwrap();
        assert_eq!(
            v,
            json!({"type": "conversation.item.delete", "item_id": "wl_greeting"})
        );
    }

    #[test]
    fn session_update_is_the_ga_shape() {
        let v: Value = serde_json::from_str(&session_update(&SessionConfig {
            instructions: "Be nice".into(),
            voice: "marin".into(),
            transcription_model: "gpt-4o-mini-transcribe".into(),
            language: Some("en".into()),
            tools: vec![
                json!({"type": "function", "name": "end_call", "description": "End the call.",
                "parameters": {"type": "object", "properties": {}}}),
            ],
        }))
        .unwrap();
        assert_eq!(v["type"], "session.update");
        assert_eq!(v["session"]["type"], "realtime");
        assert_eq!(
            v["session"]["audio"]["input"]["format"],
            json!({"type": "audio/pcmu"})
        );
        assert_eq!(
            v["session"]["audio"]["output"]["format"],
            json!({"type": "audio/pcmu"})
        );
        assert_eq!(v["session"]["audio"]["output"]["voice"], "marin");
        let td = &v["session"]["audio"]["input"]["turn_detection"];
        assert_eq!(td["type"], "server_vad");
        assert_eq!(td["interrupt_response"], true);
        assert_eq!(
            v["session"]["audio"]["input"]["transcription"]["language"],
            "en"
        );
        assert!(!v.to_string().contains("g711"), "no beta format names");
        assert_eq!(v["session"]["tools"][0]["name"], "end_call");
        assert_eq!(v["session"]["tool_choice"], "auto");
    }

    #[test]
    fn tool_answers_encode_in_the_ga_shape() {
        let o: Value = serde_json::from_str(&function_output("call_1", r#"{"ok":true}"#)).unwrap();
        assert_eq!(
            o,
            json!({"type": "conversation.item.create", "item": {"type": "function_call_output",
                "call_id": "call_1", "output": "{\"ok\":true}"}})
        );
        let plain: Value =
            serde_json::from_str(&response_create_tagged(None, true, "wl_create_1")).unwrap();
        assert_eq!(
            plain,
            json!({"type": "response.create", "event_id": "wl_create_1",
                "response": {"metadata": {"warmline": "wl_create_1"}}})
        );
        let scripted: Value = serde_json::from_str(&response_create_tagged(
            Some("Say \"bye\""),
            false,
            "wl_create_2",
        ))
        .unwrap();
        assert_eq!(
            scripted,
            json!({"type": "response.create", "event_id": "wl_create_2", "response": {
                "instructions": "Say \"bye\"", "tool_choice": "none",
                "metadata": {"warmline": "wl_create_2"}}})
        );
        // Function calls are read from the finished item (name, call id and arguments).
        let call = parse(r#"{"type":"response.output_item.done","event_id":"e","response_id":"resp_2","output_index":0,"item":{"id":"item_3","type":"function_call","status":"completed","name":"end_call","call_id":"call_9","arguments":"{}"}}"#).unwrap();
        assert_eq!(
            call,
            ServerEvent::FunctionCall {
                response_id: "resp_2".into(),
                call_id: "call_9".into(),
                name: "end_call".into(),
                arguments: "{}".into()
            }
        );
        // The arguments' own `.done` event (it may lack the name) and a cut-off call are not.
        for other in [
            r#"{"type":"response.function_call_arguments.done","response_id":"resp_2","item_id":"item_3","call_id":"call_9","arguments":"{}"}"#,
            r#"{"type":"response.output_item.done","response_id":"resp_2","item":{"id":"item_3","type":"function_call","status":"incomplete","name":"end_call","call_id":"call_9","arguments":"{"}}"#,
            r#"{"type":"response.output_item.done","response_id":"resp_2","item":{"id":"item_4","type":"message","role":"assistant","status":"completed"}}"#,
        ] {
            assert!(
                matches!(parse(other).unwrap(), ServerEvent::Unknown { .. }),
                "{other}"
            );
        }
        let created = parse(r#"{"type":"response.created","response":{"id":"resp_5","metadata":{"warmline":"wl_create_3"}}}"#).unwrap();
        assert_eq!(
            created,
            ServerEvent::ResponseCreated {
                response_id: "resp_5".into(),
                tag: Some("wl_create_3".into())
            }
        );
        let err = parse(r#"{"type":"error","error":{"type":"invalid_request_error","code":"conversation_already_has_active_response","message":"m","event_id":"wl_create_3"}}"#).unwrap();
        assert!(
            matches!(err, ServerEvent::Error { event_id: Some(ref e), .. } if e == "wl_create_3")
        );
    }

    #[test]
    fn client_events_encode() {
        let a: Value = serde_json::from_str(&append("//7+/v7+/v4=")).unwrap();
        assert_eq!(
            a,
            json!({"type": "input_audio_buffer.append", "audio": "//7+/v7+/v4="})
        );
        let t: Value = serde_json::from_str(&truncate("item_1", 1500)).unwrap();
        assert_eq!(
            t,
            json!({"type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0, "audio_end_ms": 1500})
        );
        let u: Value = serde_json::from_str(&user_text("(caller pressed 1)")).unwrap();
        assert_eq!(u["item"]["content"][0]["type"], "input_text");
        let r: Value = serde_json::from_str(&response_create(Some("Greet \"Dana\""))).unwrap();
        assert_eq!(r["response"]["instructions"], "Greet \"Dana\"");
    }

    #[test]
    fn server_events_parse() {
        let d = parse(r#"{"type":"response.output_audio.delta","event_id":"e","response_id":"resp_1","item_id":"item_1","output_index":0,"content_index":0,"delta":"AAAA"}"#).unwrap();
        assert!(
            matches!(
                &d,
                ServerEvent::AudioDelta {
                    delta: Cow::Borrowed("AAAA"),
                    ..
                }
            ),
            "{d:?}"
        );
        let done = parse(r#"{"type":"response.done","response":{"id":"resp_1","status":"cancelled","status_details":{"type":"cancelled","reason":"turn_detected"}}}"#).unwrap();
        assert_eq!(
            done,
            ServerEvent::ResponseDone {
                response_id: "resp_1".into(),
                status: "cancelled".into(),
                reason: Some("turn_detected".into())
            }
        );
        let err = parse(r#"{"type":"error","error":{"type":"invalid_request_error","code":"session_expired","message":"Your session hit the maximum duration of 60 minutes."}}"#).unwrap();
        assert!(
            matches!(err, ServerEvent::Error { code: Some(ref c), .. } if c == "session_expired")
        );
        assert_eq!(
            parse(r#"{"type":"rate_limits.updated","rate_limits":[]}"#).unwrap(),
            ServerEvent::Unknown {
                kind: "rate_limits.updated".into()
            }
        );
        assert!(parse("nope").is_err());
        assert!(parse(r#"{"type":"response.output_audio.delta"}"#).is_err());
    }
}

#[cfg(test)]
mod props {
    //! Properties of the Realtime event parser (README.md, Security, "Parsers that cannot be
    //! crashed"): nothing panics it, and every known event parses to its variant.
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::{props::text, realtime::proto::Session};

    const TYPES: &[&str] = &[
        "session.created",
        "session.updated",
        "error",
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "conversation.item.input_audio_transcription.completed",
        "response.created",
        "response.output_audio.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.delta",
        "response.output_audio_transcript.done",
        "response.output_item.done",
        "response.done",
    ];

    const FIELDS: &[&str] = &[
        "type",
        "response_id",
        "item_id",
        "delta",
        "transcript",
        "audio_start_ms",
        "audio_end_ms",
        "response",
        "error",
        "item",
        "id",
        "status",
        "status_details",
        "reason",
        "metadata",
        "warmline",
        "code",
        "message",
        "event_id",
        "call_id",
        "name",
        "arguments",
    ];

    /// An event shaped like the server's: a known (or any) type and arbitrary values in the
    /// fields the parser reads.
    fn frame() -> impl Strategy<Value = String> {
        crate::props::json_frame(
            "type",
            TYPES,
            FIELDS,
            &["function_call", "incomplete", "completed"],
        )
    }

    /// Feeds `text` to the parser and to a session in each phase that reads server events.
    fn feed(text: &str) {
        let _ = parse(text);
        let mut warming = Session::new(
            "UPDATE".into(),
            crate::realtime::proto::Greeting::Generate("GREET".into()),
            64,
        );
        warming.handle_open();
        let _ = warming.handle_text(text);
        while warming.poll_event().is_some() {}
        let mut claimed = Session::new(
            "UPDATE".into(),
            crate::realtime::proto::Greeting::Generate("GREET".into()),
            64,
        );
        claimed.handle_open();
        claimed.claim();
        let _ = claimed.handle_text(text);
        while claimed.poll_event().is_some() {}
        while claimed.poll_transmit().is_some() {}
    }

    /// A known event built from arbitrary field values, and what it must parse to.
    fn known_event() -> impl Strategy<Value = (Value, ServerEvent<'static>)> {
        let s = || text(10);
        let opt = || prop::option::of(text(10));
        prop_oneof![
            Just((json!({"type": "session.created", "session": {}}), ServerEvent::SessionCreated)),
            Just((json!({"type": "session.updated", "session": {}}), ServerEvent::SessionUpdated)),
            (s(), opt(), s(), opt()).prop_map(|(kind, code, message, event_id)| (
                json!({"type": "error", "event_id": "evt",
                    "error": {"type": kind, "code": code, "message": message, "event_id": event_id}}),
                ServerEvent::Error { kind, code, message, event_id },
            )),
            (any::<u64>(), s()).prop_map(|(audio_start_ms, item_id)| (
                json!({"type": "input_audio_buffer.speech_started",
                    "audio_start_ms": audio_start_ms, "item_id": item_id}),
                ServerEvent::SpeechStarted { audio_start_ms, item_id },
            )),
            any::<u64>().prop_map(|audio_end_ms| (
                json!({"type": "input_audio_buffer.speech_stopped",
                    "audio_end_ms": audio_end_ms, "item_id": "item_1"}),
                ServerEvent::SpeechStopped { audio_end_ms },
            )),
            (s(), s()).prop_map(|(item_id, transcript)| (
                json!({"type": "conversation.item.input_audio_transcription.completed",
                    "item_id": item_id, "content_index": 0, "transcript": transcript}),
                ServerEvent::CallerTranscript { item_id, transcript },
            )),
            (s(), opt()).prop_map(|(response_id, tag)| (
                json!({"type": "response.created", "response": {"id": response_id,
                    "status": "in_progress", "metadata": tag.as_ref().map(|t| json!({"warmline": t}))}}),
                ServerEvent::ResponseCreated { response_id, tag },
            )),
            (s(), s(), s()).prop_map(|(response_id, item_id, delta)| (
                json!({"type": "response.output_audio.delta", "response_id": response_id,
                    "item_id": item_id, "output_index": 0, "content_index": 0, "delta": delta}),
                ServerEvent::AudioDelta { response_id, item_id, delta: delta.into() },
            )),
            (s(), s()).prop_map(|(response_id, item_id)| (
                json!({"type": "response.output_audio.done", "response_id": response_id,
                    "item_id": item_id}),
                ServerEvent::AudioDone { response_id, item_id },
            )),
            (s(), s()).prop_map(|(item_id, delta)| (
                json!({"type": "response.output_audio_transcript.delta", "response_id": "r",
                    "item_id": item_id, "delta": delta}),
                ServerEvent::AgentTranscriptDelta { item_id, delta },
            )),
            (s(), s()).prop_map(|(item_id, transcript)| (
                json!({"type": "response.output_audio_transcript.done", "response_id": "r",
                    "item_id": item_id, "transcript": transcript}),
                ServerEvent::AgentTranscript { item_id, transcript },
            )),
            (s(), s(), s(), s()).prop_map(|(response_id, call_id, name, arguments)| (
                json!({"type": "response.output_item.done", "response_id": response_id,
                    "output_index": 0, "item": {"id": "item_3", "type": "function_call",
                    "status": "completed", "name": name, "call_id": call_id,
                    "arguments": arguments}}),
                ServerEvent::FunctionCall { response_id, call_id, name, arguments },
            )),
            (s(), s(), opt()).prop_map(|(response_id, status, reason)| (
                json!({"type": "response.done", "response": {"id": response_id,
                    "status": status,
                    "status_details": reason.as_ref().map(|r| json!({"type": "x", "reason": r}))}}),
                ServerEvent::ResponseDone { response_id, status, reason },
            )),
            text(90).prop_filter("not a known type", |k| !TYPES.contains(&k.as_str()))
                .prop_map(|kind| (
                    json!({"type": kind, "x": 1}),
                    ServerEvent::Unknown { kind: kind.chars().take(80).collect() },
                )),
        ]
    }

    proptest! {
        #![proptest_config(crate::props::config(1024))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            feed(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn arbitrary_text_never_panics(s in text(64)) {
            feed(&s);
        }

        #[test]
        fn arbitrary_json_events_never_panic(f in frame()) {
            feed(&f);
        }

        #[test]
        fn each_known_event_parses_to_its_variant((event, expected) in known_event()) {
            let text = event.to_string();
            prop_assert_eq!(parse(&text), Ok(expected));
            feed(&text);
        }
    }
}
