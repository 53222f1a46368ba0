//! A call's timeline (README.md, "Console"): what happened when, kept with the call record for
//! the console's call page. The webhook and its pre-warm note their part while the phone rings;
//! the call task notes the claim, the first audio, each turn's response latency, barge-ins,
//! tool calls, reconnects and the end. Saved as JSON in `calls.timeline` when the call ends.
//!
//! Bounded: at most [`MAX_ENTRIES`] per call (a long call keeps its first ones and its end).

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Most entries one call keeps (the end is always kept).
pub const MAX_ENTRIES: usize = 500;

/// One moment of a call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Entry {
    /// When.
    pub at: DateTime<Utc>,
    /// What: `prewarm` (stamped when it began; `ms` until ready), `claim`, `first_audio`,
    /// `turn`, `barge_in`, `tool`, `tool_result`, `reconnect`, `transfer`, `hang_up`, `ended`.
    pub what: String,
    /// How long it took, when it is a latency (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ms: Option<f64>,
    /// The rest (a tool's name, a path, an end reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A call's timeline, shared by the webhook (through the call's context) and the call task.
#[derive(Debug, Clone, Default)]
pub struct Timeline(Arc<Mutex<Vec<Entry>>>);

impl Timeline {
    /// Notes `what` now.
    pub fn note(&self, what: &str, ms: Option<f64>, detail: Option<String>) {
        self.note_at(Utc::now(), what, ms, detail);
    }

    /// Notes `what` at `at`.
    pub fn note_at(&self, at: DateTime<Utc>, what: &str, ms: Option<f64>, detail: Option<String>) {
        let mut entries = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES && what != "ended" {
            return;
        }
        entries.push(Entry {
            at,
            what: what.to_string(),
            ms,
            detail: detail.map(|d| d.chars().take(200).collect()),
        });
    }

    /// The entries in time order, as JSON (none when empty).
    pub fn to_json(&self) -> Option<String> {
        let mut entries = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if entries.is_empty() {
            return None;
        }
        entries.sort_by_key(|e| e.at);
        serde_json::to_string(&entries).ok()
    }
}

/// Reads a stored timeline (an unreadable one is empty).
pub fn parse(json: Option<&str>) -> Vec<Entry> {
    json.and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_back_in_time_order_and_are_bounded_but_keep_the_end() {
        let t = Timeline::default();
        let t0 = Utc::now() - chrono::Duration::seconds(1);
        t.note_at(
            t0 + chrono::Duration::milliseconds(5),
            "claim",
            None,
            Some("warm".into()),
        );
        t.note_at(t0, "prewarm", Some(640.0), Some("ready".into()));
        let back = parse(t.to_json().as_deref());
        assert_eq!(
            back.iter().map(|e| e.what.as_str()).collect::<Vec<_>>(),
            ["prewarm", "claim"]
        );
        assert_eq!(back[0].ms, Some(640.0));
        for _ in 0..2 * MAX_ENTRIES {
            t.note("turn", Some(1.0), None);
        }
        t.note("ended", None, Some("caller hung up".into()));
        let back = parse(t.to_json().as_deref());
        assert_eq!(back.len(), MAX_ENTRIES + 1);
        assert_eq!(back.last().unwrap().what, "ended");
        assert!(Timeline::default().to_json().is_none());
        assert!(parse(Some("not json")).is_empty() && parse(None).is_empty());
    }
}
