//! Shared plumbing of the returns suite: configuration, telemetry, database, auth, the error
//! to `tonic::Status` mapping, and the server bootstrap every service runs on.
//!
//! Services own their rules and tables; this crate owns everything that is the same for all
//! three, so a fix here (say, to shutdown or to token checks) reaches every service at once.

// A server never unwraps what comes from a request or the database; tests may.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

/// Every process built on the platform (the suite, each service, their tests) allocates
/// through mimalloc rather than glibc's malloc, which a profile of OpenDispute on
/// PostgreSQL showed at about a sixth of the suite's own CPU (`_int_malloc`, `_int_free`,
/// `malloc_consolidate`): with it, OpenDispute answered 7-13% more calls and GetDispute
/// 3-20% more in the same runs, for about 30 MiB more resident memory a process
/// (docs/performance.md). Declared here, once, rather than in each binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod auth;
mod batch_writer;
mod combined_writes;
pub mod config;
pub mod context;
pub mod db;
pub mod edge;
pub mod error;
pub mod group_commit;
pub mod idempotency;
mod kept_connections;
pub mod metrics;
pub mod mutation;
pub mod outbox;
pub mod outbox_admin;
pub mod paging;
pub mod relay;
pub mod retention;
pub mod server;
mod sqlite_reads;
pub mod telemetry;
pub mod test_clock;
#[cfg(test)]
mod test_probe;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod trace_context;
mod wal_checkpointer;
pub mod worker;
pub mod write_batch;

pub use auth::{Caller, RoleTable, TokenIssuer, TokenVerifier};
pub use config::{Config, ServiceConfig};
pub use context::SuiteContext;
pub use db::{Backend, Database};
pub use error::ApiError;
pub use mutation::{RequestKey, mutate, mutate_on_snapshot};
pub use paging::{Cursor, PageRequest};
pub use server::{Application, ServiceSpec};
