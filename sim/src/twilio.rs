//! A Twilio simulator: it plays Twilio's side of an inbound call against a running gateway,
//! faithfully to docs/twilio-openai-reference.md §1–§5 and §9, and reports what it saw.
//!
//! - The voice webhook: a signed form POST with the real parameters; the TwiML is parsed.
//! - The media stream: a signed WebSocket upgrade, `connected`, `start` (with the TwiML's
//!   `<Parameter>`s), then caller audio in real time, one 20 ms μ-law frame every 20 ms with
//!   string sequence numbers, `dtmf`, `stop`.
//! - Twilio's playback buffer: agent audio of any size is queued and played at 8 bytes/ms;
//!   marks are echoed when the audio before them has played, or at once when nothing is
//!   buffered; `clear` drops what is buffered and echoes every pending mark immediately.
//! - After the stream: the `<Connect action>` callback and the status callback, signed.

use std::{
    borrow::Cow,
    collections::{HashMap, VecDeque},
    fmt::Write,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use base64::{Engine, engine::general_purpose::STANDARD};
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, KeyInit, Mac};
use quick_xml::{Reader, events::Event};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha1::Sha1;
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

use crate::audio::{self, Clip};

/// X-Twilio-Signature: base64(HMAC-SHA1(token, url + sorted name+value pairs)).
pub fn sign(auth_token: &str, url: &str, params: &[(&str, &str)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort_unstable();
    // HMAC takes keys of any length.
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()).expect("any key length");
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

/// A random 32-hex-digit SID with a prefix (`CA`, `MZ`).
pub fn sid(prefix: &str) -> String {
    let n: u128 = rand::random();
    format!("{prefix}{n:032x}")
}

/// How the simulator signs a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signing {
    /// Correctly.
    Valid,
    /// With a wrong signature.
    Forged,
    /// Without the header.
    Missing,
}

/// The simulated Twilio account.
#[derive(Debug, Clone)]
pub struct TwilioSim {
    http: reqwest::Client,
    /// The gateway's `public_url` (e.g. `http://127.0.0.1:8080`).
    pub base: String,
    /// The auth token both sides share.
    pub auth_token: String,
    /// `AC…`.
    pub account_sid: String,
}

/// An inbound call to place.
#[derive(Debug, Clone)]
pub struct CallSpec {
    /// `CA…` (random when `None`).
    pub call_sid: Option<String>,
    /// Caller id.
    pub from: String,
    /// Number called.
    pub to: String,
    /// How to sign the webhook.
    pub signing: Signing,
    /// `StirVerstat` (SHAKEN/STIR result; United States calls only, so absent by default).
    pub stir_verstat: Option<String>,
}

impl CallSpec {
    /// A call from `from` to `to`.
    pub fn new(from: &str, to: &str) -> Self {
        Self {
            call_sid: None,
            from: from.into(),
            to: to.into(),
            signing: Signing::Valid,
            stir_verstat: None,
        }
    }

    /// The same call with a `StirVerstat` parameter.
    pub fn stir_verstat(mut self, value: &str) -> Self {
        self.stir_verstat = Some(value.into());
        self
    }
}

/// What the TwiML said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Twiml {
    /// `<Connect [action]><Stream url><Parameter…/>`.
    Stream {
        /// Stream URL.
        url: String,
        /// `<Connect action>`.
        action: Option<String>,
        /// Parameters.
        parameters: HashMap<String, String>,
    },
    /// `<Say>` then `<Hangup/>`.
    SayHangup {
        /// The text.
        text: String,
    },
    /// `<Dial>`, perhaps after a `<Say>`.
    Dial {
        /// What is said first, if anything.
        say: Option<String>,
        /// The number.
        number: String,
    },
    /// `<Hangup/>` alone.
    Hangup,
    /// `<Redirect>url</Redirect>`: fetch TwiML from `url` instead.
    Redirect {
        /// Where.
        url: String,
    },
    /// Anything else (the raw document is kept in the caller's hands).
    Other,
}

