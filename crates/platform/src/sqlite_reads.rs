//! SQLite point reads run on the calling thread, on connections of the suite's own.
//!
//! sqlx's SQLite driver runs every connection on a thread of its own: a read is a message to
//! that thread (a futex wake, a context switch) and rows sent back (another wake of the
//! runtime's thread), for a statement that SQLite answers in tens of microseconds from pages
//! the operating system already holds. Profiled under OpenDispute's load, those hand-overs
//! were about a sixth of the suite's CPU. A read by key (OpenDispute's snapshot of the order,
//! GetDispute's dispute; [`crate::Database::fetch_point`]) therefore runs here instead, on
//! the runtime's thread, through a rusqlite connection taken from a small pool of idle ones.
//! In WAL mode a reader never waits for the writer, so the thread is held only for SQLite's
//! own work. Lists and scans, whose cost grows with what they return, stay on sqlx's pool,
//! off the runtime.
//!
//! Each statement is its own read transaction (autocommit): one consistent snapshot of
//! committed rows, as a statement on the pool sees.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use rusqlite::types::ValueRef;
use sqlx::any::AnyRow;
use sqlx_core::any::{AnyColumn, AnyTypeInfo, AnyTypeInfoKind, AnyValue, AnyValueKind};
use sqlx_core::ext::ustr::UStr;

use crate::batch_writer::{bind_numbered, to_sqlx_error};

/// Prepared statements each connection keeps (the point reads are a handful of statements).
const STATEMENT_CACHE: usize = 64;

/// Idle connections kept for reuse. Reads run on the threads that call them and never await,
/// so as many are in use at once as threads read at once: the runtime's workers, and a
/// blocking thread now and then. A connection returned beyond this is closed.
const MAX_IDLE: usize = 16;

