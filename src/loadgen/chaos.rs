//! `warmline loadgen --chaos`: calls placed while everything around the gateway goes wrong, then
//! a count of what was lost. What survives what is in README.md ("Operations"); the drain, the
//! spool and the reconnect it exercises are in docs/architecture.md.
//!
//! Callers hang up while it rings, during the greeting and during an answer, or their leg drops;
//! the fake Realtime server refuses, hangs, drops or expires connections at random
//! ([`sim::realtime::Faults`]); the database is paused for a while (SQLite: another connection
//! holds its write lock; Postgres: the database refuses connections and every session is
//! terminated); at the end the gateway gets SIGTERM with calls live and must finish them (or
//! hand them to the fallback at its drain deadline), flush its records and exit on its own.
//!
//! Then it counts what must be zero: Realtime sockets left open at the fake once every call has
//! ended, calls without their finished record, records written twice.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, Statement};
use serde::Serialize;
use sim::{
    audio::clips,
    realtime::{FakeConfig, FakeRealtime, FaultCounts, Faults},
    twilio::{CallSpec, Step, StreamOptions, TwilioSim, Twiml},
};

use super::{AUTH, Gateway, LoadOptions, metric_sum, prepare, run_dir, scrape, start_gateway};

/// What a chaos run does (the command line's `--chaos` options).
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// Calls placed under the faults.
    pub calls: usize,
    /// Seconds over which they are placed.
    pub ramp: Duration,
    /// Seed of the random draws. The callers' behaviours repeat with it; the Realtime faults are
    /// drawn in the order connections arrive, which timing changes, so they repeat only roughly.
    pub seed: u64,
    /// `None`: SQLite in a temporary directory. A `postgres://` URL: the run creates its own
    /// database on that server (the URL's user must be allowed to), and drops it at the end.
    pub database: Option<String>,
    /// How long the database is unavailable, starting a sixth of the way into the ramp.
    pub db_pause: Duration,
    /// Calls live when the gateway gets SIGTERM (half of them outlive its drain deadline).
    pub drain_calls: usize,
    /// The gateway's `server.drain_secs` for the run.
    pub drain_secs: u64,
    /// The Realtime faults (`None`: about one connection in six meets one, seeded by `seed`).
    pub faults: Option<Faults>,
    /// Print JSON.
    pub json: bool,
    /// The gateway binary (default: this executable).
    pub gateway_bin: Option<PathBuf>,
    /// CPUs for the gateway (`taskset -c`).
    pub gateway_cpus: Option<super::CpuList>,
    /// CPUs for the load generator.
    pub loadgen_cpus: Option<super::CpuList>,
}

impl Default for ChaosOptions {
    /// The command line's defaults.
    fn default() -> Self {
        Self {
            calls: 300,
            ramp: Duration::from_secs(60),
            seed: 1,
            database: None,
            db_pause: Duration::from_secs(30),
            drain_calls: 20,
            drain_secs: 15,
            faults: None,
            json: false,
            gateway_bin: None,
            gateway_cpus: None,
            loadgen_cpus: None,
        }
    }
}

/// The Realtime faults of a chaos run: about one connection in six meets one.
fn faults(seed: u64) -> Faults {
    Faults {
        seed,
        refuse: 0.04,
        hang: 0.02,
        drop: 0.06,
        expire: 0.04,
        window: (Duration::from_secs(1), Duration::from_secs(12)),
    }
}

/// What one simulated caller does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
enum Caller {
    /// Hangs up while it rings (the status callback says `canceled`, perhaps before the
    /// webhook has answered).
    HangUpRinging,
    /// Hangs up during the greeting.
    HangUpGreeting,
    /// Asks a question and hangs up while the answer plays.
    HangUpAnswer,
    /// The leg drops (no `stop`) during the conversation.
    LegDrops,
    /// A whole conversation: the greeting, a question, its answer, thanks, its answer, bye.
    Converses,
    /// A conversation long enough to be live when the gateway gets SIGTERM (`short`: it ends
    /// before the drain deadline; otherwise the deadline ends it).
    Drained { short: bool },
}

