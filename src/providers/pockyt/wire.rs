//! Pockyt's JSON shapes, as the provider sends them (strings or numbers accepted).

use serde::{Deserialize, Serialize};

use crate::providers::de_opt_stringish;

pub const RET_SUCCESS: &str = "000100";

/// Every Pockyt answer: `ret_code`, `ret_msg` (or `retMsg` on some errors), `result`.
#[derive(Debug, Deserialize)]
pub struct Envelope<T> {
    #[serde(default, alias = "retCode", deserialize_with = "de_opt_stringish")]
    pub ret_code: Option<String>,
    #[serde(default, alias = "retMsg", deserialize_with = "de_opt_stringish")]
    pub ret_msg: Option<String>,
    pub result: Option<T>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RefundResult {
    #[serde(default, deserialize_with = "de_opt_stringish")]
    pub transaction_no: Option<String>,
    #[serde(default, deserialize_with = "de_opt_stringish")]
    pub reference: Option<String>,
    #[serde(default, deserialize_with = "de_opt_stringish")]
    pub amount: Option<String>,
    #[serde(default, deserialize_with = "de_opt_stringish")]
    pub currency: Option<String>,
    #[serde(default, deserialize_with = "de_opt_stringish")]
    pub refund_amount: Option<String>,
    #[serde(default, deserialize_with = "de_opt_stringish")]
    pub refund_reference: Option<String>,
    #[serde(default, deserialize_with = "de_opt_stringish")]
    pub refund_transaction_no: Option<String>,
    #[serde(default, deserialize_with = "de_opt_stringish")]
    pub settle_currency: Option<String>,
    #[serde(default, deserialize_with = "de_opt_stringish")]
    pub status: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TranQueryResult {
    #[serde(default, deserialize_with = "de_opt_stringish")]
    pub transaction_no: Option<String>,
    #[serde(default, deserialize_with = "de_opt_stringish")]
    pub reference: Option<String>,
    #[serde(default, deserialize_with = "de_opt_stringish")]
    pub amount: Option<String>,
    #[serde(default, deserialize_with = "de_opt_stringish")]
    pub currency: Option<String>,
    #[serde(default, deserialize_with = "de_opt_stringish")]
    pub settle_currency: Option<String>,
    #[serde(default, deserialize_with = "de_opt_stringish")]
    pub status: Option<String>,
    #[serde(default, deserialize_with = "de_opt_stringish")]
    pub transaction_type: Option<String>,
    #[serde(default)]
    pub refund_info: OneOrMany<RefundInfo>,
}

/// One refund of a sale in `refundInfo`. `status` is not in Pockyt's published
/// shape; when absent, the refund's own transaction is asked for its status.
/// Older Go SDKs name the id `refundYuansferId`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RefundInfo {
    #[serde(
        default,
        alias = "refundTransactionNo",
        alias = "refundYuansferId",
        deserialize_with = "de_opt_stringish"
    )]
    pub refund_transaction_id: Option<String>,
    #[serde(default, deserialize_with = "de_opt_stringish")]
    pub refund_reference: Option<String>,
    #[serde(default, deserialize_with = "de_opt_stringish")]
    pub refund_amount: Option<String>,
    #[serde(default, deserialize_with = "de_opt_stringish")]
    pub currency: Option<String>,
    #[serde(default, deserialize_with = "de_opt_stringish")]
    pub settle_currency: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_opt_stringish"
    )]
    pub status: Option<String>,
}

