//! A call's recording (README "Recordings"): `GET /calls/{call_sid}/recording` streams its
//! Ogg/Opus file (`Range: bytes=…` answered with 206, so a browser's `<audio>` can seek),
//! `DELETE /calls/{call_sid}/recording` removes the file and its row.

use axum::{
    body::Body,
    extract::{Extension, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, Path};
use crate::{accounts::Principal, app::AppState, recording::storage::Fault, store::recordings};

/// A call's recording, as the call record shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordingOut {
    /// `ready`; `pending` (the store refused it: it waits in the local spool and is retried);
    /// or `failed`.
    pub status: String,
    /// Length, ms.
    pub duration_ms: i64,
    /// Size of the file, bytes.
    pub size_bytes: i64,
    /// `opus`: Ogg/Opus, two channels (left the caller, right the agent as heard).
    pub codec: String,
    /// Why it failed.
    pub error: Option<String>,
    /// Where to fetch it (when ready).
    pub url: Option<String>,
}

impl From<recordings::StoredRecording> for RecordingOut {
    fn from(r: recordings::StoredRecording) -> Self {
        let ready = r.status == "ready";
        Self {
            url: ready.then(|| format!("{}/calls/{}/recording", super::BASE, r.call_sid)),
            status: r.status,
            duration_ms: r.duration_ms,
            size_bytes: r.size_bytes,
            codec: r.codec,
            error: r.error,
        }
    }
}

/// The longest piece answered to one range request (a browser asks again for the rest).
const MAX_RANGE: u64 = 8 << 20;

/// A call's recording as Ogg/Opus, whole or the byte range asked for.
#[utoipa::path(get, path = "/calls/{call_sid}/recording",
    responses((status = 200, description = "audio/ogg"), (status = 206, description = "the range asked for"),
        (status = 404, description = "no such call, or it has no recording"),
        (status = 416, description = "a range outside the file"),
        (status = 503, description = "the recording store did not answer")))]
pub async fn get_recording(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(call_sid): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let rec = recordings::get(&s.db, &call_sid)
        .await?
        .ok_or(ApiError::NotFound("recording"))?;
    super::call_visible(&who, Some(rec.client_id.get()))
        .map_err(|_| ApiError::NotFound("recording"))?;
    let Some(key) = rec.path.as_deref().filter(|_| rec.status == "ready") else {
        return Err(ApiError::NotFound("recording"));
    };
    // The object's own size (the row's is what was stored; they differ only if the store was
    // changed behind warmline's back).
    let store = s.recorder.storage();
    let len = match store.size(key).await {
        Ok(len) => len,
        Err(Fault::NotFound) => {
            tracing::warn!(
                call_sid,
                "a ready recording's object is missing from the store"
            );
            return Err(ApiError::NotFound("recording"));
        }
        Err(e) => {
            tracing::warn!(call_sid, error = %e, "the recording store could not be read");
            return Err(ApiError::Unavailable("the recording store"));
        }
    };
    if i64::try_from(len).ok() != Some(rec.size_bytes) {
        tracing::warn!(
            call_sid,
            stored = len,
            recorded = rec.size_bytes,
            "a recording's object differs in size from its row; the object is served"
        );
    }
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| parse_range(v, len));
    let (status, start, end) = match range {
        None | Some(Range::Ignored) => (StatusCode::OK, 0, len),
        Some(Range::Bytes(a, b)) => (StatusCode::PARTIAL_CONTENT, a, b.min(a + MAX_RANGE)),
        Some(Range::Unsatisfiable) => {
            return Ok((
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
            )
                .into_response());
        }
    };
    // Streamed from the store: a long recording is never read into memory whole.
    let stream = if end > start {
        match store.get_range(key, start..end).await {
            Ok(stream) => stream,
            Err(Fault::NotFound) => return Err(ApiError::NotFound("recording")),
            Err(e) => {
                tracing::warn!(call_sid, error = %e, "the recording store could not be read");
                return Err(ApiError::Unavailable("the recording store"));
            }
        }
    } else {
        Box::pin(futures_util::stream::empty())
    };
    let body = Body::from_stream(stream);
    let mut response = (
        status,
        [
            (header::CONTENT_TYPE, "audio/ogg".to_string()),
            (header::ACCEPT_RANGES, "bytes".to_string()),
            (header::CONTENT_LENGTH, (end - start).to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("inline; filename=\"{call_sid}.ogg\""),
            ),
        ],
        body,
    )
        .into_response();
    if status == StatusCode::PARTIAL_CONTENT {
        response.headers_mut().insert(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{len}", end - 1)
                .parse()
                .expect("a valid header value"),
        );
    }
    Ok(response)
}

