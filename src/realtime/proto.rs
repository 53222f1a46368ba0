//! `Session`: the sans-IO machine for one OpenAI Realtime socket (docs/twilio-openai-reference.md §7, §8).
//!
//! Lifecycle: Connecting → (socket open) session.update and the greeting's response.create are
//! sent at once, pipelined → Configured (`session.updated`) → Ready (configured AND the first
//! greeting audio buffered) → Claimed (a media stream took the call) → Closed.
//!
//! Until it is claimed the session buffers every event (greeting audio bounded by bytes, other
//! events by count); `claim` hands them over in order, after which events flow straight out.
//! Deltas of a response cancelled by barge-in are dropped (§9 d).

use std::collections::VecDeque;

use super::wire::{self, ServerEvent};
use crate::engine::{Command, Engine, EngineError, EngineKind, Event, Readiness};

/// Readiness of a warm session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Socket not open yet.
    Connecting,
    /// Open, configuration sent.
    Open,
    /// `session.updated` seen.
    Configured,
    /// Configured and first greeting audio buffered.
    Ready,
    /// A stream took it over.
    Claimed,
    /// Socket closed.
    Closed,
}

/// `error.code` of a `response.create` refused because a response is in progress.
const ACTIVE_RESPONSE: &str = "conversation_already_has_active_response";

/// How many recent ids (cancelled responses, interrupted items) a machine remembers: late
/// events of older ones no longer arrive.
const RECENT: usize = 8;

/// Appends to a short memory of recent ids, forgetting the oldest beyond [`RECENT`].
pub(crate) fn push_recent<T>(queue: &mut VecDeque<T>, value: T) {
    queue.push_back(value);
    if queue.len() > RECENT {
        queue.pop_front();
    }
}

/// A `response.create` to send: per-response instructions (a scripted line when given: said
/// even when the response it waited for was cancelled) and whether tools may be called.
#[derive(Debug, Clone)]
struct Create {
    instructions: Option<String>,
    tools: bool,
}

impl Create {
    /// A plain request for an answer.
    fn plain() -> Self {
        Self {
            instructions: None,
            tools: true,
        }
    }

    fn scripted(&self) -> bool {
        self.instructions.is_some()
    }
}

/// What a session does about the greeting once its socket opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Greeting {
    /// Generate it: this `response.create` (buffered until the claim; the session is ready
    /// once its first audio is).
    Generate(String),
    /// It was played from the cache: this `conversation.item.create` (the assistant message
    /// the caller heard) tells the model, which says nothing (ready once configured).
    Said(String),
    /// Nothing: the caller speaks first (a session replacing a lost one).
    None,
}

/// Most non-audio events buffered before a claim.
const MAX_BUFFERED_EVENTS: usize = 512;

/// One Realtime session.
#[derive(Debug)]
pub struct Session {
    phase: Phase,
    configured: bool,
    audio_seen: bool,
    session_update: String,
    greeting: Greeting,
    /// Ready needs greeting audio (a greeting is generated).
    expects_audio: bool,
    /// The greeting's `response.create` was queued for the socket (a greeting is generated).
    greeted: bool,
    /// [`Engine::take_greeted`] reported it.
    greeted_reported: bool,
    transmit: VecDeque<String>,
    events: VecDeque<Event>,
    buffered_bytes: usize,
    buffer_cap: usize,
    dropped_bytes: usize,
    cancelled: VecDeque<String>,
    active_response: Option<String>,
    /// Between the server's `response.created` and its `response.done` (a cancelled response
    /// stays open until its `response.done`): the API refuses a second `response.create` then.
    responding: bool,
    /// A `response.create` held back until the open response is done.
    deferred: Option<Create>,
    /// The last `response.create` sent (asked again if the server refuses it because one of
    /// its own responses was already under way).
    last_create: Option<Create>,
    /// The event id of our `response.create` the server has not answered yet (with
    /// `response.created` carrying it in its metadata, or an `error` naming it): no second
    /// one is sent meanwhile.
    in_flight: Option<String>,
    /// Event ids of the scripted `response.create`s sent (recent ones).
    scripted_ids: VecDeque<String>,
    /// `response.create`s sent, for their event ids.
    creates_sent: u64,
    /// An `error` before `session.updated`: the configuration was refused.
    setup_error: Option<String>,
    ready_reported: bool,
    /// μ-law bytes of caller audio appended (about: from the base64 length).
    input_bytes: u64,
}

