//! The text agent: one person's message in, the business's answer out, on the OpenAI Responses
//! API with Conversations (README "Text channels"; docs/architecture.md, "Text channels").
//!
//! For a message from `identity` to a client, [`TextAgent::answer`]:
//! 1. takes the person's turn (their messages are answered one at a time, in order);
//! 2. builds the agent the voice agent is (the same prompt, hours, FAQs, caller memory when the
//!    identity is a phone number, and the same tools, less the ones that act on a phone call);
//! 3. finds the person's conversation (`store::conversations`) or creates one
//!    (`POST {openai.base_url}/conversations`);
//! 4. sends the message (`POST …/responses`, `stream: true`, `conversation`), reads the stream
//!    ([`super::stream`]), passes each text delta on, runs the function calls with
//!    [`crate::tools::run`] (the voice agent's own implementations) and sends their outputs back,
//!    at most `text.max_tool_rounds` rounds, all within `text.timeout_secs`;
//! 5. on any failure (timeout, an HTTP error, a failed or empty answer, too many rounds) answers
//!    the client's `text_fallback` line instead, and says why in the log and the record;
//! 6. records the exchange as a call row of its channel with its transcript (through the call
//!    writer and its spool: nothing is lost when the database is away), and notes a new
//!    conversation in the caller's memory, so the next call knows the person wrote.
//!
//! Nothing here panics on what the model or the person sends; secrets never reach a log.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use sea_orm::DatabaseConnection;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::stream::{Event, Reader};
use crate::{
    bridge::CallContext,
    config::{Secret, Settings, TextSettings, ToolSettings},
    domain::{CallSid, CallStatus, CallerTrust, Channel, ClientId},
    limits::{Rate, Slot, Slots, Verdict},
    lines::Line,
    realtime::profile::AgentProfile,
    store::{
        callers,
        calls::{FinishedCall, NewCall, TranscriptIn},
        clients::ClientProfile,
        conversations,
        writer::{Job, Writer},
    },
    tools::{self, ToolCall, ToolEnv},
};

/// A conversation idle this long starts a new chat: the caller's memory gets a note of it.
const NEW_CHAT_AFTER: chrono::TimeDelta = chrono::TimeDelta::minutes(30);
/// Longest note of a chat kept in the caller's memory (characters of the first message).
const NOTE_CHARS: usize = 120;
/// Longest error text from the API kept for the log (characters).
const ERROR_CHARS: usize = 200;

/// A message to answer.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// The business.
    pub client: Arc<ClientProfile>,
    /// Where it came from.
    pub channel: Channel,
    /// Who wrote: an E.164 number (WhatsApp, SMS), `web:{session}` or `kommo:lead:{id}`.
    pub identity: String,
    /// Where it was written to: the business's number, `webchat` or `kommo`.
    pub to: String,
    /// The message.
    pub text: String,
}

/// What happens while an answer is made, for channels that show it as it comes.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// More of the answer's text.
    Delta(String),
    /// The agent calls a tool.
    ToolCall {
        /// The tool.
        name: String,
        /// Its arguments (JSON text, as the model wrote them).
        arguments: String,
    },
    /// A tool's result.
    ToolResult {
        /// The tool.
        name: String,
        /// What the model reads.
        output: Value,
    },
}

/// The answer to one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The exchange's id (its call row's `call_sid`, `TX…`).
    pub exchange_id: String,
    /// The person's OpenAI conversation (empty when none could be made).
    pub conversation_id: String,
    /// The text to send back: the model's answer, or the fallback line.
    pub text: String,
    /// Why the fallback line was sent instead of an answer (`None`: answered).
    pub failure: Option<String>,
}

/// Why a message is not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Longer than `text.max_message_chars`.
    TooLong,
    /// Empty or only spaces.
    Empty,
    /// The person is over `text.messages_per_minute`; they may write again after this.
    TooMany(Duration),
    /// The client has `text.concurrent_per_client` answers running.
    Busy,
}

