//! In-room traffic: messages to all occupants (XEP-0045 §7.4) and subject changes (§8.1),
//! private messages (§7.5), mediated invitations and declines (§7.8.2), voice requests and
//! their approval (§7.13, §8.6), and iqs to occupant JIDs (§17.4): the self-ping of XEP-0410,
//! answered by the room, and others forwarded between occupants without showing real JIDs.

use super::forms;
use super::room::{Affiliated, Affiliation, Occupant, Past, Role, Subject, fold};
use super::store::ROOM_ARCHIVE;
use super::{
    FORWARD_TIMEOUT_MS, Forward, MAX_FORWARDED, MAX_INVITED, MAX_INVITES_PER_MESSAGE, Muc, Out,
    now_ms,
};
use crate::jid::Jid;
use crate::modules::Cx;
use crate::router::Dest;
use crate::stanza::{Condition, Kind, Stanza, StanzaError, Type};
use crate::xml::{Element, Node, ns};

fn not_in() -> StanzaError {
    StanzaError::with_text(Condition::NotAcceptable, "you are not in the room")
}

fn no_room() -> StanzaError {
    StanzaError::with_text(Condition::ItemNotFound, "no such room")
}

/// A message as the room relays it: without `from`/`to` (set per copy), without a `<x/>` of
/// the room's namespace (only the room says that), without a stanza-id claiming to be the
/// room's.
fn relayed(el: &Element, room: &Jid) -> Element {
    let mut m = el.clone();
    m.remove_attr("from");
    m.remove_attr("to");
    let room = room.to_string();
    m.children.retain(|n| match n {
        Node::Element(e) => {
            !(e.is("x", ns::MUC_USER)
                || e.is("stanza-id", ns::SID) && e.attr("by") == Some(room.as_str()))
        }
        Node::Text(_) => false,
    });
    m
}

/// Whether a message belongs in the history a newcomer gets: something to read.
fn readable(msg: &Element) -> bool {
    msg.has_child("body", ns::CLIENT) || msg.elements().any(|c| c.ns == ns::OMEMO_LEGACY)
}

impl Muc {
    /// Flood control: a token per message, `messages_per_minute` of them refilled a minute.
    fn flood(&self, o: &mut Occupant, now: u64) -> Result<(), StanzaError> {
        let cap = self.c.messages_per_minute as f64;
        let elapsed = now.saturating_sub(o.refilled_ms) as f64;
        o.tokens = (o.tokens + elapsed * cap / 60_000.0).min(cap);
        o.refilled_ms = now;
        if o.tokens < 1.0 {
            return Err(StanzaError::with_text(
                Condition::PolicyViolation,
                "too many messages; wait a moment",
            ));
        }
        o.tokens -= 1.0;
        Ok(())
    }

    /// A message to the room's own JID.
    pub(super) fn room_message(
        &self,
        cx: &mut Cx,
        st: &Stanza,
        name: &str,
        out: &mut Out,
    ) -> Result<(), StanzaError> {
        match st.typ {
            Type::Error => Ok(()),
            Type::Groupchat => self.groupchat(cx, st, name, out),
            _ => {
                if let Some(x) = st.el.child("x", ns::MUC_USER) {
                    if x.has_child("invite", ns::MUC_USER) {
                        return self.invite(cx, st, name, x, out);
                    }
                    if let Some(d) = x.child("decline", ns::MUC_USER) {
                        self.decline(st, name, d, out);
                        return Ok(());
                    }
                }
                if let Some(form) = st.el.child("x", ns::DATA_FORMS) {
                    return self.voice(cx, st, name, form, out);
                }
                Err(StanzaError::bad_request(
                    "messages to everyone in the room are of type groupchat",
                ))
            }
        }
    }

