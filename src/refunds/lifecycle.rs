//! The refund lifecycle: the one place that decides how a refund changes,
//! whoever causes the change (the request's own provider answer, a status
//! query, a webhook, the sender abandoning its call, an operator).
//!
//! A cause is a [`Transition`]; [`transition`] turns it and the row as its
//! writer read it into a complete [`Change`]: the row as it will be, and
//! everything that goes with it (the reservation released, the sale's
//! currency pinned, the receipt email, the history line, the domain events
//! the POS is told of). No other module makes a `Change` (a test below
//! holds them to it). The store executes a change as one compare-and-swap on the
//! version, status and submission it was computed from, with its effects in
//! the same transaction, and decides nothing; on a lost race the writer
//! reads again and asks again ([`crate::refunds::apply_with`]).
//!
//! | transition | status | effects |
//! |---|---|---|
//! | `Claimed` | pending → pending (`prepared` → `sent`, send deadline set) | history line |
//! | `Answered` (succeeded) | pending → succeeded | receipt email, sale currency pinned (no sale lookup), `refund.created` + `refund.succeeded` |
//! | `Answered` (failed) | pending → failed | reservation released, `refund.created` + `refund.failed` |
//! | `Answered` (pending/unknown) | pending → pending | next check scheduled, `refund.created` |
//! | `SenderAbandoned` | pending → failed (`not_submitted`) | reservation released, `refund.created` + `refund.failed` |
//! | `StatusQueried` | pending → succeeded / failed / pending | as `Answered`; "no such refund" fails only by [`never_received`]; gives up after `max_attempts` (`refund.review_needed`) |
//! | `WebhookApplied` | pending → succeeded / failed | as `Answered`; a contrary report on a final refund flags it and asks the provider |
//! | `Contradicted` | unchanged | flagged for review (`refund.review_needed`) |
//! | `OperatorResolved` | pending → the provider-confirmed status; final: flag cleared | as `Answered`, with the operator's note |
//!
//! The rules, in one place:
//! - `pending` may become `succeeded` or `failed`; a final status never
//!   changes again. A contrary provider report on a final refund flags it for
//!   review and leaves it as it is.
//! - Only the provider's word (an answer to our call, a status query, or a
//!   signed webhook naming this very refund) moves a refund to `succeeded`.
//! - `failed` without the provider saying so happens in exactly three ways,
//!   each provably without the provider ever refunding: the refund was never
//!   claimed for sending (`not_submitted`, decided by a compare-and-swap that
//!   makes any later claim fail); the sender itself passed its send deadline
//!   before calling (`not_submitted`); or the send deadline plus the
//!   provider's processing window passed and the provider has no such refund
//!   (`not_received_by_provider`). One function, [`never_received`], decides
//!   the time part for every path (reconciliation, a client's sync, an
//!   operator); the unattended paths also want several "no such refund"
//!   answers in a row.

use std::time::Duration;

use super::object::RefundObject;
use super::receipt;
use crate::providers::ProviderAnswer;
use crate::store::{Change, EventState, PendingReason, Status, Submission};
use crate::store::{Effects, EmailDraft, EventSource, RefundEvent, RefundRow};
use crate::types::{DomainEvent, Outcome, Timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Decision {
    /// Nothing to change (the outcome says nothing new, or repeats the final state).
    Stay,
    Move(Status),
    /// A final status contradicted by the provider: keep it, flag it, ask the provider.
    Conflict,
}

/// How `outcome` moves a refund that is `current`. Final states never go back
/// to pending; `unknown` and `not_found` never decide anything on their own.
fn decide(current: Status, outcome: Outcome) -> Decision {
    match (current, outcome) {
        (Status::Pending, Outcome::Succeeded) => Decision::Move(Status::Succeeded),
        (Status::Pending, Outcome::Failed) => Decision::Move(Status::Failed),
        (Status::Pending, _) => Decision::Stay,
        (Status::Succeeded, Outcome::Failed) | (Status::Failed, Outcome::Succeeded) => {
            Decision::Conflict
        }
        (Status::Succeeded | Status::Failed, _) => Decision::Stay,
    }
}

/// What a webhook's evidence did, for its stored state: `applied` when it
/// moved the refund, `conflict` when it contradicts a final status (the
/// refund is flagged and the provider asked), `stale` when it said nothing
/// new. `written_over` is the status the write found, `None` when nothing
/// was written.
pub fn webhook_state(written_over: Option<Status>, outcome: Outcome) -> EventState {
    match written_over.map(|status| decide(status, outcome)) {
        Some(Decision::Move(_)) => EventState::Applied,
        Some(Decision::Conflict) => EventState::Conflict,
        Some(Decision::Stay) | None => EventState::Stale,
    }
}

/// One backoff rule for every retry the gateway schedules: status queries,
/// webhook matching, receipt emails (exponential from `base`, capped at
/// `max`) and outgoing POS webhooks (a fixed schedule, `steps`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    /// A fixed schedule instead, when not empty: the wait after the
    /// `n`-th attempt is `steps[n]` (the last repeats).
    pub steps: &'static [Duration],
}

