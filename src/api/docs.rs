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
        super::operator::events,
        super::operator::sync,
        super::operator::resolve,
        super::ipn::pockyt,
        super::ipn::pockyt_account,
        super::ipn::pay10,
        super::ipn::pay10_account,
        super::health::healthz,
        super::health::readyz,
        metrics,
    ),
    components(schemas(crate::refunds::RefundObject, super::refunds::CreateRefundBody, super::refunds::RefundList, super::error::Problem, super::ipn::PockytIpn, super::ipn::Pay10Webhook, super::refunds::RefundEvents, super::refunds::RefundEventObject, super::operator::ReviewQueue, super::operator::ResolveBody)),
    modifiers(&BearerAuth),
    tags(
        (name = "refunds", description = "Create, read and list refunds; receipts"),
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

/// The document as committed in `openapi/refund-gateway.json`.
pub fn document() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    let mut s = doc.to_pretty_json().expect("the document serialises");
    s.push('\n');
    s
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
