//! Typed configuration: defaults < TOML file (`--config`) < environment.
//! With no file, the gateway runs in demo mode against its built-in sandbox.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::providers::{AccountCredentials, AccountFields, HttpSettings};
use crate::types::ProviderKind;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// A syntax or type error, located but never quoting the file: the
    /// offending line may hold a secret.
    #[error("config file {path}: {message}")]
    Toml { path: String, message: String },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

/// A TOML error as line, column, key and a message with every quoted value
/// cut out (serde's messages quote the value they could not use).
fn toml_error(path: &str, text: &str, e: &toml::de::Error) -> ConfigError {
    let at = e.span().map(|s| s.start).unwrap_or(0).min(text.len());
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    let key = text
        .lines()
        .nth(line - 1)
        .and_then(|l| l.split_once('='))
        .map(|(k, _)| k.trim())
        .filter(|k| {
            !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        });
    let raw = e.message().replace('\n', "; ");
    let message = if raw.starts_with("unknown field") {
        // Field names only: ours, and the unknown key itself.
        raw
    } else {
        let mut out = String::new();
        let mut quote: Option<char> = None;
        for c in raw.chars() {
            match (quote, c) {
                (None, '"' | '`') => {
                    quote = Some(c);
                    out.push('…');
                }
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, c) => out.push(c),
            }
        }
        out
    };
    let key = key.map(|k| format!(" ({k})")).unwrap_or_default();
    ConfigError::Toml {
        path: path.to_string(),
        message: format!("line {line}, column {column}{key}: {message}"),
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// The largest request body the gateway reads (bytes); larger ones are
/// refused with 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// How many client connections the server holds, and how long it waits
/// for their headers and bodies (the server applies them).
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    /// A request's whole body must arrive within this long of its header.
    pub body_read_timeout: Duration,
    /// Bodies up to this many bytes are read before the request counts as in
    /// progress (larger ones go on to the handler, which refuses them).
    pub max_body_bytes: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: 16_384,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_body_bytes: MAX_BODY_BYTES,
        }
    }
}

/// The file format (see `config.example.toml`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    /// How the providers reach this gateway (for the IPN URLs printed at
    /// start-up), e.g. `https://refunds.example.com`.
    pub public_url: Option<String>,
    pub database_url: Option<String>,
    pub provider_connect_timeout_ms: Option<u64>,
    pub provider_timeout_ms: Option<u64>,
    pub request_timeout_ms: Option<u64>,
    /// At most this many client connections at once (clamped below the
    /// file-descriptor limit).
    pub max_connections: Option<usize>,
    /// A connection must send a whole request header within this long of
    /// opening or of its previous response (slow or idle ones are closed).
    pub header_read_timeout_ms: Option<u64>,
    /// A request's whole body must arrive within this long of its header
    /// (a trickling body is answered 408 and its connection closed).
    pub body_read_timeout_ms: Option<u64>,
    /// How long after a refund's send deadline the provider may still be
    /// processing it; after that, repeated "no such refund" answers fail it.
    pub not_found_after_ms: Option<u64>,
    pub db_max_connections: Option<u32>,
    pub merchant_name: Option<String>,
    pub smtp: Option<SmtpEntry>,
    #[serde(default)]
    pub accounts: Vec<AccountEntry>,
    #[serde(default)]
    pub clients: Vec<ClientEntry>,
    /// People who may resolve refunds that need review (a separate key each).
    #[serde(default)]
    pub operators: Vec<OperatorEntry>,
    /// A refund pending this long joins the review queue.
    pub review_after_ms: Option<u64>,
    /// How long the POS's events are kept (feed and redelivery); default 30.
    pub events_retention_days: Option<u64>,
    /// The daily reconciliation against the provider's books.
    pub reconciliation: Option<ReconciliationEntry>,
    /// The operators' console at `/console`.
    pub console: Option<ConsoleEntry>,
}

/// `[console]`: how long a console sign-in lasts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleEntry {
    /// A session unused this long ends (default 30).
    pub session_idle_minutes: Option<u64>,
    /// A session ends this long after sign-in however it is used (default 12).
    pub session_max_hours: Option<u64>,
}

/// The console's session rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleSettings {
    /// A session unused this long ends.
    pub idle: Duration,
    /// A session ends this long after sign-in.
    pub absolute: Duration,
    /// Session cookies carry `Secure` on every answer (`public_url` is
    /// `https`); otherwise only on requests that came over HTTPS.
    pub secure_cookies: bool,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        ConsoleSettings {
            idle: Duration::from_secs(30 * 60),
            absolute: Duration::from_secs(12 * 3600),
            secure_cookies: false,
        }
    }
}

/// `[reconciliation]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconciliationEntry {
    /// `HH:MM`, UTC: when each account's previous day is reconciled (by
    /// one of the gateway's processes). Without it, reports are run only
    /// on request.
    pub daily_at: Option<String>,
}

/// An account as the file gives it: the fields every account has, and the
/// provider's own (Pockyt `merchant_no`, `store_no`, `token`; Pay10 `pay_id`,
/// `salt`, `encryption_key`), which only its connector
/// (`providers/<name>/rules.rs`) names, reads and checks: it refuses any
/// field it does not know, so a typo is still an error.
#[derive(Debug, Default)]
pub struct AccountEntry {
    pub name: String,
    pub provider: String,
    /// `sandbox` or `production`: decides `livemode` and the default base URL.
    pub environment: Option<String>,
    /// Defaults to the provider's host for the environment.
    pub base_url: Option<String>,
    /// Legacy: `true` means `environment = "production"`; must agree with it.
    pub livemode: Option<bool>,
    /// Shown on receipts; defaults to the merchant name.
    pub store_name: Option<String>,
    /// The store's IANA time zone (`Asia/Dubai`): receipts show local time.
    pub time_zone: Option<String>,
    /// Every other field: the provider's own, for its connector.
    pub provider_fields: BTreeMap<String, String>,
}

