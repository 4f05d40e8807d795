//! The SQLite store, the embedded default: times in INTEGER milliseconds,
//! flags as 0/1, JSON as TEXT. SQLite has one writer at a time, and this
//! store owns how writers take turns: the refund hot path goes through group
//! commit ([`batch`](super::batch): many writes, one transaction, one
//! fsync), every other write through the write gate (queued here rather than
//! spinning on `SQLITE_BUSY`; other processes still wait on SQLite's own lock).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::{Mutex, MutexGuard};

use super::batch::Batcher;
use super::events::{push_event_values, INSERT_EVENTS};
use super::{
    probe, push_list_filters, push_new_refund_values, push_reserve, push_update, refusal, Backend,
    Change, CreateOutcome, EventState, ListFilter, OutboxRow, RefundEvent, RefundRow, Result,
    SaleTerms, StoreBackend, WebhookRow, NEW_REFUND, RECORDED, SELECT_SALE,
};
use crate::types::Timestamp;

pub(super) struct SqliteStore {
    pool: SqlitePool,
    gate: Arc<Mutex<()>>,
    batch: Batcher,
    /// The events, reconciliations and console stores on this database.
    sql: super::SqlOn<Sqlite>,
}

const SELECT_REFUND: &str = "SELECT id, client, account, provider, livemode, status, amount_minor, currency, \
    settle_currency, transaction_no, reference, refund_reference, provider_reference, provider_refund_id, \
    provider_status, provider_code, provider_message, failure_code, failure_message, reason, receipt_email, \
    metadata, idempotency_key, request_hash, submission, response_code, response_body, inflight_until, \
    check_attempts, next_check_at, lease_until, review_reason, pending_reason, announced, send_by, not_found_streak, created_at, updated_at, \
    version FROM refunds";

const SELECT_EVENT: &str = "SELECT id, provider, account, dedupe_key, transaction_no, provider_refund_id, \
    provider_reference, amount, outcome, provider_status, fields, refund_id, state, note, received_at, attempts, \
    next_attempt_at FROM webhook_events";

/// `$first, $first+1, ...`: `n` bind placeholders for an `IN (...)` list.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl SqliteStore {
    pub(super) async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        let url = if url.contains("mode=") || url.contains(":memory:") {
            url.to_string()
        } else {
            format!("{url}{}mode=rwc", if url.contains('?') { "&" } else { "?" })
        };
        probe::<SqliteConnection>(&url).await?;
        let options: SqliteConnectOptions = url.parse()?;
        let options = options
            .journal_mode(SqliteJournalMode::Wal)
            // Power-loss durability: a refund answered is a refund on disk.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        let gate = Arc::new(Mutex::new(()));
        Ok(SqliteStore {
            batch: Batcher::spawn(pool.clone(), gate.clone()),
            sql: super::SqlOn {
                pool: pool.clone(),
                d: super::SQLITE,
                gate: Some(gate.clone()),
            },
            gate,
            pool,
        })
    }

    async fn gate(&self) -> MutexGuard<'_, ()> {
        self.gate.lock().await
    }

    async fn write_change(conn: &mut SqliteConnection, c: &Change) -> Result<bool> {
        let (current, after) = (c.current(), c.after());
        let mut q = QueryBuilder::<Sqlite>::new("");
        push_update(&mut q, c, |ms| ms);
        let n = q.build().execute(&mut *conn).await?.rows_affected();
        if n != 1 {
            return Ok(false);
        }
        let effects = c.effects();
        if let Some(e) = &effects.email {
            sqlx::query(
                "INSERT INTO email_outbox (refund_id, to_addr, subject, body, state, attempts, next_attempt_at, created_at) \
                 VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5) ON CONFLICT DO NOTHING",
            )
            .bind(&current.id)
            .bind(&e.to)
            .bind(&e.subject)
            .bind(&e.body)
            .bind(after.updated_at)
            .execute(&mut *conn)
            .await?;
        }
        if effects.releases_reservation {
            sqlx::query("UPDATE sales SET reserved_minor = reserved_minor - $3 WHERE account = $1 AND transaction_no = $2")
                .bind(&current.account)
                .bind(&current.transaction_no)
                .bind(current.amount_minor)
                .execute(&mut *conn)
                .await?;
        }
        if effects.confirms_sale {
            // A refund the provider made confirms the sale's currency.
            sqlx::query("UPDATE sales SET currency = $3, currency_confirmed = 1 WHERE account = $1 AND transaction_no = $2 AND currency_confirmed = 0")
                .bind(&current.account)
                .bind(&current.transaction_no)
                .bind(current.currency)
                .execute(&mut *conn)
                .await?;
        }
        if let Some(e) = &effects.history {
            insert_history(conn, &current.id, e).await?;
        }
        let mut q = QueryBuilder::<Sqlite>::new(INSERT_EVENTS);
        if push_event_values(&mut q, c, super::SQLITE) {
            q.build().execute(&mut *conn).await?;
        }
        Ok(true)
    }

    /// Leases up to `limit` rows of `table` picked by `pick` (`$1` now, `$3`
    /// limit) until `$2`, and returns them as they are now, in the same
    /// statement. The write gate makes it exclusive within this process,
    /// SQLite's lock across processes.
    async fn lease<T>(
        &self,
        table: &str,
        key: &str,
        pick: &str,
        now: Timestamp,
        lease_until: Timestamp,
        limit: i64,
    ) -> Result<Vec<T>>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> + Send + Unpin,
    {
        let _gate = self.gate().await;
        let sql = format!(
            "UPDATE {table} SET lease_until = $2 WHERE {key} IN (SELECT {key} FROM {table} WHERE {pick}) RETURNING *"
        );
        Ok(sqlx::query_as(&sql)
            .bind(now)
            .bind(lease_until)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }
}

