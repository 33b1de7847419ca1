//! The XEP-0313 archive's storage: an archive-shaped table per user, keyed by a time-ordered
//! id, an index of it by contact, and a keyval table of archiving preferences. Every read is a
//! range scan over ids, so the newest page and one a hundred thousand messages back cost the
//! same B-tree seek.

use crate::error::Error;
use crate::storage::shapes::{Index, KeyVal, Queue};
use crate::storage::tables::META;
use crate::storage::{Op, Store, Txn, Write};
use redb::{AccessGuard, ReadableTable, TableDefinition, WriteTransaction};
use std::collections::HashMap;
use std::collections::hash_map::Entry;

/// (localpart, archive id) → (milliseconds since the epoch, the other party's JID as
/// addressed, message XML). The id is the microsecond the message was archived, bumped to stay
/// strictly increasing server-wide (see `mam/mod.rs`), so id order is time order and a time
/// range is an id range.
pub static USER_ID_TO_ARCHIVED: Queue<(u64, &str, &str)> = Queue(TableDefinition::new("archive"));
/// (localpart, the other party's bare JID, archive id) → nothing. The index that makes a
/// query `with` one contact (scrolling back through one conversation) a range scan.
pub static USER_WITH_ID_TO_NOTHING: Index<()> = Index(TableDefinition::new("archive_by_contact"));
/// Localpart → bytes of the user's archive (the XML and `with` of its rows), kept by every
/// append and expiry: what the per-account quota is checked against without reading the rows.
pub static USER_TO_ARCHIVE_BYTES: KeyVal<u64> = KeyVal(TableDefinition::new("archive_bytes"));
/// Localpart → XEP-0313 §6 archiving preferences (TOML of `prefs::Prefs`).
pub static USER_TO_ARCHIVE_PREFS: KeyVal<&str> = KeyVal(TableDefinition::new("archive_prefs"));

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Archived {
    pub id: u64,
    pub stamp_ms: u64,
    /// The other party, as the message addressed it (a full JID when it had one).
    pub with: String,
    pub xml: String,
}

/// One page of a query, in id order, and whether it reaches the end of the result set in the
/// direction it was read.
#[derive(Debug, Default)]
pub struct Page {
    pub items: Vec<Archived>,
    pub complete: bool,
    /// It stopped at `PageLimit::rows` with more to look at.
    pub cut_short: bool,
}

/// How much one page may take: items, bytes of their XML (the first item always fits), and
/// rows looked at (a filter that matches few rows must not read a whole archive in one go).
#[derive(Clone, Copy, Debug)]
pub struct PageLimit {
    pub items: usize,
    pub bytes: usize,
    pub rows: usize,
}

impl From<usize> for PageLimit {
    fn from(items: usize) -> PageLimit {
        PageLimit {
            items,
            bytes: usize::MAX,
            rows: usize::MAX,
        }
    }
}

/// (id, stamp_ms) of one end of an archive.
pub type Bound = (u64, u64);

const LAST_ID: &str = "archive_last_id";

impl Store {
    /// The largest archive id ever stored (0 for none), so ids stay increasing across restarts
    /// even if the clock steps back.
    pub fn archive_last_id(&self) -> Result<u64, Error> {
        let txn = self.read()?;
        let t = txn.open_table(META)?;
        Ok(t.get(LAST_ID)?.map_or(0, |v| v.value()))
    }

