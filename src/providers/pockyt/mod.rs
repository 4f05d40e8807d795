//! Pockyt (formerly Yuansfer) adapter: MD5-signed JSON over HTTPS.

pub mod crypto;
pub mod rules;
pub mod wire;

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::pairs::PairError;
use super::{
    credentials_digest, join_url, BookedRefund, Connector, Credentials, ListedRefund, Outcome,
    ProviderAnswer, ProviderKind, RefundCall, SaleInfo, SaleLookup, StatusQuery, WebhookError,
    WebhookEvent,
};
use wire::{Envelope, RefundResult, TranQueryResult, TransEntry, TransList, RET_SUCCESS};

pub const TRAN_QUERY_PATH: &str = "/app-data-search/v3/tran-query";
pub const REFUND_PATH: &str = "/app-data-search/v3/refund";
pub const TRANS_LIST_PATH: &str = "/app-data-search/v3/trans-list";
/// The longest range one trans-list call may ask for, in calendar days
/// (the JS SDK: "endDate cannot be more than 15 days after startDate").
pub const TRANS_LIST_MAX_DAYS: i64 = 15;

/// A Pockyt merchant account: `merchantNo`, `storeNo` and the API token.
#[derive(Clone)]
pub struct PockytAccount {
    pub base_url: String,
    pub merchant_no: String,
    pub store_no: String,
    pub token: SecretString,
}

impl std::fmt::Debug for PockytAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PockytAccount")
            .field("base_url", &self.base_url)
            .field("merchant_no", &self.merchant_no)
            .field("store_no", &self.store_no)
            .field("token", &"[redacted]")
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct PockytClient {
    http: reqwest::Client,
    account: PockytAccount,
}

/// A transport-level reading of one call, before Pockyt's codes are looked at.
enum Reply<T> {
    /// Parsed envelope with the HTTP status.
    Parsed(u16, Envelope<T>),
    /// No trustworthy answer: the call may or may not have taken effect.
    Unknown(String),
}

impl PockytClient {
    pub fn new(http: reqwest::Client, account: PockytAccount) -> Self {
        Self { http, account }
    }

    pub fn account(&self) -> &PockytAccount {
        &self.account
    }

