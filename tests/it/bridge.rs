//! The media-stream bridge (issue 4) through real sockets: the Twilio simulator (real-time
//! 20 ms μ-law frames of real speech, a playback buffer that echoes marks and obeys `clear`)
//! against the gateway and the fake Realtime server.

use std::{collections::HashMap, time::Duration};

use serde_json::Value;
use sim::{
    audio::clips,
    realtime::FakeConfig,
    twilio::{CallReport, CallSpec, Step, StreamOptions, Twiml},
};
use warmline::store::callers;

use crate::support::{CALLER, CLIENT_NUMBER, Gateway, gateway};

const WAIT: Duration = Duration::from_secs(10);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn call(gw: &Gateway, script: &[Step]) -> (String, CallReport) {
    let placed = gw.place_call().await;
    let report = gw.stream(&placed, script).await;
    (placed.call_sid, report)
}

#[tokio::test]
async fn warm_path_greeting_reaches_twilio_before_anything_reaches_realtime() {
    let gw = gateway(FakeConfig::instant(), "").await;
    let (sid, report) = call(
        &gw,
        &[
            Step::WaitForAgentAudio(WAIT),
            Step::Silence(ms(400)),
            Step::HangUp,
        ],
    )
    .await;
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    let first_media = report.first_media_at.expect("greeting audio arrived");
    let conn = &gw.fake.connections()[0];
    let first_append = conn.of_type("input_audio_buffer.append")[0].at;
    assert!(
        first_media < first_append,
        "the greeting went out before any caller audio was relayed"
    );
    // The greeting was generated while ringing: it is in the first agent audio.
    assert!(
        report.received_ms > 1000,
        "buffered greeting flushed at once ({} ms)",
        report.received_ms
    );
    assert!(report.marks_played > 0, "marks echoed as audio played");
    let record = gw.ended_call(&sid).await;
    assert_eq!(record.call.path.as_deref(), Some("warm"));
    assert_eq!(record.call.end_reason.as_deref(), Some("twilio_stop"));
    assert!(record.call.time_to_first_audio_ms.is_some());
    assert!(
        gw.fake.wait_open(0, WAIT).await,
        "Realtime socket closed at the end"
    );
    assert_eq!(
        report.after_stream,
        Some(Twiml::Hangup),
        "a normal end hangs up"
    );
    assert!(gw.metric("warmline_time_to_first_audio_seconds_count{path=\"warm\"}") >= 1.0);
    assert!(gw.metric("warmline_frames_relayed_total{direction=\"inbound\"}") > 0.0);
    assert!(gw.metric("warmline_frames_relayed_total{direction=\"outbound\"}") > 0.0);
    assert_eq!(gw.metric("warmline_active_calls "), 0.0);
    gw.app.shutdown().await;
}

#[tokio::test]
async fn cold_path_works_without_a_warm_session() {
    let gw = gateway(FakeConfig::instant(), "[prewarm]\npolicy = \"never\"\n").await;
    let (sid, report) = call(
        &gw,
        &[
            Step::WaitForAgentAudio(WAIT),
            Step::Silence(ms(200)),
            Step::HangUp,
        ],
    )
    .await;
    assert!(
        report.first_media_after_start.is_some(),
        "the greeting still played"
    );
    assert_eq!(
        gw.fake.connections_opened(),
        1,
        "opened when the stream started"
    );
    let record = gw.ended_call(&sid).await;
    assert_eq!(record.call.path.as_deref(), Some("cold"));
    assert!(gw.fake.wait_open(0, WAIT).await);
    gw.app.shutdown().await;
}

