//! Several instances on one Postgres (README "Several instances"; src/fleet.rs): two gateway
//! processes, each with its own `public_url`, one shared `twilio.webhook_base_url` and one
//! shared `twilio.stream_token_secret`, on one fresh database, against one fake Realtime server.
//! - both start at once on an empty database, and both migrate without error (the advisory lock);
//! - a call warmed on A whose status callback (`canceled`) reaches B is closed on A as
//!   `canceled` (not reaped later);
//! - a retried voice webhook that reaches B answers with A's stream, and A's warm session takes
//!   the call: one Realtime session for the call, fleet-wide;
//! - when A is gone, the retry on B takes the call over and warms it there.

use std::{path::PathBuf, process::Stdio, time::Duration};

use sim::twilio::{CallSpec, Step, TwilioSim, Twiml};
use warmline::store::calls;

use crate::support::{
    ADMIN_TOKEN, AUTH_TOKEN, CALLER, CLIENT_NUMBER, drop_postgres, fresh_postgres, postgres_skipped,
};

/// One gateway process.
struct Instance {
    child: tokio::process::Child,
    base: String,
    log: PathBuf,
    http: reqwest::Client,
}

impl Instance {
    /// Starts `warmline serve` on a free port against `db_url`; does not wait for it.
    fn spawn(db_url: &str, shared: &str, fake_url: &str, dir: &std::path::Path) -> (Self, u16) {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let base = format!("http://127.0.0.1:{port}");
        let shared = if shared.is_empty() { &base } else { shared };
        let log = dir.join(format!("gateway-{port}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_warmline"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("WARMLINE_PUBLIC_URL", &base)
            .env("WARMLINE_SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env("WARMLINE_DATABASE__URL", db_url)
            .env(
                "WARMLINE_STORE__SPOOL_DIR",
                dir.join(format!("spool-{port}")),
            )
            .env("WARMLINE_TWILIO__AUTH_TOKEN", AUTH_TOKEN)
            .env("WARMLINE_TWILIO__WEBHOOK_BASE_URL", shared)
            .env(
                "WARMLINE_TWILIO__STREAM_TOKEN_SECRET",
                "one-stream-token-secret-for-the-whole-fleet",
            )
            .env("WARMLINE_ADMIN__TOKEN", ADMIN_TOKEN)
            .env("WARMLINE_OPENAI__API_KEY", "sk-test-key")
            .env("WARMLINE_OPENAI__REALTIME_URL", fake_url)
            .env("WARMLINE_POST_CALL__ENABLED", "false")
            // Long enough that a session closed within the test was not reaped.
            .env("WARMLINE_PREWARM__TTL_SECS", "120")
            .env("WARMLINE_LOG__LEVEL", "info")
            .env("WARMLINE_LOG__FORMAT", "json")
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .expect("starting warmline serve");
        (
            Self {
                child,
                base,
                log,
                http: reqwest::Client::new(),
            },
            port,
        )
    }

    /// Waits until `/readyz` answers 200; panics with the log if the process exits first.
    async fn ready(&mut self) {
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "gateway exited ({status}) before ready:\n{}",
                    self.log_text()
                );
            }
            if let Ok(r) = self.http.get(format!("{}/readyz", self.base)).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("gateway never ready:\n{}", self.log_text());
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn ws(&self) -> String {
        format!("{}/twilio/media", self.base.replacen("http", "ws", 1))
    }

    fn twilio(&self) -> TwilioSim {
        TwilioSim::new(&self.base, AUTH_TOKEN)
    }

    /// A new call from [`CALLER`] whose voice webhook reaches this instance.
    async fn place(&self) -> sim::twilio::PlacedCall {
        self.twilio()
            .place_call(&CallSpec::new(CALLER, CLIENT_NUMBER))
            .await
            .unwrap()
    }

    /// Twilio retrying the voice webhook of call `sid` here.
    async fn retry(&self, sid: &str) -> sim::twilio::PlacedCall {
        self.twilio()
            .place_call(&CallSpec {
                call_sid: Some(sid.to_string()),
                ..CallSpec::new(CALLER, CLIENT_NUMBER)
            })
            .await
            .unwrap()
    }

    /// A metric's value from `/metrics` (0 when absent).
    async fn metric(&self, series: &str) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

/// Two instances (A, then B) on one fresh database, started at once; A is the shared URL.
struct Fleet {
    a: Instance,
    b: Instance,
    fake: sim::realtime::FakeRealtime,
    db: sea_orm::DatabaseConnection,
    db_name: String,
    _dir: tempfile::TempDir,
}

impl Fleet {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let fake = sim::realtime::FakeRealtime::start(sim::realtime::FakeConfig::instant())
            .await
            .unwrap();
        let (db_url, db_name) = fresh_postgres().await;
        let (mut a, port_a) = Instance::spawn(&db_url, "", &fake.url(), dir.path());
        let (mut b, _) = Instance::spawn(
            &db_url,
            &format!("http://127.0.0.1:{port_a}"),
            &fake.url(),
            dir.path(),
        );
        a.ready().await;
        b.ready().await;
        let db = sea_orm::Database::connect(&db_url).await.unwrap();
        let resp = a
            .http
            .post(format!("{}/admin/api/v1/clients", a.base))
            .bearer_auth(ADMIN_TOKEN)
            .json(&serde_json::json!({
                "name": "Bright Smile",
                "phone_numbers": [CLIENT_NUMBER],
                "instructions": "You are the receptionist of a dental practice.",
                "greeting": "Thanks for calling Bright Smile Dental!",
                "voice": "marin",
                "timezone": "America/New_York",
                "business_hours": {"mon": [["09:00", "17:00"]]},
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
        Self {
            a,
            b,
            fake,
            db,
            db_name,
            _dir: dir,
        }
    }

    async fn stop(mut self) {
        let _ = self.a.child.kill().await;
        let _ = self.b.child.kill().await;
        self.db.close().await.ok();
        drop_postgres(&self.db_name).await;
    }

    /// Waits up to 10 s for the call's record to say it ended.
    async fn ended(&self, sid: &str) -> calls::CallWithTranscript {
        for _ in 0..100 {
            if let Some(c) = calls::call_by_sid(&self.db, sid).await.unwrap()
                && c.call.ended_at.is_some()
            {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "call {sid} never recorded as ended\nA:\n{}\nB:\n{}",
            self.a.log_text(),
            self.b.log_text()
        );
    }
}

fn stream_url(twiml: &Twiml) -> &str {
    match twiml {
        Twiml::Stream { url, .. } => url,
        other => panic!("not a stream: {other:?}"),
    }
}

#[tokio::test]
async fn two_instances_start_at_once_on_an_empty_database_and_share_the_calls() {
    if postgres_skipped() {
        return;
    }
    let fleet = Fleet::start().await;
    // No error of warmline's own (a `/readyz` 503 while an instance joins is logged by the
    // HTTP trace layer, and is how it should be).
    for log in [fleet.a.log_text(), fleet.b.log_text()] {
        assert!(
            !log.lines()
                .any(|l| l.contains("\"ERROR\"") && l.contains("\"target\":\"warmline")),
            "{log}"
        );
    }
    // Every migration applied once.
    let applied: Vec<(String, bool)> = warmline::store::migration_status(&fleet.db).await.unwrap();
    assert!(applied.iter().all(|(_, done)| *done), "{applied:?}");

    // 1. Warmed on A; Twilio's status callback for the hang-up reaches B.
    let placed = fleet.a.place().await;
    assert_eq!(stream_url(&placed.twiml), fleet.a.ws());
    assert_eq!(fleet.fake.open_connections(), 1);
    let status = fleet
        .b
        .twilio()
        .status_callback(&placed.call_sid, "canceled")
        .await
        .unwrap();
    assert_eq!(status, 204);
    let call = fleet.ended(&placed.call_sid).await;
    assert_eq!(call.call.status, "canceled", "{:?}", call.call);
    // Closed by A for the status callback, not by its reaper.
    assert_eq!(
        fleet
            .a
            .metric("warmline_warm_sessions_closed_total{reason=\"canceled\"}")
            .await,
        1.0
    );
    assert_eq!(
        fleet.a.metric("warmline_warm_sessions_reaped_total").await,
        0.0
    );
    assert_eq!(
        fleet
            .b
            .metric("warmline_fleet_events_total{event=\"status_forwarded\"}")
            .await,
        1.0
    );
    assert!(fleet.fake.wait_open(0, Duration::from_secs(5)).await);

    // 2. Warmed on A; Twilio retries the voice webhook and the retry reaches B.
    let placed = fleet.a.place().await;
    let opened = fleet.fake.connections_opened();
    let retry = fleet.b.retry(&placed.call_sid).await;
    assert_eq!(
        stream_url(&retry.twiml),
        fleet.a.ws(),
        "{}\n{}",
        retry.body,
        fleet.b.log_text()
    );
    assert_eq!(fleet.fake.connections_opened(), opened, "no second session");
    // Twilio streams where the retry's answer says: A's warm session takes the call.
    let report = fleet
        .b
        .twilio()
        .stream(
            &retry,
            &[
                Step::WaitForAgentQuiet(Duration::from_secs(5)),
                Step::HangUp,
            ],
            Default::default(),
        )
        .await
        .unwrap();
    assert!(report.media_messages > 0, "{report:?}");
    let call = fleet.ended(&retry.call_sid).await;
    assert_eq!(call.call.path.as_deref(), Some("warm"), "{:?}", call.call);
    assert_eq!(call.call.end_reason.as_deref(), Some("twilio_stop"));
    assert_eq!(fleet.fake.connections_opened(), opened);
    assert_eq!(
        fleet
            .b
            .metric("warmline_fleet_events_total{event=\"webhook_forwarded\"}")
            .await,
        1.0
    );
    fleet.stop().await;
}

#[tokio::test]
async fn a_retry_takes_the_call_over_when_the_instance_holding_it_is_gone() {
    if postgres_skipped() {
        return;
    }
    let mut fleet = Fleet::start().await;
    let placed = fleet.a.place().await;
    assert_eq!(stream_url(&placed.twiml), fleet.a.ws());
    fleet.a.child.kill().await.unwrap();
    let opened = fleet.fake.connections_opened();
    let retry = fleet.b.retry(&placed.call_sid).await;
    assert_eq!(stream_url(&retry.twiml), fleet.b.ws(), "{}", retry.body);
    assert_eq!(fleet.fake.connections_opened(), opened + 1, "warmed on B");
    assert_eq!(
        fleet
            .b
            .metric("warmline_fleet_events_total{event=\"webhook_took_over\"}")
            .await,
        1.0
    );
    fleet.stop().await;
}
