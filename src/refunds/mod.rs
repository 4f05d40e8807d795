//! The refund domain: validation results in, idempotency, the over-refund
//! guard, the write-before-call rule, outcome recording and reconciliation.

pub mod email;
pub mod object;
pub mod receipt;
pub mod reconcile;
pub mod status;
pub mod webhooks;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Account, AccountCredentials, Client, Config};
use crate::money::{Currency, Minor};
use crate::providers::pay10::Pay10Client;
use crate::providers::pockyt::PockytClient;
use crate::providers::{
    http_client, Outcome, ProviderAnswer, ProviderClient, ProviderKind, RefundCall, SaleLookup,
    StatusQuery,
};
use crate::store::{CreateOutcome, RefundRow, RefundUpdate, SaleTerms, Store, StoreError};
pub use object::RefundObject;
use status::{decide, Decision, Status};

pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A validated refund request (the API layer builds it).
#[derive(Debug, Clone)]
pub struct NewRefund {
    pub provider: ProviderKind,
    pub transaction_no: Option<String>,
    pub reference: Option<String>,
    pub amount: Minor,
    pub currency: Currency,
    pub settle_currency: Option<Currency>,
    pub refund_reference: Option<String>,
    pub reason: Option<String>,
    pub receipt_email: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub idempotency_key: Option<String>,
    /// SHA-256 of the canonical request body: a repeated key must repeat it.
    pub request_hash: String,
}

/// Refusals before the provider is called: no refund record is left behind.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("the original transaction was not found at the provider")]
    TransactionNotFound,
    #[error(
        "the original transaction has status {0:?}; only successful transactions can be refunded"
    )]
    NotRefundable(String),
    #[error("the refund currency {requested} does not match the sale currency {sale}")]
    CurrencyMismatch { requested: String, sale: String },
    #[error("the refund exceeds the refundable amount ({refundable} {currency} left)")]
    ExceedsRefundable {
        refundable: String,
        currency: String,
    },
    #[error("this API client has no {0} account configured")]
    ProviderNotConfigured(ProviderKind),
    #[error("the provider could not be asked about the original transaction; nothing was refunded, try again")]
    ProviderUnavailable,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What `POST /v1/refunds` answers.
#[derive(Debug)]
pub enum Created {
    /// A new refund, just recorded and sent (201).
    New(RefundRow),
    /// A stored response replayed (same status and body).
    Replay { status: u16, body: String },
    /// The first request with this key is still running (409).
    InProgress,
    /// The key was used with a different body (422).
    Mismatch,
    /// The first request died after recording the refund: its current state (201).
    Current(RefundRow),
}

/// A provider account ready to use.
#[derive(Debug)]
pub struct AccountHandle {
    pub account: Account,
    pub client: ProviderClient,
}

#[derive(Debug)]
pub struct Gateway {
    pub store: Store,
    pub accounts: HashMap<String, Arc<AccountHandle>>,
    pub clients: Vec<Arc<Client>>,
    pub provider_timeout: Duration,
    pub reconcile: reconcile::Policy,
    pub merchant_name: String,
    /// Receipt emails are enqueued only when SMTP is configured.
    pub email_enabled: bool,
}

impl Gateway {
    pub fn new(config: &Config, store: Store) -> Self {
        let http = http_client(config.http);
        let accounts = config
            .accounts
            .iter()
            .map(|a| {
                let client = match &a.credentials {
                    AccountCredentials::Pockyt(p) => {
                        ProviderClient::Pockyt(PockytClient::new(http.clone(), p.clone()))
                    }
                    AccountCredentials::Pay10(p) => {
                        ProviderClient::Pay10(Pay10Client::new(http.clone(), p.clone()))
                    }
                };
                (
                    a.name.clone(),
                    Arc::new(AccountHandle {
                        account: a.clone(),
                        client,
                    }),
                )
            })
            .collect();
        Gateway {
            store,
            accounts,
            clients: config.clients.iter().cloned().map(Arc::new).collect(),
            provider_timeout: config.http.timeout,
            reconcile: reconcile::Policy::from_config(config),
            merchant_name: config.merchant_name.clone(),
            email_enabled: config.smtp.is_some(),
        }
    }

