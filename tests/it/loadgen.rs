//! The load generator's own correctness on a tiny run (the figures themselves belong to the
//! benchmark, not to tests): every call completes, warm and cold are both measured, no frame is
//! lost, and with Realtime hanging the webhook waits for `ring_max_ms` and then answers.

use std::time::Duration;

use warmline::loadgen::{LoadOptions, run};

#[tokio::test]
async fn a_small_load_run_measures_warm_cold_relay_and_the_webhook_deadline() {
    let report = run(LoadOptions {
        calls: 4,
        duration: Duration::from_secs(4),
        ramp: Duration::from_millis(400),
        cold_every: 2,
        hang_calls: 2,
        ring_max_ms: 1500,
        json: true,
        gateway_bin: Some(env!("CARGO_BIN_EXE_warmline").into()),
        ..LoadOptions::default()
    })
    .await
    .unwrap();
    assert_eq!(report.calls_completed, 4, "{report:?}");
    assert_eq!((report.ttfa_warm.n, report.ttfa_cold.n), (2, 2));
    assert!(
        report.ttfa_warm.p50_ms < report.ttfa_cold.p50_ms,
        "warm beats cold"
    );
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
    let (warm, not_ready, cold) = report.gateway_webhook_outcomes;
    assert_eq!(
        (warm + not_ready, cold),
        (2.0, 2.0),
        "two calls warmed, two cold"
    );
}
