//! The admin REST API under `/admin/api/v1` (README.md, "Admin API"): clients, their numbers
//! and FAQs, caller memory (with deletion for privacy requests), calls, and knowledge
//! documents ([`knowledge`]), the cached greeting ([`greeting`]).
//!
//! Invariants: every route but `openapi.json` needs credentials ([`auth`]: `admin.token`, a
//! user's API token, or a console session with its CSRF token), and a principal sees only the
//! clients its role allows (`crate::accounts`: an operator gets 404 for any other client, its
//! calls, recordings and events). Bad or missing credentials are answered late
//! (`limits.admin_bad_token_delay_ms`) and counted per source address (the TCP peer, never
//! `X-Forwarded-For`); an address over `limits.admin_bad_tokens_per_minute` gets 429 before its
//! credentials are even looked at, until the window allows one more (README.md, "Security").
//! Every error is `{"error":{"code","message"}}` ([`error::ApiError`]).

pub mod auth;
pub mod dto;
pub mod error;
pub mod greeting;
pub mod knowledge;
pub mod recording;
pub mod users;

use std::{net::IpAddr, time::Duration};

use axum::{
    Json, Router,
    extract::{Extension, Query, State},
    http::{HeaderValue, StatusCode, header},
    middleware,
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

use self::{
    dto::{
        CallOut, CallerOut, ClientIn, ClientOut, DeliveryOut, FaqIn, FaqOut, MessageOut, NumberIn,
        NumberOut, NumberPatch, WebhookSecretOut, e164,
    },
    error::{ApiError, Path, ValidJson},
};
use crate::{
    accounts::Principal,
    app::AppState,
    domain::ClientId,
    store::{callers, calls, clients, messages, outbox, post_call},
};

/// Where the admin API lives.
pub const BASE: &str = "/admin/api/v1";

// Routes under `/clients/{id}` extract the id as a `ClientId`, which utoipa cannot infer as a
// path parameter (it only reads primitive types there), so each declares
// `params(("id" = i32, Path))`: the document shows the integer the path carries.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "warmline admin API",
        description = "Configure clients, numbers, FAQs; read calls and transcripts; erase caller memory."
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail, crate::events::CallEvent, crate::events::Kind)),
    security(("bearer" = [])),
    tags(
        (name = "clients", description = "Businesses: their agent, numbers, FAQs, greeting, webhook secret"),
        (name = "callers", description = "What is remembered of callers, and its deletion (privacy requests)"),
        (name = "calls", description = "Calls, their transcripts, results and recordings"),
        (name = "messages", description = "Messages the agent took"),
        (name = "webhooks", description = "Webhook events and their delivery"),
        (name = "knowledge", description = "Knowledge documents and their search"),
        (name = "events", description = "Live call events (Server-Sent Events)"),
        (name = "users", description = "Console users, their clients and API tokens"),
    )
)]
struct ApiDoc;

/// The admin API's OpenAPI document (what `GET /admin/api/v1/openapi.json` serves, and
/// `warmline openapi` prints).
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes_and_document().1
}