/// The transaction list's answer (`/app-data-search/v3/trans-list`). No
/// SDK or document publishes it: the v2 Java SDK read a top-level
/// `transactions` array (with `size`), the v3 C# SDK reads `result` as an
/// object. Both are read here, and `result` as the list itself or as an
/// object holding `transactions` (or `list`).
#[derive(Debug, Deserialize)]
pub struct TransList {
    #[serde(default, alias = "retCode", deserialize_with = "de_opt_stringish")]
    pub ret_code: Option<String>,
    #[serde(default, alias = "retMsg", deserialize_with = "de_opt_stringish")]
    pub ret_msg: Option<String>,
    #[serde(default)]
    pub result: Option<TransListResult>,
    #[serde(default)]
    pub transactions: Option<Vec<TransEntry>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum TransListResult {
    List(Vec<TransEntry>),
    Object {
        #[serde(default, alias = "list", alias = "transactionList")]
        transactions: Vec<TransEntry>,
    },
}

impl TransList {
    /// Every listed transaction, wherever the answer put them.
    pub fn entries(self) -> Vec<TransEntry> {
        let mut out = self.transactions.unwrap_or_default();
        match self.result {
            Some(TransListResult::List(v)) | Some(TransListResult::Object { transactions: v }) => {
                out.extend(v)
            }
            None => {}
        }
        out
    }
}

/// One listed transaction: Pockyt's documented "Transaction Object"
/// (`transactionType` `payment` | `refund` | `void`, `transactionStatus`,
/// `originalTransactionNo` on a refund, `createTime` as
/// `yyyy-MM-dd HH:mm:ss`). `status` and `refundReference` are read too,
/// as tran-query and the refund answer name them.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TransEntry {
    #[serde(default, deserialize_with = "de_opt_stringish")]
    pub transaction_no: Option<String>,
    #[serde(default, deserialize_with = "de_opt_stringish")]
    pub reference: Option<String>,
    #[serde(default, deserialize_with = "de_opt_stringish")]
    pub refund_reference: Option<String>,
    #[serde(default, deserialize_with = "de_opt_stringish")]
    pub original_transaction_no: Option<String>,
    #[serde(default, deserialize_with = "de_opt_stringish")]
    pub amount: Option<String>,
    #[serde(default, deserialize_with = "de_opt_stringish")]
    pub refund_amount: Option<String>,
    #[serde(default, deserialize_with = "de_opt_stringish")]
    pub currency: Option<String>,
    #[serde(default, deserialize_with = "de_opt_stringish")]
    pub settle_currency: Option<String>,
    #[serde(default, deserialize_with = "de_opt_stringish")]
    pub transaction_type: Option<String>,
    #[serde(default, alias = "status", deserialize_with = "de_opt_stringish")]
    pub transaction_status: Option<String>,
    #[serde(default, deserialize_with = "de_opt_stringish")]
    pub create_time: Option<String>,
}

/// `refundInfo` is a list in current responses and a single object in older ones.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    Many(Vec<T>),
    One(T),
    #[default]
    Nothing,
}

impl<T> OneOrMany<T> {
    pub fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::Many(v) => v,
            OneOrMany::One(t) => vec![t],
            OneOrMany::Nothing => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refund_info_list_single_or_null() {
        let list: TranQueryResult = serde_json::from_str(
            r#"{"refundInfo":[{"refundTransactionId":"1","refundAmount":1.5}]}"#,
        )
        .unwrap();
        let v = list.refund_info.into_vec();
        assert_eq!(v[0].refund_amount.as_deref(), Some("1.5"));
        let one: TranQueryResult = serde_json::from_str(
            r#"{"refundInfo":{"refundTransactionId":"2","refundReference":"r"}}"#,
        )
        .unwrap();
        assert_eq!(
            one.refund_info.into_vec()[0].refund_reference.as_deref(),
            Some("r")
        );
        let none: TranQueryResult = serde_json::from_str(r#"{"refundInfo":null}"#).unwrap();
        assert!(none.refund_info.into_vec().is_empty());
    }

    #[test]
    fn error_envelope_accepts_ret_msg_spelling() {
        let e: Envelope<RefundResult> =
            serde_json::from_str(r#"{"ret_code":"000000","retMsg":"data error : verifySign"}"#)
                .unwrap();
        assert_eq!(e.ret_msg.as_deref(), Some("data error : verifySign"));
        let e: Envelope<RefundResult> =
            serde_json::from_str(r#"{"ret_code":"000100","ret_msg":"ok"}"#).unwrap();
        assert_eq!(e.ret_code.as_deref(), Some(RET_SUCCESS));
    }
}
