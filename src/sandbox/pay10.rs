//! The Pay10 simulator: `/sandbox/pay10/...`.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    bad_request, coin, magic, random_digits, sign, unavailable, BulkSales, IpnBody, Magic,
    RefundState, Sandbox, SbRefund, SbSale,
};
use crate::money::Currency;
use crate::providers::pay10::crypto;
use crate::providers::pay10::wire::{EncEnvelope, RequeryRequest};

pub(super) fn routes() -> Router<Sandbox> {
    Router::new()
        .route("/sandbox/pay10/payments", post(create_payment))
        .route("/sandbox/pay10/payments/bulk", post(create_payments_bulk))
        .route("/sandbox/pay10/pgws/merchant/refund", post(refund))
        .route("/sandbox/pay10/pgws/refund/requery", post(requery))
        .route("/sandbox/pay10/pgws/transact", post(status_enquiry))
}

#[derive(Deserialize)]
struct NewPayment {
    amount: String,
    currency: String,
    #[serde(default, rename = "ORDER_ID", alias = "order_id")]
    order_id: Option<String>,
    /// `Captured` (default), or another Pay10 status (`Failed`, `Pending`).
    #[serde(default)]
    status: Option<String>,
}

/// Creates `count` captured sales at once (load tests need thousands).
async fn create_payments_bulk(State(sb): State<Sandbox>, body: Bytes) -> Response {
    let p = match BulkSales::read(&body) {
        Ok(p) => p,
        Err(wrong) => return bad_request(wrong),
    };
    let (amount, currency) = (p.amount, p.currency);
    let mut out = Vec::with_capacity(p.count);
    let mut b = sb.lock();
    for _ in 0..p.count {
        let sale = SbSale {
            transaction_no: random_digits(16),
            reference: format!("PAY10_{}", random_digits(12)),
            amount,
            currency,
            settle_currency: currency,
            status: "Captured".into(),
            refunds: vec![],
        };
        out.push(json!({"PG_REF_NUM": sale.transaction_no, "ORDER_ID": sale.reference}));
        b.pay10.insert(sale);
    }
    drop(b);
    sb.mark_changed();
    (StatusCode::CREATED, Json(json!({ "payments": out }))).into_response()
}

async fn create_payment(State(sb): State<Sandbox>, body: Bytes) -> Response {
    let Ok(p) = serde_json::from_slice::<NewPayment>(&body) else {
        return bad_request("body must be {\"amount\":\"100.00\",\"currency\":\"AED\"}");
    };
    let Ok(currency) = Currency::from_code(&p.currency) else {
        return bad_request("unknown currency");
    };
    let Ok(amount) = currency.parse_amount(&p.amount) else {
        return bad_request(
            "amount must be a positive decimal string in the currency's minor digits",
        );
    };
    let sale = SbSale {
        transaction_no: random_digits(16),
        reference: p
            .order_id
            .unwrap_or_else(|| format!("PAY10_{}", random_digits(12))),
        amount,
        currency,
        settle_currency: currency,
        status: p.status.unwrap_or_else(|| "Captured".into()),
        refunds: vec![],
    };
    let out = json!({
        "ORDER_ID": sale.reference,
        "PG_REF_NUM": sale.transaction_no,
        "AMOUNT": amount.get().to_string(),
        "CURRENCY_CODE": currency.numeric(),
        "amount": currency.format(amount),
        "currency": currency,
    });
    let mut b = sb.lock();
    if b.pay10.by_reference.contains_key(&sale.reference) {
        return bad_request("ORDER_ID already used");
    }
    b.pay10.insert(sale);
    drop(b);
    sb.mark_changed();
    (StatusCode::CREATED, Json(out)).into_response()
}

fn plain(code: &str, message: &str) -> Response {
    Json(json!({ "RESPONSE_CODE": code, "RESPONSE_MESSAGE": message })).into_response()
}

fn now_stamp() -> String {
    time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second]"
        ))
        .unwrap_or_default()
}

