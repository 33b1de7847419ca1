//! iqs to a room's own JID: its disco#info (XEP-0045 §6.4, with the reserved-nickname node of
//! §7.12), moderation by `muc#admin` (§8, §9: roles by nickname, affiliations by bare JID,
//! lists of either) and the owner's `muc#owner` (§10: configuration, destruction). The archive
//! query is in `archive.rs`.
//!
//! Who may change whom follows §5: a moderator kicks and grants or revokes voice, but never
//! above its own affiliation and never from an admin or owner; admins grant membership, bans
//! and moderator status; only owners touch admins and owners, and the last owner stays one.
//! A request with several items is checked whole before any of it is applied.

use super::occupants::Leaving;
use super::room::{Affiliated, Affiliation, Role, Room, fold};
use super::store;
use super::{Muc, Out, forms};
use crate::jid::Jid;
use crate::modules::Cx;
use crate::stanza::{Condition, Stanza, StanzaError};
use crate::xml::{Element, ns};
use std::collections::BTreeMap;

fn no_room() -> StanzaError {
    StanzaError::with_text(Condition::ItemNotFound, "no such room")
}

fn not_allowed(text: &str) -> StanzaError {
    StanzaError::with_text(Condition::NotAllowed, text)
}

/// One item of a `muc#admin` set.
enum Change {
    Role {
        nick: String,
        role: Role,
        reason: Option<String>,
    },
    Affiliation {
        jid: Jid,
        affiliation: Affiliation,
        /// Some("") unsets the reserved nickname.
        nick: Option<String>,
        reason: Option<String>,
    },
}

fn parse_change(item: &Element, max_nick: usize) -> Result<Change, StanzaError> {
    let reason = item.child("reason", ns::MUC_ADMIN).map(Element::text);
    match (item.attr("role"), item.attr("affiliation")) {
        (Some(_), Some(_)) => Err(StanzaError::bad_request(
            "an item changes a role or an affiliation, not both",
        )),
        (Some(r), None) => Ok(Change::Role {
            nick: item
                .attr("nick")
                .ok_or_else(|| StanzaError::bad_request("a role is changed by nickname"))?
                .to_owned(),
            role: Role::parse(r).ok_or_else(|| StanzaError::bad_request("unknown role"))?,
            reason,
        }),
        (None, Some(a)) => {
            let jid = item
                .attr("jid")
                .and_then(|j| Jid::parse(j).ok())
                .ok_or_else(|| StanzaError::new(Condition::JidMalformed))?
                .bare();
            let nick = item.attr("nick").map(str::to_owned);
            if nick.as_ref().is_some_and(|n| n.len() > max_nick) {
                return Err(StanzaError::with_text(
                    Condition::NotAcceptable,
                    "the nickname is too long",
                ));
            }
            Ok(Change::Affiliation {
                jid,
                affiliation: Affiliation::parse(a)
                    .ok_or_else(|| StanzaError::bad_request("unknown affiliation"))?,
                nick,
                reason,
            })
        }
        (None, None) => Err(StanzaError::bad_request(
            "an item names a role or an affiliation",
        )),
    }
}

/// The room's `muc_*` features (XEP-0045 §15.4.3) for its configuration.
fn features(room: &Room) -> Vec<&'static str> {
    let c = &room.config;
    let pick = |on: bool, yes: &'static str, no: &'static str| if on { yes } else { no };
    let mut f = vec![
        ns::DISCO_INFO,
        ns::DISCO_ITEMS,
        ns::MUC,
        ns::MUC_STABLE_ID,
        ns::MUC_SELF_PING,
        ns::SID,
        pick(c.persistent, "muc_persistent", "muc_temporary"),
        pick(c.public, "muc_public", "muc_hidden"),
        pick(c.members_only, "muc_membersonly", "muc_open"),
        pick(c.moderated, "muc_moderated", "muc_unmoderated"),
        pick(c.whois_anyone, "muc_nonanonymous", "muc_semianonymous"),
        pick(
            c.password.is_some(),
            "muc_passwordprotected",
            "muc_unsecured",
        ),
    ];
    if c.archiving {
        f.extend([ns::MAM, ns::MAM_EXTENDED]);
    }
    f.sort_unstable();
    f
}

