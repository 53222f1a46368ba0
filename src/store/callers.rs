//! Caller memory: what a client remembers of each caller (count, dates, name, notes).
//!
//! `record_caller_call` is one atomic upsert, so many calls ending at once from the same caller
//! add exactly one each to `call_count` on SQLite and Postgres alike.
//!
//! The notes are one per line, newest first, at most [`MEMORY_MAX_CHARS`]: a new note goes on
//! top and the oldest lines are dropped from the bottom. The end of a call writes the caller's
//! first words as its note; the post-call job later replaces that note with the call's summary
//! ([`replace_note`]).

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

/// Most characters of notes kept per caller (oldest, at the bottom, dropped first).
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
/// puts `note` on top of the memory. Atomic under concurrency (INSERT … ON CONFLICT DO UPDATE).
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
                .value(caller::Column::Memory, Expr::cust(PREPEND_MEMORY))
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    bound_memory(db, client_id, phone).await
}

/// A note as [`remember`] puts it in the memory: `YYYY-MM-DD: note`, on one line.
pub fn dated_note(at: DateTime<Utc>, note: &str) -> String {
    format!(
        "{}: {}",
        at.format("%Y-%m-%d"),
        note.trim().replace('\n', " ")
    )
}

/// What `remember_caller` saves mid-call: the name (replacing the one known) and/or a dated
/// note put on top of the memory (bounded like every note). The caller's row is created if this
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
        .filter(|n| !n.trim().is_empty())
        .map(|n| dated_note(at, n))
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
                .value(caller::Column::Memory, Expr::cust(PREPEND_MEMORY))
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    bound_memory(db, client_id, phone).await
}

/// Puts the new row's memory on top of the stored one (one note per line, newest first).
const PREPEND_MEMORY: &str = "CASE WHEN excluded.\"memory\" = '' THEN \"callers\".\"memory\" \
     WHEN \"callers\".\"memory\" = '' THEN excluded.\"memory\" \
     ELSE excluded.\"memory\" || '\n' || \"callers\".\"memory\" END";

/// The memory with the first line that is exactly `old` replaced by `new`; else (no such line,
/// or `old` empty) with `new` on top. Whole lines only: a note that is part of another, or
/// some words of a line, are never replaced.
pub fn replaced_line(memory: &str, old: &str, new: &str) -> String {
    if !old.is_empty() {
        let lines: Vec<&str> = memory.split('\n').collect();
        if let Some(at) = lines.iter().position(|l| l.trim() == old) {
            let mut out: Vec<&str> = lines;
            out[at] = new;
            return out.join("\n");
        }
    }
    if memory.is_empty() {
        new.to_string()
    } else {
        format!("{new}\n{memory}")
    }
}

/// Most tries of [`replace_note`] when other writes keep changing the memory it read.
const REPLACE_TRIES: usize = 5;

/// Replaces the note `old` (what the end of a call or the start of a chat wrote: a whole line)
/// with `new` in the caller's memory, or puts `new` on top when `old` is no longer there
/// (trimmed away, or edited); bounded like every note. `new` is made one line. The memory is
/// written only if it is still what was read (else read again), so a note another call adds
/// meanwhile is never lost. Returns `None`, changing nothing, when the client has no memory of
/// this caller (a withheld caller id, or a memory erased on request).
pub async fn replace_note(
    db: &impl ConnectionTrait,
    client_id: ClientId,
    phone: &str,
    old: Option<&str>,
    new: &str,
) -> Result<Option<CallerMemory>, StoreError> {
    if !remembers(phone) {
        return Ok(None);
    }
    let phone = phone.trim();
    let new = new.split_whitespace().collect::<Vec<_>>().join(" ");
    let old = old.map(str::trim).unwrap_or_default();
    for _ in 0..REPLACE_TRIES {
        let Some(row) = caller::Entity::find()
            .filter(caller::Column::ClientId.eq(client_id))
            .filter(caller::Column::Phone.eq(phone))
            .one(db)
            .await?
        else {
            return Ok(None);
        };
        let memory = replaced_line(&row.memory, old, &new);
        let changed = caller::Entity::update_many()
            .col_expr(caller::Column::Memory, Expr::value(memory))
            .filter(caller::Column::Id.eq(row.id))
            .filter(caller::Column::Memory.eq(row.memory))
            .exec(db)
            .await?
            .rows_affected;
        if changed == 1 {
            return bound_memory(db, client_id, phone).await.map(Some);
        }
    }
    Err(StoreError::Conflict(
        "the caller's memory kept changing; the note is replaced on the next try".into(),
    ))
}