    fn groupchat(
        &self,
        cx: &mut Cx,
        st: &Stanza,
        name: &str,
        out: &mut Out,
    ) -> Result<(), StanzaError> {
        let now = now_ms(cx);
        let mut rooms = self.rooms.borrow_mut();
        let room = rooms.get_mut(name).ok_or_else(no_room)?;
        let key = room.sessions.get(&st.from).cloned().ok_or_else(not_in)?;
        let o = room.occupants.get_mut(&key).ok_or_else(not_in)?;
        if o.role < Role::Participant {
            return Err(StanzaError::with_text(
                Condition::Forbidden,
                "visitors need voice to speak in this room",
            ));
        }
        let from = room.jid.with_resource(&o.nick).map_err(|_| not_in())?;
        let sender = o.bare.to_string();
        let is_subject = st.el.has_child("subject", ns::CLIENT)
            && !st.el.has_child("body", ns::CLIENT)
            && !st.el.has_child("thread", ns::CLIENT);
        if is_subject {
            if !(o.role == Role::Moderator || room.config.change_subject) {
                return Err(StanzaError::with_text(
                    Condition::Forbidden,
                    "only moderators may change the subject",
                ));
            }
            let text = st
                .el
                .child("subject", ns::CLIENT)
                .map(Element::text)
                .unwrap_or_default();
            if text.len() > self.c.max_subject_bytes {
                return Err(StanzaError::with_text(
                    Condition::NotAcceptable,
                    format!("subjects are at most {} bytes", self.c.max_subject_bytes),
                ));
            }
            room.subject = Subject {
                text,
                by: Some(o.nick.clone()),
                at_ms: Some(now),
            };
        } else {
            self.flood(o, now)?;
        }
        let mut el = relayed(&st.el, &room.jid);
        if !is_subject && crate::modules::mam::worth_keeping(&el) {
            if room.config.archiving {
                let id = self.ids.next(cx);
                let sid = Element::new("stanza-id", ns::SID)
                    .with_attr("by", room.jid.to_string())
                    .with_attr("id", id.to_string());
                // Kept as XEP-0313 §5.1.2 forwards it: from the occupant JID.
                let mut kept = el.clone().with_child(sid.clone());
                kept.set_attr("from", from.to_string());
                let xml = kept.to_xml();
                // A message the full archive did not take carries no archive id (the id is
                // then never used: ids need only increase).
                if self.quota.take(cx, name, &sender, &xml) {
                    el.push(sid);
                    out.trailing
                        .push(ROOM_ARCHIVE.append(name, id, &sender, xml));
                }
            }
            if readable(&el) && room.config.history_length > 0 {
                let past = Past {
                    from: from.clone(),
                    stamp_ms: now,
                    bytes: el.to_xml().len(),
                    msg: el.clone(),
                };
                let most = room.config.history_length.min(self.c.max_history);
                room.remember(past, most, self.c.max_history_bytes);
            }
        }
        for (s, _) in room.all_sessions() {
            out.send(Kind::Message, Type::Groupchat, from.clone(), &s, el.clone());
        }
        if is_subject && room.config.persistent {
            out.writes.push(self.save(cx, room));
        }
        Ok(())
    }

    /// A message to an occupant JID: a private message.
    pub(super) fn private(
        &self,
        cx: &mut Cx,
        st: &Stanza,
        name: &str,
        nick: &str,
        out: &mut Out,
    ) -> Result<(), StanzaError> {
        // An error from an occupant's side answers what the room relayed to it, in the room
        // or privately; it cannot be told which, and passing it on would mark a message to
        // everyone as failed for its sender because one recipient refused it. It goes no
        // further.
        if st.typ == Type::Error {
            return Ok(());
        }
        let mut rooms = self.rooms.borrow_mut();
        let room = rooms.get_mut(name).ok_or_else(no_room)?;
        let key = room.sessions.get(&st.from).cloned().ok_or_else(not_in)?;
        if st.typ == Type::Groupchat {
            return Err(StanzaError::bad_request(
                "a private message is not of type groupchat",
            ));
        }
        let Some(target) = room.occupants.get(&fold(nick)) else {
            return Err(StanzaError::with_text(
                Condition::ItemNotFound,
                "nobody by that nickname is in the room",
            ));
        };
        let to: Vec<Jid> = target.sessions.iter().map(|s| s.jid.clone()).collect();
        let o = room.occupants.get_mut(&key).ok_or_else(not_in)?;
        if !room.config.allow_pm.allows(o.role) {
            return Err(StanzaError::with_text(
                Condition::Forbidden,
                "private messages are not allowed in this room",
            ));
        }
        self.flood(o, now_ms(cx))?;
        let from = room.jid.with_resource(&o.nick).map_err(|_| not_in())?;
        let mut el = relayed(&st.el, &room.jid);
        el.push(Element::new("x", ns::MUC_USER));
        for s in to {
            out.send(Kind::Message, st.typ, from.clone(), &s, el.clone());
        }
        Ok(())
    }

