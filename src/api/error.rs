//! One API error type, rendered as RFC 9457 problem+json.

use std::collections::BTreeMap;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::refunds::Refusal;
use crate::store::StoreError;

/// The refusals of every POS endpoint that takes a client key.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // documents the answers; the key check produces them
pub enum PosKeyRefusals {
    /// `unauthorized`
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthorized(Problem),
    /// `wrong_key_role`: a valid operator key; the POS API needs a client key
    #[response(status = 403, content_type = "application/problem+json")]
    WrongKeyRole(Problem),
}

/// The refusals of every operator endpoint.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // documents the answers; the key check produces them
pub enum OperatorKeyRefusals {
    /// `unauthorized`
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthorized(Problem),
    /// `wrong_key_role`: a valid POS key; operator routes need an operator key
    #[response(status = 403, content_type = "application/problem+json")]
    WrongKeyRole(Problem),
}

/// An RFC 9457 problem document. `code` is stable and machine-readable.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"type": "https://refund-gateway.dev/problems/amount-exceeds-refundable", "title": "Unprocessable Entity", "status": 422, "detail": "the refund exceeds the refundable amount (6.00 USD left)", "code": "amount_exceeds_refundable"}))]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub code: String,
    /// Field validation errors, by field name (only on `invalid_request`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<BTreeMap<String, Vec<String>>>,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub errors: Option<BTreeMap<String, Vec<String>>>,
    /// Seconds after which the same request may succeed (`Retry-After`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            errors: None,
            retry_after: None,
        }
    }

    /// Adds a `Retry-After` header of `secs` seconds (at least 1).
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }

    pub fn validation(errors: BTreeMap<String, Vec<String>>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_request",
            detail: "some fields are invalid; see errors".into(),
            errors: Some(errors),
            retry_after: None,
        }
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid API key is required: Authorization: Bearer <key>",
        )
    }

    /// A valid key on an API its role does not reach: 403, saying which role
    /// the key has and where it belongs.
    pub fn wrong_role(detail: String) -> Self {
        Self::new(StatusCode::FORBIDDEN, "wrong_key_role", detail)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "an internal error occurred; it has been logged",
        )
    }

    pub fn database_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            "the database is unavailable; retry with the same Idempotency-Key",
        )
        .retry_after(2)
    }

    pub fn problem(&self) -> Problem {
        Problem {
            kind: format!(
                "https://refund-gateway.dev/problems/{}",
                self.code.replace('_', "-")
            ),
            title: self
                .status
                .canonical_reason()
                .unwrap_or("Error")
                .to_string(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            code: self.code.to_string(),
            errors: self.errors.clone(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut res = (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        res
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "database unavailable");
            ApiError::database_unavailable()
        } else {
            tracing::error!(error = %e, "database error");
            ApiError::internal()
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
        match r {
            Refusal::TransactionNotFound => {
                ApiError::new(unprocessable, "transaction_not_found", r.to_string())
            }
            Refusal::NotRefundable(_) => {
                ApiError::new(unprocessable, "transaction_not_refundable", r.to_string())
            }
            Refusal::CurrencyMismatch { .. } => {
                ApiError::new(unprocessable, "currency_mismatch", r.to_string())
            }
            Refusal::SettleCurrencyMismatch { .. } => {
                ApiError::new(unprocessable, "settle_currency_mismatch", r.to_string())
            }
            Refusal::ExceedsRefundable { .. } => {
                ApiError::new(unprocessable, "amount_exceeds_refundable", r.to_string())
            }
            Refusal::ProviderNotConfigured(_) => {
                ApiError::new(unprocessable, "provider_not_configured", r.to_string())
            }
            Refusal::ProviderUnavailable => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "provider_unavailable",
                r.to_string(),
            ),
            Refusal::Store(e) => e.into(),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", r.body_text())
    }
}
