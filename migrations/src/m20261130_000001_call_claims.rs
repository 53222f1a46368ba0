//! Several instances on one database (README "Several instances"): the instance that warms a
//! call claims its CallSid here first (`INSERT … ON CONFLICT DO NOTHING`), so a retried voice
//! webhook that lands on another instance finds who holds the call instead of opening a second
//! Realtime session. Rows are deleted a day after their claim.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum CallClaims {
    Table,
    CallSid,
    Instance,
    ClaimedAt,
}

const INDEX: &str = "ix_call_claims_claimed_at";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(CallClaims::Table)
                .if_not_exists()
                .col(string(CallClaims::CallSid).primary_key())
                .col(string(CallClaims::Instance))
                .col(timestamp_with_time_zone(CallClaims::ClaimedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name(INDEX)
                .table(CallClaims::Table)
                .col(CallClaims::ClaimedAt)
                .if_not_exists()
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(CallClaims::Table).to_owned())
            .await
    }
}
