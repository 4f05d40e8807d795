//! The provider layer: one interface ([`ProviderClient`]) over the
//! connectors (`pockyt/`, `pay10/`), each of which implements [`Rules`],
//! [`Credentials`] and [`Connector`]. Providers know nothing of HTTP
//! handlers or the store.

pub mod pairs;
pub mod pay10;
pub mod pockyt;

use std::collections::BTreeMap;
use std::sync::Arc;

use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::money::{Currency, Minor};

use crate::types::{Outcome, ProviderKind};

/// What a provider's protocol allows and means: each connector's own
/// knowledge (`providers/<name>/rules.rs`), asked through [`ProviderKind`].
pub trait Rules: Sync {
    /// Whether the provider can be asked about the original sale before a
    /// refund (and so confirms its amount and currency).
    fn has_sale_lookup(&self) -> bool;
    /// Whether a sale in the provider's status `status` may be refunded.
    fn sale_is_refundable(&self, status: &str) -> bool;
    /// What the provider needs to find the sale, and which fields it takes:
    /// each broken rule as (field, message). The sale ids go into the
    /// provider's delimited and signed strings, so each is held to what the
    /// provider allows, and never to less than what cannot be confused with
    /// a delimiter (see [`pairs`]).
    fn check_sale_ids(
        &self,
        transaction_no: Option<&str>,
        reference: Option<&str>,
        has_settle_currency: bool,
    ) -> Vec<(&'static str, &'static str)>;
    /// Whether the refund id a webhook carries is the provider's own id of
    /// the refund, worth keeping on the refund.
    fn webhook_refund_id_is_providers(&self) -> bool;
    /// The largest refund the wire format can carry, in minor units.
    fn max_amount_minor(&self) -> i64;
    /// A webhook's amount in minor units; `None`: unreadable.
    fn webhook_amount_minor(&self, amount: &str, currency: Currency) -> Option<i64>;
    /// The webhook field that states the currency.
    fn webhook_currency_field(&self) -> &'static str;
    /// What else a webhook states about the refund it names.
    fn webhook_claims(&self, fields: &BTreeMap<String, String>) -> WebhookClaims;
    /// Webhook fields that change between deliveries of the same event
    /// (signatures, send times): left out of its de-duplication key.
    fn volatile_webhook_fields(&self) -> &'static [&'static str];
    /// The `failure_code` a POS can act on, from the provider's code for a
    /// declined refund.
    fn failure_code(&self, code: &str) -> &'static str;
    /// The provider's API host for production (real money) or its sandbox.
    fn default_base_url(&self, production: bool) -> &'static str;
    /// Hosts that are certainly the provider's test systems.
    fn test_hosts(&self) -> &'static [&'static str];
    /// Hosts that are certainly the provider's production systems.
    fn production_hosts(&self) -> &'static [&'static str];
    /// The account's own configuration fields.
    fn account_fields(&self) -> &'static [&'static str];
    /// The account's credentials from its own configuration fields (every
    /// other field is refused).
    fn account(&self, fields: &AccountFields) -> Result<AccountCredentials, FieldError>;
}

/// A provider account's credentials, as its connector read them from the
/// configuration (`Rules::account`).
pub trait Credentials: Send + Sync + std::fmt::Debug + std::any::Any {
    fn provider(&self) -> ProviderKind;
    /// The provider's API root for this account.
    fn base_url(&self) -> &str;
    /// The account's client, on the process's one HTTP client.
    fn connect(&self, http: reqwest::Client) -> Arc<dyn Connector>;
    /// For tests and tools that need the connector's own type.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// One account's credentials, whichever provider's.
#[derive(Debug, Clone)]
pub struct AccountCredentials(Arc<dyn Credentials>);

impl AccountCredentials {
    pub fn new(c: impl Credentials) -> Self {
        AccountCredentials(Arc::new(c))
    }

    pub fn provider(&self) -> ProviderKind {
        self.0.provider()
    }

    pub fn base_url(&self) -> &str {
        self.0.base_url()
    }