impl Caller {
    fn draw(rng: &mut StdRng) -> Self {
        match rng.random_range(0..100) {
            0..10 => Self::HangUpRinging,
            10..20 => Self::HangUpGreeting,
            20..30 => Self::HangUpAnswer,
            30..35 => Self::LegDrops,
            _ => Self::Converses,
        }
    }

    /// The stream script (empty for a hang-up while ringing).
    fn script(self, rng: &mut StdRng) -> Vec<Step> {
        let wait = Duration::from_secs(15);
        let ms =
            |rng: &mut StdRng, lo: u64, hi: u64| Duration::from_millis(rng.random_range(lo..hi));
        match self {
            Self::HangUpRinging => vec![],
            Self::HangUpGreeting => vec![Step::Silence(ms(rng, 100, 1500)), Step::HangUp],
            Self::HangUpAnswer => vec![
                Step::WaitForAgentQuiet(wait),
                Step::Say(clips::question()),
                Step::WaitForAgentAudio(wait),
                Step::Silence(ms(rng, 100, 800)),
                Step::HangUp,
            ],
            Self::LegDrops => vec![
                Step::WaitForAgentQuiet(wait),
                Step::Say(clips::question()),
                Step::Silence(ms(rng, 500, 4000)),
                Step::Drop,
            ],
            Self::Converses => vec![
                Step::WaitForAgentQuiet(wait),
                Step::Say(clips::question()),
                Step::WaitForAgentAudio(wait),
                Step::WaitForAgentQuiet(wait),
                Step::Silence(ms(rng, 500, 6000)),
                Step::Say(clips::thanks()),
                Step::WaitForAgentAudio(wait),
                Step::WaitForAgentQuiet(wait),
                Step::HangUp,
            ],
            Self::Drained { short } => vec![
                Step::WaitForAgentQuiet(wait),
                Step::Silence(if short {
                    Duration::from_secs(3)
                } else {
                    Duration::from_secs(600)
                }),
                Step::HangUp,
            ],
        }
    }
}

/// How one call went, as the simulated caller saw it.
#[derive(Debug, Clone, Default)]
struct Outcome {
    call_sid: String,
    /// The voice webhook answered 200 (whatever the TwiML).
    placed: bool,
    /// The media stream was opened (`start` sent).
    streamed: bool,
    /// The caller heard agent audio.
    heard_agent: bool,
    /// Who closed the stream: `caller` or `gateway`.
    closed_by: Option<String>,
    /// The after-stream TwiML (`<Connect action>`).
    after_stream: Option<Twiml>,
    /// Placing or streaming failed (the error).
    error: Option<String>,
}

/// Calls by what happened to them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallCounts {
    /// Voice webhooks sent.
    pub started: usize,
    /// Webhooks that did not answer 200 (or whose TwiML opened no stream when one was due).
    pub webhook_failed: usize,
    /// Calls whose caller hung up while it rang.
    pub hung_up_ringing: usize,
    /// Media streams opened.
    pub streamed: usize,
    /// Streams that ended as the caller meant to (hang-up or leg drop) or by the gateway with
    /// an answer to `<Connect action>`: nobody heard Twilio's application error.
    pub completed: usize,
    /// Streams the gateway ended, then dialled the fallback (or transfer) number.
    pub transferred: usize,
    /// Streams the gateway ended, then said goodbye and hung up.
    pub ended_politely: usize,
    /// Streams whose caller heard no agent audio at all.
    pub heard_nothing: usize,
    /// Streams that failed: an upgrade refused, a protocol violation, a gateway that closed
    /// without an after-stream answer, or a caller who waited for the agent and heard nothing.
    pub failed: usize,
}

/// What the records in the database say.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RecordCheck {
    /// Calls whose webhook answered but whose call row is absent.
    pub missing: usize,
    /// Streamed calls whose finished record (transcript, caller memory) is not saved, or calls
    /// that never streamed and are still `ringing`.
    pub unfinished: usize,
    /// Calls counted twice in caller memory (`callers.call_count` above the caller's saved
    /// calls), plus call rows and transcript lines written twice (those two are also unique
    /// keys: a sanity check of the schema). A replayed write would otherwise show here; that
    /// the spool's replay after a crash is idempotent is tested in tests/it/spool.rs.
    pub duplicates: usize,
    /// Calls turned away because the database could not be read (`failed`, end reason
    /// `turned away: …`).
    pub turned_away: usize,
    /// Call rows by status.
    pub by_status: HashMap<String, usize>,
    /// Streamed calls by end reason.
    pub by_end_reason: HashMap<String, usize>,
}

