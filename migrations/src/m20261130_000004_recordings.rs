//! Call recordings (README "Recordings"): a client's `recording` (`on`, or `off`/NULL) and the
//! notice callers hear first (`recording_notice`; NULL: the built-in one in the client's
//! language), and one `recordings` row per recorded call: where its Ogg/Opus file is, how long
//! and large it is, and whether it is `ready` or `failed` (with why).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Clients {
    Table,
    Recording,
    RecordingNotice,
}

#[derive(DeriveIden)]
enum Recordings {
    Table,
    CallSid,
    ClientId,
    Status,
    Path,
    SizeBytes,
    DurationMs,
    Codec,
    Error,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one at a time.
        m.alter_table(
            Table::alter()
                .table(Clients::Table)
                .add_column(string_null(Clients::Recording))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Clients::Table)
                .add_column(text_null(Clients::RecordingNotice))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(Recordings::Table)
                .if_not_exists()
                .col(string(Recordings::CallSid).primary_key())
                .col(integer(Recordings::ClientId))
                .col(string(Recordings::Status))
                .col(string_null(Recordings::Path))
                .col(big_integer(Recordings::SizeBytes))
                .col(big_integer(Recordings::DurationMs))
                .col(string(Recordings::Codec))
                .col(text_null(Recordings::Error))
                .col(timestamp_with_time_zone(Recordings::CreatedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_recordings_client")
                .table(Recordings::Table)
                .col(Recordings::ClientId)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(Recordings::Table).to_owned())
            .await?;
        m.alter_table(
            Table::alter()
                .table(Clients::Table)
                .drop_column(Clients::RecordingNotice)
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Clients::Table)
                .drop_column(Clients::Recording)
                .to_owned(),
        )
        .await
    }
}
