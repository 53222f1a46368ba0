//! The pre-warmed call path (issue 3) through real sockets: voice webhook → warm Realtime
//! session on the fake → TwiML; signatures; the ring-delay budget when Realtime hangs; the
//! status callback and the reaper closing unclaimed sessions; retries and the session cap;
//! bad input.

use std::time::Duration;

use serde_json::Value;
use sim::{
    realtime::{FakeConfig, Mode},
    twilio::{CallSpec, Signing, Twiml},
};

use crate::support::{AUTH_TOKEN, CALLER, CLIENT_NUMBER, gateway};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_signed_webhook_warms_one_session_and_answers_with_a_stream() {
    let gw = gateway(FakeConfig::instant(), "").await;
    let placed = gw.place_call().await;
    assert_eq!(placed.status, 200);
    assert!(
        placed.content_type.starts_with("text/xml"),
        "{}",
        placed.content_type
    );
    let Twiml::Stream {
        url,
        action,
        parameters,
    } = &placed.twiml
    else {
        panic!("expected <Connect><Stream>, got {}", placed.body)
    };
    assert_eq!(
        url,
        &format!("{}/twilio/media", gw.app.base.replace("http://", "ws://"))
    );
    assert_eq!(
        action.as_deref(),
        Some(format!("{}/twilio/after-stream", gw.app.base).as_str())
    );
    assert!(parameters["token"].starts_with("v1."));

    // Ready means the greeting's audio was already buffered when the TwiML went out.
    let conns = gw.fake.connections();
    assert_eq!(conns.len(), 1, "exactly one Realtime connection");
    let c = &conns[0];
    assert_eq!(c.model.as_deref(), Some("gpt-realtime-2"));
    assert!(c.authorized && !c.beta_header);
    let updates = c.of_type("session.update");
    assert_eq!(updates.len(), 1);
    let update: Value = serde_json::from_str(&updates[0].raw).unwrap();
    assert_eq!(update["session"]["type"], "realtime");
    assert_eq!(
        update["session"]["audio"]["output"]["format"]["type"],
        "audio/pcmu"
    );
    let instructions = update["session"]["instructions"].as_str().unwrap();
    assert!(
        instructions.contains("Do you take walk-ins?"),
        "FAQs are in the prompt"
    );
    assert!(instructions.contains("first call"));
    assert_eq!(c.of_type("response.create").len(), 1);
    assert!(
        gw.app
            .state
            .registry
            .contains(&warmline::domain::CallSid::parse(&placed.call_sid).unwrap())
    );
    assert_eq!(gw.metric("warmline_warm_sessions "), 1.0);
    assert!(gw.metric("warmline_webhook_duration_seconds_count{outcome=\"warm\"}") >= 1.0);

    // The caller hangs up while it rings: the status callback closes the session.
    assert_eq!(
        gw.twilio
            .status_callback(&placed.call_sid, "canceled")
            .await
            .unwrap(),
        204
    );
    assert!(
        gw.fake.wait_open(0, WAIT).await,
        "the warm socket was closed"
    );
    let call = gw.ended_call(&placed.call_sid).await;
    assert_eq!(call.call.status, "canceled");
    assert!(call.call.webhook_ms.is_some());
    gw.app.shutdown().await;
}

#[tokio::test]
async fn forged_or_missing_signatures_get_403_and_open_nothing() {
    let gw = gateway(FakeConfig::instant(), "").await;
    for signing in [Signing::Forged, Signing::Missing] {
        let mut spec = CallSpec::new(CALLER, CLIENT_NUMBER);
        spec.signing = signing;
        let placed = gw.twilio.place_call(&spec).await.unwrap();
        assert_eq!(placed.status, 403, "{signing:?}");
    }
    let resp = gw
        .app
        .http
        .post(gw.app.url("/twilio/status"))
        .form(&[("CallSid", "CA1"), ("CallStatus", "canceled")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // Twilio signs the URL as configured, query string included.
    let form = [("CallSid", "CA1"), ("CallStatus", "canceled")];
    let signed_url = gw.app.url("/twilio/status?tenant=a%20b");
    let sig = sim::twilio::sign(AUTH_TOKEN, &signed_url, &form);
    for (url, expected) in [
        (signed_url.clone(), 204),
        (gw.app.url("/twilio/status"), 403),
    ] {
        let resp = gw
            .app
            .http
            .post(&url)
            .header("X-Twilio-Signature", &sig)
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), expected, "{url}");
    }
    assert_eq!(
        gw.fake.connection_attempts(),
        0,
        "no Realtime connection was attempted"
    );
    assert!(gw.metric("warmline_webhook_duration_seconds_count{outcome=\"forbidden\"}") >= 2.0);
    gw.app.shutdown().await;
}

