//! Test harness: `spawn_app` starts the real router on 127.0.0.1:0 with a fresh database and
//! returns handles for assertions (z2p `spawn_app`, svix `start_svix_server`).
//!
//! Backends: SQLite (a file in a temp dir) and Postgres (a fresh database per test on
//! `TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`, dropped afterwards).
//! Postgres tests FAIL when the server is unreachable, unless `TEST_POSTGRES=skip`.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};

use sea_orm::{ConnectionTrait, Database};
use warmline::{app::AppState, config::Settings};

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in a temp dir.
    Sqlite,
    /// A fresh Postgres database.
    Postgres,
}

/// The admin token every test app uses.
pub const ADMIN_TOKEN: &str = "test-admin-token-of-at-least-32-chars";
/// The Twilio auth token every test app uses.
pub const AUTH_TOKEN: &str = "test-twilio-auth-token";

/// A running app.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The app's state (database, metrics, registry).
    pub state: AppState,
    /// HTTP client.
    pub http: reqwest::Client,
    /// Which backend.
    pub backend: Backend,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
    pg_db: Option<String>,
}

fn postgres_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Whether Postgres tests were explicitly turned off.
pub fn postgres_skipped() -> bool {
    std::env::var("TEST_POSTGRES").is_ok_and(|v| v == "skip")
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh Postgres database on `TEST_POSTGRES_URL`: its URL and its name.
pub async fn fresh_postgres() -> (String, String) {
    let admin_url = postgres_url();
    let admin = Database::connect(&admin_url).await.unwrap_or_else(|e| {
        panic!(
            "Postgres at TEST_POSTGRES_URL ({admin_url}) is unreachable: {e}. \
             Start it, or set TEST_POSTGRES=skip to skip the Postgres variants explicitly."
        )
    });
    let name = format!(
        "warmline_test_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        rand_suffix()
    );
    admin
        .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
        .await
        .expect("CREATE DATABASE");
    admin.close().await.ok();
    let (base, _) = admin_url
        .rsplit_once('/')
        .expect("postgres URL has a database");
    (format!("{base}/{name}"), name)
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// Starts the app on `backend` with the defaults, the test tokens, and `extra_toml` on top.
pub async fn spawn_app(backend: Backend, extra_toml: &str) -> TestApp {
    spawn_app_with(backend, extra_toml, &[]).await
}

/// Like [`spawn_app`], adding `key = value` lines to sections that `extra_toml` leaves unset.
pub async fn spawn_app_with(
    backend: Backend,
    extra_toml: &str,
    defaults: &[(&str, &str)],
) -> TestApp {
    warmline::telemetry::init_for_tests();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (db_url, dir, pg_db) = match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}/w.db?mode=rwc", dir.path().display());
            (url, Some(dir), None)
        }
        Backend::Postgres => {
            let (url, name) = fresh_postgres().await;
            (url, Some(tempfile::tempdir().unwrap()), Some(name))
        }
    };
    // The call-record spool: next to the SQLite file by default; its own dir with Postgres.
    let spool_dir = dir
        .as_ref()
        .map(|d| d.path().join("spool"))
        .unwrap_or_default();
    let toml = format!("public_url = \"http://{addr}\"\n{extra_toml}\n",);
    let mut all: Vec<(&str, String)> = vec![
        ("database", format!("url = \"{db_url}\"")),
        ("twilio", format!("auth_token = \"{AUTH_TOKEN}\"")),
        ("admin", format!("token = \"{ADMIN_TOKEN}\"")),
        // Never the real OpenAI: a closed local port unless a test gives its fake.
        (
            "openai",
            "realtime_url = \"ws://127.0.0.1:9/v1/realtime\"".to_string(),
        ),
        ("openai", "base_url = \"http://127.0.0.1:9/v1\"".to_string()),
        ("store", format!("spool_dir = \"{}\"", spool_dir.display())),
        // Recordings and their spool in the test's directory on both backends.
        (
            "recording",
            format!(
                "dir = \"{}\"",
                dir.as_ref()
                    .map(|d| d.path().join("recordings"))
                    .unwrap_or_default()
                    .display()
            ),
        ),
    ];
    all.splice(0..0, defaults.iter().map(|(s, l)| (*s, l.to_string())));
    let pairs: Vec<(&str, &str)> = all.iter().map(|(s, l)| (*s, l.as_str())).collect();
    let toml = merge_sections(&toml, &pairs);
    let settings =
        Settings::from_toml(&toml).unwrap_or_else(|e| panic!("test settings: {e}\n{toml}"));
    let db = warmline::store::connect(&settings.database).await.unwrap();
    warmline::store::migrate(&db).await.unwrap();
    let state = AppState::new(settings, db).unwrap();
    let server = tokio::spawn(warmline::app::serve(listener, state.clone()));
    TestApp {
        base: format!("http://{addr}"),
        state,
        http: reqwest::Client::new(),
        backend,
        server: Some(server),
        _dir: dir,
        pg_db,
    }
}

