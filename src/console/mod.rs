//! The operators' console at `/console`: server-rendered pages (maud) over
//! the operator API, for a support desk in a browser.
//!
//! - **Sign-in** with an `[[operators]]` key (a POS key cannot sign in).
//!   The session is server-side ([`crate::store::ConsoleStore`]): the
//!   cookie holds 32 random bytes, the database their SHA-256; it ends when
//!   unused for `console.session_idle_minutes`, `console.session_max_hours`
//!   after sign-in, or at sign-out. Cookies are `HttpOnly`,
//!   `SameSite=Strict`, `Path=/console`, and `Secure` when `public_url` is
//!   `https` or the request came over HTTPS. Failed sign-ins are limited per
//!   client address ([`SignInLimiter`]) and logged without the key.
//! - **Every form that changes something** carries the session's CSRF token
//!   (the sign-in form a token of its own, double-submitted in a cookie);
//!   without it the answer is `403` and nothing changes.
//! - **Every answer** carries a strict Content-Security-Policy
//!   (`default-src 'self'`, `frame-ancestors 'none'`), `X-Frame-Options:
//!   DENY`, `Referrer-Policy: same-origin`, `Cache-Control: no-store`; every
//!   value shown is escaped by the templates.
//! - The actions call the operator API's own handlers, so the console has
//!   the API's rules and refusals, shown as readable messages.

mod pages;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use base64::Engine;
use maud::Markup;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::{ApiError, AppState, OperatorAuthed};
use crate::config::{ConsoleSettings, Operator};
use crate::store::SessionRow;

pub use pages::format_age;

const SESSION_COOKIE: &str = "rg_console";
const SIGN_IN_COOKIE: &str = "rg_console_signin";
/// The most a console form may send.
const FORM_LIMIT: usize = 16 * 1024;

/// The console's settings and its sign-in limiter (one per process).
pub struct Console {
    pub settings: ConsoleSettings,
    limiter: SignInLimiter,
}

impl Console {
    pub fn new(settings: ConsoleSettings) -> Self {
        Console {
            settings,
            limiter: SignInLimiter::new(5, Duration::from_secs(15 * 60)),
        }
    }
}

