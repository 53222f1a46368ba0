//! The webhook outbox (README.md, "Webhook events"): events are enqueued in the transaction
//! that produced them ([`enqueue`]); the delivery worker (`crate::webhooks::worker`) claims due
//! rows with a lease ([`claim_due`]) and records each attempt ([`finish_attempt`]).
//!
//! A claim is a compare-and-set on the row's attempt count, so of two instances sharing one
//! database exactly one wins a row; the winner holds it until `locked_until`, and its outcome is
//! written only while the attempt count is still its own (a row re-claimed after an expired
//! lease is not overwritten by the slow first sender).

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, Set, sea_query::Expr,
};

use super::{
    StoreError,
    entities::{client, outbox},
    lease,
};
use crate::{
    domain::ClientId,
    webhooks::{EventType, envelope, new_webhook_id},
};

/// Where an event stands (the `status` column; the strings are a contract with API clients).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// `pending`: not delivered yet; tried again at `next_attempt_at`.
    Pending,
    /// `delivered`: a 2xx came back.
    Delivered,
    /// `failed`: given up (`webhooks.max_attempts` reached, or no webhook URL any more).
    Failed,
}

impl DeliveryStatus {
    /// The stored string.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }
}

/// An outbox row.
pub type OutboxRow = outbox::Model;

/// Enqueues `event` with `data` for `client_id`, inside the caller's transaction (or on a plain
/// connection). Returns `None`, enqueuing nothing, when the client has no `webhook_url`; a
/// missing client is `NotFound`. The body is fixed here (see [`envelope`]); the worker picks it
/// up at once if woken (`AppState::outbox_wake`), else within a second.
pub async fn enqueue(
    db: &impl ConnectionTrait,
    client_id: ClientId,
    event: EventType,
    data: serde_json::Value,
) -> Result<Option<OutboxRow>, StoreError> {
    let client = client::Entity::find_by_id(client_id)
        .one(db)
        .await?
        .ok_or(StoreError::NotFound("client"))?;
    if client.webhook_url.is_none() {
        return Ok(None);
    }
    let now = Utc::now();
    let row = outbox::ActiveModel {
        client_id: Set(client_id.get()),
        event_type: Set(event.as_str().to_string()),
        webhook_id: Set(new_webhook_id()),
        body: Set(envelope(event, now, &data)),
        attempts: Set(0),
        next_attempt_at: Set(now),
        locked_until: Set(None),
        status: Set(DeliveryStatus::Pending.as_str().to_string()),
        last_error: Set(None),
        created_at: Set(now),
        delivered_at: Set(None),
        ..Default::default()
    }
    .insert(db)
    .await?;
    Ok(Some(row))
}

/// What [`claim_due`] got.
#[derive(Debug, Default)]
pub struct Claim {
    /// Rows now leased to the caller, `attempts` already counting the attempt about to start.
    pub rows: Vec<OutboxRow>,
    /// When the earliest pending, unleased row not claimed now comes due (it may be past when
    /// more were due than `limit`): the worker sleeps at most until then.
    pub next_due: Option<DateTime<Utc>>,
}

/// The outbox as a leased queue (`store::lease`).
const QUEUE: lease::Queue<outbox::Entity> = lease::Queue {
    id: outbox::Column::Id,
    status: (outbox::Column::Status, DeliveryStatus::Pending.as_str()),
    locked_until: outbox::Column::LockedUntil,
    next_attempt_at: outbox::Column::NextAttemptAt,
    attempts: outbox::Column::Attempts,
    touched: None,
    fields: |r| (r.id, r.attempts, r.next_attempt_at),
};

/// Claims up to `limit` pending rows due at `now` and not leased, leasing each until
/// `lease_until` and counting the attempt. Rows another instance won in between are skipped.
pub async fn claim_due(
    db: &DatabaseConnection,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    limit: u64,
) -> Result<Claim, StoreError> {
    let claimed = lease::claim_due(db, &QUEUE, now, lease_until, limit).await?;
    Ok(Claim {
        rows: claimed
            .rows
            .into_iter()
            .map(|row| OutboxRow {
                attempts: row.attempts + 1,
                locked_until: Some(lease_until),
                ..row
            })
            .collect(),
        next_due: claimed.next_due,
    })
}

/// The outcome of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A 2xx came back at this time.
    Delivered(DateTime<Utc>),
    /// Failed; try again at `at`.
    Retry {
        /// The next attempt's time.
        at: DateTime<Utc>,
        /// What went wrong.
        error: String,
    },
    /// Failed for good.
    Failed(String),
}

/// Records the outcome of the attempt that claimed `row` (by its id and attempt count) and
/// releases the lease. Returns false when the row is no longer this attempt's (deleted with its
/// client, or re-claimed after the lease expired), changing nothing.
pub async fn finish_attempt(
    db: &DatabaseConnection,
    row: &OutboxRow,
    outcome: &AttemptOutcome,
) -> Result<bool, StoreError> {
    let mut q = outbox::Entity::update_many()
        .col_expr(
            outbox::Column::LockedUntil,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .filter(outbox::Column::Id.eq(row.id))
        .filter(outbox::Column::Attempts.eq(row.attempts))
        .filter(outbox::Column::Status.eq(DeliveryStatus::Pending.as_str()));
    q = match outcome {
        AttemptOutcome::Delivered(at) => q
            .col_expr(
                outbox::Column::Status,
                Expr::value(DeliveryStatus::Delivered.as_str()),
            )
            .col_expr(outbox::Column::DeliveredAt, Expr::value(*at)),
        AttemptOutcome::Retry { at, error } => q
            .col_expr(outbox::Column::NextAttemptAt, Expr::value(*at))
            .col_expr(outbox::Column::LastError, Expr::value(error.clone())),
        AttemptOutcome::Failed(error) => q
            .col_expr(
                outbox::Column::Status,
                Expr::value(DeliveryStatus::Failed.as_str()),
            )
            .col_expr(outbox::Column::LastError, Expr::value(error.clone())),
    };
    Ok(q.exec(db).await?.rows_affected == 1)
}

/// A client's webhook events, newest first, at most `limit`.
pub async fn list_deliveries(
    db: &DatabaseConnection,
    client_id: ClientId,
    limit: u64,
) -> Result<Vec<OutboxRow>, StoreError> {
    Ok(outbox::Entity::find()
        .filter(outbox::Column::ClientId.eq(client_id))
        .order_by_desc(outbox::Column::CreatedAt)
        .order_by_desc(outbox::Column::Id)
        .limit(limit)
        .all(db)
        .await?)
}

/// One outbox row by its `webhook-id`.
pub async fn delivery_by_webhook_id(
    db: &DatabaseConnection,
    webhook_id: &str,
) -> Result<Option<OutboxRow>, StoreError> {
    Ok(outbox::Entity::find()
        .filter(outbox::Column::WebhookId.eq(webhook_id))
        .one(db)
        .await?)
}
