//! `/v1/refunds`: create, fetch, list.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::parse::{self, AmountText, Email, Filter, Flag, Limit, Metadata, Text, TimeParam};
use super::{ApiError, AppState, Authed};
use crate::money::{Currency, MoneyError};
use crate::refunds::{Created, NewRefund, RefundObject};
use crate::store::{ListFilter, Status};
use crate::types::{ProviderKind, RefundId};

use crate::config::MAX_BODY_BYTES;
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// The body of `POST /v1/refunds`: parsed by serde into checked types (the
/// same struct describes it to the OpenAPI document); unknown fields are refused.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"provider": "pockyt", "transaction_no": "297553638301777927", "amount": "10.50", "currency": "USD", "refund_reference": "pos-7-0042", "reason": "customer return"}))]
pub struct CreateRefundBody {
    /// `pockyt` or `pay10`.
    #[schema(value_type = String, pattern = "^(pockyt|pay10)$", example = "pockyt")]
    provider: ProviderKind,
    /// Provider's id of the sale: Pockyt `transactionNo`, Pay10 `PG_REF_NUM` (digits). Pockyt: this or `reference`; Pay10: required.
    #[serde(default)]
    #[schema(value_type = Option<String>, max_length = 64)]
    transaction_no: Option<Text<64>>,
    /// Merchant's id of the sale: Pockyt `reference`, Pay10 `ORDER_ID` (required for Pay10).
    #[serde(default)]
    #[schema(value_type = Option<String>, max_length = 64)]
    reference: Option<Text<64>>,
    /// Decimal string in major units, > 0, at most the currency's minor digits. Never a JSON number.
    #[schema(value_type = String, example = "10.50", pattern = "^[0-9]{1,15}(\\.[0-9]{1,4})?$")]
    amount: AmountText,
    /// ISO 4217 alpha code, any case ("usd" is USD); must match the sale where known.
    #[schema(value_type = String, example = "USD", pattern = "^[A-Za-z]{3}$")]
    currency: Currency,
    /// Pockyt only: the currency the sale settles in; taken from the sale when absent.
    #[serde(default)]
    #[schema(value_type = Option<String>, pattern = "^[A-Za-z]{3}$")]
    settle_currency: Option<Currency>,
    /// The POS's own id for this refund; unique per client and acts as an idempotency key.
    #[serde(default)]
    #[schema(value_type = Option<String>, max_length = 255)]
    refund_reference: Option<Text<255>>,
    /// At most 255 characters.
    #[serde(default)]
    #[schema(value_type = Option<String>, max_length = 255)]
    reason: Option<Text<255>>,
    /// Where the receipt is emailed once the refund succeeds. Only when the gateway has SMTP configured: otherwise it is accepted and no email is sent (the start-up summary says so).
    #[serde(default)]
    #[schema(value_type = Option<String>, max_length = 254)]
    receipt_email: Option<Email>,
    /// At most 20 string values, echoed back.
    #[serde(default)]
    #[schema(value_type = Option<BTreeMap<String, String>>)]
    metadata: Option<Metadata>,
    /// The sale's amount as its receipt shows it (decimal, in `currency`).
    /// Pay10: with it, the gateway asks Pay10 about the sale first (its
    /// status enquiry needs the amount), refuses a sale that is not
    /// `Captured` or is in another currency, and holds every refund of the
    /// sale to the amount Pay10 states; without it, Pay10 alone checks the
    /// sale. Pockyt: not needed (Pockyt is always asked); ignored.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "25.00", pattern = "^[0-9]{1,15}(\\.[0-9]{1,4})?$")]
    sale_amount: Option<AmountText>,
}

