//! The refund domain: validation results in, idempotency, the over-refund
//! guard, the write-before-call rule, outcome recording and reconciliation.

pub mod books;
pub mod email;
pub mod lifecycle;
pub mod object;
pub mod outgoing;
pub mod receipt;
pub mod reconcile;
pub mod sales;
pub mod webhooks;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::config::{Account, Client, Operator};
use crate::money::{Currency, Minor};
use crate::providers::{
    http_client, HttpSettings, ProviderClient, RefundCall, SaleInfo, SaleLookup, StatusQuery,
};
use crate::store::{
    Change, CreateOutcome, EventSource, NewRefundRow, RefundEvent, RefundRow, SaleTerms, Status,
    Store, StoreError,
};
use crate::types::{ProviderKind, RefundId, Timestamp};
use lifecycle::{Asker, Context, ReceiptSettings, ResolveRefusal, Transition};
pub use object::RefundObject;

/// The gateway's clock: the database's time.
///
/// Deadlines that one process writes (a send deadline, an in-flight window,
/// a lease, a next check) are compared by every other process, so every
/// process must read time from one clock, and it is the database's: each
/// process takes the database's time when it starts and every
/// [`CLOCK_SYNC_INTERVAL`] (see [`Gateway::sync_clock`]), and counts the time
/// in between on the monotonic clock, which a step of the host's wall clock
/// does not move. A host clock that is hours off therefore changes nothing
/// but a logged ERROR. (With SQLite the database is on this host, and its
/// clock is the host's.)
///
/// Tests move [`Clock::advance`] forward to play a process pause of any
/// length (shared by the gateways of one test, so the paused one wakes up as
/// late as the world around it), and [`Clock::misset_host_clock`] to play a
/// host whose wall clock is wrong.
#[derive(Debug, Clone)]
pub struct Clock {
    inner: Arc<ClockInner>,
}

#[derive(Debug)]
struct ClockInner {
    /// (database time, the monotonic instant it was taken at).
    anchor: std::sync::RwLock<(Timestamp, std::time::Instant)>,
    /// Played pauses (tests).
    offset_ms: AtomicI64,
    /// How far this host's wall clock is set wrong (tests).
    host_error_ms: AtomicI64,
    /// The host's clock minus the database's, as last measured.
    host_skew_ms: AtomicI64,
}

/// How often a request waiting for a refund's outcome re-reads it (a change
/// by this process wakes it at once).
pub const WAIT_POLL: Duration = Duration::from_millis(500);

/// How often each process re-reads the database's clock.
pub const CLOCK_SYNC_INTERVAL: Duration = Duration::from_secs(30);

/// A host clock this far from the database's is reported as an ERROR (the
/// gateway goes by the database's either way).
pub const CLOCK_SKEW_WARNING_MS: i64 = 2_000;

impl Default for Clock {
    fn default() -> Self {
        Clock {
            inner: Arc::new(ClockInner {
                anchor: std::sync::RwLock::new((Timestamp::host_now(), std::time::Instant::now())),
                offset_ms: AtomicI64::new(0),
                host_error_ms: AtomicI64::new(0),
                host_skew_ms: AtomicI64::new(0),
            }),
        }
    }
}

impl Clock {
    /// Now, on the database's clock.
    pub fn now(&self) -> Timestamp {
        let (anchor, at) = *self.inner.anchor.read().unwrap_or_else(|e| e.into_inner());
        let elapsed = i64::try_from(at.elapsed().as_millis()).unwrap_or(i64::MAX);
        Timestamp::from_unix_ms(
            anchor
                .unix_ms()
                .saturating_add(elapsed)
                .saturating_add(self.inner.offset_ms.load(Ordering::SeqCst)),
        )
    }

    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.inner.offset_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// This host's wall clock (as the process reads it).
    pub fn host_now(&self) -> Timestamp {
        Timestamp::from_unix_ms(
            Timestamp::host_now()
                .unix_ms()
                .saturating_add(self.inner.host_error_ms.load(Ordering::SeqCst)),
        )
    }

    /// Plays a host whose wall clock is `by_ms` off (negative: behind), as a
    /// process started there would be before it reads the database's clock.
    pub fn misset_host_clock(&self, by_ms: i64) {
        self.inner.host_error_ms.store(by_ms, Ordering::SeqCst);
        *self.inner.anchor.write().unwrap_or_else(|e| e.into_inner()) =
            (self.host_now(), std::time::Instant::now());
    }

    /// The host's clock minus the database's, as last measured (ms).
    pub fn host_skew_ms(&self) -> i64 {
        self.inner.host_skew_ms.load(Ordering::SeqCst)
    }

    /// Takes `db` as the time at `at`, when this host's clock read `host`.
    fn anchor(&self, db: Timestamp, at: std::time::Instant, host: Timestamp) {
        *self.inner.anchor.write().unwrap_or_else(|e| e.into_inner()) = (db, at);
        self.inner
            .host_skew_ms
            .store(host.ms_since(db), Ordering::SeqCst);
    }
}

