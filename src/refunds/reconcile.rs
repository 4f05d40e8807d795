//! The reconciliation worker: every gateway process re-checks due `pending`
//! refunds with the provider, with exponential backoff and a cap. It never
//! resubmits a refund; it only asks. Leases keep two processes off one refund.

use std::sync::Arc;
use std::time::Duration;

use super::{lifecycle, status_query, Gateway};
use crate::config::Config;
use crate::store::{RefundRow, StoreError};

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub interval: Duration,
    pub base_delay: Duration,
    pub max_delay: Duration,
    pub max_attempts: u32,
    /// How long a claimed refund is reserved for the claiming process.
    pub lease: Duration,
    /// After a sent refund's send deadline, how long the provider may still
    /// be processing it (see [`lifecycle::status_query`]).
    pub not_found_after: Duration,
    /// "No such refund" answers in a row needed to fail a sent refund.
    pub not_found_checks: u32,
}

impl Policy {
    pub fn from_config(c: &Config) -> Self {
        Policy {
            interval: c.reconcile_interval,
            base_delay: c.reconcile_base_delay,
            max_delay: c.reconcile_max_delay,
            max_attempts: c.reconcile_max_attempts,
            lease: c.http.timeout * 2 + Duration::from_secs(5),
            not_found_after: c.reconcile_not_found_after,
            not_found_checks: c.reconcile_not_found_checks.max(1),
        }
    }

    /// Defaults for code that applies answers outside a configured gateway
    /// (the benchmark's database floor).
    pub fn floor() -> Self {
        Policy::from_config(&Config::demo("sqlite::memory:", ""))
    }

    pub fn max_delay_ms(&self) -> i64 {
        i64::try_from(self.max_delay.as_millis()).unwrap_or(i64::MAX)
    }

    pub fn not_found_after_ms(&self) -> i64 {
        i64::try_from(self.not_found_after.as_millis()).unwrap_or(i64::MAX)
    }

    /// Milliseconds to wait before the next check after `attempts` checks.
    pub fn delay_after(&self, attempts: i64) -> i64 {
        let shift = u32::try_from(attempts.clamp(0, 20)).unwrap_or(20);
        let d = self
            .base_delay
            .saturating_mul(1u32 << shift)
            .min(self.max_delay);
        i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
    }
}

impl Gateway {
    /// One pass: claims due refunds and checks each. Returns how many were checked.
    pub async fn reconcile_due(self: &Arc<Self>) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let lease = i64::try_from(self.reconcile.lease.as_millis()).unwrap_or(i64::MAX);
        let due = self.store.claim_due(now, now + lease, 32).await?;
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
        let answer = handle.client.refund_status(&status_query(&row)).await;
        let policy = self.reconcile;
        self.store
            .update_refund(&row.id, Some(&row), |current| {
                let now = self.clock.now();
                Some(self.finish(
                    current,
                    lifecycle::status_query(current, &answer, now, &policy),
                ))
            })
            .await?;
        Ok(())
    }
}

/// Runs reconciliation until `shutdown` flips to true.
pub async fn run(gateway: Arc<Gateway>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let interval = gateway.reconcile.interval;
    loop {
        match gateway.reconcile_due().await {
            Ok(n) if n > 0 => tracing::debug!(checked = n, "reconciliation pass"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reconciliation pass failed"),
        }
        if let Err(e) = gateway.retry_unmatched_events().await {
            tracing::warn!(error = %e, "retrying waiting webhooks failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}
