//! Contract fixtures: provider messages this crate did not produce (see
//! `tests/fixtures/README.md`), read by the adapters with the outcome asserted;
//! and the differences between our sandbox and the real servers, each with a
//! test of its own.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::*;
use refund_gateway::money::{Currency, Minor};
use refund_gateway::providers::pay10::crypto::EncryptionKey;
use refund_gateway::providers::pay10::{Pay10Account, Pay10Client};
use refund_gateway::providers::pockyt::{self, PockytAccount, PockytClient};
use refund_gateway::providers::{RefundCall, StatusQuery};
use refund_gateway::refunds::{Created, Gateway, NewRefund};
use refund_gateway::sandbox::demo_credentials as creds;
use refund_gateway::sandbox::sign;
use refund_gateway::store::Store;
use refund_gateway::types::Outcome;
use refund_gateway::types::ProviderKind;
use secrecy::SecretString;
use serde_json::{json, Value};
use wiremock::matchers::{body_partial_json, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// `key=value` lines of a fixture.
fn kv(name: &str) -> BTreeMap<String, String> {
    fixture(name)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn pockyt_at(base: &str) -> PockytClient {
    PockytClient::new(
        http(),
        PockytAccount {
            base_url: base.into(),
            merchant_no: creds::POCKYT_MERCHANT_NO.into(),
            store_no: creds::POCKYT_STORE_NO.into(),
            token: SecretString::from(creds::POCKYT_TOKEN.to_string()),
        },
    )
}

fn pay10_at(base: &str) -> Pay10Client {
    Pay10Client::new(
        http(),
        Pay10Account {
            base_url: base.into(),
            pay_id: creds::PAY10_PAY_ID.into(),
            salt: SecretString::from(creds::PAY10_SALT.to_string()),
            key: EncryptionKey::new(creds::PAY10_KEY).unwrap(),
        },
    )
}

fn usd_call(reference: &str) -> RefundCall {
    RefundCall {
        refund_id: "rf_1".into(),
        provider_reference: reference.into(),
        transaction_no: Some("297553638301777927".into()),
        reference: None,
        amount: Minor::new(1).unwrap(),
        currency: Currency::from_code("USD").unwrap(),
        settle_currency: None,
    }
}

fn query(provider_reference: &str, tx: &str, order: Option<&str>) -> StatusQuery {
    StatusQuery {
        refund_id: "rf_1".into(),
        provider_reference: provider_reference.into(),
        provider_refund_id: None,
        transaction_no: Some(tx.into()),
        reference: order.map(str::to_string),
    }
}

async fn answering(route: &str, body: String, status: u16) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(route))
        .respond_with(ResponseTemplate::new(status).set_body_string(body))
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn pockyt_published_refund_response() {
    let server = answering(
        pockyt::REFUND_PATH,
        fixture("pockyt/refund-success.json"),
        200,
    )
    .await;
    let a = pockyt_at(&server.uri())
        .refund(&usd_call("refund2020101305"))
        .await;
    assert_eq!(a.outcome, Outcome::Succeeded);
    assert_eq!(a.provider_refund_id.as_deref(), Some("297553638302358781"));
    assert_eq!(a.provider_code.as_deref(), Some("000100"));
}

#[tokio::test]
async fn pockyt_verifysign_error_is_a_configuration_error() {
    let server = answering(
        pockyt::TRAN_QUERY_PATH,
        fixture("pockyt/verifysign-error.json"),
        400,
    )
    .await;
    let a = pockyt_at(&server.uri())
        .refund_status(&query("refund2020101305", "297553638301777927", None))
        .await;
    assert_eq!(a.outcome, Outcome::Misconfigured);
    assert_eq!(a.message.as_deref(), Some("data error : verifySign"));
}

#[tokio::test]
async fn pockyt_published_ipn_vector_verifies() {
    let body = fixture("pockyt/ipn-payment.form");
    let ev = pockyt::parse_ipn(body.as_bytes(), creds::POCKYT_TOKEN).unwrap();
    assert_eq!(ev.transaction_no.as_deref(), Some("305680500880311923"));
    assert_eq!(ev.outcome, Outcome::Succeeded);
    assert!(!ev.is_refund, "a payment IPN");
    assert!(pockyt::parse_ipn(body.as_bytes(), "another-token").is_err());
}

/// Difference 3: the PHP, Java and Python SDKs sign empty values as `key=&`.
#[tokio::test]
async fn pockyt_ipn_signed_with_empty_values() {
    let fields: Vec<(String, String)> = [
        ("transactionNo", "305680500880311923"),
        ("refundReference", "REF0000000000000001"),
        ("refundAmount", "0.01"),
        ("status", "success"),
        ("note", ""),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for sign_empty in [true, false] {
        let mut all = fields.clone();
        all.push((
            "verifySign".into(),
            sign::pockyt(&fields, creds::POCKYT_TOKEN, sign_empty),
        ));
        let body = serde_urlencoded::to_string(&all).unwrap();
        let ev = pockyt::parse_ipn(body.as_bytes(), creds::POCKYT_TOKEN)
            .unwrap_or_else(|e| panic!("signed with empty={sign_empty}: {e}"));
        assert_eq!(
            ev.provider_reference.as_deref(),
            Some("REF0000000000000001")
        );
        assert_eq!(
            ev.fields.contains_key("note"),
            sign_empty,
            "unsigned empties are dropped"
        );
    }
}

/// Difference 5: `refundInfo` as one object with the old SDK's id name and no
/// status: being listed does not make the refund succeeded; the refund's own
/// transaction says what it is.
#[tokio::test]
async fn pockyt_refund_info_without_status_is_confirmed_by_the_refund_transaction() {
    for (refund_status, want) in [
        ("pending", Outcome::Pending),
        ("success", Outcome::Succeeded),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(pockyt::TRAN_QUERY_PATH))
            .and(body_partial_json(
                json!({"transactionNo": "297553638302358781"}),
            ))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "ret_code": "000100", "ret_msg": "query success ",
                "result": {"transactionNo": "297553638302358781", "status": refund_status,
                           "transactionType": "refund", "amount": "0.01", "currency": "USD"}
            })))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path(pockyt::TRAN_QUERY_PATH))
            .and(body_partial_json(
                json!({"transactionNo": "297553638301777927"}),
            ))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_string(fixture("pockyt/tran-query-old-sdk.json")),
            )
            .mount(&server)
            .await;
        let a = pockyt_at(&server.uri())
            .refund_status(&query("refund2020101305", "297553638301777927", None))
            .await;
        assert_eq!(a.outcome, want, "refund transaction says {refund_status}");
        assert_eq!(a.provider_refund_id.as_deref(), Some("297553638302358781"));
    }
}

