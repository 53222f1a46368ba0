//! Cached greetings (`greeting_cache`, one row per client): read by the voice webhook when its
//! memory has none for the client (`crate::greeting::Greetings`), written when a call's
//! generated greeting was heard whole or an operator asked for a refresh, deleted on request.

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect, Set, SqlErr,
    sea_query::{Expr, OnConflict},
};

use super::{StoreError, entities::greeting_cache};
use crate::domain::ClientId;

/// A greeting as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredGreeting {
    /// Key it was made under (`crate::greeting::GreetingKey`).
    pub key: String,
    /// What the model said.
    pub transcript: String,
    /// μ-law 8 kHz mono.
    pub audio: Vec<u8>,
    /// `call` or `refresh`.
    pub source: String,
    /// When it was kept.
    pub created_at: DateTime<Utc>,
}

impl From<greeting_cache::Model> for StoredGreeting {
    fn from(m: greeting_cache::Model) -> Self {
        Self {
            key: m.cache_key,
            transcript: m.transcript,
            audio: m.audio,
            source: m.source,
            created_at: m.created_at,
        }
    }
}

/// The client's cached greeting, whatever its key (the caller compares it).
pub async fn get(
    db: &impl ConnectionTrait,
    client_id: ClientId,
) -> Result<Option<StoredGreeting>, StoreError> {
    Ok(greeting_cache::Entity::find_by_id(client_id.get())
        .one(db)
        .await?
        .map(StoredGreeting::from))
}

/// The key and creation time of the client's cached greeting (without its audio): whether the
/// one an instance plays is still the one kept.
pub async fn version(
    db: &impl ConnectionTrait,
    client_id: ClientId,
) -> Result<Option<(String, DateTime<Utc>)>, StoreError> {
    Ok(greeting_cache::Entity::find_by_id(client_id.get())
        .select_only()
        .column(greeting_cache::Column::CacheKey)
        .column(greeting_cache::Column::CreatedAt)
        .into_tuple()
        .one(db)
        .await?)
}

/// A cached greeting without its audio (the admin API's view).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GreetingSummary {
    /// Key it was made under.
    pub key: String,
    /// What the model said.
    pub transcript: String,
    /// Length of its audio in ms.
    pub duration_ms: i32,
    /// Bytes of audio (μ-law, one a sample).
    pub size_bytes: i64,
    /// `call` or `refresh`.
    pub source: String,
    /// When it was kept.
    pub created_at: DateTime<Utc>,
}

/// The client's cached greeting without its audio.
pub async fn summary(
    db: &impl ConnectionTrait,
    client_id: ClientId,
) -> Result<Option<GreetingSummary>, StoreError> {
    type Row = (String, String, i32, i64, String, DateTime<Utc>);
    let row: Option<Row> = greeting_cache::Entity::find_by_id(client_id.get())
        .select_only()
        .column(greeting_cache::Column::CacheKey)
        .column(greeting_cache::Column::Transcript)
        .column(greeting_cache::Column::DurationMs)
        // The same on SQLite and Postgres (bytes of a BLOB / bytea), as a 64-bit integer.
        .column_as(
            Expr::cust(r#"CAST(LENGTH("audio") AS BIGINT)"#),
            "size_bytes",
        )
        .column(greeting_cache::Column::Source)
        .column(greeting_cache::Column::CreatedAt)
        .into_tuple()
        .one(db)
        .await?;
    Ok(row.map(
        |(key, transcript, duration_ms, size_bytes, source, created_at)| GreetingSummary {
            key,
            transcript,
            duration_ms,
            size_bytes,
            source,
            created_at,
        },
    ))
}

/// Keeps `greeting` as the client's cached greeting, replacing the one there. A client deleted
/// meanwhile is [`StoreError::NotFound`].
pub async fn put(
    db: &impl ConnectionTrait,
    client_id: ClientId,
    greeting: &StoredGreeting,
) -> Result<(), StoreError> {
    let row = greeting_cache::ActiveModel {
        client_id: Set(client_id.get()),
        cache_key: Set(greeting.key.clone()),
        transcript: Set(greeting.transcript.clone()),
        audio: Set(greeting.audio.clone()),
        duration_ms: Set(i32::try_from(greeting.audio.len() / 8).unwrap_or(i32::MAX)),
        source: Set(greeting.source.clone()),
        created_at: Set(greeting.created_at),
    };
    let res = greeting_cache::Entity::insert(row)
        .on_conflict(
            OnConflict::column(greeting_cache::Column::ClientId)
                .update_columns([
                    greeting_cache::Column::CacheKey,
                    greeting_cache::Column::Transcript,
                    greeting_cache::Column::Audio,
                    greeting_cache::Column::DurationMs,
                    greeting_cache::Column::Source,
                    greeting_cache::Column::CreatedAt,
                ])
                .to_owned(),
        )
        .exec_without_returning(db)
        .await;
    match res {
        Ok(_) => Ok(()),
        // The client's row is gone (a foreign-key violation): nothing to keep it for.
        Err(e) if matches!(e.sql_err(), Some(SqlErr::ForeignKeyConstraintViolation(_))) => {
            Err(StoreError::NotFound("client"))
        }
        Err(e) => Err(e.into()),
    }
}

/// Forgets the client's cached greeting; whether there was one.
pub async fn delete(db: &impl ConnectionTrait, client_id: ClientId) -> Result<bool, StoreError> {
    let res = greeting_cache::Entity::delete_many()
        .filter(greeting_cache::Column::ClientId.eq(client_id.get()))
        .exec(db)
        .await?;
    Ok(res.rows_affected > 0)
}
