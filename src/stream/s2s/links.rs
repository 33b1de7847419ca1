//! The router's side of outgoing server-to-server connections: one link per pair of a local
//! domain and a remote one, which is a queue to the task that connects and writes (see
//! `outgoing.rs`). The router puts stanzas in once their writes are durable; a link that does
//! not exist yet is made on the spot and handed to the connector, so stanzas wait in its queue
//! while the connection is made. The queue is bounded in bytes (`federation.queue_bytes`),
//! and the number of links by `federation.max_outgoing`: beyond either, a stanza goes back to
//! its sender as an error instead of waiting.
//!
//! What a link's task took from its queue and still holds (waiting for the stream to be ready,
//! or written and not acknowledged) is in its [`Held`], which the table sees too: when the
//! server stops, [`Links::take_all`] takes everything every link holds, whatever its task is
//! doing, so that none of it is lost (`parked.rs`).
//!
//! Every stanza queued gets a sequence number from one counter, which goes on from the
//! highest the store holds: it is the stanza's key in `s2s_waiting`, where messages and
//! presence subscriptions have a row from the moment they are routed until they are
//! delivered or bounced ([`Queued::kept`]), and orders what waits for a pair over a restart
//! or a crash.

use crate::session::weight;
use crate::stanza::Condition;
use crate::xml::Element;
use smol::channel::{Receiver, Sender};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;

/// The two ends of a connection: which of our domains speaks, to which other one.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pair {
    pub local: String,
    pub remote: String,
}

/// A stanza for another server, with its sequence number (see the header).
#[derive(Debug)]
pub struct Queued {
    pub el: Element,
    pub seq: u64,
    /// Whether a row of `s2s_waiting` holds it (`parked::kept`), to be removed once it is
    /// delivered or bounced.
    pub kept: bool,
}

/// What the task of a link writes.
pub enum Out {
    /// A stanza, written once the remote server has accepted the local domain.
    Stanza(Queued),
    /// A stanza a link wrote before it died, without the remote server acknowledging it
    /// (XEP-0198): written once more; if this link dies with it unacknowledged too, it goes
    /// back to its sender.
    Again(Queued),
    /// A dialback verification request (XEP-0220 §2.1.2), which needs no authentication: the
    /// remote server answers whether `key` is what it gave for the stream `id`.
    Verify {
        id: String,
        key: String,
        /// Gets the pair and the answer.
        reply: Sender<(Pair, bool)>,
    },
    /// The other server answered the ping (XEP-0199) with this id that the link wrote after
    /// stanzas, over its own connection to us: it read those stanzas.
    Answered(String),
}

/// Stanzas a link's task took from its queue and has not delivered yet, oldest first, each
/// with whether it is a second try (`Out::Again`). Shared between the task and the table; no
/// borrow is held across an `.await`.
#[derive(Default)]
pub struct Held {
    /// Written and not acknowledged yet (XEP-0198, or the answer to a ping).
    pub unacked: RefCell<VecDeque<(Queued, bool)>>,
    /// Waiting for the stream to be ready.
    pub waiting: RefCell<VecDeque<(Queued, bool)>>,
}

impl Held {
    /// Everything held, in the order it was queued: what was written came before what waits.
    pub fn take(&self) -> VecDeque<(Queued, bool)> {
        let mut all = std::mem::take(&mut *self.unacked.borrow_mut());
        all.append(&mut self.waiting.borrow_mut());
        all
    }

    /// The other server handled the `n` oldest stanzas written: they leave, and what is done
    /// with them is `Delivered`.
    pub fn acknowledged(&self, n: usize) -> Delivered {
        let mut unacked = self.unacked.borrow_mut();
        let n = n.min(unacked.len());
        Delivered::of(unacked.drain(..n).map(|(q, _)| q))
    }
}

/// Stanzas that left a link delivered: their bytes leave its queue, and their rows of
/// `s2s_waiting` (the sequence numbers of the kept ones) are to be removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Delivered {
    pub bytes: usize,
    pub seqs: Vec<u64>,
}

impl Delivered {
    pub fn of(done: impl IntoIterator<Item = Queued>) -> Delivered {
        let mut d = Delivered::default();
        for q in done {
            d.add(&q);
        }
        d
    }

    pub fn add(&mut self, q: &Queued) {
        self.bytes += weight(&q.el);
        if q.kept {
            self.seqs.push(q.seq);
        }
    }
}

/// A link the connector is to start a task for.
pub struct NewLink {
    pub pair: Pair,
    pub id: u64,
    pub rx: Receiver<Out>,
    /// Bytes of the stanzas in `rx` and `held`: the task takes them off as they are delivered.
    pub queued: Rc<Cell<usize>>,
    pub held: Rc<Held>,
}