fn refund_fields(
    sb: &Sandbox,
    sale: &SbSale,
    refund: &SbRefund,
    code: &str,
    message: &str,
) -> BTreeMap<String, String> {
    let status = match refund.state {
        RefundState::Success => "Captured",
        RefundState::Pending => "REFUND_INITIATED",
        RefundState::Failed => "Failed",
    };
    let mut f = BTreeMap::new();
    for (k, v) in [
        ("PAY_ID", sb.config.pay10_pay_id.clone()),
        ("RESPONSE_CODE", code.to_string()),
        ("RESPONSE_MESSAGE", message.to_string()),
        ("PG_TXN_MESSAGE", message.to_string()),
        ("STATUS", status.to_string()),
        ("PG_REF_NUM", sale.transaction_no.clone()),
        ("ORDER_ID", sale.reference.clone()),
        (
            "REFUND_ORDER_ID",
            refund.refund_reference.clone().unwrap_or_default(),
        ),
        ("AMOUNT", format!("{:03}", refund.amount.get())),
        ("CURRENCY_CODE", sale.currency.numeric()),
        ("TXNTYPE", "REFUND".to_string()),
        ("REFUND_FLAG", "R".to_string()),
        ("RESPONSE_DATE_TIME", now_stamp()),
    ] {
        f.insert(k.to_string(), v);
    }
    f
}

fn encrypted(sb: &Sandbox, fields: &BTreeMap<String, String>) -> Response {
    // The sandbox plays the provider: it joins what it has, as a server would
    // (the gateway's own builder refuses delimiters; a provider may not).
    let text = fields
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("~");
    encrypted_text(sb, &text)
}

fn encrypted_text(sb: &Sandbox, text: &str) -> Response {
    Json(EncEnvelope {
        pay_id: sb.config.pay10_pay_id.clone(),
        encdata: sb.config.pay10_key.encrypt(text),
    })
    .into_response()
}

fn encrypted_error(sb: &Sandbox, code: &str, message: &str, status: &str) -> Response {
    let mut f = BTreeMap::new();
    f.insert("RESPONSE_CODE".to_string(), code.to_string());
    f.insert("RESPONSE_MESSAGE".to_string(), message.to_string());
    f.insert("STATUS".to_string(), status.to_string());
    f.insert("TXNTYPE".to_string(), "REFUND".to_string());
    f.insert("RESPONSE_DATE_TIME".to_string(), now_stamp());
    encrypted(sb, &f)
}

