//! Identifier newtypes and validated domain values shared by every boundary.
//!
//! IDs are newtypes so a `CallSid` can never be passed where a `StreamSid` is expected; validated
//! values (`E164`, `Voice`) can only be built through `parse`, which names what is wrong.

use std::fmt;

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

/// Database id of a client (business).
pub type ClientId = i32;

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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn voices_are_checked() {
        assert_eq!(Voice::parse("Marin").unwrap().as_str(), "marin");
        assert!(Voice::parse("robot").is_err());
    }
}