/// The first [`MEMORY_MAX_CHARS`] characters of `memory` (newest first), cut after the last
/// whole line that fits; a single note longer than the bound is cut at the bound.
pub fn bounded(memory: &str) -> String {
    if memory.chars().count() <= MEMORY_MAX_CHARS {
        return memory.to_string();
    }
    let kept: String = memory.chars().take(MEMORY_MAX_CHARS).collect();
    match kept.rfind('\n') {
        Some(i) => kept[..i].to_string(),
        None => kept,
    }
}

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
    // Keep the newest notes; a concurrent note lost here only shortens old history.
    let trimmed = bounded(&current.memory);
    let mut am: caller::ActiveModel = current.into();
    am.memory = Set(trimmed);
    Ok(am.update(db).await?)
}

/// Erases a caller's memory, their text conversation (`phone` is any identity: a number,
/// `web:…`, `kommo:lead:…`) and the transcripts, summaries and results of their calls and text
/// exchanges with this client (a privacy request); a post-call job still pending for one of them
/// then fails. The call rows stay, for billing and counts, without content. Returns the OpenAI
/// conversation ids forgotten, for the caller to delete there (`TextAgent::delete_conversations`).
pub async fn delete_caller(
    db: &DatabaseConnection,
    client_id: ClientId,
    phone: &str,
) -> Result<Vec<String>, StoreError> {
    let phone = phone.trim();
    let txn = db.begin().await?;
    let deleted = caller::Entity::delete_many()
        .filter(caller::Column::ClientId.eq(client_id))
        .filter(caller::Column::Phone.eq(phone))
        .exec(&txn)
        .await?
        .rows_affected;
    // The person's text conversation goes too (`store::conversations`).
    let conversations = super::conversations::forget(&txn, client_id, phone).await?;
    let call_ids: Vec<i32> = call::Entity::find()
        .filter(call::Column::ClientId.eq(client_id))
        .filter(call::Column::FromNumber.eq(phone))
        .all(&txn)
        .await?
        .into_iter()
        .map(|c| c.id)
        .collect();
    if deleted == 0 && call_ids.is_empty() && conversations.is_empty() {
        return Err(StoreError::NotFound("caller"));
    }
    if !call_ids.is_empty() {
        transcript_item::Entity::delete_many()
            .filter(transcript_item::Column::CallId.is_in(call_ids.clone()))
            .exec(&txn)
            .await?;
        call::Entity::update_many()
            .col_expr(call::Column::Summary, Expr::value(Option::<String>::None))
            .col_expr(call::Column::Results, Expr::value(Option::<String>::None))
            .filter(call::Column::Id.is_in(call_ids))
            .exec(&txn)
            .await?;
    }
    txn.commit().await?;
    Ok(conversations)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_is_replaced_only_as_a_whole_line() {
        let memory = "2026-12-01: wrote on whatsapp: Hi there\n2026-11-30: booked 10:00";
        // The chat's own note, a whole line, is replaced where it stands.
        assert_eq!(
            replaced_line(
                memory,
                "2026-12-01: wrote on whatsapp: Hi there",
                "2026-12-01: S"
            ),
            "2026-12-01: S\n2026-11-30: booked 10:00"
        );
        // Part of a line (a prefix of a longer note, a few words, a digit) is never touched:
        // the summary goes on top instead.
        for part in ["2026-12-01: wrote on whatsapp: Hi", "ok", "1", "booked"] {
            assert_eq!(
                replaced_line(memory, part, "N"),
                format!("N\n{memory}"),
                "{part:?}"
            );
        }
        assert_eq!(replaced_line("", "x", "N"), "N");
        assert_eq!(replaced_line(memory, "", "N"), format!("N\n{memory}"));
    }

    #[test]
    fn bounded_memory_keeps_the_newest_whole_lines() {
        let line = |i: usize| format!("note {i:02}: {}", "x".repeat(90));
        let memory: Vec<String> = (0..40).rev().map(line).collect();
        let memory = memory.join("\n");
        let kept = bounded(&memory);
        assert!(kept.chars().count() <= MEMORY_MAX_CHARS);
        assert!(kept.starts_with(&line(39)), "newest first");
        assert!(kept.ends_with('x'), "cut after a whole line: {kept:?}");
        assert!(!kept.contains("note 00"), "the oldest went first");
        assert_eq!(bounded("short\nnotes"), "short\nnotes");
        let one_long = "é".repeat(MEMORY_MAX_CHARS + 5);
        assert_eq!(bounded(&one_long).chars().count(), MEMORY_MAX_CHARS);
    }
}
