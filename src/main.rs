//! The `refund-gateway` binary: parse the command line, load config, call the library.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use refund_gateway::config::{Config, Overrides};
use refund_gateway::sandbox::{Sandbox, SandboxConfig};
use refund_gateway::telemetry::{self, LogFormat};
use refund_gateway::{tools, Application};

#[derive(Parser)]
#[command(
    name = "refund-gateway",
    version,
    about = "One refund API for in-store POS systems, over Pockyt and Pay10.\n\nWith no configuration, `refund-gateway` serves demo mode on 127.0.0.1:8080.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// With no subcommand: serve.
    #[command(flatten)]
    run: RunArgs,
}

/// What serving (and migrating) reads.
#[derive(clap::Args, Clone)]
struct RunArgs {
    /// Address to listen on.
    #[arg(long, env = "REFUND_GATEWAY_LISTEN")]
    listen: Option<String>,
    /// sqlite://FILE or postgres://... (default sqlite://refund-gateway.db).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// TOML file with provider accounts and API clients; without it, demo mode.
    #[arg(long, env = "REFUND_GATEWAY_CONFIG")]
    config: Option<String>,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(clap::Args, Clone, Copy)]
struct LogArgs {
    /// Log line format; levels come from RUST_LOG.
    #[arg(
        long,
        value_enum,
        default_value = "pretty",
        env = "REFUND_GATEWAY_LOG_FORMAT"
    )]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve(RunArgs),
    /// Run database migrations and exit.
    Migrate(RunArgs),
    /// Run the Pockyt/Pay10 sandbox alone, sending IPNs to a gateway.
    Sandbox {
        /// Address to listen on.
        #[arg(long, env = "REFUND_GATEWAY_LISTEN", default_value = "127.0.0.1:8081")]
        listen: String,
        #[command(flatten)]
        log: LogArgs,
        /// Gateway base URL; IPNs go to {URL}/ipn/pockyt and {URL}/ipn/pay10.
        #[arg(long, env = "REFUND_GATEWAY_IPN_URL")]
        ipn_url: Option<String>,
        /// How long magic amount 91 delays its answer, in milliseconds.
        #[arg(long, default_value_t = 20_000)]
        slow_ms: u64,
        /// How long a magic-94 refund stays pending, in milliseconds.
        #[arg(long, default_value_t = 1_000)]
        pending_delay_ms: u64,
    },
    /// Print the OpenAPI document (the committed openapi/refund-gateway.json).
    Openapi,
    /// Operator actions over the operator API: the review queue, a refund's
    /// history, asking the provider now, resolving with a note, webhook
    /// deliveries.
    Refunds {
        #[command(flatten)]
        conn: OperatorConn,
        #[command(subcommand)]
        action: RefundsAction,
    },
    /// Reconcile one account's day with the provider's books (over the
    /// operator API): prints the report's summary, exits 1 when it has
    /// discrepancies (so a cron job can alert), 2 when it could not run.
    Reconcile {
        #[command(flatten)]
        conn: OperatorConn,
        /// A configured provider account.
        #[arg(long)]
        account: String,
        /// The day, YYYY-MM-DD (in the account's time zone, else UTC);
        /// default: yesterday (UTC).
        #[arg(long)]
        date: Option<String>,
        /// Also write the report's lines as CSV to this file.
        #[arg(long)]
        csv: Option<std::path::PathBuf>,
    },
    /// API keys for POS clients and operators.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Exit 0 if URL answers 2xx within 3 s (the container HEALTHCHECK).
    Probe {
        #[arg(default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
    },
    /// Compute a Pockyt verifySign.
    Sign {
        #[command(subcommand)]
        provider: SignProvider,
    },
    /// Compute a Pay10 HASH.
    Hash {
        #[command(subcommand)]
        provider: HashProvider,
    },
    /// Encrypt a Pay10 ENCDATA plaintext.
    Encrypt {
        #[command(subcommand)]
        provider: CryptProvider,
    },
    /// Decrypt a Pay10 ENCDATA.
    Decrypt {
        #[command(subcommand)]
        provider: CryptProvider,
    },
}