/// Read field by field (not with `serde(flatten)`, which would lose the
/// line of a value of the wrong type): the common fields by their types,
/// every other one as text for the connector.
impl<'de> Deserialize<'de> for AccountEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = AccountEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an account table")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<AccountEntry, A::Error> {
                use serde::de::Error;
                let mut a = AccountEntry::default();
                let (mut name, mut provider) = (None, None);
                while let Some(key) = map.next_key::<String>()? {
                    let repeated = match key.as_str() {
                        "name" => name.replace(map.next_value::<String>()?).is_some(),
                        "provider" => provider.replace(map.next_value::<String>()?).is_some(),
                        "environment" => a.environment.replace(map.next_value()?).is_some(),
                        "base_url" => a.base_url.replace(map.next_value()?).is_some(),
                        "livemode" => a.livemode.replace(map.next_value()?).is_some(),
                        "store_name" => a.store_name.replace(map.next_value()?).is_some(),
                        "time_zone" => a.time_zone.replace(map.next_value()?).is_some(),
                        _ => {
                            let value: String = map.next_value()?;
                            a.provider_fields.insert(key.clone(), value).is_some()
                        }
                    };
                    if repeated {
                        return Err(A::Error::custom(format!("duplicate field `{key}`")));
                    }
                }
                a.name = name.ok_or_else(|| A::Error::missing_field("name"))?;
                a.provider = provider.ok_or_else(|| A::Error::missing_field("provider"))?;
                Ok(a)
            }
        }
        d.deserialize_map(Fields)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpEntry {
    /// `smtp://host:25`, `smtp://user:pass@host:587?tls=required`, `smtps://host:465`.
    pub url: String,
    pub from: String,
}

/// Where receipt emails go out.
#[derive(Clone)]
pub struct Smtp {
    pub url: SecretString,
    pub from: String,
}

impl std::fmt::Debug for Smtp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Smtp")
            .field("url", &"[redacted]")
            .field("from", &self.from)
            .finish()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorEntry {
    pub name: String,
    /// Lower-case hex SHA-256 of the operator's key (`refund-gateway keys new
    /// --operator`); a list of them while a key is rotated.
    pub api_key_sha256: KeyHashes,
}

/// One key hash, or several (every one is valid: how a key is rotated).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum KeyHashes {
    One(String),
    Many(Vec<String>),
}

impl Default for KeyHashes {
    fn default() -> Self {
        KeyHashes::Many(vec![])
    }
}

impl KeyHashes {
    fn parse(&self, field: &str) -> Result<Vec<[u8; 32]>, ConfigError> {
        let texts: Vec<&String> = match self {
            KeyHashes::One(s) => vec![s],
            KeyHashes::Many(v) => v.iter().collect(),
        };
        if texts.is_empty() {
            return Err(invalid(field, "needs at least one key hash"));
        }
        texts
            .into_iter()
            .map(|t| {
                hex::decode(t.trim())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| invalid(field, "must be 64 hex digits (or a list of them)"))
            })
            .collect()
    }
}

/// An operator: a person who may resolve refunds, identified in the audit trail by name.
#[derive(Debug, Clone)]
pub struct Operator {
    pub name: String,
    /// SHA-256 of each valid key (several while a key is rotated).
    pub key_hashes: Vec<[u8; 32]>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientEntry {
    pub name: String,
    /// Lower-case hex SHA-256 of the API key (the key itself is never
    /// stored); a list of them while a key is rotated.
    pub api_key_sha256: KeyHashes,
    pub accounts: Vec<String>,
    /// Where the client's refund events are sent (Standard Webhooks).
    #[serde(default)]
    pub webhooks: Vec<WebhookEntry>,
}

/// A client's webhook endpoint as the file gives it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookEntry {
    pub url: String,
    /// `whsec_…` secrets (or `env:VARIABLE`): the first signs; during a
    /// rotation each listed secret signs.
    pub secrets: Vec<String>,
    /// Event types sent (default: every type).
    pub events: Option<Vec<String>>,
}

/// A Standard Webhooks signing secret: `whsec_` and the base64 of 24 to 64
/// random bytes (`refund-gateway keys webhook-secret` makes one).
#[derive(Clone)]
pub struct WebhookSecret(std::sync::Arc<secrecy::SecretBox<Vec<u8>>>);

/// A fresh Standard Webhooks signing secret: `whsec_` and the base64 of 32
/// random bytes from the OS.
pub fn webhook_secret() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

impl WebhookSecret {
    pub fn parse(text: &str) -> Result<Self, String> {
        use base64::Engine;
        let b64 = text
            .strip_prefix("whsec_")
            .ok_or("must start with whsec_ (make one with `refund-gateway keys webhook-secret`)")?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| "is not whsec_ followed by standard base64 (with its = padding)")?;
        if !(24..=64).contains(&bytes.len()) {
            return Err(format!(
                "holds {} bytes; a secret is 24 to 64 random bytes",
                bytes.len()
            ));
        }
        Ok(WebhookSecret(std::sync::Arc::new(secrecy::SecretBox::new(
            Box::new(bytes),
        ))))
    }

    /// The HMAC key.
    pub fn key(&self) -> &[u8] {
        use secrecy::ExposeSecret;
        self.0.expose_secret()
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret([redacted])")
    }
}

/// A webhook endpoint's URL, checked: http(s) with a host.
fn webhook_url(text: &str) -> Result<String, &'static str> {
    url::Url::parse(text.trim())
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .map(|u| u.to_string())
        .ok_or("must be an http(s) URL with a host")
}

/// A client's webhook endpoint: where its events go, signed.
#[derive(Debug, Clone)]
pub struct WebhookEndpoint {
    pub url: String,
    pub secrets: Vec<WebhookSecret>,
    /// `None`: every event type.
    pub events: Option<std::collections::BTreeSet<crate::types::DomainEvent>>,
}

impl WebhookEndpoint {
    pub fn wants(&self, kind: crate::types::DomainEvent) -> bool {
        self.events.as_ref().is_none_or(|e| e.contains(&kind))
    }
}

#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    /// Follows from the account's `environment` (`production`: true).
    pub livemode: bool,
    /// A warning about the account for the start-up summary.
    pub notice: Option<String>,
    pub store_name: String,
    /// The store's time zone, if configured: receipts show local time.
    pub time_zone: Option<jiff::tz::TimeZone>,
    pub credentials: AccountCredentials,
}

