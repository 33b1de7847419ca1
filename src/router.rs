//! The router: the one place that decides where a stanza goes (RFC 6120 §8, RFC 6121 §8), the
//! state that decision reads (accounts, sessions, hosted services, modules), iq requests the
//! server sends and their answers, module timers, and `apply`, the one place where a stanza's
//! consequences leave memory.
//!
//! A stanza's way: if a local account sent it (its client, or the server on its behalf), the
//! modules' outbound hooks (`message_out`, `presence_out`, `iq_out`); then the destination of
//! its addressee ([`Router::destination`], the only comparison of a JID with the served
//! domains in the code); for a local account, the inbound hooks (`message_in`, `presence_in`,
//! `iq_in`) and then the delivery rules below. Any hook may end the way with `Handled`, or
//! with an error, which goes back to the sender (never for an error or an iq result).
//!
//! Delivery for a local domain (RFC 6121 §8.5), by addressee and stanza kind:
//!
//! | to                     | message                                  | iq (get/set)            |
//! |------------------------|------------------------------------------|-------------------------|
//! | none / own bare JID    | treated as to own bare JID               | account handlers        |
//! | server domain          | ignored                                  | server handlers         |
//! | bare JID, no account   | service-unavailable (errors dropped)     | service-unavailable     |
//! | bare JID               | chat/normal: highest non-negative        | account handlers for    |
//! |                        | priority resources, else offline;        | that account            |
//! |                        | headline: all non-negative, else dropped;|                         |
//! |                        | groupchat: service-unavailable           |                         |
//! | full JID, connected    | that resource                            | that resource           |
//! | full JID, gone         | chat/normal as to the bare JID; headline | service-unavailable     |
//! |                        | dropped; groupchat: service-unavailable  |                         |
//! | hosted service         | the service's module                     | the service's module    |
//! | another domain         | its server, if federation allows it (else remote-server-not-found)  |
//!
//! Stanzas from other servers (origin `Remote`, their `from` checked against the domain the
//! connection authenticated) take the same way, without outbound hooks; one addressed to yet
//! another domain is refused: this server relays nothing between others.
//! Presence to a bare JID goes to its available sessions, to a full JID to that session, once
//! the presence module has taken what is its own (subscriptions, probes). iq results and
//! errors go to a connected full JID, or to the module that sent the request.
//!
//! A session that is closing (its queue overflowed, or its connection is ending) counts as
//! gone: nothing more is queued for it. What a session could not deliver (refused by its full
//! queue, or left in its queue, its XEP-0198 unacknowledged queue or its held stanzas when it
//! ends) is undelivered, and takes the way of a message to a full JID that is gone: chat and
//! normal messages as if sent to the bare JID (another resource, else offline storage, else
//! an error to the sender), an iq request an error to its sender, the rest nothing.
//!
//! Exactly once, by one rule: a stanza that goes to several sessions (a message to the bare
//! JID reaches every resource of the highest priority) is one shared [`Delivery`], and it is
//! undelivered only when the session that gives up its copy holds the last one and no session
//! delivered it (wrote it to a stream without XEP-0198, or had it acknowledged). Copies that
//! other sessions still hold may yet be delivered; the last to fail routes it again, once. So
//! a message to thirty resources that all die ends up stored offline once, not thirty times
//! (nor, as routing each failed copy to every remaining resource would, ever more often).

use crate::config::Config;
use crate::error::Error;
use crate::jid::Jid;
use crate::modules::{self, Cx, Effects, Flow, IqOut, IqRequest, Module, Target};
use crate::session::{Delivery, Outbound, Sessions};
use crate::stanza::{Condition, Kind, Origin, Stanza, StanzaError, Type, iq_result};
use crate::storage::{Store, Ticket};
use crate::stream::s2s::{Pair, Queued, parked};
use crate::xml::{Element, ns};
use smol::Timer;
use smol::future::FutureExt;
use std::cell::{Cell, Ref, RefCell, RefMut};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