    /// Mediated invitations (XEP-0045 §7.8.2). In a members-only room only admins and owners
    /// invite, and members when the room allows it; the invitee becomes a member.
    fn invite(
        &self,
        cx: &mut Cx,
        st: &Stanza,
        name: &str,
        x: &Element,
        out: &mut Out,
    ) -> Result<(), StanzaError> {
        let invites: Vec<&Element> = x
            .elements()
            .filter(|e| e.is("invite", ns::MUC_USER))
            .collect();
        if invites.len() > MAX_INVITES_PER_MESSAGE {
            return Err(StanzaError::with_text(
                Condition::PolicyViolation,
                format!("at most {MAX_INVITES_PER_MESSAGE} invitations at once"),
            ));
        }
        let mut targets = Vec::new();
        for i in &invites {
            let to = i
                .attr("to")
                .and_then(|t| Jid::parse(t).ok())
                .ok_or_else(|| StanzaError::new(Condition::JidMalformed))?
                .bare();
            match cx.destination(&to) {
                Dest::Remote => return Err(StanzaError::new(Condition::RemoteServerNotFound)),
                Dest::Account(u) if !cx.account_exists(u) => {
                    return Err(StanzaError::with_text(
                        Condition::ItemNotFound,
                        format!("{to} does not exist"),
                    ));
                }
                Dest::Account(_) => {}
                _ => return Err(StanzaError::new(Condition::JidMalformed)),
            }
            let reason = i.child("reason", ns::MUC_USER).map(Element::text);
            targets.push((to, reason));
        }
        let mut rooms = self.rooms.borrow_mut();
        let room = rooms.get_mut(name).ok_or_else(no_room)?;
        let o = room.occupant_of(&st.from).ok_or_else(not_in)?;
        let inviter = o.bare.clone();
        let aff = room.affiliation(&inviter);
        let adds_members = room.config.members_only;
        if adds_members
            && aff < Affiliation::Admin
            && !(aff == Affiliation::Member && room.config.allow_invites)
        {
            return Err(StanzaError::with_text(
                Condition::Forbidden,
                "only admins may invite into this room",
            ));
        }
        if adds_members {
            let new = targets
                .iter()
                .filter(|(t, _)| !room.affiliations.contains_key(t))
                .count();
            if targets
                .iter()
                .any(|(t, _)| room.affiliation(t) == Affiliation::Outcast)
            {
                return Err(StanzaError::with_text(
                    Condition::NotAllowed,
                    "an invitee is banned from the room",
                ));
            }
            if room.affiliations.len() + new > self.c.max_affiliations {
                return Err(StanzaError::with_text(
                    Condition::PolicyViolation,
                    "the room has as many members as it may",
                ));
            }
        }
        let mut added = Vec::new();
        for (to, reason) in targets {
            if adds_members && room.affiliation(&to) < Affiliation::Member {
                let entry = Affiliated {
                    affiliation: Affiliation::Member,
                    nick: None,
                };
                room.affiliations.insert(to.clone(), entry);
                added.push(to.clone());
            }
            room.invited.retain(|(i, _)| *i != to);
            room.invited.push_back((to.clone(), inviter.clone()));
            while room.invited.len() > MAX_INVITED {
                room.invited.pop_front();
            }
            let mut inv =
                Element::new("invite", ns::MUC_USER).with_attr("from", inviter.to_string());
            if let Some(r) = &reason {
                inv.push(Element::new("reason", ns::MUC_USER).with_text(r.clone()));
            }
            let mut ux = Element::new("x", ns::MUC_USER).with_child(inv);
            if let Some(pw) = &room.config.password {
                ux.push(Element::new("password", ns::MUC_USER).with_text(pw.clone()));
            }
            let body = format!("{inviter} invites you to the room {}", room.jid);
            let el = Element::new("message", ns::CLIENT)
                .with_attr("id", self.fresh_id())
                .with_child(ux)
                .with_child(Element::new("body", ns::CLIENT).with_text(body));
            out.send(Kind::Message, Type::Normal, room.jid.clone(), &to, el);
        }
        self.persist_affiliations(cx, room, &added, out);
        Ok(())
    }