/// Parses the TwiML forms warmline produces.
pub fn parse_twiml(xml: &str) -> Twiml {
    let mut r = Reader::from_str(xml);
    let mut names = Vec::new();
    let mut stream_url = None;
    let mut action = None;
    let mut params = HashMap::new();
    let mut text = String::new();
    let mut dial = String::new();
    let mut redirect = String::new();
    let mut current = String::new();
    loop {
        match r.read_event() {
            Ok(Event::Start(e)) | Ok(Event::Empty(e)) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).to_string();
                let attrs: HashMap<String, String> = e
                    .attributes()
                    .flatten()
                    .map(|a| {
                        (
                            String::from_utf8_lossy(a.key.as_ref()).to_string(),
                            a.unescape_value()
                                .map(|v| v.to_string())
                                .unwrap_or_default(),
                        )
                    })
                    .collect();
                match name.as_str() {
                    "Stream" => stream_url = attrs.get("url").cloned(),
                    "Connect" => action = attrs.get("action").cloned(),
                    "Parameter" => {
                        if let (Some(n), Some(v)) = (attrs.get("name"), attrs.get("value")) {
                            params.insert(n.clone(), v.clone());
                        }
                    }
                    _ => {}
                }
                current = name.clone();
                names.push(name);
            }
            Ok(Event::Text(t)) => {
                if let Ok(s) = t.decode() {
                    match current.as_str() {
                        "Say" => text.push_str(&s),
                        "Dial" => dial.push_str(&s),
                        "Redirect" => redirect.push_str(&s),
                        _ => {}
                    }
                }
            }
            Ok(Event::GeneralRef(g)) => {
                if let Ok(name) = g.decode()
                    && let Some(ch) = quick_xml::escape::resolve_predefined_entity(&name)
                {
                    match current.as_str() {
                        "Dial" => dial.push_str(ch),
                        "Redirect" => redirect.push_str(ch),
                        _ => text.push_str(ch),
                    }
                }
            }
            Ok(Event::Eof) | Err(_) => break,
            _ => {}
        }
    }
    if let Some(url) = stream_url {
        return Twiml::Stream {
            url,
            action,
            parameters: params,
        };
    }
    if names.iter().any(|n| n == "Redirect") {
        return Twiml::Redirect { url: redirect };
    }
    if names.iter().any(|n| n == "Dial") {
        return Twiml::Dial {
            say: (!text.is_empty()).then_some(text),
            number: dial,
        };
    }
    if names.iter().any(|n| n == "Say") && names.iter().any(|n| n == "Hangup") {
        return Twiml::SayHangup { text };
    }
    if names == ["Response", "Hangup"] {
        return Twiml::Hangup;
    }
    Twiml::Other
}

/// The webhook's answer.
#[derive(Debug, Clone, Serialize)]
pub struct PlacedCall {
    /// The call.
    pub call_sid: String,
    /// From.
    pub from: String,
    /// HTTP status.
    pub status: u16,
    /// Content-Type.
    pub content_type: String,
    /// Raw body.
    pub body: String,
    /// Parsed TwiML (when 200).
    pub twiml: Twiml,
    /// Webhook sent to answer received.
    pub webhook_time: Duration,
}

/// What the caller does on the stream.
#[derive(Debug, Clone)]
pub enum Step {
    /// Send silence for this long.
    Silence(Duration),
    /// Speak a clip (blocks until it has been sent).
    Say(Clip),
    /// Wait (sending silence) until agent audio is playing or arrives, at most this long.
    WaitForAgentAudio(Duration),
    /// Wait (sending silence) until no agent audio has played for [`QUIET_HOLD`], at most this
    /// long.
    WaitForAgentQuiet(Duration),
    /// Press a key.
    Dtmf(char),
    /// Send `stop` and close (the caller hangs up).
    HangUp,
    /// Close the socket without `stop` (the leg drops).
    Drop,
    /// Send a raw text frame (tests of bad input).
    SendRaw(String),
    /// Wait for the gateway to close the socket, at most this long.
    WaitForClose(Duration),
    /// Stop reading the socket (a Twilio leg that stopped taking audio; what the gateway
    /// writes backs up in the kernel's buffers), while still sending. For the rest of the call.
    StopReading,
    /// Send nothing at all, not even silence, for this long (a leg gone quiet: half-open, or
    /// Twilio's side stuck), still reading.
    Pause(Duration),
}

/// How long the agent must have been silent for [`Step::WaitForAgentQuiet`]: an engine that
/// sends its audio in real time (GPT-Live, 100 ms a delta) empties the playback buffer between
/// two deltas of one sentence, which is not the agent being done.
pub const QUIET_HOLD: Duration = Duration::from_millis(300);

/// One `clear` seen.
#[derive(Debug, Clone, Serialize)]
pub struct ClearSeen {
    /// ms since `start` was sent.
    pub at_ms: u64,
    /// Agent audio actually played so far, in ms.
    pub played_ms: u64,
    /// Buffered agent audio dropped by it, in ms.
    pub dropped_ms: u64,
}

