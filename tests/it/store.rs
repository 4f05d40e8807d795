//! The store on its own, on both backends: every write is a compare-and-swap
//! on the row its writer read, the reservation never lets a sale be
//! exceeded, typed values come back as they went in, and the list filters
//! (built with `QueryBuilder`) select what they say. No HTTP, no providers.

use crate::common::*;
use refund_gateway::money::{Currency, Minor};
use refund_gateway::providers::ProviderAnswer;
use refund_gateway::refunds::lifecycle::{transition, Context, Policy, Transition};
use refund_gateway::refunds::{apply_with, Applied};
use refund_gateway::store::{
    Change, CreateOutcome, EventSource, ListFilter, RefundRow, SaleTerms, Status, Store, Submission,
};
use refund_gateway::types::Outcome;
use refund_gateway::types::{ProviderKind, Timestamp};

fn policy() -> Policy {
    refund_gateway::gateway_settings(&refund_gateway::config::Config::demo(
        "sqlite::memory:",
        "sk_store",
    ))
    .policy
}

/// The change the lifecycle decides for `t` on `current` at `now`.
fn decided(current: &RefundRow, t: Transition<'_>, now: Timestamp) -> Option<Change> {
    let p = policy();
    let ctx = Context {
        now,
        policy: &p,
        receipt: None,
        deliver_events: false,
    };
    transition(current, &t, &ctx).unwrap()
}

fn claim(r: &RefundRow) -> Change {
    decided(
        r,
        Transition::Claimed {
            version: r.version,
            send_by: r.created_at + ms(1),
        },
        r.created_at,
    )
    .expect("a prepared refund can be claimed")
}

fn row(name: &str, tx: &str, amount: i64) -> RefundRow {
    RefundRow {
        amount_minor: Minor::new(amount).unwrap(),
        submission: Submission::Prepared,
        ..stored_refund(name, "acct", tx, &format!("REF{name}"))
    }
}

fn terms(sale: i64) -> SaleTerms {
    SaleTerms {
        amount_minor: Minor::new(sale),
        currency_confirmed: true,
        external_minor: Minor::default(),
    }
}

async fn store(db: Db) -> Store {
    Store::connect(&fresh_db(db).await, 4).await.unwrap()
}

async fn writes_are_compare_and_swap(db: Db) {
    let s = store(db).await;
    let r = RefundRow {
        metadata: [("till".to_string(), "7".to_string())].into(),
        livemode: true,
        settle_currency: Some(Currency::from_code("CNY").unwrap()),
        ..row("cas", "tx-cas", 100)
    };
    assert_eq!(
        s.create_refund(&r, &terms(1_000)).await.unwrap(),
        CreateOutcome::Created
    );
    let stored = s.get_refund_any_client(&r.id).await.unwrap().unwrap();
    assert_eq!(stored, r, "typed values come back as they went in");

    // The send claim applies once, and only to the version it read.
    let stale = RefundRow {
        version: 7,
        ..r.clone()
    };
    assert!(!s.apply_change(&claim(&stale)).await.unwrap());
    assert!(s.apply_change(&claim(&r)).await.unwrap());
    assert!(!s.apply_change(&claim(&r)).await.unwrap());
    let sent = s.get_refund_any_client(&r.id).await.unwrap().unwrap();
    assert_eq!((sent.submission, sent.version), (Submission::Sent, 1));

    // A writer that read the row before the claim loses its write; the
    // store's loop reads again and asks the transition again.
    let mut asked = vec![];
    let succeeded = ProviderAnswer {
        outcome: Outcome::Succeeded,
        provider_refund_id: None,
        provider_status: None,
        provider_code: None,
        message: None,
    };
    let applied = apply_with(&s, &r, |current| {
        asked.push((current.version, current.submission));
        Ok(decided(
            current,
            Transition::WebhookApplied(&succeeded),
            current.updated_at + ms(1),
        ))
    })
    .await
    .unwrap();
    let Applied::Changed(change) = applied else {
        panic!("the fresh write applies: {applied:?}")
    };
    let after = change.into_after();
    assert_eq!(
        asked,
        vec![(0, Submission::Prepared), (1, Submission::Sent)],
        "the stale write was refused, the fresh one applied"
    );
    assert_eq!((after.status, after.version), (Status::Succeeded, 2));
    let history = s.refund_events(&r.id).await.unwrap();
    assert_eq!(
        history
            .iter()
            .map(|e| (e.source, e.status))
            .collect::<Vec<_>>(),
        vec![
            (EventSource::Request, Status::Pending),
            (EventSource::Request, Status::Pending),
            (EventSource::Webhook, Status::Succeeded)
        ]
    );
    s.close().await;
}