/// The points between a request's writes and its provider call where a
/// process may be paused (the stall-injection tests hold a request at each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// The sale was checked with the provider; nothing is recorded yet.
    BeforeRecord,
    /// The refund is recorded and reserved; not yet claimed for sending.
    BeforeClaim,
    /// The send is claimed; the provider has not been called.
    BeforeCall,
    /// The provider answered; the answer is not yet recorded.
    BeforeOutcome,
}

/// Called at each [`Step`]; `None` in production.
pub type PauseHook = Arc<dyn Fn(Step) -> BoxFuture<'static, ()> + Send + Sync>;

/// A validated refund request (the API layer builds it).
#[derive(Debug, Clone)]
pub struct NewRefund {
    pub provider: ProviderKind,
    pub transaction_no: Option<String>,
    pub reference: Option<String>,
    pub amount: Minor,
    pub currency: Currency,
    pub settle_currency: Option<Currency>,
    pub refund_reference: Option<String>,
    pub reason: Option<String>,
    pub receipt_email: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub idempotency_key: Option<String>,
    /// SHA-256 of the canonical request body: a repeated key must repeat it.
    pub request_hash: String,
    /// The sale's amount as the POS states it (Pay10: asked about with it).
    pub sale_amount: Option<Minor>,
}

/// Refusals before the provider is called: no refund record is left behind.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("the original transaction was not found at the provider")]
    TransactionNotFound,
    #[error(
        "the original transaction has status {0:?}; only successful transactions can be refunded"
    )]
    NotRefundable(String),
    #[error("the refund currency {requested} does not match the sale currency {sale}")]
    CurrencyMismatch { requested: String, sale: String },
    #[error("the settle currency {requested} does not match the sale's settle currency {sale}")]
    SettleCurrencyMismatch { requested: String, sale: String },
    #[error("the refund exceeds the refundable amount ({refundable} {currency} left)")]
    ExceedsRefundable {
        refundable: String,
        currency: String,
    },
    #[error("this API client has no {0} account configured")]
    ProviderNotConfigured(ProviderKind),
    #[error("the provider could not be asked about the original transaction; nothing was refunded, try again")]
    ProviderUnavailable,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What `POST /v1/refunds` answers.
#[derive(Debug)]
pub enum Created {
    /// A new refund, just recorded and sent (201).
    New(RefundRow),
    /// A stored response replayed (same status and body).
    Replay { status: u16, body: String },
    /// The first request with this key (or `refund_reference`) is still
    /// running (409, retry shortly).
    InProgress {
        /// Matched by `refund_reference` (the request sent no key that matched).
        by_reference: bool,
    },
    /// The key (or `refund_reference`) was used with a different body (422):
    /// the refund it made, and the fields that differ.
    Mismatch {
        existing: Box<RefundRow>,
        differing: Vec<&'static str>,
        by_reference: bool,
    },
    /// The first request died after recording the refund: its current state (201).
    Current(RefundRow),
}

/// A provider account ready to use.
#[derive(Debug)]
pub struct AccountHandle {
    pub account: Account,
    pub client: ProviderClient,
}

pub struct Gateway {
    pub store: Store,
    pub accounts: HashMap<String, Arc<AccountHandle>>,
    pub clients: Vec<Arc<Client>>,
    pub provider_timeout: Duration,
    pub reconcile: lifecycle::Policy,
    pub merchant_name: String,
    pub operators: Vec<Arc<crate::config::Operator>>,
    /// A refund pending this long joins the review queue.
    pub review_after: Duration,
    /// Receipt emails are enqueued only when SMTP is configured.
    pub email_enabled: bool,
    pub clock: Clock,
    /// A seam for tests ([`Gateway::with_pauses`]): pauses a request
    /// between its steps. `None` in production.
    pause: Option<PauseHook>,
    /// For each account, the accounts with the very same credentials (itself
    /// included, sorted): a webhook one of them verifies, all of them verify.
    credential_groups: HashMap<String, Vec<String>>,
    /// The ids of refunds this process changed, for waiting requests
    /// ([`Gateway::wait_for_final`]).
    changes: tokio::sync::broadcast::Sender<RefundId>,
    /// Set when the process stops: waiting requests answer at once.
    stopping: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("store", &self.store)
            .field("accounts", &self.accounts.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// What the gateway is made of: the accounts, API clients and operators it
/// serves, and the few settings its rules need (the composition root,
/// [`crate::gateway_settings`], takes them from the configuration).
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub accounts: Vec<Account>,
    pub clients: Vec<Client>,
    pub operators: Vec<Operator>,
    pub http: HttpSettings,
    pub policy: lifecycle::Policy,
    /// Printed on receipts of accounts without a store name.
    pub merchant_name: String,
    /// A refund pending this long joins the review queue.
    pub review_after: Duration,
    /// Receipt emails are enqueued only when SMTP is configured.
    pub email_enabled: bool,
}

impl Gateway {
    pub fn new(settings: GatewaySettings, store: Store) -> Self {
        let http = http_client(settings.http);
        let accounts = settings
            .accounts
            .iter()
            .map(|a| {
                let client = ProviderClient::new(http.clone(), &a.credentials);
                (
                    a.name.clone(),
                    Arc::new(AccountHandle {
                        account: a.clone(),
                        client,
                    }),
                )
            })
            .collect::<HashMap<String, Arc<AccountHandle>>>();
        let credential_groups = accounts
            .iter()
            .map(|(name, h)| {
                let mut group: Vec<String> = accounts
                    .iter()
                    .filter(|(_, o)| o.client.same_credentials(&h.client))
                    .map(|(n, _)| n.clone())
                    .collect();
                group.sort();
                (name.clone(), group)
            })
            .collect();
        Gateway {
            store,
            accounts,
            credential_groups,
            clock: Clock::default(),
            pause: None,
            clients: settings.clients.into_iter().map(Arc::new).collect(),
            provider_timeout: settings.http.timeout,
            reconcile: settings.policy,
            merchant_name: settings.merchant_name,
            operators: settings.operators.into_iter().map(Arc::new).collect(),
            review_after: settings.review_after,
            email_enabled: settings.email_enabled,
            changes: tokio::sync::broadcast::channel(1024).0,
            stopping: tokio::sync::watch::channel(false).0,
        }
    }

