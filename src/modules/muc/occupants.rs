//! Occupants and their presence (XEP-0045 §7.2 to §7.7, §7.14): entering a room (creating it
//! when it does not exist), presence updates, nickname changes, leaving, and removal by the
//! room; what a newcomer is sent, in the XEP's order: the others' presence, its own, the
//! history, the subject.

use super::room::{Affiliated, Affiliation, Joined, Occupant, Past, Role, Room, fold};
use super::{MAX_SESSIONS_PER_OCCUPANT, Muc, Out, now_ms};
use crate::jid::Jid;
use crate::modules::Cx;
use crate::stanza::{Condition, Kind, Origin, Stanza, StanzaError, Type};
use crate::xml::{Element, ns};
use std::time::{Duration, UNIX_EPOCH};

/// What the room says of an occupant that goes, beside its status codes.
#[derive(Default)]
pub struct Leaving<'a> {
    /// The occupant's own exit message.
    pub status: Option<Element>,
    /// Its new nickname (303).
    pub nick: Option<&'a str>,
    /// Who removed it (a nickname) and why.
    pub actor: Option<&'a str>,
    pub reason: Option<&'a str>,
    /// The room is destroyed (XEP-0045 §10.9).
    pub destroy: Option<Element>,
}

/// The presence of occupant `o` as the session `to` sees it; `own` when `to` is one of `o`'s
/// sessions (status 110, and its own JID).
pub fn shown(room: &Room, o: &Occupant, to: &Jid, sees: bool, own: bool, codes: &[u16]) -> Stanza {
    let mut el = o.current().presence.clone();
    let mut codes = codes.to_vec();
    if own {
        codes.push(110);
    }
    el.push(room.user_x(o, o.role, sees || own, &codes));
    let from = room.occupant_jid(&o.nick);
    Stanza::new(
        Kind::Presence,
        Type::Available,
        from,
        to.clone(),
        Origin::Server,
        el,
    )
}

/// The unavailable presence of `o`, from its occupant JID at `nick`, as `to` sees it.
#[allow(clippy::too_many_arguments)]
pub fn gone(
    room: &Room,
    o: &Occupant,
    nick: &str,
    to: &Jid,
    sees: bool,
    own: bool,
    codes: &[u16],
    how: &Leaving,
) -> Stanza {
    let mut el = Element::new("presence", ns::CLIENT).with_attr("type", "unavailable");
    if let Some(s) = &how.status {
        el.push(s.clone());
    }
    let mut codes = codes.to_vec();
    if own {
        codes.push(110);
    }
    let role = if how.nick.is_some() {
        o.role
    } else {
        Role::None
    };
    let mut x = room.user_x(o, role, sees || own, &codes);
    if let Some(crate::xml::Node::Element(item)) = x.children.first_mut() {
        if let Some(n) = how.nick {
            item.set_attr("nick", n);
        }
        if let Some(a) = how.actor {
            item.push(Element::new("actor", ns::MUC_USER).with_attr("nick", a));
        }
        if let Some(r) = how.reason {
            item.push(Element::new("reason", ns::MUC_USER).with_text(r));
        }
    }
    if let Some(d) = &how.destroy {
        x.push(d.clone());
    }
    el.push(x);
    let from = room.occupant_jid(nick);
    Stanza::new(
        Kind::Presence,
        Type::Unavailable,
        from,
        to.clone(),
        Origin::Server,
        el,
    )
}

/// Sends `o`'s presence to every session in the room but `except`; its own sessions get
/// status 110 and `own_codes` too.
pub fn broadcast(room: &Room, key: &str, except: Option<&Jid>, own_codes: &[u16], out: &mut Out) {
    let Some(o) = room.occupants.get(key) else {
        return;
    };
    for (k, viewer) in &room.occupants {
        let own = k == key;
        for s in &viewer.sessions {
            if Some(&s.jid) == except {
                continue;
            }
            let codes = if own { own_codes } else { &[] };
            let st = shown(room, o, &s.jid, room.sees_jids(viewer.role), own, codes);
            out.stanzas.push(st);
        }
    }
}