/// The routes (relative to [`BASE`]) and their document.
fn routes_and_document() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (api, mut doc) = OpenApiRouter::<AppState>::with_openapi(ApiDoc::openapi())
        .routes(routes!(list_clients, create_client))
        .routes(routes!(get_client, replace_client, delete_client))
        .routes(routes!(list_numbers, add_number))
        .routes(routes!(set_number, delete_number))
        .routes(routes!(list_faqs, add_faq))
        .routes(routes!(update_faq, delete_faq))
        .routes(routes!(list_callers))
        .routes(routes!(get_caller, delete_caller))
        .routes(routes!(list_calls))
        .routes(routes!(events))
        .routes(routes!(get_call))
        .routes(routes!(
            recording::get_recording,
            recording::delete_recording
        ))
        .routes(routes!(rotate_webhook_secret))
        .routes(routes!(list_messages))
        .routes(routes!(list_deliveries))
        .routes(routes!(greeting::get_greeting, greeting::delete_greeting))
        .routes(routes!(greeting::refresh_greeting))
        .routes(routes!(knowledge::list_documents))
        .routes(routes!(knowledge::search_knowledge))
        .routes(routes!(knowledge::get_document, knowledge::delete_document))
        .routes(routes!(users::list_users, users::create_user))
        .routes(routes!(users::set_user_clients))
        .routes(routes!(users::delete_user))
        .routes(routes!(users::create_user_token, users::list_user_tokens))
        .routes(routes!(users::revoke_user_token))
        .routes(routes!(users::me))
        .routes(routes!(users::create_my_token, users::list_my_tokens))
        .routes(routes!(users::revoke_my_token))
        .split_for_parts();
    doc.merge(knowledge::UploadDoc::openapi());
    // Paths in the document are the full ones operators call.
    doc.paths.paths = std::mem::take(&mut doc.paths.paths)
        .into_iter()
        .map(|(p, item)| (format!("{BASE}{p}"), item))
        .collect();
    finish_document(&mut doc);
    (api, doc)
}

/// What every operation shares, added to the document: the bearer scheme, a tag by resource,
/// and the error body on every 4xx/5xx answer (401 and 429 included, which any call can get).
fn finish_document(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{
        Content, RefOr, Response,
        schema::Ref,
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    };
    doc.components
        .get_or_insert_with(Default::default)
        .add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("`admin.token`, or a user's API token (`wl_…`)"))
                    .build(),
            ),
        );
    let error = |description: &str| {
        let mut r = Response::new(description);
        r.content.insert(
            "application/json".into(),
            Content::new(Some(Ref::from_schema_name("ErrorBody"))),
        );
        RefOr::T(r)
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        let tag = tag_of(path);
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            op.tags = Some(vec![tag.to_string()]);
            for (status, response) in op.responses.responses.iter_mut() {
                // 413 and 416 come from layers and ranges with no JSON body.
                if let RefOr::T(r) = response
                    && (status.starts_with('4') || status.starts_with('5'))
                    && !matches!(status.as_str(), "413" | "416")
                    && r.content.is_empty()
                {
                    let description = if r.description.is_empty() {
                        match status.as_str() {
                            "400" => "malformed JSON or path",
                            "404" => "not found",
                            "403" => "not allowed for this role",
                            "409" => "conflict",
                            "415" => "unsupported content type",
                            "422" => "an invalid field (named in the message)",
                            "503" => "unavailable; retry later",
                            _ => "error",
                        }
                        .to_string()
                    } else {
                        r.description.clone()
                    };
                    *response = error(&description);
                }
            }
            for (status, description) in [
                ("401", "missing or invalid bearer token"),
                ("429", "too many bad tokens from this address"),
            ] {
                op.responses
                    .responses
                    .entry(status.into())
                    .or_insert_with(|| error(description));
            }
        }
    }
}

/// An operation's tag: the resource its path names.
fn tag_of(path: &str) -> &'static str {
    let rest = path.strip_prefix(BASE).unwrap_or(path);
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["calls", ..] => "calls",
        ["events", ..] => "events",
        ["users", ..] | ["me", ..] => "users",
        ["clients", _, "callers", ..] => "callers",
        ["clients", _, "messages", ..] => "messages",
        ["clients", _, "webhook-deliveries", ..] | ["clients", _, "webhook-secret", ..] => {
            "webhooks"
        }
        ["clients", _, "knowledge", ..] => "knowledge",
        _ => "clients",
    }
}

/// The admin routes (every one but the document behind [`auth::require_auth`]).
pub fn router(state: &AppState) -> Router<AppState> {
    let (api, doc) = routes_and_document();
    let doc_json = doc.to_pretty_json().unwrap_or_else(|_| "{}".into());
    let api = api.layer(middleware::from_fn_with_state(
        state.clone(),
        auth::require_auth,
    ));
    Router::new()
        .route(
            &format!("{BASE}/openapi.json"),
            get(move || async move { ([(header::CONTENT_TYPE, "application/json")], doc_json) }),
        )
        .nest(BASE, api)
}

