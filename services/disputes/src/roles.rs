//! Who may call each RPC of `DisputeService`; the auth layer enforces it before any handler
//! runs, and handlers add the checks that need data (a party's own order).

use returns_domain::dispute::Role;
use returns_platform::RoleTable;
use returns_proto::service_names::DISPUTES as SERVICE;

/// The parties of a dispute, the arbiter and platform services: who may read disputes.
const PARTIES_AND_STAFF: &[Role] = &[Role::Buyer, Role::Seller, Role::Arbiter, Role::Platform];

/// The method table of this service.
pub fn role_table() -> RoleTable {
    RoleTable::new()
        .allow(SERVICE, "RecordOrder", &[Role::Platform])
        .allow(SERVICE, "CancelOrder", &[Role::Buyer, Role::Platform])
        .allow(SERVICE, "OpenDispute", &[Role::Buyer])
        .allow(SERVICE, "AddEvidence", &[Role::Buyer, Role::Seller])
        .allow(SERVICE, "UploadEvidence", &[Role::Buyer, Role::Seller])
        .allow(SERVICE, "MakeOffer", &[Role::Buyer, Role::Seller])
        .allow(SERVICE, "AcceptOffer", &[Role::Buyer, Role::Seller])
        .allow(SERVICE, "RejectOffer", &[Role::Buyer, Role::Seller])
        .allow(SERVICE, "SendMessage", &[Role::Buyer, Role::Seller])
        .allow(SERVICE, "EscalateDispute", &[Role::Buyer])
        .allow(SERVICE, "RuleOnDispute", &[Role::Arbiter])
        .allow(SERVICE, "RecommendRuling", &[Role::Arbiter])
        .allow(SERVICE, "CancelDispute", &[Role::Buyer])
        .allow(SERVICE, "GetDispute", PARTIES_AND_STAFF)
        .allow(SERVICE, "ListDisputes", PARTIES_AND_STAFF)
        .allow(SERVICE, "ListDisputeEvents", PARTIES_AND_STAFF)
        .allow(SERVICE, "RecordReturnEvent", &[Role::Platform])
}
