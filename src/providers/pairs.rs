//! Every string the gateway signs, hashes or sends in a delimited form is
//! built here, from typed `(key, value)` pairs: Pay10's `KEY=VALUE~KEY=VALUE`
//! (refund plaintext, requery/webhook `HASH` input) and Pockyt's
//! `key=value&key=value&` (`verifySign` input).
//!
//! A delimited string is only as trustworthy as its delimiters: a value that
//! carries `~AMOUNT=9000` into Pay10's plaintext adds a pair the provider
//! reads (sorted after ours, it wins), and a value that carries `&b=2` into a
//! Pockyt signing string makes two different messages sign alike. So a
//! [`Pairs`] refuses, before anything is built:
//! - a key or value containing either delimiter of its format, or any
//!   control character;
//! - a key that is empty or given twice (what a provider does with a
//!   repeated key is unknown: the gateway never sends one).
//!
//! Pairs are kept sorted by key bytes (both providers sign byte-sorted keys),
//! so the rendered string is deterministic.

use std::collections::BTreeMap;

/// The two delimiters of one provider string format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairFormat {
    /// Between pairs: `~` (Pay10), `&` (Pockyt).
    pub pair_separator: char,
    /// Between a key and its value: `=` for both.
    pub key_separator: char,
    /// For messages: which string this is.
    pub name: &'static str,
}

/// Pay10's `KEY=VALUE~KEY=VALUE` (refund plaintext and `HASH` input).
pub const PAY10: PairFormat = PairFormat {
    pair_separator: '~',
    key_separator: '=',
    name: "Pay10 KEY=VALUE~",
};

/// Pockyt's `key=value&` (`verifySign` input).
pub const POCKYT: PairFormat = PairFormat {
    pair_separator: '&',
    key_separator: '=',
    name: "Pockyt key=value&",
};

/// Why a pair cannot go into a provider string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairError {
    #[error("{key}: contains {found:?}, a delimiter of the {format} string")]
    Delimiter {
        key: String,
        found: char,
        format: &'static str,
    },
    #[error("{key}: contains a control character")]
    Control { key: String },
    #[error("an empty key")]
    EmptyKey,
    #[error("{0}: given twice")]
    Repeated(String),
}

/// Byte-sorted pairs, each key once, with no delimiter inside a key or value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pairs {
    format: PairFormat,
    map: BTreeMap<String, String>,
}