/// How an operator command reaches the gateway.
#[derive(clap::Args)]
struct OperatorConn {
    /// The gateway's base URL.
    #[arg(
        long,
        env = "REFUND_GATEWAY_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// Your operator key (`[[operators]]` in the config). Prefer the
    /// environment variable or --key-file: a --key on the command line
    /// is visible to every user of this machine in `ps`.
    #[arg(
        long,
        env = "REFUND_GATEWAY_OPERATOR_KEY",
        hide_env_values = true,
        required_unless_present = "key_file",
        conflicts_with = "key_file"
    )]
    key: Option<String>,
    /// A file holding your operator key (its first line; surrounding
    /// whitespace ignored).
    #[arg(long, env = "REFUND_GATEWAY_OPERATOR_KEY_FILE")]
    key_file: Option<std::path::PathBuf>,
}

#[derive(Subcommand)]
enum RefundsAction {
    /// Refunds that need a person, with the reason.
    Review,
    /// Find refunds (every client's), newest first.
    List {
        #[arg(long)]
        client: Option<String>,
        #[arg(long)]
        account: Option<String>,
        #[arg(long)]
        transaction_no: Option<String>,
        #[arg(long)]
        reference: Option<String>,
        /// `pending`, `succeeded` or `failed`.
        #[arg(long)]
        status: Option<String>,
        /// 1-100.
        #[arg(long)]
        limit: Option<u32>,
        /// The last refund id of the previous page.
        #[arg(long)]
        starting_after: Option<String>,
    },
    /// One refund, with its client and account.
    Get { id: String },
    /// Acknowledge a refund made elsewhere (found by a reconciliation): it
    /// leaves the review queue, and still counts against its sale.
    AcknowledgeOutside {
        account: String,
        provider_refund_id: String,
        /// What you checked (recorded with your name).
        #[arg(long)]
        note: String,
    },
    /// A refund's history: every change with its source.
    Events { id: String },
    /// Ask the provider about a refund now and apply the answer.
    Sync { id: String },
    /// Resolve a refund to what the provider's records prove, with a note.
    Resolve {
        id: String,
        /// `succeeded` or `failed`.
        #[arg(long)]
        status: String,
        /// What you checked (recorded with your name).
        #[arg(long)]
        note: String,
    },
    /// Outgoing webhook deliveries to POS endpoints, with every attempt.
    Deliveries {
        /// `pending`, `delivered` or `failed`.
        #[arg(long)]
        state: Option<String>,
        /// Only this client's.
        #[arg(long)]
        client: Option<String>,
    },
    /// Deliver an event (`evt_...`) again to every endpoint that takes it.
    Redeliver { event_id: String },
    /// Enable a client's webhook endpoint disabled by a `410 Gone` (`n`:
    /// its position under the client, 0 first).
    EnableEndpoint { client: String, n: usize },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make a new key: prints the key once, and the config lines (with only
    /// its SHA-256) to paste: a [[clients]] entry for a POS (`--client`), or
    /// an [[operators]] entry for a person who resolves refunds
    /// (`--operator`).
    New {
        /// A POS client's name in the config ([[clients]]).
        #[arg(
            long,
            required_unless_present = "operator",
            conflicts_with = "operator"
        )]
        client: Option<String>,
        /// An operator's name in the config ([[operators]]).
        #[arg(long)]
        operator: Option<String>,
        /// Accounts the client may refund through (at most one per provider).
        #[arg(long, value_delimiter = ',', conflicts_with = "operator")]
        accounts: Vec<String>,
    },
    /// Make a Standard Webhooks signing secret (`whsec_...`) for a client's
    /// webhook endpoint ([[clients.webhooks]] secrets).
    WebhookSecret,
}

#[derive(Subcommand)]
enum SignProvider {
    /// verifySign = md5(sorted key=value& ... + md5(token)); prints the signature.
    Pockyt {
        /// API token (or POCKYT_TOKEN).
        #[arg(long, env = "POCKYT_TOKEN", hide_env_values = true)]
        token: String,
        /// Parameters as key=value (verifySign and empty values are ignored).
        #[arg(required = true)]
        params: Vec<String>,
    },
}

#[derive(Subcommand)]
enum HashProvider {
    /// HASH = SHA-256(sorted KEY=VALUE~... + salt), upper-case hex.
    Pay10 {
        /// Hash salt (or PAY10_SALT).
        #[arg(long, env = "PAY10_SALT", hide_env_values = true)]
        salt: String,
        /// Fields as KEY=VALUE (HASH itself is ignored).
        #[arg(required = true)]
        fields: Vec<String>,
    },
}

