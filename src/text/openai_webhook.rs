//! OpenAI's webhook (README "Text channels", "Background answers"): `POST /webhooks/openai`,
//! where the project's webhook in the OpenAI dashboard points, announces background responses
//! (`response.completed`, `response.failed`, `response.incomplete`, `response.cancelled`; the
//! event `{id, object: "event", created_at, type, data: {id}}`, openai/openai-python
//! `src/openai/types/webhooks/`).
//!
//! It is signed Standard Webhooks style with `openai.webhook_secret` (`whsec_…`): `webhook-id`,
//! `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>` over `id.timestamp.body`,
//! the timestamp within 300 s (`crate::webhooks::signing::verify`, shared with the webhooks
//! warmline sends). A bad or missing signature or a timestamp out of tolerance is 401 and
//! changes nothing; an event id seen before (a replay, or OpenAI sending again an event whose
//! answer it missed) is acknowledged (200, `duplicate: true`) and not acted on again. A good event ends the wait of its
//! response at once (`TextAgent::response_done`); the response itself is then read with
//! `GET /v1/responses/{id}` (the event carries only its id). Without a secret the route answers
//! 404 and background responses are polled.

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use serde_json::{Value, json};

use crate::{
    app::AppState,
    webhooks::signing::{self, WebhookSecret},
};

/// The route.
pub fn router() -> Router<AppState> {
    Router::new().route("/webhooks/openai", post(receive))
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

/// `POST /webhooks/openai`.
async fn receive(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let secret = &state.settings.openai.webhook_secret;
    if secret.is_empty() {
        return answer(
            StatusCode::NOT_FOUND,
            json!({"error": "no openai.webhook_secret is set: background responses are polled"}),
        );
    }
    let Ok(secret) = WebhookSecret::parse(secret.expose()) else {
        // Checked at start; kept for safety.
        return answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": "openai.webhook_secret is not a signing secret"}),
        );
    };
    let now = chrono::Utc::now().timestamp();
    if let Err(e) = signing::verify(&secret, &headers, &body, now) {
        tracing::warn!(reason = %e, "openai webhook refused");
        return answer(
            StatusCode::UNAUTHORIZED,
            json!({"error": format!("refused: {e}")}),
        );
    }
    // The id as the check read it (trimmed).
    let event_id = headers
        .get(signing::HEADER_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or_default();
    if !state.text.first_event(event_id) {
        // Acknowledged (OpenAI sends an event again when it missed our answer) and not acted on.
        tracing::info!(event = %event_id.chars().take(80).collect::<String>(), "openai webhook: an event already received; not acted on again");
        return answer(StatusCode::OK, json!({"ok": true, "duplicate": true}));
    }
    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let kind = event["type"].as_str().unwrap_or_default();
    let response = event.pointer("/data/id").and_then(Value::as_str);
    match (kind, response) {
        (
            "response.completed" | "response.failed" | "response.incomplete" | "response.cancelled",
            Some(id),
        ) => {
            tracing::debug!(kind, response = %id, "openai webhook: a background response is done");
            state.text.response_done(id);
        }
        _ => {
            tracing::info!(kind = %kind.chars().take(60).collect::<String>(), "openai webhook: an event warmline does not use; acknowledged");
        }
    }
    answer(StatusCode::OK, json!({"ok": true}))
}
