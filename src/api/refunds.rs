//! `/v1/refunds`: create, fetch, list.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{ApiError, AppState, Authed};
use crate::money::{Currency, MoneyError};
use crate::providers::ProviderKind;
use crate::refunds::{Created, NewRefund, RefundObject};
use crate::store::ListFilter;

/// Request bodies larger than this are refused with 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

const FIELDS: &[&str] = &[
    "provider",
    "transaction_no",
    "reference",
    "amount",
    "currency",
    "settle_currency",
    "refund_reference",
    "reason",
    "receipt_email",
    "metadata",
];

/// The body of `POST /v1/refunds` (validated field by field; unknown fields are refused).
#[allow(dead_code)] // describes the wire format for the OpenAPI document; parsing is in `validate`
#[derive(utoipa::ToSchema)]
#[schema(example = json!({"provider": "pockyt", "transaction_no": "297553638301777927", "amount": "10.50", "currency": "USD", "refund_reference": "pos-7-0042", "reason": "customer return"}))]
pub struct CreateRefundBody {
    /// `pockyt` or `pay10`.
    #[schema(pattern = "^(pockyt|pay10)$", example = "pockyt")]
    provider: String,
    /// Provider's id of the sale: Pockyt `transactionNo`, Pay10 `PG_REF_NUM` (digits). Pockyt: this or `reference`; Pay10: required.
    transaction_no: Option<String>,
    /// Merchant's id of the sale: Pockyt `reference`, Pay10 `ORDER_ID` (required for Pay10).
    reference: Option<String>,
    /// Decimal string in major units, > 0, at most the currency's minor digits. Never a JSON number.
    #[schema(example = "10.50", pattern = "^[0-9]{1,15}(\\.[0-9]{1,4})?$")]
    amount: String,
    /// ISO 4217 alpha code; must match the sale where known.
    #[schema(example = "USD", pattern = "^[A-Z]{3}$")]
    currency: String,
    /// Pockyt only: the currency the sale settles in; taken from the sale when absent.
    #[schema(pattern = "^[A-Z]{3}$")]
    settle_currency: Option<String>,
    /// The POS's own id for this refund; unique per client and acts as an idempotency key.
    refund_reference: Option<String>,
    /// At most 255 characters.
    reason: Option<String>,
    /// Where the receipt is emailed once the refund succeeds. Only when the gateway has SMTP configured: otherwise it is accepted and no email is sent (the start-up summary says so).
    receipt_email: Option<String>,
    /// At most 20 string values, echoed back.
    metadata: Option<BTreeMap<String, String>>,
}

/// Filters and pagination of `GET /v1/refunds`.
#[allow(dead_code)] // describes the query for the OpenAPI document; parsing is in `list`
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    #[param(max_length = 255)]
    transaction_no: Option<String>,
    #[param(max_length = 255)]
    reference: Option<String>,
    #[param(max_length = 255)]
    refund_reference: Option<String>,
    /// `pending`, `succeeded` or `failed`.
    #[param(pattern = "^(pending|succeeded|failed)$")]
    status: Option<String>,
    /// `pockyt` or `pay10`.
    #[param(pattern = "^(pockyt|pay10)$")]
    provider: Option<String>,
    /// RFC 3339 time or Unix seconds, inclusive.
    #[param(
        pattern = "^(-?[0-9]{1,12}|[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2}))$"
    )]
    created_from: Option<String>,
    /// RFC 3339 time or Unix seconds, inclusive.
    #[param(
        pattern = "^(-?[0-9]{1,12}|[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2}))$"
    )]
    created_to: Option<String>,
    /// 1-100, default 20.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// The id of one of your refunds: the page starts after it (newest first).
    #[param(pattern = "^rf_[0-9A-Z]{26}$")]
    starting_after: Option<String>,
    /// Only refunds that need a person: flagged for review, or pending longer
    /// than `review_after_ms` (each with its `review_reason`).
    needs_review: Option<bool>,
}

