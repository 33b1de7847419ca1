//! What every XEP-0313 archive does the same way, whoever owns it (an account, a chat room):
//! handing out ids, keeping each owner's archive within its bytes, bounding what one page of
//! results may take, and answering a parsed query with its result messages and `<fin/>`.

use super::query::{self, Query};
use super::store::{Archive, Archived, Page, PageLimit, row_bytes};
use crate::jid::Jid;
use crate::modules::Cx;
use crate::stanza::{Condition, StanzaError};
use crate::xml::{Element, ns, reader};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};

/// Rows one query may look at, per result it may return: a filter that matches few rows (a
/// full JID in `with`, a room's sender) must not read a whole archive on the one thread.
pub const ROWS_PER_RESULT: usize = 100;

/// Hands out the ids of one archive: the microsecond at which a message is archived, bumped
/// to stay strictly increasing (and across restarts through the archive's high-water mark).
/// So id order is time order, a message's archive time is its id / 1000 ms, and every filter
/// is one id range.
pub struct Ids {
    archive: &'static Archive,
    /// The last id handed out; 0 until the high-water mark has been read (modules are built
    /// before the store is reachable, so this is done on first use).
    last: Cell<u64>,
}

impl Ids {
    pub const fn new(archive: &'static Archive) -> Ids {
        Ids {
            archive,
            last: Cell::new(0),
        }
    }

    pub fn next(&self, cx: &Cx) -> u64 {
        let mut last = self.last.get();
        if last == 0 {
            last = self.archive.last_id(cx.store()).unwrap_or_else(|e| {
                log::error!("reading the last archive id: {e}; continuing from the clock");
                0
            });
        }
        let now = cx
            .now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let id = now.max(last + 1);
        self.last.set(id);
        id
    }
}

/// The bytes each owner's archive may hold. A full archive takes nothing new and keeps what
/// it has: dropping the oldest instead would let anyone who writes to the owner (a contact,
/// a room's occupant) erase its history.
pub struct Quota {
    archive: &'static Archive,
    max_bytes: u64,
    /// For the log: what goes before an owner's name ("room " for a room) and the option
    /// that sets `max_bytes`.
    owner_is: &'static str,
    option: &'static str,
    /// Bytes of each archive read so far, with what this process has added since: the quota
    /// must hold while appends are on their way to the disk. Read again after expiry.
    usage: RefCell<HashMap<String, Usage>>,
}

#[derive(Clone, Copy)]
struct Usage {
    bytes: u64,
    /// The archive is full and the log said so.
    warned: bool,
}

impl Quota {
    pub fn new(
        archive: &'static Archive,
        max_bytes: u64,
        owner_is: &'static str,
        option: &'static str,
    ) -> Quota {
        Quota {
            archive,
            max_bytes,
            owner_is,
            option,
            usage: RefCell::default(),
        }
    }

    /// Counts a row of `with` (the other party) and `xml` into `owner`'s archive if it fits,
    /// and says whether it did. A message that does not is not archived (it is still
    /// delivered); said once in the log, until the archive has room again.
    pub fn take(&self, cx: &Cx, owner: &str, with: &str, xml: &str) -> bool {
        let size = row_bytes(with, xml);
        let Some(mut usage) = self.usage(cx, owner) else {
            return false;
        };
        if usage.bytes + size > self.max_bytes {
            if !usage.warned {
                log::warn!(
                    "the archive of {}{owner} is full ({} bytes); not archiving its messages \
                     until old ones expire or {} is raised",
                    self.owner_is,
                    usage.bytes,
                    self.option
                );
                usage.warned = true;
                self.usage.borrow_mut().insert(owner.to_owned(), usage);
            }
            return false;
        }
        usage.bytes += size;
        self.usage.borrow_mut().insert(owner.to_owned(), usage);
        true
    }

    /// What `owner`'s archive holds, from the cache or the store; None if it cannot be read
    /// (nothing is archived then).
    fn usage(&self, cx: &Cx, owner: &str) -> Option<Usage> {
        if let Some(u) = self.usage.borrow().get(owner) {
            return Some(*u);
        }
        match self.archive.bytes(cx.store(), owner) {
            Ok(bytes) => Some(Usage {
                bytes,
                warned: false,
            }),
            Err(e) => {
                log::error!("reading the archive size of {}{owner}: {e}", self.owner_is);
                None
            }
        }
    }

    /// Forgets what was read of `owner`'s archive (it is gone, or about to be).
    pub fn forget(&self, owner: &str) {
        self.usage.borrow_mut().remove(owner);
    }

    /// Forgets every figure read: the last expiry has committed, and they are read again with
    /// what it freed.
    pub fn reread(&self) {
        self.usage.borrow_mut().clear();
    }
}

/// How much one page of results may take, in every archive: a query's results reach the
/// client through its queue at once.
#[derive(Clone, Copy, Debug)]
pub struct Paging {
    /// Results per page when a query does not say, and the most it may ask for
    /// (`[modules.mam]`).
    pub default: usize,
    pub max: usize,
    /// Most bytes of XML in one page: half of the client's queue.
    pub bytes: usize,
}

impl Paging {
    pub fn new(config: &crate::config::Config) -> Paging {
        Paging {
            default: config.modules.mam.default_page,
            max: config.modules.mam.max_page,
            bytes: config.limits.queue_bytes / 2,
        }
    }

    /// Parses a `<query/>` with these page sizes.
    pub fn parse(&self, q: &Element) -> Result<Query, StanzaError> {
        query::parse(q, self.default, self.max)
    }

