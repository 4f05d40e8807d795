//! The refund lifecycle: the one place that decides how a refund's status
//! changes, whoever causes the change (the request's own provider answer, a
//! status query, a webhook, the sender abandoning its call).
//!
//! Every function here computes a [`RefundUpdate`] from the row as its caller
//! read it; the store applies it with a compare-and-swap on that row's
//! version, status and submission, and on a lost race the caller reads again
//! and asks again. Nothing else in the crate sets a status.
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

use crate::providers::{Outcome, ProviderAnswer};
use crate::store::{RefundRow, RefundUpdate};

use std::time::Duration;

pub use crate::store::{Status, Submission};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to change (the outcome says nothing new, or repeats the final state).
    Stay,
    Move(Status),
    /// A final status contradicted by the provider: keep it, flag it, ask the provider.
    Conflict,
}

/// How `outcome` moves a refund that is `current`. Final states never go back
/// to pending; `unknown` and `not_found` never decide anything on their own.
pub fn decide(current: Status, outcome: Outcome) -> Decision {
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
    /// be processing it (see [`lifecycle::status_query`]).
    pub not_found_after: Duration,
    /// "No such refund" answers in a row needed to fail a sent refund.
    pub not_found_checks: u32,
}

impl Policy {
    /// For code that applies answers outside a configured gateway (the
    /// benchmark's database floor): the default timings, never waited on there.
    pub fn floor() -> Self {
        Policy {
            interval: Duration::from_millis(500),
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
            max_attempts: 30,
            lease: Duration::from_secs(35),
            not_found_after: Duration::from_secs(15 * 60),
            not_found_checks: 3,
        }
    }

    pub fn max_delay_ms(&self) -> i64 {
        i64::try_from(self.max_delay.as_millis()).unwrap_or(i64::MAX)
    }

    pub fn not_found_after_ms(&self) -> i64 {
        i64::try_from(self.not_found_after.as_millis()).unwrap_or(i64::MAX)
    }

    /// Milliseconds to wait before the next check after `attempts` checks.
    pub fn delay_after(&self, attempts: i64) -> i64 {
        let shift = u32::try_from(attempts.clamp(0, 20)).unwrap_or(20);
        let d = self
            .base_delay
            .saturating_mul(1u32 << shift)
            .min(self.max_delay);
        i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
    }
}

/// The update a provider answer (to our refund call, or a webhook naming this
/// refund) makes, through [`decide`].
pub fn answer(
    current: &RefundRow,
    answer: &ProviderAnswer,
    now: i64,
    policy: &Policy,
) -> RefundUpdate {
    let mut u = RefundUpdate::from_row(current, now);
    let status = current.status;
    if answer.provider_refund_id.is_some() && u.provider_refund_id.is_none() {
        u.provider_refund_id = answer.provider_refund_id.clone();
    }
    if answer.outcome != Outcome::NotFound {
        u.not_found_streak = 0;
    }
    match decide(status, answer.outcome) {
        Decision::Move(next) => {
            u.status = next;
            u.provider_status = answer.provider_status.clone().or(u.provider_status);
            u.provider_code = answer.provider_code.clone().or(u.provider_code);
            u.provider_message = answer.message.clone();
            if next == Status::Failed {
                u.failure_code = Some(
                    current
                        .provider
                        .failure_code(answer.provider_code.as_deref())
                        .into(),
                );
                u.failure_message = answer
                    .message
                    .clone()
                    .or_else(|| Some("the provider declined the refund".into()));
            }
            u.next_check_at = None;
            u.lease_until = None;
        }
        Decision::Stay if status == Status::Pending => {
            if answer.outcome == Outcome::Pending {
                u.provider_status = answer.provider_status.clone().or(u.provider_status);
                u.provider_code = answer.provider_code.clone().or(u.provider_code);
            }
            u.next_check_at = Some(now + policy.delay_after(current.check_attempts));
        }
        Decision::Stay => {}
        Decision::Conflict => {
            tracing::error!(
                refund_id = %current.id,
                recorded = %current.status,
                reported = ?answer.outcome,
                "provider contradicts a final refund status; keeping it and flagging for review"
            );
            u.review_reason = Some(format!(
                "provider reported {:?} after the refund was {}",
                answer.outcome, current.status
            ));
        }
    }
    u
}

