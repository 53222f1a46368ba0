//! Deadlines for idle peers (issue 12): a media socket that upgrades and never sends `start` is
//! closed at `call.start_timeout_secs`; a Twilio leg that goes quiet after `start` ends the call
//! as `twilio_silent` at `call.media_timeout_secs`, saved, its Realtime session closed.

use std::time::Duration;

use futures_util::StreamExt;
use sim::{
    realtime::FakeConfig,
    twilio::{Step, Twiml},
};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::{AUTH_TOKEN, gateway};

const TIMEOUTS: &str = "[call]\nstart_timeout_secs = 1\nmedia_timeout_secs = 1\n";

#[tokio::test]
async fn a_socket_that_never_sends_start_is_closed_at_the_limit() {
    let gw = gateway(FakeConfig::instant(), TIMEOUTS).await;
    let placed = gw.place_call().await;
    let Twiml::Stream { url, .. } = &placed.twiml else {
        panic!("{:?}", placed.twiml)
    };
    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut().insert(
        "x-twilio-signature",
        sim::twilio::sign(AUTH_TOKEN, url, &[]).parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    // Upgraded, then nothing: the gateway closes the socket (well before this test's bound).
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(m)) = ws.next().await {
            if m.is_close() {
                break;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the idle socket was never closed");
    gw.app.shutdown().await;
}

#[tokio::test]
async fn a_twilio_leg_that_goes_quiet_ends_the_call_as_twilio_silent() {
    let gw = gateway(FakeConfig::instant(), TIMEOUTS).await;
    let placed = gw.place_call().await;
    let report = gw
        .stream(
            &placed,
            &[
                Step::WaitForAgentQuiet(Duration::from_secs(20)),
                Step::Pause(Duration::from_secs(10)),
                Step::HangUp,
            ],
        )
        .await;
    assert_eq!(report.closed_by.as_deref(), Some("gateway"), "{report:?}");
    let saved = gw.ended_call(&placed.call_sid).await;
    assert_eq!(saved.call.end_reason.as_deref(), Some("twilio_silent"));
    assert!(saved.call.recorded);
    assert!(
        gw.fake.wait_open(0, Duration::from_secs(5)).await,
        "its Realtime session closed"
    );
    assert_eq!(
        gw.metric("warmline_calls_total{reason=\"twilio_silent\"}"),
        1.0
    );
    gw.app.shutdown().await;
}
