//! Accounts (`users`, `user_clients`, `user_sessions`, `api_tokens`; `crate::accounts` holds the
//! rules): users with their role and clients, console sessions and per-user API tokens, both
//! found by the SHA-256 of their token (the tokens themselves are never stored).

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, Set,
    TransactionTrait,
};

use super::{
    StoreError,
    entities::{api_token, user, user_client, user_session},
};
use crate::domain::ClientId;

/// A user with the clients they are given (for an operator; an admin sees every client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Primary key.
    pub id: i32,
    /// Log-in name (lower case).
    pub email: String,
    /// `admin` or `operator`.
    pub role: String,
    /// The clients an operator is given, ascending.
    pub clients: Vec<ClientId>,
    /// Created.
    pub created_at: DateTime<Utc>,
}

async fn account_of(db: &impl ConnectionTrait, u: user::Model) -> Result<Account, StoreError> {
    let clients = user_client::Entity::find()
        .filter(user_client::Column::UserId.eq(u.id))
        .order_by_asc(user_client::Column::ClientId)
        .all(db)
        .await?
        .into_iter()
        .map(|g| ClientId::new(g.client_id))
        .collect();
    Ok(Account {
        id: u.id,
        email: u.email,
        role: u.role,
        clients,
        created_at: u.created_at,
    })
}

/// Creates a user (`email` already lower case) with its grants; `Conflict` if the email is
/// taken.
pub async fn create_user(
    db: &DatabaseConnection,
    email: &str,
    password_hash: &str,
    role: &str,
    clients: &[ClientId],
) -> Result<Account, StoreError> {
    let txn = db.begin().await?;
    let row = user::ActiveModel {
        email: Set(email.to_string()),
        password_hash: Set(password_hash.to_string()),
        role: Set(role.to_string()),
        created_at: Set(Utc::now()),
        ..Default::default()
    };
    let u = user::Entity::insert(row)
        .exec_with_returning(&txn)
        .await
        .map_err(|e| StoreError::conflict_or_db(e, || format!("a user {email} already exists")))?;
    set_grants(&txn, u.id, clients).await?;
    let account = account_of(&txn, u).await?;
    txn.commit().await?;
    Ok(account)
}

async fn set_grants(
    db: &impl ConnectionTrait,
    user_id: i32,
    clients: &[ClientId],
) -> Result<(), StoreError> {
    user_client::Entity::delete_many()
        .filter(user_client::Column::UserId.eq(user_id))
        .exec(db)
        .await?;
    let mut ids: Vec<i32> = clients.iter().map(|c| c.get()).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Ok(());
    }
    user_client::Entity::insert_many(ids.into_iter().map(|client_id| user_client::ActiveModel {
        user_id: Set(user_id),
        client_id: Set(client_id),
    }))
    .exec(db)
    .await?;
    Ok(())
}

/// Replaces the clients a user is given.
pub async fn set_clients(
    db: &DatabaseConnection,
    user_id: i32,
    clients: &[ClientId],
) -> Result<Account, StoreError> {
    let txn = db.begin().await?;
    let u = user::Entity::find_by_id(user_id)
        .one(&txn)
        .await?
        .ok_or(StoreError::NotFound("user"))?;
    set_grants(&txn, user_id, clients).await?;
    let account = account_of(&txn, u).await?;
    txn.commit().await?;
    Ok(account)
}

/// The user with this email and their password hash.
pub async fn by_email(
    db: &DatabaseConnection,
    email: &str,
) -> Result<Option<(Account, String)>, StoreError> {
    let Some(u) = user::Entity::find()
        .filter(user::Column::Email.eq(email))
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    let hash = u.password_hash.clone();
    Ok(Some((account_of(db, u).await?, hash)))
}

/// A user's id and password hash by email (the log-in's first step: nothing else is read
/// before the password is checked).
pub async fn credentials(
    db: &DatabaseConnection,
    email: &str,
) -> Result<Option<(i32, String)>, StoreError> {
    Ok(user::Entity::find()
        .filter(user::Column::Email.eq(email))
        .one(db)
        .await?
        .map(|u| (u.id, u.password_hash)))
}

/// The user with this id.
pub async fn by_id(db: &DatabaseConnection, id: i32) -> Result<Option<Account>, StoreError> {
    match user::Entity::find_by_id(id).one(db).await? {
        Some(u) => Ok(Some(account_of(db, u).await?)),
        None => Ok(None),
    }
}

/// Every user, by email.
pub async fn list_users(db: &DatabaseConnection) -> Result<Vec<Account>, StoreError> {
    let rows = user::Entity::find()
        .order_by_asc(user::Column::Email)
        .all(db)
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for u in rows {
        out.push(account_of(db, u).await?);
    }
    Ok(out)
}

/// Replaces a user's password hash and ends their sessions (their API tokens stay).
pub async fn set_password(
    db: &DatabaseConnection,
    user_id: i32,
    password_hash: &str,
) -> Result<(), StoreError> {
    let txn = db.begin().await?;
    let res = user::Entity::update_many()
        .col_expr(
            user::Column::PasswordHash,
            sea_orm::sea_query::Expr::value(password_hash.to_string()),
        )
        .filter(user::Column::Id.eq(user_id))
        .exec(&txn)
        .await?;
    if res.rows_affected == 0 {
        return Err(StoreError::NotFound("user"));
    }
    user_session::Entity::delete_many()
        .filter(user_session::Column::UserId.eq(user_id))
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(())
}

