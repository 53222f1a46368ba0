//! `MediaStream`: the sans-IO machine for one Twilio Media Streams WebSocket (docs/twilio-openai-reference.md §4,
//! §9). States: awaiting `start` → started → stopped. It validates what Twilio sends, encodes
//! what we send, and keeps the playback bookkeeping barge-in needs.
//!
//! Playback model (§4.2, §9). Twilio buffers our audio and plays it in order at 8 bytes/ms. We
//! follow one timeline of "ms of agent audio sent" and send a mark after every media chunk;
//! Twilio echoes a mark when the audio before it has played (or at once after `clear`). So:
//! 1. an echoed mark (not cleared) pins the play cursor: at that instant, playback reached the
//!    mark's position on the timeline;
//! 2. media sent while no mark is pending starts playing at once: the cursor is pinned at the
//!    current end of the timeline, at that instant;
//! 3. between pins the cursor advances in real time, never beyond what was sent;
//! 4. `clear` drops what was not heard: pending marks become "cleared" (their echoes are
//!    ignored) and the timeline is cut back to the heard position.
//!
//! Invariant: `handle_text` never panics on any input; bad input is an `Err` for this call only.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use super::wire::{self, TwilioMessage, WireError};
use crate::domain::{CallSid, StreamSid};

/// Why a frame was refused (the call ends; nothing else is affected).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// Not a Media Streams message.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A media payload is not valid base64.
    #[error("media payload is not valid base64")]
    InvalidBase64,
    /// `media`, `mark` or `dtmf` before `start`.
    #[error("{0} before start")]
    BeforeStart(&'static str),
    /// A second `start`.
    #[error("second start on one stream")]
    DuplicateStart,
    /// `start` with an invalid SID.
    #[error("start with invalid {0}")]
    InvalidSid(&'static str),
}

/// What the stream reports to the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// `connected`.
    Connected,
    /// `start`.
    Started {
        /// The stream.
        stream_sid: StreamSid,
        /// The call.
        call_sid: CallSid,
        /// The account.
        account_sid: String,
        /// `<Parameter>`s.
        custom_parameters: HashMap<String, String>,
    },
    /// Caller audio (base64 μ-law, validated, passed through untouched).
    Media {
        /// The payload.
        payload: String,
        /// Decoded μ-law bytes.
        bytes: usize,
        /// ms since stream start.
        timestamp_ms: u64,
    },
    /// A key press.
    Dtmf {
        /// The digit.
        digit: String,
    },
    /// `stop`.
    Stopped,
    /// An unknown event (log and ignore).
    Unknown {
        /// Its name.
        event: String,
    },
}

#[derive(Debug, Clone, Copy)]
struct Mark {
    seq: u64,
    /// Timeline position (ms) where this mark's audio starts.
    start_ms: f64,
    /// Timeline position (ms) when this mark's audio has played.
    end_ms: f64,
}

#[derive(Debug, Clone, Copy)]
struct Pin {
    ms: f64,
    at: Instant,
}

/// Where an agent item starts on the timeline.
#[derive(Debug, Clone)]
struct ItemSpan {
    item: u64,
    start_ms: f64,
    /// Frames of this item that never reached Twilio: (timeline position, ms). They are not
    /// on the timeline but still in the item's audio at OpenAI, so positions inside the item
    /// (`audio_end_ms`) count them.
    skipped: Vec<(f64, f64)>,
}

impl ItemSpan {
    /// ms into the item's audio at timeline position `pos`.
    fn offset(&self, pos: f64) -> f64 {
        let skipped: f64 = self
            .skipped
            .iter()
            .filter(|(at, _)| *at <= pos)
            .map(|(_, ms)| ms)
            .sum();
        (pos - self.start_ms).max(0.0) + skipped
    }
}

/// What the caller had heard when a `clear` cut playback (see [`MediaStream::send_clear`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Heard {
    /// The item playing.
    pub item: u64,
    /// ms into that item's audio (the `audio_end_ms` of its truncate).
    pub ms: u64,
    /// ms of that item's audio generated so far (so `ms / item_ms` is the share heard).
    pub item_ms: f64,
}

impl Heard {
    /// The share of the item's audio (so far) that was heard, 0 to 1.
    pub fn share(&self) -> f64 {
        if self.item_ms > 0.0 {
            (self.ms as f64 / self.item_ms).min(1.0)
        } else {
            1.0
        }
    }
}

