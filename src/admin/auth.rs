//! Who is asking, for the admin API and the console (README.md, "Accounts"; the rules are
//! `crate::accounts`).
//!
//! A request is authenticated by, in this order: `Authorization: Bearer <admin.token>` (compared
//! in constant time, no database needed), `Authorization: Bearer wl_…` (a user's API token, found
//! by its SHA-256), or the console's session cookie. A session-authenticated request that changes
//! something (any method but GET/HEAD) also needs the session's CSRF token (`X-CSRF-Token`, or
//! the `csrf` field of the console's forms).
//!
//! Then, before any handler runs, a path naming `/clients/{id}` that the principal may not see
//! is answered 404 `client not found`, exactly as a client that does not exist.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, Method, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::{
    accounts::{self, Principal, Via},
    app::AppState,
    limits::{self, Verdict},
    store::users,
};

/// The console's session cookie.
pub const SESSION_COOKIE: &str = "warmline_session";

/// The header a session-authenticated API request carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// What authenticating a request found.
pub enum Found {
    /// A principal (with the session's CSRF token when it came by cookie).
    Principal(Principal, Option<String>),
    /// Credentials were given and are wrong (a bad token, an expired or unknown session).
    Bad,
    /// Nothing was given.
    Nothing,
}

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// Constant-time equality of two secrets.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Who the request is from. Database failures are `Unavailable` (only `admin.token` works
/// without the database).
pub async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Found, ApiError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.strip_prefix("Bearer ").map(str::trim).unwrap_or(""));
    if let Some(given) = bearer {
        let expected = state.settings.admin.token.expose();
        if !expected.is_empty() && same_secret(given, expected) {
            return Ok(Found::Principal(Principal::automation(), None));
        }
        if given.starts_with(accounts::API_TOKEN_PREFIX) && given.len() <= 128 {
            let hash = accounts::token_hash(given);
            return match users::by_api_token(&state.db, &hash).await {
                Ok(Some(account)) => Ok(Found::Principal(
                    Principal::of(&account, Via::ApiToken),
                    None,
                )),
                Ok(None) => Ok(Found::Bad),
                Err(e) => {
                    tracing::warn!(error = %e, "admin API: an API token could not be checked");
                    Err(ApiError::Unavailable("the database"))
                }
            };
        }
        return Ok(Found::Bad);
    }
    let Some(token) = cookie(headers, SESSION_COOKIE).filter(|t| !t.is_empty() && t.len() <= 128)
    else {
        return Ok(Found::Nothing);
    };
    match users::session(&state.db, &accounts::token_hash(token), chrono::Utc::now()).await {
        Ok(Some(s)) => Ok(Found::Principal(
            Principal::of(&s.account, Via::Session),
            Some(s.csrf),
        )),
        Ok(None) => Ok(Found::Bad),
        Err(e) => {
            tracing::warn!(error = %e, "a console session could not be checked");
            Err(ApiError::Unavailable("the database"))
        }
    }
}

/// The source address a request is counted under: the TCP peer (served with `ConnectInfo`,
/// src/app.rs), never `X-Forwarded-For`.
pub fn source_of(req: &Request) -> IpAddr {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| limits::source_key(*addr))
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// The admin API's guard: authenticates (bad credentials are answered late and counted per
/// source address; an address over `limits.admin_bad_tokens_per_minute` gets 429 before its
/// credentials are even looked at), checks a session's CSRF token on changes, hides the
/// clients the principal may not see, and hands the [`Principal`] to the handler.
pub async fn require_auth(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let source = source_of(&req);
    let guard = state.limits.admin_bad_tokens.as_ref();
    // Locked out: refused whatever the credentials, or guessing would go on at full speed with
    // the right guess told apart by its answer.
    if let Some(retry_after) = guard.and_then(|g| g.locked(source)) {
        return super::too_many(&state, source, retry_after, false);
    }
    let (principal, csrf) = match authenticate(&state, req.headers()).await {
        Ok(Found::Principal(p, csrf)) => (p, csrf),
        Ok(Found::Bad | Found::Nothing) => {
            if let Some(Verdict::Limited { retry_after }) = guard.map(|g| g.check(source)) {
                return super::too_many(&state, source, retry_after, true);
            }
            tokio::time::sleep(state.limits.admin_bad_token_delay).await;
            return ApiError::Unauthorized.into_response();
        }
        Err(e) => return e.into_response(),
    };
    if let Some(expected) = &csrf
        && !matches!(*req.method(), Method::GET | Method::HEAD)
    {
        let given = req
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !same_secret(given, expected) {
            return ApiError::Forbidden("missing or wrong CSRF token (X-CSRF-Token)".into())
                .into_response();
        }
    }
    // A client the principal may not see does not exist for it; nor, for an operator, does a
    // path segment that is no client id (the handler would answer 400 for it, but nothing
    // that is not checked here reaches a handler).
    match accounts::client_in_path(req.uri().path()) {
        Some(Ok(id)) if !principal.can_see(id) => {
            return ApiError::NotFound("client").into_response();
        }
        Some(Err(())) if !principal.is_admin() => {
            return ApiError::NotFound("client").into_response();
        }
        _ => {}
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}