#[derive(Default)]
struct Errors(BTreeMap<String, Vec<String>>);

impl Errors {
    fn add(&mut self, field: &str, msg: impl Into<String>) {
        self.0
            .entry(field.to_string())
            .or_default()
            .push(msg.into());
    }
}

/// A string field: `None` when absent or null; an error when of another type or too long.
fn string_field(
    obj: &Map<String, Value>,
    name: &str,
    max: usize,
    errors: &mut Errors,
) -> Option<String> {
    match obj.get(name) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => {
            errors.add(name, "must not be empty");
            None
        }
        Some(Value::String(s)) if s.chars().count() > max => {
            errors.add(name, format!("must be at most {max} characters"));
            None
        }
        Some(Value::String(s)) if s.chars().any(char::is_control) => {
            errors.add(name, "must not contain control characters");
            None
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            errors.add(name, "must be a string");
            None
        }
    }
}

/// An address the mailer can send to: parsed by `lettre` (the crate that
/// sends it), and with a dot in its domain (no bare hosts on a receipt).
fn is_email(s: &str) -> bool {
    s.parse::<lettre::Address>()
        .is_ok_and(|a| a.domain().contains('.') && !a.domain().ends_with('.'))
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
}

/// Validates a create body into a [`NewRefund`], collecting every field error.
pub fn validate(body: &[u8], idempotency_key: Option<String>) -> Result<NewRefund, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(obj) = value else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "the body must be a JSON object",
        ));
    };
    let mut errors = Errors::default();
    for k in obj.keys() {
        if !FIELDS.contains(&k.as_str()) {
            errors.add(k, "is not a known field");
        }
    }
    let provider = match string_field(&obj, "provider", 20, &mut errors) {
        Some(p) => match ProviderKind::parse(&p) {
            Some(k) => Some(k),
            None => {
                errors.add("provider", "must be \"pockyt\" or \"pay10\"");
                None
            }
        },
        None => {
            if !obj.contains_key("provider") || obj["provider"].is_null() {
                errors.add("provider", "is required");
            }
            None
        }
    };
    let transaction_no = string_field(&obj, "transaction_no", 64, &mut errors);
    let reference = string_field(&obj, "reference", 64, &mut errors);
    let currency = match obj.get("currency") {
        None | Some(Value::Null) => {
            errors.add("currency", "is required");
            None
        }
        Some(Value::String(c)) => match Currency::from_code(c) {
            Ok(c) => Some(c),
            Err(_) => {
                errors.add("currency", "must be an ISO 4217 alpha code such as \"USD\"");
                None
            }
        },
        Some(_) => {
            errors.add("currency", "must be a string");
            None
        }
    };
    let settle_currency = match obj.get("settle_currency") {
        None | Some(Value::Null) => None,
        Some(Value::String(c)) => match Currency::from_code(c) {
            Ok(c) => Some(c),
            Err(_) => {
                errors.add(
                    "settle_currency",
                    "must be an ISO 4217 alpha code such as \"USD\"",
                );
                None
            }
        },
        Some(_) => {
            errors.add("settle_currency", "must be a string");
            None
        }
    };
    let amount = match obj.get("amount") {
        None | Some(Value::Null) => {
            errors.add("amount", "is required");
            None
        }
        Some(Value::Number(_)) => {
            errors.add(
                "amount",
                "must be a decimal string such as \"10.50\", never a JSON number",
            );
            None
        }
        Some(Value::String(s)) => match currency.map(|c| c.parse_amount(s)) {
            Some(Ok(a)) => Some(a),
            Some(Err(e @ MoneyError::TooPrecise(_))) => {
                errors.add(
                    "amount",
                    format!("{e} for {}", currency.map(|c| c.code()).unwrap_or("")),
                );
                None
            }
            Some(Err(e)) => {
                errors.add("amount", e.to_string());
                None
            }
            None => None,
        },
        Some(_) => {
            errors.add("amount", "must be a decimal string such as \"10.50\"");
            None
        }
    };
    let refund_reference = string_field(&obj, "refund_reference", 255, &mut errors);
    let reason = string_field(&obj, "reason", 255, &mut errors);
    let receipt_email = string_field(&obj, "receipt_email", 254, &mut errors);
    if receipt_email.as_deref().is_some_and(|e| !is_email(e)) {
        errors.add("receipt_email", "must be an email address");
    }
    let mut metadata = BTreeMap::new();
    match obj.get("metadata") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            if m.len() > 20 {
                errors.add("metadata", "may have at most 20 keys");
            }
            for (k, v) in m {
                match v {
                    Value::String(s)
                        if k.chars().count() <= 40 && s.chars().count() <= 500 && !k.is_empty() =>
                    {
                        metadata.insert(k.clone(), s.clone());
                    }
                    Value::String(_) => errors.add(
                        "metadata",
                        format!("key {k:?}: keys are 1-40 characters, values at most 500"),
                    ),
                    _ => errors.add("metadata", format!("key {k:?}: values must be strings")),
                }
            }
        }
        Some(_) => errors.add("metadata", "must be an object of string values"),
    }
    match provider {
        Some(ProviderKind::Pockyt)
            if transaction_no.is_none()
                && reference.is_none()
                && !errors.0.contains_key("transaction_no")
                && !errors.0.contains_key("reference") =>
        {
            errors.add("transaction_no", "pockyt needs transaction_no or reference");
        }
        Some(ProviderKind::Pay10) => {
            match &transaction_no {
                Some(t) if !(t.len() <= 20 && t.bytes().all(|b| b.is_ascii_digit())) => {
                    errors.add("transaction_no", "pay10 PG_REF_NUM is digits only")
                }
                None if !errors.0.contains_key("transaction_no") => {
                    errors.add("transaction_no", "is required for pay10 (PG_REF_NUM)")
                }
                _ => {}
            }
            match &reference {
                Some(r) if r.len() > 50 => {
                    errors.add("reference", "pay10 ORDER_ID is at most 50 characters")
                }
                None if !errors.0.contains_key("reference") => {
                    errors.add("reference", "is required for pay10 (ORDER_ID)")
                }
                _ => {}
            }
            if settle_currency.is_some() {
                errors.add("settle_currency", "applies to pockyt only");
            }
        }
        _ => {}
    }
    if let (Some(p), Some(a)) = (provider, amount) {
        if a.0 > p.max_amount_minor() {
            errors.add(
                "amount",
                format!("is larger than {p} accepts (at most 12 digits in minor units)"),
            );
        }
    }
    if !errors.0.is_empty() {
        return Err(ApiError::validation(errors.0));
    }
    let (Some(provider), Some(amount), Some(currency)) = (provider, amount, currency) else {
        return Err(ApiError::validation(errors.0));
    };
    if idempotency_key.is_none() && refund_reference.is_none() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "idempotency_key_required",
            "send an Idempotency-Key header or a refund_reference so retries cannot refund twice",
        ));
    }
    let fingerprint = Fingerprint {
        provider: provider.as_str(),
        transaction_no: &transaction_no,
        reference: &reference,
        amount_minor: amount.0,
        currency: currency.code(),
        settle_currency: settle_currency.map(|c| c.code()),
        refund_reference: &refund_reference,
        reason: &reason,
        receipt_email: &receipt_email,
        metadata: &metadata,
    };
    let request_hash = hex::encode(Sha256::digest(
        serde_json::to_vec(&fingerprint).unwrap_or_default(),
    ));
    Ok(NewRefund {
        provider,
        transaction_no,
        reference,
        amount,
        currency,
        settle_currency,
        refund_reference,
        reason,
        receipt_email,
        metadata,
        idempotency_key,
        request_hash,
    })
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(IDEMPOTENCY_HEADER) else {
        return Ok(None);
    };
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
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime != "application/json" && !(mime.starts_with("application/") && mime.ends_with("+json"))
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send Content-Type: application/json",
        ));
    }
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
            crate::metrics::refund_created(&row.provider, row.status.as_str());
            let body = row.response_body.clone().unwrap_or_else(|| {
                serde_json::to_string(&RefundObject::from(&row)).unwrap_or_default()
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
                serde_json::to_string(&RefundObject::from(&row)).unwrap_or_default(),
                true,
            )
        }
        Created::InProgress => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "request_in_progress",
                "a request with this Idempotency-Key is still being processed; retry shortly",
            ))
        }
        Created::Mismatch => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_mismatch",
                "this Idempotency-Key (or refund_reference) was used with a different request body",
            ))
        }
    })
}

