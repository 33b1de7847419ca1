//! What every XEP-0313 archive does the same way, whoever owns it (an account, a chat room):
//! handing out ids, and answering a parsed query with its result messages and `<fin/>`.

use super::query::Query;
use super::store::{Archive, Archived, Page};
use crate::jid::Jid;
use crate::modules::Cx;
use crate::stanza::{Condition, StanzaError};
use crate::xml::{Element, ns, reader};
use std::cell::Cell;
use std::time::{Duration, UNIX_EPOCH};

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

/// Who asks what of which archive.
pub struct Ask<'a> {
    pub ids: &'a Ids,
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
    let page = match &q.ids {
        None => archive
            .page(store, owner, contact, lo, hi, backward, q.max, keep)
            .map_err(&internal)?,
        Some(ids) => {
            let mut items: Vec<_> = archive
                .get(store, owner, ids)
                .map_err(&internal)?
                .into_iter()
                .filter(|a| (lo..=hi).contains(&a.id) && keep(&a.with))
                .collect();
            let complete = items.len() <= q.max;
            match backward {
                true => drop(items.drain(..items.len().saturating_sub(q.max))),
                false => items.truncate(q.max),
            }
            Page { items, complete }
        }
    };
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
