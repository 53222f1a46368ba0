//! Users and their API tokens (README.md, "Accounts"): `/users` for admins, `/me` for whoever
//! asks. The same operations back `warmline user …` on the command line ([`add_user`],
//! [`new_api_token`]).

use axum::{
    Json,
    extract::{Extension, State},
    http::StatusCode,
};
use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    ApiResult,
    error::{ApiError, Path, ValidJson},
    require_admin,
};
use crate::{
    accounts::{self, Principal, Role},
    app::AppState,
    domain::ClientId,
    store::{clients, users},
};

/// A user as shown (never its password hash).
#[derive(Debug, Serialize, ToSchema)]
pub struct UserOut {
    /// Id (none for `admin.token`).
    pub id: Option<i32>,
    /// Log-in name (none for `admin.token`).
    pub email: Option<String>,
    /// `admin` or `operator`.
    pub role: String,
    /// The clients an operator is given.
    #[schema(value_type = Vec<i32>)]
    pub clients: Vec<ClientId>,
    /// Created.
    pub created_at: Option<DateTime<Utc>>,
}

impl From<users::Account> for UserOut {
    fn from(a: users::Account) -> Self {
        Self {
            id: Some(a.id),
            email: Some(a.email),
            role: a.role,
            clients: a.clients,
            created_at: Some(a.created_at),
        }
    }
}

/// A new user.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserIn {
    /// Log-in name.
    pub email: String,
    /// `admin` or `operator`.
    pub role: String,
    /// The clients an operator is given (an admin needs none).
    #[serde(default)]
    #[schema(value_type = Vec<i32>)]
    pub clients: Vec<ClientId>,
    /// At least 12 characters; left out, one is generated and answered once.
    #[serde(default)]
    pub password: Option<String>,
}

/// A user just created.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserCreated {
    /// The user.
    pub user: UserOut,
    /// The generated password (only when none was given): shown this once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// The clients of a user.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientsIn {
    /// Replaces the clients the user is given.
    #[schema(value_type = Vec<i32>)]
    pub clients: Vec<ClientId>,
}

/// A new API token's label.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenIn {
    /// What it is for (1–100 characters).
    pub name: String,
}

/// An API token just created.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenOut {
    /// Names it for revocation (`DELETE …/tokens/{token_id}`).
    pub id: String,
    /// Its label.
    pub name: String,
    /// `Authorization: Bearer <token>`: shown this once (only its hash is kept).
    pub token: String,
}

/// Checks that every client exists (a grant of a missing client is refused, not kept).
async fn check_clients(db: &DatabaseConnection, ids: &[ClientId]) -> Result<(), ApiError> {
    for &id in ids {
        if !clients::exists(db, id).await? {
            return Err(ApiError::Invalid(format!(
                "clients: no client {}",
                id.get()
            )));
        }
    }
    Ok(())
}

/// Creates a user: checks the email, the role, the clients and the password (or generates one,
/// returned). The command line's `warmline user add` and `POST /users`.
pub async fn add_user(
    db: &DatabaseConnection,
    email: &str,
    role: &str,
    clients: &[ClientId],
    password: Option<String>,
) -> Result<(users::Account, Option<String>), ApiError> {
    let email = accounts::normalize_email(email).map_err(ApiError::Invalid)?;
    let role = Role::parse(role)
        .ok_or_else(|| ApiError::Invalid(format!("role: {role:?} is not admin or operator")))?;
    check_clients(db, clients).await?;
    let (password, generated) = match password {
        Some(p) => {
            accounts::check_password(&p).map_err(ApiError::Invalid)?;
            (p, None)
        }
        None => {
            let p = accounts::new_token("");
            (p.clone(), Some(p))
        }
    };
    let hash = hash_off_runtime(password).await?;
    let account = users::create_user(db, &email, &hash, role.as_str(), clients).await?;
    tracing::info!(user_id = account.id, role = role.as_str(), clients = ?account.clients, "user created");
    Ok((account, generated))
}