impl Backoff {
    pub const fn exponential(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            steps: &[],
        }
    }

    /// How long to wait after `attempts` attempts (exponential: 0 gives `base`).
    pub fn delay(&self, attempts: i64) -> Duration {
        if let Some(last) = self.steps.last() {
            let i = usize::try_from(attempts.max(0)).unwrap_or(usize::MAX);
            return *self.steps.get(i).unwrap_or(last);
        }
        let shift = u32::try_from(attempts.clamp(0, 20)).unwrap_or(20);
        self.base.saturating_mul(1u32 << shift).min(self.max)
    }
}

/// The lifecycle's timing: how often pending refunds are asked about, when
/// the gateway gives up asking, and when "no such refund" may fail one.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub interval: Duration,
    pub base_delay: Duration,
    pub max_delay: Duration,
    pub max_attempts: u32,
    /// How long a claimed refund is reserved for the claiming process.
    pub lease: Duration,
    /// After a sent refund's send deadline, how long the provider may still
    /// be processing it (see [`never_received`]).
    pub not_found_after: Duration,
    /// "No such refund" answers in a row needed to fail a sent refund.
    pub not_found_checks: u32,
    /// A refund pending this long needs a person (`refund.review_needed`).
    pub review_after: Duration,
}

impl Policy {
    /// The status queries' backoff.
    pub fn backoff(&self) -> Backoff {
        Backoff::exponential(self.base_delay, self.max_delay)
    }

    /// How long to wait before the next check after `attempts` checks.
    pub fn delay_after(&self, attempts: i64) -> Duration {
        self.backoff().delay(attempts)
    }
}

/// Who asked the provider about a refund (its history says so).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asker<'a> {
    Reconciliation,
    /// A client's `?sync=true`.
    Client,
    Operator(&'a str),
}

/// What happened to a refund: the one input of [`transition`].
#[derive(Debug, Clone, Copy)]
pub enum Transition<'a> {
    /// The request claims the refund it recorded (at `version`) for sending:
    /// `prepared` → `sent`, to be sent before `send_by` (ms). Only that very
    /// version may be claimed: whoever wrote since decided first.
    Claimed { version: i64, send_by: Timestamp },
    /// The provider's answer to the request's own call; also stores the
    /// response a replay of the request gets.
    Answered(&'a ProviderAnswer),
    /// The sender passed its send deadline before calling: nothing was sent.
    SenderAbandoned,
    /// A status query's answer, to a query sent at `asked_at` (ms, the
    /// shared clock): what the provider did not know then proves nothing
    /// about later, however late the answer is written.
    StatusQueried {
        answer: &'a ProviderAnswer,
        by: Asker<'a>,
        asked_at: Timestamp,
    },
    /// A verified webhook naming this refund and consistent with it.
    WebhookApplied(&'a ProviderAnswer),
    /// A signed provider message (a webhook, a sale's refund listing)
    /// contradicting the refund as recorded: `what` differs.
    Contradicted { what: &'a str, source: EventSource },
    /// An operator's resolution to `target`, checked against the provider's
    /// answer to a query sent at `asked_at`.
    OperatorResolved {
        target: Status,
        reply: &'a ProviderAnswer,
        actor: &'a str,
        note: &'a str,
        asked_at: Timestamp,
    },
}

/// What the receipt a refund's success emails prints (its account's
/// settings), where email is on.
#[derive(Debug, Clone, Copy)]
pub struct ReceiptSettings<'a> {
    pub store_name: &'a str,
    pub time_zone: Option<&'a jiff::tz::TimeZone>,
}

/// What a transition is decided with besides the row: the shared clock's
/// now, the timing policy, the receipt settings of the refund's account
/// (`None`: no email), and whether its client has webhook endpoints (its
/// events are then to be delivered; the feed has them either way).
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub now: Timestamp,
    pub policy: &'a Policy,
    pub receipt: Option<ReceiptSettings<'a>>,
    pub deliver_events: bool,
}

