//! HTTP: one module per resource. Handlers validate, call the domain, and
//! render its answers; they hold no business rules of their own.

pub mod docs;
pub mod error;
pub mod events;
pub mod health;
pub mod ipn;
pub mod operator;
pub mod parse;
pub mod reconciliations;
pub mod refunds;
pub mod sales;

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Client;
use crate::refunds::Gateway;
pub use error::ApiError;

#[derive(Clone)]
pub struct AppState {
    pub gateway: Arc<Gateway>,
}

/// The API client a request's Bearer key belongs to.
pub struct Authed(pub Arc<Client>);

/// The SHA-256 of the request's Bearer key.
fn bearer_digest(parts: &Parts) -> Result<[u8; 32], ApiError> {
    if parts.headers.get_all(header::AUTHORIZATION).iter().count() > 1 {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send one Authorization header, not several",
        ));
    }
    let key = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            // The scheme is case-insensitive (RFC 9110 section 11.1).
            let (scheme, key) = v.trim_start().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(key)
        })
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(ApiError::unauthorized)?;
    Ok(Sha256::digest(key.as_bytes()).into())
}

/// The holder of `digest` among `holders`, compared in constant time against
/// every one without stopping early.
pub(crate) fn find_key<T>(
    holders: &[Arc<T>],
    digest: &[u8; 32],
    hashes: impl Fn(&T) -> &[[u8; 32]],
) -> Option<Arc<T>> {
    let mut found = None;
    for h in holders {
        for hash in hashes(h) {
            if bool::from(hash.as_slice().ct_eq(digest.as_slice())) {
                found = Some(h.clone());
            }
        }
    }
    found
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let digest = bearer_digest(parts)?;
        if let Some(client) = find_key(&state.gateway.clients, &digest, |c| &c.key_hashes) {
            return Ok(Authed(client));
        }
        match find_key(&state.gateway.operators, &digest, |o| &o.key_hashes) {
            Some(op) => Err(ApiError::wrong_role(format!(
                "this is the operator key of {:?}: it works on /v1/operator/* and the `refunds` command, not on the POS API; a POS uses a [[clients]] key",
                op.name
            ))),
            None => Err(ApiError::unauthorized()),
        }
    }
}

/// An operator (a person who resolves refunds), by their own key: POS keys
/// are not accepted here, nor operator keys on the POS API.
pub struct OperatorAuthed(pub Arc<crate::config::Operator>);

impl FromRequestParts<AppState> for OperatorAuthed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let digest = bearer_digest(parts)?;
        if let Some(op) = find_key(&state.gateway.operators, &digest, |o| &o.key_hashes) {
            return Ok(OperatorAuthed(op));
        }
        match find_key(&state.gateway.clients, &digest, |c| &c.key_hashes) {
            Some(client) => Err(ApiError::wrong_role(format!(
                "this is the POS key of client {:?}: it works on /v1/refunds, not on the operator API; an operator uses an [[operators]] key (refund-gateway keys new --operator NAME)",
                client.name
            ))),
            None => Err(ApiError::unauthorized()),
        }
    }
}

/// A client's `X-Request-Id` is echoed and logged only if it is a short
/// printable token (at most 128 of `A-Z a-z 0-9 - _ . :`); otherwise it is
/// dropped and the gateway makes its own.
pub async fn sanitize_request_id<B>(mut req: axum::http::Request<B>) -> axum::http::Request<B> {
    let ok = |v: &axum::http::HeaderValue| {
        let b = v.as_bytes();
        !b.is_empty()
            && b.len() <= 128
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
    };
    let headers = req.headers_mut();
    let values: Vec<_> = headers.get_all("x-request-id").iter().collect();
    if values.len() > 1 || values.first().is_some_and(|v| !ok(v)) {
        headers.remove("x-request-id");
    }
    req
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("route")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method",
    )
}

/// The `Content-Type` of a request or an answer, `""` when absent or not text.
pub fn content_type(headers: &axum::http::HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Gives a problem+json body to error responses produced below the handlers
/// (timeouts, body limits) that would otherwise be empty or plain text.
pub async fn problem_for_bare_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = content_type(resp.headers()).contains("json");
    // The console's pages are HTML for a person, errors included.
    let is_html = content_type(resp.headers()).starts_with("text/html");
    if !(status.is_client_error() || status.is_server_error()) || is_json || is_html {
        return resp;
    }
    let (code, detail) = match status {
        StatusCode::REQUEST_TIMEOUT => (
            "request_timeout",
            "the request took too long; retry with the same Idempotency-Key",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "the request body is too large"),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "this route does not accept that method",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported_media_type",
            "send Content-Type: application/json",
        ),
        StatusCode::NOT_FOUND => ("not_found", "not found"),
        s if s.is_server_error() => (
            "internal_error",
            "an internal error occurred; it has been logged",
        ),
        _ => ("bad_request", "the request could not be processed"),
    };
    let mut out = ApiError::new(status, code, detail).into_response();
    if let Some(id) = resp.headers().get("x-request-id") {
        out.headers_mut().insert("x-request-id", id.clone());
    }
    out
}

/// A JSON body is required: `Content-Type: application/json` (or a `+json`
/// type), in UTF-8 (another charset, or a `Content-Encoding`, would be read
/// as something it is not): 415 otherwise.
pub fn require_json(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let mut parts = content_type(headers).split(';').map(str::trim);
    let mime = parts.next().unwrap_or("").to_ascii_lowercase();
    let json =
        mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"));
    let utf8 = parts
        .filter_map(|p| p.split_once('='))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case("charset"))
        .all(|(_, v)| v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8"));
    let encoded = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| !v.trim().eq_ignore_ascii_case("identity"));
    if json && utf8 && !encoded {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "send Content-Type: application/json (UTF-8, no Content-Encoding)",
    ))
}

/// Reads a request body of at most `limit` bytes. A larger body is read on
/// (and dropped) up to a hard cap before the 413 goes out, so the client has
/// finished sending and actually receives the problem document instead of a
/// reset connection.
pub async fn read_body(
    body: axum::body::Body,
    limit: usize,
) -> Result<axum::body::Bytes, ApiError> {
    use futures_util::StreamExt;
    const DRAIN_CAP: usize = 8 * 1024 * 1024;
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "body_read_error",
                "the request body could not be read",
            )
        })?;
        seen += chunk.len();
        if seen <= limit {
            buf.extend_from_slice(&chunk);
        } else if seen > DRAIN_CAP {
            break;
        }
    }
    if seen > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {limit} bytes"),
        ));
    }
    Ok(buf.into())
}
