//! XEP-0313 Message Archive Management, v1.0 (`urn:xmpp:mam:2` with `#extended`): every
//! archivable one-to-one message a user sends or receives is kept in that user's archive,
//! the recipient's copy carries its archive id as a XEP-0359 stanza-id, and the user queries
//! the archive with a data form and XEP-0059 paging, sets §6 preferences, and reads the
//! archive's metadata. Old messages expire after `retention_days` from the server tick.
//!
//! Ids are the microsecond at which a message was archived, bumped to stay strictly
//! increasing server-wide (and across restarts through the store's high-water mark). So id
//! order is time order, a message's archive time is its id / 1000 ms, and every filter is one
//! id range: the newest page and one far back are each a single B-tree seek. The table shape,
//! the ids and the query's execution are shared with the chat rooms' archives (`store.rs`,
//! `serve.rs`); what is the accounts' own is here.
//!
//! Bounds: each account's archive holds at most `max_bytes_per_user` (a full one archives
//! nothing new and keeps its history; see `serve::Quota`), and one page of results at most
//! `max` items, half of the client's queue in bytes, and `serve::ROWS_PER_RESULT` rows looked
//! at per result it may hold (a full JID in `with` filters the contact's rows one by one).
//!
//! The archive write trails the delivery (see `Cx::write_trailing`): for the moment of one
//! commit a recipient may hold a stanza-id that a query does not list yet. Paging from such an
//! id works (it counts as known); TODO: list uncommitted entries from memory if clients that
//! query at once after a message turn out to miss it.
//!
//! Messages with contacts on other servers are archived as local ones are: what a user sends
//! there when its domain is reachable (see `federates`), what comes from there once the other
//! server authenticated its domain.
//!
//! Left out: pubsub archives, RSM `index` and `count`, `flip-page`, the `<store/>`
//! hint on non-message payloads beyond body, markers and OMEMO. A MAM-using session does not get offline
//! messages (see `offline.rs`). With `with`, a query scans the id range and filters; an index
//! by contact would make per-contact history on huge archives faster (TODO if it shows).

pub mod prefs;
pub mod query;
pub mod serve;
pub mod store;

use super::roster::Roster;
use super::{Cx, DiscoInfo, Entry, Flow, IqRequest, IqRoute, Module, Target, To};
use crate::jid::Jid;
use crate::router::Dest;
use crate::stanza::{Origin, Stanza, StanzaError, stanza_type};
use crate::xml::{Element, ns};
use prefs::{Prefs, Verdict};
use serde::Deserialize;
use serve::{Ask, Ids, Paging, Quota};
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;
use store::USER_ARCHIVE;

pub const ENTRY: Entry = Entry {
    tables: &[
        &store::USER_ID_TO_ARCHIVED,
        &store::USER_WITH_ID_TO_NOTHING,
        &store::USER_TO_ARCHIVE_BYTES,
        &store::USER_TO_ARCHIVE_PREFS,
    ],
    new: |config| {
        let c = &config.modules.mam;
        c.enabled
            .then(|| Box::new(Mam::new(config)) as Box<dyn Module>)
    },
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub enabled: bool,
    /// Archived messages older than this many days are deleted; 0 keeps them forever.
    pub retention_days: u32,
    /// Results per page when a query does not say.
    pub default_page: usize,
    /// Most results per page, and most ids one query may name.
    pub max_page: usize,
    /// Bytes one account's archive may hold; beyond, its new messages are not archived (they
    /// are still delivered, or kept offline) until old ones expire or the limit is raised.
    pub max_bytes_per_user: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: true,
            retention_days: 0,
            default_page: 50,
            max_page: 250,
            max_bytes_per_user: 1 << 30,
        }
    }
}

/// How often expiry runs, and how many rows one run deletes at most: a first expiry over a
/// big archive then takes many short commits instead of one that stalls everybody's.
pub const EXPIRE_EVERY: Duration = Duration::from_secs(60);
pub const EXPIRE_BATCH: usize = 10_000;

