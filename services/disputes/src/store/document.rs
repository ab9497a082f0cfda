//! The versioned JSON documents of this service: a dispute, an order's facts and clock, a
//! history entry. Each is serde JSON of its domain type, stored next to the schema version
//! it was written in; reading checks the version first, so a document is either read as what
//! it is or refused with a clear internal error, never misread (docs/persistence.md).
//!
//! Every kind is at version 1: the shape the service has always written (rows from before
//! versions existed are version 1 by migration 0013). When a domain type changes in a way old
//! documents cannot be read as, its kind moves to version 2 and its reader gains an arm that
//! upgrades a version-1 document (a frozen copy of the old shape, converted); the version-1
//! fixtures under `store/fixtures/` keep proving that old rows still read.

use serde::Serialize;
use serde::de::DeserializeOwned;

use returns_platform::ApiError;

/// One kind of stored document and the newest schema version this build writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocumentKind {
    /// What the document is, for error messages ("dispute").
    pub name: &'static str,
    /// The version every write records; also the newest this build reads.
    pub current: i64,
}

/// `disputes.data`: the domain `Dispute` (its `version` comes from the row's column).
pub const DISPUTE: DocumentKind = DocumentKind {
    name: "dispute",
    current: 1,
};

/// `orders.facts` and `orders.clock`: the domain `OrderFacts` and `ProtectionClock`.
pub const ORDER: DocumentKind = DocumentKind {
    name: "order",
    current: 1,
};

/// `dispute_events.data`: the domain `DisputeEvent` (append-only, never rewritten, so old
/// versions stay for ever and must keep reading).
pub const DISPUTE_EVENT: DocumentKind = DocumentKind {
    name: "dispute event",
    current: 1,
};

/// Why a stored document cannot be read; always an internal error (the caller did nothing
/// wrong), logged with the row it concerns.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error(
        "{kind} {key} is stored with schema version {found}, which this build cannot read \
         (it reads versions 1 to {newest}); a newer release wrote it, so run that release or \
         a later one rather than this one"
    )]
    UnknownVersion {
        kind: &'static str,
        key: String,
        found: i64,
        newest: i64,
    },
    #[error("{kind} {key} (schema version {version}) does not parse: {source}")]
    Malformed {
        kind: &'static str,
        key: String,
        version: i64,
        source: serde_json::Error,
    },
    #[error("{kind} cannot be written as JSON: {source}")]
    Unwritable {
        kind: &'static str,
        source: serde_json::Error,
    },
}

impl From<DocumentError> for ApiError {
    fn from(error: DocumentError) -> Self {
        ApiError::internal(error)
    }
}

impl DocumentKind {
    /// The document of `value` in the current version.
    pub fn write<T: Serialize>(&self, value: &T) -> Result<String, DocumentError> {
        serde_json::to_string(value).map_err(|source| DocumentError::Unwritable {
            kind: self.name,
            source,
        })
    }

    /// Reads a document stored with schema version `version`; `key` names the row in errors.
    pub fn read<T: DeserializeOwned>(
        &self,
        key: &str,
        version: i64,
        text: &str,
    ) -> Result<T, DocumentError> {
        match version {
            // Version 1 is the domain type's serde shape; upgrades of older versions go here
            // as arms converting the old shape once a kind moves past it.
            1 => serde_json::from_str(text).map_err(|source| DocumentError::Malformed {
                kind: self.name,
                key: key.to_owned(),
                version,
                source,
            }),
            found => Err(DocumentError::UnknownVersion {
                kind: self.name,
                key: key.to_owned(),
                found,
                newest: self.current,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use returns_domain::negotiation as n;

    #[test]
    fn every_kind_writes_the_version_it_reads() {
        for kind in [DISPUTE, ORDER, DISPUTE_EVENT] {
            assert!(kind.current >= 1, "{kind:?}");
            let clock = n::ProtectionClock::default();
            let text = kind.write(&clock).expect("write");
            let back: n::ProtectionClock = kind.read("k", kind.current, &text).expect("read");
            assert_eq!(back, clock);
        }
    }

    #[test]
    fn an_unknown_version_is_refused_naming_the_row_and_the_versions_read() {
        let text = DISPUTE
            .write(&n::ProtectionClock::default())
            .expect("write");
        for found in [0, DISPUTE.current + 1, -3] {
            let error = DISPUTE
                .read::<n::ProtectionClock>("d-1", found, &text)
                .expect_err("refused");
            assert!(
                matches!(error, DocumentError::UnknownVersion { found: f, .. } if f == found),
                "{error}"
            );
            let message = error.to_string();
            assert!(message.contains("dispute d-1"), "{message}");
            assert!(
                message.contains(&format!("schema version {found}")),
                "{message}"
            );
        }
    }
}
