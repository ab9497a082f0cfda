//! The suite's wire contracts: code generated from `proto/`, the descriptor set for
//! reflection, and the conversions between wire types and `returns-domain` types.
//!
//! The domain crate never sees these types (docs/architecture.md, "Crates and what each may
//! import"); services convert at the edge with the `TryFrom`/`From` impls in [`convert`].

// A server never unwraps what comes from a request or the database; tests may.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]
#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

pub mod convert;
pub mod vocabulary;

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

/// A service of the suite that others reach through the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    Disputes,
    Labels,
    Refunds,
}

impl Destination {
    pub const ALL: [Destination; 3] = [
        Destination::Disputes,
        Destination::Labels,
        Destination::Refunds,
    ];

    /// The short name stored in outbox rows and used for peer addresses (`refunds`).
    pub fn name(self) -> &'static str {
        match self {
            Destination::Disputes => "disputes",
            Destination::Labels => "labels",
            Destination::Refunds => "refunds",
        }
    }

    /// The fully qualified gRPC service.
    pub fn grpc_service(self) -> &'static str {
        match self {
            Destination::Disputes => service_names::DISPUTES,
            Destination::Labels => service_names::LABELS,
            Destination::Refunds => service_names::REFUNDS,
        }
    }

    /// The destination of a stored short name.
    pub fn from_name(name: &str) -> Option<Destination> {
        Destination::ALL.into_iter().find(|d| d.name() == name)
    }
}

/// One RPC of a peer service, typed by its request message: `OutboxMessage::new(rpc, &request)`
/// only compiles when `request` is that RPC's request type.
pub struct Rpc<Request> {
    pub destination: Destination,
    /// The method name within the service (`CreateRefund`).
    pub method: &'static str,
    request: std::marker::PhantomData<fn() -> Request>,
}

impl<Request> Rpc<Request> {
    pub const fn new(destination: Destination, method: &'static str) -> Self {
        Rpc {
            destination,
            method,
            request: std::marker::PhantomData,
        }
    }
}

impl<Request> Clone for Rpc<Request> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<Request> Copy for Rpc<Request> {}

impl<Request> std::fmt::Debug for Rpc<Request> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.destination.grpc_service(), self.method)
    }
}

/// Typed constants for every RPC of the peer services, generated from the descriptors
/// (`rpcs::refunds::CREATE_REFUND`).
pub mod rpcs {
    pub use super::{Destination, Rpc};
    include!(concat!(env!("OUT_DIR"), "/rpcs.rs"));
}
