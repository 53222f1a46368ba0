//! Records that survive (README.md, "What survives what"), on SQLite and Postgres: the database
//! unavailable for longer than the old writer's three attempts (records land once it is back,
//! nothing duplicated); the process killed with records in the spool and restarted (they land
//! once); an already applied record replayed (nothing changes); a torn last spool record
//! (skipped, the rest applied).
//!
//! The outage: on SQLite an exclusive write lock held by another connection (the writer's pool
//! has a 100 ms busy timeout here, so its writes fail instead of waiting); on Postgres the
//! database refuses connections (`ALLOW_CONNECTIONS false`) and its backends are terminated.

use std::{path::PathBuf, sync::Arc, time::Duration};

use chrono::Utc;
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, EntityTrait, PaginatorTrait,
};
use tokio_util::task::TaskTracker;
use warmline::{
    domain::{CallStatus, ClientId},
    metrics::Metrics,
    store::{
        callers,
        calls::{self, FinishedCall, NewCall, TranscriptIn},
        entities::{call, post_call_job, transcript_item},
        writer::{Job, Writer, WriterOptions},
    },
};

use crate::support::{Backend, TestApp};

const CALLER: &str = "+14155550100";

/// The database made unavailable until [`Outage::end`].
enum Outage {
    Sqlite(DatabaseConnection),
    Postgres {
        admin: DatabaseConnection,
        name: String,
    },
}

fn db_url(app: &TestApp) -> String {
    app.state.settings.database.url.expose().to_string()
}

impl Outage {
    async fn begin(app: &TestApp) -> Self {
        let url = db_url(app);
        match app.backend {
            Backend::Sqlite => {
                let mut opts = ConnectOptions::new(url);
                opts.max_connections(1).min_connections(1);
                let lock = Database::connect(opts).await.unwrap();
                lock.execute_unprepared("BEGIN EXCLUSIVE").await.unwrap();
                Outage::Sqlite(lock)
            }
            Backend::Postgres => {
                let (base, name) = url.rsplit_once('/').unwrap();
                let admin_url =
                    std::env::var("TEST_POSTGRES_URL").unwrap_or_else(|_| format!("{base}/test"));
                let admin = Database::connect(&admin_url).await.unwrap();
                admin
                    .execute_unprepared(&format!(
                        "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false"
                    ))
                    .await
                    .unwrap();
                admin
                    .execute_unprepared(&format!(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                    ))
                    .await
                    .unwrap();
                Outage::Postgres {
                    admin,
                    name: name.to_string(),
                }
            }
        }
    }

    async fn end(self) {
        match self {
            Outage::Sqlite(lock) => {
                lock.execute_unprepared("COMMIT").await.unwrap();
                lock.close().await.unwrap();
            }
            Outage::Postgres { admin, name } => {
                admin
                    .execute_unprepared(&format!(
                        "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true"
                    ))
                    .await
                    .unwrap();
                admin.close().await.unwrap();
            }
        }
    }
}

/// The writer's own pool; on SQLite with a short busy timeout so a held lock fails writes.
async fn writer_pool(app: &TestApp) -> DatabaseConnection {
    let mut opts = ConnectOptions::new(db_url(app));
    opts.max_connections(2)
        .acquire_timeout(Duration::from_secs(2))
        .sqlx_logging(false);
    if app.backend == Backend::Sqlite {
        opts.map_sqlx_sqlite_opts(|o| o.busy_timeout(Duration::from_millis(100)));
    }
    Database::connect(opts).await.unwrap()
}

fn options(dir: PathBuf) -> WriterOptions {
    WriterOptions {
        spool_dir: dir,
        spool_max_bytes: 1 << 20,
        retry_for: Duration::from_secs(3600),
        post_call: true,
    }
}

fn spool_dir(app: &TestApp) -> PathBuf {
    // The app's own writer spools elsewhere (`store.spool_dir`): this one is the test's.
    let own = app.state.settings.store.spool_dir(&db_url(app));
    own.with_file_name("test-spool")
}

async fn client(app: &TestApp) -> ClientId {
    let c = app.create_client("Bright Smile", "+15005550006").await;
    ClientId::new(c["id"].as_i64().unwrap() as i32)
}

