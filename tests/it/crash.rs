//! Crash tests with real processes: the sandbox and the gateway run as the
//! real binary; the gateway is SIGKILLed while the provider is still answering.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{fresh_db, Db};
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
    if !crate::common::postgres_or_skip("sigkill_one_of_two_gateways_on_postgres").await {
        return;
    }
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

/// Holds `idle` connections that send nothing and `slow` that send half a
/// request header, from its own source address (its own port range).
const ATTACKER: &str = r#"
import socket, sys
host, port, src, idle, slow = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
socks = []
for i in range(idle + slow):
    s = socket.socket()
    try:
        # Pick the port at connect time (IP_BIND_ADDRESS_NO_PORT): binding
        # port 0 first makes each bind scan every port already taken.
        s.setsockopt(socket.IPPROTO_IP, 24, 1)
        s.bind((src, 0))
        s.connect((host, port))
        if i >= idle:
            s.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    except OSError as e:
        print("attacker stopped early:", e, file=sys.stderr)
        break
    socks.append(s)
print(len(socks), flush=True)
sys.stdin.read()
"#;

/// A flood of 20,000 idle and 2,000 slow-header connections, held open by
/// two other processes, does not keep `/healthz` or a refund from answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_flood_does_not_lock_out_clients() {
    use std::io::BufRead;
    let port = free_port();
    let db = fresh_db(Db::Sqlite).await;
    let _gw = Proc(
        bin()
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--database-url",
                &db,
            ])
            .env_remove("REFUND_GATEWAY_CONFIG")
            .env_remove("REFUND_GATEWAY_SANDBOX_URL")
            .env("REFUND_GATEWAY_DEMO_API_KEY", KEY)
            .spawn()
            .unwrap(),
    );
    let http = reqwest::Client::new();
    wait_healthy(&http, port).await;
    let mut children = vec![];
    for src in ["127.0.0.2", "127.0.0.3"] {
        let child = Command::new("python3")
            .args([
                "-c",
                ATTACKER,
                "127.0.0.1",
                &port.to_string(),
                src,
                "10000",
                "1000",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs the attacker");
        children.push((src, child));
    }
    let mut attackers = vec![];
    for (src, mut child) in children {
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let held: usize = line.trim().parse().unwrap_or(0);
        assert_eq!(
            held, 11_000,
            "the attacker from {src} opened its connections"
        );
        attackers.push(Proc(child));
    }
    // Fresh clients (no pooled connection), as a POS after the flood began.
    let fresh = || {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    };
    let started = std::time::Instant::now();
    let health = fresh()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .expect("/healthz answers under the flood");
    let health_took = started.elapsed();
    assert_eq!(health.status().as_u16(), 200);
    let started = std::time::Instant::now();
    let (status, body) = json(
        fresh()
            .post(format!("http://127.0.0.1:{port}/v1/refunds"))
            .bearer_auth(KEY)
            .header("Idempotency-Key", "under-flood")
            .json(&json!({"provider": "pockyt", "transaction_no": refund_gateway::sandbox::demo_sales::POCKYT_TRANSACTION_NO, "amount": "1.00", "currency": "USD"})),
    )
    .await;
    let refund_took = started.elapsed();
    assert_eq!(
        (status, body["status"].as_str()),
        (201, Some("succeeded")),
        "{body}"
    );
    eprintln!(
        "flood of 20000 idle + 2000 slow-header connections: /healthz {health_took:?}, refund {refund_took:?}"
    );
    drop(attackers);
}
