//! Feature modules: the trait with every hook, the context handlers work in, and THE registry.
//!
//! Handlers are synchronous. They read state through [`Cx`] and record what should happen in
//! it: stanzas for sessions (`send`), stanzas for the router (`route`), writes, iq requests,
//! timers. The router then routes what was recorded, and `router::apply` makes the writes
//! durable and queues the stanzas. A module never touches a socket, spawns nothing, and holds
//! no `RefCell` borrow of its own while it calls into `Cx`.
//!
//! Hook order is the order of [`REGISTRY`]: a hook that returns [`Flow::Handled`] ends the
//! stanza's way through the modules that come after it.

pub mod auth;
pub mod blocking;
pub mod caps;
pub mod carbons;
pub mod disco;
pub mod extdisco;
pub mod fast;
pub mod http;
pub mod mam;
pub mod muc;
pub mod offline;
pub mod pep;
pub mod ping;
pub mod presence;
pub mod private;
pub mod push;
pub mod register;
pub mod roster;
#[cfg(test)]
pub mod testing;
pub mod time;
pub mod vcard;
pub mod version;

use crate::config::Config;
use crate::jid::Jid;
use crate::listener::Listener;
use crate::router::{Dest, Router};
use crate::session::{Delivery, Outbound, Session, Sessions};
use crate::stanza::{Kind, Origin, Stanza, StanzaError, StreamError, Type};
use crate::storage::{Schema, Store, Table, Write};
use crate::xml::{Element, ns};
use std::any::Any;
use std::cell::Ref;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

/// One entry of the registry: the tables a module stores in (declared even when the module is
/// disabled, so that deleting an account also clears what it stored before), and its
/// constructor, which returns None when the config disables it.
pub struct Entry {
    pub tables: &'static [&'static dyn Table],
    pub new: fn(&Config) -> Option<Box<dyn Module>>,
}

/// Every module, in hook order. Adding a module is one line here (and its config section in
/// `config.rs`); see `docs/modules.md`.
pub static REGISTRY: &[Entry] = &[
    auth::ENTRY,
    fast::ENTRY,
    roster::ENTRY,
    // Before every module that acts on stanzas: what a block stops, nothing else sees.
    blocking::ENTRY,
    // Before presence, which ends the hooks of a client's presence broadcast and of probes:
    // caps reads the one, PEP learns from both who follows an account.
    caps::ENTRY,
    pep::ENTRY,
    // Before presence, which ends the hooks of a client's presence broadcast: the photo hash
    // goes into the broadcast.
    vcard::ENTRY,
    private::ENTRY,
    register::ENTRY,
    presence::ENTRY,
    disco::ENTRY,
    ping::ENTRY,
    time::ENTRY,
    version::ENTRY,
    extdisco::ENTRY,
    http::ENTRY,
    http::upload::ENTRY,
    // Before carbons, so that a <received/> copy carries the stanza-id and a forged one is
    // gone from a <sent/> copy; before offline, which ends the hooks for what it stores.
    mam::ENTRY,
    carbons::ENTRY,
    // Before offline, which ends the hooks for what it stores: a message kept for later is
    // what a sleeping phone is woken for.
    push::ENTRY,
    offline::ENTRY,
    // A hosted service: it acts on what is addressed to its domain, after every hook.
    muc::ENTRY,
];

/// The enabled modules, in hook order.
pub fn all(config: &Config) -> Vec<Box<dyn Module>> {
    REGISTRY.iter().filter_map(|e| (e.new)(config)).collect()
}

/// Every table of the store: the accounts' own and the links' to other servers (neither is a
/// module's: both belong to the server itself), then every module's.
pub fn schema() -> Schema {
    let mut tables: Schema = vec![
        &crate::storage::accounts::USER_TO_CREDENTIALS,
        &crate::stream::s2s::parked::LOCAL_REMOTE_SEQ_TO_STANZA,
    ];
    tables.extend(REGISTRY.iter().flat_map(|e| e.tables.iter().copied()));
    tables
}