/// A presence as the room shows it: what a client may say of itself (show, status, priority,
/// caps, ...) without what only the room says (XEP-0045 §17.3).
fn cleaned(el: &Element) -> Element {
    let mut p = Element::new("presence", ns::CLIENT);
    if let Some(lang) = el.attr("xml:lang") {
        p.set_attr("xml:lang", lang);
    }
    for c in el.elements() {
        if !c.is("x", ns::MUC) && !c.is("x", ns::MUC_USER) {
            p.push(c.clone());
        }
    }
    p
}

/// `<delay/>` from the room at `ms`.
pub fn delay(room: &Jid, ms: u64) -> Element {
    Element::new("delay", ns::DELAY)
        .with_attr("from", room.to_string())
        .with_attr(
            "stamp",
            crate::modules::time::stamp(UNIX_EPOCH + Duration::from_millis(ms)),
        )
}

fn attr_num(el: &Element, name: &str) -> Option<u64> {
    el.attr(name).and_then(|v| v.trim().parse().ok())
}

impl Muc {
    /// Presence to an occupant JID.
    pub(super) fn occupant_presence(
        &self,
        cx: &mut Cx,
        st: &Stanza,
        name: &str,
        nick: &str,
        out: &mut Out,
    ) -> Result<(), StanzaError> {
        if st.from.is_bare() {
            return Ok(());
        }
        match st.typ {
            Type::Available => {
                let key = self
                    .rooms
                    .borrow()
                    .get(name)
                    .and_then(|r| r.sessions.get(&st.from).cloned());
                match key {
                    Some(k) if k == fold(nick) => self.update(cx, st, name, &k, out),
                    Some(k) => self.change_nick(st, name, &k, nick, out),
                    None => self.join(cx, st, name, nick, out),
                }
            }
            Type::Unavailable => {
                let how = Leaving {
                    status: st.el.child("status", ns::CLIENT).cloned(),
                    ..Leaving::default()
                };
                self.leave(&st.from, name, &how, out);
                Ok(())
            }
            // Probes and subscriptions are not for rooms; errors from a client are ignored.
            _ => Ok(()),
        }
    }

    fn check_nick(&self, nick: &str) -> Result<(), StanzaError> {
        let invisible = |c: char| {
            c.is_whitespace()
                || matches!(c, '\u{200B}'..='\u{200F}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}')
        };
        if nick.chars().all(invisible) {
            return Err(StanzaError::with_text(
                Condition::JidMalformed,
                "a nickname needs a visible character",
            ));
        }
        if nick.len() > self.c.max_nick_bytes {
            return Err(StanzaError::with_text(
                Condition::NotAcceptable,
                format!("nicknames are at most {} bytes", self.c.max_nick_bytes),
            ));
        }
        Ok(())
    }

    fn check_presence(&self, el: &Element) -> Result<Element, StanzaError> {
        let p = cleaned(el);
        if p.to_xml().len() > self.c.max_presence_bytes {
            return Err(StanzaError::with_text(
                Condition::NotAcceptable,
                format!(
                    "presence in a room is at most {} bytes",
                    self.c.max_presence_bytes
                ),
            ));
        }
        Ok(p)
    }

    /// The rooms other than `except` that user `bare` is in.
    fn rooms_of(&self, bare: &Jid, except: &str) -> usize {
        let mut names: Vec<&String> = Vec::new();
        let joined = self.joined.borrow();
        for (jid, rooms) in joined.iter() {
            if jid.local() == bare.local() && jid.bare() == *bare {
                names.extend(rooms.iter().filter(|r| *r != except));
            }
        }
        names.sort_unstable();
        names.dedup();
        names.len()
    }