impl Muc {
    /// An iq to the room's JID.
    pub(super) fn room_iq(
        &self,
        cx: &mut Cx,
        st: &Stanza,
        name: &str,
        out: &mut Out,
    ) -> Result<(), StanzaError> {
        if !st.is_request() {
            return Ok(());
        }
        let payload = st
            .payload()
            .ok_or_else(|| StanzaError::bad_request("an iq get or set has one child"))?;
        let bare = st.from.bare();
        // A room being set up is its creator's alone.
        let visible = self
            .rooms
            .borrow()
            .get(name)
            .is_some_and(|r| !r.locked || r.affiliation(&bare) == Affiliation::Owner);
        if !visible {
            return Err(no_room());
        }
        let set = st.typ == crate::stanza::Type::Set;
        // The one who changed the room hears of success before the presence it caused
        // (XEP-0045 §8.2, §8.4).
        let before = out.stanzas.len();
        let answer = match payload.ns.as_str() {
            ns::DISCO_INFO if !set => self.room_info(st, name, payload)?,
            ns::DISCO_ITEMS if !set => Some(Element::new("query", ns::DISCO_ITEMS)),
            ns::PING if !set => None,
            ns::MUC_ADMIN if set => self.admin_set(cx, st, name, payload, out)?,
            ns::MUC_ADMIN => Some(self.admin_get(st, name, payload)?),
            ns::MUC_OWNER => self.owner(cx, st, name, payload, out)?,
            ns::MAM => Some(self.archive_query(cx, st, name, payload)?),
            _ => return Err(StanzaError::service_unavailable()),
        };
        Muc::reply(st, answer, out);
        let reply = out.stanzas.pop().expect("the reply was just added");
        out.stanzas.insert(before, reply);
        Ok(())
    }

    fn room_info(
        &self,
        st: &Stanza,
        name: &str,
        q: &Element,
    ) -> Result<Option<Element>, StanzaError> {
        let rooms = self.rooms.borrow();
        let room = rooms.get(name).ok_or_else(no_room)?;
        let mut out = Element::new("query", ns::DISCO_INFO);
        match q.attr("node") {
            None => {}
            // §7.12: the asker's reserved nickname, if it has one.
            Some("x-roomuser-item") => {
                out.set_attr("node", "x-roomuser-item");
                let nick = room
                    .affiliations
                    .get(&st.from.bare())
                    .and_then(|a| a.nick.clone());
                if let Some(n) = nick {
                    out.push(
                        Element::new("identity", ns::DISCO_INFO)
                            .with_attr("category", "conference")
                            .with_attr("type", "text")
                            .with_attr("name", n),
                    );
                }
                return Ok(Some(out));
            }
            Some(_) => return Err(StanzaError::new(Condition::ItemNotFound)),
        }
        let title = match room.config.name.is_empty() {
            true => room.name.clone(),
            false => room.config.name.clone(),
        };
        out.push(
            Element::new("identity", ns::DISCO_INFO)
                .with_attr("category", "conference")
                .with_attr("type", "text")
                .with_attr("name", title),
        );
        for f in features(room) {
            out.push(Element::new("feature", ns::DISCO_INFO).with_attr("var", f));
        }
        out.push(forms::roominfo(room));
        Ok(Some(out))
    }

    /// A list of one role or one affiliation (XEP-0045 §8.5, §9.2, §9.5, §9.8, §10.5, §10.8).
    /// In a non-anonymous room, where everyone sees real JIDs anyway, the members, admins and
    /// owners are listed to members and occupants: a client encrypting to every member
    /// (OMEMO) needs them.
    fn admin_get(&self, st: &Stanza, name: &str, q: &Element) -> Result<Element, StanzaError> {
        let rooms = self.rooms.borrow();
        let room = rooms.get(name).ok_or_else(no_room)?;
        let mut items = q.elements().filter(|e| e.is("item", ns::MUC_ADMIN));
        let (Some(item), None) = (items.next(), items.next()) else {
            return Err(StanzaError::bad_request("ask for one list at a time"));
        };
        let bare = st.from.bare();
        let aff = room.affiliation(&bare);
        let occupant = room.occupant_of(&st.from);
        let mut list = Element::new("query", ns::MUC_ADMIN);
        match (item.attr("affiliation"), item.attr("role")) {
            (Some(a), None) => {
                let a = Affiliation::parse(a)
                    .filter(|a| *a != Affiliation::None)
                    .ok_or_else(|| StanzaError::bad_request("unknown affiliation list"))?;
                let readable = aff >= Affiliation::Admin
                    || (a >= Affiliation::Member
                        && room.config.whois_anyone
                        && (aff >= Affiliation::Member || occupant.is_some()));
                if !readable {
                    return Err(StanzaError::new(Condition::Forbidden));
                }
                for (j, e) in room.affiliations.iter().filter(|(_, e)| e.affiliation == a) {
                    let mut it = Element::new("item", ns::MUC_ADMIN)
                        .with_attr("affiliation", a.as_str())
                        .with_attr("jid", j.to_string());
                    if let Some(n) = &e.nick {
                        it.set_attr("nick", n.as_str());
                    }
                    list.push(it);
                }
            }
            (None, Some(r)) => {
                let r = Role::parse(r)
                    .filter(|r| *r != Role::None)
                    .ok_or_else(|| StanzaError::bad_request("unknown role list"))?;
                if occupant.is_none_or(|o| o.role != Role::Moderator) {
                    return Err(StanzaError::new(Condition::Forbidden));
                }
                for o in room.occupants.values().filter(|o| o.role == r) {
                    list.push(
                        Element::new("item", ns::MUC_ADMIN)
                            .with_attr("nick", o.nick.as_str())
                            .with_attr("role", r.as_str())
                            .with_attr("affiliation", room.affiliation(&o.bare).as_str())
                            .with_attr("jid", o.current().jid.to_string()),
                    );
                }
            }
            _ => return Err(StanzaError::bad_request("ask for a role or an affiliation")),
        }
        Ok(list)
    }