/// A chaos run's report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChaosReport {
    /// The seed.
    pub seed: u64,
    /// `sqlite` or `postgres`.
    pub database: String,
    /// The calls placed under faults, then the ones live at SIGTERM.
    pub calls: CallCounts,
    /// Calls by caller behaviour.
    pub callers: HashMap<String, usize>,
    /// Faults the fake Realtime server dealt.
    pub realtime_faults: FaultCounts,
    /// Realtime connections opened.
    pub realtime_connections: usize,
    /// `warmline_realtime_reconnects_total` by outcome (`ok`, `failed`).
    pub reconnects: HashMap<String, f64>,
    /// Seconds the database was unavailable.
    pub db_paused_secs: f64,
    /// Whether the pause really blocked the gateway's writes (retries counted).
    pub writes_retried: f64,
    /// Records the gateway lost: `warmline_store_records_lost_total` just before SIGTERM, or
    /// the `… lost` errors in its log by the time it exited, whichever is more.
    pub records_lost: f64,
    /// Realtime sockets (and unanswered handshakes) still open at the fake once every call had
    /// ended and the reaper's deadline had passed. Must be 0.
    pub leaked_sockets: usize,
    /// `/readyz` answered 503 right after SIGTERM.
    pub readyz_503_on_sigterm: bool,
    /// Seconds from SIGTERM to the gateway's exit.
    pub exit_after_secs: f64,
    /// The gateway's exit status (0 expected).
    pub exit_code: Option<i32>,
    /// The records.
    pub records: RecordCheck,
}

impl ChaosReport {
    /// The run lost nothing: no caller turned away, no stream failed, no leaked socket, no
    /// missing or unfinished record, no duplicate, a clean exit.
    pub fn clean(&self) -> bool {
        self.leaked_sockets == 0
            && self.records.missing == 0
            && self.records.unfinished == 0
            && self.records.duplicates == 0
            && self.records.turned_away == 0
            && self.records_lost == 0.0
            && self.exit_code == Some(0)
            && self.calls.failed == 0
            && self.calls.webhook_failed == 0
    }
}

/// Where the run's data lives.
#[derive(Clone)]
enum Store {
    Sqlite {
        url: String,
    },
    Postgres {
        admin: String,
        url: String,
        name: String,
    },
}