    /// The bounds of a page of `items` results: its bytes, and `ROWS_PER_RESULT` rows looked
    /// at per result a page may hold.
    fn limit(&self, items: usize) -> PageLimit {
        PageLimit {
            items,
            bytes: self.bytes,
            rows: self.max.saturating_mul(ROWS_PER_RESULT),
        }
    }
}

/// Who asks what of which archive.
pub struct Ask<'a> {
    pub ids: &'a Ids,
    pub paging: &'a Paging,
    /// The owner's key in the archive's tables (a localpart, a room's name).
    pub owner: &'a str,
    /// The archive's address: result messages come from it.
    pub by: &'a Jid,
    /// The asker's full JID: result messages go to it.
    pub to: &'a Jid,
}

/// Runs `q` over the archive: sends one result message per item to the asker and returns the
/// `<fin/>`. `keep` filters on the stored `with`; `contact` reads only one party's messages
/// through the archive's index (when it keeps one); `decorate` may change each message before
/// it is forwarded (a room adds who sent it).
pub fn run(
    cx: &mut Cx,
    ask: &Ask,
    q: &Query,
    contact: Option<&str>,
    keep: &dyn Fn(&str) -> bool,
    decorate: &dyn Fn(&Archived, &mut Element),
) -> Result<Element, StanzaError> {
    let (archive, owner) = (ask.ids.archive, ask.owner);
    let store = cx.store();
    let internal = crate::modules::internal("reading an archive");
    // An id handed out whose write has not committed yet (the stanza that carries it went
    // out first) is known: paging from it must not fail. It is not listed until then.
    let committed = archive.last_id(store).map_err(&internal)?;
    let pending = |id: u64| id > committed && id <= ask.ids.last.get();
    for id in q.named_ids() {
        if !pending(id) && !archive.contains(store, owner, id).map_err(&internal)? {
            return Err(StanzaError::with_text(
                Condition::ItemNotFound,
                "no such archive id",
            ));
        }
    }
    let (lo, hi) = q.id_range();
    let backward = q.before.is_some();
    let limit = ask.paging.limit(q.max);
    let page = match &q.ids {
        None => archive
            .page(store, owner, contact, lo, hi, backward, limit, keep)
            .map_err(&internal)?,
        Some(ids) => {
            let (items, cut) = archive
                .get(store, owner, ids, limit.bytes)
                .map_err(&internal)?;
            let mut items: Vec<_> = items
                .into_iter()
                .filter(|a| (lo..=hi).contains(&a.id) && keep(&a.with))
                .collect();
            let complete = items.len() <= q.max && !cut;
            match backward {
                true => drop(items.drain(..items.len().saturating_sub(q.max))),
                false => items.truncate(q.max),
            }
            Page {
                items,
                complete,
                cut_short: false,
            }
        }
    };
    if page.cut_short && page.items.is_empty() {
        // Only an archive with an index reads a bare JID's messages without filtering.
        let hint = match archive.indexed() {
            true => "too many messages to look through; ask with a bare JID or a time range",
            false => "too many messages to look through; ask for a shorter time range",
        };
        return Err(StanzaError::with_text(Condition::ResourceConstraint, hint));
    }
    let by = ask.by.to_string();
    for a in &page.items {
        let Some(mut original) = reader::parse_one(&a.xml) else {
            log::warn!("skipping unreadable archived message {} of {owner}", a.id);
            continue;
        };
        decorate(a, &mut original);
        let when = UNIX_EPOCH + Duration::from_millis(a.stamp_ms);
        let mut result = Element::new("result", ns::MAM).with_attr("id", a.id.to_string());
        if let Some(qid) = &q.queryid {
            result.set_attr("queryid", qid.as_str());
        }
        result.push(
            Element::new("forwarded", ns::FORWARD)
                .with_child(
                    Element::new("delay", ns::DELAY)
                        .with_attr("stamp", crate::modules::time::stamp(when)),
                )
                .with_child(original),
        );
        let msg = Element::new("message", ns::CLIENT)
            .with_attr("from", by.as_str())
            .with_attr("to", ask.to.to_string())
            .with_child(result);
        cx.send(ask.to.clone(), msg);
    }
    let mut set = Element::new("set", ns::RSM);
    if let (Some(first), Some(last)) = (page.items.first(), page.items.last()) {
        set.push(Element::new("first", ns::RSM).with_text(first.id.to_string()));
        set.push(Element::new("last", ns::RSM).with_text(last.id.to_string()));
    }
    let mut fin = Element::new("fin", ns::MAM).with_child(set);
    if page.complete {
        fin.set_attr("complete", "true");
    }
    Ok(fin)
}

/// The `<metadata/>` answer (XEP-0313 §7.2): the first and the last message of `owner`.
pub fn metadata(cx: &Cx, archive: &Archive, owner: &str) -> Result<Element, StanzaError> {
    let mut el = Element::new("metadata", ns::MAM);
    let bounds = archive
        .bounds(cx.store(), owner)
        .map_err(crate::modules::internal("reading an archive"))?;
    if let Some((first, last)) = bounds {
        for (name, (id, stamp_ms)) in [("start", first), ("end", last)] {
            let when = UNIX_EPOCH + Duration::from_millis(stamp_ms);
            el.push(
                Element::new(name, ns::MAM)
                    .with_attr("id", id.to_string())
                    .with_attr("timestamp", crate::modules::time::stamp(when)),
            );
        }
    }
    Ok(el)
}