/// What a handler wants done once the stanza's routing is over.
#[derive(Default)]
pub struct Effects {
    /// Writes committed before any stanza is sent: what the sends promise depends on them.
    pub writes: Vec<Write>,
    /// Writes (the archive) whose stanzas may go out before the commit; the stanza's sender
    /// is only done with it, for XEP-0198 acknowledgements, once they are durable.
    pub trailing: Vec<Write>,
    /// Stanzas for one session each, by full JID; one delivery may go to several.
    pub sends: Vec<(Jid, Rc<Delivery>)>,
    /// Logins that end once the writes are durable, after the stanzas are queued.
    pub ends: Vec<EndLogins>,
    /// Stanzas for other servers, queued with the sends.
    pub remote: Vec<(crate::stream::s2s::Pair, crate::stream::s2s::Queued)>,
}

/// Every login of an account but one session's ends (see [`Cx::end_logins`]).
pub struct EndLogins {
    pub user: String,
    pub keep: Option<Jid>,
    pub error: StreamError,
    /// The account was deleted.
    pub removed: bool,
}

/// Ends logins once the step that asked for it is durable: a deleted account is forgotten
/// again (by the router and every module: what was read meanwhile is stale), connections
/// that authenticated before now may not bind or resume, and every bound session but `keep`
/// is closed with the error.
pub fn end_logins(router: &Router, e: EndLogins) {
    if e.removed {
        router.account_removed(&e.user);
    }
    router.sessions_mut().void_logins(&e.user);
    let queues: Vec<_> = router
        .sessions()
        .of(&e.user)
        .iter()
        .filter(|s| Some(&s.jid) != e.keep.as_ref())
        .map(|s| s.tx.clone())
        .collect();
    for tx in queues {
        // A full queue is closed instead: the connection ends either way.
        if tx.try_send(Outbound::Close(e.error.clone())).is_err() {
            tx.close();
        }
    }
}

/// The context every hook works in: reads of the server's state, and the record of what the
/// hook wants done.
pub struct Cx<'a> {
    router: &'a Router,
    pub effects: Effects,
    /// Stanzas handed to the router, routed in order once the hook returns.
    pub(crate) queue: VecDeque<Stanza>,
}

impl<'a> Cx<'a> {
    pub fn new(router: &'a Router) -> Cx<'a> {
        Cx {
            router,
            effects: Effects::default(),
            queue: VecDeque::new(),
        }
    }

    pub(crate) fn router(&self) -> &'a Router {
        self.router
    }

