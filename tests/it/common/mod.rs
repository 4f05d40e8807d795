//! Test harness: fresh databases on both backends, gateways and sandboxes on
//! real loopback sockets, and a small client for the public API.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use refund_gateway::config::{Client, Config};
use refund_gateway::refunds::Gateway;
use refund_gateway::sandbox::{Sandbox, SandboxConfig};
use refund_gateway::types::ProviderKind;
use refund_gateway::Application;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::Connection;

pub const KEY: &str = "sk_test_demo";
pub const OTHER_KEY: &str = "sk_test_other";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// Where the Postgres half of the suite runs. It is never skipped: if this
/// server cannot be reached, the tests fail.
pub fn postgres_base() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// Whether the Postgres half of the suite can run. Without a server it is
/// skipped, said loudly on the terminal (written past the test harness's
/// output capture) with how to enable it; with `RG_REQUIRE_POSTGRES=1` (as
/// `.ci/run` sets) an unreachable server fails the test instead.
pub async fn postgres_or_skip(test: &str) -> bool {
    use std::io::Write;
    static REACHABLE: tokio::sync::OnceCell<bool> = tokio::sync::OnceCell::const_new();
    let base = postgres_base();
    let reachable = *REACHABLE
        .get_or_init(|| async {
            tokio::time::timeout(
                Duration::from_secs(5),
                sqlx::PgConnection::connect(&format!("{base}/postgres")),
            )
            .await
            .is_ok_and(|c| c.is_ok())
        })
        .await;
    if reachable {
        return true;
    }
    if std::env::var("RG_REQUIRE_POSTGRES").is_ok_and(|v| !v.is_empty()) {
        panic!("Postgres at {base} is required (RG_REQUIRE_POSTGRES is set) but cannot be reached");
    }
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED {test} on Postgres: no server at {base}. Start one (or set TEST_POSTGRES_URL) to run the Postgres half. ***"
    );
    if SKIPPED.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
        // SAFETY: registers a plain function to run at process exit.
        unsafe {
            libc::atexit(report_skipped);
        }
    }
    false
}

/// Tests whose Postgres half was skipped in this run (the harness counts
/// them as passed; the line printed at exit says how many they were).
static SKIPPED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

extern "C" fn report_skipped() {
    use std::io::Write;
    let n = SKIPPED.load(std::sync::atomic::Ordering::SeqCst);
    let _ = writeln!(
        std::io::stderr(),
        "\n*** {n} test(s) SKIPPED their Postgres half (no server at {}); the \"passed\" count above includes them. ***",
        postgres_base()
    );
}

/// A fresh, empty database URL of the given kind.
pub async fn fresh_db(db: Db) -> String {
    let name = format!("rg_test_{}", ulid::Ulid::new().to_string().to_lowercase());
    match db {
        Db::Sqlite => {
            let path = std::env::temp_dir().join(format!("{name}.db"));
            let url = format!("sqlite://{}", path.display());
            remember(&url);
            url
        }
        Db::Postgres => {
            let base = postgres_base();
            let mut conn = sqlx::PgConnection::connect(&format!("{base}/postgres"))
                .await
                .unwrap_or_else(|e| {
                    panic!("Postgres at {base} is required by the test suite: {e}")
                });
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await
                .expect("create test database");
            let url = format!("{base}/{name}");
            remember(&url);
            url
        }
    }
}

/// Databases and files this test process created, removed when it exits so
/// that runs leave nothing behind (tests may restart gateways on one
/// database, so nothing is removed before the end).
static CREATED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

extern "C" fn remove_created() {
    let urls = std::mem::take(&mut *CREATED.lock().unwrap_or_else(|e| e.into_inner()));
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    for url in urls {
        if let Some(path) = url.strip_prefix("sqlite://") {
            for suffix in ["", "-wal", "-shm", ".sandbox.json", ".sandbox.tmp"] {
                let _ = std::fs::remove_file(format!("{path}{suffix}"));
            }
            continue;
        }
        let Some((base, name)) = url.rsplit_once('/') else {
            continue;
        };
        rt.block_on(async {
            if let Ok(mut conn) = sqlx::PgConnection::connect(&format!("{base}/postgres")).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await;
            }
        });
    }
}

