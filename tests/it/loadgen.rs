//! The load generator's own correctness on a tiny run (the figures themselves belong to the
//! benchmark, not to tests): every call completes, warm and cold are both measured, no frame is
//! lost, and with Realtime hanging the webhook waits for `ring_max_ms` and then answers. The
//! greeting modes (`cached,generated` by default) are measured side by side: the cached client's
//! calls hear the greeting the warm-up call left in the cache, and its abandoned calls cost no
//! greeting.

use std::time::Duration;

use warmline::{
    engine::EngineKind,
    loadgen::{LoadOptions, run},
};

#[tokio::test]
async fn a_small_load_run_measures_warm_cold_relay_and_the_webhook_deadline() {
    let report = run(LoadOptions {
        calls: 4,
        // The question at 5 s, after the 4.4 s greeting, answered before the call ends.
        duration: Duration::from_secs(10),
        ramp: Duration::from_millis(400),
        cold_every: 2,
        hang_calls: 2,
        ring_max_ms: 1500,
        abandon_calls: 2,
        json: true,
        gateway_bin: Some(env!("CARGO_BIN_EXE_warmline").into()),
        ..LoadOptions::default()
    })
    .await
    .unwrap();
    assert_eq!(report.calls_completed, 4, "{report:?}");
    assert_eq!((report.ttfa_warm.n, report.ttfa_cold.n), (2, 2));
    assert_eq!(report.ring_min_ms, 0);
    // One warm and one cold call per mode (round-robin, every 2nd call of a mode cold).
    let modes: Vec<&str> = report.modes.iter().map(|m| m.mode.as_str()).collect();
    assert_eq!(modes, ["cached", "generated"]);
    let (cached, generated) = (&report.modes[0], &report.modes[1]);
    for m in &report.modes {
        assert_eq!(
            (m.calls, m.calls_completed, m.dial_warm.n, m.dial_cold.n),
            (2, 2, 1, 1),
            "{m:?}"
        );
    }
    assert_eq!(cached.cache_filled, ["warm", "cold"]);
    assert!(generated.cache_filled.is_empty());
    // A cold call generating its greeting waits for the session: the warm one does not. (With a
    // cached greeting, cold calls do not wait either.)
    assert!(
        generated.ttfa_warm.p50_ms < generated.ttfa_cold.p50_ms,
        "warm beats cold"
    );
    // The cached greeting plays without waiting for the model, warm or cold.
    assert!(
        cached.dial_warm.max_ms < generated.dial_warm.p50_ms
            && cached.dial_cold.max_ms < generated.dial_cold.p50_ms,
        "cached {:?} / {:?} vs generated {:?} / {:?}",
        cached.dial_warm,
        cached.dial_cold,
        generated.dial_warm,
        generated.dial_cold
    );
    // The gateway agrees: the load's cached calls (the warm-up and probe calls left out) played
    // the greeting from the cache, the generated ones asked the model.
    assert_eq!(report.gateway_greetings_cached, 2.0);
    assert_eq!(report.gateway_greetings_generated, 2.0);
    assert_eq!(report.gateway_dial_cached.n, 2.0);
    // Abandoned calls: the cached greeting costs nothing; each generated one is wasted.
    for m in &report.modes {
        assert_eq!((m.abandon.calls, m.abandon.failed), (2, 0), "{m:?}");
    }
    assert_eq!(cached.abandon.webhook_outcomes.cached, 2.0);
    assert_eq!(
        (
            cached.abandon.greetings_generated,
            cached.abandon.greetings_unheard
        ),
        (0.0, 0.0)
    );
    assert_eq!(generated.abandon.webhook_outcomes.cached, 0.0);
    assert_eq!(generated.abandon.greetings_unheard, 2.0);
    let (sent, received) = report.inbound_frames;
    assert!(
        sent > 100 && received == sent,
        "caller frames all relayed: {sent}/{received}"
    );
    assert!(report.relay_inbound.n > 100 && report.relay_outbound.n > 10);
    assert_eq!(report.webhook_hanging.n, 2);
    assert!(
        report.webhook_hanging.p50_ms >= 1500.0,
        "the webhook waited for ring_max_ms"
    );
    assert_eq!(
        report.gateway_ttfa_warm.0, 2.0,
        "the gateway's histogram counted the same calls"
    );
    assert!(report.gateway_rss_idle_kib > 0);
    // The gateway's own counters agree with what the fakes saw.
    assert_eq!(report.gateway_frames_relayed.0, received as f64);
    // CPU per relayed frame over the steady window, and the whole load split per call.
    let (w_in, w_out) = report.steady_window.frames_relayed;
    assert!(w_in > 0.0 && w_out >= 0.0, "{:?}", report.steady_window);
    let cpu = &report.gateway_cpu;
    assert!(
        cpu.us_per_frame.is_some_and(|us| us > 0.0) && cpu.run_secs > 0.0,
        "{cpu:?}"
    );
    assert_eq!(
        cpu.run_frames,
        report.gateway_frames_relayed.0 + report.gateway_frames_relayed.1
    );
    assert!(cpu.per_10s_call_ms.is_some() && cpu.frames_per_10s_call > 250.0);
    assert!(
        !report.gateway_affinity.cpus.is_empty() && report.gateway_affinity.pinned_with.is_none()
    );
    assert_eq!(report.frames_lost, 0);
    // One question, at half the call, answered on every call.
    assert_eq!(report.answers.len(), 1);
    assert_eq!(report.answers[0].asked_at_secs, 5.0);
    assert_eq!(report.answers[0].delay.n, 4, "{:?}", report.answers);
    let (warm, not_ready, cold) = report.gateway_webhook_outcomes;
    assert_eq!(
        (warm + not_ready, report.gateway_webhook_cached, cold),
        (1.0, 1.0, 2.0),
        "one call warmed, one answered at once for its cached greeting, two cold"
    );
}