    /// Adds `merchantNo`, `storeNo` and `verifySign` to `fields`; refused
    /// (nothing to send) when a value cannot go into the signing string.
    fn signed(&self, fields: Vec<(&'static str, String)>) -> Result<Map<String, Value>, PairError> {
        let mut all: Vec<(&str, String)> = vec![
            ("merchantNo", self.account.merchant_no.clone()),
            ("storeNo", self.account.store_no.clone()),
        ];
        all.extend(fields.into_iter().filter(|(_, v)| !v.is_empty()));
        let sign = crypto::sign(
            all.iter().map(|(k, v)| (*k, v.as_str())),
            self.account.token.expose_secret(),
        )?;
        let mut map: Map<String, Value> = all
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::String(v)))
            .collect();
        map.insert(crypto::SIGN_FIELD.into(), Value::String(sign));
        Ok(map)
    }

    async fn post<T: DeserializeOwned>(&self, path: &str, body: Map<String, Value>) -> Reply<T> {
        self.post_reading::<Envelope<T>>(path, body, super::MAX_PROVIDER_RESPONSE_BYTES)
            .await
            .map_or_else(Reply::Unknown, |(status, env)| match env.ret_code {
                Some(_) => Reply::Parsed(status, env),
                None => Reply::Unknown(format!(
                    "pockyt answered HTTP {status} with an unreadable body"
                )),
            })
    }

    /// Sends `body` and reads an answer of at most `max` bytes as `T`.
    async fn post_reading<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Map<String, Value>,
        max: usize,
    ) -> Result<(u16, T), String> {
        let url = join_url(&self.account.base_url, path);
        let resp = match self.http.post(&url).json(&body).send().await {
            Ok(r) => r,
            Err(e) => {
                let kind = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "unreachable"
                } else {
                    "transport error"
                };
                tracing::warn!(error = %e, kind, %url, "pockyt call failed");
                return Err(format!("pockyt {kind}"));
            }
        };
        let status = resp.status().as_u16();
        let bytes = match super::read_at_most(resp, max).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, status, %url, "pockyt body could not be read");
                return Err(format!("pockyt response unreadable: {e}"));
            }
        };
        if status >= 500 {
            tracing::warn!(status, %url, "pockyt answered with a server error");
            return Err(format!("pockyt answered HTTP {status}"));
        }
        match serde_json::from_slice::<T>(&bytes) {
            Ok(v) => Ok((status, v)),
            Err(_) => {
                tracing::warn!(
                    status,
                    %url,
                    len = bytes.len(),
                    "pockyt response is not a Pockyt envelope (is base_url right?)"
                );
                Err(format!(
                    "pockyt answered HTTP {status} with an unreadable body"
                ))
            }
        }
    }

    /// The refunds of the transaction list for `from..=to` (at most
    /// [`TRANS_LIST_MAX_DAYS`] a call; a longer range is asked in parts).
    #[tracing::instrument(skip_all, fields(provider = "pockyt", op = "trans_list"))]
    pub async fn trans_list(
        &self,
        from: jiff::civil::Date,
        to: jiff::civil::Date,
    ) -> Result<Vec<BookedRefund>, String> {
        let mut out = Vec::new();
        let mut start = from;
        while start <= to {
            let end = start
                .checked_add(jiff::Span::new().days(TRANS_LIST_MAX_DAYS - 1))
                .map_err(|e| e.to_string())?
                .min(to);
            let ymd = |d: jiff::civil::Date| d.strftime("%Y%m%d").to_string();
            let body = self
                .signed(vec![("startDate", ymd(start)), ("endDate", ymd(end))])
                .map_err(|e| format!("the list request could not be built ({e})"))?;
            let (_, list) = self
                .post_reading::<TransList>(TRANS_LIST_PATH, body, super::MAX_PROVIDER_LIST_BYTES)
                .await?;
            match list.ret_code.as_deref() {
                Some(RET_SUCCESS) => {}
                code => {
                    return Err(format!(
                        "pockyt trans-list refused: {} {}",
                        code.unwrap_or(""),
                        list.ret_msg.as_deref().unwrap_or("").trim()
                    ))
                }
            }
            out.extend(list.entries().into_iter().filter_map(booked_refund));
            start = end
                .checked_add(jiff::Span::new().days(1))
                .map_err(|e| e.to_string())?;
        }
        Ok(out)
    }

    #[tracing::instrument(skip_all, fields(provider = "pockyt", op = "tran_query"))]
    pub async fn tran_query(
        &self,
        transaction_no: Option<&str>,
        reference: Option<&str>,
    ) -> Result<Envelope<TranQueryResult>, String> {
        // Exactly one of the two identifiers is sent; transactionNo wins.
        let field = match (transaction_no, reference) {
            (Some(t), _) => ("transactionNo", t.to_string()),
            (None, Some(r)) => ("reference", r.to_string()),
            (None, None) => return Err("no transactionNo or reference to query".into()),
        };
        let body = self.signed(vec![field]).map_err(|e| {
            tracing::error!(error = %e, "pockyt tran-query refused before sending");
            format!("the query could not be built ({e}); nothing was asked")
        })?;
        match self.post::<TranQueryResult>(TRAN_QUERY_PATH, body).await {
            Reply::Parsed(_, env) => Ok(env),
            Reply::Unknown(m) => Err(m),
        }
    }

    pub async fn lookup_sale(
        &self,
        transaction_no: Option<&str>,
        reference: Option<&str>,
    ) -> SaleLookup {
        let env = match self.tran_query(transaction_no, reference).await {
            Ok(env) => env,
            Err(m) => return SaleLookup::Unavailable(m),
        };
        match (env.ret_code.as_deref(), env.result) {
            (Some(RET_SUCCESS), Some(r)) => {
                match (r.transaction_no, r.amount, r.currency, r.status) {
                    (Some(transaction_no), Some(amount), Some(currency), Some(status)) => {
                        let refunded = r
                            .refund_info
                            .into_vec()
                            .into_iter()
                            .filter(|i| {
                                i.status.as_deref().map(status_outcome) != Some(Outcome::Failed)
                            })
                            .filter_map(|i| {
                                Some(ListedRefund {
                                    amount: i.refund_amount?,
                                    reference: i.refund_reference,
                                })
                            })
                            .collect();
                        SaleLookup::Found(SaleInfo {
                            transaction_no,
                            reference: r.reference,
                            amount,
                            currency,
                            settle_currency: r.settle_currency.filter(|c| !c.is_empty()),
                            status,
                            refunded,
                        })
                    }
                    _ => SaleLookup::Unavailable("pockyt tran-query result lacks fields".into()),
                }
            }
            (Some("000021"), _) | (Some(RET_SUCCESS), None) => SaleLookup::NotFound,
            (code, _) => SaleLookup::Unavailable(format!(
                "pockyt tran-query refused: {} {}",
                code.unwrap_or(""),
                env.ret_msg.unwrap_or_default().trim()
            )),
        }
    }

    #[tracing::instrument(skip_all, fields(provider = "pockyt", op = "refund", refund_id = %call.refund_id))]
    pub async fn refund(&self, call: &RefundCall) -> ProviderAnswer {
        let mut fields = vec![
            ("refundAmount", call.currency.format(call.amount)),
            ("currency", call.currency.code().to_string()),
            (
                "settleCurrency",
                call.settle_currency
                    .map(|c| c.code())
                    .unwrap_or("USD")
                    .to_string(),
            ),
            ("refundReference", call.provider_reference.clone()),
        ];
        match (&call.transaction_no, &call.reference) {
            (Some(t), _) => fields.push(("transactionNo", t.clone())),
            (None, Some(r)) => fields.push(("reference", r.clone())),
            (None, None) => return ProviderAnswer::unknown("no original transaction to refund"),
        }
        let body = match self.signed(fields) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "pockyt refund refused before sending");
                return ProviderAnswer::not_sent(e);
            }
        };
        let answer = match self.post::<RefundResult>(REFUND_PATH, body).await {
            Reply::Parsed(http, env) => map_refund_reply(http, env),
            Reply::Unknown(m) => ProviderAnswer::unknown(m),
        };
        tracing::info!(outcome = ?answer.outcome, code = answer.provider_code.as_deref().unwrap_or(""), "pockyt refund answered");
        answer
    }

    /// Finds the refund among the original sale's `refundInfo`. An entry
    /// states no status in Pockyt's published shape, so being listed is not
    /// taken as success: the refund's own transaction (tran-query by its
    /// refund transaction id) says what it is.
    #[tracing::instrument(skip_all, fields(provider = "pockyt", op = "refund_status", refund_id = %q.refund_id))]
    pub async fn refund_status(&self, q: &StatusQuery) -> ProviderAnswer {
        let env = match self
            .tran_query(q.transaction_no.as_deref(), q.reference.as_deref())
            .await
        {
            Ok(env) => env,
            Err(m) => return ProviderAnswer::unknown(m),
        };
        let code = env.ret_code.clone();
        let Some(result) = env.result.filter(|_| code.as_deref() == Some(RET_SUCCESS)) else {
            return query_refused(code, env.ret_msg);
        };
        let found = result.refund_info.into_vec().into_iter().find(|r| {
            r.refund_reference.as_deref() == Some(q.provider_reference.as_str())
                || (q.provider_refund_id.is_some()
                    && r.refund_transaction_id == q.provider_refund_id)
        });
        let Some(info) = found else {
            return ProviderAnswer {
                outcome: Outcome::NotFound,
                provider_refund_id: None,
                provider_status: None,
                provider_code: code,
                message: Some("the sale lists no refund with this reference".into()),
            };
        };
        let listed = |status: String, outcome: Outcome, code: Option<String>| ProviderAnswer {
            outcome,
            provider_refund_id: info.refund_transaction_id.clone(),
            provider_status: Some(status),
            provider_code: code,
            message: None,
        };
        if let Some(status) = info.status.clone() {
            return listed(status.clone(), status_outcome(&status), code);
        }
        let Some(refund_tx) = info.refund_transaction_id.clone() else {
            // Listed, with neither a status nor an id to ask about: accepted by
            // the provider, outcome not stated.
            return listed("listed".into(), Outcome::Pending, code);
        };
        match self.tran_query(Some(&refund_tx), None).await {
            Ok(env) if env.ret_code.as_deref() == Some(RET_SUCCESS) => {
                match env.result.and_then(|r| r.status) {
                    Some(status) => listed(status.clone(), status_outcome(&status), env.ret_code),
                    None => listed("listed".into(), Outcome::Pending, env.ret_code),
                }
            }
            Ok(env) => {
                let mut a = query_refused(env.ret_code, env.ret_msg);
                a.provider_refund_id = Some(refund_tx);
                if a.outcome == Outcome::Unknown {
                    // The refund is listed on the sale: accepted, outcome not stated.
                    a.outcome = Outcome::Pending;
                }
                a
            }
            Err(m) => ProviderAnswer {
                provider_refund_id: Some(refund_tx),
                ..ProviderAnswer::unknown(m)
            },
        }
    }

    /// Parses a form-encoded IPN and checks its `verifySign`.
    pub fn verify_ipn(&self, body: &[u8]) -> Result<WebhookEvent, WebhookError> {
        parse_ipn(body, self.account.token.expose_secret())
    }
}

