//! `LiveSession`: the sans-IO machine for one OpenAI GPT-Live socket (docs/gpt-live-reference.md
//! §1–§4, §7), the second implementation of the engine seam ([`crate::engine::Engine`]).
//!
//! Lifecycle: Connecting → (socket open) `session.start` sent → Started (`session.started`;
//! the greeting's commentary, or the cached greeting's instructions, go out now) → Ready
//! (started, and the greeting's first speech buffered when it generates one) → Claimed →
//! Closed. Nothing but `session.start` is sent before `session.started`: what the call asks
//! meanwhile waits (caller audio bounded).
//!
//! What differs from Realtime, and where it is handled here:
//! 1. The model's timeline moves only while input audio flows (§3): the loop calls
//!    [`LiveSession::handle_timeout`] every [`TICK`] from [`LiveSession::poll_timeout`]; once
//!    started, when no caller audio was appended for [`FEED_AFTER`], the machine appends μ-law
//!    silence to catch up, one frame a tick.
//! 2. Output is one continuous track, silence included, with no response or item ids (§2.3).
//!    The machine cuts it into utterances: one starts with the first non-silent delta and ends
//!    after [`TURN_GAP_MS`] of silence. Each gets an id, a `ResponseCreated` and a
//!    `ResponseDone`, and its transcript (the output transcript deltas meanwhile) as one line.
//!    Silence outside an utterance is `Event::Silence`, which the call does not send to Twilio
//!    (a greeting it flushed is then never followed by the silence made behind it).
//! 3. No speech events (§2.3): a caller turn starts with an input transcript delta after a gap
//!    of [`TURN_GAP_MS`] of timeline (`SpeechStarted`), every delta moves its end
//!    (`SpeechStopped`), and it is written as one line when the next utterance or turn starts.
//! 4. No truncate, no cancel: the model yields by itself ([`Engine::model_yields`]); `Cancel`
//!    and `Truncate` are ignored.
//! 5. Tools come through Responses delegation (§4): a completed `function_call` item inside a
//!    `response.event` is a `FunctionCall`; the delegation's end its `ResponseDone`; outputs go
//!    back as `response.item.create`, then one `response.create`.
//! 6. A line the call wants said (a hand-off, a goodbye) is a commentary worded as an
//!    instruction; the next utterance is taken for it (`scripted`).

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use super::wire::{self, AppendKind, ServerEvent};
use crate::engine::{Command, Engine, EngineError, EngineKind, Event, Readiness};

/// How often the loop wakes the machine to keep the model's timeline moving.
pub const TICK: Duration = Duration::from_millis(20);

/// Caller audio missing for this long is made up with silence (Twilio sends a frame every
/// 20 ms, silence included; late frames within this are jitter, not a gap, and are not spliced
/// with silence).
pub const FEED_AFTER: Duration = Duration::from_millis(200);

/// One frame of μ-law silence (20 ms, 160 bytes of 0xFF), base64.
pub const SILENCE_FRAME: &str = concat!(
    "////////////////////////////////////////////////////////////////////////////////",
    "////////////////////////////////////////////////////////////////////////////////",
    "/////////////////////////////////////////////////////w==",
);

/// Silence on the output track that ends an utterance, and gap on the input timeline that
/// starts a new caller turn (the rule of docs/gpt-live-reference.md §2.3: ~0.5–0.8 s).
pub const TURN_GAP_MS: u64 = 800;

/// Caller audio and commands held before `session.started` (frames; 5 s of 20 ms audio).
const MAX_HELD: usize = 250;

/// Most non-audio events buffered before a claim.
const MAX_BUFFERED_EVENTS: usize = 512;

/// Error codes after which the session cannot go on (§2.3).
const FATAL: &[&str] = &[
    "insufficient_quota",
    "invalid_api_key",
    "account_deactivated",
    "billing_hard_limit_reached",
    "credit_balance_exhausted",
    "model_not_found",
];

/// What a session does about the greeting once started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Greeting {
    /// Generate it: this commentary, worded as an instruction to speak now (§3).
    Generate(String),
    /// It was played from the cache: this tells the model (instructions), which says nothing.
    Said(String),
    /// Nothing (a session replacing a lost one).
    None,
}

/// Readiness of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Socket not open yet.
    Connecting,
    /// `session.start` sent.
    Open,
    /// `session.started` seen.
    Started,
    /// Started, and the greeting's first speech buffered (or none expected).
    Ready,
    /// A stream took it over.
    Claimed,
    /// Closed.
    Closed,
}

#[derive(Debug)]
struct Utterance {
    id: String,
    text: String,
    silent_ms: u64,
}

#[derive(Debug)]
struct CallerTurn {
    text: String,
    end_ms: u64,
}

