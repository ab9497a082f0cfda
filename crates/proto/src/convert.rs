//! Conversions between wire types and domain types (ARCHITECTURE.md convention 2): wire
//! values are validated here, once, and the rest of the code sees only domain types.

use chrono::{DateTime, Utc};
use returns_domain::time::Timestamp;

/// A domain instant as a protobuf `Timestamp`.
pub fn timestamp_to_proto(at: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// A protobuf `Timestamp` as a domain instant; `None` when out of chrono's range or the
/// nanos are not normalised.
pub fn timestamp_from_proto(at: &prost_types::Timestamp) -> Option<Timestamp> {
    let nanos = u32::try_from(at.nanos).ok()?;
    DateTime::<Utc>::from_timestamp(at.seconds, nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_and_bad_nanos_are_refused() {
        let at = DateTime::<Utc>::from_timestamp(1_780_000_000, 123_000).expect("in range");
        assert_eq!(timestamp_from_proto(&timestamp_to_proto(at)), Some(at));
        assert_eq!(
            timestamp_from_proto(&prost_types::Timestamp {
                seconds: 0,
                nanos: -1
            }),
            None
        );
    }
}
