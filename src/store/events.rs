//! The POS's events (its feed and its outgoing webhooks) and their
//! deliveries: the same SQL on both databases (times through
//! [`Dialect::times`]), run by one implementation generic over sqlx's pool.
//! The backends call it; SQLite's under its write gate.

use async_trait::async_trait;
use sqlx::{Database, Executor, IntoArguments, QueryBuilder};

use super::model::{
    Change, DeliveryAttempt, DeliveryNext, DeliveryRow, DeliveryState, DisabledEndpoint,
    NewDelivery, PosEventRow,
};
use super::{Dialect, Result, SqlOn};
use crate::types::{DomainEvent, Timestamp};

/// A new event id: `evt_` and a ULID.
pub(super) fn new_event_id() -> String {
    format!("evt_{}", ulid::Ulid::new())
}

/// The columns of a new event, for [`push_event_values`].
pub(super) const INSERT_EVENTS: &str = "INSERT INTO pos_events (id, client, refund_id, \
    refund_version, ordinal, type, created_at, data, fanned_out) ";

/// The `VALUES` rows of the change's events (`None` when it has none).
/// Postgres: a time is written through `rg_ts`.
pub(super) fn push_event_values<'a, DB>(
    q: &mut QueryBuilder<'a, DB>,
    c: &'a Change,
    d: Dialect,
) -> bool
where
    DB: Database,
    String: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    DomainEvent: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Timestamp: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let after = c.after();
    let mut any = false;
    for (i, (kind, data)) in c.pos_events().enumerate() {
        q.push(if any { ", (" } else { "VALUES (" });
        any = true;
        q.push_bind(new_event_id())
            .push(", ")
            .push_bind(after.client.as_str())
            .push(", ")
            .push_bind(after.id.as_str())
            .push(", ")
            .push_bind(after.version)
            .push(", ")
            .push_bind(i as i64)
            .push(format_args!("{d}, ", d = d.nullable_int))
            .push_bind(kind)
            .push(format_args!(", {}(", d.write_ts))
            .push_bind(after.updated_at)
            .push("), ")
            .push_bind(data)
            // Nothing to fan out for a client without endpoints.
            .push(if c.effects().deliver_events {
                ", 0)"
            } else {
                ", 1)"
            });
    }
    any
}

const EVENT_COLUMNS: &str = "id, seq, client, refund_id, type, @ms(created_at) AS created_at, data";

const DELIVERY_COLUMNS: &str = "d.id, d.event_id, d.client, d.endpoint, d.refund_id, d.seq, \
    d.state, d.attempts, @ms(d.next_attempt_at) AS next_attempt_at, d.last_status, d.last_error, \
    @ms(d.created_at) AS created_at, @ms(d.delivered_at) AS delivered_at, e.type AS event_type, \
    @ms(e.created_at) AS event_created_at, e.data";

/// The rows a statement changed (an inherent method of each database's
/// result type, named here for the generic code).
pub(super) trait Affected {
    fn affected(&self) -> u64;
}

impl Affected for sqlx::postgres::PgQueryResult {
    fn affected(&self) -> u64 {
        self.rows_affected()
    }
}

impl Affected for sqlx::sqlite::SqliteQueryResult {
    fn affected(&self) -> u64 {
        self.rows_affected()
    }
}

