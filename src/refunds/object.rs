//! The public refund object (api.md "The refund object").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::money::{Currency, Minor};
use crate::store::RefundRow;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundObject {
    pub id: String,
    pub object: String,
    pub livemode: bool,
    pub provider: String,
    pub status: String,
    pub amount: String,
    pub currency: String,
    pub settle_currency: Option<String>,
    pub transaction_no: String,
    pub reference: Option<String>,
    pub refund_reference: Option<String>,
    pub provider_refund_id: Option<String>,
    pub provider_status: Option<String>,
    pub provider_code: Option<String>,
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
    pub reason: Option<String>,
    pub receipt_email: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub created_at: String,
    pub updated_at: String,
}

pub fn rfc3339(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
    ))
    .unwrap_or_default()
}

impl From<&RefundRow> for RefundObject {
    fn from(r: &RefundRow) -> Self {
        let amount = match Currency::from_code(&r.currency) {
            Ok(c) => c.format(Minor(r.amount_minor)),
            Err(_) => r.amount_minor.to_string(),
        };
        RefundObject {
            id: r.id.clone(),
            object: "refund".into(),
            livemode: r.livemode != 0,
            provider: r.provider.clone(),
            status: r.status.clone(),
            amount,
            currency: r.currency.clone(),
            settle_currency: r.settle_currency.clone(),
            transaction_no: r.transaction_no.clone(),
            reference: r.reference.clone(),
            refund_reference: r.refund_reference.clone(),
            provider_refund_id: r.provider_refund_id.clone(),
            provider_status: r.provider_status.clone(),
            provider_code: r.provider_code.clone(),
            failure_code: r.failure_code.clone(),
            failure_message: r.failure_message.clone(),
            reason: r.reason.clone(),
            receipt_email: r.receipt_email.clone(),
            metadata: serde_json::from_str(&r.metadata).unwrap_or_default(),
            created_at: rfc3339(r.created_at),
            updated_at: rfc3339(r.updated_at),
        }
    }
}
