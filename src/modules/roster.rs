//! RFC 6121 §2 roster management with §2.6 versioning: get, set, remove, and pushes to every
//! session that has asked for the roster. Subscription states are changed only by presence
//! (see `presence.rs`); a client's `subscription`/`ask` attributes on a set are ignored.

use super::{Cx, IqRequest, IqRoute, Module};
use crate::jid::Jid;
use crate::stanza::{Condition, StanzaError};
use crate::storage::Write;
use crate::storage::roster::RosterItem;
use crate::xml::{Element, ns};

pub struct Roster;

/// Most groups one item may be in, and the longest group or name, in bytes.
const MAX_GROUPS: usize = 64;
const MAX_TEXT: usize = 1023;

impl Module for Roster {
    fn name(&self) -> &'static str {
        "roster"
    }
    fn iq_routes(&self) -> &'static [IqRoute] {
        &[IqRoute {
            ns: ns::ROSTER,
            server: false,
            account: true,
            others: false,
        }]
    }
    fn handle_iq(&self, cx: &mut Cx, iq: &IqRequest) -> Result<Option<Element>, StanzaError> {
        let user = iq.from.local().unwrap_or_default();
        if !iq.set {
            return get(cx, iq.from, user, iq.payload.attr("ver"));
        }
        let mut items = iq.payload.elements().filter(|e| e.is("item", ns::ROSTER));
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
            let Some(item) = item(cx, user, &contact).filter(|i| i.visible) else {
                return Err(StanzaError::new(Condition::ItemNotFound));
            };
            super::presence::cancel_all(cx, user, &contact, &item);
            delete(cx, user, &contact, true);
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
        let mut it = item(cx, user, &contact).unwrap_or_default();
        it.visible = true;
        it.name = name.map(str::to_owned);
        it.groups = groups;
        put(cx, user, &contact, it);
        Ok(None)
    }
}

fn get(
    cx: &mut Cx,
    from: &Jid,
    user: &str,
    client_ver: Option<&str>,
) -> Result<Option<Element>, StanzaError> {
    if let Some(s) = cx.server.sessions.borrow_mut().get_mut(from) {
        s.interested = true;
    }
    let internal = |e| {
        log::error!("reading the roster of {user}: {e}");
        StanzaError::new(Condition::InternalServerError)
    };
    let ver = cx.server.roster_version(user).map_err(internal)?;
    if client_ver.is_some_and(|v| v == ver.to_string()) {
        return Ok(None);
    }
    let mut q = Element::new("query", ns::ROSTER).with_attr("ver", ver.to_string());
    for (contact, it) in cx.server.roster(user).map_err(internal)? {
        if it.visible {
            q.push(item_xml(&contact, &it));
        }
    }
    Ok(Some(q))
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

/// The user's item for `contact`, including changes not yet committed.
pub fn item(cx: &Cx, user: &str, contact: &Jid) -> Option<RosterItem> {
    cx.server
        .roster_item(user, &contact.to_string())
        .unwrap_or_else(|e| {
            log::error!("reading the roster of {user}: {e}");
            None
        })
}

/// Stores an item and pushes it to the user's interested sessions if what they see of it
/// changed (a pending inbound request, for one, is not shown, so it is not pushed).
pub fn put(cx: &mut Cx, user: &str, contact: &Jid, it: RosterItem) {
    let shown = |i: &RosterItem| i.visible.then(|| item_xml(&contact.to_string(), i));
    let before = item(cx, user, contact).and_then(|i| shown(&i));
    let pushed = shown(&it).filter(|now| before.as_ref() != Some(now));
    let contact = contact.to_string();
    let ver = cx.server.next_version();
    cx.server
        .stage_roster(user, &contact, Some(it.clone()), ver);
    cx.write(Write::RosterPut {
        user: user.to_owned(),
        contact,
        item: it.encode(),
        ver,
    });
    if let Some(el) = pushed {
        push(cx, user, el, ver);
    }
}

/// Deletes an item; `push` tells the user's sessions, which is wrong only for an item they
/// never saw (a pending request that was withdrawn).
pub fn delete(cx: &mut Cx, user: &str, contact: &Jid, push_it: bool) {
    let contact = contact.to_string();
    let ver = cx.server.next_version();
    cx.server.stage_roster(user, &contact, None, ver);
    cx.write(Write::RosterDelete {
        user: user.to_owned(),
        contact: contact.clone(),
        ver,
    });
    if push_it {
        let el = Element::new("item", ns::ROSTER)
            .with_attr("jid", contact)
            .with_attr("subscription", "remove");
        push(cx, user, el, ver);
    }
}

fn push(cx: &mut Cx, user: &str, item: Element, ver: u64) {
    let targets: Vec<Jid> = cx
        .server
        .sessions
        .borrow()
        .of(user)
        .iter()
        .filter(|s| s.interested)
        .map(|s| s.jid.clone())
        .collect();
    for to in targets {
        let id = format!("push{ver}");
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("type", "set")
            .with_attr("id", id)
            .with_attr("to", to.to_string())
            .with_child(
                Element::new("query", ns::ROSTER)
                    .with_attr("ver", ver.to_string())
                    .with_child(item.clone()),
            );
        cx.send(to, iq);
    }
}
