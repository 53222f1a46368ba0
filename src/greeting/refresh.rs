//! `POST /admin/api/v1/clients/{id}/greeting/refresh`: the client's greeting generated again
//! now, off any call, and kept (`source = "refresh"`). One Realtime session, configured as a
//! call's with nobody on the line, asked for the greeting; its first response, completed, with
//! its transcript, is the greeting. Bounded by [`REFRESH_LIMIT`]; one at a time per client.

use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::{Capture, Captured, GreetingKey};
use crate::{
    config::Settings,
    domain::CallSid,
    engine::Event,
    metrics::Metrics,
    realtime::{
        client::{self, SEND_LIMIT, SessionSpec},
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
    let mut capture = Capture::default();
    session.claim();
    let result = loop {
        let mut sent = Ok(());
        while let Some(text) = session.poll_transmit() {
            sent = match tokio::time::timeout(SEND_LIMIT, ws.send(Message::text(text))).await {
                Ok(Ok(())) => Ok(()),
                _ => Err("the Realtime socket took nothing".to_string()),
            };
            if sent.is_err() {
                break;
            }
        }
        if let Err(why) = sent {
            break Err(why);
        }
        // An engine that needs its model's timeline kept moving (GPT-Live) is woken on time.
        let next = match session.poll_timeout() {
            Some(at) => {
                match tokio::time::timeout_at(tokio::time::Instant::from_std(at), ws.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        session.handle_timeout(Instant::now());
                        continue;
                    }
                }
            }
            None => ws.next().await,
        };
        let text = match next {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_)) | Err(_)) | None => {
                break Err("the Realtime socket closed before the greeting was done".into());
            }
            Some(Ok(_)) => continue,
        };
        if session.handle_text(text.as_str()).is_err() {
            continue;
        }
        if let Some(why) = session.poll_setup_error() {
            break Err(why);
        }
        let mut outcome = None;
        while let Some(event) = session.poll_event() {
            let captured = match event {
                Event::AudioDelta {
                    response_id,
                    item_id,
                    payload,
                } => capture.audio(&response_id, &item_id, &payload),
                Event::AgentTranscript { item_id, text } => capture.transcript(&item_id, &text),
                Event::ResponseDone {
                    response_id,
                    status,
                } => capture.response_done(&response_id, &status),
                Event::Error {
                    code,
                    message,
                    fatal: true,
                } => {
                    outcome = Some(Err(format!("{code}: {message}")));
                    break;
                }
                _ => Captured::Pending,
            };
            match captured {
                Captured::Pending => {}
                Captured::Whole(g) => outcome = Some(Ok(g)),
                Captured::Failed(why) => outcome = Some(Err(format!("no whole greeting: {why}"))),
            }
            if outcome.is_some() {
                break;
            }
        }
        if let Some(r) = outcome {
            break r;
        }
    };
    client::close(&mut ws).await;
    let greeting = result?;
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "greeting generated for a refresh"
    );
    super::heard(
        key,
        greeting.transcript,
        &greeting.frames,
        "refresh",
        Utc::now(),
    )
    .ok_or_else(|| "the greeting was empty or longer than 30 s".into())
}
