//! Liveness and readiness.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::{ApiError, AppState};

#[utoipa::path(get, path = "/healthz",
    summary = "Is the process up",
    description = "Answers 200 while the process runs. Use it as a liveness probe; it does not touch the database.", tag = "operations",
    responses((status = 200, description = "The process is up", body = Object, example = json!({"status": "ok"}))))]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when the database answers within two seconds.
#[utoipa::path(get, path = "/readyz",
    summary = "Can the gateway take refunds now",
    description = "200 when the database answers and takes a write within two seconds; 503 `database_unavailable` with `Retry-After` otherwise (unreachable, or its disk full). Use it as a readiness probe: route POS traffic elsewhere while it is 503.", tag = "operations",
    responses(
        (status = 200, description = "The database is reachable and takes writes", body = Object, example = json!({"status": "ready", "database": "postgres"})),
        (status = 503, description = "`database_unavailable`", body = super::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    match tokio::time::timeout(Duration::from_secs(2), state.gateway.database_ready()).await {
        Ok(Ok(backend)) => Ok(Json(json!({ "status": "ready", "database": backend }))),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness check: the database cannot take work");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "the database is unreachable or cannot take writes (is its disk full?)",
            )
            .retry_after(2))
        }
        Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            "the database did not answer in time",
        )),
    }
}

/// Liveness and readiness.
pub fn routes() -> axum::Router<AppState> {
    use axum::routing::get;
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}