impl Session {
    /// A session that will send `session_update` and then what `greeting` asks when the socket
    /// opens, buffering up to `buffer_cap` bytes of greeting audio (base64 length) until
    /// claimed.
    pub fn new(session_update: String, greeting: Greeting, buffer_cap: usize) -> Self {
        Self {
            phase: Phase::Connecting,
            configured: false,
            audio_seen: false,
            session_update,
            expects_audio: matches!(greeting, Greeting::Generate(_)),
            greeting,
            greeted: false,
            greeted_reported: false,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            buffered_bytes: 0,
            buffer_cap,
            dropped_bytes: 0,
            cancelled: VecDeque::new(),
            active_response: None,
            responding: false,
            deferred: None,
            last_create: None,
            in_flight: None,
            scripted_ids: VecDeque::new(),
            creates_sent: 0,
            setup_error: None,
            ready_reported: false,
            input_bytes: 0,
        }
    }

    /// Current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Bytes of greeting audio dropped over the buffer cap.
    pub fn dropped_bytes(&self) -> usize {
        self.dropped_bytes
    }

    /// The socket opened: queue the configuration and the greeting, without waiting a round
    /// trip in between (the server applies them in order).
    pub fn handle_open(&mut self) {
        if self.phase != Phase::Connecting {
            return;
        }
        self.phase = Phase::Open;
        self.transmit
            .push_back(std::mem::take(&mut self.session_update));
        match std::mem::replace(&mut self.greeting, Greeting::None) {
            Greeting::Generate(create) => {
                self.transmit.push_back(create);
                self.greeted = true;
            }
            Greeting::Said(item) => self.transmit.push_back(item),
            Greeting::None => {}
        }
    }

    /// Whether the greeting was asked for on the socket (it is generated, billed, whether or not
    /// anyone hears it): `warmline_greetings_total{source="generated"}`.
    pub fn greeted(&self) -> bool {
        self.greeted
    }

    /// Why the configuration was refused, once (the session is then unusable).
    pub fn poll_setup_error(&mut self) -> Option<String> {
        self.setup_error.take()
    }

    /// True once, the moment the session became ready (configured, and the greeting's first
    /// audio buffered when it generates one).
    pub fn poll_ready(&mut self) -> bool {
        if self.ready_reported || !(self.configured && (self.audio_seen || !self.expects_audio)) {
            return false;
        }
        self.ready_reported = true;
        true
    }

