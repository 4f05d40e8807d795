//! Pay10's shapes: the `{PAY_ID, ENCDATA}` envelope, the plain requery request,
//! and the loose `KEY=VALUE` maps its answers come in.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncEnvelope {
    #[serde(rename = "PAY_ID")]
    pub pay_id: String,
    #[serde(rename = "ENCDATA")]
    pub encdata: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequeryRequest {
    #[serde(rename = "PAY_ID")]
    pub pay_id: String,
    #[serde(rename = "ORDER_ID")]
    pub order_id: String,
    #[serde(rename = "REFUND_ORDER_ID")]
    pub refund_order_id: String,
    #[serde(rename = "HASH")]
    pub hash: String,
}

/// The sale status enquiry (`/pgws/transact`, `TXNTYPE=STATUS`), plain JSON
/// with the HASH over its other fields (Pay10's "status enquiry" document).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusEnquiry {
    #[serde(rename = "PAY_ID")]
    pub pay_id: String,
    #[serde(rename = "ORDER_ID")]
    pub order_id: String,
    /// The sale's amount, minor units, 3-12 digits.
    #[serde(rename = "AMOUNT")]
    pub amount: String,
    /// ISO 4217 numeric.
    #[serde(rename = "CURRENCY_CODE")]
    pub currency_code: String,
    #[serde(rename = "TXNTYPE")]
    pub txn_type: String,
    #[serde(rename = "HASH")]
    pub hash: String,
}

/// Reads a JSON object of string (or number) values, refusing a repeated key
/// (serde_json would keep the last one silently) and nested values.
pub fn parse_json_object_strict(body: &[u8]) -> Option<BTreeMap<String, String>> {
    struct Strict(BTreeMap<String, String>);
    impl<'de> Deserialize<'de> for Strict {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Strict;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a flat JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Strict, A::Error> {
                    let mut out = BTreeMap::new();
                    while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
                        let v = match v {
                            serde_json::Value::String(s) => s,
                            serde_json::Value::Number(n) => n.to_string(),
                            _ => return Err(serde::de::Error::custom("nested value")),
                        };
                        if out.insert(k, v).is_some() {
                            return Err(serde::de::Error::custom("repeated key"));
                        }
                    }
                    Ok(Strict(out))
                }
            }
            d.deserialize_map(V)
        }
    }
    serde_json::from_slice::<Strict>(body)
        .ok()
        .map(|s| s.0)
        .filter(|m| !m.is_empty())
}

/// Reads a flat answer: a JSON object (string/number values) or a `K=V` map in
/// the `{K=V, K=V}` / `K=V~K=V` forms Pay10's documents show.
pub fn parse_fields(body: &[u8]) -> Option<BTreeMap<String, String>> {
    if let Ok(serde_json::Value::Object(obj)) = serde_json::from_slice::<serde_json::Value>(body) {
        let map: BTreeMap<String, String> = obj
            .into_iter()
            .filter_map(|(k, v)| match v {
                serde_json::Value::String(s) => Some((k, s)),
                serde_json::Value::Number(n) => Some((k, n.to_string())),
                serde_json::Value::Bool(b) => Some((k, b.to_string())),
                _ => None,
            })
            .collect();
        return (!map.is_empty()).then_some(map);
    }
    let text = std::str::from_utf8(body).ok()?.trim();
    let inner = text
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or(text);
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    let mut last: Option<String> = None;
    for seg in inner.split(['~', ',']) {
        match seg.split_once('=') {
            Some((k, v)) if is_key(k.trim()) => {
                let k = k.trim().to_string();
                // A repeated key makes the answer ambiguous: unreadable.
                if map.insert(k.clone(), v.trim().to_string()).is_some() {
                    return None;
                }
                last = Some(k);
            }
            // A separator inside a value: glue it back onto the previous value.
            _ => {
                let prev = map.get_mut(last.as_ref()?)?;
                prev.push(',');
                prev.push_str(seg);
            }
        }
    }
    (!map.is_empty()).then_some(map)
}

fn is_key(k: &str) -> bool {
    !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_seed_requery_answers() {
        let found = b"{RESPONSE_DATE_TIME=2023-03-25 10:44:54, RESPONSE_CODE=000, REFUND_FLAG=R,MOP_TYPE=1027, PG_TXN_MESSAGE=SUCCESS, STATUS=Captured, PG_REF_NUM=5179120325104453, AMOUNT=100, RESPONSE_MESSAGE=SUCCESS, REFUND_ORDER_ID=20221212174211}";
        let m = parse_fields(found).unwrap();
        assert_eq!(m["STATUS"], "Captured");
        assert_eq!(m["MOP_TYPE"], "1027");
        assert_eq!(m["RESPONSE_DATE_TIME"], "2023-03-25 10:44:54");
        let json = br#"{"RESPONSE_CODE":"300","RESPONSE_MESSAGE":"NO DATA FOUND","AMOUNT":100}"#;
        let m = parse_fields(json).unwrap();
        assert_eq!(m["AMOUNT"], "100");
        assert!(parse_fields(b"<html>502</html>").is_none());
        assert!(parse_fields(b"{RESPONSE_CODE=000, AMOUNT=100, AMOUNT=9000}").is_none());
        assert!(parse_fields(b"").is_none());
    }
}