impl Account {
    pub fn provider(&self) -> ProviderKind {
        self.credentials.provider()
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    pub name: String,
    /// SHA-256 of each valid key (several while a key is rotated).
    pub key_hashes: Vec<[u8; 32]>,
    /// Account name per provider (at most one each).
    pub accounts: BTreeMap<ProviderKind, String>,
    /// Where its refund events are sent; `{n}` in the operator API is the
    /// position here (0 first).
    pub webhooks: Vec<WebhookEndpoint>,
}

/// Demo mode: the sandbox and a demo client, no configuration needed.
#[derive(Debug, Clone)]
pub struct Demo {
    pub api_key: String,
    /// The demo operator's key (`REFUND_GATEWAY_DEMO_OPERATOR_KEY`, else
    /// generated): the review queue and resolutions in the walk-through.
    pub operator_key: String,
    /// `None`: mount the sandbox in this process. `Some(url)`: use that sandbox.
    pub external_sandbox: Option<String>,
    /// Whether the in-process sandbox sends IPNs to this gateway.
    pub sandbox_ipns: bool,
    /// How long the in-process sandbox keeps a magic-`91` caller waiting.
    pub sandbox_slow_response: Duration,
    /// How long a magic-`94` refund stays pending in the in-process sandbox.
    pub sandbox_pending_delay: Duration,
    /// The demo client's webhook endpoint (`REFUND_GATEWAY_DEMO_WEBHOOK_URL`)
    /// and its secret (`REFUND_GATEWAY_DEMO_WEBHOOK_SECRET`, else generated;
    /// printed in the banner).
    pub webhook: Option<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: String,
    pub public_url: Option<String>,
    pub database_url: String,
    pub db_max_connections: u32,
    pub http: HttpSettings,
    pub request_timeout: Duration,
    pub conn_limits: ConnLimits,
    pub merchant_name: String,
    pub accounts: Vec<Account>,
    pub clients: Vec<Client>,
    pub operators: Vec<Operator>,
    /// A refund pending this long joins the review queue.
    pub review_after: Duration,
    pub demo: Option<Demo>,
    /// How often the reconciliation worker looks for due refunds.
    pub reconcile_interval: Duration,
    /// Give up polling a pending refund after this many status queries (it stays
    /// pending, flagged for review, with a logged reason).
    pub reconcile_max_attempts: u32,
    pub reconcile_base_delay: Duration,
    pub reconcile_max_delay: Duration,
    /// A sent refund the provider has never heard of is failed
    /// (`not_received_by_provider`) only once this long has passed since its
    /// send deadline and `reconcile_not_found_checks` queries in a row said so.
    pub reconcile_not_found_after: Duration,
    pub reconcile_not_found_checks: u32,
    pub smtp: Option<Smtp>,
    /// How often the email worker looks for due receipts.
    pub email_interval: Duration,
    /// How often the webhook worker looks for events to deliver.
    pub webhook_interval: Duration,
    /// How long events are kept (`events_retention_days`).
    pub events_retention: Duration,
    /// When the daily reconciliation runs (UTC); `None`: only on request.
    pub reconciliation_daily_at: Option<jiff::civil::Time>,
    /// The operators' console's session rules.
    pub console: ConsoleSettings,
}

/// `HH:MM` (24-hour) as a time of day.
pub fn parse_daily_at(t: &str) -> Option<jiff::civil::Time> {
    let (h, m) = t.trim().split_once(':')?;
    let ok = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
    if !ok(h) || !ok(m) {
        return None;
    }
    jiff::civil::Time::new(h.parse().ok()?, m.parse().ok()?, 0, 0).ok()
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATABASE_URL: &str = "sqlite://refund-gateway.db";

/// Where values come from besides the file: flags and environment, already merged by the CLI.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config_file: Option<String>,
    pub listen: Option<String>,
    pub database_url: Option<String>,
}

pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

impl Config {
    /// Loads configuration: defaults < file < environment/flags.
    pub fn load(o: &Overrides) -> Result<Self, ConfigError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let file = match &o.config_file {
            Some(path) => {
                let text = std::fs::read_to_string(Path::new(path)).map_err(|source| {
                    ConfigError::Read {
                        path: path.clone(),
                        source,
                    }
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| toml_error(path, &text, &e))?
            }
            None => FileConfig::default(),
        };
        let demo_mode = o.config_file.is_none();
        let mut cfg = Config::from_file(file, demo_mode)?;
        if let Some(v) = o.listen.clone() {
            cfg.listen = v;
        }
        if let Some(v) = o.database_url.clone() {
            cfg.database_url = v;
        }
        if let (Some(url), Some(from)) = (
            env("REFUND_GATEWAY_SMTP_URL"),
            env("REFUND_GATEWAY_SMTP_FROM"),
        ) {
            cfg.smtp = Some(Smtp {
                url: SecretString::from(url),
                from,
            });
        }
        if let Some(v) = env("REFUND_GATEWAY_PROVIDER_TIMEOUT_MS") {
            cfg.http.timeout =
                Duration::from_millis(parse_ms("REFUND_GATEWAY_PROVIDER_TIMEOUT_MS", &v)?);
        }
        if let Some(demo) = cfg.demo.as_mut() {
            if let Some(k) = env("REFUND_GATEWAY_DEMO_API_KEY") {
                demo.api_key = k;
            }
            if let Some(k) = env("REFUND_GATEWAY_DEMO_OPERATOR_KEY") {
                demo.operator_key = k;
            }
            demo.external_sandbox = env("REFUND_GATEWAY_SANDBOX_URL");
            if let Some(url) = env("REFUND_GATEWAY_DEMO_WEBHOOK_URL") {
                let parsed =
                    webhook_url(&url).map_err(|e| invalid("REFUND_GATEWAY_DEMO_WEBHOOK_URL", e))?;
                let secret = match std::env::var("REFUND_GATEWAY_DEMO_WEBHOOK_SECRET") {
                    Ok(s) => s.trim().to_string(),
                    Err(_) => webhook_secret(),
                };
                WebhookSecret::parse(&secret)
                    .map_err(|e| invalid("REFUND_GATEWAY_DEMO_WEBHOOK_SECRET", e))?;
                demo.webhook = Some((parsed, secret));
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn from_file(f: FileConfig, demo_mode: bool) -> Result<Self, ConfigError> {
        let mut http = HttpSettings::default();
        if let Some(ms) = f.provider_connect_timeout_ms {
            http.connect_timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = f.provider_timeout_ms {
            http.timeout = Duration::from_millis(ms);
        }
        let merchant_name = f
            .merchant_name
            .unwrap_or_else(|| "Refund Gateway Demo Store".into());
        let mut accounts = Vec::new();
        for (i, a) in f.accounts.into_iter().enumerate() {
            accounts.push(account_from_entry(i, a, &merchant_name)?);
        }
        check_identities(&accounts, &[], &[])?;
        let mut clients = Vec::new();
        for (i, c) in f.clients.into_iter().enumerate() {
            clients.push(client_from_entry(i, c, &accounts)?);
        }
        let mut operators = Vec::new();
        for (i, o) in f.operators.into_iter().enumerate() {
            let key_hashes = o
                .api_key_sha256
                .parse(&format!("operators[{i}].api_key_sha256"))?;
            if o.name.trim().is_empty() {
                return Err(invalid(format!("operators[{i}].name"), "is required"));
            }
            operators.push(Operator {
                name: o.name,
                key_hashes,
            });
        }
        check_identities(&accounts, &clients, &operators)?;
        let review_after = Duration::from_millis(f.review_after_ms.unwrap_or(3_600_000));
        let smtp = match f.smtp {
            Some(e) => {
                if !e.from.contains('@') {
                    return Err(invalid("smtp.from", "must be an email address"));
                }
                Some(Smtp {
                    url: SecretString::from(secret("smtp.url", Some(e.url))?),
                    from: e.from,
                })
            }
            None => None,
        };
        let reconciliation_daily_at = match f.reconciliation.and_then(|r| r.daily_at) {
            None => None,
            Some(t) => Some(parse_daily_at(&t).ok_or_else(|| {
                invalid(
                    "reconciliation.daily_at",
                    format!("{t:?} is not a time of day as HH:MM (UTC), e.g. \"03:00\""),
                )
            })?),
        };
        let console = {
            let c = f.console.unwrap_or(ConsoleEntry {
                session_idle_minutes: None,
                session_max_hours: None,
            });
            let idle = c.session_idle_minutes.unwrap_or(30);
            let max = c.session_max_hours.unwrap_or(12);
            if !(1..=24 * 60).contains(&idle) {
                return Err(invalid(
                    "console.session_idle_minutes",
                    "must be 1 to 1440 (minutes)",
                ));
            }
            if !(1..=24 * 30).contains(&max) {
                return Err(invalid(
                    "console.session_max_hours",
                    "must be 1 to 720 (hours)",
                ));
            }
            ConsoleSettings {
                idle: Duration::from_secs(idle * 60),
                absolute: Duration::from_secs(max * 3600),
                secure_cookies: f
                    .public_url
                    .as_deref()
                    .is_some_and(|u| u.trim().to_ascii_lowercase().starts_with("https://")),
            }
        };
        Ok(Config {
            console,
            reconciliation_daily_at,
            smtp,
            email_interval: Duration::from_secs(1),
            webhook_interval: Duration::from_millis(250),
            events_retention: Duration::from_secs(
                86_400 * f.events_retention_days.unwrap_or(30).max(1),
            ),
            listen: f.listen.unwrap_or_else(|| DEFAULT_LISTEN.into()),
            public_url: f.public_url,
            database_url: f
                .database_url
                .unwrap_or_else(|| DEFAULT_DATABASE_URL.into()),
            db_max_connections: f.db_max_connections.unwrap_or(16),
            http,
            request_timeout: Duration::from_millis(f.request_timeout_ms.unwrap_or(60_000)),
            conn_limits: ConnLimits {
                max_connections: f
                    .max_connections
                    .unwrap_or(ConnLimits::default().max_connections),
                header_read_timeout: f
                    .header_read_timeout_ms
                    .map(Duration::from_millis)
                    .unwrap_or(ConnLimits::default().header_read_timeout),
                body_read_timeout: f
                    .body_read_timeout_ms
                    .map(Duration::from_millis)
                    .unwrap_or(ConnLimits::default().body_read_timeout),
                ..ConnLimits::default()
            },
            merchant_name,
            accounts,
            clients,
            operators,
            review_after,
            demo: demo_mode.then(|| Demo {
                api_key: format!("sk_demo_{}", ulid::Ulid::new().to_string().to_lowercase()),
                operator_key: format!("ok_demo_{}", ulid::Ulid::new().to_string().to_lowercase()),
                external_sandbox: None,
                sandbox_ipns: true,
                sandbox_slow_response: Duration::from_secs(20),
                sandbox_pending_delay: Duration::from_secs(1),
                webhook: None,
            }),
            reconcile_interval: Duration::from_millis(500),
            reconcile_max_attempts: 30,
            reconcile_base_delay: Duration::from_secs(1),
            reconcile_max_delay: Duration::from_secs(300),
            reconcile_not_found_after: Duration::from_millis(
                f.not_found_after_ms.unwrap_or(15 * 60_000),
            ),
            reconcile_not_found_checks: 3,
        })
    }

    /// The demo defaults, for tests and embedding: SQLite at `database_url`.
    pub fn demo(database_url: &str, api_key: &str) -> Self {
        let mut c = Config::from_file(FileConfig::default(), true).expect("defaults are valid");
        c.database_url = database_url.into();
        if let Some(d) = c.demo.as_mut() {
            d.api_key = api_key.into();
        }
        c
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.demo.is_none() {
            if self.accounts.is_empty() {
                return Err(invalid(
                    "accounts",
                    "a production config needs at least one provider account",
                ));
            }
            if self.clients.is_empty() {
                return Err(invalid(
                    "clients",
                    "a production config needs at least one API client",
                ));
            }
        }
        if !(self.database_url.starts_with("sqlite:")
            || self.database_url.starts_with("postgres://")
            || self.database_url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "database_url",
                "must start with sqlite:, postgres:// or postgresql://",
            ));
        }
        if self.http.timeout.is_zero() {
            return Err(invalid("provider_timeout_ms", "must be greater than zero"));
        }
        Ok(())
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|_| {
            invalid(
                "listen",
                format!("{:?} is not an address such as 127.0.0.1:8080", self.listen),
            )
        })
    }
}

fn parse_ms(field: &str, v: &str) -> Result<u64, ConfigError> {
    v.parse()
        .map_err(|_| invalid(field, "must be a whole number of milliseconds"))
}

/// A secret may be written inline or as `env:VAR` to read it from the environment.
/// A secret from the file or (`"env:VAR"`) the environment, with surrounding
/// whitespace trimmed (as Pockyt's Java and C# SDKs do: a pasted token often
/// carries a newline). An empty secret is refused: it would start a gateway
/// whose every refund fails.
fn secret(field: &str, v: Option<String>) -> Result<String, ConfigError> {
    let v = v.ok_or_else(|| invalid(field, "is required"))?;
    let value = match v.strip_prefix("env:") {
        Some(var) => std::env::var(var)
            .map_err(|_| invalid(field, format!("environment variable {var} is not set")))?,
        None => v,
    };
    let value = value.trim().to_string();
    if value.is_empty() {
        return Err(invalid(field, "is empty"));
    }
    Ok(value)
}

/// Why a base URL is certainly a sandbox, if it is one: a provider's test
/// host or this gateway's simulator (`/sandbox/...`).
fn looks_like_sandbox(u: &url::Url) -> Option<&'static str> {
    let host = canonical_host(u);
    if ProviderKind::ALL
        .iter()
        .any(|p| p.rules().test_hosts().contains(&host.as_str()))
    {
        return Some("the provider's test host");
    }
    u.path()
        .starts_with("/sandbox/")
        .then_some("refund-gateway's simulator")
}

/// A host that is not on the internet (loopback, private, single-label):
/// possible in production behind a proxy, so only warned about.
fn is_local(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback() || ip.is_private() || ip.is_unspecified(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback() || ip.is_unspecified(),
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.');
            d == "localhost" || !d.contains('.')
        }
        None => false,
    }
}