async fn reservations_never_exceed_the_sale(db: Db) {
    let s = store(db).await;
    let mut created = 0;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..12 {
        let s = s.clone();
        tasks.spawn(async move {
            s.create_refund(&row(&format!("res{i}"), "tx-res", 100), &terms(1_000))
                .await
                .unwrap()
        });
    }
    let mut refused = vec![];
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            CreateOutcome::Created => created += 1,
            other => refused.push(other),
        }
    }
    assert_eq!(created, 10, "ten of 1.00 fit a 10.00 sale, concurrently");
    assert!(refused.iter().all(|o| *o
        == CreateOutcome::ExceedsRefundable {
            refundable: Minor::default()
        }));
    // A taken idempotency key undoes the reservation with the refund.
    let first = row("first", "tx-first", 100);
    assert_eq!(
        s.create_refund(&first, &terms(100)).await.unwrap(),
        CreateOutcome::Created
    );
    let dup = RefundRow {
        idempotency_key: first.idempotency_key.clone(),
        ..row("dup", "tx-other", 100)
    };
    assert_eq!(
        s.create_refund(&dup, &terms(100)).await.unwrap(),
        CreateOutcome::Duplicate
    );
    assert_eq!(
        s.create_refund(&row("other", "tx-other", 100), &terms(100))
            .await
            .unwrap(),
        CreateOutcome::Created,
        "the duplicate left no reservation behind"
    );
    // Our own provider reference made twice is a fault, never taken for a
    // repeated request.
    let clash = RefundRow {
        provider_reference: first.provider_reference.clone(),
        ..row("clash", "tx-clash", 1)
    };
    assert!(s.create_refund(&clash, &terms(100)).await.is_err());
    // Another currency on a confirmed sale is refused, naming the sale's.
    let aed = RefundRow {
        currency: Currency::from_code("AED").unwrap(),
        ..row("aed", "tx-other", 1)
    };
    assert_eq!(
        s.create_refund(&aed, &terms(100)).await.unwrap(),
        CreateOutcome::CurrencyMismatch {
            sale_currency: "USD".into()
        }
    );
    s.close().await;
}