impl Store {
    async fn create(opts: &ChaosOptions, dir: &std::path::Path) -> anyhow::Result<Self> {
        let Some(admin) = &opts.database else {
            return Ok(Self::Sqlite {
                url: format!("sqlite://{}/lg.db?mode=rwc", dir.display()),
            });
        };
        if !admin.starts_with("postgres") {
            bail!("--database takes a postgres:// URL (SQLite is the default)");
        }
        let name = format!(
            "warmline_chaos_{}_{}",
            std::process::id(),
            dir.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.rsplit('-').next())
                .unwrap_or("0")
        );
        let db = Database::connect(admin.as_str())
            .await
            .context("connecting to the --database server")?;
        db.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await?;
        db.execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .context("creating the run's database (the URL's user needs CREATEDB)")?;
        let mut url = url::Url::parse(admin).context("--database")?;
        url.set_path(&name);
        Ok(Self::Postgres {
            admin: admin.clone(),
            url: url.to_string(),
            name,
        })
    }

    fn url(&self) -> &str {
        match self {
            Self::Sqlite { url } | Self::Postgres { url, .. } => url,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Sqlite { .. } => "sqlite",
            Self::Postgres { .. } => "postgres",
        }
    }

    /// Makes the database unavailable to the gateway for `pause`, then lets it back.
    async fn pause(&self, pause: Duration) -> anyhow::Result<()> {
        match self {
            Self::Sqlite { url } => {
                // One connection, so BEGIN and COMMIT run on the same one: the write lock is
                // held for the whole pause (WAL readers still read; every writer waits, then
                // fails with "database is locked").
                let mut o = ConnectOptions::new(url.replace("mode=rwc", "mode=rw"));
                o.max_connections(1).min_connections(1).sqlx_logging(false);
                let db = Database::connect(o).await?;
                db.execute_unprepared("BEGIN EXCLUSIVE").await?;
                tokio::time::sleep(pause).await;
                db.execute_unprepared("COMMIT").await?;
                db.close().await?;
            }
            Self::Postgres { admin, name, .. } => {
                let db = Database::connect(admin.as_str()).await?;
                db.execute_unprepared(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
                    .await?;
                let until = Instant::now() + pause;
                // Terminated now and again: a session that was mid-connect when connections
                // were refused is caught by the next round.
                while Instant::now() < until {
                    db.execute_unprepared(&format!(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                    ))
                    .await?;
                    tokio::time::sleep(Duration::from_millis(500).min(until - Instant::now()))
                        .await;
                }
                db.execute_unprepared(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
                    .await?;
                db.close().await?;
            }
        }
        Ok(())
    }

    async fn drop_database(&self) {
        if let Self::Postgres { admin, name, .. } = self
            && let Ok(db) = Database::connect(admin.as_str()).await
        {
            let _ = db
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
        }
    }
}

async fn create_client(base: &str, number: &str, policy: &str) -> anyhow::Result<()> {
    super::create_client_with(
        base,
        serde_json::json!({
            "name": format!("Chaos {number}"), "phone_numbers": [number],
            "instructions": "You are a receptionist.", "greeting": "Thanks for calling!",
            "voice": "marin", "prewarm_policy": policy,
            "fallback_number": "+15005550100", "transfer_number": "+15005550101"}),
    )
    .await
}

/// Places one call and runs its caller.
async fn one_call(
    twilio: &TwilioSim,
    from: String,
    to: &str,
    caller: Caller,
    script: Vec<Step>,
    ringing_hang_up_ms: u64,
) -> Outcome {
    let spec = CallSpec::new(&from, to);
    let call_sid = sim::twilio::sid("CA");
    let spec = CallSpec {
        call_sid: Some(call_sid.clone()),
        ..spec
    };
    let mut out = Outcome {
        call_sid: call_sid.clone(),
        ..Outcome::default()
    };
    if caller == Caller::HangUpRinging {
        // The status callback races the webhook, as when the caller gives up while it rings.
        let (placed, _) = tokio::join!(twilio.place_call(&spec), async {
            tokio::time::sleep(Duration::from_millis(ringing_hang_up_ms)).await;
            twilio.status_callback(&call_sid, "canceled").await
        });
        match placed {
            Ok(p) if p.status == 200 => out.placed = true,
            Ok(p) => out.error = Some(format!("webhook answered {}", p.status)),
            Err(e) => out.error = Some(format!("webhook: {e:#}")),
        }
        return out;
    }
    let placed = match twilio.place_call(&spec).await {
        Ok(p) if p.status == 200 => p,
        Ok(p) => {
            out.error = Some(format!("webhook answered {}", p.status));
            return out;
        }
        Err(e) => {
            out.error = Some(format!("webhook: {e:#}"));
            return out;
        }
    };
    out.placed = true;
    if !matches!(placed.twiml, Twiml::Stream { .. }) {
        out.error = Some(format!(
            "webhook TwiML opened no stream: {:?}",
            placed.twiml
        ));
        return out;
    }
    out.streamed = true;
    match twilio
        .stream(&placed, &script, StreamOptions::default())
        .await
    {
        Ok(r) => {
            out.heard_agent = r.first_media_after_start.is_some();
            out.closed_by = r.closed_by.clone();
            out.after_stream = r.after_stream.clone();
            if !r.violations.is_empty() {
                out.error = Some(format!("protocol violations: {:?}", r.violations));
            } else if !r.stream_opened {
                out.error = Some(format!("stream refused ({:?})", r.upgrade_status));
            }
        }
        Err(e) => out.error = Some(format!("stream: {e:#}")),
    }
    out
}

fn count(outcomes: &[(Caller, Outcome)]) -> CallCounts {
    let mut c = CallCounts {
        started: outcomes.len(),
        ..CallCounts::default()
    };
    for (caller, o) in outcomes {
        if !o.placed || (!o.streamed && *caller != Caller::HangUpRinging) {
            c.webhook_failed += 1;
            continue;
        }
        if !o.streamed {
            c.hung_up_ringing += 1;
            continue;
        }
        c.streamed += 1;
        if !o.heard_agent {
            c.heard_nothing += 1;
        }
        let by_gateway = o.closed_by.as_deref() == Some("gateway");
        match &o.after_stream {
            Some(Twiml::Dial { .. }) if by_gateway => c.transferred += 1,
            Some(Twiml::SayHangup { .. } | Twiml::Hangup) if by_gateway => c.ended_politely += 1,
            _ => {}
        }
        let answered = matches!(
            o.after_stream,
            Some(Twiml::Dial { .. } | Twiml::SayHangup { .. } | Twiml::Hangup)
        );
        // A caller who waited for the agent, heard nothing, and gave up: a silent line.
        let waited = matches!(
            caller,
            Caller::Converses | Caller::HangUpAnswer | Caller::Drained { .. }
        );
        let silent = waited && !o.heard_agent && !by_gateway;
        if o.error.is_none() && !silent && (!by_gateway || answered) {
            c.completed += 1;
        } else {
            c.failed += 1;
        }
    }
    c
}

/// Reads the records of the calls placed and checks each is there once and finished.
async fn check_records(url: &str, outcomes: &[(Caller, Outcome)]) -> anyhow::Result<RecordCheck> {
    let db: DatabaseConnection = Database::connect(url.replace("mode=rwc", "mode=rw"))
        .await
        .context("opening the run's database to check its records")?;
    let backend = db.get_database_backend();
    let rows = db
        .query_all_raw(Statement::from_string(
            backend,
            "SELECT call_sid, status, recorded, end_reason FROM calls",
        ))
        .await?;
    let mut calls: HashMap<String, Vec<(String, bool, Option<String>)>> = HashMap::new();
    for r in rows {
        calls.entry(r.try_get("", "call_sid")?).or_default().push((
            r.try_get("", "status")?,
            r.try_get("", "recorded")?,
            r.try_get("", "end_reason")?,
        ));
    }
    let mut check = RecordCheck::default();
    for rows in calls.values() {
        check.duplicates += rows.len() - 1;
        for (status, _, reason) in rows {
            *check.by_status.entry(status.clone()).or_default() += 1;
            if reason
                .as_deref()
                .is_some_and(|r| r.starts_with("turned away"))
            {
                check.turned_away += 1;
            }
        }
    }
    for (_, o) in outcomes.iter().filter(|(_, o)| o.placed) {
        let Some(rows) = calls.get(&o.call_sid) else {
            check.missing += 1;
            continue;
        };
        let (status, recorded, end_reason) = &rows[0];
        if o.streamed {
            *check
                .by_end_reason
                .entry(end_reason.clone().unwrap_or_else(|| "(none)".into()))
                .or_default() += 1;
            if !recorded || status == "ringing" {
                check.unfinished += 1;
            }
        } else if status == "ringing" {
            check.unfinished += 1;
        }
    }
    let scalar = |sql: &'static str| {
        let db = &db;
        async move {
            let row = db
                .query_one_raw(Statement::from_string(backend, sql))
                .await?
                .context("no row")?;
            anyhow::Ok(row.try_get_by_index::<i64>(0)?)
        }
    };
    // A transcript line saved twice, or a call counted twice for its caller.
    check.duplicates += scalar(
        "SELECT CAST(COALESCE(SUM(n - 1), 0) AS BIGINT) FROM (SELECT COUNT(*) AS n FROM transcript_items \
         GROUP BY call_id, seq HAVING COUNT(*) > 1) AS d",
    )
    .await? as usize;
    check.duplicates += scalar(
        "SELECT CAST(COALESCE(SUM(c.call_count - (SELECT COUNT(*) FROM calls k \
         WHERE k.client_id = c.client_id AND k.from_number = c.phone AND k.recorded = TRUE)), 0) \
         AS BIGINT) FROM callers c WHERE c.call_count > (SELECT COUNT(*) FROM calls k \
         WHERE k.client_id = c.client_id AND k.from_number = c.phone AND k.recorded = TRUE)",
    )
    .await? as usize;
    db.close().await?;
    Ok(check)
}

