//! Connections and bound sessions. Every connection has an outbound queue from its first byte
//! (so shutdown and conflicts can reach it); a bound one also has a session: a full JID, its
//! presence and its flags. Connections reach each other only through these queues.
//!
//! A stanza travels as a [`Delivery`]: one value however many sessions it goes to (a message
//! to a bare JID reaches every resource of the highest priority), so that its copies cost its
//! memory once and the last session that fails to deliver it can tell (see `router.rs`).

use crate::jid::Jid;
use crate::stanza::StreamError;
use crate::xml::{Element, Node};
use smol::channel::Sender;
use std::cell::Cell;
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;

pub enum Outbound {
    /// A pointer, so that the queue's slots stay small: each idle session keeps one block of them.
    Stanza(Rc<Delivery>),
    /// Ends the stream with this error (a conflicting login, shutdown, removal of the account).
    Close(StreamError),
}

/// A stanza for one or more sessions.
#[derive(Debug)]
pub struct Delivery {
    pub el: Element,
    /// What it weighs in a queue, in bytes (see [`weight`]).
    pub size: usize,
    /// A client took it: it was written to the socket of a stream without XEP-0198, or
    /// acknowledged on one with it.
    delivered: Cell<bool>,
}

impl Delivery {
    pub fn new(el: Element) -> Rc<Delivery> {
        Rc::new(Delivery {
            size: weight(&el),
            el,
            delivered: Cell::new(false),
        })
    }

    pub fn delivered(&self) {
        self.delivered.set(true);
    }

    /// A session gives up its copy without having delivered it. The stanza comes back only if
    /// this was the last copy and no session delivered it: then, and only then, it is
    /// undelivered. Copies other sessions still hold may yet reach their clients.
    pub fn undelivered(d: Rc<Delivery>) -> Option<Element> {
        if d.delivered.get() {
            return None;
        }
        Rc::try_unwrap(d).ok().map(|d| d.el)
    }
}

/// Bytes an element is counted for while a session holds it: its names, attributes and text,
/// and a fixed cost per node for the structure around them. Not the serialised length (that
/// would mean serialising it), but within a small factor of it and of the memory it takes.
pub fn weight(el: &Element) -> usize {
    const NODE: usize = 48;
    let mut n = NODE + 2 * el.name.len() + el.ns.len();
    for (k, v) in &el.attrs {
        n += k.len() + v.len() + 4;
    }
    for c in &el.children {
        n += match c {
            Node::Element(e) => weight(e),
            Node::Text(t) => NODE / 2 + t.len(),
        };
    }
    n
}

pub struct Session {
    pub conn: u64,
    pub jid: Jid,
    pub tx: Sender<Outbound>,
    /// Sent initial presence and has not gone unavailable since (RFC 6121 §4.2).
    pub available: bool,
    pub priority: i8,
    /// The last available presence broadcast, as sent (with `from`).
    pub presence: Option<Element>,
    /// Asked for the roster, so it gets roster pushes (RFC 6121 §2.1.6).
    pub interested: bool,
    /// Entities that got directed presence and must hear of unavailability (RFC 6121 §4.6).
    pub directed: Directed,
    pub flags: Flags,
    /// Bytes of the stanzas waiting in `tx` (their [`Delivery::size`]): added by the router,
    /// taken off by the connection as it reads them. 32 bits: `limits.queue_bytes` fits.
    pub queued: Cell<u32>,
}

impl Session {
    /// The connection is ending (it fell too far behind, or its task is finishing): nothing
    /// more is queued for it, and what it holds takes the way of undelivered stanzas.
    pub fn closing(&self) -> bool {
        self.tx.is_closed()
    }

    /// A session just bound: not available, with no module state yet.
    pub fn new(conn: u64, jid: Jid, tx: Sender<Outbound>) -> Session {
        Session {
            conn,
            jid,
            tx,
            available: false,
            priority: 0,
            presence: None,
            interested: false,
            directed: Directed::default(),
            flags: Flags::default(),
            queued: Cell::new(0),
        }
    }
}

/// The set of entities a session sent directed presence to: no allocation until the first
/// (a `BTreeSet` is as small as the list it replaces), and no work per presence that grows with
/// its size (a client may send thousands).
#[derive(Debug, Default)]
pub struct Directed(BTreeSet<Jid>);

impl Directed {
    /// Adds `jid` unless `max` others are there already; false if it was refused.
    pub fn insert(&mut self, jid: &Jid, max: usize) -> bool {
        if self.0.contains(jid) {
            return true;
        }
        self.0.len() < max && self.0.insert(jid.clone())
    }

    pub fn remove(&mut self, jid: &Jid) {
        self.0.remove(jid);
    }