#[tokio::test]
async fn barge_in_clears_twilio_cancels_and_truncates_to_what_was_heard() {
    let gw = gateway(FakeConfig::instant(), "").await;
    let (sid, report) = call(
        &gw,
        &[
            Step::WaitForAgentAudio(WAIT),
            Step::Silence(ms(800)),
            Step::Say(clips::interrupt()),
            Step::Silence(ms(1200)),
            Step::HangUp,
        ],
    )
    .await;
    assert!(!report.clears.is_empty(), "the bridge sent clear");
    let clear = &report.clears[0];
    assert!(
        clear.dropped_ms > 0,
        "greeting audio was still buffered when the caller spoke"
    );
    let conn = &gw.fake.connections()[0];
    assert!(
        !conn.of_type("response.cancel").is_empty(),
        "response.cancel sent"
    );
    let truncates = conn.of_type("conversation.item.truncate");
    assert_eq!(truncates.len(), 1);
    let t: Value = serde_json::from_str(&truncates[0].raw).unwrap();
    let audio_end_ms = t["audio_end_ms"].as_u64().unwrap();
    let diff = audio_end_ms.abs_diff(clear.played_ms);
    assert!(
        diff <= 20,
        "truncate at {audio_end_ms} ms, caller heard {} ms",
        clear.played_ms
    );
    let record = gw.ended_call(&sid).await;
    let roles: Vec<_> = record.transcript.iter().map(|t| t.role.as_str()).collect();
    assert!(
        roles.contains(&"caller"),
        "caller transcription saved: {roles:?}"
    );
    // The greeting line keeps only what the caller heard of it, before their words.
    let first = &record.transcript[0];
    assert_eq!(first.role, "agent");
    assert!(
        first.text.ends_with('…') && first.text.len() < clips::greeting().text.len(),
        "greeting cut where the caller interrupted: {:?}",
        first.text
    );
    gw.app.shutdown().await;
}

