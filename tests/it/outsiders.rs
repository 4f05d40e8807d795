//! What outsiders broke in the third round, each as the class it belongs to:
//! text that reaches a provider's delimited string, a provider's signed word
//! that contradicts a final refund, "the provider never got it" decided too
//! early, a sale's refunds counted by our records instead of the provider's,
//! one process's clock deciding for another, and the edges around them.

use std::time::Duration;

use crate::common::*;
use refund_gateway::providers::pockyt::crypto as pk;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const OPS_KEY: &str = "ok_ops_outsiders";

fn with_operator(c: &mut refund_gateway::config::Config) {
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&Sha256::digest(OPS_KEY.as_bytes()));
    c.operators.push(refund_gateway::config::Operator {
        name: "ops-outsiders".into(),
        key_hashes: vec![hash],
    });
}

/// An operator's call with the outsiders' operator key.
async fn as_operator(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Resp {
    let mut req = app
        .http
        .request(method, format!("{}{path}", app.base))
        .bearer_auth(OPS_KEY);
    if let Some(b) = body {
        req = req.json(&b);
    }
    app.send(req).await
}

/// A test app with the outsiders' operator and no background reconciliation.
async fn app_with_operator(
    db: Db,
    tweak: impl FnOnce(&mut refund_gateway::config::Config),
) -> TestApp {
    let mut c = test_config(&fresh_db(db).await);
    with_operator(&mut c);
    c.reconcile_interval = Duration::from_secs(3600);
    tweak(&mut c);
    spawn_with(c).await
}

/// Our reference for a refund at the provider (what its webhooks name).
async fn our_reference(app: &TestApp, id: &str) -> String {
    stored_row(app, id).await.provider_reference
}

/// The refund kept `status` and is flagged with a reason that says `says`.
async fn assert_flagged(app: &TestApp, id: &str, status: &str, says: &str) -> Value {
    let now = app.get(&format!("/v1/refunds/{id}")).await;
    assert_eq!(
        now.body["status"], status,
        "never changed by it: {}",
        now.text
    );
    let reason = now.body["review_reason"].as_str().unwrap_or_default();
    assert!(reason.contains(says), "{says}: {}", now.text);
    now.body
}

async fn events(app: &TestApp, id: &str) -> Vec<Value> {
    let r = app.get(&format!("/v1/refunds/{id}/events")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["data"].as_array().cloned().unwrap_or_default()
}

/// Every sale id that could carry a pair, a delimiter or a control
/// character into a provider's string is refused with a field error, and
/// nothing is recorded or sent. The outsiders' own input first, then the
/// other members of its class.
async fn a_sale_id_that_could_rewrite_a_provider_message_is_refused(db: Db) {
    let app = spawn_app(&fresh_db(db).await).await;
    let sale = app.pay10_sale("100.00", "AED").await;
    let order_id = sale["ORDER_ID"].as_str().unwrap();
    let pg_ref = sale["PG_REF_NUM"].as_str().unwrap();
    let pay10_cases = [
        ("reference", format!("{order_id}~AMOUNT=9000")),
        ("reference", format!("{order_id}=1")),
        ("reference", format!("{order_id} ~")),
        ("reference", format!("{order_id},AMOUNT=9000")),
        ("reference", format!("{{{order_id}}}")),
        ("reference", format!("{order_id}&x")),
        ("reference", "Ä".repeat(3)),
        ("reference", "A".repeat(51)),
        ("transaction_no", format!("{pg_ref}~AMOUNT=9000")),
        ("transaction_no", "12ab".to_string()),
    ];
    for (i, (field, value)) in pay10_cases.iter().enumerate() {
        let mut body = json!({"provider": "pay10", "transaction_no": pg_ref, "reference": order_id, "amount": "1.00", "currency": "AED"});
        body[field] = json!(value);
        let r = app.post_refund(Some(&format!("p{i}")), &body).await;
        r.assert_problem(400, "invalid_request");
        assert!(r.body["errors"][field].is_array(), "{value}: {}", r.text);
    }
    let pockyt = app.pockyt_sale("100.00", "USD", "success").await;
    let tx = pockyt["transactionNo"].as_str().unwrap();
    let pockyt_cases = [
        ("reference", "ref&refundAmount=90.00".to_string()),
        ("reference", "ref=1".to_string()),
        ("reference", "two words".to_string()),
        ("reference", "naïve".to_string()),
        ("transaction_no", format!("{tx}&refundAmount=90.00")),
        ("transaction_no", format!("{tx}=")),
    ];
    for (i, (field, value)) in pockyt_cases.iter().enumerate() {
        let mut body = json!({"provider": "pockyt", "amount": "1.00", "currency": "USD"});
        body[field] = json!(value);
        let r = app.post_refund(Some(&format!("k{i}")), &body).await;
        r.assert_problem(400, "invalid_request");
        assert!(r.body["errors"][field].is_array(), "{value}: {}", r.text);
    }
    assert!(app.list_all().await.is_empty(), "nothing recorded");
    assert_eq!(app.sandbox().refunded_total("pay10", pg_ref), Some(0));
    assert_eq!(app.sandbox().refunded_total("pockyt", tx), Some(0));
    let stats = app.sandbox().stats();
    assert_eq!(
        (stats.pockyt_refunds_applied, stats.pay10_refunds_applied),
        (0, 0),
        "nothing sent"
    );

    // What the provider allows still works: Pay10's own `PAY10_…` ids, and
    // ids with the spaces a barcode scanner adds around them.
    let ok = app
        .post_refund(
            Some("ok-pay10"),
            &json!({"provider": "pay10", "transaction_no": format!(" {pg_ref} "), "reference": format!("{order_id} "), "amount": "1.00", "currency": "AED"}),
        )
        .await;
    ok.assert_refund(201, "succeeded");
    assert_eq!(ok.body["transaction_no"], pg_ref);
    assert_eq!(app.sandbox().refunded_total("pay10", pg_ref), Some(100));
    app.stop().await;
}

/// A Pockyt IPN signed with the account's token, by the published rules.
fn signed_ipn(fields: &[(&str, &str)]) -> String {
    let mut f: Vec<(String, String)> = fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let sign = pk::sign(fields.iter().copied(), creds::POCKYT_TOKEN).unwrap();
    f.push(("verifySign".into(), sign));
    serde_urlencoded::to_string(&f).unwrap()
}

async fn post_ipn(app: &TestApp, body: String) -> Resp {
    app.send(
        app.http
            .post(format!("{}/ipn/pockyt", app.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body),
    )
    .await
}

mod creds {
    pub const POCKYT_TOKEN: &str = "5cbfb079f15b150122261c8537086d77a";
}

/// The provider's signed word that a final refund was made for another
/// amount or currency (or another sale) never changes the refund, and never
/// goes unnoticed: the refund is flagged with what differs, in its history.
async fn a_signed_report_that_contradicts_a_final_refund_flags_it(db: Db) {
    let app = spawn_app(&fresh_db(db).await).await;
    let sale = app.pockyt_sale("100.00", "USD", "success").await;
    let tx = sale["transactionNo"].as_str().unwrap();
    let r = app
        .post_refund(Some("one"), &pockyt_refund(&sale, "1.00"))
        .await;
    r.assert_refund(201, "succeeded");
    let id = r.body["id"].as_str().unwrap().to_string();
    let reference = our_reference(&app, &id).await;
    let provider_id = r.body["provider_refund_id"].as_str().unwrap().to_string();
    let cases = [
        ("90.00", "USD", "success", "amount 90.00"),
        ("1.00", "EUR", "success", "currency EUR"),
    ];
    for (amount, currency, status, says) in cases {
        let body = signed_ipn(&[
            ("transactionNo", tx),
            ("refundTransactionNo", &provider_id),
            ("refundReference", &reference),
            ("refundAmount", amount),
            ("currency", currency),
            ("status", status),
        ]);
        let resp = post_ipn(&app, body).await;
        resp.assert_problem(422, "webhook_rejected");
        let now = app.get(&format!("/v1/refunds/{id}")).await;
        assert_eq!(now.body["status"], "succeeded", "never changed by it");
        assert_eq!(now.body["amount"], "1.00");
        let reason = now.body["review_reason"].as_str().unwrap_or_default();
        assert!(reason.contains(says), "{says}: {}", now.text);
        let history = events(&app, &id).await;
        assert!(
            history.iter().any(|e| e["detail"]
                .as_str()
                .is_some_and(|d| d.contains("flagged for review") && d.contains(says))),
            "{history:?}"
        );
    }
    // It is in the review queue, for a person to look at.
    let queue = app.get("/v1/refunds?needs_review=true").await;
    assert!(queue.text.contains(&id), "{}", queue.text);
    app.stop().await;
}

/// One rule decides "the provider provably never got it", for every path:
/// an operator cannot fail a refund the provider may still be processing
/// (409, with when it becomes possible), however the provider answers now.
async fn an_operator_cannot_fail_a_refund_the_provider_may_still_apply(db: Db) {
    let app = app_with_operator(db, |c| {
        if let Some(d) = c.demo.as_mut() {
            d.sandbox_slow_response = Duration::from_secs(3);
        }
    })
    .await;
    let sale = app.pockyt_sale("10.95", "USD", "success").await;
    // 95: the provider takes it, applies it 3 s later, answers after our timeout.
    let a = app
        .post_refund(Some("a"), &pockyt_refund(&sale, "10.95"))
        .await;
    a.assert_refund(201, "pending");
    let id = a.body["id"].as_str().unwrap().to_string();
    // Past our send deadline; the provider has no record of it yet.
    let r = as_operator(
        &app,
        reqwest::Method::POST,
        &format!("/v1/operator/refunds/{id}/resolve"),
        Some(json!({"status": "failed", "note": "provider dashboard shows nothing"})),
    )
    .await;
    r.assert_problem(409, "resolution_refused");
    let detail = r.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("may still be processing") && detail.contains("s from now"),
        "{detail}"
    );
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry > 800, "the default window is 15 minutes: {retry}");
    // The provider applies it after all; the refund is never called failed.
    let done = eventually(Duration::from_secs(20), || async {
        let path = format!("/v1/operator/refunds/{id}/sync");
        let s = as_operator(&app, reqwest::Method::POST, &path, None).await;
        (s.body["status"] == "succeeded", s.body)
    })
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let b = app
        .post_refund(Some("b"), &pockyt_refund(&sale, "10.95"))
        .await;
    b.assert_problem(422, "amount_exceeds_refundable");
    assert_eq!(
        app.sandbox()
            .refunded_total("pockyt", sale["transactionNo"].as_str().unwrap()),
        Some(1095),
        "refunded once"
    );
    app.stop().await;
}

/// What the provider lists as applied on a sale counts against it, even a
/// refund we recorded `failed`; the contradiction is flagged at once.
async fn a_listed_refund_we_recorded_failed_still_counts_against_the_sale(db: Db) {
    let mut c = test_config(&fresh_db(db).await);
    // A window shorter than the provider's processing: the automatic rule
    // fails the refund before the provider applies it.
    c.reconcile_not_found_after = Duration::from_millis(100);
    c.reconcile_not_found_checks = 1;
    if let Some(d) = c.demo.as_mut() {
        d.sandbox_slow_response = Duration::from_secs(3);
    }
    let app = spawn_with(c).await;
    let sale = app.pockyt_sale("10.95", "USD", "success").await;
    let tx = sale["transactionNo"].as_str().unwrap();
    let a = app
        .post_refund(Some("a"), &pockyt_refund(&sale, "10.95"))
        .await;
    a.assert_refund(201, "pending");
    let id = a.body["id"].as_str().unwrap().to_string();
    let failed = app
        .wait_for(&id, Duration::from_secs(10), |b| b["status"] == "failed")
        .await;
    assert_eq!(
        failed["failure_code"], "not_received_by_provider",
        "{failed}"
    );
    // Then the provider applies it.
    eventually(Duration::from_secs(10), || async {
        (app.sandbox().refunded_total("pockyt", tx) == Some(1095), ())
    })
    .await;
    let b = app
        .post_refund(Some("b"), &pockyt_refund(&sale, "10.95"))
        .await;
    b.assert_problem(422, "amount_exceeds_refundable");
    assert_eq!(
        app.sandbox().refunded_total("pockyt", tx),
        Some(1095),
        "never refunded twice"
    );
    let a_now = app.get(&format!("/v1/refunds/{id}")).await;
    assert_eq!(
        a_now.body["status"], "failed",
        "a final status never changes"
    );
    let reason = a_now.body["review_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("lists this refund as applied") && reason.contains("recorded failed"),
        "{}",
        a_now.text
    );
    app.stop().await;
}

/// Two gateways on one database, one on a host whose clock is an hour
/// ahead: both go by the database's clock, so the skewed one neither sees
/// another's send deadline as long past nor fails its refund early.
async fn a_process_with_a_skewed_clock_goes_by_the_databases(db: Db) {
    let url = fresh_db(db).await;
    let (sandbox_url, sandbox) = spawn_sandbox({
        let mut s = fast_sandbox();
        s.slow_response = Duration::from_secs(3);
        s
    })
    .await;
    let config = |interval: Duration| {
        let mut c = test_config(&url);
        if let Some(d) = c.demo.as_mut() {
            d.external_sandbox = Some(sandbox_url.clone());
        }
        refund_gateway::demo_accounts(&mut c, &sandbox_url);
        c.reconcile_interval = interval;
        c.reconcile_not_found_checks = 1;
        c
    };
    let a = spawn_with(config(Duration::from_secs(3600))).await;
    let b = spawn_with(config(Duration::from_secs(3600))).await;
    // b's host clock is an hour ahead (as a process started there reads it).
    b.gateway.clock.misset_host_clock(3_600_000);
    assert!(b.gateway.clock.now().ms_since(a.gateway.clock.now()) > 3_500_000);
    let skew = b.gateway.sync_clock().await.unwrap();
    assert!((skew - 3_600_000).abs() < 1_000, "measured {skew}");
    assert!(
        b.gateway.clock.now().ms_since(a.gateway.clock.now()).abs() < 1_000,
        "one clock after the sync"
    );

    let sale = sale_at(
        &a.http,
        &sandbox_url,
        "pockyt",
        json!({"amount": "10.95", "currency": "USD", "status": "success"}),
    )
    .await;
    let r = a
        .post_refund(Some("x"), &pockyt_refund(&sale, "10.95"))
        .await;
    r.assert_refund(201, "pending");
    let id = r.body["id"].as_str().unwrap().to_string();
    // b reconciles while the provider has no record of it yet: it stays
    // pending (the provider's window is 15 minutes on the shared clock).
    for _ in 0..5 {
        b.gateway
            .store
            .check_now(std::slice::from_ref(&id), b.gateway.clock.now())
            .await
            .unwrap();
        b.gateway.reconcile_due().await.unwrap();
    }
    let now = b.get(&format!("/v1/refunds/{id}")).await;
    assert_eq!(now.body["status"], "pending", "{}", now.text);
    // Once the provider applies it, b learns it succeeded.
    eventually(Duration::from_secs(10), || async {
        let tx = sale["transactionNo"].as_str().unwrap();
        (sandbox.refunded_total("pockyt", tx) == Some(1095), ())
    })
    .await;
    b.gateway
        .store
        .check_now(std::slice::from_ref(&id), b.gateway.clock.now())
        .await
        .unwrap();
    b.gateway.reconcile_due().await.unwrap();
    let done = b.get(&format!("/v1/refunds/{id}")).await;
    assert_eq!(done.body["status"], "succeeded", "{}", done.text);
    a.stop().await;
    b.stop().await;
}

/// A provider's answer is read up to a bound: a huge one is an unreadable
/// answer (outcome unknown), never an allocation of its size.
async fn a_huge_provider_answer_is_not_read(db: Db) {
    use wiremock::matchers::any;
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let server = MockServer::start().await;
    // 8 MiB of a JSON string: far past the bound.
    let huge = format!(
        "{{\"ret_code\":\"000100\",\"ret_msg\":\"{}\"}}",
        "x".repeat(8 * 1024 * 1024)
    );
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).set_body_string(huge))
        .mount(&server)
        .await;
    let mut c = test_config(&fresh_db(db).await);
    if let Some(d) = c.demo.as_mut() {
        d.external_sandbox = Some(server.uri());
    }
    refund_gateway::demo_accounts(&mut c, &server.uri());
    let app = spawn_with(c).await;
    let r = app
        .post_refund(
            Some("huge"),
            &json!({"provider": "pockyt", "transaction_no": "297553638301777927", "amount": "1.00", "currency": "USD"}),
        )
        .await;
    r.assert_problem(503, "provider_unavailable");
    assert!(app.list_all().await.is_empty());
    app.stop().await;
}