/// Adds `key = value` lines to a TOML section unless the document already sets that key there.
fn merge_sections(toml: &str, defaults: &[(&str, &str)]) -> String {
    let mut out = toml.to_string();
    for (section, line) in defaults {
        let key = line.split('=').next().unwrap().trim();
        let header = format!("[{section}]");
        match out.find(&header) {
            Some(pos) => {
                let body_start = pos + header.len();
                let body_end = out[body_start..]
                    .find("\n[")
                    .map_or(out.len(), |i| body_start + i);
                if !out[body_start..body_end]
                    .lines()
                    .any(|l| l.trim_start().starts_with(key))
                {
                    out.insert_str(body_start, &format!("\n{line}"));
                }
            }
            None => out.push_str(&format!("\n{header}\n{line}\n")),
        }
    }
    out
}

impl TestApp {
    /// `base + path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// An authorised admin request builder.
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(&format!("/admin/api/v1{path}")))
            .bearer_auth(ADMIN_TOKEN)
    }

    /// Creates a client with one number and returns its JSON.
    pub async fn create_client(&self, name: &str, number: &str) -> serde_json::Value {
        let resp = self
            .admin(reqwest::Method::POST, "/clients")
            .json(&serde_json::json!({
                "name": name,
                "phone_numbers": [number],
                "instructions": "You are the receptionist of a dental practice.",
                "greeting": "Thanks for calling Bright Smile Dental!",
                "voice": "marin",
                "timezone": "America/New_York",
                "business_hours": {"mon": [["09:00", "17:00"]]},
                "faqs": [{"question": "Do you take walk-ins?", "answer": "Yes, mornings."}]
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            201,
            "create client: {}",
            resp.text().await.unwrap()
        );
        resp.json().await.unwrap()
    }

    /// Waits up to `limit` for the server to stop by itself (a drain that completed); true if
    /// it did.
    pub async fn stopped_within(&mut self, limit: std::time::Duration) -> bool {
        let Some(server) = self.server.as_mut() else {
            return true;
        };
        match tokio::time::timeout(limit, server).await {
            Ok(_) => {
                self.server = None;
                true
            }
            Err(_) => false,
        }
    }

    /// Stops the server (graceful shutdown) and drops the Postgres database.
    pub async fn shutdown(mut self) {
        self.state.shutdown.cancel();
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        self.state.db.clone().close().await.ok();
        if let Some(name) = self.pg_db.take() {
            drop_postgres(&name).await;
        }
    }
}

impl TestApp {
    /// Stops this app (graceful shutdown) and starts a new one on the same database with the
    /// same settings (a new port): what a process restart does.
    pub async fn restart(mut self) -> TestApp {
        self.state.shutdown.cancel();
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        self.state.db.clone().close().await.ok();
        let mut app = Self::on(&self.state.settings, self.backend).await;
        app._dir = self._dir.take();
        app.pg_db = self.pg_db.take();
        app
    }

    /// A second instance on this app's database with its settings (a new port), as another
    /// process of a fleet is. The database stays this app's (dropped with it).
    pub async fn another_instance(&self) -> TestApp {
        Self::on(&self.state.settings, self.backend).await
    }

    /// An app serving `settings` on a new port (its `public_url`).
    async fn on(settings: &Settings, backend: Backend) -> TestApp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut settings = settings.clone();
        settings.public_url = format!("http://{addr}").parse().unwrap();
        let db = warmline::store::connect(&settings.database).await.unwrap();
        warmline::store::migrate(&db).await.unwrap();
        let state = AppState::new(settings, db).unwrap();
        let server = tokio::spawn(warmline::app::serve(listener, state.clone()));
        TestApp {
            base: format!("http://{addr}"),
            state,
            http: reqwest::Client::new(),
            backend,
            server: Some(server),
            _dir: None,
            pg_db: None,
        }
    }
}

/// Drops a database [`fresh_postgres`] made.
pub async fn drop_postgres(name: &str) {
    if let Ok(admin) = Database::connect(postgres_url()).await {
        let _ = admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await;
        admin.close().await.ok();
    }
}

