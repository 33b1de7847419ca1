//! RFC 6121 §2 roster management with §2.6 versioning: get, set, remove, and pushes to every
//! session that has asked for the roster. Subscription states are changed only by presence
//! (see `presence.rs`, which reads and writes items through this module); a client's
//! `subscription`/`ask` attributes on a set are ignored.
//!
//! Rosters are kept in memory once read, and every change is written through to the store:
//! handlers that run before a change is committed see it, and a presence broadcast reads no
//! store. Memory is bounded by the accounts and their rosters.

use super::presence;
use super::{Cx, Entry, IqRequest, IqRoute, Module, Stage, To, push_iq};
use crate::error::Error;
use crate::jid::Jid;
use crate::stanza::{Condition, StanzaError};
use crate::storage::shapes::{KeyVal, Map};
use crate::storage::{Op, Txn};
use crate::xml::{Element, ns};
use redb::TableDefinition;
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};

/// (localpart, contact bare JID) → roster item (TOML of [`RosterItem`]).
pub static USER_CONTACT_TO_ROSTER_ITEM: Map<&str> = Map(TableDefinition::new("roster"));
/// Localpart → roster version (RFC 6121 §2.6), strictly increasing across the server.
pub static USER_TO_ROSTER_VERSION: KeyVal<u64> = KeyVal(TableDefinition::new("roster_version"));

pub const ENTRY: Entry = Entry {
    tables: &[&USER_CONTACT_TO_ROSTER_ITEM, &USER_TO_ROSTER_VERSION],
    new: |config| Some(Box::new(Roster::new(config.modules.roster.max_items))),
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Items one roster may hold, counting contacts known only by a pending request.
    pub max_items: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config { max_items: 1000 }
    }
}

/// Most groups one item may be in, and the longest group or name, in bytes.
const MAX_GROUPS: usize = 64;
const MAX_TEXT: usize = 1023;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Subscription {
    #[default]
    None,
    To,
    From,
    Both,
}

impl Subscription {
    pub fn as_str(self) -> &'static str {
        match self {
            Subscription::None => "none",
            Subscription::To => "to",
            Subscription::From => "from",
            Subscription::Both => "both",
        }
    }
    /// The user receives the contact's presence.
    pub fn to(self) -> bool {
        matches!(self, Subscription::To | Subscription::Both)
    }
    /// The contact receives the user's presence.
    pub fn from(self) -> bool {
        matches!(self, Subscription::From | Subscription::Both)
    }
    pub fn with(to: bool, from: bool) -> Subscription {
        match (to, from) {
            (false, false) => Subscription::None,
            (true, false) => Subscription::To,
            (false, true) => Subscription::From,
            (true, true) => Subscription::Both,
        }
    }
}

/// One contact as the user sees it. `visible` is false for a contact known only through a
/// pending inbound subscription request, which RFC 6121 §3.1.3 keeps out of the roster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RosterItem {
    pub visible: bool,
    pub name: Option<String>,
    pub groups: Vec<String>,
    pub subscription: Subscription,
    /// Pending out: the user asked to see the contact's presence.
    pub ask: bool,
    /// Pending in: the contact asked to see the user's presence.
    pub pending_in: bool,
    /// RFC 6121 §3.4: the user pre-approved the contact's future request.
    pub approved: bool,
}

impl RosterItem {
    pub fn encode(&self) -> String {
        // A struct of plain fields always serialises.
        toml::to_string(self).expect("roster item serialises")
    }

    pub fn decode(s: &str) -> RosterItem {
        toml::from_str(s).unwrap_or_default()
    }
}

/// One account's roster: its version and its items by contact bare JID.
#[derive(Clone, Debug, Default)]
pub struct UserRoster {
    pub ver: u64,
    pub items: BTreeMap<String, RosterItem>,
}

pub struct Roster {
    rosters: RefCell<HashMap<String, UserRoster>>,
    last_version: Cell<u64>,
    max_items: usize,
}

/// Stores an item and the roster's new version.
#[derive(Debug)]
struct Put {
    user: String,
    contact: String,
    /// None deletes the item.
    item: Option<String>,
    ver: u64,
}

