//! The daily reconciliation against the provider's books (issue 21): every
//! kind of line from a day made at the sandbox, refunds made elsewhere
//! counting against their sale, re-runs replacing the report, the CSV tying
//! out with the JSON, and one process of several running the daily job.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const OPS_KEY: &str = "ok_ops_books_test";

fn config(db_url: &str) -> refund_gateway::config::Config {
    let mut c = test_config(db_url);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&Sha256::digest(OPS_KEY.as_bytes()));
    c.operators.push(refund_gateway::config::Operator {
        name: "ops-books".into(),
        key_hashes: vec![hash],
    });
    c
}

async fn ops(app: &TestApp, req: reqwest::RequestBuilder) -> Resp {
    app.send(req.bearer_auth(OPS_KEY)).await
}

async fn run_report(app: &TestApp, account: &str, date: &str) -> Resp {
    ops(
        app,
        app.http
            .post(format!("{}/v1/operator/reconciliations", app.base))
            .json(&json!({"account": account, "date": date})),
    )
    .await
}

fn today() -> String {
    jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
        .to_string()
}

/// A refund through the gateway, settled `succeeded`.
async fn refund_of(app: &TestApp, body: &Value) -> Value {
    let r = app
        .post_refund(Some(&ulid::Ulid::new().to_string()), body)
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["status"], "succeeded", "{}", r.text);
    r.body
}

async fn sandbox(app: &TestApp, method: reqwest::Method, path: &str, body: Option<Value>) -> Resp {
    let mut req = app
        .http
        .request(method, format!("{}/sandbox/{path}", app.base));
    if let Some(b) = body {
        req = req.json(&b);
    }
    app.send(req).await
}

fn kinds(report: &Value) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for i in report["items"].as_array().unwrap() {
        out.entry(i["kind"].as_str().unwrap().to_string())
            .or_default()
            .push(i.clone());
    }
    out
}

fn minor(s: &str) -> i64 {
    let (a, b) = s.split_once('.').unwrap_or((s, "0"));
    a.parse::<i64>().unwrap() * 100 + format!("{b:0<2}")[..2].parse::<i64>().unwrap()
}

