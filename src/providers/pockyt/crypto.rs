//! Pockyt `verifySign`: MD5 over the byte-sorted `key=value&` pairs (every sent
//! field except `verifySign`, empty ones left out) followed by `md5(token)`.

use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

use crate::providers::pairs::{PairError, Pairs, POCKYT};

pub const SIGN_FIELD: &str = "verifySign";

/// Computes the signature of `params`, skipping `verifySign` and empty values
/// (the gateway never sends empty values).
pub fn sign<'a, I>(params: I, token: &str) -> Result<String, PairError>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    sign_with(params, token, false)
}

/// The signature under either of the SDKs' rules for empty values: signed as
/// `key=&` (PHP, Java, Python) or left out (Go, JS). The pairs go through
/// [`Pairs`]: a key or value holding `&`, `=` or a control character, or a
/// repeated key, is refused.
pub fn sign_with<'a, I>(params: I, token: &str, sign_empty: bool) -> Result<String, PairError>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let pairs = Pairs::new(
        POCKYT,
        params
            .into_iter()
            .filter(|(k, v)| *k != SIGN_FIELD && (sign_empty || !v.is_empty())),
    )?;
    let mut hasher = Md5::new();
    hasher.update(pairs.terminated().as_bytes());
    hasher.update(hex::encode(Md5::digest(token.as_bytes())).as_bytes());
    Ok(hex::encode(hasher.finalize()))
}

/// Checks the `verifySign` among `params` in constant time, with empty values
/// left out of the signature. A missing signature fails.
pub fn verify<'a, I>(params: I, token: &str) -> bool
where
    I: IntoIterator<Item = (&'a str, &'a str)> + Clone,
{
    verify_with(params, token, false)
}

/// [`verify`] under the given rule for empty values (see [`sign_with`]).
pub fn verify_with<'a, I>(params: I, token: &str, sign_empty: bool) -> bool
where
    I: IntoIterator<Item = (&'a str, &'a str)> + Clone,
{
    let Some(received) = params
        .clone()
        .into_iter()
        .find(|(k, _)| *k == SIGN_FIELD)
        .map(|(_, v)| v.to_ascii_lowercase())
    else {
        return false;
    };
    let Ok(expected) = sign_with(params, token, sign_empty) else {
        return false;
    };
    expected.as_bytes().ct_eq(received.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "5cbfb079f15b150122261c8537086d77a";

    #[test]
    fn token_digest_matches_published_value() {
        assert_eq!(
            hex::encode(Md5::digest(TOKEN.as_bytes())),
            "186abea4b8610d7ff03768255588597a"
        );
    }

    #[test]
    fn tran_query_vector() {
        let p = [
            ("merchantNo", "200043"),
            ("storeNo", "300014"),
            ("transactionNo", "297553638300708562"),
        ];
        assert_eq!(sign(p, TOKEN).unwrap(), "0df745088d7202a6d186596acdc82c6a");
    }

    #[test]
    fn ipn_vector_and_verification() {
        let mut p = vec![
            ("transactionNo", "305680500880311923"),
            ("amount", "0.01"),
            ("currency", "USD"),
            ("reference", "test1666247277861"),
            ("settleCurrency", "USD"),
            ("status", "success"),
            ("time", "20221020142817"),
        ];
        assert_eq!(
            sign(p.clone(), TOKEN).unwrap(),
            "435d01c5d5fa88cfe8168fbfbf732519"
        );
        p.push(("verifySign", "435d01c5d5fa88cfe8168fbfbf732519"));
        assert!(verify(p.clone(), TOKEN));
        assert!(!verify(p.clone(), "another-token"));
        p[1] = ("amount", "0.02");
        assert!(!verify(p, TOKEN));
    }

    #[test]
    fn empty_values_are_not_signed_and_missing_signature_fails() {
        let a = [("merchantNo", "200043"), ("note", "")];
        assert_eq!(sign(a, TOKEN), sign([("merchantNo", "200043")], TOKEN));
        assert!(!verify([("merchantNo", "200043")], TOKEN));
    }

    #[test]
    fn a_delimiter_inside_a_value_never_signs_or_verifies() {
        // Two different messages, one signing string: refused both ways.
        assert!(sign([("a", "1&b=2")], TOKEN).is_err());
        let sig = sign([("a", "1"), ("b", "2")], TOKEN).unwrap();
        assert!(verify(
            [("a", "1"), ("b", "2"), ("verifySign", sig.as_str())],
            TOKEN
        ));
        assert!(!verify(
            [("a", "1&b=2"), ("verifySign", sig.as_str())],
            TOKEN
        ));
    }

    proptest::proptest! {
        #[test]
        fn signing_is_independent_of_insertion_order(pairs in proptest::collection::btree_map("[a-zA-Z]{1,12}", "[ -%'-<>-~]{0,20}", 0..12)) {
            let forward: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let mut backward = forward.clone();
            backward.reverse();
            proptest::prop_assert_eq!(sign(forward, "t"), sign(backward, "t"));
        }
    }
}
