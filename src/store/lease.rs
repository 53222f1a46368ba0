//! The leased claim both work queues use (the webhook outbox, `store::outbox`; the post-call
//! jobs, `store::post_call`): pending rows due now and not leased (or whose lease ran out: their
//! instance died) are claimed one by one with a compare-and-set on their attempt count, each
//! leased until a deadline with the attempt counted. Rows another instance won in between are
//! skipped (docs/architecture.md, "The webhook outbox", invariant 1).

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    sea_query::Expr,
};

use super::StoreError;

/// A queue table's columns, and what a row's fields are.
pub struct Queue<E: EntityTrait> {
    /// Primary key.
    pub id: E::Column,
    /// Status column, and its pending value.
    pub status: (E::Column, &'static str),
    /// When the current lease runs out (null: not leased).
    pub locked_until: E::Column,
    /// When the row is next due.
    pub next_attempt_at: E::Column,
    /// Attempts so far.
    pub attempts: E::Column,
    /// Set to the claim's time as well, if the table has one (`updated_at`).
    pub touched: Option<E::Column>,
    /// A row's (id, attempts, next due).
    pub fields: RowFields<E::Model>,
}

/// Reads a row's (id, attempts, next due).
pub type RowFields<M> = fn(&M) -> (i32, i32, DateTime<Utc>);

/// What [`claim_due`] got.
pub struct Claimed<M> {
    /// Rows now leased to the caller, as they were read (the caller applies the new attempt
    /// count and lease to its copy).
    pub rows: Vec<M>,
    /// When the earliest pending, unleased row not claimed now comes due (it may be past when
    /// more were due than `limit`): the worker sleeps at most until then.
    pub next_due: Option<DateTime<Utc>>,
}

/// Not leased, or the lease ran out.
pub fn unleased<C: ColumnTrait>(locked_until: C, now: DateTime<Utc>) -> Condition {
    Condition::any()
        .add(locked_until.is_null())
        .add(locked_until.lte(now))
}

/// Claims up to `limit` pending rows of `q` due at `now`, leasing each until `lease_until`.
pub async fn claim_due<E: EntityTrait>(
    db: &impl ConnectionTrait,
    q: &Queue<E>,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    limit: u64,
) -> Result<Claimed<E::Model>, StoreError> {
    let candidates = E::find()
        .filter(q.status.0.eq(q.status.1))
        .filter(unleased(q.locked_until, now))
        .order_by_asc(q.next_attempt_at)
        .order_by_asc(q.id)
        .limit(limit + 1)
        .all(db)
        .await?;
    let mut claim = Claimed {
        rows: Vec::new(),
        next_due: None,
    };
    for row in candidates {
        let (id, attempts, due) = (q.fields)(&row);
        if due > now || claim.rows.len() as u64 >= limit {
            claim.next_due = Some(due);
            break;
        }
        let mut update = E::update_many()
            .col_expr(q.attempts, Expr::value(attempts + 1))
            .col_expr(q.locked_until, Expr::value(lease_until));
        if let Some(touched) = q.touched {
            update = update.col_expr(touched, Expr::value(now));
        }
        let won = update
            .filter(q.id.eq(id))
            .filter(q.status.0.eq(q.status.1))
            .filter(q.attempts.eq(attempts))
            // Still due: a row put off since it was read (a chat's next message) is not taken.
            .filter(q.next_attempt_at.lte(now))
            .filter(unleased(q.locked_until, now))
            .exec(db)
            .await?
            .rows_affected
            == 1;
        if won {
            claim.rows.push(row);
        }
    }
    Ok(claim)
}