    pub fn take(&mut self) -> Vec<Jid> {
        std::mem::take(&mut self.0).into_iter().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Jid> {
        self.0.iter()
    }
}

/// Per-session state that belongs to one module each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    /// XEP-0280: the session enabled carbons.
    pub carbons: bool,
    /// XEP-0313: the session queried its archive, so it catches up from there.
    pub mam_queried: bool,
    /// Seconds the session waits to be resumed (XEP-0198) after losing its connection, when a
    /// module wants longer than `stream_management.resume_timeout_secs` (push: a phone that
    /// will be woken may sleep for hours).
    pub resume_window: Option<u32>,
}

#[derive(Default)]
pub struct Sessions {
    by_user: HashMap<String, Vec<Session>>,
    /// How often each account's logins were made void (a password change, a removal): a
    /// connection that authenticated before cannot bind.
    voided: HashMap<String, u64>,
}

impl Sessions {
    /// What a connection that authenticates as `user` now notes, to compare at bind time.
    pub fn login_epoch(&self, user: &str) -> u64 {
        self.voided.get(user).copied().unwrap_or(0)
    }

    /// Every connection authenticated as `user` so far may no longer bind or resume.
    pub fn void_logins(&mut self, user: &str) {
        *self.voided.entry(user.to_owned()).or_default() += 1;
    }

    pub fn of(&self, user: &str) -> &[Session] {
        self.by_user.get(user).map_or(&[], Vec::as_slice)
    }

    pub fn get(&self, full: &Jid) -> Option<&Session> {
        let user = full.local()?;
        self.of(user).iter().find(|s| s.jid == *full)
    }

    pub fn get_mut(&mut self, full: &Jid) -> Option<&mut Session> {
        let user = full.local()?;
        self.by_user
            .get_mut(user)?
            .iter_mut()
            .find(|s| s.jid == *full)
    }

    /// Whether binding `full` stays within `max` resources for its account. RFC 6120 §7.6.2.1
    /// has the server refuse a bind beyond its limit with `resource-constraint`; ending the
    /// oldest session instead would cut off a device someone is using, and §7.7.2.2 replaces
    /// a session only for a bind of the same resource (which this allows: the count stays).
    /// Closing sessions are gone already and do not count.
    pub fn may_bind(&self, full: &Jid, max: usize) -> bool {
        let list = self.of(full.local().unwrap_or_default());
        list.iter().any(|s| s.jid == *full) || list.iter().filter(|s| !s.closing()).count() < max
    }

    /// Adds a session; returns the one it replaces (same full JID), which the caller closes.
    pub fn insert(&mut self, session: Session) -> Option<Session> {
        let user = session.jid.local().unwrap_or_default().to_owned();
        let list = self.by_user.entry(user).or_default();
        let old = list
            .iter()
            .position(|s| s.jid == session.jid)
            .map(|i| list.swap_remove(i));
        list.push(session);
        old
    }

    /// Removes the session of `conn` if it is still the one bound to `full`.
    pub fn remove(&mut self, full: &Jid, conn: u64) -> Option<Session> {
        let user = full.local()?;
        let list = self.by_user.get_mut(user)?;
        let i = list.iter().position(|s| s.conn == conn)?;
        let s = list.swap_remove(i);
        if list.is_empty() {
            self.by_user.remove(user);
        }
        Some(s)
    }

    /// Sessions that take messages to the bare JID: available, non-negative priority, and of
    /// those the highest priority (RFC 6121 §8.5.2.1.1). A closing session is gone already.
    pub fn message_targets(&self, user: &str) -> Vec<Jid> {
        let list = self.of(user);
        let open = || list.iter().filter(|s| s.available && !s.closing());
        let top = open().filter(|s| s.priority >= 0).map(|s| s.priority).max();
        match top {
            Some(p) => open()
                .filter(|s| s.priority == p)
                .map(|s| s.jid.clone())
                .collect(),
            None => Vec::new(),
        }
    }

    pub fn available(&self, user: &str) -> impl Iterator<Item = &Session> {
        self.of(user).iter().filter(|s| s.available)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::ns;

    #[test]
    fn weight_follows_the_serialised_size() {
        for body in ["", "hi", &"x".repeat(100_000)] {
            let el = Element::new("message", ns::CLIENT)
                .with_attr("to", "bob@localhost/phone")
                .with_attr("type", "chat")
                .with_child(Element::new("body", ns::CLIENT).with_text(body));
            let (w, xml) = (weight(&el), el.to_xml().len());
            assert!(w >= xml && w <= 2 * xml + 200, "{w} for {xml} bytes");
        }
    }

    #[test]
    fn directed_presence_is_a_bounded_set() {
        let jid = |s: &str| Jid::parse(s).unwrap();
        let mut d = Directed::default();
        assert!(d.insert(&jid("a@x/1"), 2));
        assert!(d.insert(&jid("b@x"), 2));
        assert!(d.insert(&jid("a@x/1"), 2), "already there");
        assert!(!d.insert(&jid("c@x"), 2));
        d.remove(&jid("b@x"));
        assert!(d.insert(&jid("c@x"), 2));
        assert_eq!(d.take(), vec![jid("a@x/1"), jid("c@x")]);
        assert_eq!(d.iter().count(), 0);
    }
}
