//! The call-record writer, the one way call records reach the database: one task drains a
//! bounded queue of [`Job`]s so that nothing on the relay or webhook path waits for the database.
//! A failed write is retried a few times, then logged and counted in
//! `warmline_store_errors_total`.
//!
//! Who queues what:
//! - the voice webhook (`twilio::webhook`): the `ringing` (or `rejected`) row, then its
//!   `webhook_ms`;
//! - the status callback (`twilio::webhook`) and the reaper (`realtime::reaper`): a call that
//!   ended before its media stream ([`CallPatch::ended`]);
//! - the media stream (`bridge::socket`): the finished call, its transcript and caller memory.
//!
//! One queue keeps each call's writes in order (the insert lands before a patch of the same
//! call). Shutdown: [`Writer::flush`] waits until every write queued before it is done. A
//! finished call worth summarising gets its post-call job in the same transaction when
//! `post_call.enabled` (`calls::finish_call_with`).

use std::{sync::Arc, time::Duration};

use sea_orm::DatabaseConnection;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use super::{
    StoreError,
    calls::{self, CallPatch, FinishedCall, NewCall},
};
use crate::metrics::Metrics;

/// A queued write.
#[derive(Debug)]
pub enum Job {
    /// Insert the ringing call (idempotent).
    Insert(NewCall),
    /// Patch a call by CallSid.
    Patch(String, CallPatch),
    /// Save a finished call, its transcript and the caller memory.
    Finish(Box<FinishedCall>),
    /// Reply once everything before it is written.
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

/// Handle to the writer task.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
    metrics: Arc<Metrics>,
}

const QUEUE: usize = 4096;
const ATTEMPTS: u32 = 3;

impl Writer {
    /// Starts the writer task on `tracker`; `post_call`: whether finished calls get a post-call
    /// job (`post_call.enabled`).
    pub fn start(
        db: DatabaseConnection,
        metrics: Arc<Metrics>,
        post_call: bool,
        tracker: &TaskTracker,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        let task_metrics = metrics.clone();
        tracker.spawn(async move {
            while let Some(job) = rx.recv().await {
                execute(&db, &task_metrics, post_call, job).await;
            }
        });
        Self { tx, metrics }
    }

    /// Queues a write (waits only if the queue is full).
    pub async fn submit(&self, job: Job) {
        if self.tx.send(job).await.is_err() {
            tracing::error!("call-record writer is gone; a write was lost");
        }
    }

    /// Queues a write, waiting for room at most until `deadline` (the webhook must answer
    /// Twilio in time even when the database is slow); returns false, logs and counts it in
    /// `warmline_store_errors_total` if the write could not be queued.
    pub async fn submit_by(&self, job: Job, deadline: tokio::time::Instant) -> bool {
        let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
        let e = match self.tx.send_timeout(job, wait).await {
            Ok(()) => return true,
            Err(e) => e,
        };
        self.metrics.store_errors.inc();
        let why = match &e {
            mpsc::error::SendTimeoutError::Timeout(_) => "queue full (database too slow)",
            mpsc::error::SendTimeoutError::Closed(_) => "writer is gone",
        };
        let job = e.into_inner();
        let (sid, what) = job.describe();
        tracing::error!(call_sid = %sid, "call-record {why}: {what} dropped");
        false
    }

    /// Waits (up to `limit`) until every write queued so far is done.
    pub async fn flush(&self, limit: Duration) {
        let (tx, rx) = oneshot::channel();
        self.submit(Job::Flush(tx)).await;
        if tokio::time::timeout(limit, rx).await.is_err() {
            tracing::warn!("shutdown: call-record writer did not finish in time");
        }
    }
}

/// Runs one job with retries (one step, callable from tests).
pub async fn execute(db: &DatabaseConnection, metrics: &Metrics, post_call: bool, job: Job) {
    let (sid, what) = job.describe();
    let sid = sid.to_string();
    if let Job::Flush(reply) = job {
        let _ = reply.send(());
        return;
    }
    for attempt in 1..=ATTEMPTS {
        let result: Result<(), StoreError> = match &job {
            Job::Insert(n) => calls::insert_call(db, n).await,
            Job::Patch(sid, p) => calls::update_call(db, sid, p).await.map(|_| ()),
            Job::Finish(f) => calls::finish_call_with(db, f, post_call).await,
            Job::Flush(_) => Ok(()),
        };
        match result {
            Ok(()) => return,
            Err(e) if attempt < ATTEMPTS => {
                tracing::warn!(call_sid = %sid, attempt, error = %e, source = ?std::error::Error::source(&e), "{what} failed; retrying");
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
            Err(e) => {
                metrics.store_errors.inc();
                tracing::error!(call_sid = %sid, error = %e, source = ?std::error::Error::source(&e), "{what} failed; giving up");
            }
        }
    }
}
