//! `POST /ipn/{provider}[/{account}]`: provider webhooks, authenticated by the
//! provider's signature rather than an API key.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
use crate::refunds::webhooks::{WebhookFailure, WebhookReply};
use crate::types::ProviderKind;

async fn handle(
    state: AppState,
    provider: ProviderKind,
    account: Option<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = super::read_body(body, crate::config::MAX_BODY_BYTES).await?;
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

/// A Pockyt IPN as it arrives (`application/x-www-form-urlencoded`). Pockyt
/// does not publish the refund IPN's field list; these are the fields of its
/// payment IPN and of its refund response. Every field sent is covered by
/// `verifySign`; a repeated field is refused.
#[derive(utoipa::ToSchema)]
#[schema(as = PockytIpn)]
#[allow(dead_code, non_snake_case)] // describes the wire format; the adapter reads the signed form itself
pub struct PockytIpn {
    #[schema(example = "297553638301777927")]
    transactionNo: String,
    reference: Option<String>,
    #[schema(example = "success")]
    status: String,
    amount: Option<String>,
    currency: Option<String>,
    settleCurrency: Option<String>,
    /// `YYYYMMDDHHMMSS`, UTC+8.
    time: Option<String>,
    refundTransactionNo: Option<String>,
    /// The gateway's own refund reference (how the refund is found).
    refundReference: Option<String>,
    refundAmount: Option<String>,
    /// MD5 signature over every other field (see the README).
    verifySign: String,
}

/// A Pay10 webhook as it arrives (`application/json`, not encrypted). Every
/// field is covered by `HASH` except `CARD_ISSUER_BANK`; a repeated key is
/// refused.
#[derive(utoipa::ToSchema)]
#[schema(as = Pay10Webhook)]
#[allow(dead_code, non_snake_case)] // describes the wire format; the adapter reads the hashed fields itself
pub struct Pay10Webhook {
    #[schema(example = "1009120125180122")]
    PAY_ID: String,
    ORDER_ID: Option<String>,
    PG_REF_NUM: Option<String>,
    /// The gateway's own refund id (how the refund is found).
    REFUND_ORDER_ID: Option<String>,
    /// Minor units (`050`), or a decimal with a dot.
    AMOUNT: Option<String>,
    CURRENCY_CODE: Option<String>,
    #[schema(example = "REFUND")]
    TXNTYPE: Option<String>,
    #[schema(example = "000")]
    RESPONSE_CODE: Option<String>,
    RESPONSE_MESSAGE: Option<String>,
    #[schema(example = "Captured")]
    STATUS: Option<String>,
    CARD_ISSUER_BANK: Option<String>,
    /// SHA-256 over the other fields and the salt, upper-case hex.
    HASH: String,
}

/// The answers of every webhook endpoint.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // documents the answers; `handle` produces them
pub enum IpnAnswers {
    /// Stored (or a duplicate); the body is the plain text `success`.
    #[response(status = 200, content_type = "text/plain")]
    Stored(#[to_schema] String),
    /// `malformed_webhook` (unreadable, or a repeated field).
    #[response(status = 400, content_type = "application/problem+json")]
    Malformed(super::error::Problem),
    /// `invalid_signature`: missing or invalid signature; nothing changed.
    #[response(status = 401, content_type = "application/problem+json")]
    BadSignature(super::error::Problem),
    /// `not_found`: unknown account.
    #[response(status = 404, content_type = "application/problem+json")]
    UnknownAccount(super::error::Problem),
    /// `payload_too_large`.
    #[response(status = 413, content_type = "application/problem+json")]
    TooLarge(super::error::Problem),
    /// `webhook_rejected`: transactionNo or amount does not match the refund it names; nothing changed.
    #[response(status = 422, content_type = "application/problem+json")]
    Rejected(super::error::Problem),
}

#[utoipa::path(post, path = "/ipn/pockyt",
    summary = "Pockyt's refund and payment notifications",
    description = "The `ipnUrl` to give Pockyt. The body is verified with the account's token (`verifySign`), stored once, matched to the refund it names and applied through the same rules as any provider answer. A POS never calls this.", tag = "webhooks",
    request_body(content = PockytIpn, content_type = "application/x-www-form-urlencoded"),
    responses(IpnAnswers))]
pub async fn pockyt(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    handle(state, ProviderKind::Pockyt, None, body).await
}

#[utoipa::path(post, path = "/ipn/pockyt/{account}",
    summary = "Pockyt notifications for one account",
    description = "As `/ipn/pockyt`, verified only with the named account's token (give each Pockyt account its own URL when you have several).", tag = "webhooks",
    params(("account" = String, Path, description = "Account name from the configuration")),
    request_body(content = PockytIpn, content_type = "application/x-www-form-urlencoded"),
    responses(IpnAnswers))]
pub async fn pockyt_account(
    State(state): State<AppState>,
    Path(account): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    handle(state, ProviderKind::Pockyt, Some(account), body).await
}

#[utoipa::path(post, path = "/ipn/pay10",
    summary = "Pay10's webhooks",
    description = "The webhook URL to give Pay10. The body is verified with the account's salt (`HASH`), stored once, matched to the refund it names and applied through the same rules as any provider answer. A POS never calls this.", tag = "webhooks",
    request_body(content = Pay10Webhook, content_type = "application/json"),
    responses(IpnAnswers))]
pub async fn pay10(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    handle(state, ProviderKind::Pay10, None, body).await
}

#[utoipa::path(post, path = "/ipn/pay10/{account}",
    summary = "Pay10 webhooks for one account",
    description = "As `/ipn/pay10`, verified only with the named account's salt.", tag = "webhooks",
    params(("account" = String, Path, description = "Account name from the configuration")),
    request_body(content = Pay10Webhook, content_type = "application/json"),
    responses(IpnAnswers))]
pub async fn pay10_account(
    State(state): State<AppState>,
    Path(account): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    handle(state, ProviderKind::Pay10, Some(account), body).await
}

/// `POST /ipn/{provider}`: any registered provider's webhooks (each is
/// documented above with its own body).
async fn any_provider(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let provider = ProviderKind::parse(&provider).ok_or_else(|| ApiError::not_found("provider"))?;
    handle(state, provider, None, body).await
}

/// `POST /ipn/{provider}/{account}`.
async fn any_provider_account(
    State(state): State<AppState>,
    Path((provider, account)): Path<(String, String)>,
    body: Body,
) -> Result<Response, ApiError> {
    let provider = ProviderKind::parse(&provider).ok_or_else(|| ApiError::not_found("provider"))?;
    handle(state, provider, Some(account), body).await
}

/// The providers' webhook routes: one per provider, and one per account,
/// for every provider the gateway speaks (a new connector needs no route).
pub fn routes() -> axum::Router<AppState> {
    use axum::routing::post;
    axum::Router::new()
        .route("/ipn/{provider}", post(any_provider))
        .route("/ipn/{provider}/{account}", post(any_provider_account))
}
