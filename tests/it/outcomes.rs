//! After the call: webhooks, reconciliation, receipts and receipt emails,
//! on SQLite and Postgres.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use refund_gateway::providers::{pay10::crypto as p10, pockyt::crypto as pk};
use refund_gateway::sandbox::demo_credentials as creds;
use serde_json::{json, Value};

/// A Pockyt refund IPN signed with the sandbox token (or `token`).
fn pockyt_ipn(fields: &[(&str, &str)], token: &str) -> String {
    let mut f: Vec<(String, String)> = fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let sign = pk::sign(fields.iter().copied(), token).unwrap();
    f.push(("verifySign".into(), sign));
    serde_urlencoded::to_string(&f).unwrap()
}

fn pay10_webhook(fields: &[(&str, &str)], salt: &str) -> Value {
    let mut obj: serde_json::Map<String, Value> = fields
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    obj.insert(
        "HASH".into(),
        json!(p10::hash(fields.iter().copied(), salt).unwrap()),
    );
    Value::Object(obj)
}

async fn post_ipn(app: &TestApp, path: &str, body: String, content_type: &str) -> Resp {
    app.send(
        app.http
            .post(format!("{}{}", app.base, path))
            .header("content-type", content_type)
            .body(body),
    )
    .await
}

async fn app_with(db: Db, ipns: bool, slow_reconcile: bool) -> TestApp {
    let mut c = test_config(&fresh_db(db).await);
    if let Some(d) = c.demo.as_mut() {
        d.sandbox_ipns = ipns;
    }
    if slow_reconcile {
        c.reconcile_base_delay = Duration::from_secs(120);
        c.reconcile_max_delay = Duration::from_secs(120);
    }
    spawn_with(c).await
}

async fn row(app: &TestApp, id: &str) -> refund_gateway::store::RefundRow {
    stored_row(app, id).await
}

/// A pending Pockyt refund (magic 94) with IPNs off and reconciliation slowed,
/// so only the webhooks a test sends can move it.
async fn pending_pockyt(app: &TestApp) -> (Value, Value) {
    let sale = app.pockyt_sale("10.00", "USD", "success").await;
    let r = app
        .post_refund(Some("p"), &pockyt_refund(&sale, "0.94"))
        .await;
    assert_eq!(r.body["status"], "pending", "{}", r.text);
    (sale, r.body)
}

fn refund_fields<'a>(
    sale: &'a Value,
    refund: &'a Value,
    reference: &'a str,
    status: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("transactionNo", sale["transactionNo"].as_str().unwrap()),
        (
            "refundTransactionNo",
            refund["provider_refund_id"].as_str().unwrap(),
        ),
        ("refundReference", reference),
        ("refundAmount", refund["amount"].as_str().unwrap()),
        ("currency", "USD"),
        ("status", status),
    ]
}

