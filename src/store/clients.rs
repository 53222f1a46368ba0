//! Clients (businesses), their phone numbers and FAQs: the admin API's CRUD and the webhook's
//! `client_by_number` (two round trips while the phone rings).
//!
//! Every FAQ write keeps the FAQ's search passage in step, in the same transaction
//! (`store::knowledge`).

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, Set, TransactionTrait,
    sea_query::{Expr, ExprTrait, Query},
};

use super::{
    StoreError,
    entities::{SecretText, client, faq, phone_number},
    knowledge,
};
use crate::{
    config::PrewarmPolicy,
    domain::{CallerIdTrust, ClientId, E164, Voice},
    engine::EngineKind,
    greeting::GreetingMode,
    hours::BusinessHours,
    lines::LineOverrides,
    tools::{Enabled, agents::Agents, http::HttpTools},
};

/// A validated client, as the admin API accepts it.
#[derive(Debug, Clone)]
pub struct ClientInput {
    /// Business name (non-empty).
    pub name: String,
    /// The agent's prompt.
    pub instructions: String,
    /// What the agent says first.
    pub greeting: String,
    /// Realtime voice.
    pub voice: Voice,
    /// Language code, e.g. `en`.
    pub language: String,
    /// IANA timezone (validated).
    pub timezone: String,
    /// Weekly schedule.
    pub business_hours: BusinessHours,
    /// Per-client prewarm override.
    pub prewarm_policy: Option<PrewarmPolicy>,
    /// Where failed calls are transferred.
    pub fallback_number: Option<E164>,
    /// Numbers routed to this client.
    pub phone_numbers: Vec<E164>,
    /// (question, answer) in order.
    pub faqs: Vec<(String, String)>,
    /// Where `transfer_to_human` puts callers through.
    pub transfer_number: Option<E164>,
    /// Built-in tools turned on.
    pub tools: Enabled,
    /// How far caller ids are trusted for memory.
    pub caller_id_trust: CallerIdTrust,
    /// The client's own fixed lines.
    pub lines: LineOverrides,
    /// Where webhook events go (a checked URL, see `crate::webhooks::check_url`); none: no events.
    pub webhook_url: Option<String>,
    /// The operator's HTTP tools.
    pub http_tools: HttpTools,
    /// The client's other agents.
    pub agents: Agents,
    /// JSON Schema of the structured fields the post-call job extracts (checked by
    /// `crate::post_call::schema::check_results_schema`); none: a summary only.
    pub results_schema: Option<serde_json::Value>,
    /// How its calls' greeting is made (`crate::greeting`).
    pub greeting_mode: GreetingMode,
    /// Its voice engine.
    pub engine: EngineKind,
    /// The engine's model for it (none: the instance's default).
    pub model: Option<String>,
    /// Its calls are recorded (README "Recordings").
    pub recording: bool,
    /// What callers hear first when recorded (none: the built-in notice in its language).
    pub recording_notice: Option<String>,
    /// Origins whose pages may use its web chat (empty: any).
    pub chat_origins: Vec<String>,
    /// Its Kommo CRM settings (none: no Kommo); token and secret filled in by the admin API's
    /// save from what is stored when they were left out.
    pub kommo: Option<crate::text::kommo::KommoConfig>,
}

/// A client with its numbers and FAQs.
#[derive(Debug, Clone)]
pub struct ClientProfile {
    /// The client row.
    pub client: client::Model,
    /// Its numbers.
    pub numbers: Vec<phone_number::Model>,
    /// Its FAQs in order.
    pub faqs: Vec<faq::Model>,
}

impl ClientProfile {
    /// The client's id.
    pub fn id(&self) -> ClientId {
        ClientId::new(self.client.id)
    }

    /// The client's caller-id trust policy.
    pub fn caller_id_trust(&self) -> CallerIdTrust {
        self.client
            .caller_id_trust
            .as_deref()
            .and_then(|t| CallerIdTrust::parse(t).ok())
            .unwrap_or_default()
    }

    /// The origins whose pages may use its web chat (empty: any).
    pub fn chat_origins(&self) -> Vec<String> {
        chat_origins(self.client.chat_origins.as_deref())
    }