/// The change `t` makes to `current`, or `None` when it changes nothing (a
/// lost claim, a repeated report, a flag already raised). Only an operator's
/// resolution can be refused.
pub fn transition(
    current: &RefundRow,
    t: &Transition<'_>,
    ctx: &Context<'_>,
) -> Result<Option<Change>, ResolveRefusal> {
    let now = ctx.now;
    let mut next = current.clone();
    // Never earlier than the last change: a refund's events keep their order
    // whichever process (and clock) writes the next one.
    next.updated_at = now.max(current.updated_at);
    let mut note = None;
    let (source, actor) = match *t {
        Transition::Claimed { version, send_by } => {
            if current.version != version
                || current.status != Status::Pending
                || current.submission != Submission::Prepared
            {
                return Ok(None);
            }
            next.submission = Submission::Sent;
            next.send_by = Some(send_by);
            let history = RefundEvent {
                at: now,
                source: EventSource::Request,
                status: Status::Pending,
                previous_status: Some(Status::Pending),
                provider_code: None,
                provider_status: None,
                detail: Some("claimed for sending; the provider is called now".into()),
                actor: None,
            };
            return Ok(Some(Change::decided(
                current.clone(),
                bumped(next),
                Effects {
                    history: Some(history),
                    ..Effects::default()
                },
            )));
        }
        Transition::Answered(a) => {
            answer(&mut next, current, a, ctx);
            (EventSource::Request, None)
        }
        Transition::SenderAbandoned => {
            if current.status == Status::Pending {
                fail(
                    &mut next,
                    "not_submitted",
                    "the gateway could not send the refund in time; nothing was sent to the provider",
                );
            }
            (EventSource::Request, None)
        }
        Transition::StatusQueried {
            answer: a,
            by,
            asked_at,
        } => {
            status_query(&mut next, current, a, asked_at, ctx);
            match by {
                Asker::Reconciliation => (EventSource::Reconciliation, None),
                Asker::Client => (EventSource::StatusQuery, None),
                Asker::Operator(who) => (EventSource::Operator, Some(who)),
            }
        }
        Transition::WebhookApplied(a) => {
            if answer(&mut next, current, a, ctx) == Decision::Conflict {
                // Settle the contradiction by asking the provider.
                next.next_check_at = Some(now);
            }
            (EventSource::Webhook, None)
        }
        Transition::Contradicted { what, source } => {
            if current.review_reason.as_deref() == Some(what) {
                return Ok(None);
            }
            next.review_reason = Some(what.to_string());
            (source, None)
        }
        Transition::OperatorResolved {
            target,
            reply,
            actor,
            note: text,
            asked_at,
        } => {
            operator_resolution(&mut next, current, target, reply, asked_at, ctx)?;
            note = Some(format!(
                "resolved {target} by {actor}: {text} (provider answered {}{})",
                reply.outcome.as_str(),
                reply
                    .provider_code
                    .as_deref()
                    .map(|c| format!(" {c}"))
                    .unwrap_or_default()
            ));
            (EventSource::Operator, Some(actor))
        }
    };
    // What the provider said, when this transition is its answer to us.
    let heard = match *t {
        Transition::Answered(a) | Transition::StatusQueried { answer: a, .. } => Some(a),
        Transition::WebhookApplied(a) => Some(a),
        _ => None,
    };
    next.pending_reason = match (next.status, heard) {
        (Status::Pending, Some(a)) => Some(pending_reason(a)),
        (Status::Pending, None) => current.pending_reason,
        _ => None,
    };
    let request_write = matches!(t, Transition::Answered(_) | Transition::SenderAbandoned);
    // The POS hears of a refund first by `refund.created`, from the first
    // change after the send claim, whichever it is (the request's answer,
    // or a webhook or status query that got there first, or the decision
    // after a crash).
    let announce = !current.announced && !matches!(t, Transition::Claimed { .. });
    next.announced = current.announced || announce;
    let succeeded_now = current.status != Status::Succeeded && next.status == Status::Succeeded;
    let mut email = None;
    if succeeded_now {
        if let (Some(settings), Some(to)) = (ctx.receipt, &current.receipt_email) {
            let object = RefundObject::from(&next);
            email = Some(EmailDraft {
                to: to.clone(),
                subject: format!("Your refund of {} {}", object.amount, object.currency),
                body: receipt::text(&object, settings.store_name, settings.time_zone),
            });
        }
    }
    if request_write {
        // The request's own last write: the response a replay gets.
        next.response_code = Some(201);
        next.response_body = serde_json::to_string(&RefundObject::from(&next)).ok();
        next.inflight_until = None;
    } else if !changes_anything(current, &mut next) && note.is_none() {
        return Ok(None);
    }
    let mut events = vec![];
    if announce {
        events.push(DomainEvent::Created);
    }
    if current.status != next.status {
        // Never back to pending ([`decide`]): a status change is final.
        match next.status {
            Status::Succeeded => events.push(DomainEvent::Succeeded),
            Status::Failed => events.push(DomainEvent::Failed),
            Status::Pending => {}
        }
    }
    if next.review_reason.is_some() && next.review_reason != current.review_reason {
        events.push(DomainEvent::ReviewNeeded);
    } else if next.status == Status::Pending && next.review_reason.is_none() {
        // Pending past the review threshold: told once, by the first
        // write after it (a refund's writes are in time order).
        let due = current.created_at + ctx.policy.review_after;
        if current.updated_at < due && next.updated_at >= due {
            events.push(DomainEvent::ReviewNeeded);
        }
    }
    // Every answer to a call or a status query is in the history, also
    // when it changes nothing else (a 503, a "still pending").
    let asked = match *t {
        Transition::Answered(a) | Transition::StatusQueried { answer: a, .. } => Some(a),
        _ => None,
    };
    let history = history_line(current, &next, source, actor, note).or_else(|| {
        asked.map(|a| RefundEvent {
            at: next.updated_at,
            source,
            status: next.status,
            previous_status: Some(current.status),
            provider_code: a.provider_code.clone(),
            provider_status: a.provider_status.clone(),
            detail: Some(answer_detail(a)),
            actor: actor.map(str::to_string),
        })
    });
    let event_data = if events.is_empty() {
        None
    } else if request_write {
        // The same object the response holds: serialised once.
        next.response_body.clone()
    } else {
        serde_json::to_string(&RefundObject::from(&next)).ok()
    };
    let effects = Effects {
        event_data,
        deliver_events: ctx.deliver_events,
        releases_reservation: current.status != Status::Failed && next.status == Status::Failed,
        confirms_sale: succeeded_now && !current.provider.has_sale_lookup(),
        email,
        events,
        history,
    };
    Ok(Some(Change::decided(
        current.clone(),
        bumped(next),
        effects,
    )))
}

