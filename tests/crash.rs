//! Crash tests with real processes: the sandbox and the gateway run as the
//! real binary; the gateway is SIGKILLed while the provider is still answering.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{fresh_db, Db};
use serde_json::{json, Value};

const KEY: &str = "sk_crash_test";

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn kill9(&mut self) {
        // Child::kill sends SIGKILL on Unix: no shutdown code runs.
        self.0.kill().expect("kill");
        self.0.wait().expect("reap");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_refund-gateway"));
    c.stdout(Stdio::null())
        .stderr(Stdio::null())
        .env("RUST_LOG", "warn");
    c
}

fn sandbox(port: u16) -> Proc {
    // No --ipn-url: the outcome must come from reconciliation after the crash.
    Proc(
        bin()
            .args([
                "sandbox",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--slow-ms",
                "4000",
            ])
            .spawn()
            .unwrap(),
    )
}

fn gateway(port: u16, db: &str, sandbox_port: u16) -> Proc {
    Proc(
        bin()
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--database-url",
                db,
            ])
            .env_remove("REFUND_GATEWAY_CONFIG")
            .env("REFUND_GATEWAY_DEMO_API_KEY", KEY)
            .env(
                "REFUND_GATEWAY_SANDBOX_URL",
                format!("http://127.0.0.1:{sandbox_port}"),
            )
            .env("REFUND_GATEWAY_PROVIDER_TIMEOUT_MS", "1000")
            .spawn()
            .unwrap(),
    )
}

async fn wait_healthy(http: &reqwest::Client, port: u16) {
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
        {
            if r.status().is_success() {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < end,
            "process on {port} did not become healthy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn json(r: reqwest::RequestBuilder) -> (u16, Value) {
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn stats(http: &reqwest::Client, sb: u16) -> Value {
    json(http.get(format!("http://127.0.0.1:{sb}/sandbox/stats")))
        .await
        .1
}

fn refund(tx: &str, amount: &str) -> Value {
    json!({"provider": "pockyt", "transaction_no": tx, "amount": amount, "currency": "USD"})
}

/// Refunds a few amounts (acknowledged), then starts a magic-91 refund on
/// `victim` and SIGKILLs it once the sandbox has applied the refund but not answered.
async fn crash_mid_call(
    http: &reqwest::Client,
    sb: u16,
    victim_port: u16,
    victim: &mut Proc,
) -> (String, Vec<Value>) {
    let (_, sale) = json(
        http.post(format!("http://127.0.0.1:{sb}/sandbox/pockyt/payments"))
            .json(&json!({"amount": "10.00", "currency": "USD"})),
    )
    .await;
    let tx = sale["transactionNo"].as_str().unwrap().to_string();
    let mut acknowledged = vec![];
    for i in 0..3 {
        let (status, body) = json(
            http.post(format!("http://127.0.0.1:{victim_port}/v1/refunds"))
                .bearer_auth(KEY)
                .header("Idempotency-Key", format!("ack-{i}"))
                .json(&refund(&tx, "1.00")),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        acknowledged.push(body);
    }
    let before = stats(http, sb).await["pockyt_refunds_applied"]
        .as_u64()
        .unwrap();
    let url = format!("http://127.0.0.1:{victim_port}/v1/refunds");
    let in_flight = {
        let http = http.clone();
        let body = refund(&tx, "0.91");
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth(KEY)
                .header("Idempotency-Key", "victim")
                .json(&body)
                .send()
                .await
        })
    };
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    while stats(http, sb).await["pockyt_refunds_applied"]
        .as_u64()
        .unwrap()
        == before
    {
        assert!(
            tokio::time::Instant::now() < end,
            "the sandbox never received the refund"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    victim.kill9();
    assert!(
        in_flight.await.unwrap().is_err(),
        "the POS never got an answer"
    );
    (tx, acknowledged)
}

async fn settles_to_succeeded(http: &reqwest::Client, port: u16, tx: &str) -> Vec<Value> {
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, list) = json(
            http.get(format!(
                "http://127.0.0.1:{port}/v1/refunds?transaction_no={tx}"
            ))
            .bearer_auth(KEY),
        )
        .await;
        let data = list["data"].as_array().cloned().unwrap_or_default();
        let victim = data.iter().find(|r| r["amount"] == "0.91");
        if victim.is_some_and(|v| v["status"] == "succeeded") {
            return data;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "the cut refund never settled: {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn sigkill_mid_call_then_restart_on_sqlite() {
    let http = reqwest::Client::new();
    let (sb, gw) = (free_port(), free_port());
    let _sandbox = sandbox(sb);
    wait_healthy(&http, sb).await;
    let db = fresh_db(Db::Sqlite).await;
    let mut victim = gateway(gw, &db, sb);
    wait_healthy(&http, gw).await;
    let (tx, acknowledged) = crash_mid_call(&http, sb, gw, &mut victim).await;

    let _again = gateway(gw, &db, sb);
    wait_healthy(&http, gw).await;
    let all = settles_to_succeeded(&http, gw, &tx).await;
    for a in &acknowledged {
        assert!(
            all.iter()
                .any(|r| r["id"] == a["id"] && r["status"] == "succeeded"),
            "acknowledged refund {} missing",
            a["id"]
        );
    }
    let s = stats(&http, sb).await;
    assert_eq!(
        s["pockyt_refunds_applied"], 4,
        "the sandbox refunded each exactly once: {s}"
    );
    let (_, sale) = json(http.get(format!(
        "http://127.0.0.1:{sb}/sandbox/pockyt/payments/{tx}"
    )))
    .await;
    assert_eq!(sale["refunded"], "3.91");
    // A retry of the cut request now gets the settled refund, not a second one.
    let (status, body) = json(
        http.post(format!("http://127.0.0.1:{gw}/v1/refunds"))
            .bearer_auth(KEY)
            .header("Idempotency-Key", "victim")
            .json(&refund(&tx, "0.91")),
    )
    .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (201, Some("succeeded")),
        "{body}"
    );
    assert_eq!(stats(&http, sb).await["pockyt_refunds_applied"], 4);
}

#[tokio::test]
async fn sigkill_one_of_two_gateways_on_postgres() {
    let http = reqwest::Client::new();
    let (sb, a, b) = (free_port(), free_port(), free_port());
    let _sandbox = sandbox(sb);
    wait_healthy(&http, sb).await;
    let db = fresh_db(Db::Postgres).await;
    let mut gw_a = gateway(a, &db, sb);
    wait_healthy(&http, a).await;
    let _gw_b = gateway(b, &db, sb);
    wait_healthy(&http, b).await;
    let (tx, acknowledged) = crash_mid_call(&http, sb, a, &mut gw_a).await;

    // The surviving process reconciles the refund its peer was cut in the middle of.
    let all = settles_to_succeeded(&http, b, &tx).await;
    for a in &acknowledged {
        assert!(
            all.iter().any(|r| r["id"] == a["id"]),
            "acknowledged refund {} missing",
            a["id"]
        );
    }
    assert_eq!(stats(&http, sb).await["pockyt_refunds_applied"], 4);
    let (_, sale) = json(http.get(format!(
        "http://127.0.0.1:{sb}/sandbox/pockyt/payments/{tx}"
    )))
    .await;
    assert_eq!(sale["refunded"], "3.91");
}
