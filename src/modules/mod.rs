//! Feature modules: the trait, the context handlers work in, and THE list of modules.
//!
//! Handlers are synchronous. They read state and storage and record what should happen in
//! `Cx`; `router::apply` then makes the writes durable and queues the stanzas. A module never
//! touches a socket, spawns nothing, and never sends directly.

pub mod carbons;
pub mod disco;
pub mod mam;
pub mod offline;
pub mod ping;
pub mod presence;
pub mod roster;
pub mod time;
pub mod version;

use crate::config::Config;
use crate::jid::Jid;
use crate::server::Server;
use crate::stanza::{StanzaError, StreamError};
use crate::storage::Write;
use crate::xml::Element;
use std::time::SystemTime;

/// What a handler wants done once it returns.
#[derive(Default)]
pub struct Effects {
    /// Writes committed before any stanza is sent: what the sends promise depends on them.
    pub writes: Vec<Write>,
    /// Writes (the archive) whose stanzas may go out before the commit; the stanza's sender
    /// is only done with it, for XEP-0198 acknowledgements, once they are durable.
    pub trailing: Vec<Write>,
    /// Stanzas for one session each, by full JID.
    pub sends: Vec<(Jid, Element)>,
    /// Connections to close with a stream error.
    pub closes: Vec<(u64, StreamError)>,
}

pub struct Cx<'a> {
    pub server: &'a Server,
    pub effects: Effects,
}

impl<'a> Cx<'a> {
    pub fn new(server: &'a Server) -> Cx<'a> {
        Cx {
            server,
            effects: Effects::default(),
        }
    }

    pub fn send(&mut self, to: Jid, stanza: Element) {
        self.effects.sends.push((to, stanza));
    }

    pub fn write(&mut self, w: Write) {
        self.effects.writes.push(w);
    }

    pub fn write_trailing(&mut self, w: Write) {
        self.effects.trailing.push(w);
    }

    pub fn domain(&self) -> &str {
        &self.server.config.server.domain
    }
}

/// An iq addressed to the server or to an account, after the router has checked its envelope.
pub struct IqRequest<'a> {
    /// The sender's full JID.
    pub from: &'a Jid,
    /// The addressee: the server's domain or an account's bare JID.
    pub to: &'a Jid,
    pub set: bool,
    pub payload: &'a Element,
}

#[derive(Clone, Copy)]
pub struct IqRoute {
    pub ns: &'static str,
    /// Answered when addressed to the server's domain.
    pub server: bool,
    /// Answered when addressed to an account (the sender's own or, if `others`, anyone's).
    pub account: bool,
    pub others: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Handled,
}

pub trait Module {
    fn name(&self) -> &'static str;
    /// Disco features this module implements.
    fn features(&self) -> &'static [&'static str] {
        &[]
    }
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
    /// A message a local session sends, before it is routed (`from` is stamped on it).
    fn message_out(
        &self,
        _cx: &mut Cx,
        _from: &Jid,
        _msg: &mut Element,
    ) -> Result<Flow, StanzaError> {
        Ok(Flow::Continue)
    }
    /// A message for local account `user`; `targets` are the sessions it will be delivered to.
    /// Changes to `msg` (a stanza-id, say) reach the recipient.
    fn message_in(
        &self,
        _cx: &mut Cx,
        _user: &str,
        _msg: &mut Element,
        _targets: &[Jid],
    ) -> Result<Flow, StanzaError> {
        Ok(Flow::Continue)
    }
    /// A session just sent its initial presence.
    fn initial_presence(&self, _cx: &mut Cx, _session: &Jid) {}
    /// Called about once a second by the server's timer, for work off the stanza path
    /// (archive expiry).
    /// The account was deleted (with everything stored for it): forget what is cached.
    fn account_removed(&self, _user: &str) {}
    fn tick(&self, _cx: &mut Cx, _now: SystemTime) {}
}

/// The modules, in hook order. A module whose config says `enabled = false` is left out, so
/// disco advertises exactly what runs.
pub fn all(config: &Config) -> Vec<Box<dyn Module>> {
    let mut list: Vec<Box<dyn Module>> = vec![
        Box::new(roster::Roster),
        Box::new(presence::Presence),
        Box::new(disco::Disco),
        Box::new(ping::Ping),
        Box::new(time::Time),
    ];
    if config.modules.version.enabled {
        list.push(Box::new(version::Version));
    }
    // Before carbons, so that a <received/> copy carries the stanza-id and a forged one is
    // gone from a <sent/> copy; before offline, which ends the hooks for what it stores.
    if config.modules.mam.enabled {
        list.push(Box::new(mam::Mam::new(&config.modules.mam)));
    }
    list.push(Box::new(carbons::Carbons));
    list.push(Box::new(offline::Offline::new(
        config.modules.offline.max_per_user,
    )));
    list
}
