//! Each adapter against the sandbox over a real socket, one test per outcome,
//! and transport faults the sandbox cannot make against wiremock / a raw socket.

use std::time::Duration;

use crate::common::{fast_sandbox, spawn_sandbox};
use refund_gateway::money::{Currency, Minor};
use refund_gateway::providers::pay10::{Pay10Account, Pay10Client};
use refund_gateway::providers::pockyt::{PockytAccount, PockytClient};
use refund_gateway::providers::{
    http_client, HttpSettings, ProviderClient, RefundCall, SaleLookup, StatusQuery,
};
use refund_gateway::sandbox::{demo_credentials as creds, demo_sales, SandboxConfig};
use refund_gateway::types::Outcome;
use secrecy::SecretString;
use serde_json::{json, Value};

fn http(timeout_ms: u64) -> reqwest::Client {
    http_client(HttpSettings {
        connect_timeout: Duration::from_millis(500),
        timeout: Duration::from_millis(timeout_ms),
    })
}

fn pockyt(base: &str, token: &str) -> PockytClient {
    PockytClient::new(
        http(600),
        PockytAccount {
            base_url: format!("{base}/sandbox/pockyt"),
            merchant_no: creds::POCKYT_MERCHANT_NO.into(),
            store_no: creds::POCKYT_STORE_NO.into(),
            token: SecretString::from(token.to_string()),
        },
    )
}

fn pay10_with(base: &str, pay_id: &str, salt: &str, key: &str) -> Pay10Client {
    Pay10Client::new(
        http(600),
        Pay10Account {
            base_url: format!("{base}/sandbox/pay10"),
            pay_id: pay_id.into(),
            salt: SecretString::from(salt.to_string()),
            key: refund_gateway::providers::pay10::crypto::EncryptionKey::new(key).unwrap(),
        },
    )
}

fn pay10(base: &str) -> Pay10Client {
    pay10_with(
        base,
        creds::PAY10_PAY_ID,
        creds::PAY10_SALT,
        creds::PAY10_KEY,
    )
}

async fn sale(base: &str, provider: &str, body: Value) -> Value {
    crate::common::sale_at(&reqwest::Client::new(), base, provider, body).await
}

fn call(transaction_no: &str, reference: Option<&str>, amount: i64, currency: &str) -> RefundCall {
    let id = ulid::Ulid::new().to_string();
    RefundCall {
        refund_id: format!("rf_{id}"),
        provider_reference: format!("{}{}", &id[..10], &id[16..]),
        transaction_no: Some(transaction_no.into()),
        reference: reference.map(str::to_string),
        amount: Minor::new(amount).unwrap(),
        currency: Currency::from_code(currency).unwrap(),
        settle_currency: None,
    }
}

fn query_for(c: &RefundCall) -> StatusQuery {
    StatusQuery {
        refund_id: c.refund_id.clone(),
        provider_reference: c.provider_reference.clone(),
        provider_refund_id: None,
        transaction_no: c.transaction_no.clone(),
        reference: c.reference.clone(),
    }
}