    /// The server's domain, for the addresses the server speaks from.
    /// Every running module, in hook order.
    pub fn modules(&self) -> &'a [Box<dyn Module>] {
        self.router.modules()
    }

    pub fn domain(&self) -> &'a str {
        &self.router.config.server.domain
    }

    pub fn now(&self) -> SystemTime {
        self.router.now()
    }

    pub fn store(&self) -> &'a Store {
        &self.router.store
    }

    pub fn sessions(&self) -> Ref<'a, Sessions> {
        self.router.sessions()
    }

    /// Changes one session (its module flags, its presence) if it is still bound.
    pub fn with_session<R>(&self, jid: &Jid, f: impl FnOnce(&mut Session) -> R) -> Option<R> {
        self.router.sessions_mut().get_mut(jid).map(f)
    }

    pub fn account_exists(&self, user: &str) -> bool {
        self.router.account_exists(user)
    }

    /// Whether stanzas may go to the other server of `domain` (federation, or one of the push
    /// services).
    pub fn federates(&self, domain: &str) -> bool {
        self.router.config.federation.allows(domain)
    }

    /// Where the router would take a stanza addressed to `jid`.
    pub fn destination<'j>(&self, jid: &'j Jid) -> Dest<'j> {
        self.router.destination(jid)
    }

    /// The running module of type `T`, for modules that build on another (presence on the
    /// roster).
    pub fn module<T: Module>(&self) -> Option<&'a T> {
        self.modules()
            .iter()
            .find_map(|m| (&**m as &dyn Any).downcast_ref::<T>())
    }

    /// Queues a stanza for one session, bypassing every hook: a reply, a push.
    pub fn send(&mut self, to: Jid, stanza: Element) {
        self.effects.sends.push((to, Delivery::new(stanza)));
    }

    /// Queues one delivery for a session; the router shares one among several sessions.
    pub(crate) fn send_delivery(&mut self, to: Jid, d: Rc<Delivery>) {
        self.effects.sends.push((to, d));
    }

    /// Hands a stanza to the router, as if its `from` had sent it: it gets the hooks of its
    /// origin and its addressee, and the delivery rules.
    pub fn route(&mut self, stanza: Stanza) {
        self.queue.push_back(stanza);
    }

    pub fn write(&mut self, w: Write) {
        self.effects.writes.push(w);
    }

    pub fn write_trailing(&mut self, w: Write) {
        self.effects.trailing.push(w);
    }

    /// Ends every login of `user` except the session `keep` once this step's writes are
    /// durable (a changed password): its bound sessions are closed with `error`, and
    /// connections that authenticated before cannot bind or resume.
    pub fn end_logins(&mut self, user: &str, keep: Option<&Jid>, error: StreamError) {
        self.effects.ends.push(EndLogins {
            user: user.to_owned(),
            keep: keep.cloned(),
            error,
            removed: false,
        });
    }

    /// Deletes the account `user` and everything every module stored for it. It stops
    /// existing for routing at once, so that nothing more is stored for it; once the deletion
    /// is durable, every module forgets it and all its logins end with `error`.
    pub fn remove_account(&mut self, user: &str, error: StreamError) {
        self.write(crate::storage::accounts::delete(user));
        self.router.account_removed(user);
        self.effects.ends.push(EndLogins {
            user: user.to_owned(),
            keep: None,
            error,
            removed: true,
        });
    }

    /// Sends an iq request from `from` (the server, an account, a service) to `to`; its result
    /// or error, or `remote-server-timeout` after `timeout`, reaches `module`'s
    /// [`Module::iq_response`] with `token`.
    pub fn send_iq(&mut self, module: &'static str, req: IqOut) {
        if let Some(st) = self.router.register_iq(module, req) {
            self.route(st);
        }
    }

    /// Calls `module`'s [`Module::timer`] with `token` once `after` has passed.
    pub fn set_timer(&mut self, module: &'static str, after: Duration, token: u64) {
        self.router.set_timer(module, after, token);
    }

    /// Whether every module lets what `from` sent reach `user`: for stanzas kept for later
    /// (offline messages, subscription requests), which meet the inbound hooks only when they
    /// arrive, while the user's wishes may have changed since.
    pub fn accepts(&self, user: &str, from: &Jid) -> bool {
        self.modules().iter().all(|m| m.accepts(self, user, from))
    }

    /// Runs every module's session hook for `event` now.
    pub fn raise(&mut self, session: &Jid, event: SessionEvent) {
        for m in self.modules() {
            m.session_event(self, session, event);
        }
    }
}

/// An iq request a module sends (see [`Cx::send_iq`]).
pub struct IqOut {
    pub from: Jid,
    pub to: Jid,
    pub set: bool,
    pub payload: Element,
    pub token: u64,
    pub timeout: Duration,
}

/// An iq get or set addressed to the server, to an account or to a hosted service, after the
/// router has checked its envelope.
pub struct IqRequest<'a> {
    /// The sender (a full JID for a local client).
    pub from: &'a Jid,
    pub target: Target<'a>,
    pub set: bool,
    pub payload: &'a Element,
}