/// Text that reaches the database is refused or stored alike on both
/// databases: a NUL in metadata is a field error, never a 500.
async fn text_the_database_cannot_hold_is_refused_alike(db: Db) {
    let app = spawn_app(&fresh_db(db).await).await;
    let sale = app.pockyt_sale("10.00", "USD", "success").await;
    let cases = [
        json!({"k": "a\u{0}b"}),
        json!({"a\u{0}": "v"}),
        json!({"line\nbreak": "v"}),
    ];
    for (i, metadata) in cases.into_iter().enumerate() {
        let mut body = pockyt_refund(&sale, "1.00");
        body["metadata"] = metadata;
        let r = app.post_refund(Some(&format!("m{i}")), &body).await;
        r.assert_problem(400, "invalid_request");
    }
    for (i, field) in ["reason", "refund_reference", "reference"]
        .iter()
        .enumerate()
    {
        let mut body = pockyt_refund(&sale, "1.00");
        body[field] = json!("a\u{0}b");
        let r = app.post_refund(Some(&format!("t{i}")), &body).await;
        r.assert_problem(400, "invalid_request");
    }
    // A webhook field with a NUL never verifies, and is never stored.
    let body = signed_ipn(&[("transactionNo", "1"), ("status", "success")])
        .replace("status=success", "status=succ%00ess");
    let r = post_ipn(&app, body).await;
    assert!(r.status == 400 || r.status == 401, "{}", r.text);
    // Newlines and tabs in metadata values are text like any other.
    let mut ok = pockyt_refund(&sale, "1.00");
    ok["metadata"] = json!({"note": "line one\nline\ttwo"});
    app.post_refund(Some("ok"), &ok)
        .await
        .assert_refund(201, "succeeded");
    app.stop().await;
}

