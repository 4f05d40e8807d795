//! refund-gateway: one refund API for in-store POS systems over Pockyt and Pay10.
//!
//! `app(state)` builds the router; [`Application`] binds, wires demo mode, and
//! serves until shutdown with the reconciliation worker beside it.

pub mod api;
pub mod config;
pub mod console;
pub mod metrics;
pub mod money;
pub mod providers;
pub mod refunds;
pub mod sandbox;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tools;
pub mod types;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::MatchedPath;
use axum::http::Request;
use axum::Router;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use api::AppState;
use config::Config;
use refunds::Gateway;
use sandbox::Sandbox;
use store::Store;

/// The gateway's routes (and the sandbox's, in demo mode) with the middleware stack.
pub fn app(
    state: AppState,
    sandbox: Option<&Sandbox>,
    request_timeout: Duration,
    console: config::ConsoleSettings,
) -> Router {
    let mut router = Router::new()
        .merge(api::refunds::routes())
        .merge(api::operator::routes())
        .merge(api::events::routes())
        .merge(api::reconciliations::routes())
        .merge(api::sales::routes())
        .merge(api::ipn::routes())
        .merge(api::health::routes())
        .merge(api::docs::routes())
        .merge(console::routes(console::Console::new(console)))
        .with_state(state);
    if let Some(sb) = sandbox {
        router = router.merge(sb.router());
    }
    router
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(
            ServiceBuilder::new()
                .layer(axum::middleware::map_request(api::sanitize_request_id))
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                        let route = req
                            .extensions()
                            .get::<MatchedPath>()
                            .map(MatchedPath::as_str)
                            .unwrap_or("unmatched");
                        let request_id = req
                            .headers()
                            .get("x-request-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("");
                        tracing::info_span!("http", method = %req.method(), route, request_id)
                    }),
                )
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(axum::middleware::from_fn(metrics::track_http))
                .layer(axum::middleware::from_fn(console::pages_only))
                .layer(axum::middleware::map_response(api::problem_for_bare_errors))
                .layer(TimeoutLayer::with_status_code(
                    axum::http::StatusCode::REQUEST_TIMEOUT,
                    request_timeout,
                )),
        )
}

/// What the gateway takes from the configuration (it reads nothing else of it).
pub fn gateway_settings(c: &Config) -> refunds::GatewaySettings {
    refunds::GatewaySettings {
        accounts: c.accounts.clone(),
        clients: c.clients.clone(),
        operators: c.operators.clone(),
        http: c.http,
        policy: refunds::lifecycle::Policy {
            interval: c.reconcile_interval,
            base_delay: c.reconcile_base_delay,
            max_delay: c.reconcile_max_delay,
            max_attempts: c.reconcile_max_attempts,
            lease: c.http.timeout * 2 + Duration::from_secs(5),
            not_found_after: c.reconcile_not_found_after,
            not_found_checks: c.reconcile_not_found_checks.max(1),
            review_after: c.review_after,
        },
        merchant_name: c.merchant_name.clone(),
        review_after: c.review_after,
        email_enabled: c.smtp.is_some(),
    }
}

/// Adds demo mode's sandbox accounts (the sandbox's demo credentials) and the
/// demo client to `config`, pointed at the sandbox at `sandbox_base`.
pub fn demo_accounts(config: &mut Config, sandbox_base: &str) {
    use config::{Account, Client};
    use providers::pay10::Pay10Account;
    use providers::pockyt::PockytAccount;
    use providers::AccountCredentials;
    use secrecy::SecretString;
    use sha2::{Digest, Sha256};
    let Some(demo) = config.demo.clone() else {
        return;
    };
    let base = sandbox_base.trim_end_matches('/');
    let sb = sandbox::SandboxConfig::demo();
    let mut accounts = vec![
        Account {
            name: "pockyt-sandbox".into(),
            livemode: false,
            notice: None,
            store_name: config.merchant_name.clone(),
            time_zone: None,
            credentials: AccountCredentials::new(PockytAccount {
                base_url: format!("{base}/sandbox/pockyt"),
                merchant_no: sb.pockyt_merchant_no.clone(),
                store_no: sb.pockyt_store_no.clone(),
                token: SecretString::from(sb.pockyt_token.clone()),
            }),
        },
        Account {
            name: "pay10-sandbox".into(),
            livemode: false,
            notice: None,
            store_name: config.merchant_name.clone(),
            time_zone: None,
            credentials: AccountCredentials::new(Pay10Account {
                base_url: format!("{base}/sandbox/pay10"),
                pay_id: sb.pay10_pay_id.clone(),
                salt: SecretString::from(sb.pay10_salt.clone()),
                key: sb.pay10_key.clone(),
            }),
        },
    ];
    accounts.append(&mut config.accounts);
    config.accounts = accounts;
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&Sha256::digest(demo.api_key.as_bytes()));
    config.clients.insert(
        0,
        Client {
            name: "demo".into(),
            key_hashes: vec![hash],
            accounts: [
                (types::ProviderKind::Pockyt, "pockyt-sandbox".to_string()),
                (types::ProviderKind::Pay10, "pay10-sandbox".to_string()),
            ]
            .into_iter()
            .collect(),
            webhooks: demo
                .webhook
                .iter()
                .filter_map(|(url, secret)| {
                    Some(config::WebhookEndpoint {
                        url: url.clone(),
                        secrets: vec![config::WebhookSecret::parse(secret).ok()?],
                        events: None,
                    })
                })
                .collect(),
        },
    );
    if demo.operator_key != demo.api_key {
        let mut op = [0u8; 32];
        op.copy_from_slice(&Sha256::digest(demo.operator_key.as_bytes()));
        config.operators.insert(
            0,
            config::Operator {
                name: "demo-operator".into(),
                key_hashes: vec![op],
            },
        );
    }
}

