//! A way out for refunds that need a person: the review queue, a refund's
//! history, and operator resolutions that only apply what the provider's
//! records prove, each recorded with who, when, what and why.

use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const OPS_KEY: &str = "ok_ops_ana_test";

async fn app_with_operator(db: Db) -> TestApp {
    let mut c = test_config(&fresh_db(db).await);
    // The background reconciler stays out of the way: the operator decides.
    c.reconcile_interval = Duration::from_secs(3600);
    c.review_after = Duration::from_millis(1);
    // The provider's processing window after the send deadline: short, so
    // that "the provider never got it" is provable within the test.
    c.reconcile_not_found_after = Duration::from_millis(300);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&Sha256::digest(OPS_KEY.as_bytes()));
    c.operators.push(refund_gateway::config::Operator {
        name: "ops-ana".into(),
        key_hashes: vec![hash],
    });
    spawn_with(c).await
}

async fn operator(app: &TestApp, method: &str, path: &str, body: Option<Value>) -> Resp {
    let url = format!("{}{path}", app.base);
    let req = match method {
        "GET" => app.http.get(url),
        _ => app.http.post(url),
    }
    .bearer_auth(OPS_KEY);
    let req = match body {
        Some(b) => req.json(&b),
        None => req,
    };
    app.send(req).await
}

