//! Outgoing webhooks: every domain event of a client's refunds, sent to the
//! client's endpoints signed as Standard Webhooks 1.0 specifies
//! (<https://www.standardwebhooks.com>, "Signature scheme"):
//!
//! - `webhook-id`: the event id (`evt_...`), the same on every attempt;
//! - `webhook-timestamp`: the attempt's Unix seconds, on this host's wall
//!   clock (what the receiver compares with its own to refuse replays);
//! - `webhook-signature`: `v1,` and the base64 HMAC-SHA256, keyed with the
//!   secret's bytes (the base64 after `whsec_`), of `id.timestamp.body`; one
//!   such signature per configured secret, space-separated (a rotation).
//!
//! Delivery is at least once and never lost: the event is recorded in the
//! transaction of the change that caused it; each process leases the
//! deliveries it attempts (one attempt, one process); a 2xx within
//! [`ATTEMPT_TIMEOUT`] delivers; otherwise the attempt is retried on
//! [`SCHEDULE`] (jittered by up to a tenth) and then the delivery is marked
//! failed for operators. `410 Gone` disables the endpoint until an operator
//! enables it. Redirects are not followed; an answer is read up to
//! [`MAX_ANSWER_BYTES`]. Events of one refund reach one endpoint in order:
//! a delivery waits while an earlier one of its refund to its endpoint is
//! pending. A slow endpoint holds at most [`PER_ENDPOINT`] of this process's
//! [`IN_FLIGHT`] attempts, each for at most the timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::lifecycle::Backoff;
use super::Gateway;
use crate::config::{WebhookEndpoint, WebhookSecret};
use crate::store::{DeliveryAttempt, DeliveryNext, DeliveryRow, NewDelivery, StoreError};
use crate::types::{DomainEvent, Timestamp};

/// Standard Webhooks' recommended schedule: the wait after the n-th failed
/// attempt (the first attempt is immediate); after the 8th, the delivery fails.
pub const SCHEDULE: Backoff = Backoff {
    base: Duration::ZERO,
    max: Duration::ZERO,
    steps: &[
        Duration::ZERO,
        Duration::from_secs(5),
        Duration::from_secs(5 * 60),
        Duration::from_secs(30 * 60),
        Duration::from_secs(2 * 3600),
        Duration::from_secs(5 * 3600),
        Duration::from_secs(10 * 3600),
        Duration::from_secs(10 * 3600),
    ],
};

/// Attempts per delivery before it is marked failed.
pub const MAX_ATTEMPTS: i64 = 8;

/// A 2xx within this delivers; the attempt is cut off after it.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

/// How much of a receiver's answer is read (it is only shown to operators).
pub const MAX_ANSWER_BYTES: usize = 1024;

/// Attempts in flight in one process, and to one endpoint: it takes 64
/// endpoints hanging at once to hold up the others for one timeout (each
/// attempt is a task and a socket; a hanging endpoint's next attempts wait
/// on the schedule).
pub const IN_FLIGHT: usize = 256;
pub const PER_ENDPOINT: usize = 4;

/// A lease outlives an attempt (so no other process takes it mid-attempt).
const LEASE: Duration = Duration::from_secs(60);

type HmacSha256 = Hmac<Sha256>;

