//! Identifiers: UUID v7 newtypes for what the suite creates, validated strings for what others own.
//!
//! A distinct type per id means a `RefundId` can never be passed where a `DisputeId` is
//! expected. Ids the suite mints are UUID v7, so they sort by creation time and index well.
//! Ids that come from outside (orders, buyers and sellers, client request keys) are opaque
//! strings the suite cannot mint; they are only checked to be safe to store, log and echo.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::DomainError;

/// Defines a UUID v7 newtype with parsing, display and serde as the hyphenated string.
macro_rules! uuid_id {
    ($(#[$meta:meta])* $name:ident, $field:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh time-ordered (v7) id.
            // No `Default`: a default that silently mints a random id would hide mistakes.
            #[allow(clippy::new_without_default)]
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// Parses the textual form (hyphenated, simple, braced or URN). The nil UUID is
            /// refused because it is what an unset field decodes to.
            pub fn parse(text: &str) -> Result<Self, DomainError> {
                let uuid = Uuid::parse_str(text).map_err(|e| {
                    DomainError::validation($field, format!("not a UUID: {e}"))
                })?;
                Self::from_uuid(uuid)
            }

            /// Wraps a UUID read from storage; refuses the nil UUID.
            pub fn from_uuid(uuid: Uuid) -> Result<Self, DomainError> {
                if uuid.is_nil() {
                    Err(DomainError::validation($field, "must not be the nil UUID"))
                } else {
                    Ok(Self(uuid))
                }
            }

            pub fn as_uuid(&self) -> &Uuid {
                &self.0
            }

            pub fn into_uuid(self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.hyphenated())
            }
        }

        impl FromStr for $name {
            type Err = DomainError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = DomainError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(&value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> Self {
                id.to_string()
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Self {
                id.0
            }
        }
    };
}

uuid_id!(
    /// A dispute (every return starts as one).
    DisputeId,
    "dispute_id"
);
uuid_id!(
    /// An offer in a dispute's negotiation; the buyer's opening request is the first.
    OfferId,
    "offer_id"
);
uuid_id!(
    /// A stored piece of evidence (photo, video, screenshot).
    EvidenceId,
    "evidence_id"
);
uuid_id!(
    /// An entry in a dispute's append-only history.
    EventId,
    "event_id"
);
uuid_id!(
    /// A return label issued by the labels service.
    LabelId,
    "label_id"
);
uuid_id!(
    /// A refund in the refunds service.
    RefundId,
    "refund_id"
);
uuid_id!(
    /// An outbox message; receivers deduplicate on it in their inbox table.
    MessageId,
    "message_id"
);
uuid_id!(
    /// A row of the refunds ledger.
    LedgerEntryId,
    "ledger_entry_id"
);

/// The longest external id accepted; long enough for any order-system key, short enough
/// that an id can be logged and indexed without thought.
pub const MAX_EXTERNAL_ID_LEN: usize = 128;

/// Defines a validated external-id newtype: non-empty, at most 128 characters, printable
/// ASCII without whitespace (so it is safe in logs, URLs and error messages).
macro_rules! external_id {
    ($(#[$meta:meta])* $name:ident, $field:literal) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(text: &str) -> Result<Self, DomainError> {
                validate_external_id($field, text).map(|()| Self(text.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = DomainError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = DomainError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                validate_external_id($field, &value).map(|()| Self(value))
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> Self {
                id.0
            }
        }
    };
}

fn validate_external_id(field: &'static str, text: &str) -> Result<(), DomainError> {
    if text.is_empty() {
        return Err(DomainError::validation(field, "must not be empty"));
    }
    if text.len() > MAX_EXTERNAL_ID_LEN {
        return Err(DomainError::validation(
            field,
            format!(
                "must be at most {MAX_EXTERNAL_ID_LEN} characters, got {}",
                text.len()
            ),
        ));
    }
    if let Some(bad) = text.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(DomainError::validation(
            field,
            format!("must be printable ASCII without spaces, found {bad:?}"),
        ));
    }
    Ok(())
}

external_id!(
    /// An order in the platform's order system.
    OrderId,
    "order_id"
);
external_id!(
    /// A buyer or seller (or any other actor): the `sub` of their token.
    PartyId,
    "party_id"
);
external_id!(
    /// A client-chosen idempotency key of a mutating RPC.
    RequestId,
    "request_id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_are_version_7_and_round_trip_through_text() {
        let id = DisputeId::new();
        assert_eq!(id.as_uuid().get_version_num(), 7);
        assert_eq!(DisputeId::parse(&id.to_string()), Ok(id));
        assert_eq!(id.to_string().parse::<DisputeId>(), Ok(id));
    }

    #[test]
    fn ids_minted_later_sort_later() {
        let first = RefundId::new();
        let second = RefundId::new();
        assert!(first < second);
    }

    #[test]
    fn malformed_or_nil_uuids_are_rejected_naming_the_field() {
        for bad in ["", "not-a-uuid", "00000000-0000-0000-0000-000000000000"] {
            match RefundId::parse(bad) {
                Err(DomainError::Validation { field, .. }) => assert_eq!(field, "refund_id"),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn uuid_ids_accept_other_textual_forms_and_print_hyphenated() {
        let text = "0192f0c1-7f3e-7a9b-8c4d-1234567890ab";
        let simple = text.replace('-', "");
        let id = LabelId::parse(&simple).expect("simple form parses");
        assert_eq!(id.to_string(), text);
    }

    #[test]
    fn uuid_ids_serialise_as_strings() {
        let id = MessageId::new();
        let json = serde_json::to_string(&id).expect("serialises");
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(
            serde_json::from_str::<MessageId>(&json).expect("parses"),
            id
        );
        assert!(serde_json::from_str::<MessageId>("\"nope\"").is_err());
    }

    #[test]
    fn external_ids_accept_printable_ascii_up_to_128_characters() {
        assert_eq!(
            OrderId::parse("ord-42_A:b/c").map(|o| o.into_string()),
            Ok("ord-42_A:b/c".into())
        );
        assert!(PartyId::parse(&"x".repeat(128)).is_ok());
    }

    #[test]
    fn external_ids_reject_empty_long_whitespace_and_non_ascii() {
        let too_long = "x".repeat(129);
        for bad in [
            "",
            too_long.as_str(),
            "a b",
            "tab\there",
            "new\nline",
            "café",
            "\u{7f}",
        ] {
            match OrderId::parse(bad) {
                Err(DomainError::Validation { field, .. }) => assert_eq!(field, "order_id"),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
        assert!(serde_json::from_str::<RequestId>("\"\"").is_err());
    }
}