/// The update the answer to a status query makes (reconciliation, or a
/// client's `?sync=true`): [`answer`], plus the rules for a provider that has
/// never heard of the refund, and giving up polling after too many queries.
pub fn status_query(
    current: &RefundRow,
    reply: &ProviderAnswer,
    now: i64,
    policy: &Policy,
) -> RefundUpdate {
    let mut u = answer(current, reply, now, policy);
    u.lease_until = None;
    if current.status != Status::Pending {
        return u;
    }
    u.check_attempts = current.check_attempts + 1;
    if reply.outcome == Outcome::NotFound {
        u.not_found_streak = current.not_found_streak + 1;
        match never_received(current, now, policy) {
            // Never claimed for sending: this write bumps the version, so the
            // sender's claim (a compare-and-swap on the version it wrote) fails
            // and it never calls the provider.
            Ok(proof @ NeverReceived::NotSubmitted) => {
                fail(&mut u, proof.code(), proof.message());
                tracing::info!(refund_id = %current.id, "refund was never submitted; marked failed");
            }
            Ok(proof @ NeverReceived::NotReceived)
                if u.not_found_streak >= i64::from(policy.not_found_checks) =>
            {
                fail(&mut u, proof.code(), proof.message());
                tracing::warn!(refund_id = %current.id, streak = u.not_found_streak, "provider never received the refund; marked failed");
            }
            _ => {}
        }
    }
    if reply.outcome == Outcome::Misconfigured {
        // Asking again will not help until an operator fixes the account:
        // flag it, and ask only at the slowest pace meanwhile.
        u.review_reason = Some(format!(
            "the provider refused the status query ({} {}): check the account's credentials",
            reply.provider_code.as_deref().unwrap_or(""),
            reply.message.as_deref().unwrap_or("")
        ));
        u.next_check_at = Some(now.saturating_add(policy.max_delay_ms()));
    }
    if u.status == Status::Pending && u.check_attempts >= i64::from(policy.max_attempts) {
        let reason = format!(
            "still pending after {} status queries; last answer {:?} {}",
            u.check_attempts,
            reply.outcome,
            reply.message.as_deref().unwrap_or("")
        );
        tracing::warn!(refund_id = %current.id, %reason, "reconciliation gave up; refund needs review");
        u.next_check_at = None;
        u.review_reason = Some(reason);
    }
    u
}

/// A signed provider message (a webhook, a sale's refund listing) that
/// contradicts the refund as recorded: it flags the refund for review with
/// `what` differs (written to its history) and changes nothing else. `None`
/// when the refund is already flagged for this very reason.
pub fn contradicted(current: &RefundRow, what: &str, now: i64) -> Option<RefundUpdate> {
    if current.review_reason.as_deref() == Some(what) {
        return None;
    }
    let mut u = RefundUpdate::from_row(current, now);
    u.review_reason = Some(what.to_string());
    Some(u)
}