/// Where a JID points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest<'j> {
    /// The server's domain (with or without a resource).
    Server,
    /// A local account's bare JID (the account may not exist).
    Account(&'j str),
    /// A full JID at the server's domain: the session of this account's localpart.
    Session(&'j str),
    /// A hosted service's domain or an address at it: the module at this index.
    Service(usize),
    /// Another domain.
    Remote,
}

/// Most stanzas one routing step may produce (a presence broadcast to a large roster, and the
/// answers it draws): beyond it the rest is dropped and logged rather than keep the one thread.
const MAX_ROUTED: usize = 100_000;
/// Most iq requests waiting for an answer at once.
const MAX_PENDING_IQS: usize = 10_000;

pub struct Router {
    pub config: Config,
    pub store: Store,
    sessions: RefCell<Sessions>,
    /// The accounts (localparts), kept in memory: routing asks for every stanza.
    accounts: RefCell<HashSet<String>>,
    modules: Vec<Box<dyn Module>>,
    /// Hosted services' domains, to the index of their module.
    services: HashMap<String, usize>,
    pending: RefCell<HashMap<String, PendingIq>>,
    /// Queues to other servers (see `stream::s2s`).
    pub s2s: crate::stream::s2s::Links,
    timers: RefCell<BinaryHeap<Reverse<TimerEntry>>>,
    /// Wakes the timer task when a timer earlier than all others is set.
    timer_wake: (smol::channel::Sender<()>, smol::channel::Receiver<()>),
    next_id: Cell<u64>,
    /// A fixed clock for tests; the system clock otherwise.
    #[cfg(test)]
    pub clock: Cell<Option<SystemTime>>,
}

struct PendingIq {
    module: usize,
    token: u64,
    /// Who the request went to: only an answer from there counts.
    to: Jid,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct TimerEntry {
    at: Instant,
    seq: u64,
    what: TimerWhat,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerWhat {
    Module { module: usize, token: u64 },
    IqTimeout(String),
}

impl Router {
    /// The router with the modules the config enables.
    pub fn new(config: Config, store: Store) -> Result<Router, Error> {
        let modules = modules::all(&config);
        Router::with_modules(config, store, modules)
    }

    pub fn with_modules(
        config: Config,
        store: Store,
        modules: Vec<Box<dyn Module>>,
    ) -> Result<Router, Error> {
        let mut services = HashMap::new();
        for (i, m) in modules.iter().enumerate() {
            if let Some(d) = m.service_domain()
                && (d == config.server.domain || services.insert(d.to_owned(), i).is_some())
            {
                return Err(Error::Config(format!(
                    "the domain {d} of the {} service is already served; give it a domain \
                     of its own",
                    m.name()
                )));
            }
        }
        let accounts = store.users()?.into_iter().collect();
        // A new row never takes the key of one a crash or a stop left.
        let s2s = crate::stream::s2s::Links::default();
        s2s.seqs_after(parked::last_seq(&store)?);
        Ok(Router {
            config,
            store,
            sessions: RefCell::default(),
            accounts: RefCell::new(accounts),
            modules,
            services,
            pending: RefCell::default(),
            s2s,
            timers: RefCell::default(),
            timer_wake: smol::channel::bounded(1),
            next_id: Cell::new(1),
            #[cfg(test)]
            clock: Cell::new(None),
        })
    }

    pub fn modules(&self) -> &[Box<dyn Module>] {
        &self.modules
    }

    pub fn sessions(&self) -> Ref<'_, Sessions> {
        self.sessions.borrow()
    }

    pub fn sessions_mut(&self) -> RefMut<'_, Sessions> {
        self.sessions.borrow_mut()
    }

    pub fn now(&self) -> SystemTime {
        #[cfg(test)]
        if let Some(t) = self.clock.get() {
            return t;
        }
        SystemTime::now()
    }

    pub fn account_exists(&self, user: &str) -> bool {
        self.accounts.borrow().contains(user)
    }

    pub fn account_added(&self, user: &str) {
        self.accounts.borrow_mut().insert(user.to_owned());
    }

    /// The account was deleted from the store: forget it here and in every module.
    pub fn account_removed(&self, user: &str) {
        self.accounts.borrow_mut().remove(user);
        for m in &self.modules {
            m.account_removed(user);
        }
    }

    /// Where a stanza addressed to `jid` goes.
    pub fn destination<'j>(&self, jid: &'j Jid) -> Dest<'j> {
        if let Some(d) = local_destination(&self.config.server.domain, jid) {
            return d;
        }
        match self.services.get(jid.domain()) {
            Some(&i) => Dest::Service(i),
            None => Dest::Remote,
        }
    }

    /// Whether a stream may be opened to `domain` for client accounts.
    pub fn serves_accounts(&self, domain: &str) -> bool {
        domain == self.config.server.domain
    }

    /// Records an iq request and returns the stanza to route; when too many are waiting,
    /// the request's error instead (`resource-constraint`), which reaches the module as any
    /// answer does.
    pub(crate) fn register_iq(&self, module: &'static str, req: IqOut) -> Option<Stanza> {
        let Some(index) = self.modules.iter().position(|m| m.name() == module) else {
            log::error!("an iq request from the unknown module {module}");
            return None;
        };
        let n = self.next_id.get();
        self.next_id.set(n + 1);
        let id = format!("hearth-{n}");
        let el = Element::new("iq", ns::CLIENT)
            .with_attr("type", if req.set { "set" } else { "get" })
            .with_attr("id", id.as_str())
            .with_child(req.payload);
        let typ = if req.set { Type::Set } else { Type::Get };
        let st = Stanza::new(Kind::Iq, typ, req.from, req.to.clone(), Origin::Server, el);
        let full = self.pending.borrow().len() >= MAX_PENDING_IQS;
        let pending = PendingIq {
            module: index,
            token: req.token,
            to: req.to,
        };
        self.pending.borrow_mut().insert(id.clone(), pending);
        if full {
            log::warn!("too many iq requests waiting; refusing one of {module}");
            return Some(st.error(&StanzaError::new(Condition::ResourceConstraint)));
        }
        self.push_timer(Instant::now() + req.timeout, TimerWhat::IqTimeout(id));
        Some(st)
    }

    pub(crate) fn set_timer(&self, module: &'static str, after: Duration, token: u64) {
        match self.modules.iter().position(|m| m.name() == module) {
            Some(index) => self.push_timer(
                Instant::now() + after,
                TimerWhat::Module {
                    module: index,
                    token,
                },
            ),
            None => log::error!("a timer for the unknown module {module}"),
        }
    }

    fn push_timer(&self, at: Instant, what: TimerWhat) {
        let seq = self.next_id.get();
        self.next_id.set(seq + 1);
        let mut timers = self.timers.borrow_mut();
        let earliest = timers.peek().is_none_or(|Reverse(t)| at < t.at);
        timers.push(Reverse(TimerEntry { at, seq, what }));
        if earliest {
            let _ = self.timer_wake.0.try_send(());
        }
    }

    /// Removes and returns the timers due at `now`, earliest first.
    fn take_due(&self, now: Instant) -> Vec<TimerWhat> {
        let mut timers = self.timers.borrow_mut();
        let mut due = Vec::new();
        while timers.peek().is_some_and(|Reverse(t)| t.at <= now) {
            if let Some(Reverse(t)) = timers.pop() {
                due.push(t.what);
            }
        }
        due
    }

    /// Takes the answer to a request this server sent, if `st` is one.
    fn take_response(&self, st: &Stanza) -> Option<PendingIq> {
        let id = st.id()?;
        let mut pending = self.pending.borrow_mut();
        if pending.get(id).is_some_and(|p| p.to == st.from) {
            return pending.remove(id);
        }
        None
    }
}

/// Where `jid` points if it is at the accounts' domain `domain`.
fn local_destination<'j>(domain: &str, jid: &'j Jid) -> Option<Dest<'j>> {
    (jid.domain() == domain).then(|| match jid.local() {
        None => Dest::Server,
        Some(u) if jid.is_bare() => Dest::Account(u),
        Some(u) => Dest::Session(u),
    })
}

/// The localpart of `jid` if it is the bare JID of an account (existing or not) at `domain`,
/// for the command line, which has no router.
pub fn account_of<'j>(domain: &str, jid: &'j Jid) -> Option<&'j str> {
    match local_destination(domain, jid) {
        Some(Dest::Account(u)) => Some(u),
        _ => None,
    }
}