    fn join(
        &self,
        cx: &mut Cx,
        st: &Stanza,
        name: &str,
        nick: &str,
        out: &mut Out,
    ) -> Result<(), StanzaError> {
        let from = st.from.clone();
        let bare = from.bare();
        let Some(x) = st.el.child("x", ns::MUC) else {
            // XEP-0045 §7.2.23: presence without <x/> from someone not in is a groupchat 1.0
            // join or a client that lost track; it is told it is not in.
            let room = self.room_jid(name);
            let el = Element::new("presence", ns::CLIENT)
                .with_attr("type", "unavailable")
                .with_child(
                    Element::new("x", ns::MUC_USER)
                        .with_child(
                            Element::new("item", ns::MUC_USER)
                                .with_attr("affiliation", "none")
                                .with_attr("role", "none")
                                .with_child(
                                    Element::new("reason", ns::MUC_USER)
                                        .with_text("You are not in the room."),
                                ),
                        )
                        .with_child(Element::new("status", ns::MUC_USER).with_attr("code", "110"))
                        .with_child(Element::new("status", ns::MUC_USER).with_attr("code", "307"))
                        .with_child(Element::new("status", ns::MUC_USER).with_attr("code", "333")),
                );
            let occupant = room.with_resource(nick).unwrap_or(room);
            out.send(Kind::Presence, Type::Unavailable, occupant, &from, el);
            return Ok(());
        };
        self.check_nick(nick)?;
        let presence = self.check_presence(&st.el)?;
        if self.rooms_of(&bare, name) >= self.c.max_joined_per_user {
            return Err(StanzaError::with_text(
                Condition::PolicyViolation,
                format!("one may be in at most {} rooms", self.c.max_joined_per_user),
            ));
        }
        let now = now_ms(cx);
        let mut rooms = self.rooms.borrow_mut();
        let created = !rooms.contains_key(name);
        if created {
            let refuse = |text: String| Err(StanzaError::with_text(Condition::NotAllowed, text));
            if !self.may_create(&bare) {
                return refuse("only the service's admins may create rooms".into());
            }
            if rooms.len() >= self.c.max_rooms {
                return refuse(format!(
                    "the service has {} rooms, its most",
                    self.c.max_rooms
                ));
            }
            let owned = rooms
                .values()
                .filter(|r| r.affiliation(&bare) == Affiliation::Owner)
                .count();
            if owned >= self.c.max_owned_per_user {
                return refuse(format!(
                    "one may own at most {} rooms",
                    self.c.max_owned_per_user
                ));
            }
            let mut room = Room::new(name, self.room_jid(name), self.default_config());
            room.locked = true;
            room.affiliations.insert(
                bare.clone(),
                Affiliated {
                    affiliation: Affiliation::Owner,
                    nick: None,
                },
            );
            rooms.insert(name.to_owned(), room);
        }
        let room = rooms.get_mut(name).expect("the room exists");
        let aff = room.affiliation(&bare);
        if room.locked && aff != Affiliation::Owner {
            return Err(StanzaError::with_text(
                Condition::ItemNotFound,
                "the room is being set up",
            ));
        }
        if aff == Affiliation::Outcast {
            return Err(StanzaError::new(Condition::Forbidden));
        }
        if room.config.members_only && aff < Affiliation::Member {
            return Err(StanzaError::new(Condition::RegistrationRequired));
        }
        if let Some(pw) = &room.config.password
            && aff < Affiliation::Admin
            && x.child("password", ns::MUC).map(Element::text).as_deref() != Some(pw.as_str())
        {
            return Err(StanzaError::new(Condition::NotAuthorized));
        }
        let key = fold(nick);
        let shared = match room.occupants.get(&key) {
            Some(o) if o.bare != bare => return Err(StanzaError::new(Condition::Conflict)),
            Some(o) if o.sessions.len() >= MAX_SESSIONS_PER_OCCUPANT => {
                return Err(StanzaError::with_text(
                    Condition::PolicyViolation,
                    "too many clients share this nickname",
                ));
            }
            Some(_) => true,
            None => false,
        };
        if room.reserved_by_other(nick, &bare) {
            return Err(StanzaError::with_text(
                Condition::Conflict,
                "the nickname is reserved",
            ));
        }
        let most = match aff >= Affiliation::Admin {
            true => self.c.max_occupants,
            false => room.config.max_users.min(self.c.max_occupants),
        };
        if !shared && room.occupants.len() >= most {
            return Err(StanzaError::with_text(
                Condition::ServiceUnavailable,
                "the room is full",
            ));
        }
        let joined = Joined {
            jid: from.clone(),
            presence,
        };
        match room.occupants.get_mut(&key) {
            Some(o) => o.sessions.push(joined),
            None => {
                let o = Occupant {
                    nick: nick.to_owned(),
                    bare,
                    role: room.default_role(aff),
                    sessions: vec![joined],
                    tokens: self.c.messages_per_minute as f64,
                    refilled_ms: now,
                    voice_requested: false,
                };
                room.occupants.insert(key.clone(), o);
            }
        }
        room.sessions.insert(from.clone(), key.clone());
        self.joined
            .borrow_mut()
            .entry(from.clone())
            .or_default()
            .insert(name.to_owned());
        broadcast(room, &key, Some(&from), &[], out);
        self.welcome(room, &key, &from, created, st, now, out);
        Ok(())
    }