/// The `webhook-signature` header: `v1,<base64>` per secret, space-separated.
pub fn signature(secrets: &[WebhookSecret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| {
            // An HMAC takes a key of any length.
            let mut mac = HmacSha256::new_from_slice(s.key()).expect("any key length");
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            format!(
                "v1,{}",
                base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The body of an event: `{"type", "timestamp" (RFC 3339), "data" (the
/// refund object)}`, the same bytes on every attempt.
pub fn body(kind: DomainEvent, created_at: Timestamp, data: &str) -> String {
    // `kind` and the time are fixed ASCII without quotes; `data` is JSON
    // the gateway wrote.
    format!(
        r#"{{"type":"{}","timestamp":"{}","data":{}}}"#,
        kind.as_str(),
        created_at.rfc3339_ms(),
        data
    )
}

/// The HTTP client for receivers: no redirects, the attempt's timeout.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(ATTEMPT_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(30))
        .user_agent(concat!("refund-gateway/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("a client with static settings builds")
}

/// What one attempt got: an HTTP status, or an error before any.
#[derive(Debug)]
struct Answer {
    status: Option<u16>,
    error: Option<String>,
}

async fn attempt(
    http: &reqwest::Client,
    endpoint: &WebhookEndpoint,
    d: &DeliveryRow,
    now_secs: i64,
) -> Answer {
    let body = body(d.event_type, d.event_created_at, &d.data);
    let sig = signature(&endpoint.secrets, &d.event_id, now_secs, body.as_bytes());
    let sent = http
        .post(&endpoint.url)
        .header("content-type", "application/json")
        .header("webhook-id", &d.event_id)
        .header("webhook-timestamp", now_secs.to_string())
        .header("webhook-signature", sig)
        .body(body)
        .send();
    let call = async {
        let mut resp = sent.await.map_err(|e| describe(&e))?;
        let status = resp.status().as_u16();
        // Read a little of the answer: an answer is complete when its body
        // ends or its first KiB has come; a slow drip is cut at the timeout,
        // and is no delivery.
        let mut read = 0usize;
        while read < MAX_ANSWER_BYTES {
            match resp.chunk().await {
                Ok(Some(c)) => read += c.len(),
                Ok(None) => break,
                Err(e) if e.is_timeout() => {
                    return Err(format!(
                    "no complete answer within {} s (status {status} sent, then the body stalled)",
                    ATTEMPT_TIMEOUT.as_secs()
                ))
                }
                Err(_) => return Err(format!("the answer broke off (status {status})")),
            }
        }
        Ok::<u16, String>(status)
    };
    match tokio::time::timeout(ATTEMPT_TIMEOUT, call).await {
        Ok(Ok(status)) => Answer {
            status: Some(status),
            error: None,
        },
        Ok(Err(e)) => Answer {
            status: None,
            error: Some(e),
        },
        Err(_) => Answer {
            status: None,
            error: Some(format!(
                "no complete answer within {} s",
                ATTEMPT_TIMEOUT.as_secs()
            )),
        },
    }
}

/// A transport error in words, without the URL's query (it may hold a token).
fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_redirect() {
        "redirected (redirects are not followed)"
    } else {
        "transport error"
    };
    what.to_string()
}

/// An endpoint's URL as logs and operators see it: without credentials in
/// the user part and without the query (either may hold a token).
pub fn shown_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let hidden = !u.username().is_empty() || u.password().is_some() || u.query().is_some();
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            let mut s = u.to_string();
            if hidden {
                s.push_str(" (credentials or query hidden)");
            }
            s
        }
        Err(_) => "(unparsable URL)".into(),
    }
}

/// Up to a tenth more or less (so retries of many deliveries spread out).
fn jittered(d: Duration) -> Duration {
    use rand::Rng;
    d.mul_f64(rand::thread_rng().gen_range(0.9..=1.1))
}

/// This process's attempts in flight, per endpoint, and their leases.
#[derive(Default)]
pub struct InFlight {
    per_endpoint: Mutex<HashMap<String, usize>>,
    /// Delivery id → the lease token it was claimed with.
    leases: Mutex<HashMap<String, String>>,
}

impl InFlight {
    fn hold(&self, id: &str, token: &str) {
        let mut m = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(id.to_string(), token.to_string());
    }

    fn drop_lease(&self, id: &str) {
        let mut m = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        m.remove(id);
    }

    /// The leases still held, by token (at shutdown: given back).
    fn held(&self) -> HashMap<String, Vec<String>> {
        let m = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        let mut by_token: HashMap<String, Vec<String>> = HashMap::new();
        for (id, token) in m.iter() {
            by_token.entry(token.clone()).or_default().push(id.clone());
        }
        by_token
    }

    fn take(&self, endpoint: &str) -> bool {
        let mut m = self.per_endpoint.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(endpoint.to_string()).or_default();
        if *n >= PER_ENDPOINT {
            return false;
        }
        *n += 1;
        true
    }

    fn give_back(&self, endpoint: &str) {
        let mut m = self.per_endpoint.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(endpoint) {
            *n = n.saturating_sub(1);
        }
    }
}

impl Gateway {
    /// The endpoint a delivery is for, if the client still has it.
    fn endpoint(&self, client: &str, url: &str) -> Option<&WebhookEndpoint> {
        self.clients
            .iter()
            .find(|c| c.name == client)?
            .webhooks
            .iter()
            .find(|w| w.url == url)
    }

    /// Places new events in the feed and makes their deliveries (one per
    /// endpoint of the client that takes the event's type).
    pub async fn fan_out_events(&self) -> Result<usize, StoreError> {
        let events = self.store.events();
        events.sequence().await?;
        let due = events.unfanned(200).await?;
        if due.is_empty() {
            return Ok(0);
        }
        let mut deliveries = vec![];
        for e in &due {
            let Some(client) = self.clients.iter().find(|c| c.name == e.client) else {
                continue;
            };
            for w in client.webhooks.iter().filter(|w| w.wants(e.kind)) {
                deliveries.push(NewDelivery {
                    event_id: e.id.clone(),
                    client: e.client.clone(),
                    endpoint: w.url.clone(),
                    refund_id: e.refund_id.clone(),
                    seq: e.seq.unwrap_or_default(),
                });
            }
        }
        let ids: Vec<String> = due.iter().map(|e| e.id.clone()).collect();
        events.fan_out(&ids, &deliveries, self.clock.now()).await?;
        Ok(due.len())
    }

    /// One pass: places and fans out new events, then starts the attempts
    /// that are due (as many as `permits` allow), each on its own task.
    pub async fn deliver_webhooks(
        self: &Arc<Self>,
        http: &reqwest::Client,
        permits: &Arc<tokio::sync::Semaphore>,
        in_flight: &Arc<InFlight>,
    ) -> Result<usize, StoreError> {
        self.fan_out_events().await?;
        let free = permits.available_permits();
        if free == 0 {
            return Ok(0);
        }
        let now = self.clock.now();
        let token = ulid::Ulid::new().to_string();
        let claimed = self
            .store
            .events()
            .claim(now, now + LEASE, &token, free as i64)
            .await?;
        let mut started = 0;
        let mut not_now = vec![];
        for d in claimed {
            if !in_flight.take(&d.endpoint) {
                // This endpoint has enough of our attempts: given back.
                not_now.push(d.id);
                continue;
            }
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                in_flight.give_back(&d.endpoint);
                not_now.push(d.id);
                continue;
            };
            started += 1;
            in_flight.hold(&d.id, &token);
            let (this, http, token, in_flight) =
                (self.clone(), http.clone(), token.clone(), in_flight.clone());
            tokio::spawn(async move {
                this.attempt_delivery(&http, &d, &token).await;
                in_flight.drop_lease(&d.id);
                in_flight.give_back(&d.endpoint);
                drop(permit);
            });
        }
        if !not_now.is_empty() {
            self.store.events().release(&token, &not_now).await?;
        }
        Ok(started)
    }

    async fn attempt_delivery(&self, http: &reqwest::Client, d: &DeliveryRow, token: &str) {
        let Some(endpoint) = self.endpoint(&d.client, &d.endpoint) else {
            // The endpoint left the configuration: the delivery fails.
            let a = DeliveryAttempt {
                delivery_id: d.id.clone(),
                at: self.clock.now(),
                http_status: None,
                error: Some("the endpoint is no longer configured".into()),
                duration_ms: 0,
            };
            let _ = self
                .store
                .events()
                .attempted(token, &a, DeliveryNext::Failed)
                .await;
            return;
        };
        let at = self.clock.now();
        let started = Instant::now();
        // The receiver checks the timestamp against its own wall clock:
        // this host's (kept on NTP; a drift from the database is logged).
        let wall = self.clock.host_now().unix_ms().div_euclid(1000);
        let answer = attempt(http, endpoint, d, wall).await;
        let took = started.elapsed();
        let attempts = d.attempts + 1;
        let next = match answer.status {
            Some(s) if (200..300).contains(&s) => DeliveryNext::Delivered,
            Some(410) => DeliveryNext::Disabled,
            _ if attempts >= MAX_ATTEMPTS => DeliveryNext::Failed,
            _ => DeliveryNext::Retry(self.clock.now() + jittered(SCHEDULE.delay(attempts))),
        };
        let outcome = match next {
            DeliveryNext::Delivered => "delivered",
            DeliveryNext::Retry(_) => "retry",
            DeliveryNext::Failed => "failed",
            DeliveryNext::Disabled => "gone",
        };
        crate::metrics::webhook_delivery(outcome, took);
        let a = DeliveryAttempt {
            delivery_id: d.id.clone(),
            at,
            http_status: answer.status.map(i64::from),
            error: answer.error.clone(),
            duration_ms: i64::try_from(took.as_millis()).unwrap_or(i64::MAX),
        };
        let events = self.store.events();
        if next == DeliveryNext::Disabled {
            tracing::error!(client = %d.client, endpoint = %shown_url(&d.endpoint), "webhook endpoint answered 410 Gone: disabled until an operator enables it");
            if let Err(e) = events
                .disable(&d.client, &d.endpoint, at, "answered 410 Gone")
                .await
            {
                tracing::warn!(error = %e, "could not record the disabled endpoint");
            }
        } else if next == DeliveryNext::Failed {
            tracing::error!(client = %d.client, endpoint = %shown_url(&d.endpoint), event = %d.event_id, "webhook delivery failed after every attempt; an operator may redeliver it");
        } else if let DeliveryNext::Retry(_) = next {
            tracing::warn!(client = %d.client, endpoint = %shown_url(&d.endpoint), event = %d.event_id, status = ?answer.status, error = ?answer.error, attempts, "webhook attempt failed; retrying on the schedule");
        }
        match events.attempted(token, &a, next).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(delivery = %d.id, "webhook attempt outlived its lease; another process owns the delivery now")
            }
            Err(e) => {
                tracing::warn!(error = %e, delivery = %d.id, "could not record a webhook attempt")
            }
        }
    }

    /// Refreshes the webhook metrics (oldest undelivered event, disabled endpoints).
    pub async fn webhook_metrics(&self) -> Result<(), StoreError> {
        let events = self.store.events();
        let oldest = events.oldest_undelivered().await?;
        let age = oldest.map(|t| self.clock.now().since(t).as_secs_f64());
        crate::metrics::webhook_backlog(age.unwrap_or(0.0), events.disabled().await?.len());
        Ok(())
    }
}

