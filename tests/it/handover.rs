//! The hand-over of a warm session to its call's task, and the call's task driving both sockets
//! (docs/architecture.md, "Who owns each socket", "The call task"): a claim while the greeting
//! still streams or while the socket still connects, a hang-up in the middle of the hand-over,
//! and a Realtime peer that stops reading.

use std::time::Duration;

use base64::Engine;
use serde_json::json;
use sim::{
    audio::clips,
    realtime::FakeConfig,
    twilio::{Step, StreamOptions},
};

use crate::support::gateway;

const WAIT: Duration = Duration::from_secs(10);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test]
async fn a_claim_while_the_greeting_is_still_streaming_plays_all_of_it_in_order() {
    // The greeting is generated at twice the pace of speech (100 ms of audio every 50 ms,
    // about 2.2 s in all), so the webhook answers (at the first chunk) long before the model
    // has finished it.
    let cfg = FakeConfig {
        chunk_interval: ms(50),
        ..FakeConfig::instant()
    };
    let gw = gateway(cfg, "").await;
    let placed = gw.place_call().await;
    let greeting = clips::greeting();
    assert!(
        placed.webhook_time < ms(greeting.duration_ms() as u64 / 2),
        "the stream starts while the greeting is still being generated ({:?})",
        placed.webhook_time
    );
    let script = [
        Step::WaitForAgentAudio(WAIT),
        Step::WaitForAgentQuiet(WAIT),
        Step::HangUp,
    ];
    let report = gw.stream(&placed, &script).await;
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert_eq!(
        report.received_ms as usize,
        greeting.duration_ms(),
        "every chunk arrived: the buffered ones and those generated after the claim"
    );
    assert_eq!(
        &report.heard_audio[..greeting.mulaw.len()],
        &greeting.mulaw[..],
        "in order, without a hole where the hand-over happened"
    );
    let record = gw.ended_call(&placed.call_sid).await;
    assert_eq!(record.call.path.as_deref(), Some("warm"));
    assert_eq!(gw.fake.connections_opened(), 1, "one session, handed over");
    gw.app.shutdown().await;
}

/// A gateway whose Realtime socket takes 1.5 s to connect while the webhook answers after
/// 200 ms: the stream starts while the warm session is still connecting.
async fn slow_connecting_gateway() -> crate::support::Gateway {
    let cfg = FakeConfig {
        connect_delay: ms(1500),
        ..FakeConfig::instant()
    };
    gateway(cfg, "[prewarm]\nring_max_ms = 200\n").await
}

#[tokio::test]
async fn a_claim_while_the_session_is_still_connecting_waits_for_it_and_stays_warm() {
    let gw = slow_connecting_gateway().await;
    let placed = gw.place_call().await;
    assert!(placed.webhook_time < ms(1000), "answered at ring_max_ms");
    let script = [
        Step::WaitForAgentAudio(WAIT),
        Step::Silence(ms(300)),
        Step::HangUp,
    ];
    let report = gw.stream(&placed, &script).await;
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert!(report.received_ms > 0, "the greeting played");
    let record = gw.ended_call(&placed.call_sid).await;
    assert_eq!(
        record.call.path.as_deref(),
        Some("warm"),
        "the warm session was taken over once it opened, not replaced by a cold one"
    );
    assert_eq!(gw.fake.connections_opened(), 1);
    assert_eq!(
        gw.metric("warmline_webhook_duration_seconds_count{outcome=\"warm_not_ready\"}"),
        1.0
    );
    assert!(gw.fake.wait_open(0, WAIT).await, "closed at the end");
    gw.app.shutdown().await;
}

#[tokio::test]
async fn a_hang_up_during_the_hand_over_leaves_no_socket_open_and_saves_the_call() {
    let gw = slow_connecting_gateway().await;
    let placed = gw.place_call().await;
    // The caller hangs up right after `start`, while the claimed session is still connecting.
    let report = gw.stream(&placed, &[Step::HangUp]).await;
    assert_eq!(report.closed_by.as_deref(), Some("caller"));
    let record = gw.ended_call(&placed.call_sid).await;
    assert_eq!(record.call.end_reason.as_deref(), Some("twilio_stop"));
    assert_eq!(record.call.status, "completed");
    // The session finished connecting after the call had ended; it was closed, not leaked,
    // and no second (cold) session was opened for a call that was already over.
    tokio::time::sleep(ms(2000)).await;
    assert!(
        gw.fake.wait_open(0, WAIT).await,
        "no Realtime socket left open"
    );
    assert_eq!(
        gw.fake.connection_attempts(),
        1,
        "no cold session for an ended call"
    );
    for _ in 0..50 {
        if gw.metric("warmline_active_calls ") == 0.0 {
            break;
        }
        tokio::time::sleep(ms(100)).await;
    }
    assert_eq!(gw.metric("warmline_active_calls "), 0.0);
    gw.app.shutdown().await;
}