/// Why a refund the provider's answer leaves pending is pending.
fn pending_reason(a: &ProviderAnswer) -> PendingReason {
    match a.outcome {
        Outcome::Pending | Outcome::Succeeded | Outcome::Failed => {
            PendingReason::AwaitingProviderConfirmation
        }
        Outcome::NotFound => PendingReason::NoRecordAtProviderYet,
        Outcome::Misconfigured => PendingReason::ProviderRefusedCredentials,
        // The adapters say "unreachable" when no connection could be made.
        Outcome::Unknown
            if a.message
                .as_deref()
                .is_some_and(|m| m.contains("unreachable")) =>
        {
            PendingReason::ProviderUnreachable
        }
        Outcome::Unknown => PendingReason::OutcomeUnknown,
    }
}

/// A provider's answer in words, for the history.
fn answer_detail(a: &ProviderAnswer) -> String {
    let mut d = format!("provider answered {}", a.outcome.as_str());
    if let Some(m) = a.message.as_deref().filter(|m| !m.is_empty()) {
        d.push_str(": ");
        d.push_str(m);
    }
    d
}

fn bumped(mut row: RefundRow) -> RefundRow {
    row.version += 1;
    row
}

/// Whether `next` differs from `current` in anything but the update time.
fn changes_anything(current: &RefundRow, next: &mut RefundRow) -> bool {
    let at = std::mem::replace(&mut next.updated_at, current.updated_at);
    let changed = next != current;
    next.updated_at = at;
    changed
}

/// What a provider's answer (to our call, or a webhook naming this refund)
/// does, through [`decide`].
fn answer(
    next: &mut RefundRow,
    current: &RefundRow,
    answer: &ProviderAnswer,
    ctx: &Context<'_>,
) -> Decision {
    if answer.provider_refund_id.is_some() && next.provider_refund_id.is_none() {
        next.provider_refund_id = answer.provider_refund_id.clone();
    }
    if answer.outcome != Outcome::NotFound {
        next.not_found_streak = 0;
    }
    let decision = decide(current.status, answer.outcome);
    match decision {
        Decision::Move(status) => {
            next.status = status;
            next.provider_status = answer
                .provider_status
                .clone()
                .or(next.provider_status.take());
            next.provider_code = answer.provider_code.clone().or(next.provider_code.take());
            next.provider_message = answer.message.clone();
            if status == Status::Failed {
                next.failure_code = Some(
                    current
                        .provider
                        .failure_code(answer.provider_code.as_deref())
                        .into(),
                );
                next.failure_message = answer
                    .message
                    .clone()
                    .or_else(|| Some("the provider declined the refund".into()));
            }
            next.next_check_at = None;
            next.lease_until = None;
        }
        Decision::Stay if current.status == Status::Pending => {
            if answer.outcome == Outcome::Pending {
                next.provider_status = answer
                    .provider_status
                    .clone()
                    .or(next.provider_status.take());
                next.provider_code = answer.provider_code.clone().or(next.provider_code.take());
            }
            next.next_check_at = Some(ctx.now + ctx.policy.delay_after(current.check_attempts));
        }
        Decision::Stay => {}
        Decision::Conflict => {
            tracing::error!(
                refund_id = %current.id,
                recorded = %current.status,
                reported = ?answer.outcome,
                "provider contradicts a final refund status; keeping it and flagging for review"
            );
            next.review_reason = Some(format!(
                "provider reported {:?} after the refund was {}",
                answer.outcome, current.status
            ));
        }
    }
    decision
}

/// What a status query's answer does: [`answer`], plus the rules for a
/// provider that has never heard of the refund (judged at `asked_at`, when
/// the provider was asked), and giving up polling after too many queries.
fn status_query(
    next: &mut RefundRow,
    current: &RefundRow,
    reply: &ProviderAnswer,
    asked_at: Timestamp,
    ctx: &Context<'_>,
) {
    let (now, policy) = (ctx.now, ctx.policy);
    answer(next, current, reply, ctx);
    next.lease_until = None;
    if current.status != Status::Pending {
        return;
    }
    next.check_attempts = current.check_attempts + 1;
    if reply.outcome == Outcome::NotFound {
        next.not_found_streak = current.not_found_streak + 1;
        match never_received(current, asked_at.min(now), policy) {
            // Never claimed for sending: this write bumps the version, so the
            // sender's claim (a compare-and-swap on the version it wrote) fails
            // and it never calls the provider.
            Ok(proof @ NeverReceived::NotSubmitted) => {
                fail(next, proof.code(), proof.message());
                tracing::info!(refund_id = %current.id, "refund was never submitted; marked failed");
            }
            Ok(proof @ NeverReceived::NotReceived)
                if next.not_found_streak >= i64::from(policy.not_found_checks) =>
            {
                fail(next, proof.code(), proof.message());
                tracing::warn!(refund_id = %current.id, streak = next.not_found_streak, "provider never received the refund; marked failed");
            }
            _ => {}
        }
    }
    if reply.outcome == Outcome::Misconfigured {
        // Asking again will not help until an operator fixes the account:
        // flag it, and ask only at the slowest pace meanwhile.
        next.review_reason = Some(format!(
            "the provider refused the status query ({} {}): check the account's credentials",
            reply.provider_code.as_deref().unwrap_or(""),
            reply.message.as_deref().unwrap_or("")
        ));
        next.next_check_at = Some(now + policy.max_delay);
    }
    if next.status == Status::Pending && next.check_attempts >= i64::from(policy.max_attempts) {
        let reason = format!(
            "still pending after {} status queries; last answer {:?} {}",
            next.check_attempts,
            reply.outcome,
            reply.message.as_deref().unwrap_or("")
        );
        tracing::warn!(refund_id = %current.id, %reason, "reconciliation gave up; refund needs review");
        next.next_check_at = None;
        next.review_reason = Some(reason);
    }
}

