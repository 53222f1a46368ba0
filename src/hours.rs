//! Business hours: a weekly schedule in the client's timezone, e.g.
//! `{"mon":[["09:00","17:00"]],"sat":[["10:00","13:00"]]}` (days absent = closed). Validated on
//! input, stored as JSON text, and rendered into the agent's instructions with "open now or not".

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, NaiveTime, TimeZone, Utc, Weekday};
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

    /// The next moment the business opens after `now` (strictly later), in `tz`, within the
    /// coming week; `None` with no schedule. A time a clock change skips is moved past the gap.
    pub fn next_opening(&self, now: DateTime<Utc>, tz: Tz) -> Option<DateTime<Tz>> {
        let local = now.with_timezone(&tz);
        for ahead in 0..8 {
            let date = local.date_naive() + chrono::Days::new(ahead);
            let Some((key, _, _)) = DAYS.iter().find(|(_, w, _)| *w == date.weekday()) else {
                continue;
            };
            let Some(ranges) = self.days.get(key) else {
                continue;
            };
            for (open, _) in ranges {
                let naive = date.and_time(*open);
                let at = tz.from_local_datetime(&naive).earliest().or_else(|| {
                    tz.from_local_datetime(&(naive + chrono::Duration::hours(1)))
                        .earliest()
                });
                if let Some(at) = at
                    && at > local
                {
                    return Some(at);
                }
            }
        }
        None
    }

    /// The week as `(day name, ["09:00-17:00", …])`, Monday first; an empty list is closed.
    pub fn week(&self) -> Vec<(&'static str, Vec<String>)> {
        DAYS.iter()
            .map(|(key, _, name)| {
                let ranges = self.days.get(key).map_or_else(Vec::new, |r| {
                    r.iter()
                        .map(|(o, c)| format!("{}-{}", o.format("%H:%M"), c.format("%H:%M")))
                        .collect()
                });
                (*name, ranges)
            })
            .collect()
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
    fn the_next_opening_is_found_across_days_in_the_clients_timezone() {
        let h = BusinessHours::parse(
            &json!({"mon": [["09:00", "12:00"], ["13:00", "17:00"]], "wed": [["10:00", "11:00"]]}),
        )
        .unwrap();
        let tz: Tz = "America/New_York".parse().unwrap();
        let at = |d, h, m| Utc.with_ymd_and_hms(2026, 11, d, h, m, 0).unwrap();
        let next = |now| {
            h.next_opening(now, tz)
                .map(|t| t.format("%a %H:%M").to_string())
        };
        // Monday 08:00 local (13:00 UTC): opens at 09:00 the same day.
        assert_eq!(next(at(23, 13, 0)).as_deref(), Some("Mon 09:00"));
        // Monday 12:30 local, over lunch: 13:00.
        assert_eq!(next(at(23, 17, 30)).as_deref(), Some("Mon 13:00"));
        // Monday 18:00 local: Wednesday 10:00.
        assert_eq!(next(at(23, 23, 0)).as_deref(), Some("Wed 10:00"));
        // Thursday: the next Monday.
        assert_eq!(next(at(26, 15, 0)).as_deref(), Some("Mon 09:00"));
        assert_eq!(
            BusinessHours::default().next_opening(at(23, 13, 0), tz),
            None
        );
        let week = h.week();
        assert_eq!(
            week[0],
            (
                "Monday",
                vec!["09:00-12:00".to_string(), "13:00-17:00".to_string()]
            )
        );
        assert_eq!(week[1], ("Tuesday", vec![]));
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