    /// A declined invitation goes back to whoever sent it, and only to them.
    fn decline(&self, st: &Stanza, name: &str, d: &Element, out: &mut Out) {
        let mut rooms = self.rooms.borrow_mut();
        let Some(room) = rooms.get_mut(name) else {
            return;
        };
        let invitee = st.from.bare();
        let Some(i) = room.invited.iter().position(|(t, _)| *t == invitee) else {
            return;
        };
        let named = d
            .attr("to")
            .and_then(|t| Jid::parse(t).ok())
            .map(|t| t.bare());
        if named.is_some_and(|n| n != room.invited[i].1) {
            return;
        }
        let Some((_, inviter)) = room.invited.remove(i) else {
            return;
        };
        let mut dec = Element::new("decline", ns::MUC_USER).with_attr("from", invitee.to_string());
        if let Some(r) = d.child("reason", ns::MUC_USER) {
            dec.push(Element::new("reason", ns::MUC_USER).with_text(r.text()));
        }
        let el = Element::new("message", ns::CLIENT)
            .with_attr("id", self.fresh_id())
            .with_child(Element::new("x", ns::MUC_USER).with_child(dec));
        out.send(Kind::Message, Type::Normal, room.jid.clone(), &inviter, el);
    }

    /// A visitor's voice request goes to the moderators, once until it is answered; a
    /// moderator's approval gives voice.
    fn voice(
        &self,
        cx: &mut Cx,
        st: &Stanza,
        name: &str,
        form: &Element,
        out: &mut Out,
    ) -> Result<(), StanzaError> {
        let Some(fields) = forms::read(form, ns::MUC_REQUEST)? else {
            return Ok(());
        };
        let mut rooms = self.rooms.borrow_mut();
        let room = rooms.get_mut(name).ok_or_else(no_room)?;
        let key = room.sessions.get(&st.from).cloned().ok_or_else(not_in)?;
        let role = room.occupants.get(&key).ok_or_else(not_in)?.role;
        if form.attr("type") == Some("submit") && role == Role::Moderator {
            if let Some(nick) = forms::approved_nick(&fields) {
                let target = fold(&nick);
                if room
                    .occupants
                    .get(&target)
                    .is_some_and(|o| o.role == Role::Visitor)
                {
                    Muc::set_role(room, &target, Role::Participant, out);
                }
            }
            return Ok(());
        }
        if !forms::is_voice_request(&fields) || role != Role::Visitor {
            return Ok(());
        }
        let o = room.occupants.get_mut(&key).ok_or_else(not_in)?;
        if o.voice_requested {
            return Ok(());
        }
        self.flood(o, now_ms(cx))?;
        o.voice_requested = true;
        let approval = forms::voice_approval(&st.from.to_string(), &o.nick);
        for (s, r) in room.all_sessions() {
            if r == Role::Moderator {
                let el = Element::new("message", ns::CLIENT)
                    .with_attr("id", self.fresh_id())
                    .with_child(approval.clone());
                out.send(Kind::Message, Type::Normal, room.jid.clone(), &s, el);
            }
        }
        Ok(())
    }

