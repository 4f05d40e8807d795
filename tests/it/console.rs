//! The operators' console, server side (issue 22): sign-in with operator
//! keys only, session cookies and their expiry (idle and absolute), sign-out
//! ending the session, CSRF tokens on every state-changing form, the
//! sign-in limit, the security headers, escaping, and a flagged refund
//! handled end to end. The browser half is `.ci/browser/console.test.mjs`.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::*;
use serde_json::json;
use sha2::{Digest, Sha256};

const OPS_KEY: &str = "ok_console_test_key";

fn config(db_url: &str) -> refund_gateway::config::Config {
    let mut c = test_config(db_url);
    c.reconcile_interval = Duration::from_secs(3600);
    c.review_after = Duration::from_millis(1);
    c.console.idle = Duration::from_secs(60);
    c.console.absolute = Duration::from_secs(120);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&Sha256::digest(OPS_KEY.as_bytes()));
    c.operators.push(refund_gateway::config::Operator {
        name: "ops-console".into(),
        key_hashes: vec![hash],
    });
    c
}

/// A browser: keeps cookies, follows no redirect.
struct Browser {
    base: String,
    http: reqwest::Client,
    cookies: BTreeMap<String, String>,
    /// Every `Set-Cookie` seen, as sent.
    set_cookies: Vec<String>,
}

struct Page {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The value of the first hidden field `name`.
    fn field(&self, name: &str) -> String {
        let pat = format!("name=\"{name}\" value=\"");
        let at = self
            .text
            .find(&pat)
            .unwrap_or_else(|| panic!("no {name} field in {}", self.text));
        let rest = &self.text[at + pat.len()..];
        rest[..rest.find('"').unwrap()].to_string()
    }
}

impl Browser {
    fn new(app: &TestApp) -> Self {
        Browser {
            base: app.base.clone(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: BTreeMap::new(),
            set_cookies: vec![],
        }
    }

    async fn send(&mut self, req: reqwest::RequestBuilder) -> Page {
        let cookie = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let req = if cookie.is_empty() {
            req
        } else {
            req.header("cookie", cookie)
        };
        let r = req.send().await.expect("the gateway answers");
        for v in r.headers().get_all("set-cookie") {
            let v = v.to_str().unwrap().to_string();
            let (kv, attrs) = v.split_once(';').unwrap_or((&v, ""));
            let (k, val) = kv.split_once('=').unwrap();
            if attrs.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_string(), val.to_string());
            }
            self.set_cookies.push(v.clone());
        }
        Page {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            text: r.text().await.unwrap_or_default(),
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        let req = self.http.get(format!("{}{path}", self.base));
        self.send(req).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let req = self.http.post(format!("{}{path}", self.base)).form(form);
        self.send(req).await
    }

    async fn sign_in(&mut self, key: &str) -> Page {
        let form = self.get("/console/sign-in").await;
        assert_eq!(form.status, 200, "{}", form.text);
        let csrf = form.field("csrf");
        self.post(
            "/console/sign-in",
            &[("csrf", &csrf), ("key", key), ("next", "/console/review")],
        )
        .await
    }

    /// The session's CSRF token, from a page's forms.
    async fn csrf(&mut self) -> String {
        let p = self.get("/console").await;
        assert_eq!(p.status, 200, "{}", p.text);
        p.field("csrf")
    }
}