/// Something for the Twilio socket, typed; its JSON is written at the socket edge
/// ([`Transmit::encode`]), so the loop and the call can tell audio from control without
/// reading text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// Agent audio (base64 μ-law), always followed by [`Transmit::Mark`] with the same `seq`.
    /// Droppable: when Twilio's leg is backed up the loop drops it (and its mark, through
    /// [`MediaStream::retract_media`]).
    Media {
        /// The number of the mark that follows it.
        seq: u64,
        /// Base64 μ-law, passed through untouched.
        payload: String,
    },
    /// A mark named by its number; Twilio echoes it when the audio before it has played.
    Mark {
        /// The mark's number (its `name` on the wire).
        seq: u64,
    },
    /// `clear`: Twilio drops the audio it buffered.
    Clear,
}

impl Transmit {
    /// The Media Streams message (docs/twilio-openai-reference.md §4.2) for the stream `stream_sid`.
    pub fn encode(&self, stream_sid: &str) -> String {
        match self {
            Self::Media { payload, .. } => wire::media_json(stream_sid, payload),
            Self::Mark { seq } => wire::mark_json(stream_sid, &seq.to_string()),
            Self::Clear => wire::clear_json(stream_sid),
        }
    }

    /// The message's `event` name.
    pub fn event(&self) -> &'static str {
        match self {
            Self::Media { .. } => "media",
            Self::Mark { .. } => "mark",
            Self::Clear => "clear",
        }
    }
}

/// One Twilio media stream.
#[derive(Debug, Default)]
pub struct MediaStream {
    stream_sid: Option<StreamSid>,
    stopped: bool,
    events: VecDeque<MediaEvent>,
    transmit: VecDeque<Transmit>,
    /// ms of agent audio on the timeline (sent and not cut by a clear).
    sent_ms: f64,
    pin: Option<Pin>,
    pending: VecDeque<Mark>,
    cleared: Vec<u64>,
    next_seq: u64,
    /// Items in timeline order (only the recent ones matter).
    items: VecDeque<ItemSpan>,
}

impl MediaStream {
    /// A stream waiting for `connected` and `start`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The stream SID once started.
    pub fn stream_sid(&self) -> Option<&StreamSid> {
        self.stream_sid.as_ref()
    }

    /// Applies one text frame from Twilio.
    pub fn handle_text(&mut self, now: Instant, text: &str) -> Result<(), MediaError> {
        match wire::parse(text)? {
            TwilioMessage::Connected { .. } => self.events.push_back(MediaEvent::Connected),
            TwilioMessage::Start(start) => {
                if self.stream_sid.is_some() {
                    return Err(MediaError::DuplicateStart);
                }
                let stream_sid = StreamSid::parse(start.stream_sid)
                    .map_err(|_| MediaError::InvalidSid("streamSid"))?;
                let call_sid = CallSid::parse(start.call_sid)
                    .map_err(|_| MediaError::InvalidSid("callSid"))?;
                self.stream_sid = Some(stream_sid.clone());
                self.events.push_back(MediaEvent::Started {
                    stream_sid,
                    call_sid,
                    account_sid: start.account_sid,
                    custom_parameters: start.custom_parameters,
                });
            }
            TwilioMessage::Media {
                payload,
                timestamp_ms,
                track,
            } => {
                if self.stream_sid.is_none() {
                    return Err(MediaError::BeforeStart("media"));
                }
                let bytes = wire::base64_len(&payload).ok_or(MediaError::InvalidBase64)?;
                // Bidirectional streams carry the inbound track only; ignore anything else.
                if track.as_deref().is_none_or(|t| t == "inbound") {
                    self.events.push_back(MediaEvent::Media {
                        payload: payload.into_owned(),
                        bytes,
                        timestamp_ms,
                    });
                }
            }
            TwilioMessage::Dtmf { digit } => {
                if self.stream_sid.is_none() {
                    return Err(MediaError::BeforeStart("dtmf"));
                }
                self.events.push_back(MediaEvent::Dtmf { digit });
            }
            TwilioMessage::Mark { name } => {
                if self.stream_sid.is_none() {
                    return Err(MediaError::BeforeStart("mark"));
                }
                self.on_mark(now, &name);
            }
            TwilioMessage::Stop => {
                self.stopped = true;
                self.events.push_back(MediaEvent::Stopped);
            }
            TwilioMessage::Unknown { event } => {
                self.events.push_back(MediaEvent::Unknown { event })
            }
        }
        Ok(())
    }

