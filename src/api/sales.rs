//! `GET /v1/sales/{provider}/{transaction_no}`: what is left on a sale.

use std::collections::BTreeMap;

use axum::extract::{Path, RawQuery, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::parse::{self, AmountText, Text};
use super::{ApiError, AppState, Authed};
use crate::money::Currency;
use crate::refunds::sales::{SaleView, SaleViewError};
use crate::types::ProviderKind;

/// One refund on the sale.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SaleRefundObject {
    /// `gateway` (made through this gateway), `provider` (the provider lists
    /// it and it is not ours), `reconciliation` (made elsewhere, found by a
    /// reconciliation report).
    #[schema(example = "gateway")]
    pub source: String,
    pub refund_id: Option<String>,
    pub provider_refund_id: Option<String>,
    pub provider_reference: Option<String>,
    #[schema(example = "4.00")]
    pub amount: String,
    pub status: Option<String>,
}

/// A sale as the provider and the gateway's books know it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SaleObject {
    /// Always `sale`.
    #[schema(example = "sale")]
    pub object: String,
    #[schema(example = "pockyt")]
    pub provider: String,
    pub account: String,
    pub transaction_no: String,
    pub reference: Option<String>,
    /// The sale's amount; `null` while unknown (Pay10 without `sale_amount`).
    #[schema(example = "10.00")]
    pub amount: Option<String>,
    #[schema(example = "USD")]
    pub currency: Option<String>,
    /// The provider's status word (`success`, `Captured`, ...), when asked.
    pub status: Option<String>,
    /// Where `amount` comes from: `provider` (asked just now), `gateway`
    /// (pinned earlier by the provider's answer or a refund's success),
    /// `unknown`.
    #[schema(example = "provider")]
    pub amount_source: String,
    /// Refunded through the gateway (succeeded).
    #[schema(example = "4.00")]
    pub refunded: String,
    /// Refunds through the gateway still pending (held against the sale).
    #[schema(example = "0.00")]
    pub pending: String,
    /// Refunded elsewhere (listed by the provider, or found by a report).
    #[schema(example = "1.00")]
    pub refunded_elsewhere: String,
    /// What a refund may still take; `null` while the amount is unknown.
    #[schema(example = "5.00")]
    pub refundable: Option<String>,
    pub refunds: Vec<SaleRefundObject>,
    /// Why the provider was not asked or could not answer (the figures are
    /// then the gateway's books alone).
    pub provider_note: Option<String>,
}

fn object(v: SaleView) -> SaleObject {
    let fmt = |m: crate::money::Minor| match v.currency {
        Some(c) => c.format(m),
        None => m.get().to_string(),
    };
    SaleObject {
        object: "sale".into(),
        provider: v.provider.as_str().into(),
        account: v.account.clone(),
        transaction_no: v.transaction_no.clone(),
        reference: v.reference.clone(),
        amount: v.amount.map(fmt),
        currency: v.currency.map(|c| c.code().to_string()),
        status: v.status.clone(),
        amount_source: v.amount_source.into(),
        refunded: fmt(v.refunded),
        pending: fmt(v.pending),
        refunded_elsewhere: fmt(v.refunded_elsewhere),
        refundable: v.refundable.map(fmt),
        refunds: v
            .refunds
            .iter()
            .map(|r| SaleRefundObject {
                source: r.source.into(),
                refund_id: r.refund_id.clone(),
                provider_refund_id: r.provider_refund_id.clone(),
                provider_reference: r.provider_reference.clone(),
                amount: fmt(r.amount),
                status: r.status.clone(),
            })
            .collect(),
        provider_note: v.provider_note.clone(),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct SaleQuery {
    /// The sale's merchant reference (Pay10 `ORDER_ID`: required for Pay10).
    #[param(value_type = Option<String>, max_length = 64)]
    reference: Option<Text<64>>,
    /// Pay10: the sale's amount from its receipt (decimal), so Pay10 can be
    /// asked about it (its status enquiry needs it).
    #[param(value_type = Option<String>, example = "25.00")]
    sale_amount: Option<AmountText>,
    /// With `sale_amount`: its currency (ISO 4217 alpha).
    #[param(value_type = Option<String>, example = "AED")]
    currency: Option<Currency>,
}

#[utoipa::path(
    get,
    path = "/v1/sales/{provider}/{transaction_no}",
    summary = "What is left on a sale",
    description = "The sale as the provider (asked now) and the gateway's books know it: its amount, currency and status, what was refunded through the gateway, what is pending, what was refunded elsewhere, what a refund may still take, and every refund on it with where its figure comes from. Pockyt: the provider is asked (tran-query). Pay10: asked only when `sale_amount` and `currency` are given (its status enquiry needs them), else the gateway's books alone. Your own accounts only.",
    operation_id = "sale_get",
    tag = "refunds",
    params(
        ("provider" = String, Path, description = "`pockyt` or `pay10`"),
        ("transaction_no" = String, Path, description = "Pockyt `transactionNo`, Pay10 `PG_REF_NUM`"),
        SaleQuery
    ),
    responses(
        (status = 200, description = "The sale", body = SaleObject),
        (status = 400, description = "`invalid_request` (with `errors`)", body = super::error::Problem, content_type = "application/problem+json"),
        super::error::PosKeyRefusals,
        (status = 404, description = "`not_found`: no such provider, no account of yours for it, or the provider has no such sale", body = super::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(state): State<AppState>,
    Authed(client): Authed,
    Path((provider, transaction_no)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Json<SaleObject>, ApiError> {
    let q: SaleQuery = parse::query(raw.as_deref())?;
    let provider = ProviderKind::parse(&provider).ok_or_else(|| ApiError::not_found("sale"))?;
    let handle = client
        .accounts
        .get(&provider)
        .and_then(|name| state.gateway.accounts.get(name))
        .ok_or_else(|| ApiError::not_found("sale"))?
        .clone();
    let transaction_no = transaction_no.trim().to_string();
    let reference = q.reference.map(|r| r.0.trim().to_string());
    let bad = |field: &str, m: &str| {
        ApiError::validation(BTreeMap::from([(field.to_string(), vec![m.to_string()])]))
    };
    let broken = provider.check_sale_ids(Some(&transaction_no), reference.as_deref(), false);
    if !broken.is_empty() {
        let mut errors: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (field, msg) in broken {
            errors.entry(field.into()).or_default().push(msg.into());
        }
        return Err(ApiError::validation(errors));
    }
    let stated = match (q.sale_amount, q.currency) {
        (None, None) => None,
        (Some(a), Some(c)) => Some((
            c.parse_amount(&a.0)
                .map_err(|e| bad("sale_amount", &e.to_string()))?,
            c,
        )),
        (Some(_), None) => return Err(bad("currency", "is required with sale_amount")),
        (None, Some(_)) => return Err(bad("sale_amount", "is required with currency")),
    };
    match state
        .gateway
        .sale_view(&handle, &transaction_no, reference.as_deref(), stated)
        .await
    {
        Ok(v) => Ok(Json(object(v))),
        Err(SaleViewError::NotFound) => Err(ApiError::not_found("sale")),
        Err(SaleViewError::Store(e)) => Err(e.into()),
    }
}

/// The route.
pub fn routes() -> axum::Router<AppState> {
    axum::Router::new().route(
        "/v1/sales/{provider}/{transaction_no}",
        axum::routing::get(get),
    )
}
