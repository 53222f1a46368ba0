//! The instant answer (README "Greetings: cached, generated, auto"): a client's `greeting_mode`
//! (`cached`, `generated`, `auto`; NULL is `auto`) and its cached greeting, one row per client:
//! the μ-law audio as the caller heard it, its transcript, and the key it was made for (a hash
//! of the greeting text, voice, model and language; a row under another key is stale).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Clients {
    Table,
    Id,
    GreetingMode,
}

#[derive(DeriveIden)]
enum GreetingCache {
    Table,
    ClientId,
    CacheKey,
    Transcript,
    Audio,
    DurationMs,
    Source,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Clients::Table)
                .add_column(string_null(Clients::GreetingMode))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(GreetingCache::Table)
                .if_not_exists()
                .col(integer(GreetingCache::ClientId).primary_key())
                .col(string(GreetingCache::CacheKey))
                .col(text(GreetingCache::Transcript))
                .col(blob(GreetingCache::Audio))
                .col(integer(GreetingCache::DurationMs))
                .col(string(GreetingCache::Source))
                .col(timestamp_with_time_zone(GreetingCache::CreatedAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(GreetingCache::Table, GreetingCache::ClientId)
                        .to(Clients::Table, Clients::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(GreetingCache::Table).to_owned())
            .await?;
        m.alter_table(
            Table::alter()
                .table(Clients::Table)
                .drop_column(Clients::GreetingMode)
                .to_owned(),
        )
        .await
    }
}
