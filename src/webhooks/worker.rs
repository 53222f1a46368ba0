//! The delivery worker (docs/architecture.md, "The webhook outbox"): one task per instance, started by `AppState::new`, stopped by the
//! shutdown token. It claims due outbox rows with a lease (`store::outbox::claim_due`), POSTs
//! each (up to [`MAX_IN_FLIGHT`] at once, so one slow receiver holds up no one else) and records
//! the outcome. It wakes when an event is enqueued (`AppState::outbox_wake`), when a retry
//! comes due, and at least every [`POLL`].
//!
//! On shutdown, attempts in flight are abandoned: their rows stay leased until `locked_until`
//! and are sent again (same `webhook-id`) after it by whichever instance runs then.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use reqwest::header::{CONTENT_TYPE, HeaderValue, USER_AGENT};
use sea_orm::{DatabaseConnection, EntityTrait};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    check_url,
    retry::{self, AfterFailure},
    signing::{self, WebhookSecret},
};
use crate::{
    config::WebhookSettings,
    metrics::Metrics,
    store::{
        entities::client,
        outbox::{self, AttemptOutcome, OutboxRow},
    },
};

/// Longest sleep between two looks at the outbox.
pub const POLL: Duration = Duration::from_secs(1);
/// Most attempts in flight at once per instance.
pub const MAX_IN_FLIGHT: usize = 16;
/// Most bytes of a failed answer read (for `last_error`); the rest is never read.
pub const MAX_ERROR_BODY_BYTES: usize = 1024;

/// What one worker needs.
#[derive(Clone)]
pub struct Worker {
    db: DatabaseConnection,
    settings: Arc<WebhookSettings>,
    schedule: Arc<[Duration]>,
    metrics: Arc<Metrics>,
    http: reqwest::Client,
}

