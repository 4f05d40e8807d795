//! The POS learns every outcome (issue 20): signed outgoing webhooks, the
//! events feed, and waiting for a final status. Every delivery is checked by
//! the reference Standard Webhooks verifier (the `standardwebhooks` crate),
//! not by the gateway's own code.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SECRET_2: &str = "whsec_2mYnDBAm0sgb0ETvE9KbKt7TBy8DpG0XL5bZ0Q1uHsc=";
const OPS_KEY: &str = "ok_ops_events_test";

/// A webhook as the receiver got it.
#[derive(Clone, Debug)]
struct Received {
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
    /// The status the receiver answered.
    answered: u16,
}

impl Received {
    fn id(&self) -> String {
        self.headers["webhook-id"].to_str().unwrap().to_string()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    /// Verified by the reference verifier with `secret`.
    fn verify(&self, secret: &str) {
        standardwebhooks::Webhook::new(secret)
            .unwrap()
            .verify(&self.body, &self.headers)
            .unwrap_or_else(|e| panic!("the reference verifier refuses a delivery: {e}"));
    }
}

/// A POS's webhook receiver on a real socket: answers `status` (0: waits
/// `hang_ms` first), records everything.
#[derive(Clone)]
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
    hang_ms: Arc<AtomicU64>,
}

impl Receiver {
    async fn start(status: u16) -> Receiver {
        let got = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(status));
        let hang_ms = Arc::new(AtomicU64::new(0));
        let (g, s, h) = (got.clone(), status.clone(), hang_ms.clone());
        let app = axum::Router::new().route(
            "/hooks",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let (g, s, h) = (g.clone(), s.clone(), h.clone());
                    async move {
                        let hang = h.load(Ordering::SeqCst);
                        if hang > 0 {
                            tokio::time::sleep(Duration::from_millis(hang)).await;
                        }
                        let code = s.load(Ordering::SeqCst);
                        g.lock().unwrap().push(Received {
                            headers,
                            body: body.to_vec(),
                            answered: code,
                        });
                        axum::http::StatusCode::from_u16(code).unwrap()
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            url,
            got,
            status,
            hang_ms,
        }
    }

    fn all(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Deliveries the receiver accepted (2xx), in arrival order.
    fn delivered(&self) -> Vec<Received> {
        self.all()
            .into_iter()
            .filter(|r| (200..300).contains(&r.answered))
            .collect()
    }

    async fn wait_delivered(&self, n: usize, within: Duration) -> Vec<Received> {
        eventually(within, || async {
            let d = self.delivered();
            (d.len() >= n, d)
        })
        .await
    }
}

fn config_with(db_url: &str, endpoints: &[(&str, &[&str])]) -> refund_gateway::config::Config {
    let mut c = test_config(db_url);
    c.webhook_interval = Duration::from_millis(50);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&Sha256::digest(OPS_KEY.as_bytes()));
    c.operators.push(refund_gateway::config::Operator {
        name: "ops-events".into(),
        key_hashes: vec![hash],
    });
    // The demo client (added at start-up) gets the first endpoint; the
    // `other` client the rest.
    let d = c.demo.as_mut().unwrap();
    if let Some((url, secrets)) = endpoints.first() {
        d.webhook = Some((url.to_string(), secrets[0].to_string()));
    }
    let other = c.clients.iter_mut().find(|c| c.name == "other").unwrap();
    for (url, secrets) in endpoints.iter().skip(1) {
        other
            .webhooks
            .push(refund_gateway::config::WebhookEndpoint {
                url: url.to_string(),
                secrets: secrets
                    .iter()
                    .map(|s| refund_gateway::config::WebhookSecret::parse(s).unwrap())
                    .collect(),
                events: None,
            });
    }
    c
}

async fn refund(app: &TestApp, amount: &str) -> Value {
    refund_at(app, &app.base, amount).await
}

/// A refund of a sale made at the sandbox at `sandbox`.
async fn refund_at(app: &TestApp, sandbox: &str, amount: &str) -> Value {
    let tx = sale_at(
        &app.http,
        sandbox,
        "pockyt",
        json!({"amount": "100.00", "currency": "USD", "status": "success"}),
    )
    .await;
    let r = app
        .post_refund(
            Some(&ulid::Ulid::new().to_string()),
            &pockyt_refund(&tx, amount),
        )
        .await;
    assert!(r.status == 201 || r.status == 202, "{}", r.text);
    r.body
}