    /// The connector's own credentials type, if it is `T`.
    pub fn downcast_ref<T: 'static>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref()
    }
}

/// What a connector does for one account: the provider's calls and its
/// webhook check (`providers/<name>/mod.rs`). [`ProviderClient`] adds the
/// metrics and the stored-text limits around it.
#[async_trait::async_trait]
pub trait Connector: Send + Sync + std::fmt::Debug {
    fn provider(&self) -> ProviderKind;
    /// Looks the original sale up; `None`: the provider has no sale query
    /// (see [`Rules::has_sale_lookup`]).
    async fn lookup_sale(
        &self,
        transaction_no: Option<&str>,
        reference: Option<&str>,
    ) -> Option<SaleLookup>;
    /// Looks the sale up given the amount the POS states for it (the
    /// receipt's): Pay10's status enquiry needs it. By default the same as
    /// [`Connector::lookup_sale`].
    async fn lookup_sale_stated(
        &self,
        transaction_no: Option<&str>,
        reference: Option<&str>,
        _amount: Minor,
        _currency: Currency,
    ) -> Option<SaleLookup> {
        self.lookup_sale(transaction_no, reference).await
    }
    async fn refund(&self, call: &RefundCall) -> ProviderAnswer;
    async fn refund_status(&self, query: &StatusQuery) -> ProviderAnswer;
    /// The refunds the provider's own books list for the dates `from..=to`
    /// (the provider's calendar), for the daily reconciliation. `None`: the
    /// provider publishes no such list (each refund is asked about instead,
    /// with [`Connector::booked_refund`]).
    async fn booked_refunds(
        &self,
        _from: jiff::civil::Date,
        _to: jiff::civil::Date,
    ) -> Option<Result<Vec<BookedRefund>, String>> {
        None
    }
    /// One refund as the provider's books hold it: `Ok(None)` when the
    /// provider has no record of it. By default read from the refund status
    /// query (which states no amount).
    async fn booked_refund(&self, query: &StatusQuery) -> Result<Option<BookedRefund>, String> {
        let a = self.refund_status(query).await;
        match a.outcome {
            Outcome::NotFound => Ok(None),
            Outcome::Unknown | Outcome::Misconfigured => Err(a
                .message
                .unwrap_or_else(|| "the provider could not be asked".into())),
            outcome => Ok(Some(BookedRefund {
                sale_transaction_no: query.transaction_no.clone(),
                provider_refund_id: a.provider_refund_id,
                provider_reference: Some(query.provider_reference.clone()),
                amount_minor: None,
                currency: None,
                provider_status: a.provider_status,
                outcome,
                created: None,
            })),
        }
    }
    /// SHA-256 over everything that verifies this account's webhooks: two
    /// accounts with the same digest verify the same webhooks.
    fn webhook_credentials_digest(&self) -> [u8; 32];
    /// Checks a webhook body's signature and reads what it covers.
    fn verify_webhook(&self, body: &[u8]) -> Result<WebhookEvent, WebhookError>;
}

/// A configuration field a connector refused: which, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A provider account's own configuration fields (`merchant_no`, `pay_id`,
/// ...), as text, for its connector to read.
#[derive(Debug, Clone)]
pub struct AccountFields {
    pub provider: ProviderKind,
    /// The account's base URL, already decided and checked.
    pub base_url: String,
    pub values: BTreeMap<String, String>,
}

impl AccountFields {
    /// A required field, trimmed.
    pub fn required(&self, key: &str) -> Result<String, FieldError> {
        self.values
            .get(key)
            .map(|v| v.trim().to_string())
            .ok_or_else(|| FieldError::new(key, format!("is required for {}", self.provider)))
    }

