//! WAL checkpoints of a SQLite database on a thread of their own, beside its writers instead of
//! inside their COMMITs.
//!
//! SQLite checkpoints on its own in the COMMIT that takes the write-ahead log past
//! `wal_autocheckpoint` pages (1000 by default): that COMMIT copies the log's pages into the
//! database file and fsyncs it before it returns, still holding SQLite's one write lock. Under
//! load a batch writer's COMMIT of dozens of transactions writes a few pages for each, so
//! every few COMMITs one carried a checkpoint, and every write of the database waited behind
//! it. A PASSIVE checkpoint needs no write lock (it copies what is committed while new
//! commits append to the log), so here the writers only tell this thread that they
//! committed, and it checkpoints, at most once per [`CHECKPOINT_PACE`] while commits keep
//! coming and not at all while none do.
//!
//! Every connection keeps SQLite's own checkpoint as a backstop at 10,000 pages (the session
//! settings in [`crate::db`]): should this thread ever fall behind, a COMMIT checkpoints once
//! the log holds about 40 MiB, as SQLite would on its own. Durability is the same: every
//! COMMIT still fsyncs the log (`synchronous = FULL`), and a checkpoint fsyncs the database
//! file before the log may be reused.

use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::watch;

use crate::batch_writer::to_sqlx_error;

/// How long the thread lets commits gather before a checkpoint: one checkpoint (one fsync of
/// the database file) per pace copies every page the commits in it wrote.
pub(crate) const CHECKPOINT_PACE: Duration = Duration::from_millis(5);

/// The writers' side: tells the thread of each commit. The thread ends when this is dropped.
pub(crate) struct Checkpointer {
    committed: SyncSender<()>,
    /// Checkpoints the thread has run.
    runs: watch::Receiver<u64>,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer")
            .field("runs", &*self.runs.borrow())
            .finish_non_exhaustive()
    }
}

impl Checkpointer {
    /// Opens the thread's connection to the database file at `path` with every connection's
    /// session settings, and starts the thread.
    pub(crate) fn start(path: &Path, session: &str) -> Result<Checkpointer, sqlx::Error> {
        let connection = Connection::open(path).map_err(to_sqlx_error)?;
        connection.execute_batch(session).map_err(to_sqlx_error)?;
        // One commit waiting to be seen is all the thread needs to know: a second is the
        // same news, so the channel holds one and the writers never block on it.
        let (committed, commits) = std::sync::mpsc::sync_channel(1);
        let (ran, runs) = watch::channel(0);
        std::thread::Builder::new()
            .name("sqlite-checkpointer".to_owned())
            .spawn(move || run(&connection, &commits, &ran))
            .map_err(sqlx::Error::Io)?;
        Ok(Checkpointer { committed, runs })
    }

    /// A writer committed: the log has pages to copy.
    pub(crate) fn committed(&self) {
        match self.committed.try_send(()) {
            // Full: the thread has not seen the last one yet, and will cover this one too.
            Ok(()) | Err(TrySendError::Full(())) => {}
            Err(TrySendError::Disconnected(())) => {
                // The thread is gone (it cannot end while this exists, short of a panic):
                // SQLite's own checkpoint at the backstop still bounds the log.
                tracing::warn!("SQLite's checkpointer thread stopped");
            }
        }
    }

    /// The count of checkpoints the thread has run, for tests.
    #[cfg(test)]
    pub(crate) fn runs(&self) -> watch::Receiver<u64> {
        self.runs.clone()
    }
}

fn run(connection: &Connection, commits: &Receiver<()>, ran: &watch::Sender<u64>) {
    // Ends when the writers' side is dropped (the database closed).
    while commits.recv().is_ok() {
        std::thread::sleep(CHECKPOINT_PACE);
        // The row it returns (busy, log pages, pages copied) only describes the run.
        match connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            Ok(()) => ran.send_modify(|runs| *runs += 1),
            // BUSY (another connection's checkpoint is running) or a failing disk: the next
            // commit brings the thread back, and the backstop holds meanwhile.
            Err(error) => tracing::warn!(%error, "a SQLite checkpoint failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Both backends, like every storage test: PostgreSQL checkpoints itself, so there the
    //! commits are checked and the checkpointer's part is SQLite's only.

    use std::time::Duration;

    use crate::db::{Database, Finished};
    use crate::test_probe::MIGRATIONS;
    use crate::testing::TestDatabase;
    use crate::write_batch::WriteBatch;

    /// Rows of about 3 KB each (the id is long), so the commits write hundreds of pages.
    const ROWS: usize = 300;
    const ID_LENGTH: usize = 3000;

    fn long_row(n: usize) -> WriteBatch {
        let mut batch = WriteBatch::new();
        batch
            .push("INSERT INTO probe (id, amount, at_micros, flag) VALUES ($1, $2, 0, 0)")
            .bind(format!("{n:0>width$}", width = ID_LENGTH))
            .bind(1_i64);
        batch
    }

    async fn database_file_size(db: &Database) -> u64 {
        let file: String =
            sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
                .fetch_one(db.pool())
                .await
                .expect("the database's file");
        std::fs::metadata(file).expect("its size").len()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn committed_pages_reach_the_database_file_by_the_checkpointer_not_by_a_commit() {
        let target = TestDatabase::create().await;
        let db = Database::open(&target.url, MIGRATIONS).await.expect("open");
        let runs = db.checkpoint_runs();
        let size_before = match &runs {
            Some(_) => database_file_size(&db).await,
            None => 0,
        };
        for n in 0..ROWS {
            let finished = db.finish_alone(long_row(n), 0).await.expect("commit");
            assert!(matches!(finished, Finished::Committed { .. }), "row {n}");
        }
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM probe")
            .fetch_one(db.pool())
            .await
            .expect("count");
        assert_eq!(rows, ROWS as i64);
        let Some(mut runs) = runs else {
            return;
        };
        // The commits logged a few thousand pages at most, far below the 10,000 at which a
        // COMMIT would checkpoint, so only the thread copies them into the database file.
        // Each of its runs is a chance to see them there; the last commit's news brings one
        // run after it.
        let wanted = size_before + (ROWS * ID_LENGTH) as u64;
        let copied = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                if database_file_size(&db).await >= wanted {
                    return;
                }
                runs.changed().await.expect("the checkpointer runs");
            }
        })
        .await;
        assert!(
            copied.is_ok(),
            "the database file stayed under {wanted} bytes after {} checkpoints",
            *runs.borrow()
        );
    }
}
