//! The agent a call gets: the business (prompt, FAQs, hours, voice, language) and what it
//! remembers of the caller, rendered into the session's instructions and the greeting request.
//! Pure: the webhook maps store rows into an [`AgentProfile`]; time comes in as an argument.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use super::wire::{self, SessionConfig};
use crate::{hours::BusinessHours, store::callers::CallerMemory, store::clients::ClientProfile};

/// Everything the agent knows when the call starts.
#[derive(Debug, Clone)]
pub struct AgentProfile {
    /// Business name.
    pub business: String,
    /// The business's prompt.
    pub instructions: String,
    /// What to say first.
    pub greeting: String,
    /// Output voice.
    pub voice: String,
    /// Language code.
    pub language: String,
    /// IANA timezone.
    pub timezone: String,
    /// Weekly schedule.
    pub hours: BusinessHours,
    /// (question, answer).
    pub faqs: Vec<(String, String)>,
    /// What we remember of this caller.
    pub caller: Option<CallerMemory>,
}

impl AgentProfile {
    /// Builds the profile from the client and the caller's memory.
    pub fn new(client: &ClientProfile, caller: Option<CallerMemory>) -> Self {
        let c = &client.client;
        Self {
            business: c.name.clone(),
            instructions: c.instructions.clone(),
            greeting: c.greeting.clone(),
            voice: c.voice.clone(),
            language: c.language.clone(),
            timezone: c.timezone.clone(),
            hours: BusinessHours::from_stored(&c.business_hours),
            faqs: client
                .faqs
                .iter()
                .map(|f| (f.question.clone(), f.answer.clone()))
                .collect(),
            caller,
        }
    }

    /// The full prompt at `now`.
    pub fn instructions(&self, now: DateTime<Utc>) -> String {
        let tz: Tz = self.timezone.parse().unwrap_or(Tz::UTC);
        let local = now.with_timezone(&tz);
        let mut s = String::with_capacity(1024);
        s.push_str(self.instructions.trim());
        s.push_str(&format!(
            "\n\nYou are answering the phone for {}. Speak {} ({}) naturally and briefly, as on a phone \
             call. Never read out markup or lists.",
            self.business,
            crate::lines::language_name(&self.language),
            self.language
        ));
        s.push_str(&format!(
            "\n\nIt is now {} ({}).",
            local.format("%A %Y-%m-%d %H:%M"),
            self.timezone
        ));
        if !self.hours.is_empty() {
            let open = if self.hours.is_open(now, tz) {
                "OPEN"
            } else {
                "CLOSED"
            };
            s.push_str(&format!(
                "\nOpening hours: {}. The business is {open} right now.",
                self.hours.describe()
            ));
        }
        if !self.faqs.is_empty() {
            s.push_str("\n\nFrequently asked questions:");
            for (q, a) in &self.faqs {
                s.push_str(&format!("\nQ: {q}\nA: {a}"));
            }
        }
        match &self.caller {
            Some(m) if m.call_count > 0 => {
                s.push_str(&format!(
                    "\n\nThis caller has called {} time(s) before, last on {}.",
                    m.call_count,
                    m.last_call_at.with_timezone(&tz).format("%Y-%m-%d")
                ));
                if let Some(name) = &m.name {
                    s.push_str(&format!(" Their name is {name}."));
                }
                if !m.memory.trim().is_empty() {
                    s.push_str(&format!(
                        "\nWhat you remember from earlier calls:\n{}",
                        m.memory.trim()
                    ));
                }
            }
            _ => s.push_str("\n\nThis is the caller's first call."),
        }
        s
    }

    /// The `session.update` frame.
    pub fn session_update(&self, transcription_model: &str, now: DateTime<Utc>) -> String {
        wire::session_update(&SessionConfig {
            instructions: self.instructions(now),
            voice: self.voice.clone(),
            transcription_model: transcription_model.to_string(),
            language: Some(self.language.split('-').next().unwrap_or("en").to_string()),
        })
    }

