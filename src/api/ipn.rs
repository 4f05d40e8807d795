//! `POST /ipn/{provider}[/{account}]`: provider webhooks, authenticated by the
//! provider's signature rather than an API key.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
use crate::providers::ProviderKind;
use crate::refunds::webhooks::{WebhookFailure, WebhookReply};

async fn handle(
    state: AppState,
    provider: String,
    account: Option<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let provider = ProviderKind::parse(&provider).ok_or_else(|| ApiError::not_found("provider"))?;
    let bytes = super::read_body(body, super::refunds::MAX_BODY_BYTES).await?;
    let result = state
        .gateway
        .receive_webhook(provider, account.as_deref(), &bytes)
        .await;
    crate::metrics::webhook(
        provider.as_str(),
        match &result {
            Ok(WebhookReply::Accepted) => "accepted",
            Ok(WebhookReply::Duplicate) => "duplicate",
            Ok(WebhookReply::Rejected(_)) => "rejected",
            Err(WebhookFailure::BadSignature) => "invalid_signature",
            Err(WebhookFailure::Malformed) => "malformed",
            Err(WebhookFailure::UnknownAccount) => "unknown_account",
            Err(WebhookFailure::Store(_)) => "error",
        },
    );
    match result {
        // Pockyt stops resending once it reads the plain-text body `success`.
        Ok(WebhookReply::Accepted | WebhookReply::Duplicate) => Ok((
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "success",
        )
            .into_response()),
        Ok(WebhookReply::Rejected(reason)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "webhook_rejected",
            reason,
        )),
        Err(WebhookFailure::BadSignature) => {
            tracing::warn!(%provider, "webhook with a missing or invalid signature refused");
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_signature",
                "the webhook signature is missing or invalid",
            ))
        }
        Err(WebhookFailure::Malformed) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_webhook",
            "the webhook body could not be read",
        )),
        Err(WebhookFailure::UnknownAccount) => Err(ApiError::not_found("provider account")),
        Err(WebhookFailure::Store(e)) => Err(e.into()),
    }
}

#[utoipa::path(
    post,
    path = "/ipn/{provider}",
    tag = "webhooks",
    params(("provider" = String, Path, description = "`pockyt` or `pay10`")),
    request_body(description = "Pockyt: form-urlencoded IPN with `verifySign`. Pay10: JSON with `HASH`.", content(
        (String = "application/x-www-form-urlencoded"), (Object = "application/json"))),
    responses(
        (status = 200, description = "Stored (or a duplicate); the body is the plain text `success`", body = String, content_type = "text/plain"),
        (status = 400, description = "`malformed_webhook`", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "`invalid_signature`: missing or invalid signature; nothing changed", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`: unknown provider or account", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`webhook_rejected`: transactionNo or amount does not match the refund; nothing changed", body = super::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn receive(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    handle(state, provider, None, body).await
}

#[utoipa::path(
    post,
    path = "/ipn/{provider}/{account}",
    tag = "webhooks",
    params(("provider" = String, Path, description = "`pockyt` or `pay10`"), ("account" = String, Path, description = "Account name from the configuration")),
    request_body(description = "Pockyt: form-urlencoded IPN with `verifySign`. Pay10: JSON with `HASH`.", content(
        (String = "application/x-www-form-urlencoded"), (Object = "application/json"))),
    responses(
        (status = 200, description = "Stored (or a duplicate); the body is the plain text `success`", body = String, content_type = "text/plain"),
        (status = 400, description = "`malformed_webhook`", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "`invalid_signature`: missing or invalid signature; nothing changed", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`: unknown provider or account", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`webhook_rejected`: transactionNo or amount does not match the refund; nothing changed", body = super::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn receive_for_account(
    State(state): State<AppState>,
    Path((provider, account)): Path<(String, String)>,
    body: Body,
) -> Result<Response, ApiError> {
    handle(state, provider, Some(account), body).await
}