    /// The process is stopping: requests waiting for an outcome answer
    /// with the refund as it is (so a graceful stop is not held up).
    pub fn stop_waiting(&self) {
        self.stopping.send_replace(true);
    }

    /// The refund `row` once it is final, or as it is when `wait` has
    /// passed. A change by this process wakes the wait at once; one by
    /// another process is seen by a re-read every [`WAIT_POLL`] (one short
    /// indexed read; no database connection is held while waiting).
    pub async fn wait_for_final(
        &self,
        client: &str,
        mut row: RefundRow,
        wait: Duration,
    ) -> Result<RefundRow, StoreError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut changes = self.changes.subscribe();
        let mut stopping = self.stopping.subscribe();
        while row.status == Status::Pending {
            let now = tokio::time::Instant::now();
            if now >= deadline || *stopping.borrow() {
                break;
            }
            let until = (now + WAIT_POLL).min(deadline);
            let id = row.id.clone();
            let stop = stopping.changed();
            let _ = tokio::time::timeout_at(until, async {
                tokio::pin!(stop);
                loop {
                    tokio::select! {
                        _ = &mut stop => return,
                        got = changes.recv() => match got {
                            Ok(changed) if changed == id => return,
                            Ok(_) => {}
                            // Missed some: re-read to be sure.
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                                std::future::pending::<()>().await
                            }
                        },
                    }
                }
            })
            .await;
            match self.store.get_refund(client, &row.id).await? {
                Some(r) => row = r,
                None => break,
            }
        }
        Ok(row)
    }

    /// The gateway with `hook` called at every [`Step`] of a request (the
    /// stall-injection tests hold a request there).
    pub fn with_pauses(mut self, hook: PauseHook) -> Self {
        self.pause = Some(hook);
        self
    }

    /// Reads the database's clock and goes by it from now on (see
    /// [`Clock`]). A reading that took longer than a second is not trusted
    /// (the previous one stays). Returns the host's clock minus the
    /// database's (ms); a difference beyond [`CLOCK_SKEW_WARNING_MS`] is
    /// logged as an ERROR.
    pub async fn sync_clock(&self) -> Result<i64, StoreError> {
        let started = std::time::Instant::now();
        let host_before = self.clock.host_now();
        let db = self.store.database_time().await?;
        let rtt = started.elapsed();
        if rtt > Duration::from_secs(1) {
            tracing::warn!(
                rtt_ms = rtt.as_millis(),
                "the database's clock took too long to read; keeping the previous reading"
            );
            return Ok(self.clock.host_skew_ms());
        }
        let host = host_before + rtt / 2;
        let db = db.unwrap_or(host);
        let previous = self.clock.host_skew_ms();
        self.clock.anchor(db, started + rtt / 2, host);
        let skew = host.ms_since(db);
        crate::metrics::clock_skew(skew);
        if skew.abs() > CLOCK_SKEW_WARNING_MS && (previous - skew).abs() > CLOCK_SKEW_WARNING_MS / 2
        {
            tracing::error!(
                skew_ms = skew,
                "this host's clock is {:.1} s {} the database's; the gateway goes by the database's clock, but fix this host's time sync (NTP)",
                skew.abs() as f64 / 1000.0,
                if skew > 0 { "ahead of" } else { "behind" }
            );
        }
        Ok(skew)
    }

    /// The store's time zone for a refund's receipt, if its account has one.
    pub fn time_zone(&self, row: &RefundRow) -> Option<jiff::tz::TimeZone> {
        self.accounts
            .get(&row.account)
            .and_then(|h| h.account.time_zone.clone())
    }

    /// The store name printed on a refund's receipt.
    pub fn store_name(&self, row: &RefundRow) -> String {
        self.accounts
            .get(&row.account)
            .map(|h| h.account.store_name.clone())
            .unwrap_or_else(|| self.merchant_name.clone())
    }

    /// Applies `t` to the refund `known` (as its caller last read it): the
    /// one path every refund change takes. The lifecycle decides the change
    /// from the row as it is; if another writer got there first, the row is
    /// read again and the lifecycle asked again.
    pub async fn apply(&self, known: &RefundRow, t: Transition<'_>) -> Result<Applied, StoreError> {
        let receipt = self
            .accounts
            .get(&known.account)
            .filter(|_| self.email_enabled)
            .map(|h| ReceiptSettings {
                store_name: &h.account.store_name,
                time_zone: h.account.time_zone.as_ref(),
            });
        let policy = self.reconcile;
        let deliver_events = self
            .clients
            .iter()
            .any(|c| c.name == known.client && !c.webhooks.is_empty());
        let applied = apply_with(&self.store, known, |current| {
            let ctx = Context {
                now: self.clock.now(),
                policy: &policy,
                receipt,
                deliver_events,
            };
            lifecycle::transition(current, &t, &ctx)
        })
        .await?;
        if let Applied::Changed(c) = &applied {
            // Nobody waiting is fine (no receiver).
            let _ = self.changes.send(c.after().id.clone());
        }
        Ok(applied)
    }

    /// The accounts sharing `account`'s credentials (at least `account`).
    pub fn credential_group(&self, account: &str) -> Vec<String> {
        self.credential_groups
            .get(account)
            .cloned()
            .unwrap_or_else(|| vec![account.to_string()])
    }

    async fn pause_at(&self, step: Step) {
        if let Some(hook) = &self.pause {
            hook(step).await;
        }
    }

    /// How long a first request may hold its idempotency key before another
    /// request may take its refund as abandoned (the process died mid-call).
    fn inflight_window(&self) -> Duration {
        self.provider_timeout * 2 + Duration::from_secs(2)
    }

    fn answer_duplicate(existing: RefundRow, req: &NewRefund, now: Timestamp) -> Created {
        // Matched by reference when the key (if any) is not the one stored.
        let by_reference = req.idempotency_key.is_none()
            || existing.idempotency_key.as_deref() != req.idempotency_key.as_deref();
        if existing.request_hash != req.request_hash {
            let differing = differing_fields(&existing, req);
            return Created::Mismatch {
                existing: Box::new(existing),
                differing,
                by_reference,
            };
        }
        match (existing.response_code, existing.response_body.clone()) {
            (Some(code), Some(body)) => Created::Replay {
                status: u16::try_from(code).unwrap_or(201),
                body,
            },
            _ if existing.inflight_until.is_some_and(|t| t > now) => {
                Created::InProgress { by_reference }
            }
            _ => Created::Current(existing),
        }
    }

    /// The whole `POST /v1/refunds` flow after validation.
    ///
    /// There is no read for duplicates up front: the insert itself detects a
    /// taken key or reference. A refusal, though, is checked against earlier
    /// requests first, so a replay gets its stored answer rather than a
    /// refusal (say, after the first request refunded the whole sale).
    pub async fn create(&self, client: &Client, req: NewRefund) -> Result<Created, Refusal> {
        match self.create_new(client, &req).await {
            Err(Refusal::Store(e)) => Err(Refusal::Store(e)),
            Err(refusal) => {
                match self
                    .store
                    .find_duplicate(
                        &client.name,
                        req.idempotency_key.as_deref(),
                        req.refund_reference.as_deref(),
                    )
                    .await?
                {
                    Some(existing) => Ok(Self::answer_duplicate(existing, &req, self.clock.now())),
                    None => Err(refusal),
                }
            }
            ok => ok,
        }
    }

    /// Checks the sale with the provider where it can be asked (Pockyt):
    /// what the refund may be made against, or a refusal.
    async fn check_sale(
        &self,
        handle: &AccountHandle,
        req: &NewRefund,
    ) -> Result<SaleCheck, Refusal> {
        match handle
            .client
            .lookup_sale_as(
                req.transaction_no.as_deref(),
                req.reference.as_deref(),
                req.sale_amount.map(|a| (a, req.currency)),
            )
            .await
        {
            None => Ok(SaleCheck {
                transaction_no: req.transaction_no.clone().unwrap_or_default(),
                reference: req.reference.clone(),
                settle_currency: req.settle_currency,
                terms: SaleTerms::default(),
            }),
            Some(SaleLookup::NotFound) => Err(Refusal::TransactionNotFound),
            Some(SaleLookup::Unavailable(reason)) => {
                tracing::warn!(%reason, "sale lookup failed before refund");
                Err(Refusal::ProviderUnavailable)
            }
            Some(SaleLookup::Found(sale)) => self.check_found_sale(handle, req, sale).await,
        }
    }

    async fn check_found_sale(
        &self,
        handle: &AccountHandle,
        req: &NewRefund,
        sale: SaleInfo,
    ) -> Result<SaleCheck, Refusal> {
        if req.reference.is_some() && sale.reference.is_some() && req.reference != sale.reference {
            return Err(Refusal::TransactionNotFound);
        }
        // Found by the other id (Pay10: by ORDER_ID): both must be the sale's.
        if req
            .transaction_no
            .as_deref()
            .is_some_and(|t| !t.is_empty() && t != sale.transaction_no)
        {
            return Err(Refusal::TransactionNotFound);
        }
        if !req.provider.rules().sale_is_refundable(&sale.status) {
            return Err(Refusal::NotRefundable(sale.status));
        }
        if sale.currency != req.currency.code() {
            return Err(Refusal::CurrencyMismatch {
                requested: req.currency.code().into(),
                sale: sale.currency,
            });
        }
        let sale_settle = match sale.settle_currency.as_deref() {
            Some(code) => match crate::money::Currency::from_code(code) {
                Ok(c) => Some(c),
                Err(_) => {
                    tracing::warn!(settle_currency = %code, "provider reported an unknown settle currency");
                    return Err(Refusal::ProviderUnavailable);
                }
            },
            None => None,
        };
        if let (Some(asked), Some(settles)) = (req.settle_currency, sale_settle) {
            if asked != settles {
                return Err(Refusal::SettleCurrencyMismatch {
                    requested: asked.code().into(),
                    sale: settles.code().into(),
                });
            }
        }
        let Ok(amount) = req.currency.parse_amount(&sale.amount) else {
            tracing::warn!(amount = %sale.amount, "provider reported an unreadable sale amount");
            return Err(Refusal::ProviderUnavailable);
        };
        let external = self
            .count_listed_refunds(handle, &sale, req.currency)
            .await?;
        Ok(SaleCheck {
            transaction_no: sale.transaction_no,
            reference: sale.reference,
            settle_currency: req.settle_currency.or(sale_settle).or(Some(req.currency)),
            terms: SaleTerms {
                amount_minor: Some(amount),
                currency_confirmed: true,
                external_minor: Minor::new(external).unwrap_or_default(),
            },
        })
    }

    /// What the provider lists as applied on a sale counts against it,
    /// whatever our records say: the minor units the reservations of our
    /// own live refunds do not already hold. That is every listed refund
    /// made elsewhere, every listed refund of ours that we recorded `failed`
    /// (the provider got it after all: its reservation was released), and
    /// whatever a listed refund of ours exceeds the amount we asked for.
    /// Each of ours that the listing contradicts is flagged for review now.
    /// (Ours are recorded before the provider hears of them, so none is
    /// mistaken for one made elsewhere.)
    async fn count_listed_refunds(
        &self,
        handle: &AccountHandle,
        sale: &SaleInfo,
        currency: Currency,
    ) -> Result<i64, Refusal> {
        if sale.refunded.is_empty() {
            // Nothing listed: nothing to tell apart (and no query on the hot path).
            return Ok(0);
        }
        let ours = self
            .store
            .refunds_on_transaction(&handle.account.name, &sale.transaction_no)
            .await?;
        let mut counted: i64 = 0;
        for listed in &sale.refunded {
            let Ok(amount) = currency.parse_amount(&listed.amount) else {
                tracing::warn!(amount = %listed.amount, "provider listed an unreadable refund amount");
                continue;
            };
            let amount = amount.get();
            let own = listed
                .reference
                .as_ref()
                .and_then(|r| ours.iter().find(|o| &o.provider_reference == r));
            let Some(own) = own else {
                counted = counted.saturating_add(amount);
                continue;
            };
            let contradiction = if own.status == Status::Failed {
                counted = counted.saturating_add(amount);
                Some(format!(
                    "the provider lists this refund as applied on its sale ({} {}) but it is recorded failed",
                    listed.amount,
                    currency.code()
                ))
            } else if amount != own.amount_minor.get() {
                counted = counted.saturating_add((amount - own.amount_minor.get()).max(0));
                Some(format!(
                    "the provider lists this refund on its sale as {} {}, not the {} {} recorded",
                    listed.amount,
                    currency.code(),
                    currency.format(own.amount_minor),
                    currency.code()
                ))
            } else {
                None
            };
            if let Some(what) = contradiction {
                tracing::error!(refund_id = %own.id, %what, "provider's sale listing contradicts a refund; flagged for review");
                let t = Transition::Contradicted {
                    what: &what,
                    source: EventSource::Reconciliation,
                };
                self.apply(own, t).await?;
            }
        }
        Ok(counted)
    }

    fn new_row(
        &self,
        client: &Client,
        handle: &AccountHandle,
        req: &NewRefund,
        sale: &SaleCheck,
        now: Timestamp,
    ) -> RefundRow {
        RefundRow {
            settle_currency: sale.settle_currency,
            reference: sale.reference.clone(),
            refund_reference: req.refund_reference.clone(),
            reason: req.reason.clone(),
            receipt_email: req.receipt_email.clone(),
            metadata: req.metadata.clone(),
            idempotency_key: req.idempotency_key.clone(),
            inflight_until: Some(now + self.inflight_window()),
            // If this process dies mid-call, reconciliation picks the refund up.
            next_check_at: Some(now + self.inflight_window()),
            ..RefundRow::recorded(NewRefundRow {
                id: RefundId::generate(),
                client: client.name.clone(),
                account: handle.account.name.clone(),
                provider: req.provider,
                livemode: handle.account.livemode,
                amount: req.amount,
                currency: req.currency,
                transaction_no: sale.transaction_no.clone(),
                provider_reference: provider_reference(),
                request_hash: req.request_hash.clone(),
                now,
            })
        }
    }

    /// The flow after validation: check the sale, record and reserve (one
    /// atomic write), claim the send (a compare-and-swap), call the provider,
    /// record its answer (a compare-and-swap). A process may pause between any
    /// two of these for any time; see [`lifecycle`] for why that is safe.
    async fn create_new(&self, client: &Client, req: &NewRefund) -> Result<Created, Refusal> {
        let handle = client
            .accounts
            .get(&req.provider)
            .and_then(|name| self.accounts.get(name))
            .ok_or(Refusal::ProviderNotConfigured(req.provider))?
            .clone();
        let sale = self.check_sale(&handle, req).await?;
        self.pause_at(Step::BeforeRecord).await;

        let row = self.new_row(client, &handle, req, &sale, self.clock.now());
        match self.store.create_refund(&row, &sale.terms).await? {
            CreateOutcome::Created => {}
            CreateOutcome::Duplicate => {
                let existing = self
                    .store
                    .find_duplicate(
                        &client.name,
                        req.idempotency_key.as_deref(),
                        req.refund_reference.as_deref(),
                    )
                    .await?;
                return match existing {
                    Some(e) => Ok(Self::answer_duplicate(e, req, self.clock.now())),
                    None => Ok(Created::InProgress {
                        by_reference: req.idempotency_key.is_none(),
                    }),
                };
            }
            CreateOutcome::CurrencyMismatch { sale_currency } => {
                return Err(Refusal::CurrencyMismatch {
                    requested: req.currency.code().into(),
                    sale: sale_currency,
                })
            }
            CreateOutcome::ExceedsRefundable { refundable } => {
                return Err(Refusal::ExceedsRefundable {
                    refundable: req.currency.format(refundable),
                    currency: req.currency.code().into(),
                })
            }
        }
        self.pause_at(Step::BeforeClaim).await;

        let send_by = self.clock.now() + self.send_budget();
        let claim = Transition::Claimed {
            version: row.version,
            send_by,
        };
        let row = match self.apply(&row, claim).await? {
            Applied::Changed(c) => (*c).into_after(),
            applied => {
                // Someone decided this refund before it was claimed (it was
                // taken as never submitted): the provider must not be called.
                tracing::warn!(refund_id = %row.id, "send claim lost; the provider is not called");
                let current = applied
                    .into_row()
                    .ok_or_else(|| StoreError::Corrupt(format!("refund {} vanished", row.id)))?;
                return Ok(Created::Current(current));
            }
        };
        self.pause_at(Step::BeforeCall).await;

        if self.clock.now() > send_by {
            // Paused past the deadline that others rely on: do not send.
            tracing::warn!(refund_id = %row.id, "send deadline passed before the call; abandoning it");
            return self
                .record_response(&row, Transition::SenderAbandoned)
                .await;
        }
        let call = RefundCall {
            refund_id: row.id.to_string(),
            provider_reference: row.provider_reference.clone(),
            transaction_no: Some(row.transaction_no.clone()).filter(|t| !t.is_empty()),
            reference: row.reference.clone(),
            amount: req.amount,
            currency: req.currency,
            settle_currency: sale.settle_currency,
        };
        let answer = handle.client.refund(&call).await;
        self.pause_at(Step::BeforeOutcome).await;
        self.record_response(&row, Transition::Answered(&answer))
            .await
    }

    /// Applies the request's own final write, which stores the response a
    /// replay of the request gets.
    async fn record_response(
        &self,
        row: &RefundRow,
        t: Transition<'_>,
    ) -> Result<Created, Refusal> {
        let applied = self.apply(row, t).await?;
        Ok(Created::New(applied.into_row().ok_or_else(|| {
            StoreError::Corrupt(format!(
                "refund {}: the request's last write refused",
                row.id
            ))
        })?))
    }

    /// Asks the provider for a refund's status and applies the answer.
    pub async fn sync(&self, row: &RefundRow) -> Result<RefundRow, StoreError> {
        self.ask_provider(row, Asker::Client).await
    }

    /// Asks the provider about `row` and applies the answer as a status
    /// query by `by`; the row as it is afterwards.
    async fn ask_provider(&self, row: &RefundRow, by: Asker<'_>) -> Result<RefundRow, StoreError> {
        let Some(handle) = self.accounts.get(&row.account) else {
            return Ok(row.clone());
        };
        let asked_at = self.clock.now();
        let answer = handle.client.refund_status(&status_query(row)).await;
        let t = Transition::StatusQueried {
            answer: &answer,
            by,
            asked_at,
        };
        let applied = self.apply(row, t).await?;
        Ok(applied.into_row().unwrap_or_else(|| row.clone()))
    }

    /// A client's refund.
    pub async fn refund(&self, client: &str, id: &str) -> Result<Option<RefundRow>, StoreError> {
        self.store.get_refund(client, id).await
    }

    /// A client's refunds, newest first.
    pub async fn refunds(
        &self,
        client: &str,
        filter: &crate::store::ListFilter,
    ) -> Result<Vec<RefundRow>, StoreError> {
        self.store.list_refunds(Some(client), filter).await
    }

    /// Whether the database answers, and which backend it is.
    pub async fn database_ready(&self) -> Result<&'static str, StoreError> {
        self.store.ping().await?;
        self.store.write_probe(self.clock.now()).await?;
        Ok(self.store.backend().as_str())
    }

    /// How many refunds need a person (for the metrics).
    pub async fn review_count(&self) -> Result<i64, StoreError> {
        self.store.review_count(self.review_cutoff()).await
    }

    /// Pending refunds: how many, and since when the oldest (for the metrics).
    pub async fn pending_summary(&self) -> Result<(i64, Option<Timestamp>), StoreError> {
        self.store.pending_summary().await
    }

    /// A refund's history, oldest first; `None` if it is not the client's
    /// (`client`: `None` for operators, who see every client's).
    pub async fn history(
        &self,
        client: Option<&str>,
        id: &str,
    ) -> Result<Option<Vec<RefundEvent>>, StoreError> {
        let row = match client {
            Some(c) => self.store.get_refund(c, id).await?,
            None => self.store.get_refund_any_client(id).await?,
        };
        match row {
            Some(r) => Ok(Some(self.store.refund_events(&r.id).await?)),
            None => Ok(None),
        }
    }

    /// Refunds that need a person (every client's), oldest first would hide
    /// new flags: newest first, like every list.
    pub async fn review_queue(&self, limit: i64) -> Result<Vec<RefundRow>, StoreError> {
        self.review_queue_ordered(limit, false).await
    }

    /// The review queue, oldest first (`oldest_first`: the one waiting
    /// longest comes first, for a person working through it) or newest first.
    pub async fn review_queue_ordered(
        &self,
        limit: i64,
        oldest_first: bool,
    ) -> Result<Vec<RefundRow>, StoreError> {
        let filter = crate::store::ListFilter {
            needs_review_before: Some(self.review_cutoff()),
            limit,
            oldest_first,
            ..Default::default()
        };
        let mut rows = self.store.list_refunds(None, &filter).await?;
        rows.truncate(usize::try_from(limit).unwrap_or(0));
        Ok(rows)
    }

    /// Pending refunds created before this need review.
    pub fn review_cutoff(&self) -> Timestamp {
        self.clock.now() - self.review_after
    }

    /// The reason a refund is in the review queue, if it is.
    pub fn review_reason(&self, row: &RefundRow) -> Option<String> {
        row.review_reason.clone().or_else(|| {
            (row.status == Status::Pending && row.created_at <= self.review_cutoff()).then(|| {
                format!(
                    "pending for more than {}",
                    human_duration(self.review_after)
                )
            })
        })
    }

    /// The refund object as every endpoint shows it: one rendering of one
    /// row at one moment (with its `review_reason` as the queue sees it).
    pub fn render(&self, row: &RefundRow) -> RefundObject {
        RefundObject {
            review_reason: self.review_reason(row),
            ..RefundObject::from(row)
        }
    }

    /// An operator asks the provider now; the answer is applied (and recorded
    /// with the operator's name) like any status query.
    pub async fn operator_sync(
        &self,
        id: &str,
        actor: &str,
    ) -> Result<Option<RefundRow>, StoreError> {
        let Some(row) = self.store.get_refund_any_client(id).await? else {
            return Ok(None);
        };
        Ok(Some(self.ask_provider(&row, Asker::Operator(actor)).await?))
    }

    /// An operator resolves a refund with a note; the provider is asked first
    /// and must confirm it (see [`lifecycle::transition`]). The
    /// resolution, the operator, the note and the provider's answer are
    /// recorded in the refund's history. `None`: no such refund.
    pub async fn resolve(
        &self,
        id: &str,
        actor: &str,
        target: Status,
        note: &str,
    ) -> Result<Option<Applied>, StoreError> {
        let Some(row) = self.store.get_refund_any_client(id).await? else {
            return Ok(None);
        };
        let Some(handle) = self.accounts.get(&row.account) else {
            return Ok(Some(Applied::Refused(
                lifecycle::ResolveRefusal::Contradicted(
                    "nothing: the refund's account is no longer configured".into(),
                ),
            )));
        };
        let asked_at = self.clock.now();
        let reply = handle.client.refund_status(&status_query(&row)).await;
        let t = Transition::OperatorResolved {
            target,
            reply: &reply,
            actor,
            note,
            asked_at,
        };
        Ok(Some(self.apply(&row, t).await?))
    }

    /// How long after its claim a sender may still call the provider.
    fn send_budget(&self) -> Duration {
        self.provider_timeout
    }
}