type Outcomes = Arc<Mutex<Vec<(Caller, Outcome)>>>;

/// Spawns `n` calls over `ramp`, each with a caller behaviour from `pick`.
#[allow(clippy::too_many_arguments)]
async fn place_calls(
    tasks: &mut tokio::task::JoinSet<()>,
    twilio: &TwilioSim,
    rng: &mut StdRng,
    outcomes: &Outcomes,
    first: usize,
    n: usize,
    ramp: Duration,
    mut pick: impl FnMut(usize, &mut StdRng) -> Caller,
) {
    let gap = ramp / n.max(1) as u32;
    for i in first..first + n {
        let caller = pick(i, rng);
        let script = caller.script(rng);
        let ring_ms = rng.random_range(50..1500);
        // Every tenth call goes to the client that never pre-warms (the cold path).
        let to = if i % 10 == 9 {
            "+15005550007"
        } else {
            "+15005550006"
        };
        let (twilio, outcomes) = (twilio.clone(), outcomes.clone());
        tasks.spawn(async move {
            let o = one_call(&twilio, format!("+1415{i:07}"), to, caller, script, ring_ms).await;
            outcomes.lock().expect("outcomes lock").push((caller, o));
        });
        tokio::time::sleep(gap).await;
    }
}

/// Runs the chaos load and returns (and prints) its report.
pub async fn run(opts: ChaosOptions) -> anyhow::Result<ChaosReport> {
    prepare(&LoadOptions {
        gateway_cpus: opts.gateway_cpus.clone(),
        loadgen_cpus: opts.loadgen_cpus.clone(),
        ..LoadOptions::default()
    })?;
    let dir = run_dir("chaos")?;
    let store = Store::create(&opts, &dir).await?;
    let result = chaos(&opts, &store, dir.clone()).await;
    store.drop_database().await;
    // A run that lost something keeps the gateway's log for the post-mortem.
    if result.as_ref().is_ok_and(ChaosReport::clean) {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("the gateway's log: {}", dir.join("gateway.log").display());
    }
    let report = result?;
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(report)
}