async fn ops(app: &TestApp, method: &str, path: &str) -> Resp {
    let url = format!("{}{path}", app.base);
    let req = match method {
        "GET" => app.http.get(url),
        _ => app.http.post(url),
    };
    app.send(req.bearer_auth(OPS_KEY)).await
}

/// Types, in order, of the deliveries of one refund.
fn types_of(got: &[Received], refund_id: &str) -> Vec<String> {
    got.iter()
        .map(|r| r.json())
        .filter(|j| j["data"]["id"] == refund_id)
        .map(|j| j["type"].as_str().unwrap().to_string())
        .collect()
}

async fn a_refund_reaches_the_pos_as_signed_events(db: Db) {
    let rx = Receiver::start(200).await;
    let app = spawn_with(config_with(&fresh_db(db).await, &[(&rx.url, &[SECRET])])).await;
    let done = refund(&app, "1.00").await;
    assert_eq!(done["status"], "succeeded");
    let got = rx.wait_delivered(2, Duration::from_secs(10)).await;
    for r in &got {
        r.verify(SECRET);
        assert_eq!(r.headers["content-type"], "application/json");
        assert!(r.id().starts_with("evt_"));
    }
    eprintln!(
        "GOT: {:?}",
        got.iter()
            .map(|r| String::from_utf8_lossy(&r.body).to_string())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        types_of(&got, done["id"].as_str().unwrap()),
        ["refund.created", "refund.succeeded"],
        "a refund's events arrive in order"
    );
    let body = got[1].json();
    assert_eq!(body["data"]["status"], "succeeded");
    assert_eq!(body["data"]["amount"], "1.00");
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));

    // A refund that answers pending (the sandbox's ...94) reaches the POS
    // as refund.succeeded when the provider confirms it.
    let tx = app.pockyt_sale("100.00", "USD", "success").await;
    let pending = app
        .post_refund(
            Some(&ulid::Ulid::new().to_string()),
            &pockyt_refund(&tx, "0.94"),
        )
        .await;
    assert_eq!(pending.body["status"], "pending", "{}", pending.text);
    let id = pending.body["id"].as_str().unwrap().to_string();
    let got = eventually(Duration::from_secs(15), || async {
        let t = types_of(&rx.delivered(), &id);
        (t.len() >= 2, t)
    })
    .await;
    assert_eq!(got, ["refund.created", "refund.succeeded"]);

    // The same events, with the same ids, in the feed.
    let feed = app.get("/v1/events?limit=100").await;
    assert_eq!(feed.status, 200, "{}", feed.text);
    let ids: Vec<&str> = feed.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    let delivered: Vec<String> = rx.delivered().iter().map(|r| r.id()).collect();
    assert_eq!(
        ids, delivered,
        "the feed and the webhooks tell the same story"
    );
    app.stop().await;
}

