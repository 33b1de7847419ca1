//! RFC 6121 §3 and §4: presence subscriptions (every state of Appendix A, with pre-approval)
//! and presence broadcast: initial presence with probes of the user's contacts, updates,
//! directed presence, and unavailable presence when a session ends.
//!
//! Both sides of the RFC's exchanges are here, as hooks: what a user's client sends is
//! processed for the user in `presence_out` (the RFC's "outbound" rules), then routed to the
//! contact, whose server processes it in `presence_in` ("inbound"). What the server sends on a
//! user's behalf (a broadcast, probes, their answers, auto-replies) is routed as the account's
//! own presence, so it passes every module's hooks (blocking, for one) like a client's would.
//! Rosters are read and written through the roster module.

use super::roster::{Roster, RosterItem, Subscription};
use super::{Cx, Entry, Flow, Module, SessionEvent, Stage, presence_stanza};
use crate::jid::Jid;
use crate::router::Dest;
use crate::stanza::{Condition, Origin, Stanza, StanzaError, Type};
use crate::xml::{Element, ns};

pub const ENTRY: Entry = Entry {
    tables: &[],
    new: |config| {
        Some(Box::new(Presence {
            max_directed: config.limits.max_directed_presence,
        }))
    },
};

pub struct Presence {
    /// Most entities one session may have sent directed presence to (`limits`).
    max_directed: usize,
}

impl Module for Presence {
    fn name(&self) -> &'static str {
        "presence"
    }

    fn stream_features(&self, _cx: &Cx, stage: Stage, out: &mut Vec<Element>) {
        if stage == Stage::Bind {
            out.push(Element::new("sub", ns::PRE_APPROVAL));
        }
    }

    fn presence_out(&self, cx: &mut Cx, st: &mut Stanza) -> Result<Flow, StanzaError> {
        // What the server sends on the account's behalf was made here already.
        if st.origin != Origin::Client {
            return Ok(Flow::Continue);
        }
        let Some(roster) = cx.module::<Roster>() else {
            return Ok(Flow::Continue);
        };
        match (st.typ, st.to.clone()) {
            (Type::Available | Type::Unavailable, None) => {
                broadcast(cx, roster, st);
                Ok(Flow::Handled)
            }
            (t, Some(to)) if t.is_subscription() => {
                let contact = to.bare();
                let unreachable = match cx.destination(&contact) {
                    Dest::Server => true,
                    Dest::Remote => !cx.federates(contact.domain()),
                    _ => false,
                };
                if unreachable {
                    return Err(StanzaError::new(Condition::RemoteServerNotFound));
                }
                let user = local(&st.from).to_owned();
                let adds = matches!(t, Type::Subscribe | Type::Subscribed);
                if adds && !roster.has_room(cx, &user, &contact) {
                    return Err(super::roster::roster_full());
                }
                outbound(cx, roster, t, &user, &contact);
                Ok(Flow::Handled)
            }
            (Type::Available | Type::Unavailable, Some(to)) => {
                let available = st.typ == Type::Available;
                directed(cx, roster, &st.from, &to, available, self.max_directed)?;
                Ok(Flow::Continue)
            }
            (Type::Probe | Type::Error, Some(_)) => Ok(Flow::Continue),
            (Type::Error, None) => Ok(Flow::Handled),
            _ => Err(StanzaError::bad_request(
                "unknown presence type or missing 'to'",
            )),
        }
    }

    fn presence_in(&self, cx: &mut Cx, user: &str, st: &mut Stanza) -> Result<Flow, StanzaError> {
        let Some(roster) = cx.module::<Roster>() else {
            return Ok(Flow::Continue);
        };
        let contact = st.from.bare();
        match st.typ {
            // A request is kept as an (unshown) roster item: it takes room.
            Type::Subscribe if !roster.has_room(cx, user, &contact) => {
                return Err(StanzaError::with_text(
                    Condition::ResourceConstraint,
                    "the recipient's roster is full",
                ));
            }
            Type::Subscribe => in_subscribe(cx, roster, user, &contact),
            Type::Subscribed => in_subscribed(cx, roster, user, &contact),
            Type::Unsubscribe => in_unsubscribe(cx, roster, user, &contact),
            Type::Unsubscribed => in_unsubscribed(cx, roster, user, &contact),
            // Who refused a session's directed presence (a chat room it may not enter) has
            // none to withdraw: it leaves the session's bounded set, or refused joins would
            // fill it.
            Type::Error => {
                if let Some(to) = &st.to {
                    cx.with_session(to, |s| s.directed.remove(&st.from));
                }
                return Ok(Flow::Continue);
            }
            Type::Probe => {
                let allowed = roster
                    .item(cx, user, &contact)
                    .is_some_and(|i| i.subscription.from());
                if allowed {
                    current_presence(cx, user, &st.from);
                }
            }
            _ => return Ok(Flow::Continue),
        }
        Ok(Flow::Handled)
    }

    fn session_event(&self, cx: &mut Cx, session: &Jid, event: SessionEvent) {
        if event != SessionEvent::Closed {
            return;
        }
        let Some(roster) = cx.module::<Roster>() else {
            return;
        };
        // A session that ends without having said unavailable says it now (RFC 6121 §4.5.2).
        let el = Element::new("presence", ns::CLIENT)
            .with_attr("type", "unavailable")
            .with_attr("from", session.to_string());
        let mut st = Stanza {
            kind: crate::stanza::Kind::Presence,
            typ: Type::Unavailable,
            from: session.clone(),
            to: None,
            origin: Origin::Account,
            el,
        };
        broadcast(cx, roster, &mut st);
    }
}

