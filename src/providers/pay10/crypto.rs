//! Pay10 crypto: the SHA-256 `HASH` over byte-sorted `KEY=VALUE` pairs joined by
//! `~` with the salt appended, and AES-256-CBC `ENCDATA` (key = the 32 key bytes,
//! IV = its first 16, PKCS#7, base64 with or without padding).

use std::collections::BTreeMap;

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::providers::pairs::{PairError, Pairs, PAY10};

pub const HASH_FIELD: &str = "HASH";
/// What Pay10 encrypts instead of a response when it fails internally.
pub const PROVIDER_ERROR_TEXT: &str = "Something goes wrong!";

type Enc = cbc::Encryptor<aes::Aes256>;
type Dec = cbc::Decryptor<aes::Aes256>;

const LENIENT_B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("the encryption key must be exactly 32 bytes (it is {0})")]
    KeyLength(usize),
    #[error("ENCDATA is not valid base64")]
    Base64,
    #[error("ENCDATA does not decrypt with this key")]
    Decrypt,
    #[error("decrypted ENCDATA is not UTF-8")]
    Utf8,
}

/// A validated 32-byte AES-256 key (the IV is its first 16 bytes).
#[derive(Clone)]
pub struct EncryptionKey([u8; 32]);

impl EncryptionKey {
    pub fn new(key: &str) -> Result<Self, CryptoError> {
        let bytes: [u8; 32] = key
            .as_bytes()
            .try_into()
            .map_err(|_| CryptoError::KeyLength(key.len()))?;
        Ok(Self(bytes))
    }

    /// The key's bytes, for the credentials digest only.
    pub(in crate::providers::pay10) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn iv(&self) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&self.0[..16]);
        iv
    }

    pub fn encrypt(&self, plaintext: &str) -> String {
        let ct = Enc::new(&self.0.into(), &self.iv().into())
            .encrypt_padded_vec_mut::<Pkcs7>(plaintext.as_bytes());
        STANDARD.encode(ct)
    }

    pub fn decrypt(&self, encdata: &str) -> Result<String, CryptoError> {
        let ct = LENIENT_B64
            .decode(encdata.trim().as_bytes())
            .map_err(|_| CryptoError::Base64)?;
        let pt = Dec::new(&self.0.into(), &self.iv().into())
            .decrypt_padded_vec_mut::<Pkcs7>(&ct)
            .map_err(|_| CryptoError::Decrypt)?;
        String::from_utf8(pt).map_err(|_| CryptoError::Utf8)
    }
}

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EncryptionKey([redacted])")
    }
}

/// Computes the upper-case SHA-256 HASH of `fields` (without `HASH`) and
/// `salt`. The fields go through [`Pairs`]: a key or value holding `~`, `=`
/// or a control character, or a repeated key, is refused.
pub fn hash<'a, I>(fields: I, salt: &str) -> Result<String, PairError>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let pairs = Pairs::new(PAY10, fields.into_iter().filter(|(k, _)| *k != HASH_FIELD))?;
    Ok(hash_pairs(&pairs, salt))
}

/// The HASH of pairs already built.
pub fn hash_pairs(pairs: &Pairs, salt: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(pairs.joined().as_bytes());
    hasher.update(salt.as_bytes());
    hex::encode_upper(hasher.finalize())
}

/// Verifies the `HASH` among `fields` in constant time; a missing HASH, or
/// fields that cannot be told apart from the delimiters, fail.
pub fn verify<'a, I>(fields: I, salt: &str) -> bool
where
    I: IntoIterator<Item = (&'a str, &'a str)> + Clone,
{
    let Some(received) = fields
        .clone()
        .into_iter()
        .find(|(k, _)| *k == HASH_FIELD)
        .map(|(_, v)| v.to_ascii_uppercase())
    else {
        return false;
    };
    let Ok(expected) = hash(fields, salt) else {
        return false;
    };
    expected.as_bytes().ct_eq(received.as_bytes()).into()
}

/// Renders `KEY=VALUE~KEY=VALUE` (byte-sorted, so output is deterministic),
/// refusing what [`Pairs`] refuses.
pub fn encode_pairs<'a, I>(fields: I) -> Result<String, PairError>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    Ok(Pairs::new(PAY10, fields)?.joined())
}

