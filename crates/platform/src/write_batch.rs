//! Several writes of one transaction sent to the database as one statement: the writes a
//! change makes after it has decided (the row itself, its history, its deadline, its outbox
//! messages) cost one round trip rather than one each.
//!
//! On PostgreSQL the statements become one, the earlier ones as data-modifying `WITH` parts of
//! the last (PostgreSQL runs each exactly once, to completion, and checks foreign keys at the
//! end of the whole statement, so a child row may follow its parent's insert). On SQLite, where
//! a statement is a call into the library rather than a round trip, they are one
//! multi-statement string handed to the connection's worker thread in one hop, run in order.
//!
//! Each statement is written with its own `$1`, `$2`, ... and bound right after it is pushed;
//! the batch renumbers the placeholders into one parameter list. Two rules follow from
//! PostgreSQL's semantics and hold on both backends because the code is shared: no two
//! statements of a batch may change the same row, and no statement may read what an earlier
//! one of the same batch wrote (every part of a PostgreSQL statement sees the same snapshot).

use sqlx::any::AnyArguments;
use sqlx::encode::Encode;
use sqlx::error::BoxDynError;
use sqlx::{Any, Arguments, Executor, Type};

use crate::db::{Backend, Tx};
use crate::error::ApiError;

/// Writes collected for one [`WriteBatch::execute`]; see the module documentation.
#[derive(Default)]
pub struct WriteBatch {
    statements: Vec<String>,
    /// The statement whose changed rows [`WriteBatch::execute`] reports, if any.
    checked: Option<usize>,
    arguments: AnyArguments<'static>,
    /// The first value that could not be encoded; reported by `execute`.
    bind_error: Option<BoxDynError>,
}

impl std::fmt::Debug for WriteBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBatch")
            .field("statements", &self.statements)
            .field("checked", &self.checked)
            .field("arguments", &self.arguments.len())
            .finish()
    }
}

impl WriteBatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a statement; bind its parameters (`$1`... in its own numbering) next.
    pub fn push(&mut self, sql: &str) -> &mut Self {
        let renumbered = renumber(sql, self.arguments.len());
        self.statements.push(renumbered);
        self
    }

    /// Adds the statement whose changed rows `execute` reports (a version-checked update): at
    /// most one per batch.
    pub fn push_checked(&mut self, sql: &str) -> &mut Self {
        debug_assert!(self.checked.is_none(), "one checked statement per batch");
        self.checked = Some(self.statements.len());
        self.push(sql)
    }

    /// Binds the next parameter of the statement pushed last.
    pub fn bind<T>(&mut self, value: T) -> &mut Self
    where
        T: 'static + Encode<'static, Any> + Type<Any>,
    {
        if let Err(error) = self.arguments.add(value)
            && self.bind_error.is_none()
        {
            self.bind_error = Some(error);
        }
        self
    }

    pub fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }

    /// Statements pushed so far.
    pub fn len(&self) -> usize {
        self.statements.len()
    }

    /// Runs every statement in `tx`, all or none (a failure leaves `tx` to be rolled back),
    /// and returns the rows the checked statement changed (0 when there is none).
    pub async fn execute(self, tx: &mut Tx) -> Result<u64, ApiError> {
        if let Some(error) = self.bind_error {
            return Err(ApiError::internal(std::io::Error::other(format!(
                "a write could not be encoded: {error}"
            ))));
        }
        if self.statements.is_empty() {
            return Ok(0);
        }
        match tx.backend() {
            Backend::Postgres => {
                let sql = postgres_statement(&self.statements, self.checked);
                let done = sqlx::query_with(&sql, self.arguments)
                    .execute(&mut **tx)
                    .await?;
                Ok(if self.checked.is_some() {
                    done.rows_affected()
                } else {
                    0
                })
            }
            Backend::Sqlite => {
                use futures::TryStreamExt;
                let sql = self.statements.join(";\n");
                let results: Vec<_> = (&mut **tx)
                    .execute_many(sqlx::query_with(&sql, self.arguments))
                    .try_collect()
                    .await?;
                Ok(self
                    .checked
                    .and_then(|i| results.get(i))
                    .map_or(0, |done| done.rows_affected()))
            }
        }
    }
}

/// The statements as one PostgreSQL statement: the checked one (or else the last) is the main
/// statement, the others data-modifying `WITH` parts.
fn postgres_statement(statements: &[String], checked: Option<usize>) -> String {
    let main = checked.unwrap_or(statements.len() - 1);
    if statements.len() == 1 {
        return statements[main].clone();
    }
    let mut sql = String::from("WITH ");
    let parts = statements.iter().enumerate().filter(|(i, _)| *i != main);
    for (n, (i, statement)) in parts.enumerate() {
        if n > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("batch_{i} AS ({statement})"));
    }
    sql.push(' ');
    sql.push_str(&statements[main]);
    sql
}

