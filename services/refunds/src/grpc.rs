//! The gRPC face of the service: decode and validate requests, call the domain and the
//! store, encode responses. RPCs not built yet answer UNIMPLEMENTED (generated defaults).

use returns_platform::{Database, SuiteContext};
use returns_proto::refunds::v1::refund_service_server::RefundService;

/// The service implementation, cheap to clone (tonic clones it per connection).
#[derive(Debug, Clone)]
pub struct RefundGrpc {
    #[allow(dead_code)]
    context: SuiteContext,
    #[allow(dead_code)]
    db: Database,
}

impl RefundGrpc {
    pub fn new(context: SuiteContext, db: Database) -> Self {
        RefundGrpc { context, db }
    }
}

#[tonic::async_trait]
impl RefundService for RefundGrpc {}
