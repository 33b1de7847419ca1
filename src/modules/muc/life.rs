//! A room's life: the configuration a new room starts with, what a persistent room writes
//! when it changes, restoring rooms at start, and the end of a room (its last occupant left a
//! temporary one, or an owner destroyed it).

use super::occupants::{Leaving, gone};
use super::room::{Past, Room, RoomConfig};
use super::store::{self, ROOM_ARCHIVE, Record};
use super::{Muc, Out};
use crate::jid::Jid;
use crate::modules::Cx;
use crate::router::Dest;
use crate::storage::Write;
use crate::xml::{Element, ns, reader};

impl Muc {
    /// What a new room starts with: an open, temporary room whose history fits the service.
    pub(super) fn default_config(&self) -> RoomConfig {
        RoomConfig {
            max_users: self.c.max_occupants,
            history_length: 20.min(self.c.max_history),
            ..RoomConfig::default()
        }
    }

    /// The account `jid` is, if it is one of this server's (existing or not).
    fn account<'j>(cx: &Cx, jid: &'j Jid) -> Option<&'j str> {
        match cx.destination(jid) {
            Dest::Account(u) => Some(u),
            _ => None,
        }
    }

    fn record(&self, cx: &Cx, room: &Room) -> Record {
        Record {
            config: room.config.clone(),
            subject: room.subject.clone(),
            others: room
                .affiliations
                .iter()
                .filter(|(j, _)| Muc::account(cx, j).is_none())
                .map(|(j, a)| store::Other {
                    jid: j.to_string(),
                    entry: a.clone(),
                })
                .collect(),
        }
    }

    /// The write that stores `room`'s record (not the accounts' affiliations).
    pub(super) fn save(&self, cx: &Cx, room: &Room) -> Write {
        store::save(&room.name, &self.record(cx, room))
    }

    /// Writes the affiliations of `jids` with a persistent room, wherever each is kept: an
    /// account's in its own row, the others in the room's record, written once.
    pub(super) fn persist_affiliations(&self, cx: &Cx, room: &Room, jids: &[Jid], out: &mut Out) {
        if !room.config.persistent || room.locked {
            return;
        }
        let mut record = false;
        for jid in jids {
            match Muc::account(cx, jid) {
                Some(u) => out.writes.push(store::set_affiliation(
                    u,
                    &room.name,
                    room.affiliations.get(jid),
                )),
                None => record = true,
            }
        }
        if record {
            out.writes.push(self.save(cx, room));
        }
    }

    /// Writes all of a room that has just become persistent (or was configured as such).
    pub(super) fn persist_all(&self, cx: &Cx, room: &Room, out: &mut Out) {
        out.writes.push(self.save(cx, room));
        for (j, a) in &room.affiliations {
            if let Some(u) = Muc::account(cx, j) {
                out.writes
                    .push(store::set_affiliation(u, &room.name, Some(a)));
            }
        }
    }

    /// Loads the persistent rooms; forgets the archives of rooms that are gone, and refills
    /// each room's history from its archive.
    pub(super) fn restore(&self, cx: &Cx, out: &mut Out) {
        let (records, affiliations) = match store::load(cx.store()) {
            Ok(l) => l,
            Err(e) => {
                log::error!("loading the chat rooms: {e}; starting without them");
                return;
            }
        };
        let mut rooms = self.rooms.borrow_mut();
        for (name, r) in records {
            let mut room = Room::new(&name, self.room_jid(&name), r.config);
            room.subject = r.subject;
            for o in r.others {
                match Jid::parse(&o.jid) {
                    Ok(j) => drop(room.affiliations.insert(j, o.entry)),
                    Err(_) => log::warn!("room {name}: skipping the affiliation of {:?}", o.jid),
                }
            }
            rooms.insert(name, room);
        }
        for (user, name, a) in affiliations {
            match rooms.get_mut(&name) {
                Some(room) => drop(
                    room.affiliations
                        .insert(Jid::bare_from(&user, &self.server), a),
                ),
                None => out.writes.push(store::set_affiliation(&user, &name, None)),
            }
        }
        // Temporary rooms do not outlive the server; nor do their archives.
        out.writes
            .push(ROOM_ARCHIVE.keep_only(rooms.keys().cloned().collect()));
        for room in rooms.values_mut() {
            let most = room.config.history_length.min(self.c.max_history);
            if !room.config.archiving || most == 0 {
                continue;
            }
            // Read from the newest: the history is the last messages with something to read.
            let page = ROOM_ARCHIVE.page(
                cx.store(),
                &room.name,
                None,
                0,
                u64::MAX,
                true,
                most.saturating_mul(4),
                &|_| true,
            );
            let items = match page {
                Ok(p) => p.items,
                Err(e) => {
                    log::error!("reading the history of {}: {e}", room.jid);
                    continue;
                }
            };
            for a in items {
                let Some(msg) = reader::parse_one(&a.xml) else {
                    continue;
                };
                let from = msg.attr("from").and_then(|f| Jid::parse(f).ok());
                let Some(from) = from.filter(|_| msg.has_child("body", ns::CLIENT)) else {
                    continue;
                };
                let bytes = a.xml.len();
                room.remember(
                    Past {
                        from,
                        stamp_ms: a.stamp_ms,
                        msg: without_from(msg),
                        bytes,
                    },
                    most,
                    self.c.max_history_bytes,
                );
            }
        }
        log::info!("{} chat rooms at {}", rooms.len(), self.domain);
    }

    /// Ends room `name` if nobody is in and nothing keeps it: a temporary room, or one still
    /// waiting for its first configuration. Its archive goes with it.
    pub(super) fn reap(&self, name: &str, out: &mut Out) {
        let mut rooms = self.rooms.borrow_mut();
        let done = rooms
            .get(name)
            .is_some_and(|r| r.occupants.is_empty() && (r.locked || !r.config.persistent));
        if done {
            rooms.remove(name);
            out.writes.push(ROOM_ARCHIVE.clear(name));
            self.quota.forget(name);
        }
    }

    /// Destroys room `name` (XEP-0045 §10.9): every occupant is told, once, and everything of
    /// the room is forgotten.
    pub(super) fn destroy(&self, name: &str, destroy: Element, out: &mut Out) {
        let Some(mut room) = self.rooms.borrow_mut().remove(name) else {
            return;
        };
        let how = Leaving {
            destroy: Some(destroy),
            ..Leaving::default()
        };
        for o in std::mem::take(&mut room.occupants).into_values() {
            for sess in &o.sessions {
                self.forget_session(&mut room, &sess.jid);
                let st = gone(&room, &o, &o.nick, &sess.jid, true, true, &[], &how);
                out.stanzas.push(st);
            }
        }
        if room.config.persistent {
            out.writes.extend(store::forget(name));
        } else {
            out.writes.push(ROOM_ARCHIVE.clear(name));
        }
        self.quota.forget(name);
    }
}

