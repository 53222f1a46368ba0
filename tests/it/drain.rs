//! Deploys drain (issue 11): the first SIGTERM (`AppState::begin_drain`, what the signal
//! handler calls) makes the instance not ready while its live calls go on; it stops by itself
//! once they have ended; at `server.drain_secs` a live call is put through to its fallback with
//! a short line; with `twilio.webhook_base_url` new calls are redirected there and the
//! `<Connect action>` points there. The binary's own signal handling is tested in `cli.rs`.

use std::time::Duration;

use serde_json::json;
use sim::{
    realtime::FakeConfig,
    twilio::{Step, Twiml},
};

use crate::support::{CLIENT_NUMBER, gateway};

const WAIT: Duration = Duration::from_secs(20);

async fn readyz(base: &str) -> u16 {
    reqwest::get(format!("{base}/readyz"))
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_drain_keeps_live_calls_going_and_stops_once_they_have_ended() {
    let mut gw = gateway(FakeConfig::instant(), "").await;
    assert_eq!(readyz(&gw.app.base).await, 200);
    let placed = gw.place_call().await;
    let script = vec![
        Step::WaitForAgentQuiet(WAIT),
        // The drain starts here (below); the caller goes on talking and is answered.
        Step::Silence(Duration::from_millis(800)),
        Step::Say(sim::audio::clips::question()),
        Step::WaitForAgentAudio(WAIT),
        Step::WaitForAgentQuiet(WAIT),
        Step::HangUp,
    ];
    let streaming = gw.stream_in_background(&placed, script);
    assert!(gw.fake.wait_event("response.create", 1, WAIT).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.app.state.begin_drain();
    assert_eq!(readyz(&gw.app.base).await, 503, "not ready while draining");
    assert_eq!(gw.metric("warmline_draining"), 1.0);
    // A new call still gets valid TwiML (answered here, cold: no webhook_base_url).
    let late = gw.place_call().await;
    assert!(matches!(late.twiml, Twiml::Stream { .. }), "{}", late.body);
    assert_eq!(
        gw.fake.connections().len(),
        1,
        "no warm session is opened while draining"
    );
    gw.twilio
        .status_callback(&late.call_sid, "no-answer")
        .await
        .unwrap();
    // The live call goes on to its natural end.
    let report = streaming.await.unwrap();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert_eq!(report.closed_by.as_deref(), Some("caller"));
    assert!(
        report.media_messages > 0 && report.after_stream == Some(Twiml::Hangup),
        "{report:?}"
    );
    let call = gw.ended_call(&placed.call_sid).await;
    assert_eq!(call.call.end_reason.as_deref(), Some("twilio_stop"));
    // Then the instance stops by itself (after a short linger for Twilio's callbacks).
    assert!(
        gw.app.stopped_within(Duration::from_secs(15)).await,
        "the drain completes once the calls have ended"
    );
    gw.app.shutdown().await;
}

#[tokio::test]
async fn at_the_drain_deadline_a_live_call_hears_a_line_and_is_put_through_to_its_fallback() {
    let gw = gateway(FakeConfig::instant(), "[server]\ndrain_secs = 1\n").await;
    gw.update_client(
        &json!({"name": "Bright Smile", "phone_numbers": [CLIENT_NUMBER],
        "instructions": "You are the receptionist.", "greeting": "Thanks for calling!",
        "voice": "marin", "language": "es", "fallback_number": "+15005550008"}),
    )
    .await;
    let placed = gw.place_call().await;
    let streaming = gw.stream_in_background(
        &placed,
        vec![Step::WaitForAgentQuiet(WAIT), Step::WaitForClose(WAIT)],
    );
    assert!(gw.fake.wait_event("response.create", 1, WAIT).await);
    gw.app.state.begin_drain();
    let report = streaming.await.unwrap();
    assert_eq!(report.closed_by.as_deref(), Some("gateway"));
    assert_eq!(
        report.after_stream,
        Some(Twiml::Dial {
            say: Some("Tenemos que transferir su llamada. Un momento, por favor.".into()),
            number: "+15005550008".into()
        }),
        "answered by this instance, still listening, in the client's language"
    );
    let call = gw.ended_call(&placed.call_sid).await;
    assert_eq!(call.call.end_reason.as_deref(), Some("drained"));
    assert_eq!(gw.metric("warmline_calls_total{reason=\"drained\"}"), 1.0);
    gw.app.shutdown().await;
}

#[tokio::test]
async fn with_a_shared_base_url_new_calls_are_redirected_and_after_stream_points_there() {
    let gw = gateway(
        FakeConfig::instant(),
        "[twilio]\nwebhook_base_url = \"https://lb.example.com\"\n",
    )
    .await;
    let placed = gw.place_call().await;
    let Twiml::Stream { action, .. } = &placed.twiml else {
        panic!("{}", placed.body)
    };
    assert_eq!(
        action.as_deref(),
        Some("https://lb.example.com/twilio/after-stream"),
        "any instance can answer it"
    );
    gw.twilio
        .status_callback(&placed.call_sid, "no-answer")
        .await
        .unwrap();
    gw.app.state.begin_drain();
    let late = gw.place_call().await;
    assert_eq!(
        late.twiml,
        Twiml::Redirect {
            url: "https://lb.example.com/twilio/voice?redirected=1".into()
        }
    );
    assert_eq!(
        gw.metric("warmline_webhook_duration_seconds_count{outcome=\"redirected\"}"),
        1.0
    );
    gw.app.shutdown().await;
}
