//! Every SQL statement of the labels service, one file per table group, each reading typed
//! rows (`sqlx::FromRow` over an explicit column list) that the RPC layer turns into domain
//! values and wire messages.
//!
//! Statements are written once for both backends (sqlx `Any`): TEXT, 64-bit integers and
//! bytes; instants as unix microseconds; booleans as 0/1; a vocabulary as its code. Row locks
//! are the caller's choice: functions that may lock take `lock`, which is
//! `Database::for_update()` inside a write transaction and `""` elsewhere.

pub mod authorisations;
pub mod counters;
pub mod labels;
pub mod locations;
pub mod pickups;
pub mod tracking;

use prost::Message;
use returns_domain::time::{Timestamp, from_unix_micros};
use returns_platform::ApiError;
use sqlx::Any;
use sqlx::any::{AnyTypeInfo, AnyValueRef};

/// A protobuf message kept in a bytes column (addresses, inspections), decoded as the row is
/// read, so rows hold the message rather than bytes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Encoded<M>(pub M);

impl<M: Message> Encoded<M> {
    /// The column value to bind.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.encode_to_vec()
    }
}

impl<M: Message + Default> sqlx::Type<Any> for Encoded<M> {
    fn type_info() -> AnyTypeInfo {
        <Vec<u8> as sqlx::Type<Any>>::type_info()
    }

    fn compatible(ty: &AnyTypeInfo) -> bool {
        <Vec<u8> as sqlx::Type<Any>>::compatible(ty)
    }
}

impl<'r, M: Message + Default> sqlx::Decode<'r, Any> for Encoded<M> {
    fn decode(value: AnyValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        let bytes = <Vec<u8> as sqlx::Decode<'r, Any>>::decode(value)?;
        Ok(Encoded(M::decode(bytes.as_slice())?))
    }
}

/// A stored instant back to a timestamp; a value outside chrono's range is corrupt data.
pub fn instant(micros: i64) -> Result<Timestamp, ApiError> {
    from_unix_micros(micros).ok_or_else(|| corrupt(format!("instant {micros} out of range")))
}

/// An optional stored instant.
pub fn optional_instant(micros: Option<i64>) -> Result<Option<Timestamp>, ApiError> {
    micros.map(instant).transpose()
}

/// An internal error for data the database should never hold.
pub fn corrupt(what: String) -> ApiError {
    ApiError::internal(std::io::Error::other(format!("corrupt labels row: {what}")))
}

#[cfg(test)]
pub(crate) mod test_support {
    //! What the store tests share: a migrated database on the backend the environment
    //! selects.

    use returns_platform::db::Database;
    use returns_platform::testing::TestDatabase;

    pub async fn database() -> (Database, TestDatabase) {
        let target = TestDatabase::create().await;
        let db = Database::open(&target.url, crate::MIGRATIONS)
            .await
            .expect("open the test database");
        (db, target)
    }
}
