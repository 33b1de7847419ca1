//! RFC 6121 §3 and §4: presence subscriptions (every state of Appendix A, with pre-approval)
//! and presence broadcast: initial presence with probes of the user's contacts, updates,
//! directed presence, and unavailable presence when a session ends.
//!
//! Every account is local, so the contact's side of a subscription change is processed in the
//! same step as the user's ("outbound" then "inbound" in the RFC's words). Contacts on other
//! domains get `remote-server-not-found`: there is no server-to-server link.

use super::roster::{self, put};
use super::{Cx, Module};
use crate::jid::Jid;
use crate::stanza::{Condition, StanzaError, error_reply};
use crate::storage::roster::{RosterItem, Subscription};
use crate::xml::{Element, ns};

pub struct Presence;

impl Module for Presence {
    fn name(&self) -> &'static str {
        "presence"
    }
}

fn presence(kind: Option<&str>, from: &Jid, to: &Jid) -> Element {
    let mut p = Element::new("presence", ns::CLIENT)
        .with_attr("from", from.to_string())
        .with_attr("to", to.to_string());
    if let Some(k) = kind {
        p.set_attr("type", k);
    }
    p
}

/// Sends `stanza` to every available session of local account `user`.
fn to_available(cx: &mut Cx, user: &str, stanza: &Element) {
    let targets: Vec<Jid> = cx
        .server
        .sessions
        .borrow()
        .available(user)
        .map(|s| s.jid.clone())
        .collect();
    for t in targets {
        cx.send(t, stanza.clone());
    }
}

/// The current presence of each available session of `user`, addressed to `to`.
fn current_presences(cx: &Cx, user: &str, to: &Jid) -> Vec<Element> {
    cx.server
        .sessions
        .borrow()
        .available(user)
        .filter_map(|s| s.presence.clone())
        .map(|mut p| {
            p.set_attr("to", to.to_string());
            p
        })
        .collect()
}

/// Delivers every available presence of `from_user` to every available session of `to_user`.
fn share_presence(cx: &mut Cx, from_user: &str, to_user: &str, to_bare: &Jid) {
    for p in current_presences(cx, from_user, to_bare) {
        to_available(cx, to_user, &p);
    }
}

/// Unavailable presence from each available session of `from_user` to `to_user`'s sessions.
fn withdraw_presence(cx: &mut Cx, from_user: &str, to_user: &str, to_bare: &Jid) {
    let froms: Vec<Jid> = cx
        .server
        .sessions
        .borrow()
        .available(from_user)
        .map(|s| s.jid.clone())
        .collect();
    for f in froms {
        let p = presence(Some("unavailable"), &f, to_bare);
        to_available(cx, to_user, &p);
    }
}

/// A presence stanza from a bound session, `from` already stamped on it.
pub fn from_client(cx: &mut Cx, from: &Jid, mut stanza: Element) -> Result<(), StanzaError> {
    let kind = stanza.attr("type").map(str::to_owned);
    let to = match stanza.attr("to") {
        Some(t) => Some(Jid::parse(t).map_err(|_| StanzaError::new(Condition::JidMalformed))?),
        None => None,
    };
    let user = from.local().unwrap_or_default().to_owned();
    match (kind.as_deref(), to) {
        (None | Some("unavailable"), None) => {
            broadcast(cx, from, &mut stanza, kind.is_none());
            Ok(())
        }
        (Some(k @ ("subscribe" | "subscribed" | "unsubscribe" | "unsubscribed")), Some(to)) => {
            let contact = to.bare();
            if contact.domain() != cx.domain() || contact.local().is_none() {
                return Err(StanzaError::new(Condition::RemoteServerNotFound));
            }
            match k {
                "subscribe" => out_subscribe(cx, &user, &contact),
                "subscribed" => out_subscribed(cx, &user, &contact),
                "unsubscribe" => out_unsubscribe(cx, &user, &contact),
                _ => out_unsubscribed(cx, &user, &contact),
            }
            Ok(())
        }
        (Some("probe"), Some(to)) => {
            let contact = to.bare();
            let allowed = roster::item(cx, &user, &contact).is_some_and(|i| i.subscription.to());
            if let (true, Some(c)) = (allowed, contact.local()) {
                for p in current_presences(cx, c, from) {
                    cx.send(from.clone(), p);
                }
            }
            Ok(())
        }
        (None | Some("unavailable"), Some(to)) => {
            directed(cx, from, to, stanza, kind.is_none());
            Ok(())
        }
        // Errors bounce between clients without a server-side effect.
        (Some("error"), Some(to)) => {
            if let Some(l) = to.local()
                && to.domain() == cx.domain()
            {
                match to.is_bare() {
                    true => to_available(cx, l, &stanza),
                    false => cx.send(to, stanza),
                }
            }
            Ok(())
        }
        (Some("error"), None) => Ok(()),
        _ => Err(StanzaError::bad_request(
            "unknown presence type or missing 'to'",
        )),
    }
}

