//! The gRPC face of the service: decode and validate requests, call the domain and the
//! store, encode responses. RPCs not built yet answer UNIMPLEMENTED (generated defaults).

use returns_platform::{Database, SuiteContext};
use returns_proto::labels::v1::return_label_service_server::ReturnLabelService;

/// The service implementation, cheap to clone (tonic clones it per connection).
#[derive(Debug, Clone)]
pub struct LabelGrpc {
    #[allow(dead_code)]
    context: SuiteContext,
    #[allow(dead_code)]
    db: Database,
}

impl LabelGrpc {
    pub fn new(context: SuiteContext, db: Database) -> Self {
        LabelGrpc { context, db }
    }
}

#[tonic::async_trait]
impl ReturnLabelService for LabelGrpc {}