/// What applying a transition did.
#[derive(Debug)]
pub enum Applied {
    /// The change was written.
    Changed(Box<Change>),
    /// Nothing to change: the row as it is.
    Unchanged(Box<RefundRow>),
    /// An operator's resolution the provider's records do not support.
    Refused(ResolveRefusal),
}

impl Applied {
    /// The refund as it is now (`None` for a refusal).
    pub fn into_row(self) -> Option<RefundRow> {
        match self {
            Applied::Changed(c) => Some((*c).into_after()),
            Applied::Unchanged(r) => Some(*r),
            Applied::Refused(_) => None,
        }
    }
}

/// The compare-and-swap loop every refund change goes through: `decide`
/// (the lifecycle, given the row as it is) makes the change, the store
/// executes it only on that very version; on a lost race the row is read
/// again and `decide` asked again.
pub async fn apply_with(
    store: &Store,
    known: &RefundRow,
    mut decide: impl FnMut(&RefundRow) -> Result<Option<Change>, ResolveRefusal>,
) -> Result<Applied, StoreError> {
    let mut current = known.clone();
    loop {
        let change = match decide(&current) {
            Err(refused) => return Ok(Applied::Refused(refused)),
            Ok(None) => return Ok(Applied::Unchanged(Box::new(current))),
            Ok(Some(c)) => c,
        };
        if store.apply_change(&change).await? {
            return Ok(Applied::Changed(Box::new(change)));
        }
        current = store
            .get_refund_any_client(&known.id)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("refund {} vanished", known.id)))?;
    }
}