/// `n` agent audio deltas of 100 ms for one response.
fn deltas(n: usize) -> Vec<serde_json::Value> {
    let audio = base64::engine::general_purpose::STANDARD.encode([0xFFu8; 800]);
    (0..n)
        .map(|_| {
            json!({"type": "response.output_audio.delta", "event_id": "event_x",
                "response_id": "resp_stall", "item_id": "item_stall", "output_index": 0,
                "content_index": 0, "delta": audio})
        })
        .collect()
}

#[tokio::test]
async fn a_realtime_peer_that_stops_reading_does_not_hold_back_control_frames_to_twilio() {
    // Without replacement sessions: the stalled one is given up and the call ends.
    let gw = gateway(FakeConfig::instant(), "[call]\nrealtime_reconnects = 0\n").await;
    let placed = gw.place_call().await;
    // Large caller frames (45 KB of audio each, ~14 MB in all) fill the socket buffers
    // towards a Realtime server that has stopped reading, so the gateway's writes to it stall.
    let flood_frame = format!(
        r#"{{"event":"media","sequenceNumber":"99","streamSid":"MZ00000000000000000000000000000001","media":{{"track":"inbound","chunk":"1","timestamp":"1000","payload":"{}"}}}}"#,
        base64::engine::general_purpose::STANDARD.encode(vec![0xFFu8; 45_000])
    );
    let mut script = vec![Step::WaitForAgentAudio(WAIT), Step::WaitForAgentQuiet(WAIT)];
    script.extend((0..300).map(|_| Step::SendRaw(flood_frame.clone())));
    script.push(Step::WaitForClose(Duration::from_secs(20)));
    let stream = gw.twilio.stream(&placed, &script, StreamOptions::default());
    let stall = async {
        assert!(
            gw.fake
                .wait_event("input_audio_buffer.append", 3, WAIT)
                .await
        );
        gw.fake.stall_reading(true);
        // Let the flood reach the gateway and back up behind the stalled reader.
        tokio::time::sleep(ms(1500)).await;
        // The model (still sending) answers and the caller starts talking over it.
        for d in deltas(30) {
            gw.fake.inject(&d);
        }
        tokio::time::sleep(ms(300)).await;
        gw.fake
            .inject(&json!({"type": "input_audio_buffer.speech_started",
            "event_id": "event_y", "audio_start_ms": 5000, "item_id": "item_user"}));
    };
    let (report, ()) = tokio::join!(stream, stall);
    let report = report.unwrap();
    let record = gw.ended_call(&placed.call_sid).await;
    assert_eq!(
        record.call.end_reason.as_deref(),
        Some("realtime_closed: realtime stopped reading"),
        "the stalled Realtime socket was given up after its limit"
    );
    let clear = report
        .clears
        .first()
        .expect("the barge-in's clear reached Twilio while Realtime was stuck");
    let closed = report.closed_at_ms.expect("the gateway closed the stream");
    assert!(
        clear.at_ms < closed,
        "clear ({} ms) before the call ended on the stalled peer ({closed} ms)",
        clear.at_ms
    );
    assert!(
        gw.metric("warmline_frames_dropped_total{direction=\"inbound\"}") > 0.0,
        "caller audio beyond the Realtime queue was dropped and counted, not buffered"
    );
    gw.fake.stall_reading(false);
    assert!(
        gw.fake.wait_open(0, WAIT).await,
        "no Realtime socket left open"
    );
    gw.app.shutdown().await;
}

#[tokio::test]
async fn a_call_reaching_its_maximum_duration_is_ended_by_the_calls_own_timer_and_saved() {
    let gw = gateway(FakeConfig::instant(), "[call]\nmax_duration_secs = 1\n").await;
    let placed = gw.place_call().await;
    // The caller keeps sending audio (every turn moves the loop's other deadlines); the call's
    // own deadline still ends it.
    let script = [Step::Silence(ms(5000)), Step::WaitForClose(WAIT)];
    let report = gw.stream(&placed, &script).await;
    assert_eq!(report.closed_by.as_deref(), Some("gateway"));
    let closed = report.closed_at_ms.expect("closed by the gateway");
    assert!(
        (1000..5000).contains(&closed),
        "ended at the maximum duration, before the caller's 5 s of audio ran out ({closed} ms)"
    );
    let record = gw.ended_call(&placed.call_sid).await;
    assert_eq!(record.call.end_reason.as_deref(), Some("max_duration"));
    gw.app.shutdown().await;
}