    /// Next event for the call.
    pub fn poll_event(&mut self) -> Option<MediaEvent> {
        self.events.pop_front()
    }

    /// Next message for the Twilio socket.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmit.pop_front()
    }

    /// Queues agent audio (already base64 μ-law) for `item`, followed by a mark. Ignored before
    /// `start` (Twilio requires the streamSid) or with an invalid payload.
    pub fn send_media(&mut self, now: Instant, item: u64, payload_b64: String) {
        if self.stream_sid.is_none() {
            return;
        }
        let Some(bytes) = wire::base64_len(&payload_b64) else {
            return;
        };
        if self.pending.is_empty() {
            // Twilio's buffer is empty: this audio starts playing now (rule 2).
            self.pin = Some(Pin {
                ms: self.sent_ms,
                at: now,
            });
        }
        if self.items.back().is_none_or(|s| s.item != item) {
            self.items.push_back(ItemSpan {
                item,
                start_ms: self.sent_ms,
                skipped: Vec::new(),
            });
            if self.items.len() > 16 {
                self.items.pop_front();
            }
        }
        let start_ms = self.sent_ms;
        self.sent_ms += bytes as f64 / 8.0;
        self.next_seq += 1;
        let seq = self.next_seq;
        self.transmit.push_back(Transmit::Media {
            seq,
            payload: payload_b64,
        });
        self.transmit.push_back(Transmit::Mark { seq });
        self.pending.push_back(Mark {
            seq,
            start_ms,
            end_ms: self.sent_ms,
        });
    }

    /// The sequence number of the last media frame queued (its mark's).
    pub fn last_seq(&self) -> u64 {
        self.next_seq
    }

    /// Forgets the media frame that mark `seq` follows: it was never sent (the outbound queue
    /// was full), so the audio after it moves up the timeline by its length. The caller drops
    /// the [`Transmit::Mark`] that follows it. Returns whether the mark was pending.
    pub fn retract_media(&mut self, seq: u64) -> bool {
        let Some(i) = self.pending.iter().position(|m| m.seq == seq) else {
            return false;
        };
        let Some(gone) = self.pending.remove(i) else {
            return false;
        };
        let len = gone.end_ms - gone.start_ms;
        for later in self.pending.iter_mut().skip(i) {
            later.start_ms -= len;
            later.end_ms -= len;
        }
        if let Some(owner) = self
            .items
            .iter_mut()
            .rev()
            .find(|s| s.start_ms <= gone.start_ms)
        {
            owner.skipped.push((gone.start_ms, len));
        }
        for span in self.items.iter_mut() {
            if span.start_ms > gone.start_ms {
                span.start_ms -= len;
            }
            for (at, _) in span
                .skipped
                .iter_mut()
                .filter(|(at, _)| *at > gone.start_ms)
            {
                *at -= len;
            }
        }
        self.sent_ms -= len;
        true
    }

    /// Whether agent audio is still buffered at Twilio (marks pending).
    pub fn is_playing(&self, now: Instant) -> bool {
        !self.pending.is_empty() && self.heard_timeline_ms(now) < self.sent_ms
    }

    /// Whether every mark sent has been echoed (all agent audio sent has been played).
    pub fn all_played(&self) -> bool {
        self.pending.is_empty()
    }

    /// How much of the agent audio sent has, by the clock, still to play (ms; 0 when all
    /// marks are in).
    pub fn unplayed_ms(&self, now: Instant) -> u64 {
        if self.pending.is_empty() {
            return 0;
        }
        (self.sent_ms - self.heard_timeline_ms(now))
            .max(0.0)
            .round() as u64
    }

    /// What the caller has heard of the item playing now: `(item, ms into that item)`.
    pub fn heard_ms(&self, now: Instant) -> Option<(u64, u64)> {
        let pos = self.heard_timeline_ms(now);
        let span = self
            .items
            .iter()
            .rev()
            .find(|s| s.start_ms <= pos)
            .or_else(|| self.items.front())?;
        Some((span.item, span.offset(pos).round() as u64))
    }

    /// How much audio of `item` has been sent (ms), if it is among the recent items.
    fn item_ms(&self, item: u64) -> Option<f64> {
        let i = self.items.iter().position(|s| s.item == item)?;
        let end = self
            .items
            .get(i + 1)
            .map_or(self.sent_ms, |next| next.start_ms);
        Some(self.items[i].offset(end))
    }

    /// Sends `clear`: Twilio drops buffered audio and echoes pending marks at once; the
    /// timeline is cut back to what was heard. Returns what was heard of the playing item
    /// (its length measured before the cut).
    pub fn send_clear(&mut self, now: Instant) -> Option<Heard> {
        self.stream_sid.as_ref()?;
        let heard = self.heard_ms(now).map(|(item, ms)| Heard {
            item,
            ms,
            item_ms: self.item_ms(item).unwrap_or(0.0),
        });
        let pos = self.heard_timeline_ms(now);
        self.transmit.push_back(Transmit::Clear);
        self.cleared.extend(self.pending.drain(..).map(|m| m.seq));
        self.sent_ms = pos;
        self.pin = Some(Pin { ms: pos, at: now });
        heard
    }

    /// Whether `stop` was received.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    fn heard_timeline_ms(&self, now: Instant) -> f64 {
        match self.pin {
            None => 0.0,
            Some(pin) => {
                let elapsed = now.saturating_duration_since(pin.at);
                (pin.ms + duration_ms(elapsed)).min(self.sent_ms)
            }
        }
    }

    fn on_mark(&mut self, now: Instant, name: &str) {
        let Ok(seq) = name.parse::<u64>() else {
            return; // Not one of ours.
        };
        if let Some(i) = self.cleared.iter().position(|&s| s == seq) {
            // Echoed because of a clear: says nothing about playback (§0.6).
            self.cleared.swap_remove(i);
            return;
        }
        // Marks echo in order; anything before this one has played too.
        while let Some(front) = self.pending.front().copied() {
            if front.seq > seq {
                break;
            }
            self.pending.pop_front();
            if front.seq == seq {
                self.pin = Some(Pin {
                    ms: front.end_ms,
                    at: now,
                });
            }
        }
    }
}