    /// Up to `limit` messages of `user` with ids in `lo..=hi` whose `with` passes `keep`,
    /// oldest first; read from the newest end when `backward` (the page is still returned in
    /// id order). Only matching rows have their XML copied. With `contact` (a bare JID) only
    /// that contact's messages are read, through the per-contact index.
    #[allow(clippy::too_many_arguments)]
    pub fn archive_page(
        &self,
        user: &str,
        contact: Option<&str>,
        lo: u64,
        hi: u64,
        backward: bool,
        limit: impl Into<PageLimit>,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<Page, Error> {
        let limit = limit.into();
        let mut page = Page::default();
        if lo > hi {
            page.complete = true;
            return Ok(page);
        }
        let txn = self.read()?;
        let t = txn.open_table(USER_ID_TO_ARCHIVED.0)?;
        let index = txn.open_table(USER_WITH_ID_TO_NOTHING.0)?;
        type Row<'a> = Result<(u64, AccessGuard<'a, (u64, &'static str, &'static str)>), Error>;
        let mut rows: Box<dyn Iterator<Item = Row>> = match contact {
            None => {
                let range = t.range((user, lo)..=(user, hi))?;
                let it = range.map(|r| -> Row {
                    let (k, v) = r?;
                    Ok((k.value().1, v))
                });
                match backward {
                    true => Box::new(it.rev()),
                    false => Box::new(it),
                }
            }
            Some(c) => {
                let range = index.range((user, c, lo)..=(user, c, hi))?;
                let t = &t;
                let it = range.map(move |r| -> Row {
                    let id = r?.0.value().2;
                    let v = t.get((user, id))?.ok_or_else(|| {
                        Error::Storage(format!("archive index of {user} names missing id {id}"))
                    })?;
                    Ok((id, v))
                });
                match backward {
                    true => Box::new(it.rev()),
                    false => Box::new(it),
                }
            }
        };
        page.complete = true;
        let (mut bytes, mut looked) = (0, 0);
        while let Some(row) = rows.next() {
            let (id, v) = row?;
            let (stamp_ms, with, xml) = v.value();
            looked += 1;
            if keep(with) {
                let full = page.items.len() == limit.items
                    || (!page.items.is_empty() && bytes + xml.len() > limit.bytes);
                if full {
                    page.complete = false;
                    break;
                }
                bytes += xml.len();
                page.items.push(Archived {
                    id,
                    stamp_ms,
                    with: with.to_owned(),
                    xml: xml.to_owned(),
                });
            }
            if looked == limit.rows {
                if rows.next().is_some() {
                    page.complete = false;
                    page.cut_short = true;
                }
                break;
            }
        }
        if backward {
            page.items.reverse();
        }
        Ok(page)
    }

    /// The messages with these ids that exist, in id order, as far as `max_bytes` of their
    /// XML go (the first always); the bool says whether some were left out for that.
    pub fn archive_get(
        &self,
        user: &str,
        ids: &[u64],
        max_bytes: usize,
    ) -> Result<(Vec<Archived>, bool), Error> {
        let txn = self.read()?;
        let t = txn.open_table(USER_ID_TO_ARCHIVED.0)?;
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let mut out = Vec::new();
        let mut bytes = 0;
        for id in ids {
            if let Some(v) = t.get((user, id))? {
                let (stamp_ms, with, xml) = v.value();
                if !out.is_empty() && bytes + xml.len() > max_bytes {
                    return Ok((out, true));
                }
                bytes += xml.len();
                out.push(Archived {
                    id,
                    stamp_ms,
                    with: with.to_owned(),
                    xml: xml.to_owned(),
                });
            }
        }
        Ok((out, false))
    }

    pub fn archive_contains(&self, user: &str, id: u64) -> Result<bool, Error> {
        let txn = self.read()?;
        let t = txn.open_table(USER_ID_TO_ARCHIVED.0)?;
        Ok(t.get((user, id))?.is_some())
    }

    /// (id, stamp) of the oldest and the newest message of `user`, if any.
    pub fn archive_bounds(&self, user: &str) -> Result<Option<(Bound, Bound)>, Error> {
        let txn = self.read()?;
        let t = txn.open_table(USER_ID_TO_ARCHIVED.0)?;
        let mut range = t.range((user, 0)..=(user, u64::MAX))?;
        let first = match range.next() {
            Some(r) => r?,
            None => return Ok(None),
        };
        let first = (first.0.value().1, first.1.value().0);
        let last = match range.next_back() {
            Some(r) => {
                let r = r?;
                (r.0.value().1, r.1.value().0)
            }
            None => first,
        };
        Ok(Some((first, last)))
    }

