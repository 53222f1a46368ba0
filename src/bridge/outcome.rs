//! What one call leaves behind: why it ended, which path it took, its transcript, and the short
//! note the caller's memory keeps. Pure data, built by [`super::call::Call`] and written by the
//! store writer off the relay path.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Which side or rule ended a call (becomes `calls.end_reason` and a log field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// Twilio sent `stop` (the caller hung up, or the call was redirected).
    TwilioStop,
    /// The Twilio socket closed without `stop`.
    TwilioClosed,
    /// Twilio sent something we could not accept (bad JSON, bad base64, bad token…).
    TwilioProtocol(String),
    /// The Realtime socket closed or failed.
    RealtimeClosed(String),
    /// The Realtime API reported a fatal error (e.g. `session_expired`).
    RealtimeError(String),
    /// No Realtime session could be opened for the call.
    RealtimeUnavailable(String),
    /// `call.max_duration_secs` elapsed.
    MaxDuration,
    /// The process is shutting down.
    Shutdown,
    /// The agent put the caller through to a person (`transfer_to_human`): the after-stream
    /// TwiML dials the transfer number.
    Transfer,
    /// The agent ended the call after its goodbye (`end_call`): the after-stream TwiML hangs up.
    AgentHangup,
    /// A deploy's drain (`server.drain_secs`) ran out while the call was live: the
    /// after-stream TwiML says a short line and dials the fallback number, or hangs up.
    Drained,
    /// Twilio sent no media for `call.media_timeout_secs` (a dead or half-open leg).
    TwilioSilent,
}

impl EndReason {
    /// Every [`EndReason::code`], in declaration order: the `warmline_calls_total{reason}`
    /// series that exist at zero from start (src/metrics.rs). A test keeps it in step with
    /// the variants.
    pub const CODES: &'static [&'static str] = &[
        "twilio_stop",
        "twilio_closed",
        "twilio_protocol",
        "realtime_closed",
        "realtime_error",
        "realtime_unavailable",
        "max_duration",
        "shutdown",
        "transfer",
        "agent_hangup",
        "drained",
        "twilio_silent",
    ];

    /// Short machine-readable code (metric label, `end_reason` column prefix).
    pub fn code(&self) -> &'static str {
        match self {
            Self::TwilioStop => "twilio_stop",
            Self::TwilioClosed => "twilio_closed",
            Self::TwilioProtocol(_) => "twilio_protocol",
            Self::RealtimeClosed(_) => "realtime_closed",
            Self::RealtimeError(_) => "realtime_error",
            Self::RealtimeUnavailable(_) => "realtime_unavailable",
            Self::MaxDuration => "max_duration",
            Self::Shutdown => "shutdown",
            Self::Transfer => "transfer",
            Self::AgentHangup => "agent_hangup",
            Self::Drained => "drained",
            Self::TwilioSilent => "twilio_silent",
        }
    }

    /// Reads back a stored `end_reason`: the code, then `: detail` for the reasons that carry
    /// one (what [`EndReason::describe`] writes). Only the code prefix decides the variant; a
    /// detail-carrying reason stored without one gets an empty detail. `None` for text no
    /// `EndReason` wrote (e.g. the reaper's or the status callback's reasons).
    pub fn from_code(stored: &str) -> Option<Self> {
        let (code, detail) = match stored.split_once(':') {
            Some((code, detail)) => (code, detail.strip_prefix(' ').unwrap_or(detail)),
            None => (stored, ""),
        };
        let detail = detail.to_string();
        Some(match code {
            "twilio_stop" => Self::TwilioStop,
            "twilio_closed" => Self::TwilioClosed,
            "twilio_protocol" => Self::TwilioProtocol(detail),
            "realtime_closed" => Self::RealtimeClosed(detail),
            "realtime_error" => Self::RealtimeError(detail),
            "realtime_unavailable" => Self::RealtimeUnavailable(detail),
            "max_duration" => Self::MaxDuration,
            "shutdown" => Self::Shutdown,
            "transfer" => Self::Transfer,
            "agent_hangup" => Self::AgentHangup,
            "drained" => Self::Drained,
            "twilio_silent" => Self::TwilioSilent,
            _ => return None,
        })
    }

    /// Whether the call ended the way calls normally end (so the after-stream TwiML hangs up
    /// rather than apologising and dialling the fallback number).
    pub fn is_normal(&self) -> bool {
        matches!(
            self,
            Self::TwilioStop | Self::TwilioClosed | Self::MaxDuration | Self::AgentHangup
        )
    }

    /// `code: detail`, as stored.
    pub fn describe(&self) -> String {
        match self {
            Self::TwilioProtocol(d)
            | Self::RealtimeClosed(d)
            | Self::RealtimeError(d)
            | Self::RealtimeUnavailable(d) => format!("{}: {d}", self.code()),
            _ => self.code().to_string(),
        }
    }
}

/// Warm (session opened while ringing) or cold (opened when the stream started).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallPath {
    /// The webhook's warm session was claimed.
    Warm,
    /// A session was opened when the stream started.
    Cold,
}

impl CallPath {
    /// Both paths (the `warmline_time_to_first_audio_seconds{path}` series, src/metrics.rs).
    pub const ALL: [CallPath; 2] = [CallPath::Warm, CallPath::Cold];

    /// `warm` or `cold` (metric label and column value).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Warm => "warm",
            Self::Cold => "cold",
        }
    }
}

/// Who said a transcript line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The person on the phone.
    Caller,
    /// The Realtime agent.
    Agent,
    /// Something warmline recorded (DTMF, transfer).
    System,
}

impl Role {
    /// Column value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Caller => "caller",
            Self::Agent => "agent",
            Self::System => "system",
        }
    }
}