#[derive(Subcommand)]
enum CryptProvider {
    /// AES-256-CBC, key = the 32-byte key, IV = its first 16 bytes, base64.
    Pay10 {
        /// 32-character encryption key (or PAY10_ENCRYPTION_KEY).
        #[arg(long, env = "PAY10_ENCRYPTION_KEY", hide_env_values = true)]
        key: String,
        /// The plaintext (encrypt) or ENCDATA (decrypt).
        text: String,
    },
}

fn print_tool(result: Result<String, String>) -> ExitCode {
    match result {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Sign {
            provider: SignProvider::Pockyt { token, params },
        }) => return print_tool(tools::sign_pockyt(&token, &params)),
        Some(Command::Hash {
            provider: HashProvider::Pay10 { salt, fields },
        }) => return print_tool(tools::hash_pay10(&salt, &fields)),
        Some(Command::Encrypt {
            provider: CryptProvider::Pay10 { key, text },
        }) => return print_tool(tools::encrypt_pay10(&key, &text)),
        Some(Command::Decrypt {
            provider: CryptProvider::Pay10 { key, text },
        }) => return print_tool(tools::decrypt_pay10(&key, &text)),
        Some(Command::Keys {
            command:
                KeysCommand::New {
                    client,
                    operator,
                    accounts,
                },
        }) => {
            return print_tool(match (client, operator) {
                (Some(client), _) => tools::new_api_key(&client, &accounts),
                (None, Some(operator)) => tools::new_operator_key(&operator),
                (None, None) => Err("give --client NAME or --operator NAME".into()),
            })
        }
        Some(Command::Keys {
            command: KeysCommand::WebhookSecret,
        }) => return print_tool(tools::new_webhook_secret()),
        Some(Command::Openapi) => {
            print!("{}", refund_gateway::api::docs::document());
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    if let Some(Command::Probe { url }) = &cli.command {
        return probe(url);
    }
    match cli.command {
        Some(Command::Refunds { conn, action }) => {
            let Some(key) = conn.key() else {
                return ExitCode::from(2);
            };
            return operator_cli(&conn.url, &key, action);
        }
        Some(Command::Reconcile {
            conn,
            account,
            date,
            csv,
        }) => {
            let Some(key) = conn.key() else {
                return ExitCode::from(2);
            };
            return reconcile_cli(&conn.url, &key, &account, date, csv);
        }
        _ => {}
    }
    let log_format = match &cli.command {
        Some(Command::Serve(r) | Command::Migrate(r)) => r.log.log_format,
        Some(Command::Sandbox { log, .. }) => log.log_format,
        _ => cli.run.log.log_format,
    };
    telemetry::init(log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let overrides = |r: RunArgs| Overrides {
        config_file: r.config,
        listen: r.listen,
        database_url: r.database_url,
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Some(Command::Sandbox {
                listen,
                ipn_url,
                slow_ms,
                pending_delay_ms,
                ..
            }) => run_sandbox(listen, ipn_url, slow_ms, pending_delay_ms).await,
            Some(Command::Migrate(r)) => {
                let config = Config::load(&overrides(r))?;
                let store = refund_gateway::store::Store::connect(&config.database_url, 2).await?;
                store.close().await;
                println!(
                    "migrations applied to {}",
                    refund_gateway::store::redact_url(&config.database_url)
                );
                Ok(())
            }
            Some(Command::Serve(r)) => serve(overrides(r)).await,
            _ => serve(overrides(cli.run)).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once: as a structured log line for JSON logs, else on stderr.
            match log_format {
                LogFormat::Json => tracing::error!("{e}"),
                _ => eprintln!("error: {e}"),
            }
            ExitCode::FAILURE
        }
    }
}

/// Calls the operator API and prints its answer (JSON); a problem goes to
/// stderr with exit code 1.
impl OperatorConn {
    /// The operator key, from the flag, the environment or the key file
    /// (`None`: the file could not be read; said on stderr).
    fn key(&self) -> Option<String> {
        match (&self.key, &self.key_file) {
            (Some(k), _) => Some(k.clone()),
            (None, Some(path)) => match std::fs::read_to_string(path) {
                Ok(text) => Some(text.lines().next().unwrap_or("").trim().to_string()),
                Err(e) => {
                    eprintln!(
                        "error: cannot read the operator key file {}: {e}",
                        path.display()
                    );
                    None
                }
            },
            (None, None) => Some(String::new()),
        }
    }
}

/// `refund-gateway reconcile`: runs the report, prints its summary; exit 0
/// (no discrepancies), 1 (discrepancies), 2 (could not run).
fn reconcile_cli(
    url: &str,
    key: &str,
    account: &str,
    date: Option<String>,
    csv: Option<std::path::PathBuf>,
) -> ExitCode {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return ExitCode::from(2);
    };
    let base = url.trim_end_matches('/');
    let date = date.unwrap_or_else(|| {
        jiff::Timestamp::now()
            .to_zoned(jiff::tz::TimeZone::UTC)
            .date()
            .yesterday()
            .map(|d| d.to_string())
            .unwrap_or_default()
    });
    let http = reqwest::Client::new();
    let answer = rt.block_on(async {
        let r = http
            .post(format!("{base}/v1/operator/reconciliations"))
            .bearer_auth(key)
            .json(&serde_json::json!({"account": account, "date": date}))
            .send()
            .await?;
        let mut status = r.status();
        let mut body: serde_json::Value = r.json().await.unwrap_or_default();
        // A large day: the run goes on at the gateway; wait for it.
        while status == reqwest::StatusCode::ACCEPTED || body["state"] == "running" {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let id = body["id"].as_str().unwrap_or_default().to_string();
            let r = http
                .get(format!(
                    "{base}/v1/operator/reconciliations/{id}?items_limit=1"
                ))
                .bearer_auth(key)
                .send()
                .await?;
            status = r.status();
            body = r.json().await.unwrap_or_default();
            if !status.is_success() {
                break;
            }
        }
        if body["state"] == "failed" {
            status = reqwest::StatusCode::BAD_GATEWAY;
            body["detail"] = body["error"].clone();
        }
        let mut lines = None;
        if let (true, Some(_), Some(id)) = (status.is_success(), &csv, body["id"].as_str()) {
            let r = http
                .get(format!("{base}/v1/operator/reconciliations/{id}"))
                .bearer_auth(key)
                .header("accept", "text/csv")
                .send()
                .await?;
            lines = Some(r.bytes().await?);
        }
        Ok::<_, reqwest::Error>((status, body, lines))
    });
    let (status, body, lines) = match answer {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: cannot reach the gateway at {base}: {e}");
            return ExitCode::from(2);
        }
    };
    if !status.is_success() {
        eprintln!(
            "error: {status}: {}",
            body["detail"]
                .as_str()
                .unwrap_or("the report could not be run")
        );
        if let Some(errors) = body["errors"].as_object() {
            for (field, messages) in errors {
                for m in messages.as_array().into_iter().flatten() {
                    eprintln!("  {field}: {}", m.as_str().unwrap_or(""));
                }
            }
        }
        return ExitCode::from(2);
    }
    let s = &body["summary"];
    println!(
        "reconciliation {} of {} ({}) for {} ({}){}",
        body["id"].as_str().unwrap_or(""),
        body["account"].as_str().unwrap_or(""),
        body["provider"].as_str().unwrap_or(""),
        body["date"].as_str().unwrap_or(""),
        s["time_zone"].as_str().unwrap_or(""),
        if body["replaced"] == true {
            ", replacing the earlier report"
        } else {
            ""
        }
    );
    if let Some(counts) = s["counts"].as_object() {
        for (kind, n) in counts {
            println!("  {kind:<18} {n}");
        }
    }
    if let Some(totals) = s["totals"].as_array() {
        for t in totals {
            println!(
                "  total {}: gateway {} provider {} difference {}",
                t["currency"].as_str().unwrap_or(""),
                t["gateway"].as_str().unwrap_or(""),
                t["provider"].as_str().unwrap_or(""),
                t["difference"].as_str().unwrap_or("")
            );
        }
    }
    if let (Some(path), Some(bytes)) = (csv, lines) {
        if let Err(e) = std::fs::write(&path, &bytes) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
        println!("  lines written to {}", path.display());
    }
    let d = body["discrepancies"].as_i64().unwrap_or(0);
    println!("  discrepancies      {d}");
    // Totals that do not tie out are worth an alert even if every line
    // matched (each disagreement is a discrepancy; this is a second guard).
    let untied = s["totals"].as_array().into_iter().flatten().any(|t| {
        t["difference"]
            .as_str()
            .is_some_and(|x| x.bytes().any(|c| c.is_ascii_digit() && c != b'0'))
    });
    if d > 0 || untied {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn operator_cli(url: &str, key: &str, action: RefundsAction) -> ExitCode {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return ExitCode::FAILURE;
    };
    let base = url.trim_end_matches('/');
    let http = reqwest::Client::new();
    let req = match &action {
        RefundsAction::Review => http.get(format!("{base}/v1/operator/review")),
        RefundsAction::List {
            client,
            account,
            transaction_no,
            reference,
            status,
            limit,
            starting_after,
        } => http.get(format!("{base}/v1/operator/refunds")).query(&[
            ("client", client.clone()),
            ("account", account.clone()),
            ("transaction_no", transaction_no.clone()),
            ("reference", reference.clone()),
            ("status", status.clone()),
            ("limit", limit.map(|l| l.to_string())),
            ("starting_after", starting_after.clone()),
        ]),
        RefundsAction::Get { id } => http.get(format!("{base}/v1/operator/refunds/{id}")),
        RefundsAction::AcknowledgeOutside {
            account,
            provider_refund_id,
            note,
        } => http
            .post(format!(
                "{base}/v1/operator/outside-refunds/{account}/{provider_refund_id}/acknowledge"
            ))
            .json(&serde_json::json!({ "note": note })),
        RefundsAction::Events { id } => http.get(format!("{base}/v1/operator/refunds/{id}/events")),
        RefundsAction::Sync { id } => http.post(format!("{base}/v1/operator/refunds/{id}/sync")),
        RefundsAction::Resolve { id, status, note } => http
            .post(format!("{base}/v1/operator/refunds/{id}/resolve"))
            .json(&serde_json::json!({"status": status, "note": note})),
        RefundsAction::Deliveries { state, client } => http
            .get(format!("{base}/v1/operator/webhook-deliveries"))
            .query(&[("state", state), ("client", client)]),
        RefundsAction::Redeliver { event_id } => {
            http.post(format!("{base}/v1/operator/events/{event_id}/redeliver"))
        }
        RefundsAction::EnableEndpoint { client, n } => http.post(format!(
            "{base}/v1/operator/webhook-endpoints/{client}/{n}/enable"
        )),
    };
    let answer = rt.block_on(async {
        let r = req.bearer_auth(key).send().await?;
        let status = r.status();
        let body = r.text().await?;
        Ok::<_, reqwest::Error>((status, body))
    });
    match answer {
        Ok((status, body)) if status.is_success() => {
            let pretty = serde_json::from_str::<serde_json::Value>(&body)
                .and_then(|v| serde_json::to_string_pretty(&v))
                .unwrap_or(body);
            println!("{pretty}");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            let detail = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["detail"].as_str().map(str::to_string))
                .unwrap_or(body);
            eprintln!("error: {status}: {detail}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: cannot reach the gateway at {base}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn probe(url: &str) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(_) => return ExitCode::FAILURE,
    };
    let ok = rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()
            .ok()?;
        client
            .get(url)
            .send()
            .await
            .ok()
            .map(|r| r.status().is_success())
    });
    if ok == Some(true) {
        ExitCode::SUCCESS
    } else {
        eprintln!("unhealthy: {url}");
        ExitCode::FAILURE
    }
}