fn directed(cx: &mut Cx, from: &Jid, to: Jid, stanza: Element, available: bool) {
    let Some(target) = to.local().map(str::to_owned) else {
        return;
    };
    if to.domain() != cx.domain() {
        if available {
            let err = StanzaError::new(Condition::RemoteServerNotFound);
            cx.send(from.clone(), error_reply(&stanza, &err));
        }
        return;
    }
    let user = from.local().unwrap_or_default();
    let subscribed = roster::item(cx, user, &to.bare()).is_some_and(|i| i.subscription.from());
    if !subscribed && let Some(s) = cx.server.sessions.borrow_mut().get_mut(from) {
        s.directed.retain(|j| *j != to);
        if available {
            s.directed.push(to.clone());
        }
    }
    if to.is_bare() {
        to_available(cx, &target, &stanza);
    } else if cx.server.sessions.borrow().get(&to).is_some() {
        cx.send(to, stanza);
    }
}

/// Available or unavailable presence without `to`: RFC 6121 §4.2, §4.4, §4.5.
fn broadcast(cx: &mut Cx, from: &Jid, stanza: &mut Element, available: bool) {
    let user = from.local().unwrap_or_default().to_owned();
    let priority = stanza
        .child("priority", ns::CLIENT)
        .and_then(|p| p.text().trim().parse::<i8>().ok())
        .unwrap_or(0);
    stanza.remove_attr("to");
    let (was_available, directed) = {
        let mut sessions = cx.server.sessions.borrow_mut();
        let Some(s) = sessions.get_mut(from) else {
            return;
        };
        let was = s.available;
        s.available = available;
        s.priority = priority;
        s.presence = available.then(|| stanza.clone());
        let directed = if available {
            Vec::new()
        } else {
            std::mem::take(&mut s.directed)
        };
        (was, directed)
    };
    if !available && !was_available {
        return;
    }
    let roster = cx.server.roster(&user).unwrap_or_else(|e| {
        log::error!("reading the roster of {user}: {e}");
        Vec::new()
    });
    for (contact, item) in &roster {
        if let (true, Ok(c)) = (item.subscription.from(), Jid::parse(contact))
            && let Some(l) = c.local()
        {
            let mut p = stanza.clone();
            p.set_attr("to", contact.as_str());
            to_available(cx, l, &p);
        }
    }
    // The user's own sessions, this one included (RFC 6121 §4.2.2).
    let own: Vec<Jid> = cx
        .server
        .sessions
        .borrow()
        .of(&user)
        .iter()
        .filter(|s| s.available || s.jid == *from)
        .map(|s| s.jid.clone())
        .collect();
    for o in own {
        let mut p = stanza.clone();
        p.set_attr("to", o.to_string());
        cx.send(o, p);
    }
    for d in directed {
        let mut p = stanza.clone();
        p.set_attr("to", d.to_string());
        if let Some(l) = d.local() {
            if d.is_bare() {
                to_available(cx, l, &p);
            } else {
                cx.send(d, p);
            }
        }
    }
    if available && !was_available {
        initial(cx, from, &user, &roster);
    }
}