    /// Bytes of `user`'s archive: the figure kept, or for an archive written before it was
    /// kept, the sum over its rows (once: the next append stores it).
    pub fn archive_bytes(&self, user: &str) -> Result<u64, Error> {
        let txn = self.read()?;
        if let Some(v) = txn.open_table(USER_TO_ARCHIVE_BYTES.0)?.get(user)? {
            return Ok(v.value());
        }
        sum_rows(&txn.open_table(USER_ID_TO_ARCHIVED.0)?, user)
    }

    pub fn archive_prefs(&self, user: &str) -> Result<Option<String>, Error> {
        USER_TO_ARCHIVE_PREFS.get(self, user)
    }
}

/// One message for `user`'s archive; `id` is new and larger than any stored.
#[derive(Debug)]
pub struct Append {
    pub user: String,
    pub id: u64,
    pub stamp_ms: u64,
    pub with: String,
    pub xml: String,
}

impl Op for Append {
    fn apply(&self, txn: &Txn) -> Result<(), Error> {
        self.apply_run(txn, &[self])
    }

    /// Opens each table once for the run: a group commit carries many appends, and the
    /// per-message cost is what bounds throughput with the archive on.
    fn apply_run(&self, txn: &Txn, run: &[&dyn Op]) -> Result<(), Error> {
        let txn = txn.txn;
        let mut rows = txn.open_table(USER_ID_TO_ARCHIVED.0)?;
        let mut index = txn.open_table(USER_WITH_ID_TO_NOTHING.0)?;
        let mut sizes = txn.open_table(USER_TO_ARCHIVE_BYTES.0)?;
        let mut totals: HashMap<&str, u64> = HashMap::new();
        let mut highest = 0;
        for op in run {
            // A run holds ops of one type only (see `storage::Op::apply_run`).
            let Some(a) = (*op as &dyn std::any::Any).downcast_ref::<Append>() else {
                continue;
            };
            let (user, with) = (a.user.as_str(), a.with.as_str());
            let total = match totals.entry(user) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    let kept = sizes.get(user)?.map(|v| v.value());
                    let bytes = match kept {
                        Some(b) => b,
                        None => sum_rows(&rows, user)?,
                    };
                    e.insert(bytes)
                }
            };
            *total += row_bytes(with, &a.xml);
            rows.insert((user, a.id), (a.stamp_ms, with, a.xml.as_str()))?;
            index.insert((user, bare(with), a.id), ())?;
            highest = highest.max(a.id);
        }
        for (user, bytes) in totals {
            sizes.insert(user, bytes)?;
        }
        let mut meta = txn.open_table(META)?;
        let last = meta.get(LAST_ID)?.map_or(0, |v| v.value());
        if highest > last {
            meta.insert(LAST_ID, highest)?;
        }
        Ok(())
    }
}

/// Deletes archived messages older than `before_ms`, at most `max_rows` of them, so that one
/// expiry never holds the writer (and everyone's commits) for long.
#[derive(Clone, Debug)]
pub struct Expire {
    pub before_ms: u64,
    pub max_rows: usize,
}

impl Op for Expire {
    fn apply(&self, txn: &Txn) -> Result<(), Error> {
        expire(txn.txn, self.before_ms, self.max_rows)
    }
}

/// Replaces `user`'s archiving preferences (TOML of `prefs::Prefs`).
pub fn put_prefs(user: &str, prefs: String) -> Write {
    USER_TO_ARCHIVE_PREFS.put(user, prefs)
}

/// The bare part of a normalised JID: everything before the first '/'.
fn bare(jid: &str) -> &str {
    jid.split('/').next().unwrap_or(jid)
}