/// Handles one stanza from the bound session `from`, whose `from` attribute is already stamped.
/// Returns the ticket of writes (the archive) that trail the stanza's delivery: the stanza is
/// durable, and may be acknowledged to its sender, once the ticket resolves.
pub async fn from_client(router: &Router, from: &Jid, el: Element) -> Option<Ticket> {
    let st = match Stanza::parse(el, from.clone(), Origin::Client) {
        Ok(st) => st,
        Err(rejected) => {
            if let Some(e) = &rejected.error
                && rejected.el.attr("type") != Some("error")
            {
                let reply = crate::stanza::error_reply(&rejected.el, e);
                deliver(router, from, Delivery::new(reply));
            }
            return None;
        }
    };
    if needs_settled_store(router, &st)
        && let Err(e) = router.store.barrier().await
    {
        log::error!("waiting for the store: {e}");
    }
    // What an error reply needs, should the commit fail: not the whole stanza.
    let bounce = (st.kind != Kind::Presence && st.typ != Type::Error).then(|| st.el.shallow());
    let effects = {
        let mut cx = Cx::new(router);
        cx.route(st);
        finish(cx)
    };
    match apply_trailing(router, effects).await {
        Ok(ticket) => ticket,
        Err(e) => {
            log::error!("stanza from {from} not processed: {e}");
            if let Some(el) = bounce {
                let err = StanzaError::new(Condition::InternalServerError);
                let reply = crate::stanza::error_reply(&el, &err);
                deliver(router, from, Delivery::new(reply));
            }
            None
        }
    }
}

/// Handles one stanza another server sent on behalf of `from`, whose domain the connection
/// authenticated. Returns the ticket of trailing writes, as [`from_client`] does.
pub async fn from_remote(router: &Router, from: Jid, el: Element) -> Option<Ticket> {
    let effects = {
        let mut cx = Cx::new(router);
        remote_stanza(&mut cx, el, from);
        finish(cx)
    };
    match apply_trailing(router, effects).await {
        Ok(ticket) => ticket,
        Err(e) => {
            log::error!("a stanza from another server not processed: {e}");
            None
        }
    }
}

/// Reads the envelope of a stanza from another server and routes it; an envelope RFC 6120
/// forbids is answered with its error, as a client's is.
pub fn remote_stanza(cx: &mut Cx, el: Element, from: Jid) {
    match Stanza::parse(el, from.clone(), Origin::Remote) {
        Ok(st) => cx.route(st),
        Err(rejected) => {
            if let Some(e) = &rejected.error
                && rejected.el.attr("type") != Some("error")
                && let Some(to) = rejected.el.attr("to").and_then(|t| Jid::parse(t).ok())
            {
                let mut reply = crate::stanza::error_reply(&rejected.el, e);
                reply.set_attr("from", to.to_string());
                let kind = match rejected.el.name.as_str() {
                    "presence" => Kind::Presence,
                    "iq" => Kind::Iq,
                    _ => Kind::Message,
                };
                cx.route(Stanza::new(
                    kind,
                    Type::Error,
                    to,
                    from,
                    Origin::Server,
                    reply,
                ));
            }
        }
    }
}

/// Stanzas that could not go to another server, each with its pair and why: their senders
/// get the error (what RFC 6120 would not answer, nothing), and their rows of `s2s_waiting`
/// go.
pub async fn bounce_remote(router: &Router, undelivered: Vec<(Pair, Queued, Condition)>) {
    run(router, "bouncing stanzas for another server", |cx| {
        let mut rows: HashMap<Pair, Vec<u64>> = HashMap::new();
        for (pair, q, _) in &undelivered {
            if q.kept {
                rows.entry(pair.clone()).or_default().push(q.seq);
            }
        }
        for (pair, seqs) in rows {
            if let Some(w) = parked::forget(&pair, seqs) {
                cx.write_trailing(w);
            }
        }
        for (_, Queued { el, .. }, condition) in undelivered {
            let Some(from) = el.attr("from").and_then(|f| Jid::parse(f).ok()) else {
                continue;
            };
            let Ok(st) = Stanza::parse(el, from, Origin::Server) else {
                continue;
            };
            let answered = match st.kind {
                Kind::Presence => st.typ == Type::Available || st.typ.is_subscription(),
                _ => true,
            };
            if answered {
                bounce(cx, &st, &StanzaError::new(condition));
            }
        }
    })
    .await;
}

/// Stanzas whose handling reads what earlier stanzas wrote without waiting for the disk:
/// initial presence (offline messages stored a moment ago must be delivered now, not at the
/// next login) and iq queries of modules that ask for it (the archive).
fn needs_settled_store(router: &Router, st: &Stanza) -> bool {
    match (st.kind, st.typ) {
        (Kind::Presence, Type::Available) => {
            st.to.is_none()
                && router
                    .sessions()
                    .get(&st.from)
                    .is_some_and(|s| !s.available)
        }
        (Kind::Iq, Type::Get | Type::Set) => st.payload().is_some_and(|payload| {
            router.modules.iter().any(|m| {
                m.reads_trailing_writes() && m.iq_routes().iter().any(|r| r.ns == payload.ns)
            })
        }),
        _ => false,
    }
}

/// Routes what the hooks handed to the router, in order, then returns what is left to do.
pub fn finish(mut cx: Cx) -> Effects {
    let mut n = 0;
    while let Some(st) = cx.queue.pop_front() {
        n += 1;
        if n > MAX_ROUTED {
            log::warn!(
                "dropping {} stanzas: one step routed more than {MAX_ROUTED}",
                cx.queue.len() + 1
            );
            cx.queue.clear();
            break;
        }
        route(&mut cx, st);
    }
    cx.effects
}

/// Runs `f` in a fresh context, routes what it produced and applies the effects.
pub async fn run(router: &Router, what: &str, f: impl FnOnce(&mut Cx)) {
    let effects = {
        let mut cx = Cx::new(router);
        f(&mut cx);
        finish(cx)
    };
    if let Err(e) = apply(router, effects).await {
        log::error!("{what}: {e}");
    }
}

/// A session's life-cycle event through every module's hook (see `modules::SessionEvent`).
pub async fn session_event(router: &Router, jid: &Jid, event: modules::SessionEvent) {
    run(router, "a session event", |cx| cx.raise(jid, event)).await;
}

/// One stanza's way through the hooks and to its destination; an error goes back to the
/// sender.
fn route(cx: &mut Cx, mut st: Stanza) {
    if let Err(e) = try_route(cx, &mut st) {
        bounce(cx, &st, &e);
    }
}

fn bounce(cx: &mut Cx, st: &Stanza, e: &StanzaError) {
    if st.typ == Type::Error || st.typ == Type::Result {
        return;
    }
    let reply = st.error(e);
    match st.origin {
        Origin::Client => cx.send(st.from.clone(), reply.el),
        _ => cx.route(reply),
    }
}