/// 429 with `Retry-After` (whole seconds, at least 1) for an address over its bad-token limit;
/// logged as a warning when it has just run over (`first`), quietly while it stays locked out.
pub(crate) fn too_many(
    state: &AppState,
    source: IpAddr,
    retry_after: Duration,
    first: bool,
) -> Response {
    state.metrics.inc_rate_limited("admin_bad_token");
    let secs = (retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0)).max(1);
    if first {
        tracing::warn!(%source, retry_after_secs = secs, "admin API: too many bad tokens from this address; refused until the window allows");
    } else {
        tracing::debug!(%source, retry_after_secs = secs, "admin API: address locked out; refused");
    }
    let mut resp = ApiError::TooManyRequests.into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    resp
}

type ApiResult<T> = Result<T, ApiError>;

/// 403 unless an admin asks.
fn require_admin(who: &Principal, what: &str) -> ApiResult<()> {
    if who.is_admin() {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!("only an admin may {what}")))
    }
}

/// A call of a client the principal may not see (or of no client, for an operator) is not
/// found.
pub(crate) fn call_visible(who: &Principal, client_id: Option<i32>) -> ApiResult<()> {
    let seen = match client_id {
        Some(id) => who.can_see(ClientId::new(id)),
        None => who.is_admin(),
    };
    if seen {
        Ok(())
    } else {
        Err(ApiError::NotFound("call"))
    }
}

/// List clients.
#[utoipa::path(get, path = "/clients", responses((status = 200, body = Vec<ClientOut>)))]
async fn list_clients(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<Vec<ClientOut>>> {
    let all = clients::list_clients(&s.db).await?;
    Ok(Json(
        all.into_iter()
            .filter(|c| who.can_see(c.id()))
            .map(ClientOut::from)
            .collect(),
    ))
}

/// Create a client with its numbers and FAQs.
#[utoipa::path(post, path = "/clients", request_body = ClientIn,
    responses((status = 201, body = ClientOut), (status = 403, description = "operators cannot create clients"), (status = 409), (status = 422)))]
async fn create_client(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    ValidJson(body): ValidJson<ClientIn>,
) -> ApiResult<(StatusCode, Json<ClientOut>)> {
    require_admin(&who, "create clients")?;
    let created = save_client(&s, &who, None, body).await?;
    Ok((StatusCode::CREATED, Json(created.into())))
}

/// Validates a client's fields and creates it (`id` none) or replaces them: the API's and the
/// console's one way to save a client, with the same checks and messages.
pub(crate) async fn save_client(
    s: &AppState,
    who: &Principal,
    id: Option<ClientId>,
    body: ClientIn,
) -> ApiResult<clients::ClientProfile> {
    let mut input = body.validate()?;
    dto::webhook_url_allowed(&input, s.settings.webhooks.allow_http)?;
    dto::kommo_url_allowed(&input, s.settings.webhooks.allow_http)?;
    if let Some(k) = input.kommo.as_mut() {
        // A token or secret left out keeps the stored one; a new client's secret is made here.
        let stored = match id {
            Some(id) => crate::text::kommo::KommoConfig::from_stored(
                clients::get_client(&s.db, id)
                    .await?
                    .client
                    .kommo
                    .as_ref()
                    .map(|k| k.expose()),
            ),
            None => None,
        };
        if k.token.is_empty() {
            // Only for the same account: the token never goes to an address it was not given for.
            k.token = stored
                .as_ref()
                .filter(|s| s.base_url == k.base_url)
                .map(|s| s.token.clone())
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    ApiError::Invalid(
                        "kommo.token: required (the integration's long-lived token)".into(),
                    )
                })?;
        }
        if k.webhook_secret.is_empty() {
            k.webhook_secret = stored
                .map(|s| s.webhook_secret)
                .filter(|t| !t.is_empty())
                .unwrap_or_else(crate::text::kommo::new_secret);
        }
    }
    dto::http_tools_allowed(&input, &s.settings.tools)?;
    // Which numbers reach which business is an admin's (an operator could otherwise take a
    // number, or learn from a conflict that another business has it).
    if let Some(id) = id
        && !who.is_admin()
    {
        let mut now: Vec<String> = clients::get_client(&s.db, id)
            .await?
            .numbers
            .into_iter()
            .map(|n| n.number)
            .collect();
        let mut asked: Vec<String> = input
            .phone_numbers
            .iter()
            .map(|n| n.as_str().to_string())
            .collect();
        now.sort();
        asked.sort();
        asked.dedup();
        if now != asked {
            return Err(ApiError::Forbidden(
                "phone_numbers: only an admin may change a business's numbers".into(),
            ));
        }
    }
    match id {
        None => {
            let created = clients::create_client(&s.db, &input).await?;
            tracing::info!(client_id = created.client.id, name = %created.client.name, by = who.who(), "client created");
            Ok(created)
        }
        Some(id) => {
            let updated = clients::update_client(&s.db, id, &input).await?;
            s.recent.forget_client(id);
            tracing::info!(client_id = id.get(), by = who.who(), "client changed");
            Ok(updated)
        }
    }
}