async fn signatures_are_checked_and_duplicates_applied_once(db: Db) {
    let app = app_with(db, false, true).await;
    let (sale, refund) = pending_pockyt(&app).await;
    let id = refund["id"].as_str().unwrap();
    let reference = row(&app, id).await.provider_reference;
    let fields = refund_fields(&sale, &refund, &reference, "success");
    let form = "application/x-www-form-urlencoded";

    let forged = pockyt_ipn(&fields, "not-the-token");
    let r = post_ipn(&app, "/ipn/pockyt", forged, form).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (401, Some("invalid_signature"))
    );
    let unsigned = serde_urlencoded::to_string(&fields).unwrap();
    assert_eq!(
        post_ipn(&app, "/ipn/pockyt", unsigned, form).await.status,
        401
    );
    assert_eq!(
        post_ipn(&app, "/ipn/pockyt", "%%%".into(), form)
            .await
            .status,
        401
    );
    assert_eq!(
        app.get(&format!("/v1/refunds/{id}")).await.body["status"],
        "pending",
        "nothing changed"
    );

    let good = pockyt_ipn(&fields, creds::POCKYT_TOKEN);
    for _ in 0..3 {
        let r = post_ipn(&app, "/ipn/pockyt", good.clone(), form).await;
        assert_eq!((r.status, r.text.as_str()), (200, "success"));
    }
    assert_eq!(
        app.get(&format!("/v1/refunds/{id}")).await.body["status"],
        "succeeded"
    );
    let events = app.gateway.store.events_for_refund(id).await.unwrap();
    assert_eq!(events.len(), 1, "a replayed IPN is stored and applied once");
    assert_eq!(events[0].state, "applied");

    // Pay10: a tampered HASH is refused.
    let p = app.pay10_sale("10.00", "AED").await;
    let r = app
        .post_refund(Some("p10"), &pay10_refund(&p, "0.94"))
        .await;
    let pid = r.body["id"].as_str().unwrap();
    let reference = row(&app, pid).await.provider_reference;
    let f = [
        ("PG_REF_NUM", p["PG_REF_NUM"].as_str().unwrap()),
        ("ORDER_ID", p["ORDER_ID"].as_str().unwrap()),
        ("REFUND_ORDER_ID", reference.as_str()),
        ("AMOUNT", "94"),
        ("TXNTYPE", "REFUND"),
        ("RESPONSE_CODE", "000"),
        ("STATUS", "Captured"),
    ];
    let mut bad = pay10_webhook(&f, "wrong-salt");
    assert_eq!(
        post_ipn(&app, "/ipn/pay10", bad.to_string(), "application/json")
            .await
            .status,
        401
    );
    bad.as_object_mut().unwrap().remove("HASH");
    assert_eq!(
        post_ipn(&app, "/ipn/pay10", bad.to_string(), "application/json")
            .await
            .status,
        401
    );
    assert_eq!(
        app.get(&format!("/v1/refunds/{pid}")).await.body["status"],
        "pending"
    );
    let good = pay10_webhook(&f, creds::PAY10_SALT);
    let r = post_ipn(
        &app,
        "/ipn/pay10/pay10-sandbox",
        good.to_string(),
        "application/json",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        app.get(&format!("/v1/refunds/{pid}")).await.body["status"],
        "succeeded"
    );
    app.stop().await;
}

async fn out_of_order_and_conflicting_events(db: Db) {
    let app = app_with(db, false, true).await;
    let (sale, refund) = pending_pockyt(&app).await;
    let id = refund["id"].as_str().unwrap();
    let reference = row(&app, id).await.provider_reference;
    let form = "application/x-www-form-urlencoded";
    let success = pockyt_ipn(
        &refund_fields(&sale, &refund, &reference, "success"),
        creds::POCKYT_TOKEN,
    );
    let late_pending = pockyt_ipn(
        &refund_fields(&sale, &refund, &reference, "pending"),
        creds::POCKYT_TOKEN,
    );
    assert_eq!(
        post_ipn(&app, "/ipn/pockyt", success, form).await.status,
        200
    );
    assert_eq!(
        post_ipn(&app, "/ipn/pockyt", late_pending, form)
            .await
            .status,
        200
    );
    assert_eq!(
        app.get(&format!("/v1/refunds/{id}")).await.body["status"],
        "succeeded",
        "final never goes back to pending"
    );

    let contradiction = pockyt_ipn(
        &refund_fields(&sale, &refund, &reference, "failed"),
        creds::POCKYT_TOKEN,
    );
    assert_eq!(
        post_ipn(&app, "/ipn/pockyt", contradiction, form)
            .await
            .status,
        200
    );
    let after = row(&app, id).await;
    assert_eq!(
        after.status, "succeeded",
        "a conflicting final status is not overwritten"
    );
    assert!(after.review_reason.is_some(), "the conflict is flagged");
    let states: Vec<String> = app
        .gateway
        .store
        .events_for_refund(id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.state.as_str().to_string())
        .collect();
    assert_eq!(states, ["applied", "stale", "conflict"]);
    app.stop().await;
}