/// The sender held its claim past the send deadline (it was paused) and did
/// not call the provider: it fails the refund itself. Only a pending refund
/// changes; the sender knows no request left, whatever else was written since.
pub fn sender_abandoned(current: &RefundRow, now: i64) -> Option<RefundUpdate> {
    if current.status != Status::Pending {
        return None;
    }
    let mut u = RefundUpdate::from_row(current, now);
    fail(
        &mut u,
        "not_submitted",
        "the gateway could not send the refund in time; nothing was sent to the provider",
    );
    Some(u)
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
    now: i64,
    policy: &Policy,
) -> Result<NeverReceived, Option<i64>> {
    match current.submission {
        Submission::Prepared => match current.inflight_until {
            Some(t) if t >= now => Err(Some(t.saturating_add(1))),
            _ => Ok(NeverReceived::NotSubmitted),
        },
        Submission::Sent => {
            let Some(send_by) = current.send_by else {
                return Err(None);
            };
            let at = send_by.saturating_add(policy.not_found_after_ms());
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
    #[error("the provider has no record of this refund yet, but it may still be processing it until {} ({} s from now); resolve it as failed after that", fmt_time(*at), secs_until(*at, *now))]
    ProviderMayStillApply { at: i64, now: i64 },
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
    pub fn possible_at(&self) -> Option<i64> {
        match self {
            ResolveRefusal::ProviderMayStillApply { at, .. } => Some(*at),
            _ => None,
        }
    }
}

/// Whole seconds from `now` to `at` (ms), rounded up, never negative.
fn secs_until(at: i64, now: i64) -> i64 {
    (at.saturating_sub(now).max(0) + 999) / 1000
}

/// An RFC 3339 UTC time, to the millisecond, for messages.
pub fn fmt_time(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// An operator's resolution of a refund to `target`, with a note, checked
/// against the provider's answer given just now: it applies only what the
/// provider's records prove. A pending refund becomes `succeeded` only if the
/// provider says it succeeded; `failed` only if the provider says it failed,
/// or has no such refund and the gateway provably can no longer send it. A
/// final refund keeps its status; resolving it to that same status (with
/// the provider agreeing) clears its review flag. Never back to pending.
pub fn operator_resolution(
    current: &RefundRow,
    target: Status,
    reply: &ProviderAnswer,
    now: i64,
    policy: &Policy,
) -> Result<RefundUpdate, ResolveRefusal> {
    let said = || {
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
    };
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
        return Err(ResolveRefusal::Contradicted(said()));
    }
    let mut u = answer(current, reply, now, policy);
    if current.status == Status::Pending
        && target == Status::Failed
        && reply.outcome == Outcome::NotFound
    {
        if let Ok(proof) = never_received(current, now, policy) {
            fail(
                &mut u,
                proof.code(),
                "resolved by an operator: the provider has no record of this refund",
            );
        }
    }
    u.review_reason = None;
    u.next_check_at = None;
    u.lease_until = None;
    Ok(u)
}

fn fail(u: &mut RefundUpdate, code: &str, message: &str) {
    u.status = Status::Failed;
    u.failure_code = Some(code.into());
    u.failure_message = Some(message.into());
    u.next_check_at = None;
    u.lease_until = None;
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

    /// Every status a refund update carries is decided in this file: no
    /// other source file assigns one (the store only copies a decided update).
    #[test]
    fn statuses_are_set_only_here() {
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
        let allowed = ["refunds/lifecycle.rs", "store/model.rs", "sandbox/"];
        let mut offenders = vec![];
        for f in files {
            let rel = f
                .strip_prefix(root.join("src"))
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            if allowed.iter().any(|a| rel.starts_with(a)) {
                continue;
            }
            let text = std::fs::read_to_string(&f).unwrap();
            for (i, line) in text.lines().enumerate() {
                let l = line.trim();
                if l.contains(".status = ")
                    || (l.contains("submission = 'sent'")
                        && !["store/sqlite.rs", "store/postgres.rs"].contains(&rel.as_str()))
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

    fn row(submission: &str, send_by: Option<i64>, streak: i64) -> RefundRow {
        RefundRow {
            submission: Submission::parse(submission).unwrap(),
            inflight_until: Some(1_000),
            send_by,
            not_found_streak: streak,
            version: 1,
            ..RefundRow::recorded(crate::store::NewRefundRow {
                id: crate::store::RefundId::generate(),
                client: "c".into(),
                account: "a".into(),
                provider: crate::store::ProviderKind::Pockyt,
                livemode: false,
                amount: crate::store::Minor::new(100).unwrap(),
                currency: crate::store::Currency::from_code("USD").unwrap(),
                transaction_no: "1".into(),
                provider_reference: "R".into(),
                request_hash: "h".into(),
                now: 0,
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
        let mut p = Policy::floor();
        p.not_found_after = std::time::Duration::from_secs(60);
        p.not_found_checks = 3;
        p
    }

    #[test]
    fn never_claimed_fails_only_after_the_senders_window() {
        let r = row("prepared", None, 0);
        let u = status_query(&r, &reply(Outcome::NotFound), 500, &policy());
        assert_eq!(u.status, "pending", "the sender may still claim it");
        let u = status_query(&r, &reply(Outcome::NotFound), 1_001, &policy());
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
            status_query(&r, &reply(Outcome::NotFound), after - 1, &p).status,
            "pending"
        );
        let r = row("sent", Some(send_by), 1);
        let u = status_query(&r, &reply(Outcome::NotFound), after, &p);
        assert_eq!((u.status.as_str(), u.not_found_streak), ("pending", 2));
        let r = row("sent", Some(send_by), 2);
        let u = status_query(&r, &reply(Outcome::NotFound), after, &p);
        assert_eq!(
            (u.status.as_str(), u.failure_code.as_deref()),
            ("failed", Some("not_received_by_provider"))
        );
        let r = row("sent", None, 9);
        assert_eq!(
            status_query(&r, &reply(Outcome::NotFound), i64::MAX / 2, &p).status,
            "pending",
            "without a send deadline nothing is provable"
        );
        for other in [Outcome::Pending, Outcome::Unknown] {
            let r = row("sent", Some(send_by), 2);
            let u = status_query(&r, &reply(other), after, &p);
            assert_eq!(
                (u.status.as_str(), u.not_found_streak),
                ("pending", 0),
                "{other:?} breaks the streak"
            );
        }
    }

    #[test]
    fn the_sender_abandons_only_a_pending_refund() {
        let r = row("sent", Some(1), 0);
        let u = sender_abandoned(&r, 5).unwrap();
        assert_eq!(
            (u.status.as_str(), u.failure_code.as_deref()),
            ("failed", Some("not_submitted"))
        );
        let mut done = row("sent", Some(1), 0);
        done.status = Status::Succeeded;
        assert!(sender_abandoned(&done, 5).is_none());
    }
}