    fn admin_set(
        &self,
        cx: &mut Cx,
        st: &Stanza,
        name: &str,
        q: &Element,
        out: &mut Out,
    ) -> Result<Option<Element>, StanzaError> {
        let items: Vec<&Element> = q
            .elements()
            .filter(|e| e.is("item", ns::MUC_ADMIN))
            .collect();
        if items.is_empty() {
            return Err(StanzaError::bad_request("no item to change"));
        }
        if items.len() > self.c.max_affiliations {
            return Err(StanzaError::with_text(
                Condition::PolicyViolation,
                "too many items at once",
            ));
        }
        let changes = items
            .iter()
            .map(|i| parse_change(i, self.c.max_nick_bytes))
            .collect::<Result<Vec<_>, _>>()?;
        {
            let mut rooms = self.rooms.borrow_mut();
            let room = rooms.get_mut(name).ok_or_else(no_room)?;
            let actor = st.from.bare();
            let actor_aff = room.affiliation(&actor);
            let actor_occ = room.occupant_of(&st.from).cloned();
            // Check every change against the room as it is, then apply them all.
            let mut affs = room.affiliations.clone();
            for c in &changes {
                match c {
                    Change::Role { nick, role, .. } => {
                        check_role(room, actor_occ.as_ref(), actor_aff, nick, *role)?
                    }
                    Change::Affiliation {
                        jid,
                        affiliation,
                        nick,
                        ..
                    } => {
                        check_affiliation(room, &actor, actor_aff, jid, *affiliation)?;
                        set_entry(&mut affs, jid, *affiliation, nick.as_deref());
                    }
                }
            }
            if !affs.values().any(|a| a.affiliation == Affiliation::Owner) {
                return Err(StanzaError::with_text(
                    Condition::Conflict,
                    "a room keeps at least one owner",
                ));
            }
            if affs.len() > self.c.max_affiliations && affs.len() > room.affiliations.len() {
                return Err(StanzaError::with_text(
                    Condition::PolicyViolation,
                    format!(
                        "a room has at most {} affiliations",
                        self.c.max_affiliations
                    ),
                ));
            }
            let actor_nick = actor_occ.as_ref().map(|o| o.nick.clone());
            let before: BTreeMap<String, Affiliation> = room
                .occupants
                .iter()
                .map(|(k, o)| (k.clone(), room.affiliation(&o.bare)))
                .collect();
            let mut reasons: BTreeMap<String, Option<String>> = BTreeMap::new();
            let mut changed = Vec::new();
            for c in changes {
                match c {
                    Change::Role { nick, role, reason } => {
                        let key = fold(&nick);
                        if role == Role::None {
                            let how = Leaving {
                                actor: actor_nick.as_deref(),
                                reason: reason.as_deref(),
                                ..Leaving::default()
                            };
                            self.remove(room, &key, &[307], &how, out);
                        } else {
                            Muc::set_role(room, &key, role, out);
                        }
                    }
                    Change::Affiliation {
                        jid,
                        affiliation,
                        nick,
                        reason,
                    } => {
                        set_entry(&mut room.affiliations, &jid, affiliation, nick.as_deref());
                        reasons.insert(jid.to_string(), reason);
                        changed.push(jid);
                    }
                }
            }
            self.persist_affiliations(cx, room, &changed, out);
            // What the affiliation changes mean for those in the room (§9.1 to §9.8).
            for (key, was) in before {
                let Some(o) = room.occupants.get(&key) else {
                    continue;
                };
                let now = room.affiliation(&o.bare);
                if now == was {
                    continue;
                }
                let reason = reasons.get(&o.bare.to_string()).cloned().flatten();
                let how = Leaving {
                    actor: actor_nick.as_deref(),
                    reason: reason.as_deref(),
                    ..Leaving::default()
                };
                if now == Affiliation::Outcast {
                    self.remove(room, &key, &[301], &how, out);
                } else if room.config.members_only && now < Affiliation::Member {
                    self.remove(room, &key, &[321], &how, out);
                } else {
                    let role = o.role;
                    let new_role = match now {
                        Affiliation::Owner | Affiliation::Admin => Role::Moderator,
                        _ if was >= Affiliation::Admin => room.default_role(now),
                        Affiliation::Member if role == Role::Visitor => Role::Participant,
                        _ => role,
                    };
                    Muc::set_role(room, &key, new_role, out);
                }
            }
        }
        self.reap(name, out);
        Ok(None)
    }