async fn review_queue_and_audited_resolutions(db: Db) {
    let app = app_with_operator(db).await;
    let sale = app.pockyt_sale("10.00", "USD", "success").await;
    // 91: the provider applies it but answers too late; 92: it never gets it.
    let late = app
        .post_refund(Some("late"), &pockyt_refund(&sale, "0.91"))
        .await;
    let lost = app
        .post_refund(Some("lost"), &pockyt_refund(&sale, "0.92"))
        .await;
    assert_eq!(
        (late.body["status"].as_str(), lost.body["status"].as_str()),
        (Some("pending"), Some("pending"))
    );
    let late_id = late.body["id"].as_str().unwrap().to_string();
    let lost_id = lost.body["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(20)).await;

    // The queue: for operators (their own keys only), and for the POS.
    let pos = app
        .send(
            app.http
                .get(format!("{}/v1/operator/review", app.base))
                .bearer_auth(KEY),
        )
        .await;
    pos.assert_problem(403, "wrong_key_role");
    assert!(
        pos.text.contains("POS key of client") && pos.text.contains("[[operators]]"),
        "a POS key is not an operator key, and the answer says so: {}",
        pos.text
    );
    let q = operator(&app, "GET", "/v1/operator/review", None).await;
    assert_eq!(q.status, 200, "{}", q.text);
    let ids: Vec<&str> = q.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert!(
        ids.contains(&late_id.as_str()) && ids.contains(&lost_id.as_str()),
        "{}",
        q.text
    );
    assert!(q.body["data"][0]["review_reason"].is_string());
    let mine = app.get("/v1/refunds?needs_review=true").await;
    assert_eq!(
        mine.body["data"].as_array().unwrap().len(),
        2,
        "{}",
        mine.text
    );
    let ops_on_pos = app
        .send(
            app.http
                .get(format!("{}/v1/refunds", app.base))
                .bearer_auth(OPS_KEY),
        )
        .await;
    ops_on_pos.assert_problem(403, "wrong_key_role");
    assert!(
        ops_on_pos.body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("operator key of \"ops-ana\""),
        "an operator key is not a POS key, and the answer says so: {}",
        ops_on_pos.text
    );

    // A resolution the provider contradicts is refused and changes nothing.
    tokio::time::sleep(Duration::from_millis(1600)).await; // the 91 answer lands at the provider
    let wrong = operator(
        &app,
        "POST",
        &format!("/v1/operator/refunds/{late_id}/resolve"),
        Some(json!({"status": "failed", "note": "customer says no money arrived"})),
    )
    .await;
    wrong.assert_problem(409, "resolution_refused");
    assert_eq!(
        app.get(&format!("/v1/refunds/{late_id}")).await.body["status"],
        "pending"
    );
    // Bad requests: no note, back to pending.
    for body in [
        json!({"status": "succeeded", "note": " "}),
        json!({"status": "pending", "note": "x"}),
    ] {
        let r = operator(
            &app,
            "POST",
            &format!("/v1/operator/refunds/{late_id}/resolve"),
            Some(body),
        )
        .await;
        assert_eq!(r.status, 400, "{}", r.text);
    }
    // An id that cannot be a refund's names none: 404, never a database error.
    for (method, path) in [
        ("GET", "/v1/operator/refunds/rf_%00/events"),
        ("POST", "/v1/operator/refunds/rf_%00/sync"),
        (
            "GET",
            "/v1/operator/refunds/rf_01lowercase0000000000000000/events",
        ),
    ] {
        let r = operator(&app, method, path, None).await;
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (404, Some("not_found")),
            "{path}: {}",
            r.text
        );
    }
    // The provider's records prove it: resolved, with an audit trail.
    let ok = operator(
        &app,
        "POST",
        &format!("/v1/operator/refunds/{late_id}/resolve"),
        Some(
            json!({"status": "succeeded", "note": "checked the Pockyt dashboard: refund present"}),
        ),
    )
    .await;
    ok.assert_refund(200, "succeeded");
    let history = app.get(&format!("/v1/refunds/{late_id}/events")).await;
    assert_eq!(history.status, 200, "{}", history.text);
    let events = history.body["data"].as_array().unwrap().clone();
    let sources: Vec<&str> = events.iter().filter_map(|e| e["source"].as_str()).collect();
    assert_eq!(sources.first(), Some(&"request"), "{sources:?}");
    let last = events.last().unwrap();
    assert_eq!(
        (
            last["source"].as_str(),
            last["actor"].as_str(),
            last["status"].as_str()
        ),
        (Some("operator"), Some("ops-ana"), Some("succeeded"))
    );
    let detail = last["detail"].as_str().unwrap();
    assert!(
        detail.contains("checked the Pockyt dashboard")
            && detail.contains("provider answered succeeded"),
        "{detail}"
    );
    // The operator sees the same story.
    let theirs = operator(
        &app,
        "GET",
        &format!("/v1/operator/refunds/{late_id}/events"),
        None,
    )
    .await;
    assert_eq!(theirs.body["data"], history.body["data"]);
    // A final status never changes.
    let again = operator(
        &app,
        "POST",
        &format!("/v1/operator/refunds/{late_id}/resolve"),
        Some(json!({"status": "failed", "note": "changed my mind"})),
    )
    .await;
    assert_eq!(again.status, 409, "{}", again.text);

    // The provider never got the 92: failed once the gateway can no longer send it.
    let ok = operator(
        &app,
        "POST",
        &format!("/v1/operator/refunds/{lost_id}/resolve"),
        Some(json!({"status": "failed", "note": "provider has no record; POS may refund again"})),
    )
    .await;
    assert_eq!(
        (ok.status, ok.body["failure_code"].as_str()),
        (200, Some("not_received_by_provider")),
        "{}",
        ok.text
    );
    // Its amount is free again: 10.00 - 0.91 is what is left.
    let rest = app
        .post_refund(Some("rest"), &pockyt_refund(&sale, "9.09"))
        .await;
    assert_eq!(rest.body["status"], "succeeded", "{}", rest.text);
    let q = operator(&app, "GET", "/v1/operator/review", None).await;
    assert!(
        q.body["data"].as_array().unwrap().is_empty(),
        "the queue is empty: {}",
        q.text
    );

    // The same actions from the command line.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_refund-gateway"))
        .args([
            "refunds", "--url", &app.base, "--key", OPS_KEY, "events", &lost_id,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        printed["data"].as_array().unwrap().last().unwrap()["actor"],
        "ops-ana"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_refund-gateway"))
        .args(["refunds", "--url", &app.base, "--key", "wrong", "review"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    app.stop().await;
}

/// An operator looks a refund up: every client's, by every filter of the
/// POS list plus client and account, each with whose it is.
async fn operators_find_any_clients_refund(db: Db) {
    let app = app_with_operator(db).await;
    let tx = app.pockyt_sale("10.00", "USD", "success").await;
    let mine = app
        .post_refund(Some("op-find-1"), &pockyt_refund(&tx, "1.00"))
        .await;
    assert_eq!(mine.status, 201, "{}", mine.text);
    let other_tx = app.pockyt_sale("10.00", "USD", "success").await;
    let theirs = app
        .send(
            app.http
                .post(format!("{}/v1/refunds", app.base))
                .bearer_auth(OTHER_KEY)
                .header("Idempotency-Key", "op-find-2")
                .json(&pockyt_refund(&other_tx, "2.00")),
        )
        .await;
    assert_eq!(theirs.status, 201, "{}", theirs.text);
    let all = operator(&app, "GET", "/v1/operator/refunds", None).await;
    assert_eq!(all.status, 200, "{}", all.text);
    let data = all.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    // Newest first, each with its client and account.
    assert_eq!(data[0]["id"], theirs.body["id"]);
    assert_eq!(data[0]["client"], "other");
    assert_eq!(data[1]["client"], "demo");
    assert_eq!(data[1]["account"], "pockyt-sandbox");
    let by_client = operator(&app, "GET", "/v1/operator/refunds?client=other", None).await;
    assert_eq!(by_client.body["data"].as_array().unwrap().len(), 1);
    let by_tx = operator(
        &app,
        "GET",
        &format!(
            "/v1/operator/refunds?transaction_no={}&account=pockyt-sandbox",
            tx["transactionNo"].as_str().unwrap()
        ),
        None,
    )
    .await;
    assert_eq!(
        by_tx.body["data"][0]["id"], mine.body["id"],
        "{}",
        by_tx.text
    );
    let page = operator(&app, "GET", "/v1/operator/refunds?limit=1", None).await;
    assert_eq!(page.body["has_more"], true);
    let next = operator(
        &app,
        "GET",
        &format!(
            "/v1/operator/refunds?limit=1&starting_after={}",
            page.body["data"][0]["id"].as_str().unwrap()
        ),
        None,
    )
    .await;
    assert_eq!(next.body["data"][0]["id"], mine.body["id"]);
    assert_eq!(next.body["has_more"], false);
    let none = operator(
        &app,
        "GET",
        "/v1/operator/refunds?account=pay10-sandbox",
        None,
    )
    .await;
    assert!(none.body["data"].as_array().unwrap().is_empty());
    // One refund, rendered as the POS sees it, plus whose it is.
    let id = theirs.body["id"].as_str().unwrap();
    let one = operator(&app, "GET", &format!("/v1/operator/refunds/{id}"), None).await;
    assert_eq!(one.status, 200);
    assert_eq!(one.body["client"], "other");
    assert_eq!(one.body["amount"], theirs.body["amount"]);
    assert_eq!(one.body["status"], theirs.body["status"]);
    // Refusals.
    operator(&app, "GET", "/v1/operator/refunds?status=eaten", None)
        .await
        .assert_problem(400, "invalid_request");
    operator(&app, "GET", "/v1/operator/refunds?client=a&client=b", None)
        .await
        .assert_problem(400, "invalid_request");
    operator(&app, "GET", "/v1/operator/refunds?client=%00", None)
        .await
        .assert_problem(400, "invalid_request");
    operator(&app, "GET", "/v1/operator/refunds/rf_nope", None)
        .await
        .assert_problem(404, "not_found");
    app.get("/v1/operator/refunds")
        .await
        .assert_problem(403, "wrong_key_role");
    app.stop().await;
}

both_backends!(
    review_queue_and_audited_resolutions,
    operators_find_any_clients_refund
);