impl Op for Put {
    fn apply(&self, txn: &Txn) -> Result<(), Error> {
        let key = (self.user.as_str(), self.contact.as_str());
        let mut items = txn.txn.open_table(USER_CONTACT_TO_ROSTER_ITEM.0)?;
        match &self.item {
            Some(i) => drop(items.insert(key, i.as_str())?),
            None => drop(items.remove(key)?),
        }
        txn.txn
            .open_table(USER_TO_ROSTER_VERSION.0)?
            .insert(self.user.as_str(), self.ver)?;
        Ok(())
    }
}

fn read(store: &crate::storage::Store, user: &str) -> Result<UserRoster, Error> {
    let items = USER_CONTACT_TO_ROSTER_ITEM
        .all(store, user)?
        .into_iter()
        .map(|(k, v)| (k, RosterItem::decode(&v)))
        .collect();
    let txn = store.read()?;
    let ver = txn
        .open_table(USER_TO_ROSTER_VERSION.0)?
        .get(user)?
        .map_or(0, |v| v.value());
    Ok(UserRoster { ver, items })
}

impl Roster {
    pub fn new(max_items: usize) -> Roster {
        Roster {
            rosters: RefCell::default(),
            last_version: Cell::new(0),
            max_items,
        }
    }

    /// Whether `contact` is in `user`'s roster or can be added to it: the roster (and so every
    /// roster result and the memory it is kept in) holds at most `max_items`.
    pub fn has_room(&self, cx: &Cx, user: &str, contact: &Jid) -> bool {
        let key = contact.to_string();
        self.with(cx, user, |r| {
            r.items.contains_key(&key) || r.items.len() < self.max_items
        })
    }

    /// Runs `f` on `user`'s roster, reading it from the store the first time. A store that
    /// cannot be read gives an empty roster for this call, which is not kept.
    pub fn with<R>(&self, cx: &Cx, user: &str, f: impl FnOnce(&UserRoster) -> R) -> R {
        if let Some(r) = self.rosters.borrow().get(user) {
            return f(r);
        }
        match read(cx.store(), user) {
            Ok(r) => {
                let out = f(&r);
                self.rosters.borrow_mut().insert(user.to_owned(), r);
                out
            }
            Err(e) => {
                log::error!("reading the roster of {user}: {e}");
                f(&UserRoster::default())
            }
        }
    }

    pub fn item(&self, cx: &Cx, user: &str, contact: &Jid) -> Option<RosterItem> {
        let key = contact.to_string();
        self.with(cx, user, |r| r.items.get(&key).cloned())
    }

    /// A version greater than any handed out before, here or in an earlier run.
    fn next_version(&self, cx: &Cx, user: &str) -> u64 {
        let now = cx
            .now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let stored = self.with(cx, user, |r| r.ver);
        let v = now.max(self.last_version.get() + 1).max(stored + 1);
        self.last_version.set(v);
        v
    }

    fn change(&self, cx: &mut Cx, user: &str, contact: &str, item: Option<RosterItem>) -> u64 {
        let ver = self.next_version(cx, user);
        cx.write(Box::new(Put {
            user: user.to_owned(),
            contact: contact.to_owned(),
            item: item.as_ref().map(RosterItem::encode),
            ver,
        }));
        // `next_version` read the roster in, so it is cached unless the store failed.
        if let Some(r) = self.rosters.borrow_mut().get_mut(user) {
            r.ver = ver;
            match item {
                Some(i) => r.items.insert(contact.to_owned(), i),
                None => r.items.remove(contact),
            };
        }
        ver
    }

    /// Stores an item and pushes it to the user's interested sessions if what they see of it
    /// changed (a pending inbound request, for one, is not shown, so it is not pushed).
    pub fn put(&self, cx: &mut Cx, user: &str, contact: &Jid, it: RosterItem) {
        let key = contact.to_string();
        let shown = |i: &RosterItem| i.visible.then(|| item_xml(&key, i));
        let before = self.item(cx, user, contact).and_then(|i| shown(&i));
        let pushed = shown(&it).filter(|now| before.as_ref() != Some(now));
        let ver = self.change(cx, user, &key, Some(it));
        if let Some(el) = pushed {
            push(cx, user, el, ver);
        }
    }

