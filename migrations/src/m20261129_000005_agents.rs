//! The operators' own HTTP tools and a client's other agents (README "Operator tools",
//! "Agents"): two JSON columns on `clients`.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Clients {
    Table,
    HttpTools,
    Agents,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite takes one column per ALTER TABLE.
        for mut col in [text_null(Clients::HttpTools), text_null(Clients::Agents)] {
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
        for col in [Clients::HttpTools, Clients::Agents] {
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
