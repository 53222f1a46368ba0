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
        calls::{ChatExchange, FinishedCall, NewCall, TranscriptIn},
        clients::ClientProfile,
        conversations,
        writer::{Job, Writer},
    },
    tools::{self, ToolCall, ToolEnv},
};

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
    /// Made as a background response (`background: true`), delivered when OpenAI's webhook
    /// says it is done or a poll finds it done (the channels that send the answer on: WhatsApp,
    /// SMS, Kommo); else streamed (the web chat).
    pub background: bool,
}

/// How often a background response is polled when OpenAI's webhook announces it
/// (`openai.webhook_secret` set: a lost event costs this long at most) and when it does not.
const POLL_WITH_WEBHOOK: Duration = Duration::from_secs(15);
const POLL_WITHOUT_WEBHOOK: Duration = Duration::from_secs(1);
/// The pauses before a turn refused for a response in progress on the person's conversation
/// is asked again (OpenAI: "Please retry in a few seconds"); the last one repeats, for as long
/// as `text.timeout_secs` leaves.
const LOCKED_PAUSES: [Duration; 3] = [
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];
/// Webhook events and early announcements are remembered this long.
const REMEMBERED: Duration = Duration::from_secs(600);
/// Most of them remembered; past it the ones older than [`REMEMBERED`] are forgotten.
const REMEMBERED_MAX: usize = 10_000;

/// When a delta was read from the model's stream, for `warmline_text_delta_delay_seconds`:
/// microseconds since the process first asked, in 32 bits so that a queued delta stays as small
/// as a tool's event (it wraps after 71 minutes; the difference is taken wrapping, and no delta
/// waits that long).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadAt(u32);

impl ReadAt {
    fn epoch() -> std::time::Instant {
        static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        *EPOCH.get_or_init(std::time::Instant::now)
    }

    /// Now.
    pub fn now() -> Self {
        Self(Self::epoch().elapsed().as_micros() as u32)
    }

    /// The time since.
    pub fn elapsed(self) -> std::time::Duration {
        self.until(Self::now())
    }

    /// The time from this to `later`.
    fn until(self, later: Self) -> std::time::Duration {
        std::time::Duration::from_micros(u64::from(later.0.wrapping_sub(self.0)))
    }
}

/// What happens while an answer is made, for channels that show it as it comes.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// More of the answer's text, and when it was read from the model's stream.
    Delta(String, ReadAt),
    /// The agent calls a tool. Its arguments and output are not told: a page is never shown
    /// them (an operator's tool may return what the agent is not to recite), and an answer
    /// being streamed keeps what it tells queued, so each event is kept small.
    ToolCall {
        /// The tool.
        name: String,
    },
    /// A tool's result.
    ToolResult {
        /// The tool.
        name: String,
        /// It worked (its output is not an `error`).
        ok: bool,
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
    /// The person has a message being answered and another waiting.
    Waiting,
}

/// A taken message's place: the client's concurrency slot, held until the answer is made.
#[derive(Debug)]
pub struct Admitted {
    _slot: Option<Slot<ClientId>>,
}

