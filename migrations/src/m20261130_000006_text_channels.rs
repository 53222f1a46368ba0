//! The text channels (README "Text channels"): `conversations` maps a person of a client (an
//! identity: an E.164 number, `web:{session}`, `kommo:lead:{id}`) to the OpenAI conversation that
//! holds their chat, one per (client, identity); `calls.channel` says where an exchange happened
//! (`voice` for every call, `webchat`, `whatsapp`, `sms`, `kommo` for a text exchange, which is
//! kept as a call row with its transcript); a client's public chat key (`clients.chat_key`,
//! unique) and the origins its web chat may be used from (`clients.chat_origins`, JSON list);
//! `text_inbound`, the ids of messages taken from a channel that retries (Twilio's `MessageSid`),
//! so a retried webhook is answered once.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Conversations {
    Table,
    Id,
    ClientId,
    Identity,
    Channel,
    ConversationId,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum TextInbound {
    Table,
    MessageSid,
    Channel,
    ReceivedAt,
}

#[derive(DeriveIden)]
enum Clients {
    Table,
    Id,
    ChatKey,
    ChatOrigins,
}

#[derive(DeriveIden)]
enum Calls {
    Table,
    Channel,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Conversations::Table)
                .if_not_exists()
                .col(pk_auto(Conversations::Id))
                .col(integer(Conversations::ClientId))
                .col(string(Conversations::Identity))
                .col(string(Conversations::Channel))
                .col(string(Conversations::ConversationId))
                .col(timestamp_with_time_zone(Conversations::CreatedAt))
                .col(timestamp_with_time_zone(Conversations::UpdatedAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(Conversations::Table, Conversations::ClientId)
                        .to(Clients::Table, Clients::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("conversations_client_identity")
                .table(Conversations::Table)
                .col(Conversations::ClientId)
                .col(Conversations::Identity)
                .unique()
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(TextInbound::Table)
                .if_not_exists()
                .col(string(TextInbound::MessageSid).primary_key())
                .col(string(TextInbound::Channel))
                .col(timestamp_with_time_zone(TextInbound::ReceivedAt))
                .to_owned(),
        )
        .await?;
        // One column per statement: SQLite alters one at a time.
        m.alter_table(
            Table::alter()
                .table(Calls::Table)
                .add_column(string(Calls::Channel).default("voice"))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Clients::Table)
                .add_column(string_null(Clients::ChatKey))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Clients::Table)
                .add_column(text_null(Clients::ChatOrigins))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("clients_chat_key")
                .table(Clients::Table)
                .col(Clients::ChatKey)
                .unique()
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name("clients_chat_key")
                .table(Clients::Table)
                .to_owned(),
        )
        .await?;
        for col in [Clients::ChatOrigins, Clients::ChatKey] {
            m.alter_table(
                Table::alter()
                    .table(Clients::Table)
                    .drop_column(col)
                    .to_owned(),
            )
            .await?;
        }
        m.alter_table(
            Table::alter()
                .table(Calls::Table)
                .drop_column(Calls::Channel)
                .to_owned(),
        )
        .await?;
        m.drop_table(Table::drop().table(TextInbound::Table).to_owned())
            .await?;
        m.drop_table(Table::drop().table(Conversations::Table).to_owned())
            .await
    }
}
