//! Knowledge: documents a client uploads, the passages the agent's `search_knowledge` tool
//! searches (cut from documents, one per FAQ) and their full-text index (README.md,
//! "Knowledge"; the passage and query rules are in src/knowledge.rs).
//!
//! - `knowledge_documents`: one uploaded text (name unique per client), deleted with its client.
//! - `knowledge_passages`: exactly one of `document_id` / `faq_id` says where a passage comes
//!   from; it goes with its document, its FAQ and its client.
//! - SQLite: `knowledge_fts`, an FTS5 table over the passages' text (external content, so the
//!   text is stored once) with the `unicode61 remove_diacritics 2` tokenizer ("más" and "mas"
//!   are one word), kept in step by triggers on `knowledge_passages` (they also fire for the
//!   rows a foreign key cascade deletes).
//! - Postgres: a GIN index over `to_tsvector(config, text)`, where `config` is the passage's text
//!   search configuration, chosen from its client's language. Why these configurations: the
//!   built-in `spanish` one is not accent-insensitive ("información" stems to `inform`,
//!   "informacion" to `informacion`; "más" is a stop word, "mas" is not), and callers'
//!   transcripts and businesses' documents do not always agree on accents. `simple` + unaccent
//!   would fold accents but lose stemming ("citas"/"cita", "appointments"/"appointment") and
//!   stop words, which matter more on Postgres than on SQLite because `ts_rank` has no inverse
//!   document frequency: with an OR query, "the" would weigh as much as "walk-ins". So each of
//!   `warmline_english`, `warmline_spanish` and `warmline_simple` (any other language) is the
//!   built-in configuration with `unaccent` run before its dictionary, the pattern the
//!   PostgreSQL manual gives for unaccent. This needs the `unaccent` extension (in contrib,
//!   trusted: a database owner may create it). A client's language change re-tags its
//!   passages in the same transaction (src/store/knowledge.rs).
//!
//! Existing FAQs are indexed here, so a database migrated from the first schema finds them.

