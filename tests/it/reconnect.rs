//! A dropped or expired Realtime session is replaced mid-call (issue 11): the call opens a new
//! session, configures it the same way, seeds it with the conversation so far, and the caller
//! goes on talking to it; one call record.

use std::time::Duration;

use serde_json::{Value, json};
use sim::{audio::clips, realtime::FakeConfig, twilio::Step};

use crate::support::{Gateway, gateway};

const WAIT: Duration = Duration::from_secs(20);

/// Greeting, a question and its answer, then (after the drop the test causes) thanks and an
/// answer from the new session, then hang up.
fn conversation() -> Vec<Step> {
    vec![
        Step::WaitForAgentQuiet(WAIT),
        Step::Say(clips::question()),
        Step::WaitForAgentAudio(WAIT),
        Step::WaitForAgentQuiet(WAIT),
        Step::Silence(Duration::from_millis(1500)),
        Step::Say(clips::thanks()),
        Step::WaitForAgentAudio(WAIT),
        Step::WaitForAgentQuiet(WAIT),
        Step::HangUp,
    ]
}

async fn check_replaced(gw: &Gateway, call_sid: &str) {
    let conns = gw.fake.connections();
    assert_eq!(conns.len(), 2, "the first session, then its replacement");
    let second: Vec<Value> = conns[1]
        .events
        .iter()
        .filter(|e| e.kind != "input_audio_buffer.append")
        .map(|e| serde_json::from_str(&e.raw).unwrap())
        .collect();
    assert_eq!(
        second[0]["type"], "session.update",
        "configured the same way"
    );
    // The same prompt (its clock line is the new session's own time).
    let first: Value = serde_json::from_str(&conns[0].events[0].raw).unwrap();
    let without_clock = |v: &Value| -> Vec<String> {
        v["session"]["instructions"]
            .as_str()
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("It is now"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(without_clock(&second[0]), without_clock(&first));
    assert_eq!(second[0]["session"]["tools"], first["session"]["tools"]);
    assert_eq!(second[1]["item"]["role"], "system", "{:?}", second[1]);
    let seed = second[1]["item"]["content"][0]["text"].as_str().unwrap();
    assert!(seed.contains("caller: \"(caller spoke for"), "{seed}");
    assert!(
        !second.iter().any(|e| e["type"] == "response.create"),
        "no second greeting: the new session answers when the caller speaks"
    );
    assert!(
        !conns[1].of_type("input_audio_buffer.append").is_empty(),
        "the caller's audio goes to the new session"
    );
    assert!(
        conns[1].errors_sent.is_empty(),
        "{:?}",
        conns[1].errors_sent
    );
    let call = gw.ended_call(call_sid).await;
    assert_eq!(call.call.end_reason.as_deref(), Some("twilio_stop"));
    let lines: Vec<(&str, &str)> = call
        .transcript
        .iter()
        .map(|l| (l.role.as_str(), l.text.as_str()))
        .collect();
    let reopened = lines
        .iter()
        .position(|l| *l == ("system", "realtime session re-opened"))
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert!(
        lines[reopened..].iter().any(|(r, _)| *r == "agent"),
        "the new session answered the caller: {lines:?}"
    );
    assert_eq!(
        gw.metric("warmline_realtime_reconnects_total{outcome=\"ok\"}"),
        1.0
    );
    assert_eq!(gw.fake.open_connections(), 0, "no socket left open");
}

#[tokio::test]
async fn a_realtime_drop_mid_call_is_replaced_and_the_conversation_goes_on() {
    let gw = gateway(FakeConfig::instant(), "").await;
    let placed = gw.place_call().await;
    let streaming = gw.stream_in_background(&placed, conversation());
    // Once the first answer has been generated (the caller's question was transcribed and
    // answered), the Realtime side drops.
    for _ in 0..400 {
        let answered = !gw.fake.connections()[0].events.is_empty()
            && gw.metric("warmline_frames_relayed_total{direction=\"outbound\"}") > 60.0;
        if answered {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.fake.drop_connections();
    let report = streaming.await.unwrap();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert_eq!(report.closed_by.as_deref(), Some("caller"));
    check_replaced(&gw, &placed.call_sid).await;
    gw.app.shutdown().await;
}

#[tokio::test]
async fn session_expired_is_replaced_and_the_conversation_goes_on() {
    let gw = gateway(FakeConfig::instant(), "").await;
    let placed = gw.place_call().await;
    let streaming = gw.stream_in_background(&placed, conversation());
    for _ in 0..400 {
        if gw.metric("warmline_frames_relayed_total{direction=\"outbound\"}") > 60.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.fake
        .inject(&json!({"type": "error", "event_id": "event_x", "error": {
        "type": "invalid_request_error", "code": "session_expired",
        "message": "Your session hit the maximum duration of 60 minutes.", "param": null,
        "event_id": null}}));
    let report = streaming.await.unwrap();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    check_replaced(&gw, &placed.call_sid).await;
    gw.app.shutdown().await;
}
