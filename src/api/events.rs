//! `GET /v1/events`: the client's refund events, oldest first, for a POS
//! that cannot receive webhooks; and the operators' view of the webhooks
//! (`/v1/operator/webhook-deliveries`, redelivery, re-enabling an endpoint).

use std::collections::BTreeMap;

use axum::extract::{Path, RawQuery, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::parse::{self, Limit, Text};
use super::{ApiError, AppState, Authed, OperatorAuthed};
use crate::refunds::RefundObject;
use crate::store::{DeliveryAttempt, DeliveryRow, DeliveryState, PosEventRow};
use crate::types::DomainEvent;

/// A refund event: the same object a webhook delivers, with its id.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventObject {
    /// `evt_...`: the webhook's `webhook-id`, and the feed's cursor.
    pub id: String,
    /// Always `event`.
    #[schema(example = "event")]
    pub object: String,
    /// `refund.created`, `refund.succeeded`, `refund.failed` or `refund.review_needed`.
    #[serde(rename = "type")]
    #[schema(example = "refund.succeeded")]
    pub kind: String,
    /// RFC 3339, to the millisecond: when the change happened.
    pub timestamp: String,
    /// The refund as the change left it.
    pub data: RefundObject,
}

impl EventObject {
    pub fn from_row(e: &PosEventRow) -> Result<Self, ApiError> {
        Ok(EventObject {
            id: e.id.clone(),
            object: "event".into(),
            kind: e.kind.as_str().into(),
            timestamp: e.created_at.rfc3339_ms(),
            data: serde_json::from_str(&e.data).map_err(|err| {
                tracing::error!(event = %e.id, error = %err, "a stored event's data does not read as a refund");
                ApiError::internal()
            })?,
        })
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EventList {
    /// Always `list`.
    #[schema(value_type = String, example = "list")]
    pub object: &'static str,
    /// Oldest first.
    pub data: Vec<EventObject>,
    /// More events follow the last one (ask again with `starting_after` = its id).
    pub has_more: bool,
}

/// The query of `GET /v1/events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct FeedQuery {
    /// The id of the last event you have: the page starts after it. Without
    /// it, the page starts at your oldest kept event.
    #[param(value_type = Option<String>, pattern = "^evt_[0-9A-Z]{26}$")]
    starting_after: Option<Text<64>>,
    /// 1-100, default 20.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<Limit>,
    /// Only events of this type.
    #[serde(rename = "type")]
    #[param(rename = "type", value_type = Option<String>, pattern = "^refund\\.(created|succeeded|failed|review_needed)$")]
    kind: Option<Text<64>>,
}

fn field_error(field: &str, message: &str) -> ApiError {
    ApiError::validation(BTreeMap::from([(
        field.to_string(),
        vec![message.to_string()],
    )]))
}

fn event_type(kind: Option<Text<64>>) -> Result<Option<DomainEvent>, ApiError> {
    kind.map(|k| {
        DomainEvent::parse(&k.0).ok_or_else(|| {
            field_error(
                "type",
                "must be refund.created, refund.succeeded, refund.failed or refund.review_needed",
            )
        })
    })
    .transpose()
}

#[utoipa::path(
    get,
    path = "/v1/events",
    summary = "Your refund events, oldest first",
    description = "Every refund event of yours (the same ones webhooks deliver), oldest first, with a stable cursor: keep the id of the last event you handled and ask with `starting_after` = it; you get every later event once, in order, also after a crash or a restart of the gateway. Events are kept `events_retention_days` (30 by default).",
    tag = "events",
    params(FeedQuery),
    responses(
        (status = 200, description = "Your events after the cursor, oldest first", body = EventList),
        (status = 400, description = "`invalid_request` (with `errors`): an unknown `starting_after` or `type`", body = super::error::Problem, content_type = "application/problem+json"),
        super::error::PosKeyRefusals,
    ),
    security(("bearer" = []))
)]
pub async fn feed(
    State(state): State<AppState>,
    Authed(client): Authed,
    RawQuery(raw): RawQuery,
) -> Result<Json<EventList>, ApiError> {
    let q: FeedQuery = parse::query(raw.as_deref())?;
    let limit = q.limit.unwrap_or_default().0;
    let kind = event_type(q.kind)?;
    let events = state.gateway.store.events();
    // Place what has committed, so a fresh event shows at once.
    events.sequence().await?;
    let after = match &q.starting_after {
        None => 0,
        Some(id) => match events.event(Some(&client.name), &id.0).await? {
            Some(PosEventRow { seq: Some(seq), .. }) => seq,
            _ => {
                return Err(field_error(
                    "starting_after",
                    "is not the id of one of your events (or it is older than the retention)",
                ))
            }
        },
    };
    let mut rows = events.feed(&client.name, after, kind, limit + 1).await?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(20));
    Ok(Json(EventList {
        object: "list",
        data: rows
            .iter()
            .map(EventObject::from_row)
            .collect::<Result<_, _>>()?,
        has_more,
    }))
}

