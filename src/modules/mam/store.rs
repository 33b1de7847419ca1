//! The XEP-0313 archive's storage: an archive-shaped table keyed by owner and a time-ordered
//! id, an optional index of it by the other party, a keyval table of each owner's bytes, and a
//! keyval table of archiving preferences. Every read is a range scan over ids, so the newest
//! page and one a hundred thousand messages back cost the same B-tree seek.
//!
//! [`Archive`] is that shape, once per kind of owner: each account's own archive
//! ([`USER_ARCHIVE`]), and each chat room's (the room service declares its own).

use crate::error::Error;
use crate::storage::shapes::{Index, KeyVal, Queue};
use crate::storage::tables::META;
use crate::storage::{Op, Store, Txn, Write};
use redb::{AccessGuard, ReadableTable, TableDefinition, WriteTransaction};
use std::collections::HashMap;
use std::collections::hash_map::Entry;

/// (owner, archive id) → (milliseconds since the epoch, the other party's JID, message XML).
pub type Rows = TableDefinition<'static, (&'static str, u64), (u64, &'static str, &'static str)>;
/// (owner, the other party's bare JID, archive id) → nothing.
pub type ByWith = TableDefinition<'static, (&'static str, &'static str, u64), ()>;
/// Owner → bytes of the owner's archive (the XML and `with` of its rows).
pub type Sizes = TableDefinition<'static, &'static str, u64>;

const USER_ROWS: Rows = TableDefinition::new("archive");
const USER_BY_WITH: ByWith = TableDefinition::new("archive_by_contact");
const USER_SIZES: Sizes = TableDefinition::new("archive_bytes");

/// (localpart, archive id) → (milliseconds since the epoch, the other party's JID as
/// addressed, message XML). The id is the microsecond the message was archived, bumped to stay
/// strictly increasing server-wide (see `mam/serve.rs`), so id order is time order and a time
/// range is an id range.
pub static USER_ID_TO_ARCHIVED: Queue<(u64, &str, &str)> = Queue(USER_ROWS);
/// (localpart, the other party's bare JID, archive id) → nothing. The index that makes a
/// query `with` one contact (scrolling back through one conversation) a range scan.
pub static USER_WITH_ID_TO_NOTHING: Index<()> = Index(USER_BY_WITH);
/// Localpart → bytes of the user's archive (the XML and `with` of its rows), kept by every
/// append and expiry: what the per-account quota is checked against without reading the rows.
pub static USER_TO_ARCHIVE_BYTES: KeyVal<u64> = KeyVal(USER_SIZES);
/// Localpart → XEP-0313 §6 archiving preferences (TOML of `prefs::Prefs`).
pub static USER_TO_ARCHIVE_PREFS: KeyVal<&str> = KeyVal(TableDefinition::new("archive_prefs"));

/// The accounts' archives.
pub static USER_ARCHIVE: Archive =
    Archive::new(USER_ROWS, Some(USER_BY_WITH), USER_SIZES, "archive_last_id");

/// One kind of archive: its rows, its index by the other party (if it keeps one), the bytes
/// of each owner's rows (kept by every append, expiry and clearing, so that a quota is checked
/// without reading the rows), and the key in the store's meta table of the highest id it ever
/// stored. The tables themselves are declared (and listed in the module registry) by the
/// module that owns them.
pub struct Archive {
    rows: Rows,
    by_with: Option<ByWith>,
    sizes: Sizes,
    last_id_key: &'static str,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(redb::TableHandle::name(&self.rows))
    }
}

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

impl Archive {
    pub const fn new(
        rows: Rows,
        by_with: Option<ByWith>,
        sizes: Sizes,
        last_id_key: &'static str,
    ) -> Archive {
        Archive {
            rows,
            by_with,
            sizes,
            last_id_key,
        }
    }

    /// Whether the archive keeps an index by the other party.
    pub fn indexed(&self) -> bool {
        self.by_with.is_some()
    }

    /// The largest id this archive ever stored (0 for none), so ids stay increasing across
    /// restarts even if the clock steps back.
    pub fn last_id(&self, store: &Store) -> Result<u64, Error> {
        let txn = store.read()?;
        let t = txn.open_table(META)?;
        Ok(t.get(self.last_id_key)?.map_or(0, |v| v.value()))
    }

