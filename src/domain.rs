//! Identifier newtypes and validated domain values shared by every boundary.
//!
//! IDs are newtypes so a `CallSid` can never be passed where a `StreamSid` is expected; validated
//! values (`E164`, `Voice`, `CallStatus`) can only be built through `parse`, which names what is
//! wrong.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// Why a domain value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DomainError(pub String);

macro_rules! sid_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Accepts 1 to 64 ASCII letters, digits, `-` or `_` (Twilio SIDs are 34).
            pub fn parse(raw: impl Into<String>) -> Result<Self, DomainError> {
                let raw = raw.into();
                if raw.is_empty() || raw.len() > 64
                    || !raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return Err(DomainError(format!(
                        concat!("invalid ", $what, " {:?}: expected 1-64 ASCII letters or digits"),
                        raw.chars().take(80).collect::<String>()
                    )));
                }
                Ok(Self(raw))
            }
            /// The SID as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = DomainError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(value)
            }
        }
        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }
    };
}

sid_type!(
    /// Twilio Call SID (`CA…`): the key of a call everywhere.
    CallSid,
    "CallSid"
);
sid_type!(
    /// Twilio Media Stream SID (`MZ…`).
    StreamSid,
    "StreamSid"
);

/// Database id of a client (business). Serialised and deserialised as the bare integer (so the
/// admin API's JSON, query strings and path segments read it as they read an `i32`, with the same
/// errors); the store converts it to and from its `i32` columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClientId(i32);

impl ClientId {
    /// The id of row `id` of `clients`.
    pub const fn new(id: i32) -> Self {
        Self(id)
    }
    /// The column value.
    pub const fn get(self) -> i32 {
        self.0
    }
}

impl From<i32> for ClientId {
    fn from(id: i32) -> Self {
        Self(id)
    }
}
impl From<ClientId> for i32 {
    fn from(id: ClientId) -> i32 {
        id.0
    }
}
impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Where a call record stands: the `calls.status` column, and `status` in the admin API's calls.
/// The strings ([`CallStatus::as_str`], also the serde form) are a contract with API clients and
/// stored rows: never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    /// `ringing`: the voice webhook answered; the call has not ended yet.
    Ringing,
    /// `rejected`: the number called belongs to no active client.
    Rejected,
    /// `completed`: the call ended after its media stream (or Twilio reported `completed`
    /// before one).
    Completed,
    /// `unanswered`: no media stream arrived within `prewarm.ttl_secs` (closed by the reaper).
    Unanswered,
    /// `busy`: Twilio reported `busy` before the media stream.
    Busy,
    /// `failed`: Twilio reported `failed` before the media stream.
    Failed,
    /// `no_answer`: Twilio reported `no-answer` before the media stream.
    NoAnswer,
    /// `canceled`: Twilio reported `canceled` (the caller hung up while it rang).
    Canceled,
}

impl CallStatus {
    /// Every status, in declaration order.
    pub const ALL: [Self; 8] = [
        Self::Ringing,
        Self::Rejected,
        Self::Completed,
        Self::Unanswered,
        Self::Busy,
        Self::Failed,
        Self::NoAnswer,
        Self::Canceled,
    ];

    /// The stored (and serialised) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ringing => "ringing",
            Self::Rejected => "rejected",
            Self::Completed => "completed",
            Self::Unanswered => "unanswered",
            Self::Busy => "busy",
            Self::Failed => "failed",
            Self::NoAnswer => "no_answer",
            Self::Canceled => "canceled",
        }
    }

    /// Parses the stored spelling (exactly as [`CallStatus::as_str`] writes it).
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == raw)
            .ok_or_else(|| {
                DomainError(format!(
                    "unknown call status {:?}",
                    raw.chars().take(80).collect::<String>()
                ))
            })
    }
}

impl FromStr for CallStatus {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}
impl fmt::Display for CallStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A phone number in E.164 form: `+` then 2 to 15 digits, the first not 0.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct E164(String);

impl E164 {
    /// Parses `+15551234567`; spaces, dashes, dots and parentheses are removed first.
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let cleaned: String = raw
            .trim()
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
            .collect();
        let digits = cleaned.strip_prefix('+').ok_or_else(|| {
            DomainError(format!(
                "phone number {raw:?} must be in E.164 form, starting with +"
            ))
        })?;
        if !(2..=15).contains(&digits.len())
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || digits.starts_with('0')
        {
            return Err(DomainError(format!(
                "phone number {raw:?} must be + followed by 2 to 15 digits, not starting with 0"
            )));
        }
        Ok(Self(cleaned))
    }
    /// The number as `+digits`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for E164 {
    type Error = DomainError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}
