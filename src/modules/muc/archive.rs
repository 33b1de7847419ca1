//! The room's archive (XEP-0313 §3.2 and §5.1.2 for MUC archives): queried on the room's JID
//! with the same query, ids and paging as an account's archive (`mam/serve.rs`). Whoever may
//! enter the room may read it: not outcasts, only members in a members-only room, only
//! occupants and members in a password-protected one. Who sent each message (its real bare
//! JID) is shown to those who may see real JIDs, and only they may filter by it. There is no
//! index by sender: such a query reads the rows and filters, within the rows a page may look
//! at (see `serve::ROWS_PER_RESULT`).

use super::Muc;
use super::room::{Affiliation, Role};
use super::store::ROOM_ARCHIVE;
use crate::jid::Jid;
use crate::modules::Cx;
use crate::modules::mam::query;
use crate::modules::mam::serve::{self, Ask};
use crate::modules::mam::store::Archived;
use crate::stanza::{Condition, Stanza, StanzaError, Type};
use crate::xml::{Element, ns};

impl Muc {
    pub(super) fn archive_query(
        &self,
        cx: &mut Cx,
        st: &Stanza,
        name: &str,
        q: &Element,
    ) -> Result<Element, StanzaError> {
        let (room_jid, sees, affiliations) = {
            let rooms = self.rooms.borrow();
            let room = rooms
                .get(name)
                .ok_or_else(|| StanzaError::new(Condition::ItemNotFound))?;
            let aff = room.affiliation(&st.from.bare());
            let occupant = room.occupant_of(&st.from);
            let may = aff != Affiliation::Outcast
                && (!room.config.members_only || aff >= Affiliation::Member)
                && (room.config.password.is_none()
                    || aff >= Affiliation::Member
                    || occupant.is_some());
            if !may {
                return Err(StanzaError::with_text(
                    Condition::Forbidden,
                    "only those who may enter the room read its archive",
                ));
            }
            let sees = room.config.whois_anyone
                || aff >= Affiliation::Admin
                || occupant.is_some_and(|o| o.role == Role::Moderator);
            let affiliations: Vec<(String, Affiliation)> = room
                .affiliations
                .iter()
                .map(|(j, a)| (j.to_string(), a.affiliation))
                .collect();
            (room.jid.clone(), sees, affiliations)
        };
        let set = st.typ == Type::Set;
        match (q.name.as_str(), set) {
            ("query", false) => Ok(query::form()),
            ("query", true) => {
                let parsed = self.paging.parse(q)?;
                if parsed.with.is_some() && !sees {
                    return Err(StanzaError::with_text(
                        Condition::Forbidden,
                        "real addresses are hidden in this room",
                    ));
                }
                let with = parsed.with.clone();
                let keep = move |w: &str| {
                    with.as_ref()
                        .is_none_or(|f| Jid::parse(w).is_ok_and(|w| w.bare() == f.bare()))
                };
                // XEP-0313 §5.1.2: who sent it, for those who may know.
                let decorate = |a: &Archived, m: &mut Element| {
                    if !sees {
                        return;
                    }
                    let aff = affiliations
                        .iter()
                        .find(|(j, _)| *j == a.with)
                        .map_or(Affiliation::None, |(_, a)| *a);
                    m.push(
                        Element::new("x", ns::MUC_USER).with_child(
                            Element::new("item", ns::MUC_USER)
                                .with_attr("affiliation", aff.as_str())
                                .with_attr("jid", a.with.as_str()),
                        ),
                    );
                };
                let ask = Ask {
                    ids: &self.ids,
                    paging: &self.paging,
                    owner: name,
                    by: &room_jid,
                    to: &st.from,
                };
                serve::run(cx, &ask, &parsed, None, &keep, &decorate)
            }
            ("metadata", false) => serve::metadata(cx, &ROOM_ARCHIVE, name),
            _ => Err(StanzaError::bad_request("expected a MAM query or metadata")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use crate::jid::Jid;
    use crate::modules::testing::{Out, TestRouter};
    use crate::stanza::Condition;
    use crate::xml::{Element, ns};
    use std::time::Duration;

    #[test]
    fn the_room_archive_pages_and_minds_who_asks() {
        let t = router();
        let (a, b, c) = family(&t);
        for i in 0..7 {
            say(&t, &b, "family", &format!("n{i}"));
            t.skip(Duration::from_millis(5));
        }
        // A chat state is relayed, not archived.
        t.client(&a, &format!("<message type='groupchat' to='{}'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>", room("family")))
            .assert_sent(&c, "<message><composing xmlns='http://jabber.org/protocol/chatstates'/></message>");
        let query = |who: &Jid, rsm: &str| {
            t.client(who, &format!("<iq type='set' id='q' to='{}'><query xmlns='urn:xmpp:mam:2' queryid='f'><set xmlns='http://jabber.org/protocol/rsm'>{rsm}</set></query></iq>", room("family")))
        };
        let out = query(&c, "<max>3</max><before/>");
        let results: Vec<&Element> = out
            .to(&c)
            .into_iter()
            .filter(|e| e.name == "message")
            .collect();
        let bodies: Vec<String> = results
            .iter()
            .map(|m| {
                m.child("result", ns::MAM)
                    .unwrap()
                    .child("forwarded", ns::FORWARD)
                    .unwrap()
                    .child("message", ns::CLIENT)
                    .unwrap()
                    .child("body", ns::CLIENT)
                    .unwrap()
                    .text()
            })
            .collect();
        assert_eq!(bodies, vec!["n4", "n5", "n6"]);
        assert_eq!(results[0].attr("from"), Some("family@muc.localhost"));
        out.assert_sent(&c, &format!("<message><result xmlns='urn:xmpp:mam:2' queryid='f'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='{}/Dad' type='groupchat'><x xmlns='{USER}'><item jid='bob@localhost' affiliation='member'/></x></message></forwarded></result></message>", room("family")));
        let fin = out
            .to(&c)
            .into_iter()
            .find(|e| e.name == "iq")
            .unwrap()
            .child("fin", ns::MAM)
            .unwrap()
            .clone();
        assert_eq!(fin.attr("complete"), None);
        let first = fin
            .child("set", ns::RSM)
            .unwrap()
            .child("first", ns::RSM)
            .unwrap()
            .text();
        let out = query(&c, &format!("<max>10</max><before>{first}</before>"));
        assert_eq!(
            out.to(&c).len(),
            5,
            "four older and the fin: {}",
            out.show()
        );
        out.assert_sent(
            &c,
            "<iq type='result' id='q'><fin xmlns='urn:xmpp:mam:2' complete='true'/></iq>",
        );
        // The stanza-id a member got is the archive's id.
        let live = say(&t, &a, "family", "latest");
        let sid = live.to(&c)[0]
            .child("stanza-id", ns::SID)
            .unwrap()
            .attr("id")
            .unwrap()
            .to_owned();
        let out = query(&c, "<max>1</max><before/>");
        out.assert_sent(
            &c,
            &format!("<message><result xmlns='urn:xmpp:mam:2' id='{sid}'/></message>"),
        );
        // A stranger may not read a members-only room's archive.
        let d = t.online("dave", "pc");
        query(&d, "<max>1</max>").assert_error(&d, "q", Condition::Forbidden);
    }

    #[test]
    fn old_room_messages_expire_with_the_archive_retention() {
        let t = router_with(|c| c.modules.mam.retention_days = 1);
        let (a, _b, _c) = family(&t);
        say(&t, &a, "family", "old news");
        let kept = |t: &crate::modules::testing::TestRouter| {
            super::ROOM_ARCHIVE
                .page(
                    &t.router.store,
                    "family",
                    None,
                    0,
                    u64::MAX,
                    false,
                    10,
                    &|_| true,
                )
                .unwrap()
                .items
                .len()
        };
        assert_eq!(kept(&t), 1);
        t.skip(Duration::from_secs(90_000));
        say(&t, &a, "family", "news");
        assert_eq!(kept(&t), 2);
        t.advance(Duration::from_secs(2));
        assert_eq!(kept(&t), 1, "the old one went, the new one stays");
    }

    /// A query of the room's archive for a sender is the same attack as `with` a full JID on
    /// an account's archive (there is no index by sender): it looks at a bounded number of
    /// rows per result it may hold, and says so when that finds nothing.
    #[test]
    fn a_room_archive_query_looks_at_a_bounded_number_of_rows() {
        let t = router_with(|c| {
            c.modules.mam.max_page = 2;
            c.modules.mam.default_page = 2;
            c.modules.muc.messages_per_minute = 1000;
        });
        let (a, b, c) = family(&t);
        // 250 from bob, then 3 from carol: 200 rows may be looked at per query.
        for i in 0..250 {
            say(&t, &b, "family", &format!("b{i}"));
        }
        for i in 0..3 {
            say(&t, &c, "family", &format!("c{i}"));
        }
        let with = |jid: &str, set: &str| {
            t.client(
                &a,
                &format!(
                    "<iq type='set' id='q' to='{}'><query xmlns='urn:xmpp:mam:2'>\
                     <x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'>\
                     <value>urn:xmpp:mam:2</value></field><field var='with'><value>{jid}</value>\
                     </field></x><set xmlns='http://jabber.org/protocol/rsm'>{set}</set>\
                     </query></iq>",
                    room("family")
                ),
            )
        };
        let out = with("carol@localhost", "<max>2</max>");
        out.assert_error(&a, "q", Condition::ResourceConstraint);
        // From the newest end carol's messages are found at once.
        let out = with("carol@localhost", "<max>2</max><before/>");
        assert_eq!(
            out.to(&a).len(),
            3,
            "two results and the fin: {}",
            out.show()
        );
        out.assert_sent(
            &a,
            "<iq type='result' id='q'><fin xmlns='urn:xmpp:mam:2'/></iq>",
        );
        // Bob's match at once from either end.
        let out = with("bob@localhost", "<max>2</max>");
        assert_eq!(out.to(&a).len(), 3, "{}", out.show());
    }

    /// A groupchat message with a short id, however long its body.
    fn speak(t: &TestRouter, who: &Jid, room_name: &str, id: &str, body: &str) -> Out {
        t.client(
            who,
            &format!(
                "<message type='groupchat' id='{id}' to='{}'><body>{body}</body></message>",
                room(room_name)
            ),
        )
    }

    /// A page of the room's archive stops at half of the client's queue in bytes, as an
    /// account's does.
    #[test]
    fn a_room_archive_page_is_cut_by_bytes() {
        let t = router_with(|c| {
            c.limits.queue_bytes = 40_000;
            c.modules.muc.messages_per_minute = 1000;
        });
        let (a, b, _c) = family(&t);
        let filler = "x".repeat(6000);
        for i in 0..5 {
            speak(&t, &b, "family", &format!("m{i}"), &format!("m{i}{filler}"));
        }
        let query = |rsm: &str| {
            t.client(
                &a,
                &format!(
                    "<iq type='set' id='q' to='{}'><query xmlns='urn:xmpp:mam:2'>\
                     <set xmlns='http://jabber.org/protocol/rsm'>{rsm}</set></query></iq>",
                    room("family")
                ),
            )
        };
        let ids = |out: &Out| -> Vec<String> {
            out.to(&a)
                .into_iter()
                .filter_map(|m| m.child("result", ns::MAM))
                .filter_map(|r| r.attr("id").map(str::to_owned))
                .collect()
        };
        // Three of about 6 KB fit in 20 KB.
        let out = query("<max>10</max>");
        let first = ids(&out);
        assert_eq!(first.len(), 3);
        out.assert_not_sent(&a, "<iq><fin complete='true'/></iq>");
        let out = query(&format!("<max>10</max><after>{}</after>", first[2]));
        assert_eq!(ids(&out).len(), 2);
        out.assert_sent(
            &a,
            "<iq type='result' id='q'><fin xmlns='urn:xmpp:mam:2' complete='true'/></iq>",
        );
        // By ids, too.
        let named: String = first
            .iter()
            .map(|id| format!("<value>{id}</value>"))
            .collect();
        let out = t.client(
            &a,
            &format!(
                "<iq type='set' id='q' to='{}'><query xmlns='urn:xmpp:mam:2'>\
                 <x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'>\
                 <value>urn:xmpp:mam:2</value></field><field var='ids'>{named}{named}</field>\
                 </x><set xmlns='http://jabber.org/protocol/rsm'><max>1</max></set></query></iq>",
                room("family")
            ),
        );
        assert_eq!(ids(&out).len(), 1);
    }

    /// A room's archive is bounded in bytes (`max_archive_bytes_per_room`): a full one keeps
    /// what it has and takes nothing new, while the room still relays every message; another
    /// room is not affected, and a room made again under the same name starts empty.
    #[test]
    fn a_full_room_archive_keeps_its_history_and_takes_nothing_new() {
        let t = router_with(|c| c.modules.muc.max_archive_bytes_per_room = 10_000);
        let (a, b, c) = family(&t);
        let filler = "x".repeat(3000);
        let kept = |t: &TestRouter, name: &str| {
            super::ROOM_ARCHIVE
                .page(
                    &t.router.store,
                    name,
                    None,
                    0,
                    u64::MAX,
                    false,
                    100,
                    &|_| true,
                )
                .unwrap()
                .items
                .len()
        };
        for i in 0..5 {
            let out = speak(
                &t,
                &b,
                "family",
                &format!("m{i}"),
                &format!("m{i} {filler}"),
            );
            let got = out.to(&c)[0];
            assert_eq!(got.child("stanza-id", ns::SID).is_some(), i < 3, "m{i}");
            assert_eq!(out.to(&a).len(), 1, "relayed all the same");
        }
        assert_eq!(kept(&t, "family"), 3);
        let bytes = super::ROOM_ARCHIVE
            .bytes(&t.router.store, "family")
            .unwrap();
        assert!(bytes <= 10_000 && bytes > 9000, "{bytes}");
        // Another room has its own room.
        let d = t.online("dave", "pc");
        create(&t, &d, "games", "Dave", &[]);
        let out = speak(&t, &d, "games", "g", &format!("g {filler}"));
        assert!(out.to(&d)[0].child("stanza-id", ns::SID).is_some());
        // The temporary room goes with its archive when dave leaves; made again, it archives.
        t.client(
            &d,
            &format!("<presence type='unavailable' to='{}/Dave'/>", room("games")),
        );
        assert_eq!(kept(&t, "games"), 0);
        create(&t, &d, "games", "Dave", &[]);
        for i in 0..3 {
            let out = speak(&t, &d, "games", &format!("g{i}"), &format!("g{i} {filler}"));
            assert!(out.to(&d)[0].child("stanza-id", ns::SID).is_some(), "g{i}");
        }
        assert_eq!(kept(&t, "games"), 3);
    }
}
