//! Prometheus metrics: one process-wide recorder, rendered at `/metrics`.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The process's recorder (installed on first use).
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("buckets are not empty")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!(
                    "a metrics recorder was already installed; /metrics may be incomplete"
                );
            }
            describe();
            handle
        })
        .clone()
}

/// The `# HELP` line of every series (each series the gateway records is
/// described here; a test checks `/metrics` has no series without one).
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "refund_gateway_http_requests_total",
        "HTTP requests answered, by route template, method and status"
    );
    describe_histogram!(
        "refund_gateway_http_request_duration_seconds",
        Unit::Seconds,
        "Time to answer an HTTP request, by route template and method"
    );
    describe_histogram!(
        "refund_gateway_provider_call_duration_seconds",
        Unit::Seconds,
        "Provider calls (sale_lookup, refund, refund_status) and their duration, by provider and outcome"
    );
    describe_counter!(
        "refund_gateway_refunds_created_total",
        "Refunds recorded by POST /v1/refunds, by provider and first status"
    );
    describe_counter!(
        "refund_gateway_idempotent_replays_total",
        "Repeated requests answered with the stored response"
    );
    describe_counter!(
        "refund_gateway_webhooks_total",
        "Provider webhooks received, by provider and what became of them"
    );
    describe_gauge!(
        "refund_gateway_reconciliation_pending",
        "Refunds still pending (the provider's final word not yet known)"
    );
    describe_gauge!(
        "refund_gateway_reconciliation_oldest_pending_age_seconds",
        Unit::Seconds,
        "Age of the oldest pending refund"
    );
    describe_gauge!(
        "refund_gateway_review_queue",
        "Refunds that need a person: flagged, or pending past review_after_ms"
    );
    describe_counter!(
        "refund_gateway_connections_shed_total",
        "Connections refused with 503 at the connection cap while every open one was busy"
    );
    describe_histogram!(
        "refund_gateway_webhook_delivery_attempt_duration_seconds",
        Unit::Seconds,
        "Outgoing webhook attempts to POS endpoints and their duration, by outcome (delivered, retry, failed, gone)"
    );
    describe_gauge!(
        "refund_gateway_webhook_oldest_undelivered_age_seconds",
        Unit::Seconds,
        "Age of the oldest event not yet delivered to every endpoint (0: none waiting)"
    );
    describe_gauge!(
        "refund_gateway_webhook_endpoints_disabled",
        "POS webhook endpoints disabled by a 410 Gone (an operator re-enables them)"
    );
    describe_gauge!(
        "refund_gateway_host_clock_skew_seconds",
        Unit::Seconds,
        "This host's wall clock minus the database's, as last measured (the gateway goes by the database's)"
    );
    describe_gauge!(
        "refund_gateway_reconciliation_report_last_run_timestamp_seconds",
        Unit::Seconds,
        "When this process last finished a daily reconciliation report, by account (Unix time)"
    );
    describe_gauge!(
        "refund_gateway_reconciliation_report_discrepancies",
        "Lines of the last reconciliation report this process made, by account and kind"
    );
}

/// Counts HTTP requests and their latency by route template, method and status.
pub async fn track_http(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("refund_gateway_http_requests_total", "route" => route.clone(), "method" => method.clone(), "status" => status).increment(1);
    metrics::histogram!("refund_gateway_http_request_duration_seconds", "route" => route, "method" => method).record(start.elapsed().as_secs_f64());
    resp
}

pub fn provider_call(
    provider: &'static str,
    operation: &'static str,
    outcome: &'static str,
    started: Instant,
) {
    metrics::histogram!(
        "refund_gateway_provider_call_duration_seconds",
        "provider" => provider, "operation" => operation, "outcome" => outcome
    )
    .record(started.elapsed().as_secs_f64());
}

pub fn refund_created(provider: &str, status: &str) {
    metrics::counter!("refund_gateway_refunds_created_total", "provider" => provider.to_string(), "status" => status.to_string()).increment(1);
}

pub fn idempotent_replay() {
    metrics::counter!("refund_gateway_idempotent_replays_total").increment(1);
}

pub fn webhook(provider: &str, result: &'static str) {
    metrics::counter!("refund_gateway_webhooks_total", "provider" => provider.to_string(), "result" => result).increment(1);
}

pub fn reconciliation(pending: i64, oldest_age_seconds: f64) {
    metrics::gauge!("refund_gateway_reconciliation_pending").set(pending as f64);
    metrics::gauge!("refund_gateway_reconciliation_oldest_pending_age_seconds")
        .set(oldest_age_seconds);
}

/// A connection refused at the cap because every open one was busy.
pub fn connection_shed() {
    metrics::counter!("refund_gateway_connections_shed_total").increment(1);
}

/// Refunds that need a person (flagged, or pending past `review_after_ms`).
pub fn review_queue(n: i64) {
    metrics::gauge!("refund_gateway_review_queue").set(n as f64);
}

/// This host's wall clock minus the database's, as last measured (the
/// gateway goes by the database's clock; a large value means the host's
/// time sync is broken).
pub fn clock_skew(skew_ms: i64) {
    metrics::gauge!("refund_gateway_host_clock_skew_seconds").set(skew_ms as f64 / 1000.0);
}

/// One outgoing webhook attempt and what it came to.
pub fn webhook_delivery(outcome: &'static str, took: std::time::Duration) {
    metrics::histogram!("refund_gateway_webhook_delivery_attempt_duration_seconds", "outcome" => outcome)
        .record(took.as_secs_f64());
}

/// The outgoing webhooks' backlog: the oldest undelivered event's age, and
/// the endpoints disabled by a 410.
pub fn webhook_backlog(oldest_age_seconds: f64, disabled: usize) {
    metrics::gauge!("refund_gateway_webhook_oldest_undelivered_age_seconds")
        .set(oldest_age_seconds);
    metrics::gauge!("refund_gateway_webhook_endpoints_disabled").set(disabled as f64);
}

/// A reconciliation report finished: when, and its lines by kind.
pub fn reconciliation_done(account: &str, counts: &std::collections::BTreeMap<String, i64>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    metrics::gauge!("refund_gateway_reconciliation_report_last_run_timestamp_seconds", "account" => account.to_string())
        .set(now);
    for (kind, n) in counts {
        metrics::gauge!("refund_gateway_reconciliation_report_discrepancies", "account" => account.to_string(), "kind" => kind.clone())
            .set(*n as f64);
    }
}