#[tokio::test]
async fn a_buffered_greeting_longer_than_the_outbound_queue_is_played_whole() {
    // 10 ms chunks: the 4.4 s greeting is 440 deltas, all buffered while the phone rings
    // (ring_min_ms), more than `call.outbound_queue_frames` (256). A healthy Twilio socket takes
    // them all: only real backpressure drops audio.
    let cfg = FakeConfig {
        chunk_ms: 10,
        chunk_interval: ms(1),
        ..FakeConfig::instant()
    };
    let gw = gateway(cfg, "[prewarm]\nring_min_ms = 1500\n").await;
    let placed = gw.place_call().await;
    let script = [
        Step::WaitForAgentAudio(WAIT),
        Step::WaitForAgentQuiet(WAIT),
        Step::HangUp,
    ];
    let report = gw.stream(&placed, &script).await;
    let greeting = clips::greeting();
    assert_eq!(report.received_ms as usize, greeting.duration_ms());
    assert_eq!(
        &report.heard_audio[..greeting.mulaw.len()],
        &greeting.mulaw[..]
    );
    assert_eq!(
        gw.metric("warmline_frames_dropped_total{direction=\"outbound\"}"),
        0.0
    );
    gw.app.shutdown().await;
}

#[tokio::test]
async fn a_key_pressed_during_the_hand_over_reaches_the_model() {
    let gw = slow_connecting_gateway().await;
    let placed = gw.place_call().await;
    let script = [
        Step::Dtmf('5'),
        Step::WaitForAgentAudio(WAIT),
        Step::Silence(ms(300)),
        Step::HangUp,
    ];
    let report = gw.stream(&placed, &script).await;
    assert!(report.received_ms > 0);
    assert!(
        gw.fake
            .wait_event("conversation.item.create", 1, WAIT)
            .await,
        "the key pressed while the session was still connecting was sent once it attached"
    );
    let conns = gw.fake.connections();
    let item = &conns[0].of_type("conversation.item.create")[0].raw;
    assert!(item.contains("pressed 5"), "{item}");
    gw.app.shutdown().await;
}

/// Both legs stuck at once (issue 11: "no mutual wait"): Twilio stops reading what the gateway
/// sends while the model floods it with audio, and Realtime stops reading while the caller
/// floods it. The call task never waits on either write, so the caller's hang-up (or, with no
/// hang-up, the call's own limits) still ends the call, which is saved, with no socket left.
async fn both_legs_stuck(hang_up: bool) {
    let extra = "[call]\nrealtime_reconnects = 0\nmax_duration_secs = 4\n";
    let gw = gateway(FakeConfig::instant(), extra).await;
    let placed = gw.place_call().await;
    let flood_frame = format!(
        r#"{{"event":"media","sequenceNumber":"99","streamSid":"MZ00000000000000000000000000000001","media":{{"track":"inbound","chunk":"1","timestamp":"1000","payload":"{}"}}}}"#,
        base64::engine::general_purpose::STANDARD.encode(vec![0xFFu8; 45_000])
    );
    let mut script = vec![Step::WaitForAgentAudio(WAIT), Step::StopReading];
    script.extend((0..150).map(|_| Step::SendRaw(flood_frame.clone())));
    if hang_up {
        script.push(Step::HangUp);
    } else {
        script.push(Step::WaitForClose(Duration::from_secs(20)));
    }
    let stream = gw.twilio.stream(&placed, &script, StreamOptions::default());
    let stall = async {
        assert!(
            gw.fake
                .wait_event("input_audio_buffer.append", 1, WAIT)
                .await
        );
        gw.fake.stall_reading(true);
        // The model keeps talking: ~4 MB of audio towards a Twilio leg that reads nothing.
        let big = base64::engine::general_purpose::STANDARD.encode(vec![0xFFu8; 40_000]);
        for _ in 0..100 {
            gw.fake
                .inject(&json!({"type": "response.output_audio.delta",
                "event_id": "event_x", "response_id": "resp_flood", "item_id": "item_flood",
                "output_index": 0, "content_index": 0, "delta": big}));
        }
    };
    let started = std::time::Instant::now();
    let (report, ()) = tokio::join!(stream, stall);
    report.unwrap();
    let record = gw.ended_call(&placed.call_sid).await;
    let reason = record.call.end_reason.unwrap_or_default();
    let expected: &[&str] = if hang_up {
        &["twilio_stop", "twilio_closed", "realtime_closed"]
    } else {
        &["max_duration", "twilio_closed", "realtime_closed"]
    };
    assert!(
        expected.iter().any(|e| reason.starts_with(e)),
        "ended as {reason}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the call ended by itself: {:?}",
        started.elapsed()
    );
    // The stuck fake notices the gateway's side is gone once it reads again.
    gw.fake.stall_reading(false);
    assert!(
        gw.fake.wait_open(0, Duration::from_secs(10)).await,
        "no Realtime socket left open"
    );
    gw.app.shutdown().await;
}

#[tokio::test]
async fn with_both_legs_stuck_a_hang_up_still_ends_the_call() {
    both_legs_stuck(true).await;
}

#[tokio::test]
async fn with_both_legs_stuck_the_calls_limits_still_end_it() {
    both_legs_stuck(false).await;
}
