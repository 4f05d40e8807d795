//! Rows as stored, typed. Amounts are [`Minor`] units; times are Unix
//! milliseconds (the Postgres store keeps them as `timestamptz`). Every typed
//! column is decoded once, at the store boundary: a value that exists is
//! valid, and a stored value that is not one of its type's values is an error
//! (a corrupt row), never a guess.

use std::collections::BTreeMap;

use crate::money::{Currency, Minor};
use crate::types::{DomainEvent, Invalid, Outcome, ProviderKind, RefundId, Timestamp};

use crate::types::text_enum;

text_enum! {
    /// A refund's status. Only [`crate::refunds::lifecycle`] decides a change.
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    Status("refund status") {
        Pending = "pending",
        Succeeded = "succeeded",
        Failed = "failed",
    }
}

impl Status {
    pub fn is_final(&self) -> bool {
        !matches!(self, Status::Pending)
    }
}

text_enum! {
    /// Whether the refund may have reached the provider: `Prepared` until the
    /// send claim (a compare-and-swap) moves it to `Sent`, just before the call.
    Submission("refund submission") {
        Prepared = "prepared",
        Sent = "sent",
    }
}

text_enum! {
    /// Who or what caused a change of a refund (its history says so).
    EventSource("event source") {
        /// The POS's request and the provider's answer to our call.
        Request = "request",
        /// A client's `?sync=true` status query.
        StatusQuery = "status_query",
        Webhook = "webhook",
        Reconciliation = "reconciliation",
        Operator = "operator",
    }
}

text_enum! {
    /// What became of a stored provider webhook.
    EventState("webhook event state") {
        /// Verified and stored; not matched yet.
        Received = "received",
        /// Not about a refund (a payment notification, say).
        Ignored = "ignored",
        /// Names no refund we know yet: retried with backoff.
        Unmatched = "unmatched",
        /// Never matched a refund; no more attempts.
        Expired = "expired",
        /// Its amount could not be read: the refund's status is asked instead.
        Queried = "queried",
        /// Contradicts the refund it names (sale or amount): not applied.
        Rejected = "rejected",
        /// Contradicts the refund's final status: the provider is asked.
        Conflict = "conflict",
        /// Moved the refund.
        Applied = "applied",
        /// Said nothing new.
        Stale = "stale",
    }
}

/// One line of a refund's history, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash, sqlx::FromRow)]
pub struct RefundEvent {
    pub at: Timestamp,
    pub source: EventSource,
    pub status: Status,
    pub previous_status: Option<Status>,
    pub provider_code: Option<String>,
    pub provider_status: Option<String>,
    pub detail: Option<String>,
    pub actor: Option<String>,
}

/// A refund record: everything in the public refund object plus the client,
/// account, idempotency key, request fingerprint and reconciliation state.
#[derive(Debug, Clone, PartialEq, Eq, Hash, sqlx::FromRow)]
pub struct RefundRow {
    pub id: RefundId,
    pub client: String,
    pub account: String,
    pub provider: ProviderKind,
    pub livemode: bool,
    pub status: Status,
    pub amount_minor: Minor,
    pub currency: Currency,
    pub settle_currency: Option<Currency>,
    pub transaction_no: String,
    pub reference: Option<String>,
    pub refund_reference: Option<String>,
    pub provider_reference: String,
    pub provider_refund_id: Option<String>,
    pub provider_status: Option<String>,
    pub provider_code: Option<String>,
    pub provider_message: Option<String>,
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
    pub reason: Option<String>,
    pub receipt_email: Option<String>,
    /// The client's own string values, echoed back.
    #[sqlx(json)]
    pub metadata: BTreeMap<String, String>,
    pub idempotency_key: Option<String>,
    pub request_hash: String,
    pub submission: Submission,
    pub response_code: Option<i64>,
    pub response_body: Option<String>,
    pub inflight_until: Option<Timestamp>,
    pub check_attempts: i64,
    pub next_check_at: Option<Timestamp>,
    pub lease_until: Option<Timestamp>,
    pub review_reason: Option<String>,
    /// Why it is still pending (set with each answer while it is).
    pub pending_reason: Option<PendingReason>,
    /// `refund.created` is recorded (the first change after the claim).
    pub announced: bool,
    /// Set by the send claim: a sender still holding the call after this time
    /// abandons it, so after it (plus the provider's processing window) a
    /// refund the provider has never heard of provably never reached it.
    pub send_by: Option<Timestamp>,
    /// Consecutive status queries that found no such refund at the provider.
    pub not_found_streak: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Bumped by every write; updates apply only to the version they read.
    pub version: i64,
}