/// One GPT-Live session.
#[derive(Debug)]
pub struct LiveSession {
    phase: Phase,
    start: String,
    greeting: Greeting,
    expects_audio: bool,
    greeted: bool,
    /// [`Engine::take_greeted`] reported it.
    greeted_reported: bool,
    started: bool,
    audio_seen: bool,
    ready_reported: bool,
    transmit: VecDeque<String>,
    /// Frames the call sent before `session.started`.
    held: VecDeque<String>,
    events: VecDeque<Event>,
    buffered_bytes: usize,
    buffer_cap: usize,
    dropped_bytes: usize,
    /// The greeting overflowed the buffer before the claim: the rest of it is dropped.
    greeting_cut: bool,
    utterance: Option<Utterance>,
    utterances: u64,
    /// A line was asked for (commentary): the next utterance is it.
    scripted_pending: bool,
    caller: Option<CallerTurn>,
    /// Output timeline, ms (from the output deltas' lengths).
    out_ms: u64,
    /// Function outputs sent since the last `response.create`.
    outputs_pending: bool,
    setup_error: Option<String>,
    /// Ticks without caller audio in a row.
    quiet_ticks: u32,
    /// Caller audio was appended since the last tick.
    heard_since_tick: bool,
    next_tick: Option<Instant>,
    closing: bool,
    /// The Responses model tools are delegated to (a tool-set change re-sends it).
    delegation_model: Option<String>,
    /// μ-law bytes given to the model (caller audio and silence): its timeline.
    input_bytes: u64,
    /// `session.start` carries the conversation so far (a session replacing one): the call's
    /// `Seed` is not sent again.
    history_at_start: bool,
}

impl LiveSession {
    /// A session that will send `start` (a `session.start` frame) when the socket opens, then
    /// what `greeting` asks once started, buffering up to `buffer_cap` bytes (base64) of
    /// greeting audio until claimed.
    pub fn new(start: String, greeting: Greeting, buffer_cap: usize) -> Self {
        Self {
            phase: Phase::Connecting,
            start,
            expects_audio: matches!(greeting, Greeting::Generate(_)),
            greeting,
            greeted: false,
            greeted_reported: false,
            started: false,
            audio_seen: false,
            ready_reported: false,
            transmit: VecDeque::new(),
            held: VecDeque::new(),
            events: VecDeque::new(),
            buffered_bytes: 0,
            buffer_cap,
            dropped_bytes: 0,
            greeting_cut: false,
            utterance: None,
            utterances: 0,
            scripted_pending: false,
            caller: None,
            out_ms: 0,
            outputs_pending: false,
            setup_error: None,
            quiet_ticks: 0,
            heard_since_tick: false,
            next_tick: None,
            closing: false,
            delegation_model: None,
            input_bytes: 0,
            history_at_start: false,
        }
    }

    /// Whether `session.start` carries the conversation so far (a session replacing one): the
    /// call's [`Command::Seed`] is then not sent again.
    pub fn with_history_at_start(mut self, yes: bool) -> Self {
        self.history_at_start = yes;
        self
    }

    /// The Responses model the session delegates its tools to (for a tool-set change,
    /// `session.update` repeats it).
    pub fn with_delegation_model(mut self, model: Option<String>) -> Self {
        self.delegation_model = model;
        self
    }

    /// Current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Bytes of greeting audio dropped over the buffer cap.
    pub fn dropped_bytes(&self) -> usize {
        self.dropped_bytes
    }

    /// Whether the greeting was asked for (generated, billed whether heard or not).
    pub fn greeted(&self) -> bool {
        self.greeted
    }

    /// Why `session.start` was refused, once.
    pub fn poll_setup_error(&mut self) -> Option<String> {
        self.setup_error.take()
    }

    /// True once, the moment the session became ready.
    pub fn poll_ready(&mut self) -> bool {
        if self.ready_reported || !self.started || (self.expects_audio && !self.audio_seen) {
            return false;
        }
        self.ready_reported = true;
        true
    }

    /// The socket opened at `now`: `session.start` goes out, alone.
    pub fn handle_open(&mut self, now: Instant) {
        if self.phase != Phase::Connecting {
            return;
        }
        self.phase = Phase::Open;
        self.transmit.push_back(std::mem::take(&mut self.start));
        self.next_tick = Some(now + TICK);
    }

    fn send(&mut self, frame: String) {
        if self.started {
            self.transmit.push_back(frame);
            return;
        }
        // Before `session.started` nothing else may be sent: held, the oldest audio dropped
        // beyond the bound (control never is).
        self.held.push_back(frame);
        while self.held.len() > MAX_HELD {
            match self
                .held
                .iter()
                .position(|f| f.starts_with(r#"{"type":"session.input_audio.append""#))
            {
                Some(i) => {
                    self.held.remove(i);
                }
                None => break,
            }
        }
    }

    fn on_started(&mut self) {
        self.started = true;
        if self.phase == Phase::Open {
            self.phase = Phase::Started;
        }
        match std::mem::replace(&mut self.greeting, Greeting::None) {
            Greeting::Generate(instruction) => {
                self.transmit
                    .push_back(wire::text_append(AppendKind::Commentary, &instruction));
                self.greeted = true;
            }
            Greeting::Said(what) => self
                .transmit
                .push_back(wire::text_append(AppendKind::Instructions, &what)),
            Greeting::None => {}
        }
        self.transmit.extend(self.held.drain(..));
        self.maybe_ready();
    }

    fn maybe_ready(&mut self) {
        if self.started
            && (self.audio_seen || !self.expects_audio)
            && matches!(self.phase, Phase::Open | Phase::Started)
        {
            self.phase = Phase::Ready;
        }
    }

    /// When the loop must call [`LiveSession::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        if matches!(self.phase, Phase::Closed) || self.closing {
            return None;
        }
        self.next_tick
    }

