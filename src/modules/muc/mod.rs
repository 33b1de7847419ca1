//! XEP-0045 Multi-User Chat, v1.35, as a service hosted at its own domain (`muc.<domain>` by
//! default), with the rooms' XEP-0313 archives and XEP-0410 self-ping.
//!
//! - Rooms are created by entering them (status 201), locked until their creator sends the
//!   instant-room form or a configuration (`muc#owner`); who may create rooms is a service
//!   setting. Configuration by `muc#roomconfig` forms (`forms.rs`); a room's disco#info lists
//!   the `muc_*` features of its configuration and the `muc#roominfo` form.
//! - Occupants (`occupants.rs`): entering with the self-presence and its status codes (100,
//!   110, 170, 201), history (`maxstanzas`, `maxchars`, `seconds`, `since`) and the subject;
//!   refusals for outcasts, non-members, passwords, full rooms and nickname conflicts;
//!   nickname changes (303), presence updates, leaving. Several sessions of one user may share
//!   a nickname: they are one occupant.
//! - In-room traffic (`messages.rs`): messages to everyone (reflected with the sender's id,
//!   archived with a stanza-id `by` the room), subject changes, private messages (`allowpm`),
//!   mediated invitations and declines, voice requests to the moderators and their approval,
//!   iqs between occupants (forwarded with the real JIDs hidden), and the self-ping: a ping
//!   to one's own occupant JID is answered by the room, `not-acceptable` when not in.
//! - Moderation (`admin.rs`): `muc#admin` lists and changes of roles and affiliations, kick
//!   (307), ban (301), removal on losing membership (321) or when a room becomes members-only
//!   (322); `muc#owner` configuration (with 104/170/171/172/173 notices) and destruction.
//!   In a non-anonymous room the member, admin and owner lists are readable by its members
//!   and occupants, which is what a client needs to encrypt to every member (OMEMO).
//! - The archive (`archive.rs`): every groupchat message worth keeping, queried on the room's
//!   JID with the accounts' archive's query and paging (`mam/serve.rs`) by whoever may enter;
//!   bounded as theirs are, in bytes per room (`max_archive_bytes_per_room`: a full one
//!   relays without archiving) and its pages in bytes and rows looked at.
//! - Storage (`store.rs`): persistent rooms and affiliations, restored at start; temporary
//!   rooms go when their last occupant leaves, with their archive.
//! - Sessions: an occupant whose XEP-0198 session is detached stays in; a session that ends
//!   (or a new session binding the same full JID) leaves every room it was in. When the
//!   server stops, every occupant is told it is out (332).
//!
//! Everything the service sends goes through the router as a stanza from the room (or an
//! occupant JID), so the recipients' modules (blocking, say) apply to it.
//!
//! Left out: registration with a room (`jabber:iq:register`), the owner and admin lists as
//! configuration fields (`muc#admin` sets them), presence broadcast by role, messages about
//! affiliation changes to users not in the room (101), room avatars, the `#traffic` node, and
//! federation (rooms see only this server's users). A room whose only owner's account is
//! deleted keeps no owner.

mod admin;
mod archive;
mod forms;
mod life;
mod messages;
mod occupants;
mod room;
mod store;
#[cfg(test)]
mod tests;

use super::mam::serve::{Ids, Paging, Quota};
use super::{Cx, DiscoInfo, Entry, IqRequest, IqRoute, Module, SessionEvent, Target, To};
use crate::jid::Jid;
use crate::stanza::{Kind, Origin, Stanza, StanzaError, Type};
use crate::storage::Write;
use crate::xml::{Element, ns};
use room::Room;
use serde::Deserialize;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

pub const ENTRY: Entry = Entry {
    tables: &[
        &store::ROOM_TO_RECORD,
        &store::USER_ROOM_TO_AFFILIATION,
        &store::ROOM_ID_TO_ARCHIVED,
        &store::ROOM_TO_ARCHIVE_BYTES,
    ],
    new: |config| {
        let c = &config.modules.muc;
        c.enabled
            .then(|| Box::new(Muc::new(config)) as Box<dyn Module>)
    },
};

