//! The fixed lines warmline speaks itself (not the agent): when a number is not in service, when
//! the agent cannot take the call, when a failed call is put through to a person. Each exists in
//! English and Spanish and is chosen by the client's language (`es`, `es-MX`, … → Spanish); any
//! other language falls back to English. Pure: no IO.

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

    const ALL: [Line; 3] = [Line::NotInService, Line::Unavailable, Line::PuttingThrough];

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
    fn languages_are_named_in_words() {
        assert_eq!(language_name("es"), "Spanish");
        assert_eq!(language_name("es-MX"), "Spanish");
        assert_eq!(language_name("en-GB"), "English");
        assert_eq!(language_name("xx"), "xx");
    }
}
