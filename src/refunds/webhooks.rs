//! Provider webhooks (IPNs): evidence, not commands. Verified, stored once
//! (de-duplicated on the verified fields), matched to a refund only by what
//! names that refund (the provider's refund id or our reference), checked
//! against it, and applied through the lifecycle. An event that names no
//! refund we know changes nothing by itself: it makes the gateway ask the
//! provider about the sale's pending refunds, and is retried with backoff
//! until a refund appears or it gives up.

use sha2::{Digest, Sha256};

use std::time::Duration;

use super::lifecycle::{webhook_state, Backoff, Transition};
use super::{Applied, Gateway};
use crate::providers::{WebhookError, WebhookEvent};
use crate::store::{EventState, RefundRow, StoreError, WebhookRow};
use crate::types::ProviderKind;

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

/// Matching attempts for an event that names no refund we know, before it is
/// left as `expired`: retried after 1 s, 2 s, 4 s, ... (about 68 minutes in
/// all), which covers a webhook that beats the provider's answer to our call.
const MAX_MATCH_ATTEMPTS: i64 = 12;

/// Before the next matching attempt: 1 s after the first, doubling.
const MATCH_RETRY: Backoff =
    Backoff::exponential(Duration::from_secs(1), Duration::from_secs(2048));

/// Before the next matching attempt after `attempts` attempts.
fn match_delay(attempts: i64) -> Duration {
    MATCH_RETRY.delay(attempts.clamp(1, 12) - 1)
}

fn dedupe_key(ev: &WebhookEvent) -> String {
    let mut h = Sha256::new();
    h.update(ev.provider.as_str());
    let volatile = ev.provider.rules().volatile_webhook_fields();
    for (k, v) in ev
        .fields
        .iter()
        .filter(|(k, _)| !volatile.contains(&k.as_str()))
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
        // Accounts sharing credentials verify the same events: store the event
        // once, under the first of them, and match it across all of them.
        let account = self
            .credential_group(&account)
            .into_iter()
            .next()
            .unwrap_or(account);
        let now = self.clock.now();
        let row = WebhookRow {
            id: format!("evt_{}", ulid::Ulid::new()),
            provider,
            account,
            dedupe_key: dedupe_key(&ev),
            transaction_no: ev.transaction_no.clone(),
            provider_refund_id: ev.provider_refund_id.clone(),
            provider_reference: ev.provider_reference.clone(),
            amount: ev.amount.clone(),
            outcome: ev.outcome,
            provider_status: ev.provider_status.clone(),
            fields: serde_json::to_string(&ev.fields).unwrap_or_default(),
            refund_id: None,
            state: if ev.is_refund {
                EventState::Received
            } else {
                EventState::Ignored
            },
            note: (!ev.is_refund).then(|| "not a refund event".to_string()),
            received_at: now,
            attempts: 0,
            next_attempt_at: None,
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

    /// Matches a stored event to the refund it names and applies it; an event
    /// naming no refund we know makes us ask the provider instead.
    async fn process_event(&self, ev: &WebhookRow) -> Result<WebhookReply, WebhookFailure> {
        let group = self.credential_group(&ev.account);
        let refund = self
            .store
            .find_refund_by_provider_ids(
                &group,
                ev.provider_refund_id.as_deref(),
                ev.provider_reference.as_deref(),
            )
            .await?;
        if let Some(refund) = refund {
            return self.apply_event(ev, &refund).await;
        }
        // Not a refund we know (yet): the provider's answer to a status query
        // decides, never the event. Ask about the sale's pending refunds now.
        let now = self.clock.now();
        let mut asked = 0;
        if let Some(tx) = &ev.transaction_no {
            let pending = self.store.pending_on_transaction(&group, tx).await?;
            asked = pending.len();
            self.store.check_now(&pending, now).await?;
        }
        let attempts = ev.attempts + 1;
        let (state, next) = if attempts >= MAX_MATCH_ATTEMPTS {
            (EventState::Expired, None)
        } else {
            (EventState::Unmatched, Some(now + match_delay(attempts)))
        };
        let note = format!(
            "names no refund this gateway knows; {attempts} matching attempts, {asked} pending refunds on the sale queried{}",
            if next.is_none() { "; given up" } else { "" }
        );
        self.store
            .event_not_matched(&ev.id, state, attempts, next, &note)
            .await?;
        if attempts == 1 {
            tracing::info!(event = %ev.id, asked, "webhook names no refund we know; asking the provider instead");
        } else if next.is_none() {
            tracing::info!(event = %ev.id, attempts, "webhook never matched a refund; no more attempts");
        } else {
            tracing::debug!(event = %ev.id, attempts, "webhook still matches no refund");
        }
        Ok(WebhookReply::Accepted)
    }

    async fn apply_event(
        &self,
        ev: &WebhookRow,
        refund: &RefundRow,
    ) -> Result<WebhookReply, WebhookFailure> {
        if event_amount(ev, refund).is_none() {
            // An amount we cannot read, or none at all, is no evidence either
            // way: never a reason to reject, never a reason to apply. Ask the
            // provider.
            tracing::warn!(event = %ev.id, refund_id = %refund.id, amount = ?ev.amount, "webhook amount unreadable; asking the provider instead");
            self.store
                .check_now(&[refund.id.to_string()], self.clock.now())
                .await?;
            self.store
                .set_event_state(
                    &ev.id,
                    EventState::Queried,
                    Some(&refund.id),
                    Some("no readable refund amount; the refund's status is asked instead"),
                )
                .await?;
            return Ok(WebhookReply::Accepted);
        }
        // The provider's own refund id, where the webhook carries one: it
        // must be this refund's, and no other refund's.
        let mut id_clash = None;
        if let Some(pid) = ev
            .provider_refund_id
            .as_deref()
            .filter(|_| refund.provider.webhook_refund_id_is_providers())
        {
            match refund.provider_refund_id.as_deref() {
                Some(ours) if ours != pid => {
                    id_clash = Some(format!("refund id {pid}, not the refund's {ours}"))
                }
                Some(_) => {}
                None => {
                    let group = self.credential_group(&ev.account);
                    if let Some(other) = self
                        .store
                        .find_refund_by_provider_ids(&group, Some(pid), None)
                        .await?
                        .filter(|o| o.id != refund.id)
                    {
                        id_clash = Some(format!("refund id {pid}, which is refund {}'s", other.id));
                    }
                }
            }
        }
        let found = match (inconsistency(ev, refund), id_clash) {
            (Some(a), Some(b)) => Some(format!("{a}; {b}")),
            (a, b) => a.or(b),
        };
        if let Some(reason) = found {
            // Verified and naming this very refund, yet saying something
            // else: the provider's own report is never ignored. It changes
            // nothing by itself, and flags the refund with what differs.
            tracing::warn!(event = %ev.id, refund_id = %refund.id, %reason, "webhook contradicts the refund it names; flagged for review");
            crate::metrics::webhook(ev.provider.as_str(), "contradiction");
            let flagged = format!("a signed {} webhook ({}) says {reason}", ev.provider, ev.id);
            let t = Transition::Contradicted {
                what: &flagged,
                source: crate::store::EventSource::Webhook,
            };
            self.apply(refund, t).await?;
            self.store
                .set_event_state(
                    &ev.id,
                    EventState::Rejected,
                    Some(&refund.id),
                    Some(&reason),
                )
                .await?;
            return Ok(WebhookReply::Rejected(reason));
        }
        let outcome = ev.outcome;
        let answer = crate::providers::ProviderAnswer {
            outcome,
            provider_refund_id: ev
                .provider_refund_id
                .clone()
                .filter(|_| refund.provider.webhook_refund_id_is_providers()),
            provider_status: ev.provider_status.clone(),
            provider_code: None,
            message: None,
        };
        // What the event did, decided against the row as the write found it.
        let written_over = match self
            .apply(refund, Transition::WebhookApplied(&answer))
            .await?
        {
            Applied::Changed(c) => Some(c.current().status),
            _ => None,
        };
        let state = webhook_state(written_over, outcome);
        if state == EventState::Conflict {
            crate::metrics::webhook(ev.provider.as_str(), "conflict");
        }
        self.store
            .set_event_state(&ev.id, state, Some(&refund.id), None)
            .await?;
        Ok(WebhookReply::Accepted)
    }

    /// Retries stored events that matched no refund when they arrived (the
    /// webhook beat the provider's answer that told us its refund id). Runs
    /// in the reconciliation loop; each event is claimed by one process, backs
    /// off, and stops after [`MAX_MATCH_ATTEMPTS`].
    pub async fn retry_unmatched_events(&self) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let events = self
            .store
            .claim_unmatched_events(now, now + self.reconcile.lease, 50)
            .await?;
        let mut processed = 0;
        for ev in &events {
            match self.process_event(ev).await {
                Ok(_) => processed += 1,
                Err(e) => {
                    tracing::warn!(event = %ev.id, error = %e, "waiting webhook could not be processed")
                }
            }
        }
        Ok(processed)
    }
}