/// A bound, configured gateway, ready to serve.
pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    router: Router,
    gateway: Arc<Gateway>,
    sandbox: Option<Sandbox>,
    config: Config,
}

impl Application {
    pub async fn build(mut config: Config) -> anyhow::Result<Self> {
        server::raise_fd_limit();
        let addr = config.listen_addr()?;
        let listener = server::bind(addr).map_err(|e| {
            let why = if e.kind() == std::io::ErrorKind::AddrInUse {
                "the address is already in use (another refund-gateway?)".to_string()
            } else {
                e.to_string()
            };
            anyhow::anyhow!(
                "cannot listen on {addr}: {why}; choose another address with --listen or REFUND_GATEWAY_LISTEN"
            )
        })?;
        let addr = listener.local_addr()?;
        let mut sandbox = None;
        if let Some(demo) = config.demo.clone() {
            let base = demo
                .external_sandbox
                .clone()
                .unwrap_or_else(|| format!("http://{addr}"));
            demo_accounts(&mut config, &base);
            if demo.external_sandbox.is_none() {
                let mut sc = sandbox::SandboxConfig::demo();
                sc.slow_response = demo.sandbox_slow_response;
                sc.pending_delay = demo.sandbox_pending_delay;
                sc.ipn_url = demo.sandbox_ipns.then(|| format!("http://{addr}"));
                // The demo's sandbox keeps its sales beside the demo database,
                // so a restarted demo stays consistent with its refunds.
                if sc.state_file.is_none() {
                    sc.state_file = config
                        .database_url
                        .strip_prefix("sqlite://")
                        .map(|p| p.split('?').next().unwrap_or(p))
                        .filter(|p| !p.is_empty() && !p.contains(":memory:"))
                        .map(|p| std::path::PathBuf::from(format!("{p}.sandbox.json")));
                }
                sandbox = Some(Sandbox::new(sc));
            }
        }
        metrics::handle();
        let store = Store::connect(&config.database_url, config.db_max_connections).await?;
        let gateway = Arc::new(Gateway::new(gateway_settings(&config), store));
        // Every time rule goes by the database's clock from the start.
        gateway.sync_clock().await?;
        let router = app(
            AppState {
                gateway: gateway.clone(),
            },
            sandbox.as_ref(),
            config.request_timeout,
            config.console,
        );
        Ok(Self {
            listener,
            addr,
            router,
            gateway,
            sandbox,
            config,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn gateway(&self) -> Arc<Gateway> {
        self.gateway.clone()
    }

    pub fn sandbox(&self) -> Option<Sandbox> {
        self.sandbox.clone()
    }

    /// What this gateway will do, printed at start-up: the database
    /// (redacted), each account with its environment, each client with its
    /// accounts, the IPN URL to give each provider, and what is off.
    pub fn summary(&self) -> String {
        let c = &self.config;
        let public = c
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.addr));
        let mut out = format!(
            "refund-gateway on http://{}\n  database: {}\n  accounts:\n",
            self.addr,
            store::redact_url(&c.database_url)
        );
        for a in &c.accounts {
            out.push_str(&format!(
                "    {} ({}, {}, livemode={}) at {}\n      IPN URL to give {}: {}/ipn/{}/{}\n",
                a.name,
                a.credentials.provider(),
                if a.livemode { "production" } else { "sandbox" },
                a.livemode,
                a.credentials.base_url(),
                a.credentials.provider(),
                public.trim_end_matches('/'),
                a.credentials.provider(),
                a.name
            ));
            if let Some(n) = &a.notice {
                out.push_str(&format!("      WARNING: {n}\n"));
            }
        }
        out.push_str("  clients (POS keys, /v1/refunds):\n");
        for cl in &c.clients {
            let accounts: Vec<&str> = cl.accounts.values().map(String::as_str).collect();
            out.push_str(&format!("    {}: {}\n", cl.name, accounts.join(", ")));
        }
        if c.operators.is_empty() {
            out.push_str("  operators: none (add [[operators]] made by `refund-gateway keys new --operator NAME` to work the review queue)\n");
        } else {
            let names: Vec<&str> = c.operators.iter().map(|o| o.name.as_str()).collect();
            out.push_str(&format!(
                "  operators (operator keys, /v1/operator/*, the console at /console and `refund-gateway refunds`): {}\n",
                names.join(", ")
            ));
        }
        if c.public_url.is_none() {
            out.push_str("  (IPN URLs use the listen address: set public_url to the address providers reach)\n");
        }
        if c.smtp.is_none() {
            out.push_str("  receipt emails: OFF (no [smtp]): refunds with receipt_email are accepted, and no email is sent\n");
        }
        out
    }

    /// The demo-mode banner: demo API key and a ready-to-paste curl.
    pub fn banner(&self) -> Option<String> {
        let demo = self.config.demo.as_ref()?;
        let base = format!("http://{}", self.addr);
        let webhook = match &demo.webhook {
            Some((url, secret)) => {
                format!(
                    "  demo webhooks (Standard Webhooks) to {}, signing secret: {secret}\n",
                    refunds::outgoing::shown_url(url)
                )
            }
            None => String::new(),
        };
        Some(format!(
            "\n  refund-gateway DEMO MODE (sandbox providers, livemode=false)\n  \
             listening on {base}  database {db}\n  demo API key (POS): {key}\n  \
             demo operator key (review queue, `refund-gateway refunds`): {op}\n  \
             operators' console: {base}/console (sign in with the demo operator key)\n{webhook}\n  \
             try it:\n  curl -s -X POST {base}/v1/refunds \\\n    -H 'Authorization: Bearer {key}' \\\n    \
             -H 'Content-Type: application/json' -H 'Idempotency-Key: demo-1' \\\n    \
             -d '{{\"provider\":\"pockyt\",\"transaction_no\":\"{tx}\",\"amount\":\"1.00\",\"currency\":\"USD\"}}'\n",
            db = store::redact_url(&self.config.database_url),
            key = demo.api_key,
            op = demo.operator_key,
            tx = sandbox::demo_sales::POCKYT_TRANSACTION_NO,
        ))
    }

    /// Serves until `shutdown` resolves, then drains requests and stops the worker.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut workers = vec![
            tokio::spawn(refunds::reconcile::run(
                self.gateway.clone(),
                stop_rx.clone(),
            )),
            tokio::spawn(refunds::outgoing::run(
                self.gateway.clone(),
                self.config.webhook_interval,
                self.config.events_retention,
                stop_rx.clone(),
            )),
        ];
        if let Some(at) = self.config.reconciliation_daily_at {
            workers.push(tokio::spawn(refunds::books::run_daily(
                self.gateway.clone(),
                at,
                stop_rx.clone(),
            )));
        }
        if let Some(smtp) = &self.config.smtp {
            match refunds::email::Mailer::new(smtp) {
                Ok(mailer) => workers.push(tokio::spawn(refunds::email::run(
                    self.gateway.clone(),
                    mailer,
                    self.config.email_interval,
                    stop_rx,
                ))),
                Err(e) => {
                    tracing::error!(error = %e, "SMTP is misconfigured; receipt emails stay queued")
                }
            }
        }
        let gateway = self.gateway.clone();
        let shutdown = async move {
            shutdown.await;
            // Waiting requests answer now, so draining is not held up.
            gateway.stop_waiting();
        };
        let served = server::serve(
            self.listener,
            self.router,
            self.config.conn_limits,
            shutdown,
        )
        .await;
        let _ = stop_tx.send(true);
        for w in workers {
            let _ = w.await;
        }
        self.gateway.store.close().await;
        if let Some(sb) = &self.sandbox {
            sb.flush().await;
        }
        served
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received; draining");
}
