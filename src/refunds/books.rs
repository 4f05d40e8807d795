//! The daily reconciliation against the provider's books: one account's
//! refunds of one day (in the account's `time_zone`, else UTC) compared with
//! what the provider lists (Pockyt trans-list) or answers about each of
//! them (Pay10 refund requery). Every discrepancy flags the refund for
//! review with a reason naming the report; a refund found only at the
//! provider is recorded and counts against its sale from then on; a refund
//! pending here and final there is asked about (the normal evidence path
//! decides it). The gateway's side is read in pages; the report is stored
//! line by line as it is made.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::{lifecycle, status_query, Applied, Gateway};
use crate::money::{Currency, Minor};
use crate::providers::BookedRefund;
use crate::store::{
    EventSource, ItemRow, ListFilter, OutsideRefund, RefundRow, ReportRow, Status, StoreError,
    Submission,
};
use crate::types::{Outcome, RefundId, Timestamp};

/// How long a run may go without writing before another process may take
/// it over (each page of items renews it).
pub const RUN_LEASE: std::time::Duration = std::time::Duration::from_secs(300);

/// Refunds read (and provider questions asked) per page.
const PAGE: i64 = 500;

/// How many refunds are asked about at once where the provider has no list.
const PARALLEL_QUERIES: usize = 8;

/// What a line of the report says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemKind {
    /// Both sides agree (or nothing moved on either).
    Matched,
    AmountMismatch,
    CurrencyMismatch,
    /// Final here and different there (or pending here and final there,
    /// still after asking).
    StatusMismatch,
    /// Ours; the provider has no record of it.
    OnlyAtGateway,
    /// The provider's; made elsewhere (its dashboard, another system).
    OnlyAtProvider,
    /// The provider could not be asked about it (Pay10: its requery failed).
    Unchecked,
}

impl ItemKind {
    pub const ALL: [ItemKind; 7] = [
        ItemKind::Matched,
        ItemKind::AmountMismatch,
        ItemKind::CurrencyMismatch,
        ItemKind::StatusMismatch,
        ItemKind::OnlyAtGateway,
        ItemKind::OnlyAtProvider,
        ItemKind::Unchecked,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            ItemKind::Matched => "matched",
            ItemKind::AmountMismatch => "amount_mismatch",
            ItemKind::CurrencyMismatch => "currency_mismatch",
            ItemKind::StatusMismatch => "status_mismatch",
            ItemKind::OnlyAtGateway => "only_at_gateway",
            ItemKind::OnlyAtProvider => "only_at_provider",
            ItemKind::Unchecked => "unchecked",
        }
    }

    pub fn is_discrepancy(&self) -> bool {
        *self != ItemKind::Matched
    }
}

/// The totals of one currency: refunds that moved money on each side
/// (succeeded here; succeeded there), decimal in the currency's digits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CurrencyTotals {
    #[schema(example = "USD")]
    pub currency: String,
    #[schema(example = "12.50")]
    pub gateway: String,
    #[schema(example = "13.50")]
    pub provider: String,
    /// Provider minus gateway.
    #[schema(example = "1.00")]
    pub difference: String,
}

/// A report's summary (stored with it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReportSummary {
    /// The time zone the day is counted in (the account's `time_zone`, else UTC).
    #[schema(example = "UTC")]
    pub time_zone: String,
    /// The day's first instant, RFC 3339 UTC.
    pub from: String,
    /// The next day's first instant (not included).
    pub to: String,
    /// Where the provider's side comes from.
    #[schema(example = "pockyt trans-list 2026-12-05..2026-12-07")]
    pub provider_source: String,
    /// Lines by kind (every kind listed, zeros included).
    pub counts: BTreeMap<String, i64>,
    /// Per currency, both sides.
    pub totals: Vec<CurrencyTotals>,
    /// Refunds flagged for review by this run.
    pub flagged: i64,
    /// Refunds pending here that this run asked the provider about.
    pub asked: i64,
}

/// What a request to run a report comes to.
#[derive(Debug)]
pub enum RunOutcome {
    /// Run and stored; `replaced`: an earlier report of the day was replaced.
    Ran {
        report: Box<ReportRow>,
        replaced: bool,
    },
    /// Another run of the same account and day holds it right now.
    Busy,
    /// (The daily job) the day has its report already.
    AlreadyDone,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("no provider account named {0:?} is configured")]
    UnknownAccount(String),
    #[error("the provider's books could not be read: {0}")]
    Provider(String),
    #[error("another process took the run over (this one paused past its lease)")]
    LostLease,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the provider's side of a day is.