/// Why an event cannot belong to this refund as recorded, if it cannot:
/// every difference, named (sale, amount, currency).
fn inconsistency(ev: &WebhookRow, refund: &RefundRow) -> Option<String> {
    let mut differs = vec![];
    if let Some(tx) = &ev.transaction_no {
        if tx != &refund.transaction_no {
            differs.push(format!(
                "transaction {tx}, not the refund's {}",
                refund.transaction_no
            ));
        }
    }
    if let (Some(amount), Some(minor)) = (&ev.amount, event_amount(ev, refund)) {
        if minor != refund.amount_minor.get() {
            differs.push(format!(
                "amount {amount} ({} {}), not the refund's {} {}",
                refund
                    .currency
                    .format(crate::money::Minor::new(minor).unwrap_or_default()),
                refund.currency.code(),
                refund.currency.format(refund.amount_minor),
                refund.currency.code()
            ));
        }
    }
    let fields: std::collections::BTreeMap<String, String> =
        serde_json::from_str(&ev.fields).unwrap_or_default();
    let claims = ev.provider.webhook_claims(&fields);
    if let (Some(theirs), Some(ours)) = (&claims.sale_reference, &refund.reference) {
        if theirs != ours {
            differs.push(format!("sale reference {theirs}, not the refund's {ours}"));
        }
    }
    if let (Some(theirs), Some(ours)) = (&claims.settle_currency, refund.settle_currency) {
        if !ours.matches_wire(theirs) {
            differs.push(format!(
                "settle currency {theirs}, not the refund's {}",
                ours.code()
            ));
        }
    }
    if let Some(kind) = &claims.transaction_type {
        differs.push(format!("transaction type {kind}, not a refund"));
    }
    if let Some(currency) = ev.provider.webhook_currency(&fields) {
        if !refund.currency.matches_wire(&currency) {
            differs.push(format!(
                "currency {currency}, not the refund's {}",
                refund.currency.code()
            ));
        }
    }
    (!differs.is_empty()).then(|| differs.join("; "))
}

/// The event's amount in minor units, read in the provider's format(s);
/// `None` when it has none or it cannot be read.
fn event_amount(ev: &WebhookRow, refund: &RefundRow) -> Option<i64> {
    ev.provider
        .webhook_amount_minor(ev.amount.as_deref()?, refund.currency)
}
