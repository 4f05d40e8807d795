//! Values every layer shares, parsed once where they enter: the provider
//! that took a payment and a refund's id. A value of these types is valid;
//! what each provider does with it lives in `providers/`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An enum stored as text: its variants with their texts, and `as_str`,
/// `parse`, `TryFrom<String>` (what the store's codec decodes with),
/// `Display` and comparison with text.
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        $name:ident ($what:literal) {
            $($(#[$vmeta:meta])* $variant:ident = $text:literal,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            pub fn as_str(&self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($text => Some($name::$variant),)*
                    _ => None,
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = Invalid;
            fn try_from(s: String) -> Result<Self, Invalid> {
                $name::parse(&s).ok_or(Invalid { what: $what, value: s })
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }
    };
}

pub(crate) use text_enum;

text_enum! {
    /// The provider that took the sale (and so makes its refunds). Adding
    /// one: a line here and its connector (README, "Adding a provider").
    #[derive(Serialize, Deserialize, PartialOrd, Ord)]
    #[serde(rename_all = "lowercase")]
    ProviderKind("provider") {
        Pockyt = "pockyt",
        Pay10 = "pay10",
    }
}

/// A stored text that is not one of a type's values.
#[derive(Debug, Clone, thiserror::Error)]
#[error("is not a valid {what}")]
pub struct Invalid {
    pub what: &'static str,
    pub value: String,
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

text_enum! {
    /// The gateway's reading of a provider answer.
    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    Outcome("provider outcome") {
        Succeeded = "succeeded",
        Pending = "pending",
        Failed = "failed",
        /// Timeout, connection error, 5xx or unreadable body: the refund may or may not have happened.
        Unknown = "unknown",
        /// A status query says the provider has no such refund.
        NotFound = "not_found",
        /// The provider refused to answer a status query because of our
        /// credentials or signature (Pay10 "Invalid Hash", Pockyt "data error :
        /// verifySign"): an operator must fix the account; asking again will not help.
        Misconfigured = "misconfigured",
    }
}

/// A moment on the gateway's clock (the database's; see `refunds::Clock`),
/// to the millisecond: stored as Unix milliseconds (UTC) on SQLite and as
/// `timestamptz` on Postgres, shown as RFC 3339. Arithmetic saturates: a
/// deadline far in the future stays far in the future.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(i64);

impl Timestamp {
    pub const EPOCH: Timestamp = Timestamp(0);
    pub const MAX: Timestamp = Timestamp(i64::MAX);

    pub const fn from_unix_ms(ms: i64) -> Self {
        Timestamp(ms)
    }

    /// Milliseconds since 1970-01-01T00:00:00Z.
    pub const fn unix_ms(self) -> i64 {
        self.0
    }

    /// This host's wall clock (only where no database clock applies: the
    /// clock's first reading, logs).
    pub fn host_now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }

    /// How long from `earlier` to this moment (zero when `earlier` is later).
    pub fn since(self, earlier: Timestamp) -> std::time::Duration {
        let ms = self.0.saturating_sub(earlier.0).max(0);
        std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))
    }

    /// Milliseconds from `earlier` to this moment (negative when `earlier` is later).
    pub fn ms_since(self, earlier: Timestamp) -> i64 {
        self.0.saturating_sub(earlier.0)
    }

    /// As `time`'s date-time (clamped to years 1970..=9999).
    pub fn to_offset_date_time(self) -> time::OffsetDateTime {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000).unwrap_or(
            if self.0 < 0 {
                time::OffsetDateTime::UNIX_EPOCH
            } else {
                time::macros::datetime!(9999-12-31 23:59:59.999 UTC)
            },
        )
    }

    pub fn from_offset_date_time(t: time::OffsetDateTime) -> Self {
        Timestamp(i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
    }

    /// RFC 3339 UTC, to the second (the API's times: `2026-12-07T02:06:07Z`).
    pub fn rfc3339(self) -> String {
        self.to_offset_date_time()
            .format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
            ))
            .unwrap_or_default()
    }

    /// RFC 3339 UTC, to the millisecond (messages and history lines).
    pub fn rfc3339_ms(self) -> String {
        self.to_offset_date_time()
            .format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .unwrap_or_else(|_| self.0.to_string())
    }
}

impl std::ops::Add<std::time::Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, d: std::time::Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }
}

impl std::ops::Sub<std::time::Duration> for Timestamp {
    type Output = Timestamp;
    fn sub(self, d: std::time::Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rfc3339_ms())
    }
}

text_enum! {
    /// A domain event: what the POS is told of about a refund (Standard
    /// Webhooks event types).
    #[derive(PartialOrd, Ord)]
    DomainEvent("event type") {
        /// Recorded, with its first answer.
        Created = "refund.created",
        Succeeded = "refund.succeeded",
        Failed = "refund.failed",
        /// Flagged for a person.
        ReviewNeeded = "refund.review_needed",
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