async fn mismatched_transaction_is_rejected(db: Db) {
    let app = app_with(db, false, true).await;
    let (sale, refund) = pending_pockyt(&app).await;
    let id = refund["id"].as_str().unwrap();
    let reference = row(&app, id).await.provider_reference;
    let mut fields = refund_fields(&sale, &refund, &reference, "success");
    fields[0] = ("transactionNo", "999999999999999999");
    let r = post_ipn(
        &app,
        "/ipn/pockyt",
        pockyt_ipn(&fields, creds::POCKYT_TOKEN),
        "application/x-www-form-urlencoded",
    )
    .await;
    r.assert_problem(422, "webhook_rejected");
    let mut wrong_amount = refund_fields(&sale, &refund, &reference, "success");
    wrong_amount[3] = ("refundAmount", "9.99");
    let r = post_ipn(
        &app,
        "/ipn/pockyt",
        pockyt_ipn(&wrong_amount, creds::POCKYT_TOKEN),
        "application/x-www-form-urlencoded",
    )
    .await;
    assert_eq!(r.status, 422);
    assert_eq!(
        app.get(&format!("/v1/refunds/{id}")).await.body["status"],
        "pending",
        "record unchanged"
    );
    assert_eq!(
        app.gateway
            .store
            .events_by_state(refund_gateway::store::EventState::Rejected)
            .await
            .unwrap()
            .len(),
        2
    );
    app.stop().await;
}

async fn event_before_its_refund_is_kept_and_applied(db: Db) {
    let app = app_with(db, false, true).await;
    let sale = app.pockyt_sale("10.00", "USD", "success").await;
    let tx = sale["transactionNo"].as_str().unwrap();
    // A refund IPN naming a reference no refund carries yet.
    let fields = [
        ("transactionNo", tx),
        ("refundReference", "EARLYREF0000000001"),
        ("refundAmount", "1.00"),
        ("status", "success"),
    ];
    let r = post_ipn(
        &app,
        "/ipn/pockyt",
        pockyt_ipn(&fields, creds::POCKYT_TOKEN),
        "application/x-www-form-urlencoded",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        app.gateway
            .store
            .events_by_state(refund_gateway::store::EventState::Unmatched)
            .await
            .unwrap()
            .len(),
        1
    );
    // The refund appears (as when the webhook beats the provider's answer).
    let mut row = stored_refund("rf_early", "pockyt-sandbox", tx, "EARLYREF0000000001");
    let created = app
        .gateway
        .store
        .create_refund(&row, &Default::default())
        .await
        .unwrap();
    assert_eq!(created, refund_gateway::store::CreateOutcome::Created);
    // The reconciliation loop retries waiting events and applies it (the
    // refund changes first, then the event is marked applied).
    let store = &app.gateway.store;
    let (settled, waiting) = eventually(Duration::from_secs(10), || async {
        let row = store
            .get_refund_any_client(&test_refund_id("rf_early"))
            .await
            .unwrap()
            .unwrap();
        let waiting = store
            .events_by_state(refund_gateway::store::EventState::Unmatched)
            .await
            .unwrap();
        (
            row.status == "succeeded" && waiting.is_empty(),
            (row, waiting),
        )
    })
    .await;
    row = settled;
    assert_eq!(row.status, "succeeded");
    assert!(
        waiting.is_empty(),
        "the event is no longer waiting: {waiting:?}"
    );
    assert_eq!(
        app.gateway
            .store
            .events_for_refund(&test_refund_id("rf_early"))
            .await
            .unwrap()[0]
            .state,
        "applied"
    );
    app.stop().await;
}

async fn webhook_beats_the_provider_answer(db: Db) {
    // IPNs on: magic 91 applies the refund and sends the IPN at once, then
    // keeps the gateway waiting past its timeout. The IPN settles the refund
    // before the call returns, so the 201 already says succeeded.
    let app = app_with(db, true, true).await;
    let sale = app.pockyt_sale("10.00", "USD", "success").await;
    let r = app
        .post_refund(Some("beat"), &pockyt_refund(&sale, "0.91"))
        .await;
    r.assert_refund(201, "succeeded");
    assert_eq!(app.sandbox().stats().pockyt_refunds_applied, 1);
    app.stop().await;
}