/// One attempt of a delivery.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AttemptObject {
    /// RFC 3339.
    pub at: String,
    /// The receiver's HTTP status, when it answered.
    pub http_status: Option<i64>,
    /// What went wrong before any status (timeout, connection refused, ...).
    pub error: Option<String>,
    pub duration_ms: i64,
}

/// One event for one endpoint.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DeliveryObject {
    pub id: String,
    pub event_id: String,
    #[schema(example = "refund.succeeded")]
    pub event_type: String,
    pub refund_id: String,
    pub client: String,
    /// The endpoint's position among the client's `[[clients.webhooks]]` (0 first), if still configured.
    pub endpoint: Option<usize>,
    /// Its URL, without credentials or query (either may hold a token).
    pub url: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    pub attempts: i64,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<String>,
    pub delivered_at: Option<String>,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    /// Whether the endpoint is disabled (by a `410 Gone`): nothing is sent until an operator enables it.
    pub endpoint_disabled: bool,
    /// Every attempt, oldest first.
    pub attempt_log: Vec<AttemptObject>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DeliveryList {
    /// Always `list`.
    #[schema(value_type = String, example = "list")]
    pub object: &'static str,
    /// Newest first, at most `limit`.
    pub data: Vec<DeliveryObject>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct DeliveriesQuery {
    /// `pending`, `delivered` or `failed`.
    #[param(value_type = Option<String>, pattern = "^(pending|delivered|failed)$")]
    state: Option<Text<16>>,
    /// A client's name.
    #[param(value_type = Option<String>)]
    client: Option<Text<255>>,
    /// 1-100, default 20.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<Limit>,
}

fn attempt_object(a: &DeliveryAttempt) -> AttemptObject {
    AttemptObject {
        at: a.at.rfc3339_ms(),
        http_status: a.http_status,
        error: a.error.clone(),
        duration_ms: a.duration_ms,
    }
}

#[utoipa::path(
    get,
    path = "/v1/operator/webhook-deliveries",
    summary = "Webhook deliveries to POS endpoints",
    description = "Each event for each endpoint, newest first, with every attempt (time, HTTP status or error, duration). Filter by `state` and `client`. Operator key only.",
    tag = "operator",
    params(DeliveriesQuery),
    responses(
        (status = 200, description = "Deliveries, newest first", body = DeliveryList),
        (status = 400, description = "`invalid_request` (with `errors`)", body = super::error::Problem, content_type = "application/problem+json"),
        super::error::OperatorKeyRefusals,
    ),
    security(("bearer" = []))
)]
pub async fn deliveries(
    State(state): State<AppState>,
    OperatorAuthed(_op): OperatorAuthed,
    RawQuery(raw): RawQuery,
) -> Result<Json<DeliveryList>, ApiError> {
    let q: DeliveriesQuery = parse::query(raw.as_deref())?;
    let filter_state = q
        .state
        .map(|s| {
            DeliveryState::parse(&s.0)
                .ok_or_else(|| field_error("state", "must be pending, delivered or failed"))
        })
        .transpose()?;
    let limit = q.limit.unwrap_or_default().0;
    let events = state.gateway.store.events();
    let rows = events
        .deliveries(filter_state, q.client.as_ref().map(|c| c.0.as_str()), limit)
        .await?;
    let disabled = events.disabled().await?;
    let mut data = Vec::with_capacity(rows.len());
    for d in rows {
        let attempts = events.attempts(&d.id).await?;
        data.push(delivery_object(&state, &d, &attempts, &disabled));
    }
    Ok(Json(DeliveryList {
        object: "list",
        data,
    }))
}

