//! A client's cached greeting (README "Greetings: cached, generated, auto"):
//! `GET /clients/{id}/greeting` (its state as JSON; the audio as WAV with `?format=wav` or
//! `Accept: audio/wav`), `POST /clients/{id}/greeting/refresh` (generate it again now, in the
//! background), `DELETE /clients/{id}/greeting` (forget it: the next call fills it anew).

use axum::{
    Json,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    BASE,
    error::{ApiError, Path},
};
use crate::{
    app::AppState,
    domain::{CallerTrust, ClientId},
    greeting::{self, GreetingKey, GreetingMode, Refresh, wav},
    realtime::profile::AgentProfile,
    store::{clients, greetings},
};

/// A client's cached greeting.
#[derive(Debug, Serialize, ToSchema)]
pub struct GreetingOut {
    /// The client's `greeting_mode`.
    pub mode: String,
    /// `ready` (kept for the greeting as it is now), `stale` (kept for an earlier greeting
    /// text, voice, model or language: the next call generates and keeps a new one) or `none`.
    pub status: String,
    /// The key of the greeting as it is now (hash of text, voice, model, language).
    pub key: String,
    /// What the cached greeting says.
    pub transcript: Option<String>,
    /// Its length.
    pub duration_ms: Option<u64>,
    /// Its audio's size (μ-law 8 kHz, one byte a sample).
    pub size_bytes: Option<u64>,
    /// `call` (kept from a call's greeting) or `refresh`.
    pub source: Option<String>,
    /// When it was kept.
    pub created_at: Option<DateTime<Utc>>,
    /// Where its WAV file is (absent with none).
    pub wav_url: Option<String>,
    /// The last refresh asked for: `running`, `failed` (with `refresh_error`) or absent.
    pub refresh: Option<String>,
    /// Why the last refresh failed.
    pub refresh_error: Option<String>,
}

/// `?format=wav` asks for the audio.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Format {
    /// `json` (default) or `wav`.
    #[serde(default)]
    pub format: Option<String>,
}

/// The key of `client`'s greeting as it is now.
fn key_of(s: &AppState, client: &clients::ClientProfile) -> GreetingKey {
    GreetingKey::new(
        &client.client.greeting,
        &client.client.voice,
        &s.settings.openai.model,
        &client.client.language,
    )
}

/// The client's cached greeting: its state, or (`?format=wav`, `Accept: audio/wav`) its audio.
#[utoipa::path(get, path = "/clients/{id}/greeting",
    params(("id" = i32, Path), Format),
    responses((status = 200, body = GreetingOut, description = "JSON, or audio/wav when asked"),
        (status = 404, description = "no such client, or no greeting kept (WAV)")))]
pub async fn get_greeting(
    State(s): State<AppState>,
    Path(id): Path<ClientId>,
    Query(format): Query<Format>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let client = clients::get_client(&s.db, id).await?;
    let wants_wav = match format.format.as_deref() {
        Some("wav") => true,
        None | Some("json") => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("audio/wav") || a.contains("audio/x-wav")),
        Some(other) => {
            return Err(ApiError::Invalid(format!(
                "format: unknown format {other:?} (json or wav)"
            )));
        }
    };
    if wants_wav {
        let Some(g) = greetings::get(&s.db, id).await? else {
            return Err(ApiError::NotFound("greeting"));
        };
        return Ok((
            [
                (header::CONTENT_TYPE, "audio/wav".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"greeting-{}.wav\"", id.get()),
                ),
            ],
            wav::mulaw(&g.audio),
        )
            .into_response());
    }
    let stored = greetings::summary(&s.db, id).await?;
    let key = key_of(&s, &client);
    let (refresh, refresh_error) = match s.greetings.refresh_state(id) {
        Some(Refresh::Running) => (Some("running".to_string()), None),
        Some(Refresh::Failed(why)) => (Some("failed".to_string()), Some(why)),
        None => (None, None),
    };
    let out = GreetingOut {
        mode: GreetingMode::from_stored(client.client.greeting_mode.as_deref())
            .as_str()
            .to_string(),
        status: match &stored {
            Some(g) if g.key == key.as_str() => "ready",
            Some(_) => "stale",
            None => "none",
        }
        .to_string(),
        key: key.as_str().to_string(),
        transcript: stored.as_ref().map(|g| g.transcript.clone()),
        duration_ms: stored.as_ref().map(|g| g.duration_ms.max(0) as u64),
        size_bytes: stored.as_ref().map(|g| g.size_bytes.max(0) as u64),
        source: stored.as_ref().map(|g| g.source.clone()),
        created_at: stored.as_ref().map(|g| g.created_at),
        wav_url: stored
            .as_ref()
            .map(|_| format!("{BASE}/clients/{}/greeting?format=wav", id.get())),
        refresh,
        refresh_error,
    };
    Ok(Json(out).into_response())
}