impl From<E164> for String {
    fn from(value: E164) -> String {
        value.0
    }
}
impl fmt::Display for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "E164({})", self.0)
    }
}

/// The OpenAI Realtime output voices (GA); the voice cannot change after the first audio.
pub const VOICES: &[&str] = &[
    "alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar",
];

/// A Realtime voice name from [`VOICES`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Voice(String);

impl Voice {
    /// Accepts one of [`VOICES`] (case-insensitive).
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let lower = raw.trim().to_ascii_lowercase();
        if VOICES.contains(&lower.as_str()) {
            Ok(Self(lower))
        } else {
            Err(DomainError(format!(
                "unknown voice {raw:?}; expected one of {}",
                VOICES.join(", ")
            )))
        }
    }
    /// The voice name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Voice {
    fn default() -> Self {
        Self("marin".into())
    }
}
impl TryFrom<String> for Voice {
    type Error = DomainError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}
impl From<Voice> for String {
    fn from(value: Voice) -> String {
        value.0
    }
}

/// How far a client trusts the caller id when using caller memory (admin API
/// `caller_id_trust`). Twilio adds `StirVerstat` to the voice webhook when the call carried a
/// SHAKEN/STIR identity (United States only; elsewhere it is absent): `TN-Validation-Passed-A`
/// / `-B` / `-C`, `TN-Validation-Failed-…`, `No-TN-Validation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CallerIdTrust {
    /// Memory and name only for a caller id validated with attestation A or B.
    VerifiedOnly,
    /// Memory unless validation failed or the attestation is C (the default: calls with no
    /// `StirVerstat` at all, as outside the United States, are trusted).
    #[default]
    UnlessFailed,
    /// Always use memory.
    Always,
}

/// Where a person reached the business: a phone call, or one of the text channels
/// (`crate::text`). Stored as `calls.channel`; the names are a contract (README "Text channels").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// A call (Twilio voice).
    #[default]
    Voice,
    /// The web chat (`/api/chat/…`).
    Webchat,
    /// WhatsApp through Twilio Messaging.
    Whatsapp,
    /// SMS through Twilio Messaging.
    Sms,
    /// Kommo CRM.
    Kommo,
}

impl Channel {
    /// Every channel.
    pub const ALL: [Channel; 5] = [
        Self::Voice,
        Self::Webchat,
        Self::Whatsapp,
        Self::Sms,
        Self::Kommo,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Voice => "voice",
            Self::Webchat => "webchat",
            Self::Whatsapp => "whatsapp",
            Self::Sms => "sms",
            Self::Kommo => "kommo",
        }
    }

    /// Reads back [`Channel::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the caller id is worth on one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerTrust {
    /// SHAKEN/STIR validated it (attestation A or B).
    Verified,
    /// Not validated, but the client's policy accepts it: memory is used, yet personal
    /// details are not recited to the caller.
    Unverified,
    /// The policy refuses it: no memory, no name, nothing remembered.
    Untrusted,
}

impl CallerTrust {
    /// Reads back [`CallerTrust::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Verified, Self::Unverified, Self::Untrusted]
            .into_iter()
            .find(|t| t.as_str() == s)
    }

    /// `verified`, `unverified` or `untrusted` (sent to operator tools, shown in logs).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Verified => "verified",
            Self::Unverified => "unverified",
            Self::Untrusted => "untrusted",
        }
    }
}

impl CallerIdTrust {
    /// Every policy.
    pub const ALL: [CallerIdTrust; 3] = [Self::VerifiedOnly, Self::UnlessFailed, Self::Always];