/// Difference 2: Pay10 does not sign requery answers. The published
/// not-found answer carries a HASH that is not a signature of ours.
#[tokio::test]
async fn pay10_published_requery_answers() {
    use refund_gateway::providers::pay10::REQUERY_PATH;
    let cases = [
        ("pay10/requery-found.txt", Outcome::Succeeded),
        ("pay10/requery-not-found.txt", Outcome::NotFound),
        ("pay10/requery-invalid-hash.json", Outcome::Misconfigured),
    ];
    for (name, want) in cases {
        let server = answering(REQUERY_PATH, fixture(name), 200).await;
        let a = pay10_at(&server.uri())
            .refund_status(&query(
                "20221212174211",
                "5179120325104453",
                Some("37170171"),
            ))
            .await;
        assert_eq!(a.outcome, want, "{name}");
    }
}

#[test]
fn pay10_crypto_matches_other_tools() {
    let aes = kv("pay10/aes-openssl.txt");
    let key = EncryptionKey::new(&aes["key"]).unwrap();
    assert_eq!(key.decrypt(&aes["encdata"]).unwrap(), aes["plaintext"]);
    assert_eq!(key.encrypt(&aes["plaintext"]), aes["encdata"]);
    let h = kv("pay10/hash-sha256sum.txt");
    let pairs: Vec<(String, String)> = h["fields"]
        .split('~')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let ours = refund_gateway::providers::pay10::crypto::hash(
        pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        &h["salt"],
    )
    .unwrap();
    assert_eq!(ours, h["hash"]);
    assert_eq!(sign::pay10(&pairs, &h["salt"]), h["hash"]);
}