/// A refund id as the gateway issues them (`rf_` + a 26-character ULID).
/// Anything else names no refund: answered 404 without asking the database
/// (which may refuse bytes such as NUL).
fn is_refund_id(id: &str) -> bool {
    id.len() == 29 && id.starts_with("rf_") && id[3..].bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A text filter is printable and at most 255 characters.
fn check_text_filter(name: &str, v: &str, errors: &mut Errors) {
    if v.chars().count() > 255 || v.chars().any(char::is_control) {
        errors.add(
            name,
            "must be at most 255 characters with no control characters",
        );
    }
}

fn query_map(raw: Option<String>) -> Result<BTreeMap<String, String>, ApiError> {
    let raw = raw.unwrap_or_default();
    serde_urlencoded::from_str::<Vec<(String, String)>>(&raw)
        .map(|v| v.into_iter().collect())
        .map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "the query string is malformed",
            )
        })
}

#[utoipa::path(
    get,
    path = "/v1/refunds/{id}",
    tag = "refunds",
    params(
        ("id" = String, Path, description = "Refund id (`rf_...`)"),
        ("sync" = Option<bool>, Query, description = "Ask the provider for the current status first (`true` or `false`)"),
    ),
    responses(
        (status = 200, description = "The refund", body = RefundObject),
        (status = 400, description = "`invalid_request` (a bad `sync` value) or `invalid_query`", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthorized`", body = super::error::Problem, content_type = "application/problem+json"),
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
    let q = query_map(raw)?;
    let sync = match q.get("sync").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(ApiError::validation(BTreeMap::from([(
                "sync".to_string(),
                vec!["must be true or false".to_string()],
            )])))
        }
    };
    if !is_refund_id(&id) {
        return Err(ApiError::not_found("refund"));
    }
    let row = state
        .gateway
        .refund(&client.name, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("refund"))?;
    let row = if sync && row.status == "pending" {
        state.gateway.sync(&row).await?
    } else {
        row
    };
    Ok(Json(RefundObject::from(&row)))
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
                at: crate::refunds::object::rfc3339(e.at),
                source: e.source,
                status: e.status,
                previous_status: e.previous_status,
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
    tag = "refunds",
    params(("id" = String, Path, description = "Refund id")),
    responses(
        (status = 200, description = "Every change of the refund in order, with its source (the same story the operator sees)", body = RefundEvents),
        (status = 401, description = "`unauthorized`", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`", body = super::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn events(
    State(state): State<AppState>,
    Authed(client): Authed,
    Path(id): Path<String>,
) -> Result<Json<RefundEvents>, ApiError> {
    if !is_refund_id(&id) {
        return Err(ApiError::not_found("refund"));
    }
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

fn parse_time(field: &str, v: &str, errors: &mut Errors) -> Option<i64> {
    let digits = v.strip_prefix('-').unwrap_or(v);
    if (1..=12).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse::<i64>().ok().map(|secs| secs.saturating_mul(1000));
    }
    match time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339) {
        Ok(t) => Some(i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)),
        Err(_) => {
            errors.add(field, "must be an RFC 3339 time or Unix seconds");
            None
        }
    }
}

