//! What the fakes share: the record of a client event, scripted function calls, and the energy
//! VAD the two fake OpenAI servers (`realtime` and `live`) run on the caller's audio (those types
//! are re-exported by both modules); and, for the fakes of HTTP APIs (`responses`, `messaging`,
//! `kommo`), starting one on loopback, waiting for what it records, and a lock that survives a
//! panicked holder.

use std::time::Instant;

use serde_json::Value;

use crate::audio;

/// One client event as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Its `type`.
    pub kind: String,
    /// The raw text.
    pub raw: String,
    /// When it arrived.
    pub at: Instant,
}

/// One function call a scripted response makes.
#[derive(Debug, Clone)]
pub struct ScriptedCall {
    /// The function's name. The Realtime fake does not check it is a declared tool (a real
    /// model should not call anything else, but the gateway must survive it); the Live fake
    /// never makes a call the session did not declare (it skips it and logs it).
    pub name: String,
    /// The arguments as the model writes them (any text, even invalid JSON).
    pub arguments: String,
}

/// A response scripted by a test or the demo: optionally some speech, then function calls.
/// The Realtime fake sends them as its API does (`response.output_item.added` of type
/// `function_call`, `response.function_call_arguments.delta|done`, the item in
/// `response.done.output`); the Live fake as a Responses delegation (`response.event`s).
#[derive(Debug, Clone, Default)]
pub struct Scripted {
    /// Realtime fake: speak an answer clip before the calls (e.g. a goodbye before
    /// `end_call`). The Live fake ignores it: there the voice model speaks after the
    /// function results, never before the calls.
    pub speak: bool,
    /// The calls, in order.
    pub calls: Vec<ScriptedCall>,
}

impl Scripted {
    /// A response that only calls `name` with `arguments` (JSON).
    pub fn call(name: &str, arguments: Value) -> Self {
        Self::default().then_call(name, arguments)
    }

    /// A response that says something, then calls `name`.
    pub fn say_then_call(name: &str, arguments: Value) -> Self {
        Self {
            speak: true,
            ..Self::default()
        }
        .then_call(name, arguments)
    }

    /// One more call in the same response.
    pub fn then_call(mut self, name: &str, arguments: Value) -> Self {
        self.calls.push(ScriptedCall {
            name: name.into(),
            arguments: arguments.to_string(),
        });
        self
    }

    /// One more call whose arguments are raw text (malformed input tests).
    pub fn then_call_raw(mut self, name: &str, arguments: &str) -> Self {
        self.calls.push(ScriptedCall {
            name: name.into(),
            arguments: arguments.into(),
        });
        self
    }
}

/// What the VAD saw in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Turn {
    /// The caller started speaking `at_ms` (of audio fed), detected now.
    Started { at_ms: u64 },
    /// The caller's turn, from its first speech to its last, ended (500 ms of silence ago).
    Ended { start_ms: u64, end_ms: u64 },
}

/// A plain energy VAD over 20 ms μ-law frames: 100 ms of speech starts a turn, 500 ms of
/// silence ends it.
#[derive(Debug, Default)]
pub(crate) struct Vad {
    /// Audio fed so far, ms.
    audio_ms: u64,
    speech_run: u64,
    silence_run: u64,
    in_speech: bool,
    started_at: u64,
}

impl Vad {
    /// Feeds one frame (at most 20 ms; a frame shorter than 1 ms counts for no time).
    pub(crate) fn frame(&mut self, frame: &[u8]) -> Option<Turn> {
        let ms = (frame.len() / audio::BYTES_PER_MS) as u64;
        self.audio_ms += ms;
        if audio::is_speech(frame) {
            self.speech_run += ms;
            self.silence_run = 0;
            if !self.in_speech && self.speech_run >= 100 {
                self.in_speech = true;
                self.started_at = self.audio_ms - self.speech_run;
                return Some(Turn::Started {
                    at_ms: self.started_at,
                });
            }
        } else {
            self.silence_run += ms;
            if !self.in_speech {
                self.speech_run = 0;
            }
            if self.in_speech && self.silence_run >= 500 {
                self.in_speech = false;
                self.speech_run = 0;
                return Some(Turn::Ended {
                    start_ms: self.started_at,
                    end_ms: self.audio_ms - self.silence_run,
                });
            }
        }
        None
    }

    /// Whether the caller is in a turn.
    pub(crate) fn in_speech(&self) -> bool {
        self.in_speech
    }

    /// Whether the last frame was speech.
    pub(crate) fn last_was_speech(&self) -> bool {
        self.silence_run == 0 && self.speech_run > 0
    }
}

/// Waits until `done()` holds, checking again each time `changed` is notified; false if it
/// still does not after `limit`. (The test hooks of the fakes: `wait_open`, `wait_event`,
/// `wait_requests`, `wait_sent`, `wait_notes`.)
pub(crate) async fn wait_until(
    changed: &tokio::sync::Notify,
    limit: std::time::Duration,
    done: impl Fn() -> bool,
) -> bool {
    let until = tokio::time::Instant::now() + limit;
    loop {
        let notified = changed.notified();
        if done() {
            return true;
        }
        if tokio::time::timeout_at(until, notified).await.is_err() {
            return done();
        }
    }
}

/// Serves `app` on 127.0.0.1 with an OS-chosen port: its address, and its task (aborted by the
/// fake's `Drop`).
pub(crate) async fn serve(
    app: axum::Router,
) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    use axum::serve::ListenerExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // Small writes go out at once, as an API's servers send them: over HTTP/2 many answers
    // share a connection, and Nagle's algorithm would hold one delta back for another's ACK.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, task))
}

/// The lock, whether or not an earlier holder panicked.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::clips;

    #[test]
    fn a_question_then_silence_is_one_turn() {
        let mut vad = Vad::default();
        let q = clips::question();
        let mut turns = Vec::new();
        for f in audio::silence(200)
            .chunks(audio::FRAME_BYTES)
            .chain(q.mulaw.chunks(audio::FRAME_BYTES))
            .chain(audio::silence(600).chunks(audio::FRAME_BYTES))
        {
            turns.extend(vad.frame(f));
        }
        assert_eq!(turns.len(), 2, "{turns:?}");
        let Turn::Started { at_ms } = turns[0] else {
            panic!("{turns:?}")
        };
        assert!((200..400).contains(&at_ms), "{at_ms}");
        let Turn::Ended { start_ms, end_ms } = turns[1] else {
            panic!("{turns:?}")
        };
        assert_eq!(start_ms, at_ms);
        assert!(end_ms > start_ms + 1000 && end_ms <= 200 + q.duration_ms() as u64);
        assert!(!vad.in_speech());
    }
}