use sea_orm_migration::{prelude::*, schema::*, sea_orm::DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Clients {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Faqs {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum KnowledgeDocuments {
    Table,
    Id,
    ClientId,
    Name,
    Content,
    Bytes,
    CreatedAt,
}

#[derive(DeriveIden)]
enum KnowledgePassages {
    Table,
    Id,
    ClientId,
    DocumentId,
    FaqId,
    Position,
    Text,
    Config,
}

const SQLITE_UP: &[&str] = &[
    "CREATE VIRTUAL TABLE knowledge_fts USING fts5(text, content='knowledge_passages', \
     content_rowid='id', tokenize='unicode61 remove_diacritics 2')",
    "CREATE TRIGGER knowledge_passages_ai AFTER INSERT ON knowledge_passages BEGIN \
     INSERT INTO knowledge_fts(rowid, text) VALUES (new.id, new.text); END",
    "CREATE TRIGGER knowledge_passages_ad AFTER DELETE ON knowledge_passages BEGIN \
     INSERT INTO knowledge_fts(knowledge_fts, rowid, text) VALUES ('delete', old.id, old.text); END",
    "CREATE TRIGGER knowledge_passages_au AFTER UPDATE ON knowledge_passages BEGIN \
     INSERT INTO knowledge_fts(knowledge_fts, rowid, text) VALUES ('delete', old.id, old.text); \
     INSERT INTO knowledge_fts(rowid, text) VALUES (new.id, new.text); END",
    "INSERT INTO knowledge_passages (client_id, faq_id, position, text) \
     SELECT client_id, id, 0, question || char(10) || answer FROM faqs",
];

const SQLITE_DOWN: &[&str] = &[
    "DROP TRIGGER IF EXISTS knowledge_passages_ai",
    "DROP TRIGGER IF EXISTS knowledge_passages_ad",
    "DROP TRIGGER IF EXISTS knowledge_passages_au",
    "DROP TABLE IF EXISTS knowledge_fts",
];

const POSTGRES_UP: &[&str] = &[
    "CREATE EXTENSION IF NOT EXISTS unaccent",
    "CREATE TEXT SEARCH CONFIGURATION warmline_english (COPY = english)",
    "ALTER TEXT SEARCH CONFIGURATION warmline_english \
     ALTER MAPPING FOR hword, hword_part, word WITH unaccent, english_stem",
    "CREATE TEXT SEARCH CONFIGURATION warmline_spanish (COPY = spanish)",
    "ALTER TEXT SEARCH CONFIGURATION warmline_spanish \
     ALTER MAPPING FOR hword, hword_part, word WITH unaccent, spanish_stem",
    "CREATE TEXT SEARCH CONFIGURATION warmline_simple (COPY = simple)",
    "ALTER TEXT SEARCH CONFIGURATION warmline_simple \
     ALTER MAPPING FOR hword, hword_part, word WITH unaccent, simple",
    "CREATE INDEX idx_knowledge_passages_fts ON knowledge_passages \
     USING GIN (to_tsvector(config, text))",
    // The same choice as `knowledge::text_search_config` in the service.
    "INSERT INTO knowledge_passages (client_id, faq_id, position, text, config) \
     SELECT f.client_id, f.id, 0, f.question || chr(10) || f.answer, \
     (CASE lower(split_part(replace(c.language, '_', '-'), '-', 1)) \
     WHEN 'es' THEN 'warmline_spanish' WHEN 'en' THEN 'warmline_english' \
     ELSE 'warmline_simple' END)::regconfig \
     FROM faqs f JOIN clients c ON c.id = f.client_id",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let backend = m.get_database_backend();
        m.create_table(
            Table::create()
                .table(KnowledgeDocuments::Table)
                .if_not_exists()
                .col(pk_auto(KnowledgeDocuments::Id))
                .col(integer(KnowledgeDocuments::ClientId))
                .col(string(KnowledgeDocuments::Name))
                .col(text(KnowledgeDocuments::Content))
                .col(big_integer(KnowledgeDocuments::Bytes))
                .col(timestamp_with_time_zone(KnowledgeDocuments::CreatedAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(KnowledgeDocuments::Table, KnowledgeDocuments::ClientId)
                        .to(Clients::Table, Clients::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("uq_knowledge_documents_client_name")
                .table(KnowledgeDocuments::Table)
                .col(KnowledgeDocuments::ClientId)
                .col(KnowledgeDocuments::Name)
                .unique()
                .to_owned(),
        )
        .await?;

        let mut passages = Table::create();
        passages
            .table(KnowledgePassages::Table)
            .if_not_exists()
            .col(pk_auto(KnowledgePassages::Id))
            .col(integer(KnowledgePassages::ClientId))
            .col(integer_null(KnowledgePassages::DocumentId))
            .col(integer_null(KnowledgePassages::FaqId))
            .col(integer(KnowledgePassages::Position))
            .col(text(KnowledgePassages::Text))
            .check(
                Expr::col(KnowledgePassages::DocumentId)
                    .is_null()
                    .ne(Expr::col(KnowledgePassages::FaqId).is_null()),
            )
            .foreign_key(
                ForeignKey::create()
                    .from(KnowledgePassages::Table, KnowledgePassages::ClientId)
                    .to(Clients::Table, Clients::Id)
                    .on_delete(ForeignKeyAction::Cascade),
            )
            .foreign_key(
                ForeignKey::create()
                    .from(KnowledgePassages::Table, KnowledgePassages::DocumentId)
                    .to(KnowledgeDocuments::Table, KnowledgeDocuments::Id)
                    .on_delete(ForeignKeyAction::Cascade),
            )
            .foreign_key(
                ForeignKey::create()
                    .from(KnowledgePassages::Table, KnowledgePassages::FaqId)
                    .to(Faqs::Table, Faqs::Id)
                    .on_delete(ForeignKeyAction::Cascade),
            );
        if backend == DbBackend::Postgres {
            passages.col(
                ColumnDef::new(KnowledgePassages::Config)
                    .custom(Alias::new("regconfig"))
                    .not_null(),
            );
        }
        m.create_table(passages.to_owned()).await?;
        for (name, col) in [
            ("idx_knowledge_passages_client", KnowledgePassages::ClientId),
            (
                "idx_knowledge_passages_document",
                KnowledgePassages::DocumentId,
            ),
            ("idx_knowledge_passages_faq", KnowledgePassages::FaqId),
        ] {
            m.create_index(
                Index::create()
                    .name(name)
                    .table(KnowledgePassages::Table)
                    .col(col)
                    .to_owned(),
            )
            .await?;
        }

        let db = m.get_connection();
        let statements = match backend {
            DbBackend::Postgres => POSTGRES_UP,
            _ => SQLITE_UP,
        };
        for sql in statements {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        if m.get_database_backend() == DbBackend::Sqlite {
            // The triggers first: nothing may refer to the FTS5 table once it is gone.
            for sql in SQLITE_DOWN {
                db.execute_unprepared(sql).await?;
            }
        }
        for table in [
            KnowledgePassages::Table.into_iden(),
            KnowledgeDocuments::Table.into_iden(),
        ] {
            m.drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        if m.get_database_backend() == DbBackend::Postgres {
            for config in ["warmline_english", "warmline_spanish", "warmline_simple"] {
                db.execute_unprepared(&format!(
                    "DROP TEXT SEARCH CONFIGURATION IF EXISTS {config}"
                ))
                .await?;
            }
        }
        Ok(())
    }
}
