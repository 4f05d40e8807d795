//! The OpenAPI 3.1 document (generated from the handlers' annotations), served
//! at `/openapi.json` with Swagger UI at `/docs`, and `/metrics`.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "refund-gateway",
        description = "One refund API for in-store POS systems over Pockyt and Pay10. Every error is application/problem+json (RFC 9457) with a stable `code`.",
        license(name = "MIT")
    ),
    paths(
        super::refunds::create,
        super::refunds::list,
        super::refunds::get_one,
        super::refunds::receipt,
        super::refunds::events,
        super::operator::review,
        super::operator::list,
        super::operator::get_one,
        super::operator::acknowledge_outside,
        super::operator::events,
        super::operator::sync,
        super::operator::resolve,
        super::events::feed,
        super::events::deliveries,
        super::events::redeliver,
        super::events::enable_endpoint,
        super::reconciliations::run,
        super::reconciliations::list,
        super::reconciliations::one,
        super::sales::get,
        super::ipn::pockyt,
        super::ipn::pockyt_account,
        super::ipn::pay10,
        super::ipn::pay10_account,
        super::health::healthz,
        super::health::readyz,
        metrics,
    ),
    components(schemas(crate::refunds::RefundObject, super::refunds::CreateRefundBody, super::refunds::RefundList, super::error::Problem, super::ipn::PockytIpn, super::ipn::Pay10Webhook, super::refunds::RefundEvents, super::refunds::RefundEventObject, super::operator::ReviewQueue, super::operator::OperatorRefundObject, super::operator::OperatorRefundList, super::operator::AcknowledgeBody, super::operator::OutsideRefundObject, super::operator::ResolveBody, super::events::EventObject, super::events::EventList, super::events::DeliveryList, super::events::DeliveryObject, super::events::AttemptObject, super::events::ActionResult, super::reconciliations::ReconciliationObject, super::reconciliations::ReconciliationList, super::reconciliations::ItemObject, super::reconciliations::RunBody, crate::refunds::books::ReportSummary, crate::refunds::books::CurrencyTotals, super::sales::SaleObject, super::sales::SaleRefundObject, WebhookEventBody)),
    modifiers(&BearerAuth),
    tags(
        (name = "refunds", description = "Create, read and list refunds; receipts"),
        (name = "events", description = "Your refund events: the feed, and the webhooks the gateway sends you (Standard Webhooks)"),
        (name = "webhooks", description = "Provider IPNs (authenticated by the provider's signature)"),
        (name = "operations", description = "Health, readiness and metrics"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The POS client's API key"))
                    .build(),
            ),
        );
    }
}

/// The document as committed in `openapi/refund-gateway.json`, with the
/// events the gateway sends to POS endpoints as OpenAPI 3.1 `webhooks`
/// (utoipa has no attribute for them; they are added here).
pub fn document() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    let mut v = serde_json::to_value(&doc).expect("the document serialises");
    let header = |name: &str, description: &str| {
        serde_json::json!({"name": name, "in": "header", "required": true,
            "description": description, "schema": {"type": "string"}})
    };
    let mut hooks = serde_json::Map::new();
    for kind in crate::types::DomainEvent::ALL {
        hooks.insert(kind.as_str().to_string(), serde_json::json!({"post": {
            "summary": format!("`{}`, sent to your endpoint", kind.as_str()),
            "description": "Standard Webhooks 1.0: verify `webhook-signature` with your `whsec_` secret (any Standard Webhooks library), de-duplicate on `webhook-id`, answer 2xx within 15 s. Retried on Standard Webhooks' schedule otherwise; `410 Gone` disables the endpoint.",
            "tags": ["events"],
            "parameters": [
                header("webhook-id", "The event id (`evt_...`): the same on every attempt"),
                header("webhook-timestamp", "The attempt's Unix seconds"),
                header("webhook-signature", "`v1,<base64 HMAC-SHA256 of id.timestamp.body>`, one per configured secret, space-separated"),
            ],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/WebhookEventBody"}}}},
            "responses": {
                "2XX": {"description": "Delivered"},
                "410": {"description": "Gone: the endpoint is disabled until an operator enables it"},
                "default": {"description": "Not delivered: retried on the schedule"},
            },
        }}));
    }
    v["webhooks"] = serde_json::Value::Object(hooks);
    let mut s = serde_json::to_string_pretty(&v).expect("the document serialises");
    s.push('\n');
    s
}

/// The body of every webhook the gateway sends (see `webhooks`).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // describes the wire format; `refunds::outgoing::body` writes it
pub struct WebhookEventBody {
    /// `refund.created`, `refund.succeeded`, `refund.failed` or `refund.review_needed`.
    #[schema(rename = "type", example = "refund.succeeded")]
    kind: String,
    /// RFC 3339, to the millisecond: when the change happened.
    timestamp: String,
    /// The refund as the change left it.
    data: crate::refunds::RefundObject,
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics",
    summary = "Metrics for Prometheus",
    description = "Prometheus text exposition: requests, provider calls, refunds created, webhooks, pending refunds and the review queue. Every series has a `# HELP` line. For your monitoring, not for a POS.", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    if let Ok((pending, oldest)) = state.gateway.pending_summary().await {
        let age = oldest
            .map(|t| state.gateway.clock.now().since(t).as_secs_f64())
            .unwrap_or(0.0);
        crate::metrics::reconciliation(pending, age);
    }
    if let Ok(n) = state.gateway.review_count().await {
        crate::metrics::review_queue(n);
    }
    if let Err(e) = state.gateway.webhook_metrics().await {
        tracing::warn!(error = %e, "webhook metrics could not be read");
    }
    let handle = crate::metrics::handle();
    handle.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
}

/// Metrics, the OpenAPI document and its Swagger UI.
pub fn routes() -> axum::Router<AppState> {
    use axum::routing::get;
    axum::Router::new()
        .route("/metrics", get(metrics))
        .route(
            "/openapi.json",
            get(|| async {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    document(),
                )
            }),
        )
        .merge(
            utoipa_swagger_ui::SwaggerUi::new("/docs")
                .config(utoipa_swagger_ui::Config::from("/openapi.json")),
        )
}