/// What a session gets on its initial presence: its contacts' and its other sessions'
/// presence (the probe answers), pending subscription requests, then the modules' hooks.
fn initial(cx: &mut Cx, from: &Jid, user: &str, roster: &[(String, RosterItem)]) {
    for (contact, item) in roster {
        if let (true, Ok(c)) = (item.subscription.to(), Jid::parse(contact))
            && let Some(l) = c.local()
        {
            for p in current_presences(cx, l, from) {
                cx.send(from.clone(), p);
            }
        }
    }
    let others: Vec<Element> = cx
        .server
        .sessions
        .borrow()
        .available(user)
        .filter(|s| s.jid != *from)
        .filter_map(|s| s.presence.clone())
        .collect();
    for mut p in others {
        p.set_attr("to", from.to_string());
        cx.send(from.clone(), p);
    }
    let bare = from.bare();
    for (contact, item) in roster {
        if item.pending_in
            && let Ok(c) = Jid::parse(contact)
        {
            cx.send(from.clone(), presence(Some("subscribe"), &c, &bare));
        }
    }
    let modules = &cx.server.modules;
    for m in modules.iter() {
        m.initial_presence(cx, from);
    }
}

/// Presence-related cleanup when a session ends without having said unavailable.
pub fn session_closed(cx: &mut Cx, from: &Jid) {
    let mut p = Element::new("presence", ns::CLIENT)
        .with_attr("type", "unavailable")
        .with_attr("from", from.to_string());
    broadcast(cx, from, &mut p, false);
}

fn local(j: &Jid) -> &str {
    j.local().unwrap_or_default()
}

fn out_subscribe(cx: &mut Cx, user: &str, contact: &Jid) {
    let mut it = roster::item(cx, user, contact).unwrap_or_default();
    if !it.subscription.to() && (!it.ask || !it.visible) {
        it.ask = true;
        it.visible = true;
        put(cx, user, contact, it);
    }
    in_subscribe(cx, user, contact);
}

/// `user` asked to see `contact`'s presence: RFC 6121 §3.1.3, processed for the contact.
fn in_subscribe(cx: &mut Cx, user: &str, contact: &Jid) {
    let c = local(contact);
    let user_jid = Jid::bare_from(user, cx.domain());
    if !cx.server.account_exists(c) {
        in_unsubscribed(cx, user, contact);
        return;
    }
    let mut it = roster::item(cx, c, &user_jid).unwrap_or_default();
    if it.subscription.from() {
        in_subscribed(cx, user, contact);
    } else if it.approved {
        it.subscription = Subscription::with(it.subscription.to(), true);
        it.approved = false;
        put(cx, c, &user_jid, it);
        in_subscribed(cx, user, contact);
    } else {
        if !it.pending_in {
            it.pending_in = true;
            put(cx, c, &user_jid, it);
        }
        to_available(cx, c, &presence(Some("subscribe"), &user_jid, contact));
    }
}

fn out_subscribed(cx: &mut Cx, user: &str, contact: &Jid) {
    let mut it = roster::item(cx, user, contact).unwrap_or_default();
    if it.pending_in {
        it.subscription = Subscription::with(it.subscription.to(), true);
        it.pending_in = false;
        it.visible = true;
        put(cx, user, contact, it);
        in_subscribed(cx, local(contact), &Jid::bare_from(user, cx.domain()));
    } else if !it.subscription.from() && !it.approved {
        // RFC 6121 §3.4: pre-approval.
        it.approved = true;
        it.visible = true;
        put(cx, user, contact, it);
    }
}