    /// Deletes an item; `push_it` tells the user's sessions, which is wrong only for an item
    /// they never saw (a pending request that was withdrawn).
    pub fn delete(&self, cx: &mut Cx, user: &str, contact: &Jid, push_it: bool) {
        let key = contact.to_string();
        let ver = self.change(cx, user, &key, None);
        if push_it {
            let el = Element::new("item", ns::ROSTER)
                .with_attr("jid", key)
                .with_attr("subscription", "remove");
            push(cx, user, el, ver);
        }
    }

    fn get(
        &self,
        cx: &mut Cx,
        from: &Jid,
        user: &str,
        client_ver: Option<&str>,
    ) -> Result<Option<Element>, StanzaError> {
        cx.with_session(from, |s| s.interested = true);
        let q = self.with(cx, user, |r| {
            if client_ver.is_some_and(|v| v == r.ver.to_string()) {
                return None;
            }
            let mut q = Element::new("query", ns::ROSTER).with_attr("ver", r.ver.to_string());
            for (contact, it) in r.items.iter().filter(|(_, i)| i.visible) {
                q.push(item_xml(contact, it));
            }
            Some(q)
        });
        Ok(q)
    }

    fn set(
        &self,
        cx: &mut Cx,
        user: &str,
        payload: &Element,
    ) -> Result<Option<Element>, StanzaError> {
        let mut items = payload.elements().filter(|e| e.is("item", ns::ROSTER));
        let (Some(el), None) = (items.next(), items.next()) else {
            return Err(StanzaError::bad_request(
                "a roster set has exactly one item",
            ));
        };
        let contact = el
            .attr("jid")
            .and_then(|j| Jid::parse(j).ok())
            .filter(Jid::is_bare)
            .ok_or_else(|| StanzaError::new(Condition::JidMalformed))?;
        if el.attr("subscription") == Some("remove") {
            let Some(item) = self.item(cx, user, &contact).filter(|i| i.visible) else {
                return Err(StanzaError::new(Condition::ItemNotFound));
            };
            presence::cancel_all(cx, user, &contact, &item);
            self.delete(cx, user, &contact, true);
            return Ok(None);
        }
        let mut groups: Vec<String> = Vec::new();
        for g in el.elements().filter(|e| e.is("group", ns::ROSTER)) {
            let g = g.text();
            if g.is_empty() || g.len() > MAX_TEXT {
                return Err(StanzaError::with_text(
                    Condition::NotAcceptable,
                    "group names are 1 to 1023 bytes",
                ));
            }
            if groups.contains(&g) {
                return Err(StanzaError::bad_request("duplicate group"));
            }
            groups.push(g);
        }
        if groups.len() > MAX_GROUPS {
            return Err(StanzaError::with_text(
                Condition::NotAcceptable,
                "too many groups",
            ));
        }
        let name = el.attr("name").filter(|n| !n.is_empty());
        if name.is_some_and(|n| n.len() > MAX_TEXT) {
            return Err(StanzaError::with_text(
                Condition::NotAcceptable,
                "the name is too long",
            ));
        }
        if !self.has_room(cx, user, &contact) {
            return Err(roster_full());
        }
        let mut it = self.item(cx, user, &contact).unwrap_or_default();
        it.visible = true;
        it.name = name.map(str::to_owned);
        it.groups = groups;
        self.put(cx, user, &contact, it);
        Ok(None)
    }
}

impl Module for Roster {
    fn name(&self) -> &'static str {
        "roster"
    }
    fn iq_routes(&self) -> &'static [IqRoute] {
        const { &[IqRoute::new(ns::ROSTER, To::OWN)] }
    }
    fn handle_iq(&self, cx: &mut Cx, iq: &IqRequest) -> Result<Option<Element>, StanzaError> {
        let user = iq.from.local().unwrap_or_default();
        match iq.set {
            false => self.get(cx, iq.from, user, iq.payload.attr("ver")),
            true => self.set(cx, user, iq.payload),
        }
    }
    fn stream_features(&self, _cx: &Cx, stage: Stage, out: &mut Vec<Element>) {
        if stage == Stage::Bind {
            out.push(Element::new("ver", ns::ROSTER_VER));
        }
    }
    fn account_removed(&self, user: &str) {
        self.rosters.borrow_mut().remove(user);
    }
}