fn looks_like_production(u: &url::Url) -> bool {
    let host = canonical_host(u);
    ProviderKind::ALL
        .iter()
        .any(|p| p.rules().production_hosts().contains(&host.as_str()))
}

/// A URL's host as DNS resolves it: lower case (the URL parser does that),
/// without the trailing dot of a fully qualified name (`mapi.yuansfer.com.`
/// is the production host).
fn canonical_host(u: &url::Url) -> String {
    u.host_str()
        .unwrap_or("")
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

fn account_from_entry(i: usize, a: AccountEntry, merchant: &str) -> Result<Account, ConfigError> {
    let f = |name: &str| format!("accounts[{i}].{name}");
    if a.name.trim().is_empty()
        || !a
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(invalid(f("name"), "must be letters, digits, '-' or '_'"));
    }
    let production = match (a.environment.as_deref(), a.livemode) {
        (Some("production"), None | Some(true)) | (None, Some(true)) => true,
        (Some("sandbox"), None | Some(false)) | (None, Some(false)) => false,
        (Some("production" | "sandbox"), Some(_)) => {
            return Err(invalid(
                f("livemode"),
                "contradicts environment; leave livemode out (it follows from environment)",
            ))
        }
        (Some(other), _) => {
            return Err(invalid(
                f("environment"),
                format!("{other:?} is not \"sandbox\" or \"production\""),
            ))
        }
        (None, None) => {
            return Err(invalid(
                f("environment"),
                "is required: \"sandbox\" (test money) or \"production\" (real money)",
            ))
        }
    };
    let provider = ProviderKind::parse(&a.provider).ok_or_else(|| {
        let names: Vec<&str> = ProviderKind::ALL.iter().map(|p| p.as_str()).collect();
        invalid(
            f("provider"),
            format!("{:?} is not {}", a.provider, names.join(" or ")),
        )
    })?;
    let base_url = match a.base_url.clone() {
        Some(u) => u,
        None => provider.rules().default_base_url(production).to_string(),
    };
    let parsed = url::Url::parse(&base_url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .ok_or_else(|| invalid(f("base_url"), "must be an http(s) URL"))?;
    match (production, looks_like_sandbox(&parsed), looks_like_production(&parsed)) {
        (true, Some(why), _) => {
            return Err(invalid(
                f("base_url"),
                format!("{base_url} is a sandbox ({why}) but environment is \"production\": set environment = \"sandbox\", or use the provider's production host"),
            ))
        }
        (false, _, true) => {
            return Err(invalid(
                f("base_url"),
                format!("{base_url} is the provider's production host but environment is \"sandbox\": real money would move as test refunds"),
            ))
        }
        _ => {}
    }
    let notice = (production && is_local(&parsed)).then(|| {
        format!("production account whose base_url {base_url} is a local or private host: make sure it reaches the real provider")
    });
    let fields = AccountFields {
        provider,
        base_url,
        values: a.provider_fields,
    };
    let credentials = provider
        .rules()
        .account(&fields)
        .map_err(|e| invalid(f(&e.field), e.message))?;
    let time_zone = match a.time_zone.as_deref() {
        None => None,
        Some(name) => Some(jiff::tz::TimeZone::get(name).map_err(|_| {
            invalid(
                f("time_zone"),
                format!("{name:?} is not an IANA time zone such as \"Asia/Dubai\" or \"America/New_York\""),
            )
        })?),
    };
    Ok(Account {
        name: a.name,
        livemode: production,
        notice,
        store_name: a.store_name.unwrap_or_else(|| merchant.to_string()),
        time_zone,
        credentials,
    })
}

fn client_from_entry(
    i: usize,
    c: ClientEntry,
    accounts: &[Account],
) -> Result<Client, ConfigError> {
    let f = |name: &str| format!("clients[{i}].{name}");
    if c.name.trim().is_empty() {
        return Err(invalid(f("name"), "is required"));
    }
    let key_hashes = c.api_key_sha256.parse(&f("api_key_sha256"))?;
    let mut map = BTreeMap::new();
    for name in &c.accounts {
        let acc = accounts.iter().find(|a| &a.name == name).ok_or_else(|| {
            invalid(
                f("accounts"),
                format!("names account {name:?}, which is not configured"),
            )
        })?;
        if map.insert(acc.provider(), name.clone()).is_some() {
            return Err(invalid(
                f("accounts"),
                format!(
                    "binds two {} accounts; at most one per provider",
                    acc.provider()
                ),
            ));
        }
    }
    let mut webhooks = Vec::new();
    for (n, w) in c.webhooks.into_iter().enumerate() {
        let g = |name: &str| f(&format!("webhooks[{n}].{name}"));
        let parsed = webhook_url(&w.url).map_err(|e| invalid(g("url"), e))?;
        if webhooks.iter().any(|e: &WebhookEndpoint| e.url == parsed) {
            return Err(invalid(g("url"), "is listed twice for this client"));
        }
        if w.secrets.is_empty() {
            return Err(invalid(
                g("secrets"),
                "needs at least one whsec_ secret (refund-gateway keys webhook-secret)",
            ));
        }
        let mut secrets = Vec::new();
        for (k, text) in w.secrets.iter().enumerate() {
            let text = match text.strip_prefix("env:") {
                Some(var) => std::env::var(var).map_err(|_| {
                    invalid(
                        g(&format!("secrets[{k}]")),
                        format!("environment variable {var} is not set"),
                    )
                })?,
                None => text.clone(),
            };
            secrets.push(
                WebhookSecret::parse(&text).map_err(|e| invalid(g(&format!("secrets[{k}]")), e))?,
            );
        }
        let events = match w.events {
            None => None,
            Some(names) => {
                let mut set = std::collections::BTreeSet::new();
                for name in names {
                    let kind = crate::types::DomainEvent::parse(&name).ok_or_else(|| {
                        let all: Vec<&str> = crate::types::DomainEvent::ALL
                            .iter()
                            .map(|e| e.as_str())
                            .collect();
                        invalid(
                            g("events"),
                            format!("{name:?} is not an event type ({})", all.join(", ")),
                        )
                    })?;
                    set.insert(kind);
                }
                Some(set)
            }
        };
        webhooks.push(WebhookEndpoint {
            url: parsed,
            secrets,
            events,
        });
    }
    Ok(Client {
        name: c.name,
        key_hashes,
        accounts: map,
        webhooks,
    })
}

/// What identifies something is unique: account, client and operator names
/// (each among its kind), and a key hash, which belongs to one principal
/// (a client or an operator). Every clash names both entries.
fn check_identities(
    accounts: &[Account],
    clients: &[Client],
    operators: &[Operator],
) -> Result<(), ConfigError> {
    fn unique<'a>(kind: &str, names: impl Iterator<Item = &'a str>) -> Result<(), ConfigError> {
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, n) in names.enumerate() {
            if let Some(first) = seen.insert(n, i) {
                return Err(invalid(
                    format!("{kind}[{i}].name"),
                    format!("{n:?} is also {kind}[{first}].name: names identify one entry each (to rotate a key, list both hashes in api_key_sha256)"),
                ));
            }
        }
        Ok(())
    }
    unique("accounts", accounts.iter().map(|a| a.name.as_str()))?;
    unique("clients", clients.iter().map(|c| c.name.as_str()))?;
    unique("operators", operators.iter().map(|o| o.name.as_str()))?;
    let holders = clients
        .iter()
        .enumerate()
        .flat_map(|(i, c)| {
            c.key_hashes
                .iter()
                .map(move |h| (format!("clients[{i}] ({})", c.name), h))
        })
        .chain(operators.iter().enumerate().flat_map(|(i, o)| {
            o.key_hashes
                .iter()
                .map(move |h| (format!("operators[{i}] ({})", o.name), h))
        }));
    let mut seen: BTreeMap<&[u8; 32], String> = BTreeMap::new();
    for (who, hash) in holders {
        if let Some(first) = seen.get(hash) {
            if first != &who {
                return Err(invalid(
                    format!("{who}.api_key_sha256"),
                    format!("is also the key of {first}: a key belongs to one client or operator"),
                ));
            }
        }
        seen.insert(hash, who);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml_text: &str) -> Result<Config, ConfigError> {
        let file: FileConfig =
            toml::from_str(toml_text).map_err(|e| toml_error("test.toml", toml_text, &e))?;
        let c = Config::from_file(file, false)?;
        c.validate()?;
        Ok(c)
    }

    const GOOD: &str = r#"
        database_url = "postgres://localhost/rg"
        [[accounts]]
        name = "pockyt-main"
        provider = "pockyt"
        environment = "production"
        base_url = "https://mapi.yuansfer.com"
        merchant_no = "200043"
        store_no = "300014"
        token = "secret"
        [[accounts]]
        name = "pay10-uae"
        provider = "pay10"
        environment = "production"
        base_url = "https://pg.pay10.ae"
        pay_id = "1009120125180122"
        salt = "salt"
        encryption_key = "0123456789abcdef0123456789abcdef"
        [[clients]]
        name = "store-1"
        api_key_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        accounts = ["pockyt-main", "pay10-uae"]
    "#;

    /// Names identify one entry; a key belongs to one principal; hosts are
    /// compared as DNS reads them. Each contradiction names both entries.
    #[test]
    fn contradictory_identities_and_hosts_refuse_to_start() {
        let hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let other = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752";
        let twice = format!(
            "{GOOD}\n[[clients]]\nname = \"store-1\"\napi_key_sha256 = \"{other}\"\naccounts = [\"pockyt-main\"]\n"
        );
        let e = load(&twice).unwrap_err().to_string();
        assert!(
            e.contains("clients[1].name") && e.contains("clients[0].name"),
            "{e}"
        );
        let shared_key = format!(
            "{GOOD}\n[[clients]]\nname = \"store-2\"\napi_key_sha256 = \"{hash}\"\naccounts = [\"pockyt-main\"]\n"
        );
        let e = load(&shared_key).unwrap_err().to_string();
        assert!(
            e.contains("clients[1]") && e.contains("clients[0] (store-1)"),
            "{e}"
        );
        let operator_with_a_pos_key =
            format!("{GOOD}\n[[operators]]\nname = \"ana\"\napi_key_sha256 = \"{hash}\"\n");
        let e = load(&operator_with_a_pos_key).unwrap_err().to_string();
        assert!(e.contains("operators[0]") && e.contains("store-1"), "{e}");
        let two_operators = format!(
            "{GOOD}\n[[operators]]\nname = \"ana\"\napi_key_sha256 = \"{other}\"\n[[operators]]\nname = \"ana\"\napi_key_sha256 = \"{}\"\n",
            "1".repeat(64)
        );
        let e = load(&two_operators).unwrap_err().to_string();
        assert!(e.contains("operators[1].name"), "{e}");
        let two_accounts = GOOD.replace("name = \"pay10-uae\"", "name = \"pockyt-main\"");
        let e = load(&two_accounts).unwrap_err().to_string();
        assert!(
            e.contains("accounts[1].name") && e.contains("accounts[0].name"),
            "{e}"
        );
        // Rotation: one client, two keys.
        let rotating = GOOD.replace(
            &format!("api_key_sha256 = \"{hash}\""),
            &format!("api_key_sha256 = [\"{hash}\", \"{other}\"]"),
        );
        let c = load(&rotating).unwrap();
        assert_eq!(c.clients[0].key_hashes.len(), 2);
        // The production host however it is written.
        for host in [
            "mapi.yuansfer.com.",
            "MAPI.Yuansfer.COM",
            "mapi.yuansfer.com.:443",
        ] {
            let text = GOOD
                .replacen(
                    "environment = \"production\"",
                    "environment = \"sandbox\"",
                    1,
                )
                .replace("https://mapi.yuansfer.com", &format!("https://{host}"));
            let e = load(&text).unwrap_err().to_string();
            assert!(e.contains("production host"), "{host}: {e}");
        }
        let sandbox_as_production = GOOD.replace(
            "https://mapi.yuansfer.com",
            "https://mapi.yuansfer.yunkeguan.com.",
        );
        let e = load(&sandbox_as_production).unwrap_err().to_string();
        assert!(e.contains("is a sandbox"), "{e}");
        let bad_zone = GOOD.replace(
            "token = \"secret\"",
            "token = \"secret\"\ntime_zone = \"Mars/Olympus\"",
        );
        let e = load(&bad_zone).unwrap_err().to_string();
        assert!(
            e.contains("accounts[0].time_zone") && e.contains("IANA"),
            "{e}"
        );
    }

    /// Each connector reads its own account fields: another provider's is
    /// refused, with the fields it takes.
    #[test]
    fn an_account_takes_only_its_providers_fields() {
        let foreign = GOOD.replacen(
            "token = \"secret\"",
            "token = \"secret\"\npay_id = \"1009120125180122\"",
            1,
        );
        let err = load(&foreign).unwrap_err().to_string();
        assert!(
            err.contains("accounts[0].pay_id")
                && err.contains("not a field of a pockyt account")
                && err.contains("merchant_no, store_no, token"),
            "{err}"
        );
    }

    #[test]
    fn secrets_are_trimmed_and_empty_ones_refused() {
        let c = load(&GOOD.replace("token = \"secret\"", "token = \"  secret\\n\"")).unwrap();
        let Some(p) = c.accounts[0]
            .credentials
            .downcast_ref::<crate::providers::pockyt::PockytAccount>()
        else {
            panic!("pockyt first")
        };
        use secrecy::ExposeSecret;
        assert_eq!(p.token.expose_secret(), "secret");
        for (from, to) in [
            ("token = \"secret\"", "token = \"\""),
            ("token = \"secret\"", "token = \" \\t \""),
            ("salt = \"salt\"", "salt = \"env:RG_TEST_EMPTY_SALT\""),
        ] {
            std::env::set_var("RG_TEST_EMPTY_SALT", "");
            let err = load(&GOOD.replace(from, to)).unwrap_err().to_string();
            assert!(err.contains("is empty"), "{to}: {err}");
        }
    }

    #[test]
    fn environment_decides_livemode_and_cannot_be_contradicted() {
        let c = load(GOOD).unwrap();
        assert!(c.accounts.iter().all(|a| a.livemode));
        let sandbox = GOOD
            .replace("environment = \"production\"", "environment = \"sandbox\"")
            .replace("base_url = \"https://mapi.yuansfer.com\"\n", "")
            .replace("base_url = \"https://pg.pay10.ae\"\n", "");
        let c = load(&sandbox).unwrap();
        assert!(c.accounts.iter().all(|a| !a.livemode));
        let Some(p) = c.accounts[0]
            .credentials
            .downcast_ref::<crate::providers::pockyt::PockytAccount>()
        else {
            panic!()
        };
        assert_eq!(
            p.base_url, "https://mapi.yuansfer.yunkeguan.com",
            "the sandbox host by default"
        );
        let cases = [
            (
                GOOD.replacen("environment = \"production\"\n", "", 1),
                "accounts[0].environment",
                "is required",
            ),
            (
                GOOD.replace(
                    "https://mapi.yuansfer.com",
                    "http://127.0.0.1:8081/sandbox/pockyt",
                ),
                "accounts[0].base_url",
                "simulator",
            ),
            (
                GOOD.replace("https://pg.pay10.ae", "https://uatpg.pay10.ae"),
                "accounts[1].base_url",
                "test host",
            ),
            (
                sandbox.replacen(
                    "environment = \"sandbox\"",
                    "environment = \"sandbox\"\nbase_url = \"https://mapi.yuansfer.com\"",
                    1,
                ),
                "accounts[0].base_url",
                "real money",
            ),
            (
                GOOD.replacen(
                    "environment = \"production\"",
                    "environment = \"production\"\nlivemode = false",
                    1,
                ),
                "accounts[0].livemode",
                "contradicts",
            ),
            (
                GOOD.replacen("environment = \"production\"", "environment = \"live\"", 1),
                "accounts[0].environment",
                "not",
            ),
        ];
        for (text, field, words) in cases {
            let err = load(&text).unwrap_err().to_string();
            assert!(
                err.starts_with(field) && err.contains(words),
                "{field}: {err}"
            );
        }
        // A production account behind a private host is allowed, with a notice.
        let proxied = GOOD.replace("https://mapi.yuansfer.com", "http://10.0.0.7:8443");
        let c = load(&proxied).unwrap();
        assert!(c.accounts[0].notice.is_some());
    }

    #[test]
    fn good_config_loads() {
        let c = load(GOOD).unwrap();
        assert_eq!(c.accounts.len(), 2);
        assert_eq!(c.clients[0].accounts[&ProviderKind::Pay10], "pay10-uae");
        assert!(c.demo.is_none());
        // Secrets never show in Debug output.
        assert!(!format!("{c:?}").contains("0123456789abcdef0123456789abcdef"));
        assert!(!format!("{c:?}").contains("\"secret\""));
    }

    #[test]
    fn incomplete_config_names_the_field() {
        let missing_account = GOOD.replace(r#"["pockyt-main", "pay10-uae"]"#, r#"["nope"]"#);
        assert!(load(&missing_account)
            .unwrap_err()
            .to_string()
            .starts_with("clients[0].accounts"));
        let bad_key = GOOD.replace("0123456789abcdef0123456789abcdef", "short");
        assert!(load(&bad_key)
            .unwrap_err()
            .to_string()
            .starts_with("accounts[1].encryption_key"));
        let bad_hash = GOOD.replace("9f86d081", "zz");
        assert!(load(&bad_hash)
            .unwrap_err()
            .to_string()
            .starts_with("clients[0].api_key_sha256"));
        let no_token = GOOD.replace("token = \"secret\"", "");
        assert!(load(&no_token)
            .unwrap_err()
            .to_string()
            .starts_with("accounts[0].token"));
        assert!(matches!(load("bogus = 1"), Err(ConfigError::Toml { .. })));
        for (text, secret) in [
            ("token = sk_live_SECRET\n", "sk_live_SECRET"),
            (
                "provider_timeout_ms = \"sk_live_SECRET\"\n",
                "sk_live_SECRET",
            ),
            ("[[accounts]]\nname = \"a\"\nsalt = 12345678\n", "12345678"),
            ("merchant_name = \"sk_live_SECRET\n", "sk_live_SECRET"),
        ] {
            let err = load(text).unwrap_err().to_string();
            assert!(!err.contains(secret), "{err}");
            assert!(err.contains("line "), "{err}");
        }
        let unknown = load("bogus = 1").unwrap_err().to_string();
        assert!(unknown.contains("unknown field `bogus`"), "{unknown}");
    }
}