#[tokio::test]
async fn with_realtime_hanging_the_webhook_still_answers_and_the_stream_goes_cold_later() {
    let mut cfg = FakeConfig::instant();
    cfg.mode = Mode::Hang;
    let gw = gateway(
        cfg,
        "[prewarm]\nring_max_ms = 300\n[openai]\nconnect_timeout_ms = 5000\n",
    )
    .await;
    let placed = gw.place_call().await;
    assert_eq!(placed.status, 200);
    assert!(
        matches!(placed.twiml, Twiml::Stream { .. }),
        "valid TwiML even though Realtime hangs: {}",
        placed.body
    );
    assert_eq!(gw.fake.connection_attempts(), 1);
    assert!(
        gw.metric("warmline_webhook_duration_seconds_count{outcome=\"warm_not_ready\"}") >= 1.0
    );
    assert!(gw.metric("warmline_prewarm_duration_seconds_count{outcome=\"timeout\"}") >= 1.0);
    gw.twilio
        .status_callback(&placed.call_sid, "no-answer")
        .await
        .unwrap();
    gw.app.shutdown().await;
}

#[tokio::test]
async fn with_realtime_down_the_webhook_answers_at_once() {
    let mut cfg = FakeConfig::instant();
    cfg.mode = Mode::Down;
    let gw = gateway(cfg, "[prewarm]\nring_max_ms = 10000\n").await;
    let placed = gw.place_call().await;
    assert!(matches!(placed.twiml, Twiml::Stream { .. }));
    // Not a timing bound: the outcome says it did not wait for ring_max.
    assert!(gw.metric("warmline_prewarm_duration_seconds_count{outcome=\"error\"}") >= 1.0);
    assert!(placed.webhook_time < Duration::from_millis(10000));
    gw.app.shutdown().await;
}

#[tokio::test]
async fn an_unclaimed_session_is_reaped_after_the_ttl() {
    let gw = gateway(
        FakeConfig::instant(),
        "[prewarm]\nttl_secs = 1\nring_max_ms = 500\n",
    )
    .await;
    let placed = gw.place_call().await;
    assert!(matches!(placed.twiml, Twiml::Stream { .. }));
    assert_eq!(gw.fake.open_connections(), 1);
    assert!(
        gw.fake.wait_open(0, WAIT).await,
        "the reaper closed the warm socket"
    );
    let call = gw.ended_call(&placed.call_sid).await;
    assert_eq!(call.call.status, "unanswered");
    assert!(call.call.end_reason.unwrap().starts_with("reaped"));
    assert_eq!(gw.metric("warmline_warm_sessions_reaped_total"), 1.0);
    assert_eq!(gw.metric("warmline_warm_sessions "), 0.0);
    gw.app.shutdown().await;
}

#[tokio::test]
async fn a_retried_webhook_reuses_the_session_and_the_cap_sends_the_excess_cold() {
    let gw = gateway(FakeConfig::instant(), "[prewarm]\nmax_sessions = 1\n").await;
    let mut spec = CallSpec::new(CALLER, CLIENT_NUMBER);
    spec.call_sid = Some(sim::twilio::sid("CA"));
    let first = gw.twilio.place_call(&spec).await.unwrap();
    let retry = gw.twilio.place_call(&spec).await.unwrap();
    assert!(matches!(retry.twiml, Twiml::Stream { .. }));
    assert_eq!(
        gw.fake.connections_opened(),
        1,
        "the retry opened no second session"
    );
    let other = gw
        .twilio
        .place_call(&CallSpec::new("+14155550199", CLIENT_NUMBER))
        .await
        .unwrap();
    assert!(
        matches!(other.twiml, Twiml::Stream { .. }),
        "over the cap the call still gets TwiML"
    );
    assert_eq!(
        gw.fake.connections_opened(),
        1,
        "over the cap: cold, no session opened"
    );
    assert_eq!(
        gw.metric("warmline_cold_sessions_total{reason=\"cap\"}"),
        1.0
    );
    for sid in [&first.call_sid, &other.call_sid] {
        gw.twilio.status_callback(sid, "canceled").await.unwrap();
    }
    assert!(gw.fake.wait_open(0, WAIT).await);
    gw.app.shutdown().await;
}

