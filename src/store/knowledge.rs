//! Knowledge documents and the full-text search behind the agent's `search_knowledge` tool
//! (README.md, "Knowledge"): a client's documents, cut into passages, and its FAQs (one passage
//! each), searched with the database's own full-text search: FTS5 with bm25 on SQLite, a GIN
//! index over `to_tsvector` with `ts_rank` on Postgres (schema and the choice of text search
//! configuration: migrations/src/m20261129_000002_knowledge.rs; splitting and query rules:
//! `crate::knowledge`).
//!
//! Invariants:
//! 1. The passages are always in step with what they come from: a document's are written and
//!    deleted in its transaction, an FAQ's in the transaction of every FAQ write
//!    (`store::clients`), and on SQLite the FTS5 index follows the passages by triggers.
//! 2. A search sees only its client's passages, and a caller's words never reach SQL as syntax
//!    (they are bound as values, built by `knowledge::query_terms`).
//! 3. Passages are inserted with explicit SQL (never through the entity): on Postgres each
//!    carries its client's text search configuration, which the entity does not know.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set, Statement, TransactionTrait,
    sea_query::{Alias, Expr, ExprTrait, Query},
};

use super::{
    StoreError,
    entities::{client, faq},
};
use crate::{
    domain::ClientId,
    knowledge::{self, faq_passage, split_passages},
};

/// Most passages a search returns, whatever the caller asks.
pub const MAX_SEARCH_LIMIT: usize = 50;

/// Where an FAQ hit comes from, as the agent is told.
pub const FAQ_SOURCE: &str = "FAQ";

/// `knowledge_documents`: one uploaded text.
pub mod document {
    use sea_orm::entity::prelude::*;

    /// A document row.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "knowledge_documents")]
    pub struct Model {
        /// Primary key.
        #[sea_orm(primary_key)]
        pub id: i32,
        /// Owner.
        pub client_id: i32,
        /// Name, unique per client; the source of its passages.
        pub name: String,
        /// The text as uploaded.
        pub content: String,
        /// Size of `content` in bytes (UTF-8).
        pub bytes: i64,
        /// Uploaded.
        pub created_at: ChronoDateTimeUtc,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `knowledge_passages`: what a search finds (read and delete only; see invariant 3).
pub mod passage {
    use sea_orm::entity::prelude::*;

