//! Databases written by earlier schemas upgrade in place, their data
//! intact, on both backends: the schema before the send claims (migrations
//! 0001-0004), and the one before native column types (0001-0006).

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
  VALUES ('rf_01OLDPENDING00000000000000', 'demo', 'pockyt-sandbox', 'pockyt', 0, 'pending', 100, 'USD', '297553638301777927', 'OLDREF00000000000001', '{}', 'h', 'sent', 1000, 2000, 1);
INSERT INTO refunds (id, client, account, provider, livemode, status, amount_minor, currency, transaction_no, provider_reference, metadata, request_hash, submission, failure_code, created_at, updated_at, version)
  VALUES ('rf_01OLDFAILED000000000000000', 'demo', 'pay10-sandbox', 'pay10', 0, 'failed', 1000, 'USD', '1879120328175249', 'OLDREF00000000000002', '{}', 'h', 'sent', 'provider_declined', 1000, 3000, 2);
INSERT INTO webhook_events (id, provider, account, dedupe_key, outcome, fields, state, received_at)
  VALUES ('evt_old', 'pockyt', 'pockyt-sandbox', 'k', 'succeeded', '{}', 'unmatched', 5000);
";

/// A database of `kind` built by the migrations `files` only, holding `rows`.
async fn database_at(db: Db, files: &[&str], rows: &str) -> String {
    let url = fresh_db(db).await;
    let scratch = crate::common::Scratch::new("rg-old-schema");
    let dir = scratch.path().to_path_buf();
    let kind = if db == Db::Sqlite {
        "sqlite"
    } else {
        "postgres"
    };
    for f in files {
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
            sqlx::raw_sql(rows).execute(&mut c).await.unwrap();
        }
        Db::Postgres => {
            let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
            old.run(&mut c).await.unwrap();
            sqlx::raw_sql(rows).execute(&mut c).await.unwrap();
        }
    }
    url
}

async fn old_database_upgrades_in_place(db: Db) {
    let url = database_at(db, OLD, OLD_ROWS).await;
    // The gateway's own start-up applies the new migrations.
    let store = refund_gateway::store::Store::connect(&url, 2)
        .await
        .unwrap();
    let pending = store
        .get_refund_any_client("rf_01OLDPENDING00000000000000")
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
        ("pending", Some(at(2000)), 0, 1),
        "a sent refund gets its send deadline from its last write"
    );
    let failed = store
        .get_refund_any_client("rf_01OLDFAILED000000000000000")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(failed.failure_code.as_deref(), Some("provider_declined"));
    assert!(store.refund_events(&pending.id).await.unwrap().is_empty());
    let waiting = store
        .events_by_state(refund_gateway::store::EventState::Unmatched)
        .await
        .unwrap();
    assert_eq!(
        (waiting.len(), waiting[0].next_attempt_at),
        (1, Some(at(5000))),
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
    row.provider = refund_gateway::types::ProviderKind::Pay10;
    row.currency = refund_gateway::money::Currency::from_code("AED").unwrap();
    row.submission = refund_gateway::store::Submission::Prepared;
    let created = store
        .create_refund(&row, &Default::default())
        .await
        .unwrap();
    assert_eq!(created, refund_gateway::store::CreateOutcome::Created);
    store.close().await;
}

/// The schema just before native column types (migrations 0001-0006).
const BEFORE_NATIVE: &[&str] = &[
    "0001_init.sql",
    "0002_webhooks_outbox.sql",
    "0003_refund_version.sql",
    "0004_provider_refund_id_index.sql",
    "0005_claims_and_confirmed_terms.sql",
    "0006_refund_events.sql",
];