fn finished(client: ClientId, sid: &str) -> FinishedCall {
    let now = Utc::now();
    let line = |role: &str, text: &str| TranscriptIn {
        role: role.into(),
        text: text.into(),
        at: now,
    };
    FinishedCall {
        call: NewCall {
            channel: warmline::domain::Channel::Voice,
            call_sid: sid.into(),
            client_id: Some(client),
            from: CALLER.into(),
            to: "+15005550006".into(),
            status: CallStatus::Ringing,
            started_at: now,
            caller_trust: None,
        },
        stream_sid: Some(format!("MZ{sid}")),
        status: CallStatus::Completed,
        path: Some("warm".into()),
        time_to_first_audio_ms: Some(300),
        answered_at: Some(now),
        ended_at: now,
        duration_ms: Some(9000),
        end_reason: "caller_hangup".into(),
        summary: None,
        transcript: vec![
            line("agent", "Hello!"),
            line("caller", "Are you open on Saturday?"),
            line("agent", "Yes, mornings."),
        ],
        remember: Some((None, Some(format!("asked on {sid}")))),
        timeline: None,
        chat: None,
    }
}

fn jobs(client: ClientId, sids: &[&str]) -> Vec<Job> {
    sids.iter()
        .flat_map(|sid| {
            let f = finished(client, sid);
            [Job::Insert(f.call.clone()), Job::Finish(Box::new(f))]
        })
        .collect()
}

/// Every call landed exactly once: one row each, its three transcript lines, one post-call job,
/// and the caller counted once per call.
async fn assert_landed_once(app: &TestApp, client: ClientId, sids: &[&str]) {
    let db = &app.state.db;
    assert_eq!(
        call::Entity::find().count(db).await.unwrap(),
        sids.len() as u64
    );
    for sid in sids {
        let c = calls::call_by_sid(db, sid).await.unwrap().unwrap();
        assert_eq!(c.call.status, "completed", "{sid}");
        assert!(c.call.recorded, "{sid}");
        let seqs: Vec<i32> = c.transcript.iter().map(|t| t.seq).collect();
        assert_eq!(seqs, [0, 1, 2], "{sid}: one set of transcript lines");
    }
    assert_eq!(
        transcript_item::Entity::find().count(db).await.unwrap(),
        3 * sids.len() as u64
    );
    assert_eq!(
        post_call_job::Entity::find().count(db).await.unwrap(),
        sids.len() as u64
    );
    let memory = callers::get_caller(db, client, CALLER)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        memory.call_count,
        sids.len() as i32,
        "call_count once per call"
    );
}

fn lost(metrics: &Metrics) -> Vec<String> {
    metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("warmline_store_records_lost_total{") && !l.ends_with(" 0"))
        .map(str::to_string)
        .collect()
}

async fn wait_for_retries(metrics: &Metrics, at_least: u64) {
    for _ in 0..200 {
        if metrics.store_writes_retried.get() >= at_least {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the writer never retried");
}

crate::both_backends!(records_land_once_after_a_long_outage, |app| {
    let client = client(app).await;
    let pool = writer_pool(app).await;
    let metrics = Arc::new(Metrics::new());
    let tracker = TaskTracker::new();
    let writer = Writer::start(pool, metrics.clone(), options(spool_dir(app)), &tracker).unwrap();
    let outage = Outage::begin(app).await;
    let sids = ["CA1", "CA2", "CA3"];
    for job in jobs(client, &sids) {
        // Queued at once although the database is down.
        let by = tokio::time::Instant::now() + Duration::from_secs(2);
        assert!(writer.submit_by(job, by).await, "in the spool in time");
    }
    wait_for_retries(&metrics, 3).await;
    // Longer than the old writer's window (three attempts 100 and 200 ms apart).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(metrics.store_queue_depth.get(), 6, "nothing written yet");
    assert!(metrics.store_oldest_unwritten.get() >= 3);
    outage.end().await;
    writer.flush(Duration::from_secs(60)).await;
    assert_eq!(metrics.store_queue_depth.get(), 0);
    assert_eq!(metrics.store_oldest_unwritten.get(), 0);
    assert_landed_once(app, client, &sids).await;
    assert!(lost(&metrics).is_empty(), "{:?}", lost(&metrics));
});

/// Runs a writer in a runtime of its own with the database down, queues `jobs`, waits until it
/// has retried, then drops the runtime: the process killed with the records in its spool.
async fn spool_and_kill(app: &TestApp, jobs: Vec<Job>) {
    let outage = Outage::begin(app).await;
    let url = db_url(app);
    let backend = app.backend;
    let dir = spool_dir(app);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            // A lazy pool: on Postgres the database refuses connections already.
            let mut opts = ConnectOptions::new(url);
            opts.connect_lazy(true)
                .acquire_timeout(Duration::from_secs(2));
            if backend == Backend::Sqlite {
                opts.map_sqlx_sqlite_opts(|o| o.busy_timeout(Duration::from_millis(100)));
            }
            let pool = Database::connect(opts).await.unwrap();
            let metrics = Arc::new(Metrics::new());
            let tracker = TaskTracker::new();
            let writer = Writer::start(pool, metrics.clone(), options(dir), &tracker).unwrap();
            for job in jobs {
                writer.submit(job).await;
            }
            wait_for_retries(&metrics, 2).await;
        });
        // Killed: every task dropped mid-retry, nothing flushed.
        drop(rt);
    })
    .join()
    .unwrap();
    outage.end().await;
}