    /// A required secret, given as itself or as `env:VARIABLE`.
    pub fn secret(&self, key: &str) -> Result<String, FieldError> {
        let v = self
            .values
            .get(key)
            .ok_or_else(|| FieldError::new(key, "is required"))?;
        let value = match v.strip_prefix("env:") {
            Some(var) => std::env::var(var).map_err(|_| {
                FieldError::new(key, format!("environment variable {var} is not set"))
            })?,
            None => v.clone(),
        };
        let value = value.trim().to_string();
        if value.is_empty() {
            return Err(FieldError::new(key, "is empty"));
        }
        Ok(value)
    }

    /// Refuses any field but `known`.
    pub fn only(&self, known: &[&str]) -> Result<(), FieldError> {
        match self.values.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(FieldError::new(
                k.clone(),
                format!(
                    "is not a field of a {} account (its fields: {})",
                    self.provider,
                    known.join(", ")
                ),
            )),
            None => Ok(()),
        }
    }
}

impl ProviderKind {
    /// The connector's rules: the one line a new provider adds here.
    pub fn rules(&self) -> &'static dyn Rules {
        match self {
            ProviderKind::Pockyt => &pockyt::rules::POCKYT,
            ProviderKind::Pay10 => &pay10::rules::PAY10,
        }
    }

    /// See [`Rules::has_sale_lookup`].
    pub fn has_sale_lookup(&self) -> bool {
        self.rules().has_sale_lookup()
    }

    /// See [`Rules::check_sale_ids`].
    pub fn check_sale_ids(
        &self,
        transaction_no: Option<&str>,
        reference: Option<&str>,
        has_settle_currency: bool,
    ) -> Vec<(&'static str, &'static str)> {
        self.rules()
            .check_sale_ids(transaction_no, reference, has_settle_currency)
    }

    /// See [`Rules::webhook_refund_id_is_providers`].
    pub fn webhook_refund_id_is_providers(&self) -> bool {
        self.rules().webhook_refund_id_is_providers()
    }

    /// See [`Rules::max_amount_minor`].
    pub fn max_amount_minor(&self) -> i64 {
        self.rules().max_amount_minor()
    }

    /// See [`Rules::webhook_amount_minor`].
    pub fn webhook_amount_minor(&self, amount: &str, currency: Currency) -> Option<i64> {
        self.rules().webhook_amount_minor(amount, currency)
    }

    /// The currency a webhook states, if it states one.
    pub fn webhook_currency(&self, fields: &BTreeMap<String, String>) -> Option<String> {
        fields
            .get(self.rules().webhook_currency_field())
            .filter(|v| !v.trim().is_empty())
            .cloned()
    }

    /// See [`Rules::webhook_claims`].
    pub fn webhook_claims(&self, fields: &BTreeMap<String, String>) -> WebhookClaims {
        self.rules().webhook_claims(fields)
    }

    /// See [`Rules::failure_code`].
    pub fn failure_code(&self, code: Option<&str>) -> &'static str {
        self.rules().failure_code(code.unwrap_or(""))
    }
}

/// A webhook field's value, trimmed; `None` when absent or blank.
pub fn field(fields: &BTreeMap<String, String>, key: &str) -> Option<String> {
    fields
        .get(key)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// What a webhook states besides the refund's own ids, amount and currency.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookClaims {
    /// The sale's merchant reference (Pockyt `reference`, Pay10 `ORDER_ID`).
    pub sale_reference: Option<String>,
    /// Pockyt `settleCurrency`.
    pub settle_currency: Option<String>,
    /// A transaction type that is not a refund (Pay10 `TXNTYPE=SALE`).
    pub transaction_type: Option<String>,
}

/// Timeouts for every provider call; the client is built once per process.
#[derive(Debug, Clone, Copy)]
pub struct HttpSettings {
    pub connect_timeout: Duration,
    pub timeout: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            timeout: Duration::from_secs(15),
        }
    }
}

pub fn http_client(settings: HttpSettings) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(settings.connect_timeout)
        .timeout(settings.timeout)
        .pool_max_idle_per_host(64)
        .user_agent(concat!("refund-gateway/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the TLS backend initialises")
}