    /// Applies one server frame.
    pub fn handle_text(&mut self, text: &str) -> Result<(), wire::WireError> {
        let event = wire::parse(text)?;
        match event {
            ServerEvent::SessionUpdated => {
                self.configured = true;
                if self.phase == Phase::Open {
                    self.phase = Phase::Configured;
                }
                self.maybe_ready();
            }
            ServerEvent::ResponseCreated { response_id, tag } => {
                self.responding = true;
                if tag.is_some() && tag == self.in_flight {
                    self.in_flight = None;
                }
                let scripted = tag.is_some_and(|t| self.scripted_ids.contains(&t));
                self.active_response = Some(response_id.clone());
                self.push(Event::ResponseCreated {
                    response_id,
                    scripted,
                })
            }
            ServerEvent::AudioDelta {
                response_id,
                item_id,
                delta,
            } => {
                if self.cancelled.contains(&response_id) {
                    return Ok(());
                }
                if self.phase != Phase::Claimed {
                    // Once one chunk does not fit, the rest of that response is dropped too,
                    // before and after the claim: a greeting cut short, never one with a hole.
                    if self.buffered_bytes + delta.len() > self.buffer_cap {
                        self.dropped_bytes += delta.len();
                        push_recent(&mut self.cancelled, response_id);
                        return Ok(());
                    }
                    self.buffered_bytes += delta.len();
                }
                self.audio_seen = true;
                self.push(Event::AudioDelta {
                    response_id,
                    item_id,
                    payload: delta.into_owned(),
                });
                self.maybe_ready();
            }
            ServerEvent::SpeechStarted { audio_start_ms, .. } => {
                self.push(Event::SpeechStarted { audio_start_ms })
            }
            ServerEvent::SpeechStopped { audio_end_ms } => {
                self.push(Event::SpeechStopped { audio_end_ms })
            }
            ServerEvent::CallerTranscript { transcript, .. } => {
                self.push(Event::CallerTranscript { text: transcript })
            }
            ServerEvent::AgentTranscriptDelta { item_id, delta } => {
                self.push(Event::AgentTranscriptDelta {
                    item_id,
                    text: delta,
                })
            }
            ServerEvent::AgentTranscript {
                item_id,
                transcript,
            } => self.push(Event::AgentTranscript {
                item_id,
                text: transcript,
            }),
            ServerEvent::FunctionCall {
                response_id,
                call_id,
                name,
                arguments,
            } => self.push(Event::FunctionCall {
                response_id,
                call_id,
                name,
                arguments,
            }),
            ServerEvent::ResponseDone {
                response_id,
                status,
                ..
            } => {
                if self.active_response.as_deref() == Some(&response_id) {
                    self.active_response = None;
                }
                self.responding = false;
                // A cancelled response means the caller is talking (turn detection, or our
                // barge-in cancel): the server answers when they stop, and that answer sees
                // the held input too, so asking as well would answer twice.
                // A scripted line (the hand-off, a goodbye) is said regardless.
                if self.in_flight.is_none()
                    && let Some(create) = self.deferred.take()
                    && (status != "cancelled" || create.scripted())
                {
                    self.send_create(create);
                }
                self.push(Event::ResponseDone {
                    response_id,
                    status,
                })
            }
            ServerEvent::Error {
                kind,
                code,
                message,
                event_id,
            } => {
                // The answer to our `response.create` in flight (by its event id; an
                // active-response refusal that names no event is taken as ours).
                let ours = self.in_flight.is_some()
                    && (event_id == self.in_flight
                        || (event_id.is_none() && code.as_deref() == Some(ACTIVE_RESPONSE)));
                if ours {
                    self.in_flight = None;
                }
                // Our `response.create` raced a response the server started itself (turn
                // detection): ask again once that one is done, so the input is answered. A
                // scripted line waiting keeps its place.
                if code.as_deref() == Some(ACTIVE_RESPONSE) {
                    let again = self.last_create.clone().unwrap_or_else(Create::plain);
                    match &self.deferred {
                        Some(waiting) if waiting.scripted() => {}
                        _ => self.deferred = Some(again),
                    }
                }
                // Before `session.updated` the only thing sent is the configuration (and
                // the greeting): an error now means the session would run without our
                // instructions, voice or formats. Unusable.
                // A call that claims it ends at once, saying why. (A `response.create` refused
                // because one is in progress is not about the configuration: a key pressed
                // while a claimed session was still connecting asks for an answer before
                // `session.updated` has arrived.)
                if !self.configured
                    && self.setup_error.is_none()
                    && code.as_deref() != Some(ACTIVE_RESPONSE)
                {
                    let why = format!(
                        "session.update refused: {}: {message}",
                        code.as_deref().unwrap_or(&kind)
                    );
                    self.setup_error = Some(why.clone());
                    self.push(Event::Error {
                        code: "session_update_refused".into(),
                        message: why,
                        fatal: true,
                    });
                    return Ok(());
                }
                let fatal = matches!(code.as_deref(), Some("session_expired"));
                self.push(Event::Error {
                    code: code.unwrap_or(kind),
                    message,
                    fatal,
                })
            }
            ServerEvent::SessionCreated
            | ServerEvent::AudioDone { .. }
            | ServerEvent::Unknown { .. } => {}
        }
        Ok(())
    }

