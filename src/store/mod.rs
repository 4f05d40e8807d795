//! Persistence: one interface ([`StoreBackend`]) with a store per database.
//!
//! - [`sqlite`]: the embedded default. INTEGER milliseconds and 0/1 booleans,
//!   its own group commit and write gate (one writer at a time).
//! - [`postgres`]: the production store, with native column types
//!   (`timestamptz`, `boolean`, `jsonb`, checked text enums), `FOR UPDATE SKIP
//!   LOCKED` leases and single-statement writes (data-modifying CTEs).
//!
//! Rows are typed ([`model`]) and decoded once at this boundary ([`codec`]).
//! What both stores share lives here: the compare-and-swap every refund
//! change is written with ([`push_update`]; the change itself, with its
//! history line and effects, is decided by the lifecycle), the list
//! filters, and connection errors an operator can act on. The store knows
//! nothing of providers' protocols or of HTTP.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

mod batch;
mod codec;
mod events;
pub use events::EventStore;
mod console;
pub use console::{ConsoleStore, SessionRow};
mod reconciliations;
pub use reconciliations::{
    ItemRow, OutsideRefund, ReconciliationStore, ReportRow, RunClaim, SaleBooks,
};
mod model;
mod postgres;
mod sqlite;

pub use model::*;

use crate::money::{Currency, Minor};
use crate::types::{ProviderKind, RefundId, Timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "sqlite" => Ok(Backend::Sqlite),
            "postgres" => Ok(Backend::Postgres),
            other => Err(format!("unknown backend {other:?}: sqlite or postgres")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The database cannot take writes now (its disk is full or failing, it
    /// is locked or restarting): retry later.
    #[error("the database cannot take the write now: {0}")]
    Unavailable(String),
    /// The database refused a write for another reason.
    #[error("the database refused the write: {0}")]
    WriteFailed(String),
    /// The database cannot be reached at start-up: where, and why, once.
    #[error("cannot connect to the database at {target}: {cause}")]
    Connect { target: String, cause: String },
}

impl StoreError {
    /// True when the database cannot take the work now, through no fault of
    /// the request (unreachable, restarting, its disk full or failing): a
    /// `503` with `Retry-After`, never "corrupt" and never a `500`.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Db(
                sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed,
            )
            | StoreError::Unavailable(_) => true,
            StoreError::Db(sqlx::Error::Database(e)) => {
                if e.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                    // SQLite's primary result codes (the low byte): BUSY,
                    // LOCKED, IOERR, FULL, CANTOPEN.
                    e.code()
                        .and_then(|c| c.parse::<i32>().ok())
                        .is_some_and(|c| matches!(c & 0xff, 5 | 6 | 10 | 13 | 14))
                } else {
                    e.code().is_some_and(|c| {
                        c.starts_with("57P") || c.starts_with("08") || c.starts_with("53")
                    })
                }
            }
            _ => false,
        }
    }

    /// The unique constraint (by name) that refused a write, if one did.
    fn violated_unique(e: &sqlx::Error) -> Option<String> {
        match e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                Some(d.constraint().unwrap_or_default().to_string())
            }
            _ => None,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What a database must do for the gateway. Every write that changes a