#[utoipa::path(
    get,
    path = "/v1/refunds",
    tag = "refunds",
    params(ListQuery),
    responses(
        (status = 200, description = "The client's refunds, newest first", body = RefundList),
        (status = 400, description = "`invalid_request` (with `errors`)", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthorized`", body = super::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    Authed(client): Authed,
    RawQuery(raw): RawQuery,
) -> Result<Json<RefundList>, ApiError> {
    let q = query_map(raw)?;
    let mut errors = Errors::default();
    let known = [
        "transaction_no",
        "reference",
        "refund_reference",
        "status",
        "provider",
        "created_from",
        "created_to",
        "limit",
        "starting_after",
        "needs_review",
    ];
    for k in q.keys() {
        if !known.contains(&k.as_str()) {
            errors.add(k, "is not a known filter");
        }
    }
    let limit = match q.get("limit") {
        None => 20,
        Some(l) => match l.parse::<i64>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => {
                errors.add("limit", "must be a whole number from 1 to 100");
                20
            }
        },
    };
    if let Some(s) = q.get("status") {
        if !["pending", "succeeded", "failed"].contains(&s.as_str()) {
            errors.add("status", "must be pending, succeeded or failed");
        }
    }
    if let Some(p) = q.get("provider") {
        if ProviderKind::parse(p).is_none() {
            errors.add("provider", "must be pockyt or pay10");
        }
    }
    let needs_review = match q.get("needs_review").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            errors.add("needs_review", "must be true or false");
            false
        }
    };
    let created_from = q
        .get("created_from")
        .and_then(|v| parse_time("created_from", v, &mut errors));
    let created_to = q
        .get("created_to")
        .and_then(|v| parse_time("created_to", v, &mut errors));
    for name in ["transaction_no", "reference", "refund_reference"] {
        if let Some(v) = q.get(name) {
            check_text_filter(name, v, &mut errors);
        }
    }
    let after = match q.get("starting_after") {
        None => None,
        Some(id) if !is_refund_id(id) => {
            errors.add("starting_after", "is not the id of one of your refunds");
            None
        }
        Some(id) => match state.gateway.refund(&client.name, id).await? {
            Some(r) => Some((r.created_at, r.id)),
            None => {
                errors.add("starting_after", "is not the id of one of your refunds");
                None
            }
        },
    };
    if !errors.0.is_empty() {
        return Err(ApiError::validation(errors.0));
    }
    let filter = ListFilter {
        transaction_no: q.get("transaction_no").cloned(),
        reference: q.get("reference").cloned(),
        refund_reference: q.get("refund_reference").cloned(),
        status: q.get("status").cloned(),
        provider: q.get("provider").cloned(),
        created_from,
        created_to,
        after,
        needs_review_before: needs_review.then(|| state.gateway.review_cutoff()),
        limit,
    };
    let mut rows = state.gateway.refunds(&client.name, &filter).await?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(20));
    Ok(Json(RefundList {
        object: "list",
        data: rows
            .iter()
            .map(|r| RefundObject {
                review_reason: state.gateway.review_reason(r),
                ..RefundObject::from(r)
            })
            .collect(),
        has_more,
    }))
}

/// `GET /v1/refunds/{id}/receipt`: 40-column text, or HTML on `Accept: text/html`.
#[utoipa::path(
    get,
    path = "/v1/refunds/{id}/receipt",
    tag = "refunds",
    params(("id" = String, Path, description = "Refund id")),
    responses(
        (status = 200, description = "A customer receipt: `text/plain` for 40-column POS printers by default, `text/html` when Accept asks for it",
            content((String = "text/plain"), (String = "text/html"))),
        (status = 401, description = "`unauthorized`", body = super::error::Problem, content_type = "application/problem+json"),
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
    if !is_refund_id(&id) {
        return Err(ApiError::not_found("refund"));
    }
    let row = state
        .gateway
        .refund(&client.name, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("refund"))?;
    let object = RefundObject::from(&row);
    let store_name = state.gateway.store_name(&row);
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    Ok(if wants_html {
        (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            crate::refunds::receipt::html(&object, &store_name),
        )
            .into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            crate::refunds::receipt::text(&object, &store_name),
        )
            .into_response()
    })
}