async fn refund(State(sb): State<Sandbox>, body: Bytes) -> Response {
    let Ok(env) = serde_json::from_slice::<EncEnvelope>(&body) else {
        return plain("300", "Invalid request");
    };
    if env.pay_id != sb.config.pay10_pay_id {
        return plain("324", "Invalid PAY_ID");
    }
    // What Pay10 does when the request does not decrypt under the merchant's key.
    let Ok(text) = sb.config.pay10_key.decrypt(&env.encdata) else {
        return encrypted_text(&sb, crypto::PROVIDER_ERROR_TEXT);
    };
    let Some(req) = crypto::decode_pairs(&text) else {
        return encrypted_text(&sb, crypto::PROVIDER_ERROR_TEXT);
    };
    let get = |k: &str| req.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let required = [
        "PAY_ID",
        "ORDER_ID",
        "AMOUNT",
        "CURRENCY_CODE",
        "TXNTYPE",
        "PG_REF_NUM",
        "REFUND_FLAG",
        "REFUND_ORDER_ID",
    ];
    if required.iter().any(|k| get(k).is_none())
        || get("TXNTYPE") != Some("REFUND")
        || get("REFUND_FLAG") != Some("R")
    {
        return encrypted_error(&sb, "300", "Invalid request", "Failed");
    }
    let digits = |k: &str, lengths: std::ops::RangeInclusive<usize>| {
        get(k).is_some_and(|v| lengths.contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit()))
    };
    if !digits("PAY_ID", 16..=16) || get("PAY_ID") != Some(sb.config.pay10_pay_id.as_str()) {
        return encrypted_error(&sb, "324", "Invalid PAY_ID", "Failed");
    }
    if !digits("CURRENCY_CODE", 3..=3) {
        return encrypted_error(&sb, "300", "Invalid CURRENCY_CODE", "Failed");
    }
    if !digits("AMOUNT", 3..=12) {
        return encrypted_error(&sb, "300", "Invalid amount", "Failed");
    }
    let refund_order_id = get("REFUND_ORDER_ID").unwrap_or_default().to_string();
    if !(6..=20).contains(&refund_order_id.len())
        || !refund_order_id.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return encrypted_error(&sb, "300", "Invalid REFUND_ORDER_ID", "Failed");
    }
    let amount_text = get("AMOUNT").unwrap_or_default();
    let Some(amount) = amount_text.parse::<i64>().ok().filter(|a| *a > 0) else {
        return encrypted_error(&sb, "300", "Invalid AMOUNT", "Failed");
    };
    let Some(amount) = crate::money::Minor::new(amount) else {
        return encrypted_error(&sb, "300", "Invalid AMOUNT", "Failed");
    };

    let (sale, refund, state, case) = {
        let mut guard = sb.lock();
        let books = &mut *guard;
        let pg_ref = get("PG_REF_NUM").unwrap_or_default().to_string();
        let Some(sale) = books.pay10.sales.get_mut(&pg_ref) else {
            return encrypted_error(&sb, "302", "No such transaction", "Failed");
        };
        if get("ORDER_ID") != Some(sale.reference.as_str()) {
            return encrypted_error(&sb, "015", "No such transaction", "Failed");
        }
        if get("CURRENCY_CODE") != Some(sale.currency.numeric().as_str()) {
            return encrypted_error(
                &sb,
                "021",
                "Invalid currency for this transaction",
                "Failed",
            );
        }
        if sale
            .refunds
            .iter()
            .any(|r| r.refund_reference.as_deref() == Some(refund_order_id.as_str()))
        {
            return encrypted_error(&sb, "019", "Duplicate refund order id", "Failed");
        }
        let case = magic(amount);
        match case {
            Magic::Unavailable => return unavailable(),
            Magic::Decline => return encrypted_error(&sb, "004", "Refund Declined", "Declined"),
            _ => {}
        }
        if sale.refunded().get() + amount.get() > sale.amount.get() {
            return encrypted_error(
                &sb,
                "013",
                "Total refund amount greater than sale amount",
                "REFUND_REJECTED",
            );
        }
        let state = if case == Magic::PendingThenSuccess {
            RefundState::Pending
        } else {
            RefundState::Success
        };
        let refund = SbRefund {
            provider_refund_id: refund_order_id.clone(),
            refund_reference: Some(refund_order_id.clone()),
            amount,
            state,
            created_ms: super::now_ms(),
        };
        sale.refunds.push(refund.clone());
        books.pay10.refunds_applied += 1;
        (sale.clone(), refund, state, case)
    };
    sb.mark_changed();

    if state == RefundState::Success {
        sb.send_ipn("/ipn/pay10", webhook(&sb, &sale, &refund));
    } else {
        let sb2 = sb.clone();
        let (transaction_no, id) = (sale.transaction_no.clone(), refund_order_id.clone());
        tokio::spawn(async move {
            tokio::time::sleep(sb2.config.pending_delay).await;
            let settled = sb2.lock().pay10.settle(&transaction_no, &id);
            sb2.mark_changed();
            if let Some((sale, refund)) = settled {
                sb2.send_ipn("/ipn/pay10", webhook(&sb2, &sale, &refund));
            }
        });
    }
    if case == Magic::SlowAnswer {
        tokio::time::sleep(sb.config.slow_response).await;
    }
    let message = if state == RefundState::Success {
        "SUCCESS"
    } else {
        "Pending"
    };
    encrypted(&sb, &refund_fields(&sb, &sale, &refund, "000", message))
}

