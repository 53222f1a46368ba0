//! The call-record writer, the one way call records reach the database (README.md, "What
//! survives what"): a submitted [`Job`] is appended to the local spool (`store::spool`,
//! fsync'd in batches: one fsync for every job that arrived meanwhile) before it counts as
//! queued; one task then applies the jobs to the database in order, retrying with backoff
//! (100 ms doubling to 30 s) for as long as `store.retry_for_secs`, and records its progress in
//! the spool. Records the spool still holds at start (the process crashed or stopped with the
//! database down) are applied before new ones. Nothing on the relay or webhook path waits for
//! the database: submitting waits only for the spool's fsync.
//!
//! Who queues what:
//! - the voice webhook (`twilio::webhook`): the `ringing` (or `rejected`) row, then its
//!   `webhook_ms`;
//! - the status callback (`twilio::webhook`) and the reaper (`realtime::reaper`): a call that
//!   ended before its media stream ([`CallPatch::ended`]);
//! - the media stream (`bridge::socket`): the finished call, its transcript and caller memory.
//!
//! One queue keeps each call's writes in order (the insert lands before a patch of the same
//! call). Every job is idempotent (`store::calls`), so one applied again after a crash changes
//! nothing. Shutdown: [`Writer::flush`] waits until every write queued before it is done (or
//! its limit passes: the rest stays in the spool for the next start). A finished call worth
//! summarising gets its post-call job in the same transaction when `post_call.enabled`
//! (`calls::finish_call_with`).
//!
//! Metrics: `warmline_store_queue_depth`, `warmline_store_oldest_unwritten_seconds`,
//! `warmline_store_writes_retried_total`, `warmline_store_records_lost_total{reason}` (reasons:
//! [`LOST_REASONS`]); `warmline_store_errors_total` keeps counting the writes that failed for
//! good (or could not be queued), i.e. every record lost.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};
use sea_orm::{DatabaseConnection, DbErr, SqlErr};
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use super::{
    StoreError,
    calls::{self, CallPatch, FinishedCall, NewCall},
    spool::{self, Position, Spool, SpoolError},
};
use crate::metrics::Metrics;

/// `warmline_store_records_lost_total{reason}` values: `spool_full` (refused beyond
/// `store.spool_max_bytes`), `queue_full` (more jobs waiting for the spool than
/// [`SUBMIT_QUEUE`]), `stopped` (submitted after the writer stopped), `retry_expired` (the
/// database failed for longer than `store.retry_for_secs`), `rejected` (the database refused it
/// for good: a constraint), `corrupt` (a spool record unreadable at start).
pub const LOST_REASONS: &[&str] = &[
    "spool_full",
    "queue_full",
    "stopped",
    "retry_expired",
    "rejected",
    "corrupt",
];

/// Jobs waiting for the spool's fsync at most; one beyond is refused (and counted lost).
pub const SUBMIT_QUEUE: usize = 65_536;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The retry window of [`execute`] (the default of `store.retry_for_secs`).
const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(86_400);
const BATCH: usize = 256;

/// A queued write.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum Job {
    /// Insert the ringing call (idempotent).
    Insert(NewCall),
    /// Patch a call by CallSid.
    Patch(String, CallPatch),
    /// Save a finished call, its transcript and the caller memory.
    Finish(Box<FinishedCall>),
    /// Reply once everything before it is written (never spooled).
    #[serde(skip)]
    Flush(oneshot::Sender<()>),
}

impl Job {
    /// The call it writes, and what it does (for logs).
    fn describe(&self) -> (&str, &'static str) {
        match self {
            Job::Insert(n) => (&n.call_sid, "insert call"),
            Job::Patch(sid, _) => (sid, "update call"),
            Job::Finish(f) => (&f.call.call_sid, "save finished call"),
            Job::Flush(_) => ("", "flush"),
        }
    }
}

/// A job as the spool stores it: when it was queued (its age counts from then, across
/// restarts) and the job.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Spooled {
    queued_at: DateTime<Utc>,
    job: Job,
}

/// A job on its way to the database: where it ends in the spool (none if the spool could not
/// take it and it lives in memory only).
struct Entry {
    spooled: Spooled,
    pos: Option<Position>,
}

/// A submission to the spool task.
struct Submission {
    job: Job,
    queued_at: DateTime<Utc>,
    acked: Option<oneshot::Sender<()>>,
}

/// What the writer needs from the settings (`[store]`, `post_call.enabled`).
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// The spool's directory (`StoreSettings::spool_dir`).
    pub spool_dir: PathBuf,
    /// `store.spool_max_bytes`.
    pub spool_max_bytes: u64,
    /// `store.retry_for_secs`.
    pub retry_for: Duration,
    /// Whether finished calls get a post-call job (`post_call.enabled`).
    pub post_call: bool,
}