/// The text agent, shared by every text channel.
pub struct TextAgent {
    /// For the channels' own APIs (Twilio, Kommo).
    http: reqwest::Client,
    /// For the model's API.
    lanes: super::lanes::Lanes,
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
    /// Messages waiting in [`TextAgent::admit_waiting`], by person, in the order they came:
    /// only a person's first may take a place.
    queued: DashMap<(ClientId, String), std::collections::VecDeque<u64>>,
    next_ticket: std::sync::atomic::AtomicU64,
    /// Told when a message leaves `queued`.
    queue_moved: tokio::sync::Notify,
    /// Background responses waited for (or announced before their wait began), by id.
    waiters: DashMap<String, (Arc<tokio::sync::Notify>, std::time::Instant)>,
    /// Webhook events received (`webhook-id`), so a replay is refused.
    events_seen: DashMap<String, std::time::Instant>,
    /// `openai.webhook_secret` is set: background responses are announced.
    webhook: bool,
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
        // The lanes' and the tools' TLS roots, read now rather than in the first answer.
        crate::tls::warm();
        let t = &settings.text;
        Ok(Self {
            http,
            lanes: super::lanes::Lanes::new(t.http2, settings.openai.base_url.scheme() == "http"),
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
            queued: DashMap::new(),
            next_ticket: Default::default(),
            queue_moved: tokio::sync::Notify::new(),
            waiters: DashMap::new(),
            events_seen: DashMap::new(),
            webhook: !settings.openai.webhook_secret.is_empty(),
        })
    }

    /// The text settings.
    pub fn settings(&self) -> &TextSettings {
        &self.settings
    }

    /// OpenAI's webhook says background response `id` is done (completed, failed, incomplete or
    /// cancelled): its wait ends now. Announced before its wait began, it is kept (a while) for
    /// the wait to find.
    pub fn response_done(&self, id: &str) {
        prune(&self.waiters, |(_, at)| *at);
        self.waiters
            .entry(id.to_string())
            .or_insert_with(|| (Arc::default(), std::time::Instant::now()))
            .0
            .notify_one();
    }

    /// Whether webhook event `id` is new (false: a replay, refused); it is remembered.
    pub fn first_event(&self, id: &str) -> bool {
        prune(&self.events_seen, |at| *at);
        self.events_seen
            .insert(id.to_string(), std::time::Instant::now())
            .is_none()
    }

    /// The HTTP client (redirects not followed), for the channels' own APIs.
    pub fn http(&self) -> reqwest::Client {
        self.http.clone()
    }

    /// Checks a message before anything is sent to the model: its size, the person's earlier
    /// messages still waiting (one may wait behind the one being answered), the client's
    /// running answers, and last the person's rate (so a refusal for another reason does not
    /// count against it).
    pub fn admit(&self, client: ClientId, identity: &str, text: &str) -> Result<Admitted, Refusal> {
        if text.trim().is_empty() {
            return Err(Refusal::Empty);
        }
        if text.chars().count() > self.settings.max_message_chars {
            return Err(Refusal::TooLong);
        }
        // The map's own handle, the answer running, one waiting: no more.
        if self
            .turns
            .get(&(client, identity.to_string()))
            .is_some_and(|t| Arc::strong_count(&t) > 2)
        {
            return Err(Refusal::Waiting);
        }
        let slot = self.running.try_take(client).ok_or(Refusal::Busy)?;
        if let Some(rate) = &self.rate
            && let Verdict::Limited { retry_after } = rate.check(format!("{client}\n{identity}"))
        {
            return Err(Refusal::TooMany(retry_after));
        }
        Ok(Admitted { _slot: Some(slot) })
    }

    /// [`TextAgent::admit`], waiting up to `limit` while the client is busy or the person's
    /// earlier messages wait (for channels that acknowledged the message already). Asked again
    /// each time an answer ends (its client's place is given back after its person's turn) or
    /// a waiting message leaves, and at least every second. A person's waiting messages are
    /// taken in the order they came: only the first of them asks.
    pub async fn admit_waiting(
        &self,
        client: ClientId,
        identity: &str,
        text: &str,
        limit: Duration,
    ) -> Result<Admitted, Refusal> {
        let until = tokio::time::Instant::now() + limit;
        let key = (client, identity.to_string());
        let ticket = self
            .next_ticket
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.queued
            .entry(key.clone())
            .or_default()
            .push_back(ticket);
        let _queued = Queued {
            agent: self,
            key: key.clone(),
            ticket,
        };
        loop {
            let freed = self.running.freed();
            let moved = self.queue_moved.notified();
            tokio::pin!(freed, moved);
            freed.as_mut().enable();
            moved.as_mut().enable();
            let first = self
                .queued
                .get(&key)
                .is_none_or(|q| q.front() == Some(&ticket));
            let admitted = match first {
                true => self.admit(client, identity, text),
                false => Err(Refusal::Waiting),
            };
            match admitted {
                Err(Refusal::Busy | Refusal::Waiting) if tokio::time::Instant::now() < until => {
                    let backstop =
                        (tokio::time::Instant::now() + Duration::from_secs(1)).min(until);
                    tokio::select! {
                        _ = freed => {}
                        _ = moved => {}
                        _ = tokio::time::sleep_until(backstop) => {}
                    }
                }
                other => return other,
            }
        }
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
        let profile = Box::pin(self.profile(msg, &exchange_id)).await;
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
            chat: ChatPlace::Continues,
            pending: Vec::new(),
            said: Vec::new(),
        };
        let outcome = tokio::time::timeout(self.settings.timeout(), run.turns(started)).await;
        // Calls the model made whose outputs never went back would block the conversation's
        // next turn: they are answered now.
        if !run.pending.is_empty()
            && let Some(conv) = &run.conversation
        {
            Box::pin(self.close_calls(&exchange_id, &conv.conversation_id, &run.pending)).await;
        }
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
            }
        }
        close_transcript(&mut run.transcript, failure.as_deref(), &text, ended);
        let conversation = run.conversation.clone();
        let transcript = std::mem::take(&mut run.transcript);
        // Where the exchange stands in the person's chat: a new conversation, or one quiet for
        // `text.chat_idle_secs`, starts a chat (noted in the caller's memory, and summarised
        // when it ends); each exchange puts the summary off until the chat has been quiet.
        let chat = conversation
            .as_ref()
            .map(|_| run.chat.exchange(ended + self.settings.chat_idle()));
        let note = chat
            .filter(|c| c.starts && callers::remembers(&msg.identity))
            .map(|_| {
                let words: String = msg.text.trim().chars().take(NOTE_CHARS).collect();
                format!("wrote on {}: {words}", msg.channel)
            });
        self.record(
            msg,
            &exchange_id,
            (started, ended),
            transcript,
            &failure,
            chat,
            note.as_deref(),
        );
        if let Some(conv) = &conversation {
            Box::pin(self.note_chat(msg, conv, note.as_deref(), started)).await;
        }
        Answer {
            exchange_id,
            conversation_id: conversation.map(|c| c.conversation_id).unwrap_or_default(),
            text,
            failure,
        }
    }

    /// The agent for `msg`: its client's, knowing the person when their identity is
    /// remembered (a phone number), with the text channels' tools.
    async fn profile(&self, msg: &Inbound, exchange_id: &str) -> AgentProfile {
        let rememberable = callers::remembers(&msg.identity);
        let trust = match msg.channel {
            // WhatsApp numbers are verified by WhatsApp; an SMS sender can be spoofed.
            Channel::Whatsapp => CallerTrust::Verified,
            _ if rememberable => CallerTrust::Unverified,
            _ => CallerTrust::Verified,
        };
        let caller = if rememberable {
            match Box::pin(callers::get_caller(
                &self.db,
                msg.client.id(),
                &msg.identity,
            ))
            .await
            {
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
        profile
    }

    /// The answer to a message that waited `text.timeout_secs` for a busy business (or behind
    /// the person's own) and was not taken, for channels that acknowledged it already: the
    /// fallback line, so the person is not left without a word, and the exchange recorded as
    /// failed, so the business sees it. Nothing goes to the model.
    /// `received`: when the message was taken (the exchange's start).
    pub async fn unanswered(
        &self,
        msg: &Inbound,
        refusal: Refusal,
        received: DateTime<Utc>,
    ) -> Answer {
        let started = received;
        let exchange_id = new_exchange_id().to_string();
        let profile = Box::pin(self.profile(msg, &exchange_id)).await;
        let text = profile.lines.text(Line::TextFallback, &profile.language);
        let why = match refusal {
            Refusal::Busy => format!(
                "the business had text.concurrent_per_client ({}) answers running for text.timeout_secs ({} s)",
                self.settings.concurrent_per_client, self.settings.timeout_secs
            ),
            Refusal::Waiting => format!(
                "the person's earlier messages were still waiting after text.timeout_secs ({} s)",
                self.settings.timeout_secs
            ),
            other => format!("refused: {other:?}"),
        };
        let ended = Utc::now();
        let mut transcript = vec![TranscriptIn {
            role: "caller".into(),
            text: msg.text.clone(),
            at: started,
        }];
        close_transcript(&mut transcript, Some(&why), &text, ended);
        let failure = Some(why);
        tracing::warn!(exchange = %exchange_id, client = %msg.client.id(), channel = %msg.channel, reason = ?failure, "text: not answered in time; the fallback line is sent");
        self.record(
            msg,
            &exchange_id,
            (started, ended),
            transcript,
            &failure,
            None,
            None,
        );
        Answer {
            exchange_id,
            conversation_id: String::new(),
            text,
            failure,
        }
    }

    /// Queues the exchange's call row and transcript on the call writer. Its summary is the
    /// memory `note` when it starts a chat (the note the chat's summary replaces,
    /// `crate::post_call`), else the start of the message.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        msg: &Inbound,
        exchange_id: &str,
        (started, ended): (DateTime<Utc>, DateTime<Utc>),
        transcript: Vec<TranscriptIn>,
        failure: &Option<String>,
        chat: Option<ChatExchange>,
        note: Option<&str>,
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
        let summary = match note {
            Some(note) => callers::dated_note(started, note),
            None => msg.text.trim().chars().take(NOTE_CHARS).collect(),
        };
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
            chat,
        };
        if !self.writer.enqueue(Job::Finish(Box::new(finished))) {
            tracing::error!(exchange = %exchange_id, "text: the exchange could not be queued for saving");
        }
    }

    /// Marks the exchange on the conversation, and puts the `note` of a chat it starts in the
    /// caller's memory so the next call knows of it.
    async fn note_chat(
        &self,
        msg: &Inbound,
        conv: &conversations::Conversation,
        note: Option<&str>,
        started: DateTime<Utc>,
    ) {
        if let Err(e) = conversations::touch(&self.db, conv.id, Utc::now()).await {
            tracing::warn!(error = %e, "text: could not mark the conversation");
        }
        let Some(note) = note else { return };
        if let Err(e) = callers::remember(
            &self.db,
            msg.client.id(),
            &msg.identity,
            None,
            Some(note),
            started,
        )
        .await
        {
            tracing::warn!(error = %e, "text: could not note the chat in the caller's memory");
        }
    }

    /// Answers `calls` of `conversation` with an error output (the answer was cut short), so
    /// the person's next message is not refused for calls left open. Bounded; a failure is
    /// logged (the next turn then fails too, and is tried again the same way).
    async fn close_calls(&self, exchange: &str, conversation: &str, calls: &[String]) -> bool {
        let output = json!({"error": {"code": "not_run",
            "message": "The answer was cut short before this tool's result was used."}})
        .to_string();
        let path = format!("/conversations/{conversation}/items");
        // The API takes at most 20 items at a time.
        for chunk in calls.chunks(20) {
            let items: Vec<Value> = chunk
                .iter()
                .map(|id| json!({"type": "function_call_output", "call_id": id, "output": output}))
                .collect();
            let lane = match self.lanes.lease() {
                Ok(lane) => lane,
                Err(why) => {
                    tracing::warn!(exchange = %exchange, error = %why, "text: could not close the open tool calls");
                    return false;
                }
            };
            let sent = tokio::time::timeout(
                Duration::from_secs(10),
                self.post(&lane, &path, &json!({"items": items})).send(),
            )
            .await;
            match sent {
                Ok(Ok(r)) if r.status().is_success() => {}
                Ok(Ok(r)) => {
                    tracing::warn!(exchange = %exchange, status = r.status().as_u16(), "text: could not close the open tool calls");
                    return false;
                }
                Ok(Err(e)) => {
                    tracing::warn!(exchange = %exchange, error = %describe(e), "text: could not close the open tool calls");
                    return false;
                }
                Err(_) => {
                    tracing::warn!(exchange = %exchange, "text: closing the open tool calls timed out");
                    return false;
                }
            }
        }
        tracing::info!(exchange = %exchange, calls = calls.len(), "text: open tool calls closed on the conversation");
        true
    }

    /// Deletes OpenAI conversations (a privacy request: `store::callers::delete_caller`
    /// forgot them here). Each failure is logged; a conversation already gone counts as done.
    pub async fn delete_conversations(&self, ids: Vec<String>) {
        for id in ids {
            let lane = match self.lanes.lease() {
                Ok(lane) => lane,
                Err(why) => {
                    tracing::error!(conversation = %id, error = %why, "text: could not delete the conversation at OpenAI; delete it by hand");
                    continue;
                }
            };
            let r = tokio::time::timeout(
                Duration::from_secs(10),
                lane.http
                    .delete(format!("{}/conversations/{id}", self.base))
                    .bearer_auth(self.api_key.expose())
                    .send(),
            )
            .await;
            match r {
                Ok(Ok(r)) if r.status().is_success() || r.status().as_u16() == 404 => {
                    tracing::info!(conversation = %id, "text: conversation deleted at OpenAI");
                }
                Ok(Ok(r)) => {
                    tracing::error!(conversation = %id, status = r.status().as_u16(), "text: could not delete the conversation at OpenAI; delete it by hand");
                }
                Ok(Err(e)) => {
                    tracing::error!(conversation = %id, error = %describe(e), "text: could not delete the conversation at OpenAI; delete it by hand");
                }
                Err(_) => {
                    tracing::error!(conversation = %id, "text: deleting the conversation at OpenAI timed out; delete it by hand");
                }
            }
        }
    }

    fn post(
        &self,
        lane: &super::lanes::Leased,
        path: &str,
        body: &impl serde::Serialize,
    ) -> reqwest::RequestBuilder {
        lane.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(self.api_key.expose())
            .json(body)
    }
}