/// What an iq, a disco query or a feature is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// The server's domain.
    Server,
    /// A local account's bare JID; `own` when the sender is that account.
    Account { user: &'a str, own: bool },
    /// A hosted service's domain.
    Service(&'a str),
}

/// Which addressees an iq namespace is answered for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct To(u8);

impl To {
    pub const SERVER: To = To(1);
    /// The sender's own account.
    pub const OWN: To = To(2);
    /// Other accounts than the sender's.
    pub const OTHERS: To = To(4);
    /// A hosted service: the module's own, or every service for a module that owns none.
    pub const SERVICES: To = To(8);
    pub const ACCOUNTS: To = To(2 | 4);
    pub const ANYONE: To = To(15);

    pub const fn and(self, other: To) -> To {
        To(self.0 | other.0)
    }

    pub fn covers(self, target: &Target) -> bool {
        let bit = match target {
            Target::Server => To::SERVER,
            Target::Account { own: true, .. } => To::OWN,
            Target::Account { own: false, .. } => To::OTHERS,
            Target::Service(_) => To::SERVICES,
        };
        self.0 & bit.0 != 0
    }
}

/// An iq payload namespace a module answers, and for whom.
#[derive(Clone, Copy)]
pub struct IqRoute {
    pub ns: &'static str,
    pub to: To,
}

impl IqRoute {
    pub const fn new(ns: &'static str, to: To) -> IqRoute {
        IqRoute { ns, to }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Handled,
}

/// A moment in a client session's life (RFC 6120 §7, XEP-0198, XEP-0352).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionEvent {
    /// A resource was bound.
    Bound,
    /// The session sent its initial presence (RFC 6121 §4.2).
    InitialPresence,
    /// XEP-0352: the client went to the background...
    Inactive,
    /// ...and came back.
    Active,
    /// XEP-0198: the socket is gone; the session waits to be resumed.
    Detached,
    /// XEP-0198: a new connection took the session over.
    Resumed,
    /// The session is over (its stanzas still queued are routed again after this).
    Closed,
    /// XEP-0115: the features the session advertises became known, or changed
    /// (`caps::Caps::features` has them).
    Caps,
}

/// The stream negotiation step a stream feature is offered at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Encrypted, before authentication.
    Authenticate,
    /// Authenticated, before a resource is bound.
    Bind,
}

/// What a disco#info or disco#items query answers, gathered from every module.
#[derive(Default)]
pub struct DiscoInfo {
    /// Who asks, for answers that depend on it (the PEP nodes a contact may see).
    pub asker: Option<Jid>,
    /// (category, type, name)
    pub identities: Vec<(&'static str, &'static str, Option<&'static str>)>,
    pub features: Vec<&'static str>,
    /// (jid, name)
    pub items: Vec<(String, Option<&'static str>)>,
    /// Items that are nodes of an entity: (jid, node).
    pub nodes: Vec<(String, String)>,
    /// XEP-0128 extensions of disco#info: data forms of type `result`.
    pub forms: Vec<Element>,
}

/// The SASL profile a client stream offers mechanisms in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// RFC 6120 §6: `<mechanisms/>`, then a stream restart.
    Sasl,
    /// XEP-0388 Extensible SASL Profile: `<authentication/>`, with inline features.
    Sasl2,
    /// XEP-0484 FAST: mechanisms that take a token the server issued instead of a password,
    /// offered inside SASL2's `<fast/>`.
    Fast,
}

/// What a stream can offer for SASL: the profile, and the channel bindings its TLS gives.
#[derive(Clone, Copy, Debug)]
pub struct SaslOffer {
    pub profile: Profile,
    /// `tls-exporter` (RFC 9266): TLS 1.3 only here.
    pub exporter: bool,
    /// `tls-server-end-point` (RFC 5929), when the certificate's algorithm defines it.
    pub endpoint: bool,
}

/// The channel binding data of a stream's TLS session.
pub use crate::stream::sasl::Bindings as ChannelBindings;

/// An authentication attempt, for the module that offers its mechanism.
pub struct SaslStart<'a> {
    pub mechanism: &'a str,
    pub profile: Profile,
    pub bindings: &'a ChannelBindings,
    /// For SASL2 and FAST: the client's `<authenticate/>` (XEP-0388), with its `<user-agent/>`
    /// and inline requests.
    pub request: Option<&'a Element>,
}