    fn maybe_ready(&mut self) {
        if self.configured
            && (self.audio_seen || !self.expects_audio)
            && matches!(self.phase, Phase::Open | Phase::Configured)
        {
            self.phase = Phase::Ready;
        }
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

    /// A media stream takes the session: everything buffered so far, in order.
    pub fn claim(&mut self) -> Vec<Event> {
        if self.phase != Phase::Closed {
            self.phase = Phase::Claimed;
        }
        self.buffered_bytes = 0;
        self.events.drain(..).collect()
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

    /// `input_audio_buffer.append` (caller audio, base64 μ-law).
    fn append_audio(&mut self, b64: &str) {
        self.input_bytes += b64.len() as u64 * 3 / 4;
        self.transmit.push_back(wire::append(b64));
    }

    /// `response.cancel`; later deltas of the active response are dropped.
    fn cancel_response(&mut self) {
        if let Some(id) = self.active_response.take() {
            push_recent(&mut self.cancelled, id);
        }
        self.transmit.push_back(wire::response_cancel());
    }

    /// `conversation.item.truncate`.
    fn truncate(&mut self, item_id: &str, audio_end_ms: u64) {
        self.transmit
            .push_back(wire::truncate(item_id, audio_end_ms));
    }

    /// A user text item and a `response.create` (e.g. a DTMF key). While a response is open
    /// the `response.create` waits for its `response.done` (the API allows one at a time).
    fn send_user_text(&mut self, text: &str) {
        self.transmit.push_back(wire::user_text(text));
        self.request_response(Create::plain());
    }

    /// A `response.create`, now or (while a response is open, or our last request has no
    /// answer yet) once it is done. A scripted one replaces a plain one waiting; a plain one
    /// never replaces a scripted one.
    fn request_response(&mut self, create: Create) {
        if !self.responding && self.in_flight.is_none() {
            self.send_create(create);
            return;
        }
        match &self.deferred {
            Some(waiting) if waiting.scripted() && !create.scripted() => {}
            _ => self.deferred = Some(create),
        }
    }

    fn send_create(&mut self, create: Create) {
        self.creates_sent += 1;
        let event_id = format!("wl_create_{}", self.creates_sent);
        self.transmit.push_back(wire::response_create_tagged(
            create.instructions.as_deref(),
            create.tools,
            &event_id,
        ));
        if create.scripted() {
            push_recent(&mut self.scripted_ids, event_id.clone());
        }
        self.in_flight = Some(event_id);
        self.last_create = Some(create);
    }

    /// The socket closed.
    pub fn handle_closed(&mut self) {
        self.phase = Phase::Closed;
    }

    /// One command from the call (docs/architecture.md, "The engine seam").
    pub fn handle_command(&mut self, command: Command) {
        match command {
            Command::Append(b64) => self.append_audio(&b64),
            Command::Cancel => self.cancel_response(),
            Command::Truncate {
                item_id,
                audio_end_ms,
            } => self.truncate(&item_id, audio_end_ms),
            Command::UserText(text) => self.send_user_text(&text),
            // The item has no audio to truncate: what was heard of it goes in right after it
            // (in its place, even if the caller's words were already committed behind it),
            // then it is deleted.
            Command::Heard { item_id, text } => {
                if !text.trim().is_empty() {
                    self.transmit
                        .push_back(wire::assistant_text(None, Some(&item_id), &text));
                }
                self.transmit.push_back(wire::item_delete(&item_id));
            }
            Command::Seed(text) => self.transmit.push_back(wire::system_text(&text)),
            Command::Reconfigure {
                instructions,
                tools,
            } => self
                .transmit
                .push_back(wire::session_reconfigure(&instructions, &tools)),
            Command::FunctionOutput { call_id, output } => self
                .transmit
                .push_back(wire::function_output(&call_id, &output)),
            Command::Respond {
                instructions,
                tools,
            } => self.request_response(Create {
                instructions,
                tools,
            }),
            // Realtime has no goodbye event: the socket's close frame, sent by the loop after
            // the last transmit, ends the session.
            Command::Close => {}
        }
    }
}

impl Engine for Session {
    fn handle_text(&mut self, text: &str) -> Result<(), EngineError> {
        Session::handle_text(self, text).map_err(|e| EngineError(e.to_string()))
    }

    fn handle_command(&mut self, command: Command) {
        Session::handle_command(self, command)
    }

    fn handle_closed(&mut self) {
        Session::handle_closed(self)
    }

    fn poll_transmit(&mut self) -> Option<String> {
        Session::poll_transmit(self)
    }

    fn poll_event(&mut self) -> Option<Event> {
        Session::poll_event(self)
    }

    fn claim(&mut self) -> Vec<Event> {
        Session::claim(self)
    }

    fn handle_open(&mut self, _now: std::time::Instant) {
        Session::handle_open(self)
    }

    fn greeted(&self) -> bool {
        Session::greeted(self)
    }

    fn take_greeted(&mut self) -> bool {
        let new = self.greeted && !self.greeted_reported;
        self.greeted_reported |= new;
        new
    }

    fn poll_setup_error(&mut self) -> Option<String> {
        Session::poll_setup_error(self)
    }

    fn readiness(&self) -> Readiness {
        match self.phase {
            Phase::Connecting | Phase::Open => Readiness::Opening,
            Phase::Configured => Readiness::Configured,
            Phase::Ready => Readiness::Ready,
            // Claimed or closed: as far as it got.
            Phase::Claimed | Phase::Closed if self.configured => Readiness::Configured,
            Phase::Claimed | Phase::Closed => Readiness::Opening,
        }
    }

    fn dropped_bytes(&self) -> usize {
        Session::dropped_bytes(self)
    }

    fn kind(&self) -> EngineKind {
        EngineKind::Realtime
    }

    fn input_ms(&self) -> u64 {
        self.input_bytes / 8
    }
}

#[cfg(test)]
mod tests {
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    use super::*;
    use serde_json::Value;

    fn session() -> Session {
        Session::new("UPDATE".into(), Greeting::Generate("GREET".into()), 16)
    }

    #[test]
    fn a_greeting_said_from_the_cache_is_an_item_and_ready_needs_no_audio() {
        let mut s = Session::new("UPDATE".into(), Greeting::Said("ITEM".into()), 16);
        s.handle_open();
        assert_eq!(s.poll_transmit().as_deref(), Some("UPDATE"));
        assert_eq!(s.poll_transmit().as_deref(), Some("ITEM"));
        assert!(!s.greeted(), "nothing generated");
        assert!(!s.poll_ready());
        s.handle_text(r#"{"type":"session.updated","session":{}}"#)
            .unwrap();
        assert!(s.poll_ready());
        assert_eq!(s.phase(), Phase::Ready);
        // A barge-in over it replaces the item with the part heard.
        s.claim();
        s.handle_command(Command::Heard {
            item_id: "wl_greeting".into(),
            text: "Thanks for …".into(),
        });
        let add: Value = serde_json::from_str(&s.poll_transmit().unwrap()).unwrap();
        assert_eq!(add["item"]["content"][0]["text"], "Thanks for …");
        assert_eq!(add["previous_item_id"], "wl_greeting", "in its place");
        let del: Value = serde_json::from_str(&s.poll_transmit().unwrap()).unwrap();
        assert_eq!(del["type"], "conversation.item.delete");
        assert_eq!(del["item_id"], "wl_greeting");
        s.handle_command(Command::Heard {
            item_id: "wl_greeting".into(),
            text: String::new(),
        });
        assert!(
            s.poll_transmit()
                .unwrap()
                .contains("conversation.item.delete")
        );
        assert!(
            s.poll_transmit().is_none(),
            "nothing heard: nothing put back"
        );
    }

    /// An open session taken by a call, its setup frames already sent.
    fn claimed() -> Session {
        let mut s = session();
        s.handle_open();
        s.claim();
        while s.poll_transmit().is_some() {}
        s
    }

    fn delta(resp: &str, payload: &str) -> String {
        format!(
            r#"{{"type":"response.output_audio.delta","response_id":"{resp}","item_id":"item_1","delta":"{payload}"}}"#
        )
    }

    #[test]
    fn configuration_and_greeting_are_pipelined_on_open() {
        let mut s = session();
        assert_eq!(s.poll_transmit(), None);
        s.handle_open();
        assert_eq!(s.poll_transmit().as_deref(), Some("UPDATE"));
        assert_eq!(s.poll_transmit().as_deref(), Some("GREET"));
        assert_eq!(s.phase(), Phase::Open);
    }

    #[test]
    fn ready_needs_both_session_updated_and_greeting_audio() {
        let mut s = session();
        s.handle_open();
        s.handle_text(&delta("r1", "AAAA")).unwrap();
        assert!(!s.poll_ready(), "audio alone is not ready");
        s.handle_text(r#"{"type":"session.updated","session":{}}"#)
            .unwrap();
        assert!(s.poll_ready());
        assert!(!s.poll_ready(), "reported once");
        assert_eq!(s.phase(), Phase::Ready);
    }

    #[test]
    fn buffered_events_are_handed_over_in_order_and_capped() {
        let mut s = session();
        s.handle_open();
        s.handle_text(r#"{"type":"response.created","response":{"id":"r1"}}"#)
            .unwrap();
        s.handle_text(&delta("r1", "AAAA")).unwrap();
        s.handle_text(&delta("r1", "BBBBBBBB")).unwrap();
        s.handle_text(&delta("r1", "CCCCCCCC")).unwrap(); // over the 16-byte cap
        s.handle_text(&delta("r1", "DD")).unwrap(); // would fit, but would leave a hole
        s.handle_text(r#"{"type":"response.output_audio_transcript.done","item_id":"item_1","transcript":"Hello"}"#).unwrap();
        assert_eq!(s.poll_event(), None, "nothing flows before the claim");
        let got = s.claim();
        let payloads: Vec<_> = got
            .iter()
            .filter_map(|e| match e {
                Event::AudioDelta { payload, .. } => Some(payload.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(payloads, ["AAAA", "BBBBBBBB"]);
        assert_eq!(s.dropped_bytes(), 8);
        assert_eq!(
            got.last(),
            Some(&Event::AgentTranscript {
                item_id: "item_1".into(),
                text: "Hello".into()
            })
        );
        // The overflowed greeting stays cut after the claim; other responses flow uncapped.
        s.handle_text(&delta("r1", "EEEE")).unwrap();
        assert_eq!(s.poll_event(), None);
        s.handle_text(&delta("r2", "DDDDDDDDDDDDDDDDDDDD")).unwrap();
        assert!(matches!(s.poll_event(), Some(Event::AudioDelta { .. })));
    }

    #[test]
    fn deltas_of_a_cancelled_response_are_dropped() {
        let mut s = session();
        s.handle_open();
        s.claim();
        s.handle_text(r#"{"type":"response.created","response":{"id":"r1"}}"#)
            .unwrap();
        s.cancel_response();
        while s
            .poll_transmit()
            .is_some_and(|t| !t.contains("response.cancel"))
        {}
        while s.poll_event().is_some() {}
        s.handle_text(&delta("r1", "AAAA")).unwrap();
        assert_eq!(s.poll_event(), None);
        s.handle_text(&delta("r2", "AAAA")).unwrap();
        assert!(s.poll_event().is_some());
    }

    #[test]
    fn a_response_create_waits_for_the_open_response_to_be_done() {
        let mut s = claimed();
        s.handle_text(r#"{"type":"response.created","response":{"id":"r1"}}"#)
            .unwrap();
        s.send_user_text("The caller pressed 1.");
        let sent: Vec<_> = std::iter::from_fn(|| s.poll_transmit()).collect();
        assert_eq!(sent.len(), 1, "the item only: {sent:?}");
        assert!(sent[0].contains("conversation.item.create"));
        // The response is open until its response.done.
        s.handle_text(&delta("r1", "AAAA")).unwrap();
        assert!(s.poll_transmit().is_none());
        s.handle_text(r#"{"type":"response.done","response":{"id":"r1","status":"completed"}}"#)
            .unwrap();
        let next = s.poll_transmit().expect("the deferred response.create");
        assert!(next.contains("response.create"), "{next}");
        // Until the server answers it, another key press sends its item only.
        s.send_user_text("The caller pressed 2.");
        let sent: Vec<_> = std::iter::from_fn(|| s.poll_transmit()).collect();
        assert_eq!(sent.len(), 1, "{sent:?}");
        s.handle_text(r#"{"type":"response.created","response":{"id":"r2","metadata":{"warmline":"wl_create_1"}}}"#)
            .unwrap();
        s.handle_text(r#"{"type":"response.done","response":{"id":"r2","status":"completed"}}"#)
            .unwrap();
        assert!(
            s.poll_transmit().unwrap().contains("response.create"),
            "the held one goes out once r2 is done"
        );
        s.handle_text(r#"{"type":"response.created","response":{"id":"r3","metadata":{"warmline":"wl_create_2"}}}"#)
            .unwrap();
        s.handle_text(r#"{"type":"response.done","response":{"id":"r3","status":"completed"}}"#)
            .unwrap();
        // With no response open and none asked for, it goes out at once.
        s.send_user_text("The caller pressed 3.");
        let sent: Vec<_> = std::iter::from_fn(|| s.poll_transmit()).collect();
        assert_eq!(sent.len(), 2);
        assert!(sent[1].contains("response.create"));
    }

    #[test]
    fn a_held_response_create_is_dropped_when_the_caller_interrupts() {
        let mut s = claimed();
        s.handle_text(r#"{"type":"response.created","response":{"id":"r1"}}"#)
            .unwrap();
        s.send_user_text("The caller pressed 1.");
        while s.poll_transmit().is_some() {}
        s.handle_text(r#"{"type":"response.done","response":{"id":"r1","status":"cancelled","status_details":{"type":"cancelled","reason":"turn_detected"}}}"#).unwrap();
        assert!(
            s.poll_transmit().is_none(),
            "the server's own answer to the caller covers the key press"
        );
    }

    #[test]
    fn a_tool_output_is_an_item_and_the_answer_waits_for_the_open_response() {
        let mut s = claimed();
        s.handle_text(r#"{"type":"response.created","response":{"id":"r1"}}"#)
            .unwrap();
        s.handle_text(r#"{"type":"response.output_item.done","response_id":"r1","output_index":0,"item":{"id":"i1","type":"function_call","status":"completed","call_id":"call_1","name":"business_hours","arguments":"{}"}}"#).unwrap();
        assert_eq!(
            s.poll_event(),
            Some(Event::ResponseCreated {
                response_id: "r1".into(),
                scripted: false
            })
        );
        assert_eq!(
            s.poll_event(),
            Some(Event::FunctionCall {
                response_id: "r1".into(),
                call_id: "call_1".into(),
                name: "business_hours".into(),
                arguments: "{}".into()
            })
        );
        s.handle_command(Command::FunctionOutput {
            call_id: "call_1".into(),
            output: r#"{"open_now":true}"#.into(),
        });
        s.handle_command(Command::Respond {
            instructions: None,
            tools: true,
        });
        let out: Value = serde_json::from_str(&s.poll_transmit().unwrap()).unwrap();
        assert_eq!(out["item"]["type"], "function_call_output");
        assert_eq!(out["item"]["call_id"], "call_1");
        assert!(s.poll_transmit().is_none(), "one response at a time");
        s.handle_text(r#"{"type":"response.done","response":{"id":"r1","status":"completed"}}"#)
            .unwrap();
        let create: Value = serde_json::from_str(&s.poll_transmit().unwrap()).unwrap();
        assert_eq!(create["type"], "response.create");
        assert_eq!(create["response"].get("instructions"), None);
        assert_eq!(create["response"].get("tool_choice"), None);
    }

    #[test]
    fn a_scripted_line_is_said_even_after_a_cancelled_response_and_wins_over_a_plain_one() {
        let mut s = claimed();
        s.handle_text(r#"{"type":"response.created","response":{"id":"r1"}}"#)
            .unwrap();
        s.handle_command(Command::Respond {
            instructions: Some("Say exactly: \"One moment.\"".into()),
            tools: false,
        });
        s.handle_command(Command::UserText("(key)".into()));
        while let Some(t) = s.poll_transmit() {
            assert!(!t.contains("response.create"), "held: {t}");
        }
        s.handle_text(r#"{"type":"response.done","response":{"id":"r1","status":"cancelled"}}"#)
            .unwrap();
        let create: Value = serde_json::from_str(&s.poll_transmit().unwrap()).unwrap();
        assert_eq!(create["response"]["tool_choice"], "none");
        assert!(
            create["response"]["instructions"]
                .as_str()
                .unwrap()
                .contains("One moment.")
        );
        assert!(s.poll_transmit().is_none());
    }

    #[test]
    fn a_refused_response_create_is_asked_again_after_the_response_in_progress() {
        let mut s = claimed();
        s.handle_text(r#"{"type":"error","error":{"type":"invalid_request_error","code":"conversation_already_has_active_response","message":"m"}}"#).unwrap();
        assert!(s.poll_transmit().is_none());
        s.handle_text(r#"{"type":"response.done","response":{"id":"r9","status":"completed"}}"#)
            .unwrap();
        assert!(s.poll_transmit().unwrap().contains("response.create"));
        assert!(s.poll_transmit().is_none(), "asked once");
    }

    #[test]
    fn an_error_before_session_updated_means_the_configuration_was_refused() {
        let mut s = session();
        s.handle_open();
        s.handle_text(r#"{"type":"error","error":{"type":"invalid_request_error","code":"invalid_value","message":"bad voice"}}"#).unwrap();
        let why = s.poll_setup_error().expect("refused");
        assert!(
            why.contains("invalid_value") && why.contains("bad voice"),
            "{why}"
        );
        assert!(s.poll_setup_error().is_none(), "reported once");
        // A call claiming it gets a fatal error saying why.
        assert!(matches!(
            s.claim().as_slice(),
            [Event::Error { code, fatal: true, .. }] if code == "session_update_refused"
        ));
        // Once configured, errors are the call's business, not a failed setup.
        let mut s = session();
        s.handle_open();
        s.handle_text(r#"{"type":"session.updated","session":{}}"#)
            .unwrap();
        s.handle_text(r#"{"type":"error","error":{"type":"invalid_request_error","message":"m"}}"#)
            .unwrap();
        assert!(s.poll_setup_error().is_none());
    }

    #[test]
    fn a_response_create_refused_before_session_updated_is_asked_again_not_a_refused_setup() {
        let mut s = session();
        s.handle_open();
        s.claim();
        while s.poll_transmit().is_some() {}
        s.handle_command(Command::UserText("(The caller pressed 5.)".into()));
        while s.poll_transmit().is_some() {}
        s.handle_text(r#"{"type":"error","error":{"type":"invalid_request_error","code":"conversation_already_has_active_response","message":"m"}}"#).unwrap();
        assert!(s.poll_setup_error().is_none());
        assert!(
            std::iter::from_fn(|| s.poll_event())
                .all(|e| !matches!(e, Event::Error { fatal: true, .. })),
            "not fatal"
        );
        s.handle_text(r#"{"type":"session.updated","session":{}}"#)
            .unwrap();
        s.handle_text(r#"{"type":"response.done","response":{"id":"r1","status":"completed"}}"#)
            .unwrap();
        assert!(s.poll_transmit().unwrap().contains("response.create"));
    }

    #[test]
    fn session_expired_is_fatal_other_errors_are_not() {
        let mut s = session();
        s.claim();
        s.handle_text(r#"{"type":"error","error":{"type":"invalid_request_error","code":"session_expired","message":"m"}}"#).unwrap();
        s.handle_text(r#"{"type":"error","error":{"type":"invalid_request_error","message":"no active response"}}"#).unwrap();
        let fatal: Vec<_> = std::iter::from_fn(|| s.poll_event())
            .map(|e| matches!(e, Event::Error { fatal: true, .. }))
            .collect();
        assert_eq!(fatal, [true, false]);
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = StdRng::seed_from_u64(3);
        let seeds = [
            delta("r1", "AAAA"),
            r#"{"type":"response.done","response":{"id":"r"}}"#.to_string(),
        ];
        for _ in 0..3000 {
            let mut s = session();
            let mut b = seeds[rng.random_range(0..2)].clone().into_bytes();
            for _ in 0..rng.random_range(1..5) {
                let i = rng.random_range(0..b.len());
                b[i] = rng.random_range(32u8..127);
            }
            let _ = s.handle_text(&String::from_utf8_lossy(&b));
            s.claim();
        }
    }

    /// a key pressed while the response that called `transfer_to_human` was open
    /// leaves a plain `response.create` deferred; that response's `response.done` sends it, and
    /// the call then asks for the hand-off line in the same turn: both go out before the server
    /// has said `response.created`, so the second is sent while a response is in progress.
    #[test]
    fn no_second_response_create_before_the_first_is_answered() {
        let mut s = claimed();
        s.handle_text(r#"{"type":"response.created","response":{"id":"r1"}}"#)
            .unwrap();
        s.handle_command(Command::UserText("(The caller pressed 1.)".into()));
        while s.poll_transmit().is_some() {}
        s.handle_text(r#"{"type":"response.done","response":{"id":"r1","status":"completed"}}"#)
            .unwrap();
        s.handle_command(Command::Respond {
            instructions: Some("Say exactly: \"One moment.\"".into()),
            tools: false,
        });
        let creates: Vec<String> = std::iter::from_fn(|| s.poll_transmit())
            .filter(|t| t.contains("response.create"))
            .collect();
        assert_eq!(creates.len(), 1, "{creates:#?}");
    }
}