/// A request to the Responses API (`POST /responses`), borrowed from the answer being made.
#[derive(Clone, Copy, serde::Serialize)]
struct Ask<'a> {
    model: &'a str,
    instructions: &'a str,
    input: &'a Value,
    conversation: &'a str,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    background: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<&'a serde_json::value::RawValue>,
}

/// Where an exchange stands in the person's chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChatPlace {
    /// It starts a chat (and holds its summary job); the person's exchanges after the time
    /// given are of this chat.
    Starts(DateTime<Utc>),
    /// It follows the chat's earlier exchanges.
    Continues,
    /// It came at the same moment as the exchange that starts the chat, on another instance.
    Joins,
}

impl ChatPlace {
    /// What the call record says of it (`store::post_call::chat_exchange`), summarised at
    /// `summary_due` if no message follows.
    fn exchange(self, summary_due: DateTime<Utc>) -> ChatExchange {
        ChatExchange {
            starts: matches!(self, Self::Starts(_)),
            summary_due,
            since: match self {
                Self::Starts(since) => Some(since),
                _ => None,
            },
            joins: self == Self::Joins,
        }
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
    /// Where this exchange stands in the person's chat ([`Run::chat_place`]).
    chat: ChatPlace,
    /// The calls of the last round whose outputs the model has not taken yet.
    pending: Vec<String>,
    /// What the model said in rounds that ended in tool calls ("One moment, I'll check.").
    said: Vec<String>,
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
        let conv = Box::pin(self.conversation()).await?;
        let conversation_id = conv.conversation_id.clone();
        self.chat = Box::pin(self.chat_place(&conv, started)).await;
        self.conversation = Some(conv);
        let profile = &self.context.profile;
        let mut instructions = profile.text_instructions(self.msg.channel, started);
        instructions.shrink_to_fit();
        // Kept as JSON text, not as a tree of values: an answer holds them while it streams.
        let tools = {
            let defs = profile.tools.definitions();
            match defs.is_empty() {
                true => None,
                false => Some(
                    serde_json::value::to_raw_value(&defs)
                        .map_err(|e| format!("writing the tools' definitions: {e}"))?,
                ),
            }
        };
        let mut input = json!([{"type": "message", "role": "user", "content": self.msg.text}]);
        let max = self.agent.settings.max_tool_rounds;
        for round in 0..=max {
            let ask = Ask {
                model: &self.agent.settings.model,
                instructions: &instructions,
                input: &input,
                conversation: &conversation_id,
                stream: true,
                background: None,
                tools: tools.as_deref(),
            };
            let outcome = self.round_repaired(&ask, &conversation_id).await?;
            match outcome {
                Round::Answered(text) => {
                    self.said.push(text);
                    return Ok(self.said.join("\n\n"));
                }
                Round::Calls(calls, text) => {
                    if !text.trim().is_empty() {
                        self.said.push(text);
                    }
                    self.pending = calls.iter().map(|c| c.call_id.clone()).collect();
                    if round == max {
                        break;
                    }
                    let mut outputs = Vec::with_capacity(calls.len());
                    for call in calls {
                        let output = Box::pin(self.run_tool(call.clone())).await;
                        outputs.push(json!({"type": "function_call_output",
                            "call_id": call.call_id, "output": output.to_string()}));
                    }
                    input = Value::Array(outputs);
                }
            }
        }
        Err(format!(
            "still calling tools after text.max_tool_rounds ({max})"
        ))
    }

