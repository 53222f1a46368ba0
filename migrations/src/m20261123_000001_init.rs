//! The initial schema: clients, their phone numbers and FAQs, callers (per-client memory),
//! calls and transcript items.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Clients {
    Table,
    Id,
    Name,
    Instructions,
    Greeting,
    Voice,
    Language,
    Timezone,
    BusinessHours,
    PrewarmPolicy,
    FallbackNumber,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum PhoneNumbers {
    Table,
    Id,
    ClientId,
    Number,
    Active,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Faqs {
    Table,
    Id,
    ClientId,
    Question,
    Answer,
    Position,
}

#[derive(DeriveIden)]
enum Callers {
    Table,
    Id,
    ClientId,
    Phone,
    Name,
    CallCount,
    FirstCallAt,
    LastCallAt,
    Memory,
}

#[derive(DeriveIden)]
enum Calls {
    Table,
    Id,
    CallSid,
    ClientId,
    FromNumber,
    ToNumber,
    StreamSid,
    Status,
    Path,
    WebhookMs,
    TimeToFirstAudioMs,
    StartedAt,
    AnsweredAt,
    EndedAt,
    DurationMs,
    EndReason,
    Summary,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum TranscriptItems {
    Table,
    Id,
    CallId,
    Seq,
    Role,
    Text,
    At,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Clients::Table)
                .if_not_exists()
                .col(pk_auto(Clients::Id))
                .col(string(Clients::Name))
                .col(text(Clients::Instructions))
                .col(text(Clients::Greeting))
                .col(string(Clients::Voice))
                .col(string(Clients::Language))
                .col(string(Clients::Timezone))
                .col(text(Clients::BusinessHours))
                .col(string_null(Clients::PrewarmPolicy))
                .col(string_null(Clients::FallbackNumber))
                .col(timestamp_with_time_zone(Clients::CreatedAt))
                .col(timestamp_with_time_zone(Clients::UpdatedAt))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(PhoneNumbers::Table)
                .if_not_exists()
                .col(pk_auto(PhoneNumbers::Id))
                .col(integer(PhoneNumbers::ClientId))
                .col(string_uniq(PhoneNumbers::Number))
                .col(boolean(PhoneNumbers::Active))
                .col(timestamp_with_time_zone(PhoneNumbers::CreatedAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(PhoneNumbers::Table, PhoneNumbers::ClientId)
                        .to(Clients::Table, Clients::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Faqs::Table)
                .if_not_exists()
                .col(pk_auto(Faqs::Id))
                .col(integer(Faqs::ClientId))
                .col(text(Faqs::Question))
                .col(text(Faqs::Answer))
                .col(integer(Faqs::Position))
                .foreign_key(
                    ForeignKey::create()
                        .from(Faqs::Table, Faqs::ClientId)
                        .to(Clients::Table, Clients::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_faqs_client")
                .table(Faqs::Table)
                .col(Faqs::ClientId)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Callers::Table)
                .if_not_exists()
                .col(pk_auto(Callers::Id))
                .col(integer(Callers::ClientId))
                .col(string(Callers::Phone))
                .col(string_null(Callers::Name))
                .col(integer(Callers::CallCount))
                .col(timestamp_with_time_zone(Callers::FirstCallAt))
                .col(timestamp_with_time_zone(Callers::LastCallAt))
                .col(text(Callers::Memory))
                .foreign_key(
                    ForeignKey::create()
                        .from(Callers::Table, Callers::ClientId)
                        .to(Clients::Table, Clients::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("uq_callers_client_phone")
                .table(Callers::Table)
                .col(Callers::ClientId)
                .col(Callers::Phone)
                .unique()
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Calls::Table)
                .if_not_exists()
                .col(pk_auto(Calls::Id))
                .col(string_uniq(Calls::CallSid))
                .col(integer_null(Calls::ClientId))
                .col(string(Calls::FromNumber))
                .col(string(Calls::ToNumber))
                .col(string_null(Calls::StreamSid))
                .col(string(Calls::Status))
                .col(string_null(Calls::Path))
                .col(big_integer_null(Calls::WebhookMs))
                .col(big_integer_null(Calls::TimeToFirstAudioMs))
                .col(timestamp_with_time_zone(Calls::StartedAt))
                .col(timestamp_with_time_zone_null(Calls::AnsweredAt))
                .col(timestamp_with_time_zone_null(Calls::EndedAt))
                .col(big_integer_null(Calls::DurationMs))
                .col(text_null(Calls::EndReason))
                .col(text_null(Calls::Summary))
                .col(timestamp_with_time_zone(Calls::CreatedAt))
                .col(timestamp_with_time_zone(Calls::UpdatedAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(Calls::Table, Calls::ClientId)
                        .to(Clients::Table, Clients::Id)
                        .on_delete(ForeignKeyAction::SetNull),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_calls_client_started")
                .table(Calls::Table)
                .col(Calls::ClientId)
                .col(Calls::StartedAt)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(TranscriptItems::Table)
                .if_not_exists()
                .col(pk_auto(TranscriptItems::Id))
                .col(integer(TranscriptItems::CallId))
                .col(integer(TranscriptItems::Seq))
                .col(string(TranscriptItems::Role))
                .col(text(TranscriptItems::Text))
                .col(timestamp_with_time_zone(TranscriptItems::At))
                .foreign_key(
                    ForeignKey::create()
                        .from(TranscriptItems::Table, TranscriptItems::CallId)
                        .to(Calls::Table, Calls::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_transcript_call_seq")
                .table(TranscriptItems::Table)
                .col(TranscriptItems::CallId)
                .col(TranscriptItems::Seq)
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            TranscriptItems::Table.into_iden(),
            Calls::Table.into_iden(),
            Callers::Table.into_iden(),
            Faqs::Table.into_iden(),
            PhoneNumbers::Table.into_iden(),
            Clients::Table.into_iden(),
        ] {
            m.drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