/// One day at the Pockyt sandbox, with every kind of line: a matched
/// refund, one the provider has forgotten, one it lists for another
/// amount, one it says failed, and one made in its dashboard.
async fn every_kind_of_line_from_a_sandbox_day(db: Db) {
    let app = spawn_with(config(&fresh_db(db).await)).await;
    let sale = |amount: &'static str| {
        let app = &app;
        async move { app.pockyt_sale(amount, "USD", "success").await }
    };
    let (s1, s2, s3, s4, s5) = (
        sale("10.00").await,
        sale("10.00").await,
        sale("10.00").await,
        sale("10.00").await,
        sale("10.00").await,
    );
    let matched = refund_of(&app, &pockyt_refund(&s1, "1.00")).await;
    let forgotten = refund_of(&app, &pockyt_refund(&s2, "2.00")).await;
    let misstated = refund_of(&app, &pockyt_refund(&s3, "3.00")).await;
    let failed_there = refund_of(&app, &pockyt_refund(&s4, "4.00")).await;
    let rid = |r: &Value| r["provider_refund_id"].as_str().unwrap().to_string();
    sandbox(
        &app,
        reqwest::Method::DELETE,
        &format!("pockyt/refunds/{}", rid(&forgotten)),
        None,
    )
    .await;
    let e = sandbox(
        &app,
        reqwest::Method::PATCH,
        &format!("pockyt/refunds/{}", rid(&misstated)),
        Some(json!({"amount": "3.50"})),
    )
    .await;
    assert_eq!(e.status, 200, "{}", e.text);
    sandbox(
        &app,
        reqwest::Method::PATCH,
        &format!("pockyt/refunds/{}", rid(&failed_there)),
        Some(json!({"status": "failed"})),
    )
    .await;
    // Made in the provider's dashboard: 6.00 of s5's 10.00.
    let outside = sandbox(
        &app,
        reqwest::Method::POST,
        &format!(
            "pockyt/payments/{}/refunds",
            s5["transactionNo"].as_str().unwrap()
        ),
        Some(json!({"amount": "6.00"})),
    )
    .await;
    assert_eq!(outside.status, 201, "{}", outside.text);

    let r = run_report(&app, "pockyt-sandbox", &today()).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["replaced"], false);
    assert_eq!(r.body["state"], "done", "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_string();
    let report = ops(
        &app,
        app.http
            .get(format!("{}/v1/operator/reconciliations/{id}", app.base)),
    )
    .await;
    assert_eq!(report.status, 200, "{}", report.text);
    let k = kinds(&report.body);
    let refund_ids = |kind: &str| -> Vec<String> {
        k.get(kind)
            .map(|v| {
                v.iter()
                    .filter_map(|i| i["refund_id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        refund_ids("matched"),
        [matched["id"].as_str().unwrap()],
        "{}",
        report.text
    );
    assert_eq!(
        refund_ids("only_at_gateway"),
        [forgotten["id"].as_str().unwrap()]
    );
    assert_eq!(
        refund_ids("amount_mismatch"),
        [misstated["id"].as_str().unwrap()]
    );
    assert_eq!(
        refund_ids("status_mismatch"),
        [failed_there["id"].as_str().unwrap()]
    );
    let elsewhere = &k["only_at_provider"];
    assert_eq!(elsewhere.len(), 1, "{}", report.text);
    assert_eq!(elsewhere[0]["provider_amount"], "6.00");
    assert_eq!(elsewhere[0]["transaction_no"], s5["transactionNo"]);
    let summary = &report.body["summary"];
    assert_eq!(summary["counts"]["matched"], 1);
    assert_eq!(report.body["discrepancies"], 4);
    // Totals: ours 1+2+3+4 succeeded; theirs 1 + 3.50 + 6.00 (4.00 failed, 2.00 gone).
    let usd = &summary["totals"][0];
    assert_eq!(
        (
            usd["currency"].as_str(),
            usd["gateway"].as_str(),
            usd["provider"].as_str(),
            usd["difference"].as_str()
        ),
        (Some("USD"), Some("10.00"), Some("10.50"), Some("0.50")),
        "{summary}"
    );

    // Every discrepancy is in the review queue, naming the report.
    let queue = ops(
        &app,
        app.http.get(format!("{}/v1/operator/review", app.base)),
    )
    .await;
    for r in [&forgotten, &misstated, &failed_there] {
        let item = queue.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["id"] == r["id"])
            .unwrap_or_else(|| panic!("{} not in the review queue: {}", r["id"], queue.text));
        assert!(
            item["review_reason"].as_str().unwrap().contains(&id),
            "{item}"
        );
    }
    assert!(!queue.text.contains(matched["id"].as_str().unwrap()));
    let outside_q = queue.body["outside_refunds"].as_array().unwrap();
    assert_eq!(outside_q.len(), 1, "{}", queue.text);
    assert_eq!(outside_q[0]["found_in"], id.as_str());
    assert_eq!(outside_q[0]["amount"], "6.00");
    // An operator who has looked at it takes it off the queue (with a note).
    let ack_path = format!(
        "{}/v1/operator/outside-refunds/pockyt-sandbox/{}/acknowledge",
        app.base,
        outside_q[0]["provider_refund_id"].as_str().unwrap()
    );
    ops(&app, app.http.post(&ack_path).json(&json!({"note": " "})))
        .await
        .assert_problem(400, "invalid_request");
    let ack = ops(
        &app,
        app.http
            .post(&ack_path)
            .json(&json!({"note": "customer confirmed the dashboard refund"})),
    )
    .await;
    assert_eq!(ack.status, 200, "{}", ack.text);
    let queue = ops(
        &app,
        app.http.get(format!("{}/v1/operator/review", app.base)),
    )
    .await;
    assert!(queue.body["outside_refunds"].as_array().unwrap().is_empty());
    ops(
        &app,
        app.http
            .post(format!(
                "{}/v1/operator/outside-refunds/pockyt-sandbox/nope/acknowledge",
                app.base
            ))
            .json(&json!({"note": "x"})),
    )
    .await
    .assert_problem(404, "not_found");

    // The refund made elsewhere counts against its sale from now on: even
    // when the provider no longer lists it, 4.01 of s5's 10.00 is refused.
    sandbox(
        &app,
        reqwest::Method::DELETE,
        &format!(
            "pockyt/refunds/{}",
            outside.body["refundTransactionNo"].as_str().unwrap()
        ),
        None,
    )
    .await;
    app.post_refund(
        Some(&ulid::Ulid::new().to_string()),
        &pockyt_refund(&s5, "4.01"),
    )
    .await
    .assert_problem(422, "amount_exceeds_refundable");
    // What is left on the sale says the same, and where each figure comes from.
    let left = app
        .get(&format!(
            "/v1/sales/pockyt/{}",
            s5["transactionNo"].as_str().unwrap()
        ))
        .await;
    assert_eq!(left.status, 200, "{}", left.text);
    assert_eq!(
        (
            &left.body["amount"],
            &left.body["amount_source"],
            &left.body["refunded_elsewhere"],
            &left.body["refundable"]
        ),
        (
            &json!("10.00"),
            &json!("provider"),
            &json!("6.00"),
            &json!("4.00")
        ),
        "{}",
        left.text
    );
    assert!(left.body["refunds"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["source"] == "reconciliation" && r["amount"] == "6.00"));
    refund_of(&app, &pockyt_refund(&s5, "4.00")).await;
    app.get("/v1/sales/pockyt/000000000000000001")
        .await
        .assert_problem(404, "not_found");
    app.get("/v1/sales/visa/1")
        .await
        .assert_problem(404, "not_found");

    // The CSV: every line, parsed by a standard reader; its sums are the JSON's totals.
    let csv = app
        .send(
            app.http
                .get(format!("{}/v1/operator/reconciliations/{id}", app.base))
                .header("accept", "text/csv")
                .bearer_auth(OPS_KEY),
        )
        .await;
    assert_eq!(csv.status, 200);
    assert!(csv.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let mut reader = csv::Reader::from_reader(csv.text.as_bytes());
    let headers = reader.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let (mut gateway, mut provider, mut lines) = (0i64, 0i64, 0usize);
    for rec in reader.records() {
        let rec = rec.unwrap();
        lines += 1;
        assert_eq!(&rec[col("report_id")], id.as_str());
        if &rec[col("gateway_status")] == "succeeded" {
            gateway += minor(&rec[col("gateway_amount")]);
        }
        if &rec[col("provider_outcome")] == "succeeded" {
            provider += minor(&rec[col("provider_amount")]);
        }
    }
    assert_eq!(lines, report.body["items"].as_array().unwrap().len());
    assert_eq!((gateway, provider), (1000, 1050));

    // A re-run replaces the report (same id, lines not doubled) and says so.
    let again = run_report(&app, "pockyt-sandbox", &today()).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["replaced"], true);
    assert_eq!(again.body["id"], id.as_str());
    assert_eq!(again.body["runs"], 2);
    let list = ops(
        &app,
        app.http
            .get(format!("{}/v1/operator/reconciliations", app.base)),
    )
    .await;
    assert_eq!(
        list.body["data"].as_array().unwrap().len(),
        1,
        "{}",
        list.text
    );
    // Bad input changes nothing and says why.
    run_report(&app, "nope", &today())
        .await
        .assert_problem(400, "invalid_request");
    run_report(&app, "pockyt-sandbox", "2026-13-01")
        .await
        .assert_problem(400, "invalid_request");
    run_report(&app, "pockyt-sandbox", "2999-01-01")
        .await
        .assert_problem(400, "invalid_request");
    run_report(&app, "pockyt-sandbox", "0000-01-01")
        .await
        .assert_problem(400, "invalid_request");
    let after = ops(
        &app,
        app.http
            .get(format!("{}/v1/operator/reconciliations", app.base)),
    )
    .await;
    assert_eq!(
        after.body["data"].as_array().unwrap().len(),
        1,
        "refused runs store nothing"
    );
    app.stop().await;
}

/// Pay10 lists nothing: each refund is asked about (refund requery).
async fn pay10_refunds_are_asked_about_one_by_one(db: Db) {
    let app = spawn_with(config(&fresh_db(db).await)).await;
    let s1 = app.pay10_sale("10.00", "AED").await;
    let s2 = app.pay10_sale("10.00", "AED").await;
    let kept = refund_of(&app, &pay10_refund(&s1, "1.00")).await;
    let gone = refund_of(&app, &pay10_refund(&s2, "2.00")).await;
    let forget = sandbox(
        &app,
        reqwest::Method::DELETE,
        &format!(
            "pay10/refunds/{}",
            stored_row(&app, gone["id"].as_str().unwrap())
                .await
                .provider_reference
        ),
        None,
    )
    .await;
    assert_eq!(forget.status, 204, "{}", forget.text);
    let r = run_report(&app, "pay10-sandbox", &today()).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["id"].as_str().unwrap();
    let report = ops(
        &app,
        app.http
            .get(format!("{}/v1/operator/reconciliations/{id}", app.base)),
    )
    .await;
    let k = kinds(&report.body);
    assert_eq!(k["matched"][0]["refund_id"], kept["id"], "{}", report.text);
    assert_eq!(k["matched"][0]["provider_amount"], "1.00");
    assert_eq!(k["only_at_gateway"][0]["refund_id"], gone["id"]);
    assert_eq!(report.body["summary"]["counts"]["only_at_provider"], 0);

    // A sale whose amount Pay10 stated (sale_amount) is asked about too:
    // reversed after the refund, it is a line of its own.
    let s3 = app.pay10_sale("10.00", "AED").await;
    refund_of(&app, &with_sale_amount(pay10_refund(&s3, "1.00"), "10.00")).await;
    let e = sandbox(
        &app,
        reqwest::Method::PATCH,
        &format!("pay10/payments/{}", s3["PG_REF_NUM"].as_str().unwrap()),
        Some(json!({"status": "Reversed"})),
    )
    .await;
    assert_eq!(e.status, 200, "{}", e.text);
    let again = run_report(&app, "pay10-sandbox", &today()).await;
    assert_eq!(again.status, 200, "{}", again.text);
    let report = ops(
        &app,
        app.http
            .get(format!("{}/v1/operator/reconciliations/{id}", app.base)),
    )
    .await;
    let k = kinds(&report.body);
    let sale_line = k["status_mismatch"]
        .iter()
        .find(|i| i["transaction_no"] == s3["PG_REF_NUM"])
        .unwrap_or_else(|| panic!("no line for the reversed sale: {}", report.text));
    assert!(sale_line["refund_id"].is_null());
    assert_eq!(sale_line["provider_status"], "Reversed");
    app.stop().await;
}

/// Two processes with the daily job on one database: each account's day is
/// reconciled once.
async fn two_processes_never_both_run_the_daily_job(db: Db) {
    let db_url = fresh_db(db).await;
    let (sandbox_url, _keep) = spawn_sandbox(fast_sandbox()).await;
    let cfg = || {
        let mut c = config(&db_url);
        c.demo.as_mut().unwrap().external_sandbox = Some(sandbox_url.clone());
        c.reconciliation_daily_at = refund_gateway::config::parse_daily_at("00:00");
        c
    };
    let a = spawn_with(cfg()).await;
    let b = spawn_with(cfg()).await;
    let list = eventually(Duration::from_secs(20), || async {
        let l = ops(
            &a,
            a.http
                .get(format!("{}/v1/operator/reconciliations", a.base)),
        )
        .await;
        let done = l.body["data"]
            .as_array()
            .map(|d| d.len() >= 2 && d.iter().all(|r| r["state"] == "done"))
            .unwrap_or(false);
        (done, l)
    })
    .await;
    // Both processes have had time to try again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let l = ops(
        &b,
        b.http
            .get(format!("{}/v1/operator/reconciliations", b.base)),
    )
    .await;
    let data = l.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{}", list.text);
    let yesterday = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
        .yesterday()
        .unwrap()
        .to_string();
    for r in data {
        assert_eq!(r["date"], yesterday.as_str());
        assert_eq!(r["runs"], 1, "run once: {r}");
        assert_eq!(r["state"], "done");
    }
    a.stop().await;
    b.stop().await;
}

fn with_sale_amount(mut body: Value, sale_amount: &str) -> Value {
    body["sale_amount"] = json!(sale_amount);
    body
}

/// Pay10 with `sale_amount`: the sale is asked about first (status enquiry),
/// refused when not captured or in another currency, and its amount pinned
/// so our own books stop a refund past it before Pay10 hears of it.
async fn pay10_sale_amount_checks_the_sale_first(db: Db) {
    let app = spawn_with(config(&fresh_db(db).await)).await;
    let applied = || app.sandbox().stats().pay10_refunds_applied;
    let sale = app.pay10_sale("10.00", "AED").await;
    refund_of(
        &app,
        &with_sale_amount(pay10_refund(&sale, "4.00"), "10.00"),
    )
    .await;
    let before = applied();
    // The POS's receipt says 12.00; Pay10 says 10.00: Pay10's word is pinned.
    let over = app
        .post_refund(
            Some(&ulid::Ulid::new().to_string()),
            &with_sale_amount(pay10_refund(&sale, "6.01"), "12.00"),
        )
        .await;
    over.assert_problem(422, "amount_exceeds_refundable");
    assert!(over.text.contains("6.00 AED left"), "{}", over.text);
    assert_eq!(applied(), before, "refused before Pay10 heard of it");
    refund_of(
        &app,
        &with_sale_amount(pay10_refund(&sale, "6.00"), "10.00"),
    )
    .await;

    let failed = sale_at(
        &app.http,
        &app.base,
        "pay10",
        json!({"amount": "10.00", "currency": "AED", "status": "Failed"}),
    )
    .await;
    app.post_refund(
        Some(&ulid::Ulid::new().to_string()),
        &with_sale_amount(pay10_refund(&failed, "1.00"), "10.00"),
    )
    .await
    .assert_problem(422, "transaction_not_refundable");
    let inr = app.pay10_sale("10.00", "INR").await;
    app.post_refund(
        Some(&ulid::Ulid::new().to_string()),
        &with_sale_amount(pay10_refund(&inr, "1.00"), "10.00"),
    )
    .await
    .assert_problem(422, "currency_mismatch");
    let mut unknown = pay10_refund(&sale, "1.00");
    unknown["reference"] = json!("PAY10_NOSUCHORDER");
    app.post_refund(
        Some(&ulid::Ulid::new().to_string()),
        &with_sale_amount(unknown, "10.00"),
    )
    .await
    .assert_problem(422, "transaction_not_found");
    // The ids must both be the sale's.
    let mut crossed = pay10_refund(&sale, "1.00");
    crossed["transaction_no"] = inr["PG_REF_NUM"].clone();
    app.post_refund(
        Some(&ulid::Ulid::new().to_string()),
        &with_sale_amount(crossed, "10.00"),
    )
    .await
    .assert_problem(422, "transaction_not_found");
    app.post_refund(
        Some(&ulid::Ulid::new().to_string()),
        &with_sale_amount(pay10_refund(&sale, "3.00"), "2.00"),
    )
    .await
    .assert_problem(400, "invalid_request");
    // What is left: asked with the receipt's amount, or from our books.
    let pg = sale["PG_REF_NUM"].as_str().unwrap();
    let order = sale["ORDER_ID"].as_str().unwrap();
    let asked = app
        .get(&format!(
            "/v1/sales/pay10/{pg}?reference={order}&sale_amount=10.00&currency=AED"
        ))
        .await;
    assert_eq!(asked.status, 200, "{}", asked.text);
    assert_eq!(asked.body["amount_source"], "provider");
    assert_eq!(asked.body["status"], "Captured");
    assert_eq!(asked.body["refunded"], "10.00");
    assert_eq!(asked.body["refundable"], "0.00");
    let books = app
        .get(&format!("/v1/sales/pay10/{pg}?reference={order}"))
        .await;
    assert_eq!(books.body["amount_source"], "gateway", "{}", books.text);
    assert_eq!(books.body["refundable"], "0.00");
    assert!(books.body["provider_note"].is_string());
    // Without sale_amount, the check is Pay10's alone (as before).
    let r = app
        .post_refund(
            Some(&ulid::Ulid::new().to_string()),
            &pay10_refund(&failed, "1.00"),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    app.stop().await;
}

both_backends!(
    pay10_sale_amount_checks_the_sale_first,
    every_kind_of_line_from_a_sandbox_day,
    pay10_refunds_are_asked_about_one_by_one,
    two_processes_never_both_run_the_daily_job,
);

/// What the trans-list may look like (no published example: the shapes the
/// SDKs read, see README "Reconciliation"), each read to the same refunds.
#[test]
fn trans_list_fixtures_read_in_every_shape() {
    use refund_gateway::providers::pockyt::wire::TransList;
    for name in ["trans-list-v3.json", "trans-list-v2.json"] {
        let path = format!(
            "{}/tests/fixtures/pockyt/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let list: TransList = serde_json::from_str(&text).unwrap();
        assert_eq!(list.ret_code.as_deref(), Some("000100"));
        let entries = list.entries();
        let refunds: Vec<_> = entries
            .iter()
            .filter(|e| e.transaction_type.as_deref() == Some("refund"))
            .collect();
        assert_eq!(entries.len(), 2, "{name}");
        assert_eq!(refunds.len(), 1, "{name}");
        assert_eq!(refunds[0].amount.as_deref(), Some("0.01"));
        assert_eq!(
            refunds[0].original_transaction_no.as_deref(),
            Some("297553638301777927")
        );
        assert_eq!(refunds[0].transaction_status.as_deref(), Some("success"));
    }
}
