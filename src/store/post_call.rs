//! The post-call jobs (README.md, "After the call"): one row of `post_call_jobs` per finished
//! call worth summarising, inserted with the call record ([`enqueue`], from
//! `calls::finish_call_with`); the worker (`crate::post_call::worker`) claims due jobs with a
//! lease ([`claim_due`]) and records each attempt's outcome: [`complete`] (results, caller
//! memory, the `call.completed` event and the job's end in one transaction), [`retry_at`] or
//! [`fail`].
//!
//! A claim is a compare-and-set on the job's attempt count, so of two instances sharing one
//! database exactly one wins a job; the winner holds it until `locked_until`. Every outcome is
//! written only while the job is still pending with the claimer's attempt count: a job whose
//! lease ran out and was claimed again is never completed twice.

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, Set,
    TransactionTrait,
    sea_query::{Expr, ExprTrait, OnConflict, Query},
};

use super::{
    StoreError, callers,
    calls::ChatExchange,
    entities::{call, post_call_job},
    lease, outbox,
};
use crate::{
    domain::{Channel, ClientId},
    webhooks::EventType,
};

/// A post-call job row.
pub type PostCallJob = post_call_job::Model;

/// Where a job stands (the `status` column; the strings are a contract with API clients).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    /// `pending`: not done yet; tried (again) at `next_attempt_at`.
    Pending,
    /// `done`: the summary and results are stored.
    Done,
    /// `failed`: given up (`post_call.max_attempts` reached, or an answer that did not match
    /// the client's schema twice); `last_error` says why.
    Failed,
}

impl JobStatus {
    /// The stored string.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }
}

/// Inserts the post-call job of call `call_id` (inside the transaction that finishes the call),
/// due at once; a second insert for the same call changes nothing.
pub async fn enqueue(
    db: &impl ConnectionTrait,
    call_id: i32,
    call_sid: &str,
    client_id: ClientId,
    remember: bool,
) -> Result<(), StoreError> {
    enqueue_at(db, call_id, call_sid, client_id, remember, Utc::now()).await
}

/// A text exchange of a person's chat (`calls.channel` not `voice`; inside the transaction that
/// records it), which ended at `ended_at`. The chat's summary job is held by its first
/// exchange and due at the chat's idle time after its last (`chat.summary_due`):
/// - An exchange that `starts` a chat holds a job of its own, due at `due`. But when a job is
///   already waiting for an exchange of the person that began after `chat.since` (one of this
///   chat, recorded first: another instance answered it at the same moment), that job is
///   taken over (moved to this exchange and put off), so the chat still has one.
/// - Else the job of the chat it belongs to (the person's latest text exchange holding a job
///   that began before this one ended) is put off to `due`, never earlier, if that job is
///   still waiting (pending, never tried, not leased). When there is no such job (it ran
///   already, or the chat's first exchange was never recorded, or is not yet), this exchange
///   holds a job of its own, unless it `joins` a chat begun at the same moment elsewhere,
///   whose first exchange makes the job when it is recorded.
///
/// The job reads the chat's exchanges from its own to the next one holding a job
/// (`crate::post_call::worker`).
#[allow(clippy::too_many_arguments)]
pub async fn chat_exchange(
    db: &impl ConnectionTrait,
    call_id: i32,
    call_sid: &str,
    client_id: ClientId,
    from: &str,
    ended_at: DateTime<Utc>,
    chat: ChatExchange,
    remember: bool,
) -> Result<(), StoreError> {
    let holds_job = Query::select()
        .expr(Expr::val(1))
        .from(post_call_job::Entity)
        .and_where(
            Expr::col((post_call_job::Entity, post_call_job::Column::CallId))
                .equals((call::Entity, call::Column::Id)),
        )
        .to_owned();
    let holders = call::Entity::find()
        .filter(call::Column::ClientId.eq(client_id.get()))
        .filter(call::Column::FromNumber.eq(from))
        .filter(call::Column::Channel.ne(Channel::Voice.as_str()))
        .filter(call::Column::Id.ne(call_id))
        .filter(Expr::exists(holds_job))
        .order_by_desc(call::Column::StartedAt)
        .order_by_desc(call::Column::Id);
    if chat.starts {
        if let Some(since) = chat.since {
            let made_first = holders
                .filter(call::Column::StartedAt.gt(since))
                .one(db)
                .await?;
            if let Some(other) = made_first
                && put_off(
                    db,
                    other.id,
                    chat.summary_due,
                    Some((call_id, call_sid, remember)),
                )
                .await?
            {
                return Ok(());
            }
        }
    } else {
        let first = holders
            .filter(call::Column::StartedAt.lte(ended_at))
            .one(db)
            .await?;
        if let Some(first) = first
            && put_off(db, first.id, chat.summary_due, None).await?
        {
            return Ok(());
        }
        if chat.joins {
            return Ok(());
        }
    }
    enqueue_at(db, call_id, call_sid, client_id, remember, chat.summary_due).await
}