    /// A tick: once started, silence is appended when the caller's audio is missing, so the
    /// model's timeline keeps moving (rule 1).
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(due) = self.next_tick else { return };
        if now < due {
            return;
        }
        // On the 20 ms grid while on time (lateness does not add up); after a stall, from now
        // (never a burst of catch-up ticks).
        self.next_tick = Some(if now < due + TICK {
            due + TICK
        } else {
            now + TICK
        });
        if !self.started || self.closing {
            return;
        }
        if std::mem::take(&mut self.heard_since_tick) {
            self.quiet_ticks = 0;
            return;
        }
        self.quiet_ticks += 1;
        let feed_from = (FEED_AFTER.as_millis() / TICK.as_millis()) as u32;
        if self.quiet_ticks == feed_from {
            // The frames missed so far, then one a tick.
            for _ in 0..feed_from {
                self.transmit.push_back(wire::append(SILENCE_FRAME));
            }
            self.input_bytes += 160 * u64::from(feed_from);
        } else if self.quiet_ticks > feed_from {
            self.transmit.push_back(wire::append(SILENCE_FRAME));
            self.input_bytes += 160;
        }
    }

    /// Applies one server frame.
    pub fn handle_text(&mut self, text: &str) -> Result<(), wire::WireError> {
        match wire::parse(text)? {
            ServerEvent::SessionStarted { expires_at } => {
                self.on_started();
                if let Some(at_unix_secs) = expires_at {
                    self.push(Event::Expires { at_unix_secs });
                }
            }
            ServerEvent::AudioDelta { delta } => self.on_audio(delta.into_owned()),
            ServerEvent::OutputTranscript { delta, .. } => {
                // Text with no utterance under way (it lagged its audio by more than the 800 ms
                // that ended it) is dropped: its line is already written.
                let id = match self.utterance.as_mut() {
                    Some(u) => {
                        u.text.push_str(&delta);
                        u.id.clone()
                    }
                    None => return Ok(()),
                };
                self.push(Event::AgentTranscriptDelta {
                    item_id: id,
                    text: delta,
                });
            }
            ServerEvent::InputTranscript {
                delta,
                start_ms,
                end_ms,
            } => self.on_input_transcript(delta, start_ms, end_ms),
            ServerEvent::DelegationCreated { .. } => {}
            ServerEvent::FunctionCall {
                delegation_id,
                response_id,
                call_id,
                name,
                arguments,
            } => {
                // The delegation's id names the backend work in every event of it (a nested
                // `response.output_item.done` carries no response id).
                let response_id = delegation_id.or(response_id).unwrap_or_default();
                self.push(Event::ResponseCreated {
                    response_id: response_id.clone(),
                    scripted: false,
                });
                self.push(Event::FunctionCall {
                    response_id,
                    call_id,
                    name,
                    arguments,
                })
            }
            ServerEvent::ResponseEnded {
                delegation_id,
                response_id,
                status,
            } => self.push(Event::ResponseDone {
                response_id: delegation_id.or(response_id).unwrap_or_default(),
                status,
            }),
            ServerEvent::SessionClosed { reason } => {
                // Terminal (§2.2): the socket closes next, which closes the machine. A close
                // the call asked for is no error; any other ends the session under the call.
                let asked = self.closing && reason == "close_requested";
                self.end_turns();
                self.closing = true;
                if !asked {
                    self.push(Event::Error {
                        code: "session_closed".into(),
                        message: format!("GPT-Live session closed: {reason}"),
                        fatal: true,
                    });
                }
            }
            ServerEvent::Error {
                kind,
                code,
                message,
                param,
            } => {
                let what = match &param {
                    Some(p) => format!("{}: {message} ({p})", code.as_deref().unwrap_or(&kind)),
                    None => format!("{}: {message}", code.as_deref().unwrap_or(&kind)),
                };
                if !self.started && self.setup_error.is_none() {
                    let why = format!("session.start refused: {what}");
                    self.setup_error = Some(why.clone());
                    // The same code as a Realtime configuration refused: not retried.
                    self.push(Event::Error {
                        code: "session_update_refused".into(),
                        message: why,
                        fatal: true,
                    });
                    return Ok(());
                }
                let fatal = code.as_deref().is_some_and(|c| FATAL.contains(&c));
                self.push(Event::Error {
                    code: code.unwrap_or(kind),
                    message: what,
                    fatal,
                })
            }
            ServerEvent::Unknown { .. } => {}
        }
        Ok(())
    }

    fn on_audio(&mut self, payload: String) {
        let silent = wire::is_silence(&payload);
        // base64 → bytes → ms (μ-law, 8 bytes a ms).
        let ms = (payload.len() as u64 * 3 / 4) / 8;
        self.out_ms += ms;
        if silent {
            match self.utterance.as_mut() {
                Some(u) => {
                    u.silent_ms += ms;
                    let (id, over) = (u.id.clone(), u.silent_ms >= TURN_GAP_MS);
                    self.push_audio(id, payload);
                    if over {
                        self.end_utterance();
                    }
                }
                // Idle silence is not worth buffering for a call that has not started.
                None if self.phase != Phase::Claimed => {}
                None => self.push(Event::Silence { payload }),
            }
            return;
        }
        if self.utterance.is_none() {
            // The caller's turn, if one was open, is over: the model answers it.
            self.end_caller_turn();
            self.utterances += 1;
            let id = format!("live_utt_{}", self.utterances);
            let scripted = std::mem::take(&mut self.scripted_pending);
            self.push(Event::ResponseCreated {
                response_id: id.clone(),
                scripted,
            });
            self.utterance = Some(Utterance {
                id,
                text: String::new(),
                silent_ms: 0,
            });
        }
        let u = self
            .utterance
            .as_mut()
            .expect("an utterance was just opened");
        u.silent_ms = 0;
        let id = u.id.clone();
        self.push_audio(id, payload);
        if !self.audio_seen && !self.greeting_cut {
            self.audio_seen = true;
            self.maybe_ready();
        }
    }

    /// Agent audio of utterance `id`: before the claim it is the greeting, buffered up to the
    /// cap (beyond it the rest of the greeting is dropped, never left with a hole).
    fn push_audio(&mut self, id: String, payload: String) {
        if self.phase != Phase::Claimed {
            if self.greeting_cut || self.buffered_bytes + payload.len() > self.buffer_cap {
                self.greeting_cut = true;
                self.dropped_bytes += payload.len();
                return;
            }
            self.buffered_bytes += payload.len();
        }
        self.events.push_back(Event::AudioDelta {
            response_id: id.clone(),
            item_id: id,
            payload,
        });
    }

    fn end_utterance(&mut self) {
        if let Some(u) = self.utterance.take() {
            if !u.text.trim().is_empty() {
                self.push(Event::AgentTranscript {
                    item_id: u.id.clone(),
                    text: u.text.trim().to_string(),
                });
            }
            self.push(Event::ResponseDone {
                response_id: u.id,
                status: "completed".into(),
            });
        }
    }

    fn on_input_transcript(&mut self, delta: String, start_ms: u64, end_ms: u64) {
        let new_turn = match &self.caller {
            None => true,
            Some(t) => start_ms.saturating_sub(t.end_ms) >= TURN_GAP_MS,
        };
        if new_turn {
            self.end_caller_turn();
            self.caller = Some(CallerTurn {
                text: String::new(),
                end_ms,
            });
            self.push(Event::SpeechStarted {
                audio_start_ms: start_ms,
            });
        }
        if let Some(t) = self.caller.as_mut() {
            t.text.push_str(&delta);
            t.end_ms = t.end_ms.max(end_ms);
        }
        self.push(Event::SpeechStopped {
            audio_end_ms: end_ms,
        });
    }

    fn end_caller_turn(&mut self) {
        if let Some(t) = self.caller.take()
            && !t.text.trim().is_empty()
        {
            self.push(Event::CallerTranscript {
                text: t.text.trim().to_string(),
            });
        }
    }

    fn end_turns(&mut self) {
        self.end_caller_turn();
        self.end_utterance();
    }

    fn push(&mut self, e: Event) {
        if self.phase != Phase::Claimed
            && !matches!(e, Event::AudioDelta { .. })
            && self.events.len() >= MAX_BUFFERED_EVENTS
        {
            return;
        }
        self.events.push_back(e);
    }

    /// A media stream takes the session: everything buffered so far, in order, without the
    /// silence the model produced behind the greeting (it would only delay what follows).
    pub fn claim(&mut self) -> Vec<Event> {
        if self.phase != Phase::Closed {
            self.phase = Phase::Claimed;
        }
        self.buffered_bytes = 0;
        let mut events: Vec<Event> = self.events.drain(..).collect();
        let last_speech = events.iter().rposition(
            |e| matches!(e, Event::AudioDelta { payload, .. } if !wire::is_silence(payload)),
        );
        if let Some(last) = last_speech {
            let mut i = 0;
            events.retain(|e| {
                let keep = i <= last
                    || !matches!(e, Event::AudioDelta { payload, .. } if wire::is_silence(payload));
                i += 1;
                keep
            });
        }
        events
    }

    /// Next event (after a claim; before it, events stay buffered for the claim).
    pub fn poll_event(&mut self) -> Option<Event> {
        if self.phase == Phase::Claimed {
            self.events.pop_front()
        } else {
            None
        }
    }

    /// Next frame for the socket.
    pub fn poll_transmit(&mut self) -> Option<String> {
        self.transmit.pop_front()
    }

    /// The socket closed.
    pub fn handle_closed(&mut self) {
        self.phase = Phase::Closed;
    }

    /// One command from the call (docs/architecture.md, "The engine seam").
    pub fn handle_command(&mut self, command: Command) {
        match command {
            Command::Append(b64) => {
                self.quiet_ticks = 0;
                self.heard_since_tick = true;
                self.input_bytes += b64.len() as u64 * 3 / 4;
                self.send(wire::append(&b64));
            }
            // The model yields by itself; nothing to send (rule 4). The utterance the call
            // cut short is over for it: what the model says next is a new one.
            Command::Cancel => self.end_utterance(),
            Command::Truncate { .. } => {}
            Command::Heard { text, .. } => self.send(wire::text_append(
                AppendKind::Instructions,
                &format!(
                    "The caller interrupted your greeting; they heard only: {}",
                    serde_json::to_string(&text).unwrap_or_default()
                ),
            )),
            // A key press is context the model acts on when it speaks next.
            Command::UserText(text) => self.send(wire::text_append(AppendKind::Thinking, &text)),
            Command::FunctionOutput { call_id, output } => {
                self.outputs_pending = true;
                self.send(wire::function_output(&call_id, &output));
            }
            Command::Respond {
                instructions: Some(line),
                ..
            } => {
                self.scripted_pending = true;
                self.send(wire::text_append(AppendKind::Commentary, &line));
            }
            Command::Respond {
                instructions: None, ..
            } => {
                // The backend goes on once the outputs are in; the voice model answers by
                // itself otherwise.
                if std::mem::take(&mut self.outputs_pending) {
                    self.send(wire::response_create());
                }
            }
            Command::Reconfigure {
                instructions,
                tools,
            } => {
                if let Some(model) = self.delegation_model.clone() {
                    self.send(wire::delegation_update(&wire::Delegation { model, tools }));
                }
                for frame in wire::text_appends(AppendKind::Instructions, &instructions) {
                    self.send(frame);
                }
            }
            // A session started with the conversation as its history knows it already.
            Command::Seed(_) if self.history_at_start => {}
            Command::Seed(text) => {
                for frame in wire::text_appends(AppendKind::Instructions, &text) {
                    self.send(frame);
                }
            }
            Command::Close => {
                self.closing = true;
                self.end_turns();
                // Nothing may be sent before `session.started` (a refused or unfinished start):
                // the socket's close frame ends it.
                if self.started {
                    self.transmit.push_back(wire::session_close());
                }
            }
        }
    }
}

