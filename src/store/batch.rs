//! Group commit for SQLite. SQLite has one writer at a time and each commit
//! costs an fsync; writes that arrive together are run by one writer task in
//! one transaction, each in its own savepoint, so many refunds share one
//! fsync. A caller hears back only after the COMMIT that made its write
//! durable; a job that fails rolls back to its savepoint and leaves the
//! others' work in place.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use sqlx::{Executor, SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot, Mutex};

use super::{Result, StoreError};

/// Delivers a job's result once the batch's fate is known.
type Deliver = Box<dyn FnOnce(std::result::Result<(), (bool, String)>) + Send>;
type Job = Box<dyn for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Deliver> + Send>;

const MAX_BATCH: usize = 128;

#[derive(Clone)]
pub(crate) struct Batcher {
    tx: mpsc::Sender<Job>,
}

impl Batcher {
    pub(crate) fn spawn(pool: SqlitePool, gate: Arc<Mutex<()>>) -> Self {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(run(pool, gate, rx));
        Self { tx }
    }

    /// Runs `f` inside the next batch. `f` returns its result and whether to
    /// keep its writes (`false` rolls back to its savepoint).
    pub(crate) async fn run<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<(R, bool)>>
            + Send
            + 'static,
    {
        let (otx, orx) = oneshot::channel::<Result<R>>();
        let job: Job = Box::new(move |conn: &mut SqliteConnection| {
            Box::pin(async move {
                let outcome = match conn.execute("SAVEPOINT job").await {
                    Err(e) => Err(StoreError::from(e)),
                    Ok(_) => f(&mut *conn).await,
                };
                let outcome = match outcome {
                    Ok((r, true)) => conn
                        .execute("RELEASE SAVEPOINT job")
                        .await
                        .map(|_| r)
                        .map_err(StoreError::from),
                    Ok((r, false)) => conn
                        .execute("ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job")
                        .await
                        .map(|_| r)
                        .map_err(StoreError::from),
                    Err(e) => {
                        let _ = conn
                            .execute("ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job")
                            .await;
                        Err(e)
                    }
                };
                Box::new(move |committed: std::result::Result<(), (bool, String)>| {
                    let _ = otx.send(match committed {
                        Ok(()) => outcome,
                        Err((true, e)) => {
                            Err(StoreError::Unavailable(format!("commit failed: {e}")))
                        }
                        Err((false, e)) => {
                            Err(StoreError::WriteFailed(format!("commit failed: {e}")))
                        }
                    });
                }) as Deliver
            })
        });
        self.tx
            .send(job)
            .await
            .map_err(|_| StoreError::Db(sqlx::Error::PoolClosed))?;
        // A dropped job (the writer could not reach the database) means nothing was written.
        orx.await
            .map_err(|_| StoreError::Db(sqlx::Error::PoolTimedOut))?
    }
}

async fn run(pool: SqlitePool, gate: Arc<Mutex<()>>, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let _gate = gate.lock().await;
        let mut conn = match pool.acquire().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, jobs = jobs.len(), "group commit: no connection; writes refused");
                continue;
            }
        };
        if let Err(e) = conn.execute("BEGIN IMMEDIATE").await {
            tracing::warn!(error = %e, "group commit: BEGIN failed; writes refused");
            continue;
        }
        let mut delivers = Vec::with_capacity(jobs.len());
        for job in jobs {
            delivers.push(job(&mut conn).await);
        }
        let committed = conn.execute("COMMIT").await.map(|_| ()).map_err(|e| {
            let text = e.to_string();
            (StoreError::Db(e).is_unavailable(), text)
        });
        if committed.is_err() && conn.execute("ROLLBACK").await.is_err() {
            // A connection in an unknown transaction state must not go back to the pool.
            drop(conn.detach());
        }
        for d in delivers {
            d(committed.clone());
        }
    }
}