/// Filters and pagination of `GET /v1/refunds` (parsed by serde; unknown filters are refused).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    #[param(value_type = Option<String>, max_length = 255)]
    transaction_no: Option<Filter>,
    #[param(value_type = Option<String>, max_length = 255)]
    reference: Option<Filter>,
    #[param(value_type = Option<String>, max_length = 255)]
    refund_reference: Option<Filter>,
    /// `pending`, `succeeded` or `failed`.
    #[param(value_type = Option<String>, pattern = "^(pending|succeeded|failed)$")]
    status: Option<Status>,
    /// `pockyt` or `pay10`.
    #[param(value_type = Option<String>, pattern = "^(pockyt|pay10)$")]
    provider: Option<ProviderKind>,
    /// RFC 3339 time or Unix seconds, inclusive.
    #[param(
        value_type = Option<String>,
        pattern = "^(-?[0-9]{1,12}|[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2}))$"
    )]
    created_from: Option<TimeParam>,
    /// RFC 3339 time or Unix seconds, inclusive: a time given to the second
    /// (as `created_at` is shown) covers that whole second.
    #[param(
        value_type = Option<String>,
        pattern = "^(-?[0-9]{1,12}|[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2}))$"
    )]
    created_to: Option<TimeParam>,
    /// 1-100, default 20.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<Limit>,
    /// The id of one of your refunds: the page starts after it (newest first).
    #[param(value_type = Option<String>, pattern = "^rf_[0-9A-Z]{26}$")]
    starting_after: Option<RefundId>,
    /// Only refunds that need a person: flagged for review, or pending longer
    /// than `review_after_ms` (each with its `review_reason`).
    #[param(value_type = Option<bool>)]
    needs_review: Option<Flag>,
}

/// The query of `GET /v1/refunds/{id}` (an unknown parameter is refused,
/// as on the list).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GetQuery {
    sync: Option<Flag>,
    wait: Option<Text<8>>,
}

/// `wait`: whole seconds, 0 to 30.
fn wait_secs(w: Option<Text<8>>) -> Result<Option<std::time::Duration>, ApiError> {
    let Some(w) = w else { return Ok(None) };
    match w.0.parse::<u64>() {
        Ok(n) if n <= 30 => Ok(Some(std::time::Duration::from_secs(n))),
        _ => Err(ApiError::validation(BTreeMap::from([(
            "wait".to_string(),
            vec!["must be whole seconds from 0 to 30".to_string()],
        )]))),
    }
}

#[derive(Serialize)]
struct Fingerprint<'a> {
    provider: &'a str,
    transaction_no: &'a Option<String>,
    reference: &'a Option<String>,
    amount_minor: i64,
    currency: &'a str,
    settle_currency: Option<&'a str>,
    refund_reference: &'a Option<String>,
    reason: &'a Option<String>,
    receipt_email: &'a Option<String>,
    metadata: &'a BTreeMap<String, String>,
    /// Left out when absent, so a request made before the field existed
    /// keeps its fingerprint.
    #[serde(skip_serializing_if = "Option::is_none")]
    sale_amount_minor: Option<i64>,
}

