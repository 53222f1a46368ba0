//! Business hours: a weekly schedule in the client's timezone, e.g.
//! `{"mon":[["09:00","17:00"]],"sat":[["10:00","13:00"]]}` (days absent = closed). Validated on
//! input, stored as JSON text, and rendered into the agent's instructions with "open now or not".

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, NaiveTime, Utc, Weekday};
use chrono_tz::Tz;
use serde_json::Value;

use crate::domain::DomainError;

const DAYS: [(&str, Weekday, &str); 7] = [
    ("mon", Weekday::Mon, "Monday"),
    ("tue", Weekday::Tue, "Tuesday"),
    ("wed", Weekday::Wed, "Wednesday"),
    ("thu", Weekday::Thu, "Thursday"),
    ("fri", Weekday::Fri, "Friday"),
    ("sat", Weekday::Sat, "Saturday"),
    ("sun", Weekday::Sun, "Sunday"),
];

/// A validated weekly schedule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BusinessHours {
    /// Day key (`mon`…`sun`) → ordered (open, close) ranges.
    days: BTreeMap<&'static str, Vec<(NaiveTime, NaiveTime)>>,
}

impl BusinessHours {
    /// Parses and validates the JSON form; `null` means "not set".
    pub fn parse(value: &Value) -> Result<Self, DomainError> {
        let err = |m: String| Err(DomainError(m));
        let obj = match value {
            Value::Null => return Ok(Self::default()),
            Value::Object(o) => o,
            _ => {
                return err(
                    "business_hours must be an object like {\"mon\":[[\"09:00\",\"17:00\"]]}"
                        .into(),
                );
            }
        };
        let mut days = BTreeMap::new();
        for (key, ranges) in obj {
            let Some((day, _, _)) = DAYS.iter().find(|(d, _, _)| d == key) else {
                return err(format!(
                    "business_hours: unknown day {key:?} (use mon..sun)"
                ));
            };
            let Some(list) = ranges.as_array() else {
                return err(format!(
                    "business_hours.{key} must be a list of [\"HH:MM\",\"HH:MM\"]"
                ));
            };
            let mut parsed = Vec::new();
            for r in list {
                let pair = r.as_array().filter(|a| a.len() == 2);
                let times = pair.and_then(|a| {
                    let open = NaiveTime::parse_from_str(a[0].as_str()?, "%H:%M").ok()?;
                    let close = NaiveTime::parse_from_str(a[1].as_str()?, "%H:%M").ok()?;
                    Some((open, close))
                });
                match times {
                    Some((o, c)) if o < c => parsed.push((o, c)),
                    _ => {
                        return err(format!(
                            "business_hours.{key}: each range must be [\"HH:MM\",\"HH:MM\"] with open before close"
                        ));
                    }
                }
            }
            parsed.sort();
            days.insert(*day, parsed);
        }
        Ok(Self { days })
    }

    /// Parses stored JSON text (empty or invalid text means "not set").
    pub fn from_stored(text: &str) -> Self {
        serde_json::from_str(text)
            .ok()
            .and_then(|v| Self::parse(&v).ok())
            .unwrap_or_default()
    }

    /// The JSON form.
    pub fn to_json(&self) -> Value {
        let map: serde_json::Map<String, Value> = self
            .days
            .iter()
            .map(|(d, ranges)| {
                let list = ranges
                    .iter()
                    .map(|(o, c)| {
                        serde_json::json!([
                            o.format("%H:%M").to_string(),
                            c.format("%H:%M").to_string()
                        ])
                    })
                    .collect();
                (d.to_string(), Value::Array(list))
            })
            .collect();
        Value::Object(map)
    }

    /// Whether no schedule was given.
    pub fn is_empty(&self) -> bool {
        self.days.is_empty()
    }

    /// Whether the business is open at `now` in `tz`.
    pub fn is_open(&self, now: DateTime<Utc>, tz: Tz) -> bool {
        let local = now.with_timezone(&tz);
        let Some((key, _, _)) = DAYS.iter().find(|(_, w, _)| *w == local.weekday()) else {
            return false;
        };
        let t = local.time();
        self.days
            .get(key)
            .is_some_and(|ranges| ranges.iter().any(|(o, c)| *o <= t && t < *c))
    }

    /// "Monday 09:00–17:00; Tuesday closed; …" for the agent's instructions.
    pub fn describe(&self) -> String {
        DAYS.iter()
            .map(|(key, _, name)| match self.days.get(key) {
                Some(r) if !r.is_empty() => format!(
                    "{name} {}",
                    r.iter()
                        .map(|(o, c)| format!("{}-{}", o.format("%H:%M"), c.format("%H:%M")))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                _ => format!("{name} closed"),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    #[test]
    fn open_and_closed_follow_the_clients_timezone() {
        let h = BusinessHours::parse(&json!({"mon": [["09:00", "17:00"]]})).unwrap();
        let tz: Tz = "America/New_York".parse().unwrap();
        // Monday 2026-11-23 14:00 UTC = 09:00 in New York (EST).
        assert!(h.is_open(Utc.with_ymd_and_hms(2026, 11, 23, 14, 0, 0).unwrap(), tz));
        assert!(!h.is_open(Utc.with_ymd_and_hms(2026, 11, 23, 13, 59, 0).unwrap(), tz));
        assert!(!h.is_open(Utc.with_ymd_and_hms(2026, 11, 24, 15, 0, 0).unwrap(), tz));
    }

    #[test]
    fn invalid_schedules_are_refused_with_the_day_named() {
        for (bad, needle) in [
            (json!({"funday": []}), "funday"),
            (json!({"mon": [["17:00", "09:00"]]}), "business_hours.mon"),
            (json!({"tue": [["9am", "5pm"]]}), "business_hours.tue"),
            (json!({"wed": "all day"}), "business_hours.wed"),
            (json!([1, 2]), "business_hours"),
        ] {
            let err = BusinessHours::parse(&bad).unwrap_err();
            assert!(err.0.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn round_trips_and_describes() {
        let v =
            json!({"sat": [["10:00", "13:00"]], "mon": [["09:00", "12:00"], ["13:00", "17:00"]]});
        let h = BusinessHours::parse(&v).unwrap();
        assert_eq!(BusinessHours::parse(&h.to_json()).unwrap(), h);
        let text = h.describe();
        assert!(
            text.starts_with("Monday 09:00-12:00, 13:00-17:00; Tuesday closed"),
            "{text}"
        );
    }
}
