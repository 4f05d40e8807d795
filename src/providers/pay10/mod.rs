//! Pay10 adapter: AES-256-CBC encrypted refunds, SHA-256 hashed status queries.

pub mod crypto;
pub mod rules;
pub mod wire;

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};

use super::{
    credentials_digest, join_url, BookedRefund, Connector, Credentials, Outcome, ProviderAnswer,
    ProviderKind, RefundCall, SaleInfo, SaleLookup, StatusQuery, WebhookError, WebhookEvent,
};
use crate::money::{Currency, Minor};
use crypto::EncryptionKey;
use wire::{EncEnvelope, RequeryRequest, StatusEnquiry};

pub const REFUND_PATH: &str = "/pgws/merchant/refund";
pub const REQUERY_PATH: &str = "/pgws/refund/requery";
pub const ENQUIRY_PATH: &str = "/pgws/transact";

/// A Pay10 merchant account: `PAY_ID`, the hash salt and the encryption key.
#[derive(Clone)]
pub struct Pay10Account {
    pub base_url: String,
    pub pay_id: String,
    pub salt: SecretString,
    pub key: EncryptionKey,
}

impl std::fmt::Debug for Pay10Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pay10Account")
            .field("base_url", &self.base_url)
            .field("pay_id", &self.pay_id)
            .field("salt", &"[redacted]")
            .field("key", &"[redacted]")
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct Pay10Client {
    http: reqwest::Client,
    account: Pay10Account,
}

/// Which call an answer belongs to: a status query's 300 means "no such refund",
/// and its hash/PAY_ID errors say nothing about the refund itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Refund,
    Status,
}

impl Pay10Client {
    pub fn new(http: reqwest::Client, account: Pay10Account) -> Self {
        Self { http, account }
    }

    pub fn account(&self) -> &Pay10Account {
        &self.account
    }

    async fn post(&self, path: &str, body: &impl serde::Serialize) -> Result<Vec<u8>, String> {
        let url = join_url(&self.account.base_url, path);
        let resp = self.http.post(&url).json(body).send().await.map_err(|e| {
            let kind = if e.is_timeout() {
                "timeout"
            } else if e.is_connect() {
                "unreachable"
            } else {
                "transport error"
            };
            tracing::warn!(error = %e, kind, %url, "pay10 call failed");
            format!("pay10 {kind}")
        })?;
        let status = resp.status().as_u16();
        let bytes = super::read_capped(resp).await.map_err(|e| {
            tracing::warn!(error = %e, status, %url, "pay10 body could not be read");
            format!("pay10 response unreadable: {e}")
        })?;
        if status >= 500 {
            tracing::warn!(status, %url, "pay10 answered with a server error");
            return Err(format!("pay10 answered HTTP {status}"));
        }
        if status >= 400 {
            tracing::warn!(status, %url, "pay10 answered with a client error (is base_url right?)");
        }
        Ok(bytes)
    }

    #[tracing::instrument(skip_all, fields(provider = "pay10", op = "refund", refund_id = %call.refund_id))]
    pub async fn refund(&self, call: &RefundCall) -> ProviderAnswer {
        let (Some(pg_ref), Some(order_id)) = (&call.transaction_no, &call.reference) else {
            return ProviderAnswer::unknown("pay10 needs PG_REF_NUM and ORDER_ID");
        };
        // AMOUNT is 3 to 12 digits of minor units: Pay10 writes 0.50 as "050"
        // and refuses shorter values.
        let Some(amount) = wire_amount(call.amount.get()) else {
            return ProviderAnswer {
                outcome: Outcome::Failed,
                provider_refund_id: None,
                provider_status: None,
                provider_code: None,
                message: Some(
                    "the amount does not fit Pay10's 12-digit AMOUNT; nothing was sent".into(),
                ),
            };
        };
        let currency = call.currency.numeric();
        let plaintext = match crypto::encode_pairs([
            ("PAY_ID", self.account.pay_id.as_str()),
            ("ORDER_ID", order_id.as_str()),
            ("AMOUNT", amount.as_str()),
            ("CURRENCY_CODE", currency.as_str()),
            ("TXNTYPE", "REFUND"),
            ("PG_REF_NUM", pg_ref.as_str()),
            ("REFUND_FLAG", "R"),
            ("REFUND_ORDER_ID", call.provider_reference.as_str()),
        ]) {
            Ok(text) => text,
            Err(e) => {
                tracing::error!(error = %e, "pay10 refund refused before sending");
                return ProviderAnswer::not_sent(e);
            }
        };
        let body = EncEnvelope {
            pay_id: self.account.pay_id.clone(),
            encdata: self.account.key.encrypt(&plaintext),
        };
        let answer = match self.post(REFUND_PATH, &body).await {
            Ok(bytes) => self.read_refund_reply(&bytes),
            Err(m) => ProviderAnswer::unknown(m),
        };
        tracing::info!(outcome = ?answer.outcome, code = answer.provider_code.as_deref().unwrap_or(""), "pay10 refund answered");
        answer
    }