/// Rows as that schema held them: integer milliseconds, a 0/1 flag, metadata
/// and webhook fields as JSON text, a history line, a confirmed sale.
const BEFORE_NATIVE_ROWS: &str = "
INSERT INTO sales (account, transaction_no, amount_minor, currency, reserved_minor, currency_confirmed, external_minor) VALUES ('pockyt-live', '297553638301777927', 10000, 'USD', 250, 1, 300);
INSERT INTO refunds (id, client, account, provider, livemode, status, amount_minor, currency, settle_currency, transaction_no, provider_reference, metadata, request_hash, submission, send_by, not_found_streak, next_check_at, created_at, updated_at, version)
  VALUES ('rf_01NATIVE000000000000000000', 'demo', 'pockyt-live', 'pockyt', 1, 'pending', 250, 'USD', 'CNY', '297553638301777927', 'NATIVEREF00000000001', '{\"till\":\"7\"}', 'h', 'sent', 1700000000999, 2, 1700000000500, 1700000000123, 1700000000456, 3);
INSERT INTO refund_events (refund_id, at, source, status, previous_status, detail) VALUES ('rf_01NATIVE000000000000000000', 1700000000123, 'request', 'pending', NULL, 'recorded');
INSERT INTO webhook_events (id, provider, account, dedupe_key, outcome, fields, state, received_at, attempts, next_attempt_at)
  VALUES ('evt_native', 'pockyt', 'pockyt-live', 'k2', 'succeeded', '{\"status\":\"success\"}', 'unmatched', 1700000000789, 2, 1700000001789);
";

async fn database_before_native_types_upgrades_in_place(db: Db) {
    let url = database_at(db, BEFORE_NATIVE, BEFORE_NATIVE_ROWS).await;
    let store = refund_gateway::store::Store::connect(&url, 2)
        .await
        .unwrap();
    let r = store
        .get_refund_any_client("rf_01NATIVE000000000000000000")
        .await
        .unwrap()
        .expect("the refund is there");
    assert_eq!(
        (r.created_at, r.updated_at, r.send_by, r.next_check_at),
        (
            at(1700000000123),
            at(1700000000456),
            Some(at(1700000000999)),
            Some(at(1700000000500))
        ),
        "times keep their millisecond"
    );
    assert!(r.livemode);
    assert_eq!(r.metadata.get("till").map(String::as_str), Some("7"));
    assert_eq!(
        (
            r.amount_minor.get(),
            r.currency.code(),
            r.settle_currency.map(|c| c.code())
        ),
        (250, "USD", Some("CNY"))
    );
    assert_eq!((r.not_found_streak, r.version), (2, 3));
    let history = store.refund_events(&r.id).await.unwrap();
    assert_eq!((history.len(), history[0].at), (1, at(1700000000123)));
    let waiting = store
        .events_by_state(refund_gateway::store::EventState::Unmatched)
        .await
        .unwrap();
    assert_eq!(
        (
            waiting[0].received_at,
            waiting[0].next_attempt_at,
            waiting[0].attempts
        ),
        (at(1700000000789), Some(at(1700000001789)), 2)
    );
    // The confirmed sale still holds: 250 reserved + 300 elsewhere of 10000,
    // so 9450 more fit and one minor unit more does not.
    let row = |id: &str, amount: i64| refund_gateway::store::RefundRow {
        amount_minor: refund_gateway::money::Minor::new(amount).unwrap(),
        submission: refund_gateway::store::Submission::Prepared,
        ..stored_refund(id, "pockyt-live", "297553638301777927", &format!("REF{id}"))
    };
    let terms = refund_gateway::store::SaleTerms::default();
    assert_eq!(
        store
            .create_refund(&row("over", 9451), &terms)
            .await
            .unwrap(),
        refund_gateway::store::CreateOutcome::ExceedsRefundable {
            refundable: refund_gateway::money::Minor::new(9450).unwrap()
        }
    );
    assert_eq!(
        store
            .create_refund(&row("fits", 9450), &terms)
            .await
            .unwrap(),
        refund_gateway::store::CreateOutcome::Created
    );
    store.close().await;
}

both_backends!(
    old_database_upgrades_in_place,
    database_before_native_types_upgrades_in_place
);
