//! Faithful simulators of Pockyt and Pay10 (api.md "Sandbox"): the same wire
//! formats, signature/hash/encryption checks and refund rules as the real
//! providers, plus magic amounts for the cases that are hard to meet.

mod pay10;
mod pockyt;
pub mod sign;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::money::{Currency, Minor};
use crate::providers::pay10::crypto::EncryptionKey;

/// The sandbox's published test credentials (like a provider's public test keys):
/// demo mode and a standalone sandbox fit together with no configuration.
pub mod demo_credentials {
    pub const POCKYT_MERCHANT_NO: &str = "200043";
    pub const POCKYT_STORE_NO: &str = "300014";
    pub const POCKYT_TOKEN: &str = "5cbfb079f15b150122261c8537086d77a";
    pub const PAY10_PAY_ID: &str = "1009120125180122";
    pub const PAY10_SALT: &str = "1518b6433cc24337";
    pub const PAY10_KEY: &str = "Tq5Lm8Rw2Yz4Bx7Nc1Vd3Hf6Jk9Gp0Sa";
}

/// Fixed sales that exist at start (listed in the README).
pub mod demo_sales {
    pub const POCKYT_TRANSACTION_NO: &str = "297553638301777927";
    pub const POCKYT_REFERENCE: &str = "test20200101306";
    pub const POCKYT_PENDING_TRANSACTION_NO: &str = "297553638300708562";
    pub const PAY10_PG_REF_NUM: &str = "1879120328175249";
    pub const PAY10_ORDER_ID: &str = "PAY10_144644225";
}

#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub pockyt_merchant_no: String,
    pub pockyt_store_no: String,
    pub pockyt_token: String,
    pub pay10_pay_id: String,
    pub pay10_salt: String,
    pub pay10_key: EncryptionKey,
    /// The gateway's base URL; IPNs go to `{ipn_url}/ipn/pockyt` and `/ipn/pay10`.
    pub ipn_url: Option<String>,
    /// How long magic amount `91` keeps the caller waiting (longer than its timeout).
    pub slow_response: Duration,
    /// How long a `94` refund stays pending before it succeeds.
    pub pending_delay: Duration,
    /// Where the sandbox keeps its sales and refunds across restarts (demo
    /// mode keeps it beside its database); `None`: in memory only.
    pub state_file: Option<std::path::PathBuf>,
}

