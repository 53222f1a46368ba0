//! Each person's text conversation with a client (`crate::text`): the OpenAI conversation id
//! kept per (client, identity), like an Assistants thread map. One row per person, whatever the
//! channel: WhatsApp and SMS from one number share it, so the person is one conversation.

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set, sea_query::Expr,
    sea_query::OnConflict,
};

use super::{
    StoreError,
    entities::{conversation, text_inbound},
};
use crate::domain::{Channel, ClientId};

/// A person's conversation.
pub type Conversation = conversation::Model;

/// The conversation of `identity` with `client_id`, if there is one.
pub async fn find(
    db: &impl ConnectionTrait,
    client_id: ClientId,
    identity: &str,
) -> Result<Option<Conversation>, StoreError> {
    Ok(conversation::Entity::find()
        .filter(conversation::Column::ClientId.eq(client_id))
        .filter(conversation::Column::Identity.eq(identity))
        .one(db)
        .await?)
}

/// Keeps `conversation_id` as the conversation of `identity`, unless another was kept first
/// (two first messages at once, on two instances): then that one is returned and
/// `conversation_id` is not used.
pub async fn save(
    db: &impl ConnectionTrait,
    client_id: ClientId,
    identity: &str,
    channel: Channel,
    conversation_id: &str,
    now: DateTime<Utc>,
) -> Result<Conversation, StoreError> {
    let row = conversation::ActiveModel {
        client_id: Set(client_id.get()),
        identity: Set(identity.to_string()),
        channel: Set(channel.as_str().to_string()),
        conversation_id: Set(conversation_id.to_string()),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    };
    conversation::Entity::insert(row)
        .on_conflict(
            OnConflict::columns([
                conversation::Column::ClientId,
                conversation::Column::Identity,
            ])
            .do_nothing()
            .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    find(db, client_id, identity)
        .await?
        .ok_or(StoreError::NotFound("conversation"))
}

/// Marks an exchange beginning on `conv` (as read) at `now`, unless another exchange marked
/// the conversation since it was read (another instance answering the same person at the same
/// moment: their exchanges are then one chat, and that one began it). Whether this one did.
pub async fn begin(
    db: &impl ConnectionTrait,
    conv: &Conversation,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let done = conversation::Entity::update_many()
        .col_expr(conversation::Column::UpdatedAt, Expr::value(now))
        .filter(conversation::Column::Id.eq(conv.id))
        .filter(conversation::Column::UpdatedAt.eq(conv.updated_at))
        .exec(db)
        .await?;
    Ok(done.rows_affected == 1)
}

/// Marks an exchange on conversation `id` at `now`.
pub async fn touch(
    db: &impl ConnectionTrait,
    id: i32,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    conversation::Entity::update_many()
        .col_expr(conversation::Column::UpdatedAt, Expr::value(now))
        .filter(conversation::Column::Id.eq(id))
        .exec(db)
        .await?;
    Ok(())
}

/// Forgets the conversation of `identity` with `client_id` (a privacy request); the OpenAI
/// conversation ids it held, for the caller to delete there too.
pub async fn forget(
    db: &impl ConnectionTrait,
    client_id: ClientId,
    identity: &str,
) -> Result<Vec<String>, StoreError> {
    let rows = conversation::Entity::find()
        .filter(conversation::Column::ClientId.eq(client_id))
        .filter(conversation::Column::Identity.eq(identity))
        .all(db)
        .await?;
    conversation::Entity::delete_many()
        .filter(conversation::Column::ClientId.eq(client_id))
        .filter(conversation::Column::Identity.eq(identity))
        .exec(db)
        .await?;
    Ok(rows.into_iter().map(|r| r.conversation_id).collect())
}

/// Takes message `message_sid` of `channel`: true the first time, false for a retry of a
/// message already taken (on any instance).
pub async fn take_inbound(
    db: &impl ConnectionTrait,
    message_sid: &str,
    channel: Channel,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let row = text_inbound::ActiveModel {
        message_sid: Set(message_sid.to_string()),
        channel: Set(channel.as_str().to_string()),
        received_at: Set(now),
    };
    let inserted = text_inbound::Entity::insert(row)
        .on_conflict(
            OnConflict::column(text_inbound::Column::MessageSid)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    Ok(inserted > 0)
}

/// Forgets the messages taken before `before` (a retry comes within minutes; days later it
/// would be a new message anyway); how many.
pub async fn prune_inbound(
    db: &impl ConnectionTrait,
    before: DateTime<Utc>,
) -> Result<u64, StoreError> {
    Ok(text_inbound::Entity::delete_many()
        .filter(text_inbound::Column::ReceivedAt.lt(before))
        .exec(db)
        .await?
        .rows_affected)
}
