//! Several writes of one transaction sent to the database as one statement: the writes a
//! change makes after it has decided (the row itself, its history, its deadline, its outbox
//! messages) cost one round trip rather than one each.
//!
//! On PostgreSQL the statements become one: each a data-modifying `WITH` part (PostgreSQL runs
//! each exactly once, to completion, and checks foreign keys at the end of the whole
//! statement, so a child row may follow its parent's insert), the main query counting the rows
//! each changed. So a batch holds INSERT, UPDATE and DELETE statements without RETURNING. On SQLite, where
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
use sqlx::{Any, AnyConnection, Arguments, Executor, Row, Type};

use crate::db::{Backend, Finished, Tx};
use crate::error::ApiError;

/// Writes collected for one [`WriteBatch::execute`]; see the module documentation.
#[derive(Default)]
pub struct WriteBatch {
    statements: Vec<String>,
    /// Rows a statement must change, by statement, with the error to answer when it did not.
    expectations: Vec<(usize, u64, ApiError)>,
    /// What a unique violation anywhere in the batch means to the caller, if it knows.
    unique_violation: Option<ApiError>,
    arguments: AnyArguments<'static>,
    /// The first value that could not be encoded; reported by `execute`.
    bind_error: Option<BoxDynError>,
    /// A statement makes work for a background worker (see [`WriteBatch::makes_work`]).
    pub(crate) makes_work: bool,
}

impl std::fmt::Debug for WriteBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBatch")
            .field("statements", &self.statements)
            .field("expectations", &self.expectations)
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

    /// Requires the statement pushed last to change exactly `rows` rows (a version-checked
    /// update): otherwise `execute` fails with `error`, and the transaction must roll back.
    pub fn expect_rows(&mut self, rows: u64, error: ApiError) -> &mut Self {
        let statement = self.statements.len().saturating_sub(1);
        self.expectations.push((statement, rows, error));
        self
    }

    /// Answers `error` instead of ALREADY_EXISTS when a statement of the batch violates a
    /// unique index (the caller knows which one its writes can collide on).
    pub fn on_unique_violation(&mut self, error: ApiError) -> &mut Self {
        self.unique_violation = Some(error);
        self
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

    /// Marks the batch as making work for a background worker of its database (an outbox
    /// row for the relay): once it runs, its transaction wakes the workers when it commits
    /// (see [`Tx::makes_work`]).
    pub fn makes_work(&mut self) -> &mut Self {
        self.makes_work = true;
        self
    }

    /// Statements pushed so far.
    pub fn len(&self) -> usize {
        self.statements.len()
    }

    /// Runs every statement in `tx`, all or none (a failure leaves `tx` to be rolled back),
    /// and returns the rows each statement changed, in the order they were pushed.
    pub async fn execute(self, tx: &mut Tx) -> Result<Vec<u64>, ApiError> {
        if self.makes_work {
            tx.makes_work();
        }
        let (prepared, judge) = self.prepare(tx.backend())?;
        let ran = prepared.run(tx).await;
        judge.judge(ran)
    }

    /// The batch as one statement for `backend`, and what reads its outcome.
    pub(crate) fn prepare(self, backend: Backend) -> Result<(PreparedBatch, Judge), ApiError> {
        let (statements, arguments, judge) = self.into_parts()?;
        let count = statements.len();
        let (sql, shape) = match backend {
            Backend::Postgres if count == 1 => (statements.concat(), Shape::OnePostgresStatement),
            Backend::Postgres => (postgres_statement(&statements), Shape::PostgresWith),
            Backend::Sqlite => (statements.join(";\n"), Shape::SqliteStatements),
        };
        let prepared = PreparedBatch {
            sql,
            arguments,
            shape,
            statements: count,
        };
        Ok((prepared, judge))
    }

    /// On PostgreSQL, the batch as one statement that checks itself and so can run on its
    /// own, outside any transaction: PostgreSQL runs a single statement as a transaction of
    /// its own, all or nothing. Its expectations and `must_change_one` are checked inside the
    /// statement (`returns_write_batch_check`, platform migration 1002), which fails, and so
    /// rolls back, when one is not met. Run alone ([`SelfChecked::run`]) it ends as
    /// [`crate::db::Tx::finish`] would have ended a transaction of this batch alone: one
    /// round trip instead of two (the batch, COMMIT); or it runs with others
    /// ([`crate::combined_writes`]). (Migration 1002 calls this `run_self_checked`, the
    /// name it had before the batch could be combined; a migration's text cannot change.)
    pub(crate) fn self_checked(self, must_change_one: usize) -> Result<SelfChecked, ApiError> {
        let made_work = self.makes_work;
        let (statements, arguments, judge) = self.into_parts()?;
        if must_change_one >= statements.len() {
            // A transaction would have rolled back (no such statement changed a row); a
            // statement on its own cannot run first and undo itself, so it does not run.
            return Err(ApiError::internal(std::io::Error::other(format!(
                "write batch of {} statements checked at statement {must_change_one}",
                statements.len()
            ))));
        }
        // Checked in the order `Judge::judge` and `finishing` check them: the expectations,
        // then the statement that must change one row.
        let mut checks: Vec<(usize, u64)> = judge
            .expectations
            .iter()
            .map(|(statement, rows, _)| (*statement, *rows))
            .collect();
        if !checks
            .iter()
            .any(|(statement, _)| *statement == must_change_one)
        {
            checks.push((must_change_one, 1));
        }
        Ok(SelfChecked {
            statements,
            arguments,
            checks,
            judge,
            must_change_one,
            made_work,
        })
    }

    /// The statements one by one (placeholders numbered across the batch), the values they
    /// bind, and what reads their outcome: for a runner that prepares each statement itself.
    pub(crate) fn into_parts(
        self,
    ) -> Result<(Vec<String>, AnyArguments<'static>, Judge), ApiError> {
        if let Some(error) = self.bind_error {
            return Err(ApiError::internal(std::io::Error::other(format!(
                "a write could not be encoded: {error}"
            ))));
        }
        let judge = Judge {
            expectations: self.expectations,
            unique_violation: self.unique_violation,
        };
        Ok((self.statements, self.arguments, judge))
    }
}

