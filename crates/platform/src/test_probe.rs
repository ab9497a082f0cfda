//! What the platform's own storage tests share: the test-only migrations (the platform's
//! tables and a `probe` table to write) and a database seeded with probe row `a`.

use crate::db::{Database, Migrations};
use crate::testing::TestDatabase;

/// The platform's migrations plus the `probe` table, for both backends.
pub(crate) static MIGRATIONS: Migrations = Migrations {
    sqlite: &sqlx::migrate!("tests/migrations/sqlite"),
    postgres: &sqlx::migrate!("tests/migrations/postgres"),
};

/// A fresh database holding probe row `a` with amount 1.
pub(crate) async fn database_with_probe_a() -> (Database, TestDatabase) {
    let target = TestDatabase::create().await;
    let db = Database::open(&target.url, MIGRATIONS).await.expect("open");
    sqlx::query("INSERT INTO probe (id, amount, at_micros, flag) VALUES ('a', 1, 0, 0)")
        .execute(db.pool())
        .await
        .expect("seed");
    (db, target)
}

/// The rows of `table`.
pub(crate) async fn count_rows(db: &Database, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(db.pool())
        .await
        .expect("count")
}

/// The amount of probe row `id`.
pub(crate) async fn probe_amount(db: &Database, id: &str) -> i64 {
    sqlx::query_scalar("SELECT amount FROM probe WHERE id = $1")
        .bind(id)
        .fetch_one(db.pool())
        .await
        .expect("amount")
}

/// Waits (bounded) until `n` writers queue behind the one holding SQLite's writer, so the
/// holder's commit leaves the batch open for them. PostgreSQL has no queue.
pub(crate) async fn until_queued(db: &Database, n: usize) {
    if db.backend() == crate::db::Backend::Postgres {
        return;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while db.queued_writers() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{n} writers never queued"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// A fresh database whose SQLite batches are never cut short by their age (a test may hold
/// the writer as long as it likes), the probe table empty.
pub(crate) async fn database_without_age_bound() -> (Database, TestDatabase) {
    let target = TestDatabase::create().await;
    let limits = crate::db::BatchLimits {
        max_members: 64,
        max_age: std::time::Duration::from_secs(3600),
    };
    let db = Database::open_with(&target.url, MIGRATIONS, limits)
        .await
        .expect("open");
    // CI runs these tests a second time on PostgreSQL; make sure that run really is.
    assert_eq!(
        db.backend() == crate::db::Backend::Postgres,
        target.is_postgres()
    );
    (db, target)
}

/// Tables `parent` and `child` whose foreign key is checked only at COMMIT: a transaction
/// inserting an orphan child runs, and its COMMIT fails.
pub(crate) async fn create_parent_and_child_checked_at_commit(db: &Database) {
    for statement in [
        "CREATE TABLE parent (id TEXT PRIMARY KEY)",
        "CREATE TABLE child (id TEXT PRIMARY KEY, parent TEXT NOT NULL \
         REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)",
    ] {
        sqlx::query(statement)
            .execute(db.pool())
            .await
            .expect("create");
    }
}