    /// The per-client prewarm policy, if set and valid.
    pub fn prewarm_policy(&self) -> Option<PrewarmPolicy> {
        self.client
            .prewarm_policy
            .as_deref()
            .and_then(|p| p.parse().ok())
    }
}

fn active_model(input: &ClientInput, now: chrono::DateTime<Utc>) -> client::ActiveModel {
    client::ActiveModel {
        name: Set(input.name.clone()),
        instructions: Set(input.instructions.clone()),
        greeting: Set(input.greeting.clone()),
        voice: Set(input.voice.as_str().to_string()),
        language: Set(input.language.clone()),
        timezone: Set(input.timezone.clone()),
        business_hours: Set(input.business_hours.to_json().to_string()),
        prewarm_policy: Set(input.prewarm_policy.map(|p| p.as_str().to_string())),
        fallback_number: Set(input.fallback_number.as_ref().map(|n| n.to_string())),
        updated_at: Set(now),
        transfer_number: Set(input.transfer_number.as_ref().map(|n| n.to_string())),
        tools: Set(input.tools.to_stored()),
        caller_id_trust: Set(Some(input.caller_id_trust.as_str().to_string())),
        lines: Set(input.lines.to_stored()),
        webhook_url: Set(input.webhook_url.clone()),
        http_tools: Set(input.http_tools.to_stored()),
        agents: Set(input.agents.to_stored()),
        results_schema: Set(input.results_schema.as_ref().map(|s| s.to_string())),
        greeting_mode: Set(Some(input.greeting_mode.as_str().to_string())),
        engine: Set(Some(input.engine.as_str().to_string())),
        model: Set(input.model.clone()),
        recording: Set(Some(if input.recording { "on" } else { "off" }.to_string())),
        recording_notice: Set(input.recording_notice.clone()),
        chat_origins: Set((!input.chat_origins.is_empty())
            .then(|| serde_json::json!(input.chat_origins).to_string())),
        kommo: Set(input.kommo.as_ref().map(|k| SecretText(k.to_stored()))),
        ..Default::default()
    }
}

async fn insert_numbers(
    db: &impl ConnectionTrait,
    client_id: ClientId,
    numbers: &[E164],
) -> Result<(), StoreError> {
    let now = Utc::now();
    for n in numbers {
        phone_number::ActiveModel {
            client_id: Set(client_id.get()),
            number: Set(n.to_string()),
            active: Set(true),
            created_at: Set(now),
            ..Default::default()
        }
        .insert(db)
        .await
        .map_err(|e| {
            StoreError::conflict_or_db(e, || {
                format!("phone number {n} is already assigned to a client")
            })
        })?;
    }
    Ok(())
}

async fn replace_faqs(
    db: &impl ConnectionTrait,
    client_id: ClientId,
    faqs: &[(String, String)],
    language: &str,
) -> Result<(), StoreError> {
    knowledge::unindex_faqs(db, client_id).await?;
    faq::Entity::delete_many()
        .filter(faq::Column::ClientId.eq(client_id))
        .exec(db)
        .await?;
    for (i, (q, a)) in faqs.iter().enumerate() {
        let row = faq::ActiveModel {
            client_id: Set(client_id.get()),
            question: Set(q.clone()),
            answer: Set(a.clone()),
            position: Set(i as i32),
            ..Default::default()
        }
        .insert(db)
        .await?;
        knowledge::index_faq(db, &row, language).await?;
    }
    Ok(())
}

/// Creates a client with its numbers and FAQs in one transaction. A number already owned
/// (or listed twice) is a `Conflict`.
pub async fn create_client(
    db: &DatabaseConnection,
    input: &ClientInput,
) -> Result<ClientProfile, StoreError> {
    let txn = db.begin().await?;
    let now = Utc::now();
    let mut am = active_model(input, now);
    am.created_at = Set(now);
    am.webhook_secret = Set(Some(new_webhook_secret()));
    am.chat_key = Set(Some(new_chat_key()));
    let row = am.insert(&txn).await?;
    let id = ClientId::new(row.id);
    insert_numbers(&txn, id, &input.phone_numbers).await?;
    replace_faqs(&txn, id, &input.faqs, &input.language).await?;
    let profile = load_profile(&txn, row).await?;
    txn.commit().await?;
    Ok(profile)
}

