//! The store: one redb file. Reads run on the event loop (MVCC snapshots, no fsync); writes
//! are values sent to one writer thread, which group-commits whatever is waiting in a single
//! durable transaction and then answers every waiter. One fsync serves everyone, and a slow
//! disk never stalls the event loop.

pub mod accounts;
pub mod archive;
pub mod offline;
pub mod roster;
pub mod tables;

use crate::error::Error;
use redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};
use std::cell::RefCell;
use std::path::Path;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};
use tables::*;

/// One durable change. The writer applies a batch of these in one transaction.
#[derive(Clone, Debug)]
pub enum Write {
    CredentialsPut {
        user: String,
        record: String,
    },
    /// Removes the account and everything stored for it.
    AccountDelete {
        user: String,
    },
    RosterPut {
        user: String,
        contact: String,
        item: String,
        ver: u64,
    },
    RosterDelete {
        user: String,
        contact: String,
        ver: u64,
    },
    OfflinePush {
        user: String,
        stamp_ms: u64,
        xml: String,
    },
    /// Deletes the user's offline messages with a sequence number up to `upto`, inclusive.
    OfflineDelete {
        user: String,
        upto: u64,
    },
    /// One message in `user`'s XEP-0313 archive; `id` is new and larger than any stored.
    ArchiveAppend {
        user: String,
        id: u64,
        stamp_ms: u64,
        with: String,
        xml: String,
    },
    /// Deletes archived messages older than `before_ms`, at most `max_rows` of them, so that
    /// one expiry never holds the writer (and everyone's commits) for long.
    ArchiveExpire {
        before_ms: u64,
        max_rows: usize,
    },
    /// Replaces `user`'s archiving preferences (TOML of `archive::Prefs`).
    ArchivePrefsPut {
        user: String,
        prefs: String,
    },
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
    db: Arc<Database>,
    tx: RefCell<Option<mpsc::Sender<Job>>>,
    thread: RefCell<Option<std::thread::JoinHandle<()>>>,
}

impl Store {
    /// Opens the store at `path`, creating it (and writing the schema version) if absent.
    #[cfg(test)]
    pub fn open(path: &Path) -> Result<Store, Error> {
        Store::open_with_cache(path, 16 << 20)
    }