fn local(j: &Jid) -> &str {
    j.local().unwrap_or_default()
}

/// Delivers `stanza` to every available session of local account `user`.
fn to_available(cx: &mut Cx, user: &str, stanza: &Element) {
    let targets: Vec<Jid> = cx
        .sessions()
        .available(user)
        .map(|s| s.jid.clone())
        .collect();
    for t in targets {
        cx.send(t, stanza.clone());
    }
}

/// `el`, a session's presence, as the account sends it to `to`.
fn account_presence(typ: Type, from: Jid, to: Jid, el: Element) -> Stanza {
    Stanza::new(
        crate::stanza::Kind::Presence,
        typ,
        from,
        to,
        Origin::Account,
        el,
    )
}

/// Routes the presence of each available session of `user` to `to`, as the account's own.
fn current_presence(cx: &mut Cx, user: &str, to: &Jid) {
    let presences: Vec<(Jid, Element)> = cx
        .sessions()
        .available(user)
        .filter_map(|s| s.presence.clone().map(|p| (s.jid.clone(), p)))
        .collect();
    for (from, el) in presences {
        cx.route(account_presence(Type::Available, from, to.clone(), el));
    }
}

/// Routes unavailable presence from each available session of `user` to `to`.
fn withdraw_presence(cx: &mut Cx, user: &str, to: &Jid) {
    let froms: Vec<Jid> = cx
        .sessions()
        .available(user)
        .map(|s| s.jid.clone())
        .collect();
    for f in froms {
        cx.route(presence_stanza(Type::Unavailable, &f, to, Origin::Account));
    }
}