/// An operator's resolution of a refund to `target`, checked against the
/// provider's answer given just now: it applies only what the provider's
/// records prove. A pending refund becomes `succeeded` only if the provider
/// says it succeeded; `failed` only if the provider says it failed, or has
/// no such refund and the gateway provably can no longer send it. A final
/// refund keeps its status; resolving it to that same status (with the
/// provider agreeing) clears its review flag. Never back to pending.
fn operator_resolution(
    next: &mut RefundRow,
    current: &RefundRow,
    target: Status,
    reply: &ProviderAnswer,
    asked_at: Timestamp,
    ctx: &Context<'_>,
) -> Result<(), ResolveRefusal> {
    // "No such refund" proves what it proves when the provider said it.
    let (now, policy) = (asked_at.min(ctx.now), ctx.policy);
    let confirms = match (target, reply.outcome) {
        (Status::Succeeded, Outcome::Succeeded) | (Status::Failed, Outcome::Failed) => true,
        (Status::Failed, Outcome::NotFound) if current.status == Status::Pending => {
            match never_received(current, now, policy) {
                Ok(_) => true,
                Err(Some(at)) => return Err(ResolveRefusal::ProviderMayStillApply { at, now }),
                Err(None) => return Err(ResolveRefusal::NeverProvable),
            }
        }
        (Status::Failed, Outcome::NotFound) => true,
        _ => false,
    };
    if current.status.is_final() && current.status != target {
        return Err(ResolveRefusal::AlreadyFinal(current.status));
    }
    if !confirms {
        return Err(ResolveRefusal::Contradicted(provider_said(reply)));
    }
    answer(next, current, reply, ctx);
    if current.status == Status::Pending
        && target == Status::Failed
        && reply.outcome == Outcome::NotFound
    {
        if let Ok(proof) = never_received(current, now, policy) {
            fail(
                next,
                proof.code(),
                "resolved by an operator: the provider has no record of this refund",
            );
        }
    }
    next.review_reason = None;
    next.next_check_at = None;
    next.lease_until = None;
    Ok(())
}

/// What the provider said, in words, for a refused resolution.
fn provider_said(reply: &ProviderAnswer) -> String {
    let words = match reply.outcome {
        Outcome::Succeeded => "the refund succeeded",
        Outcome::Failed => "the refund failed",
        Outcome::Pending => "it is still processing the refund",
        Outcome::NotFound => "it has no record of this refund",
        Outcome::Unknown => "no usable answer",
        Outcome::Misconfigured => "it refused our query (check the account's credentials)",
    };
    // The provider's code only where it says something about the refund
    // (a "query success" code beside "no record" only confuses).
    let code = match reply.outcome {
        Outcome::Failed | Outcome::Unknown | Outcome::Misconfigured => reply
            .provider_code
            .as_deref()
            .map(|c| format!(", provider code {c}"))
            .unwrap_or_default(),
        _ => String::new(),
    };
    let message = reply
        .message
        .as_deref()
        .filter(|m| !m.trim().is_empty())
        .map(|m| format!(" ({})", m.trim()))
        .unwrap_or_default();
    format!("{words}{message}{code}")
}

fn fail(next: &mut RefundRow, code: &str, message: &str) {
    next.status = Status::Failed;
    next.failure_code = Some(code.into());
    next.failure_message = Some(message.into());
    next.next_check_at = None;
    next.lease_until = None;
}

/// The history line a change adds, if it changes what a reader sees: the
/// status, the provider's status or code, a review flag, or an operator's note.
fn history_line(
    current: &RefundRow,
    next: &RefundRow,
    source: EventSource,
    actor: Option<&str>,
    note: Option<String>,
) -> Option<RefundEvent> {
    let flagged = next.review_reason.is_some() && current.review_reason != next.review_reason;
    let changed = current.status != next.status
        || current.provider_status != next.provider_status
        || current.provider_code != next.provider_code
        || flagged
        || note.is_some();
    if !changed {
        return None;
    }
    let mut detail: Vec<String> = vec![];
    if let Some(n) = &note {
        detail.push(format!("note: {n}"));
    }
    if current.status != next.status {
        if let Some(code) = next
            .failure_code
            .as_ref()
            .filter(|_| next.status == Status::Failed)
        {
            detail.push(format!("failure_code {code}"));
        }
    }
    if let Some(m) = next.provider_message.as_ref().filter(|m| !m.is_empty()) {
        detail.push(format!("provider: {m}"));
    }
    if flagged {
        detail.push(format!(
            "flagged for review: {}",
            next.review_reason.as_deref().unwrap_or("")
        ));
    }
    Some(RefundEvent {
        at: next.updated_at,
        source,
        status: next.status,
        previous_status: Some(current.status),
        provider_code: next.provider_code.clone(),
        provider_status: next.provider_status.clone(),
        detail: (!detail.is_empty()).then(|| detail.join("; ")),
        actor: actor.map(str::to_string),
    })
}

