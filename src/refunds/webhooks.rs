//! Provider webhooks (IPNs): verified, stored once, matched to a refund,
//! validated against it, and applied through the state machine.

use sha2::{Digest, Sha256};

use super::status::{decide, Decision, Status};
use super::{now_ms, Gateway};
use crate::money::Currency;
use crate::providers::{Outcome, ProviderKind, WebhookError, WebhookEvent};
use crate::store::{RefundRow, StoreError, WebhookRow};

#[derive(Debug, PartialEq, Eq)]
pub enum WebhookReply {
    /// Stored (and applied, or kept until its refund appears).
    Accepted,
    /// The same event was stored before; nothing changed.
    Duplicate,
    /// Verified but inconsistent with the refund it names: stored, not applied.
    Rejected(String),
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookFailure {
    #[error("the webhook signature is missing or invalid")]
    BadSignature,
    #[error("the webhook body could not be read")]
    Malformed,
    #[error("no such provider account")]
    UnknownAccount,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Fields that change between deliveries of the same event.
const VOLATILE: &[&str] = &["verifySign", "HASH", "time", "RESPONSE_DATE_TIME"];

fn dedupe_key(ev: &WebhookEvent) -> String {
    let mut h = Sha256::new();
    h.update(ev.provider.as_str());
    for (k, v) in ev
        .fields
        .iter()
        .filter(|(k, _)| !VOLATILE.contains(&k.as_str()))
    {
        h.update([0u8]);
        h.update(k.as_bytes());
        h.update([1u8]);
        h.update(v.as_bytes());
    }
    hex::encode(h.finalize())
}

impl Gateway {
    /// Verifies, stores and applies one webhook body.
    pub async fn receive_webhook(
        &self,
        provider: ProviderKind,
        account: Option<&str>,
        body: &[u8],
    ) -> Result<WebhookReply, WebhookFailure> {
        let mut candidates: Vec<_> = self
            .accounts
            .values()
            .filter(|h| h.client.kind() == provider && account.is_none_or(|a| a == h.account.name))
            .collect();
        candidates.sort_by(|a, b| a.account.name.cmp(&b.account.name));
        if candidates.is_empty() {
            return Err(WebhookFailure::UnknownAccount);
        }
        let mut malformed = false;
        let mut verified = None;
        for h in candidates {
            match h.client.verify_webhook(body) {
                Ok(ev) => {
                    verified = Some((h.account.name.clone(), ev));
                    break;
                }
                Err(WebhookError::Malformed) => malformed = true,
                Err(WebhookError::BadSignature) => {}
            }
        }
        let Some((account, ev)) = verified else {
            return Err(if malformed {
                WebhookFailure::Malformed
            } else {
                WebhookFailure::BadSignature
            });
        };
        let row = WebhookRow {
            id: format!("evt_{}", ulid::Ulid::new()),
            provider: provider.as_str().into(),
            account,
            dedupe_key: dedupe_key(&ev),
            transaction_no: ev.transaction_no.clone(),
            provider_refund_id: ev.provider_refund_id.clone(),
            provider_reference: ev.provider_reference.clone(),
            amount: ev.amount.clone(),
            outcome: ev.outcome.as_str().into(),
            provider_status: ev.provider_status.clone(),
            fields: serde_json::to_string(&ev.fields).unwrap_or_default(),
            refund_id: None,
            state: if ev.is_refund { "received" } else { "ignored" }.into(),
            note: (!ev.is_refund).then(|| "not a refund event".to_string()),
            received_at: now_ms(),
        };
        if !self.store.insert_event(&row).await? {
            tracing::info!(provider = %provider, "duplicate webhook ignored");
            return Ok(WebhookReply::Duplicate);
        }
        if !ev.is_refund {
            return Ok(WebhookReply::Accepted);
        }
        self.process_event(&row).await
    }

    /// Matches a stored event to its refund and applies it.
    async fn process_event(&self, ev: &WebhookRow) -> Result<WebhookReply, WebhookFailure> {
        let mut refund = self
            .store
            .find_refund_by_provider_ids(
                &ev.account,
                ev.provider_refund_id.as_deref(),
                ev.provider_reference.as_deref(),
            )
            .await?;
        let names_a_refund = ev.provider_refund_id.is_some() || ev.provider_reference.is_some();
        if refund.is_none() && !names_a_refund {
            if let Some(tx) = &ev.transaction_no {
                let mut on_tx = self.store.refunds_on_transaction(&ev.account, tx).await?;
                if on_tx.len() == 1 {
                    refund = on_tx.pop();
                } else if on_tx.len() > 1 {
                    // Ambiguous: ask the provider about each pending refund instead of guessing.
                    let pending: Vec<String> = on_tx
                        .into_iter()
                        .filter(|r| r.status == "pending")
                        .map(|r| r.id)
                        .collect();
                    self.store.check_now(&pending, now_ms()).await?;
                    self.store
                        .set_event_state(
                            &ev.id,
                            "ambiguous",
                            None,
                            Some("several refunds on this transaction; reconciling by query"),
                        )
                        .await?;
                    return Ok(WebhookReply::Accepted);
                }
            }
        }
        let Some(refund) = refund else {
            self.store
                .set_event_state(
                    &ev.id,
                    "unmatched",
                    None,
                    Some("no refund yet; kept until one appears"),
                )
                .await?;
            tracing::info!(event = %ev.id, "webhook matches no refund yet; kept");
            return Ok(WebhookReply::Accepted);
        };
        self.apply_event(ev, &refund).await
    }

    async fn apply_event(
        &self,
        ev: &WebhookRow,
        refund: &RefundRow,
    ) -> Result<WebhookReply, WebhookFailure> {
        if let Some(reason) = inconsistency(ev, refund) {
            tracing::warn!(event = %ev.id, refund_id = %refund.id, %reason, "webhook rejected");
            self.store
                .set_event_state(&ev.id, "rejected", Some(&refund.id), Some(&reason))
                .await?;
            return Ok(WebhookReply::Rejected(reason));
        }
        let outcome = Outcome::parse(&ev.outcome);
        let answer = crate::providers::ProviderAnswer {
            outcome,
            provider_refund_id: ev
                .provider_refund_id
                .clone()
                .filter(|_| refund.provider == "pockyt"),
            provider_status: ev.provider_status.clone(),
            provider_code: None,
            message: None,
        };
        let policy = self.reconcile;
        // What the event did, decided against the row as the write found it.
        let mut decision = Decision::Stay;
        self.store
            .update_refund(&refund.id, Some(refund), |current| {
                let now = now_ms();
                let mut u = super::apply_answer(current, &answer, now, &policy);
                decision = decide(
                    Status::parse(&current.status).unwrap_or(Status::Pending),
                    outcome,
                );
                if decision == Decision::Conflict {
                    // Settle the contradiction by asking the provider.
                    u.next_check_at = Some(now);
                }
                let u = self.with_receipt(current, u);
                (u != crate::store::RefundUpdate::from_row(current, u.updated_at)).then_some(u)
            })
            .await?;
        let state = match decision {
            Decision::Conflict => {
                crate::metrics::webhook(&ev.provider, "conflict");
                "conflict"
            }
            Decision::Move(_) => "applied",
            Decision::Stay => "stale",
        };
        self.store
            .set_event_state(&ev.id, state, Some(&refund.id), None)
            .await?;
        Ok(WebhookReply::Accepted)
    }

    /// Retries stored events that matched no refund when they arrived (the
    /// webhook beat the provider's answer that told us its refund id). Runs
    /// in the reconciliation loop; events older than a day are left alone.
    pub async fn retry_unmatched_events(&self) -> Result<usize, StoreError> {
        let events = self
            .store
            .unmatched_events(now_ms() - 86_400_000, 50)
            .await?;
        let mut applied = 0;
        for ev in &events {
            match self.process_event(ev).await {
                Ok(_) => applied += 1,
                Err(e) => {
                    tracing::warn!(event = %ev.id, error = %e, "waiting webhook could not be applied")
                }
            }
        }
        Ok(applied)
    }
}

/// Why an event cannot belong to this refund, if it cannot.
fn inconsistency(ev: &WebhookRow, refund: &RefundRow) -> Option<String> {
    if let Some(tx) = &ev.transaction_no {
        if tx != &refund.transaction_no {
            return Some(format!(
                "transactionNo {tx} does not match the refund's {}",
                refund.transaction_no
            ));
        }
    }
    if let Some(amount) = &ev.amount {
        let minor = match ev.provider.as_str() {
            "pay10" => amount.parse::<i64>().ok(),
            _ => Currency::from_code(&refund.currency)
                .ok()
                .and_then(|c| c.parse_amount(amount).ok())
                .map(|m| m.0),
        };
        if minor != Some(refund.amount_minor) {
            return Some(format!("amount {amount} does not match the refund"));
        }
    }
    None
}
