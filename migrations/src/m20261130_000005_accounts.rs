//! Console accounts (README "Accounts"): `users` (an email, an argon2 password hash and a role,
//! `admin` or `operator`), `user_clients` (the clients an operator is given), `user_sessions`
//! (console log-ins: the SHA-256 of the cookie's token, never the token, with its CSRF token and
//! expiry) and `api_tokens` (per-user bearer tokens for the admin API, also stored hashed). And a
//! call's `timeline` (JSON: what happened when, for the console's call page).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    Email,
    PasswordHash,
    Role,
    CreatedAt,
}

#[derive(DeriveIden)]
enum UserClients {
    Table,
    UserId,
    ClientId,
}

#[derive(DeriveIden)]
enum UserSessions {
    Table,
    TokenHash,
    UserId,
    Csrf,
    CreatedAt,
    ExpiresAt,
}

#[derive(DeriveIden)]
enum ApiTokens {
    Table,
    TokenHash,
    UserId,
    Name,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Calls {
    Table,
    Timeline,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Users::Table)
                .if_not_exists()
                .col(pk_auto(Users::Id))
                .col(string(Users::Email).unique_key())
                .col(string(Users::PasswordHash))
                .col(string(Users::Role))
                .col(timestamp_with_time_zone(Users::CreatedAt))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(UserClients::Table)
                .if_not_exists()
                .col(integer(UserClients::UserId))
                .col(integer(UserClients::ClientId))
                .primary_key(
                    Index::create()
                        .col(UserClients::UserId)
                        .col(UserClients::ClientId),
                )
                .foreign_key(
                    ForeignKey::create()
                        .from(UserClients::Table, UserClients::UserId)
                        .to(Users::Table, Users::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(UserSessions::Table)
                .if_not_exists()
                .col(string(UserSessions::TokenHash).primary_key())
                .col(integer(UserSessions::UserId))
                .col(string(UserSessions::Csrf))
                .col(timestamp_with_time_zone(UserSessions::CreatedAt))
                .col(timestamp_with_time_zone(UserSessions::ExpiresAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(UserSessions::Table, UserSessions::UserId)
                        .to(Users::Table, Users::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(ApiTokens::Table)
                .if_not_exists()
                .col(string(ApiTokens::TokenHash).primary_key())
                .col(integer(ApiTokens::UserId))
                .col(string(ApiTokens::Name))
                .col(timestamp_with_time_zone(ApiTokens::CreatedAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(ApiTokens::Table, ApiTokens::UserId)
                        .to(Users::Table, Users::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Calls::Table)
                .add_column(text_null(Calls::Timeline))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Calls::Table)
                .drop_column(Calls::Timeline)
                .to_owned(),
        )
        .await?;
        for t in [
            ApiTokens::Table.into_iden(),
            UserSessions::Table.into_iden(),
            UserClients::Table.into_iden(),
            Users::Table.into_iden(),
        ] {
            m.drop_table(Table::drop().table(t).to_owned()).await?;
        }
        Ok(())
    }
}
