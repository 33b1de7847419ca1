//! XEP-0191 Blocking Command, v1.3: a user's list of blocked JIDs, with block, unblock and
//! unblock-all, pushes to the sessions that asked for the list, and the blocking itself:
//!
//! - from a blocked entity, presence is dropped silently, a message gets
//!   `service-unavailable`, an iq get or set `service-unavailable`, other iqs are dropped
//!   (the user looks offline to it);
//! - to a blocked entity, what the user's client sends is refused with `not-acceptable` and
//!   `<blocked xmlns='urn:xmpp:blocking:errors'/>`; what the server would send on the user's
//!   behalf (a presence broadcast, the answer to a probe) is dropped;
//! - blocking sends the blocked entity unavailable presence, unblocking the current presence,
//!   each when it may see the user's presence (a subscription or directed presence).
//!
//! Items match as XEP-0191 §4 says: a full JID only itself; a bare JID any of its resources; a
//! domain with a resource only that resource; a domain itself, every address at it and at its
//! subdomains. Left out: "polite blocking" alternatives (subscriptions stay as they are, as the
//! XEP recommends) and blocking privacy lists (XEP-0016), which hearth does not implement.

use super::roster::Roster;
use super::{Cx, DiscoInfo, Entry, Flow, IqRequest, IqRoute, SessionEvent, Target, To, push_iq};
use crate::jid::Jid;
use crate::router::Dest;
use crate::stanza::{Condition, Kind, Origin, Stanza, StanzaError, Type};
use crate::storage::shapes::Map;
use crate::xml::{Element, ns};
use redb::TableDefinition;
use serde::Deserialize;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap, HashSet};

/// (localpart, blocked JID as normalised) → nothing (an empty string).
pub static USER_JID_TO_BLOCKED: Map<&str> = Map(TableDefinition::new("blocklist"));

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub enabled: bool,
    /// Most JIDs one account may block.
    pub max_items: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: true,
            max_items: 1000,
        }
    }
}

pub const ENTRY: Entry = Entry {
    tables: &[&USER_JID_TO_BLOCKED],
    new: |config| {
        let c = &config.modules.blocking;
        c.enabled.then(|| {
            Box::new(Blocking {
                max_items: c.max_items,
                lists: RefCell::default(),
                requested: RefCell::default(),
                pushes: Cell::new(0),
            }) as Box<dyn super::Module>
        })
    },
};

pub struct Blocking {
    max_items: usize,
    /// Block lists read so far, by localpart, written through to the store: every stanza to
    /// or from an account consults its list.
    lists: RefCell<HashMap<String, BTreeSet<String>>>,
    /// Sessions that asked for the block list, which get pushes (XEP-0191 §3.3).
    requested: RefCell<HashSet<Jid>>,
    pushes: Cell<u64>,
}

/// Whether an item of `list` matches `jid` (XEP-0191 §4).
fn matches(list: &BTreeSet<String>, jid: &Jid) -> bool {
    if list.is_empty() {
        return false;
    }
    let domain = jid.domain();
    let full = jid.to_string();
    if list.contains(&full) || (!jid.is_bare() && list.contains(&jid.bare().to_string())) {
        return true;
    }
    if let (Some(_), Some((_, resource))) = (jid.local(), full.split_once('/'))
        && list.contains(&format!("{domain}/{resource}"))
    {
        return true;
    }
    // The domain, and every domain it is a subdomain of.
    let mut d = domain;
    loop {
        if list.contains(d) {
            return true;
        }
        match d.split_once('.') {
            Some((_, parent)) => d = parent,
            None => return false,
        }
    }
}

fn blocked_error() -> StanzaError {
    StanzaError::new(Condition::NotAcceptable)
        .with_app(Element::new("blocked", ns::BLOCKING_ERRORS))
}

/// The JIDs of a `<block/>` or `<unblock/>` payload, normalised.
pub fn items_of(payload: &Element) -> Result<Vec<String>, StanzaError> {
    payload
        .elements()
        .filter(|e| e.is("item", ns::BLOCKING))
        .map(|e| {
            e.attr("jid")
                .and_then(|j| Jid::parse(j).ok())
                .map(|j| j.to_string())
                .ok_or_else(|| StanzaError::new(Condition::JidMalformed))
        })
        .collect()
}