/// What happened on one call.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallReport {
    /// Whether the socket opened.
    pub stream_opened: bool,
    /// HTTP status of a refused upgrade.
    pub upgrade_status: Option<u16>,
    /// `start` sent → first agent media received.
    pub first_media_after_start: Option<Duration>,
    /// Agent media messages received.
    pub media_messages: usize,
    /// For each [`Step::Say`], in order: from the end of the caller's clip to the first agent
    /// media after it (`None`: none came before the next `Say` or the end of the call). The
    /// agent's answer delay as the caller hears it.
    #[serde(skip)]
    pub answer_delays: Vec<Option<Duration>>,
    /// Agent audio received, ms.
    pub received_ms: u64,
    /// Agent audio played (heard), ms.
    pub played_ms: u64,
    /// Marks echoed as played.
    pub marks_played: usize,
    /// Marks echoed because of a clear.
    pub marks_cleared: usize,
    /// Clears.
    pub clears: Vec<ClearSeen>,
    /// Protocol violations by the gateway.
    pub violations: Vec<String>,
    /// Caller frames sent.
    pub frames_sent: usize,
    /// Who closed: `gateway` or `caller`.
    pub closed_by: Option<String>,
    /// ms since `start` was sent when the gateway closed the socket (or it failed).
    pub closed_at_ms: Option<u64>,
    /// The `<Connect action>` answer.
    pub after_stream: Option<Twiml>,
    /// From the end of the last agent audio heard to the `<Connect action>` answer (ms): the
    /// silence before the next verb (a `<Dial>` rings) starts. Negative: the stream ended while
    /// agent audio was still playing (the rest was cut).
    pub after_stream_gap_ms: Option<i64>,
    /// When the last agent audio received would have finished playing.
    #[serde(skip)]
    pub heard_until: Option<Instant>,
    /// When the first agent media arrived (for ordering checks across fakes).
    #[serde(skip)]
    pub first_media_at: Option<Instant>,
    /// When `start` was sent.
    #[serde(skip)]
    pub start_sent_at: Option<Instant>,
    /// The caller's audio as sent (μ-law).
    #[serde(skip)]
    pub caller_audio: Vec<u8>,
    /// The agent audio as heard (μ-law).
    #[serde(skip)]
    pub heard_audio: Vec<u8>,
}

/// Options for the media stream.
#[derive(Debug, Clone, Default)]
pub struct StreamOptions {
    /// Replace `<Parameter>`s (e.g. a wrong token).
    pub parameters: Option<HashMap<String, String>>,
    /// How to sign the upgrade.
    pub signing: Option<Signing>,
    /// Skip the after-stream and status callbacks.
    pub no_callbacks: bool,
    /// Relay-delay stamps (load generator): caller frames are tagged and timed.
    pub stamps: Option<std::sync::Arc<crate::stamp::Stamps>>,
}

/// Twilio's playback buffer for one stream (§4.2).
#[derive(Debug, Default)]
struct Playback {
    /// (start, end, bytes) of scheduled agent audio (bytes only if `keep_audio`).
    segments: Vec<(Instant, Instant, Vec<u8>)>,
    /// Keep the audio for [`Playback::heard`] (a load run times it and lets it go).
    keep_audio: bool,
    /// When the buffer runs dry.
    end: Option<Instant>,
    /// Marks waiting for their audio: (due, name).
    marks: VecDeque<(Instant, String)>,
}

impl Playback {
    fn push_audio(&mut self, now: Instant, bytes: &[u8]) {
        let start = self.end.filter(|e| *e > now).unwrap_or(now);
        let end = start + Duration::from_micros(bytes.len() as u64 * 125);
        let kept = if self.keep_audio {
            bytes.to_vec()
        } else {
            Vec::new()
        };
        self.segments.push((start, end, kept));
        self.end = Some(end);
    }

    fn push_mark(&mut self, now: Instant, name: String) {
        let due = self.end.filter(|e| *e > now).unwrap_or(now);
        self.marks.push_back((due, name));
    }

    fn played_ms(&self, now: Instant) -> u64 {
        self.segments
            .iter()
            .map(|(s, e, _)| {
                if now >= *e {
                    e.duration_since(*s)
                } else if now > *s {
                    now.duration_since(*s)
                } else {
                    Duration::ZERO
                }
            })
            .sum::<Duration>()
            .as_millis() as u64
    }

    /// Drops unplayed audio; returns (played ms, dropped ms, marks now echoed).
    fn clear(&mut self, now: Instant) -> (u64, u64, Vec<String>) {
        let played = self.played_ms(now);
        let mut dropped = Duration::ZERO;
        for seg in &mut self.segments {
            if seg.1 > now {
                let keep_from = seg.0.max(now);
                dropped += seg.1.duration_since(keep_from);
                let keep = (keep_from.duration_since(seg.0).as_micros() / 125) as usize;
                seg.2.truncate(keep.min(seg.2.len()));
                seg.1 = keep_from;
            }
        }
        self.end = Some(now);
        let marks = self.marks.drain(..).map(|(_, n)| n).collect();
        (played, dropped.as_millis() as u64, marks)
    }

    fn next_due(&self) -> Option<Instant> {
        self.marks.front().map(|(d, _)| *d)
    }

    fn heard(&self, now: Instant) -> Vec<u8> {
        let mut out = Vec::new();
        for (s, e, b) in &self.segments {
            if now >= *e {
                out.extend_from_slice(b);
            } else if now > *s {
                let n = (now.duration_since(*s).as_micros() / 125) as usize;
                out.extend_from_slice(&b[..n.min(b.len())]);
            }
        }
        out
    }

    fn is_playing(&self, now: Instant) -> bool {
        self.end.is_some_and(|e| e > now)
    }
}