/// Concurrent identical requests (one key, or one `refund_reference`) get
/// the refund or `409 request_in_progress`, never a 500: on Postgres the
/// outcome write that confirms a Pay10 sale took its locks in the other
/// order from a new refund's record and deadlocked.
async fn concurrent_identical_requests_never_answer_500(db: Db) {
    let app = spawn_app(&fresh_db(db).await).await;
    for variant in ["key", "reference"] {
        let sale = app.pay10_sale("10.00", "AED").await;
        let mut body = pay10_refund(&sale, "6.00");
        if variant == "reference" {
            body["refund_reference"] = json!(format!("pos-{}", sale["ORDER_ID"].as_str().unwrap()));
        }
        let key =
            (variant == "key").then(|| format!("same-{}", sale["ORDER_ID"].as_str().unwrap()));
        let answers =
            futures_util::future::join_all((0..20).map(|_| app.post_refund(key.as_deref(), &body)))
                .await;
        let mut statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
        statuses.sort_unstable();
        assert!(
            statuses.iter().all(|s| *s == 201 || *s == 409),
            "{variant}: {statuses:?} {:?}",
            answers
                .iter()
                .find(|r| r.status != 201 && r.status != 409)
                .map(|r| &r.text)
        );
        // Retried once the first is done: the refund, exactly one of it.
        let done = eventually(Duration::from_secs(20), || async {
            let r = app.post_refund(key.as_deref(), &body).await;
            (r.status == 201, r)
        })
        .await;
        done.assert_refund(201, "succeeded");
        let pg = sale["PG_REF_NUM"].as_str().unwrap();
        assert_eq!(
            app.sandbox().refunded_total("pay10", pg),
            Some(600),
            "{variant}"
        );
    }
    app.stop().await;
}