    /// Opens the store with a page cache of `cache_bytes` (redb's default, 1 GiB, would let a
    /// large archive take the memory of a small device).
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<Store, Error> {
        let exists = path.exists();
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
        let txn = db.begin_write()?;
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
            // Create every table so that read transactions never meet a missing one.
            txn.open_table(USER_TO_CREDENTIALS)?;
            txn.open_table(USER_CONTACT_TO_ROSTER_ITEM)?;
            txn.open_table(USER_TO_ROSTER_VERSION)?;
            txn.open_table(USER_SEQ_TO_OFFLINE)?;
            txn.open_table(USER_ID_TO_ARCHIVED)?;
            txn.open_table(USER_WITH_ID_TO_NOTHING)?;
            txn.open_table(USER_TO_ARCHIVE_PREFS)?;
        }
        txn.commit()?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel::<Job>();
        let writer_db = db.clone();
        let thread = std::thread::Builder::new()
            .name("hearth-store".into())
            .spawn(move || writer(&writer_db, &rx))
            .map_err(|e| Error::Storage(format!("cannot start the storage thread: {e}")))?;
        Ok(Store {
            db,
            tx: RefCell::new(Some(tx)),
            thread: RefCell::new(Some(thread)),
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

    /// Stops the writer after it has committed everything already submitted.
    pub fn close(&self) {
        self.tx.borrow_mut().take();
        if let Some(t) = self.thread.borrow_mut().take() {
            let _ = t.join();
        }
    }

    pub(crate) fn read(&self) -> Result<redb::ReadTransaction, Error> {
        Ok(self.db.begin_read()?)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

fn writer(db: &Database, rx: &mpsc::Receiver<Job>) {
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
        let result = if empty { Ok(()) } else { apply(db, &jobs) }.map_err(|e| {
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

impl Write {
    /// The archive row of an `ArchiveAppend`, borrowed, for appending in runs.
    fn archive_entry(&self) -> Option<archive::Entry<'_>> {
        match self {
            Write::ArchiveAppend {
                user,
                id,
                stamp_ms,
                with,
                xml,
            } => Some((user, *id, *stamp_ms, with, xml)),
            _ => None,
        }
    }
}

fn apply(db: &Database, jobs: &[Job]) -> Result<(), Error> {
    let txn = db.begin_write()?;
    // Consecutive archive appends go in as one run; everything else in order.
    let mut run: Vec<archive::Entry<'_>> = Vec::new();
    for w in jobs.iter().flat_map(|(writes, _)| writes) {
        match w.archive_entry() {
            Some(entry) => run.push(entry),
            None => {
                if !run.is_empty() {
                    archive::append(&txn, &run)?;
                    run.clear();
                }
                apply_one(&txn, w)?;
            }
        }
    }
    if !run.is_empty() {
        archive::append(&txn, &run)?;
    }
    txn.commit()?;
    Ok(())
}

fn apply_one(txn: &WriteTransaction, w: &Write) -> Result<(), Error> {
    match w {
        Write::CredentialsPut { user, record } => {
            txn.open_table(USER_TO_CREDENTIALS)?
                .insert(user.as_str(), record.as_str())?;
        }
        Write::AccountDelete { user } => {
            let u = user.as_str();
            txn.open_table(USER_TO_CREDENTIALS)?.remove(u)?;
            txn.open_table(USER_TO_ROSTER_VERSION)?.remove(u)?;
            txn.open_table(USER_CONTACT_TO_ROSTER_ITEM)?
                .retain_in((u, "")..(u, "\u{10ffff}"), |_, _| false)?;
            txn.open_table(USER_SEQ_TO_OFFLINE)?
                .retain_in((u, 0)..=(u, u64::MAX), |_, _| false)?;
            txn.open_table(USER_ID_TO_ARCHIVED)?
                .retain_in((u, 0)..=(u, u64::MAX), |_, _| false)?;
            txn.open_table(USER_WITH_ID_TO_NOTHING)?
                .retain_in((u, "", 0)..(u, "\u{10ffff}", 0), |_, _| false)?;
            txn.open_table(USER_TO_ARCHIVE_PREFS)?.remove(u)?;
        }
        Write::RosterPut {
            user,
            contact,
            item,
            ver,
        } => {
            txn.open_table(USER_CONTACT_TO_ROSTER_ITEM)?
                .insert((user.as_str(), contact.as_str()), item.as_str())?;
            txn.open_table(USER_TO_ROSTER_VERSION)?
                .insert(user.as_str(), ver)?;
        }
        Write::RosterDelete { user, contact, ver } => {
            txn.open_table(USER_CONTACT_TO_ROSTER_ITEM)?
                .remove((user.as_str(), contact.as_str()))?;
            txn.open_table(USER_TO_ROSTER_VERSION)?
                .insert(user.as_str(), ver)?;
        }
        Write::OfflinePush {
            user,
            stamp_ms,
            xml,
        } => {
            let u = user.as_str();
            let mut t = txn.open_table(USER_SEQ_TO_OFFLINE)?;
            let next = match t.range((u, 0)..=(u, u64::MAX))?.next_back() {
                Some(r) => r?.0.value().1 + 1,
                None => 1,
            };
            t.insert((u, next), (*stamp_ms, xml.as_str()))?;
        }
        Write::OfflineDelete { user, upto } => {
            let u = user.as_str();
            txn.open_table(USER_SEQ_TO_OFFLINE)?
                .retain_in((u, 0)..=(u, *upto), |_, _| false)?;
        }
        Write::ArchiveAppend { .. } => archive::append(txn, w.archive_entry().as_slice())?,
        Write::ArchiveExpire {
            before_ms,
            max_rows,
        } => archive::expire(txn, *before_ms, *max_rows)?,
        Write::ArchivePrefsPut { user, prefs } => {
            txn.open_table(USER_TO_ARCHIVE_PREFS)?
                .insert(user.as_str(), prefs.as_str())?;
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("hearth.redb")).unwrap();
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
