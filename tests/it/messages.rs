//! Every refusal says what is wrong and what to do next (the exact texts a
//! newcomer met, made actionable).

use std::time::Duration;

use crate::common::*;
use serde_json::json;
use sha2::{Digest, Sha256};

const OPS_KEY: &str = "ok_ops_messages";

async fn app(db: Db) -> TestApp {
    let mut c = test_config(&fresh_db(db).await);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&Sha256::digest(OPS_KEY.as_bytes()));
    c.operators.push(refund_gateway::config::Operator {
        name: "ops-messages".into(),
        key_hashes: vec![hash],
    });
    c.reconcile_interval = Duration::from_secs(3600);
    spawn_with(c).await
}

async fn refusals_say_what_to_do_next(db: Db) {
    let app = app(db).await;
    let sale = app.pockyt_sale("100.00", "USD", "success").await;

    // An idempotency mismatch names the differing fields, the refund the key
    // made, and what to do.
    let first = app
        .post_refund(Some("k1"), &pockyt_refund(&sale, "1.00"))
        .await;
    first.assert_refund(201, "succeeded");
    let id = first.body["id"].as_str().unwrap();
    let again = app
        .post_refund(Some("k1"), &pockyt_refund(&sale, "2.00"))
        .await;
    again.assert_problem(422, "idempotency_key_mismatch");
    let d = again.body["detail"].as_str().unwrap();
    assert!(
        d.contains("amount differ") && d.contains(id) && d.contains("new Idempotency-Key"),
        "{d}"
    );
    // The same through a refund_reference (no key sent): it speaks of the
    // reference, not of a key the client never sent.
    let mut by_ref = pockyt_refund(&sale, "1.00");
    by_ref["refund_reference"] = json!("pos-7-0001");
    app.post_refund(None, &by_ref)
        .await
        .assert_refund(201, "succeeded");
    by_ref["amount"] = json!("3.00");
    let r = app.post_refund(None, &by_ref).await;
    r.assert_problem(422, "idempotency_key_mismatch");
    let d = r.body["detail"].as_str().unwrap();
    assert!(
        d.contains("this refund_reference")
            && d.contains("its own refund_reference")
            && !d.contains("Idempotency-Key"),
        "{d}"
    );
    // Still running, matched by reference: said so, with Retry-After. (91:
    // the provider answers after our timeout, so the first is in flight.)
    let mut slow = pockyt_refund(&sale, "0.91");
    slow["refund_reference"] = json!("pos-7-slow");
    let (a, b) = tokio::join!(app.post_refund(None, &slow), async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        app.post_refund(None, &slow).await
    });
    let busy = if a.status == 409 { a } else { b };
    busy.assert_problem(409, "request_in_progress");
    let d = busy.body["detail"].as_str().unwrap();
    assert!(
        d.contains("refund_reference") && !d.contains("Idempotency-Key"),
        "{d}"
    );
    assert_eq!(busy.headers["retry-after"], "1");

    // A lower-case currency is the currency; an unknown one says what is meant.
    let mut lower = pockyt_refund(&sale, "1.00");
    lower["currency"] = json!("usd");
    let r = app.post_refund(Some("lower"), &lower).await;
    r.assert_refund(201, "succeeded");
    assert_eq!(r.body["currency"], "USD");
    lower["currency"] = json!("usx");
    let r = app.post_refund(Some("usx"), &lower).await;
    r.assert_problem(400, "invalid_request");
    let e = r.body["errors"]["currency"][0].as_str().unwrap();
    assert!(
        e.contains("\"USX\" is not an ISO 4217 currency code such as USD"),
        "{e}"
    );

    // An operator's resolution the provider does not confirm says what the
    // provider said, in words (no "query success" code beside "no record").
    let lost = app
        .post_refund(Some("lost"), &pockyt_refund(&sale, "0.92"))
        .await;
    lost.assert_refund(201, "pending");
    let lost_id = lost.body["id"].as_str().unwrap();
    let r = app
        .send(
            app.http
                .post(format!(
                    "{}/v1/operator/refunds/{lost_id}/resolve",
                    app.base
                ))
                .bearer_auth(OPS_KEY)
                .json(&json!({"status": "succeeded", "note": "customer insists"})),
        )
        .await;
    r.assert_problem(409, "resolution_refused");
    let d = r.body["detail"].as_str().unwrap();
    assert!(
        d.contains("it has no record of this refund") && !d.contains("000100"),
        "{d}"
    );

    // A valid key on the wrong API: 403, its role, and where it belongs.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_refund-gateway"))
        .args(["refunds", "--url", &app.base, "review"])
        .env("REFUND_GATEWAY_OPERATOR_KEY", KEY)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("403") && err.contains("POS key of client"),
        "{err}"
    );
    // The operator key from a file (not on the command line).
    let key_file = std::env::temp_dir().join(format!("rg-opkey-{}", ulid::Ulid::new()));
    std::fs::write(&key_file, format!("{OPS_KEY}\n")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_refund-gateway"))
        .args(["refunds", "--url", &app.base, "--key-file"])
        .arg(&key_file)
        .arg("review")
        .env_remove("REFUND_GATEWAY_OPERATOR_KEY")
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&key_file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    app.stop().await;
}

/// Bodies must say they are UTF-8 JSON, on every route that takes one; a
/// receipt honours an `Accept` that refuses HTML.
async fn content_negotiation_is_honoured(db: Db) {
    let app = app(db).await;
    let sale = app.pockyt_sale("10.00", "USD", "success").await;
    let body = serde_json::to_string(&pockyt_refund(&sale, "1.00")).unwrap();
    for (i, (ct, enc)) in [
        ("text/plain", None),
        ("application/json; charset=utf-16", None),
        ("application/json", Some("gzip")),
    ]
    .into_iter()
    .enumerate()
    {
        let mut req = app
            .http
            .post(format!("{}/v1/refunds", app.base))
            .bearer_auth(KEY)
            .header("Idempotency-Key", format!("ct-{i}"))
            .header("content-type", ct)
            .body(body.clone());
        if let Some(e) = enc {
            req = req.header("content-encoding", e);
        }
        app.send(req)
            .await
            .assert_problem(415, "unsupported_media_type");
    }
    let ok = app
        .send(
            app.http
                .post(format!("{}/v1/refunds", app.base))
                .bearer_auth(KEY)
                .header("Idempotency-Key", "ct-ok")
                .header("content-type", "application/json; charset=UTF-8")
                .body(body),
        )
        .await;
    ok.assert_refund(201, "succeeded");
    let id = ok.body["id"].as_str().unwrap();
    let r = app
        .send(
            app.http
                .post(format!("{}/v1/operator/refunds/{id}/resolve", app.base))
                .bearer_auth(OPS_KEY)
                .header("content-type", "text/plain")
                .body(r#"{"status":"succeeded","note":"x"}"#),
        )
        .await;
    r.assert_problem(415, "unsupported_media_type");
    for (accept, html) in [
        ("text/html", true),
        ("text/html;q=0, */*", false),
        ("text/plain, text/html;q=0.5", true),
        ("*/*", false),
    ] {
        let r = app
            .http
            .get(format!("{}/v1/refunds/{id}/receipt", app.base))
            .bearer_auth(KEY)
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert_eq!(ct.starts_with("text/html"), html, "{accept}: {ct}");
    }
    app.stop().await;
}

both_backends!(
    refusals_say_what_to_do_next,
    content_negotiation_is_honoured
);
