//! Connections and bound sessions. Every connection has an outbound queue from its first byte
//! (so shutdown and conflicts can reach it); a bound one also has a session: a full JID, its
//! presence and its flags. Connections reach each other only through these queues.

use crate::jid::Jid;
use crate::stanza::StreamError;
use crate::xml::Element;
use smol::channel::Sender;
use std::collections::HashMap;

pub enum Outbound {
    /// Boxed so that the queue's slots stay small: each idle session keeps one block of them.
    Stanza(Box<Element>),
    /// Ends the stream with this error (a conflicting login, shutdown, removal of the account).
    Close(StreamError),
}

pub struct Session {
    pub conn: u64,
    pub jid: Jid,
    pub tx: Sender<Outbound>,
    /// Sent initial presence and has not gone unavailable since (RFC 6121 §4.2).
    pub available: bool,
    pub priority: i8,
    /// The last available presence broadcast, as sent (with `from`).
    pub presence: Option<Element>,
    /// Asked for the roster, so it gets roster pushes (RFC 6121 §2.1.6).
    pub interested: bool,
    /// Entities that got directed presence and must hear of unavailability (RFC 6121 §4.6).
    pub directed: Vec<Jid>,
    pub flags: Flags,
}

impl Session {
    /// A session just bound: not available, with no module state yet.
    pub fn new(conn: u64, jid: Jid, tx: Sender<Outbound>) -> Session {
        Session {
            conn,
            jid,
            tx,
            available: false,
            priority: 0,
            presence: None,
            interested: false,
            directed: Vec::new(),
            flags: Flags::default(),
        }
    }
}

/// Per-session state that belongs to one module each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    /// XEP-0280: the session enabled carbons.
    pub carbons: bool,
    /// XEP-0313: the session queried its archive, so it catches up from there.
    pub mam_queried: bool,
}

#[derive(Default)]
pub struct Sessions {
    by_user: HashMap<String, Vec<Session>>,
    /// How often each account's logins were made void (a password change, a removal): a
    /// connection that authenticated before cannot bind.
    voided: HashMap<String, u64>,
}

impl Sessions {
    /// What a connection that authenticates as `user` now notes, to compare at bind time.
    pub fn login_epoch(&self, user: &str) -> u64 {
        self.voided.get(user).copied().unwrap_or(0)
    }

    /// Every connection authenticated as `user` so far may no longer bind or resume.
    pub fn void_logins(&mut self, user: &str) {
        *self.voided.entry(user.to_owned()).or_default() += 1;
    }

    pub fn of(&self, user: &str) -> &[Session] {
        self.by_user.get(user).map_or(&[], Vec::as_slice)
    }

    pub fn get(&self, full: &Jid) -> Option<&Session> {
        let user = full.local()?;
        self.of(user).iter().find(|s| s.jid == *full)
    }

    pub fn get_mut(&mut self, full: &Jid) -> Option<&mut Session> {
        let user = full.local()?;
        self.by_user
            .get_mut(user)?
            .iter_mut()
            .find(|s| s.jid == *full)
    }

    /// Adds a session; returns the one it replaces (same full JID), which the caller closes.
    pub fn insert(&mut self, session: Session) -> Option<Session> {
        let user = session.jid.local().unwrap_or_default().to_owned();
        let list = self.by_user.entry(user).or_default();
        let old = list
            .iter()
            .position(|s| s.jid == session.jid)
            .map(|i| list.swap_remove(i));
        list.push(session);
        old
    }

    /// Removes the session of `conn` if it is still the one bound to `full`.
    pub fn remove(&mut self, full: &Jid, conn: u64) -> Option<Session> {
        let user = full.local()?;
        let list = self.by_user.get_mut(user)?;
        let i = list.iter().position(|s| s.conn == conn)?;
        let s = list.swap_remove(i);
        if list.is_empty() {
            self.by_user.remove(user);
        }
        Some(s)
    }

    /// Sessions that take messages to the bare JID: available, non-negative priority, and of
    /// those the highest priority (RFC 6121 §8.5.2.1.1).
    pub fn message_targets(&self, user: &str) -> Vec<Jid> {
        let list = self.of(user);
        let top = list
            .iter()
            .filter(|s| s.available && s.priority >= 0)
            .map(|s| s.priority)
            .max();
        match top {
            Some(p) => list
                .iter()
                .filter(|s| s.available && s.priority == p)
                .map(|s| s.jid.clone())
                .collect(),
            None => Vec::new(),
        }
    }

    pub fn available(&self, user: &str) -> impl Iterator<Item = &Session> {
        self.of(user).iter().filter(|s| s.available)
    }
}