async fn the_feed_pages_without_gaps_or_repeats(db: Db) {
    let db_url = fresh_db(db).await;
    let app = spawn_with(config_with(&db_url, &[])).await;
    for i in 0..5 {
        refund(&app, &format!("1.0{i}")).await;
    }
    // Another client's refund never shows in the demo client's feed.
    let tx = app.pockyt_sale("10.00", "USD", "success").await;
    let other = app
        .send(
            app.http
                .post(format!("{}/v1/refunds", app.base))
                .bearer_auth(OTHER_KEY)
                .header("Idempotency-Key", ulid::Ulid::new().to_string())
                .json(&pockyt_refund(&tx, "2.00")),
        )
        .await;
    assert_eq!(other.status, 201, "{}", other.text);
    let mut seen: Vec<Value> = vec![];
    let mut after: Option<String> = None;
    let mut restarted = false;
    let mut app = Some(app);
    loop {
        let a = app.as_ref().unwrap();
        let path = match &after {
            Some(id) => format!("/v1/events?limit=2&starting_after={id}"),
            None => "/v1/events?limit=2".into(),
        };
        let page = a.get(&path).await;
        assert_eq!(page.status, 200, "{}", page.text);
        let data = page.body["data"].as_array().unwrap().clone();
        seen.extend(data.iter().cloned());
        if let Some(last) = data.last() {
            after = Some(last["id"].as_str().unwrap().to_string());
        }
        if !restarted && seen.len() >= 4 {
            // The POS resumes after a gateway restart with its cursor.
            app.take().unwrap().stop().await;
            app = Some(spawn_with(config_with(&db_url, &[])).await);
            restarted = true;
        }
        if page.body["has_more"] == false {
            break;
        }
    }
    assert_eq!(seen.len(), 10, "two events for each of the five refunds");
    let mut ids: Vec<&str> = seen.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let in_order = ids.clone();
    ids.dedup();
    assert_eq!(ids, in_order, "no repeats");
    assert!(
        seen.iter().all(|e| e["data"]["amount"] != "2.00"),
        "no other client's events"
    );
    let a = app.unwrap();
    // Filtered by type; a bad cursor or type is refused.
    let only = a.get("/v1/events?type=refund.succeeded&limit=100").await;
    assert_eq!(only.body["data"].as_array().unwrap().len(), 5);
    a.get("/v1/events?starting_after=evt_nope")
        .await
        .assert_problem(400, "invalid_request");
    a.get("/v1/events?type=refund.eaten")
        .await
        .assert_problem(400, "invalid_request");
    a.stop().await;
}

