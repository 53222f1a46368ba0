//! The fixed lines warmline speaks itself (not the agent's own words): when a number is not in
//! service, when the agent cannot take the call, when a failed call is put through to a person,
//! the hand-off before a transfer the agent asked for, and the busy line of a client at its
//! `limits.live_calls_per_client`. Each exists in English and Spanish and
//! is chosen by the client's language (`es`, `es-MX`, … → Spanish); any other language falls back
//! to English. A client may override any line with its own text ([`LineOverrides`], admin API
//! `lines`). Pure: no IO.

use std::collections::BTreeMap;

use serde_json::Value;

/// A line warmline speaks itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    /// The called number belongs to no active client.
    NotInService,
    /// The call cannot be answered (a bad request, a database failure, a failed call without a
    /// fallback number).
    Unavailable,
    /// A failed call is put through to the client's fallback number.
    PuttingThrough,
    /// The agent transfers the caller to a person (`transfer_to_human`): said by the agent's
    /// voice just before the stream ends and the phone rings.
    Handoff,
    /// A deploy's drain ran out of time: the call is put through to the fallback number.
    DrainTransfer,
    /// A deploy's drain ran out of time and there is no fallback number: the call ends.
    DrainGoodbye,
    /// The client has `limits.live_calls_per_client` calls already and no fallback number.
    Busy,
    /// A text channel's answer failed (the model timed out, erred or refused): written back
    /// instead of an answer (`crate::text`).
    TextFallback,
}

impl Line {
    /// Every line, in declaration order.
    pub const ALL: [Line; 8] = [
        Line::NotInService,
        Line::Unavailable,
        Line::PuttingThrough,
        Line::Handoff,
        Line::DrainTransfer,
        Line::DrainGoodbye,
        Line::Busy,
        Line::TextFallback,
    ];

    /// The key a client uses to override it (admin API `lines`).
    pub fn key(self) -> &'static str {
        match self {
            Self::NotInService => "not_in_service",
            Self::Unavailable => "unavailable",
            Self::PuttingThrough => "putting_through",
            Self::Handoff => "handoff",
            Self::DrainTransfer => "drain_transfer",
            Self::DrainGoodbye => "drain_goodbye",
            Self::Busy => "busy",
            Self::TextFallback => "text_fallback",
        }
    }
}

/// Longest override (characters): these are spoken on the phone (or written in a chat), briefly.
pub const OVERRIDE_MAX_CHARS: usize = 300;

/// A client's own texts for some lines (by [`Line::key`]); the rest keep the built-in text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LineOverrides(BTreeMap<&'static str, String>);

impl LineOverrides {
    /// Parses `{"handoff": "…", …}`; `null` is none. Errors name the offending key.
    pub fn parse(value: &Value) -> Result<Self, String> {
        let obj = match value {
            Value::Null => return Ok(Self::default()),
            Value::Object(o) => o,
            _ => return Err("must be an object like {\"handoff\": \"…\"}".into()),
        };
        let mut map = BTreeMap::new();
        for (k, v) in obj {
            let Some(line) = Line::ALL.iter().find(|l| l.key() == k) else {
                let keys: Vec<_> = Line::ALL.iter().map(|l| l.key()).collect();
                return Err(format!("unknown line {k:?} (known: {})", keys.join(", ")));
            };
            let text = v.as_str().map(str::trim).unwrap_or_default();
            if text.is_empty() {
                return Err(format!("{k}: must be a non-empty string"));
            }
            if text.chars().count() > OVERRIDE_MAX_CHARS {
                return Err(format!("{k}: at most {OVERRIDE_MAX_CHARS} characters"));
            }
            map.insert(line.key(), text.to_string());
        }
        Ok(Self(map))
    }

    /// As stored (JSON text), or `None` when there are no overrides.
    pub fn to_stored(&self) -> Option<String> {
        (!self.0.is_empty()).then(|| self.to_json().to_string())
    }

    /// Reads what [`LineOverrides::to_stored`] wrote (anything unreadable counts as none).
    pub fn from_stored(text: Option<&str>) -> Self {
        crate::json::from_stored(text, Self::parse)
    }

    /// The JSON form.
    pub fn to_json(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(k, v)| (k.to_string(), Value::String(v.clone())))
                .collect(),
        )
    }

    /// The client's text for `line` in `language`: its override, or the built-in line.
    pub fn text(&self, line: Line, language: &str) -> String {
        self.0
            .get(line.key())
            .cloned()
            .unwrap_or_else(|| text(line, language).to_string())
    }
}

/// The languages the fixed lines exist in.
const SPANISH: &str = "es";

