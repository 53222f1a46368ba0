//! Caller memory: what a client remembers of each caller (count, dates, name, notes).
//!
//! `record_caller_call` is one atomic upsert, so many calls ending at once from the same caller
//! add exactly one each to `call_count` on SQLite and Postgres alike.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, Set, TransactionTrait,
    sea_query::{Expr, ExprTrait, OnConflict},
};

use super::{
    StoreError,
    entities::{call, caller, transcript_item},
};
use crate::domain::ClientId;

/// Most characters of notes kept per caller (oldest dropped first).
pub const MEMORY_MAX_CHARS: usize = 2000;

/// A caller's memory.
pub type CallerMemory = caller::Model;

/// Whether a caller id can have a memory: only a phone number does. A withheld caller id
/// (`anonymous`, `client:…`) is nobody in particular, so it is never looked up or remembered.
pub fn remembers(phone: &str) -> bool {
    crate::domain::E164::parse(phone).is_ok()
}

/// The caller's memory for a client, if any.
pub async fn get_caller(
    db: &impl ConnectionTrait,
    client_id: ClientId,
    phone: &str,
) -> Result<Option<CallerMemory>, StoreError> {
    if !remembers(phone) {
        return Ok(None);
    }
    Ok(caller::Entity::find()
        .filter(caller::Column::ClientId.eq(client_id))
        .filter(caller::Column::Phone.eq(phone.trim()))
        .one(db)
        .await?)
}

/// Every caller of a client, most recent first.
pub async fn list_callers(
    db: &DatabaseConnection,
    client_id: ClientId,
) -> Result<Vec<CallerMemory>, StoreError> {
    Ok(caller::Entity::find()
        .filter(caller::Column::ClientId.eq(client_id))
        .order_by_desc(caller::Column::LastCallAt)
        .all(db)
        .await?)
}

/// Counts one more call from `phone` to `client_id` at `at`; sets the name when given and
/// appends `note` to the memory. Atomic under concurrency (INSERT … ON CONFLICT DO UPDATE).
pub async fn record_caller_call(
    db: &impl ConnectionTrait,
    client_id: ClientId,
    phone: &str,
    at: DateTime<Utc>,
    name: Option<&str>,
    note: Option<&str>,
) -> Result<CallerMemory, StoreError> {
    let phone = phone.trim();
    let note = note.map(str::trim).unwrap_or_default();
    let row = caller::ActiveModel {
        client_id: Set(client_id.get()),
        phone: Set(phone.to_string()),
        name: Set(name.map(str::to_string)),
        call_count: Set(1),
        first_call_at: Set(at),
        last_call_at: Set(at),
        memory: Set(note.to_string()),
        ..Default::default()
    };
    caller::Entity::insert(row)
        .on_conflict(
            OnConflict::columns([caller::Column::ClientId, caller::Column::Phone])
                .value(
                    caller::Column::CallCount,
                    Expr::col((caller::Entity, caller::Column::CallCount)).add(1),
                )
                .value(
                    caller::Column::LastCallAt,
                    Expr::cust(r#"excluded."last_call_at""#),
                )
                .value(
                    caller::Column::Name,
                    Expr::cust(r#"COALESCE(excluded."name", "callers"."name")"#),
                )
                .value(caller::Column::Memory, Expr::cust(APPEND_MEMORY))
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    bound_memory(db, client_id, phone).await
}

/// What `remember_caller` saves mid-call: the name (replacing the one known) and/or a dated
/// note appended to the memory (bounded like every note). The caller's row is created if this
/// is their first call (with no calls counted yet: the call's own end counts it).
pub async fn remember(
    db: &impl ConnectionTrait,
    client_id: ClientId,
    phone: &str,
    name: Option<&str>,
    note: Option<&str>,
    at: DateTime<Utc>,
) -> Result<CallerMemory, StoreError> {
    if !remembers(phone) {
        return Err(StoreError::NotFound("caller"));
    }
    let phone = phone.trim();
    let note = note
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| format!("{}: {}", at.format("%Y-%m-%d"), n.replace('\n', " ")))
        .unwrap_or_default();
    let row = caller::ActiveModel {
        client_id: Set(client_id.get()),
        phone: Set(phone.to_string()),
        name: Set(name.map(str::to_string)),
        call_count: Set(0),
        first_call_at: Set(at),
        last_call_at: Set(at),
        memory: Set(note),
        ..Default::default()
    };
    caller::Entity::insert(row)
        .on_conflict(
            OnConflict::columns([caller::Column::ClientId, caller::Column::Phone])
                .value(
                    caller::Column::Name,
                    Expr::cust(r#"COALESCE(excluded."name", "callers"."name")"#),
                )
                .value(caller::Column::Memory, Expr::cust(APPEND_MEMORY))
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    bound_memory(db, client_id, phone).await
}

/// Appends the new row's memory to the stored one (one note per line).
const APPEND_MEMORY: &str = "CASE WHEN excluded.\"memory\" = '' THEN \"callers\".\"memory\" \
     WHEN \"callers\".\"memory\" = '' THEN excluded.\"memory\" \
     ELSE \"callers\".\"memory\" || '\n' || excluded.\"memory\" END";

/// Reads the caller back, trimming the oldest notes beyond [`MEMORY_MAX_CHARS`].
async fn bound_memory(
    db: &impl ConnectionTrait,
    client_id: ClientId,
    phone: &str,
) -> Result<CallerMemory, StoreError> {
    let current = get_caller(db, client_id, phone)
        .await?
        .ok_or(StoreError::NotFound("caller"))?;
    if current.memory.chars().count() <= MEMORY_MAX_CHARS {
        return Ok(current);
    }
    // Keep the newest notes; a concurrent append lost here only shortens old history.
    let skip = current.memory.chars().count() - MEMORY_MAX_CHARS;
    let trimmed: String = current.memory.chars().skip(skip).collect();
    let trimmed = match trimmed.find('\n') {
        Some(i) => trimmed[i + 1..].to_string(),
        None => trimmed,
    };
    let mut am: caller::ActiveModel = current.into();
    am.memory = Set(trimmed);
    Ok(am.update(db).await?)
}

/// Erases a caller's memory and the transcripts and summaries of their calls to this client
/// (a privacy request). The call rows stay, for billing and counts, without content.
pub async fn delete_caller(
    db: &DatabaseConnection,
    client_id: ClientId,
    phone: &str,
) -> Result<(), StoreError> {
    let phone = phone.trim();
    let txn = db.begin().await?;
    let deleted = caller::Entity::delete_many()
        .filter(caller::Column::ClientId.eq(client_id))
        .filter(caller::Column::Phone.eq(phone))
        .exec(&txn)
        .await?
        .rows_affected;
    let call_ids: Vec<i32> = call::Entity::find()
        .filter(call::Column::ClientId.eq(client_id))
        .filter(call::Column::FromNumber.eq(phone))
        .all(&txn)
        .await?
        .into_iter()
        .map(|c| c.id)
        .collect();
    if deleted == 0 && call_ids.is_empty() {
        return Err(StoreError::NotFound("caller"));
    }
    if !call_ids.is_empty() {
        transcript_item::Entity::delete_many()
            .filter(transcript_item::Column::CallId.is_in(call_ids.clone()))
            .exec(&txn)
            .await?;
        call::Entity::update_many()
            .col_expr(call::Column::Summary, Expr::value(Option::<String>::None))
            .filter(call::Column::Id.is_in(call_ids))
            .exec(&txn)
            .await?;
    }
    txn.commit().await?;
    Ok(())
}