/// Handle to the writer task.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Submission>,
    metrics: Arc<Metrics>,
}

impl Writer {
    /// Opens the spool, queues the records it still holds (counting unreadable ones lost) and
    /// starts the spool and writer tasks on `tracker`.
    pub fn start(
        db: DatabaseConnection,
        metrics: Arc<Metrics>,
        options: WriterOptions,
        tracker: &TaskTracker,
    ) -> Result<Self, SpoolError> {
        let (spool, recovered) = Spool::open(&options.spool_dir, options.spool_max_bytes)?;
        let spool = Arc::new(Mutex::new(spool));
        let (to_db, from_spool) = mpsc::unbounded_channel::<Entry>();
        for _ in 0..recovered.corrupt {
            lost(&metrics, "corrupt");
        }
        let mut replayed = 0usize;
        for (payload, pos) in recovered.records {
            match serde_json::from_slice::<Spooled>(&payload) {
                Ok(spooled) => {
                    metrics.store_queue_depth.inc();
                    replayed += 1;
                    // The receiver is alive: it is in this function.
                    let _ = to_db.send(Entry {
                        spooled,
                        pos: Some(pos),
                    });
                }
                Err(e) => {
                    lost(&metrics, "corrupt");
                    tracing::error!(error = %e, "spool: an unreadable record skipped");
                }
            }
        }
        if replayed > 0 {
            tracing::info!(
                records = replayed,
                dir = %options.spool_dir.display(),
                "spool: replaying call records not yet in the database"
            );
        }
        let (tx, rx) = mpsc::channel::<Submission>(SUBMIT_QUEUE);
        tracker.spawn(spool_task(rx, spool.clone(), to_db, metrics.clone()));
        tracker.spawn(db_task(from_spool, spool, db, metrics.clone(), options));
        Ok(Self { tx, metrics })
    }

    /// Queues a write: returns once it is in the spool (fsync'd), or refused and counted lost.
    pub async fn submit(&self, job: Job) {
        self.submit_by(job, far_future()).await;
    }

    /// Queues a write, waiting for the spool at most until `deadline` (the webhook must answer
    /// Twilio in time even when the disk is slow); returns false if the write was refused
    /// (logged and counted in `warmline_store_records_lost_total`) or is not yet known to be in
    /// the spool by then (it stays queued).
    pub async fn submit_by(&self, job: Job, deadline: tokio::time::Instant) -> bool {
        let (ack, acked) = oneshot::channel();
        if !self.hand_over(job, Some(ack)) {
            return false;
        }
        matches!(tokio::time::timeout_at(deadline, acked).await, Ok(Ok(())))
    }

    /// Queues a write without waiting for the spool's fsync (the webhook and the status
    /// callback: Twilio is waiting, and these rows are small; a finished call, which carries
    /// its own ringing row, waits with [`Writer::submit`]). False if it was refused (logged
    /// and counted).
    pub fn enqueue(&self, job: Job) -> bool {
        self.hand_over(job, None)
    }

    /// Hands `job` to the spool task without blocking; false (logged and counted as lost) if
    /// its queue is full or the writer is gone.
    fn hand_over(&self, job: Job, acked: Option<oneshot::Sender<()>>) -> bool {
        let submission = Submission {
            job,
            queued_at: Utc::now(),
            acked,
        };
        if let Err(e) = self.tx.try_send(submission) {
            let (reason, why, job) = match e {
                mpsc::error::TrySendError::Full(s) => ("queue_full", "spool queue full", s.job),
                mpsc::error::TrySendError::Closed(s) => ("stopped", "writer is gone", s.job),
            };
            lost(&self.metrics, reason);
            let (sid, what) = job.describe();
            tracing::error!(call_sid = %sid, "call-record {why}: {what} lost");
            return false;
        }
        true
    }

    /// Waits (up to `limit`) until every write queued so far is done.
    pub async fn flush(&self, limit: Duration) {
        let (tx, rx) = oneshot::channel();
        let submission = Submission {
            job: Job::Flush(tx),
            queued_at: Utc::now(),
            acked: None,
        };
        let done = async { self.tx.send(submission).await.is_ok() && rx.await.is_ok() };
        if !matches!(tokio::time::timeout(limit, done).await, Ok(true)) {
            tracing::warn!(
                "shutdown: call-record writer did not finish in time (the spool keeps the rest)"
            );
        }
    }
}

