//! The contracts and the code agree: every RPC of every service in the descriptors has a
//! role-table entry (a new RPC without one fails here, not in production with
//! PERMISSION_DENIED for everyone), and every service the descriptors define is one the
//! suite serves. That every RPC is implemented is checked by the compiler: the generated
//! servers have no default stubs.

use prost_reflect::DescriptorPool;
use returns_platform::RoleTable;
use returns_platform::auth::{outbox_roles, test_clock_roles};
use returns_proto::service_names::{DISPUTES, LABELS, OUTBOX, REFUNDS, TEST_CLOCK};

fn role_table_of(service: &str) -> Option<RoleTable> {
    match service {
        DISPUTES => Some(returns_disputes::roles::role_table()),
        LABELS => Some(returns_labels::roles::role_table()),
        REFUNDS => Some(returns_refunds::roles::role_table()),
        OUTBOX => Some(outbox_roles()),
        TEST_CLOCK => Some(test_clock_roles()),
        _ => None,
    }
}

#[test]
fn every_rpc_in_the_contracts_has_a_role_table_entry() {
    let pool = DescriptorPool::decode(returns_proto::FILE_DESCRIPTOR_SET).expect("descriptors");
    let mut missing = Vec::new();
    let mut checked = 0;
    for service in pool.services() {
        let Some(roles) = role_table_of(service.full_name()) else {
            missing.push(format!(
                "{} is served by no service of the suite",
                service.full_name()
            ));
            continue;
        };
        for method in service.methods() {
            checked += 1;
            if !roles.covers(service.full_name(), method.name()) {
                missing.push(format!("{}/{}", service.full_name(), method.name()));
            }
        }
    }
    assert!(
        checked >= 40,
        "only {checked} RPCs found in the descriptors"
    );
    assert!(missing.is_empty(), "RPCs no role may call: {missing:#?}");
}