/// A link whose task has not ended, whether or not it is still its pair's link.
struct Live {
    pair: Pair,
    rx: Receiver<Out>,
    held: Rc<Held>,
}

struct Link {
    id: u64,
    tx: Sender<Out>,
    queued: Rc<Cell<usize>>,
}

pub struct Links {
    links: RefCell<HashMap<Pair, Link>>,
    /// The sequence number of the next stanza queued.
    next_seq: Cell<u64>,
    /// Every link from its making to the end of its task, by id: the order they were made in.
    live: RefCell<BTreeMap<u64, Live>>,
    next_id: Cell<u64>,
    new: (Sender<NewLink>, Receiver<NewLink>),
}

impl Default for Links {
    fn default() -> Links {
        Links {
            links: RefCell::default(),
            next_seq: Cell::new(1),
            live: RefCell::default(),
            next_id: Cell::new(1),
            new: smol::channel::unbounded(),
        }
    }
}

impl Links {
    /// Numbers from now on follow `last`, the highest the store holds.
    pub fn seqs_after(&self, last: u64) {
        self.next_seq.set(self.next_seq.get().max(last + 1));
    }

    /// The sequence number of a stanza about to be queued.
    pub fn next_seq(&self) -> u64 {
        let seq = self.next_seq.get();
        self.next_seq.set(seq + 1);
        seq
    }

    /// Queues `q` for the remote domain; gives it back with the error for its sender when
    /// it cannot wait.
    pub fn send(
        &self,
        pair: Pair,
        q: Queued,
        max_bytes: usize,
        max_links: usize,
    ) -> Result<(), (Queued, Condition)> {
        let size = weight(&q.el);
        let mut links = self.links.borrow_mut();
        if let Some(l) = links.get(&pair) {
            let queued = l.queued.get();
            if queued > 0 && queued + size > max_bytes {
                log::warn!(
                    "{} bytes wait for {} already; refusing more",
                    queued,
                    pair.remote
                );
                return Err((q, Condition::ResourceConstraint));
            }
            return match l.tx.try_send(Out::Stanza(q)) {
                Ok(()) => {
                    l.queued.set(queued + size);
                    Ok(())
                }
                Err(e) => match e.into_inner() {
                    Out::Stanza(q) => Err((q, Condition::RemoteServerNotFound)),
                    _ => unreachable!("a stanza was sent"),
                },
            };
        }
        if links.len() >= max_links {
            log::warn!(
                "connected to {max_links} servers already; not connecting to {}",
                pair.remote
            );
            return Err((q, Condition::ResourceConstraint));
        }
        let l = self.open(&mut links, pair);
        l.queued.set(size);
        let _ = l.tx.try_send(Out::Stanza(q));
        Ok(())
    }

    /// Queues `els`, which a link of `pair` that died left unacknowledged, for another try
    /// on a new link, first; gives back what cannot wait (too many links), with the error for
    /// its sender. Their bytes were within the bound when they were first queued.
    pub fn send_again(
        &self,
        pair: Pair,
        els: Vec<Queued>,
        max_links: usize,
    ) -> Vec<(Queued, Condition)> {
        let mut links = self.links.borrow_mut();
        if !links.contains_key(&pair) && links.len() >= max_links {
            return els
                .into_iter()
                .map(|el| (el, Condition::RemoteServerTimeout))
                .collect();
        }
        if !links.contains_key(&pair) {
            self.open(&mut links, pair.clone());
        }
        let mut refused = Vec::new();
        for el in els {
            let Some(l) = links.get(&pair) else {
                refused.push((el, Condition::RemoteServerTimeout));
                continue;
            };
            let size = weight(&el.el);
            match l.tx.try_send(Out::Again(el)) {
                Ok(()) => l.queued.set(l.queued.get() + size),
                Err(e) => {
                    if let Out::Again(el) = e.into_inner() {
                        refused.push((el, Condition::RemoteServerTimeout));
                    }
                }
            }
        }
        refused
    }

    /// Asks the authoritative server of `pair.remote` whether `key` is its key for the stream
    /// `id` (which that server opened to `pair.local`). False when it cannot be asked.
    pub fn verify(
        &self,
        pair: Pair,
        id: String,
        key: String,
        reply: Sender<(Pair, bool)>,
        max_links: usize,
    ) {
        let mut links = self.links.borrow_mut();
        if !links.contains_key(&pair) && links.len() >= max_links {
            let _ = reply.try_send((pair, false));
            return;
        }
        let l = match links.contains_key(&pair) {
            true => links.get(&pair),
            false => Some(self.open(&mut links, pair)),
        };
        if let Some(l) = l {
            let _ = l.tx.try_send(Out::Verify { id, key, reply });
        }
    }