/// Runs `$name(backend)` on SQLite and on Postgres (for tests that start their fakes before
/// the app).
#[macro_export]
macro_rules! on_both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name($crate::support::Backend::Sqlite).await;
            }

            #[tokio::test]
            async fn postgres() {
                if $crate::support::postgres_skipped() {
                    eprintln!("TEST_POSTGRES=skip: Postgres variant skipped");
                    return;
                }
                super::$name($crate::support::Backend::Postgres).await;
            }
        }
    };
}

/// Defines `$name` twice: `$name::sqlite` and `$name::postgres`, each with a fresh app.
#[macro_export]
macro_rules! both_backends {
    ($(#[$meta:meta])* $name:ident, |$app:ident| $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn run($app: &$crate::support::TestApp) $body

            #[tokio::test]
            async fn sqlite() {
                let app = $crate::support::spawn_app($crate::support::Backend::Sqlite, "").await;
                run(&app).await;
                app.shutdown().await;
            }

            #[tokio::test]
            async fn postgres() {
                if $crate::support::postgres_skipped() {
                    eprintln!("TEST_POSTGRES=skip: Postgres variant skipped");
                    return;
                }
                let app = $crate::support::spawn_app($crate::support::Backend::Postgres, "").await;
                run(&app).await;
                app.shutdown().await;
            }
        }
    };
}

/// A gateway wired to a fake Realtime server, with one client on `+15005550006`, and a Twilio
/// simulator pointed at it.
pub struct Gateway {
    /// The app.
    pub app: TestApp,
    /// The fake Realtime server it talks to.
    pub fake: sim::realtime::FakeRealtime,
    /// Twilio, simulated.
    pub twilio: sim::twilio::TwilioSim,
    /// The client's id.
    pub client_id: warmline::domain::ClientId,
}

/// The number the test client answers.
pub const CLIENT_NUMBER: &str = "+15005550006";
/// A caller.
pub const CALLER: &str = "+14155550100";

/// After the greeting the caller asks something, hears the answer, and hangs up (each step
/// waiting up to `wait`).
pub fn ask_hear_hang(wait: std::time::Duration) -> Vec<sim::twilio::Step> {
    use sim::{audio::clips, twilio::Step};
    vec![
        Step::WaitForAgentQuiet(wait),
        Step::Say(clips::question()),
        Step::WaitForAgentAudio(wait),
        Step::WaitForAgentQuiet(wait),
        Step::HangUp,
    ]
}

/// The test business with opening hours, its greeting generated (a call that asks gets the
/// `business_hours` tool's answer when the fake is scripted so).
pub async fn with_hours(gw: &Gateway) {
    gw.update_client(&serde_json::json!({
        "name": "Bright Smile", "phone_numbers": [CLIENT_NUMBER],
        "instructions": "You are the receptionist of a dental practice.",
        "greeting": "Thanks for calling Bright Smile Dental!", "voice": "marin",
        "greeting_mode": "generated", "timezone": "America/New_York",
        "business_hours": {"mon": [["09:00", "17:00"]]},
    }))
    .await;
}

/// Starts a gateway (SQLite) against a fake Realtime server configured by `fake`.
pub async fn gateway(fake: sim::realtime::FakeConfig, extra_toml: &str) -> Gateway {
    gateway_on(Backend::Sqlite, fake, extra_toml).await
}

/// [`gateway`] on `backend`.
pub async fn gateway_on(
    backend: Backend,
    fake: sim::realtime::FakeConfig,
    extra_toml: &str,
) -> Gateway {
    let fake = sim::realtime::FakeRealtime::start(fake).await.unwrap();
    let url = format!("realtime_url = \"{}\"", fake.url());
    let app = spawn_app_with(
        backend,
        extra_toml,
        &[
            ("openai", &url),
            ("openai", "api_key = \"sk-test-key\""),
            ("openai", "connect_timeout_ms = 2000"),
        ],
    )
    .await;
    let client = app.create_client("Bright Smile", CLIENT_NUMBER).await;
    let twilio = sim::twilio::TwilioSim::new(&app.base, AUTH_TOKEN);
    Gateway {
        client_id: warmline::domain::ClientId::new(client["id"].as_i64().unwrap() as i32),
        app,
        fake,
        twilio,
    }
}

