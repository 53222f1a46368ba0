//! Knowledge documents in the admin API (README.md, "Knowledge"): upload one (JSON, or a raw
//! `text/plain` / `text/markdown` body with `?name=`), list, read and delete them, and try a
//! search the way the agent's `search_knowledge` tool runs it (`store::knowledge::search`).
//!
//! The upload is served by [`upload_router`], which `app::router` merges outside the
//! server-wide body limit (`server.max_body_bytes`, 64 KiB by default): a document may be up to
//! 1 MiB, so this route reads at most [`UPLOAD_BODY_LIMIT`] bytes itself, and a larger body is
//! a JSON 422 like every other refusal. Its OpenAPI entry ([`UploadDoc`]) is merged into the
//! admin document.

use axum::{
    Json, Router,
    body::Body,
    extract::{Query, State, rejection::QueryRejection},
    http::{HeaderMap, StatusCode, header},
    middleware,
    routing::post,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::{
    ApiResult, BASE,
    error::{ApiError, Path, ValidJson},
};
use crate::{
    app::AppState,
    domain::ClientId,
    knowledge::{self, MAX_DOCUMENT_BYTES},
    store::knowledge::{self as store, Document, DocumentSummary, Passage},
};

/// Most bytes of an upload's body read: twice the content cap, room for JSON escapes.
pub const UPLOAD_BODY_LIMIT: usize = 2 * MAX_DOCUMENT_BYTES;

/// Passages a search returns unless `limit` says otherwise (what the agent's tool gets).
const DEFAULT_SEARCH_LIMIT: usize = 3;

/// Most passages a search through the admin API returns.
const MAX_SEARCH_LIMIT: usize = 10;

/// The upload route (`POST /admin/api/v1/clients/{id}/knowledge`) with its own body limit and
/// the admin API's guard.
pub fn upload_router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route(
            &format!("{BASE}/clients/{{id}}/knowledge"),
            post(add_document),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            super::auth::require_auth,
        ))
}

/// The upload route's entry in the admin OpenAPI document.
#[derive(OpenApi)]
#[openapi(paths(add_document))]
pub struct UploadDoc;

/// A knowledge document uploaded as JSON.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DocumentIn {
    /// Name, unique per client: the source the agent is told (else the `name` query parameter).
    #[serde(default)]
    pub name: Option<String>,
    /// Plain text or Markdown, at most 1 MiB of UTF-8.
    pub content: String,
}

/// Query of an upload.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The document's name (for a `text/plain` or `text/markdown` body).
    pub name: Option<String>,
}

/// A knowledge document, without its content.
#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentOut {
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

impl From<DocumentSummary> for DocumentOut {
    fn from(d: DocumentSummary) -> Self {
        Self {
            id: d.id,
            name: d.name,
            bytes: d.bytes,
            passages: d.passages,
            created_at: d.created_at,
        }
    }
}

/// A knowledge document with its content.
#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentContentOut {
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
    /// The text as uploaded.
    pub content: String,
}

impl From<Document> for DocumentContentOut {
    fn from(d: Document) -> Self {
        Self {
            id: d.summary.id,
            name: d.summary.name,
            bytes: d.summary.bytes,
            passages: d.summary.passages,
            created_at: d.summary.created_at,
            content: d.content,
        }
    }
}

/// A search hit.
#[derive(Debug, Serialize, ToSchema)]
pub struct PassageOut {
    /// The document's name, or `FAQ`.
    pub source: String,
    /// The passage.
    pub text: String,
}

impl From<Passage> for PassageOut {
    fn from(p: Passage) -> Self {
        Self {
            source: p.source,
            text: p.text,
        }
    }
}

/// Query of a search.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// What to look for, as a caller would ask it.
    pub q: String,
    /// Most passages returned (default 3, at most 10).
    pub limit: Option<usize>,
}

enum BodyKind {
    Json,
    Text,
}

/// What the upload's `Content-Type` says: JSON, or UTF-8 plain text / Markdown; 415 otherwise.
fn body_kind(headers: &HeaderMap) -> Result<BodyKind, ApiError> {
    let content_type: String = headers
        .get(header::CONTENT_TYPE)
        .map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .chars()
                .take(100)
                .collect()
        })
        .unwrap_or_default();
    let mut parts = content_type.split(';');
    let mime = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let kind = match mime.as_str() {
        "application/json" => BodyKind::Json,
        "text/plain" | "text/markdown" | "text/x-markdown" => BodyKind::Text,
        _ => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "Content-Type {content_type:?} is not accepted: send application/json \
                 ({{\"name\": …, \"content\": …}}), or text/plain or text/markdown with ?name=…"
            )));
        }
    };
    for param in parts {
        if let Some((key, value)) = param.split_once('=')
            && key.trim().eq_ignore_ascii_case("charset")
        {
            let charset = value.trim().trim_matches('"');
            if !["utf-8", "utf8", "us-ascii"]
                .iter()
                .any(|c| charset.eq_ignore_ascii_case(c))
            {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "charset {charset:?} is not accepted: send UTF-8 text"
                )));
            }
        }
    }
    Ok(kind)
}

