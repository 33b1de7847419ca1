//! XEP-0049 Private XML Storage v1.2, and bookmarks for every kind of client: XEP-0402 PEP
//! Native Bookmarks v1.2 §5.3 compatibility with XEP-0048 Bookmarks in private storage and in
//! PEP (XEP-0411 v1.1).
//!
//! - Each account keeps XML elements only it reads and writes, one per element name and
//!   namespace, each at most `max_item_bytes` and at most `max_items` of them; a set with
//!   several elements stores all or none (bookmarks among them are published room by room,
//!   so PEP refusing one, for its byte limit, leaves the rooms before it published and
//!   stores nothing else). Another account's storage is `forbidden`.
//! - Bookmarks live in one place, the `urn:xmpp:bookmarks:1` PEP node (whitelist access, one
//!   item per room, `max_items=max`), which modern clients use directly. The XEP-0048 forms
//!   are views of it: a `<storage xmlns='storage:bookmarks'/>` read from private storage or
//!   from the owner's PEP node `storage:bookmarks` (item `current`) lists those items, and
//!   writing one publishes the rooms that changed and retracts those that are gone, so that
//!   XEP-0402 clients hear of each change. Elements a XEP-0402 client keeps in a room's
//!   `<extensions/>` survive an edit by a client that does not know them. URL bookmarks,
//!   which XEP-0402 dropped, are not kept. Without PEP, bookmarks are private data like any.
//! - XEP-0411 §3: whatever changes the bookmarks, the owner's sessions whose caps ask for
//!   `storage:bookmarks+notify` get the whole XEP-0048 list as an event of that node, once
//!   per change (a XEP-0048 write is one change, however many rooms it touches).

use super::caps::Caps;
use super::pep::{Fields, Pep};
use super::{Cx, DiscoInfo, Entry, Flow, IqRequest, IqRoute, Module, Target, To};
use crate::jid::Jid;
use crate::router::Dest;
use crate::stanza::{Condition, Kind, Stanza, StanzaError, Type, iq_result};
use crate::storage::shapes::Map;
use crate::xml::{Element, ns, reader};
use redb::TableDefinition;
use serde::Deserialize;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};

/// (localpart, "name namespace") → the element's XML.
pub static USER_ELEMENT_TO_XML: Map<&str> = Map(TableDefinition::new("private"));

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub enabled: bool,
    /// Largest element one account may store, in bytes of XML.
    pub max_item_bytes: usize,
    /// Most elements one account may store.
    pub max_items: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: true,
            max_item_bytes: 65_536,
            max_items: 64,
        }
    }
}

pub const ENTRY: Entry = Entry {
    tables: &[&USER_ELEMENT_TO_XML],
    new: |config| {
        let c = &config.modules.private;
        c.enabled.then(|| {
            Box::new(Private {
                config: c.clone(),
                keys: RefCell::default(),
                replacing: Cell::new(false),
                changed_meanwhile: Cell::new(false),
                next_id: Cell::new(1),
            }) as Box<dyn Module>
        })
    },
};

pub struct Private {
    config: Config,
    /// The keys each account has stored, read once: for the count limit.
    keys: RefCell<HashMap<String, BTreeSet<String>>>,
    /// A XEP-0048 list is being turned into XEP-0402 items...
    replacing: Cell<bool>,
    /// ...and the bookmarks changed meanwhile.
    changed_meanwhile: Cell<bool>,
    next_id: Cell<u64>,
}

/// Where an element is kept: its name cannot hold a space, so this is unambiguous.
fn key(el: &Element) -> String {
    format!("{} {}", el.name, el.ns)
}

fn is_legacy_bookmarks(el: &Element) -> bool {
    el.is("storage", ns::BOOKMARKS_LEGACY)
}

/// XEP-0402 §3, as publish options: private, every room kept, nothing sent on presence.
fn bookmarks_options() -> Fields {
    [
        ("pubsub#persist_items", "true"),
        ("pubsub#max_items", "max"),
        ("pubsub#send_last_published_item", "never"),
        ("pubsub#access_model", "whitelist"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), vec![(*v).to_owned()]))
    .collect()
}

/// XEP-0048 §3.2 booleans: "true" or "1".
fn truth(v: &str) -> bool {
    v == "true" || v == "1"
}

/// The XEP-0402 payload for one XEP-0048 `<conference/>`, keeping the `<extensions/>` of the
/// item it replaces.
fn to_bookmark(conference: &Element, old: Option<&Element>) -> Element {
    let mut b = Element::new("conference", ns::BOOKMARKS);
    if let Some(name) = conference.attr("name") {
        b.set_attr("name", name);
    }
    if let Some(a) = conference.attr("autojoin") {
        b.set_attr("autojoin", if truth(a) { "true" } else { "false" });
    }
    for child in ["nick", "password"] {
        if let Some(c) = conference.child(child, ns::BOOKMARKS_LEGACY) {
            b.push(Element::new(child, ns::BOOKMARKS).with_text(c.text()));
        }
    }
    if let Some(ext) = old.and_then(|o| o.child("extensions", ns::BOOKMARKS)) {
        b.push(ext.clone());
    }
    b
}