impl CreateRefundBody {
    /// The rules between fields (after each field parsed on its own): the
    /// amount in the currency's minor digits and within what the provider's
    /// wire carries, and the sale ids the provider needs. Every broken rule
    /// is reported at once.
    fn into_new_refund(self, idempotency_key: Option<String>) -> Result<NewRefund, ApiError> {
        let mut errors: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut add = |field: &str, msg: String| errors.entry(field.into()).or_default().push(msg);
        let provider = self.provider;
        // A barcode scanner adds spaces around what it reads: the ids are
        // trimmed, then checked against what the provider allows.
        let transaction_no = self.transaction_no.map(|t| t.0.trim().to_string());
        let reference = self.reference.map(|t| t.0.trim().to_string());
        let amount = match self.currency.parse_amount(&self.amount.0) {
            Ok(a) if a.get() > provider.max_amount_minor() => {
                add(
                    "amount",
                    format!("is larger than {provider} accepts (at most 12 digits in minor units)"),
                );
                None
            }
            Ok(a) => Some(a),
            Err(e @ MoneyError::TooPrecise(_)) => {
                add("amount", format!("{e} for {}", self.currency.code()));
                None
            }
            Err(e) => {
                add("amount", e.to_string());
                None
            }
        };
        let sale_amount = match self
            .sale_amount
            .as_ref()
            .map(|a| self.currency.parse_amount(&a.0))
        {
            None => None,
            Some(Ok(s)) if s.get() > provider.max_amount_minor() => {
                add(
                    "sale_amount",
                    format!("is larger than {provider} accepts (at most 12 digits in minor units)"),
                );
                None
            }
            Some(Ok(s)) => {
                if amount.is_some_and(|a| a.get() > s.get()) {
                    add("amount", "is more than sale_amount".into());
                }
                Some(s)
            }
            Some(Err(e)) => {
                add("sale_amount", format!("{e} for {}", self.currency.code()));
                None
            }
        };
        for (field, msg) in provider.check_sale_ids(
            transaction_no.as_deref(),
            reference.as_deref(),
            self.settle_currency.is_some(),
        ) {
            add(field, msg.into());
        }
        let Some(amount) = amount.filter(|_| errors.is_empty()) else {
            return Err(ApiError::validation(errors));
        };
        let refund_reference = self.refund_reference.map(|t| t.0);
        if idempotency_key.is_none() && refund_reference.is_none() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "idempotency_key_required",
                "send an Idempotency-Key header or a refund_reference so retries cannot refund twice",
            ));
        }
        let reason = self.reason.map(|t| t.0);
        let receipt_email = self.receipt_email.map(|e| e.0);
        let metadata = self.metadata.unwrap_or_default().0;
        let fingerprint = Fingerprint {
            provider: provider.as_str(),
            transaction_no: &transaction_no,
            reference: &reference,
            amount_minor: amount.get(),
            currency: self.currency.code(),
            settle_currency: self.settle_currency.map(|c| c.code()),
            refund_reference: &refund_reference,
            reason: &reason,
            receipt_email: &receipt_email,
            metadata: &metadata,
            sale_amount_minor: sale_amount.map(|s| s.get()),
        };
        let request_hash = hex::encode(Sha256::digest(
            serde_json::to_vec(&fingerprint).unwrap_or_default(),
        ));
        Ok(NewRefund {
            provider,
            transaction_no,
            reference,
            amount,
            currency: self.currency,
            settle_currency: self.settle_currency,
            refund_reference,
            reason,
            receipt_email,
            metadata,
            idempotency_key,
            request_hash,
            sale_amount,
        })
    }
}

/// Parses a create body into a [`NewRefund`].
pub fn validate(body: &[u8], idempotency_key: Option<String>) -> Result<NewRefund, ApiError> {
    parse::json::<CreateRefundBody>(body)?.into_new_refund(idempotency_key)
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(IDEMPOTENCY_HEADER) else {
        return Ok(None);
    };
    // Two keys would make the first one win silently: a retry carrying only
    // the second would refund again.
    if headers.get_all(IDEMPOTENCY_HEADER).iter().count() > 1 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
            "send one Idempotency-Key header, not several",
        ));
    }
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
            "Idempotency-Key must be 1-255 visible ASCII characters",
        )
    };
    let s = v.to_str().map_err(|_| bad())?;
    if s.is_empty() || s.len() > 255 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(Some(s.to_string()))
}

