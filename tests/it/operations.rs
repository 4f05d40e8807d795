//! Operators' surface: the OpenAPI document, /docs, /metrics.

use crate::common::*;
use serde_json::Value;

#[test]
fn committed_openapi_matches_the_code() {
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/openapi/refund-gateway.json"
    ))
    .unwrap();
    assert!(
        committed == refund_gateway::api::docs::document(),
        "openapi/refund-gateway.json is stale: regenerate it with\n  cargo run -q -- openapi > openapi/refund-gateway.json"
    );
}

#[test]
fn openapi_documents_every_endpoint_and_error() {
    let doc: Value = serde_json::from_str(&refund_gateway::api::docs::document()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    // Every operation says what it is for, in a POS developer's words.
    for (path, ops) in paths {
        for (method, op) in ops.as_object().unwrap() {
            for field in ["summary", "description"] {
                let text = op[field].as_str().unwrap_or_default();
                assert!(
                    text.len() > 10 && !text.contains("serde"),
                    "{method} {path} has no useful {field}: {text:?}"
                );
            }
        }
    }
    for p in [
        "/v1/refunds",
        "/v1/refunds/{id}",
        "/v1/refunds/{id}/receipt",
        "/ipn/pockyt",
        "/ipn/pockyt/{account}",
        "/ipn/pay10",
        "/ipn/pay10/{account}",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(paths.contains_key(p), "{p} missing");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let create = &doc["paths"]["/v1/refunds"]["post"];
    assert!(create["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header"));
    assert!(create["responses"]["201"]["headers"]["Idempotent-Replayed"].is_object());
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            for (code, resp) in op["responses"].as_object().unwrap() {
                if code.starts_with('4') || code.starts_with('5') {
                    assert!(
                        resp["content"]["application/problem+json"]["schema"]["$ref"]
                            == "#/components/schemas/Problem",
                        "{method} {path} {code} is not documented as a problem"
                    );
                }
            }
        }
    }
    // Operation ids are unique (the OpenAPI validator and client generators need it).
    let mut ids = std::collections::BTreeSet::new();
    for item in paths.values() {
        for op in item.as_object().unwrap().values() {
            let id = op["operationId"].as_str().unwrap_or_default().to_string();
            assert!(ids.insert(id.clone()), "operationId {id} is not unique");
        }
    }
    // Each provider's webhook body is documented in its own shape.
    assert!(
        doc["paths"]["/ipn/pockyt"]["post"]["requestBody"]["content"]
            ["application/x-www-form-urlencoded"]
            .is_object()
    );
    assert!(
        doc["paths"]["/ipn/pay10"]["post"]["requestBody"]["content"]["application/json"]
            .is_object()
    );
    for schema in [
        "RefundObject",
        "CreateRefundBody",
        "RefundList",
        "Problem",
        "PockytIpn",
        "Pay10Webhook",
    ] {
        assert!(
            doc["components"]["schemas"][schema]["example"].is_object()
                || doc["components"]["schemas"][schema]["properties"].is_object(),
            "{schema}"
        );
    }
}

async fn served_docs_and_metrics(db: Db) {
    let app = spawn_app(&fresh_db(db).await).await;
    let served = app.get("/openapi.json").await;
    assert_eq!(served.status, 200);
    assert_eq!(served.text, refund_gateway::api::docs::document());
    let ui = app.send(app.http.get(format!("{}/docs/", app.base))).await;
    assert_eq!(ui.status, 200);
    assert!(
        ui.text.contains("swagger-ui"),
        "{}",
        &ui.text[..ui.text.len().min(300)]
    );
    let init = app
        .send(
            app.http
                .get(format!("{}/docs/swagger-initializer.js", app.base)),
        )
        .await;
    assert!(
        init.text.contains("/openapi.json"),
        "the UI loads our document: {}",
        init.text
    );

    let sale = app.pockyt_sale("10.00", "USD", "success").await;
    let body = pockyt_refund(&sale, "1.00");
    app.post_refund(Some("m1"), &body).await;
    app.post_refund(Some("m1"), &body).await;
    app.post_refund(Some("m2"), &pockyt_refund(&sale, "0.94"))
        .await;
    app.send(
        app.http
            .post(format!("{}/ipn/pockyt", app.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("a=1&verifySign=00"),
    )
    .await;
    let m = app
        .send(app.http.get(format!("{}/metrics", app.base)))
        .await;
    assert_eq!(m.status, 200);
    for series in [
        "refund_gateway_refunds_created_total{provider=\"pockyt\",status=\"succeeded\"}",
        "refund_gateway_provider_call_duration_seconds_bucket{provider=\"pockyt\",operation=\"refund\",outcome=\"succeeded\"",
        "refund_gateway_provider_call_duration_seconds_count{provider=\"pockyt\",operation=\"sale_lookup\",outcome=\"found\"}",
        "refund_gateway_webhooks_total{provider=\"pockyt\",result=\"invalid_signature\"}",
        "refund_gateway_reconciliation_pending",
        "refund_gateway_reconciliation_oldest_pending_age_seconds",
        "refund_gateway_idempotent_replays_total",
        "refund_gateway_http_requests_total{route=\"/v1/refunds\",method=\"POST\",status=\"201\"}",
        "refund_gateway_http_request_duration_seconds_bucket{route=\"/v1/refunds\",method=\"POST\"",
    ] {
        assert!(m.text.contains(series), "{series} missing from /metrics:\n{}", m.text);
    }
    // Every series says what it is.
    for line in m.text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split_whitespace().nth(2).unwrap();
        assert!(
            m.text.contains(&format!("# HELP {name} ")),
            "{name} has no # HELP line:\n{}",
            m.text
        );
    }
    app.stop().await;
}

both_backends!(served_docs_and_metrics);

/// Demo mode keeps its sandbox's sales beside its database: after a restart
/// the walk-through's sale still shows its refunds, and either of a sale's
/// ids finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_sandbox_state_survives_a_restart() {
    let db = fresh_db(Db::Sqlite).await;
    let app = spawn_app(&db).await;
    let sale = app.pockyt_sale("10.00", "USD", "success").await;
    let r = app
        .post_refund(Some("before-restart"), &pockyt_refund(&sale, "4.00"))
        .await;
    assert_eq!(r.body["status"], "succeeded", "{}", r.text);
    let tx = sale["transactionNo"].as_str().unwrap().to_string();
    let reference = sale["reference"].as_str().unwrap().to_string();
    // The state file is written shortly after the change.
    let file = format!("{}.sandbox.json", db.trim_start_matches("sqlite://"));
    eventually(std::time::Duration::from_secs(5), || async {
        let saved = std::fs::read_to_string(&file).unwrap_or_default();
        (saved.contains(&tx) && saved.contains("400"), ())
    })
    .await;
    app.stop().await;

    let app = spawn_app(&db).await;
    for id in [&tx, &reference] {
        let shown = app.get(&format!("/sandbox/pockyt/payments/{id}")).await;
        assert_eq!(
            (shown.status, shown.body["refunded"].as_str()),
            (200, Some("4.00")),
            "{id}: {}",
            shown.text
        );
    }
    let over = app
        .post_refund(Some("over"), &pockyt_refund(&sale, "7.00"))
        .await;
    assert_eq!(
        over.body["code"], "amount_exceeds_refundable",
        "{}",
        over.text
    );
    let rest = app
        .post_refund(Some("rest"), &pockyt_refund(&sale, "6.00"))
        .await;
    assert_eq!(rest.body["status"], "succeeded", "{}", rest.text);
    app.stop().await;
    let _ = std::fs::remove_file(&file);
}