/// What a refund is made against, after the sale check.
#[derive(Debug)]
struct SaleCheck {
    transaction_no: String,
    reference: Option<String>,
    settle_currency: Option<crate::money::Currency>,
    terms: SaleTerms,
}

pub fn status_query(row: &RefundRow) -> StatusQuery {
    StatusQuery {
        refund_id: row.id.to_string(),
        provider_reference: row.provider_reference.clone(),
        provider_refund_id: row.provider_refund_id.clone(),
        transaction_no: Some(row.transaction_no.clone()).filter(|t| !t.is_empty()),
        reference: row.reference.clone(),
    }
}

/// The request fields in which `req` differs from the refund `existing`
/// was made by (what an idempotency mismatch names).
fn differing_fields(existing: &RefundRow, req: &NewRefund) -> Vec<&'static str> {
    let e = existing;
    [
        ("provider", e.provider != req.provider),
        (
            "transaction_no",
            req.transaction_no
                .as_ref()
                .is_some_and(|t| t != &e.transaction_no),
        ),
        (
            "reference",
            req.reference.is_some() && req.reference != e.reference,
        ),
        ("amount", e.amount_minor != req.amount),
        ("currency", e.currency != req.currency),
        (
            "settle_currency",
            req.settle_currency.is_some() && req.settle_currency != e.settle_currency,
        ),
        (
            "refund_reference",
            e.refund_reference != req.refund_reference,
        ),
        ("reason", e.reason != req.reason),
        ("receipt_email", e.receipt_email != req.receipt_email),
        ("metadata", e.metadata != req.metadata),
    ]
    .into_iter()
    .filter_map(|(field, differs)| differs.then_some(field))
    .collect()
}

/// A worker's wait between passes: `false` once `shutdown` says stop.
pub(crate) async fn wait_for_next_pass(
    interval: Duration,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(interval) => {}
        _ = shutdown.changed() => return false,
    }
    !*shutdown.borrow()
}

/// A duration in the largest whole unit that states it exactly enough for
/// a person: "90 seconds", "15 minutes", "2 hours", "1 minute".
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (n, unit) = if secs == 0 {
        (d.as_millis() as u64, "millisecond")
    } else if secs % 3600 == 0 {
        (secs / 3600, "hour")
    } else if secs % 60 == 0 {
        (secs / 60, "minute")
    } else {
        (secs, "second")
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// 20 upper-case alphanumerics: valid as Pay10's REFUND_ORDER_ID (6-20) and
/// Pockyt's refundReference, unique per refund (ULID time + randomness).
fn provider_reference() -> String {
    let u = ulid::Ulid::new().to_string();
    format!("{}{}", &u[..10], &u[16..])
}