/// Whether an `Accept` header asks for HTML: `text/html` listed with a
/// quality above zero (`text/html;q=0` refuses it).
fn accepts_html(accept: &str) -> bool {
    accept.split(',').any(|item| {
        let mut parts = item.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        let q = parts
            .find_map(|p| p.strip_prefix("q="))
            .and_then(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        media.eq_ignore_ascii_case("text/html") && q > 0.0
    })
}

fn json_response(status: StatusCode, body: String, replayed: bool) -> Response {
    let mut resp = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    if replayed {
        resp.headers_mut()
            .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    resp
}

#[utoipa::path(
    post,
    path = "/v1/refunds",
    summary = "Refund a sale",
    description = "What the POS calls when the clerk presses \"refund\". Send the sale's ids, the amount as a decimal string and its currency, and an `Idempotency-Key` (or a `refund_reference`): repeat the very same request after a timeout or a crash and you get the first answer again, never a second refund. 201 answers `succeeded`, `failed` (with `failure_code`) or `pending` (the gateway learns the outcome itself; read it again later, or wait for the provider). A refusal (400, 422) records nothing.",
    tag = "refunds",
    request_body(content = CreateRefundBody, content_type = "application/json"),
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "1-255 visible ASCII characters. Same key + same body replays the stored response; needed unless refund_reference is given."),
    ),
    responses(
        (status = 201, description = "The refund: `succeeded`, `failed` (provider decline) or `pending` (not final or not known yet; the gateway settles it itself).", body = RefundObject,
            headers(("Idempotent-Replayed" = String, description = "`true` when this is a stored response replayed"))),
        (status = 400, description = "`malformed_json`, `invalid_request` (with `errors`), `idempotency_key_required`, `invalid_idempotency_key`", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthorized`: missing or invalid API key", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "`wrong_key_role`: a valid operator key; the POS API needs a client key", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`request_in_progress`: the first request with this key is still running", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload_too_large`: body over 64 KiB", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 415, description = "`unsupported_media_type`: send application/json", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Refused before any provider call, nothing recorded: `transaction_not_found`, `transaction_not_refundable`, `currency_mismatch`, `amount_exceeds_refundable`, `provider_not_configured`; or `idempotency_key_mismatch`", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "`provider_unavailable` (the sale could not be checked; nothing was refunded) or `database_unavailable`", body = super::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    Authed(client): Authed,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    super::require_json(&headers)?;
    let key = idempotency_key(&headers)?;
    let bytes = super::read_body(body, MAX_BODY_BYTES).await?;
    let req = validate(&bytes, key)?;
    // The flow runs in its own task: a client that hangs up, or a request
    // timeout, must not cut a refund between the provider call and its record.
    let gateway = state.gateway.clone();
    let created = tokio::spawn(async move { gateway.create(&client, req).await })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "refund task failed");
            ApiError::internal()
        })??;
    Ok(match created {
        Created::New(row) => {
            crate::metrics::refund_created(row.provider.as_str(), row.status.as_str());
            let body = row.response_body.clone().unwrap_or_else(|| {
                serde_json::to_string(&state.gateway.render(&row)).unwrap_or_default()
            });
            json_response(StatusCode::CREATED, body, false)
        }
        Created::Replay { status, body } => {
            crate::metrics::idempotent_replay();
            json_response(
                StatusCode::from_u16(status).unwrap_or(StatusCode::CREATED),
                body,
                true,
            )
        }
        Created::Current(row) => {
            crate::metrics::idempotent_replay();
            json_response(
                StatusCode::CREATED,
                serde_json::to_string(&state.gateway.render(&row)).unwrap_or_default(),
                true,
            )
        }
        Created::InProgress { by_reference } => {
            let what = if by_reference {
                "a request with this refund_reference"
            } else {
                "a request with this Idempotency-Key"
            };
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "request_in_progress",
                format!("{what} is still being processed; retry the same request shortly to get its answer"),
            )
            .retry_after(1));
        }
        Created::Mismatch {
            existing,
            differing,
            by_reference,
        } => {
            let (used, fix) = if by_reference {
                (
                    "this refund_reference",
                    "give this refund its own refund_reference",
                )
            } else {
                ("this Idempotency-Key", "send it with a new Idempotency-Key")
            };
            let fields = if differing.is_empty() {
                "the body".to_string()
            } else {
                differing.join(", ")
            };
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_mismatch",
                format!(
                    "{used} already made refund {} with a different request ({fields} differ); to retry that refund, repeat its request exactly; for a new refund, {fix}",
                    existing.id
                ),
            ));
        }
    })
}

