//! Who may call each RPC of `ReturnLabelService`; the auth layer enforces it before any handler
//! runs, and handlers add the checks that need data (a party's own order).

use returns_domain::dispute::Role;
use returns_platform::RoleTable;
use returns_proto::service_names::LABELS as SERVICE;

const EVERY_ROLE: &[Role] = &[
    Role::Buyer,
    Role::Seller,
    Role::Arbiter,
    Role::Platform,
    Role::Carrier,
];

/// The method table of this service.
pub fn role_table() -> RoleTable {
    RoleTable::new()
        .allow(SERVICE, "ListReturnOptions", &[Role::Buyer, Role::Platform])
        .allow(
            SERVICE,
            "ListDropOffLocations",
            &[Role::Buyer, Role::Platform],
        )
        .allow(SERVICE, "UpsertDropOffLocations", &[Role::Carrier])
        .allow(SERVICE, "CreateReturnLabel", &[Role::Buyer, Role::Platform])
        .allow(
            SERVICE,
            "GetReturnLabel",
            &[Role::Buyer, Role::Seller, Role::Platform, Role::Carrier],
        )
        .allow(
            SERVICE,
            "ListReturnLabels",
            &[Role::Buyer, Role::Seller, Role::Platform, Role::Carrier],
        )
        .allow(
            SERVICE,
            "GetLabelDocument",
            &[Role::Buyer, Role::Platform, Role::Carrier],
        )
        .allow(SERVICE, "VoidLabel", &[Role::Buyer, Role::Platform])
        .allow(SERVICE, "SchedulePickup", &[Role::Buyer, Role::Platform])
        .allow(SERVICE, "CancelPickup", &[Role::Buyer, Role::Platform])
        .allow(SERVICE, "ReportTrackingEvent", &[Role::Carrier])
        .allow(SERVICE, "RecordInspection", &[Role::Seller])
        .allow(SERVICE, "ListCarriers", EVERY_ROLE)
        .allow(SERVICE, "AuthoriseReturn", &[Role::Platform])
}