/// A batch as one PostgreSQL statement that checks itself (see
/// [`WriteBatch::self_checked`]): its statements (placeholders numbered across the
/// batch), the values they bind, the checks (a statement's number and the rows it must
/// change, in the order the judge checks them) and the judge.
pub(crate) struct SelfChecked {
    pub(crate) statements: Vec<String>,
    pub(crate) arguments: AnyArguments<'static>,
    pub(crate) checks: Vec<(usize, u64)>,
    judge: Judge,
    must_change_one: usize,
    pub(crate) made_work: bool,
}

impl SelfChecked {
    /// Runs the batch alone, outside any transaction: ends as a transaction of it would. An
    /// `Err` means the connection failed; the database's refusals are `Ok` verdicts.
    pub(crate) async fn run<'e>(
        self,
        executor: impl Executor<'e, Database = Any>,
    ) -> Result<Finished, ApiError> {
        let sql = self_checked_statement(&self.statements, &self.checks);
        let error = match sqlx::query_with(&sql, self.arguments)
            .execute(executor)
            .await
        {
            Ok(_) => {
                return Ok(Finished::Committed {
                    made_work: self.made_work,
                });
            }
            Err(error) => error,
        };
        Ok(match unmet_statement(&error) {
            Some(statement) => match self.judge.unmet(statement) {
                Some(refusal) => Finished::Refused(refusal),
                None if statement == self.must_change_one => Finished::NotChanged,
                None => Finished::Refused(ApiError::internal(error)),
            },
            // The database refused the statement (a unique index, a foreign key): rolled back.
            None if matches!(error, sqlx::Error::Database(_)) => {
                Finished::Refused(self.judge.refusal(error))
            }
            // No connection, or it broke: not a refusal of these writes.
            None => return Err(ApiError::from(error)),
        })
    }
}

