//! The admin API's one error type and its JSON extractor: every failure is
//! `{"error":{"code","message"}}` with the right status; 5xx causes are logged, not shown.

use axum::body::Bytes;
use axum::{
    Json,
    extract::{FromRequest, FromRequestParts, Request, rejection::BytesRejection},
    http::request::Parts,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::de::DeserializeOwned;

use crate::store::StoreError;

/// The body of every error answer (the OpenAPI document's `ErrorBody`).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// An error's code and message.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, for programs: `invalid_json`, `invalid_path`, `unauthorized`, `forbidden`,
    /// `rate_limited`,
    /// `not_found`, `conflict`, `validation_failed`, `unsupported_media_type`, `unavailable`,
    /// `internal`.
    #[schema(example = "validation_failed")]
    pub code: String,
    /// For people: names the field or the thing at fault.
    pub message: String,
}

/// An admin API failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not JSON.
    #[error("{0}")]
    BadJson(String),
    /// 400: a path segment is not what the route expects (e.g. `/clients/abc`).
    #[error("{0}")]
    BadPath(String),
    /// 401: missing or wrong token.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// 403: the principal may not do this (an operator creating a client, a session without
    /// its CSRF token).
    #[error("{0}")]
    Forbidden(String),
    /// 429: too many bad tokens from this address (`limits.admin_bad_tokens_per_minute`).
    #[error("too many requests with a bad token from this address; retry later")]
    TooManyRequests,
    /// 404.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// 409: a unique constraint.
    #[error("{0}")]
    Conflict(String),
    /// 422: a field is invalid; the message names it.
    #[error("{0}")]
    Invalid(String),
    /// 500: logged, not shown.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
    /// 503: a service the request needs (the recording store) did not answer; retry later.
    #[error("{0} is unavailable; retry later")]
    Unavailable(&'static str),
    /// 415: a body in a content type the route does not take; the message lists those it does.
    #[error("{0}")]
    UnsupportedMediaType(String),
}

impl ApiError {
    pub(crate) fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            Self::BadPath(_) => (StatusCode::BAD_REQUEST, "invalid_path"),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::TooManyRequests => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => Self::NotFound(what),
            StoreError::Conflict(msg) => Self::Conflict(msg),
            StoreError::Db(db) => Self::Internal(anyhow::Error::new(db).context("database")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let Self::Internal(cause) = &self {
            tracing::error!(error = format!("{cause:#}"), "admin API internal error");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message: self.to_string(),
            },
        };
        let mut resp = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// A JSON body whose errors name the field: syntax errors are 400, shape errors 422.
pub struct ValidJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ValidJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !is_json {
            return Err(ApiError::BadJson(
                "expected Content-Type: application/json".into(),
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e: BytesRejection| ApiError::BadJson(e.body_text()))?;
        Self::from_bytes(&bytes)
    }
}

impl<T: DeserializeOwned> ValidJson<T> {
    /// Parses a JSON body already read, with the extractor's errors (400 syntax, 422 shape).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ApiError> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        match serde_path_to_error::deserialize(de) {
            Ok(v) => Ok(Self(v)),
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner();
                if inner.is_syntax() || inner.is_eof() {
                    Err(ApiError::BadJson(format!("malformed JSON: {inner}")))
                } else if path == "." {
                    Err(ApiError::Invalid(inner.to_string()))
                } else {
                    Err(ApiError::Invalid(format!("{path}: {inner}")))
                }
            }
        }
    }
}

/// axum's `Path`, with its rejection in the API's JSON error format. (Same name, so utoipa
/// still documents the path parameters.)
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Self(v)),
            // Missing or undecodable parameters are our routes' fault, not the client's.
            Err(e) if e.status().is_server_error() => Err(ApiError::Internal(anyhow::anyhow!(
                "path extraction: {}",
                e.body_text()
            ))),
            Err(e) => Err(ApiError::BadPath(e.body_text())),
        }
    }
}