/// refund's status or submission is a compare-and-swap on the row its writer
/// read ([`StoreBackend::claim_send`], [`StoreBackend::apply_change`]).
#[async_trait::async_trait]
pub trait StoreBackend: Send + Sync + 'static {
    fn backend(&self) -> Backend;
    /// The POS's events and their webhook deliveries.
    fn events(&self) -> &dyn EventStore;
    /// The daily reconciliation's reports and the refunds made elsewhere.
    fn reconciliations(&self) -> &dyn ReconciliationStore;
    /// The operators' console: sessions and the overview's counts.
    fn console(&self) -> &dyn ConsoleStore;
    async fn ping(&self) -> Result<()>;
    /// The database server's clock (Unix ms), where it has its own: the one
    /// clock every gateway process on this database goes by. `None`: the
    /// database runs on this host (SQLite), whose clock it is.
    async fn database_time(&self) -> Result<Option<Timestamp>>;
    /// Writes one row, as a refund write would: a database that answers
    /// reads but cannot take writes (its disk full) fails this.
    async fn write_probe(&self, now: Timestamp) -> Result<()>;
    async fn close(&self);

    /// The refund a repeated request (same key or same `refund_reference`) refers to.
    async fn find_duplicate(
        &self,
        client: &str,
        idempotency_key: Option<&str>,
        refund_reference: Option<&str>,
    ) -> Result<Option<RefundRow>>;

    /// Records a new refund and reserves its amount against the sale,
    /// atomically: a sale row is created or added to only while every
    /// reservation plus the refunds made elsewhere stay within the sale, and
    /// only in the sale's currency once the provider confirmed it.
    async fn create_refund(&self, new: &RefundRow, sale: &SaleTerms) -> Result<CreateOutcome>;

    /// Executes one refund change (decided by the lifecycle): the
    /// compare-and-swap on the version, status and submission its writer
    /// read, with its effects and history line in the same transaction.
    /// `false`: someone else wrote first, nothing was written. The send
    /// claim is such a change: only the claim that applied may call the
    /// provider.
    async fn apply_change(&self, change: &Change) -> Result<bool>;

    /// A refund's history, oldest first.
    async fn refund_events(&self, refund_id: &str) -> Result<Vec<RefundEvent>>;
    async fn get_refund(&self, client: &str, id: &str) -> Result<Option<RefundRow>>;
    async fn get_refund_any_client(&self, id: &str) -> Result<Option<RefundRow>>;
    /// Refunds newest first, with keyset pagination: one client's, or (for
    /// operators, `None`) every client's.
    async fn list_refunds(&self, client: Option<&str>, f: &ListFilter) -> Result<Vec<RefundRow>>;
    /// Claims up to `limit` pending refunds due for a status check, leased to
    /// this process until `lease_until`.
    async fn claim_due(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: i64,
    ) -> Result<Vec<RefundRow>>;
    /// How many refunds need a person: flagged, or pending since before `before`.
    async fn review_count(&self, before: Timestamp) -> Result<i64>;
    /// Number of pending refunds and the creation time of the oldest.
    async fn pending_summary(&self) -> Result<(i64, Option<Timestamp>)>;

    /// Stores a verified webhook; `false` if the same event was stored before.
    async fn insert_event(&self, e: &WebhookRow) -> Result<bool>;
    async fn set_event_state(
        &self,
        id: &str,
        state: EventState,
        refund_id: Option<&str>,
        note: Option<&str>,
    ) -> Result<()>;
    /// The refund a provider event names by the provider's refund id or our
    /// reference, among `accounts` (the accounts whose credentials verified it).
    async fn find_refund_by_provider_ids(
        &self,
        accounts: &[String],
        provider_refund_id: Option<&str>,
        provider_reference: Option<&str>,
    ) -> Result<Option<RefundRow>>;
    /// Pending refunds on a sale, among `accounts`.
    async fn pending_on_transaction(
        &self,
        accounts: &[String],
        transaction_no: &str,
    ) -> Result<Vec<String>>;
    /// Our refunds on a sale (every status).
    async fn refunds_on_transaction(
        &self,
        account: &str,
        transaction_no: &str,
    ) -> Result<Vec<RefundRow>>;
    /// Makes pending refunds due for a status query now.
    async fn check_now(&self, ids: &[String], now: Timestamp) -> Result<()>;
    /// Claims unmatched events due for another matching attempt, and events
    /// left `received` for 30 s (their processing was cut off), leased.
    async fn claim_unmatched_events(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: i64,
    ) -> Result<Vec<WebhookRow>>;
    /// A matching attempt that found nothing: the next attempt time (`None`
    /// stops retrying and leaves the event as `state`).
    async fn event_not_matched(
        &self,
        id: &str,
        state: EventState,
        attempts: i64,
        next_attempt_at: Option<Timestamp>,
        note: &str,
    ) -> Result<()>;
    async fn events_for_refund(&self, refund_id: &str) -> Result<Vec<WebhookRow>>;
    async fn events_by_state(&self, state: EventState) -> Result<Vec<WebhookRow>>;

    /// Claims due receipt emails with a lease, so one process sends each.
    async fn claim_emails(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: i64,
    ) -> Result<Vec<OutboxRow>>;
    /// A send attempt: sent, or failed with the next attempt time (`None`
    /// gives up and marks the email abandoned).
    async fn email_attempted(
        &self,
        refund_id: &str,
        now: Timestamp,
        error: Option<&str>,
        next_attempt_at: Option<Timestamp>,
    ) -> Result<()>;
    async fn outbox_entry(&self, refund_id: &str) -> Result<Option<OutboxRow>>;
}