/// Available or unavailable presence without `to` from session `st.from`: RFC 6121 §4.2,
/// §4.4, §4.5.
fn broadcast(cx: &mut Cx, roster: &Roster, st: &mut Stanza) {
    let from = st.from.clone();
    let user = local(&from).to_owned();
    let available = st.typ == Type::Available;
    let priority = st
        .el
        .child("priority", ns::CLIENT)
        .and_then(|p| p.text().trim().parse::<i8>().ok())
        .unwrap_or(0);
    st.el.remove_attr("to");
    let stanza = st.el.clone();
    let state = cx.with_session(&from, |s| {
        let was = s.available;
        s.available = available;
        s.priority = priority;
        s.presence = available.then(|| stanza.clone());
        let directed = match available {
            true => Vec::new(),
            false => s.directed.take(),
        };
        (was, directed)
    });
    let Some((was_available, directed)) = state else {
        return;
    };
    if !available && !was_available {
        return;
    }
    let contacts: Vec<Jid> = roster.with(cx, &user, |r| {
        r.items
            .iter()
            .filter(|(_, i)| i.subscription.from())
            .filter_map(|(c, _)| Jid::parse(c).ok())
            .collect()
    });
    // Contacts first, then those who got directed presence (when it is unavailable).
    for to in contacts.into_iter().chain(directed) {
        cx.route(account_presence(st.typ, from.clone(), to, stanza.clone()));
    }
    // The user's own sessions, this one included (RFC 6121 §4.2.2).
    let own: Vec<Jid> = cx
        .sessions()
        .of(&user)
        .iter()
        .filter(|s| s.available || s.jid == from)
        .map(|s| s.jid.clone())
        .collect();
    for o in own {
        let mut p = stanza.clone();
        p.set_attr("to", o.to_string());
        cx.send(o, p);
    }
    if available && !was_available {
        initial(cx, roster, &from, &user);
    }
}

/// What a session gets on its initial presence: its contacts' presence (probes, answered by
/// their side), its other sessions' presence, pending subscription requests, then the modules'
/// hooks.
fn initial(cx: &mut Cx, roster: &Roster, from: &Jid, user: &str) {
    let (to, pending): (Vec<Jid>, Vec<Jid>) = roster.with(cx, user, |r| {
        let parse = |c: &String| Jid::parse(c).ok();
        (
            r.items
                .iter()
                .filter(|(_, i)| i.subscription.to())
                .filter_map(|(c, _)| parse(c))
                .collect(),
            r.items
                .iter()
                .filter(|(_, i)| i.pending_in)
                .filter_map(|(c, _)| parse(c))
                .collect(),
        )
    });
    for contact in to {
        cx.route(presence_stanza(
            Type::Probe,
            from,
            &contact,
            Origin::Account,
        ));
    }
    let others: Vec<Element> = cx
        .sessions()
        .available(user)
        .filter(|s| s.jid != *from)
        .filter_map(|s| s.presence.clone())
        .collect();
    for mut p in others {
        p.set_attr("to", from.to_string());
        cx.send(from.clone(), p);
    }
    let bare = from.bare();
    let pending: Vec<Jid> = pending
        .into_iter()
        .filter(|c| cx.accepts(user, c))
        .collect();
    for c in pending {
        cx.send(
            from.clone(),
            presence_stanza(Type::Subscribe, &c, &bare, Origin::Server).el,
        );
    }
    cx.raise(from, SessionEvent::InitialPresence);
}

/// Directed presence (RFC 6121 §4.6): remembered, when the contact has no subscription to the
/// user, so that the contact hears of the session's end. A session that has sent it to `max`
/// others already gets `resource-constraint` for another.
fn directed(
    cx: &mut Cx,
    roster: &Roster,
    from: &Jid,
    to: &Jid,
    available: bool,
    max: usize,
) -> Result<(), StanzaError> {
    let subscribed = roster
        .item(cx, local(from), &to.bare())
        .is_some_and(|i| i.subscription.from());
    if subscribed {
        return Ok(());
    }
    let kept = cx.with_session(from, |s| match available {
        true => s.directed.insert(to, max),
        false => {
            s.directed.remove(to);
            true
        }
    });
    match kept {
        Some(false) => Err(StanzaError::with_text(
            Condition::ResourceConstraint,
            "this session has sent directed presence to as many as it may",
        )),
        _ => Ok(()),
    }
}

