//! Requests parsed by serde into checked types: the same structs describe
//! the request to the OpenAPI document and parse it, so the two cannot
//! drift. A value that fails to parse is refused with our problem+json:
//! `invalid_request`, naming the field (its path) and what it must be.

use std::collections::BTreeMap;
use std::fmt;

use axum::http::StatusCode;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::ApiError;
use crate::types::{RefundId, Timestamp};

/// Parses a JSON body into `T`; the first field that does not fit is named.
pub fn json<T: de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let malformed = |e: serde_json::Error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not valid JSON: {e}"),
        )
    };
    // Every body is a JSON object (serde would also take a struct as an array).
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            return Err(malformed(e));
        }
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "the body must be a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => field_error(&path, &inner.to_string()),
            _ => malformed(inner),
        }
    })?;
    de.end().map_err(malformed)?;
    Ok(value)
}

/// Parses a query string into `T`; the first parameter that does not fit is named.
pub fn query<T: de::DeserializeOwned>(raw: Option<&str>) -> Result<T, ApiError> {
    let raw = raw.unwrap_or("");
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(raw.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        field_error(&path, &e.into_inner().to_string())
    })
}

/// A refund id from a path. Anything that cannot be one names no refund:
/// 404, answered without asking the database (which may refuse bytes such
/// as NUL).
pub fn refund_id(raw: &str) -> Result<RefundId, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found("refund"))
}

/// serde's message, in our words: which field, and what it must be.
fn field_error(path: &str, message: &str) -> ApiError {
    let message = message.split(" at line ").next().unwrap_or(message);
    // Missing and unknown fields are reported at the enclosing level.
    let named = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('`').next())
            .map(str::to_string)
    };
    let (field, text) = if let Some(f) = named("missing field `") {
        (f, "is required".to_string())
    } else if let Some(f) = named("unknown field `") {
        (f, "is not a known field".to_string())
    } else if let Some(f) = named("duplicate field `") {
        (f, "is given more than once".to_string())
    } else if message.starts_with("invalid type: null") {
        (path.to_string(), "is required".to_string())
    } else if let Some((_, expected)) = message
        .strip_prefix("invalid type: ")
        .and_then(|m| m.split_once(", expected "))
    {
        (path.to_string(), format!("must be {expected}"))
    } else if let Some((_, expected)) = message
        .strip_prefix("unknown variant `")
        .and_then(|m| m.split_once("`, expected "))
    {
        (path.to_string(), format!("must be {expected}"))
    } else {
        // Our own checks' messages (see the types below).
        (path.to_string(), message.to_string())
    };
    ApiError::validation(BTreeMap::from([(field, vec![text])]))
}

/// Deserializes a string and checks it with `check` (its message on failure).
fn checked_string<'de, D, T>(
    d: D,
    check: impl FnOnce(String) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    let s = String::deserialize(d)?;
    check(s).map_err(de::Error::custom)
}

/// Printable text of 1 to `MAX` characters (a name, a reference, a reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text<const MAX: usize>(pub String);

impl<'de, const MAX: usize> Deserialize<'de> for Text<MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_string(d, |s| {
            if s.trim().is_empty() {
                Err("must not be empty".into())
            } else if s.chars().count() > MAX {
                Err(format!("must be at most {MAX} characters"))
            } else if s.chars().any(char::is_control) {
                Err("must not contain control characters".into())
            } else {
                Ok(Text(s))
            }
        })
    }
}

/// A list filter: at most 255 characters, none of them control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter(pub String);

impl<'de> Deserialize<'de> for Filter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_string(d, |s| {
            if s.chars().count() > 255 || s.chars().any(char::is_control) {
                Err("must be at most 255 characters with no control characters".into())
            } else {
                Ok(Filter(s))
            }
        })
    }
}

/// An amount as the POS sends it: a decimal string (read against the
/// currency later, so the precision rule is the currency's), never a JSON
/// number (which a client's float may already have rounded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmountText(pub String);

impl<'de> Deserialize<'de> for AmountText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        const NUMBER: &str = "must be a decimal string such as \"10.50\", never a JSON number";
        impl Visitor<'_> for V {
            type Value = AmountText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a decimal string such as \"10.50\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<AmountText, E> {
                Ok(AmountText(s.to_string()))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<AmountText, E> {
                Err(E::custom(NUMBER))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<AmountText, E> {
                Err(E::custom(NUMBER))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<AmountText, E> {
                Err(E::custom(NUMBER))
            }
        }
        d.deserialize_any(V)
    }
}

/// An address the mailer can send to: parsed by `lettre` (the crate that
/// sends it), at most 254 characters, with a dot in its domain (no bare
/// hosts on a receipt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(pub String);

impl<'de> Deserialize<'de> for Email {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_string(d, |s| {
            let ok = s.chars().count() <= 254
                && s.parse::<lettre::Address>()
                    .is_ok_and(|a| a.domain().contains('.') && !a.domain().ends_with('.'));
            if ok {
                Ok(Email(s))
            } else {
                Err("must be an email address".into())
            }
        })
    }
}

