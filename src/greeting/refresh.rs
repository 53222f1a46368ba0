//! `POST /admin/api/v1/clients/{id}/greeting/refresh`: the client's greeting generated again
//! now, off any call, and kept (`source = "refresh"`). One Realtime session, configured as a
//! call's with nobody on the line, asked for the greeting; its first response, completed, with
//! its transcript, is the greeting. Bounded by [`REFRESH_LIMIT`]; one at a time per client.

use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::{GreetingKey, MAX_AUDIO_BYTES};
use crate::{
    config::Settings,
    domain::CallSid,
    engine::Event,
    metrics::Metrics,
    realtime::{
        client::{self, SessionSpec},
        profile::AgentProfile,
    },
    store::greetings::StoredGreeting,
};

/// Longest a refresh may take, connect to the greeting's `response.done`.
pub const REFRESH_LIMIT: Duration = Duration::from_secs(30);

/// Generates `profile`'s greeting on a session of its own and returns it, to be kept under
/// `key`; the error says why not (safe to show: no secret in it).
pub async fn generate(
    settings: &Settings,
    profile: &AgentProfile,
    key: &GreetingKey,
    metrics: &Metrics,
) -> Result<StoredGreeting, String> {
    let sid = CallSid::parse("greeting-refresh").map_err(|e| e.to_string())?;
    let spec = SessionSpec::new(settings, profile, &sid, false, Utc::now());
    match tokio::time::timeout(REFRESH_LIMIT, run(settings, spec, key, metrics)).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "no whole greeting within {} s",
            REFRESH_LIMIT.as_secs()
        )),
    }
}

async fn run(
    settings: &Settings,
    spec: SessionSpec,
    key: &GreetingKey,
    metrics: &Metrics,
) -> Result<StoredGreeting, String> {
    let client::Attached {
        mut ws,
        mut session,
    } = client::open(&settings.openai, spec, metrics)
        .await
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut greeting = Greeting::default();
    session.claim();
    let result = loop {
        while let Some(text) = session.poll_transmit() {
            if ws.send(Message::text(text)).await.is_err() {
                break;
            }
        }
        let Some(msg) = ws.next().await else {
            break Err("the Realtime socket closed before the greeting was done".to_string());
        };
        let text = match msg {
            Ok(Message::Text(text)) => text,
            Ok(Message::Close(_)) | Err(_) => {
                break Err("the Realtime socket closed before the greeting was done".into());
            }
            Ok(_) => continue,
        };
        if session.handle_text(text.as_str()).is_err() {
            continue;
        }
        if let Some(why) = session.poll_setup_error() {
            break Err(why);
        }
        let mut done = None;
        while let Some(event) = session.poll_event() {
            if let Some(r) = greeting.handle(event) {
                done = Some(r);
            }
        }
        if let Some(r) = done {
            break r;
        }
    };
    client::close(&mut ws).await;
    let (transcript, frames) = result?;
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "greeting generated for a refresh"
    );
    super::heard(key, transcript, &frames, "refresh", Utc::now())
        .ok_or_else(|| "the greeting was empty or longer than 30 s".into())
}

/// The first response's audio and transcript, as they come.
#[derive(Debug, Default)]
struct Greeting {
    response_id: Option<String>,
    item_id: Option<String>,
    frames: Vec<String>,
    bytes: usize,
    transcript: Option<String>,
    completed: bool,
}

impl Greeting {
    /// Applies one event; `Some` once the greeting is whole (or can no longer be).
    fn handle(&mut self, event: Event) -> Option<Result<(String, Vec<String>), String>> {
        match event {
            Event::AudioDelta {
                response_id,
                item_id,
                payload,
            } => {
                if self.response_id.is_none() {
                    self.response_id = Some(response_id.clone());
                    self.item_id = Some(item_id);
                }
                if self.response_id.as_deref() == Some(response_id.as_str()) {
                    self.bytes += payload.len();
                    self.frames.push(payload);
                    if self.bytes > MAX_AUDIO_BYTES * 4 / 3 + 4 {
                        return Some(Err("the greeting is longer than 30 s".into()));
                    }
                }
            }
            Event::AgentTranscript { item_id, text }
                if self.item_id.as_deref() == Some(item_id.as_str()) =>
            {
                self.transcript = Some(text);
            }
            Event::ResponseDone {
                response_id,
                status,
            } if self.response_id.as_deref() == Some(response_id.as_str())
                || self.response_id.is_none() =>
            {
                if status != "completed" || self.response_id.is_none() {
                    return Some(Err(format!("the greeting's response ended {status}")));
                }
                self.completed = true;
            }
            Event::Error {
                code,
                message,
                fatal: true,
            } => return Some(Err(format!("{code}: {message}"))),
            _ => {}
        }
        if self.completed && self.transcript.is_some() {
            return Some(Ok((
                self.transcript.take().unwrap_or_default(),
                std::mem::take(&mut self.frames),
            )));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(resp: &str) -> Event {
        Event::AudioDelta {
            response_id: resp.into(),
            item_id: "item_1".into(),
            payload: "//8=".into(),
        }
    }

    #[test]
    fn the_first_response_whole_with_its_transcript_is_the_greeting() {
        let mut g = Greeting::default();
        assert!(g.handle(delta("r1")).is_none());
        assert!(g.handle(delta("r1")).is_none());
        assert!(
            g.handle(Event::ResponseDone {
                response_id: "r1".into(),
                status: "completed".into()
            })
            .is_none(),
            "the transcript is still to come"
        );
        let done = g.handle(Event::AgentTranscript {
            item_id: "item_1".into(),
            text: "Hello!".into(),
        });
        assert_eq!(done, Some(Ok(("Hello!".into(), vec!["//8=".into(); 2]))));
    }

    #[test]
    fn a_response_that_did_not_complete_or_a_fatal_error_is_a_failed_refresh() {
        let mut g = Greeting::default();
        g.handle(delta("r1"));
        assert!(matches!(
            g.handle(Event::ResponseDone {
                response_id: "r1".into(),
                status: "failed".into()
            }),
            Some(Err(_))
        ));
        let mut g = Greeting::default();
        assert!(matches!(
            g.handle(Event::Error {
                code: "session_expired".into(),
                message: "m".into(),
                fatal: true
            }),
            Some(Err(_))
        ));
    }
}
