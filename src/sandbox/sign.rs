//! The sandbox's own signing and hashing, written apart from the adapters'
//! (`providers::*::crypto`) so that one mistake cannot hide in both: the
//! adapter tests run against this, and both are checked against vectors made
//! by other tools (`tests/fixtures/`).

use md5::Md5;
use sha2::{Digest, Sha256};

/// Pockyt `verifySign`: `md5(k1=v1&k2=v2&...&md5(token))` over the fields in
/// byte order, without `verifySign`; empty values signed as `key=` when
/// `sign_empty` (PHP, Java, Python SDKs) or left out (Go, JS).
pub fn pockyt(fields: &[(String, String)], token: &str, sign_empty: bool) -> String {
    let mut kept: Vec<&(String, String)> = fields
        .iter()
        .filter(|(k, v)| k != "verifySign" && (sign_empty || !v.is_empty()))
        .collect();
    kept.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let token_digest = hex::encode(Md5::digest(token.as_bytes()));
    let text: String = kept
        .iter()
        .map(|(k, v)| format!("{k}={v}&"))
        .chain(std::iter::once(token_digest))
        .collect();
    hex::encode(Md5::digest(text.as_bytes()))
}

/// Pay10 `HASH`: SHA-256 of `K1=V1~K2=V2...` in byte order (without `HASH`)
/// with the salt appended, upper-case hex.
pub fn pay10(fields: &[(String, String)], salt: &str) -> String {
    let mut kept: Vec<&(String, String)> = fields.iter().filter(|(k, _)| k != "HASH").collect();
    kept.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let joined = kept
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("~");
    hex::encode_upper(Sha256::digest(format!("{joined}{salt}").as_bytes()))
}

/// Constant-time comparison of two hex digests, case-insensitively.
pub fn same(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.to_ascii_lowercase()
        .as_bytes()
        .ct_eq(b.to_ascii_lowercase().as_bytes())
        .into()
}

#[cfg(test)]
mod tests {
    fn f(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn published_pockyt_ipn_vector() {
        let ipn = f(&[
            ("transactionNo", "305680500880311923"),
            ("amount", "0.01"),
            ("currency", "USD"),
            ("reference", "test1666247277861"),
            ("settleCurrency", "USD"),
            ("status", "success"),
            ("time", "20221020142817"),
        ]);
        assert_eq!(
            super::pockyt(&ipn, "5cbfb079f15b150122261c8537086d77a", false),
            "435d01c5d5fa88cfe8168fbfbf732519"
        );
    }

    #[test]
    fn pay10_hash_matches_sha256sum() {
        // printf '%s' 'ORDER_ID=37170171~PAY_ID=1009120902164952~REFUND_ORDER_ID=32131323132131518b6433cc24337' | sha256sum
        let q = f(&[
            ("PAY_ID", "1009120902164952"),
            ("ORDER_ID", "37170171"),
            ("REFUND_ORDER_ID", "3213132313213"),
        ]);
        assert_eq!(
            super::pay10(&q, "1518b6433cc24337"),
            "0ADB42F197AE54EF35786562C2A34381FD4F0509FCF39988CB70B8CFB29FCBF1"
        );
    }
}