/// A batch ready to run: one statement (PostgreSQL) or one multi-statement string (SQLite).
pub(crate) struct PreparedBatch {
    pub(crate) sql: String,
    pub(crate) arguments: AnyArguments<'static>,
    shape: Shape,
    statements: usize,
}

enum Shape {
    OnePostgresStatement,
    PostgresWith,
    SqliteStatements,
}

impl PreparedBatch {
    pub(crate) fn is_empty(&self) -> bool {
        self.statements == 0
    }

    /// Runs the batch on `connection`: the rows each statement changed.
    pub(crate) async fn run(self, connection: &mut AnyConnection) -> Result<Vec<u64>, sqlx::Error> {
        if self.statements == 0 {
            return Ok(Vec::new());
        }
        match self.shape {
            Shape::OnePostgresStatement => sqlx::query_with(&self.sql, self.arguments)
                .execute(connection)
                .await
                .map(|done| vec![done.rows_affected()]),
            Shape::PostgresWith => {
                let row = sqlx::query_with(&self.sql, self.arguments)
                    .fetch_one(connection)
                    .await?;
                (0..self.statements)
                    .map(|i| {
                        row.try_get::<i64, _>(i)
                            .map(|n| u64::try_from(n).unwrap_or(0))
                    })
                    .collect()
            }
            Shape::SqliteStatements => {
                use futures::TryStreamExt;
                connection
                    .execute_many(sqlx::query_with(&self.sql, self.arguments))
                    .map_ok(|done| done.rows_affected())
                    .try_collect()
                    .await
            }
        }
    }
}

/// Reads a batch's outcome: the rows each statement changed, or the error its caller should
/// answer (an expectation not met, a unique violation the caller named).
pub(crate) struct Judge {
    /// Rows a statement must change, by statement, with the error to answer when it did not.
    expectations: Vec<(usize, u64, ApiError)>,
    unique_violation: Option<ApiError>,
}

impl Judge {
    pub(crate) fn judge(self, ran: Result<Vec<u64>, sqlx::Error>) -> Result<Vec<u64>, ApiError> {
        let rows = match ran {
            Ok(rows) => rows,
            Err(error) => return Err(self.refusal(error)),
        };
        for (statement, expected, error) in self.expectations {
            if rows.get(statement) != Some(&expected) {
                return Err(error);
            }
        }
        Ok(rows)
    }

    /// What the caller answers for a batch that failed with `error`.
    fn refusal(self, error: sqlx::Error) -> ApiError {
        match (ApiError::from(error), self.unique_violation) {
            (ApiError::AlreadyExists(_), Some(meant)) => meant,
            (other, _) => other,
        }
    }

    /// The error of the expectation on `statement`, if it has one.
    fn unmet(self, statement: usize) -> Option<ApiError> {
        self.expectations
            .into_iter()
            .find(|(s, _, _)| *s == statement)
            .map(|(_, _, error)| error)
    }
}

/// The SQLSTATE `returns_write_batch_check` raises for a statement that did not change the
/// rows it had to (a class of the suite's own: PostgreSQL's are digits and the letters of
/// the SQL standard, none starting with R).
const UNMET_SQLSTATE: &str = "RB001";

