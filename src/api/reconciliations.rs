//! `/v1/operator/reconciliations`: the daily reconciliation reports (run
//! one, list them, read one as JSON or as CSV for a finance team).

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::parse::{self, Limit, Text};
use super::{ApiError, AppState, OperatorAuthed};
use crate::refunds::books::{ReconcileError, ReportSummary, RunOutcome};
use crate::store::{ItemRow, ReportRow};

/// How long `POST /v1/operator/reconciliations` waits for its run before
/// answering 202 (the run goes on).
const RUN_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// A stored report.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReconciliationObject {
    /// `rec_...`: the same for every run of its account and day.
    pub id: String,
    /// Always `reconciliation`.
    #[schema(example = "reconciliation")]
    pub object: String,
    pub account: String,
    #[schema(example = "pockyt")]
    pub provider: String,
    /// `YYYY-MM-DD`, in `summary.time_zone`.
    #[schema(example = "2026-12-06")]
    pub date: String,
    /// `running`, `done` or `failed`.
    #[schema(example = "done")]
    pub state: String,
    /// How many times the day was run (a re-run replaces the lines).
    pub runs: i64,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// Lines that are not `matched`.
    pub discrepancies: i64,
    pub summary: Option<ReportSummary>,
    /// Why the run failed (the provider's books could not be read, ...).
    pub error: Option<String>,
    /// In a `POST` answer: an earlier report of the day was replaced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaced: Option<bool>,
    /// In a `GET` of one report: its lines, in order (at most
    /// `items_limit`; more with `items_after` = the last line's `line`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<ItemObject>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub has_more_items: Option<bool>,
}

/// One line of a report (the CSV has the same columns).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ItemObject {
    pub line: i64,
    /// `matched`, `amount_mismatch`, `currency_mismatch`, `status_mismatch`,
    /// `only_at_gateway`, `only_at_provider`, `unchecked`.
    #[schema(example = "matched")]
    pub kind: String,
    pub refund_id: Option<String>,
    /// The refunded sale.
    pub transaction_no: Option<String>,
    pub provider_refund_id: Option<String>,
    /// The refund's id at the provider that the gateway sent (Pockyt
    /// `refundReference`, Pay10 `REFUND_ORDER_ID`).
    pub provider_reference: Option<String>,
    pub currency: Option<String>,
    /// Decimal, in the currency's digits.
    pub gateway_amount: Option<String>,
    pub provider_amount: Option<String>,
    pub gateway_status: Option<String>,
    /// The provider's own status word.
    pub provider_status: Option<String>,
    /// What it means: `succeeded`, `failed`, `pending`, `unknown`.
    pub provider_outcome: Option<String>,
    pub note: Option<String>,
}

impl From<ItemRow> for ItemObject {
    fn from(i: ItemRow) -> Self {
        ItemObject {
            line: i.n,
            kind: i.kind,
            refund_id: i.refund_id,
            transaction_no: i.transaction_no,
            provider_refund_id: i.provider_refund_id,
            provider_reference: i.provider_reference,
            currency: i.currency,
            gateway_amount: i.gateway_amount,
            provider_amount: i.provider_amount,
            gateway_status: i.gateway_status,
            provider_status: i.provider_status,
            provider_outcome: i.provider_outcome,
            note: i.note,
        }
    }
}