/// The POS's events and their webhook deliveries, on either database.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Gives the feed positions of committed events not yet placed, in the
    /// order they happened (a refund's in the order of its versions), after
    /// every position already given; one sequencer at a time.
    async fn sequence(&self) -> Result<u64>;
    /// A client's events after feed position `after`, oldest first.
    async fn feed(
        &self,
        client: &str,
        after: i64,
        kind: Option<DomainEvent>,
        limit: i64,
    ) -> Result<Vec<PosEventRow>>;
    /// One event (a client's own, or any for operators).
    async fn event(&self, client: Option<&str>, id: &str) -> Result<Option<PosEventRow>>;
    /// A refund's events, in feed order (placed ones first).
    async fn refund_events(&self, refund_id: &str) -> Result<Vec<PosEventRow>>;
    /// Placed events whose deliveries are not yet made, in feed order.
    async fn unfanned(&self, limit: i64) -> Result<Vec<PosEventRow>>;
    /// Makes `deliveries` (an existing one is kept) and marks `events` as
    /// fanned out, in one transaction.
    async fn fan_out(
        &self,
        events: &[String],
        deliveries: &[NewDelivery],
        now: Timestamp,
    ) -> Result<()>;
    /// Leases due deliveries: pending, due, not held by another process, to
    /// an endpoint that is not disabled, and the oldest pending one of its
    /// refund for its endpoint (a refund's events arrive in order).
    async fn claim(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        token: &str,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>>;
    /// Records an attempt and what it leaves the delivery as, only while
    /// the attempt's lease (`token`) still holds it; whether it did.
    async fn attempted(&self, token: &str, a: &DeliveryAttempt, next: DeliveryNext)
        -> Result<bool>;
    /// Gives back leased deliveries not attempted (due again at once).
    async fn release(&self, token: &str, ids: &[String]) -> Result<()>;
    async fn disable(
        &self,
        client: &str,
        endpoint: &str,
        now: Timestamp,
        reason: &str,
    ) -> Result<()>;
    /// Enables a disabled endpoint; whether it was disabled. Its waiting
    /// deliveries are due at once.
    async fn enable(&self, client: &str, endpoint: &str, now: Timestamp) -> Result<bool>;
    async fn disabled(&self) -> Result<Vec<DisabledEndpoint>>;
    /// Makes an event's deliveries due again (a fresh schedule) and the
    /// event fanned out anew (an endpoint added since gets it too); whether
    /// the event exists.
    async fn redeliver(&self, event_id: &str, now: Timestamp) -> Result<bool>;
    /// Deliveries, newest first, by state and client.
    async fn deliveries(
        &self,
        state: Option<DeliveryState>,
        client: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>>;
    /// The attempts of one delivery, oldest first.
    async fn attempts(&self, delivery_id: &str) -> Result<Vec<DeliveryAttempt>>;
    /// When the oldest event not yet delivered everywhere was recorded.
    async fn oldest_undelivered(&self) -> Result<Option<Timestamp>>;
    /// Deletes events recorded before `before` that no delivery still
    /// waits for (their deliveries and attempts go with them).
    async fn prune(&self, before: Timestamp) -> Result<u64>;
}

#[async_trait]
impl<DB> EventStore for SqlOn<DB>
where
    DB: Database,
    DB::QueryResult: Affected,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Timestamp: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<Timestamp>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> DomainEvent: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> DeliveryState: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'r> PosEventRow: sqlx::FromRow<'r, DB::Row>,
    for<'r> DeliveryRow: sqlx::FromRow<'r, DB::Row>,
    for<'r> DeliveryAttempt: sqlx::FromRow<'r, DB::Row>,
    for<'r> DisabledEndpoint: sqlx::FromRow<'r, DB::Row>,
    for<'r> (i64,): sqlx::FromRow<'r, DB::Row>,
    for<'r> (Option<Timestamp>,): sqlx::FromRow<'r, DB::Row>,
    DB::Connection: Send,
{
    async fn sequence(&self) -> Result<u64> {
        // Most passes find nothing to place: a read, no lock.
        let waiting: Option<(i64,)> =
            sqlx::query_as("SELECT refund_version FROM pos_events WHERE seq IS NULL LIMIT 1")
                .fetch_optional(&self.pool)
                .await?;
        if waiting.is_none() {
            return Ok(0);
        }
        let _gate = self.gate().await;
        let mut tx = self.pool.begin().await?;
        let conn: &mut DB::Connection = &mut tx;
        if !self.d.sequencer_lock.is_empty() {
            sqlx::query(self.d.sequencer_lock)
                .execute(&mut *conn)
                .await?;
        }
        let n = sqlx::query(
            "UPDATE pos_events SET seq = (SELECT COALESCE(MAX(seq), 0) FROM pos_events) + t.rn \
             FROM (SELECT id, row_number() OVER (ORDER BY created_at, refund_id, refund_version, ordinal) AS rn \
                   FROM (SELECT id, created_at, refund_id, refund_version, ordinal FROM pos_events \
                         WHERE seq IS NULL ORDER BY created_at, refund_id, refund_version, ordinal LIMIT 1000) AS x) AS t \
             WHERE pos_events.id = t.id",
        )
        .execute(conn)
        .await?
        .affected();
        let out = n;
        tx.commit().await?;
        Ok(out)
    }

    async fn feed(
        &self,
        client: &str,
        after: i64,
        kind: Option<DomainEvent>,
        limit: i64,
    ) -> Result<Vec<PosEventRow>> {
        let sql = self.sql(&format!(
            "SELECT {EVENT_COLUMNS} FROM pos_events WHERE client = $1 AND seq > $2 \
             AND ($3{n} IS NULL OR type = $3) ORDER BY seq LIMIT $4",
            n = self.text_param()
        ));
        Ok(sqlx::query_as(&sql)
            .bind(client)
            .bind(after)
            .bind(kind.map(|k| k.as_str()))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn event(&self, client: Option<&str>, id: &str) -> Result<Option<PosEventRow>> {
        let sql = self.sql(&format!(
            "SELECT {EVENT_COLUMNS} FROM pos_events WHERE id = $1 AND ($2{n} IS NULL OR client = $2)",
            n = self.text_param()
        ));
        Ok(sqlx::query_as(&sql)
            .bind(id)
            .bind(client)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn refund_events(&self, refund_id: &str) -> Result<Vec<PosEventRow>> {
        let sql = self.sql(&format!(
            "SELECT {EVENT_COLUMNS} FROM pos_events WHERE refund_id = $1 \
             ORDER BY seq IS NULL, seq, created_at, refund_version, ordinal"
        ));
        Ok(sqlx::query_as(&sql)
            .bind(refund_id)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn unfanned(&self, limit: i64) -> Result<Vec<PosEventRow>> {
        let sql = self.sql(&format!(
            "SELECT {EVENT_COLUMNS} FROM pos_events WHERE fanned_out = 0 AND seq IS NOT NULL \
             ORDER BY seq LIMIT $1"
        ));
        Ok(sqlx::query_as(&sql)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn fan_out(
        &self,
        events: &[String],
        deliveries: &[NewDelivery],
        now: Timestamp,
    ) -> Result<()> {
        let _gate = self.gate().await;
        let mut tx = self.pool.begin().await?;
        let conn: &mut DB::Connection = &mut tx;
        // A few statements for the whole batch, not one per row (the
        // placeholders are generated here, row by row).
        let ts = self.d.write_ts;
        for chunk in deliveries.chunks(100) {
            let rows: Vec<String> = (0..chunk.len())
                .map(|r| {
                    let b = r * 7;
                    format!(
                        "(${}, ${}, ${}, ${}, ${}, ${}, 'pending', 0, {ts}(${}), {ts}(${}))",
                        b + 1,
                        b + 2,
                        b + 3,
                        b + 4,
                        b + 5,
                        b + 6,
                        b + 7,
                        b + 7
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO webhook_deliveries (id, event_id, client, endpoint, refund_id, seq, \
                 state, attempts, next_attempt_at, created_at) VALUES {} \
                 ON CONFLICT (event_id, endpoint) DO NOTHING",
                rows.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for n in chunk {
                q = q
                    .bind(format!("dlv_{}", ulid::Ulid::new()))
                    .bind(n.event_id.as_str())
                    .bind(n.client.as_str())
                    .bind(n.endpoint.as_str())
                    .bind(n.refund_id.as_str())
                    .bind(n.seq)
                    .bind(now);
            }
            q.execute(&mut *conn).await?;
        }
        for chunk in events.chunks(500) {
            let marks: Vec<String> = (1..=chunk.len()).map(|k| format!("${k}")).collect();
            let sql = format!(
                "UPDATE pos_events SET fanned_out = 1 WHERE id IN ({})",
                marks.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id.as_str());
            }
            q.execute(&mut *conn).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn claim(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        token: &str,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>> {
        let _gate = self.gate().await;
        let mut tx = self.pool.begin().await?;
        let conn: &mut DB::Connection = &mut tx;
        let pick = self.sql(
            "SELECT d.id FROM webhook_deliveries d WHERE d.state = 'pending' \
             AND d.next_attempt_at <= @ts($1) AND (d.lease_until IS NULL OR d.lease_until < @ts($1)) \
             AND NOT EXISTS (SELECT 1 FROM webhook_deliveries o WHERE o.endpoint = d.endpoint \
                 AND o.refund_id = d.refund_id AND o.state = 'pending' AND o.seq < d.seq) \
             AND NOT EXISTS (SELECT 1 FROM webhook_endpoints_disabled x WHERE x.client = d.client \
                 AND x.endpoint = d.endpoint) \
             ORDER BY d.next_attempt_at LIMIT $3",
        ) + self.d.skip_locked;
        // The lease conditions again on the row itself: a row another
        // process leased meanwhile is left to it.
        let lease = self.sql(&format!(
            "UPDATE webhook_deliveries SET lease_until = @ts($2), lease_token = $4 WHERE id IN ({pick}) \
             AND state = 'pending' AND (lease_until IS NULL OR lease_until < @ts($1))"
        ));
        sqlx::query(&lease)
            .bind(now)
            .bind(lease_until)
            .bind(limit)
            .bind(token)
            .execute(&mut *conn)
            .await?;
        let sql = self.sql(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d JOIN pos_events e ON e.id = d.event_id \
             WHERE d.lease_token = $1 AND d.state = 'pending' AND d.lease_until = @ts($2) ORDER BY d.seq"
        ));
        let out = sqlx::query_as(&sql)
            .bind(token)
            .bind(lease_until)
            .fetch_all(&mut *conn)
            .await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn attempted(
        &self,
        token: &str,
        a: &DeliveryAttempt,
        next: DeliveryNext,
    ) -> Result<bool> {
        let (state, next_at, delivered) = match next {
            DeliveryNext::Delivered => (DeliveryState::Delivered, None, Some(a.at)),
            DeliveryNext::Retry(at) => (DeliveryState::Pending, Some(at), None),
            DeliveryNext::Failed => (DeliveryState::Failed, None, None),
            DeliveryNext::Disabled => (DeliveryState::Pending, Some(a.at), None),
        };
        if self.d.writes_in_cte {
            // One statement: the attempt is recorded only if the lease held.
            let sql = self.sql(
                "WITH u AS (UPDATE webhook_deliveries SET state = $3, attempts = attempts + 1, \
                 next_attempt_at = COALESCE(@ts($4), next_attempt_at), lease_until = NULL, lease_token = NULL, \
                 last_status = $5, last_error = $6, delivered_at = @ts($7) \
                 WHERE id = $1 AND lease_token = $2 RETURNING id) \
                 INSERT INTO webhook_attempts (delivery_id, at, http_status, error, duration_ms) \
                 SELECT id, @ts($8), $5, $6, $9 FROM u",
            );
            let n = sqlx::query(&sql)
                .bind(a.delivery_id.as_str())
                .bind(token)
                .bind(state)
                .bind(next_at)
                .bind(a.http_status)
                .bind(a.error.as_deref())
                .bind(delivered)
                .bind(a.at)
                .bind(a.duration_ms)
                .execute(&self.pool)
                .await?
                .affected();
            return Ok(n == 1);
        }
        let _gate = self.gate().await;
        let mut tx = self.pool.begin().await?;
        let conn: &mut DB::Connection = &mut tx;
        let sql = self.sql(
            "UPDATE webhook_deliveries SET state = $3, attempts = attempts + 1, \
             next_attempt_at = COALESCE(@ts($4), next_attempt_at), lease_until = NULL, lease_token = NULL, \
             last_status = $5, last_error = $6, delivered_at = @ts($7) \
             WHERE id = $1 AND lease_token = $2",
        );
        let n = sqlx::query(&sql)
            .bind(a.delivery_id.as_str())
            .bind(token)
            .bind(state)
            .bind(next_at)
            .bind(a.http_status)
            .bind(a.error.as_deref())
            .bind(delivered)
            .execute(&mut *conn)
            .await?
            .affected();
        if n == 1 {
            let sql = self.sql(
                "INSERT INTO webhook_attempts (delivery_id, at, http_status, error, duration_ms) \
                 VALUES ($1, @ts($2), $3, $4, $5)",
            );
            sqlx::query(&sql)
                .bind(a.delivery_id.as_str())
                .bind(a.at)
                .bind(a.http_status)
                .bind(a.error.as_deref())
                .bind(a.duration_ms)
                .execute(&mut *conn)
                .await?;
        }
        let out = n == 1;
        tx.commit().await?;
        Ok(out)
    }

    async fn release(&self, token: &str, ids: &[String]) -> Result<()> {
        let _gate = self.gate().await;
        for id in ids {
            sqlx::query(
                "UPDATE webhook_deliveries SET lease_until = NULL, lease_token = NULL \
                 WHERE id = $1 AND lease_token = $2",
            )
            .bind(id.as_str())
            .bind(token)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    async fn disable(
        &self,
        client: &str,
        endpoint: &str,
        now: Timestamp,
        reason: &str,
    ) -> Result<()> {
        let _gate = self.gate().await;
        let mut tx = self.pool.begin().await?;
        let conn: &mut DB::Connection = &mut tx;
        let sql = self.sql(
            "INSERT INTO webhook_endpoints_disabled (client, endpoint, disabled_at, reason) \
             VALUES ($1, $2, @ts($3), $4) ON CONFLICT (client, endpoint) DO NOTHING",
        );
        sqlx::query(&sql)
            .bind(client)
            .bind(endpoint)
            .bind(now)
            .bind(reason)
            .execute(conn)
            .await?;
        let out = ();
        tx.commit().await?;
        Ok(out)
    }

    async fn enable(&self, client: &str, endpoint: &str, now: Timestamp) -> Result<bool> {
        let _gate = self.gate().await;
        let mut tx = self.pool.begin().await?;
        let conn: &mut DB::Connection = &mut tx;
        let n = sqlx::query(
            "DELETE FROM webhook_endpoints_disabled WHERE client = $1 AND endpoint = $2",
        )
        .bind(client)
        .bind(endpoint)
        .execute(&mut *conn)
        .await?
        .affected();
        let sql = self.sql(
            "UPDATE webhook_deliveries SET next_attempt_at = @ts($3) \
             WHERE client = $1 AND endpoint = $2 AND state = 'pending'",
        );
        sqlx::query(&sql)
            .bind(client)
            .bind(endpoint)
            .bind(now)
            .execute(&mut *conn)
            .await?;
        let out = n == 1;
        tx.commit().await?;
        Ok(out)
    }

    async fn disabled(&self) -> Result<Vec<DisabledEndpoint>> {
        let sql = self.sql(
            "SELECT client, endpoint, @ms(disabled_at) AS disabled_at, reason \
             FROM webhook_endpoints_disabled ORDER BY client, endpoint",
        );
        Ok(sqlx::query_as(&sql).fetch_all(&self.pool).await?)
    }

    async fn redeliver(&self, event_id: &str, now: Timestamp) -> Result<bool> {
        let _gate = self.gate().await;
        let mut tx = self.pool.begin().await?;
        let conn: &mut DB::Connection = &mut tx;
        let n = sqlx::query("UPDATE pos_events SET fanned_out = 0 WHERE id = $1")
            .bind(event_id)
            .execute(&mut *conn)
            .await?
            .affected();
        let sql = self.sql(
            "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_attempt_at = @ts($2), \
             lease_until = NULL, lease_token = NULL WHERE event_id = $1",
        );
        sqlx::query(&sql)
            .bind(event_id)
            .bind(now)
            .execute(&mut *conn)
            .await?;
        let out = n == 1;
        tx.commit().await?;
        Ok(out)
    }

    async fn deliveries(
        &self,
        state: Option<DeliveryState>,
        client: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>> {
        let cast = self.text_param();
        let sql = self.sql(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d JOIN pos_events e ON e.id = d.event_id \
             WHERE ($1{cast} IS NULL OR d.state = $1) AND ($2{cast} IS NULL OR d.client = $2) \
             ORDER BY d.created_at DESC, d.seq DESC LIMIT $3"
        ));
        Ok(sqlx::query_as(&sql)
            .bind(state.map(|s| s.as_str()))
            .bind(client)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn attempts(&self, delivery_id: &str) -> Result<Vec<DeliveryAttempt>> {
        let sql = self.sql(
            "SELECT delivery_id, @ms(at) AS at, http_status, error, duration_ms FROM webhook_attempts \
             WHERE delivery_id = $1 ORDER BY at",
        );
        Ok(sqlx::query_as(&sql)
            .bind(delivery_id)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn oldest_undelivered(&self) -> Result<Option<Timestamp>> {
        let sql = self.sql(
            "SELECT @ms(MIN(created_at)) FROM (SELECT created_at FROM webhook_deliveries WHERE state = 'pending' \
             UNION ALL SELECT created_at FROM pos_events WHERE fanned_out = 0) AS u",
        );
        let (t,): (Option<Timestamp>,) = sqlx::query_as(&sql).fetch_one(&self.pool).await?;
        Ok(t)
    }

    async fn prune(&self, before: Timestamp) -> Result<u64> {
        let _gate = self.gate().await;
        let mut tx = self.pool.begin().await?;
        let conn: &mut DB::Connection = &mut tx;
        let sql = self.sql(
            "DELETE FROM pos_events WHERE created_at < @ts($1) AND fanned_out = 1 AND NOT EXISTS \
             (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = pos_events.id AND d.state = 'pending')",
        );
        let out = sqlx::query(&sql)
            .bind(before)
            .execute(conn)
            .await?
            .affected();
        tx.commit().await?;
        Ok(out)
    }
}