pub struct Mam {
    retention_days: u32,
    paging: Paging,
    ids: Ids,
    quota: Quota,
    /// Preferences read so far, by localpart: every archived message consults them. Bounded
    /// by the number of accounts; the module writes every change through it.
    prefs: RefCell<HashMap<String, Prefs>>,
}

impl Mam {
    pub fn new(config: &crate::config::Config) -> Mam {
        let c = &config.modules.mam;
        Mam {
            retention_days: c.retention_days,
            paging: Paging::new(config),
            ids: Ids::new(&USER_ARCHIVE),
            quota: Quota::new(
                &USER_ARCHIVE,
                c.max_bytes_per_user,
                "",
                "modules.mam.max_bytes_per_user",
            ),
            prefs: RefCell::default(),
        }
    }

    /// Queues `msg` for `user`'s archive; the write trails the delivery (see `Cx`). None if
    /// the archive is full (see `serve::Quota`): the account's owner keeps the history they
    /// have.
    fn archive(&self, cx: &mut Cx, user: &str, with: &Jid, msg: &Element) -> Option<u64> {
        let (with, xml) = (with.to_string(), msg.to_xml());
        if !self.quota.take(cx, user, &with, &xml) {
            return None;
        }
        let id = self.ids.next(cx);
        cx.write_trailing(USER_ARCHIVE.append(user, id, &with, xml));
        Some(id)
    }

    /// `user`'s preferences, from the cache or the store.
    fn prefs_of(&self, cx: &Cx, user: &str) -> Prefs {
        if let Some(p) = self.prefs.borrow().get(user) {
            return p.clone();
        }
        let prefs = match cx.store().archive_prefs(user) {
            Ok(p) => p.map(|p| Prefs::decode(&p)).unwrap_or_default(),
            Err(e) => {
                log::error!("reading the archive preferences of {user}: {e}");
                return Prefs::default();
            }
        };
        self.prefs
            .borrow_mut()
            .insert(user.to_owned(), prefs.clone());
        prefs
    }

    /// Whether `user`'s preferences let a message with `with` into the archive.
    fn wanted(&self, cx: &Cx, user: &str, with: &Jid) -> bool {
        let verdict = self.prefs_of(cx, user).verdict(with);
        match verdict {
            Verdict::Archive => true,
            Verdict::Skip => false,
            Verdict::IfInRoster => cx
                .module::<Roster>()
                .is_some_and(|r| r.item(cx, user, &with.bare()).is_some_and(|i| i.visible)),
        }
    }

    fn query(
        &self,
        cx: &mut Cx,
        iq: &IqRequest,
        user: &str,
    ) -> Result<Option<Element>, StanzaError> {
        let q = self.paging.parse(iq.payload)?;
        cx.with_session(iq.from, |s| s.flags.mam_queried = true);
        let with = q.with.clone();
        let contact = with.as_ref().map(|w| w.bare().to_string());
        let keep = move |w: &str| match (&with, Jid::parse(w)) {
            (None, _) => true,
            (Some(f), Ok(w)) if f.is_bare() => w.bare() == *f,
            (Some(f), Ok(w)) => w == *f,
            (Some(_), Err(_)) => false,
        };
        let ask = Ask {
            ids: &self.ids,
            paging: &self.paging,
            owner: user,
            by: &iq.from.bare(),
            to: iq.from,
        };
        let fin = serve::run(cx, &ask, &q, contact.as_deref(), &keep, &|_, _| {})?;
        Ok(Some(fin))
    }

    fn prefs(
        &self,
        cx: &mut Cx,
        iq: &IqRequest,
        user: &str,
    ) -> Result<Option<Element>, StanzaError> {
        if !iq.set {
            return Ok(Some(self.prefs_of(cx, user).to_element()));
        }
        let prefs = Prefs::parse(iq.payload)?;
        cx.write(store::put_prefs(user, prefs.encode()));
        let answer = prefs.to_element();
        self.prefs.borrow_mut().insert(user.to_owned(), prefs);
        Ok(Some(answer))
    }