enum ProviderSide {
    /// A list: each record once, found by our reference or its id.
    Listed {
        records: Vec<BookedRefund>,
        used: Vec<bool>,
        by_reference: HashMap<String, usize>,
        by_id: HashMap<String, usize>,
    },
    /// No list: each refund is asked about.
    PerRefund,
}

impl ProviderSide {
    fn listed(records: Vec<BookedRefund>) -> Self {
        let mut by_reference = HashMap::new();
        let mut by_id = HashMap::new();
        for (i, r) in records.iter().enumerate() {
            if let Some(x) = &r.provider_reference {
                by_reference.entry(x.clone()).or_insert(i);
            }
            if let Some(x) = &r.provider_refund_id {
                by_id.entry(x.clone()).or_insert(i);
            }
        }
        ProviderSide::Listed {
            used: vec![false; records.len()],
            records,
            by_reference,
            by_id,
        }
    }
}

/// Running totals: minor units per currency, both sides.
#[derive(Default)]
struct Totals(BTreeMap<String, (i64, i64)>);

impl Totals {
    fn gateway(&mut self, currency: &str, minor: i64) {
        let e = self.0.entry(currency.to_string()).or_default();
        e.0 = e.0.saturating_add(minor);
    }
    fn provider(&mut self, currency: &str, minor: i64) {
        let e = self.0.entry(currency.to_string()).or_default();
        e.1 = e.1.saturating_add(minor);
    }
    fn render(&self) -> Vec<CurrencyTotals> {
        self.0
            .iter()
            .map(|(code, (g, p))| {
                let fmt = |m: i64| match Currency::from_code(code) {
                    Ok(c) => {
                        let s = c.format(Minor::new(m.saturating_abs()).unwrap_or_default());
                        if m < 0 {
                            format!("-{s}")
                        } else {
                            s
                        }
                    }
                    Err(_) => m.to_string(),
                };
                CurrencyTotals {
                    currency: code.clone(),
                    gateway: fmt(*g),
                    provider: fmt(*p),
                    difference: fmt(p.saturating_sub(*g)),
                }
            })
            .collect()
    }
}

/// One comparison's verdict before it is written.
struct Verdict {
    kind: ItemKind,
    note: String,
    /// Flag the refund for review with this reason.
    flag: bool,
    /// Pending here and final there: ask the provider now.
    ask: bool,
}

/// Compares one of our refunds with the provider's record of it.
fn compare(row: &RefundRow, theirs: Option<&BookedRefund>) -> Verdict {
    let v = |kind, note: &str, flag| Verdict {
        kind,
        note: note.to_string(),
        flag,
        ask: false,
    };
    let Some(t) = theirs else {
        return match (row.status, row.submission) {
            (Status::Failed, _) => v(
                ItemKind::Matched,
                "failed here; the provider lists no such refund: nothing moved",
                false,
            ),
            (_, Submission::Prepared) => v(
                ItemKind::Matched,
                "not sent to the provider yet; nothing to find there",
                false,
            ),
            (Status::Pending, _) => v(
                ItemKind::OnlyAtGateway,
                "pending here; the provider has no record of it (status queries go on and decide it)",
                false,
            ),
            _ => v(
                ItemKind::OnlyAtGateway,
                "succeeded here; the provider has no record of it",
                true,
            ),
        };
    };
    let ours = row.currency.format(row.amount_minor);
    let mut notes = vec![];
    let mut kind = ItemKind::Matched;
    if let Some(c) = t.currency.as_deref() {
        if !c.eq_ignore_ascii_case(row.currency.code()) {
            kind = ItemKind::CurrencyMismatch;
            notes.push(format!(
                "the provider lists it in {c}, not {}",
                row.currency.code()
            ));
        }
    }
    if let Some(a) = t.amount_minor {
        if a != row.amount_minor.get() && kind == ItemKind::Matched {
            kind = ItemKind::AmountMismatch;
        }
        if a != row.amount_minor.get() {
            notes.push(format!(
                "the provider lists {} where {ours} was recorded",
                row.currency.format(Minor::new(a).unwrap_or_default())
            ));
        }
    }
    let mut ask = false;
    let status_note = match (row.status, t.outcome) {
        (Status::Succeeded, Outcome::Succeeded) | (Status::Failed, Outcome::Failed) => None,
        (Status::Pending, Outcome::Succeeded | Outcome::Failed) => {
            ask = true;
            Some("pending here, final there".to_string())
        }
        (Status::Pending, _) => None,
        // Money we told the POS was returned, and the provider's books do
        // not show it yet: the totals differ, so it is a discrepancy.
        (Status::Succeeded, Outcome::Pending | Outcome::Unknown) => Some(format!(
            "succeeded here, not final at the provider ({})",
            t.provider_status.as_deref().unwrap_or("no status word")
        )),
        (ours, theirs) => Some(format!(
            "{} here, {} at the provider ({})",
            ours.as_str(),
            theirs.as_str(),
            t.provider_status.as_deref().unwrap_or("no status word")
        )),
    };
    if let Some(n) = status_note {
        if kind == ItemKind::Matched && !ask {
            kind = ItemKind::StatusMismatch;
        }
        notes.push(n);
    }
    Verdict {
        flag: kind.is_discrepancy(),
        kind,
        note: notes.join("; "),
        ask,
    }
}

