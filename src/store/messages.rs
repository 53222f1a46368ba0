//! Messages the agent takes for the business (the `take_message` tool): stored, listed by the
//! admin API, and sent as a `message.taken` webhook event when the client has a `webhook_url`.

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set, TransactionTrait,
};
use serde::Deserialize;

use super::{StoreError, entities::message, outbox};
use crate::{
    domain::{CallSid, ClientId},
    webhooks::EventType,
};

/// A stored message.
pub type Message = message::Model;

/// Longest message kept (characters).
pub const MAX_MESSAGE_CHARS: usize = 4000;
/// Longest caller name (characters).
pub const MAX_NAME_CHARS: usize = 200;
/// Longest callback number (characters).
pub const MAX_CALLBACK_CHARS: usize = 40;

/// What the caller left: the `take_message` tool's arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct MessageInput {
    /// The message itself.
    pub message: String,
    /// The number to call back, if the caller gave one (digits, spaces, `+-().`).
    #[serde(default)]
    pub callback_number: Option<String>,
    /// The caller's name, if they gave it.
    #[serde(default)]
    pub caller_name: Option<String>,
}

/// Why a message was not taken.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// A field is unusable; the text names it (safe to hand back to the model).
    #[error("{0}")]
    Invalid(String),
    /// The client does not exist, or the database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn optional(field: &str, v: Option<&str>, max: usize) -> Result<Option<String>, MessageError> {
    let Some(t) = v.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    if t.chars().count() > max {
        return Err(MessageError::Invalid(format!(
            "{field}: must be at most {max} characters"
        )));
    }
    Ok(Some(t.to_string()))
}

impl MessageInput {
    /// Trims every field, drops empty optional ones and checks lengths and the callback
    /// number's characters.
    pub fn normalized(&self) -> Result<MessageInput, MessageError> {
        let message = self.message.trim();
        if message.is_empty() {
            return Err(MessageError::Invalid("message: must not be empty".into()));
        }
        if message.chars().count() > MAX_MESSAGE_CHARS {
            return Err(MessageError::Invalid(format!(
                "message: must be at most {MAX_MESSAGE_CHARS} characters"
            )));
        }
        let callback_number = optional(
            "callback_number",
            self.callback_number.as_deref(),
            MAX_CALLBACK_CHARS,
        )?;
        if let Some(n) = &callback_number {
            let digits = n.chars().filter(char::is_ascii_digit).count();
            if digits < 3
                || !n
                    .chars()
                    .all(|c| c.is_ascii_digit() || " +-().".contains(c))
            {
                return Err(MessageError::Invalid(
                    "callback_number: must be a phone number (digits, spaces and +-().)".into(),
                ));
            }
        }
        Ok(MessageInput {
            message: message.to_string(),
            callback_number,
            caller_name: optional("caller_name", self.caller_name.as_deref(), MAX_NAME_CHARS)?,
        })
    }
}

/// Stores a message taken on `call_sid` from `caller_phone` (as Twilio gave it) and, if the
/// client has a `webhook_url`, its `message.taken` event, in one transaction. The caller wakes
/// the delivery worker afterwards (`AppState::outbox_wake`).
pub async fn take_message(
    db: &DatabaseConnection,
    client_id: ClientId,
    call_sid: &CallSid,
    caller_phone: &str,
    input: MessageInput,
) -> Result<Message, MessageError> {
    let input = input.normalized()?;
    let txn = db.begin().await.map_err(StoreError::from)?;
    let row = message::ActiveModel {
        client_id: Set(client_id.get()),
        call_sid: Set(call_sid.as_str().to_string()),
        caller_phone: Set(caller_phone.to_string()),
        caller_name: Set(input.caller_name),
        callback_number: Set(input.callback_number),
        message: Set(input.message),
        created_at: Set(Utc::now()),
        ..Default::default()
    }
    .insert(&txn)
    .await
    .map_err(|e| match e.sql_err() {
        Some(sea_orm::SqlErr::ForeignKeyConstraintViolation(_)) => StoreError::NotFound("client"),
        _ => StoreError::Db(e),
    })?;
    outbox::enqueue(&txn, client_id, EventType::MessageTaken, event_data(&row)).await?;
    txn.commit().await.map_err(StoreError::from)?;
    Ok(row)
}

/// The `data` of a `message.taken` event.
pub fn event_data(m: &Message) -> serde_json::Value {
    serde_json::json!({
        "message_id": m.id,
        "client_id": m.client_id,
        "call_sid": m.call_sid,
        "caller_phone": m.caller_phone,
        "caller_name": m.caller_name,
        "callback_number": m.callback_number,
        "message": m.message,
        "created_at": m.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
}

/// A client's messages, newest first, at most `limit`.
pub async fn list_messages(
    db: &DatabaseConnection,
    client_id: ClientId,
    limit: u64,
) -> Result<Vec<Message>, StoreError> {
    Ok(message::Entity::find()
        .filter(message::Column::ClientId.eq(client_id))
        .order_by_desc(message::Column::CreatedAt)
        .order_by_desc(message::Column::Id)
        .limit(limit)
        .all(db)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(message: &str, callback: Option<&str>, name: Option<&str>) -> MessageInput {
        MessageInput {
            message: message.into(),
            callback_number: callback.map(Into::into),
            caller_name: name.map(Into::into),
        }
    }

    #[test]
    fn fields_are_trimmed_and_empty_optionals_dropped() {
        let n = input("  Please call me back.  ", Some("  "), Some(" Dana ")).normalized();
        assert_eq!(
            n.unwrap(),
            input("Please call me back.", None, Some("Dana"))
        );
    }

    #[test]
    fn an_empty_or_overlong_message_is_refused_naming_the_field() {
        for bad in ["", "   ", &"x".repeat(MAX_MESSAGE_CHARS + 1)] {
            let err = input(bad, None, None).normalized().unwrap_err();
            assert!(err.to_string().starts_with("message:"), "{err}");
        }
        let ok = "é".repeat(MAX_MESSAGE_CHARS);
        assert!(input(&ok, None, None).normalized().is_ok());
        let long_name = "n".repeat(MAX_NAME_CHARS + 1);
        let err = input("hi", None, Some(&long_name))
            .normalized()
            .unwrap_err();
        assert!(err.to_string().starts_with("caller_name:"), "{err}");
    }

    #[test]
    fn callback_numbers_must_look_like_phone_numbers() {
        for ok in ["+1 (415) 555-0100", "4155550100", "020 7946 0958"] {
            let n = input("hi", Some(ok), None).normalized().unwrap();
            assert_eq!(n.callback_number.as_deref(), Some(ok));
        }
        for bad in [
            "same as this one",
            "12",
            "+1 415 555 0100 ext. 4",
            &"1".repeat(41),
        ] {
            let err = input("hi", Some(bad), None).normalized().unwrap_err();
            assert!(
                err.to_string().starts_with("callback_number:"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn tool_arguments_deserialize_with_optional_fields_absent() {
        let m: MessageInput = serde_json::from_str(r#"{"message":"call me"}"#).unwrap();
        assert_eq!(m, input("call me", None, None));
    }
}