/// The store the gateway holds: a database behind [`StoreBackend`].
#[derive(Clone)]
pub struct Store(Arc<dyn StoreBackend>);

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.0.backend())
            .finish()
    }
}

impl std::ops::Deref for Store {
    type Target = dyn StoreBackend;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl Store {
    /// Connects (creating the SQLite file if needed) and runs migrations. An
    /// unreachable database is reported with its address and cause, once.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        if url.starts_with("sqlite:") {
            Ok(Store(Arc::new(
                sqlite::SqliteStore::connect(url, max_connections).await?,
            )))
        } else {
            Ok(Store(Arc::new(
                postgres::PgStore::connect(url, max_connections).await?,
            )))
        }
    }
}

/// One direct connection first, so that an unreachable database is reported
/// with its address and real cause (a pool only says it timed out).
async fn probe<C: sqlx::Connection>(url: &str) -> Result<()> {
    let target = describe_target(url);
    match tokio::time::timeout(Duration::from_secs(10), C::connect(url)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            Ok(())
        }
        Ok(Err(e)) => Err(StoreError::Connect {
            cause: connect_cause(&e, url),
            target,
        }),
        Err(_) => Err(StoreError::Connect {
            target,
            cause: "no answer within 10 s (a firewall, or the wrong host?)".into(),
        }),
    }
}

/// The list filters, the same on both databases; `time` binds a time (Unix
/// milliseconds) the way the database stores it.
fn push_list_filters<'a, DB, T>(
    q: &mut sqlx::QueryBuilder<'a, DB>,
    client: Option<&'a str>,
    f: &'a ListFilter,
    time: impl Fn(Timestamp) -> T,
) where
    DB: sqlx::Database,
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    &'a String: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Status: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    ProviderKind: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    &'a RefundId: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    T: 'a + sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    q.push(" WHERE 1 = 1");
    if let Some(c) = client {
        q.push(" AND client = ").push_bind(c);
    }
    for (col, val) in [
        ("account", &f.account),
        ("transaction_no", &f.transaction_no),
        ("reference", &f.reference),
        ("refund_reference", &f.refund_reference),
    ] {
        if let Some(v) = val {
            q.push(format_args!(" AND {col} = ")).push_bind(v);
        }
    }
    if let Some(s) = f.status {
        q.push(" AND status = ").push_bind(s);
    }
    if let Some(p) = f.provider {
        q.push(" AND provider = ").push_bind(p);
    }
    if let Some(t) = f.created_from {
        q.push(" AND created_at >= ").push_bind(time(t));
    }
    if let Some(t) = f.created_to {
        q.push(" AND created_at <= ").push_bind(time(t));
    }
    if let Some(t) = f.needs_review_before {
        q.push(" AND (review_reason IS NOT NULL OR (status = 'pending' AND created_at <= ")
            .push_bind(time(t))
            .push("))");
    }
    let (cmp, order) = if f.oldest_first {
        (">", "ASC")
    } else {
        ("<", "DESC")
    };
    if let Some((created, id)) = &f.after {
        q.push(format!(" AND (created_at, id) {cmp} ("))
            .push_bind(time(*created))
            .push(", ")
            .push_bind(id)
            .push(")");
    }
    q.push(format!(" ORDER BY created_at {order}, id {order} LIMIT "))
        .push_bind(f.limit + 1);
}

