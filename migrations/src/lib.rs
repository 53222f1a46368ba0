//! Database migrations for warmline (sea-orm-migration). Every migration runs on SQLite and
//! PostgreSQL; `warmline serve` applies pending ones at start, `warmline migrate` on demand.

pub use sea_orm_migration::prelude::*;

mod m20261123_000001_init;
mod m20261129_000001_agent;
mod m20261129_000002_knowledge;
mod m20261129_000003_outbox;
mod m20261129_000004_post_call;
mod m20261129_000005_agents;
mod m20261129_000006_spool;
mod m20261129_000007_call_trust;
mod m20261130_000001_call_claims;
mod m20261130_000002_greetings;
mod m20261130_000003_engine;
mod m20261130_000004_recordings;
mod m20261130_000005_accounts;
mod m20261130_000006_text_channels;
mod m20261130_000007_kommo;
mod m20261201_000001_chat_summaries;

/// The ordered list of warmline migrations.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261123_000001_init::Migration),
            Box::new(m20261129_000001_agent::Migration),
            Box::new(m20261129_000002_knowledge::Migration),
            Box::new(m20261129_000003_outbox::Migration),
            Box::new(m20261129_000004_post_call::Migration),
            Box::new(m20261129_000005_agents::Migration),
            Box::new(m20261129_000006_spool::Migration),
            Box::new(m20261129_000007_call_trust::Migration),
            Box::new(m20261130_000001_call_claims::Migration),
            Box::new(m20261130_000002_greetings::Migration),
            Box::new(m20261130_000003_engine::Migration),
            Box::new(m20261130_000004_recordings::Migration),
            Box::new(m20261130_000005_accounts::Migration),
            Box::new(m20261130_000006_text_channels::Migration),
            Box::new(m20261130_000007_kommo::Migration),
            Box::new(m20261201_000001_chat_summaries::Migration),
        ]
    }
}