fn object(r: ReportRow) -> ReconciliationObject {
    ReconciliationObject {
        object: "reconciliation".into(),
        summary: r
            .summary
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok()),
        id: r.id,
        account: r.account,
        provider: r.provider,
        date: r.day,
        state: r.state,
        runs: r.runs,
        started_at: r.started_at.rfc3339_ms(),
        finished_at: r.finished_at.map(|t| t.rfc3339_ms()),
        discrepancies: r.discrepancies,
        error: r.error,
        replaced: None,
        items: None,
        has_more_items: None,
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ReconciliationList {
    /// Always `list`.
    #[schema(value_type = String, example = "list")]
    pub object: &'static str,
    /// Newest day first (then by account); without their lines.
    pub data: Vec<ReconciliationObject>,
    /// More reports follow (ask again with `starting_after` = the last id).
    pub has_more: bool,
}

/// What `POST /v1/operator/reconciliations` takes.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunBody {
    /// A configured provider account.
    #[schema(value_type = String, example = "pockyt-demo")]
    pub account: Text<100>,
    /// `YYYY-MM-DD`: the day (in the account's `time_zone`, else UTC).
    #[schema(value_type = String, example = "2026-12-06")]
    pub date: Text<10>,
}

/// A day from `YYYY-MM-DD`, not in the future.
pub fn parse_day(raw: &str, today: jiff::civil::Date) -> Result<jiff::civil::Date, ApiError> {
    let field =
        |m: &str| ApiError::validation(BTreeMap::from([("date".to_string(), vec![m.to_string()])]));
    let ok = raw.len() == 10
        && raw.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    let day: jiff::civil::Date = ok
        .then(|| raw.parse().ok())
        .flatten()
        .ok_or_else(|| field("must be a date, YYYY-MM-DD"))?;
    if day > today {
        return Err(field(
            "is in the future: a day can be reconciled once it has begun",
        ));
    }
    if day < jiff::civil::date(2000, 1, 1) {
        return Err(field("must be 2000-01-01 or later"));
    }
    Ok(day)
}

fn today(state: &AppState) -> jiff::civil::Date {
    jiff::Timestamp::from_millisecond(state.gateway.clock.now().unix_ms())
        .map(|t| {
            t.to_zoned(jiff::tz::TimeZone::UTC)
                .date()
                .tomorrow()
                .unwrap_or_default()
        })
        .unwrap_or_default()
}

fn run_error(e: ReconcileError) -> ApiError {
    match e {
        ReconcileError::UnknownAccount(a) => ApiError::validation(BTreeMap::from([(
            "account".to_string(),
            vec![format!("no provider account named {a:?} is configured")],
        )])),
        ReconcileError::Provider(m) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "provider_unavailable",
            format!("the provider's books could not be read ({m}); the report is stored as failed; try again"),
        ),
        ReconcileError::LostLease => ApiError::new(
            StatusCode::CONFLICT,
            "reconciliation_running",
            "another process took this run over; its report will replace this one",
        )
        .retry_after(5),
        ReconcileError::Store(e) => e.into(),
    }
}