/// Argon2 on the blocking pool.
pub async fn hash_off_runtime(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || accounts::hash_password(&password))
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("hashing task: {e}")))?
        .map_err(ApiError::Internal)
}

/// Creates an API token of user `user_id`, labelled `name`; the token is returned once.
pub async fn new_api_token(
    db: &DatabaseConnection,
    user_id: i32,
    name: &str,
) -> Result<TokenOut, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::Invalid("name: 1 to 100 characters".into()));
    }
    let token = accounts::new_token(accounts::API_TOKEN_PREFIX);
    users::create_api_token(db, &accounts::token_hash(&token), user_id, name).await?;
    tracing::info!(user_id, name, "API token created");
    Ok(TokenOut {
        id: accounts::token_hash(&token)
            .chars()
            .take(users::TOKEN_ID_LEN)
            .collect(),
        name: name.to_string(),
        token,
    })
}

/// Users (admins only).
#[utoipa::path(get, path = "/users", responses((status = 200, body = Vec<UserOut>), (status = 403)))]
pub async fn list_users(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<Vec<UserOut>>> {
    require_admin(&who, "list users")?;
    let all = users::list_users(&s.db).await?;
    Ok(Json(all.into_iter().map(UserOut::from).collect()))
}

/// Create a user (admins only).
#[utoipa::path(post, path = "/users", request_body = UserIn,
    responses((status = 201, body = UserCreated), (status = 403), (status = 409), (status = 422)))]
pub async fn create_user(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    ValidJson(body): ValidJson<UserIn>,
) -> ApiResult<(StatusCode, Json<UserCreated>)> {
    require_admin(&who, "create users")?;
    let (account, password) =
        add_user(&s.db, &body.email, &body.role, &body.clients, body.password).await?;
    Ok((
        StatusCode::CREATED,
        Json(UserCreated {
            user: account.into(),
            password,
        }),
    ))
}

/// Replace the clients a user is given (admins only).
#[utoipa::path(put, path = "/users/{user_id}/clients", request_body = ClientsIn,
    responses((status = 200, body = UserOut), (status = 403), (status = 404), (status = 422)))]
pub async fn set_user_clients(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(user_id): Path<i32>,
    ValidJson(body): ValidJson<ClientsIn>,
) -> ApiResult<Json<UserOut>> {
    require_admin(&who, "change users")?;
    check_clients(&s.db, &body.clients).await?;
    let account = users::set_clients(&s.db, user_id, &body.clients).await?;
    tracing::info!(user_id, clients = ?account.clients, by = who.who(), "user's clients changed");
    Ok(Json(account.into()))
}

/// Delete a user with their sessions and API tokens (admins only).
#[utoipa::path(delete, path = "/users/{user_id}",
    responses((status = 204), (status = 403), (status = 404)))]
pub async fn delete_user(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(user_id): Path<i32>,
) -> ApiResult<StatusCode> {
    require_admin(&who, "delete users")?;
    users::delete_user(&s.db, user_id).await?;
    tracing::info!(user_id, by = who.who(), "user deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Create an API token for a user (admins only); the token is answered once.
#[utoipa::path(post, path = "/users/{user_id}/tokens", request_body = TokenIn,
    responses((status = 201, body = TokenOut), (status = 403), (status = 404), (status = 422)))]
pub async fn create_user_token(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(user_id): Path<i32>,
    ValidJson(body): ValidJson<TokenIn>,
) -> ApiResult<(StatusCode, Json<TokenOut>)> {
    require_admin(&who, "create tokens for other users")?;
    users::by_id(&s.db, user_id)
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    Ok((
        StatusCode::CREATED,
        Json(new_api_token(&s.db, user_id, &body.name).await?),
    ))
}

/// An API token as listed (never the token itself).
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenListed {
    /// Names it for revocation.
    pub id: String,
    /// Its label.
    pub name: String,
    /// Created.
    pub created_at: DateTime<Utc>,
}

