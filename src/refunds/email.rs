//! The receipt-email outbox worker. Emails are enqueued in the transaction
//! that makes a refund succeed, so a crash cannot lose one; each is sent by
//! one process at a time (leases) and retried with backoff after failures.
//! Delivery is at-least-once: a crash between the SMTP server's "250 OK" and
//! the outbox update would resend, with the same Message-ID so mail systems
//! can fold the copy.

use std::sync::Arc;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;

use super::lifecycle::Backoff;
use super::Gateway;
use crate::config::Smtp;
use crate::store::OutboxRow;

const MAX_ATTEMPTS: i64 = 8;

/// After a failed send: 2 s, 4 s, ... (the `attempts`-th failure waits
/// `1 s << attempts`), at most 512 s.
const RETRY: Backoff = Backoff::exponential(Duration::from_secs(1), Duration::from_secs(512));

pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: lettre::message::Mailbox,
}

impl Mailer {
    pub fn new(smtp: &Smtp) -> anyhow::Result<Self> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(smtp.url.expose_secret())?
            .timeout(Some(Duration::from_secs(10)))
            .build();
        Ok(Self {
            transport,
            from: smtp.from.parse()?,
        })
    }

    async fn send(&self, e: &OutboxRow) -> Result<(), String> {
        let msg = Message::builder()
            .from(self.from.clone())
            .to(e
                .to_addr
                .parse()
                .map_err(|err| format!("bad address: {err}"))?)
            .subject(e.subject.clone())
            .message_id(Some(format!("<{}@refund-gateway>", e.refund_id)))
            .header(ContentType::TEXT_PLAIN)
            .body(e.body.clone())
            .map_err(|err| err.to_string())?;
        self.transport
            .send(msg)
            .await
            .map(|_| ())
            .map_err(|err| err.to_string())
    }
}

impl Gateway {
    /// One pass over due emails. Returns how many were attempted.
    pub async fn send_due_emails(
        &self,
        mailer: &Mailer,
    ) -> Result<usize, crate::store::StoreError> {
        // Email leases span processes: the shared clock (the database's).
        let now = self.clock.now();
        let due = self
            .store
            .claim_emails(now, now + Duration::from_secs(60), 16)
            .await?;
        for e in &due {
            let result = mailer.send(e).await;
            let now = self.clock.now();
            match result {
                Ok(()) => {
                    tracing::info!(refund_id = %e.refund_id, "receipt email sent");
                    self.store
                        .email_attempted(&e.refund_id, now, None, None)
                        .await?;
                }
                Err(err) => {
                    let attempts = e.attempts + 1;
                    let next = (attempts < MAX_ATTEMPTS).then(|| now + RETRY.delay(attempts));
                    tracing::warn!(refund_id = %e.refund_id, attempts, error = %err, gave_up = next.is_none(), "receipt email failed");
                    self.store
                        .email_attempted(&e.refund_id, now, Some(&err), next)
                        .await?;
                }
            }
        }
        Ok(due.len())
    }
}

pub async fn run(
    gateway: Arc<Gateway>,
    mailer: Mailer,
    interval: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        if let Err(e) = gateway.send_due_emails(&mailer).await {
            tracing::warn!(error = %e, "email pass failed");
        }
        if !super::wait_for_next_pass(interval, &mut shutdown).await {
            return;
        }
    }
}