/// A SASL2 authentication that succeeded as a whole (XEP-0388 §2.6.1), for the modules that
/// answer inline requests in its `<success/>`.
pub struct Sasl2Login<'a> {
    pub user: &'a str,
    pub mechanism: &'a str,
    /// The `<user-agent id=''/>` of the client installation, when it gave a usable one.
    pub user_agent: Option<&'a str>,
    /// The client's `<authenticate/>`.
    pub request: &'a Element,
    /// What FAST mechanisms the stream offers (a token is only issued for one of them).
    pub fast: SaslOffer,
}

/// A SASL mechanism's server side, one per authentication attempt.
pub trait Mechanism {
    /// Takes the client's next message (base64-decoded).
    fn step(&mut self, cx: &Cx, input: &[u8]) -> crate::stream::sasl::Step;
    /// SASL2 only: the authentication succeeded as a whole (throttling passed, the account
    /// exists). What the mechanism records here commits before `success` is sent.
    fn succeeded(&mut self, _cx: &mut Cx, _login: &Sasl2Login, _success: &mut Element) {}
}

/// A feature module. Every method has a default, so a module fills in what it uses.
pub trait Module: Any {
    fn name(&self) -> &'static str;

    /// The domain of the hosted service this module runs, if it runs one: the router gives
    /// it every stanza addressed to that domain and to any JID at it.
    fn service_domain(&self) -> Option<&str> {
        None
    }

    /// What the module adds to disco#info and disco#items of `target`.
    fn disco(&self, _cx: &Cx, _target: &Target, _info: &mut DiscoInfo) {}
    /// The same for a node of `target` (XEP-0030 §3.2); a node nobody describes does not
    /// exist.
    fn disco_node(&self, _cx: &Cx, _target: &Target, _node: &str, _info: &mut DiscoInfo) {}