/// One transcript line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscriptLine {
    /// Who spoke.
    pub role: Role,
    /// What was said.
    pub text: String,
    /// When it was recorded.
    pub at: DateTime<Utc>,
}

/// Everything the store needs once a call is over.
#[derive(Debug, Clone)]
pub struct CallOutcome {
    /// Why it ended.
    pub end_reason: EndReason,
    /// Warm or cold, if a session was attached.
    pub path: Option<CallPath>,
    /// Stream `start` to first outbound audio.
    pub time_to_first_audio: Option<Duration>,
    /// When the stream started.
    pub started_at: DateTime<Utc>,
    /// When the call ended.
    pub ended_at: DateTime<Utc>,
    /// Transcript in order.
    pub transcript: Vec<TranscriptLine>,
    /// Audio frames dropped because Twilio could not keep up.
    pub frames_dropped: u64,
    /// Both sides as heard, when the call was recorded.
    pub recording: Option<crate::recording::timeline::Timeline>,
}

impl CallOutcome {
    /// Stream duration.
    pub fn duration(&self) -> Duration {
        (self.ended_at - self.started_at)
            .to_std()
            .unwrap_or_default()
    }

    /// A one-line note for the caller's memory: the date and what they asked first.
    pub fn memory_note(&self) -> Option<String> {
        let first = self
            .transcript
            .iter()
            .find(|l| l.role == Role::Caller && !l.text.trim().is_empty())?;
        let text: String = first.text.trim().chars().take(160).collect();
        Some(format!(
            "{}: caller said \"{}\"",
            self.started_at.format("%Y-%m-%d"),
            text
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(role: Role, text: &str) -> TranscriptLine {
        TranscriptLine {
            role,
            text: text.into(),
            at: Utc::now(),
        }
    }

    #[test]
    fn memory_note_quotes_the_first_thing_the_caller_said() {
        let now = Utc::now();
        let outcome = CallOutcome {
            end_reason: EndReason::TwilioStop,
            path: Some(CallPath::Warm),
            time_to_first_audio: None,
            started_at: now,
            ended_at: now,
            transcript: vec![
                line(Role::Agent, "Hello!"),
                line(Role::Caller, "  "),
                line(Role::Caller, "What are your hours?"),
                line(Role::Caller, "Thanks"),
            ],
            frames_dropped: 0,
            recording: None,
        };
        let note = outcome.memory_note().unwrap();
        assert!(
            note.ends_with("caller said \"What are your hours?\""),
            "{note}"
        );
    }

    #[test]
    fn end_reasons_describe_which_leg_failed() {
        assert_eq!(
            EndReason::RealtimeClosed("1006".into()).describe(),
            "realtime_closed: 1006"
        );
        assert!(EndReason::TwilioStop.is_normal());
        assert!(!EndReason::RealtimeError("x".into()).is_normal());
    }

    /// One of each variant. The match has no wildcard, so a new variant fails to compile here
    /// until it is listed (and so covered by the round trips below).
    fn every_end_reason() -> Vec<EndReason> {
        let all = vec![
            EndReason::TwilioStop,
            EndReason::TwilioClosed,
            EndReason::TwilioProtocol("stream token refused: expired".into()),
            EndReason::RealtimeClosed("1006".into()),
            EndReason::RealtimeError("session_expired".into()),
            EndReason::RealtimeUnavailable("connect: refused".into()),
            EndReason::MaxDuration,
            EndReason::Shutdown,
            EndReason::Transfer,
            EndReason::AgentHangup,
            EndReason::Drained,
            EndReason::TwilioSilent,
        ];
        for r in &all {
            match r {
                EndReason::TwilioStop
                | EndReason::TwilioClosed
                | EndReason::TwilioProtocol(_)
                | EndReason::RealtimeClosed(_)
                | EndReason::RealtimeError(_)
                | EndReason::RealtimeUnavailable(_)
                | EndReason::MaxDuration
                | EndReason::Shutdown
                | EndReason::Transfer
                | EndReason::AgentHangup
                | EndReason::Drained
                | EndReason::TwilioSilent => {}
            }
        }
        all
    }

    #[test]
    fn every_end_reason_round_trips_through_its_code_and_its_stored_text() {
        let all = every_end_reason();
        let mut codes: Vec<&str> = all.iter().map(EndReason::code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len(), "codes are distinct");
        for r in all {
            let from_code = EndReason::from_code(r.code()).unwrap_or_else(|| panic!("{r:?}"));
            assert_eq!(from_code.code(), r.code());
            assert_eq!(from_code.is_normal(), r.is_normal(), "{r:?}");
            assert_eq!(EndReason::from_code(&r.describe()), Some(r.clone()));
        }
    }

    #[test]
    fn codes_lists_every_end_reason_in_order() {
        let codes: Vec<&str> = every_end_reason().iter().map(EndReason::code).collect();
        assert_eq!(codes, EndReason::CODES);
        assert_eq!(CallPath::ALL.map(CallPath::as_str), ["warm", "cold"]);
    }

    #[test]
    fn only_stop_close_max_duration_and_the_agents_hang_up_are_normal_ends() {
        let normal: Vec<&str> = every_end_reason()
            .iter()
            .filter(|r| r.is_normal())
            .map(EndReason::code)
            .collect();
        assert_eq!(
            normal,
            [
                "twilio_stop",
                "twilio_closed",
                "max_duration",
                "agent_hangup"
            ]
        );
    }

    #[test]
    fn end_reasons_not_written_by_a_stream_are_not_parsed() {
        for other in [
            "",
            "reaped: no media stream within prewarm.ttl_secs",
            "ended before the media stream (canceled)",
            "TWILIO_STOP",
        ] {
            assert_eq!(EndReason::from_code(other), None, "{other}");
        }
    }
}
