//! The voice-engine seam: what a call asks of the speech-to-speech model and what the model
//! tells the call, independent of the engine's wire protocol (docs/architecture.md, "The
//! engine seam").
//!
//! An engine is a sans-IO machine for one model socket. The call's task owns it from the
//! claim on; before that a warm session's own task drives it (connect, configure, buffer the
//! greeting). Today's engine is OpenAI Realtime ([`crate::realtime::proto::Session`]); a second
//! one (a protocol with different events but the same role in the call) implements the same
//! [`Engine`] trait and is driven by the same loops.
//!
//! Contract (the same as every machine here):
//! 1. Frames from the socket go in through [`Engine::handle_text`]; what the call wants goes in
//!    as one [`Command`] through [`Engine::handle_command`].
//! 2. Frames for the socket come out of [`Engine::poll_transmit`] (finished JSON text, written
//!    as is); what the call must know comes out of [`Engine::poll_event`] as an [`Event`].
//! 3. An engine does not support every command: one that runs barge-in in the model itself
//!    ignores `Cancel` and `Truncate`. Ignoring is silent; the call's rules do not change.

/// Which speech-to-speech engine a client's calls use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineKind {
    /// OpenAI Realtime (`openai.realtime_url`).
    #[default]
    Realtime,
    /// OpenAI GPT-Live (`openai.live_url`, docs/gpt-live-reference.md).
    Live,
}

impl EngineKind {
    /// The stored and API name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Realtime => "realtime",
            Self::Live => "live",
        }
    }

    /// The engine stored for a client (NULL or unreadable: Realtime).
    pub fn from_stored(stored: Option<&str>) -> Self {
        stored.and_then(|s| s.parse().ok()).unwrap_or_default()
    }
}

impl std::str::FromStr for EngineKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "realtime" => Ok(Self::Realtime),
            "live" => Ok(Self::Live),
            other => Err(format!("unknown engine {other:?} (realtime or live)")),
        }
    }
}

/// What the call asks of the engine. One variant per thing a call can want, in one place:
/// a new capability (a function's output, re-seeding a reconnected session) is one more
/// variant here and one more arm in each engine's `handle_command`.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Caller audio (base64 μ-law 8 kHz, passed through untouched). The only droppable
    /// command: when the model's socket cannot keep up, caller audio is dropped and counted.
    Append(String),
    /// Stop the response being spoken (the caller interrupted it).
    Cancel,
    /// The caller heard only `audio_end_ms` of an agent item: cut the model's memory there.
    Truncate {
        /// The engine's id of the agent item.
        item_id: String,
        /// ms of that item's audio the caller heard.
        audio_end_ms: u64,
    },
    /// A user text turn (e.g. a DTMF key) and a request for an answer to it.
    UserText(String),
    /// The caller heard only `text` of the agent item `item_id`, one the engine has as text
    /// (a greeting played from the cache, given to it as an assistant message): the item is
    /// replaced by what was heard (removed when `text` is empty).
    Heard {
        /// The engine's id of the agent item.
        item_id: String,
        /// What the caller heard of it.
        text: String,
    },
    /// A tool's answer to the model's function call `call_id` (JSON text). Sent as an item;
    /// the answer to it is asked for with [`Command::Respond`].
    FunctionOutput {
        /// The model's call id.
        call_id: String,
        /// JSON text the model reads.
        output: String,
    },
    /// Ask the model for a response, one at a time (held while one is being generated): to the
    /// tool outputs just sent, or, with `instructions`, a line it must say (the hand-off before
    /// a transfer, a goodbye). `tools: false` forbids calling tools in that response.
    Respond {
        /// Per-response instructions, if any.
        instructions: Option<String>,
        /// Whether the response may call tools.
        tools: bool,
    },
    /// Another of the client's agents takes over: new instructions and tools for the rest of
    /// the session (voice and audio settings stay).
    Reconfigure {
        /// The whole prompt.
        instructions: String,
        /// Function tools (`session.update` shape).
        tools: Vec<serde_json::Value>,
    },
    /// A re-opened session learns the conversation so far (as quoted data).
    Seed(String),
    /// The call is over: nothing more will be sent.
    Close,
}

impl Command {
    /// Whether this command may be dropped when the engine's socket is backed up (caller audio
    /// goes stale; control never is dropped).
    pub fn is_droppable(&self) -> bool {
        matches!(self, Self::Append(_))
    }
}

/// How far a session is, as its warm task reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Not configured yet.
    Opening,
    /// Configured (Realtime `session.updated`, GPT-Live `session.started`).
    Configured,
    /// Configured, and the greeting's first audio buffered (or none expected): the caller can
    /// hear it at once.
    Ready,
}

