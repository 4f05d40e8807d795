//! Test harness: fresh databases on both backends, gateways and sandboxes on
//! real loopback sockets, and a small client for the public API.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use refund_gateway::config::{Client, Config};
use refund_gateway::providers::ProviderKind;
use refund_gateway::refunds::Gateway;
use refund_gateway::sandbox::{Sandbox, SandboxConfig};
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

/// A fresh, empty database URL of the given kind.
pub async fn fresh_db(db: Db) -> String {
    let name = format!("rg_test_{}", ulid::Ulid::new().to_string().to_lowercase());
    match db {
        Db::Sqlite => {
            let path = std::env::temp_dir().join(format!("{name}.db"));
            format!("sqlite://{}", path.display())
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
            format!("{base}/{name}")
        }
    }
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
        d.sandbox = fast_sandbox();
        // Most tests watch one mechanism at a time; webhook tests turn IPNs on.
        d.sandbox_ipns = false;
    }
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&Sha256::digest(OTHER_KEY.as_bytes()));
    c.clients.push(Client {
        name: "other".into(),
        key_hash: hash,
        accounts: [(ProviderKind::Pockyt, "pockyt-sandbox".to_string())]
            .into_iter()
            .collect(),
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
        let end = tokio::time::Instant::now() + deadline;
        loop {
            let r = self.get(&format!("/v1/refunds/{id}")).await;
            if pred(&r.body) || tokio::time::Instant::now() > end {
                return r.body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
            async fn $name() { super::$name($crate::common::Db::Postgres).await })*
        }
    };
}
