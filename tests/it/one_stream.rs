//! One stream per call, ever (issue 12): a replayed stream token, a second stream while the
//! first is live, a replayed voice webhook after the call ended; on this instance (its
//! tombstones) and after a restart (the calls table: `store::calls::claim_stream`), on SQLite and
//! Postgres. Each opens no Realtime session and writes no second record.

use std::time::Duration;

use sim::{
    realtime::FakeConfig,
    twilio::{CallSpec, PlacedCall, Step, Twiml},
};

use crate::support::{Backend, CALLER, CLIENT_NUMBER, Gateway, gateway, gateway_on};

const WAIT: Duration = Duration::from_secs(20);

/// A stream token secret shared across restarts (as several instances share one).
const SHARED_SECRET: &str =
    "[twilio]\nstream_token_secret = \"a-shared-stream-token-secret-for-tests\"\n";

/// Greeting heard, then hang up.
fn short_call() -> Vec<Step> {
    vec![Step::WaitForAgentQuiet(WAIT), Step::HangUp]
}

/// What a refused replay sees: the gateway closes the socket, no agent audio.
fn assert_refused(report: &sim::twilio::CallReport) {
    assert_eq!(report.closed_by.as_deref(), Some("gateway"), "{report:?}");
    assert_eq!(report.media_messages, 0, "no agent audio on a replay");
}

async fn replay_webhook(gw: &Gateway, call_sid: &str) -> PlacedCall {
    gw.twilio
        .place_call(&CallSpec {
            call_sid: Some(call_sid.to_string()),
            ..CallSpec::new(CALLER, CLIENT_NUMBER)
        })
        .await
        .unwrap()
}

/// The finished call is one record: the transcript of the one stream, one call for the caller.
async fn assert_one_record(gw: &Gateway, call_sid: &str, transcript_lines: usize) {
    let saved = gw.ended_call(call_sid).await;
    assert_eq!(saved.transcript.len(), transcript_lines);
    let caller = warmline::store::callers::get_caller(&gw.app.state.db, gw.client_id, CALLER)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(caller.call_count, 1, "counted once");
}

#[tokio::test]
async fn a_replayed_stream_token_opens_nothing_and_writes_nothing() {
    let gw = gateway(FakeConfig::instant(), "").await;
    let placed = gw.place_call().await;
    let report = gw.stream(&placed, &short_call()).await;
    assert_eq!(report.closed_by.as_deref(), Some("caller"));
    let lines = gw.ended_call(&placed.call_sid).await.transcript.len();
    let opened = gw.fake.connections_opened();

    // The same start (token and all) again.
    let replay = gw
        .stream(&placed, &[Step::WaitForClose(Duration::from_secs(5))])
        .await;
    assert_refused(&replay);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gw.fake.connections_opened(), opened, "no Realtime session");
    assert_one_record(&gw, &placed.call_sid, lines).await;
    gw.app.shutdown().await;
}

#[tokio::test]
async fn a_second_stream_while_the_first_is_live_is_refused() {
    let gw = gateway(FakeConfig::instant(), "").await;
    let placed = gw.place_call().await;
    let first = gw.stream_in_background(
        &placed,
        vec![
            Step::WaitForAgentQuiet(WAIT),
            Step::Silence(Duration::from_millis(1500)),
            Step::HangUp,
        ],
    );
    assert!(
        gw.fake
            .wait_event("input_audio_buffer.append", 1, WAIT)
            .await
    );
    let second = gw
        .stream(&placed, &[Step::WaitForClose(Duration::from_secs(5))])
        .await;
    assert_refused(&second);
    let first = first.await.unwrap();
    assert_eq!(
        first.closed_by.as_deref(),
        Some("caller"),
        "the first goes on"
    );
    assert!(first.media_messages > 0);
    assert_eq!(gw.fake.connections_opened(), 1);
    let lines = gw.ended_call(&placed.call_sid).await.transcript.len();
    assert_one_record(&gw, &placed.call_sid, lines).await;
    gw.app.shutdown().await;
}

#[tokio::test]
async fn a_replayed_voice_webhook_after_the_call_ended_opens_nothing() {
    let gw = gateway(FakeConfig::instant(), "").await;
    let placed = gw.place_call().await;
    gw.stream(&placed, &short_call()).await;
    let lines = gw.ended_call(&placed.call_sid).await.transcript.len();
    let opened = gw.fake.connections_opened();
    let replay = replay_webhook(&gw, &placed.call_sid).await;
    assert_eq!(replay.twiml, Twiml::Hangup, "{}", replay.body);
    assert_eq!(
        gw.metric("warmline_webhook_duration_seconds_count{outcome=\"replayed\"}"),
        1.0
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gw.fake.connections_opened(), opened, "no warm session");
    assert_one_record(&gw, &placed.call_sid, lines).await;
    gw.app.shutdown().await;
}

/// After a restart the tombstones are gone: the calls table refuses the replays.
async fn replays_after_a_restart_open_nothing(backend: Backend) {
    let gw = gateway_on(backend, FakeConfig::instant(), SHARED_SECRET).await;
    let placed = gw.place_call().await;
    gw.stream(&placed, &short_call()).await;
    let lines = gw.ended_call(&placed.call_sid).await.transcript.len();
    let gw = gw.restart().await;
    let opened = gw.fake.connections_opened();

    let replay = replay_webhook(&gw, &placed.call_sid).await;
    assert_eq!(replay.twiml, Twiml::Hangup, "{}", replay.body);

    // The old start, sent to the restarted instance (same token, still within its life).
    let moved = gw.here(&placed);
    let report = gw
        .stream(&moved, &[Step::WaitForClose(Duration::from_secs(5))])
        .await;
    assert!(report.stream_opened, "{report:?}");
    assert_refused(&report);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gw.fake.connections_opened(), opened, "no Realtime session");
    assert_one_record(&gw, &placed.call_sid, lines).await;
    gw.app.shutdown().await;
}

#[tokio::test]
async fn replays_after_a_restart_open_nothing_on_sqlite() {
    replays_after_a_restart_open_nothing(Backend::Sqlite).await;
}

#[tokio::test]
async fn replays_after_a_restart_open_nothing_on_postgres() {
    if crate::support::postgres_skipped() {
        return;
    }
    replays_after_a_restart_open_nothing(Backend::Postgres).await;
}