impl TwilioSim {
    /// A simulator for the gateway at `base` (its `public_url`).
    pub fn new(base: &str, auth_token: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_string(),
            auth_token: auth_token.to_string(),
            account_sid: sid("AC"),
        }
    }

    async fn post_form(
        &self,
        url: &str,
        params: &[(&str, &str)],
        signing: Signing,
    ) -> anyhow::Result<reqwest::Response> {
        let mut req = self.http.post(url).form(params);
        match signing {
            Signing::Valid => {
                req = req.header("X-Twilio-Signature", sign(&self.auth_token, url, params))
            }
            Signing::Forged => {
                req = req.header("X-Twilio-Signature", sign("wrong-token", url, params))
            }
            Signing::Missing => {}
        }
        req.send().await.with_context(|| format!("POST {url}"))
    }

    /// Sends the voice webhook for a new inbound call and parses the answer.
    pub async fn place_call(&self, spec: &CallSpec) -> anyhow::Result<PlacedCall> {
        let call_sid = spec.call_sid.clone().unwrap_or_else(|| sid("CA"));
        let mut params = vec![
            ("AccountSid", self.account_sid.as_str()),
            ("ApiVersion", "2010-04-01"),
            ("CallSid", call_sid.as_str()),
            ("CallStatus", "ringing"),
            ("Called", spec.to.as_str()),
            ("Caller", spec.from.as_str()),
            ("Direction", "inbound"),
            ("From", spec.from.as_str()),
            ("To", spec.to.as_str()),
        ];
        if let Some(v) = &spec.stir_verstat {
            params.push(("StirVerstat", v.as_str()));
        }
        let started = Instant::now();
        let resp = self
            .post_form(
                &format!("{}/twilio/voice", self.base),
                &params,
                spec.signing,
            )
            .await?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = resp.text().await.unwrap_or_default();
        let webhook_time = started.elapsed();
        let twiml = if status == 200 {
            parse_twiml(&body)
        } else {
            Twiml::Other
        };
        Ok(PlacedCall {
            call_sid,
            from: spec.from.clone(),
            status,
            content_type,
            body,
            twiml,
            webhook_time,
        })
    }

    /// Sends the number's status callback.
    pub async fn status_callback(&self, call_sid: &str, status: &str) -> anyhow::Result<u16> {
        let params = [
            ("AccountSid", self.account_sid.as_str()),
            ("CallSid", call_sid),
            ("CallStatus", status),
            ("CallDuration", "0"),
        ];
        let resp = self
            .post_form(
                &format!("{}/twilio/status", self.base),
                &params,
                Signing::Valid,
            )
            .await?;
        Ok(resp.status().as_u16())
    }

    /// Runs the media stream of a placed call with a caller script.
    pub async fn stream(
        &self,
        placed: &PlacedCall,
        script: &[Step],
        options: StreamOptions,
    ) -> anyhow::Result<CallReport> {
        let Twiml::Stream {
            url,
            action,
            parameters,
        } = &placed.twiml
        else {
            bail!("the webhook did not answer with <Connect><Stream>");
        };
        let mut report = CallReport::default();
        let mut req = url.as_str().into_client_request()?;
        let signature = match options.signing.unwrap_or(Signing::Valid) {
            Signing::Valid => Some(sign(&self.auth_token, url, &[])),
            Signing::Forged => Some(sign("wrong-token", url, &[])),
            Signing::Missing => None,
        };
        if let Some(sig) = signature {
            req.headers_mut().insert("x-twilio-signature", sig.parse()?);
        }
        let ws =
            match tokio_tungstenite::connect_async_with_config(req, Some(crate::ws_config()), true)
                .await
            {
                Ok((ws, _)) => ws,
                Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                    report.upgrade_status = Some(resp.status().as_u16());
                    return Ok(report);
                }
                Err(e) => return Err(e).context("media stream upgrade"),
            };
        report.stream_opened = true;
        let params = options
            .parameters
            .clone()
            .unwrap_or_else(|| parameters.clone());
        self.run_stream(
            ws,
            placed,
            params,
            script,
            options.stamps.clone(),
            &mut report,
        )
        .await;
        if !options.no_callbacks {
            if let Some(action) = action {
                let p = [
                    ("AccountSid", self.account_sid.as_str()),
                    ("CallSid", placed.call_sid.as_str()),
                    ("CallStatus", "in-progress"),
                    ("From", placed.from.as_str()),
                ];
                if let Ok(resp) = self.post_form(action, &p, Signing::Valid).await {
                    report.after_stream = Some(parse_twiml(&resp.text().await.unwrap_or_default()));
                    let answered = Instant::now();
                    report.after_stream_gap_ms = report.heard_until.map(|end| {
                        if answered >= end {
                            answered.duration_since(end).as_millis() as i64
                        } else {
                            -(end.duration_since(answered).as_millis() as i64)
                        }
                    });
                }
            }
            let _ = self.status_callback(&placed.call_sid, "completed").await;
        }
        Ok(report)
    }

    async fn run_stream(
        &self,
        ws: tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        placed: &PlacedCall,
        parameters: HashMap<String, String>,
        script: &[Step],
        stamps: Option<std::sync::Arc<crate::stamp::Stamps>>,
        report: &mut CallReport,
    ) {
        // One socket, not split: `select!` drops its branch futures (the read among them)
        // before a branch body writes, so no lock between a read half and a write half is needed.
        let mut ws = ws;
        let stream_sid = sid("MZ");
        let mut seq: u64 = 0;
        let mut next_seq = || {
            seq += 1;
            seq
        };
        let _ = ws
            .send(Message::text(
                json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}).to_string(),
            ))
            .await;
        let start = json!({"event": "start", "sequenceNumber": next_seq().to_string(), "streamSid": stream_sid,
            "start": {"accountSid": self.account_sid, "streamSid": stream_sid, "callSid": placed.call_sid,
                "tracks": ["inbound"], "customParameters": parameters,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}});
        let t0 = Instant::now();
        report.start_sent_at = Some(t0);
        if ws.send(Message::text(start.to_string())).await.is_err() {
            report.closed_by = Some("gateway".into());
            return;
        }
        // Under load (stamps) the agent audio is timed, not kept: only its length is.
        let mut playback = Playback {
            keep_audio: stamps.is_none(),
            ..Playback::default()
        };
        // Buffers reused for every frame: caller audio, its base64, decoded agent audio.
        let mut frame = [audio::SILENCE; audio::FRAME_BYTES];
        let mut payload = String::new();
        let mut decoded = Vec::new();
        // The next mark echo's timer, kept across loop turns and moved only when the first
        // pending mark changes.
        let mut mark_timer = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
        let mut mark_armed: Option<Instant> = None;
        let mut talk: VecDeque<u8> = VecDeque::new();
        let mut steps = script.iter().cloned().collect::<VecDeque<_>>();
        let mut step_started = Instant::now();
        let mut chunk: u64 = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let mut entered = false;
        let mut last_media_at: Option<Instant> = None;
        // The `Say` whose answer is awaited: (its index in `answer_delays`, when it ended).
        let mut awaiting_answer: Option<(usize, Instant)> = None;
        let mut reading = true;
        loop {
            let mark_due = playback.next_due();
            if mark_due != mark_armed {
                if let Some(due) = mark_due {
                    mark_timer
                        .as_mut()
                        .reset(tokio::time::Instant::from_std(due));
                }
                mark_armed = mark_due;
            }
            tokio::select! {
                _ = tick.tick() => {
                    let now = Instant::now();
                    // Advance the script: enter the front step once, then check if it is done.
                    let mut hang = None;
                    while let Some(step) = steps.front().cloned() {
                        if !entered {
                            entered = true;
                            step_started = now;
                            match &step {
                                Step::Say(clip) => talk.extend(clip.mulaw.iter()),
                                Step::Dtmf(d) => {
                                    let m = json!({"event": "dtmf", "sequenceNumber": next_seq().to_string(), "streamSid": stream_sid,
                                        "dtmf": {"track": "inbound_track", "digit": d.to_string()}});
                                    let _ = ws.send(Message::text(m.to_string())).await;
                                }
                                Step::SendRaw(text) => {
                                    let _ = ws.send(Message::text(text.clone())).await;
                                }
                                _ => {}
                            }
                        }
                        let waited = now.duration_since(step_started);
                        let done = match &step {
                            Step::Silence(d) | Step::Pause(d) => waited >= *d,
                            Step::Say(_) if talk.is_empty() => {
                                awaiting_answer = Some((report.answer_delays.len(), now));
                                report.answer_delays.push(None);
                                true
                            }
                            Step::Say(_) => false,
                            Step::WaitForAgentAudio(limit) => {
                                last_media_at.is_some_and(|t| t >= step_started)
                                    || playback.is_playing(now)
                                    || waited >= *limit
                            }
                            Step::WaitForAgentQuiet(limit) => {
                                (report.first_media_at.is_some()
                                    && playback.end.is_none_or(|e| now >= e + QUIET_HOLD))
                                    || waited >= *limit
                            }
                            Step::Dtmf(_) | Step::SendRaw(_) => true,
                            Step::HangUp | Step::Drop => {
                                hang = Some(step.clone());
                                true
                            }
                            Step::WaitForClose(limit) => waited >= *limit,
                            Step::StopReading => {
                                reading = false;
                                true
                            }
                        };
                        if !done {
                            break;
                        }
                        steps.pop_front();
                        entered = false;
                        if hang.is_some() {
                            break;
                        }
                    }
                    match hang {
                        Some(Step::HangUp) => {
                            let m = json!({"event": "stop", "sequenceNumber": next_seq().to_string(), "streamSid": stream_sid,
                                "stop": {"accountSid": self.account_sid, "callSid": placed.call_sid}});
                            let _ = ws.send(Message::text(m.to_string())).await;
                            let _ = ws.send(Message::Close(None)).await;
                            report.closed_by = Some("caller".into());
                            // Wait briefly for the gateway's close.
                            let _ = tokio::time::timeout(Duration::from_secs(5), async { while let Some(Ok(_)) = ws.next().await {} }).await;
                            break;
                        }
                        Some(_) => {
                            let _ = SinkExt::close(&mut ws).await;
                            report.closed_by = Some("caller".into());
                            break;
                        }
                        None => {}
                    }
                    // Script over: keep the line open until the gateway closes it (bounded).
                    if steps.is_empty() && now.duration_since(step_started) > Duration::from_secs(30) {
                        report.closed_by = Some("caller".into());
                        break;
                    }
                    if matches!(steps.front(), Some(Step::Pause(_))) {
                        continue;
                    }
                    // One 20 ms frame of caller audio (what is left of the clip, then silence).
                    let n = talk.len().min(audio::FRAME_BYTES);
                    for (b, t) in frame.iter_mut().zip(talk.drain(..n)) {
                        *b = t;
                    }
                    frame[n..].fill(audio::SILENCE);
                    if let Some(st) = &stamps {
                        st.tag(&mut frame);
                    } else {
                        report.caller_audio.extend_from_slice(&frame);
                    }
                    chunk += 1;
                    payload.clear();
                    STANDARD.encode_string(frame, &mut payload);
                    // Written directly (this runs 50 times a second per call in load tests);
                    // the shape is the one Twilio sends, numeric fields as strings.
                    let mut m = String::with_capacity(payload.len() + 192);
                    let _ = write!(
                        m,
                        r#"{{"event":"media","sequenceNumber":"{}","streamSid":"{stream_sid}","media":{{"track":"inbound","chunk":"{chunk}","timestamp":"{}","payload":"{payload}"}}}}"#,
                        next_seq(),
                        t0.elapsed().as_millis()
                    );
                    if let Some(st) = &stamps {
                        // Until the agent is heard the gateway may still be opening the
                        // session (the cold path) and not yet reading: not relay time.
                        if report.first_media_at.is_some() {
                            st.inbound.sent(&payload, Instant::now());
                        } else {
                            st.inbound.held(&payload);
                        }
                    }
                    if ws.send(Message::text(m)).await.is_err() {
                        report.closed_by.get_or_insert_with(|| "gateway".into());
                        break;
                    }
                    report.frames_sent += 1;
                }
                _ = &mut mark_timer, if mark_armed.is_some() => {
                    // Re-armed at the next turn for the next mark, if any.
                    mark_armed = None;
                    let now = Instant::now();
                    while playback.next_due().is_some_and(|d| d <= now) {
                        let (_, name) = playback.marks.pop_front().expect("checked above");
                        report.marks_played += 1;
                        let m = mark_echo(next_seq(), &stream_sid, &name);
                        let _ = ws.send(Message::text(m)).await;
                    }
                }
                msg = ws.next(), if reading => {
                    let now = Instant::now();
                    match msg {
                        Some(Ok(Message::Text(text))) => {
                            let Some((event, wrong_sid)) = parse_incoming(text.as_str(), &stream_sid) else {
                                report.violations.push(format!("not JSON: {}", text.as_str().chars().take(80).collect::<String>()));
                                continue;
                            };
                            if let Some(v) = wrong_sid {
                                report.violations.push(v);
                            }
                            match event {
                                Incoming::Media(payload) => {
                                    decoded.clear();
                                    match payload.map(|p| STANDARD.decode_vec(p.as_bytes(), &mut decoded).map(|_| p)) {
                                        Some(Ok(raw)) => {
                                            if let Some(st) = &stamps {
                                                st.outbound.received(&raw, now);
                                            }
                                            if report.first_media_at.is_none() {
                                                report.first_media_at = Some(now);
                                                report.first_media_after_start = Some(now.duration_since(t0));
                                            }
                                            report.media_messages += 1;
                                            last_media_at = Some(now);
                                            if let Some((i, said)) = awaiting_answer.take() {
                                                report.answer_delays[i] = Some(now.duration_since(said));
                                            }
                                            report.received_ms += (decoded.len() / audio::BYTES_PER_MS) as u64;
                                            playback.push_audio(now, &decoded);
                                        }
                                        _ => report.violations.push("media payload is not base64".into()),
                                    }
                                }
                                Incoming::Mark(name) => match name {
                                    Some(name) => playback.push_mark(now, name.into_owned()),
                                    None => report.violations.push("mark without name".into()),
                                },
                                Incoming::Clear => {
                                    let (played, dropped, marks) = playback.clear(now);
                                    report.clears.push(ClearSeen { at_ms: now.duration_since(t0).as_millis() as u64, played_ms: played, dropped_ms: dropped });
                                    for name in marks {
                                        report.marks_cleared += 1;
                                        let m = mark_echo(next_seq(), &stream_sid, &name);
                                        let _ = ws.send(Message::text(m)).await;
                                    }
                                }
                                Incoming::Other(other) => report.violations.push(format!("unknown event {other:?}")),
                            }
                        }
                        Some(Ok(Message::Binary(_))) => report.violations.push("binary frame (Twilio error 31950)".into()),
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                            report.closed_by.get_or_insert_with(|| "gateway".into());
                            report.closed_at_ms.get_or_insert(t0.elapsed().as_millis() as u64);
                            break;
                        }
                        Some(Ok(_)) => {}
                    }
                }
            }
        }
        let now = Instant::now();
        report.heard_until = playback.end;
        report.played_ms = playback.played_ms(now);
        if stamps.is_none() {
            report.heard_audio = playback.heard(now);
        }
    }
}