fn try_route(cx: &mut Cx, st: &mut Stanza) -> Result<(), StanzaError> {
    let router = cx.router();
    let from_account = st.origin != Origin::Server
        && matches!(router.destination(&st.from), Dest::Account(u) | Dest::Session(u) if router.account_exists(u));
    if from_account {
        for m in router.modules() {
            let flow = match st.kind {
                Kind::Message => m.message_out(cx, st)?,
                Kind::Presence => m.presence_out(cx, st)?,
                Kind::Iq => m.iq_out(cx, st)?,
            };
            if flow == Flow::Handled {
                return Ok(());
            }
        }
    }
    let to = st.target();
    match router.destination(&to) {
        Dest::Remote => remote(cx, st, &to),
        Dest::Service(i) => {
            if let Some(p) = response(router, st) {
                answer(cx, p, st);
                return Ok(());
            }
            if st.is_request()
                && to.local().is_none()
                && to.is_bare()
                && let Some(m) = iq_module(router, st, &Target::Service(to.domain()), Some(i))
            {
                return handle_iq(cx, m, st, &to, Target::Service(to.domain()));
            }
            let owned = std::mem::replace(st, placeholder(st));
            router.modules()[i].service_stanza(cx, owned)
        }
        Dest::Server => to_server(cx, st, &to),
        Dest::Account(user) | Dest::Session(user) => to_account(cx, st, user, &to),
    }
}

/// A stanza without its payload, for the moment its element has moved on: enough to answer
/// it with an error.
fn placeholder(st: &Stanza) -> Stanza {
    Stanza {
        kind: st.kind,
        typ: st.typ,
        from: st.from.clone(),
        to: st.to.clone(),
        origin: st.origin,
        el: st.el.shallow(),
    }
}

/// Another domain: its server, if federation allows it (or it is a push service), once this
/// step's writes are durable; otherwise what expects an answer gets `remote-server-not-found`.
/// Nothing is relayed from one other server to another. A message or a presence subscription
/// gets its row of `s2s_waiting` in this step's commit, which its sender's acknowledgement
/// waits for: a crash does not lose it (see `stream::s2s::parked`).
fn remote(cx: &mut Cx, st: &mut Stanza, to: &Jid) -> Result<(), StanzaError> {
    let answered = match st.kind {
        Kind::Presence => st.typ == Type::Available || st.typ.is_subscription(),
        _ => true,
    };
    let router = cx.router();
    let ours = matches!(
        router.destination(&st.from.domain_jid()),
        Dest::Server | Dest::Service(_)
    );
    if st.origin == Origin::Remote || !ours || !router.config.federation.allows(to.domain()) {
        return match answered {
            true => Err(StanzaError::new(Condition::RemoteServerNotFound)),
            false => Ok(()),
        };
    }
    let shallow = st.el.shallow();
    let mut el = std::mem::replace(&mut st.el, shallow);
    el.set_attr("from", st.from.to_string());
    el.set_attr("to", to.to_string());
    let pair = Pair {
        local: st.from.domain().to_owned(),
        remote: to.domain().to_owned(),
    };
    let seq = router.s2s.next_seq();
    let kept = parked::kept(st);
    if kept {
        // Durable with the rest of the step's writes, before its sender is told it was
        // handled; its stanza need not wait for it (see `parked.rs`).
        cx.write_trailing(parked::row(&pair, seq, &el));
    }
    cx.effects.remote.push((pair, Queued { el, seq, kept }));
    Ok(())
}

fn response(router: &Router, st: &Stanza) -> Option<PendingIq> {
    match (st.kind, st.typ) {
        (Kind::Iq, Type::Result | Type::Error) => router.take_response(st),
        _ => None,
    }
}

/// Delivers an answer to the module that asked.
fn answer(cx: &mut Cx, p: PendingIq, st: &Stanza) {
    let outcome = match st.typ {
        Type::Result => Ok(st.payload()),
        _ => Err(StanzaError::from_reply(&st.el)),
    };
    let m = &cx.router().modules()[p.module];
    m.iq_response(cx, p.token, outcome);
}

fn to_server(cx: &mut Cx, st: &mut Stanza, to: &Jid) -> Result<(), StanzaError> {
    let router = cx.router();
    match st.kind {
        Kind::Iq if st.is_request() => {
            if !to.is_bare() {
                return Err(StanzaError::service_unavailable());
            }
            match iq_module(router, st, &Target::Server, None) {
                Some(m) => handle_iq(cx, m, st, to, Target::Server),
                None => Err(StanzaError::service_unavailable()),
            }
        }
        Kind::Iq => {
            if let Some(p) = response(router, st) {
                answer(cx, p, st);
            }
            Ok(())
        }
        // Nothing is addressed to the server itself by messages or presence.
        _ => Ok(()),
    }
}

fn to_account(cx: &mut Cx, st: &mut Stanza, user: &str, to: &Jid) -> Result<(), StanzaError> {
    let router = cx.router();
    if !router.account_exists(user) {
        return match (st.kind, st.typ) {
            (_, Type::Error) | (Kind::Iq, Type::Result) => Ok(()),
            // RFC 6121 §3.1.3: a request to an account that does not exist is refused.
            (Kind::Presence, Type::Subscribe) => {
                cx.route(modules::presence_stanza(
                    Type::Unsubscribed,
                    &to.bare(),
                    &st.from.bare(),
                    Origin::Server,
                ));
                Ok(())
            }
            (Kind::Presence, _) => Ok(()),
            _ => Err(StanzaError::service_unavailable()),
        };
    }
    match st.kind {
        Kind::Message => message_to_account(cx, st, user, to),
        Kind::Presence => {
            for m in router.modules() {
                if m.presence_in(cx, user, st)? == Flow::Handled {
                    return Ok(());
                }
            }
            if to.is_bare() {
                let targets: Vec<Jid> = router
                    .sessions()
                    .available(user)
                    .map(|s| s.jid.clone())
                    .collect();
                send_all(cx, st, targets);
            } else if router.sessions().get(to).is_some() {
                send_all(cx, st, vec![to.clone()]);
            }
            Ok(())
        }
        Kind::Iq => iq_to_account(cx, st, user, to),
    }
}

/// Queues the stanza for every target: one shared delivery (see the header).
fn send_all(cx: &mut Cx, st: &mut Stanza, targets: Vec<Jid>) {
    if targets.is_empty() {
        return;
    }
    let el = std::mem::replace(&mut st.el, Element::new("", ""));
    let d = Delivery::new(el);
    for t in targets {
        cx.send_delivery(t, d.clone());
    }
}

