//! Proof under faults: a fault mix under load, exclusive reconciliation
//! leases across processes, a database outage, and fuzzed public endpoints.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

type Op<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// Runs `ops` with at most `width` in flight.
async fn bounded<T: Send + 'static>(width: usize, ops: Vec<Op<T>>) -> Vec<T> {
    let sem = Arc::new(tokio::sync::Semaphore::new(width));
    let mut handles = vec![];
    for op in ops {
        let permit = sem.clone().acquire_owned().await.unwrap();
        handles.push(tokio::spawn(async move {
            let out = op.await;
            drop(permit);
            out
        }));
    }
    let mut out = vec![];
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

async fn fault_mix_under_load(db: Db) {
    let mut c = test_config(&fresh_db(db).await);
    c.reconcile_max_attempts = 6;
    c.reconcile_base_delay = Duration::from_millis(100);
    c.reconcile_max_delay = Duration::from_millis(300);
    if let Some(d) = c.demo.as_mut() {
        d.sandbox_ipns = true;
    }
    let app = Arc::new(spawn_with(c).await);
    let mut sales = vec![];
    for _ in 0..30 {
        sales.push(app.pockyt_sale("10.00", "USD", "success").await);
    }
    let amounts = ["1.00", "0.91", "0.92", "0.93", "0.94", "2.50", "0.50"];
    let mut ops: Vec<Op<(u16, Value)>> = vec![];
    for i in 0..300usize {
        let app = app.clone();
        let body = pockyt_refund(&sales[(i * 7) % sales.len()], amounts[i % amounts.len()]);
        ops.push(Box::pin(async move {
            let r = app.post_refund(Some(&format!("mix-{i}")), &body).await;
            (r.status, r.body)
        }));
    }
    let results = bounded(24, ops).await;
    for (status, body) in &results {
        assert!(
            *status == 201 || (*status == 422 && body["code"] == "amount_exceeds_refundable"),
            "unexpected answer {status}: {body}"
        );
    }
    let created = results.iter().filter(|(s, _)| *s == 201).count();

    // Everything settles: final, or (only the 503s, which may never be proven
    // unapplied) pending with a review reason once the reconciliation cap is hit.
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    let refunds = loop {
        let refunds = all_refunds(&app).await;
        let mut unsettled = 0;
        for r in &refunds {
            if r["status"] == "pending" {
                let row = app
                    .gateway
                    .store
                    .get_refund_any_client(r["id"].as_str().unwrap())
                    .await
                    .unwrap()
                    .unwrap();
                if row.review_reason.is_none() {
                    unsettled += 1;
                }
            }
        }
        if unsettled == 0 || tokio::time::Instant::now() > end {
            assert_eq!(unsettled, 0, "refunds still unsettled after the deadline");
            break refunds;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        refunds.len(),
        created,
        "every acknowledged refund is recorded, and only those"
    );
    for r in refunds.iter().filter(|r| r["status"] == "pending") {
        assert_eq!(
            r["amount"], "0.92",
            "only provider-503 refunds may end under review: {r}"
        );
    }
    for r in refunds
        .iter()
        .filter(|r| r["amount"] == "0.91" || r["amount"] == "0.94")
    {
        assert_eq!(r["status"], "succeeded", "{r}");
    }
    let mut succeeded: HashMap<String, i64> = HashMap::new();
    for r in refunds.iter().filter(|r| r["status"] == "succeeded") {
        let cents = (r["amount"].as_str().unwrap().parse::<f64>().unwrap() * 100.0).round() as i64;
        *succeeded
            .entry(r["transaction_no"].as_str().unwrap().to_string())
            .or_default() += cents;
    }
    for s in &sales {
        let tx = s["transactionNo"].as_str().unwrap();
        let at_provider = app.sandbox().refunded_total("pockyt", tx).unwrap();
        assert_eq!(
            succeeded.get(tx).copied().unwrap_or(0),
            at_provider,
            "sale {tx}: gateway and provider disagree"
        );
        assert!(at_provider <= 1000);
    }
    let n_succeeded = refunds
        .iter()
        .filter(|r| r["status"] == "succeeded")
        .count() as u64;
    assert_eq!(
        app.sandbox().stats().pockyt_refunds_applied,
        n_succeeded,
        "no refund lost, none doubled"
    );
}

/// Two stores (two pools, as two processes have) claiming the same due
/// refunds never get the same one.
async fn reconciliation_leases_are_exclusive(db: Db) {
    let url = fresh_db(db).await;
    let a = refund_gateway::store::Store::connect(&url, 4)
        .await
        .unwrap();
    let b = refund_gateway::store::Store::connect(&url, 4)
        .await
        .unwrap();
    let now = refund_gateway::types::Timestamp::host_now();
    for i in 0..60 {
        let row = refund_gateway::store::RefundRow {
            next_check_at: Some(now - ms(1)),
            ..stored_refund(
                &format!("rf_lease_{i}"),
                "acct",
                &format!("tx{i}"),
                &format!("REF{i}"),
            )
        };
        a.create_refund(&row, &Default::default()).await.unwrap();
    }
    // The two claim in rounds (a barrier starts each), so both take part
    // however the test threads are scheduled.
    let rounds = std::sync::Arc::new(tokio::sync::Barrier::new(2));
    let claim = |s: refund_gateway::store::Store| {
        let rounds = rounds.clone();
        async move {
            let mut got = vec![];
            for _ in 0..40 {
                rounds.wait().await;
                let now = refund_gateway::types::Timestamp::host_now();
                let batch = s.claim_due(now, now + ms(60_000), 3).await.unwrap();
                got.extend(batch.into_iter().map(|r| r.id));
            }
            got
        }
    };
    let (x, y) = tokio::join!(
        tokio::spawn(claim(a.clone())),
        tokio::spawn(claim(b.clone()))
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    let mut all: Vec<String> = x.iter().chain(y.iter()).map(|id| id.to_string()).collect();
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "a refund was claimed twice");
    assert_eq!(n, 60, "every due refund was claimed once");
    assert!(!x.is_empty() && !y.is_empty(), "both processes took part");
}

both_backends!(fault_mix_under_load, reconciliation_leases_are_exclusive);

/// A TCP proxy in front of Postgres that the test can cut and restore: the
/// gateway sees exactly what a database outage looks like (connections reset,
/// new ones refused) without disturbing the other tests sharing the server.
struct CuttableProxy {
    port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl CuttableProxy {
    async fn start(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (up2, conns2) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                conns2.lock().unwrap().push(task.abort_handle());
            }
        });
        Self { port, up, conns }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_is_reported_and_survived() {
    if !crate::common::postgres_or_skip("database_outage_is_reported_and_survived").await {
        return;
    }
    let direct = fresh_db(Db::Postgres).await;
    let (base, dbname) = direct.rsplit_once('/').unwrap();
    let host = base
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or("127.0.0.1:5432");
    let target: std::net::SocketAddr = tokio::net::lookup_host(host).await.unwrap().next().unwrap();
    let proxy = CuttableProxy::start(target).await;
    let via_proxy = format!(
        "{}@127.0.0.1:{}/{dbname}",
        base.rsplit_once('@')
            .map(|(u, _)| u)
            .unwrap_or("postgres://postgres"),
        proxy.port
    );
    let app = Arc::new(spawn_app(&via_proxy).await);
    outage_drill(app, || proxy.cut(), || proxy.restore()).await;
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            "[ -~]{0,12}".prop_map(Value::String),
            prop_oneof![
                Just("pockyt"),
                Just("pay10"),
                Just("USD"),
                Just("1.00"),
                Just("-0"),
                Just("1e3"),
                Just("0.001")
            ]
            .prop_map(|s| json!(s)),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("provider".to_string()),
                        Just("transaction_no".to_string()),
                        Just("reference".to_string()),
                        Just("amount".to_string()),
                        Just("currency".to_string()),
                        Just("metadata".to_string()),
                        Just("receipt_email".to_string()),
                        "[a-z_]{1,8}",
                    ],
                    inner,
                    0..7
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    #[derive(Debug, Clone)]
    enum Input {
        Refund(Value),
        RawRefund(Vec<u8>),
        Query(String),
        Ipn(String, Vec<u8>),
    }

    fn input() -> impl Strategy<Value = Input> {
        prop_oneof![
            4 => json_value().prop_map(Input::Refund),
            1 => proptest::collection::vec(any::<u8>(), 0..200).prop_map(Input::RawRefund),
            1 => "[ -~]{0,60}".prop_map(Input::Query),
            1 => (prop_oneof![Just("pockyt".to_string()), Just("pay10".to_string()), "[a-z]{1,6}"], proptest::collection::vec(any::<u8>(), 0..200))
                .prop_map(|(p, b)| Input::Ipn(p, b)),
        ]
    }

    #[test]
    fn public_endpoints_never_fail_on_client_mistakes() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let app = rt.block_on(async { spawn_app(&fresh_db(Db::Sqlite).await).await });
        let created = std::sync::atomic::AtomicUsize::new(0);
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: 300,
            ..ProptestConfig::default()
        });
        runner
            .run(&input(), |inp| {
                let (status, text) = rt.block_on(async {
                    let r = match &inp {
                        Input::Refund(v) => {
                            app.post_refund(Some(&ulid::Ulid::new().to_string()), v)
                                .await
                        }
                        Input::RawRefund(b) => {
                            app.send(
                                app.http
                                    .post(format!("{}/v1/refunds", app.base))
                                    .bearer_auth(KEY)
                                    .header("content-type", "application/json")
                                    .header("Idempotency-Key", ulid::Ulid::new().to_string())
                                    .body(b.clone()),
                            )
                            .await
                        }
                        Input::Query(q) => {
                            app.get(&format!("/v1/refunds?{}", q.replace('#', "%23")))
                                .await
                        }
                        Input::Ipn(p, b) => {
                            app.send(
                                app.http
                                    .post(format!("{}/ipn/{p}", app.base))
                                    .body(b.clone()),
                            )
                            .await
                        }
                    };
                    (r.status, r.text)
                });
                prop_assert!(status < 500, "{inp:?} -> {status} {text}");
                if status == 201 {
                    created.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                Ok(())
            })
            .unwrap();
        let rows = rt.block_on(async { all_refunds(&app).await.len() });
        assert_eq!(
            rows,
            created.load(std::sync::atomic::Ordering::SeqCst),
            "only accepted requests wrote records"
        );
        rt.block_on(async { assert_eq!(app.get("/healthz").await.status, 200) });
    }
}
