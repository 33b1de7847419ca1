//! XEP-0163 Personal Eventing Protocol, v1.2, on XEP-0060 Publish-Subscribe, v1.26: every
//! account's bare JID is a pubsub service whose nodes only the account publishes to.
//!
//! - Publishing creates a node that does not exist (`auto-create`), configured by the XEP-0223
//!   publish options given; options that differ from an existing node's configuration refuse
//!   the publish with `<conflict/>` and `<precondition-not-met/>` (XEP-0060 §7.1.5). An item
//!   with the id of one already there replaces it and becomes the newest; beyond
//!   `pubsub#max_items` (a number, or `max`: the server's limit) the oldest go.
//! - Access models `presence` (the default: whoever is subscribed to the owner's presence),
//!   `open`, `roster` (`pubsub#roster_groups_allowed`) and `whitelist` (the owner only:
//!   affiliations are not implemented). Items are read by id or as the latest N.
//! - Retract (with notifications when asked or configured), purge, delete, explicit create
//!   with a configuration, and the owner's configuration form (`pubsub#node_config`).
//! - Notifications (XEP-0163 §4, XEP-0060 §7.1.2.1) go as headline messages from the owner's
//!   bare JID to each available session that may read the node, whose presence reached the
//!   owner's account (its own sessions, and contacts subscribed to the owner's presence), and
//!   whose XEP-0115 caps include `<node>+notify` (see `caps.rs`). A session learns the last
//!   item of each such node when its presence or probe reaches the owner's account (and the
//!   owner's own sessions at their initial presence), when the owner approves its
//!   subscription, and when its caps become known: nothing goes to it before the server knows
//!   what it wants.
//! - `pubsub#persist_items = false` keeps only the last item, in memory, lost on restart.
//!
//! Each account's nodes and the ids, sequences and sizes of their items are read once and kept
//! in memory, written through to the store: every decision (limits, trimming, preconditions)
//! is made there, and each change is one write. Payloads stay on disk but the last item of
//! recently used nodes, which notifications send, is cached within `cache_bytes`. Sizes are
//! bounded by config: an item, the items of a node, the nodes and the bytes of an account.
//!
//! Left out: explicit subscriptions, affiliations, collections, node meta-data forms,
//! `authorize` access and XEP-0033 `replyto` on notifications.

mod node;
mod store;

use super::caps::Caps;
use super::roster::Roster;
use super::{Cx, DiscoInfo, Entry, Flow, IqRequest, IqRoute, Module, SessionEvent, Target, To};
use crate::jid::Jid;
use crate::router::Dest;
use crate::stanza::{Condition, Kind, Origin, Stanza, StanzaError, Type};
use crate::xml::{Element, ns, reader};
pub use node::Fields;
use node::{Access, NodeConfig, SendLast, read_form};
use serde::Deserialize;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use store::Change;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub enabled: bool,
    /// Largest item (its payload's XML and its id), in bytes.
    pub max_item_bytes: usize,
    /// Most items one node keeps: what `pubsub#max_items = max` means.
    pub max_items: usize,
    /// Most nodes one account has.
    pub max_nodes: usize,
    /// Most bytes of items one account keeps, all nodes together.
    pub max_account_bytes: usize,
    /// Bytes of last items kept in memory for notifications.
    pub cache_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: true,
            max_item_bytes: 131_072,
            max_items: 256,
            max_nodes: 128,
            max_account_bytes: 4 << 20,
            cache_bytes: 2 << 20,
        }
    }
}

pub const ENTRY: Entry = Entry {
    tables: &[&store::USER_NODE_TO_CONFIG, &store::USER_NODE_SEQ_TO_ITEM],
    new: |config| {
        let c = &config.modules.pep;
        c.enabled
            .then(|| Box::new(Pep::new(c.clone())) as Box<dyn Module>)
    },
};

/// Longest node name and item id, in bytes.
const MAX_NAME: usize = 1023;

/// The `pubsub#...` features this service implements (XEP-0060 §10).
const FEATURES: &[&str] = &[
    "http://jabber.org/protocol/pubsub#access-open",
    "http://jabber.org/protocol/pubsub#access-presence",
    "http://jabber.org/protocol/pubsub#access-roster",
    "http://jabber.org/protocol/pubsub#access-whitelist",
    "http://jabber.org/protocol/pubsub#auto-create",
    "http://jabber.org/protocol/pubsub#auto-subscribe",
    "http://jabber.org/protocol/pubsub#config-node",
    "http://jabber.org/protocol/pubsub#create-and-configure",
    "http://jabber.org/protocol/pubsub#create-nodes",
    "http://jabber.org/protocol/pubsub#delete-items",
    "http://jabber.org/protocol/pubsub#delete-nodes",
    "http://jabber.org/protocol/pubsub#filtered-notifications",
    "http://jabber.org/protocol/pubsub#item-ids",
    "http://jabber.org/protocol/pubsub#last-published",
    "http://jabber.org/protocol/pubsub#persistent-items",
    "http://jabber.org/protocol/pubsub#presence-notifications",
    "http://jabber.org/protocol/pubsub#publish",
    "http://jabber.org/protocol/pubsub#publish-options",
    "http://jabber.org/protocol/pubsub#purge-nodes",
    "http://jabber.org/protocol/pubsub#retract-items",
    "http://jabber.org/protocol/pubsub#retrieve-default",
    "http://jabber.org/protocol/pubsub#retrieve-items",
];

/// Where one stored item is, and its size (id and payload XML).
#[derive(Clone, Debug)]
struct ItemRef {
    id: String,
    seq: u64,
    size: usize,
}