/// The XEP-0048 `<conference/>` for one XEP-0402 item.
fn to_conference(jid: &str, bookmark: &Element) -> Element {
    let mut c = Element::new("conference", ns::BOOKMARKS_LEGACY).with_attr("jid", jid);
    if let Some(name) = bookmark.attr("name") {
        c.set_attr("name", name);
    }
    let autojoin = bookmark.attr("autojoin").is_some_and(truth);
    c.set_attr("autojoin", if autojoin { "true" } else { "false" });
    for child in ["nick", "password"] {
        if let Some(e) = bookmark.child(child, ns::BOOKMARKS) {
            c.push(Element::new(child, ns::BOOKMARKS_LEGACY).with_text(e.text()));
        }
    }
    c
}

/// The owner's bookmarks as a XEP-0048 `<storage/>`.
pub fn legacy_bookmarks(cx: &Cx, pep: &Pep, owner: &str) -> Element {
    let mut storage = Element::new("storage", ns::BOOKMARKS_LEGACY);
    for (id, payload) in pep.items_of(cx, owner, ns::BOOKMARKS) {
        if payload.is("conference", ns::BOOKMARKS) {
            storage.push(to_conference(&id, &payload));
        }
    }
    storage
}

/// Makes the owner's XEP-0402 bookmarks those of a XEP-0048 `<storage/>`: publishes the rooms
/// that are new or changed and retracts those that are gone.
fn replace_bookmarks(
    cx: &mut Cx,
    pep: &Pep,
    owner: &str,
    storage: &Element,
) -> Result<(), StanzaError> {
    // In the client's order, so that new rooms are published in it; a room named twice is
    // what its last mention says.
    let mut wanted: Vec<(String, &Element)> = Vec::new();
    for c in storage
        .elements()
        .filter(|e| e.is("conference", ns::BOOKMARKS_LEGACY))
    {
        let jid = c
            .attr("jid")
            .and_then(|j| Jid::parse(j).ok())
            .filter(Jid::is_bare)
            .ok_or_else(|| StanzaError::bad_request("a conference needs the bare JID of a room"))?;
        let jid = jid.to_string();
        match wanted.iter_mut().find(|(j, _)| *j == jid) {
            Some(w) => w.1 = c,
            None => wanted.push((jid, c)),
        }
    }
    if wanted.len() > pep.max_items() {
        return Err(StanzaError::with_text(
            Condition::PolicyViolation,
            format!("at most {} bookmarks", pep.max_items()),
        ));
    }
    pep.ensure_config(cx, owner, ns::BOOKMARKS, &bookmarks_options())?;
    let current: HashMap<String, Element> =
        pep.items_of(cx, owner, ns::BOOKMARKS).into_iter().collect();
    for (jid, conference) in &wanted {
        let old = current.get(jid.as_str());
        let new = to_bookmark(conference, old);
        if old != Some(&new) {
            pep.publish_item(cx, owner, ns::BOOKMARKS, Some(jid), new, None)?;
        }
    }
    let gone: Vec<&str> = current
        .keys()
        .filter(|id| !wanted.iter().any(|(j, _)| j == *id))
        .map(String::as_str)
        .collect();
    if !gone.is_empty() {
        pep.retract_items(cx, owner, ns::BOOKMARKS, &gone, Some(true))?;
    }
    Ok(())
}

impl Private {
    /// [`replace_bookmarks`], with one XEP-0048 notification for the whole change rather than
    /// one per room.
    fn set_bookmarks(
        &self,
        cx: &mut Cx,
        pep: &Pep,
        owner: &str,
        storage: &Element,
    ) -> Result<(), StanzaError> {
        self.replacing.set(true);
        let done = replace_bookmarks(cx, pep, owner, storage);
        self.replacing.set(false);
        if self.changed_meanwhile.replace(false) {
            self.tell_legacy_clients(cx, pep, owner);
        }
        done
    }

    /// XEP-0411 §3: the owner's sessions that follow the XEP-0048 PEP node hear of every
    /// change to the bookmarks, as an event of that node with the whole list.
    fn tell_legacy_clients(&self, cx: &mut Cx, pep: &Pep, owner: &str) {
        let wanted = format!("{}+notify", ns::BOOKMARKS_LEGACY);
        let caps = cx.module::<Caps>();
        let to: Vec<Jid> = cx
            .sessions()
            .available(owner)
            .map(|s| s.jid.clone())
            .filter(|j| {
                caps.and_then(|c| c.features(j))
                    .is_some_and(|f| f.contains(&wanted))
            })
            .collect();
        if to.is_empty() {
            return;
        }
        let item = Element::new("item", ns::PUBSUB_EVENT)
            .with_attr("id", "current")
            .with_child(legacy_bookmarks(cx, pep, owner));
        let event = Element::new("event", ns::PUBSUB_EVENT).with_child(
            Element::new("items", ns::PUBSUB_EVENT)
                .with_attr("node", ns::BOOKMARKS_LEGACY)
                .with_child(item),
        );
        let from = Jid::bare_from(owner, cx.domain()).to_string();
        for t in to {
            let n = self.next_id.get();
            self.next_id.set(n + 1);
            let el = Element::new("message", ns::CLIENT)
                .with_attr("type", "headline")
                .with_attr("id", format!("bookmarks-{n}"))
                .with_attr("from", from.as_str())
                .with_attr("to", t.to_string())
                .with_child(event.clone());
            cx.send(t, el);
        }
    }

