//! The refund protocol, model-checked: every interleaving of a bounded
//! world, explored exhaustively by `stateright`, with the four promises
//! asserted in every reachable state.
//!
//! The world: one sale of 1.00 and two refunds of 0.60 on it, each sent by
//! its own gateway process; two more processes asking the provider about
//! refunds (reconciliation, a client's sync) and an operator resolving one;
//! a provider that takes in calls late, answers, loses answers, declines,
//! and sends webhooks that are replayed and re-ordered; a clock that jumps
//! (a pause of any length between any two steps); and any sender crashing at
//! any step. Every write is the real [`lifecycle::transition`] on the real
//! row, applied as the store applies it (a compare-and-swap on the row as
//! read); the reservation is the store's rule.
//!
//! What it abstracts away: SQL and HTTP (a write is atomic, as the store's
//! transaction is), the idempotency-key replay path, and the provider's own
//! processing window, which the rule for "the provider never got it" rests
//! on: a call is taken in by the provider before the send deadline plus
//! `not_found_after` has passed.

use std::collections::BTreeSet;
use std::time::Duration;

use refund_gateway::money::{Currency, Minor};
use refund_gateway::providers::ProviderAnswer;
use refund_gateway::refunds::lifecycle::{transition, Asker, Context, Policy, Transition};
use refund_gateway::store::{Change, NewRefundRow, RefundRow, Status};
use refund_gateway::types::Outcome;
use refund_gateway::types::{ProviderKind, RefundId, Timestamp};
use stateright::{Checker, Model, Property};

const SALE: i64 = 100;
const AMOUNT: i64 = 60;
/// Refunds in the world (at most).
const N: usize = 2;
/// The send budget: a sender may call the provider until claim time + this.
const SEND_BUDGET: i64 = 5;
/// How long a first request holds its refund as in flight.
const INFLIGHT: i64 = 12;
/// The provider's processing window after the send deadline.
const NOT_FOUND_AFTER: i64 = 10;
/// The clock's readings, in order: each jump is a pause of every process
/// (past a send deadline, past the in-flight window, past the processing
/// window).
const TIMES: [i64; 3] = [0, 6, 16];

fn policy() -> Policy {
    Policy {
        interval: Duration::from_millis(1),
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(8),
        max_attempts: 100,
        lease: Duration::from_millis(10),
        not_found_after: Duration::from_millis(NOT_FOUND_AFTER as u64),
        not_found_checks: 1,
        // Beyond the model's times: no review events in the bounded world.
        review_after: Duration::from_secs(3600),
    }
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
enum Said {
    Succeeded,
    Failed,
    Pending,
    NotFound,
    Lost,
}

impl Said {
    fn answer(self) -> ProviderAnswer {
        ProviderAnswer {
            outcome: match self {
                Said::Succeeded => Outcome::Succeeded,
                Said::Failed => Outcome::Failed,
                Said::Pending => Outcome::Pending,
                Said::NotFound => Outcome::NotFound,
                Said::Lost => Outcome::Unknown,
            },
            provider_refund_id: None,
            provider_status: None,
            provider_code: None,
            message: None,
        }
    }
}

/// What the provider knows of a refund.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Prov {
    Unknown,
    /// Our call is on its way (not taken in yet).
    InFlight,
    Processing,
    Applied,
    Declined,
}

