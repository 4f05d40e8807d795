//! A database written by the schema before this change (migrations
//! 0001-0004) upgrades in place, its data intact, on both backends.

use crate::common::*;
use sqlx::Connection;

const OLD: &[&str] = &[
    "0001_init.sql",
    "0002_webhooks_outbox.sql",
    "0003_refund_version.sql",
    "0004_provider_refund_id_index.sql",
];

/// Rows as the old schema held them: a Pay10 sale whose currency only a
/// failed refund set, a Pockyt sale with a looked-up amount, a pending sent
/// refund, a failed one, an unmatched webhook.
const OLD_ROWS: &str = "
INSERT INTO sales (account, transaction_no, amount_minor, currency, reserved_minor) VALUES ('pay10-sandbox', '1879120328175249', NULL, 'USD', 0);
INSERT INTO sales (account, transaction_no, amount_minor, currency, reserved_minor) VALUES ('pockyt-sandbox', '297553638301777927', 10000, 'USD', 100);
INSERT INTO refunds (id, client, account, provider, livemode, status, amount_minor, currency, transaction_no, provider_reference, metadata, request_hash, submission, created_at, updated_at, version)
  VALUES ('rf_01OLDPENDING0000000000000', 'demo', 'pockyt-sandbox', 'pockyt', 0, 'pending', 100, 'USD', '297553638301777927', 'OLDREF00000000000001', '{}', 'h', 'sent', 1000, 2000, 1);
INSERT INTO refunds (id, client, account, provider, livemode, status, amount_minor, currency, transaction_no, provider_reference, metadata, request_hash, submission, failure_code, created_at, updated_at, version)
  VALUES ('rf_01OLDFAILED00000000000000', 'demo', 'pay10-sandbox', 'pay10', 0, 'failed', 1000, 'USD', '1879120328175249', 'OLDREF00000000000002', '{}', 'h', 'sent', 'provider_declined', 1000, 3000, 2);
INSERT INTO webhook_events (id, provider, account, dedupe_key, outcome, fields, state, received_at)
  VALUES ('evt_old', 'pockyt', 'pockyt-sandbox', 'k', 'succeeded', '{}', 'unmatched', 5000);
";

async fn old_database_upgrades_in_place(db: Db) {
    let url = fresh_db(db).await;
    let dir = std::env::temp_dir().join(format!("rg-old-schema-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let kind = if db == Db::Sqlite {
        "sqlite"
    } else {
        "postgres"
    };
    for f in OLD {
        std::fs::copy(
            format!("{}/migrations/{kind}/{f}", env!("CARGO_MANIFEST_DIR")),
            dir.join(f),
        )
        .unwrap();
    }
    let old = sqlx::migrate::Migrator::new(dir.as_path()).await.unwrap();
    match db {
        Db::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&format!("{url}?mode=rwc"))
                .await
                .unwrap();
            old.run(&mut c).await.unwrap();
            sqlx::raw_sql(OLD_ROWS).execute(&mut c).await.unwrap();
        }
        Db::Postgres => {
            let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
            old.run(&mut c).await.unwrap();
            sqlx::raw_sql(OLD_ROWS).execute(&mut c).await.unwrap();
        }
    }
    let _ = std::fs::remove_dir_all(&dir);

    // The gateway's own start-up applies the new migrations.
    let store = refund_gateway::store::Store::connect(&url, 2)
        .await
        .unwrap();
    let pending = store
        .get_refund_any_client("rf_01OLDPENDING0000000000000")
        .await
        .unwrap()
        .expect("the old refund is there");
    assert_eq!(
        (
            pending.status.as_str(),
            pending.send_by,
            pending.not_found_streak,
            pending.version
        ),
        ("pending", Some(2000), 0, 1),
        "a sent refund gets its send deadline from its last write"
    );
    let failed = store
        .get_refund_any_client("rf_01OLDFAILED00000000000000")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(failed.failure_code.as_deref(), Some("provider_declined"));
    assert!(store.refund_events(&pending.id).await.unwrap().is_empty());
    let waiting = store.events_by_state("unmatched").await.unwrap();
    assert_eq!(
        (waiting.len(), waiting[0].next_attempt_at),
        (1, Some(5000)),
        "an unmatched webhook is due for matching at once"
    );
    // Only a confirmed currency stays pinned: the Pay10 sale's USD came from a
    // failed refund, so an AED refund is no longer refused on it.
    let mut row = stored_refund(
        "rf_01NEWAED000000000000000000",
        "pay10-sandbox",
        "1879120328175249",
        "NEWREF00000000000003",
    );
    row.provider = "pay10".into();
    row.currency = "AED".into();
    row.submission = refund_gateway::store::Submission::Prepared;
    let created = store
        .create_refund(&row, &Default::default())
        .await
        .unwrap();
    assert_eq!(created, refund_gateway::store::CreateOutcome::Created);
    store.close().await;
}

both_backends!(old_database_upgrades_in_place);
