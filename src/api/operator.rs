//! `/v1/operator/...`: a way out for refunds that need a person. Operators
//! authenticate with their own keys (`[[operators]]` in the config); every
//! action is recorded in the refund's history with who, when, what and why.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::parse::Text;
use super::refunds::{events_json, RefundEvents};
use super::{ApiError, AppState, OperatorAuthed};
use crate::refunds::{Applied, RefundObject};
use crate::store::Status;

/// A refund as an operator sees it: the refund object, and whose it is.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct OperatorRefundObject {
    #[serde(flatten)]
    pub refund: RefundObject,
    /// The POS client that made it (`[[clients]]` name).
    pub client: String,
    /// The provider account it went through (`[[accounts]]` name).
    pub account: String,
}

impl OperatorRefundObject {
    pub fn of(state: &AppState, row: &crate::store::RefundRow) -> Self {
        OperatorRefundObject {
            refund: state.gateway.render(row),
            client: row.client.clone(),
            account: row.account.clone(),
        }
    }
}

/// Every client's refunds, for operators.
#[derive(Serialize, utoipa::ToSchema)]
pub struct OperatorRefundList {
    /// Always `list`.
    #[schema(value_type = String, example = "list")]
    pub object: &'static str,
    /// Newest first.
    pub data: Vec<OperatorRefundObject>,
    pub has_more: bool,
}

/// The review queue: refunds flagged for review or pending too long.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ReviewQueue {
    /// Always `list`.
    #[schema(value_type = String, example = "list")]
    pub object: &'static str,
    /// Newest first; each carries its `review_reason`, its client and account.
    pub data: Vec<OperatorRefundObject>,
    /// Refunds the daily reconciliation found at the provider only (made in
    /// its dashboard or by another system), newest first, at most 100: each
    /// counts against its sale.
    pub outside_refunds: Vec<OutsideRefundObject>,
}

/// A refund the provider made that the gateway did not.
#[derive(Serialize, utoipa::ToSchema)]
pub struct OutsideRefundObject {
    pub account: String,
    #[schema(example = "pockyt")]
    pub provider: String,
    /// The refunded sale.
    pub transaction_no: String,
    pub provider_refund_id: String,
    pub provider_reference: Option<String>,
    /// Decimal, in the currency's digits.
    #[schema(example = "1.00")]
    pub amount: String,
    #[schema(example = "USD")]
    pub currency: String,
    pub provider_status: Option<String>,
    /// The report (`rec_...`) that found it.
    pub found_in: String,
    pub found_at: String,
    pub review_reason: Option<String>,
}

impl From<crate::store::OutsideRefund> for OutsideRefundObject {
    fn from(o: crate::store::OutsideRefund) -> Self {
        let amount = crate::money::Currency::from_code(&o.currency)
            .ok()
            .and_then(|c| Some(c.format(crate::money::Minor::new(o.amount_minor)?)))
            .unwrap_or_else(|| o.amount_minor.to_string());
        OutsideRefundObject {
            account: o.account,
            provider: o.provider,
            transaction_no: o.transaction_no,
            provider_refund_id: o.provider_refund_id,
            provider_reference: o.provider_reference,
            amount,
            currency: o.currency,
            provider_status: o.provider_status,
            found_in: o.found_in,
            found_at: o.found_at.rfc3339_ms(),
            review_reason: o.review_reason,
        }
    }
}