impl Prov {
    fn says(self) -> Said {
        match self {
            Prov::Unknown | Prov::InFlight => Said::NotFound,
            Prov::Processing => Said::Pending,
            Prov::Applied => Said::Succeeded,
            Prov::Declined => Said::Failed,
        }
    }
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Sender {
    Start,
    /// Recorded at this version; not claimed.
    Recorded(i64),
    /// Claimed; must call before `send_by`.
    Claimed {
        send_by: i64,
    },
    /// The deadline check passed; the call is about to leave.
    Checked,
    /// Called; waiting for the answer.
    Waiting,
    /// Has the answer; not recorded yet.
    Answered(Said),
    Done,
    Crashed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct World {
    t: usize,
    rows: [Option<RefundRow>; N],
    /// The sale's reservations (minor units), as the store keeps them.
    reserved: i64,
    senders: [Sender; N],
    provider: [Prov; N],
    calls: [u8; N],
    /// Webhooks the provider sent (delivered any number of times, any order).
    hooks: BTreeSet<(usize, Said)>,
    deliveries_left: u8,
    queries_left: u8,
    /// Two asking processes: what each heard about which refund, not yet applied.
    askers: [Option<(usize, Said, i64)>; 2],
    /// The operator: what the provider said, and the status resolved to.
    operator: Option<(usize, Said, Status, i64)>,
    operator_done: bool,
    /// The first final status each refund took.
    finals: [Option<Status>; N],
    broken: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Action {
    Tick,
    Create(usize),
    Claim(usize),
    CheckDeadline(usize),
    Send(usize),
    Answer(usize, Said),
    Record(usize),
    Crash(usize),
    ProviderTakesIn(usize),
    ProviderDecides(usize, bool),
    Deliver(usize, Said),
    Ask(usize, usize, bool),
    ApplyAsked(usize),
    OperatorAsks(usize, Status),
    OperatorResolves,
}

/// One bounded world: how many refunds, asking processes, status queries,
/// webhook deliveries, and whether an operator takes part.
struct Protocol {
    refunds: usize,
    askers: usize,
    queries: u8,
    deliveries: u8,
    operator: bool,
}

impl World {
    fn now(&self) -> i64 {
        TIMES[self.t]
    }

    /// Applies `t` to refund `i` as the store does: decided on the row as
    /// it is, written only to that version. `false`: nothing changed.
    fn apply(&mut self, i: usize, t: Transition<'_>) -> Option<Change> {
        let current = self.rows[i].clone()?;
        let p = policy();
        let ctx = Context {
            now: ts(self.now()),
            policy: &p,
            receipt: None,
            deliver_events: false,
        };
        let change = transition(&current, &t, &ctx).ok()??;
        assert_eq!(change.current(), &current);
        if change.effects().releases_reservation {
            self.reserved -= current.amount_minor.get();
        }
        let after = change.after().clone();
        if let Some(first) = self.finals[i] {
            if after.status != first {
                self.broken = Some(format!("refund {i} went from {first} to {}", after.status));
            }
        } else if after.status.is_final() {
            self.finals[i] = Some(after.status);
        }
        self.rows[i] = Some(after);
        Some(change)
    }
}

/// The model's ticks are milliseconds on the shared clock.
fn ts(ms: i64) -> Timestamp {
    Timestamp::from_unix_ms(ms)
}

fn row(i: usize, now: i64) -> RefundRow {
    let id: RefundId = format!("rf_{:026}", i).parse().expect("a refund id");
    RefundRow {
        inflight_until: Some(ts(now + INFLIGHT)),
        next_check_at: Some(ts(now + INFLIGHT)),
        ..RefundRow::recorded(NewRefundRow {
            id,
            client: "pos".into(),
            account: "acct".into(),
            provider: ProviderKind::Pockyt,
            livemode: false,
            amount: Minor::new(AMOUNT).expect("positive"),
            currency: Currency::from_code("USD").expect("USD"),
            transaction_no: "sale".into(),
            provider_reference: format!("REF{i}"),
            request_hash: "h".into(),
            now: ts(now),
        })
    }
}

impl Model for Protocol {
    type State = World;
    type Action = Action;

    fn init_states(&self) -> Vec<World> {
        let mut senders = [Sender::Done; N];
        for s in senders.iter_mut().take(self.refunds) {
            *s = Sender::Start;
        }
        vec![World {
            t: 0,
            rows: [None, None],
            reserved: 0,
            senders,
            provider: [Prov::Unknown; N],
            calls: [0; N],
            hooks: BTreeSet::new(),
            deliveries_left: self.deliveries,
            queries_left: self.queries,
            askers: [None, None],
            operator: None,
            operator_done: false,
            finals: [None; N],
            broken: None,
        }]
    }

    fn actions(&self, w: &World, out: &mut Vec<Action>) {
        if w.broken.is_some() {
            return;
        }
        if w.t + 1 < TIMES.len() {
            out.push(Action::Tick);
        }
        for i in 0..N {
            match w.senders[i] {
                Sender::Start => out.push(Action::Create(i)),
                Sender::Recorded(_) => out.push(Action::Claim(i)),
                Sender::Claimed { .. } => out.push(Action::CheckDeadline(i)),
                Sender::Checked => out.push(Action::Send(i)),
                Sender::Waiting => {
                    out.push(Action::Answer(i, Said::Lost));
                    if !matches!(w.provider[i], Prov::InFlight) {
                        out.push(Action::Answer(i, w.provider[i].says()));
                    }
                }
                Sender::Answered(_) => out.push(Action::Record(i)),
                Sender::Done | Sender::Crashed => {}
            }
            if !matches!(w.senders[i], Sender::Done | Sender::Crashed | Sender::Start) {
                out.push(Action::Crash(i));
            }
            if w.provider[i] == Prov::InFlight {
                out.push(Action::ProviderTakesIn(i));
            }
            if w.provider[i] == Prov::Processing {
                out.push(Action::ProviderDecides(i, true));
                out.push(Action::ProviderDecides(i, false));
            }
            if w.rows[i].is_some() {
                for (a, asked) in w.askers.iter().enumerate().take(self.askers) {
                    if asked.is_none() && w.queries_left > 0 {
                        out.push(Action::Ask(a, i, true));
                        out.push(Action::Ask(a, i, false));
                    }
                }
                if self.operator && w.operator.is_none() && !w.operator_done {
                    for target in [Status::Succeeded, Status::Failed] {
                        out.push(Action::OperatorAsks(i, target));
                    }
                }
            }
        }
        for (a, asked) in w.askers.iter().enumerate() {
            if asked.is_some() {
                out.push(Action::ApplyAsked(a));
            }
        }
        if w.operator.is_some() {
            out.push(Action::OperatorResolves);
        }
        if w.deliveries_left > 0 {
            for &(i, said) in &w.hooks {
                out.push(Action::Deliver(i, said));
            }
        }
    }

    fn next_state(&self, last: &World, action: Action) -> Option<World> {
        let mut w = last.clone();
        let now = w.now();
        match action {
            Action::Tick => w.t += 1,
            Action::Create(i) => {
                // The store's reservation: only while every reservation fits the sale.
                if w.reserved + AMOUNT <= SALE {
                    w.reserved += AMOUNT;
                    w.rows[i] = Some(row(i, now));
                    w.senders[i] = Sender::Recorded(0);
                } else {
                    w.senders[i] = Sender::Done;
                }
            }
            Action::Claim(i) => {
                let Sender::Recorded(version) = w.senders[i] else {
                    return None;
                };
                let send_by = now + SEND_BUDGET;
                let claim = Transition::Claimed {
                    version,
                    send_by: ts(send_by),
                };
                w.senders[i] = match w.apply(i, claim) {
                    Some(_) => Sender::Claimed { send_by },
                    None => Sender::Done,
                };
            }
            Action::CheckDeadline(i) => {
                let Sender::Claimed { send_by } = w.senders[i] else {
                    return None;
                };
                if now > send_by {
                    w.apply(i, Transition::SenderAbandoned);
                    w.senders[i] = Sender::Done;
                } else {
                    w.senders[i] = Sender::Checked;
                }
            }
            Action::Send(i) => {
                w.calls[i] += 1;
                if w.provider[i] == Prov::Unknown {
                    w.provider[i] = Prov::InFlight;
                }
                w.senders[i] = Sender::Waiting;
            }
            Action::Answer(i, said) => w.senders[i] = Sender::Answered(said),
            Action::Record(i) => {
                let Sender::Answered(said) = w.senders[i] else {
                    return None;
                };
                let answer = said.answer();
                w.apply(i, Transition::Answered(&answer));
                w.senders[i] = Sender::Done;
            }
            Action::Crash(i) => w.senders[i] = Sender::Crashed,
            Action::ProviderTakesIn(i) => {
                // The processing window the "never got it" rule rests on.
                let send_by = w.rows[i].as_ref().and_then(|r| r.send_by)?.unix_ms();
                if now >= send_by + NOT_FOUND_AFTER {
                    return None;
                }
                w.provider[i] = Prov::Processing;
            }
            Action::ProviderDecides(i, apply) => {
                let applied: i64 = (0..N)
                    .filter(|&j| w.provider[j] == Prov::Applied)
                    .map(|_| AMOUNT)
                    .sum();
                // The provider's own over-refund check.
                let ok = apply && applied + AMOUNT <= SALE;
                w.provider[i] = if ok { Prov::Applied } else { Prov::Declined };
                w.hooks.insert((i, w.provider[i].says()));
            }
            Action::Deliver(i, said) => {
                w.deliveries_left -= 1;
                let answer = said.answer();
                w.apply(i, Transition::WebhookApplied(&answer));
            }
            Action::Ask(a, i, truthful) => {
                w.queries_left -= 1;
                let said = if truthful {
                    w.provider[i].says()
                } else {
                    Said::Lost
                };
                w.askers[a] = Some((i, said, now));
            }
            Action::ApplyAsked(a) => {
                let (i, said, asked_at) = w.askers[a].take()?;
                let answer = said.answer();
                let by = if a == 0 {
                    Asker::Reconciliation
                } else {
                    Asker::Client
                };
                let t = Transition::StatusQueried {
                    answer: &answer,
                    by,
                    asked_at: ts(asked_at),
                };
                w.apply(i, t);
            }
            Action::OperatorAsks(i, target) => {
                w.operator = Some((i, w.provider[i].says(), target, now));
            }
            Action::OperatorResolves => {
                let (i, said, target, asked_at) = w.operator.take()?;
                w.operator_done = true;
                let reply = said.answer();
                let t = Transition::OperatorResolved {
                    target,
                    reply: &reply,
                    actor: "op",
                    note: "checked",
                    asked_at: ts(asked_at),
                };
                w.apply(i, t);
            }
        }
        Some(w)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("a final status never changes", |_, w: &World| {
                w.broken.is_none()
            }),
            Property::always("never sent twice", |_, w: &World| {
                w.calls.iter().all(|&c| c <= 1)
            }),
            Property::always("never more than the sale", |_, w: &World| {
                let applied = w.provider.iter().filter(|&&p| p == Prov::Applied).count() as i64;
                applied * AMOUNT <= SALE && w.reserved <= SALE
            }),
            Property::always(
                "never lost: succeeded only if the provider refunded, failed only if it did not",
                |_, w: &World| {
                    (0..N).all(|i| match w.rows[i].as_ref().map(|r| r.status) {
                        Some(Status::Succeeded) => w.provider[i] == Prov::Applied,
                        Some(Status::Failed) => w.provider[i] != Prov::Applied,
                        _ => true,
                    })
                },
            ),
            Property::always(
                "the reservation is what the unfailed refunds hold",
                |_, w: &World| {
                    let held = w
                        .rows
                        .iter()
                        .flatten()
                        .filter(|r| r.status != Status::Failed)
                        .map(|r| r.amount_minor.get())
                        .sum::<i64>();
                    held == w.reserved
                },
            ),
            Property::sometimes("a refund succeeds", |_, w: &World| {
                w.rows
                    .iter()
                    .flatten()
                    .any(|r| r.status == Status::Succeeded)
            }),
            Property::sometimes("a sent refund fails as never received", |_, w: &World| {
                w.rows
                    .iter()
                    .flatten()
                    .any(|r| r.failure_code.as_deref() == Some("not_received_by_provider"))
            }),
            Property::sometimes(
                "a refund never claimed fails as not submitted",
                |_, w: &World| {
                    w.rows.iter().flatten().any(|r| {
                        r.failure_code.as_deref() == Some("not_submitted") && r.send_by.is_none()
                    })
                },
            ),
            Property::sometimes(
                "one refund fails, the other succeeds",
                |m: &Protocol, w: &World| {
                    m.refunds < 2
                        || w.rows
                            .iter()
                            .flatten()
                            .filter(|r| r.status == Status::Succeeded)
                            .count()
                            == 1
                            && w.rows.iter().flatten().any(|r| r.status == Status::Failed)
                },
            ),
            Property::sometimes(
                "an operator resolves a refund",
                |m: &Protocol, w: &World| {
                    !m.operator
                        || (w.operator_done && w.rows.iter().flatten().any(|r| r.status.is_final()))
                },
            ),
        ]
    }
}

fn check(world: Protocol, name: &str) {
    let started = std::time::Instant::now();
    let checker = world
        .checker()
        .threads(2)
        .timeout(Duration::from_secs(900))
        .spawn_dfs()
        .join();
    assert!(
        checker.is_done(),
        "the model check ran out of time before exploring every state"
    );
    let report = format!(
        "model check ({name}): {} states explored ({} unique), max depth {}, {:.1} s, every property held\n",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth(),
        started.elapsed().as_secs_f64()
    );
    checker.assert_properties();
    print!("{report}");
    // Kept for `.ci/run` to print (test output is captured).
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("model-check-{}.txt", name.replace([' ', ','], "-")));
    std::fs::write(file, report).expect("the report is written");
}

/// Two refunds racing for one sale, each sender pausing or crashing at any
/// step, a process asking the provider, webhooks replayed and re-ordered.
#[test]
fn two_refunds_on_one_sale_keep_the_promises() {
    check(
        Protocol {
            refunds: 2,
            askers: 1,
            queries: 2,
            deliveries: 1,
            operator: false,
        },
        "two refunds, one sale",
    );
}

/// One refund and every kind of evidence at once: two asking processes, an
/// operator's resolution, replayed webhooks, a clock that jumps.
#[test]
fn one_refund_under_every_kind_of_evidence_keeps_the_promises() {
    check(
        Protocol {
            refunds: 1,
            askers: 2,
            queries: 2,
            deliveries: 2,
            operator: true,
        },
        "one refund, every evidence",
    );
}