/// A signed webhook naming one of our refunds but stating another refund's
/// provider id, another sale reference, another settle currency, or a
/// transaction that is not a refund: rejected, the refund flagged, its
/// status unchanged.
async fn a_signed_webhook_naming_another_id_or_sale_flags_the_refund(db: Db) {
    let app = spawn_app(&fresh_db(db).await).await;
    let sale_a = app.pockyt_sale("100.00", "USD", "success").await;
    let sale_b = app.pockyt_sale("100.00", "USD", "success").await;
    let x = app
        .post_refund(Some("x"), &pockyt_refund(&sale_a, "1.00"))
        .await;
    x.assert_refund(201, "succeeded");
    let x_pid = x.body["provider_refund_id"].as_str().unwrap().to_string();
    let x_id = x.body["id"].as_str().unwrap().to_string();
    // 92: the provider never got it; it stays pending.
    let y = app
        .post_refund(Some("y"), &pockyt_refund(&sale_b, "2.92"))
        .await;
    y.assert_refund(201, "pending");
    let y_id = y.body["id"].as_str().unwrap().to_string();
    let y_ref = our_reference(&app, &y_id).await;
    let tx_b = sale_b["transactionNo"].as_str().unwrap();
    let cases: [(&str, &str, &str); 2] = [
        ("refundTransactionNo", x_pid.as_str(), "which is refund"),
        ("settleCurrency", "EUR", "settle currency EUR"),
    ];
    for (field, value, says) in cases {
        let mut fields = vec![
            ("transactionNo", tx_b),
            ("refundReference", y_ref.as_str()),
            ("refundAmount", "2.92"),
            ("currency", "USD"),
            ("status", "success"),
        ];
        fields.push((field, value));
        let r = post_ipn(&app, signed_ipn(&fields)).await;
        r.assert_problem(422, "webhook_rejected");
        let now = assert_flagged(&app, &y_id, "pending", says).await;
        assert!(now["provider_refund_id"].is_null(), "{field}: {now}");
    }
    assert!(
        app.get(&format!("/v1/refunds/{x_id}")).await.body["review_reason"].is_null(),
        "the other refund is untouched"
    );
    // Without a refund amount the event is no evidence: the status is asked.
    let r = post_ipn(
        &app,
        signed_ipn(&[
            ("transactionNo", tx_b),
            ("refundReference", y_ref.as_str()),
            ("amount", "100.00"),
            ("status", "success"),
        ]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        app.get(&format!("/v1/refunds/{y_id}")).await.body["status"],
        "pending"
    );

    // Pay10: another sale's ORDER_ID, or a transaction that is not a refund.
    let p10 = app.pay10_sale("100.00", "AED").await;
    let p = app
        .post_refund(Some("p"), &pay10_refund(&p10, "2.92"))
        .await;
    p.assert_refund(201, "pending");
    let p_id = p.body["id"].as_str().unwrap().to_string();
    let p_ref = our_reference(&app, &p_id).await;
    let pg = p10["PG_REF_NUM"].as_str().unwrap();
    for (field, value, says) in [
        (
            "ORDER_ID",
            "PAY10_OTHER0001",
            "sale reference PAY10_OTHER0001",
        ),
        ("TXNTYPE", "SALE", "transaction type SALE"),
    ] {
        let mut fields = vec![
            ("PG_REF_NUM", pg),
            ("REFUND_ORDER_ID", p_ref.as_str()),
            ("AMOUNT", "292"),
            ("RESPONSE_CODE", "000"),
            ("STATUS", "Captured"),
        ];
        if field == "ORDER_ID" {
            fields.push(("TXNTYPE", "REFUND"));
        }
        fields.push((field, value));
        let mut obj: serde_json::Map<String, Value> = fields
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let hash = refund_gateway::providers::pay10::crypto::hash(
            fields.iter().copied(),
            "1518b6433cc24337",
        )
        .unwrap();
        obj.insert("HASH".into(), json!(hash));
        let r = app
            .send(
                app.http
                    .post(format!("{}/ipn/pay10", app.base))
                    .json(&Value::Object(obj)),
            )
            .await;
        r.assert_problem(422, "webhook_rejected");
        assert_flagged(&app, &p_id, "pending", says).await;
    }
    app.stop().await;
}

/// Headers and keys given twice are refused, not read first-wins.
async fn a_key_given_twice_is_refused(db: Db) {
    let app = spawn_app(&fresh_db(db).await).await;
    let sale = app.pockyt_sale("10.00", "USD", "success").await;
    let body = serde_json::to_string(&pockyt_refund(&sale, "1.00")).unwrap();
    let post = |headers: &[(&str, String)], body: String| {
        let mut req = app
            .http
            .post(format!("{}/v1/refunds", app.base))
            .header("content-type", "application/json")
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        app.send(req)
    };
    let bearer = format!("Bearer {KEY}");
    post(
        &[
            ("Authorization", bearer.clone()),
            ("Idempotency-Key", "A-tx".into()),
            ("Idempotency-Key", "B-tx".into()),
        ],
        body.clone(),
    )
    .await
    .assert_problem(400, "invalid_idempotency_key");
    post(
        &[
            ("Authorization", bearer.clone()),
            ("Authorization", "Bearer sk_other".into()),
            ("Idempotency-Key", "auth-twice".into()),
        ],
        body,
    )
    .await
    .assert_problem(401, "unauthorized");
    let r = post(
        &[
            ("Authorization", bearer),
            ("Idempotency-Key", "meta-twice".into()),
        ],
        format!(
            r#"{{"provider":"pockyt","transaction_no":"{}","amount":"1.00","currency":"USD","metadata":{{"a":"first","a":"second"}}}}"#,
            sale["transactionNo"].as_str().unwrap()
        ),
    )
    .await;
    r.assert_problem(400, "invalid_request");
    assert!(app.list_all().await.is_empty(), "nothing recorded");
    app.stop().await;
}

both_backends!(
    concurrent_identical_requests_never_answer_500,
    a_signed_webhook_naming_another_id_or_sale_flags_the_refund,
    a_key_given_twice_is_refused,
    a_sale_id_that_could_rewrite_a_provider_message_is_refused,
    a_signed_report_that_contradicts_a_final_refund_flags_it,
    an_operator_cannot_fail_a_refund_the_provider_may_still_apply,
    a_listed_refund_we_recorded_failed_still_counts_against_the_sale,
    a_huge_provider_answer_is_not_read,
    text_the_database_cannot_hold_is_refused_alike,
    every_endpoint_shows_one_refund_alike,
);

/// The clock rule concerns a database server that several hosts share: an
/// SQLite file is only ever shared by the processes of one host, whose clock
/// it is (see the README).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_process_with_a_skewed_clock_goes_by_the_databases() {
    if postgres_or_skip("a_process_with_a_skewed_clock_goes_by_the_databases").await {
        a_process_with_a_skewed_clock_goes_by_the_databases(Db::Postgres).await
    }
}