async fn pending_settles_by_ipn_and_by_query(db: Db) {
    // By IPN: reconciliation slowed to minutes, so only the webhook can do it.
    let app = app_with(db, true, true).await;
    let sale = app.pockyt_sale("10.00", "USD", "success").await;
    let r = app
        .post_refund(Some("ipn"), &pockyt_refund(&sale, "0.94"))
        .await;
    assert_eq!(r.body["status"], "pending");
    let id = r.body["id"].as_str().unwrap();
    assert_eq!(
        app.wait_for(id, Duration::from_secs(10), |b| b["status"] == "succeeded")
            .await["status"],
        "succeeded"
    );
    // The webhook settled it: its event is marked applied right after the refund changes.
    let events = eventually(Duration::from_secs(5), || async {
        let events = app.gateway.store.events_for_refund(id).await.unwrap();
        (events.first().is_some_and(|e| e.state == "applied"), events)
    })
    .await;
    assert!(
        events.first().is_some_and(|e| e.state == "applied"),
        "no applied webhook event: {events:?}"
    );
    let p = app.pay10_sale("10.00", "AED").await;
    let r = app
        .post_refund(Some("ipn10"), &pay10_refund(&p, "0.94"))
        .await;
    let id = r.body["id"].as_str().unwrap();
    assert_eq!(
        app.wait_for(id, Duration::from_secs(10), |b| b["status"] == "succeeded")
            .await["status"],
        "succeeded"
    );
    app.stop().await;

    // By query: no IPNs at all.
    let app = app_with(db, false, false).await;
    let sale = app.pockyt_sale("10.00", "USD", "success").await;
    let r = app
        .post_refund(Some("q"), &pockyt_refund(&sale, "0.94"))
        .await;
    let id = r.body["id"].as_str().unwrap();
    assert_eq!(
        app.wait_for(id, Duration::from_secs(10), |b| b["status"] == "succeeded")
            .await["status"],
        "succeeded"
    );
    assert!(app
        .gateway
        .store
        .events_for_refund(id)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(app.sandbox().stats().pockyt_refunds_applied, 1);
    app.stop().await;
}

async fn receipts_in_text_and_html(db: Db) {
    let app = app_with(db, false, true).await;
    let sale = app.pockyt_sale("10.00", "USD", "success").await;
    let mut body = pockyt_refund(&sale, "2.50");
    body["reason"] = json!("damaged item returned to the store by the customer");
    let r = app.post_refund(Some("rc"), &body).await;
    let id = r.body["id"].as_str().unwrap();
    let text = app.get(&format!("/v1/refunds/{id}/receipt")).await;
    assert_eq!(text.status, 200);
    assert!(text.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert!(
        text.text.lines().all(|l| l.chars().count() <= 40),
        "{}",
        text.text
    );
    for needle in [
        id,
        "2.50 USD",
        "APPROVED",
        sale["transactionNo"].as_str().unwrap(),
        r.body["provider_refund_id"].as_str().unwrap(),
    ] {
        assert!(text.text.contains(needle), "{needle}\n{}", text.text);
    }
    let html = app
        .send(
            app.http
                .get(format!("{}/v1/refunds/{id}/receipt", app.base))
                .bearer_auth(KEY)
                .header("accept", "text/html"),
        )
        .await;
    assert!(html.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(html.text.contains("<table>") && html.text.contains(id));
    let other = app
        .send(
            app.http
                .get(format!("{}/v1/refunds/{id}/receipt", app.base))
                .bearer_auth(OTHER_KEY),
        )
        .await;
    assert_eq!(other.status, 404);
    app.stop().await;
}

/// A real SMTP conversation on loopback. The first `fail_first` DATA commands
/// get a temporary failure (451); messages accepted afterwards are kept.
async fn smtp_server(fail_first: usize) -> (String, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("smtp://{}", listener.local_addr().unwrap());
    let inbox = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(Mutex::new(fail_first));
    let inbox2 = inbox.clone();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let (inbox, failures) = (inbox2.clone(), failures.clone());
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut lines = BufReader::new(r).lines();
                let _ = w.write_all(b"220 test ESMTP\r\n").await;
                let mut in_data = false;
                let mut msg = String::new();
                while let Ok(Some(line)) = lines.next_line().await {
                    if in_data {
                        if line == "." {
                            in_data = false;
                            let fail = {
                                let mut f = failures.lock().unwrap();
                                if *f > 0 {
                                    *f -= 1;
                                    true
                                } else {
                                    false
                                }
                            };
                            if fail {
                                let _ = w.write_all(b"451 try again later\r\n").await;
                            } else {
                                inbox.lock().unwrap().push(std::mem::take(&mut msg));
                                let _ = w.write_all(b"250 queued\r\n").await;
                            }
                            msg.clear();
                        } else {
                            msg.push_str(&line);
                            msg.push('\n');
                        }
                        continue;
                    }
                    let cmd = line.to_ascii_uppercase();
                    let reply: &[u8] = if cmd.starts_with("EHLO") || cmd.starts_with("HELO") {
                        b"250-test\r\n250 8BITMIME\r\n"
                    } else if cmd.starts_with("DATA") {
                        in_data = true;
                        b"354 go ahead\r\n"
                    } else if cmd.starts_with("QUIT") {
                        let _ = w.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"250 ok\r\n"
                    };
                    let _ = w.write_all(reply).await;
                }
            });
        }
    });
    (url, inbox)
}

