//! Test support shared by every crate's tests: a throwaway database per test on the backend
//! CI selects, and tokens signed with the test secret.
//!
//! `RETURNS_TEST_POSTGRES_URL` (an admin URL such as `postgres://postgres@127.0.0.1:5433/postgres`)
//! switches every storage test to PostgreSQL, each in its own uuid-named database
//! (so no two tests share state); unset, each test gets a fresh SQLite file.

// Only tests link this module (feature `testing`): a set-up that fails should stop the test
// on the spot, with the reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use returns_domain::dispute::Role;
use sqlx::Connection;

use crate::auth::TokenIssuer;
use crate::config::Secret;

/// The environment variable that selects PostgreSQL for tests.
pub const POSTGRES_URL_VAR: &str = "RETURNS_TEST_POSTGRES_URL";

/// A database that lives as long as the test: a SQLite file in a temp folder, or a fresh
/// PostgreSQL database, dropped when the test ends.
#[derive(Debug)]
pub struct TestDatabase {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    /// On PostgreSQL, where to drop the database from when the test ends.
    postgres: Option<PostgresTestDatabase>,
}

/// A PostgreSQL test database's name and the admin URL that created it.
#[derive(Debug)]
struct PostgresTestDatabase {
    admin_url: String,
    name: String,
}

impl TestDatabase {
    /// A new, empty database on the backend the environment selects.
    pub async fn create() -> TestDatabase {
        match std::env::var(POSTGRES_URL_VAR) {
            Ok(admin) if !admin.is_empty() => {
                let name = format!("t_{}", uuid::Uuid::new_v4().simple());
                create_postgres_database(&admin, &name)
                    .await
                    .expect("create a PostgreSQL test database");
                TestDatabase {
                    url: database_url(&admin, &name),
                    _dir: None,
                    postgres: Some(PostgresTestDatabase {
                        admin_url: admin,
                        name,
                    }),
                }
            }
            _ => {
                let dir = tempfile::tempdir().expect("create a temp dir");
                TestDatabase {
                    url: format!("sqlite://{}/test.db?mode=rwc", dir.path().display()),
                    _dir: Some(dir),
                    postgres: None,
                }
            }
        }
    }

    pub fn is_postgres(&self) -> bool {
        self.url.starts_with("postgres")
    }
}

impl Drop for TestDatabase {
    /// Drops a PostgreSQL test database as its test ends, so that the cluster holds only the
    /// databases of the tests running (each one is several MiB on disk, and a whole run
    /// creates hundreds: kept to the end, they filled a CI machine's disk). `Drop` cannot
    /// await, and the test's runtime may be a current-thread one blocked in this very call,
    /// so the statement runs on a thread of its own with a runtime of its own. `WITH (FORCE)`
    /// ends the connections the test's pools still hold. A failure only leaves the database
    /// for the throwaway cluster, so it is not a reason to panic (possibly mid-unwind).
    fn drop(&mut self) {
        let Some(database) = self.postgres.take() else {
            return;
        };
        let dropping = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                if let Ok(mut admin) = sqlx::PgConnection::connect(&database.admin_url).await {
                    let statement =
                        format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", database.name);
                    let _ = sqlx::query(&statement).execute(&mut admin).await;
                    let _ = admin.close().await;
                }
            });
        });
        let _ = dropping.join();
    }
}

/// Creates the database `name` through `admin_url`.
pub async fn create_postgres_database(admin_url: &str, name: &str) -> Result<(), sqlx::Error> {
    let mut admin = sqlx::PgConnection::connect(admin_url).await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    admin.close().await
}

/// The URL of the database `name` on the server `admin_url` reaches.
fn database_url(admin_url: &str, name: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (admin_url, String::new()),
    };
    let base = match base.rfind('/') {
        Some(slash) if slash > "postgres://".len() => &base[..slash],
        _ => base,
    };
    format!("{base}/{name}{query}")
}

/// The secret every test server and token shares.
pub fn test_secret() -> Secret {
    Secret::new("returns-suite-test-secret-0123456789abcdef")
}

/// A token for `sub` acting as `role`, signed with [`test_secret`].
pub fn token(role: Role, sub: &str) -> String {
    TokenIssuer::new(&test_secret())
        .issue(sub, role, None, Duration::from_secs(3600))
        .expect("sign a test token")
}

/// A carrier token for `carrier`'s integration.
pub fn carrier_token(carrier: &str) -> String {
    TokenIssuer::new(&test_secret())
        .issue(
            &format!("{}-integration", carrier.to_ascii_lowercase()),
            Role::Carrier,
            Some(carrier),
            Duration::from_secs(3600),
        )
        .expect("sign a test token")
}

/// Adds `authorization: Bearer <token>` to a request.
pub fn authorized<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .expect("a token is valid metadata"),
    );
    request
}

/// The instant every test clock starts at: Monday 2026-03-02 09:00 UTC.
pub fn test_start() -> returns_domain::time::Timestamp {
    use chrono::TimeZone;
    chrono::Utc
        .with_ymd_and_hms(2026, 3, 2, 9, 0, 0)
        .single()
        .expect("a valid instant")
}