    /// What a session that entered gets (XEP-0045 §7.2.1's order): everyone else's presence,
    /// its own with its status codes, the history it asked for, the subject.
    #[allow(clippy::too_many_arguments)]
    fn welcome(
        &self,
        room: &Room,
        key: &str,
        to: &Jid,
        created: bool,
        st: &Stanza,
        now: u64,
        out: &mut Out,
    ) {
        let Some(o) = room.occupants.get(key) else {
            return;
        };
        let sees = room.sees_jids(o.role);
        for (k, other) in &room.occupants {
            if k != key {
                out.stanzas.push(shown(room, other, to, sees, false, &[]));
            }
        }
        let mut codes = Vec::new();
        if room.config.whois_anyone {
            codes.push(100);
        }
        if room.config.archiving {
            codes.push(170);
        }
        if created {
            codes.push(201);
        }
        let mut own = shown(room, o, to, true, true, &codes);
        if let Some(id) = st.id() {
            own.el.set_attr("id", id);
        }
        out.stanzas.push(own);
        let history = st
            .el
            .child("x", ns::MUC)
            .and_then(|x| x.child("history", ns::MUC));
        self.history_to(room, to, history, now, out);
        subject_to(room, to, out);
    }

    /// The discussion history for a newcomer: the room's last `history_length` messages, fewer
    /// if `<history/>` asks (XEP-0045 §7.2.15): the smallest set meeting every limit, in whole
    /// messages.
    fn history_to(&self, room: &Room, to: &Jid, asked: Option<&Element>, now: u64, out: &mut Out) {
        let mut most = room.config.history_length;
        let mut max_chars = usize::MAX;
        let mut since = 0u64;
        if let Some(h) = asked {
            if let Some(n) = attr_num(h, "maxstanzas") {
                most = most.min(usize::try_from(n).unwrap_or(usize::MAX));
            }
            if let Some(n) = attr_num(h, "maxchars") {
                max_chars = usize::try_from(n).unwrap_or(usize::MAX);
            }
            if let Some(s) = attr_num(h, "seconds") {
                since = since.max(now.saturating_sub(s.saturating_mul(1000)));
            }
            if let Some(ms) = h
                .attr("since")
                .and_then(|s| crate::modules::mam::query::parse_datetime(s.trim()))
            {
                since = since.max(ms);
            }
        }
        let mut picked: Vec<&Past> = Vec::new();
        let mut chars = 0usize;
        for p in room.history.iter().rev() {
            if picked.len() >= most || p.stamp_ms < since {
                break;
            }
            chars = chars.saturating_add(p.bytes);
            if chars > max_chars {
                break;
            }
            picked.push(p);
        }
        for p in picked.into_iter().rev() {
            let mut el = p.msg.clone();
            el.push(delay(&room.jid, p.stamp_ms));
            out.send(Kind::Message, Type::Groupchat, p.from.clone(), to, el);
        }
    }

    /// A presence update from a session in the room (XEP-0045 §7.7), or a join from a
    /// session already in, which gets everything a newcomer gets (§7.2.1).
    fn update(
        &self,
        cx: &mut Cx,
        st: &Stanza,
        name: &str,
        key: &str,
        out: &mut Out,
    ) -> Result<(), StanzaError> {
        let presence = self.check_presence(&st.el)?;
        let mut rooms = self.rooms.borrow_mut();
        let Some(room) = rooms.get_mut(name) else {
            return Ok(());
        };
        let Some(o) = room.occupants.get_mut(key) else {
            return Ok(());
        };
        if let Some(i) = o.sessions.iter().position(|s| s.jid == st.from) {
            let mut s = o.sessions.remove(i);
            s.presence = presence;
            o.sessions.push(s);
        }
        if st.el.has_child("x", ns::MUC) {
            broadcast(room, key, Some(&st.from), &[], out);
            self.welcome(room, key, &st.from, false, st, now_ms(cx), out);
        } else {
            broadcast(room, key, None, &[], out);
        }
        Ok(())
    }