fn message_to_account(
    cx: &mut Cx,
    st: &mut Stanza,
    user: &str,
    to: &Jid,
) -> Result<(), StanzaError> {
    let router = cx.router();
    let full_target = !to.is_bare() && router.sessions().get(to).is_some_and(|s| !s.closing());
    let targets = match st.typ {
        _ if full_target => vec![to.clone()],
        Type::Error => return Ok(()),
        Type::Groupchat => return Err(StanzaError::service_unavailable()),
        Type::Headline if !to.is_bare() => return Ok(()),
        Type::Headline => router
            .sessions()
            .available(user)
            .filter(|s| s.priority >= 0 && !s.closing())
            .map(|s| s.jid.clone())
            .collect(),
        _ => router.sessions().message_targets(user),
    };
    for m in router.modules() {
        if m.message_in(cx, user, st, &targets)? == Flow::Handled {
            return Ok(());
        }
    }
    send_all(cx, st, targets);
    Ok(())
}

fn iq_to_account(cx: &mut Cx, st: &mut Stanza, user: &str, to: &Jid) -> Result<(), StanzaError> {
    let router = cx.router();
    if !to.is_bare() {
        if router.sessions().get(to).is_none() {
            return match st.is_request() {
                true => Err(StanzaError::service_unavailable()),
                false => Ok(()),
            };
        }
        for m in router.modules() {
            if m.iq_in(cx, user, st)? == Flow::Handled {
                return Ok(());
            }
        }
        send_all(cx, st, vec![to.clone()]);
        return Ok(());
    }
    if !st.is_request() {
        if let Some(p) = response(router, st) {
            answer(cx, p, st);
        }
        return Ok(());
    }
    for m in router.modules() {
        if m.iq_in(cx, user, st)? == Flow::Handled {
            return Ok(());
        }
    }
    let target = Target::Account {
        user,
        own: st.from.bare() == *to,
    };
    match iq_module(router, st, &target, None) {
        Some(m) => handle_iq(cx, m, st, to, target),
        None => Err(StanzaError::service_unavailable()),
    }
}

/// The module that answers `st`'s payload namespace for `target`. For a hosted service, its
/// own module first, then modules that serve every service and own none (disco).
fn iq_module<'r>(
    router: &'r Router,
    st: &Stanza,
    target: &Target,
    owner: Option<usize>,
) -> Option<&'r dyn Module> {
    let payload = st.payload()?;
    let answers = |m: &dyn Module| {
        m.iq_routes()
            .iter()
            .any(|r| r.ns == payload.ns && r.to.covers(target))
    };
    if let Some(i) = owner {
        let m = &*router.modules()[i];
        if answers(m) {
            return Some(m);
        }
    }
    router
        .modules()
        .iter()
        .map(|m| &**m)
        .filter(|m| owner.is_none() || m.service_domain().is_none())
        .find(|m| answers(*m))
}

fn handle_iq(
    cx: &mut Cx,
    module: &dyn Module,
    st: &Stanza,
    to: &Jid,
    target: Target,
) -> Result<(), StanzaError> {
    let Some(payload) = st.payload() else {
        return Err(StanzaError::bad_request(
            "an iq get or set has exactly one child",
        ));
    };
    let req = IqRequest {
        from: &st.from,
        target,
        set: st.typ == Type::Set,
        payload,
    };
    let answer = module.handle_iq(cx, &req)?;
    let mut reply = iq_result(&st.el, answer);
    if st.to.is_none() {
        reply.remove_attr("from");
    }
    match st.origin {
        Origin::Client => cx.send(st.from.clone(), reply),
        _ => cx.route(Stanza {
            kind: Kind::Iq,
            typ: Type::Result,
            from: to.clone(),
            to: Some(st.from.clone()),
            origin: Origin::Server,
            el: reply,
        }),
    }
    Ok(())
}

/// Stanzas that sessions could not deliver, each with the session it was for (see the
/// header): chat and normal messages are routed again as if sent to that session's bare JID,
/// iq requests get `service-unavailable`. Carbon copies and archive results are copies of
/// messages that exist elsewhere: routing them again would store duplicates, so they go
/// nowhere, like the rest.
pub async fn reroute_unsent(router: &Router, unsent: Vec<(Jid, Element)>) {
    run(router, "keeping the undelivered stanzas", |cx| {
        for (owner, el) in unsent {
            let Some(sender) = el.attr("from").and_then(|f| Jid::parse(f).ok()) else {
                continue;
            };
            let Ok(mut st) = Stanza::parse(el, sender, Origin::Server) else {
                continue;
            };
            match (st.kind, st.typ) {
                (Kind::Message, Type::Chat | Type::Normal) if !is_copy(&st.el) => {
                    st.set_to(owner.bare());
                    cx.route(st);
                }
                (Kind::Iq, Type::Get | Type::Set) => {
                    cx.route(st.error(&StanzaError::service_unavailable()));
                }
                _ => {}
            }
        }
    })
    .await;
}

/// A message that wraps another (XEP-0280 carbons, XEP-0313 results).
fn is_copy(msg: &Element) -> bool {
    msg.elements().any(|c| {
        c.is("sent", ns::CARBONS) || c.is("received", ns::CARBONS) || c.is("result", ns::MAM)
    })
}

/// Calls each module's `start` hook once, when the server starts.
pub async fn start(router: &Router) {
    run(router, "starting the modules", start_modules).await;
}

pub fn start_modules(cx: &mut Cx) {
    let router = cx.router();
    for m in router.modules() {
        m.start(cx);
    }
}

/// Fires timers when they are due: modules' own, and the timeouts of iq requests.
pub async fn run_timers(router: &Router) {
    loop {
        let next = router.timers.borrow().peek().map(|Reverse(t)| t.at);
        let wake = async {
            let _ = router.timer_wake.1.recv().await;
        };
        match next {
            Some(at) => {
                async {
                    Timer::at(at).await;
                }
                .or(wake)
                .await
            }
            None => wake.await,
        }
        let due = router.take_due(Instant::now());
        if !due.is_empty() {
            run(router, "a timer", |cx| fire(cx, due)).await;
        }
    }
}

/// Fires every timer due at `now`.
#[cfg(test)]
pub fn fire_due(cx: &mut Cx, now: Instant) {
    let due = cx.router().take_due(now);
    fire(cx, due);
}

fn fire(cx: &mut Cx, due: Vec<TimerWhat>) {
    for what in due {
        fire_one(cx, what);
    }
}