struct Node {
    config: NodeConfig,
    /// Stored items, oldest first.
    items: Vec<ItemRef>,
    next_seq: u64,
    /// The last item of a node that does not persist items: (id, payload).
    transient: Option<(String, Element)>,
}

impl Node {
    fn new(config: NodeConfig) -> Node {
        Node {
            config,
            items: Vec::new(),
            next_seq: 1,
            transient: None,
        }
    }

    fn bytes(&self) -> usize {
        let stored: usize = self.items.iter().map(|i| i.size).sum();
        let transient = self
            .transient
            .as_ref()
            .map_or(0, |(id, p)| id.len() + p.to_xml().len());
        stored + transient
    }
}

#[derive(Default)]
struct Account {
    nodes: BTreeMap<String, Node>,
}

impl Account {
    fn bytes(&self) -> usize {
        self.nodes.values().map(Node::bytes).sum()
    }
}

/// The last item of recently used nodes, least recently used first out, within a byte budget.
struct LastItems {
    budget: usize,
    bytes: usize,
    tick: u64,
    /// (owner, node) → (item id, payload, size, tick of last use)
    map: HashMap<(String, String), (String, Element, usize, u64)>,
    lru: BTreeMap<u64, (String, String)>,
}

impl LastItems {
    fn get(&mut self, key: &(String, String), id: &str) -> Option<Element> {
        self.tick += 1;
        let t = self.tick;
        let entry = self.map.get_mut(key).filter(|e| e.0 == id)?;
        self.lru.remove(&entry.3);
        self.lru.insert(t, key.clone());
        entry.3 = t;
        Some(entry.1.clone())
    }

    fn put(&mut self, key: (String, String), id: String, payload: Element, size: usize) {
        self.forget(&key);
        if size > self.budget {
            return;
        }
        self.tick += 1;
        self.lru.insert(self.tick, key.clone());
        self.map.insert(key, (id, payload, size, self.tick));
        self.bytes += size;
        while self.bytes > self.budget {
            let Some((_, oldest)) = self.lru.pop_first() else {
                break;
            };
            if let Some(e) = self.map.remove(&oldest) {
                self.bytes -= e.2;
            }
        }
    }

    fn forget(&mut self, key: &(String, String)) {
        if let Some(e) = self.map.remove(key) {
            self.lru.remove(&e.3);
            self.bytes -= e.2;
        }
    }

    fn forget_user(&mut self, user: &str) {
        let keys: Vec<(String, String)> =
            self.map.keys().filter(|k| k.0 == user).cloned().collect();
        for k in keys {
            self.forget(&k);
        }
    }
}

pub struct Pep {
    config: Config,
    accounts: RefCell<HashMap<String, Account>>,
    last: RefCell<LastItems>,
    /// Sessions whose presence reached an owner's account: session → owner → the nodes whose
    /// last item the session has been given (its `+notify` ones, once its caps were known).
    served: RefCell<HashMap<Jid, HashMap<String, BTreeSet<String>>>>,
    next_id: Cell<u64>,
}

fn pubsub_error(condition: Condition, app: &str) -> StanzaError {
    StanzaError::new(condition).with_app(Element::new(app, ns::PUBSUB_ERRORS))
}

fn precondition() -> StanzaError {
    pubsub_error(Condition::Conflict, "precondition-not-met")
}

fn unsupported(feature: &str) -> StanzaError {
    StanzaError::new(Condition::FeatureNotImplemented)
        .with_app(Element::new("unsupported", ns::PUBSUB_ERRORS).with_attr("feature", feature))
}

fn node_name(el: &Element) -> Result<&str, StanzaError> {
    match el.attr("node") {
        Some(n) if !n.is_empty() && n.len() <= MAX_NAME => Ok(n),
        Some(n) if !n.is_empty() => Err(StanzaError::with_text(
            Condition::NotAcceptable,
            format!("a node name is at most {MAX_NAME} bytes"),
        )),
        _ => Err(pubsub_error(Condition::BadRequest, "nodeid-required")),
    }
}

fn item_not_found() -> StanzaError {
    StanzaError::new(Condition::ItemNotFound)
}

/// `<item id=..>payload</item>` in namespace `ns`; without payload when `payload` is None.
fn item_xml(item_ns: &str, id: &str, payload: Option<Element>) -> Element {
    let mut item = Element::new("item", item_ns).with_attr("id", id);
    if let Some(p) = payload {
        item.push(p);
    }
    item
}

/// The publish options of a `<pubsub/>` request, if it has any.
fn publish_options(pubsub: &Element) -> Result<Option<Fields>, StanzaError> {
    let Some(po) = pubsub.child("publish-options", ns::PUBSUB) else {
        return Ok(None);
    };
    match po.child("x", ns::DATA_FORMS) {
        Some(x) => read_form(x, ns::PUBSUB_PUBLISH_OPTIONS),
        None => Ok(None),
    }
}

/// Tells every module that `owner`'s `node` changed (`Module::pep_changed`).
fn changed(cx: &mut Cx, owner: &str, node: &str) {
    for m in cx.modules() {
        m.pep_changed(cx, owner, node);
    }
}

impl Pep {
    pub fn new(config: Config) -> Pep {
        Pep {
            last: RefCell::new(LastItems {
                budget: config.cache_bytes,
                bytes: 0,
                tick: 0,
                map: HashMap::new(),
                lru: BTreeMap::new(),
            }),
            config,
            accounts: RefCell::default(),
            served: RefCell::default(),
            next_id: Cell::new(1),
        }
    }

    fn next(&self) -> u64 {
        let n = self.next_id.get();
        self.next_id.set(n + 1);
        n
    }