/// The client's own labels: at most 20 keys of 1-40 characters, string
/// values of at most 500.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metadata(pub BTreeMap<String, String>);

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A key given twice is refused (a map would keep the last silently,
        // and a replay with another first value would count as the same).
        struct Entries(Vec<(String, serde_json::Value)>);
        impl<'de> Deserialize<'de> for Entries {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = Entries;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str("an object of string values")
                    }
                    fn visit_map<A: de::MapAccess<'de>>(
                        self,
                        mut m: A,
                    ) -> Result<Entries, A::Error> {
                        let mut out = Vec::new();
                        while let Some(entry) = m.next_entry::<String, serde_json::Value>()? {
                            out.push(entry);
                        }
                        Ok(Entries(out))
                    }
                }
                d.deserialize_map(V)
            }
        }
        let entries = Entries::deserialize(d)?.0;
        let mut map = BTreeMap::new();
        for (k, v) in entries {
            if map.contains_key(&k) {
                return Err(de::Error::custom(format!(
                    "key {k:?} is given more than once"
                )));
            }
            map.insert(k, v);
        }
        if map.len() > 20 {
            return Err(de::Error::custom("may have at most 20 keys"));
        }
        let mut out = BTreeMap::new();
        for (k, v) in map {
            let serde_json::Value::String(s) = v else {
                return Err(de::Error::custom(format!(
                    "key {k:?}: values must be strings"
                )));
            };
            if k.is_empty() || k.chars().count() > 40 || s.chars().count() > 500 {
                return Err(de::Error::custom(format!(
                    "key {k:?}: keys are 1-40 characters, values at most 500"
                )));
            }
            // Every database stores what is accepted, the same way: no NUL
            // (Postgres text cannot hold one), no control character in a key.
            if k.chars().any(char::is_control) {
                return Err(de::Error::custom(format!(
                    "key {k:?}: keys must not contain control characters"
                )));
            }
            if s.contains('\0') {
                return Err(de::Error::custom(format!(
                    "key {k:?}: values must not contain the NUL character"
                )));
            }
            out.insert(k, s);
        }
        Ok(Metadata(out))
    }
}

/// A time in a query: RFC 3339, or Unix seconds. `.1` says whether it was
/// given to the whole second (no fraction), so that an inclusive upper bound
/// covers that second ([`TimeParam::last`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeParam(pub Timestamp, pub bool);

impl TimeParam {
    /// The last millisecond the time covers: given to the second, the
    /// second's last millisecond (times are shown to the second and stored
    /// to the millisecond); given with a fraction, itself.
    pub fn last(&self) -> Timestamp {
        if self.1 {
            self.0 + std::time::Duration::from_millis(999)
        } else {
            self.0
        }
    }
}

impl<'de> Deserialize<'de> for TimeParam {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_string(d, |v| {
            let digits = v.strip_prefix('-').unwrap_or(&v);
            if (1..=12).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
                if let Ok(secs) = v.parse::<i64>() {
                    return Ok(TimeParam(
                        Timestamp::from_unix_ms(secs.saturating_mul(1000)),
                        true,
                    ));
                }
            }
            time::OffsetDateTime::parse(&v, &time::format_description::well_known::Rfc3339)
                .map(|t| {
                    TimeParam(
                        Timestamp::from_offset_date_time(t),
                        t.nanosecond() == 0 && !v.contains('.'),
                    )
                })
                .map_err(|_| "must be an RFC 3339 time or Unix seconds".to_string())
        })
    }
}

/// A page size: a whole number from 1 to 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(pub i64);

impl Default for Limit {
    fn default() -> Self {
        Limit(20)
    }
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_string(d, |s| match s.parse::<i64>() {
            Ok(n) if (1..=100).contains(&n) => Ok(Limit(n)),
            _ => Err("must be a whole number from 1 to 100".into()),
        })
    }
}

/// `true` or `false` in a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flag(pub bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_string(d, |s| match s.as_str() {
            "true" => Ok(Flag(true)),
            "false" => Ok(Flag(false)),
            _ => Err("must be true or false".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: Text<5>,
        amount: AmountText,
        email: Option<Email>,
    }

    fn errors(r: Result<Body, ApiError>) -> (String, BTreeMap<String, Vec<String>>) {
        let e = r.unwrap_err();
        (e.code.to_string(), e.errors.unwrap_or_default())
    }

    #[test]
    fn field_errors_name_the_field() {
        let (code, e) = errors(json(br#"{"name":"abcdef","amount":"1"}"#));
        assert_eq!(
            (code.as_str(), e["name"][0].as_str()),
            ("invalid_request", "must be at most 5 characters")
        );
        let (_, e) = errors(json(br#"{"name":"a","amount":1.5}"#));
        assert!(e["amount"][0].contains("never a JSON number"), "{e:?}");
        let (_, e) = errors(json(br#"{"name":"a"}"#));
        assert_eq!(e["amount"], vec!["is required"]);
        let (_, e) = errors(json(br#"{"name":"a","amount":"1","amout":"1"}"#));
        assert_eq!(e["amout"], vec!["is not a known field"]);
        let (_, e) = errors(json(br#"{"name":5,"amount":"1"}"#));
        assert_eq!(e["name"], vec!["must be a string"]);
        let (_, e) = errors(json(br#"{"name":"a","amount":"1","email":"nope"}"#));
        assert_eq!(e["email"], vec!["must be an email address"]);
        let (code, _) = errors(json(br#"[1]"#));
        assert_eq!(code, "malformed_json");
        let (code, _) = errors(json(br#"{"name":"a","amount":"1"} x"#));
        assert_eq!(code, "malformed_json");
        assert!(json::<Body>(br#"{"name":"a","amount":"1","email":null}"#).is_ok());
    }
}