impl Credentials for PockytAccount {
    fn provider(&self) -> ProviderKind {
        ProviderKind::Pockyt
    }

    fn base_url(&self) -> &str {
        &self.base_url
    }

    fn connect(&self, http: reqwest::Client) -> std::sync::Arc<dyn Connector> {
        std::sync::Arc::new(PockytClient::new(http, self.clone()))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[async_trait::async_trait]
impl Connector for PockytClient {
    fn provider(&self) -> ProviderKind {
        ProviderKind::Pockyt
    }

    async fn lookup_sale(
        &self,
        transaction_no: Option<&str>,
        reference: Option<&str>,
    ) -> Option<SaleLookup> {
        Some(PockytClient::lookup_sale(self, transaction_no, reference).await)
    }

    async fn refund(&self, call: &RefundCall) -> ProviderAnswer {
        PockytClient::refund(self, call).await
    }

    async fn refund_status(&self, query: &StatusQuery) -> ProviderAnswer {
        PockytClient::refund_status(self, query).await
    }

    async fn booked_refunds(
        &self,
        from: jiff::civil::Date,
        to: jiff::civil::Date,
    ) -> Option<Result<Vec<BookedRefund>, String>> {
        Some(self.trans_list(from, to).await)
    }

    /// merchantNo, storeNo and token.
    fn webhook_credentials_digest(&self) -> [u8; 32] {
        let a = &self.account;
        credentials_digest(&[
            a.merchant_no.as_bytes(),
            a.store_no.as_bytes(),
            a.token.expose_secret().as_bytes(),
        ])
    }

    fn verify_webhook(&self, body: &[u8]) -> Result<WebhookEvent, WebhookError> {
        self.verify_ipn(body)
    }
}

/// A tran-query that did not succeed: our credentials or signature refused
/// (an operator must fix the account), or no answer to go on.
fn query_refused(code: Option<String>, message: Option<String>) -> ProviderAnswer {
    let outcome = match code.as_deref() {
        Some("000000" | "000010" | "000030") => Outcome::Misconfigured,
        _ => Outcome::Unknown,
    };
    if outcome == Outcome::Misconfigured {
        tracing::error!(
            code = code.as_deref().unwrap_or(""),
            message = message.as_deref().unwrap_or("").trim(),
            "pockyt refused the status query: check this account's merchantNo, storeNo and token"
        );
    }
    ProviderAnswer {
        outcome,
        provider_refund_id: None,
        provider_status: None,
        provider_code: code,
        message: message.map(|m| m.trim().to_string()),
    }
}

/// Parses and verifies a Pockyt IPN body with `token`.
///
/// Only what the signature covers is read. A repeated key is refused (with
/// empty values outside the signature, an appended `key=` would otherwise
/// replace a signed value). The body verifies either with its empty values
/// signed as `key=&` (kept then) or left out (then they were not signed, and
/// are dropped, so padding a body with empty keys changes nothing).
pub fn parse_ipn(body: &[u8], token: &str) -> Result<WebhookEvent, WebhookError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_bytes(body).map_err(|_| WebhookError::Malformed)?;
    if pairs.is_empty() {
        return Err(WebhookError::Malformed);
    }
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in pairs {
        if fields.insert(k, v).is_some() {
            return Err(WebhookError::Malformed);
        }
    }
    let view = || fields.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    if crypto::verify_with(view(), token, true) {
        // Every field, empty ones included, is signed.
    } else if crypto::verify_with(view(), token, false) {
        fields.retain(|_, v| !v.is_empty());
    } else {
        return Err(WebhookError::BadSignature);
    }
    let get = |k: &str| fields.get(k).filter(|v| !v.is_empty()).cloned();
    let is_refund = get("refundTransactionNo").is_some()
        || get("refundReference").is_some()
        || get("refundAmount").is_some();
    let status = get("status");
    Ok(WebhookEvent {
        provider: ProviderKind::Pockyt,
        transaction_no: get("transactionNo"),
        reference: get("reference"),
        provider_refund_id: get("refundTransactionNo"),
        provider_reference: get("refundReference"),
        // The refund's amount only: `amount` is the sale's. Without
        // `refundAmount` the event states no amount (the status is asked).
        amount: get("refundAmount"),
        outcome: status
            .as_deref()
            .map(status_outcome)
            .unwrap_or(Outcome::Unknown),
        provider_status: status,
        is_refund,
        fields,
    })
}

/// A trans-list entry as a booked refund; `None` for what is not a refund
/// (payments, voids).
fn booked_refund(e: TransEntry) -> Option<BookedRefund> {
    if !e
        .transaction_type
        .as_deref()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("refund"))
    {
        return None;
    }
    let currency = e.currency.as_deref().map(str::trim).map(str::to_string);
    // A refund transaction's own `amount` is the refund's; some lists may
    // sign it negative, or state it only as `refundAmount`.
    let amount_minor = [e.amount.as_deref(), e.refund_amount.as_deref()]
        .into_iter()
        .flatten()
        .filter_map(|a| {
            let c = crate::money::Currency::from_code(currency.as_deref()?).ok()?;
            c.parse_amount(a.trim().trim_start_matches('-')).ok()
        })
        .map(|m| m.get())
        .next();
    let created = e.create_time.as_deref().and_then(|t| {
        let t = t.trim();
        t.get(..10)
            .and_then(|d| d.parse::<jiff::civil::Date>().ok())
            .or_else(|| jiff::civil::Date::strptime("%Y%m%d", t.get(..8)?).ok())
    });
    let status = e.transaction_status.clone();
    Some(BookedRefund {
        sale_transaction_no: e.original_transaction_no,
        provider_refund_id: e.transaction_no,
        provider_reference: e.refund_reference.or(e.reference),
        amount_minor,
        currency,
        outcome: status
            .as_deref()
            .map(status_outcome)
            .unwrap_or(Outcome::Unknown),
        provider_status: status,
        created,
    })
}