/// The compare-and-swap every refund change goes through, the same on both
/// databases: the row becomes `after` only if it is still exactly the
/// version, status and submission its writer read (`current`); only the
/// columns that change are written. Values are
/// bound where they appear (no hand-numbered placeholders); `time` binds a
/// time (Unix ms) the way the database stores it.
fn push_update<'a, DB, T>(
    q: &mut sqlx::QueryBuilder<'a, DB>,
    c: &'a Change,
    time: impl Fn(Timestamp) -> T,
) where
    DB: sqlx::Database,
    &'a RefundId: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    &'a Option<String>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Option<i64>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Status: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Option<PendingReason>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    bool: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Submission: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    T: 'a + sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Option<T>: 'a + sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    // Only the columns the change changes: the version the write is
    // conditional on guarantees every other column is as `current` has it.
    let (was, a) = (c.current(), c.after());
    q.push("UPDATE refunds SET version = version + 1, updated_at = ")
        .push_bind(time(a.updated_at));
    if a.status != was.status {
        q.push(", status = ").push_bind(a.status);
    }
    if a.submission != was.submission {
        q.push(", submission = ").push_bind(a.submission);
    }
    for (col, val, old) in [
        (
            "provider_refund_id",
            &a.provider_refund_id,
            &was.provider_refund_id,
        ),
        ("provider_status", &a.provider_status, &was.provider_status),
        ("provider_code", &a.provider_code, &was.provider_code),
        (
            "provider_message",
            &a.provider_message,
            &was.provider_message,
        ),
        ("failure_code", &a.failure_code, &was.failure_code),
        ("failure_message", &a.failure_message, &was.failure_message),
        ("response_body", &a.response_body, &was.response_body),
        ("review_reason", &a.review_reason, &was.review_reason),
    ] {
        if val != old {
            q.push(format_args!(", {col} = ")).push_bind(val);
        }
    }
    if a.announced != was.announced {
        q.push(", announced = ").push_bind(a.announced);
    }
    if a.pending_reason != was.pending_reason {
        q.push(", pending_reason = ").push_bind(a.pending_reason);
    }
    if a.response_code != was.response_code {
        q.push(", response_code = ").push_bind(a.response_code);
    }
    for (col, val, old) in [
        ("inflight_until", a.inflight_until, was.inflight_until),
        ("next_check_at", a.next_check_at, was.next_check_at),
        ("lease_until", a.lease_until, was.lease_until),
        ("send_by", a.send_by, was.send_by),
    ] {
        if val != old {
            q.push(format_args!(", {col} = ")).push_bind(val.map(&time));
        }
    }
    for (col, val, old) in [
        ("check_attempts", a.check_attempts, was.check_attempts),
        ("not_found_streak", a.not_found_streak, was.not_found_streak),
    ] {
        if val != old {
            q.push(format_args!(", {col} = ")).push_bind(val);
        }
    }
    q.push(" WHERE id = ").push_bind(&was.id);
    q.push(" AND version = ").push_bind(was.version);
    q.push(" AND status = ").push_bind(was.status);
    q.push(" AND submission = ").push_bind(was.submission);
}

/// The columns a new refund is recorded with ([`push_new_refund_values`]
/// gives their values, in this order).
const NEW_REFUND: &str = "INSERT INTO refunds (id, client, account, provider, livemode, status, \
    amount_minor, currency, settle_currency, transaction_no, reference, refund_reference, \
    provider_reference, reason, receipt_email, metadata, idempotency_key, request_hash, submission, \
    inflight_until, check_attempts, next_check_at, created_at, updated_at) ";

