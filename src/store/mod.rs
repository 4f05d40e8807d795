//! Persistence behind one interface, on SQLite (embedded default) or Postgres.
//!
//! Both backends run the same portable SQL through sqlx's `Any` driver; the few
//! places where the dialects differ (connection set-up, lease claiming) are
//! chosen by [`Backend`]. The store knows nothing of providers.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, Executor, Row};

mod batch;
pub mod model;

pub use model::*;

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

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The database cannot be reached at start-up: where, and why, once.
    #[error("cannot connect to the database at {target}: {cause}")]
    Connect { target: String, cause: String },
}

impl StoreError {
    /// True when the database cannot be reached (as opposed to a bad query).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Db(
                sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed
            )
        ) || matches!(self, StoreError::Db(sqlx::Error::Database(e)) if e.code().is_some_and(|c| c.starts_with("57P") || c.starts_with("08")))
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// SQLite allows one writer at a time; queueing writers here is far cheaper
    /// than letting them spin on SQLITE_BUSY. Other processes still serialise on
    /// SQLite's own file lock.
    write_gate: Option<Arc<tokio::sync::Mutex<()>>>,
    /// SQLite only: the group-commit writer for the refund hot path.
    batch: Option<batch::Batcher>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish()
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

/// `$first, $first+1, ...`: `n` bind placeholders for an `IN (...)` list.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The history line an update adds, if it changes what a reader sees: the
/// status, the provider's status or code, a review flag, or an operator's note.
fn event_for(current: &RefundRow, u: &RefundUpdate) -> Option<RefundEvent> {
    let changed = current.status != u.status
        || current.provider_status != u.provider_status
        || current.provider_code != u.provider_code
        || (u.review_reason.is_some() && current.review_reason != u.review_reason)
        || u.note.is_some();
    if !changed {
        return None;
    }
    let mut detail: Vec<String> = vec![];
    if let Some(n) = &u.note {
        detail.push(format!("note: {n}"));
    }
    if current.status != u.status {
        if let Some(code) = u
            .failure_code
            .as_ref()
            .filter(|_| u.status == Status::Failed)
        {
            detail.push(format!("failure_code {code}"));
        }
    }
    if let Some(m) = u.provider_message.as_ref().filter(|m| !m.is_empty()) {
        detail.push(format!("provider: {m}"));
    }
    if u.review_reason.is_some() && current.review_reason != u.review_reason {
        detail.push(format!(
            "flagged for review: {}",
            u.review_reason.as_deref().unwrap_or("")
        ));
    }
    Some(RefundEvent {
        at: u.updated_at,
        source: u.source.as_str().to_string(),
        status: u.status.as_str().to_string(),
        previous_status: Some(current.status.as_str().to_string()),
        provider_code: u.provider_code.clone(),
        provider_status: u.provider_status.clone(),
        detail: (!detail.is_empty()).then(|| detail.join("; ")),
        actor: u.actor.clone(),
    })
}