/// Failed sign-ins per client address: after `max` failures within
/// `window`, that address is refused (429) until the oldest of them is
/// `window` old. A success clears its failures. Behind a proxy every
/// browser shares the proxy's address, so the limit then applies to all of
/// them together.
pub struct SignInLimiter {
    max: usize,
    window: Duration,
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl SignInLimiter {
    pub fn new(max: usize, window: Duration) -> Self {
        SignInLimiter {
            max,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(wait)`: this address must wait this long before trying again.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let Some(q) = map.get_mut(&ip) else {
            return Ok(());
        };
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            q.pop_front();
        }
        if q.len() >= self.max {
            let oldest = *q.front().expect("non-empty");
            return Err(self.window.saturating_sub(now.duration_since(oldest)));
        }
        Ok(())
    }

    pub fn failed(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 10_000 {
            // An address flood: forget the addresses whose failures are old.
            let window = self.window;
            map.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
        }
        let q = map.entry(ip).or_default();
        q.push_back(now);
        while q.len() > self.max {
            q.pop_front();
        }
    }

    pub fn succeeded(&self, ip: IpAddr) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ip);
    }
}

/// A signed-in operator, from the session cookie.
pub struct Signed {
    pub operator: Arc<Operator>,
    pub csrf: String,
    id_sha256: String,
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn digest_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A token this console made: 43 base64url characters.
fn well_formed(token: &str) -> bool {
    token.len() == 43
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// A path inside the console to come back to after signing in (nothing
/// else: a `next` that leaves the console is dropped).
fn safe_next(next: &str) -> Option<&str> {
    (next.starts_with("/console")
        && !next.contains("//")
        && !next.contains('\\')
        && next.len() <= 2000
        && !next.chars().any(char::is_control))
    .then_some(next)
}

fn see_other(to: &str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [(
            header::LOCATION,
            HeaderValue::from_str(to).unwrap_or(HeaderValue::from_static("/console")),
        )],
    )
        .into_response()
}

fn to_sign_in(parts: &Parts) -> Response {
    let here = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/console");
    let next = if parts.method == axum::http::Method::GET {
        safe_next(here).unwrap_or("/console")
    } else {
        "/console"
    };
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("next", next);
    see_other(&format!("/console/sign-in?{}", q.finish()))
}

impl FromRequestParts<AppState> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let Some(raw) = cookie(&parts.headers, SESSION_COOKIE).filter(|t| well_formed(t)) else {
            return Err(to_sign_in(parts));
        };
        let id = digest_hex(raw);
        let now = state.gateway.clock.now();
        let s = console_of(parts).settings;
        let row = state
            .gateway
            .store
            .console()
            .touch_session(&id, now, now - s.idle, now - s.absolute, now - s.idle / 10)
            .await
            .map_err(|e| error_page(None, &ApiError::from(e)))?;
        let Some(row) = row else {
            return Err(to_sign_in(parts));
        };
        // An operator removed from the configuration is signed out.
        let Some(operator) = state
            .gateway
            .operators
            .iter()
            .find(|o| o.name == row.operator)
            .cloned()
        else {
            let _ = state.gateway.store.console().end_session(&id).await;
            return Err(to_sign_in(parts));
        };
        Ok(Signed {
            operator,
            csrf: row.csrf_token,
            id_sha256: id,
        })
    }
}

/// The console's own state, set on its routes ([`routes`]).
fn console_of(parts: &Parts) -> Arc<Console> {
    parts
        .extensions
        .get::<Arc<Console>>()
        .cloned()
        .expect("the console's routes carry its state")
}

/// Whether cookies set on this answer must be `Secure`.
fn secure(console: &Console, headers: &HeaderMap) -> bool {
    console.settings.secure_cookies
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

fn set_cookie(name: &str, value: &str, max_age: Option<u64>, secure: bool) -> HeaderValue {
    let mut c = format!("{name}={value}; Path=/console; HttpOnly; SameSite=Strict");
    if let Some(a) = max_age {
        c.push_str(&format!("; Max-Age={a}"));
    }
    if secure {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).expect("cookie values are base64url")
}

/// A console form's fields (`application/x-www-form-urlencoded`).
pub struct FormData(BTreeMap<String, String>);

impl FormData {
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }
}

async fn read_form(headers: &HeaderMap, body: Body) -> Result<FormData, ApiError> {
    let ct = crate::api::content_type(headers);
    if !ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .eq_ignore_ascii_case("application/x-www-form-urlencoded")
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "console forms are sent as application/x-www-form-urlencoded",
        ));
    }
    let bytes = crate::api::read_body(body, FORM_LIMIT).await?;
    // Each field once: a repeated one is ambiguous (which value counts?),
    // and a repeated token is no token.
    let mut fields = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(&bytes) {
        if fields.insert(k.to_string(), v.into_owned()).is_some() {
            if k == "csrf" {
                return Err(csrf_error());
            }
            return Err(ApiError::validation(BTreeMap::from([(
                k.into_owned(),
                vec!["must be given once".to_string()],
            )])));
        }
    }
    Ok(FormData(fields))
}

fn csrf_error() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "csrf_token_invalid",
        "this form did not come from your console session (or the page is too old): nothing was changed. Go back, reload the page and send it again.",
    )
}

fn csrf_refused() -> Response {
    error_page(None, &csrf_error())
}

/// A state-changing form: the session's CSRF token must come with it.
async fn signed_form(
    signed: &Signed,
    headers: &HeaderMap,
    body: Body,
) -> Result<FormData, Response> {
    let form = match read_form(headers, body).await {
        Ok(f) => f,
        // Not a form: it cannot carry the token either.
        Err(e) if e.status == StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            tracing::warn!(operator = %signed.operator.name, "console form refused: not a form, so no CSRF token");
            return Err(csrf_refused());
        }
        Err(e) => return Err(error_page(Some(signed), &e)),
    };
    match form.get("csrf") {
        Some(t) if same(t, &signed.csrf) => Ok(form),
        _ => {
            tracing::warn!(operator = %signed.operator.name, "console form refused: no valid CSRF token");
            Err(csrf_refused())
        }
    }
}

/// A state-changing form from a signed-in operator, its CSRF token
/// checked (the body extractor: it comes last among a handler's arguments).
pub struct Posted {
    pub signed: Signed,
    pub form: FormData,
}

impl axum::extract::FromRequest<AppState> for Posted {
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let signed = Signed::from_request_parts(&mut parts, state).await?;
        let form = signed_form(&signed, &parts.headers, body).await?;
        Ok(Posted { signed, form })
    }
}

/// An error shown as a page (the API's message, for a person).
fn error_page(signed: Option<&Signed>, e: &ApiError) -> Response {
    let page = pages::error(signed, e);
    html(e.status, page)
}

fn html(status: StatusCode, page: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page.into_string(),
    )
        .into_response()
}

/// The headers every console answer carries.
async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// Every answer under `/console`, also those made outside its handlers
/// (an unknown path, a method a route does not take, a timeout): an error
/// is a console page, not the API's problem document, and the console's
/// headers are on it.
pub async fn pages_only(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let path = req.uri().path();
    let console = path == "/console" || path.starts_with("/console/");
    let resp = next.run(req).await;
    if !console {
        return resp;
    }
    let status = resp.status();
    let problem = crate::api::content_type(resp.headers()).starts_with("application/problem+json");
    if !(problem && (status.is_client_error() || status.is_server_error())) {
        return security_headers(resp).await;
    }
    let allow = resp.headers().get(header::ALLOW).cloned();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let p: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let detail = match status {
        StatusCode::NOT_FOUND => "There is no such console page.".to_string(),
        StatusCode::METHOD_NOT_ALLOWED => {
            "This console page does not take that method.".to_string()
        }
        _ => p["detail"]
            .as_str()
            .unwrap_or("the request could not be processed")
            .to_string(),
    };
    let e = ApiError::new(status, "console_error", detail);
    let mut out = security_headers(error_page(None, &e)).await;
    if let Some(a) = allow {
        out.headers_mut().insert(header::ALLOW, a);
    }
    out
}

fn peer(parts_ext: &axum::http::Extensions) -> IpAddr {
    parts_ext
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

// ---- sign-in and sign-out ----------------------------------------------

async fn sign_in_page(
    Extension(console): Extension<Arc<Console>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let q: BTreeMap<String, String> = form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let next = q
        .get("next")
        .and_then(|n| safe_next(n))
        .unwrap_or("/console");
    let notice = q
        .contains_key("signed_out")
        .then_some("You are signed out.");
    sign_in_form(&console, &headers, StatusCode::OK, next, notice, None)
}

fn sign_in_form(
    console: &Console,
    headers: &HeaderMap,
    status: StatusCode,
    next: &str,
    notice: Option<&str>,
    error: Option<&str>,
) -> Response {
    let token = random_token();
    let mut resp = html(status, pages::sign_in(&token, next, notice, error));
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SIGN_IN_COOKIE, &token, Some(3600), secure(console, headers)),
    );
    resp
}

async fn sign_in(State(state): State<AppState>, req: axum::extract::Request) -> Response {
    let (parts, body) = req.into_parts();
    let console = console_of(&parts);
    let headers = parts.headers;
    let ip = peer(&parts.extensions);
    let form = match read_form(&headers, body).await {
        Ok(f) => f,
        Err(e) => return error_page(None, &e),
    };
    let next = form
        .get("next")
        .and_then(safe_next)
        .unwrap_or("/console")
        .to_string();
    let pre = cookie(&headers, SIGN_IN_COOKIE).filter(|t| well_formed(t));
    match (pre, form.get("csrf")) {
        (Some(c), Some(f)) if same(c, f) => {}
        _ => {
            tracing::warn!(%ip, "console sign-in refused: no valid CSRF token");
            return csrf_refused();
        }
    }
    if let Err(wait) = console.limiter.check(ip) {
        tracing::warn!(%ip, "console sign-in refused: too many failed attempts");
        let e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_sign_in_attempts",
            format!(
                "too many failed sign-ins from this address: try again in {}",
                pages::format_age(wait.max(Duration::from_secs(1)))
            ),
        )
        .retry_after(wait.as_secs().max(1));
        let mut resp = error_page(None, &e);
        if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return resp;
    }
    let key = form.get("key").unwrap_or("").trim();
    let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    let operator = crate::api::find_key(&state.gateway.operators, &digest, |o| &o.key_hashes);
    let Some(operator) = operator.filter(|_| !key.is_empty()) else {
        console.limiter.failed(ip);
        let pos =
            crate::api::find_key(&state.gateway.clients, &digest, |c| &c.key_hashes).is_some();
        // Never the key itself, nor any part of it.
        tracing::warn!(%ip, pos_key = pos, "console sign-in failed");
        let msg = if pos {
            "That is a POS key: the console takes an operator key ([[operators]] in the configuration)."
        } else {
            "That key is not an operator key of this gateway."
        };
        return sign_in_form(
            &console,
            &headers,
            StatusCode::UNAUTHORIZED,
            &next,
            None,
            Some(msg),
        );
    };
    console.limiter.succeeded(ip);
    let now = state.gateway.clock.now();
    let s = console.settings;
    let store = state.gateway.store.console();
    if let Err(e) = store.prune_sessions(now - s.idle, now - s.absolute).await {
        tracing::warn!(error = %e, "console: pruning ended sessions failed");
    }
    let token = random_token();
    let row = SessionRow {
        id_sha256: digest_hex(&token),
        operator: operator.name.clone(),
        csrf_token: random_token(),
        created_at: now,
        last_seen_at: now,
    };
    if let Err(e) = store.create_session(&row).await {
        return error_page(None, &ApiError::from(e));
    }
    tracing::info!(operator = %operator.name, %ip, "console sign-in");
    let secure = secure(&console, &headers);
    let mut resp = see_other(&next);
    let h = resp.headers_mut();
    h.append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, &token, None, secure),
    );
    h.append(
        header::SET_COOKIE,
        set_cookie(SIGN_IN_COOKIE, "", Some(0), secure),
    );
    resp
}

async fn sign_out(
    State(state): State<AppState>,
    Extension(console): Extension<Arc<Console>>,
    headers: HeaderMap,
    Posted { signed, .. }: Posted,
) -> Response {
    if let Err(e) = state
        .gateway
        .store
        .console()
        .end_session(&signed.id_sha256)
        .await
    {
        return error_page(Some(&signed), &ApiError::from(e));
    }
    tracing::info!(operator = %signed.operator.name, "console sign-out");
    let mut resp = see_other("/console/sign-in?signed_out=1");
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, "", Some(0), secure(&console, &headers)),
    );
    resp
}

// ---- pages ---------------------------------------------------------------

fn op(signed: &Signed) -> OperatorAuthed {
    OperatorAuthed(signed.operator.clone())
}

fn query_map(raw: &Option<String>) -> BTreeMap<String, String> {
    form_urlencoded::parse(raw.as_deref().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

async fn overview(State(state): State<AppState>, signed: Signed) -> Response {
    match pages::overview_data(&state).await {
        Ok(data) => html(StatusCode::OK, pages::overview(&signed, &data)),
        Err(e) => error_page(Some(&signed), &e),
    }
}

async fn review(
    State(state): State<AppState>,
    signed: Signed,
    RawQuery(raw): RawQuery,
) -> Response {
    let q = query_map(&raw);
    // Oldest first: the one waiting longest is handled first.
    let queue = async {
        let rows = state.gateway.review_queue_ordered(100, true).await?;
        let outside = state
            .gateway
            .store
            .reconciliations()
            .outside_refunds(None, 100)
            .await?;
        Ok::<_, crate::store::StoreError>(crate::api::operator::ReviewQueue {
            object: "list",
            data: rows
                .iter()
                .map(|r| crate::api::operator::OperatorRefundObject::of(&state, r))
                .collect(),
            outside_refunds: outside.into_iter().map(Into::into).collect(),
        })
    };
    match queue.await {
        Ok(queue) => {
            let now = state.gateway.clock.now();
            html(
                StatusCode::OK,
                pages::review(&signed, &queue, now, q.get("done").map(String::as_str)),
            )
        }
        Err(e) => error_page(Some(&signed), &ApiError::from(e)),
    }
}

async fn acknowledge_outside(
    State(state): State<AppState>,
    Path((account, id)): Path<(String, String)>,
    Posted { signed, form }: Posted,
) -> Response {
    let note = one_line(form.get("note").unwrap_or(""));
    let r = crate::api::operator::acknowledge_outside(
        State(state.clone()),
        op(&signed),
        Path((account, id)),
        json_headers(),
        Body::from(serde_json::json!({ "note": note }).to_string()),
    )
    .await;
    match r {
        Ok(_) => see_other("/console/review?done=acknowledged"),
        Err(e) => error_page(Some(&signed), &e),
    }
}

fn encode(pairs: &BTreeMap<String, String>) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        out.append_pair(k, v);
    }
    out.finish()
}

/// The query of a search form without its empty fields (a form sends every
/// field; the API takes only those given).
fn without_empty(raw: &Option<String>) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(raw.as_deref().unwrap_or("").as_bytes()) {
        if !v.trim().is_empty() {
            out.append_pair(&k, v.trim());
        }
    }
    out.finish()
}

async fn refunds(
    State(state): State<AppState>,
    signed: Signed,
    RawQuery(raw): RawQuery,
) -> Response {
    let query = without_empty(&raw);
    let q = query_map(&Some(query.clone()));
    let r = crate::api::operator::list(
        State(state.clone()),
        op(&signed),
        RawQuery(Some(query.clone())),
    )
    .await;
    let (status, page) = match r {
        Ok(Json(list)) => (
            StatusCode::OK,
            pages::refunds(&signed, &state, &q, Ok(&list)),
        ),
        Err(e) => (e.status, pages::refunds(&signed, &state, &q, Err(&e))),
    };
    html(status, page)
}

async fn refund(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let q = query_map(&raw);
    refund_page(
        &state,
        &signed,
        &id,
        StatusCode::OK,
        q.get("done").map(String::as_str),
        None,
    )
    .await
}

async fn refund_page(
    state: &AppState,
    signed: &Signed,
    id: &str,
    status: StatusCode,
    done: Option<&str>,
    error: Option<&ApiError>,
) -> Response {
    match pages::refund_data(state, id).await {
        Ok(data) => html(status, pages::refund(signed, &data, done, error)),
        Err(e) => error_page(Some(signed), &e),
    }
}

fn json_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h
}

/// A note as the API takes it: one line (a text area's line breaks become spaces).
fn one_line(s: &str) -> String {
    s.split(['\r', '\n'])
        .filter(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
}

async fn sync(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { signed, .. }: Posted,
) -> Response {
    let r = crate::api::operator::sync(State(state.clone()), op(&signed), Path(id.clone())).await;
    after_refund_action(&state, &signed, &id, r.map(|_| ()), "synced").await
}

/// After an action on a refund: back to its page saying what was done, or
/// its page with the refusal (an unknown or ill-formed id: an error page).
async fn after_refund_action(
    state: &AppState,
    signed: &Signed,
    id: &str,
    result: Result<(), ApiError>,
    done: &str,
) -> Response {
    match result {
        Ok(()) => see_other(&format!(
            "/console/refunds/{}?done={done}",
            pages::path_segment(id)
        )),
        Err(e) if e.status == StatusCode::NOT_FOUND => error_page(Some(signed), &e),
        Err(e) => refund_page(state, signed, id, e.status, None, Some(&e)).await,
    }
}

async fn resolve(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { signed, form }: Posted,
) -> Response {
    let body = serde_json::json!({
        "status": form.get("status").unwrap_or(""),
        "note": one_line(form.get("note").unwrap_or("")),
    });
    let r = crate::api::operator::resolve(
        State(state.clone()),
        op(&signed),
        Path(id.clone()),
        json_headers(),
        Body::from(body.to_string()),
    )
    .await;
    after_refund_action(&state, &signed, &id, r.map(|_| ()), "resolved").await
}

async fn redeliver(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { signed, form }: Posted,
) -> Response {
    let back = form
        .get("back")
        .and_then(safe_next)
        .unwrap_or("/console/webhooks")
        .to_string();
    match crate::api::events::redeliver(State(state.clone()), op(&signed), Path(id)).await {
        Ok(_) => see_other(&with_done(&back, "redelivered")),
        Err(e) => error_page(Some(&signed), &e),
    }
}

fn with_done(path: &str, done: &str) -> String {
    let base = path.split('?').next().unwrap_or(path);
    format!("{base}?done={done}")
}

async fn webhooks(
    State(state): State<AppState>,
    signed: Signed,
    RawQuery(raw): RawQuery,
) -> Response {
    let mut query = query_map(&Some(without_empty(&raw)));
    let done = query.remove("done");
    let forwarded = encode(&query);
    let r = crate::api::events::deliveries(
        State(state.clone()),
        op(&signed),
        RawQuery(Some(forwarded)),
    )
    .await;
    let disabled = match state.gateway.store.events().disabled().await {
        Ok(d) => d,
        Err(e) => return error_page(Some(&signed), &ApiError::from(e)),
    };
    match r {
        Ok(Json(list)) => html(
            StatusCode::OK,
            pages::webhooks(&signed, &state, &query, &list, &disabled, done.as_deref()),
        ),
        Err(e) => error_page(Some(&signed), &e),
    }
}

async fn enable_endpoint(
    State(state): State<AppState>,
    Path((client, n)): Path<(String, String)>,
    Posted { signed, .. }: Posted,
) -> Response {
    match crate::api::events::enable_endpoint(State(state.clone()), op(&signed), Path((client, n)))
        .await
    {
        Ok(_) => see_other("/console/webhooks?done=enabled"),
        Err(e) => error_page(Some(&signed), &e),
    }
}

async fn reconciliations(
    State(state): State<AppState>,
    signed: Signed,
    RawQuery(raw): RawQuery,
) -> Response {
    let mut q = query_map(&Some(without_empty(&raw)));
    let done = q.remove("done");
    let forwarded = encode(&q);
    match crate::api::reconciliations::list(
        State(state.clone()),
        op(&signed),
        RawQuery(Some(forwarded)),
    )
    .await
    {
        Ok(Json(list)) => html(
            StatusCode::OK,
            pages::reconciliations(&signed, &state, &list, done.as_deref(), None),
        ),
        Err(e) => error_page(Some(&signed), &e),
    }
}

async fn run_reconciliation(
    State(state): State<AppState>,
    Posted { signed, form }: Posted,
) -> Response {
    let body = serde_json::json!({
        "account": form.get("account").unwrap_or(""),
        "date": form.get("date").unwrap_or("").trim(),
    });
    let r = crate::api::reconciliations::run(
        State(state.clone()),
        op(&signed),
        json_headers(),
        Body::from(body.to_string()),
    )
    .await;
    match r {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            let bytes = axum::body::to_bytes(body, 1 << 20)
                .await
                .unwrap_or_default();
            let id = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["id"].as_str().map(str::to_string));
            match id {
                Some(id) if parts.status.is_success() => see_other(&format!(
                    "/console/reconciliations/{}",
                    pages::path_segment(&id)
                )),
                _ => see_other("/console/reconciliations"),
            }
        }
        Err(e) => {
            let list = crate::api::reconciliations::list(
                State(state.clone()),
                op(&signed),
                RawQuery(None),
            )
            .await;
            match list {
                Ok(Json(list)) => html(
                    e.status,
                    pages::reconciliations(&signed, &state, &list, None, Some(&e)),
                ),
                Err(_) => error_page(Some(&signed), &e),
            }
        }
    }
}

async fn reconciliation(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let q = query_map(&Some(without_empty(&raw)));
    let mut pass = BTreeMap::from([("items_limit".to_string(), "500".to_string())]);
    if let Some(a) = q.get("items_after") {
        pass.insert("items_after".into(), a.clone());
    }
    let forwarded = encode(&pass);
    let r = crate::api::reconciliations::one(
        State(state.clone()),
        op(&signed),
        Path(id),
        RawQuery(Some(forwarded)),
        HeaderMap::new(),
    )
    .await;
    let resp = match r {
        Ok(resp) => resp,
        Err(e) => return error_page(Some(&signed), &e),
    };
    let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
        .await
        .unwrap_or_default();
    match serde_json::from_slice::<crate::api::reconciliations::ReconciliationObject>(&bytes) {
        Ok(report) => html(StatusCode::OK, pages::reconciliation(&signed, &report)),
        Err(e) => error_page(
            Some(&signed),
            &ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                format!("the report could not be read: {e}"),
            ),
        ),
    }
}

async fn reconciliation_csv(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT, HeaderValue::from_static("text/csv"));
    let r = crate::api::reconciliations::one(
        State(state.clone()),
        op(&signed),
        Path(id.clone()),
        RawQuery(None),
        headers,
    )
    .await;
    match r {
        Ok(mut resp) => {
            let name: String = id
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}.csv\"")) {
                resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
            }
            resp
        }
        Err(e) => error_page(Some(&signed), &e),
    }
}

async fn css() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("assets/console.css"),
    )
}

async fn js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/console.js"),
    )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// The console's routes, with its state and its headers on every answer.
pub fn routes(console: Console) -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/console", get(overview))
        .route("/console/sign-in", get(sign_in_page).post(sign_in))
        .route("/console/sign-out", post(sign_out))
        .route("/console/review", get(review))
        .route(
            "/console/outside-refunds/{account}/{id}/acknowledge",
            post(acknowledge_outside),
        )
        .route("/console/refunds", get(refunds))
        .route("/console/refunds/{id}", get(refund))
        .route("/console/refunds/{id}/sync", post(sync))
        .route("/console/refunds/{id}/resolve", post(resolve))
        .route("/console/events/{id}/redeliver", post(redeliver))
        .route("/console/webhooks", get(webhooks))
        .route(
            "/console/webhook-endpoints/{client}/{n}/enable",
            post(enable_endpoint),
        )
        .route(
            "/console/reconciliations",
            get(reconciliations).post(run_reconciliation),
        )
        .route("/console/reconciliations/{id}", get(reconciliation))
        .route("/console/reconciliations/{id}/csv", get(reconciliation_csv))
        .route("/console/assets/console.css", get(css))
        .route("/console/assets/console.js", get(js))
        .layer(axum::middleware::map_response(security_headers))
        .layer(Extension(Arc::new(console)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_inside_the_console() {
        assert_eq!(
            safe_next("/console/refunds?status=pending"),
            Some("/console/refunds?status=pending")
        );
        for bad in [
            "https://evil.example/",
            "//evil.example",
            "/console//evil",
            "/consolex\\",
            "/v1/refunds",
            "/console/\nx",
        ] {
            assert_eq!(safe_next(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn failed_sign_ins_are_limited_per_address_and_cleared_by_a_success() {
        let l = SignInLimiter::new(3, Duration::from_secs(60));
        let a = IpAddr::from([10, 0, 0, 1]);
        let b = IpAddr::from([10, 0, 0, 2]);
        for _ in 0..3 {
            assert!(l.check(a).is_ok());
            l.failed(a);
        }
        let wait = l.check(a).expect_err("limited");
        assert!(wait <= Duration::from_secs(60) && wait > Duration::from_secs(50));
        assert!(l.check(b).is_ok(), "another address is not limited");
        l.succeeded(a);
        assert!(l.check(a).is_ok());
    }

    #[test]
    fn tokens_are_random_and_well_formed() {
        let (a, b) = (random_token(), random_token());
        assert!(well_formed(&a) && well_formed(&b) && a != b);
        assert!(!well_formed("short") && !well_formed(&format!("{}=", &a[..42])));
    }

    #[test]
    fn cookies_are_read_by_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; rg_console=xyz; b=2"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, SIGN_IN_COOKIE), None);
    }
}