/// How a pending refund is known never to have reached the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeverReceived {
    /// Never claimed for sending, and its sender's window is over.
    NotSubmitted,
    /// Sent, and the send deadline plus the provider's processing window
    /// (`not_found_after`) are over: a provider that has no record of it by
    /// now never got it.
    NotReceived,
}

impl NeverReceived {
    pub fn code(&self) -> &'static str {
        match self {
            NeverReceived::NotSubmitted => "not_submitted",
            NeverReceived::NotReceived => "not_received_by_provider",
        }
    }

    fn message(&self) -> &'static str {
        match self {
            NeverReceived::NotSubmitted => "the refund was never sent to the provider",
            NeverReceived::NotReceived => {
                "the provider has no record of this refund: it never arrived there"
            }
        }
    }
}

/// The one rule for "the provider provably never got it", for every path
/// that may fail a refund the provider says it does not know (status
/// queries by reconciliation or a client, an operator's resolution). It
/// decides the time part; a "no such refund" answer from the provider is the
/// caller's evidence. `Err(Some(t))`: not before `t` (ms); `Err(None)`:
/// never provable (a sent refund without a send deadline).
///
/// All times are the gateway's shared clock (the database's; see
/// [`crate::refunds::Clock`]), so a deadline one process wrote means the same
/// to every other.
pub fn never_received(
    current: &RefundRow,
    now: Timestamp,
    policy: &Policy,
) -> Result<NeverReceived, Option<Timestamp>> {
    match current.submission {
        Submission::Prepared => match current.inflight_until {
            Some(t) if t >= now => Err(Some(t + Duration::from_millis(1))),
            _ => Ok(NeverReceived::NotSubmitted),
        },
        Submission::Sent => {
            let Some(send_by) = current.send_by else {
                return Err(None);
            };
            let at = send_by + policy.not_found_after;
            if now >= at {
                Ok(NeverReceived::NotReceived)
            } else {
                Err(Some(at))
            }
        }
    }
}

/// Why an operator's resolution is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveRefusal {
    #[error("the refund is already {0}; a final status never changes")]
    AlreadyFinal(Status),
    #[error("the provider does not confirm it: asked just now, it says {0}")]
    Contradicted(String),
    /// The provider has no such refund yet, but may still receive or apply
    /// it until `at` (ms): the operator may resolve it `failed` from then.
    #[error("the provider has no record of this refund yet, but it may still be processing it until {} ({} s from now); resolve it as failed after that", at.rfc3339_ms(), secs_until(*at, *now))]
    ProviderMayStillApply { at: Timestamp, now: Timestamp },
    #[error("the provider has no record of this refund, but the gateway sent it without a send deadline, so it cannot prove the provider never got it; ask the provider's support")]
    NeverProvable,
}

impl ResolveRefusal {
    /// Seconds until the same resolution may be accepted, where known.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            ResolveRefusal::ProviderMayStillApply { at, now } => {
                u64::try_from(secs_until(*at, *now)).ok()
            }
            _ => None,
        }
    }

    /// When the same resolution may be accepted (ms), where known.
    pub fn possible_at(&self) -> Option<Timestamp> {
        match self {
            ResolveRefusal::ProviderMayStillApply { at, .. } => Some(*at),
            _ => None,
        }
    }
}

