//! The agent acts: per-client transfer number, built-in tools on/off, caller-id trust and
//! overrides of the fixed lines (README "Tools", "Caller memory and caller ID").

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Clients {
    Table,
    TransferNumber,
    Tools,
    CallerIdTrust,
    Lines,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite takes one column per ALTER TABLE.
        for col in [
            string_null(Clients::TransferNumber),
            text_null(Clients::Tools),
            string_null(Clients::CallerIdTrust),
            text_null(Clients::Lines),
        ] {
            let mut col = col;
            manager
                .alter_table(
                    Table::alter()
                        .table(Clients::Table)
                        .add_column(&mut col)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for col in [
            Clients::TransferNumber,
            Clients::Tools,
            Clients::CallerIdTrust,
            Clients::Lines,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Clients::Table)
                        .drop_column(col)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
