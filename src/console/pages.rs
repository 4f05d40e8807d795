//! The console's pages (maud: every value is escaped unless marked
//! otherwise, and nothing here marks a value otherwise).

use std::collections::BTreeMap;
use std::time::Duration;

use maud::{html, Markup, DOCTYPE};

use super::Signed;
use crate::api::error::ApiError;
use crate::api::events::DeliveryList;
use crate::api::operator::{OperatorRefundList, OperatorRefundObject, ReviewQueue};
use crate::api::reconciliations::{ReconciliationList, ReconciliationObject};
use crate::api::refunds::RefundEvents;
use crate::api::AppState;
use crate::store::{DeliveryState, DisabledEndpoint, PosEventRow, ReportRow};
use crate::types::{ProviderKind, Timestamp};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Nav {
    Overview,
    Review,
    Refunds,
    Webhooks,
    Reconciliations,
    None,
}

/// A duration for a person: "45 s", "12 min", "3 h 5 min", "2 d 4 h".
pub fn format_age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        3600..=86_399 => match (s % 3600) / 60 {
            0 => format!("{} h", s / 3600),
            m => format!("{} h {m} min", s / 3600),
        },
        _ => match (s % 86_400) / 3600 {
            0 => format!("{} d", s / 86_400),
            h => format!("{} d {h} h", s / 86_400),
        },
    }
}

/// An id as one URL path segment (ids are ASCII tokens; anything else is
/// percent-encoded).
pub fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn query(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// A moment: UTC in the page (and on hover); the script shows it in the
/// browser's time zone.
fn when(rfc3339: &str) -> Markup {
    let shown = rfc3339.replacen('T', " ", 1).replace('Z', " UTC");
    html! {
        time datetime=(rfc3339) title=(format!("UTC: {shown}")) { (shown) }
    }
}

fn when_ts(t: Timestamp) -> Markup {
    when(&t.rfc3339())
}

fn age_of(rfc3339: &str, now: Timestamp) -> String {
    rfc3339
        .parse::<jiff::Timestamp>()
        .ok()
        .map(|t| now.since(Timestamp::from_unix_ms(t.as_millisecond())))
        .map(format_age)
        .unwrap_or_default()
}

fn status(s: &str) -> Markup {
    html! { span class={ "status status-" (s) } { (s) } }
}

fn money(amount: &str, currency: &str) -> Markup {
    html! { span class="money" { (amount) " " (currency) } }
}

fn refund_link(id: &str) -> Markup {
    html! { a href={ "/console/refunds/" (path_segment(id)) } { code { (id) } } }
}

fn csrf(signed: &Signed) -> Markup {
    html! { input type="hidden" name="csrf" value=(signed.csrf); }
}

fn notice(text: &str) -> Markup {
    html! { p class="notice" role="status" { (text) } }
}

fn problem(e: &ApiError) -> Markup {
    html! {
        div class="problem" role="alert" {
            p { strong { (title_of(e)) } " " (e.detail) }
            @if let Some(errors) = &e.errors {
                ul {
                    @for (field, msgs) in errors {
                        @for m in msgs { li { code { (field) } ": " (m) } }
                    }
                }
            }
            @if let Some(s) = e.retry_after {
                p { "You can try again in " (format_age(Duration::from_secs(s))) "." }
            }
        }
    }
}

fn title_of(e: &ApiError) -> &'static str {
    match e.status.as_u16() {
        400 => "The request was not accepted.",
        401 | 403 => "Not allowed.",
        404 => "Not found.",
        409 => "Refused.",
        422 => "Refused.",
        429 => "Too many attempts.",
        502..=504 => "The provider could not be reached.",
        _ => "Something went wrong.",
    }
}

fn done_message(done: Option<&str>) -> Option<&'static str> {
    Some(match done? {
        "synced" => "The provider was asked; its answer is applied and in the history below.",
        "resolved" => {
            "Resolved: the provider's answer, your name and your note are in the history below."
        }
        "redelivered" => {
            "The event is scheduled for delivery again (the receiver sees the same webhook-id)."
        }
        "enabled" => "The endpoint takes deliveries again; its waiting deliveries are due now.",
        "acknowledged" => "Acknowledged: it left the queue and still counts against its sale.",
        _ => return None,
    })
}

