//! The suite's wire contracts: code generated from `proto/`, the descriptor set for
//! reflection, and the conversions between wire types and `returns-domain` types.
//!
//! The domain crate never sees these types (ARCHITECTURE.md convention 1); services convert
//! at the edge with the `TryFrom`/`From` impls in [`convert`].

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

pub mod convert;

/// Generated code, nested like the proto packages because prost refers across packages
/// with relative `super::` paths.
pub mod returns {
    /// Shared messages: money, addresses, evidence references, actors.
    pub mod common {
        pub mod v1 {
            tonic::include_proto!("returns.common.v1");
        }
    }

    /// `returns.disputes.v1.DisputeService`.
    pub mod disputes {
        pub mod v1 {
            tonic::include_proto!("returns.disputes.v1");
        }
    }

    /// `returns.labels.v1.ReturnLabelService`.
    pub mod labels {
        pub mod v1 {
            tonic::include_proto!("returns.labels.v1");
        }
    }

    /// `returns.refunds.v1.RefundService`.
    pub mod refunds {
        pub mod v1 {
            tonic::include_proto!("returns.refunds.v1");
        }
    }

    /// `returns.operations.v1.OutboxService`: operators list, retry and discard messages.
    pub mod operations {
        pub mod v1 {
            tonic::include_proto!("returns.operations.v1");
        }
    }

    /// `returns.testing.v1.TestClockService`: the clock tests and demos move from outside.
    pub mod testing {
        pub mod v1 {
            tonic::include_proto!("returns.testing.v1");
        }
    }
}

pub use returns::{common, disputes, labels, operations, refunds, testing};

/// Every contract file, encoded, for `grpc.reflection.v1`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/returns_descriptor.bin"));

/// Fully qualified gRPC service names, as reflection and health checks report them.
pub mod service_names {
    pub const DISPUTES: &str = "returns.disputes.v1.DisputeService";
    pub const LABELS: &str = "returns.labels.v1.ReturnLabelService";
    pub const REFUNDS: &str = "returns.refunds.v1.RefundService";
    pub const TEST_CLOCK: &str = "returns.testing.v1.TestClockService";
    pub const OUTBOX: &str = "returns.operations.v1.OutboxService";
}
