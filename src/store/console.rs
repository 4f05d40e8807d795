//! The operators' console: its sign-in sessions and the overview's counts.
//! The same SQL on both databases (times through [`Dialect::times`]), one
//! implementation generic over sqlx's pool, like [`super::reconciliations`].
//! SQLite's writes take its write gate.

use async_trait::async_trait;
use sqlx::{Database, Executor, IntoArguments, Pool};

use super::events::Affected;
use super::{Result, SqlOn};
use crate::types::Timestamp;

/// A signed-in browser.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SessionRow {
    /// Lower-case hex SHA-256 of the session cookie's value (the value
    /// itself is never stored).
    pub id_sha256: String,
    /// The `[[operators]]` name it belongs to.
    pub operator: String,
    /// Every form the session posts must carry it.
    pub csrf_token: String,
    pub created_at: Timestamp,
    pub last_seen_at: Timestamp,
}

#[async_trait]
pub trait ConsoleStore: Send + Sync {
    async fn create_session(&self, s: &SessionRow) -> Result<()>;
    /// The session, if it was last seen at or after `idle_since` and
    /// created at or after `created_since` (`None`, and nothing written,
    /// otherwise); marked seen at `now` when it was last marked before
    /// `refresh_before` (so a busy console writes once in a while, not on
    /// every page).
    async fn touch_session(
        &self,
        id_sha256: &str,
        now: Timestamp,
        idle_since: Timestamp,
        created_since: Timestamp,
        refresh_before: Timestamp,
    ) -> Result<Option<SessionRow>>;
    /// Ends a session (sign-out); whether it existed.
    async fn end_session(&self, id_sha256: &str) -> Result<bool>;
    /// Deletes every session idle since before `idle_since` or created
    /// before `created_since`; how many.
    async fn prune_sessions(&self, idle_since: Timestamp, created_since: Timestamp) -> Result<u64>;
    /// The refunds through `account` created at or after `since`, counted by
    /// status (`(status, count)`); by the `(account, created_at)` index.
    async fn refund_counts(&self, account: &str, since: Timestamp) -> Result<Vec<(String, i64)>>;
}

const SESSION_COLUMNS: &str = "id_sha256, operator, csrf_token, @ms(created_at) AS created_at, \
    @ms(last_seen_at) AS last_seen_at";

#[async_trait]
impl<DB> ConsoleStore for SqlOn<DB>
where
    DB: Database,
    DB::QueryResult: Affected,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Timestamp: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'r> SessionRow: sqlx::FromRow<'r, DB::Row>,
    for<'r> (String, i64): sqlx::FromRow<'r, DB::Row>,
    DB::Connection: Send,
{
    async fn create_session(&self, s: &SessionRow) -> Result<()> {
        let _gate = self.gate().await;
        sqlx::query(&self.d.times(
            "INSERT INTO console_sessions (id_sha256, operator, csrf_token, created_at, last_seen_at) \
             VALUES ($1, $2, $3, @ts($4), @ts($5))",
        ))
        .bind(s.id_sha256.as_str())
        .bind(s.operator.as_str())
        .bind(s.csrf_token.as_str())
        .bind(s.created_at)
        .bind(s.last_seen_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn touch_session(
        &self,
        id_sha256: &str,
        now: Timestamp,
        idle_since: Timestamp,
        created_since: Timestamp,
        refresh_before: Timestamp,
    ) -> Result<Option<SessionRow>> {
        let sql = self.d.times(&format!(
            "SELECT {SESSION_COLUMNS} FROM console_sessions WHERE id_sha256 = $1 \
             AND last_seen_at >= @ts($2) AND created_at >= @ts($3)"
        ));
        let row: Option<SessionRow> = sqlx::query_as(&sql)
            .bind(id_sha256)
            .bind(idle_since)
            .bind(created_since)
            .fetch_optional(&self.pool)
            .await?;
        let Some(mut row) = row else {
            return Ok(None);
        };
        if row.last_seen_at < refresh_before {
            let _gate = self.gate().await;
            sqlx::query(&self.d.times(
                "UPDATE console_sessions SET last_seen_at = @ts($2) WHERE id_sha256 = $1 \
                 AND last_seen_at < @ts($2)",
            ))
            .bind(id_sha256)
            .bind(now)
            .execute(&self.pool)
            .await?;
            row.last_seen_at = now;
        }
        Ok(Some(row))
    }

    async fn end_session(&self, id_sha256: &str) -> Result<bool> {
        let _gate = self.gate().await;
        let r = sqlx::query("DELETE FROM console_sessions WHERE id_sha256 = $1")
            .bind(id_sha256)
            .execute(&self.pool)
            .await?;
        Ok(r.affected() == 1)
    }

    async fn prune_sessions(&self, idle_since: Timestamp, created_since: Timestamp) -> Result<u64> {
        let _gate = self.gate().await;
        let r = sqlx::query(&self.d.times(
            "DELETE FROM console_sessions WHERE last_seen_at < @ts($1) OR created_at < @ts($2)",
        ))
        .bind(idle_since)
        .bind(created_since)
        .execute(&self.pool)
        .await?;
        Ok(r.affected())
    }

    async fn refund_counts(&self, account: &str, since: Timestamp) -> Result<Vec<(String, i64)>> {
        let sql = self.d.times(
            "SELECT status, COUNT(*) AS n FROM refunds WHERE account = $1 AND created_at >= @ts($2) \
             GROUP BY status ORDER BY status",
        );
        Ok(sqlx::query_as(&sql)
            .bind(account)
            .bind(since)
            .fetch_all(&self.pool)
            .await?)
    }
}