/// The delivery worker: a pass every `interval` until shutdown; events
/// older than `retention` that no delivery waits for are pruned hourly.
pub async fn run(
    gateway: Arc<Gateway>,
    interval: Duration,
    retention: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let http = http_client();
    let permits = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let in_flight = Arc::new(InFlight::default());
    let mut last_prune: Option<Instant> = None;
    loop {
        if let Err(e) = gateway.deliver_webhooks(&http, &permits, &in_flight).await {
            tracing::warn!(error = %e, "webhook delivery pass failed");
        }
        if last_prune.is_none_or(|t| t.elapsed() > Duration::from_secs(3600)) {
            last_prune = Some(Instant::now());
            let before = gateway.clock.now() - retention;
            match gateway.store.events().prune(before).await {
                Ok(n) if n > 0 => tracing::info!(pruned = n, "old events pruned"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "pruning old events failed"),
            }
        }
        if !super::wait_for_next_pass(interval, &mut shutdown).await {
            // Attempts cut off by the stop are not recorded; their leases
            // are given back so that the next process tries them at once.
            for (token, ids) in in_flight.held() {
                if let Err(e) = gateway.store.events().release(&token, &ids).await {
                    tracing::warn!(error = %e, "could not give back webhook leases at shutdown");
                }
            }
            return;
        }
    }
}