/// The text of `line` in `language` (a language code or locale, e.g. `es`, `es-MX`, `en-US`).
pub fn text(line: Line, language: &str) -> &'static str {
    let spanish = base(language).eq_ignore_ascii_case(SPANISH);
    match (line, spanish) {
        (Line::NotInService, false) => "This number is not in service.",
        (Line::NotInService, true) => "Este número no está en servicio.",
        (Line::Unavailable, false) => {
            "We're sorry, we cannot take your call right now. Please try again later."
        }
        (Line::Unavailable, true) => {
            "Lo sentimos, ahora no podemos atender su llamada. Por favor, inténtelo más tarde."
        }
        (Line::PuttingThrough, false) => {
            "Sorry, something went wrong. Let me put you through to a colleague."
        }
        (Line::PuttingThrough, true) => "Disculpe, algo ha fallado. Le paso con un compañero.",
        (Line::Handoff, false) => "One moment, I'm putting you through to a member of our team.",
        (Line::Handoff, true) => "Un momento, le paso con una persona de nuestro equipo.",
        (Line::DrainTransfer, false) => "We need to transfer your call now. One moment, please.",
        (Line::DrainTransfer, true) => "Tenemos que transferir su llamada. Un momento, por favor.",
        (Line::DrainGoodbye, false) => {
            "We have to end this call now. Please call us again in a moment. Goodbye."
        }
        (Line::DrainGoodbye, true) => {
            "Tenemos que terminar esta llamada. Por favor, vuelva a llamarnos en un momento. Adiós."
        }
        (Line::Busy, false) => {
            "All our lines are busy right now. Please call again in a few minutes. Goodbye."
        }
        (Line::Busy, true) => {
            "Todas nuestras líneas están ocupadas en este momento. Por favor, vuelva a llamar en unos minutos. Adiós."
        }
        (Line::TextFallback, false) => {
            "Sorry, I can't answer right now. Please write again in a moment."
        }
        (Line::TextFallback, true) => {
            "Lo siento, ahora mismo no puedo responder. Por favor, escríbanos de nuevo en un momento."
        }
    }
}

/// The language's name in English, for the agent's instructions ("Speak Spanish"): the code
/// itself when it is not one warmline knows.
pub fn language_name(language: &str) -> &str {
    match base(language).to_ascii_lowercase().as_str() {
        "en" => "English",
        "es" => "Spanish",
        "fr" => "French",
        "de" => "German",
        "it" => "Italian",
        "pt" => "Portuguese",
        "ca" => "Catalan",
        "nl" => "Dutch",
        _ => language,
    }
}

/// `es` of `es-MX`.
fn base(language: &str) -> &str {
    language.split(['-', '_']).next().unwrap_or(language)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Line; 8] = Line::ALL;

    #[test]
    fn every_line_exists_in_english_and_spanish() {
        for line in ALL {
            let en = text(line, "en-US");
            let es = text(line, "es");
            assert!(!en.is_empty() && !es.is_empty());
            assert_ne!(en, es, "{line:?} is translated");
            assert_eq!(text(line, "es-MX"), es, "a Spanish locale is Spanish");
            assert_eq!(text(line, "ES"), es);
        }
    }

    #[test]
    fn other_languages_fall_back_to_english() {
        for line in ALL {
            assert_eq!(text(line, "fr"), text(line, "en"));
            assert_eq!(text(line, ""), text(line, "en"));
        }
    }

    #[test]
    fn a_client_overrides_a_line_and_keeps_the_rest() {
        let o = LineOverrides::parse(&serde_json::json!({"handoff": "  Le comunico con Marta.  "}))
            .unwrap();
        assert_eq!(o.text(Line::Handoff, "es"), "Le comunico con Marta.");
        assert_eq!(
            o.text(Line::Unavailable, "es"),
            text(Line::Unavailable, "es")
        );
        let back = LineOverrides::from_stored(o.to_stored().as_deref());
        assert_eq!(back, o);
        assert_eq!(LineOverrides::default().to_stored(), None);
        assert_eq!(
            LineOverrides::from_stored(Some("not json")),
            LineOverrides::default()
        );
    }

    #[test]
    fn bad_overrides_are_refused_by_name() {
        for (bad, needle) in [
            (serde_json::json!({"hello": "x"}), "unknown line \"hello\""),
            (serde_json::json!({"handoff": ""}), "handoff"),
            (serde_json::json!({"handoff": 3}), "handoff"),
            (
                serde_json::json!({"handoff": "x".repeat(301)}),
                "at most 300",
            ),
            (serde_json::json!(["handoff"]), "object"),
        ] {
            let err = LineOverrides::parse(&bad).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn languages_are_named_in_words() {
        assert_eq!(language_name("es"), "Spanish");
        assert_eq!(language_name("es-MX"), "Spanish");
        assert_eq!(language_name("en-GB"), "English");
        assert_eq!(language_name("xx"), "xx");
    }
}