    /// `muc#owner`: the configuration form, its submission, or the room's destruction.
    fn owner(
        &self,
        cx: &mut Cx,
        st: &Stanza,
        name: &str,
        q: &Element,
        out: &mut Out,
    ) -> Result<Option<Element>, StanzaError> {
        let set = st.typ == crate::stanza::Type::Set;
        {
            let rooms = self.rooms.borrow();
            let room = rooms.get(name).ok_or_else(no_room)?;
            if room.affiliation(&st.from.bare()) != Affiliation::Owner {
                return Err(StanzaError::with_text(
                    Condition::Forbidden,
                    "only owners configure a room",
                ));
            }
            if !set {
                return Ok(Some(
                    Element::new("query", ns::MUC_OWNER)
                        .with_child(forms::config_form(room, &self.c)),
                ));
            }
        }
        if let Some(d) = q.child("destroy", ns::MUC_OWNER) {
            let mut destroy = Element::new("destroy", ns::MUC_USER);
            if let Some(j) = d.attr("jid").and_then(|j| Jid::parse(j).ok()) {
                destroy.set_attr("jid", j.to_string());
            }
            if let Some(r) = d.child("reason", ns::MUC_OWNER) {
                destroy.push(Element::new("reason", ns::MUC_USER).with_text(r.text()));
            }
            self.destroy(name, destroy, out);
            return Ok(None);
        }
        let x = q
            .child("x", ns::DATA_FORMS)
            .ok_or_else(|| StanzaError::bad_request("expected a form or destroy"))?;
        let Some(fields) = forms::read(x, ns::MUC_ROOMCONFIG)? else {
            // §10.1.3: cancelling the first configuration destroys the room.
            let locked = self.rooms.borrow().get(name).is_some_and(|r| r.locked);
            if locked {
                self.destroy(name, Element::new("destroy", ns::MUC_USER), out);
            }
            return Ok(None);
        };
        {
            let mut rooms = self.rooms.borrow_mut();
            let room = rooms.get_mut(name).ok_or_else(no_room)?;
            let new = forms::apply(&room.config, &fields, &self.c)?;
            self.configure(cx, room, new, out);
        }
        self.reap(name, out);
        Ok(None)
    }

    /// Applies a new configuration and what follows from it (XEP-0045 §10.2).
    fn configure(&self, cx: &Cx, room: &mut Room, new: super::room::RoomConfig, out: &mut Out) {
        let old = std::mem::replace(&mut room.config, new);
        let first = std::mem::take(&mut room.locked);
        let c = room.config.clone();
        if !first {
            let mut codes = Vec::new();
            if c.whois_anyone != old.whois_anyone {
                codes.push(if c.whois_anyone { 172 } else { 173 });
            }
            if c.archiving != old.archiving {
                codes.push(if c.archiving { 170 } else { 171 });
            }
            if codes.is_empty() && c != old {
                codes.push(104);
            }
            Muc::notice(room, &codes, out);
        }
        match (old.persistent && !first, c.persistent) {
            (false, true) => self.persist_all(cx, room, out),
            (true, true) => out.writes.push(self.save(cx, room)),
            (true, false) => out.writes.extend(store::unpersist(&room.name)),
            (false, false) => {}
        }
        if c.members_only && (!old.members_only || first) {
            let out_of_place: Vec<String> = room
                .occupants
                .iter()
                .filter(|(_, o)| room.affiliation(&o.bare) < Affiliation::Member)
                .map(|(k, _)| k.clone())
                .collect();
            for k in out_of_place {
                self.remove(room, &k, &[322], &Leaving::default(), out);
            }
        }
        if !c.moderated && old.moderated {
            let voiceless: Vec<String> = room
                .occupants
                .iter()
                .filter(|(_, o)| o.role == Role::Visitor)
                .map(|(k, _)| k.clone())
                .collect();
            for k in voiceless {
                Muc::set_role(room, &k, Role::Participant, out);
            }
        }
        while room.history.len() > c.history_length {
            if let Some(p) = room.history.pop_front() {
                room.history_bytes -= p.bytes;
            }
        }
    }
}