impl Engine for LiveSession {
    fn handle_text(&mut self, text: &str) -> Result<(), EngineError> {
        LiveSession::handle_text(self, text).map_err(|e| EngineError(e.to_string()))
    }

    fn handle_command(&mut self, command: Command) {
        LiveSession::handle_command(self, command)
    }

    fn handle_closed(&mut self) {
        LiveSession::handle_closed(self)
    }

    fn poll_transmit(&mut self) -> Option<String> {
        LiveSession::poll_transmit(self)
    }

    fn poll_event(&mut self) -> Option<Event> {
        LiveSession::poll_event(self)
    }

    fn claim(&mut self) -> Vec<Event> {
        LiveSession::claim(self)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        LiveSession::poll_timeout(self)
    }

    fn handle_timeout(&mut self, now: Instant) {
        LiveSession::handle_timeout(self, now)
    }

    fn model_yields(&self) -> bool {
        true
    }

    fn handle_open(&mut self, now: Instant) {
        LiveSession::handle_open(self, now)
    }

    fn greeted(&self) -> bool {
        LiveSession::greeted(self)
    }

    fn take_greeted(&mut self) -> bool {
        let new = self.greeted && !self.greeted_reported;
        self.greeted_reported |= new;
        new
    }

    fn poll_setup_error(&mut self) -> Option<String> {
        LiveSession::poll_setup_error(self)
    }