async fn sessions_csrf_and_headers(db: Db) {
    let app = spawn_with(config(&fresh_db(db).await)).await;
    let mut b = Browser::new(&app);

    // Not signed in: every page sends you to the sign-in, keeping where you were.
    let p = b.get("/console/refunds?status=pending").await;
    assert_eq!(p.status, 303);
    assert_eq!(
        p.location(),
        "/console/sign-in?next=%2Fconsole%2Frefunds%3Fstatus%3Dpending"
    );

    // The headers every console answer carries.
    let form = b.get("/console/sign-in").await;
    let csp = form.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(form.headers["x-frame-options"], "DENY");
    assert_eq!(form.headers["referrer-policy"], "same-origin");
    assert_eq!(form.headers["cache-control"], "no-store");

    // A POS key cannot sign in, nor a made-up key; a sign-in without its
    // form token is refused before the key is looked at.
    let pos = b.sign_in(KEY).await;
    assert_eq!(pos.status, 401, "{}", pos.text);
    assert!(pos.text.contains("That is a POS key"), "{}", pos.text);
    assert!(!b.cookies.contains_key("rg_console"));
    let wrong = b.sign_in("ok_not_a_key").await;
    assert_eq!(wrong.status, 401);
    let forged = b
        .post(
            "/console/sign-in",
            &[("key", OPS_KEY), ("next", "/console")],
        )
        .await;
    assert_eq!(forged.status, 403, "{}", forged.text);
    assert!(!b.cookies.contains_key("rg_console"));

    // An operator key signs in, back to where it was going.
    let ok = b.sign_in(OPS_KEY).await;
    assert_eq!(
        (ok.status, ok.location()),
        (303, "/console/review"),
        "{}",
        ok.text
    );
    let session = b
        .set_cookies
        .iter()
        .rev()
        .find(|c| c.starts_with("rg_console="))
        .expect("a session cookie")
        .clone();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(session.contains(attr), "{session}");
    }
    assert!(!session.contains("Secure"), "plain HTTP here: {session}");
    let home = b.get("/console").await;
    assert_eq!(home.status, 200, "{}", home.text);
    assert!(home.text.contains("ops-console"));

    // The database holds the cookie's digest only.
    let cookie = b.cookies["rg_console"].clone();
    let now = app.gateway.clock.now();
    let store = app.gateway.store.console();
    assert!(store
        .touch_session(
            &cookie,
            now,
            refund_gateway::types::Timestamp::EPOCH,
            refund_gateway::types::Timestamp::EPOCH,
            now
        )
        .await
        .unwrap()
        .is_none());
    assert!(store
        .touch_session(
            &hex::encode(Sha256::digest(cookie.as_bytes())),
            now,
            refund_gateway::types::Timestamp::EPOCH,
            refund_gateway::types::Timestamp::EPOCH,
            now
        )
        .await
        .unwrap()
        .is_some());

    // A state-changing form without the session's token changes nothing.
    let sale = app.pockyt_sale("10.00", "USD", "success").await;
    let late = app
        .post_refund(Some("console-late"), &pockyt_refund(&sale, "0.91"))
        .await;
    late.assert_refund(201, "pending");
    let id = late.body["id"].as_str().unwrap().to_string();
    let history_before = app.get(&format!("/v1/refunds/{id}/events")).await.text;
    for form in [
        vec![("status", "failed"), ("note", "no token")],
        vec![("status", "failed"), ("note", "wrong token"), ("csrf", "x")],
    ] {
        let r = b
            .post(&format!("/console/refunds/{id}/resolve"), &form)
            .await;
        assert_eq!(r.status, 403, "{}", r.text);
        assert!(r.text.contains("nothing was changed"), "{}", r.text);
    }
    let r = b.post(&format!("/console/refunds/{id}/sync"), &[]).await;
    assert_eq!(r.status, 403);
    // A token given twice is no token, whichever of them is the session's.
    let valid = b.csrf().await;
    for form in [
        [("csrf", "AAAA"), ("csrf", valid.as_str())],
        [("csrf", valid.as_str()), ("csrf", "AAAA")],
    ] {
        let r = b.post(&format!("/console/refunds/{id}/sync"), &form).await;
        assert_eq!(r.status, 403, "{}", r.text);
    }
    let r = b.post("/console/sign-out", &[]).await;
    assert_eq!(r.status, 403, "sign-out needs its token too");
    assert_eq!(
        app.get(&format!("/v1/refunds/{id}/events")).await.text,
        history_before,
        "refused forms wrote nothing"
    );

    // A form that is not a form cannot carry the token: refused alike.
    let req = b
        .http
        .post(format!("{}/console/sign-out", b.base))
        .json(&json!({"csrf": b.cookies["rg_console"]}));
    assert_eq!(b.send(req).await.status, 403);
    // Answers made outside the console's handlers are console pages too,
    // with its headers: an unknown page, a method a page does not take.
    for (method, path, status) in [
        (reqwest::Method::GET, "/console/nonexistent", 404),
        (reqwest::Method::GET, "/console/refunds/", 404),
        (reqwest::Method::PUT, "/console", 405),
        (reqwest::Method::GET, "/console/sign-out", 405),
    ] {
        let req = b.http.request(method.clone(), format!("{}{path}", b.base));
        let p = b.send(req).await;
        assert_eq!(p.status, status, "{method} {path}: {}", p.text);
        assert!(
            p.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html"),
            "{method} {path}"
        );
        assert_eq!(p.headers["x-frame-options"], "DENY", "{method} {path}");
        assert!(p.headers.contains_key("content-security-policy"));
    }

    // Over HTTPS (a proxy saying so), cookies are Secure.
    let req = b
        .http
        .get(format!("{}/console/sign-in", b.base))
        .header("x-forwarded-proto", "https");
    let p = b.send(req).await;
    assert!(p.headers["set-cookie"]
        .to_str()
        .unwrap()
        .contains("; Secure"));

    // Sign-out ends the session: the same cookie no longer works.
    let csrf = b.csrf().await;
    let out = b.post("/console/sign-out", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, 303);
    assert!(!b.cookies.contains_key("rg_console"));
    b.cookies.insert("rg_console".into(), cookie);
    let again = b.get("/console").await;
    assert_eq!(again.status, 303, "the old cookie is dead: {}", again.text);
    app.stop().await;
}

