//! The operators' console under `/console` (README.md, "Console"): server-rendered pages
//! (maud templates compiled into the binary) with a few lines of plain JavaScript served from
//! the binary too; no front-end build.
//!
//! Rules:
//! 1. Every page but the log-in needs a console session (the `warmline_session` cookie: HttpOnly,
//!    SameSite=Strict, `Secure` behind https); without one it redirects to the log-in.
//! 2. Every form carries the session's CSRF token and is refused (403) without it. The log-in
//!    form carries one of its own (a cookie it must match), so a log-in cannot be forged either.
//! 3. What a page shows and changes is checked against the user's role exactly as the admin API
//!    checks it (`crate::accounts`): an operator asking for another business gets 404.
//! 4. Validation is the admin API's own (`admin::save_client`): the same messages.
//! 5. Pages send a strict Content-Security-Policy: scripts and styles only from this origin.

mod pages;

use std::time::{Duration, Instant};

use axum::{
    Form, Router,
    extract::{FromRequestParts, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts},
    middleware::{self, Next},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use crate::{
    accounts::{self, Principal},
    admin::{
        auth::{self, SESSION_COOKIE},
        error::ApiError,
    },
    app::AppState,
    limits::Verdict,
    store::users,
};

/// Where the console lives.
pub const BASE: &str = "/console";

/// The log-in form's own CSRF cookie.
const LOGIN_COOKIE: &str = "warmline_login";

/// The console's routes.
pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console", get(pages::overview))
        .route("/console/", get(|| async { Redirect::to(BASE) }))
        .route("/console/live", get(pages::live))
        .route("/console/businesses", get(pages::businesses))
        .route(
            "/console/businesses/new",
            get(pages::new_business).post(pages::create_business),
        )
        .route(
            "/console/businesses/{id}",
            get(pages::business).post(pages::save_business),
        )
        .route(
            "/console/businesses/{id}/knowledge",
            post(pages::add_document),
        )
        .route(
            "/console/businesses/{id}/knowledge/{doc}/delete",
            post(pages::delete_document),
        )
        .route("/console/businesses/{id}/callers", get(pages::callers))
        .route(
            "/console/businesses/{id}/callers/delete",
            post(pages::delete_caller),
        )
        .route("/console/businesses/{id}/messages", get(pages::messages))
        .route("/console/calls", get(pages::calls))
        .route("/console/calls/{sid}", get(pages::call))
        .route("/console/assets/{file}", get(asset))
        .layer(middleware::from_fn_with_state(state.clone(), headers))
}

/// Security headers on every console answer.
async fn headers(State(_): State<AppState>, req: axum::extract::Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             media-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
             base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "console.css" => (CSS, "text/css; charset=utf-8"),
        "console.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// The logged-in user of a console page.
pub struct Viewer {
    /// Who, with what they may see.
    pub who: Principal,
    /// The session's CSRF token (every form carries it).
    pub csrf: String,
}

impl Viewer {
    /// The user's email.
    pub fn email(&self) -> &str {
        self.who.user.as_ref().map_or("", |(_, e)| e.as_str())
    }

    /// 403 unless `given` is the session's CSRF token.
    pub fn check_csrf(&self, given: &str) -> Result<(), Page> {
        if auth::same_secret(given, &self.csrf) {
            Ok(())
        } else {
            Err(Page::Error(
                StatusCode::FORBIDDEN,
                "This form is out of date or was not sent from the console. Reload the page and try again.".into(),
            ))
        }
    }
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Page;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // The console is cookie-only: a bearer header does not log anyone in here.
        let mut cookie_only = HeaderMap::new();
        for v in parts.headers.get_all(header::COOKIE) {
            cookie_only.append(header::COOKIE, v.clone());
        }
        match auth::authenticate(state, &cookie_only).await {
            Ok(auth::Found::Principal(who, Some(csrf))) => Ok(Self { who, csrf }),
            Ok(_) => Err(Page::Login(next_of(parts))),
            Err(_) => Err(Page::Error(
                StatusCode::SERVICE_UNAVAILABLE,
                "The database is not answering; try again in a moment.".into(),
            )),
        }
    }
}

/// Where to come back to after logging in: this page (a console path only).
fn next_of(parts: &Parts) -> String {
    let p = parts
        .uri
        .path_and_query()
        .map_or(BASE, |p| p.as_str())
        .to_string();
    if p.starts_with(BASE) && !p.starts_with("//") {
        p
    } else {
        BASE.into()
    }
}

/// A console answer that is not the page asked for.
#[derive(Debug)]
pub enum Page {
    /// Not logged in: to the log-in, then back to this path.
    Login(String),
    /// An error page.
    Error(StatusCode, String),
}

impl From<ApiError> for Page {
    fn from(e: ApiError) -> Self {
        let (status, _) = e.status_and_code();
        if let ApiError::Internal(cause) = &e {
            tracing::error!(error = format!("{cause:#}"), "console internal error");
            return Self::Error(status, "Something went wrong; it has been logged.".into());
        }
        Self::Error(status, e.to_string())
    }
}

