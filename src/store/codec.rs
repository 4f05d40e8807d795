//! How the typed values of a row are read from and written to a column, on
//! either database: as the text (or integer) they are stored as, checked on
//! the way in. A stored value that is not valid fails the read.

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::{Database, Decode, Encode, Type};

use super::model::{DeliveryState, EventSource, EventState, PendingReason, Status, Submission};
use crate::money::{Currency, Minor};
use crate::types::{DomainEvent, Outcome, ProviderKind, RefundId, Timestamp};

/// Text columns holding a type with `as_str` and `TryFrom<String>`.
macro_rules! text_column {
    ($($t:ty),* $(,)?) => {$(
        impl<DB: Database> Type<DB> for $t
        where
            String: Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <String as Type<DB>>::type_info()
            }
            fn compatible(ty: &DB::TypeInfo) -> bool {
                <String as Type<DB>>::compatible(ty)
            }
        }

        impl<'r, DB: Database> Decode<'r, DB> for $t
        where
            String: Decode<'r, DB>,
        {
            fn decode(value: <DB as Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
                let s = <String as Decode<'r, DB>>::decode(value)?;
                Ok(<$t>::try_from(s)?)
            }
        }

        impl<'q, DB: Database> Encode<'q, DB> for $t
        where
            String: Encode<'q, DB>,
        {
            fn encode_by_ref(
                &self,
                buf: &mut <DB as Database>::ArgumentBuffer<'q>,
            ) -> Result<IsNull, BoxDynError> {
                <String as Encode<'q, DB>>::encode(self.as_str().to_string(), buf)
            }
        }
    )*};
}

text_column!(
    PendingReason,
    DomainEvent,
    DeliveryState,
    Status,
    Submission,
    EventSource,
    EventState,
    ProviderKind,
    RefundId,
    Outcome
);

/// A currency is stored as its alpha code.
impl Currency {
    fn as_str(&self) -> &'static str {
        self.code()
    }
}

text_column!(Currency);

/// Integer columns holding a checked or typed integer: `$get` reads it,
/// `$make` checks a stored value.
macro_rules! int_column {
    ($($t:ty => $get:expr, $make:expr;)*) => {$(
        impl<DB: Database> Type<DB> for $t
        where
            i64: Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <i64 as Type<DB>>::type_info()
            }
            fn compatible(ty: &DB::TypeInfo) -> bool {
                <i64 as Type<DB>>::compatible(ty)
            }
        }

        impl<'r, DB: Database> Decode<'r, DB> for $t
        where
            i64: Decode<'r, DB>,
        {
            fn decode(value: <DB as Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
                let v = <i64 as Decode<'r, DB>>::decode(value)?;
                $make(v).map_err(Into::into)
            }
        }

        impl<'q, DB: Database> Encode<'q, DB> for $t
        where
            i64: Encode<'q, DB>,
        {
            fn encode_by_ref(
                &self,
                buf: &mut <DB as Database>::ArgumentBuffer<'q>,
            ) -> Result<IsNull, BoxDynError> {
                <i64 as Encode<'q, DB>>::encode($get(self), buf)
            }
        }
    )*};
}

int_column! {
    Minor => Minor::get, Minor::try_from;
    // Read as Unix milliseconds on both databases (Postgres through `rg_ms`).
    Timestamp => |t: &Timestamp| t.unix_ms(), |v| Ok::<_, std::convert::Infallible>(Timestamp::from_unix_ms(v));
}