async fn a_down_receiver_gets_every_event_when_back(db: Db) {
    let rx = Receiver::start(503).await;
    let app = spawn_with(config_with(&fresh_db(db).await, &[(&rx.url, &[SECRET])])).await;
    let mut refunds = vec![];
    for amount in ["1.00", "2.00", "3.00"] {
        refunds.push(
            refund(&app, amount).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // Each first event is tried at once (and refused); the rest wait in order.
    eventually(Duration::from_secs(10), || async {
        (rx.all().len() >= 3, ())
    })
    .await;
    // Down for an hour: the schedule (5 s, 5 min, 30 min, ...) runs on.
    for _ in 0..4 {
        app.gateway.clock.advance(Duration::from_secs(20 * 60));
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    rx.status.store(200, Ordering::SeqCst);
    // Back: the next scheduled attempts deliver everything.
    app.gateway.clock.advance(Duration::from_secs(3 * 3600));
    let got = eventually(Duration::from_secs(20), || async {
        app.gateway.clock.advance(Duration::from_secs(600));
        let d = rx.delivered();
        (d.len() >= 6, d)
    })
    .await;
    let mut per_id: BTreeMap<String, usize> = BTreeMap::new();
    for r in &got {
        r.verify(SECRET);
        *per_id.entry(r.id()).or_default() += 1;
    }
    assert_eq!(per_id.len(), 6, "every event");
    assert!(
        per_id.values().all(|n| *n == 1),
        "each webhook-id delivered once: {per_id:?}"
    );
    for id in &refunds {
        assert_eq!(types_of(&got, id), ["refund.created", "refund.succeeded"]);
    }
    // The operators see each delivery with its attempts (recorded just after
    // the receiver answered, so the last may land a moment after it is seen).
    let list = eventually(Duration::from_secs(10), || async {
        let l = ops(
            &app,
            "GET",
            "/v1/operator/webhook-deliveries?state=delivered",
        )
        .await;
        let n = l.body["data"].as_array().map_or(0, Vec::len);
        (l.status == 200 && n >= 6, l)
    })
    .await;
    assert_eq!(list.status, 200, "{}", list.text);
    let data = list.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 6);
    assert!(data.iter().any(|d| d["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["http_status"] == 503)));
    app.stop().await;
}

async fn gone_disables_the_endpoint_until_an_operator_enables_it(db: Db) {
    let rx = Receiver::start(410).await;
    let app = spawn_with(config_with(&fresh_db(db).await, &[(&rx.url, &[SECRET])])).await;
    refund(&app, "1.00").await;
    eventually(Duration::from_secs(10), || async {
        let l = ops(&app, "GET", "/v1/operator/webhook-deliveries").await;
        let disabled = l.body["data"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x["endpoint_disabled"] == true));
        (disabled, ())
    })
    .await;
    let tried = rx.all().len();
    app.gateway.clock.advance(Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.all().len(), tried, "a disabled endpoint gets nothing");
    rx.status.store(200, Ordering::SeqCst);
    let r = ops(&app, "POST", "/v1/operator/webhook-endpoints/demo/0/enable").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["result"], "endpoint_enabled");
    let got = rx.wait_delivered(2, Duration::from_secs(10)).await;
    got.iter().for_each(|r| r.verify(SECRET));
    ops(&app, "POST", "/v1/operator/webhook-endpoints/demo/7/enable")
        .await
        .assert_problem(404, "not_found");
    // A redelivery sends the same event (same id) again.
    let first = got[0].id();
    let r = ops(
        &app,
        "POST",
        &format!("/v1/operator/events/{first}/redeliver"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let again = rx.wait_delivered(3, Duration::from_secs(10)).await;
    assert!(again[2..].iter().any(|r| r.id() == first));
    app.stop().await;
}

async fn rotation_signs_with_every_secret(db: Db) {
    let old = Receiver::start(200).await;
    let rx = Receiver::start(200).await;
    let mut c = config_with(&fresh_db(db).await, &[(&old.url, &[SECRET])]);
    c.clients
        .iter_mut()
        .find(|c| c.name == "other")
        .unwrap()
        .webhooks
        .push(refund_gateway::config::WebhookEndpoint {
            url: rx.url.clone(),
            secrets: [SECRET_2, SECRET]
                .iter()
                .map(|s| refund_gateway::config::WebhookSecret::parse(s).unwrap())
                .collect(),
            events: Some([refund_gateway::types::DomainEvent::Succeeded].into()),
        });
    let app = spawn_with(c).await;
    let tx = app.pockyt_sale("10.00", "USD", "success").await;
    let r = app
        .send(
            app.http
                .post(format!("{}/v1/refunds", app.base))
                .bearer_auth(OTHER_KEY)
                .header("Idempotency-Key", ulid::Ulid::new().to_string())
                .json(&pockyt_refund(&tx, "2.00")),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let got = rx.wait_delivered(1, Duration::from_secs(10)).await;
    // Both the new and the old secret verify it (a receiver mid-rotation).
    got[0].verify(SECRET_2);
    got[0].verify(SECRET);
    assert_eq!(
        got[0].headers["webhook-signature"]
            .to_str()
            .unwrap()
            .split(' ')
            .count(),
        2
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.all().len(), 1, "only the subscribed type");
    assert!(
        old.all().is_empty(),
        "another client's endpoint gets nothing"
    );
    app.stop().await;
}

/// Two processes on one database: every event delivered, none twice.
async fn two_processes_never_both_deliver_one_attempt(db: Db) {
    let rx = Receiver::start(200).await;
    let db_url = fresh_db(db).await;
    let (sandbox, _keep) = spawn_sandbox(fast_sandbox()).await;
    let config = || {
        let mut c = config_with(&db_url, &[(&rx.url, &[SECRET])]);
        c.demo.as_mut().unwrap().external_sandbox = Some(sandbox.clone());
        c
    };
    let a = spawn_with(config()).await;
    let b = spawn_with(config()).await;
    for i in 0..6 {
        let app = if i % 2 == 0 { &a } else { &b };
        refund_at(app, &sandbox, "1.00").await;
    }
    let got = rx.wait_delivered(12, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let all = rx.delivered();
    let mut ids: Vec<String> = all.iter().map(|r| r.id()).collect();
    ids.sort();
    let n = ids.len();
    ids.dedup();
    assert_eq!((n, ids.len()), (12, 12), "each event once: {n} deliveries");
    got.iter().for_each(|r| r.verify(SECRET));
    a.stop().await;
    b.stop().await;
}

/// A receiver that never answers does not hold up another client's endpoint.
async fn a_hanging_receiver_does_not_delay_another(db: Db) {
    let slow = Receiver::start(200).await;
    slow.hang_ms.store(60_000, Ordering::SeqCst);
    let fast = Receiver::start(200).await;
    let app = spawn_with(config_with(
        &fresh_db(db).await,
        &[(&slow.url, &[SECRET]), (&fast.url, &[SECRET])],
    ))
    .await;
    for _ in 0..3 {
        refund(&app, "1.00").await;
    }
    let tx = app.pockyt_sale("10.00", "USD", "success").await;
    let started = std::time::Instant::now();
    let r = app
        .send(
            app.http
                .post(format!("{}/v1/refunds", app.base))
                .bearer_auth(OTHER_KEY)
                .header("Idempotency-Key", ulid::Ulid::new().to_string())
                .json(&pockyt_refund(&tx, "2.00")),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let got = fast.wait_delivered(2, Duration::from_secs(5)).await;
    assert!(
        started.elapsed() < refund_gateway::refunds::outgoing::ATTEMPT_TIMEOUT,
        "delivered while the other endpoint hangs"
    );
    got.iter().for_each(|r| r.verify(SECRET));
    app.stop().await;
}

/// `wait`: the answer comes when another process learns the outcome.
async fn waiting_answers_when_another_process_decides(db: Db) {
    let db_url = fresh_db(db).await;
    let (sandbox, _keep) = spawn_sandbox(fast_sandbox()).await;
    let config = || {
        let mut c = config_with(&db_url, &[]);
        c.demo.as_mut().unwrap().external_sandbox = Some(sandbox.clone());
        c
    };
    let mut quiet = config();
    // This one never asks the provider itself.
    quiet.reconcile_interval = Duration::from_secs(3600);
    let a = spawn_with(quiet).await;
    let b = spawn_with(config()).await;
    let tx = sale_at(
        &a.http,
        &sandbox,
        "pockyt",
        json!({"amount": "100.00", "currency": "USD", "status": "success"}),
    )
    .await;
    let pending = a
        .post_refund(
            Some(&ulid::Ulid::new().to_string()),
            &pockyt_refund(&tx, "0.94"),
        )
        .await;
    assert_eq!(pending.body["status"], "pending", "{}", pending.text);
    let id = pending.body["id"].as_str().unwrap();
    // b's reconciler settles it; a's waiting request sees it.
    let r = a.get(&format!("/v1/refunds/{id}?wait=20")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "succeeded", "{}", r.text);
    // A wait on a final refund answers at once; a bad wait is refused.
    a.get(&format!("/v1/refunds/{id}?wait=30"))
        .await
        .assert_refund(200, "succeeded");
    a.get(&format!("/v1/refunds/{id}?wait=31"))
        .await
        .assert_problem(400, "invalid_request");
    a.stop().await;
    b.stop().await;
}

/// A wait on a refund that stays pending ends with its current state.
async fn a_wait_times_out_with_the_current_state(db: Db) {
    let mut c = config_with(&fresh_db(db).await, &[]);
    c.reconcile_interval = Duration::from_secs(3600);
    let app = spawn_with(c).await;
    let tx = app.pockyt_sale("100.00", "USD", "success").await;
    let pending = app
        .post_refund(
            Some(&ulid::Ulid::new().to_string()),
            &pockyt_refund(&tx, "0.94"),
        )
        .await;
    let id = pending.body["id"].as_str().unwrap();
    let started = std::time::Instant::now();
    let r = app.get(&format!("/v1/refunds/{id}?wait=1")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "pending");
    assert!(started.elapsed() >= Duration::from_secs(1));
    app.stop().await;
}

/// A pending refund says why and when the gateway asks next, and its
/// history shows each provider answer, also the ones that changed nothing.
async fn a_pending_refund_says_why_and_what_happens_next(db: Db) {
    let mut c = config_with(&fresh_db(db).await, &[]);
    c.reconcile_interval = Duration::from_secs(3600);
    let app = spawn_with(c).await;
    // The sandbox answers ...92 with a 503: the outcome is unknown.
    let r = refund(&app, "0.92").await;
    assert_eq!(r["status"], "pending", "{r}");
    assert_eq!(r["pending_reason"], "outcome_unknown");
    assert!(r["next_check_at"].as_str().unwrap().ends_with('Z'));
    let id = r["id"].as_str().unwrap();
    let history = app.get(&format!("/v1/refunds/{id}/events")).await;
    let lines: Vec<String> = history.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["detail"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("provider answered unknown")),
        "the 503 is in the history: {lines:?}"
    );
    // A pending answer (...94): awaiting the provider's confirmation.
    let p = refund(&app, "0.94").await;
    assert_eq!(p["pending_reason"], "awaiting_provider_confirmation", "{p}");
    // Final refunds carry neither.
    let done = refund(&app, "1.00").await;
    assert!(done["pending_reason"].is_null() && done["next_check_at"].is_null());
    app.stop().await;
}

/// A webhook that settles a refund before the provider answers our call
/// (the sandbox's ...91: the IPN first, the answer after our timeout):
/// `refund.created` still comes first, and once.
async fn created_comes_first_whoever_settles_the_refund(db: Db) {
    let mut c = config_with(&fresh_db(db).await, &[]);
    c.demo.as_mut().unwrap().sandbox_ipns = true;
    let app = spawn_with(c).await;
    let r = refund(&app, "0.91").await;
    let id = r["id"].as_str().unwrap().to_string();
    let types = eventually(Duration::from_secs(10), || async {
        let feed = app.get("/v1/events?limit=100").await;
        let t: Vec<String> = feed.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["data"]["id"] == id.as_str())
            .map(|e| e["type"].as_str().unwrap().to_string())
            .collect();
        (t.iter().any(|t| t == "refund.succeeded"), t)
    })
    .await;
    // The call's own (late) answer has come and gone by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let feed = app.get("/v1/events?limit=100").await;
    let after: Vec<&str> = feed.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"]["id"] == id.as_str())
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["refund.created", "refund.succeeded"]);
    assert_eq!(
        after,
        ["refund.created", "refund.succeeded"],
        "no second created"
    );
    app.stop().await;
}

both_backends!(
    created_comes_first_whoever_settles_the_refund,
    a_pending_refund_says_why_and_what_happens_next,
    a_refund_reaches_the_pos_as_signed_events,
    the_feed_pages_without_gaps_or_repeats,
    a_down_receiver_gets_every_event_when_back,
    gone_disables_the_endpoint_until_an_operator_enables_it,
    rotation_signs_with_every_secret,
    two_processes_never_both_deliver_one_attempt,
    a_hanging_receiver_does_not_delay_another,
    waiting_answers_when_another_process_decides,
    a_wait_times_out_with_the_current_state,
);

/// A receiver that answers 200 and then drips its body is cut at the
/// attempt's timeout: not delivered, tried again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_drip_receiver_is_cut_at_the_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                let _ = sock.read(&mut buf).await;
                let _ = sock
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n")
                    .await;
                for _ in 0..100 {
                    if sock.write_all(b"x").await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
        }
    });
    let app = spawn_with(config_with(
        &fresh_db(Db::Sqlite).await,
        &[(&url, &[SECRET])],
    ))
    .await;
    refund(&app, "1.00").await;
    let started = std::time::Instant::now();
    let attempt = eventually(Duration::from_secs(40), || async {
        let l = ops(&app, "GET", "/v1/operator/webhook-deliveries?state=pending").await;
        let a = l.body["data"].as_array().and_then(|d| {
            d.iter()
                .find_map(|d| d["attempt_log"].as_array()?.first().cloned())
        });
        (a.is_some(), a.unwrap_or_default())
    })
    .await;
    assert!(
        attempt["error"]
            .as_str()
            .unwrap_or("")
            .contains("no complete answer"),
        "{attempt}"
    );
    assert!(
        attempt["http_status"].is_null(),
        "a 200 that never finishes is no delivery"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    app.stop().await;
}

#[test]
fn a_secret_is_never_shown() {
    let s = refund_gateway::config::WebhookSecret::parse(SECRET).unwrap();
    assert!(!format!("{s:?}").contains("MfKQ"));
    let err = refund_gateway::config::WebhookSecret::parse("whsec_c2hvcnQ=").unwrap_err();
    assert!(!err.contains("c2hvcnQ"), "{err}");
    let _ = json!(null);
}