/// Splits `KEY=VALUE~...` on `~`, each pair on the first `=`. Tolerates the
/// braces and spaces of the documentation's examples. `None` if any pair has no `=`.
pub fn decode_pairs(plaintext: &str) -> Option<BTreeMap<String, String>> {
    let inner = plaintext.trim();
    let inner = inner
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or(inner);
    let mut map = BTreeMap::new();
    for pair in inner.split('~').filter(|p| !p.trim().is_empty()) {
        let (k, v) = pair.split_once('=')?;
        // A repeated key makes the answer ambiguous: unreadable.
        if map.insert(k.trim().to_string(), v.to_string()).is_some() {
            return None;
        }
    }
    if map.is_empty() {
        None
    } else {
        Some(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn hash_follows_the_documented_steps() {
        // The seed's requery example string, salt appended, SHA-256, upper-case hex.
        let fields = [
            ("PAY_ID", "1009120902164952"),
            ("ORDER_ID", "37170171"),
            ("REFUND_ORDER_ID", "3213132313213"),
        ];
        let manual = "ORDER_ID=37170171~PAY_ID=1009120902164952~REFUND_ORDER_ID=32131323132131518b6433cc24337";
        let expected = hex::encode_upper(Sha256::digest(manual.as_bytes()));
        assert_eq!(hash(fields, "1518b6433cc24337").unwrap(), expected);
        assert_eq!(expected.len(), 64);
    }

    #[test]
    fn empty_value_stays_as_key_equals() {
        let h = hash([("A", ""), ("B", "1")], "salt").unwrap();
        assert_eq!(h, hex::encode_upper(Sha256::digest(b"A=~B=1salt")));
    }

    #[test]
    fn verify_accepts_own_hash_and_rejects_tampering() {
        let mut f = vec![("ORDER_ID", "1"), ("AMOUNT", "100")];
        let h = hash(f.clone(), "salt").unwrap();
        f.push(("HASH", &h));
        assert!(verify(f.clone(), "salt"));
        assert!(!verify(f.clone(), "other"));
        f[1] = ("AMOUNT", "101");
        assert!(!verify(f, "salt"));
        assert!(!verify([("ORDER_ID", "1")], "salt"));
    }

    #[test]
    fn key_must_be_32_bytes() {
        assert_eq!(
            EncryptionKey::new("short").unwrap_err(),
            CryptoError::KeyLength(5)
        );
        assert!(EncryptionKey::new(&"k".repeat(33)).is_err());
        assert!(EncryptionKey::new(KEY).is_ok());
    }

    #[test]
    fn known_ciphertext_and_unpadded_base64() {
        let key = EncryptionKey::new(KEY).unwrap();
        // 5 bytes -> one block; base64 of 16 bytes ends in "==".
        let enc = key.encrypt("A=1~B");
        assert!(enc.ends_with("=="));
        assert_eq!(key.decrypt(enc.trim_end_matches('=')).unwrap(), "A=1~B");
        assert_eq!(key.decrypt(&enc).unwrap(), "A=1~B");
        assert_eq!(key.decrypt("!!!"), Err(CryptoError::Base64));
        let other = EncryptionKey::new(&"x".repeat(32)).unwrap();
        assert!(other.decrypt(&enc).is_err());
    }

    #[test]
    fn pairs_round_trip_and_split_on_first_equals() {
        assert!(encode_pairs([("B", "x=y"), ("A", "1")]).is_err());
        let s = encode_pairs([("B", "xy"), ("A", "1")]).unwrap();
        assert_eq!(s, "A=1~B=xy");
        // An answer's value may hold `=`: split on the first.
        let m = decode_pairs("A=1~B=x=y").unwrap();
        assert_eq!(m["B"], "x=y");
        assert!(
            decode_pairs("AMOUNT=100~AMOUNT=9000").is_none(),
            "a repeated key is ambiguous"
        );
        let seed = decode_pairs("{ORDER_ID=PAY10_1~AMOUNT=100}").unwrap();
        assert_eq!(seed["AMOUNT"], "100");
        assert!(decode_pairs(PROVIDER_ERROR_TEXT).is_none());
    }

    proptest! {
        #[test]
        fn encrypt_decrypt_round_trip(plain in ".{0,300}") {
            let key = EncryptionKey::new(KEY).unwrap();
            prop_assert_eq!(key.decrypt(&key.encrypt(&plain)).unwrap(), plain);
        }

        #[test]
        fn hash_is_independent_of_order(mut pairs in proptest::collection::btree_map("[A-Z_]{1,12}", "[ -<>-}]{0,20}", 0..12)) {
            pairs.remove(HASH_FIELD);
            let forward: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let mut backward = forward.clone();
            backward.reverse();
            prop_assert_eq!(hash(forward, "s"), hash(backward, "s"));
        }

        #[test]
        fn decrypt_and_decode_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let key = EncryptionKey::new(KEY).unwrap();
            let s = String::from_utf8_lossy(&bytes);
            let _ = key.decrypt(&s);
            let _ = decode_pairs(&s);
        }
    }
}