/// A subscription stanza from `user`'s client to `contact`: the RFC's outbound rules for the
/// user (§3.1.2, §3.1.5, §3.2.2, §3.3.2), then the stanza goes on to the contact.
fn outbound(cx: &mut Cx, roster: &Roster, typ: Type, user: &str, contact: &Jid) {
    let user_jid = Jid::bare_from(user, cx.domain());
    let known = roster.item(cx, user, contact);
    let mut it = known.clone().unwrap_or_default();
    let route = |cx: &mut Cx| cx.route(presence_stanza(typ, &user_jid, contact, Origin::Account));
    match typ {
        Type::Subscribe => {
            if !it.subscription.to() && (!it.ask || !it.visible) {
                it.ask = true;
                it.visible = true;
                roster.put(cx, user, contact, it);
            }
            route(cx);
        }
        Type::Subscribed if it.pending_in => {
            it.subscription = Subscription::with(it.subscription.to(), true);
            it.pending_in = false;
            it.visible = true;
            roster.put(cx, user, contact, it);
            route(cx);
            // RFC 6121 §3.1.5: the contact now sees the user.
            current_presence(cx, user, contact);
        }
        Type::Subscribed => {
            // RFC 6121 §3.4: approval before any request is a pre-approval, kept, not sent.
            if !it.subscription.from() && !it.approved {
                it.approved = true;
                it.visible = true;
                roster.put(cx, user, contact, it);
            }
        }
        Type::Unsubscribe => {
            if known.is_some() && (it.subscription.to() || it.ask) {
                it.subscription = Subscription::with(false, it.subscription.from());
                it.ask = false;
                roster.put(cx, user, contact, it);
            }
            route(cx);
        }
        _ => {
            let had_from = it.subscription.from();
            if known.is_some() && (had_from || it.pending_in || it.approved) {
                it.subscription = Subscription::with(it.subscription.to(), false);
                it.pending_in = false;
                it.approved = false;
                store_or_forget(cx, roster, user, contact, it);
            }
            route(cx);
            // RFC 6121 §3.2.2: the contact no longer sees the user.
            if had_from {
                withdraw_presence(cx, user, contact);
            }
        }
    }
}

/// Approves `contact`'s request on `user`'s behalf: `subscribed` back, then the presence.
fn auto_approve(cx: &mut Cx, user: &str, contact: &Jid) {
    let user_jid = Jid::bare_from(user, cx.domain());
    cx.route(presence_stanza(
        Type::Subscribed,
        &user_jid,
        contact,
        Origin::Account,
    ));
    current_presence(cx, user, contact);
}

/// `contact` asked to see `user`'s presence: RFC 6121 §3.1.3.
fn in_subscribe(cx: &mut Cx, roster: &Roster, user: &str, contact: &Jid) {
    let mut it = roster.item(cx, user, contact).unwrap_or_default();
    if it.subscription.from() {
        auto_approve(cx, user, contact);
    } else if it.approved {
        it.subscription = Subscription::with(it.subscription.to(), true);
        it.approved = false;
        roster.put(cx, user, contact, it);
        auto_approve(cx, user, contact);
    } else {
        if !it.pending_in {
            it.pending_in = true;
            roster.put(cx, user, contact, it);
        }
        let user_jid = Jid::bare_from(user, cx.domain());
        let p = presence_stanza(Type::Subscribe, contact, &user_jid, Origin::Server);
        to_available(cx, user, &p.el);
    }
}

/// `contact` approved `user`'s request: RFC 6121 §3.1.6.
fn in_subscribed(cx: &mut Cx, roster: &Roster, user: &str, contact: &Jid) {
    let Some(mut it) = roster.item(cx, user, contact) else {
        return;
    };
    if !it.ask {
        return;
    }
    it.subscription = Subscription::with(true, it.subscription.from());
    it.ask = false;
    roster.put(cx, user, contact, it);
    let user_jid = Jid::bare_from(user, cx.domain());
    let p = presence_stanza(Type::Subscribed, contact, &user_jid, Origin::Server);
    to_available(cx, user, &p.el);
}