#[utoipa::path(
    get,
    path = "/v1/operator/review",
    summary = "The review queue",
    description = "Refunds that need a person, every client's, newest first: flagged ones (with their `review_reason`) and ones pending longer than `review_after_ms`. Operator key only.",
    operation_id = "operator_review",
    tag = "operator",
    responses(
        (status = 200, description = "Refunds that need a person (every client's), newest first, at most 100", body = ReviewQueue),
        (status = 401, description = "`unauthorized`: not an operator key", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "`wrong_key_role`: a valid POS key; operator routes need an operator key", body = super::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn review(
    State(state): State<AppState>,
    OperatorAuthed(_operator): OperatorAuthed,
) -> Result<Json<ReviewQueue>, ApiError> {
    let rows = state.gateway.review_queue(100).await?;
    let outside = state
        .gateway
        .store
        .reconciliations()
        .outside_refunds(None, 100)
        .await?;
    Ok(Json(ReviewQueue {
        object: "list",
        data: rows
            .iter()
            .map(|r| OperatorRefundObject::of(&state, r))
            .collect(),
        outside_refunds: outside.into_iter().map(Into::into).collect(),
    }))
}

#[utoipa::path(
    get,
    path = "/v1/operator/refunds/{id}/events",
    summary = "A refund's history, for an operator",
    description = "Every change of the refund, oldest first, with its source, the provider's code, the operator and note where an operator acted. Any client's refund. Operator key only.",
    operation_id = "operator_refund_events",
    tag = "operator",
    params(("id" = String, Path, description = "Refund id")),
    responses(
        (status = 200, description = "Every change of the refund, in order", body = RefundEvents),
        super::error::OperatorKeyRefusals,
        (status = 404, description = "`not_found`", body = super::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn events(
    State(state): State<AppState>,
    OperatorAuthed(_operator): OperatorAuthed,
    Path(id): Path<String>,
) -> Result<Json<RefundEvents>, ApiError> {
    let id = super::parse::refund_id(&id)?;
    let events = state
        .gateway
        .history(None, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("refund"))?;
    Ok(Json(events_json(events)))
}

#[utoipa::path(
    post,
    path = "/v1/operator/refunds/{id}/sync",
    summary = "Ask the provider about a refund now",
    description = "Queries the provider and applies its answer like any status query; the operator's name goes into the history. Operator key only.",
    operation_id = "operator_sync",
    tag = "operator",
    params(("id" = String, Path, description = "Refund id")),
    responses(
        (status = 200, description = "The provider was asked now; its answer is applied and recorded with the operator's name", body = RefundObject),
        super::error::OperatorKeyRefusals,
        (status = 404, description = "`not_found`", body = super::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn sync(
    State(state): State<AppState>,
    OperatorAuthed(op): OperatorAuthed,
    Path(id): Path<String>,
) -> Result<Json<RefundObject>, ApiError> {
    let id = super::parse::refund_id(&id)?;
    let row = state
        .gateway
        .operator_sync(&id, &op.name)
        .await?
        .ok_or_else(|| ApiError::not_found("refund"))?;
    Ok(Json(state.gateway.render(&row)))
}

/// An operator's resolution: the status the provider's records prove, and why.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveBody {
    /// `succeeded` or `failed` (never back to `pending`).
    #[schema(value_type = String, pattern = "^(succeeded|failed)$")]
    pub status: FinalStatus,
    /// Why: what the operator checked (required, 1-1000 characters).
    #[schema(value_type = String, min_length = 1, max_length = 1000)]
    pub note: Text<1000>,
}

/// The statuses an operator may resolve a refund to.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinalStatus {
    Succeeded,
    Failed,
}

#[utoipa::path(
    post,
    path = "/v1/operator/refunds/{id}/resolve",
    summary = "Resolve a refund that needs a person",
    description = "Sets a pending refund to `succeeded` or `failed`, or clears the flag of a final one, only when the provider's records prove it: the provider is asked first. A `failed` resolution waits until the provider can no longer be processing the refund (409 with the time and `Retry-After` before then). The note, the operator and the provider's answer go into the history. Operator key only.",
    operation_id = "operator_resolve",
    tag = "operator",
    params(("id" = String, Path, description = "Refund id")),
    request_body(content = ResolveBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Resolved; the provider's answer, the operator and the note are in the refund's history", body = RefundObject),
        (status = 400, description = "`invalid_request` (with `errors`) or `malformed_json`", body = super::error::Problem, content_type = "application/problem+json"),
        super::error::OperatorKeyRefusals,
        (status = 404, description = "`not_found`", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`resolution_refused`: the provider, asked now, does not confirm it, or the refund is already final", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 415, description = "`unsupported_media_type`: send application/json", body = super::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn resolve(
    State(state): State<AppState>,
    OperatorAuthed(op): OperatorAuthed,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<Json<RefundObject>, ApiError> {
    super::require_json(&headers)?;
    let bytes = super::read_body(body, 16 * 1024).await?;
    let req: ResolveBody = super::parse::json(&bytes)?;
    let target = match req.status {
        FinalStatus::Succeeded => Status::Succeeded,
        FinalStatus::Failed => Status::Failed,
    };
    let note = req.note.0.trim();
    let id = super::parse::refund_id(&id)?;
    match state.gateway.resolve(&id, &op.name, target, note).await? {
        None => Err(ApiError::not_found("refund")),
        Some(Applied::Changed(c)) => Ok(Json(state.gateway.render(c.after()))),
        Some(Applied::Unchanged(row)) => Ok(Json(state.gateway.render(&row))),
        Some(Applied::Refused(e)) => {
            tracing::warn!(refund_id = %id, operator = %op.name, reason = %e, "operator resolution refused");
            let mut err = ApiError::new(StatusCode::CONFLICT, "resolution_refused", e.to_string());
            if let Some(secs) = e.retry_after_secs() {
                err = err.retry_after(secs);
            }
            Err(err)
        }
    }
}

/// `client` and `account` (the operator's own filters) out of a query; the
/// rest is the POS list's query, parsed by its own rules.
#[allow(clippy::type_complexity)]
fn split_owner_filters(raw: &str) -> Result<(Option<String>, Option<String>, String), ApiError> {
    let (mut client, mut account) = (None, None);
    let mut rest = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
        let slot = match k.as_ref() {
            "client" => &mut client,
            "account" => &mut account,
            _ => {
                rest.append_pair(&k, &v);
                continue;
            }
        };
        if slot.replace(v.trim().to_string()).is_some() || v.len() > 100 || v.contains('\0') {
            return Err(ApiError::validation(std::collections::BTreeMap::from([(
                k.to_string(),
                vec!["must be given once, at most 100 characters, no NUL".to_string()],
            )])));
        }
    }
    Ok((client, account, rest.finish()))
}

#[utoipa::path(
    get,
    path = "/v1/operator/refunds",
    summary = "Find refunds (every client's)",
    description = "Every filter of `GET /v1/refunds` (`transaction_no`, `reference`, `refund_reference`, `status`, `provider`, `created_from`, `created_to`, `needs_review`, `limit`, `starting_after`), plus `client` and `account`; newest first, the same pagination. Each refund carries its `client` and `account`. Operator key only.",
    operation_id = "operator_refunds",
    tag = "operator",
    params(
        ("client" = Option<String>, Query, description = "Only this POS client's refunds"),
        ("account" = Option<String>, Query, description = "Only refunds through this provider account"),
        super::refunds::ListQuery
    ),
    responses(
        (status = 200, description = "Refunds, newest first", body = OperatorRefundList),
        (status = 400, description = "`invalid_request` (with `errors`)", body = super::error::Problem, content_type = "application/problem+json"),
        super::error::OperatorKeyRefusals,
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    OperatorAuthed(_operator): OperatorAuthed,
    RawQuery(raw): RawQuery,
) -> Result<Json<OperatorRefundList>, ApiError> {
    let (client, account, rest) = split_owner_filters(raw.as_deref().unwrap_or(""))?;
    let q: super::refunds::ListQuery = super::parse::query(Some(&rest))?;
    let after = match q.starting_after() {
        None => None,
        Some(id) => match state
            .gateway
            .store
            .get_refund_any_client(id.as_str())
            .await?
        {
            Some(r) => Some((r.created_at, r.id)),
            None => {
                return Err(ApiError::validation(std::collections::BTreeMap::from([(
                    "starting_after".to_string(),
                    vec!["is not the id of a refund".to_string()],
                )])))
            }
        },
    };
    let filter = q.into_filter(&state, after, account);
    let limit = filter.limit;
    let mut rows = state
        .gateway
        .store
        .list_refunds(client.as_deref(), &filter)
        .await?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(20));
    Ok(Json(OperatorRefundList {
        object: "list",
        data: rows
            .iter()
            .map(|r| OperatorRefundObject::of(&state, r))
            .collect(),
        has_more,
    }))
}

#[utoipa::path(
    get,
    path = "/v1/operator/refunds/{id}",
    summary = "One refund (any client's)",
    description = "The refund, rendered as every endpoint renders it, with its `client` and `account`. Operator key only.",
    operation_id = "operator_refund",
    tag = "operator",
    params(("id" = String, Path, description = "Refund id")),
    responses(
        (status = 200, description = "The refund", body = OperatorRefundObject),
        super::error::OperatorKeyRefusals,
        (status = 404, description = "`not_found`", body = super::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get_one(
    State(state): State<AppState>,
    OperatorAuthed(_operator): OperatorAuthed,
    Path(id): Path<String>,
) -> Result<Json<OperatorRefundObject>, ApiError> {
    let id = super::parse::refund_id(&id)?;
    let row = state
        .gateway
        .store
        .get_refund_any_client(id.as_str())
        .await?
        .ok_or_else(|| ApiError::not_found("refund"))?;
    Ok(Json(OperatorRefundObject::of(&state, &row)))
}

/// What an operator found when looking at a refund made elsewhere.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcknowledgeBody {
    /// What you checked (required, 1-1000 characters).
    #[schema(value_type = String, min_length = 1, max_length = 1000)]
    pub note: Text<1000>,
}

#[utoipa::path(
    post,
    path = "/v1/operator/outside-refunds/{account}/{provider_refund_id}/acknowledge",
    summary = "Acknowledge a refund made elsewhere",
    description = "A refund the reconciliation found at the provider only leaves the review queue's `outside_refunds` once an operator has looked at it (with a note); it goes on counting against its sale. Operator key only.",
    operation_id = "operator_outside_refund_acknowledge",
    tag = "operator",
    params(
        ("account" = String, Path, description = "The provider account"),
        ("provider_refund_id" = String, Path, description = "The provider's id of the refund"),
    ),
    request_body(content = AcknowledgeBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Acknowledged", body = super::events::ActionResult),
        (status = 400, description = "`invalid_request` (with `errors`) or `malformed_json`", body = super::error::Problem, content_type = "application/problem+json"),
        super::error::OperatorKeyRefusals,
        (status = 404, description = "`not_found`", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 415, description = "`unsupported_media_type`: send application/json", body = super::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn acknowledge_outside(
    State(state): State<AppState>,
    OperatorAuthed(op): OperatorAuthed,
    Path((account, provider_refund_id)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<Json<super::events::ActionResult>, ApiError> {
    super::require_json(&headers)?;
    let bytes = super::read_body(body, 8 * 1024).await?;
    let req: AcknowledgeBody = super::parse::json(&bytes)?;
    let note = req.note.0.trim();
    if note.is_empty() || account.contains('\0') || provider_refund_id.contains('\0') {
        return Err(ApiError::validation(std::collections::BTreeMap::from([(
            "note".to_string(),
            vec!["must say what you checked".to_string()],
        )])));
    }
    let found = state
        .gateway
        .store
        .reconciliations()
        .acknowledge_outside(
            &account,
            &provider_refund_id,
            &op.name,
            note,
            state.gateway.clock.now(),
        )
        .await?;
    if !found {
        return Err(ApiError::not_found("outside refund"));
    }
    tracing::info!(operator = %op.name, %account, %provider_refund_id, "refund made elsewhere acknowledged");
    Ok(Json(super::events::ActionResult {
        result: "acknowledged".into(),
    }))
}

/// The operator's routes.
pub fn routes() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/v1/operator/review", get(review))
        .route("/v1/operator/refunds", get(list))
        .route("/v1/operator/refunds/{id}", get(get_one))
        .route(
            "/v1/operator/outside-refunds/{account}/{provider_refund_id}/acknowledge",
            post(acknowledge_outside),
        )
        .route("/v1/operator/refunds/{id}/events", get(events))
        .route("/v1/operator/refunds/{id}/sync", post(sync))
        .route("/v1/operator/refunds/{id}/resolve", post(resolve))
}