/// A taken message's place: the client's concurrency slot, held until the answer is made.
#[derive(Debug)]
pub struct Admitted {
    _slot: Option<Slot<ClientId>>,
}

/// The text agent, shared by every text channel.
pub struct TextAgent {
    http: reqwest::Client,
    base: String,
    api_key: Secret,
    settings: TextSettings,
    tool_settings: ToolSettings,
    tool_timeout: Duration,
    db: DatabaseConnection,
    writer: Writer,
    outbox_wake: Arc<tokio::sync::Notify>,
    rate: Option<Rate<String>>,
    running: Arc<Slots<ClientId>>,
    turns: DashMap<(ClientId, String), Arc<tokio::sync::Mutex<()>>>,
}

impl std::fmt::Debug for TextAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextAgent")
            .field("base", &self.base)
            .field("model", &self.settings.model)
            .finish_non_exhaustive()
    }
}

impl TextAgent {
    /// The agent on `openai.base_url` with `[text]`'s settings.
    pub fn new(
        settings: &Settings,
        db: DatabaseConnection,
        writer: Writer,
        outbox_wake: Arc<tokio::sync::Notify>,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        let t = &settings.text;
        Ok(Self {
            http,
            base: settings
                .openai
                .base_url
                .as_str()
                .trim_end_matches('/')
                .to_string(),
            api_key: settings.openai.api_key.clone(),
            settings: t.clone(),
            tool_settings: settings.tools.clone(),
            tool_timeout: Duration::from_millis(settings.call.tool_timeout_ms),
            db,
            writer,
            outbox_wake,
            rate: std::num::NonZeroU32::new(t.messages_per_minute).map(Rate::per_minute),
            running: Slots::new(t.concurrent_per_client),
            turns: DashMap::new(),
        })
    }

    /// The text settings.
    pub fn settings(&self) -> &TextSettings {
        &self.settings
    }

    /// Checks a message before anything is sent to the model: its size, the person's rate and
    /// the client's running answers.
    pub fn admit(&self, client: ClientId, identity: &str, text: &str) -> Result<Admitted, Refusal> {
        if text.trim().is_empty() {
            return Err(Refusal::Empty);
        }
        if text.chars().count() > self.settings.max_message_chars {
            return Err(Refusal::TooLong);
        }
        if let Some(rate) = &self.rate
            && let Verdict::Limited { retry_after } = rate.check(format!("{client}\n{identity}"))
        {
            return Err(Refusal::TooMany(retry_after));
        }
        let slot = self.running.try_take(client).ok_or(Refusal::Busy)?;
        Ok(Admitted { _slot: Some(slot) })
    }

    /// Answers `msg`, passing what happens to `progress` as it happens (deltas, tool calls and
    /// results; a closed receiver is fine). Never fails: a failure answers the fallback line.
    pub async fn answer(
        &self,
        msg: Inbound,
        _admitted: Admitted,
        progress: Option<mpsc::UnboundedSender<Progress>>,
    ) -> Answer {
        let client_id = msg.client.id();
        let key = (client_id, msg.identity.clone());
        let turn = self.turns.entry(key.clone()).or_default().clone();
        let answer = {
            let _turn = turn.lock().await;
            self.answer_in_turn(&msg, progress).await
        };
        drop(turn);
        self.turns.remove_if(&key, |_, t| Arc::strong_count(t) == 1);
        answer
    }