async fn insert_history(
    conn: &mut SqliteConnection,
    refund_id: &str,
    e: &RefundEvent,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO refund_events (refund_id, at, source, status, previous_status, provider_code, provider_status, detail, actor) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(refund_id)
    .bind(e.at)
    .bind(e.source)
    .bind(e.status)
    .bind(e.previous_status)
    .bind(&e.provider_code)
    .bind(&e.provider_status)
    .bind(&e.detail)
    .bind(&e.actor)
    .execute(conn)
    .await?;
    Ok(())
}

#[async_trait]
impl StoreBackend for SqliteStore {
    fn events(&self) -> &dyn super::events::EventStore {
        &self.sql
    }

    fn reconciliations(&self) -> &dyn super::ReconciliationStore {
        &self.sql
    }

    fn console(&self) -> &dyn super::ConsoleStore {
        &self.sql
    }

    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn write_probe(&self, now: Timestamp) -> Result<()> {
        // Through the group commit, like every refund write.
        self.batch
            .run(move |conn| {
                Box::pin(async move {
                    sqlx::query(
                        "INSERT INTO readiness_probe (id, checked_at) VALUES (1, $1) \
                         ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
                    )
                    .bind(now)
                    .execute(&mut *conn)
                    .await?;
                    Ok(((), true))
                })
            })
            .await
    }