/// Get a client.
#[utoipa::path(get, path = "/clients/{id}",
    params(("id" = i32, Path)), responses((status = 200, body = ClientOut), (status = 404)))]
async fn get_client(
    State(s): State<AppState>,
    Path(id): Path<ClientId>,
) -> ApiResult<Json<ClientOut>> {
    Ok(Json(clients::get_client(&s.db, id).await?.into()))
}

/// Replace a client's fields, numbers and FAQs.
#[utoipa::path(put, path = "/clients/{id}", request_body = ClientIn,
    params(("id" = i32, Path)),
    responses((status = 200, body = ClientOut), (status = 403, description = "an operator changing the numbers"), (status = 404), (status = 409), (status = 422)))]
async fn replace_client(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<ClientId>,
    ValidJson(body): ValidJson<ClientIn>,
) -> ApiResult<Json<ClientOut>> {
    Ok(Json(save_client(&s, &who, Some(id), body).await?.into()))
}

/// Delete a client.
#[utoipa::path(delete, path = "/clients/{id}",
    params(("id" = i32, Path)), responses((status = 204), (status = 403, description = "operators cannot delete clients"), (status = 404)))]
async fn delete_client(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<ClientId>,
) -> ApiResult<StatusCode> {
    require_admin(&who, "delete clients")?;
    clients::delete_client(&s.db, id).await?;
    s.recent.forget_client(id);
    // Its recordings go with it (rows, then files).
    let paths = crate::store::recordings::delete_for_client(&s.db, id).await?;
    let removed = s.recorder.remove_files(&paths).await;
    tracing::info!(
        client_id = id.get(),
        recordings = removed,
        by = who.who(),
        "client deleted"
    );
    Ok(StatusCode::NO_CONTENT)
}

/// A client's numbers.
#[utoipa::path(get, path = "/clients/{id}/numbers",
    params(("id" = i32, Path)), responses((status = 200, body = Vec<NumberOut>)))]
async fn list_numbers(
    State(s): State<AppState>,
    Path(id): Path<ClientId>,
) -> ApiResult<Json<Vec<NumberOut>>> {
    let p = clients::get_client(&s.db, id).await?;
    Ok(Json(p.numbers.iter().map(NumberOut::from).collect()))
}

/// Add a number.
#[utoipa::path(post, path = "/clients/{id}/numbers", request_body = NumberIn,
    params(("id" = i32, Path)),
    responses((status = 201, body = NumberOut), (status = 403, description = "only an admin changes numbers"), (status = 404), (status = 409), (status = 422)))]
async fn add_number(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<ClientId>,
    ValidJson(body): ValidJson<NumberIn>,
) -> ApiResult<(StatusCode, Json<NumberOut>)> {
    require_admin(&who, "change a business's numbers")?;
    let n = e164("number", &body.number)?;
    let mut row = clients::add_number(&s.db, id, &n).await?;
    if body.active == Some(false) {
        row = clients::set_number_active(&s.db, id, &n, false).await?;
    }
    s.recent.forget_client(id);
    Ok((StatusCode::CREATED, Json((&row).into())))
}