/// Counts a lost record (in `store_records_lost{reason}` and `store_errors`).
fn lost(metrics: &Metrics, reason: &'static str) {
    Metrics::inc_reason(&metrics.store_records_lost, reason);
    metrics.store_errors.inc();
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365)
}

/// Appends what is submitted to the spool, a batch per write and fsync, then hands it on.
async fn spool_task(
    mut rx: mpsc::Receiver<Submission>,
    spool: Arc<Mutex<Spool>>,
    to_db: mpsc::UnboundedSender<Entry>,
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let subs = std::mem::take(&mut batch);
        let encoded: Vec<Option<Vec<u8>>> = subs
            .iter()
            .map(|s| match &s.job {
                Job::Flush(_) => None,
                job => Some(encode(s.queued_at, job)),
            })
            .collect();
        let records: Vec<Vec<u8>> = encoded.iter().flatten().cloned().collect();
        let spool = spool.clone();
        let appended = tokio::task::spawn_blocking(move || lock(&spool).append(&records)).await;
        let mut positions = match appended {
            Ok(Ok(p)) => p.into_iter().map(Ok).collect::<Vec<_>>(),
            Ok(Err(e)) => {
                tracing::error!(error = %e, source = ?std::error::Error::source(&e), "spool: write failed; these call records are kept in memory only");
                vec![Err(()); encoded.iter().flatten().count()]
            }
            Err(e) => {
                tracing::error!(error = %e, "spool: write task failed; these call records are kept in memory only");
                vec![Err(()); encoded.iter().flatten().count()]
            }
        }
        .into_iter();
        for (sub, bytes) in subs.into_iter().zip(encoded) {
            let pos = match (&sub.job, bytes) {
                (Job::Flush(_), _) | (_, None) => None,
                (_, Some(_)) => match positions.next() {
                    Some(Ok(Some(pos))) => Some(pos),
                    Some(Ok(None)) => {
                        lost(&metrics, "spool_full");
                        let (sid, what) = sub.job.describe();
                        tracing::error!(call_sid = %sid, "call-record spool full (store.spool_max_bytes): {what} lost");
                        continue;
                    }
                    _ => None,
                },
            };
            if !matches!(sub.job, Job::Flush(_)) {
                metrics.store_queue_depth.inc();
            }
            let entry = Entry {
                spooled: Spooled {
                    queued_at: sub.queued_at,
                    job: sub.job,
                },
                pos,
            };
            if to_db.send(entry).is_err() {
                tracing::error!("call-record writer is gone");
                return;
            }
            if let Some(ack) = sub.acked {
                let _ = ack.send(());
            }
        }
    }
}

fn encode(queued_at: DateTime<Utc>, job: &Job) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Ref<'a> {
        queued_at: DateTime<Utc>,
        job: &'a Job,
    }
    // Serialising plain data into a Vec cannot fail (Flush is never encoded).
    let json = serde_json::to_vec(&Ref { queued_at, job }).unwrap_or_default();
    spool::encode(&json)
}

fn lock(spool: &Mutex<Spool>) -> std::sync::MutexGuard<'_, Spool> {
    spool
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Applies the queued jobs in order and records progress in the spool.
async fn db_task(
    mut rx: mpsc::UnboundedReceiver<Entry>,
    spool: Arc<Mutex<Spool>>,
    db: DatabaseConnection,
    metrics: Arc<Metrics>,
    options: WriterOptions,
) {
    while let Some(entry) = rx.recv().await {
        let Entry { spooled, pos } = entry;
        if let Job::Flush(reply) = spooled.job {
            if rx.is_empty() {
                metrics.store_oldest_unwritten.set(0);
            }
            let _ = reply.send(());
            continue;
        }
        // In order: this is the oldest record not yet in the database.
        let age = (Utc::now() - spooled.queued_at).num_seconds().max(0);
        metrics.store_oldest_unwritten.set(age);
        let deadline = spooled.queued_at
            + chrono::Duration::from_std(options.retry_for).unwrap_or(chrono::Duration::MAX);
        apply(
            &db,
            &metrics,
            options.post_call,
            &spooled.job,
            spooled.queued_at,
            deadline,
        )
        .await;
        metrics.store_queue_depth.dec();
        if rx.is_empty() {
            metrics.store_oldest_unwritten.set(0);
        }
        if let Some(pos) = pos {
            let spool = spool.clone();
            let saved = tokio::task::spawn_blocking(move || lock(&spool).mark_applied(pos)).await;
            if let Ok(Err(e)) = saved {
                tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "spool: progress not saved (records will be applied again: harmless)");
            }
        }
    }
}