/// The statement `returns_write_batch_check` reported as unmet, when that is what `error` is:
/// its message is "write batch statement N changed M rows, not E".
fn unmet_statement(error: &sqlx::Error) -> Option<usize> {
    let sqlx::Error::Database(db) = error else {
        return None;
    };
    if db.code().as_deref() != Some(UNMET_SQLSTATE) {
        return None;
    }
    db.message()
        .strip_prefix("write batch statement ")?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

/// The statements as one self-checking PostgreSQL statement (see
/// [`WriteBatch::self_checked`]): the WITH parts of [`postgres_statement`], the main query
/// handing the check each of `checks` (a statement's number and the rows it must change) with
/// the rows it changed; the check fails the statement at the first that differs. Only checked
/// statements are counted: PostgreSQL runs every data-modifying part to completion whether or
/// not the main query reads it, and each count is an aggregate to set up and run.
pub(crate) fn self_checked_statement(statements: &[String], checks: &[(usize, u64)]) -> String {
    let list = |item: &dyn Fn(usize, u64) -> String| {
        checks
            .iter()
            .map(|(i, rows)| item(*i, *rows))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "{} SELECT returns_write_batch_check(ARRAY[{}]::integer[], ARRAY[{}]::bigint[], \
         ARRAY[{}]::bigint[])",
        with_parts(statements),
        list(&|i, _| i.to_string()),
        list(&|i, _| format!("(SELECT COUNT(*) FROM batch_{i})")),
        list(&|_, rows| rows.to_string()),
    )
}

/// The statements as one PostgreSQL statement: each a data-modifying `WITH` part returning a
/// row per row it changed, the main statement counting them.
fn postgres_statement(statements: &[String]) -> String {
    let mut sql = with_parts(statements);
    sql.push_str(" SELECT ");
    for i in 0..statements.len() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("(SELECT COUNT(*) FROM batch_{i})"));
    }
    sql
}

/// `WITH batch_0 AS (... RETURNING 1), batch_1 AS (...)`: each statement a data-modifying
/// part returning a row per row it changed.
fn with_parts(statements: &[String]) -> String {
    let mut sql = String::from("WITH ");
    for (i, statement) in statements.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("batch_{i} AS ({statement} RETURNING 1)"));
    }
    sql
}

