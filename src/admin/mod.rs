//! The admin REST API under `/admin/api/v1` (Bearer `admin.token`; off when the token is empty).

use axum::Router;

use crate::app::AppState;

/// The admin routes; empty when `admin.token` is not set.
pub fn router(_state: &AppState) -> Router<AppState> {
    Router::new()
}