impl From<crate::store::StoreError> for Page {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::from(e).into()
    }
}

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        match self {
            Self::Login(next) => {
                let to = format!("{BASE}/login?next={}", urlencode(&next));
                Redirect::to(&to).into_response()
            }
            Self::Error(status, msg) => {
                let title = status.canonical_reason().unwrap_or("Error");
                let body = html! {
                    h1 { (title) }
                    p role="alert" { (msg) }
                    p { a href=(BASE) { "Back to the overview" } }
                };
                (status, bare(title, body)).into_response()
            }
        }
    }
}

/// Percent-encodes a query value.
pub fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A page's `<head>`; a logged-in page (`csrf`) also gets the script and the CSRF token.
fn head(title: &str, csrf: Option<&str>) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            @if let Some(c) = csrf { meta name="csrf-token" content=(c); }
            title { (title) " · warmline" }
            link rel="stylesheet" href="/console/assets/console.css";
            link rel="icon" href="data:,";
            @if csrf.is_some() { script src="/console/assets/console.js" defer {} }
        }
    }
}

/// A page for someone not logged in (no navigation).
fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, None))
            body {
                header class="top" { span class="brand" { "warmline" } }
                main id="main" { (body) }
            }
        }
    }
}

/// Which part of the navigation a page belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    /// Overview.
    Overview,
    /// Live calls.
    Live,
    /// Businesses.
    Businesses,
    /// Calls.
    Calls,
}

/// A console page: navigation, the user and log-out, then `body`.
pub fn layout(viewer: &Viewer, nav: Nav, title: &str, body: Markup) -> Markup {
    let item = |n: Nav, href: &str, label: &str| {
        html! {
            li { a href=(href) aria-current=[(n == nav).then_some("page")] { (label) } }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, Some(&viewer.csrf)))
            body {
                a class="skip" href="#main" { "Skip to content" }
                header class="top" {
                    span class="brand" { "warmline" }
                    nav aria-label="Console" {
                        ul {
                            (item(Nav::Overview, BASE, "Overview"))
                            (item(Nav::Live, "/console/live", "Live"))
                            (item(Nav::Businesses, "/console/businesses", "Businesses"))
                            (item(Nav::Calls, "/console/calls", "Calls"))
                        }
                    }
                    form method="post" action="/console/logout" class="logout" {
                        input type="hidden" name="csrf" value=(viewer.csrf);
                        span class="who" { (viewer.email()) " (" (viewer.who.role.as_str()) ")" }
                        button type="submit" { "Log out" }
                    }
                }
                main id="main" { (body) }
            }
        }
    }
}

/// `?next=` of the log-in page.
#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
}

/// Only a console path is a place to go back to (never another site).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with(BASE)
                && n.len() <= 2048
                && n.bytes().all(|b| b.is_ascii_graphic())
                && !n.contains('\\') =>
        {
            n.into()
        }
        _ => BASE.into(),
    }
}

/// Whether cookies should be `Secure`: configured, or the request came over https through a
/// proxy.
fn secure(state: &AppState, headers: &HeaderMap) -> bool {
    state.settings.admin.secure_cookie
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

fn set_cookie(name: &str, value: &str, path: &str, max_age: i64, secure: bool) -> HeaderValue {
    let s = format!(
        "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn login_form(next: &str, csrf: &str, error: Option<&str>, email: &str) -> Markup {
    bare(
        "Log in",
        html! {
            h1 { "Log in" }
            @if let Some(e) = error { p class="error" role="alert" { (e) } }
            form method="post" action="/console/login" class="card narrow" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="next" value=(next);
                label for="email" { "Email" }
                input id="email" type="email" name="email" value=(email) autocomplete="username" required autofocus;
                label for="password" { "Password" }
                input id="password" type="password" name="password" autocomplete="current-password" required;
                button type="submit" { "Log in" }
            }
        },
    )
}

async fn login_page(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<NextQuery>,
) -> Response {
    let token = accounts::new_token("");
    let next = safe_next(q.next.as_deref());
    let mut resp = login_form(&next, &token, None, "").into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, &token, BASE, 3600, secure(&s, &headers)),
    );
    resp
}

/// The log-in form.
#[derive(Deserialize)]
struct LoginForm {
    email: String,
    password: String,
    csrf: String,
    next: Option<String>,
}