fn layout(signed: Option<&Signed>, title: &str, nav: Nav, content: Markup) -> Markup {
    let item = |n: Nav, href: &str, label: &str| {
        html! {
            li { a href=(href) aria-current=[(nav == n).then_some("page")] { (label) } }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · refund-gateway console" }
                link rel="stylesheet" href="/console/assets/console.css";
                script src="/console/assets/console.js" defer {}
            }
            body {
                a class="skip" href="#main" { "Skip to content" }
                header class="top" {
                    a class="brand" href="/console" { "refund-gateway" }
                    @if let Some(s) = signed {
                        nav aria-label="Console" {
                            ul {
                                (item(Nav::Overview, "/console", "Overview"))
                                (item(Nav::Review, "/console/review", "Review queue"))
                                (item(Nav::Refunds, "/console/refunds", "Refunds"))
                                (item(Nav::Webhooks, "/console/webhooks", "Webhooks"))
                                (item(Nav::Reconciliations, "/console/reconciliations", "Reconciliations"))
                            }
                        }
                        form class="signout" method="post" action="/console/sign-out" {
                            (csrf(s))
                            span { "Signed in as " strong { (s.operator.name) } }
                            " "
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main id="main" tabindex="-1" {
                    h1 { (title) }
                    (content)
                }
            }
        }
    }
}

pub fn error(signed: Option<&Signed>, e: &ApiError) -> Markup {
    layout(
        signed,
        title_of(e),
        Nav::None,
        html! {
            (problem(e))
            p { a href="/console" { "Back to the overview" } }
        },
    )
}

pub fn sign_in(token: &str, next: &str, info: Option<&str>, error: Option<&str>) -> Markup {
    layout(
        None,
        "Sign in",
        Nav::None,
        html! {
            @if let Some(i) = info { (notice(i)) }
            @if let Some(e) = error {
                div class="problem" role="alert" { p { (e) } }
            }
            form class="card narrow" method="post" action="/console/sign-in" {
                input type="hidden" name="csrf" value=(token);
                input type="hidden" name="next" value=(next);
                label for="key" { "Operator key" }
                input id="key" name="key" type="password" autocomplete="current-password" required autofocus;
                p class="hint" { "The key an administrator made for you with " code { "refund-gateway keys new --operator NAME" } ". A POS key cannot sign in." }
                button type="submit" { "Sign in" }
            }
        },
    )
}

// ---- overview --------------------------------------------------------------

pub struct OverviewData {
    now: Timestamp,
    since: Timestamp,
    /// Per account: its provider and today's refunds by status.
    counts: Vec<(String, ProviderKind, BTreeMap<String, i64>)>,
    pending: (i64, Option<Timestamp>),
    review: i64,
    outside: usize,
    disabled: Vec<DisabledEndpoint>,
    /// (client, endpoint shown, failed deliveries, retrying deliveries)
    failing: Vec<(String, String, usize, usize)>,
    reports: Vec<(String, Option<ReportRow>)>,
}

pub async fn overview_data(state: &AppState) -> Result<OverviewData, ApiError> {
    let g = &state.gateway;
    let now = g.clock.now();
    let since = Timestamp::from_unix_ms(now.unix_ms() - now.unix_ms().rem_euclid(86_400_000));
    let mut names: Vec<&String> = g.accounts.keys().collect();
    names.sort();
    let mut counts = Vec::new();
    let mut reports = Vec::new();
    for name in names {
        let by_status = g.store.console().refund_counts(name, since).await?;
        counts.push((
            name.clone(),
            g.accounts[name].account.provider(),
            by_status.into_iter().collect(),
        ));
        let last = g
            .store
            .reconciliations()
            .reports(Some(name), None, 1)
            .await?
            .into_iter()
            .next();
        reports.push((name.clone(), last));
    }
    let events = g.store.events();
    let mut failing: BTreeMap<(String, String), (usize, usize)> = BTreeMap::new();
    for d in events
        .deliveries(Some(DeliveryState::Failed), None, 100)
        .await?
    {
        failing
            .entry((
                d.client.clone(),
                crate::refunds::outgoing::shown_url(&d.endpoint),
            ))
            .or_default()
            .0 += 1;
    }
    for d in events
        .deliveries(Some(DeliveryState::Pending), None, 100)
        .await?
    {
        if d.attempts > 0 {
            failing
                .entry((
                    d.client.clone(),
                    crate::refunds::outgoing::shown_url(&d.endpoint),
                ))
                .or_default()
                .1 += 1;
        }
    }
    Ok(OverviewData {
        now,
        since,
        counts,
        pending: g.pending_summary().await?,
        review: g.review_count().await?,
        outside: g
            .store
            .reconciliations()
            .outside_refunds(None, 100)
            .await?
            .len(),
        disabled: events.disabled().await?,
        failing: failing
            .into_iter()
            .map(|((c, u), (f, r))| (c, u, f, r))
            .collect(),
        reports,
    })
}

const STATUSES: [&str; 3] = ["pending", "succeeded", "failed"];

pub fn overview(signed: &Signed, d: &OverviewData) -> Markup {
    layout(
        Some(signed),
        "Overview",
        Nav::Overview,
        html! {
            div class="tiles" {
                a class="tile" href="/console/review" {
                    span class="big" { (d.review + d.outside as i64) }
                    span { "in the review queue" }
                    @if d.outside > 0 { span class="hint" { (d.outside) " made elsewhere" } }
                }
                a class="tile" href={ "/console/refunds?" (query(&[("status", "pending")])) } {
                    span class="big" { (d.pending.0) }
                    span { "pending" }
                    @if let Some(oldest) = d.pending.1 {
                        span class="hint" { "oldest " (format_age(d.now.since(oldest))) }
                    }
                }
                a class="tile" href="/console/webhooks" {
                    span class="big" { (d.failing.len() + d.disabled.len()) }
                    span { "webhook endpoints failing or disabled" }
                }
            }
            section aria-labelledby="today" {
                h2 id="today" { "Refunds today " span class="hint" { "(since " (when_ts(d.since)) ")" } }
                div class="scroll" tabindex="0" {
                    table {
                        thead { tr {
                            th scope="col" { "Account" } th scope="col" { "Provider" }
                            @for s in STATUSES { th scope="col" class="num" { (s) } }
                        } }
                        tbody {
                            @for (account, provider, by) in &d.counts {
                                tr {
                                    th scope="row" { (account) }
                                    td { (provider) }
                                    @for s in STATUSES {
                                        td class="num" {
                                            a href={ "/console/refunds?" (query(&[("account", account), ("status", s), ("created_from", &d.since.rfc3339())])) } {
                                                (by.get(s).copied().unwrap_or(0))
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            section aria-labelledby="hooks" {
                h2 id="hooks" { "Webhook endpoints" }
                @if d.failing.is_empty() && d.disabled.is_empty() {
                    p { "Every endpoint is delivering." }
                } @else {
                    ul {
                        @for e in &d.disabled {
                            li { strong { "Disabled: " } (e.client) " " code { (crate::refunds::outgoing::shown_url(&e.endpoint)) } " since " (when_ts(e.disabled_at)) " (" (e.reason) ")" }
                        }
                        @for (client, url, failed, retrying) in &d.failing {
                            li { (client) " " code { (url) } ": " (failed) " failed, " (retrying) " being retried" }
                        }
                    }
                    p { a href="/console/webhooks" { "See the deliveries" } }
                }
            }
            section aria-labelledby="books" {
                h2 id="books" { "Last reconciliation per account" }
                div class="scroll" tabindex="0" {
                    table {
                        thead { tr { th scope="col" { "Account" } th scope="col" { "Day" } th scope="col" { "State" } th scope="col" class="num" { "Discrepancies" } } }
                        tbody {
                            @for (account, r) in &d.reports {
                                tr {
                                    th scope="row" { (account) }
                                    @if let Some(r) = r {
                                        td { a href={ "/console/reconciliations/" (path_segment(&r.id)) } { (r.day) } }
                                        td { (status(&r.state)) }
                                        td class="num" { (r.discrepancies) }
                                    } @else {
                                        td colspan="3" { "never run" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

// ---- review queue ------------------------------------------------------------

fn refund_rows(rows: &[OperatorRefundObject], now: Timestamp, with_reason: bool) -> Markup {
    html! {
        div class="scroll" tabindex="0" {
            table {
                thead { tr {
                    th scope="col" { "Refund" } th scope="col" { "Status" } th scope="col" class="num" { "Amount" }
                    th scope="col" { "Sale" } th scope="col" { "Client / account" }
                    @if with_reason { th scope="col" { "Why" } }
                    th scope="col" { "Created" }
                } }
                tbody {
                    @for r in rows {
                        tr {
                            td { (refund_link(&r.refund.id)) }
                            td { (status(&r.refund.status)) }
                            td class="num" { (money(&r.refund.amount, &r.refund.currency)) }
                            td { (r.refund.provider) " " code { (r.refund.transaction_no) } }
                            td { (r.client) " / " (r.account) }
                            @if with_reason {
                                td { (r.refund.review_reason.as_deref().or(r.refund.pending_reason.as_deref()).unwrap_or("")) }
                            }
                            td { (when(&r.refund.created_at)) br; span class="hint" { (age_of(&r.refund.created_at, now)) " ago" } }
                        }
                    }
                }
            }
        }
    }
}

pub fn review(signed: &Signed, q: &ReviewQueue, now: Timestamp, done: Option<&str>) -> Markup {
    layout(
        Some(signed),
        "Review queue",
        Nav::Review,
        html! {
            @if let Some(m) = done_message(done) { (notice(m)) }
            p { "Refunds that need a person — flagged, or pending too long — oldest first (the 100 waiting longest). Open one to ask the provider or resolve it." }
            @if q.data.is_empty() {
                p { strong { "Nothing to review." } }
            } @else {
                (refund_rows(&q.data, now, true))
            }
            h2 { "Refunds made elsewhere" }
            p { "The daily reconciliation found these at the provider only (its dashboard, another system). Each counts against its sale; acknowledge it once you know where it came from." }
            @if q.outside_refunds.is_empty() {
                p { "None waiting." }
            } @else {
                @for (i, o) in q.outside_refunds.iter().enumerate() {
                    div class="card" {
                        p {
                            (money(&o.amount, &o.currency)) " on sale " code { (o.transaction_no) } " at " (o.account) " (" (o.provider) "), provider id " code { (o.provider_refund_id) }
                            ", status " (o.provider_status.as_deref().unwrap_or("unknown"))
                            ", found by " a href={ "/console/reconciliations/" (path_segment(&o.found_in)) } { (o.found_in) }
                            " at " (when(&o.found_at))
                        }
                        @if let Some(r) = &o.review_reason { p class="hint" { (r) } }
                        form method="post" action={ "/console/outside-refunds/" (path_segment(&o.account)) "/" (path_segment(&o.provider_refund_id)) "/acknowledge" } {
                            (csrf(signed))
                            label for={ "ack-note-" (i) } { "What you checked" }
                            input id={ "ack-note-" (i) } name="note" type="text" maxlength="1000" required;
                            button type="submit" { "Acknowledge" }
                        }
                    }
                }
            }
        },
    )
}

// ---- refunds search ----------------------------------------------------------

pub fn refunds(
    signed: &Signed,
    state: &AppState,
    q: &BTreeMap<String, String>,
    result: Result<&OperatorRefundList, &ApiError>,
) -> Markup {
    let v = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    let now = state.gateway.clock.now();
    let mut clients: Vec<&str> = state
        .gateway
        .clients
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    clients.sort();
    let mut accounts: Vec<&str> = state.gateway.accounts.keys().map(String::as_str).collect();
    accounts.sort();
    let text = |name: &str, label: &str| {
        html! {
            div class="field" {
                label for={ "f-" (name) } { (label) }
                input id={ "f-" (name) } name=(name) type="text" value=(v(name)) maxlength="255";
            }
        }
    };
    let choice = |name: &str, label: &str, options: &[&str]| {
        html! {
            div class="field" {
                label for={ "f-" (name) } { (label) }
                select id={ "f-" (name) } name=(name) {
                    option value="" selected[v(name).is_empty()] { "any" }
                    @for o in options { option value=(o) selected[v(name) == *o] { (o) } }
                }
            }
        }
    };
    let providers: Vec<&str> = ProviderKind::ALL.iter().map(|p| p.as_str()).collect();
    layout(
        Some(signed),
        "Refunds",
        Nav::Refunds,
        html! {
            form class="search card" method="get" action="/console/refunds" role="search" {
                (text("transaction_no", "Sale (transaction number)"))
                (text("reference", "Sale reference"))
                (text("refund_reference", "Refund reference (POS)"))
                (choice("status", "Status", &STATUSES))
                (choice("provider", "Provider", &providers))
                (choice("client", "Client", &clients))
                (choice("account", "Account", &accounts))
                (text("created_from", "Created from (RFC 3339 or Unix seconds)"))
                (text("created_to", "Created to"))
                div class="field check" {
                    input id="f-needs_review" name="needs_review" type="checkbox" value="true" checked[v("needs_review") == "true"];
                    label for="f-needs_review" { "Needs review only" }
                }
                div class="field" { button type="submit" { "Search" } }
            }
            @match result {
                Err(e) => (problem(e)),
                Ok(list) => {
                    @if list.data.is_empty() {
                        p { "No refund matches." }
                    } @else {
                        (refund_rows(&list.data, now, false))
                        @if list.has_more {
                            @let last = &list.data[list.data.len() - 1].refund.id;
                            @let pairs = next_page(q, last);
                            p { a href={ "/console/refunds?" (query(&pairs)) } rel="next" { "Next page" } }
                        }
                    }
                }
            }
        },
    )
}

/// The search's query with `starting_after` set to `last`.
fn next_page<'a>(q: &'a BTreeMap<String, String>, last: &'a str) -> Vec<(&'a str, &'a str)> {
    q.iter()
        .filter(|(k, _)| k.as_str() != "starting_after")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain([("starting_after", last)])
        .collect()
}

// ---- one refund ----------------------------------------------------------------

pub struct RefundData {
    refund: OperatorRefundObject,
    history: RefundEvents,
    events: Vec<PosEventRow>,
    receipt: String,
    now: Timestamp,
}

pub async fn refund_data(state: &AppState, id: &str) -> Result<RefundData, ApiError> {
    // One read of the row, rendered as the operator API renders it.
    let id = crate::api::parse::refund_id(id)?;
    let row = state
        .gateway
        .store
        .get_refund_any_client(id.as_str())
        .await?
        .ok_or_else(|| ApiError::not_found("refund"))?;
    let refund = OperatorRefundObject::of(state, &row);
    let history =
        crate::api::refunds::events_json(state.gateway.store.refund_events(&row.id).await?);
    let receipt = crate::refunds::receipt::text(
        &refund.refund,
        &state.gateway.store_name(&row),
        state.gateway.time_zone(&row).as_ref(),
    );
    let events = state
        .gateway
        .store
        .events()
        .refund_events(&refund.refund.id)
        .await?;
    Ok(RefundData {
        refund,
        history,
        events,
        receipt,
        now: state.gateway.clock.now(),
    })
}

fn field(label: &str, value: Option<&str>) -> Markup {
    html! {
        @if let Some(v) = value.filter(|v| !v.is_empty()) {
            dt { (label) } dd { (v) }
        }
    }
}

pub fn refund(
    signed: &Signed,
    d: &RefundData,
    done: Option<&str>,
    error: Option<&ApiError>,
) -> Markup {
    let r = &d.refund.refund;
    let id = path_segment(&r.id);
    let pending = r.status == "pending";
    layout(
        Some(signed),
        &format!("Refund {}", r.id),
        Nav::Refunds,
        html! {
            @if let Some(m) = done_message(done) { (notice(m)) }
            @if let Some(e) = error { (problem(e)) }
            div class="columns" {
                section class="card" aria-labelledby="what" {
                    h2 id="what" { (money(&r.amount, &r.currency)) " " (status(&r.status)) }
                    @if let Some(why) = &r.review_reason {
                        p class="flag" { strong { "Needs review: " } (why) }
                    }
                    dl {
                        dt { "Client / account" } dd { (d.refund.client) " / " (d.refund.account) }
                        dt { "Provider" } dd { (r.provider) @if !r.livemode { " (sandbox: test money)" } }
                        dt { "Sale" } dd { code { (r.transaction_no) } }
                        (field("Sale reference", r.reference.as_deref()))
                        (field("Refund reference (POS)", r.refund_reference.as_deref()))
                        (field("Provider's refund id", r.provider_refund_id.as_deref()))
                        (field("Provider status", r.provider_status.as_deref()))
                        (field("Provider code", r.provider_code.as_deref()))
                        (field("Failure", r.failure_code.as_deref()))
                        (field("Failure message", r.failure_message.as_deref()))
                        (field("Why pending", r.pending_reason.as_deref()))
                        @if let Some(n) = &r.next_check_at { dt { "Next check" } dd { (when(n)) } }
                        (field("Reason (POS)", r.reason.as_deref()))
                        (field("Receipt email", r.receipt_email.as_deref()))
                        @for (k, v) in &r.metadata { dt { "metadata." (k) } dd { (v) } }
                        dt { "Created" } dd { (when(&r.created_at)) " (" (age_of(&r.created_at, d.now)) " ago)" }
                        dt { "Updated" } dd { (when(&r.updated_at)) }
                    }
                }
                section class="card" aria-labelledby="actions" {
                    h2 id="actions" { "Actions" }
                    form method="post" action={ "/console/refunds/" (id) "/sync" } {
                        (csrf(signed))
                        button type="submit" { "Ask the provider now" }
                        p class="hint" { "Queries the provider and applies its answer, with your name in the history." }
                    }
                    @if pending || r.review_reason.is_some() {
                        form method="post" action={ "/console/refunds/" (id) "/resolve" } class="resolve" {
                            (csrf(signed))
                            fieldset {
                                legend { @if pending { "Resolve this refund" } @else { "Clear the review flag" } }
                                @if pending {
                                    div class="radio" {
                                        input id="st-succeeded" type="radio" name="status" value="succeeded" required;
                                        label for="st-succeeded" { "succeeded (the provider made it)" }
                                    }
                                    div class="radio" {
                                        input id="st-failed" type="radio" name="status" value="failed";
                                        label for="st-failed" { "failed (the provider did not make it)" }
                                    }
                                } @else {
                                    input type="hidden" name="status" value=(r.status);
                                    p { "The refund stays " (status(&r.status)) "; the provider is asked first and must agree." }
                                }
                                label for="note" { "Note (required): what you checked" }
                                textarea id="note" name="note" rows="3" maxlength="1000" required {}
                                p class="hint" { "The provider is asked first; the gateway refuses what its records do not prove. Line breaks become spaces." }
                                button type="submit" { "Resolve" }
                            }
                        }
                    }
                }
            }
            section aria-labelledby="timeline" {
                h2 id="timeline" { "History" }
                ol class="timeline" {
                    @for e in &d.history.data {
                        li {
                            (when(&e.at)) " "
                            span class="source" { (e.source) }
                            " "
                            @if let Some(p) = &e.previous_status { (status(p)) " → " }
                            (status(&e.status))
                            @if let Some(a) = &e.actor { " by " strong { (a) } }
                            @if e.provider_code.is_some() || e.provider_status.is_some() {
                                span class="hint" {
                                    " provider: " (e.provider_status.as_deref().unwrap_or("")) " " (e.provider_code.as_deref().unwrap_or(""))
                                }
                            }
                            @if let Some(detail) = &e.detail { p class="detail" { (detail) } }
                        }
                    }
                }
            }
            section aria-labelledby="events" {
                h2 id="events" { "Events sent to the POS" }
                @if d.events.is_empty() {
                    p { "None recorded." }
                } @else {
                    div class="scroll" tabindex="0" {
                        table {
                            thead { tr { th scope="col" { "Event" } th scope="col" { "Type" } th scope="col" { "At" } th scope="col" { "" } } }
                            tbody {
                                @for e in &d.events {
                                    tr {
                                        td { code { (e.id) } }
                                        td { (e.kind.as_str()) }
                                        td { (when_ts(e.created_at)) }
                                        td {
                                            form method="post" action={ "/console/events/" (path_segment(&e.id)) "/redeliver" } {
                                                (csrf(signed))
                                                input type="hidden" name="back" value={ "/console/refunds/" (id) };
                                                button type="submit" aria-label={ "Redeliver " (e.id) } { "Redeliver" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    p { a href={ "/console/webhooks" } { "Deliveries and their attempts" } }
                }
            }
            section aria-labelledby="receipt" {
                h2 id="receipt" { "Receipt" }
                pre class="receipt" tabindex="0" aria-label="Receipt text" { (d.receipt) }
            }
        },
    )
}

// ---- webhooks ------------------------------------------------------------------

pub fn webhooks(
    signed: &Signed,
    state: &AppState,
    q: &BTreeMap<String, String>,
    list: &DeliveryList,
    disabled: &[DisabledEndpoint],
    done: Option<&str>,
) -> Markup {
    let current = q.get("state").map(String::as_str).unwrap_or("");
    let tab = |value: &str, label: &str| {
        let href = if value.is_empty() {
            "/console/webhooks".to_string()
        } else {
            format!("/console/webhooks?{}", query(&[("state", value)]))
        };
        html! { li { a href=(href) aria-current=[(current == value).then_some("page")] { (label) } } }
    };
    layout(
        Some(signed),
        "Webhooks",
        Nav::Webhooks,
        html! {
            @if let Some(m) = done_message(done) { (notice(m)) }
            section aria-labelledby="endpoints" {
                h2 id="endpoints" { "Endpoints" }
                @let endpoints: Vec<_> = state.gateway.clients.iter().flat_map(|c| c.webhooks.iter().enumerate().map(move |(n, w)| (c, n, w))).collect();
                @if endpoints.is_empty() {
                    p { "No client has a webhook endpoint (" code { "[[clients.webhooks]]" } " in the configuration)." }
                } @else {
                    div class="scroll" tabindex="0" {
                        table {
                            thead { tr { th scope="col" { "Client" } th scope="col" class="num" { "n" } th scope="col" { "URL" } th scope="col" { "State" } } }
                            tbody {
                                @for (c, n, w) in endpoints {
                                    @let off = disabled.iter().find(|d| d.client == c.name && d.endpoint == w.url);
                                    tr {
                                        td { (c.name) }
                                        td class="num" { (n) }
                                        td { code { (crate::refunds::outgoing::shown_url(&w.url)) } }
                                        td {
                                            @if let Some(d) = off {
                                                strong { "disabled" } " since " (when_ts(d.disabled_at)) " (" (d.reason) ")"
                                                form method="post" action={ "/console/webhook-endpoints/" (path_segment(&c.name)) "/" (n) "/enable" } {
                                                    (csrf(signed))
                                                    button type="submit" { "Enable again" }
                                                }
                                            } @else { "enabled" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            section aria-labelledby="deliveries" {
                h2 id="deliveries" { "Deliveries" }
                nav aria-label="Delivery state" class="tabs" {
                    ul { (tab("", "All")) (tab("failed", "Failed")) (tab("pending", "Pending")) (tab("delivered", "Delivered")) }
                }
                @if list.data.is_empty() {
                    p { "No delivery here." }
                } @else {
                    @for d in &list.data {
                        div class="card delivery" {
                            p {
                                (status(&d.state)) " " code { (d.event_type) } " of " (refund_link(&d.refund_id))
                                " to " (d.client) " " code { (d.url) }
                                @if d.endpoint_disabled { " " strong { "(endpoint disabled)" } }
                            }
                            p class="hint" {
                                "Event " code { (d.event_id) } ", " (d.attempts) " attempt(s)"
                                @if let Some(n) = &d.next_attempt_at { ", next " (when(n)) }
                                @if let Some(t) = &d.delivered_at { ", delivered " (when(t)) }
                            }
                            @if !d.attempt_log.is_empty() {
                                ol class="attempts" {
                                    @for a in &d.attempt_log {
                                        li {
                                            (when(&a.at)) " — "
                                            @if let Some(s) = a.http_status { "HTTP " (s) } @else { (a.error.as_deref().unwrap_or("no answer")) }
                                            " in " (a.duration_ms) " ms"
                                        }
                                    }
                                }
                            }
                            form method="post" action={ "/console/events/" (path_segment(&d.event_id)) "/redeliver" } {
                                (csrf(signed))
                                input type="hidden" name="back" value="/console/webhooks";
                                button type="submit" aria-label={ "Redeliver " (d.event_id) } { "Redeliver" }
                            }
                        }
                    }
                }
            }
        },
    )
}

// ---- reconciliations -------------------------------------------------------------

pub fn reconciliations(
    signed: &Signed,
    state: &AppState,
    list: &ReconciliationList,
    done: Option<&str>,
    error: Option<&ApiError>,
) -> Markup {
    let mut accounts: Vec<&str> = state.gateway.accounts.keys().map(String::as_str).collect();
    accounts.sort();
    layout(
        Some(signed),
        "Reconciliations",
        Nav::Reconciliations,
        html! {
            @if let Some(m) = done_message(done) { (notice(m)) }
            @if let Some(e) = error { (problem(e)) }
            form class="card search" method="post" action="/console/reconciliations" {
                (csrf(signed))
                div class="field" {
                    label for="r-account" { "Account" }
                    select id="r-account" name="account" required {
                        @for a in &accounts { option value=(a) { (a) } }
                    }
                }
                div class="field" {
                    label for="r-date" { "Day (YYYY-MM-DD)" }
                    input id="r-date" name="date" type="date" required;
                }
                div class="field" { button type="submit" { "Run (or run again)" } }
            }
            @if list.data.is_empty() {
                p { "No report yet." }
            } @else {
                div class="scroll" tabindex="0" {
                    table {
                        thead { tr {
                            th scope="col" { "Day" } th scope="col" { "Account" } th scope="col" { "State" }
                            th scope="col" class="num" { "Discrepancies" } th scope="col" { "Finished" } th scope="col" { "CSV" }
                        } }
                        tbody {
                            @for r in &list.data {
                                tr {
                                    td { a href={ "/console/reconciliations/" (path_segment(&r.id)) } { (r.date) } }
                                    td { (r.account) " (" (r.provider) ")" }
                                    td { (status(&r.state)) }
                                    td class="num" { (r.discrepancies) }
                                    td { @if let Some(f) = &r.finished_at { (when(f)) } }
                                    td { @if r.state == "done" { a href={ "/console/reconciliations/" (path_segment(&r.id)) "/csv" } { "Download" } } }
                                }
                            }
                        }
                    }
                }
                @if list.has_more {
                    @let last = &list.data[list.data.len() - 1].id;
                    p { a href={ "/console/reconciliations?" (query(&[("starting_after", last)])) } rel="next" { "Older reports" } }
                }
            }
        },
    )
}

pub fn reconciliation(signed: &Signed, r: &ReconciliationObject) -> Markup {
    let items = r.items.as_deref().unwrap_or(&[]);
    layout(
        Some(signed),
        &format!("Reconciliation {} {}", r.account, r.date),
        Nav::Reconciliations,
        html! {
            p {
                (status(&r.state)) " " (r.provider) ", " (r.runs) " run(s), started " (when(&r.started_at))
                @if let Some(f) = &r.finished_at { ", finished " (when(f)) }
                @if r.state == "done" { " · " a href={ "/console/reconciliations/" (path_segment(&r.id)) "/csv" } { "Download CSV" } }
            }
            @if let Some(e) = &r.error { div class="problem" role="alert" { p { (e) } } }
            @if let Some(s) = &r.summary {
                p class="hint" { "Day in " (s.time_zone) ": " (when(&s.from)) " to " (when(&s.to)) "; provider side: " (s.provider_source) "; " (s.flagged) " flagged, " (s.asked) " asked." }
                div class="columns" {
                    div class="scroll" tabindex="0" {
                        table {
                            caption { "Lines by kind" }
                            tbody {
                                @for (k, n) in &s.counts { tr { th scope="row" { (k) } td class="num" { (n) } } }
                            }
                        }
                    }
                    div class="scroll" tabindex="0" {
                        table {
                            caption { "Totals" }
                            thead { tr { th scope="col" { "Currency" } th scope="col" class="num" { "Gateway" } th scope="col" class="num" { "Provider" } th scope="col" class="num" { "Difference" } } }
                            tbody {
                                @for t in &s.totals {
                                    tr { th scope="row" { (t.currency) } td class="num" { (t.gateway) } td class="num" { (t.provider) } td class="num" { (t.difference) } }
                                }
                            }
                        }
                    }
                }
            }
            h2 { "Lines" }
            @if items.is_empty() { p { "No line." } } @else {
                div class="scroll" tabindex="0" {
                    table {
                        thead { tr {
                            th scope="col" class="num" { "#" } th scope="col" { "Kind" } th scope="col" { "Refund" } th scope="col" { "Sale" }
                            th scope="col" class="num" { "Gateway" } th scope="col" class="num" { "Provider" } th scope="col" { "Statuses" } th scope="col" { "Note" }
                        } }
                        tbody {
                            @for i in items {
                                tr class={ "kind-" (i.kind) } {
                                    td class="num" { (i.line) }
                                    td { (i.kind) }
                                    td { @if let Some(id) = &i.refund_id { (refund_link(id)) } @else if let Some(p) = &i.provider_refund_id { "provider " code { (p) } } }
                                    td { @if let Some(t) = &i.transaction_no { code { (t) } } }
                                    td class="num" { (i.gateway_amount.as_deref().unwrap_or("")) " " (i.currency.as_deref().unwrap_or("")) }
                                    td class="num" { (i.provider_amount.as_deref().unwrap_or("")) }
                                    td { (i.gateway_status.as_deref().unwrap_or("—")) " / " (i.provider_status.as_deref().unwrap_or("—")) }
                                    td { (i.note.as_deref().unwrap_or("")) }
                                }
                            }
                        }
                    }
                }
                @if r.has_more_items == Some(true) {
                    @let last = items[items.len() - 1].line.to_string();
                    p { a href={ "/console/reconciliations/" (path_segment(&r.id)) "?" (query(&[("items_after", &last)])) } rel="next" { "More lines" } }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_a_person_says_them() {
        assert_eq!(format_age(Duration::from_secs(45)), "45 s");
        assert_eq!(format_age(Duration::from_secs(720)), "12 min");
        assert_eq!(format_age(Duration::from_secs(3 * 3600 + 300)), "3 h 5 min");
        assert_eq!(
            format_age(Duration::from_secs(2 * 86_400 + 4 * 3600)),
            "2 d 4 h"
        );
    }

    #[test]
    fn ids_stay_one_path_segment() {
        assert_eq!(path_segment("rf_01ABC"), "rf_01ABC");
        assert_eq!(path_segment("a/../b?c"), "a%2F..%2Fb%3Fc");
    }

    #[test]
    fn values_are_escaped() {
        let m = html! { p { (when("<script>alert(1)</script>")) (money("<b>", "&")) } };
        let s = m.into_string();
        assert!(!s.contains("<script>") && !s.contains("<b>"), "{s}");
        assert!(s.contains("&lt;script&gt;"), "{s}");
    }
}