    /// [`Run::round`], and when the API refuses the turn for a function call left without
    /// its output (an earlier answer cut short where warmline could not see it: a background
    /// response completing after its wait ended), that call is closed and the turn tried again.
    /// A turn refused while another response is in progress on the conversation is asked again
    /// after a pause ([`LOCKED_PAUSES`]) until that one is done, within `text.timeout_secs`: the
    /// person's messages are then answered one after the other, as on one instance. An open
    /// call may be another instance's answer running that tool between its two responses, so
    /// it is waited for the same way, for `call.tool_timeout_ms` and 2 s more, before it is
    /// closed: closed at once, that answer's output would come second.
    async fn round_repaired(&mut self, ask: &Ask<'_>, conversation: &str) -> Result<Round, String> {
        const MARK: &str = "No tool output found for function call ";
        let mut repairs = 0;
        let mut waits = 0;
        let mut open_since: Option<(String, tokio::time::Instant)> = None;
        let grace = self.agent.tool_timeout + Duration::from_secs(2);
        loop {
            let why = match self.round(ask).await {
                Ok(Attempt::Done(round)) => return Ok(round),
                Ok(Attempt::Locked) => {
                    if waits == 0 {
                        tracing::info!(exchange = %self.context.call_sid, conversation, "text: another response is in progress on the conversation (another instance answering this person?); waiting for it");
                    }
                    tokio::time::sleep(LOCKED_PAUSES[waits.min(LOCKED_PAUSES.len() - 1)]).await;
                    waits += 1;
                    continue;
                }
                Err(why) => why,
            };
            let Some(at) = why.find(MARK) else {
                return Err(why);
            };
            let id: String = why[at + MARK.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                .collect();
            if id.is_empty() {
                return Err(why);
            }
            let now = tokio::time::Instant::now();
            let since = match &open_since {
                Some((open, since)) if *open == id => *since,
                _ => {
                    tracing::info!(exchange = %self.context.call_sid, conversation, call = %id, "text: a tool call is open on the conversation (another instance running it?); waiting for its output before closing it");
                    open_since = Some((id.clone(), now));
                    now
                }
            };
            if now - since < grace {
                tokio::time::sleep(LOCKED_PAUSES[waits.min(LOCKED_PAUSES.len() - 1)]).await;
                waits += 1;
                continue;
            }
            if repairs == 20 {
                return Err("still refused for open tool calls after closing 20".into());
            }
            repairs += 1;
            open_since = None;
            let ids = [id];
            let closing =
                self.agent
                    .close_calls(self.context.call_sid.as_str(), conversation, &ids);
            if !Box::pin(closing).await {
                return Err(why);
            }
        }
    }

    /// Where this exchange stands in the person's chat: it starts one when the conversation is
    /// new or has been quiet for `text.chat_idle_secs`, unless another exchange began since
    /// the conversation was read. With several instances, two first messages of a person at
    /// the same moment are one chat: the instance that marks the conversation first starts it
    /// (`conversations::begin`), and the other joins it.
    async fn chat_place(
        &self,
        conv: &conversations::Conversation,
        started: DateTime<Utc>,
    ) -> ChatPlace {
        let idle = self.agent.settings.chat_idle();
        let quiet = conv.created_at == conv.updated_at || started - conv.updated_at >= idle;
        if !quiet {
            return ChatPlace::Continues;
        }
        // Every exchange of the person after this is of the chat: the one before ended earlier.
        let since = conv.updated_at.min(started - idle);
        match conversations::begin(&self.agent.db, conv, Utc::now()).await {
            Ok(true) => ChatPlace::Starts(since),
            Ok(false) => ChatPlace::Joins,
            Err(e) => {
                tracing::warn!(exchange = %self.context.call_sid, error = %e, "text: could not mark the conversation; this exchange starts a chat");
                ChatPlace::Starts(since)
            }
        }
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
        let lane = self.agent.lanes.lease()?;
        let resp = self
            .agent
            .post(&lane, "/conversations", &body)
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
            .filter(|id| {
                (1..=200).contains(&id.len())
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            })
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
    async fn round(&mut self, ask: &Ask<'_>) -> Result<Attempt, String> {
        if self.msg.background {
            return Box::pin(self.round_in_background(ask)).await;
        }
        // The lane is held until the stream is read.
        let lane = self.agent.lanes.lease()?;
        let mut resp = Box::pin(self.agent.post(&lane, "/responses", ask).send())
            .await
            .map_err(describe)?;
        let status = resp.status();
        if !status.is_success() {
            let text = Box::pin(resp.text()).await.unwrap_or_default();
            return refused(status, &text);
        }
        // The request, outputs included, is taken: they are not open any more.
        self.pending.clear();
        let mut reader = Reader::new();
        let mut calls = Vec::new();
        loop {
            let chunk = resp.chunk().await.map_err(describe)?;
            let Some(chunk) = chunk else {
                return Err("the stream ended before the answer completed".into());
            };
            let at = ReadAt::now();
            for event in reader.feed(&chunk) {
                match event {
                    Event::Delta(d) => self.tell(Progress::Delta(d, at)),
                    Event::Call {
                        call_id,
                        name,
                        arguments,
                    } => {
                        self.pending.push(call_id.clone());
                        calls.push(ToolCall {
                            call_id,
                            name,
                            arguments,
                            agent: String::new(),
                        });
                    }
                    Event::Completed { text, .. } => {
                        if !calls.is_empty() {
                            return Ok(Attempt::Done(Round::Calls(calls, text)));
                        }
                        if text.trim().is_empty() {
                            return Err("the model answered nothing (a refusal?)".into());
                        }
                        return Ok(Attempt::Done(Round::Answered(text)));
                    }
                    Event::Failed(why) => return Err(why),
                }
            }
        }
    }

    /// One request to the model as a background response: created, then waited for until
    /// OpenAI's webhook announces it (`TextAgent::response_done`) or a poll finds it done.
    async fn round_in_background(&mut self, ask: &Ask<'_>) -> Result<Attempt, String> {
        let body = Ask {
            background: Some(true),
            stream: false,
            ..*ask
        };
        let agent = self.agent;
        let lane = agent.lanes.lease()?;
        let resp = agent
            .post(&lane, "/responses", &body)
            .send()
            .await
            .map_err(describe)?;
        let status = resp.status();
        let text = resp.text().await.map_err(describe)?;
        // Waiting takes no place on a lane.
        drop(lane);
        if !status.is_success() {
            return refused(status, &text);
        }
        self.pending.clear();
        let mut current: Value = serde_json::from_str(&text)
            .map_err(|_| "the response to a background request is not JSON".to_string())?;
        let id = current["id"]
            .as_str()
            .filter(|id| {
                (1..=200).contains(&id.len())
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            })
            .ok_or("the background response has no id")?
            .to_string();
        let notify = agent
            .waiters
            .entry(id.clone())
            .or_insert_with(|| (Arc::default(), std::time::Instant::now()))
            .0
            .clone();
        let _waiting = Waiting {
            agent,
            id: id.clone(),
        };
        let poll = if agent.webhook {
            POLL_WITH_WEBHOOK
        } else {
            POLL_WITHOUT_WEBHOOK
        };
        loop {
            match super::stream::standing(&current) {
                super::stream::Standing::Pending => {}
                super::stream::Standing::Failed(why) => return Err(why),
                super::stream::Standing::Done { calls, text } => {
                    if !calls.is_empty() {
                        let calls = calls
                            .into_iter()
                            .map(|(call_id, name, arguments)| ToolCall {
                                call_id,
                                name,
                                arguments,
                                agent: String::new(),
                            })
                            .collect();
                        return Ok(Attempt::Done(Round::Calls(calls, text)));
                    }
                    if text.trim().is_empty() {
                        return Err("the model answered nothing (a refusal?)".into());
                    }
                    return Ok(Attempt::Done(Round::Answered(text)));
                }
            }
            tokio::select! {
                _ = notify.notified() => {}
                _ = tokio::time::sleep(poll) => {}
            }
            let lane = agent.lanes.lease()?;
            let got = lane
                .http
                .get(format!("{}/responses/{id}", agent.base))
                .bearer_auth(agent.api_key.expose())
                .timeout(Duration::from_secs(15))
                .send()
                .await;
            match got {
                Ok(r) if r.status().is_success() => {
                    current = r
                        .json()
                        .await
                        .map_err(|_| "a polled response is not JSON".to_string())?;
                }
                // A server error or a lost connection: the next poll tries again.
                Ok(r) if r.status().is_server_error() || r.status().as_u16() == 429 => {}
                Ok(r) => {
                    let status = r.status().as_u16();
                    let text = r.text().await.unwrap_or_default();
                    return Err(format!("polling: HTTP {status} {}", api_error(&text)));
                }
                Err(_) => {}
            }
        }
    }

    /// Runs one tool call as the voice agent would (same implementation, same time limit).
    async fn run_tool(&mut self, call: ToolCall) -> Value {
        self.tell(Progress::ToolCall {
            name: call.name.clone(),
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
            ok: output.get("error").is_none(),
        });
        output
    }
}

/// Forgets entries older than [`REMEMBERED`] once `map` holds [`REMEMBERED_MAX`].
fn prune<V>(map: &DashMap<String, V>, at: impl Fn(&V) -> std::time::Instant) {
    if map.len() >= REMEMBERED_MAX {
        map.retain(|_, v| at(v).elapsed() < REMEMBERED);
    }
}

/// Removes a background response's waiter when its wait ends, however it ends.
struct Waiting<'a> {
    agent: &'a TextAgent,
    id: String,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.agent.waiters.remove(&self.id);
    }
}