    fn metadata(&self, cx: &Cx, user: &str) -> Result<Option<Element>, StanzaError> {
        serve::metadata(cx, &USER_ARCHIVE, user).map(Some)
    }
}

/// Whether a message belongs in an archive (XEP-0313 §5.1.1 with XEP-0334 hints): one-to-one
/// chat or normal messages with content a user would want back. Pure chat states are not.
pub fn archivable(msg: &Element) -> bool {
    matches!(stanza_type(msg), "chat" | "normal") && worth_keeping(msg)
}

/// Whether a message of any type has content a user would want back (a chat room's archive
/// asks this of groupchat messages): the XEP-0334 hints, then a body, a marker, OMEMO.
pub fn worth_keeping(msg: &Element) -> bool {
    if msg.has_child("no-store", ns::HINTS) || msg.has_child("no-permanent-store", ns::HINTS) {
        return false;
    }
    msg.has_child("store", ns::HINTS)
        || msg.has_child("body", ns::CLIENT)
        || msg
            .elements()
            .any(|c| c.ns == ns::CHAT_MARKERS || c.ns == ns::OMEMO_LEGACY)
}

/// Removes stanza-ids claiming to come from an archive of this server (XEP-0359 §3.1): only
/// we say which of our archives holds a message.
fn strip_our_stanza_ids(cx: &Cx, msg: &mut Element) {
    msg.children.retain(|n| match n {
        crate::xml::Node::Element(e) if e.is("stanza-id", ns::SID) => e
            .attr("by")
            .and_then(|b| Jid::parse(b).ok())
            .is_none_or(|b| cx.destination(&b) == Dest::Remote),
        _ => true,
    });
}