    /// A passage row.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "knowledge_passages")]
    pub struct Model {
        /// Primary key (the FTS5 rowid on SQLite).
        #[sea_orm(primary_key)]
        pub id: i32,
        /// Owner.
        pub client_id: i32,
        /// The document it was cut from (exactly one of `document_id` and `faq_id` is set).
        pub document_id: Option<i32>,
        /// The FAQ it is.
        pub faq_id: Option<i32>,
        /// Order within its document (0 for an FAQ).
        pub position: i32,
        /// The text searched and returned.
        pub text: String,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A document without its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentSummary {
    /// Id.
    pub id: i32,
    /// Name.
    pub name: String,
    /// Size of the content in bytes.
    pub bytes: i64,
    /// Passages it was cut into.
    pub passages: i64,
    /// Uploaded.
    pub created_at: DateTime<Utc>,
}

/// A document with its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// Id, name, size, passages, time.
    pub summary: DocumentSummary,
    /// The text as uploaded.
    pub content: String,
}

/// A search hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passage {
    /// The document's name, or [`FAQ_SOURCE`].
    pub source: String,
    /// The passage.
    pub text: String,
}

/// Where new passages come from.
#[derive(Debug, Clone, Copy)]
enum Source {
    Document(i32),
    Faq(i32),
}

/// The client's language, or `NotFound("client")`.
async fn client_language(
    db: &impl ConnectionTrait,
    client_id: ClientId,
) -> Result<String, StoreError> {
    client::Entity::find_by_id(client_id)
        .select_only()
        .column(client::Column::Language)
        .into_tuple::<String>()
        .one(db)
        .await?
        .ok_or(StoreError::NotFound("client"))
}

/// Rows per INSERT statement (6 values each, well under both backends' parameter limits).
const INSERT_CHUNK: usize = 100;

async fn insert_passages(
    db: &impl ConnectionTrait,
    client_id: ClientId,
    source: Source,
    texts: &[String],
    language: &str,
) -> Result<(), StoreError> {
    let postgres = db.get_database_backend() == DbBackend::Postgres;
    let config = knowledge::text_search_config(language);
    let (document_id, faq_id) = match source {
        Source::Document(id) => (Some(id), None),
        Source::Faq(id) => (None, Some(id)),
    };
    for (chunk_no, chunk) in texts.chunks(INSERT_CHUNK).enumerate() {
        let mut columns: Vec<Alias> = ["client_id", "document_id", "faq_id", "position", "text"]
            .into_iter()
            .map(Alias::new)
            .collect();
        if postgres {
            columns.push(Alias::new("config"));
        }
        let mut insert = Query::insert();
        insert.into_table(passage::Entity).columns(columns);
        for (i, text) in chunk.iter().enumerate() {
            let position = (chunk_no * INSERT_CHUNK + i) as i32;
            let mut row: Vec<Expr> = vec![
                Expr::val(client_id.get()),
                Expr::val(document_id),
                Expr::val(faq_id),
                Expr::val(position),
                Expr::val(text.as_str()),
            ];
            if postgres {
                row.push(Expr::val(config).cast_as(Alias::new("regconfig")));
            }
            insert
                .values(row)
                .map_err(|e| DbErr::Custom(format!("building the passage insert: {e}")))?;
        }
        db.execute(&insert).await?;
    }
    Ok(())
}

/// Stores a document for a client and cuts it into passages (`knowledge::split_passages`), in
/// one transaction. The name and content are expected checked (`knowledge::check_name`,
/// `knowledge::check_content`). A name the client already uses is a `Conflict`; an unknown
/// client is `NotFound`.
pub async fn add_document(
    db: &DatabaseConnection,
    client_id: ClientId,
    name: &str,
    content: &str,
) -> Result<DocumentSummary, StoreError> {
    let passages = split_passages(content);
    let txn = db.begin().await?;
    let language = client_language(&txn, client_id).await?;
    let row = document::ActiveModel {
        client_id: Set(client_id.get()),
        name: Set(name.to_string()),
        content: Set(content.to_string()),
        bytes: Set(content.len() as i64),
        created_at: Set(Utc::now()),
        ..Default::default()
    }
    .insert(&txn)
    .await
    .map_err(|e| {
        StoreError::conflict_or_db(e, || {
            format!("a knowledge document named {name:?} already exists; delete it first")
        })
    })?;
    insert_passages(
        &txn,
        client_id,
        Source::Document(row.id),
        &passages,
        &language,
    )
    .await?;
    txn.commit().await?;
    Ok(DocumentSummary {
        id: row.id,
        name: row.name,
        bytes: row.bytes,
        passages: passages.len() as i64,
        created_at: row.created_at,
    })
}

/// Passages per document of a client (documents without passages are absent).
async fn passage_counts(
    db: &impl ConnectionTrait,
    client_id: ClientId,
    document_id: Option<i32>,
) -> Result<Vec<(Option<i32>, i64)>, StoreError> {
    let mut q = passage::Entity::find()
        .select_only()
        .column(passage::Column::DocumentId)
        .column_as(Expr::col(passage::Column::Id).count(), "n")
        .filter(passage::Column::ClientId.eq(client_id))
        .filter(passage::Column::DocumentId.is_not_null());
    if let Some(id) = document_id {
        q = q.filter(passage::Column::DocumentId.eq(id));
    }
    Ok(q.group_by(passage::Column::DocumentId)
        .into_tuple()
        .all(db)
        .await?)
}

/// A client's documents, oldest first, without their content. An unknown client is `NotFound`.
pub async fn list_documents(
    db: &DatabaseConnection,
    client_id: ClientId,
) -> Result<Vec<DocumentSummary>, StoreError> {
    client_language(db, client_id).await?;
    let rows: Vec<(i32, String, i64, DateTime<Utc>)> = document::Entity::find()
        .select_only()
        .columns([
            document::Column::Id,
            document::Column::Name,
            document::Column::Bytes,
            document::Column::CreatedAt,
        ])
        .filter(document::Column::ClientId.eq(client_id))
        .order_by_asc(document::Column::Id)
        .into_tuple()
        .all(db)
        .await?;
    let counts = passage_counts(db, client_id, None).await?;
    Ok(rows
        .into_iter()
        .map(|(id, name, bytes, created_at)| DocumentSummary {
            passages: counts
                .iter()
                .find(|(d, _)| *d == Some(id))
                .map_or(0, |(_, n)| *n),
            id,
            name,
            bytes,
            created_at,
        })
        .collect())
}

/// One of the client's documents with its content; another client's is `NotFound`.
pub async fn get_document(
    db: &DatabaseConnection,
    client_id: ClientId,
    document_id: i32,
) -> Result<Document, StoreError> {
    let row = document::Entity::find_by_id(document_id)
        .filter(document::Column::ClientId.eq(client_id))
        .one(db)
        .await?
        .ok_or(StoreError::NotFound("knowledge document"))?;
    let passages = passage_counts(db, client_id, Some(document_id))
        .await?
        .first()
        .map_or(0, |(_, n)| *n);
    Ok(Document {
        summary: DocumentSummary {
            id: row.id,
            name: row.name,
            bytes: row.bytes,
            passages,
            created_at: row.created_at,
        },
        content: row.content,
    })
}

/// Deletes one of the client's documents and its passages (one transaction); another
/// client's is `NotFound`.
pub async fn delete_document(
    db: &DatabaseConnection,
    client_id: ClientId,
    document_id: i32,
) -> Result<(), StoreError> {
    let txn = db.begin().await?;
    passage::Entity::delete_many()
        .filter(passage::Column::ClientId.eq(client_id))
        .filter(passage::Column::DocumentId.eq(document_id))
        .exec(&txn)
        .await?;
    let res = document::Entity::delete_many()
        .filter(document::Column::Id.eq(document_id))
        .filter(document::Column::ClientId.eq(client_id))
        .exec(&txn)
        .await?;
    if res.rows_affected == 0 {
        txn.rollback().await?;
        return Err(StoreError::NotFound("knowledge document"));
    }
    txn.commit().await?;
    Ok(())
}

/// The client's passages (documents and FAQs together) best matching `query`, best first, at
/// most `limit` (capped at [`MAX_SEARCH_LIMIT`]). Any word of the query may match (OR); the
/// ranking prefers passages with more of the words, and rarer ones (bm25 on SQLite, `ts_rank`
/// on Postgres). A query with no searchable word (empty, punctuation, stop words only) finds
/// nothing; no query text is ever an error. An unknown client is `NotFound`.
pub async fn search(
    db: &impl ConnectionTrait,
    client_id: ClientId,
    query: &str,
    limit: usize,
) -> Result<Vec<Passage>, StoreError> {
    let language = client_language(db, client_id).await?;
    let terms = knowledge::query_terms(query);
    let limit = limit.min(MAX_SEARCH_LIMIT) as i64;
    if terms.is_empty() || limit == 0 {
        return Ok(Vec::new());
    }
    let backend = db.get_database_backend();
    let stmt = match backend {
        DbBackend::Sqlite => Statement::from_sql_and_values(
            backend,
            "SELECT CASE WHEN p.faq_id IS NOT NULL THEN 'FAQ' ELSE d.name END AS source, \
                    p.text AS text \
             FROM knowledge_fts \
             JOIN knowledge_passages p ON p.id = knowledge_fts.rowid \
             LEFT JOIN knowledge_documents d ON d.id = p.document_id \
             WHERE knowledge_fts MATCH ? AND p.client_id = ? \
             ORDER BY bm25(knowledge_fts), p.id \
             LIMIT ?",
            [
                knowledge::fts5_query(&terms).into(),
                client_id.into(),
                limit.into(),
            ],
        ),
        DbBackend::Postgres => Statement::from_sql_and_values(
            backend,
            // The index is over `to_tsvector(p.config, p.text)`; the client's passages all
            // carry its current configuration, so the query is parsed with the same one.
            "SELECT CASE WHEN p.faq_id IS NOT NULL THEN 'FAQ' ELSE d.name END AS source, \
                    p.text AS text \
             FROM knowledge_passages p \
             LEFT JOIN knowledge_documents d ON d.id = p.document_id \
             WHERE p.client_id = $3 \
               AND to_tsvector(p.config, p.text) @@ websearch_to_tsquery($1::regconfig, $2) \
             ORDER BY ts_rank(to_tsvector(p.config, p.text), \
                              websearch_to_tsquery($1::regconfig, $2), 1) DESC, p.id \
             LIMIT $4",
            [
                knowledge::text_search_config(&language).into(),
                knowledge::websearch_query(&terms).into(),
                client_id.into(),
                limit.into(),
            ],
        ),
        other => {
            return Err(StoreError::Db(DbErr::Custom(format!(
                "knowledge search is not implemented for {other:?}"
            ))));
        }
    };
    let rows = db.query_all_raw(stmt).await?;
    rows.iter()
        .map(|r| {
            Ok(Passage {
                source: r.try_get("", "source")?,
                text: r.try_get("", "text")?,
            })
        })
        .collect()
}

/// Indexes an FAQ as one passage (`knowledge::faq_passage`), in the caller's transaction;
/// `language` is its client's.
pub(crate) async fn index_faq(
    db: &impl ConnectionTrait,
    row: &faq::Model,
    language: &str,
) -> Result<(), StoreError> {
    let text = faq_passage(&row.question, &row.answer);
    insert_passages(
        db,
        ClientId::new(row.client_id),
        Source::Faq(row.id),
        &[text],
        language,
    )
    .await
}

/// Removes the passage of one FAQ (before it is deleted or rewritten).
pub(crate) async fn unindex_faq(db: &impl ConnectionTrait, faq_id: i32) -> Result<(), StoreError> {
    passage::Entity::delete_many()
        .filter(passage::Column::FaqId.eq(faq_id))
        .exec(db)
        .await?;
    Ok(())
}

/// Removes the passages of all of a client's FAQs (before they are replaced).
pub(crate) async fn unindex_faqs(
    db: &impl ConnectionTrait,
    client_id: ClientId,
) -> Result<(), StoreError> {
    passage::Entity::delete_many()
        .filter(passage::Column::ClientId.eq(client_id))
        .filter(passage::Column::FaqId.is_not_null())
        .exec(db)
        .await?;
    Ok(())
}

/// After a client's language is set: on Postgres its passages are re-tagged with the text
/// search configuration of `language` (their index entries follow); nothing to do on SQLite,
/// whose tokenizer does not depend on the language.
pub(crate) async fn set_language(
    db: &impl ConnectionTrait,
    client_id: ClientId,
    language: &str,
) -> Result<(), StoreError> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    let update = Query::update()
        .table(passage::Entity)
        .value(
            Alias::new("config"),
            Expr::val(knowledge::text_search_config(language)).cast_as(Alias::new("regconfig")),
        )
        .and_where(Expr::col(passage::Column::ClientId).eq(client_id.get()))
        .and_where(Expr::col(Alias::new("config")).ne(
            Expr::val(knowledge::text_search_config(language)).cast_as(Alias::new("regconfig")),
        ))
        .to_owned();
    db.execute(&update).await?;
    Ok(())
}