/// Whether a failure will not go away by retrying (a constraint refused the write).
fn permanent(e: &StoreError) -> bool {
    match e {
        StoreError::Conflict(_) | StoreError::NotFound(_) => true,
        StoreError::Db(e) => matches!(
            DbErr::sql_err(e),
            Some(SqlErr::UniqueConstraintViolation(_) | SqlErr::ForeignKeyConstraintViolation(_))
        ),
    }
}

/// The delay before retry number `retry` (1-based): 100 ms doubling to 30 s.
pub fn backoff(retry: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(
            1u32.checked_shl(retry.saturating_sub(1))
                .unwrap_or(u32::MAX),
        )
        .min(MAX_BACKOFF)
}

/// Applies one job, retrying until it lands, fails for good, or `deadline` passes; returns
/// whether it landed (else it is logged and counted lost).
async fn apply(
    db: &DatabaseConnection,
    metrics: &Metrics,
    post_call: bool,
    job: &Job,
    queued_at: DateTime<Utc>,
    deadline: DateTime<Utc>,
) -> bool {
    let (sid, what) = job.describe();
    let mut retry = 0u32;
    loop {
        let result: Result<(), StoreError> = match job {
            Job::Insert(n) => calls::insert_call(db, n).await,
            Job::Patch(sid, p) => calls::update_call(db, sid, p).await.map(|_| ()),
            Job::Finish(f) => calls::finish_call_with(db, f, post_call).await,
            Job::Flush(_) => Ok(()),
        };
        let e = match result {
            Ok(()) => return true,
            Err(e) => e,
        };
        if permanent(&e) {
            lost(metrics, "rejected");
            tracing::error!(call_sid = %sid, error = %e, source = ?std::error::Error::source(&e), "{what} refused by the database; record lost");
            return false;
        }
        retry += 1;
        let now = Utc::now();
        let wait = backoff(retry);
        let left = (deadline - now).to_std().unwrap_or_default();
        if left.is_zero() {
            lost(metrics, "retry_expired");
            tracing::error!(call_sid = %sid, error = %e, source = ?std::error::Error::source(&e), "{what} failed for longer than store.retry_for_secs; record lost");
            return false;
        }
        metrics.store_writes_retried.inc();
        if retry == 1 || retry.is_power_of_two() {
            tracing::warn!(call_sid = %sid, retry, error = %e, source = ?std::error::Error::source(&e), "{what} failed; retrying");
        }
        // Sleep in steps of at most a second so the oldest-unwritten gauge keeps moving.
        let until = tokio::time::Instant::now() + wait.min(left);
        loop {
            let age = (Utc::now() - queued_at).num_seconds().max(0);
            metrics.store_oldest_unwritten.set(age);
            let now = tokio::time::Instant::now();
            if now >= until {
                break;
            }
            tokio::time::sleep((until - now).min(Duration::from_secs(1))).await;
        }
    }
}

/// Runs one job as the writer does (retrying while the database fails, for up to a day), one
/// step callable from tests.
pub async fn execute(db: &DatabaseConnection, metrics: &Metrics, post_call: bool, job: Job) {
    if let Job::Flush(reply) = job {
        let _ = reply.send(());
        return;
    }
    let now = Utc::now();
    let window = chrono::Duration::from_std(DEFAULT_RETRY_FOR).unwrap_or(chrono::Duration::MAX);
    apply(db, metrics, post_call, &job, now, now + window).await;
}

/// The writer's options from the settings.
pub fn options(settings: &crate::config::Settings) -> WriterOptions {
    WriterOptions {
        spool_dir: settings.store.spool_dir(settings.database.url.expose()),
        spool_max_bytes: settings.store.spool_max_bytes,
        retry_for: settings.store.retry_for(),
        post_call: settings.post_call.enabled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_100_ms_to_30_s() {
        let got: Vec<u64> = [1, 2, 3, 4, 9, 10, 11, 40, u32::MAX]
            .into_iter()
            .map(|r| backoff(r).as_millis() as u64)
            .collect();
        assert_eq!(
            got,
            [100, 200, 400, 800, 25_600, 30_000, 30_000, 30_000, 30_000]
        );
    }

    #[test]
    fn a_spooled_job_reads_back_as_it_was() {
        let at = Utc::now();
        let job = Job::Patch(
            "CA1".into(),
            CallPatch {
                webhook_ms: Some(12),
                ..Default::default()
            },
        );
        let line = encode(at, &job);
        let scan = spool::scan(&line, 0);
        let back: Spooled = serde_json::from_slice(&scan.records[0].0).unwrap();
        assert_eq!(back.queued_at, at);
        match back.job {
            Job::Patch(sid, p) => assert_eq!((sid.as_str(), p.webhook_ms), ("CA1", Some(12))),
            other => panic!("{other:?}"),
        }
    }
}