/// Whether the moderator `actor` may give occupant `nick` the role `role` (XEP-0045 §8.2 to
/// §8.5, §9.6, §9.7).
fn check_role(
    room: &Room,
    actor: Option<&super::room::Occupant>,
    actor_aff: Affiliation,
    nick: &str,
    role: Role,
) -> Result<(), StanzaError> {
    let Some(actor) = actor.filter(|a| a.role == Role::Moderator) else {
        return Err(StanzaError::with_text(
            Condition::Forbidden,
            "only moderators change roles",
        ));
    };
    let target = room.occupant(nick).ok_or_else(|| {
        StanzaError::with_text(Condition::ItemNotFound, "nobody by that nickname is in")
    })?;
    let target_aff = room.affiliation(&target.bare);
    match role {
        Role::None if target.bare == actor.bare => Err(StanzaError::with_text(
            Condition::Conflict,
            "one does not kick oneself",
        )),
        Role::None if target_aff > actor_aff => Err(not_allowed(
            "nobody is kicked by someone of lower affiliation",
        )),
        Role::Moderator if actor_aff < Affiliation::Admin => {
            Err(not_allowed("only admins grant moderator status"))
        }
        Role::Visitor | Role::Participant
            if target.role == Role::Moderator && actor_aff < Affiliation::Admin =>
        {
            Err(not_allowed("only admins revoke moderator status"))
        }
        Role::Visitor | Role::Participant if target_aff >= Affiliation::Admin => {
            Err(not_allowed("admins and owners keep their voice and status"))
        }
        Role::Visitor if target_aff > actor_aff => Err(not_allowed(
            "nobody loses voice to someone of lower affiliation",
        )),
        _ => Ok(()),
    }
}

/// Whether `actor` may give `jid` the affiliation `to` (XEP-0045 §9.1 to §9.5, §10.3 to
/// §10.8).
fn check_affiliation(
    room: &Room,
    actor: &Jid,
    actor_aff: Affiliation,
    jid: &Jid,
    to: Affiliation,
) -> Result<(), StanzaError> {
    if actor_aff < Affiliation::Admin {
        return Err(StanzaError::with_text(
            Condition::Forbidden,
            "only admins and owners change affiliations",
        ));
    }
    let current = room
        .affiliations
        .get(jid)
        .map_or(Affiliation::None, |a| a.affiliation);
    if (to >= Affiliation::Admin || current >= Affiliation::Admin) && actor_aff < Affiliation::Owner
    {
        return Err(not_allowed("only owners change admins and owners"));
    }
    if jid == actor && to == Affiliation::Outcast {
        return Err(StanzaError::with_text(
            Condition::Conflict,
            "one does not ban oneself",
        ));
    }
    Ok(())
}