/// The values of [`NEW_REFUND`]'s columns for `new` (prepared, never
/// checked), each bound where it appears; `time` binds a time (Unix ms) the
/// way the database stores it.
fn push_new_refund_values<'a, DB, T>(
    q: &mut sqlx::QueryBuilder<'a, DB>,
    new: &'a RefundRow,
    time: impl Fn(Timestamp) -> T,
) where
    DB: sqlx::Database,
    &'a RefundId: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    &'a String: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    &'a Option<String>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    ProviderKind: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    bool: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Status: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Minor: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Currency: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Option<Currency>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    sqlx::types::Json<&'a std::collections::BTreeMap<String, String>>:
        sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    T: 'a + sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Option<T>: 'a + sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let mut v = q.separated(", ");
    v.push_bind(&new.id)
        .push_bind(&new.client)
        .push_bind(&new.account)
        .push_bind(new.provider)
        .push_bind(new.livemode)
        .push_bind(new.status)
        .push_bind(new.amount_minor)
        .push_bind(new.currency)
        .push_bind(new.settle_currency)
        .push_bind(&new.transaction_no)
        .push_bind(&new.reference)
        .push_bind(&new.refund_reference)
        .push_bind(&new.provider_reference)
        .push_bind(&new.reason)
        .push_bind(&new.receipt_email)
        .push_bind(sqlx::types::Json(&new.metadata))
        .push_bind(&new.idempotency_key)
        .push_bind(&new.request_hash)
        .push("'prepared'")
        .push_bind(new.inflight_until.map(&time))
        .push("0")
        .push_bind(new.next_check_at.map(&time))
        .push_bind(time(new.created_at))
        .push_bind(time(new.created_at));
}

/// SQL that differs between the databases.
#[derive(Clone, Copy)]
pub(crate) struct Dialect {
    /// The larger of two values: `GREATEST` (Postgres), `MAX` (SQLite).
    greatest: &'static str,
    /// How a nullable integer parameter is typed: Postgres must be told.
    nullable_int: &'static str,
    /// Reads a time column as Unix ms (Postgres stores `timestamptz`).
    read_ms: &'static str,
    /// Writes a Unix ms parameter into a time column.
    write_ts: &'static str,
    /// Row locks a picking subquery takes, skipping rows another process
    /// is taking (Postgres); SQLite's writer lock already serializes.
    skip_locked: &'static str,
    /// Whether a `WITH` may hold writes (Postgres): two writes, one statement.
    writes_in_cte: bool,
    /// Serializes the events' sequencer across processes (Postgres: an
    /// advisory lock, the key the gateway's own); SQLite's writer lock does.
    sequencer_lock: &'static str,
}

pub(crate) const POSTGRES: Dialect = Dialect {
    greatest: "GREATEST",
    nullable_int: "::int8",
    read_ms: "rg_ms",
    write_ts: "rg_ts",
    skip_locked: " FOR UPDATE SKIP LOCKED",
    writes_in_cte: true,
    sequencer_lock: "SELECT pg_advisory_xact_lock(7270020)",
};
pub(crate) const SQLITE: Dialect = Dialect {
    greatest: "MAX",
    nullable_int: "",
    read_ms: "",
    write_ts: "",
    skip_locked: "",
    writes_in_cte: false,
    sequencer_lock: "",
};

/// One database as the generic stores use it ([`EventStore`],
/// [`ReconciliationStore`], [`ConsoleStore`]): its pool, its SQL dialect,
/// and (SQLite) the write gate every write takes.
pub(super) struct SqlOn<DB: sqlx::Database> {
    pub pool: sqlx::Pool<DB>,
    pub d: Dialect,
    pub gate: Option<Arc<tokio::sync::Mutex<()>>>,
}

impl<DB: sqlx::Database> SqlOn<DB> {
    /// The write gate, held for the write (SQLite); nothing on Postgres.
    async fn gate(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match &self.gate {
            Some(g) => Some(g.lock().await),
            None => None,
        }
    }

