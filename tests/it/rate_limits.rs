//! Rate limits (issue 12, item 3; README "Security"): a caller number ringing again and again
//! goes cold, a client's warm sessions and its calls on this instance are capped, and an address
//! guessing admin tokens is slowed and then refused, through real sockets.

use std::{net::IpAddr, time::Duration};

use reqwest::StatusCode;
use serde_json::json;
use sim::{
    realtime::FakeConfig,
    twilio::{CallSpec, PlacedCall, Step, Twiml},
};

use crate::support::{
    ADMIN_TOKEN, Backend, CALLER, CLIENT_NUMBER, Gateway, gateway, gateway_on, spawn_app,
};

const WAIT: Duration = Duration::from_secs(20);

async fn call_from(gw: &Gateway, from: &str, to: &str) -> PlacedCall {
    gw.twilio
        .place_call(&CallSpec::new(from, to))
        .await
        .unwrap()
}

fn is_stream(placed: &PlacedCall) -> bool {
    matches!(placed.twiml, Twiml::Stream { .. })
}

/// Webhook answers settle the Realtime connections they open before they answer (the warm path
/// waits for the session); a moment more for one that should not exist to show up.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn the_sixth_call_from_one_number_in_a_minute_goes_cold_while_another_number_goes_warm() {
    let gw = gateway(FakeConfig::instant(), "").await;
    for i in 0..5 {
        let placed = call_from(&gw, CALLER, CLIENT_NUMBER).await;
        assert!(is_stream(&placed), "call {i}: {:?}", placed.twiml);
    }
    assert!(gw.fake.wait_open(5, WAIT).await);
    settle().await;
    assert_eq!(gw.fake.connections_opened(), 5, "five warm sessions");

    // The sixth is still answered (a stream, cold), but warms nothing.
    let sixth = call_from(&gw, CALLER, CLIENT_NUMBER).await;
    assert!(is_stream(&sixth), "{:?}", sixth.twiml);
    settle().await;
    assert_eq!(
        gw.fake.connections_opened(),
        5,
        "no Realtime session for the sixth"
    );
    assert_eq!(
        gw.metric("warmline_rate_limited_total{limit=\"caller_webhooks\"}"),
        1.0
    );
    assert_eq!(
        gw.metric("warmline_cold_sessions_total{reason=\"rate_limited\"}"),
        1.0
    );

    // Another number is its own count.
    let other = call_from(&gw, "+14155550177", CLIENT_NUMBER).await;
    assert!(is_stream(&other));
    assert!(gw.fake.wait_open(6, WAIT).await, "another number goes warm");

    // The cold one still works: its stream opens its session then, and the agent speaks.
    let report = gw
        .stream(&sixth, &[Step::WaitForAgentAudio(WAIT), Step::HangUp])
        .await;
    assert!(report.media_messages > 0, "{report:?}");
    gw.app.shutdown().await;
}

#[tokio::test]
async fn beyond_its_warm_session_cap_a_client_goes_cold_while_another_client_stays_warm() {
    let gw = gateway(
        FakeConfig::instant(),
        "[limits]\nwarm_sessions_per_client = 2\n",
    )
    .await;
    let mut ringing = Vec::new();
    for from in ["+14155550101", "+14155550102"] {
        let placed = call_from(&gw, from, CLIENT_NUMBER).await;
        assert!(is_stream(&placed));
        ringing.push(placed);
    }
    assert!(gw.fake.wait_open(2, WAIT).await);
    let third = call_from(&gw, "+14155550103", CLIENT_NUMBER).await;
    assert!(is_stream(&third), "answered, cold: {:?}", third.twiml);
    settle().await;
    assert_eq!(gw.fake.connections_opened(), 2, "no third warm session");
    assert_eq!(
        gw.metric("warmline_cold_sessions_total{reason=\"client_cap\"}"),
        1.0
    );
    assert_eq!(
        gw.metric("warmline_rate_limited_total{limit=\"client_warm_sessions\"}"),
        1.0
    );

    // Another client has its own cap.
    gw.app.create_client("Other Practice", "+15005550010").await;
    assert!(is_stream(
        &call_from(&gw, "+14155550104", "+15005550010").await
    ));
    assert!(
        gw.fake.wait_open(3, WAIT).await,
        "the other client goes warm"
    );

    // A session that leaves (the caller hung up while it rang) gives its place back.
    let status = gw.twilio.status_callback(&ringing[0].call_sid, "canceled");
    assert_eq!(status.await.unwrap(), 204);
    assert!(is_stream(
        &call_from(&gw, "+14155550105", CLIENT_NUMBER).await
    ));
    settle().await;
    assert_eq!(
        gw.fake.connections_opened(),
        4,
        "warm again once a place is free"
    );
    gw.app.shutdown().await;
}