    async fn answer_in_turn(
        &self,
        msg: &Inbound,
        progress: Option<mpsc::UnboundedSender<Progress>>,
    ) -> Answer {
        let started = Utc::now();
        let sid = new_exchange_id();
        let exchange_id = sid.to_string();
        let client_id = msg.client.id();
        let rememberable = callers::remembers(&msg.identity);
        let trust = match msg.channel {
            // WhatsApp numbers are verified by WhatsApp; an SMS sender can be spoofed.
            Channel::Whatsapp => CallerTrust::Verified,
            _ if rememberable => CallerTrust::Unverified,
            _ => CallerTrust::Verified,
        };
        let caller = if rememberable {
            match callers::get_caller(&self.db, client_id, &msg.identity).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(exchange = %exchange_id, error = %e, "text: caller memory lookup failed; answering without it");
                    None
                }
            }
        } else {
            None
        };
        let mut profile = AgentProfile::new(&msg.client, caller, trust, rememberable);
        profile.tools.text = true;
        let language = profile.language.clone();
        let fallback_line = profile.lines.text(Line::TextFallback, &language);
        let context = Arc::new(CallContext {
            call_sid: sid,
            client_id,
            from: msg.identity.clone(),
            to: msg.to.clone(),
            profile,
            started_at: started,
            live_slot: None,
            greeting: crate::greeting::GreetingPlan::GENERATE,
            trace: None,
            timeline: Default::default(),
        });
        let mut run = Run {
            agent: self,
            msg,
            context: context.clone(),
            progress,
            transcript: vec![TranscriptIn {
                role: "caller".into(),
                text: msg.text.clone(),
                at: started,
            }],
            conversation: None,
        };
        let outcome = tokio::time::timeout(self.settings.timeout(), run.turns(started)).await;
        let (text, failure) = match outcome {
            Ok(Ok(text)) => (text, None),
            Ok(Err(why)) => (fallback_line, Some(why)),
            Err(_) => (
                fallback_line,
                Some(format!(
                    "no answer within text.timeout_secs ({} s)",
                    self.settings.timeout_secs
                )),
            ),
        };
        let ended = Utc::now();
        match &failure {
            None => {
                tracing::info!(exchange = %exchange_id, client = %client_id, channel = %msg.channel, ms = (ended - started).num_milliseconds(), "text: answered");
            }
            Some(why) => {
                tracing::warn!(exchange = %exchange_id, client = %client_id, channel = %msg.channel, reason = %why, "text: answer failed; the fallback line was sent");
                run.transcript.push(TranscriptIn {
                    role: "system".into(),
                    text: format!("no answer: {why}"),
                    at: ended,
                });
            }
        }
        run.transcript.push(TranscriptIn {
            role: "agent".into(),
            text: text.clone(),
            at: ended,
        });
        let conversation = run.conversation.clone();
        let transcript = std::mem::take(&mut run.transcript);
        self.record(msg, &exchange_id, started, ended, transcript, &failure);
        if let Some(conv) = &conversation {
            self.note_chat(msg, conv, started).await;
        }
        Answer {
            exchange_id,
            conversation_id: conversation.map(|c| c.conversation_id).unwrap_or_default(),
            text,
            failure,
        }
    }

    /// Queues the exchange's call row and transcript on the call writer.
    fn record(
        &self,
        msg: &Inbound,
        exchange_id: &str,
        started: DateTime<Utc>,
        ended: DateTime<Utc>,
        transcript: Vec<TranscriptIn>,
        failure: &Option<String>,
    ) {
        let call = NewCall {
            call_sid: exchange_id.to_string(),
            client_id: Some(msg.client.id()),
            from: msg.identity.clone(),
            to: msg.to.clone(),
            status: CallStatus::Ringing,
            started_at: started,
            caller_trust: None,
            channel: msg.channel,
        };
        let summary: String = msg.text.trim().chars().take(NOTE_CHARS).collect();
        let finished = FinishedCall {
            call,
            stream_sid: None,
            status: CallStatus::Completed,
            path: None,
            time_to_first_audio_ms: None,
            answered_at: Some(started),
            ended_at: ended,
            duration_ms: Some((ended - started).num_milliseconds()),
            end_reason: if failure.is_some() {
                "fallback".into()
            } else {
                "answered".into()
            },
            summary: Some(summary),
            transcript,
            remember: None,
            timeline: None,
        };
        if !self.writer.enqueue(Job::Finish(Box::new(finished))) {
            tracing::error!(exchange = %exchange_id, "text: the exchange could not be queued for saving");
        }
    }

    /// Marks the exchange on the conversation; when it had been idle (or is new), notes the
    /// chat in the caller's memory so the next call knows of it.
    async fn note_chat(
        &self,
        msg: &Inbound,
        conv: &conversations::Conversation,
        started: DateTime<Utc>,
    ) {
        let fresh =
            started - conv.updated_at >= NEW_CHAT_AFTER || conv.created_at == conv.updated_at;
        if let Err(e) = conversations::touch(&self.db, conv.id, Utc::now()).await {
            tracing::warn!(error = %e, "text: could not mark the conversation");
        }
        if !fresh || !callers::remembers(&msg.identity) {
            return;
        }
        let words: String = msg.text.trim().chars().take(NOTE_CHARS).collect();
        let note = format!("wrote on {}: {words}", msg.channel);
        if let Err(e) = callers::remember(
            &self.db,
            msg.client.id(),
            &msg.identity,
            None,
            Some(&note),
            started,
        )
        .await
        {
            tracing::warn!(error = %e, "text: could not note the chat in the caller's memory");
        }
    }

    fn post(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(self.api_key.expose())
            .json(body)
    }
}