/// The same run on GPT-Live (the fake GPT-Live server): the warm calls hear the greeting the
/// session made while the phone rang, every caller frame reaches the model, the speech it sends
/// back reaches the caller, the question is answered, and the gateway fed silence (the
/// ringing, the cold calls' opening) that the session timeline counts. The calls are recorded
/// (`--record`).
#[tokio::test]
async fn a_small_load_run_on_gpt_live_measures_the_same_and_the_silence_fed() {
    let report = run(LoadOptions {
        calls: 4,
        // The greeting lasts 4.4 s, the question 2 s: asked at 5 s, answered before the end.
        duration: Duration::from_secs(10),
        ramp: Duration::from_millis(400),
        cold_every: 2,
        hang_calls: 2,
        ring_max_ms: 1500,
        abandon_calls: 0,
        engine: EngineKind::Live,
        record: true,
        json: true,
        gateway_bin: Some(env!("CARGO_BIN_EXE_warmline").into()),
        ..LoadOptions::default()
    })
    .await
    .unwrap();
    assert_eq!(report.engine, "live");
    assert_eq!(report.calls_completed, 4, "{report:?}");
    assert_eq!((report.ttfa_warm.n, report.ttfa_cold.n), (2, 2));
    let (cached, generated) = (&report.modes[0], &report.modes[1]);
    assert_eq!(cached.cache_filled, ["warm", "cold"]);
    assert!(
        generated.ttfa_warm.p50_ms < generated.ttfa_cold.p50_ms,
        "warm beats cold: {:?} vs {:?}",
        generated.ttfa_warm,
        generated.ttfa_cold
    );
    assert_eq!(report.gateway_greetings_cached, 2.0);
    assert_eq!(report.gateway_greetings_generated, 2.0);
    // The question answered on every call.
    let asked: Vec<(f64, usize)> = report
        .answers
        .iter()
        .map(|a| (a.asked_at_secs, a.delay.n))
        .collect();
    assert_eq!(asked, [(5.0, 4)], "{:?}", report.answers);
    let (sent, received) = report.inbound_frames;
    assert!(
        sent > 100 && received == sent,
        "caller frames all relayed: {sent}/{received}"
    );
    // The speech the fake sent after the call was relaying reached the caller, timed.
    let (out_sent, out_received) = report.outbound_frames;
    assert!(
        out_sent > 10 && out_received == out_sent,
        "{out_sent}/{out_received}"
    );
    assert!(report.relay_inbound.n > 100 && report.relay_outbound.n > 10);
    assert_eq!(report.frames_lost, 0);
    assert_eq!(report.webhook_hanging.n, 2);
    assert!(report.webhook_hanging.p50_ms >= 1500.0);
    // The model's timeline: the caller audio relayed, and silence fed besides it.
    let caller_secs = report.gateway_frames_relayed.0 * 0.02;
    assert!(
        report.engine_session_secs > caller_secs && report.engine_prewarm_secs > 0.0,
        "timeline {} s, ringing {} s, caller audio {caller_secs} s",
        report.engine_session_secs,
        report.engine_prewarm_secs
    );
    assert!(report.gateway_cpu.us_per_frame.is_some_and(|us| us > 0.0));
    // --record: every call of the load was recorded, at the size the README gives.
    let rec = report.recordings.as_ref().expect("--record reports");
    assert_eq!((rec.ready, rec.failed), (4.0, 0.0), "{rec:?}");
    assert!(
        rec.kb_per_call_minute > 50.0 && rec.kb_per_call_minute < 120.0,
        "{rec:?}"
    );
}

/// The chat benchmark on a tiny run, over HTTP/1.1 and over HTTP/2 (`text.http2`, h2c to the
/// fake): every stream ends with its answer, no delta is lost, every delta is timed, and every
/// request to the model's API went over the version asked for.
#[tokio::test]
async fn a_small_chat_run_times_every_delta_and_loses_none() {
    for http2 in [false, true] {
        small_chat_run(http2).await;
    }
}

async fn small_chat_run(http2: bool) {
    let report = warmline::loadgen::chat::run(warmline::loadgen::chat::ChatOptions {
        streams: 20,
        deltas: 10,
        interval: Duration::from_millis(20),
        ramp: Duration::from_millis(200),
        json: true,
        gateway_bin: Some(env!("CARGO_BIN_EXE_warmline").into()),
        http2,
        ..Default::default()
    })
    .await
    .unwrap();
    // A conversation is made and an answer asked for per stream.
    let (h1, h2) = report.upstream_requests;
    match http2 {
        false => assert!(h1 >= 40 && h2 == 0, "{report:?}"),
        true => assert!(h1 == 0 && h2 >= 40, "{report:?}"),
    }
    assert_eq!(
        (
            report.completed,
            report.failed,
            report.deltas_lost,
            report.bad_answers
        ),
        (20, 0, 0, 0),
        "{report:?}"
    );
    assert_eq!(report.delta_delay.n, 200);
    // The gateway timed each of the load's deltas itself (the warm-up's left out).
    assert_eq!(
        report.gateway_delta_delay.as_ref().map(|d| d.n),
        Some(200.0),
        "{report:?}"
    );
    assert!(report.rss_idle_kib > 0);
}