    /// The store name printed on a refund's receipt.
    pub fn store_name(&self, row: &RefundRow) -> String {
        self.accounts
            .get(&row.account)
            .map(|h| h.account.store_name.clone())
            .unwrap_or_else(|| self.merchant_name.clone())
    }

    /// Adds the receipt email to an update that makes a refund succeed.
    pub fn with_receipt(&self, current: &RefundRow, mut u: RefundUpdate) -> RefundUpdate {
        if self.email_enabled && current.status != "succeeded" && u.status == "succeeded" {
            if let Some(to) = &current.receipt_email {
                let mut after = current.clone();
                u.apply_to(&mut after);
                let object = RefundObject::from(&after);
                u.email = Some(crate::store::EmailDraft {
                    to: to.clone(),
                    subject: format!("Your refund of {} {}", object.amount, object.currency),
                    body: receipt::text(&object, &self.store_name(current)),
                });
            }
        }
        u
    }

    /// How long a first request may hold its idempotency key before another
    /// request may take its refund as abandoned (the process died mid-call).
    fn inflight_window(&self) -> i64 {
        i64::try_from((self.provider_timeout * 2 + Duration::from_secs(2)).as_millis())
            .unwrap_or(i64::MAX)
    }

    fn answer_duplicate(existing: RefundRow, request_hash: &str, now: i64) -> Created {
        if existing.request_hash != request_hash {
            return Created::Mismatch;
        }
        match (existing.response_code, existing.response_body.clone()) {
            (Some(code), Some(body)) => Created::Replay {
                status: u16::try_from(code).unwrap_or(201),
                body,
            },
            _ if existing.inflight_until.is_some_and(|t| t > now) => Created::InProgress,
            _ => Created::Current(existing),
        }
    }

    /// The whole `POST /v1/refunds` flow after validation.
    ///
    /// There is no read for duplicates up front: the insert itself detects a
    /// taken key or reference. A refusal, though, is checked against earlier
    /// requests first, so a replay gets its stored answer rather than a
    /// refusal (say, after the first request refunded the whole sale).
    pub async fn create(&self, client: &Client, req: NewRefund) -> Result<Created, Refusal> {
        match self.create_new(client, &req).await {
            Err(Refusal::Store(e)) => Err(Refusal::Store(e)),
            Err(refusal) => {
                match self
                    .store
                    .find_duplicate(
                        &client.name,
                        req.idempotency_key.as_deref(),
                        req.refund_reference.as_deref(),
                    )
                    .await?
                {
                    Some(existing) => Ok(Self::answer_duplicate(
                        existing,
                        &req.request_hash,
                        now_ms(),
                    )),
                    None => Err(refusal),
                }
            }
            ok => ok,
        }
    }