/// Maps a Pockyt transaction/refund status word to an outcome.
pub fn status_outcome(status: &str) -> Outcome {
    match status.trim().to_ascii_lowercase().as_str() {
        "success" | "succeeded" => Outcome::Succeeded,
        "init" | "dealing" | "pending" | "processing" => Outcome::Pending,
        "failed" | "fail" | "closed" | "reversed" => Outcome::Failed,
        _ => Outcome::Unknown,
    }
}

fn map_refund_reply(http: u16, env: Envelope<RefundResult>) -> ProviderAnswer {
    let code = env.ret_code.unwrap_or_default();
    let message = env.ret_msg.map(|m| m.trim().to_string());
    let result = env.result.unwrap_or_default();
    let outcome = match code.as_str() {
        RET_SUCCESS => match result.status.as_deref() {
            Some(s) => match status_outcome(s) {
                // A success envelope with an unfamiliar status is settled by query.
                Outcome::Unknown => Outcome::Pending,
                o => o,
            },
            None => Outcome::Pending,
        },
        // A system error on HTTP 200 may hide an applied refund; on 4xx it was refused.
        "000000" if http < 400 => Outcome::Unknown,
        "000080" => Outcome::Unknown,
        _ => Outcome::Failed,
    };
    ProviderAnswer {
        outcome,
        provider_refund_id: result.refund_transaction_no,
        provider_status: result.status,
        provider_code: Some(code),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(s: &str) -> Envelope<RefundResult> {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn refund_replies_map_to_outcomes() {
        let ok = map_refund_reply(
            200,
            env(
                r#"{"result":{"status":"success","refundTransactionNo":"297553638302358781"},"ret_msg":"refund success ","ret_code":"000100"}"#,
            ),
        );
        assert_eq!(ok.outcome, Outcome::Succeeded);
        assert_eq!(ok.provider_refund_id.as_deref(), Some("297553638302358781"));
        assert_eq!(ok.message.as_deref(), Some("refund success"));
        let pending = map_refund_reply(
            200,
            env(r#"{"result":{"status":"pending"},"ret_code":"000100"}"#),
        );
        assert_eq!(pending.outcome, Outcome::Pending);
        let declined = map_refund_reply(
            200,
            env(r#"{"ret_code":"000040","ret_msg":"transaction status error"}"#),
        );
        assert_eq!(declined.outcome, Outcome::Failed);
        assert_eq!(declined.provider_code.as_deref(), Some("000040"));
        let bad_sign = map_refund_reply(
            400,
            env(r#"{"ret_code":"000000","retMsg":"data error : verifySign"}"#),
        );
        assert_eq!(bad_sign.outcome, Outcome::Failed);
        let sys = map_refund_reply(
            200,
            env(r#"{"ret_code":"000000","ret_msg":"system error"}"#),
        );
        assert_eq!(sys.outcome, Outcome::Unknown);
    }

    #[test]
    fn ipn_is_verified_and_read() {
        let token = "5cbfb079f15b150122261c8537086d77a";
        let body = "amount=0.01&currency=USD&reference=test1666247277861&settleCurrency=USD&status=success&time=20221020142817&transactionNo=305680500880311923&verifySign=435d01c5d5fa88cfe8168fbfbf732519";
        let ev = parse_ipn(body.as_bytes(), token).unwrap();
        assert_eq!(ev.outcome, Outcome::Succeeded);
        assert!(!ev.is_refund);
        assert_eq!(ev.transaction_no.as_deref(), Some("305680500880311923"));
        let forged = body.replace("amount=0.01", "amount=9.99");
        assert_eq!(
            parse_ipn(forged.as_bytes(), token),
            Err(WebhookError::BadSignature)
        );
        let unsigned = "amount=0.01&status=success";
        assert_eq!(
            parse_ipn(unsigned.as_bytes(), token),
            Err(WebhookError::BadSignature)
        );
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = parse_ipn(&bytes, "t");
            let _ = serde_json::from_slice::<Envelope<TranQueryResult>>(&bytes);
            let _ = serde_json::from_slice::<Envelope<RefundResult>>(&bytes);
        }
    }
}