    fn open<'m>(&self, links: &'m mut HashMap<Pair, Link>, pair: Pair) -> &'m Link {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (tx, rx) = smol::channel::unbounded();
        let queued = Rc::new(Cell::new(0));
        let held = Rc::new(Held::default());
        self.live.borrow_mut().insert(
            id,
            Live {
                pair: pair.clone(),
                rx: rx.clone(),
                held: held.clone(),
            },
        );
        let _ = self.new.0.try_send(NewLink {
            pair: pair.clone(),
            id,
            rx,
            queued: queued.clone(),
            held,
        });
        links.entry(pair).or_insert(Link { id, tx, queued })
    }

    /// The task of the link `id` has ended, and has given what it held to another link or
    /// back to its senders.
    pub fn ended(&self, id: u64) {
        self.live.borrow_mut().remove(&id);
    }

    /// Everything every link holds, for the server that stops: per pair in the order it was
    /// queued (what a link wrote and was not acknowledged, what waits for its stream, what
    /// waits in its queue; an older link's before a newer one's). Every link leaves the
    /// table, so what is routed afterwards makes new ones; the tasks are not to run again.
    pub fn take_all(&self) -> Vec<(Pair, Queued)> {
        for (_, l) in self.links.borrow_mut().drain() {
            l.tx.close();
        }
        let mut out = Vec::new();
        for (_, live) in std::mem::take(&mut *self.live.borrow_mut()) {
            let mut els: Vec<Queued> = live.held.take().into_iter().map(|(q, _)| q).collect();
            while let Ok(o) = live.rx.try_recv() {
                match o {
                    Out::Stanza(el) | Out::Again(el) => els.push(el),
                    // Nobody waits for the answer any more.
                    Out::Verify { .. } | Out::Answered(_) => {}
                }
            }
            out.extend(els.into_iter().map(|el| (live.pair.clone(), el)));
        }
        out
    }

    /// Hands the answer to a ping to the link of `pair` that wrote it; an answer for a link
    /// that is gone, or for another link of the pair, finds nobody waiting for it.
    pub fn answered(&self, pair: &Pair, id: String) {
        if let Some(l) = self.links.borrow().get(pair) {
            let _ = l.tx.try_send(Out::Answered(id));
        }
    }

    /// The link `id` of `pair` is done (failed or idle): what comes for the remote domain from
    /// now on makes a new one. False if it was replaced already.
    pub fn remove(&self, pair: &Pair, id: u64) -> bool {
        let mut links = self.links.borrow_mut();
        if links.get(pair).is_some_and(|l| l.id == id) {
            if let Some(l) = links.remove(pair) {
                l.tx.close();
            }
            return true;
        }
        false
    }

    /// The next link to connect, for the connector task.
    pub async fn next_new(&self) -> Option<NewLink> {
        self.new.1.recv().await.ok()
    }

    /// Links waiting for the connector, for tests without one.
    #[cfg(test)]
    pub fn take_new(&self) -> Vec<NewLink> {
        let mut out = Vec::new();
        while let Ok(l) = self.new.1.try_recv() {
            out.push(l);
        }
        out
    }

    /// The remote domains with a link, for diagnostics.
    pub fn remotes(&self) -> Vec<Pair> {
        let mut v: Vec<Pair> = self.links.borrow().keys().cloned().collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::ns;

    fn pair(remote: &str) -> Pair {
        Pair {
            local: "localhost".into(),
            remote: remote.into(),
        }
    }

    /// A kept message whose sequence number is its body's when that is a number.
    fn msg(body: &str) -> Queued {
        Queued {
            el: Element::new("message", ns::CLIENT)
                .with_child(Element::new("body", ns::CLIENT).with_text(body)),
            seq: body.parse().unwrap_or(0),
            kept: true,
        }
    }

    #[test]
    fn stanzas_wait_within_their_bounds() {
        let links = Links::default();
        links.send(pair("a.example"), msg("1"), 1000, 2).unwrap();
        links.send(pair("a.example"), msg("2"), 1000, 2).unwrap();
        let new = links.take_new();
        assert_eq!(new.len(), 1, "one connection per pair");
        // Over the bytes: refused; over the links: refused.
        let big = msg(&"x".repeat(2000));
        let (_, c) = links.send(pair("a.example"), big, 1000, 2).unwrap_err();
        assert_eq!(c, Condition::ResourceConstraint);
        links.send(pair("b.example"), msg("3"), 1000, 2).unwrap();
        let (_, c) = links
            .send(pair("c.example"), msg("4"), 1000, 2)
            .unwrap_err();
        assert_eq!(c, Condition::ResourceConstraint);
        // A removed link closes its queue; the next stanza makes a new one.
        assert!(links.remove(&pair("a.example"), new[0].id));
        assert!(new[0].rx.is_closed());
        assert_eq!(new[0].rx.len(), 2);
        links.send(pair("a.example"), msg("5"), 1000, 2).unwrap();
        let again = links.take_new();
        assert_eq!(again.len(), 2);
        assert!(
            !links.remove(&pair("a.example"), new[0].id),
            "not the current link"
        );
    }

    fn body(q: &Queued) -> String {
        q.el.child("body", ns::CLIENT).unwrap().text()
    }

    /// A link that left the table while its task still runs (closing its connection) holds
    /// what it holds until its task ends: taken before the newer link's, and no more once the
    /// task has ended.
    #[test]
    fn everything_every_running_link_holds_is_taken_oldest_first() {
        let links = Links::default();
        links.send(pair("a.example"), msg("1"), 1000, 2).unwrap();
        links.send(pair("a.example"), msg("2"), 1000, 2).unwrap();
        let old = links.take_new().remove(0);
        let Ok(Out::Stanza(one)) = old.rx.try_recv() else {
            panic!("a stanza");
        };
        old.held.waiting.borrow_mut().push_back((one, false));
        assert!(links.remove(&pair("a.example"), old.id));
        links.send(pair("a.example"), msg("3"), 1000, 2).unwrap();
        let all: Vec<String> = links.take_all().iter().map(|(_, el)| body(el)).collect();
        assert_eq!(all, ["1", "2", "3"]);
        assert!(links.remotes().is_empty());
        assert!(links.take_all().is_empty(), "taken once");

        links.send(pair("a.example"), msg("4"), 1000, 2).unwrap();
        let l = links.take_new().pop().unwrap();
        assert!(links.remove(&pair("a.example"), l.id));
        links.ended(l.id);
        assert!(
            links.take_all().is_empty(),
            "an ended link gave its stanzas away"
        );
    }

    #[test]
    fn second_tries_go_first_on_a_new_link_within_the_links_bound() {
        let links = Links::default();
        links.send(pair("a.example"), msg("1"), 1000, 1).unwrap();
        let first = links.take_new().remove(0);
        assert!(links.remove(&pair("a.example"), first.id));
        // Their bytes were checked once: a second try is not refused for them.
        let refused = links.send_again(pair("a.example"), vec![msg(&"x".repeat(2000))], 1);
        assert!(refused.is_empty());
        let again = links.take_new().remove(0);
        assert!(matches!(again.rx.try_recv(), Ok(Out::Again(_))));
        assert!(again.queued.get() > 2000);
        // No room for another link: it goes back with the error for its sender.
        let refused = links.send_again(pair("b.example"), vec![msg("2")], 1);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].1, Condition::RemoteServerTimeout);
    }

    /// An acknowledgement takes the oldest stanzas written, their bytes, and the rows of the
    /// kept ones among them (not those of presence or iqs, which have none); one of more than
    /// was written takes what there is.
    #[test]
    fn an_acknowledgement_gives_the_rows_of_what_it_covers() {
        let held = Held::default();
        let presence = Queued {
            el: Element::new("presence", ns::CLIENT),
            seq: 3,
            kept: false,
        };
        for (q, again) in [(msg("1"), false), (msg("2"), true), (presence, false)] {
            held.unacked.borrow_mut().push_back((q, again));
        }
        held.unacked.borrow_mut().push_back((msg("4"), false));
        let size = |b: &str| weight(&msg(b).el);
        assert_eq!(held.acknowledged(0), Delivered::default());
        assert_eq!(
            held.acknowledged(1),
            Delivered {
                bytes: size("1"),
                seqs: vec![1]
            }
        );
        let d = held.acknowledged(2);
        assert_eq!(d.seqs, [2], "the presence has no row");
        assert_eq!(
            d.bytes,
            size("2") + weight(&Element::new("presence", ns::CLIENT))
        );
        let left: Vec<u64> = held.unacked.borrow().iter().map(|(q, _)| q.seq).collect();
        assert_eq!(left, [4]);
        assert_eq!(held.acknowledged(5).seqs, [4]);
        assert!(held.take().is_empty());
    }

    #[test]
    fn sequence_numbers_go_on_from_the_stores() {
        let links = Links::default();
        assert_eq!(links.next_seq(), 1);
        links.seqs_after(41);
        assert_eq!(links.next_seq(), 42);
        links.seqs_after(7);
        assert_eq!(links.next_seq(), 43, "never back");
    }
}