    /// A nickname change (XEP-0045 §7.6): every session of the occupant moves to the new one.
    fn change_nick(
        &self,
        st: &Stanza,
        name: &str,
        key: &str,
        nick: &str,
        out: &mut Out,
    ) -> Result<(), StanzaError> {
        self.check_nick(nick)?;
        let presence = self.check_presence(&st.el)?;
        let mut rooms = self.rooms.borrow_mut();
        let Some(room) = rooms.get_mut(name) else {
            return Ok(());
        };
        let new_key = fold(nick);
        let bare = st.from.bare();
        if room.occupants.contains_key(&new_key) {
            return Err(StanzaError::new(Condition::Conflict));
        }
        if room.reserved_by_other(nick, &bare) {
            return Err(StanzaError::with_text(
                Condition::Conflict,
                "the nickname is reserved",
            ));
        }
        let Some(mut o) = room.occupants.remove(key) else {
            return Ok(());
        };
        let old_nick = std::mem::replace(&mut o.nick, nick.to_owned());
        if let Some(i) = o.sessions.iter().position(|s| s.jid == st.from) {
            let mut s = o.sessions.remove(i);
            s.presence = presence;
            o.sessions.push(s);
        }
        for s in &o.sessions {
            room.sessions.insert(s.jid.clone(), new_key.clone());
        }
        room.occupants.insert(new_key.clone(), o);
        let o = &room.occupants[&new_key];
        let how = Leaving {
            nick: Some(nick),
            ..Leaving::default()
        };
        for (k, viewer) in &room.occupants {
            let own = *k == new_key;
            for s in &viewer.sessions {
                let sees = room.sees_jids(viewer.role);
                out.stanzas
                    .push(gone(room, o, &old_nick, &s.jid, sees, own, &[303], &how));
            }
        }
        broadcast(room, &new_key, None, &[], out);
        Ok(())
    }

    /// Session `from` leaves room `name` of its own accord (or its session ended).
    pub(super) fn leave(&self, from: &Jid, name: &str, how: &Leaving, out: &mut Out) {
        {
            let mut rooms = self.rooms.borrow_mut();
            let Some(room) = rooms.get_mut(name) else {
                return;
            };
            // XEP-0045 §17.3: unavailable presence from someone not in is ignored.
            let Some(key) = room.sessions.get(from).cloned() else {
                return;
            };
            let alone = room
                .occupants
                .get(&key)
                .is_some_and(|o| o.sessions.len() == 1);
            if alone {
                self.remove(room, &key, &[], how, out);
            } else {
                self.forget_session(room, from);
                let Some(o) = room.occupants.get_mut(&key) else {
                    return;
                };
                let was_current = o.current().jid == *from;
                if let Some(i) = o.sessions.iter().position(|s| s.jid == *from) {
                    let left = o.sessions.remove(i);
                    // The session hears it left; the others, if the occupant looks different.
                    let mut only = o.clone();
                    only.sessions = vec![left];
                    out.stanzas
                        .push(gone(room, &only, &only.nick, from, true, true, &[], how));
                }
                if was_current {
                    broadcast(room, &key, None, &[], out);
                }
            }
        }
        self.reap(name, out);
    }

    /// Forgets that session `s` is in `room` (its occupant keeps its other sessions).
    pub(super) fn forget_session(&self, room: &mut Room, s: &Jid) {
        room.sessions.remove(s);
        let mut joined = self.joined.borrow_mut();
        if let Some(set) = joined.get_mut(s) {
            set.remove(&room.name);
            if set.is_empty() {
                joined.remove(s);
            }
        }
    }

    /// Removes occupant `key` with all its sessions: each hears it is out (status 110 and
    /// `codes`), and so does everyone else. The caller reaps the room afterwards.
    pub(super) fn remove(
        &self,
        room: &mut Room,
        key: &str,
        codes: &[u16],
        how: &Leaving,
        out: &mut Out,
    ) {
        let Some(o) = room.occupants.remove(key) else {
            return;
        };
        for s in &o.sessions {
            self.forget_session(room, &s.jid);
            out.stanzas
                .push(gone(room, &o, &o.nick, &s.jid, true, true, codes, how));
        }
        for viewer in room.occupants.values() {
            let sees = room.sees_jids(viewer.role);
            for s in &viewer.sessions {
                out.stanzas
                    .push(gone(room, &o, &o.nick, &s.jid, sees, false, codes, how));
            }
        }
    }