    /// The setting's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::VerifiedOnly => "verified_only",
            Self::UnlessFailed => "unless_failed",
            Self::Always => "always",
        }
    }

    /// Parses the setting's value.
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s.trim())
            .ok_or_else(|| {
                DomainError(format!(
                    "{s:?} is not one of verified_only, unless_failed, always"
                ))
            })
    }

    /// The trust this policy gives a call whose webhook carried `stir_verstat` (absent: `None`).
    pub fn judge(self, stir_verstat: Option<&str>) -> CallerTrust {
        let v = stir_verstat.map(str::trim).unwrap_or_default();
        let verified = v.eq_ignore_ascii_case("TN-Validation-Passed-A")
            || v.eq_ignore_ascii_case("TN-Validation-Passed-B");
        if verified {
            return CallerTrust::Verified;
        }
        let lower = v.to_ascii_lowercase();
        let failed = lower.contains("failed") || lower.ends_with("-c");
        match self {
            Self::Always => CallerTrust::Unverified,
            Self::UnlessFailed if !failed => CallerTrust::Unverified,
            Self::UnlessFailed | Self::VerifiedOnly => CallerTrust::Untrusted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_id_trust_follows_the_policy_and_stir_verstat() {
        use CallerTrust::*;
        let cases = [
            (None, [Untrusted, Unverified, Unverified]),
            (
                Some("TN-Validation-Passed-A"),
                [Verified, Verified, Verified],
            ),
            (
                Some("TN-Validation-Passed-B"),
                [Verified, Verified, Verified],
            ),
            (
                Some("TN-Validation-Passed-C"),
                [Untrusted, Untrusted, Unverified],
            ),
            (
                Some("TN-Validation-Failed-A"),
                [Untrusted, Untrusted, Unverified],
            ),
            (
                Some("TN-Validation-Failed"),
                [Untrusted, Untrusted, Unverified],
            ),
            (
                Some("No-TN-Validation"),
                [Untrusted, Unverified, Unverified],
            ),
        ];
        for (stir, want) in cases {
            for (policy, w) in CallerIdTrust::ALL.into_iter().zip(want) {
                assert_eq!(policy.judge(stir), w, "{policy:?} {stir:?}");
            }
        }
        for p in CallerIdTrust::ALL {
            assert_eq!(CallerIdTrust::parse(p.as_str()).unwrap(), p);
        }
        assert!(CallerIdTrust::parse("sometimes").is_err());
        assert_eq!(CallerIdTrust::default(), CallerIdTrust::UnlessFailed);
    }

    #[test]
    fn e164_accepts_formatted_numbers_and_normalises_them() {
        assert_eq!(
            E164::parse("+1 (415) 555-0100").unwrap().as_str(),
            "+14155550100"
        );
        assert_eq!(
            E164::parse("+447700900123").unwrap().as_str(),
            "+447700900123"
        );
    }

    #[test]
    fn e164_refuses_what_is_not_a_number() {
        for bad in [
            "14155550100",
            "+",
            "+0123",
            "+1234567890123456",
            "+1415abc",
            "anonymous",
            "",
        ] {
            assert!(E164::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sids_refuse_injection_and_empty() {
        assert!(CallSid::parse("CA0123456789abcdef0123456789abcdef").is_ok());
        for bad in ["", "CA 1", "CA<x>", &"C".repeat(65)] {
            assert!(CallSid::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn call_statuses_round_trip_through_their_stored_and_json_spellings() {
        let spelled: Vec<&str> = CallStatus::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            spelled,
            [
                "ringing",
                "rejected",
                "completed",
                "unanswered",
                "busy",
                "failed",
                "no_answer",
                "canceled"
            ]
        );
        for status in CallStatus::ALL {
            assert_eq!(CallStatus::parse(status.as_str()), Ok(status));
            assert_eq!(status.to_string().parse::<CallStatus>(), Ok(status));
            let json = serde_json::to_value(status).unwrap();
            assert_eq!(json, serde_json::json!(status.as_str()));
            assert_eq!(serde_json::from_value::<CallStatus>(json).unwrap(), status);
        }
        for bad in ["", "Ringing", "no-answer", "in-progress", "other"] {
            assert!(CallStatus::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn client_ids_read_and_write_as_bare_integers() {
        let id = ClientId::new(42);
        assert_eq!(id.get(), 42);
        assert_eq!(i32::from(id), 42);
        assert_eq!(ClientId::from(42), id);
        assert_eq!(id.to_string(), "42");
        assert_eq!(serde_json::to_string(&id).unwrap(), "42");
        assert_eq!(serde_json::to_string(&Some(id)).unwrap(), "42");
        assert_eq!(serde_json::from_str::<ClientId>("42").unwrap(), id);
        assert!(serde_json::from_str::<ClientId>("\"42\"").is_err());
        assert!(serde_json::from_str::<ClientId>("4294967296").is_err());
    }

    #[test]
    fn voices_are_checked() {
        assert_eq!(Voice::parse("Marin").unwrap().as_str(), "marin");
        assert!(Voice::parse("robot").is_err());
    }
}