    async fn create_new(&self, client: &Client, req: &NewRefund) -> Result<Created, Refusal> {
        let now = now_ms();
        let handle = client
            .accounts
            .get(&req.provider)
            .and_then(|name| self.accounts.get(name))
            .ok_or(Refusal::ProviderNotConfigured(req.provider))?
            .clone();

        // Pre-check with the provider where it can tell us about the sale.
        let (transaction_no, reference, terms) = match handle
            .client
            .lookup_sale(req.transaction_no.as_deref(), req.reference.as_deref())
            .await
        {
            None => (
                req.transaction_no.clone().unwrap_or_default(),
                req.reference.clone(),
                SaleTerms::default(),
            ),
            Some(SaleLookup::NotFound) => return Err(Refusal::TransactionNotFound),
            Some(SaleLookup::Unavailable(reason)) => {
                tracing::warn!(%reason, "sale lookup failed before refund");
                return Err(Refusal::ProviderUnavailable);
            }
            Some(SaleLookup::Found(sale)) => {
                if req.reference.is_some()
                    && sale.reference.is_some()
                    && req.reference != sale.reference
                {
                    return Err(Refusal::TransactionNotFound);
                }
                if sale.status != "success" {
                    return Err(Refusal::NotRefundable(sale.status));
                }
                if sale.currency != req.currency.code() {
                    return Err(Refusal::CurrencyMismatch {
                        requested: req.currency.code().into(),
                        sale: sale.currency,
                    });
                }
                let Ok(amount) = req.currency.parse_amount(&sale.amount) else {
                    tracing::warn!(amount = %sale.amount, "provider reported an unreadable sale amount");
                    return Err(Refusal::ProviderUnavailable);
                };
                // Refunds the provider already lists count too, whoever made
                // them (this gateway's own reservations are checked atomically
                // when the refund is recorded).
                let refunded: i64 = sale
                    .refunded
                    .iter()
                    .filter_map(|a| match req.currency.parse_amount(a) {
                        Ok(m) => Some(m.0),
                        Err(_) => {
                            tracing::warn!(amount = %a, "provider listed an unreadable refund amount");
                            None
                        }
                    })
                    .sum();
                if refunded + req.amount.0 > amount.0 {
                    return Err(Refusal::ExceedsRefundable {
                        refundable: req.currency.format(Minor((amount.0 - refunded).max(0))),
                        currency: req.currency.code().into(),
                    });
                }
                (
                    sale.transaction_no,
                    sale.reference,
                    SaleTerms {
                        amount_minor: Some(amount.0),
                    },
                )
            }
        };

        let id = format!("rf_{}", ulid::Ulid::new());
        let row = RefundRow {
            id: id.clone(),
            client: client.name.clone(),
            account: handle.account.name.clone(),
            provider: req.provider.as_str().into(),
            livemode: i64::from(handle.account.livemode),
            status: Status::Pending.as_str().into(),
            amount_minor: req.amount.0,
            currency: req.currency.code().into(),
            settle_currency: match req.provider {
                ProviderKind::Pockyt => Some(
                    req.settle_currency
                        .map(|c| c.code())
                        .unwrap_or("USD")
                        .into(),
                ),
                ProviderKind::Pay10 => None,
            },
            transaction_no,
            reference,
            refund_reference: req.refund_reference.clone(),
            provider_reference: provider_reference(),
            provider_refund_id: None,
            provider_status: None,
            provider_code: None,
            provider_message: None,
            failure_code: None,
            failure_message: None,
            reason: req.reason.clone(),
            receipt_email: req.receipt_email.clone(),
            metadata: serde_json::to_string(&req.metadata).unwrap_or_else(|_| "{}".into()),
            idempotency_key: req.idempotency_key.clone(),
            request_hash: req.request_hash.clone(),
            submission: "prepared".into(),
            response_code: None,
            response_body: None,
            inflight_until: Some(now + self.inflight_window()),
            check_attempts: 0,
            // If this process dies mid-call, reconciliation picks the refund up.
            next_check_at: Some(now + self.inflight_window()),
            lease_until: None,
            review_reason: None,
            created_at: now,
            updated_at: now,
            version: 0,
        };
        match self.store.create_refund(&row, &terms).await? {
            CreateOutcome::Created => {}
            CreateOutcome::Duplicate => {
                let existing = self
                    .store
                    .find_duplicate(
                        &client.name,
                        req.idempotency_key.as_deref(),
                        req.refund_reference.as_deref(),
                    )
                    .await?;
                return match existing {
                    Some(e) => Ok(Self::answer_duplicate(e, &req.request_hash, now)),
                    None => Ok(Created::InProgress),
                };
            }
            CreateOutcome::CurrencyMismatch { sale_currency } => {
                return Err(Refusal::CurrencyMismatch {
                    requested: req.currency.code().into(),
                    sale: sale_currency,
                })
            }
            CreateOutcome::ExceedsRefundable { refundable_minor } => {
                return Err(Refusal::ExceedsRefundable {
                    refundable: req.currency.format(Minor(refundable_minor)),
                    currency: req.currency.code().into(),
                })
            }
        }

        let sent_at = now_ms();
        self.store.mark_sent(&id, sent_at).await?;
        let row = RefundRow {
            submission: "sent".into(),
            updated_at: sent_at,
            version: row.version + 1,
            ..row
        };
        let call = RefundCall {
            refund_id: id.clone(),
            provider_reference: row.provider_reference.clone(),
            transaction_no: Some(row.transaction_no.clone()).filter(|t| !t.is_empty()),
            reference: row.reference.clone(),
            amount: req.amount,
            currency: req.currency,
            settle_currency: req.settle_currency,
        };
        let answer = handle.client.refund(&call).await;
        let policy = self.reconcile;
        let updated = self
            .store
            .update_refund(&id, Some(&row), |current| {
                let now = now_ms();
                let mut u =
                    self.with_receipt(current, apply_answer(current, &answer, now, &policy));
                let mut after = current.clone();
                u.apply_to(&mut after);
                u.response_code = Some(201);
                u.response_body = serde_json::to_string(&RefundObject::from(&after)).ok();
                u.inflight_until = None;
                Some(u)
            })
            .await?;
        let (row, _) =
            updated.ok_or_else(|| StoreError::Corrupt(format!("refund {id} vanished")))?;
        Ok(Created::New(row))
    }