    /// Reads `user`'s nodes from the store the first time.
    fn load(&self, cx: &Cx, user: &str) -> Result<(), StanzaError> {
        if self.accounts.borrow().contains_key(user) {
            return Ok(());
        }
        let internal = super::internal("reading PEP nodes");
        let configs = store::USER_NODE_TO_CONFIG
            .all(cx.store(), user)
            .map_err(&internal)?;
        let rows = store::rows(cx.store(), user).map_err(&internal)?;
        let mut account = Account::default();
        for (name, c) in configs {
            account
                .nodes
                .insert(name, Node::new(NodeConfig::decode(&c)));
        }
        for r in rows {
            let Some(n) = account.nodes.get_mut(&r.node) else {
                continue;
            };
            n.next_seq = n.next_seq.max(r.seq + 1);
            n.items.push(ItemRef {
                id: r.id,
                seq: r.seq,
                size: r.size,
            });
        }
        self.accounts.borrow_mut().insert(user.to_owned(), account);
        Ok(())
    }

    /// Runs `f` on `user`'s nodes.
    fn with<R>(
        &self,
        cx: &Cx,
        user: &str,
        f: impl FnOnce(&mut Account) -> R,
    ) -> Result<R, StanzaError> {
        self.load(cx, user)?;
        let mut accounts = self.accounts.borrow_mut();
        let account = accounts.entry(user.to_owned()).or_default();
        Ok(f(account))
    }

    fn config_of(&self, cx: &Cx, user: &str, node: &str) -> Option<NodeConfig> {
        self.with(cx, user, |a| a.nodes.get(node).map(|n| n.config.clone()))
            .ok()
            .flatten()
    }

    /// Whether `who` may read a node of `owner` configured as `config`; the error says why not
    /// (XEP-0060 §6.5.9).
    fn may_read(
        &self,
        cx: &Cx,
        owner: &str,
        who: &Jid,
        config: &NodeConfig,
    ) -> Result<(), StanzaError> {
        let bare = who.bare();
        if matches!(cx.destination(&bare), Dest::Account(u) if u == owner) {
            return Ok(());
        }
        let item = || {
            cx.module::<Roster>()
                .and_then(|r| r.item(cx, owner, &bare))
                .unwrap_or_default()
        };
        match config.access_model {
            Access::Open => Ok(()),
            Access::Presence if item().subscription.from() => Ok(()),
            Access::Presence => Err(pubsub_error(
                Condition::NotAuthorized,
                "presence-subscription-required",
            )),
            Access::Roster => {
                let it = item();
                let allowed = it.visible
                    && it
                        .groups
                        .iter()
                        .any(|g| config.roster_groups_allowed.contains(g));
                match allowed {
                    true => Ok(()),
                    false => Err(pubsub_error(
                        Condition::NotAuthorized,
                        "not-in-roster-group",
                    )),
                }
            }
            Access::Whitelist => Err(pubsub_error(Condition::NotAllowed, "closed-node")),
        }
    }

    /// The last item of `owner`'s `node`: (id, payload). For modules that build on PEP
    /// (a vCard that shows the PEP avatar, say) as well as for notifications.
    pub fn last_item(&self, cx: &Cx, owner: &str, node: &str) -> Option<(String, Element)> {
        let (id, seq, transient) = self
            .with(cx, owner, |a| {
                let n = a.nodes.get(node)?;
                if let Some(t) = &n.transient {
                    return Some((t.0.clone(), 0, Some(t.1.clone())));
                }
                n.items.last().map(|i| (i.id.clone(), i.seq, None))
            })
            .ok()
            .flatten()?;
        if let Some(p) = transient {
            return Some((id, p));
        }
        let key = (owner.to_owned(), node.to_owned());
        if let Some(p) = self.last.borrow_mut().get(&key, &id) {
            return Some((id, p));
        }
        let xml = store::payloads(cx.store(), owner, node, &[seq])
            .map_err(|e| log::error!("reading the last PEP item of {owner}: {e}"))
            .ok()?
            .pop()
            .flatten()?;
        let payload = reader::parse_one(&xml)?;
        self.last
            .borrow_mut()
            .put(key, id.clone(), payload.clone(), id.len() + xml.len());
        Some((id, payload))
    }

    /// Available sessions that get `owner`'s notifications about `node`: its own and its
    /// subscribed contacts', whose presence reached the owner, who may read the node and whose
    /// caps ask for it.
    fn recipients(&self, cx: &Cx, owner: &str, node: &str, config: &NodeConfig) -> Vec<Jid> {
        let contacts: Vec<Jid> = match cx.module::<Roster>() {
            Some(r) => r.with(cx, owner, |r| {
                r.items
                    .iter()
                    .filter(|(_, i)| i.subscription.from())
                    .filter_map(|(c, _)| Jid::parse(c).ok())
                    .collect()
            }),
            None => Vec::new(),
        };
        let mut users = vec![owner.to_owned()];
        for c in contacts {
            if let Dest::Account(u) = cx.destination(&c)
                && self.may_read(cx, owner, &c, config).is_ok()
            {
                users.push(u.to_owned());
            }
        }
        let wanted = format!("{node}+notify");
        let caps = cx.module::<Caps>();
        let served = self.served.borrow();
        let sessions = cx.sessions();
        users
            .iter()
            .flat_map(|u| sessions.available(u))
            .map(|s| &s.jid)
            .filter(|j| served.get(*j).is_some_and(|o| o.contains_key(owner)))
            .filter(|j| {
                caps.and_then(|c| c.features(j))
                    .is_some_and(|f| f.contains(&wanted))
            })
            .cloned()
            .collect()
    }

