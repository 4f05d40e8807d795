//! The public refund object (api.md "The refund object").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::store::{PendingReason, RefundRow, Status};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"id": "rf_01JD3X2Q8K4M5N6P7R8S9T0V1W", "object": "refund", "livemode": false, "provider": "pockyt",
    "status": "succeeded", "amount": "0.01", "currency": "USD", "settle_currency": "USD",
    "transaction_no": "297553638301777927", "reference": "test20200101306", "refund_reference": "refund2020101305",
    "provider_refund_id": "297553638302358781", "provider_status": "success", "provider_code": "000100",
    "failure_code": null, "failure_message": null, "reason": null, "receipt_email": null, "metadata": {},
    "created_at": "2026-11-23T10:00:00Z", "updated_at": "2026-11-23T10:00:01Z"}))]
pub struct RefundObject {
    pub id: String,
    /// Always `refund`.
    pub object: String,
    /// False for refunds against a sandbox.
    pub livemode: bool,
    /// `pockyt` or `pay10`.
    pub provider: String,
    /// `pending`, `succeeded` or `failed`.
    pub status: String,
    /// Decimal string in major units, with the currency's minor digits.
    pub amount: String,
    pub currency: String,
    pub settle_currency: Option<String>,
    pub transaction_no: String,
    pub reference: Option<String>,
    pub refund_reference: Option<String>,
    /// Pockyt `refundTransactionNo` or Pay10 `REFUND_ORDER_ID`.
    pub provider_refund_id: Option<String>,
    pub provider_status: Option<String>,
    pub provider_code: Option<String>,
    /// On `failed`: `provider_declined`, `amount_exceeds_refundable`,
    /// `parameters_mismatch`, `invalid_provider_request`, `transaction_not_found`,
    /// `provider_configuration_error`, `not_submitted` or `not_received_by_provider`.
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
    /// Why the refund needs a person, when it does (see the review queue).
    pub review_reason: Option<String>,
    /// While `pending`, why: `being_sent` (no answer yet),
    /// `awaiting_provider_confirmation` (the provider
    /// accepted it and will confirm), `outcome_unknown` (a timeout, 5xx or
    /// unreadable answer: it may or may not have happened),
    /// `provider_unreachable`, `no_record_at_provider_yet`,
    /// `provider_refused_credentials` (an operator must fix the account).
    /// `null` once final.
    #[serde(default)]
    pub pending_reason: Option<String>,
    /// While `pending`, when the gateway next asks the provider (RFC 3339);
    /// `null` once final.
    #[serde(default)]
    pub next_check_at: Option<String>,
    pub reason: Option<String>,
    pub receipt_email: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&RefundRow> for RefundObject {
    fn from(r: &RefundRow) -> Self {
        RefundObject {
            id: r.id.to_string(),
            object: "refund".into(),
            livemode: r.livemode,
            provider: r.provider.as_str().into(),
            status: r.status.as_str().to_string(),
            amount: r.currency.format(r.amount_minor),
            currency: r.currency.code().into(),
            settle_currency: r.settle_currency.map(|c| c.code().into()),
            transaction_no: r.transaction_no.clone(),
            reference: r.reference.clone(),
            refund_reference: r.refund_reference.clone(),
            provider_refund_id: r.provider_refund_id.clone(),
            provider_status: r.provider_status.clone(),
            provider_code: r.provider_code.clone(),
            failure_code: r.failure_code.clone(),
            failure_message: r.failure_message.clone(),
            review_reason: r.review_reason.clone(),
            pending_reason: (r.status == Status::Pending).then(|| {
                r.pending_reason
                    // Recorded, with no answer yet.
                    .unwrap_or(PendingReason::BeingSent)
                    .as_str()
                    .to_string()
            }),
            next_check_at: r
                .next_check_at
                .filter(|_| r.status == Status::Pending)
                .map(|t| t.rfc3339()),
            reason: r.reason.clone(),
            receipt_email: r.receipt_email.clone(),
            metadata: r.metadata.clone(),
            created_at: r.created_at.rfc3339(),
            updated_at: r.updated_at.rfc3339(),
        }
    }
}
