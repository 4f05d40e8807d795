//! What Pay10's protocol allows and means (its integration kit: see
//! `wire.rs`): sale ids, amounts, webhook fields, response codes.

use std::collections::BTreeMap;

use secrecy::SecretString;

use super::crypto::EncryptionKey;
use super::Pay10Account;
use crate::money::Currency;
use crate::providers::{
    field, AccountCredentials, AccountFields, FieldError, Rules, WebhookClaims,
};

pub struct Pay10;

/// Pay10's rules, as registered in [`crate::providers::ProviderKind::rules`].
pub static PAY10: Pay10 = Pay10;

impl Rules for Pay10 {
    /// No sale lookup before the refund: the provider checks the sale.
    fn has_sale_lookup(&self) -> bool {
        false
    }

    fn sale_is_refundable(&self, status: &str) -> bool {
        status.eq_ignore_ascii_case("Captured")
    }

    /// - `PG_REF_NUM`: 1-20 digits (the provider's numbering).
    /// - `ORDER_ID`: 1-50 of `A-Z a-z 0-9 _ -`. Pay10's documents type it
    ///   `AN` (alphanumeric), yet their own example is `PAY10_823647263`: the
    ///   underscore is accepted because the provider uses it, the hyphen
    ///   because merchants' order ids commonly carry one; neither is a
    ///   delimiter of any Pay10 string (`~`, `=`, and `,` `{` `}` in answers).
    fn check_sale_ids(
        &self,
        transaction_no: Option<&str>,
        reference: Option<&str>,
        has_settle_currency: bool,
    ) -> Vec<(&'static str, &'static str)> {
        let all = |s: &str, max: usize, ok: fn(u8) -> bool| {
            (1..=max).contains(&s.len()) && s.bytes().all(ok)
        };
        let mut broken = vec![];
        match transaction_no {
            Some(t) if !all(t, 20, |b| b.is_ascii_digit()) => {
                broken.push(("transaction_no", "pay10 PG_REF_NUM is 1-20 digits"))
            }
            None => broken.push(("transaction_no", "is required for pay10 (PG_REF_NUM)")),
            _ => {}
        }
        match reference {
            Some(r)
                if !all(r, 50, |b| {
                    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
                }) =>
            {
                broken.push((
                    "reference",
                    "pay10 ORDER_ID is 1-50 letters, digits, '_' or '-'",
                ))
            }
            None => broken.push(("reference", "is required for pay10 (ORDER_ID)")),
            _ => {}
        }
        if has_settle_currency {
            broken.push(("settle_currency", "applies to pockyt only"));
        }
        broken
    }

    /// The webhook's `REFUND_ORDER_ID` is our reference echoed back.
    fn webhook_refund_id_is_providers(&self) -> bool {
        false
    }

    /// `AMOUNT` is at most 12 digits.
    fn max_amount_minor(&self) -> i64 {
        999_999_999_999
    }

    /// Minor units, or (some servers) a decimal with a dot.
    fn webhook_amount_minor(&self, amount: &str, currency: Currency) -> Option<i64> {
        let amount = amount.trim();
        if amount.contains('.') {
            return currency.parse_amount(amount).ok().map(|m| m.get());
        }
        (!amount.is_empty() && amount.bytes().all(|b| b.is_ascii_digit()))
            .then(|| amount.parse::<i64>().ok())
            .flatten()
    }

    /// ISO 4217 numeric.
    fn webhook_currency_field(&self) -> &'static str {
        "CURRENCY_CODE"
    }

    fn webhook_claims(&self, fields: &BTreeMap<String, String>) -> WebhookClaims {
        WebhookClaims {
            sale_reference: field(fields, "ORDER_ID"),
            settle_currency: None,
            transaction_type: field(fields, "TXNTYPE")
                .filter(|t| !t.eq_ignore_ascii_case("REFUND")),
        }
    }

    fn volatile_webhook_fields(&self) -> &'static [&'static str] {
        &["HASH", "RESPONSE_DATE_TIME"]
    }

    fn failure_code(&self, code: &str) -> &'static str {
        match code {
            "013" | "014" | "016" => "amount_exceeds_refundable",
            "300" | "323" | "324" => "provider_configuration_error",
            "015" | "302" => "transaction_not_found",
            _ => "provider_declined",
        }
    }

    /// `docs/providers.md`: Pay10 hosts.
    fn default_base_url(&self, production: bool) -> &'static str {
        if production {
            "https://pg.pay10.ae"
        } else {
            "https://uatpg.pay10.ae"
        }
    }

    fn test_hosts(&self) -> &'static [&'static str] {
        &["uatpg.pay10.ae", "uat.pay10.com"]
    }

    fn production_hosts(&self) -> &'static [&'static str] {
        &["pg.pay10.ae", "secure.pay10.com"]
    }

    /// `pay_id` (16 digits), `salt` and the AES-256 `encryption_key`.
    fn account_fields(&self) -> &'static [&'static str] {
        &["pay_id", "salt", "encryption_key"]
    }

    fn account(&self, fields: &AccountFields) -> Result<AccountCredentials, FieldError> {
        fields.only(self.account_fields())?;
        let pay_id = fields.required("pay_id")?;
        if pay_id.len() != 16 || !pay_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(FieldError::new("pay_id", "must be 16 digits"));
        }
        let key = fields.secret("encryption_key")?;
        Ok(AccountCredentials::new(Pay10Account {
            base_url: fields.base_url.clone(),
            pay_id,
            salt: SecretString::from(fields.secret("salt")?),
            key: EncryptionKey::new(&key)
                .map_err(|e| FieldError::new("encryption_key", e.to_string()))?,
        }))
    }
}
