//! What is left on a sale: the sale as the provider and the gateway's books
//! know it, for a clerk who would otherwise learn it from a 422's text.

use crate::money::{Currency, Minor};
use crate::providers::SaleLookup;
use crate::store::{Status, StoreError};
use crate::types::ProviderKind;

use super::{AccountHandle, Gateway};

/// One refund on a sale, and whose record it is.
#[derive(Debug, Clone)]
pub struct SaleRefund {
    /// `gateway` (ours), `provider` (listed by the provider, not ours) or
    /// `reconciliation` (made elsewhere, recorded by a report).
    pub source: &'static str,
    pub refund_id: Option<String>,
    pub provider_refund_id: Option<String>,
    pub provider_reference: Option<String>,
    pub amount: Minor,
    /// Ours: `pending`, `succeeded`, `failed`; the provider's: its word.
    pub status: Option<String>,
}

/// A sale's position.
#[derive(Debug, Clone)]
pub struct SaleView {
    pub provider: ProviderKind,
    pub account: String,
    pub transaction_no: String,
    pub reference: Option<String>,
    pub amount: Option<Minor>,
    pub currency: Option<Currency>,
    pub status: Option<String>,
    /// Where `amount` comes from: `provider` (asked just now), `gateway`
    /// (pinned by the provider's earlier answer or a refund's success), or
    /// `unknown` (Pay10 without `sale_amount`, before any refund succeeded).
    pub amount_source: &'static str,
    /// Ours, succeeded.
    pub refunded: Minor,
    /// Ours, still pending (held against the sale).
    pub pending: Minor,
    /// Made elsewhere, as far as the provider lists them or a report found them.
    pub refunded_elsewhere: Minor,
    /// `amount` less all of the above; `None` while `amount` is unknown.
    pub refundable: Option<Minor>,
    pub refunds: Vec<SaleRefund>,
    /// Why the provider was not asked, or could not answer (the figures are
    /// then the gateway's books alone).
    pub provider_note: Option<String>,
}

/// Why no sale can be shown.
#[derive(Debug, thiserror::Error)]
pub enum SaleViewError {
    #[error("the provider has no such sale")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn minor(n: i64) -> Minor {
    Minor::new(n.max(0)).unwrap_or_default()
}

impl Gateway {
    /// The sale `transaction_no` (Pay10: with its `reference`, and asked
    /// about only with the `sale_amount` the POS states) on `handle`'s account.
    pub async fn sale_view(
        &self,
        handle: &AccountHandle,
        transaction_no: &str,
        reference: Option<&str>,
        sale_amount: Option<(Minor, Currency)>,
    ) -> Result<SaleView, SaleViewError> {
        let account = handle.account.name.clone();
        let provider = handle.account.provider();
        let looked = handle
            .client
            .lookup_sale_as(Some(transaction_no), reference, sale_amount)
            .await;
        let (sale, provider_note) = match looked {
            Some(SaleLookup::Found(s)) => (Some(s), None),
            Some(SaleLookup::NotFound) => return Err(SaleViewError::NotFound),
            Some(SaleLookup::Unavailable(m)) => {
                (None, Some(format!("the provider could not be asked: {m}")))
            }
            None => (
                None,
                Some(format!(
                    "{provider} has no sale query without the sale's amount (give sale_amount)"
                )),
            ),
        };
        if let Some(s) = &sale {
            let other_reference =
                reference.is_some() && s.reference.is_some() && s.reference.as_deref() != reference;
            if s.transaction_no != transaction_no || other_reference {
                return Err(SaleViewError::NotFound);
            }
        }
        let books = self
            .store
            .reconciliations()
            .sale_books(&account, transaction_no)
            .await?;
        let ours = self
            .store
            .refunds_on_transaction(&account, transaction_no)
            .await?;
        let outside = self
            .store
            .reconciliations()
            .outside_refunds(Some((&account, transaction_no)), 1000)
            .await?;
        let currency = sale
            .as_ref()
            .and_then(|s| Currency::from_code(&s.currency).ok())
            .or_else(|| {
                books
                    .as_ref()
                    .and_then(|b| Currency::from_code(&b.currency).ok())
            })
            .or_else(|| ours.first().map(|r| r.currency))
            .or(sale_amount.map(|s| s.1));
        let mut refunds = vec![];
        let (mut refunded, mut pending) = (0i64, 0i64);
        for r in &ours {
            match r.status {
                Status::Succeeded => refunded += r.amount_minor.get(),
                Status::Pending => pending += r.amount_minor.get(),
                Status::Failed => {}
            }
            refunds.push(SaleRefund {
                source: "gateway",
                refund_id: Some(r.id.to_string()),
                provider_refund_id: r.provider_refund_id.clone(),
                provider_reference: Some(r.provider_reference.clone()),
                amount: r.amount_minor,
                status: Some(r.status.as_str().to_string()),
            });
        }
        let mut listed_elsewhere = 0i64;
        if let (Some(s), Some(c)) = (&sale, currency) {
            for l in &s.refunded {
                let is_ours = l
                    .reference
                    .as_ref()
                    .is_some_and(|x| ours.iter().any(|o| &o.provider_reference == x));
                if is_ours {
                    continue;
                }
                let Ok(a) = c.parse_amount(&l.amount) else {
                    continue;
                };
                listed_elsewhere += a.get();
                refunds.push(SaleRefund {
                    source: "provider",
                    refund_id: None,
                    provider_refund_id: None,
                    provider_reference: l.reference.clone(),
                    amount: a,
                    status: None,
                });
            }
        }
        let mut recorded_elsewhere = 0i64;
        for o in &outside {
            recorded_elsewhere += o.amount_minor;
            refunds.push(SaleRefund {
                source: "reconciliation",
                refund_id: None,
                provider_refund_id: Some(o.provider_refund_id.clone()),
                provider_reference: o.provider_reference.clone(),
                amount: minor(o.amount_minor),
                status: o.provider_status.clone(),
            });
        }
        let elsewhere = listed_elsewhere
            .max(recorded_elsewhere)
            .max(books.as_ref().map_or(0, |b| b.external_minor));
        let (amount, amount_source) = match (&sale, currency) {
            (Some(s), Some(c)) => (c.parse_amount(&s.amount).ok(), "provider"),
            _ => match books.as_ref().and_then(|b| b.amount_minor) {
                Some(a) => (Some(minor(a)), "gateway"),
                None => (None, "unknown"),
            },
        };
        // A sale the provider says may not be refunded has nothing left.
        let closed = sale
            .as_ref()
            .is_some_and(|s| !provider.rules().sale_is_refundable(&s.status));
        let refundable = amount.map(|a| {
            if closed {
                Minor::default()
            } else {
                minor(a.get() - refunded - pending - elsewhere)
            }
        });
        Ok(SaleView {
            provider,
            account,
            transaction_no: transaction_no.to_string(),
            reference: sale
                .as_ref()
                .and_then(|s| s.reference.clone())
                .or(reference.map(str::to_string)),
            amount,
            currency,
            status: sale.as_ref().map(|s| s.status.clone()),
            amount_source,
            refunded: minor(refunded),
            pending: minor(pending),
            refunded_elsewhere: minor(elsewhere),
            refundable,
            refunds,
            provider_note,
        })
    }
}