/// The pool of connections point reads borrow, one database file.
pub(crate) struct PointReaders {
    path: PathBuf,
    session: &'static str,
    idle: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for PointReaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PointReaders")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl PointReaders {
    /// Readers of the database file at `path`, each connection starting with `session` (the
    /// settings every SQLite connection of the suite has) and then refusing writes.
    pub(crate) fn new(path: PathBuf, session: &'static str) -> PointReaders {
        PointReaders {
            path,
            session,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `sql` with `values` bound to its `$n` placeholders and returns at most `limit`
    /// rows, as sqlx's `Any` driver would have decoded them from SQLite.
    pub(crate) fn fetch(
        &self,
        sql: &str,
        values: &[AnyValueKind<'_>],
        limit: usize,
    ) -> Result<Vec<AnyRow>, sqlx::Error> {
        let connection = match self.take_idle() {
            Some(connection) => connection,
            None => self.open()?,
        };
        let rows = read(&connection, sql, values, limit);
        self.put_back(connection);
        rows
    }

    fn take_idle(&self) -> Option<Connection> {
        // A poisoned lock only means another reader panicked while holding it: the list of
        // idle connections is still a list of idle connections.
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
    }

    fn put_back(&self, connection: Connection) {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(connection);
        }
    }

    fn open(&self) -> Result<Connection, sqlx::Error> {
        let connection = Connection::open(&self.path).map_err(to_sqlx_error)?;
        connection
            .execute_batch(self.session)
            .and_then(|()| connection.execute_batch("PRAGMA query_only = ON;"))
            .map_err(to_sqlx_error)?;
        connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(connection)
    }
}

/// The rows of one statement as `AnyRow`s: integers as BIGINT, floats as DOUBLE, text, blobs
/// and NULLs as sqlx's SQLite driver maps them (by the value's own type, not the column's).
fn read(
    connection: &Connection,
    sql: &str,
    values: &[AnyValueKind<'_>],
    limit: usize,
) -> Result<Vec<AnyRow>, sqlx::Error> {
    let mut statement = connection.prepare_cached(sql).map_err(to_sqlx_error)?;
    bind_numbered(&mut statement, values).map_err(to_sqlx_error)?;
    let names: Vec<UStr> = statement
        .column_names()
        .into_iter()
        .map(UStr::new)
        .collect();
    let column_names: Arc<sqlx_core::HashMap<UStr, usize>> = Arc::new(
        names
            .iter()
            .enumerate()
            .map(|(ordinal, name)| (name.clone(), ordinal))
            .collect(),
    );
    let mut rows = statement.raw_query();
    let mut read = Vec::new();
    while read.len() < limit {
        let Some(row) = rows.next().map_err(to_sqlx_error)? else {
            break;
        };
        let mut columns = Vec::with_capacity(names.len());
        let mut values = Vec::with_capacity(names.len());
        for (ordinal, name) in names.iter().enumerate() {
            let (kind, type_kind) = match row.get_ref(ordinal).map_err(to_sqlx_error)? {
                ValueRef::Null => (
                    AnyValueKind::Null(AnyTypeInfoKind::Null),
                    AnyTypeInfoKind::Null,
                ),
                ValueRef::Integer(value) => (AnyValueKind::BigInt(value), AnyTypeInfoKind::BigInt),
                ValueRef::Real(value) => (AnyValueKind::Double(value), AnyTypeInfoKind::Double),
                ValueRef::Text(bytes) => match std::str::from_utf8(bytes) {
                    Ok(text) => (
                        AnyValueKind::Text(text.to_owned().into()),
                        AnyTypeInfoKind::Text,
                    ),
                    Err(error) => {
                        return Err(sqlx::Error::ColumnDecode {
                            index: name.to_string(),
                            source: Box::new(error),
                        });
                    }
                },
                ValueRef::Blob(bytes) => (
                    AnyValueKind::Blob(bytes.to_vec().into()),
                    AnyTypeInfoKind::Blob,
                ),
            };
            columns.push(AnyColumn {
                ordinal,
                name: name.clone(),
                type_info: AnyTypeInfo { kind: type_kind },
            });
            values.push(AnyValue { kind });
        }
        read.push(AnyRow {
            column_names: Arc::clone(&column_names),
            columns,
            values,
        });
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    //! Both backends, like every storage test: on PostgreSQL `fetch_point` is the pool's
    //! `fetch_optional`, so the two must decode the same rows to the same values.

    use crate::Database;
    use crate::test_probe::database_with_probe_a;

    #[derive(Debug, PartialEq, sqlx::FromRow)]
    struct Probe {
        id: String,
        amount: i64,
        small: i32,
        flag: i64,
        note: Option<String>,
        missing: Option<i64>,
    }

    const PROBE: &str = "SELECT id, amount, CAST(flag + 7 AS INTEGER) AS small, flag, \
                         CASE WHEN amount > 1 THEN 'big' END AS note, \
                         CAST(NULL AS BIGINT) AS missing FROM probe WHERE id = $1 AND amount >= $2";

    async fn point(db: &Database, id: &str, at_least: i64) -> Option<Probe> {
        let query = sqlx::query_as::<_, Probe>(PROBE).bind(id).bind(at_least);
        db.fetch_point(query).await.expect("point read")
    }

    async fn pooled(db: &Database, id: &str, at_least: i64) -> Option<Probe> {
        sqlx::query_as::<_, Probe>(PROBE)
            .bind(id)
            .bind(at_least)
            .fetch_optional(db.pool())
            .await
            .expect("pooled read")
    }

    #[tokio::test]
    async fn a_point_read_decodes_as_the_pool_does_and_sees_each_commit_at_once() {
        let (db, _target) = database_with_probe_a().await;
        let a = point(&db, "a", 0).await;
        assert_eq!(
            a,
            Some(Probe {
                id: "a".into(),
                amount: 1,
                small: 7,
                flag: 0,
                note: None,
                missing: None,
            })
        );
        assert_eq!(a, pooled(&db, "a", 0).await);
        // Both placeholders bind: the second one filters the row out.
        assert_eq!(point(&db, "a", 2).await, None);
        assert_eq!(point(&db, "nobody", 0).await, None);

        // A change committed through the writer is what the next point read sees (the
        // reader's connection is reused, its snapshot is not).
        let mut tx = db.begin_write().await.expect("begin");
        sqlx::query("UPDATE probe SET amount = $1, flag = $2 WHERE id = 'a'")
            .bind(4_000_000_000_i64)
            .bind(1_i64)
            .execute(&mut *tx)
            .await
            .expect("update");
        tx.commit().await.expect("commit");
        let big = point(&db, "a", 2).await;
        assert_eq!(
            big.as_ref().map(|p| (p.amount, p.small, p.flag)),
            Some((4_000_000_000, 8, 1))
        );
        assert_eq!(big.as_ref().and_then(|p| p.note.as_deref()), Some("big"));
        assert_eq!(big, pooled(&db, "a", 2).await);
    }

    #[tokio::test]
    async fn a_bad_point_read_is_an_error_and_a_point_read_cannot_write() {
        let (db, _target) = database_with_probe_a().await;
        let unknown =
            sqlx::query_as::<_, (String,)>("SELECT id FROM no_such_table WHERE id = $1").bind("a");
        assert!(db.fetch_point(unknown).await.is_err());
        // A value that does not fit the field is a decode error, not a panic.
        let too_big =
            sqlx::query_as::<_, (i32,)>("SELECT 4000000000 + amount FROM probe WHERE id = $1")
                .bind("a");
        assert!(db.fetch_point(too_big).await.is_err());
        // A placeholder with no value is refused, not bound to NULL.
        let unbound =
            sqlx::query_as::<_, (String,)>("SELECT id FROM probe WHERE id = $2").bind("a");
        assert!(db.fetch_point(unbound).await.is_err());
        if db.backend() == crate::Backend::Sqlite {
            // The readers refuse writes: a statement given to the wrong method changes nothing.
            let write = sqlx::query_as::<_, (String,)>(
                "UPDATE probe SET amount = 9 WHERE id = $1 RETURNING id",
            )
            .bind("a");
            assert!(db.fetch_point(write).await.is_err());
        }
        assert_eq!(crate::test_probe::probe_amount(&db, "a").await, 1);
        // The connection that failed went back to the pool and still reads.
        assert!(point(&db, "a", 0).await.is_some());
    }
}