/// Deletes a user with their grants, sessions and API tokens.
pub async fn delete_user(db: &DatabaseConnection, user_id: i32) -> Result<(), StoreError> {
    let txn = db.begin().await?;
    user_client::Entity::delete_many()
        .filter(user_client::Column::UserId.eq(user_id))
        .exec(&txn)
        .await?;
    user_session::Entity::delete_many()
        .filter(user_session::Column::UserId.eq(user_id))
        .exec(&txn)
        .await?;
    api_token::Entity::delete_many()
        .filter(api_token::Column::UserId.eq(user_id))
        .exec(&txn)
        .await?;
    let res = user::Entity::delete_by_id(user_id).exec(&txn).await?;
    if res.rows_affected == 0 {
        return Err(StoreError::NotFound("user"));
    }
    txn.commit().await?;
    Ok(())
}

/// Removes every grant of a deleted client (no operator keeps a dangling id that a later
/// client could reuse).
pub async fn forget_client(db: &impl ConnectionTrait, client: ClientId) -> Result<(), StoreError> {
    user_client::Entity::delete_many()
        .filter(user_client::Column::ClientId.eq(client.get()))
        .exec(db)
        .await?;
    Ok(())
}

/// A console session as read back: its user and CSRF token.
#[derive(Debug, Clone)]
pub struct Session {
    /// Whose.
    pub account: Account,
    /// Its forms' CSRF token.
    pub csrf: String,
    /// No longer valid from.
    pub expires_at: DateTime<Utc>,
}

/// Stores a new session.
pub async fn create_session(
    db: &DatabaseConnection,
    token_hash: &str,
    user_id: i32,
    csrf: &str,
    expires_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    user_session::Entity::insert(user_session::ActiveModel {
        token_hash: Set(token_hash.to_string()),
        user_id: Set(user_id),
        csrf: Set(csrf.to_string()),
        created_at: Set(Utc::now()),
        expires_at: Set(expires_at),
    })
    .exec(db)
    .await?;
    Ok(())
}

/// The session of this token hash, if it exists and has not expired at `now` (an expired one
/// is deleted).
pub async fn session(
    db: &DatabaseConnection,
    token_hash: &str,
    now: DateTime<Utc>,
) -> Result<Option<Session>, StoreError> {
    let Some(s) = user_session::Entity::find_by_id(token_hash.to_string())
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    if s.expires_at <= now {
        delete_session(db, token_hash).await?;
        return Ok(None);
    }
    let Some(u) = user::Entity::find_by_id(s.user_id).one(db).await? else {
        return Ok(None);
    };
    Ok(Some(Session {
        account: account_of(db, u).await?,
        csrf: s.csrf,
        expires_at: s.expires_at,
    }))
}

/// Ends a session (log-out); nothing if it is gone already.
pub async fn delete_session(db: &DatabaseConnection, token_hash: &str) -> Result<(), StoreError> {
    user_session::Entity::delete_by_id(token_hash.to_string())
        .exec(db)
        .await?;
    Ok(())
}

/// Deletes sessions expired at `now`; how many.
pub async fn delete_expired_sessions(
    db: &DatabaseConnection,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let res = user_session::Entity::delete_many()
        .filter(user_session::Column::ExpiresAt.lte(now))
        .exec(db)
        .await?;
    Ok(res.rows_affected)
}

/// Stores a new API token of a user.
pub async fn create_api_token(
    db: &DatabaseConnection,
    token_hash: &str,
    user_id: i32,
    name: &str,
) -> Result<(), StoreError> {
    api_token::Entity::insert(api_token::ActiveModel {
        token_hash: Set(token_hash.to_string()),
        user_id: Set(user_id),
        name: Set(name.to_string()),
        created_at: Set(Utc::now()),
    })
    .exec(db)
    .await?;
    Ok(())
}

/// An API token as listed: never the token, an id made of the start of its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// The first 16 hex digits of the token's SHA-256: names it for revocation.
    pub id: String,
    /// Its label.
    pub name: String,
    /// Created.
    pub created_at: DateTime<Utc>,
}

/// How many hex digits of a token's hash name it.
pub const TOKEN_ID_LEN: usize = 16;

/// A user's API tokens, oldest first.
pub async fn list_api_tokens(
    db: &DatabaseConnection,
    user_id: i32,
) -> Result<Vec<TokenInfo>, StoreError> {
    Ok(api_token::Entity::find()
        .filter(api_token::Column::UserId.eq(user_id))
        .order_by_asc(api_token::Column::CreatedAt)
        .all(db)
        .await?
        .into_iter()
        .map(|t| TokenInfo {
            id: t.token_hash.chars().take(TOKEN_ID_LEN).collect(),
            name: t.name,
            created_at: t.created_at,
        })
        .collect())
}

/// Revokes the API token of `user_id` whose id ([`TokenInfo::id`]) is `id`.
pub async fn delete_api_token(
    db: &DatabaseConnection,
    user_id: i32,
    id: &str,
) -> Result<(), StoreError> {
    let hashes: Vec<String> = api_token::Entity::find()
        .filter(api_token::Column::UserId.eq(user_id))
        .all(db)
        .await?
        .into_iter()
        .map(|t| t.token_hash)
        .filter(|h| id.len() == TOKEN_ID_LEN && h.starts_with(id))
        .collect();
    if hashes.is_empty() {
        return Err(StoreError::NotFound("token"));
    }
    api_token::Entity::delete_many()
        .filter(api_token::Column::TokenHash.is_in(hashes))
        .exec(db)
        .await?;
    Ok(())
}

/// The user an API token (by its hash) belongs to.
pub async fn by_api_token(
    db: &DatabaseConnection,
    token_hash: &str,
) -> Result<Option<Account>, StoreError> {
    let Some(t) = api_token::Entity::find_by_id(token_hash.to_string())
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    let Some(u) = user::Entity::find_by_id(t.user_id).one(db).await? else {
        return Ok(None);
    };
    Ok(Some(account_of(db, u).await?))
}