/// Asks for the refund's status until it is no longer pending (5 s at most).
async fn settle(client: &ProviderClient, q: &StatusQuery) -> Outcome {
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let o = client.refund_status(q).await.outcome;
        if o != Outcome::Pending || tokio::time::Instant::now() > end {
            return o;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A sandbox on its own socket, a Pockyt client with the sandbox's credentials, and a 10.00 USD sale.
async fn pockyt_fixture() -> (
    String,
    refund_gateway::sandbox::Sandbox,
    PockytClient,
    String,
) {
    let (base, sb) = spawn_sandbox(fast_sandbox()).await;
    let client = pockyt(&base, creds::POCKYT_TOKEN);
    let s = sale(
        &base,
        "pockyt",
        json!({"amount": "10.00", "currency": "USD"}),
    )
    .await;
    (
        base,
        sb,
        client,
        s["transactionNo"].as_str().unwrap().to_string(),
    )
}

/// The same for Pay10: a 100.00 AED sale, returning (PG_REF_NUM, ORDER_ID).
async fn pay10_fixture() -> (
    String,
    refund_gateway::sandbox::Sandbox,
    Pay10Client,
    String,
    String,
) {
    let (base, sb) = spawn_sandbox(fast_sandbox()).await;
    let s = sale(
        &base,
        "pay10",
        json!({"amount": "100.00", "currency": "AED"}),
    )
    .await;
    let (pg, order) = (
        s["PG_REF_NUM"].as_str().unwrap().to_string(),
        s["ORDER_ID"].as_str().unwrap().to_string(),
    );
    (base.clone(), sb, pay10(&base), pg, order)
}

#[tokio::test]
async fn pockyt_sale_lookup() {
    let (_base, _sb, client, tx) = pockyt_fixture().await;
    match client.lookup_sale(Some(&tx), None).await {
        SaleLookup::Found(info) => assert_eq!(
            (info.amount.as_str(), info.status.as_str()),
            ("10.00", "success")
        ),
        other => panic!("{other:?}"),
    }
    let reference = match client.lookup_sale(Some(&tx), None).await {
        SaleLookup::Found(info) => info.reference.unwrap(),
        other => panic!("{other:?}"),
    };
    assert!(matches!(
        client.lookup_sale(None, Some(&reference)).await,
        SaleLookup::Found(_)
    ));
    assert_eq!(
        client.lookup_sale(Some("1"), None).await,
        SaleLookup::NotFound
    );
}

#[tokio::test]
async fn pockyt_success() {
    let (_base, sb, client, tx) = pockyt_fixture().await;
    let c = call(&tx, None, 100, "USD");
    let a = client.refund(&c).await;
    assert_eq!(a.outcome, Outcome::Succeeded, "{a:?}");
    assert_eq!(a.provider_code.as_deref(), Some("000100"));
    assert!(a.provider_refund_id.is_some());
    let st = client.refund_status(&query_for(&c)).await;
    assert_eq!(
        (st.outcome, st.provider_refund_id.clone()),
        (Outcome::Succeeded, a.provider_refund_id.clone())
    );
    assert_eq!(sb.refunded_total("pockyt", &tx), Some(100));
}

#[tokio::test]
async fn pockyt_pending_then_success() {
    let (_base, _sb, client, tx) = pockyt_fixture().await;
    let c = call(&tx, None, 194, "USD");
    assert_eq!(client.refund(&c).await.outcome, Outcome::Pending);
    let q = query_for(&c);
    assert_eq!(client.refund_status(&q).await.outcome, Outcome::Pending);
    let outcome = settle(&ProviderClient::from_connector(client.clone()), &q).await;
    assert_eq!(outcome, Outcome::Succeeded);
}

#[tokio::test]
async fn pockyt_decline() {
    let (_base, sb, client, tx) = pockyt_fixture().await;
    let a = client.refund(&call(&tx, None, 93, "USD")).await;
    assert_eq!(
        (a.outcome, a.provider_code.as_deref()),
        (Outcome::Failed, Some("000040"))
    );
    assert_eq!(sb.refunded_total("pockyt", &tx), Some(0));
}

#[tokio::test]
async fn pockyt_503_is_unknown_and_not_applied() {
    let (_base, sb, client, tx) = pockyt_fixture().await;
    let c = call(&tx, None, 92, "USD");
    assert_eq!(client.refund(&c).await.outcome, Outcome::Unknown);
    assert_eq!(
        client.refund_status(&query_for(&c)).await.outcome,
        Outcome::NotFound
    );
    assert_eq!(sb.refunded_total("pockyt", &tx), Some(0));
}

#[tokio::test]
async fn pockyt_timeout_is_unknown_but_applied() {
    let (_base, sb, client, tx) = pockyt_fixture().await;
    let c = call(&tx, None, 91, "USD");
    assert_eq!(client.refund(&c).await.outcome, Outcome::Unknown);
    assert_eq!(
        client.refund_status(&query_for(&c)).await.outcome,
        Outcome::Succeeded
    );
    assert_eq!(sb.refunded_total("pockyt", &tx), Some(91));
}

#[tokio::test]
async fn pockyt_wrong_credentials() {
    let (base, sb, _client, tx) = pockyt_fixture().await;
    // Pockyt's own error (HTTP 400, `retMsg`): a failure, nothing refunded.
    let wrong = pockyt(&base, "not-the-token");
    let a = wrong.refund(&call(&tx, None, 100, "USD")).await;
    assert_eq!(a.outcome, Outcome::Failed, "{a:?}");
    assert_eq!(a.message.as_deref(), Some("data error : verifySign"));
    assert!(matches!(
        wrong.lookup_sale(Some(&tx), None).await,
        SaleLookup::Unavailable(_)
    ));
    assert_eq!(sb.refunded_total("pockyt", &tx), Some(0));
}

#[tokio::test]
async fn pockyt_malformed_body_gets_the_provider_error() {
    let (base, _sb, _client, _tx) = pockyt_fixture().await;
    let raw = reqwest::Client::new()
        .post(format!("{base}/sandbox/pockyt/app-data-search/v3/refund"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 400);
    assert_eq!(raw.json::<Value>().await.unwrap()["ret_code"], "000023");
}

#[tokio::test]
async fn pockyt_over_refund_is_refused() {
    let (_base, sb, client, tx) = pockyt_fixture().await;
    assert_eq!(
        client.refund(&call(&tx, None, 600, "USD")).await.outcome,
        Outcome::Succeeded
    );
    let a = client.refund(&call(&tx, None, 401, "USD")).await;
    assert_eq!(
        (a.outcome, a.provider_code.as_deref()),
        (Outcome::Failed, Some("000022"))
    );
    assert_eq!(sb.refunded_total("pockyt", &tx), Some(600));
}

#[tokio::test]
async fn pockyt_refuses_unsuccessful_sales_and_currency_mismatch() {
    let (base, _sb) = spawn_sandbox(SandboxConfig::demo()).await;
    let client = pockyt(&base, creds::POCKYT_TOKEN);
    let a = client
        .refund(&call(
            demo_sales::POCKYT_PENDING_TRANSACTION_NO,
            None,
            100,
            "USD",
        ))
        .await;
    assert_eq!(
        (a.outcome, a.provider_code.as_deref()),
        (Outcome::Failed, Some("000040"))
    );
    let a = client
        .refund(&call(demo_sales::POCKYT_TRANSACTION_NO, None, 100, "EUR"))
        .await;
    assert_eq!(
        (a.outcome, a.provider_code.as_deref()),
        (Outcome::Failed, Some("000022"))
    );
}

#[tokio::test]
async fn pay10_success() {
    let (_base, sb, client, pg, order) = pay10_fixture().await;
    let c = call(&pg, Some(&order), 1000, "AED");
    let a = client.refund(&c).await;
    assert_eq!(
        (a.outcome, a.provider_status.as_deref()),
        (Outcome::Succeeded, Some("Captured")),
        "{a:?}"
    );
    assert_eq!(a.provider_code.as_deref(), Some("000"));
    assert_eq!(
        client.refund_status(&query_for(&c)).await.outcome,
        Outcome::Succeeded
    );
    assert_eq!(sb.refunded_total("pay10", &pg), Some(1000));
}

#[tokio::test]
async fn pay10_pending_then_success() {
    let (_base, _sb, client, pg, order) = pay10_fixture().await;
    let c = call(&pg, Some(&order), 94, "AED");
    let a = client.refund(&c).await;
    assert_eq!(
        (a.outcome, a.provider_status.as_deref()),
        (Outcome::Pending, Some("REFUND_INITIATED"))
    );
    let q = query_for(&c);
    let outcome = settle(&ProviderClient::from_connector(client.clone()), &q).await;
    assert_eq!(outcome, Outcome::Succeeded);
}

#[tokio::test]
async fn pay10_decline() {
    let (_base, sb, client, pg, order) = pay10_fixture().await;
    let a = client.refund(&call(&pg, Some(&order), 93, "AED")).await;
    assert_eq!(
        (a.outcome, a.provider_code.as_deref()),
        (Outcome::Failed, Some("004"))
    );
    assert_eq!(sb.refunded_total("pay10", &pg), Some(0));
}

#[tokio::test]
async fn pay10_503_is_unknown_and_not_applied() {
    let (_base, sb, client, pg, order) = pay10_fixture().await;
    let c = call(&pg, Some(&order), 92, "AED");
    assert_eq!(client.refund(&c).await.outcome, Outcome::Unknown);
    assert_eq!(
        client.refund_status(&query_for(&c)).await.outcome,
        Outcome::NotFound
    );
    assert_eq!(sb.refunded_total("pay10", &pg), Some(0));
}

#[tokio::test]
async fn pay10_timeout_is_unknown_but_applied_and_duplicates_are_not_failures() {
    let (_base, sb, client, pg, order) = pay10_fixture().await;
    let c = call(&pg, Some(&order), 91, "AED");
    assert_eq!(client.refund(&c).await.outcome, Outcome::Unknown);
    assert_eq!(
        client.refund_status(&query_for(&c)).await.outcome,
        Outcome::Succeeded
    );
    // Duplicate REFUND_ORDER_ID (019): settled by status query, never taken as a failure.
    let dup = client.refund(&c).await;
    assert_eq!(
        (dup.outcome, dup.provider_code.as_deref()),
        (Outcome::Unknown, Some("019"))
    );
    assert_eq!(sb.refunded_total("pay10", &pg), Some(91));
}

#[tokio::test]
async fn pay10_over_refund_is_refused() {
    let (_base, sb, client, pg, order) = pay10_fixture().await;
    let a = client
        .refund(&call(&pg, Some(&order), 1_000_000, "AED"))
        .await;
    assert_eq!(
        (a.outcome, a.provider_code.as_deref()),
        (Outcome::Failed, Some("013"))
    );
    assert_eq!(sb.refunded_total("pay10", &pg), Some(0));
}

#[tokio::test]
async fn pay10_wrong_credentials() {
    let (base, sb, _client, pg, order) = pay10_fixture().await;
    // Wrong PAY_ID: 324, a failure.
    let wrong_id = pay10_with(
        &base,
        "1111111111111111",
        creds::PAY10_SALT,
        creds::PAY10_KEY,
    );
    let a = wrong_id.refund(&call(&pg, Some(&order), 100, "AED")).await;
    assert_eq!(
        (a.outcome, a.provider_code.as_deref()),
        (Outcome::Failed, Some("324"))
    );
    // Wrong key: the provider answers "Something goes wrong!" under the real
    // key, which ours cannot read either, so the outcome is unknown.
    let wrong_key = pay10_with(
        &base,
        creds::PAY10_PAY_ID,
        creds::PAY10_SALT,
        "ffffffffffffffffffffffffffffffff",
    );
    let c = call(&pg, Some(&order), 100, "AED");
    assert_eq!(wrong_key.refund(&c).await.outcome, Outcome::Unknown);
    // Wrong salt: the status query is refused ("Invalid Hash", our HASH
    // echoed back): a configuration error for an operator, never "not found".
    let wrong_salt = pay10_with(&base, creds::PAY10_PAY_ID, "bad-salt", creds::PAY10_KEY);
    assert_eq!(
        wrong_salt.refund_status(&query_for(&c)).await.outcome,
        Outcome::Misconfigured
    );
    assert_eq!(sb.refunded_total("pay10", &pg), Some(0));
}

#[tokio::test]
async fn pay10_malformed_body_gets_the_provider_error() {
    let (base, _sb, _client, _pg, _order) = pay10_fixture().await;
    let raw = reqwest::Client::new()
        .post(format!("{base}/sandbox/pay10/pgws/merchant/refund"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.json::<Value>().await.unwrap()["RESPONSE_CODE"], "300");
    // Well-formed envelope, undecryptable ENCDATA: Pay10's encrypted error text.
    let garbled = reqwest::Client::new()
        .post(format!("{base}/sandbox/pay10/pgws/merchant/refund"))
        .json(&json!({"PAY_ID": creds::PAY10_PAY_ID, "ENCDATA": "AAAA"}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let key =
        refund_gateway::providers::pay10::crypto::EncryptionKey::new(creds::PAY10_KEY).unwrap();
    assert_eq!(
        key.decrypt(garbled["ENCDATA"].as_str().unwrap()).unwrap(),
        "Something goes wrong!"
    );
}

#[tokio::test]
async fn transport_faults_are_unknown() {
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let cases: Vec<(&str, ResponseTemplate)> = vec![
        (
            "garbage json",
            ResponseTemplate::new(200).set_body_raw("{\"ret_code\": 0001", "application/json"),
        ),
        (
            "html error page",
            ResponseTemplate::new(502)
                .set_body_raw("<html><body>Bad Gateway</body></html>", "text/html"),
        ),
        (
            "html on 200",
            ResponseTemplate::new(200).set_body_raw("<html>maintenance</html>", "text/html"),
        ),
        ("empty body", ResponseTemplate::new(200)),
        (
            "slow",
            ResponseTemplate::new(200).set_delay(Duration::from_secs(3)),
        ),
    ];
    for (name, template) in cases {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(template)
            .mount(&server)
            .await;
        let base = server.uri().replace("/sandbox/pockyt", "");
        let a = pockyt(&base, "t")
            .refund(&call("1", None, 100, "USD"))
            .await;
        assert_eq!(a.outcome, Outcome::Unknown, "pockyt {name}: {a:?}");
        let b = pay10(&base).refund(&call("1", Some("o"), 100, "AED")).await;
        assert_eq!(b.outcome, Outcome::Unknown, "pay10 {name}: {b:?}");
    }
}

#[tokio::test]
async fn connection_reset_mid_body_is_unknown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 8192];
            let _ = sock.read(&mut buf).await;
            // Promise 500 bytes, send a few, then hang up.
            let _ = sock
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{\"ret_code\":\"000100\",")
                .await;
            let _ = sock.shutdown().await;
        }
    });
    assert_eq!(
        pockyt(&base, "t")
            .refund(&call("1", None, 100, "USD"))
            .await
            .outcome,
        Outcome::Unknown
    );
    assert_eq!(
        pay10(&base)
            .refund(&call("1", Some("o"), 100, "AED"))
            .await
            .outcome,
        Outcome::Unknown
    );
    // Nothing listening at all.
    let closed = pockyt("http://127.0.0.1:9", "t")
        .refund(&call("1", None, 100, "USD"))
        .await;
    assert_eq!(closed.outcome, Outcome::Unknown);
}

#[tokio::test]
async fn sandbox_ipns_are_signed_like_the_providers() {
    use axum::routing::post;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Vec<u8>)>();
    let tx2 = tx.clone();
    let receiver = axum::Router::new()
        .route(
            "/ipn/pockyt",
            post(move |body: axum::body::Bytes| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(("pockyt".into(), body.to_vec()));
                    "success"
                }
            }),
        )
        .route(
            "/ipn/pay10",
            post(move |body: axum::body::Bytes| {
                let tx = tx2.clone();
                async move {
                    let _ = tx.send(("pay10".into(), body.to_vec()));
                    "ok"
                }
            }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ipn_url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, receiver).await.unwrap() });
    let mut cfg = fast_sandbox();
    cfg.ipn_url = Some(ipn_url);
    let (base, _sb) = spawn_sandbox(cfg).await;

    let s = sale(
        &base,
        "pockyt",
        json!({"amount": "5.00", "currency": "USD"}),
    )
    .await;
    let c = call(s["transactionNo"].as_str().unwrap(), None, 100, "USD");
    assert_eq!(
        pockyt(&base, creds::POCKYT_TOKEN).refund(&c).await.outcome,
        Outcome::Succeeded
    );
    let (who, body) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(who, "pockyt");
    let ev = refund_gateway::providers::pockyt::parse_ipn(&body, creds::POCKYT_TOKEN).unwrap();
    assert_eq!((ev.outcome, ev.is_refund), (Outcome::Succeeded, true));
    assert_eq!(
        ev.provider_reference.as_deref(),
        Some(c.provider_reference.as_str())
    );
    assert!(refund_gateway::providers::pockyt::parse_ipn(&body, "other").is_err());

    let p = sale(&base, "pay10", json!({"amount": "5.00", "currency": "AED"})).await;
    let c = call(
        p["PG_REF_NUM"].as_str().unwrap(),
        p["ORDER_ID"].as_str(),
        100,
        "AED",
    );
    assert_eq!(pay10(&base).refund(&c).await.outcome, Outcome::Succeeded);
    let (who, body) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(who, "pay10");
    let ev = refund_gateway::providers::pay10::parse_webhook(&body, creds::PAY10_SALT).unwrap();
    assert_eq!(
        (ev.outcome, ev.provider_reference.as_deref()),
        (Outcome::Succeeded, Some(c.provider_reference.as_str()))
    );
}
