//! Money at the boundary: ISO 4217 currencies (from `iso_currency`, not a hand
//! table) and amounts parsed from decimal strings into integer minor units.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// An ISO 4217 currency that has minor units (so amounts make sense for refunds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency(iso_currency::Currency);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("unknown ISO 4217 currency code")]
    UnknownCurrency,
    #[error("amount must be a decimal string such as \"10.50\"")]
    NotDecimal,
    #[error("amount must be greater than zero")]
    NotPositive,
    #[error("amount has more decimal places than the currency allows ({0})")]
    TooPrecise(u32),
    #[error("amount is too large")]
    TooLarge,
}

impl Currency {
    /// Parses an alpha code such as `USD` (upper case only, as ISO writes it).
    pub fn from_code(code: &str) -> Result<Self, MoneyError> {
        iso_currency::Currency::from_code(code)
            .filter(|c| c.exponent().is_some())
            .map(Currency)
            .ok_or(MoneyError::UnknownCurrency)
    }

    pub fn from_numeric(numeric: &str) -> Result<Self, MoneyError> {
        let n: u16 = numeric.parse().map_err(|_| MoneyError::UnknownCurrency)?;
        iso_currency::Currency::from_numeric(n)
            .filter(|c| c.exponent().is_some())
            .map(Currency)
            .ok_or(MoneyError::UnknownCurrency)
    }