    fn read_refund_reply(&self, bytes: &[u8]) -> ProviderAnswer {
        // Errors before decryption (unknown PAY_ID, say) come back as plain fields.
        if let Ok(env) = serde_json::from_slice::<EncEnvelope>(bytes) {
            return match self.account.key.decrypt(&env.encdata) {
                Ok(text) if text.trim() == crypto::PROVIDER_ERROR_TEXT => ProviderAnswer {
                    outcome: Outcome::Unknown,
                    provider_refund_id: None,
                    provider_status: None,
                    provider_code: None,
                    message: Some(crypto::PROVIDER_ERROR_TEXT.into()),
                },
                Ok(text) => match crypto::decode_pairs(&text) {
                    Some(fields) => map_fields(&fields, Call::Refund),
                    None => ProviderAnswer::unknown("pay10 ENCDATA holds no KEY=VALUE pairs"),
                },
                Err(e) => ProviderAnswer::unknown(format!("pay10 response: {e}")),
            };
        }
        match wire::parse_fields(bytes) {
            Some(fields) if fields.contains_key("RESPONSE_CODE") => {
                map_fields(&fields, Call::Refund)
            }
            _ => ProviderAnswer::unknown("pay10 answered with an unreadable body"),
        }
    }

    #[tracing::instrument(skip_all, fields(provider = "pay10", op = "refund_status", refund_id = %q.refund_id))]
    pub async fn refund_status(&self, q: &StatusQuery) -> ProviderAnswer {
        match self.requery(q).await {
            Ok((answer, _)) => answer,
            Err(answer) => answer,
        }
    }

    /// The refund requery's answer, and its fields when it was readable.
    async fn requery(
        &self,
        q: &StatusQuery,
    ) -> Result<(ProviderAnswer, BTreeMap<String, String>), ProviderAnswer> {
        let Some(order_id) = &q.reference else {
            return Err(ProviderAnswer::unknown("pay10 requery needs ORDER_ID"));
        };
        let salt = self.account.salt.expose_secret();
        let hash = match crypto::hash(
            [
                ("PAY_ID", self.account.pay_id.as_str()),
                ("ORDER_ID", order_id.as_str()),
                ("REFUND_ORDER_ID", q.provider_reference.as_str()),
            ],
            salt,
        ) {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "pay10 requery refused before sending");
                return Err(ProviderAnswer::unknown(format!(
                    "the status query could not be built ({e}); nothing was asked"
                )));
            }
        };
        let body = RequeryRequest {
            pay_id: self.account.pay_id.clone(),
            order_id: order_id.clone(),
            refund_order_id: q.provider_reference.clone(),
            hash,
        };
        let bytes = match self.post(REQUERY_PATH, &body).await {
            Ok(b) => b,
            Err(m) => return Err(ProviderAnswer::unknown(m)),
        };
        let Some(fields) = wire::parse_fields(&bytes).filter(|f| f.contains_key("RESPONSE_CODE"))
        else {
            return Err(ProviderAnswer::unknown(
                "pay10 requery answer is unreadable",
            ));
        };
        // Pay10 does not sign requery answers (a HASH on one is our own echoed
        // back, or meaningless): the code and the fields are the answer.
        let answer = map_fields(&fields, Call::Status);
        if answer.outcome == Outcome::Misconfigured {
            tracing::error!(
                code = answer.provider_code.as_deref().unwrap_or(""),
                message = answer.message.as_deref().unwrap_or(""),
                pay_id = %self.account.pay_id,
                "pay10 refused the refund status query: check this account's PAY_ID and salt"
            );
        }
        Ok((answer, fields))
    }

    pub fn verify_webhook(&self, body: &[u8]) -> Result<WebhookEvent, WebhookError> {
        parse_webhook(body, self.account.salt.expose_secret())
    }

    /// The sale status enquiry: the sale `ORDER_ID` of `amount` (the POS's
    /// word for it: Pay10 needs it to be asked) as Pay10 knows it.
    #[tracing::instrument(skip_all, fields(provider = "pay10", op = "status_enquiry"))]
    pub async fn status_enquiry(
        &self,
        order_id: &str,
        amount: Minor,
        currency: Currency,
    ) -> SaleLookup {
        let Some(wire_amount) = wire_amount(amount.get()) else {
            return SaleLookup::Unavailable("the sale amount does not fit Pay10's AMOUNT".into());
        };
        let numeric = currency.numeric();
        let hash = match crypto::hash(
            [
                ("AMOUNT", wire_amount.as_str()),
                ("CURRENCY_CODE", numeric.as_str()),
                ("ORDER_ID", order_id),
                ("PAY_ID", self.account.pay_id.as_str()),
                ("TXNTYPE", "STATUS"),
            ],
            self.account.salt.expose_secret(),
        ) {
            Ok(h) => h,
            Err(e) => {
                return SaleLookup::Unavailable(format!(
                    "the status enquiry could not be built ({e}); nothing was asked"
                ))
            }
        };
        let body = StatusEnquiry {
            pay_id: self.account.pay_id.clone(),
            order_id: order_id.to_string(),
            amount: wire_amount,
            currency_code: numeric,
            txn_type: "STATUS".into(),
            hash,
        };
        let bytes = match self.post(ENQUIRY_PATH, &body).await {
            Ok(b) => b,
            Err(m) => return SaleLookup::Unavailable(m),
        };
        let Some(f) = wire::parse_fields(&bytes).filter(|f| f.contains_key("RESPONSE_CODE")) else {
            return SaleLookup::Unavailable("pay10 status enquiry answer is unreadable".into());
        };
        read_enquiry(&f)
    }
}