/// Puts the job of exchange `holder` off to `due` (never earlier) if it is still waiting
/// (pending, never tried, not leased), moving it to exchange `to` (id, sid, `remember`) when
/// given; whether it did.
async fn put_off(
    db: &impl ConnectionTrait,
    holder: i32,
    due: DateTime<Utc>,
    to: Option<(i32, &str, bool)>,
) -> Result<bool, StoreError> {
    let next = || Expr::col(post_call_job::Column::NextAttemptAt);
    let mut update = post_call_job::Entity::update_many()
        .col_expr(
            post_call_job::Column::NextAttemptAt,
            Expr::case(next().lt(due), Expr::val(due))
                .finally(next())
                .into(),
        )
        .col_expr(post_call_job::Column::UpdatedAt, Expr::value(Utc::now()));
    if let Some((call_id, call_sid, remember)) = to {
        update = update
            .col_expr(post_call_job::Column::CallId, Expr::value(call_id))
            .col_expr(post_call_job::Column::CallSid, Expr::value(call_sid))
            .col_expr(post_call_job::Column::Remember, Expr::value(remember));
    }
    let done = update
        .filter(post_call_job::Column::CallId.eq(holder))
        .filter(post_call_job::Column::Status.eq(JobStatus::Pending.as_str()))
        .filter(post_call_job::Column::Attempts.eq(0))
        .filter(post_call_job::Column::LockedUntil.is_null())
        .exec(db)
        .await?
        .rows_affected;
    Ok(done > 0)
}

/// Puts the claimed `job` back, untried, due at `at` (a chat still going when its summary came
/// due: a message was being answered); false (nothing written) if it is no longer this
/// attempt's.
pub async fn put_back(
    db: &DatabaseConnection,
    job: &PostCallJob,
    at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    release(db, job, at, job.attempts - 1, None).await
}