/// What the engine tells the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Agent audio (base64 μ-law).
    AudioDelta {
        /// Response id.
        response_id: String,
        /// Agent item id.
        item_id: String,
        /// Base64 μ-law.
        payload: String,
    },
    /// Silence on an engine's continuous output track outside any utterance (base64 μ-law):
    /// not sent to Twilio (it plays silence when it has nothing).
    Silence {
        /// Base64 μ-law.
        payload: String,
    },
    /// The caller started speaking.
    SpeechStarted {
        /// ms into the input audio.
        audio_start_ms: u64,
    },
    /// The caller stopped speaking.
    SpeechStopped {
        /// ms into the input audio.
        audio_end_ms: u64,
    },
    /// What the caller said.
    CallerTranscript {
        /// Text.
        text: String,
    },
    /// Part of what the agent is saying.
    AgentTranscriptDelta {
        /// Agent item id.
        item_id: String,
        /// Text fragment.
        text: String,
    },
    /// What the agent said (the whole item).
    AgentTranscript {
        /// Agent item id.
        item_id: String,
        /// Text.
        text: String,
    },
    /// A response started; `scripted` when it answers a [`Command::Respond`] with instructions
    /// (the hand-off line, a goodbye), so the call knows which audio is that line.
    ResponseCreated {
        /// Response id.
        response_id: String,
        /// Whether it is the scripted line asked for.
        scripted: bool,
    },
    /// A response finished.
    ResponseDone {
        /// Response id.
        response_id: String,
        /// completed, cancelled, failed, incomplete.
        status: String,
    },
    /// The model called a tool.
    FunctionCall {
        /// The response that made the call.
        response_id: String,
        /// Call id.
        call_id: String,
        /// Function name.
        name: String,
        /// JSON arguments.
        arguments: String,
    },
    /// The session ends at this wall-clock time (unix seconds; GPT-Live's `expires_at`): the
    /// call renews it before then, between turns.
    Expires {
        /// Unix seconds.
        at_unix_secs: i64,
    },
    /// An error from the engine; `fatal` ones end the call.
    Error {
        /// Error code (or type).
        code: String,
        /// Message.
        message: String,
        /// Whether the session is unusable (e.g. `session_expired`, a refused configuration).
        fatal: bool,
    },
}

/// A frame from the engine's socket that could not be parsed (ignored and logged; the call
/// goes on).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EngineError(pub String);

/// One speech-to-speech session, sans IO (see the module docs for the contract).
pub trait Engine: Send + std::fmt::Debug {
    /// One text frame from the socket.
    fn handle_text(&mut self, text: &str) -> Result<(), EngineError>;
    /// One command from the call.
    fn handle_command(&mut self, command: Command);
    /// The socket closed.
    fn handle_closed(&mut self);
    /// Next frame for the socket (JSON text).
    fn poll_transmit(&mut self) -> Option<String>;
    /// Next event for the call (after [`Engine::claim`]; before it, events are buffered).
    fn poll_event(&mut self) -> Option<Event>;
    /// A call takes the session: everything buffered so far (the greeting first), in order.
    fn claim(&mut self) -> Vec<Event>;
    /// The socket opened at `now`: the session's first frames are queued.
    fn handle_open(&mut self, now: std::time::Instant);
    /// Whether the greeting was asked of the model (generated, billed whether heard or not).
    fn greeted(&self) -> bool;
    /// [`Engine::greeted`], reported once: true the first time it is asked after the greeting
    /// was asked of the model (`warmline_greetings_total{source="generated"}` counts it then,
    /// whichever task holds the session: the warm task, or the call after a claim).
    fn take_greeted(&mut self) -> bool;
    /// Why the session's configuration was refused, once (the session is then unusable).
    fn poll_setup_error(&mut self) -> Option<String>;
    /// How far the session is.
    fn readiness(&self) -> Readiness;
    /// Bytes of greeting audio dropped over the buffer cap before the claim.
    fn dropped_bytes(&self) -> usize;
    /// Which engine this is (the metrics' `{engine}` label).
    fn kind(&self) -> EngineKind;
    /// ms of audio given to the model so far (caller audio, and silence fed): the session's
    /// timeline, what GPT-Live bills (`warmline_engine_session_seconds_total`).
    fn input_ms(&self) -> u64;
    /// When the loop must call [`Engine::handle_timeout`] (an engine whose model needs a
    /// steady input, e.g. silence fed while the caller says nothing); none by default.
    fn poll_timeout(&self) -> Option<std::time::Instant> {
        None
    }
    /// The deadline from [`Engine::poll_timeout`] passed.
    fn handle_timeout(&mut self, _now: std::time::Instant) {}
    /// Whether the model runs barge-in itself (it stops speaking when the caller talks, and
    /// takes what it emitted as heard): the call then clears only a backlog it made itself (a
    /// flushed greeting), and sends no `Cancel`/`Truncate` of its own accord.
    fn model_yields(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_caller_audio_is_droppable() {
        assert!(Command::Append("AAAA".into()).is_droppable());
        for control in [
            Command::Cancel,
            Command::Truncate {
                item_id: "i".into(),
                audio_end_ms: 1,
            },
            Command::UserText("t".into()),
            Command::FunctionOutput {
                call_id: "c".into(),
                output: "{}".into(),
            },
            Command::Respond {
                instructions: None,
                tools: true,
            },
            Command::Reconfigure {
                instructions: "i".into(),
                tools: vec![],
            },
            Command::Seed("s".into()),
            Command::Close,
        ] {
            assert!(!control.is_droppable(), "{control:?}");
        }
    }
}