/// Ids are archive times in microseconds (never earlier than the real time), so "older than
/// `before_ms`" is the id range below `before_ms * 1000` of each user.
fn expire(txn: &WriteTransaction, before_ms: u64, max_rows: usize) -> Result<(), Error> {
    let cut = before_ms.saturating_mul(1000);
    let mut t = txn.open_table(USER_ID_TO_ARCHIVED.0)?;
    let mut doomed: Vec<(String, u64, String, u64)> = Vec::new();
    let mut next_user = t.first()?.map(|(k, _)| k.value().0.to_owned());
    while let Some(user) = next_user.take() {
        if doomed.len() >= max_rows {
            break;
        }
        let u = user.as_str();
        for row in t.range((u, 0)..(u, cut))?.take(max_rows - doomed.len()) {
            let (k, v) = row?;
            let (_, with, xml) = v.value();
            let size = row_bytes(with, xml);
            doomed.push((user.clone(), k.value().1, bare(with).to_owned(), size));
        }
        // The next user's first row: the first key past every key of this user.
        for row in t.range((u, u64::MAX)..)? {
            let (k, _) = row?;
            let k = k.value();
            if k.0 != u {
                next_user = Some(k.0.to_owned());
                break;
            }
        }
    }
    let mut index = txn.open_table(USER_WITH_ID_TO_NOTHING.0)?;
    let mut freed: HashMap<String, u64> = HashMap::new();
    for (user, id, with, size) in doomed {
        t.remove((user.as_str(), id))?;
        index.remove((user.as_str(), with.as_str(), id))?;
        *freed.entry(user).or_default() += size;
    }
    // An archive whose figure is not kept yet gets it from its rows later, as they are then.
    let mut sizes = txn.open_table(USER_TO_ARCHIVE_BYTES.0)?;
    for (user, size) in freed {
        let kept = sizes.get(user.as_str())?.map(|v| v.value());
        if let Some(bytes) = kept {
            sizes.insert(user.as_str(), bytes.saturating_sub(size))?;
        }
    }
    Ok(())
}

/// What one archived row counts for in its user's quota.
fn row_bytes(with: &str, xml: &str) -> u64 {
    (with.len() + xml.len()) as u64
}