/// Whole seconds from `now` to `at`, rounded up, never negative.
fn secs_until(at: Timestamp, now: Timestamp) -> i64 {
    (at.ms_since(now).max(0) + 999) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finals_never_go_back() {
        use Outcome::*;
        for o in [Succeeded, Pending, Failed, Unknown, NotFound] {
            assert_ne!(
                decide(Status::Succeeded, o),
                Decision::Move(Status::Pending)
            );
            assert_ne!(decide(Status::Failed, o), Decision::Move(Status::Pending));
        }
        assert_eq!(
            decide(Status::Pending, Succeeded),
            Decision::Move(Status::Succeeded)
        );
        assert_eq!(
            decide(Status::Pending, Failed),
            Decision::Move(Status::Failed)
        );
        assert_eq!(decide(Status::Pending, Unknown), Decision::Stay);
        assert_eq!(decide(Status::Pending, NotFound), Decision::Stay);
        assert_eq!(decide(Status::Succeeded, Failed), Decision::Conflict);
        assert_eq!(decide(Status::Failed, Succeeded), Decision::Conflict);
        assert_eq!(decide(Status::Succeeded, Succeeded), Decision::Stay);
    }

    fn sources() -> Vec<(String, String)> {
        fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push(p);
                }
            }
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = vec![];
        walk(&root.join("src"), &mut files);
        files
            .into_iter()
            .map(|f| {
                let rel = f
                    .strip_prefix(root.join("src"))
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                (rel, std::fs::read_to_string(&f).unwrap())
            })
            .collect()
    }

    /// Every status and submission a refund takes is decided in this file:
    /// no other source file assigns one (the store only writes a decided
    /// change).
    #[test]
    fn statuses_are_set_only_here() {
        let allowed = ["refunds/lifecycle.rs", "store/model.rs", "sandbox/"];
        let mut offenders = vec![];
        for (rel, text) in sources() {
            if allowed.iter().any(|a| rel.starts_with(a)) {
                continue;
            }
            for (i, line) in text.lines().enumerate() {
                let l = line.trim();
                if l.contains(".status = ")
                    || l.contains(".submission = ")
                    || l.contains("submission = 'sent'")
                {
                    offenders.push(format!("{rel}:{}: {l}", i + 1));
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "status written outside the lifecycle: {offenders:#?}"
        );
    }

    /// A [`Change`] is made here and nowhere else (its fields are private
    /// to the store's model, whose one constructor only this file calls),
    /// and the store is handed one only by the one apply path
    /// ([`crate::refunds::apply_with`]).
    #[test]
    fn changes_are_made_only_here_and_applied_on_one_path() {
        // Spelled in two parts so that this test does not find itself.
        let apply = [".apply", "_change("].concat();
        let mut offenders = vec![];
        for (rel, text) in sources() {
            for (i, line) in text.lines().enumerate() {
                let l = line.trim();
                let makes = l.contains("Change::decided(") && !l.starts_with("//");
                if makes && rel != "refunds/lifecycle.rs" {
                    offenders.push(format!("{rel}:{}: {l}", i + 1));
                }
                if l.contains(&apply) && !(rel == "refunds/mod.rs" || rel.starts_with("store/")) {
                    offenders.push(format!("{rel}:{}: {l}", i + 1));
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "a refund change made or applied outside its one path: {offenders:#?}"
        );
        let apply_calls = sources()
            .iter()
            .filter(|(rel, _)| rel == "refunds/mod.rs")
            .map(|(_, t)| t.matches(&apply).count())
            .sum::<usize>();
        assert_eq!(
            apply_calls, 1,
            "refunds/mod.rs applies changes in one place"
        );
    }

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_unix_ms(ms)
    }

    fn row(submission: &str, send_by: Option<i64>, streak: i64) -> RefundRow {
        RefundRow {
            submission: Submission::parse(submission).unwrap(),
            inflight_until: Some(at(1_000)),
            send_by: send_by.map(at),
            not_found_streak: streak,
            version: 1,
            ..RefundRow::recorded(crate::store::NewRefundRow {
                id: crate::types::RefundId::generate(),
                client: "c".into(),
                account: "a".into(),
                provider: crate::types::ProviderKind::Pockyt,
                livemode: false,
                amount: crate::money::Minor::new(100).unwrap(),
                currency: crate::money::Currency::from_code("USD").unwrap(),
                transaction_no: "1".into(),
                provider_reference: "R".into(),
                request_hash: "h".into(),
                now: at(0),
            })
        }
    }

    fn reply(outcome: Outcome) -> ProviderAnswer {
        ProviderAnswer {
            outcome,
            provider_refund_id: None,
            provider_status: None,
            provider_code: None,
            message: None,
        }
    }

    fn policy() -> Policy {
        Policy {
            interval: Duration::from_millis(500),
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
            max_attempts: 30,
            lease: Duration::from_secs(35),
            not_found_after: Duration::from_secs(60),
            not_found_checks: 3,
            review_after: Duration::from_secs(3600),
        }
    }

    /// The row after a status query answering `outcome` at `now`.
    fn queried(r: &RefundRow, outcome: Outcome, now: i64, p: &Policy) -> RefundRow {
        let ctx = Context {
            now: at(now),
            policy: p,
            receipt: None,
            deliver_events: false,
        };
        let answer = reply(outcome);
        let t = Transition::StatusQueried {
            answer: &answer,
            by: Asker::Reconciliation,
            asked_at: at(now),
        };
        match transition(r, &t, &ctx).unwrap() {
            Some(c) => c.into_after(),
            None => r.clone(),
        }
    }

    #[test]
    fn never_claimed_fails_only_after_the_senders_window() {
        let r = row("prepared", None, 0);
        let u = queried(&r, Outcome::NotFound, 500, &policy());
        assert_eq!(u.status, "pending", "the sender may still claim it");
        let u = queried(&r, Outcome::NotFound, 1_001, &policy());
        assert_eq!(
            (u.status.as_str(), u.failure_code.as_deref()),
            ("failed", Some("not_submitted"))
        );
    }

    #[test]
    fn sent_fails_only_after_the_window_and_enough_answers() {
        let p = policy();
        let send_by = 2_000;
        let after = send_by + 60_000;
        let r = row("sent", Some(send_by), 5);
        assert_eq!(
            queried(&r, Outcome::NotFound, after - 1, &p).status,
            "pending"
        );
        let r = row("sent", Some(send_by), 1);
        let u = queried(&r, Outcome::NotFound, after, &p);
        assert_eq!((u.status.as_str(), u.not_found_streak), ("pending", 2));
        let r = row("sent", Some(send_by), 2);
        let u = queried(&r, Outcome::NotFound, after, &p);
        assert_eq!(
            (u.status.as_str(), u.failure_code.as_deref()),
            ("failed", Some("not_received_by_provider"))
        );
        let r = row("sent", None, 9);
        assert_eq!(
            queried(&r, Outcome::NotFound, i64::MAX / 2, &p).status,
            "pending",
            "without a send deadline nothing is provable"
        );
        for other in [Outcome::Pending, Outcome::Unknown] {
            let r = row("sent", Some(send_by), 2);
            let u = queried(&r, other, after, &p);
            assert_eq!(
                (u.status.as_str(), u.not_found_streak),
                ("pending", 0),
                "{other:?} breaks the streak"
            );
        }
    }

    /// Found by the model check (tests/model.rs): a "no such refund" heard
    /// before the processing window ended proves nothing, however late the
    /// asking process (paused) writes it.
    #[test]
    fn a_stale_no_such_refund_never_fails_a_sent_refund() {
        let p = Policy {
            not_found_checks: 1,
            ..policy()
        };
        let r = row("sent", Some(2_000), 0);
        let window_over = 2_000 + 60_000;
        let answer = reply(Outcome::NotFound);
        let stale = Transition::StatusQueried {
            answer: &answer,
            by: Asker::Reconciliation,
            asked_at: at(window_over - 1),
        };
        let ctx = Context {
            now: at(window_over + 3_600_000),
            policy: &p,
            receipt: None,
            deliver_events: false,
        };
        let after = transition(&r, &stale, &ctx).unwrap().unwrap().into_after();
        assert_eq!(
            after.status,
            Status::Pending,
            "asked too early to prove anything"
        );
        let resolve = Transition::OperatorResolved {
            target: Status::Failed,
            reply: &answer,
            actor: "op",
            note: "n",
            asked_at: at(window_over - 1),
        };
        assert!(matches!(
            transition(&r, &resolve, &ctx),
            Err(ResolveRefusal::ProviderMayStillApply { .. })
        ));
        let fresh = Transition::StatusQueried {
            answer: &answer,
            by: Asker::Reconciliation,
            asked_at: at(window_over),
        };
        let after = transition(&r, &fresh, &ctx).unwrap().unwrap().into_after();
        assert_eq!(
            after.failure_code.as_deref(),
            Some("not_received_by_provider")
        );
    }

    #[test]
    fn the_sender_abandons_only_a_pending_refund() {
        let p = policy();
        let ctx = Context {
            now: at(5),
            policy: &p,
            receipt: None,
            deliver_events: false,
        };
        let r = row("sent", Some(1), 0);
        let c = transition(&r, &Transition::SenderAbandoned, &ctx)
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.after().status.as_str(), c.after().failure_code.as_deref()),
            ("failed", Some("not_submitted"))
        );
        assert!(c.effects().releases_reservation);
        assert_eq!(
            c.effects().events,
            [DomainEvent::Created, DomainEvent::Failed]
        );
        let mut done = row("sent", Some(1), 0);
        done.status = Status::Succeeded;
        let c = transition(&done, &Transition::SenderAbandoned, &ctx)
            .unwrap()
            .unwrap();
        assert_eq!(c.after().status, Status::Succeeded, "a final status stays");
        assert!(!c.effects().releases_reservation);
    }

    #[test]
    fn a_change_carries_its_effects_and_events() {
        let p = policy();
        let receipt = ReceiptSettings {
            store_name: "Shop",
            time_zone: None,
        };
        let ctx = Context {
            now: at(10),
            policy: &p,
            receipt: Some(receipt),
            deliver_events: false,
        };
        let mut r = row("sent", Some(5), 0);
        r.provider = crate::types::ProviderKind::Pay10;
        r.receipt_email = Some("a@example.com".into());
        let ok = reply(Outcome::Succeeded);
        let c = transition(&r, &Transition::WebhookApplied(&ok), &ctx)
            .unwrap()
            .unwrap();
        assert_eq!(c.after().version, r.version + 1);
        assert!(
            c.effects().confirms_sale,
            "Pay10 has no sale lookup: the success pins it"
        );
        assert!(c.effects().email.is_some() && !c.is_single_write());
        assert_eq!(
            c.effects().events,
            [DomainEvent::Created, DomainEvent::Succeeded],
            "a webhook that settles a refund before its own answer announces it first"
        );
        assert_eq!(
            c.effects().history.as_ref().unwrap().source,
            EventSource::Webhook
        );
        // The same report again changes nothing.
        let again = transition(c.after(), &Transition::WebhookApplied(&ok), &ctx).unwrap();
        assert!(again.is_none());
        // A contrary report flags it, keeps it, and asks the provider.
        let no = reply(Outcome::Failed);
        let c2 = transition(c.after(), &Transition::WebhookApplied(&no), &ctx)
            .unwrap()
            .unwrap();
        assert_eq!(c2.after().status, Status::Succeeded);
        assert_eq!(c2.effects().events, [DomainEvent::ReviewNeeded]);
        assert_eq!(c2.after().next_check_at, Some(at(10)));
        // A claim applies only to the version its sender wrote.
        let fresh = row("prepared", None, 0);
        let claim = Transition::Claimed {
            version: fresh.version,
            send_by: at(99),
        };
        let c3 = transition(&fresh, &claim, &ctx).unwrap().unwrap();
        assert_eq!(
            (c3.after().submission, c3.after().send_by),
            (Submission::Sent, Some(at(99)))
        );
        let moved = RefundRow {
            version: fresh.version + 1,
            ..fresh.clone()
        };
        assert!(transition(&moved, &claim, &ctx).unwrap().is_none());
    }
}