impl From<users::TokenInfo> for TokenListed {
    fn from(t: users::TokenInfo) -> Self {
        Self {
            id: t.id,
            name: t.name,
            created_at: t.created_at,
        }
    }
}

async fn tokens_of(s: &AppState, user_id: i32) -> ApiResult<Json<Vec<TokenListed>>> {
    let all = users::list_api_tokens(&s.db, user_id).await?;
    Ok(Json(all.into_iter().map(TokenListed::from).collect()))
}

async fn revoke(
    s: &AppState,
    who: &Principal,
    user_id: i32,
    token_id: &str,
) -> ApiResult<StatusCode> {
    users::delete_api_token(&s.db, user_id, token_id).await?;
    tracing::info!(user_id, token_id, by = who.who(), "API token revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// A user's API tokens (admins only).
#[utoipa::path(get, path = "/users/{user_id}/tokens",
    responses((status = 200, body = Vec<TokenListed>), (status = 403), (status = 404)))]
pub async fn list_user_tokens(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(user_id): Path<i32>,
) -> ApiResult<Json<Vec<TokenListed>>> {
    require_admin(&who, "list other users' tokens")?;
    users::by_id(&s.db, user_id)
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    tokens_of(&s, user_id).await
}

/// Revoke a user's API token (admins only).
#[utoipa::path(delete, path = "/users/{user_id}/tokens/{token_id}",
    responses((status = 204), (status = 403), (status = 404)))]
pub async fn revoke_user_token(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((user_id, token_id)): Path<(i32, String)>,
) -> ApiResult<StatusCode> {
    require_admin(&who, "revoke other users' tokens")?;
    revoke(&s, &who, user_id, &token_id).await
}

/// The asking user's own API tokens.
#[utoipa::path(get, path = "/me/tokens",
    responses((status = 200, body = Vec<TokenListed>), (status = 422, description = "admin.token has no user")))]
pub async fn list_my_tokens(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<Vec<TokenListed>>> {
    tokens_of(&s, own_user(&who)?).await
}

/// Revoke one of the asking user's own API tokens.
#[utoipa::path(delete, path = "/me/tokens/{token_id}",
    responses((status = 204), (status = 404), (status = 422, description = "admin.token has no user")))]
pub async fn revoke_my_token(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(token_id): Path<String>,
) -> ApiResult<StatusCode> {
    let user_id = own_user(&who)?;
    revoke(&s, &who, user_id, &token_id).await
}

/// The asking user's id; `admin.token` has none.
fn own_user(who: &Principal) -> ApiResult<i32> {
    who.user.as_ref().map(|(id, _)| *id).ok_or_else(|| {
        ApiError::Invalid("admin.token has no user to own tokens: use /users/{id}/tokens".into())
    })
}

/// Who is asking: the user (its role and clients), or `admin.token`.
#[utoipa::path(get, path = "/me", responses((status = 200, body = UserOut)))]
pub async fn me(Extension(who): Extension<Principal>) -> Json<UserOut> {
    Json(UserOut {
        id: who.user.as_ref().map(|(id, _)| *id),
        email: who.user.as_ref().map(|(_, e)| e.clone()),
        role: who.role.as_str().into(),
        clients: who.clients.to_vec(),
        created_at: None,
    })
}

/// Create an API token with the asking user's own role and clients; the token is answered once.
#[utoipa::path(post, path = "/me/tokens", request_body = TokenIn,
    responses((status = 201, body = TokenOut), (status = 422, description = "admin.token has no user to own a token")))]
pub async fn create_my_token(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    ValidJson(body): ValidJson<TokenIn>,
) -> ApiResult<(StatusCode, Json<TokenOut>)> {
    let user_id = own_user(&who)?;
    Ok((
        StatusCode::CREATED,
        Json(new_api_token(&s.db, user_id, &body.name).await?),
    ))
}