/// Sets `jid`'s entry: `none` removes it; an outcast has no reserved nickname.
fn set_entry(affs: &mut BTreeMap<Jid, Affiliated>, jid: &Jid, to: Affiliation, nick: Option<&str>) {
    if to == Affiliation::None {
        affs.remove(jid);
        return;
    }
    let kept = affs.get(jid).and_then(|a| a.nick.clone());
    let nick = match (to, nick) {
        (Affiliation::Outcast, _) => None,
        (_, Some("")) => None,
        (_, Some(n)) => Some(n.to_owned()),
        (_, None) => kept,
    };
    affs.insert(
        jid.clone(),
        Affiliated {
            affiliation: to,
            nick,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use crate::jid::Jid;
    use crate::stanza::Condition;
    use crate::xml::ns;

    #[test]
    fn a_reserved_room_is_configured_by_form_and_shows_it() {
        let t = router();
        let a = t.online("alice", "phone");
        enter(&t, &a, "family", "Mum");
        let out = t.client(
            &a,
            &format!(
                "<iq type='get' id='f' to='{}'><query xmlns='{OWNER}'/></iq>",
                room("family")
            ),
        );
        out.assert_sent(&a, &format!("<iq type='result' id='f'><query xmlns='{OWNER}'><x xmlns='jabber:x:data' type='form'><field var='muc#roomconfig_membersonly'><value>0</value></field><field var='muc#roomconfig_whois'><value>moderators</value></field></x></query></iq>"));
        let out = configure(&t, &a, "family", PRIVATE);
        out.assert_sent(&a, "<iq type='result' id='cfg'/>");
        let out = t.client(&a, &format!("<iq type='get' id='i' to='{}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>", room("family")));
        let q = out
            .only_to(&a)
            .child("query", ns::DISCO_INFO)
            .unwrap()
            .clone();
        let features: Vec<&str> = q.elements().filter_map(|f| f.attr("var")).collect();
        for want in [
            MUC,
            "muc_membersonly",
            "muc_nonanonymous",
            "muc_persistent",
            "muc_hidden",
            "muc_unmoderated",
            "muc_unsecured",
            ns::MAM,
            ns::MUC_SELF_PING,
            ns::MUC_STABLE_ID,
        ] {
            assert!(features.contains(&want), "{want} missing: {features:?}");
        }
        for not in [
            "muc_open",
            "muc_temporary",
            "muc_public",
            "muc_semianonymous",
        ] {
            assert!(!features.contains(&not), "{not} listed");
        }
        out.assert_sent(&a, "<iq><query xmlns='http://jabber.org/protocol/disco#info'><identity category='conference' type='text' name='Family'/><x xmlns='jabber:x:data' type='result'><field var='muc#roominfo_occupants'><value>1</value></field></x></query></iq>");
        // A hidden room is not listed by the service.
        let out = t.client(&a, "<iq type='get' id='d' to='muc.localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>");
        assert!(
            out.only_to(&a)
                .child("query", ns::DISCO_ITEMS)
                .unwrap()
                .elements()
                .next()
                .is_none()
        );
        // Others may not read or change the configuration; bogus forms change nothing.
        let b = t.online("bob", "laptop");
        let out = t.client(
            &b,
            &format!(
                "<iq type='get' id='f' to='{}'><query xmlns='{OWNER}'/></iq>",
                room("family")
            ),
        );
        out.assert_error(&b, "f", Condition::Forbidden);
        for bad in [
            "<x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_persistentroom'><value>maybe</value></field></x>",
            "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>urn:other</value></field></x>",
            "<x xmlns='jabber:x:data' type='result'/>",
            "<nothing/>",
        ] {
            let out = t.client(
                &a,
                &format!(
                    "<iq type='set' id='bad' to='{}'><query xmlns='{OWNER}'>{bad}</query></iq>",
                    room("family")
                ),
            );
            assert_eq!(out.to(&a).len(), 1, "{bad}: {}", out.show());
            assert_eq!(out.to(&a)[0].attr("type"), Some("error"), "{bad}");
        }
        let out = t.client(&a, &format!("<iq type='get' id='i' to='{}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>", room("family")));
        out.assert_sent(&a, "<iq><query xmlns='http://jabber.org/protocol/disco#info'><feature var='muc_persistent'/></query></iq>");
    }

    #[test]
    fn members_only_refuses_strangers_and_kick_and_ban_remove() {
        let t = router();
        let (a, b, c) = family(&t);
        let d = t.online("dave", "pc");
        let out = enter(&t, &d, "family", "Stranger");
        out.assert_error(&d, "j1", Condition::RegistrationRequired);
        out.assert_nothing_to(&a);
        // Only moderators kick; a member kicking is refused.
        let out = admin_set(&t, &c, "family", "<item nick='Dad' role='none'/>");
        out.assert_error(&c, "adm", Condition::Forbidden);
        let out = admin_set(
            &t,
            &a,
            "family",
            "<item nick='Kid' role='none'><reason>bedtime</reason></item>",
        );
        out.assert_sent(&a, "<iq type='result' id='adm'/>");
        out.assert_sent(&c, &format!("<presence type='unavailable' from='{}/Kid'><x xmlns='{USER}'><item role='none' affiliation='member'><actor nick='Mum'/><reason>bedtime</reason></item><status code='110'/><status code='307'/></x></presence>", room("family")));
        out.assert_sent(&b, &format!("<presence type='unavailable' from='{}/Kid'><x xmlns='{USER}'><status code='307'/></x></presence>", room("family")));
        // A kicked member comes back; a banned one does not.
        enter(&t, &c, "family", "Kid").assert_sent(&c, "<presence><x xmlns='http://jabber.org/protocol/muc#user'><status code='110'/></x></presence>");
        let out = admin_set(
            &t,
            &a,
            "family",
            "<item affiliation='outcast' jid='carol@localhost'><reason>enough</reason></item>",
        );
        out.assert_sent(&c, &format!("<presence type='unavailable' from='{}/Kid'><x xmlns='{USER}'><item affiliation='outcast' role='none'/><status code='110'/><status code='301'/></x></presence>", room("family")));
        out.assert_sent(&b, "<presence type='unavailable'><x xmlns='http://jabber.org/protocol/muc#user'><status code='301'/></x></presence>");
        let out = enter(&t, &c, "family", "Kid");
        out.assert_error(&c, "j1", Condition::Forbidden);
        out.assert_nothing_to(&b);
        // Losing membership of a members-only room puts one out (321).
        let out = admin_set(
            &t,
            &a,
            "family",
            "<item affiliation='none' jid='bob@localhost'/>",
        );
        out.assert_sent(&b, "<presence type='unavailable'><x xmlns='http://jabber.org/protocol/muc#user'><status code='110'/><status code='321'/></x></presence>");
        // Nobody bans themselves, nor leaves the room without an owner.
        let out = admin_set(
            &t,
            &a,
            "family",
            "<item affiliation='outcast' jid='alice@localhost'/>",
        );
        out.assert_error(&a, "adm", Condition::Conflict);
        let out = admin_set(
            &t,
            &a,
            "family",
            "<item affiliation='member' jid='alice@localhost'/>",
        );
        out.assert_error(&a, "adm", Condition::Conflict);
        // A moderator does not kick themselves either.
        let out = admin_set(&t, &a, "family", "<item nick='Mum' role='none'/>");
        out.assert_error(&a, "adm", Condition::Conflict);
    }

    #[test]
    fn admins_act_within_their_rank() {
        let t = router();
        let (a, b, c) = family(&t);
        admin_set(&t, &a, "family", "<item affiliation='admin' jid='bob@localhost'/>")
            .assert_sent(&c, "<presence from='family@muc.localhost/Dad'><x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='admin' role='moderator'/></x></presence>");
        // An admin may not ban the owner, make admins, or kick the owner.
        admin_set(
            &t,
            &b,
            "family",
            "<item affiliation='outcast' jid='alice@localhost'/>",
        )
        .assert_error(&b, "adm", Condition::NotAllowed);
        admin_set(
            &t,
            &b,
            "family",
            "<item affiliation='admin' jid='carol@localhost'/>",
        )
        .assert_error(&b, "adm", Condition::NotAllowed);
        admin_set(&t, &b, "family", "<item nick='Mum' role='none'/>").assert_error(
            &b,
            "adm",
            Condition::NotAllowed,
        );
        // Both in one item, an unknown nickname, a refused item among good ones: nothing changes.
        admin_set(
            &t,
            &a,
            "family",
            "<item nick='Kid' role='visitor' affiliation='none' jid='carol@localhost'/>",
        )
        .assert_error(&a, "adm", Condition::BadRequest);
        admin_set(&t, &b, "family", "<item nick='Nobody' role='none'/>").assert_error(
            &b,
            "adm",
            Condition::ItemNotFound,
        );
        let out = admin_set(
            &t,
            &b,
            "family",
            "<item affiliation='outcast' jid='dave@localhost'/><item affiliation='outcast' jid='alice@localhost'/>",
        );
        out.assert_error(&b, "adm", Condition::NotAllowed);
        let out = t.client(&a, &format!("<iq type='get' id='o' to='{}'><query xmlns='{ADMIN}'><item affiliation='outcast'/></query></iq>", room("family")));
        assert!(
            out.only_to(&a)
                .child("query", ADMIN)
                .unwrap()
                .elements()
                .next()
                .is_none()
        );
        // The voice list is for moderators, with real JIDs.
        let out = t.client(&b, &format!("<iq type='get' id='v' to='{}'><query xmlns='{ADMIN}'><item role='participant'/></query></iq>", room("family")));
        out.assert_sent(&b, &format!("<iq type='result'><query xmlns='{ADMIN}'><item nick='Kid' role='participant' affiliation='member' jid='carol@localhost/tablet'/></query></iq>"));
        let out = t.client(&c, &format!("<iq type='get' id='v' to='{}'><query xmlns='{ADMIN}'><item role='participant'/></query></iq>", room("family")));
        out.assert_error(&c, "v", Condition::Forbidden);
        // A member's affiliation goes; the owner keeps the room with another owner.
        admin_set(
            &t,
            &a,
            "family",
            "<item affiliation='owner' jid='bob@localhost'/>",
        )
        .assert_sent(&a, "<iq type='result'/>");
        admin_set(
            &t,
            &a,
            "family",
            "<item affiliation='member' jid='alice@localhost'/>",
        )
        .assert_sent(&a, "<iq type='result'/>");
    }

    #[test]
    fn configuration_changes_are_announced_and_applied() {
        let t = router();
        let a = t.online("alice", "phone");
        let b = t.online("bob", "laptop");
        create(&t, &a, "club", "Mum", &[]);
        enter(&t, &b, "club", "Dad");
        let out = configure(&t, &a, "club", &[("muc#roomconfig_whois", "anyone")]);
        out.assert_sent(&b, &format!("<message type='groupchat' from='{}'><x xmlns='{USER}'><status code='172'/></x></message>", room("club")));
        let out = configure(&t, &a, "club", &[("muc#roomconfig_roomname", "Club")]);
        out.assert_sent(&b, "<message><x xmlns='http://jabber.org/protocol/muc#user'><status code='104'/></x></message>");
        // Becoming members-only puts non-members out with 322.
        let out = configure(&t, &a, "club", &[("muc#roomconfig_membersonly", "1")]);
        out.assert_sent(&b, "<presence type='unavailable'><x xmlns='http://jabber.org/protocol/muc#user'><status code='110'/><status code='322'/></x></presence>");
        // A password keeps out whoever does not give it.
        configure(
            &t,
            &a,
            "club",
            &[
                ("muc#roomconfig_membersonly", "0"),
                ("muc#roomconfig_passwordprotectedroom", "1"),
                ("muc#roomconfig_roomsecret", "cauldron"),
            ],
        );
        enter(&t, &b, "club", "Dad").assert_error(&b, "j1", Condition::NotAuthorized);
        enter_with(&t, &b, "club", "Dad", "<password>wrong</password>").assert_error(
            &b,
            "j1",
            Condition::NotAuthorized,
        );
        enter_with(&t, &b, "club", "Dad", "<password>cauldron</password>").assert_sent(&b, "<presence><x xmlns='http://jabber.org/protocol/muc#user'><status code='110'/></x></presence>");
    }

    #[test]
    fn affiliations_are_stored_where_they_belong() {
        let t = router();
        let (a, _b, _c) = family(&t);
        let out = admin_set(
            &t,
            &a,
            "family",
            "<item affiliation='member' jid='dave@localhost' nick='Grandpa'/>\
             <item affiliation='member' jid='cousin@elsewhere.example'/>\
             <item affiliation='outcast' jid='spam.example'/>\
             <item affiliation='none' jid='carol@localhost'/>",
        );
        out.assert_sent(&a, "<iq type='result' id='adm'/>");
        let (rooms, affs) = super::super::store::load(&t.router.store).unwrap();
        let record = &rooms.iter().find(|(n, _)| n == "family").unwrap().1;
        let others: Vec<&str> = record.others.iter().map(|o| o.jid.as_str()).collect();
        assert_eq!(others, vec!["spam.example", "cousin@elsewhere.example"]);
        let mut users: Vec<(&str, &str)> = affs
            .iter()
            .map(|(u, _, a)| (u.as_str(), a.affiliation.as_str()))
            .collect();
        users.sort();
        assert_eq!(
            users,
            vec![("alice", "owner"), ("bob", "member"), ("dave", "member")]
        );
        // Someone at the banned domain is kept out.
        assert_eq!(
            t.module::<super::super::Muc>().rooms.borrow()["family"]
                .affiliation(&Jid::parse("x@spam.example").unwrap()),
            super::super::room::Affiliation::Outcast
        );
        // Made temporary, the room forgets what it stored; it lives on while people are in.
        configure(&t, &a, "family", &[("muc#roomconfig_persistentroom", "0")]);
        let (rooms, affs) = super::super::store::load(&t.router.store).unwrap();
        assert!(rooms.is_empty() && affs.is_empty());
        say(&t, &a, "family", "still here").assert_sent(&a, "<message type='groupchat'/>");
    }
}