/// Who may create rooms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Creators {
    /// Every account of this server.
    #[default]
    Anyone,
    /// Only the accounts listed in `admins`.
    Admins,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub enabled: bool,
    /// The service's domain; empty means `muc.` followed by the server's domain.
    pub domain: String,
    pub create: Creators,
    /// Bare JIDs of the accounts that may create rooms when `create = "admins"`.
    pub admins: Vec<String>,
    /// Rooms on the service, all together.
    pub max_rooms: usize,
    /// Rooms one account may own.
    pub max_owned_per_user: usize,
    /// Rooms one account may be in at once.
    pub max_joined_per_user: usize,
    /// Occupants of one room; a room's own limit is at most this.
    pub max_occupants: usize,
    /// Affiliations (members, admins, owners, bans) of one room.
    pub max_affiliations: usize,
    /// Messages of discussion history one room keeps for newcomers, and their bytes.
    pub max_history: usize,
    pub max_history_bytes: usize,
    /// Bytes one room's archive may hold; beyond, its new messages are relayed but not
    /// archived until old ones expire or the limit is raised.
    pub max_archive_bytes_per_room: u64,
    pub max_nick_bytes: usize,
    pub max_subject_bytes: usize,
    pub max_password_bytes: usize,
    /// Longest room name and description.
    pub max_name_bytes: usize,
    /// Largest presence an occupant may show the room.
    pub max_presence_bytes: usize,
    /// Messages one occupant may send a room per minute (in bursts of as many).
    pub messages_per_minute: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: true,
            domain: String::new(),
            create: Creators::Anyone,
            admins: Vec::new(),
            max_rooms: 1000,
            max_owned_per_user: 100,
            max_joined_per_user: 100,
            max_occupants: 100,
            max_affiliations: 1000,
            max_history: 100,
            max_history_bytes: 262_144,
            max_archive_bytes_per_room: 1 << 30,
            max_nick_bytes: 64,
            max_subject_bytes: 1024,
            max_password_bytes: 128,
            max_name_bytes: 256,
            max_presence_bytes: 8192,
            messages_per_minute: 120,
        }
    }
}

impl Config {
    /// The service's domain for a server at `server`.
    pub fn domain_for(&self, server: &str) -> String {
        match self.domain.is_empty() {
            true => format!("muc.{server}"),
            false => self.domain.clone(),
        }
    }
}

/// The limits forms and rooms are checked against.
pub type Limits = Config;

/// Most mediated invitations one room remembers for declines.
const MAX_INVITED: usize = 100;
/// Most invitations in one message.
const MAX_INVITES_PER_MESSAGE: usize = 10;
/// Most sessions of one user sharing one nickname.
const MAX_SESSIONS_PER_OCCUPANT: usize = 16;
/// Most iqs between occupants waiting for their answer, service-wide.
const MAX_FORWARDED: usize = 1000;
/// How long a forwarded iq waits for its answer before the service forgets it.
const FORWARD_TIMEOUT_MS: u64 = 60_000;

/// An iq an occupant sent to another, forwarded under an id of the service's.
struct Forward {
    /// The asker's full JID and the id it used.
    asker: Jid,
    id: String,
    /// The occupant JID asked, and the session it went to.
    target: Jid,
    session: Jid,
    /// The asker's occupant JID, which the answer is addressed to.
    via: Jid,
    at: u64,
}

pub struct Muc {
    c: Config,
    domain: String,
    /// The accounts' domain.
    server: String,
    admins: Vec<Jid>,
    /// The archive's settings, which the rooms' archives share: `[modules.mam]`.
    retention_days: u32,
    paging: Paging,
    rooms: RefCell<HashMap<String, Room>>,
    /// Each joined session, to the rooms it is in.
    joined: RefCell<HashMap<Jid, BTreeSet<String>>>,
    ids: Ids,
    quota: Quota,
    forwarded: RefCell<VecDeque<(String, Forward)>>,
    next_id: Cell<u64>,
}

/// What one handler wants done once it has let go of the rooms: stanzas to route, and writes.
#[derive(Default)]
pub struct Out {
    stanzas: Vec<Stanza>,
    writes: Vec<Write>,
    trailing: Vec<Write>,
}

impl Out {
    /// A stanza from `from` (the room or an occupant JID) to one client, through the router.
    fn send(&mut self, kind: Kind, typ: Type, from: Jid, to: &Jid, el: Element) {
        self.stanzas
            .push(Stanza::new(kind, typ, from, to.clone(), Origin::Server, el));
    }

    fn flush(self, cx: &mut Cx) {
        for w in self.writes {
            cx.write(w);
        }
        for w in self.trailing {
            cx.write_trailing(w);
        }
        for st in self.stanzas {
            cx.route(st);
        }
    }
}