    fn readiness(&self) -> Readiness {
        match self.phase {
            Phase::Ready => Readiness::Ready,
            _ if self.started => Readiness::Configured,
            _ => Readiness::Opening,
        }
    }

    fn dropped_bytes(&self) -> usize {
        LiveSession::dropped_bytes(self)
    }

    fn kind(&self) -> EngineKind {
        EngineKind::Live
    }

    fn input_ms(&self) -> u64 {
        self.input_bytes / 8
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use serde_json::Value;

    use super::*;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// 100 ms of output: speech (not silence) or silence.
    fn delta(speech: bool) -> String {
        let bytes = if speech {
            vec![0x10; 800]
        } else {
            vec![0xFF; 800]
        };
        format!(
            r#"{{"type":"session.output_audio.delta","event_id":"e","delta":"{}"}}"#,
            b64(&bytes)
        )
    }

    fn started() -> &'static str {
        r#"{"type":"session.started","event_id":"e0","session":{"id":"live_1","expires_at":1800,"model":"gpt-live-1","status":"active"}}"#
    }

    fn sent(s: &mut LiveSession) -> Vec<Value> {
        std::iter::from_fn(|| s.poll_transmit())
            .map(|t| serde_json::from_str(&t).unwrap())
            .collect()
    }

    fn session(t0: Instant) -> LiveSession {
        let mut s = LiveSession::new(
            "START".into(),
            Greeting::Generate("Greet the caller now.".into()),
            100_000,
        );
        s.handle_open(t0);
        assert_eq!(s.poll_transmit().as_deref(), Some("START"));
        s
    }