/// `sql` with every `$n` placeholder moved up by `offset`. The suite's SQL has no `$` in
/// literals or identifiers, so every `$` followed by digits is a placeholder.
pub(crate) fn renumber(sql: &str, offset: usize) -> String {
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
    use crate::db::Database;
    use crate::testing::TestDatabase;

    use crate::test_probe::MIGRATIONS;

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
    fn on_postgres_every_statement_is_a_with_part_whose_rows_are_counted() {
        let statements = ["INSERT a".to_owned(), "UPDATE b".to_owned()];
        assert_eq!(
            postgres_statement(&statements),
            "WITH batch_0 AS (INSERT a RETURNING 1), batch_1 AS (UPDATE b RETURNING 1) \
             SELECT (SELECT COUNT(*) FROM batch_0), (SELECT COUNT(*) FROM batch_1)"
        );
    }

    #[test]
    fn a_self_checked_statement_hands_each_checked_count_and_its_expectation_to_the_check() {
        let statements = ["INSERT a".to_owned(), "UPDATE b".to_owned()];
        assert_eq!(
            self_checked_statement(&statements, &[(1, 1)]),
            "WITH batch_0 AS (INSERT a RETURNING 1), batch_1 AS (UPDATE b RETURNING 1) \
             SELECT returns_write_batch_check(ARRAY[1]::integer[], \
             ARRAY[(SELECT COUNT(*) FROM batch_1)]::bigint[], ARRAY[1]::bigint[])"
        );
    }

    /// How a transaction of a batch alone ended, as text.
    fn ending(finished: Result<Finished, ApiError>) -> String {
        match finished {
            Ok(Finished::Committed { made_work }) => format!("committed, work {made_work}"),
            Ok(Finished::NotChanged) => "not changed".to_owned(),
            Ok(Finished::Refused(error)) => format!("refused: {error:?}"),
            Err(error) => format!("error: {error:?}"),
        }
    }

    /// A batch that inserts probe `id`, then sets `a`'s flag only while its amount is
    /// `a_amount` (expected to change one row), then inserts `key` unless it exists (the
    /// statement that must change one row, as a request's key record does).
    fn checked_batch(id: &str, a_amount: i64, key: &str) -> WriteBatch {
        let mut batch = WriteBatch::new();
        push_probe(&mut batch, id);
        batch
            .push("UPDATE probe SET flag = flag + 1 WHERE id = 'a' AND amount = $1")
            .bind(a_amount)
            .expect_rows(1, ApiError::Aborted("a moved".into()));
        push_key(&mut batch, key);
        batch
    }

    /// Inserts probe `id` (and makes work, as an outbox row would).
    fn push_probe(batch: &mut WriteBatch, id: &str) {
        batch
            .push("INSERT INTO probe (id, amount, at_micros, flag) VALUES ($1, 7, 0, 0)")
            .bind(id.to_owned())
            .makes_work();
    }

    /// Inserts probe `key` unless it exists, as a request's key record does.
    fn push_key(batch: &mut WriteBatch, key: &str) {
        batch
            .push(
                "INSERT INTO probe (id, amount, at_micros, flag) VALUES ($1, 0, 0, 0) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(key.to_owned());
    }

    /// On PostgreSQL a batch alone is one statement outside any transaction, its checks
    /// inside it; on SQLite a job for the batch writer. Either way it ends as a transaction
    /// of that batch would: committed whole, or refused (by its expectation, by a unique
    /// index, by the statement that had to change one row) with nothing of it left.
    #[tokio::test]
    async fn a_batch_alone_commits_whole_or_leaves_nothing_whatever_refuses_it() {
        let (db, _target) = crate::test_probe::database_with_probe_a().await;
        assert_eq!(
            ending(db.finish_alone(checked_batch("b", 1, "key-1"), 2).await),
            "committed, work true"
        );
        assert_eq!(
            probe_ids(&db).await,
            vec![
                ("a".to_owned(), 1),
                ("b".to_owned(), 7),
                ("key-1".to_owned(), 0)
            ]
        );
        let a_flag = || async {
            sqlx::query_scalar::<_, i64>("SELECT flag FROM probe WHERE id = 'a'")
                .fetch_one(db.pool())
                .await
                .expect("flag")
        };
        assert_eq!(a_flag().await, 1);

        // The expectation is not met (a's amount is 1, not 5): refused with its error.
        assert_eq!(
            ending(db.finish_alone(checked_batch("c", 5, "key-2"), 2).await),
            "refused: Aborted(\"a moved\")"
        );
        // The key is there already: not changed, and the rest rolled back with it.
        assert_eq!(
            ending(db.finish_alone(checked_batch("d", 1, "key-1"), 2).await),
            "not changed"
        );
        // A unique violation (b exists), answered as the batch says.
        let mut duplicate = checked_batch("b", 1, "key-3");
        duplicate.on_unique_violation(ApiError::precondition("one_b", "b exists"));
        let refused = ending(db.finish_alone(duplicate, 2).await);
        assert!(refused.contains("one_b"), "{refused}");
        assert_eq!(probe_ids(&db).await.len(), 3, "no refused batch left a row");
        assert_eq!(a_flag().await, 1, "no refused batch left its update");
    }

    /// A batch that inserts probe `id` and then `key` unless it exists (the statement that
    /// must change one row): it shares no row with another such batch.
    fn own_batch(id: &str, key: &str) -> WriteBatch {
        let mut batch = WriteBatch::new();
        push_probe(&mut batch, id);
        push_key(&mut batch, key);
        batch
    }

    /// Runs `batches` (each with the statement that must change one row) as transactions
    /// alone that arrive together: on PostgreSQL handed over while every runner of the
    /// combined writes is busy, so one runner takes them all at once; on SQLite to the batch
    /// writer. How each ended, in order.
    async fn arriving_together(db: &Database, batches: Vec<(WriteBatch, usize)>) -> Vec<String> {
        let held = match db.combined_writes() {
            Some(combined) => Some(combined.hold_runners().await),
            None => None,
        };
        let count = batches.len();
        let calls: Vec<_> = batches
            .into_iter()
            .map(|(batch, must_change_one)| {
                let db = db.clone();
                tokio::spawn(async move { ending(db.finish_alone(batch, must_change_one).await) })
            })
            .collect();
        if let Some(combined) = db.combined_writes() {
            // Not a timed wait: each turn of this loop lets the spawned calls run.
            while combined.queued() < count {
                tokio::task::yield_now().await;
            }
        }
        drop(held);
        let mut endings = Vec::new();
        for call in calls {
            endings.push(call.await.expect("call"));
        }
        endings
    }

    /// Transactions of one batch alone that arrive together commit in one PostgreSQL
    /// statement when none refuses; when one does, or two change the same row, the statement
    /// fails whole and each runs again alone, ending as it would have alone. On SQLite the
    /// batch writer runs them, with the same endings.
    #[tokio::test]
    async fn batches_arriving_together_share_a_statement_and_each_still_ends_as_alone() {
        let (db, _target) = crate::test_probe::database_with_probe_a().await;
        let before = db.combined_write_stats();
        let endings = arriving_together(
            &db,
            (1..=5)
                .map(|i| (own_batch(&format!("m{i}"), &format!("key-m{i}")), 1))
                .collect(),
        )
        .await;
        assert_eq!(endings, vec!["committed, work true"; 5]);
        if let (Some(before), Some(after)) = (before, db.combined_write_stats()) {
            assert_eq!(
                after.statements - before.statements,
                1,
                "one statement for all"
            );
            assert_eq!(after.combined_members - before.combined_members, 5);
            assert_eq!(after.fallbacks, before.fallbacks);
        }
        assert_eq!(
            probe_ids(&db).await.len(),
            11,
            "a, and each batch's two rows"
        );

        let before = db.combined_write_stats();
        let endings = arriving_together(
            &db,
            vec![
                (own_batch("n1", "key-n1"), 1),
                // Its key is there already: not changed, and its row rolled back with it.
                (own_batch("n2", "key-m1"), 1),
                // Three changes of row a: at most one can commit in a shared statement.
                (checked_batch("n3", 1, "key-n3"), 2),
                (checked_batch("n4", 1, "key-n4"), 2),
                // a's amount is 1, not 5: refused with its error.
                (checked_batch("n5", 5, "key-n5"), 2),
            ],
        )
        .await;
        assert_eq!(
            endings,
            [
                "committed, work true",
                "not changed",
                "committed, work true",
                "committed, work true",
                "refused: Aborted(\"a moved\")",
            ]
        );
        if let (Some(before), Some(after)) = (before, db.combined_write_stats()) {
            assert_eq!(
                after.fallbacks - before.fallbacks,
                2,
                "both kinds of batch failed together and ran again alone"
            );
            assert_eq!(after.combined_members, before.combined_members);
        }
        let ids: Vec<String> = probe_ids(&db).await.into_iter().map(|(id, _)| id).collect();
        for absent in ["n2", "n5", "key-n5"] {
            assert!(
                !ids.contains(&absent.to_owned()),
                "{absent} rolled back: {ids:?}"
            );
        }
        for present in ["n1", "key-n1", "n3", "key-n3", "n4", "key-n4"] {
            assert!(
                ids.contains(&present.to_owned()),
                "{present} committed: {ids:?}"
            );
        }
        let a_flag: i64 = sqlx::query_scalar("SELECT flag FROM probe WHERE id = 'a'")
            .fetch_one(db.pool())
            .await
            .expect("flag");
        assert_eq!(a_flag, 2, "the two committed changes of a, each once");

        // Two calls of one request at once: their keys' rows in one insert, the second
        // skipped by its conflict with the first, so the statement falls short of its count;
        // alone, the first commits and the second finds its key.
        let before = db.combined_write_stats();
        let endings = arriving_together(
            &db,
            vec![(own_batch("p1", "key-p"), 1), (own_batch("p2", "key-p"), 1)],
        )
        .await;
        assert_eq!(endings, ["committed, work true", "not changed"]);
        if let (Some(before), Some(after)) = (before, db.combined_write_stats()) {
            assert_eq!(after.fallbacks - before.fallbacks, 1);
        }
        let ids: Vec<String> = probe_ids(&db).await.into_iter().map(|(id, _)| id).collect();
        assert!(
            ids.contains(&"p1".to_owned()) && !ids.contains(&"p2".to_owned()),
            "{ids:?}"
        );
    }

    async fn probe_ids(db: &Database) -> Vec<(String, i64)> {
        sqlx::query_as("SELECT id, amount FROM probe ORDER BY id")
            .fetch_all(db.pool())
            .await
            .expect("read probes")
    }

    #[tokio::test]
    async fn a_batch_writes_every_statement_and_reports_the_rows_of_each() {
        let (db, _target) = crate::test_probe::database_with_probe_a().await;
        let mut tx = db.begin_write().await.expect("begin");
        let mut batch = WriteBatch::new();
        batch
            .push("INSERT INTO probe (id, amount, at_micros, flag) VALUES ($1, $2, 0, 0), ($3, $4, 0, 0)")
            .bind("b".to_owned())
            .bind(2_i64)
            .bind("c".to_owned())
            .bind(3_i64);
        batch
            .push("UPDATE probe SET amount = $1 WHERE id = $2 AND amount = $3")
            .bind(10_i64)
            .bind("a".to_owned())
            .bind(1_i64)
            .expect_rows(1, ApiError::Aborted("a changed".into()));
        batch
            .push("INSERT INTO probe (id, amount, at_micros, flag) VALUES ($1, $2, 0, 0)")
            .bind("d".to_owned())
            .bind(4_i64);
        batch
            .push("UPDATE probe SET flag = 1 WHERE id = $1")
            .bind("nobody".to_owned());
        assert_eq!(batch.len(), 4);
        let changed = batch.execute(&mut tx).await.expect("batch");
        tx.commit().await.expect("commit");
        assert_eq!(changed, vec![2, 1, 1, 0], "rows changed by each statement");
        assert_eq!(
            probe_ids(&db).await,
            vec![
                ("a".to_owned(), 10),
                ("b".to_owned(), 2),
                ("c".to_owned(), 3),
                ("d".to_owned(), 4)
            ]
        );

        // An expectation that is not met fails the batch with its error; rolled back, the
        // batch leaves nothing.
        let mut tx = db.begin_write().await.expect("begin");
        let mut batch = WriteBatch::new();
        batch
            .push("INSERT INTO probe (id, amount, at_micros, flag) VALUES ($1, 5, 0, 0)")
            .bind("e".to_owned());
        batch
            .push("UPDATE probe SET amount = 0 WHERE id = $1 AND amount = $2")
            .bind("a".to_owned())
            .bind(1_i64)
            .expect_rows(1, ApiError::Aborted("a changed".into()));
        let error = batch.execute(&mut tx).await.expect_err("a was 10, not 1");
        assert!(
            matches!(error, ApiError::Aborted(ref m) if m == "a changed"),
            "{error:?}"
        );
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
        batch.on_unique_violation(ApiError::precondition("one_x", "x exists"));
        let error = batch.execute(&mut tx).await.expect_err("duplicate key");
        assert!(
            matches!(error, ApiError::FailedPrecondition { ref rule, .. } if rule == "one_x"),
            "a unique violation, answered as the caller said: {error:?}"
        );
        drop(tx);
        assert!(
            probe_ids(&db).await.is_empty(),
            "nothing of the batch stayed"
        );
    }
}