fn fire_one(cx: &mut Cx, what: TimerWhat) {
    let router = cx.router();
    match what {
        TimerWhat::Module { module, token } => router.modules()[module].timer(cx, token),
        TimerWhat::IqTimeout(id) => {
            let p = router.pending.borrow_mut().remove(&id);
            if let Some(p) = p {
                let err = StanzaError::new(Condition::RemoteServerTimeout);
                router.modules()[p.module].iq_response(cx, p.token, Err(err));
            }
        }
    }
}

/// [`apply_trailing`], then waits for the trailing writes too.
pub async fn apply(router: &Router, effects: Effects) -> Result<(), Error> {
    if let Some(t) = apply_trailing(router, effects).await? {
        Store::wait(t).await?;
    }
    Ok(())
}

/// Makes the writes durable, then queues the stanzas. Whatever the server promises on the
/// strength of a write (a roster result, "stored for later") is only sent once that write has
/// been committed. Writes that only trail the stanzas (the archive) are submitted without
/// waiting: their ticket is returned. No `RefCell` borrow is held across the await.
pub async fn apply_trailing(router: &Router, effects: Effects) -> Result<Option<Ticket>, Error> {
    let Effects {
        mut writes,
        trailing,
        sends,
        ends,
        remote,
    } = effects;
    let mut ticket = None;
    if writes.is_empty() && !trailing.is_empty() {
        ticket = Some(router.store.submit(trailing)?);
    } else {
        writes.extend(trailing);
    }
    router.store.commit(writes).await?;
    let mut unsent = Vec::new();
    for (to, d) in sends {
        if let Some(d) = deliver(router, &to, d)
            && let Some(el) = Delivery::undelivered(d)
        {
            unsent.push((to, el));
        }
    }
    if !unsent.is_empty() {
        // Each round closes a session or stores what it routes, so this ends.
        Box::pin(reroute_unsent(router, unsent)).await;
    }
    let federation = &router.config.federation;
    let mut refused = Vec::new();
    for (pair, q) in remote {
        if let Err((q, condition)) = router.s2s.send(
            pair.clone(),
            q,
            federation.queue_bytes,
            federation.max_outgoing,
        ) {
            refused.push((pair, q, condition));
        }
    }
    if !refused.is_empty() {
        // Errors go to local senders only, so this ends.
        Box::pin(bounce_remote(router, refused)).await;
    }
    for e in ends {
        modules::end_logins(router, e);
    }
    Ok(ticket)
}

/// Queues a stanza for a session; gives it back when the session is gone or closing. A session
/// whose queue is full (by stanzas or by bytes) is closed: it cannot keep up. One stanza larger
/// than the whole byte limit still goes to a session with an empty queue: a client must be able
/// to receive its roster, however large.
pub fn deliver(router: &Router, to: &Jid, d: Rc<Delivery>) -> Option<Rc<Delivery>> {
    let sessions = router.sessions();
    let Some(s) = sessions.get(to).filter(|s| !s.closing()) else {
        log::debug!("a stanza for {to}, which is gone");
        return Some(d);
    };
    let limits = &router.config.limits;
    let queued = s.queued.get() as usize;
    let waiting = s.tx.len();
    let errors = s.errors.get() as usize;
    let error = d.is_error();
    if (!error && waiting.saturating_sub(errors) >= limits.queue_len)
        || (waiting > 0 && queued + d.size > limits.queue_bytes)
    {
        log::warn!(
            "{to} is not reading ({waiting} stanzas, {queued} bytes waiting); disconnecting it"
        );
        s.tx.close();
        return Some(d);
    }
    let size = d.size;
    match s.tx.try_send(Outbound::Stanza(d)) {
        Ok(()) => {
            s.queued
                .set(u32::try_from(queued + size).unwrap_or(u32::MAX));
            if error {
                s.errors.set(s.errors.get().saturating_add(1));
            }
            None
        }
        Err(Outbound::Stanza(d)) => Some(d),
        Err(Outbound::Close(_)) => None,
    }
}