    fn events(s: &mut LiveSession) -> Vec<Event> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    #[test]
    fn expires_at_is_told_to_the_call_and_a_session_started_with_the_history_is_not_seeded() {
        let t0 = Instant::now();
        let mut s = session(t0);
        s.handle_text(started()).unwrap();
        assert!(
            s.claim()
                .iter()
                .any(|e| matches!(e, Event::Expires { at_unix_secs: 1800 }))
        );
        sent(&mut s);
        s.handle_command(Command::Seed("the conversation".into()));
        let seeded = sent(&mut s);
        assert_eq!(
            seeded[0]["type"], "session.instructions.append",
            "{seeded:?}"
        );
        // A replacement started with the conversation as its startup history.
        let mut r =
            LiveSession::new("START".into(), Greeting::None, 1000).with_history_at_start(true);
        r.handle_open(t0);
        assert_eq!(r.poll_transmit().as_deref(), Some("START"));
        r.handle_text(started()).unwrap();
        r.claim();
        r.handle_command(Command::Seed("the conversation".into()));
        assert!(sent(&mut r).is_empty());
    }

    #[test]
    fn nothing_but_session_start_before_session_started_then_the_greeting_and_the_held_audio() {
        let t0 = Instant::now();
        let mut s = session(t0);
        s.handle_command(Command::Append("AAAA".into()));
        s.handle_command(Command::UserText("(key 1)".into()));
        assert!(s.poll_transmit().is_none(), "held until session.started");
        s.handle_text(started()).unwrap();
        let out = sent(&mut s);
        assert_eq!(out[0]["type"], "session.commentary.append");
        assert_eq!(out[0]["content"], "Greet the caller now.");
        assert!(out[0]["delegation_id"].is_null());
        assert_eq!(out[1]["type"], "session.input_audio.append");
        assert_eq!(out[2]["type"], "session.thinking.append");
        assert!(s.greeted());
        assert!(!s.poll_ready(), "no greeting audio yet");
        s.handle_text(&delta(false)).unwrap();
        assert!(!s.poll_ready(), "silence is not the greeting");
        s.handle_text(&delta(true)).unwrap();
        assert!(s.poll_ready());
        assert_eq!(s.phase(), Phase::Ready);
    }

    #[test]
    fn the_timeline_is_kept_moving_with_silence_only_when_the_caller_sends_none() {
        let t0 = Instant::now();
        let mut s = session(t0);
        // Not before session.started.
        s.handle_timeout(t0 + TICK);
        s.handle_timeout(t0 + TICK * 2);
        s.handle_timeout(t0 + TICK * 3);
        assert!(s.poll_transmit().is_none());
        s.handle_text(started()).unwrap();
        sent(&mut s);
        let mut at = t0 + TICK * 3;
        let mut tick = |s: &mut LiveSession| {
            at = s.poll_timeout().unwrap();
            s.handle_timeout(at);
            sent(s)
        };
        // Caller audio every tick: nothing added.
        for _ in 0..5 {
            s.handle_command(Command::Append("AAAA".into()));
            sent(&mut s);
            assert!(tick(&mut s).is_empty());
        }
        // The caller's audio stops: after FEED_AFTER the missed frames, then one a tick.
        let feed_from = (FEED_AFTER.as_millis() / TICK.as_millis()) as usize;
        for _ in 1..feed_from {
            assert!(tick(&mut s).is_empty(), "jitter is not a gap");
        }
        let caught_up = tick(&mut s);
        assert_eq!(caught_up.len(), feed_from);
        assert!(caught_up.iter().all(|v| v["audio"] == SILENCE_FRAME));
        assert_eq!(tick(&mut s).len(), 1);
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(SILENCE_FRAME)
            .unwrap();
        assert_eq!(decoded, vec![0xFF; 160], "20 ms of μ-law silence");
    }