fn list_xml(name: &str, items: impl IntoIterator<Item = impl Into<String>>) -> Element {
    let mut el = Element::new(name, ns::BLOCKING);
    for i in items {
        el.push(Element::new("item", ns::BLOCKING).with_attr("jid", i));
    }
    el
}

impl Blocking {
    /// Runs `f` on `user`'s list, reading it from the store the first time.
    fn with<R>(&self, cx: &Cx, user: &str, f: impl FnOnce(&BTreeSet<String>) -> R) -> R {
        if let Some(l) = self.lists.borrow().get(user) {
            return f(l);
        }
        match USER_JID_TO_BLOCKED.all(cx.store(), user) {
            Ok(rows) => {
                let list: BTreeSet<String> = rows.into_iter().map(|(k, _)| k).collect();
                let out = f(&list);
                self.lists.borrow_mut().insert(user.to_owned(), list);
                out
            }
            Err(e) => {
                log::error!("reading the block list of {user}: {e}");
                f(&BTreeSet::new())
            }
        }
    }

    /// Whether `user` blocked `jid`. An account never blocks itself, nor its own server
    /// (blocking the server's domain blocks the accounts at it, not the server's answers).
    pub fn blocks(&self, cx: &Cx, user: &str, jid: &Jid) -> bool {
        let exempt = match cx.destination(jid) {
            Dest::Account(u) | Dest::Session(u) => u == user,
            Dest::Server => true,
            _ => false,
        };
        !exempt && self.with(cx, user, |l| matches(l, jid))
    }

    /// The stanzas an account sends: refused or dropped when they go to someone it blocked.
    fn outbound(&self, cx: &mut Cx, st: &Stanza) -> Result<Flow, StanzaError> {
        let (Some(user), Some(to)) = (st.from.local(), st.to.as_ref()) else {
            return Ok(Flow::Continue);
        };
        if !self.blocks(cx, user, to) {
            return Ok(Flow::Continue);
        }
        match (st.origin, st.typ) {
            (Origin::Client, Type::Error | Type::Result) => Ok(Flow::Handled),
            (Origin::Client, _) => Err(blocked_error()),
            _ => Ok(Flow::Handled),
        }
    }

    /// The stanzas an account receives from someone it blocked: presence and iq answers are
    /// dropped, the rest is refused as if nobody were there.
    fn inbound(&self, cx: &mut Cx, user: &str, st: &Stanza) -> Result<Flow, StanzaError> {
        if !self.blocks(cx, user, &st.from) {
            return Ok(Flow::Continue);
        }
        match (st.kind, st.typ) {
            (Kind::Presence, _) | (_, Type::Error | Type::Result) => Ok(Flow::Handled),
            _ => Err(StanzaError::service_unavailable()),
        }
    }

    fn push(&self, cx: &mut Cx, user: &str, payload: Element) {
        let targets: Vec<Jid> = self
            .requested
            .borrow()
            .iter()
            .filter(|j| j.local() == Some(user))
            .cloned()
            .collect();
        for to in targets {
            let n = self.pushes.get() + 1;
            self.pushes.set(n);
            cx.send(
                to.clone(),
                push_iq(&to, format!("block{n}"), payload.clone()),
            );
        }
    }

    /// Tells whoever may see `user`'s presence and matches one of `items` of a block
    /// (unavailable presence) or an unblock (the current presence), as RFC 6121 lets them see
    /// it: a subscriber each available session, a recipient of directed presence only the
    /// session that sent it. From the server itself: the account's own hooks would stop it,
    /// since the block is in force.
    fn tell(&self, cx: &mut Cx, user: &str, items: &BTreeSet<String>, available: bool) {
        let subscribers: Vec<Jid> = match cx.module::<Roster>() {
            Some(r) => r.with(cx, user, |r| {
                r.items
                    .iter()
                    .filter(|(_, i)| i.subscription.from())
                    .filter_map(|(c, _)| Jid::parse(c).ok())
                    .filter(|c| matches(items, c))
                    .collect()
            }),
            None => Vec::new(),
        };
        let sessions: Vec<(Jid, Option<Element>, Vec<Jid>)> = cx
            .sessions()
            .available(user)
            .map(|s| {
                let directed = s.directed.iter().filter(|j| matches(items, j)).cloned();
                (s.jid.clone(), s.presence.clone(), directed.collect())
            })
            .collect();
        for (from, presence, directed) in sessions {
            let el = match (available, presence) {
                (true, Some(p)) => p,
                (true, None) => continue,
                (false, _) => Element::new("presence", ns::CLIENT).with_attr("type", "unavailable"),
            };
            let typ = if available {
                Type::Available
            } else {
                Type::Unavailable
            };
            let mut to: Vec<&Jid> = subscribers.iter().chain(&directed).collect();
            to.sort();
            to.dedup();
            for t in to {
                let st = Stanza::new(
                    Kind::Presence,
                    typ,
                    from.clone(),
                    t.clone(),
                    Origin::Server,
                    el.clone(),
                );
                cx.route(st);
            }
        }
    }

