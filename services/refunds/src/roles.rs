//! Who may call each RPC of `RefundService`; the auth layer enforces it before any handler
//! runs, and handlers add the checks that need data (a party's own order).

use returns_domain::dispute::Role;
use returns_platform::RoleTable;
use returns_proto::service_names::REFUNDS as SERVICE;

/// The method table of this service.
pub fn role_table() -> RoleTable {
    RoleTable::new()
        .allow(SERVICE, "RecordCapture", &[Role::Platform])
        .allow(SERVICE, "CreateRefund", &[Role::Platform])
        .allow(
            SERVICE,
            "GetRefund",
            &[Role::Platform, Role::Arbiter, Role::Buyer],
        )
        .allow(
            SERVICE,
            "ListRefunds",
            &[Role::Platform, Role::Arbiter, Role::Buyer],
        )
        .allow(SERVICE, "CancelRefund", &[Role::Platform, Role::Arbiter])
        .allow(SERVICE, "RecordReturnProgress", &[Role::Platform])
        .allow(SERVICE, "RecordChargeback", &[Role::Platform])
        .allow(
            SERVICE,
            "GetSettlementReport",
            &[Role::Platform, Role::Arbiter],
        )
}