    /// Asks the provider for a refund's status and applies the answer.
    pub async fn sync(&self, row: &RefundRow) -> Result<RefundRow, StoreError> {
        let Some(handle) = self.accounts.get(&row.account) else {
            return Ok(row.clone());
        };
        let answer = handle.client.refund_status(&status_query(row)).await;
        let policy = self.reconcile;
        let updated = self
            .store
            .update_refund(&row.id, Some(row), |current| {
                let u =
                    self.with_receipt(current, apply_answer(current, &answer, now_ms(), &policy));
                (u != RefundUpdate::from_row(current, u.updated_at)).then_some(u)
            })
            .await?;
        Ok(updated.map(|(r, _)| r).unwrap_or_else(|| row.clone()))
    }
}

pub fn status_query(row: &RefundRow) -> StatusQuery {
    StatusQuery {
        refund_id: row.id.clone(),
        provider_reference: row.provider_reference.clone(),
        provider_refund_id: row.provider_refund_id.clone(),
        transaction_no: Some(row.transaction_no.clone()).filter(|t| !t.is_empty()),
        reference: row.reference.clone(),
    }
}

/// 20 upper-case alphanumerics: valid as Pay10's REFUND_ORDER_ID (6-20) and
/// Pockyt's refundReference, unique per refund (ULID time + randomness).
fn provider_reference() -> String {
    let u = ulid::Ulid::new().to_string();
    format!("{}{}", &u[..10], &u[16..])
}

/// Failure codes the POS can act on, from the provider's answer.
fn failure_code(provider: &str, code: Option<&str>) -> &'static str {
    match (provider, code.unwrap_or("")) {
        ("pay10", "013" | "014" | "016") | ("pockyt", "000022") => "amount_exceeds_refundable",
        ("pay10", "300" | "323" | "324") | ("pockyt", "000000" | "000030") => {
            "provider_configuration_error"
        }
        ("pay10", "015" | "302") | ("pockyt", "000021") => "transaction_not_found",
        _ => "provider_declined",
    }
}

/// The update a provider answer makes to a refund, through the state machine.
pub fn apply_answer(
    current: &RefundRow,
    answer: &ProviderAnswer,
    now: i64,
    policy: &reconcile::Policy,
) -> RefundUpdate {
    let mut u = RefundUpdate::from_row(current, now);
    let status = Status::parse(&current.status).unwrap_or(Status::Pending);
    if answer.provider_refund_id.is_some() && u.provider_refund_id.is_none() {
        u.provider_refund_id = answer.provider_refund_id.clone();
    }
    match decide(status, answer.outcome) {
        Decision::Move(next) => {
            u.status = next.as_str().into();
            u.provider_status = answer.provider_status.clone().or(u.provider_status);
            u.provider_code = answer.provider_code.clone().or(u.provider_code);
            u.provider_message = answer.message.clone();
            if next == Status::Failed {
                u.failure_code =
                    Some(failure_code(&current.provider, answer.provider_code.as_deref()).into());
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