/// Replaces a client's editable fields, its set of numbers (keeping the active flag of numbers
/// it already had) and its FAQs.
pub async fn update_client(
    db: &DatabaseConnection,
    id: ClientId,
    input: &ClientInput,
) -> Result<ClientProfile, StoreError> {
    let txn = db.begin().await?;
    let before = client::Entity::find_by_id(id)
        .one(&txn)
        .await?
        .ok_or(StoreError::NotFound("client"))?;
    let mut am = active_model(input, Utc::now());
    am.id = Set(id.get());
    if before.webhook_secret.is_none() {
        // A client created before webhooks existed gets its secret on its next update.
        am.webhook_secret = Set(Some(new_webhook_secret()));
    }
    if before.chat_key.is_none() {
        // Likewise its web chat key.
        am.chat_key = Set(Some(new_chat_key()));
    }
    let row = am.update(&txn).await?;
    let existing = phone_number::Entity::find()
        .filter(phone_number::Column::ClientId.eq(id))
        .all(&txn)
        .await?;
    let wanted: Vec<String> = input.phone_numbers.iter().map(|n| n.to_string()).collect();
    let stale: Vec<i32> = existing
        .iter()
        .filter(|n| !wanted.contains(&n.number))
        .map(|n| n.id)
        .collect();
    if !stale.is_empty() {
        phone_number::Entity::delete_many()
            .filter(phone_number::Column::Id.is_in(stale))
            .exec(&txn)
            .await?;
    }
    let new: Vec<E164> = input
        .phone_numbers
        .iter()
        .filter(|n| !existing.iter().any(|e| e.number == n.as_str()))
        .cloned()
        .collect();
    insert_numbers(&txn, id, &new).await?;
    replace_faqs(&txn, id, &input.faqs, &input.language).await?;
    knowledge::set_language(&txn, id, &input.language).await?;
    let profile = load_profile(&txn, row).await?;
    txn.commit().await?;
    Ok(profile)
}

/// Deletes a client (numbers, FAQs and callers cascade; calls keep their rows with no client).
pub async fn delete_client(db: &DatabaseConnection, id: ClientId) -> Result<(), StoreError> {
    let txn = db.begin().await?;
    // No operator keeps a grant of it (a later client could get the same id).
    super::users::forget_client(&txn, id).await?;
    let res = client::Entity::delete_by_id(id).exec(&txn).await?;
    if res.rows_affected == 0 {
        return Err(StoreError::NotFound("client"));
    }
    txn.commit().await?;
    Ok(())
}

async fn load_profile(
    db: &impl ConnectionTrait,
    client: client::Model,
) -> Result<ClientProfile, StoreError> {
    let numbers = phone_number::Entity::find()
        .filter(phone_number::Column::ClientId.eq(client.id))
        .order_by_asc(phone_number::Column::Id)
        .all(db)
        .await?;
    let faqs = faq::Entity::find()
        .filter(faq::Column::ClientId.eq(client.id))
        .order_by_asc(faq::Column::Position)
        .order_by_asc(faq::Column::Id)
        .all(db)
        .await?;
    Ok(ClientProfile {
        client,
        numbers,
        faqs,
    })
}

/// Whether client `id` exists.
pub async fn exists(db: &DatabaseConnection, id: ClientId) -> Result<bool, StoreError> {
    Ok(client::Entity::find_by_id(id).one(db).await?.is_some())
}

/// A client with its numbers and FAQs.
pub async fn get_client(
    db: &DatabaseConnection,
    id: ClientId,
) -> Result<ClientProfile, StoreError> {
    let client = client::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or(StoreError::NotFound("client"))?;
    load_profile(db, client).await
}