    /// An iq to an occupant JID: the self-ping (XEP-0410 §3.3), requests forwarded to the
    /// occupant, and the answers to forwarded ones.
    pub(super) fn occupant_iq(
        &self,
        cx: &mut Cx,
        st: &Stanza,
        name: &str,
        nick: &str,
        out: &mut Out,
    ) -> Result<(), StanzaError> {
        if !st.is_request() {
            self.answer_forwarded(st, out);
            return Ok(());
        }
        let now = now_ms(cx);
        let rooms = self.rooms.borrow();
        let room = rooms.get(name);
        let asker = room.and_then(|r| r.occupant_of(&st.from));
        let payload = st
            .payload()
            .ok_or_else(|| StanzaError::bad_request("no payload"))?;
        if payload.is("ping", ns::PING) && asker.is_some_and(|a| fold(&a.nick) == fold(nick)) {
            Muc::reply(st, None, out);
            return Ok(());
        }
        let (Some(room), Some(asker)) = (room, asker) else {
            // §6.5: a non-occupant's disco of an occupant is a bad request.
            if payload.ns == ns::DISCO_INFO || payload.ns == ns::DISCO_ITEMS {
                return Err(StanzaError::bad_request("only occupants may ask occupants"));
            }
            return Err(not_in());
        };
        let target = room.occupant(nick).ok_or_else(|| {
            StanzaError::with_text(Condition::ItemNotFound, "nobody by that nickname is in")
        })?;
        let mut pending = self.forwarded.borrow_mut();
        while pending
            .front()
            .is_some_and(|(_, f)| now.saturating_sub(f.at) > FORWARD_TIMEOUT_MS)
        {
            pending.pop_front();
        }
        if pending.len() >= MAX_FORWARDED {
            return Err(StanzaError::new(Condition::ResourceConstraint));
        }
        let id = self.fresh_id();
        let via = room.occupant_jid(&asker.nick);
        let session = target.current().jid.clone();
        let f = Forward {
            asker: st.from.clone(),
            id: st.id().unwrap_or_default().to_owned(),
            target: room.occupant_jid(&target.nick),
            session: session.clone(),
            via: via.clone(),
            at: now,
        };
        pending.push_back((id.clone(), f));
        let mut el = st.el.clone();
        el.set_attr("id", id);
        out.send(Kind::Iq, st.typ, via, &session, el);
        Ok(())
    }

    /// The answer to a forwarded iq goes back to whoever asked, from the occupant asked.
    fn answer_forwarded(&self, st: &Stanza, out: &mut Out) {
        let Some(id) = st.id() else {
            return;
        };
        let mut pending = self.forwarded.borrow_mut();
        let Some(i) = pending
            .iter()
            .position(|(k, f)| k == id && f.session == st.from && Some(&f.via) == st.to.as_ref())
        else {
            return;
        };
        let Some((_, f)) = pending.remove(i) else {
            return;
        };
        let mut el = st.el.clone();
        el.set_attr("id", f.id);
        out.send(Kind::Iq, st.typ, f.target, &f.asker, el);
    }

