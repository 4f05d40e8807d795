//! The daily reconciliation's reports, their line items, and the refunds
//! found at the provider only: the same SQL on both databases (times through
//! [`Dialect::times`]), one implementation generic over sqlx's pool, like
//! [`super::events`]. SQLite's writes take its write gate.

use async_trait::async_trait;
use sqlx::{Database, Executor, IntoArguments, Pool};

use super::events::Affected;
use super::{Result, SqlOn};
use crate::types::Timestamp;

/// A stored report's head (its line items are read apart, in pages).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ReportRow {
    /// `rec_` and a ULID; the same for every run of its account and day.
    pub id: String,
    pub account: String,
    pub provider: String,
    /// `YYYY-MM-DD`.
    pub day: String,
    /// `running`, `done` or `failed`.
    pub state: String,
    /// Completed or started runs (a re-run replaces the items).
    pub runs: i64,
    pub started_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    pub discrepancies: i64,
    /// The summary (counts by kind, totals per currency), JSON.
    pub summary: Option<String>,
    pub error: Option<String>,
}

/// One line of a report.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, Default)]
pub struct ItemRow {
    pub n: i64,
    /// `matched`, `amount_mismatch`, `currency_mismatch`, `status_mismatch`,
    /// `only_at_gateway`, `only_at_provider`.
    pub kind: String,
    pub refund_id: Option<String>,
    pub transaction_no: Option<String>,
    pub provider_refund_id: Option<String>,
    pub provider_reference: Option<String>,
    pub currency: Option<String>,
    /// Decimal, in the currency's digits.
    pub gateway_amount: Option<String>,
    pub provider_amount: Option<String>,
    pub gateway_status: Option<String>,
    pub provider_status: Option<String>,
    /// What the provider's status means: `succeeded`, `failed`, `pending`, `unknown`.
    pub provider_outcome: Option<String>,
    pub note: Option<String>,
}

/// A refund the provider made that the gateway did not.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OutsideRefund {
    pub account: String,
    pub provider_refund_id: String,
    pub provider: String,
    pub transaction_no: String,
    pub provider_reference: Option<String>,
    pub amount_minor: i64,
    pub currency: String,
    pub provider_status: Option<String>,
    /// The report that found it.
    pub found_in: String,
    pub found_at: Timestamp,
    pub review_reason: Option<String>,
}

/// A sale as the gateway's books hold it (the reservations' row).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SaleBooks {
    /// Pinned by the provider's answer (or a refund's success); `None`: not known.
    pub amount_minor: Option<i64>,
    pub currency: String,
    pub currency_confirmed: bool,
    /// Held by our live refunds.
    pub reserved_minor: i64,
    /// Refunds made elsewhere, as far as they are known.
    pub external_minor: i64,
}

/// A run taken: the report's id and whether it replaces an earlier run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunClaim {
    pub id: String,
    pub replaces: bool,
}

#[async_trait]
pub trait ReconciliationStore: Send + Sync {
    /// Takes the run of `account`'s `day` for the holder of `token` until
    /// `lease_until`: unless another run holds an unexpired lease, or
    /// (`only_if_new`, the daily job) the day already has a finished report.
    /// `None`: not taken.
    #[allow(clippy::too_many_arguments)]
    async fn begin_run(
        &self,
        account: &str,
        provider: &str,
        day: &str,
        token: &str,
        now: Timestamp,
        lease_until: Timestamp,
        only_if_new: bool,
    ) -> Result<Option<RunClaim>>;
    /// Drops the items of an earlier run; whether the lease still holds.
    async fn clear_items(&self, id: &str, token: &str, lease_until: Timestamp) -> Result<bool>;
    /// Adds items (and extends the lease); whether the lease still holds.
    async fn add_items(
        &self,
        id: &str,
        token: &str,
        lease_until: Timestamp,
        items: &[ItemRow],
    ) -> Result<bool>;
    /// Ends the run: `done` with its summary, or `failed` with `error`.
    #[allow(clippy::too_many_arguments)]
    async fn finish_run(
        &self,
        id: &str,
        token: &str,
        now: Timestamp,
        summary: Option<&str>,
        discrepancies: i64,
        error: Option<&str>,
    ) -> Result<bool>;
    async fn report(&self, id: &str) -> Result<Option<ReportRow>>;
    /// The report of `account`'s `day`, if one was started.
    async fn report_for_day(&self, account: &str, day: &str) -> Result<Option<ReportRow>>;
    /// Reports, newest day first (then account), after `(day, account)`.
    async fn reports(
        &self,
        account: Option<&str>,
        after: Option<(&str, &str)>,
        limit: i64,
    ) -> Result<Vec<ReportRow>>;
    /// A report's items after line `after`, in order.
    async fn items(&self, id: &str, after: i64, limit: i64) -> Result<Vec<ItemRow>>;
    /// Records a refund found at the provider only (as the provider lists
    /// it now, where it is already known) and counts every such refund of
    /// its sale against the sale (never less than before: what counts
    /// against a sale only grows); whether it is new or changed.
    async fn record_outside(&self, o: &OutsideRefund) -> Result<bool>;
    /// An operator has looked at a refund made elsewhere: it leaves the
    /// review queue (it still counts against its sale); whether it exists.
    async fn acknowledge_outside(
        &self,
        account: &str,
        provider_refund_id: &str,
        operator: &str,
        note: &str,
        now: Timestamp,
    ) -> Result<bool>;
    /// The sale's row in the gateway's books.
    async fn sale_books(&self, account: &str, transaction_no: &str) -> Result<Option<SaleBooks>>;
    /// Refunds made elsewhere: of one sale, or (none given) the ones
    /// flagged for review, newest first.
    async fn outside_refunds(
        &self,
        sale: Option<(&str, &str)>,
        limit: i64,
    ) -> Result<Vec<OutsideRefund>>;
}