/// Every client, with numbers and FAQs (three queries whatever the count).
pub async fn list_clients(db: &DatabaseConnection) -> Result<Vec<ClientProfile>, StoreError> {
    let clients = client::Entity::find()
        .order_by_asc(client::Column::Id)
        .all(db)
        .await?;
    let numbers = phone_number::Entity::find()
        .order_by_asc(phone_number::Column::Id)
        .all(db)
        .await?;
    let faqs = faq::Entity::find()
        .order_by_asc(faq::Column::Position)
        .order_by_asc(faq::Column::Id)
        .all(db)
        .await?;
    Ok(clients
        .into_iter()
        .map(|c| ClientProfile {
            numbers: numbers
                .iter()
                .filter(|n| n.client_id == c.id)
                .cloned()
                .collect(),
            faqs: faqs
                .iter()
                .filter(|f| f.client_id == c.id)
                .cloned()
                .collect(),
            client: c,
        })
        .collect())
}

/// The client owning the ACTIVE number `number`, with its FAQs: two round trips (client by a
/// subquery on numbers, then FAQs). Numbers are not loaded: the call path does not need them.
pub async fn client_by_number(
    db: &DatabaseConnection,
    number: &E164,
) -> Result<Option<ClientProfile>, StoreError> {
    let client = client::Entity::find()
        .filter(
            client::Column::Id.in_subquery(
                Query::select()
                    .column(phone_number::Column::ClientId)
                    .from(phone_number::Entity)
                    .and_where(Expr::col(phone_number::Column::Number).eq(number.as_str()))
                    .and_where(Expr::col(phone_number::Column::Active).eq(true))
                    .to_owned(),
            ),
        )
        .one(db)
        .await?;
    let Some(client) = client else {
        return Ok(None);
    };
    let faqs = faq::Entity::find()
        .filter(faq::Column::ClientId.eq(client.id))
        .order_by_asc(faq::Column::Position)
        .order_by_asc(faq::Column::Id)
        .all(db)
        .await?;
    Ok(Some(ClientProfile {
        client,
        numbers: Vec::new(),
        faqs,
    }))
}

/// Adds a number to a client.
pub async fn add_number(
    db: &DatabaseConnection,
    client_id: ClientId,
    number: &E164,
) -> Result<phone_number::Model, StoreError> {
    get_client(db, client_id).await?;
    insert_numbers(db, client_id, std::slice::from_ref(number)).await?;
    find_number(db, client_id, number).await
}

async fn find_number(
    db: &DatabaseConnection,
    client_id: ClientId,
    number: &E164,
) -> Result<phone_number::Model, StoreError> {
    phone_number::Entity::find()
        .filter(phone_number::Column::ClientId.eq(client_id))
        .filter(phone_number::Column::Number.eq(number.as_str()))
        .one(db)
        .await?
        .ok_or(StoreError::NotFound("phone number"))
}

/// Turns a client's number on or off.
pub async fn set_number_active(
    db: &DatabaseConnection,
    client_id: ClientId,
    number: &E164,
    active: bool,
) -> Result<phone_number::Model, StoreError> {
    let row = find_number(db, client_id, number).await?;
    let mut am: phone_number::ActiveModel = row.into();
    am.active = Set(active);
    Ok(am.update(db).await?)
}

/// Removes a number from a client.
pub async fn delete_number(
    db: &DatabaseConnection,
    client_id: ClientId,
    number: &E164,
) -> Result<(), StoreError> {
    let row = find_number(db, client_id, number).await?;
    phone_number::Entity::delete_by_id(row.id).exec(db).await?;
    Ok(())
}

/// Appends an FAQ.
pub async fn add_faq(
    db: &DatabaseConnection,
    client_id: ClientId,
    question: &str,
    answer: &str,
) -> Result<faq::Model, StoreError> {
    let txn = db.begin().await?;
    let client = client::Entity::find_by_id(client_id)
        .one(&txn)
        .await?
        .ok_or(StoreError::NotFound("client"))?;
    let profile = load_profile(&txn, client).await?;
    let position = profile
        .faqs
        .iter()
        .map(|f| f.position + 1)
        .max()
        .unwrap_or(0);
    let row = faq::ActiveModel {
        client_id: Set(client_id.get()),
        question: Set(question.to_string()),
        answer: Set(answer.to_string()),
        position: Set(position),
        ..Default::default()
    }
    .insert(&txn)
    .await?;
    knowledge::index_faq(&txn, &row, &profile.client.language).await?;
    txn.commit().await?;
    Ok(row)
}

