//! What the caller waits, and what greetings cost (issue 13, item 4; README "Operations"):
//! `warmline_dial_to_first_audio_seconds{greeting}` from the voice webhook's arrival to the first
//! agent frame on the stream, `warmline_greetings_total{source}` for every greeting asked of the
//! model, `warmline_greetings_unheard_total` for those generated for a call that never streamed.

use std::time::Duration;

use sim::{realtime::FakeConfig, twilio::Step};

use crate::support::{Gateway, gateway};

const WAIT: Duration = Duration::from_secs(10);

async fn heard(gw: &Gateway) {
    let placed = gw.place_call().await;
    let report = gw
        .stream(&placed, &[Step::WaitForAgentQuiet(WAIT), Step::HangUp])
        .await;
    assert!(report.media_messages > 0, "{report:?}");
    gw.ended_call(&placed.call_sid).await;
}

#[tokio::test]
async fn warm_calls_count_their_whole_wait_and_unheard_greetings_are_counted() {
    let gw = gateway(FakeConfig::instant(), "[prewarm]\nring_min_ms = 200\n").await;
    heard(&gw).await;
    let generated = "warmline_dial_to_first_audio_seconds_count{greeting=\"generated\"}";
    assert_eq!(gw.metric(generated), 1.0);
    assert_eq!(
        gw.metric("warmline_greetings_total{source=\"generated\"}"),
        1.0
    );
    assert_eq!(gw.metric("warmline_greetings_unheard_total"), 0.0);
    // The whole wait holds the ringing (at least ring_min_ms), which the time from the stream's
    // start does not.
    let dial = gw.metric("warmline_dial_to_first_audio_seconds_sum{greeting=\"generated\"}");
    let from_start = gw.metric("warmline_time_to_first_audio_seconds_sum{path=\"warm\"}");
    assert!(dial >= 0.2 && dial > from_start, "{dial} vs {from_start}");
    assert_eq!(
        gw.metric("warmline_dial_to_first_audio_seconds_count{greeting=\"cached\"}"),
        0.0
    );

    // A caller who hangs up while it rings: the greeting was generated, and nobody heard it.
    let placed = gw.place_call().await;
    assert_eq!(
        gw.twilio
            .status_callback(&placed.call_sid, "canceled")
            .await
            .unwrap(),
        204
    );
    assert_eq!(
        gw.metric("warmline_greetings_total{source=\"generated\"}"),
        2.0
    );
    assert_eq!(gw.metric("warmline_greetings_unheard_total"), 1.0);
    assert_eq!(gw.metric(generated), 1.0, "no audio, no wait measured");
}

#[tokio::test]
async fn a_cold_call_generates_its_greeting_when_the_stream_starts() {
    let gw = gateway(FakeConfig::instant(), "[prewarm]\npolicy = \"never\"\n").await;
    let placed = gw.place_call().await;
    assert_eq!(
        gw.metric("warmline_greetings_total{source=\"generated\"}"),
        0.0,
        "nothing generated while it rings"
    );
    let report = gw
        .stream(&placed, &[Step::WaitForAgentQuiet(WAIT), Step::HangUp])
        .await;
    assert!(report.media_messages > 0, "{report:?}");
    gw.ended_call(&placed.call_sid).await;
    assert_eq!(
        gw.metric("warmline_greetings_total{source=\"generated\"}"),
        1.0
    );
    assert_eq!(
        gw.metric("warmline_dial_to_first_audio_seconds_count{greeting=\"generated\"}"),
        1.0
    );
    assert_eq!(gw.metric("warmline_greetings_unheard_total"), 0.0);
}