async fn receipt_email_sent_once_and_retried(db: Db) {
    let (url, inbox) = smtp_server(1).await;
    let mut c = test_config(&fresh_db(db).await);
    c.smtp = Some(refund_gateway::config::Smtp {
        url: secrecy::SecretString::from(url),
        from: "receipts@example.com".into(),
    });
    c.email_interval = Duration::from_millis(100);
    let app = spawn_with(c).await;
    let sale = app.pockyt_sale("10.00", "USD", "success").await;
    let mut body = pockyt_refund(&sale, "3.00");
    body["receipt_email"] = json!("customer@example.com");
    let r = app.post_refund(Some("mail"), &body).await;
    assert_eq!(r.body["status"], "succeeded");
    let id = r.body["id"].as_str().unwrap().to_string();
    // The first attempt fails with 451; the retry (2 s later) succeeds.
    let entry = eventually(Duration::from_secs(15), || async {
        let entry = app.gateway.store.outbox_entry(&id).await.unwrap().unwrap();
        (entry.state == "sent", entry)
    })
    .await;
    assert_eq!(
        (entry.state.as_str(), entry.attempts),
        ("sent", 2),
        "{entry:?}"
    );
    // A replay or a later sync does not enqueue it again.
    app.post_refund(Some("mail"), &body).await;
    app.get(&format!("/v1/refunds/{id}?sync=true")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mails = inbox.lock().unwrap().clone();
    assert_eq!(mails.len(), 1, "exactly one email");
    assert!(
        mails[0].contains("customer@example.com") && mails[0].contains(&id),
        "{}",
        mails[0]
    );
    // No email for a refund without receipt_email, nor for a failed refund.
    let mut declined = pockyt_refund(&sale, "0.93");
    declined["receipt_email"] = json!("customer@example.com");
    app.post_refund(Some("declined"), &declined).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(inbox.lock().unwrap().len(), 1);
    app.stop().await;
}

both_backends!(
    signatures_are_checked_and_duplicates_applied_once,
    out_of_order_and_conflicting_events,
    mismatched_transaction_is_rejected,
    event_before_its_refund_is_kept_and_applied,
    webhook_beats_the_provider_answer,
    pending_settles_by_ipn_and_by_query,
    receipts_in_text_and_html,
    receipt_email_sent_once_and_retried,
);