/// One answer being made.
struct Run<'a> {
    agent: &'a TextAgent,
    msg: &'a Inbound,
    context: Arc<CallContext>,
    progress: Option<mpsc::UnboundedSender<Progress>>,
    transcript: Vec<TranscriptIn>,
    conversation: Option<conversations::Conversation>,
}

impl Run<'_> {
    fn tell(&self, p: Progress) {
        if let Some(tx) = &self.progress {
            let _ = tx.send(p);
        }
    }

    /// The conversation, then rounds of the model until it answers: the answer's text, or why
    /// there is none.
    async fn turns(&mut self, started: DateTime<Utc>) -> Result<String, String> {
        let conv = self.conversation().await?;
        let conversation_id = conv.conversation_id.clone();
        self.conversation = Some(conv);
        let profile = &self.context.profile;
        let instructions = profile.text_instructions(self.msg.channel, started);
        let tools = profile.tools.definitions();
        let mut input = json!([{"type": "message", "role": "user", "content": self.msg.text}]);
        let max = self.agent.settings.max_tool_rounds;
        for round in 0..=max {
            let mut body = json!({
                "model": self.agent.settings.model,
                "instructions": instructions,
                "input": input,
                "conversation": conversation_id,
                "stream": true,
            });
            if !tools.is_empty() {
                body["tools"] = Value::Array(tools.clone());
            }
            let calls = self.round(&body).await?;
            match calls {
                Round::Answered(text) => return Ok(text),
                Round::Calls(calls) if round < max => {
                    let mut outputs = Vec::with_capacity(calls.len());
                    for call in calls {
                        let output = self.run_tool(call.clone()).await;
                        outputs.push(json!({"type": "function_call_output",
                            "call_id": call.call_id, "output": output.to_string()}));
                    }
                    input = Value::Array(outputs);
                }
                Round::Calls(_) => break,
            }
        }
        Err(format!(
            "still calling tools after text.max_tool_rounds ({max})"
        ))
    }

    /// The person's conversation: the one kept, or a new one.
    async fn conversation(&self) -> Result<conversations::Conversation, String> {
        let db = &self.agent.db;
        let client_id = self.msg.client.id();
        match conversations::find(db, client_id, &self.msg.identity).await {
            Ok(Some(c)) => return Ok(c),
            Ok(None) => {}
            Err(e) => return Err(format!("reading the conversation: {e}")),
        }
        let body = json!({"metadata": {
            "client": client_id.to_string(),
            "channel": self.msg.channel.as_str(),
        }});
        let resp = self
            .agent
            .post("/conversations", &body)
            .send()
            .await
            .map_err(|e| format!("creating the conversation: {}", describe(e)))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| format!("creating the conversation: {}", describe(e)))?;
        if !status.is_success() {
            return Err(format!(
                "creating the conversation: HTTP {} {}",
                status.as_u16(),
                api_error(&text)
            ));
        }
        let id = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_string))
            .filter(|id| !id.is_empty() && id.len() <= 200)
            .ok_or("creating the conversation: the answer has no id")?;
        conversations::save(
            db,
            client_id,
            &self.msg.identity,
            self.msg.channel,
            &id,
            Utc::now(),
        )
        .await
        .map_err(|e| format!("keeping the conversation: {e}"))
    }

    /// One request to the model, read as it streams.
    async fn round(&mut self, body: &Value) -> Result<Round, String> {
        let mut resp = self
            .agent
            .post("/responses", body)
            .send()
            .await
            .map_err(describe)?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(format!("HTTP {} {}", status.as_u16(), api_error(&text)));
        }
        let mut reader = Reader::new();
        let mut calls = Vec::new();
        loop {
            let chunk = resp.chunk().await.map_err(describe)?;
            let Some(chunk) = chunk else {
                return Err("the stream ended before the answer completed".into());
            };
            for event in reader.feed(&chunk) {
                match event {
                    Event::Delta(d) => self.tell(Progress::Delta(d)),
                    Event::Call {
                        call_id,
                        name,
                        arguments,
                    } => calls.push(ToolCall {
                        call_id,
                        name,
                        arguments,
                        agent: String::new(),
                    }),
                    Event::Completed { text, .. } => {
                        if !calls.is_empty() {
                            return Ok(Round::Calls(calls));
                        }
                        if text.trim().is_empty() {
                            return Err("the model answered nothing (a refusal?)".into());
                        }
                        return Ok(Round::Answered(text));
                    }
                    Event::Failed(why) => return Err(why),
                }
            }
        }
    }

    /// Runs one tool call as the voice agent would (same implementation, same time limit).
    async fn run_tool(&mut self, call: ToolCall) -> Value {
        self.tell(Progress::ToolCall {
            name: call.name.clone(),
            arguments: call.arguments.clone(),
        });
        let env = ToolEnv {
            db: self.agent.db.clone(),
            context: self.context.clone(),
            outbox_wake: self.agent.outbox_wake.clone(),
            settings: self.agent.tool_settings.clone(),
        };
        let output = match tokio::time::timeout(
            self.agent.tool_timeout,
            tools::run(&env, &call, Utc::now()),
        )
        .await
        {
            Ok(result) => result.output,
            Err(_) => json!({"error": {"code": "timeout",
                "message": "The tool took too long; tell the person you could not check."}}),
        };
        let name: String = call.name.chars().take(64).collect();
        let now = Utc::now();
        self.transcript.push(TranscriptIn {
            role: "system".into(),
            text: format!("tool {name}({}) → {output}", call.arguments),
            at: now,
        });
        self.tell(Progress::ToolResult {
            name,
            output: output.clone(),
        });
        output
    }
}