/// A status enquiry's answer as the sale it describes.
pub fn read_enquiry(f: &BTreeMap<String, String>) -> SaleLookup {
    let get = |k: &str| f.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let code = get("RESPONSE_CODE").unwrap_or("");
    let message = get("RESPONSE_MESSAGE").unwrap_or("");
    match code {
        "000" => {}
        "015" | "302" => return SaleLookup::NotFound,
        "300" if message.eq_ignore_ascii_case("NO DATA FOUND") => return SaleLookup::NotFound,
        _ => {
            return SaleLookup::Unavailable(format!(
                "pay10 status enquiry refused: {code} {message}"
            ))
        }
    }
    let currency = get("CURRENCY_CODE").and_then(|c| Currency::from_numeric(c).ok());
    let amount = get("AMOUNT")
        .filter(|a| a.len() <= 12 && a.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|a| a.parse::<i64>().ok())
        .and_then(Minor::new);
    match (get("PG_REF_NUM"), currency, amount, get("STATUS")) {
        (Some(pg), Some(c), Some(a), Some(status)) => SaleLookup::Found(SaleInfo {
            transaction_no: pg.to_string(),
            reference: get("ORDER_ID").map(str::to_string),
            amount: c.format(a),
            currency: c.code().to_string(),
            settle_currency: None,
            status: status.to_string(),
            refunded: vec![],
        }),
        _ => SaleLookup::Unavailable("pay10 status enquiry answer lacks fields".into()),
    }
}

impl Credentials for Pay10Account {
    fn provider(&self) -> ProviderKind {
        ProviderKind::Pay10
    }

    fn base_url(&self) -> &str {
        &self.base_url
    }