    fn iq_routes(&self) -> &'static [IqRoute] {
        &[]
    }
    /// Its iq handlers read what earlier stanzas wrote (an archive query must list the message
    /// just delivered): the router lets every submitted write commit before calling them.
    fn reads_trailing_writes(&self) -> bool {
        false
    }
    /// Returns the payload of the result (or none), or the error; the router replies.
    fn handle_iq(&self, _cx: &mut Cx, _iq: &IqRequest) -> Result<Option<Element>, StanzaError> {
        Err(StanzaError::service_unavailable())
    }
    /// The answer to an iq this module sent with [`Cx::send_iq`]: the result's payload (if
    /// any) or the error.
    fn iq_response(
        &self,
        _cx: &mut Cx,
        _token: u64,
        _response: Result<Option<&Element>, StanzaError>,
    ) {
    }

    /// Stanzas a local account sends (the client itself, or the server on its behalf), before
    /// they are routed. `Handled` means the module took care of it; an error goes back to the
    /// sender instead.
    fn message_out(&self, _cx: &mut Cx, _st: &mut Stanza) -> Result<Flow, StanzaError> {
        Ok(Flow::Continue)
    }
    fn presence_out(&self, _cx: &mut Cx, _st: &mut Stanza) -> Result<Flow, StanzaError> {
        Ok(Flow::Continue)
    }
    fn iq_out(&self, _cx: &mut Cx, _st: &mut Stanza) -> Result<Flow, StanzaError> {
        Ok(Flow::Continue)
    }

    /// A message for local account `user`, from anyone; `targets` are the sessions it will
    /// be delivered to. Changes to the stanza (a stanza-id, say) reach the recipient.
    fn message_in(
        &self,
        _cx: &mut Cx,
        _user: &str,
        _st: &mut Stanza,
        _targets: &[Jid],
    ) -> Result<Flow, StanzaError> {
        Ok(Flow::Continue)
    }
    /// Presence for local account `user` (its bare JID or one of its sessions).
    fn presence_in(
        &self,
        _cx: &mut Cx,
        _user: &str,
        _st: &mut Stanza,
    ) -> Result<Flow, StanzaError> {
        Ok(Flow::Continue)
    }
    /// An iq for local account `user`: a request to its bare JID before the server answers
    /// it, or any iq to one of its sessions before it is delivered.
    fn iq_in(&self, _cx: &mut Cx, _user: &str, _st: &mut Stanza) -> Result<Flow, StanzaError> {
        Ok(Flow::Continue)
    }

    /// Every stanza addressed to this module's hosted service (see [`Module::service_domain`])
    /// that is not an iq request to the service's domain answered by an [`IqRoute`].
    fn service_stanza(&self, _cx: &mut Cx, _st: Stanza) -> Result<(), StanzaError> {
        Err(StanzaError::service_unavailable())
    }

    fn session_event(&self, _cx: &mut Cx, _session: &Jid, _event: SessionEvent) {}

    /// Whether a stanza `from` that was kept for `user` may still reach it (see
    /// [`Cx::accepts`]).
    fn accepts(&self, _cx: &Cx, _user: &str, _from: &Jid) -> bool {
        true
    }

    /// Stream features this module offers at `stage` of a client stream.
    fn stream_features(&self, _cx: &Cx, _stage: Stage, _out: &mut Vec<Element>) {}
    /// SASL mechanisms this module offers in `offer`'s profile, in order of preference.
    fn sasl_mechanisms(&self, _offer: &SaslOffer) -> &'static [&'static str] {
        &[]
    }
    /// Starts one of the mechanisms this module offers in `start.profile`.
    fn sasl_start(&self, _start: &SaslStart) -> Option<Box<dyn Mechanism>> {
        None
    }
    /// XEP-0388: a SASL2 authentication succeeded; the module answers what the client asked
    /// for inline (a FAST token) by adding to `success`. Writes commit before it is sent.
    fn sasl2_success(&self, _cx: &mut Cx, _login: &Sasl2Login, _success: &mut Element) {}
    /// XEP-0386: what a session may have this module enable as it binds (the `var`s of Bind
    /// 2's inline features).
    fn bind2_features(&self) -> &'static [&'static str] {
        &[]
    }
    /// XEP-0386: `session` was just bound by Bind 2 with the client's `request`: enable what it
    /// asks of this module, and add any answer to `bound`.
    fn bind2(&self, _cx: &mut Cx, _session: &Jid, _request: &Element, _bound: &mut Element) {}

    /// Listening sockets this module serves (an HTTP listener, say).
    fn listeners(&self) -> Vec<Listener> {
        Vec::new()
    }
    /// The listener `name` of this module is bound to `addr` (which tells the port of an
    /// address configured with port 0).
    fn listening(&self, _name: &str, _addr: std::net::SocketAddr) {}

    /// Called once when the server starts (to set a first timer, say).
    fn start(&self, _cx: &mut Cx) {}
    /// Called once when the server shuts down, before the streams are closed: what is sent
    /// here reaches the clients ahead of their `system-shutdown`.
    fn stop(&self, _cx: &mut Cx) {}
    /// A timer set with [`Cx::set_timer`] is due.
    fn timer(&self, _cx: &mut Cx, _token: u64) {}
    /// The account was deleted (with everything stored for it): forget what is cached.
    fn account_removed(&self, _user: &str) {}

    /// An item of `owner`'s PEP `node` was published or retracted, or the node was purged or
    /// deleted: for modules that keep something in step with a node (see `pep::Pep` for what
    /// they may read).
    fn pep_changed(&self, _cx: &mut Cx, _owner: &str, _node: &str) {}
}

/// A presence stanza of `typ` from `from` to `to`, made by the server for `origin`.
pub fn presence_stanza(typ: Type, from: &Jid, to: &Jid, origin: Origin) -> Stanza {
    let mut el = Element::new("presence", ns::CLIENT);
    let t = match typ {
        Type::Available => None,
        Type::Unavailable => Some("unavailable"),
        Type::Subscribe => Some("subscribe"),
        Type::Subscribed => Some("subscribed"),
        Type::Unsubscribe => Some("unsubscribe"),
        Type::Unsubscribed => Some("unsubscribed"),
        Type::Probe => Some("probe"),
        _ => Some("error"),
    };
    if let Some(t) = t {
        el.set_attr("type", t);
    }
    Stanza::new(Kind::Presence, typ, from.clone(), to.clone(), origin, el)
}