#[utoipa::path(
    get,
    path = "/v1/refunds/{id}",
    summary = "Read a refund",
    description = "The refund as the gateway knows it now. With `sync=true` a pending refund's provider is asked first. Another client's refund is 404.",
    tag = "refunds",
    params(
        ("id" = String, Path, description = "Refund id (`rf_...`)"),
        ("sync" = Option<bool>, Query, description = "Ask the provider for the current status first (`true` or `false`)"),
        ("wait" = Option<u32>, Query, minimum = 0, maximum = 30, description = "Seconds (0-30) to wait for a pending refund to become final: the answer comes as soon as it is (whichever gateway process learns it), or with its current state when the wait ends"),
    ),
    responses(
        (status = 200, description = "The refund", body = RefundObject),
        (status = 400, description = "`invalid_request` (a bad `sync` value) or `invalid_query`", body = super::error::Problem, content_type = "application/problem+json"),
        super::error::PosKeyRefusals,
        (status = 404, description = "`not_found` (also for another client's refund)", body = super::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get_one(
    State(state): State<AppState>,
    Authed(client): Authed,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<RefundObject>, ApiError> {
    let q: GetQuery = parse::query(raw.as_deref())?;
    let sync = q.sync.unwrap_or_default().0;
    let id = parse::refund_id(&id)?;
    let row = state
        .gateway
        .refund(&client.name, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("refund"))?;
    let wait = wait_secs(q.wait)?;
    let row = if sync && row.status == Status::Pending {
        state.gateway.sync(&row).await?
    } else {
        row
    };
    let row = match wait {
        Some(w) if row.status == Status::Pending => {
            state.gateway.wait_for_final(&client.name, row, w).await?
        }
        _ => row,
    };
    Ok(Json(state.gateway.render(&row)))
}

/// One change of a refund.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RefundEventObject {
    /// RFC 3339.
    pub at: String,
    /// `request`, `status_query`, `webhook`, `reconciliation` or `operator`.
    pub source: String,
    /// The status after the change.
    pub status: String,
    pub previous_status: Option<String>,
    pub provider_code: Option<String>,
    pub provider_status: Option<String>,
    pub detail: Option<String>,
    /// The operator, for operator actions.
    pub actor: Option<String>,
}

/// A refund's history: every change in order, with its source.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RefundEvents {
    /// Always `list`.
    #[schema(value_type = String, example = "list")]
    pub object: &'static str,
    pub data: Vec<RefundEventObject>,
}

pub(crate) fn events_json(events: Vec<crate::store::RefundEvent>) -> RefundEvents {
    RefundEvents {
        object: "list",
        data: events
            .into_iter()
            .map(|e| RefundEventObject {
                at: e.at.rfc3339(),
                source: e.source.as_str().into(),
                status: e.status.as_str().into(),
                previous_status: e.previous_status.map(|s| s.as_str().into()),
                provider_code: e.provider_code,
                provider_status: e.provider_status,
                detail: e.detail,
                actor: e.actor,
            })
            .collect(),
    }
}

#[utoipa::path(
    get,
    path = "/v1/refunds/{id}/events",
    summary = "A refund's history",
    description = "Every change of the refund, oldest first: when, what caused it (the request, a status query, a webhook, reconciliation, an operator) and what the provider said.",
    tag = "refunds",
    params(("id" = String, Path, description = "Refund id")),
    responses(
        (status = 200, description = "Every change of the refund in order, with its source (the same story the operator sees)", body = RefundEvents),
        super::error::PosKeyRefusals,
        (status = 404, description = "`not_found`", body = super::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn events(
    State(state): State<AppState>,
    Authed(client): Authed,
    Path(id): Path<String>,
) -> Result<Json<RefundEvents>, ApiError> {
    let id = parse::refund_id(&id)?;
    let events = state
        .gateway
        .history(Some(&client.name), &id)
        .await?
        .ok_or_else(|| ApiError::not_found("refund"))?;
    Ok(Json(events_json(events)))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RefundList {
    /// Always `list`.
    #[schema(value_type = String, example = "list")]
    pub object: &'static str,
    pub data: Vec<RefundObject>,
    pub has_more: bool,
}

#[utoipa::path(
    get,
    path = "/v1/refunds",
    summary = "List refunds",
    description = "Your refunds, newest first, filtered by sale ids, status, provider, time (`created_from`/`created_to`, inclusive; a time given to the second covers that second) or `needs_review`; page with `limit` and `starting_after`.",
    tag = "refunds",
    params(ListQuery),
    responses(
        (status = 200, description = "The client's refunds, newest first", body = RefundList),
        (status = 400, description = "`invalid_request` (with `errors`)", body = super::error::Problem, content_type = "application/problem+json"),
        super::error::PosKeyRefusals,
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    Authed(client): Authed,
    RawQuery(raw): RawQuery,
) -> Result<Json<RefundList>, ApiError> {
    let q: ListQuery = parse::query(raw.as_deref())?;
    let after = match &q.starting_after {
        None => None,
        Some(id) => match state.gateway.refund(&client.name, id).await? {
            Some(r) => Some((r.created_at, r.id)),
            None => {
                return Err(ApiError::validation(BTreeMap::from([(
                    "starting_after".to_string(),
                    vec!["is not the id of one of your refunds".to_string()],
                )])))
            }
        },
    };
    let filter = q.into_filter(&state, after, None);
    let limit = filter.limit;
    let mut rows = state.gateway.refunds(&client.name, &filter).await?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(20));
    Ok(Json(RefundList {
        object: "list",
        data: rows.iter().map(|r| state.gateway.render(r)).collect(),
        has_more,
    }))
}

impl ListQuery {
    /// The store's filter: every filter of the list, the cursor's refund
    /// (`after`), and (operators) an account.
    pub fn into_filter(
        self,
        state: &AppState,
        after: Option<(crate::types::Timestamp, RefundId)>,
        account: Option<String>,
    ) -> ListFilter {
        let q = self;
        ListFilter {
            account,
            transaction_no: q.transaction_no.map(|f| f.0),
            reference: q.reference.map(|f| f.0),
            refund_reference: q.refund_reference.map(|f| f.0),
            status: q.status,
            provider: q.provider,
            created_from: q.created_from.map(|t| t.0),
            created_to: q.created_to.map(|t| t.last()),
            after,
            needs_review_before: q
                .needs_review
                .unwrap_or_default()
                .0
                .then(|| state.gateway.review_cutoff()),
            limit: q.limit.unwrap_or_default().0,
            oldest_first: false,
        }
    }

    /// The cursor's refund id, if any.
    pub fn starting_after(&self) -> Option<&RefundId> {
        self.starting_after.as_ref()
    }
}

/// `GET /v1/refunds/{id}/receipt`: 40-column text, or HTML on `Accept: text/html`.
#[utoipa::path(
    get,
    path = "/v1/refunds/{id}/receipt",
    summary = "A receipt to print or show",
    description = "A customer receipt for the refund: 40-column text for POS printers by default, HTML when `Accept` asks for `text/html`.",
    tag = "refunds",
    params(("id" = String, Path, description = "Refund id")),
    responses(
        (status = 200, description = "A customer receipt: `text/plain` for 40-column POS printers by default, `text/html` when Accept asks for it",
            content((String = "text/plain"), (String = "text/html"))),
        super::error::PosKeyRefusals,
        (status = 404, description = "`not_found`", body = super::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn receipt(
    State(state): State<AppState>,
    Authed(client): Authed,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse::refund_id(&id)?;
    let row = state
        .gateway
        .refund(&client.name, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("refund"))?;
    let object = RefundObject::from(&row);
    let store_name = state.gateway.store_name(&row);
    let tz = state.gateway.time_zone(&row);
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(accepts_html);
    Ok(if wants_html {
        (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            crate::refunds::receipt::html(&object, &store_name, tz.as_ref()),
        )
            .into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            crate::refunds::receipt::text(&object, &store_name, tz.as_ref()),
        )
            .into_response()
    })
}

/// The refund resource's routes.
pub fn routes() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/v1/refunds", post(create).get(list))
        .route("/v1/refunds/{id}", get(get_one))
        .route("/v1/refunds/{id}/receipt", get(receipt))
        .route("/v1/refunds/{id}/events", get(events))
}