fn delivery_object(
    state: &AppState,
    d: &DeliveryRow,
    attempts: &[DeliveryAttempt],
    disabled: &[crate::store::DisabledEndpoint],
) -> DeliveryObject {
    let endpoint = state
        .gateway
        .clients
        .iter()
        .find(|c| c.name == d.client)
        .and_then(|c| c.webhooks.iter().position(|w| w.url == d.endpoint));
    DeliveryObject {
        id: d.id.clone(),
        event_id: d.event_id.clone(),
        event_type: d.event_type.as_str().into(),
        refund_id: d.refund_id.clone(),
        client: d.client.clone(),
        endpoint,
        url: crate::refunds::outgoing::shown_url(&d.endpoint),
        state: d.state.as_str().into(),
        attempts: d.attempts,
        next_attempt_at: (d.state == DeliveryState::Pending)
            .then(|| d.next_attempt_at.rfc3339_ms()),
        delivered_at: d.delivered_at.map(|t| t.rfc3339_ms()),
        last_status: d.last_status,
        last_error: d.last_error.clone(),
        endpoint_disabled: disabled
            .iter()
            .any(|x| x.client == d.client && x.endpoint == d.endpoint),
        attempt_log: attempts.iter().map(attempt_object).collect(),
    }
}

/// What an operator action did.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ActionResult {
    /// `redelivery_scheduled`, `endpoint_enabled`, `endpoint_was_enabled` or
    /// `acknowledged`.
    pub result: String,
}

#[utoipa::path(
    post,
    path = "/v1/operator/events/{id}/redeliver",
    summary = "Deliver an event again",
    description = "Every delivery of the event starts a fresh schedule now (also delivered and failed ones), and an endpoint configured since gets it too. The receiver sees the same `webhook-id`. Operator key only.",
    tag = "operator",
    params(("id" = String, Path, description = "Event id (`evt_...`)")),
    responses(
        (status = 200, description = "Scheduled", body = ActionResult),
        super::error::OperatorKeyRefusals,
        (status = 404, description = "`not_found`", body = super::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn redeliver(
    State(state): State<AppState>,
    OperatorAuthed(op): OperatorAuthed,
    Path(id): Path<String>,
) -> Result<Json<ActionResult>, ApiError> {
    let now = state.gateway.clock.now();
    if !state.gateway.store.events().redeliver(&id, now).await? {
        return Err(ApiError::not_found("event"));
    }
    tracing::info!(operator = %op.name, event = %id, "event scheduled for redelivery");
    Ok(Json(ActionResult {
        result: "redelivery_scheduled".into(),
    }))
}

#[utoipa::path(
    post,
    path = "/v1/operator/webhook-endpoints/{client}/{n}/enable",
    summary = "Enable a webhook endpoint again",
    description = "An endpoint disabled by a `410 Gone` takes deliveries again; its waiting ones are due at once. `n` is the endpoint's position among the client's `[[clients.webhooks]]` (0 first). Operator key only.",
    tag = "operator",
    params(
        ("client" = String, Path, description = "Client name"),
        ("n" = usize, Path, description = "The endpoint's position (0 first)"),
    ),
    responses(
        (status = 200, description = "Enabled (or it was not disabled)", body = ActionResult),
        super::error::OperatorKeyRefusals,
        (status = 404, description = "`not_found`: no such client or endpoint", body = super::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn enable_endpoint(
    State(state): State<AppState>,
    OperatorAuthed(op): OperatorAuthed,
    Path((client, n)): Path<(String, String)>,
) -> Result<Json<ActionResult>, ApiError> {
    let url = state
        .gateway
        .clients
        .iter()
        .find(|c| c.name == client)
        .and_then(|c| {
            // Digits only, no leading zeros: `n` names one endpoint one way.
            let canonical = !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
                && (n == "0" || !n.starts_with('0'));
            c.webhooks
                .get(n.parse::<usize>().ok().filter(|_| canonical)?)
        })
        .map(|w| w.url.clone())
        .ok_or_else(|| ApiError::not_found("webhook endpoint"))?;
    let now = state.gateway.clock.now();
    let was_disabled = state
        .gateway
        .store
        .events()
        .enable(&client, &url, now)
        .await?;
    tracing::info!(operator = %op.name, %client, endpoint = %crate::refunds::outgoing::shown_url(&url), was_disabled, "webhook endpoint enabled");
    Ok(Json(ActionResult {
        result: if was_disabled {
            "endpoint_enabled"
        } else {
            "endpoint_was_enabled"
        }
        .into(),
    }))
}

pub fn routes() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/v1/events", get(feed))
        .route("/v1/operator/webhook-deliveries", get(deliveries))
        .route("/v1/operator/events/{id}/redeliver", post(redeliver))
        .route(
            "/v1/operator/webhook-endpoints/{client}/{n}/enable",
            post(enable_endpoint),
        )
}