/// Delete a call's recording: its file and its row.
#[utoipa::path(delete, path = "/calls/{call_sid}/recording",
    responses((status = 204), (status = 404, description = "no recording")))]
pub async fn delete_recording(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(call_sid): Path<String>,
) -> Result<StatusCode, ApiError> {
    let rec = recordings::get(&s.db, &call_sid)
        .await?
        .ok_or(ApiError::NotFound("recording"))?;
    super::call_visible(&who, Some(rec.client_id.get()))
        .map_err(|_| ApiError::NotFound("recording"))?;
    // The row first: a failure to remove the file then leaves no row pointing at nothing
    // (and the file is retried by nobody: it is logged).
    recordings::delete(&s.db, &call_sid).await?;
    if let Some(key) = rec.path {
        s.recorder.remove_files(&[key]).await;
    }
    tracing::info!(call_sid, by = who.who(), "recording deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// A `Range` header against a file of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
enum Range {
    /// `[start, end)`.
    Bytes(u64, u64),
    /// Outside the file: 416.
    Unsatisfiable,
    /// Not one byte range (another unit, several ranges, garbage): the whole file, as RFC 9110
    /// §14.2 lets a server do.
    Ignored,
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n` (RFC 9110 §14.1.2).
fn parse_range(v: &str, len: u64) -> Range {
    let v = v.trim();
    let Some(spec) = v
        .get(..6)
        .filter(|unit| unit.eq_ignore_ascii_case("bytes="))
        .map(|_| &v[6..])
    else {
        return Range::Ignored;
    };
    if spec.contains(',') {
        return Range::Ignored;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Range::Ignored;
    };
    let num = |s: &str| s.trim().parse::<u64>().ok();
    match (a.trim().is_empty(), num(a), num(b)) {
        // The last n bytes.
        (true, _, Some(n)) if n > 0 && len > 0 => Range::Bytes(len.saturating_sub(n), len),
        (true, _, Some(_)) => Range::Unsatisfiable,
        (true, _, None) => Range::Ignored,
        (false, Some(a), _) if a >= len => Range::Unsatisfiable,
        (false, Some(a), None) if b.trim().is_empty() => Range::Bytes(a, len),
        (false, Some(a), Some(b)) if b >= a => Range::Bytes(a, (b + 1).min(len)),
        _ => Range::Ignored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_ranges_are_read_like_rfc_9110() {
        assert_eq!(parse_range("bytes=0-99", 1000), Range::Bytes(0, 100));
        assert_eq!(parse_range("bytes=900-", 1000), Range::Bytes(900, 1000));
        assert_eq!(parse_range("bytes=-100", 1000), Range::Bytes(900, 1000));
        assert_eq!(parse_range("bytes=500-5000", 1000), Range::Bytes(500, 1000));
        assert_eq!(parse_range("bytes=1000-", 1000), Range::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 1000), Range::Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 1000), Range::Ignored);
        assert_eq!(parse_range("bytes=0-1,5-9", 1000), Range::Ignored);
        assert_eq!(parse_range("items=0-1", 1000), Range::Ignored);
        assert_eq!(parse_range("bytes=x-y", 1000), Range::Ignored);
        assert_eq!(parse_range("Bytes=0-9", 1000), Range::Bytes(0, 10));
        assert_eq!(parse_range("bytes=-", 1000), Range::Ignored);
        assert_eq!(parse_range("bytes=-abc", 1000), Range::Ignored);
    }
}