impl Worker {
    /// Builds the worker and its HTTP client (rustls; redirects are not followed: a 3xx is a
    /// failed attempt).
    pub fn new(
        db: DatabaseConnection,
        settings: WebhookSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout())
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            db,
            schedule: settings.retry_schedule().into(),
            settings: Arc::new(settings),
            metrics,
            http,
        })
    }

    /// Runs until `shutdown`.
    pub async fn run(self, wake: Arc<Notify>, shutdown: CancellationToken) {
        let (db, lease) = (self.db.clone(), self.settings.lease());
        let run = crate::workers::Loop {
            what: "webhooks",
            max_in_flight: MAX_IN_FLIGHT,
            poll: POLL,
            wake: Some(wake),
        };
        run.run(
            shutdown,
            move |now, room| {
                let db = db.clone();
                Box::pin(async move {
                    let claim = outbox::claim_due(&db, now, now + lease, room).await?;
                    Ok((claim.rows, claim.next_due))
                })
            },
            |row| self.clone().attempt(row),
        )
        .await;
    }

    /// One attempt of a claimed row, its outcome recorded.
    async fn attempt(self, row: OutboxRow) {
        let outcome = match self.send(&row).await {
            Ok(()) => AttemptOutcome::Delivered(Utc::now()),
            Err(Failure::Permanent(error)) => AttemptOutcome::Failed(error),
            Err(Failure::Transient(error)) => {
                let attempts = u32::try_from(row.attempts).unwrap_or(u32::MAX);
                let jitter: f64 = rand::random();
                match retry::after_failure(
                    &self.schedule,
                    attempts,
                    self.settings.max_attempts,
                    jitter,
                ) {
                    AfterFailure::Retry(delay) => AttemptOutcome::Retry {
                        at: Utc::now()
                            + chrono::Duration::from_std(delay)
                                .unwrap_or(chrono::Duration::hours(1)),
                        error,
                    },
                    AfterFailure::GiveUp => AttemptOutcome::Failed(error),
                }
            }
        };
        let label = match &outcome {
            AttemptOutcome::Delivered(_) => "delivered",
            AttemptOutcome::Retry { .. } => "retry",
            AttemptOutcome::Failed(_) => "failed",
        };
        match outbox::finish_attempt(&self.db, &row, &outcome).await {
            Ok(true) => {
                self.metrics.inc_webhook_delivery(label);
                let error = match &outcome {
                    AttemptOutcome::Delivered(_) => None,
                    AttemptOutcome::Retry { error, .. } | AttemptOutcome::Failed(error) => {
                        Some(error.as_str())
                    }
                };
                if label == "failed" {
                    tracing::warn!(client_id = row.client_id, webhook_id = %row.webhook_id, event = %row.event_type, attempts = row.attempts, error, "webhook: given up");
                } else {
                    tracing::info!(client_id = row.client_id, webhook_id = %row.webhook_id, event = %row.event_type, attempts = row.attempts, outcome = label, error, "webhook attempt");
                }
            }
            Ok(false) => tracing::info!(
                webhook_id = %row.webhook_id,
                "webhook: the event was deleted or re-claimed meanwhile; outcome not recorded"
            ),
            Err(e) => tracing::warn!(
                webhook_id = %row.webhook_id,
                error = %e,
                "webhook: could not record the outcome; the event is sent again after its lease"
            ),
        }
    }

    /// POSTs the row's body to the client's current URL, signed with its current secret.
    async fn send(&self, row: &OutboxRow) -> Result<(), Failure> {
        let client = client::Entity::find_by_id(row.client_id)
            .one(&self.db)
            .await
            .map_err(|_| Failure::Transient("database error reading the client".into()))?
            .ok_or_else(|| Failure::Permanent("the client no longer exists".into()))?;
        let raw_url = client
            .webhook_url
            .as_deref()
            .ok_or_else(|| Failure::Permanent("the client has no webhook_url any more".into()))?;
        let url = check_url(raw_url, self.settings.allow_http)
            .map_err(|why| Failure::Permanent(format!("webhook_url refused: {why}")))?;
        let secret = client
            .webhook_secret
            .as_ref()
            .and_then(|s| WebhookSecret::parse(s.expose()).ok())
            .ok_or_else(|| Failure::Permanent("the client's webhook secret is unusable".into()))?;
        let timestamp = Utc::now().timestamp();
        let signature = signing::sign(&secret, &row.webhook_id, timestamp, row.body.as_bytes());
        let header = |v: &str| {
            HeaderValue::from_str(v)
                .map_err(|_| Failure::Permanent("webhook id is not a header value".into()))
        };
        let mut response = self
            .http
            .post(url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(USER_AGENT, HeaderValue::from_static("warmline-webhooks"))
            .header(signing::HEADER_ID, header(&row.webhook_id)?)
            .header(signing::HEADER_TIMESTAMP, HeaderValue::from(timestamp))
            .header(signing::HEADER_SIGNATURE, header(&signature)?)
            .body(row.body.clone())
            .send()
            .await
            .map_err(|e| Failure::Transient(self.describe(e)))?;
        let status = response.status();
        if status.is_success() {
            // The answer's body is not read: the status is the answer.
            return Ok(());
        }
        let mut start = Vec::new();
        while start.len() < MAX_ERROR_BODY_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let take = chunk.len().min(MAX_ERROR_BODY_BYTES - start.len());
                    start.extend_from_slice(&chunk[..take]);
                }
                Ok(None) | Err(_) => break,
            }
        }
        Err(Failure::Transient(retry::status_error(
            status.as_u16(),
            status.canonical_reason(),
            &start,
        )))
    }

    /// An HTTP client error as `last_error`: what happened, never the URL.
    fn describe(&self, e: reqwest::Error) -> String {
        let e = e.without_url();
        if e.is_timeout() {
            return format!(
                "no answer within webhooks.timeout_secs ({} s)",
                self.settings.timeout_secs
            );
        }
        let what = if e.is_connect() {
            "could not connect"
        } else {
            "request failed"
        };
        // The innermost cause says why (refused, DNS, TLS) and carries no URL.
        let mut cause: &dyn std::error::Error = &e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        retry::clip(&format!("{what}: {cause}"))
    }
}

/// Why an attempt failed.
enum Failure {
    /// Worth trying again (no answer, an error status, a database hiccup).
    Transient(String),
    /// Never going to work for this event (no URL any more, an unusable secret).
    Permanent(String),
}

/// Starts the worker on `tracker`; logs and returns without one if its HTTP client cannot be
/// built (events then wait in the outbox for an instance that can send them).
pub fn start(
    db: DatabaseConnection,
    settings: WebhookSettings,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) {
    match Worker::new(db, settings, metrics) {
        Ok(worker) => {
            tracker.spawn(worker.run(wake, shutdown));
        }
        Err(e) => tracing::error!(error = %e, "webhooks: no HTTP client; events are not delivered"),
    }
}