impl Pairs {
    /// Builds the pairs of `format`, refusing the first pair that cannot be
    /// told apart from the delimiters (see the module docs).
    pub fn new<'a, I>(format: PairFormat, pairs: I) -> Result<Self, PairError>
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        let mut out = Pairs {
            format,
            map: BTreeMap::new(),
        };
        for (k, v) in pairs {
            out.push(k, v)?;
        }
        Ok(out)
    }

    /// Adds one pair (see [`Pairs::new`] for what is refused).
    pub fn push(&mut self, key: &str, value: &str) -> Result<(), PairError> {
        if key.is_empty() {
            return Err(PairError::EmptyKey);
        }
        for text in [key, value] {
            if let Some(found) = text
                .chars()
                .find(|c| *c == self.format.pair_separator || *c == self.format.key_separator)
            {
                return Err(PairError::Delimiter {
                    key: key.to_string(),
                    found,
                    format: self.format.name,
                });
            }
            if text.chars().any(char::is_control) {
                return Err(PairError::Control {
                    key: key.to_string(),
                });
            }
        }
        if self
            .map
            .insert(key.to_string(), value.to_string())
            .is_some()
        {
            return Err(PairError::Repeated(key.to_string()));
        }
        Ok(())
    }

    /// The pairs, sorted by key bytes.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// `k=v<sep>k=v` (Pay10's plaintext and hash input, without the salt).
    pub fn joined(&self) -> String {
        let mut out = String::new();
        for (i, (k, v)) in self.iter().enumerate() {
            if i > 0 {
                out.push(self.format.pair_separator);
            }
            out.push_str(k);
            out.push(self.format.key_separator);
            out.push_str(v);
        }
        out
    }

    /// `k=v<sep>k=v<sep>`: every pair followed by the separator (Pockyt's
    /// signing string, before the token digest).
    pub fn terminated(&self) -> String {
        let mut out = String::new();
        for (k, v) in self.iter() {
            out.push_str(k);
            out.push(self.format.key_separator);
            out.push_str(v);
            out.push(self.format.pair_separator);
        }
        out
    }

    /// Splits a string rendered by [`Pairs::joined`] back into its pairs
    /// (used by tests and the sandbox to check what was sent).
    pub fn parse_joined(format: PairFormat, text: &str) -> Option<BTreeMap<String, String>> {
        let mut map = BTreeMap::new();
        for pair in text.split(format.pair_separator) {
            let (k, v) = pair.split_once(format.key_separator)?;
            if map.insert(k.to_string(), v.to_string()).is_some() {
                return None;
            }
        }
        Some(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_outsiders_order_id_is_refused() {
        // The Pay10 refund that paid 90.00 for 1.00: ORDER_ID carried a pair.
        let e = Pairs::new(
            PAY10,
            [("AMOUNT", "100"), ("ORDER_ID", "PAY10_1~AMOUNT=9000")],
        )
        .unwrap_err();
        assert!(matches!(e, PairError::Delimiter { found: '~', .. }), "{e}");
        let e = Pairs::new(POCKYT, [("reference", "r1&refundAmount=90")]).unwrap_err();
        assert!(matches!(e, PairError::Delimiter { found: '&', .. }), "{e}");
        assert_eq!(
            Pairs::new(PAY10, [("A", "1"), ("A", "2")]).unwrap_err(),
            PairError::Repeated("A".into())
        );
        assert!(Pairs::new(PAY10, [("A", "x=y")]).is_err());
        assert!(Pairs::new(PAY10, [("A=B", "x")]).is_err());
        assert!(Pairs::new(PAY10, [("", "x")]).is_err());
        assert!(Pairs::new(PAY10, [("A", "a\u{0}b")]).is_err());
        assert!(Pairs::new(POCKYT, [("a", "line\nbreak")]).is_err());
        // Another format's delimiter is plain text.
        assert!(Pairs::new(PAY10, [("A", "a&b")]).is_ok());
        assert!(Pairs::new(POCKYT, [("a", "a~b")]).is_ok());
    }

    #[test]
    fn renders_sorted() {
        let p = Pairs::new(PAY10, [("B", "2"), ("A", "1")]).unwrap();
        assert_eq!(p.joined(), "A=1~B=2");
        let p = Pairs::new(POCKYT, [("b", "2"), ("a", "1")]).unwrap();
        assert_eq!(p.terminated(), "a=1&b=2&");
    }

    proptest! {
        /// The class, not the example: whatever text reaches a pair, the
        /// rendered string reads back as exactly the pairs given, or the
        /// pairs are refused. No value can add, drop or change a pair.
        #[test]
        fn a_rendered_string_reads_back_as_exactly_its_pairs(
            pairs in proptest::collection::vec(("[A-Za-z_~=&]{1,6}", "\\PC{0,12}|[~=&A]{0,4}"), 1..8),
            pay10 in any::<bool>(),
        ) {
            let format = if pay10 { PAY10 } else { POCKYT };
            let view: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            match Pairs::new(format, view.clone()) {
                Ok(p) => {
                    let back = Pairs::parse_joined(format, &p.joined()).unwrap();
                    let given: BTreeMap<String, String> = pairs.iter().cloned().collect();
                    prop_assert_eq!(back, given);
                }
                Err(_) => {
                    let bad = view.iter().any(|(k, v)| {
                        k.contains(format.pair_separator) || k.contains(format.key_separator)
                            || v.contains(format.pair_separator) || v.contains(format.key_separator)
                            || v.chars().any(char::is_control)
                    }) || {
                        let mut keys: Vec<&str> = view.iter().map(|(k, _)| *k).collect();
                        keys.sort_unstable();
                        keys.windows(2).any(|w| w[0] == w[1])
                    };
                    prop_assert!(bad, "refused without a reason: {:?}", view);
                }
            }
        }
    }
}