fn too_large() -> ApiError {
    ApiError::Invalid(format!(
        "content: must be at most 1 MiB ({MAX_DOCUMENT_BYTES} bytes); the request body is \
         larger than {UPLOAD_BODY_LIMIT} bytes"
    ))
}

/// Upload a knowledge document: JSON `{"name", "content"}`, or the text itself as `text/plain`
/// or `text/markdown` with `?name=`. It is cut into passages the agent can search.
#[utoipa::path(post, path = "/clients/{id}/knowledge",
    params(("id" = i32, Path), UploadQuery),
    request_body(content(
        (DocumentIn = "application/json"),
        (String = "text/plain"),
        (String = "text/markdown"))),
    responses((status = 201, body = DocumentOut), (status = 404), (status = 409),
        (status = 415), (status = 422)))]
pub async fn add_document(
    State(s): State<AppState>,
    Path(id): Path<ClientId>,
    query: Result<Query<UploadQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<DocumentOut>)> {
    let Query(query) = query.map_err(|e| ApiError::Invalid(e.body_text()))?;
    let kind = body_kind(&headers)?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > UPLOAD_BODY_LIMIT as u64) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, UPLOAD_BODY_LIMIT)
        .await
        .map_err(|_| too_large())?;
    let (name, content) = match kind {
        BodyKind::Json => {
            let ValidJson(doc) = ValidJson::<DocumentIn>::from_bytes(&bytes)?;
            (doc.name.or(query.name), doc.content.into_bytes())
        }
        BodyKind::Text => (query.name, bytes.to_vec()),
    };
    let name = knowledge::check_name(name.as_deref().unwrap_or_default())
        .map_err(|e| ApiError::Invalid(format!("name: {e}")))?;
    let content = knowledge::check_content(&content)
        .map_err(|e| ApiError::Invalid(format!("content: {e}")))?;
    let doc = store::add_document(&s.db, id, name, content).await?;
    tracing::info!(
        client_id = id.get(),
        document_id = doc.id,
        bytes = doc.bytes,
        passages = doc.passages,
        "knowledge document added"
    );
    Ok((StatusCode::CREATED, Json(doc.into())))
}

/// A client's knowledge documents (without content), oldest first.
#[utoipa::path(get, path = "/clients/{id}/knowledge",
    params(("id" = i32, Path)), responses((status = 200, body = Vec<DocumentOut>), (status = 404)))]
pub async fn list_documents(
    State(s): State<AppState>,
    Path(id): Path<ClientId>,
) -> ApiResult<Json<Vec<DocumentOut>>> {
    let docs = store::list_documents(&s.db, id).await?;
    Ok(Json(docs.into_iter().map(DocumentOut::from).collect()))
}

/// One knowledge document with its content.
#[utoipa::path(get, path = "/clients/{id}/knowledge/{doc_id}",
    params(("id" = i32, Path), ("doc_id" = i32, Path)),
    responses((status = 200, body = DocumentContentOut), (status = 404)))]
pub async fn get_document(
    State(s): State<AppState>,
    Path((id, doc_id)): Path<(ClientId, i32)>,
) -> ApiResult<Json<DocumentContentOut>> {
    Ok(Json(store::get_document(&s.db, id, doc_id).await?.into()))
}

/// Delete a knowledge document; its passages are no longer found.
#[utoipa::path(delete, path = "/clients/{id}/knowledge/{doc_id}",
    params(("id" = i32, Path), ("doc_id" = i32, Path)),
    responses((status = 204), (status = 404)))]
pub async fn delete_document(
    State(s): State<AppState>,
    Path((id, doc_id)): Path<(ClientId, i32)>,
) -> ApiResult<StatusCode> {
    store::delete_document(&s.db, id, doc_id).await?;
    tracing::info!(
        client_id = id.get(),
        document_id = doc_id,
        "knowledge document deleted"
    );
    Ok(StatusCode::NO_CONTENT)
}

/// Search a client's documents and FAQs the way the agent's `search_knowledge` tool does: the
/// best passages first, each with its source (the document's name, or `FAQ`).
#[utoipa::path(get, path = "/clients/{id}/knowledge/search",
    params(("id" = i32, Path), SearchQuery),
    responses((status = 200, body = Vec<PassageOut>), (status = 404), (status = 422)))]
pub async fn search_knowledge(
    State(s): State<AppState>,
    Path(id): Path<ClientId>,
    query: Result<Query<SearchQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<PassageOut>>> {
    let Query(q) = query.map_err(|e| ApiError::Invalid(e.body_text()))?;
    let limit = q
        .limit
        .unwrap_or(DEFAULT_SEARCH_LIMIT)
        .clamp(1, MAX_SEARCH_LIMIT);
    let hits = store::search(&s.db, id, &q.q, limit).await?;
    Ok(Json(hits.into_iter().map(PassageOut::from).collect()))
}
