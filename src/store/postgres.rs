//! The Postgres store: native column types (`timestamptz`, `boolean`,
//! `jsonb`, checked text), leases with `FOR UPDATE SKIP LOCKED`, and every
//! refund write as one statement (data-modifying CTEs) where it can be.
//!
//! The gateway counts time in Unix milliseconds: they are bound as
//! `timestamptz` values ([`ts`]) and read back with `rg_ms(t)` (migration
//! 0007), so each row type is read by one `FromRow` on either database.
//! (No SQL function on the write path: Postgres would plan such statements
//! anew on every execution.)

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder};
use time::OffsetDateTime;

use super::events::{push_event_values, INSERT_EVENTS};
use crate::types::Timestamp;

use super::{
    probe, push_list_filters, push_new_refund_values, push_reserve, push_update, refusal, Backend,
    Change, CreateOutcome, EventState, ListFilter, OutboxRow, RefundEvent, RefundRow, Result,
    SaleTerms, StoreBackend, StoreError, WebhookRow, NEW_REFUND, RECORDED, SELECT_SALE,
};

pub(super) struct PgStore {
    pool: PgPool,
    /// The events, reconciliations and console stores on this database.
    sql: super::SqlOn<Postgres>,
}

const SELECT_REFUND: &str = "SELECT id, client, account, provider, livemode, status, amount_minor, currency, \
    settle_currency, transaction_no, reference, refund_reference, provider_reference, provider_refund_id, \
    provider_status, provider_code, provider_message, failure_code, failure_message, reason, receipt_email, \
    metadata, idempotency_key, request_hash, submission, response_code, response_body, \
    rg_ms(inflight_until) AS inflight_until, check_attempts, rg_ms(next_check_at) AS next_check_at, \
    rg_ms(lease_until) AS lease_until, review_reason, pending_reason, announced, rg_ms(send_by) AS send_by, not_found_streak, \
    rg_ms(created_at) AS created_at, rg_ms(updated_at) AS updated_at, version FROM refunds";

const SELECT_EVENT: &str = "SELECT id, provider, account, dedupe_key, transaction_no, provider_refund_id, \
    provider_reference, amount, outcome, provider_status, fields::text AS fields, refund_id, state, note, \
    rg_ms(received_at) AS received_at, attempts, rg_ms(next_attempt_at) AS next_attempt_at FROM webhook_events";

/// Unix milliseconds as the instant Postgres stores (clamped to the range
/// a timestamp can hold; the gateway's clock is far inside it).
fn ts(t: Timestamp) -> OffsetDateTime {
    t.to_offset_date_time()
}

const INSERT_HISTORY: &str =
    "INSERT INTO refund_events (refund_id, at, source, status, previous_status, \
    provider_code, provider_status, detail, actor) ";

/// A history line's values after its refund id (the columns of
/// [`INSERT_HISTORY`] but the first).
fn push_history_values<'a>(q: &mut QueryBuilder<'a, Postgres>, e: &'a RefundEvent) {
    let mut v = q.separated(", ");
    v.push_bind(ts(e.at))
        .push_bind(e.source)
        .push_bind(e.status)
        .push_bind(e.previous_status)
        .push_bind(&e.provider_code)
        .push_bind(&e.provider_status)
        .push_bind(&e.detail)
        .push_bind(&e.actor);
}

async fn insert_history(conn: &mut PgConnection, refund_id: &str, e: &RefundEvent) -> Result<()> {
    let mut q = QueryBuilder::<Postgres>::new(INSERT_HISTORY);
    q.push("VALUES (").push_bind(refund_id).push(", ");
    push_history_values(&mut q, e);
    q.push(")");
    q.build().execute(conn).await?;
    Ok(())
}