/// A message from the gateway, as far as the simulator acts on it.
#[derive(Debug, PartialEq)]
enum Incoming<'a> {
    /// `media` with its `media.payload` if that is a string.
    Media(Option<Cow<'a, str>>),
    /// `mark` with its `mark.name` if that is a string.
    Mark(Option<Cow<'a, str>>),
    /// `clear`.
    Clear,
    /// Any other `event` (`""` when it is missing or not a string).
    Other(String),
}

/// Reads a gateway message: the event, and a violation if its `streamSid` is not this stream's.
/// `None` if it is not JSON. The usual shapes are read in place (a typed parse borrowing from the
/// text, the way the gateway's media arrive 50 times a second per call under load); anything the
/// typed parse refuses (a field of another type, a duplicate key) is read as a `Value` with the
/// same rules, so every message is judged the same either way.
fn parse_incoming<'a>(text: &'a str, stream_sid: &str) -> Option<(Incoming<'a>, Option<String>)> {
    #[derive(Deserialize)]
    struct Typed<'a> {
        #[serde(borrow)]
        event: Cow<'a, str>,
        #[serde(rename = "streamSid", borrow, default)]
        stream_sid: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        media: Option<Payload<'a>>,
        #[serde(borrow, default)]
        mark: Option<Name<'a>>,
    }
    #[derive(Deserialize)]
    struct Payload<'a> {
        #[serde(borrow, default)]
        payload: Option<Cow<'a, str>>,
    }
    #[derive(Deserialize)]
    struct Name<'a> {
        #[serde(borrow, default)]
        name: Option<Cow<'a, str>>,
    }
    if let Ok(t) = serde_json::from_str::<Typed>(text) {
        let wrong_sid = (t.stream_sid.as_deref() != Some(stream_sid))
            .then(|| format!("wrong or missing streamSid in {}", Value::from(&*t.event)));
        let event = match &*t.event {
            "media" => Incoming::Media(t.media.and_then(|m| m.payload)),
            "mark" => Incoming::Mark(t.mark.and_then(|m| m.name)),
            "clear" => Incoming::Clear,
            other => Incoming::Other(other.to_string()),
        };
        return Some((event, wrong_sid));
    }
    let v = serde_json::from_str::<Value>(text).ok()?;
    let wrong_sid = (v["streamSid"] != stream_sid)
        .then(|| format!("wrong or missing streamSid in {}", v["event"]));
    let owned = |s: &Value| s.as_str().map(|s| Cow::Owned(s.to_string()));
    let event = match v["event"].as_str().unwrap_or("") {
        "media" => Incoming::Media(owned(&v["media"]["payload"])),
        "mark" => Incoming::Mark(owned(&v["mark"]["name"])),
        "clear" => Incoming::Clear,
        other => Incoming::Other(other.to_string()),
    };
    Some((event, wrong_sid))
}