/// Turn a number on or off.
#[utoipa::path(put, path = "/clients/{id}/numbers/{number}", request_body = NumberPatch,
    params(("id" = i32, Path)),
    responses((status = 200, body = NumberOut), (status = 403, description = "only an admin changes numbers"), (status = 404)))]
async fn set_number(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((id, number)): Path<(ClientId, String)>,
    ValidJson(body): ValidJson<NumberPatch>,
) -> ApiResult<Json<NumberOut>> {
    require_admin(&who, "change a business's numbers")?;
    let n = e164("number", &number)?;
    let row = clients::set_number_active(&s.db, id, &n, body.active).await?;
    s.recent.forget_client(id);
    Ok(Json((&row).into()))
}

/// Remove a number.
#[utoipa::path(delete, path = "/clients/{id}/numbers/{number}",
    params(("id" = i32, Path)), responses((status = 204), (status = 403, description = "only an admin changes numbers"), (status = 404)))]
async fn delete_number(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((id, number)): Path<(ClientId, String)>,
) -> ApiResult<StatusCode> {
    require_admin(&who, "change a business's numbers")?;
    let n = e164("number", &number)?;
    clients::delete_number(&s.db, id, &n).await?;
    s.recent.forget_client(id);
    Ok(StatusCode::NO_CONTENT)
}

/// A client's FAQs.
#[utoipa::path(get, path = "/clients/{id}/faqs",
    params(("id" = i32, Path)), responses((status = 200, body = Vec<FaqOut>)))]
async fn list_faqs(
    State(s): State<AppState>,
    Path(id): Path<ClientId>,
) -> ApiResult<Json<Vec<FaqOut>>> {
    let p = clients::get_client(&s.db, id).await?;
    Ok(Json(p.faqs.iter().map(FaqOut::from).collect()))
}

/// Add an FAQ.
#[utoipa::path(post, path = "/clients/{id}/faqs", request_body = FaqIn,
    params(("id" = i32, Path)),
    responses((status = 201, body = FaqOut), (status = 404), (status = 422)))]
async fn add_faq(
    State(s): State<AppState>,
    Path(id): Path<ClientId>,
    ValidJson(body): ValidJson<FaqIn>,
) -> ApiResult<(StatusCode, Json<FaqOut>)> {
    let (q, a) = body.validate("faq")?;
    let row = clients::add_faq(&s.db, id, &q, &a).await?;
    Ok((StatusCode::CREATED, Json((&row).into())))
}

/// Replace an FAQ.
#[utoipa::path(put, path = "/clients/{id}/faqs/{faq_id}", request_body = FaqIn,
    params(("id" = i32, Path)),
    responses((status = 200, body = FaqOut), (status = 404), (status = 422)))]
async fn update_faq(
    State(s): State<AppState>,
    Path((id, faq_id)): Path<(ClientId, i32)>,
    ValidJson(body): ValidJson<FaqIn>,
) -> ApiResult<Json<FaqOut>> {
    let (q, a) = body.validate("faq")?;
    let row = clients::update_faq(&s.db, id, faq_id, &q, &a).await?;
    Ok(Json((&row).into()))
}

/// Delete an FAQ.
#[utoipa::path(delete, path = "/clients/{id}/faqs/{faq_id}",
    params(("id" = i32, Path)), responses((status = 204), (status = 404)))]
async fn delete_faq(
    State(s): State<AppState>,
    Path((id, faq_id)): Path<(ClientId, i32)>,
) -> ApiResult<StatusCode> {
    clients::delete_faq(&s.db, id, faq_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Callers a client remembers.
#[utoipa::path(get, path = "/clients/{id}/callers",
    params(("id" = i32, Path)), responses((status = 200, body = Vec<CallerOut>)))]