/// Ends an exchange's transcript: why there was no answer, if there was none, then what was
/// sent (the answer or the fallback line).
fn close_transcript(
    transcript: &mut Vec<TranscriptIn>,
    failure: Option<&str>,
    sent: &str,
    at: DateTime<Utc>,
) {
    if let Some(why) = failure {
        transcript.push(TranscriptIn {
            role: "system".into(),
            text: format!("no answer: {why}"),
            at,
        });
    }
    transcript.push(TranscriptIn {
        role: "agent".into(),
        text: sent.to_string(),
        at,
    });
}

/// A message's place in [`TextAgent::admit_waiting`]'s queue, left when it is taken, refused
/// or given up (the next of the person's messages may then ask).
struct Queued<'a> {
    agent: &'a TextAgent,
    key: (ClientId, String),
    ticket: u64,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if let Some(mut q) = self.agent.queued.get_mut(&self.key) {
            q.retain(|t| *t != self.ticket);
        }
        self.agent.queued.remove_if(&self.key, |_, q| q.is_empty());
        self.agent.queue_moved.notify_waiters();
    }
}

/// What one round gave.
enum Round {
    /// The answer's text.
    Answered(String),
    /// Tool calls, and what was said before them.
    Calls(Vec<ToolCall>, String),
}

/// What one request to the model came to.
enum Attempt {
    /// A round.
    Done(Round),
    /// Refused, nothing done: a response is in progress on the conversation (400,
    /// `conversation_locked`). With several instances, most likely another one answering the
    /// person's previous message; this turn waits for it (`Run::round_repaired`).
    Locked,
}