/// The error reply to `st` as the room sends it: `by` the room (XEP-0045 §7.2), and with the
/// MUC `<x/>` on presence, as the XEP's examples show. None for what must not be answered.
fn refusal(st: &Stanza, by: Option<&Jid>, err: &StanzaError) -> Option<Stanza> {
    if matches!(st.typ, Type::Error | Type::Result) {
        return None;
    }
    let mut reply = st.error(err);
    if let Some(by) = by {
        for c in &mut reply.el.children {
            if let crate::xml::Node::Element(e) = c
                && e.name == "error"
            {
                e.set_attr("by", by.to_string());
            }
        }
    }
    if st.kind == Kind::Presence {
        reply
            .el
            .children
            .insert(0, crate::xml::Node::Element(Element::new("x", ns::MUC)));
    }
    Some(reply)
}

/// Milliseconds since the epoch of the router's clock.
fn now_ms(cx: &Cx) -> u64 {
    super::offline::millis(cx.now())
}

impl Muc {
    pub fn new(config: &crate::config::Config) -> Muc {
        let c = config.modules.muc.clone();
        let server = config.server.domain.clone();
        Muc {
            domain: c.domain_for(&server),
            admins: c.admins.iter().filter_map(|a| Jid::parse(a).ok()).collect(),
            retention_days: config.modules.mam.retention_days,
            paging: Paging::new(config),
            server,
            c,
            rooms: RefCell::default(),
            joined: RefCell::default(),
            ids: Ids::new(&store::ROOM_ARCHIVE),
            quota: Quota::new(
                &store::ROOM_ARCHIVE,
                config.modules.muc.max_archive_bytes_per_room,
                "room ",
                "modules.muc.max_archive_bytes_per_room",
            ),
            forwarded: RefCell::default(),
            next_id: Cell::new(1),
        }
    }

    /// A fresh id for a stanza the service makes.
    fn fresh_id(&self) -> String {
        let n = self.next_id.get();
        self.next_id.set(n + 1);
        format!("muc-{n}")
    }

    /// The room's JID at this service (`name` is a localpart already).
    fn room_jid(&self, name: &str) -> Jid {
        Jid::bare_from(name, &self.domain)
    }

    fn may_create(&self, bare: &Jid) -> bool {
        match self.c.create {
            Creators::Anyone => true,
            Creators::Admins => self.admins.contains(bare),
        }
    }

    /// What is addressed to the service's own domain and no iq route took.
    fn to_service(&self, st: &Stanza) -> Result<(), StanzaError> {
        match (st.kind, st.typ) {
            (Kind::Iq, Type::Get | Type::Set) => Err(StanzaError::service_unavailable()),
            (Kind::Message, t) if t != Type::Error => Err(StanzaError::service_unavailable()),
            _ => Ok(()),
        }
    }

    /// What is addressed to a room's own JID.
    fn to_room(
        &self,
        cx: &mut Cx,
        st: &Stanza,
        name: &str,
        out: &mut Out,
    ) -> Result<(), StanzaError> {
        match st.kind {
            Kind::Presence if st.typ == Type::Available && st.el.has_child("x", ns::MUC) => {
                Err(StanzaError::with_text(
                    crate::stanza::Condition::JidMalformed,
                    "enter a room with a nickname: room@service/nickname",
                ))
            }
            Kind::Presence => Ok(()),
            Kind::Message => self.room_message(cx, st, name, out),
            Kind::Iq => self.room_iq(cx, st, name, out),
        }
    }

    /// What is addressed to an occupant JID.
    fn to_occupant(
        &self,
        cx: &mut Cx,
        st: &Stanza,
        name: &str,
        nick: &str,
        out: &mut Out,
    ) -> Result<(), StanzaError> {
        match st.kind {
            Kind::Presence => self.occupant_presence(cx, st, name, nick, out),
            Kind::Message => self.private(cx, st, name, nick, out),
            Kind::Iq => self.occupant_iq(cx, st, name, nick, out),
        }
    }

    /// Routes a result iq answering `st`, from its addressee.
    fn reply(st: &Stanza, payload: Option<Element>, out: &mut Out) {
        let el = crate::stanza::iq_result(&st.el, payload);
        out.stanzas.push(Stanza {
            kind: Kind::Iq,
            typ: Type::Result,
            from: st.target(),
            to: Some(st.from.clone()),
            origin: Origin::Server,
            el,
        });
    }
}