async fn list_callers(
    State(s): State<AppState>,
    Path(id): Path<ClientId>,
) -> ApiResult<Json<Vec<CallerOut>>> {
    clients::get_client(&s.db, id).await?;
    let all = callers::list_callers(&s.db, id).await?;
    Ok(Json(all.into_iter().map(CallerOut::from).collect()))
}

/// What a client remembers of one caller (phone URL-encoded, e.g. `%2B14155550100`).
#[utoipa::path(get, path = "/clients/{id}/callers/{phone}",
    params(("id" = i32, Path)), responses((status = 200, body = CallerOut), (status = 404)))]
async fn get_caller(
    State(s): State<AppState>,
    Path((id, phone)): Path<(ClientId, String)>,
) -> ApiResult<Json<CallerOut>> {
    let c = callers::get_caller(&s.db, id, &phone)
        .await?
        .ok_or(ApiError::NotFound("caller"))?;
    Ok(Json(c.into()))
}

/// Erase a caller's memory and their transcripts (privacy request).
#[utoipa::path(delete, path = "/clients/{id}/callers/{phone}",
    params(("id" = i32, Path)), responses((status = 204), (status = 404)))]
async fn delete_caller(
    State(s): State<AppState>,
    Path((id, phone)): Path<(ClientId, String)>,
) -> ApiResult<StatusCode> {
    erase_caller(&s, id, &phone).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Erases what a client keeps of a caller: the recordings of their calls, their memory,
/// transcripts and text conversation (here and at OpenAI; the API's and the console's privacy
/// delete). 404 when nothing was kept.
pub(crate) async fn erase_caller(s: &AppState, id: ClientId, phone: &str) -> ApiResult<()> {
    // The recordings of the caller's calls first: the call rows they are found by stay.
    let paths = crate::store::recordings::delete_for_caller(&s.db, id, phone).await?;
    let removed = s.recorder.remove_files(&paths).await;
    let conversations = match callers::delete_caller(&s.db, id, phone).await {
        Err(crate::store::StoreError::NotFound(_)) if removed > 0 => Vec::new(),
        other => other?,
    };
    tracing::info!(
        client_id = id.get(),
        recordings = removed,
        conversations = conversations.len(),
        "caller memory, transcripts, recordings and text conversation erased on request"
    );
    // The conversation at OpenAI goes too (logged there if it cannot).
    if !conversations.is_empty() {
        let text = s.text.clone();
        s.tasks
            .spawn(async move { text.delete_conversations(conversations).await });
    }
    Ok(())
}

/// Filters for `GET /events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    /// Only this call's events.
    call_sid: Option<String>,
    /// Only the events of this client's calls.
    #[param(value_type = Option<i32>)]
    client_id: Option<ClientId>,
}

/// Live call events as Server-Sent Events (README.md, "Live events"): one unnamed `data:` line
/// of JSON per event (`CallEvent`: `type` names it), with `id:` its `seq`. A subscriber that
/// falls `admin.events_queue` events behind gets `{"type":"cut"}` and the stream ends
/// (reconnect to go on); so does a user's whose credentials expired or changed.
#[utoipa::path(get, path = "/events", params(EventsQuery),
    responses((status = 200, description = "text/event-stream of CallEvent", content_type = "text/event-stream", body = crate::events::CallEvent),
        (status = 404, description = "no such client"), (status = 422, description = "a bad filter")))]