    fn sql(&self, s: &str) -> String {
        self.d.times(s)
    }

    /// The cast for a text parameter in `$n IS NULL OR …` (Postgres cannot
    /// infer the type of a parameter it only tests for NULL).
    fn text_param(&self) -> &'static str {
        if self.d.nullable_int.is_empty() {
            ""
        } else {
            "::text"
        }
    }
}

impl Dialect {
    /// `sql` with `@ms(x)` read as Unix ms and `@ts(x)` written as a time,
    /// the way this database stores times.
    pub(crate) fn times(&self, sql: &str) -> String {
        sql.replace("@ms(", &format!("{}(", self.read_ms))
            .replace("@ts(", &format!("{}(", self.write_ts))
    }
}

/// Reserves a refund's amount against its sale, the rule for both
/// databases: a new sale row only if the refund alone fits; an existing one
/// added to only while every reservation plus the refunds made elsewhere
/// stay within the sale, and only in its currency once the provider
/// confirmed it. An unconfirmed currency (Pay10: no sale lookup) pins
/// nothing. (`tests/it/store.rs` runs it on both.)
fn push_reserve<'a, DB>(
    q: &mut sqlx::QueryBuilder<'a, DB>,
    new: &'a RefundRow,
    sale: &SaleTerms,
    d: Dialect,
) where
    DB: sqlx::Database,
    &'a String: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Option<Minor>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Minor: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Currency: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    bool: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    q.push(
        "INSERT INTO sales (account, transaction_no, amount_minor, currency, reserved_minor, \
         currency_confirmed, external_minor) SELECT ",
    );
    q.separated(", ")
        .push_bind(&new.account)
        .push_bind(&new.transaction_no)
        .push_bind(sale.amount_minor)
        .push_bind(new.currency)
        .push_bind(new.amount_minor)
        .push_bind(sale.currency_confirmed)
        .push_bind(sale.external_minor);
    q.push(" WHERE ")
        .push_bind(sale.amount_minor)
        .push(d.nullable_int)
        .push(" IS NULL OR ")
        .push_bind(new.amount_minor)
        .push(" + ")
        .push_bind(sale.external_minor)
        .push(" <= ")
        .push_bind(sale.amount_minor);
    let g = d.greatest;
    q.push(format_args!(
        " ON CONFLICT (account, transaction_no) DO UPDATE \
        SET reserved_minor = sales.reserved_minor + excluded.reserved_minor, \
            amount_minor = COALESCE(sales.amount_minor, excluded.amount_minor), \
            currency = CASE WHEN sales.currency_confirmed THEN sales.currency ELSE excluded.currency END, \
            currency_confirmed = sales.currency_confirmed OR excluded.currency_confirmed, \
            external_minor = {g}(sales.external_minor, excluded.external_minor) \
        WHERE (NOT sales.currency_confirmed OR sales.currency = excluded.currency) \
          AND (COALESCE(sales.amount_minor, excluded.amount_minor) IS NULL \
               OR sales.reserved_minor + excluded.reserved_minor \
                  + {g}(sales.external_minor, excluded.external_minor) \
                  <= COALESCE(sales.amount_minor, excluded.amount_minor))"
    ));
}

/// The history line a refund is recorded with.
const RECORDED: &str = "'request', 'pending', 'recorded; amount reserved against the sale'";

/// A sale's row, as a refused reservation reads it.
#[derive(sqlx::FromRow)]
struct SaleRow {
    amount_minor: Option<i64>,
    currency: String,
    currency_confirmed: bool,
    reserved_minor: i64,
    external_minor: i64,
}

const SELECT_SALE: &str =
    "SELECT amount_minor, currency, currency_confirmed, reserved_minor, external_minor \
    FROM sales WHERE account = $1 AND transaction_no = $2";