    /// Tells everyone in the room of a configuration change (XEP-0045 §10.2.1).
    pub(super) fn notice(room: &super::room::Room, codes: &[u16], out: &mut Out) {
        if codes.is_empty() {
            return;
        }
        let mut x = Element::new("x", ns::MUC_USER);
        for c in codes {
            x.push(Element::new("status", ns::MUC_USER).with_attr("code", c.to_string()));
        }
        for (s, _) in room.all_sessions() {
            let el = Element::new("message", ns::CLIENT)
                .with_attr("type", "groupchat")
                .with_child(x.clone());
            out.send(Kind::Message, Type::Groupchat, room.jid.clone(), &s, el);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use crate::jid::Jid;
    use crate::stanza::Condition;
    use crate::xml::ns;

    #[test]
    fn a_moderated_room_silences_visitors_until_a_moderator_gives_voice() {
        let t = router();
        let a = t.online("alice", "phone");
        let b = t.online("bob", "laptop");
        create(
            &t,
            &a,
            "town",
            "Mum",
            &[("muc#roomconfig_moderatedroom", "1")],
        );
        let out = enter(&t, &b, "town", "Dad");
        out.assert_sent(&b, "<presence><x xmlns='http://jabber.org/protocol/muc#user'><item role='visitor'/><status code='110'/></x></presence>");
        let out = say(&t, &b, "town", "hello?");
        out.assert_error(&b, "m-hello?", Condition::Forbidden);
        out.assert_nothing_to(&a);
        let request = format!(
            "<message to='{}'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>{}</value></field><field var='muc#role'><value>participant</value></field></x></message>",
            room("town"),
            ns::MUC_REQUEST
        );
        let out = t.client(&b, &request);
        let form = out.only_to(&a).child("x", ns::DATA_FORMS).unwrap().clone();
        assert_eq!(form.attr("type"), Some("form"));
        // Asking again before an answer bothers nobody.
        t.client(&b, &request).assert_nothing_to(&a);
        let approve = format!(
            "<message to='{}'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>{}</value></field><field var='muc#role'><value>participant</value></field><field var='muc#jid'><value>bob@localhost/laptop</value></field><field var='muc#roomnick'><value>Dad</value></field><field var='muc#request_allow'><value>true</value></field></x></message>",
            room("town"),
            ns::MUC_REQUEST
        );
        // A visitor cannot approve his own request.
        let forged = t.client(&b, &approve);
        forged.assert_not_sent(&b, "<presence><x xmlns='http://jabber.org/protocol/muc#user'><item role='participant'/></x></presence>");
        let out = t.client(&a, &approve);
        out.assert_sent(&b, "<presence from='town@muc.localhost/Dad'><x xmlns='http://jabber.org/protocol/muc#user'><item role='participant'/><status code='110'/></x></presence>");
        say(&t, &b, "town", "thanks").assert_sent(
            &a,
            "<message type='groupchat'><body>thanks</body></message>",
        );
        // Voice taken again, by nickname.
        admin_set(&t, &a, "town", "<item nick='Dad' role='visitor'/>").assert_sent(&b, "<presence><x xmlns='http://jabber.org/protocol/muc#user'><item role='visitor'/></x></presence>");
        say(&t, &b, "town", "again").assert_error(&b, "m-again", Condition::Forbidden);
    }

    #[test]
    fn private_messages_go_between_occupants() {
        let t = router();
        let (a, b, c) = family(&t);
        let out = t.client(
            &b,
            &format!(
                "<message type='chat' id='p' to='{}/kid'><body>psst</body></message>",
                room("family")
            ),
        );
        out.assert_sent(&c, &format!("<message type='chat' id='p' from='{}/Dad'><body>psst</body><x xmlns='{USER}'/></message>", room("family")));
        out.assert_nothing_to(&a);
        t.client(
            &b,
            &format!(
                "<message type='chat' id='p' to='{}/Nobody'><body>x</body></message>",
                room("family")
            ),
        )
        .assert_error(&b, "p", Condition::ItemNotFound);
        t.client(
            &b,
            &format!(
                "<message type='groupchat' id='p' to='{}/Kid'><body>x</body></message>",
                room("family")
            ),
        )
        .assert_error(&b, "p", Condition::BadRequest);
        let d = t.online("dave", "pc");
        t.client(
            &d,
            &format!(
                "<message type='chat' id='p' to='{}/Kid'><body>x</body></message>",
                room("family")
            ),
        )
        .assert_error(&d, "p", Condition::NotAcceptable);
        configure(
            &t,
            &a,
            "family",
            &[("muc#roomconfig_allowpm", "moderators")],
        );
        t.client(
            &b,
            &format!(
                "<message type='chat' id='p' to='{}/Kid'><body>x</body></message>",
                room("family")
            ),
        )
        .assert_error(&b, "p", Condition::Forbidden);
        t.client(
            &a,
            &format!(
                "<message type='chat' id='p' to='{}/Kid'><body>x</body></message>",
                room("family")
            ),
        )
        .assert_sent(&c, "<message type='chat' from='family@muc.localhost/Mum'/>");
    }

    #[test]
    fn an_error_from_one_occupant_fails_nobody_elses_message() {
        let t = router();
        let (a, b, _c) = family(&t);
        say(&t, &a, "family", "hello all");
        // Bob's side refuses the copy it was sent: that is for the room to know, not Mum.
        let out = t.client(
            &b,
            &format!(
                "<message type='error' id='m-hello all' to='{}/Mum'><error type='cancel'>\
                 <service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>\
                 </message>",
                room("family")
            ),
        );
        out.assert_nothing_to(&a);
        out.assert_nothing_to(&b);
    }

    #[test]
    fn invitations_are_mediated_and_declined_to_the_inviter_only() {
        let t = router();
        let (a, b, _c) = family(&t);
        let d = t.online("dave", "pc");
        // A member may not invite into this members-only room.
        let invite = |who: &Jid| {
            t.client(who, &format!("<message id='inv' to='{}'><x xmlns='{USER}'><invite to='dave@localhost'><reason>join us</reason></invite></x></message>", room("family")))
        };
        invite(&b).assert_error(&b, "inv", Condition::Forbidden);
        let out = invite(&a);
        out.assert_sent(&d, &format!("<message from='{}'><x xmlns='{USER}'><invite from='alice@localhost'><reason>join us</reason></invite></x></message>", room("family")));
        // The invitee became a member and gets in.
        enter(&t, &d, "family", "Grandpa").assert_sent(&d, "<presence><x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='member'/><status code='110'/></x></presence>");
        t.client(
            &d,
            &format!(
                "<presence type='unavailable' to='{}/Grandpa'/>",
                room("family")
            ),
        );
        // A decline goes to whoever invited, not to anyone named.
        let out = t.client(&d, &format!("<message to='{}'><x xmlns='{USER}'><decline to='bob@localhost'><reason>busy</reason></decline></x></message>", room("family")));
        out.assert_nothing_to(&b);
        out.assert_nothing_to(&a);
        invite(&a);
        let out = t.client(&d, &format!("<message to='{}'><x xmlns='{USER}'><decline><reason>busy</reason></decline></x></message>", room("family")));
        out.assert_sent(&a, &format!("<message from='{}'><x xmlns='{USER}'><decline from='dave@localhost'><reason>busy</reason></decline></x></message>", room("family")));
        // Invitations to nobody or elsewhere are refused; a direct invitation passes between users.
        t.client(&a, &format!("<message id='inv' to='{}'><x xmlns='{USER}'><invite to='nobody@localhost'/></x></message>", room("family")))
            .assert_error(&a, "inv", Condition::ItemNotFound);
        t.client(&a, &format!("<message id='inv' to='{}'><x xmlns='{USER}'><invite to='x@elsewhere.example'/></x></message>", room("family")))
            .assert_error(&a, "inv", Condition::RemoteServerNotFound);
        let out = t.client(
            &a,
            &format!(
                "<message to='dave@localhost'><x xmlns='jabber:x:conference' jid='{}'/></message>",
                room("family")
            ),
        );
        out.assert_sent(&d, &format!("<message from='alice@localhost/phone'><x xmlns='jabber:x:conference' jid='{}'/></message>", room("family")));
    }

    #[test]
    fn self_ping_answers_for_the_room_and_other_iqs_are_forwarded() {
        let t = router();
        let (a, b, c) = family(&t);
        let ping = |who: &Jid, nick: &str| {
            t.client(
                who,
                &format!(
                    "<iq type='get' id='sp' to='{}/{nick}'><ping xmlns='urn:xmpp:ping'/></iq>",
                    room("family")
                ),
            )
        };
        ping(&b, "Dad").assert_sent(
            &b,
            "<iq type='result' id='sp' from='family@muc.localhost/Dad'/>",
        );
        let d = t.online("dave", "pc");
        let out = ping(&d, "Dad");
        out.assert_sent(&d, "<iq type='error' id='sp'><error type='modify' by='family@muc.localhost'><not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>");
        // Out of the room: not joined any more.
        t.client(
            &b,
            &format!("<presence type='unavailable' to='{}/Dad'/>", room("family")),
        );
        ping(&b, "Dad").assert_error(&b, "sp", Condition::NotAcceptable);
        // A version query to another occupant reaches it from the asker's occupant JID, and the
        // answer comes back from the occupant asked; nobody sees a real JID.
        let out = t.client(
            &c,
            &format!(
                "<iq type='get' id='v1' to='{}/Mum'><query xmlns='jabber:iq:version'/></iq>",
                room("family")
            ),
        );
        let fwd = out.only_to(&a).clone();
        assert_eq!(fwd.attr("from"), Some("family@muc.localhost/Kid"));
        let id = fwd.attr("id").unwrap().to_owned();
        assert_ne!(id, "v1");
        let out = t.client(&a, &format!("<iq type='result' id='{id}' to='{}/Kid'><query xmlns='jabber:iq:version'><name>x</name></query></iq>", room("family")));
        out.assert_sent(&c, "<iq type='result' id='v1' from='family@muc.localhost/Mum'><query xmlns='jabber:iq:version'/></iq>");
        // An answer nobody asked for goes nowhere.
        t.client(
            &a,
            &format!("<iq type='result' id='{id}' to='{}/Kid'/>", room("family")),
        )
        .assert_nothing_to(&c);
        // Outsiders may not ask occupants.
        t.client(&d, &format!("<iq type='get' id='v2' to='{}/Mum'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>", room("family")))
            .assert_error(&d, "v2", Condition::BadRequest);
    }
}