/// `sql` with every `$n` placeholder moved up by `offset`. The suite's SQL has no `$` in
/// literals or identifiers, so every `$` followed by digits is a placeholder.
fn renumber(sql: &str, offset: usize) -> String {
    if offset == 0 {
        return sql.to_owned();
    }
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        out.push(c);
        if c != '$' {
            continue;
        }
        let digits_start = start + 1;
        let mut end = digits_start;
        while let Some((i, d)) = chars.peek().copied() {
            if !d.is_ascii_digit() {
                break;
            }
            end = i + 1;
            chars.next();
        }
        if end > digits_start {
            // Digits only, so the parse cannot fail; keep the text as it was if it somehow did.
            match sql[digits_start..end].parse::<usize>() {
                Ok(n) => out.push_str(&(n + offset).to_string()),
                Err(_) => out.push_str(&sql[digits_start..end]),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Database, Migrations};
    use crate::testing::TestDatabase;

    static MIGRATIONS: Migrations = Migrations {
        sqlite: &sqlx::migrate!("tests/migrations/sqlite"),
        postgres: &sqlx::migrate!("tests/migrations/postgres"),
    };

    #[test]
    fn placeholders_are_moved_past_earlier_statements_parameters() {
        assert_eq!(renumber("VALUES ($1, $2, 'x')", 0), "VALUES ($1, $2, 'x')");
        assert_eq!(
            renumber("UPDATE t SET a = $1 WHERE b = $12 AND c = $2", 10),
            "UPDATE t SET a = $11 WHERE b = $22 AND c = $12"
        );
        assert_eq!(renumber("SELECT $", 3), "SELECT $");
    }

    #[test]
    fn on_postgres_the_checked_statement_is_the_main_one() {
        let statements = [
            "INSERT a".to_owned(),
            "UPDATE b".to_owned(),
            "INSERT c".to_owned(),
        ];
        assert_eq!(
            postgres_statement(&statements, Some(1)),
            "WITH batch_0 AS (INSERT a), batch_2 AS (INSERT c) UPDATE b"
        );
        assert_eq!(
            postgres_statement(&statements, None),
            "WITH batch_0 AS (INSERT a), batch_1 AS (UPDATE b) INSERT c"
        );
        assert_eq!(postgres_statement(&statements[..1], None), "INSERT a");
    }

    async fn probe_ids(db: &Database) -> Vec<(String, i64)> {
        sqlx::query_as("SELECT id, amount FROM probe ORDER BY id")
            .fetch_all(db.pool())
            .await
            .expect("read probes")
    }

    #[tokio::test]
    async fn a_batch_writes_every_statement_and_reports_the_checked_one() {
        let target = TestDatabase::create().await;
        let db = Database::open(&target.url, MIGRATIONS).await.expect("open");
        sqlx::query("INSERT INTO probe (id, amount, at_micros, flag) VALUES ('a', 1, 0, 0)")
            .execute(db.pool())
            .await
            .expect("seed");
        let mut tx = db.begin_write().await.expect("begin");
        let mut batch = WriteBatch::new();
        batch
            .push("INSERT INTO probe (id, amount, at_micros, flag) VALUES ($1, $2, 0, 0), ($3, $4, 0, 0)")
            .bind("b".to_owned())
            .bind(2_i64)
            .bind("c".to_owned())
            .bind(3_i64);
        batch
            .push_checked("UPDATE probe SET amount = $1 WHERE id = $2 AND amount = $3")
            .bind(10_i64)
            .bind("a".to_owned())
            .bind(1_i64);
        batch
            .push("INSERT INTO probe (id, amount, at_micros, flag) VALUES ($1, $2, 0, 0)")
            .bind("d".to_owned())
            .bind(4_i64);
        assert_eq!(batch.len(), 3);
        let changed = batch.execute(&mut tx).await.expect("batch");
        tx.commit().await.expect("commit");
        assert_eq!(changed, 1, "the checked update changed one row");
        assert_eq!(
            probe_ids(&db).await,
            vec![
                ("a".to_owned(), 10),
                ("b".to_owned(), 2),
                ("c".to_owned(), 3),
                ("d".to_owned(), 4)
            ]
        );

        // A checked statement that matches nothing reports 0; its batch still ran.
        let mut tx = db.begin_write().await.expect("begin");
        let mut batch = WriteBatch::new();
        batch
            .push("INSERT INTO probe (id, amount, at_micros, flag) VALUES ($1, 5, 0, 0)")
            .bind("e".to_owned());
        batch
            .push_checked("UPDATE probe SET amount = 0 WHERE id = $1 AND amount = $2")
            .bind("a".to_owned())
            .bind(1_i64);
        assert_eq!(batch.execute(&mut tx).await.expect("batch"), 0);
        tx.rollback().await.expect("rollback");
        assert_eq!(
            probe_ids(&db).await.len(),
            4,
            "the rolled-back batch left nothing"
        );
    }

    #[tokio::test]
    async fn a_failing_statement_fails_the_batch_and_its_transaction_rolls_back_whole() {
        let target = TestDatabase::create().await;
        let db = Database::open(&target.url, MIGRATIONS).await.expect("open");
        let mut tx = db.begin_write().await.expect("begin");
        let mut batch = WriteBatch::new();
        batch
            .push("INSERT INTO probe (id, amount, at_micros, flag) VALUES ($1, 1, 0, 0)")
            .bind("x".to_owned());
        // The same primary key twice: the second insert violates it.
        batch
            .push("INSERT INTO probe (id, amount, at_micros, flag) VALUES ($1, 2, 0, 0)")
            .bind("x".to_owned());
        let error = batch.execute(&mut tx).await.expect_err("duplicate key");
        assert!(
            matches!(error, ApiError::AlreadyExists(_)),
            "a unique violation, as from one statement: {error:?}"
        );
        drop(tx);
        assert!(
            probe_ids(&db).await.is_empty(),
            "nothing of the batch stayed"
        );
    }
}