fn remember(url: &str) {
    static REGISTER: std::sync::Once = std::sync::Once::new();
    // SAFETY: registers a plain function to run at process exit.
    REGISTER.call_once(|| unsafe {
        libc::atexit(remove_created);
    });
    CREATED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(url.to_string());
}

pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub sandbox: Option<Sandbox>,
    pub gateway: Arc<Gateway>,
    pub db_url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub fn fast_sandbox() -> SandboxConfig {
    let mut s = SandboxConfig::demo();
    s.slow_response = Duration::from_millis(1500);
    s.pending_delay = Duration::from_millis(300);
    s
}

/// Demo-mode config with short provider timeouts and quick reconciliation,
/// plus a second API client bound to the same Pockyt account.
pub fn test_config(db_url: &str) -> Config {
    let mut c = Config::demo(db_url, KEY);
    c.listen = "127.0.0.1:0".into();
    c.http.timeout = Duration::from_millis(600);
    c.reconcile_interval = Duration::from_millis(100);
    c.reconcile_base_delay = Duration::from_millis(200);
    c.reconcile_max_delay = Duration::from_millis(1000);
    if let Some(d) = c.demo.as_mut() {
        let fast = fast_sandbox();
        d.sandbox_slow_response = fast.slow_response;
        d.sandbox_pending_delay = fast.pending_delay;
        // Most tests watch one mechanism at a time; webhook tests turn IPNs on.
        d.sandbox_ipns = false;
    }
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&Sha256::digest(OTHER_KEY.as_bytes()));
    c.clients.push(Client {
        name: "other".into(),
        key_hashes: vec![hash],
        accounts: [(ProviderKind::Pockyt, "pockyt-sandbox".to_string())]
            .into_iter()
            .collect(),
        webhooks: vec![],
    });
    c
}

pub async fn spawn_app(db_url: &str) -> TestApp {
    spawn_with(test_config(db_url)).await
}

pub async fn spawn_with(config: Config) -> TestApp {
    let db_url = config.database_url.clone();
    let app = Application::build(config).await.expect("gateway builds");
    let base = format!("http://{}", app.addr());
    let sandbox = app.sandbox();
    let gateway = app.gateway();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        app.run_until(async {
            let _ = rx.await;
        })
        .await
        .expect("serve");
    });
    TestApp {
        base,
        http: reqwest::Client::new(),
        sandbox,
        gateway,
        db_url,
        stop: Some(tx),
        task: Some(task),
    }
}

/// A standalone sandbox on its own socket, as `refund-gateway sandbox` runs it.
pub async fn spawn_sandbox(config: SandboxConfig) -> (String, Sandbox) {
    let sandbox = Sandbox::new(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = refund_gateway::sandbox::standalone_router(&sandbox);
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    (url, sandbox)
}

pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Resp {
    /// The answer is a problem with this HTTP status and `code`.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.body["code"].as_str()),
            (status, Some(code)),
            "{}",
            self.text
        );
    }

    /// The answer is a refund object with this HTTP status and refund `status`.
    #[track_caller]
    pub fn assert_refund(&self, status: u16, refund_status: &str) {
        assert_eq!(
            (self.status, self.body["status"].as_str()),
            (status, Some(refund_status)),
            "{}",
            self.text
        );
    }
}

impl TestApp {
    /// Graceful shutdown; waits until the server and worker have stopped.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    pub fn sandbox(&self) -> &Sandbox {
        self.sandbox
            .as_ref()
            .expect("this app mounts its own sandbox")
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Resp {
        let r = req.send().await.expect("request reaches the gateway");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            body,
            text,
        }
    }

    pub async fn post_refund(&self, key: Option<&str>, body: &Value) -> Resp {
        let mut req = self
            .http
            .post(format!("{}/v1/refunds", self.base))
            .bearer_auth(KEY)
            .json(body);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        self.send(req).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(
            self.http
                .get(format!("{}{}", self.base, path))
                .bearer_auth(KEY),
        )
        .await
    }

    pub async fn list_all(&self) -> Vec<Value> {
        let r = self.get("/v1/refunds?limit=100").await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.body["data"].as_array().cloned().unwrap_or_default()
    }

    /// Creates a sale at a sandbox (this app's own unless `sandbox_url` is given).
    pub async fn pockyt_sale(&self, amount: &str, currency: &str, status: &str) -> Value {
        sale_at(
            &self.http,
            &self.base,
            "pockyt",
            json!({"amount": amount, "currency": currency, "status": status}),
        )
        .await
    }

    pub async fn pay10_sale(&self, amount: &str, currency: &str) -> Value {
        sale_at(
            &self.http,
            &self.base,
            "pay10",
            json!({"amount": amount, "currency": currency}),
        )
        .await
    }

    /// Polls a refund until `pred` holds or `deadline` passes.
    pub async fn wait_for(
        &self,
        id: &str,
        deadline: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        eventually(deadline, || async {
            let body = self.get(&format!("/v1/refunds/{id}")).await.body;
            (pred(&body), body)
        })
        .await
    }
}

