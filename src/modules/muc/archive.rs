//! The room's archive (XEP-0313 §3.2 and §5.1.2 for MUC archives): queried on the room's JID
//! with the same query, ids and paging as an account's archive (`mam/serve.rs`). Whoever may
//! enter the room may read it: not outcasts, only members in a members-only room, only
//! occupants and members in a password-protected one. Who sent each message (its real bare
//! JID) is shown to those who may see real JIDs, and only they may filter by it.

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
                let parsed = query::parse(q, self.default_page, self.max_page)?;
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
