//! A client's Kommo CRM settings (README "Kommo"): `clients.kommo`, JSON `{base_url, token,
//! webhook_secret}` (the token is a secret: never shown by the admin API, never logged).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Clients {
    Table,
    Kommo,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Clients::Table)
                .add_column(text_null(Clients::Kommo))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Clients::Table)
                .drop_column(Clients::Kommo)
                .to_owned(),
        )
        .await
    }
}