/// What one round gave.
enum Round {
    Answered(String),
    Calls(Vec<ToolCall>),
}

/// `TX` and 32 hex digits: an exchange's id, the `call_sid` of its row.
fn new_exchange_id() -> CallSid {
    let mut b = [0u8; 16];
    rand::fill(&mut b);
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    CallSid::parse(format!("TX{hex}")).expect("TX and 32 hex digits is a valid SID")
}

/// A transport error without its URL (which names no secret, but is noise in the log).
fn describe(e: reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "could not connect".into()
    } else {
        e.without_url().to_string()
    }
}

/// The `error.message` of an OpenAI error body, shortened.
fn api_error(body: &str) -> String {
    let msg = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_default();
    msg.chars().take(ERROR_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchange_ids_are_call_sids_and_distinct() {
        let a = new_exchange_id().to_string();
        let b = new_exchange_id().to_string();
        assert_ne!(a, b);
        assert_eq!(a.len(), 34);
        assert!(a.starts_with("TX"));
        assert!(a[2..].bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn api_errors_are_read_and_bounded() {
        assert_eq!(
            api_error(r#"{"error": {"message": "Rate limit reached", "type": "x"}}"#),
            "Rate limit reached"
        );
        assert_eq!(api_error("<html>"), "");
        let long = format!(r#"{{"error": {{"message": "{}"}}}}"#, "x".repeat(500));
        assert_eq!(api_error(&long).len(), ERROR_CHARS);
    }
}
