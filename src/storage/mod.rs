//! The store: one redb file. Reads run on the event loop (MVCC snapshots, no fsync); writes
//! are values sent to one writer thread, which group-commits whatever is waiting in a single
//! durable transaction and then answers every waiter. One fsync serves everyone, and a slow
//! disk never stalls the event loop.
//!
//! The store knows no feature. A module declares its tables (mostly in one of the shapes of
//! `shapes.rs`) and its writes (values implementing [`Op`]) in its own files, and lists its
//! tables in the module registry (`modules::REGISTRY`). The store creates every listed table
//! when it opens, and deleting an account asks each of them to forget the account.

pub mod accounts;
pub mod shapes;
pub mod tables;

use crate::error::Error;
use redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};
use std::any::Any;
use std::cell::RefCell;
use std::path::Path;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};
use tables::*;

/// A table some module stores in: what the store needs to create it and to delete an account.
pub trait Table: Sync {
    fn name(&self) -> &str;
    fn create(&self, txn: &WriteTransaction) -> Result<(), Error>;
    /// Removes every row of `user`.
    fn delete_user(&self, txn: &WriteTransaction, user: &str) -> Result<(), Error>;
    /// How many rows `user` has (for tests that check a deletion left nothing).
    #[cfg(test)]
    fn count_user(&self, txn: &redb::ReadTransaction, user: &str) -> Result<usize, Error>;
}

/// Every table, core and modules', as the store was opened with it.
pub type Schema = Vec<&'static dyn Table>;

/// One durable change, made by the module that owns the tables it touches. The writer applies
/// a batch of them in one transaction, in the order they were submitted.
pub trait Op: Send + std::fmt::Debug + Any {
    fn apply(&self, txn: &Txn) -> Result<(), Error>;
    /// Applies `run`, consecutive ops of this same type that include `self`. Ops that are
    /// frequent and touch the same tables (archive appends) open them once for the run.
    fn apply_run(&self, txn: &Txn, run: &[&dyn Op]) -> Result<(), Error> {
        run.iter().try_for_each(|op| op.apply(txn))
    }
}

pub type Write = Box<dyn Op>;

/// The write transaction an [`Op`] works in, with the schema (for account deletion).
pub struct Txn<'a> {
    pub txn: &'a WriteTransaction,
    pub schema: &'a [&'static dyn Table],
}

/// Removes an account and everything every table holds for it.
#[derive(Debug)]
pub struct DeleteAccount(pub String);

impl Op for DeleteAccount {
    fn apply(&self, txn: &Txn) -> Result<(), Error> {
        txn.schema
            .iter()
            .try_for_each(|t| t.delete_user(txn.txn, &self.0))
    }
}

type Waiter = smol::channel::Sender<Result<(), String>>;
type Job = (Vec<Write>, Option<Waiter>);

/// Resolves when the writes it was issued for are durable.
pub struct Ticket(smol::channel::Receiver<Result<(), String>>);

impl Ticket {
    /// The outcome if the commit has happened, without waiting.
    pub fn try_result(&self) -> Option<Result<(), Error>> {
        match self.0.try_recv() {
            Ok(r) => Some(r.map_err(Error::Storage)),
            Err(smol::channel::TryRecvError::Empty) => None,
            Err(smol::channel::TryRecvError::Closed) => {
                Some(Err(Error::Storage("the storage thread has stopped".into())))
            }
        }
    }
}

pub struct Store {
    /// Taken by [`Store::close`]: redb records its allocator state only when the database is
    /// dropped, and without that record the next open walks the whole file to rebuild it (a
    /// second and tens of MiB of cache for a few GB of archive).
    db: RefCell<Option<Arc<Database>>>,
    tx: RefCell<Option<mpsc::Sender<Job>>>,
    thread: RefCell<Option<std::thread::JoinHandle<()>>>,
    #[cfg(test)]
    tables: Schema,
}

impl Store {
    /// Opens the store at `path` with every table of `crate::modules`, creating it (and
    /// writing the schema version) if absent.
    #[cfg(test)]
    pub fn open(path: &Path) -> Result<Store, Error> {
        Store::open_with_cache(path, 16 << 20, crate::modules::schema())
    }