    /// The greeting's `response.create`: the client's greeting, by name for a known caller.
    pub fn greeting_request(&self) -> String {
        let name = self.caller.as_ref().and_then(|m| m.name.as_deref());
        let text = match name {
            Some(name) => format!(
                "Greet the caller warmly by name ({name}), then say: \"{}\"",
                self.greeting
            ),
            None => format!("Say exactly: \"{}\"", self.greeting),
        };
        wire::response_create(Some(&text))
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::Value;

    use super::*;

    fn profile(caller: Option<CallerMemory>) -> AgentProfile {
        AgentProfile {
            business: "Bright Smile".into(),
            instructions: "You are the receptionist.".into(),
            greeting: "Thanks for calling Bright Smile!".into(),
            voice: "coral".into(),
            language: "en-US".into(),
            timezone: "America/New_York".into(),
            hours: BusinessHours::parse(&serde_json::json!({"mon": [["09:00", "17:00"]]})).unwrap(),
            faqs: vec![("Walk-ins?".into(), "Mornings only.".into())],
            caller,
        }
    }

    fn memory() -> CallerMemory {
        let t = Utc.with_ymd_and_hms(2026, 11, 20, 15, 0, 0).unwrap();
        CallerMemory {
            id: 1,
            client_id: 1,
            phone: "+14155550100".into(),
            name: Some("Dana".into()),
            call_count: 2,
            first_call_at: t,
            last_call_at: t,
            memory: "2026-11-20: caller said \"Can I book a cleaning?\"".into(),
        }
    }

    #[test]
    fn instructions_carry_faqs_hours_and_open_state() {
        // Monday 10:00 in New York.
        let now = Utc.with_ymd_and_hms(2026, 11, 23, 15, 0, 0).unwrap();
        let text = profile(None).instructions(now);
        assert!(text.starts_with("You are the receptionist."));
        assert!(text.contains("Q: Walk-ins?\nA: Mornings only."));
        assert!(text.contains("The business is OPEN right now."), "{text}");
        assert!(text.contains("first call"));
        let later = Utc.with_ymd_and_hms(2026, 11, 23, 23, 0, 0).unwrap();
        assert!(profile(None).instructions(later).contains("CLOSED"));
    }

    #[test]
    fn a_known_caller_is_remembered_and_greeted_by_name() {
        let p = profile(Some(memory()));
        let text = p.instructions(Utc::now());
        assert!(text.contains("called 2 time(s) before"));
        assert!(text.contains("Their name is Dana."));
        assert!(text.contains("Can I book a cleaning?"));
        let greet: Value = serde_json::from_str(&p.greeting_request()).unwrap();
        assert!(
            greet["response"]["instructions"]
                .as_str()
                .unwrap()
                .contains("Dana")
        );
        let anon: Value = serde_json::from_str(&profile(None).greeting_request()).unwrap();
        assert!(
            anon["response"]["instructions"]
                .as_str()
                .unwrap()
                .contains("Thanks for calling Bright Smile!")
        );
    }

    #[test]
    fn session_update_uses_the_clients_voice_and_language() {
        let v: Value = serde_json::from_str(
            &profile(None).session_update("gpt-4o-mini-transcribe", Utc::now()),
        )
        .unwrap();
        assert_eq!(v["session"]["audio"]["output"]["voice"], "coral");
        assert_eq!(
            v["session"]["audio"]["input"]["transcription"]["language"],
            "en"
        );
    }

    #[test]
    fn the_prompt_names_the_language_in_words() {
        let mut p = profile(None);
        p.language = "es-MX".into();
        let text = p.instructions(Utc::now());
        assert!(text.contains("Speak Spanish (es-MX)"), "{text}");
        assert!(
            profile(None)
                .instructions(Utc::now())
                .contains("Speak English (en-US)")
        );
    }
}