async fn sessions_expire_idle_and_absolute(db: Db) {
    let app = spawn_with(config(&fresh_db(db).await)).await;
    let mut b = Browser::new(&app);
    assert_eq!(b.sign_in(OPS_KEY).await.status, 303);
    assert_eq!(b.get("/console").await.status, 200);
    // Pages seen within a tenth of the idle time write nothing; later ones
    // mark the session seen.
    let id = hex::encode(Sha256::digest(b.cookies["rg_console"].as_bytes()));
    let epoch = refund_gateway::types::Timestamp::EPOCH;
    let seen = || async {
        let now = app.gateway.clock.now();
        let store = app.gateway.store.console();
        let row = store
            .touch_session(&id, now, epoch, epoch, epoch)
            .await
            .unwrap();
        row.expect("the session").last_seen_at
    };
    let first = seen().await;
    app.gateway.clock.advance(Duration::from_secs(1));
    assert_eq!(b.get("/console").await.status, 200);
    assert_eq!(seen().await, first, "no write a second later");
    app.gateway.clock.advance(Duration::from_secs(10));
    assert_eq!(b.get("/console").await.status, 200);
    assert!(seen().await > first, "marked seen 11 s later");
    // Idle for longer than 60 s: gone.
    app.gateway.clock.advance(Duration::from_secs(61));
    assert_eq!(b.get("/console").await.status, 303);

    // Used every 50 s, it still ends 120 s after sign-in.
    assert_eq!(b.sign_in(OPS_KEY).await.status, 303);
    for _ in 0..2 {
        app.gateway.clock.advance(Duration::from_secs(50));
        assert_eq!(b.get("/console").await.status, 200);
    }
    app.gateway.clock.advance(Duration::from_secs(25));
    let p = b.get("/console").await;
    assert_eq!(p.status, 303, "ended 120 s after sign-in: {}", p.text);
    app.stop().await;
}

async fn failed_sign_ins_are_limited(db: Db) {
    let app = spawn_with(config(&fresh_db(db).await)).await;
    let mut b = Browser::new(&app);
    for _ in 0..5 {
        assert_eq!(b.sign_in("ok_guess").await.status, 401);
    }
    // Even the right key now waits (the limit is per address).
    let r = b.sign_in(OPS_KEY).await;
    assert_eq!(r.status, 429, "{}", r.text);
    assert!(r.headers.contains_key("retry-after"));
    assert!(!b.cookies.contains_key("rg_console"));
    app.stop().await;
}

