//! Twilio's form-encoded requests (docs/twilio-openai-reference.md §1, §5): the raw pairs (every received param is
//! signed, including ones we do not know) and the typed views the handlers use.

use std::fmt;

use crate::domain::{CallSid, CallStatus};

/// A required field is missing or invalid; the message names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FormError(pub String);

/// Parses an `application/x-www-form-urlencoded` body, keeping repeated names and order.
pub fn parse(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn get<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn required<'a>(params: &'a [(String, String)], name: &str) -> Result<&'a str, FormError> {
    match get(params, name) {
        Some(v) if !v.trim().is_empty() => Ok(v.trim()),
        _ => Err(FormError(format!("missing form field {name}"))),
    }
}

fn call_sid(params: &[(String, String)]) -> Result<CallSid, FormError> {
    CallSid::parse(required(params, "CallSid")?).map_err(|e| FormError(format!("CallSid: {e}")))
}

/// Twilio `CallStatus` (also `DialCallStatus`), in Twilio's spelling. What warmline stores is
/// [`CallStatus`]; [`TwilioCallStatus::final_status`] maps one to the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TwilioCallStatus {
    /// `queued`
    Queued,
    /// `ringing`
    Ringing,
    /// `in-progress`
    InProgress,
    /// `completed`
    Completed,
    /// `busy`
    Busy,
    /// `failed`
    Failed,
    /// `no-answer`
    NoAnswer,
    /// `canceled`
    Canceled,
    /// Anything else (Twilio may add values).
    Unknown(String),
}

impl TwilioCallStatus {
    /// Parses Twilio's value.
    pub fn parse(s: &str) -> Self {
        match s {
            "queued" => Self::Queued,
            "ringing" => Self::Ringing,
            "in-progress" => Self::InProgress,
            "completed" => Self::Completed,
            "busy" => Self::Busy,
            "failed" => Self::Failed,
            "no-answer" => Self::NoAnswer,
            "canceled" => Self::Canceled,
            other => Self::Unknown(other.to_string()),
        }
    }

    /// Whether the call is over.
    pub fn is_terminal(&self) -> bool {
        self.final_status().is_some()
    }

    /// The status a call record keeps when Twilio reports this one before the media stream:
    /// `Some` exactly for the terminal statuses.
    pub fn final_status(&self) -> Option<CallStatus> {
        match self {
            Self::Completed => Some(CallStatus::Completed),
            Self::Busy => Some(CallStatus::Busy),
            Self::Failed => Some(CallStatus::Failed),
            Self::NoAnswer => Some(CallStatus::NoAnswer),
            Self::Canceled => Some(CallStatus::Canceled),
            Self::Queued | Self::Ringing | Self::InProgress | Self::Unknown(_) => None,
        }
    }

    /// The terminal statuses. Their labels are also `warmline_warm_sessions_closed_total{reason}`
    /// values (the status callback closes an unclaimed session with them, src/twilio/webhook.rs).
    pub const TERMINAL: &'static [TwilioCallStatus] = &[
        Self::Completed,
        Self::Busy,
        Self::Failed,
        Self::NoAnswer,
        Self::Canceled,
    ];

    /// Twilio's spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Unknown(s) => s,
            known => known.label(),
        }
    }

    /// A static label (unknown values collapse to `other`).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Ringing => "ringing",
            Self::InProgress => "in-progress",
            Self::Completed => "completed",
            Self::Busy => "busy",
            Self::Failed => "failed",
            Self::NoAnswer => "no-answer",
            Self::Canceled => "canceled",
            Self::Unknown(_) => "other",
        }
    }
}

impl fmt::Display for TwilioCallStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `POST /twilio/voice`.
#[derive(Debug, Clone)]
pub struct VoiceRequest {
    /// The call.
    pub call_sid: CallSid,
    /// The account.
    pub account_sid: String,
    /// Caller id as Twilio gives it (may be `anonymous`, `client:…`).
    pub from: String,
    /// The number called (looked up as E.164 by the handler).
    pub to: String,
    /// Usually `ringing`.
    pub call_status: TwilioCallStatus,
    /// `inbound`, `outbound-api`, …
    pub direction: String,
    /// Only with caller-id lookup.
    pub caller_name: Option<String>,
    /// SHAKEN/STIR verification of the caller id (`TN-Validation-Passed-A`, …); United States
    /// calls only, absent elsewhere.
    pub stir_verstat: Option<String>,
}

impl VoiceRequest {
    /// Reads the typed view from the pairs.
    pub fn from_params(params: &[(String, String)]) -> Result<Self, FormError> {
        Ok(Self {
            call_sid: call_sid(params)?,
            account_sid: get(params, "AccountSid").unwrap_or_default().to_string(),
            from: get(params, "From").unwrap_or("unknown").trim().to_string(),
            to: required(params, "To")?.to_string(),
            call_status: TwilioCallStatus::parse(get(params, "CallStatus").unwrap_or("ringing")),
            direction: get(params, "Direction").unwrap_or("inbound").to_string(),
            caller_name: get(params, "CallerName")
                .filter(|s| !s.trim().is_empty())
                .map(str::to_string),
            stir_verstat: get(params, "StirVerstat")
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| s.chars().take(64).collect()),
        })
    }
}

