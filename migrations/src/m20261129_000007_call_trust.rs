//! What the caller id of a call was worth (`verified`, `unverified`, `untrusted`), kept with the
//! call so that a call rebuilt from the database (its warm session expired before the stream
//! started) keeps the trust the voice webhook judged from `StirVerstat` (README "Caller memory
//! and caller ID").

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Calls {
    Table,
    CallerTrust,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Calls::Table)
                    .add_column(string_null(Calls::CallerTrust))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Calls::Table)
                    .drop_column(Calls::CallerTrust)
                    .to_owned(),
            )
            .await
    }
}