fn say(opts: &ChaosOptions, started: Instant, what: &str) {
    if !opts.json {
        eprintln!("[{:>5.1}s] {what}", started.elapsed().as_secs_f64());
    }
}

async fn chaos(opts: &ChaosOptions, store: &Store, dir: PathBuf) -> anyhow::Result<ChaosReport> {
    let fake = FakeRealtime::start(FakeConfig {
        record_audio: false,
        faults: Some(opts.faults.clone().unwrap_or_else(|| faults(opts.seed))),
        ..FakeConfig::default()
    })
    .await?;
    let load = LoadOptions {
        calls: opts.calls + opts.drain_calls,
        hang_calls: 0,
        ring_max_ms: 2000,
        gateway_bin: opts.gateway_bin.clone(),
        gateway_cpus: opts.gateway_cpus.clone(),
        ..LoadOptions::default()
    };
    let ttl_secs = 10;
    let mut gw: Gateway = start_gateway(
        &load,
        &fake.url(),
        dir,
        Some(store.url()),
        &[
            ("WARMLINE_SERVER__DRAIN_SECS", opts.drain_secs.to_string()),
            ("WARMLINE_PREWARM__TTL_SECS", ttl_secs.to_string()),
            ("WARMLINE_OPENAI__CONNECT_TIMEOUT_MS", "3000".into()),
        ],
    )
    .await?;
    create_client(&gw.base, "+15005550006", "always").await?;
    create_client(&gw.base, "+15005550007", "never").await?;
    let twilio = TwilioSim::new(&gw.base, AUTH);
    // Each number rings once before the chaos: an instance that has been up a while has read
    // its clients, and answers from them while the database is away (README.md, "What
    // survives what").
    for to in ["+15005550006", "+15005550007"] {
        let o = one_call(
            &twilio,
            "+14150000000".into(),
            to,
            Caller::HangUpRinging,
            vec![],
            0,
        )
        .await;
        if let Some(e) = o.error {
            bail!("the first call to {to}: {e}");
        }
    }
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let outcomes: Outcomes = Arc::default();
    let started = Instant::now();
    let mut report = ChaosReport {
        seed: opts.seed,
        database: store.kind().into(),
        ..ChaosReport::default()
    };

    // 1. The calls, with the database paused for a while among them.
    say(
        opts,
        started,
        &format!("placing {} calls over {:?}", opts.calls, opts.ramp),
    );
    let pause = {
        let (pauser, pause_at, pause_len) = (store.clone(), opts.ramp / 6, opts.db_pause);
        let quiet = opts.json;
        tokio::spawn(async move {
            tokio::time::sleep(pause_at).await;
            if !quiet {
                eprintln!(
                    "[{:>5.1}s] database paused for {pause_len:?}",
                    started.elapsed().as_secs_f64()
                );
            }
            let t = Instant::now();
            let r = pauser.pause(pause_len).await;
            if !quiet {
                eprintln!("[{:>5.1}s] database back", started.elapsed().as_secs_f64());
            }
            r.map(|()| t.elapsed().as_secs_f64())
        })
    };
    let mut tasks = tokio::task::JoinSet::new();
    place_calls(
        &mut tasks,
        &twilio,
        &mut rng,
        &outcomes,
        0,
        opts.calls,
        opts.ramp,
        |_, rng| Caller::draw(rng),
    )
    .await;
    while tasks.join_next().await.is_some() {}
    report.db_paused_secs = pause
        .await
        .context("the database pause task")?
        .context("pausing the database")?;
    say(opts, started, "every call ended");

    // 2. Nothing left open: warm sessions of calls that never streamed are closed by the status
    //    callback or, at worst, by the reaper after its deadline.
    let until = Instant::now() + Duration::from_secs(ttl_secs + 5);
    loop {
        report.leaked_sockets = fake.open_connections() + fake.held_handshakes();
        if report.leaked_sockets == 0 || Instant::now() >= until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    say(
        opts,
        started,
        &format!("Realtime sockets still open: {}", report.leaked_sockets),
    );

    // 3. A deploy: SIGTERM with calls live.
    let first = opts.calls;
    let mut drained = tokio::task::JoinSet::new();
    // Faults off for these calls: the drain is what is measured.
    fake.set_config(|c| c.faults = None);
    place_calls(
        &mut drained,
        &twilio,
        &mut rng,
        &outcomes,
        first,
        opts.drain_calls,
        Duration::from_millis(50 * opts.drain_calls as u64),
        |i, _| Caller::Drained { short: i % 2 == 0 },
    )
    .await;
    // Every one of them is talking before the signal.
    let live_by = Instant::now() + Duration::from_secs(15);
    while metric_sum(&scrape(&gw.base).await?, "warmline_active_calls", &[])
        < opts.drain_calls as f64
        && Instant::now() < live_by
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = scrape(&gw.base).await?;
    for outcome in ["ok", "failed"] {
        report.reconnects.insert(
            outcome.into(),
            metric_sum(
                &before,
                "warmline_realtime_reconnects_total",
                &[("outcome", outcome)],
            ),
        );
    }
    report.writes_retried = metric_sum(&before, "warmline_store_writes_retried_total", &[]);
    report.records_lost = metric_sum(&before, "warmline_store_records_lost_total", &[]);
    say(
        opts,
        started,
        &format!("SIGTERM with {} calls live", opts.drain_calls),
    );
    let signalled = Instant::now();
    let status = tokio::process::Command::new("kill")
        .arg("-TERM")
        .arg(gw.pid.to_string())
        .status()
        .await?;
    if !status.success() {
        bail!("kill -TERM {} failed", gw.pid);
    }
    let http = reqwest::Client::new();
    for _ in 0..20 {
        if let Ok(r) = http.get(format!("{}/readyz", gw.base)).send().await
            && r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE
        {
            report.readyz_503_on_sigterm = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A call arriving while it drains is still answered (cold: no warm session may outlive it).
    place_calls(
        &mut drained,
        &twilio,
        &mut rng,
        &outcomes,
        first + opts.drain_calls,
        2,
        Duration::from_millis(100),
        |_, _| Caller::Converses,
    )
    .await;
    let limit = Duration::from_secs(opts.drain_secs + 30);
    let exit = tokio::time::timeout(limit, gw.child.wait()).await;
    report.exit_after_secs = signalled.elapsed().as_secs_f64();
    match exit {
        Ok(status) => report.exit_code = status?.code(),
        Err(_) => {
            let _ = gw.child.kill().await;
            say(
                opts,
                started,
                &format!("the gateway did not exit within {limit:?}: killed"),
            );
        }
    }
    while drained.join_next().await.is_some() {}
    say(
        opts,
        started,
        &format!("the gateway exited after {:.1} s", report.exit_after_secs),
    );

    // 4. The records, read after the gateway is gone: what it flushed is all there is.
    report.realtime_faults = fake.faults_met();
    report.realtime_connections = fake.connections_opened();
    let outcomes = std::mem::take(&mut *outcomes.lock().expect("outcomes lock"));
    for (caller, o) in &outcomes {
        let key = serde_json::to_value(caller)?
            .as_str()
            .map_or_else(|| "drained".to_string(), str::to_string);
        *report.callers.entry(key).or_default() += 1;
        if let Some(e) = &o.error
            && !opts.json
        {
            eprintln!("  {} ({caller:?}): {e}", o.call_sid);
        }
    }
    report.calls = count(&outcomes);
    report.records = check_records(store.url(), &outcomes).await?;
    // Records lost after the last scrape (while draining) are in the log.
    let log = std::fs::read_to_string(gw.dir.join("gateway.log")).unwrap_or_default();
    let lost_in_log = log
        .lines()
        .filter(|l| l.contains("\"level\":\"ERROR\"") && l.contains(" lost"))
        .count();
    report.records_lost = report.records_lost.max(lost_in_log as f64);
    Ok(report)
}

fn print_report(r: &ChaosReport) {
    let c = &r.calls;
    println!("chaos run (seed {}, {})", r.seed, r.database);
    println!(
        "calls started {}: hung up while ringing {}, streamed {}, webhook failed {}",
        c.started, c.hung_up_ringing, c.streamed, c.webhook_failed
    );
    println!(
        "streams: completed {}, transferred to fallback {}, ended politely {}, heard no agent {}, failed {}",
        c.completed, c.transferred, c.ended_politely, c.heard_nothing, c.failed
    );
    let mut callers: Vec<_> = r.callers.iter().collect();
    callers.sort();
    println!("callers: {callers:?}");
    let f = &r.realtime_faults;
    println!(
        "Realtime: {} connections; refused {}, hung {}, dropped {}, expired {}; reconnects ok {}, failed {}",
        r.realtime_connections,
        f.refused,
        f.hung,
        f.dropped,
        f.expired,
        r.reconnects.get("ok").copied().unwrap_or(0.0),
        r.reconnects.get("failed").copied().unwrap_or(0.0)
    );
    println!(
        "database paused {:.1} s; writes retried {}; records lost {}",
        r.db_paused_secs, r.writes_retried, r.records_lost
    );
    println!(
        "SIGTERM: /readyz 503 {}; exited after {:.1} s with {:?}",
        r.readyz_503_on_sigterm, r.exit_after_secs, r.exit_code
    );
    let mut reasons: Vec<_> = r.records.by_end_reason.iter().collect();
    reasons.sort();
    println!("end reasons: {reasons:?}");
    println!(
        "leaked Realtime sockets   {:>5}  (must be 0)",
        r.leaked_sockets
    );
    println!(
        "missing call records      {:>5}  (must be 0)",
        r.records.missing
    );
    println!(
        "unfinished call records   {:>5}  (must be 0)",
        r.records.unfinished
    );
    println!(
        "duplicate records         {:>5}  (must be 0)",
        r.records.duplicates
    );
    println!(
        "calls turned away         {:>5}  (must be 0)",
        r.records.turned_away
    );
    println!("{}", if r.clean() { "CLEAN" } else { "NOT CLEAN" });
}