#[cfg(test)]
mod example_file {
    #[test]
    fn the_shipped_example_config_loads() {
        std::env::set_var("POCKYT_TOKEN", "t");
        std::env::set_var("PAY10_SALT", "s");
        std::env::set_var("PAY10_ENCRYPTION_KEY", "0123456789abcdef0123456789abcdef");
        std::env::set_var(
            "STORE42_WEBHOOK_SECRET",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        );
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
        let c = super::Config::load(&super::Overrides {
            config_file: Some(path.into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.accounts.len(), 2);
        assert!(c.demo.is_none());
    }
}

#[cfg(test)]
mod config_table {
    use super::*;
    use std::collections::BTreeSet;

    /// The example file with its commented-out keys (`# key = value`, and
    /// `# [table]`) switched on.
    fn example_uncommented() -> String {
        let text = include_str!("../config.example.toml");
        text.lines()
            .map(|l| {
                let body = l.strip_prefix("# ").unwrap_or(l);
                let is_key = body.split_once(" = ").is_some_and(|(k, _)| {
                    !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                });
                let is_table = body.starts_with('[') && body.ends_with(']') && !body.contains(' ');
                if l.starts_with("# ") && (is_key || is_table) {
                    body.split(" #").next().unwrap_or(body).to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn keys_of(value: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
        let toml::Value::Table(t) = value else {
            return;
        };
        for (k, v) in t {
            let name = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                toml::Value::Table(_) => keys_of(v, &name, out),
                toml::Value::Array(items)
                    if !items.is_empty() && items.iter().all(|i| i.is_table()) =>
                {
                    for i in items {
                        keys_of(i, &format!("{name}[]"), out);
                    }
                }
                _ => {
                    out.insert(name);
                }
            }
        }
    }

    /// Every key of the file is in the README's table, in the example (on, or
    /// commented out), and read by the config type; nothing else is.
    #[test]
    fn the_readme_table_the_example_and_the_config_type_agree() {
        let text = example_uncommented();
        // The config type: the example (commented keys on) parses with
        // unknown fields refused, and sets every field (a new field makes
        // this destructuring fail to compile until the example has it).
        let f: FileConfig = toml::from_str(&text).expect("the example parses");
        let FileConfig {
            listen,
            public_url,
            database_url,
            provider_connect_timeout_ms,
            provider_timeout_ms,
            request_timeout_ms,
            max_connections,
            header_read_timeout_ms,
            body_read_timeout_ms,
            not_found_after_ms,
            db_max_connections,
            merchant_name,
            smtp,
            accounts,
            clients,
            operators,
            review_after_ms,
            events_retention_days,
            reconciliation,
            console,
        } = f;
        assert!(console
            .is_some_and(|c| c.session_idle_minutes.is_some() && c.session_max_hours.is_some()));
        assert!(events_retention_days.is_some());
        assert!(reconciliation.is_some_and(|r| r.daily_at.is_some()));
        assert!(listen.is_some() && public_url.is_some() && database_url.is_some());
        assert!(provider_connect_timeout_ms.is_some() && provider_timeout_ms.is_some());
        assert!(request_timeout_ms.is_some() && max_connections.is_some());
        assert!(header_read_timeout_ms.is_some() && body_read_timeout_ms.is_some());
        assert!(not_found_after_ms.is_some() && db_max_connections.is_some());
        assert!(merchant_name.is_some() && review_after_ms.is_some() && smtp.is_some());
        assert!(!clients.is_empty() && !operators.is_empty());
        let mut seen = [false; 5];
        let mut provider_keys = BTreeSet::new();
        for a in accounts {
            let AccountEntry {
                name: _,
                provider: _,
                environment,
                base_url,
                livemode,
                store_name,
                time_zone,
                provider_fields,
            } = a;
            for (i, set) in [
                environment.is_some(),
                base_url.is_some(),
                livemode.is_some(),
                store_name.is_some(),
                time_zone.is_some(),
            ]
            .into_iter()
            .enumerate()
            {
                seen[i] |= set;
            }
            provider_keys.extend(provider_fields.into_keys());
        }
        assert!(
            seen.iter().all(|s| *s),
            "every account key is in the example: {seen:?}"
        );
        for p in crate::types::ProviderKind::ALL {
            for k in p.rules().account_fields() {
                assert!(
                    provider_keys.contains(*k),
                    "{p}'s account field {k} is in the example"
                );
            }
        }

        // The README's table lists exactly the example's keys.
        let mut example = BTreeSet::new();
        keys_of(
            &toml::from_str::<toml::Value>(&text).unwrap(),
            "",
            &mut example,
        );
        let readme = include_str!("../README.md");
        let table = readme
            .split("<!-- config-table:begin -->")
            .nth(1)
            .and_then(|r| r.split("<!-- config-table:end -->").next())
            .expect("the README marks its config table");
        let listed: BTreeSet<String> = table
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .map(str::to_string)
            .collect();
        assert_eq!(
            listed, example,
            "README table (left) vs config.example.toml (right)"
        );
    }
}