/// Bodies that trickle in (the round's attack: full headers, a large
/// `Content-Length`, then a byte now and then, to the unauthenticated IPN
/// route) hold no slot a POS needs: such a connection is not in progress
/// until its body is here, so it can be evicted, and its body must arrive
/// within the body deadline (408, closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_bodies_never_lock_out_a_pos() {
    use std::io::{Read, Write};
    let mut c = test_config(&fresh_db(Db::Sqlite).await);
    c.conn_limits.max_connections = 8;
    c.conn_limits.body_read_timeout = Duration::from_secs(2);
    let app = spawn_with(c).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // 16 attackers (twice the cap), each reconnecting as soon as it is cut off.
    let mut attackers = vec![];
    for _ in 0..16 {
        let (addr, stop) = (addr.clone(), stop.clone());
        attackers.push(std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let Ok(mut s) = std::net::TcpStream::connect(&addr) else {
                    continue;
                };
                let head = "POST /ipn/pockyt HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100000\r\n\r\n";
                if s.write_all(head.as_bytes()).is_err() {
                    continue;
                }
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    if s.write_all(b"a").is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let sale = app.pockyt_sale("10.00", "USD", "success").await;
    for i in 0..5 {
        let health = fresh
            .get(format!("{}/healthz", app.base))
            .send()
            .await
            .expect("the health probe gets in");
        assert_eq!(health.status().as_u16(), 200);
        let r = fresh
            .post(format!("{}/v1/refunds", app.base))
            .bearer_auth(KEY)
            .header("Idempotency-Key", format!("under-attack-{i}"))
            .json(&pockyt_refund(&sale, "1.00"))
            .send()
            .await
            .expect("the POS gets in");
        assert_eq!(r.status().as_u16(), 201, "{:?}", r.text().await);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for a in attackers {
        let _ = a.join();
    }
    // Alone, a trickling body is answered 408 once the deadline passes.
    let addr2 = addr.clone();
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(&addr2).unwrap();
        s.write_all(b"POST /ipn/pockyt HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
            .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).to_string()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    app.stop().await;
}

/// The refund object is one rendering, the same from every endpoint at the
/// same moment; a time bound given to the second covers that second.
async fn every_endpoint_shows_one_refund_alike(db: Db) {
    let app = app_with_operator(db, |c| c.review_after = Duration::from_millis(1)).await;
    let sale = app.pockyt_sale("10.00", "USD", "success").await;
    // 94: pending at first.
    let r = app
        .post_refund(Some("p"), &pockyt_refund(&sale, "0.94"))
        .await;
    r.assert_refund(201, "pending");
    let id = r.body["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let one = app.get(&format!("/v1/refunds/{id}")).await.body;
    let listed = app.get("/v1/refunds?needs_review=true").await.body["data"][0].clone();
    let mut queued = as_operator(&app, reqwest::Method::GET, "/v1/operator/review", None)
        .await
        .body["data"][0]
        .clone();
    let mut found = as_operator(
        &app,
        reqwest::Method::GET,
        &format!("/v1/operator/refunds/{id}"),
        None,
    )
    .await
    .body;
    // An operator sees whose it is, besides the same object.
    for o in [&mut queued, &mut found] {
        let m = o.as_object_mut().unwrap();
        assert_eq!(m.remove("client"), Some(json!("demo")));
        assert_eq!(m.remove("account"), Some(json!("pockyt-sandbox")));
    }
    assert_eq!(one, listed, "GET and the list");
    assert_eq!(one, queued, "GET and the operator queue");
    assert_eq!(one, found, "GET and the operator's GET");
    assert_eq!(one["review_reason"], "pending for more than 1 millisecond");
    // A status query answers the same object a read right after shows.
    let synced = app.get(&format!("/v1/refunds/{id}?sync=true")).await.body;
    let after_sync = app.get(&format!("/v1/refunds/{id}")).await.body;
    assert_eq!(synced, after_sync, "sync and GET");

    // `created_to` given as the very `created_at` shown covers that second.
    let shown = one["created_at"].as_str().unwrap();
    let secs = time::OffsetDateTime::parse(shown, &time::format_description::well_known::Rfc3339)
        .unwrap()
        .unix_timestamp();
    for bound in [shown.to_string(), secs.to_string()] {
        let q = format!("/v1/refunds?created_from={bound}&created_to={bound}");
        let found = app.get(&q.replace('+', "%2B")).await;
        assert_eq!(found.status, 200, "{}", found.text);
        assert_eq!(
            found.body["data"][0]["id"],
            id.as_str(),
            "{bound}: {}",
            found.text
        );
    }
    app.stop().await;
}

/// What the demo's sandbox acknowledged is on disk before the process exits
/// on SIGTERM: a sale created just before the stop is there after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_sale_survives_a_clean_stop() {
    let db = fresh_db(Db::Sqlite).await;
    let http = reqwest::Client::new();
    // Each process binds a port of its own choosing and says which on its
    // first line (a port picked here and dropped could be taken meanwhile).
    let start = || {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_refund-gateway"))
            .args(["--listen", "127.0.0.1:0", "--database-url", &db])
            .env_remove("REFUND_GATEWAY_CONFIG")
            .env_remove("REFUND_GATEWAY_SANDBOX_URL")
            .env("REFUND_GATEWAY_DEMO_API_KEY", KEY)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut lines = std::io::BufReader::new(out).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            // Keep reading so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let first = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the gateway prints its address");
        let base = first
            .strip_prefix("refund-gateway on ")
            .unwrap_or_else(|| panic!("first line names the address: {first}"))
            .trim()
            .to_string();
        (child, base)
    };
    let up = |http: reqwest::Client, base: String| async move {
        eventually(Duration::from_secs(30), || async {
            let ok = http
                .get(format!("{base}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            (ok, ok)
        })
        .await
    };
    let (mut child, base) = start();
    assert!(up(http.clone(), base.clone()).await, "the gateway starts");
    let sale = sale_at(
        &http,
        &base,
        "pockyt",
        json!({"amount": "10.00", "currency": "USD", "status": "success"}),
    )
    .await;
    // SIGTERM right after the 201.
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "a clean stop: {status:?}");
    let (mut child, base) = start();
    assert!(up(http.clone(), base.clone()).await, "the gateway restarts");
    let r = http
        .post(format!("{base}/v1/refunds"))
        .bearer_auth(KEY)
        .header("Idempotency-Key", "after-restart")
        .json(&pockyt_refund(&sale, "1.00"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    assert_eq!(status, 201, "the sale is still there: {text}");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(format!(
        "{}.sandbox.json",
        db.trim_start_matches("sqlite://")
    ));
}

/// A full disk under SQLite is the database being unavailable: `503` with
/// `Retry-After` (never a `500` or "corrupt"), `/readyz` says not ready, and
/// both recover once there is room again. Needs a small tmpfs of its own
/// (root); skipped, loudly, where it cannot mount one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_a_503_and_not_ready_until_there_is_room() {
    use std::io::Write;
    let dir = std::env::temp_dir().join(format!("rg-full-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).unwrap();
    struct Mount(std::path::PathBuf);
    impl Drop for Mount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&dir)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        let _ = std::fs::remove_dir_all(&dir);
        eprintln!("\n*** SKIPPED a_full_disk_is_a_503_and_not_ready_until_there_is_room: cannot mount a tmpfs here (needs root) ***");
        return;
    }
    let _mount = Mount(dir.clone());
    let app = spawn_app(&format!("sqlite://{}/full.db", dir.display())).await;
    let sale = app.pockyt_sale("1000.00", "USD", "success").await;
    assert_eq!(app.get("/readyz").await.status, 200);
    // Fill the disk.
    let filler = dir.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.flush();
    }
    let mut refused = None;
    for i in 0..200 {
        let r = app
            .post_refund(Some(&format!("full-{i}")), &pockyt_refund(&sale, "0.01"))
            .await;
        if r.status == 503 {
            refused = Some(r);
            break;
        }
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let r = refused.expect("a write fails once the disk is full");
    r.assert_problem(503, "database_unavailable");
    assert!(r.headers.contains_key("retry-after"), "{:?}", r.headers);
    let ready = app.get("/readyz").await;
    ready.assert_problem(503, "database_unavailable");
    // Room again: ready, and refunds are taken.
    std::fs::remove_file(&filler).unwrap();
    let back = eventually(Duration::from_secs(10), || async {
        let s = app.get("/readyz").await.status;
        (s == 200, s)
    })
    .await;
    assert_eq!(back, 200);
    app.post_refund(Some("after"), &pockyt_refund(&sale, "0.01"))
        .await
        .assert_refund(201, "succeeded");
    app.stop().await;
}