#[utoipa::path(
    post,
    path = "/v1/operator/reconciliations",
    summary = "Run the reconciliation of one account and day",
    description = "Compares the account's refunds of the day with the provider's books (Pockyt: its transaction list; Pay10: its refund status, asked per refund) and stores the report: every line `matched`, `amount_mismatch`, `currency_mismatch`, `status_mismatch`, `only_at_gateway`, `only_at_provider` (made elsewhere: it counts against its sale from now on) or `unchecked`. Every discrepancy flags the refund for review with a reason naming the report. Idempotent per account and day: a re-run replaces the report (`replaced: true`, status 200; a first run answers 201). Operator key only.",
    operation_id = "operator_reconciliation_run",
    tag = "operator",
    request_body(content = RunBody, content_type = "application/json"),
    responses(
        (status = 201, description = "The day's first report", body = ReconciliationObject),
        (status = 200, description = "The day's report, replacing an earlier one (`replaced: true`)", body = ReconciliationObject),
        (status = 202, description = "Still running after 20 s (a large day): the report as it stands (`state: running`); ask `GET /v1/operator/reconciliations/{id}` until it is `done` or `failed`", body = ReconciliationObject),
        (status = 400, description = "`invalid_request` (with `errors`): an unknown account, a malformed or future date; `malformed_json`", body = super::error::Problem, content_type = "application/problem+json"),
        super::error::OperatorKeyRefusals,
        (status = 409, description = "`reconciliation_running`: another run of this account and day is under way", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 415, description = "`unsupported_media_type`: send application/json", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 502, description = "`provider_unavailable`: the provider's books could not be read (the report is stored as `failed`)", body = super::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn run(
    State(state): State<AppState>,
    OperatorAuthed(op): OperatorAuthed,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    super::require_json(&headers)?;
    let bytes = super::read_body(body, 4 * 1024).await?;
    let req: RunBody = parse::json(&bytes)?;
    let day = parse_day(req.date.0.trim(), today(&state))?;
    let account = req.account.0.trim().to_string();
    tracing::info!(operator = %op.name, %account, %day, "reconciliation requested");
    if !state.gateway.accounts.contains_key(&account) {
        return Err(run_error(ReconcileError::UnknownAccount(account)));
    }
    // A large day outlasts a request: the run goes on in its own task, and
    // after a while the answer is 202 with the report as it stands.
    let gateway = state.gateway.clone();
    let task_account = account.clone();
    let mut task =
        tokio::spawn(async move { gateway.reconcile_day(&task_account, day, false).await });
    let outcome = match tokio::time::timeout(RUN_WAIT, &mut task).await {
        Ok(joined) => joined.map_err(|e| {
            tracing::error!(error = %e, "a reconciliation run panicked");
            ApiError::internal()
        })?,
        Err(_) => {
            let report = state
                .gateway
                .store
                .reconciliations()
                .report_for_day(&account, &day.to_string())
                .await?
                .ok_or_else(ApiError::internal)?;
            return Ok((StatusCode::ACCEPTED, Json(object(report))).into_response());
        }
    };
    match outcome.map_err(run_error)? {
        RunOutcome::Ran { report, replaced } => {
            let mut o = object(*report);
            o.replaced = Some(replaced);
            let status = if replaced {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            Ok((status, Json(o)).into_response())
        }
        RunOutcome::Busy | RunOutcome::AlreadyDone => Err(ApiError::new(
            StatusCode::CONFLICT,
            "reconciliation_running",
            "this account and day are being reconciled right now; ask for the report in a moment",
        )
        .retry_after(5)),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Only this account's reports.
    #[param(value_type = Option<String>)]
    account: Option<Text<100>>,
    /// The id of the last report you have.
    #[param(value_type = Option<String>)]
    starting_after: Option<Text<64>>,
    /// 1-100, default 20.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<Limit>,
}

#[utoipa::path(
    get,
    path = "/v1/operator/reconciliations",
    summary = "The reconciliation reports",
    description = "Newest day first, then by account; each with its summary (counts by kind, totals per currency on both sides). Operator key only.",
    operation_id = "operator_reconciliations",
    tag = "operator",
    params(ListQuery),
    responses(
        (status = 200, description = "Reports", body = ReconciliationList),
        (status = 400, description = "`invalid_request` (with `errors`): an unknown `starting_after`", body = super::error::Problem, content_type = "application/problem+json"),
        super::error::OperatorKeyRefusals,
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    OperatorAuthed(_op): OperatorAuthed,
    RawQuery(raw): RawQuery,
) -> Result<Json<ReconciliationList>, ApiError> {
    let q: ListQuery = parse::query(raw.as_deref())?;
    let limit = q.limit.unwrap_or_default().0;
    let recs = state.gateway.store.reconciliations();
    let after = match &q.starting_after {
        Some(id) => Some(recs.report(&id.0).await?.ok_or_else(|| {
            ApiError::validation(BTreeMap::from([(
                "starting_after".to_string(),
                vec!["names no report".to_string()],
            )]))
        })?),
        None => None,
    };
    let mut rows = recs
        .reports(
            q.account.as_ref().map(|a| a.0.as_str()),
            after.as_ref().map(|r| (r.day.as_str(), r.account.as_str())),
            limit + 1,
        )
        .await?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    Ok(Json(ReconciliationList {
        object: "list",
        data: rows.into_iter().map(object).collect(),
        has_more,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct OneQuery {
    /// JSON only: lines after this line number.
    #[param(value_type = Option<i64>)]
    items_after: Option<Text<20>>,
    /// JSON only: 1-1000 lines, default 1000 (the CSV has every line).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    items_limit: Option<Text<20>>,
}

/// The CSV's columns, in order.
pub const CSV_COLUMNS: [&str; 17] = [
    "report_id",
    "account",
    "provider",
    "date",
    "line",
    "kind",
    "refund_id",
    "transaction_no",
    "provider_refund_id",
    "provider_reference",
    "currency",
    "gateway_amount",
    "provider_amount",
    "gateway_status",
    "provider_status",
    "provider_outcome",
    "note",
];

/// A text cell a spreadsheet would not run: a leading `=`, `+`, `-`, `@`,
/// tab or carriage return (a formula, in Excel and its kin) gets a `'` in
/// front (OWASP's advice against CSV injection). Text from a provider
/// (statuses, references) reaches these cells; amounts never need it.
fn inert(cell: &str) -> std::borrow::Cow<'_, str> {
    match cell.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => format!("'{cell}").into(),
        _ => cell.into(),
    }
}

fn csv_lines(r: &ReportRow, items: &[ItemRow], header: bool) -> Vec<u8> {
    let mut w = csv::Writer::from_writer(Vec::with_capacity(items.len() * 160));
    let mut put = |rec: &[&str]| {
        // Writing into memory cannot fail.
        let _ = w.write_record(rec);
    };
    if header {
        put(&CSV_COLUMNS);
    }
    for i in items {
        let o = |v: &Option<String>| inert(v.as_deref().unwrap_or_default()).into_owned();
        let line = i.n.to_string();
        put(&[
            &r.id,
            &inert(&r.account),
            &r.provider,
            &r.day,
            &line,
            &i.kind,
            &o(&i.refund_id),
            &o(&i.transaction_no),
            &o(&i.provider_refund_id),
            &o(&i.provider_reference),
            &o(&i.currency),
            &o(&i.gateway_amount),
            &o(&i.provider_amount),
            &o(&i.gateway_status),
            &o(&i.provider_status),
            &o(&i.provider_outcome),
            &o(&i.note),
        ]);
    }
    w.into_inner().unwrap_or_default()
}

fn wants_csv(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|p| p.trim().starts_with("text/csv")))
}

#[utoipa::path(
    get,
    path = "/v1/operator/reconciliations/{id}",
    summary = "One reconciliation report, as JSON or CSV",
    description = "The report with its lines. With `Accept: text/csv`: every line as CSV (RFC 4180, a header row, the columns of a line item plus `report_id`, `account`, `provider`, `date`), streamed page by page; the totals of the summary are the sums of `gateway_amount` over lines with `gateway_status` `succeeded`, and of `provider_amount` over lines with `provider_outcome` `succeeded`, per currency. Operator key only.",
    operation_id = "operator_reconciliation",
    tag = "operator",
    params(("id" = String, Path, description = "Report id (`rec_...`)"), OneQuery),
    responses(
        (status = 200, description = "The report (JSON), or its lines (`text/csv`)", content(
            (ReconciliationObject = "application/json"),
            (String = "text/csv")
        )),
        super::error::OperatorKeyRefusals,
        (status = 404, description = "`not_found`", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "CSV only: `reconciliation_running` (ask again, `Retry-After`) or `reconciliation_failed` (run the day again)", body = super::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn one(
    State(state): State<AppState>,
    OperatorAuthed(_op): OperatorAuthed,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q: OneQuery = parse::query(raw.as_deref())?;
    let number = |t: &Option<Text<20>>, field: &str, max: i64, default: i64| match t {
        None => Ok(default),
        Some(t) => {
            t.0.parse::<i64>()
                .ok()
                .filter(|n| (0..=max).contains(n))
                .ok_or_else(|| {
                    ApiError::validation(BTreeMap::from([(
                        field.to_string(),
                        vec![format!("must be a whole number from 0 to {max}")],
                    )]))
                })
        }
    };
    let items_after = number(&q.items_after, "items_after", i64::MAX, 0)?;
    let items_limit = number(&q.items_limit, "items_limit", 1000, 1000)?.max(1);
    let store = state.gateway.store.clone();
    let report = store
        .reconciliations()
        .report(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("reconciliation"))?;
    if wants_csv(&headers) {
        // Only a finished report has lines to import: a failed or running
        // one would read as a day with nothing in it.
        match report.state.as_str() {
            "done" => {}
            "running" => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "reconciliation_running",
                    "the report is still being made; ask again in a moment",
                )
                .retry_after(5))
            }
            _ => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "reconciliation_failed",
                    format!(
                        "the report's run failed ({}); run the day again",
                        report.error.as_deref().unwrap_or("no reason recorded")
                    ),
                ))
            }
        }
        let file = format!("reconciliation-{}-{}.csv", report.account, report.day).replace(
            |c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '.',
            "_",
        );
        let stream = futures_util::stream::unfold(Some(0i64), move |after| {
            let store = store.clone();
            let report = report.clone();
            async move {
                let after = after?;
                match store.reconciliations().items(&report.id, after, 1000).await {
                    Ok(items) => {
                        let next = items.last().map(|i| i.n).filter(|_| items.len() == 1000);
                        let bytes = csv_lines(&report, &items, after == 0);
                        Some((Ok::<_, std::io::Error>(bytes), next))
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "reading a report's lines for its CSV failed");
                        Some((Err(std::io::Error::other(e.to_string())), None))
                    }
                }
            }
        });
        return Ok((
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{file}\""),
                ),
            ],
            Body::from_stream(stream),
        )
            .into_response());
    }
    let mut items = store
        .reconciliations()
        .items(&report.id, items_after, items_limit + 1)
        .await?;
    let has_more = items.len() as i64 > items_limit;
    items.truncate(items_limit as usize);
    let mut o = object(report);
    o.items = Some(items.into_iter().map(ItemObject::from).collect());
    o.has_more_items = Some(has_more);
    Ok(Json(o).into_response())
}