    fn block(&self, cx: &mut Cx, user: &str, payload: &Element) -> Result<(), StanzaError> {
        let items = items_of(payload)?;
        if items.is_empty() {
            return Err(StanzaError::bad_request("block at least one JID"));
        }
        let new: BTreeSet<String> = self.with(cx, user, |l| {
            items.iter().filter(|i| !l.contains(*i)).cloned().collect()
        });
        let size = self.with(cx, user, |l| l.len()) + new.len();
        if size > self.max_items {
            return Err(StanzaError::with_text(
                Condition::PolicyViolation,
                format!("a block list holds at most {} JIDs", self.max_items),
            ));
        }
        self.tell(cx, user, &new, false);
        for i in &new {
            cx.write(USER_JID_TO_BLOCKED.put(user, i, String::new()));
        }
        if let Some(l) = self.lists.borrow_mut().get_mut(user) {
            l.extend(new);
        }
        self.push(cx, user, list_xml("block", items));
        Ok(())
    }

    fn unblock(&self, cx: &mut Cx, user: &str, payload: &Element) -> Result<(), StanzaError> {
        let items = items_of(payload)?;
        let gone: BTreeSet<String> = self.with(cx, user, |l| match items.is_empty() {
            true => l.clone(),
            false => items.iter().filter(|i| l.contains(*i)).cloned().collect(),
        });
        match items.is_empty() {
            true => cx.write(USER_JID_TO_BLOCKED.clear(user)),
            false => {
                for i in &gone {
                    cx.write(USER_JID_TO_BLOCKED.delete(user, i));
                }
            }
        }
        if let Some(l) = self.lists.borrow_mut().get_mut(user) {
            l.retain(|i| !gone.contains(i));
        }
        self.push(cx, user, list_xml("unblock", items));
        self.tell(cx, user, &gone, true);
        Ok(())
    }
}