async fn insert_event(conn: &mut AnyConnection, refund_id: &str, e: &RefundEvent) -> Result<()> {
    sqlx::query(
        "INSERT INTO refund_events (refund_id, at, source, status, previous_status, provider_code, provider_status, detail, actor) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(refund_id)
    .bind(e.at)
    .bind(&e.source)
    .bind(&e.status)
    .bind(&e.previous_status)
    .bind(&e.provider_code)
    .bind(&e.provider_status)
    .bind(&e.detail)
    .bind(&e.actor)
    .execute(&mut *conn)
    .await?;
    Ok(())
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

/// Reserve a refund's amount against its sale (binds: see `bind_new_refund`).
///
/// A new sale row is inserted only if the refund alone fits; an existing one
/// is added to only while every reservation plus the refunds made elsewhere
/// stay within the sale, and only in the sale's currency once the provider
/// confirmed it. An unconfirmed currency (Pay10, which has no sale lookup)
/// pins nothing: it is overwritten until a confirmed fact arrives.
const RESERVE: &str = "INSERT INTO sales (account, transaction_no, amount_minor, currency, reserved_minor, currency_confirmed, external_minor) \
    SELECT $3, $10, $22, $8, $7, $23, $24 WHERE $22 IS NULL OR $7 + $24 <= $22 \
    ON CONFLICT (account, transaction_no) DO UPDATE \
    SET reserved_minor = sales.reserved_minor + excluded.reserved_minor, \
        amount_minor = COALESCE(sales.amount_minor, excluded.amount_minor), \
        currency = CASE WHEN sales.currency_confirmed = 1 THEN sales.currency ELSE excluded.currency END, \
        currency_confirmed = CASE WHEN sales.currency_confirmed = 1 THEN 1 ELSE excluded.currency_confirmed END, \
        external_minor = CASE WHEN sales.external_minor > excluded.external_minor THEN sales.external_minor ELSE excluded.external_minor END \
    WHERE (sales.currency_confirmed = 0 OR sales.currency = excluded.currency) \
      AND (COALESCE(sales.amount_minor, excluded.amount_minor) IS NULL \
           OR sales.reserved_minor + excluded.reserved_minor \
              + CASE WHEN sales.external_minor > excluded.external_minor THEN sales.external_minor ELSE excluded.external_minor END \
              <= COALESCE(sales.amount_minor, excluded.amount_minor))";

const INSERT_REFUND: &str = "INSERT INTO refunds (id, client, account, provider, livemode, status, amount_minor, currency, \
    settle_currency, transaction_no, reference, refund_reference, provider_reference, reason, receipt_email, metadata, \
    idempotency_key, request_hash, submission, inflight_until, check_attempts, next_check_at, created_at, updated_at)";

const REFUND_VALUES: &str =
    "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, 'prepared', $19, 0, $20, $21, $21";

/// Binds a new refund (and the sale's terms as `$22`-`$24`) for [`RESERVE`],
/// [`INSERT_REFUND`] and [`REFUND_VALUES`], which share one numbering.
fn bind_new_refund<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    new: &'q RefundRow,
    sale: &SaleTerms,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    q.bind(&new.id)
        .bind(&new.client)
        .bind(&new.account)
        .bind(&new.provider)
        .bind(new.livemode)
        .bind(new.status.as_str())
        .bind(new.amount_minor)
        .bind(&new.currency)
        .bind(&new.settle_currency)
        .bind(&new.transaction_no)
        .bind(&new.reference)
        .bind(&new.refund_reference)
        .bind(&new.provider_reference)
        .bind(&new.reason)
        .bind(&new.receipt_email)
        .bind(&new.metadata)
        .bind(&new.idempotency_key)
        .bind(&new.request_hash)
        .bind(new.inflight_until)
        .bind(new.next_check_at)
        .bind(new.created_at)
        .bind(sale.amount_minor)
        .bind(i64::from(sale.currency_confirmed))
        .bind(sale.external_minor)
}

/// The history line of a new refund (binds as `bind_new_refund`: `$21` is its creation time).
const RECORDED_EVENT: &str = "INSERT INTO refund_events (refund_id, at, source, status, detail) \
    SELECT id, $21, 'request', 'pending', 'recorded; amount reserved against the sale'";

/// The history line of the send claim (`$1` id, `$2` time).
const SENT_EVENT: &str = "INSERT INTO refund_events (refund_id, at, source, status, previous_status, detail) \
    SELECT id, $2, 'request', 'pending', 'pending', 'claimed for sending; the provider is called now'";

const SELECT_REFUND: &str = "SELECT id, client, account, provider, livemode, status, amount_minor, currency, \
    settle_currency, transaction_no, reference, refund_reference, provider_reference, provider_refund_id, \
    provider_status, provider_code, provider_message, failure_code, failure_message, reason, receipt_email, \
    metadata, idempotency_key, request_hash, submission, response_code, response_body, inflight_until, \
    check_attempts, next_check_at, lease_until, review_reason, send_by, not_found_streak, created_at, updated_at, \
    version FROM refunds";

impl Store {
    /// One direct connection first, so that an unreachable database is
    /// reported with its address and real cause (a pool only says it timed out).
    async fn probe(url: &str) -> Result<()> {
        use sqlx::Connection;
        let target = describe_target(url);
        let attempt = tokio::time::timeout(Duration::from_secs(10), AnyConnection::connect(url));
        match attempt.await {
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

    /// Connects, creating the SQLite file if needed, and runs migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") && !url.contains(":memory:") => {
                format!("{url}{}mode=rwc", if url.contains('?') { "&" } else { "?" })
            }
            _ => url.to_string(),
        };
        Self::probe(&url).await?;
        let opts = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .min_connections(if backend == Backend::Postgres { 2 } else { 1 })
            .acquire_timeout(Duration::from_secs(5))
            // A ping before every acquire doubles the round trips of short
            // queries; a dead connection surfaces as a query error instead
            // (mapped to 503) and is dropped by the pool.
            .test_before_acquire(false);
        let pool = match backend {
            Backend::Sqlite => {
                opts.after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 30000; PRAGMA foreign_keys = ON;")
                            .await?;
                        Ok(())
                    })
                })
                .connect(&url)
                .await?
            }
            Backend::Postgres => opts.connect(&url).await?,
        };
        let store = Store {
            pool,
            backend,
            write_gate: None,
            batch: None,
        };
        let store = match backend {
            Backend::Sqlite => {
                let gate = Arc::new(tokio::sync::Mutex::new(()));
                Store {
                    batch: Some(batch::Batcher::spawn(store.pool.clone(), gate.clone())),
                    write_gate: Some(gate),
                    ..store
                }
            }
            Backend::Postgres => store,
        };
        store.migrate().await?;
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn migrate(&self) -> Result<()> {
        match self.backend {
            Backend::Sqlite => {
                sqlx::migrate!("./migrations/sqlite")
                    .run(&self.pool)
                    .await?
            }
            Backend::Postgres => {
                sqlx::migrate!("./migrations/postgres")
                    .run(&self.pool)
                    .await?
            }
        }
        Ok(())
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn gate(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match &self.write_gate {
            Some(m) => Some(m.lock().await),
            None => None,
        }
    }

    /// The refund a repeated request (same key or same `refund_reference`) refers to.
    pub async fn find_duplicate(
        &self,
        client: &str,
        idempotency_key: Option<&str>,
        refund_reference: Option<&str>,
    ) -> Result<Option<RefundRow>> {
        if idempotency_key.is_none() && refund_reference.is_none() {
            return Ok(None);
        }
        // Two index lookups rather than one OR, which planners may turn into a scan.
        let sql = format!(
            "SELECT * FROM ({SELECT_REFUND} WHERE client = $1 AND idempotency_key = $2 \
             UNION ALL {SELECT_REFUND} WHERE client = $1 AND refund_reference = $3) AS dup LIMIT 1"
        );
        let row = sqlx::query(&sql)
            .bind(client)
            .bind(idempotency_key)
            .bind(refund_reference)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| RefundRow::from_row(&r)).transpose()
    }

    /// Records a new refund and reserves its amount against the sale, atomically.
    ///
    /// The reservation is one upsert that creates the sale row or adds to it
    /// only while the total stays within the sale: atomic on both backends (on
    /// Postgres a concurrent writer waits on the row lock and re-checks the
    /// condition). On Postgres the upsert and the refund insert are one
    /// statement (a data-modifying CTE), so a refund costs one round trip; a
    /// taken idempotency key or reference aborts the whole statement.
    pub async fn create_refund(&self, new: &RefundRow, sale: &SaleTerms) -> Result<CreateOutcome> {
        let inserted = match self.backend {
            Backend::Postgres => {
                let sql = format!(
                    "WITH reserve AS ({RESERVE} RETURNING 1), ins AS ({INSERT_REFUND} SELECT {REFUND_VALUES} FROM reserve RETURNING id) \
                     {RECORDED_EVENT} FROM ins"
                );
                match bind_new_refund(sqlx::query(&sql), new, sale)
                    .execute(&self.pool)
                    .await
                {
                    Ok(r) => r.rows_affected(),
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                        return Ok(CreateOutcome::Duplicate)
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Backend::Sqlite => {
                let (new, sale) = (new.clone(), *sale);
                let code = self
                    .batcher()?
                    .run(move |conn| {
                        Box::pin(async move {
                            let reserved = bind_new_refund(sqlx::query(RESERVE), &new, &sale)
                                .execute(&mut *conn)
                                .await?
                                .rows_affected();
                            if reserved == 0 {
                                return Ok((0u64, false));
                            }
                            let sql = format!(
                                "{INSERT_REFUND} VALUES ({REFUND_VALUES}) ON CONFLICT DO NOTHING"
                            );
                            let inserted = bind_new_refund(sqlx::query(&sql), &new, &sale)
                                .execute(&mut *conn)
                                .await?
                                .rows_affected();
                            if inserted == 1 {
                                let event = format!("{RECORDED_EVENT} FROM refunds WHERE id = $1");
                                bind_new_refund(sqlx::query(&event), &new, &sale)
                                    .execute(&mut *conn)
                                    .await?;
                            }
                            // 2: the key or reference is taken; undo the reservation too.
                            Ok(if inserted == 1 { (1, true) } else { (2, false) })
                        })
                    })
                    .await?;
                if code == 2 {
                    return Ok(CreateOutcome::Duplicate);
                }
                code
            }
        };
        if inserted == 1 {
            return Ok(CreateOutcome::Created);
        }
        // The reservation was refused: say why, counting every reservation
        // (pending and succeeded) and the refunds made elsewhere.
        let row = sqlx::query("SELECT amount_minor, currency, currency_confirmed, reserved_minor, external_minor FROM sales WHERE account = $1 AND transaction_no = $2")
            .bind(&new.account)
            .bind(&new.transaction_no)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            // No sale row: the refund alone exceeds what the provider reported.
            return Ok(CreateOutcome::ExceedsRefundable {
                refundable_minor: sale
                    .amount_minor
                    .unwrap_or(0)
                    .saturating_sub(sale.external_minor)
                    .max(0),
            });
        };
        let currency: String = row.try_get("currency")?;
        let confirmed: i64 = row.try_get("currency_confirmed")?;
        if confirmed == 1 && currency != new.currency {
            return Ok(CreateOutcome::CurrencyMismatch {
                sale_currency: currency,
            });
        }
        let amount: Option<i64> = row.try_get("amount_minor")?;
        let reserved: i64 = row.try_get("reserved_minor")?;
        let external: i64 = row
            .try_get::<i64, _>("external_minor")?
            .max(sale.external_minor);
        Ok(CreateOutcome::ExceedsRefundable {
            refundable_minor: amount
                .or(sale.amount_minor)
                .unwrap_or(0)
                .saturating_sub(reserved)
                .saturating_sub(external)
                .max(0),
        })
    }

    /// The send claim: moves a refund from `prepared` to `sent`, only if it is
    /// still exactly the row the caller wrote (same version, pending, prepared).
    /// `true` gives the caller the right to call the provider before `send_by`;
    /// `false` means someone else decided the refund first (reconciliation
    /// declared it never submitted): the caller must not call the provider.
    pub async fn claim_send(&self, id: &str, version: i64, now: i64, send_by: i64) -> Result<bool> {
        const SQL: &str = "UPDATE refunds SET submission = 'sent', send_by = $3, updated_at = $2, version = version + 1 \
            WHERE id = $1 AND version = $4 AND status = 'pending' AND submission = 'prepared'";
        let n = match &self.batch {
            Some(b) => {
                let id = id.to_string();
                b.run(move |conn| {
                    Box::pin(async move {
                        let n = sqlx::query(SQL)
                            .bind(&id)
                            .bind(now)
                            .bind(send_by)
                            .bind(version)
                            .execute(&mut *conn)
                            .await?
                            .rows_affected();
                        if n == 1 {
                            sqlx::query(&format!("{SENT_EVENT} FROM refunds WHERE id = $1"))
                                .bind(&id)
                                .bind(now)
                                .execute(&mut *conn)
                                .await?;
                        }
                        Ok((n, true))
                    })
                })
                .await?
            }
            // One statement: the claim, and its history line only if it applied.
            None => sqlx::query(&format!(
                "WITH c AS ({SQL} RETURNING id) {SENT_EVENT} FROM c"
            ))
            .bind(id)
            .bind(now)
            .bind(send_by)
            .bind(version)
            .execute(&self.pool)
            .await?
            .rows_affected(),
        };
        Ok(n == 1)
    }

    fn batcher(&self) -> Result<&batch::Batcher> {
        self.batch
            .as_ref()
            .ok_or_else(|| StoreError::Corrupt("group commit is SQLite-only".into()))
    }

    /// One versioned write of `u`, with the reservation release and the
    /// receipt email when they apply, all in one transaction. True if applied.
    async fn apply_update(&self, id: &str, current: &RefundRow, u: &RefundUpdate) -> Result<bool> {
        let releases = current.status != Status::Failed && u.status == Status::Failed;
        let confirms =
            u.confirm_sale && current.status != Status::Succeeded && u.status == Status::Succeeded;
        if let Some(b) = &self.batch {
            let (id, current, u) = (id.to_string(), current.clone(), u.clone());
            return b
                .run(move |conn| {
                    Box::pin(async move {
                        let n = Self::write_update(&mut *conn, &id, &current, &u, None).await?;
                        if n == 1 {
                            Self::write_side_effects(
                                &mut *conn, &id, &current, &u, releases, confirms,
                            )
                            .await?;
                            if let Some(e) = event_for(&current, &u) {
                                insert_event(&mut *conn, &id, &e).await?;
                            }
                        }
                        Ok((n == 1, n == 1))
                    })
                })
                .await;
        }
        let event = event_for(current, u);
        if !(releases || confirms || u.email.is_some()) {
            // One statement: the update, and its history line only if it applied.
            return Ok(Self::write_update(&self.pool, id, current, u, event.as_ref()).await? == 1);
        }
        let mut tx = self.pool.begin().await?;
        let n = Self::write_update(&mut *tx, id, current, u, None).await?;
        if n == 1 {
            Self::write_side_effects(&mut tx, id, current, u, releases, confirms).await?;
            if let Some(e) = &event {
                insert_event(&mut tx, id, e).await?;
            }
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(n == 1)
    }

    async fn write_side_effects(
        conn: &mut AnyConnection,
        id: &str,
        current: &RefundRow,
        u: &RefundUpdate,
        releases: bool,
        confirms: bool,
    ) -> Result<()> {
        if let Some(e) = &u.email {
            sqlx::query(
                "INSERT INTO email_outbox (refund_id, to_addr, subject, body, state, attempts, next_attempt_at, created_at) \
                 VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5) ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(&e.to)
            .bind(&e.subject)
            .bind(&e.body)
            .bind(u.updated_at)
            .execute(&mut *conn)
            .await?;
        }
        if releases {
            sqlx::query("UPDATE sales SET reserved_minor = reserved_minor - $3 WHERE account = $1 AND transaction_no = $2")
                .bind(&current.account)
                .bind(&current.transaction_no)
                .bind(current.amount_minor)
                .execute(&mut *conn)
                .await?;
        }
        if confirms {
            // A refund the provider made confirms the sale's currency.
            sqlx::query("UPDATE sales SET currency = $3, currency_confirmed = 1 WHERE account = $1 AND transaction_no = $2 AND currency_confirmed = 0")
                .bind(&current.account)
                .bind(&current.transaction_no)
                .bind(&current.currency)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// Applies a change to a refund. `transition` decides, from the row as it
    /// is, what changes (`None`: nothing). The write applies only to the
    /// version it was computed from; if another writer got there first, the
    /// row is read again and `transition` asked again. Releasing the
    /// reservation on `failed` and enqueueing a receipt email happen in the
    /// same transaction as the status change, exactly once.
    ///
    /// `known` is the row as the caller last wrote it, saving a read on the
    /// hot path when nobody else has touched it since.
    pub async fn update_refund<F>(
        &self,
        id: &str,
        known: Option<&RefundRow>,
        mut transition: F,
    ) -> Result<Option<(RefundRow, bool)>>
    where
        F: FnMut(&RefundRow) -> Option<RefundUpdate>,
    {
        let mut current = match known {
            Some(r) => r.clone(),
            None => match self.get_refund_any_client(id).await? {
                Some(r) => r,
                None => return Ok(None),
            },
        };
        loop {
            let Some(u) = transition(&current) else {
                return Ok(Some((current, false)));
            };
            let applied = self.apply_update(id, &current, &u).await?;
            if applied {
                let mut after = current;
                u.apply_to(&mut after);
                after.version += 1;
                return Ok(Some((after, true)));
            }
            current = match self.get_refund_any_client(id).await? {
                Some(r) => r,
                None => return Ok(None),
            };
        }
    }

    /// The compare-and-swap every refund change goes through: it applies only
    /// to the row as its writer read it (version, status and submission).
    /// With `event` (Postgres), its history line is written by the same
    /// statement, only if the update applied.
    async fn write_update<'e, E>(
        executor: E,
        id: &str,
        current: &RefundRow,
        u: &RefundUpdate,
        event: Option<&RefundEvent>,
    ) -> Result<u64>
    where
        E: sqlx::Executor<'e, Database = sqlx::Any>,
    {
        const UPDATE: &str = "UPDATE refunds SET status = $2, provider_refund_id = $3, provider_status = $4, provider_code = $5, \
             provider_message = $6, failure_code = $7, failure_message = $8, response_code = $9, response_body = $10, \
             inflight_until = $11, check_attempts = $12, next_check_at = $13, lease_until = $14, review_reason = $15, \
             updated_at = $16, not_found_streak = $20, version = version + 1 \
             WHERE id = $1 AND version = $17 AND status = $18 AND submission = $19";
        let sql = match event {
            None => UPDATE.to_string(),
            Some(_) => format!(
                "WITH u AS ({UPDATE} RETURNING id) INSERT INTO refund_events \
                 (refund_id, at, source, status, previous_status, provider_code, provider_status, detail, actor) \
                 SELECT id, $16, $21, $2, $18, $5, $4, $22, $23 FROM u"
            ),
        };
        let mut q = sqlx::query(&sql)
            .bind(id)
            .bind(u.status.as_str())
            .bind(&u.provider_refund_id)
            .bind(&u.provider_status)
            .bind(&u.provider_code)
            .bind(&u.provider_message)
            .bind(&u.failure_code)
            .bind(&u.failure_message)
            .bind(u.response_code)
            .bind(&u.response_body)
            .bind(u.inflight_until)
            .bind(u.check_attempts)
            .bind(u.next_check_at)
            .bind(u.lease_until)
            .bind(&u.review_reason)
            .bind(u.updated_at)
            .bind(current.version)
            .bind(current.status.as_str())
            .bind(current.submission.as_str())
            .bind(u.not_found_streak);
        if let Some(e) = event {
            q = q
                .bind(e.source.clone())
                .bind(e.detail.clone())
                .bind(e.actor.clone());
        }
        Ok(q.execute(executor).await?.rows_affected())
    }

    /// A refund's history, oldest first (scoped to its client when given).
    pub async fn refund_events(&self, refund_id: &str) -> Result<Vec<RefundEvent>> {
        sqlx::query(
            "SELECT at, source, status, previous_status, provider_code, provider_status, detail, actor \
             FROM refund_events WHERE refund_id = $1 ORDER BY id",
        )
        .bind(refund_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(RefundEvent {
                at: r.try_get("at")?,
                source: r.try_get("source")?,
                status: r.try_get("status")?,
                previous_status: r.try_get("previous_status")?,
                provider_code: r.try_get("provider_code")?,
                provider_status: r.try_get("provider_status")?,
                detail: r.try_get("detail")?,
                actor: r.try_get("actor")?,
            })
        })
        .collect()
    }

    pub async fn get_refund(&self, client: &str, id: &str) -> Result<Option<RefundRow>> {
        let row = sqlx::query(&format!("{SELECT_REFUND} WHERE id = $1 AND client = $2"))
            .bind(id)
            .bind(client)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| RefundRow::from_row(&r)).transpose()
    }

    pub async fn get_refund_any_client(&self, id: &str) -> Result<Option<RefundRow>> {
        let row = sqlx::query(&format!("{SELECT_REFUND} WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| RefundRow::from_row(&r)).transpose()
    }

    /// A client's refunds, newest first, with keyset pagination.
    /// Refunds newest first, with keyset pagination: one client's, or (for
    /// operators, `None`) every client's.
    pub async fn list_refunds(
        &self,
        client: Option<&str>,
        f: &ListFilter,
    ) -> Result<Vec<RefundRow>> {
        let (mut sql, mut binds) = match client {
            Some(c) => (
                format!("{SELECT_REFUND} WHERE client = $1"),
                vec![BindValue::Text(c.to_string())],
            ),
            None => (format!("{SELECT_REFUND} WHERE 1 = 1"), vec![]),
        };
        let mut push = |clause: &str, v: BindValue, sql: &mut String| {
            binds.push(v);
            sql.push_str(&clause.replace('?', &format!("${}", binds.len())));
        };
        for (col, val) in [
            ("transaction_no", &f.transaction_no),
            ("reference", &f.reference),
            ("refund_reference", &f.refund_reference),
            ("status", &f.status),
            ("provider", &f.provider),
        ] {
            if let Some(v) = val {
                push(
                    &format!(" AND {col} = ?"),
                    BindValue::Text(v.clone()),
                    &mut sql,
                );
            }
        }
        if let Some(t) = f.created_from {
            push(" AND created_at >= ?", BindValue::Int(t), &mut sql);
        }
        if let Some(t) = f.created_to {
            push(" AND created_at <= ?", BindValue::Int(t), &mut sql);
        }
        if let Some(t) = f.needs_review_before {
            push(
                " AND (review_reason IS NOT NULL OR (status = 'pending' AND created_at <= ?))",
                BindValue::Int(t),
                &mut sql,
            );
        }
        if let Some((created, id)) = &f.after {
            binds.push(BindValue::Int(*created));
            let a = binds.len();
            binds.push(BindValue::Text(id.clone()));
            let b = binds.len();
            sql.push_str(&format!(
                " AND (created_at < ${a} OR (created_at = ${a} AND id < ${b}))"
            ));
        }
        sql.push_str(&format!(
            " ORDER BY created_at DESC, id DESC LIMIT {}",
            f.limit + 1
        ));
        let mut q = sqlx::query(&sql);
        for b in binds {
            q = match b {
                BindValue::Text(s) => q.bind(s),
                BindValue::Int(i) => q.bind(i),
            };
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter().map(RefundRow::from_row).collect()
    }

    /// Claims up to `limit` pending refunds that are due for a status check, with a
    /// lease so no other process works on them until `lease_until`.
    pub async fn claim_due(
        &self,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<RefundRow>> {
        let _gate = self.gate().await;
        let inner = "SELECT id FROM refunds WHERE status = 'pending' AND next_check_at IS NOT NULL AND next_check_at <= $1 \
                     AND (lease_until IS NULL OR lease_until < $1) AND (inflight_until IS NULL OR inflight_until < $1) \
                     ORDER BY next_check_at LIMIT $3";
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql =
            format!("UPDATE refunds SET lease_until = $2 WHERE id IN ({inner}{lock}) RETURNING id");
        let ids: Vec<String> = sqlx::query(&sql)
            .bind(now)
            .bind(lease_until)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>("id"))
            .collect::<std::result::Result<_, _>>()?;
        drop(_gate);
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(r) = self.get_refund_any_client(&id).await? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// How many refunds need a person: flagged, or pending since before `before`.
    pub async fn review_count(&self, before: i64) -> Result<i64> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM refunds WHERE review_reason IS NOT NULL OR (status = 'pending' AND created_at <= $1)",
        )
        .bind(before)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("n")?)
    }

    /// Number of pending refunds and the creation time of the oldest.
    pub async fn pending_summary(&self) -> Result<(i64, Option<i64>)> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM refunds WHERE status = 'pending'",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get("n")?, row.try_get("oldest")?))
    }
}

const SELECT_EVENT: &str = "SELECT id, provider, account, dedupe_key, transaction_no, provider_refund_id, \
    provider_reference, amount, outcome, provider_status, fields, refund_id, state, note, received_at, attempts, \
    next_attempt_at FROM webhook_events";

impl Store {
    /// Stores a verified webhook; `false` if the same event was stored before.
    pub async fn insert_event(&self, e: &WebhookRow) -> Result<bool> {
        let _gate = self.gate().await;
        let n = sqlx::query(
            "INSERT INTO webhook_events (id, provider, account, dedupe_key, transaction_no, provider_refund_id, \
             provider_reference, amount, outcome, provider_status, fields, refund_id, state, note, received_at, attempts, \
             next_attempt_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&e.id)
        .bind(&e.provider)
        .bind(&e.account)
        .bind(&e.dedupe_key)
        .bind(&e.transaction_no)
        .bind(&e.provider_refund_id)
        .bind(&e.provider_reference)
        .bind(&e.amount)
        .bind(&e.outcome)
        .bind(&e.provider_status)
        .bind(&e.fields)
        .bind(&e.refund_id)
        .bind(&e.state)
        .bind(&e.note)
        .bind(e.received_at)
        .bind(e.attempts)
        .bind(e.next_attempt_at)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    pub async fn set_event_state(
        &self,
        id: &str,
        state: &str,
        refund_id: Option<&str>,
        note: Option<&str>,
    ) -> Result<()> {
        let _gate = self.gate().await;
        sqlx::query(
            "UPDATE webhook_events SET state = $2, refund_id = $3, note = $4, next_attempt_at = NULL, lease_until = NULL WHERE id = $1",
        )
        .bind(id)
        .bind(state)
        .bind(refund_id)
        .bind(note)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The refund a provider event names by the provider's refund id or our
    /// reference, among `accounts` (the accounts whose credentials verified it).
    pub async fn find_refund_by_provider_ids(
        &self,
        accounts: &[String],
        provider_refund_id: Option<&str>,
        provider_reference: Option<&str>,
    ) -> Result<Option<RefundRow>> {
        if accounts.is_empty() || (provider_refund_id.is_none() && provider_reference.is_none()) {
            return Ok(None);
        }
        let list = placeholders(3, accounts.len());
        let sql = format!(
            "SELECT * FROM ({SELECT_REFUND} WHERE provider_reference = $2 AND account IN ({list}) \
             UNION ALL {SELECT_REFUND} WHERE provider_refund_id = $1 AND account IN ({list})) AS m LIMIT 1"
        );
        let mut q = sqlx::query(&sql)
            .bind(provider_refund_id)
            .bind(provider_reference);
        for a in accounts {
            q = q.bind(a);
        }
        let row = q.fetch_optional(&self.pool).await?;
        row.map(|r| RefundRow::from_row(&r)).transpose()
    }

    /// Pending refunds on a sale, among `accounts`.
    pub async fn pending_on_transaction(
        &self,
        accounts: &[String],
        transaction_no: &str,
    ) -> Result<Vec<String>> {
        if accounts.is_empty() {
            return Ok(vec![]);
        }
        let list = placeholders(2, accounts.len());
        let sql = format!(
            "SELECT id FROM refunds WHERE transaction_no = $1 AND status = 'pending' AND account IN ({list})"
        );
        let mut q = sqlx::query(&sql).bind(transaction_no);
        for a in accounts {
            q = q.bind(a);
        }
        q.fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>("id").map_err(StoreError::from))
            .collect()
    }

    /// Our provider references for the refunds on a sale (to tell the
    /// provider's list of refunds apart into ours and others').
    pub async fn provider_references_on_transaction(
        &self,
        account: &str,
        transaction_no: &str,
    ) -> Result<Vec<String>> {
        sqlx::query(
            "SELECT provider_reference FROM refunds WHERE account = $1 AND transaction_no = $2",
        )
        .bind(account)
        .bind(transaction_no)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            r.try_get::<String, _>("provider_reference")
                .map_err(StoreError::from)
        })
        .collect()
    }

    /// Makes pending refunds due for a status query now.
    pub async fn check_now(&self, ids: &[String], now: i64) -> Result<()> {
        let _gate = self.gate().await;
        for id in ids {
            sqlx::query(
                "UPDATE refunds SET next_check_at = $2 WHERE id = $1 AND status = 'pending'",
            )
            .bind(id)
            .bind(now)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    /// Claims unmatched events that are due for another matching attempt,
    /// with a lease so that one process handles each.
    pub async fn claim_unmatched_events(
        &self,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<WebhookRow>> {
        let _gate = self.gate().await;
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE webhook_events SET lease_until = $2 WHERE id IN (SELECT id FROM webhook_events \
             WHERE state = 'unmatched' AND next_attempt_at IS NOT NULL AND next_attempt_at <= $1 \
             AND (lease_until IS NULL OR lease_until < $1) ORDER BY next_attempt_at LIMIT $3{lock}) RETURNING id"
        );
        let ids: Vec<String> = sqlx::query(&sql)
            .bind(now)
            .bind(lease_until)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>("id"))
            .collect::<std::result::Result<_, _>>()?;
        drop(_gate);
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let row = sqlx::query(&format!("{SELECT_EVENT} WHERE id = $1"))
                .bind(&id)
                .fetch_optional(&self.pool)
                .await?;
            if let Some(r) = row {
                out.push(WebhookRow::from_row(&r)?);
            }
        }
        Ok(out)
    }

    /// Records a matching attempt that found nothing: the next attempt time
    /// (`None` stops retrying and leaves the event as `state`).
    pub async fn event_not_matched(
        &self,
        id: &str,
        state: &str,
        attempts: i64,
        next_attempt_at: Option<i64>,
        note: &str,
    ) -> Result<()> {
        let _gate = self.gate().await;
        sqlx::query(
            "UPDATE webhook_events SET state = $2, attempts = $3, next_attempt_at = $4, lease_until = NULL, note = $5 WHERE id = $1",
        )
        .bind(id)
        .bind(state)
        .bind(attempts)
        .bind(next_attempt_at)
        .bind(note)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn events_for_refund(&self, refund_id: &str) -> Result<Vec<WebhookRow>> {
        let rows = sqlx::query(&format!(
            "{SELECT_EVENT} WHERE refund_id = $1 ORDER BY received_at"
        ))
        .bind(refund_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(WebhookRow::from_row).collect()
    }

    pub async fn events_by_state(&self, state: &str) -> Result<Vec<WebhookRow>> {
        let rows = sqlx::query(&format!(
            "{SELECT_EVENT} WHERE state = $1 ORDER BY received_at"
        ))
        .bind(state)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(WebhookRow::from_row).collect()
    }

    /// Claims due receipt emails with a lease, so one process sends each.
    pub async fn claim_emails(
        &self,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<OutboxRow>> {
        let _gate = self.gate().await;
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE email_outbox SET lease_until = $2 WHERE refund_id IN (SELECT refund_id FROM email_outbox \
             WHERE state = 'pending' AND next_attempt_at <= $1 AND (lease_until IS NULL OR lease_until < $1) \
             ORDER BY next_attempt_at LIMIT $3{lock}) \
             RETURNING refund_id, to_addr, subject, body, state, attempts, last_error"
        );
        let rows = sqlx::query(&sql)
            .bind(now)
            .bind(lease_until)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(OutboxRow::from_row).collect()
    }

    /// Records a send attempt: sent, or failed with the next attempt time
    /// (`None` gives up and marks the email abandoned).
    pub async fn email_attempted(
        &self,
        refund_id: &str,
        now: i64,
        error: Option<&str>,
        next_attempt_at: Option<i64>,
    ) -> Result<()> {
        let _gate = self.gate().await;
        let (state, next) = match (error, next_attempt_at) {
            (None, _) => ("sent", now),
            (Some(_), Some(n)) => ("pending", n),
            (Some(_), None) => ("abandoned", now),
        };
        sqlx::query(
            "UPDATE email_outbox SET state = $2, attempts = attempts + 1, next_attempt_at = $3, lease_until = NULL, \
             last_error = $4, sent_at = CASE WHEN $2 = 'sent' THEN $5 ELSE sent_at END WHERE refund_id = $1",
        )
        .bind(refund_id)
        .bind(state)
        .bind(next)
        .bind(error)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn outbox_entry(&self, refund_id: &str) -> Result<Option<OutboxRow>> {
        let row = sqlx::query("SELECT refund_id, to_addr, subject, body, state, attempts, last_error FROM email_outbox WHERE refund_id = $1")
            .bind(refund_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| OutboxRow::from_row(&r)).transpose()
    }
}

impl WebhookRow {
    fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(WebhookRow {
            id: r.try_get("id")?,
            provider: r.try_get("provider")?,
            account: r.try_get("account")?,
            dedupe_key: r.try_get("dedupe_key")?,
            transaction_no: r.try_get("transaction_no")?,
            provider_refund_id: r.try_get("provider_refund_id")?,
            provider_reference: r.try_get("provider_reference")?,
            amount: r.try_get("amount")?,
            outcome: r.try_get("outcome")?,
            provider_status: r.try_get("provider_status")?,
            fields: r.try_get("fields")?,
            refund_id: r.try_get("refund_id")?,
            state: r.try_get("state")?,
            note: r.try_get("note")?,
            received_at: r.try_get("received_at")?,
            attempts: r.try_get("attempts")?,
            next_attempt_at: r.try_get("next_attempt_at")?,
        })
    }
}

impl OutboxRow {
    fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(OutboxRow {
            refund_id: r.try_get("refund_id")?,
            to_addr: r.try_get("to_addr")?,
            subject: r.try_get("subject")?,
            body: r.try_get("body")?,
            state: r.try_get("state")?,
            attempts: r.try_get("attempts")?,
            last_error: r.try_get("last_error")?,
        })
    }
}

enum BindValue {
    Text(String),
    Int(i64),
}

impl RefundRow {
    fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(RefundRow {
            id: r.try_get("id")?,
            client: r.try_get("client")?,
            account: r.try_get("account")?,
            provider: r.try_get("provider")?,
            livemode: r.try_get("livemode")?,
            status: {
                let s: String = r.try_get("status")?;
                Status::parse(&s)
                    .ok_or_else(|| StoreError::Corrupt(format!("refund status {s:?}")))?
            },
            amount_minor: r.try_get("amount_minor")?,
            currency: r.try_get("currency")?,
            settle_currency: r.try_get("settle_currency")?,
            transaction_no: r.try_get("transaction_no")?,
            reference: r.try_get("reference")?,
            refund_reference: r.try_get("refund_reference")?,
            provider_reference: r.try_get("provider_reference")?,
            provider_refund_id: r.try_get("provider_refund_id")?,
            provider_status: r.try_get("provider_status")?,
            provider_code: r.try_get("provider_code")?,
            provider_message: r.try_get("provider_message")?,
            failure_code: r.try_get("failure_code")?,
            failure_message: r.try_get("failure_message")?,
            reason: r.try_get("reason")?,
            receipt_email: r.try_get("receipt_email")?,
            metadata: r.try_get("metadata")?,
            idempotency_key: r.try_get("idempotency_key")?,
            request_hash: r.try_get("request_hash")?,
            submission: {
                let s: String = r.try_get("submission")?;
                Submission::parse(&s)
                    .ok_or_else(|| StoreError::Corrupt(format!("refund submission {s:?}")))?
            },
            response_code: r.try_get("response_code")?,
            response_body: r.try_get("response_body")?,
            inflight_until: r.try_get("inflight_until")?,
            check_attempts: r.try_get("check_attempts")?,
            next_check_at: r.try_get("next_check_at")?,
            lease_until: r.try_get("lease_until")?,
            review_reason: r.try_get("review_reason")?,
            send_by: r.try_get("send_by")?,
            not_found_streak: r.try_get("not_found_streak")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
            version: r.try_get("version")?,
        })
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
