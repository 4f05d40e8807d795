//! The refund API through its public HTTP interface, on SQLite and Postgres.

use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

async fn full_and_partial_refunds(db: Db) {
    let app = spawn_app(&fresh_db(db).await).await;
    let full = app.pockyt_sale("10.00", "USD", "success").await;
    let r = app
        .post_refund(Some("full"), &pockyt_refund(&full, "10.00"))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["status"], "succeeded");
    assert_eq!(r.body["amount"], "10.00");
    assert_eq!(r.body["livemode"], false);
    assert!(r.body["id"].as_str().unwrap().starts_with("rf_"));
    assert!(r.body["provider_refund_id"].is_string());

    let sale = app.pockyt_sale("10.00", "USD", "success").await;
    for (i, amount) in ["4.00", "5.99", "0.01"].iter().enumerate() {
        let r = app
            .post_refund(Some(&format!("part-{i}")), &pockyt_refund(&sale, amount))
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        assert_eq!(r.body["status"], "succeeded");
    }
    let over = app
        .post_refund(Some("one-cent-more"), &pockyt_refund(&sale, "0.01"))
        .await;
    assert_eq!(over.status, 422, "{}", over.text);
    assert_eq!(over.body["code"], "amount_exceeds_refundable");
    assert_eq!(over.headers["content-type"], "application/problem+json");
    assert_eq!(app.list_all().await.len(), 4, "a refusal leaves no record");
    let tx = sale["transactionNo"].as_str().unwrap();
    assert_eq!(app.sandbox().refunded_total("pockyt", tx), Some(1000));

    // Pay10, partial then over.
    let p = app.pay10_sale("100.00", "AED").await;
    let r = app
        .post_refund(Some("p10-a"), &pay10_refund(&p, "60.00"))
        .await;
    r.assert_refund(201, "succeeded");
    assert_eq!(r.body["provider_code"], "000");
    let r = app
        .post_refund(Some("p10-b"), &pay10_refund(&p, "40.01"))
        .await;
    // Pay10 has no sale query: the provider itself refuses the excess (013).
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["status"], "failed");
    assert_eq!(r.body["failure_code"], "amount_exceeds_refundable");
    let r = app
        .post_refund(Some("p10-c"), &pay10_refund(&p, "40.00"))
        .await;
    assert_eq!(
        r.body["status"], "succeeded",
        "a failed refund releases its reservation"
    );
    app.stop().await;
}

async fn sale_not_success_and_currency_mismatch_are_refused(db: Db) {
    let app = spawn_app(&fresh_db(db).await).await;
    let pending = app.pockyt_sale("10.00", "USD", "pending").await;
    let r = app
        .post_refund(Some("a"), &pockyt_refund(&pending, "1.00"))
        .await;
    r.assert_problem(422, "transaction_not_refundable");

    let sale = app.pockyt_sale("10.00", "USD", "success").await;
    let mut body = pockyt_refund(&sale, "1.00");
    body["currency"] = json!("EUR");
    let r = app.post_refund(Some("b"), &body).await;
    r.assert_problem(422, "currency_mismatch");

    let r = app
        .post_refund(Some("c"), &json!({"provider":"pockyt","transaction_no":"123456789012345678","amount":"1.00","currency":"USD"}))
        .await;
    r.assert_problem(422, "transaction_not_found");

    // Pay10: the first refund fixes the sale's currency for the gateway.
    let p = app.pay10_sale("100.00", "AED").await;
    assert_eq!(
        app.post_refund(Some("d"), &pay10_refund(&p, "1.00"))
            .await
            .body["status"],
        "succeeded"
    );
    let mut body = pay10_refund(&p, "1.00");
    body["currency"] = json!("USD");
    let r = app.post_refund(Some("e"), &body).await;
    r.assert_problem(422, "currency_mismatch");
    assert_eq!(app.list_all().await.len(), 1);
    assert_eq!(app.sandbox().stats().pockyt_refunds_applied, 0);
    app.stop().await;
}

