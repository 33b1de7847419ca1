//! XEP-0357 Push Notifications, v0.4: a phone app whose connection sleeps registers its app
//! server (the JID of its vendor's push service, a node, and a publish-options form with the
//! secret); when something important arrives while that client is away (its session waiting
//! to be resumed, or gone), the server publishes a `urn:xmpp:push:summary` notification to the
//! app server, which wakes the phone; the app then reconnects and gets the messages.
//!
//! - Registrations are kept per account and (app server, node), as the XEP keys them, with
//!   the resource of the client that made them: that client is the one whose absence counts.
//!   They survive restarts; `disable` removes them (all of an app server's without a node).
//! - A client with a registration asks for the longer resume window `resume_timeout_secs`
//!   (through its session's flags, which c2s reads): its phone may sleep for hours. What its
//!   session cannot hold meanwhile goes to offline storage, as for any session.
//! - Important: a message with a body, an encrypted payload (OMEMO) or a call invitation
//!   (XEP-0353 `propose`); a group chat message only if it mentions the user's nickname in
//!   that room. Not chat states, receipts, markers or errors.
//! - Once per burst: at most one notification per registration every `min_interval_secs`
//!   while its client is away; the count starts again when the client is back.
//! - Privacy: a notification says how many messages arrived, and nothing else unless
//!   `include_sender` / `include_body` allow it: it passes through the app vendor's servers.
//! - The app server's `item-not-found` or `not-authorized` means the registration is void:
//!   it is dropped. Other failures are logged with their reason.
//! - Only app servers the server may reach are accepted: local ones, or those federation
//!   allows (`federation.push_services` when it is off).

use super::{
    Cx, DiscoInfo, Entry, Flow, IqOut, IqRequest, IqRoute, Module, SessionEvent, Target, To,
};
use crate::jid::Jid;
use crate::router::Dest;
use crate::stanza::{Condition, Stanza, StanzaError, Type};
use crate::storage::shapes::Map;
use crate::xml::{Element, ns, reader};
use redb::TableDefinition;
use serde::Deserialize;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

/// (localpart, "app server JID\nnode") → `<registration>` XML.
pub static USER_PUSH: Map<&str> = Map(TableDefinition::new("push"));