/// The user's own change would add an item to a full roster: theirs to make room in.
pub fn roster_full() -> StanzaError {
    StanzaError::with_text(
        Condition::NotAcceptable,
        "the roster is full; remove a contact first",
    )
}

pub fn item_xml(contact: &str, it: &RosterItem) -> Element {
    let mut el = Element::new("item", ns::ROSTER)
        .with_attr("jid", contact)
        .with_attr("subscription", it.subscription.as_str());
    if let Some(n) = &it.name {
        el.set_attr("name", n.as_str());
    }
    if it.ask {
        el.set_attr("ask", "subscribe");
    }
    if it.approved {
        el.set_attr("approved", "true");
    }
    for g in &it.groups {
        el.push(Element::new("group", ns::ROSTER).with_text(g.as_str()));
    }
    el
}

fn push(cx: &mut Cx, user: &str, item: Element, ver: u64) {
    let targets: Vec<Jid> = cx
        .sessions()
        .of(user)
        .iter()
        .filter(|s| s.interested)
        .map(|s| s.jid.clone())
        .collect();
    for to in targets {
        let query = Element::new("query", ns::ROSTER)
            .with_attr("ver", ver.to_string())
            .with_child(item.clone());
        cx.send(to.clone(), push_iq(&to, format!("push{ver}"), query));
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::TestRouter;
    use super::*;

    #[test]
    fn items_are_stored_pushed_and_versioned() {
        let t = TestRouter::new();
        let a = t.bind("alice", "phone");
        let a2 = t.bind("alice", "laptop");
        let out = t.client(
            &a,
            "<iq type='get' id='g1'><query xmlns='jabber:iq:roster'/></iq>",
        );
        out.assert_sent(
            &a,
            "<iq type='result' id='g1'><query xmlns='jabber:iq:roster' ver='0'/></iq>",
        );
        // Only sessions that asked for the roster get pushes.
        let out = t.client(
            &a,
            "<iq type='set' id='s1'><query xmlns='jabber:iq:roster'><item jid='bob@localhost' name='Bob'><group>Family</group></item></query></iq>",
        );
        out.assert_sent(&a, "<iq type='set'><query xmlns='jabber:iq:roster'><item jid='bob@localhost' name='Bob' subscription='none'><group>Family</group></item></query></iq>");
        out.assert_sent(&a, "<iq type='result' id='s1'/>");
        out.assert_nothing_to(&a2);
        let stored = USER_CONTACT_TO_ROSTER_ITEM
            .get(&t.router.store, "alice", "bob@localhost")
            .unwrap()
            .map(|s| RosterItem::decode(&s))
            .unwrap();
        assert_eq!(stored.name.as_deref(), Some("Bob"));
        // A get with the current version answers with an empty result.
        let ver = t
            .router
            .store
            .read()
            .unwrap()
            .open_table(USER_TO_ROSTER_VERSION.0)
            .unwrap()
            .get("alice")
            .unwrap()
            .unwrap()
            .value();
        let out = t.client(
            &a,
            &format!("<iq type='get' id='g2'><query xmlns='jabber:iq:roster' ver='{ver}'/></iq>"),
        );
        let reply = out.only_to(&a);
        assert!(reply.elements().next().is_none(), "{}", reply.to_xml());
        // Removal pushes subscription='remove' and deletes the row.
        let out = t.client(&a, "<iq type='set' id='r1'><query xmlns='jabber:iq:roster'><item jid='bob@localhost' subscription='remove'/></query></iq>");
        out.assert_sent(&a, "<iq type='set'><query xmlns='jabber:iq:roster'><item jid='bob@localhost' subscription='remove'/></query></iq>");
        assert!(
            t.router
                .store
                .rows_of("alice")
                .iter()
                .all(|(n, _)| n != "roster")
        );
    }

    #[test]
    fn bad_sets_are_refused() {
        let t = TestRouter::new();
        let a = t.bind("alice", "phone");
        let cases = [
            (
                "<iq type='set' id='1'><query xmlns='jabber:iq:roster'/></iq>",
                Condition::BadRequest,
            ),
            (
                "<iq type='set' id='2'><query xmlns='jabber:iq:roster'><item jid='b@localhost/r'/></query></iq>",
                Condition::JidMalformed,
            ),
            (
                "<iq type='set' id='3'><query xmlns='jabber:iq:roster'><item jid='b@localhost'><group>g</group><group>g</group></item></query></iq>",
                Condition::BadRequest,
            ),
            (
                "<iq type='set' id='4'><query xmlns='jabber:iq:roster'><item jid='nobody@localhost' subscription='remove'/></query></iq>",
                Condition::ItemNotFound,
            ),
            (
                "<iq type='get' id='5' to='bob@localhost'><query xmlns='jabber:iq:roster'/></iq>",
                Condition::ServiceUnavailable,
            ),
        ];
        for (xml, cond) in cases {
            let id = crate::modules::testing::parse(xml)
                .attr("id")
                .unwrap()
                .to_owned();
            t.client(&a, xml).assert_error(&a, &id, cond);
        }
    }

    #[test]
    fn a_full_roster_takes_no_new_contact() {
        let mut config = crate::config::Config::default();
        config.modules.roster.max_items = 2;
        let t = TestRouter::with_config(config, &["alice", "bob", "carol", "dave"]);
        let a = t.online("alice", "phone");
        let set = |id: &str, jid: &str| {
            t.client(&a, &format!("<iq type='set' id='{id}'><query xmlns='jabber:iq:roster'><item jid='{jid}'/></query></iq>"))
        };
        set("s1", "bob@localhost").assert_sent(&a, "<iq type='result' id='s1'/>");
        // A contact's pending request counts too: it is kept, though not shown.
        let c = t.online("carol", "pc");
        t.client(&c, "<presence type='subscribe' to='alice@localhost'/>");
        set("s2", "dave@localhost").assert_error(&a, "s2", Condition::NotAcceptable);
        // Changing an item that is there is no new item.
        set("s3", "bob@localhost").assert_sent(&a, "<iq type='result' id='s3'/>");
        let out = t.client(
            &a,
            "<presence type='subscribe' to='dave@localhost' id='p1'/>",
        );
        out.assert_error(&a, "p1", Condition::NotAcceptable);
        // Another contact's request is refused to that contact.
        let d = t.online("dave", "pc");
        let out = t.client(&d, "<presence type='subscribe' to='alice@localhost'/>");
        out.assert_sent(&d, "<presence type='error' from='alice@localhost'><error type='wait'><resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>");
        out.assert_nothing_to(&a);
        // Room made, room taken.
        t.client(&a, "<iq type='set' id='r1'><query xmlns='jabber:iq:roster'><item jid='bob@localhost' subscription='remove'/></query></iq>");
        set("s4", "dave@localhost").assert_sent(&a, "<iq type='result' id='s4'/>");
    }

    #[test]
    fn rosters_survive_a_restart_of_the_cache() {
        let t = TestRouter::new();
        let a = t.bind("alice", "phone");
        t.client(&a, "<iq type='set' id='s'><query xmlns='jabber:iq:roster'><item jid='bob@localhost'/></query></iq>");
        let roster = t
            .router
            .modules()
            .iter()
            .find_map(|m| (&**m as &dyn std::any::Any).downcast_ref::<Roster>())
            .unwrap();
        roster.account_removed("alice");
        let out = t.client(
            &a,
            "<iq type='get' id='g'><query xmlns='jabber:iq:roster'/></iq>",
        );
        out.assert_sent(&a, "<iq type='result' id='g'><query xmlns='jabber:iq:roster'><item jid='bob@localhost'/></query></iq>");
    }
}