async fn a_flagged_refund_handled_in_the_console(db: Db) {
    let app = spawn_with(config(&fresh_db(db).await)).await;
    let mut b = Browser::new(&app);
    assert_eq!(b.sign_in(OPS_KEY).await.status, 303);
    let sale = app.pockyt_sale("10.00", "USD", "success").await;
    let mut body = pockyt_refund(&sale, "0.91");
    body["reason"] = json!("<script>alert(1)</script>");
    body["metadata"] = json!({"till": "<img src=x onerror=alert(2)>"});
    let late = app.post_refund(Some("console-flagged"), &body).await;
    late.assert_refund(201, "pending");
    let id = late.body["id"].as_str().unwrap().to_string();
    let tx = sale["transactionNo"].as_str().unwrap().to_string();

    // In the queue, found by its sale, and its page escapes what the POS wrote.
    let q = b.get("/console/review").await;
    assert!(q.text.contains(&id), "{}", q.text);
    let found = b
        .get(&format!(
            "/console/refunds?transaction_no={tx}&status=&client="
        ))
        .await;
    assert_eq!(found.status, 200, "{}", found.text);
    assert!(
        found.text.contains(&format!("/console/refunds/{id}")),
        "{}",
        found.text
    );
    let page = b.get(&format!("/console/refunds/{id}")).await;
    assert_eq!(page.status, 200);
    assert!(!page.text.contains("<script>alert") && !page.text.contains("<img src=x"));
    assert!(
        page.text.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{}",
        page.text
    );

    // A resolution the provider contradicts is refused with the API's reason.
    tokio::time::sleep(Duration::from_millis(1600)).await; // the 91 refund lands at the provider
    let csrf = page.field("csrf");
    let refused = b
        .post(
            &format!("/console/refunds/{id}/resolve"),
            &[
                ("csrf", &csrf),
                ("status", "failed"),
                ("note", "customer says no money"),
            ],
        )
        .await;
    assert_eq!(refused.status, 409, "{}", refused.text);
    assert!(refused.text.contains("Refused."), "{}", refused.text);
    let no_note = b
        .post(
            &format!("/console/refunds/{id}/resolve"),
            &[("csrf", &csrf), ("status", "succeeded"), ("note", "  ")],
        )
        .await;
    assert_eq!(no_note.status, 400, "{}", no_note.text);
    assert!(no_note.text.contains("note"), "{}", no_note.text);

    // The provider agrees: resolved, with the note and the operator in the history.
    let done = b
        .post(
            &format!("/console/refunds/{id}/resolve"),
            &[
                ("csrf", &csrf),
                ("status", "succeeded"),
                ("note", "seen in the dashboard\r\nref 42"),
            ],
        )
        .await;
    assert_eq!(
        (done.status, done.location()),
        (303, format!("/console/refunds/{id}?done=resolved").as_str()),
        "{}",
        done.text
    );
    let after = b.get(done.location()).await;
    assert!(
        after.text.contains("seen in the dashboard ref 42"),
        "{}",
        after.text
    );
    assert!(after.text.contains("ops-console"));
    let r = app.get(&format!("/v1/refunds/{id}")).await;
    r.assert_refund(200, "succeeded");
    app.stop().await;
}

async fn webhook_endpoints_in_the_console(db: Db) {
    let mut c = config(&fresh_db(db).await);
    c.webhook_interval = Duration::from_millis(50);
    let dead = "http://127.0.0.1:9/hooks";
    c.demo.as_mut().unwrap().webhook = Some((dead.into(), refund_gateway::tools::webhook_secret()));
    let app = spawn_with(c).await;
    let mut b = Browser::new(&app);
    assert_eq!(b.sign_in(OPS_KEY).await.status, 303);
    let sale = app.pockyt_sale("10.00", "USD", "success").await;
    app.post_refund(Some("console-hook"), &pockyt_refund(&sale, "1.00"))
        .await
        .assert_refund(201, "succeeded");
    // The dead endpoint's attempts are listed with their error.
    let listed = eventually(Duration::from_secs(10), || async {
        let p = Browser {
            cookies: b.cookies.clone(),
            ..Browser::new(&app)
        }
        .get("/console/webhooks?state=pending")
        .await;
        (p.text.contains("<ol class=\"attempts\">"), p.text)
    })
    .await;
    assert!(listed.contains("refund.created"), "{listed}");

    // A disabled endpoint (as a 410 leaves it) is shown and enabled again.
    let now = app.gateway.clock.now();
    app.gateway
        .store
        .events()
        .disable("demo", dead, now, "410 Gone")
        .await
        .unwrap();
    let page = b.get("/console/webhooks").await;
    assert!(page.text.contains("disabled"), "{}", page.text);
    let overview = b.get("/console").await;
    assert!(overview.text.contains("Disabled: "), "{}", overview.text);
    let csrf = page.field("csrf");
    let r = b
        .post("/console/webhook-endpoints/demo/0/enable", &[])
        .await;
    assert_eq!(r.status, 403, "no token, no change");
    assert_eq!(
        app.gateway.store.events().disabled().await.unwrap().len(),
        1
    );
    let r = b
        .post(
            "/console/webhook-endpoints/demo/0/enable",
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(
        (r.status, r.location()),
        (303, "/console/webhooks?done=enabled")
    );
    assert!(app
        .gateway
        .store
        .events()
        .disabled()
        .await
        .unwrap()
        .is_empty());
    let r = b
        .post(
            "/console/webhook-endpoints/demo/07/enable",
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text);
    app.stop().await;
}

both_backends!(
    webhook_endpoints_in_the_console,
    sessions_csrf_and_headers,
    sessions_expire_idle_and_absolute,
    failed_sign_ins_are_limited,
    a_flagged_refund_handled_in_the_console,
);