impl super::Module for Blocking {
    fn name(&self) -> &'static str {
        "blocking"
    }

    fn disco(&self, _cx: &Cx, target: &Target, info: &mut DiscoInfo) {
        if *target == Target::Server {
            info.features.push(ns::BLOCKING);
        }
    }

    fn iq_routes(&self) -> &'static [IqRoute] {
        const { &[IqRoute::new(ns::BLOCKING, To::OWN)] }
    }

    fn handle_iq(&self, cx: &mut Cx, iq: &IqRequest) -> Result<Option<Element>, StanzaError> {
        let user = iq.from.local().unwrap_or_default();
        match (iq.payload.name.as_str(), iq.set) {
            ("blocklist", false) => {
                self.requested.borrow_mut().insert(iq.from.clone());
                let items = self.with(cx, user, |l| l.iter().cloned().collect::<Vec<_>>());
                Ok(Some(list_xml("blocklist", items)))
            }
            ("block", true) => self.block(cx, user, iq.payload).map(|()| None),
            ("unblock", true) => self.unblock(cx, user, iq.payload).map(|()| None),
            _ => Err(StanzaError::bad_request(
                "expected a blocklist get, or a block or unblock set",
            )),
        }
    }

    fn message_out(&self, cx: &mut Cx, st: &mut Stanza) -> Result<Flow, StanzaError> {
        self.outbound(cx, st)
    }
    fn presence_out(&self, cx: &mut Cx, st: &mut Stanza) -> Result<Flow, StanzaError> {
        self.outbound(cx, st)
    }
    fn iq_out(&self, cx: &mut Cx, st: &mut Stanza) -> Result<Flow, StanzaError> {
        self.outbound(cx, st)
    }

    fn message_in(
        &self,
        cx: &mut Cx,
        user: &str,
        st: &mut Stanza,
        _targets: &[Jid],
    ) -> Result<Flow, StanzaError> {
        self.inbound(cx, user, st)
    }
    fn presence_in(&self, cx: &mut Cx, user: &str, st: &mut Stanza) -> Result<Flow, StanzaError> {
        self.inbound(cx, user, st)
    }
    fn iq_in(&self, cx: &mut Cx, user: &str, st: &mut Stanza) -> Result<Flow, StanzaError> {
        self.inbound(cx, user, st)
    }

    fn session_event(&self, _cx: &mut Cx, session: &Jid, event: SessionEvent) {
        // A session bound under a full JID that a replaced session had asked for the list
        // with has not asked for it itself.
        if matches!(event, SessionEvent::Bound | SessionEvent::Closed) {
            self.requested.borrow_mut().remove(session);
        }
    }

    fn accepts(&self, cx: &Cx, user: &str, from: &Jid) -> bool {
        !self.blocks(cx, user, from)
    }

    fn account_removed(&self, user: &str) {
        self.lists.borrow_mut().remove(user);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::TestRouter;
    use super::*;

    fn list(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn jid_matching_follows_the_xep() {
        let j = |s: &str| Jid::parse(s).unwrap();
        // (item, address, blocked?)
        let rows = [
            ("a@x/r", "a@x/r", true),
            ("a@x/r", "a@x/s", false),
            ("a@x/r", "a@x", false),
            ("a@x", "a@x/any", true),
            ("a@x", "a@x", true),
            ("a@x", "b@x", false),
            ("x/r", "a@x/r", true),
            ("x/r", "a@x/s", false),
            ("x", "a@x/r", true),
            ("x", "x", true),
            ("x", "muc.x", true),
            ("x", "room@muc.x/nick", true),
            ("x", "y", false),
            ("x", "xx", false),
            ("muc.x", "x", false),
        ];
        for (item, addr, want) in rows {
            assert_eq!(matches(&list(&[item]), &j(addr)), want, "{item} vs {addr}");
        }
        assert!(!matches(&BTreeSet::new(), &j("a@x")));
    }

    fn blocker() -> (TestRouter, Jid, Jid) {
        let t = TestRouter::new();
        let a = t.online("alice", "phone");
        let b = t.online("bob", "laptop");
        t.client(
            &a,
            "<iq type='get' id='l'><blocklist xmlns='urn:xmpp:blocking'/></iq>",
        );
        (t, a, b)
    }

    #[test]
    fn block_push_list_and_unblock_all() {
        let (t, a, _b) = blocker();
        let a2 = t.online("alice", "laptop");
        let out = t.client(&a, "<iq type='set' id='b1'><block xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/><item jid='spam.example'/></block></iq>");
        out.assert_sent(&a, "<iq type='result' id='b1'/>");
        out.assert_sent(&a, "<iq type='set'><block xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/><item jid='spam.example'/></block></iq>");
        // A session that never asked for the list gets no push.
        out.assert_nothing_to(&a2);
        let out = t.client(
            &a2,
            "<iq type='get' id='l2'><blocklist xmlns='urn:xmpp:blocking'/></iq>",
        );
        out.assert_sent(&a2, "<iq type='result' id='l2'><blocklist xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/><item jid='spam.example'/></blocklist></iq>");
        assert_eq!(
            t.router
                .store
                .rows_of("alice")
                .iter()
                .find(|(n, _)| n == "blocklist")
                .map(|r| r.1),
            Some(2)
        );
        let out = t.client(
            &a,
            "<iq type='set' id='u1'><unblock xmlns='urn:xmpp:blocking'/></iq>",
        );
        out.assert_sent(
            &a,
            "<iq type='set'><unblock xmlns='urn:xmpp:blocking'/></iq>",
        );
        out.assert_sent(
            &a2,
            "<iq type='set'><unblock xmlns='urn:xmpp:blocking'/></iq>",
        );
        assert!(
            t.router
                .store
                .rows_of("alice")
                .iter()
                .all(|(n, _)| n != "blocklist")
        );
    }

    #[test]
    fn a_blocked_contact_meets_silence_and_errors() {
        let (t, a, b) = blocker();
        t.client(&a, "<iq type='set' id='b1'><block xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></block></iq>");
        // Bob's message bounces with service-unavailable and never reaches Alice.
        let out = t.client(
            &b,
            "<message id='m1' to='alice@localhost' type='chat'><body>hi</body></message>",
        );
        out.assert_nothing_to(&a);
        out.assert_error(&b, "m1", Condition::ServiceUnavailable);
        // His iq get gets the same, his presence nothing at all.
        let out = t.client(
            &b,
            "<iq type='get' id='i1' to='alice@localhost/phone'><ping xmlns='urn:xmpp:ping'/></iq>",
        );
        out.assert_error(&b, "i1", Condition::ServiceUnavailable);
        out.assert_nothing_to(&a);
        let out = t.client(&b, "<presence to='alice@localhost'/>");
        assert!(out.sends.is_empty(), "{}", out.show());
        let out = t.client(&b, "<presence type='subscribe' to='alice@localhost'/>");
        out.assert_nothing_to(&a);
        // Alice cannot write to Bob: not-acceptable with <blocked/>.
        let out = t.client(
            &a,
            "<message id='m2' to='bob@localhost/laptop'><body>hi</body></message>",
        );
        out.assert_nothing_to(&b);
        out.assert_sent(&a, "<message type='error' id='m2'><error type='modify'><not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><blocked xmlns='urn:xmpp:blocking:errors'/></error></message>");
    }

    #[test]
    fn blocking_a_subscriber_withdraws_presence_and_unblocking_restores_it() {
        let (t, a, b) = blocker();
        t.client(&b, "<presence type='subscribe' to='alice@localhost'/>");
        t.client(&a, "<presence type='subscribed' to='bob@localhost'/>");
        let out = t.client(&a, "<iq type='set' id='b1'><block xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></block></iq>");
        out.assert_sent(
            &b,
            "<presence type='unavailable' from='alice@localhost/phone'/>",
        );
        // Alice's broadcasts no longer reach Bob, and his probes go unanswered.
        let out = t.client(&a, "<presence><show>dnd</show></presence>");
        out.assert_nothing_to(&b);
        let out = t.client(&b, "<presence type='probe' to='alice@localhost'/>");
        out.assert_nothing_to(&b);
        let out = t.client(&a, "<iq type='set' id='u1'><unblock xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></unblock></iq>");
        out.assert_sent(
            &b,
            "<presence from='alice@localhost/phone'><show>dnd</show></presence>",
        );
        let out = t.client(
            &b,
            "<message id='m1' to='alice@localhost' type='chat'><body>hi</body></message>",
        );
        out.assert_sent(&a, "<message id='m1'><body>hi</body></message>");
    }

    #[test]
    fn blocking_the_own_domain_blocks_its_accounts_not_the_server() {
        let (t, a, b) = blocker();
        t.client(&a, "<iq type='set' id='b1'><block xmlns='urn:xmpp:blocking'><item jid='localhost'/></block></iq>");
        let out = t.client(
            &a,
            "<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
        );
        out.assert_sent(&a, "<iq type='result' id='p'/>");
        let out = t.client(
            &a,
            "<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>",
        );
        out.assert_sent(&a, "<iq type='result' id='r'/>");
        let out = t.client(
            &b,
            "<message id='m' to='alice@localhost'><body>hi</body></message>",
        );
        out.assert_error(&b, "m", Condition::ServiceUnavailable);
    }

    #[test]
    fn bad_commands_and_the_size_limit() {
        let mut cfg = crate::config::Config::default();
        cfg.modules.blocking.max_items = 2;
        let t = TestRouter::with_config(cfg, &["alice"]);
        let a = t.online("alice", "phone");
        let out = t.client(
            &a,
            "<iq type='set' id='1'><block xmlns='urn:xmpp:blocking'/></iq>",
        );
        out.assert_error(&a, "1", Condition::BadRequest);
        let out = t.client(&a, "<iq type='set' id='2'><block xmlns='urn:xmpp:blocking'><item jid='a@b@c'/></block></iq>");
        out.assert_error(&a, "2", Condition::JidMalformed);
        let out = t.client(&a, "<iq type='set' id='3'><block xmlns='urn:xmpp:blocking'><item jid='x'/><item jid='y'/><item jid='z'/></block></iq>");
        out.assert_error(&a, "3", Condition::PolicyViolation);
        let out = t.client(
            &a,
            "<iq type='get' id='4' to='bob@localhost'><blocklist xmlns='urn:xmpp:blocking'/></iq>",
        );
        out.assert_error(&a, "4", Condition::ServiceUnavailable);
        assert!(
            t.router
                .store
                .rows_of("alice")
                .iter()
                .all(|(n, _)| n != "blocklist")
        );
    }
}
