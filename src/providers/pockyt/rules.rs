//! What Pockyt's protocol allows and means (its documents and SDKs: see
//! `wire.rs`): sale ids, amounts, webhook fields, response codes.

use std::collections::BTreeMap;

use secrecy::SecretString;

use super::PockytAccount;
use crate::money::Currency;
use crate::providers::{
    field, AccountCredentials, AccountFields, FieldError, Rules, WebhookClaims,
};

pub struct Pockyt;

/// Pockyt's rules, as registered in [`crate::providers::ProviderKind::rules`].
pub static POCKYT: Pockyt = Pockyt;

impl Rules for Pockyt {
    /// `tran-query` answers the sale before a refund.
    fn has_sale_lookup(&self) -> bool {
        true
    }

    /// `tran-query`'s `status`: only a `success` sale is refundable.
    fn sale_is_refundable(&self, status: &str) -> bool {
        status == "success"
    }

    /// - `transactionNo`: 1-64 letters and digits (Pockyt's are digits).
    /// - `reference`: 1-64 printable ASCII characters without space, `&` or
    ///   `=` (the signing string's delimiters); non-ASCII is refused because
    ///   Pockyt's documents do not say how it is signed.
    fn check_sale_ids(
        &self,
        transaction_no: Option<&str>,
        reference: Option<&str>,
        _has_settle_currency: bool,
    ) -> Vec<(&'static str, &'static str)> {
        let all = |s: &str, max: usize, ok: fn(u8) -> bool| {
            (1..=max).contains(&s.len()) && s.bytes().all(ok)
        };
        let mut broken = vec![];
        if transaction_no.is_none() && reference.is_none() {
            broken.push(("transaction_no", "pockyt needs transaction_no or reference"));
        }
        if transaction_no.is_some_and(|t| !all(t, 64, |b| b.is_ascii_alphanumeric())) {
            broken.push((
                "transaction_no",
                "pockyt transactionNo is 1-64 letters and digits",
            ));
        }
        if reference
            .is_some_and(|r| !all(r, 64, |b| b.is_ascii_graphic() && b != b'&' && b != b'='))
        {
            broken.push((
                "reference",
                "pockyt reference is 1-64 printable ASCII characters without spaces, '&' or '='",
            ));
        }
        broken
    }

    /// The IPN's `refundTransactionNo` is Pockyt's own refund number.
    fn webhook_refund_id_is_providers(&self) -> bool {
        true
    }

    fn max_amount_minor(&self) -> i64 {
        i64::MAX
    }

    /// Pockyt sends decimals in major units.
    fn webhook_amount_minor(&self, amount: &str, currency: Currency) -> Option<i64> {
        currency.parse_amount(amount.trim()).ok().map(|m| m.get())
    }

    fn webhook_currency_field(&self) -> &'static str {
        "currency"
    }

    fn webhook_claims(&self, fields: &BTreeMap<String, String>) -> WebhookClaims {
        WebhookClaims {
            sale_reference: field(fields, "reference"),
            settle_currency: field(fields, "settleCurrency"),
            transaction_type: None,
        }
    }

    fn volatile_webhook_fields(&self) -> &'static [&'static str] {
        &["verifySign", "time"]
    }

    fn failure_code(&self, code: &str) -> &'static str {
        match code {
            "000022" => "parameters_mismatch",
            "000020" | "000023" => "invalid_provider_request",
            "000000" | "000010" | "000030" => "provider_configuration_error",
            "000021" => "transaction_not_found",
            _ => "provider_declined",
        }
    }

    /// `docs/providers.md`: Pockyt (formerly Yuansfer) hosts.
    fn default_base_url(&self, production: bool) -> &'static str {
        if production {
            "https://mapi.yuansfer.com"
        } else {
            "https://mapi.yuansfer.yunkeguan.com"
        }
    }

    fn test_hosts(&self) -> &'static [&'static str] {
        &["mapi.yuansfer.yunkeguan.com", "mapi.yuansferdev.com"]
    }

    fn production_hosts(&self) -> &'static [&'static str] {
        &["mapi.yuansfer.com"]
    }

    /// `merchant_no`, `store_no` and the API `token`.
    fn account_fields(&self) -> &'static [&'static str] {
        &["merchant_no", "store_no", "token"]
    }

    fn account(&self, fields: &AccountFields) -> Result<AccountCredentials, FieldError> {
        fields.only(self.account_fields())?;
        Ok(AccountCredentials::new(PockytAccount {
            base_url: fields.base_url.clone(),
            merchant_no: fields.required("merchant_no")?,
            store_no: fields.required("store_no")?,
            token: SecretString::from(fields.secret("token")?),
        }))
    }
}