/// What the provider told us about the sale before the refund (where it can).
/// Only confirmed facts pin a sale: a request's own currency never does.
#[derive(Debug, Clone, Copy, Default)]
pub struct SaleTerms {
    pub amount_minor: Option<Minor>,
    /// The provider confirmed the sale's currency (a sale lookup).
    pub currency_confirmed: bool,
    /// Refunds the provider lists for the sale that this gateway did not make.
    pub external_minor: Minor,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    Created,
    /// The idempotency key or refund reference is already taken by this client.
    Duplicate,
    CurrencyMismatch {
        sale_currency: String,
    },
    ExceedsRefundable {
        refundable: Minor,
    },
}

/// One refund change, complete, as a store executes it: the
/// compare-and-swap of `current` (id, version, status and submission as its
/// writer read them) to `after`, and its effects in the same transaction.
/// Decided only by `refunds::lifecycle::transition` (a test there holds every
/// other module to that); the store decides nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    current: RefundRow,
    after: RefundRow,
    effects: Effects,
}

/// What goes with a refund change, in the same transaction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effects {
    /// The history line, if the change shows.
    pub history: Option<RefundEvent>,
    /// `failed` now: the reservation on the sale is released.
    pub releases_reservation: bool,
    /// `succeeded` on a sale whose currency no lookup confirmed: pin it.
    pub confirms_sale: bool,
    /// A receipt email to enqueue (once per refund).
    pub email: Option<EmailDraft>,
    /// What the POS is told of, in order.
    pub events: Vec<DomainEvent>,
    /// The refund object (JSON) after the change: the events' `data`.
    pub event_data: Option<String>,
    /// Whether the events go to webhook endpoints (else: the feed only).
    pub deliver_events: bool,
}

impl Change {
    /// For the lifecycle only (see the type).
    pub fn decided(current: RefundRow, after: RefundRow, effects: Effects) -> Self {
        Change {
            current,
            after,
            effects,
        }
    }
    /// The row as its writer read it: the write applies only to it.
    pub fn current(&self) -> &RefundRow {
        &self.current
    }
    /// The row once the change applied (version bumped).
    pub fn after(&self) -> &RefundRow {
        &self.after
    }
    pub fn into_after(self) -> RefundRow {
        self.after
    }
    pub fn effects(&self) -> &Effects {
        &self.effects
    }
    /// Only the refund row (and its history line) changes: one statement.
    pub fn is_single_write(&self) -> bool {
        let e = &self.effects;
        !(e.releases_reservation || e.confirms_sale || e.email.is_some())
    }
    /// The domain events to record with the change: (type, data).
    pub fn pos_events(&self) -> impl Iterator<Item = (DomainEvent, &str)> {
        let data = self.effects.event_data.as_deref().unwrap_or("{}");
        self.effects.events.iter().map(move |e| (*e, data))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailDraft {
    pub to: String,
    pub subject: String,
    pub body: String,
}

/// A verified provider webhook as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct WebhookRow {
    pub id: String,
    pub provider: ProviderKind,
    pub account: String,
    pub dedupe_key: String,
    pub transaction_no: Option<String>,
    pub provider_refund_id: Option<String>,
    pub provider_reference: Option<String>,
    pub amount: Option<String>,
    /// What the webhook says became of the refund.
    pub outcome: Outcome,
    pub provider_status: Option<String>,
    pub fields: String,
    pub refund_id: Option<String>,
    pub state: EventState,
    pub note: Option<String>,
    pub received_at: Timestamp,
    /// Matching attempts so far (unmatched events back off, then stop).
    pub attempts: i64,
    pub next_attempt_at: Option<Timestamp>,
}

text_enum! {
    /// Why a refund is pending, and so what happens next.
    #[derive(serde::Serialize)]
    #[serde(rename_all = "snake_case")]
    PendingReason("pending reason") {
        /// Recorded and being sent: no answer yet (if the sending process
        /// died, the gateway asks the provider after the in-flight window).
        BeingSent = "being_sent",
        /// The provider accepted it and will confirm it (webhook or status query).
        AwaitingProviderConfirmation = "awaiting_provider_confirmation",
        /// No usable answer (a timeout, a 5xx, an unreadable body): it may or
        /// may not have happened; the gateway asks until it knows.
        OutcomeUnknown = "outcome_unknown",
        /// The provider could not be reached; the gateway asks again.
        ProviderUnreachable = "provider_unreachable",
        /// Asked, the provider has no record of it yet (it may still be
        /// processing it).
        NoRecordAtProviderYet = "no_record_at_provider_yet",
        /// The provider refuses our credentials for status queries: an
        /// operator must fix the account.
        ProviderRefusedCredentials = "provider_refused_credentials",
    }
}

/// A domain event as stored: what the POS's events feed shows and its
/// webhooks carry. `data` is the refund object (JSON) as the change left it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PosEventRow {
    /// `evt_` and a ULID: the Standard Webhooks `webhook-id`.
    pub id: String,
    /// The feed position (`None` until the sequencer has placed it).
    pub seq: Option<i64>,
    pub client: String,
    pub refund_id: String,
    #[sqlx(rename = "type")]
    pub kind: DomainEvent,
    pub created_at: Timestamp,
    pub data: String,
}