/// The routes.
pub fn routes() -> axum::Router<AppState> {
    use axum::routing::get;
    axum::Router::new()
        .route("/v1/operator/reconciliations", get(list).post(run))
        .route("/v1/operator/reconciliations/{id}", get(one))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_text_never_becomes_a_formula() {
        let report = ReportRow {
            id: "rec_1".into(),
            account: "a".into(),
            provider: "pockyt".into(),
            day: "2026-12-06".into(),
            state: "done".into(),
            runs: 1,
            started_at: crate::types::Timestamp::EPOCH,
            finished_at: None,
            discrepancies: 0,
            summary: None,
            error: None,
        };
        let item = ItemRow {
            n: 1,
            kind: "only_at_provider".into(),
            provider_status: Some("=HYPERLINK(\"http://x\",\"y\")".into()),
            provider_reference: Some("@SUM(A1)".into()),
            gateway_amount: Some("1.00".into()),
            note: Some("a, \"quoted\"\nnote".into()),
            ..Default::default()
        };
        let bytes = csv_lines(&report, &[item], true);
        let mut rd = csv::Reader::from_reader(bytes.as_slice());
        let rec = rd.records().next().unwrap().unwrap();
        let at = |name: &str| {
            let i = CSV_COLUMNS.iter().position(|c| *c == name).unwrap();
            rec[i].to_string()
        };
        assert_eq!(at("provider_status"), "'=HYPERLINK(\"http://x\",\"y\")");
        assert_eq!(at("provider_reference"), "'@SUM(A1)");
        assert_eq!(at("gateway_amount"), "1.00");
        assert_eq!(at("note"), "a, \"quoted\"\nnote");
    }
}