/// The `mark` echo, byte for byte what `json!({"event": "mark", "sequenceNumber": seq,
/// "streamSid": sid, "mark": {"name": name}}).to_string()` writes (keys in order), without
/// building a `Value` for each.
fn mark_echo(seq: u64, stream_sid: &str, name: &str) -> String {
    let name = Value::from(name);
    let sid = Value::from(stream_sid);
    format!(
        r#"{{"event":"mark","mark":{{"name":{name}}},"sequenceNumber":"{seq}","streamSid":{sid}}}"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn signatures_match_the_protocol_vectors() {
        let v0 = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675310"),
            ("Digits", "1234"),
            ("From", "+14158675310"),
            ("To", "+18005551212"),
        ];
        assert_eq!(
            sign("12345", "https://example.com/myapp.php?foo=1&bar=2", &v0),
            "L/OH5YylLD5NRKLltdqwSvS0BnU="
        );
        let v1 = [
            ("AccountSid", "AC00000000000000000000000000000001"),
            ("ApiVersion", "2010-04-01"),
            ("CallSid", "CA00000000000000000000000000000002"),
            ("CallStatus", "ringing"),
            ("Called", "+15005550006"),
            ("Caller", "+14155550100"),
            ("Direction", "inbound"),
            ("From", "+14155550100"),
            ("To", "+15005550006"),
        ];
        assert_eq!(
            sign(V1, "https://warmline.example.com/twilio/voice", &v1),
            "dv248gc7Aqkdg1X31HXeOYAzFCE="
        );
        assert_eq!(
            sign(V1, "wss://warmline.example.com/twilio/media", &[]),
            "00+3YFoE0HXKly0Bg8EGTx+zLY4="
        );
        assert_eq!(
            sign("12345", "https://x.test/r", &[("A", "b"), ("A", "a")]),
            "xiJ8QgHHQGILnj29H6Heb+mn1OE="
        );
    }

    #[test]
    fn twiml_forms_parse() {
        let s = r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect action="https://x/after"><Stream url="wss://x/twilio/media"><Parameter name="token" value="v1.2.a&amp;b"/></Stream></Connect></Response>"#;
        let Twiml::Stream {
            url,
            action,
            parameters,
        } = parse_twiml(s)
        else {
            panic!()
        };
        assert_eq!(url, "wss://x/twilio/media");
        assert_eq!(action.as_deref(), Some("https://x/after"));
        assert_eq!(parameters["token"], "v1.2.a&b");
        assert_eq!(
            parse_twiml(
                r#"<Response><Say language="en-US">Not in service &amp; sorry</Say><Hangup/></Response>"#
            ),
            Twiml::SayHangup {
                text: "Not in service & sorry".into()
            }
        );
        assert_eq!(
            parse_twiml("<Response><Say>x</Say><Dial>+15551234567</Dial></Response>"),
            Twiml::Dial {
                say: Some("x".into()),
                number: "+15551234567".into()
            }
        );
        assert_eq!(parse_twiml("<Response><Hangup/></Response>"), Twiml::Hangup);
    }

    #[test]
    fn mark_echoes_are_what_json_writes() {
        for name in ["7", "a \"quoted\" \\ name"] {
            assert_eq!(
                mark_echo(12, "MZ1", name),
                json!({"event": "mark", "sequenceNumber": "12", "streamSid": "MZ1", "mark": {"name": name}})
                    .to_string()
            );
        }
    }

    #[test]
    fn gateway_messages_read_the_same_typed_or_as_values() {
        let sid = "MZ1";
        let media = r#"{"event":"media","streamSid":"MZ1","media":{"payload":"//8="}}"#;
        assert_eq!(
            parse_incoming(media, sid),
            Some((Incoming::Media(Some("//8=".into())), None))
        );
        // Escapes are read (owned), key order does not matter.
        let mark = r#"{"mark":{"name":"a\"b"},"streamSid":"MZ1","event":"mark"}"#;
        assert_eq!(
            parse_incoming(mark, sid),
            Some((Incoming::Mark(Some("a\"b".into())), None))
        );
        // A wrong or missing streamSid is a violation either way.
        let (e, wrong) = parse_incoming(r#"{"event":"clear"}"#, sid).unwrap();
        assert_eq!(
            (e, wrong.as_deref()),
            (
                Incoming::Clear,
                Some("wrong or missing streamSid in \"clear\"")
            )
        );
        // Shapes the typed parse refuses take the Value path with the same rules.
        let (e, wrong) = parse_incoming(
            r#"{"event":"media","streamSid":5,"media":{"payload":7}}"#,
            sid,
        )
        .unwrap();
        assert_eq!(
            (e, wrong.as_deref()),
            (
                Incoming::Media(None),
                Some("wrong or missing streamSid in \"media\"")
            )
        );
        let (e, wrong) = parse_incoming(r#"{"streamSid":"MZ1","event":3}"#, sid).unwrap();
        assert_eq!(
            (e, wrong.as_deref()),
            (Incoming::Other(String::new()), None)
        );
        let (e, _) =
            parse_incoming(r#"{"event":"mark","streamSid":"MZ1","mark":"x"}"#, sid).unwrap();
        assert_eq!(e, Incoming::Mark(None));
        assert_eq!(parse_incoming("not json", sid), None);
    }

    #[test]
    fn playback_echoes_marks_after_audio_and_clear_drops_the_rest() {
        let t0 = Instant::now();
        let mut p = Playback {
            keep_audio: true,
            ..Playback::default()
        };
        p.push_audio(t0, &[0xFF; 800]); // 100 ms
        p.push_mark(t0, "a".into());
        p.push_audio(t0, &[0xFF; 800]);
        p.push_mark(t0, "b".into());
        assert_eq!(p.next_due(), Some(t0 + Duration::from_millis(100)));
        assert_eq!(p.played_ms(t0 + Duration::from_millis(150)), 150);
        let (played, dropped, marks) = p.clear(t0 + Duration::from_millis(130));
        assert_eq!((played, dropped), (130, 70));
        assert_eq!(marks, ["a", "b"]);
        assert_eq!(
            p.played_ms(t0 + Duration::from_secs(5)),
            130,
            "nothing plays after clear"
        );
        assert_eq!(p.heard(t0 + Duration::from_secs(5)).len(), 1040);
        // A mark with nothing buffered is due at once.
        let t1 = t0 + Duration::from_secs(1);
        p.push_mark(t1, "c".into());
        assert_eq!(p.next_due(), Some(t1));
    }
}