/// `contact` no longer wants `user`'s presence: RFC 6121 §3.3.3.
fn in_unsubscribe(cx: &mut Cx, roster: &Roster, user: &str, contact: &Jid) {
    let Some(mut it) = roster.item(cx, user, contact) else {
        return;
    };
    if !(it.subscription.from() || it.pending_in || it.approved) {
        return;
    }
    let had_from = it.subscription.from();
    it.subscription = Subscription::with(it.subscription.to(), false);
    it.pending_in = false;
    it.approved = false;
    store_or_forget(cx, roster, user, contact, it);
    let user_jid = Jid::bare_from(user, cx.domain());
    let p = presence_stanza(Type::Unsubscribe, contact, &user_jid, Origin::Server);
    to_available(cx, user, &p.el);
    if had_from {
        withdraw_presence(cx, user, contact);
    }
}

/// `contact` cancelled or refused `user`'s subscription: RFC 6121 §3.2.3.
fn in_unsubscribed(cx: &mut Cx, roster: &Roster, user: &str, contact: &Jid) {
    let Some(mut it) = roster.item(cx, user, contact) else {
        return;
    };
    if !(it.subscription.to() || it.ask) {
        return;
    }
    it.subscription = Subscription::with(false, it.subscription.from());
    it.ask = false;
    roster.put(cx, user, contact, it);
    let user_jid = Jid::bare_from(user, cx.domain());
    let p = presence_stanza(Type::Unsubscribed, contact, &user_jid, Origin::Server);
    to_available(cx, user, &p.el);
}

/// An item that is no longer in the roster and carries no state is deleted, not stored.
fn store_or_forget(cx: &mut Cx, roster: &Roster, user: &str, contact: &Jid, it: RosterItem) {
    if !it.visible && it == RosterItem::default() {
        roster.delete(cx, user, contact, false);
    } else {
        roster.put(cx, user, contact, it);
    }
}