/// What the gateway asks a provider to refund.
#[derive(Debug, Clone)]
pub struct RefundCall {
    pub refund_id: String,
    /// Our unique id for this refund at the provider (Pockyt `refundReference`,
    /// Pay10 `REFUND_ORDER_ID`): how the refund is found again.
    pub provider_reference: String,
    pub transaction_no: Option<String>,
    pub reference: Option<String>,
    pub amount: Minor,
    pub currency: Currency,
    pub settle_currency: Option<Currency>,
}

/// What identifies a refund when asking a provider for its status.
#[derive(Debug, Clone)]
pub struct StatusQuery {
    pub refund_id: String,
    pub provider_reference: String,
    pub provider_refund_id: Option<String>,
    pub transaction_no: Option<String>,
    pub reference: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderAnswer {
    pub outcome: Outcome,
    pub provider_refund_id: Option<String>,
    pub provider_status: Option<String>,
    pub provider_code: Option<String>,
    pub message: Option<String>,
}

/// Text a provider sent, made fit to store the same way on every database:
/// NUL (which Postgres text cannot hold) becomes U+FFFD, and it is cut to
/// 1000 characters (a provider's message is never longer in earnest).
pub fn stored_text(s: String) -> String {
    if !s.contains('\0') && s.len() <= 1000 {
        return s;
    }
    s.replace('\0', "\u{FFFD}").chars().take(1000).collect()
}

impl BookedRefund {
    /// Every text made fit to store ([`stored_text`]).
    pub fn stored(self) -> Self {
        Self {
            sale_transaction_no: self.sale_transaction_no.map(stored_text),
            provider_refund_id: self.provider_refund_id.map(stored_text),
            provider_reference: self.provider_reference.map(stored_text),
            currency: self.currency.map(stored_text),
            provider_status: self.provider_status.map(stored_text),
            ..self
        }
    }
}

impl ProviderAnswer {
    /// The answer with every text made fit to store ([`stored_text`]).
    pub fn stored(self) -> Self {
        Self {
            outcome: self.outcome,
            provider_refund_id: self.provider_refund_id.map(stored_text),
            provider_status: self.provider_status.map(stored_text),
            provider_code: self.provider_code.map(stored_text),
            message: self.message.map(stored_text),
        }
    }

    /// The request could not be built (a value the provider's string cannot
    /// carry): nothing was sent, so the refund provably did not happen.
    pub fn not_sent(why: impl std::fmt::Display) -> Self {
        Self {
            outcome: Outcome::Failed,
            provider_refund_id: None,
            provider_status: None,
            provider_code: None,
            message: Some(format!(
                "the request could not be built ({why}); nothing was sent to the provider"
            )),
        }
    }

    pub fn unknown(message: impl Into<String>) -> Self {
        Self {
            outcome: Outcome::Unknown,
            provider_refund_id: None,
            provider_status: None,
            provider_code: None,
            message: Some(message.into()),
        }
    }
}

/// The original sale as a provider reports it (Pockyt tran-query).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleInfo {
    pub transaction_no: String,
    pub reference: Option<String>,
    pub amount: String,
    pub currency: String,
    /// The currency the sale settles in (Pockyt `settleCurrency`), if given.
    pub settle_currency: Option<String>,
    pub status: String,
    /// The refunds the provider lists for this sale (any channel: this
    /// gateway, another one, the provider's dashboard), failed ones left out.
    pub refunded: Vec<ListedRefund>,
}

/// One refund a provider lists for a sale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedRefund {
    pub amount: String,
    /// The merchant's reference for it (ours are `RefundCall::provider_reference`).
    pub reference: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaleLookup {
    Found(SaleInfo),
    NotFound,
    /// The provider cannot be asked right now, or refused the query.
    Unavailable(String),
}

