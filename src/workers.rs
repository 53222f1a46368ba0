//! The loop both leased background workers run (webhook deliveries, `webhooks::worker`; post-call
//! jobs, `post_call::worker`): claim what is due (up to the free slots), run each claim on its own
//! task, sleep until the next one comes due, a slot frees, a wake-up, or at most `poll`; stop at
//! shutdown. What a claim and an attempt are is the worker's own (docs/architecture.md, "The
//! webhook outbox" and "After the call").

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use tokio::{sync::Notify, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::store::StoreError;

/// What one claim got: the items now leased to this worker, and when the earliest one not
/// claimed now comes due.
pub type Claimed<T> = (Vec<T>, Option<DateTime<Utc>>);

/// A claim of up to `room` items due at `now`.
pub type ClaimFuture<T> = Pin<Box<dyn Future<Output = Result<Claimed<T>, StoreError>> + Send>>;

/// How one worker runs.
pub struct Loop {
    /// For the log line when a claim fails (`webhooks`, `post-call`).
    pub what: &'static str,
    /// Attempts running at once, at most.
    pub max_in_flight: usize,
    /// The longest sleep between claims.
    pub poll: Duration,
    /// Woken at once by whoever inserts a new item (none: the next poll finds it).
    pub wake: Option<Arc<Notify>>,
}

impl Loop {
    /// Runs until `shutdown`, then cancels the attempts in flight (their leases run out and
    /// another instance, or the next start, takes them again).
    pub async fn run<T, A>(
        self,
        shutdown: CancellationToken,
        mut claim: impl FnMut(DateTime<Utc>, u64) -> ClaimFuture<T>,
        mut attempt: impl FnMut(T) -> A,
    ) where
        A: Future<Output = ()> + Send + 'static,
    {
        let mut in_flight = JoinSet::new();
        let wake = self.wake.unwrap_or_default();
        loop {
            let mut wait = self.poll;
            let room = self.max_in_flight.saturating_sub(in_flight.len());
            if room > 0 {
                let now = Utc::now();
                match claim(now, room as u64).await {
                    Ok((items, next_due)) => {
                        for item in items {
                            in_flight.spawn(attempt(item));
                        }
                        if let Some(due) = next_due {
                            wait = wait.min((due - now).to_std().unwrap_or(Duration::ZERO));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "{}: could not read what is due", self.what);
                    }
                }
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = wake.notified() => {}
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        in_flight.shutdown().await;
    }
}