#[tokio::test]
async fn a_wrong_or_expired_token_is_refused_and_the_rightful_call_keeps_its_session() {
    let gw = gateway(FakeConfig::instant(), "").await;
    let placed = gw.place_call().await;
    let sid = warmline::domain::CallSid::parse(&placed.call_sid).unwrap();
    let expired = warmline::twilio::token::issue(&gw.app.state.stream_secret, &sid, 1);
    for bad in ["v1.99999999999.Zm9yZ2Vk".to_string(), expired] {
        let options = StreamOptions {
            parameters: Some(HashMap::from([("token".to_string(), bad)])),
            no_callbacks: true,
            ..Default::default()
        };
        let r = gw
            .twilio
            .stream(&placed, &[Step::WaitForClose(WAIT)], options)
            .await
            .unwrap();
        assert_eq!(r.closed_by.as_deref(), Some("gateway"));
        assert!(r.first_media_at.is_none(), "no audio for an impostor");
    }
    assert!(
        gw.app.state.registry.contains(&sid),
        "the warm session is still waiting"
    );
    let r = gw
        .twilio
        .stream(
            &placed,
            &[Step::WaitForAgentAudio(WAIT), Step::HangUp],
            StreamOptions::default(),
        )
        .await
        .unwrap();
    assert!(r.first_media_at.is_some());
    assert_eq!(
        gw.ended_call(&placed.call_sid).await.call.path.as_deref(),
        Some("warm")
    );
    // A bad upgrade signature never reaches the protocol.
    let r = gw
        .twilio
        .stream(
            &placed,
            &[],
            StreamOptions {
                signing: Some(sim::twilio::Signing::Forged),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(r.upgrade_status, Some(403));
    gw.app.shutdown().await;
}

#[tokio::test]
async fn a_hang_up_mid_greeting_saves_call_transcript_and_memory() {
    let gw = gateway(FakeConfig::instant(), "").await;
    let (sid, report) = call(
        &gw,
        &[
            Step::WaitForAgentAudio(WAIT),
            Step::Silence(ms(200)),
            Step::HangUp,
        ],
    )
    .await;
    assert_eq!(report.closed_by.as_deref(), Some("caller"));
    assert!(
        gw.fake.wait_open(0, WAIT).await,
        "no Realtime socket left open"
    );
    let record = gw.ended_call(&sid).await;
    assert_eq!(record.call.status, "completed");
    assert!(
        !record.transcript.is_empty(),
        "the greeting (or what was said of it) is in the transcript"
    );
    let memory = callers::get_caller(&gw.app.state.db, gw.client_id, CALLER)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(memory.call_count, 1);
    gw.app.shutdown().await;
}

#[tokio::test]
async fn a_realtime_drop_that_cannot_be_replaced_ends_the_call_and_transfers_to_the_fallback() {
    let gw = gateway(FakeConfig::instant(), "").await;
    // The client has a fallback number for failed calls.
    let mut body = serde_json::json!({"name": "Bright Smile", "phone_numbers": [CLIENT_NUMBER],
        "instructions": "x", "greeting": "Hello", "voice": "marin", "fallback_number": "+15557654321"});
    body["language"] = "en".into();
    gw.update_client(&body).await;
    let placed = gw.place_call().await;
    let script = [Step::WaitForAgentAudio(WAIT), Step::WaitForClose(WAIT)];
    let stream = gw.twilio.stream(&placed, &script, StreamOptions::default());
    let dropper = async {
        assert!(
            gw.fake
                .wait_event("input_audio_buffer.append", 5, WAIT)
                .await
        );
        // Realtime is down for good: the replacement sessions cannot be opened either.
        gw.fake.set_config(|c| c.mode = sim::realtime::Mode::Down);
        gw.fake.drop_connections();
    };
    let (report, ()) = tokio::join!(stream, dropper);
    let report = report.unwrap();
    assert_eq!(
        report.closed_by.as_deref(),
        Some("gateway"),
        "the gateway closed the Twilio leg"
    );
    assert_eq!(
        report.after_stream,
        Some(Twiml::Dial {
            say: Some("Sorry, something went wrong. Let me put you through to a colleague.".into()),
            number: "+15557654321".into()
        })
    );
    let record = gw.ended_call(&placed.call_sid).await;
    assert!(
        record
            .call
            .end_reason
            .unwrap()
            .starts_with("realtime_closed")
    );
    assert_eq!(
        gw.metric("warmline_realtime_reconnects_total{outcome=\"failed\"}"),
        1.0,
        "two replacements were tried, then the fallback as before"
    );
    assert!(
        gw.fake.connection_attempts() >= 3,
        "the first session and two attempts to replace it"
    );
    assert!(
        !record.transcript.is_empty(),
        "what was said before the drop is saved"
    );
    let memory = callers::get_caller(&gw.app.state.db, gw.client_id, CALLER)
        .await
        .unwrap()
        .expect("the caller is remembered after a broken call too");
    assert_eq!(memory.call_count, 1);
    assert!(gw.fake.wait_open(0, WAIT).await);
    gw.app.shutdown().await;
}

#[tokio::test]
async fn a_call_whose_session_cannot_open_is_still_saved_and_apologised_to() {
    let mut cfg = FakeConfig::instant();
    cfg.mode = sim::realtime::Mode::Down;
    let gw = gateway(cfg, "").await;
    let placed = gw.place_call().await;
    let report = gw.stream(&placed, &[Step::WaitForClose(WAIT)]).await;
    assert_eq!(report.closed_by.as_deref(), Some("gateway"));
    assert!(
        report.first_media_at.is_none(),
        "no agent audio without a session"
    );
    assert!(
        matches!(report.after_stream, Some(Twiml::SayHangup { .. })),
        "no fallback number: an apology, never dead air: {:?}",
        report.after_stream
    );
    let record = gw.ended_call(&placed.call_sid).await;
    assert!(
        record
            .call
            .end_reason
            .as_deref()
            .is_some_and(|r| r.starts_with("realtime_unavailable")),
        "{:?}",
        record.call.end_reason
    );
    assert_eq!(record.call.path, None, "no session was attached");
    gw.app.shutdown().await;
}

#[tokio::test]
async fn an_anonymous_caller_is_served_but_never_remembered() {
    let gw = gateway(FakeConfig::instant(), "").await;
    for _ in 0..2 {
        let placed = gw
            .twilio
            .place_call(&CallSpec::new("anonymous", CLIENT_NUMBER))
            .await
            .unwrap();
        let report = gw
            .twilio
            .stream(
                &placed,
                &[
                    Step::WaitForAgentQuiet(WAIT),
                    Step::Say(clips::question()),
                    Step::Silence(ms(900)),
                    Step::HangUp,
                ],
                StreamOptions::default(),
            )
            .await
            .unwrap();
        assert!(report.first_media_at.is_some(), "the call is answered");
        let record = gw.ended_call(&placed.call_sid).await;
        assert_eq!(record.call.status, "completed");
        assert!(
            record.transcript.iter().any(|t| t.role == "caller"),
            "the caller's words were heard (so there was something to remember)"
        );
    }
    let memory = callers::get_caller(&gw.app.state.db, gw.client_id, "anonymous")
        .await
        .unwrap();
    assert!(
        memory.is_none(),
        "withheld numbers share no memory: {memory:?}"
    );
    // The second call's instructions carry nothing of the first (another stranger's words).
    let conns = gw.fake.connections();
    assert_eq!(conns.len(), 2);
    for conn in conns {
        let update: Value = serde_json::from_str(&conn.of_type("session.update")[0].raw).unwrap();
        let instructions = update["session"]["instructions"].as_str().unwrap();
        assert!(!instructions.contains("caller said"), "{instructions}");
        assert!(!instructions.contains("time(s) before"), "{instructions}");
    }
    gw.app.shutdown().await;
}

#[tokio::test]
async fn the_second_call_from_a_caller_carries_the_memory_of_the_first() {
    let gw = gateway(FakeConfig::instant(), "").await;
    let (first, _) = call(
        &gw,
        &[
            Step::WaitForAgentQuiet(WAIT),
            Step::Say(clips::question()),
            Step::Silence(ms(900)),
            Step::HangUp,
        ],
    )
    .await;
    gw.ended_call(&first).await;
    let placed = gw.place_call().await;
    // The second call's greeting comes from the cache: the webhook answered without waiting
    // for its session, which may still be opening.
    assert!(gw.fake.wait_event("session.update", 2, WAIT).await);
    let conns = gw.fake.connections();
    let update: Value =
        serde_json::from_str(&conns.last().unwrap().of_type("session.update")[0].raw).unwrap();
    let instructions = update["session"]["instructions"].as_str().unwrap();
    assert!(
        instructions.contains("earlier calls: 1, the last on"),
        "{instructions}"
    );
    assert!(instructions.contains("caller said"), "{instructions}");
    gw.twilio
        .status_callback(&placed.call_sid, "canceled")
        .await
        .unwrap();
    gw.app.shutdown().await;
}

#[tokio::test]
async fn dtmf_reaches_the_model_as_a_conversation_item() {
    // The greeting (4.4 s of audio) takes the fake about 1.1 s to generate, so the key press
    // below lands while its response is still open.
    let mut cfg = FakeConfig::instant();
    cfg.chunk_interval = Duration::from_millis(25);
    let gw = gateway(cfg, "").await;
    let (sid, _) = call(
        &gw,
        &[
            // Pressed while the greeting is still being generated: its response.create must
            // wait for the greeting's response.done (the API allows one response at a time).
            Step::WaitForAgentAudio(WAIT),
            Step::Dtmf('1'),
            Step::Silence(ms(2500)),
            Step::HangUp,
        ],
    )
    .await;
    let conn = &gw.fake.connections()[0];
    let items = conn.of_type("conversation.item.create");
    assert_eq!(items.len(), 1);
    assert!(items[0].raw.contains("pressed 1"), "{}", items[0].raw);
    assert_eq!(
        conn.of_type("response.create").len(),
        2,
        "the greeting, then one answer to the key"
    );
    assert!(
        conn.errors_sent.is_empty(),
        "no refused response.create: {:?}",
        conn.errors_sent
    );
    let record = gw.ended_call(&sid).await;
    assert!(
        record
            .transcript
            .iter()
            .any(|t| t.role == "system" && t.text.contains("pressed 1"))
    );
    gw.app.shutdown().await;
}

#[tokio::test]
async fn garbage_frames_close_only_that_call() {
    let gw = gateway(FakeConfig::instant(), "").await;
    let healthy = gw
        .twilio
        .place_call(&CallSpec::new("+14155550111", CLIENT_NUMBER))
        .await
        .unwrap();
    let healthy_script = [
        Step::WaitForAgentAudio(WAIT),
        Step::Silence(ms(1500)),
        Step::HangUp,
    ];
    let healthy_stream = gw
        .twilio
        .stream(&healthy, &healthy_script, StreamOptions::default());
    let garbage = async {
        let mut outcomes = Vec::new();
        let huge = format!(
            r#"{{"event":"media","media":{{"payload":"{}"}}}}"#,
            "A".repeat(200_000)
        );
        for raw in [
            "not json at all".to_string(),
            r#"{"event":"media","streamSid":"MZ1","media":{"payload":"%%%not-base64%%%"}}"#
                .to_string(),
            huge,
        ] {
            let placed = gw.place_call().await;
            let r = gw
                .twilio
                .stream(
                    &placed,
                    &[
                        Step::WaitForAgentAudio(WAIT),
                        Step::SendRaw(raw),
                        Step::WaitForClose(WAIT),
                    ],
                    StreamOptions::default(),
                )
                .await
                .unwrap();
            outcomes.push((placed.call_sid, r));
        }
        outcomes
    };
    let (healthy_report, outcomes) = tokio::join!(healthy_stream, garbage);
    for (sid, r) in outcomes {
        assert_eq!(
            r.closed_by.as_deref(),
            Some("gateway"),
            "bad input closed that call"
        );
        let record = gw.ended_call(&sid).await;
        assert!(
            record
                .call
                .end_reason
                .unwrap()
                .starts_with("twilio_protocol")
        );
    }
    let healthy_report = healthy_report.unwrap();
    assert_eq!(
        healthy_report.closed_by.as_deref(),
        Some("caller"),
        "the other call ran to its end"
    );
    assert_eq!(
        gw.ended_call(&healthy.call_sid)
            .await
            .call
            .end_reason
            .as_deref(),
        Some("twilio_stop")
    );
    gw.app.shutdown().await;
}

#[tokio::test]
async fn a_call_live_at_shutdown_is_ended_and_saved() {
    let gw = gateway(FakeConfig::instant(), "").await;
    let placed = gw.place_call().await;
    let script = [Step::WaitForAgentAudio(WAIT), Step::WaitForClose(WAIT)];
    let options = StreamOptions {
        no_callbacks: true,
        ..Default::default()
    };
    let stream = gw.twilio.stream(&placed, &script, options);
    let stop = async {
        assert!(
            gw.fake
                .wait_event("input_audio_buffer.append", 3, WAIT)
                .await
        );
        gw.app.state.shutdown.cancel();
    };
    let (report, ()) = tokio::join!(stream, stop);
    assert_eq!(report.unwrap().closed_by.as_deref(), Some("gateway"));
    let record = gw.ended_call(&placed.call_sid).await;
    assert_eq!(record.call.end_reason.as_deref(), Some("shutdown"));
    assert!(
        gw.fake.wait_open(0, WAIT).await,
        "Realtime closed on shutdown"
    );
    gw.app.shutdown().await;
}

#[tokio::test]
async fn a_spanish_speaking_business_apologises_in_spanish() {
    let mut cfg = FakeConfig::instant();
    cfg.mode = sim::realtime::Mode::Down;
    let gw = gateway(cfg, "").await;
    let body = serde_json::json!({"name": "Clínica Sonrisa", "phone_numbers": [CLIENT_NUMBER],
        "instructions": "x", "greeting": "Hola", "voice": "marin", "language": "es-MX"});
    gw.update_client(&body).await;
    let placed = gw.place_call().await;
    let report = gw.stream(&placed, &[Step::WaitForClose(WAIT)]).await;
    assert_eq!(
        report.after_stream,
        Some(Twiml::SayHangup {
            text:
                "Lo sentimos, ahora no podemos atender su llamada. Por favor, inténtelo más tarde."
                    .into()
        })
    );
    gw.app.shutdown().await;
}
