//! After the call (README.md, "After the call"): each client's optional `results_schema`, the
//! structured `results` a call gets, and the durable `post_call_jobs` queue that summarises
//! finished calls.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Clients {
    Table,
    Id,
    ResultsSchema,
}

#[derive(DeriveIden)]
enum Calls {
    Table,
    Id,
    Results,
}

#[derive(DeriveIden)]
enum PostCallJobs {
    Table,
    Id,
    CallId,
    CallSid,
    ClientId,
    Status,
    Attempts,
    NextAttemptAt,
    LockedUntil,
    LastError,
    CreatedAt,
    UpdatedAt,
    Remember,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // SQLite takes one column per ALTER TABLE.
        m.alter_table(
            Table::alter()
                .table(Clients::Table)
                .add_column(text_null(Clients::ResultsSchema))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Calls::Table)
                .add_column(text_null(Calls::Results))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(PostCallJobs::Table)
                .if_not_exists()
                .col(pk_auto(PostCallJobs::Id))
                // One job per call.
                .col(integer_uniq(PostCallJobs::CallId))
                .col(string(PostCallJobs::CallSid))
                .col(integer(PostCallJobs::ClientId))
                .col(string(PostCallJobs::Status))
                .col(integer(PostCallJobs::Attempts).default(0))
                .col(timestamp_with_time_zone(PostCallJobs::NextAttemptAt))
                .col(timestamp_with_time_zone_null(PostCallJobs::LockedUntil))
                .col(text_null(PostCallJobs::LastError))
                .col(timestamp_with_time_zone(PostCallJobs::CreatedAt))
                .col(timestamp_with_time_zone(PostCallJobs::UpdatedAt))
                // Whether the summary goes into caller memory (not for an untrusted caller id).
                .col(boolean(PostCallJobs::Remember).default(true))
                .foreign_key(
                    ForeignKey::create()
                        .from(PostCallJobs::Table, PostCallJobs::CallId)
                        .to(Calls::Table, Calls::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .foreign_key(
                    ForeignKey::create()
                        .from(PostCallJobs::Table, PostCallJobs::ClientId)
                        .to(Clients::Table, Clients::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        // The worker's claim: pending jobs by due time.
        m.create_index(
            Index::create()
                .name("idx_post_call_jobs_status_due")
                .table(PostCallJobs::Table)
                .col(PostCallJobs::Status)
                .col(PostCallJobs::NextAttemptAt)
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(
            Table::drop()
                .table(PostCallJobs::Table)
                .if_exists()
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Calls::Table)
                .drop_column(Calls::Results)
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Clients::Table)
                .drop_column(Clients::ResultsSchema)
                .to_owned(),
        )
        .await?;
        Ok(())
    }
}
