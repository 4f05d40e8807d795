//! refund-bench: the gateway's benchmark. Starts the sandbox and the gateway
//! as their own processes, then measures in one run: gateway throughput and
//! latency, the provider (sandbox) alone, the database floor, and latency at a
//! fixed rate. See the README's "Benchmark" section.

use std::collections::VecDeque;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use refund_gateway::config::Config;
use refund_gateway::money::{Currency, Minor};
use refund_gateway::providers::pockyt::{PockytAccount, PockytClient};
use refund_gateway::providers::{http_client, HttpSettings, RefundCall};
use refund_gateway::sandbox::{demo_credentials as creds, Sandbox, SandboxConfig};
use refund_gateway::store::Store;
use refund_gateway::types::Outcome;
use serde_json::{json, Value};

const KEY: &str = "sk_bench";

#[derive(Parser, Clone)]
#[command(
    about = "Benchmark: gateway vs provider alone vs database floor, plus latency at a fixed rate"
)]
struct Args {
    /// Storage backend for the gateway.
    #[arg(long, default_value = "sqlite")]
    backend: String,
    /// Concurrent clients in the saturated phases.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds per saturated phase.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Refunds per second in the fixed-rate phase.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Seconds of the fixed-rate phase.
    #[arg(long, default_value_t = 10)]
    rate_duration: u64,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    json: Option<String>,
    /// Postgres server for --backend postgres (a fresh database is created on it).
    #[arg(
        long,
        env = "BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    postgres_url: String,
    #[arg(long, hide = true)]
    internal_role: Option<String>,
    #[arg(long, hide = true)]
    listen: Option<String>,
    #[arg(long, hide = true)]
    db: Option<String>,
    #[arg(long, hide = true)]
    sandbox_url: Option<String>,
    /// Configure a webhook endpoint for the benchmark's client: a local
    /// receiver (its own process) answering 204 to every event.
    #[arg(long)]
    webhook: bool,
    /// The provider of the gateway's refunds: `pockyt` (a tran-query and a
    /// refund call each) or `pay10` (a refund call; with --sale-amount also
    /// its status enquiry first). The provider-alone phase is Pockyt's.
    #[arg(long, default_value = "pockyt")]
    provider: String,
    /// Pay10: each refund carries `sale_amount`, so the gateway asks Pay10
    /// about the sale (status enquiry) before refunding.
    #[arg(long)]
    sale_amount: bool,
    #[arg(long, hide = true)]
    webhook_url: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = rt.block_on(async {
        match args.internal_role.as_deref() {
            Some("sandbox") => run_sandbox(&args).await,
            Some("gateway") => run_gateway(&args).await,
            Some("receiver") => run_receiver(&args).await,
            _ => run_bench(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("refund-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_sandbox(args: &Args) -> anyhow::Result<()> {
    let sandbox = Sandbox::new(SandboxConfig::demo());
    let listener =
        tokio::net::TcpListener::bind(args.listen.as_deref().unwrap_or("127.0.0.1:0")).await?;
    axum::serve(
        listener,
        refund_gateway::sandbox::standalone_router(&sandbox),
    )
    .await?;
    Ok(())
}

/// A POS's webhook receiver: 204 to everything.
async fn run_receiver(args: &Args) -> anyhow::Result<()> {
    let listener =
        tokio::net::TcpListener::bind(args.listen.as_deref().unwrap_or("127.0.0.1:0")).await?;
    let app = axum::Router::new().fallback(|| async { axum::http::StatusCode::NO_CONTENT });
    axum::serve(listener, app).await?;
    Ok(())
}

/// The gateway exactly as `refund-gateway` serves it in demo mode, pointed at the sandbox process.
async fn run_gateway(args: &Args) -> anyhow::Result<()> {
    let mut config = Config::demo(args.db.as_deref().unwrap_or("sqlite://bench.db"), KEY);
    config.listen = args.listen.clone().unwrap_or_else(|| "127.0.0.1:0".into());
    if let Some(d) = config.demo.as_mut() {
        d.external_sandbox = args.sandbox_url.clone();
        d.webhook = args
            .webhook_url
            .clone()
            .map(|url| (url, refund_gateway::tools::webhook_secret()));
    }
    let app = refund_gateway::Application::build(config).await?;
    app.run_until(refund_gateway::shutdown_signal()).await?;
    Ok(())
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(18080)
}

fn spawn_role(role: &str, extra: &[String]) -> anyhow::Result<Proc> {
    let exe = std::env::current_exe()?;
    let child = Command::new(exe)
        .arg("--internal-role")
        .arg(role)
        .args(extra)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    Ok(Proc(child))
}

async fn wait_up(http: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end {
        if http
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("{url} did not come up")
}

/// Fresh sandbox sales, fetched in bulk ahead of the load (Pay10's as
/// `PG_REF_NUM|ORDER_ID`).
struct Sales {
    http: reqwest::Client,
    url: String,
    pay10: bool,
    queue: Mutex<VecDeque<String>>,
    refill: tokio::sync::Mutex<()>,
}

impl Sales {
    async fn fill(&self, n: usize) -> anyhow::Result<()> {
        let body: Value = self
            .http
            .post(&self.url)
            .json(&json!({"count": n, "amount": "1.00", "currency": if self.pay10 { "AED" } else { "USD" }}))
            .send()
            .await?
            .json()
            .await?;
        let mut q = self.queue.lock().expect("queue");
        if self.pay10 {
            let list = body["payments"].as_array().cloned().unwrap_or_default();
            q.extend(list.into_iter().filter_map(|p| {
                Some(format!(
                    "{}|{}",
                    p["PG_REF_NUM"].as_str()?,
                    p["ORDER_ID"].as_str()?
                ))
            }));
            return Ok(());
        }
        let list = body["transactionNos"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        q.extend(
            list.into_iter()
                .filter_map(|v| v.as_str().map(str::to_string)),
        );
        Ok(())
    }

    async fn next(&self) -> anyhow::Result<String> {
        loop {
            if let Some(t) = self.queue.lock().expect("queue").pop_front() {
                return Ok(t);
            }
            let _g = self.refill.lock().await;
            if self.queue.lock().expect("queue").is_empty() {
                self.fill(5000).await?;
            }
        }
    }
}

#[derive(Default)]
struct Tally {
    latencies_us: Mutex<Vec<u64>>,
    ok: AtomicU64,
    errors: AtomicU64,
}

impl Tally {
    fn record(&self, started: Instant, ok: bool) {
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.latencies_us.lock().expect("latencies").push(us);
        if ok {
            self.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn summary(&self, elapsed: Duration) -> Summary {
        let mut l = self.latencies_us.lock().expect("latencies").clone();
        l.sort_unstable();
        let pct = |p: f64| -> f64 {
            if l.is_empty() {
                return 0.0;
            }
            let idx = ((l.len() as f64 - 1.0) * p).round() as usize;
            l[idx] as f64 / 1000.0
        };
        let ok = self.ok.load(Ordering::Relaxed);
        Summary {
            rps: ok as f64 / elapsed.as_secs_f64(),
            errors: self.errors.load(Ordering::Relaxed),
            p50: pct(0.50),
            p90: pct(0.90),
            p99: pct(0.99),
            max: l.last().map(|v| *v as f64 / 1000.0).unwrap_or(0.0),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Summary {
    rps: f64,
    errors: u64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

async fn gateway_refund(http: &reqwest::Client, url: &str, tx: &str, sale_amount: bool) -> bool {
    let body = match tx.split_once('|') {
        Some((pg, order)) => {
            let mut b = json!({"provider": "pay10", "transaction_no": pg, "reference": order, "amount": "1.00", "currency": "AED"});
            if sale_amount {
                b["sale_amount"] = json!("1.00");
            }
            b
        }
        None => {
            json!({"provider": "pockyt", "transaction_no": tx, "amount": "1.00", "currency": "USD"})
        }
    };
    match http
        .post(url)
        .bearer_auth(KEY)
        .header("Idempotency-Key", tx)
        .json(&body)
        .send()
        .await
    {
        Ok(r) => {
            r.status().as_u16() == 201
                && r.json::<Value>()
                    .await
                    .is_ok_and(|b| b["status"] == "succeeded")
        }
        Err(_) => false,
    }
}

/// Runs `concurrency` closed-loop workers for `duration`.
async fn saturate<F, Fut>(concurrency: usize, duration: Duration, op: F) -> Summary
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    let deadline = start + duration;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (op, tally) = (op.clone(), tally.clone());
        set.spawn(async move {
            while Instant::now() < deadline {
                let t = Instant::now();
                let ok = op().await;
                tally.record(t, ok);
            }
        });
    }
    while set.join_next().await.is_some() {}
    tally.summary(start.elapsed())
}

/// Open loop: starts one operation every 1/rate s, whatever the answers.
async fn fixed_rate<F, Fut>(rate: u64, duration: Duration, op: F) -> Summary
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let tally = Arc::new(Tally::default());
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    let total = rate * duration.as_secs();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..total {
        tick.tick().await;
        let (op, tally) = (op.clone(), tally.clone());
        set.spawn(async move {
            let t = Instant::now();
            let ok = op().await;
            tally.record(t, ok);
        });
    }
    while set.join_next().await.is_some() {}
    tally.summary(start.elapsed())
}

/// The database floor: the three writes a refund costs the gateway (record
/// and reservation, send claim, outcome), issued directly with the very same
/// statements and lifecycle, without HTTP, providers or checks.
async fn database_floor_probe(
    store: &Store,
    row: &refund_gateway::store::RefundRow,
) -> Result<(), refund_gateway::store::StoreError> {
    use refund_gateway::providers::ProviderAnswer;
    use refund_gateway::refunds::lifecycle::{transition, Context, Transition};
    use refund_gateway::refunds::{apply_with, Applied};
    use refund_gateway::store::{CreateOutcome, SaleTerms, StoreError};
    let terms = SaleTerms {
        amount_minor: Some(row.amount_minor),
        currency_confirmed: true,
        external_minor: Minor::default(),
    };
    let created = store.create_refund(row, &terms).await?;
    if created != CreateOutcome::Created {
        return Err(StoreError::Corrupt(format!(
            "floor refund {} not created: {created:?}",
            row.id
        )));
    }
    // The gateway's default timings (never waited on here).
    static POLICY: std::sync::OnceLock<refund_gateway::refunds::lifecycle::Policy> =
        std::sync::OnceLock::new();
    let policy = POLICY.get_or_init(|| {
        refund_gateway::gateway_settings(&Config::demo("sqlite::memory:", "sk_floor")).policy
    });
    let ctx = Context {
        now: row.created_at,
        policy,
        receipt: None,
        deliver_events: false,
    };
    let claim = Transition::Claimed {
        version: row.version,
        send_by: row.created_at,
    };
    let Applied::Changed(sent) = apply_with(store, row, |r| transition(r, &claim, &ctx)).await?
    else {
        return Err(StoreError::Corrupt(format!(
            "floor refund {} not claimed",
            row.id
        )));
    };
    let answer = ProviderAnswer {
        outcome: Outcome::Succeeded,
        provider_refund_id: None,
        provider_status: None,
        provider_code: None,
        message: None,
    };
    let answered = Transition::Answered(&answer);
    apply_with(store, sent.after(), |r| transition(r, &answered, &ctx)).await?;
    Ok(())
}

/// A refund row like the gateway writes for a 1.00 USD Pockyt refund.
fn floor_row(n: u64) -> refund_gateway::store::RefundRow {
    use refund_gateway::store::{NewRefundRow, RefundRow};
    use refund_gateway::types::{ProviderKind, RefundId};
    let now = refund_gateway::types::Timestamp::host_now();
    let id = RefundId::generate();
    let usd = Currency::from_code("USD").expect("USD is a currency");
    RefundRow {
        settle_currency: Some(usd),
        reference: Some(format!("ref{n}")),
        idempotency_key: Some(id.to_string()),
        inflight_until: Some(now + Duration::from_secs(32)),
        next_check_at: Some(now + Duration::from_secs(32)),
        ..RefundRow::recorded(NewRefundRow {
            client: "floor".into(),
            account: "floor".into(),
            provider: ProviderKind::Pockyt,
            livemode: false,
            amount: Minor::new(100).expect("positive"),
            currency: usd,
            transaction_no: id.to_string(),
            provider_reference: id.to_string(),
            request_hash: "0".repeat(64),
            id,
            now,
        })
    }
}

fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_string)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

async fn run_bench(args: Args) -> anyhow::Result<()> {
    let db = match args.backend.as_str() {
        "sqlite" => format!(
            "sqlite://{}",
            std::env::temp_dir()
                .join(format!("refund-bench-{}.db", ulid::Ulid::new()))
                .display()
        ),
        "postgres" => {
            use sqlx::Connection;
            let name = format!("rg_bench_{}", ulid::Ulid::new().to_string().to_lowercase());
            let mut conn =
                sqlx::PgConnection::connect(&format!("{}/postgres", args.postgres_url)).await?;
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await?;
            format!("{}/{name}", args.postgres_url)
        }
        other => anyhow::bail!("--backend must be sqlite or postgres, not {other}"),
    };
    let (sb_port, gw_port) = (free_port(), free_port());
    let sandbox_url = format!("http://127.0.0.1:{sb_port}");
    let gateway_url = format!("http://127.0.0.1:{gw_port}");
    let _sandbox = spawn_role(
        "sandbox",
        &["--listen".into(), format!("127.0.0.1:{sb_port}")],
    )?;
    let mut gateway_args = vec![
        "--listen".into(),
        format!("127.0.0.1:{gw_port}"),
        "--db".into(),
        db.clone(),
        "--sandbox-url".into(),
        sandbox_url.clone(),
    ];
    let _receiver = if args.webhook {
        let port = free_port();
        gateway_args.extend(["--webhook-url".into(), format!("http://127.0.0.1:{port}/")]);
        Some(spawn_role(
            "receiver",
            &["--listen".into(), format!("127.0.0.1:{port}")],
        )?)
    } else {
        None
    };
    let gateway = spawn_role("gateway", &gateway_args)?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency.max(64) * 2)
        .build()?;
    wait_up(&http, &format!("{sandbox_url}/healthz")).await?;
    wait_up(&http, &format!("{gateway_url}/readyz")).await?;
    let pay10 = args.provider == "pay10";
    let sales = Arc::new(Sales {
        http: http.clone(),
        url: format!(
            "{sandbox_url}/sandbox/{}/payments/bulk",
            if pay10 { "pay10" } else { "pockyt" }
        ),
        pay10,
        queue: Mutex::new(VecDeque::new()),
        refill: tokio::sync::Mutex::new(()),
    });
    sales.fill(20_000).await?;
    // The provider-alone phase refunds Pockyt sales whatever the gateway's provider.
    let pockyt_sales = if pay10 {
        let s = Arc::new(Sales {
            http: http.clone(),
            url: format!("{sandbox_url}/sandbox/pockyt/payments/bulk"),
            pay10: false,
            queue: Mutex::new(VecDeque::new()),
            refill: tokio::sync::Mutex::new(()),
        });
        s.fill(20_000).await?;
        s
    } else {
        sales.clone()
    };
    let with_sale_amount = args.sale_amount;
    let duration = Duration::from_secs(args.duration);
    eprintln!(
        "refund-bench: {} backend, concurrency {}, {} s per phase{}",
        args.backend,
        args.concurrency,
        args.duration,
        if args.webhook {
            ", webhook endpoint configured (a local receiver)"
        } else {
            ""
        }
    );

    // Warm-up (connections, caches), not measured.
    let refunds_url = Arc::new(format!("{gateway_url}/v1/refunds"));
    let op = {
        let (http, sales, url) = (http.clone(), sales.clone(), refunds_url.clone());
        move || {
            let (http, sales, url) = (http.clone(), sales.clone(), url.clone());
            async move {
                match sales.next().await {
                    Ok(tx) => gateway_refund(&http, &url, &tx, with_sale_amount).await,
                    Err(_) => false,
                }
            }
        }
    };
    saturate(args.concurrency, Duration::from_secs(2), op.clone()).await;

    // The fixed-rate phase runs first, so the saturated phases' aftermath
    // (vacuum, checkpoints, WAL growth) does not colour its latencies.
    eprintln!("refund-bench: gateway at a fixed {} refunds/s", args.rate);
    let fixed = fixed_rate(
        args.rate,
        Duration::from_secs(args.rate_duration),
        op.clone(),
    )
    .await;
    eprintln!("refund-bench: gateway, saturated");
    let gateway_sat = saturate(args.concurrency, duration, op.clone()).await;

    eprintln!("refund-bench: provider alone, saturated");
    let pockyt = PockytClient::new(
        http_client(HttpSettings {
            connect_timeout: Duration::from_secs(3),
            timeout: Duration::from_secs(15),
        }),
        PockytAccount {
            base_url: format!("{sandbox_url}/sandbox/pockyt"),
            merchant_no: creds::POCKYT_MERCHANT_NO.into(),
            store_no: creds::POCKYT_STORE_NO.into(),
            token: secrecy::SecretString::from(creds::POCKYT_TOKEN.to_string()),
        },
    );
    let usd = Currency::from_code("USD")?;
    let provider_op = {
        let (pockyt, sales) = (pockyt.clone(), pockyt_sales.clone());
        move || {
            let (pockyt, sales) = (pockyt.clone(), sales.clone());
            async move {
                let Ok(tx) = sales.next().await else {
                    return false;
                };
                let call = RefundCall {
                    refund_id: tx.clone(),
                    provider_reference: tx[..18.min(tx.len())].to_string(),
                    transaction_no: Some(tx),
                    reference: None,
                    amount: Minor::new(100).expect("positive"),
                    currency: usd,
                    settle_currency: None,
                };
                pockyt.refund(&call).await.outcome == Outcome::Succeeded
            }
        }
    };
    let provider_sat = saturate(args.concurrency, duration, provider_op).await;

    eprintln!("refund-bench: database floor");
    let store = Store::connect(&db, 16).await?;
    let counter = Arc::new(AtomicU64::new(0));
    let floor_op = {
        let (store, counter) = (store.clone(), counter.clone());
        move || {
            let (store, counter) = (store.clone(), counter.clone());
            async move {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                database_floor_probe(&store, &floor_row(n)).await.is_ok()
            }
        }
    };
    let floor = saturate(args.concurrency, duration, floor_op).await;
    store.close().await;

    let rss = peak_rss_mib(gateway.0.id());

    let floor_tps = floor.rps * 3.0;
    let table = format!(
        "| phase | refunds/s | p50 ms | p90 ms | p99 ms | max ms | errors |\n|---|---:|---:|---:|---:|---:|---:|\n\
         | gateway, saturated (c={c}) | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {} |\n\
         | provider alone, saturated (c={c}) | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {} |\n\
         | database floor, 3 write tx per refund (c={c}) | {:.0} ({:.0} tx/s) | {:.1} | {:.1} | {:.1} | {:.1} | {} |\n\
         | gateway at fixed {rate}/s | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {} |\n\n\
         backend {backend}, provider {provider}{sale}; gateway peak RSS {:.1} MiB; gateway/provider {:.0}%; gateway/database floor {:.0}%\n",
        gateway_sat.rps, gateway_sat.p50, gateway_sat.p90, gateway_sat.p99, gateway_sat.max, gateway_sat.errors,
        provider_sat.rps, provider_sat.p50, provider_sat.p90, provider_sat.p99, provider_sat.max, provider_sat.errors,
        floor.rps, floor_tps, floor.p50, floor.p90, floor.p99, floor.max, floor.errors,
        fixed.rps, fixed.p50, fixed.p90, fixed.p99, fixed.max, fixed.errors,
        rss,
        100.0 * gateway_sat.rps / provider_sat.rps.max(1.0),
        100.0 * gateway_sat.rps / floor.rps.max(1.0),
        c = args.concurrency,
        rate = args.rate,
        backend = args.backend,
        provider = args.provider,
        sale = if args.sale_amount { " with sale_amount" } else { "" },
    );
    println!("{table}");
    if let Some(path) = &args.json {
        let out = json!({
            "backend": args.backend,
            "provider": args.provider,
            "sale_amount": args.sale_amount,
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "gateway_rps": gateway_sat.rps,
            "gateway_p50_ms": gateway_sat.p50,
            "gateway_p99_ms": gateway_sat.p99,
            "gateway_errors": gateway_sat.errors,
            "provider_rps": provider_sat.rps,
            "db_floor_tps": floor_tps,
            "db_floor_refunds_per_s": floor.rps,
            "fixed_rate": args.rate,
            "fixed_rate_achieved": fixed.rps,
            "p50_ms": fixed.p50,
            "p90_ms": fixed.p90,
            "p99_ms": fixed.p99,
            "max_ms": fixed.max,
            "fixed_rate_errors": fixed.errors,
            "rss_mib": rss,
        });
        std::fs::write(path, serde_json::to_string_pretty(&out)?)?;
    }
    drop(gateway);
    // Leave nothing behind: the benchmark's database goes with it.
    match args.backend.as_str() {
        "postgres" => {
            use sqlx::Connection;
            if let (Ok(mut conn), Some((_, name))) = (
                sqlx::PgConnection::connect(&format!("{}/postgres", args.postgres_url)).await,
                db.rsplit_once('/'),
            ) {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await;
            }
        }
        _ => {
            let path = db.trim_start_matches("sqlite://");
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{path}{suffix}"));
            }
        }
    }
    Ok(())
}
