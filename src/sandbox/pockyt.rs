//! The Pockyt simulator: `/sandbox/pockyt/...`.

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

const SIGN_FIELD: &str = "verifySign";

pub(super) fn routes() -> Router<Sandbox> {
    Router::new()
        .route("/sandbox/pockyt/payments", post(create_payment))
        .route("/sandbox/pockyt/payments/bulk", post(create_payments_bulk))
        .route(
            "/sandbox/pockyt/app-data-search/v3/tran-query",
            post(tran_query),
        )
        .route("/sandbox/pockyt/app-data-search/v3/refund", post(refund))
        .route(
            "/sandbox/pockyt/app-data-search/v3/trans-list",
            post(trans_list),
        )
}

#[derive(Deserialize)]
struct NewPayment {
    amount: String,
    currency: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    settle_currency: Option<String>,
    #[serde(default)]
    reference: Option<String>,
}

async fn create_payment(State(sb): State<Sandbox>, body: Bytes) -> Response {
    let Ok(p) = serde_json::from_slice::<NewPayment>(&body) else {
        return bad_request(
            "body must be {\"amount\":\"10.00\",\"currency\":\"USD\",\"status\":\"success\"}",
        );
    };
    let Ok(currency) = Currency::from_code(&p.currency) else {
        return bad_request("unknown currency");
    };
    let settle_currency = match p.settle_currency.as_deref().map(Currency::from_code) {
        None => Currency::from_code("USD").expect("USD"),
        Some(Ok(c)) => c,
        Some(Err(_)) => return bad_request("unknown settle_currency"),
    };
    let Ok(amount) = currency.parse_amount(&p.amount) else {
        return bad_request(
            "amount must be a positive decimal string in the currency's minor digits",
        );
    };
    let transaction_no = random_digits(18);
    let sale = SbSale {
        transaction_no: transaction_no.clone(),
        reference: p
            .reference
            .unwrap_or_else(|| format!("sb{}", random_digits(14))),
        amount,
        currency,
        settle_currency,
        status: p.status.unwrap_or_else(|| "success".into()),
        refunds: vec![],
    };
    let out = json!({
        "transactionNo": sale.transaction_no,
        "reference": sale.reference,
        "amount": currency.format(amount),
        "currency": currency,
        "status": sale.status,
    });
    let mut b = sb.lock();
    if b.pockyt.by_reference.contains_key(&sale.reference) {
        return bad_request("reference already used");
    }
    b.pockyt.insert(sale);
    drop(b);
    sb.mark_changed();
    (StatusCode::CREATED, Json(out)).into_response()
}

/// Creates `count` successful sales at once (load tests need thousands).
async fn create_payments_bulk(State(sb): State<Sandbox>, body: Bytes) -> Response {
    let p = match BulkSales::read(&body) {
        Ok(p) => p,
        Err(wrong) => return bad_request(wrong),
    };
    let (amount, currency) = (p.amount, p.currency);
    let usd = Currency::from_code("USD").expect("USD");
    let mut out = Vec::with_capacity(p.count);
    let mut b = sb.lock();
    for _ in 0..p.count {
        let sale = SbSale {
            transaction_no: random_digits(18),
            reference: format!("sb{}", random_digits(14)),
            amount,
            currency,
            settle_currency: usd,
            status: "success".into(),
            refunds: vec![],
        };
        out.push(sale.transaction_no.clone());
        b.pockyt.insert(sale);
    }
    drop(b);
    sb.mark_changed();
    (StatusCode::CREATED, Json(json!({ "transactionNos": out }))).into_response()
}

fn envelope(code: &str, msg: &str) -> Response {
    Json(json!({ "ret_code": code, "ret_msg": msg })).into_response()
}