    /// Runs `f` on `user`'s stored keys, read from the store the first time.
    fn with_keys<R>(
        &self,
        cx: &Cx,
        user: &str,
        f: impl FnOnce(&mut BTreeSet<String>) -> R,
    ) -> Result<R, StanzaError> {
        if !self.keys.borrow().contains_key(user) {
            let rows = USER_ELEMENT_TO_XML
                .all(cx.store(), user)
                .map_err(super::internal("reading private storage"))?;
            let keys = rows.into_iter().map(|(k, _)| k).collect();
            self.keys.borrow_mut().insert(user.to_owned(), keys);
        }
        let mut all = self.keys.borrow_mut();
        Ok(f(all.entry(user.to_owned()).or_default()))
    }

    fn check(&self, el: &Element) -> Result<(), StanzaError> {
        // An element without a namespace of its own is in jabber:iq:private (XEP-0049 §2).
        if el.ns == ns::PRIVATE || el.ns == ns::CLIENT || el.ns.is_empty() {
            return Err(StanzaError::with_text(
                Condition::NotAcceptable,
                "a stored element needs a namespace of its own",
            ));
        }
        if el.to_xml().len() > self.config.max_item_bytes {
            return Err(StanzaError::with_text(
                Condition::NotAcceptable,
                format!(
                    "a stored element is at most {} bytes",
                    self.config.max_item_bytes
                ),
            ));
        }
        Ok(())
    }

    fn get(&self, cx: &Cx, user: &str, query: &Element) -> Result<Element, StanzaError> {
        let asked: Vec<&Element> = query.elements().collect();
        let el = match asked.as_slice() {
            [el] => *el,
            [] => {
                return Err(StanzaError::with_text(
                    Condition::NotAcceptable,
                    "name the element to read",
                ));
            }
            _ => return Err(StanzaError::bad_request("read one element at a time")),
        };
        self.check(el)?;
        let found = match cx.module::<Pep>() {
            Some(pep) if is_legacy_bookmarks(el) => legacy_bookmarks(cx, pep, user),
            _ => USER_ELEMENT_TO_XML
                .get(cx.store(), user, &key(el))
                .map_err(super::internal("reading private storage"))?
                .and_then(|x| reader::parse_one(&x))
                .unwrap_or_else(|| el.shallow()),
        };
        Ok(Element::new("query", ns::PRIVATE).with_child(found))
    }

    fn set(&self, cx: &mut Cx, user: &str, query: &Element) -> Result<(), StanzaError> {
        let els: Vec<&Element> = query.elements().collect();
        if els.is_empty() {
            return Err(StanzaError::with_text(
                Condition::NotAcceptable,
                "give the elements to store",
            ));
        }
        for el in &els {
            self.check(el)?;
        }
        let pep = cx.module::<Pep>();
        let (bookmarks, stored): (Vec<&Element>, Vec<&Element>) = els
            .into_iter()
            .partition(|e| pep.is_some() && is_legacy_bookmarks(e));
        // An element with no content is the same as none: it takes no room.
        let (empty, full): (Vec<&Element>, Vec<&Element>) = stored
            .into_iter()
            .partition(|e| e.children.is_empty() && e.attrs.is_empty());
        let max = self.config.max_items;
        let after = self.with_keys(cx, user, |keys| {
            let mut after = keys.clone();
            after.extend(full.iter().map(|e| key(e)));
            for e in &empty {
                after.remove(&key(e));
            }
            match after.len() > max {
                true => Err(StanzaError::with_text(
                    Condition::PolicyViolation,
                    format!("an account stores at most {max} elements"),
                )),
                false => Ok(after),
            }
        })??;
        // The bookmarks first: when PEP refuses them, nothing else of the request is stored.
        if let (Some(pep), Some(b)) = (pep, bookmarks.last()) {
            self.set_bookmarks(cx, pep, user, b)?;
        }
        self.with_keys(cx, user, |keys| *keys = after)?;
        for e in empty {
            cx.write(USER_ELEMENT_TO_XML.delete(user, &key(e)));
        }
        for e in full {
            cx.write(USER_ELEMENT_TO_XML.put(user, &key(e), e.to_xml()));
        }
        Ok(())
    }