    /// Up to `limit` messages of `owner` with ids in `lo..=hi` whose `with` passes `keep`,
    /// oldest first; read from the newest end when `backward` (the page is still returned in
    /// id order). Only matching rows have their XML copied. With `contact` (a bare JID) only
    /// that contact's messages are read, through the index when the archive keeps one (else
    /// `keep` must do the filtering).
    #[allow(clippy::too_many_arguments)]
    pub fn page(
        &self,
        store: &Store,
        owner: &str,
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
        let txn = store.read()?;
        let t = txn.open_table(self.rows)?;
        type Row<'a> = Result<(u64, AccessGuard<'a, (u64, &'static str, &'static str)>), Error>;
        let mut rows: Box<dyn Iterator<Item = Row>> = match (contact, self.by_with) {
            (Some(c), Some(by_with)) => {
                let index = txn.open_table(by_with)?;
                let range = index.range((owner, c, lo)..=(owner, c, hi))?;
                let t = &t;
                let it = range.map(move |r| -> Row {
                    let id = r?.0.value().2;
                    let v = t.get((owner, id))?.ok_or_else(|| {
                        Error::Storage(format!("archive index of {owner} names missing id {id}"))
                    })?;
                    Ok((id, v))
                });
                match backward {
                    true => Box::new(it.rev()),
                    false => Box::new(it),
                }
            }
            _ => {
                let range = t.range((owner, lo)..=(owner, hi))?;
                let it = range.map(|r| -> Row {
                    let (k, v) = r?;
                    Ok((k.value().1, v))
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

    /// The messages of `owner` with these ids that exist, in id order, as far as `max_bytes`
    /// of their XML go (the first always); the bool says whether some were left out for that.
    pub fn get(
        &self,
        store: &Store,
        owner: &str,
        ids: &[u64],
        max_bytes: usize,
    ) -> Result<(Vec<Archived>, bool), Error> {
        let txn = store.read()?;
        let t = txn.open_table(self.rows)?;
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let mut out = Vec::new();
        let mut bytes = 0;
        for id in ids {
            if let Some(v) = t.get((owner, id))? {
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

    pub fn contains(&self, store: &Store, owner: &str, id: u64) -> Result<bool, Error> {
        let txn = store.read()?;
        let t = txn.open_table(self.rows)?;
        Ok(t.get((owner, id))?.is_some())
    }

    /// (id, stamp) of the oldest and the newest message of `owner`, if any.
    pub fn bounds(&self, store: &Store, owner: &str) -> Result<Option<(Bound, Bound)>, Error> {
        let txn = store.read()?;
        let t = txn.open_table(self.rows)?;
        let mut range = t.range((owner, 0)..=(owner, u64::MAX))?;
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

    /// Bytes of `owner`'s archive: the figure kept, or for an archive written before it was
    /// kept, the sum over its rows (once: the next append stores it).
    pub fn bytes(&self, store: &Store, owner: &str) -> Result<u64, Error> {
        let txn = store.read()?;
        if let Some(v) = txn.open_table(self.sizes)?.get(owner)? {
            return Ok(v.value());
        }
        sum_rows(&txn.open_table(self.rows)?, owner)
    }

    /// One message for `owner`'s archive; `id` must be new and larger than any stored.
    pub fn append(&'static self, owner: &str, id: u64, with: &str, xml: String) -> Write {
        Box::new(Append {
            archive: self,
            owner: owner.to_owned(),
            id,
            stamp_ms: id / 1000,
            with: with.to_owned(),
            xml,
        })
    }

    /// Deletes messages older than `before_ms`, at most `max_rows` of them, so that one
    /// expiry never holds the writer (and everyone's commits) for long.
    pub fn expire(&'static self, before_ms: u64, max_rows: usize) -> Write {
        Box::new(Expire {
            archive: self,
            before_ms,
            max_rows,
        })
    }

    /// Deletes every message of `owner` (a chat room that is destroyed).
    pub fn clear(&'static self, owner: &str) -> Write {
        Box::new(Clear {
            archive: self,
            owners: Owners::One(owner.to_owned()),
        })
    }

    /// Deletes the messages of every owner but `keep` (what rooms that went away while the
    /// server was down left behind).
    pub fn keep_only(&'static self, keep: Vec<String>) -> Write {
        Box::new(Clear {
            archive: self,
            owners: Owners::AllBut(keep),
        })
    }

    /// Every owner with at least one message, in key order.
    #[cfg(test)]
    pub fn owners(&self, store: &Store) -> Result<Vec<String>, Error> {
        owners(&store.read()?.open_table(self.rows)?)
    }

    /// The bytes of `owner`'s rows, counted the slow way.
    #[cfg(test)]
    pub fn rows_bytes(&self, store: &Store, owner: &str) -> u64 {
        let txn = store.read().unwrap();
        sum_rows(&txn.open_table(self.rows).unwrap(), owner).unwrap()
    }

    /// Whether a figure of `owner`'s bytes is kept.
    #[cfg(test)]
    pub fn keeps_bytes_of(&self, store: &Store, owner: &str) -> bool {
        let txn = store.read().unwrap();
        let t = txn.open_table(self.sizes).unwrap();
        t.get(owner).unwrap().is_some()
    }
}

/// The distinct owners of an archive's rows: one seek per owner, not one read per row.
fn owners(
    t: &impl ReadableTable<(&'static str, u64), (u64, &'static str, &'static str)>,
) -> Result<Vec<String>, Error> {
    let mut out: Vec<String> = Vec::new();
    let mut next = t.first()?.map(|(k, _)| k.value().0.to_owned());
    while let Some(owner) = next.take() {
        let o = owner.as_str();
        for row in t.range((o, u64::MAX)..)? {
            let (k, _) = row?;
            if k.value().0 != o {
                next = Some(k.value().0.to_owned());
                break;
            }
        }
        out.push(owner);
    }
    Ok(out)
}

impl Store {
    pub fn archive_prefs(&self, user: &str) -> Result<Option<String>, Error> {
        USER_TO_ARCHIVE_PREFS.get(self, user)
    }
}

/// One message for an archive (see [`Archive::append`]).
#[derive(Debug)]
struct Append {
    archive: &'static Archive,
    owner: String,
    id: u64,
    stamp_ms: u64,
    with: String,
    xml: String,
}

impl Op for Append {
    fn apply(&self, txn: &Txn) -> Result<(), Error> {
        self.apply_run(txn, &[self])
    }

    /// Opens each table once per archive for the run: a group commit carries many appends,
    /// and the per-message cost is what bounds throughput with the archive on.
    fn apply_run(&self, txn: &Txn, run: &[&dyn Op]) -> Result<(), Error> {
        // A run holds ops of one type only (see `storage::Op::apply_run`).
        let appends: Vec<&Append> = run
            .iter()
            .filter_map(|op| (*op as &dyn std::any::Any).downcast_ref::<Append>())
            .collect();
        let mut archives: Vec<&'static Archive> = Vec::new();
        for a in &appends {
            if !archives.iter().any(|k| std::ptr::eq(*k, a.archive)) {
                archives.push(a.archive);
            }
        }
        for archive in archives {
            let mut rows = txn.txn.open_table(archive.rows)?;
            let mut index = archive.by_with.map(|t| txn.txn.open_table(t)).transpose()?;
            let mut sizes = txn.txn.open_table(archive.sizes)?;
            let mut totals: HashMap<&str, u64> = HashMap::new();
            let mut highest = 0;
            for a in appends.iter().filter(|a| std::ptr::eq(a.archive, archive)) {
                let (owner, with) = (a.owner.as_str(), a.with.as_str());
                let total = match totals.entry(owner) {
                    Entry::Occupied(e) => e.into_mut(),
                    Entry::Vacant(e) => {
                        let kept = sizes.get(owner)?.map(|v| v.value());
                        let bytes = match kept {
                            Some(b) => b,
                            None => sum_rows(&rows, owner)?,
                        };
                        e.insert(bytes)
                    }
                };
                *total += row_bytes(with, &a.xml);
                rows.insert((owner, a.id), (a.stamp_ms, with, a.xml.as_str()))?;
                if let Some(index) = &mut index {
                    index.insert((owner, bare(with), a.id), ())?;
                }
                highest = highest.max(a.id);
            }
            for (owner, bytes) in totals {
                sizes.insert(owner, bytes)?;
            }
            let mut meta = txn.txn.open_table(META)?;
            let last = meta.get(archive.last_id_key)?.map_or(0, |v| v.value());
            if highest > last {
                meta.insert(archive.last_id_key, highest)?;
            }
        }
        Ok(())
    }
}

/// Deletes archived messages older than `before_ms` (see [`Archive::expire`]).
#[derive(Debug)]
struct Expire {
    archive: &'static Archive,
    before_ms: u64,
    max_rows: usize,
}

impl Op for Expire {
    fn apply(&self, txn: &Txn) -> Result<(), Error> {
        expire(self.archive, txn.txn, self.before_ms, self.max_rows)
    }
}

#[derive(Debug)]
enum Owners {
    One(String),
    AllBut(Vec<String>),
}

/// Deletes whole owners' messages (see [`Archive::clear`] and [`Archive::keep_only`]), and
/// their figure of bytes with them.
#[derive(Debug)]
struct Clear {
    archive: &'static Archive,
    owners: Owners,
}

impl Op for Clear {
    fn apply(&self, txn: &Txn) -> Result<(), Error> {
        let mut sizes = txn.txn.open_table(self.archive.sizes)?;
        let doomed = match &self.owners {
            Owners::One(o) => vec![o.clone()],
            Owners::AllBut(keep) => {
                // A figure can outlive its rows (all of them expired): it goes too.
                let mut all = owners(&txn.txn.open_table(self.archive.rows)?)?;
                for row in sizes.iter()? {
                    let owner = row?.0.value().to_owned();
                    if !all.contains(&owner) {
                        all.push(owner);
                    }
                }
                all.retain(|o| !keep.contains(o));
                all
            }
        };
        let mut rows = txn.txn.open_table(self.archive.rows)?;
        let mut index = self
            .archive
            .by_with
            .map(|t| txn.txn.open_table(t))
            .transpose()?;
        for o in &doomed {
            let o = o.as_str();
            rows.retain_in((o, 0)..=(o, u64::MAX), |_, _| false)?;
            if let Some(index) = &mut index {
                index.retain_in((o, "", 0)..(o, "\u{10ffff}", 0), |_, _| false)?;
            }
            sizes.remove(o)?;
        }
        Ok(())
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
/// `before_ms`" is the id range below `before_ms * 1000` of each owner.
fn expire(
    archive: &Archive,
    txn: &WriteTransaction,
    before_ms: u64,
    max_rows: usize,
) -> Result<(), Error> {
    let cut = before_ms.saturating_mul(1000);
    let mut t = txn.open_table(archive.rows)?;
    let mut doomed: Vec<(String, u64, String, u64)> = Vec::new();
    let mut next_owner = t.first()?.map(|(k, _)| k.value().0.to_owned());
    while let Some(owner) = next_owner.take() {
        if doomed.len() >= max_rows {
            break;
        }
        let o = owner.as_str();
        for row in t.range((o, 0)..(o, cut))?.take(max_rows - doomed.len()) {
            let (k, v) = row?;
            let (_, with, xml) = v.value();
            let size = row_bytes(with, xml);
            doomed.push((owner.clone(), k.value().1, bare(with).to_owned(), size));
        }
        // The next owner's first row: the first key past every key of this owner.
        for row in t.range((o, u64::MAX)..)? {
            let (k, _) = row?;
            let k = k.value();
            if k.0 != o {
                next_owner = Some(k.0.to_owned());
                break;
            }
        }
    }
    let mut index = archive.by_with.map(|t| txn.open_table(t)).transpose()?;
    let mut freed: HashMap<String, u64> = HashMap::new();
    for (owner, id, with, size) in doomed {
        t.remove((owner.as_str(), id))?;
        if let Some(index) = &mut index {
            index.remove((owner.as_str(), with.as_str(), id))?;
        }
        *freed.entry(owner).or_default() += size;
    }
    // An archive whose figure is not kept yet gets it from its rows later, as they are then.
    let mut sizes = txn.open_table(archive.sizes)?;
    for (owner, size) in freed {
        let kept = sizes.get(owner.as_str())?.map(|v| v.value());
        if let Some(bytes) = kept {
            sizes.insert(owner.as_str(), bytes.saturating_sub(size))?;
        }
    }
    Ok(())
}

/// What one archived row counts for in its owner's quota.
pub fn row_bytes(with: &str, xml: &str) -> u64 {
    (with.len() + xml.len()) as u64
}

/// The bytes of every row of `owner`, for an archive whose figure is not kept yet.
fn sum_rows(
    t: &impl ReadableTable<(&'static str, u64), (u64, &'static str, &'static str)>,
    owner: &str,
) -> Result<u64, Error> {
    let mut bytes = 0;
    for row in t.range((owner, 0)..=(owner, u64::MAX))? {
        let (_, v) = row?;
        let (_, with, xml) = v.value();
        bytes += row_bytes(with, xml);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::USER_ARCHIVE as A;
    use crate::storage::{Store, Write, accounts, temp_store};

    fn put(user: &str, id: u64, with: &str) -> Write {
        A.append(user, id, with, format!("<message>{id}</message>"))
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
            let p = A
                .page(&store, "a", None, lo, u64::MAX, false, 50, &all)
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
            let p = A.page(&store, "a", None, 0, hi, true, 70, &all).unwrap();
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
        let p = A
            .page(&store, "a", None, 551_000, u64::MAX, false, 50, &all)
            .unwrap();
        assert_eq!((p.items.len(), p.complete), (50, true));
        let p = A
            .page(&store, "a", None, 550_000, u64::MAX, false, 50, &all)
            .unwrap();
        assert_eq!((p.items.len(), p.complete), (50, false));
    }

    #[test]
    fn a_page_stops_at_its_bytes_and_at_the_rows_it_may_look_at() {
        use super::PageLimit;
        let (_dir, store) = filled();
        let all = |_: &str| true;
        // "<message>1000</message>" is 23 bytes: two fit in 50, and the first always does.
        let limit = |bytes, rows| PageLimit {
            items: 10,
            bytes,
            rows,
        };
        let p = A
            .page(&store, "a", None, 0, u64::MAX, false, limit(50, 1000), &all)
            .unwrap();
        assert_eq!(
            (ids(&p), p.complete, p.cut_short),
            (vec![1000, 2000], false, false)
        );
        let p = A
            .page(&store, "a", None, 0, u64::MAX, true, limit(1, 1000), &all)
            .unwrap();
        assert_eq!(ids(&p), vec![600_000]);
        // Carol's rows without the index: every third, so 9 rows looked at find 3.
        let carol = |w: &str| w.starts_with("carol@x");
        let p = A
            .page(
                &store,
                "a",
                None,
                0,
                u64::MAX,
                false,
                limit(1000, 9),
                &carol,
            )
            .unwrap();
        assert_eq!(ids(&p), vec![3000, 6000, 9000]);
        assert!(p.cut_short && !p.complete);
        let p = A
            .page(
                &store,
                "a",
                None,
                0,
                u64::MAX,
                false,
                limit(1000, 2),
                &carol,
            )
            .unwrap();
        assert!(p.items.is_empty() && p.cut_short);
        // Looking at the last row there is is not cutting short.
        let p = A
            .page(&store, "b", None, 0, u64::MAX, false, limit(1000, 1), &all)
            .unwrap();
        assert_eq!((ids(&p), p.complete, p.cut_short), (vec![5], true, false));
    }

    #[test]
    fn filters_and_other_users() {
        let (_dir, store) = filled();
        let carol = |w: &str| w.starts_with("carol@x");
        let p = A
            .page(&store, "a", None, 0, u64::MAX, false, 500, &carol)
            .unwrap();
        assert_eq!(p.items.len(), 200);
        assert!(p.complete);
        assert!(p.items.iter().all(|a| a.with == "carol@x/r"));
        // The same through the per-contact index, in both directions and in pages.
        let all = |_: &str| true;
        let indexed = A
            .page(&store, "a", Some("carol@x"), 0, u64::MAX, false, 500, &all)
            .unwrap();
        assert_eq!(ids(&indexed), ids(&p));
        let last = A
            .page(&store, "a", Some("carol@x"), 0, u64::MAX, true, 2, &all)
            .unwrap();
        assert_eq!(ids(&last), vec![597_000, 600_000]);
        assert!(!last.complete);
        let none = A
            .page(&store, "a", Some("dave@x"), 0, u64::MAX, false, 5, &all)
            .unwrap();
        assert!(none.items.is_empty() && none.complete);
        let p = A
            .page(&store, "a", None, 10_000, 20_000, false, 500, &|_| true)
            .unwrap();
        assert_eq!(ids(&p), (10..=20).map(|i| i * 1000).collect::<Vec<_>>());
        let p = A
            .page(&store, "b", None, 0, u64::MAX, false, 10, &|_| true)
            .unwrap();
        assert_eq!(ids(&p), vec![5]);
        let (got, cut) = A
            .get(&store, "a", &[3000, 999, 1000, 3000], usize::MAX)
            .unwrap();
        assert_eq!(
            got.iter().map(|a| a.id).collect::<Vec<_>>(),
            vec![1000, 3000]
        );
        assert!(!cut);
        assert_eq!(got[0].xml, "<message>1000</message>");
        let (got, cut) = A.get(&store, "a", &[1000, 2000, 3000], 50).unwrap();
        assert_eq!((got.len(), cut), (2, true));
        assert!(A.contains(&store, "a", 2000).unwrap());
        assert!(!A.contains(&store, "a", 2001).unwrap());
        assert_eq!(
            A.bounds(&store, "a").unwrap(),
            Some(((1000, 1), (600_000, 600)))
        );
        assert_eq!(A.bounds(&store, "nobody").unwrap(), None);
    }

    #[test]
    fn survives_reopen_and_expires() {
        let (dir, store) = filled();
        assert_eq!(A.last_id(&store).unwrap(), 600_000);
        store.close();
        drop(store);
        let store = Store::open(&dir.path().join("hearth.redb")).unwrap();
        assert_eq!(A.last_id(&store).unwrap(), 600_000);
        let p = A
            .page(&store, "a", None, 0, u64::MAX, true, 1, &|_| true)
            .unwrap();
        assert_eq!(ids(&p), vec![600_000]);
        // Older than 100 ms: a's ids below 100_000 (99 rows) and b's and aa's single rows,
        // in batches of 60 so that the limit is exercised.
        for _ in 0..3 {
            store.commit_blocking(vec![A.expire(100, 60)]).unwrap();
        }
        let p = A
            .page(&store, "a", None, 0, u64::MAX, false, 1000, &|_| true)
            .unwrap();
        assert_eq!(p.items.len(), 501);
        assert_eq!(p.items[0].id, 100_000);
        // The index lost the expired rows too (it would name missing ids otherwise).
        let all = |_: &str| true;
        let carol = A
            .page(&store, "a", Some("carol@x"), 0, u64::MAX, false, 1000, &all)
            .unwrap();
        assert_eq!(carol.items.len(), 167);
        assert_eq!(A.bounds(&store, "b").unwrap(), None);
        assert_eq!(A.bounds(&store, "aa").unwrap(), None);
        store.commit_blocking(vec![accounts::delete("a")]).unwrap();
        assert_eq!(A.bounds(&store, "a").unwrap(), None);
        let gone = A
            .page(&store, "a", Some("bob@x"), 0, u64::MAX, false, 10, &all)
            .unwrap();
        assert!(gone.items.is_empty());
    }

    #[test]
    fn the_archive_size_is_kept_by_appends_and_expiry() {
        let (_dir, store) = filled();
        let a = A.bytes(&store, "a").unwrap();
        assert!(a > 0);
        assert_eq!(a, A.rows_bytes(&store, "a"));
        assert_eq!(A.bytes(&store, "b").unwrap(), A.rows_bytes(&store, "b"));
        store.commit_blocking(vec![A.expire(100, 1000)]).unwrap();
        let after = A.bytes(&store, "a").unwrap();
        assert!(after < a);
        assert_eq!(after, A.rows_bytes(&store, "a"));
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
        assert!(!A.keeps_bytes_of(&store, "a"));
        assert_eq!(A.bytes(&store, "a").unwrap(), after);
        store
            .commit_blocking(vec![put("a", 900_000_000, "bob@x")])
            .unwrap();
        assert!(A.keeps_bytes_of(&store, "a"));
        assert_eq!(A.bytes(&store, "a").unwrap(), A.rows_bytes(&store, "a"));
        store.commit_blocking(vec![accounts::delete("a")]).unwrap();
        assert_eq!(A.bytes(&store, "a").unwrap(), 0);
        assert!(!A.keeps_bytes_of(&store, "a"));
    }

    #[test]
    fn archives_sharing_a_commit_keep_apart() {
        use super::{Archive, Rows, Sizes, USER_ID_TO_ARCHIVED, USER_WITH_ID_TO_NOTHING};
        use crate::storage::shapes::{KeyVal, Queue};
        use redb::TableDefinition;
        const ROWS: Rows = TableDefinition::new("test_archive");
        const SIZES: Sizes = TableDefinition::new("test_archive_bytes");
        static TABLE: Queue<(u64, &str, &str)> = Queue(ROWS);
        static SIZES_TABLE: KeyVal<u64> = KeyVal(SIZES);
        static OTHER: Archive = Archive::new(ROWS, None, SIZES, "test_archive_last_id");
        let (_dir, store) = crate::storage::temp_store_with(vec![
            &USER_ID_TO_ARCHIVED,
            &USER_WITH_ID_TO_NOTHING,
            &super::USER_TO_ARCHIVE_BYTES,
            &TABLE,
            &SIZES_TABLE,
        ]);
        // Interleaved, as one group commit carries them.
        let w: Vec<Write> = (1..=6)
            .map(|i| match i % 2 {
                0 => OTHER.append("a", i, "x@y/n", format!("<message>{i}</message>")),
                _ => put("a", i, "bob@x"),
            })
            .collect();
        store.commit_blocking(w).unwrap();
        let all = |_: &str| true;
        let mine = A
            .page(&store, "a", None, 0, u64::MAX, false, 10, &all)
            .unwrap();
        let other = OTHER
            .page(&store, "a", None, 0, u64::MAX, false, 10, &all)
            .unwrap();
        assert_eq!((ids(&mine), ids(&other)), (vec![1, 3, 5], vec![2, 4, 6]));
        assert_eq!(
            (A.last_id(&store).unwrap(), OTHER.last_id(&store).unwrap()),
            (5, 6)
        );
        // Each archive counts its own bytes.
        assert_eq!(A.bytes(&store, "a").unwrap(), 3 * (5 + 20));
        assert_eq!(OTHER.bytes(&store, "a").unwrap(), 3 * (5 + 20));
        assert!(A.keeps_bytes_of(&store, "a") && OTHER.keeps_bytes_of(&store, "a"));
        // Without an index the rows are read and `keep` alone filters them.
        let by = OTHER
            .page(&store, "a", Some("x@y"), 0, u64::MAX, false, 10, &all)
            .unwrap();
        assert_eq!(ids(&by), vec![2, 4, 6]);
        // Clearing one owner leaves the others; keeping only some clears the rest, their
        // figures of bytes with them, also those whose rows all expired.
        store
            .commit_blocking(vec![
                OTHER.append("b", 7, "x@y/n", "<message/>".into()),
                OTHER.append("c", 20_000, "x@y/n", "<message/>".into()),
                OTHER.append("d", 20_001, "x@y/n", "<message/>".into()),
                OTHER.clear("b"),
            ])
            .unwrap();
        assert_eq!(OTHER.owners(&store).unwrap(), vec!["a", "c", "d"]);
        assert!(!OTHER.keeps_bytes_of(&store, "b"));
        store.commit_blocking(vec![OTHER.expire(1, 10)]).unwrap();
        assert_eq!(OTHER.owners(&store).unwrap(), vec!["c", "d"]);
        assert!(OTHER.keeps_bytes_of(&store, "a"), "expired to nothing");
        assert_eq!(OTHER.bytes(&store, "a").unwrap(), 0);
        store
            .commit_blocking(vec![OTHER.keep_only(vec!["c".into()])])
            .unwrap();
        assert_eq!(OTHER.owners(&store).unwrap(), vec!["c"]);
        for gone in ["a", "b", "d"] {
            assert!(!OTHER.keeps_bytes_of(&store, gone), "{gone}");
        }
        assert_eq!(OTHER.bytes(&store, "c").unwrap(), 5 + 10);
        assert_eq!(
            A.owners(&store).unwrap(),
            vec!["a"],
            "another archive is untouched"
        );
        assert_eq!(A.bytes(&store, "a").unwrap(), 3 * (5 + 20));
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