async fn restart_writer(app: &TestApp, metrics: Arc<Metrics>) -> Writer {
    let pool = writer_pool(app).await;
    let tracker = TaskTracker::new();
    let writer = Writer::start(pool, metrics, options(spool_dir(app)), &tracker).unwrap();
    writer.flush(Duration::from_secs(60)).await;
    writer
}

crate::both_backends!(
    records_spooled_before_a_kill_land_once_after_restart,
    |app| {
        let client = client(app).await;
        let sids = ["CA1", "CA2"];
        spool_and_kill(app, jobs(client, &sids)).await;
        assert_eq!(call::Entity::find().count(&app.state.db).await.unwrap(), 0);
        let metrics = Arc::new(Metrics::new());
        restart_writer(app, metrics.clone()).await;
        assert_landed_once(app, client, &sids).await;
        assert!(lost(&metrics).is_empty(), "{:?}", lost(&metrics));
        // A second restart finds nothing left to do.
        let again = Arc::new(Metrics::new());
        restart_writer(app, again.clone()).await;
        assert_landed_once(app, client, &sids).await;
        assert!(lost(&again).is_empty());
    }
);

crate::both_backends!(replaying_applied_records_changes_nothing, |app| {
    let client = client(app).await;
    let sids = ["CA1", "CA2"];
    let metrics = Arc::new(Metrics::new());
    let pool = writer_pool(app).await;
    let tracker = TaskTracker::new();
    let dir = spool_dir(app);
    let writer = Writer::start(pool, metrics.clone(), options(dir.clone()), &tracker).unwrap();
    for job in jobs(client, &sids) {
        writer.submit(job).await;
    }
    writer.flush(Duration::from_secs(30)).await;
    drop(writer);
    tracker.close();
    tracker.wait().await;
    assert_landed_once(app, client, &sids).await;
    // A crash between the commit and saving the progress: the spool replays everything.
    let progress = dir.join("applied");
    std::fs::remove_file(&progress).unwrap();
    restart_writer(app, metrics.clone()).await;
    assert!(progress.exists(), "the records were applied again");
    assert_landed_once(app, client, &sids).await;
    // And the same finished call saved directly once more.
    calls::finish_call_with(&app.state.db, &finished(client, "CA1"), true)
        .await
        .unwrap();
    assert_landed_once(app, client, &sids).await;
    assert!(lost(&metrics).is_empty(), "{:?}", lost(&metrics));
});