pub async fn sale_at(http: &reqwest::Client, base: &str, provider: &str, body: Value) -> Value {
    let r = http
        .post(format!("{base}/sandbox/{provider}/payments"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    r.json().await.unwrap()
}

pub fn pockyt_refund(tx: &Value, amount: &str) -> Value {
    json!({"provider": "pockyt", "transaction_no": tx["transactionNo"], "amount": amount, "currency": "USD"})
}

pub fn pay10_refund(sale: &Value, amount: &str) -> Value {
    json!({"provider": "pay10", "transaction_no": sale["PG_REF_NUM"], "reference": sale["ORDER_ID"], "amount": amount, "currency": "AED"})
}

/// Declares `name` as two tests, one per backend: `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::common::Db::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if $crate::common::postgres_or_skip(stringify!($name)).await {
                    super::$name($crate::common::Db::Postgres).await
                }
            })*
        }
    };
}

/// Every refund of the demo client, through the paginated list.
pub async fn all_refunds(app: &TestApp) -> Vec<Value> {
    let mut out = vec![];
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(id) => format!("/v1/refunds?limit=100&starting_after={id}"),
            None => "/v1/refunds?limit=100".to_string(),
        };
        let r = app.get(&path).await;
        let data = r.body["data"].as_array().cloned().unwrap_or_default();
        after = data
            .last()
            .and_then(|d| d["id"].as_str())
            .map(str::to_string);
        out.extend(data);
        if r.body["has_more"] != true {
            return out;
        }
    }
}