async fn serve(overrides: Overrides) -> anyhow::Result<()> {
    let config = Config::load(&overrides)?;
    let app = Application::build(config).await?;
    println!("{}", app.summary());
    if let Some(banner) = app.banner() {
        println!("{banner}");
    }
    tracing::info!(addr = %app.addr(), "refund-gateway listening");
    app.run_until(refund_gateway::shutdown_signal()).await?;
    Ok(())
}

async fn run_sandbox(
    listen: String,
    ipn_url: Option<String>,
    slow_ms: u64,
    pending_delay_ms: u64,
) -> anyhow::Result<()> {
    let mut config = SandboxConfig::demo();
    config.ipn_url = ipn_url;
    config.slow_response = Duration::from_millis(slow_ms);
    config.pending_delay = Duration::from_millis(pending_delay_ms);
    let sandbox = Sandbox::new(config);
    let listener = tokio::net::TcpListener::bind(&listen).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on {listen}: {e}; choose another address with --listen")
    })?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "sandbox listening");
    // A wildcard address is reached through loopback from this machine.
    let shown = if addr.ip().is_unspecified() {
        format!("http://127.0.0.1:{}", addr.port())
    } else {
        format!("http://{addr}")
    };
    println!("{}", sandbox.startup_text(&shown));
    axum::serve(
        listener,
        refund_gateway::sandbox::standalone_router(&sandbox),
    )
    .with_graceful_shutdown(refund_gateway::shutdown_signal())
    .await?;
    sandbox.flush().await;
    Ok(())
}