crate::both_backends!(
    a_torn_last_spool_record_is_skipped_and_the_rest_applied,
    |app| {
        let client = client(app).await;
        let sids = ["CA1", "CA2"];
        spool_and_kill(app, jobs(client, &sids)).await;
        // The crash tore a third call's record halfway.
        let dir = spool_dir(app);
        let segment = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .max()
            .unwrap();
        let whole = std::fs::read(&segment).unwrap();
        let mut torn = whole.clone();
        let last_line_start = whole[..whole.len() - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        torn.extend_from_slice(&whole[last_line_start..whole.len() - 40]);
        std::fs::write(&segment, &torn).unwrap();
        let metrics = Arc::new(Metrics::new());
        restart_writer(app, metrics.clone()).await;
        assert_landed_once(app, client, &sids).await;
        assert_eq!(
            lost(&metrics),
            ["warmline_store_records_lost_total{reason=\"corrupt\"} 1"]
        );
        assert_eq!(
            std::fs::read(&segment).unwrap(),
            whole,
            "the torn tail cut off"
        );
    }
);

crate::both_backends!(
    a_record_failing_beyond_the_retry_window_is_counted_lost,
    |app| {
        let client = client(app).await;
        let metrics = Arc::new(Metrics::new());
        let tracker = TaskTracker::new();
        let mut opts = options(spool_dir(app));
        opts.retry_for = Duration::from_secs(1);
        let writer =
            Writer::start(writer_pool(app).await, metrics.clone(), opts, &tracker).unwrap();
        let outage = Outage::begin(app).await;
        let sids = ["CA1"];
        for job in jobs(client, &sids) {
            writer.submit(job).await;
        }
        for _ in 0..200 {
            if lost(&metrics).len() == 1 && metrics.store_queue_depth.get() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            lost(&metrics),
            ["warmline_store_records_lost_total{reason=\"retry_expired\"} 2"],
            "the insert and the finished call, each given up after store.retry_for_secs"
        );
        assert_eq!(metrics.store_errors.get(), 2);
        outage.end().await;
        writer.flush(Duration::from_secs(30)).await;
        assert_eq!(call::Entity::find().count(&app.state.db).await.unwrap(), 0);
        // Given up for good: a restart does not bring them back.
        restart_writer(app, metrics.clone()).await;
        assert_eq!(call::Entity::find().count(&app.state.db).await.unwrap(), 0);
    }
);

crate::both_backends!(
    a_record_beyond_the_spool_bound_is_refused_not_waited_for,
    |app| {
        let client = client(app).await;
        let metrics = Arc::new(Metrics::new());
        let tracker = TaskTracker::new();
        let mut opts = options(spool_dir(app));
        opts.spool_max_bytes = 2048;
        let writer =
            Writer::start(writer_pool(app).await, metrics.clone(), opts, &tracker).unwrap();
        let small = finished(client, "CA1");
        let mut big = finished(client, "CA2");
        big.transcript[1].text = "x".repeat(4096);
        writer.submit(Job::Finish(Box::new(small))).await;
        let by = tokio::time::Instant::now() + Duration::from_secs(5);
        assert!(
            !writer.submit_by(Job::Finish(Box::new(big)), by).await,
            "refused"
        );
        writer.flush(Duration::from_secs(30)).await;
        assert_eq!(
            lost(&metrics),
            ["warmline_store_records_lost_total{reason=\"spool_full\"} 1"]
        );
        assert!(
            calls::call_by_sid(&app.state.db, "CA1")
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            calls::call_by_sid(&app.state.db, "CA2")
                .await
                .unwrap()
                .is_none()
        );
    }
);

/// A real call through the gateway whose end comes while the database is unavailable: the call
/// ends normally (the caller waits for nothing), its record waits in the spool and lands once
/// the database is back.
async fn a_call_ending_during_an_outage_is_saved_once_it_is_back(backend: Backend) {
    use sim::{audio::clips, realtime::FakeConfig, twilio::Step};
    let wait = Duration::from_secs(20);
    let gw = crate::support::gateway_on(backend, FakeConfig::instant(), "").await;
    let placed = gw.place_call().await;
    assert_eq!(placed.status, 200);
    // The webhook's own writes (ringing row, webhook_ms) land first.
    for _ in 0..100 {
        if gw.app.state.metrics.store_queue_depth.get() == 0
            && calls::call_by_sid(&gw.app.state.db, &placed.call_sid)
                .await
                .unwrap()
                .is_some_and(|c| c.call.webhook_ms.is_some())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let outage = Outage::begin(&gw.app).await;
    let script = [
        Step::WaitForAgentQuiet(wait),
        Step::Say(clips::question()),
        Step::WaitForAgentAudio(wait),
        Step::WaitForAgentQuiet(wait),
        Step::HangUp,
    ];
    let report = gw.stream(&placed, &script).await;
    assert_eq!(report.closed_by.as_deref(), Some("caller"), "{report:?}");
    assert!(report.media_messages > 0, "the caller heard the agent");
    let metrics = gw.app.state.metrics.clone();
    // The stream's claim (`stream_sid`) and the finished call wait.
    for _ in 0..200 {
        if metrics.store_queue_depth.get() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        metrics.store_queue_depth.get(),
        2,
        "the claim and the finished call wait"
    );
    if backend == Backend::Postgres {
        wait_for_retries(&metrics, 2).await;
    }
    outage.end().await;
    let saved = gw
        .ended_call_within(&placed.call_sid, Duration::from_secs(60))
        .await;
    assert_eq!(saved.call.status, "completed");
    assert!(saved.call.recorded);
    let seqs: Vec<i32> = saved.transcript.iter().map(|t| t.seq).collect();
    assert!(!seqs.is_empty());
    assert_eq!(seqs, (0..seqs.len() as i32).collect::<Vec<_>>());
    assert_eq!(
        call::Entity::find().count(&gw.app.state.db).await.unwrap(),
        1
    );
    assert!(lost(&metrics).is_empty(), "{:?}", lost(&metrics));
    gw.app.shutdown().await;
}

#[tokio::test]
async fn a_call_ending_during_an_outage_is_saved_once_it_is_back_on_sqlite() {
    a_call_ending_during_an_outage_is_saved_once_it_is_back(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_call_ending_during_an_outage_is_saved_once_it_is_back_on_postgres() {
    if crate::support::postgres_skipped() {
        return;
    }
    a_call_ending_during_an_outage_is_saved_once_it_is_back(Backend::Postgres).await;
}

/// The database unavailable while calls come in (Postgres refusing connections; on SQLite a
/// held write lock leaves reads working, so there is nothing to answer from memory): the voice
/// webhook answers from the client it read before, the call streams, a Realtime failure still
/// ends at the fallback number (the after-stream request decides from what this instance
/// remembers of the call's end), and the records land once the database is back.
#[tokio::test]
async fn calls_are_answered_and_put_through_while_postgres_is_down() {
    use sim::{
        realtime::{FakeConfig, Mode},
        twilio::{Step, Twiml},
    };
    if crate::support::postgres_skipped() {
        return;
    }
    let wait = Duration::from_secs(20);
    let gw = crate::support::gateway_on(
        Backend::Postgres,
        FakeConfig::instant(),
        "[call]\nrealtime_reconnects = 0\n",
    )
    .await;
    gw.update_client(&serde_json::json!({"name": "Bright Smile",
        "phone_numbers": [crate::support::CLIENT_NUMBER],
        "instructions": "You are the receptionist.", "greeting": "Thanks for calling!",
        "voice": "marin", "fallback_number": "+15005550008"}))
        .await;
    // A first call reads the client (and the instance remembers it).
    let first = gw.place_call().await;
    let report = gw
        .stream(&first, &[Step::WaitForAgentQuiet(wait), Step::HangUp])
        .await;
    assert_eq!(report.closed_by.as_deref(), Some("caller"));

    let outage = Outage::begin(&gw.app).await;
    let placed = gw.place_call().await;
    assert!(
        matches!(placed.twiml, Twiml::Stream { .. }),
        "answered from the remembered client, not turned away: {}",
        placed.body
    );
    let streaming = gw.stream_in_background(
        &placed,
        vec![Step::WaitForAgentQuiet(wait), Step::WaitForClose(wait)],
    );
    // Its own session relays the caller (the first call's appends are in the fake's log too).
    let before: usize = gw
        .fake
        .connections()
        .iter()
        .map(|c| c.of_type("input_audio_buffer.append").len())
        .sum();
    assert!(
        gw.fake
            .wait_event("input_audio_buffer.append", before + 1, wait)
            .await
    );
    // Realtime goes away mid-call, and no reconnect is allowed: the call ends at once.
    gw.fake.set_config(|c| c.mode = Mode::Down);
    gw.fake.drop_connections();
    let report = streaming.await.unwrap();
    assert_eq!(report.closed_by.as_deref(), Some("gateway"), "{report:?}");
    assert!(
        matches!(&report.after_stream, Some(Twiml::Dial { number, .. }) if number == "+15005550008"),
        "put through to the fallback while the database is down: {:?}",
        report.after_stream
    );
    // A number this instance never read cannot be answered: turned away, and recorded.
    let unread = gw
        .twilio
        .place_call(&sim::twilio::CallSpec::new("+14155550199", "+15005550199"))
        .await
        .unwrap();
    assert!(
        matches!(unread.twiml, Twiml::SayHangup { .. }),
        "{}",
        unread.body
    );
    outage.end().await;
    let turned_away = gw.ended_call(&unread.call_sid).await;
    assert_eq!(turned_away.call.status, "failed");
    assert!(
        turned_away
            .call
            .end_reason
            .as_deref()
            .is_some_and(|r| r.starts_with("turned away: database lookup")),
        "{:?}",
        turned_away.call.end_reason
    );
    let saved = gw.ended_call(&placed.call_sid).await;
    assert!(saved.call.recorded);
    assert!(
        saved
            .call
            .end_reason
            .as_deref()
            .is_some_and(|r| r.starts_with("realtime_closed")),
        "{:?}",
        saved.call.end_reason
    );
    // A client changed through the admin API is forgotten at once: in the next outage its
    // number is not answered from what was read before the change.
    gw.update_client(&serde_json::json!({"name": "Bright Smile",
        "phone_numbers": [crate::support::CLIENT_NUMBER],
        "instructions": "You are the receptionist.", "greeting": "Welcome!",
        "voice": "marin"}))
        .await;
    let outage = Outage::begin(&gw.app).await;
    let after_change = gw.place_call().await;
    assert!(
        matches!(after_change.twiml, Twiml::SayHangup { .. }),
        "{}",
        after_change.body
    );
    outage.end().await;
    gw.app.shutdown().await;
}