    /// XEP-0048 in PEP: the owner's requests to its `storage:bookmarks` node, which shows the
    /// XEP-0402 bookmarks. None: the request is about something else.
    fn legacy_pep(
        &self,
        cx: &mut Cx,
        pep: &Pep,
        user: &str,
        st: &Stanza,
    ) -> Option<Result<Element, StanzaError>> {
        let pubsub = st.payload().filter(|p| p.is("pubsub", ns::PUBSUB))?;
        let request = pubsub.elements().next()?;
        if request.attr("node") != Some(ns::BOOKMARKS_LEGACY) {
            return None;
        }
        let node = || Element::new("items", ns::PUBSUB).with_attr("node", ns::BOOKMARKS_LEGACY);
        match (request.name.as_str(), st.typ) {
            ("items", Type::Get) => {
                let item = Element::new("item", ns::PUBSUB)
                    .with_attr("id", "current")
                    .with_child(legacy_bookmarks(cx, pep, user));
                Some(Ok(
                    Element::new("pubsub", ns::PUBSUB).with_child(node().with_child(item))
                ))
            }
            ("publish", Type::Set) => {
                let storage = request
                    .child("item", ns::PUBSUB)
                    .and_then(|i| i.child("storage", ns::BOOKMARKS_LEGACY));
                let Some(storage) = storage else {
                    return Some(Err(StanzaError::bad_request(
                        "publish one item with a <storage xmlns='storage:bookmarks'/>",
                    )));
                };
                let done = self.set_bookmarks(cx, pep, user, storage).map(|()| {
                    let publish = Element::new("publish", ns::PUBSUB)
                        .with_attr("node", ns::BOOKMARKS_LEGACY)
                        .with_child(Element::new("item", ns::PUBSUB).with_attr("id", "current"));
                    Element::new("pubsub", ns::PUBSUB).with_child(publish)
                });
                Some(done)
            }
            _ => None,
        }
    }
}