/// Whether `el` is an iq carrying `payload_name` in `payload_ns` (c2s answers bind and session itself).
pub fn is_iq_for(el: &Element, payload_name: &str, payload_ns: &str) -> bool {
    el.is("iq", ns::CLIENT) && el.elements().any(|c| c.is(payload_name, payload_ns))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::testing::TestRouter;
    use crate::modules::{DiscoInfo, IqRoute, To};
    use std::cell::RefCell;

    /// A hosted service at svc.localhost: it echoes messages and answers `urn:test` iqs.
    struct Echo;

    impl Module for Echo {
        fn name(&self) -> &'static str {
            "echo"
        }
        fn service_domain(&self) -> Option<&str> {
            Some("svc.localhost")
        }
        fn disco(&self, _cx: &Cx, target: &Target, info: &mut DiscoInfo) {
            match target {
                Target::Server => info.items.push(("svc.localhost".into(), Some("Echo"))),
                Target::Service(_) => {
                    info.identities.push(("conference", "text", Some("Echo")));
                    info.features.push("urn:test");
                }
                Target::Account { .. } => {}
            }
        }
        fn iq_routes(&self) -> &'static [IqRoute] {
            const { &[IqRoute::new("urn:test", To::SERVICES)] }
        }
        fn handle_iq(&self, _cx: &mut Cx, _iq: &IqRequest) -> Result<Option<Element>, StanzaError> {
            Ok(Some(Element::new("ok", "urn:test")))
        }
        fn service_stanza(&self, cx: &mut Cx, st: Stanza) -> Result<(), StanzaError> {
            if st.kind != Kind::Message {
                return Err(StanzaError::service_unavailable());
            }
            let to = st.target();
            let mut echo = st.el.clone();
            echo.remove_attr("id");
            cx.route(Stanza::new(
                Kind::Message,
                st.typ,
                to,
                st.from,
                Origin::Server,
                echo,
            ));
            Ok(())
        }
    }

    /// Sends iq requests when told to, and keeps what comes back and which timers fired.
    #[derive(Default)]
    struct Asker {
        answers: RefCell<Vec<(u64, Result<String, Condition>)>>,
        fired: RefCell<Vec<u64>>,
    }

    impl Module for Asker {
        fn name(&self) -> &'static str {
            "asker"
        }
        fn iq_response(
            &self,
            _cx: &mut Cx,
            token: u64,
            response: Result<Option<&Element>, StanzaError>,
        ) {
            let r = response
                .map(|p| p.map(|p| p.name.clone()).unwrap_or_default())
                .map_err(|e| e.condition);
            self.answers.borrow_mut().push((token, r));
        }
        fn timer(&self, _cx: &mut Cx, token: u64) {
            self.fired.borrow_mut().push(token);
        }
    }

    fn ask(t: &TestRouter, to: &Jid, token: u64) -> Out {
        t.step(|cx| {
            cx.send_iq(
                "asker",
                IqOut {
                    from: Jid::parse("localhost").unwrap(),
                    to: to.clone(),
                    set: false,
                    payload: Element::new("query", ns::DISCO_INFO),
                    token,
                    timeout: Duration::from_secs(30),
                },
            )
        })
    }

    use crate::modules::testing::Out;

    #[test]
    fn a_hosted_service_gets_what_is_addressed_to_it() {
        let t = TestRouter::with_extra(Config::default(), &["alice"], vec![Box::new(Echo)]);
        let a = t.online("alice", "phone");
        let out = t.client(
            &a,
            "<message to='room@svc.localhost/nick' type='groupchat'><body>hi</body></message>",
        );
        out.assert_sent(
            &a,
            "<message from='room@svc.localhost/nick' type='groupchat'><body>hi</body></message>",
        );
        let out = t.client(
            &a,
            "<iq type='get' id='1' to='svc.localhost'><q xmlns='urn:test'/></iq>",
        );
        out.assert_sent(
            &a,
            "<iq type='result' id='1' from='svc.localhost'><ok xmlns='urn:test'/></iq>",
        );
        // Disco of the service comes from its module; the server lists it as an item.
        let out = t.client(&a, "<iq type='get' id='2' to='svc.localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
        out.assert_sent(&a, "<iq type='result' id='2'><query xmlns='http://jabber.org/protocol/disco#info'><identity category='conference' type='text'/><feature var='urn:test'/><feature var='http://jabber.org/protocol/disco#info'/></query></iq>");
        let out = t.client(&a, "<iq type='get' id='3' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>");
        out.assert_sent(&a, "<iq type='result' id='3'><query xmlns='http://jabber.org/protocol/disco#items'><item jid='svc.localhost' name='Echo'/></query></iq>");
        // What the service does not take is refused by it; the server's own iqs stay its own.
        let out = t.client(
            &a,
            "<iq type='get' id='4' to='room@svc.localhost'><q xmlns='urn:test'/></iq>",
        );
        out.assert_error(&a, "4", Condition::ServiceUnavailable);
        let out = t.client(
            &a,
            "<iq type='get' id='5' to='svc.localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
        );
        out.assert_error(&a, "5", Condition::ServiceUnavailable);
        let out = t.client(
            &a,
            "<message id='6' to='x@elsewhere.example'><body>hi</body></message>",
        );
        out.assert_error(&a, "6", Condition::RemoteServerNotFound);
    }

    #[test]
    fn a_service_cannot_take_a_served_domain() {
        struct Thief;
        impl Module for Thief {
            fn name(&self) -> &'static str {
                "thief"
            }
            fn service_domain(&self) -> Option<&str> {
                Some("localhost")
            }
        }
        let (_dir, store) = crate::storage::temp_store();
        let err = Router::with_modules(Config::default(), store, vec![Box::new(Thief)])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("already served"), "{err}");
    }

    #[test]
    fn iq_requests_get_their_answers_errors_and_timeouts() {
        let t = TestRouter::with_extra(
            Config::default(),
            &["alice", "bob"],
            vec![Box::new(Asker::default())],
        );
        let a = t.online("alice", "phone");
        let b = t.online("bob", "laptop");
        let out = ask(&t, &a, 1);
        let req = out.only_to(&a).clone();
        assert_eq!(req.attr("type"), Some("get"));
        let id = req.attr("id").unwrap().to_owned();
        // An answer from someone else is not the answer.
        t.client(&b, &format!("<iq type='result' id='{id}' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"));
        assert!(t.module::<Asker>().answers.borrow().is_empty());
        t.client(&a, &format!("<iq type='result' id='{id}' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"));
        assert_eq!(
            *t.module::<Asker>().answers.borrow(),
            vec![(1, Ok("query".into()))]
        );
        // An error reply is an error; a session that is gone answers at once.
        let out = ask(&t, &a, 2);
        let id = out.only_to(&a).attr("id").unwrap().to_owned();
        t.client(&a, &format!("<iq type='error' id='{id}' to='localhost'><error type='cancel'><feature-not-implemented xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"));
        let gone = Jid::parse("alice@localhost/gone").unwrap();
        ask(&t, &gone, 3);
        // Nobody answers: a timeout, and a late answer changes nothing.
        let out = ask(&t, &b, 4);
        let late = out.only_to(&b).attr("id").unwrap().to_owned();
        t.advance(Duration::from_secs(29));
        assert_eq!(t.module::<Asker>().answers.borrow().len(), 3);
        t.advance(Duration::from_secs(31));
        t.client(
            &b,
            &format!("<iq type='result' id='{late}' to='localhost'/>"),
        );
        assert_eq!(
            *t.module::<Asker>().answers.borrow(),
            vec![
                (1, Ok("query".into())),
                (2, Err(Condition::FeatureNotImplemented)),
                (3, Err(Condition::ServiceUnavailable)),
                (4, Err(Condition::RemoteServerTimeout)),
            ]
        );
    }

    #[test]
    fn module_timers_fire_once_in_order() {
        let t = TestRouter::with_extra(Config::default(), &[], vec![Box::new(Asker::default())]);
        t.step(|cx| {
            cx.set_timer("asker", Duration::from_secs(20), 2);
            cx.set_timer("asker", Duration::from_secs(10), 1);
        });
        t.advance(Duration::from_secs(15));
        assert_eq!(*t.module::<Asker>().fired.borrow(), vec![1]);
        t.advance(Duration::from_secs(25));
        t.advance(Duration::from_secs(25));
        assert_eq!(*t.module::<Asker>().fired.borrow(), vec![1, 2]);
    }

    /// Bodies of the messages stored offline for `user`, oldest first.
    fn offline_bodies(t: &TestRouter, user: &str) -> Vec<String> {
        crate::modules::offline::USER_SEQ_TO_OFFLINE
            .peek(&t.router.store, user, 1000)
            .unwrap()
            .iter()
            .map(|e| {
                let el = crate::modules::testing::parse(&e.text);
                el.child("body", ns::CLIENT).unwrap().text()
            })
            .collect()
    }

    /// What a c2s connection does when it ends: leave the table, give up what it holds.
    fn end_session(t: &TestRouter, jid: &Jid) {
        let conn = t.router.sessions().get(jid).unwrap().conn;
        let s = t.router.sessions_mut().remove(jid, conn).unwrap();
        s.tx.close();
        let rx = t.receiver(s.conn);
        let mut unsent = Vec::new();
        while let Some(Outbound::Stanza(d)) = rx.try_recv() {
            if let Some(el) = Delivery::undelivered(d) {
                unsent.push((jid.clone(), el));
            }
        }
        smol::block_on(reroute_unsent(&t.router, unsent));
    }

    #[test]
    fn a_message_to_every_resource_is_kept_once_when_they_all_fail() {
        let mut config = Config::default();
        config.limits.queue_len = 3;
        let t = TestRouter::with_config(config, &["alice", "bob"]);
        let phones: Vec<Jid> = (0..3)
            .map(|i| t.online("alice", &format!("r{i}")))
            .collect();
        let b = t.online("bob", "pc");
        let send = |i: usize| {
            let el = crate::modules::testing::parse(&format!(
                "<message to='alice@localhost' type='chat' from='bob@localhost/pc'><body>m{i}</body></message>"
            ));
            // Wait for the trailing writes too (offline storage).
            if let Some(ticket) = smol::block_on(from_client(&t.router, &b, el)) {
                smol::block_on(Store::wait(ticket)).unwrap();
            }
        };
        // Three fit every queue; the fourth overflows all three, which close, and is kept
        // offline by the last of them to give it up.
        for i in 1..=4 {
            send(i);
        }
        assert!(
            phones
                .iter()
                .all(|p| t.router.sessions().get(p).unwrap().closing())
        );
        assert_eq!(offline_bodies(&t, "alice"), vec!["m4"]);
        // The fifth finds no session that is not closing: offline at once.
        send(5);
        assert_eq!(offline_bodies(&t, "alice"), vec!["m4", "m5"]);
        // The sessions end one by one; only the last copy of each message is kept.
        end_session(&t, &phones[0]);
        end_session(&t, &phones[1]);
        assert_eq!(offline_bodies(&t, "alice"), vec!["m4", "m5"]);
        end_session(&t, &phones[2]);
        assert_eq!(
            offline_bodies(&t, "alice"),
            vec!["m4", "m5", "m1", "m2", "m3"]
        );
    }

    #[test]
    fn a_copy_delivered_anywhere_is_not_kept() {
        let t = TestRouter::new();
        let a1 = t.online("alice", "r1");
        let a2 = t.online("alice", "r2");
        let b = t.online("bob", "pc");
        let el = crate::modules::testing::parse(
            "<message to='alice@localhost' type='chat' from='bob@localhost/pc'><body>hi</body></message>",
        );
        smol::block_on(from_client(&t.router, &b, el));
        let take = |j: &Jid| {
            let conn = t.router.sessions().get(j).unwrap().conn;
            match t.receiver(conn).try_recv() {
                Some(Outbound::Stanza(d)) => d,
                _ => panic!("nothing queued for {j}"),
            }
        };
        let (d1, d2) = (take(&a1), take(&a2));
        assert!(Rc::ptr_eq(&d1, &d2), "one delivery shared by both sessions");
        d1.delivered();
        assert!(Delivery::undelivered(d1).is_none());
        assert!(Delivery::undelivered(d2).is_none());
        // Not delivered anywhere: only the last copy given up comes back.
        let el = crate::modules::testing::parse(
            "<message to='alice@localhost' type='chat' from='bob@localhost/pc'><body>again</body></message>",
        );
        smol::block_on(from_client(&t.router, &b, el));
        let (d1, d2) = (take(&a1), take(&a2));
        assert!(Delivery::undelivered(d1).is_none());
        let back = Delivery::undelivered(d2).unwrap();
        assert_eq!(back.child("body", ns::CLIENT).unwrap().text(), "again");
    }

    #[test]
    fn undelivered_copies_and_requests() {
        let t = TestRouter::new();
        let a = t.online("alice", "phone");
        let b = t.online("bob", "pc");
        let msg = |xml: &str| crate::modules::testing::parse(xml);
        let unsent = vec![
            // A carbon copy and an archive result wrap messages that exist elsewhere.
            (
                a.clone(),
                msg(
                    "<message from='alice@localhost' to='alice@localhost/phone' type='chat'><received xmlns='urn:xmpp:carbons:2'/></message>",
                ),
            ),
            (
                a.clone(),
                msg(
                    "<message from='alice@localhost' to='alice@localhost/phone'><result xmlns='urn:xmpp:mam:2'/></message>",
                ),
            ),
            (
                a.clone(),
                msg("<presence from='bob@localhost/pc' to='alice@localhost/phone'/>"),
            ),
            (
                a.clone(),
                msg(
                    "<iq type='get' id='q1' from='bob@localhost/pc' to='alice@localhost/phone'><query xmlns='jabber:iq:version'/></iq>",
                ),
            ),
        ];
        let queued = |j: &Jid| t.router.sessions().get(j).unwrap().tx.len();
        let conn = t.router.sessions().get(&a).unwrap().conn;
        t.router.sessions_mut().remove(&a, conn);
        smol::block_on(reroute_unsent(&t.router, unsent));
        assert!(offline_bodies(&t, "alice").is_empty());
        // The request is answered for the session that is gone.
        assert_eq!(queued(&b), 1);
        let conn = t.router.sessions().get(&b).unwrap().conn;
        let Some(Outbound::Stanza(d)) = t.receiver(conn).try_recv() else {
            panic!("no answer");
        };
        assert!(
            crate::modules::testing::matches(
                &d.el,
                &msg(
                    "<iq type='error' id='q1' from='alice@localhost/phone'><error><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
                )
            ),
            "{}",
            d.el.to_xml()
        );
    }

    #[test]
    fn only_the_router_compares_addresses_with_the_domain() {
        // The routing decision is the one place that knows which domains are served: no
        // other source file compares a JID's domain with anything.
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut offenders = Vec::new();
        let mut dirs = vec![src];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.file_name().is_some_and(|n| n != "router.rs") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    for (i, line) in text.lines().enumerate() {
                        let compares = [
                            ".domain() ==",
                            ".domain() !=",
                            "== cx.domain()",
                            "!= cx.domain()",
                        ];
                        if compares.iter().any(|c| line.contains(c)) {
                            offenders.push(format!("{}:{}: {line}", p.display(), i + 1));
                        }
                    }
                }
            }
        }
        assert!(offenders.is_empty(), "{offenders:#?}");
    }
}
