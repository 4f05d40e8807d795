//! Operator tools: compute exactly what the adapters send, for support staff
//! checking a signature or reading an ENCDATA from a log.

use crate::providers::pay10::crypto::{self as pay10, EncryptionKey};
use crate::providers::pockyt::crypto as pockyt;

fn pairs(args: &[String]) -> Result<Vec<(&str, &str)>, String> {
    if args.is_empty() {
        return Err("give at least one key=value pair".into());
    }
    args.iter()
        .map(|a| match a.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k, v)),
            _ => Err(format!("{a:?} is not key=value")),
        })
        .collect()
}

/// Pockyt `verifySign` of `key=value` arguments.
pub fn sign_pockyt(token: &str, args: &[String]) -> Result<String, String> {
    if token.is_empty() {
        return Err("the token is empty".into());
    }
    pockyt::sign(pairs(args)?, token).map_err(|e| e.to_string())
}

/// Pay10 HASH of `KEY=VALUE` arguments.
pub fn hash_pay10(salt: &str, args: &[String]) -> Result<String, String> {
    if salt.is_empty() {
        return Err("the salt is empty".into());
    }
    pay10::hash(pairs(args)?, salt).map_err(|e| e.to_string())
}

pub fn encrypt_pay10(key: &str, plaintext: &str) -> Result<String, String> {
    Ok(EncryptionKey::new(key)
        .map_err(|e| e.to_string())?
        .encrypt(plaintext))
}

pub fn decrypt_pay10(key: &str, encdata: &str) -> Result<String, String> {
    EncryptionKey::new(key)
        .map_err(|e| e.to_string())?
        .decrypt(encdata)
        .map_err(|e| e.to_string())
}

/// A name in the config: letters, digits, '-' or '_'.
fn check_name(flag: &str, name: &str) -> Result<(), String> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!("{flag} must be letters, digits, '-' or '_'"));
    }
    Ok(())
}

/// A fresh key (32 random bytes from the OS, hex, after `prefix`) and its
/// SHA-256 as the config holds it.
fn fresh_key(prefix: &str) -> (String, String) {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let key = format!("{prefix}{}", hex::encode(bytes));
    let hash = crate::config::sha256_hex(&key);
    (key, hash)
}

/// A new POS API key (`sk_` prefix) and the `[[clients]]` entry that holds
/// only its SHA-256.
pub fn new_api_key(client: &str, accounts: &[String]) -> Result<String, String> {
    check_name("--client", client)?;
    let (key, hash) = fresh_key("sk_");
    let accounts = accounts
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(format!(
        "# API key for client {client:?}: shown only now; give it to the POS, keep no copy here.\n\
         {key}\n\n\
         # Add to the config file (only the key's SHA-256 is stored):\n\
         [[clients]]\n\
         name = {client:?}\n\
         api_key_sha256 = \"{hash}\"\n\
         accounts = [{accounts}]"
    ))
}

/// A new operator key (`ok_` prefix) and the `[[operators]]` entry that
/// holds only its SHA-256.
pub fn new_operator_key(name: &str) -> Result<String, String> {
    check_name("--operator", name)?;
    let (key, hash) = fresh_key("ok_");
    Ok(format!(
        "# Operator key for {name:?}: shown only now; give it to that person, keep no copy here.\n\
         # It works on /v1/operator/* and `refund-gateway refunds` (never on the POS API).\n\
         {key}\n\n\
         # Add to the config file (only the key's SHA-256 is stored):\n\
         [[operators]]\n\
         name = {name:?}\n\
         api_key_sha256 = \"{hash}\""
    ))
}

pub use crate::config::webhook_secret;

/// [`webhook_secret`] with the config lines that use it.
pub fn new_webhook_secret() -> Result<String, String> {
    Ok(format!(
        "# Webhook signing secret: give it to the POS's receiver (it verifies with it), and list it\n\
         # under the client's [[clients.webhooks]] as secrets = [\"...\"].\n\
         {}",
        webhook_secret()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_webhook_secret_is_valid() {
        let s = webhook_secret();
        let parsed = crate::config::WebhookSecret::parse(&s).unwrap();
        assert_eq!(parsed.key().len(), 32);
        assert_ne!(s, webhook_secret());
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn tools_compute_the_published_values() {
        let sig = sign_pockyt(
            "5cbfb079f15b150122261c8537086d77a",
            &s(&[
                "merchantNo=200043",
                "storeNo=300014",
                "transactionNo=297553638300708562",
            ]),
        );
        assert_eq!(sig.unwrap(), "0df745088d7202a6d186596acdc82c6a");
        assert!(sign_pockyt("t", &s(&["novalue"])).is_err());
        assert!(hash_pay10("salt", &[]).is_err());
        let key = "0123456789abcdef0123456789abcdef";
        let enc = encrypt_pay10(key, "A=1~B=2").unwrap();
        assert_eq!(decrypt_pay10(key, &enc).unwrap(), "A=1~B=2");
        assert!(encrypt_pay10("short", "x")
            .unwrap_err()
            .contains("32 bytes"));
        assert!(decrypt_pay10(key, "###").is_err());
    }
}