/// What a refused reservation leaves: the refund alone against what the
/// provider reported, or (with the sale row) every reservation and the
/// refunds made elsewhere.
fn refusal(new: &RefundRow, sale: &SaleTerms, row: Option<SaleRow>) -> CreateOutcome {
    let Some(SaleRow {
        amount_minor: amount,
        currency,
        currency_confirmed: confirmed,
        reserved_minor: reserved,
        external_minor: external,
    }) = row
    else {
        return CreateOutcome::ExceedsRefundable {
            refundable: Minor::new(
                sale.amount_minor
                    .map_or(0, |m| m.get())
                    .saturating_sub(sale.external_minor.get()),
            )
            .unwrap_or_default(),
        };
    };
    if confirmed && currency != new.currency.code() {
        return CreateOutcome::CurrencyMismatch {
            sale_currency: currency,
        };
    }
    let external = external.max(sale.external_minor.get());
    CreateOutcome::ExceedsRefundable {
        refundable: Minor::new(
            amount
                .or(sale.amount_minor.map(|m| m.get()))
                .unwrap_or(0)
                .saturating_sub(reserved)
                .saturating_sub(external),
        )
        .unwrap_or_default(),
    }
}

/// A database URL fit for logs: the password (in the user part, or in any
/// query parameter that can carry one) is replaced by `***`; a URL that does
/// not parse is not printed at all.
pub fn redact_url(raw: &str) -> String {
    const SECRET_PARAMS: &[&str] = &["password", "pass", "pwd", "sslpassword", "secret", "token"];
    let Ok(mut url) = url::Url::parse(raw) else {
        return "<database URL that does not parse>".into();
    };
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let secret = SECRET_PARAMS.contains(&k.to_ascii_lowercase().as_str());
            (
                k.into_owned(),
                if secret { "***".into() } else { v.into_owned() },
            )
        })
        .collect();
    if !pairs.is_empty() {
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

/// Where a database URL points, for messages: `host:port/database` for
/// Postgres, the file for SQLite; never credentials.
fn describe_target(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(u) if u.scheme() == "sqlite" => format!(
            "SQLite file {}",
            raw.trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:")
                .split('?')
                .next()
                .unwrap_or("")
        ),
        Ok(u) => format!(
            "{}:{}{}",
            u.host_str().unwrap_or("localhost"),
            u.port().unwrap_or(5432),
            u.path()
        ),
        Err(_) => redact_url(raw),
    }
}

/// The reason a connection failed, in words an operator can act on.
fn connect_cause(e: &sqlx::Error, raw: &str) -> String {
    let database = url::Url::parse(raw)
        .ok()
        .map(|u| u.path().trim_start_matches('/').to_string())
        .unwrap_or_default();
    match e {
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            "connection refused: is the server running and listening there?".into()
        }
        sqlx::Error::Io(io) if io.to_string().contains("lookup") => {
            format!("unknown host ({io})")
        }
        sqlx::Error::Io(io) => format!("network error: {io}"),
        sqlx::Error::Database(d) => match d.code().as_deref() {
            Some("28P01") | Some("28000") => {
                "authentication failed: check the user name and password".into()
            }
            Some("3D000") => format!(
                "database \"{database}\" does not exist: create it (createdb {database}, or CREATE DATABASE {database}); the gateway then creates its tables itself"
            ),
            _ => format!("the server refused: {}", d.message()),
        },
        sqlx::Error::Tls(t) => format!("TLS failed: {t}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(
            super::redact_url("postgres://u:pw@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(super::redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(super::redact_url("sqlite://x.db"), "sqlite://x.db");
        let q = super::redact_url("postgres://h/db?user=u&password=hunter2&sslmode=require");
        assert!(
            !q.contains("hunter2") && q.contains("sslmode=require"),
            "{q}"
        );
        let both = super::redact_url("postgres://u:p%40ss@h:5432/db?PASSWORD=x2");
        assert!(!both.contains("p%40ss") && !both.contains("x2"), "{both}");
        assert!(!super::redact_url("postgres://u:hunter2@[bad").contains("hunter2"));
    }
}