/// A database outage while refunds flow: `cut` takes the database away and
/// `restore` brings it back. Checks `/readyz` reports it, requests fail with a
/// clear 503 problem (never a hang), the gateway recovers by itself, every
/// acknowledged refund is intact, and the books agree with the provider.
pub async fn outage_drill(
    app: std::sync::Arc<TestApp>,
    cut: impl FnOnce(),
    restore: impl FnOnce(),
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let sale = app.pockyt_sale("100.00", "USD", "success").await;

    // Refunds flow continuously from a background task through the outage.
    let flowing = Arc::new(AtomicBool::new(true));
    let acknowledged: Arc<std::sync::Mutex<Vec<Value>>> = Arc::default();
    let outage_answers: Arc<std::sync::Mutex<Vec<(u16, String)>>> = Arc::default();
    let pump = {
        let (app, flowing, acknowledged, answers, sale) = (
            app.clone(),
            flowing.clone(),
            acknowledged.clone(),
            outage_answers.clone(),
            sale.clone(),
        );
        tokio::spawn(async move {
            let mut i = 0;
            while flowing.load(Ordering::SeqCst) {
                i += 1;
                let started = tokio::time::Instant::now();
                let r = app
                    .post_refund(Some(&format!("flow-{i}")), &pockyt_refund(&sale, "0.10"))
                    .await;
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "a request hung for {:?}",
                    started.elapsed()
                );
                if r.status == 201 {
                    acknowledged.lock().unwrap().push(r.body);
                } else {
                    answers
                        .lock()
                        .unwrap()
                        .push((r.status, r.body["code"].as_str().unwrap_or("").to_string()));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !acknowledged.lock().unwrap().is_empty(),
        "refunds flow before the outage"
    );

    cut();
    let end = tokio::time::Instant::now() + Duration::from_secs(45);
    loop {
        let r = app.get("/readyz").await;
        if r.status == 503 {
            assert_eq!(r.body["code"], "database_unavailable");
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "/readyz never reported the outage"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        app.get("/healthz").await.status,
        200,
        "the process stays up"
    );

    restore();
    // Generous: recovery includes the pool's reconnect backoff, and the
    // machine may be busy with the rest of the suite.
    let end = tokio::time::Instant::now() + Duration::from_secs(90);
    while app.get("/readyz").await.status != 200 {
        assert!(
            tokio::time::Instant::now() < end,
            "the gateway did not recover by itself"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    flowing.store(false, Ordering::SeqCst);
    pump.await.unwrap();

    let answers = outage_answers.lock().unwrap().clone();
    assert!(!answers.is_empty(), "some requests met the outage");
    for (status, code) in &answers {
        assert!(
            (*status == 503 && code == "database_unavailable")
                || (*status == 409 && code == "request_in_progress"),
            "an outage answer must be a clear problem: {status} {code}"
        );
    }
    let r = app
        .post_refund(Some("after"), &pockyt_refund(&sale, "0.10"))
        .await;
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (201, Some("succeeded")),
        "{}",
        r.text
    );
    // Every refund acknowledged before or around the outage is intact.
    let acknowledged = acknowledged.lock().unwrap().clone();
    for a in &acknowledged {
        let got = app
            .get(&format!("/v1/refunds/{}", a["id"].as_str().unwrap()))
            .await;
        assert_eq!((got.status, &got.body["amount"]), (200, &a["amount"]));
    }
    // And the books agree once refunds cut by the outage are reconciled.
    let tx = sale["transactionNo"].as_str().unwrap().to_string();
    let end = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let refunds = all_refunds(&app).await;
        let pending = refunds.iter().filter(|r| r["status"] == "pending").count();
        let succeeded: i64 = refunds
            .iter()
            .filter(|r| r["status"] == "succeeded")
            .count() as i64
            * 10;
        if pending == 0 {
            assert_eq!(
                Some(succeeded),
                app.sandbox().refunded_total("pockyt", &tx),
                "gateway and provider agree"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "{pending} refunds never settled after the outage"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A refund id for a test row, made from a readable name (`rf_early` →
/// `rf_…000EARLY`): the same name gives the same id.
/// A moment `ms` milliseconds after the Unix epoch.
pub fn at(ms: i64) -> refund_gateway::types::Timestamp {
    refund_gateway::types::Timestamp::from_unix_ms(ms)
}

/// `n` milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub fn test_refund_id(name: &str) -> refund_gateway::types::RefundId {
    let body: String = name
        .trim_start_matches("rf_")
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .take(26)
        .collect();
    format!("rf_{body:0>26}")
        .parse()
        .expect("a valid refund id")
}

/// A pending 1.00 USD Pockyt refund row as the gateway stores it once sent,
/// for tests that write rows straight to the store.
pub fn stored_refund(
    id: &str,
    account: &str,
    transaction_no: &str,
    provider_reference: &str,
) -> refund_gateway::store::RefundRow {
    use refund_gateway::money::{Currency, Minor};
    use refund_gateway::store::{NewRefundRow, RefundRow, Submission};
    use refund_gateway::types::ProviderKind;
    let usd = Currency::from_code("USD").unwrap();
    RefundRow {
        settle_currency: Some(usd),
        idempotency_key: Some(format!("key-{id}")),
        submission: Submission::Sent,
        ..RefundRow::recorded(NewRefundRow {
            id: test_refund_id(id),
            client: "demo".into(),
            account: account.into(),
            provider: ProviderKind::Pockyt,
            livemode: false,
            amount: Minor::new(100).unwrap(),
            currency: usd,
            transaction_no: transaction_no.into(),
            provider_reference: provider_reference.into(),
            request_hash: "h".into(),
            now: refund_gateway::types::Timestamp::host_now(),
        })
    }
}

/// Polls `probe` every 50 ms until it reports done or `deadline` passes, and
/// returns its last value (for background work; never a bare sleep).
pub async fn eventually<T, F, Fut>(deadline: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (bool, T)>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        let (done, value) = probe().await;
        if done || tokio::time::Instant::now() > end {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A scratch folder of the system's temp dir, removed when dropped (also when
/// the test fails): a test run leaves nothing behind.
pub struct Scratch(std::path::PathBuf);

impl Scratch {
    pub fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir).expect("a scratch folder");
        Scratch(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A refund as the store holds it (for what the API does not show, such as
/// our reference at the provider).
pub async fn stored_row(app: &TestApp, id: &str) -> refund_gateway::store::RefundRow {
    app.gateway
        .store
        .get_refund_any_client(id)
        .await
        .unwrap()
        .unwrap()
}