async fn login(
    State(s): State<AppState>,
    headers: HeaderMap,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    Form(f): Form<LoginForm>,
) -> Response {
    // The TCP peer, never `X-Forwarded-For` (as the admin API counts bad tokens).
    let source = peer.map_or(
        std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        |axum::Extension(axum::extract::ConnectInfo(a))| crate::limits::source_key(a),
    );
    let next = safe_next(f.next.as_deref());
    let guard = s.limits.admin_bad_tokens.as_ref();
    if let Some(retry_after) = guard.and_then(|g| g.locked(source)) {
        return crate::admin::too_many(&s, source, retry_after, false);
    }
    // The form's token must be the one its page set in the cookie (a forged cross-site log-in
    // has neither).
    let expected = auth::cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !auth::same_secret(&f.csrf, expected) {
        return Page::Error(
            StatusCode::FORBIDDEN,
            "The log-in form is out of date. Open the log-in page again.".into(),
        )
        .into_response();
    }
    let email = accounts::normalize_email(&f.email).unwrap_or_default();
    let unavailable = || {
        Page::Error(
            StatusCode::SERVICE_UNAVAILABLE,
            "The database is not answering; try again in a moment.".into(),
        )
        .into_response()
    };
    let found = if email.is_empty() {
        Ok(None)
    } else {
        users::credentials(&s.db, &email).await
    };
    let found = match found {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "console log-in: the database did not answer");
            return unavailable();
        }
    };
    // An unknown email costs the same Argon2 check as a wrong password.
    let phc = found
        .as_ref()
        .map_or_else(|| s.logins.dummy_hash().to_string(), |(_, h)| h.clone());
    let Some(ok) = s
        .logins
        .verify(f.password, phc, Duration::from_secs(10))
        .await
    else {
        tracing::warn!(%source, "console log-in: every password check is busy; refused");
        return Page::Error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many log-ins at once; try again in a moment.".into(),
        )
        .into_response();
    };
    let account = match (ok, found) {
        (true, Some((id, _))) => match users::by_id(&s.db, id).await {
            Ok(Some(a)) => a,
            Ok(None) => return unavailable(),
            Err(e) => {
                tracing::warn!(error = %e, "console log-in: the database did not answer");
                return unavailable();
            }
        },
        _ => {
            let started = Instant::now();
            let wait = s
                .logins
                .failed(&email, s.limits.admin_bad_token_delay, started);
            tracing::warn!(%source, delay_ms = wait.as_millis() as u64, "console log-in failed");
            if let Some(Verdict::Limited { retry_after }) = guard.map(|g| g.check(source)) {
                return crate::admin::too_many(&s, source, retry_after, true);
            }
            tokio::time::sleep(wait).await;
            let mut resp = (
                StatusCode::UNAUTHORIZED,
                login_form(&next, &f.csrf, Some("Wrong email or password."), &f.email),
            )
                .into_response();
            // The same form token goes on (the cookie stays).
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return resp;
        }
    };
    s.logins.succeeded(&email);
    let token = accounts::new_token("");
    let csrf = accounts::new_token("");
    let hours = s.settings.admin.session_hours;
    let expires = chrono::Utc::now() + chrono::Duration::hours(hours as i64);
    if let Err(e) = users::create_session(
        &s.db,
        &accounts::token_hash(&token),
        account.id,
        &csrf,
        expires,
    )
    .await
    {
        tracing::warn!(error = %e, "console log-in: the session could not be stored");
        return unavailable();
    }
    tracing::info!(user_id = account.id, role = %account.role, "console log-in");
    let secure = secure(&s, &headers);
    let mut resp = Redirect::to(&next).into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, &token, "/", (hours * 3600) as i64, secure),
    );
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, "", BASE, 0, secure),
    );
    resp
}

/// A form with only its CSRF token.
#[derive(Deserialize)]
pub struct CsrfForm {
    /// The session's CSRF token.
    pub csrf: String,
}

async fn logout(
    State(s): State<AppState>,
    headers: HeaderMap,
    viewer: Viewer,
    Form(f): Form<CsrfForm>,
) -> Result<Response, Page> {
    viewer.check_csrf(&f.csrf)?;
    if let Some(token) = auth::cookie(&headers, SESSION_COOKIE) {
        users::delete_session(&s.db, &accounts::token_hash(token)).await?;
    }
    tracing::info!(user = viewer.email(), "console log-out");
    let mut resp = Redirect::to("/console/login").into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, "", "/", 0, secure(&s, &headers)),
    );
    Ok(resp)
}

/// Every hour until shutdown: deletes expired console sessions, and forgets the ids of text
/// messages taken over a week ago (`store::conversations::prune_inbound`).
pub async fn sweep_sessions(
    db: sea_orm::DatabaseConnection,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = shutdown.cancelled() => return,
        }
        match users::delete_expired_sessions(&db, chrono::Utc::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(sessions = n, "expired console sessions deleted"),
            Err(e) => {
                tracing::warn!(error = %e, "expired console sessions not deleted; retried in an hour")
            }
        }
        // Text messages taken (their ids kept against retries) older than a week.
        let week_ago = chrono::Utc::now() - chrono::TimeDelta::days(7);
        match crate::store::conversations::prune_inbound(&db, week_ago).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                messages = n,
                "ids of text messages taken a week ago forgotten"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "old text message ids not pruned; retried in an hour")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_console_path_of_visible_ascii_is_a_place_to_go_back_to() {
        assert_eq!(
            safe_next(Some("/console/calls?path=warm")),
            "/console/calls?path=warm"
        );
        for bad in [
            "https://evil.example/",
            "//evil.example/console",
            "/console\\..\\x",
            "/console/\u{7f}",
            "/console/caf\u{e9}",
            "/console/a b",
            "/admin/api/v1/clients",
        ] {
            assert_eq!(safe_next(Some(bad)), BASE, "{bad:?}");
        }
        assert_eq!(safe_next(None), BASE);
    }
}