text_enum! {
    /// Where a webhook delivery stands.
    #[derive(serde::Serialize)]
    #[serde(rename_all = "lowercase")]
    DeliveryState("delivery state") {
        /// Not yet answered with a 2xx; attempted again on the schedule.
        Pending = "pending",
        Delivered = "delivered",
        /// Every attempt of the schedule failed (an operator may redeliver).
        Failed = "failed",
    }
}

/// One event for one receiving endpoint, with its event.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeliveryRow {
    pub id: String,
    pub event_id: String,
    pub client: String,
    /// The endpoint's URL.
    pub endpoint: String,
    pub refund_id: String,
    pub seq: i64,
    pub state: DeliveryState,
    pub attempts: i64,
    pub next_attempt_at: Timestamp,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: Timestamp,
    pub delivered_at: Option<Timestamp>,
    pub event_type: DomainEvent,
    pub event_created_at: Timestamp,
    pub data: String,
}

/// One delivery attempt: the HTTP status, or the error (no answer).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeliveryAttempt {
    pub delivery_id: String,
    pub at: Timestamp,
    pub http_status: Option<i64>,
    pub error: Option<String>,
    pub duration_ms: i64,
}

/// What an attempt leaves a delivery as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryNext {
    Delivered,
    /// Attempted again at this time.
    Retry(Timestamp),
    /// The schedule is exhausted.
    Failed,
    /// The endpoint answered `410 Gone`: disabled; the delivery waits.
    Disabled,
}

/// A delivery to create: an event for an endpoint that subscribes to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    pub event_id: String,
    pub client: String,
    pub endpoint: String,
    pub refund_id: String,
    pub seq: i64,
}

/// An endpoint disabled by a `410 Gone`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DisabledEndpoint {
    pub client: String,
    pub endpoint: String,
    pub disabled_at: Timestamp,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OutboxRow {
    pub refund_id: String,
    pub to_addr: String,
    pub subject: String,
    pub body: String,
    pub state: String,
    pub attempts: i64,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this provider account's refunds.
    pub account: Option<String>,
    pub transaction_no: Option<String>,
    pub reference: Option<String>,
    pub refund_reference: Option<String>,
    pub status: Option<Status>,
    pub provider: Option<ProviderKind>,
    pub created_from: Option<Timestamp>,
    pub created_to: Option<Timestamp>,
    /// Keyset cursor: (created_at, id) of the `starting_after` refund.
    pub after: Option<(Timestamp, RefundId)>,
    /// Only refunds that need a person: flagged for review, or pending
    /// since before this time.
    pub needs_review_before: Option<Timestamp>,
    pub limit: i64,
    /// Oldest first (the cursor then continues after `after` upwards);
    /// otherwise newest first, like every list of the API.
    pub oldest_first: bool,
}

/// The parts of a new refund a caller decides; [`RefundRow::recorded`] starts
/// everything else empty (pending, prepared, version 0).
#[derive(Debug, Clone)]
pub struct NewRefundRow {
    pub id: RefundId,
    pub client: String,
    pub account: String,
    pub provider: ProviderKind,
    pub livemode: bool,
    pub amount: Minor,
    pub currency: Currency,
    pub transaction_no: String,
    pub provider_reference: String,
    pub request_hash: String,
    pub now: Timestamp,
}

impl RefundRow {
    /// A refund as first recorded, before the provider hears of it.
    pub fn recorded(n: NewRefundRow) -> Self {
        RefundRow {
            id: n.id,
            client: n.client,
            account: n.account,
            provider: n.provider,
            livemode: n.livemode,
            status: Status::Pending,
            amount_minor: n.amount,
            currency: n.currency,
            settle_currency: None,
            transaction_no: n.transaction_no,
            reference: None,
            refund_reference: None,
            provider_reference: n.provider_reference,
            provider_refund_id: None,
            provider_status: None,
            provider_code: None,
            provider_message: None,
            failure_code: None,
            failure_message: None,
            reason: None,
            receipt_email: None,
            metadata: BTreeMap::new(),
            idempotency_key: None,
            request_hash: n.request_hash,
            submission: Submission::Prepared,
            response_code: None,
            response_body: None,
            inflight_until: None,
            check_attempts: 0,
            next_check_at: None,
            lease_until: None,
            review_reason: None,
            pending_reason: None,
            announced: false,
            send_by: None,
            not_found_streak: 0,
            created_at: n.now,
            updated_at: n.now,
            version: 0,
        }
    }
}