impl PgStore {
    pub(super) async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        probe::<PgConnection>(url).await?;
        let options: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .min_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            // A ping before every acquire doubles the round trips of short
            // queries; a dead connection surfaces as a query error instead
            // (mapped to 503) and is dropped by the pool.
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(PgStore {
            sql: super::SqlOn {
                pool: pool.clone(),
                d: super::POSTGRES,
                gate: None,
            },
            pool,
        })
    }

    async fn write_side_effects(conn: &mut PgConnection, c: &Change) -> Result<()> {
        let current = c.current();
        if let Some(e) = &c.effects().email {
            sqlx::query(
                "INSERT INTO email_outbox (refund_id, to_addr, subject, body, state, attempts, next_attempt_at, created_at) \
                 VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5) ON CONFLICT DO NOTHING",
            )
            .bind(&current.id)
            .bind(&e.to)
            .bind(&e.subject)
            .bind(&e.body)
            .bind(ts(c.after().updated_at))
            .execute(&mut *conn)
            .await?;
        }
        if c.effects().releases_reservation {
            sqlx::query("UPDATE sales SET reserved_minor = reserved_minor - $3 WHERE account = $1 AND transaction_no = $2")
                .bind(&current.account)
                .bind(&current.transaction_no)
                .bind(current.amount_minor)
                .execute(&mut *conn)
                .await?;
        }
        if c.effects().confirms_sale {
            // A refund the provider made confirms the sale's currency.
            sqlx::query("UPDATE sales SET currency = $3, currency_confirmed = true WHERE account = $1 AND transaction_no = $2 AND NOT currency_confirmed")
                .bind(&current.account)
                .bind(&current.transaction_no)
                .bind(current.currency)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// Leases up to `limit` rows of `table` picked by `pick` (`$1` now, `$3`
    /// limit) until `$2`, skipping rows another process holds; their keys.
    async fn lease(
        &self,
        table: &str,
        key: &str,
        pick: &str,
        now: Timestamp,
        lease_until: Timestamp,
        limit: i64,
    ) -> Result<Vec<String>> {
        let sql = format!(
            "UPDATE {table} SET lease_until = $2 WHERE {key} IN (SELECT {key} FROM {table} WHERE {pick} \
             FOR UPDATE SKIP LOCKED) RETURNING {key}"
        );
        Ok(sqlx::query_scalar(&sql)
            .bind(ts(now))
            .bind(ts(lease_until))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn create_refund_once(&self, new: &RefundRow, sale: &SaleTerms) -> Result<CreateOutcome> {
        // One statement: the reservation, the refund (only if reserved) and
        // its first history line (only if recorded).
        let mut q = QueryBuilder::<Postgres>::new("WITH reserve AS (");
        push_reserve(&mut q, new, sale, super::POSTGRES);
        q.push(" RETURNING 1), ins AS (")
            .push(NEW_REFUND)
            .push("SELECT ");
        push_new_refund_values(&mut q, new, ts);
        q.push(" FROM reserve RETURNING id) INSERT INTO refund_events (refund_id, at, source, status, detail) SELECT id, ")
            .push_bind(ts(new.created_at))
            .push(", ")
            .push(RECORDED)
            .push(" FROM ins");
        match q.build().execute(&self.pool).await {
            Ok(r) if r.rows_affected() == 1 => return Ok(CreateOutcome::Created),
            Ok(_) => {}
            // The client's idempotency key or refund reference is taken: a
            // repeated request. Any other unique index refusing (a refund id or
            // provider reference made twice) is a fault, not a duplicate.
            Err(e)
                if matches!(
                    StoreError::violated_unique(&e).as_deref(),
                    Some("refunds_client_idempotency_key" | "refunds_client_refund_reference")
                ) =>
            {
                return Ok(CreateOutcome::Duplicate)
            }
            Err(e) => return Err(e.into()),
        }
        let row = sqlx::query_as(SELECT_SALE)
            .bind(&new.account)
            .bind(&new.transaction_no)
            .fetch_optional(&self.pool)
            .await?;
        Ok(refusal(new, sale, row))
    }

    async fn apply_change_once(&self, c: &Change) -> Result<bool> {
        let mut q = QueryBuilder::<Postgres>::new("");
        if c.is_single_write() {
            // One statement: the update, and its history line and events
            // only if it applied.
            let events = c.effects().events.len() as u64;
            match (&c.effects().history, events) {
                (None, 0) => push_update(&mut q, c, ts),
                (history, _) => {
                    q.push("WITH u AS (");
                    push_update(&mut q, c, ts);
                    q.push(" RETURNING id)");
                    if let Some(e) = history {
                        q.push(if events > 0 { ", h AS (" } else { " " })
                            .push(INSERT_HISTORY)
                            .push("SELECT id, ");
                        push_history_values(&mut q, e);
                        q.push(" FROM u");
                        if events > 0 {
                            q.push(")");
                        }
                    }
                    if events > 0 {
                        q.push(" ").push(INSERT_EVENTS).push("SELECT * FROM (");
                        push_event_values(&mut q, c, super::POSTGRES);
                        q.push(") AS v WHERE EXISTS (SELECT 1 FROM u)");
                    }
                }
            }
            let n = q.build().execute(&self.pool).await?.rows_affected();
            // The last statement's rows: the update's, or else the history
            // line's, or else the events'.
            return Ok(n == events.max(1));
        }
        let mut tx = self.pool.begin().await?;
        // Locks in the order the record statement takes them (the sale,
        // then the refund): a refund's outcome that releases or confirms
        // its sale never deadlocks with a new refund on that sale.
        sqlx::query("SELECT 1 FROM sales WHERE account = $1 AND transaction_no = $2 FOR UPDATE")
            .bind(&c.current().account)
            .bind(&c.current().transaction_no)
            .execute(&mut *tx)
            .await?;
        push_update(&mut q, c, ts);
        let n = q.build().execute(&mut *tx).await?.rows_affected();
        if n != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        Self::write_side_effects(&mut tx, c).await?;
        if let Some(e) = &c.effects().history {
            insert_history(&mut tx, &c.current().id, e).await?;
        }
        let mut q = QueryBuilder::<Postgres>::new(INSERT_EVENTS);
        if push_event_values(&mut q, c, super::POSTGRES) {
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}

#[async_trait]
impl StoreBackend for PgStore {
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
        Backend::Postgres
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn write_probe(&self, _now: Timestamp) -> Result<()> {
        sqlx::query(
            "INSERT INTO readiness_probe (id, checked_at) VALUES (1, clock_timestamp()) \
             ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn database_time(&self) -> Result<Option<Timestamp>> {
        let ms: i64 =
            sqlx::query_scalar("SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::int8")
                .fetch_one(&self.pool)
                .await?;
        Ok(Some(Timestamp::from_unix_ms(ms)))
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
        // Two index lookups rather than one OR, which the planner may turn into a scan.
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

    /// One statement: the reservation, the refund and its history line (a
    /// concurrent writer waits on the sale's row lock and re-checks the
    /// condition); a taken idempotency key or reference aborts all of it.
    async fn create_refund(&self, new: &RefundRow, sale: &SaleTerms) -> Result<CreateOutcome> {
        retry_on_deadlock(|| self.create_refund_once(new, sale)).await
    }

    async fn apply_change(&self, change: &Change) -> Result<bool> {
        retry_on_deadlock(|| self.apply_change_once(change)).await
    }

    async fn refund_events(&self, refund_id: &str) -> Result<Vec<RefundEvent>> {
        Ok(sqlx::query_as(
            "SELECT rg_ms(at) AS at, source, status, previous_status, provider_code, provider_status, detail, actor \
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
        let mut q = QueryBuilder::<Postgres>::new(SELECT_REFUND);
        push_list_filters(&mut q, client, f, ts);
        Ok(q.build_query_as().fetch_all(&self.pool).await?)
    }

    async fn claim_due(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: i64,
    ) -> Result<Vec<RefundRow>> {
        let ids = self
            .lease(
                "refunds",
                "id",
                "status = 'pending' AND next_check_at <= $1 \
                 AND (lease_until IS NULL OR lease_until < $1) \
                 AND (inflight_until IS NULL OR inflight_until < $1) ORDER BY next_check_at LIMIT $3",
                now,
                lease_until,
                limit,
            )
            .await?;
        Ok(sqlx::query_as(&format!(
            "{SELECT_REFUND} WHERE id = ANY($1) ORDER BY next_check_at"
        ))
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn review_count(&self, before: Timestamp) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM refunds WHERE review_reason IS NOT NULL OR (status = 'pending' AND created_at <= $1)",
        )
        .bind(ts(before))
        .fetch_one(&self.pool)
        .await?)
    }

    async fn pending_summary(&self) -> Result<(i64, Option<Timestamp>)> {
        Ok(sqlx::query_as(
            "SELECT COUNT(*), rg_ms(MIN(created_at)) FROM refunds WHERE status = 'pending'",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    async fn insert_event(&self, e: &WebhookRow) -> Result<bool> {
        let n = sqlx::query(
            "INSERT INTO webhook_events (id, provider, account, dedupe_key, transaction_no, provider_refund_id, \
             provider_reference, amount, outcome, provider_status, fields, refund_id, state, note, received_at, attempts, \
             next_attempt_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, $12, $13, $14, $15, $16, \
             $17) ON CONFLICT DO NOTHING",
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
        .bind(ts(e.received_at))
        .bind(e.attempts)
        .bind(e.next_attempt_at.map(ts))
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
        let sql = format!(
            "SELECT * FROM ({SELECT_REFUND} WHERE provider_reference = $2 AND account = ANY($3) \
             UNION ALL {SELECT_REFUND} WHERE provider_refund_id = $1 AND account = ANY($3)) AS m LIMIT 1"
        );
        Ok(sqlx::query_as(&sql)
            .bind(provider_refund_id)
            .bind(provider_reference)
            .bind(accounts)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn pending_on_transaction(
        &self,
        accounts: &[String],
        transaction_no: &str,
    ) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM refunds WHERE transaction_no = $1 AND status = 'pending' AND account = ANY($2)",
        )
        .bind(transaction_no)
        .bind(accounts)
        .fetch_all(&self.pool)
        .await?)
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
        sqlx::query(
            "UPDATE refunds SET next_check_at = $2 WHERE id = ANY($1) AND status = 'pending'",
        )
        .bind(ids)
        .bind(ts(now))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn claim_unmatched_events(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: i64,
    ) -> Result<Vec<WebhookRow>> {
        let ids = self
            .lease(
                "webhook_events",
                "id",
                "(state = 'unmatched' AND next_attempt_at <= $1 \
                  OR state = 'received' AND received_at <= $1 - interval '30 seconds') \
                 AND (lease_until IS NULL OR lease_until < $1) \
                 ORDER BY COALESCE(next_attempt_at, received_at) LIMIT $3",
                now,
                lease_until,
                limit,
            )
            .await?;
        Ok(sqlx::query_as(&format!(
            "{SELECT_EVENT} WHERE id = ANY($1) ORDER BY COALESCE(next_attempt_at, received_at)"
        ))
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn event_not_matched(
        &self,
        id: &str,
        state: EventState,
        attempts: i64,
        next_attempt_at: Option<Timestamp>,
        note: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE webhook_events SET state = $2, attempts = $3, next_attempt_at = $4, lease_until = NULL, note = $5 WHERE id = $1",
        )
        .bind(id)
        .bind(state)
        .bind(attempts)
        .bind(next_attempt_at.map(ts))
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
        let ids = self
            .lease(
                "email_outbox",
                "refund_id",
                "state = 'pending' AND next_attempt_at <= $1 \
                 AND (lease_until IS NULL OR lease_until < $1) ORDER BY next_attempt_at LIMIT $3",
                now,
                lease_until,
                limit,
            )
            .await?;
        Ok(sqlx::query_as(
            "SELECT refund_id, to_addr, subject, body, state, attempts, last_error FROM email_outbox WHERE refund_id = ANY($1) \
             ORDER BY next_attempt_at",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn email_attempted(
        &self,
        refund_id: &str,
        now: Timestamp,
        error: Option<&str>,
        next_attempt_at: Option<Timestamp>,
    ) -> Result<()> {
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
        .bind(ts(next))
        .bind(error)
        .bind(ts(now))
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

/// Runs a write again when Postgres aborted it to break a deadlock or a
/// serialization conflict (SQLSTATE 40P01, 40001): the aborted attempt
/// changed nothing, and every write here is a compare-and-swap that decides
/// afresh. At most 4 attempts, with a short growing pause between.
async fn retry_on_deadlock<T, F, Fut>(mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut tries = 0u64;
    loop {
        match attempt().await {
            Err(StoreError::Db(sqlx::Error::Database(e)))
                if tries < 3 && matches!(e.code().as_deref(), Some("40P01" | "40001")) =>
            {
                tries += 1;
                tracing::debug!(code = ?e.code(), tries, "write aborted by the database; trying again");
                tokio::time::sleep(std::time::Duration::from_millis(5 * tries)).await;
            }
            other => return other,
        }
    }
}