fn duration_ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    use super::*;
    use crate::twilio::wire::fixtures;

    /// 100 ms of μ-law (800 bytes) as base64.
    fn audio_100ms() -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode([0xFFu8; 800])
    }

    fn started(t0: Instant) -> MediaStream {
        let mut m = MediaStream::new();
        m.handle_text(t0, fixtures::CONNECTED).unwrap();
        m.handle_text(t0, fixtures::START).unwrap();
        assert_eq!(m.poll_event(), Some(MediaEvent::Connected));
        assert!(matches!(m.poll_event(), Some(MediaEvent::Started { .. })));
        m
    }

    /// Sends `n` frames of 100 ms for `item`; returns their mark numbers.
    fn send(m: &mut MediaStream, t: Instant, item: u64, n: usize) -> Vec<u64> {
        (0..n)
            .map(|_| {
                m.send_media(t, item, audio_100ms());
                let Some(Transmit::Media { seq, .. }) = m.poll_transmit() else {
                    panic!("media first")
                };
                assert_eq!(m.poll_transmit(), Some(Transmit::Mark { seq }));
                seq
            })
            .collect()
    }

    #[test]
    fn a_frame_dropped_mid_item_leaves_the_timeline_but_stays_in_the_item() {
        let t0 = Instant::now();
        let mut m = started(t0);
        let marks = send(&mut m, t0, 1, 3);
        assert!(m.retract_media(marks[1]));
        assert!(!m.retract_media(marks[1]), "only once");
        // 200 ms reached Twilio; the item's audio at OpenAI is still 300 ms.
        assert_eq!(m.item_ms(1), Some(300.0));
        assert_eq!(m.heard_ms(t0 + Duration::from_millis(50)), Some((1, 50)));
        // Past the gap, the position in the item counts the dropped 100 ms.
        assert_eq!(m.heard_ms(t0 + Duration::from_millis(150)), Some((1, 250)));
        assert!(!m.is_playing(t0 + Duration::from_millis(200)));
        // The remaining marks still pin playback where their audio ends.
        echo(&mut m, t0 + Duration::from_millis(90), marks[0]);
        echo(&mut m, t0 + Duration::from_millis(190), marks[2]);
        assert!(!m.is_playing(t0 + Duration::from_millis(190)));
    }

    #[test]
    fn a_dropped_first_frame_of_an_item_is_counted_in_that_item() {
        let t0 = Instant::now();
        let mut m = started(t0);
        send(&mut m, t0, 1, 1);
        let second = send(&mut m, t0, 2, 2);
        assert!(m.retract_media(second[0]));
        assert_eq!(m.item_ms(1), Some(100.0));
        assert_eq!(m.item_ms(2), Some(200.0));
        assert_eq!(m.heard_ms(t0 + Duration::from_millis(150)), Some((2, 150)));
    }

    #[test]
    fn transmits_encode_to_the_media_streams_messages() {
        let sid = "MZ18ad3ab5a668481ce02b83e7395059f0";
        let media = Transmit::Media {
            seq: 7,
            payload: "AAAA".into(),
        };
        assert_eq!(
            media.encode(sid),
            format!(r#"{{"event":"media","streamSid":"{sid}","media":{{"payload":"AAAA"}}}}"#)
        );
        assert_eq!(
            Transmit::Mark { seq: 7 }.encode(sid),
            format!(r#"{{"event":"mark","streamSid":"{sid}","mark":{{"name":"7"}}}}"#)
        );
        assert_eq!(
            Transmit::Clear.encode(sid),
            format!(r#"{{"event":"clear","streamSid":"{sid}"}}"#)
        );
        for t in [media, Transmit::Mark { seq: 1 }, Transmit::Clear] {
            let v: serde_json::Value = serde_json::from_str(&t.encode(sid)).unwrap();
            assert_eq!(v["event"], t.event());
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn transmits(m: &mut MediaStream) -> Vec<serde_json::Value> {
        std::iter::from_fn(|| m.poll_transmit())
            .map(|t| serde_json::from_str(&t.encode("MZ18ad3ab5a668481ce02b83e7395059f0")).unwrap())
            .collect()
    }

    fn echo(m: &mut MediaStream, at: Instant, seq: u64) {
        let text = format!(
            r#"{{"event":"mark","sequenceNumber":"9","streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0","mark":{{"name":"{seq}"}}}}"#
        );
        m.handle_text(at, &text).unwrap();
    }

    #[test]
    fn media_before_start_is_refused() {
        let mut m = MediaStream::new();
        assert_eq!(
            m.handle_text(Instant::now(), fixtures::MEDIA),
            Err(MediaError::BeforeStart("media"))
        );
    }

    #[test]
    fn bad_base64_is_refused_and_good_media_is_passed_through() {
        let t0 = Instant::now();
        let mut m = started(t0);
        m.handle_text(t0, fixtures::MEDIA).unwrap();
        assert_eq!(
            m.poll_event(),
            Some(MediaEvent::Media {
                payload: "//7+/v7+/v4=".into(),
                bytes: 8,
                timestamp_ms: 5
            })
        );
        let bad = fixtures::MEDIA.replace("//7+/v7+/v4=", "not*base64");
        assert_eq!(m.handle_text(t0, &bad), Err(MediaError::InvalidBase64));
    }

    #[test]
    fn a_second_start_is_refused() {
        let t0 = Instant::now();
        let mut m = started(t0);
        assert_eq!(
            m.handle_text(t0, fixtures::START),
            Err(MediaError::DuplicateStart)
        );
    }

    #[test]
    fn every_media_chunk_is_followed_by_a_mark() {
        let t0 = Instant::now();
        let mut m = started(t0);
        m.send_media(t0, 1, audio_100ms());
        m.send_media(t0, 1, audio_100ms());
        let out = transmits(&mut m);
        let kinds: Vec<_> = out.iter().map(|v| v["event"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["media", "mark", "media", "mark"]);
        assert_eq!(out[0]["streamSid"], "MZ18ad3ab5a668481ce02b83e7395059f0");
        assert_eq!(out[1]["mark"]["name"], "1");
        assert_eq!(out[3]["mark"]["name"], "2");
    }

    #[test]
    fn heard_position_follows_echoed_marks_and_real_time() {
        let t0 = Instant::now();
        let mut m = started(t0);
        for _ in 0..3 {
            m.send_media(t0, 1, audio_100ms());
        }
        assert!(m.is_playing(t0));
        // Playback started at t0 with an empty buffer.
        assert_eq!(m.heard_ms(t0 + ms(50)), Some((1, 50)));
        // Twilio says the first 100 ms finished a little late (jitter): the mark wins.
        echo(&mut m, t0 + ms(120), 1);
        assert_eq!(m.heard_ms(t0 + ms(120)), Some((1, 100)));
        assert_eq!(m.heard_ms(t0 + ms(170)), Some((1, 150)));
        // Never beyond what was sent.
        assert_eq!(m.heard_ms(t0 + ms(5000)), Some((1, 300)));
        echo(&mut m, t0 + ms(320), 3);
        assert!(!m.is_playing(t0 + ms(320)));
    }

    #[test]
    fn clear_reports_the_heard_position_and_ignores_later_echoes() {
        let t0 = Instant::now();
        let mut m = started(t0);
        for _ in 0..5 {
            m.send_media(t0, 7, audio_100ms());
        }
        transmits(&mut m);
        echo(&mut m, t0 + ms(100), 1);
        let heard = m.send_clear(t0 + ms(137));
        assert_eq!(
            heard,
            Some(Heard {
                item: 7,
                ms: 137,
                item_ms: 500.0
            })
        );
        let out = transmits(&mut m);
        assert_eq!(
            out,
            vec![
                serde_json::json!({"event":"clear","streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0"})
            ]
        );
        // Twilio echoes every pending mark at once after a clear: none counts as played.
        for seq in 2..=5 {
            echo(&mut m, t0 + ms(138), seq);
        }
        assert!(!m.is_playing(t0 + ms(140)));
        assert_eq!(m.heard_ms(t0 + ms(1000)), Some((7, 137)));
        // The next item starts playing at once, from the cut timeline.
        m.send_media(t0 + ms(500), 8, audio_100ms());
        assert_eq!(m.heard_ms(t0 + ms(540)), Some((8, 40)));
    }

    #[test]
    fn a_new_item_after_silence_starts_when_sent() {
        let t0 = Instant::now();
        let mut m = started(t0);
        m.send_media(t0, 1, audio_100ms());
        echo(&mut m, t0 + ms(100), 1);
        // Two seconds of nothing, then a new response.
        m.send_media(t0 + ms(2100), 2, audio_100ms());
        assert_eq!(m.heard_ms(t0 + ms(2130)), Some((2, 30)));
    }

    #[test]
    fn protocol_fixtures_drive_the_machine() {
        let t0 = Instant::now();
        let mut m = MediaStream::new();
        for f in [
            fixtures::CONNECTED,
            fixtures::START,
            fixtures::MEDIA,
            fixtures::DTMF,
            fixtures::MARK,
            fixtures::STOP,
        ] {
            m.handle_text(t0, f).unwrap();
        }
        let events: Vec<_> = std::iter::from_fn(|| m.poll_event()).collect();
        assert_eq!(events.len(), 5, "{events:?}"); // the foreign mark yields no event
        assert!(matches!(events[3], MediaEvent::Dtmf { ref digit } if digit == "1"));
        assert_eq!(events[4], MediaEvent::Stopped);
        assert!(m.is_stopped());
    }

    #[test]
    fn no_input_makes_it_panic() {
        let mut rng = StdRng::seed_from_u64(42);
        let t0 = Instant::now();
        let seeds = [
            fixtures::CONNECTED,
            fixtures::START,
            fixtures::MEDIA,
            fixtures::DTMF,
            fixtures::MARK,
            fixtures::STOP,
        ];
        for round in 0..5000 {
            let mut m = if round % 2 == 0 {
                MediaStream::new()
            } else {
                started(t0)
            };
            let base = seeds[rng.random_range(0..seeds.len())].as_bytes().to_vec();
            let mut bytes = base.clone();
            for _ in 0..rng.random_range(1..6) {
                let i = rng.random_range(0..bytes.len());
                match rng.random_range(0..3) {
                    0 => bytes[i] = rng.random(),
                    1 => {
                        bytes.remove(i);
                    }
                    _ => bytes.insert(i, rng.random_range(32u8..127)),
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            let _ = m.handle_text(t0, &text);
            while m.poll_event().is_some() {}
            m.send_media(t0, 1, "AAAA".into());
            let _ = m.send_clear(t0);
        }
    }
}
