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
    match state
        .gateway
        .receive_webhook(provider, account.as_deref(), &bytes)
        .await
    {
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

pub async fn receive(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    handle(state, provider, None, body).await
}

pub async fn receive_for_account(
    State(state): State<AppState>,
    Path((provider, account)): Path<(String, String)>,
    body: Body,
) -> Result<Response, ApiError> {
    handle(state, provider, Some(account), body).await
}