/// The bytes of every row of `user`, for an archive whose figure is not kept yet.
fn sum_rows(
    t: &impl ReadableTable<(&'static str, u64), (u64, &'static str, &'static str)>,
    user: &str,
) -> Result<u64, Error> {
    let mut bytes = 0;
    for row in t.range((user, 0)..=(user, u64::MAX))? {
        let (_, v) = row?;
        let (_, with, xml) = v.value();
        bytes += row_bytes(with, xml);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::{Append, Expire};
    use crate::storage::{Store, Write, accounts, temp_store};

    fn put(user: &str, id: u64, with: &str) -> Write {
        Box::new(Append {
            user: user.into(),
            id,
            stamp_ms: id / 1000,
            with: with.into(),
            xml: format!("<message>{id}</message>"),
        })
    }

    fn ids(p: &super::Page) -> Vec<u64> {
        p.items.iter().map(|a| a.id).collect()
    }

    /// 600 messages for a (ids 1000, 2000, ...), every third with carol, and a few for b.
    fn filled() -> (tempfile::TempDir, Store) {
        let (dir, store) = temp_store();
        let mut w: Vec<Write> = (1..=600)
            .map(|i| {
                let with = if i % 3 == 0 { "carol@x/r" } else { "bob@x" };
                put("a", i * 1000, with)
            })
            .collect();
        w.push(put("b", 5, "a@x"));
        w.push(put("aa", 7, "a@x"));
        store.commit_blocking(w).unwrap();
        (dir, store)
    }

    #[test]
    fn pages_forward_and_backward_over_600() {
        let (_dir, store) = filled();
        let all = |_: &str| true;
        // Forward with an exclusive lower bound, as RSM `after` does.
        let mut got = Vec::new();
        let mut lo = 0;
        loop {
            let p = store
                .archive_page("a", None, lo, u64::MAX, false, 50, &all)
                .unwrap();
            got.extend(ids(&p));
            if p.complete {
                break;
            }
            lo = p.items.last().unwrap().id + 1;
        }
        assert_eq!(got, (1..=600).map(|i| i * 1000).collect::<Vec<_>>());
        // Backward, as RSM `before` does.
        let mut got = Vec::new();
        let mut hi = u64::MAX;
        loop {
            let p = store
                .archive_page("a", None, 0, hi, true, 70, &all)
                .unwrap();
            let page = ids(&p);
            assert!(
                page.windows(2).all(|w| w[0] < w[1]),
                "pages are in id order"
            );
            got.splice(0..0, page);
            if p.complete {
                break;
            }
            hi = p.items.first().unwrap().id - 1;
        }
        assert_eq!(got.len(), 600);
        assert_eq!(got[0], 1000);
        // Exactly a full last page is complete only when nothing follows.
        let p = store
            .archive_page("a", None, 551_000, u64::MAX, false, 50, &all)
            .unwrap();
        assert_eq!((p.items.len(), p.complete), (50, true));
        let p = store
            .archive_page("a", None, 550_000, u64::MAX, false, 50, &all)
            .unwrap();
        assert_eq!((p.items.len(), p.complete), (50, false));
    }

    #[test]
    fn filters_and_other_users() {
        let (_dir, store) = filled();
        let carol = |w: &str| w.starts_with("carol@x");
        let p = store
            .archive_page("a", None, 0, u64::MAX, false, 500, &carol)
            .unwrap();
        assert_eq!(p.items.len(), 200);
        assert!(p.complete);
        assert!(p.items.iter().all(|a| a.with == "carol@x/r"));
        // The same through the per-contact index, in both directions and in pages.
        let all = |_: &str| true;
        let indexed = store
            .archive_page("a", Some("carol@x"), 0, u64::MAX, false, 500, &all)
            .unwrap();
        assert_eq!(ids(&indexed), ids(&p));
        let last = store
            .archive_page("a", Some("carol@x"), 0, u64::MAX, true, 2, &all)
            .unwrap();
        assert_eq!(ids(&last), vec![597_000, 600_000]);
        assert!(!last.complete);
        let none = store
            .archive_page("a", Some("dave@x"), 0, u64::MAX, false, 5, &all)
            .unwrap();
        assert!(none.items.is_empty() && none.complete);
        let p = store
            .archive_page("a", None, 10_000, 20_000, false, 500, &|_| true)
            .unwrap();
        assert_eq!(ids(&p), (10..=20).map(|i| i * 1000).collect::<Vec<_>>());
        let p = store
            .archive_page("b", None, 0, u64::MAX, false, 10, &|_| true)
            .unwrap();
        assert_eq!(ids(&p), vec![5]);
        let (got, _) = store
            .archive_get("a", &[3000, 999, 1000, 3000], usize::MAX)
            .unwrap();
        assert_eq!(
            got.iter().map(|a| a.id).collect::<Vec<_>>(),
            vec![1000, 3000]
        );
        assert_eq!(got[0].xml, "<message>1000</message>");
        assert!(store.archive_contains("a", 2000).unwrap());
        assert!(!store.archive_contains("a", 2001).unwrap());
        assert_eq!(
            store.archive_bounds("a").unwrap(),
            Some(((1000, 1), (600_000, 600)))
        );
        assert_eq!(store.archive_bounds("nobody").unwrap(), None);
    }

    #[test]
    fn survives_reopen_and_expires() {
        let (dir, store) = filled();
        assert_eq!(store.archive_last_id().unwrap(), 600_000);
        store.close();
        drop(store);
        let store = Store::open(&dir.path().join("hearth.redb")).unwrap();
        assert_eq!(store.archive_last_id().unwrap(), 600_000);
        let p = store
            .archive_page("a", None, 0, u64::MAX, true, 1, &|_| true)
            .unwrap();
        assert_eq!(ids(&p), vec![600_000]);
        // Older than 100 ms: a's ids below 100_000 (99 rows) and b's and aa's single rows,
        // in batches of 60 so that the limit is exercised.
        let expire = Expire {
            before_ms: 100,
            max_rows: 60,
        };
        for _ in 0..3 {
            store
                .commit_blocking(vec![Box::new(expire.clone())])
                .unwrap();
        }
        let p = store
            .archive_page("a", None, 0, u64::MAX, false, 1000, &|_| true)
            .unwrap();
        assert_eq!(p.items.len(), 501);
        assert_eq!(p.items[0].id, 100_000);
        // The index lost the expired rows too (it would name missing ids otherwise).
        let all = |_: &str| true;
        let carol = store
            .archive_page("a", Some("carol@x"), 0, u64::MAX, false, 1000, &all)
            .unwrap();
        assert_eq!(carol.items.len(), 167);
        assert_eq!(store.archive_bounds("b").unwrap(), None);
        assert_eq!(store.archive_bounds("aa").unwrap(), None);
        store.commit_blocking(vec![accounts::delete("a")]).unwrap();
        assert_eq!(store.archive_bounds("a").unwrap(), None);
        let gone = store
            .archive_page("a", Some("bob@x"), 0, u64::MAX, false, 10, &all)
            .unwrap();
        assert!(gone.items.is_empty());
    }

    /// The bytes of `user`'s rows, counted the slow way.
    fn rows_bytes(store: &Store, user: &str) -> u64 {
        let txn = store.read().unwrap();
        super::sum_rows(&txn.open_table(super::USER_ID_TO_ARCHIVED.0).unwrap(), user).unwrap()
    }

    #[test]
    fn the_archive_size_is_kept_by_appends_and_expiry() {
        let (_dir, store) = filled();
        let a = store.archive_bytes("a").unwrap();
        assert!(a > 0);
        assert_eq!(a, rows_bytes(&store, "a"));
        assert_eq!(store.archive_bytes("b").unwrap(), rows_bytes(&store, "b"));
        let expire = Expire {
            before_ms: 100,
            max_rows: 1000,
        };
        store.commit_blocking(vec![Box::new(expire)]).unwrap();
        let after = store.archive_bytes("a").unwrap();
        assert!(after < a);
        assert_eq!(after, rows_bytes(&store, "a"));
        // An archive from before the figure was kept: counted from its rows, then kept.
        #[derive(Debug)]
        struct Forget;
        impl crate::storage::Op for Forget {
            fn apply(&self, txn: &crate::storage::Txn) -> Result<(), crate::error::Error> {
                txn.txn
                    .open_table(super::USER_TO_ARCHIVE_BYTES.0)?
                    .remove("a")?;
                Ok(())
            }
        }
        store.commit_blocking(vec![Box::new(Forget)]).unwrap();
        assert_eq!(store.archive_bytes("a").unwrap(), after);
        store
            .commit_blocking(vec![put("a", 900_000_000, "bob@x")])
            .unwrap();
        assert_eq!(store.archive_bytes("a").unwrap(), rows_bytes(&store, "a"));
        store.commit_blocking(vec![accounts::delete("a")]).unwrap();
        assert_eq!(store.archive_bytes("a").unwrap(), 0);
    }

    #[test]
    fn prefs_are_kept() {
        let (_dir, store) = temp_store();
        assert_eq!(store.archive_prefs("a").unwrap(), None);
        store
            .commit_blocking(vec![super::put_prefs("a", "default = \"never\"".into())])
            .unwrap();
        assert_eq!(
            store.archive_prefs("a").unwrap().as_deref(),
            Some("default = \"never\"")
        );
    }
}