/// `live_calls_per_client = 1`: one call ringing or live per client; the next is turned away
/// with the busy line (no fallback number) or put through to the fallback number, and recorded
/// as busy.
async fn live_calls_are_capped_per_client(backend: Backend) {
    let gw = gateway_on(
        backend,
        FakeConfig::instant(),
        "[limits]\nlive_calls_per_client = 1\n",
    )
    .await;
    // A second client, with a fallback number (written before any call: nothing else writes).
    const WITH_FALLBACK: &str = "+15005550010";
    let resp = gw
        .app
        .admin(reqwest::Method::POST, "/clients")
        .json(
            &json!({"name": "Other Practice", "phone_numbers": [WITH_FALLBACK],
            "instructions": "x", "greeting": "Hello", "voice": "marin", "language": "en",
            "fallback_number": "+15005550008"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let other = warmline::domain::ClientId::new(
        resp.json::<serde_json::Value>().await.unwrap()["id"]
            .as_i64()
            .unwrap() as i32,
    );

    // Ringing: the first call holds the client's one place.
    let first = call_from(&gw, "+14155550101", CLIENT_NUMBER).await;
    assert!(is_stream(&first));
    let busy = call_from(&gw, "+14155550102", CLIENT_NUMBER).await;
    assert_eq!(
        busy.twiml,
        Twiml::SayHangup {
            text: warmline::lines::text(warmline::lines::Line::Busy, "en").into()
        }
    );
    let record = gw.ended_call(&busy.call_sid).await;
    assert_eq!(record.call.status, "busy");
    assert_eq!(gw.fake.connections_opened(), 1, "nothing opened for it");

    // The caller hung up while it rang: the place comes back.
    assert_eq!(
        gw.twilio
            .status_callback(&first.call_sid, "canceled")
            .await
            .unwrap(),
        204
    );
    let again = call_from(&gw, "+14155550103", CLIENT_NUMBER).await;
    assert!(is_stream(&again), "{:?}", again.twiml);

    // Live: while the other client's call streams, its next call is put through to its
    // fallback number.
    let second = call_from(&gw, "+14155550104", WITH_FALLBACK).await;
    assert!(is_stream(&second), "{:?}", second.twiml);
    let live = gw.stream_in_background(
        &second,
        vec![
            Step::WaitForAgentQuiet(WAIT),
            Step::Silence(Duration::from_secs(3)),
            Step::HangUp,
        ],
    );
    let sid = warmline::domain::CallSid::parse(&second.call_sid).unwrap();
    for _ in 0..200 {
        if !gw.app.state.registry.contains(&sid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !gw.app.state.registry.contains(&sid),
        "the stream claimed the call"
    );
    let put_through = call_from(&gw, "+14155550105", WITH_FALLBACK).await;
    assert_eq!(
        put_through.twiml,
        Twiml::Dial {
            say: Some(warmline::lines::text(warmline::lines::Line::PuttingThrough, "en").into()),
            number: "+15005550008".into()
        }
    );
    assert_eq!(
        gw.ended_call(&put_through.call_sid).await.call.status,
        "busy"
    );
    assert_eq!(
        gw.metric("warmline_rate_limited_total{limit=\"client_live_calls\"}"),
        2.0
    );
    assert_eq!(
        gw.metric("warmline_webhook_duration_seconds_count{outcome=\"busy\"}"),
        2.0
    );

    // Once the live call ended, the client's place is free again.
    live.await.unwrap();
    let mut freed = false;
    for _ in 0..100 {
        if gw.app.state.limits.live_calls.held(&other) == 0 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(freed, "the live call gave its place back");
    let after = call_from(&gw, "+14155550106", WITH_FALLBACK).await;
    assert!(is_stream(&after), "{:?}", after.twiml);
    gw.app.shutdown().await;
}

#[tokio::test]
async fn beyond_its_live_call_cap_a_client_s_call_is_put_through_or_told_the_lines_are_busy_sqlite()
{
    live_calls_are_capped_per_client(Backend::Sqlite).await;
}

#[tokio::test]
async fn beyond_its_live_call_cap_a_client_s_call_is_put_through_or_told_the_lines_are_busy_postgres()
 {
    if crate::support::postgres_skipped() {
        eprintln!("TEST_POSTGRES=skip: Postgres variant skipped");
        return;
    }
    live_calls_are_capped_per_client(Backend::Postgres).await;
}

/// A client whose connections come from `local` (any 127/8 address reaches loopback on Linux).
fn client_from(local: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(local.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

#[tokio::test]
async fn an_address_guessing_admin_tokens_is_slowed_then_refused_even_with_the_right_token() {
    let app = spawn_app(
        Backend::Sqlite,
        // One attempt back every 12 s: the guesses below fit that with room on a busy machine.
        "[limits]\nadmin_bad_tokens_per_minute = 5\nadmin_bad_token_delay_ms = 200\n",
    )
    .await;
    let url = app.url("/admin/api/v1/clients");
    let guesser = client_from("127.0.0.1");
    for i in 0..5 {
        let t = std::time::Instant::now();
        let resp = guesser
            .get(&url)
            .bearer_auth(format!("guess-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "guess {i}");
        // Held back at least the delay (a lower bound: no timing target).
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "guess {i} answered at once"
        );
    }
    // The sixth: 429 with Retry-After, before the token is looked at.
    let limited = guesser
        .get(&url)
        .bearer_auth("guess-5")
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=12).contains(&retry_after), "{retry_after}");
    // Locked out: the right token from this address is refused too (else the guessing would
    // go on at full speed, the right guess told apart by its answer).
    let right = guesser
        .get(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        app.state
            .metrics
            .encode()
            .contains("warmline_rate_limited_total{limit=\"admin_bad_token\"} 2")
    );

    // Another address is not affected, whether its token is right or wrong.
    let operator = client_from("127.0.0.2");
    let ok = operator
        .get(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let wrong = operator.get(&url).bearer_auth("typo").send().await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    // Once the window allows, the locked-out address gets in with the right token.
    tokio::time::sleep(Duration::from_secs(retry_after) + Duration::from_millis(200)).await;
    let back = guesser
        .get(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(back.status(), StatusCode::OK);
    app.shutdown().await;
}