#[tokio::test]
async fn policy_known_callers_warms_only_returning_callers() {
    let gw = gateway(
        FakeConfig::instant(),
        "[prewarm]\npolicy = \"known_callers\"\n",
    )
    .await;
    let placed = gw.place_call().await;
    assert!(matches!(placed.twiml, Twiml::Stream { .. }));
    assert_eq!(
        gw.fake.connection_attempts(),
        0,
        "a first-time caller is not warmed"
    );
    assert_eq!(
        gw.metric("warmline_cold_sessions_total{reason=\"policy\"}"),
        1.0
    );
    gw.app.shutdown().await;
}

#[tokio::test]
async fn unknown_numbers_malformed_forms_and_oversized_bodies_are_handled() {
    let gw = gateway(FakeConfig::instant(), "").await;
    let unknown = gw
        .twilio
        .place_call(&CallSpec::new(CALLER, "+15005550999"))
        .await
        .unwrap();
    assert_eq!(unknown.status, 200);
    assert!(
        matches!(&unknown.twiml, Twiml::SayHangup { text } if text.contains("not in service")),
        "{}",
        unknown.body
    );

    // Signed, but without a CallSid or To.
    let url = format!("{}/twilio/voice", gw.app.base);
    let params = [("AccountSid", "AC1"), ("From", CALLER)];
    let sig = sim::twilio::sign(crate::support::AUTH_TOKEN, &url, &params);
    let resp = gw
        .app
        .http
        .post(&url)
        .header("X-Twilio-Signature", sig)
        .form(&params)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    assert!(
        matches!(sim::twilio::parse_twiml(&body), Twiml::SayHangup { .. }),
        "{body}"
    );

    let big = "x".repeat(200_000);
    let resp = gw
        .app
        .http
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("CallSid={big}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);

    // Nothing above opened a session, and the gateway still serves calls.
    assert_eq!(gw.fake.connection_attempts(), 0);
    let ok = gw.place_call().await;
    assert!(matches!(ok.twiml, Twiml::Stream { .. }));
    gw.twilio
        .status_callback(&ok.call_sid, "canceled")
        .await
        .unwrap();
    gw.app.shutdown().await;
}

#[tokio::test]
async fn behind_a_load_balancer_webhooks_signed_over_its_url_are_accepted() {
    let gw = gateway(
        FakeConfig::instant(),
        "[twilio]\nwebhook_base_url = \"https://voice.example.com\"\n",
    )
    .await;
    let form = [("CallSid", "CA1"), ("CallStatus", "canceled")];
    for (signed_over, expected) in [
        ("https://voice.example.com/twilio/status", 204),
        (&*gw.app.url("/twilio/status"), 204),
        ("https://other.example.com/twilio/status", 403),
    ] {
        let resp = gw
            .app
            .http
            .post(gw.app.url("/twilio/status"))
            .header(
                "X-Twilio-Signature",
                sim::twilio::sign(AUTH_TOKEN, signed_over, &form),
            )
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), expected, "signed over {signed_over}");
    }
    gw.app.shutdown().await;
}

#[tokio::test]
async fn a_refused_session_configuration_fails_the_warm_up_at_once() {
    let mut cfg = FakeConfig::instant();
    cfg.reject_session_update = true;
    let gw = gateway(cfg, "[prewarm]\nring_max_ms = 10000\nttl_secs = 30\n").await;
    let placed = gw.place_call().await;
    assert!(
        matches!(placed.twiml, Twiml::Stream { .. }),
        "{}",
        placed.body
    );
    // Not a timing bound: the outcome says the webhook stopped waiting because the session
    // failed, not because ring_max_ms ran out.
    assert_eq!(
        gw.metric("warmline_prewarm_duration_seconds_count{outcome=\"error\"}"),
        1.0
    );
    assert_eq!(
        gw.metric("warmline_prewarm_duration_seconds_count{outcome=\"timeout\"}"),
        0.0
    );
    assert!(
        gw.fake.wait_open(0, WAIT).await,
        "the refused socket was closed"
    );
    gw.twilio
        .status_callback(&placed.call_sid, "canceled")
        .await
        .unwrap();
    gw.app.shutdown().await;
}
