//! The reconciliation worker: every gateway process re-checks due `pending`
//! refunds with the provider, with exponential backoff and a cap. It never
//! resubmits a refund; it only asks. Leases keep two processes off one refund.

use std::sync::Arc;

use super::{lifecycle, status_query, Gateway};
use crate::store::{RefundRow, StoreError};

impl Gateway {
    /// One pass: claims due refunds and checks each. Returns how many were checked.
    pub async fn reconcile_due(self: &Arc<Self>) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let due = self
            .store
            .claim_due(now, now + self.reconcile.lease, 32)
            .await?;
        let n = due.len();
        let mut set = tokio::task::JoinSet::new();
        for row in due {
            let this = Arc::clone(self);
            set.spawn(async move { this.reconcile_one(row).await });
        }
        while let Some(res) = set.join_next().await {
            match res {
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "reconciliation of a refund failed; it will be retried")
                }
                Err(e) => tracing::error!(error = %e, "reconciliation task panicked"),
                Ok(Ok(())) => {}
            }
        }
        Ok(n)
    }

    async fn reconcile_one(&self, row: RefundRow) -> Result<(), StoreError> {
        let Some(handle) = self.accounts.get(&row.account) else {
            tracing::warn!(refund_id = %row.id, account = %row.account, "pending refund's account is no longer configured");
            return Ok(());
        };
        let asked_at = self.clock.now();
        let answer = handle.client.refund_status(&status_query(&row)).await;
        let t = lifecycle::Transition::StatusQueried {
            answer: &answer,
            by: lifecycle::Asker::Reconciliation,
            asked_at,
        };
        self.apply(&row, t).await?;
        Ok(())
    }
}

/// Runs reconciliation until `shutdown` flips to true.
pub async fn run(gateway: Arc<Gateway>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let interval = gateway.reconcile.interval;
    let mut last_clock_sync = std::time::Instant::now();
    loop {
        if last_clock_sync.elapsed() >= super::CLOCK_SYNC_INTERVAL {
            match gateway.sync_clock().await {
                Ok(_) => last_clock_sync = std::time::Instant::now(),
                Err(e) => {
                    tracing::warn!(error = %e, "reading the database's clock failed; counting on from the last reading")
                }
            }
        }
        match gateway.reconcile_due().await {
            Ok(n) if n > 0 => tracing::debug!(checked = n, "reconciliation pass"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reconciliation pass failed"),
        }
        if let Err(e) = gateway.retry_unmatched_events().await {
            tracing::warn!(error = %e, "retrying waiting webhooks failed");
        }
        if !super::wait_for_next_pass(interval, &mut shutdown).await {
            return;
        }
    }
}