async fn decline_timeout_and_503(db: Db) {
    let app = spawn_app(&fresh_db(db).await).await;
    let sale = app.pockyt_sale("10.00", "USD", "success").await;
    let r = app
        .post_refund(Some("decline"), &pockyt_refund(&sale, "0.93"))
        .await;
    r.assert_refund(201, "failed");
    assert_eq!(r.body["failure_code"], "provider_declined");
    assert_eq!(r.body["provider_code"], "000040");

    let r = app
        .post_refund(Some("unavailable"), &pockyt_refund(&sale, "0.92"))
        .await;
    r.assert_refund(201, "pending");

    let r = app
        .post_refund(Some("timeout"), &pockyt_refund(&sale, "0.91"))
        .await;
    r.assert_refund(201, "pending");
    // The sandbox did apply it; reconciliation finds it and settles it once.
    let id = r.body["id"].as_str().unwrap().to_string();
    let done = app
        .wait_for(&id, Duration::from_secs(15), |b| b["status"] != "pending")
        .await;
    assert_eq!(done["status"], "succeeded");

    let p = app.pay10_sale("100.00", "AED").await;
    let r = app
        .post_refund(Some("p-decline"), &pay10_refund(&p, "0.93"))
        .await;
    assert_eq!(
        (r.body["status"].as_str(), r.body["provider_code"].as_str()),
        (Some("failed"), Some("004")),
        "{}",
        r.text
    );
    let r = app
        .post_refund(Some("p-503"), &pay10_refund(&p, "0.92"))
        .await;
    assert_eq!(r.body["status"], "pending", "{}", r.text);
    let r = app
        .post_refund(Some("p-timeout"), &pay10_refund(&p, "0.91"))
        .await;
    assert_eq!(r.body["status"], "pending", "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_string();
    let done = app
        .wait_for(&id, Duration::from_secs(15), |b| b["status"] != "pending")
        .await;
    assert_eq!(done["status"], "succeeded");
    let stats = app.sandbox().stats();
    assert_eq!(
        (stats.pockyt_refunds_applied, stats.pay10_refunds_applied),
        (1, 1),
        "each timeout refund applied exactly once"
    );
    app.stop().await;
}

async fn concurrent_refunds_never_exceed_the_sale(db: Db) {
    let app = spawn_app(&fresh_db(db).await).await;
    let sale = app.pockyt_sale("10.00", "USD", "success").await;
    let body = pockyt_refund(&sale, "1.00");
    let results = futures_join(20, |i| {
        let (app, body) = (&app, body.clone());
        async move { app.post_refund(Some(&format!("c-{i}")), &body).await }
    })
    .await;
    let ok = results
        .iter()
        .filter(|r| r.status == 201 && r.body["status"] == "succeeded")
        .count();
    let refused = results
        .iter()
        .filter(|r| r.status == 422 && r.body["code"] == "amount_exceeds_refundable")
        .count();
    assert_eq!(
        (ok, refused),
        (10, 10),
        "{:?}",
        results.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(app.sandbox().stats().pockyt_refunds_applied, 10);
    assert_eq!(
        app.sandbox()
            .refunded_total("pockyt", sale["transactionNo"].as_str().unwrap()),
        Some(1000)
    );
    assert_eq!(app.list_all().await.len(), 10);
    app.stop().await;
}

async fn concurrent_duplicates_call_the_provider_once(db: Db) {
    let app = spawn_app(&fresh_db(db).await).await;
    let sale = app.pockyt_sale("10.00", "USD", "success").await;
    let body = pockyt_refund(&sale, "2.00");
    let results = futures_join(20, |_| {
        let (app, body) = (&app, body.clone());
        async move { app.post_refund(Some("same-key"), &body).await }
    })
    .await;
    let ids: std::collections::BTreeSet<String> = results
        .iter()
        .filter(|r| r.status == 201)
        .map(|r| r.body["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 1, "all successful answers are the same refund");
    assert!(results
        .iter()
        .all(|r| r.status == 201 || (r.status == 409 && r.body["code"] == "request_in_progress")));
    assert_eq!(
        results
            .iter()
            .filter(|r| r.status == 201 && r.headers.get("idempotent-replayed").is_none())
            .count(),
        1
    );
    assert_eq!(app.sandbox().stats().pockyt_refunds_applied, 1);
    assert_eq!(app.list_all().await.len(), 1);
    app.stop().await;
}

async fn idempotency_rules(db: Db) {
    let app = spawn_app(&fresh_db(db).await).await;
    let sale = app.pockyt_sale("10.00", "USD", "success").await;
    let body = pockyt_refund(&sale, "1.00");
    let first = app.post_refund(Some("k1"), &body).await;
    assert_eq!(first.status, 201);
    let again = app.post_refund(Some("k1"), &body).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(
        again.text, first.text,
        "a replay is the stored response, byte for byte"
    );
    // "1.0" is the same amount as "1.00": the same request.
    let mut same = body.clone();
    same["amount"] = json!("1.0");
    assert_eq!(app.post_refund(Some("k1"), &same).await.status, 201);
    let mut different = body.clone();
    different["amount"] = json!("2.00");
    let r = app.post_refund(Some("k1"), &different).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (422, Some("idempotency_key_mismatch"))
    );

    // refund_reference behaves like a key, and is unique per client.
    let mut with_ref = pockyt_refund(&sale, "1.50");
    with_ref["refund_reference"] = json!("pos-42");
    let a = app.post_refund(None, &with_ref).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let b = app.post_refund(None, &with_ref).await;
    assert_eq!(
        (b.status, b.headers.get("idempotent-replayed").is_some()),
        (201, true)
    );
    assert_eq!(a.body["id"], b.body["id"]);
    let mut other_amount = with_ref.clone();
    other_amount["amount"] = json!("1.60");
    assert_eq!(
        app.post_refund(Some("k9"), &other_amount).await.body["code"],
        "idempotency_key_mismatch"
    );

    // Neither key nor reference: refused, nothing written.
    let r = app.post_refund(None, &body).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (400, Some("idempotency_key_required"))
    );
    assert_eq!(app.sandbox().stats().pockyt_refunds_applied, 2);

    // Keys are scoped to the client: another client's "k1" is a new refund.
    let other = app
        .send(
            app.http
                .post(format!("{}/v1/refunds", app.base))
                .bearer_auth(OTHER_KEY)
                .header("Idempotency-Key", "k1")
                .json(&body),
        )
        .await;
    assert_eq!(other.status, 201);
    assert!(other.headers.get("idempotent-replayed").is_none());
    assert_ne!(other.body["id"], first.body["id"]);
    // ... and a client never sees another's refund.
    let id = first.body["id"].as_str().unwrap();
    let peek = app
        .send(
            app.http
                .get(format!("{}/v1/refunds/{id}", app.base))
                .bearer_auth(OTHER_KEY),
        )
        .await;
    assert_eq!(
        (peek.status, peek.body["code"].as_str()),
        (404, Some("not_found"))
    );
    app.stop().await;
}

async fn bad_inputs_are_refused_and_change_nothing(db: Db) {
    let app = spawn_app(&fresh_db(db).await).await;
    let sale = app.pockyt_sale("10.00", "USD", "success").await;
    let tx = sale["transactionNo"].as_str().unwrap();
    let url = format!("{}/v1/refunds", app.base);
    let json_req = |body: String| {
        app.http
            .post(&url)
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .header("Idempotency-Key", ulid::Ulid::new().to_string())
            .body(body)
    };
    let good = |amount: Value| {
        json!({"provider":"pockyt","transaction_no":tx,"amount":amount,"currency":"USD"})
            .to_string()
    };
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        ("malformed json", json_req("{\"provider\":".into()), 400, "malformed_json"),
        ("not an object", json_req("[1,2]".into()), 400, "malformed_json"),
        ("float amount", json_req(good(json!(1.5))), 400, "invalid_request"),
        ("zero", json_req(good(json!("0"))), 400, "invalid_request"),
        ("negative", json_req(good(json!("-1"))), 400, "invalid_request"),
        ("too precise", json_req(good(json!("1.001"))), 400, "invalid_request"),
        ("exponent", json_req(good(json!("1e2"))), 400, "invalid_request"),
        ("wrong type", json_req(json!({"provider":"pockyt","transaction_no":12,"amount":"1.00","currency":"USD"}).to_string()), 400, "invalid_request"),
        ("unknown provider", json_req(json!({"provider":"paypal","transaction_no":tx,"amount":"1.00","currency":"USD"}).to_string()), 400, "invalid_request"),
        ("unknown currency", json_req(json!({"provider":"pockyt","transaction_no":tx,"amount":"1.00","currency":"ZZZ"}).to_string()), 400, "invalid_request"),
        ("missing fields", json_req(json!({"provider":"pockyt"}).to_string()), 400, "invalid_request"),
        ("pay10 without reference", json_req(json!({"provider":"pay10","transaction_no":"1879120328175249","amount":"1.00","currency":"AED"}).to_string()), 400, "invalid_request"),
        ("unknown field", json_req(json!({"provider":"pockyt","transaction_no":tx,"amount":"1.00","currency":"USD","amout":"1"}).to_string()), 400, "invalid_request"),
        ("bad email", json_req(json!({"provider":"pockyt","transaction_no":tx,"amount":"1.00","currency":"USD","receipt_email":"nope"}).to_string()), 400, "invalid_request"),
        ("1 MiB body", json_req(format!("{{\"reason\":\"{}\"}}", "x".repeat(1 << 20))), 413, "payload_too_large"),
        ("wrong content type", app.http.post(&url).bearer_auth(KEY).header("content-type", "text/plain").header("Idempotency-Key", "ct").body(good(json!("1.00"))), 415, "unsupported_media_type"),
        ("no key", app.http.post(&url).header("content-type", "application/json").body(good(json!("1.00"))), 401, "unauthorized"),
        ("invalid key", app.http.post(&url).bearer_auth("sk_wrong").header("content-type", "application/json").body(good(json!("1.00"))), 401, "unauthorized"),
        ("bad idempotency key", app.http.post(&url).bearer_auth(KEY).header("content-type", "application/json").header("Idempotency-Key", "has space").body(good(json!("1.00"))), 400, "invalid_idempotency_key"),
        ("wrong method", app.http.delete(&url).bearer_auth(KEY), 405, "method_not_allowed"),
        ("unknown route", app.http.get(format!("{}/v2/nothing", app.base)), 404, "not_found"),
        ("bad list limit", app.http.get(format!("{url}?limit=500")).bearer_auth(KEY), 400, "invalid_request"),
    ];
    for (name, req, status, code) in cases {
        let r = app.send(req).await;
        assert_eq!(r.status, status, "{name}: {}", r.text);
        assert_eq!(r.body["code"], code, "{name}: {}", r.text);
        assert_eq!(
            r.headers["content-type"], "application/problem+json",
            "{name}"
        );
        assert!(r.headers.contains_key("x-request-id"), "{name}");
    }
    let r = app
        .post_refund(
            Some("x"),
            &json!({"provider":"pockyt","transaction_no":tx,"amount":"1.001","currency":"USD"}),
        )
        .await;
    assert!(
        r.body["errors"]["amount"].is_array(),
        "field errors name the field: {}",
        r.text
    );
    assert!(
        app.list_all().await.is_empty(),
        "no refund written by a rejected request"
    );
    assert_eq!(app.sandbox().stats().pockyt_refunds_applied, 0);
    assert_eq!(app.get("/healthz").await.status, 200);
    assert_eq!(app.get("/readyz").await.status, 200);
    app.stop().await;
}

async fn list_filters_and_pagination(db: Db) {
    let app = spawn_app(&fresh_db(db).await).await;
    let sale = app.pockyt_sale("10.00", "USD", "success").await;
    let mut ids = vec![];
    for i in 0..5 {
        let mut body = pockyt_refund(&sale, "1.00");
        body["refund_reference"] = json!(format!("ref-{i}"));
        ids.push(
            app.post_refund(None, &body).await.body["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    app.post_refund(Some("d"), &pockyt_refund(&sale, "0.93"))
        .await;
    let page1 = app.get("/v1/refunds?limit=2").await;
    assert_eq!(page1.body["has_more"], true);
    let data = page1.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let last = data[1]["id"].as_str().unwrap();
    let page2 = app
        .get(&format!("/v1/refunds?limit=10&starting_after={last}"))
        .await;
    assert_eq!(page2.body["data"].as_array().unwrap().len(), 4);
    assert_eq!(page2.body["has_more"], false);
    assert_eq!(
        app.get("/v1/refunds?status=failed").await.body["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let by_ref = app.get("/v1/refunds?refund_reference=ref-3").await;
    assert_eq!(by_ref.body["data"][0]["id"], ids[3].as_str());
    let tx = sale["transactionNo"].as_str().unwrap();
    assert_eq!(
        app.get(&format!("/v1/refunds?transaction_no={tx}&provider=pockyt"))
            .await
            .body["data"]
            .as_array()
            .unwrap()
            .len(),
        6
    );
    assert_eq!(
        app.get("/v1/refunds?created_from=2999-01-01T00:00:00Z")
            .await
            .body["data"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(app.get("/v1/refunds?status=weird").await.status, 400);
    let one = app.get(&format!("/v1/refunds/{}", ids[0])).await;
    assert_eq!(
        (one.status, one.body["id"].as_str()),
        (200, Some(ids[0].as_str()))
    );
    assert_eq!(app.get("/v1/refunds/rf_nope").await.status, 404);
    app.stop().await;
}

async fn pending_then_success_by_sync(db: Db) {
    let app = spawn_app(&fresh_db(db).await).await;
    let sale = app.pockyt_sale("10.00", "USD", "success").await;
    let r = app
        .post_refund(Some("p"), &pockyt_refund(&sale, "0.94"))
        .await;
    assert_eq!(r.body["status"], "pending", "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_string();
    let done = app
        .wait_for(&id, Duration::from_secs(10), |b| b["status"] == "succeeded")
        .await;
    assert_eq!(done["status"], "succeeded");
    let p = app.pay10_sale("10.00", "AED").await;
    let r = app
        .post_refund(Some("p10"), &pay10_refund(&p, "0.94"))
        .await;
    assert_eq!(r.body["status"], "pending", "{}", r.text);
    let id = r.body["id"].as_str().unwrap();
    // The provider settles it after a moment; a sync then reports it.
    let synced = eventually(Duration::from_secs(5), || async {
        let s = app.get(&format!("/v1/refunds/{id}?sync=true")).await;
        (s.body["status"] == "succeeded", s)
    })
    .await;
    assert_eq!(synced.body["status"], "succeeded", "{}", synced.text);
    app.stop().await;
}

async fn restart_keeps_every_acknowledged_refund(db: Db) {
    let url = fresh_db(db).await;
    let app = spawn_app(&url).await;
    let sale = app.pockyt_sale("10.00", "USD", "success").await;
    let mut acknowledged = vec![];
    for i in 0..5 {
        let r = app
            .post_refund(Some(&format!("r{i}")), &pockyt_refund(&sale, "1.00"))
            .await;
        assert_eq!(r.status, 201);
        acknowledged.push(r.body);
    }
    app.stop().await;
    let again = spawn_app(&url).await;
    for a in &acknowledged {
        let r = again
            .get(&format!("/v1/refunds/{}", a["id"].as_str().unwrap()))
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body["amount"], a["amount"]);
        assert_eq!(r.body["status"], a["status"]);
    }
    again.stop().await;
}

async fn refunds_made_outside_the_gateway_count(db: Db) {
    use refund_gateway::money::{Currency, Minor};
    use refund_gateway::providers::pockyt::{PockytAccount, PockytClient};
    use refund_gateway::providers::{http_client, HttpSettings, RefundCall};
    use refund_gateway::sandbox::demo_credentials as creds;
    use refund_gateway::types::Outcome;
    let app = spawn_app(&fresh_db(db).await).await;
    let sale = app.pockyt_sale("10.00", "USD", "success").await;
    let tx = sale["transactionNo"].as_str().unwrap();
    // 6.00 refunded elsewhere (another system, the provider's dashboard).
    let elsewhere = PockytClient::new(
        http_client(HttpSettings::default()),
        PockytAccount {
            base_url: format!("{}/sandbox/pockyt", app.base),
            merchant_no: creds::POCKYT_MERCHANT_NO.into(),
            store_no: creds::POCKYT_STORE_NO.into(),
            token: secrecy::SecretString::from(creds::POCKYT_TOKEN.to_string()),
        },
    );
    let outside = elsewhere
        .refund(&RefundCall {
            refund_id: "outside".into(),
            provider_reference: "OUTSIDE00001".into(),
            transaction_no: Some(tx.into()),
            reference: None,
            amount: Minor::new(600).unwrap(),
            currency: Currency::from_code("USD").unwrap(),
            settle_currency: None,
        })
        .await;
    assert_eq!(outside.outcome, Outcome::Succeeded);
    let r = app
        .post_refund(Some("too-much"), &pockyt_refund(&sale, "5.00"))
        .await;
    r.assert_problem(422, "amount_exceeds_refundable");
    assert!(
        r.body["detail"].as_str().unwrap().contains("4.00 USD left"),
        "{}",
        r.text
    );
    let r = app
        .post_refund(Some("the-rest"), &pockyt_refund(&sale, "4.00"))
        .await;
    assert_eq!(r.body["status"], "succeeded", "{}", r.text);
    assert_eq!(app.sandbox().refunded_total("pockyt", tx), Some(1000));
    assert_eq!(
        app.sandbox().stats().pockyt_refunds_applied,
        2,
        "the refused request never reached the provider"
    );
    app.stop().await;
}

/// Runs `n` futures concurrently and collects their outputs in order.
async fn futures_join<F, Fut, T>(n: usize, f: F) -> Vec<T>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let futs: Vec<_> = (0..n).map(f).collect();
    let mut out = Vec::with_capacity(n);
    let results = join_all(futs).await;
    out.extend(results);
    out
}

async fn join_all<Fut: std::future::Future>(futs: Vec<Fut>) -> Vec<Fut::Output> {
    let mut pinned: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<Fut::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (i, f) in pinned.iter_mut().enumerate() {
            if outputs[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => outputs[i] = Some(v),
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every future completed"))
        .collect()
}

both_backends!(
    full_and_partial_refunds,
    sale_not_success_and_currency_mismatch_are_refused,
    decline_timeout_and_503,
    concurrent_refunds_never_exceed_the_sale,
    concurrent_duplicates_call_the_provider_once,
    idempotency_rules,
    bad_inputs_are_refused_and_change_nothing,
    list_filters_and_pagination,
    pending_then_success_by_sync,
    restart_keeps_every_acknowledged_refund,
    refunds_made_outside_the_gateway_count,
);

/// Two gateway instances (separate pools, no shared memory) on one Postgres
/// and one sandbox: competing and duplicate requests spread across both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_postgres() {
    if !crate::common::postgres_or_skip("two_instances_share_one_postgres").await {
        return;
    }
    let (sandbox_url, sandbox) = spawn_sandbox(fast_sandbox()).await;
    let db = fresh_db(Db::Postgres).await;
    let mut apps = vec![];
    for _ in 0..2 {
        let mut c = test_config(&db);
        if let Some(d) = c.demo.as_mut() {
            d.external_sandbox = Some(sandbox_url.clone());
        }
        apps.push(spawn_with(c).await);
    }
    let http = reqwest::Client::new();
    let sale = sale_at(
        &http,
        &sandbox_url,
        "pockyt",
        json!({"amount": "10.00", "currency": "USD"}),
    )
    .await;
    let body = pockyt_refund(&sale, "1.00");
    let results = futures_join(20, |i| {
        let (app, body) = (&apps[i % 2], body.clone());
        async move { app.post_refund(Some(&format!("compete-{i}")), &body).await }
    })
    .await;
    let ok = results.iter().filter(|r| r.status == 201).count();
    let refused = results
        .iter()
        .filter(|r| r.status == 422 && r.body["code"] == "amount_exceeds_refundable")
        .count();
    assert_eq!((ok, refused), (10, 10));
    assert_eq!(sandbox.stats().pockyt_refunds_applied, 10);
    assert_eq!(
        sandbox.refunded_total("pockyt", sale["transactionNo"].as_str().unwrap()),
        Some(1000)
    );

    let sale = sale_at(
        &http,
        &sandbox_url,
        "pockyt",
        json!({"amount": "10.00", "currency": "USD"}),
    )
    .await;
    let body = pockyt_refund(&sale, "3.00");
    let results = futures_join(20, |i| {
        let (app, body) = (&apps[i % 2], body.clone());
        async move { app.post_refund(Some("one-key"), &body).await }
    })
    .await;
    assert!(results.iter().all(|r| r.status == 201 || r.status == 409));
    let ids: std::collections::BTreeSet<_> = results
        .iter()
        .filter(|r| r.status == 201)
        .map(|r| r.body["id"].clone().to_string())
        .collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(
        sandbox.stats().pockyt_refunds_applied,
        11,
        "one provider call for twenty duplicates"
    );
    for app in apps {
        app.stop().await;
    }
}