/// Releases the claimed `job`'s lease, due again at `at` with `attempts` counted (and
/// `last_error` when given), if it is still this attempt's; returns whether it was.
async fn release(
    db: &DatabaseConnection,
    job: &PostCallJob,
    at: DateTime<Utc>,
    attempts: i32,
    error: Option<&str>,
) -> Result<bool, StoreError> {
    let mut update = post_call_job::Entity::update_many()
        .col_expr(post_call_job::Column::NextAttemptAt, Expr::value(at))
        .col_expr(post_call_job::Column::Attempts, Expr::value(attempts))
        .col_expr(
            post_call_job::Column::LockedUntil,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .col_expr(post_call_job::Column::UpdatedAt, Expr::value(Utc::now()));
    if let Some(error) = error {
        update = update.col_expr(post_call_job::Column::LastError, Expr::value(error));
    }
    Ok(update
        .filter(post_call_job::Column::Id.eq(job.id))
        .filter(post_call_job::Column::Attempts.eq(job.attempts))
        .filter(post_call_job::Column::Status.eq(JobStatus::Pending.as_str()))
        .exec(db)
        .await?
        .rows_affected
        == 1)
}

async fn enqueue_at(
    db: &impl ConnectionTrait,
    call_id: i32,
    call_sid: &str,
    client_id: ClientId,
    remember: bool,
    due: DateTime<Utc>,
) -> Result<(), StoreError> {
    let now = Utc::now();
    let row = post_call_job::ActiveModel {
        remember: Set(remember),
        call_id: Set(call_id),
        call_sid: Set(call_sid.to_string()),
        client_id: Set(client_id.get()),
        status: Set(JobStatus::Pending.as_str().to_string()),
        attempts: Set(0),
        next_attempt_at: Set(due),
        locked_until: Set(None),
        last_error: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    };
    post_call_job::Entity::insert(row)
        .on_conflict(
            OnConflict::column(post_call_job::Column::CallId)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    Ok(())
}

/// What [`claim_due`] got.
#[derive(Debug, Default)]
pub struct Claim {
    /// Jobs now leased to the caller, `attempts` already counting the attempt about to start.
    pub jobs: Vec<PostCallJob>,
    /// When the earliest pending, unleased job not claimed now comes due: the worker sleeps at
    /// most until then.
    pub next_due: Option<DateTime<Utc>>,
}

/// The post-call jobs as a leased queue (`store::lease`).
const QUEUE: lease::Queue<post_call_job::Entity> = lease::Queue {
    id: post_call_job::Column::Id,
    status: (post_call_job::Column::Status, JobStatus::Pending.as_str()),
    locked_until: post_call_job::Column::LockedUntil,
    next_attempt_at: post_call_job::Column::NextAttemptAt,
    attempts: post_call_job::Column::Attempts,
    touched: Some(post_call_job::Column::UpdatedAt),
    fields: |j| (j.id, j.attempts, j.next_attempt_at),
};

/// Claims up to `limit` pending jobs due at `now` and not leased (or whose lease ran out: their
/// instance died), leasing each until `lease_until` and counting the attempt. Jobs another
/// instance won in between are skipped.
pub async fn claim_due(
    db: &DatabaseConnection,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    limit: u64,
) -> Result<Claim, StoreError> {
    let claimed = lease::claim_due(db, &QUEUE, now, lease_until, limit).await?;
    Ok(Claim {
        jobs: claimed
            .rows
            .into_iter()
            .map(|job| PostCallJob {
                attempts: job.attempts + 1,
                locked_until: Some(lease_until),
                updated_at: now,
                ..job
            })
            .collect(),
        next_due: claimed.next_due,
    })
}

/// Ends the claimed `job` with `status` (and `last_error`), releasing its lease, if it is still
/// this attempt's; returns whether it was.
async fn end_job(
    db: &impl ConnectionTrait,
    job: &PostCallJob,
    status: JobStatus,
    error: Option<&str>,
) -> Result<bool, StoreError> {
    Ok(post_call_job::Entity::update_many()
        .col_expr(post_call_job::Column::Status, Expr::value(status.as_str()))
        .col_expr(
            post_call_job::Column::LockedUntil,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .col_expr(
            post_call_job::Column::LastError,
            Expr::value(error.map(str::to_string)),
        )
        .col_expr(post_call_job::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(post_call_job::Column::Id.eq(job.id))
        .filter(post_call_job::Column::Attempts.eq(job.attempts))
        .filter(post_call_job::Column::Status.eq(JobStatus::Pending.as_str()))
        .exec(db)
        .await?
        .rows_affected
        == 1)
}

/// What a successful attempt stores.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The summary, for `calls.summary`.
    pub summary: String,
    /// The client's fields, for `calls.results` (none for a client without a schema).
    pub results: Option<serde_json::Value>,
    /// The caller-memory note the end of the call wrote (`calls.summary` when the job read the
    /// call): the one the summary replaces, and the proof the call was not erased meanwhile.
    pub raw_note: String,
    /// The caller-memory note that replaces it (`YYYY-MM-DD: summary`).
    pub memory_note: String,
    /// The event: `call.completed` for a call, `chat.completed` for a chat.
    pub event_type: EventType,
    /// The event's data (`crate::post_call::completed_event`, `chat_completed_event`).
    pub event: serde_json::Value,
    /// The `call.completed` event's data if the call turns out to have been erased meanwhile
    /// (summary and results null, with the reason).
    pub erased_event: serde_json::Value,
}

/// What [`complete`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completed {
    /// Results, memory, event and `done` written.
    Done,
    /// The call's summary was erased (a privacy request) while the job ran: nothing of the
    /// answer is stored; the job is `failed` and its event says so.
    Erased,
    /// The job is no longer this attempt's (its lease ran out and another instance claimed it,
    /// or it was deleted with its client): nothing written.
    NotOurs,
}

/// Why a completion meets an erased call.
pub const ERASED: &str =
    "the call's transcript was erased (a privacy request) before its summary was stored";

/// Stores a successful attempt in one transaction: the job `done` (only if still this
/// attempt's), `calls.summary` and `calls.results` (only if the call still holds its raw note),
/// the caller's memory note replaced by the summary, and the `call.completed` event.
pub async fn complete(
    db: &DatabaseConnection,
    job: &PostCallJob,
    c: &Completion,
) -> Result<Completed, StoreError> {
    let txn = db.begin().await?;
    if !end_job(&txn, job, JobStatus::Done, None).await? {
        txn.rollback().await?;
        return Ok(Completed::NotOurs);
    }
    let results = c.results.as_ref().map(|r| r.to_string());
    let stored = call::Entity::update_many()
        .col_expr(call::Column::Summary, Expr::value(c.summary.clone()))
        .col_expr(call::Column::Results, Expr::value(results))
        .col_expr(call::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(call::Column::Id.eq(job.call_id))
        .filter(call::Column::Summary.eq(c.raw_note.as_str()))
        .exec(&txn)
        .await?
        .rows_affected
        == 1;
    let client_id = ClientId::new(job.client_id);
    if !stored {
        post_call_job::Entity::update_many()
            .col_expr(
                post_call_job::Column::Status,
                Expr::value(JobStatus::Failed.as_str()),
            )
            .col_expr(post_call_job::Column::LastError, Expr::value(ERASED))
            .filter(post_call_job::Column::Id.eq(job.id))
            .exec(&txn)
            .await?;
        outbox::enqueue(&txn, client_id, c.event_type, c.erased_event.clone()).await?;
        txn.commit().await?;
        return Ok(Completed::Erased);
    }
    let call = call::Entity::find_by_id(job.call_id)
        .one(&txn)
        .await?
        .ok_or(StoreError::NotFound("call"))?;
    if job.remember {
        callers::replace_note(
            &txn,
            client_id,
            &call.from_number,
            Some(&c.raw_note),
            &c.memory_note,
        )
        .await?;
    }
    outbox::enqueue(&txn, client_id, c.event_type, c.event.clone()).await?;
    txn.commit().await?;
    Ok(Completed::Done)
}

/// Puts the claimed `job` back for another attempt at `at`, with `error`; false (nothing
/// written) if it is no longer this attempt's.
pub async fn retry_at(
    db: &DatabaseConnection,
    job: &PostCallJob,
    at: DateTime<Utc>,
    error: &str,
) -> Result<bool, StoreError> {
    release(db, job, at, job.attempts, Some(error)).await
}

/// Gives the claimed `job` up (`failed`, with `error`) and queues its event (`call.completed`
/// or `chat.completed`, `event`: summary and results null, with the error), in one
/// transaction; false (nothing written) if it is no longer this attempt's.
pub async fn fail(
    db: &DatabaseConnection,
    job: &PostCallJob,
    error: &str,
    event_type: EventType,
    event: serde_json::Value,
) -> Result<bool, StoreError> {
    let txn = db.begin().await?;
    if !end_job(&txn, job, JobStatus::Failed, Some(error)).await? {
        txn.rollback().await?;
        return Ok(false);
    }
    outbox::enqueue(&txn, ClientId::new(job.client_id), event_type, event).await?;
    txn.commit().await?;
    Ok(true)
}

/// The post-call job of call `call_id`, if it has one.
pub async fn job_for_call(
    db: &impl ConnectionTrait,
    call_id: i32,
) -> Result<Option<PostCallJob>, StoreError> {
    Ok(post_call_job::Entity::find()
        .filter(post_call_job::Column::CallId.eq(call_id))
        .one(db)
        .await?)
}