/// Reads a signed request the way Pockyt does: JSON fields as strings, the
/// signature and the merchant/store checked before anything else.
// The error is the provider's answer itself; it is built once per refused request.
#[allow(clippy::result_large_err)]
fn authenticate(sb: &Sandbox, body: &[u8]) -> Result<BTreeMap<String, String>, Response> {
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
        return Err((
            StatusCode::BAD_REQUEST,
            Json(json!({"ret_code": "000023", "retMsg": "data error : body"})),
        )
            .into_response());
    };
    let fields: BTreeMap<String, String> = obj
        .into_iter()
        .filter_map(|(k, v)| match v {
            Value::String(s) => Some((k, s)),
            Value::Number(n) => Some((k, n.to_string())),
            _ => None,
        })
        .collect();
    if !fields.contains_key(SIGN_FIELD) {
        return Err((
            StatusCode::BAD_REQUEST,
            Json(json!({"ret_code": "000020", "retMsg": "data error : verifySign is required"})),
        )
            .into_response());
    }
    let c = &sb.config;
    if fields.get("merchantNo") != Some(&c.pockyt_merchant_no)
        || fields.get("storeNo") != Some(&c.pockyt_store_no)
    {
        return Err(envelope(
            "000030",
            "no rights: unknown merchantNo or storeNo",
        ));
    }
    let pairs: Vec<(String, String)> = fields.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let received = fields.get(SIGN_FIELD).map(String::as_str).unwrap_or("");
    let verified = [false, true]
        .iter()
        .any(|&empty| sign::same(&sign::pockyt(&pairs, &c.pockyt_token, empty), received));
    if !verified {
        return Err((
            StatusCode::BAD_REQUEST,
            Json(json!({"ret_code": "000000", "retMsg": "data error : verifySign"})),
        )
            .into_response());
    }
    Ok(fields)
}

/// `refundInfo` in the shapes Pockyt's servers and SDKs have used: a list or
/// (one refund, older servers) a single object; the id as
/// `refundTransactionId` or (older Go SDK) `refundYuansferId`; and a `status`
/// that the published shape does not carry, present or not.
fn refund_info(sale: &SbSale) -> Value {
    let old_name = coin();
    let with_status = coin();
    let list: Vec<Value> = sale
        .refunds
        .iter()
        .map(|r| {
            let mut e = json!({
                "refundReference": r.refund_reference,
                "refundAmount": sale.currency.format(r.amount),
                "currency": sale.currency,
                "settleCurrency": sale.settle_currency,
            });
            let id_key = if old_name {
                "refundYuansferId"
            } else {
                "refundTransactionId"
            };
            e[id_key] = json!(r.provider_refund_id);
            if with_status {
                e["status"] = json!(r.state);
            }
            e
        })
        .collect();
    match list.as_slice() {
        [one] if coin() => one.clone(),
        _ => Value::Array(list),
    }
}

/// A refund is a transaction of its own: tran-query by its id answers with
/// `transactionType` `refund` and its status.
fn refund_transaction(sale: &SbSale, refund: &SbRefund) -> Value {
    json!({
        "transactionNo": refund.provider_refund_id,
        "reference": refund.refund_reference,
        "amount": sale.currency.format(refund.amount),
        "currency": sale.currency,
        "settleCurrency": sale.settle_currency,
        "status": refund.state,
        "transactionType": "refund",
        "originalTransactionNo": sale.transaction_no,
    })
}

