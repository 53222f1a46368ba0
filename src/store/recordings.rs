//! Call recordings (`recordings`, one row per recorded call; `crate::recording`): written by the
//! recording worker once a call's file is stored (or failed), read and deleted by the admin API.

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set, sea_query::OnConflict};

use super::{StoreError, entities::recording};
use crate::domain::ClientId;

/// A call's recording as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecording {
    /// The call.
    pub call_sid: String,
    /// Whose call.
    pub client_id: ClientId,
    /// `ready`; `pending` (in the local spool, waiting for the store; tried again); or
    /// `failed`.
    pub status: String,
    /// The recording's key in the store, `<client id>/<CallSid>.ogg` (none when it failed).
    pub path: Option<String>,
    /// Size of the file.
    pub size_bytes: i64,
    /// Length of the audio, ms.
    pub duration_ms: i64,
    /// `opus`.
    pub codec: String,
    /// Why it failed.
    pub error: Option<String>,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
}

impl StoredRecording {
    /// A call's recording that failed, with why.
    pub fn failed(call_sid: &str, client_id: ClientId, error: impl Into<String>) -> Self {
        Self {
            call_sid: call_sid.to_string(),
            client_id,
            status: "failed".into(),
            path: None,
            size_bytes: 0,
            duration_ms: 0,
            codec: crate::recording::worker::CODEC.into(),
            error: Some(error.into()),
            created_at: Utc::now(),
        }
    }

    /// A call's recording stored at `key`.
    pub fn ready(
        call_sid: &str,
        client_id: ClientId,
        key: String,
        size_bytes: i64,
        duration_ms: i64,
    ) -> Self {
        Self {
            call_sid: call_sid.to_string(),
            client_id,
            status: "ready".into(),
            path: Some(key),
            size_bytes,
            duration_ms,
            codec: crate::recording::worker::CODEC.into(),
            error: None,
            created_at: Utc::now(),
        }
    }
}

impl From<recording::Model> for StoredRecording {
    fn from(m: recording::Model) -> Self {
        Self {
            call_sid: m.call_sid,
            client_id: ClientId::new(m.client_id),
            status: m.status,
            path: m.path,
            size_bytes: m.size_bytes,
            duration_ms: m.duration_ms,
            codec: m.codec,
            error: m.error,
            created_at: m.created_at,
        }
    }
}

/// Saves a recording's row (a second save of the same call replaces the first).
pub async fn put(db: &impl ConnectionTrait, r: &StoredRecording) -> Result<(), StoreError> {
    let am = recording::ActiveModel {
        call_sid: Set(r.call_sid.clone()),
        client_id: Set(r.client_id.get()),
        status: Set(r.status.clone()),
        path: Set(r.path.clone()),
        size_bytes: Set(r.size_bytes),
        duration_ms: Set(r.duration_ms),
        codec: Set(r.codec.clone()),
        error: Set(r.error.clone()),
        created_at: Set(r.created_at),
    };
    recording::Entity::insert(am)
        .on_conflict(
            OnConflict::column(recording::Column::CallSid)
                .update_columns([
                    recording::Column::Status,
                    recording::Column::Path,
                    recording::Column::SizeBytes,
                    recording::Column::DurationMs,
                    recording::Column::Codec,
                    recording::Column::Error,
                    recording::Column::CreatedAt,
                ])
                .to_owned(),
        )
        .exec(db)
        .await?;
    Ok(())
}

/// A `pending` recording reached the store: its row becomes `ready`. False when the row is
/// gone or not pending any more (deleted meanwhile: the caller removes what it stored).
pub async fn mark_ready(db: &impl ConnectionTrait, call_sid: &str) -> Result<bool, StoreError> {
    let r = recording::Entity::update_many()
        .col_expr(
            recording::Column::Status,
            sea_orm::sea_query::Expr::value("ready"),
        )
        .col_expr(
            recording::Column::Error,
            sea_orm::sea_query::Expr::value(Option::<String>::None),
        )
        .filter(recording::Column::CallSid.eq(call_sid))
        .filter(recording::Column::Status.eq("pending"))
        .exec(db)
        .await?;
    Ok(r.rows_affected > 0)
}

/// The recording of a call, if it has one.
pub async fn get(
    db: &impl ConnectionTrait,
    call_sid: &str,
) -> Result<Option<StoredRecording>, StoreError> {
    Ok(recording::Entity::find_by_id(call_sid.to_string())
        .one(db)
        .await?
        .map(StoredRecording::from))
}

/// Deletes a call's recording row; whether there was one.
pub async fn delete(db: &impl ConnectionTrait, call_sid: &str) -> Result<bool, StoreError> {
    let r = recording::Entity::delete_many()
        .filter(recording::Column::CallSid.eq(call_sid))
        .exec(db)
        .await?;
    Ok(r.rows_affected > 0)
}

/// Deletes the rows of `rows` (found by the caller), returning their files' paths.
async fn delete_rows(
    db: &impl ConnectionTrait,
    rows: Vec<recording::Model>,
) -> Result<Vec<String>, StoreError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let sids: Vec<String> = rows.iter().map(|r| r.call_sid.clone()).collect();
    recording::Entity::delete_many()
        .filter(recording::Column::CallSid.is_in(sids))
        .exec(db)
        .await?;
    Ok(rows.into_iter().filter_map(|r| r.path).collect())
}

/// Deletes every recording row of a client (the client is deleted); returns the files' paths.
pub async fn delete_for_client(
    db: &impl ConnectionTrait,
    client_id: ClientId,
) -> Result<Vec<String>, StoreError> {
    let rows = recording::Entity::find()
        .filter(recording::Column::ClientId.eq(client_id.get()))
        .all(db)
        .await?;
    delete_rows(db, rows).await
}

/// Deletes the recording rows of a client's calls from `phone` (the caller's privacy delete);
/// returns the files' paths.
pub async fn delete_for_caller(
    db: &impl ConnectionTrait,
    client_id: ClientId,
    phone: &str,
) -> Result<Vec<String>, StoreError> {
    use super::entities::call;
    let sids: Vec<String> = call::Entity::find()
        .filter(call::Column::ClientId.eq(client_id))
        .filter(call::Column::FromNumber.eq(phone.trim()))
        .all(db)
        .await?
        .into_iter()
        .map(|c| c.call_sid)
        .collect();
    if sids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = recording::Entity::find()
        .filter(recording::Column::CallSid.is_in(sids))
        .all(db)
        .await?;
    delete_rows(db, rows).await
}

/// Deletes the recording rows made before `before` (retention); returns the files' paths.
pub async fn delete_older_than(
    db: &impl ConnectionTrait,
    before: DateTime<Utc>,
) -> Result<Vec<String>, StoreError> {
    let rows = recording::Entity::find()
        .filter(recording::Column::CreatedAt.lt(before))
        .all(db)
        .await?;
    delete_rows(db, rows).await
}
