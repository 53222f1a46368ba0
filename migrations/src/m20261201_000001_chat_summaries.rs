//! A person's calls and chats by number (README "Chats are summarised too"): an index on
//! `calls (client_id, from_number, started_at)`, for the chat summary job, which reads a person's
//! exchanges in order and puts their waiting job off on each message, and for a person's history
//! (`GET /calls?from=…`), which otherwise read every call of the client.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Calls {
    Table,
    ClientId,
    FromNumber,
    StartedAt,
}

const NAME: &str = "idx_calls_client_from_started";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_index(
            Index::create()
                .name(NAME)
                .table(Calls::Table)
                .col(Calls::ClientId)
                .col(Calls::FromNumber)
                .col(Calls::StartedAt)
                .if_not_exists()
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(Index::drop().name(NAME).table(Calls::Table).to_owned())
            .await
    }
}