    #[test]
    fn the_track_is_cut_into_utterances_and_the_silence_behind_the_greeting_is_dropped() {
        let t0 = Instant::now();
        let mut s = session(t0);
        s.handle_text(started()).unwrap();
        sent(&mut s);
        // Idle silence before the greeting: not buffered.
        s.handle_text(&delta(false)).unwrap();
        for speech in [true, true, false, true] {
            s.handle_text(&delta(speech)).unwrap();
        }
        s.handle_text(r#"{"type":"session.output_transcript.delta","event_id":"e","delta":"Thanks for calling.","start_ms":100,"end_ms":500}"#).unwrap();
        // 900 ms of silence: the utterance ends; the model keeps producing silence.
        for _ in 0..12 {
            s.handle_text(&delta(false)).unwrap();
        }
        assert!(s.poll_event().is_none(), "nothing before the claim");
        let got = s.claim();
        let audio: Vec<bool> = got
            .iter()
            .filter_map(|e| match e {
                Event::AudioDelta { payload, .. } => Some(!wire::is_silence(payload)),
                _ => None,
            })
            .collect();
        assert_eq!(
            audio,
            [true, true, false, true],
            "the pause inside the greeting stays; the silence behind it goes"
        );
        // The session's expiry first (from `session.started`), then the greeting's utterance.
        assert!(matches!(got[0], Event::Expires { .. }), "{:?}", got[0]);
        assert!(
            matches!(&got[1], Event::ResponseCreated { response_id, scripted: false } if response_id == "live_utt_1")
        );
        assert!(got.contains(&Event::AgentTranscript {
            item_id: "live_utt_1".into(),
            text: "Thanks for calling.".into()
        }));
        assert!(got.contains(&Event::ResponseDone {
            response_id: "live_utt_1".into(),
            status: "completed".into()
        }));
        // After the claim, idle silence flows as Silence (the call relays or trims it).
        s.handle_text(&delta(false)).unwrap();
        assert!(matches!(s.poll_event(), Some(Event::Silence { .. })));
    }

    #[test]
    fn caller_turns_come_from_input_transcripts_split_on_a_gap() {
        let t0 = Instant::now();
        let mut s = session(t0);
        s.handle_text(started()).unwrap();
        s.claim();
        let input = |text: &str, a: u64, b: u64| {
            format!(
                r#"{{"type":"session.input_transcript.delta","event_id":"e","delta":"{text}","start_ms":{a},"end_ms":{b}}}"#
            )
        };
        s.handle_text(&input("What are ", 1000, 1200)).unwrap();
        s.handle_text(&input("your hours?", 1200, 1400)).unwrap();
        let got = events(&mut s);
        assert_eq!(
            got,
            [
                Event::SpeechStarted {
                    audio_start_ms: 1000
                },
                Event::SpeechStopped { audio_end_ms: 1200 },
                Event::SpeechStopped { audio_end_ms: 1400 },
            ]
        );
        // The model answers: the caller's turn is written first.
        s.handle_text(&delta(true)).unwrap();
        let got = events(&mut s);
        assert_eq!(
            got[0],
            Event::CallerTranscript {
                text: "What are your hours?".into()
            }
        );
        assert!(matches!(got[1], Event::ResponseCreated { .. }));
        // A later turn after a gap is a new one.
        s.handle_text(&input("Thanks.", 3000, 3200)).unwrap();
        assert!(matches!(
            s.poll_event(),
            Some(Event::SpeechStarted {
                audio_start_ms: 3000
            })
        ));
    }

    #[test]
    fn delegated_tool_calls_are_function_calls_answered_with_items_then_one_response_create() {
        let t0 = Instant::now();
        let mut s = session(t0);
        s.handle_text(started()).unwrap();
        s.claim();
        sent(&mut s);
        s.handle_text(r#"{"type":"session.delegation.created","event_id":"e","delegation":{"id":"del_1","type":"delegation","target":"responses","response_id":"resp_1"},"offset_ms":1000}"#).unwrap();
        // The nested item event carries no response id (the delegation's id names the work).
        s.handle_text(r#"{"type":"response.event","event_id":"e","delegation_id":"del_1","event":{"type":"response.output_item.done","output_index":0,"item":{"type":"function_call","id":"fc_1","status":"completed","call_id":"call_1","name":"business_hours","arguments":"{}"}}}"#).unwrap();
        s.handle_text(r#"{"type":"response.event","event_id":"e","delegation_id":"del_1","event":{"type":"response.completed","response":{"id":"resp_1","output":[]}}}"#).unwrap();
        assert_eq!(
            events(&mut s),
            [
                Event::ResponseCreated {
                    response_id: "del_1".into(),
                    scripted: false
                },
                Event::FunctionCall {
                    response_id: "del_1".into(),
                    call_id: "call_1".into(),
                    name: "business_hours".into(),
                    arguments: "{}".into()
                },
                Event::ResponseDone {
                    response_id: "del_1".into(),
                    status: "completed".into()
                },
            ]
        );
        s.handle_command(Command::FunctionOutput {
            call_id: "call_1".into(),
            output: r#"{"open_now":true}"#.into(),
        });
        s.handle_command(Command::Respond {
            instructions: None,
            tools: true,
        });
        let out = sent(&mut s);
        assert_eq!(out[0]["type"], "response.item.create");
        assert_eq!(out[0]["item"]["call_id"], "call_1");
        assert_eq!(out[1], serde_json::json!({"type": "response.create"}));
        // With no outputs waiting, a plain request asks nothing (the model speaks by itself).
        s.handle_command(Command::Respond {
            instructions: None,
            tools: true,
        });
        assert!(s.poll_transmit().is_none());
    }

    #[test]
    fn a_line_asked_for_is_a_commentary_and_the_next_utterance_is_it() {
        let t0 = Instant::now();
        let mut s = session(t0);
        s.handle_text(started()).unwrap();
        s.claim();
        sent(&mut s);
        s.handle_command(Command::Respond {
            instructions: Some("Say exactly: \"One moment.\"".into()),
            tools: false,
        });
        let out = sent(&mut s);
        assert_eq!(out[0]["type"], "session.commentary.append");
        s.handle_text(&delta(true)).unwrap();
        assert!(matches!(
            s.poll_event(),
            Some(Event::ResponseCreated { scripted: true, .. })
        ));
        // Cancel and truncate mean nothing here: the model yields by itself.
        s.handle_command(Command::Cancel);
        s.handle_command(Command::Truncate {
            item_id: "live_utt_1".into(),
            audio_end_ms: 100,
        });
        assert!(s.poll_transmit().is_none());
        // Closing: session.close, and the close it asked for is no error.
        s.handle_command(Command::Close);
        assert_eq!(sent(&mut s)[0]["type"], "session.close");
        events(&mut s);
        s.handle_text(r#"{"type":"session.closed","event_id":"e","reason":"close_requested","session":{},"usage":{"seconds":3}}"#).unwrap();
        assert!(
            !events(&mut s)
                .iter()
                .any(|e| matches!(e, Event::Error { .. }))
        );
    }

    #[test]
    fn a_cancel_ends_the_utterance_so_what_the_model_says_next_is_a_new_one() {
        let t0 = Instant::now();
        let mut s = session(t0);
        s.handle_text(started()).unwrap();
        s.claim();
        s.handle_text(&delta(true)).unwrap();
        events(&mut s);
        // The caller cut it short (the call drops the rest of live_utt_1).
        s.handle_command(Command::Cancel);
        assert!(events(&mut s).contains(&Event::ResponseDone {
            response_id: "live_utt_1".into(),
            status: "completed".into()
        }));
        s.handle_text(&delta(true)).unwrap();
        assert!(matches!(
            s.poll_event(),
            Some(Event::ResponseCreated { response_id, .. }) if response_id == "live_utt_2"
        ));
    }

    #[test]
    fn a_refused_start_is_a_setup_error_and_an_expiry_is_fatal() {
        let t0 = Instant::now();
        let mut s = session(t0);
        s.handle_text(r#"{"type":"error","event_id":"e","error":{"type":"invalid_request_error","code":"unknown_parameter","message":"Unknown parameter.","param":"session.turn_detection"}}"#).unwrap();
        let why = s.poll_setup_error().unwrap();
        assert!(
            why.contains("unknown_parameter") && why.contains("session.turn_detection"),
            "{why}"
        );
        assert!(matches!(
            s.claim().as_slice(),
            [Event::Error { code, fatal: true, .. }] if code == "session_update_refused"
        ));
        let mut s = session(t0);
        s.handle_text(started()).unwrap();
        s.claim();
        s.handle_text(r#"{"type":"session.closed","event_id":"e","reason":"expired","session":{},"usage":{"seconds":1800}}"#).unwrap();
        assert!(matches!(
            s.poll_event(),
            Some(Event::Error { code, fatal: true, .. }) if code == "session_closed"
        ));
        // Later errors are the call's business, not fatal unless the account is.
        let mut s = session(t0);
        s.handle_text(started()).unwrap();
        s.claim();
        s.handle_text(r#"{"type":"error","event_id":"e","error":{"type":"invalid_request_error","code":"invalid_value","message":"Context append text must not exceed 500 tokens.","param":"content"}}"#).unwrap();
        assert!(matches!(
            s.poll_event(),
            Some(Event::Error { fatal: false, .. })
        ));
        s.handle_text(r#"{"type":"error","event_id":"e","error":{"type":"insufficient_quota","code":"insufficient_quota","message":"m"}}"#).unwrap();
        assert!(matches!(
            s.poll_event(),
            Some(Event::Error { fatal: true, .. })
        ));
    }

    #[test]
    fn garbage_never_panics() {
        let t0 = Instant::now();
        for text in [
            "",
            "{}",
            "[]",
            "null",
            r#"{"type":5}"#,
            r#"{"type":"session.output_audio.delta","delta":7}"#,
            r#"{"type":"response.event","event":null}"#,
            r#"{"type":"session.input_transcript.delta"}"#,
        ] {
            let mut s = session(t0);
            let _ = s.handle_text(text);
            s.handle_text(started()).unwrap();
            let _ = s.handle_text(text);
            s.claim();
        }
    }
}
