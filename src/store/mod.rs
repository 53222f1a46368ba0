//! Storage: sea-orm entities and repositories over SQLite (the embedded default) or PostgreSQL.
//!
//! Layout: [`entities`] (one module per table), [`clients`] (clients, numbers, FAQs),
//! [`callers`] (caller memory), [`calls`] (call records and transcripts), [`writer`] (the queue
//! every call record is written through), [`messages`] (messages taken for the business),
//! [`outbox`] (webhook events waiting for delivery), [`knowledge`] (documents and the full-text
//! search of documents and FAQs), [`conversations`] (each person's text conversation), [`post_call`] (the post-call jobs), [`greetings`] (cached
//! greetings), [`recent`] (what the
//! gateway keeps in memory to answer calls while the database is unavailable).
//!
//! Invariants:
//! 1. Every query works on both backends (tests run each storage test on both).
//! 2. A unique-constraint violation surfaces as [`StoreError::Conflict`], a missing row as
//!    [`StoreError::NotFound`]; database failures keep their `source()` and are logged by the
//!    HTTP edge, never shown to clients.
//! 3. The relay path never calls in here: call records (from the webhook, the status callback,
//!    the reaper and the media stream alike) are queued to the [`writer`] task.

pub mod callers;
pub mod calls;
pub mod clients;
pub mod conversations;
pub mod entities;
pub mod greetings;
pub mod knowledge;
pub mod lease;
pub mod messages;
pub mod outbox;
pub mod post_call;
pub mod recent;
pub mod recordings;
pub mod spool;
pub mod users;
pub mod writer;

use std::time::Duration;

use anyhow::Context;
use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, SqlErr,
};

use crate::{config::DatabaseSettings, domain::ClientId};

/// A [`ClientId`] compares with and filters on the `i32` client-id columns (the entities keep
/// `i32` fields; repositories take and return `ClientId`).
impl From<ClientId> for sea_orm::Value {
    fn from(id: ClientId) -> Self {
        id.get().into()
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A unique constraint refused the write.
    #[error("{0}")]
    Conflict(String),
    /// The database failed.
    #[error("database error")]
    Db(#[source] DbErr),
}

impl From<DbErr> for StoreError {
    fn from(e: DbErr) -> Self {
        Self::Db(e)
    }
}

impl StoreError {
    /// Maps a unique violation to `Conflict(message)`, anything else to `Db`.
    pub fn conflict_or_db(e: DbErr, message: impl FnOnce() -> String) -> Self {
        match e.sql_err() {
            Some(SqlErr::UniqueConstraintViolation(_)) => Self::Conflict(message()),
            _ => Self::Db(e),
        }
    }
}

/// Opens the pool. SQLite gets its directory created, WAL journaling, a busy timeout (so
/// concurrent writers wait instead of failing) and foreign keys on.
pub async fn connect(settings: &DatabaseSettings) -> anyhow::Result<DatabaseConnection> {
    let url = settings.url.expose();
    let sqlite = sqlite_file_path(url);
    if let Some(path) = &sqlite
        && let Some(dir) = std::path::Path::new(path).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating database directory {}", dir.display()))?;
    }
    let mut opts = ConnectOptions::new(url.to_string());
    opts.max_connections(settings.max_connections)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    if url.starts_with("sqlite:") {
        opts.map_sqlx_sqlite_opts(|o| {
            o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
                .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
        });
    }
    let db = Database::connect(opts)
        .await
        .context("connecting to the database (database.url)")?;
    db.execute_unprepared("SELECT 1")
        .await
        .context("database did not answer")?;
    Ok(db)
}

/// The Postgres advisory lock key instances take around migrations (`warmline` in ASCII).
pub const MIGRATION_LOCK: i64 = 0x7761_726d_6c69_6e65;

/// Applies pending migrations. On Postgres under an advisory lock ([`MIGRATION_LOCK`], held on
/// a connection of its own, so any pool size works): instances started at once against one
/// database migrate one after the other, and the later ones find nothing pending.
pub async fn migrate(db: &DatabaseConnection) -> anyhow::Result<()> {
    migrate_schema(db).await?;
    // Clients made before the web chat get their chat key (idempotent, any instance).
    clients::fill_chat_keys(db)
        .await
        .context("giving every client a web chat key")?;
    Ok(())
}

async fn migrate_schema(db: &DatabaseConnection) -> anyhow::Result<()> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Migrator::up(db, None)
            .await
            .context("applying database migrations");
    }
    use sea_orm::sqlx::{ConnectOptions as _, Connection as _};
    let options = db.get_postgres_connection_pool().connect_options();
    let mut lock = options
        .connect()
        .await
        .context("opening a connection for the migration lock")?;
    let free: bool = sea_orm::sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(MIGRATION_LOCK)
        .fetch_one(&mut lock)
        .await
        .context("taking the migration lock")?;
    if !free {
        tracing::info!("another instance is migrating this database; waiting for it");
        sea_orm::sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut lock)
            .await
            .context("waiting for the migration lock")?;
    }
    let applied = Migrator::up(db, None)
        .await
        .context("applying database migrations");
    // Closing the connection releases the lock too; unlock first to say so plainly.
    let _ = sea_orm::sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut lock)
        .await;
    let _ = lock.close().await;
    applied
}

/// The migrations this binary knows that the database has not applied. Reads only (no
/// `seaql_migrations` table is created): `serve --no-migrate` may run as a role without DDL
/// rights, beside instances that are migrating.
pub async fn pending_migrations(db: &DatabaseConnection) -> anyhow::Result<Vec<String>> {
    Ok(Migrator::get_pending_migrations_read_only(db)
        .await
        .context("reading the applied migrations")?
        .into_iter()
        .map(|m| m.name().to_string())
        .collect())
}

/// Every known migration and whether it is applied.
pub async fn migration_status(db: &DatabaseConnection) -> anyhow::Result<Vec<(String, bool)>> {
    let applied: std::collections::HashSet<String> = Migrator::get_applied_migrations(db)
        .await
        .context("reading applied migrations")?
        .into_iter()
        .map(|m| m.name().to_string())
        .collect();
    Ok(Migrator::migrations()
        .into_iter()
        .map(|m| {
            let name = m.name().to_string();
            let done = applied.contains(&name);
            (name, done)
        })
        .collect())
}

/// The file of a `sqlite:` URL (none for `:memory:` or another database).
pub fn sqlite_file_path(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| path.to_string())
}