impl Module for Muc {
    fn name(&self) -> &'static str {
        "muc"
    }

    fn service_domain(&self) -> Option<&str> {
        Some(&self.domain)
    }

    fn disco(&self, _cx: &Cx, target: &Target, info: &mut DiscoInfo) {
        match target {
            Target::Server => info.items.push((self.domain.clone(), Some("Chatrooms"))),
            Target::Service(d) if *d == self.domain.as_str() => {
                info.identities
                    .push(("conference", "text", Some("Chatrooms")));
                info.features
                    .extend([ns::MUC, ns::MUC_STABLE_ID, ns::MUC_SELF_PING]);
            }
            _ => {}
        }
    }

    fn iq_routes(&self) -> &'static [IqRoute] {
        const {
            &[
                IqRoute::new(ns::DISCO_ITEMS, To::SERVICES),
                IqRoute::new(ns::PING, To::SERVICES),
            ]
        }
    }

    fn handle_iq(&self, _cx: &mut Cx, iq: &IqRequest) -> Result<Option<Element>, StanzaError> {
        if iq.set {
            return Err(StanzaError::new(crate::stanza::Condition::NotAllowed));
        }
        if iq.payload.ns == ns::PING {
            return Ok(None);
        }
        // The public rooms (XEP-0045 §6.3).
        let mut q = Element::new("query", ns::DISCO_ITEMS);
        if let Some(node) = iq.payload.attr("node") {
            q.set_attr("node", node);
            return Ok(Some(q));
        }
        let rooms = self.rooms.borrow();
        let mut public: Vec<&Room> = rooms
            .values()
            .filter(|r| r.config.public && !r.locked)
            .collect();
        public.sort_by(|a, b| a.name.cmp(&b.name));
        for r in public {
            let mut item =
                Element::new("item", ns::DISCO_ITEMS).with_attr("jid", r.jid.to_string());
            if !r.config.name.is_empty() {
                item.set_attr("name", r.config.name.as_str());
            }
            q.push(item);
        }
        Ok(Some(q))
    }

    fn service_stanza(&self, cx: &mut Cx, st: Stanza) -> Result<(), StanzaError> {
        let to = st.target();
        let Some(room) = to.local().map(str::to_owned) else {
            return self.to_service(&st);
        };
        let mut out = Out::default();
        let result = match to.resource() {
            None => self.to_room(cx, &st, &room, &mut out),
            Some(nick) => self.to_occupant(cx, &st, &room, nick, &mut out),
        };
        if let Err(e) = result
            && let Some(r) = refusal(&st, Some(&to.bare()), &e)
        {
            out.stanzas.push(r);
        }
        out.flush(cx);
        Ok(())
    }

    fn session_event(&self, cx: &mut Cx, session: &Jid, event: SessionEvent) {
        // A detached session is still in its rooms (it may be resumed); a new session on the
        // same full JID is not the one that joined.
        if matches!(event, SessionEvent::Closed | SessionEvent::Bound) {
            let mut out = Out::default();
            self.leave_everywhere(session, &mut out);
            out.flush(cx);
        }
    }

    fn start(&self, cx: &mut Cx) {
        let mut out = Out::default();
        self.restore(cx, &mut out);
        out.flush(cx);
        if self.retention_days > 0 {
            cx.set_timer("muc", Duration::from_secs(1), 0);
        }
    }

    /// XEP-0045 §13.2: each occupant hears, once, that it is out because the service stops.
    /// What is stored stays; nothing is written.
    fn stop(&self, cx: &mut Cx) {
        let mut out = Out::default();
        for room in self.rooms.borrow_mut().values_mut() {
            for o in std::mem::take(&mut room.occupants).into_values() {
                for s in &o.sessions {
                    let how = occupants::Leaving::default();
                    let st = occupants::gone(room, &o, &o.nick, &s.jid, true, true, &[332], &how);
                    out.stanzas.push(st);
                }
            }
            room.sessions.clear();
        }
        self.joined.borrow_mut().clear();
        out.flush(cx);
    }

    /// The rooms' archives expire as the accounts' do (`[modules.mam] retention_days`).
    fn timer(&self, cx: &mut Cx, _token: u64) {
        // The last expiry has committed by now: archives are read again, with what it freed.
        self.quota.reread();
        let keep_ms = u64::from(self.retention_days) * 86_400_000;
        cx.write(
            store::ROOM_ARCHIVE
                .expire(now_ms(cx).saturating_sub(keep_ms), super::mam::EXPIRE_BATCH),
        );
        cx.set_timer("muc", super::mam::EXPIRE_EVERY, 0);
    }

    fn account_removed(&self, user: &str) {
        let bare = Jid::bare_from(user, &self.server);
        for r in self.rooms.borrow_mut().values_mut() {
            r.affiliations.remove(&bare);
        }
    }
}