impl Module for Private {
    fn name(&self) -> &'static str {
        "private"
    }

    fn disco(&self, cx: &Cx, target: &Target, info: &mut DiscoInfo) {
        match target {
            Target::Server => info.features.push(ns::PRIVATE),
            Target::Account { own: true, .. } if cx.module::<Pep>().is_some() => {
                info.features.extend([
                    ns::BOOKMARKS_COMPAT,
                    ns::BOOKMARKS_COMPAT_PEP,
                    ns::BOOKMARKS_CONVERSION,
                ]);
            }
            _ => {}
        }
    }

    fn iq_routes(&self) -> &'static [IqRoute] {
        const { &[IqRoute::new(ns::PRIVATE, To::ACCOUNTS)] }
    }

    fn handle_iq(&self, cx: &mut Cx, iq: &IqRequest) -> Result<Option<Element>, StanzaError> {
        let Target::Account { user, own: true } = iq.target else {
            return Err(StanzaError::new(Condition::Forbidden));
        };
        if !iq.payload.is("query", ns::PRIVATE) {
            return Err(StanzaError::bad_request(
                "the payload is a jabber:iq:private query",
            ));
        }
        match iq.set {
            false => self.get(cx, user, iq.payload).map(Some),
            true => self.set(cx, user, iq.payload).map(|()| None),
        }
    }

    fn iq_in(&self, cx: &mut Cx, user: &str, st: &mut Stanza) -> Result<Flow, StanzaError> {
        let to_account = st.to.as_ref().is_none_or(Jid::is_bare);
        let own = matches!(cx.destination(&st.from), Dest::Session(u) if u == user);
        if st.kind != Kind::Iq || !st.is_request() || !to_account || !own {
            return Ok(Flow::Continue);
        }
        let Some(pep) = cx.module::<Pep>() else {
            return Ok(Flow::Continue);
        };
        let Some(answer) = self.legacy_pep(cx, pep, user, st) else {
            return Ok(Flow::Continue);
        };
        let mut reply = iq_result(&st.el, Some(answer?));
        if st.to.is_none() {
            reply.remove_attr("from");
        }
        cx.send(st.from.clone(), reply);
        Ok(Flow::Handled)
    }

    fn pep_changed(&self, cx: &mut Cx, owner: &str, node: &str) {
        if node != ns::BOOKMARKS {
            return;
        }
        if self.replacing.get() {
            self.changed_meanwhile.set(true);
        } else if let Some(pep) = cx.module::<Pep>() {
            self.tell_legacy_clients(cx, pep, owner);
        }
    }

    fn account_removed(&self, user: &str) {
        self.keys.borrow_mut().remove(user);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Out, TestRouter};
    use super::*;
    use crate::config::Config as ServerConfig;

    fn private_set(t: &TestRouter, who: &Jid, inner: &str) -> Out {
        t.client(
            who,
            &format!("<iq type='set' id='s'><query xmlns='jabber:iq:private'>{inner}</query></iq>"),
        )
    }

    fn private_get(t: &TestRouter, who: &Jid, inner: &str) -> Out {
        t.client(
            who,
            &format!("<iq type='get' id='g'><query xmlns='jabber:iq:private'>{inner}</query></iq>"),
        )
    }

    /// The element in the private storage result `who` got.
    fn stored<'a>(out: &'a Out, who: &Jid) -> &'a Element {
        out.to(who)
            .into_iter()
            .find(|e| e.name == "iq" && e.attr("type") == Some("result"))
            .and_then(|e| e.child("query", ns::PRIVATE))
            .and_then(|q| q.elements().next())
            .unwrap_or_else(|| panic!("no stored element for {who}: {}", out.show()))
    }

    fn rows_besides_credentials(t: &TestRouter, user: &str) -> Vec<(String, usize)> {
        let mut rows = t.router.store.rows_of(user);
        rows.retain(|(table, _)| table != "credentials");
        rows
    }

    /// Rooms and their payloads in `owner`'s bookmarks node.
    fn bookmarks(t: &TestRouter, owner: &str) -> Vec<(String, Element)> {
        let cx = Cx::new(&t.router);
        t.module::<Pep>().items_of(&cx, owner, ns::BOOKMARKS)
    }

    #[test]
    fn elements_round_trip_and_stay_private() {
        let t = TestRouter::new();
        let a = t.online("alice", "phone");
        let b = t.online("bob", "pc");
        private_set(&t, &a, "<prefs xmlns='urn:example:prefs'><colour>green</colour></prefs><notes xmlns='urn:example:notes'>n</notes>")
            .assert_sent(&a, "<iq type='result' id='s'/>");
        let out = private_get(&t, &a, "<prefs xmlns='urn:example:prefs'/>");
        out.assert_sent(&a, "<iq type='result' id='g'><query xmlns='jabber:iq:private'><prefs xmlns='urn:example:prefs'><colour>green</colour></prefs></query></iq>");
        // Bob has his own storage, empty; alice's is not his to read or write.
        let out = private_get(&t, &b, "<prefs xmlns='urn:example:prefs'/>");
        assert!(stored(&out, &b).children.is_empty());
        let out = t.client(&b, "<iq type='get' id='x' to='alice@localhost'><query xmlns='jabber:iq:private'><prefs xmlns='urn:example:prefs'/></query></iq>");
        out.assert_error(&b, "x", Condition::Forbidden);
        let out = t.client(&b, "<iq type='set' id='y' to='alice@localhost'><query xmlns='jabber:iq:private'><prefs xmlns='urn:example:prefs'/></query></iq>");
        out.assert_error(&b, "y", Condition::Forbidden);
        // A set replaces the element of that name and namespace only.
        private_set(
            &t,
            &a,
            "<prefs xmlns='urn:example:prefs'><colour>red</colour></prefs>",
        );
        let out = private_get(&t, &a, "<prefs xmlns='urn:example:prefs'/>");
        assert_eq!(stored(&out, &a).elements().next().unwrap().text(), "red");
        let out = private_get(&t, &a, "<notes xmlns='urn:example:notes'/>");
        assert_eq!(stored(&out, &a).text(), "n");
        // The same name in another namespace is another element.
        let out = private_get(&t, &a, "<prefs xmlns='urn:example:other'/>");
        assert!(stored(&out, &a).children.is_empty());
        let rows: HashMap<String, usize> = t.router.store.rows_of("alice").into_iter().collect();
        assert_eq!(rows.get("private"), Some(&2));
        assert_eq!(rows_besides_credentials(&t, "bob"), vec![]);
    }

    #[test]
    fn malformed_requests_are_refused() {
        let t = TestRouter::new();
        let a = t.online("alice", "phone");
        private_get(&t, &a, "").assert_error(&a, "g", Condition::NotAcceptable);
        private_set(&t, &a, "").assert_error(&a, "s", Condition::NotAcceptable);
        private_get(&t, &a, "<a xmlns='urn:a'/><b xmlns='urn:b'/>").assert_error(
            &a,
            "g",
            Condition::BadRequest,
        );
        // No namespace of its own, or a reserved one.
        private_set(&t, &a, "<a/>").assert_error(&a, "s", Condition::NotAcceptable);
        private_set(&t, &a, "<a xmlns='jabber:client'/>").assert_error(
            &a,
            "s",
            Condition::NotAcceptable,
        );
        assert_eq!(rows_besides_credentials(&t, "alice"), vec![]);
    }

    #[test]
    fn sizes_and_counts_are_bounded_and_a_refused_set_stores_nothing() {
        let mut cfg = ServerConfig::default();
        cfg.modules.private.max_item_bytes = 1024;
        cfg.modules.private.max_items = 3;
        let t = TestRouter::with_config(cfg, &["alice"]);
        let a = t.online("alice", "phone");
        let big = format!("<big xmlns='urn:big'>{}</big>", "x".repeat(2000));
        private_set(&t, &a, &big).assert_error(&a, "s", Condition::NotAcceptable);
        let many: String = (0..4)
            .map(|i| format!("<e{i} xmlns='urn:e'>v</e{i}>"))
            .collect();
        private_set(&t, &a, &many).assert_error(&a, "s", Condition::PolicyViolation);
        assert_eq!(rows_besides_credentials(&t, "alice"), vec![]);
        let three: String = (0..3)
            .map(|i| format!("<e{i} xmlns='urn:e'>v</e{i}>"))
            .collect();
        private_set(&t, &a, &three).assert_sent(&a, "<iq type='result' id='s'/>");
        // Replacing one is fine; a fourth is not, and emptying one makes room.
        private_set(&t, &a, "<e0 xmlns='urn:e'>w</e0>")
            .assert_sent(&a, "<iq type='result' id='s'/>");
        private_set(&t, &a, "<e3 xmlns='urn:e'>v</e3>").assert_error(
            &a,
            "s",
            Condition::PolicyViolation,
        );
        private_set(&t, &a, "<e0 xmlns='urn:e'/>").assert_sent(&a, "<iq type='result' id='s'/>");
        private_set(&t, &a, "<e3 xmlns='urn:e'>v</e3>")
            .assert_sent(&a, "<iq type='result' id='s'/>");
        let rows: HashMap<String, usize> = t.router.store.rows_of("alice").into_iter().collect();
        assert_eq!(rows.get("private"), Some(&3));
    }

    const LEGACY: &str = "<storage xmlns='storage:bookmarks'>\
        <conference jid='family@muc.localhost' name='Family' autojoin='1'><nick>Al</nick></conference>\
        <conference jid='club@muc.localhost' autojoin='false'/>\
        <url name='site' url='https://example.org'/></storage>";

    #[test]
    fn private_storage_bookmarks_are_the_pep_bookmarks() {
        let t = TestRouter::new();
        let a = t.online("alice", "phone");
        let b = t.online("bob", "pc");
        private_set(&t, &a, LEGACY).assert_sent(&a, "<iq type='result' id='s'/>");
        // Two rooms, in the XEP-0402 form and the client's order, in a private node; nothing
        // in private storage.
        let items = bookmarks(&t, "alice");
        let rooms: Vec<&str> = items.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(rooms, vec!["family@muc.localhost", "club@muc.localhost"]);
        let family = &items[0].1;
        assert_eq!(family.attr("autojoin"), Some("true"));
        assert_eq!(family.attr("name"), Some("Family"));
        assert_eq!(
            family.child("nick", ns::BOOKMARKS).map(Element::text),
            Some("Al".into())
        );
        assert!(
            t.router
                .store
                .rows_of("alice")
                .iter()
                .all(|(t, _)| t != "private")
        );
        let out = t.client(&b, "<iq type='get' id='i' to='alice@localhost'><pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='urn:xmpp:bookmarks:1'/></pubsub></iq>");
        out.assert_error(&b, "i", Condition::NotAllowed);
        // The legacy view reads them back.
        let out = private_get(&t, &a, "<storage xmlns='storage:bookmarks'/>");
        out.assert_sent(&a, "<iq type='result' id='g'><query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'>\
            <conference jid='family@muc.localhost' name='Family' autojoin='true'><nick>Al</nick></conference>\
            <conference jid='club@muc.localhost' autojoin='false'/></storage></query></iq>");
        // Bob's bookmarks are his own.
        let out = private_get(&t, &b, "<storage xmlns='storage:bookmarks'/>");
        assert!(stored(&out, &b).children.is_empty());
    }

    #[test]
    fn xep_0402_clients_hear_of_legacy_changes_and_keep_their_extensions() {
        let t = TestRouter::new();
        let a = t.online("alice", "phone");
        // A XEP-0402 client adds a room with an extension of its own.
        let publish = "<iq type='set' id='p'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='urn:xmpp:bookmarks:1'>\
            <item id='family@muc.localhost'><conference xmlns='urn:xmpp:bookmarks:1' name='Family' autojoin='true'>\
            <extensions><state xmlns='urn:example:client' minimized='true'/></extensions></conference></item></publish>\
            <publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>\
            <value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
            <field var='pubsub#persist_items'><value>true</value></field>\
            <field var='pubsub#max_items'><value>max</value></field>\
            <field var='pubsub#send_last_published_item'><value>never</value></field>\
            <field var='pubsub#access_model'><value>whitelist</value></field></x></publish-options></pubsub></iq>";
        t.client(&a, publish)
            .assert_sent(&a, "<iq type='result' id='p'/>");
        // A legacy client renames it and adds another: the extension stays.
        let out = private_set(
            &t,
            &a,
            "<storage xmlns='storage:bookmarks'>\
            <conference jid='family@muc.localhost' name='Home' autojoin='true'/>\
            <conference jid='club@muc.localhost'/></storage>",
        );
        out.assert_sent(&a, "<iq type='result' id='s'/>");
        let items = bookmarks(&t, "alice");
        let family = &items
            .iter()
            .find(|(id, _)| id == "family@muc.localhost")
            .unwrap()
            .1;
        assert_eq!(family.attr("name"), Some("Home"));
        assert!(family.child("extensions", ns::BOOKMARKS).is_some());
        // The same list again changes nothing; dropping a room retracts it.
        let out = private_set(
            &t,
            &a,
            "<storage xmlns='storage:bookmarks'>\
            <conference jid='club@muc.localhost'/></storage>",
        );
        out.assert_sent(&a, "<iq type='result' id='s'/>");
        let rooms: Vec<String> = bookmarks(&t, "alice")
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(rooms, vec!["club@muc.localhost"]);
        // An empty list empties the node.
        private_set(&t, &a, "<storage xmlns='storage:bookmarks'/>")
            .assert_sent(&a, "<iq type='result' id='s'/>");
        assert!(bookmarks(&t, "alice").is_empty());
    }

    #[test]
    fn a_legacy_set_keeps_the_bookmarks_node_private() {
        let t = TestRouter::new();
        let a = t.online("alice", "phone");
        // A careless client made the node readable by contacts.
        t.client(&a, "<iq type='set' id='p'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='urn:xmpp:bookmarks:1'>\
            <item id='x@muc.localhost'><conference xmlns='urn:xmpp:bookmarks:1'/></item></publish></pubsub></iq>");
        private_set(&t, &a, LEGACY).assert_sent(&a, "<iq type='result' id='s'/>");
        let out = t.client(&a, "<iq type='get' id='c'><pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><configure node='urn:xmpp:bookmarks:1'/></pubsub></iq>");
        out.assert_sent(&a, "<iq type='result' id='c'><pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><configure><x xmlns='jabber:x:data'>\
            <field var='pubsub#access_model'><value>whitelist</value></field></x></configure></pubsub></iq>");
        // A conference without a room JID is refused, and changes nothing.
        let out = private_set(
            &t,
            &a,
            "<storage xmlns='storage:bookmarks'><conference name='?'/></storage>",
        );
        out.assert_error(&a, "s", Condition::BadRequest);
        assert_eq!(bookmarks(&t, "alice").len(), 2);
    }

    #[test]
    fn the_legacy_pep_node_is_a_view_of_the_bookmarks() {
        let t = TestRouter::new();
        let a = t.online("alice", "phone");
        let b = t.online("bob", "pc");
        let publish = format!(
            "<iq type='set' id='p'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='storage:bookmarks'>\
            <item id='current'>{LEGACY}</item></publish></pubsub></iq>"
        );
        let out = t.client(&a, &publish);
        out.assert_sent(&a, "<iq type='result' id='p'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='storage:bookmarks'><item id='current'/></publish></pubsub></iq>");
        assert_eq!(bookmarks(&t, "alice").len(), 2);
        let get = "<iq type='get' id='i'><pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='storage:bookmarks'/></pubsub></iq>";
        let out = t.client(&a, get);
        out.assert_sent(&a, "<iq type='result' id='i'><pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='storage:bookmarks'><item id='current'>\
            <storage xmlns='storage:bookmarks'><conference jid='family@muc.localhost'/></storage></item></items></pubsub></iq>");
        // Only the owner has this view; to others the node does not exist.
        let out = t.client(&b, "<iq type='get' id='i' to='alice@localhost'><pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='storage:bookmarks'/></pubsub></iq>");
        out.assert_error(&b, "i", Condition::ItemNotFound);
        let out = t.client(&b, "<iq type='set' id='j' to='alice@localhost'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='storage:bookmarks'><item id='current'><storage xmlns='storage:bookmarks'/></item></publish></pubsub></iq>");
        out.assert_error(&b, "j", Condition::Forbidden);
        assert_eq!(bookmarks(&t, "alice").len(), 2);
    }

    /// The XEP-0048 lists `who` got as `storage:bookmarks` events: the rooms of each.
    fn legacy_events(out: &Out, who: &Jid) -> Vec<Vec<String>> {
        out.to(who)
            .into_iter()
            .filter(|m| m.name == "message" && m.attr("type") == Some("headline"))
            .filter_map(|m| m.child("event", ns::PUBSUB_EVENT))
            .filter_map(|e| e.child("items", ns::PUBSUB_EVENT))
            .filter(|i| i.attr("node") == Some(ns::BOOKMARKS_LEGACY))
            .filter_map(|i| i.child("item", ns::PUBSUB_EVENT))
            .filter_map(|i| i.child("storage", ns::BOOKMARKS_LEGACY))
            .map(|s| {
                s.elements()
                    .filter_map(|c| c.attr("jid").map(str::to_owned))
                    .collect()
            })
            .collect()
    }

    /// The XEP-0402 events `who` got: (published ids, retracted ids).
    fn events(out: &Out, who: &Jid) -> (Vec<String>, Vec<String>) {
        let mut published = Vec::new();
        let mut retracted = Vec::new();
        for items in out
            .to(who)
            .into_iter()
            .filter_map(|m| m.child("event", ns::PUBSUB_EVENT))
            .filter_map(|e| e.child("items", ns::PUBSUB_EVENT))
            .filter(|i| i.attr("node") == Some(ns::BOOKMARKS))
        {
            for e in items.elements() {
                let id = e.attr("id").unwrap_or_default().to_owned();
                match e.name.as_str() {
                    "item" => published.push(id),
                    _ => retracted.push(id),
                }
            }
        }
        (published, retracted)
    }

    #[test]
    fn every_client_hears_of_every_change_in_its_own_form() {
        let t = TestRouter::new();
        let legacy_notify = format!("{}+notify", ns::BOOKMARKS_LEGACY);
        let modern_notify = format!("{}+notify", ns::BOOKMARKS);
        let (old, _) = t.online_with_caps("alice", "old", &[ns::BOOKMARKS_LEGACY, &legacy_notify]);
        let (new, _) = t.online_with_caps("alice", "new", &[ns::BOOKMARKS, &modern_notify]);
        let (bob, _) = t.online_with_caps(
            "bob",
            "pc",
            &[
                ns::BOOKMARKS_LEGACY,
                &legacy_notify,
                ns::BOOKMARKS,
                &modern_notify,
            ],
        );
        // A legacy write: the modern client hears of each room, the legacy one of the list once.
        let out = private_set(&t, &old, LEGACY);
        assert_eq!(
            legacy_events(&out, &old),
            vec![vec!["family@muc.localhost", "club@muc.localhost"]]
        );
        let (mut published, _) = events(&out, &new);
        published.sort();
        assert_eq!(
            published,
            vec!["club@muc.localhost", "family@muc.localhost"]
        );
        assert!(events(&out, &old).0.is_empty());
        // Nobody else hears of alice's bookmarks.
        out.assert_nothing_to(&bob);
        // A modern client removes a room: both hear of it.
        let out = t.client(&new, "<iq type='set' id='r'><pubsub xmlns='http://jabber.org/protocol/pubsub'><retract node='urn:xmpp:bookmarks:1' notify='true'><item id='club@muc.localhost'/></retract></pubsub></iq>");
        out.assert_sent(&new, "<iq type='result' id='r'/>");
        assert_eq!(events(&out, &new).1, vec!["club@muc.localhost"]);
        assert_eq!(
            legacy_events(&out, &old),
            vec![vec!["family@muc.localhost"]]
        );
        out.assert_nothing_to(&bob);
        // Writing the same list again tells nobody of anything.
        let out = private_set(
            &t,
            &old,
            "<storage xmlns='storage:bookmarks'><conference jid='family@muc.localhost' name='Family' autojoin='true'><nick>Al</nick></conference></storage>",
        );
        out.assert_sent(&old, "<iq type='result' id='s'/>");
        assert!(legacy_events(&out, &old).is_empty());
        assert_eq!(events(&out, &new), (vec![], vec![]));
    }

    #[test]
    fn refused_bookmarks_store_nothing_else_of_the_request() {
        let mut cfg = ServerConfig::default();
        cfg.modules.pep.max_items = 2;
        let t = TestRouter::with_config(cfg, &["alice"]);
        let a = t.online("alice", "phone");
        let three: String = (0..3)
            .map(|i| format!("<conference jid='r{i}@muc.localhost'/>"))
            .collect();
        let out = private_set(
            &t,
            &a,
            &format!(
                "<n xmlns='urn:example:notes'>x</n><storage xmlns='storage:bookmarks'>{three}</storage>"
            ),
        );
        out.assert_error(&a, "s", Condition::PolicyViolation);
        assert_eq!(rows_besides_credentials(&t, "alice"), vec![]);
        let out = private_get(&t, &a, "<n xmlns='urn:example:notes'/>");
        assert!(stored(&out, &a).children.is_empty());
    }

    #[test]
    fn without_pep_bookmarks_are_private_data() {
        let mut cfg = ServerConfig::default();
        cfg.modules.pep.enabled = false;
        let t = TestRouter::with_config(cfg, &["alice"]);
        let a = t.online("alice", "phone");
        private_set(&t, &a, LEGACY).assert_sent(&a, "<iq type='result' id='s'/>");
        let out = private_get(&t, &a, "<storage xmlns='storage:bookmarks'/>");
        assert_eq!(stored(&out, &a).elements().count(), 3);
        let out = t.client(&a, "<iq type='get' id='d' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
        out.assert_sent(&a, "<iq type='result' id='d'/>");
        out.assert_not_sent(&a, "<iq><query xmlns='http://jabber.org/protocol/disco#info'><feature var='urn:xmpp:bookmarks:1#compat'/></query></iq>");
    }

    #[test]
    fn disco_advertises_the_storage_and_the_conversions() {
        let t = TestRouter::new();
        let a = t.online("alice", "phone");
        let out = t.client(&a, "<iq type='get' id='d' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
        out.assert_sent(&a, "<iq type='result'><query xmlns='http://jabber.org/protocol/disco#info'><feature var='jabber:iq:private'/></query></iq>");
        let out = t.client(&a, "<iq type='get' id='d' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
        for f in [
            ns::BOOKMARKS_COMPAT,
            ns::BOOKMARKS_COMPAT_PEP,
            ns::BOOKMARKS_CONVERSION,
        ] {
            out.assert_sent(
                &a,
                &format!(
                    "<iq type='result'><query xmlns='{}'><feature var='{f}'/></query></iq>",
                    ns::DISCO_INFO
                ),
            );
        }
    }
}