async fn events(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    headers: axum::http::HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
    let Query(q) = query.map_err(|e| ApiError::Invalid(e.body_text()))?;
    if let Some(sid) = &q.call_sid
        && (sid.is_empty() || sid.len() > 64 || !sid.chars().all(|c| c.is_ascii_alphanumeric()))
    {
        return Err(ApiError::Invalid(
            "call_sid: must be a CallSid (letters and digits)".into(),
        ));
    }
    if let Some(id) = q.client_id {
        if !who.can_see(id) {
            return Err(ApiError::NotFound("client"));
        }
        clients::get_client(&s.db, id).await?;
    }
    let sub = s.events.subscribe(crate::events::Filter {
        call_sid: q.call_sid,
        client_id: q.client_id,
        within: who.visible().map(std::sync::Arc::from),
    });
    tracing::info!(
        subscribers = s.events.subscribers(),
        "live events subscriber connected"
    );
    let first = futures_util::stream::once(async {
        Ok::<_, std::convert::Infallible>(SseEvent::default().comment("subscribed"))
    });
    // A user's stream lives only as long as its credentials: they are checked again every
    // `admin.events_recheck_secs` (a log-out, an expired session, a revoked token, a deleted
    // user or changed clients end it). `admin.token` cannot change while the process runs.
    let recheck = (who.via != crate::accounts::Via::AdminToken).then(|| Recheck {
        state: s.clone(),
        headers,
        who,
        every: tokio::time::interval_at(
            tokio::time::Instant::now() + s.settings.admin.events_recheck(),
            s.settings.admin.events_recheck(),
        ),
    });
    let rest = futures_util::stream::unfold(
        (sub, s.shutdown.clone(), false, recheck),
        |(mut sub, shutdown, over, mut recheck)| async move {
            if over {
                return None;
            }
            let cut = |reason: &str| {
                let data = serde_json::json!({"type": "cut", "reason": reason});
                SseEvent::default().data(data.to_string())
            };
            loop {
                tokio::select! {
                    e = sub.recv() => return match e {
                        Some(e) => {
                            let data = serde_json::to_string(&*e).unwrap_or_default();
                            let event = SseEvent::default().id(e.seq.to_string()).data(data);
                            Some((Ok(event), (sub, shutdown, false, recheck)))
                        }
                        None if sub.was_cut() => Some((
                            Ok(cut("this subscriber fell too far behind; reconnect to go on")),
                            (sub, shutdown, true, recheck),
                        )),
                        None => None,
                    },
                    valid = Recheck::due(&mut recheck) => {
                        if !valid {
                            return Some((
                                Ok(cut("the credentials of this stream expired or changed")),
                                (sub, shutdown, true, recheck),
                            ));
                        }
                    }
                    _ = shutdown.cancelled() => return None,
                }
            }
        },
    );
    use futures_util::StreamExt;
    Ok(Sse::new(first.chain(rest))
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// The periodic check of a live-events stream's credentials.
struct Recheck {
    state: AppState,
    headers: axum::http::HeaderMap,
    who: Principal,
    every: tokio::time::Interval,
}

impl Recheck {
    /// Waits for the next check and tells whether the credentials still give the same
    /// principal (a database that does not answer keeps the stream: it is checked again next
    /// time). Never completes without a check to make.
    async fn due(this: &mut Option<Self>) -> bool {
        let Some(r) = this.as_mut() else {
            return std::future::pending().await;
        };
        r.every.tick().await;
        match auth::authenticate(&r.state, &r.headers).await {
            Ok(auth::Found::Principal(p, _)) => {
                p.user == r.who.user && p.role == r.who.role && p.clients == r.who.clients
            }
            Ok(_) => false,
            Err(_) => true,
        }
    }
}

/// Filters for `GET /calls`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct CallsQuery {
    /// Only this client's calls.
    #[param(value_type = Option<i32>)]
    client_id: Option<ClientId>,
    /// At most this many (default 50, max 500).
    limit: Option<u64>,
    /// Only calls started before this time (RFC 3339), for paging.
    before: Option<chrono::DateTime<chrono::Utc>>,
    /// Only this channel's: `voice`, `webchat`, `whatsapp`, `sms` or `kommo`.
    channel: Option<String>,
    /// Only this person's: a caller id, or a text identity (`web:…`, `kommo:lead:…`).
    from: Option<String>,
}

/// Calls and text exchanges, newest first.
#[utoipa::path(get, path = "/calls", params(CallsQuery), responses((status = 200, body = Vec<CallOut>)))]
async fn list_calls(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    query: Result<Query<CallsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<CallOut>>> {
    let Query(q) = query.map_err(|e| ApiError::Invalid(e.body_text()))?;
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    if q.client_id.is_some_and(|id| !who.can_see(id)) {
        return Err(ApiError::NotFound("client"));
    }
    let channel = match q.channel.as_deref() {
        None => None,
        Some(c) => Some(crate::domain::Channel::parse(c).ok_or_else(|| {
            ApiError::Invalid("channel: must be voice, webchat, whatsapp, sms or kommo".into())
        })?),
    };
    let filter = calls::CallFilter {
        client_id: q.client_id,
        within: who.visible().map(<[ClientId]>::to_vec),
        channel,
        from: q.from.filter(|f| !f.is_empty()),
        ..Default::default()
    };
    let rows = calls::list_calls_within(&s.db, &filter, q.before, limit).await?;
    let out = rows.into_iter().map(CallOut::try_from);
    Ok(Json(out.collect::<Result<_, _>>()?))
}

/// One call with its transcript, its summary and results, and its post-call job.
#[utoipa::path(get, path = "/calls/{call_sid}", responses((status = 200, body = CallOut), (status = 404)))]
async fn get_call(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(call_sid): Path<String>,
) -> ApiResult<Json<CallOut>> {
    let c = calls::call_by_sid(&s.db, &call_sid)
        .await?
        .ok_or(ApiError::NotFound("call"))?;
    call_visible(&who, c.call.client_id)?;
    let job = post_call::job_for_call(&s.db, c.call.id).await?;
    let timeline = crate::timeline::parse(c.call.timeline.as_deref());
    let mut out = CallOut::try_from(c)?;
    out.timeline = Some(timeline);
    out.post_call = job.map(Into::into);
    out.recording = crate::store::recordings::get(&s.db, &call_sid)
        .await?
        .map(Into::into);
    Ok(Json(out))
}

/// Replace a client's webhook secret (events are signed with the new one from now on, retries
/// of pending events included).
#[utoipa::path(post, path = "/clients/{id}/webhook-secret",
    params(("id" = i32, Path)), responses((status = 200, body = WebhookSecretOut), (status = 404)))]