/// What a refresh request was told.
#[derive(Debug, Serialize, ToSchema)]
pub struct RefreshOut {
    /// `started`, or `running` (one was already under way).
    pub refresh: String,
}

/// Generates the client's greeting again now, in the background, and keeps it (its state:
/// `GET …/greeting`, field `refresh`).
#[utoipa::path(post, path = "/clients/{id}/greeting/refresh",
    params(("id" = i32, Path)),
    responses((status = 202, body = RefreshOut), (status = 404)))]
pub async fn refresh_greeting(
    State(s): State<AppState>,
    Path(id): Path<ClientId>,
) -> Result<(StatusCode, Json<RefreshOut>), ApiError> {
    let client = clients::get_client(&s.db, id).await?;
    if !s.greetings.start_refresh(id) {
        return Ok((
            StatusCode::ACCEPTED,
            Json(RefreshOut {
                refresh: "running".into(),
            }),
        ));
    }
    let key = key_of(&s, &client);
    // The greeting every caller hears: nobody's memory, nothing personal.
    let profile = AgentProfile::new(&client, None, CallerTrust::Verified, false);
    let state = s.clone();
    tracing::info!(client_id = id.get(), "greeting refresh started");
    s.tasks.spawn(async move {
        // Shutdown does not wait for it.
        let generated = tokio::select! {
            g = greeting::refresh::generate(&state.settings, &profile, &key, &state.metrics) => g,
            _ = state.shutdown.cancelled() => Err("shut down before it was done".into()),
        };
        let kept = match generated {
            Ok(stored) => greeting::keep(&state.db, &state.greetings, id, stored)
                .await
                .map(|g| g.duration().as_millis() as u64)
                .map_err(|e| format!("could not store it: {e}")),
            Err(why) => Err(why),
        };
        match kept {
            Ok(duration_ms) => {
                tracing::info!(client_id = id.get(), duration_ms, "greeting refreshed");
                state.greetings.end_refresh(id, None);
            }
            Err(why) => {
                tracing::warn!(client_id = id.get(), error = %why, "greeting refresh failed");
                state.greetings.end_refresh(id, Some(why));
            }
        }
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(RefreshOut {
            refresh: "started".into(),
        }),
    ))
}

/// Forgets the client's cached greeting: the next call generates it (and keeps it again).
#[utoipa::path(delete, path = "/clients/{id}/greeting",
    params(("id" = i32, Path)), responses((status = 204), (status = 404)))]
pub async fn delete_greeting(
    State(s): State<AppState>,
    Path(id): Path<ClientId>,
) -> Result<StatusCode, ApiError> {
    clients::get_client(&s.db, id).await?;
    let had = greetings::delete(&s.db, id).await?;
    s.greetings.forget(id);
    if !had {
        return Err(ApiError::NotFound("greeting"));
    }
    tracing::info!(client_id = id.get(), "cached greeting deleted");
    Ok(StatusCode::NO_CONTENT)
}
