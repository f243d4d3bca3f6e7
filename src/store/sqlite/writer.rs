//! Group commit: one thread owns the write connection and runs the write
//! operations waiting for it in one transaction, each in a savepoint of its
//! own, then commits once (one fsync) and answers them all.
//!
//! A [`Durability::Synced`] caller is answered only after its work is on
//! disk; under load, many callers share an fsync instead of queueing for
//! one each. A [`Durability::Volatile`] operation (a credential slot taken
//! before signing, which recovery voids after a crash anyway) is committed
//! and visible at once but reaches the disk with the next synced commit:
//! the write-ahead log is replayed in order, so a crash can lose only
//! volatile commits made after the last synced one. An operation that
//! fails is rolled back to its savepoint and does not disturb the others
//! in the batch.

use std::sync::mpsc;

use rusqlite::{Connection, Transaction, TransactionBehavior};

use super::sql::Cached;
use super::unavailable;
use crate::store::StoreError;
use crate::store::ledger::Durability;

/// Most operations committed together.
const MAX_BATCH: usize = 256;

/// One write operation waiting for the writer.
trait Job: Send {
    /// How durable its commit must be.
    fn durability(&self) -> Durability;
    /// Runs the operation; returns whether it succeeded.
    fn run(&mut self, tx: &Transaction<'_>) -> bool;
    /// Answers the caller once the batch committed (or failed to).
    fn finish(self: Box<Self>, committed: Result<(), StoreError>);
}

struct Typed<T, F> {
    durability: Durability,
    f: Option<F>,
    result: Option<Result<T, StoreError>>,
    reply: Option<tokio::sync::oneshot::Sender<Result<T, StoreError>>>,
}

impl<T, F> Job for Typed<T, F>
where
    T: Send,
    F: FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send,
{
    fn durability(&self) -> Durability {
        self.durability
    }

    fn run(&mut self, tx: &Transaction<'_>) -> bool {
        let Some(f) = self.f.take() else {
            return false;
        };
        // A panicking operation fails alone; the writer thread lives on.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(tx)))
            .unwrap_or_else(|_| Err(StoreError::Unavailable("the store operation failed".into())));
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(mut self: Box<Self>, committed: Result<(), StoreError>) {
        let answer = match (committed, self.result.take()) {
            (Ok(()), Some(r)) => r,
            (Err(e), _) => Err(e),
            (Ok(()), None) => Err(StoreError::Unavailable("the operation did not run".into())),
        };
        if let Some(reply) = self.reply.take() {
            // The caller may have gone away; its work is done either way.
            let _ = reply.send(answer);
        }
    }
}

/// The handle through which operations reach the writer thread.
#[derive(Clone)]
pub(super) struct Writer {
    jobs: mpsc::Sender<Box<dyn Job>>,
    committed: tokio::sync::watch::Receiver<u64>,
}

impl Writer {
    /// Starts the writer thread owning `conn`.
    pub fn start(conn: Connection) -> Result<Self, StoreError> {
        let (jobs, queue) = mpsc::channel::<Box<dyn Job>>();
        let (commits, committed) = tokio::sync::watch::channel(0);
        std::thread::Builder::new()
            .name("lockstep-store-writer".into())
            .spawn(move || run(conn, queue, commits))
            .map_err(|e| unavailable(format!("cannot start the store writer: {e}")))?;
        Ok(Self { jobs, committed })
    }

    /// Counts this writer's commits: it changes after each one, once the
    /// transaction is committed (never before).
    pub fn committed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.committed.clone()
    }

    /// Runs `f` in the next batch's transaction and waits for its commit.
    pub async fn write<T, F>(&self, durability: Durability, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Box::new(Typed {
            durability,
            f: Some(f),
            result: None,
            reply: Some(reply),
        });
        self.jobs
            .send(job)
            .map_err(|_| StoreError::Unavailable("the store writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the store writer dropped the operation".into()))?
    }
}

/// The writer loop: wait for one operation, take every other one already
/// waiting, run them in one transaction, commit, answer.
fn run(
    mut conn: Connection,
    queue: mpsc::Receiver<Box<dyn Job>>,
    commits: tokio::sync::watch::Sender<u64>,
) {
    // The connection starts with `synchronous = FULL`.
    let mut synced = true;
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let want = batch.iter().any(|j| j.durability() == Durability::Synced);
        let committed =
            set_synced(&conn, &mut synced, want).and_then(|()| commit(&mut conn, &mut batch));
        if committed.is_ok() {
            commits.send_modify(|n| *n = n.wrapping_add(1));
        }
        for job in batch {
            job.finish(committed.clone_error());
        }
    }
}

/// Switches between `synchronous = FULL` (fsync at commit) and `NORMAL`
/// (in WAL mode: no fsync at commit) when the batch needs the other.
fn set_synced(conn: &Connection, current: &mut bool, want: bool) -> Result<(), StoreError> {
    if *current != want {
        let level = if want { "FULL" } else { "NORMAL" };
        conn.pragma_update(None, "synchronous", level)
            .map_err(unavailable)?;
        *current = want;
    }
    Ok(())
}

fn commit(conn: &mut Connection, batch: &mut [Box<dyn Job>]) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(unavailable)?;
    if let [only] = batch {
        // Alone in its transaction: a failure rolls the whole of it back.
        return if only.run(&tx) {
            tx.commit().map_err(unavailable)
        } else {
            tx.rollback().map_err(unavailable)
        };
    }
    for job in batch.iter_mut() {
        tx.exec("SAVEPOINT job", []).map_err(unavailable)?;
        if job.run(&tx) {
            tx.exec("RELEASE job", []).map_err(unavailable)?;
        } else {
            tx.exec("ROLLBACK TO job", []).map_err(unavailable)?;
            tx.exec("RELEASE job", []).map_err(unavailable)?;
        }
    }
    tx.commit().map_err(unavailable)
}

/// A `Result<(), StoreError>` that can be handed to every job of a batch.
trait CloneError {
    fn clone_error(&self) -> Result<(), StoreError>;
}

impl CloneError for Result<(), StoreError> {
    fn clone_error(&self) -> Result<(), StoreError> {
        match self {
            Ok(()) => Ok(()),
            Err(e) => Err(StoreError::Unavailable(e.to_string())),
        }
    }
}