async fn find_faq(
    db: &impl ConnectionTrait,
    client_id: ClientId,
    faq_id: i32,
) -> Result<faq::Model, StoreError> {
    faq::Entity::find_by_id(faq_id)
        .filter(faq::Column::ClientId.eq(client_id))
        .one(db)
        .await?
        .ok_or(StoreError::NotFound("faq"))
}

/// Replaces an FAQ's text.
pub async fn update_faq(
    db: &DatabaseConnection,
    client_id: ClientId,
    faq_id: i32,
    question: &str,
    answer: &str,
) -> Result<faq::Model, StoreError> {
    let txn = db.begin().await?;
    let mut am: faq::ActiveModel = find_faq(&txn, client_id, faq_id).await?.into();
    am.question = Set(question.to_string());
    am.answer = Set(answer.to_string());
    let row = am.update(&txn).await?;
    let client = client::Entity::find_by_id(client_id)
        .one(&txn)
        .await?
        .ok_or(StoreError::NotFound("client"))?;
    knowledge::unindex_faq(&txn, row.id).await?;
    knowledge::index_faq(&txn, &row, &client.language).await?;
    txn.commit().await?;
    Ok(row)
}

/// Deletes an FAQ.
pub async fn delete_faq(
    db: &DatabaseConnection,
    client_id: ClientId,
    faq_id: i32,
) -> Result<(), StoreError> {
    let txn = db.begin().await?;
    let row = find_faq(&txn, client_id, faq_id).await?;
    knowledge::unindex_faq(&txn, row.id).await?;
    faq::Entity::delete_by_id(row.id).exec(&txn).await?;
    txn.commit().await?;
    Ok(())
}

/// Reads a stored `clients.chat_origins` (a JSON list; anything unreadable is none).
pub fn chat_origins(stored: Option<&str>) -> Vec<String> {
    crate::json::from_stored(stored, |v| {
        serde_json::from_value(v.clone()).map_err(|e| e.to_string())
    })
}

/// A web chat key: `wlc_` and 24 random bytes, URL-safe base64.
fn new_chat_key() -> String {
    use base64::Engine;
    let mut b = [0u8; 24];
    rand::fill(&mut b);
    format!(
        "wlc_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    )
}

/// Gives a web chat key to every client without one (clients made before the web chat);
/// how many got one.
pub async fn fill_chat_keys(db: &DatabaseConnection) -> Result<u64, StoreError> {
    let ids: Vec<i32> = client::Entity::find()
        .filter(client::Column::ChatKey.is_null())
        .all(db)
        .await?
        .into_iter()
        .map(|c| c.id)
        .collect();
    let mut n = 0;
    for id in ids {
        n += client::Entity::update_many()
            .col_expr(client::Column::ChatKey, Expr::value(new_chat_key()))
            .filter(client::Column::Id.eq(id))
            .filter(client::Column::ChatKey.is_null())
            .exec(db)
            .await?
            .rows_affected;
    }
    Ok(n)
}

/// The client whose web chat key is `key`.
pub async fn client_by_chat_key(
    db: &DatabaseConnection,
    key: &str,
) -> Result<Option<ClientProfile>, StoreError> {
    let Some(client) = client::Entity::find()
        .filter(client::Column::ChatKey.eq(key))
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    load_profile(db, client).await.map(Some)
}

fn new_webhook_secret() -> SecretText {
    SecretText(crate::webhooks::signing::generate_secret())
}

/// Replaces a client's webhook secret with a new one and returns it. Events still pending are
/// signed with the new secret from their next attempt on.
pub async fn rotate_webhook_secret(
    db: &DatabaseConnection,
    id: ClientId,
) -> Result<SecretText, StoreError> {
    let secret = new_webhook_secret();
    let res = client::Entity::update_many()
        .col_expr(client::Column::WebhookSecret, Expr::value(secret.clone()))
        .col_expr(client::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(client::Column::Id.eq(id))
        .exec(db)
        .await?;
    if res.rows_affected == 0 {
        return Err(StoreError::NotFound("client"));
    }
    Ok(secret)
}
