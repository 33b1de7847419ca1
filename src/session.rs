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
use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::rc::Rc;
use std::task::{Poll, Waker};

pub enum Outbound {
    /// A pointer, so that the queue's slots stay small.
    Stanza(Rc<Delivery>),
    /// Ends the stream with this error (a conflicting login, shutdown, removal of the account).
    Close(StreamError),
}

/// A connection's queue of [`Outbound`]: what the router and the modules send it, in order.
/// Everything runs on the event loop, so it is a `VecDeque` behind an `Rc`, and an empty queue
/// keeps no buffer: an idle session costs the `Rc` alone, where an async-channel costs a
/// 768-byte channel and a 1.2 KiB block of slots.
///
/// Closed by either end ([`OutboundTx::close`], [`OutboundRx::close`]) or when every handle
/// of one end is gone. After it is closed nothing more goes in; what is in it can still be
/// taken out, then the receiver sees the end.
pub fn outbound() -> (OutboundTx, OutboundRx) {
    let shared = Rc::new(Shared {
        items: RefCell::default(),
        waker: Cell::new(None),
        closed: Cell::new(false),
        senders: Cell::new(1),
        receivers: Cell::new(1),
    });
    (OutboundTx(shared.clone()), OutboundRx(shared))
}

struct Shared {
    items: RefCell<VecDeque<Outbound>>,
    /// The task waiting in [`OutboundRx::recv`].
    waker: Cell<Option<Waker>>,
    closed: Cell<bool>,
    senders: Cell<usize>,
    receivers: Cell<usize>,
}

impl Shared {
    fn close(&self) -> bool {
        let was = self.closed.replace(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
        !was
    }
}

pub struct OutboundTx(Rc<Shared>);

impl OutboundTx {
    /// Queues `item`; gives it back if the queue is closed.
    pub fn try_send(&self, item: Outbound) -> Result<(), Outbound> {
        if self.0.closed.get() {
            return Err(item);
        }
        self.0.items.borrow_mut().push_back(item);
        if let Some(w) = self.0.waker.take() {
            w.wake();
        }
        Ok(())
    }

    /// Closes the queue; true if this closed it.
    pub fn close(&self) -> bool {
        self.0.close()
    }

    pub fn is_closed(&self) -> bool {
        self.0.closed.get()
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.0.items.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Clone for OutboundTx {
    fn clone(&self) -> Self {
        self.0.senders.set(self.0.senders.get() + 1);
        OutboundTx(self.0.clone())
    }
}

impl Drop for OutboundTx {
    fn drop(&mut self) {
        self.0.senders.set(self.0.senders.get() - 1);
        if self.0.senders.get() == 0 {
            self.0.close();
        }
    }
}

pub struct OutboundRx(Rc<Shared>);

impl OutboundRx {
    /// The next item, or None once the queue is closed and empty.
    pub fn try_recv(&self) -> Option<Outbound> {
        let mut items = self.0.items.borrow_mut();
        let item = items.pop_front();
        if items.is_empty() && items.capacity() > 0 {
            // What an idle session keeps: nothing.
            *items = VecDeque::new();
        }
        item
    }

    /// Waits for the next item; None once the queue is closed and empty.
    pub async fn recv(&self) -> Option<Outbound> {
        std::future::poll_fn(|cx| {
            if let Some(item) = self.try_recv() {
                return Poll::Ready(Some(item));
            }
            if self.0.closed.get() {
                return Poll::Ready(None);
            }
            self.0.waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await
    }

    pub fn close(&self) -> bool {
        self.0.close()
    }

    pub fn is_closed(&self) -> bool {
        self.0.closed.get()
    }
}

impl Clone for OutboundRx {
    fn clone(&self) -> Self {
        self.0.receivers.set(self.0.receivers.get() + 1);
        OutboundRx(self.0.clone())
    }
}

impl Drop for OutboundRx {
    fn drop(&mut self) {
        self.0.receivers.set(self.0.receivers.get() - 1);
        if self.0.receivers.get() == 0 {
            self.0.close();
        }
    }
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

    /// An error stanza: it answers something the recipient's own client sent, so how many come
    /// is bounded by that client's rate; a backlog bounced at once (a session closed with more
    /// undelivered than offline storage takes) may well be longer than a queue's `queue_len`.
    pub fn is_error(&self) -> bool {
        self.el.attr("type") == Some("error")
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
    pub tx: OutboundTx,
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
    /// Errors among the stanzas waiting in `tx` (see [`Delivery::is_error`]): they do not count
    /// against `limits.queue_len`.
    pub errors: Cell<u32>,
}

impl Session {
    /// The connection is ending (it fell too far behind, or its task is finishing): nothing
    /// more is queued for it, and what it holds takes the way of undelivered stanzas.
    pub fn closing(&self) -> bool {
        self.tx.is_closed()
    }

    /// A session just bound: not available, with no module state yet.
    pub fn new(conn: u64, jid: Jid, tx: OutboundTx) -> Session {
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
            errors: Cell::new(0),
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
        // One slot per device: a push into an empty Vec would take four.
        list.reserve_exact(1);
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
    fn the_outbound_queue_keeps_order_closes_and_frees_its_buffer() {
        let (tx, rx) = outbound();
        let close = |t: &str| {
            Outbound::Close(StreamError::with_text(
                crate::stanza::StreamCondition::Conflict,
                t,
            ))
        };
        let text = |o: Option<Outbound>| match o {
            Some(Outbound::Close(e)) => e.to_string(),
            _ => String::new(),
        };
        for i in 0..100 {
            assert!(tx.try_send(close(&i.to_string())).is_ok());
        }
        assert_eq!(tx.len(), 100);
        for i in 0..100 {
            assert!(text(rx.try_recv()).contains(&i.to_string()));
        }
        assert!(rx.try_recv().is_none());
        assert_eq!(
            rx.0.items.borrow().capacity(),
            0,
            "an empty queue keeps no buffer"
        );
        // A receiver waiting is woken by a send, and by the close.
        let tx2 = tx.clone();
        let got = smol::block_on(async {
            let wait = rx.recv();
            let send = async {
                smol::future::yield_now().await;
                assert!(tx2.try_send(close("late")).is_ok());
            };
            smol::future::zip(wait, send).await.0
        });
        assert!(text(got).contains("late"));
        assert!(tx.try_send(close("kept")).is_ok());
        assert!(tx.close() && !tx2.close());
        assert!(tx.try_send(close("refused")).is_err());
        assert!(
            text(smol::block_on(rx.recv())).contains("kept"),
            "what was in stays"
        );
        assert!(smol::block_on(rx.recv()).is_none());
        // The last sender gone closes it, and so does the receiver gone.
        let (tx, rx) = outbound();
        let tx2 = tx.clone();
        drop(tx);
        assert!(!rx.is_closed());
        drop(tx2);
        assert!(rx.is_closed() && smol::block_on(rx.recv()).is_none());
        let (tx, rx) = outbound();
        drop(rx);
        assert!(tx.is_closed() && tx.try_send(close("x")).is_err());
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
