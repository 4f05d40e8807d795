//! No secret, token, key or full signature material appears in any log line
//! across full refund flows on both providers (logs captured at TRACE).

#[path = "it/common/mod.rs"]
mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use refund_gateway::sandbox::demo_credentials as creds;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secrets_in_logs() {
    let capture = Capture::default();
    tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(capture.clone())
        .init();

    let mut config = test_config(&fresh_db(Db::Sqlite).await);
    if let Some(d) = config.demo.as_mut() {
        d.sandbox_ipns = true;
    }
    let app = spawn_with(config).await;
    let sale = app.pockyt_sale("10.00", "USD", "success").await;
    for (i, amount) in ["1.00", "0.93", "0.94", "0.91"].iter().enumerate() {
        app.post_refund(Some(&format!("log-{i}")), &pockyt_refund(&sale, amount))
            .await;
    }
    let p = app.pay10_sale("10.00", "AED").await;
    for (i, amount) in ["1.00", "0.93", "0.94"].iter().enumerate() {
        app.post_refund(Some(&format!("log10-{i}")), &pay10_refund(&p, amount))
            .await;
    }
    let unauthorized = app
        .send(
            app.http
                .get(format!("{}/v1/refunds", app.base))
                .bearer_auth("sk_leaky_wrong_key"),
        )
        .await;
    assert_eq!(unauthorized.status, 401);
    // Failed console sign-ins: a guess and a POS key (each logged, neither shown).
    for guess in ["ok_leaky_console_guess", KEY] {
        let form = app
            .http
            .get(format!("{}/console/sign-in", app.base))
            .send()
            .await
            .unwrap();
        let cookie = form.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let text = form.text().await.unwrap();
        let pat = "name=\"csrf\" value=\"";
        let at = text.find(pat).unwrap() + pat.len();
        let csrf = &text[at..at + 43];
        let r = app
            .http
            .post(format!("{}/console/sign-in", app.base))
            .header("cookie", cookie)
            .form(&[("csrf", csrf), ("key", guess), ("next", "/console")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    // Let the webhooks and reconciliation settle every refund (their logs
    // are what this test reads).
    let pending = eventually(Duration::from_secs(15), || async {
        let (n, _) = app.gateway.pending_summary().await.unwrap();
        (n == 0, n)
    })
    .await;
    assert_eq!(pending, 0, "every refund settled");
    app.stop().await;

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.lines().count() > 20, "logs were captured");
    assert!(
        logs.contains("pockyt refund answered"),
        "provider calls are logged"
    );
    let token_digest = hex::encode(<md5::Md5 as md5::Digest>::digest(
        creds::POCKYT_TOKEN.as_bytes(),
    ));
    for secret in [
        creds::POCKYT_TOKEN,
        token_digest.as_str(),
        creds::PAY10_SALT,
        creds::PAY10_KEY,
        KEY,
        "sk_leaky_wrong_key",
        "ok_leaky_console_guess",
    ] {
        assert!(
            !logs.contains(secret),
            "a secret appears in the logs: {secret}"
        );
    }
    assert_eq!(
        logs.matches("console sign-in failed").count(),
        2,
        "failed console sign-ins are logged"
    );
    assert!(
        !logs.contains("verifySign="),
        "signed IPN bodies are not logged"
    );
    assert!(
        !logs.contains("ENCDATA"),
        "encrypted payloads are not logged"
    );
}

/// A provider's HTTP error is logged with the URL called and the status (a
/// wrong `base_url` shows itself), never with a secret.
#[tokio::test]
async fn provider_http_errors_name_the_url_and_status() {
    use refund_gateway::money::{Currency, Minor};
    use refund_gateway::providers::pockyt::{PockytAccount, PockytClient};
    use refund_gateway::providers::RefundCall;
    use wiremock::{matchers::method, Mock, MockServer, ResponseTemplate};
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(capture.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(404).set_body_string("<html>Not Found</html>"))
        .mount(&server)
        .await;
    let base = format!("{}/wrong/prefix", server.uri());
    let client = PockytClient::new(
        reqwest::Client::new(),
        PockytAccount {
            base_url: base.clone(),
            merchant_no: creds::POCKYT_MERCHANT_NO.into(),
            store_no: creds::POCKYT_STORE_NO.into(),
            token: secrecy::SecretString::from(creds::POCKYT_TOKEN.to_string()),
        },
    );
    let answer = client
        .refund(&RefundCall {
            refund_id: "rf_log".into(),
            provider_reference: "REF0000000000000LOG".into(),
            transaction_no: Some("297553638301777927".into()),
            reference: None,
            amount: Minor::new(100).unwrap(),
            currency: Currency::from_code("USD").unwrap(),
            settle_currency: None,
        })
        .await;
    assert_eq!(answer.outcome, refund_gateway::types::Outcome::Unknown);
    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains(&format!("{base}/app-data-search/v3/refund")) && logs.contains("404"),
        "the URL and the status are logged: {logs}"
    );
    assert!(!logs.contains(creds::POCKYT_TOKEN));
}