    /// Opens the store with a page cache of `cache_bytes` (redb's default, 1 GiB, would let a
    /// large archive take the memory of a small device) and the tables of `schema`.
    pub fn open_with_cache(
        path: &Path,
        cache_bytes: usize,
        schema: Schema,
    ) -> Result<Store, Error> {
        let exists = path.exists();
        if !exists {
            // redb would create the file with the umask's mode, and the store holds the SCRAM
            // keys: it is made private before redb writes the first byte. An empty file is
            // what redb initialises a new database in.
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(crate::config::PRIVATE_FILE)
                .open(path)
                .map_err(|e| Error::io("create the data store", path, &e))?;
        }
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => Error::InUse(format!(
                    "the data store {} is in use by another hearth process; if a server runs \
                 on it, check that its admin socket admin.sock is in the data directory",
                    path.display()
                )),
                e => Error::Storage(format!(
                    "cannot open the data store {}: {e}; check the path and its permissions",
                    path.display()
                )),
            })?;
        let mut txn = db.begin_write()?;
        // As every commit (see `apply`): a crash before the writer's first leaves quick repair.
        txn.set_quick_repair(true);
        {
            let mut meta = txn.open_table(META)?;
            let found = meta.get("schema_version")?.map(|v| v.value());
            match found {
                None if exists && txn.list_tables()?.count() > 1 => {
                    return Err(Error::Storage(format!(
                        "{} has no schema version; it was not written by hearth",
                        path.display()
                    )));
                }
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION)?;
                }
                Some(v) if v > SCHEMA_VERSION => {
                    return Err(Error::Storage(format!(
                        "the data store {} was written by a newer hearth (schema {v}, this one \
                         reads {SCHEMA_VERSION}); upgrade hearth or restore a backup",
                        path.display()
                    )));
                }
                Some(_) => {}
            }
        }
        // Create every table so that read transactions never meet a missing one.
        for t in &schema {
            t.create(&txn).map_err(|e| {
                Error::Storage(format!("cannot create the table {}: {e}", t.name()))
            })?;
        }
        txn.commit()?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel::<Job>();
        let writer_db = db.clone();
        #[cfg(test)]
        let tables = schema.clone();
        let thread = std::thread::Builder::new()
            .name("hearth-store".into())
            .spawn(move || writer(&writer_db, &schema, &rx))
            .map_err(|e| Error::Storage(format!("cannot start the storage thread: {e}")))?;
        Ok(Store {
            db: RefCell::new(Some(db)),
            tx: RefCell::new(Some(tx)),
            thread: RefCell::new(Some(thread)),
            #[cfg(test)]
            tables,
        })
    }

    fn send(&self, writes: Vec<Write>, waiter: Option<Waiter>) -> Result<(), Error> {
        let tx = self.tx.borrow();
        let tx = tx
            .as_ref()
            .ok_or_else(|| Error::Storage("the store is closed".into()))?;
        tx.send((writes, waiter))
            .map_err(|_| Error::Storage("the storage thread has stopped".into()))
    }

    /// Hands `writes` to the writer; [`Store::wait`] on the ticket resolves once they are
    /// durable. Writes are committed in the order they were submitted.
    pub fn submit(&self, writes: Vec<Write>) -> Result<Ticket, Error> {
        let (tx, rx) = smol::channel::bounded(1);
        self.send(writes, Some(tx))?;
        Ok(Ticket(rx))
    }

    pub async fn wait(ticket: Ticket) -> Result<(), Error> {
        match ticket.0.recv().await {
            Ok(r) => r.map_err(Error::Storage),
            Err(_) => Err(Error::Storage("the storage thread has stopped".into())),
        }
    }

    /// Resolves once every write submitted before it is durable (writes commit in order).
    pub async fn barrier(&self) -> Result<(), Error> {
        Store::wait(self.submit(Vec::new())?).await
    }

    /// Makes `writes` durable; resolves after the group commit that contains them.
    pub async fn commit(&self, writes: Vec<Write>) -> Result<(), Error> {
        if writes.is_empty() {
            return Ok(());
        }
        Store::wait(self.submit(writes)?).await
    }

    /// [`Store::commit`] for callers outside the event loop (the command line).
    pub fn commit_blocking(&self, writes: Vec<Write>) -> Result<(), Error> {
        smol::block_on(self.commit(writes))
    }

    /// Stops the writer after it has committed everything already submitted, then closes the
    /// database so that the next open finds it shut down cleanly. Reads fail from then on.
    pub fn close(&self) {
        self.tx.borrow_mut().take();
        if let Some(t) = self.thread.borrow_mut().take() {
            let _ = t.join();
        }
        // The writer's handle went with its thread, so this one is the last.
        let db = self.db.borrow_mut().take().map(Arc::try_unwrap);
        match db {
            Some(Ok(db)) => {
                if let Err(e) = db.close() {
                    log::error!("closing the data store: {e}; the next start will check it");
                }
            }
            Some(Err(_)) => log::error!("the data store is still in use; it was not closed"),
            None => {}
        }
    }

    pub(crate) fn read(&self) -> Result<redb::ReadTransaction, Error> {
        let db = self.db.borrow();
        let db = db
            .as_ref()
            .ok_or_else(|| Error::Storage("the store is closed".into()))?;
        Ok(db.begin_read()?)
    }

    /// Rows of `user` in every table, by table name, leaving out empty tables.
    #[cfg(test)]
    pub fn rows_of(&self, user: &str) -> Vec<(String, usize)> {
        let txn = self.read().unwrap();
        self.tables
            .iter()
            .map(|t| (t.name().to_owned(), t.count_user(&txn, user).unwrap()))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

fn writer(db: &Database, schema: &[&'static dyn Table], rx: &mpsc::Receiver<Job>) {
    // On a small machine the writer's CPU bursts compete with the event loop for a core; the
    // event loop's work is what users wait for, the writer's only acknowledgements. On Linux
    // a thread has its own nice value, which `setpriority` with 0 sets for the calling thread.
    // SAFETY: setpriority takes plain integers and has no memory effects.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
    // Bounded so that one commit's latency stays bounded under a flood.
    const MAX_BATCH: usize = 4096;
    // Commits are at least this far apart: a commit costs the same CPU and fsync whether it
    // holds one message or a hundred, and at a steady trickle one per message would take a
    // core from the event loop. Nothing waits for a commit but acknowledgements and replies.
    const MIN_INTERVAL: Duration = Duration::from_millis(2);
    let mut last_commit = Instant::now() - MIN_INTERVAL;
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        let gather_until = last_commit + MIN_INTERVAL;
        while jobs.len() < MAX_BATCH {
            let next = match gather_until.checked_duration_since(Instant::now()) {
                Some(wait) if !wait.is_zero() => rx.recv_timeout(wait).ok(),
                _ => rx.try_recv().ok(),
            };
            match next {
                Some(j) => jobs.push(j),
                None => break,
            }
        }
        // Barriers alone need no transaction: everything before them is committed already.
        let empty = jobs.iter().all(|(w, _)| w.is_empty());
        let result = if empty {
            Ok(())
        } else {
            apply(db, schema, &jobs)
        }
        .map_err(|e| {
            log::error!("storage commit failed: {e}");
            e.to_string()
        });
        if !empty {
            last_commit = Instant::now();
        }
        for (_, waiter) in jobs {
            if let Some(w) = waiter {
                let _ = w.try_send(result.clone());
            }
        }
    }
}

fn apply(db: &Database, schema: &[&'static dyn Table], jobs: &[Job]) -> Result<(), Error> {
    let mut txn = db.begin_write()?;
    // Each commit also saves the allocator state, so that after a crash or a power cut the
    // store opens at once instead of being walked whole (seconds per gigabyte of archive on
    // an SD card, with the pages it read left in memory).
    txn.set_quick_repair(true);
    {
        let t = Txn { txn: &txn, schema };
        let ops: Vec<&dyn Op> = jobs.iter().flat_map(|(w, _)| w).map(|w| &**w).collect();
        // Consecutive ops of one type go in as one run (see `Op::apply_run`).
        for run in ops.chunk_by(|a, b| (*a as &dyn Any).type_id() == (*b as &dyn Any).type_id()) {
            run[0].apply_run(&t, run)?;
        }
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
pub(crate) fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("hearth.redb")).unwrap();
    (dir, store)
}

/// A store in a temporary directory with only the tables of `schema`.
#[cfg(test)]
pub(crate) fn temp_store_with(schema: Schema) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with_cache(&dir.path().join("hearth.redb"), 1 << 20, schema).unwrap();
    (dir, store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_version_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hearth.redb");
        Store::open(&path).unwrap().close();
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert("schema_version", SCHEMA_VERSION + 1)
                .unwrap();
            txn.commit().unwrap();
        }
        let err = Store::open(&path).err().unwrap().to_string();
        assert!(err.contains("newer hearth"), "{err}");
    }

    #[test]
    fn second_open_is_refused_with_advice() {
        let (dir, _store) = temp_store();
        let err = Store::open(&dir.path().join("hearth.redb"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("in use by another hearth"), "{err}");
    }
}