/// `POST /twilio/status` and `POST /twilio/after-stream` (the `<Connect action>` callback).
#[derive(Debug, Clone)]
pub struct StatusRequest {
    /// The call.
    pub call_sid: CallSid,
    /// Its status now.
    pub call_status: TwilioCallStatus,
    /// Seconds, on completed calls.
    pub call_duration: Option<u64>,
}

impl StatusRequest {
    /// Reads the typed view from the pairs.
    pub fn from_params(params: &[(String, String)]) -> Result<Self, FormError> {
        Ok(Self {
            call_sid: call_sid(params)?,
            call_status: TwilioCallStatus::parse(required(params, "CallStatus")?),
            call_duration: get(params, "CallDuration").and_then(|d| d.trim().parse().ok()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_names_and_encoded_values_survive_parsing() {
        let p = parse(b"A=b&A=a&To=%2B15005550006&CallerName=O%27Brien+%26+S%C3%B8n");
        assert_eq!(p[0], ("A".into(), "b".into()));
        assert_eq!(p[1], ("A".into(), "a".into()));
        assert_eq!(p[2].1, "+15005550006");
        assert_eq!(p[3].1, "O'Brien & Søn");
    }

    #[test]
    fn voice_request_names_the_missing_field() {
        let err = VoiceRequest::from_params(&parse(b"To=%2B1500")).unwrap_err();
        assert!(err.0.contains("CallSid"), "{err}");
        let err = VoiceRequest::from_params(&parse(b"CallSid=CA1")).unwrap_err();
        assert!(err.0.contains("To"), "{err}");
        let err = VoiceRequest::from_params(&parse(b"CallSid=CA%3Cx%3E&To=1")).unwrap_err();
        assert!(err.0.contains("CallSid"), "{err}");
    }

    #[test]
    fn voice_request_keeps_withheld_caller_ids() {
        let v = VoiceRequest::from_params(&parse(
            b"CallSid=CA1&From=anonymous&To=%2B15005550006&CallStatus=ringing",
        ))
        .unwrap();
        assert_eq!(v.from, "anonymous");
        assert_eq!(v.call_status, TwilioCallStatus::Ringing);
    }

    #[test]
    fn terminal_statuses() {
        for s in ["completed", "busy", "failed", "no-answer", "canceled"] {
            assert!(TwilioCallStatus::parse(s).is_terminal(), "{s}");
        }
        for s in ["queued", "ringing", "in-progress", "weird"] {
            assert!(!TwilioCallStatus::parse(s).is_terminal(), "{s}");
        }
    }

    #[test]
    fn terminal_statuses_map_to_the_stored_spelling() {
        for (twilio, stored) in [
            ("completed", "completed"),
            ("busy", "busy"),
            ("failed", "failed"),
            ("no-answer", "no_answer"),
            ("canceled", "canceled"),
        ] {
            let status = TwilioCallStatus::parse(twilio).final_status();
            assert_eq!(status.map(CallStatus::as_str), Some(stored), "{twilio}");
        }
    }
}

#[cfg(test)]
mod props {
    //! Properties of the form parser (README.md, Security, "Parsers that cannot be crashed").
    use proptest::prelude::*;

    use super::*;
    use crate::props::text;

    /// Names the typed views read, so generated pairs reach their branches.
    const NAMES: &[&str] = &[
        "CallSid",
        "AccountSid",
        "From",
        "To",
        "CallStatus",
        "Direction",
        "CallerName",
        "StirVerstat",
        "CallDuration",
    ];

    fn pairs() -> impl Strategy<Value = Vec<(String, String)>> {
        prop::collection::vec(
            (
                prop_oneof![
                    prop::sample::select(NAMES).prop_map(str::to_string),
                    text(6)
                ],
                prop_oneof![
                    text(12),
                    "CA[0-9a-f]{32}",
                    "\\+[0-9]{1,15}",
                    prop::sample::select(&["ringing", "completed", "no-answer", " 42 "][..])
                        .prop_map(str::to_string),
                ],
            ),
            0..8,
        )
    }

    fn encode(pairs: &[(String, String)]) -> String {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish()
    }

    proptest! {
        #![proptest_config(crate::props::config(1024))]

        #[test]
        fn arbitrary_bodies_never_panic(body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..256),
            text(48).prop_map(String::into_bytes),
        ]) {
            let params = parse(&body);
            let _ = VoiceRequest::from_params(&params);
            let _ = StatusRequest::from_params(&params);
        }

        #[test]
        fn typed_views_of_arbitrary_pairs_never_panic(params in pairs()) {
            let _ = VoiceRequest::from_params(&params);
            let _ = StatusRequest::from_params(&params);
        }

        #[test]
        fn an_encoded_form_parses_back_to_the_same_pairs(params in pairs()) {
            prop_assert_eq!(parse(encode(&params).as_bytes()), params);
        }
    }
}