pub const ENTRY: Entry = Entry {
    tables: &[&USER_PUSH],
    new: |config| {
        let c = &config.modules.push;
        c.enabled.then(|| Box::new(Push::new(c)) as Box<dyn Module>)
    },
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub enabled: bool,
    /// Registrations one account may have (one per app and device).
    pub max_per_account: usize,
    /// Largest publish-options form a registration may carry, in bytes.
    pub max_form_bytes: usize,
    /// At most one notification per registration this often while its client is away.
    pub min_interval_secs: u64,
    /// Notifications name the last message's sender / carry its text.
    pub include_sender: bool,
    pub include_body: bool,
    /// How long a session with push enabled waits to be resumed after losing its connection.
    pub resume_timeout_secs: u64,
    /// Seconds an app server has to answer a notification.
    pub timeout_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: true,
            max_per_account: 8,
            max_form_bytes: 4096,
            min_interval_secs: 60,
            include_sender: false,
            include_body: false,
            resume_timeout_secs: 72 * 3600,
            timeout_secs: 30,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Registration {
    jid: Jid,
    node: String,
    /// The resource of the client that enabled it.
    resource: String,
    /// The publish-options form (the secret), as the client gave it.
    form: Option<Element>,
}

impl Registration {
    fn key(&self) -> String {
        format!("{}\n{}", self.jid, self.node)
    }

    fn to_xml(&self) -> String {
        let mut el = Element::new("registration", ns::PUSH)
            .with_attr("jid", self.jid.to_string())
            .with_attr("node", self.node.as_str())
            .with_attr("resource", self.resource.as_str());
        if let Some(f) = &self.form {
            el.push(f.clone());
        }
        el.to_xml()
    }

    fn from_xml(text: &str) -> Option<Registration> {
        let el = reader::parse_one(text)?;
        Some(Registration {
            jid: Jid::parse(el.attr("jid")?).ok()?,
            node: el.attr("node")?.to_owned(),
            resource: el.attr("resource")?.to_owned(),
            form: el.child("x", ns::DATA_FORMS).cloned(),
        })
    }
}

/// What was sent for one registration while its client is away.
#[derive(Clone, Copy, Debug, Default)]
struct Burst {
    /// Important messages since the client left.
    count: u32,
    last_push: Option<SystemTime>,
}

pub struct Push {
    config: Config,
    /// Registrations by account, read from the store on first use.
    regs: RefCell<HashMap<String, Vec<Registration>>>,
    /// Sessions that lost their connection and wait to be resumed.
    detached: RefCell<HashSet<Jid>>,
    bursts: RefCell<HashMap<(String, String), Burst>>,
    /// Notifications waiting for their answer: token → (account, registration key).
    sent: RefCell<HashMap<u64, (String, String)>>,
    next_token: Cell<u64>,
}

impl Push {
    fn new(config: &Config) -> Push {
        Push {
            config: Config { ..*config },
            regs: RefCell::default(),
            detached: RefCell::default(),
            bursts: RefCell::default(),
            sent: RefCell::default(),
            next_token: Cell::new(1),
        }
    }

    fn registrations(&self, cx: &Cx, user: &str) -> Vec<Registration> {
        if let Some(r) = self.regs.borrow().get(user) {
            return r.clone();
        }
        let rows = USER_PUSH.all(cx.store(), user).unwrap_or_else(|e| {
            log::error!("reading the push registrations of {user}: {e}");
            Vec::new()
        });
        let list: Vec<Registration> = rows
            .iter()
            .filter_map(|(_, v)| Registration::from_xml(v))
            .collect();
        self.regs.borrow_mut().insert(user.to_owned(), list.clone());
        list
    }

    fn window(&self) -> u32 {
        u32::try_from(self.config.resume_timeout_secs).unwrap_or(u32::MAX)
    }

    /// Asks for the longer resume window for `session` if a registration is its, or stops.
    fn flag(&self, cx: &Cx, session: &Jid, user: &str) {
        let resource = session.to_string();
        let resource = resource.rsplit_once('/').map_or("", |(_, r)| r);
        let has = self
            .registrations(cx, user)
            .iter()
            .any(|r| r.resource == resource);
        let window = has.then(|| self.window());
        cx.with_session(session, |s| s.flags.resume_window = window);
    }

    fn enable(&self, cx: &mut Cx, user: &str, from: &Jid, el: &Element) -> Result<(), StanzaError> {
        let jid = el
            .attr("jid")
            .and_then(|j| Jid::parse(j).ok())
            .ok_or_else(|| StanzaError::bad_request("enable needs the app server's jid"))?;
        let node = el.attr("node").filter(|n| !n.is_empty() && n.len() <= 1024);
        let node = node.ok_or_else(|| StanzaError::bad_request("enable needs a node"))?;
        let reachable = match cx.destination(&jid) {
            Dest::Remote => cx.federates(jid.domain()),
            _ => true,
        };
        if !reachable {
            log::info!(
                "{user} asked for push notifications through {jid}, which this server does not \
                 talk to; add {} to federation.push_services",
                jid.domain()
            );
            return Err(StanzaError::with_text(
                Condition::NotAllowed,
                format!(
                    "this server does not talk to {}; its admin may add it to \
                     federation.push_services",
                    jid.domain()
                ),
            ));
        }
        let form = el.child("x", ns::DATA_FORMS).cloned();
        if form
            .as_ref()
            .is_some_and(|f| f.to_xml().len() > self.config.max_form_bytes)
        {
            return Err(StanzaError::with_text(
                Condition::NotAcceptable,
                "the publish options are too large",
            ));
        }
        let reg = Registration {
            jid,
            node: node.to_owned(),
            resource: from
                .to_string()
                .rsplit_once('/')
                .map_or("", |(_, r)| r)
                .to_owned(),
            form,
        };
        let key = reg.key();
        let mut list = self.registrations(cx, user);
        list.retain(|r| r.key() != key);
        if list.len() >= self.config.max_per_account {
            return Err(StanzaError::with_text(
                Condition::ResourceConstraint,
                "this account has as many push registrations as it may",
            ));
        }
        cx.write(USER_PUSH.put(user, &key, reg.to_xml()));
        log::info!("{from} enabled push notifications through {}", reg.jid);
        list.push(reg);
        self.regs.borrow_mut().insert(user.to_owned(), list);
        self.flag(cx, from, user);
        Ok(())
    }

    fn disable(
        &self,
        cx: &mut Cx,
        user: &str,
        from: &Jid,
        el: &Element,
    ) -> Result<(), StanzaError> {
        let jid = el
            .attr("jid")
            .and_then(|j| Jid::parse(j).ok())
            .ok_or_else(|| StanzaError::bad_request("disable needs the app server's jid"))?;
        let node = el.attr("node");
        let mut list = self.registrations(cx, user);
        let (gone, kept): (Vec<_>, Vec<_>) = list
            .drain(..)
            .partition(|r| r.jid == jid && node.is_none_or(|n| n == r.node));
        for r in &gone {
            cx.write(USER_PUSH.delete(user, &r.key()));
            self.bursts.borrow_mut().remove(&(user.to_owned(), r.key()));
        }
        self.regs.borrow_mut().insert(user.to_owned(), kept);
        self.flag(cx, from, user);
        Ok(())
    }

    /// Drops a registration the app server no longer knows.
    fn drop_registration(&self, cx: &mut Cx, user: &str, key: &str) {
        let mut regs = self.regs.borrow_mut();
        if let Some(list) = regs.get_mut(user) {
            list.retain(|r| r.key() != key);
        }
        drop(regs);
        cx.write(USER_PUSH.delete(user, key));
        self.bursts
            .borrow_mut()
            .remove(&(user.to_owned(), key.to_owned()));
    }

    /// Whether the client of `reg` is away: no session of its resource, or one waiting to be
    /// resumed.
    fn away(&self, cx: &Cx, user: &str, reg: &Registration) -> bool {
        let Ok(full) = Jid::bare_from(user, cx.domain()).with_resource(&reg.resource) else {
            return true;
        };
        let bound = cx.sessions().get(&full).is_some_and(|s| !s.closing());
        !bound || self.detached.borrow().contains(&full)
    }

    fn notify(&self, cx: &mut Cx, user: &str, reg: &Registration, st: &Stanza) {
        let key = (user.to_owned(), reg.key());
        let now = cx.now();
        let interval = Duration::from_secs(self.config.min_interval_secs);
        let (count, due) = {
            let mut bursts = self.bursts.borrow_mut();
            let b = bursts.entry(key.clone()).or_default();
            b.count = b.count.saturating_add(1);
            let due = b
                .last_push
                .is_none_or(|t| now.duration_since(t).is_ok_and(|d| d >= interval));
            if due {
                b.last_push = Some(now);
            }
            (b.count, due)
        };
        if !due {
            return;
        }
        let mut summary = Element::new("x", ns::DATA_FORMS)
            .with_attr("type", "form")
            .with_child(field("FORM_TYPE", ns::PUSH_SUMMARY))
            .with_child(field("message-count", &count.to_string()));
        if self.config.include_sender {
            summary.push(field("last-message-sender", &st.from.to_string()));
        }
        if self.config.include_body
            && let Some(body) = st.el.child("body", ns::CLIENT)
        {
            summary.push(field("last-message-body", &body.text()));
        }
        let item = Element::new("item", ns::PUBSUB)
            .with_child(Element::new("notification", ns::PUSH).with_child(summary));
        let mut pubsub = Element::new("pubsub", ns::PUBSUB).with_child(
            Element::new("publish", ns::PUBSUB)
                .with_attr("node", reg.node.as_str())
                .with_child(item),
        );
        if let Some(form) = &reg.form {
            pubsub.push(Element::new("publish-options", ns::PUBSUB).with_child(form.clone()));
        }
        let token = self.next_token.get();
        self.next_token.set(token + 1);
        self.sent.borrow_mut().insert(token, key);
        log::debug!("push notification {token} for {user} to {}", reg.jid);
        cx.send_iq(
            "push",
            IqOut {
                from: Jid::bare_from(user, cx.domain()),
                to: reg.jid.clone(),
                set: true,
                payload: pubsub,
                token,
                timeout: Duration::from_secs(self.config.timeout_secs),
            },
        );
    }

    /// The client of `session` is back: its next absence starts a new burst.
    fn back(&self, cx: &Cx, session: &Jid, user: &str) {
        let resource = session.to_string();
        let resource = resource.rsplit_once('/').map_or("", |(_, r)| r).to_owned();
        let keys: Vec<String> = self
            .registrations(cx, user)
            .iter()
            .filter(|r| r.resource == resource)
            .map(Registration::key)
            .collect();
        let mut bursts = self.bursts.borrow_mut();
        for k in keys {
            bursts.remove(&(user.to_owned(), k));
        }
    }
}

fn field(var: &str, value: &str) -> Element {
    Element::new("field", ns::DATA_FORMS)
        .with_attr("var", var)
        .with_child(Element::new("value", ns::DATA_FORMS).with_text(value))
}

/// Whether a message to `user` is worth waking a phone for (see the header).
fn important(cx: &Cx, st: &Stanza) -> bool {
    let el = &st.el;
    let body = el
        .child("body", ns::CLIENT)
        .map(|b| b.text())
        .filter(|b| !b.trim().is_empty());
    match st.typ {
        Type::Chat | Type::Normal => {
            body.is_some()
                || el.elements().any(|c| {
                    c.is("encrypted", ns::OMEMO_LEGACY)
                        || c.is("encrypted", ns::OMEMO)
                        || c.is("propose", ns::JINGLE_MESSAGE)
                })
        }
        Type::Groupchat => {
            let (Some(body), Some(to)) = (body, &st.to) else {
                return false;
            };
            // The nickname this session joined the room with is in its directed presence.
            let room = st.from.bare();
            let nick = cx.sessions().get(to).and_then(|s| {
                s.directed.iter().find(|j| j.bare() == room).map(|j| {
                    j.to_string()
                        .rsplit_once('/')
                        .map_or(String::new(), |(_, r)| r.to_owned())
                })
            });
            nick.is_some_and(|n| !n.is_empty() && body.to_lowercase().contains(&n.to_lowercase()))
        }
        _ => false,
    }
}

impl Module for Push {
    fn name(&self) -> &'static str {
        "push"
    }

    fn account_removed(&self, user: &str) {
        self.regs.borrow_mut().remove(user);
        self.bursts.borrow_mut().retain(|(u, _), _| u != user);
    }

    fn disco(&self, _cx: &Cx, target: &Target, info: &mut DiscoInfo) {
        if matches!(target, Target::Account { own: true, .. }) {
            info.features.push(ns::PUSH);
        }
    }

    fn iq_routes(&self) -> &'static [IqRoute] {
        const { &[IqRoute::new(ns::PUSH, To::OWN)] }
    }

    fn handle_iq(&self, cx: &mut Cx, iq: &IqRequest) -> Result<Option<Element>, StanzaError> {
        let Target::Account { user, .. } = iq.target else {
            return Err(StanzaError::service_unavailable());
        };
        if !iq.set || iq.from.is_bare() {
            return Err(StanzaError::bad_request(
                "push is enabled and disabled by a client",
            ));
        }
        match iq.payload.name.as_str() {
            "enable" => self.enable(cx, user, iq.from, iq.payload)?,
            "disable" => self.disable(cx, user, iq.from, iq.payload)?,
            _ => return Err(StanzaError::bad_request("enable or disable")),
        }
        Ok(None)
    }

    fn iq_response(
        &self,
        cx: &mut Cx,
        token: u64,
        response: Result<Option<&Element>, StanzaError>,
    ) {
        let Some((user, key)) = self.sent.borrow_mut().remove(&token) else {
            return;
        };
        let service = key.split('\n').next().unwrap_or_default().to_owned();
        match response {
            Ok(_) => log::debug!("push notification {token} for {user} taken by {service}"),
            Err(e)
                if matches!(
                    e.condition,
                    Condition::ItemNotFound | Condition::NotAuthorized
                ) =>
            {
                log::info!(
                    "{service} refused a push notification for {user} ({}): the registration \
                     is void and dropped",
                    e.condition.as_str()
                );
                self.drop_registration(cx, &user, &key);
            }
            Err(e) => log::warn!(
                "a push notification for {user} through {service} failed: {}{}",
                e.condition.as_str(),
                e.text.map(|t| format!(" ({t})")).unwrap_or_default()
            ),
        }
    }

    fn message_in(
        &self,
        cx: &mut Cx,
        user: &str,
        st: &mut Stanza,
        _targets: &[Jid],
    ) -> Result<Flow, StanzaError> {
        let regs = self.registrations(cx, user);
        if regs.is_empty() || !important(cx, st) {
            return Ok(Flow::Continue);
        }
        let away: Vec<&Registration> = regs.iter().filter(|r| self.away(cx, user, r)).collect();
        for r in away {
            self.notify(cx, user, r, st);
        }
        Ok(Flow::Continue)
    }

    fn session_event(&self, cx: &mut Cx, session: &Jid, event: SessionEvent) {
        let Some(user) = session.local() else { return };
        match event {
            SessionEvent::Bound => {
                self.flag(cx, session, user);
                self.back(cx, session, user);
            }
            SessionEvent::Detached => {
                self.detached.borrow_mut().insert(session.clone());
            }
            SessionEvent::Resumed => {
                self.detached.borrow_mut().remove(session);
                self.back(cx, session, user);
            }
            SessionEvent::Closed => {
                self.detached.borrow_mut().remove(session);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config as ServerConfig;
    use crate::modules::testing::TestRouter;

    fn router(push: impl FnOnce(&mut Config)) -> TestRouter {
        let mut config = ServerConfig::default();
        config.federation.push_services = vec!["push.example".into()];
        push(&mut config.modules.push);
        TestRouter::with_config(config, &["alice", "bob"])
    }

    const ENABLE: &str = "<iq type='set' id='e'><enable xmlns='urn:xmpp:push:0' jid='push.example' node='n1'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field><field var='secret'><value>s3cr3t</value></field></x></enable></iq>";

    fn pushes(out: &crate::modules::testing::Out) -> Vec<&Element> {
        out.remote
            .iter()
            .filter(|(d, el)| d == "push.example" && el.name == "iq")
            .map(|(_, el)| el)
            .collect()
    }

    #[test]
    fn one_notification_per_burst_without_the_message() {
        let t = router(|_| {});
        let a = t.online("alice", "phone");
        let b = t.online("bob", "pc");
        t.client(&a, ENABLE)
            .assert_sent(&a, "<iq type='result' id='e'/>");
        assert_eq!(
            t.router.sessions().get(&a).unwrap().flags.resume_window,
            Some(72 * 3600)
        );
        // Online: nothing is pushed.
        let out = t.client(
            &b,
            "<message to='alice@localhost' type='chat'><body>hi</body></message>",
        );
        assert!(pushes(&out).is_empty());
        t.event(&a, SessionEvent::Detached);
        let out = t.client(
            &b,
            "<message to='alice@localhost' type='chat'><body>secret words</body></message>",
        );
        let p = pushes(&out);
        assert_eq!(p.len(), 1, "{}", out.show());
        let xml = p[0].to_xml();
        assert!(xml.contains("<publish node='n1'>"), "{xml}");
        assert!(xml.contains("<value>s3cr3t</value>"), "{xml}");
        assert!(
            xml.contains("<field var='message-count'><value>1</value>"),
            "{xml}"
        );
        assert!(
            !xml.contains("secret words") && !xml.contains("bob@"),
            "{xml}"
        );
        assert_eq!(p[0].attr("from"), Some("alice@localhost"));
        // Within the interval: counted, not pushed. Chat states: not even counted.
        let out = t.client(
            &b,
            "<message to='alice@localhost' type='chat'><body>2</body></message>",
        );
        assert!(pushes(&out).is_empty());
        let out = t.client(&b, "<message to='alice@localhost' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>");
        assert!(pushes(&out).is_empty());
        t.skip(Duration::from_secs(61));
        let out = t.client(&b, "<message to='alice@localhost' type='chat'><encrypted xmlns='eu.siacs.conversations.axolotl'/></message>");
        let p = pushes(&out);
        assert_eq!(p.len(), 1);
        assert!(p[0].to_xml().contains("<value>3</value>"));
        // Back: a new burst.
        t.event(&a, SessionEvent::Resumed);
        t.event(&a, SessionEvent::Detached);
        let out = t.client(
            &b,
            "<message to='alice@localhost' type='chat'><body>4</body></message>",
        );
        assert!(pushes(&out)[0].to_xml().contains("<value>1</value>"));
    }

    #[test]
    fn registrations_are_checked_kept_and_dropped() {
        let t = router(|c| {
            c.include_body = true;
            c.include_sender = true;
        });
        let a = t.online("alice", "phone");
        let b = t.online("bob", "pc");
        // An app server this server does not talk to is refused.
        let out = t.client(&a, "<iq type='set' id='x'><enable xmlns='urn:xmpp:push:0' jid='elsewhere.example' node='n'/></iq>");
        out.assert_error(&a, "x", Condition::NotAllowed);
        t.client(&a, ENABLE);
        let stored = USER_PUSH.all(&t.router.store, "alice").unwrap();
        assert_eq!(stored.len(), 1);
        // Gone entirely: pushed too, with sender and body as configured.
        t.close(&a);
        let out = t.client(
            &b,
            "<message to='alice@localhost' type='chat'><body>hi</body></message>",
        );
        let p = pushes(&out);
        assert!(p[0].to_xml().contains("<value>hi</value>"));
        assert!(p[0].to_xml().contains("bob@localhost/pc"));
        // The app server says the node is gone: the registration is dropped.
        let id = p[0].attr("id").unwrap().to_owned();
        t.remote(&format!("<iq type='error' id='{id}' from='push.example' to='alice@localhost'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"));
        assert!(USER_PUSH.all(&t.router.store, "alice").unwrap().is_empty());
        t.skip(Duration::from_secs(120));
        let out = t.client(
            &b,
            "<message to='alice@localhost' type='chat'><body>again</body></message>",
        );
        assert!(pushes(&out).is_empty());
        // Disabled: nothing more.
        let a = t.online("alice", "phone");
        t.client(&a, ENABLE);
        t.client(
            &a,
            "<iq type='set' id='d'><disable xmlns='urn:xmpp:push:0' jid='push.example'/></iq>",
        )
        .assert_sent(&a, "<iq type='result' id='d'/>");
        assert_eq!(
            t.router.sessions().get(&a).unwrap().flags.resume_window,
            None
        );
        t.close(&a);
        let out = t.client(
            &b,
            "<message to='alice@localhost' type='chat'><body>x</body></message>",
        );
        assert!(pushes(&out).is_empty());
        // Own account's disco says push is there.
        let a = t.online("alice", "phone");
        let out = t.client(&a, "<iq type='get' id='i' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
        out.assert_sent(&a, "<iq type='result' id='i'><query xmlns='http://jabber.org/protocol/disco#info'><feature var='urn:xmpp:push:0'/></query></iq>");
    }
}