    fn connect(&self, http: reqwest::Client) -> std::sync::Arc<dyn Connector> {
        std::sync::Arc::new(Pay10Client::new(http, self.clone()))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[async_trait::async_trait]
impl Connector for Pay10Client {
    fn provider(&self) -> ProviderKind {
        ProviderKind::Pay10
    }

    /// Pay10's sale query needs the sale's amount: without it, none.
    async fn lookup_sale(&self, _: Option<&str>, _: Option<&str>) -> Option<SaleLookup> {
        None
    }

    async fn lookup_sale_stated(
        &self,
        _transaction_no: Option<&str>,
        reference: Option<&str>,
        amount: Minor,
        currency: Currency,
    ) -> Option<SaleLookup> {
        Some(match reference {
            Some(order_id) => self.status_enquiry(order_id, amount, currency).await,
            None => SaleLookup::Unavailable("pay10 status enquiry needs ORDER_ID".into()),
        })
    }

    async fn refund(&self, call: &RefundCall) -> ProviderAnswer {
        Pay10Client::refund(self, call).await
    }

    async fn refund_status(&self, query: &StatusQuery) -> ProviderAnswer {
        Pay10Client::refund_status(self, query).await
    }

    /// Pay10 publishes no list: the refund requery, with its `AMOUNT`
    /// (minor units) and `CURRENCY_CODE` (ISO 4217 numeric) where given.
    async fn booked_refund(&self, query: &StatusQuery) -> Result<Option<BookedRefund>, String> {
        let (answer, fields) = self.requery(query).await.map_err(|a| {
            a.message
                .unwrap_or_else(|| "pay10 could not be asked".into())
        })?;
        match answer.outcome {
            Outcome::NotFound => return Ok(None),
            Outcome::Unknown | Outcome::Misconfigured => {
                return Err(answer
                    .message
                    .unwrap_or_else(|| "pay10 could not be asked".into()))
            }
            _ => {}
        }
        let get = |k: &str| fields.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        Ok(Some(BookedRefund {
            sale_transaction_no: query.transaction_no.clone(),
            provider_refund_id: answer.provider_refund_id,
            provider_reference: get("REFUND_ORDER_ID")
                .map(str::to_string)
                .or(Some(query.provider_reference.clone())),
            amount_minor: get("AMOUNT")
                .filter(|a| a.bytes().all(|b| b.is_ascii_digit()) && a.len() <= 12)
                .and_then(|a| a.parse().ok()),
            currency: get("CURRENCY_CODE")
                .and_then(|c| crate::money::Currency::from_numeric(c).ok())
                .map(|c| c.code().to_string()),
            provider_status: answer.provider_status,
            outcome: answer.outcome,
            created: None,
        }))
    }

    /// PAY_ID, salt and key.
    fn webhook_credentials_digest(&self) -> [u8; 32] {
        let a = &self.account;
        credentials_digest(&[
            a.pay_id.as_bytes(),
            a.salt.expose_secret().as_bytes(),
            a.key.bytes(),
        ])
    }

    fn verify_webhook(&self, body: &[u8]) -> Result<WebhookEvent, WebhookError> {
        Pay10Client::verify_webhook(self, body)
    }
}

/// Fields Pay10's server adds to a webhook after computing its HASH (its
/// merchant kit leaves them out when checking): accepted, never read.
const UNHASHED_WEBHOOK_FIELDS: &[&str] = &["CARD_ISSUER_BANK"];

/// Parses a Pay10 webhook (JSON with HASH) and verifies it with `salt`.
///
/// A repeated key is refused. The HASH is checked over every field, or else
/// over the fields the server hashes (without [`UNHASHED_WEBHOOK_FIELDS`],
/// which are then dropped): nothing the HASH does not cover is read.
pub fn parse_webhook(body: &[u8], salt: &str) -> Result<WebhookEvent, WebhookError> {
    let mut fields = wire::parse_json_object_strict(body).ok_or(WebhookError::Malformed)?;
    let verifies = |f: &BTreeMap<String, String>| {
        crypto::verify(f.iter().map(|(k, v)| (k.as_str(), v.as_str())), salt)
    };
    if !verifies(&fields) {
        let hashed: BTreeMap<String, String> = fields
            .iter()
            .filter(|(k, _)| !UNHASHED_WEBHOOK_FIELDS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if hashed.len() == fields.len() || !verifies(&hashed) {
            return Err(WebhookError::BadSignature);
        }
        fields = hashed;
    }
    let answer = map_fields(&fields, Call::Refund);
    let get = |k: &str| fields.get(k).filter(|v| !v.is_empty()).cloned();
    Ok(WebhookEvent {
        provider: ProviderKind::Pay10,
        transaction_no: get("PG_REF_NUM"),
        reference: get("ORDER_ID"),
        provider_refund_id: get("REFUND_ORDER_ID"),
        provider_reference: get("REFUND_ORDER_ID"),
        amount: get("AMOUNT"),
        outcome: answer.outcome,
        provider_status: get("STATUS"),
        is_refund: get("TXNTYPE").as_deref() == Some("REFUND") || get("REFUND_ORDER_ID").is_some(),
        fields,
    })
}

/// Pay10's `AMOUNT`: minor units, left-padded to at least 3 digits; `None`
/// past 12 digits.
pub fn wire_amount(minor: i64) -> Option<String> {
    (0..=ProviderKind::Pay10.max_amount_minor())
        .contains(&minor)
        .then(|| format!("{minor:03}"))
}

/// The response-code table of providers.md.
pub fn map_fields(fields: &BTreeMap<String, String>, call: Call) -> ProviderAnswer {
    let code = fields
        .get("RESPONSE_CODE")
        .map(|c| c.trim().to_string())
        .unwrap_or_default();
    let status = fields.get("STATUS").cloned();
    let message = fields
        .get("RESPONSE_MESSAGE")
        .or_else(|| fields.get("PG_TXN_MESSAGE"))
        .cloned();
    let outcome = match code.as_str() {
        "000" => match status
            .as_deref()
            .map(|s| s.trim().to_ascii_uppercase())
            .as_deref()
        {
            Some("CAPTURED") => Outcome::Succeeded,
            Some("FAILED") | Some("DECLINED") | Some("REJECTED") => Outcome::Failed,
            _ => Outcome::Pending,
        },
        "006" | "026" | "028" | "031" => Outcome::Pending,
        // A refusal code beside a `Captured` status says two things at once:
        // no evidence either way (the status is asked).
        "004" | "007" | "002" | "001" | "021" | "022" | "013" | "014" | "016" | "015" | "302"
            if status
                .as_deref()
                .is_some_and(|s| s.trim().eq_ignore_ascii_case("CAPTURED")) =>
        {
            Outcome::Unknown
        }
        "004" | "007" | "002" | "001" | "021" | "022" | "013" | "014" | "016" | "015" | "302" => {
            Outcome::Failed
        }
        "300" if call == Call::Status => {
            let msg = message.as_deref().unwrap_or("").to_ascii_uppercase();
            if msg.contains("NO DATA") {
                Outcome::NotFound
            } else {
                // "Invalid Hash" and other refusals of our query.
                Outcome::Misconfigured
            }
        }
        // On a status query these say our query was refused, not the refund.
        "323" | "324" if call == Call::Status => Outcome::Misconfigured,
        "300" | "323" | "324" => Outcome::Failed,
        // 003 timeout, 008/018/019 duplicates, 900-902 internal: settle by status query.
        _ => Outcome::Unknown,
    };
    ProviderAnswer {
        outcome,
        provider_refund_id: fields.get("REFUND_ORDER_ID").cloned(),
        provider_status: status,
        provider_code: (!code.is_empty()).then_some(code),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn code_table() {
        let cases: &[(&str, Option<&str>, Call, Outcome)] = &[
            ("000", Some("Captured"), Call::Refund, Outcome::Succeeded),
            (
                "000",
                Some("REFUND_INITIATED"),
                Call::Refund,
                Outcome::Pending,
            ),
            ("000", Some("Sent to Bank"), Call::Refund, Outcome::Pending),
            (
                "000",
                Some("REQUEST ACCEPTED"),
                Call::Refund,
                Outcome::Pending,
            ),
            ("006", None, Call::Refund, Outcome::Pending),
            ("026", None, Call::Refund, Outcome::Pending),
            ("028", None, Call::Refund, Outcome::Pending),
            ("031", None, Call::Refund, Outcome::Pending),
            ("003", None, Call::Refund, Outcome::Unknown),
            ("004", None, Call::Refund, Outcome::Failed),
            ("007", None, Call::Refund, Outcome::Failed),
            ("002", None, Call::Refund, Outcome::Failed),
            ("001", None, Call::Refund, Outcome::Failed),
            ("021", None, Call::Refund, Outcome::Failed),
            ("022", None, Call::Refund, Outcome::Failed),
            ("013", None, Call::Refund, Outcome::Failed),
            ("014", None, Call::Refund, Outcome::Failed),
            ("016", None, Call::Refund, Outcome::Failed),
            ("008", None, Call::Refund, Outcome::Unknown),
            ("018", None, Call::Refund, Outcome::Unknown),
            ("019", None, Call::Refund, Outcome::Unknown),
            ("015", None, Call::Refund, Outcome::Failed),
            ("302", None, Call::Refund, Outcome::Failed),
            ("300", None, Call::Refund, Outcome::Failed),
            ("323", None, Call::Refund, Outcome::Failed),
            ("324", None, Call::Refund, Outcome::Failed),
            ("323", None, Call::Status, Outcome::Misconfigured),
            ("900", None, Call::Refund, Outcome::Unknown),
            ("901", None, Call::Refund, Outcome::Unknown),
            ("902", None, Call::Refund, Outcome::Unknown),
            ("999", None, Call::Refund, Outcome::Unknown),
        ];
        for (code, status, call, want) in cases {
            let mut fields = f(&[("RESPONSE_CODE", code)]);
            if let Some(s) = status {
                fields.insert("STATUS".into(), s.to_string());
            }
            assert_eq!(
                map_fields(&fields, *call).outcome,
                *want,
                "code {code} {status:?}"
            );
        }
        let torn = f(&[("RESPONSE_CODE", "004"), ("STATUS", "Captured")]);
        assert_eq!(map_fields(&torn, Call::Refund).outcome, Outcome::Unknown);
        let nodata = f(&[
            ("RESPONSE_CODE", "300"),
            ("RESPONSE_MESSAGE", "NO DATA FOUND"),
        ]);
        assert_eq!(map_fields(&nodata, Call::Status).outcome, Outcome::NotFound);
        let badhash = f(&[
            ("RESPONSE_CODE", "300"),
            ("RESPONSE_MESSAGE", "Invalid hash"),
        ]);
        assert_eq!(
            map_fields(&badhash, Call::Status).outcome,
            Outcome::Misconfigured
        );
    }

    #[test]
    fn amount_has_three_to_twelve_digits() {
        assert_eq!(wire_amount(50).as_deref(), Some("050"));
        assert_eq!(wire_amount(5).as_deref(), Some("005"));
        assert_eq!(wire_amount(100).as_deref(), Some("100"));
        assert_eq!(
            wire_amount(999_999_999_999).as_deref(),
            Some("999999999999")
        );
        assert_eq!(wire_amount(1_000_000_000_000), None);
    }

    #[test]
    fn webhook_fields_outside_the_hash() {
        let salt = "s4lt";
        let signed = [
            ("AMOUNT", "050"),
            ("PG_REF_NUM", "1879120328175249"),
            ("RESPONSE_CODE", "000"),
            ("STATUS", "Captured"),
            ("TXNTYPE", "REFUND"),
            ("REFUND_ORDER_ID", "R1234567"),
        ];
        let hash = crypto::hash(signed, salt).unwrap();
        let mut obj: serde_json::Map<String, serde_json::Value> = signed
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
            .collect();
        obj.insert("HASH".into(), hash.clone().into());
        // The server adds CARD_ISSUER_BANK after hashing: accepted, dropped.
        obj.insert("CARD_ISSUER_BANK".into(), "Some Bank".into());
        let ev = parse_webhook(&serde_json::to_vec(&obj).unwrap(), salt).unwrap();
        assert_eq!(ev.outcome, Outcome::Succeeded);
        assert!(!ev.fields.contains_key("CARD_ISSUER_BANK"));
        // Any other field outside the hash is not accepted.
        obj.insert("STATUS2".into(), "x".into());
        assert_eq!(
            parse_webhook(&serde_json::to_vec(&obj).unwrap(), salt),
            Err(WebhookError::BadSignature)
        );
        // A repeated key is refused even when one of its values is signed.
        let body = format!(
            r#"{{"AMOUNT":"050","PG_REF_NUM":"1879120328175249","RESPONSE_CODE":"000","STATUS":"Captured","TXNTYPE":"REFUND","REFUND_ORDER_ID":"R1234567","HASH":"{hash}","REFUND_ORDER_ID":"OTHER000001"}}"#
        );
        assert_eq!(
            parse_webhook(body.as_bytes(), salt),
            Err(WebhookError::Malformed)
        );
    }

    #[test]
    fn webhook_verification() {
        let salt = "s4lt";
        let fields = [
            ("PG_REF_NUM", "1879120328175249"),
            ("STATUS", "Captured"),
            ("RESPONSE_CODE", "000"),
            ("TXNTYPE", "REFUND"),
            ("REFUND_ORDER_ID", "R1234567"),
        ];
        let hash = crypto::hash(fields, salt).unwrap();
        let mut obj: serde_json::Map<String, serde_json::Value> = fields
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
            .collect();
        obj.insert("HASH".into(), hash.into());
        let body = serde_json::to_vec(&obj).unwrap();
        let ev = parse_webhook(&body, salt).unwrap();
        assert_eq!(ev.outcome, Outcome::Succeeded);
        assert!(ev.is_refund);
        assert_eq!(
            parse_webhook(&body, "wrong"),
            Err(WebhookError::BadSignature)
        );
        obj.remove("HASH");
        assert_eq!(
            parse_webhook(&serde_json::to_vec(&obj).unwrap(), salt),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(parse_webhook(b"nope", salt), Err(WebhookError::Malformed));
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = wire::parse_fields(&bytes);
            let _ = parse_webhook(&bytes, "s");
        }
    }
}
