//! The gRPC face of the service: decode and validate requests, call the domain and the
//! store, encode responses. RPCs not built yet answer UNIMPLEMENTED (generated defaults).

use returns_platform::{Database, SuiteContext};
use returns_proto::disputes::v1::dispute_service_server::DisputeService;

/// The service implementation, cheap to clone (tonic clones it per connection).
#[derive(Debug, Clone)]
pub struct DisputeGrpc {
    #[allow(dead_code)]
    context: SuiteContext,
    #[allow(dead_code)]
    db: Database,
}

impl DisputeGrpc {
    pub fn new(context: SuiteContext, db: Database) -> Self {
        DisputeGrpc { context, db }
    }
}

#[tonic::async_trait]
impl DisputeService for DisputeGrpc {}