/// The day's bounds in `tz`.
pub fn day_bounds(
    day: jiff::civil::Date,
    tz: &jiff::tz::TimeZone,
) -> Result<(Timestamp, Timestamp), String> {
    let start = day.to_zoned(tz.clone()).map_err(|e| e.to_string())?;
    let next = day
        .tomorrow()
        .map_err(|e| e.to_string())?
        .to_zoned(tz.clone())
        .map_err(|e| e.to_string())?;
    Ok((
        Timestamp::from_unix_ms(start.timestamp().as_millisecond()),
        Timestamp::from_unix_ms(next.timestamp().as_millisecond()),
    ))
}

impl Gateway {
    /// Runs (or re-runs) the report of `account`'s `day`. `daily`: the
    /// scheduled run, which leaves a day with a finished report alone.
    pub async fn reconcile_day(
        &self,
        account: &str,
        day: jiff::civil::Date,
        daily: bool,
    ) -> Result<RunOutcome, ReconcileError> {
        let handle = self
            .accounts
            .get(account)
            .cloned()
            .ok_or_else(|| ReconcileError::UnknownAccount(account.to_string()))?;
        let tz = handle
            .account
            .time_zone
            .clone()
            .unwrap_or(jiff::tz::TimeZone::UTC);
        let (from, to) = day_bounds(day, &tz).map_err(ReconcileError::Provider)?;
        let day_text = day.to_string();
        let recs = self.store.reconciliations();
        let token = ulid::Ulid::new().to_string();
        let lease = || self.clock.now() + RUN_LEASE;
        let provider = handle.account.provider();
        let Some(claim) = recs
            .begin_run(
                account,
                provider.as_str(),
                &day_text,
                &token,
                self.clock.now(),
                lease(),
                daily,
            )
            .await?
        else {
            return Ok(if daily {
                RunOutcome::AlreadyDone
            } else {
                RunOutcome::Busy
            });
        };
        let id = claim.id.clone();
        if !recs.clear_items(&id, &token, lease()).await? {
            return Err(ReconcileError::LostLease);
        }
        let result = self
            .compare_day(&handle, &id, &token, &day_text, day, (from, to), &tz)
            .await;
        let now = self.clock.now();
        match result {
            Ok((summary, discrepancies)) => {
                let text = serde_json::to_string(&summary).expect("a summary serializes");
                if !recs
                    .finish_run(&id, &token, now, Some(&text), discrepancies, None)
                    .await?
                {
                    return Err(ReconcileError::LostLease);
                }
                crate::metrics::reconciliation_done(account, &summary.counts);
                tracing::info!(%account, day = %day_text, report = %id, discrepancies, "reconciliation report done");
            }
            Err(e) => {
                let why = e.to_string();
                let _ = recs.finish_run(&id, &token, now, None, 0, Some(&why)).await;
                tracing::error!(%account, day = %day_text, error = %why, "reconciliation report failed");
                return Err(e);
            }
        }
        let report = recs.report(&id).await?.ok_or(ReconcileError::LostLease)?;
        Ok(RunOutcome::Ran {
            report: Box::new(report),
            replaced: claim.replaces,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn compare_day(
        &self,
        handle: &super::AccountHandle,
        id: &str,
        token: &str,
        day_text: &str,
        day: jiff::civil::Date,
        (from, to): (Timestamp, Timestamp),
        tz: &jiff::tz::TimeZone,
    ) -> Result<(ReportSummary, i64), ReconcileError> {
        let account = handle.account.name.as_str();
        let recs = self.store.reconciliations();
        // The provider's calendar may not be ours: its list is read a day
        // either side, and what it lists of those days is only matched.
        let (list_from, list_to) = (
            day.yesterday().unwrap_or(day),
            day.tomorrow().unwrap_or(day),
        );
        let (mut side, provider_source) =
            match handle.client.booked_refunds(list_from, list_to).await {
                Some(Ok(records)) => (
                    ProviderSide::listed(records),
                    format!(
                        "{} refund list {list_from}..{list_to}",
                        handle.account.provider()
                    ),
                ),
                Some(Err(e)) => return Err(ReconcileError::Provider(e)),
                None => (
                    ProviderSide::PerRefund,
                    format!(
                        "{} refund status, asked per refund",
                        handle.account.provider()
                    ),
                ),
            };
        let reason = |note: &str| format!("reconciliation {id} ({account}, {day_text}): {note}");
        let mut totals = Totals::default();
        let mut counts: BTreeMap<ItemKind, i64> = BTreeMap::new();
        let (mut n, mut flagged, mut asked) = (0i64, 0i64, 0i64);
        let mut after: Option<(Timestamp, RefundId)> = None;
        // Pay10: the sales of the day's refunds, asked about after them.
        let mut sales: BTreeMap<(String, Option<String>), Currency> = BTreeMap::new();
        loop {
            let filter = ListFilter {
                account: Some(account.to_string()),
                created_from: Some(from),
                created_to: Some(Timestamp::from_unix_ms(to.unix_ms() - 1)),
                after: after.clone(),
                limit: PAGE,
                ..Default::default()
            };
            let mut rows = self.store.list_refunds(None, &filter).await?;
            let more = rows.len() as i64 > PAGE;
            rows.truncate(PAGE as usize);
            after = rows.last().map(|r| (r.created_at, r.id.clone()));
            // Pay10: ask about each refund sent, a few at a time.
            let asked_per_refund: Vec<Option<Result<Option<BookedRefund>, String>>> = match side {
                ProviderSide::PerRefund => {
                    let mut out = Vec::with_capacity(rows.len());
                    for chunk in rows.chunks(PARALLEL_QUERIES) {
                        let answers =
                            futures_util::future::join_all(chunk.iter().map(|r| async move {
                                if r.submission == Submission::Prepared
                                    && r.status == Status::Failed
                                {
                                    return None;
                                }
                                Some(handle.client.booked_refund(&status_query(r)).await)
                            }))
                            .await;
                        out.extend(answers);
                    }
                    out
                }
                ProviderSide::Listed { .. } => vec![None; rows.len()],
            };
            if matches!(side, ProviderSide::PerRefund) {
                for r in rows.iter().filter(|r| r.submission == Submission::Sent) {
                    sales.insert((r.transaction_no.clone(), r.reference.clone()), r.currency);
                }
            }
            let mut items = Vec::with_capacity(rows.len());
            for (row, per_refund) in rows.iter().zip(asked_per_refund) {
                let theirs: Option<BookedRefund> = match &mut side {
                    ProviderSide::Listed {
                        records,
                        used,
                        by_reference,
                        by_id,
                    } => by_reference
                        .get(&row.provider_reference)
                        .or_else(|| row.provider_refund_id.as_ref().and_then(|x| by_id.get(x)))
                        .map(|&i| {
                            used[i] = true;
                            records[i].clone()
                        }),
                    ProviderSide::PerRefund => match per_refund {
                        None | Some(Ok(None)) => None,
                        Some(Ok(Some(b))) => Some(b),
                        Some(Err(e)) => {
                            n += 1;
                            *counts.entry(ItemKind::Unchecked).or_default() += 1;
                            if row.status == Status::Succeeded {
                                totals.gateway(row.currency.code(), row.amount_minor.get());
                            }
                            items.push(item(
                                n,
                                ItemKind::Unchecked,
                                row,
                                None,
                                &format!("the provider could not be asked: {e}"),
                            ));
                            continue;
                        }
                    },
                };
                let mut verdict = compare(row, theirs.as_ref());
                let mut status_now = row.status;
                if verdict.ask {
                    asked += 1;
                    let asked_at = self.clock.now();
                    let answer = handle.client.refund_status(&status_query(row)).await;
                    let t = lifecycle::Transition::StatusQueried {
                        answer: &answer,
                        by: lifecycle::Asker::Reconciliation,
                        asked_at,
                    };
                    if let Ok(applied) = self.apply(row, t).await {
                        if let Some(now) = applied.into_row() {
                            status_now = now.status;
                        }
                    }
                    let agrees = theirs.as_ref().is_some_and(|t| {
                        (t.outcome == Outcome::Succeeded && status_now == Status::Succeeded)
                            || (t.outcome == Outcome::Failed && status_now == Status::Failed)
                    });
                    if agrees && verdict.kind == ItemKind::Matched {
                        verdict.note = format!(
                            "pending here, final there: a status query settled it as {}",
                            status_now.as_str()
                        );
                        verdict.flag = false;
                    } else {
                        if verdict.kind == ItemKind::Matched {
                            verdict.kind = ItemKind::StatusMismatch;
                        }
                        verdict.note = format!(
                            "{}; asked now, the refund is {}",
                            verdict.note,
                            status_now.as_str()
                        );
                        verdict.flag = true;
                    }
                }
                if status_now == Status::Succeeded {
                    totals.gateway(row.currency.code(), row.amount_minor.get());
                }
                if let Some(t) = &theirs {
                    if let (Outcome::Succeeded, Some(amount)) = (t.outcome, t.amount_minor) {
                        let currency = t.currency.as_deref().unwrap_or(row.currency.code());
                        totals.provider(&currency.to_ascii_uppercase(), amount);
                    }
                }
                if verdict.flag {
                    flagged += 1;
                    let what = reason(&verdict.note);
                    let t = lifecycle::Transition::Contradicted {
                        what: &what,
                        source: EventSource::Reconciliation,
                    };
                    let current = self
                        .store
                        .get_refund_any_client(row.id.as_str())
                        .await?
                        .unwrap_or_else(|| row.clone());
                    if let Applied::Refused(r) = self.apply(&current, t).await? {
                        tracing::warn!(refund_id = %row.id, refusal = %r, "flagging refused");
                    }
                }
                n += 1;
                *counts.entry(verdict.kind).or_default() += 1;
                let mut it = item(n, verdict.kind, row, theirs.as_ref(), &verdict.note);
                it.gateway_status = Some(status_now.as_str().to_string());
                items.push(it);
            }
            if !recs
                .add_items(id, token, self.clock.now() + RUN_LEASE, &items)
                .await?
            {
                return Err(ReconcileError::LostLease);
            }
            if !more {
                break;
            }
        }
        // Pay10: each sale refunded that day, by its status enquiry (which
        // needs the sale's amount: known once the provider stated it, or the
        // POS gave `sale_amount`). A sale that is gone, no longer captured,
        // or of another amount or currency is a line of its own.
        let mut sale_items = vec![];
        let mut sale_list: Vec<_> = sales.into_iter().collect();
        for chunk in sale_list.chunks_mut(PARALLEL_QUERIES) {
            let answers = futures_util::future::join_all(chunk.iter().map(
                |((tx, reference), currency)| async move {
                    let books = self.store.reconciliations().sale_books(account, tx).await?;
                    let Some(amount) = books
                        .as_ref()
                        .filter(|b| b.currency_confirmed)
                        .and_then(|b| b.amount_minor)
                        .and_then(Minor::new)
                    else {
                        return Ok::<_, StoreError>(None);
                    };
                    let found = handle
                        .client
                        .lookup_sale_as(Some(tx), reference.as_deref(), Some((amount, *currency)))
                        .await;
                    Ok(Some((amount, found)))
                },
            ))
            .await;
            for (((tx, _), currency), answer) in chunk.iter().zip(answers) {
                let Some((amount, found)) = answer? else {
                    continue;
                };
                let ours = currency.format(amount);
                let (kind, status, theirs, note) = match found {
                    Some(crate::providers::SaleLookup::Found(sale)) => {
                        let refundable = handle
                            .account
                            .provider()
                            .rules()
                            .sale_is_refundable(&sale.status);
                        if sale.currency != currency.code() {
                            (
                                ItemKind::CurrencyMismatch,
                                Some(sale.status),
                                Some(sale.amount.clone()),
                                format!("the sale: the provider has it in {}", sale.currency),
                            )
                        } else if sale.amount != ours {
                            (
                                ItemKind::AmountMismatch,
                                Some(sale.status),
                                Some(sale.amount.clone()),
                                format!(
                                    "the sale: the provider has it as {}, not {ours}",
                                    sale.amount
                                ),
                            )
                        } else if !refundable {
                            (
                                ItemKind::StatusMismatch,
                                Some(sale.status.clone()),
                                Some(sale.amount.clone()),
                                format!(
                                    "the sale is no longer captured at the provider ({})",
                                    sale.status
                                ),
                            )
                        } else {
                            continue;
                        }
                    }
                    Some(crate::providers::SaleLookup::NotFound) => (
                        ItemKind::OnlyAtGateway,
                        None,
                        None,
                        "the sale: the provider has no record of it".to_string(),
                    ),
                    Some(crate::providers::SaleLookup::Unavailable(m)) => (
                        ItemKind::Unchecked,
                        None,
                        None,
                        format!("the sale could not be asked about: {m}"),
                    ),
                    None => continue,
                };
                n += 1;
                *counts.entry(kind).or_default() += 1;
                sale_items.push(ItemRow {
                    n,
                    kind: kind.as_str().into(),
                    transaction_no: Some(tx.clone()),
                    currency: Some(currency.code().to_string()),
                    gateway_amount: None,
                    provider_amount: theirs,
                    provider_status: status,
                    note: Some(format!("{note} (a sale line: its amounts are not refunds)")),
                    ..Default::default()
                });
            }
        }
        if !recs
            .add_items(id, token, self.clock.now() + RUN_LEASE, &sale_items)
            .await?
        {
            return Err(ReconcileError::LostLease);
        }
        // What the provider lists that none of the day's refunds is.
        if let ProviderSide::Listed { records, used, .. } = &side {
            let mut items = vec![];
            for (r, _) in records.iter().zip(used).filter(|(_, u)| !**u) {
                if r.created.is_some_and(|d| d != day) {
                    continue; // a neighbouring day's, in the provider's calendar
                }
                let ours = self
                    .store
                    .find_refund_by_provider_ids(
                        std::slice::from_ref(&handle.account.name),
                        r.provider_refund_id.as_deref(),
                        r.provider_reference.as_deref(),
                    )
                    .await?;
                if ours.is_some() {
                    continue; // ours, of another day
                }
                n += 1;
                *counts.entry(ItemKind::OnlyAtProvider).or_default() += 1;
                if r.outcome == Outcome::Succeeded {
                    if let (Some(c), Some(a)) = (&r.currency, r.amount_minor) {
                        totals.provider(&c.to_ascii_uppercase(), a);
                    }
                }
                let mut note =
                    "made elsewhere (the provider's dashboard, another system)".to_string();
                match (&r.sale_transaction_no, &r.currency, r.amount_minor, &r.provider_refund_id) {
                    (Some(sale), Some(currency), Some(amount), Some(rid))
                        if r.outcome != Outcome::Failed =>
                    {
                        let new = recs
                            .record_outside(&OutsideRefund {
                                account: account.to_string(),
                                provider_refund_id: rid.clone(),
                                provider: handle.account.provider().as_str().to_string(),
                                transaction_no: sale.clone(),
                                provider_reference: r.provider_reference.clone(),
                                amount_minor: amount,
                                currency: currency.to_ascii_uppercase(),
                                provider_status: r.provider_status.clone(),
                                found_in: id.to_string(),
                                found_at: self.clock.now(),
                                review_reason: Some(reason(&note)),
                            })
                            .await?;
                        note.push_str(if new {
                            "; recorded: it counts against its sale from now on"
                        } else {
                            "; recorded earlier: it counts against its sale"
                        });
                    }
                    (Some(sale), Some(currency), Some(amount), Some(rid)) => {
                        // Failed there: nothing moved. One recorded earlier
                        // is updated (it still counts: what counts against
                        // a sale never shrinks by a report).
                        let known = recs
                            .outside_refunds(Some((account, sale)), 1000)
                            .await?
                            .into_iter()
                            .any(|o| &o.provider_refund_id == rid);
                        if known {
                            recs.record_outside(&OutsideRefund {
                                account: account.to_string(),
                                provider_refund_id: rid.clone(),
                                provider: handle.account.provider().as_str().to_string(),
                                transaction_no: sale.clone(),
                                provider_reference: r.provider_reference.clone(),
                                amount_minor: amount,
                                currency: currency.to_ascii_uppercase(),
                                provider_status: r.provider_status.clone(),
                                found_in: id.to_string(),
                                found_at: self.clock.now(),
                                review_reason: Some(reason(&note)),
                            })
                            .await?;
                        }
                        note.push_str("; failed there: nothing moved");
                    }
                    _ if r.outcome == Outcome::Failed => note.push_str("; failed there: nothing moved"),
                    _ => note.push_str(
                        "; the provider's record lacks its sale, amount or id: not counted against a sale",
                    ),
                }
                items.push(ItemRow {
                    n,
                    kind: ItemKind::OnlyAtProvider.as_str().into(),
                    refund_id: None,
                    transaction_no: r.sale_transaction_no.clone(),
                    provider_refund_id: r.provider_refund_id.clone(),
                    provider_reference: r.provider_reference.clone(),
                    currency: r.currency.clone(),
                    gateway_amount: None,
                    provider_amount: amount_text(r.amount_minor, r.currency.as_deref()),
                    gateway_status: None,
                    provider_status: r.provider_status.clone(),
                    provider_outcome: Some(r.outcome.as_str().to_string()),
                    note: Some(note),
                });
                if items.len() >= PAGE as usize {
                    let page = std::mem::take(&mut items);
                    if !recs
                        .add_items(id, token, self.clock.now() + RUN_LEASE, &page)
                        .await?
                    {
                        return Err(ReconcileError::LostLease);
                    }
                }
            }
            if !recs
                .add_items(id, token, self.clock.now() + RUN_LEASE, &items)
                .await?
            {
                return Err(ReconcileError::LostLease);
            }
        }
        let discrepancies = counts
            .iter()
            .filter(|(k, _)| k.is_discrepancy())
            .map(|(_, v)| *v)
            .sum();
        let summary = ReportSummary {
            time_zone: tz.iana_name().unwrap_or("UTC").to_string(),
            from: from.rfc3339(),
            to: to.rfc3339(),
            provider_source,
            counts: ItemKind::ALL
                .iter()
                .map(|k| (k.as_str().to_string(), counts.get(k).copied().unwrap_or(0)))
                .collect(),
            totals: totals.render(),
            flagged,
            asked,
        };
        Ok((summary, discrepancies))
    }
}

fn amount_text(minor: Option<i64>, currency: Option<&str>) -> Option<String> {
    let c = Currency::from_code(currency?).ok()?;
    Some(c.format(Minor::new(minor?)?))
}

fn item(
    n: i64,
    kind: ItemKind,
    row: &RefundRow,
    theirs: Option<&BookedRefund>,
    note: &str,
) -> ItemRow {
    ItemRow {
        n,
        kind: kind.as_str().into(),
        refund_id: Some(row.id.to_string()),
        transaction_no: Some(row.transaction_no.clone()),
        provider_refund_id: theirs
            .and_then(|t| t.provider_refund_id.clone())
            .or_else(|| row.provider_refund_id.clone()),
        provider_reference: Some(row.provider_reference.clone()),
        currency: Some(row.currency.code().to_string()),
        gateway_amount: Some(row.currency.format(row.amount_minor)),
        provider_amount: theirs.and_then(|t| {
            amount_text(
                t.amount_minor,
                t.currency.as_deref().or(Some(row.currency.code())),
            )
        }),
        gateway_status: Some(row.status.as_str().to_string()),
        provider_status: theirs.and_then(|t| t.provider_status.clone()),
        provider_outcome: theirs.map(|t| t.outcome.as_str().to_string()),
        note: Some(note.to_string()).filter(|n| !n.is_empty()),
    }
}

/// Runs the daily job until `shutdown`: at `daily_at` (in UTC) each
/// account's previous day, once across every process.
pub async fn run_daily(
    gateway: std::sync::Arc<Gateway>,
    daily_at: jiff::civil::Time,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let now = gateway.clock.now();
        let today = jiff::Timestamp::from_millisecond(now.unix_ms())
            .map(|t| t.to_zoned(jiff::tz::TimeZone::UTC).date())
            .unwrap_or_default();
        let due = jiff::Timestamp::from_millisecond(now.unix_ms())
            .map(|t| t.to_zoned(jiff::tz::TimeZone::UTC).time() >= daily_at)
            .unwrap_or(false);
        if due {
            let day = today.yesterday().unwrap_or(today);
            let mut names: Vec<&String> = gateway.accounts.keys().collect();
            names.sort();
            for account in names {
                match gateway.reconcile_day(account, day, true).await {
                    Ok(RunOutcome::Ran { report, .. }) => {
                        tracing::info!(%account, %day, report = %report.id, discrepancies = report.discrepancies, "daily reconciliation ran")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(%account, %day, error = %e, "daily reconciliation failed; tried again later")
                    }
                }
            }
        }
        if !super::wait_for_next_pass(std::time::Duration::from_secs(60), &mut shutdown).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(status: Status, submission: Submission) -> RefundRow {
        RefundRow {
            status,
            submission,
            ..RefundRow::recorded(crate::store::NewRefundRow {
                id: RefundId::generate(),
                client: "c".into(),
                account: "a".into(),
                provider: crate::types::ProviderKind::Pockyt,
                livemode: false,
                amount: Minor::new(100).unwrap(),
                currency: Currency::from_code("USD").unwrap(),
                transaction_no: "1".into(),
                provider_reference: "R".into(),
                request_hash: "h".into(),
                now: Timestamp::EPOCH,
            })
        }
    }

    fn theirs(outcome: Outcome, amount: i64, currency: &str) -> BookedRefund {
        BookedRefund {
            sale_transaction_no: Some("1".into()),
            provider_refund_id: Some("P".into()),
            provider_reference: Some("R".into()),
            amount_minor: Some(amount),
            currency: Some(currency.into()),
            provider_status: Some(outcome.as_str().into()),
            outcome,
            created: None,
        }
    }

    #[test]
    fn each_disagreement_is_its_own_kind() {
        use Outcome::*;
        use Status::{Failed as F, Pending as P, Succeeded as S};
        let sent = Submission::Sent;
        let t = |o, amount, currency| Some(theirs(o, amount, currency));
        let cases: &[(Status, Option<BookedRefund>, ItemKind, bool, bool)] = &[
            (S, t(Succeeded, 100, "USD"), ItemKind::Matched, false, false),
            (F, t(Failed, 100, "USD"), ItemKind::Matched, false, false),
            (
                S,
                t(Pending, 100, "USD"),
                ItemKind::StatusMismatch,
                true,
                false,
            ),
            (
                S,
                t(Succeeded, 150, "USD"),
                ItemKind::AmountMismatch,
                true,
                false,
            ),
            (
                S,
                t(Succeeded, 100, "EUR"),
                ItemKind::CurrencyMismatch,
                true,
                false,
            ),
            (
                S,
                t(Failed, 100, "USD"),
                ItemKind::StatusMismatch,
                true,
                false,
            ),
            (
                F,
                t(Succeeded, 100, "USD"),
                ItemKind::StatusMismatch,
                true,
                false,
            ),
            // Failed here, still processing there: it may yet be paid.
            (
                F,
                t(Pending, 100, "USD"),
                ItemKind::StatusMismatch,
                true,
                false,
            ),
            // Pending here, final there: a status query decides.
            (P, t(Succeeded, 100, "USD"), ItemKind::Matched, false, true),
            (P, t(Pending, 100, "USD"), ItemKind::Matched, false, false),
            (S, None, ItemKind::OnlyAtGateway, true, false),
            (P, None, ItemKind::OnlyAtGateway, false, false),
            (F, None, ItemKind::Matched, false, false),
        ];
        for (status, t, kind, flag, ask) in cases {
            let v = compare(&ours(*status, sent), t.as_ref());
            assert_eq!(
                (v.kind, v.flag, v.ask),
                (*kind, *flag, *ask),
                "{status:?} vs {t:?}: {}",
                v.note
            );
        }
        // Never sent: nothing to find at the provider.
        let v = compare(&ours(Status::Pending, Submission::Prepared), None);
        assert_eq!(v.kind, ItemKind::Matched);
    }

    #[test]
    fn a_day_is_counted_in_the_accounts_time_zone() {
        let day: jiff::civil::Date = "2026-03-08".parse().unwrap();
        let (from, to) = day_bounds(day, &jiff::tz::TimeZone::UTC).unwrap();
        assert_eq!(to.ms_since(from), 86_400_000);
        // New York springs forward that day: 23 hours.
        let ny = jiff::tz::TimeZone::get("America/New_York").unwrap();
        let (from, to) = day_bounds(day, &ny).unwrap();
        assert_eq!(to.ms_since(from), 23 * 3_600_000);
        assert_eq!(from.rfc3339(), "2026-03-08T05:00:00Z");
    }
}