async fn tran_query(State(sb): State<Sandbox>, body: Bytes) -> Response {
    let fields = match authenticate(&sb, &body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let (t, r) = (fields.get("transactionNo"), fields.get("reference"));
    if t.is_none() && r.is_none() {
        return envelope(
            "000020",
            "required parameter missing: transactionNo or reference",
        );
    }
    let b = sb.lock();
    let refund = t.and_then(|t| {
        let sale = b.pockyt.sales.get(b.pockyt.refund_sale.get(t)?)?;
        sale.refunds
            .iter()
            .find(|x| &x.provider_refund_id == t)
            .map(|x| (sale, x))
    });
    if let Some((sale, refund)) = refund {
        return Json(json!({
            "ret_code": "000100",
            "ret_msg": "query success ",
            "result": refund_transaction(sale, refund),
        }))
        .into_response();
    }
    let Some(sale) = b.pockyt.find(t.map(String::as_str), r.map(String::as_str)) else {
        return envelope("000021", "parameter matches no record");
    };
    Json(json!({
        "ret_code": "000100",
        "ret_msg": "query success ",
        "result": {
            "transactionNo": sale.transaction_no,
            "reference": sale.reference,
            "amount": sale.currency.format(sale.amount),
            "currency": sale.currency,
            "settleCurrency": sale.settle_currency,
            "status": sale.status,
            "transactionType": "payment",
            "refundInfo": refund_info(sale),
        }
    }))
    .into_response()
}

/// The transaction list: the refunds made on the dates `startDate` to
/// `endDate` (`YYYYMMDD`, UTC here; at most 15 days), as Pockyt's
/// "Transaction Object"s. Shaped at random as the v3 SDKs read it
/// (`result.transactions`) or as the v2 ones did (top-level
/// `transactions` and `size`).
async fn trans_list(State(sb): State<Sandbox>, body: Bytes) -> Response {
    let fields = match authenticate(&sb, &body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let date = |k: &str| {
        let v = fields.get(k)?;
        (v.len() == 8 && v.bytes().all(|b| b.is_ascii_digit()))
            .then(|| {
                time::Date::parse(v, time::macros::format_description!("[year][month][day]")).ok()
            })
            .flatten()
    };
    let (Some(start), Some(end)) = (fields.get("startDate"), fields.get("endDate")) else {
        return envelope("000020", "required parameter missing: startDate, endDate");
    };
    let _ = (start, end);
    let (Some(start), Some(end)) = (date("startDate"), date("endDate")) else {
        return envelope(
            "000023",
            "invalid parameter value: startDate and endDate are YYYYMMDD",
        );
    };
    if end < start {
        return envelope("000023", "endDate should be later than startDate");
    }
    if (end - start).whole_days() >= 15 {
        return envelope("000023", "endDate cannot be 15 days greater than startDate");
    }
    let b = sb.lock();
    let c = &sb.config;
    let mut list: Vec<Value> = vec![];
    for sale in b.pockyt.sales.values() {
        for r in &sale.refunds {
            let Ok(at) =
                time::OffsetDateTime::from_unix_timestamp_nanos(r.created_ms as i128 * 1_000_000)
            else {
                continue;
            };
            if at.date() < start || at.date() > end {
                continue;
            }
            let stamp = at
                .format(time::macros::format_description!(
                    "[year]-[month]-[day] [hour]:[minute]:[second]"
                ))
                .unwrap_or_default();
            list.push(json!({
                "transactionNo": r.provider_refund_id,
                "reference": r.refund_reference,
                "originalTransactionNo": sale.transaction_no,
                "merchantNo": c.pockyt_merchant_no,
                "storeNo": c.pockyt_store_no,
                "storeAdminNo": null,
                "amount": sale.currency.format(r.amount),
                "refundAmount": "0.00",
                "voidAmount": "0.00",
                "currency": sale.currency,
                "settleCurrency": sale.settle_currency,
                "transactionType": "refund",
                "transactionStatus": r.state,
                "createTime": stamp,
                "paymentTime": stamp,
                "vendor": "sandbox",
            }));
        }
    }
    drop(b);
    let size = list.len();
    if coin() {
        Json(json!({
            "ret_code": "000100",
            "ret_msg": "query success ",
            "result": { "transactions": list, "size": size },
        }))
        .into_response()
    } else {
        Json(json!({
            "ret_code": "000100",
            "ret_msg": "query success ",
            "transactions": list,
            "size": size,
        }))
        .into_response()
    }
}

async fn refund(State(sb): State<Sandbox>, body: Bytes) -> Response {
    // Magic 95: the provider takes the request, works on it past the
    // caller's timeout, and only then applies it (until then a query finds
    // no such refund) and answers. Like a real server, it goes on when the
    // caller hangs up.
    let late = authenticate(&sb, &body).ok().is_some_and(|f| {
        match (f.get("refundAmount"), f.get("currency")) {
            (Some(a), Some(c)) => Currency::from_code(c)
                .ok()
                .and_then(|c| c.parse_amount(a).ok())
                .is_some_and(|a| magic(a) == Magic::LateApply),
            _ => false,
        }
    });
    if late {
        let task = tokio::spawn(async move {
            tokio::time::sleep(sb.config.slow_response).await;
            apply_refund(sb, body).await
        });
        return task.await.unwrap_or_else(|_| unavailable());
    }
    apply_refund(sb, body).await
}

async fn apply_refund(sb: Sandbox, body: Bytes) -> Response {
    let fields = match authenticate(&sb, &body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let get = |k: &str| fields.get(k).map(String::as_str);
    let (Some(amount), Some(currency)) = (get("refundAmount"), get("currency")) else {
        return envelope(
            "000020",
            "required parameter missing: refundAmount, currency",
        );
    };

    if get("transactionNo").is_none() && get("reference").is_none() {
        return envelope(
            "000020",
            "required parameter missing: transactionNo or reference",
        );
    }
    let (sale, refund, state, case) = {
        let mut guard = sb.lock();
        let books = &mut *guard;
        let Some(key) = books
            .pockyt
            .find(get("transactionNo"), get("reference"))
            .map(|s| s.transaction_no.clone())
        else {
            return envelope("000021", "parameter matches no record");
        };
        let sale = books.pockyt.sales.get_mut(&key).expect("found above");
        if sale.status != "success" {
            return envelope(
                "000040",
                "transaction status error: only successful transactions can be refunded",
            );
        }
        if currency != sale.currency.code()
            || get("settleCurrency").is_some_and(|s| s != sale.settle_currency.code())
        {
            return envelope("000022", "parameters do not match: currency");
        }
        let Ok(amount) = sale.currency.parse_amount(amount) else {
            return envelope("000023", "invalid parameter value: refundAmount");
        };
        let reference = get("refundReference").map(str::to_string);
        if reference.is_some() && sale.refunds.iter().any(|r| r.refund_reference == reference) {
            return envelope(
                "000023",
                "invalid parameter value: duplicate refundReference",
            );
        }
        let case = magic(amount);
        match case {
            Magic::Unavailable => return unavailable(),
            Magic::Decline => {
                return envelope("000040", "transaction status error: refund declined")
            }
            _ => {}
        }
        if sale.refunded().get() + amount.get() > sale.amount.get() {
            return envelope(
                "000022",
                "parameters do not match: refundAmount exceeds the refundable amount",
            );
        }
        let state = if case == Magic::PendingThenSuccess {
            RefundState::Pending
        } else {
            RefundState::Success
        };
        let refund = SbRefund {
            provider_refund_id: random_digits(18),
            refund_reference: reference,
            amount,
            state,
            created_ms: super::now_ms(),
        };
        sale.refunds.push(refund.clone());
        books.pockyt.refunds_applied += 1;
        books.pockyt.refund_sale.insert(
            refund.provider_refund_id.clone(),
            sale.transaction_no.clone(),
        );
        (sale.clone(), refund, state, case)
    };
    sb.mark_changed();

    if state == RefundState::Success {
        sb.send_ipn("/ipn/pockyt", ipn(&sb, &sale, &refund));
    } else {
        let sb2 = sb.clone();
        let (transaction_no, id) = (
            sale.transaction_no.clone(),
            refund.provider_refund_id.clone(),
        );
        tokio::spawn(async move {
            tokio::time::sleep(sb2.config.pending_delay).await;
            let settled = sb2.lock().pockyt.settle(&transaction_no, &id);
            sb2.mark_changed();
            if let Some((sale, refund)) = settled {
                sb2.send_ipn("/ipn/pockyt", ipn(&sb2, &sale, &refund));
            }
        });
    }
    if case == Magic::SlowAnswer {
        tokio::time::sleep(sb.config.slow_response).await;
    }
    Json(json!({
        "result": {
            "amount": sale.currency.format(sale.amount),
            "currency": sale.currency,
            "reference": sale.reference,
            "refundAmount": sale.currency.format(refund.amount),
            "refundReference": refund.refund_reference,
            "refundTransactionNo": refund.provider_refund_id,
            "settleCurrency": sale.settle_currency,
            "status": refund.state,
            "transactionNo": sale.transaction_no,
        },
        "ret_msg": "refund success ",
        "ret_code": "000100",
    }))
    .into_response()
}

/// A signed, form-encoded refund IPN.
fn ipn(sb: &Sandbox, sale: &SbSale, refund: &SbRefund) -> IpnBody {
    // Pockyt stamps IPNs in UTC+8.
    let now = time::OffsetDateTime::now_utc().to_offset(time::macros::offset!(+8));
    let stamp = now
        .format(time::macros::format_description!(
            "[year][month][day][hour][minute][second]"
        ))
        .unwrap_or_default();
    let status = match refund.state {
        RefundState::Success => "success",
        RefundState::Pending => "pending",
        RefundState::Failed => "failed",
    };
    let mut fields: Vec<(&str, String)> = vec![
        ("transactionNo", sale.transaction_no.clone()),
        ("reference", sale.reference.clone()),
        ("amount", sale.currency.format(sale.amount)),
        ("currency", sale.currency.code().into()),
        ("settleCurrency", sale.settle_currency.code().into()),
        ("refundTransactionNo", refund.provider_refund_id.clone()),
        ("refundAmount", sale.currency.format(refund.amount)),
        ("status", status.into()),
        ("time", stamp),
    ];
    if let Some(r) = &refund.refund_reference {
        fields.push(("refundReference", r.clone()));
    }
    // Some servers send optional fields empty; the SDKs sign those as `key=&`
    // (PHP, Java, Python) or leave them out (Go, JS).
    if coin() {
        fields.push(("note", String::new()));
        fields.push(("vendorId", String::new()));
    }
    let pairs: Vec<(String, String)> = fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let sign = sign::pockyt(&pairs, &sb.config.pockyt_token, coin());
    fields.push((SIGN_FIELD, sign));
    IpnBody::Form(serde_urlencoded::to_string(&fields).expect("strings encode"))
}
