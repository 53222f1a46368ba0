//! `warmline loadgen --chaos` on a small run (issue 11): callers hanging up at every moment,
//! Realtime refusing, hanging, dropping and expiring sessions, the database paused, SIGTERM
//! with calls live. Nothing may leak or be lost, on SQLite and on Postgres. (The figures of a
//! full run belong to the README, not to a test.)

use std::time::Duration;

use sim::realtime::Faults;
use warmline::loadgen::chaos::{ChaosOptions, ChaosReport, run};

use crate::support::postgres_skipped;

async fn small_run(database: Option<String>) -> ChaosReport {
    let report = run(ChaosOptions {
        calls: 24,
        ramp: Duration::from_secs(6),
        seed: 7,
        database,
        // Longer than SQLite's busy timeout (10 s), so writes fail and are retried.
        db_pause: Duration::from_secs(12),
        drain_calls: 4,
        drain_secs: 3,
        // Faults far more often than the command line's default, so a small run meets each.
        faults: Some(Faults {
            seed: 7,
            refuse: 0.1,
            hang: 0.1,
            drop: 0.2,
            expire: 0.2,
            window: (Duration::from_millis(500), Duration::from_secs(6)),
        }),
        json: true,
        gateway_bin: Some(env!("CARGO_BIN_EXE_warmline").into()),
        ..ChaosOptions::default()
    })
    .await
    .unwrap();
    // Nothing leaked, nothing lost, nothing twice, a clean exit after the drain.
    assert!(report.clean(), "{report:#?}");
    assert_eq!(report.leaked_sockets, 0);
    assert_eq!(
        (
            report.records.missing,
            report.records.unfinished,
            report.records.duplicates
        ),
        (0, 0, 0)
    );
    assert_eq!(report.exit_code, Some(0));
    assert!(report.readyz_503_on_sigterm, "{report:#?}");
    // Every call is accounted for: rang out or streamed, and every stream ended with its
    // after-stream answer or the caller's own hang-up.
    let c = &report.calls;
    assert_eq!(
        c.started,
        24 + 4 + 2,
        "the calls, the drained ones, two during the drain"
    );
    assert_eq!(c.webhook_failed, 0, "{c:?}");
    assert_eq!(c.started, c.hung_up_ringing + c.streamed, "{c:?}");
    assert_eq!(c.completed, c.streamed, "{c:?}");
    // The faults really happened, and the calls they hit were carried on.
    let f = report.realtime_faults;
    assert!(f.refused + f.hung > 0 && f.dropped + f.expired > 0, "{f:?}");
    assert!(
        report.reconnects.get("ok").copied().unwrap_or(0.0) > 0.0,
        "{report:#?}"
    );
    assert!(report.db_paused_secs >= 12.0);
    assert!(
        report.writes_retried > 0.0,
        "the pause held writes up: {report:#?}"
    );
    // At the drain deadline the calls still live were handed to the fallback number.
    let drained = report
        .records
        .by_end_reason
        .get("drained")
        .copied()
        .unwrap_or(0);
    assert!(drained >= 2, "{:?}", report.records.by_end_reason);
    assert!(c.transferred >= drained, "{c:?}");
    report
}

#[tokio::test]
async fn a_chaos_run_on_sqlite_loses_nothing() {
    let r = small_run(None).await;
    assert_eq!(r.database, "sqlite");
}

#[tokio::test]
async fn a_chaos_run_on_postgres_loses_nothing() {
    if postgres_skipped() {
        return;
    }
    let url = std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let r = small_run(Some(url)).await;
    assert_eq!(r.database, "postgres");
}