    /// Routes `<event>inner</event>` from `owner` to each of `to`.
    fn notify(&self, cx: &mut Cx, owner: &str, to: Vec<Jid>, inner: Element) {
        let from = Jid::bare_from(owner, cx.domain());
        let event = Element::new("event", ns::PUBSUB_EVENT).with_child(inner);
        for t in to {
            let el = Element::new("message", ns::CLIENT)
                .with_attr("type", "headline")
                .with_attr("id", format!("pep-{}", self.next()))
                .with_child(event.clone());
            cx.route(Stanza::new(
                Kind::Message,
                Type::Headline,
                from.clone(),
                t,
                Origin::Account,
                el,
            ));
        }
    }

    /// The `<items/>` event carrying one item of `node`.
    fn items_event(node: &str, id: &str, payload: Element, config: &NodeConfig) -> Element {
        let payload = config.deliver_payloads.then_some(payload);
        Element::new("items", ns::PUBSUB_EVENT)
            .with_attr("node", node)
            .with_child(item_xml(ns::PUBSUB_EVENT, id, payload))
    }

    /// Gives `session` the last item of each of `owner`'s nodes it asks for and has not had,
    /// once its caps are known.
    fn serve(&self, cx: &mut Cx, session: &Jid, owner: &str) {
        let Some(features) = cx.module::<Caps>().and_then(|c| c.features(session)) else {
            return;
        };
        let fresh: Vec<String> = {
            let mut served = self.served.borrow_mut();
            let Some(had) = served.get_mut(session).and_then(|o| o.get_mut(owner)) else {
                return;
            };
            features
                .iter()
                .filter_map(|f| f.strip_suffix("+notify"))
                .filter(|n| had.insert((*n).to_owned()))
                .map(str::to_owned)
                .collect()
        };
        for node in fresh {
            let Some(config) = self.config_of(cx, owner, &node) else {
                continue;
            };
            if config.send_last_published_item == SendLast::Never
                || !config.deliver_notifications
                || self.may_read(cx, owner, session, &config).is_err()
            {
                continue;
            }
            if let Some((id, payload)) = self.last_item(cx, owner, &node) {
                let event = Pep::items_event(&node, &id, payload, &config);
                self.notify(cx, owner, vec![session.clone()], event);
            }
        }
    }

    /// `session`'s presence reached `owner`'s account: it follows the owner's nodes.
    fn follow(&self, cx: &mut Cx, session: &Jid, owner: &str) {
        self.served
            .borrow_mut()
            .entry(session.clone())
            .or_default()
            .entry(owner.to_owned())
            .or_default();
        self.serve(cx, session, owner);
    }

    fn publish(
        &self,
        cx: &mut Cx,
        owner: &str,
        pubsub: &Element,
        publish: &Element,
    ) -> Result<Option<Element>, StanzaError> {
        let node = node_name(publish)?;
        let items: Vec<&Element> = publish
            .elements()
            .filter(|e| e.is("item", ns::PUBSUB))
            .collect();
        let item = match items.as_slice() {
            [i] => *i,
            [] => return Err(pubsub_error(Condition::BadRequest, "item-required")),
            _ => return Err(pubsub_error(Condition::BadRequest, "invalid-payload")),
        };
        let payload = match item.elements().collect::<Vec<_>>().as_slice() {
            [p] => (*p).clone(),
            [] => return Err(pubsub_error(Condition::BadRequest, "payload-required")),
            _ => return Err(pubsub_error(Condition::BadRequest, "invalid-payload")),
        };
        let options = publish_options(pubsub).map_err(|_| precondition())?;
        let id = self.publish_item(cx, owner, node, item.attr("id"), payload, options.as_ref())?;
        let result = Element::new("pubsub", ns::PUBSUB).with_child(
            Element::new("publish", ns::PUBSUB)
                .with_attr("node", node)
                .with_child(item_xml(ns::PUBSUB, &id, None)),
        );
        Ok(Some(result))
    }