/// A stored message as history keeps it: addresses are set per copy.
fn without_from(mut msg: Element) -> Element {
    msg.remove_attr("from");
    msg.remove_attr("to");
    msg
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use crate::stanza::Condition;

    #[test]
    fn temporary_rooms_end_with_their_last_occupant_and_owners_destroy_rooms() {
        let t = router();
        let a = t.online("alice", "phone");
        let b = t.online("bob", "laptop");
        create(&t, &a, "tmp", "Mum", &[]);
        enter(&t, &b, "tmp", "Dad");
        say(&t, &a, "tmp", "bye");
        t.client(
            &a,
            &format!("<presence type='unavailable' to='{}/Mum'/>", room("tmp")),
        );
        t.client(
            &b,
            &format!("<presence type='unavailable' to='{}/Dad'/>", room("tmp")),
        );
        // Gone: entering creates it anew.
        let out = enter(&t, &b, "tmp", "Dad");
        assert!(codes(out.to(&b)[0]).contains(&"201".to_owned()));
        // A room whose creator leaves before configuring it is gone too.
        t.client(
            &b,
            &format!("<presence type='unavailable' to='{}/Dad'/>", room("tmp")),
        );
        let out = enter(&t, &a, "tmp", "Mum");
        assert!(codes(out.to(&a)[0]).contains(&"201".to_owned()));
        // Destroying: each occupant hears it once, with the reason.
        configure(&t, &a, "tmp", &[("muc#roomconfig_persistentroom", "1")]);
        enter(&t, &b, "tmp", "Dad");
        t.client(
            &b,
            &format!(
                "<iq type='set' id='x' to='{}'><query xmlns='{OWNER}'><destroy/></query></iq>",
                room("tmp")
            ),
        )
        .assert_error(&b, "x", Condition::Forbidden);
        let out = t.client(&a, &format!("<iq type='set' id='x' to='{}'><query xmlns='{OWNER}'><destroy jid='{}'><reason>moved</reason></destroy></query></iq>", room("tmp"), room("new")));
        out.assert_sent(&a, "<iq type='result' id='x'/>");
        out.assert_sent(&b, &format!("<presence type='unavailable' from='{}/Dad'><x xmlns='{USER}'><destroy jid='{}'><reason>moved</reason></destroy></x></presence>", room("tmp"), room("new")));
        assert_eq!(out.to(&b).len(), 1, "{}", out.show());
        assert!(
            t.router
                .store
                .rows_of("alice")
                .iter()
                .all(|(n, _)| n != "muc_affiliations")
        );
    }

    #[test]
    fn stopping_the_service_tells_every_occupant_once() {
        let t = router();
        let (a, b, c) = family(&t);
        let out = t.step(|cx| {
            for m in cx.modules() {
                m.stop(cx);
            }
        });
        for who in [&a, &b, &c] {
            assert_eq!(out.to(who).len(), 1, "{}", out.show());
            out.assert_sent(who, &format!("<presence type='unavailable'><x xmlns='{USER}'><item role='none'/><status code='110'/><status code='332'/></x></presence>"));
        }
        // The sessions ending afterwards tell nobody anything more.
        t.close(&a).assert_nothing_to(&b);
    }
}