const REPORT_COLUMNS: &str =
    "id, account, provider, day, state, runs, @ms(started_at) AS started_at, \
    @ms(finished_at) AS finished_at, discrepancies, summary, error";

const ITEM_COLUMNS: &str = "n, kind, refund_id, transaction_no, provider_refund_id, \
    provider_reference, currency, gateway_amount, provider_amount, gateway_status, \
    provider_status, provider_outcome, note";

const OUTSIDE_COLUMNS: &str = "account, provider_refund_id, provider, transaction_no, \
    provider_reference, amount_minor, currency, provider_status, found_in, \
    @ms(found_at) AS found_at, review_reason";

#[async_trait]
impl<DB> ReconciliationStore for SqlOn<DB>
where
    DB: Database,
    DB::QueryResult: Affected,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> bool: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Timestamp: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'r> ReportRow: sqlx::FromRow<'r, DB::Row>,
    for<'r> ItemRow: sqlx::FromRow<'r, DB::Row>,
    for<'r> OutsideRefund: sqlx::FromRow<'r, DB::Row>,
    for<'r> SaleBooks: sqlx::FromRow<'r, DB::Row>,
    for<'r> (String, i64): sqlx::FromRow<'r, DB::Row>,
    for<'r> (i64,): sqlx::FromRow<'r, DB::Row>,
    DB::Connection: Send,
{
    async fn begin_run(
        &self,
        account: &str,
        provider: &str,
        day: &str,
        token: &str,
        now: Timestamp,
        lease_until: Timestamp,
        only_if_new: bool,
    ) -> Result<Option<RunClaim>> {
        let _gate = self.gate().await;
        let new_only = if only_if_new {
            " AND reconciliations.state <> 'done'"
        } else {
            ""
        };
        let sql = self.sql(&format!(
            "INSERT INTO reconciliations (id, account, provider, day, state, runs, lease_until, \
             lease_token, started_at) VALUES ($1, $2, $3, $4, 'running', 0, @ts($5), $6, @ts($7)) \
             ON CONFLICT (account, day) DO UPDATE SET state = 'running', \
               lease_until = excluded.lease_until, lease_token = excluded.lease_token, \
               started_at = excluded.started_at, provider = excluded.provider \
             WHERE (reconciliations.state <> 'running' OR reconciliations.lease_until < excluded.started_at){new_only}"
        ));
        sqlx::query(&sql)
            .bind(format!("rec_{}", ulid::Ulid::new()))
            .bind(account)
            .bind(provider)
            .bind(day)
            .bind(lease_until)
            .bind(token)
            .bind(now)
            .execute(&self.pool)
            .await?;
        let held: Option<(String, i64)> = sqlx::query_as(
            "SELECT id, runs FROM reconciliations WHERE account = $1 AND day = $2 AND lease_token = $3 \
             AND state = 'running'",
        )
        .bind(account)
        .bind(day)
        .bind(token)
        .fetch_optional(&self.pool)
        .await?;
        let Some((id, runs)) = held else {
            return Ok(None);
        };
        sqlx::query(
            "UPDATE reconciliations SET runs = runs + 1 WHERE id = $1 AND lease_token = $2",
        )
        .bind(id.as_str())
        .bind(token)
        .execute(&self.pool)
        .await?;
        Ok(Some(RunClaim {
            id,
            replaces: runs > 0,
        }))
    }

    async fn clear_items(&self, id: &str, token: &str, lease_until: Timestamp) -> Result<bool> {
        let _gate = self.gate().await;
        let mut tx = self.pool.begin().await?;
        let conn: &mut DB::Connection = &mut tx;
        let held = sqlx::query(&self.sql(
            "UPDATE reconciliations SET lease_until = @ts($3) WHERE id = $1 AND lease_token = $2 \
             AND state = 'running'",
        ))
        .bind(id)
        .bind(token)
        .bind(lease_until)
        .execute(&mut *conn)
        .await?
        .affected()
            == 1;
        if held {
            sqlx::query("DELETE FROM reconciliation_items WHERE report_id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
        }
        tx.commit().await?;
        Ok(held)
    }

    async fn add_items(
        &self,
        id: &str,
        token: &str,
        lease_until: Timestamp,
        items: &[ItemRow],
    ) -> Result<bool> {
        let _gate = self.gate().await;
        let mut tx = self.pool.begin().await?;
        let conn: &mut DB::Connection = &mut tx;
        let held = sqlx::query(&self.sql(
            "UPDATE reconciliations SET lease_until = @ts($3) WHERE id = $1 AND lease_token = $2 \
             AND state = 'running'",
        ))
        .bind(id)
        .bind(token)
        .bind(lease_until)
        .execute(&mut *conn)
        .await?
        .affected()
            == 1;
        if !held {
            tx.rollback().await?;
            return Ok(false);
        }
        const COLS: usize = 14;
        for chunk in items.chunks(60) {
            let rows: Vec<String> = (0..chunk.len())
                .map(|r| {
                    let marks: Vec<String> =
                        (1..=COLS).map(|c| format!("${}", r * COLS + c)).collect();
                    format!("({})", marks.join(", "))
                })
                .collect();
            let sql = format!(
                "INSERT INTO reconciliation_items (report_id, {ITEM_COLUMNS}) VALUES {}",
                rows.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for i in chunk {
                q = q
                    .bind(id)
                    .bind(i.n)
                    .bind(i.kind.as_str())
                    .bind(i.refund_id.as_deref())
                    .bind(i.transaction_no.as_deref())
                    .bind(i.provider_refund_id.as_deref())
                    .bind(i.provider_reference.as_deref())
                    .bind(i.currency.as_deref())
                    .bind(i.gateway_amount.as_deref())
                    .bind(i.provider_amount.as_deref())
                    .bind(i.gateway_status.as_deref())
                    .bind(i.provider_status.as_deref())
                    .bind(i.provider_outcome.as_deref())
                    .bind(i.note.as_deref());
            }
            q.execute(&mut *conn).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn finish_run(
        &self,
        id: &str,
        token: &str,
        now: Timestamp,
        summary: Option<&str>,
        discrepancies: i64,
        error: Option<&str>,
    ) -> Result<bool> {
        let _gate = self.gate().await;
        let state = if error.is_some() { "failed" } else { "done" };
        let sql = self.sql(
            "UPDATE reconciliations SET state = $3, finished_at = @ts($4), summary = $5, \
             discrepancies = $6, error = $7, lease_until = NULL, lease_token = NULL \
             WHERE id = $1 AND lease_token = $2 AND state = 'running'",
        );
        Ok(sqlx::query(&sql)
            .bind(id)
            .bind(token)
            .bind(state)
            .bind(now)
            .bind(summary)
            .bind(discrepancies)
            .bind(error)
            .execute(&self.pool)
            .await?
            .affected()
            == 1)
    }

    async fn report(&self, id: &str) -> Result<Option<ReportRow>> {
        let sql = self.sql(&format!(
            "SELECT {REPORT_COLUMNS} FROM reconciliations WHERE id = $1"
        ));
        Ok(sqlx::query_as(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn report_for_day(&self, account: &str, day: &str) -> Result<Option<ReportRow>> {
        let sql = self.sql(&format!(
            "SELECT {REPORT_COLUMNS} FROM reconciliations WHERE account = $1 AND day = $2"
        ));
        Ok(sqlx::query_as(&sql)
            .bind(account)
            .bind(day)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn reports(
        &self,
        account: Option<&str>,
        after: Option<(&str, &str)>,
        limit: i64,
    ) -> Result<Vec<ReportRow>> {
        let n = self.text_param();
        let sql = self.sql(&format!(
            "SELECT {REPORT_COLUMNS} FROM reconciliations WHERE ($1{n} IS NULL OR account = $1) \
             AND ($2{n} IS NULL OR day < $2 OR (day = $2 AND account > $3)) \
             ORDER BY day DESC, account LIMIT $4"
        ));
        Ok(sqlx::query_as(&sql)
            .bind(account)
            .bind(after.map(|a| a.0))
            .bind(after.map(|a| a.1).unwrap_or(""))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn items(&self, id: &str, after: i64, limit: i64) -> Result<Vec<ItemRow>> {
        let sql = format!(
            "SELECT {ITEM_COLUMNS} FROM reconciliation_items WHERE report_id = $1 AND n > $2 \
             ORDER BY n LIMIT $3"
        );
        Ok(sqlx::query_as(&sql)
            .bind(id)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn record_outside(&self, o: &OutsideRefund) -> Result<bool> {
        let _gate = self.gate().await;
        let mut tx = self.pool.begin().await?;
        let conn: &mut DB::Connection = &mut tx;
        let new = sqlx::query(&self.sql(
            "INSERT INTO outside_refunds (account, provider_refund_id, provider, transaction_no, \
             provider_reference, amount_minor, currency, provider_status, found_in, found_at, \
             review_reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, @ts($10), $11) \
             ON CONFLICT (account, provider_refund_id) DO UPDATE SET \
               amount_minor = excluded.amount_minor, currency = excluded.currency, \
               provider_status = excluded.provider_status, \
               provider_reference = excluded.provider_reference, \
               review_reason = excluded.review_reason \
             WHERE outside_refunds.amount_minor <> excluded.amount_minor \
                OR outside_refunds.provider_status IS DISTINCT FROM excluded.provider_status",
        ))
        .bind(o.account.as_str())
        .bind(o.provider_refund_id.as_str())
        .bind(o.provider.as_str())
        .bind(o.transaction_no.as_str())
        .bind(o.provider_reference.as_deref())
        .bind(o.amount_minor)
        .bind(o.currency.as_str())
        .bind(o.provider_status.as_deref())
        .bind(o.found_in.as_str())
        .bind(o.found_at)
        .bind(o.review_reason.as_deref())
        .execute(&mut *conn)
        .await?
        .affected()
            == 1;
        // Every refund made elsewhere on the sale counts against it: the
        // sale's `external_minor` is at least their sum.
        let (total,): (i64,) = sqlx::query_as(
            "SELECT CAST(COALESCE(SUM(amount_minor), 0) AS BIGINT) FROM outside_refunds \
             WHERE account = $1 AND transaction_no = $2",
        )
        .bind(o.account.as_str())
        .bind(o.transaction_no.as_str())
        .fetch_one(&mut *conn)
        .await?;
        let g = self.d.greatest;
        sqlx::query(&format!(
            "INSERT INTO sales (account, transaction_no, amount_minor, currency, reserved_minor, \
             currency_confirmed, external_minor) VALUES ($1, $2, NULL, $3, 0, $4, $5) \
             ON CONFLICT (account, transaction_no) DO UPDATE \
             SET external_minor = {g}(sales.external_minor, excluded.external_minor)"
        ))
        .bind(o.account.as_str())
        .bind(o.transaction_no.as_str())
        .bind(o.currency.as_str())
        .bind(false)
        .bind(total)
        .execute(&mut *conn)
        .await?;
        tx.commit().await?;
        Ok(new)
    }

    async fn acknowledge_outside(
        &self,
        account: &str,
        provider_refund_id: &str,
        operator: &str,
        note: &str,
        now: Timestamp,
    ) -> Result<bool> {
        let _gate = self.gate().await;
        let sql = self.sql(
            "UPDATE outside_refunds SET review_reason = NULL, acknowledged_by = $3, \
             acknowledged_note = $4, acknowledged_at = @ts($5) \
             WHERE account = $1 AND provider_refund_id = $2",
        );
        Ok(sqlx::query(&sql)
            .bind(account)
            .bind(provider_refund_id)
            .bind(operator)
            .bind(note)
            .bind(now)
            .execute(&self.pool)
            .await?
            .affected()
            == 1)
    }

    async fn sale_books(&self, account: &str, transaction_no: &str) -> Result<Option<SaleBooks>> {
        Ok(sqlx::query_as(
            "SELECT amount_minor, currency, currency_confirmed, reserved_minor, external_minor \
             FROM sales WHERE account = $1 AND transaction_no = $2",
        )
        .bind(account)
        .bind(transaction_no)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn outside_refunds(
        &self,
        sale: Option<(&str, &str)>,
        limit: i64,
    ) -> Result<Vec<OutsideRefund>> {
        let sql = match sale {
            Some(_) => self.sql(&format!(
                "SELECT {OUTSIDE_COLUMNS} FROM outside_refunds WHERE account = $1 \
                 AND transaction_no = $2 ORDER BY found_at DESC LIMIT $3"
            )),
            None => self.sql(&format!(
                "SELECT {OUTSIDE_COLUMNS} FROM outside_refunds WHERE review_reason IS NOT NULL \
                 AND $1 = $2 ORDER BY found_at DESC LIMIT $3"
            )),
        };
        let (a, t) = sale.unwrap_or(("", ""));
        Ok(sqlx::query_as(&sql)
            .bind(a)
            .bind(t)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }
}