/// `contact` approved `user`'s request: RFC 6121 §3.1.5, processed for the user.
fn in_subscribed(cx: &mut Cx, user: &str, contact: &Jid) {
    let Some(mut it) = roster::item(cx, user, contact) else {
        return;
    };
    if !it.ask {
        return;
    }
    it.subscription = Subscription::with(true, it.subscription.from());
    it.ask = false;
    put(cx, user, contact, it);
    let user_jid = Jid::bare_from(user, cx.domain());
    to_available(cx, user, &presence(Some("subscribed"), contact, &user_jid));
    share_presence(cx, local(contact), user, &user_jid);
}

fn out_unsubscribe(cx: &mut Cx, user: &str, contact: &Jid) {
    if let Some(mut it) = roster::item(cx, user, contact)
        && (it.subscription.to() || it.ask)
    {
        it.subscription = Subscription::with(false, it.subscription.from());
        it.ask = false;
        put(cx, user, contact, it);
    }
    in_unsubscribe(cx, user, contact);
}

/// `user` no longer wants `contact`'s presence: RFC 6121 §3.3.3, processed for the contact.
fn in_unsubscribe(cx: &mut Cx, user: &str, contact: &Jid) {
    let c = local(contact);
    let user_jid = Jid::bare_from(user, cx.domain());
    let Some(mut it) = roster::item(cx, c, &user_jid) else {
        return;
    };
    if !(it.subscription.from() || it.pending_in || it.approved) {
        return;
    }
    let had_from = it.subscription.from();
    it.subscription = Subscription::with(it.subscription.to(), false);
    it.pending_in = false;
    it.approved = false;
    store_or_forget(cx, c, &user_jid, it);
    to_available(cx, c, &presence(Some("unsubscribe"), &user_jid, contact));
    if had_from {
        withdraw_presence(cx, c, user, &user_jid);
    }
}

fn out_unsubscribed(cx: &mut Cx, user: &str, contact: &Jid) {
    let Some(mut it) = roster::item(cx, user, contact) else {
        in_unsubscribed(cx, local(contact), &Jid::bare_from(user, cx.domain()));
        return;
    };
    if it.subscription.from() || it.pending_in || it.approved {
        it.subscription = Subscription::with(it.subscription.to(), false);
        it.pending_in = false;
        it.approved = false;
        store_or_forget(cx, user, contact, it);
    }
    // The contact's side sends the unavailable presence (once) in `in_unsubscribed`.
    in_unsubscribed(cx, local(contact), &Jid::bare_from(user, cx.domain()));
}

/// `contact` cancelled or refused `user`'s subscription: RFC 6121 §3.2.3, for the user.
fn in_unsubscribed(cx: &mut Cx, user: &str, contact: &Jid) {
    let Some(mut it) = roster::item(cx, user, contact) else {
        return;
    };
    if !(it.subscription.to() || it.ask) {
        return;
    }
    let had_to = it.subscription.to();
    it.subscription = Subscription::with(false, it.subscription.from());
    it.ask = false;
    put(cx, user, contact, it);
    let user_jid = Jid::bare_from(user, cx.domain());
    to_available(
        cx,
        user,
        &presence(Some("unsubscribed"), contact, &user_jid),
    );
    if had_to {
        withdraw_presence(cx, local(contact), user, &user_jid);
    }
}

/// An item that is no longer in the roster and carries no state is deleted, not stored.
fn store_or_forget(cx: &mut Cx, user: &str, contact: &Jid, it: RosterItem) {
    if !it.visible && it == RosterItem::default() {
        roster::delete(cx, user, contact, false);
    } else {
        put(cx, user, contact, it);
    }
}

/// RFC 6121 §2.5.2: removing an item cancels both directions of subscription first.
pub fn cancel_all(cx: &mut Cx, user: &str, contact: &Jid, it: &RosterItem) {
    if contact.domain() != cx.domain() || contact.local().is_none() {
        return;
    }
    if it.subscription.to() || it.ask {
        in_unsubscribe(cx, user, contact);
    }
    if it.subscription.from() || it.pending_in {
        in_unsubscribed(cx, local(contact), &Jid::bare_from(user, cx.domain()));
    }
}