/// One refund as a provider's books list it (Pockyt trans-list, Pay10
/// refund requery), for the daily reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookedRefund {
    /// The refunded sale (Pockyt `originalTransactionNo`), where stated.
    pub sale_transaction_no: Option<String>,
    /// The provider's id of the refund (Pockyt `transactionNo` of the refund
    /// transaction, Pay10 `PG_REF_NUM`).
    pub provider_refund_id: Option<String>,
    /// The merchant's id of the refund (ours: `RefundCall::provider_reference`).
    pub provider_reference: Option<String>,
    /// In the currency's minor units; `None`: not stated or unreadable.
    pub amount_minor: Option<i64>,
    /// ISO 4217 alphabetic code, where stated.
    pub currency: Option<String>,
    pub provider_status: Option<String>,
    pub outcome: Outcome,
    /// The provider's calendar date of the refund, where stated.
    pub created: Option<jiff::civil::Date>,
}

/// A verified provider webhook, reduced to what matching a refund needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEvent {
    pub provider: ProviderKind,
    pub transaction_no: Option<String>,
    pub reference: Option<String>,
    pub provider_refund_id: Option<String>,
    pub provider_reference: Option<String>,
    pub amount: Option<String>,
    pub outcome: Outcome,
    pub provider_status: Option<String>,
    pub is_refund: bool,
    pub fields: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("the webhook body could not be parsed")]
    Malformed,
    #[error("the webhook signature is missing or invalid")]
    BadSignature,
}

/// One configured provider account, ready to call.
#[derive(Debug, Clone)]
pub struct ProviderClient(Arc<dyn Connector>);

impl ProviderClient {
    /// The client of an account, on the process's one HTTP client.
    pub fn new(http: reqwest::Client, credentials: &AccountCredentials) -> Self {
        ProviderClient(credentials.0.connect(http))
    }

    /// A connector built by hand (tests).
    pub fn from_connector(c: impl Connector + 'static) -> Self {
        ProviderClient(Arc::new(c))
    }

    pub fn kind(&self) -> ProviderKind {
        self.0.provider()
    }

    /// Looks the original sale up where the provider can; `None` where it
    /// has no sale query (Pay10's refund API has none).
    pub async fn lookup_sale(
        &self,
        transaction_no: Option<&str>,
        reference: Option<&str>,
    ) -> Option<SaleLookup> {
        self.lookup_sale_as(transaction_no, reference, None).await
    }

    /// [`ProviderClient::lookup_sale`], with the sale's amount the POS
    /// stated where it did (see [`Connector::lookup_sale_stated`]).
    pub async fn lookup_sale_as(
        &self,
        transaction_no: Option<&str>,
        reference: Option<&str>,
        stated: Option<(Minor, Currency)>,
    ) -> Option<SaleLookup> {
        let started = Instant::now();
        let found = match stated {
            Some((amount, currency)) => {
                self.0
                    .lookup_sale_stated(transaction_no, reference, amount, currency)
                    .await?
            }
            None => self.0.lookup_sale(transaction_no, reference).await?,
        };
        let outcome = match &found {
            SaleLookup::Found(_) => "found",
            SaleLookup::NotFound => "not_found",
            SaleLookup::Unavailable(_) => "unavailable",
        };
        crate::metrics::provider_call(self.kind().as_str(), "sale_lookup", outcome, started);
        Some(match found {
            SaleLookup::Found(sale) => SaleLookup::Found(SaleInfo {
                transaction_no: stored_text(sale.transaction_no),
                reference: sale.reference.map(stored_text),
                amount: stored_text(sale.amount),
                currency: stored_text(sale.currency),
                settle_currency: sale.settle_currency.map(stored_text),
                status: stored_text(sale.status),
                refunded: sale.refunded,
            }),
            other => other,
        })
    }

    pub async fn refund(&self, call: &RefundCall) -> ProviderAnswer {
        let started = Instant::now();
        let answer = self.0.refund(call).await;
        crate::metrics::provider_call(
            self.kind().as_str(),
            "refund",
            answer.outcome.as_str(),
            started,
        );
        answer.stored()
    }

    pub async fn refund_status(&self, query: &StatusQuery) -> ProviderAnswer {
        let started = Instant::now();
        let answer = self.0.refund_status(query).await;
        crate::metrics::provider_call(
            self.kind().as_str(),
            "refund_status",
            answer.outcome.as_str(),
            started,
        );
        answer.stored()
    }

