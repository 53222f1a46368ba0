//! Records that survive (README.md, "What survives what"): call records reach the database
//! through a local spool and may be written more than once (a replay after a crash), so every
//! write is idempotent. A transcript line is unique per (call, sequence), and `calls.recorded`
//! says the finished call (its transcript, caller memory and post-call job) is already saved.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Calls {
    Table,
    Recorded,
}

#[derive(DeriveIden)]
enum TranscriptItems {
    Table,
    CallId,
    Seq,
}

const INDEX: &str = "ux_transcript_items_call_id_seq";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Calls::Table)
                .add_column(boolean(Calls::Recorded).default(false))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name(INDEX)
                .table(TranscriptItems::Table)
                .col(TranscriptItems::CallId)
                .col(TranscriptItems::Seq)
                .unique()
                .if_not_exists()
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name(INDEX)
                .table(TranscriptItems::Table)
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Calls::Table)
                .drop_column(Calls::Recorded)
                .to_owned(),
        )
        .await
    }
}