impl Gateway {
    /// Restarts the app on the same database and settings (a process restart: nothing in
    /// memory survives), with a Twilio simulator for its new address. Streams placed before it
    /// verify only with a configured `twilio.stream_token_secret`.
    pub async fn restart(self) -> Gateway {
        let app = self.app.restart().await;
        let twilio = sim::twilio::TwilioSim::new(&app.base, AUTH_TOKEN);
        Gateway {
            app,
            fake: self.fake,
            twilio,
            client_id: self.client_id,
        }
    }

    /// `placed` with its stream URL pointed at this gateway (a call placed before a restart).
    pub fn here(&self, placed: &sim::twilio::PlacedCall) -> sim::twilio::PlacedCall {
        let sim::twilio::Twiml::Stream {
            url,
            action,
            parameters,
        } = &placed.twiml
        else {
            panic!("not a stream: {:?}", placed.twiml)
        };
        let path = &url[url.find("/twilio/").expect("a media stream URL")..];
        sim::twilio::PlacedCall {
            twiml: sim::twilio::Twiml::Stream {
                url: format!("{}{path}", self.app.base.replacen("http", "ws", 1)),
                action: action.clone(),
                parameters: parameters.clone(),
            },
            ..placed.clone()
        }
    }

    /// Waits until the call's final record is written (ended_at set) and returns it.
    pub async fn ended_call(&self, call_sid: &str) -> warmline::store::calls::CallWithTranscript {
        self.ended_call_within(call_sid, std::time::Duration::from_secs(10))
            .await
    }

    /// [`Gateway::ended_call`], waiting up to `limit` (after a database outage the writer's
    /// next retry, and an attempt still waiting for a connection, come first).
    pub async fn ended_call_within(
        &self,
        call_sid: &str,
        limit: std::time::Duration,
    ) -> warmline::store::calls::CallWithTranscript {
        for _ in 0..limit.as_millis().div_ceil(100) {
            if let Some(c) = warmline::store::calls::call_by_sid(&self.app.state.db, call_sid)
                .await
                .unwrap()
                && c.call.ended_at.is_some()
            {
                return c;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("call {call_sid} was never recorded as ended");
    }

    /// Places a call from [`CALLER`] to the client (the signed voice webhook) and returns it.
    pub async fn place_call(&self) -> sim::twilio::PlacedCall {
        self.twilio
            .place_call(&sim::twilio::CallSpec::new(CALLER, CLIENT_NUMBER))
            .await
            .unwrap()
    }

    /// Replaces the test client's settings (admin `PUT /clients/{id}`); panics unless 200.
    pub async fn update_client(&self, body: &serde_json::Value) {
        let resp = self
            .app
            .admin(
                reqwest::Method::PUT,
                &format!("/clients/{}", self.client_id),
            )
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    }

    /// Runs the call's media stream with `script` (default options) and returns its report.
    pub async fn stream(
        &self,
        placed: &sim::twilio::PlacedCall,
        script: &[sim::twilio::Step],
    ) -> sim::twilio::CallReport {
        self.twilio
            .stream(placed, script, sim::twilio::StreamOptions::default())
            .await
            .unwrap()
    }

    /// Starts the call's media stream with `script` on its own task (the test acts meanwhile)
    /// and returns its handle.
    pub fn stream_in_background(
        &self,
        placed: &sim::twilio::PlacedCall,
        script: Vec<sim::twilio::Step>,
    ) -> tokio::task::JoinHandle<sim::twilio::CallReport> {
        let twilio = self.twilio.clone();
        let placed = placed.clone();
        tokio::spawn(async move {
            twilio
                .stream(&placed, &script, sim::twilio::StreamOptions::default())
                .await
                .unwrap()
        })
    }

    /// A metric's value line from /metrics (e.g. `warmline_warm_sessions_reaped_total`).
    pub fn metric(&self, prefix: &str) -> f64 {
        let text = self.app.state.metrics.encode();
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

/// Like [`both_backends!`], each app started with `$toml` over the test defaults.
#[macro_export]
macro_rules! both_backends_with {
    ($(#[$meta:meta])* $name:ident, $toml:expr, |$app:ident| $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn run($app: &$crate::support::TestApp) $body

            #[tokio::test]
            async fn sqlite() {
                let app = $crate::support::spawn_app($crate::support::Backend::Sqlite, $toml).await;
                run(&app).await;
                app.shutdown().await;
            }

            #[tokio::test]
            async fn postgres() {
                if $crate::support::postgres_skipped() {
                    eprintln!("TEST_POSTGRES=skip: Postgres variant skipped");
                    return;
                }
                let app = $crate::support::spawn_app($crate::support::Backend::Postgres, $toml).await;
                run(&app).await;
                app.shutdown().await;
            }
        }
    };
}