    /// A session that ended, or a new one on the same full JID: out of every room.
    pub(super) fn leave_everywhere(&self, session: &Jid, out: &mut Out) {
        let rooms = self
            .joined
            .borrow()
            .get(session)
            .cloned()
            .unwrap_or_default();
        for name in rooms {
            self.leave(session, &name, &Leaving::default(), out);
        }
    }

    /// Sets the role of occupant `key` and tells everyone.
    pub(super) fn set_role(room: &mut Room, key: &str, role: Role, out: &mut Out) {
        if let Some(o) = room.occupants.get_mut(key) {
            o.role = role;
            if role > Role::Visitor {
                o.voice_requested = false;
            }
        }
        broadcast(room, key, None, &[], out);
    }
}

/// The subject, sent after the history (XEP-0045 §7.2.16): from whoever set it, with when.
pub fn subject_to(room: &Room, to: &Jid, out: &mut Out) {
    let from = match &room.subject.by {
        Some(nick) => room.occupant_jid(nick),
        None => room.jid.clone(),
    };
    let mut el = Element::new("message", ns::CLIENT)
        .with_attr("type", "groupchat")
        .with_child(Element::new("subject", ns::CLIENT).with_text(room.subject.text.clone()));
    if let Some(ms) = room.subject.at_ms {
        el.push(delay(&room.jid, ms));
    }
    out.send(Kind::Message, Type::Groupchat, from, to, el);
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use crate::modules::SessionEvent;
    use crate::stanza::Condition;
    use crate::xml::{Element, ns};
    use std::time::Duration;

    #[test]
    fn a_family_room_has_history_subject_and_a_member_list_for_everyone() {
        let t = router();
        let (a, b, c) = family(&t);
        let out = say(&t, &b, "family", "dinner at six");
        for who in [&a, &b, &c] {
            out.assert_sent(who, "<message type='groupchat' id='m-dinner at six' from='family@muc.localhost/Dad'><body>dinner at six</body><stanza-id xmlns='urn:xmpp:sid:0' by='family@muc.localhost'/></message>");
        }
        let out = t.client(
            &a,
            &format!(
                "<message type='groupchat' to='{}'><subject>Sunday</subject></message>",
                room("family")
            ),
        );
        out.assert_sent(&c, "<message type='groupchat' from='family@muc.localhost/Mum'><subject>Sunday</subject></message>");
        // Members other than moderators may not change it.
        let out = t.client(
            &c,
            &format!(
                "<message type='groupchat' id='s' to='{}'><subject>mine</subject></message>",
                room("family")
            ),
        );
        out.assert_error(&c, "s", Condition::Forbidden);
        t.skip(Duration::from_secs(60));
        say(&t, &a, "family", "bring bread");
        // Carol's second device: every member message so far, then the subject, with delays.
        let c2 = t.online("carol", "phone");
        let out = enter(&t, &c2, "family", "Kid");
        let msgs: Vec<&Element> = out
            .to(&c2)
            .into_iter()
            .filter(|e| e.name == "message")
            .collect();
        assert_eq!(msgs.len(), 3, "{}", out.show());
        assert_eq!(
            msgs[0].child("body", ns::CLIENT).unwrap().text(),
            "dinner at six"
        );
        assert_eq!(
            msgs[0].child("delay", ns::DELAY).unwrap().attr("from"),
            Some("family@muc.localhost")
        );
        assert_eq!(
            msgs[1].child("body", ns::CLIENT).unwrap().text(),
            "bring bread"
        );
        assert_eq!(
            msgs[2].child("subject", ns::CLIENT).unwrap().text(),
            "Sunday"
        );
        assert!(msgs[2].child("delay", ns::DELAY).is_some());
        // Carol's two sessions are one occupant: the others saw no new arrival.
        out.assert_nothing_to(&b.bare());
        // History limits: the last one; the last minute; none.
        let d = t.online("dave", "pc");
        admin_set(
            &t,
            &a,
            "family",
            "<item affiliation='member' jid='dave@localhost'/>",
        );
        let history = |extra: &str, nick: &str| {
            let out = enter_with(&t, &d, "family", nick, extra);
            let bodies: Vec<String> = out
                .to(&d)
                .into_iter()
                .filter_map(|e| e.child("body", ns::CLIENT))
                .map(Element::text)
                .collect();
            t.client(
                &d,
                &format!(
                    "<presence type='unavailable' to='{}/{nick}'/>",
                    room("family")
                ),
            );
            bodies
        };
        assert_eq!(
            history("<history maxstanzas='1'/>", "D1"),
            vec!["bring bread"]
        );
        assert_eq!(
            history("<history seconds='30'/>", "D2"),
            vec!["bring bread"]
        );
        assert_eq!(
            history("<history maxchars='0'/>", "D3"),
            Vec::<String>::new()
        );
        assert_eq!(
            history("<history since='1970-01-01T00:00:00Z'/>", "D4").len(),
            2
        );
        assert_eq!(history("", "D5").len(), 2);
        // Conversations reads the member, admin and owner lists to encrypt to everyone.
        for aff in ["member", "admin", "owner"] {
            let out = t.client(&c, &format!("<iq type='get' id='l' to='{}'><query xmlns='{ADMIN}'><item affiliation='{aff}'/></query></iq>", room("family")));
            assert_eq!(
                out.only_to(&c).attr("type"),
                Some("result"),
                "{aff}: {}",
                out.show()
            );
        }
        let out = t.client(&c, &format!("<iq type='get' id='l' to='{}'><query xmlns='{ADMIN}'><item affiliation='member'/></query></iq>", room("family")));
        out.assert_sent(&c, &format!("<iq type='result' id='l'><query xmlns='{ADMIN}'><item affiliation='member' jid='bob@localhost'/><item affiliation='member' jid='carol@localhost'/><item affiliation='member' jid='dave@localhost'/></query></iq>"));
        // The ban list is for admins.
        let out = t.client(&c, &format!("<iq type='get' id='o' to='{}'><query xmlns='{ADMIN}'><item affiliation='outcast'/></query></iq>", room("family")));
        out.assert_error(&c, "o", Condition::Forbidden);
    }

    #[test]
    fn nicknames_conflict_change_and_share() {
        let t = router();
        let (a, b, _c) = family(&t);
        let b2 = t.online("bob", "phone");
        // Another user's nickname is taken, whatever its case.
        let d = t.online("dave", "pc");
        admin_set(
            &t,
            &a,
            "family",
            "<item affiliation='member' jid='dave@localhost' nick='Grandpa'/>",
        );
        enter(&t, &d, "family", "dad").assert_error(&d, "j1", Condition::Conflict);
        // Bob's second device shares his nickname; nobody sees a second Dad.
        let out = enter(&t, &b2, "family", "Dad");
        out.assert_sent(&b2, "<presence from='family@muc.localhost/Dad'><x xmlns='http://jabber.org/protocol/muc#user'><status code='110'/></x></presence>");
        out.assert_sent(&b, "<presence from='family@muc.localhost/Dad'><x xmlns='http://jabber.org/protocol/muc#user'><status code='110'/></x></presence>");
        // A nickname reserved by another member is refused too.
        let out = t.client(
            &b,
            &format!("<presence id='g' to='{}/Grandpa'/>", room("family")),
        );
        out.assert_error(&b, "g", Condition::Conflict);
        // Dave reads his reserved nickname.
        let out = t.client(&d, &format!("<iq type='get' id='n' to='{}'><query xmlns='http://jabber.org/protocol/disco#info' node='x-roomuser-item'/></iq>", room("family")));
        out.assert_sent(&d, "<iq type='result' id='n'><query xmlns='http://jabber.org/protocol/disco#info' node='x-roomuser-item'><identity name='Grandpa'/></query></iq>");
        // Bob changes his nickname: everyone sees 303 and the new one; both his sessions follow.
        let out = t.client(&b, &format!("<presence to='{}/Father'/>", room("family")));
        out.assert_sent(&a, &format!("<presence type='unavailable' from='{}/Dad'><x xmlns='{USER}'><item nick='Father'/><status code='303'/></x></presence>", room("family")));
        out.assert_sent(&a, &format!("<presence from='{}/Father'/>", room("family")));
        for s in [&b, &b2] {
            out.assert_sent(s, "<presence type='unavailable' from='family@muc.localhost/Dad'><x xmlns='http://jabber.org/protocol/muc#user'><status code='110'/><status code='303'/></x></presence>");
            out.assert_sent(s, "<presence from='family@muc.localhost/Father'><x xmlns='http://jabber.org/protocol/muc#user'><status code='110'/></x></presence>");
        }
        say(&t, &b2, "family", "hi")
            .assert_sent(&a, "<message from='family@muc.localhost/Father'/>");
        // A status change is shown to everyone; a join from a session already in is a resync.
        let out = t.client(
            &b,
            &format!(
                "<presence to='{}/Father'><show>away</show></presence>",
                room("family")
            ),
        );
        out.assert_sent(&a, &format!("<presence from='{}/Father'><show>away</show><x xmlns='{USER}'><item role='participant'/></x></presence>", room("family")));
        out.assert_sent(&b, "<presence><show>away</show><x xmlns='http://jabber.org/protocol/muc#user'><status code='110'/></x></presence>");
        let out = enter(&t, &b, "family", "Father");
        let presences = out.to(&b).iter().filter(|e| e.name == "presence").count();
        assert_eq!(presences, 3, "Mum, Kid and itself: {}", out.show());
        out.assert_sent(&b, "<message type='groupchat'><subject/></message>");
        // One session leaves: the other stays, and nobody sees Father go.
        let out = t.client(
            &b2,
            &format!(
                "<presence type='unavailable' to='{}/Father'/>",
                room("family")
            ),
        );
        out.assert_sent(&b2, "<presence type='unavailable'><x xmlns='http://jabber.org/protocol/muc#user'><status code='110'/></x></presence>");
        out.assert_not_sent(&a, "<presence type='unavailable'/>");
        // Nicknames that are empty to the eye or too long are refused.
        let e = t.online("dave", "pc2");
        enter(&t, &e, "family", "\u{200B}").assert_error(&e, "j1", Condition::JidMalformed);
        enter(&t, &e, "family", &"x".repeat(65)).assert_error(&e, "j1", Condition::NotAcceptable);
    }

    #[test]
    fn detached_sessions_stay_and_ended_ones_leave() {
        let t = router();
        let (a, b, c) = family(&t);
        // The phone's connection drops: it stays in, and what is said is queued for it.
        t.event(&c, SessionEvent::Detached).assert_nothing_to(&a);
        say(&t, &a, "family", "still there?").assert_sent(
            &c,
            "<message type='groupchat'><body>still there?</body></message>",
        );
        t.event(&c, SessionEvent::Resumed);
        t.client(
            &c,
            &format!(
                "<iq type='get' id='sp' to='{}/Kid'><ping xmlns='urn:xmpp:ping'/></iq>",
                room("family")
            ),
        )
        .assert_sent(&c, "<iq type='result' id='sp'/>");
        // The session ends: the others hear Kid left, once.
        let out = t.close(&c);
        out.assert_sent(&a, &format!("<presence type='unavailable' from='{}/Kid'><x xmlns='{USER}'><item role='none'/></x></presence>", room("family")));
        assert_eq!(out.to(&b).len(), 1, "{}", out.show());
        // A new session binding the same resource is not in the room.
        let c = t.online("carol", "tablet");
        t.client(
            &c,
            &format!(
                "<iq type='get' id='sp' to='{}/Kid'><ping xmlns='urn:xmpp:ping'/></iq>",
                room("family")
            ),
        )
        .assert_error(&c, "sp", Condition::NotAcceptable);
        enter(&t, &c, "family", "Kid");
        let stale = t.bind("carol", "tablet");
        assert_eq!(stale, c);
        t.client(&a, &format!("<iq type='get' id='v' to='{}'><query xmlns='{ADMIN}'><item role='participant'/></query></iq>", room("family")))
            .assert_sent(&a, &format!("<iq type='result'><query xmlns='{ADMIN}'><item nick='Dad'/></query></iq>"));
    }
}