fn pairs(fields: &BTreeMap<String, String>) -> Vec<(String, String)> {
    fields.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Requery answers are not signed by Pay10; some carry a HASH field anyway
/// (the request's own, echoed back), which a client must not take as one.
fn answer(mut fields: BTreeMap<String, String>, echo: &str) -> Response {
    if coin() {
        fields.insert("HASH".into(), echo.to_string());
    }
    Json(fields).into_response()
}

/// The status enquiry (`TXNTYPE=STATUS`): the sale by its `ORDER_ID`, with
/// its own amount and currency (whatever `AMOUNT` asked: the provider's
/// word is what the gateway pins).
async fn status_enquiry(State(sb): State<Sandbox>, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<crate::providers::pay10::wire::StatusEnquiry>(&body)
    else {
        return plain("300", "Invalid request");
    };
    if req.pay_id != sb.config.pay10_pay_id {
        return plain("324", "Invalid PAY_ID");
    }
    let hashed: Vec<(String, String)> = [
        ("PAY_ID", &req.pay_id),
        ("ORDER_ID", &req.order_id),
        ("AMOUNT", &req.amount),
        ("CURRENCY_CODE", &req.currency_code),
        ("TXNTYPE", &req.txn_type),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if req.txn_type != "STATUS" {
        return plain("300", "Invalid TXNTYPE");
    }
    if !sign::same(&sign::pay10(&hashed, &sb.config.pay10_salt), &req.hash) {
        return plain("300", "Invalid Hash");
    }
    let b = sb.lock();
    let sale = b
        .pay10
        .by_reference
        .get(&req.order_id)
        .and_then(|t| b.pay10.sales.get(t))
        .cloned();
    drop(b);
    let Some(sale) = sale else {
        return plain("300", "NO DATA FOUND");
    };
    let mut f = BTreeMap::new();
    for (k, v) in [
        ("PAY_ID", sb.config.pay10_pay_id.clone()),
        ("ORDER_ID", sale.reference.clone()),
        ("PG_REF_NUM", sale.transaction_no.clone()),
        ("AMOUNT", format!("{:03}", sale.amount.get())),
        ("CURRENCY_CODE", sale.currency.numeric()),
        ("STATUS", sale.status.clone()),
        ("RESPONSE_CODE", "000".to_string()),
        ("RESPONSE_MESSAGE", "SUCCESS".to_string()),
        ("TXNTYPE", "SALE".to_string()),
        ("RESPONSE_DATE_TIME", now_stamp()),
    ] {
        f.insert(k.to_string(), v);
    }
    Json(f).into_response()
}

async fn requery(State(sb): State<Sandbox>, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<RequeryRequest>(&body) else {
        return plain("300", "Invalid request");
    };
    if req.pay_id != sb.config.pay10_pay_id {
        return plain("324", "Invalid PAY_ID");
    }
    let hashed: Vec<(String, String)> = [
        ("PAY_ID", &req.pay_id),
        ("ORDER_ID", &req.order_id),
        ("REFUND_ORDER_ID", &req.refund_order_id),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if !sign::same(&sign::pay10(&hashed, &sb.config.pay10_salt), &req.hash) {
        // Pay10 answers a bad request hash with 300 and the request's HASH.
        let mut f = BTreeMap::new();
        f.insert("RESPONSE_CODE".to_string(), "300".to_string());
        f.insert("RESPONSE_MESSAGE".to_string(), "Invalid Hash".to_string());
        f.insert("HASH".to_string(), req.hash.clone());
        return Json(f).into_response();
    }
    let b = sb.lock();
    // Either of the sale's ids finds it (ORDER_ID, or PG_REF_NUM sent there).
    let found = b
        .pay10
        .by_reference
        .get(&req.order_id)
        .and_then(|t| b.pay10.sales.get(t))
        .or_else(|| b.pay10.sales.get(&req.order_id))
        .and_then(|sale| {
            sale.refunds
                .iter()
                .find(|r| r.refund_reference.as_deref() == Some(req.refund_order_id.as_str()))
                .map(|r| (sale.clone(), r.clone()))
        });
    drop(b);
    match found {
        Some((sale, refund)) => {
            let (code, message) = match refund.state {
                RefundState::Success => ("000", "SUCCESS"),
                RefundState::Pending => ("000", "Pending"),
                RefundState::Failed => ("004", "Declined"),
            };
            answer(refund_fields(&sb, &sale, &refund, code, message), &req.hash)
        }
        None => {
            // The published not-found shape.
            let mut f = BTreeMap::new();
            f.insert("PAY_ID".to_string(), req.pay_id);
            f.insert("ORDER_ID".to_string(), req.order_id);
            f.insert("REFUND_ORDER_ID".to_string(), req.refund_order_id);
            f.insert("RESPONSE_CODE".to_string(), "300".to_string());
            f.insert("RESPONSE_MESSAGE".to_string(), "NO DATA FOUND".to_string());
            answer(f, &req.hash)
        }
    }
}

/// A Pay10 webhook: the transaction's fields plus HASH, as plain JSON. Some
/// servers write AMOUNT as a decimal; the server adds CARD_ISSUER_BANK after
/// hashing (its merchant kit leaves it out of the check).
fn webhook(sb: &Sandbox, sale: &SbSale, refund: &SbRefund) -> IpnBody {
    let mut fields = refund_fields(sb, sale, refund, "000", "SUCCESS");
    if coin() {
        fields.insert("AMOUNT".into(), sale.currency.format(refund.amount));
    }
    let hash = sign::pay10(&pairs(&fields), &sb.config.pay10_salt);
    fields.insert("HASH".into(), hash);
    if coin() {
        fields.insert("CARD_ISSUER_BANK".into(), "SANDBOX BANK".into());
    }
    let obj: serde_json::Map<String, Value> = fields
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    IpnBody::Json(Value::Object(obj))
}