async fn list_filters_select_what_they_say(db: Db) {
    let s = store(db).await;
    let base = 1_700_000_000_000;
    for i in 0..6i64 {
        let r = RefundRow {
            created_at: at(base + i * 1_000),
            updated_at: at(base + i * 1_000),
            provider: if i % 2 == 0 {
                ProviderKind::Pockyt
            } else {
                ProviderKind::Pay10
            },
            reference: Some(format!("sale-{}", i % 3)),
            ..row(&format!("list{i}"), &format!("tx-list-{i}"), 100)
        };
        assert_eq!(
            s.create_refund(&r, &SaleTerms::default()).await.unwrap(),
            CreateOutcome::Created
        );
    }
    // One refund flagged for review (by a write, as the lifecycle flags).
    let list5 = s
        .get_refund_any_client(&test_refund_id("list5"))
        .await
        .unwrap()
        .unwrap();
    let flag = Transition::Contradicted {
        what: "flagged",
        source: EventSource::Request,
    };
    let flagged = decided(&list5, flag, list5.updated_at).expect("not flagged yet");
    assert!(s.apply_change(&flagged).await.unwrap());
    let ids = |rows: Vec<RefundRow>| {
        rows.into_iter()
            .map(|r| r.id.to_string())
            .collect::<Vec<_>>()
    };
    let want = |ns: &[i64]| {
        ns.iter()
            .map(|n| test_refund_id(&format!("list{n}")).to_string())
            .collect::<Vec<_>>()
    };
    let list = |f: ListFilter| {
        let s = s.clone();
        async move { ids(s.list_refunds(Some("demo"), &f).await.unwrap()) }
    };
    let all = ListFilter {
        limit: 100,
        ..Default::default()
    };
    assert_eq!(list(all.clone()).await, want(&[5, 4, 3, 2, 1, 0]));
    assert_eq!(
        list(ListFilter {
            provider: Some(ProviderKind::Pay10),
            ..all.clone()
        })
        .await,
        want(&[5, 3, 1])
    );
    assert_eq!(
        list(ListFilter {
            reference: Some("sale-1".into()),
            ..all.clone()
        })
        .await,
        want(&[4, 1])
    );
    assert_eq!(
        list(ListFilter {
            created_from: Some(at(base + 1_000)),
            created_to: Some(at(base + 3_000)),
            ..all.clone()
        })
        .await,
        want(&[3, 2, 1]),
        "time bounds are inclusive, to the millisecond"
    );
    assert_eq!(
        list(ListFilter {
            after: Some((at(base + 3_000), test_refund_id("list3"))),
            limit: 2,
            ..all.clone()
        })
        .await,
        want(&[2, 1, 0]),
        "keyset page after list3 (one extra row tells has_more)"
    );
    assert_eq!(
        list(ListFilter {
            oldest_first: true,
            ..all.clone()
        })
        .await,
        want(&[0, 1, 2, 3, 4, 5]),
        "oldest first (the console's review queue)"
    );
    assert_eq!(
        list(ListFilter {
            after: Some((at(base + 2_000), test_refund_id("list2"))),
            limit: 2,
            oldest_first: true,
            ..all.clone()
        })
        .await,
        want(&[3, 4, 5]),
        "oldest first, the keyset page continues upwards"
    );
    assert_eq!(
        list(ListFilter {
            status: Some(Status::Succeeded),
            ..all.clone()
        })
        .await,
        Vec::<String>::new()
    );
    assert_eq!(
        list(ListFilter {
            needs_review_before: Some(at(base - 1)),
            ..all.clone()
        })
        .await,
        want(&[5]),
        "flagged, or pending since before the cut-off"
    );
    assert_eq!(
        s.list_refunds(Some("someone-else"), &all).await.unwrap(),
        vec![]
    );
    assert_eq!(s.review_count(at(base + 1_500)).await.unwrap(), 3);
    assert_eq!(s.pending_summary().await.unwrap(), (6, Some(at(base))));
    s.close().await;
}

/// A webhook whose processing was cut off (left `received`) is claimed again
/// after 30 s, and only then; one still being matched is not.
async fn cut_off_webhooks_are_claimed_again(db: Db) {
    use refund_gateway::store::{EventState, WebhookRow};
    let s = store(db).await;
    let now = refund_gateway::types::Timestamp::host_now();
    let event = |id: &str, received_at: Timestamp| WebhookRow {
        id: id.into(),
        provider: ProviderKind::Pockyt,
        account: "acct".into(),
        dedupe_key: format!("dk-{id}"),
        transaction_no: Some("tx".into()),
        provider_refund_id: None,
        provider_reference: Some("REFX".into()),
        amount: Some("1.00".into()),
        outcome: Outcome::Succeeded,
        provider_status: Some("success".into()),
        fields: "{}".into(),
        refund_id: None,
        state: EventState::Received,
        note: None,
        received_at,
        attempts: 0,
        next_attempt_at: None,
    };
    assert!(s
        .insert_event(&event("evt_old", now - ms(60_000)))
        .await
        .unwrap());
    assert!(s
        .insert_event(&event("evt_new", now - ms(1_000)))
        .await
        .unwrap());
    let claimed = s
        .claim_unmatched_events(now, now + ms(30_000), 10)
        .await
        .unwrap();
    let ids: Vec<&str> = claimed.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["evt_old"], "the cut-off one only");
    let again = s
        .claim_unmatched_events(now, now + ms(30_000), 10)
        .await
        .unwrap();
    assert!(again.is_empty(), "leased: one process at a time");
}

both_backends!(
    writes_are_compare_and_swap,
    reservations_never_exceed_the_sale,
    list_filters_select_what_they_say,
    cut_off_webhooks_are_claimed_again
);
