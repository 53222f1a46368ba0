//! Webhook events: each client's `webhook_url` and `webhook_secret`, the `messages` the agent
//! takes, and the `outbox` of events to deliver (README.md, "Webhook events").

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Clients {
    Table,
    Id,
    WebhookUrl,
    WebhookSecret,
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    Id,
    ClientId,
    CallSid,
    CallerPhone,
    CallerName,
    CallbackNumber,
    Message,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Outbox {
    Table,
    Id,
    ClientId,
    EventType,
    WebhookId,
    Body,
    Attempts,
    NextAttemptAt,
    LockedUntil,
    Status,
    LastError,
    CreatedAt,
    DeliveredAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // SQLite takes one column per ALTER TABLE.
        m.alter_table(
            Table::alter()
                .table(Clients::Table)
                .add_column(string_null(Clients::WebhookUrl))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Clients::Table)
                .add_column(string_null(Clients::WebhookSecret))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Messages::Table)
                .if_not_exists()
                .col(pk_auto(Messages::Id))
                .col(integer(Messages::ClientId))
                .col(string(Messages::CallSid))
                .col(string(Messages::CallerPhone))
                .col(string_null(Messages::CallerName))
                .col(string_null(Messages::CallbackNumber))
                .col(text(Messages::Message))
                .col(timestamp_with_time_zone(Messages::CreatedAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(Messages::Table, Messages::ClientId)
                        .to(Clients::Table, Clients::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_messages_client_created")
                .table(Messages::Table)
                .col(Messages::ClientId)
                .col(Messages::CreatedAt)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Outbox::Table)
                .if_not_exists()
                .col(pk_auto(Outbox::Id))
                .col(integer(Outbox::ClientId))
                .col(string(Outbox::EventType))
                .col(string_uniq(Outbox::WebhookId))
                .col(text(Outbox::Body))
                .col(integer(Outbox::Attempts).default(0))
                .col(timestamp_with_time_zone(Outbox::NextAttemptAt))
                .col(timestamp_with_time_zone_null(Outbox::LockedUntil))
                .col(string(Outbox::Status))
                .col(text_null(Outbox::LastError))
                .col(timestamp_with_time_zone(Outbox::CreatedAt))
                .col(timestamp_with_time_zone_null(Outbox::DeliveredAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(Outbox::Table, Outbox::ClientId)
                        .to(Clients::Table, Clients::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        // The worker's claim: pending rows by due time.
        m.create_index(
            Index::create()
                .name("idx_outbox_status_due")
                .table(Outbox::Table)
                .col(Outbox::Status)
                .col(Outbox::NextAttemptAt)
                .to_owned(),
        )
        .await?;
        // The admin API's list of a client's deliveries, newest first.
        m.create_index(
            Index::create()
                .name("idx_outbox_client_created")
                .table(Outbox::Table)
                .col(Outbox::ClientId)
                .col(Outbox::CreatedAt)
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for table in [Outbox::Table.into_iden(), Messages::Table.into_iden()] {
            m.drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        for column in [
            Clients::WebhookSecret.into_iden(),
            Clients::WebhookUrl.into_iden(),
        ] {
            m.alter_table(
                Table::alter()
                    .table(Clients::Table)
                    .drop_column(column)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}