async fn rotate_webhook_secret(
    State(s): State<AppState>,
    Path(id): Path<ClientId>,
) -> ApiResult<Json<WebhookSecretOut>> {
    let secret = clients::rotate_webhook_secret(&s.db, id).await?;
    tracing::info!(client_id = id.get(), "webhook secret rotated");
    Ok(Json(WebhookSecretOut {
        webhook_secret: secret.expose().to_string(),
    }))
}

/// `?limit=` of the per-client lists.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct LimitQuery {
    /// At most this many (default 50, max 500).
    limit: Option<u64>,
}

fn limit_of(
    query: Result<Query<LimitQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<u64> {
    let Query(q) = query.map_err(|e| ApiError::Invalid(e.body_text()))?;
    Ok(q.limit.unwrap_or(50).clamp(1, 500))
}

/// Messages the agent took for a client, newest first.
#[utoipa::path(get, path = "/clients/{id}/messages",
    params(("id" = i32, Path), LimitQuery),
    responses((status = 200, body = Vec<MessageOut>), (status = 404)))]
async fn list_messages(
    State(s): State<AppState>,
    Path(id): Path<ClientId>,
    query: Result<Query<LimitQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<MessageOut>>> {
    let limit = limit_of(query)?;
    clients::get_client(&s.db, id).await?;
    let rows = messages::list_messages(&s.db, id, limit).await?;
    Ok(Json(rows.into_iter().map(MessageOut::from).collect()))
}

/// A client's webhook events and their delivery (status, attempts, last error), newest first.
#[utoipa::path(get, path = "/clients/{id}/webhook-deliveries",
    params(("id" = i32, Path), LimitQuery),
    responses((status = 200, body = Vec<DeliveryOut>), (status = 404)))]
async fn list_deliveries(
    State(s): State<AppState>,
    Path(id): Path<ClientId>,
    query: Result<Query<LimitQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<DeliveryOut>>> {
    let limit = limit_of(query)?;
    clients::get_client(&s.db, id).await?;
    let rows = outbox::list_deliveries(&s.db, id, limit).await?;
    Ok(Json(rows.into_iter().map(DeliveryOut::from).collect()))
}