    pub fn code(&self) -> &'static str {
        self.0.code()
    }

    /// The three-digit ISO numeric code, zero padded (`"048"`), as Pay10 sends it.
    pub fn numeric(&self) -> String {
        format!("{:03}", self.0.numeric())
    }

    /// Whether a provider's currency field names this currency: the alpha
    /// code (any case) or the ISO numeric code (Pay10's `CURRENCY_CODE`).
    pub fn matches_wire(&self, wire: &str) -> bool {
        let wire = wire.trim();
        wire.eq_ignore_ascii_case(self.code())
            || wire.parse::<u16>().is_ok_and(|n| n == self.0.numeric())
    }

    pub fn minor_digits(&self) -> u32 {
        u32::from(self.0.exponent().unwrap_or(0))
    }

    /// Parses a major-unit decimal string into minor units.
    pub fn parse_amount(&self, s: &str) -> Result<Minor, MoneyError> {
        let valid = !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-')
            && !s.starts_with('.')
            && !s.ends_with('.');
        if !valid {
            return Err(MoneyError::NotDecimal);
        }
        let digits = self.minor_digits();
        // Decimal places are counted on the text: the decimal type keeps at
        // most 28 and would round "1.000…0001" to 1 instead of refusing it.
        if let Some((_, fraction)) = s.split_once('.') {
            let significant = fraction.trim_end_matches('0').len();
            if significant > digits as usize {
                return Err(MoneyError::TooPrecise(digits));
            }
        }
        if s.len() > 40 {
            return Err(MoneyError::TooLarge);
        }
        let d = Decimal::from_str(s).map_err(|_| MoneyError::NotDecimal)?;
        if d <= Decimal::ZERO {
            return Err(MoneyError::NotPositive);
        }
        if d.normalize().scale() > digits {
            return Err(MoneyError::TooPrecise(digits));
        }
        let scaled = d
            .checked_mul(Decimal::from(10i64.pow(digits)))
            .ok_or(MoneyError::TooLarge)?;
        let minor: i64 = scaled
            .trunc()
            .to_string()
            .parse()
            .map_err(|_| MoneyError::TooLarge)?;
        // Keep far below i64::MAX so sums of many refunds cannot overflow.
        if minor > 1_000_000_000_000_000 {
            return Err(MoneyError::TooLarge);
        }
        Ok(Minor(minor))
    }

    /// Formats minor units as a major-unit string with exactly the currency's digits.
    pub fn format(&self, amount: Minor) -> String {
        let mut d = Decimal::from(amount.0);
        d.set_scale(self.minor_digits())
            .expect("exponent is at most 4");
        d.to_string()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl TryFrom<String> for Currency {
    type Error = MoneyError;
    fn try_from(s: String) -> Result<Self, MoneyError> {
        Currency::from_code(&s)
    }
}

impl TryFrom<i64> for Minor {
    type Error = MoneyError;
    fn try_from(v: i64) -> Result<Self, MoneyError> {
        Minor::new(v).ok_or(MoneyError::NotPositive)
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A request may write the code in any case ("usd"), as Stripe takes it.
        let s = String::deserialize(d)?;
        let upper = if s.len() == 3 && s.bytes().all(|b| b.is_ascii_alphabetic()) {
            s.to_ascii_uppercase()
        } else {
            s
        };
        Currency::from_code(&upper).map_err(|_| {
            serde::de::Error::custom(format!(
                "{upper:?} is not an ISO 4217 currency code such as USD or AED"
            ))
        })
    }
}

/// An amount in the currency's minor units (cents), never negative. Made
/// by [`Currency::parse_amount`] from a decimal string, or by [`Minor::new`]
/// from a count the gateway or a provider already holds in minor units.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(into = "i64", try_from = "i64")]
pub struct Minor(i64);

impl From<Minor> for i64 {
    fn from(m: Minor) -> i64 {
        m.0
    }
}

/// Minor units as the integer they are (`1050`); [`Currency::format`] writes money.
impl fmt::Display for Minor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Minor {
    /// `None` for a negative count.
    pub fn new(minor: i64) -> Option<Self> {
        (minor >= 0).then_some(Minor(minor))
    }

    pub fn get(&self) -> i64 {
        self.0
    }

    /// The last two minor digits, which drive the sandbox's magic amounts.
    pub fn last_two_digits(&self) -> i64 {
        self.0 % 100
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_within_minor_digits() {
        let usd = Currency::from_code("USD").unwrap();
        assert_eq!(usd.parse_amount("10.50"), Ok(Minor(1050)));
        assert_eq!(usd.parse_amount("10.5"), Ok(Minor(1050)));
        assert_eq!(usd.parse_amount("10"), Ok(Minor(1000)));
        assert_eq!(usd.parse_amount("0.010"), Ok(Minor(1)));
        assert_eq!(usd.parse_amount("1.001"), Err(MoneyError::TooPrecise(2)));
        assert_eq!(usd.parse_amount("0"), Err(MoneyError::NotPositive));
        assert_eq!(usd.parse_amount("-1"), Err(MoneyError::NotPositive));
        assert_eq!(usd.parse_amount("1e3"), Err(MoneyError::NotDecimal));
        assert_eq!(usd.parse_amount(" 1"), Err(MoneyError::NotDecimal));
        assert_eq!(usd.parse_amount("1."), Err(MoneyError::NotDecimal));
        assert_eq!(
            usd.parse_amount("99999999999999999999999"),
            Err(MoneyError::TooLarge)
        );
        let jpy = Currency::from_code("JPY").unwrap();
        assert_eq!(jpy.parse_amount("100"), Ok(Minor(100)));
        assert_eq!(jpy.parse_amount("1.5"), Err(MoneyError::TooPrecise(0)));
        let bhd = Currency::from_code("BHD").unwrap();
        assert_eq!(bhd.parse_amount("1.234"), Ok(Minor(1234)));
        assert_eq!(bhd.format(Minor(1234)), "1.234");
        assert_eq!(bhd.numeric(), "048");
    }

    #[test]
    fn formats_and_rejects_unknown() {
        let usd = Currency::from_code("USD").unwrap();
        assert_eq!(usd.format(Minor(1)), "0.01");
        assert_eq!(usd.format(Minor(1000)), "10.00");
        assert_eq!(Currency::from_code("AED").unwrap().numeric(), "784");
        assert_eq!(Currency::from_numeric("784").unwrap().code(), "AED");
        assert!(Currency::from_code("XXX").is_err());
        assert!(Currency::from_code("XAU").is_err());
        assert!(Currency::from_code("usd").is_err());
    }
}