    /// See [`Connector::booked_refunds`].
    pub async fn booked_refunds(
        &self,
        from: jiff::civil::Date,
        to: jiff::civil::Date,
    ) -> Option<Result<Vec<BookedRefund>, String>> {
        let started = Instant::now();
        let listed = self.0.booked_refunds(from, to).await?;
        let outcome = if listed.is_ok() {
            "listed"
        } else {
            "unavailable"
        };
        crate::metrics::provider_call(self.kind().as_str(), "refund_list", outcome, started);
        Some(listed.map(|v| v.into_iter().map(BookedRefund::stored).collect()))
    }

    /// See [`Connector::booked_refund`].
    pub async fn booked_refund(&self, query: &StatusQuery) -> Result<Option<BookedRefund>, String> {
        let started = Instant::now();
        let found = self.0.booked_refund(query).await;
        let outcome = match &found {
            Ok(Some(_)) => "found",
            Ok(None) => "not_found",
            Err(_) => "unavailable",
        };
        crate::metrics::provider_call(self.kind().as_str(), "booked_refund", outcome, started);
        found.map(|b| b.map(BookedRefund::stored))
    }

    /// Whether two accounts hold the very same webhook credentials (so a
    /// webhook that one of them verifies, the other verifies too).
    pub fn same_credentials(&self, other: &ProviderClient) -> bool {
        self.kind() == other.kind()
            && self.0.webhook_credentials_digest() == other.0.webhook_credentials_digest()
    }

    pub fn verify_webhook(&self, body: &[u8]) -> Result<WebhookEvent, WebhookError> {
        self.0.verify_webhook(body)
    }
}

/// SHA-256 over `parts`, each length-prefixed (so no two lists of parts
/// collide): what [`Connector::webhook_credentials_digest`] returns.
pub fn credentials_digest(parts: &[&[u8]]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().into()
}

/// Reads a JSON value that providers send either as a string or as a number.
pub(crate) fn de_opt_stringish<'de, D>(d: D) -> Result<Option<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let v = Option::<serde_json::Value>::deserialize(d)?;
    Ok(match v {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        Some(serde_json::Value::Bool(b)) => Some(b.to_string()),
        Some(other) => Some(other.to_string()),
    })
}

/// The largest provider answer the gateway reads, in bytes. Pockyt and
/// Pay10 answer a refund or a status query in well under 4 KiB; a sale with
/// a thousand refunds listed stays under 300 KiB. A larger answer is not
/// read (it is an unreadable answer: outcome unknown), so a provider, or
/// anything posing as one, cannot make the gateway allocate what it sends.
pub const MAX_PROVIDER_RESPONSE_BYTES: usize = 1024 * 1024;

/// Reads a provider's answer body, at most [`MAX_PROVIDER_RESPONSE_BYTES`]:
/// a larger one (by its `Content-Length`, or as it streams in) is refused
/// with a message, without reading the rest.
pub(crate) async fn read_capped(resp: reqwest::Response) -> Result<Vec<u8>, String> {
    read_at_most(resp, MAX_PROVIDER_RESPONSE_BYTES).await
}

/// The largest list of a day's transactions the gateway reads, in bytes
/// (Pockyt trans-list: about 400 bytes an entry, so some 160,000 entries).
pub const MAX_PROVIDER_LIST_BYTES: usize = 64 * 1024 * 1024;

/// Reads a provider's answer body, at most `max` bytes (see [`read_capped`]).
pub(crate) async fn read_at_most(
    mut resp: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, String> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(format!("the answer is larger than {max} bytes; not read"));
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("the answer was cut off: {e}"))?
    {
        if out.len() + chunk.len() > max {
            return Err(format!("the answer is larger than {max} bytes; not read"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// `base` + `path`, tolerating a trailing slash on the configured base URL.
pub(crate) fn join_url(base: &str, path: &str) -> String {
    format!("{}{}", base.trim_end_matches('/'), path)
}