/// A refused request to `/responses`: [`Attempt::Locked`] for a conversation busy with another
/// response, else why, for the log and the exchange's record.
fn refused(status: reqwest::StatusCode, body: &str) -> Result<Attempt, String> {
    let code = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_string));
    if status == reqwest::StatusCode::BAD_REQUEST && code.as_deref() == Some("conversation_locked")
    {
        return Ok(Attempt::Locked);
    }
    Err(format!("HTTP {} {}", status.as_u16(), api_error(body)))
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
    fn a_queued_delta_is_no_bigger_than_a_tools_event_and_its_stamp_times_it() {
        // A thousand open streams each keep their queued events: the read time costs no size.
        assert_eq!(
            std::mem::size_of::<Progress>(),
            std::mem::size_of::<(String, bool)>()
        );
        let at = ReadAt::now();
        std::thread::sleep(Duration::from_millis(3));
        let waited = at.elapsed();
        assert!(waited >= Duration::from_millis(3), "{waited:?}");
        // Across the 32-bit wrap, the difference still holds.
        let before_wrap = ReadAt(u32::MAX - 10);
        assert_eq!(before_wrap.until(ReadAt(20)), Duration::from_micros(31));
    }

    #[test]
    fn a_conversation_busy_with_another_response_is_waited_for_and_other_refusals_fail() {
        use reqwest::StatusCode;
        let locked = r#"{"error": {"message": "Another process is currently operating on this conversation. Please retry in a few seconds.", "type": "invalid_request_error", "param": "conversation", "code": "conversation_locked"}}"#;
        assert!(matches!(
            refused(StatusCode::BAD_REQUEST, locked),
            Ok(Attempt::Locked)
        ));
        // Another status with that code, or another code: a failure, its message kept.
        let Err(why) = refused(StatusCode::CONFLICT, locked) else {
            panic!("a 409 is not the lock")
        };
        assert!(why.starts_with("HTTP 409 Another process"), "{why}");
        let other = r#"{"error": {"message": "No tool output found for function call call_1.", "code": null}}"#;
        let Err(why) = refused(StatusCode::BAD_REQUEST, other) else {
            panic!("not the lock")
        };
        assert_eq!(
            why,
            "HTTP 400 No tool output found for function call call_1."
        );
        assert!(refused(StatusCode::BAD_REQUEST, "not json").is_err());
    }

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