/// A context on the classic policy and a manual clock at [`test_start`].
pub fn test_context() -> crate::SuiteContext {
    crate::SuiteContext::for_tests(
        test_secret(),
        returns_domain::policy::Policy::classic(),
        test_start(),
    )
}

/// One service serving on an ephemeral port in the background, for service-level tests.
pub struct TestServer {
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl TestServer {
    /// Binds port 0 and serves `spec` with the auth layer and the context's test clock.
    pub async fn start(spec: crate::ServiceSpec, context: &crate::SuiteContext) -> TestServer {
        let app = crate::Application::bind(
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            spec,
            context.verifier.clone(),
            context.test_clock.clone(),
        )
        .await
        .expect("bind an ephemeral port");
        let addr = app.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A connected channel (the listener is bound already, so this never waits on a port).
    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Channel::from_shared(format!("http://{}", self.addr))
            .expect("a valid URI")
            .connect()
            .await
            .expect("connect to a bound listener")
    }

    /// Graceful shutdown: stop accepting, let calls in flight finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("server task did not panic")
                .expect("server stopped cleanly");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Whether `status` carries `google.rpc.ErrorInfo` with `reason` (`CAPTURE_REQUIRED`): what
/// tests assert instead of message text, as clients do.
pub fn has_reason(status: &tonic::Status, reason: &str) -> bool {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .is_some_and(|info| info.reason == reason)
}

/// The plan of a built list query, one line per plan node: SQLite's EXPLAIN QUERY PLAN
/// details, or PostgreSQL's EXPLAIN. On PostgreSQL sequential scans, bitmap scans (which lose
/// the index order) and sorts are costed as a last resort, so the plan shows whether an index
/// can serve the filters and the order together, whatever the statistics of a near-empty
/// table say.
pub async fn query_plan(db: &crate::db::Database, built: &crate::paging::KeysetQuery) -> String {
    let postgres = db.backend() == crate::db::Backend::Postgres;
    let mut tx = db.begin_write().await.expect("begin");
    let explain = if postgres {
        for setting in ["enable_seqscan", "enable_bitmapscan", "enable_sort"] {
            sqlx::query(&format!("SET LOCAL {setting} = off"))
                .execute(&mut *tx)
                .await
                .expect("set");
        }
        format!("EXPLAIN {}", built.sql())
    } else {
        format!("EXPLAIN QUERY PLAN {}", built.sql())
    };
    let rows = built
        .bind_to(sqlx::query(&explain))
        .fetch_all(&mut *tx)
        .await
        .expect("explain");
    let column = if postgres { "QUERY PLAN" } else { "detail" };
    rows.iter()
        .map(|row| crate::db::column::<String>(row, column).expect("plan line"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether a plan reads an index range rather than the whole table, with no sort after:
/// SQLite says SEARCH (a SCAN, even "using" an index, reads every row), PostgreSQL puts the
/// conditions in an Index Cond rather than a Filter over scanned rows.
pub fn is_index_range(plan: &str) -> bool {
    (plan.contains("SEARCH ") || plan.contains("Index Cond"))
        && !plan.contains("TEMP B-TREE")
        && !plan.contains("Sort")
}

/// Whether a plan starts its index range at a keyset cursor on `(sort_column, id_column)`:
/// the whole row value bounds the range (SQLite's SEARCH names it, PostgreSQL's Index Cond
/// holds the ROW comparison), rather than the sort key alone with the id checked on each
/// row read, which reads every row that shares the cursor's sort key first.
pub fn plan_starts_at_cursor(plan: &str, sort_column: &str, id_column: &str) -> bool {
    let sqlite = format!("({sort_column},{id_column})");
    let postgres = format!("ROW({sort_column}, {id_column})");
    plan.lines().any(|line| {
        (line.starts_with("SEARCH ") && line.contains(&sqlite))
            || (line.contains("Index Cond") && line.contains(&postgres))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test's database goes when the test does: a CI run creates hundreds, and kept to the
    /// end of the run they filled a machine's disk.
    #[tokio::test]
    async fn a_test_database_is_gone_once_its_test_has_dropped_it() {
        let target = TestDatabase::create().await;
        let database = crate::Database::open(&target.url, crate::test_probe::MIGRATIONS)
            .await
            .expect("open");
        match (&target.postgres, &target._dir) {
            (Some(postgres), _) => {
                let (admin_url, name) = (postgres.admin_url.clone(), postgres.name.clone());
                // The test's pool is still open: the drop ends its connections.
                drop(target);
                let mut admin = sqlx::PgConnection::connect(&admin_url)
                    .await
                    .expect("admin");
                let left: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
                        .bind(&name)
                        .fetch_one(&mut admin)
                        .await
                        .expect("count");
                assert_eq!(left, 0, "database {name} is still there");
            }
            (None, Some(dir)) => {
                let path = dir.path().to_owned();
                drop(target);
                assert!(!path.exists(), "{} is still there", path.display());
            }
            (None, None) => panic!("a test database is either PostgreSQL or a SQLite folder"),
        }
        drop(database);
    }
}