    /// Publishes `payload` to `owner`'s `node` as the owner would (XEP-0060 §7.1), creating the
    /// node when it does not exist, with `options` as XEP-0223 preconditions: for modules that
    /// publish on a user's behalf. An item without `id` gets a new one; returns the id.
    pub fn publish_item(
        &self,
        cx: &mut Cx,
        owner: &str,
        node: &str,
        id: Option<&str>,
        payload: Element,
        options: Option<&Fields>,
    ) -> Result<String, StanzaError> {
        if node.is_empty() || node.len() > MAX_NAME {
            return Err(StanzaError::with_text(
                Condition::NotAcceptable,
                format!("a node name is 1 to {MAX_NAME} bytes"),
            ));
        }
        let id = match id {
            Some(id) if id.len() > MAX_NAME => {
                return Err(StanzaError::with_text(
                    Condition::NotAcceptable,
                    format!("an item id is at most {MAX_NAME} bytes"),
                ));
            }
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => {
                let micros = cx
                    .now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros());
                format!("{micros:x}-{}", self.next())
            }
        };
        let xml = payload.to_xml();
        let size = id.len() + xml.len();
        if size > self.config.max_item_bytes {
            return Err(pubsub_error(Condition::NotAcceptable, "payload-too-big"));
        }
        let c = &self.config;
        let plan = self.with(cx, owner, |a| -> Result<_, StanzaError> {
            let total = a.bytes();
            let count = a.nodes.len();
            let (config, created) = match a.nodes.get(node) {
                Some(n) => {
                    if options
                        .as_ref()
                        .is_some_and(|o| !n.config.satisfies(o, c.max_items))
                    {
                        return Err(precondition());
                    }
                    (n.config.clone(), false)
                }
                None => {
                    if count >= c.max_nodes {
                        return Err(StanzaError::with_text(
                            Condition::PolicyViolation,
                            format!("an account has at most {} nodes", c.max_nodes),
                        ));
                    }
                    let mut config = NodeConfig::default();
                    if let Some(o) = &options {
                        config.apply(o, c.max_items).map_err(|_| precondition())?;
                    }
                    (config, true)
                }
            };
            let existing = a.nodes.get(node);
            let before = existing.map_or(0, Node::bytes);
            let seq = existing.map_or(1, |n| n.next_seq);
            let (mut removed, mut kept): (Vec<ItemRef>, Vec<ItemRef>) = existing
                .map(|n| n.items.clone())
                .unwrap_or_default()
                .into_iter()
                .partition(|i| i.id == id);
            let after = match config.persist_items {
                true => {
                    kept.push(ItemRef {
                        id: id.clone(),
                        seq,
                        size,
                    });
                    let excess = kept.len().saturating_sub(config.max(c.max_items));
                    removed.extend(kept.drain(..excess));
                    kept.iter().map(|i| i.size).sum::<usize>()
                }
                false => size,
            };
            if total - before + after > c.max_account_bytes {
                return Err(StanzaError::with_text(
                    Condition::PolicyViolation,
                    format!(
                        "an account keeps at most {} bytes of published items",
                        c.max_account_bytes
                    ),
                ));
            }
            let n = a
                .nodes
                .entry(node.to_owned())
                .or_insert_with(|| Node::new(config.clone()));
            n.items = kept;
            match config.persist_items {
                true => n.next_seq = seq + 1,
                false => n.transient = Some((id.clone(), payload.clone())),
            }
            Ok((config, created, removed, seq))
        })??;
        let (config, created, removed, seq) = plan;
        cx.write(Box::new(Change {
            user: owner.to_owned(),
            node: node.to_owned(),
            config: created.then(|| Some(config.encode())),
            clear: false,
            remove: removed.iter().map(|i| i.seq).collect(),
            insert: config.persist_items.then(|| (seq, id.clone(), xml)),
        }));
        let key = (owner.to_owned(), node.to_owned());
        if config.persist_items {
            self.last
                .borrow_mut()
                .put(key, id.clone(), payload.clone(), size);
        }
        if config.deliver_notifications {
            let to = self.recipients(cx, owner, node, &config);
            {
                let mut served = self.served.borrow_mut();
                for t in &to {
                    if let Some(set) = served.get_mut(t).and_then(|o| o.get_mut(owner)) {
                        set.insert(node.to_owned());
                    }
                }
            }
            let event = Pep::items_event(node, &id, payload, &config);
            self.notify(cx, owner, to, event);
        }
        changed(cx, owner, node);
        Ok(id)
    }

    fn retract(&self, cx: &mut Cx, owner: &str, retract: &Element) -> Result<(), StanzaError> {
        let node = node_name(retract)?;
        let ids: Vec<&str> = retract
            .elements()
            .filter(|e| e.is("item", ns::PUBSUB))
            .filter_map(|e| e.attr("id"))
            .collect();
        if ids.is_empty() {
            return Err(pubsub_error(Condition::BadRequest, "item-required"));
        }
        let notify = retract.attr("notify").map(|v| v == "true" || v == "1");
        self.retract_items(cx, owner, node, &ids, notify)
    }

    /// Retracts items `ids` of `owner`'s `node` as the owner would (XEP-0060 §7.2): all of them
    /// or, when one is unknown, none. `notify` overrides the node's `pubsub#notify_retract`.
    pub fn retract_items(
        &self,
        cx: &mut Cx,
        owner: &str,
        node: &str,
        ids: &[&str],
        notify: Option<bool>,
    ) -> Result<(), StanzaError> {
        let (config, removed) = self.with(cx, owner, |a| -> Result<_, StanzaError> {
            let n = a.nodes.get_mut(node).ok_or_else(item_not_found)?;
            let transient = n.transient.as_ref().map(|t| t.0.as_str());
            let known = |id: &str| Some(id) == transient || n.items.iter().any(|i| i.id == id);
            if !ids.iter().all(|id| known(id)) {
                return Err(item_not_found());
            }
            if transient.is_some_and(|t| ids.contains(&t)) {
                n.transient = None;
            }
            let (gone, kept) = n
                .items
                .drain(..)
                .partition(|i| ids.contains(&i.id.as_str()));
            n.items = kept;
            Ok((n.config.clone(), gone))
        })??;
        let removed: Vec<ItemRef> = removed;
        cx.write(Box::new(Change {
            user: owner.to_owned(),
            node: node.to_owned(),
            remove: removed.iter().map(|i| i.seq).collect(),
            ..Change::default()
        }));
        if notify.unwrap_or(config.notify_retract) && config.deliver_notifications {
            let mut items = Element::new("items", ns::PUBSUB_EVENT).with_attr("node", node);
            for id in ids {
                items.push(Element::new("retract", ns::PUBSUB_EVENT).with_attr("id", *id));
            }
            let to = self.recipients(cx, owner, node, &config);
            self.notify(cx, owner, to, items);
        }
        changed(cx, owner, node);
        Ok(())
    }

    fn items(
        &self,
        cx: &mut Cx,
        from: &Jid,
        owner: &str,
        items: &Element,
    ) -> Result<Option<Element>, StanzaError> {
        let node = node_name(items)?;
        let max = match items.attr("max_items") {
            Some(m) => Some(
                m.parse::<usize>()
                    .map_err(|_| StanzaError::bad_request("max_items is a number"))?,
            ),
            None => None,
        };
        let wanted: Vec<&str> = items
            .elements()
            .filter(|e| e.is("item", ns::PUBSUB))
            .filter_map(|e| e.attr("id"))
            .collect();
        let config = self.config_of(cx, owner, node).ok_or_else(item_not_found)?;
        self.may_read(cx, owner, from, &config)?;
        let mut out = Element::new("items", ns::PUBSUB).with_attr("node", node);
        for (id, payload) in self.read(cx, owner, node, &wanted, max)? {
            out.push(item_xml(ns::PUBSUB, &id, Some(payload)));
        }
        Ok(Some(Element::new("pubsub", ns::PUBSUB).with_child(out)))
    }

    /// Items of `owner`'s `node`, oldest first: those with the ids `wanted` (all when empty),
    /// the newest `max` of them.
    fn read(
        &self,
        cx: &Cx,
        owner: &str,
        node: &str,
        wanted: &[&str],
        max: Option<usize>,
    ) -> Result<Vec<(String, Element)>, StanzaError> {
        let (refs, transient) = self.with(cx, owner, |a| {
            let n = a.nodes.get(node);
            let refs: Vec<ItemRef> = n.map(|n| n.items.clone()).unwrap_or_default();
            (refs, n.and_then(|n| n.transient.clone()))
        })?;
        let mut chosen: Vec<ItemRef> = refs
            .into_iter()
            .filter(|i| wanted.is_empty() || wanted.contains(&i.id.as_str()))
            .collect();
        if let Some(m) = max {
            let skip = chosen.len().saturating_sub(m);
            chosen.drain(..skip);
        }
        let mut out = Vec::new();
        if let Some((id, p)) = transient
            && (wanted.is_empty() || wanted.contains(&id.as_str()))
            && max != Some(0)
        {
            out.push((id, p));
        }
        let seqs: Vec<u64> = chosen.iter().map(|i| i.seq).collect();
        let payloads = store::payloads(cx.store(), owner, node, &seqs)
            .map_err(super::internal("reading PEP items"))?;
        let last = self.last_item(cx, owner, node);
        for (i, xml) in chosen.iter().zip(payloads) {
            // Published a moment ago, not committed yet: in this step's writes, or the last
            // item of an earlier step.
            let xml = xml.or_else(|| store::pending(&cx.effects.writes, owner, node, i.seq));
            let payload = match xml {
                Some(x) => reader::parse_one(&x),
                None => last.as_ref().filter(|l| l.0 == i.id).map(|l| l.1.clone()),
            };
            if let Some(p) = payload {
                out.push((i.id.clone(), p));
            }
        }
        Ok(out)
    }

    /// Every item of `owner`'s `node`, oldest first, whoever may read it: for modules that
    /// build on PEP (bookmarks for legacy clients, say).
    pub fn items_of(&self, cx: &Cx, owner: &str, node: &str) -> Vec<(String, Element)> {
        self.read(cx, owner, node, &[], None).unwrap_or_default()
    }

    /// The item `id` of `owner`'s `node`, whoever may read it.
    pub fn item(&self, cx: &Cx, owner: &str, node: &str, id: &str) -> Option<Element> {
        let mut found = self.read(cx, owner, node, &[id], None).ok()?;
        found.pop().map(|(_, p)| p)
    }

    /// The most items a node keeps (what `pubsub#max_items = max` means).
    pub fn max_items(&self) -> usize {
        self.config.max_items
    }

    /// Whether `who` may read `owner`'s `node`, which exists.
    pub fn readable(&self, cx: &Cx, owner: &str, node: &str, who: &Jid) -> bool {
        self.config_of(cx, owner, node)
            .is_some_and(|c| self.may_read(cx, owner, who, &c).is_ok())
    }

    /// Creates `owner`'s `node` with the configuration `fields`, or changes the configuration
    /// of the existing node where it differs: for a module that publishes on the owner's
    /// behalf and must keep the node private whatever a client made of it.
    pub fn ensure_config(
        &self,
        cx: &mut Cx,
        owner: &str,
        node: &str,
        fields: &Fields,
    ) -> Result<(), StanzaError> {
        let limit = self.config.max_items;
        match self.config_of(cx, owner, node) {
            Some(c) if c.satisfies(fields, limit) => Ok(()),
            Some(_) => self.configure(cx, owner, node, fields),
            None => {
                let mut config = NodeConfig::default();
                config.apply(fields, limit)?;
                self.create_node(cx, owner, node, config)
            }
        }
    }

    fn create(
        &self,
        cx: &mut Cx,
        owner: &str,
        pubsub: &Element,
        create: &Element,
    ) -> Result<(), StanzaError> {
        let node = match create.attr("node") {
            Some(_) => node_name(create)?,
            None => return Err(pubsub_error(Condition::NotAcceptable, "nodeid-required")),
        };
        let mut config = NodeConfig::default();
        if let Some(x) = pubsub
            .child("configure", ns::PUBSUB)
            .and_then(|c| c.child("x", ns::DATA_FORMS))
            && let Some(fields) = read_form(x, ns::PUBSUB_NODE_CONFIG)?
        {
            config.apply(&fields, self.config.max_items)?;
        }
        self.create_node(cx, owner, node, config)
    }

    fn create_node(
        &self,
        cx: &mut Cx,
        owner: &str,
        node: &str,
        config: NodeConfig,
    ) -> Result<(), StanzaError> {
        let max_nodes = self.config.max_nodes;
        self.with(cx, owner, |a| {
            if a.nodes.contains_key(node) {
                return Err(StanzaError::new(Condition::Conflict));
            }
            if a.nodes.len() >= max_nodes {
                return Err(StanzaError::with_text(
                    Condition::PolicyViolation,
                    format!("an account has at most {max_nodes} nodes"),
                ));
            }
            a.nodes.insert(node.to_owned(), Node::new(config.clone()));
            Ok(())
        })??;
        cx.write(Box::new(Change {
            user: owner.to_owned(),
            node: node.to_owned(),
            config: Some(Some(config.encode())),
            ..Change::default()
        }));
        Ok(())
    }

    /// The owner's requests (XEP-0060 §8).
    fn owner(
        &self,
        cx: &mut Cx,
        owner: &str,
        set: bool,
        request: &Element,
    ) -> Result<Option<Element>, StanzaError> {
        let limit = self.config.max_items;
        let wrap = |el: Element| Some(Element::new("pubsub", ns::PUBSUB_OWNER).with_child(el));
        match (request.name.as_str(), set) {
            ("default", false) => Ok(wrap(
                Element::new("default", ns::PUBSUB_OWNER)
                    .with_child(NodeConfig::default().form(limit)),
            )),
            ("configure", false) => {
                let node = node_name(request)?;
                let config = self.config_of(cx, owner, node).ok_or_else(item_not_found)?;
                Ok(wrap(
                    Element::new("configure", ns::PUBSUB_OWNER)
                        .with_attr("node", node)
                        .with_child(config.form(limit)),
                ))
            }
            ("configure", true) => {
                let node = node_name(request)?;
                let x = request
                    .child("x", ns::DATA_FORMS)
                    .ok_or_else(|| StanzaError::bad_request("a configuration form is required"))?;
                let Some(fields) = read_form(x, ns::PUBSUB_NODE_CONFIG)? else {
                    return Ok(None);
                };
                self.configure(cx, owner, node, &fields).map(|()| None)
            }
            ("delete", true) => self.delete(cx, owner, request, false).map(|()| None),
            ("purge", true) => self.delete(cx, owner, request, true).map(|()| None),
            ("affiliations", _) => Err(unsupported("modify-affiliations")),
            ("subscriptions", _) => Err(unsupported("manage-subscriptions")),
            _ => Err(StanzaError::bad_request("unknown pubsub#owner request")),
        }
    }

    fn configure(
        &self,
        cx: &mut Cx,
        owner: &str,
        node: &str,
        fields: &Fields,
    ) -> Result<(), StanzaError> {
        let limit = self.config.max_items;
        let change = self.with(cx, owner, |a| -> Result<_, StanzaError> {
            let n = a.nodes.get_mut(node).ok_or_else(item_not_found)?;
            let mut config = n.config.clone();
            config.apply(fields, limit)?;
            let mut change = Change {
                user: owner.to_owned(),
                node: node.to_owned(),
                config: Some(Some(config.encode())),
                ..Change::default()
            };
            // Switching between kept and transient items starts the node afresh.
            if config.persist_items != n.config.persist_items {
                change.clear = true;
                n.items.clear();
                n.transient = None;
            }
            let excess = n.items.len().saturating_sub(config.max(limit));
            change.remove = n.items.drain(..excess).map(|i| i.seq).collect();
            n.config = config;
            Ok(change)
        })??;
        cx.write(Box::new(change));
        Ok(())
    }

    /// Deletes a node, or with `purge` only its items, telling who reads it when configured.
    fn delete(
        &self,
        cx: &mut Cx,
        owner: &str,
        request: &Element,
        purge: bool,
    ) -> Result<(), StanzaError> {
        let node = node_name(request)?;
        let config = self.config_of(cx, owner, node).ok_or_else(item_not_found)?;
        let to = self.recipients(cx, owner, node, &config);
        self.with(cx, owner, |a| match purge {
            true => {
                if let Some(n) = a.nodes.get_mut(node) {
                    n.items.clear();
                    n.transient = None;
                }
            }
            false => drop(a.nodes.remove(node)),
        })?;
        self.last
            .borrow_mut()
            .forget(&(owner.to_owned(), node.to_owned()));
        cx.write(Box::new(Change {
            user: owner.to_owned(),
            node: node.to_owned(),
            config: (!purge).then_some(None),
            clear: true,
            ..Change::default()
        }));
        let (tell, what) = match purge {
            true => (config.notify_retract, "purge"),
            false => (config.notify_delete, "delete"),
        };
        if tell && config.deliver_notifications {
            let el = Element::new(what, ns::PUBSUB_EVENT).with_attr("node", node);
            self.notify(cx, owner, to, el);
        }
        changed(cx, owner, node);
        Ok(())
    }

    /// The nodes of `owner` that `asker` may read.
    fn visible_nodes(&self, cx: &Cx, owner: &str, asker: &Jid) -> Vec<String> {
        let nodes: Vec<(String, NodeConfig)> = self
            .with(cx, owner, |a| {
                a.nodes
                    .iter()
                    .map(|(k, n)| (k.clone(), n.config.clone()))
                    .collect()
            })
            .unwrap_or_default();
        nodes
            .into_iter()
            .filter(|(_, c)| self.may_read(cx, owner, asker, c).is_ok())
            .map(|(k, _)| k)
            .collect()
    }
}