impl SandboxConfig {
    pub fn demo() -> Self {
        use demo_credentials::*;
        Self {
            pockyt_merchant_no: POCKYT_MERCHANT_NO.into(),
            pockyt_store_no: POCKYT_STORE_NO.into(),
            pockyt_token: POCKYT_TOKEN.into(),
            pay10_pay_id: PAY10_PAY_ID.into(),
            pay10_salt: PAY10_SALT.into(),
            pay10_key: EncryptionKey::new(PAY10_KEY).expect("demo key is 32 bytes"),
            ipn_url: None,
            slow_response: Duration::from_secs(20),
            pending_delay: Duration::from_secs(1),
            state_file: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RefundState {
    Pending,
    Success,
    /// Only by an edit of the books (`PATCH /sandbox/{provider}/refunds/{id}`).
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SbRefund {
    provider_refund_id: String,
    refund_reference: Option<String>,
    amount: Minor,
    state: RefundState,
    /// When it was made (Unix ms; 0 in books saved before this was kept).
    #[serde(default)]
    created_ms: i64,
}

/// Now, in Unix milliseconds (the sandbox's own clock).
fn now_ms() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SbSale {
    transaction_no: String,
    reference: String,
    amount: Minor,
    currency: Currency,
    settle_currency: Currency,
    status: String,
    refunds: Vec<SbRefund>,
}

impl SbSale {
    fn refunded(&self) -> Minor {
        Minor::new(
            self.refunds
                .iter()
                .filter(|r| r.state != RefundState::Failed)
                .map(|r| r.amount.get())
                .sum(),
        )
        .unwrap_or_default()
    }
}

#[derive(Default)]
struct Book {
    sales: HashMap<String, SbSale>,
    by_reference: HashMap<String, String>,
    /// A refund's provider id -> its sale's transaction number.
    refund_sale: HashMap<String, String>,
    refunds_applied: u64,
}

impl Book {
    fn insert(&mut self, sale: SbSale) {
        self.by_reference
            .insert(sale.reference.clone(), sale.transaction_no.clone());
        self.sales.insert(sale.transaction_no.clone(), sale);
    }

    fn insert_with_refunds(&mut self, sale: SbSale) {
        for r in &sale.refunds {
            self.refund_sale
                .insert(r.provider_refund_id.clone(), sale.transaction_no.clone());
        }
        self.insert(sale);
    }

    fn find(&self, transaction_no: Option<&str>, reference: Option<&str>) -> Option<&SbSale> {
        match (transaction_no, reference) {
            (Some(t), _) => self.sales.get(t),
            (None, Some(r)) => self.by_reference.get(r).and_then(|t| self.sales.get(t)),
            _ => None,
        }
    }
}

#[derive(Default)]
struct Books {
    pockyt: Book,
    pay10: Book,
}

/// A running sandbox: its configuration, its books, and the client it sends IPNs with.
#[derive(Clone)]
pub struct Sandbox {
    config: Arc<SandboxConfig>,
    books: Arc<Mutex<Books>>,
    http: reqwest::Client,
    /// Wakes the writer of `state_file` after a change.
    changed: Arc<tokio::sync::Notify>,
}

/// What a sandbox keeps across restarts.
#[derive(Serialize, Deserialize)]
struct SavedBooks {
    pockyt: Vec<SbSale>,
    pay10: Vec<SbSale>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SandboxStats {
    pub pockyt_refunds_applied: u64,
    pub pay10_refunds_applied: u64,
}

impl Sandbox {
    pub fn new(config: SandboxConfig) -> Self {
        let sb = Self {
            config: Arc::new(config),
            books: Arc::default(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("client builds"),
            changed: Arc::default(),
        };
        if !sb.load() {
            sb.seed();
        }
        if let Some(path) = sb.config.state_file.clone() {
            tokio::spawn(save_on_change(sb.clone(), path));
            sb.mark_changed();
        }
        sb
    }

    /// Loads the saved books, if there are any; false if it started empty.
    fn load(&self) -> bool {
        let Some(path) = &self.config.state_file else {
            return false;
        };
        let Ok(text) = std::fs::read(path) else {
            return false;
        };
        match serde_json::from_slice::<SavedBooks>(&text) {
            Ok(saved) => {
                let mut b = self.lock();
                for s in saved.pockyt {
                    b.pockyt.insert_with_refunds(s);
                }
                for s in saved.pay10 {
                    b.pay10.insert_with_refunds(s);
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "sandbox state unreadable; starting afresh");
                false
            }
        }
    }

    /// Records that the books changed (saved shortly after, when kept in a file).
    fn mark_changed(&self) {
        if self.config.state_file.is_some() {
            self.changed.notify_one();
        }
    }

    fn seed(&self) {
        let usd = Currency::from_code("USD").expect("USD");
        let aed = Currency::from_code("AED").expect("AED");
        let mut b = self.lock();
        b.pockyt.insert(SbSale {
            transaction_no: demo_sales::POCKYT_TRANSACTION_NO.into(),
            reference: demo_sales::POCKYT_REFERENCE.into(),
            amount: Minor::new(10_000).unwrap_or_default(),
            currency: usd,
            settle_currency: usd,
            status: "success".into(),
            refunds: vec![],
        });
        b.pockyt.insert(SbSale {
            transaction_no: demo_sales::POCKYT_PENDING_TRANSACTION_NO.into(),
            reference: "test20200101300".into(),
            amount: Minor::new(500).unwrap_or_default(),
            currency: usd,
            settle_currency: usd,
            status: "pending".into(),
            refunds: vec![],
        });
        b.pay10.insert(SbSale {
            transaction_no: demo_sales::PAY10_PG_REF_NUM.into(),
            reference: demo_sales::PAY10_ORDER_ID.into(),
            amount: Minor::new(10_000).unwrap_or_default(),
            currency: aed,
            settle_currency: aed,
            status: "Captured".into(),
            refunds: vec![],
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Books> {
        // A panic while holding the lock cannot leave the books half-written:
        // every mutation is a single push or field store.
        self.books.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn stats(&self) -> SandboxStats {
        let b = self.lock();
        SandboxStats {
            pockyt_refunds_applied: b.pockyt.refunds_applied,
            pay10_refunds_applied: b.pay10.refunds_applied,
        }
    }

    /// Minor units refunded so far on a sale (pending and successful refunds).
    pub fn refunded_total(&self, provider: &str, transaction_no: &str) -> Option<i64> {
        let b = self.lock();
        let book = if provider == "pay10" {
            &b.pay10
        } else {
            &b.pockyt
        };
        book.sales.get(transaction_no).map(|s| s.refunded().get())
    }

    /// The refunds applied on a sale: (merchant refund reference, minor
    /// units, settled successfully yet).
    pub fn refunds_of(
        &self,
        provider: &str,
        transaction_no: &str,
    ) -> Vec<(Option<String>, i64, bool)> {
        let b = self.lock();
        let book = if provider == "pay10" {
            &b.pay10
        } else {
            &b.pockyt
        };
        book.sales
            .get(transaction_no)
            .map(|s| {
                s.refunds
                    .iter()
                    .map(|r| {
                        (
                            r.refund_reference.clone(),
                            r.amount.get(),
                            r.state == RefundState::Success,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// What a standalone sandbox prints at start: each simulated provider's
    /// `base_url` and `[[accounts]]` lines ready to paste into a gateway config.
    pub fn startup_text(&self, base: &str) -> String {
        let c = &self.config;
        let base = base.trim_end_matches('/');
        format!(
            "sandbox listening on {base}\n\
             \x20 Pockyt base_url: {base}/sandbox/pockyt\n\
             \x20 Pay10 base_url:  {base}/sandbox/pay10\n\
             \x20 create sales:    POST {base}/sandbox/pockyt/payments, POST {base}/sandbox/pay10/payments\n\n\
             # [[accounts]] for a gateway config (the sandbox's published test credentials):\n\
             [[accounts]]\n\
             name = \"pockyt-sandbox\"\n\
             provider = \"pockyt\"\n\
             environment = \"sandbox\"\n\
             base_url = \"{base}/sandbox/pockyt\"\n\
             merchant_no = \"{}\"\n\
             store_no = \"{}\"\n\
             token = \"{}\"\n\n\
             [[accounts]]\n\
             name = \"pay10-sandbox\"\n\
             provider = \"pay10\"\n\
             environment = \"sandbox\"\n\
             base_url = \"{base}/sandbox/pay10\"\n\
             pay_id = \"{}\"\n\
             salt = \"{}\"\n\
             encryption_key = \"{}\"\n",
            c.pockyt_merchant_no,
            c.pockyt_store_no,
            c.pockyt_token,
            c.pay10_pay_id,
            c.pay10_salt,
            demo_credentials::PAY10_KEY,
        )
    }

    /// Routes under `/sandbox/pockyt` and `/sandbox/pay10`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/sandbox/stats", get(stats))
            .route(
                "/sandbox/{provider}/payments/{id}",
                get(show_payment).patch(edit_payment),
            )
            .route(
                "/sandbox/{provider}/payments/{id}/refunds",
                axum::routing::post(dashboard_refund),
            )
            .route(
                "/sandbox/{provider}/refunds/{id}",
                axum::routing::delete(forget_refund).patch(edit_refund),
            )
            .merge(pockyt::routes())
            .merge(pay10::routes())
            .with_state(self.clone())
    }

    /// Sends an IPN body to the gateway, retrying a few times like the providers do.
    fn send_ipn(&self, path: &'static str, body: IpnBody) {
        let Some(base) = self.config.ipn_url.clone() else {
            return;
        };
        let http = self.http.clone();
        tokio::spawn(async move {
            let url = format!("{}{}", base.trim_end_matches('/'), path);
            for attempt in 0..4u32 {
                let req = match &body {
                    IpnBody::Form(s) => http
                        .post(&url)
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(s.clone()),
                    IpnBody::Json(v) => http.post(&url).header("user-agent", "BPGate").json(v),
                };
                match req.send().await {
                    Ok(r) if r.status().is_success() => return,
                    Ok(r) => {
                        tracing::debug!(status = %r.status(), attempt, "sandbox IPN not accepted")
                    }
                    Err(e) => tracing::debug!(error = %e, attempt, "sandbox IPN not delivered"),
                }
                tokio::time::sleep(Duration::from_millis(500 * 2u64.pow(attempt))).await;
            }
        });
    }
}

impl Book {
    /// Marks a pending refund successful; returns the sale and refund for the IPN.
    fn settle(
        &mut self,
        transaction_no: &str,
        provider_refund_id: &str,
    ) -> Option<(SbSale, SbRefund)> {
        let sale = self.sales.get_mut(transaction_no)?;
        let idx = sale
            .refunds
            .iter()
            .position(|r| r.provider_refund_id == provider_refund_id)?;
        sale.refunds[idx].state = RefundState::Success;
        Some((sale.clone(), sale.refunds[idx].clone()))
    }
}

enum IpnBody {
    Form(String),
    Json(serde_json::Value),
}

/// The real providers disagree with each other (and with their own documents)
/// on several details; the sandbox picks one of the variants at random per
/// message, so every test run exercises them all over time.
fn coin() -> bool {
    rand::thread_rng().gen_bool(0.5)
}

fn random_digits(n: usize) -> String {
    let mut rng = rand::thread_rng();
    let mut s = String::with_capacity(n);
    s.push(char::from(b'1' + rng.gen_range(0..9u8)));
    for _ in 1..n {
        s.push(char::from(b'0' + rng.gen_range(0..10u8)));
    }
    s
}

/// The sandbox's magic cases, by the last two minor digits of a refund amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Magic {
    Normal,
    SlowAnswer,
    Unavailable,
    Decline,
    PendingThenSuccess,
    LateApply,
}

fn magic(amount: Minor) -> Magic {
    match amount.last_two_digits() {
        91 => Magic::SlowAnswer,
        92 => Magic::Unavailable,
        93 => Magic::Decline,
        94 => Magic::PendingThenSuccess,
        95 => Magic::LateApply,
        _ => Magic::Normal,
    }
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "<html><body><h1>503 Service Unavailable</h1></body></html>",
    )
        .into_response()
}

fn bad_request(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

/// A request for sales in bulk (load tests need thousands): `count` sales
/// of `amount` (decimal) in `currency`, read and checked.
struct BulkSales {
    count: usize,
    amount: Minor,
    currency: Currency,
}

impl BulkSales {
    /// Reads `{"count":1000,"amount":"1.00","currency":"USD"}`; otherwise
    /// what is wrong, for a 400 (at most 100,000 sales).
    fn read(body: &[u8]) -> Result<Self, &'static str> {
        #[derive(Deserialize)]
        struct Body {
            count: usize,
            amount: String,
            currency: String,
        }
        let Ok(p) = serde_json::from_slice::<Body>(body) else {
            return Err("body must be {\"count\":1000,\"amount\":\"1.00\",\"currency\":\"USD\"}");
        };
        let (Ok(currency), true) = (Currency::from_code(&p.currency), p.count <= 100_000) else {
            return Err("unknown currency, or count over 100000");
        };
        let Ok(amount) = currency.parse_amount(&p.amount) else {
            return Err("amount must be a positive decimal string in the currency's minor digits");
        };
        Ok(BulkSales {
            count: p.count,
            amount,
            currency,
        })
    }
}

async fn stats(State(sb): State<Sandbox>) -> Json<SandboxStats> {
    Json(sb.stats())
}

async fn show_payment(
    State(sb): State<Sandbox>,
    Path((provider, id)): Path<(String, String)>,
) -> Response {
    let b = sb.lock();
    let book = match provider.as_str() {
        "pockyt" => &b.pockyt,
        "pay10" => &b.pay10,
        _ => return (StatusCode::NOT_FOUND, "unknown provider").into_response(),
    };
    // Either of a sale's ids finds it (transactionNo / PG_REF_NUM, or reference / ORDER_ID).
    let sale = book
        .sales
        .get(&id)
        .or_else(|| book.by_reference.get(&id).and_then(|t| book.sales.get(t)));
    match sale {
        Some(sale) => Json(serde_json::json!({
            "transactionNo": sale.transaction_no,
            "reference": sale.reference,
            "amount": sale.currency.format(sale.amount),
            "currency": sale.currency,
            "status": sale.status,
            "refunded": sale.currency.format(sale.refunded()),
            "refunds": sale.refunds,
        }))
        .into_response(),
        None => (StatusCode::NOT_FOUND, "no such payment").into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PaymentEdit {
    status: String,
}

/// Changes a sale's status in the provider's books (a sale reversed or
/// charged back after it was captured).
async fn edit_payment(
    State(sb): State<Sandbox>,
    Path((provider, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(edit) = serde_json::from_slice::<PaymentEdit>(&body) else {
        return bad_request("body must be {\"status\":\"...\"}");
    };
    let mut b = sb.lock();
    let book = match provider.as_str() {
        "pockyt" => &mut b.pockyt,
        "pay10" => &mut b.pay10,
        _ => return (StatusCode::NOT_FOUND, "unknown provider").into_response(),
    };
    let key = book
        .sales
        .get(&id)
        .map(|s| s.transaction_no.clone())
        .or_else(|| book.by_reference.get(&id).cloned());
    let Some(sale) = key.and_then(|k| book.sales.get_mut(&k)) else {
        return (StatusCode::NOT_FOUND, "no such payment").into_response();
    };
    sale.status = edit.status;
    let out =
        Json(serde_json::json!({"transactionNo": sale.transaction_no, "status": sale.status}));
    drop(b);
    sb.mark_changed();
    out.into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DashboardRefund {
    amount: String,
}

/// A refund made "in the provider's dashboard": applied on the sale with no
/// gateway involved (no merchant reference of ours, no IPN to the gateway).
async fn dashboard_refund(
    State(sb): State<Sandbox>,
    Path((provider, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(req) = serde_json::from_slice::<DashboardRefund>(&body) else {
        return bad_request("body must be {\"amount\":\"1.00\"}");
    };
    let mut b = sb.lock();
    let book = match provider.as_str() {
        "pockyt" => &mut b.pockyt,
        "pay10" => &mut b.pay10,
        _ => return (StatusCode::NOT_FOUND, "unknown provider").into_response(),
    };
    let Some(key) = book
        .sales
        .get(&id)
        .map(|s| s.transaction_no.clone())
        .or_else(|| book.by_reference.get(&id).cloned())
    else {
        return (StatusCode::NOT_FOUND, "no such payment").into_response();
    };
    let sale = book.sales.get_mut(&key).expect("found above");
    let Ok(amount) = sale.currency.parse_amount(&req.amount) else {
        return bad_request("amount must be a positive decimal in the sale's currency digits");
    };
    if sale.refunded().get() + amount.get() > sale.amount.get() {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            "the refund exceeds what is left on the sale",
        )
            .into_response();
    }
    let refund = SbRefund {
        provider_refund_id: random_digits(if provider == "pay10" { 16 } else { 18 }),
        refund_reference: Some(format!("DASH{}", random_digits(12))),
        amount,
        state: RefundState::Success,
        created_ms: now_ms(),
    };
    sale.refunds.push(refund.clone());
    let out = serde_json::json!({
        "transactionNo": sale.transaction_no,
        "refundTransactionNo": refund.provider_refund_id,
        "refundReference": refund.refund_reference,
        "amount": sale.currency.format(amount),
        "currency": sale.currency,
        "status": "success",
    });
    book.refund_sale
        .insert(refund.provider_refund_id.clone(), key.clone());
    book.refunds_applied += 1;
    drop(b);
    sb.mark_changed();
    (StatusCode::CREATED, Json(out)).into_response()
}

/// Forgets a refund (by the provider's id or the merchant's reference), as
/// if the provider had never made it: the report's `only_at_gateway` case.
async fn forget_refund(
    State(sb): State<Sandbox>,
    Path((provider, id)): Path<(String, String)>,
) -> Response {
    let mut b = sb.lock();
    let book = match provider.as_str() {
        "pockyt" => &mut b.pockyt,
        "pay10" => &mut b.pay10,
        _ => return (StatusCode::NOT_FOUND, "unknown provider").into_response(),
    };
    let mut gone = false;
    for sale in book.sales.values_mut() {
        let before = sale.refunds.len();
        sale.refunds.retain(|r| {
            r.provider_refund_id != id && r.refund_reference.as_deref() != Some(id.as_str())
        });
        gone |= sale.refunds.len() != before;
    }
    book.refund_sale.retain(|k, _| k != &id);
    drop(b);
    if gone {
        sb.mark_changed();
        StatusCode::NO_CONTENT.into_response()
    } else {
        (StatusCode::NOT_FOUND, "no such refund").into_response()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundEdit {
    amount: Option<String>,
    status: Option<RefundState>,
}

/// Edits a refund in the provider's books (its amount, its status: what a
/// provider that got it wrong would list), so a reconciliation report's
/// `amount_mismatch` and `status_mismatch` can be shown.
async fn edit_refund(
    State(sb): State<Sandbox>,
    Path((provider, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(edit) = serde_json::from_slice::<RefundEdit>(&body) else {
        return bad_request(
            "body must be {\"amount\":\"1.50\"} and/or {\"status\":\"success|pending|failed\"}",
        );
    };
    let mut b = sb.lock();
    let book = match provider.as_str() {
        "pockyt" => &mut b.pockyt,
        "pay10" => &mut b.pay10,
        _ => return (StatusCode::NOT_FOUND, "unknown provider").into_response(),
    };
    for sale in book.sales.values_mut() {
        let currency = sale.currency;
        if let Some(r) = sale.refunds.iter_mut().find(|r| {
            r.provider_refund_id == id || r.refund_reference.as_deref() == Some(id.as_str())
        }) {
            if let Some(a) = &edit.amount {
                let Ok(a) = currency.parse_amount(a) else {
                    return bad_request(
                        "amount must be a positive decimal in the sale's currency digits",
                    );
                };
                r.amount = a;
            }
            if let Some(s) = edit.status {
                r.state = s;
            }
            let out = Json(serde_json::json!({
                "refundTransactionNo": r.provider_refund_id,
                "amount": currency.format(r.amount),
                "status": r.state,
            }));
            drop(b);
            sb.mark_changed();
            return out.into_response();
        }
    }
    (StatusCode::NOT_FOUND, "no such refund").into_response()
}

/// Writes the books to `path` after each burst of changes (write to a
/// temporary file, then rename, so a crash never leaves half a file).
async fn save_on_change(sb: Sandbox, path: std::path::PathBuf) {
    loop {
        sb.changed.notified().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let path = path.clone();
        let sb2 = sb.clone();
        let written = tokio::task::spawn_blocking(move || sb2.write_state(&path)).await;
        if let Ok(Err(e)) = written {
            tracing::warn!(error = %e, "sandbox state could not be saved");
        }
    }
}

impl Sandbox {
    /// Writes the books to `path` (whole, by a rename: never half a file).
    /// Serialised: two writers never interleave their renames.
    fn write_state(&self, path: &std::path::Path) -> std::io::Result<()> {
        static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = WRITING.lock().unwrap_or_else(|e| e.into_inner());
        let bytes = {
            let b = self.lock();
            serde_json::to_vec(&SavedBooks {
                pockyt: b.pockyt.sales.values().cloned().collect(),
                pay10: b.pay10.sales.values().cloned().collect(),
            })
        }
        .map_err(std::io::Error::other)?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)
    }

    /// Saves the books now, if they are kept in a file: called at shutdown,
    /// so that whatever the sandbox acknowledged is on disk before the
    /// process exits.
    pub async fn flush(&self) {
        let Some(path) = self.config.state_file.clone() else {
            return;
        };
        let sb = self.clone();
        match tokio::task::spawn_blocking(move || sb.write_state(&path)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "sandbox state could not be saved at shutdown")
            }
            Err(e) => tracing::error!(error = %e, "sandbox state could not be saved at shutdown"),
        }
    }
}

/// Serves the sandbox alone (`refund-gateway sandbox`), with `/healthz`.
pub fn standalone_router(sb: &Sandbox) -> Router {
    sb.router().route("/healthz", get(|| async { "ok" }))
}