/// Difference 1: AMOUNT has at least 3 digits; the sandbox refuses shorter
/// ones as the real server does.
#[tokio::test]
async fn pay10_refund_under_one_unit() {
    let (base, sandbox) = spawn_sandbox(fast_sandbox()).await;
    let sale = sale_at(
        &reqwest::Client::new(),
        &base,
        "pay10",
        json!({"amount": "10.00", "currency": "AED"}),
    )
    .await;
    let pg = sale["PG_REF_NUM"].as_str().unwrap();
    let call = RefundCall {
        refund_id: "rf_1".into(),
        provider_reference: "REFUND0000000000050".into(),
        transaction_no: Some(pg.into()),
        reference: sale["ORDER_ID"].as_str().map(str::to_string),
        amount: Minor::new(50).unwrap(),
        currency: Currency::from_code("AED").unwrap(),
        settle_currency: None,
    };
    let a = pay10_at(&format!("{base}/sandbox/pay10"))
        .refund(&call)
        .await;
    assert_eq!(a.outcome, Outcome::Succeeded, "{a:?}");
    assert_eq!(sandbox.refunded_total("pay10", pg), Some(50));
}

/// Difference 4: a Pay10 webhook with a field the server adds after hashing
/// and a decimal AMOUNT is verified and applied, never rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay10_webhook_variants_are_applied() {
    let (base, _sandbox) = spawn_sandbox(fast_sandbox()).await;
    let mut config = test_config(&fresh_db(Db::Sqlite).await);
    if let Some(d) = config.demo.as_mut() {
        d.external_sandbox = Some(base.clone());
    }
    refund_gateway::demo_accounts(&mut config, &base);
    let store = Store::connect(&config.database_url, 2).await.unwrap();
    let g = Gateway::new(refund_gateway::gateway_settings(&config), store);
    let sale = sale_at(
        &reqwest::Client::new(),
        &base,
        "pay10",
        json!({"amount": "10.00", "currency": "AED"}),
    )
    .await;
    let aed = Currency::from_code("AED").unwrap();
    let client = config.clients[0].clone();
    // 94: the provider accepts it as pending.
    let created = g
        .create(
            &client,
            NewRefund {
                provider: ProviderKind::Pay10,
                transaction_no: sale["PG_REF_NUM"].as_str().map(str::to_string),
                reference: sale["ORDER_ID"].as_str().map(str::to_string),
                amount: aed.parse_amount("0.94").unwrap(),
                currency: aed,
                settle_currency: None,
                refund_reference: None,
                reason: None,
                receipt_email: None,
                metadata: BTreeMap::new(),
                idempotency_key: Some("w1".into()),
                request_hash: "h".into(),
                sale_amount: None,
            },
        )
        .await
        .unwrap();
    let Created::New(row) = created else {
        panic!("{created:?}")
    };
    assert_eq!(row.status, "pending");
    let mut fields: Vec<(String, String)> = [
        ("PAY_ID", creds::PAY10_PAY_ID),
        ("ORDER_ID", sale["ORDER_ID"].as_str().unwrap()),
        ("PG_REF_NUM", sale["PG_REF_NUM"].as_str().unwrap()),
        ("REFUND_ORDER_ID", row.provider_reference.as_str()),
        ("AMOUNT", "0.94"),
        ("CURRENCY_CODE", "784"),
        ("TXNTYPE", "REFUND"),
        ("RESPONSE_CODE", "000"),
        ("STATUS", "Captured"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let hash = sign::pay10(&fields, creds::PAY10_SALT);
    fields.push(("HASH".into(), hash));
    fields.push(("CARD_ISSUER_BANK".into(), "EMIRATES NBD".into()));
    let body: serde_json::Map<String, Value> = fields
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    let reply = g
        .receive_webhook(
            ProviderKind::Pay10,
            None,
            &serde_json::to_vec(&body).unwrap(),
        )
        .await
        .expect("verified");
    assert_eq!(
        reply,
        refund_gateway::refunds::webhooks::WebhookReply::Accepted
    );
    let now = g
        .store
        .get_refund_any_client(&row.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now.status, "succeeded");
}