/// An iq push (`type='set'`) from the server to one session of an account.
pub fn push_iq(to: &Jid, id: String, payload: Element) -> Element {
    Element::new("iq", ns::CLIENT)
        .with_attr("type", "set")
        .with_attr("id", id)
        .with_attr("to", to.to_string())
        .with_child(payload)
}

/// Internal storage failures as a stanza error, with one log line saying where.
pub fn internal(what: &str) -> impl Fn(crate::error::Error) -> StanzaError + '_ {
    move |e| {
        log::error!("{what}: {e}");
        StanzaError::new(crate::stanza::Condition::InternalServerError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deleting_an_account_leaves_nothing_of_it_in_any_table() {
        use crate::storage::accounts;
        let t = testing::TestRouter::new();
        let a = t.online("alice", "phone");
        let b = t.online("bob", "laptop");
        t.client(&a, "<iq type='set' id='1'><query xmlns='jabber:iq:roster'><item jid='bob@localhost'/></query></iq>");
        t.client(&a, "<presence type='subscribe' to='bob@localhost'/>");
        t.client(&a, "<iq type='set' id='2'><block xmlns='urn:xmpp:blocking'><item jid='spam.example'/></block></iq>");
        t.client(
            &a,
            "<iq type='set' id='3'><prefs xmlns='urn:xmpp:mam:2' default='always'/></iq>",
        );
        t.client(&a, "<iq type='set' id='4'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='urn:example'><item id='1'><x xmlns='urn:example'/></item></publish></pubsub></iq>");
        t.client(&a, "<presence to='r@muc.localhost/alice'><x xmlns='http://jabber.org/protocol/muc'/></presence>");
        t.client(&a, "<iq type='set' id='5' to='r@muc.localhost'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_persistentroom'><value>1</value></field></x></query></iq>");
        t.client(
            &a,
            "<message to='bob@localhost' type='chat'><body>archived</body></message>",
        );
        t.client(
            &b,
            "<message to='alice@localhost' type='chat'><body>archived</body></message>",
        );
        t.close(&a);
        t.client(
            &b,
            "<message to='alice@localhost' type='chat'><body>kept offline</body></message>",
        );
        let stored: Vec<String> = t
            .router
            .store
            .rows_of("alice")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        for table in [
            "credentials",
            "roster",
            "roster_version",
            "blocklist",
            "archive",
            "archive_by_contact",
            "archive_prefs",
            "offline",
            "pep_nodes",
            "pep_items",
            "muc_affiliations",
        ] {
            assert!(
                stored.iter().any(|n| n == table),
                "nothing of alice in {table}: {stored:?}"
            );
        }
        let bob_before = t.router.store.rows_of("bob");
        t.router
            .store
            .commit_blocking(vec![accounts::delete("alice")])
            .unwrap();
        assert_eq!(t.router.store.rows_of("alice"), vec![]);
        assert_eq!(t.router.store.rows_of("bob"), bob_before);
    }

    #[test]
    fn table_names_are_unique() {
        let mut names: Vec<&str> = schema().iter().map(|t| t.name()).collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "two tables share a name");
    }

    #[test]
    fn every_module_runs_by_default_under_its_own_name() {
        // But the STUN/TURN one, which needs a server to name.
        let modules = all(&Config::default());
        assert_eq!(modules.len(), REGISTRY.len() - 1);
        let mut config = Config::default();
        config.modules.external_services.host = "turn.example.org".into();
        config.modules.external_services.types = vec!["stun".into()];
        let modules = all(&config);
        assert_eq!(modules.len(), REGISTRY.len());
        let mut names: Vec<&str> = modules.iter().map(|m| m.name()).collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
    }
}