/// RFC 6121 §2.5.2: removing an item cancels both directions of subscription first.
pub fn cancel_all(cx: &mut Cx, user: &str, contact: &Jid, it: &RosterItem) {
    if matches!(cx.destination(contact), Dest::Remote) && !cx.federates(contact.domain()) {
        return;
    }
    let user_jid = Jid::bare_from(user, cx.domain());
    if it.subscription.to() || it.ask {
        cx.route(presence_stanza(
            Type::Unsubscribe,
            &user_jid,
            contact,
            Origin::Account,
        ));
    }
    if it.subscription.from() || it.pending_in {
        cx.route(presence_stanza(
            Type::Unsubscribed,
            &user_jid,
            contact,
            Origin::Account,
        ));
        if it.subscription.from() {
            withdraw_presence(cx, user, contact);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::TestRouter;
    use super::*;

    fn roster_get(t: &TestRouter, j: &Jid) {
        t.client(
            j,
            "<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>",
        );
    }

    fn item(t: &TestRouter, user: &str, contact: &str) -> RosterItem {
        let s = super::super::roster::USER_CONTACT_TO_ROSTER_ITEM
            .get(&t.router.store, user, contact)
            .unwrap()
            .unwrap_or_default();
        RosterItem::decode(&s)
    }

    #[test]
    fn a_mutual_subscription_shares_presence() {
        let t = TestRouter::new();
        let a = t.online("alice", "phone");
        let b = t.online("bob", "laptop");
        roster_get(&t, &a);
        roster_get(&t, &b);
        let out = t.client(&a, "<presence type='subscribe' to='bob@localhost'/>");
        out.assert_sent(&a, "<iq type='set'><query xmlns='jabber:iq:roster'><item jid='bob@localhost' ask='subscribe' subscription='none'/></query></iq>");
        out.assert_sent(
            &b,
            "<presence type='subscribe' from='alice@localhost' to='bob@localhost'/>",
        );
        // Bob's pending request is not in his roster.
        out.assert_nothing_to(&a.bare());
        assert!(item(&t, "bob", "alice@localhost").pending_in);
        let out = t.client(&b, "<presence type='subscribed' to='alice@localhost'/>");
        out.assert_sent(&b, "<iq type='set'><query xmlns='jabber:iq:roster'><item jid='alice@localhost' subscription='from'/></query></iq>");
        out.assert_sent(&a, "<iq type='set'><query xmlns='jabber:iq:roster'><item jid='bob@localhost' subscription='to'/></query></iq>");
        out.assert_sent(&a, "<presence type='subscribed' from='bob@localhost'/>");
        // Alice now sees Bob.
        out.assert_sent(&a, "<presence from='bob@localhost/laptop'/>");
        assert_eq!(
            item(&t, "alice", "bob@localhost").subscription,
            Subscription::To
        );
        assert_eq!(
            item(&t, "bob", "alice@localhost").subscription,
            Subscription::From
        );
        // Bob's broadcasts reach Alice; hers do not reach Bob, who did not ask.
        let out = t.client(&b, "<presence><show>away</show></presence>");
        out.assert_sent(
            &a,
            "<presence from='bob@localhost/laptop'><show>away</show></presence>",
        );
        let out = t.client(&a, "<presence><show>away</show></presence>");
        out.assert_nothing_to(&b);
    }

    #[test]
    fn initial_presence_probes_contacts_and_ending_a_session_tells_them() {
        let t = TestRouter::new();
        let b = t.online("bob", "laptop");
        let a = t.bind("alice", "phone");
        // A mutual subscription, made before Alice is available.
        t.client(&a, "<presence type='subscribe' to='bob@localhost'/>");
        t.client(&b, "<presence type='subscribed' to='alice@localhost'/>");
        t.client(&b, "<presence type='subscribe' to='alice@localhost'/>");
        let out = t.client(&a, "<presence/>");
        // Bob's presence (the answer to the probe) and his pending request.
        out.assert_sent(
            &a,
            "<presence from='bob@localhost/laptop' to='alice@localhost/phone'/>",
        );
        out.assert_sent(&a, "<presence type='subscribe' from='bob@localhost'/>");
        t.client(&a, "<presence type='subscribed' to='bob@localhost'/>");
        let out = t.close(&a);
        out.assert_sent(
            &b,
            "<presence type='unavailable' from='alice@localhost/phone'/>",
        );
    }

    #[test]
    fn pre_approval_and_cancellation() {
        let t = TestRouter::new();
        let a = t.online("alice", "phone");
        let b = t.online("bob", "laptop");
        roster_get(&t, &b);
        // Bob pre-approves Alice; her request is then approved at once.
        let out = t.client(&b, "<presence type='subscribed' to='alice@localhost'/>");
        out.assert_nothing_to(&a);
        assert!(item(&t, "bob", "alice@localhost").approved);
        let out = t.client(&a, "<presence type='subscribe' to='bob@localhost'/>");
        out.assert_sent(&a, "<presence type='subscribed' from='bob@localhost'/>");
        out.assert_not_sent(&b, "<presence type='subscribe'/>");
        // Bob cancels: Alice hears it and that Bob went away.
        let out = t.client(&b, "<presence type='unsubscribed' to='alice@localhost'/>");
        out.assert_sent(&a, "<presence type='unsubscribed' from='bob@localhost'/>");
        out.assert_sent(
            &a,
            "<presence type='unavailable' from='bob@localhost/laptop'/>",
        );
        assert_eq!(
            item(&t, "alice", "bob@localhost").subscription,
            Subscription::None
        );
    }

    #[test]
    fn directed_presence_is_withdrawn_when_the_session_ends() {
        let t = TestRouter::new();
        let a = t.online("alice", "phone");
        let b = t.online("bob", "laptop");
        let out = t.client(
            &a,
            "<presence to='bob@localhost/laptop'><status>hi</status></presence>",
        );
        out.assert_sent(
            &b,
            "<presence from='alice@localhost/phone'><status>hi</status></presence>",
        );
        let out = t.close(&a);
        out.assert_sent(
            &b,
            "<presence type='unavailable' from='alice@localhost/phone'/>",
        );
    }

    #[test]
    fn directed_presence_is_bounded_per_session() {
        let mut config = crate::config::Config::default();
        config.limits.max_directed_presence = 2;
        let t = TestRouter::with_config(config, &["alice", "bob", "carol", "dave"]);
        let a = t.online("alice", "phone");
        let b = t.online("bob", "pc");
        let d = t.online("dave", "pc");
        t.client(&a, "<presence to='bob@localhost'/>");
        t.client(&a, "<presence to='carol@localhost'/>");
        let out = t.client(&a, "<presence id='p3' to='dave@localhost'/>");
        out.assert_error(&a, "p3", Condition::ResourceConstraint);
        out.assert_nothing_to(&d);
        // Again to one it has: an update, not another entry.
        let out = t.client(
            &a,
            "<presence id='p4' to='bob@localhost'><show>away</show></presence>",
        );
        out.assert_nothing_to(&a);
        out.assert_sent(
            &b,
            "<presence from='alice@localhost/phone'><show>away</show></presence>",
        );
        // Unavailable to one makes room.
        t.client(&a, "<presence type='unavailable' to='carol@localhost'/>");
        let out = t.client(&a, "<presence id='p5' to='dave@localhost'/>");
        out.assert_nothing_to(&a);
        out.assert_sent(&d, "<presence from='alice@localhost/phone'/>");
        // An error in answer makes room too: nothing is left to withdraw from there.
        t.client(&a, "<presence type='unavailable' to='dave@localhost'/>");
        t.client(&a, "<presence to='dave@localhost/pc'/>");
        let out = t.client(&a, "<presence id='p6' to='carol@localhost/pc'/>");
        out.assert_error(&a, "p6", Condition::ResourceConstraint);
        let out = t.client(
            &d,
            "<presence type='error' to='alice@localhost/phone'><error type='cancel'>\
             <not-allowed xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>",
        );
        out.assert_sent(&a, "<presence type='error' from='dave@localhost/pc'/>");
        let c = t.online("carol", "pc");
        let out = t.client(&a, "<presence id='p7' to='carol@localhost/pc'/>");
        out.assert_nothing_to(&a);
        out.assert_sent(&c, "<presence from='alice@localhost/phone'/>");
        let out = t.close(&a);
        out.assert_sent(
            &b,
            "<presence type='unavailable' from='alice@localhost/phone'/>",
        );
        out.assert_sent(
            &c,
            "<presence type='unavailable' from='alice@localhost/phone'/>",
        );
        out.assert_nothing_to(&d);
    }

    #[test]
    fn requests_to_other_domains_and_missing_accounts() {
        let t = TestRouter::new();
        let a = t.online("alice", "phone");
        roster_get(&t, &a);
        let out = t.client(
            &a,
            "<presence type='subscribe' to='x@elsewhere.example' id='s1'/>",
        );
        out.assert_error(&a, "s1", Condition::RemoteServerNotFound);
        // The roster is untouched by a refused request.
        out.assert_not_sent(&a, "<iq type='set'/>");
        // An account that does not exist refuses at once.
        let out = t.client(&a, "<presence type='subscribe' to='nobody@localhost'/>");
        out.assert_sent(
            &a,
            "<presence type='unsubscribed' from='nobody@localhost'/>",
        );
        assert!(!item(&t, "alice", "nobody@localhost").ask);
    }
}