    async fn database_time(&self) -> Result<Option<Timestamp>> {
        // An SQLite file is shared only by processes of one host: the
        // database's clock is the host's.
        Ok(None)
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn find_duplicate(
        &self,
        client: &str,
        idempotency_key: Option<&str>,
        refund_reference: Option<&str>,
    ) -> Result<Option<RefundRow>> {
        if idempotency_key.is_none() && refund_reference.is_none() {
            return Ok(None);
        }
        let sql = format!(
            "SELECT * FROM ({SELECT_REFUND} WHERE client = $1 AND idempotency_key = $2 \
             UNION ALL {SELECT_REFUND} WHERE client = $1 AND refund_reference = $3) AS dup LIMIT 1"
        );
        Ok(sqlx::query_as(&sql)
            .bind(client)
            .bind(idempotency_key)
            .bind(refund_reference)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// The reservation, the refund and its history line in one savepoint of
    /// the next group commit; a taken key or reference undoes the reservation.
    async fn create_refund(&self, new: &RefundRow, sale: &SaleTerms) -> Result<CreateOutcome> {
        let (row, terms) = (new.clone(), *sale);
        let outcome = self
            .batch
            .run(move |conn| {
                Box::pin(async move {
                    let mut q = QueryBuilder::<Sqlite>::new("");
                    push_reserve(&mut q, &row, &terms, super::SQLITE);
                    let reserved = q.build().execute(&mut *conn).await?.rows_affected();
                    if reserved == 0 {
                        return Ok((None, false));
                    }
                    // A taken idempotency key or refund reference inserts
                    // nothing (a repeated request); any other unique index
                    // refusing is an error, not a duplicate.
                    let mut q = QueryBuilder::<Sqlite>::new(NEW_REFUND);
                    q.push("VALUES (");
                    push_new_refund_values(&mut q, &row, |ms| ms);
                    q.push(
                        ") ON CONFLICT (client, idempotency_key) DO NOTHING \
                         ON CONFLICT (client, refund_reference) DO NOTHING",
                    );
                    let inserted = q.build().execute(&mut *conn).await?.rows_affected();
                    if inserted == 0 {
                        return Ok((Some(CreateOutcome::Duplicate), false));
                    }
                    let mut q = QueryBuilder::<Sqlite>::new(
                        "INSERT INTO refund_events (refund_id, at, source, status, detail) VALUES (",
                    );
                    q.push_bind(&row.id)
                        .push(", ")
                        .push_bind(row.created_at)
                        .push(", ")
                        .push(RECORDED)
                        .push(")");
                    q.build().execute(&mut *conn).await?;
                    Ok((Some(CreateOutcome::Created), true))
                })
            })
            .await?;
        if let Some(o) = outcome {
            return Ok(o);
        }
        let row = sqlx::query_as(SELECT_SALE)
            .bind(&new.account)
            .bind(&new.transaction_no)
            .fetch_optional(&self.pool)
            .await?;
        Ok(refusal(new, sale, row))
    }

    async fn apply_change(&self, c: &Change) -> Result<bool> {
        let c = c.clone();
        self.batch
            .run(move |conn| {
                Box::pin(async move {
                    let applied = Self::write_change(conn, &c).await?;
                    Ok((applied, applied))
                })
            })
            .await
    }

    async fn refund_events(&self, refund_id: &str) -> Result<Vec<RefundEvent>> {
        Ok(sqlx::query_as(
            "SELECT at, source, status, previous_status, provider_code, provider_status, detail, actor \
             FROM refund_events WHERE refund_id = $1 ORDER BY id",
        )
        .bind(refund_id)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn get_refund(&self, client: &str, id: &str) -> Result<Option<RefundRow>> {
        Ok(
            sqlx::query_as(&format!("{SELECT_REFUND} WHERE id = $1 AND client = $2"))
                .bind(id)
                .bind(client)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn get_refund_any_client(&self, id: &str) -> Result<Option<RefundRow>> {
        Ok(sqlx::query_as(&format!("{SELECT_REFUND} WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn list_refunds(&self, client: Option<&str>, f: &ListFilter) -> Result<Vec<RefundRow>> {
        let mut q = QueryBuilder::<Sqlite>::new(SELECT_REFUND);
        push_list_filters(&mut q, client, f, |t| t);
        Ok(q.build_query_as().fetch_all(&self.pool).await?)
    }

    async fn claim_due(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: i64,
    ) -> Result<Vec<RefundRow>> {
        let mut rows: Vec<RefundRow> = self
            .lease(
                "refunds",
                "id",
                "status = 'pending' AND next_check_at <= $1 AND (lease_until IS NULL OR lease_until < $1) \
                 AND (inflight_until IS NULL OR inflight_until < $1) ORDER BY next_check_at LIMIT $3",
                now,
                lease_until,
                limit,
            )
            .await?;
        rows.sort_by_key(|r| r.next_check_at);
        Ok(rows)
    }

    async fn review_count(&self, before: Timestamp) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM refunds WHERE review_reason IS NOT NULL OR (status = 'pending' AND created_at <= $1)",
        )
        .bind(before)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn pending_summary(&self) -> Result<(i64, Option<Timestamp>)> {
        Ok(
            sqlx::query_as(
                "SELECT COUNT(*), MIN(created_at) FROM refunds WHERE status = 'pending'",
            )
            .fetch_one(&self.pool)
            .await?,
        )
    }

    async fn insert_event(&self, e: &WebhookRow) -> Result<bool> {
        let _gate = self.gate().await;
        let n = sqlx::query(
            "INSERT INTO webhook_events (id, provider, account, dedupe_key, transaction_no, provider_refund_id, \
             provider_reference, amount, outcome, provider_status, fields, refund_id, state, note, received_at, attempts, \
             next_attempt_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&e.id)
        .bind(e.provider)
        .bind(&e.account)
        .bind(&e.dedupe_key)
        .bind(&e.transaction_no)
        .bind(&e.provider_refund_id)
        .bind(&e.provider_reference)
        .bind(&e.amount)
        .bind(e.outcome)
        .bind(&e.provider_status)
        .bind(&e.fields)
        .bind(&e.refund_id)
        .bind(e.state)
        .bind(&e.note)
        .bind(e.received_at)
        .bind(e.attempts)
        .bind(e.next_attempt_at)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn set_event_state(
        &self,
        id: &str,
        state: EventState,
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

    async fn find_refund_by_provider_ids(
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
        let mut q = sqlx::query_as(&sql)
            .bind(provider_refund_id)
            .bind(provider_reference);
        for a in accounts {
            q = q.bind(a);
        }
        Ok(q.fetch_optional(&self.pool).await?)
    }

    async fn pending_on_transaction(
        &self,
        accounts: &[String],
        transaction_no: &str,
    ) -> Result<Vec<String>> {
        if accounts.is_empty() {
            return Ok(vec![]);
        }
        let sql = format!(
            "SELECT id FROM refunds WHERE transaction_no = $1 AND status = 'pending' AND account IN ({})",
            placeholders(2, accounts.len())
        );
        let mut q = sqlx::query_scalar(&sql).bind(transaction_no);
        for a in accounts {
            q = q.bind(a);
        }
        Ok(q.fetch_all(&self.pool).await?)
    }

    async fn refunds_on_transaction(
        &self,
        account: &str,
        transaction_no: &str,
    ) -> Result<Vec<RefundRow>> {
        Ok(sqlx::query_as(&format!(
            "{SELECT_REFUND} WHERE account = $1 AND transaction_no = $2"
        ))
        .bind(account)
        .bind(transaction_no)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn check_now(&self, ids: &[String], now: Timestamp) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let _gate = self.gate().await;
        let sql = format!(
            "UPDATE refunds SET next_check_at = $1 WHERE status = 'pending' AND id IN ({})",
            placeholders(2, ids.len())
        );
        let mut q = sqlx::query(&sql).bind(now);
        for id in ids {
            q = q.bind(id);
        }
        q.execute(&self.pool).await?;
        Ok(())
    }

    async fn claim_unmatched_events(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: i64,
    ) -> Result<Vec<WebhookRow>> {
        let mut rows: Vec<WebhookRow> = self
            .lease(
                "webhook_events",
                "id",
                "(state = 'unmatched' AND next_attempt_at <= $1 \
                  OR state = 'received' AND received_at <= $1 - 30000) \
                 AND (lease_until IS NULL OR lease_until < $1) \
                 ORDER BY COALESCE(next_attempt_at, received_at) LIMIT $3",
                now,
                lease_until,
                limit,
            )
            .await?;
        rows.sort_by_key(|r| r.next_attempt_at);
        Ok(rows)
    }

    async fn event_not_matched(
        &self,
        id: &str,
        state: EventState,
        attempts: i64,
        next_attempt_at: Option<Timestamp>,
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

    async fn events_for_refund(&self, refund_id: &str) -> Result<Vec<WebhookRow>> {
        Ok(sqlx::query_as(&format!(
            "{SELECT_EVENT} WHERE refund_id = $1 ORDER BY received_at"
        ))
        .bind(refund_id)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn events_by_state(&self, state: EventState) -> Result<Vec<WebhookRow>> {
        Ok(sqlx::query_as(&format!(
            "{SELECT_EVENT} WHERE state = $1 ORDER BY received_at"
        ))
        .bind(state)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn claim_emails(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: i64,
    ) -> Result<Vec<OutboxRow>> {
        self.lease(
            "email_outbox",
            "refund_id",
            "state = 'pending' AND next_attempt_at <= $1 AND (lease_until IS NULL OR lease_until < $1) \
             ORDER BY next_attempt_at LIMIT $3",
            now,
            lease_until,
            limit,
        )
        .await
    }

    async fn email_attempted(
        &self,
        refund_id: &str,
        now: Timestamp,
        error: Option<&str>,
        next_attempt_at: Option<Timestamp>,
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

    async fn outbox_entry(&self, refund_id: &str) -> Result<Option<OutboxRow>> {
        Ok(sqlx::query_as(
            "SELECT refund_id, to_addr, subject, body, state, attempts, last_error FROM email_outbox WHERE refund_id = $1",
        )
        .bind(refund_id)
        .fetch_optional(&self.pool)
        .await?)
    }
}