impl Module for Pep {
    fn name(&self) -> &'static str {
        "pep"
    }

    fn disco(&self, cx: &Cx, target: &Target, info: &mut DiscoInfo) {
        let user = match target {
            Target::Account { user, .. } => Some(user),
            // Where XEP-0163 first had PEP discovered, and where clients that read no
            // account's disco (profanity) look before they publish with publish-options.
            Target::Server => None,
            Target::Service(_) => return,
        };
        info.identities.push(("pubsub", "pep", None));
        info.features.extend(FEATURES);
        let Some(user) = user else {
            return;
        };
        info.features.push(ns::DISCO_ITEMS);
        if let Some(asker) = info.asker.clone() {
            let jid = Jid::bare_from(user, cx.domain()).to_string();
            for n in self.visible_nodes(cx, user, &asker) {
                info.nodes.push((jid.clone(), n));
            }
        }
    }

    fn disco_node(&self, cx: &Cx, target: &Target, node: &str, info: &mut DiscoInfo) {
        let (Target::Account { user, .. }, Some(asker)) = (target, info.asker.clone()) else {
            return;
        };
        let Some(config) = self.config_of(cx, user, node) else {
            return;
        };
        if self.may_read(cx, user, &asker, &config).is_ok() {
            info.identities.push(("pubsub", "leaf", None));
            info.features.push(ns::PUBSUB);
        }
    }

    fn iq_routes(&self) -> &'static [IqRoute] {
        const {
            &[
                IqRoute::new(ns::PUBSUB, To::ACCOUNTS),
                IqRoute::new(ns::PUBSUB_OWNER, To::ACCOUNTS),
            ]
        }
    }

    fn handle_iq(&self, cx: &mut Cx, iq: &IqRequest) -> Result<Option<Element>, StanzaError> {
        let Target::Account { user, own } = iq.target else {
            return Err(StanzaError::service_unavailable());
        };
        let Some(request) = iq.payload.elements().next() else {
            return Err(StanzaError::bad_request("an empty pubsub request"));
        };
        let forbidden = || StanzaError::new(Condition::Forbidden);
        if iq.payload.ns == ns::PUBSUB_OWNER {
            return match own {
                true => self.owner(cx, user, iq.set, request),
                false => Err(forbidden()),
            };
        }
        match (request.name.as_str(), iq.set) {
            ("items", false) => self.items(cx, iq.from, user, request),
            ("publish" | "retract" | "create", true) if !own => Err(forbidden()),
            ("publish", true) => self.publish(cx, user, iq.payload, request),
            ("retract", true) => self.retract(cx, user, request).map(|()| None),
            ("create", true) => self.create(cx, user, iq.payload, request).map(|()| None),
            ("subscribe" | "unsubscribe", _) => Err(unsupported("subscribe")),
            ("options", _) => Err(unsupported("subscription-options")),
            ("subscriptions", _) => Err(unsupported("retrieve-subscriptions")),
            ("affiliations", _) => Err(unsupported("retrieve-affiliations")),
            _ => Err(StanzaError::bad_request("unknown pubsub request")),
        }
    }

    fn presence_out(&self, _cx: &mut Cx, st: &mut Stanza) -> Result<Flow, StanzaError> {
        // A session that goes unavailable follows nobody until its next initial presence,
        // which then brings the last items again.
        if st.origin == Origin::Client && st.to.is_none() && st.typ == Type::Unavailable {
            self.served.borrow_mut().remove(&st.from);
        }
        Ok(Flow::Continue)
    }

    fn presence_in(&self, cx: &mut Cx, user: &str, st: &mut Stanza) -> Result<Flow, StanzaError> {
        let from = st.from.clone();
        match st.typ {
            // A contact's session: its presence or its probe reached the owner `user`.
            Type::Available | Type::Probe if !from.is_bare() => {
                let is_session = cx.sessions().get(&from).is_some();
                let own = matches!(cx.destination(&from), Dest::Session(u) if u == user);
                let subscribed = cx
                    .module::<Roster>()
                    .and_then(|r| r.item(cx, user, &from.bare()))
                    .is_some_and(|i| i.subscription.from());
                if is_session && !own && subscribed {
                    self.follow(cx, &from, user);
                }
            }
            Type::Unavailable => {
                if let Some(o) = self.served.borrow_mut().get_mut(&from) {
                    o.remove(user);
                }
            }
            // The owner `from` approved `user`'s subscription: `user`'s sessions follow it now.
            Type::Subscribed => {
                if let Dest::Account(owner) = cx.destination(&from) {
                    let owner = owner.to_owned();
                    let sessions: Vec<Jid> = cx
                        .sessions()
                        .available(user)
                        .map(|s| s.jid.clone())
                        .collect();
                    for s in sessions {
                        self.follow(cx, &s, &owner);
                    }
                }
            }
            _ => {}
        }
        Ok(Flow::Continue)
    }

    fn session_event(&self, cx: &mut Cx, session: &Jid, event: SessionEvent) {
        match event {
            SessionEvent::InitialPresence => {
                if let Some(user) = session.local() {
                    self.follow(cx, session, user);
                }
            }
            SessionEvent::Caps => {
                let owners: Vec<String> = self
                    .served
                    .borrow()
                    .get(session)
                    .map(|o| o.keys().cloned().collect())
                    .unwrap_or_default();
                for o in owners {
                    self.serve(cx, session, &o);
                }
            }
            SessionEvent::Bound | SessionEvent::Closed => {
                self.served.borrow_mut().remove(session);
            }
            _ => {}
        }
    }

    fn account_removed(&self, user: &str) {
        self.accounts.borrow_mut().remove(user);
        self.last.borrow_mut().forget_user(user);
        let mut served = self.served.borrow_mut();
        served.retain(|j, _| j.local() != Some(user));
        for owners in served.values_mut() {
            owners.remove(user);
        }
    }
}

#[cfg(test)]
mod tests;