impl Module for Mam {
    fn name(&self) -> &'static str {
        "mam"
    }

    /// XEP-0386 §3.2: a Bind 2 session is told where the archive stands and catches up from
    /// it, so offline storage does not send it what the archive holds (see `offline`).
    fn bind2(&self, cx: &mut Cx, session: &Jid, _request: &Element, bound: &mut Element) {
        let Some(user) = session.local() else { return };
        cx.with_session(session, |s| s.flags.mam_queried = true);
        match self.metadata(cx, user) {
            Ok(Some(m)) => bound.push(m),
            Ok(None) => {}
            Err(_) => log::warn!("{session}: no archive metadata for Bind 2"),
        }
    }

    fn reads_trailing_writes(&self) -> bool {
        true
    }

    fn account_removed(&self, user: &str) {
        self.prefs.borrow_mut().remove(user);
        self.quota.forget(user);
    }
    /// XEP-0313 §6.4: archives are discovered on the account; the server lists them too for
    /// clients that look there.
    fn disco(&self, _cx: &Cx, target: &Target, info: &mut DiscoInfo) {
        if matches!(target, Target::Server | Target::Account { own: true, .. }) {
            info.features.extend([ns::MAM, ns::MAM_EXTENDED, ns::SID]);
        }
    }
    fn iq_routes(&self) -> &'static [IqRoute] {
        const { &[IqRoute::new(ns::MAM, To::OWN)] }
    }
    fn handle_iq(&self, cx: &mut Cx, iq: &IqRequest) -> Result<Option<Element>, StanzaError> {
        let user = iq.from.local().unwrap_or_default().to_owned();
        match (iq.payload.name.as_str(), iq.set) {
            ("query", false) => Ok(Some(query::form())),
            ("query", true) => self.query(cx, iq, &user),
            ("prefs", _) => self.prefs(cx, iq, &user),
            ("metadata", false) => self.metadata(cx, &user),
            _ => Err(StanzaError::bad_request(
                "expected a MAM query, prefs or metadata",
            )),
        }
    }

    fn message_out(&self, cx: &mut Cx, st: &mut Stanza) -> Result<Flow, StanzaError> {
        if st.origin != Origin::Client {
            return Ok(Flow::Continue);
        }
        strip_our_stanza_ids(cx, &mut st.el);
        let (Some(user), Some(to)) = (st.from.local(), st.to.as_ref()) else {
            return Ok(Flow::Continue);
        };
        if !archivable(&st.el) {
            return Ok(Flow::Continue);
        }
        // Only what the router will deliver or hand to another server: not to unknown
        // accounts, domains federation does not reach, or the user's own account, whose
        // inbound copy is archived in `message_in`. A message another server then fails to
        // take stays archived, as sent: its sender gets the error too.
        let deliverable = match cx.destination(to) {
            Dest::Account(l) | Dest::Session(l) => l != user && cx.account_exists(l),
            Dest::Remote => cx.federates(to.domain()),
            _ => false,
        };
        if deliverable && self.wanted(cx, user, to) {
            self.archive(cx, user, to, &st.el);
        }
        Ok(Flow::Continue)
    }

    fn message_in(
        &self,
        cx: &mut Cx,
        user: &str,
        st: &mut Stanza,
        _targets: &[Jid],
    ) -> Result<Flow, StanzaError> {
        if st.origin == Origin::Remote {
            // Local senders' were removed in `message_out`; one from another server would
            // otherwise pass for this archive's, and even stop the message being archived.
            strip_our_stanza_ids(cx, &mut st.el);
        }
        if !archivable(&st.el) {
            return Ok(Flow::Continue);
        }
        let bare = Jid::bare_from(user, cx.domain()).to_string();
        // A message routed again (its session went away) was archived the first time.
        let ours = st
            .el
            .elements()
            .any(|e| e.is("stanza-id", ns::SID) && e.attr("by") == Some(bare.as_str()));
        if ours {
            return Ok(Flow::Continue);
        }
        let from = st.from.clone();
        if !self.wanted(cx, user, &from) {
            return Ok(Flow::Continue);
        }
        // A message the full archive did not take carries no archive id.
        if let Some(id) = self.archive(cx, user, &from, &st.el) {
            st.el.push(
                Element::new("stanza-id", ns::SID)
                    .with_attr("by", bare)
                    .with_attr("id", id.to_string()),
            );
        }
        Ok(Flow::Continue)
    }

    fn start(&self, cx: &mut Cx) {
        if self.retention_days > 0 {
            // Soon after the start, then every EXPIRE_EVERY.
            cx.set_timer("mam", Duration::from_secs(1), 0);
        }
    }

    fn timer(&self, cx: &mut Cx, _token: u64) {
        // The last expiry has committed by now: archives are read again, with what it freed.
        self.quota.reread();
        let now_ms = super::offline::millis(cx.now());
        let keep_ms = u64::from(self.retention_days) * 86_400_000;
        cx.write(USER_ARCHIVE.expire(now_ms.saturating_sub(keep_ms), EXPIRE_BATCH));
        cx.set_timer("mam", EXPIRE_EVERY, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::stanza::Condition;
    use crate::stanza::test_message as msg;

    #[test]
    fn what_is_archived() {
        let body = ("body", ns::CLIENT);
        // (type, children, archived?, why)
        type Row<'a> = (Option<&'a str>, &'a [(&'a str, &'a str)], bool, &'a str);
        let rows: &[Row] = &[
            (Some("chat"), &[body], true, "chat with a body"),
            (None, &[body], true, "normal with a body"),
            (
                Some("chat"),
                &[("composing", ns::CHATSTATES)],
                false,
                "pure chat state",
            ),
            (Some("chat"), &[], false, "empty chat"),
            (
                Some("chat"),
                &[("displayed", ns::CHAT_MARKERS)],
                true,
                "marker",
            ),
            (
                Some("chat"),
                &[("encrypted", ns::OMEMO_LEGACY)],
                true,
                "OMEMO",
            ),
            (Some("chat"), &[("store", ns::HINTS)], true, "store hint"),
            (
                Some("chat"),
                &[body, ("no-store", ns::HINTS)],
                false,
                "no-store",
            ),
            (
                Some("chat"),
                &[body, ("no-permanent-store", ns::HINTS)],
                false,
                "no-perm",
            ),
            (Some("headline"), &[body], false, "headline"),
            (Some("groupchat"), &[body], false, "groupchat"),
            (Some("error"), &[body], false, "error"),
        ];
        for (kind, children, want, why) in rows {
            assert_eq!(archivable(&msg(*kind, children)), *want, "{why}");
        }
    }

    #[test]
    fn forged_stanza_ids_are_removed() {
        let sid = |by: &str| {
            Element::new("stanza-id", ns::SID)
                .with_attr("by", by)
                .with_attr("id", "1")
        };
        let mut m = msg(Some("chat"), &[("body", ns::CLIENT)])
            .with_child(sid("bob@localhost"))
            .with_child(sid("localhost"))
            .with_child(sid("room@muc.example.org"));
        let t = crate::modules::testing::TestRouter::new();
        strip_our_stanza_ids(&Cx::new(&t.router), &mut m);
        let left: Vec<_> = m
            .elements()
            .filter(|e| e.is("stanza-id", ns::SID))
            .filter_map(|e| e.attr("by"))
            .collect();
        assert_eq!(left, vec!["room@muc.example.org"]);
        assert!(m.has_child("body", ns::CLIENT));
    }

    #[test]
    fn old_messages_expire_on_the_timer() {
        use crate::modules::testing::TestRouter;
        let mut cfg = crate::config::Config::default();
        cfg.modules.mam.retention_days = 1;
        let t = TestRouter::with_config(cfg, &["alice", "bob"]);
        let a = t.online("alice", "phone");
        t.client(
            &a,
            "<message to='bob@localhost' type='chat'><body>old</body></message>",
        );
        let archived = |u: &str| {
            t.router
                .store
                .rows_of(u)
                .into_iter()
                .find(|(n, _)| n == "archive")
                .map(|r| r.1)
        };
        assert_eq!((archived("alice"), archived("bob")), (Some(1), Some(1)));
        // A day and a bit later the expiry timer finds it too old.
        t.skip(Duration::from_secs(90_000));
        t.client(
            &a,
            "<message to='bob@localhost' type='chat'><body>new</body></message>",
        );
        t.advance(Duration::from_secs(2));
        assert_eq!((archived("alice"), archived("bob")), (Some(1), Some(1)));
        let newest = USER_ARCHIVE
            .page(
                &t.router.store,
                "alice",
                None,
                0,
                u64::MAX,
                true,
                1,
                &|_| true,
            )
            .unwrap();
        assert!(newest.items[0].xml.contains("new"));
        // And it comes back every EXPIRE_EVERY, not before.
        t.skip(Duration::from_secs(90_000));
        t.advance(Duration::from_secs(30));
        assert_eq!(archived("alice"), Some(1));
        t.advance(EXPIRE_EVERY + Duration::from_secs(2));
        assert_eq!(archived("alice"), None);
    }

    #[test]
    fn a_query_looks_at_a_bounded_number_of_rows() {
        use crate::modules::testing::TestRouter;
        let mut cfg = crate::config::Config::default();
        cfg.modules.mam.max_page = 2;
        cfg.modules.mam.default_page = 2;
        let t = TestRouter::with_config(cfg, &["alice", "carol"]);
        let r1 = t.online("carol", "r1");
        let r2 = t.online("carol", "r2");
        let a = t.bind("alice", "phone");
        let send = |from: &Jid, n: usize| {
            for i in 0..n {
                t.client(
                    from,
                    &format!(
                        "<message to='alice@localhost' type='chat'><body>{i}</body></message>"
                    ),
                );
            }
        };
        // 250 from one resource, then 3 from the other: 200 rows may be looked at per query.
        send(&r1, 250);
        send(&r2, 3);
        let with = |jid: &str, set: &str| {
            format!(
                "<iq type='set' id='q'><query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' \
                 type='submit'><field var='FORM_TYPE'><value>urn:xmpp:mam:2</value></field>\
                 <field var='with'><value>{jid}</value></field></x>\
                 <set xmlns='http://jabber.org/protocol/rsm'>{set}</set></query></iq>"
            )
        };
        let out = t.client(&a, &with("carol@localhost/r2", "<max>2</max>"));
        out.assert_error(&a, "q", Condition::ResourceConstraint);
        // From the other end, or by bare JID, the rows match at once.
        let out = t.client(&a, &with("carol@localhost/r2", "<max>2</max><before/>"));
        assert_eq!(out.to(&a).len(), 3, "{}", out.show());
        let out = t.client(&a, &with("carol@localhost", "<max>2</max>"));
        assert_eq!(out.to(&a).len(), 3, "{}", out.show());
    }

    /// A message to a contact on another server is archived when it leaves for that server,
    /// not when federation does not reach it; one from there is archived with its stanza-id.
    #[test]
    fn messages_with_remote_contacts_are_archived() {
        use crate::modules::testing::TestRouter;
        let rows = |t: &TestRouter| {
            let page = USER_ARCHIVE.page(
                &t.router.store,
                "alice",
                None,
                0,
                u64::MAX,
                false,
                10,
                &|_| true,
            );
            page.unwrap()
                .items
                .iter()
                .map(|i| i.xml.clone())
                .collect::<Vec<_>>()
        };
        let mut cfg = crate::config::Config::default();
        cfg.federation.enabled = true;
        let t = TestRouter::with_config(cfg, &["alice"]);
        let a = t.online("alice", "phone");
        let out = t.client(
            &a,
            "<message to='pat@b.example' type='chat' id='m1'><body>out</body></message>",
        );
        assert_eq!(out.remote.len(), 1, "{}", out.show());
        // With a stanza-id in the name of alice's archive, which another server cannot give.
        let out = t.remote(
            "<message from='pat@b.example/r' to='alice@localhost/phone' type='chat'>\
             <body>in</body><stanza-id xmlns='urn:xmpp:sid:0' by='alice@localhost' id='1'/>\
             </message>",
        );
        let got = out.only_to(&a);
        let sids: Vec<_> = got
            .elements()
            .filter(|e| e.is("stanza-id", ns::SID))
            .collect();
        assert_eq!(sids.len(), 1, "{got:?}");
        assert_eq!(sids[0].attr("by"), Some("alice@localhost"));
        assert_ne!(sids[0].attr("id"), Some("1"));
        let archived = rows(&t);
        assert_eq!(archived.len(), 2, "{archived:?}");
        assert!(archived[0].contains(">out<") && archived[0].contains("pat@b.example"));
        assert!(archived[1].contains(">in<"));

        // Federation off: the message goes back as an error and is not archived.
        let t = TestRouter::with_users(&["alice"]);
        let a = t.online("alice", "phone");
        let out = t.client(
            &a,
            "<message to='pat@b.example' type='chat' id='m2'><body>out</body></message>",
        );
        out.assert_error(&a, "m2", Condition::RemoteServerNotFound);
        assert!(rows(&t).is_empty());
    }

    #[test]
    fn config_defaults() {
        let c: Config = toml::from_str("retention_days = 30").unwrap();
        assert_eq!((c.enabled, c.retention_days, c.max_page), (true, 30, 250));
        assert!(toml::from_str::<Config>("pages = 3").is_err());
    }
}
