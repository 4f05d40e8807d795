//! Values every layer shares, parsed once where they enter: the provider
//! that took a payment and a refund's id. A value of these types is valid;
//! what each provider does with it lives in `providers/`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The provider that took the sale (and so makes its refunds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Pockyt,
    Pay10,
}

impl ProviderKind {
    /// Every provider the gateway speaks.
    pub const ALL: [ProviderKind; 2] = [ProviderKind::Pockyt, ProviderKind::Pay10];

    pub fn as_str(&self) -> &'static str {
        match self {
            ProviderKind::Pockyt => "pockyt",
            ProviderKind::Pay10 => "pay10",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pockyt" => Some(ProviderKind::Pockyt),
            "pay10" => Some(ProviderKind::Pay10),
            _ => None,
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored text that is not one of a type's values.
#[derive(Debug, Clone, thiserror::Error)]
#[error("is not a valid {what}")]
pub struct Invalid {
    pub what: &'static str,
    pub value: String,
}

impl TryFrom<String> for ProviderKind {
    type Error = Invalid;
    fn try_from(s: String) -> Result<Self, Invalid> {
        ProviderKind::parse(&s).ok_or(Invalid {
            what: "provider",
            value: s,
        })
    }
}

/// A refund's id: `rf_` and 26 upper-case alphanumerics (a ULID when the
/// gateway made it: time-ordered, unique without coordination).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct RefundId(String);

impl From<RefundId> for String {
    fn from(id: RefundId) -> String {
        id.0
    }
}

impl RefundId {
    pub fn generate() -> Self {
        RefundId(format!("rf_{}", ulid::Ulid::new()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for RefundId {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        let ok = s.strip_prefix("rf_").is_some_and(|u| {
            u.len() == 26
                && u.bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
        });
        if ok {
            Ok(RefundId(s.to_string()))
        } else {
            Err(Invalid {
                what: "refund id",
                value: s.chars().take(64).collect(),
            })
        }
    }
}

impl TryFrom<String> for RefundId {
    type Error = Invalid;
    fn try_from(s: String) -> Result<Self, Invalid> {
        s.parse()
    }
}

impl std::ops::Deref for RefundId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for RefundId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RefundId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for RefundId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for RefundId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refund_ids_are_checked() {
        let id = RefundId::generate();
        assert_eq!(id.as_str().parse::<RefundId>().unwrap(), id);
        for bad in [
            "",
            "rf_",
            "rf_x",
            "01ARZ3NDEKTSV4RRFFQ69G5FAV",
            "rf_01ARZ3NDEKTSV4RRFFQ69G5FA!",
            "rf_01arz3ndektsv4rrffq69g5fav",
        ] {
            assert!(bad.parse::<RefundId>().is_err(), "{bad}");
        }
        assert!(ProviderKind::try_from("stripe".to_string()).is_err());
    }
}

/// The gateway's reading of a provider answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Pending,
    Failed,
    /// Timeout, connection error, 5xx or unreadable body: the refund may or may not have happened.
    Unknown,
    /// A status query says the provider has no such refund.
    NotFound,
    /// The provider refused to answer a status query because of our
    /// credentials or signature (Pay10 "Invalid Hash", Pockyt "data error :
    /// verifySign"): an operator must fix the account; asking again will not help.
    Misconfigured,
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Pending => "pending",
            Outcome::Failed => "failed",
            Outcome::Unknown => "unknown",
            Outcome::NotFound => "not_found",
            Outcome::Misconfigured => "misconfigured",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Outcome::Succeeded,
            Outcome::Pending,
            Outcome::Failed,
            Outcome::Unknown,
            Outcome::NotFound,
            Outcome::Misconfigured,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
    }
}

impl TryFrom<String> for Outcome {
    type Error = Invalid;
    fn try_from(s: String) -> Result<Self, Invalid> {
        Outcome::parse(&s).ok_or(Invalid {
            what: "provider outcome",
            value: s,
        })
    }
}
